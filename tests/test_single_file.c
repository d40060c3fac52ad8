/* Original-layout single files (.safetensors and .ckpt) load through the key map and give diffusers' outputs;
 * hostile files are refused; hub ids resolve from the local cache; convert writes a file that loads back. */
#include <stdlib.h>
#include <unistd.h>

#include "test.h"

#define SF(rel) data_path("sd-tiny-sf/" rel)
#define REF SF("ref/outputs.safetensors")

static lsd_model *load_with_configs(const char *path)
{
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.config_dir = SF("model");
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(path, &p, &m));
    return m;
}

/* Every output of ref/outputs.safetensors within 1e-4 of the model's. */
static void check_reference_outputs(lsd_model *m)
{
    if (!m)
        return;
    float *sample = load_f32(REF, "unet_sample", NULL, NULL, NULL);
    float *ctx = load_f32(REF, "unet_context", NULL, NULL, NULL);
    float *want = load_f32(REF, "unet_out", NULL, NULL, NULL);
    float got[1 * 4 * 16 * 16], t = 250;
    CHECK_OK(lsd_model_unet(m, sample, 1, 16, 16, &t, 1, ctx, 77, got));
    CHECK_CLOSE(got, want, 1024, 1e-4);
    free(sample), free(ctx), free(want);

    float *lat = load_f32(REF, "vae_latents", NULL, NULL, NULL);
    float *dec = load_f32(REF, "vae_decoded", NULL, NULL, NULL);
    float img[3 * 32 * 32];
    CHECK_OK(lsd_model_vae_decode(m, lat, 1, 16, 16, img));
    CHECK_CLOSE(img, dec, 3 * 32 * 32, 1e-4);
    free(lat), free(dec);

    float *image = load_f32(REF, "vae_image", NULL, NULL, NULL);
    float *mean = load_f32(REF, "vae_mean", NULL, NULL, NULL), *logvar = load_f32(REF, "vae_logvar", NULL, NULL, NULL);
    float gm[1024], gl[1024];
    CHECK_OK(lsd_model_vae_encode(m, image, 1, 32, 32, gm, gl));
    CHECK_CLOSE(gm, mean, 1024, 1e-4);
    CHECK_CLOSE(gl, logvar, 1024, 1e-4);
    free(image), free(mean), free(logvar);

    size_t n_ids = 0;
    int64_t *ids = load_i64(REF, "te_ids", &n_ids);
    int64_t mine[77];
    int n_tok = 0;
    CHECK_OK(lsd_model_tokenize(m, "a red bicycle leaning on a wall", mine, 77, &n_tok));
    CHECK(n_ids == 77 && ids && !memcmp(mine, ids, sizeof mine) && n_tok == 7, "ids differ");
    float *hidden = load_f32(REF, "te_hidden", NULL, NULL, NULL);
    float *skip2 = load_f32(REF, "te_hidden_clip_skip2", NULL, NULL, NULL);
    float h[77 * 32];
    CHECK_OK(lsd_model_encode_tokens(m, ids, 1, 77, 1, h));
    CHECK_CLOSE(h, hidden, 77 * 32, 1e-4);
    CHECK_OK(lsd_model_encode_tokens(m, ids, 1, 77, 2, h));
    CHECK_CLOSE(h, skip2, 77 * 32, 1e-4);
    free(ids), free(hidden), free(skip2);
}

TEST(single_file_safetensors_matches_reference)
{
    lsd_model *m = load_with_configs(SF("single-file/model.safetensors"));
    check_reference_outputs(m);
    lsd_model_info info = {.struct_size = sizeof info};
    if (m) {
        CHECK_OK(lsd_model_get_info(m, &info));
        CHECK(!strcmp(info.name, "model") && strlen(info.hash) == 10, "name %s hash %s", info.name, info.hash);
    }
    lsd_model_free(m);
}

TEST(single_file_ckpt_matches_reference)
{
    lsd_model *m = load_with_configs(SF("single-file/model.ckpt"));
    check_reference_outputs(m);
    lsd_model_free(m);
}

TEST(single_file_hostile_checkpoints_refused)
{
    static const struct {
        const char *file, *culprit;
        lsd_status st;
    } cases[] = {
        {"evil_global.ckpt", "posix.system", LSD_ERR_FORMAT},
        {"evil_builtins.ckpt", "builtins.eval", LSD_ERR_FORMAT},
        {"evil_stack_global.ckpt", "builtins.exec", LSD_ERR_FORMAT},
        {"oob_tensor.ckpt", "model.diffusion_model.out.2.bias", LSD_ERR_FORMAT},
        {"short_storage.ckpt", "data/0", LSD_ERR_FORMAT},
        {"truncated.ckpt", "truncated", LSD_ERR_FORMAT},
        {"not_a_zip.ckpt", "not_a_zip.ckpt", LSD_ERR_FORMAT},
    };
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.config_dir = SF("model");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "sd-tiny-sf/single-file/bad/%s", cases[i].file);
        lsd_model *m = (lsd_model *)1;
        lsd_status st = lsd_model_load(data_path(rel), &p, &m);
        CHECK(st != LSD_OK && m == NULL, "%s loaded", cases[i].file);
        CHECK(strstr(lsd_last_error(), cases[i].culprit) != NULL, "%s: message \"%s\" lacks \"%s\"", cases[i].file,
              lsd_last_error(), cases[i].culprit);
    }
}

TEST(single_file_other_architecture_refused)
{
    /* The tiny single file read with the full SD 1.4 configs: every shape differs. */
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.config_dir = "data/configs/sd-v1-4";
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(SF("single-file/model.safetensors"), &p, &m), LSD_ERR_SHAPE_MISMATCH, "expected");
    CHECK(m == NULL);
}

TEST(hub_id_resolves_from_local_cache)
{
    const char *root = temp_dir();
    char snap[1024], refs[1024], link_target[1024], cwd[1024];
    snprintf(snap, sizeof snap, "%s/hub/models--tiny--sd/snapshots/0123abcd", root);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "mkdir -p %s %s/hub/models--tiny--sd/refs", snap, root);
    CHECK(system(cmd) == 0);
    snprintf(refs, sizeof refs, "%s/hub/models--tiny--sd/refs/main", root);
    CHECK(write_file(refs, "0123abcd\n", 9));
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    static const char *const parts[] = {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        char rel[256], link[2048];
        snprintf(rel, sizeof rel, "sd-tiny/%s", parts[i]);
        const char *src = data_path(rel);
        if (src[0] == '/')
            snprintf(link_target, sizeof link_target, "%s", src);
        else
            snprintf(link_target, sizeof link_target, "%s/%s", cwd, src);
        snprintf(link, sizeof link, "%s/%s", snap, parts[i]);
        CHECK(symlink(link_target, link) == 0, "symlink %s", link);
    }
    char *old = getenv("HF_HOME") ? strdup(getenv("HF_HOME")) : NULL;
    char *old_cache = getenv("HF_HUB_CACHE") ? strdup(getenv("HF_HUB_CACHE")) : NULL;
    unsetenv("HF_HUB_CACHE");
    setenv("HF_HOME", root, 1);
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load("tiny/sd", NULL, &m));
    lsd_model_free(m);
    CHECK_STATUS(lsd_model_load("tiny/absent", NULL, &m), LSD_ERR_NOT_FOUND, "tiny/absent");
    if (old)
        setenv("HF_HOME", old, 1);
    else
        unsetenv("HF_HOME");
    if (old_cache)
        setenv("HF_HUB_CACHE", old_cache, 1);
    free(old);
    free(old_cache);
}

TEST(diffusers_folder_with_bin_weights)
{
    /* The tiny model with its VAE given only as diffusion_pytorch_model.bin (zip + pickle). */
    const char *dir = temp_dir();
    char cwd[1024], cmd[8192];
    CHECK(getcwd(cwd, sizeof cwd) != NULL);
    const char *src = data_path("sd-tiny");
    char abs_src[2048];
    snprintf(abs_src, sizeof abs_src, "%s%s%s", src[0] == '/' ? "" : cwd, src[0] == '/' ? "" : "/", src);
    snprintf(cmd, sizeof cmd,
             "cd %s && mkdir vae && for p in model_index.json unet text_encoder tokenizer scheduler; do "
             "ln -s %s/$p $p; done && ln -s %s/vae/config.json vae/config.json && "
             "ln -s %s/vae/diffusion_pytorch_model.bin vae/diffusion_pytorch_model.bin",
             dir, abs_src, abs_src, abs_src);
    CHECK(system(cmd) == 0);
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(dir, NULL, &m));
    const char *ref = data_path("sd-tiny/ref/vae.safetensors");
    float *lat = load_f32(ref, "latents", NULL, NULL, NULL), *want = load_f32(ref, "decoded", NULL, NULL, NULL);
    static float got[2 * 3 * 32 * 32];
    if (m) {
        CHECK_OK(lsd_model_vae_decode(m, lat, 2, 16, 16, got));
        CHECK_CLOSE(got, want, 2 * 3 * 32 * 32, 1e-4);
    }
    free(lat), free(want);
    lsd_model_free(m);
}

TEST(single_file_default_configs_are_sd1)
{
    /* Without config_dir the installed SD 1.x configs apply: the tiny file then mismatches in shape. */
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(SF("single-file/model.safetensors"), NULL, &m), LSD_ERR_SHAPE_MISMATCH,
                 "model.safetensors");
}
