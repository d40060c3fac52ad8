/* Latent cache files: one safetensors file per item draw holding the VAE posterior ("mean", "std", float32
 * [C, h, w]) and, as metadata, what it was computed from: the SHA-256 of the image file, the draw's geometry and
 * a hash of the VAE. A file whose key differs, or that cannot be read, is stale: the posterior is computed again
 * and the file rewritten (atomically, like every file the library writes). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/cache.h"
#include "io/hash.h"
#include "io/safetensors.h"

#define FORMAT "lsd_latents/1"
#define N_META 10

char *lsdi_latent_file_path(const char *cache_dir, const lsdi_latent_key *k)
{
    const char *suffix = k->flip ? ".flip.latents.safetensors" : ".latents.safetensors";
    if (!cache_dir) {
        size_t n = strlen(k->path) + strlen(suffix) + 1;
        char *p = malloc(n);
        if (p)
            snprintf(p, n, "%s%s", k->path, suffix);
        return p;
    }
    /* Images of the same name in different folders (kohya's subsets) get different files. */
    char real[PATH_MAX], hex[65];
    const char *id = realpath(k->path, real) ? real : k->path;
    if (lsdi_sha1_hex(id, strlen(id), hex) != LSD_OK)
        return NULL;
    const char *slash = strrchr(k->path, '/'), *base = slash ? slash + 1 : k->path;
    size_t n = strlen(cache_dir) + strlen(base) + strlen(suffix) + 16;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s-%.12s%s", cache_dir, base, hex, suffix);
    return p;
}

typedef struct meta {
    const char *keys[N_META];
    char values[N_META][80];
} meta;

static void meta_of(const lsdi_latent_file_key *fk, meta *m)
{
    const lsdi_latent_key *k = fk->k;
    static const char *const keys[N_META] = {"format", "image_sha256", "vae", "width", "height", "resized_width",
                                             "resized_height", "crop_left", "crop_top", "flip"};
    const int nums[7] = {k->width, k->height, k->resized_w, k->resized_h, k->crop_left, k->crop_top, k->flip};
    memcpy(m->keys, keys, sizeof keys);
    snprintf(m->values[0], sizeof m->values[0], "%s", FORMAT);
    snprintf(m->values[1], sizeof m->values[1], "%s", fk->image_sha256);
    snprintf(m->values[2], sizeof m->values[2], "%s", fk->vae_hash);
    for (int i = 0; i < 7; i++)
        snprintf(m->values[3 + i], sizeof m->values[3 + i], "%d", nums[i]);
}

lsd_status lsdi_latent_file_read(const char *path, const lsdi_latent_file_key *fk, const int64_t *shape, float *mean,
                                 float *std, int *found, int *stale)
{
    *found = *stale = 0;
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return LSD_OK;
    fclose(probe);
    lsdi_st_file *f = NULL;
    if (lsdi_st_open(path, &f) != LSD_OK) {
        lsdi_log(LSD_LOG_WARN, "latent cache %s: unreadable (%s); computing it again", path, lsd_last_error());
        *stale = 1;
        return LSD_OK;
    }
    meta want;
    meta_of(fk, &want);
    const char *why = NULL;
    for (int i = 0; !why && i < N_META; i++) {
        const char *v = lsdi_st_metadata_get(f, want.keys[i]);
        if (!v || strcmp(v, want.values[i]))
            why = want.keys[i];
    }
    const lsdi_st_tensor *t[2] = {lsdi_st_find(f, "mean"), lsdi_st_find(f, "std")};
    for (int i = 0; !why && i < 2; i++)
        if (!t[i] || t[i]->dtype != LSDI_ST_F32 || t[i]->ndim != 3 || t[i]->shape[0] != shape[0] ||
            t[i]->shape[1] != shape[1] || t[i]->shape[2] != shape[2])
            why = i ? "std" : "mean";
    if (why) {
        lsdi_log(LSD_LOG_DEBUG, "latent cache %s: %s differs; computing it again", path, why);
        *stale = 1;
    } else {
        memcpy(mean, t[0]->data, t[0]->nbytes);
        memcpy(std, t[1]->data, t[1]->nbytes);
        *found = 1;
    }
    lsdi_st_close(f);
    return LSD_OK;
}

lsd_status lsdi_latent_file_write(const char *path, const lsdi_latent_file_key *fk, const int64_t *shape,
                                  const float *mean, const float *std)
{
    meta m;
    meta_of(fk, &m);
    const char *values[N_META];
    for (int i = 0; i < N_META; i++)
        values[i] = m.values[i];
    lsdi_st_entry e[2] = {{"mean", LSDI_ST_F32, 3, shape, mean}, {"std", LSDI_ST_F32, 3, shape, std}};
    lsd_status st = lsdi_st_write(path, e, 2, m.keys, values, N_META);
    return st == LSD_OK ? LSD_OK
                        : lsdi_error_prefix(st, "latent cache of %s (cache_latents_to_disk; cache_dir puts the "
                                                "files elsewhere)", fk->k->path);
}
