#include <math.h>
#include <string.h>

#include "core/error.h"
#include "model/model.h"

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Values are drawn in float32 on the CPU whatever the target, so a seed gives the same weights everywhere. */
static lsdt_tensor *make_one(const lsdi_param *e, lsdt_generator *g)
{
    int bias = ends_with(e->name, ".bias");
    lsdt_tensor *t = lsdt_full(NULL, e->shape, e->ndim, !bias && e->ndim == 1 ? 1.0 : 0.0, LSDT_F32, "cpu");
    if (!t || bias || e->ndim == 1)
        return t;
    int rc;
    if (strstr(e->name, "embedding.weight")) {
        rc = lsdt_normal_(t, g, 0.0, 0.02);
    } else {
        int64_t fan_in = 1;
        for (int d = 1; d < e->ndim; d++)
            fan_in *= e->shape[d];
        double bound = 1.0 / sqrt((double)fan_in);
        rc = lsdt_uniform_(t, g, -bound, bound);
    }
    if (rc) {
        lsdt_free(t);
        return NULL;
    }
    return t;
}

static lsdt_tensor *convert(lsdt_tensor *t, const lsdi_param *e, lsdt_dtype dtype, const char *device)
{
    lsdt_tensor *u;
    if (t && dtype != LSDT_F32) {
        u = lsdt_to_dtype(NULL, t, dtype);
        lsdt_free(t);
        t = u;
    }
    if (t && strcmp(device, "cpu") != 0) {
        u = lsdt_to_device(NULL, t, device);
        lsdt_free(t);
        t = u;
    }
    if (t && e->ndim == 4) {
        u = lsdt_channels_last(NULL, t);
        lsdt_free(t);
        t = u;
    }
    return t;
}

lsd_status lsdi_params_init_random(lsdi_params *p, const lsdi_params *order, lsdt_generator *g, lsdt_dtype dtype,
                                   const char *device)
{
    for (int i = 0; i < order->n; i++) {
        const lsdi_param *e = &order->v[i];
        lsdt_tensor *t = make_one(e, g);
        const lsdi_param *dst = order == p ? e : lsdi_params_find(p, e->name);
        if (t && !dst) { /* drawn to keep the sequence, not kept */
            lsdt_free(t);
            continue;
        }
        t = convert(t, e, dtype, device);
        if (!t) {
            int st = lsdt_last_status();
            return lsdi_error_prefix(lsdi_error_from_shim(st ? st : LSD_ERR_INTERNAL), "random init of '%s'",
                                     e->name);
        }
        lsdt_free(*dst->slot);
        *dst->slot = t;
    }
    return LSD_OK;
}

lsd_status lsd_model_create_random(const char *config_dir, uint64_t seed, const lsd_model_params *params,
                                   lsd_model **out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_create_random: out is NULL");
    *out = NULL;
    if (!config_dir || !*config_dir)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_create_random: config_dir is NULL or empty");
    lsd_model_params p;
    LSDI_TRY(lsdi_model_params_read(params, &p));
    double t0 = lsdi_model_clock();
    lsd_model *m = NULL;
    LSDI_TRY(lsdi_model_new(config_dir, &p, &m));
    lsdt_generator *g = lsdt_generator_new(seed);
    lsd_status st = g ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_model_create_random: generator");
    /* vae_decode_only: the whole VAE's values are drawn in order and the decoder's kept, so a seed gives the same
     * decoder and UNet with or without it */
    lsdi_vae *whole = NULL;
    if (st == LSD_OK && m->vae->decode_only)
        st = lsdi_vae_new(&m->vae->cfg, 0, &whole);
    lsdi_params *tables[3] = {&m->text->params, &m->vae->params, &m->unet->params};
    const lsdi_params *order[3] = {tables[0], whole ? &whole->params : tables[1], tables[2]};
    for (int i = 0; i < 3 && st == LSD_OK; i++) {
        st = lsdi_params_init_random(tables[i], order[i], g, m->tdtype, m->device);
        if (st == LSD_OK)
            st = lsdi_model_progress(&p, i + 1, 3, t0);
    }
    lsdt_generator_free(g);
    lsdi_vae_free(whole);
    if (st != LSD_OK) {
        lsd_model_free(m);
        return st;
    }
    *out = m;
    return LSD_OK;
}
