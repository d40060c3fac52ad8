/* parse_prompt_attention's rules, implemented from its regular expression and loop:
 *
 *   tokens, tried in this order at each position: \( \) \[ \] \\ (the escaped character, weight 1), a lone \ (an
 *   empty part), ( and [ (remember where the parts stand), ":" blanks sign? [.digits]+ blanks ")" (closes the last
 *   open "(" with that weight), ")" and "]" (close the last open one of their kind: x1.1, x1/1.1), a run of other
 *   characters, or ":" alone; a closer with nothing open, and the weight form with no "(" open, are text.
 *   Text is split on \s*\bBREAK\b\s* into parts with ("BREAK", -1) between them. Closing multiplies every part
 *   created since the opener, in the order the brackets close; brackets left open then multiply to the end (all
 *   the round ones, then the square ones); an empty list becomes [("", 1)]; neighbours of equal weight merge.
 *
 * \s and \b are Python's Unicode classes (str.isspace(); word = letter, number or "_"), read with utf8proc. The
 * digits of a weight are ASCII only (Python's \d would also take other scripts' digits: documented). */
#include "text/prompt_parse.h"

#include <locale.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "text/clip_tokenizer.h"

#define ROUND_MULT 1.1
#define SQUARE_MULT (1.0 / 1.1)

typedef struct raw_part {
    size_t off, len; /* in buf: parts are created in order and only neighbours merge, so a merged text is contiguous */
    double weight;
} raw_part;

typedef struct parser {
    const char *s;
    size_t n;
    char *buf;
    size_t buf_len;
    raw_part *v;
    size_t count, cap;
} parser;

/* Python's str.isspace(): category Zs or bidirectional class WS, B or S. */
static int py_space(int32_t c)
{
    const utf8proc_property_t *p = utf8proc_get_property(c);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

/* re's Unicode \w: alphanumeric or underscore. */
static int py_word(int32_t c)
{
    return c == '_' || lsdi_clip_is_letter(c) || lsdi_clip_is_number(c);
}

/* The code point at s[i] (before end); an invalid byte reads as U+FFFD, which is neither space nor word. */
static size_t next_cp(const char *s, size_t i, size_t end, int32_t *cp)
{
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(end - i), cp);
    if (k <= 0) {
        *cp = 0xFFFD;
        return 1;
    }
    return (size_t)k;
}

static lsd_status push(parser *p, const char *text, size_t len, double weight)
{
    if (p->count == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        raw_part *v = realloc(p->v, cap * sizeof *v);
        if (!v)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %zu parts", cap);
        p->v = v;
        p->cap = cap;
    }
    memcpy(p->buf + p->buf_len, text, len);
    p->v[p->count++] = (raw_part){p->buf_len, len, weight};
    p->buf_len += len;
    return LSD_OK;
}

static void multiply(parser *p, size_t from, double m)
{
    for (size_t k = from; k < p->count; k++)
        p->v[k].weight *= m;
}

/* Text s[a, b) split on BREAK: a whole word "BREAK" (no word character either side within the fragment) takes the
 * whitespace around it into the separator. */
static lsd_status add_text(parser *p, size_t a, size_t b)
{
    const char *s = p->s;
    size_t part = a, ws = a; /* ws: where the whitespace run before position i starts */
    int32_t prev = -1, c;    /* -1: the fragment's start, a boundary (re.split sees the fragment alone) */
    for (size_t i = a; i < b;) {
        if (b - i >= 5 && !memcmp(s + i, "BREAK", 5) && !(prev >= 0 && py_word(prev))) {
            size_t j = i + 5;
            int32_t after = -1;
            if (j < b)
                next_cp(s, j, b, &after);
            if (!(after >= 0 && py_word(after))) {
                int32_t last = 'K';
                while (j < b) {
                    size_t k = next_cp(s, j, b, &c);
                    if (!py_space(c))
                        break;
                    last = c;
                    j += k;
                }
                LSDI_TRY(push(p, s + part, ws - part, 1.0));
                LSDI_TRY(push(p, "BREAK", 5, -1.0));
                part = ws = i = j;
                prev = last;
                continue;
            }
        }
        size_t k = next_cp(s, i, b, &c);
        if (!py_space(c))
            ws = i + k;
        prev = c;
        i += k;
    }
    return push(p, s + part, b - part, 1.0);
}

/* The weight form at s[i] == ':' — blanks, [+-]?, [.0-9]+, blanks, ')' — sets *end past it and the number's span. */
static int weight_form(const parser *p, size_t i, size_t *end, size_t *num, size_t *num_len)
{
    const char *s = p->s;
    size_t j = i + 1;
    int32_t c;
    while (j < p->n) {
        size_t k = next_cp(s, j, p->n, &c);
        if (!py_space(c))
            break;
        j += k;
    }
    *num = j;
    if (j < p->n && (s[j] == '+' || s[j] == '-'))
        j++;
    size_t digits = j;
    while (j < p->n && (s[j] == '.' || (s[j] >= '0' && s[j] <= '9')))
        j++;
    if (j == digits)
        return 0;
    *num_len = j - *num;
    while (j < p->n) {
        size_t k = next_cp(s, j, p->n, &c);
        if (!py_space(c))
            break;
        j += k;
    }
    if (j >= p->n || s[j] != ')')
        return 0;
    *end = j + 1;
    return 1;
}

/* Python's float() of what the weight form matched: refused (as A1111's ValueError) without a digit or with two
 * points. Read with strtod under the locale's decimal point, so an application's setlocale() changes nothing. */
static lsd_status read_weight(const parser *p, size_t num, size_t len, double *out)
{
    const char *s = p->s + num;
    int points = 0, digits = 0;
    for (size_t k = 0; k < len; k++) {
        points += s[k] == '.';
        digits += s[k] >= '0' && s[k] <= '9';
    }
    if (!digits || points > 1)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt: weight '%.*s' at byte %zu is not a number",
                          (int)(len > 40 ? 40 : len), s, num);
    const char *point = localeconv()->decimal_point;
    size_t plen = point && *point ? strlen(point) : 1;
    char *tmp = malloc(len + plen + 1);
    if (!tmp)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: weight of %zu bytes", len);
    size_t t = 0;
    for (size_t k = 0; k < len; k++) {
        if (s[k] == '.') {
            memcpy(tmp + t, point && *point ? point : ".", plen);
            t += plen;
        } else {
            tmp[t++] = s[k];
        }
    }
    tmp[t] = 0;
    *out = strtod(tmp, NULL);
    free(tmp);
    return LSD_OK;
}

static lsd_status scan(parser *p, size_t *round, size_t *square)
{
    const char *s = p->s;
    size_t n_round = 0, n_square = 0;
    for (size_t i = 0; i < p->n;) {
        char c = s[i];
        size_t end, num, num_len;
        if (c == '\\') {
            int escaped = i + 1 < p->n && strchr("()[]\\", s[i + 1]);
            LSDI_TRY(push(p, s + i + 1, escaped ? 1 : 0, 1.0));
            i += escaped ? 2 : 1;
        } else if (c == '(') {
            round[n_round++] = p->count;
            i++;
        } else if (c == '[') {
            square[n_square++] = p->count;
            i++;
        } else if (c == ':' && weight_form(p, i, &end, &num, &num_len)) {
            if (n_round) {
                double w = 1.0;
                LSDI_TRY(read_weight(p, num, num_len, &w));
                multiply(p, round[--n_round], w);
            } else {
                LSDI_TRY(add_text(p, i, end));
            }
            i = end;
        } else if (c == ')' && n_round) {
            multiply(p, round[--n_round], ROUND_MULT);
            i++;
        } else if (c == ']' && n_square) {
            multiply(p, square[--n_square], SQUARE_MULT);
            i++;
        } else if (c == ':' || c == ')' || c == ']') {
            LSDI_TRY(add_text(p, i, i + 1));
            i++;
        } else {
            size_t e = i;
            while (e < p->n && !strchr("\\()[]:", s[e]))
                e++;
            LSDI_TRY(add_text(p, i, e));
            i = e;
        }
    }
    for (size_t k = 0; k < n_round; k++)
        multiply(p, round[k], ROUND_MULT);
    for (size_t k = 0; k < n_square; k++)
        multiply(p, square[k], SQUARE_MULT);
    return p->count ? LSD_OK : push(p, "", 0, 1.0);
}

/* Merges runs of equal weight, checks the weights are finite and copies the texts out. */
static lsd_status finish(parser *p, lsdi_prompt_parts *out)
{
    size_t k = 0;
    for (size_t j = 1; j < p->count; j++) {
        if (p->v[j].weight == p->v[k].weight)
            p->v[k].len += p->v[j].len;
        else
            p->v[++k] = p->v[j];
    }
    size_t n = k + 1;
    for (size_t j = 0; j < n; j++)
        if (!isfinite(p->v[j].weight))
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt: the weight of '%.*s' is %g (the product of its "
                              "brackets' multipliers)", (int)(p->v[j].len > 40 ? 40 : p->v[j].len),
                              p->buf + p->v[j].off, p->v[j].weight);
    out->v = calloc(n, sizeof *out->v);
    char *texts = malloc(p->buf_len + n);
    if (!out->v || !texts) {
        free(texts);
        free(out->v);
        out->v = NULL;
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %zu parts", n);
    }
    char *t = texts;
    for (size_t j = 0; j < n; j++) {
        memcpy(t, p->buf + p->v[j].off, p->v[j].len);
        t[p->v[j].len] = 0;
        out->v[j] = (lsdi_prompt_part){t, p->v[j].weight};
        t += p->v[j].len + 1;
    }
    out->n = (int)n;
    return LSD_OK;
}

lsd_status lsdi_prompt_parse(const char *prompt, lsdi_prompt_parts *out)
{
    memset(out, 0, sizeof *out);
    if (!prompt)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt is NULL");
    parser p = {.s = prompt, .n = strlen(prompt)};
    if (p.n > LSDI_PROMPT_MAX_BYTES)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt of %zu bytes is longer than the %u the A1111 syntax takes",
                          p.n, LSDI_PROMPT_MAX_BYTES);
    size_t *round = malloc((p.n + 1) * sizeof *round), *square = malloc((p.n + 1) * sizeof *square);
    p.buf = malloc(p.n + 1);
    lsd_status st = round && square && p.buf ? LSD_OK
                                             : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt of %zu bytes", p.n);
    if (st == LSD_OK)
        st = scan(&p, round, square);
    if (st == LSD_OK)
        st = finish(&p, out);
    free(round);
    free(square);
    free(p.buf);
    free(p.v);
    return st;
}

void lsdi_prompt_parts_clear(lsdi_prompt_parts *p)
{
    if (p->v)
        free(p->v[0].text); /* every text lives in the block the first one starts */
    free(p->v);
    memset(p, 0, sizeof *p);
}

int lsdi_prompt_part_is_break(const lsdi_prompt_part *p)
{
    return p->weight == -1.0 && !strcmp(p->text, "BREAK");
}
