/* torch.optim.SGD: d = g + wd p; with momentum, buf = d at a parameter's first step, then
 * buf = momentum buf + (1 - dampening) d, and d = buf (or d + momentum buf with nesterov); p -= lr d.
 * Defaults momentum 0, dampening 0, weight_decay 0, nesterov False (kohya's "SGDNesterov" is nesterov=True with
 * momentum 0.9 unless given: the CLI passes that). */
#include "core/error.h"
#include "optim/impl.h"

typedef struct sgd_hp {
    double momentum, dampening, weight_decay;
    int nesterov;
} sgd_hp;

static const char *const slot_names[] = {"momentum_buffer"};

static lsd_status init(lsdi_optim *o, lsdi_optim_args *a, const lsd_train_params *p)
{
    (void)p;
    sgd_hp *h = o->hp;
    LSDI_TRY(lsdi_optim_arg_num(a, "momentum", &h->momentum));
    LSDI_TRY(lsdi_optim_arg_num(a, "dampening", &h->dampening));
    LSDI_TRY(lsdi_optim_arg_num(a, "weight_decay", &h->weight_decay));
    LSDI_TRY(lsdi_optim_arg_bool(a, "nesterov", &h->nesterov));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->momentum >= 0), "momentum", "must be >= 0"));
    LSDI_TRY(lsdi_optim_arg_check(a, !(h->weight_decay >= 0), "weight_decay", "must be >= 0"));
    LSDI_TRY(lsdi_optim_arg_check(a, h->nesterov && (h->momentum <= 0 || h->dampening != 0), "nesterov",
                                  "requires a momentum > 0 and zero dampening"));
    for (int i = 0; h->momentum != 0 && i < o->n_params; i++)
        LSDI_TRY(lsdi_optim_add_slot(o, i, 0, NULL, 0));
    return LSD_OK;
}

static int update(lsdi_optim *o, int i, lsdt_scope *s, lsdt_tensor *g, void *ctx)
{
    (void)ctx;
    const sgd_hp *h = o->hp;
    lsdt_tensor *p = o->params[i], *buf = LSDI_SLOT(o, i, 0), *d = g;
    if (h->weight_decay != 0)
        d = lsdt_add_scaled(s, d, p, h->weight_decay);
    int rc = d ? 0 : lsdt_scope_status(s);
    if (!rc && h->momentum != 0) {
        double *started = LSDI_PSCALARS(o, i);
        if (*started)
            rc = lsdt_mul_scalar_(buf, h->momentum);
        if (!rc)
            rc = *started ? lsdt_add_(buf, d, 1 - h->dampening) : lsdt_copy_(buf, d);
        *started = 1;
        d = h->nesterov ? lsdt_add_scaled(s, d, buf, h->momentum) : buf;
        if (!rc && !d)
            rc = lsdt_scope_status(s);
    }
    if (!rc)
        rc = lsdt_add_(p, d, -LSDI_LR(o, i));
    return rc;
}

static lsd_status step(lsdi_optim *o)
{
    return lsdi_optim_each(o, update, NULL);
}

const lsdi_optim_kind lsdi_optim_sgd = {
    "sgd", "momentum, dampening, weight_decay, nesterov", 1, slot_names, 1, 0, sizeof(sgd_hp), init, step, NULL,
};
