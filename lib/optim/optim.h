/* The optimizers of the trainer (one file each: adamw.c, lion.c, prodigy.c, adafactor.c, sgd.c) behind one
 * interface. Each follows its reference implementation's update rule and defaults (docs/train.md "Optimizers and
 * EMA"); its state is a list of named tensors so that a checkpoint can save and restore it exactly. */
#ifndef LSD_OPTIM_OPTIM_H
#define LSD_OPTIM_OPTIM_H

#include "lora_sd.h"
#include "lsd_torch.h"

/* Parameters updated with one learning rate (torch's param_groups). The tensors stay the caller's. */
typedef struct lsdi_optim_group {
    lsdt_tensor *const *params;
    int n;
    double lr; /* the base LR: lsdi_optim_set_lr changes it for the step to come */
} lsdi_optim_group;

typedef struct lsdi_optim lsdi_optim;

/* An optimizer of kind `kind` over the groups, configured by args (kohya's --optimizer_args, "key=value ...";
 * NULL or "" for the reference's defaults; AdamW's come from p's adam_* fields). An unknown key is
 * LSD_ERR_INVALID_ARGUMENT naming the key and the optimizer. Parameters without a gradient at a step are left
 * alone, as torch does. */
lsd_status lsdi_optim_new(lsd_optimizer kind, const char *args, const lsd_train_params *p,
                          const lsdi_optim_group *groups, int n_groups, lsdi_optim **out);
void lsdi_optim_free(lsdi_optim *o);
const char *lsdi_optim_name(const lsdi_optim *o);
/* The LR of group g for the next step (the scheduled LR: base LR times the schedule's factor). */
void lsdi_optim_set_lr(lsdi_optim *o, int group, double lr);
/* The step size group g actually took at the last step, for logs: the LR (AdamW, Lion, SGD), d * LR (Prodigy),
 * Adafactor's relative step times the parameter scale of the group's first parameter (transformers'
 * AdafactorSchedule). Before the first step: the LR. */
double lsdi_optim_get_lr(const lsdi_optim *o, int group);
/* One update from the gradients on the parameters (which it does not clear). */
lsd_status lsdi_optim_step(lsdi_optim *o);

/* The state, for checkpoints: tensors named like "exp_avg.3" (the moment of parameter 3, counting through the
 * groups in order) and "scalars" (float64: step counts and the optimizer's running numbers). Every tensor exists from
 * lsdi_optim_new on, zero until the first step. get gives a handle owned by the optimizer; set copies t in (same
 * shape and dtype, else LSD_ERR_SHAPE_MISMATCH naming the tensor). */
int lsdi_optim_state_count(const lsdi_optim *o);
const char *lsdi_optim_state_name(const lsdi_optim *o, int k);
lsdt_tensor *lsdi_optim_state_get(const lsdi_optim *o, int k);
lsd_status lsdi_optim_state_set(lsdi_optim *o, int k, const lsdt_tensor *t);

#endif
