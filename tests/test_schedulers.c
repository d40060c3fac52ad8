/* Schedulers against diffusers 0.27.2 (tests/data/sd-tiny/ref/schedulers.*, pipeline.*). */
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "sample/scheduler.h"
#include "test.h"

#define SCHED_ST "sd-tiny/ref/schedulers.safetensors"
#define SCHED_JSON "sd-tiny/ref/schedulers.json"
#define PIPE_ST "sd-tiny/ref/pipeline.safetensors"
#define PIPE_JSON "sd-tiny/ref/pipeline.json"

static cJSON *load_json(const char *rel)
{
    char *text = read_file(data_path(rel), NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(j != NULL, "%s does not parse", rel);
    return j;
}

/* max|c - ref| / max|ref| */
static double rel_err(const float *c, const float *ref, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)ref[i]));
    return max_abs_diff(c, ref, n) / (m > 0 ? m : 1);
}

/* |c - ref| <= atol + rtol |ref| per element */
static int check_elems(const char *what, const float *c, const float *ref, size_t n, double atol, double rtol)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)c[i] - ref[i]);
        if (!(d <= atol + rtol * fabs((double)ref[i]))) {
            test_fail(__FILE__, __LINE__, "%s: element %zu: %.9g vs %.9g (diff %.3g)", what, i, (double)c[i],
                      (double)ref[i], d);
            return 0;
        }
    }
    return 1;
}

static lsdi_scheduler *make(const lsdi_noise_schedule *ns, const char *name, int steps, float eta)
{
    lsd_sampler kind;
    lsdi_scheduler *s = NULL;
    if (!CHECK_OK(lsd_sampler_from_name(name, &kind)) || !CHECK_OK(lsdi_scheduler_new(ns, kind, steps, eta, &s)))
        return NULL;
    return s;
}

TEST(sched_noise_table)
{
    lsdi_noise_schedule def, file;
    CHECK_OK(lsdi_noise_schedule_default(&def));
    CHECK_OK(lsdi_noise_schedule_load(data_path("sd-tiny/scheduler/scheduler_config.json"), &file));
    size_t nb, na;
    float *betas = load_f32(data_path(SCHED_ST), "betas", NULL, NULL, &nb);
    float *ac = load_f32(data_path(SCHED_ST), "alphas_cumprod", NULL, NULL, &na);
    if (betas && ac && nb == 1000 && na == 1000 && def.num_train_timesteps == 1000 &&
        file.num_train_timesteps == 1000) {
        CHECK(rel_err(def.betas, betas, 1000) <= 1e-6, "betas rel %g", rel_err(def.betas, betas, 1000));
        CHECK(rel_err(def.alphas_cumprod, ac, 1000) <= 1e-6, "ac rel %g", rel_err(def.alphas_cumprod, ac, 1000));
        CHECK(rel_err(file.betas, betas, 1000) <= 1e-6);
        CHECK(rel_err(file.alphas_cumprod, ac, 1000) <= 1e-6);
        CHECK(fabs(def.sigma_table[0] - 0.0291675) < 1e-7 && fabs(def.sigma_table[999] - 14.614645) < 1e-5,
              "%.8g %.8g", (double)def.sigma_table[0], (double)def.sigma_table[999]);
        CHECK(file.steps_offset == 1 && file.set_alpha_to_one == 0 && file.clip_sample == 0 &&
              file.prediction == LSDI_PRED_EPSILON && file.spacing == LSDI_SPACING_CLASS_DEFAULT);
    } else {
        CHECK(0, "tables missing or of the wrong size");
    }
    free(betas);
    free(ac);
    lsdi_noise_schedule_release(&def);
    lsdi_noise_schedule_release(&file);
}

TEST(sched_timesteps_sigmas)
{
    cJSON *j = load_json(SCHED_JSON);
    lsdi_noise_schedule ns;
    CHECK_OK(lsdi_noise_schedule_default(&ns));
    const cJSON *scheds = cJSON_GetObjectItem(j, "schedulers"), *sc;
    int seen = 0;
    cJSON_ArrayForEach(sc, scheds)
    {
        const char *name = sc->string;
        int is_euler = !strncmp(name, "euler", 5);
        int has_sigmas = is_euler || !strncmp(name, "dpmpp", 5);
        static const int counts[] = {1, 10, 25};
        for (int c = 0; c < 3; c++) {
            int n = counts[c];
            char key[96], num[8];
            snprintf(num, sizeof num, "%d", n);
            const cJSON *sj = cJSON_GetObjectItem(cJSON_GetObjectItem(sc, "schedules"), num);
            lsdi_scheduler *s = make(&ns, name, n, 0.0f);
            if (!s || !sj) {
                CHECK(0, "%s s%d", name, n);
                continue;
            }
            seen++;
            size_t N;
            snprintf(key, sizeof key, "sched.%s.s%d.timesteps", name, n);
            if (is_euler) {
                float *ts = load_f32(data_path(SCHED_ST), key, NULL, NULL, &N);
                CHECK(ts && (int)N == lsdi_scheduler_num_calls(s), "%s: %zu timesteps", key, N);
                for (size_t k = 0; ts && k < N && (int)k < lsdi_scheduler_num_calls(s); k++)
                    CHECK((float)lsdi_scheduler_timestep(s, (int)k) == ts[k], "%s[%zu] %.9g vs %.9g", key, k,
                          lsdi_scheduler_timestep(s, (int)k), (double)ts[k]);
                free(ts);
            } else {
                int64_t *ts = load_i64(data_path(SCHED_ST), key, &N);
                CHECK(ts && (int)N == lsdi_scheduler_num_calls(s), "%s: %zu timesteps", key, N);
                for (size_t k = 0; ts && k < N && (int)k < lsdi_scheduler_num_calls(s); k++)
                    CHECK(lsdi_scheduler_timestep(s, (int)k) == (double)ts[k], "%s[%zu] %g vs %lld", key, k,
                          lsdi_scheduler_timestep(s, (int)k), (long long)ts[k]);
                free(ts);
            }
            CHECK(cJSON_GetObjectItem(sj, "num_timesteps")->valueint == lsdi_scheduler_num_calls(s), "%s s%d", name,
                  n);
            double ins = cJSON_GetObjectItem(sj, "init_noise_sigma")->valuedouble;
            CHECK(fabs(lsdi_scheduler_init_noise_sigma(s) - ins) <= 1e-6 * ins, "%s s%d init_noise_sigma %.9g vs %.9g",
                  name, n, (double)lsdi_scheduler_init_noise_sigma(s), ins);
            if (has_sigmas) {
                snprintf(key, sizeof key, "sched.%s.s%d.sigmas", name, n);
                float *sig = load_f32(data_path(SCHED_ST), key, NULL, NULL, &N);
                CHECK(sig && (int)N == n + 1 && lsdi_scheduler_sigmas(s), "%s", key);
                if (sig && (int)N == n + 1 && lsdi_scheduler_sigmas(s))
                    CHECK(rel_err(lsdi_scheduler_sigmas(s), sig, N) <= 1e-6, "%s rel %g", key,
                          rel_err(lsdi_scheduler_sigmas(s), sig, N));
                free(sig);
            } else {
                CHECK(lsdi_scheduler_sigmas(s) == NULL, "%s has no sigmas", name);
            }
            lsdi_scheduler_free(s);
        }
    }
    CHECK(seen == 18, "%d schedules checked", seen);
    lsdi_noise_schedule_release(&ns);
    cJSON_Delete(j);
}

enum run_mode {
    PER_CALL,       /* stored alphas_cumprod, each call fed the stored latents[k] (so the stored history): 1e-5 abs */
    CHAINED_STORED, /* stored alphas_cumprod, the whole chain from the start noise: 1e-5 abs */
    CHAINED_RECIPE  /* the float32-recipe tables, whole chain: 1e-5 + 1e-6 |ref| (see below for euler_a) */
};

static void check_run(const char *r, const cJSON *rj, enum run_mode mode)
{
    static const char *const mode_names[] = {" per call", " chained on stored tables", " chained"};
    int per_call = mode == PER_CALL;
    const char *sched = cJSON_GetObjectItem(rj, "scheduler")->valuestring;
    int steps = cJSON_GetObjectItem(rj, "steps")->valueint;
    int calls = cJSON_GetObjectItem(rj, "num_calls")->valueint;
    const cJSON *eta_j = cJSON_GetObjectItem(cJSON_GetObjectItem(rj, "step_kwargs"), "eta");
    float eta = eta_j ? (float)eta_j->valuedouble : 0.0f;
    int noise_rec = cJSON_IsTrue(cJSON_GetObjectItem(rj, "noise_recorded"));
    lsdi_noise_schedule ns;
    CHECK_OK(lsdi_noise_schedule_default(&ns));
    if (!strcmp(cJSON_GetObjectItem(rj, "prediction_type")->valuestring, "v_prediction"))
        ns.prediction = LSDI_PRED_V;
    if (mode != CHAINED_RECIPE) {
        float *ac = load_f32(data_path(SCHED_ST), "alphas_cumprod", NULL, NULL, NULL);
        if (ac)
            CHECK_OK(lsdi_noise_schedule_set_alphas_cumprod(&ns, ac, 1000));
        free(ac);
    }
    lsdi_scheduler *s = make(&ns, sched, steps, eta);
    char key[96];
#define LOAD(field, cnt)                                                                                   \
    (snprintf(key, sizeof key, "run.%s." field, r), load_f32(data_path(SCHED_ST), key, NULL, NULL, cnt))
    size_t nl, nm, ns_, nsc, nt, nn = 0;
    float *lat = LOAD("latents", &nl), *mo = LOAD("model_output", &nm), *sc = LOAD("scaled", &nsc);
    float *start = LOAD("start_noise", &ns_), *ts = LOAD("timesteps", &nt);
    float *noise = noise_rec ? LOAD("noise", &nn) : NULL;
#undef LOAD
    const size_t E = 4 * 16 * 16;
    if (!s || !lat || !mo || !sc || !start || !ts || (noise_rec && !noise) || nl != (size_t)(calls + 1) * E ||
        nm != (size_t)calls * E || nsc != nm || ns_ != E || nt != (size_t)calls || (noise_rec && nn != nm) ||
        lsdi_scheduler_num_calls(s) != calls) {
        CHECK(0, "run %s: missing data or wrong sizes", r);
        goto done;
    }
    CHECK(fabs(lsdi_scheduler_init_noise_sigma(s) - cJSON_GetObjectItem(rj, "init_noise_sigma")->valuedouble) <=
              1e-6 * cJSON_GetObjectItem(rj, "init_noise_sigma")->valuedouble,
          "run %s init_noise_sigma", r);
    float x[4 * 16 * 16], in[4 * 16 * 16], x0[4 * 16 * 16];
    for (size_t i = 0; i < E; i++)
        x0[i] = start[i] * lsdi_scheduler_init_noise_sigma(s);
    char what[128];
    snprintf(what, sizeof what, "run %s latents[0]", r);
    check_elems(what, x0, lat, E, 1e-5, 1e-6);
    memcpy(x, lat, sizeof x);
    /* Euler ancestral adds noise * sigma_up each call: the recipe's sigma_max is 1 ulp (1.9e-6) off the stored one
     * and sigma_1..5 by 1 ulp each, which moves its latents by up to 1.6e-5 at |ref| < 4 (2e-5 bound). */
    double atol = mode == CHAINED_RECIPE && !strcmp(sched, "euler_a") ? 2e-5 : 1e-5;
    double rtol = mode == CHAINED_RECIPE ? 1e-6 : 0.0;
    for (int k = 0; k < calls; k++) {
        CHECK((float)lsdi_scheduler_timestep(s, k) == ts[k], "run %s timestep %d", r, k);
        if (per_call)
            memcpy(x, lat + (size_t)k * E, sizeof x);
        lsdi_scheduler_scale_model_input(s, k, x, in, E);
        snprintf(what, sizeof what, "run %s scaled[%d]%s", r, k, mode_names[mode]);
        check_elems(what, in, sc + (size_t)k * E, E, atol, rtol);
        CHECK(lsdi_scheduler_needs_noise(s, k) == (noise_rec || !strncmp(sched, "euler", 5)), "run %s needs_noise",
              r);
        if (!CHECK_OK(lsdi_scheduler_step(s, k, mo + (size_t)k * E, x, E, noise ? noise + (size_t)k * E : NULL)))
            break;
        snprintf(what, sizeof what, "run %s latents[%d]%s", r, k + 1, mode_names[mode]);
        if (!check_elems(what, x, lat + (size_t)(k + 1) * E, E, atol, rtol))
            break;
    }
done:
    free(lat);
    free(mo);
    free(sc);
    free(start);
    free(ts);
    free(noise);
    lsdi_scheduler_free(s);
    lsdi_noise_schedule_release(&ns);
}

TEST(sched_runs)
{
    cJSON *j = load_json(SCHED_JSON);
    const cJSON *rj;
    int seen = 0;
    cJSON_ArrayForEach(rj, cJSON_GetObjectItem(j, "runs"))
    {
        check_run(rj->string, rj, PER_CALL);
        check_run(rj->string, rj, CHAINED_STORED);
        check_run(rj->string, rj, CHAINED_RECIPE);
        seen++;
    }
    CHECK(seen == 13, "%d runs", seen);
    cJSON_Delete(j);
}

TEST(sched_ddpm)
{
    lsdi_noise_schedule ns;
    CHECK_OK(lsdi_noise_schedule_default(&ns));
    size_t n, nt, nr;
    float *x = load_f32(data_path(SCHED_ST), "ddpm.sample", NULL, NULL, &n);
    float *noise = load_f32(data_path(SCHED_ST), "ddpm.noise", NULL, NULL, NULL);
    float *ref_add = load_f32(data_path(SCHED_ST), "ddpm.add_noise", NULL, NULL, &nr);
    float *ref_vel = load_f32(data_path(SCHED_ST), "ddpm.velocity", NULL, NULL, NULL);
    int64_t *ts = load_i64(data_path(SCHED_ST), "ddpm.timesteps", &nt);
    if (x && noise && ref_add && ref_vel && ts && nt == 4 && n == 4 * 1024 && nr == n) {
        float out[4 * 1024];
        CHECK_OK(lsdi_ddpm_add_noise(&ns, x, noise, ts, 4, 1024, out));
        CHECK_CLOSE(out, ref_add, n, 1e-5);
        CHECK_OK(lsdi_ddpm_velocity(&ns, x, noise, ts, 4, 1024, out));
        CHECK_CLOSE(out, ref_vel, n, 1e-5);
        CHECK_OK(lsdi_ddpm_target(&ns, x, noise, ts, 4, 1024, out));
        CHECK_CLOSE(out, noise, n, 0.0);
        ns.prediction = LSDI_PRED_V;
        CHECK_OK(lsdi_ddpm_target(&ns, x, noise, ts, 4, 1024, out));
        CHECK_CLOSE(out, ref_vel, n, 1e-5);
        int64_t bad[4] = {0, 1, 1000, 2};
        CHECK_STATUS(lsdi_ddpm_add_noise(&ns, x, noise, bad, 4, 1024, out), LSD_ERR_INVALID_ARGUMENT,
                     "timestep 1000");
        float snr;
        CHECK_OK(lsdi_ddpm_snr(&ns, 999, &snr));
        double ac = ns.alphas_cumprod[999];
        CHECK(fabs(snr - ac / (1 - ac)) <= 1e-5 * snr, "snr %g", (double)snr);
    } else {
        CHECK(0, "ddpm data missing");
    }
    free(x);
    free(noise);
    free(ref_add);
    free(ref_vel);
    free(ts);
    lsdi_noise_schedule_release(&ns);
}

/* Replays each pipeline case's guided noise predictions through the scheduler (no UNet). */
TEST(sched_pipeline_replay)
{
    cJSON *j = load_json(PIPE_JSON);
    lsdi_noise_schedule ns;
    CHECK_OK(lsdi_noise_schedule_default(&ns));
    const cJSON *cj;
    int seen = 0;
    cJSON_ArrayForEach(cj, cJSON_GetObjectItem(j, "cases"))
    {
        const char *c = cj->string;
        int steps = cJSON_GetObjectItem(cj, "num_inference_steps")->valueint;
        int calls = cJSON_GetObjectItem(cj, "num_unet_calls")->valueint;
        int batch = cJSON_GetObjectItem(cj, "batch")->valueint;
        lsdi_scheduler *s = make(&ns, cJSON_GetObjectItem(cj, "scheduler")->valuestring, steps, 0.0f);
        char k1[96], k2[96], k3[96];
        snprintf(k1, sizeof k1, "%s.init_latents", c);
        snprintf(k2, sizeof k2, "%s.noise_pred", c);
        snprintf(k3, sizeof k3, "%s.latents", c);
        size_t ni, np, nl;
        float *init = load_f32(data_path(PIPE_ST), k1, NULL, NULL, &ni);
        float *pred = load_f32(data_path(PIPE_ST), k2, NULL, NULL, &np);
        float *lat = load_f32(data_path(PIPE_ST), k3, NULL, NULL, &nl);
        size_t E = (size_t)batch * 4 * 16 * 16;
        const cJSON *tj = cJSON_GetObjectItem(cj, "timesteps");
        if (s && init && pred && lat && ni == E && np == (size_t)calls * E && nl == np &&
            lsdi_scheduler_num_calls(s) == calls && cJSON_GetArraySize(tj) == calls) {
            seen++;
            float *x = malloc(E * sizeof(float));
            for (size_t i = 0; i < E; i++)
                x[i] = init[i] * lsdi_scheduler_init_noise_sigma(s);
            for (int k = 0; k < calls; k++) {
                CHECK((float)lsdi_scheduler_timestep(s, k) == (float)cJSON_GetArrayItem(tj, k)->valuedouble,
                      "%s timestep %d", c, k);
                if (!CHECK_OK(lsdi_scheduler_step(s, k, pred + (size_t)k * E, x, E, NULL)))
                    break;
                const float *ref = lat + (size_t)k * E;
                CHECK(rel_err(x, ref, E) <= 1e-3, "%s latents[%d] rel %g", c, k, rel_err(x, ref, E));
                char what[96];
                snprintf(what, sizeof what, "%s latents[%d]", c, k);
                check_elems(what, x, ref, E, 1e-5, 1e-6);
            }
            free(x);
        } else {
            CHECK(0, "case %s: missing data or wrong sizes", c);
        }
        free(init);
        free(pred);
        free(lat);
        lsdi_scheduler_free(s);
    }
    CHECK(seen == 5, "%d cases", seen);
    lsdi_noise_schedule_release(&ns);
    cJSON_Delete(j);
}

/* Step counts the fixtures do not cover, against the README's formulas evaluated here. */
TEST(sched_timestep_formulas)
{
    lsdi_noise_schedule ns;
    CHECK_OK(lsdi_noise_schedule_default(&ns));
    for (int n = 2; n <= 60; n++) {
        lsdi_scheduler *dpm = make(&ns, "dpmpp_2m", n, 0.0f), *eu = make(&ns, "euler", n, 0.0f),
                       *ddim = make(&ns, "ddim", n, 0.0f), *pndm = make(&ns, "pndm", n, 0.0f);
        if (!dpm || !eu || !ddim || !pndm)
            break;
        for (int k = 0; k < n; k++) {
            int i = n - k; /* rint(i * (999/n)), half to even, the top exactly 999 */
            double want = i == n ? 999 : nearbyint(i * (999.0 / n));
            CHECK(lsdi_scheduler_timestep(dpm, k) == want, "dpm n=%d k=%d: %g vs %g", n, k,
                  lsdi_scheduler_timestep(dpm, k), want);
            CHECK(lsdi_scheduler_sigmas(dpm)[k] == ns.sigma_table[(int)want], "dpm sigma n=%d k=%d", n, k);
            int j = n - 1 - k;
            float wt = j == n - 1 ? 999.0f : (float)(j * (999.0 / (n - 1)));
            CHECK((float)lsdi_scheduler_timestep(eu, k) == wt, "euler n=%d k=%d: %.9g vs %.9g", n, k,
                  lsdi_scheduler_timestep(eu, k), (double)wt);
            CHECK(lsdi_scheduler_timestep(ddim, k) == (n - 1 - k) * (1000 / n) + 1, "ddim n=%d k=%d", n, k);
        }
        CHECK(lsdi_scheduler_num_calls(pndm) == n + 1);
        CHECK(lsdi_scheduler_timestep(pndm, 1) == lsdi_scheduler_timestep(pndm, 2) &&
                  lsdi_scheduler_timestep(pndm, 1) == (n - 2) * (1000 / n) + 1 &&
                  lsdi_scheduler_timestep(pndm, n) == 1,
              "pndm n=%d", n);
        CHECK(lsdi_scheduler_sigmas(eu)[n] == 0.0f && lsdi_scheduler_sigmas(dpm)[n] == 0.0f);
        lsdi_scheduler_free(dpm);
        lsdi_scheduler_free(eu);
        lsdi_scheduler_free(ddim);
        lsdi_scheduler_free(pndm);
    }
    /* n = 26: 999/26 * 1 = 38.42..., 13 * 38.4230... = 499.5 exactly in the real numbers: half to even gives 500 */
    lsdi_scheduler *d26 = make(&ns, "dpmpp_2m", 26, 0.0f);
    if (d26) {
        CHECK(lsdi_scheduler_timestep(d26, 13) == nearbyint(13 * (999.0 / 26)), "%g",
              lsdi_scheduler_timestep(d26, 13));
        CHECK(lsdi_scheduler_timestep(d26, 0) == 999 && lsdi_scheduler_timestep(d26, 25) == 38);
    }
    lsdi_scheduler_free(d26);
    lsdi_scheduler *e8 = make(&ns, "euler", 8, 0.0f);
    if (e8) {
        CHECK((float)lsdi_scheduler_timestep(e8, 1) == 856.2857055664062f, "%.10g", lsdi_scheduler_timestep(e8, 1));
        CHECK(lsdi_scheduler_timestep(e8, 1) != floor(lsdi_scheduler_timestep(e8, 1)), "fractional");
        double t = lsdi_scheduler_timestep(e8, 1);
        int fl = (int)t;
        float sig = (float)(ns.sigma_table[fl] + (t - fl) * ((double)ns.sigma_table[fl + 1] - ns.sigma_table[fl]));
        CHECK(lsdi_scheduler_sigmas(e8)[1] == sig, "euler 8 sigma[1] %.9g vs %.9g",
              (double)lsdi_scheduler_sigmas(e8)[1], (double)sig);
        CHECK(fabs(lsdi_scheduler_input_scale(e8, 1) - 1.0 / sqrt((double)sig * sig + 1)) < 1e-7);
    }
    lsdi_scheduler_free(e8);
    static const double karras10[] = {999, 916, 815, 687, 523, 327, 146, 41, 7, 0};
    lsdi_scheduler *kr = make(&ns, "DPM++ 2M Karras", 10, 0.0f);
    for (int k = 0; kr && k < 10; k++)
        CHECK(lsdi_scheduler_timestep(kr, k) == karras10[k], "karras k=%d", k);
    CHECK(kr && lsdi_scheduler_sigmas(kr)[0] == ns.sigma_table[999] &&
          fabsf(lsdi_scheduler_sigmas(kr)[9] - ns.sigma_table[0]) <= 1e-6f * ns.sigma_table[0]);
    lsdi_scheduler_free(kr);
    static const double pndm5[] = {801, 601, 601, 401, 201, 1};
    lsdi_scheduler *p5 = make(&ns, "plms", 5, 0.0f);
    for (int k = 0; p5 && k < 6; k++)
        CHECK(lsdi_scheduler_timestep(p5, k) == pndm5[k], "pndm5 k=%d", k);
    lsdi_scheduler_free(p5);
    lsdi_noise_schedule_release(&ns);
}

TEST(sched_names)
{
    static const struct {
        const char *name;
        lsd_sampler want;
    } cases[] = {
        {"pndm", LSD_SAMPLER_PNDM},           {"PLMS", LSD_SAMPLER_PNDM},
        {"ddim", LSD_SAMPLER_DDIM},           {"DDIM", LSD_SAMPLER_DDIM},
        {"euler", LSD_SAMPLER_EULER},         {"Euler", LSD_SAMPLER_EULER},
        {"k_euler", LSD_SAMPLER_EULER},       {"euler_a", LSD_SAMPLER_EULER_A},
        {"Euler a", LSD_SAMPLER_EULER_A},     {"k_euler_a", LSD_SAMPLER_EULER_A},
        {"euler-ancestral", LSD_SAMPLER_EULER_A}, {"dpmpp_2m", LSD_SAMPLER_DPMPP_2M},
        {"DPM++ 2M", LSD_SAMPLER_DPMPP_2M},   {"dpm++_2m", LSD_SAMPLER_DPMPP_2M},
        {"DPM++ 2M Karras", LSD_SAMPLER_DPMPP_2M_KARRAS}, {"dpmpp_2m_karras", LSD_SAMPLER_DPMPP_2M_KARRAS},
        {"k_dpmpp_2m_karras", LSD_SAMPLER_DPMPP_2M_KARRAS}, {"EulerDiscreteScheduler", LSD_SAMPLER_EULER},
        {"DPMSolverMultistepScheduler", LSD_SAMPLER_DPMPP_2M},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lsd_sampler got = (lsd_sampler)-1;
        CHECK_OK(lsd_sampler_from_name(cases[i].name, &got));
        CHECK(got == cases[i].want, "%s -> %d", cases[i].name, (int)got);
    }
    for (int i = 0; i <= LSD_SAMPLER_DPMPP_2M_KARRAS; i++) {
        lsd_sampler got = (lsd_sampler)-1;
        const char *nm = lsd_sampler_name((lsd_sampler)i);
        CHECK(nm && lsd_sampler_from_name(nm, &got) == LSD_OK && got == (lsd_sampler)i, "round trip %d", i);
    }
    CHECK(!strcmp(lsd_sampler_name(LSD_SAMPLER_EULER_A), "euler_a"));
    CHECK(lsd_sampler_name((lsd_sampler)6) == NULL && lsd_sampler_name((lsd_sampler)-1) == NULL);
    lsd_sampler got;
    CHECK_STATUS(lsd_sampler_from_name("heun", &got), LSD_ERR_INVALID_ARGUMENT, "'heun'");
    CHECK_STATUS(lsd_sampler_from_name("", &got), LSD_ERR_INVALID_ARGUMENT, "unknown sampler");
    CHECK_STATUS(lsd_sampler_from_name("euler_a_but_much_longer_than_sixty_four_characters_so_it_is_cut_off_xx",
                                       &got),
                 LSD_ERR_INVALID_ARGUMENT, "unknown sampler");
    CHECK_STATUS(lsd_sampler_from_name(NULL, &got), LSD_ERR_INVALID_ARGUMENT, "name");
}

TEST(sched_bad_arguments)
{
    lsdi_noise_schedule ns;
    CHECK_OK(lsdi_noise_schedule_default(&ns));
    lsdi_scheduler *s = NULL;
    CHECK_STATUS(lsdi_scheduler_new(&ns, LSD_SAMPLER_DDIM, 0, 0.0f, &s), LSD_ERR_INVALID_ARGUMENT, "steps = 0");
    CHECK_STATUS(lsdi_scheduler_new(&ns, LSD_SAMPLER_EULER, 1001, 0.0f, &s), LSD_ERR_INVALID_ARGUMENT,
                 "steps = 1001");
    CHECK_STATUS(lsdi_scheduler_new(&ns, LSD_SAMPLER_DDIM, 10, -0.5f, &s), LSD_ERR_INVALID_ARGUMENT, "eta");
    CHECK_STATUS(lsdi_scheduler_new(&ns, LSD_SAMPLER_DDIM, 10, NAN, &s), LSD_ERR_INVALID_ARGUMENT, "eta");
    CHECK_STATUS(lsdi_scheduler_new(&ns, LSD_SAMPLER_EULER, 10, 0.5f, &s), LSD_ERR_INVALID_ARGUMENT, "eta");
    CHECK_STATUS(lsdi_scheduler_new(&ns, (lsd_sampler)9, 10, 0.0f, &s), LSD_ERR_INVALID_ARGUMENT, "sampler 9");
    /* leading spacing with steps_offset 1 at 1000 steps would ask for timestep 1000 */
    CHECK_STATUS(lsdi_scheduler_new(&ns, LSD_SAMPLER_DDIM, 1000, 0.0f, &s), LSD_ERR_INVALID_ARGUMENT,
                 "timestep 1000");
    CHECK(s == NULL);

    float x[8] = {0}, m[8] = {0};
    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_DDIM, 4, 0.5f, &s));
    CHECK_STATUS(lsdi_scheduler_step(s, 1, m, x, 8, NULL), LSD_ERR_INVALID_ARGUMENT, "out of order");
    CHECK_STATUS(lsdi_scheduler_step(s, 0, m, x, 8, NULL), LSD_ERR_INVALID_ARGUMENT, "needs noise");
    CHECK_OK(lsdi_scheduler_step(s, 0, m, x, 8, m));
    CHECK_STATUS(lsdi_scheduler_step(s, 1, m, x, 4, m), LSD_ERR_SHAPE_MISMATCH, "4 floats");
    lsdi_scheduler_free(s);

    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_EULER, 1, 0.0f, &s));
    CHECK_OK(lsdi_scheduler_step(s, 0, m, x, 8, NULL));
    CHECK_STATUS(lsdi_scheduler_step(s, 1, m, x, 8, NULL), LSD_ERR_INVALID_ARGUMENT, "all 1 calls are done");
    lsdi_scheduler_free(s);

    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_EULER_A, 3, 0.0f, &s));
    CHECK_STATUS(lsdi_scheduler_step(s, 0, m, x, 8, NULL), LSD_ERR_INVALID_ARGUMENT, "noise");
    lsdi_scheduler_free(s);

    float ac[1000];
    memcpy(ac, ns.alphas_cumprod, sizeof ac);
    CHECK_STATUS(lsdi_noise_schedule_set_alphas_cumprod(&ns, ac, 999), LSD_ERR_SHAPE_MISMATCH, "999 values");
    ac[5] = 1.5f;
    CHECK_STATUS(lsdi_noise_schedule_set_alphas_cumprod(&ns, ac, 1000), LSD_ERR_INVALID_ARGUMENT,
                 "alphas_cumprod[5]");
    lsdi_noise_schedule_release(&ns);
}

static lsd_status load_config(const char *json, lsdi_noise_schedule *ns)
{
    char path[512];
    snprintf(path, sizeof path, "%s/scheduler_config.json", temp_dir());
    write_file(path, json, strlen(json));
    return lsdi_noise_schedule_load(path, ns);
}

TEST(sched_config_errors)
{
    lsdi_noise_schedule ns;
    CHECK_STATUS(lsdi_noise_schedule_load("/nonexistent/scheduler_config.json", &ns), LSD_ERR_NOT_FOUND,
                 "/nonexistent/scheduler_config.json");
    CHECK_STATUS(load_config("{\"prediction_type\": \"flow\"}", &ns), LSD_ERR_FORMAT, "prediction_type 'flow'");
    CHECK_STATUS(load_config("{\"prediction_type\": \"sample\"}", &ns), LSD_ERR_UNSUPPORTED, "sample");
    CHECK_STATUS(load_config("{\"num_train_timesteps\": \"1000\"}", &ns), LSD_ERR_FORMAT, "num_train_timesteps");
    CHECK_STATUS(load_config("{\"num_train_timesteps\": 1e12}", &ns), LSD_ERR_FORMAT, "num_train_timesteps");
    CHECK_STATUS(load_config("{\"num_train_timesteps\": 10.5}", &ns), LSD_ERR_FORMAT, "integer");
    CHECK_STATUS(load_config("{\"beta_schedule\": \"sigmoid\"}", &ns), LSD_ERR_UNSUPPORTED, "sigmoid");
    CHECK_STATUS(load_config("{\"beta_end\": 1.5}", &ns), LSD_ERR_FORMAT, "beta_end");
    CHECK_STATUS(load_config("{\"timestep_spacing\": \"random\"}", &ns), LSD_ERR_FORMAT, "timestep_spacing");
    CHECK_STATUS(load_config("{\"set_alpha_to_one\": 1}", &ns), LSD_ERR_FORMAT, "set_alpha_to_one");
    CHECK_STATUS(load_config("{\"steps_offset\": -1}", &ns), LSD_ERR_FORMAT, "steps_offset");
    CHECK_STATUS(load_config("{\"rescale_betas_zero_snr\": true}", &ns), LSD_ERR_UNSUPPORTED,
                 "rescale_betas_zero_snr");
    CHECK_STATUS(load_config("{\"num_train_timesteps\": 3, \"trained_betas\": [0.1, 0.2]}", &ns), LSD_ERR_FORMAT,
                 "trained_betas");
    CHECK_STATUS(load_config("[1, 2]", &ns), LSD_ERR_FORMAT, "scheduler_config.json");
    CHECK_STATUS(load_config("{\"beta_start\": ", &ns), LSD_ERR_FORMAT, "scheduler_config.json");

    CHECK_OK(load_config("{\"num_train_timesteps\": 3, \"trained_betas\": [0.1, 0.2, 0.5], "
                         "\"prediction_type\": \"v_prediction\", \"timestep_spacing\": \"trailing\"}",
                         &ns));
    CHECK(ns.num_train_timesteps == 3 && ns.prediction == LSDI_PRED_V && ns.spacing == LSDI_SPACING_TRAILING);
    CHECK(fabsf(ns.alphas_cumprod[2] - 0.9f * 0.8f * 0.5f) < 1e-7f, "%g", (double)ns.alphas_cumprod[2]);
    lsdi_noise_schedule_release(&ns);

    /* linear betas: torch.linspace(beta_start, beta_end) */
    CHECK_OK(load_config("{\"beta_schedule\": \"linear\", \"beta_start\": 0.0001, \"beta_end\": 0.02}", &ns));
    CHECK(ns.betas[0] == 0.0001f && ns.betas[999] == 0.02f &&
          fabsf(ns.betas[500] - (0.0001f + 500 * 0.0199f / 999)) < 1e-8f);
    lsdi_noise_schedule_release(&ns);
}

/* Keys absent from the config take the class default of the scheduler being built (diffusers' from_config):
 * DDIM then sets alpha-to-one and clips x0 to [-1, 1]; PNDM keeps ac[0] and Euler/DPM++ use linspace. */
TEST(sched_class_defaults)
{
    lsdi_noise_schedule ns;
    if (!CHECK_OK(load_config("{\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, "
                              "\"beta_end\": 0.012}",
                              &ns)))
        return;
    lsdi_scheduler *s;
    float x[2] = {3.0f, -0.5f}, m[2] = {0.0f, 0.0f};
    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_DDIM, 1, 0.0f, &s));
    CHECK(lsdi_scheduler_timestep(s, 0) == 0, "no steps_offset: timestep %g", lsdi_scheduler_timestep(s, 0));
    CHECK_OK(lsdi_scheduler_step(s, 0, m, x, 2, NULL));
    /* x0 = x / sqrt(ac[0]), clipped; with alpha-to-one the last step returns x0 */
    CHECK(x[0] == 1.0f && fabsf(x[1] - (float)(-0.5 / sqrt(ns.alphas_cumprod[0]))) < 1e-6f, "%g %g", (double)x[0],
          (double)x[1]);
    lsdi_scheduler_free(s);

    x[0] = 3.0f;
    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_PNDM, 1, 0.0f, &s));
    CHECK_OK(lsdi_scheduler_step(s, 0, m, x, 2, NULL));
    CHECK(x[0] == 3.0f, "pndm's previous alpha is ac[0] itself: %g", (double)x[0]);
    lsdi_scheduler_free(s);

    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_DPMPP_2M, 10, 0.0f, &s));
    CHECK(lsdi_scheduler_timestep(s, 0) == 999 && lsdi_scheduler_timestep(s, 9) == 100);
    lsdi_scheduler_free(s);

    /* an explicit timestep_spacing applies to every class: leading Euler scales the start noise by sqrt(s^2+1) */
    lsdi_noise_schedule_release(&ns);
    if (!CHECK_OK(load_config("{\"timestep_spacing\": \"leading\", \"steps_offset\": 1, "
                              "\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012}",
                              &ns)))
        return;
    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_EULER, 10, 0.0f, &s));
    CHECK(lsdi_scheduler_timestep(s, 0) == 901 && lsdi_scheduler_timestep(s, 9) == 1);
    float sig = lsdi_scheduler_sigmas(s)[0];
    CHECK(sig == ns.sigma_table[901] && lsdi_scheduler_init_noise_sigma(s) == sqrtf(sig * sig + 1.0f));
    lsdi_scheduler_free(s);
    CHECK_OK(lsdi_scheduler_new(&ns, LSD_SAMPLER_DPMPP_2M, 10, 0.0f, &s));
    CHECK(lsdi_scheduler_timestep(s, 0) == 10 * 90 + 1 && lsdi_scheduler_timestep(s, 9) == 91, "%g",
          lsdi_scheduler_timestep(s, 0));
    lsdi_scheduler_free(s);
    lsdi_noise_schedule_release(&ns);
}
