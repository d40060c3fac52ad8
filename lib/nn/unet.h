/* diffusers' UNet2DConditionModel as configured for SD 1.x. */
#ifndef LSD_NN_UNET_H
#define LSD_NN_UNET_H

#include "model/config.h"
#include "nn/layers.h"

typedef struct lsdi_unet_level {
    lsdi_resnet *resnets;          /* down: layers_per_block, up: layers_per_block + 1 */
    lsdi_transformer2d *attentions; /* same count, or NULL for plain blocks */
    int n;
    int has_sample;                /* a downsampler / upsampler follows */
    lsdi_conv2d sampler;
} lsdi_unet_level;

typedef struct lsdi_unet {
    lsdi_unet_config cfg;
    lsdi_conv2d conv_in, conv_out;
    lsdi_linear time_linear_1, time_linear_2;
    lsdi_unet_level down[LSDI_MAX_BLOCKS], up[LSDI_MAX_BLOCKS];
    lsdi_resnet mid_resnets[2];
    lsdi_transformer2d mid_attn;
    lsdi_norm conv_norm_out;
    lsdi_params params;
} lsdi_unet;

lsd_status lsdi_unet_new(const lsdi_unet_config *cfg, lsdi_unet **out);
void lsdi_unet_free(lsdi_unet *u);
/* Splits attention queries in chunks of q_chunk rows (0: whole). */
void lsdi_unet_set_attention_chunk(lsdi_unet *u, int q_chunk);
/* Gradient checkpointing of every ResNet and transformer block (diffusers' enable_gradient_checkpointing): under
 * autograd their activations are recomputed in backward instead of kept. No effect without autograd. */
void lsdi_unet_set_checkpointing(lsdi_unet *u, int on);
/* Spatial sizes must be multiples of this (one halving per downsampler). */
int lsdi_unet_size_factor(const lsdi_unet *u);
/* x [B, C, H, W] in the weights' dtype (channels_last is fastest), timesteps [B] (any float dtype),
 * ctx [B, T, cross_attention_dim] -> [B, out_channels, H, W] channels_last. */
lsdt_tensor *lsdi_unet_forward(lsdt_scope *s, const lsdi_unet *u, const lsdt_tensor *x, const lsdt_tensor *timesteps,
                               const lsdt_tensor *ctx);
/* diffusers' get_timestep_embedding: [B] -> [B, dim] float32. */
lsdt_tensor *lsdi_timestep_embedding(lsdt_scope *s, const lsdt_tensor *timesteps, int dim, int flip_sin_to_cos,
                                     double freq_shift);

#endif
