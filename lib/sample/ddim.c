/* DDIM (diffusers' DDIMScheduler): deterministic for eta = 0, with fresh noise scaled by eta otherwise. */
#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "sample/scheduler.h"

lsd_status lsdi_ddim_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns)
{
    int n = s->steps;
    int64_t *asc = malloc(sizeof(int64_t) * (size_t)n);
    if (!asc)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "ddim: out of memory for %d timesteps", n);
    lsdi_spacing_timesteps(ns->spacing == LSDI_SPACING_CLASS_DEFAULT ? LSDI_SPACING_LEADING : ns->spacing,
                           s->num_train_timesteps, n, ns->steps_offset, asc);
    for (int i = 0; i < n; i++)
        s->timesteps[i] = (double)asc[n - 1 - i];
    free(asc);
    s->num_calls = n;
    /* DDIMScheduler's class defaults, used when the config does not say: alpha-to-one and clipping both on */
    s->final_alpha_cumprod = ns->set_alpha_to_one != 0 ? 1.0f : s->alphas_cumprod[0];
    s->clip_sample = ns->clip_sample != 0;
    s->clip_sample_range = ns->clip_sample_range;
    return LSD_OK;
}

lsd_status lsdi_ddim_step(lsdi_scheduler *s, int k, const float *m, float *x, const float *noise)
{
    int t = (int)s->timesteps[k], tp = t - s->num_train_timesteps / s->steps;
    double a = s->alphas_cumprod[t];
    double ap = tp >= 0 ? s->alphas_cumprod[tp] : s->final_alpha_cumprod;
    double std = s->eta * sqrt((1.0 - ap) / (1.0 - a) * (1.0 - a / ap));
    if (std > 0.0 && !noise)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "ddim step %d: eta = %g needs noise, got NULL", k,
                          (double)s->eta);
    double sa = sqrt(a), sb = sqrt(1.0 - a), sap = sqrt(ap);
    double dir = sqrt(fmax(1.0 - ap - std * std, 0.0));
    double range = s->clip_sample_range;
    for (size_t i = 0; i < s->n; i++) {
        double x0, pe;
        if (s->prediction == LSDI_PRED_V) {
            x0 = sa * x[i] - sb * m[i];
            pe = sa * m[i] + sb * x[i];
        } else {
            x0 = (x[i] - sb * m[i]) / sa;
            pe = m[i];
        }
        if (s->clip_sample)
            x0 = fmin(fmax(x0, -range), range);
        double out = sap * x0 + dir * pe;
        if (std > 0.0)
            out += std * noise[i];
        x[i] = (float)out;
    }
    return LSD_OK;
}
