/* What an optimizer file implements and the helpers it shares (lib/optim only; the trainer sees optim.h). */
#ifndef LSD_OPTIM_IMPL_H
#define LSD_OPTIM_IMPL_H

#include <stddef.h>

#include "optim/optim.h"

/* ---- optimizer_args (args.c): kohya's "key=value key=value", values as Python literals ---- */
#define LSDI_OPTIM_MAX_ARGS 32
typedef struct lsdi_optim_args {
    const char *optimizer; /* its name, for messages */
    int n;
    struct {
        const char *key, *value; /* into buf */
        int used;
    } kv[LSDI_OPTIM_MAX_ARGS];
    char *buf;
} lsdi_optim_args;

/* Splits text (NULL: nothing) at blanks outside brackets; a repeated key's last value wins, as in kohya's dict. */
lsd_status lsdi_optim_args_parse(const char *text, const char *optimizer, lsdi_optim_args *a);
void lsdi_optim_args_release(lsdi_optim_args *a);
/* Each reads its key when given (else leaves *out, the default, alone) and fails naming the optimizer, the key and
 * the value when that is not a number ("1e-3", "inf"), a bool (True/False, 1/0), a number or None, or a pair
 * ("0.9,0.99", "(0.9, 0.99)"). */
lsd_status lsdi_optim_arg_num(lsdi_optim_args *a, const char *key, double *out);
lsd_status lsdi_optim_arg_bool(lsdi_optim_args *a, const char *key, int *out);
lsd_status lsdi_optim_arg_num_or_none(lsdi_optim_args *a, const char *key, double *out, int *is_none);
lsd_status lsdi_optim_arg_pair(lsdi_optim_args *a, const char *key, double out[2]);
/* LSD_ERR_INVALID_ARGUMENT "optimizer_args: <key> of <optimizer> <rule>" when bad, else LSD_OK. */
lsd_status lsdi_optim_arg_check(const lsdi_optim_args *a, int bad, const char *key, const char *rule);

/* ---- the optimizers ---- */
typedef struct lsdi_optim_kind {
    const char *name;
    const char *keys;               /* the optimizer_args it takes, listed when another one is given */
    int slots_per_param;            /* state tensors per parameter (NULL where a parameter has none) */
    const char *const *slot_names;
    int scalars_per_param, global_scalars;
    size_t hp_size;                 /* its hyperparameters, o->hp */
    /* Reads the args into o->hp, checks them and makes the state (lsdi_optim_add_slot). */
    lsd_status (*init)(lsdi_optim *o, lsdi_optim_args *a, const lsd_train_params *p);
    lsd_status (*step)(lsdi_optim *o);
    double (*lr)(const lsdi_optim *o, int group); /* lsdi_optim_get_lr; NULL: the group's LR */
} lsdi_optim_kind;

extern const lsdi_optim_kind lsdi_optim_adamw, lsdi_optim_lion, lsdi_optim_prodigy, lsdi_optim_adafactor,
    lsdi_optim_sgd;

struct lsdi_optim {
    const lsdi_optim_kind *kind;
    int n_groups;
    double *lr;            /* [n_groups]: the LR of the coming step */
    int n_params;          /* over all groups, in order */
    lsdt_tensor **params;  /* the caller's */
    int *group;            /* [n_params]: the group of each */
    lsdt_tensor **slots;   /* [n_params * slots_per_param] */
    double *scalars;       /* [n_params * scalars_per_param + global_scalars] */
    lsdt_tensor *scalars_t; /* a float64 view of scalars, the "scalars" state tensor */
    void *hp;
    int n_state;           /* the state list: the existing slots in order, then scalars_t */
    int *state_slot;       /* [n_state - 1]: their indices in slots */
    char (*state_names)[40];
};

#define LSDI_SLOT(o, i, k) ((o)->slots[(size_t)(i) * (o)->kind->slots_per_param + (k)])
#define LSDI_PSCALARS(o, i) ((o)->scalars + (size_t)(i) * (o)->kind->scalars_per_param)
#define LSDI_GSCALARS(o) ((o)->scalars + (size_t)(o)->n_params * (o)->kind->scalars_per_param)
#define LSDI_LR(o, i) ((o)->lr[(o)->group[i]])

/* A zero state tensor k of parameter i: of the parameter's shape (shape NULL) or of the given one; its dtype and
 * device. */
lsd_status lsdi_optim_add_slot(lsdi_optim *o, int i, int k, const int64_t *shape, int ndim);
/* Runs f on each parameter that has a gradient (g), in a scope of its own; stops at the first failure, which it
 * returns prefixed with the optimizer's name. f returns a shim status. */
typedef int (*lsdi_optim_param_fn)(lsdi_optim *o, int i, lsdt_scope *s, lsdt_tensor *g, void *ctx);
lsd_status lsdi_optim_each(lsdi_optim *o, lsdi_optim_param_fn f, void *ctx);
/* sum(a * b) as a double (a host read: the references' .item()). */
int lsdi_optim_dot(lsdt_scope *s, const lsdt_tensor *a, const lsdt_tensor *b, double *out);

#endif
