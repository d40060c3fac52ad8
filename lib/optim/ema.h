/* An exponential moving average of the trained weights, as diffusers' EMAModel (training_utils.py, 0.27):
 * after optimizer step t, shadow -= (1 - decay_t) (shadow - param) with
 * decay_t = 0 for t <= 1, else min(ema_decay, (1 + u) / (10 + u)), or with ema_warmup
 * min(ema_decay, 1 - (1 + u / inv_gamma)^-power), where u = t - 1 (update_after_step 0, min_decay 0).
 * store / copy_to / restore put the averaged weights in the parameters for a while (validation, saving). */
#ifndef LSD_OPTIM_EMA_H
#define LSD_OPTIM_EMA_H

#include <stdint.h>

#include "lora_sd.h"
#include "lsd_torch.h"

typedef struct lsdi_ema lsdi_ema;

/* Averages params (which stay the caller's and must outlive it) with p's ema_decay, ema_warmup, ema_inv_gamma,
 * ema_power; the shadows start as copies of the parameters. */
lsd_status lsdi_ema_new(lsdt_tensor *const *params, int n, const lsd_train_params *p, lsdi_ema **out);
void lsdi_ema_free(lsdi_ema *e);
/* EMAModel.get_decay(optimization_step). */
double lsdi_ema_decay(const lsdi_ema *e, int64_t optimization_step);
/* EMAModel.step: call after each optimizer step. */
lsd_status lsdi_ema_step(lsdi_ema *e);
/* Keeps a copy of the parameters (store), writes the shadows into them (copy_to), puts the kept copy back and drops
 * it (restore; LSD_ERR_INVALID_ARGUMENT without a store). */
lsd_status lsdi_ema_store(lsdi_ema *e);
lsd_status lsdi_ema_copy_to(lsdi_ema *e);
lsd_status lsdi_ema_restore(lsdi_ema *e);

/* The state, for checkpoints: the optimization step and one shadow per parameter (owned by e; write into it to
 * restore). */
int64_t lsdi_ema_get_step(const lsdi_ema *e);
void lsdi_ema_set_step(lsdi_ema *e, int64_t step);
lsdt_tensor *lsdi_ema_shadow(const lsdi_ema *e, int i);

#endif
