/* torch.optim.AdamW (the single-tensor path of torch 1.13/2.x): decoupled decay p *= 1 - lr wd first, then
 * m = lerp(m, g, 1 - b1), v = b2 v + (1 - b2) g^2, p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * Defaults: the trainer's adam_* fields (diffusers' flags), which optimizer_args override. */
#include <math.h>

#include "core/error.h"
#include "optim/impl.h"

typedef struct adamw_hp {
    double betas[2], eps, weight_decay;
} adamw_hp;

static const char *const slot_names[] = {"exp_avg", "exp_avg_sq"};

static lsd_status init(lsdi_optim *o, lsdi_optim_args *a, const lsd_train_params *p)
{
    adamw_hp *h = o->hp;
    h->betas[0] = p->adam_beta1;
    h->betas[1] = p->adam_beta2;
    h->eps = p->adam_epsilon;
    h->weight_decay = p->adam_weight_decay;
    LSDI_TRY(lsdi_optim_arg_pair(a, "betas", h->betas));
    LSDI_TRY(lsdi_optim_arg_num(a, "eps", &h->eps));
    LSDI_TRY(lsdi_optim_arg_num(a, "weight_decay", &h->weight_decay));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->betas[0] >= 0 && h->betas[0] < 1 && h->betas[1] >= 0 && h->betas[1] < 1),
                                  "betas", "must be in [0, 1)"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->eps >= 0), "eps", "must be >= 0"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->weight_decay >= 0), "weight_decay", "must be >= 0"));
    for (int i = 0; i < o->n_params; i++) {
        LSDI_TRY(lsdi_optim_add_slot(o, i, 0, NULL, 0));
        LSDI_TRY(lsdi_optim_add_slot(o, i, 1, NULL, 0));
    }
    return LSD_OK;
}

static int update(lsdi_optim *o, int i, lsdt_scope *s, lsdt_tensor *g, void *ctx)
{
    (void)ctx;
    const adamw_hp *h = o->hp;
    lsdt_tensor *p = o->params[i], *m = LSDI_SLOT(o, i, 0), *v = LSDI_SLOT(o, i, 1);
    double lr = LSDI_LR(o, i), step = ++LSDI_PSCALARS(o, i)[0];
    double bc1 = 1 - pow(h->betas[0], step), bc2 = 1 - pow(h->betas[1], step);
    int rc = lsdt_mul_scalar_(p, 1 - lr * h->weight_decay);
    if (!rc)
        rc = lsdt_lerp_(m, g, 1 - h->betas[0]);
    if (!rc)
        rc = lsdt_mul_scalar_(v, h->betas[1]);
    if (!rc)
        rc = lsdt_addcmul_(v, g, g, 1 - h->betas[1]);
    lsdt_tensor *denom = lsdt_div_scalar(s, lsdt_sqrt(s, v), sqrt(bc2));
    if (!rc && denom)
        rc = lsdt_add_scalar_(denom, h->eps);
    if (!rc && denom)
        rc = lsdt_addcdiv_(p, m, denom, -lr / bc1);
    return rc;
}

static lsd_status step(lsdi_optim *o)
{
    return lsdi_optim_each(o, update, NULL);
}

const lsdi_optim_kind lsdi_optim_adamw = {
    "adamw", "betas, eps, weight_decay", 2, slot_names, 1, 0, sizeof(adamw_hp), init, step, NULL,
};
