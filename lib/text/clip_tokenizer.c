/* CLIP BPE: vocab.json + merges.txt, the pattern scanner and the merge loop. Symbols are vocabulary ids from the
 * start (every byte symbol and every merge result is in a CLIP vocabulary), so merging compares integers. */
#include "text/clip_tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "io/file.h"

/* Far above any real vocabulary (1.6 MB) or prompt; bounds what hostile input can make us allocate. */
#define MAX_TOKENIZER_FILE (64u << 20)
#define MAX_PROMPT_BYTES (1u << 20)
#define PAIR_EMPTY UINT64_MAX

typedef struct {
    uint32_t off, len;
    int32_t id; /* -1: empty slot */
} vocab_slot;

typedef struct {
    uint64_t key; /* first id << 32 | second id */
    uint32_t rank;
    int32_t merged;
} pair_slot;

struct lsdi_tokenizer {
    char *arena; /* the vocabulary's strings, back to back */
    vocab_slot *vocab;
    size_t vocab_mask;
    pair_slot *pairs;
    size_t pair_mask;
    int32_t byte_id[256], byte_end_id[256]; /* a byte's symbol inside / at the end of a word ("</w>") */
    int bos, eos;
};

static const char SOT[] = "<|startoftext|>";
static const char EOT[] = "<|endoftext|>";

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static size_t table_size(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    return cap;
}

static vocab_slot *vocab_slot_for(const lsdi_tokenizer *t, const char *s, size_t n)
{
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        vocab_slot *v = &t->vocab[i];
        if (v->id < 0 || (v->len == n && memcmp(t->arena + v->off, s, n) == 0))
            return v;
    }
}

static int32_t vocab_find(const lsdi_tokenizer *t, const char *s, size_t n)
{
    return vocab_slot_for(t, s, n)->id;
}

static pair_slot *pair_slot_for(const lsdi_tokenizer *t, uint64_t key)
{
    for (size_t i = hash_u64(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        pair_slot *p = &t->pairs[i];
        if (p->key == PAIR_EMPTY || p->key == key)
            return p;
    }
}

static uint64_t pair_key(int32_t a, int32_t b)
{
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static lsd_status load_vocab(lsdi_tokenizer *t, const char *path)
{
    char *text;
    size_t len;
    LSDI_TRY(lsdi_read_file(path, MAX_TOKENIZER_FILE, &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lsdi_error(LSD_ERR_FORMAT, "%s: not a JSON object of token -> id", path);
    }
    size_t count = 0, bytes = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        count++;
        bytes += strlen(e->string);
    }
    size_t cap = table_size(count);
    t->arena = malloc(bytes + 1);
    t->vocab = malloc(cap * sizeof *t->vocab);
    if (!t->arena || !t->vocab) {
        cJSON_Delete(root);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu tokens", path, count);
    }
    t->vocab_mask = cap - 1;
    for (size_t i = 0; i < cap; i++)
        t->vocab[i].id = -1;
    size_t off = 0;
    for (const cJSON *e = root->child; e; e = e->next) {
        double v = e->valuedouble;
        if (!cJSON_IsNumber(e) || !(v >= 0 && v <= INT32_MAX) || v != (double)(int32_t)v) {
            lsd_status st = lsdi_error(LSD_ERR_FORMAT, "%s: token \"%.64s\" has id %s, expected an integer "
                                       "in [0, 2^31)", path, e->string,
                                       cJSON_IsNumber(e) ? "out of range" : "not a number");
            cJSON_Delete(root);
            return st;
        }
        size_t n = strlen(e->string);
        vocab_slot *s = vocab_slot_for(t, e->string, n);
        if (s->id < 0) { /* a repeated key keeps its last id, as Python's json does */
            memcpy(t->arena + off, e->string, n);
            s->off = (uint32_t)off;
            s->len = (uint32_t)n;
            off += n;
        }
        s->id = (int32_t)v;
    }
    cJSON_Delete(root);

    /* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest for 256, 257, ... */
    int shifted = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        char sym[8];
        size_t n = (size_t)utf8proc_encode_char(printable ? b : 256 + shifted++, (utf8proc_uint8_t *)sym);
        memcpy(sym + n, "</w>", 4);
        t->byte_id[b] = vocab_find(t, sym, n);
        t->byte_end_id[b] = vocab_find(t, sym, n + 4);
        if (t->byte_id[b] < 0 || t->byte_end_id[b] < 0)
            return lsdi_error(LSD_ERR_FORMAT, "%s: no token for byte 0x%02X (\"%.*s\"%s)", path, (unsigned)b,
                              (int)n, sym, t->byte_id[b] < 0 ? "" : " + </w>");
    }
    t->bos = vocab_find(t, SOT, sizeof SOT - 1);
    t->eos = vocab_find(t, EOT, sizeof EOT - 1);
    if (t->bos < 0 || t->eos < 0)
        return lsdi_error(LSD_ERR_FORMAT, "%s: missing special token %s", path, t->bos < 0 ? SOT : EOT);
    return LSD_OK;
}

static lsd_status load_merges(lsdi_tokenizer *t, const char *path)
{
    char *text;
    size_t len;
    LSDI_TRY(lsdi_read_file(path, MAX_TOKENIZER_FILE, &text, &len));
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    size_t cap = table_size(lines);
    t->pairs = malloc(cap * sizeof *t->pairs);
    char *joined = malloc(len + 1);
    lsd_status st = LSD_OK;
    if (!t->pairs || !joined) {
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    t->pair_mask = cap - 1;
    for (size_t i = 0; i < cap; i++)
        t->pairs[i].key = PAIR_EMPTY;
    uint32_t rank = 0;
    size_t line_no = 0;
    for (char *line = text; line < text + len;) {
        char *eol = memchr(line, '\n', (size_t)(text + len - line));
        char *next = eol ? eol + 1 : text + len;
        char *end = eol ? eol : text + len;
        line_no++;
        if (end > line && end[-1] == '\r')
            end--;
        size_t n = (size_t)(end - line);
        if (n == 0 || (line_no == 1 && n >= 8 && memcmp(line, "#version", 8) == 0)) {
            line = next;
            continue;
        }
        char *sp = memchr(line, ' ', n);
        if (!sp || sp == line || sp + 1 == end || memchr(sp + 1, ' ', (size_t)(end - sp - 1))) {
            st = lsdi_error(LSD_ERR_FORMAT, "%s: line %zu: expected two tokens separated by one space, found "
                            "\"%.*s\"", path, line_no, (int)(n > 80 ? 80 : n), line);
            goto done;
        }
        size_t na = (size_t)(sp - line), nb = (size_t)(end - sp - 1);
        memcpy(joined, line, na);
        memcpy(joined + na, sp + 1, nb);
        int32_t a = vocab_find(t, line, na), b = vocab_find(t, sp + 1, nb), m = vocab_find(t, joined, na + nb);
        if (a < 0 || b < 0 || m < 0) {
            const char *what = a < 0 ? line : b < 0 ? sp + 1 : joined;
            size_t wn = a < 0 ? na : b < 0 ? nb : na + nb;
            st = lsdi_error(LSD_ERR_FORMAT, "%s: line %zu: token \"%.*s\" is not in vocab.json", path, line_no,
                            (int)(wn > 80 ? 80 : wn), what);
            goto done;
        }
        pair_slot *p = pair_slot_for(t, pair_key(a, b));
        p->key = pair_key(a, b);
        p->rank = rank++; /* a repeated pair takes its last rank, as CLIP's dict(zip(merges, range)) does */
        p->merged = m;
        line = next;
    }
done:
    free(joined);
    free(text);
    return st;
}

lsd_status lsdi_tokenizer_load(const char *dir, lsdi_tokenizer **out)
{
    if (!dir || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsdi_tokenizer_load: %s is NULL", dir ? "out" : "dir");
    *out = NULL;
    size_t dn = strlen(dir);
    char *path = malloc(dn + sizeof "/vocab.json" + 1);
    lsdi_tokenizer *t = calloc(1, sizeof *t);
    if (!path || !t) {
        free(path);
        free(t);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", dir);
    }
    sprintf(path, "%s/vocab.json", dir);
    lsd_status st = load_vocab(t, path);
    if (st == LSD_OK) {
        sprintf(path, "%s/merges.txt", dir);
        st = load_merges(t, path);
    }
    free(path);
    if (st != LSD_OK) {
        lsdi_tokenizer_free(t);
        return st;
    }
    *out = t;
    return LSD_OK;
}

void lsdi_tokenizer_free(lsdi_tokenizer *t)
{
    if (!t)
        return;
    free(t->arena);
    free(t->vocab);
    free(t->pairs);
    free(t);
}

int lsdi_tokenizer_bos(const lsdi_tokenizer *t)
{
    return t->bos;
}

int lsdi_tokenizer_eos(const lsdi_tokenizer *t)
{
    return t->eos;
}

/* Per-call work space, grown to the longest word. */
typedef struct {
    unsigned char *bytes;
    int32_t *sym, *next, *prev, *changed;
    uint64_t *heap; /* rank << 32 | position: pops by rank, then left to right */
    size_t cap, heap_n;
    int64_t *ids; /* token k goes to ids[base + k] while k < room */
    int base, room;
    int grow;     /* room grows (lsdi_tokenizer_tokens) instead of the rest being only counted */
    int oom;
    int64_t count;
} bpe_work;

static int work_reserve(bpe_work *w, size_t n)
{
    if (n <= w->cap)
        return 1;
    size_t cap = n < 64 ? 64 : n;
    void *p[6] = {realloc(w->bytes, cap), realloc(w->sym, cap * 4), realloc(w->next, cap * 4),
                  realloc(w->prev, cap * 4), realloc(w->changed, cap * 4), realloc(w->heap, 3 * cap * 8)};
    w->bytes = p[0] ? p[0] : w->bytes;
    w->sym = p[1] ? p[1] : w->sym;
    w->next = p[2] ? p[2] : w->next;
    w->prev = p[3] ? p[3] : w->prev;
    w->changed = p[4] ? p[4] : w->changed;
    w->heap = p[5] ? p[5] : w->heap;
    for (int i = 0; i < 6; i++)
        if (!p[i])
            return 0;
    w->cap = cap;
    return 1;
}

static void heap_push(bpe_work *w, uint64_t v)
{
    size_t i = w->heap_n++;
    while (i > 0 && w->heap[(i - 1) / 2] > v) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = v;
}

static uint64_t heap_pop(bpe_work *w)
{
    uint64_t top = w->heap[0], v = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && w->heap[c + 1] < w->heap[c])
            c++;
        if (w->heap[c] >= v)
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    w->heap[i] = v;
    return top;
}

static void push_pair(const lsdi_tokenizer *t, bpe_work *w, int32_t left)
{
    int32_t right = w->next[left];
    if (right < 0)
        return;
    const pair_slot *p = pair_slot_for(t, pair_key(w->sym[left], w->sym[right]));
    if (p->key != PAIR_EMPTY)
        heap_push(w, (uint64_t)p->rank << 32 | (uint32_t)left);
}

static void emit(bpe_work *w, int32_t id)
{
    if (w->count >= w->room && w->grow && !w->oom && w->room < INT_MAX / 2) {
        int room = w->room ? 2 * w->room : 64;
        int64_t *ids = realloc(w->ids, (size_t)room * sizeof *ids);
        w->oom = !ids;
        if (ids) {
            w->ids = ids;
            w->room = room;
        }
    }
    if (w->count < w->room)
        w->ids[w->base + w->count] = id;
    w->count++;
}

/* CLIP's bpe(): repeatedly take the lowest-ranked adjacent pair and merge all its occurrences left to right.
 * One rank is one pair, so popping a rank's entries in position order is that pass; the pairs a pass creates
 * enter the heap only after it, as they enter CLIP's next min() only after the pass. Stale entries (a side
 * already merged) are recognised by re-reading the pair. O(n log n) where the literal loop is O(n^2). */
static void bpe_word(const lsdi_tokenizer *t, bpe_work *w, size_t n)
{
    if ((n == sizeof SOT - 1 && memcmp(w->bytes, SOT, n) == 0) ||
        (n == sizeof EOT - 1 && memcmp(w->bytes, EOT, n) == 0)) {
        emit(w, n == sizeof SOT - 1 ? t->bos : t->eos);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = i + 1 < n ? t->byte_id[w->bytes[i]] : t->byte_end_id[w->bytes[i]];
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        w->prev[i] = (int32_t)i - 1;
    }
    w->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, w, (int32_t)i);
    while (w->heap_n > 0) {
        uint32_t rank = (uint32_t)(w->heap[0] >> 32);
        size_t n_changed = 0;
        while (w->heap_n > 0 && (uint32_t)(w->heap[0] >> 32) == rank) {
            int32_t left = (int32_t)(uint32_t)heap_pop(w);
            int32_t right = w->next[left];
            if (w->sym[left] < 0 || right < 0)
                continue;
            const pair_slot *p = pair_slot_for(t, pair_key(w->sym[left], w->sym[right]));
            if (p->key == PAIR_EMPTY || p->rank != rank)
                continue;
            w->sym[left] = p->merged;
            w->sym[right] = -1;
            w->next[left] = w->next[right];
            if (w->next[right] >= 0)
                w->prev[w->next[right]] = left;
            w->changed[n_changed++] = left;
        }
        for (size_t k = 0; k < n_changed; k++) {
            int32_t i = w->changed[k];
            if (w->sym[i] < 0)
                continue;
            if (w->prev[i] >= 0)
                push_pair(t, w, w->prev[i]);
            push_pair(t, w, i);
        }
    }
    for (int32_t i = 0; i >= 0; i = w->next[i])
        emit(w, w->sym[i]);
}

/* Length of the match of a pattern literal at s[i..n), 0 if none; IGNORECASE lets U+017F (long s) match 's'. */
static size_t match_literal(const int32_t *s, size_t n, size_t i, const char *lit)
{
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= n || !(s[i + k] == (unsigned char)lit[k] || (lit[k] == 's' && s[i + k] == 0x17F)))
            return 0;
    return k;
}

/* End of the pattern match that starts at s[i], or i when nothing matches there (a space, or U+0345). */
static size_t match_at(const int32_t *s, size_t n, size_t i)
{
    static const char *const literals[] = {SOT, EOT, "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < sizeof literals / sizeof literals[0]; k++) {
        size_t m = match_literal(s, n, i, literals[k]);
        if (m)
            return i + m;
    }
    size_t e = i + 1;
    if (lsdi_clip_is_letter(s[i])) {
        while (e < n && lsdi_clip_is_letter(s[e]))
            e++;
        return e;
    }
    if (lsdi_clip_is_number(s[i]))
        return e;
    if (lsdi_clip_is_other(s[i])) {
        while (e < n && lsdi_clip_is_other(s[e]))
            e++;
        return e;
    }
    return i;
}

/* Normalizes text and runs the pattern and BPE over it into w. */
static lsd_status run(const lsdi_tokenizer *t, const char *text, bpe_work *w)
{
    size_t text_len = strlen(text);
    if (text_len > MAX_PROMPT_BYTES)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt of %zu bytes is longer than the %u allowed", text_len,
                          MAX_PROMPT_BYTES);
    int32_t *cps;
    size_t n;
    LSDI_TRY(lsdi_clip_normalize(text, &cps, &n));
    lsd_status st = LSD_OK;
    for (size_t i = 0; i < n;) {
        size_t e = match_at(cps, n, i);
        if (e == i) {
            i++;
            continue;
        }
        if (!work_reserve(w, 4 * (e - i))) {
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: out of memory for a word of %zu characters", e - i);
            break;
        }
        size_t nb = 0;
        for (; i < e; i++)
            nb += (size_t)utf8proc_encode_char(cps[i], w->bytes + nb);
        bpe_word(t, w, nb);
    }
    free(cps);
    free(w->bytes);
    free(w->sym);
    free(w->next);
    free(w->prev);
    free(w->changed);
    free(w->heap);
    if (st == LSD_OK && w->oom)
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %lld token ids", (long long)w->count);
    return st;
}

lsd_status lsdi_tokenizer_encode(const lsdi_tokenizer *t, const char *text, int64_t *ids_out, int max_len,
                                 int *n_tokens_out)
{
    if (!t || !text || !ids_out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsdi_tokenizer_encode: %s is NULL",
                          !t ? "tokenizer" : !text ? "text" : "ids_out");
    if (max_len < 2)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsdi_tokenizer_encode: max_len %d < 2 (BOS and EOS)", max_len);
    bpe_work w = {.ids = ids_out, .base = 1, .room = max_len - 2};
    LSDI_TRY(run(t, text, &w));
    int64_t kept = w.count < w.room ? w.count : w.room;
    ids_out[0] = t->bos;
    for (int64_t k = 1 + kept; k < max_len; k++)
        ids_out[k] = t->eos;
    if (w.count > w.room)
        lsdi_log(LSD_LOG_WARN, "prompt has %lld tokens; only the first %d fit in %d: the rest is ignored",
                 (long long)w.count, w.room, max_len);
    if (n_tokens_out)
        *n_tokens_out = w.count > INT_MAX ? INT_MAX : (int)w.count;
    return LSD_OK;
}

lsd_status lsdi_tokenizer_tokens(const lsdi_tokenizer *t, const char *text, int64_t **ids_out, int *n_out)
{
    *ids_out = NULL;
    *n_out = 0;
    bpe_work w = {.grow = 1};
    lsd_status st = run(t, text, &w);
    if (st == LSD_OK && w.count > w.room)
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %lld token ids", (long long)w.count);
    if (st != LSD_OK) {
        free(w.ids);
        return st;
    }
    *ids_out = w.ids;
    *n_out = (int)w.count;
    return LSD_OK;
}

int lsdi_tokenizer_vocab_id(const lsdi_tokenizer *t, const char *s)
{
    return vocab_find(t, s, strlen(s));
}
