/* Prompts to the text encoder's context: chunks (lib/text/prompt_chunks.c) through the text encoder, with the
 * textual-inversion vectors in place and A1111's emphasis (modules/sd_emphasis.py, "Original"). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "model/model.h"

const char *lsd_prompt_syntax_name(lsd_prompt_syntax s)
{
    return s == LSD_PROMPT_PLAIN ? "plain" : s == LSD_PROMPT_A1111 ? "a1111" : NULL;
}

lsd_status lsd_prompt_syntax_from_name(const char *name, lsd_prompt_syntax *out)
{
    if (!name || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_prompt_syntax_from_name: %s is NULL", name ? "out" : "name");
    for (int s = LSD_PROMPT_PLAIN; s <= LSD_PROMPT_A1111; s++)
        if (!strcasecmp(name, lsd_prompt_syntax_name((lsd_prompt_syntax)s))) {
            *out = (lsd_prompt_syntax)s;
            return LSD_OK;
        }
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prompt syntax '%s' is not one of plain, a1111", name);
}

lsd_status lsdi_model_prompt_chunks(const lsd_model *m, const char *prompt, int syntax, lsdi_prompt_chunks *out)
{
    return lsdi_prompt_chunks_build(m->tokenizer, &m->embeddings, prompt, syntax, m->text->cfg.max_positions, out);
}

/* Every chunk's ids in one batch, and the embeddings' vectors with their flat positions in it. */
typedef struct batch {
    int64_t *ids, *positions;
    float *vectors, *weights;
    int n_vectors;
} batch;

static void batch_free(batch *b)
{
    free(b->ids);
    free(b->positions);
    free(b->vectors);
    free(b->weights);
}

static lsd_status gather(const lsd_model *m, const lsdi_prompt_chunks *c, int n, batch *b)
{
    int C = c[0].n_chunks, W = c[0].window, D = m->text->cfg.hidden_size;
    size_t per = (size_t)C * W;
    memset(b, 0, sizeof *b);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < c[i].n_fixes; k++)
            b->n_vectors += c[i].fixes[k].emb->n_vectors;
    b->ids = malloc((size_t)n * per * sizeof *b->ids);
    b->weights = malloc((size_t)n * per * sizeof *b->weights);
    b->positions = malloc(((size_t)b->n_vectors + 1) * sizeof *b->positions);
    b->vectors = malloc(((size_t)b->n_vectors + 1) * D * sizeof *b->vectors);
    if (!b->ids || !b->weights || !b->positions || !b->vectors)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "prompt: %d x %d chunks", n, C);
    int v = 0;
    for (int i = 0; i < n; i++) {
        memcpy(b->ids + i * per, c[i].ids, per * sizeof *b->ids);
        memcpy(b->weights + i * per, c[i].weights, per * sizeof *b->weights);
        for (int k = 0; k < c[i].n_fixes; k++) {
            const lsdi_prompt_fix *f = &c[i].fixes[k];
            for (int r = 0; r < f->emb->n_vectors; r++, v++) {
                b->positions[v] = (int64_t)i * per + (int64_t)f->chunk * W + f->offset + r;
                memcpy(b->vectors + (size_t)v * D, f->emb->vectors + (size_t)r * D, (size_t)D * sizeof(float));
            }
        }
    }
    return LSD_OK;
}

/* sd_emphasis.py's EmphasisOriginal per chunk, in float32 as A1111 computes it (its multipliers are float32). */
static lsdt_tensor *emphasis(lsdt_scope *s, lsdt_tensor *z, const float *weights, int64_t rows, int64_t W,
                             const char *device)
{
    int64_t wshape[3] = {rows, W, 1}, mshape[3] = {rows, 1, 1};
    static const int dims[2] = {1, 2};
    lsdt_dtype dt = lsdt_get_dtype(z);
    lsdt_tensor *zf = lsdt_to_dtype(s, z, LSDT_F32);
    lsdt_tensor *w = lsdt_from_host(s, weights, LSDT_F32, wshape, 3, LSDT_F32, device);
    lsdt_tensor *zw = lsdt_mul(s, zf, w);
    lsdt_tensor *ratio = lsdt_div(s, lsdt_mean_dims(s, zf, dims, 2), lsdt_mean_dims(s, zw, dims, 2));
    return lsdt_to_dtype(s, lsdt_mul(s, zw, lsdt_reshape(s, ratio, mshape, 3)), dt);
}

lsd_status lsdi_model_chunks_context(lsdt_scope *s, lsd_model *m, const lsdi_prompt_chunks *c, int n, int clip_skip,
                                     int emph, lsdt_tensor **out)
{
    *out = NULL;
    batch b;
    lsd_status st = gather(m, c, n, &b);
    if (st != LSD_OK) {
        batch_free(&b);
        return st;
    }
    int64_t C = c[0].n_chunks, W = c[0].window, D = m->text->cfg.hidden_size, rows = n * C;
    int64_t ishape[2] = {rows, W}, oshape[3] = {n, C * W, D};
    lsdt_tensor *ids = lsdt_from_host(s, b.ids, LSDT_I64, ishape, 2, LSDT_I64, m->device);
    lsdt_tensor *z = b.n_vectors ? lsdi_clip_text_forward_fixed(s, m->text, ids, clip_skip, b.vectors, b.positions,
                                                                b.n_vectors)
                                 : lsdi_clip_text_forward(s, m->text, ids, clip_skip);
    int ones = 1;
    for (int i = 0; i < n; i++)
        ones = ones && c[i].all_ones;
    if (emph && !ones) /* with every weight 1 the emphasis is exactly the identity: skipped */
        z = emphasis(s, z, b.weights, rows, W, m->device);
    *out = lsdt_reshape(s, z, oshape, 3);
    batch_free(&b);
    return LSD_OK;
}

static lsd_status encode_prompt(lsd_model *m, const char *prompt, lsd_prompt_syntax syntax, int clip_skip,
                                float *hidden_out, int max_chunks, int *n_chunks_out, int *n_tokens_out)
{
    const char *fn = "lsd_model_encode_prompt";
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    if (!prompt)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: prompt is NULL", fn);
    const lsdi_text_config *tc = &m->text->cfg;
    if (clip_skip <= 0)
        clip_skip = m->clip_skip;
    if (clip_skip > tc->num_layers)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: clip_skip %d exceeds the text encoder's %d layers", fn,
                          clip_skip, tc->num_layers);
    lsdi_prompt_chunks c;
    lsd_status st = lsdi_model_prompt_chunks(m, prompt, syntax, &c);
    if (st != LSD_OK)
        return lsdi_error_prefix(st, "%s", fn);
    if (n_chunks_out)
        *n_chunks_out = c.n_chunks;
    if (n_tokens_out)
        *n_tokens_out = c.n_tokens;
    if (hidden_out && c.n_chunks > max_chunks)
        st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: the prompt makes %d chunks of %d tokens, max_chunks is %d", fn,
                        c.n_chunks, c.window - 2, max_chunks);
    if (st == LSD_OK && hidden_out) {
        lsdt_no_grad_begin();
        lsdt_scope *s = lsdt_scope_begin();
        lsdt_tensor *z = NULL;
        st = s ? lsdi_model_chunks_context(s, m, &c, 1, clip_skip, syntax == LSD_PROMPT_A1111, &z)
               : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: scope", fn);
        int rc = 0;
        if (st == LSD_OK && z && lsdt_scope_status(s) == 0)
            rc = lsdt_to_host(z, hidden_out, LSDT_F32, (size_t)c.n_chunks * c.window * tc->hidden_size);
        int se = s ? lsdt_scope_end(s) : 0;
        lsdt_no_grad_end();
        if (st == LSD_OK && (se || rc || !z))
            st = lsdi_error_prefix(lsdi_error_from_shim(se ? se : rc ? rc : LSD_ERR_INTERNAL), "%s", fn);
    }
    lsdi_prompt_chunks_clear(&c);
    return st;
}

lsd_status lsd_model_encode_prompt(lsd_model *m, const char *prompt, lsd_prompt_syntax syntax, int clip_skip,
                                   float *hidden_out, int max_chunks, int *n_chunks_out, int *n_tokens_out)
{
    return lsdi_model_record(m, encode_prompt(m, prompt, syntax, clip_skip, hidden_out, max_chunks, n_chunks_out,
                                              n_tokens_out));
}
