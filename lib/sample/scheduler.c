#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "sample/scheduler.h"

static const char *const sampler_names[] = {"pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"};
#define NUM_SAMPLERS ((int)(sizeof sampler_names / sizeof sampler_names[0]))

const char *lsd_sampler_name(lsd_sampler s)
{
    return (int)s >= 0 && (int)s < NUM_SAMPLERS ? sampler_names[s] : NULL;
}

const char *lsdi_sampler_a1111_name(lsd_sampler s)
{
    static const char *const a1111[] = {"PLMS", "DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras"};
    return (int)s >= 0 && (int)s < NUM_SAMPLERS ? a1111[s] : NULL;
}

/* Other spellings users bring from A1111, k-diffusion and diffusers, after normalisation (lower case, "++" as
 * "pp", spaces and hyphens as '_', a "k_" prefix dropped). */
static const struct {
    const char *name;
    lsd_sampler sampler;
} aliases[] = {
    {"plms", LSD_SAMPLER_PNDM},
    {"pndmscheduler", LSD_SAMPLER_PNDM},
    {"ddimscheduler", LSD_SAMPLER_DDIM},
    {"eulerdiscretescheduler", LSD_SAMPLER_EULER},
    {"euler_ancestral", LSD_SAMPLER_EULER_A},
    {"eulerancestraldiscretescheduler", LSD_SAMPLER_EULER_A},
    {"dpmsolvermultistepscheduler", LSD_SAMPLER_DPMPP_2M},
};

lsd_status lsd_sampler_from_name(const char *name, lsd_sampler *out)
{
    if (!name || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_sampler_from_name: %s is NULL", name ? "out" : "name");
    char norm[64];
    size_t len = 0;
    for (const char *p = name; *p; p++) {
        const char *add;
        char one[2] = {(char)tolower((unsigned char)*p), 0};
        if (one[0] == '+' && p[1] == '+') {
            add = "pp";
            p++;
        } else {
            if (one[0] == ' ' || one[0] == '-')
                one[0] = '_';
            if (one[0] == '_' && (len == 0 || norm[len - 1] == '_'))
                continue;
            add = one;
        }
        size_t alen = strlen(add);
        if (len + alen >= sizeof norm)
            goto unknown;
        memcpy(norm + len, add, alen);
        len += alen;
    }
    while (len && norm[len - 1] == '_')
        len--;
    norm[len] = 0;
    const char *key = strncmp(norm, "k_", 2) ? norm : norm + 2;
    for (int i = 0; i < NUM_SAMPLERS; i++)
        if (!strcmp(key, sampler_names[i])) {
            *out = (lsd_sampler)i;
            return LSD_OK;
        }
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(key, aliases[i].name)) {
            *out = aliases[i].sampler;
            return LSD_OK;
        }
unknown:
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                      "unknown sampler '%.64s' (expected pndm, ddim, euler, euler_a, dpmpp_2m or dpmpp_2m_karras)",
                      name);
}

lsd_status lsdi_scheduler_new(const lsdi_noise_schedule *ns, lsd_sampler kind, int steps, float eta,
                              lsdi_scheduler **out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler: out is NULL");
    *out = NULL;
    if (!ns || !ns->alphas_cumprod || ns->num_train_timesteps < 2)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler: no noise schedule");
    if (!lsd_sampler_name(kind))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler: sampler %d is not a valid lsd_sampler", (int)kind);
    int T = ns->num_train_timesteps;
    if (steps <= 0 || steps > T)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler: steps = %d, expected 1 to %d", steps, T);
    if (!(eta >= 0.0f && eta <= 1e3f))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler: eta = %g, expected >= 0", (double)eta);
    if (eta > 0.0f && kind != LSD_SAMPLER_DDIM)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler: eta = %g is only meaningful for ddim, not %s",
                          (double)eta, lsd_sampler_name(kind));

    lsdi_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "scheduler: out of memory");
    s->kind = kind;
    s->prediction = ns->prediction;
    s->steps = steps;
    s->num_train_timesteps = T;
    s->eta = eta;
    s->init_noise_sigma = 1.0f;
    /* PNDM makes steps + 1 calls; every kind fits in steps + 1 timesteps and steps + 2 sigmas. */
    s->timesteps = calloc((size_t)steps + 1, sizeof(double));
    s->alphas_cumprod = malloc(sizeof(float) * (size_t)T);
    if (!s->timesteps || !s->alphas_cumprod) {
        lsdi_scheduler_free(s);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "scheduler: out of memory");
    }
    memcpy(s->alphas_cumprod, ns->alphas_cumprod, sizeof(float) * (size_t)T);

    lsd_status st = LSD_OK;
    switch (kind) {
    case LSD_SAMPLER_PNDM: st = lsdi_pndm_init(s, ns); break;
    case LSD_SAMPLER_DDIM: st = lsdi_ddim_init(s, ns); break;
    case LSD_SAMPLER_EULER:
    case LSD_SAMPLER_EULER_A: st = lsdi_euler_init(s, ns); break;
    case LSD_SAMPLER_DPMPP_2M:
    case LSD_SAMPLER_DPMPP_2M_KARRAS: st = lsdi_dpmpp_init(s, ns, kind == LSD_SAMPLER_DPMPP_2M_KARRAS); break;
    }
    for (int k = 0; st == LSD_OK && k < s->num_calls; k++)
        if (!(s->timesteps[k] >= 0.0 && s->timesteps[k] <= T - 1))
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                            "scheduler: %s with steps = %d and steps_offset %d gives timestep %g outside [0, %d]",
                            lsd_sampler_name(kind), steps, ns->steps_offset, s->timesteps[k], T - 1);
    if (st != LSD_OK) {
        lsdi_scheduler_free(s);
        return st;
    }
    *out = s;
    return LSD_OK;
}

void lsdi_scheduler_free(lsdi_scheduler *s)
{
    if (!s)
        return;
    free(s->timesteps);
    free(s->sigmas);
    free(s->alphas_cumprod);
    free(s->history);
    free(s);
}

int lsdi_scheduler_num_calls(const lsdi_scheduler *s) { return s->num_calls; }

double lsdi_scheduler_timestep(const lsdi_scheduler *s, int k)
{
    return k >= 0 && k < s->num_calls ? s->timesteps[k] : 0.0;
}

const float *lsdi_scheduler_sigmas(const lsdi_scheduler *s) { return s->sigmas; }

float lsdi_scheduler_init_noise_sigma(const lsdi_scheduler *s) { return s->init_noise_sigma; }

static int scales_input(const lsdi_scheduler *s, int k)
{
    return (s->kind == LSD_SAMPLER_EULER || s->kind == LSD_SAMPLER_EULER_A) && k >= 0 && k < s->num_calls;
}

/* diffusers: sample / ((sigma**2 + 1) ** 0.5), a float32 scalar */
static float input_divisor(const lsdi_scheduler *s, int k)
{
    float sigma = s->sigmas[k];
    return sqrtf(sigma * sigma + 1.0f);
}

float lsdi_scheduler_input_scale(const lsdi_scheduler *s, int k)
{
    return scales_input(s, k) ? (float)(1.0 / input_divisor(s, k)) : 1.0f;
}

void lsdi_scheduler_scale_model_input(const lsdi_scheduler *s, int k, const float *in, float *out, size_t n)
{
    if (!scales_input(s, k)) {
        if (in != out)
            memmove(out, in, n * sizeof(float));
        return;
    }
    float d = input_divisor(s, k);
    for (size_t i = 0; i < n; i++)
        out[i] = in[i] / d;
}

int lsdi_scheduler_needs_noise(const lsdi_scheduler *s, int k)
{
    if (k < 0 || k >= s->num_calls)
        return 0;
    switch (s->kind) {
    case LSD_SAMPLER_EULER:
    case LSD_SAMPLER_EULER_A: return 1;
    case LSD_SAMPLER_DDIM: return s->eta > 0.0f;
    default: return 0;
    }
}

lsd_status lsdi_scheduler_step(lsdi_scheduler *s, int k, const float *model_output, float *sample, size_t n,
                               const float *noise)
{
    if (!s || !model_output || !sample)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler step: NULL argument");
    if (k != s->next_call)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler step: call %d out of order (expected call %d of %d)",
                          k, s->next_call, s->num_calls);
    if (k >= s->num_calls)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler step: all %d calls are done", s->num_calls);
    if (n == 0)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler step: empty sample");
    if (k == 0) {
        if (s->history_slots && n > SIZE_MAX / sizeof(float) / (size_t)s->history_slots)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "scheduler step: sample of %zu floats is too large", n);
        free(s->history);
        s->history = NULL;
        if (s->history_slots && !(s->history = malloc(n * sizeof(float) * (size_t)s->history_slots)))
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "scheduler step: out of memory for %d x %zu floats of history",
                              s->history_slots, n);
        s->n = n;
        s->history_used = 0;
    } else if (n != s->n) {
        return lsdi_error(LSD_ERR_SHAPE_MISMATCH, "scheduler step: call %d has %zu floats, call 0 had %zu", k, n,
                          s->n);
    }
    lsd_status st = LSD_OK;
    switch (s->kind) {
    case LSD_SAMPLER_PNDM: st = lsdi_pndm_step(s, k, model_output, sample); break;
    case LSD_SAMPLER_DDIM: st = lsdi_ddim_step(s, k, model_output, sample, noise); break;
    case LSD_SAMPLER_EULER:
    case LSD_SAMPLER_EULER_A: st = lsdi_euler_step(s, k, model_output, sample, noise); break;
    case LSD_SAMPLER_DPMPP_2M:
    case LSD_SAMPLER_DPMPP_2M_KARRAS: st = lsdi_dpmpp_step(s, k, model_output, sample); break;
    }
    if (st == LSD_OK)
        s->next_call++;
    return st;
}
