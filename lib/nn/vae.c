#include "nn/vae.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"

#define VAE_EPS 1e-6

static const char *const vae_attn_names[4] = {"to_q", "to_k", "to_v", "to_out.0"};

static lsd_status mid_init(lsdi_params *p, lsdi_vae_mid *m, int ch, int groups, const char *prefix)
{
    char name[256];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", prefix);
    LSDI_TRY(lsdi_resnet_init(p, &m->resnets[0], ch, ch, 0, groups, VAE_EPS, 1.0, name));
    snprintf(name, sizeof name, "%s.mid_block.attentions.0.group_norm", prefix);
    LSDI_TRY(lsdi_norm_init(p, &m->attn_norm, ch, name));
    snprintf(name, sizeof name, "%s.mid_block.attentions.0", prefix);
    LSDI_TRY(lsdi_attention_init(p, &m->attn, ch, ch, 1, ch, 1, name, vae_attn_names));
    m->attn.upcast = 1;
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", prefix);
    return lsdi_resnet_init(p, &m->resnets[1], ch, ch, 0, groups, VAE_EPS, 1.0, name);
}

static lsd_status coder_init(lsdi_params *p, lsdi_vae_coder *e, const lsdi_vae_config *c, int decoder)
{
    char name[256];
    const char *pre = decoder ? "decoder" : "encoder";
    int n = c->n_blocks, G = c->norm_num_groups, L = c->layers_per_block + (decoder ? 1 : 0);
    int top = c->block_out_channels[n - 1], ch0 = c->block_out_channels[0];
    snprintf(name, sizeof name, "%s.conv_in", pre);
    LSDI_TRY(lsdi_conv2d_init(p, &e->conv_in, decoder ? c->latent_channels : c->in_channels, decoder ? top : ch0, 3,
                              1, 1, name));
    if (decoder)
        LSDI_TRY(mid_init(p, &e->mid, top, G, pre));
    int out_ch = decoder ? top : ch0;
    for (int i = 0; i < n; i++) {
        lsdi_vae_level *lv = &e->levels[i];
        int in_ch = out_ch;
        out_ch = c->block_out_channels[decoder ? n - 1 - i : i];
        lv->n = L;
        if (!(lv->resnets = calloc((size_t)L, sizeof *lv->resnets)))
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE blocks");
        for (int j = 0; j < L; j++) {
            snprintf(name, sizeof name, "%s.%s.%d.resnets.%d", pre, decoder ? "up_blocks" : "down_blocks", i, j);
            LSDI_TRY(lsdi_resnet_init(p, &lv->resnets[j], j ? out_ch : in_ch, out_ch, 0, G, VAE_EPS, 1.0, name));
        }
        if (i < n - 1) {
            lv->has_sample = 1;
            snprintf(name, sizeof name, "%s.%s.%d.%s.0.conv", pre, decoder ? "up_blocks" : "down_blocks", i,
                     decoder ? "upsamplers" : "downsamplers");
            LSDI_TRY(lsdi_conv2d_init(p, &lv->sampler, out_ch, out_ch, 3, decoder ? 1 : 2, decoder ? 1 : 0, name));
        }
    }
    if (!decoder)
        LSDI_TRY(mid_init(p, &e->mid, top, G, pre));
    snprintf(name, sizeof name, "%s.conv_norm_out", pre);
    LSDI_TRY(lsdi_norm_init(p, &e->conv_norm_out, decoder ? ch0 : top, name));
    snprintf(name, sizeof name, "%s.conv_out", pre);
    return lsdi_conv2d_init(p, &e->conv_out, decoder ? ch0 : top,
                            decoder ? c->out_channels : 2 * c->latent_channels, 3, 1, 1, name);
}

static lsd_status build(lsdi_vae *v)
{
    const lsdi_vae_config *c = &v->cfg;
    int z = c->latent_channels;
    if (c->layers_per_block < 1 || c->layers_per_block > 64)
        return lsdi_error(LSD_ERR_FORMAT, "VAE config: layers_per_block %d out of range", c->layers_per_block);
    if (!v->decode_only)
        LSDI_TRY(coder_init(&v->params, &v->encoder, c, 0));
    LSDI_TRY(coder_init(&v->params, &v->decoder, c, 1));
    if (!v->decode_only)
        LSDI_TRY(lsdi_conv2d_init(&v->params, &v->quant_conv, 2 * z, 2 * z, 1, 1, 0, "quant_conv"));
    return lsdi_conv2d_init(&v->params, &v->post_quant_conv, z, z, 1, 1, 0, "post_quant_conv");
}

lsd_status lsdi_vae_new(const lsdi_vae_config *cfg, int decode_only, lsdi_vae **out)
{
    *out = NULL;
    if (cfg->n_blocks < 1 || cfg->n_blocks > LSDI_MAX_BLOCKS)
        return lsdi_error(LSD_ERR_FORMAT, "VAE config: %d blocks", cfg->n_blocks);
    lsdi_vae *v = calloc(1, sizeof *v);
    if (!v)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE");
    v->cfg = *cfg;
    v->decode_only = decode_only;
    lsd_status st = build(v);
    if (st != LSD_OK) {
        lsdi_vae_free(v);
        return st;
    }
    *out = v;
    return LSD_OK;
}

void lsdi_vae_free(lsdi_vae *v)
{
    if (!v)
        return;
    lsdi_params_free(&v->params);
    for (int i = 0; i < LSDI_MAX_BLOCKS; i++) {
        free(v->encoder.levels[i].resnets);
        free(v->decoder.levels[i].resnets);
    }
    free(v);
}

int lsdi_vae_scale_factor(const lsdi_vae *v)
{
    return 1 << (v->cfg.n_blocks - 1);
}

static lsdt_tensor *mid_forward(lsdt_scope *parent, const lsdi_vae_mid *m, int groups, const lsdt_tensor *x)
{
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_tensor *h = lsdi_resnet_forward(s, &m->resnets[0], x, NULL);
    if (!h)
        return lsdt_scope_return(s, NULL);
    int64_t hh = lsdt_size(h, 2), ww = lsdt_size(h, 3);
    lsdt_scope *c = lsdt_scope_child(s); /* the norm, the token views and the attention's output */
    lsdt_tensor *a = lsdt_group_norm(c, h, groups, m->attn_norm.weight, m->attn_norm.bias, VAE_EPS);
    a = lsdi_attention_forward(c, &m->attn, lsdi_to_tokens(c, a), NULL);
    a = lsdt_scope_return(c, lsdt_add(c, lsdi_from_tokens(c, a, hh, ww), h));
    h = lsdi_next(s, h, a);
    return lsdt_scope_return(s, lsdi_next(s, h, lsdi_resnet_forward(s, &m->resnets[1], h, NULL)));
}

static lsdt_tensor *coder_tail(lsdt_scope *s, const lsdi_vae_coder *e, int groups, lsdt_tensor *h)
{
    h = lsdi_next(s, h, lsdt_group_norm_silu(s, h, groups, e->conv_norm_out.weight, e->conv_norm_out.bias, VAE_EPS));
    return lsdi_next(s, h, lsdi_conv2d_forward(s, &e->conv_out, h));
}

/* The chain of levels shared by both halves; each step's input is dropped once the step has run. */
static lsdt_tensor *levels_forward(lsdt_scope *s, const lsdi_vae_coder *e, int n, int decoder, lsdt_tensor *h)
{
    for (int i = 0; i < n; i++) {
        const lsdi_vae_level *lv = &e->levels[i];
        for (int j = 0; j < lv->n; j++)
            h = lsdi_resnet_forward_last_use(s, &lv->resnets[j], h);
        if (!lv->has_sample)
            continue;
        /* diffusers' Downsample2D with padding 0 pads right and bottom only */
        lsdt_tensor *t = decoder ? lsdt_upsample_nearest2x(s, h) : lsdt_pad2d(s, h, 0, 1, 0, 1);
        h = lsdi_next(s, h, t);
        h = lsdi_next(s, h, lsdi_conv2d_forward(s, &lv->sampler, h));
    }
    return h;
}

lsdt_tensor *lsdi_vae_encode(lsdt_scope *parent, const lsdi_vae *v, const lsdt_tensor *image, lsdt_tensor **mean,
                             lsdt_tensor **logvar)
{
    if (v->decode_only) { /* the public callers refuse first (lsdi_model_check_encoder); this keeps the rest safe */
        lsdt_scope_fail(parent, LSD_ERR_INVALID_ARGUMENT, "VAE encode: the model was loaded with vae_decode_only");
        if (mean)
            *mean = NULL;
        if (logvar)
            *logvar = NULL;
        return NULL;
    }
    const lsdi_vae_config *c = &v->cfg;
    const lsdi_vae_coder *e = &v->encoder;
    int G = c->norm_num_groups;
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_tensor *h = levels_forward(s, e, c->n_blocks, 0, lsdi_conv2d_forward(s, &e->conv_in, image));
    h = lsdi_next(s, h, mid_forward(s, &e->mid, G, h));
    h = coder_tail(s, e, G, h);
    lsdt_tensor *moments = lsdt_scope_return(s, lsdi_next(s, h, lsdi_conv2d_forward(s, &v->quant_conv, h)));
    if (mean)
        *mean = lsdt_chunk(parent, moments, 2, 0, 1);
    if (logvar)
        *logvar = lsdt_clamp(parent, lsdt_chunk(parent, moments, 2, 1, 1), -30.0, 20.0);
    return moments;
}

lsdt_tensor *lsdi_vae_decode(lsdt_scope *parent, const lsdi_vae *v, const lsdt_tensor *latents)
{
    const lsdi_vae_config *c = &v->cfg;
    const lsdi_vae_coder *d = &v->decoder;
    int G = c->norm_num_groups;
    lsdt_scope *s = lsdt_scope_child(parent);
    lsdt_tensor *h = lsdi_conv2d_forward(s, &v->post_quant_conv, latents);
    h = lsdi_next(s, h, lsdi_conv2d_forward(s, &d->conv_in, h));
    h = lsdi_next(s, h, mid_forward(s, &d->mid, G, h));
    return lsdt_scope_return(s, coder_tail(s, d, G, levels_forward(s, d, c->n_blocks, 1, h)));
}
