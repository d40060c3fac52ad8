/* tokenize_line's loop, implemented from its rules (see prompt_chunks.h). One difference, on purpose: when the comma
 * rule moves tokens that hold an embedding to the next chunk, the embedding's vectors move with them (A1111 leaves
 * them at the old offsets, in the padding of the chunk before). */
#include "text/prompt_chunks.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "text/prompt_parse.h"

typedef struct emb_ids { /* an embedding's name as token ids */
    const lsdi_embedding *emb;
    int64_t *ids;
    int n;
} emb_ids;

typedef struct builder {
    lsdi_prompt_chunks *out;
    int len_max, bos, eos; /* len_max: tokens per chunk between BOS and EOS (75) */
    int64_t *ids;          /* the chunk being filled */
    float *w;
    int len, last_comma;
    int cap_chunks, cap_fixes;
    emb_ids *embs;
    int n_embs;
} builder;

static lsd_status add_fix(builder *b, int offset, const lsdi_embedding *e)
{
    lsdi_prompt_chunks *o = b->out;
    if (o->n_fixes == b->cap_fixes) {
        int cap = b->cap_fixes ? 2 * b->cap_fixes : 8;
        lsdi_prompt_fix *v = realloc(o->fixes, (size_t)cap * sizeof *v);
        if (!v)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %d embedding uses", cap);
        o->fixes = v;
        b->cap_fixes = cap;
    }
    o->fixes[o->n_fixes++] = (lsdi_prompt_fix){o->n_chunks, 1 + offset, e};
    return LSD_OK;
}

/* Frames the current chunk (BOS, tokens, EOS padding, EOS) onto the output and starts an empty one. */
static lsd_status next_chunk(builder *b)
{
    lsdi_prompt_chunks *o = b->out;
    int W = o->window;
    if (o->n_chunks == LSDI_PROMPT_MAX_CHUNKS)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt: more than %d chunks of %d tokens (%d tokens at most)",
                          LSDI_PROMPT_MAX_CHUNKS, b->len_max, LSDI_PROMPT_MAX_CHUNKS * b->len_max);
    if (o->n_chunks == b->cap_chunks) {
        int cap = b->cap_chunks ? 2 * b->cap_chunks : 2;
        int64_t *ids = realloc(o->ids, (size_t)cap * W * sizeof *ids);
        if (ids)
            o->ids = ids;
        float *w = realloc(o->weights, (size_t)cap * W * sizeof *w);
        if (w)
            o->weights = w;
        if (!ids || !w)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %d chunks", cap);
        b->cap_chunks = cap;
    }
    int64_t *ids = o->ids + (size_t)o->n_chunks * W;
    float *w = o->weights + (size_t)o->n_chunks * W;
    ids[0] = b->bos;
    w[0] = 1.0f;
    for (int k = 0; k < W - 1; k++) {
        ids[1 + k] = k < b->len ? b->ids[k] : b->eos;
        w[1 + k] = k < b->len ? b->w[k] : 1.0f;
        if (w[1 + k] != 1.0f)
            o->all_ones = 0;
    }
    o->n_chunks++;
    b->len = 0;
    b->last_comma = -1;
    return LSD_OK;
}

/* The comma rule: a full chunk whose last comma is at most LSDI_PROMPT_COMMA_BACKTRACK tokens from its end ends
 * after that comma; the tokens behind it (and their embeddings) start the next chunk. */
static lsd_status back_off(builder *b)
{
    int cut = b->last_comma + 1, moved = b->len - cut, chunk = b->out->n_chunks;
    int64_t ids[LSDI_PROMPT_COMMA_BACKTRACK];
    float w[LSDI_PROMPT_COMMA_BACKTRACK];
    memcpy(ids, b->ids + cut, (size_t)moved * sizeof *ids);
    memcpy(w, b->w + cut, (size_t)moved * sizeof *w);
    b->len = cut;
    LSDI_TRY(next_chunk(b));
    memcpy(b->ids, ids, (size_t)moved * sizeof *ids);
    memcpy(b->w, w, (size_t)moved * sizeof *w);
    b->len = moved;
    for (int k = b->out->n_fixes - 1; k >= 0 && b->out->fixes[k].chunk == chunk; k--)
        if (b->out->fixes[k].offset > cut) {
            b->out->fixes[k].chunk++;
            b->out->fixes[k].offset -= cut;
        }
    return LSD_OK;
}

/* The longest embedding name (in token ids) at tokens[pos], the first added among equals; NULL if none. */
static const emb_ids *embedding_at(const builder *b, const int64_t *tokens, int n, int pos)
{
    const emb_ids *best = NULL;
    for (int k = 0; k < b->n_embs; k++) {
        const emb_ids *e = &b->embs[k];
        if (e->n <= n - pos && (!best || e->n > best->n) && !memcmp(e->ids, tokens + pos, (size_t)e->n * sizeof *tokens))
            best = e;
    }
    return best;
}

static void place(builder *b, int64_t id, float w)
{
    b->ids[b->len] = id;
    b->w[b->len++] = w;
}

/* One part's tokens into chunks, A1111's way. */
static lsd_status add_part(builder *b, const int64_t *tokens, int n, float weight, int comma)
{
    for (int pos = 0; pos < n;) {
        if (tokens[pos] == comma)
            b->last_comma = b->len;
        else if (b->len == b->len_max && b->last_comma >= 0 &&
                 b->len - b->last_comma <= LSDI_PROMPT_COMMA_BACKTRACK)
            LSDI_TRY(back_off(b));
        if (b->len == b->len_max)
            LSDI_TRY(next_chunk(b));
        const emb_ids *e = embedding_at(b, tokens, n, pos);
        if (!e) {
            place(b, tokens[pos++], weight);
            continue;
        }
        if (b->len + e->emb->n_vectors > b->len_max)
            LSDI_TRY(next_chunk(b));
        LSDI_TRY(add_fix(b, b->len, e->emb));
        for (int k = 0; k < e->emb->n_vectors; k++)
            place(b, 0, weight);
        pos += e->n;
    }
    return LSD_OK;
}

/* Plain text: one chunk, cut where the next token or embedding no longer fits. */
static lsd_status add_plain(builder *b, const int64_t *tokens, int n)
{
    int count = 0, full = 0;
    for (int pos = 0; pos < n;) {
        const emb_ids *e = embedding_at(b, tokens, n, pos);
        int size = e ? e->emb->n_vectors : 1;
        full = full || b->len + size > b->len_max;
        if (!full && e)
            LSDI_TRY(add_fix(b, b->len, e->emb));
        for (int k = 0; k < size && !full; k++)
            place(b, e ? 0 : tokens[pos], 1.0f);
        count += size;
        pos += e ? e->n : 1;
    }
    if (full)
        lsdi_log(LSD_LOG_WARN, "prompt has %d tokens; only the first %d fit in %d: the rest is ignored", count,
                 b->len_max, b->out->window);
    b->out->n_tokens = count;
    return next_chunk(b);
}

static lsd_status tokenize_embeddings(builder *b, const lsdi_tokenizer *t, const lsdi_embeddings *db)
{
    if (!db || !db->n)
        return LSD_OK;
    if (!(b->embs = calloc((size_t)db->n, sizeof *b->embs)))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %d embeddings", db->n);
    for (int k = 0; k < db->n; k++) {
        emb_ids *e = &b->embs[b->n_embs];
        LSDI_TRY(lsdi_tokenizer_tokens(t, db->v[k].token, &e->ids, &e->n));
        e->emb = &db->v[k];
        if (e->n) /* a name with no tokens cannot be matched */
            b->n_embs++;
    }
    return LSD_OK;
}

static lsd_status build(builder *b, const lsdi_tokenizer *t, const lsdi_embeddings *db, const char *prompt,
                        int syntax)
{
    LSDI_TRY(tokenize_embeddings(b, t, db));
    int64_t *tokens;
    int n;
    if (syntax == LSD_PROMPT_PLAIN) {
        LSDI_TRY(lsdi_tokenizer_tokens(t, prompt, &tokens, &n));
        lsd_status st = add_plain(b, tokens, n);
        free(tokens);
        return st;
    }
    lsdi_prompt_parts parts;
    LSDI_TRY(lsdi_prompt_parse(prompt, &parts));
    int comma = lsdi_tokenizer_vocab_id(t, ",</w>");
    lsd_status st = LSD_OK;
    for (int i = 0; i < parts.n && st == LSD_OK; i++) {
        if (lsdi_prompt_part_is_break(&parts.v[i])) {
            st = next_chunk(b);
            continue;
        }
        st = lsdi_tokenizer_tokens(t, parts.v[i].text, &tokens, &n);
        if (st == LSD_OK)
            st = add_part(b, tokens, n, (float)parts.v[i].weight, comma);
        free(tokens);
    }
    lsdi_prompt_parts_clear(&parts);
    if (st != LSD_OK)
        return st;
    /* A1111's count: 75 for every chunk cut on the way, then the tokens of the last one if it has any (or if it
     * is the only one). */
    int cut = b->out->n_chunks, last = b->len, final = b->len || !cut;
    b->out->n_tokens = cut * b->len_max + last;
    return final ? next_chunk(b) : LSD_OK;
}

lsd_status lsdi_prompt_chunks_build(const lsdi_tokenizer *t, const lsdi_embeddings *db, const char *prompt,
                                    int syntax, int window, lsdi_prompt_chunks *out)
{
    memset(out, 0, sizeof *out);
    out->window = window;
    out->all_ones = 1;
    if (syntax != LSD_PROMPT_PLAIN && syntax != LSD_PROMPT_A1111)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt_syntax = %d is not a known lsd_prompt_syntax", syntax);
    if (window < 3)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt: a window of %d tokens leaves no room for text", window);
    builder b = {.out = out, .len_max = window - 2, .bos = lsdi_tokenizer_bos(t), .eos = lsdi_tokenizer_eos(t),
                 .last_comma = -1};
    b.ids = malloc((size_t)b.len_max * sizeof *b.ids);
    b.w = malloc((size_t)b.len_max * sizeof *b.w);
    lsd_status st = b.ids && b.w ? build(&b, t, db, prompt, syntax)
                                 : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: a chunk of %d tokens", window);
    for (int k = 0; b.embs && k < (db ? db->n : 0); k++)
        free(b.embs[k].ids);
    free(b.embs);
    free(b.ids);
    free(b.w);
    if (st != LSD_OK)
        lsdi_prompt_chunks_clear(out);
    return st;
}

lsd_status lsdi_prompt_chunks_pad(lsdi_prompt_chunks *c, int n)
{
    if (n <= c->n_chunks)
        return LSD_OK;
    int W = c->window;
    int64_t *ids = realloc(c->ids, (size_t)n * W * sizeof *ids);
    if (ids)
        c->ids = ids;
    float *w = realloc(c->weights, (size_t)n * W * sizeof *w);
    if (w)
        c->weights = w;
    if (!ids || !w)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %d chunks", n);
    int64_t bos = c->ids[0];
    int64_t eos = c->ids[W - 1];
    for (size_t k = (size_t)c->n_chunks * W; k < (size_t)n * W; k++) {
        c->ids[k] = k % W ? eos : bos;
        c->weights[k] = 1.0f;
    }
    c->n_chunks = n;
    return LSD_OK;
}

void lsdi_prompt_chunks_clear(lsdi_prompt_chunks *c)
{
    free(c->ids);
    free(c->weights);
    free(c->fixes);
    memset(c, 0, sizeof *c);
}
