/* diffusers' AutoencoderKL: encoder + quant_conv (image -> latent mean/logvar), post_quant_conv + decoder. */
#ifndef LSD_NN_VAE_H
#define LSD_NN_VAE_H

#include "model/config.h"
#include "nn/layers.h"

typedef struct lsdi_vae_level {
    lsdi_resnet *resnets;
    int n;
    int has_sample;
    lsdi_conv2d sampler;
} lsdi_vae_level;

/* UNetMidBlock2D: resnet, single-head attention over channels, resnet. */
typedef struct lsdi_vae_mid {
    lsdi_resnet resnets[2];
    lsdi_norm attn_norm;
    lsdi_attention attn;
} lsdi_vae_mid;

typedef struct lsdi_vae_coder {
    lsdi_conv2d conv_in, conv_out;
    lsdi_vae_level levels[LSDI_MAX_BLOCKS];
    lsdi_vae_mid mid;
    lsdi_norm conv_norm_out;
} lsdi_vae_coder;

typedef struct lsdi_vae {
    lsdi_vae_config cfg;
    lsdi_vae_coder encoder, decoder;
    lsdi_conv2d quant_conv, post_quant_conv;
    lsdi_params params;
    int decode_only; /* encoder and quant_conv not built: no slots in params, encode fails its scope */
} lsdi_vae;

lsd_status lsdi_vae_new(const lsdi_vae_config *cfg, int decode_only, lsdi_vae **out);
void lsdi_vae_free(lsdi_vae *v);
/* Image pixels per latent pixel (2^(levels-1)). */
int lsdi_vae_scale_factor(const lsdi_vae *v);
/* image [B, in_channels, H, W] -> moments [B, 2*latent, H/f, W/f]; mean/logvar are views of its halves
 * (logvar clamped to [-30, 20]); either output may be NULL. */
lsdt_tensor *lsdi_vae_encode(lsdt_scope *s, const lsdi_vae *v, const lsdt_tensor *image, lsdt_tensor **mean,
                             lsdt_tensor **logvar);
/* latents [B, latent, h, w] (not scaled) -> image [B, out_channels, h*f, w*f]. */
lsdt_tensor *lsdi_vae_decode(lsdt_scope *s, const lsdi_vae *v, const lsdt_tensor *latents);

#endif
