/* PNDM with skip_prk_steps: pseudo linear multistep (PLMS), as diffusers' PNDMScheduler runs it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "sample/scheduler.h"

#define PNDM_ORDER 4 /* past outputs kept; slot PNDM_ORDER holds the sample saved at call 0 */

lsd_status lsdi_pndm_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns)
{
    int n = s->steps, T = s->num_train_timesteps;
    int64_t *asc = malloc(sizeof(int64_t) * (size_t)n);
    if (!asc)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "pndm: out of memory for %d timesteps", n);
    lsdi_spacing_timesteps(ns->spacing == LSDI_SPACING_CLASS_DEFAULT ? LSDI_SPACING_LEADING : ns->spacing, T, n,
                           ns->steps_offset, asc);
    /* asc[0..n-2], asc[n-2] again, asc[n-1], reversed: the second-highest timestep is run twice */
    s->num_calls = n == 1 ? 1 : n + 1;
    int c = 0;
    s->timesteps[c++] = (double)asc[n - 1];
    if (n >= 2)
        s->timesteps[c++] = (double)asc[n - 2];
    for (int i = n - 2; i >= 0; i--)
        s->timesteps[c++] = (double)asc[i];
    free(asc);
    s->final_alpha_cumprod = ns->set_alpha_to_one == 1 ? 1.0f : s->alphas_cumprod[0];
    s->history_slots = PNDM_ORDER + 1;
    return LSD_OK;
}

static float *slot(lsdi_scheduler *s, int i) { return s->history + (size_t)i * s->n; }

/* The sample at tp from the sample at t and an epsilon estimate e (diffusers' _get_prev_sample, formula (9) of
 * the PNDM paper); a v prediction is turned into epsilon with this call's x and t first. */
static void prev_sample(const lsdi_scheduler *s, const float *x, int t, int tp, const double *e, float *out)
{
    double a = s->alphas_cumprod[t];
    double ap = tp >= 0 ? s->alphas_cumprod[tp] : s->final_alpha_cumprod;
    double coeff = sqrt(ap / a);
    double denom = a * sqrt(1.0 - ap) + sqrt(a * (1.0 - a) * ap);
    double sa = sqrt(a), sb = sqrt(1.0 - a);
    for (size_t i = 0; i < s->n; i++) {
        double eps = s->prediction == LSDI_PRED_V ? sa * e[i] + sb * x[i] : e[i];
        out[i] = (float)(coeff * x[i] - (ap - a) * eps / denom);
    }
}

lsd_status lsdi_pndm_step(lsdi_scheduler *s, int k, const float *m, float *x)
{
    size_t n = s->n;
    int r = s->num_train_timesteps / s->steps;
    int t = (int)s->timesteps[k], tp = t - r;
    double *e = malloc(n * sizeof(double));
    if (!e)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "pndm step: out of memory for %zu values", n);
    const float *from = x;
    if (k == 1) {
        /* the repeated timestep redoes the first interval from the saved sample, averaging both outputs */
        const float *e1 = slot(s, s->history_used - 1);
        for (size_t i = 0; i < n; i++)
            e[i] = ((double)m[i] + e1[i]) / 2;
        from = slot(s, PNDM_ORDER);
        tp = t;
        t += r;
    } else {
        if (s->history_used == PNDM_ORDER) {
            memmove(slot(s, 0), slot(s, 1), (PNDM_ORDER - 1) * n * sizeof(float));
            s->history_used--;
        }
        memcpy(slot(s, s->history_used++), m, n * sizeof(float));
        int h = s->history_used; /* slots run oldest to newest */
        const float *e1 = slot(s, h - 1), *e2 = slot(s, h >= 2 ? h - 2 : 0), *e3 = slot(s, h >= 3 ? h - 3 : 0),
                    *e4 = slot(s, 0);
        for (size_t i = 0; i < n; i++) {
            switch (h) {
            case 1: e[i] = e1[i]; break;
            case 2: e[i] = (3.0 * e1[i] - e2[i]) / 2; break;
            case 3: e[i] = (23.0 * e1[i] - 16.0 * e2[i] + 5.0 * e3[i]) / 12; break;
            default: e[i] = (55.0 * e1[i] - 59.0 * e2[i] + 37.0 * e3[i] - 9.0 * e4[i]) / 24; break;
            }
        }
        if (k == 0)
            memcpy(slot(s, PNDM_ORDER), x, n * sizeof(float));
    }
    prev_sample(s, from, t, tp, e, x);
    free(e);
    return LSD_OK;
}
