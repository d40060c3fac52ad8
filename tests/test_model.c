/* Model API: loading (variants, rejected weight files), random init, info, argument checking. */
#include <dirent.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "test.h"

static const char *sd14_configs(void)
{
    static char buf[4096];
    const char *d = getenv("LSD_DATA_DIR");
    snprintf(buf, sizeof buf, "%s/configs/sd-v1-4", d && *d ? d : "data");
    return buf;
}

/* Symlinks sd-tiny/<rel> into dst_dir. Folders are recreated and only their files linked: the test runner's
 * temp-dir cleanup would otherwise follow a folder symlink and delete the fixtures. */
static void link_into(const char *dst_dir, const char *rel)
{
    char src[PATH_MAX + 256], dst[PATH_MAX + 256];
    char *abs = realpath(data_path("sd-tiny"), NULL);
    CHECK(abs != NULL);
    if (!abs)
        return;
    snprintf(src, sizeof src, "%s/%s", abs, rel);
    snprintf(dst, sizeof dst, "%s/%s", dst_dir, rel);
    free(abs);
    struct stat sb;
    if (stat(src, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        CHECK(mkdir(dst, 0755) == 0, "mkdir %s", dst);
        DIR *d = opendir(src);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char sub[PATH_MAX + 256];
            snprintf(sub, sizeof sub, "%s/%s", rel, e->d_name);
            link_into(dst_dir, sub);
        }
        if (d)
            closedir(d);
        return;
    }
    CHECK(symlink(src, dst) == 0, "symlink %s", dst);
}

/* A copy of sd-tiny (symlinks) whose unet/ or vae/ (component) holds a weight file produced by edit(). */
typedef void (*edit_fn)(lsdi_st_entry *e, size_t *n, int64_t (*shapes)[8]);

static const char *tiny_with(const char *component, edit_fn edit)
{
    const char *dir = temp_dir();
    static char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    const char *links[] = {"model_index.json", "text_encoder", "tokenizer", "scheduler",
                           strcmp(component, "unet") ? "unet" : "vae"};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++)
        link_into(path, links[i]);
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/%s", path, component);
    CHECK(mkdir(sub, 0755) == 0);
    snprintf(sub, sizeof sub, "%s/config.json", component);
    link_into(path, sub);

    lsdi_st_file *f = NULL;
    snprintf(sub, sizeof sub, "sd-tiny/%s/diffusion_pytorch_model.safetensors", component);
    CHECK_OK(lsdi_st_open(data_path(sub), &f));
    if (!f)
        return path;
    size_t n = lsdi_st_count(f);
    lsdi_st_entry *e = calloc(n + 2, sizeof *e);
    int64_t(*shapes)[8] = calloc(n + 2, sizeof *shapes);
    for (size_t i = 0; i < n; i++) {
        const lsdi_st_tensor *t = lsdi_st_at(f, i);
        memcpy(shapes[i], t->shape, sizeof shapes[i]);
        e[i] = (lsdi_st_entry){t->name, t->dtype, t->ndim, shapes[i], t->data};
    }
    edit(e, &n, shapes);
    snprintf(sub, sizeof sub, "%s/%s/diffusion_pytorch_model.safetensors", path, component);
    CHECK_OK(lsdi_st_write(sub, e, n, NULL, NULL, 0));
    free(e);
    free(shapes);
    lsdi_st_close(f);
    return path;
}

static size_t find_entry(lsdi_st_entry *e, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, name) == 0)
            return i;
    CHECK(0, "no tensor %s in the tiny model's file", name);
    return 0;
}

static void drop_conv_in_bias(lsdi_st_entry *e, size_t *n, int64_t (*shapes)[8])
{
    (void)shapes;
    size_t i = find_entry(e, *n, "conv_in.bias");
    e[i] = e[--*n];
}

static void transpose_time_linear(lsdi_st_entry *e, size_t *n, int64_t (*shapes)[8])
{
    size_t i = find_entry(e, *n, "time_embedding.linear_1.weight");
    shapes[i][0] = 16;
    shapes[i][1] = 64;
}

static float extra_data[3];
static int64_t extra_shape[1] = {3};

static void add_extra(lsdi_st_entry *e, size_t *n, int64_t (*shapes)[8])
{
    (void)shapes;
    e[(*n)++] = (lsdi_st_entry){"down_blocks.0.extra_layer.weight", LSDI_ST_F32, 1, extra_shape, extra_data};
}

TEST(load_rejects_missing_tensor)
{
    lsd_model *m = (lsd_model *)1;
    CHECK_STATUS(lsd_model_load(tiny_with("unet", drop_conv_in_bias), NULL, &m), LSD_ERR_FORMAT, "conv_in.bias");
    CHECK(m == NULL);
    CHECK(strstr(lsd_last_error(), "missing") != NULL, "%s", lsd_last_error());
}

TEST(load_rejects_misshaped_tensor)
{
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(tiny_with("unet", transpose_time_linear), NULL, &m), LSD_ERR_SHAPE_MISMATCH,
                 "'time_embedding.linear_1.weight' expected [64,16] found [16,64]");
    CHECK(m == NULL);
}

TEST(load_rejects_unexpected_tensor)
{
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(tiny_with("unet", add_extra), NULL, &m), LSD_ERR_FORMAT,
                 "down_blocks.0.extra_layer.weight");
    CHECK(m == NULL);
}

static void add_vae_extras(lsdi_st_entry *e, size_t *n, int64_t (*shapes)[8])
{
    (void)shapes;
    e[(*n)++] = (lsdi_st_entry){"encoder.extra.weight", LSDI_ST_F32, 1, extra_shape, extra_data};
    e[(*n)++] = (lsdi_st_entry){"decoder.extra.weight", LSDI_ST_F32, 1, extra_shape, extra_data};
}

/* vae_decode_only skips the encoder's and quant_conv's tensors, not any other the VAE has no place for. */
TEST(load_vae_decode_only_rejects_unexpected_vae_tensor)
{
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.vae_decode_only = 1;
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(tiny_with("vae", add_vae_extras), &p, &m), LSD_ERR_FORMAT,
                 "vae: 2 unexpected tensors ('encoder.extra.weight', 'decoder.extra.weight')");
    CHECK(m == NULL);
}

/* A folder whose vae/ has only the fp16 file: found with variant "fp16", missing without. */
TEST(load_variant_selects_fp16_file)
{
    const char *dir = temp_dir();
    const char *links[] = {"model_index.json", "text_encoder", "unet", "tokenizer", "scheduler"};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++)
        link_into(dir, links[i]);
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/vae", dir);
    CHECK(mkdir(sub, 0755) == 0);
    link_into(dir, "vae/config.json");
    link_into(dir, "vae/diffusion_pytorch_model.fp16.safetensors");
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load(dir, NULL, &m), LSD_ERR_NOT_FOUND, "vae/diffusion_pytorch_model.safetensors");
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.variant = "fp16";
    CHECK_OK(lsd_model_load(dir, &p, &m));
    if (m) {
        const char *ref = data_path("sd-tiny/ref/vae.safetensors");
        size_t nl = 0, nd = 0;
        float *lat = load_f32(ref, "latents", NULL, NULL, &nl);
        float *want = load_f32(ref, "decoded", NULL, NULL, &nd);
        float *got = calloc(nd, sizeof *got);
        CHECK_OK(lsd_model_vae_decode(m, lat, 2, 16, 16, got));
        CHECK_CLOSE(got, want, nd, 1e-4);
        free(lat);
        free(want);
        free(got);
    }
    lsd_model_free(m);
}

TEST(load_not_found)
{
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_load("/nonexistent/sd-model", NULL, &m), LSD_ERR_NOT_FOUND, "/nonexistent/sd-model");
    CHECK_STATUS(lsd_model_load(data_path("sd-tiny/unet"), NULL, &m), LSD_ERR_NOT_FOUND, "model_index.json");
    CHECK_STATUS(lsd_model_load(NULL, NULL, &m), LSD_ERR_INVALID_ARGUMENT, "path_or_hub_id");
    CHECK_STATUS(lsd_model_load(data_path("sd-tiny"), NULL, NULL), LSD_ERR_INVALID_ARGUMENT, "out");
    lsd_model_params p;
    lsd_model_params_init(&p);
    p.dtype = (lsd_dtype)7;
    CHECK_STATUS(lsd_model_load(data_path("sd-tiny"), &p, &m), LSD_ERR_INVALID_ARGUMENT, "dtype");
    lsd_model_params_init(&p);
    p.device = "tpu";
    CHECK_STATUS(lsd_model_load(data_path("sd-tiny"), &p, &m), LSD_ERR_DEVICE, "tpu");
}

typedef struct load_reports {
    int n, steps[8], total, cancel_at;
} load_reports;

static int record_load(const lsd_progress *p, void *user)
{
    load_reports *r = user;
    if (r->n < 8)
        r->steps[r->n] = p->step;
    r->n++;
    r->total = p->total;
    return p->stage != LSD_STAGE_LOAD || p->step == r->cancel_at;
}

/* Steps are 1-based, as the header promises: one report per component loaded, never a step 0. */
TEST(load_progress_and_cancel)
{
    lsd_model_params p;
    lsd_model_params_init(&p);
    load_reports r = {.cancel_at = -1};
    p.progress = record_load;
    p.progress_user = &r;
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), &p, &m));
    CHECK(r.n == 3 && r.steps[0] == 1 && r.steps[1] == 2 && r.steps[2] == 3 && r.total == 3, "%d reports: %d %d %d "
          "of %d", r.n, r.steps[0], r.steps[1], r.steps[2], r.total);
    lsd_model_free(m);
    m = NULL;
    r = (load_reports){.cancel_at = 1};
    CHECK_STATUS(lsd_model_load(data_path("sd-tiny"), &p, &m), LSD_ERR_CANCELLED, "cancel");
    CHECK(m == NULL && r.n == 1, "calls %d", r.n);
}

TEST(model_info_tiny)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    if (!m)
        return;
    lsd_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(lsd_model_get_info(m, &info));
    CHECK(info.latent_channels == 4 && info.vae_scale_factor == 2 && info.context_dim == 32);
    CHECK(info.max_tokens == 77 && fabsf(info.scaling_factor - 0.18215f) < 1e-7f);
    CHECK(info.dtype == LSD_F32 && strcmp(info.device, "cpu") == 0 && strcmp(info.name, "sd-tiny") == 0,
          "%s %s", info.device, info.name);
    CHECK(info.text_encoder_params > 49408 * 32 && info.unet_params > 0 && info.vae_params > 0);
    /* lsd_model_info has had one size since 0.1: a smaller struct_size is no release's, refused, nothing written. */
    lsd_model_info old;
    memset(&old, 0xAB, sizeof old);
    int64_t pattern = old.unet_params;
    old.struct_size = offsetof(lsd_model_info, vae_params);
    CHECK_STATUS(lsd_model_get_info(m, &old), LSD_ERR_INVALID_ARGUMENT, "lsd_model_info struct_size");
    CHECK(old.unet_params == pattern);
    lsd_model_free(m);
}

TEST(random_init_sd14_parameter_counts)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_create_random(sd14_configs(), 42, NULL, &m));
    if (!m)
        return;
    lsd_model_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    CHECK_OK(lsd_model_get_info(m, &info));
    CHECK(info.unet_params == 859520964LL, "%lld", (long long)info.unet_params);
    CHECK(info.vae_params == 83653863LL, "%lld", (long long)info.vae_params);
    CHECK(info.text_encoder_params == 123060480LL, "%lld", (long long)info.text_encoder_params);
    CHECK(info.vae_scale_factor == 8 && info.context_dim == 768);
    lsd_model_free(m);
}

TEST(random_init_is_seeded)
{
    const char *dir = data_path("sd-tiny");
    lsd_model *a = NULL, *b = NULL, *c = NULL;
    CHECK_OK(lsd_model_create_random(dir, 7, NULL, &a));
    CHECK_OK(lsd_model_create_random(dir, 7, NULL, &b));
    CHECK_OK(lsd_model_create_random(dir, 8, NULL, &c));
    if (a && b && c) {
        float lat[4 * 8 * 8], oa[3 * 16 * 16], ob[3 * 16 * 16], oc[3 * 16 * 16];
        for (size_t i = 0; i < sizeof lat / sizeof *lat; i++)
            lat[i] = (float)((i * 37) % 17) / 8.0f - 1.0f;
        CHECK_OK(lsd_model_vae_decode(a, lat, 1, 8, 8, oa));
        CHECK_OK(lsd_model_vae_decode(b, lat, 1, 8, 8, ob));
        CHECK_OK(lsd_model_vae_decode(c, lat, 1, 8, 8, oc));
        CHECK(max_abs_diff(oa, ob, 3 * 16 * 16) == 0.0);
        CHECK(max_abs_diff(oa, oc, 3 * 16 * 16) > 1e-3);
    }
    lsd_model_free(a);
    lsd_model_free(b);
    lsd_model_free(c);
    lsd_model *m = NULL;
    CHECK_STATUS(lsd_model_create_random("/nonexistent", 1, NULL, &m), LSD_ERR_NOT_FOUND, "/nonexistent");
    CHECK_STATUS(lsd_model_create_random(NULL, 1, NULL, &m), LSD_ERR_INVALID_ARGUMENT, "config_dir");
}

TEST(encode_text_matches_tokens)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    if (!m)
        return;
    int64_t ids[77];
    int n_tok = -1;
    CHECK_OK(lsd_model_tokenize(m, "a red bicycle leaning on a wall", ids, 77, &n_tok));
    CHECK(n_tok == 7 && ids[0] == 49406 && ids[1] == 320 && ids[2] == 736 && ids[8] == 49407 && ids[76] == 49407);
    float *a = calloc(77 * 32, sizeof *a), *b = calloc(77 * 32, sizeof *b);
    const char *prompts[1] = {"a red bicycle leaning on a wall"};
    CHECK_OK(lsd_model_encode_text(m, prompts, 1, 0, a));
    CHECK_OK(lsd_model_encode_tokens(m, ids, 1, 77, 0, b));
    CHECK(max_abs_diff(a, b, 77 * 32) == 0.0);
    free(a);
    free(b);
    lsd_model_free(m);
}

TEST(argument_errors)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    if (!m)
        return;
    float buf[2 * 4 * 16 * 16] = {0}, ctx[77 * 32] = {0}, out[2 * 4 * 16 * 16], t[3] = {1, 2, 3};
    int64_t ids[77] = {0};
    ids[5] = 49408;
    CHECK_STATUS(lsd_model_unet(NULL, buf, 1, 16, 16, t, 1, ctx, 77, out), LSD_ERR_INVALID_ARGUMENT, "model");
    CHECK_STATUS(lsd_model_unet(m, buf, 1, 14, 16, t, 1, ctx, 77, out), LSD_ERR_INVALID_ARGUMENT, "height 14");
    CHECK_STATUS(lsd_model_unet(m, buf, 1, 16, 6, t, 1, ctx, 77, out), LSD_ERR_INVALID_ARGUMENT, "width 6");
    CHECK_STATUS(lsd_model_unet(m, buf, 2, 16, 16, t, 3, ctx, 77, out), LSD_ERR_INVALID_ARGUMENT, "n_timesteps");
    CHECK_STATUS(lsd_model_unet(m, buf, 1, 16, 16, t, 1, NULL, 77, out), LSD_ERR_INVALID_ARGUMENT, "context");
    CHECK_STATUS(lsd_model_unet(m, buf, 0, 16, 16, t, 1, ctx, 77, out), LSD_ERR_INVALID_ARGUMENT, "batch");
    CHECK_STATUS(lsd_model_unet(m, buf, 1, 16, 16, t, 1, ctx, 0, out), LSD_ERR_INVALID_ARGUMENT, "n_ctx");
    CHECK_STATUS(lsd_model_vae_encode(m, buf, 1, 31, 32, out, NULL), LSD_ERR_INVALID_ARGUMENT, "height 31");
    CHECK_STATUS(lsd_model_vae_encode(m, buf, 1, 32, 32, NULL, NULL), LSD_ERR_INVALID_ARGUMENT, "mean_out");
    CHECK_STATUS(lsd_model_vae_decode(m, NULL, 1, 8, 8, out), LSD_ERR_INVALID_ARGUMENT, "latents");
    CHECK_STATUS(lsd_model_vae_decode(m, buf, 1, 0, 8, out), LSD_ERR_INVALID_ARGUMENT, "height");
    CHECK_STATUS(lsd_model_encode_tokens(m, ids, 1, 77, 1, ctx), LSD_ERR_INVALID_ARGUMENT, "ids[5] = 49408");
    ids[5] = 1;
    CHECK_STATUS(lsd_model_encode_tokens(m, ids, 1, 77, 6, ctx), LSD_ERR_INVALID_ARGUMENT, "clip_skip 6");
    CHECK_STATUS(lsd_model_encode_tokens(m, ids, 1, 78, 1, ctx), LSD_ERR_INVALID_ARGUMENT, "n_ids 78");
    CHECK_STATUS(lsd_model_tokenize(m, "x", ids, 10, NULL), LSD_ERR_INVALID_ARGUMENT, "max_ids 10");
    const char *prompts[2] = {"a", NULL};
    CHECK_STATUS(lsd_model_encode_text(m, prompts, 2, 0, ctx), LSD_ERR_INVALID_ARGUMENT, "prompts[1]");
    CHECK_STATUS(lsd_model_get_info(m, NULL), LSD_ERR_INVALID_ARGUMENT, "info");
    lsd_model_free(m);
    lsd_model_free(NULL);
}
