/* The optimizers of lib/optim against float64 re-implementations of their references' update rules, written here
 * from the published algorithms (torch.optim.AdamW and SGD, lion-pytorch, prodigyopt 1.0, transformers'
 * Adafactor), over three small tensors (2-D, 4-D like a LoCon kernel, 1-D; one starts at zero like a LoRA "up")
 * with given gradients, two parameter groups and a changing LR; optimizer_args parsing; the EMA against diffusers'
 * EMAModel rule; exact resume through a checkpoint for every optimizer.
 *
 * Tolerances. Weights are float32 of magnitude <= 1; each step rounds a handful of float32 operations per element
 * (relative 6e-8 each), so after six steps the float32 weights sit a few float32 ulps from the float64 ones
 * (observed <= 2e-7). They are compared at 2e-6, 10x that and still 100x below one step's change (lr >= 1e-2 times
 * a normalised update), so a wrong term, sign or bias correction fails. Lion's sign() is compared only where its
 * argument is at least 1e-5 from 0 (checked on the reference), 100x the float32 rounding of its terms. Prodigy's
 * estimate d rests on <g, p0 - p>, a difference of nearly equal float32 numbers: its test starts from weights
 * |p| <= 1e-3 (float32 ulp ~1e-10), so that difference (~d ~ 1e-5 here) is exact to ~1e-5 relative; d * lr is
 * compared at 1e-4 relative (observed 5e-6) and the weights, which move by d * lr ~ 1e-5 a step, at 1e-8 (observed
 * 2e-10). A steady part of the gradients (g_drift) makes d grow, as on a real loss.
 */
#include <stdlib.h>
#include <strings.h>

#include "lora/lora.h"
#include "model/model.h"
#include "optim/ema.h"
#include "optim/optim.h"
#include "test.h"
#include "train/train.h"

#define NT 3
#define MAXN 12
static const int64_t shapes[NT][4] = {{3, 4}, {2, 3, 1, 1}, {5}};
static const int ndims[NT] = {2, 4, 1};
static const int numels[NT] = {12, 6, 5};
#define STEPS 6

/* Element j of tensor t at the start: tensor 1 is zero (a LoRA "up" matrix), the others scale * a wave. */
static float init_value(int t, int j, double scale)
{
    return t == 1 ? 0.0f : (float)(scale * sin(1.3 * j + 0.7 * t + 0.2));
}

static double g_drift; /* a steady part of the gradients (the direction Prodigy's estimate of d follows) */

/* The gradient of element j of tensor t at step k (1-based): magnitude in [0.3, 1], signs that change, plus
 * g_drift. */
static float grad_value(int t, int j, int k)
{
    double a = sin(1.7 * j + 2.3 * t + 0.9 * k), b = cos(0.6 * j - 1.1 * t + 1.3 * k + 0.5);
    return (float)((0.3 + 0.7 * fabs(a)) * (b >= 0 ? 1 : -1) + g_drift);
}

/* The float64 side: weights, gradients and whatever state a reference keeps, per tensor and element. */
typedef struct ref {
    double p[NT][MAXN], g[NT][MAXN];
    double m[NT][MAXN], v[NT][MAXN], s[NT][MAXN], p0[NT][MAXN];
    double row[NT][MAXN], col[NT][MAXN];
    double step[NT], rms[NT];
    double d, d_max, d_numerator, k; /* Prodigy */
    double min_sign_margin;          /* Lion: smallest |b1 m + (1 - b1) g| seen */
} ref;

typedef void (*ref_step_fn)(ref *r, const double lr[NT]);

typedef struct run_spec {
    lsd_optimizer kind;
    const char *args;
    double lr[2];     /* group 0: tensors 0 and 1; group 1: tensor 2 */
    double scale;     /* of the initial weights */
    ref_step_fn ref_step;
    double tol;
} run_spec;

static void set_grads(lsdt_tensor **p, int k)
{
    lsdt_zero_grad(p, NT);
    for (int t = 0; t < NT; t++) {
        float g[MAXN];
        for (int j = 0; j < numels[t]; j++)
            g[j] = grad_value(t, j, k);
        lsdt_scope *s = lsdt_scope_begin();
        lsdt_tensor *gt = lsdt_from_host(s, g, LSDT_F32, shapes[t], ndims[t], LSDT_F32, NULL);
        CHECK(lsdt_backward(lsdt_sum(s, lsdt_mul(s, p[t], gt))) == 0);
        CHECK(lsdt_scope_end(s) == 0);
    }
}

static double max_diff(lsdt_tensor *const *p, const ref *r)
{
    double worst = 0;
    for (int t = 0; t < NT; t++) {
        float w[MAXN];
        CHECK(lsdt_to_host(p[t], w, LSDT_F32, (size_t)numels[t]) == 0);
        for (int j = 0; j < numels[t]; j++)
            worst = fmax(worst, fabs(w[j] - r->p[t][j]));
    }
    return worst;
}

/* Runs STEPS steps of the optimizer and of its reference side by side, the LR falling 10 % a step; returns the
 * optimizer (for more checks) with its tensors in p. */
static lsdi_optim *run(const run_spec *sp, ref *r, lsdt_tensor **p)
{
    memset(r, 0, sizeof *r);
    r->min_sign_margin = INFINITY;
    for (int t = 0; t < NT; t++) {
        float w[MAXN];
        for (int j = 0; j < numels[t]; j++) {
            w[j] = init_value(t, j, sp->scale);
            r->p[t][j] = w[j];
        }
        p[t] = lsdt_from_host(NULL, w, LSDT_F32, shapes[t], ndims[t], LSDT_F32, NULL);
        lsdt_set_requires_grad(p[t], 1);
    }
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    lsdi_optim_group groups[2] = {{p, 2, sp->lr[0]}, {p + 2, 1, sp->lr[1]}};
    lsdi_optim *o = NULL;
    if (!CHECK_OK(lsdi_optim_new(sp->kind, sp->args, &tp, groups, 2, &o)))
        return NULL;
    for (int k = 1; k <= STEPS; k++) {
        double f = 1 - 0.1 * (k - 1), lr[NT] = {sp->lr[0] * f, sp->lr[0] * f, sp->lr[1] * f};
        lsdi_optim_set_lr(o, 0, lr[0]);
        lsdi_optim_set_lr(o, 1, lr[2]);
        set_grads(p, k);
        for (int t = 0; t < NT; t++)
            for (int j = 0; j < numels[t]; j++)
                r->g[t][j] = grad_value(t, j, k);
        CHECK_OK(lsdi_optim_step(o));
        sp->ref_step(r, lr);
        double d = max_diff(p, r);
        CHECK(d <= sp->tol, "%s (%s) step %d: weights differ from the float64 reference by %g > %g",
              lsd_optimizer_name(sp->kind), sp->args ? sp->args : "defaults", k, d, sp->tol);
    }
    lsdt_zero_grad(p, NT);
    return o;
}

static void release(lsdi_optim *o, lsdt_tensor **p)
{
    lsdi_optim_free(o);
    for (int t = 0; t < NT; t++)
        lsdt_free(p[t]);
}

static void run_and_release(const run_spec *sp)
{
    ref r;
    lsdt_tensor *p[NT] = {0};
    release(run(sp, &r, p), p);
}

/* ---- AdamW: torch.optim.AdamW ---- */

static double g_b1, g_b2, g_eps, g_wd; /* the hyperparameters the reference steps read */

static void adamw_ref(ref *r, const double lr[NT])
{
    for (int t = 0; t < NT; t++) {
        double st = ++r->step[t], bc1 = 1 - pow(g_b1, st), bc2 = 1 - pow(g_b2, st);
        for (int j = 0; j < numels[t]; j++) {
            double g = r->g[t][j];
            r->p[t][j] *= 1 - lr[t] * g_wd;
            r->m[t][j] = g_b1 * r->m[t][j] + (1 - g_b1) * g;
            r->v[t][j] = g_b2 * r->v[t][j] + (1 - g_b2) * g * g;
            r->p[t][j] -= lr[t] / bc1 * r->m[t][j] / (sqrt(r->v[t][j]) / sqrt(bc2) + g_eps);
        }
    }
}

TEST(optim_adamw_matches_float64)
{
    g_b1 = 0.9, g_b2 = 0.999, g_eps = 1e-8, g_wd = 1e-2; /* lsd_train_params' adam_* defaults */
    run_and_release(&(run_spec){LSD_OPTIM_ADAMW, NULL, {1e-2, 3e-2}, 1.0, adamw_ref, 2e-6});
    g_b1 = 0.8, g_b2 = 0.95, g_eps = 1e-6, g_wd = 0.1;
    run_and_release(&(run_spec){LSD_OPTIM_ADAMW, "betas=(0.8, 0.95) eps=1e-6 weight_decay=0.1", {1e-2, 3e-2}, 1.0,
                                adamw_ref, 2e-6});
}

/* ---- Lion: lion-pytorch ---- */

static void lion_ref(ref *r, const double lr[NT])
{
    for (int t = 0; t < NT; t++)
        for (int j = 0; j < numels[t]; j++) {
            double g = r->g[t][j], c = g_b1 * r->m[t][j] + (1 - g_b1) * g;
            r->min_sign_margin = fmin(r->min_sign_margin, fabs(c));
            r->p[t][j] *= 1 - lr[t] * g_wd;
            r->p[t][j] -= lr[t] * (c > 0 ? 1 : c < 0 ? -1 : 0);
            r->m[t][j] = g_b2 * r->m[t][j] + (1 - g_b2) * g;
        }
}

TEST(optim_lion_matches_float64)
{
    const run_spec specs[] = {
        {LSD_OPTIM_LION, NULL, {1e-2, 3e-2}, 1.0, lion_ref, 2e-6},
        {LSD_OPTIM_LION, "betas=0.95,0.98 weight_decay=0.5", {1e-2, 3e-2}, 1.0, lion_ref, 2e-6},
    };
    const double hp[][3] = {{0.9, 0.99, 0}, {0.95, 0.98, 0.5}};
    for (int c = 0; c < 2; c++) {
        g_b1 = hp[c][0], g_b2 = hp[c][1], g_wd = hp[c][2];
        ref r;
        lsdt_tensor *p[NT] = {0};
        release(run(&specs[c], &r, p), p);
        CHECK(r.min_sign_margin >= 1e-5, "the gradients put sign()'s argument at %g: not a fair comparison",
              r.min_sign_margin);
    }
}

/* ---- SGD: torch.optim.SGD ---- */

static double g_momentum, g_dampening;
static int g_nesterov;

static void sgd_ref(ref *r, const double lr[NT])
{
    for (int t = 0; t < NT; t++) {
        for (int j = 0; j < numels[t]; j++) {
            double d = r->g[t][j] + g_wd * r->p[t][j];
            if (g_momentum != 0) {
                r->m[t][j] = r->step[t] ? g_momentum * r->m[t][j] + (1 - g_dampening) * d : d;
                d = g_nesterov ? d + g_momentum * r->m[t][j] : r->m[t][j];
            }
            r->p[t][j] -= lr[t] * d;
        }
        r->step[t]++;
    }
}

TEST(optim_sgd_matches_float64)
{
    struct {
        const char *args;
        double momentum, dampening, wd;
        int nesterov;
    } cases[] = {
        {NULL, 0, 0, 0, 0},
        {"momentum=0.9 dampening=0.1 weight_decay=0.01", 0.9, 0.1, 0.01, 0},
        {"momentum=0.9 nesterov=True", 0.9, 0, 0, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        g_momentum = cases[c].momentum, g_dampening = cases[c].dampening, g_wd = cases[c].wd;
        g_nesterov = cases[c].nesterov;
        run_and_release(&(run_spec){LSD_OPTIM_SGD, cases[c].args, {1e-2, 3e-2}, 1.0, sgd_ref, 2e-6});
    }
}

/* ---- Prodigy: prodigyopt 1.0 ---- */

static struct {
    double b1, b2, beta3, eps, wd, d0, d_coef, growth_rate;
    int decouple, bias_correction, safeguard;
} gp;

static void prodigy_ref(ref *r, const double lr_t[NT])
{
    double lr = fmax(lr_t[0], lr_t[2]);
    if (r->d == 0)
        r->d = r->d_max = gp.d0;
    double bc = gp.bias_correction ? sqrt(1 - pow(gp.b2, r->k + 1)) / (1 - pow(gp.b1, r->k + 1)) : 1;
    double d = r->d, dlr = d * lr * bc, num = r->d_numerator * gp.beta3, denom = 0;
    for (int t = 0; t < NT; t++) {
        if (r->step[t] == 0)
            memcpy(r->p0[t], r->p[t], sizeof r->p0[t]);
        for (int j = 0; lr_t[t] > 0 && j < numels[t]; j++) {
            double g = r->g[t][j] + (gp.decouple ? 0 : gp.wd * r->p[t][j]);
            num += (d / gp.d0) * dlr * g * (r->p0[t][j] - r->p[t][j]);
            r->m[t][j] = gp.b1 * r->m[t][j] + d * (1 - gp.b1) * g;
            r->v[t][j] = gp.b2 * r->v[t][j] + d * d * (1 - gp.b2) * g * g;
            r->s[t][j] = gp.beta3 * r->s[t][j] + (d / gp.d0) * (gp.safeguard ? d : dlr) * g;
            denom += fabs(r->s[t][j]);
        }
    }
    double d_hat = gp.d_coef * num / denom;
    if (d == gp.d0)
        d = fmax(d, d_hat);
    r->d_max = fmax(r->d_max, d_hat);
    r->d = d = fmin(r->d_max, d * gp.growth_rate);
    r->d_numerator = num;
    for (int t = 0; t < NT; t++) {
        r->step[t]++;
        for (int j = 0; j < numels[t]; j++) {
            if (gp.decouple)
                r->p[t][j] -= gp.wd * dlr * r->p[t][j];
            r->p[t][j] -= dlr * r->m[t][j] / (sqrt(r->v[t][j]) + d * gp.eps);
        }
    }
    r->k++;
}

TEST(optim_prodigy_matches_float64)
{
    struct {
        const char *args;
        double b1, b2, beta3, eps, wd, d0, d_coef, growth_rate;
        int decouple, bias_correction, safeguard;
    } cases[] = {
        {NULL, 0.9, 0.999, sqrt(0.999), 1e-8, 0, 1e-6, 1, INFINITY, 1, 0, 0},
        {"weight_decay=0.1 use_bias_correction=True d_coef=2 growth_rate=1.5", 0.9, 0.999, sqrt(0.999), 1e-8, 0.1,
         1e-6, 2, 1.5, 1, 1, 0},
        {"betas=0.8,0.99 beta3=0.9 weight_decay=0.1 decouple=False safeguard_warmup=True d0=1e-5 eps=1e-6", 0.8, 0.99,
         0.9, 1e-6, 0.1, 1e-5, 1, INFINITY, 0, 0, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        gp.b1 = cases[c].b1, gp.b2 = cases[c].b2, gp.beta3 = cases[c].beta3, gp.eps = cases[c].eps;
        gp.wd = cases[c].wd, gp.d0 = cases[c].d0, gp.d_coef = cases[c].d_coef, gp.growth_rate = cases[c].growth_rate;
        gp.decouple = cases[c].decouple, gp.bias_correction = cases[c].bias_correction;
        gp.safeguard = cases[c].safeguard;
        ref r;
        lsdt_tensor *p[NT] = {0};
        /* Both groups at LR 1 (Prodigy's LR multiplies d; groups may differ only by being 0). */
        g_drift = 1.0;
        lsdi_optim *o = run(&(run_spec){LSD_OPTIM_PRODIGY, cases[c].args, {1.0, 1.0}, 1e-3, prodigy_ref, 1e-8}, &r, p);
        g_drift = 0;
        double lr = 1.0 * (1 - 0.1 * (STEPS - 1));
        CHECK(r.d > 3 * cases[c].d0, "case %zu: d grew only to %g", c, r.d);
        CHECK(o && fabs(lsdi_optim_get_lr(o, 1) - r.d * lr) <= 1e-4 * r.d * lr, "case %zu: d*lr %g, reference %g",
              c, o ? lsdi_optim_get_lr(o, 1) : 0, r.d * lr);
        release(o, p);
    }
}

TEST(optim_prodigy_groups_need_one_lr)
{
    ref r;
    lsdt_tensor *p[NT] = {0};
    memset(&gp, 0, sizeof gp);
    gp.b1 = 0.9, gp.b2 = 0.999, gp.beta3 = sqrt(0.999), gp.eps = 1e-8, gp.d0 = 1e-6, gp.d_coef = 1;
    gp.growth_rate = INFINITY, gp.decouple = 1;
    lsdi_optim *o = run(&(run_spec){LSD_OPTIM_PRODIGY, NULL, {1.0, 1.0}, 1e-3, prodigy_ref, 1e-8}, &r, p);
    if (o) {
        lsdi_optim_set_lr(o, 1, 0.25); /* group 0 is at 0.5 */
        set_grads(p, 1);
        CHECK_STATUS(lsdi_optim_step(o), LSD_ERR_INVALID_ARGUMENT, "different learning rates");
        /* A group at LR 0 is allowed: its moments stand still, but prodigyopt 1.0 still applies them to it. */
        lsdi_optim_set_lr(o, 1, 0.0);
        CHECK_OK(lsdi_optim_step(o));
        for (int t = 0; t < NT; t++)
            for (int j = 0; j < numels[t]; j++)
                r.g[t][j] = grad_value(t, j, 1);
        prodigy_ref(&r, (const double[NT]){0.5, 0.5, 0.0});
        CHECK(max_diff(p, &r) <= 1e-8, "a group at LR 0: %g", max_diff(p, &r));
    }
    release(o, p);
}

/* ---- Adafactor: transformers.optimization.Adafactor ---- */

static struct {
    double eps1, eps2, clip, decay_rate, beta1, wd;
    int beta1_none, scale_parameter, relative_step, warmup_init;
} ga;

static double rms_of(const double *x, int n)
{
    double s = 0;
    for (int j = 0; j < n; j++)
        s += x[j] * x[j];
    return sqrt(s / n);
}

static double adafactor_lr(const ref *r, int t, double lr)
{
    double rel = ga.relative_step ? fmin(ga.warmup_init ? 1e-6 * r->step[t] : 1e-2, 1 / sqrt(r->step[t])) : lr;
    return (ga.scale_parameter ? fmax(ga.eps2, r->rms[t]) : 1.0) * rel;
}

static void adafactor_ref(ref *r, const double lr_t[NT])
{
    for (int t = 0; t < NT; t++) {
        int n = numels[t], C = ndims[t] >= 2 ? (int)shapes[t][ndims[t] - 1] : n;
        int R = ndims[t] >= 2 ? (int)shapes[t][ndims[t] - 2] : 1, B = n / (R * C);
        double st = ++r->step[t];
        r->rms[t] = rms_of(r->p[t], n);
        double lr = adafactor_lr(r, t, lr_t[t]), b2t = 1 - pow(st, ga.decay_rate), u[MAXN];
        if (ndims[t] >= 2) {
            for (int b = 0; b < B; b++) {
                const double *g = r->g[t] + b * R * C;
                double *row = r->row[t] + b * R, *col = r->col[t] + b * C, row_mean = 0;
                for (int i = 0; i < R; i++) {
                    double mean = 0;
                    for (int j = 0; j < C; j++)
                        mean += (g[i * C + j] * g[i * C + j] + ga.eps1) / C;
                    row[i] = b2t * row[i] + (1 - b2t) * mean;
                    row_mean += row[i] / R;
                }
                for (int j = 0; j < C; j++) {
                    double mean = 0;
                    for (int i = 0; i < R; i++)
                        mean += (g[i * C + j] * g[i * C + j] + ga.eps1) / R;
                    col[j] = b2t * col[j] + (1 - b2t) * mean;
                }
                for (int i = 0; i < R; i++)
                    for (int j = 0; j < C; j++)
                        u[b * R * C + i * C + j] = g[i * C + j] / sqrt(row[i] / row_mean) / sqrt(col[j]);
            }
        } else {
            for (int j = 0; j < n; j++) {
                r->v[t][j] = b2t * r->v[t][j] + (1 - b2t) * (r->g[t][j] * r->g[t][j] + ga.eps1);
                u[j] = r->g[t][j] / sqrt(r->v[t][j]);
            }
        }
        double clip = fmax(rms_of(u, n) / ga.clip, 1.0);
        for (int j = 0; j < n; j++) {
            u[j] = u[j] / clip * lr;
            if (!ga.beta1_none)
                u[j] = r->m[t][j] = ga.beta1 * r->m[t][j] + (1 - ga.beta1) * u[j];
            r->p[t][j] -= ga.wd * lr * r->p[t][j];
            r->p[t][j] -= u[j];
        }
    }
}

TEST(optim_adafactor_matches_float64)
{
    struct {
        const char *args;
        double clip, decay_rate, beta1, wd;
        int beta1_none, scale_parameter, relative_step, warmup_init;
    } cases[] = {
        {NULL, 1.0, -0.8, 0, 0, 1, 1, 1, 0},
        {"relative_step=False scale_parameter=False beta1=0.9 weight_decay=0.01 clip_threshold=0.5", 0.5, -0.8, 0.9,
         0.01, 0, 0, 0, 0},
        {"warmup_init=True decay_rate=-0.5 eps=1e-30,1e-2", 1.0, -0.5, 0, 0, 1, 1, 1, 1},
        {"relative_step=False", 1.0, -0.8, 0, 0, 1, 1, 0, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ga.eps1 = 1e-30, ga.eps2 = c == 2 ? 1e-2 : 1e-3, ga.clip = cases[c].clip, ga.decay_rate = cases[c].decay_rate;
        ga.beta1 = cases[c].beta1, ga.wd = cases[c].wd, ga.beta1_none = cases[c].beta1_none;
        ga.scale_parameter = cases[c].scale_parameter, ga.relative_step = cases[c].relative_step;
        ga.warmup_init = cases[c].warmup_init;
        ref r;
        lsdt_tensor *p[NT] = {0};
        /* The LR matters only without relative_step (transformers ignores it, as kohya's AdafactorSchedule). */
        lsdi_optim *o = run(&(run_spec){LSD_OPTIM_ADAFACTOR, cases[c].args, {1e-2, 3e-2}, 1.0, adafactor_ref, 2e-6},
                            &r, p);
        double want = adafactor_lr(&r, 2, 3e-2 * (1 - 0.1 * (STEPS - 1)));
        CHECK(o && fabs(lsdi_optim_get_lr(o, 1) - want) <= 1e-6 * want, "case %zu: step size %g, reference %g", c,
              o ? lsdi_optim_get_lr(o, 1) : 0, want);
        release(o, p);
    }
}

/* ---- names and optimizer_args ---- */

TEST(optim_names_and_args)
{
    const char *kohya[] = {"AdamW", "Lion", "Prodigy", "Adafactor", "SGD"};
    for (int k = 0; k <= LSD_OPTIM_SGD; k++) {
        lsd_optimizer o = (lsd_optimizer)-1;
        CHECK_OK(lsd_optimizer_from_name(kohya[k], &o));
        CHECK(o == (lsd_optimizer)k && !strcasecmp(lsd_optimizer_name(o), kohya[k]));
    }
    lsd_optimizer o;
    CHECK_STATUS(lsd_optimizer_from_name("AdamW8bit", &o), LSD_ERR_INVALID_ARGUMENT, "AdamW8bit");
    CHECK(!strcmp(lsd_optimizer_name((lsd_optimizer)42), "unknown"));

    lsdt_tensor *p[NT];
    for (int t = 0; t < NT; t++)
        p[t] = lsdt_zeros(NULL, shapes[t], ndims[t], LSDT_F32, NULL);
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    lsdi_optim_group g = {p, NT, 1e-3};
    lsdi_optim *opt = NULL;
    struct {
        lsd_optimizer kind;
        const char *args, *message;
    } bad[] = {
        {LSD_OPTIM_LION, "betas=0.9,0.99 foo=1", "unknown key \"foo\" for lion (it takes betas, weight_decay)"},
        {LSD_OPTIM_ADAMW, "amsgrad=True", "\"amsgrad\" for adamw"},
        {LSD_OPTIM_LION, "betas=0.9", "betas of lion expects two numbers"},
        {LSD_OPTIM_SGD, "momentum", "\"momentum\" is not key=value"},
        {LSD_OPTIM_SGD, "momentum=fast", "momentum of sgd expects a number, got \"fast\""},
        {LSD_OPTIM_SGD, "nesterov=True", "nesterov of sgd requires a momentum"},
        {LSD_OPTIM_SGD, "nesterov=maybe", "True or False"},
        {LSD_OPTIM_ADAFACTOR, "relative_step=False warmup_init=True", "warmup_init of adafactor requires"},
        {LSD_OPTIM_PRODIGY, "d0=0", "d0 of prodigy must be > 0"},
        {LSD_OPTIM_ADAMW, "betas=(0.9, 1.5)", "betas of adamw must be in [0, 1)"},
        {LSD_OPTIM_ADAFACTOR, "beta1=nan", "a number or None"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(lsdi_optim_new(bad[i].kind, bad[i].args, &tp, &g, 1, &opt), LSD_ERR_INVALID_ARGUMENT,
                     bad[i].message);
        CHECK(!opt);
    }
    /* Python literals as kohya writes them; the last of a repeated key wins; blanks inside brackets are kept. */
    CHECK_OK(lsdi_optim_new(LSD_OPTIM_ADAFACTOR, "  beta1=None relative_step=false eps=[1e-30, 1e-3]  "
                            "scale_parameter=0 warmup_init=False clip_threshold=1 clip_threshold=2 ",
                            &tp, &g, 1, &opt));
    /* Factored state for the 2-D and 4-D tensors, a full one for the 1-D, no first moment (beta1 None). */
    const char *want[] = {"exp_avg_sq_row.0", "exp_avg_sq_col.0", "exp_avg_sq_row.1", "exp_avg_sq_col.1",
                          "exp_avg_sq.2", "scalars"};
    CHECK(opt && lsdi_optim_state_count(opt) == 6);
    for (int k = 0; opt && k < 6; k++)
        CHECK(!strcmp(lsdi_optim_state_name(opt, k), want[k]), "state %d: %s", k, lsdi_optim_state_name(opt, k));
    CHECK(opt && lsdt_size(lsdi_optim_state_get(opt, 1), 0) == 4 && lsdt_ndim(lsdi_optim_state_get(opt, 3)) == 3);
    /* Restoring state checks the shape. */
    if (opt)
        CHECK_STATUS(lsdi_optim_state_set(opt, 0, p[2]), LSD_ERR_SHAPE_MISMATCH, "exp_avg_sq_row.0");
    lsdi_optim_free(opt);
    opt = NULL;
    CHECK_OK(lsdi_optim_new(LSD_OPTIM_SGD, "", &tp, &g, 1, &opt)); /* no momentum: no buffers */
    CHECK(opt && lsdi_optim_state_count(opt) == 1 && !strcmp(lsdi_optim_state_name(opt, 0), "scalars"));
    lsdi_optim_free(opt);
    for (int t = 0; t < NT; t++)
        lsdt_free(p[t]);
}

/* ---- EMA: diffusers' EMAModel ---- */

static void ema_case(int warmup)
{
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    tp.use_ema = 1;
    tp.ema_warmup = warmup;
    tp.ema_decay = 0.4f; /* reached within the steps run, so the clamp is exercised */
    tp.ema_inv_gamma = 2.0f;
    tp.ema_power = 0.75f;
    lsdt_tensor *p[NT];
    double shadow[NT][MAXN];
    for (int t = 0; t < NT; t++) {
        float w[MAXN];
        for (int j = 0; j < numels[t]; j++)
            shadow[t][j] = w[j] = init_value(t, j, 1.0);
        p[t] = lsdt_from_host(NULL, w, LSDT_F32, shapes[t], ndims[t], LSDT_F32, NULL);
    }
    lsdi_ema *e = NULL;
    if (!CHECK_OK(lsdi_ema_new(p, NT, &tp, &e)))
        goto done;
    int clamped = 0;
    for (int k = 1; k <= 8; k++) {
        /* EMAModel.get_decay: u = step - 1; 0 at u <= 0; warmup 1 - (1 + u/inv_gamma)^-power, else
         * (1 + u)/(10 + u); at most ema_decay. */
        double u = k - 1, d = 0;
        if (u > 0)
            d = fmin(warmup ? 1 - pow(1 + u / (double)tp.ema_inv_gamma, -(double)tp.ema_power) : (1 + u) / (10 + u),
                     (double)tp.ema_decay);
        clamped += d == (double)tp.ema_decay;
        CHECK(fabs(lsdi_ema_decay(e, k) - d) < 1e-15, "step %d: decay %.17g, want %.17g", k, lsdi_ema_decay(e, k), d);
        double worst = 0;
        for (int t = 0; t < NT; t++) {
            float w[MAXN];
            for (int j = 0; j < numels[t]; j++)
                w[j] = grad_value(t, j, k);
            lsdt_tensor *step = lsdt_from_host(NULL, w, LSDT_F32, shapes[t], ndims[t], LSDT_F32, NULL);
            CHECK(lsdt_add_(p[t], step, 0.1) == 0); /* what an optimizer step would do */
            lsdt_free(step);
            CHECK(lsdt_to_host(p[t], w, LSDT_F32, (size_t)numels[t]) == 0);
            for (int j = 0; j < numels[t]; j++)
                shadow[t][j] -= (1 - d) * (shadow[t][j] - w[j]);
        }
        CHECK_OK(lsdi_ema_step(e));
        for (int t = 0; t < NT; t++) {
            float s[MAXN];
            CHECK(lsdt_to_host(lsdi_ema_shadow(e, t), s, LSDT_F32, (size_t)numels[t]) == 0);
            for (int j = 0; j < numels[t]; j++)
                worst = fmax(worst, fabs(s[j] - shadow[t][j]));
        }
        CHECK(worst <= 2e-6, "warmup %d step %d: EMA differs from the float64 reference by %g", warmup, k, worst);
    }
    CHECK(clamped >= 2 && lsdi_ema_get_step(e) == 8, "ema_decay reached at %d steps", clamped);
    /* store / copy_to / restore: the shadows in, then the weights back, exactly. */
    float before[MAXN], now[MAXN], sh[MAXN];
    lsdt_to_host(p[0], before, LSDT_F32, 12);
    CHECK_STATUS(lsdi_ema_restore(e), LSD_ERR_INVALID_ARGUMENT, "no weights were stored");
    CHECK_OK(lsdi_ema_store(e));
    CHECK_OK(lsdi_ema_copy_to(e));
    lsdt_to_host(p[0], now, LSDT_F32, 12);
    lsdt_to_host(lsdi_ema_shadow(e, 0), sh, LSDT_F32, 12);
    CHECK(!memcmp(now, sh, sizeof now) && memcmp(now, before, sizeof now));
    CHECK_OK(lsdi_ema_restore(e));
    lsdt_to_host(p[0], now, LSDT_F32, 12);
    CHECK(!memcmp(now, before, sizeof now));
done:
    lsdi_ema_free(e);
    for (int t = 0; t < NT; t++)
        lsdt_free(p[t]);
}

TEST(optim_ema_matches_float64)
{
    ema_case(0);
    ema_case(1);
}

/* ---- exact resume on sd-tiny, for every optimizer, with the EMA on ---- */

#define INPUTS "sd-tiny/ref/train_step_inputs.safetensors"

typedef struct resume_run {
    lsd_model *m;
    float *lat, *ctx;
    lsd_train_params p;
} resume_run;

static lsd_trainer *new_trainer(resume_run *rr, lsd_adapter_set **set)
{
    lsd_trainer *tr = NULL;
    *set = NULL;
    if (CHECK_OK(lsd_adapter_set_new(rr->m, set)))
        CHECK_OK(lsd_trainer_new(rr->m, *set, "lora", NULL, &rr->p, &tr));
    return tr;
}

static void steps(resume_run *rr, lsd_trainer *tr, int n)
{
    lsd_train_batch b = {0};
    b.struct_size = sizeof b;
    b.batch = 2, b.height = 16, b.width = 16, b.latents = rr->lat, b.context = rr->ctx, b.n_ctx = 77;
    for (int k = 0; k < n && tr; k++)
        CHECK_OK(lsd_trainer_step_batch(tr, &b, NULL));
}

/* The adapter's weights, then (swapped in) the EMA's, as one host array. */
static float *weights_and_ema(lsd_trainer *tr, size_t *count)
{
    size_t n = 0;
    for (int i = 0; i < tr->n_params; i++)
        n += (size_t)lsdt_numel(tr->params[i]);
    float *v = malloc(2 * n * sizeof *v), *w = v;
    for (int pass = 0; v && pass < 2; pass++) {
        if (pass == 1)
            CHECK_OK(lsd_trainer_swap_ema(tr));
        for (int i = 0; i < tr->n_params; i++) {
            lsdt_to_host(tr->params[i], w, LSDT_F32, (size_t)lsdt_numel(tr->params[i]));
            w += lsdt_numel(tr->params[i]);
        }
    }
    CHECK_OK(lsd_trainer_swap_ema(tr));
    *count = 2 * n;
    return v;
}

static void resume_case(resume_run *rr, lsd_optimizer kind, const char *args, double lr)
{
    rr->p.optimizer = kind;
    rr->p.optimizer_args = args;
    rr->p.learning_rate = lr;
    const char *dir = temp_dir();
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = new_trainer(rr, &set);
    steps(rr, tr, 4);
    size_t n = 0, n2 = 0;
    float *straight = tr ? weights_and_ema(tr, &n) : NULL;
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);

    tr = new_trainer(rr, &set);
    steps(rr, tr, 2);
    if (tr)
        CHECK_OK(lsd_trainer_save_checkpoint(tr, dir));
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    tr = new_trainer(rr, &set);
    if (tr && CHECK_OK(lsd_trainer_resume(tr, dir)))
        steps(rr, tr, 2);
    float *resumed = tr ? weights_and_ema(tr, &n2) : NULL;
    CHECK(straight && resumed && n == n2 && !memcmp(straight, resumed, n * sizeof *resumed),
          "%s: 4 steps vs 2 + resume + 2 differ by %g", lsd_optimizer_name(kind),
          straight && resumed && n == n2 ? max_abs_diff(straight, resumed, n) : -1.0);
    /* The EMA is not the weights (else the comparison above would say nothing about it). */
    CHECK(straight && max_abs_diff(straight, straight + n / 2, n / 2) > 0);
    free(straight);
    free(resumed);
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
}

TEST(optim_resume_exact_every_optimizer)
{
    resume_run rr = {0};
    lsd_train_params_init(&rr.p);
    rr.p.use_ema = 1;
    rr.p.ema_decay = 0.9f;
    rr.p.max_train_steps = 4;
    rr.p.lr_scheduler = LSD_LR_COSINE;
    rr.p.lr_warmup_steps = 1;
    rr.p.seed = 5;
    rr.lat = load_f32(data_path(INPUTS), "latents", NULL, NULL, NULL);
    rr.ctx = load_f32(data_path(INPUTS), "context", NULL, NULL, NULL);
    if (rr.lat && rr.ctx && CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &rr.m))) {
        resume_case(&rr, LSD_OPTIM_ADAMW, NULL, 1e-3);
        resume_case(&rr, LSD_OPTIM_LION, "weight_decay=0.1", 1e-4);
        resume_case(&rr, LSD_OPTIM_PRODIGY, "use_bias_correction=True weight_decay=0.01", 1.0);
        resume_case(&rr, LSD_OPTIM_ADAFACTOR, "beta1=0.9", 1e-3);
        resume_case(&rr, LSD_OPTIM_SGD, "momentum=0.9 nesterov=True", 1e-2);
    }
    lsd_model_free(rr.m);
    free(rr.lat);
    free(rr.ctx);
}

/* A checkpoint resumes only into a trainer of its optimizer, and one with use_ema needs its EMA; while the EMA
 * weights are swapped in, the trainer refuses to go on. */
TEST(optim_resume_mismatch_and_swap_rules)
{
    resume_run rr = {0};
    lsd_train_params_init(&rr.p);
    rr.p.max_train_steps = 4;
    rr.lat = load_f32(data_path(INPUTS), "latents", NULL, NULL, NULL);
    rr.ctx = load_f32(data_path(INPUTS), "context", NULL, NULL, NULL);
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    const char *dir = temp_dir();
    if (!rr.lat || !rr.ctx || !CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &rr.m)))
        goto done;
    tr = new_trainer(&rr, &set);
    steps(&rr, tr, 1);
    if (tr)
        CHECK_OK(lsd_trainer_save_checkpoint(tr, dir));
    CHECK_STATUS(lsd_trainer_swap_ema(tr), LSD_ERR_INVALID_ARGUMENT, "use_ema is off");
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    rr.p.optimizer = LSD_OPTIM_LION;
    tr = new_trainer(&rr, &set);
    if (tr)
        CHECK_STATUS(lsd_trainer_resume(tr, dir), LSD_ERR_INVALID_ARGUMENT, "optimizer adamw, this run asks for lion");
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    rr.p.optimizer = LSD_OPTIM_ADAMW;
    rr.p.use_ema = 1;
    tr = new_trainer(&rr, &set);
    if (tr) {
        CHECK_STATUS(lsd_trainer_resume(tr, dir), LSD_ERR_INVALID_ARGUMENT, "without use_ema");
        CHECK(lsd_trainer_get_step(tr) == 0);
        CHECK_OK(lsd_trainer_swap_ema(tr));
        lsd_train_batch b = {0};
        b.struct_size = sizeof b;
        b.batch = 2, b.height = 16, b.width = 16, b.latents = rr.lat, b.context = rr.ctx, b.n_ctx = 77;
        CHECK_STATUS(lsd_trainer_step_batch(tr, &b, NULL), LSD_ERR_INVALID_ARGUMENT, "EMA weights");
        CHECK_STATUS(lsd_trainer_save_checkpoint(tr, dir), LSD_ERR_INVALID_ARGUMENT, "swap_ema");
        CHECK_OK(lsd_trainer_swap_ema(tr));
        steps(&rr, tr, 1);
    }
    rr.p.use_ema = 0;
    rr.p.optimizer = (lsd_optimizer)9;
    lsd_trainer *bad = NULL;
    CHECK_STATUS(lsd_trainer_new(rr.m, set, "lora", NULL, &rr.p, &bad), LSD_ERR_INVALID_ARGUMENT, "optimizer");
    rr.p.optimizer = LSD_OPTIM_SGD;
    rr.p.optimizer_args = "momentum=0.9 lr=3";
    CHECK_STATUS(lsd_trainer_new(rr.m, set, "lora", NULL, &rr.p, &bad), LSD_ERR_INVALID_ARGUMENT, "\"lr\" for sgd");
    CHECK(!bad);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(rr.m);
    free(rr.lat);
    free(rr.ctx);
}

/* The checks of lsd_trainer_new that need no model, optimizer_args included, for front ends to run first. */
TEST(optim_train_params_check_without_a_model)
{
    lsd_train_params p;
    lsd_train_params_init(&p);
    CHECK_OK(lsd_train_params_check(&p));
    CHECK_OK(lsd_train_params_check(NULL));
    p.optimizer = LSD_OPTIM_SGD;
    p.optimizer_args = "momentum=0.9 lr=3";
    CHECK_STATUS(lsd_train_params_check(&p), LSD_ERR_INVALID_ARGUMENT, "\"lr\" for sgd");
    p.optimizer_args = "momentum=0.9 nesterov=True";
    CHECK_OK(lsd_train_params_check(&p));
    /* Prodigy's one step size: different group LRs are refused before any step, not at the first one */
    p.optimizer = LSD_OPTIM_PRODIGY;
    p.optimizer_args = NULL;
    p.train_text_encoder = 1;
    p.learning_rate = 1.0f;
    p.text_encoder_lr = 0.5f;
    CHECK_STATUS(lsd_train_params_check(&p), LSD_ERR_INVALID_ARGUMENT, "unet_lr and text_encoder_lr must be equal");
    p.unet_lr = 0.5f;
    CHECK_OK(lsd_train_params_check(&p));
    p.learning_rate = -1;
    CHECK_STATUS(lsd_train_params_check(&p), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_train_params_check: learning_rate must be > 0");
}
