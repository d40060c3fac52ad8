#include "nn/layers.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"

lsd_status lsdi_linear_init(lsdi_params *p, lsdi_linear *l, int in, int out, int bias, const char *name)
{
    l->in = in;
    l->out = out;
    int64_t ws[2] = {out, in}, bs[1] = {out};
    LSDI_TRY(lsdi_params_add(p, &l->weight, ws, 2, "%s.weight", name));
    if (bias)
        LSDI_TRY(lsdi_params_add(p, &l->bias, bs, 1, "%s.bias", name));
    return lsdi_params_module(p, LSDI_MOD_LINEAR, l, "%s", name);
}

lsd_status lsdi_conv2d_init(lsdi_params *p, lsdi_conv2d *c, int in, int out, int k, int stride, int padding,
                            const char *name)
{
    c->in = in;
    c->out = out;
    c->k = k;
    c->stride = stride;
    c->padding = padding;
    int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
    LSDI_TRY(lsdi_params_add(p, &c->weight, ws, 4, "%s.weight", name));
    LSDI_TRY(lsdi_params_add(p, &c->bias, bs, 1, "%s.bias", name));
    return lsdi_params_module(p, LSDI_MOD_CONV, c, "%s", name);
}

lsd_status lsdi_norm_init(lsdi_params *p, lsdi_norm *n, int channels, const char *name)
{
    int64_t s[1] = {channels};
    LSDI_TRY(lsdi_params_add(p, &n->weight, s, 1, "%s.weight", name));
    return lsdi_params_add(p, &n->bias, s, 1, "%s.bias", name);
}

/* With an adapter, the base output and the branch's intermediates die in a child scope. */
lsdt_tensor *lsdi_linear_forward(lsdt_scope *s, const lsdi_linear *l, const lsdt_tensor *x)
{
    if (!l->lora)
        return lsdt_linear(s, x, l->weight, l->bias);
    lsdt_scope *c = lsdt_scope_child(s);
    lsdt_tensor *y = lsdt_linear(c, x, l->weight, l->bias);
    return lsdt_scope_return(c, y ? l->lora->apply(c, l->lora, x, y) : NULL);
}

lsdt_tensor *lsdi_conv2d_forward(lsdt_scope *s, const lsdi_conv2d *c, const lsdt_tensor *x)
{
    if (!c->lora)
        return lsdt_conv2d(s, x, c->weight, c->bias, c->stride, c->padding);
    lsdt_scope *k = lsdt_scope_child(s);
    lsdt_tensor *y = lsdt_conv2d(k, x, c->weight, c->bias, c->stride, c->padding);
    return lsdt_scope_return(k, y ? c->lora->apply(k, c->lora, x, y) : NULL);
}

lsdt_tensor *lsdi_to_tokens(lsdt_scope *s, const lsdt_tensor *x)
{
    static const int nhwc[4] = {0, 2, 3, 1};
    lsdt_tensor *t = lsdt_permute(s, x, nhwc, 4);
    if (!t)
        return NULL;
    int64_t shape[3] = {lsdt_size(x, 0), lsdt_size(x, 2) * lsdt_size(x, 3), lsdt_size(x, 1)};
    return lsdt_reshape(s, t, shape, 3);
}

lsdt_tensor *lsdi_from_tokens(lsdt_scope *s, const lsdt_tensor *x, int64_t h, int64_t w)
{
    static const int nchw[4] = {0, 3, 1, 2};
    if (!x)
        return NULL;
    int64_t shape[4] = {lsdt_size(x, 0), h, w, lsdt_size(x, 2)};
    return lsdt_permute(s, lsdt_reshape(s, x, shape, 4), nchw, 4);
}

/* ---- attention ---------------------------------------------------------------------------------- */

lsd_status lsdi_attention_init(lsdi_params *p, lsdi_attention *a, int query_dim, int ctx_dim, int heads,
                               int head_dim, int qkv_bias, const char *prefix, const char *const names[4])
{
    char name[512];
    int inner = heads * head_dim;
    a->heads = heads;
    snprintf(name, sizeof name, "%s.%s", prefix, names[0]);
    LSDI_TRY(lsdi_linear_init(p, &a->q, query_dim, inner, qkv_bias, name));
    snprintf(name, sizeof name, "%s.%s", prefix, names[1]);
    LSDI_TRY(lsdi_linear_init(p, &a->k, ctx_dim, inner, qkv_bias, name));
    snprintf(name, sizeof name, "%s.%s", prefix, names[2]);
    LSDI_TRY(lsdi_linear_init(p, &a->v, ctx_dim, inner, qkv_bias, name));
    snprintf(name, sizeof name, "%s.%s", prefix, names[3]);
    return lsdi_linear_init(p, &a->out, inner, query_dim, 1, name);
}

/* [B, T, H*D] -> [B, H, T, D] (a view) */
static lsdt_tensor *split_heads(lsdt_scope *s, const lsdt_tensor *x, int heads)
{
    static const int bhtd[4] = {0, 2, 1, 3};
    if (!x)
        return NULL;
    int64_t shape[4] = {lsdt_size(x, 0), lsdt_size(x, 1), heads, lsdt_size(x, 2) / heads};
    return lsdt_permute(s, lsdt_reshape(s, x, shape, 4), bhtd, 4);
}

static lsdt_tensor *merge_heads(lsdt_scope *s, const lsdt_tensor *x)
{
    static const int bthd[4] = {0, 2, 1, 3};
    if (!x)
        return NULL;
    int64_t shape[3] = {lsdt_size(x, 0), lsdt_size(x, 2), lsdt_size(x, 1) * lsdt_size(x, 3)};
    return lsdt_reshape(s, lsdt_permute(s, x, bthd, 4), shape, 3);
}

lsdt_tensor *lsdi_attention_forward(lsdt_scope *parent, const lsdi_attention *a, const lsdt_tensor *x,
                                    const lsdt_tensor *ctx)
{
    if (!ctx)
        ctx = x;
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_scope *c = lsdt_scope_child(s); /* q, k, v and their views die with it */
    lsdt_tensor *q = split_heads(c, lsdi_linear_forward(c, &a->q, x), a->heads);
    lsdt_tensor *k = split_heads(c, lsdi_linear_forward(c, &a->k, ctx), a->heads);
    lsdt_tensor *v = split_heads(c, lsdi_linear_forward(c, &a->v, ctx), a->heads);
    lsdt_tensor *o = lsdt_scope_return(c, lsdt_attention(c, q, k, v, a->causal, 0.0, a->q_chunk, a->upcast));
    return lsdt_scope_return(s, lsdi_linear_forward(s, &a->out, merge_heads(s, o)));
}

/* ---- ResNet block ------------------------------------------------------------------------------- */

lsd_status lsdi_resnet_init(lsdi_params *p, lsdi_resnet *r, int in, int out, int temb_channels, int groups,
                            double eps, double output_scale, const char *prefix)
{
    char name[512];
    r->groups = groups;
    r->eps = eps;
    r->output_scale = output_scale;
    r->has_temb = temb_channels > 0;
    r->has_shortcut = in != out;
    snprintf(name, sizeof name, "%s.norm1", prefix);
    LSDI_TRY(lsdi_norm_init(p, &r->norm1, in, name));
    snprintf(name, sizeof name, "%s.conv1", prefix);
    LSDI_TRY(lsdi_conv2d_init(p, &r->conv1, in, out, 3, 1, 1, name));
    if (r->has_temb) {
        snprintf(name, sizeof name, "%s.time_emb_proj", prefix);
        LSDI_TRY(lsdi_linear_init(p, &r->time_emb_proj, temb_channels, out, 1, name));
    }
    snprintf(name, sizeof name, "%s.norm2", prefix);
    LSDI_TRY(lsdi_norm_init(p, &r->norm2, out, name));
    snprintf(name, sizeof name, "%s.conv2", prefix);
    LSDI_TRY(lsdi_conv2d_init(p, &r->conv2, out, out, 3, 1, 1, name));
    if (r->has_shortcut) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        LSDI_TRY(lsdi_conv2d_init(p, &r->shortcut, in, out, 1, 1, 0, name));
    }
    return LSD_OK;
}

/* From conv1's output h (s's, dead after) to the block's output. The residual is x itself, or the shortcut when the
 * caller has already run it. */
static lsdt_tensor *resnet_rest(lsdt_scope *s, const lsdi_resnet *r, lsdt_tensor *h, const lsdt_tensor *temb,
                                const lsdt_tensor *x, lsdt_tensor *shortcut)
{
    if (r->has_temb && temb) {
        lsdt_tensor *t = lsdi_linear_forward(s, &r->time_emb_proj, lsdt_silu(s, temb));
        int64_t shape[4] = {lsdt_size(temb, 0), r->conv1.out, 1, 1};
        h = lsdi_next(s, h, lsdt_add_reuse(s, h, lsdt_reshape(s, t, shape, 4)));
    }
    h = lsdi_next(s, h, lsdt_group_norm_silu_reuse(s, h, r->groups, r->norm2.weight, r->norm2.bias, r->eps));
    h = lsdi_next(s, h, lsdi_conv2d_forward(s, &r->conv2, h));
    if (!shortcut && r->has_shortcut)
        shortcut = lsdi_conv2d_forward(s, &r->shortcut, x);
    h = lsdi_next(s, h, lsdt_add_reuse(s, h, shortcut ? shortcut : x));
    if (r->output_scale != 1.0)
        h = lsdi_next(s, h, lsdt_mul_scalar(s, h, 1.0 / r->output_scale));
    return h;
}

static lsdt_tensor *resnet_body(lsdt_scope *parent, const lsdi_resnet *r, const lsdt_tensor *x,
                                const lsdt_tensor *temb)
{
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_tensor *h = lsdt_group_norm_silu(s, x, r->groups, r->norm1.weight, r->norm1.bias, r->eps);
    h = lsdi_next(s, h, lsdi_conv2d_forward(s, &r->conv1, h));
    return lsdt_scope_return(s, resnet_rest(s, r, h, temb, x, NULL));
}

static lsdt_tensor *resnet_block(lsdt_scope *s, const lsdt_tensor *const *in, int n, const void *r)
{
    return resnet_body(s, r, in[0], n > 1 ? in[1] : NULL);
}

lsdt_tensor *lsdi_resnet_forward(lsdt_scope *s, const lsdi_resnet *r, const lsdt_tensor *x, const lsdt_tensor *temb)
{
    if (!r->checkpoint)
        return resnet_body(s, r, x, temb);
    const lsdt_tensor *in[2] = {x, temb};
    return lsdt_checkpoint(s, resnet_block, r, in, r->has_temb && temb ? 2 : 1);
}

lsdt_tensor *lsdi_resnet_forward_last_use(lsdt_scope *s, const lsdi_resnet *r, lsdt_tensor *x)
{
    if (!r->has_shortcut || r->checkpoint) /* the residual is x itself */
        return lsdi_next(s, x, lsdi_resnet_forward(s, r, x, NULL));
    lsdt_scope *c = lsdt_scope_child(s);
    lsdt_tensor *shortcut = lsdi_conv2d_forward(c, &r->shortcut, x);
    lsdt_tensor *h = lsdt_group_norm_silu_reuse(s, x, r->groups, r->norm1.weight, r->norm1.bias, r->eps);
    h = lsdi_next(s, x, h);
    lsdt_tensor *c1 = lsdi_conv2d_forward(c, &r->conv1, h);
    lsdt_scope_drop(s, h);
    return lsdt_scope_return(c, resnet_rest(c, r, c1, NULL, NULL, shortcut));
}

/* ---- Transformer2DModel ------------------------------------------------------------------------- */

static const char *const unet_attn_names[4] = {"to_q", "to_k", "to_v", "to_out.0"};

static lsd_status block_init(lsdi_params *p, lsdi_transformer_block *b, int dim, int heads, int ctx_dim, int upcast,
                             const char *prefix)
{
    char name[512];
    int head_dim = dim / heads, ff_inner = 4 * dim;
    snprintf(name, sizeof name, "%s.norm1", prefix);
    LSDI_TRY(lsdi_norm_init(p, &b->norm1, dim, name));
    snprintf(name, sizeof name, "%s.attn1", prefix);
    LSDI_TRY(lsdi_attention_init(p, &b->attn1, dim, dim, heads, head_dim, 0, name, unet_attn_names));
    snprintf(name, sizeof name, "%s.norm2", prefix);
    LSDI_TRY(lsdi_norm_init(p, &b->norm2, dim, name));
    snprintf(name, sizeof name, "%s.attn2", prefix);
    LSDI_TRY(lsdi_attention_init(p, &b->attn2, dim, ctx_dim, heads, head_dim, 0, name, unet_attn_names));
    snprintf(name, sizeof name, "%s.norm3", prefix);
    LSDI_TRY(lsdi_norm_init(p, &b->norm3, dim, name));
    snprintf(name, sizeof name, "%s.ff.net.0.proj", prefix);
    LSDI_TRY(lsdi_linear_init(p, &b->ff_in, dim, 2 * ff_inner, 1, name));
    snprintf(name, sizeof name, "%s.ff.net.2", prefix);
    LSDI_TRY(lsdi_linear_init(p, &b->ff_out, ff_inner, dim, 1, name));
    b->attn1.upcast = b->attn2.upcast = upcast;
    return LSD_OK;
}

static lsdt_tensor *block_body(lsdt_scope *parent, const lsdi_transformer_block *b, const lsdt_tensor *x,
                               const lsdt_tensor *ctx)
{
    const double eps = 1e-5;
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_tensor *n = lsdt_layer_norm(s, x, b->norm1.weight, b->norm1.bias, eps);
    lsdt_tensor *a = lsdi_next(s, n, lsdi_attention_forward(s, &b->attn1, n, NULL));
    lsdt_tensor *h = lsdi_next(s, a, lsdt_add(s, a, x));
    n = lsdt_layer_norm(s, h, b->norm2.weight, b->norm2.bias, eps);
    a = lsdi_next(s, n, lsdi_attention_forward(s, &b->attn2, n, ctx));
    h = lsdi_next(s, h, lsdi_next(s, a, lsdt_add(s, a, h)));
    n = lsdt_layer_norm(s, h, b->norm3.weight, b->norm3.bias, eps);
    lsdt_scope *c = lsdt_scope_child(s); /* the GEGLU projection (4x the width of h, twice) and its halves */
    lsdt_tensor *proj = lsdi_linear_forward(c, &b->ff_in, n);
    lsdt_tensor *gate = lsdt_gelu(c, lsdt_chunk(c, proj, 2, 1, 2));
    lsdt_tensor *g = lsdt_scope_return(c, lsdt_mul(c, lsdt_chunk(c, proj, 2, 0, 2), gate));
    lsdt_scope_drop(s, n);
    lsdt_tensor *ff = lsdi_next(s, g, lsdi_linear_forward(s, &b->ff_out, g));
    return lsdt_scope_return(s, lsdt_add(s, ff, h));
}

static lsdt_tensor *block_ckpt(lsdt_scope *s, const lsdt_tensor *const *in, int n, const void *b)
{
    (void)n;
    return block_body(s, b, in[0], in[1]);
}

static lsdt_tensor *block_forward(lsdt_scope *s, const lsdi_transformer_block *b, const lsdt_tensor *x,
                                  const lsdt_tensor *ctx)
{
    if (!b->checkpoint || !ctx)
        return block_body(s, b, x, ctx);
    const lsdt_tensor *in[2] = {x, ctx};
    return lsdt_checkpoint(s, block_ckpt, b, in, 2);
}

lsd_status lsdi_transformer2d_init(lsdi_params *p, lsdi_transformer2d *t, int channels, int heads, int ctx_dim,
                                   int n_blocks, int groups, int linear_proj, int upcast, const char *prefix)
{
    char name[512];
    if (heads < 1 || channels % heads)
        return lsdi_error(LSD_ERR_FORMAT, "%s: %d channels do not split into %d attention heads", prefix, channels,
                          heads);
    t->channels = channels;
    t->groups = groups;
    t->linear_proj = linear_proj;
    t->blocks = calloc((size_t)n_blocks, sizeof *t->blocks);
    if (!t->blocks)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: transformer blocks", prefix);
    t->n_blocks = n_blocks;
    snprintf(name, sizeof name, "%s.norm", prefix);
    LSDI_TRY(lsdi_norm_init(p, &t->norm, channels, name));
    snprintf(name, sizeof name, "%s.proj_in", prefix);
    LSDI_TRY(linear_proj ? lsdi_linear_init(p, &t->proj_in_lin, channels, channels, 1, name)
                         : lsdi_conv2d_init(p, &t->proj_in_conv, channels, channels, 1, 1, 0, name));
    for (int i = 0; i < n_blocks; i++) {
        snprintf(name, sizeof name, "%s.transformer_blocks.%d", prefix, i);
        LSDI_TRY(block_init(p, &t->blocks[i], channels, heads, ctx_dim, upcast, name));
    }
    snprintf(name, sizeof name, "%s.proj_out", prefix);
    return linear_proj ? lsdi_linear_init(p, &t->proj_out_lin, channels, channels, 1, name)
                       : lsdi_conv2d_init(p, &t->proj_out_conv, channels, channels, 1, 1, 0, name);
}

void lsdi_transformer2d_free(lsdi_transformer2d *t)
{
    free(t->blocks);
    t->blocks = NULL;
}

void lsdi_transformer2d_set_chunk(lsdi_transformer2d *t, int q_chunk)
{
    for (int i = 0; i < t->n_blocks; i++)
        t->blocks[i].attn1.q_chunk = t->blocks[i].attn2.q_chunk = q_chunk;
}

void lsdi_transformer2d_set_checkpointing(lsdi_transformer2d *t, int on)
{
    for (int i = 0; i < t->n_blocks; i++)
        t->blocks[i].checkpoint = on;
}

lsdt_tensor *lsdi_transformer2d_forward(lsdt_scope *parent, const lsdi_transformer2d *t, const lsdt_tensor *x,
                                        const lsdt_tensor *ctx)
{
    if (!x)
        return NULL;
    int64_t h = lsdt_size(x, 2), w = lsdt_size(x, 3);
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_scope *c = lsdt_scope_child(s); /* the norm and the views around proj_in */
    lsdt_tensor *y = lsdt_group_norm(c, x, t->groups, t->norm.weight, t->norm.bias, 1e-6);
    if (t->linear_proj)
        y = lsdi_linear_forward(c, &t->proj_in_lin, lsdi_to_tokens(c, y));
    else
        y = lsdi_to_tokens(c, lsdi_conv2d_forward(c, &t->proj_in_conv, y));
    y = lsdt_scope_return(c, y);
    for (int i = 0; i < t->n_blocks; i++)
        y = lsdi_next(s, y, block_forward(s, &t->blocks[i], y, ctx));
    c = lsdt_scope_child(s);
    lsdt_tensor *o;
    if (t->linear_proj)
        o = lsdi_from_tokens(c, lsdi_linear_forward(c, &t->proj_out_lin, y), h, w);
    else
        o = lsdi_conv2d_forward(c, &t->proj_out_conv, lsdi_from_tokens(c, y, h, w));
    o = lsdi_next(s, y, lsdt_scope_return(c, o));
    return lsdt_scope_return(s, lsdt_add(s, o, x));
}
