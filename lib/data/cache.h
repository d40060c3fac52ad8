/* The frozen encoders' outputs a training run reuses: the VAE posterior of each item's draw (in memory, and in
 * safetensors files reused by later runs) and the text encoder's output for each caption (in memory).
 * latents.c turns posteriors into the step's latents; latent_cache.c and latent_file.c keep them; text_cache.c
 * keeps caption embeddings. The encoders always run on one item at a time, so an item's latents and embedding do
 * not depend on its batch companions: with and without the caches, and across a resume, they are the same bits. */
#ifndef LSD_DATA_CACHE_H
#define LSD_DATA_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "lora_sd.h"
#include "lsd_torch.h"

/* What an item's posterior depends on besides the VAE: the image and the geometry of its draw. */
typedef struct lsdi_latent_key {
    size_t index;            /* dataset item */
    const char *path;        /* its image file */
    int width, height;       /* the crop, in pixels */
    int resized_w, resized_h; /* the size the image is resized to before the crop (0: not known, not keyed) */
    int crop_left, crop_top;
    int flip;
} lsdi_latent_key;

/* Renders the pixels [3, height, width] in [-1, 1] of a key's draw. */
typedef lsd_status (*lsdi_pixels_fn)(void *user, const lsdi_latent_key *k, float *out);

/* Counters for the log and the tests. */
typedef struct lsdi_latent_stats {
    uint64_t memory_hits, file_hits, encoded, files_written, files_stale;
} lsdi_latent_stats;

typedef struct lsdi_latent_cache lsdi_latent_cache;

/* n_items: the dataset's size. to_disk: files beside each image, or in cache_dir when it is not NULL (created). */
lsd_status lsdi_latent_cache_new(size_t n_items, int to_disk, const char *cache_dir, lsdi_latent_cache **out);
void lsdi_latent_cache_free(lsdi_latent_cache *c);
const lsdi_latent_stats *lsdi_latent_cache_stats(const lsdi_latent_cache *c);

/* ---- latents.c ---- */
/* The posterior of images [B, 3, H, W]: mean and std = exp(logvar / 2), float32 [B, C, H/f, W/f]. */
lsd_status lsdi_vae_moments(lsd_model *m, const float *images, int B, int H, int W, float *mean, float *std);
/* latents = (mean + std * eps) * scaling_factor with eps ~ N(0, 1) [B, C, h, w] drawn from g; with pick, the B
 * items are items pick[0..B) of a batch of `total` and eps is cut from that batch's draw [total, C, h, w]. */
lsd_status lsdi_posterior_sample(lsd_model *m, lsdt_generator *g, const float *mean, const float *std, int B,
                                 const int *pick, int total, int h, int w, float *latents);
/* The posterior of one key [C, h, w]: from the cache (c may be NULL: none), else rendered by pixels and encoded
 * (and then kept). */
lsd_status lsdi_latent_moments(lsdi_latent_cache *c, lsd_model *m, const lsdi_latent_key *k, lsdi_pixels_fn pixels,
                               void *user, float *mean, float *std);
/* SHA-256 over the VAE's dtype, parameter names, shapes and values. */
lsd_status lsdi_vae_hash(lsd_model *m, char hex[65]);

/* ---- latent_cache.c: lookups and stores behind lsdi_latent_moments ---- */
/* 1 with mean/std filled when the key is in memory or in a valid file (then also kept in memory). */
/* shape: [C, h, w] of the latents. */
lsd_status lsdi_latent_cache_get(lsdi_latent_cache *c, lsd_model *m, const lsdi_latent_key *k, const int64_t *shape,
                                 float *mean, float *std, int *found);
lsd_status lsdi_latent_cache_put(lsdi_latent_cache *c, lsd_model *m, const lsdi_latent_key *k, const int64_t *shape,
                                 const float *mean, const float *std);

/* ---- latent_file.c: one safetensors file per item draw ---- */
/* The file of a key: beside the image ("<image minus extension>[_flip].latents.safetensors") or in cache_dir
 * ("<stem>-<hash of the image path>[_flip].latents.safetensors"). malloc'd. */
char *lsdi_latent_file_path(const char *cache_dir, const lsdi_latent_key *k);
/* The identity of what the file holds: image bytes, geometry, VAE. image_sha256 and vae_hash are hex digests. */
typedef struct lsdi_latent_file_key {
    const lsdi_latent_key *k;
    const char *image_sha256;
    const char *vae_hash;
} lsdi_latent_file_key;
/* *found 0 (not an error) when the file is missing, was written for another key or is unreadable (stale). */
lsd_status lsdi_latent_file_read(const char *path, const lsdi_latent_file_key *fk, const int64_t *shape, float *mean,
                                 float *std, int *found, int *stale);
lsd_status lsdi_latent_file_write(const char *path, const lsdi_latent_file_key *fk, const int64_t *shape,
                                  const float *mean, const float *std);

/* ---- text_cache.c ---- */
typedef struct lsdi_text_cache lsdi_text_cache;
lsd_status lsdi_text_cache_new(lsdi_text_cache **out);
void lsdi_text_cache_free(lsdi_text_cache *c);
/* Encoder hidden states [n, max_positions, context_dim] of captions, one caption at a time; from and into the cache
 * when c is not NULL. */
lsd_status lsdi_text_context(lsdi_text_cache *c, lsd_model *m, const char *const *captions, int n, float *ctx);
/* Captions encoded / found since the cache was made. */
void lsdi_text_cache_counts(const lsdi_text_cache *c, uint64_t *encoded, uint64_t *hits);

#endif
