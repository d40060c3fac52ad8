/* LR schedules (lr_schedule.c): diffusers' get_scheduler as factors of each group's base LR. */
#ifndef LSD_OPTIM_LR_SCHEDULE_H
#define LSD_OPTIM_LR_SCHEDULE_H

#include "lora_sd.h"

/* The factor diffusers' get_scheduler applies to the base LR after `step` optimizer steps (the LR of the
 * step numbered step + 1). */
double lsdi_lr_factor(const lsd_train_params *p, int step);

#endif
