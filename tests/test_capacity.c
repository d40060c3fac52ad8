/* The *_n forms (0.2): the 0.1 calls with the room of their output buffers. With room enough they write what the 0.1
 * form writes; one float (or image) short, they fail before any work, naming the buffer, its shape and both counts,
 * and leave the buffer as it was. */
#include <math.h>
#include <stdlib.h>

#include "test.h"

#define CANARY 12345.0f

static float *canaries(size_t n)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; v && i < n; i++)
        v[i] = CANARY;
    return v;
}

static int untouched(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] != CANARY)
            return 0;
    return 1;
}

static int same(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof *a) == 0;
}

TEST(capacity_model_calls)
{
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    lsd_model_info mi = {.struct_size = sizeof mi};
    CHECK_OK(lsd_model_get_info(m, &mi));
    const int B = 2, T = mi.max_tokens, D = mi.context_dim, C = mi.latent_channels, F = mi.vae_scale_factor;
    const int h = 4, w = 4, H = h * F, W = w * F;
    char want[256];

    /* text: [B, T, D] */
    const char *prompts[2] = {"a red cube", "a blue sphere"};
    size_t nh = (size_t)B * T * D;
    float *ref = canaries(nh), *got = canaries(nh);
    CHECK_OK(lsd_model_encode_text(m, prompts, B, 0, ref));
    CHECK_OK(lsd_model_encode_text_n(m, prompts, B, 0, got, nh));
    CHECK(same(ref, got, nh), "encode_text_n differs from encode_text");
    float *short_buf = canaries(nh);
    snprintf(want, sizeof want, "lsd_model_encode_tokens: hidden_out holds %zu floats; [%d, %d, %d] needs %zu", nh - 1,
             B, T, D, nh);
    CHECK_STATUS(lsd_model_encode_text_n(m, prompts, B, 0, short_buf, nh - 1), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(untouched(short_buf, nh), "a refused call wrote hidden_out");
    int64_t *ids = calloc((size_t)B * T, sizeof *ids);
    for (int b = 0; b < B && ids; b++)
        CHECK_OK(lsd_model_tokenize(m, prompts[b], ids + (size_t)b * T, T, NULL));
    CHECK_OK(lsd_model_encode_tokens_n(m, ids, B, T, 0, got, nh));
    CHECK(same(ref, got, nh), "encode_tokens_n differs from encode_text");
    CHECK_STATUS(lsd_model_encode_tokens_n(m, ids, B, T, 0, short_buf, nh - 1), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(untouched(short_buf, nh), "a refused call wrote hidden_out");
    lsd_status st = LSD_OK;
    char rec[512];
    lsd_model_last_error(m, &st, rec, sizeof rec);
    CHECK(st == LSD_ERR_INVALID_ARGUMENT && strcmp(rec, want) == 0, "the model's record: %s", rec);
    free(ids);

    /* UNet: [B, C, h, w] */
    size_t nl = (size_t)B * C * h * w;
    float *x = canaries(nl), *y0 = canaries(nl), *y1 = canaries(nl), *ys = canaries(nl), t = 500.0f;
    for (size_t i = 0; i < nl; i++)
        x[i] = sinf((float)i);
    CHECK_OK(lsd_model_unet(m, x, B, h, w, &t, 1, ref, T, y0));
    CHECK_OK(lsd_model_unet_n(m, x, B, h, w, &t, 1, ref, T, y1, nl));
    CHECK(same(y0, y1, nl), "unet_n differs from unet");
    snprintf(want, sizeof want, "lsd_model_unet: out holds %zu floats; [%d, %d, %d, %d] needs %zu", nl - 1, B, C, h, w,
             nl);
    CHECK_STATUS(lsd_model_unet_n(m, x, B, h, w, &t, 1, ref, T, ys, nl - 1), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(untouched(ys, nl), "a refused call wrote out");

    /* VAE: image [B, 3, H, W] <-> latents [B, C, h, w] */
    size_t ni = (size_t)B * 3 * H * W;
    float *img0 = canaries(ni), *img1 = canaries(ni), *imgs = canaries(ni);
    CHECK_OK(lsd_model_vae_decode(m, x, B, h, w, img0));
    CHECK_OK(lsd_model_vae_decode_n(m, x, B, h, w, img1, ni));
    CHECK(same(img0, img1, ni), "vae_decode_n differs from vae_decode");
    snprintf(want, sizeof want, "lsd_model_vae_decode: image_out holds %zu floats; [%d, 3, %d, %d] needs %zu", ni - 1, B,
             H, W, ni);
    CHECK_STATUS(lsd_model_vae_decode_n(m, x, B, h, w, imgs, ni - 1), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(untouched(imgs, ni), "a refused call wrote image_out");
    float *mean0 = canaries(nl), *lv0 = canaries(nl), *mean1 = canaries(nl), *lv1 = canaries(nl);
    CHECK_OK(lsd_model_vae_encode(m, img0, B, H, W, mean0, lv0));
    CHECK_OK(lsd_model_vae_encode_n(m, img0, B, H, W, mean1, lv1, nl));
    CHECK(same(mean0, mean1, nl) && same(lv0, lv1, nl), "vae_encode_n differs from vae_encode");
    for (size_t i = 0; i < nl; i++)
        mean1[i] = lv1[i] = CANARY;
    snprintf(want, sizeof want,
             "lsd_model_vae_encode: mean_out (and logvar_out) holds %zu floats; [%d, %d, %d, %d] needs %zu", nl - 1, B,
             C, h, w, nl);
    CHECK_STATUS(lsd_model_vae_encode_n(m, img0, B, H, W, mean1, lv1, nl - 1), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(untouched(mean1, nl) && untouched(lv1, nl), "a refused call wrote mean_out or logvar_out");

    free(ref), free(got), free(short_buf), free(x), free(y0), free(y1), free(ys);
    free(img0), free(img1), free(imgs), free(mean0), free(lv0), free(mean1), free(lv1);
    lsd_model_free(m);
}

TEST(capacity_sample)
{
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    lsd_model_info mi = {.struct_size = sizeof mi};
    CHECK_OK(lsd_model_get_info(m, &mi));
    const char *prompts[2] = {"a red cube", "a tree"};
    lsd_sample_params p;
    lsd_sample_params_init(&p);
    p.prompts = prompts;
    p.batch = 2;
    p.steps = 2;
    p.width = p.height = 32;
    p.seed = 3;
    const int h = 32 / mi.vae_scale_factor;
    size_t nl = (size_t)2 * mi.latent_channels * h * h;
    float *lat0 = canaries(nl), *lat1 = canaries(nl);
    lsd_image im0[2], im1[2];
    memset(im0, 0, sizeof im0);
    memset(im1, 0, sizeof im1);
    for (int i = 0; i < 2; i++)
        im0[i].struct_size = im1[i].struct_size = sizeof(lsd_image);
    CHECK_OK(lsd_sample(m, &p, im0, lat0));
    CHECK_OK(lsd_sample_n(m, &p, im1, 2, lat1, nl));
    CHECK(same(lat0, lat1, nl), "sample_n's latents differ from sample's");
    for (int i = 0; i < 2; i++)
        CHECK(im0[i].data && im1[i].data && memcmp(im0[i].data, im1[i].data, 32 * 32 * 3) == 0, "image %d differs", i);

    lsd_image one = {.struct_size = sizeof one};
    CHECK_STATUS(lsd_sample_n(m, &p, &one, 1, NULL, 0), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_sample_n: images_out holds 1 images; batch is 2");
    CHECK(one.data == NULL, "a refused call wrote an image");
    float *shorter = canaries(nl);
    char want[256];
    snprintf(want, sizeof want, "lsd_sample_n: latents_out holds %zu floats; [2, %d, %d, %d] needs %zu", nl - 1,
             mi.latent_channels, h, h, nl);
    CHECK_STATUS(lsd_sample_n(m, &p, NULL, 0, shorter, nl - 1), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(untouched(shorter, nl), "a refused call wrote latents_out");
    /* what lsd_sample refuses keeps lsd_sample's message */
    p.width = 33;
    CHECK_STATUS(lsd_sample_n(m, &p, im1, 2, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "width = 33 is not a multiple of 8");
    for (int i = 0; i < 2; i++) {
        lsd_image_release(&im0[i]);
        lsd_image_release(&im1[i]);
    }
    free(lat0), free(lat1), free(shorter);
    lsd_model_free(m);
}
