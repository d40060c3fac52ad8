#include "nn/clip_text.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"

static const char *const clip_attn_names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};

static lsd_status build(lsdi_clip_text *m)
{
    const lsdi_text_config *c = &m->cfg;
    lsdi_params *p = &m->params;
    char name[256];
    if (c->num_heads < 1 || c->hidden_size % c->num_heads)
        return lsdi_error(LSD_ERR_FORMAT, "text encoder: hidden_size %d does not split into %d heads", c->hidden_size,
                          c->num_heads);
    int64_t tok[2] = {c->vocab_size, c->hidden_size}, pos[2] = {c->max_positions, c->hidden_size};
    LSDI_TRY(lsdi_params_add(p, &m->token_embedding, tok, 2, "text_model.embeddings.token_embedding.weight"));
    LSDI_TRY(lsdi_params_add(p, &m->position_embedding, pos, 2, "text_model.embeddings.position_embedding.weight"));
    for (int i = 0; i < c->num_layers; i++) {
        lsdi_clip_layer *l = &m->layers[i];
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm1", i);
        LSDI_TRY(lsdi_norm_init(p, &l->layer_norm1, c->hidden_size, name));
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn", i);
        LSDI_TRY(lsdi_attention_init(p, &l->self_attn, c->hidden_size, c->hidden_size, c->num_heads,
                                     c->hidden_size / c->num_heads, 1, name, clip_attn_names));
        l->self_attn.causal = 1;
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm2", i);
        LSDI_TRY(lsdi_norm_init(p, &l->layer_norm2, c->hidden_size, name));
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc1", i);
        LSDI_TRY(lsdi_linear_init(p, &l->fc1, c->hidden_size, c->intermediate_size, 1, name));
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc2", i);
        LSDI_TRY(lsdi_linear_init(p, &l->fc2, c->intermediate_size, c->hidden_size, 1, name));
    }
    return lsdi_norm_init(p, &m->final_layer_norm, c->hidden_size, "text_model.final_layer_norm");
}

lsd_status lsdi_clip_text_new(const lsdi_text_config *cfg, lsdi_clip_text **out)
{
    *out = NULL;
    if (cfg->num_layers < 1 || cfg->num_layers > 1024)
        return lsdi_error(LSD_ERR_FORMAT, "text encoder: num_hidden_layers %d out of range", cfg->num_layers);
    lsdi_clip_text *m = calloc(1, sizeof *m);
    if (!m || !(m->layers = calloc((size_t)cfg->num_layers, sizeof *m->layers))) {
        free(m);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "text encoder");
    }
    m->cfg = *cfg;
    lsd_status st = build(m);
    if (st != LSD_OK) {
        lsdi_clip_text_free(m);
        return st;
    }
    *out = m;
    return LSD_OK;
}

void lsdi_clip_text_free(lsdi_clip_text *m)
{
    if (!m)
        return;
    lsdi_params_free(&m->params);
    free(m->layers);
    free(m);
}

static lsdt_tensor *mlp(lsdt_scope *s, const lsdi_clip_text *m, const lsdi_clip_layer *l, const lsdt_tensor *x)
{
    lsdt_tensor *h = lsdi_linear_forward(s, &l->fc1, x);
    h = m->cfg.quick_gelu ? lsdt_quick_gelu(s, h) : lsdt_gelu(s, h);
    return lsdi_linear_forward(s, &l->fc2, h);
}

/* The transformer over input embeddings x [B, T, hidden] (token rows, before the position embeddings). */
static lsdt_tensor *encode(lsdt_scope *s, const lsdi_clip_text *m, lsdt_tensor *x, int64_t t, int clip_skip)
{
    const lsdi_text_config *c = &m->cfg;
    double eps = c->layer_norm_eps;
    lsdt_tensor *pos = lsdt_narrow(s, m->position_embedding, 0, 0, t);
    lsdt_tensor *h = lsdt_add(s, x, pos);
    int n_run = c->num_layers - clip_skip + 1;
    for (int i = 0; i < n_run; i++) {
        const lsdi_clip_layer *l = &m->layers[i];
        lsdt_scope *k = lsdt_scope_child(s); /* one layer's intermediates */
        lsdt_tensor *n = lsdt_layer_norm(k, h, l->layer_norm1.weight, l->layer_norm1.bias, eps);
        lsdt_tensor *y = lsdt_add(k, h, lsdi_attention_forward(k, &l->self_attn, n, NULL));
        n = lsdt_layer_norm(k, y, l->layer_norm2.weight, l->layer_norm2.bias, eps);
        h = lsdi_next(s, h, lsdt_scope_return(k, lsdt_add(k, y, mlp(k, m, l, n))));
    }
    return lsdt_layer_norm(s, h, m->final_layer_norm.weight, m->final_layer_norm.bias, eps);
}

static int check_ids(lsdt_scope *parent, const lsdi_clip_text *m, const lsdt_tensor *ids, int clip_skip)
{
    if (!ids)
        return 0;
    int64_t t = lsdt_size(ids, 1);
    if (clip_skip < 1 || clip_skip > m->cfg.num_layers || t < 1 || t > m->cfg.max_positions) {
        lsdt_scope_fail(parent, LSD_ERR_INVALID_ARGUMENT, "text encoder: clip_skip or token count out of range");
        return 0;
    }
    return 1;
}

lsdt_tensor *lsdi_clip_text_forward(lsdt_scope *parent, const lsdi_clip_text *m, const lsdt_tensor *ids,
                                    int clip_skip)
{
    if (!check_ids(parent, m, ids, clip_skip))
        return NULL;
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_tensor *x = lsdt_embedding(s, ids, m->token_embedding);
    return lsdt_scope_return(s, encode(s, m, x, lsdt_size(ids, 1), clip_skip));
}

/* The rows are gathered from [token rows of every position; the given vectors] by one index, so each position
 * holds exactly its token's row or its vector. */
lsdt_tensor *lsdi_clip_text_forward_fixed(lsdt_scope *parent, const lsdi_clip_text *m, const lsdt_tensor *ids,
                                          int clip_skip, const float *vectors, const int64_t *positions, int n)
{
    if (!check_ids(parent, m, ids, clip_skip))
        return NULL;
    int64_t b = lsdt_size(ids, 0), t = lsdt_size(ids, 1), d = m->cfg.hidden_size, bt = b * t;
    int64_t *index = malloc((size_t)bt * sizeof *index);
    if (!index) {
        lsdt_scope_fail(parent, LSD_ERR_OUT_OF_MEMORY, "text encoder: out of memory for the input embeddings' index");
        return NULL;
    }
    for (int64_t k = 0; k < bt; k++)
        index[k] = k;
    for (int k = 0; k < n; k++)
        index[positions[k]] = bt + k;
    char device[32];
    lsdt_get_device(m->token_embedding, device, sizeof device);
    lsdt_scope *s = lsdt_scope_child(parent);
    int64_t rows_shape[2] = {bt, d}, vec_shape[2] = {n, d}, idx_shape[1] = {bt}, out_shape[3] = {b, t, d};
    lsdt_tensor *rows = lsdt_reshape(s, lsdt_embedding(s, ids, m->token_embedding), rows_shape, 2);
    lsdt_tensor *vec = lsdt_from_host(s, vectors, LSDT_F32, vec_shape, 2, lsdt_get_dtype(m->token_embedding), device);
    lsdt_tensor *table[2] = {rows, vec};
    lsdt_tensor *idx = lsdt_from_host(s, index, LSDT_I64, idx_shape, 1, LSDT_I64, device);
    free(index);
    lsdt_tensor *x = lsdt_reshape(s, lsdt_index_select(s, lsdt_cat(s, table, 2, 0), 0, idx), out_shape, 3);
    return lsdt_scope_return(s, encode(s, m, x, t, clip_skip));
}
