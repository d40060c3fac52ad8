/* lsd_model_params.vae_decode_only: the VAE without encoder and quant_conv. Decoding, sampling and random init give
 * the bits of a whole-VAE model; vae_params drops by exactly the file's encoder and quant_conv elements (summed here
 * from the safetensors headers, not from the library's tables); everything that needs the encoder is refused up
 * front naming vae_decode_only, and writes nothing. */
#include <stdlib.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test.h"

#define SF(rel) data_path("sd-tiny-sf/" rel)

static lsd_model *load(const char *path, const char *config_dir, int decode_only)
{
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.config_dir = config_dir;
    p.vae_decode_only = decode_only;
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(path, &p, &m));
    return m;
}

static int64_t vae_params(const lsd_model *m)
{
    lsd_model_info info = {.struct_size = sizeof info};
    CHECK_OK(lsd_model_get_info(m, &info));
    return info.vae_params;
}

/* Elements of the tensors of a safetensors file whose names start with one of the prefixes. */
static int64_t elements_under(const char *path, const char *const *prefixes, int n_prefixes)
{
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(path, &f)))
        return -1;
    int64_t sum = 0;
    for (size_t i = 0; i < lsdi_st_count(f); i++) {
        const lsdi_st_tensor *t = lsdi_st_at(f, i);
        for (int k = 0; k < n_prefixes; k++)
            if (!strncmp(t->name, prefixes[k], strlen(prefixes[k])))
                sum += (int64_t)t->numel;
    }
    lsdi_st_close(f);
    return sum;
}

/* The decode-only model has exactly `skipped` (> 0) VAE elements less. */
static void check_fewer_params(const lsd_model *whole, const lsd_model *dec, int64_t skipped)
{
    int64_t a = vae_params(whole), b = vae_params(dec);
    CHECK(skipped > 0 && a - b == skipped, "whole %lld, decode-only %lld, encoder + quant_conv %lld", (long long)a,
          (long long)b, (long long)skipped);
}

/* Decodes latents [b, 4, h, w] with both models: the same bits. */
static void check_same_decode(lsd_model *whole, lsd_model *dec, const float *lat, int b, int h, int w)
{
    lsd_model_info info = {.struct_size = sizeof info};
    if (!CHECK_OK(lsd_model_get_info(dec, &info)))
        return;
    size_t n = (size_t)b * 3 * h * info.vae_scale_factor * w * info.vae_scale_factor;
    float *a = calloc(n, sizeof *a), *c = calloc(n, sizeof *c);
    if (a && c && CHECK_OK(lsd_model_vae_decode(whole, lat, b, h, w, a)) &&
        CHECK_OK(lsd_model_vae_decode(dec, lat, b, h, w, c)))
        CHECK(!memcmp(a, c, n * sizeof *a), "decode differs by %g", max_abs_diff(a, c, n));
    free(a);
    free(c);
}

TEST(vae_decode_only_diffusers_same_decode_fewer_params)
{
    lsd_model *whole = load(data_path("sd-tiny"), NULL, 0), *dec = load(data_path("sd-tiny"), NULL, 1);
    static const char *const enc[] = {"encoder.", "quant_conv."};
    int64_t skipped = elements_under(data_path("sd-tiny/vae/diffusion_pytorch_model.safetensors"), enc, 2);
    if (whole && dec) {
        check_fewer_params(whole, dec, skipped);
        size_t nl = 0;
        float *lat = load_f32(data_path("sd-tiny/ref/vae.safetensors"), "latents", NULL, NULL, &nl);
        CHECK(nl == 2 * 4 * 16 * 16);
        if (lat && nl == 2 * 4 * 16 * 16)
            check_same_decode(whole, dec, lat, 2, 16, 16);
        free(lat);
    }
    lsd_model_free(whole);
    lsd_model_free(dec);
}

TEST(vae_decode_only_single_file_same_decode_fewer_params)
{
    const char *path = SF("single-file/model.safetensors");
    lsd_model *whole = load(path, SF("model"), 0), *dec = load(path, SF("model"), 1);
    static const char *const enc[] = {"first_stage_model.encoder.", "first_stage_model.quant_conv."};
    int64_t skipped = elements_under(path, enc, 2);
    if (whole && dec) {
        check_fewer_params(whole, dec, skipped);
        size_t nl = 0;
        float *lat = load_f32(SF("ref/outputs.safetensors"), "vae_latents", NULL, NULL, &nl);
        CHECK(nl == 4 * 16 * 16);
        if (lat && nl == 4 * 16 * 16)
            check_same_decode(whole, dec, lat, 1, 16, 16);
        free(lat);
    }
    lsd_model_free(whole);
    lsd_model_free(dec);
}

/* The seed's stream is the whole VAE's: the decoder and the UNet drawn after it are the same tensors. */
TEST(vae_decode_only_random_init_same_weights)
{
    lsd_model_params p;
    lsd_model_params_init(&p);
    lsd_model *whole = NULL, *dec = NULL;
    CHECK_OK(lsd_model_create_random(data_path("sd-tiny"), 42, &p, &whole));
    p.vae_decode_only = 1;
    CHECK_OK(lsd_model_create_random(data_path("sd-tiny"), 42, &p, &dec));
    if (whole && dec) {
        static const char *const enc[] = {"encoder.", "quant_conv."};
        int64_t skipped = elements_under(data_path("sd-tiny/vae/diffusion_pytorch_model.safetensors"), enc, 2);
        check_fewer_params(whole, dec, skipped);
        float lat[4 * 8 * 8];
        for (size_t i = 0; i < sizeof lat / sizeof *lat; i++)
            lat[i] = (float)((int)(i * 37 % 17) - 8) / 8.0f;
        check_same_decode(whole, dec, lat, 1, 8, 8);
        float x[4 * 8 * 8], ctx[77 * 32], a[4 * 8 * 8], c[4 * 8 * 8], t = 500;
        memcpy(x, lat, sizeof x);
        for (size_t i = 0; i < sizeof ctx / sizeof *ctx; i++)
            ctx[i] = (float)((int)(i * 13 % 11) - 5) / 5.0f;
        lsd_model_info info = {.struct_size = sizeof info};
        CHECK_OK(lsd_model_get_info(dec, &info));
        CHECK(info.context_dim == 32, "context_dim %d", info.context_dim);
        if (info.context_dim == 32 && CHECK_OK(lsd_model_unet(whole, x, 1, 8, 8, &t, 1, ctx, 77, a)) &&
            CHECK_OK(lsd_model_unet(dec, x, 1, 8, 8, &t, 1, ctx, 77, c)))
            CHECK(!memcmp(a, c, sizeof a), "UNet differs by %g", max_abs_diff(a, c, 4 * 8 * 8));
    }
    lsd_model_free(whole);
    lsd_model_free(dec);
}

/* lsd_sample decodes only: the same pixels and final latents as with the whole VAE. */
TEST(vae_decode_only_sample_same_images)
{
    lsd_model *whole = load(data_path("sd-tiny"), NULL, 0), *dec = load(data_path("sd-tiny"), NULL, 1);
    lsd_sample_params p;
    lsd_sample_params_init(&p);
    p.prompt = "a red cube";
    p.width = p.height = 32;
    p.steps = 3;
    p.seed = 5;
    lsd_image a = {.struct_size = sizeof a}, c = {.struct_size = sizeof c};
    float la[4 * 16 * 16], lc[4 * 16 * 16];
    if (whole && dec && CHECK_OK(lsd_sample(whole, &p, &a, la)) && CHECK_OK(lsd_sample(dec, &p, &c, lc))) {
        CHECK(!memcmp(la, lc, sizeof la), "latents differ");
        CHECK(a.width == 32 && c.width == 32 && a.data && c.data && !memcmp(a.data, c.data, 32 * 32 * 3),
              "pixels differ");
    }
    lsd_image_release(&a);
    lsd_image_release(&c);
    lsd_model_free(whole);
    lsd_model_free(dec);
}

static int path_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

TEST(vae_decode_only_refuses_encode_train_save)
{
    lsd_model *m = load(data_path("sd-tiny"), NULL, 1);
    if (!m)
        return;
    float img[3 * 32 * 32] = {0}, mean[4 * 16 * 16], logvar[4 * 16 * 16];
    const char *want = "needs the VAE encoder, which the model loaded with vae_decode_only = 1 does not have";
    CHECK_STATUS(lsd_model_vae_encode(m, img, 1, 32, 32, mean, logvar), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(strstr(lsd_last_error(), "lsd_model_vae_encode:") == lsd_last_error(), "%s", lsd_last_error());
    CHECK_STATUS(lsd_model_vae_encode_n(m, img, 1, 32, 32, mean, NULL, 4 * 16 * 16), LSD_ERR_INVALID_ARGUMENT, want);
    char buf[256];
    lsd_status st = LSD_OK;
    lsd_model_last_error(m, &st, buf, sizeof buf);
    CHECK(st == LSD_ERR_INVALID_ARGUMENT && strstr(buf, "vae_decode_only"), "model's record: %d %s", (int)st, buf);

    const char *dir = temp_dir();
    char out[4200], saved[4200];
    snprintf(out, sizeof out, "%s/train-out", dir);
    lsd_dataset *ds = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    tp.output_dir = out;
    tp.cache_latents_to_disk = 1;
    if (CHECK_OK(lsd_dataset_open(tiny_dataset(), NULL, &ds)) && CHECK_OK(lsd_adapter_set_new(m, &set))) {
        CHECK_STATUS(lsd_trainer_new(m, set, "lora", ds, &tp, &tr), LSD_ERR_INVALID_ARGUMENT, want);
        CHECK(strstr(lsd_last_error(), "lsd_trainer_new:") == lsd_last_error(), "%s", lsd_last_error());
        CHECK(tr == NULL && !path_exists(out), "trainer %p, %s exists: %d", (void *)tr, out, path_exists(out));
    }
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_dataset_free(ds);

    snprintf(saved, sizeof saved, "%s/model.safetensors", dir);
    CHECK_STATUS(lsd_model_save(m, saved, LSD_MODEL_SINGLE_FILE), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(strstr(lsd_last_error(), "lsd_model_save:") == lsd_last_error(), "%s", lsd_last_error());
    CHECK(!path_exists(saved), "%s written", saved);
    snprintf(saved, sizeof saved, "%s/model-diffusers", dir);
    CHECK_STATUS(lsd_model_save(m, saved, LSD_MODEL_DIFFUSERS), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(!path_exists(saved), "%s written", saved);
    lsd_model_free(m);
}

/* A single file with one extra tensor under the VAE's prefix; decode-only still refuses it, encoder-named or not. */
static void check_extra_vae_tensor_refused(const char *extra)
{
    const char *src = SF("single-file/model.safetensors");
    char dst[4200];
    snprintf(dst, sizeof dst, "%s/extra.safetensors", temp_dir());
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(src, &f)))
        return;
    size_t n = lsdi_st_count(f);
    lsdi_st_entry *e = calloc(n + 1, sizeof *e);
    static const float data[3] = {1, 2, 3};
    static const int64_t shape[1] = {3};
    for (size_t i = 0; e && i < n; i++) {
        const lsdi_st_tensor *t = lsdi_st_at(f, i);
        e[i] = (lsdi_st_entry){t->name, t->dtype, t->ndim, t->shape, t->data};
    }
    if (e) {
        e[n] = (lsdi_st_entry){extra, LSDI_ST_F32, 1, shape, data};
        CHECK_OK(lsdi_st_write(dst, e, n + 1, NULL, NULL, 0));
    }
    free(e);
    lsdi_st_close(f);
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.config_dir = SF("model");
    p.vae_decode_only = 1;
    lsd_model *m = NULL;
    char want[256];
    snprintf(want, sizeof want, "1 unexpected tensor for this architecture ('%s')", extra);
    CHECK_STATUS(lsd_model_load(dst, &p, &m), LSD_ERR_FORMAT, want);
    CHECK(m == NULL);
}

TEST(vae_decode_only_single_file_rejects_unknown_vae_tensor)
{
    check_extra_vae_tensor_refused("first_stage_model.encoder.extra.weight");
    check_extra_vae_tensor_refused("first_stage_model.decoder.extra.weight");
}

TEST(vae_decode_only_param_checked)
{
    lsd_model_params p;
    lsd_model_params_init(&p);
    CHECK(p.vae_decode_only == 0);
    p.vae_decode_only = 2;
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(data_path("sd-tiny"), &p, &m), LSD_ERR_INVALID_ARGUMENT,
                 "model params: vae_decode_only 2 is not 0 or 1");
    CHECK(m == NULL);
}
