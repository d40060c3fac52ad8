/* Diffusion schedulers on host float32 buffers: the noise table, the five diffusers samplers (PNDM/PLMS, DDIM,
 * Euler, Euler ancestral, DPM++ 2M with optional Karras sigmas) and DDPM's training-time noising.
 * Numbers follow diffusers 0.27.2 (see tests/data/sd-tiny/ref and the fixtures README). */
#ifndef LSD_SAMPLE_SCHEDULER_H
#define LSD_SAMPLE_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "lora_sd.h"

/* The sampler's name in A1111's "parameters" text ("PLMS", "Euler a", ...); NULL for an invalid value. */
const char *lsdi_sampler_a1111_name(lsd_sampler s);

typedef enum lsdi_prediction {
    LSDI_PRED_EPSILON = 0,
    LSDI_PRED_V = 1 /* "v_prediction" */
} lsdi_prediction;

typedef enum lsdi_spacing {
    LSDI_SPACING_CLASS_DEFAULT = 0, /* key absent: leading for PNDM/DDIM, linspace for Euler/DPM++ */
    LSDI_SPACING_LEADING,
    LSDI_SPACING_LINSPACE,
    LSDI_SPACING_TRAILING
} lsdi_spacing;

/* Settings a config may leave out are -1 ("absent"): each scheduler then uses its own diffusers class default,
 * as from_config does (DDIM defaults set_alpha_to_one and clip_sample to true, PNDM to false). */
typedef struct lsdi_noise_schedule {
    int num_train_timesteps;
    float *betas;          /* [num_train_timesteps] */
    float *alphas_cumprod; /* [num_train_timesteps] */
    float *sigma_table;    /* sqrt((1 - ac) / ac), in float32 ops as torch computes it */
    lsdi_prediction prediction;
    lsdi_spacing spacing;
    int steps_offset;       /* 0 when absent (every class's default) */
    int set_alpha_to_one;   /* 0, 1, or -1 absent */
    int clip_sample;        /* 0, 1, or -1 absent */
    float clip_sample_range;
} lsdi_noise_schedule;

/* SD 1.x's scheduler_config.json (scaled_linear 0.00085..0.012, 1000 steps, steps_offset 1, no alpha-to-one). */
lsd_status lsdi_noise_schedule_default(lsdi_noise_schedule *ns);
/* Reads a diffusers scheduler_config.json; errors name the path and the key. NULL path: the default. */
lsd_status lsdi_noise_schedule_load(const char *path, lsdi_noise_schedule *ns);
/* Frees the tables (not ns itself); safe on a zeroed or already released struct. */
void lsdi_noise_schedule_release(lsdi_noise_schedule *ns);
/* Replaces the table with given alphas_cumprod (e.g. a stored reference), rederiving betas and sigma_table. */
lsd_status lsdi_noise_schedule_set_alphas_cumprod(lsdi_noise_schedule *ns, const float *ac, int count);

/* ---- DDPM forward process (training) ---- */

/* For each of `batch` items of `per_item` floats, with t = timesteps[b]:
 * add_noise: sqrt(ac[t]) x + sqrt(1 - ac[t]) noise; velocity: sqrt(ac[t]) noise - sqrt(1 - ac[t]) x;
 * target: what the model is trained to predict (noise for epsilon, the velocity for v_prediction). */
lsd_status lsdi_ddpm_add_noise(const lsdi_noise_schedule *ns, const float *x, const float *noise,
                               const int64_t *timesteps, int batch, size_t per_item, float *out);
lsd_status lsdi_ddpm_velocity(const lsdi_noise_schedule *ns, const float *x, const float *noise,
                              const int64_t *timesteps, int batch, size_t per_item, float *out);
lsd_status lsdi_ddpm_target(const lsdi_noise_schedule *ns, const float *x, const float *noise,
                            const int64_t *timesteps, int batch, size_t per_item, float *out);
/* The two coefficients above for timestep t (for tensor code), and the signal-to-noise ratio ac/(1-ac) as the
 * min-SNR weighting of diffusers' training scripts computes it. */
lsd_status lsdi_ddpm_coefficients(const lsdi_noise_schedule *ns, int64_t t, float *sqrt_ac, float *sqrt_one_minus_ac);
lsd_status lsdi_ddpm_snr(const lsdi_noise_schedule *ns, int64_t t, float *snr);

/* ---- Sampling ---- */

typedef struct lsdi_scheduler lsdi_scheduler;

/* A scheduler for `steps` inference steps; eta is DDIM's (must be 0 for the others). Copies what it needs from
 * ns. Drive it as the diffusers pipeline does: for k = 0 .. num_calls-1, run the UNet on
 * scale_model_input(x, k) at timestep(k), then step(k, model_output, x). Calls must come in order. */
lsd_status lsdi_scheduler_new(const lsdi_noise_schedule *ns, lsd_sampler kind, int steps, float eta,
                              lsdi_scheduler **out);
void lsdi_scheduler_free(lsdi_scheduler *s);

/* UNet calls: steps, or steps + 1 for PNDM with steps >= 2 (its second timestep is run twice). */
int lsdi_scheduler_num_calls(const lsdi_scheduler *s);
/* The timestep the UNet receives at call k: an integer, except Euler's fractional float32 values. */
double lsdi_scheduler_timestep(const lsdi_scheduler *s, int k);
/* Euler, Euler ancestral and DPM++: the num_calls + 1 sigmas (last 0); NULL for PNDM and DDIM. */
const float *lsdi_scheduler_sigmas(const lsdi_scheduler *s);
/* The start latents are N(0,1) noise times this. */
float lsdi_scheduler_init_noise_sigma(const lsdi_scheduler *s);
/* scale_model_input as a factor (1 except Euler: 1/sqrt(sigma_k^2 + 1)), and applied to a host buffer the way
 * diffusers does it (a division, so the result matches its bits). in == out is allowed. */
float lsdi_scheduler_input_scale(const lsdi_scheduler *s, int k);
void lsdi_scheduler_scale_model_input(const lsdi_scheduler *s, int k, const float *in, float *out, size_t n);
/* Whether diffusers draws an N(0,1) tensor shaped like the sample in call k (Euler always, though unused; Euler
 * ancestral always; DDIM when eta > 0). Drawing it too keeps a shared generator in step with diffusers. */
int lsdi_scheduler_needs_noise(const lsdi_scheduler *s, int k);
/* One call: sample (n floats) is replaced by the previous sample. noise may be NULL when it has no effect. The
 * first call fixes n; history (PNDM's past outputs, DPM++'s last x0) is kept inside. */
lsd_status lsdi_scheduler_step(lsdi_scheduler *s, int k, const float *model_output, float *sample, size_t n,
                               const float *noise);

/* ---- Shared by the scheduler implementation files only (lib/sample/{scheduler,pndm,ddim,euler,dpmpp}.c) ---- */

struct lsdi_scheduler {
    lsd_sampler kind;
    lsdi_prediction prediction;
    int steps;     /* inference steps asked for */
    int num_calls; /* UNet calls */
    int num_train_timesteps;
    double *timesteps;       /* [num_calls] */
    float *sigmas;           /* [num_calls + 1], NULL for PNDM/DDIM */
    float *alphas_cumprod;   /* copy of the table */
    float final_alpha_cumprod; /* "previous" alpha bar past t = 0 */
    float init_noise_sigma;
    float eta;
    int clip_sample;
    float clip_sample_range;
    int next_call;     /* calls must come in order */
    size_t n;          /* sample size, fixed by the first call */
    int history_slots; /* sample-sized buffers the kind keeps between calls */
    float *history;    /* history_slots * n */
    int history_used;  /* PNDM: past outputs held; DPM++: whether the previous x0 is held */
};

/* Each kind fills timesteps/sigmas/init_noise_sigma/history_slots (init) and advances one call (step). */
lsd_status lsdi_pndm_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns);
lsd_status lsdi_pndm_step(lsdi_scheduler *s, int k, const float *m, float *x);
lsd_status lsdi_ddim_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns);
lsd_status lsdi_ddim_step(lsdi_scheduler *s, int k, const float *m, float *x, const float *noise);
lsd_status lsdi_euler_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns);
lsd_status lsdi_euler_step(lsdi_scheduler *s, int k, const float *m, float *x, const float *noise);
lsd_status lsdi_dpmpp_init(lsdi_scheduler *s, const lsdi_noise_schedule *ns, int karras);
lsd_status lsdi_dpmpp_step(lsdi_scheduler *s, int k, const float *m, float *x);

/* diffusers' integer timestep spacings for n steps out of T, ascending (leading includes steps_offset). */
void lsdi_spacing_timesteps(lsdi_spacing spacing, int T, int n, int steps_offset, int64_t *ascending);

#endif
