/* The three networks of the tiny model against diffusers / openai-CLIP reference outputs (1e-4 abs). */
#include <stdlib.h>

#include "test.h"

#define TOL 1e-4

static lsd_model *load_tiny(const char *variant)
{
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.variant = variant;
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), &p, &m));
    return m;
}

static void check_text(int clip_skip, const char *ref_name)
{
    const char *ref = data_path("sd-tiny/ref/text_encoder.safetensors");
    lsd_model *m = load_tiny(NULL);
    size_t n_ids = 0, n = 0;
    int64_t *ids = load_i64(ref, "input_ids", &n_ids);
    float *want = load_f32(ref, ref_name, NULL, NULL, &n);
    if (m && ids && want) {
        CHECK(n_ids == 2 * 77 && n == 2 * 77 * 32);
        float *got = calloc(n, sizeof *got);
        CHECK_OK(lsd_model_encode_tokens(m, ids, 2, 77, clip_skip, got));
        CHECK_CLOSE(got, want, n, TOL);
        free(got);
    }
    free(ids);
    free(want);
    lsd_model_free(m);
}

TEST(text_encoder_last_hidden_state) { check_text(1, "last_hidden_state"); }
TEST(text_encoder_clip_skip_2) { check_text(2, "clip_skip_2"); }
TEST(text_encoder_clip_skip_3) { check_text(3, "clip_skip_3"); }

TEST(text_encoder_default_clip_skip_from_params)
{
    const char *ref = data_path("sd-tiny/ref/text_encoder.safetensors");
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.clip_skip = 2;
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), &p, &m));
    size_t n_ids = 0, n = 0;
    int64_t *ids = load_i64(ref, "input_ids", &n_ids);
    float *want = load_f32(ref, "clip_skip_2", NULL, NULL, &n);
    if (m && ids && want) {
        float *got = calloc(n, sizeof *got);
        CHECK_OK(lsd_model_encode_tokens(m, ids, 2, 77, 0, got));
        CHECK_CLOSE(got, want, n, TOL);
        free(got);
    }
    free(ids);
    free(want);
    lsd_model_free(m);
}

static void check_unet(const char *sample_name, const char *t_name, int n_t, const char *out_name)
{
    const char *ref = data_path("sd-tiny/ref/unet.safetensors");
    lsd_model *m = load_tiny(NULL);
    int64_t shape[8];
    int ndim = 0;
    size_t n = 0, nt = 0, nc = 0, no = 0;
    float *x = load_f32(ref, sample_name, shape, &ndim, &n);
    float *t = load_f32(ref, t_name, NULL, NULL, &nt);
    float *ctx = load_f32(ref, "context", NULL, NULL, &nc);
    float *want = load_f32(ref, out_name, NULL, NULL, &no);
    if (m && x && t && ctx && want && ndim == 4) {
        int b = (int)shape[0];
        CHECK((int)nt == n_t && no == n);
        float *got = calloc(n, sizeof *got);
        CHECK_OK(lsd_model_unet(m, x, b, (int)shape[2], (int)shape[3], t, n_t, ctx, 77, got));
        CHECK_CLOSE(got, want, n, TOL);
        free(got);
    }
    free(x);
    free(t);
    free(ctx);
    free(want);
    lsd_model_free(m);
}

TEST(unet_output) { check_unet("sample", "timesteps", 2, "out"); }
TEST(unet_scalar_timestep) { check_unet("sample", "scalar_timestep", 1, "out_scalar_timestep"); }
TEST(unet_non_square) { check_unet("sample_12x20", "timesteps_12x20", 1, "out_12x20"); }

static void check_vae_encode(const lsd_model *mc, const char *img, const char *mean_name, const char *logvar_name)
{
    lsd_model *m = (lsd_model *)mc;
    const char *ref = data_path("sd-tiny/ref/vae.safetensors");
    int64_t shape[8];
    int ndim = 0;
    size_t n = 0, nm = 0, nl = 0;
    float *x = load_f32(ref, img, shape, &ndim, &n);
    float *mean = load_f32(ref, mean_name, NULL, NULL, &nm);
    float *logvar = load_f32(ref, logvar_name, NULL, NULL, &nl);
    if (m && x && mean && logvar && ndim == 4) {
        float *gm = calloc(nm, sizeof *gm), *gl = calloc(nl, sizeof *gl);
        CHECK_OK(lsd_model_vae_encode(m, x, (int)shape[0], (int)shape[2], (int)shape[3], gm, gl));
        CHECK_CLOSE(gm, mean, nm, TOL);
        CHECK_CLOSE(gl, logvar, nl, TOL);
        /* logvar is optional */
        CHECK_OK(lsd_model_vae_encode(m, x, (int)shape[0], (int)shape[2], (int)shape[3], gm, NULL));
        CHECK_CLOSE(gm, mean, nm, TOL);
        free(gm);
        free(gl);
    }
    free(x);
    free(mean);
    free(logvar);
}

static void check_vae_decode(lsd_model *m)
{
    const char *ref = data_path("sd-tiny/ref/vae.safetensors");
    size_t nl = 0, nd = 0;
    float *lat = load_f32(ref, "latents", NULL, NULL, &nl);
    float *want = load_f32(ref, "decoded", NULL, NULL, &nd);
    if (m && lat && want) {
        CHECK(nd == 2 * 3 * 32 * 32);
        float *got = calloc(nd, sizeof *got);
        CHECK_OK(lsd_model_vae_decode(m, lat, 2, 16, 16, got));
        CHECK_CLOSE(got, want, nd, TOL);
        free(got);
    }
    free(lat);
    free(want);
}

TEST(vae_encode)
{
    lsd_model *m = load_tiny(NULL);
    check_vae_encode(m, "image", "mean", "logvar");
    check_vae_encode(m, "image_24x40", "mean_24x40", "logvar_24x40");
    lsd_model_free(m);
}

TEST(vae_decode)
{
    lsd_model *m = load_tiny(NULL);
    check_vae_decode(m);
    lsd_model_free(m);
}

/* The fp16 variant holds the same (fp16-exact) weights: identical results after the exact upcast. */
TEST(vae_fp16_variant)
{
    lsd_model *m = load_tiny("fp16");
    check_vae_encode(m, "image", "mean", "logvar");
    check_vae_decode(m);
    lsd_model_free(m);
}
