/* Prodigy as prodigyopt 1.0 (Mishchenko & Defazio): Adam whose step size d is estimated on the way,
 * d_hat = d_coef * sum_t (d_t/d0) dlr_t <g_t, p0 - p_t> / |s|_1 with s = beta3 s + (d/d0) dlr g; the LR only
 * multiplies d (so it should be near 1). Defaults: betas (0.9, 0.999), beta3 sqrt(beta2), eps 1e-8,
 * weight_decay 0, decouple True, use_bias_correction False, safeguard_warmup False, d0 1e-6, d_coef 1,
 * growth_rate inf. As the reference: every group's LR must be the same or 0, and a step whose |s|_1 is 0 updates
 * nothing but the moments. */
#include <math.h>

#include "core/error.h"
#include "optim/impl.h"

typedef struct prodigy_hp {
    double betas[2], beta3, eps, weight_decay, d0, d_coef, growth_rate;
    int decouple, use_bias_correction, safeguard_warmup;
} prodigy_hp;

enum { M, V, S, P0 };                 /* slots */
enum { STEP, STARTED };               /* per-parameter scalars */
enum { D, D_MAX, D_NUMERATOR, K };    /* global scalars */

static const char *const slot_names[] = {"exp_avg", "exp_avg_sq", "s", "p0"};

static lsd_status init(lsdi_optim *o, lsdi_optim_args *a, const lsd_train_params *p)
{
    (void)p;
    prodigy_hp *h = o->hp;
    *h = (prodigy_hp){{0.9, 0.999}, 0, 1e-8, 0, 1e-6, 1.0, INFINITY, 1, 0, 0};
    int beta3_none = 1;
    LSDI_TRY(lsdi_optim_arg_pair(a, "betas", h->betas));
    LSDI_TRY(lsdi_optim_arg_num_or_none(a, "beta3", &h->beta3, &beta3_none));
    LSDI_TRY(lsdi_optim_arg_num(a, "eps", &h->eps));
    LSDI_TRY(lsdi_optim_arg_num(a, "weight_decay", &h->weight_decay));
    LSDI_TRY(lsdi_optim_arg_bool(a, "decouple", &h->decouple));
    LSDI_TRY(lsdi_optim_arg_bool(a, "use_bias_correction", &h->use_bias_correction));
    LSDI_TRY(lsdi_optim_arg_bool(a, "safeguard_warmup", &h->safeguard_warmup));
    LSDI_TRY(lsdi_optim_arg_num(a, "d0", &h->d0));
    LSDI_TRY(lsdi_optim_arg_num(a, "d_coef", &h->d_coef));
    LSDI_TRY(lsdi_optim_arg_num(a, "growth_rate", &h->growth_rate));
    if (beta3_none)
        h->beta3 = sqrt(h->betas[1]);
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->betas[0] >= 0 && h->betas[0] < 1 && h->betas[1] >= 0 && h->betas[1] < 1),
                                  "betas", "must be in [0, 1)"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->d0 > 0), "d0", "must be > 0"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->eps > 0), "eps", "must be > 0"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->weight_decay >= 0), "weight_decay", "must be >= 0"));
    double lr = 0;
    for (int g = 0; g < o->n_groups; g++)
        lr = fmax(lr, o->lr[g]);
    if (lr <= 0.1)
        lsdi_log(LSD_LOG_WARN, "prodigy: the learning rate %g only multiplies the step size Prodigy finds; "
                 "use about 1.0", lr);
    for (int i = 0; i < o->n_params; i++)
        for (int k = M; k <= P0; k++)
            LSDI_TRY(lsdi_optim_add_slot(o, i, k, NULL, 0));
    double *gs = LSDI_GSCALARS(o);
    gs[D] = gs[D_MAX] = h->d0;
    return LSD_OK;
}

/* What the first pass over the parameters carries. */
typedef struct pass {
    double lr, d, dlr, d_numerator, d_denom;
} pass;

static int moments(lsdi_optim *o, int i, lsdt_scope *s, lsdt_tensor *g, void *ctx)
{
    const prodigy_hp *h = o->hp;
    pass *c = ctx;
    lsdt_tensor *p = o->params[i];
    double *ps = LSDI_PSCALARS(o, i);
    int rc = 0;
    if (h->weight_decay != 0 && !h->decouple)
        g = lsdt_add_scaled(s, g, p, h->weight_decay);
    if (!g)
        return lsdt_scope_status(s);
    if (!ps[STARTED]) {
        rc = lsdt_copy_(LSDI_SLOT(o, i, P0), p);
        ps[STARTED] = 1;
    }
    if (rc || !(LSDI_LR(o, i) > 0))
        return rc;
    double dd0 = c->d / h->d0, dot = 0;
    rc = lsdi_optim_dot(s, g, lsdt_sub(s, LSDI_SLOT(o, i, P0), p), &dot);
    c->d_numerator += dd0 * c->dlr * dot;
    lsdt_tensor *m = LSDI_SLOT(o, i, M), *v = LSDI_SLOT(o, i, V), *sum = LSDI_SLOT(o, i, S);
    if (!rc)
        rc = lsdt_mul_scalar_(m, h->betas[0]);
    if (!rc)
        rc = lsdt_add_(m, g, c->d * (1 - h->betas[0]));
    if (!rc)
        rc = lsdt_mul_scalar_(v, h->betas[1]);
    if (!rc)
        rc = lsdt_addcmul_(v, g, g, c->d * c->d * (1 - h->betas[1]));
    if (!rc)
        rc = lsdt_mul_scalar_(sum, h->beta3);
    if (!rc)
        rc = lsdt_add_(sum, g, dd0 * (h->safeguard_warmup ? c->d : c->dlr));
    double l1 = 0;
    lsdt_tensor *abs_sum = rc ? NULL : lsdt_sum(s, lsdt_abs(s, sum));
    if (!rc)
        rc = abs_sum ? lsdt_item(abs_sum, &l1) : lsdt_scope_status(s);
    c->d_denom += l1;
    return rc;
}

static int apply(lsdi_optim *o, int i, lsdt_scope *s, lsdt_tensor *g, void *ctx)
{
    (void)g;
    const prodigy_hp *h = o->hp;
    const pass *c = ctx;
    lsdt_tensor *p = o->params[i];
    LSDI_PSCALARS(o, i)[STEP]++;
    lsdt_tensor *denom = lsdt_sqrt(s, LSDI_SLOT(o, i, V));
    int rc = denom ? lsdt_add_scalar_(denom, c->d * h->eps) : lsdt_scope_status(s);
    if (!rc && h->weight_decay != 0 && h->decouple)
        rc = lsdt_add_(p, p, -h->weight_decay * c->dlr);
    if (!rc)
        rc = lsdt_addcdiv_(p, LSDI_SLOT(o, i, M), denom, -c->dlr);
    return rc;
}

static lsd_status step(lsdi_optim *o)
{
    const prodigy_hp *h = o->hp;
    double *gs = LSDI_GSCALARS(o);
    pass c = {0, gs[D], 0, gs[D_NUMERATOR] * h->beta3, 0};
    for (int g = 0; g < o->n_groups; g++)
        c.lr = fmax(c.lr, o->lr[g]);
    for (int g = 0; g < o->n_groups; g++)
        if (o->lr[g] != c.lr && o->lr[g] != 0)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "prodigy: parameter groups with different learning rates "
                              "(%g and %g); only 0 may differ", o->lr[g], c.lr);
    double k = gs[K];
    double bias_correction = h->use_bias_correction
                                 ? sqrt(1 - pow(h->betas[1], k + 1)) / (1 - pow(h->betas[0], k + 1))
                                 : 1.0;
    c.dlr = c.d * c.lr * bias_correction;
    LSDI_TRY(lsdi_optim_each(o, moments, &c));
    if (c.d_denom == 0)
        return LSD_OK;
    double d = c.d, d_max = gs[D_MAX];
    if (c.lr > 0) {
        double d_hat = h->d_coef * c.d_numerator / c.d_denom;
        if (d == h->d0)
            d = fmax(d, d_hat);
        d_max = fmax(d_max, d_hat);
        d = fmin(d_max, d * h->growth_rate);
    }
    gs[D_NUMERATOR] = c.d_numerator;
    gs[D] = d;
    gs[D_MAX] = d_max;
    c.d = d;
    LSDI_TRY(lsdi_optim_each(o, apply, &c));
    gs[K] = k + 1;
    return LSD_OK;
}

static double lr_of(const lsdi_optim *o, int group)
{
    return LSDI_GSCALARS(o)[D] * o->lr[group];
}

const lsdi_optim_kind lsdi_optim_prodigy = {
    "prodigy",
    "betas, beta3, eps, weight_decay, decouple, use_bias_correction, safeguard_warmup, d0, d_coef, growth_rate",
    4, slot_names, 2, 4, sizeof(prodigy_hp), init, step, lr_of,
};
