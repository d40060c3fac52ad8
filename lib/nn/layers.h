/* Building blocks shared by the three networks: linear, conv, norms, attention, the ResNet block and the
 * transformer block, each a struct of weights plus a forward function written over shim ops. A layer registers its
 * weights (and, for linear/conv, itself as a module) in a parameter table under a diffusers name prefix. */
#ifndef LSD_NN_LAYERS_H
#define LSD_NN_LAYERS_H

#include "nn/params.h"

/* An adapter on a linear or conv layer: apply(x, y) returns what the layer outputs given its input x and its
 * base output y. The LoRA code embeds this as the first member of its own struct. */
typedef struct lsdi_lora_hook lsdi_lora_hook;
struct lsdi_lora_hook {
    lsdt_tensor *(*apply)(lsdt_scope *s, const lsdi_lora_hook *h, const lsdt_tensor *x, lsdt_tensor *y);
};

typedef struct lsdi_linear {
    lsdt_tensor *weight, *bias; /* [out, in], [out] or NULL */
    int in, out;
    lsdi_lora_hook *lora;
} lsdi_linear;

typedef struct lsdi_conv2d {
    lsdt_tensor *weight, *bias; /* [out, in, k, k] channels_last, [out] */
    int in, out, k, stride, padding;
    lsdi_lora_hook *lora;
} lsdi_conv2d;

typedef struct lsdi_norm {
    lsdt_tensor *weight, *bias;
} lsdi_norm;

lsd_status lsdi_linear_init(lsdi_params *p, lsdi_linear *l, int in, int out, int bias, const char *name);
lsd_status lsdi_conv2d_init(lsdi_params *p, lsdi_conv2d *c, int in, int out, int k, int stride, int padding,
                            const char *name);
lsd_status lsdi_norm_init(lsdi_params *p, lsdi_norm *n, int channels, const char *name);

lsdt_tensor *lsdi_linear_forward(lsdt_scope *s, const lsdi_linear *l, const lsdt_tensor *x);
lsdt_tensor *lsdi_conv2d_forward(lsdt_scope *s, const lsdi_conv2d *c, const lsdt_tensor *x);

/* Multi-head attention with projections to_q/to_k/to_v/to_out.0 (or CLIP's q_proj/.../out_proj) over
 * [B, T, C] inputs; ctx NULL means self-attention. */
typedef struct lsdi_attention {
    lsdi_linear q, k, v, out;
    int heads;
    int upcast;
    int causal;
    int q_chunk;
} lsdi_attention;

lsd_status lsdi_attention_init(lsdi_params *p, lsdi_attention *a, int query_dim, int ctx_dim, int heads,
                               int head_dim, int qkv_bias, const char *prefix, const char *const names[4]);
lsdt_tensor *lsdi_attention_forward(lsdt_scope *s, const lsdi_attention *a, const lsdt_tensor *x,
                                    const lsdt_tensor *ctx);

/* diffusers' ResnetBlock2D: norm1 silu conv1 (+ time_emb_proj(silu(temb))) norm2 silu conv2, plus the input
 * (through conv_shortcut when channels change), divided by output_scale. temb_channels 0: no time embedding. */
typedef struct lsdi_resnet {
    lsdi_norm norm1, norm2;
    lsdi_conv2d conv1, conv2, shortcut;
    lsdi_linear time_emb_proj;
    int has_shortcut, has_temb, groups;
    double eps, output_scale;
    int checkpoint; /* recompute the activations in backward (lsdt_checkpoint) */
} lsdi_resnet;

lsd_status lsdi_resnet_init(lsdi_params *p, lsdi_resnet *r, int in, int out, int temb_channels, int groups,
                            double eps, double output_scale, const char *prefix);
lsdt_tensor *lsdi_resnet_forward(lsdt_scope *s, const lsdi_resnet *r, const lsdt_tensor *x, const lsdt_tensor *temb);
/* The same without a time embedding, for an x that s owns and that is dead after the call (s drops it). Without
 * autograd the shortcut runs first and norm1 overwrites x, so a channel-changing block holds x and two outputs of
 * its width at most, not x twice over: that sets the VAE decoder's peak at full resolution. */
lsdt_tensor *lsdi_resnet_forward_last_use(lsdt_scope *s, const lsdi_resnet *r, lsdt_tensor *x);

/* diffusers' Transformer2DModel with one or more BasicTransformerBlocks (self-attn, cross-attn, GEGLU ff). */
typedef struct lsdi_transformer_block {
    lsdi_norm norm1, norm2, norm3;
    lsdi_attention attn1, attn2;
    lsdi_linear ff_in, ff_out; /* ff.net.0.proj (GEGLU, 2 * inner), ff.net.2 */
    int checkpoint;            /* recompute the activations in backward (lsdt_checkpoint) */
} lsdi_transformer_block;

typedef struct lsdi_transformer2d {
    lsdi_norm norm;
    lsdi_conv2d proj_in_conv, proj_out_conv;
    lsdi_linear proj_in_lin, proj_out_lin;
    int linear_proj, groups, channels, n_blocks;
    lsdi_transformer_block *blocks;
} lsdi_transformer2d;

lsd_status lsdi_transformer2d_init(lsdi_params *p, lsdi_transformer2d *t, int channels, int heads, int ctx_dim,
                                   int n_blocks, int groups, int linear_proj, int upcast, const char *prefix);
void lsdi_transformer2d_free(lsdi_transformer2d *t);
/* x [B, C, H, W] (channels_last), ctx [B, T, ctx_dim]. */
lsdt_tensor *lsdi_transformer2d_forward(lsdt_scope *s, const lsdi_transformer2d *t, const lsdt_tensor *x,
                                        const lsdt_tensor *ctx);
void lsdi_transformer2d_set_chunk(lsdi_transformer2d *t, int q_chunk);
void lsdi_transformer2d_set_checkpointing(lsdi_transformer2d *t, int on);

/* `out`, after freeing `dead` if it was made in s. The forwards run each block in a child scope of their own (so an
 * input from the caller is never theirs to drop) and drop each intermediate once its last user has run: without
 * autograd the live set is then a block's few activations, not every activation of the pass (at the VAE's 512x512
 * blocks one is 134-268 MB). Under autograd the graph keeps what backward needs; the drops change nothing. */
static inline lsdt_tensor *lsdi_next(lsdt_scope *s, lsdt_tensor *dead, lsdt_tensor *out)
{
    if (dead != out)
        lsdt_scope_drop(s, dead);
    return out;
}

/* NCHW (channels_last in memory) <-> [B, H*W, C] without copying: the NHWC storage is already [B, HW, C]. */
lsdt_tensor *lsdi_to_tokens(lsdt_scope *s, const lsdt_tensor *x);
lsdt_tensor *lsdi_from_tokens(lsdt_scope *s, const lsdt_tensor *x, int64_t h, int64_t w);

#endif
