#include "nn/unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"

static lsd_status level_alloc(lsdi_unet_level *l, int n, int attn)
{
    l->n = n;
    l->resnets = calloc((size_t)n, sizeof *l->resnets);
    if (attn)
        l->attentions = calloc((size_t)n, sizeof *l->attentions);
    if (!l->resnets || (attn && !l->attentions))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "UNet blocks");
    return LSD_OK;
}

static void level_free(lsdi_unet_level *l)
{
    if (l->attentions)
        for (int i = 0; i < l->n; i++)
            lsdi_transformer2d_free(&l->attentions[i]);
    free(l->attentions);
    free(l->resnets);
}

static lsd_status build(lsdi_unet *u)
{
    const lsdi_unet_config *c = &u->cfg;
    lsdi_params *p = &u->params;
    char name[256];
    int n = c->n_blocks, L = c->layers_per_block, G = c->norm_num_groups;
    int ch0 = c->block_out_channels[0], temb = 4 * ch0;
    double eps = c->norm_eps;
    if (n < 1 || L < 1 || L > 64 || c->transformer_layers < 1 || c->transformer_layers > 64)
        return lsdi_error(LSD_ERR_FORMAT, "UNet config: unsupported block layout");

    LSDI_TRY(lsdi_conv2d_init(p, &u->conv_in, c->in_channels, ch0, 3, 1, 1, "conv_in"));
    LSDI_TRY(lsdi_linear_init(p, &u->time_linear_1, ch0, temb, 1, "time_embedding.linear_1"));
    LSDI_TRY(lsdi_linear_init(p, &u->time_linear_2, temb, temb, 1, "time_embedding.linear_2"));

    int out_ch = ch0;
    for (int i = 0; i < n; i++) {
        lsdi_unet_level *lv = &u->down[i];
        int in_ch = out_ch;
        out_ch = c->block_out_channels[i];
        LSDI_TRY(level_alloc(lv, L, c->down_attn[i]));
        for (int j = 0; j < L; j++) {
            snprintf(name, sizeof name, "down_blocks.%d.resnets.%d", i, j);
            LSDI_TRY(lsdi_resnet_init(p, &lv->resnets[j], j ? out_ch : in_ch, out_ch, temb, G, eps, 1.0, name));
            if (c->down_attn[i]) {
                snprintf(name, sizeof name, "down_blocks.%d.attentions.%d", i, j);
                LSDI_TRY(lsdi_transformer2d_init(p, &lv->attentions[j], out_ch, c->heads[i], c->cross_attention_dim,
                                                 c->transformer_layers, G, c->use_linear_projection,
                                                 c->upcast_attention, name));
            }
        }
        if (i < n - 1) {
            lv->has_sample = 1;
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0.conv", i);
            LSDI_TRY(lsdi_conv2d_init(p, &lv->sampler, out_ch, out_ch, 3, 2, c->downsample_padding, name));
        }
    }

    int top = c->block_out_channels[n - 1];
    double mid_scale = c->mid_block_scale_factor;
    LSDI_TRY(lsdi_resnet_init(p, &u->mid_resnets[0], top, top, temb, G, eps, mid_scale, "mid_block.resnets.0"));
    LSDI_TRY(lsdi_transformer2d_init(p, &u->mid_attn, top, c->heads[n - 1], c->cross_attention_dim,
                                     c->transformer_layers, G, c->use_linear_projection, c->upcast_attention,
                                     "mid_block.attentions.0"));
    LSDI_TRY(lsdi_resnet_init(p, &u->mid_resnets[1], top, top, temb, G, eps, mid_scale, "mid_block.resnets.1"));

    int prev_out = top;
    for (int i = 0; i < n; i++) {
        lsdi_unet_level *lv = &u->up[i];
        int o = c->block_out_channels[n - 1 - i];
        int in_ch = c->block_out_channels[i + 1 < n ? n - 2 - i : 0];
        int heads = c->heads[n - 1 - i];
        LSDI_TRY(level_alloc(lv, L + 1, c->up_attn[i]));
        for (int j = 0; j <= L; j++) {
            int skip = j == L ? in_ch : o;
            int res_in = j ? o : prev_out;
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, j);
            LSDI_TRY(lsdi_resnet_init(p, &lv->resnets[j], res_in + skip, o, temb, G, eps, 1.0, name));
            if (c->up_attn[i]) {
                snprintf(name, sizeof name, "up_blocks.%d.attentions.%d", i, j);
                LSDI_TRY(lsdi_transformer2d_init(p, &lv->attentions[j], o, heads, c->cross_attention_dim,
                                                 c->transformer_layers, G, c->use_linear_projection,
                                                 c->upcast_attention, name));
            }
        }
        if (i < n - 1) {
            lv->has_sample = 1;
            snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0.conv", i);
            LSDI_TRY(lsdi_conv2d_init(p, &lv->sampler, o, o, 3, 1, 1, name));
        }
        prev_out = o;
    }
    LSDI_TRY(lsdi_norm_init(p, &u->conv_norm_out, ch0, "conv_norm_out"));
    return lsdi_conv2d_init(p, &u->conv_out, ch0, c->out_channels, 3, 1, 1, "conv_out");
}

lsd_status lsdi_unet_new(const lsdi_unet_config *cfg, lsdi_unet **out)
{
    *out = NULL;
    if (cfg->n_blocks < 1 || cfg->n_blocks > LSDI_MAX_BLOCKS)
        return lsdi_error(LSD_ERR_FORMAT, "UNet config: %d blocks", cfg->n_blocks);
    lsdi_unet *u = calloc(1, sizeof *u);
    if (!u)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "UNet");
    u->cfg = *cfg;
    lsd_status st = build(u);
    if (st != LSD_OK) {
        lsdi_unet_free(u);
        return st;
    }
    *out = u;
    return LSD_OK;
}

void lsdi_unet_free(lsdi_unet *u)
{
    if (!u)
        return;
    lsdi_params_free(&u->params);
    for (int i = 0; i < LSDI_MAX_BLOCKS; i++) {
        level_free(&u->down[i]);
        level_free(&u->up[i]);
    }
    lsdi_transformer2d_free(&u->mid_attn);
    free(u);
}

/* Calls on_t on every Transformer2DModel and on_r (if any) on every ResNet block. */
static void visit(lsdi_unet *u, void (*on_t)(lsdi_transformer2d *t, int v), void (*on_r)(lsdi_resnet *r, int v), int v)
{
    lsdi_unet_level *sides[2] = {u->down, u->up};
    for (int side = 0; side < 2; side++)
        for (int i = 0; i < u->cfg.n_blocks; i++) {
            lsdi_unet_level *lv = &sides[side][i];
            for (int j = 0; j < lv->n; j++) {
                if (lv->attentions)
                    on_t(&lv->attentions[j], v);
                if (on_r)
                    on_r(&lv->resnets[j], v);
            }
        }
    on_t(&u->mid_attn, v);
    for (int i = 0; on_r && i < 2; i++)
        on_r(&u->mid_resnets[i], v);
}

void lsdi_unet_set_attention_chunk(lsdi_unet *u, int q_chunk)
{
    visit(u, lsdi_transformer2d_set_chunk, NULL, q_chunk);
}

static void resnet_set_checkpointing(lsdi_resnet *r, int on)
{
    r->checkpoint = on;
}

void lsdi_unet_set_checkpointing(lsdi_unet *u, int on)
{
    visit(u, lsdi_transformer2d_set_checkpointing, resnet_set_checkpointing, on);
}

int lsdi_unet_size_factor(const lsdi_unet *u)
{
    return 1 << (u->cfg.n_blocks - 1);
}

lsdt_tensor *lsdi_timestep_embedding(lsdt_scope *s, const lsdt_tensor *timesteps, int dim, int flip_sin_to_cos,
                                     double freq_shift)
{
    int half = dim / 2;
    /* The same float32 op sequence as diffusers, so the angles round the same way. */
    lsdt_tensor *e = lsdt_arange(s, 0, half, 1, LSDT_F32, NULL);
    e = lsdt_mul_scalar(s, e, -log(10000.0));
    e = lsdt_div(s, e, lsdt_scalar(s, half - freq_shift, LSDT_F32, NULL));
    e = lsdt_exp(s, e);
    char dev[32] = "cpu";
    if (timesteps)
        lsdt_get_device(timesteps, dev, sizeof dev);
    e = lsdt_to_device(s, e, dev);
    lsdt_tensor *t = lsdt_unsqueeze(s, lsdt_to_dtype(s, timesteps, LSDT_F32), 1);
    lsdt_tensor *arg = lsdt_mul(s, t, lsdt_unsqueeze(s, e, 0));
    lsdt_tensor *sn = lsdt_sin(s, arg), *cs = lsdt_cos(s, arg);
    lsdt_tensor *parts[2] = {flip_sin_to_cos ? cs : sn, flip_sin_to_cos ? sn : cs};
    return lsdt_cat(s, parts, 2, 1);
}

static lsdt_tensor *level_step(lsdt_scope *s, const lsdi_unet_level *lv, int j, lsdt_tensor *h,
                               const lsdt_tensor *temb, const lsdt_tensor *ctx)
{
    h = lsdi_resnet_forward(s, &lv->resnets[j], h, temb);
    if (lv->attentions)
        h = lsdi_next(s, h, lsdi_transformer2d_forward(s, &lv->attentions[j], h, ctx));
    return h;
}

lsdt_tensor *lsdi_unet_forward(lsdt_scope *parent, const lsdi_unet *u, const lsdt_tensor *x,
                               const lsdt_tensor *timesteps, const lsdt_tensor *ctx)
{
    const lsdi_unet_config *c = &u->cfg;
    if (!x || !timesteps || !ctx)
        return NULL;
    int64_t f = lsdi_unet_size_factor(u);
    if (lsdt_ndim(x) != 4 || lsdt_size(x, 1) != c->in_channels || lsdt_size(x, 2) % f || lsdt_size(x, 3) % f) {
        lsdt_scope_fail(parent, LSD_ERR_INVALID_ARGUMENT, "UNet: sample must be [B, in_channels, H, W] with H and W "
                                                          "multiples of the downsampling factor");
        return NULL;
    }
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_scope *k = lsdt_scope_child(s);
    lsdt_tensor *temb = lsdi_timestep_embedding(k, timesteps, c->block_out_channels[0], c->flip_sin_to_cos,
                                                c->freq_shift);
    temb = lsdt_to_dtype(k, temb, lsdt_get_dtype(x));
    temb = lsdi_linear_forward(k, &u->time_linear_1, temb);
    temb = lsdt_scope_return(k, lsdi_linear_forward(k, &u->time_linear_2, lsdt_silu(k, temb)));

    /* Skip connections: conv_in output plus one per resnet and per downsampler; each is dropped once the up path
     * has consumed it. */
    lsdt_tensor *skips[LSDI_MAX_BLOCKS * 66];
    int n_skips = 0;
    lsdt_tensor *h = lsdi_conv2d_forward(s, &u->conv_in, x);
    skips[n_skips++] = h;
    for (int i = 0; i < c->n_blocks; i++) {
        const lsdi_unet_level *lv = &u->down[i];
        for (int j = 0; j < lv->n; j++)
            skips[n_skips++] = h = level_step(s, lv, j, h, temb, ctx);
        if (lv->has_sample)
            skips[n_skips++] = h = lsdi_conv2d_forward(s, &lv->sampler, h);
    }
    h = lsdi_resnet_forward(s, &u->mid_resnets[0], h, temb); /* the last down output stays: it is a skip */
    h = lsdi_next(s, h, lsdi_transformer2d_forward(s, &u->mid_attn, h, ctx));
    h = lsdi_next(s, h, lsdi_resnet_forward(s, &u->mid_resnets[1], h, temb));
    for (int i = 0; i < c->n_blocks; i++) {
        const lsdi_unet_level *lv = &u->up[i];
        for (int j = 0; j < lv->n; j++) {
            lsdt_tensor *pair[2] = {h, skips[--n_skips]};
            lsdt_tensor *in = lsdt_cat(s, pair, 2, 1);
            lsdt_scope_drop(s, pair[0]);
            lsdt_scope_drop(s, pair[1]);
            h = lsdi_next(s, in, level_step(s, lv, j, in, temb, ctx));
        }
        if (lv->has_sample) {
            lsdt_tensor *up = lsdi_next(s, h, lsdt_upsample_nearest2x(s, h));
            h = lsdi_next(s, up, lsdi_conv2d_forward(s, &lv->sampler, up));
        }
    }
    h = lsdi_next(s, h, lsdt_group_norm_silu(s, h, c->norm_num_groups, u->conv_norm_out.weight,
                                             u->conv_norm_out.bias, c->norm_eps));
    return lsdt_scope_return(s, lsdi_conv2d_forward(s, &u->conv_out, h));
}
