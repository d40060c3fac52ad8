/* The latent cache (cache_latents, cache_latents_to_disk): each item draw's VAE posterior kept in memory, and with
 * to_disk in a safetensors file that later runs reuse while the image's bytes, the draw's geometry and the VAE are
 * those it was computed from (latent_file.c). Lookups go memory, then file; an encoded posterior goes to both. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/cache.h"
#include "io/file.h"
#include "io/hash.h"

typedef struct variant {
    lsdi_latent_key k; /* path not kept */
    float *mean, *std;
    struct variant *next;
} variant;

struct lsdi_latent_cache {
    size_t n_items;
    variant **by_item;   /* [n_items]: the draws of each item seen so far */
    char (*image_sha)[65]; /* [n_items]: "" until first needed (to_disk) */
    int to_disk;
    char *cache_dir;
    char vae_hash[65];   /* "" until first needed */
    lsdi_latent_stats stats;
};

lsd_status lsdi_latent_cache_new(size_t n_items, int to_disk, const char *cache_dir, lsdi_latent_cache **out)
{
    *out = NULL;
    lsdi_latent_cache *c = calloc(1, sizeof *c);
    if (!c)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "latent cache");
    c->n_items = n_items;
    c->to_disk = to_disk;
    c->by_item = calloc(n_items ? n_items : 1, sizeof *c->by_item);
    c->image_sha = to_disk ? calloc(n_items ? n_items : 1, sizeof *c->image_sha) : NULL;
    c->cache_dir = to_disk && cache_dir ? strdup(cache_dir) : NULL;
    if (!c->by_item || (to_disk && !c->image_sha) || (to_disk && cache_dir && !c->cache_dir)) {
        lsdi_latent_cache_free(c);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "latent cache of %zu items", n_items);
    }
    lsd_status st = c->cache_dir ? lsdi_make_dirs(c->cache_dir) : LSD_OK;
    if (st != LSD_OK) {
        lsdi_latent_cache_free(c);
        return lsdi_error_prefix(st, "cache_dir");
    }
    *out = c;
    return LSD_OK;
}

void lsdi_latent_cache_free(lsdi_latent_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; c->by_item && i < c->n_items; i++)
        for (variant *v = c->by_item[i], *next; v; v = next) {
            next = v->next;
            free(v->mean);
            free(v->std);
            free(v);
        }
    free(c->by_item);
    free(c->image_sha);
    free(c->cache_dir);
    free(c);
}

const lsdi_latent_stats *lsdi_latent_cache_stats(const lsdi_latent_cache *c)
{
    return &c->stats;
}

static int same_draw(const lsdi_latent_key *a, const lsdi_latent_key *b)
{
    return a->width == b->width && a->height == b->height && a->resized_w == b->resized_w &&
           a->resized_h == b->resized_h && a->crop_left == b->crop_left && a->crop_top == b->crop_top &&
           a->flip == b->flip;
}

static variant *find(const lsdi_latent_cache *c, const lsdi_latent_key *k)
{
    for (variant *v = k->index < c->n_items ? c->by_item[k->index] : NULL; v; v = v->next)
        if (same_draw(&v->k, k))
            return v;
    return NULL;
}

static lsd_status keep(lsdi_latent_cache *c, const lsdi_latent_key *k, size_t n, const float *mean, const float *std)
{
    if (k->index >= c->n_items)
        return lsdi_error(LSD_ERR_INTERNAL, "latent cache: item %zu of %zu", k->index, c->n_items);
    variant *v = calloc(1, sizeof *v);
    if (v) {
        v->mean = malloc(n * sizeof *v->mean);
        v->std = malloc(n * sizeof *v->std);
    }
    if (!v || !v->mean || !v->std) {
        if (v) {
            free(v->mean);
            free(v->std);
        }
        free(v);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "latent cache: %s", k->path);
    }
    memcpy(v->mean, mean, n * sizeof *mean);
    memcpy(v->std, std, n * sizeof *std);
    v->k = *k;
    v->k.path = NULL;
    v->next = c->by_item[k->index];
    c->by_item[k->index] = v;
    return LSD_OK;
}

/* The key of k's file: the image's bytes (hashed once per run) and the VAE's (once per cache). */
static lsd_status file_key(lsdi_latent_cache *c, lsd_model *m, const lsdi_latent_key *k, lsdi_latent_file_key *fk)
{
    if (k->index >= c->n_items)
        return lsdi_error(LSD_ERR_INTERNAL, "latent cache: item %zu of %zu", k->index, c->n_items);
    if (!c->vae_hash[0])
        LSDI_TRY(lsdi_vae_hash(m, c->vae_hash));
    if (!c->image_sha[k->index][0])
        LSDI_TRY(lsdi_sha256_file(k->path, c->image_sha[k->index]));
    fk->k = k;
    fk->image_sha256 = c->image_sha[k->index];
    fk->vae_hash = c->vae_hash;
    return LSD_OK;
}

lsd_status lsdi_latent_cache_get(lsdi_latent_cache *c, lsd_model *m, const lsdi_latent_key *k, const int64_t *shape,
                                 float *mean, float *std, int *found)
{
    *found = 0;
    size_t n = (size_t)shape[0] * shape[1] * shape[2];
    const variant *v = find(c, k);
    if (v) {
        memcpy(mean, v->mean, n * sizeof *mean);
        memcpy(std, v->std, n * sizeof *std);
        c->stats.memory_hits++;
        *found = 1;
        return LSD_OK;
    }
    if (!c->to_disk)
        return LSD_OK;
    lsdi_latent_file_key fk;
    LSDI_TRY(file_key(c, m, k, &fk));
    char *path = lsdi_latent_file_path(c->cache_dir, k);
    if (!path)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "latent cache path of %s", k->path);
    int stale = 0;
    lsd_status st = lsdi_latent_file_read(path, &fk, shape, mean, std, found, &stale);
    free(path);
    c->stats.files_stale += (uint64_t)stale;
    if (st == LSD_OK && *found) {
        c->stats.file_hits++;
        st = keep(c, k, n, mean, std);
    }
    return st;
}

lsd_status lsdi_latent_cache_put(lsdi_latent_cache *c, lsd_model *m, const lsdi_latent_key *k, const int64_t *shape,
                                 const float *mean, const float *std)
{
    c->stats.encoded++;
    LSDI_TRY(keep(c, k, (size_t)shape[0] * shape[1] * shape[2], mean, std));
    if (!c->to_disk)
        return LSD_OK;
    lsdi_latent_file_key fk;
    LSDI_TRY(file_key(c, m, k, &fk));
    char *path = lsdi_latent_file_path(c->cache_dir, k);
    if (!path)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "latent cache path of %s", k->path);
    lsd_status st = lsdi_latent_file_write(path, &fk, shape, mean, std);
    free(path);
    if (st == LSD_OK)
        c->stats.files_written++;
    return st;
}
