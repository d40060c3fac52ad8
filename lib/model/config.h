/* Architecture configs of the three networks, read from diffusers / transformers config.json files. */
#ifndef LSD_MODEL_CONFIG_H
#define LSD_MODEL_CONFIG_H

#include <stddef.h>

#include "lora_sd.h"

#define LSDI_MAX_BLOCKS 8

typedef struct lsdi_unet_config {
    int in_channels, out_channels;
    int n_blocks;                              /* len(block_out_channels) */
    int block_out_channels[LSDI_MAX_BLOCKS];
    int down_attn[LSDI_MAX_BLOCKS];            /* down_block_types[i] == CrossAttnDownBlock2D */
    int up_attn[LSDI_MAX_BLOCKS];              /* up_block_types[i] == CrossAttnUpBlock2D */
    int mid_attn;                              /* mid block is UNetMidBlock2DCrossAttn (always for SD 1.x) */
    int layers_per_block;
    int transformer_layers;                    /* transformer_layers_per_block (1) */
    int heads[LSDI_MAX_BLOCKS];                /* per level: attention_head_dim as SD 1.x means it (head count) */
    int cross_attention_dim;
    int norm_num_groups;
    float norm_eps;
    int flip_sin_to_cos;
    float freq_shift;
    int downsample_padding;
    float mid_block_scale_factor;
    int use_linear_projection;
    int upcast_attention;
    int sample_size;
} lsdi_unet_config;

typedef struct lsdi_vae_config {
    int in_channels, out_channels, latent_channels;
    int n_blocks;
    int block_out_channels[LSDI_MAX_BLOCKS];
    int layers_per_block;
    int norm_num_groups;
    float scaling_factor;
    int sample_size;
} lsdi_vae_config;

typedef struct lsdi_text_config {
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_layers;
    int num_heads;
    int max_positions;
    float layer_norm_eps;
    int quick_gelu; /* hidden_act == quick_gelu (else gelu) */
} lsdi_text_config;

/* Each reads one config.json; errors name the file and the key. Missing optional keys take diffusers' defaults. */
lsd_status lsdi_unet_config_load(const char *path, lsdi_unet_config *c);
lsd_status lsdi_vae_config_load(const char *path, lsdi_vae_config *c);
lsd_status lsdi_text_config_load(const char *path, lsdi_text_config *c);
/* The same from a JSON text of len bytes; name is used in messages. */
lsd_status lsdi_unet_config_parse(const char *text, size_t len, const char *name, lsdi_unet_config *c);
lsd_status lsdi_vae_config_parse(const char *text, size_t len, const char *name, lsdi_vae_config *c);
lsd_status lsdi_text_config_parse(const char *text, size_t len, const char *name, lsdi_text_config *c);

#endif
