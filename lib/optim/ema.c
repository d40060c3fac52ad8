/* diffusers' EMAModel over the trained LoRA tensors (see ema.h). */
#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "optim/ema.h"

struct lsdi_ema {
    lsdt_tensor *const *params;
    lsdt_tensor **shadow, **stored; /* stored: between store and restore */
    int n;
    int64_t step;
    double decay, inv_gamma, power;
    int warmup;
};

static void free_all(lsdt_tensor **t, int n)
{
    for (int i = 0; t && i < n; i++) {
        lsdt_free(t[i]);
        t[i] = NULL;
    }
}

void lsdi_ema_free(lsdi_ema *e)
{
    if (!e)
        return;
    free_all(e->shadow, e->n);
    free_all(e->stored, e->n);
    free(e->shadow);
    free(e->stored);
    free(e);
}

/* Detached copies of the parameters into out[0..n) (all or none). */
static lsd_status clone_params(const lsdi_ema *e, lsdt_tensor **out, const char *what)
{
    lsdt_scope *s = lsdt_scope_begin();
    for (int i = 0; i < e->n; i++)
        out[i] = lsdt_scope_keep(s, lsdt_clone(s, lsdt_detach(s, e->params[i])));
    int rc = lsdt_scope_end(s);
    if (rc)
        free_all(out, e->n);
    return rc ? lsdi_error_prefix(lsdi_error_from_shim(rc), "EMA: %s", what) : LSD_OK;
}

lsd_status lsdi_ema_new(lsdt_tensor *const *params, int n, const lsd_train_params *p, lsdi_ema **out)
{
    *out = NULL;
    lsdi_ema *e = calloc(1, sizeof *e);
    if (!e || !(e->shadow = calloc((size_t)n + 1, sizeof *e->shadow)) ||
        !(e->stored = calloc((size_t)n + 1, sizeof *e->stored))) {
        lsdi_ema_free(e);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "EMA of %d tensors", n);
    }
    e->params = params;
    e->n = n;
    e->decay = p->ema_decay;
    e->warmup = p->ema_warmup;
    e->inv_gamma = p->ema_inv_gamma;
    e->power = p->ema_power;
    lsd_status st = clone_params(e, e->shadow, "shadow weights");
    if (st != LSD_OK) {
        lsdi_ema_free(e);
        return st;
    }
    *out = e;
    return LSD_OK;
}

double lsdi_ema_decay(const lsdi_ema *e, int64_t optimization_step)
{
    double step = optimization_step - 1 > 0 ? (double)(optimization_step - 1) : 0.0;
    if (step <= 0)
        return 0.0;
    double cur = e->warmup ? 1 - pow(1 + step / e->inv_gamma, -e->power) : (1 + step) / (10 + step);
    return fmax(fmin(cur, e->decay), 0.0);
}

lsd_status lsdi_ema_step(lsdi_ema *e)
{
    double one_minus_decay = 1 - lsdi_ema_decay(e, e->step + 1);
    for (int i = 0; i < e->n; i++) {
        lsdt_scope *s = lsdt_scope_begin();
        lsdt_tensor *d = lsdt_mul_scalar(s, lsdt_sub(s, e->shadow[i], e->params[i]), one_minus_decay);
        int rc = d ? lsdt_add_(e->shadow[i], d, -1.0) : 0;
        int sst = lsdt_scope_end(s);
        if (sst || rc)
            return lsdi_error_prefix(lsdi_error_from_shim(sst ? sst : rc), "EMA step, parameter %d", i);
    }
    e->step++;
    return LSD_OK;
}

static lsd_status copy_all(lsdt_tensor *const *dst, lsdt_tensor *const *src, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        int rc = lsdt_copy_(dst[i], src[i]);
        if (rc)
            return lsdi_error_prefix(lsdi_error_from_shim(rc), "EMA %s, parameter %d", what, i);
    }
    return LSD_OK;
}

lsd_status lsdi_ema_store(lsdi_ema *e)
{
    free_all(e->stored, e->n);
    return clone_params(e, e->stored, "store");
}

lsd_status lsdi_ema_copy_to(lsdi_ema *e)
{
    return copy_all(e->params, e->shadow, e->n, "copy_to");
}

lsd_status lsdi_ema_restore(lsdi_ema *e)
{
    if (e->n > 0 && !e->stored[0])
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "EMA restore: no weights were stored");
    lsd_status st = copy_all(e->params, e->stored, e->n, "restore");
    if (st == LSD_OK)
        free_all(e->stored, e->n);
    return st;
}

int64_t lsdi_ema_get_step(const lsdi_ema *e)
{
    return e->step;
}

void lsdi_ema_set_step(lsdi_ema *e, int64_t step)
{
    e->step = step;
}

lsdt_tensor *lsdi_ema_shadow(const lsdi_ema *e, int i)
{
    return i >= 0 && i < e->n ? e->shadow[i] : NULL;
}
