/* DDPM's forward process for training: noising a clean latent and the target the model learns. Float32 scalars
 * and products, as diffusers' DDPMScheduler computes them. */
#include <math.h>
#include <string.h>

#include "core/error.h"
#include "sample/scheduler.h"

lsd_status lsdi_ddpm_coefficients(const lsdi_noise_schedule *ns, int64_t t, float *sqrt_ac, float *sqrt_one_minus_ac)
{
    if (!ns || !ns->alphas_cumprod)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "ddpm: no noise schedule");
    if (t < 0 || t >= ns->num_train_timesteps)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "ddpm: timestep %lld outside [0, %d]", (long long)t,
                          ns->num_train_timesteps - 1);
    float ac = ns->alphas_cumprod[t];
    *sqrt_ac = sqrtf(ac);
    *sqrt_one_minus_ac = sqrtf(1.0f - ac);
    return LSD_OK;
}

lsd_status lsdi_ddpm_snr(const lsdi_noise_schedule *ns, int64_t t, float *snr)
{
    float a = 0.0f, b = 1.0f;
    LSDI_TRY(lsdi_ddpm_coefficients(ns, t, &a, &b));
    float r = a / b; /* compute_snr: (alpha / sigma) ** 2 */
    *snr = r * r;
    return LSD_OK;
}

/* Per batch item with a = sqrt(ac[t]), s = sqrt(1 - ac[t]): a p + s q, or for the velocity a q - s p. */
static lsd_status combine(const lsdi_noise_schedule *ns, const float *p, const float *q, const int64_t *timesteps,
                          int batch, size_t per_item, float *out, int velocity)
{
    if (!p || !q || !timesteps || !out || batch <= 0)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "ddpm: NULL buffer or batch %d <= 0", batch);
    for (int b = 0; b < batch; b++) {
        float a = 0.0f, s = 0.0f;
        LSDI_TRY(lsdi_ddpm_coefficients(ns, timesteps[b], &a, &s));
        size_t off = (size_t)b * per_item;
        for (size_t i = 0; i < per_item; i++)
            out[off + i] = velocity ? a * q[off + i] - s * p[off + i] : a * p[off + i] + s * q[off + i];
    }
    return LSD_OK;
}

lsd_status lsdi_ddpm_add_noise(const lsdi_noise_schedule *ns, const float *x, const float *noise,
                               const int64_t *timesteps, int batch, size_t per_item, float *out)
{
    return combine(ns, x, noise, timesteps, batch, per_item, out, 0);
}

lsd_status lsdi_ddpm_velocity(const lsdi_noise_schedule *ns, const float *x, const float *noise,
                              const int64_t *timesteps, int batch, size_t per_item, float *out)
{
    return combine(ns, x, noise, timesteps, batch, per_item, out, 1);
}

lsd_status lsdi_ddpm_target(const lsdi_noise_schedule *ns, const float *x, const float *noise,
                            const int64_t *timesteps, int batch, size_t per_item, float *out)
{
    if (!ns)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "ddpm target: no noise schedule");
    if (ns->prediction != LSDI_PRED_V) {
        if (!noise || !out || batch <= 0)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "ddpm target: NULL buffer or batch %d <= 0", batch);
        if (out != noise)
            memmove(out, noise, (size_t)batch * per_item * sizeof(float));
        return LSD_OK;
    }
    return lsdi_ddpm_velocity(ns, x, noise, timesteps, batch, per_item, out);
}
