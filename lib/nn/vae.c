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
    LSDI_TRY(coder_init(&v->params, &v->encoder, c, 0));
    LSDI_TRY(coder_init(&v->params, &v->decoder, c, 1));
    LSDI_TRY(lsdi_conv2d_init(&v->params, &v->quant_conv, 2 * z, 2 * z, 1, 1, 0, "quant_conv"));
    return lsdi_conv2d_init(&v->params, &v->post_quant_conv, z, z, 1, 1, 0, "post_quant_conv");
}

lsd_status lsdi_vae_new(const lsdi_vae_config *cfg, lsdi_vae **out)
{
    *out = NULL;
    if (cfg->n_blocks < 1 || cfg->n_blocks > LSDI_MAX_BLOCKS)
        return lsdi_error(LSD_ERR_FORMAT, "VAE config: %d blocks", cfg->n_blocks);
    lsdi_vae *v = calloc(1, sizeof *v);
    if (!v)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE");
    v->cfg = *cfg;
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

static lsdt_tensor *mid_forward(lsdt_scope *s, const lsdi_vae_mid *m, int groups, lsdt_tensor *h)
{
    h = lsdi_resnet_forward(s, &m->resnets[0], h, NULL);
    if (!h)
        return NULL;
    int64_t hh = lsdt_size(h, 2), ww = lsdt_size(h, 3);
    lsdt_tensor *a = lsdt_group_norm(s, h, groups, m->attn_norm.weight, m->attn_norm.bias, VAE_EPS);
    a = lsdi_attention_forward(s, &m->attn, lsdi_to_tokens(s, a), NULL);
    h = lsdt_add(s, lsdi_from_tokens(s, a, hh, ww), h);
    return lsdi_resnet_forward(s, &m->resnets[1], h, NULL);
}

static lsdt_tensor *coder_tail(lsdt_scope *s, const lsdi_vae_coder *e, int groups, lsdt_tensor *h)
{
    h = lsdt_group_norm_silu(s, h, groups, e->conv_norm_out.weight, e->conv_norm_out.bias, VAE_EPS);
    return lsdi_conv2d_forward(s, &e->conv_out, h);
}

lsdt_tensor *lsdi_vae_encode(lsdt_scope *s, const lsdi_vae *v, const lsdt_tensor *image, lsdt_tensor **mean,
                             lsdt_tensor **logvar)
{
    const lsdi_vae_config *c = &v->cfg;
    const lsdi_vae_coder *e = &v->encoder;
    int G = c->norm_num_groups;
    lsdt_tensor *h = lsdi_conv2d_forward(s, &e->conv_in, image);
    for (int i = 0; i < c->n_blocks; i++) {
        const lsdi_vae_level *lv = &e->levels[i];
        for (int j = 0; j < lv->n; j++)
            h = lsdi_resnet_forward(s, &lv->resnets[j], h, NULL);
        if (lv->has_sample) /* diffusers' Downsample2D with padding 0 pads right and bottom only */
            h = lsdi_conv2d_forward(s, &lv->sampler, lsdt_pad2d(s, h, 0, 1, 0, 1));
    }
    h = mid_forward(s, &e->mid, G, h);
    lsdt_tensor *moments = lsdi_conv2d_forward(s, &v->quant_conv, coder_tail(s, e, G, h));
    if (mean)
        *mean = lsdt_chunk(s, moments, 2, 0, 1);
    if (logvar)
        *logvar = lsdt_clamp(s, lsdt_chunk(s, moments, 2, 1, 1), -30.0, 20.0);
    return moments;
}

lsdt_tensor *lsdi_vae_decode(lsdt_scope *s, const lsdi_vae *v, const lsdt_tensor *latents)
{
    const lsdi_vae_config *c = &v->cfg;
    const lsdi_vae_coder *d = &v->decoder;
    int G = c->norm_num_groups;
    lsdt_tensor *h = lsdi_conv2d_forward(s, &v->post_quant_conv, latents);
    h = lsdi_conv2d_forward(s, &d->conv_in, h);
    h = mid_forward(s, &d->mid, G, h);
    for (int i = 0; i < c->n_blocks; i++) {
        const lsdi_vae_level *lv = &d->levels[i];
        for (int j = 0; j < lv->n; j++)
            h = lsdi_resnet_forward(s, &lv->resnets[j], h, NULL);
        if (lv->has_sample)
            h = lsdi_conv2d_forward(s, &lv->sampler, lsdt_upsample_nearest2x(s, h));
    }
    return coder_tail(s, d, G, h);
}
