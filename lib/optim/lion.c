/* Lion as lucidrains' lion-pytorch (the package kohya's "Lion" uses): p *= 1 - lr wd, then
 * p -= lr sign(b1 m + (1 - b1) g), then m = b2 m + (1 - b2) g. Defaults betas (0.9, 0.99), weight_decay 0. */
#include "core/error.h"
#include "optim/impl.h"

typedef struct lion_hp {
    double betas[2], weight_decay;
} lion_hp;

static const char *const slot_names[] = {"exp_avg"};

static lsd_status init(lsdi_optim *o, lsdi_optim_args *a, const lsd_train_params *p)
{
    (void)p;
    lion_hp *h = o->hp;
    h->betas[0] = 0.9;
    h->betas[1] = 0.99;
    LSDI_TRY(lsdi_optim_arg_pair(a, "betas", h->betas));
    LSDI_TRY(lsdi_optim_arg_num(a, "weight_decay", &h->weight_decay));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->betas[0] >= 0 && h->betas[0] <= 1 && h->betas[1] >= 0 && h->betas[1] <= 1),
                                  "betas", "must be in [0, 1]"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->weight_decay >= 0), "weight_decay", "must be >= 0"));
    for (int i = 0; i < o->n_params; i++)
        LSDI_TRY(lsdi_optim_add_slot(o, i, 0, NULL, 0));
    return LSD_OK;
}

static int update(lsdi_optim *o, int i, lsdt_scope *s, lsdt_tensor *g, void *ctx)
{
    (void)ctx;
    const lion_hp *h = o->hp;
    lsdt_tensor *p = o->params[i], *m = LSDI_SLOT(o, i, 0);
    double lr = LSDI_LR(o, i);
    lsdt_tensor *u = lsdt_sign(s, lsdt_add_scaled(s, lsdt_mul_scalar(s, m, h->betas[0]), g, 1 - h->betas[0]));
    if (!u)
        return lsdt_scope_status(s);
    int rc = lsdt_mul_scalar_(p, 1 - lr * h->weight_decay);
    if (!rc)
        rc = lsdt_add_(p, u, -lr);
    if (!rc)
        rc = lsdt_mul_scalar_(m, h->betas[1]);
    if (!rc)
        rc = lsdt_add_(m, g, 1 - h->betas[1]);
    return rc;
}

static lsd_status step(lsdi_optim *o)
{
    return lsdi_optim_each(o, update, NULL);
}

const lsdi_optim_kind lsdi_optim_lion = {
    "lion", "betas, weight_decay", 1, slot_names, 0, 0, sizeof(lion_hp), init, step, NULL,
};
