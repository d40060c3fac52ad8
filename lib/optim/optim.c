/* The optimizer interface: names, construction from groups and args, the state list for checkpoints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "optim/impl.h"

static const lsdi_optim_kind *const kinds[] = {&lsdi_optim_adamw, &lsdi_optim_lion, &lsdi_optim_prodigy,
                                                &lsdi_optim_adafactor, &lsdi_optim_sgd};
#define N_KINDS ((int)(sizeof kinds / sizeof kinds[0]))

const char *lsd_optimizer_name(lsd_optimizer o)
{
    return (int)o >= 0 && (int)o < N_KINDS ? kinds[o]->name : "unknown";
}

lsd_status lsd_optimizer_from_name(const char *name, lsd_optimizer *out)
{
    if (!name || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_optimizer_from_name: name or out is NULL");
    for (int i = 0; i < N_KINDS; i++)
        if (!strcasecmp(name, kinds[i]->name)) {
            *out = (lsd_optimizer)i;
            return LSD_OK;
        }
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "unknown optimizer \"%s\" (adamw, lion, prodigy, adafactor, sgd)", name);
}

void lsdi_optim_free(lsdi_optim *o)
{
    if (!o)
        return;
    for (int i = 0; o->slots && i < o->n_params * o->kind->slots_per_param; i++)
        lsdt_free(o->slots[i]);
    lsdt_free(o->scalars_t);
    free(o->slots);
    free(o->scalars);
    free(o->lr);
    free(o->params);
    free(o->group);
    free(o->hp);
    free(o->state_slot);
    free(o->state_names);
    free(o);
}

lsd_status lsdi_optim_add_slot(lsdi_optim *o, int i, int k, const int64_t *shape, int ndim)
{
    const lsdt_tensor *p = o->params[i];
    int64_t like[LSDT_MAX_DIMS];
    if (!shape) {
        ndim = lsdt_ndim(p);
        for (int d = 0; d < ndim; d++)
            like[d] = lsdt_size(p, d);
        shape = like;
    }
    char dev[32];
    lsdt_get_device(p, dev, sizeof dev);
    lsdt_tensor *t = lsdt_zeros(NULL, shape, ndim, lsdt_get_dtype(p), dev);
    if (!t)
        return lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "%s state of parameter %d",
                                 o->kind->name, i);
    LSDI_SLOT(o, i, k) = t;
    return LSD_OK;
}

/* The list lsdi_optim_state_* walks: the slots that exist, then the scalars. */
static lsd_status index_state(lsdi_optim *o)
{
    int per = o->kind->slots_per_param, total = o->n_params * per;
    o->state_slot = malloc(((size_t)total + 1) * sizeof *o->state_slot);
    o->state_names = calloc((size_t)total + 1, sizeof *o->state_names);
    if (!o->state_slot || !o->state_names)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s state", o->kind->name);
    int n = 0;
    for (int j = 0; j < total; j++)
        if (o->slots[j]) {
            snprintf(o->state_names[n], sizeof o->state_names[n], "%s.%d", o->kind->slot_names[j % per], j / per);
            o->state_slot[n++] = j;
        }
    snprintf(o->state_names[n], sizeof o->state_names[n], "scalars");
    o->n_state = n + 1;
    return LSD_OK;
}

lsd_status lsdi_optim_new(lsd_optimizer kind, const char *args, const lsd_train_params *p,
                          const lsdi_optim_group *groups, int n_groups, lsdi_optim **out)
{
    *out = NULL;
    if ((unsigned)kind >= (unsigned)N_KINDS)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "optimizer %d is not an lsd_optimizer", (int)kind);
    const lsdi_optim_kind *k = kinds[kind];
    lsdi_optim *o = calloc(1, sizeof *o);
    if (!o)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", k->name);
    o->kind = k;
    o->n_groups = n_groups;
    for (int g = 0; g < n_groups; g++)
        o->n_params += groups[g].n;
    size_t np = (size_t)o->n_params, n_scalars = np * k->scalars_per_param + k->global_scalars;
    o->lr = malloc(((size_t)n_groups + 1) * sizeof *o->lr);
    o->params = malloc((np + 1) * sizeof *o->params);
    o->group = malloc((np + 1) * sizeof *o->group);
    o->slots = calloc(np * k->slots_per_param + 1, sizeof *o->slots);
    o->scalars = calloc(n_scalars + 1, sizeof *o->scalars);
    o->hp = calloc(1, k->hp_size);
    lsd_status st = o->lr && o->params && o->group && o->slots && o->scalars && o->hp
                        ? LSD_OK
                        : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s over %zu parameters", k->name, np);
    for (int g = 0, i = 0; st == LSD_OK && g < n_groups; g++) {
        o->lr[g] = groups[g].lr;
        for (int j = 0; j < groups[g].n; j++, i++) {
            o->params[i] = groups[g].params[j];
            o->group[i] = g;
        }
    }
    int64_t shape[1] = {(int64_t)n_scalars};
    if (st == LSD_OK && !(o->scalars_t = lsdt_from_blob(NULL, o->scalars, LSDT_F64, shape, 1, NULL, NULL)))
        st = lsdi_error_from_shim(lsdt_last_status());
    lsdi_optim_args a;
    if (st == LSD_OK)
        st = lsdi_optim_args_parse(args, k->name, &a);
    if (st == LSD_OK) {
        st = k->init(o, &a, p);
        for (int j = 0; st == LSD_OK && j < a.n; j++)
            if (!a.kv[j].used)
                st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "optimizer_args: unknown key \"%s\" for %s (it takes %s)",
                                a.kv[j].key, k->name, k->keys);
        lsdi_optim_args_release(&a);
    }
    if (st == LSD_OK)
        st = index_state(o);
    if (st != LSD_OK) {
        lsdi_optim_free(o);
        return st;
    }
    *out = o;
    return LSD_OK;
}

const char *lsdi_optim_name(const lsdi_optim *o)
{
    return o->kind->name;
}

void lsdi_optim_set_lr(lsdi_optim *o, int group, double lr)
{
    if (group >= 0 && group < o->n_groups)
        o->lr[group] = lr;
}

double lsdi_optim_get_lr(const lsdi_optim *o, int group)
{
    if (group < 0 || group >= o->n_groups)
        return 0.0;
    return o->kind->lr ? o->kind->lr(o, group) : o->lr[group];
}

lsd_status lsdi_optim_step(lsdi_optim *o)
{
    return o->kind->step(o);
}

lsd_status lsdi_optim_each(lsdi_optim *o, lsdi_optim_param_fn f, void *ctx)
{
    for (int i = 0; i < o->n_params; i++) {
        lsdt_scope *s = lsdt_scope_begin();
        lsdt_tensor *g = lsdt_grad(s, o->params[i]);
        int rc = g ? f(o, i, s, g, ctx) : 0;
        int sst = lsdt_scope_end(s);
        if (sst || rc)
            return lsdi_error_prefix(lsdi_error_from_shim(sst ? sst : rc), "%s step, parameter %d", o->kind->name, i);
    }
    return LSD_OK;
}

int lsdi_optim_dot(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b, double *out)
{
    lsdt_tensor *d = lsdt_sum(s, lsdt_mul(s, a, b));
    return d ? lsdt_item(d, out) : lsdt_scope_status(s);
}

int lsdi_optim_state_count(const lsdi_optim *o)
{
    return o->n_state;
}

const char *lsdi_optim_state_name(const lsdi_optim *o, int k)
{
    return k >= 0 && k < o->n_state ? o->state_names[k] : NULL;
}

lsdt_tensor *lsdi_optim_state_get(const lsdi_optim *o, int k)
{
    if (k < 0 || k >= o->n_state)
        return NULL;
    return k == o->n_state - 1 ? o->scalars_t : o->slots[o->state_slot[k]];
}

lsd_status lsdi_optim_state_set(lsdi_optim *o, int k, const lsdt_tensor *t)
{
    lsdt_tensor *dst = lsdi_optim_state_get(o, k);
    if (!dst || !t)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s state %d: no such tensor", o->kind->name, k);
    int same = lsdt_get_dtype(t) == lsdt_get_dtype(dst) && lsdt_ndim(t) == lsdt_ndim(dst);
    for (int d = 0; same && d < lsdt_ndim(t); d++)
        same = lsdt_size(t, d) == lsdt_size(dst, d);
    if (!same)
        return lsdi_error(LSD_ERR_SHAPE_MISMATCH, "%s state \"%s\": the stored tensor's dtype or shape differs",
                          o->kind->name, o->state_names[k]);
    return lsdi_error_from_shim(lsdt_copy_(dst, t));
}
