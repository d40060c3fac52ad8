/* lsd_model_save: single file and diffusers folder round trips give identical outputs; failures keep old files. */
#include <stdlib.h>
#include <sys/stat.h>

#include "io/atomic.h"
#include "test.h"

static int unet_out(lsd_model *m, float *out)
{
    const char *ref = data_path("sd-tiny/ref/unet.safetensors");
    float *x = load_f32(ref, "sample", NULL, NULL, NULL), *ctx = load_f32(ref, "context", NULL, NULL, NULL);
    const float t[2] = {10, 700};
    int ok = x && ctx && check_status_impl(__FILE__, __LINE__, "unet", lsd_model_unet(m, x, 2, 16, 16, t, 2, ctx,
                                                                                        77, out),
                                           LSD_OK, NULL);
    free(x), free(ctx);
    return ok;
}

static void text_out(lsd_model *m, float *out)
{
    const char *p[] = {"a red cube on a blue table"};
    CHECK_OK(lsd_model_encode_text(m, p, 1, 1, out));
}

static void expect_same_model(lsd_model *a, lsd_model *b)
{
    static float ua[2 * 4 * 16 * 16], ub[2 * 4 * 16 * 16], ta[77 * 32], tb[77 * 32], da[3 * 32 * 32],
        db[3 * 32 * 32];
    float lat[4 * 16 * 16];
    for (int i = 0; i < 4 * 16 * 16; i++)
        lat[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    if (!unet_out(a, ua) || !unet_out(b, ub))
        return;
    CHECK(!memcmp(ua, ub, sizeof ua), "UNet outputs differ after the round trip (%g)",
          max_abs_diff(ua, ub, sizeof ua / sizeof *ua));
    text_out(a, ta);
    text_out(b, tb);
    CHECK(!memcmp(ta, tb, sizeof ta), "text encoder outputs differ");
    CHECK_OK(lsd_model_vae_decode(a, lat, 1, 16, 16, da));
    CHECK_OK(lsd_model_vae_decode(b, lat, 1, 16, 16, db));
    CHECK(!memcmp(da, db, sizeof da), "VAE outputs differ");
}

TEST(model_save_single_file_round_trip)
{
    lsd_model *m = NULL, *back = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    if (!m)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny.safetensors", temp_dir());
    CHECK_OK(lsd_model_save(m, path, LSD_MODEL_SINGLE_FILE));
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.config_dir = data_path("sd-tiny");
    CHECK_OK(lsd_model_load(path, &p, &back));
    if (back)
        expect_same_model(m, back);
    /* The names are the original layout the converter writes. */
    lsd_safetensors *f = NULL;
    CHECK_OK(lsd_safetensors_open(path, &f));
    int found = 0;
    for (size_t i = 0; f && i < lsd_safetensors_count(f); i++) {
        lsd_tensor_info ti = {.struct_size = sizeof ti};
        lsd_safetensors_tensor_info(f, i, &ti);
        if (!strcmp(ti.name, "first_stage_model.decoder.mid.attn_1.q.weight"))
            found = ti.ndim == 4 && ti.shape[2] == 1 && ti.shape[3] == 1;
    }
    CHECK(found, "VAE attention saved as a 1x1 conv under its original name");
    lsd_safetensors_close(f);
    lsd_model_free(back);
    lsd_model_free(m);
}

TEST(model_save_diffusers_round_trip)
{
    lsd_model *m = NULL, *back = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny-sf/single-file/model.ckpt"),
                            &(lsd_model_params){.struct_size = sizeof(lsd_model_params),
                                                .config_dir = data_path("sd-tiny-sf/model")},
                            &m));
    if (!m)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/folder", temp_dir());
    CHECK_OK(lsd_model_save(m, path, LSD_MODEL_DIFFUSERS));
    CHECK_OK(lsd_model_load(path, NULL, &back));
    if (back)
        expect_same_model(m, back);
    lsd_model_free(back);
    /* Saving over it again replaces it whole. */
    CHECK_OK(lsd_model_save(m, path, LSD_MODEL_DIFFUSERS));
    CHECK_OK(lsd_model_load(path, NULL, &back));
    lsd_model_free(back);
    lsd_model_free(m);
}

TEST(model_save_failure_keeps_old_file)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    if (!m)
        return;
    char path[1024];
    snprintf(path, sizeof path, "%s/keep.safetensors", temp_dir());
    CHECK(write_file(path, "old contents", 12));
    lsdi_atomic_fail_after(2);
    CHECK_STATUS(lsd_model_save(m, path, LSD_MODEL_SINGLE_FILE), LSD_ERR_IO, path);
    lsdi_atomic_fail_after(0);
    size_t n = 0;
    char *back = read_file(path, &n);
    CHECK(back && n == 12 && !memcmp(back, "old contents", 12), "old file intact");
    free(back);
    CHECK_STATUS(lsd_model_save(m, "/nonexistent-dir/x.safetensors", LSD_MODEL_SINGLE_FILE), LSD_ERR_IO,
                 "/nonexistent-dir/x.safetensors");
    CHECK_STATUS(lsd_model_save(m, path, (lsd_model_format)7), LSD_ERR_INVALID_ARGUMENT, "format");
    CHECK_STATUS(lsd_model_save(NULL, path, LSD_MODEL_SINGLE_FILE), LSD_ERR_INVALID_ARGUMENT, "model");
    lsd_model_free(m);
}
