/* The shim's ops against values computed by hand (or, for the generator, by torch.randn in Python). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/runtime.h"
#include "lsd_torch.h"
#include "test.h"

static lsdt_tensor *host(lsdt_scope *s, const float *v, const int64_t *shape, int ndim)
{
    return lsdt_from_host(s, v, LSDT_F32, shape, ndim, LSDT_F32, "cpu");
}

static void expect(lsdt_tensor *t, const float *want, size_t n, double tol, const char *what)
{
    float got[64];
    CHECK(t != NULL, "%s: op failed: %s", what, lsdt_last_error());
    if (!t)
        return;
    CHECK(lsdt_to_host(t, got, LSDT_F32, n) == 0, "%s: to_host: %s", what, lsdt_last_error());
    if (!check_close_impl(__FILE__, __LINE__, what, got, want, n, tol))
        return;
}

TEST(shim_linear_and_activations)
{
    lsdt_scope *s = lsdt_scope_begin();
    const float x[] = {1, 2, 3}, w[] = {1, 0, -1, 2, 1, 0}, b[] = {0.5f, -1};
    const int64_t sx[] = {1, 3}, sw[] = {2, 3}, sb[] = {2};
    lsdt_tensor *y = lsdt_linear(s, host(s, x, sx, 2), host(s, w, sw, 2), host(s, b, sb, 1));
    expect(y, (const float[]){1 - 3 + 0.5f, 2 + 2 - 1}, 2, 1e-6, "linear");
    const float a[] = {-1, 0, 2};
    const int64_t sa[] = {3};
    lsdt_tensor *t = host(s, a, sa, 1);
    float silu[3], qg[3], ge[3];
    for (int i = 0; i < 3; i++) {
        silu[i] = a[i] / (1 + expf(-a[i]));
        qg[i] = a[i] / (1 + expf(-1.702f * a[i]));
        ge[i] = 0.5f * a[i] * (1 + erff(a[i] / sqrtf(2)));
    }
    expect(lsdt_silu(s, t), silu, 3, 1e-6, "silu");
    expect(lsdt_quick_gelu(s, t), qg, 3, 1e-6, "quick_gelu");
    expect(lsdt_gelu(s, t), ge, 3, 1e-6, "gelu");
    CHECK(lsdt_scope_end(s) == 0);
}

TEST(shim_conv_and_norms)
{
    lsdt_scope *s = lsdt_scope_begin();
    /* 1x1x3x3 input, 1x1x2x2 kernel of ones, stride 1, no padding: sums of 2x2 windows. */
    const float x[] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, k[] = {1, 1, 1, 1};
    const int64_t sx[] = {1, 1, 3, 3}, sk[] = {1, 1, 2, 2};
    lsdt_tensor *xt = host(s, x, sx, 4);
    expect(lsdt_conv2d(s, xt, host(s, k, sk, 4), NULL, 1, 0), (const float[]){12, 16, 24, 28}, 4, 1e-6, "conv2d");
    expect(lsdt_conv2d(s, lsdt_channels_last(s, xt), host(s, k, sk, 4), NULL, 2, 1), (const float[]){1, 5, 11, 28},
           4, 1e-6, "conv2d channels_last stride 2 pad 1");
    /* group norm, 1 group over 4 values 1..4: mean 2.5, var 1.25. */
    const float g[] = {1, 2, 3, 4};
    const int64_t sg[] = {1, 4, 1, 1};
    float want[4];
    for (int i = 0; i < 4; i++)
        want[i] = (g[i] - 2.5f) / sqrtf(1.25f + 1e-5f);
    expect(lsdt_group_norm(s, host(s, g, sg, 4), 1, NULL, NULL, 1e-5), want, 4, 1e-5, "group_norm");
    const int64_t sl[] = {1, 4};
    const float lw[] = {2, 2, 2, 2}, lb[] = {1, 1, 1, 1};
    const int64_t s4[] = {4};
    float wl[4];
    for (int i = 0; i < 4; i++)
        wl[i] = 2 * want[i] + 1;
    expect(lsdt_layer_norm(s, host(s, g, sl, 2), host(s, lw, s4, 1), host(s, lb, s4, 1), 1e-5), wl, 4, 1e-5,
           "layer_norm");
    const int64_t su[] = {1, 1, 1, 2};
    expect(lsdt_upsample_nearest2x(s, host(s, (const float[]){1, 2}, su, 4)), (const float[]){1, 1, 2, 2, 1, 1, 2, 2},
           8, 0, "upsample");
    expect(lsdt_pad2d(s, host(s, (const float[]){1, 2}, su, 4), 0, 1, 0, 1), (const float[]){1, 2, 0, 0, 0, 0}, 6, 0,
           "pad2d");
    CHECK(lsdt_scope_end(s) == 0);
}

TEST(shim_attention_matches_softmax_formula)
{
    lsdt_scope *s = lsdt_scope_begin();
    /* B=1, H=1, T=2, D=2. */
    const float q[] = {1, 0, 0, 1}, k[] = {1, 0, 0, 2}, v[] = {1, 2, 3, 4};
    const int64_t sh[] = {1, 1, 2, 2};
    lsdt_tensor *qt = host(s, q, sh, 4), *kt = host(s, k, sh, 4), *vt = host(s, v, sh, 4);
    float want[4], want_causal[4];
    double sc = 1 / sqrt(2.0);
    for (int i = 0; i < 2; i++) {
        double s0 = (q[2 * i] * k[0] + q[2 * i + 1] * k[1]) * sc, s1 = (q[2 * i] * k[2] + q[2 * i + 1] * k[3]) * sc;
        double p0 = exp(s0) / (exp(s0) + exp(s1)), p1 = 1 - p0;
        for (int d = 0; d < 2; d++)
            want[2 * i + d] = (float)(p0 * v[d] + p1 * v[2 + d]);
    }
    want_causal[0] = v[0];
    want_causal[1] = v[1];
    want_causal[2] = want[2];
    want_causal[3] = want[3];
    expect(lsdt_attention(s, qt, kt, vt, 0, 0, 0, 0), want, 4, 1e-6, "attention");
    expect(lsdt_attention(s, qt, kt, vt, 0, 0, 1, 1), want, 4, 1e-6, "attention chunked, upcast");
    expect(lsdt_attention(s, qt, kt, vt, 1, 0, 0, 0), want_causal, 4, 1e-6, "causal attention");
    CHECK(lsdt_scope_end(s) == 0);
}

TEST(shim_shapes_and_arithmetic)
{
    lsdt_scope *s = lsdt_scope_begin();
    const float a[] = {1, 2, 3, 4, 5, 6};
    const int64_t sa[] = {2, 3};
    lsdt_tensor *t = host(s, a, sa, 2);
    expect(lsdt_chunk(s, t, 3, 1, 1), (const float[]){2, 5}, 2, 0, "chunk");
    lsdt_tensor *parts[] = {t, t};
    lsdt_tensor *c = lsdt_cat(s, parts, 2, 0);
    CHECK(lsdt_size(c, 0) == 4 && lsdt_size(c, -1) == 3 && lsdt_numel(c) == 12);
    expect(lsdt_transpose(s, t, 0, 1), (const float[]){1, 4, 2, 5, 3, 6}, 6, 0, "transpose");
    expect(lsdt_add_scaled(s, t, t, -0.5), (const float[]){0.5f, 1, 1.5f, 2, 2.5f, 3}, 6, 0, "add_scaled");
    expect(lsdt_mse_loss(s, t, lsdt_zeros(s, sa, 2, LSDT_F32, "cpu")), (const float[]){91.0f / 6}, 1, 1e-5, "mse");
    const int dims[] = {1};
    expect(lsdt_mean_dims(s, t, dims, 1), (const float[]){2, 5}, 2, 0, "mean_dims");
    const int64_t ids[] = {1, 0};
    const int64_t si[] = {2};
    lsdt_tensor *it = lsdt_from_host(s, ids, LSDT_I64, si, 1, LSDT_I64, "cpu");
    expect(lsdt_embedding(s, it, t), (const float[]){4, 5, 6, 1, 2, 3}, 6, 0, "embedding");
    CHECK(lsdt_scope_end(s) == 0);
}

TEST(shim_errors_are_sticky)
{
    lsdt_scope *s = lsdt_scope_begin();
    const float a[] = {1, 2, 3};
    const int64_t s3[] = {3}, s2[] = {2};
    lsdt_tensor *x = host(s, a, s3, 1), *y = host(s, a, s2, 1);
    lsdt_tensor *bad = lsdt_add(s, x, y); /* 3 vs 2: broadcast error */
    CHECK(bad == NULL);
    CHECK(lsdt_scope_status(s) == LSD_ERR_SHAPE_MISMATCH);
    CHECK(lsdt_silu(s, x) == NULL, "a failed scope short-circuits later ops");
    CHECK(lsdt_silu(s, bad) == NULL);
    int st = lsdt_scope_end(s);
    CHECK(st == LSD_ERR_SHAPE_MISMATCH, "status %d", st);
    CHECK(strstr(lsdt_last_error(), "add") != NULL, "message names the op: %s", lsdt_last_error());
    CHECK(lsdi_error_from_shim(st) == LSD_ERR_SHAPE_MISMATCH && strstr(lsd_last_error(), "add"));

    s = lsdt_scope_begin();
    CHECK(lsdt_silu(s, NULL) == NULL);
    CHECK(lsdt_scope_end(s) == LSD_ERR_INVALID_ARGUMENT && strstr(lsdt_last_error(), "NULL"));

    float out[2];
    lsdt_tensor *owned = lsdt_from_host(NULL, a, LSDT_F32, s3, 1, LSDT_F32, "cpu");
    CHECK(lsdt_to_host(owned, out, LSDT_F32, 2) == LSD_ERR_INVALID_ARGUMENT, "wrong element count is refused");
    lsdt_free(owned);
    CHECK(lsdt_device_check("cpu") == 0);
    CHECK(lsdt_device_check("tpu") != 0 && strstr(lsdt_last_error(), "tpu"), "%s", lsdt_last_error());
    CHECK(lsdt_cuda_device_count() > 0 || lsdt_device_check("cuda:0") == LSD_ERR_DEVICE);
}

TEST(shim_scope_keep_survives)
{
    lsdt_scope *s = lsdt_scope_begin();
    const float a[] = {1, 2};
    const int64_t s2[] = {2};
    lsdt_tensor *kept = lsdt_scope_keep(s, lsdt_mul_scalar(s, host(s, a, s2, 1), 3));
    CHECK(lsdt_scope_end(s) == 0);
    expect(kept, (const float[]){3, 6}, 2, 0, "kept tensor");
    lsdt_free(kept);
}

static void count_release(void *ctx)
{
    (*(int *)ctx)++;
}

/* A tensor over host memory whose storage reports when its last reference goes. */
static lsdt_tensor *watched(lsdt_scope *s, float *v, int *released)
{
    const int64_t s2[] = {2};
    return lsdt_from_blob(s, v, LSDT_F32, s2, 1, count_release, released);
}

TEST(shim_child_scope_frees_what_is_dead)
{
    float a[2] = {1, 2}, b[2] = {3, 4}, c[2] = {5, 6};
    int ra = 0, rb = 0, rc = 0;
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *in = watched(s, a, &ra);
    lsdt_scope *k = lsdt_scope_child(s);
    lsdt_tensor *mid = watched(k, b, &rb);
    lsdt_tensor *view = lsdt_narrow(k, mid, 0, 0, 1); /* a view keeps its base's storage until it goes too */
    lsdt_tensor *out = lsdt_scope_return(k, lsdt_add(k, in, lsdt_mul_scalar(k, mid, 2)));
    (void)view;
    CHECK(rb == 1, "the intermediate and its view are freed by the return (released %d)", rb);
    CHECK(ra == 0, "the parent's input survives");
    expect(out, (const float[]){7, 10}, 2, 0, "returned result");

    /* drop frees what the scope owns now, and leaves the caller's tensors alone */
    lsdt_tensor *d = watched(s, c, &rc);
    k = lsdt_scope_child(s);
    lsdt_scope_drop(k, d);
    lsdt_scope_drop(k, in);
    CHECK(rc == 0 && ra == 0, "drop in a child leaves its parent's tensors");
    lsdt_scope_drop(s, d);
    CHECK(rc == 1, "drop frees an owned tensor at once");
    CHECK(lsdt_scope_return(k, in) == in, "a tensor the child does not own passes through");
    CHECK(lsdt_scope_end(s) == 0);
    CHECK(ra == 1);

    /* under autograd the graph keeps what backward needs, whatever the scopes free */
    float w[2] = {1, 1};
    int rw = 0;
    lsdt_tensor *p = lsdt_from_host(NULL, w, LSDT_F32, (const int64_t[]){2}, 1, LSDT_F32, "cpu");
    lsdt_set_requires_grad(p, 1);
    s = lsdt_scope_begin();
    k = lsdt_scope_child(s);
    lsdt_tensor *loss = lsdt_scope_return(k, lsdt_sum(k, lsdt_mul(k, watched(k, b, &rw), p)));
    CHECK(rw == 0, "the saved input of mul survives the child");
    CHECK(lsdt_backward(loss) == 0, "%s", lsdt_last_error());
    expect(lsdt_grad(s, p), (const float[]){3, 4}, 2, 0, "gradient through a returned child");
    CHECK(lsdt_scope_end(s) == 0);
    CHECK(rw == 1, "freed with the graph");
    lsdt_free(p);
}

TEST(shim_child_scope_errors_reach_the_parent)
{
    const float a[] = {1, 2, 3};
    const int64_t s3[] = {3}, s2[] = {2};
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *x = host(s, a, s3, 1);
    lsdt_scope *k = lsdt_scope_child(s);
    lsdt_tensor *bad = lsdt_add(k, x, host(k, a, s2, 1));
    CHECK(lsdt_scope_return(k, bad) == NULL);
    CHECK(lsdt_scope_status(s) == LSD_ERR_SHAPE_MISMATCH, "the child's error is the parent's");
    k = lsdt_scope_child(s);
    CHECK(lsdt_silu(k, x) == NULL, "a child of a failed scope starts failed");
    CHECK(lsdt_scope_return(k, x) == NULL);
    CHECK(lsdt_scope_end(s) == LSD_ERR_SHAPE_MISMATCH);
    CHECK(strstr(lsdt_last_error(), "add") != NULL, "the first message is kept: %s", lsdt_last_error());
}

TEST(shim_generator_matches_torch)
{
    /* torch.randn(n, generator=torch.Generator().manual_seed(42)); n < 16 and n >= 16 take different kernels. */
    lsdt_generator *g = lsdt_generator_new(42);
    const int64_t s5[] = {5}, s20[] = {20};
    lsdt_tensor *a = lsdt_randn(NULL, g, s5, 1, LSDT_F32, "cpu");
    lsdt_generator_free(g);
    g = lsdt_generator_new(42);
    lsdt_tensor *b = lsdt_randn(NULL, g, s20, 1, LSDT_F32, "cpu");
    lsdt_generator_free(g);
    expect(a, (const float[]){0.33669036626815796f, 0.12880940735340118f, 0.23446236550807953f, 0.23033303022384644f,
                              -1.1228563785552979f},
           5, 1e-7, "randn(5)");
    float vb[20];
    CHECK(lsdt_to_host(b, vb, LSDT_F32, 20) == 0);
    CHECK_CLOSE(vb, ((const float[]){1.9269152879714966f, 1.4872840642929077f, 0.9007171988487244f}), 3, 1e-7);
    CHECK_CLOSE(vb + 16,
                ((const float[]){-0.3097267746925354f, -0.3957104980945587f, 0.8034093379974365f,
                                 -0.6215953826904297f}),
                4, 1e-7);
    lsdt_free(a);
    lsdt_free(b);
}

TEST(shim_autograd_and_inplace_ops)
{
    const float a[] = {1, -2, 3};
    const int64_t s3[] = {3};
    lsdt_tensor *p = lsdt_from_host(NULL, a, LSDT_F32, s3, 1, LSDT_F32, "cpu");
    CHECK(lsdt_set_requires_grad(p, 1) == 0);
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *loss = lsdt_sum(s, lsdt_mul(s, p, p));
    CHECK(lsdt_backward(loss) == 0);
    expect(lsdt_grad(s, p), (const float[]){2, -4, 6}, 3, 0, "d(sum x^2)/dx");
    double norm = 0;
    CHECK(lsdt_clip_grad_norm(&p, 1, 1.0, &norm) == 0);
    CHECK(fabs(norm - sqrt(56.0)) < 1e-5, "norm %f", norm);
    float gc[3];
    lsdt_to_host(lsdt_grad(s, p), gc, LSDT_F32, 3);
    CHECK(fabs(gc[0] - 2 / (sqrt(56.0) + 1e-6)) < 1e-6, "clipped grad %f", gc[0]);
    /* The optimizers' in-place pieces, on p (a leaf that requires grad) and on plain tensors. */
    CHECK(lsdt_mul_scalar_(p, 0.5) == 0 && lsdt_add_scalar_(p, 1) == 0);
    expect(p, (const float[]){1.5f, 0, 2.5f}, 3, 0, "p * 0.5 + 1");
    lsdt_tensor *x = lsdt_from_host(s, (const float[]){4, 8, -2}, LSDT_F32, s3, 1, LSDT_F32, "cpu");
    lsdt_tensor *y = lsdt_from_host(s, (const float[]){2, -4, 1}, LSDT_F32, s3, 1, LSDT_F32, "cpu");
    CHECK(lsdt_lerp_(p, x, 0.25) == 0);
    expect(p, (const float[]){2.125f, 2, 1.375f}, 3, 0, "lerp");
    CHECK(lsdt_addcmul_(p, x, y, 0.5) == 0);
    expect(p, (const float[]){6.125f, -14, 0.375f}, 3, 0, "addcmul");
    CHECK(lsdt_addcdiv_(p, x, y, -1) == 0);
    expect(p, (const float[]){4.125f, -12, 2.375f}, 3, 0, "addcdiv");
    CHECK(lsdt_addcdiv_(p, x, NULL, 1) == LSD_ERR_INVALID_ARGUMENT);
    expect(lsdt_div_scalar(s, x, 4), (const float[]){1, 2, -0.5f}, 3, 0, "div_scalar");
    expect(lsdt_sign(s, lsdt_sub(s, y, y)), (const float[]){0, 0, 0}, 3, 0, "sign(0)");
    expect(lsdt_sign(s, y), (const float[]){1, -1, 1}, 3, 0, "sign");
    expect(lsdt_abs(s, y), (const float[]){2, 4, 1}, 3, 0, "abs");
    expect(lsdt_rsqrt(s, lsdt_abs(s, x)), (const float[]){0.5f, 0.35355339f, 0.70710678f}, 3, 1e-7, "rsqrt");
    CHECK(lsdt_scope_end(s) == 0);
    lsdt_no_grad_begin();
    s = lsdt_scope_begin();
    CHECK(!lsdt_requires_grad(lsdt_mul(s, p, p)), "no-grad region records nothing");
    lsdt_scope_end(s);
    lsdt_no_grad_end();
    lsdt_free(p);
}

/* The ops that may reuse a dead input's memory: the same values as the plain ops, and the input's memory really taken
 * only when nothing else can see it (another handle on the storage, another scope, a gradient that needs it). */
TEST(shim_reuse_ops_take_only_dead_memory)
{
    float v[32], w4[4] = {1.5f, -1, 0.5f, 2}, b4[4] = {0.25f, 0, -0.5f, 1}, before[32], got[32], ref[32];
    for (int i = 0; i < 32; i++)
        v[i] = (float)((i * 37 % 23) - 11) * 0.3f + (i >= 16 ? 2.0f : 0.0f); /* two samples, different statistics */
    const int64_t shape[] = {2, 4, 2, 2}, sc[] = {4}, sb[] = {1, 4, 1, 1};
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *w = host(s, w4, sc, 1), *b = host(s, b4, sc, 1);
    lsdt_tensor *x = lsdt_channels_last(s, host(s, v, shape, 4));
    CHECK(lsdt_to_host(lsdt_group_norm_silu(s, x, 2, w, b, 1e-5), ref, LSDT_F32, 32) == 0);
    lsdt_tensor *y = lsdt_group_norm_silu_reuse(s, x, 2, w, b, 1e-5);
    expect(y, ref, 32, 1e-5, "group_norm_silu_reuse");
    CHECK(lsdt_to_host(x, got, LSDT_F32, 32) == 0);
    check_close_impl(__FILE__, __LINE__, "the dead input holds the result", got, ref, 32, 1e-5);

    lsdt_tensor *shared = host(s, v, shape, 4);
    CHECK(lsdt_alias(s, shared) != NULL); /* a second handle on the storage */
    lsdt_tensor *foreign = lsdt_from_host(NULL, v, LSDT_F32, shape, 4, LSDT_F32, "cpu"); /* not s's */
    lsdt_tensor *needs_grad = host(s, v, shape, 4);
    CHECK(lsdt_set_requires_grad(needs_grad, 1) == 0);
    lsdt_tensor *kept[3] = {shared, foreign, needs_grad};
    const char *why[3] = {"aliased", "another scope's", "requires grad"};
    for (int k = 0; k < 3; k++) {
        expect(lsdt_group_norm_silu_reuse(s, kept[k], 2, w, b, 1e-5), ref, 32, 1e-5, why[k]);
        CHECK(lsdt_to_host(kept[k], before, LSDT_F32, 32) == 0);
        CHECK(memcmp(before, v, sizeof v) == 0, "%s input left as it was", why[k]);
    }

    /* a + b broadcast into a's memory; an a smaller than the result is never overwritten */
    lsdt_tensor *a = host(s, v, shape, 4), *bias = host(s, b4, sb, 4);
    float sum[32];
    for (int i = 0; i < 32; i++)
        sum[i] = v[i] + b4[(i / 4) % 4];
    expect(lsdt_add_reuse(s, a, bias), sum, 32, 0, "add_reuse");
    CHECK(lsdt_to_host(a, got, LSDT_F32, 32) == 0 && memcmp(got, sum, sizeof sum) == 0, "a holds a + b");
    lsdt_tensor *small = host(s, b4, sb, 4);
    expect(lsdt_add_reuse(s, small, host(s, v, shape, 4)), sum, 32, 0, "add_reuse broadcasting a");
    CHECK(lsdt_to_host(small, got, LSDT_F32, 4) == 0 && memcmp(got, b4, sizeof b4) == 0, "small a left alone");
    expect(lsdt_add_reuse(s, foreign, bias), sum, 32, 0, "add_reuse on another scope's tensor");
    CHECK(lsdt_to_host(foreign, got, LSDT_F32, 32) == 0 && memcmp(got, v, sizeof v) == 0, "foreign a left alone");
    CHECK(lsdt_scope_end(s) == 0);
    lsdt_free(foreign);
}

/* Large problems take the blocked path (query blocks as parallel tasks, in-place softmax), small ones and those that
 * need gradients the plain one: both must agree, causal mask included, at a size that really blocks. */
TEST(shim_attention_blocked_matches_plain)
{
    const int64_t shape[4] = {1, 2, 2100, 8}; /* 2 x 2100 x 2100 scores: over the 4M-element threshold */
    lsdt_generator *g = lsdt_generator_new(3);
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *q = lsdt_randn(s, g, shape, 4, LSDT_F32, "cpu"), *k = lsdt_randn(s, g, shape, 4, LSDT_F32, "cpu"),
                *v = lsdt_randn(s, g, shape, 4, LSDT_F32, "cpu");
    lsdt_generator_free(g);
    size_t n = 2 * 2100 * 8;
    float *blocked = malloc(n * sizeof(float)), *plain = malloc(n * sizeof(float));
    for (int causal = 0; causal < 2; causal++) {
        CHECK(lsdt_to_host(lsdt_attention(s, q, k, v, causal, 0, 0, 0), blocked, LSDT_F32, n) == 0, "%s",
              lsdt_last_error());
        lsdt_tensor *qg = lsdt_clone(s, q);
        lsdt_set_requires_grad(qg, 1); /* forces the differentiable path */
        CHECK(lsdt_to_host(lsdt_attention(s, qg, k, v, causal, 0, 0, 0), plain, LSDT_F32, n) == 0);
        CHECK_CLOSE(blocked, plain, n, 2e-6);
        CHECK(lsdt_to_host(lsdt_attention(s, q, k, v, causal, 0, 300, 0), blocked, LSDT_F32, n) == 0);
        CHECK_CLOSE(blocked, plain, n, 2e-6);
    }
    free(blocked);
    free(plain);
    CHECK(lsdt_scope_end(s) == 0, "%s", lsdt_last_error());
}

/* softmax(q k^T / sqrt(d) + mask) v from separate ops: the reference for the blocked path's gradients. */
static lsdt_tensor *attention_by_ops(lsdt_scope *s, lsdt_tensor *q, lsdt_tensor *k, lsdt_tensor *v, lsdt_tensor *mask)
{
    lsdt_tensor *qs = lsdt_mul_scalar(s, q, 1 / sqrt((double)lsdt_size(q, 3)));
    lsdt_tensor *sc = lsdt_matmul(s, qs, lsdt_transpose(s, k, 2, 3));
    return lsdt_matmul(s, lsdt_softmax(s, mask ? lsdt_add(s, sc, mask) : sc, -1), v);
}

/* Above the size where attention takes the blocked path, its backward (recomputed per block from the saved row
 * log-sum-exps) gives the gradients of the plain formula, causal mask and ragged last block included. */
TEST(shim_attention_blocked_gradients)
{
    enum { T = 2100, D = 8 };
    const int64_t shape[4] = {1, 2, T, D};
    size_t n = 2 * T * D;
    lsdt_generator *g = lsdt_generator_new(5);
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *x[3], *w = lsdt_randn(s, g, shape, 4, LSDT_F32, "cpu");
    for (int i = 0; i < 3; i++) {
        x[i] = lsdt_randn(NULL, g, shape, 4, LSDT_F32, "cpu");
        lsdt_set_requires_grad(x[i], 1);
    }
    lsdt_generator_free(g);
    float *mask = malloc((size_t)T * T * sizeof *mask), *got = malloc(n * sizeof *got);
    float *want = malloc(n * sizeof *want);
    for (size_t r = 0; r < T; r++)
        for (size_t c = 0; c < T; c++)
            mask[r * T + c] = c > r ? -INFINITY : 0.0f;
    const int64_t ms[2] = {T, T};
    lsdt_tensor *mt = lsdt_from_host(s, mask, LSDT_F32, ms, 2, LSDT_F32, "cpu");
    for (int causal = 0; causal < 2; causal++)
        for (int chunk = 0; chunk <= 300; chunk += 300) {
            lsdt_tensor *ref[3], *y = attention_by_ops(s, x[0], x[1], x[2], causal ? mt : NULL);
            CHECK(lsdt_backward(lsdt_sum(s, lsdt_mul(s, y, w))) == 0, "%s", lsdt_last_error());
            for (int i = 0; i < 3; i++)
                ref[i] = lsdt_clone(s, lsdt_grad(s, x[i]));
            lsdt_zero_grad(x, 3);
            y = lsdt_attention(s, x[0], x[1], x[2], causal, 0, chunk, 0);
            CHECK(lsdt_backward(lsdt_sum(s, lsdt_mul(s, y, w))) == 0, "%s", lsdt_last_error());
            for (int i = 0; i < 3; i++) {
                CHECK(lsdt_to_host(ref[i], want, LSDT_F32, n) == 0);
                CHECK(lsdt_to_host(lsdt_grad(s, x[i]), got, LSDT_F32, n) == 0);
                double scale = 0;
                for (size_t j = 0; j < n; j++)
                    scale = fmax(scale, fabs(want[j]));
                CHECK(max_abs_diff(got, want, n) <= 2e-5 * scale, "grad %d (causal %d, chunk %d): %g vs max %g", i,
                      causal, chunk, max_abs_diff(got, want, n), scale);
            }
            lsdt_zero_grad(x, 3);
        }
    CHECK(lsdt_scope_end(s) == 0, "%s", lsdt_last_error());
    for (int i = 0; i < 3; i++)
        lsdt_free(x[i]);
    free(mask);
    free(got);
    free(want);
}

/* A block y = silu(x W^T) * p where p (like an adapter inside a UNet block) is not an input. */
typedef struct {
    lsdt_tensor *w, *p;
    int calls, fail_at;
} ck_block;

static lsdt_tensor *ck_fn(lsdt_scope *s, const lsdt_tensor *const *in, int n, const void *user)
{
    ck_block *b = (ck_block *)user;
    (void)n;
    if (++b->calls == b->fail_at) {
        lsdt_scope_fail(s, LSD_ERR_NUMERIC, "block failed on purpose");
        return NULL;
    }
    return lsdt_mul(s, lsdt_silu(s, lsdt_linear(s, in[0], b->w, NULL)), b->p);
}

/* The loss sum(block(x)^2) plain or checkpointed; the gradients of p and (if it requires them) x into gp, gx. */
static int ck_run(ck_block *b, lsdt_tensor *x, int checkpoint, float *gp, float *gx)
{
    lsdt_scope *s = lsdt_scope_begin();
    const lsdt_tensor *in[1] = {x};
    lsdt_tensor *y = checkpoint ? lsdt_checkpoint(s, ck_fn, b, in, 1) : ck_fn(s, in, 1, b);
    int rc = lsdt_backward(lsdt_sum(s, lsdt_mul(s, y, y)));
    if (!rc) {
        CHECK(lsdt_to_host(lsdt_grad(s, b->p), gp, LSDT_F32, 4) == 0);
        if (gx)
            CHECK(lsdt_to_host(lsdt_grad(s, x), gx, LSDT_F32, 6) == 0);
    }
    lsdt_zero_grad(&b->p, 1);
    lsdt_zero_grad(&x, 1);
    lsdt_scope_end(s);
    return rc;
}

TEST(shim_checkpoint_gradients_match_plain)
{
    const float xv[6] = {0.5f, -1, 2, 0.25f, 1.5f, -0.75f};
    const float wv[12] = {1, -0.5f, 0.25f, 2, 0, -1, 0.5f, 0.5f, -2, 1, 1, 0.1f};
    const float pv[4] = {1.5f, -0.5f, 2, 0.25f};
    const int64_t xs[2] = {2, 3}, ws[2] = {4, 3}, ps[1] = {4};
    ck_block b = {lsdt_from_host(NULL, wv, LSDT_F32, ws, 2, LSDT_F32, "cpu"),
                  lsdt_from_host(NULL, pv, LSDT_F32, ps, 1, LSDT_F32, "cpu"), 0, 0};
    lsdt_set_requires_grad(b.p, 1);
    lsdt_tensor *x = lsdt_from_host(NULL, xv, LSDT_F32, xs, 2, LSDT_F32, "cpu");
    float gp0[4], gp1[4], gx0[6], gx1[6];
    /* x needs no gradient: only the parameter inside the block does (the first adapted block of a UNet) */
    CHECK(ck_run(&b, x, 0, gp0, NULL) == 0 && b.calls == 1);
    b.calls = 0;
    CHECK(ck_run(&b, x, 1, gp1, NULL) == 0, "%s", lsdt_last_error());
    CHECK(b.calls == 2, "run once in forward, once more in backward: %d", b.calls);
    CHECK_CLOSE(gp1, gp0, 4, 0);
    /* x needs one too */
    lsdt_set_requires_grad(x, 1);
    CHECK(ck_run(&b, x, 0, gp0, gx0) == 0);
    CHECK(ck_run(&b, x, 1, gp1, gx1) == 0, "%s", lsdt_last_error());
    CHECK_CLOSE(gp1, gp0, 4, 0);
    CHECK_CLOSE(gx1, gx0, 6, 0);
    /* a block with nothing to train runs once */
    lsdt_set_requires_grad(x, 0);
    lsdt_set_requires_grad(b.p, 0);
    b.calls = 0;
    lsdt_scope *s = lsdt_scope_begin();
    const lsdt_tensor *in[1] = {x};
    CHECK(!lsdt_requires_grad(lsdt_checkpoint(s, ck_fn, &b, in, 1)) && b.calls == 1);
    CHECK(lsdt_scope_end(s) == 0);
    /* a failure while backward runs the block again comes back with the block's status and message */
    lsdt_set_requires_grad(b.p, 1);
    b.calls = 0;
    b.fail_at = 2;
    CHECK(ck_run(&b, x, 1, gp1, NULL) == LSD_ERR_NUMERIC, "%d", lsdt_last_status());
    CHECK(strstr(lsdt_last_error(), "block failed on purpose") != NULL, "%s", lsdt_last_error());
    lsdt_free(x);
    lsdt_free(b.w);
    lsdt_free(b.p);
}

/* Mappings of at least min_kb whose VmFlags carry "hg" (madvise(MADV_HUGEPAGE)): the kernel lists the advice whether
 * or not it has transparent huge pages on. */
static int advised_regions(long min_kb)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    long size = 0;
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "Size:", 5))
            size = atol(line + 5);
        else if (!strncmp(line, "VmFlags:", 8) && strstr(line, " hg") && size >= min_kb)
            n++;
    }
    if (f)
        fclose(f);
    return n;
}

/* Blocks of 4 MiB and more are the library's own huge-page mappings, gone when freed; smaller ones are not. */
TEST(shim_large_blocks_on_huge_pages)
{
    const char *env = getenv("LSD_HUGE_PAGES");
    lsdi_runtime_init(); /* installs the allocator, as the first model does */
    int64_t big[1] = {4 << 20}, small[1] = {256 << 10}; /* 16 MiB, 1 MiB of floats */
    int before = advised_regions(16 << 10), before_all = advised_regions(0);
    lsdt_tensor *t = lsdt_zeros(NULL, big, 1, LSDT_F32, "cpu");
    CHECK(t != NULL, "%s", lsdt_last_error());
    int during = advised_regions(16 << 10);
    lsdt_free(t);
    CHECK(during == before + (env && !strcmp(env, "0") ? 0 : 1), "advised 16 MiB regions: %d, then %d", before,
          during);
    CHECK(advised_regions(16 << 10) == before, "the block is unmapped when freed");
    t = lsdt_zeros(NULL, small, 1, LSDT_F32, "cpu");
    CHECK(t && advised_regions(0) == before_all, "a 1 MiB block stays with glibc");
    lsdt_free(t);
}
