/* Euler and Euler ancestral (diffusers' EulerDiscreteScheduler with s_churn 0, EulerAncestralDiscreteScheduler).
 * Sigma-space steps in float32, in the order torch evaluates them, since latents reach |50| here. */
#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "sample/scheduler.h"

/* np.interp(t, arange(T), table): linear between neighbouring entries, computed in double */
static double interp_table(const float *tab, int T, double t)
{
    if (t >= T - 1)
        return tab[T - 1];
    int j = (int)floor(t);
    double slope = (double)tab[j + 1] - (double)tab[j];
    return slope * (t - j) + tab[j];
}

lsd_status lsdi_euler_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns)
{
    int n = s->steps, T = s->num_train_timesteps;
    s->num_calls = n;
    s->sigmas = malloc(sizeof(float) * ((size_t)n + 1));
    if (!s->sigmas)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "euler: out of memory for %d sigmas", n + 1);
    lsdi_spacing spacing = ns->spacing == LSDI_SPACING_CLASS_DEFAULT ? LSDI_SPACING_LINSPACE : ns->spacing;
    if (spacing == LSDI_SPACING_LINSPACE) {
        /* np.linspace(0, T-1, n, dtype=float32): k * step in double, the last exactly T-1, rounded to float,
         * and not rounded to integers: the UNet gets fractional timesteps */
        double step = n > 1 ? (double)(T - 1) / (n - 1) : 0.0;
        for (int k = 0; k < n; k++)
            s->timesteps[n - 1 - k] = (float)(k == n - 1 && n > 1 ? (double)(T - 1) : k * step);
    } else {
        int64_t *asc = malloc(sizeof(int64_t) * (size_t)n);
        if (!asc)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "euler: out of memory for %d timesteps", n);
        lsdi_spacing_timesteps(spacing, T, n, ns->steps_offset, asc);
        for (int i = 0; i < n; i++)
            s->timesteps[i] = (double)asc[n - 1 - i];
        free(asc);
    }
    float max_sigma = 0.0f;
    for (int k = 0; k < n; k++) {
        s->sigmas[k] = (float)interp_table(ns->sigma_table, T, s->timesteps[k]);
        max_sigma = fmaxf(max_sigma, s->sigmas[k]);
    }
    s->sigmas[n] = 0.0f;
    /* the start noise is scaled by sqrt(max^2 + 1) only with leading spacing */
    s->init_noise_sigma = spacing == LSDI_SPACING_LEADING ? sqrtf(max_sigma * max_sigma + 1.0f) : max_sigma;
    return LSD_OK;
}

lsd_status lsdi_euler_step(lsdi_scheduler *s, int k, const float *m, float *x, const float *noise)
{
    float sigma = s->sigmas[k], next = s->sigmas[k + 1];
    float v_m = -sigma / sqrtf(sigma * sigma + 1.0f), v_x = sigma * sigma + 1.0f;
    float dt = next - sigma, up = 0.0f;
    if (s->kind == LSD_SAMPLER_EULER_A) {
        up = sqrtf(next * next * (sigma * sigma - next * next) / (sigma * sigma));
        dt = sqrtf(fmaxf(next * next - up * up, 0.0f)) - sigma;
        if (up > 0.0f && !noise)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "euler_a step %d: noise is NULL", k);
    }
    for (size_t i = 0; i < s->n; i++) {
        float x0 = s->prediction == LSDI_PRED_V ? m[i] * v_m + x[i] / v_x : x[i] - sigma * m[i];
        float d = (x[i] - x0) / sigma;
        float out = x[i] + d * dt;
        if (up > 0.0f)
            out = out + noise[i] * up;
        x[i] = out;
    }
    return LSD_OK;
}
