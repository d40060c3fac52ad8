/* Captions as kohya's sd-scripts reads and draws them (library/train_util.py read_caption, process_caption): a
 * caption file's first line, stripped (a UTF-8 BOM dropped, anything not UTF-8 refused); for each use, a pick
 * of a list-valued caption (diffusers' imagefolder), caption_dropout_rate, shuffle_caption with keep_tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/data.h"
#include "io/file.h"

#define MAX_CAPTION_FILE (1 << 20)

int lsdi_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p;
        int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!len || end - p < len)
            return 0;
        unsigned cp = len == 1 ? c : c & (0x7F >> len);
        for (int k = 1; k < len; k++) {
            if ((p[k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[k] & 0x3F);
        }
        static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0; /* overlong, beyond Unicode, or a surrogate: what Python's strict decoder refuses */
        p += len;
    }
    return 1;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Strips s in place (it stays the start of its buffer). */
static void strip_in_place(char *s)
{
    char *b = s;
    while (is_space(*b))
        b++;
    size_t n = strlen(b);
    while (n && is_space(b[n - 1]))
        n--;
    memmove(s, b, n);
    s[n] = '\0';
}

lsd_status lsdi_caption_read(const char *path, char **out)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    lsd_status st = lsdi_read_file(path, MAX_CAPTION_FILE, &text, &len);
    if (st == LSD_ERR_NOT_FOUND)
        return LSD_OK;
    LSDI_TRY(st);
    size_t skip = len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0;
    if (!lsdi_utf8_valid(text + skip, len - skip) || strlen(text) != len) {
        free(text);
        return lsdi_error(LSD_ERR_FORMAT, "%s: caption is not UTF-8 text", path);
    }
    memmove(text, text + skip, len - skip + 1);
    text[strcspn(text, "\r\n")] = '\0'; /* the first line (Python's universal newlines) */
    strip_in_place(text);
    *out = text;
    return LSD_OK;
}

lsd_status lsdi_caption_check(const lsd_dataset *ds, const char *caption, const char *what)
{
    if (*caption || ds->p.allow_empty_captions)
        return LSD_OK;
    return lsdi_error(LSD_ERR_FORMAT, "%s: empty caption (allow_empty_captions permits it)", what);
}

/* The separator tokens are split on: the given one without its surrounding spaces (", " splits "a,b, c" in three
 * as kohya's default "," does), unless it is all spaces. malloc'd. */
static char *split_separator(const char *sep)
{
    const char *b = sep, *e = sep + strlen(sep);
    while (b < e && is_space(*b))
        b++;
    while (e > b && is_space(e[-1]))
        e--;
    return b == e ? strdup(sep) : strndup(b, (size_t)(e - b));
}

/* kohya: tokens = [t.strip() for t in caption.strip().split(sep)]; the first keep_tokens stay, the rest are
 * shuffled; joined with ", ". */
static lsd_status shuffle_tokens(const lsd_dataset *ds, const char *caption, uint64_t *rng, char **out)
{
    char *sep = split_separator(ds->p.caption_separator);
    if (!sep)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "shuffling a caption");
    size_t sep_n = strlen(sep), n_tok = 1, len = strlen(caption);
    for (const char *p = caption; (p = strstr(p, sep)) != NULL; p += sep_n)
        n_tok++;
    char *copy = malloc(len + 1), *res = malloc(len + 2 * n_tok + 1);
    char **tok = malloc(n_tok * sizeof *tok);
    size_t *order = malloc(n_tok * sizeof *order);
    if (!copy || !res || !tok || !order) {
        free(sep);
        free(copy);
        free(res);
        free(tok);
        free(order);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "shuffling a caption of %zu tokens", n_tok);
    }
    memcpy(copy, caption, len + 1);
    char *p = copy;
    for (size_t i = 0; i < n_tok; i++) {
        char *e = i + 1 < n_tok ? strstr(p, sep) : p + strlen(p);
        *e = '\0';
        strip_in_place(p);
        tok[i] = p;
        p = e + sep_n;
    }
    size_t keep = ds->p.keep_tokens < 0 ? 0 : (size_t)ds->p.keep_tokens;
    if (keep > n_tok)
        keep = n_tok;
    lsdi_shuffle(order, n_tok - keep, lsdi_rng_next(rng));
    size_t at = 0;
    for (size_t i = 0; i < n_tok; i++) {
        const char *t = i < keep ? tok[i] : tok[keep + order[i - keep]];
        at += (size_t)sprintf(res + at, "%s%s", i ? ", " : "", t);
    }
    free(sep);
    free(copy);
    free(tok);
    free(order);
    *out = res;
    return LSD_OK;
}

lsd_status lsdi_caption_draw(const lsd_dataset *ds, size_t index, uint64_t seed, char **out)
{
    const lsdi_item *it = &ds->items[index];
    uint64_t rng = seed;
    const char *c = it->captions[it->n_captions > 1 ? lsdi_rng_below(&rng, (size_t)it->n_captions) : 0];
    if (ds->p.caption_dropout_rate > 0 && lsdi_rng_unit(&rng) < ds->p.caption_dropout_rate)
        c = "";
    if (ds->p.shuffle_caption && *c)
        return shuffle_tokens(ds, c, &rng, out);
    *out = strdup(c);
    return *out ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "caption of %s", it->path);
}

lsd_status lsdi_captions_warn_long(const lsd_dataset *ds, lsdi_token_counter count_tokens, void *user, int window)
{
    char *warned = calloc((size_t)ds->n_subsets + 1, 1);
    if (!warned)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "caption lengths");
    lsd_status st = LSD_OK;
    for (size_t i = 0; i < ds->n && st == LSD_OK; i++) {
        const lsdi_item *it = &ds->items[i];
        const lsdi_subset *sub = &ds->subsets[it->subset];
        int from_folder = !it->caption_file && sub->caption && !strcmp(sub->caption, it->captions[0]);
        if (from_folder && warned[it->subset])
            continue;
        for (int k = 0; k < it->n_captions && st == LSD_OK; k++) {
            int n = 0;
            st = count_tokens(it->captions[k], &n, user);
            if (st != LSD_OK || n + 2 <= window)
                continue;
            if (it->caption_file)
                lsdi_log(LSD_LOG_WARN, "%s: caption has %d tokens; the text encoder reads %d with BOS and EOS: the "
                         "rest is ignored", it->caption_file, n, window);
            else if (from_folder)
                lsdi_log(LSD_LOG_WARN, "%s: the %s \"%s\" has %d tokens; the text encoder reads %d with BOS and EOS: "
                         "the rest is ignored", sub->path, ds->layout == LSD_LAYOUT_DREAMBOOTH ? "prompt" :
                         "folder caption", sub->caption, n, window);
            else
                lsdi_log(LSD_LOG_WARN, "%s: caption in metadata.jsonl has %d tokens; the text encoder reads %d with "
                         "BOS and EOS: the rest is ignored", it->path, n, window);
            warned[it->subset] |= from_folder;
            break;
        }
    }
    free(warned);
    return st;
}
