/* VAE decoding from host latents to host pixels, whole or in blended tiles (diffusers' AutoencoderKL.tiled_decode),
 * so that large images decode in the memory of one tile. */
#ifndef LSD_SAMPLE_VAE_TILES_H
#define LSD_SAMPLE_VAE_TILES_H

#include "nn/vae.h"

/* latents: host float32 [batch, latent_channels, h, w], already divided by the scaling factor; out: host float32
 * [batch, out_channels, h*f, w*f] (the decoder's raw output). The networks run in dtype on device.
 * tile <= 0, or a latent no larger than tile on both sides: one whole decode. Otherwise tiles of tile x tile
 * latent pixels (tile a multiple of 4), overlapping by a quarter, blended linearly exactly as diffusers does. */
lsd_status lsdi_vae_decode_host(const lsdi_vae *v, lsdt_dtype dtype, const char *device, const float *latents,
                                int batch, int h, int w, int tile, float *out);

#endif
