/* Adafactor as transformers' (optimization.Adafactor, which kohya's "Adafactor" is): second moments factored into
 * row and column means for tensors of 2 or more dims, the update divided by max(1, RMS(update) / clip_threshold),
 * optional first moment (beta1), decay p -= wd lr p. The step size is lr (relative_step False) or
 * min(1e-2 (warmup_init: 1e-6 t), 1 / sqrt(t)) (relative_step True: the external LR and its schedule are ignored,
 * as transformers ignores them; kohya pairs it with its AdafactorSchedule, which only reports the LR), times
 * max(eps[1], RMS(p)) with scale_parameter. Defaults eps (1e-30, 1e-3), clip_threshold 1, decay_rate -0.8,
 * beta1 None, weight_decay 0, scale_parameter True, relative_step True, warmup_init False. */
#include <math.h>

#include "core/error.h"
#include "optim/impl.h"

typedef struct adafactor_hp {
    double eps[2], clip_threshold, decay_rate, beta1, weight_decay;
    int beta1_none, scale_parameter, relative_step, warmup_init;
} adafactor_hp;

enum { ROW, COL, FULL, M }; /* slots: exp_avg_sq_row/_col when factored, else exp_avg_sq; exp_avg with beta1 */
enum { STEP, RMS };         /* per-parameter scalars */

static const char *const slot_names[] = {"exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg"};

static lsd_status init(lsdi_optim *o, lsdi_optim_args *a, const lsd_train_params *p)
{
    (void)p;
    adafactor_hp *h = o->hp;
    *h = (adafactor_hp){{1e-30, 1e-3}, 1.0, -0.8, 0, 0, 1, 1, 1, 0};
    LSDI_TRY(lsdi_optim_arg_pair(a, "eps", h->eps));
    LSDI_TRY(lsdi_optim_arg_num(a, "clip_threshold", &h->clip_threshold));
    LSDI_TRY(lsdi_optim_arg_num(a, "decay_rate", &h->decay_rate));
    LSDI_TRY(lsdi_optim_arg_num_or_none(a, "beta1", &h->beta1, &h->beta1_none));
    LSDI_TRY(lsdi_optim_arg_num(a, "weight_decay", &h->weight_decay));
    LSDI_TRY(lsdi_optim_arg_bool(a, "scale_parameter", &h->scale_parameter));
    LSDI_TRY(lsdi_optim_arg_bool(a, "relative_step", &h->relative_step));
    LSDI_TRY(lsdi_optim_arg_bool(a, "warmup_init", &h->warmup_init));
    LSDI_TRY(lsdi_optim_arg_check(a, h->warmup_init && !h->relative_step, "warmup_init",
                                  "requires relative_step=True"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->clip_threshold > 0), "clip_threshold", "must be > 0"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->decay_rate < 0), "decay_rate", "must be < 0"));
    LSDI_TRY(lsdi_optim_arg_check(a, !h->beta1_none && !(h->beta1 >= 0 && h->beta1 < 1), "beta1",
                                  "must be None or in [0, 1)"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->weight_decay >= 0), "weight_decay", "must be >= 0"));
    if (h->relative_step)
        lsdi_log(LSD_LOG_INFO, "adafactor: relative_step: the step size is Adafactor's own; the learning rate and "
                 "its schedule are not used");
    for (int i = 0; i < o->n_params; i++) {
        const lsdt_tensor *t = o->params[i];
        int nd = lsdt_ndim(t);
        if (nd >= 2) {
            int64_t row[LSDT_MAX_DIMS], col[LSDT_MAX_DIMS];
            for (int d = 0; d < nd; d++) {
                row[d] = lsdt_size(t, d);
                col[d] = lsdt_size(t, d < nd - 2 ? d : d + 1);
            }
            LSDI_TRY(lsdi_optim_add_slot(o, i, ROW, row, nd - 1));
            LSDI_TRY(lsdi_optim_add_slot(o, i, COL, col, nd - 1));
        } else {
            LSDI_TRY(lsdi_optim_add_slot(o, i, FULL, NULL, 0));
        }
        if (!h->beta1_none)
            LSDI_TRY(lsdi_optim_add_slot(o, i, M, NULL, 0));
    }
    return LSD_OK;
}

/* transformers' Adafactor._get_lr. */
static double step_size(const lsdi_optim *o, int i)
{
    const adafactor_hp *h = o->hp;
    const double *ps = LSDI_PSCALARS(o, i);
    double rel = LSDI_LR(o, i);
    if (h->relative_step)
        rel = fmin(h->warmup_init ? 1e-6 * ps[STEP] : 1e-2, 1.0 / sqrt(ps[STEP]));
    return (h->scale_parameter ? fmax(h->eps[1], ps[RMS]) : 1.0) * rel;
}

static int rms(lsdt_scope *s, const lsdt_tensor *t, double *out)
{
    double sq = 0;
    int rc = lsdi_optim_dot(s, t, t, &sq);
    *out = sqrt(sq) / sqrt((double)lsdt_numel(t));
    return rc;
}

/* ema = beta2t ema + (1 - beta2t) x */
static int decay_into(lsdt_tensor *ema, const lsdt_tensor *x, double beta2t)
{
    int rc = lsdt_mul_scalar_(ema, beta2t);
    return rc ? rc : lsdt_add_(ema, x, 1 - beta2t);
}

static int update(lsdi_optim *o, int i, lsdt_scope *s, lsdt_tensor *g, void *ctx)
{
    (void)ctx;
    const adafactor_hp *h = o->hp;
    lsdt_tensor *p = o->params[i];
    double *ps = LSDI_PSCALARS(o, i);
    ps[STEP]++;
    int rc = rms(s, p, &ps[RMS]);
    double lr = step_size(o, i), beta2t = 1 - pow(ps[STEP], h->decay_rate);
    lsdt_tensor *sq = lsdt_add_scalar(s, lsdt_mul(s, g, g), h->eps[0]), *u;
    static const int last[1] = {-1}, second_last[1] = {-2};
    if (lsdt_ndim(p) >= 2) {
        lsdt_tensor *row = LSDI_SLOT(o, i, ROW), *col = LSDI_SLOT(o, i, COL);
        if (!rc)
            rc = decay_into(row, lsdt_mean_dims(s, sq, last, 1), beta2t);
        if (!rc)
            rc = decay_into(col, lsdt_mean_dims(s, sq, second_last, 1), beta2t);
        lsdt_tensor *row_mean = lsdt_unsqueeze(s, lsdt_mean_dims(s, row, last, 1), -1);
        lsdt_tensor *r = lsdt_unsqueeze(s, lsdt_rsqrt(s, lsdt_div(s, row, row_mean)), -1);
        lsdt_tensor *c = lsdt_rsqrt(s, lsdt_unsqueeze(s, col, -2));
        u = lsdt_mul(s, lsdt_mul(s, r, c), g);
    } else {
        lsdt_tensor *v = LSDI_SLOT(o, i, FULL);
        if (!rc)
            rc = decay_into(v, sq, beta2t);
        u = lsdt_mul(s, lsdt_rsqrt(s, v), g);
    }
    double u_rms = 0;
    if (!rc && u)
        rc = rms(s, u, &u_rms);
    u = lsdt_mul_scalar(s, lsdt_div_scalar(s, u, fmax(u_rms / h->clip_threshold, 1.0)), lr);
    if (rc || !u)
        return rc ? rc : lsdt_scope_status(s);
    if (!h->beta1_none) {
        lsdt_tensor *m = LSDI_SLOT(o, i, M);
        rc = lsdt_mul_scalar_(m, h->beta1);
        if (!rc)
            rc = lsdt_add_(m, u, 1 - h->beta1);
        u = m;
    }
    if (!rc && h->weight_decay != 0)
        rc = lsdt_add_(p, p, -h->weight_decay * lr);
    if (!rc)
        rc = lsdt_add_(p, u, -1.0);
    return rc;
}

static lsd_status step(lsdi_optim *o)
{
    return lsdi_optim_each(o, update, NULL);
}

/* transformers' AdafactorSchedule: the step size of the group's first parameter; its LR before any step. */
static double lr_of(const lsdi_optim *o, int group)
{
    for (int i = 0; i < o->n_params; i++)
        if (o->group[i] == group)
            return LSDI_PSCALARS(o, i)[STEP] > 0 ? step_size(o, i) : o->lr[group];
    return o->lr[group];
}

const lsdi_optim_kind lsdi_optim_adafactor = {
    "adafactor",
    "eps, clip_threshold, decay_rate, beta1, weight_decay, scale_parameter, relative_step, warmup_init",
    4, slot_names, 2, 0, sizeof(adafactor_hp), init, step, lr_of,
};
