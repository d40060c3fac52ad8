/* diffusers' get_scheduler (optimization.py) as factors of the base LR. */
#include <math.h>
#include <string.h>

#include "core/error.h"
#include "optim/lr_schedule.h"

static const char *const names[] = {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                    "polynomial"};
#define N_NAMES ((int)(sizeof names / sizeof names[0]))

const char *lsd_lr_scheduler_name(lsd_lr_scheduler s)
{
    return (int)s >= 0 && (int)s < N_NAMES ? names[s] : "unknown";
}

lsd_status lsd_lr_scheduler_from_name(const char *name, lsd_lr_scheduler *out)
{
    if (!name || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_lr_scheduler_from_name: name or out is NULL");
    for (int i = 0; i < N_NAMES; i++)
        if (!strcmp(name, names[i])) {
            *out = (lsd_lr_scheduler)i;
            return LSD_OK;
        }
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                      "unknown lr_scheduler \"%s\" (constant, constant_with_warmup, linear, cosine, "
                      "cosine_with_restarts, polynomial)",
                      name);
}

double lsdi_lr_factor(const lsd_train_params *p, int step)
{
    const double pi = 3.14159265358979323846;
    double s = step, w = p->lr_warmup_steps > 0 ? p->lr_warmup_steps : 0, T = p->max_train_steps;
    if (p->lr_scheduler == LSD_LR_CONSTANT)
        return 1.0;
    if (s < w)
        return s / (w > 1 ? w : 1);
    double span = T - w > 1 ? T - w : 1, progress = (s - w) / span;
    switch (p->lr_scheduler) {
    case LSD_LR_CONSTANT_WITH_WARMUP:
        return 1.0;
    case LSD_LR_LINEAR:
        return fmax(0.0, (T - s) / span);
    case LSD_LR_COSINE: /* num_cycles 0.5: half a cosine down to 0 */
        return fmax(0.0, 0.5 * (1.0 + cos(pi * 0.5 * 2.0 * progress)));
    case LSD_LR_COSINE_WITH_RESTARTS: {
        if (progress >= 1.0)
            return 0.0;
        double c = p->lr_num_cycles > 0 ? p->lr_num_cycles : 1;
        return fmax(0.0, 0.5 * (1.0 + cos(pi * fmod(c * progress, 1.0))));
    }
    case LSD_LR_POLYNOMIAL: {
        const double lr_end = 1e-7; /* get_scheduler's default */
        double lr0 = p->learning_rate;
        if (s > T || !(lr0 > lr_end))
            return lr0 > 0 ? lr_end / lr0 : 0.0;
        double remaining = 1.0 - (s - w) / (T - w > 0 ? T - w : 1);
        return ((lr0 - lr_end) * pow(remaining, p->lr_power) + lr_end) / lr0;
    }
    default:
        return 1.0;
    }
}
