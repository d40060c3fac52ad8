/* Memory and precision of training on the tiny model: gradient checkpointing gives the plain path's gradients, bf16
 * tracks f32, the fallbacks where a dtype is slow, and fp16's loss-scaling rules. */
#include <stdlib.h>
#include <string.h>

#include "core/runtime.h"
#include "lora/lora.h"
#include "model/model.h"
#include "test.h"
#include "train/train.h"

/* One trainer on a fresh tiny model whose rank-4 adapter "t" holds weights drawn from seed 7 (the B matrices too,
 * so that every gradient is non-zero from the first step). */
typedef struct {
    lsd_model *m;
    lsd_adapter_set *set;
    lsd_trainer *tr;
} run;

static int run_open(run *r, const lsd_train_params *p)
{
    memset(r, 0, sizeof *r);
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &r->m)) || !CHECK_OK(lsd_adapter_set_new(r->m, &r->set)))
        return 0;
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.rank = 4;
    if (!CHECK_OK(lsd_adapter_set_add(r->set, "t", &lp)) ||
        !CHECK_OK(lsd_trainer_new(r->m, r->set, "t", NULL, p, &r->tr)))
        return 0;
    lsdt_generator *g = lsdt_generator_new(7);
    for (int i = 0; i < r->tr->n_params; i++)
        CHECK(lsdt_normal_(r->tr->params[i], g, 0, 0.1) == 0);
    lsdt_generator_free(g);
    r->tr->keep_debug = 1;
    return 1;
}

/* These tests are about numbers, not threads: the tiny model's ops are so small that on a busy machine waiting for
 * a second thread costs more than the work (10x here), so they run on one and restore the setting. */
static int one_thread(void)
{
    int n = lsdt_get_num_threads();
    lsd_set_num_threads(1);
    return n;
}

static void run_close(run *r)
{
    lsd_trainer_free(r->tr);
    lsd_adapter_set_free(r->set);
    lsd_model_free(r->m);
}

static float *filled(size_t n, unsigned seed, float scale)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = scale * ((float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f);
    }
    return v;
}

/* How many calls of `op` the shim's profile counted ("  seconds s  op xN" lines). */
static long op_calls(const char *op)
{
    static char report[1 << 16];
    lsdt_profile_report(report, sizeof report);
    char key[64];
    snprintf(key, sizeof key, "  %s x", op);
    const char *at = strstr(report, key);
    return at ? atol(at + strlen(key)) : 0;
}

/* Each ResNet and transformer block runs again in backward, and every LoRA gradient is the plain path's: the
 * recomputation repeats the same kernels on the same values (the loss is equal bit for bit); the gradients differ
 * only by the order in which float32 sums meet (a block's output gradient is summed before the block instead of
 * inside it): max |diff| <= 1e-5 of the tensor's largest entry (measured: 1.1e-6 at worst). */
TEST(train_gradient_checkpointing_matches_plain)
{
    enum { B = 2, C = 4, S = 16, T = 77 };
    lsd_model *probe = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &probe)))
        return;
    int D = probe->unet->cfg.cross_attention_dim;
    lsd_model_free(probe);
    float *lat = filled((size_t)B * C * S * S, 1, 1), *noise = filled((size_t)B * C * S * S, 2, 1);
    float *ctx = filled((size_t)B * T * D, 3, 1);
    int64_t ts[B] = {100, 700};
    lsd_train_batch b = {sizeof b, B, S, S, NULL, lat, NULL, ctx, T, noise, ts, NULL};
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.lr_warmup_steps = 0;
    int threads = one_thread();
    run plain, ckpt;
    long linear_calls[2] = {0, 0};
    float loss[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        p.gradient_checkpointing = k;
        run *r = k ? &ckpt : &plain;
        if (!run_open(r, &p))
            break;
        lsdt_profile_enable(1);
        CHECK_OK(lsd_trainer_step_batch(r->tr, &b, &loss[k]));
        linear_calls[k] = op_calls("linear");
        lsdt_profile_enable(0);
    }
    CHECK(loss[0] == loss[1], "the forward is the same: %.9g vs %.9g", loss[0], loss[1]);
    CHECK(linear_calls[1] > linear_calls[0] && linear_calls[0] > 0, "blocks ran again in backward: %ld vs %ld linear",
          linear_calls[1], linear_calls[0]);
    int n = plain.tr && ckpt.tr ? plain.tr->n_params : 0;
    CHECK(!plain.tr || !ckpt.tr || n == ckpt.tr->n_params);
    int nonzero = 0;
    for (int i = 0; i < n; i++) {
        size_t cnt = (size_t)lsdt_numel(plain.tr->params[i]);
        float *a = malloc(cnt * sizeof *a), *c = malloc(cnt * sizeof *c);
        CHECK(plain.tr->last_grads[i] && ckpt.tr->last_grads[i], "parameter %d has a gradient on both paths", i);
        if (a && c && plain.tr->last_grads[i] && ckpt.tr->last_grads[i] &&
            CHECK_OK(lsdt_to_host(plain.tr->last_grads[i], a, LSDT_F32, cnt)) &&
            CHECK_OK(lsdt_to_host(ckpt.tr->last_grads[i], c, LSDT_F32, cnt))) {
            double big = 0;
            for (size_t j = 0; j < cnt; j++)
                big = fmax(big, fabs(a[j]));
            nonzero += big > 0;
            CHECK(max_abs_diff(a, c, cnt) <= 1e-5 * big, "parameter %d: max diff %g, max |g| %g", i,
                  max_abs_diff(a, c, cnt), big);
        }
        free(a);
        free(c);
    }
    CHECK(nonzero == n && n > 0, "%d of %d gradients are non-zero", nonzero, n);
    run_close(&plain);
    run_close(&ckpt);
    lsd_set_num_threads(threads);
    free(lat);
    free(noise);
    free(ctx);
}

/* ---- mixed precision ---- */

static char last_warning[1024];

static void keep_warning(lsd_log_level level, const char *message, void *user)
{
    (void)user;
    if (level == LSD_LOG_WARN)
        snprintf(last_warning, sizeof last_warning, "%s", message);
}

static lsd_model *tiny_in(lsd_dtype dt, int policy, lsd_status want)
{
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.dtype = dt;
    mp.dtype_policy = policy;
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(data_path("sd-tiny"), &mp, &m), want, want == LSD_OK ? NULL : "bf16");
    return m;
}

static lsd_dtype dtype_of(const lsd_model *m)
{
    lsd_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(lsd_model_get_info(m, &info));
    return info.dtype;
}

/* A dtype or mixed precision the CPU cannot compute fast: a warning and f32, or a refusal, or kept on request. */
TEST(train_precision_falls_back_where_slow)
{
    lsd_set_log_callback(keep_warning, NULL);
    lsdi_set_native_bf16_override(0);
    last_warning[0] = 0;
    lsd_model *m = tiny_in(LSD_BF16, LSD_DTYPE_FALLBACK, LSD_OK);
    CHECK(m && dtype_of(m) == LSD_F32, "bf16 on a CPU without it loads f32");
    CHECK(strstr(last_warning, "bf16") && strstr(last_warning, "f32"), "warned: %s", last_warning);
    lsd_model_free(tiny_in(LSD_BF16, LSD_DTYPE_REFUSE, LSD_ERR_UNSUPPORTED));
    lsd_model *kept = tiny_in(LSD_BF16, LSD_DTYPE_KEEP, LSD_OK);
    CHECK(kept && dtype_of(kept) == LSD_BF16, "kept on request");
    lsd_model_free(kept);

    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    lsd_train_params_init(&p);
    if (m && CHECK_OK(lsd_adapter_set_new(m, &set))) {
        const lsd_dtype asked[2] = {LSD_BF16, LSD_F16};
        for (int i = 0; i < 2; i++) {
            p.mixed_precision = asked[i];
            p.mixed_precision_strict = 1;
            CHECK_STATUS(lsd_trainer_new(m, set, "t", NULL, &p, &tr), LSD_ERR_UNSUPPORTED, "mixed_precision");
            CHECK(strstr(lsd_last_error(), lsd_dtype_name(asked[i])) != NULL, "%s", lsd_last_error());
            p.mixed_precision_strict = 0;
            last_warning[0] = 0;
            CHECK_OK(lsd_trainer_new(m, set, "t", NULL, &p, &tr));
            CHECK(strstr(last_warning, "training in f32") != NULL, "warned: %s", last_warning);
            lsd_trainer_free(tr);
            tr = NULL;
        }
        /* where bf16 is native, the model must already hold it */
        lsdi_set_native_bf16_override(1);
        p.mixed_precision = LSD_BF16;
        CHECK_STATUS(lsd_trainer_new(m, set, "t", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "loaded in bf16");
    }
    lsdi_set_native_bf16_override(-1);
    lsd_set_log_callback(NULL, NULL);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

/* oneDNN capped below AVX512_CORE_BF16 (ONEDNN_MAX_CPU_ISA) computes bf16 like a CPU without it: not native. A cap
 * at or above it leaves what CPUID found. */
TEST(runtime_onednn_isa_cap_limits_native_bf16)
{
    const char *vars[3] = {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "LSD_NATIVE_BF16"};
    char *saved[3];
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(vars[i]);
        saved[i] = v ? strdup(v) : NULL;
        unsetenv(vars[i]);
    }
    int hw = lsdi_cpu_native_bf16();
    setenv("ONEDNN_MAX_CPU_ISA", "AVX2", 1);
    CHECK(lsdi_cpu_native_bf16() == 0, "capped at AVX2");
    setenv("ONEDNN_MAX_CPU_ISA", "avx512_core", 1);
    CHECK(lsdi_cpu_native_bf16() == 0, "capped at avx512_core (no bf16 instructions)");
    setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", 1);
    CHECK(lsdi_cpu_native_bf16() == hw, "a cap that includes bf16 changes nothing");
    unsetenv("ONEDNN_MAX_CPU_ISA");
    setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI", 1);
    CHECK(lsdi_cpu_native_bf16() == 0, "the older variable too");
    setenv("LSD_NATIVE_BF16", "1", 1);
    CHECK(lsdi_cpu_native_bf16() == 1, "LSD_NATIVE_BF16 still overrides");
    for (int i = 0; i < 3; i++) {
        if (saved[i])
            setenv(vars[i], saved[i], 1);
        else
            unsetenv(vars[i]);
        free(saved[i]);
    }
    CHECK(lsdi_cpu_native_bf16() == hw);
}

/* The same 20 steps (same batches, noise and timesteps) in f32 and in bf16 with f32 LoRA weights: the losses stay
 * together (stated tolerance: 1 % of the f32 loss, at step 20 and at every step; measured 0.02 % at step 20 and
 * 0.24 % at worst) and the adapter trains in f32. */
TEST(train_bf16_tracks_f32)
{
    enum { B = 1, C = 4, S = 16, T = 77, STEPS = 20 };
    lsdi_set_native_bf16_override(1); /* bf16 on any CPU: slow where not native, but the model is tiny */
    int threads = one_thread();
    float loss[2][STEPS];
    for (int k = 0; k < 2; k++) {
        lsd_dtype dt = k ? LSD_BF16 : LSD_F32;
        lsd_model *m = tiny_in(dt, LSD_DTYPE_FALLBACK, LSD_OK);
        lsd_adapter_set *set = NULL;
        lsd_trainer *tr = NULL;
        lsd_lora_params lp;
        lsd_lora_params_init(&lp);
        lsd_train_params p;
        lsd_train_params_init(&p);
        p.learning_rate = 1e-3;
        p.lr_warmup_steps = 0;
        p.mixed_precision = dt;
        if (!m || !CHECK_OK(lsd_adapter_set_new(m, &set)) || !CHECK_OK(lsd_adapter_set_add(set, "t", &lp)) ||
            !CHECK_OK(lsd_trainer_new(m, set, "t", NULL, &p, &tr))) {
            lsd_adapter_set_free(set);
            lsd_model_free(m);
            break;
        }
        CHECK(dtype_of(m) == dt);
        int D = m->unet->cfg.cross_attention_dim;
        for (int step = 0; step < STEPS; step++) {
            float *lat = filled((size_t)B * C * S * S, 10 + step, 1);
            float *noise = filled((size_t)B * C * S * S, 40 + step, 1);
            float *ctx = filled((size_t)B * T * D, 70 + step, 1);
            int64_t ts[B] = {(step * 149) % 1000};
            lsd_train_batch b = {sizeof b, B, S, S, NULL, lat, NULL, ctx, T, noise, ts, NULL};
            CHECK_OK(lsd_trainer_step_batch(tr, &b, &loss[k][step]));
            free(lat);
            free(noise);
            free(ctx);
        }
        for (int i = 0; i < tr->n_params; i++)
            CHECK(lsdt_get_dtype(tr->params[i]) == LSDT_F32, "LoRA tensor %d stays f32", i);
        lsd_trainer_free(tr);
        lsd_adapter_set_free(set);
        lsd_model_free(m);
    }
    lsdi_set_native_bf16_override(-1);
    lsd_set_num_threads(threads);
    double worst = 0;
    for (int step = 0; step < STEPS; step++)
        worst = fmax(worst, fabs(loss[1][step] - loss[0][step]) / loss[0][step]);
    CHECK(fabs(loss[1][STEPS - 1] - loss[0][STEPS - 1]) <= 0.01 * loss[0][STEPS - 1], "step 20: bf16 %.6f, f32 %.6f",
          loss[1][STEPS - 1], loss[0][STEPS - 1]);
    CHECK(worst <= 0.01, "worst relative difference over the 20 steps %.4f", worst);
    CHECK(loss[0][STEPS - 1] != loss[1][STEPS - 1], "the bf16 run really ran in bf16");
}

/* GradScaler's rules: gradients divided by the scale, a non-finite one skips the step and halves the scale, 2000
 * clean steps in a row double it. */
TEST(train_grad_scaler_rules)
{
    lsdi_grad_scaler g;
    lsdi_grad_scaler_init(&g, 1);
    CHECK(g.scale == 65536.0);
    const float v[2] = {1, 2}, k[2] = {3 * 65536.0f, -65536.0f};
    const int64_t sh[1] = {2};
    lsdt_tensor *p = lsdt_from_host(NULL, v, LSDT_F32, sh, 1, LSDT_F32, "cpu");
    lsdt_set_requires_grad(p, 1);
    lsdt_scope *s = lsdt_scope_begin();
    float got[2];
    int skip = -1;
    /* d/dp sum(p * k) = k: a scaled gradient of (3, -1) */
    CHECK(lsdt_backward(lsdt_sum(s, lsdt_mul(s, p, lsdt_from_host(s, k, LSDT_F32, sh, 1, LSDT_F32, "cpu")))) == 0);
    CHECK_OK(lsdi_grad_scaler_unscale_update(&g, &p, 1, &skip));
    CHECK(lsdt_to_host(lsdt_grad(s, p), got, LSDT_F32, 2) == 0);
    CHECK_CLOSE(got, ((const float[]){3, -1}), 2, 0);
    CHECK(skip == 0 && g.scale == 65536.0 && g.good_steps == 1);
    const float bad[2] = {INFINITY, 0};
    lsdt_zero_grad(&p, 1);
    CHECK(lsdt_backward(lsdt_sum(s, lsdt_mul(s, p, lsdt_from_host(s, bad, LSDT_F32, sh, 1, LSDT_F32, "cpu")))) == 0);
    CHECK_OK(lsdi_grad_scaler_unscale_update(&g, &p, 1, &skip));
    CHECK(skip == 1 && g.scale == 32768.0 && g.good_steps == 0, "skip %d scale %g", skip, g.scale);
    lsdt_zero_grad(&p, 1);
    CHECK(lsdt_backward(lsdt_sum(s, lsdt_mul(s, p, lsdt_from_host(s, k, LSDT_F32, sh, 1, LSDT_F32, "cpu")))) == 0);
    g.good_steps = 1999;
    CHECK_OK(lsdi_grad_scaler_unscale_update(&g, &p, 1, &skip));
    CHECK(skip == 0 && g.scale == 65536.0 && g.good_steps == 0, "scale %g after 2000 clean steps", g.scale);
    CHECK(lsdt_scope_end(s) == 0);
    lsdt_free(p);
}
