/* DPM-Solver++ 2M (diffusers' DPMSolverMultistepScheduler: dpmsolver++, order 2, midpoint, lower_order_final,
 * final_sigmas_type "zero"), with linear or Karras sigmas. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "sample/scheduler.h"

/* _sigma_to_t: the fractional timestep whose log-sigma interpolates log(sigma) in the (float32) log table */
static double sigma_to_t(const float *log_tab, int T, double sigma)
{
    double ls = log(fmax(sigma, 1e-10));
    int lo = 0;
    for (int i = 0; i < T; i++)
        if (ls - (double)log_tab[i] >= 0.0)
            lo = i;
    if (lo > T - 2)
        lo = T - 2;
    double low = log_tab[lo], high = log_tab[lo + 1];
    double w = fmin(fmax((low - ls) / (low - high), 0.0), 1.0);
    return (1.0 - w) * lo + w * (lo + 1);
}

/* Karras et al. (2022) rho = 7 sigmas from sigma_table's max to its min; timesteps from sigma_to_t, rounded. */
static lsd_status karras(lsdi_scheduler *s, const lsdi_noise_schedule *ns)
{
    int n = s->steps, T = s->num_train_timesteps;
    float *log_tab = malloc(sizeof(float) * (size_t)T);
    if (!log_tab)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "dpmpp: out of memory for %d log sigmas", T);
    for (int t = 0; t < T; t++)
        log_tab[t] = logf(ns->sigma_table[t]);
    const double rho = 7.0;
    double max_inv = pow(ns->sigma_table[T - 1], 1.0 / rho), min_inv = pow(ns->sigma_table[0], 1.0 / rho);
    double step = n > 1 ? 1.0 / (n - 1) : 0.0;
    for (int k = 0; k < n; k++) {
        double ramp = k == n - 1 && n > 1 ? 1.0 : k * step;
        double sigma = pow(max_inv + ramp * (min_inv - max_inv), rho);
        s->sigmas[k] = (float)sigma;
        s->timesteps[k] = nearbyint(sigma_to_t(log_tab, T, sigma));
    }
    free(log_tab);
    return LSD_OK;
}

lsd_status lsdi_dpmpp_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns, int use_karras)
{
    int n = s->steps, T = s->num_train_timesteps;
    s->num_calls = n;
    s->history_slots = 1;
    s->sigmas = malloc(sizeof(float) * ((size_t)n + 1));
    if (!s->sigmas)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "dpmpp: out of memory for %d sigmas", n + 1);
    s->sigmas[n] = 0.0f;
    if (use_karras)
        return karras(s, ns);
    switch (ns->spacing) {
    case LSDI_SPACING_LEADING:
        for (int k = 0; k < n; k++)
            s->timesteps[k] = (double)(n - k) * (T / (n + 1)) + ns->steps_offset;
        break;
    case LSDI_SPACING_TRAILING:
        for (int k = 0; k < n; k++)
            s->timesteps[k] = nearbyint(T - k * ((double)T / n)) - 1;
        break;
    default: {
        /* np.linspace(0, T-1, n+1).round(), reversed, without its final 0 */
        double step = (double)(T - 1) / n;
        for (int k = 0; k < n; k++)
            s->timesteps[k] = k == 0 ? (double)(T - 1) : nearbyint((n - k) * step);
        break;
    }
    }
    for (int k = 0; k < n; k++) {
        int t = (int)s->timesteps[k];
        s->sigmas[k] = t >= 0 && t < T ? ns->sigma_table[t] : 0.0f; /* out-of-range is rejected by the caller */
    }
    return LSD_OK;
}

lsd_status lsdi_dpmpp_step(lsdi_scheduler *s, int k, const float *m, float *x)
{
    double sig0 = s->sigmas[k], sig1 = s->sigmas[k + 1];
    double alpha0 = 1.0 / sqrt(sig0 * sig0 + 1.0), sd0 = sig0 * alpha0;
    double alpha1 = 1.0 / sqrt(sig1 * sig1 + 1.0), sd1 = sig1 * alpha1;
    float *prev_x0 = s->history;
    /* the last call (final sigma 0) and the first are first order; the rest use the previous x0 too */
    int second = k > 0 && s->history_used && sig1 > 0.0;
    double c_x = 0, c_x0 = 0, c_d1 = 0;
    if (sig1 > 0.0) {
        double lambda0 = log(alpha0) - log(sd0), lambda1 = log(alpha1) - log(sd1);
        double h = lambda1 - lambda0, em1 = exp(-h) - 1.0;
        c_x = sd1 / sd0;
        c_x0 = -alpha1 * em1;
        if (second) {
            double sigp = s->sigmas[k - 1];
            double alphap = 1.0 / sqrt(sigp * sigp + 1.0), sdp = sigp * alphap;
            double r0 = (lambda0 - (log(alphap) - log(sdp))) / h;
            c_d1 = -0.5 * alpha1 * em1 / r0;
        }
    }
    for (size_t i = 0; i < s->n; i++) {
        double x0 = s->prediction == LSDI_PRED_V ? alpha0 * x[i] - sd0 * m[i] : (x[i] - sd0 * m[i]) / alpha0;
        float x0f = (float)x0;
        double out = sig1 > 0.0 ? c_x * x[i] + c_x0 * x0f : x0f;
        if (second)
            out += c_d1 * ((double)x0f - prev_x0[i]);
        prev_x0[i] = x0f;
        x[i] = (float)out;
    }
    s->history_used = 1;
    return LSD_OK;
}
