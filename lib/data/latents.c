/* From pixels to the step's latents: the frozen VAE's posterior (mean, std) of each image, then the sample
 * latents = (mean + std * eps) * scaling_factor (latent_dist.sample() * scaling_factor in the scripts). The
 * posterior of a dataset item's draw comes from the latent cache when it has it; either way it is the VAE run on
 * that one image, so the cached and the uncached paths give the same bits. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/cache.h"
#include "io/hash.h"
#include "model/model.h"
#include "train/train.h"

lsd_status lsdi_vae_moments(lsd_model *m, const float *images, int B, int H, int W, float *mean, float *std)
{
    int f = lsdi_vae_scale_factor(m->vae), C = m->vae->cfg.latent_channels;
    int64_t xs[4] = {B, 3, H, W};
    size_t n = (size_t)B * C * (H / f) * (W / f);
    LSDI_TRY(lsdi_model_check_encoder(m, "VAE encode"));
    lsdt_no_grad_begin();
    lsdt_scope *s = lsdt_scope_begin();
    if (!s) {
        lsdt_no_grad_end();
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE encode: scope");
    }
    lsdt_tensor *x = lsdt_channels_last(s, lsdt_from_host(s, images, LSDT_F32, xs, 4, m->tdtype, m->device));
    lsdt_tensor *mu = NULL, *logvar = NULL;
    lsdi_vae_encode(s, m->vae, x, &mu, &logvar);
    lsdt_tensor *sd = lsdt_exp(s, lsdt_mul_scalar(s, lsdt_to_dtype(s, logvar, LSDT_F32), 0.5));
    mu = lsdt_to_dtype(s, mu, LSDT_F32);
    int rc = 0;
    if (mu && sd && lsdt_scope_status(s) == 0) {
        rc = lsdt_to_host(mu, mean, LSDT_F32, n);
        if (!rc)
            rc = lsdt_to_host(sd, std, LSDT_F32, n);
    }
    int st = lsdt_scope_end(s);
    lsdt_no_grad_end();
    if (st || rc)
        return lsdi_error_prefix(lsdi_error_from_shim(st ? st : rc), "VAE encode of %dx%d", W, H);
    return LSD_OK;
}

/* eps for items pick[0..B) of a batch of `total` (the whole batch's draw, so an item's noise is the same on
 * whichever rank computes it), or of the B items (pick NULL). */
static lsdt_tensor *posterior_noise(lsdt_scope *s, lsd_model *m, lsdt_generator *g, const int64_t *ls,
                                    const int *pick, int total)
{
    if (!pick)
        return lsdt_randn(s, g, ls, 4, LSDT_F32, m->device);
    size_t per = (size_t)ls[1] * ls[2] * ls[3];
    int64_t full[4] = {total, ls[1], ls[2], ls[3]};
    float *all = malloc(((size_t)total + (size_t)ls[0]) * per * sizeof *all), *mine = all + (size_t)total * per;
    if (!all) {
        lsdt_scope_fail(s, LSD_ERR_OUT_OF_MEMORY, "posterior noise of a batch");
        return NULL;
    }
    lsdt_tensor *e = lsdt_randn(s, g, full, 4, LSDT_F32, m->device);
    if (e && lsdt_to_host(e, all, LSDT_F32, (size_t)total * per))
        lsdt_scope_fail(s, lsdt_last_status(), lsdt_last_error());
    for (int64_t i = 0; i < ls[0]; i++)
        memcpy(mine + i * per, all + (size_t)pick[i] * per, per * sizeof *all);
    lsdt_tensor *r = lsdt_from_host(s, mine, LSDT_F32, ls, 4, LSDT_F32, m->device);
    free(all);
    return r;
}

lsd_status lsdi_posterior_sample(lsd_model *m, lsdt_generator *g, const float *mean, const float *std, int B,
                                 const int *pick, int total, int h, int w, float *latents)
{
    int C = m->vae->cfg.latent_channels;
    int64_t ls[4] = {B, C, h, w};
    lsdt_no_grad_begin();
    lsdt_scope *s = lsdt_scope_begin();
    if (!s) {
        lsdt_no_grad_end();
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "posterior sample: scope");
    }
    lsdt_tensor *mu = lsdt_from_host(s, mean, LSDT_F32, ls, 4, LSDT_F32, m->device);
    lsdt_tensor *sd = lsdt_from_host(s, std, LSDT_F32, ls, 4, LSDT_F32, m->device);
    lsdt_tensor *eps = posterior_noise(s, m, g, ls, pick, total);
    lsdt_tensor *z = lsdt_mul_scalar(s, lsdt_add(s, mu, lsdt_mul(s, sd, eps)), m->vae->cfg.scaling_factor);
    int rc = z && lsdt_scope_status(s) == 0 ? lsdt_to_host(z, latents, LSDT_F32, (size_t)B * C * h * w) : 0;
    int st = lsdt_scope_end(s);
    lsdt_no_grad_end();
    if (st || rc)
        return lsdi_error_prefix(lsdi_error_from_shim(st ? st : rc), "posterior sample");
    return LSD_OK;
}

lsd_status lsdi_latent_moments(lsdi_latent_cache *c, lsd_model *m, const lsdi_latent_key *k, lsdi_pixels_fn pixels,
                               void *user, float *mean, float *std)
{
    int f = lsdi_vae_scale_factor(m->vae);
    int64_t shape[3] = {m->vae->cfg.latent_channels, k->height / f, k->width / f};
    int found = 0;
    if (c)
        LSDI_TRY(lsdi_latent_cache_get(c, m, k, shape, mean, std, &found));
    if (found)
        return LSD_OK;
    float *px = malloc((size_t)3 * k->width * k->height * sizeof *px);
    if (!px)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: pixels of %dx%d", k->path, k->width, k->height);
    lsd_status st = pixels(user, k, px);
    if (st == LSD_OK)
        st = lsdi_vae_moments(m, px, 1, k->height, k->width, mean, std);
    free(px);
    if (st == LSD_OK && c)
        st = lsdi_latent_cache_put(c, m, k, shape, mean, std);
    return st;
}
typedef struct ref_pixels {
    lsd_dataset *ds;
    const lsdi_sample_ref *ref;
} ref_pixels;

static lsd_status render_ref(void *user, const lsdi_latent_key *k, float *out)
{
    (void)k;
    const ref_pixels *rp = user;
    return lsdi_dataset_load_ref(rp->ds, rp->ref, out);
}

lsd_status lsdi_batch_latents(lsd_trainer *tr, const lsdi_sample_ref *refs, int n, const int *pick, int total,
                              lsdt_generator *g, float *latents)
{
    lsd_model *m = tr->model;
    int f = lsdi_vae_scale_factor(m->vae), h = refs[0].height / f, w = refs[0].width / f;
    size_t per = (size_t)m->vae->cfg.latent_channels * h * w;
    float *mean = malloc(2 * (size_t)n * per * sizeof *mean), *std = mean + (size_t)n * per;
    if (!mean)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "posteriors of a batch of %d", n);
    lsd_status st = LSD_OK;
    for (int i = 0; i < n && st == LSD_OK; i++) {
        const lsdi_sample_ref *r = &refs[i];
        lsdi_latent_key k = {r->index, tr->dataset->items[r->index].path, r->width, r->height, r->resized_w,
                             r->resized_h, r->crop_left, r->crop_top, r->flip};
        ref_pixels rp = {tr->dataset, r};
        st = lsdi_latent_moments(tr->latent_cache, m, &k, render_ref, &rp, mean + i * per, std + i * per);
    }
    if (st == LSD_OK)
        st = lsdi_posterior_sample(m, g, mean, std, n, pick, total, h, w, latents);
    free(mean);
    return st;
}

lsd_status lsdi_vae_hash(lsd_model *m, char hex[65])
{
    lsdi_digest d;
    LSDI_TRY(lsdi_digest_begin(&d, "sha256"));
    const char *dt = lsd_dtype_name(m->dtype);
    lsdi_digest_update(&d, dt, strlen(dt) + 1);
    const lsdi_params *p = &m->vae->params;
    float *buf = NULL;
    size_t cap = 0;
    lsd_status st = LSD_OK;
    for (int i = 0; i < p->n && st == LSD_OK; i++) {
        const lsdt_tensor *t = *p->v[i].slot;
        size_t n = t ? (size_t)lsdt_numel(t) : 0;
        if (n > cap) {
            float *nb = realloc(buf, n * sizeof *nb);
            if (!nb) {
                st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE hash: %s", p->v[i].name);
                break;
            }
            buf = nb;
            cap = n;
        }
        if (t && lsdt_to_host(t, buf, LSDT_F32, n) != 0) {
            st = lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "VAE hash: %s", p->v[i].name);
            break;
        }
        lsdi_digest_update(&d, p->v[i].name, strlen(p->v[i].name) + 1);
        lsdi_digest_update(&d, p->v[i].shape, (size_t)p->v[i].ndim * sizeof p->v[i].shape[0]);
        lsdi_digest_update(&d, buf, n * sizeof *buf);
    }
    free(buf);
    if (st != LSD_OK) {
        lsdi_digest_end(&d, hex, 65);
        return st;
    }
    return lsdi_digest_end(&d, hex, 65);
}
