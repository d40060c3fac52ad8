#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/error.h"
#include "io/json.h"
#include "sample/scheduler.h"

/* Bounds a hostile config cannot get past (the real value is 1000). */
#define MAX_TRAIN_TIMESTEPS 100000

/* torch.linspace(a, b, count, dtype=float32) on CPU: float step, the first half counted up from a and the second
 * half down from b, so both ends are exact. */
static void linspace_f32(float a, float b, int count, float *out)
{
    float step = count > 1 ? (b - a) / (float)(count - 1) : 0.0f;
    int half = count / 2;
    for (int i = 0; i < count; i++)
        out[i] = i < half ? a + step * (float)i : b - step * (float)(count - 1 - i);
}

/* alphas_cumprod as torch's CPU cumprod gives it (accumulated in double), then the float32 sigma table. */
static void derive_tables(lsdi_noise_schedule *ns)
{
    double prod = 1.0;
    for (int t = 0; t < ns->num_train_timesteps; t++) {
        prod *= (double)(1.0f - ns->betas[t]);
        ns->alphas_cumprod[t] = (float)prod;
    }
    for (int t = 0; t < ns->num_train_timesteps; t++) {
        float ac = ns->alphas_cumprod[t];
        ns->sigma_table[t] = sqrtf((1.0f - ac) / ac);
    }
}

static lsd_status alloc_tables(lsdi_noise_schedule *ns, int T)
{
    ns->num_train_timesteps = T;
    ns->betas = malloc(sizeof(float) * (size_t)T);
    ns->alphas_cumprod = malloc(sizeof(float) * (size_t)T);
    ns->sigma_table = malloc(sizeof(float) * (size_t)T);
    if (!ns->betas || !ns->alphas_cumprod || !ns->sigma_table) {
        lsdi_noise_schedule_release(ns);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "noise schedule: out of memory for %d timesteps", T);
    }
    return LSD_OK;
}

static void clear_settings(lsdi_noise_schedule *ns)
{
    memset(ns, 0, sizeof *ns);
    ns->prediction = LSDI_PRED_EPSILON;
    ns->spacing = LSDI_SPACING_CLASS_DEFAULT;
    ns->set_alpha_to_one = -1;
    ns->clip_sample = -1;
    ns->clip_sample_range = 1.0f;
}

lsd_status lsdi_noise_schedule_default(lsdi_noise_schedule *ns)
{
    if (!ns)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "noise schedule: ns is NULL");
    clear_settings(ns);
    LSDI_TRY(alloc_tables(ns, 1000));
    linspace_f32((float)sqrt(0.00085), (float)sqrt(0.012), 1000, ns->betas);
    for (int t = 0; t < 1000; t++)
        ns->betas[t] *= ns->betas[t];
    derive_tables(ns);
    ns->steps_offset = 1;
    ns->set_alpha_to_one = 0;
    ns->clip_sample = 0;
    return LSD_OK;
}

void lsdi_noise_schedule_release(lsdi_noise_schedule *ns)
{
    if (!ns)
        return;
    free(ns->betas);
    free(ns->alphas_cumprod);
    free(ns->sigma_table);
    ns->betas = ns->alphas_cumprod = ns->sigma_table = NULL;
    ns->num_train_timesteps = 0;
}

lsd_status lsdi_noise_schedule_set_alphas_cumprod(lsdi_noise_schedule *ns, const float *ac, int count)
{
    if (!ns || !ac)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "set_alphas_cumprod: NULL argument");
    if (count != ns->num_train_timesteps)
        return lsdi_error(LSD_ERR_SHAPE_MISMATCH, "set_alphas_cumprod: %d values for a table of %d timesteps",
                          count, ns->num_train_timesteps);
    float prev = 1.0f;
    for (int t = 0; t < count; t++) {
        if (!(ac[t] > 0.0f && ac[t] < 1.0f) || ac[t] > prev)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                              "set_alphas_cumprod: alphas_cumprod[%d] = %g is not in (0, 1) and non-increasing", t,
                              (double)ac[t]);
        prev = ac[t];
    }
    for (int t = 0; t < count; t++) {
        ns->alphas_cumprod[t] = ac[t];
        ns->betas[t] = 1.0f - ac[t] / (t ? ac[t - 1] : 1.0f);
        ns->sigma_table[t] = sqrtf((1.0f - ac[t]) / ac[t]);
    }
    return LSD_OK;
}

/* ---- scheduler_config.json ---- */

/* JSON null counts as absent, as diffusers treats None as "use the default". */
static const cJSON *get_key(const cJSON *root, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static lsd_status get_number(const char *path, const cJSON *root, const char *key, double lo, double hi,
                             double *out)
{
    const cJSON *v = get_key(root, key);
    if (!v)
        return LSD_OK;
    if (!cJSON_IsNumber(v))
        return lsdi_error(LSD_ERR_FORMAT, "%s: key '%s' must be a number", path, key);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return lsdi_error(LSD_ERR_FORMAT, "%s: key '%s' = %g is outside [%g, %g]", path, key, v->valuedouble, lo,
                          hi);
    *out = v->valuedouble;
    return LSD_OK;
}

static lsd_status get_int(const char *path, const cJSON *root, const char *key, int lo, int hi, int *out)
{
    double d = *out;
    LSDI_TRY(get_number(path, root, key, lo, hi, &d));
    if (d != floor(d))
        return lsdi_error(LSD_ERR_FORMAT, "%s: key '%s' = %g must be an integer", path, key, d);
    *out = (int)d;
    return LSD_OK;
}

/* Leaves *out as is (-1, absent) when the key is missing. */
static lsd_status get_bool(const char *path, const cJSON *root, const char *key, int *out)
{
    const cJSON *v = get_key(root, key);
    if (!v)
        return LSD_OK;
    if (!cJSON_IsBool(v))
        return lsdi_error(LSD_ERR_FORMAT, "%s: key '%s' must be true or false", path, key);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return LSD_OK;
}

static lsd_status get_string(const char *path, const cJSON *root, const char *key, const char **out)
{
    const cJSON *v = get_key(root, key);
    if (!v)
        return LSD_OK;
    if (!cJSON_IsString(v))
        return lsdi_error(LSD_ERR_FORMAT, "%s: key '%s' must be a string", path, key);
    *out = v->valuestring;
    return LSD_OK;
}

/* Keys whose non-default values change the numbers in ways not implemented here: refuse rather than be wrong. */
static lsd_status reject_true(const char *path, const cJSON *root, const char *key)
{
    int v = -1;
    LSDI_TRY(get_bool(path, root, key, &v));
    if (v == 1)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: key '%s' = true is not supported", path, key);
    return LSD_OK;
}

static lsd_status parse_settings(const char *path, const cJSON *root, lsdi_noise_schedule *ns)
{
    const char *s = NULL;
    LSDI_TRY(get_string(path, root, "prediction_type", &s));
    if (s && !strcmp(s, "v_prediction"))
        ns->prediction = LSDI_PRED_V;
    else if (s && !strcmp(s, "sample"))
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: prediction_type 'sample' is not supported", path);
    else if (s && strcmp(s, "epsilon"))
        return lsdi_error(LSD_ERR_FORMAT, "%s: unknown prediction_type '%s' (expected epsilon or v_prediction)",
                          path, s);
    s = NULL;
    LSDI_TRY(get_string(path, root, "timestep_spacing", &s));
    if (s) {
        if (!strcmp(s, "leading"))
            ns->spacing = LSDI_SPACING_LEADING;
        else if (!strcmp(s, "linspace"))
            ns->spacing = LSDI_SPACING_LINSPACE;
        else if (!strcmp(s, "trailing"))
            ns->spacing = LSDI_SPACING_TRAILING;
        else
            return lsdi_error(LSD_ERR_FORMAT,
                              "%s: unknown timestep_spacing '%s' (expected leading, linspace or trailing)", path, s);
    }
    LSDI_TRY(get_int(path, root, "steps_offset", 0, ns->num_train_timesteps - 1, &ns->steps_offset));
    LSDI_TRY(get_bool(path, root, "set_alpha_to_one", &ns->set_alpha_to_one));
    LSDI_TRY(get_bool(path, root, "clip_sample", &ns->clip_sample));
    double range = ns->clip_sample_range;
    LSDI_TRY(get_number(path, root, "clip_sample_range", 1e-6, 1e6, &range));
    ns->clip_sample_range = (float)range;
    LSDI_TRY(reject_true(path, root, "thresholding"));
    LSDI_TRY(reject_true(path, root, "rescale_betas_zero_snr"));
    return LSD_OK;
}

static lsd_status parse_betas(const char *path, const cJSON *root, lsdi_noise_schedule *ns)
{
    int T = ns->num_train_timesteps;
    const cJSON *trained = get_key(root, "trained_betas");
    if (trained) {
        if (!cJSON_IsArray(trained) || cJSON_GetArraySize(trained) != T)
            return lsdi_error(LSD_ERR_FORMAT, "%s: key 'trained_betas' must be an array of %d numbers", path, T);
        int t = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, trained)
        {
            if (!cJSON_IsNumber(v) || !(v->valuedouble > 0.0 && v->valuedouble < 1.0))
                return lsdi_error(LSD_ERR_FORMAT, "%s: trained_betas[%d] is not a number in (0, 1)", path, t);
            ns->betas[t++] = (float)v->valuedouble;
        }
        return LSD_OK;
    }
    double start = 0.0001, end = 0.02; /* diffusers' class defaults */
    LSDI_TRY(get_number(path, root, "beta_start", 1e-12, 0.999, &start));
    LSDI_TRY(get_number(path, root, "beta_end", 1e-12, 0.999, &end));
    const char *kind = "linear";
    LSDI_TRY(get_string(path, root, "beta_schedule", &kind));
    if (!strcmp(kind, "linear")) {
        linspace_f32((float)start, (float)end, T, ns->betas);
    } else if (!strcmp(kind, "scaled_linear")) {
        linspace_f32((float)sqrt(start), (float)sqrt(end), T, ns->betas);
        for (int t = 0; t < T; t++)
            ns->betas[t] *= ns->betas[t];
    } else if (!strcmp(kind, "squaredcos_cap_v2")) {
        /* betas_for_alpha_bar with the cosine alpha bar, in double as Python computes it, capped at 0.999. */
        for (int t = 0; t < T; t++) {
            double a1 = cos(((double)t / T + 0.008) / 1.008 * M_PI / 2);
            double a2 = cos(((double)(t + 1) / T + 0.008) / 1.008 * M_PI / 2);
            ns->betas[t] = (float)fmin(1.0 - (a2 * a2) / (a1 * a1), 0.999);
        }
    } else {
        return lsdi_error(LSD_ERR_UNSUPPORTED,
                          "%s: beta_schedule '%s' is not supported (expected scaled_linear, linear or "
                          "squaredcos_cap_v2)",
                          path, kind);
    }
    for (int t = 0; t < T; t++)
        if (!(ns->betas[t] > 0.0f && ns->betas[t] < 1.0f))
            return lsdi_error(LSD_ERR_FORMAT, "%s: beta_start/beta_end give beta[%d] = %g outside (0, 1)", path, t,
                              (double)ns->betas[t]);
    return LSD_OK;
}

lsd_status lsdi_noise_schedule_load(const char *path, lsdi_noise_schedule *ns)
{
    if (!path)
        return lsdi_noise_schedule_default(ns);
    if (!ns)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "noise schedule: ns is NULL");
    clear_settings(ns);
    cJSON *root;
    LSDI_TRY(lsdi_json_load(path, &root));
    int T = 1000;
    lsd_status st = get_int(path, root, "num_train_timesteps", 2, MAX_TRAIN_TIMESTEPS, &T);
    if (st == LSD_OK)
        st = alloc_tables(ns, T);
    if (st == LSD_OK)
        st = parse_settings(path, root, ns);
    if (st == LSD_OK)
        st = parse_betas(path, root, ns);
    cJSON_Delete(root);
    if (st != LSD_OK) {
        lsdi_noise_schedule_release(ns);
        return st;
    }
    derive_tables(ns);
    return LSD_OK;
}

void lsdi_spacing_timesteps(lsdi_spacing spacing, int T, int n, int steps_offset, int64_t *ascending)
{
    switch (spacing) {
    case LSDI_SPACING_LINSPACE: {
        /* np.linspace(0, T-1, n).round(): i * step, the last point exactly T-1, rounded half to even */
        double step = n > 1 ? (double)(T - 1) / (n - 1) : 0.0;
        for (int i = 0; i < n; i++)
            ascending[i] = (int64_t)nearbyint(i == n - 1 && n > 1 ? (double)(T - 1) : i * step);
        break;
    }
    case LSDI_SPACING_TRAILING: {
        /* np.round(np.arange(T, 0, -T/n)) - 1, which counts down */
        double step = (double)T / n;
        for (int i = 0; i < n; i++)
            ascending[n - 1 - i] = (int64_t)nearbyint(T - i * step) - 1;
        break;
    }
    default: /* leading */
        for (int i = 0; i < n; i++)
            ascending[i] = (int64_t)i * (T / n) + steps_offset;
        break;
    }
}
