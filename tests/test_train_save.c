/* Saved files and metadata: kohya's ss_* training keys (read back through lsd_safetensors_metadata), the sshs_*
 * and base-model hashes against SHA-256 computed here with OpenSSL over the file bytes, save_precision's dtypes,
 * num_train_epochs and save_every_n_epochs, and Python's str() of floats. */
#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "core/pyfmt.h"
#include "data_util.h"
#include "io/safetensors.h"
#include "lora/lora.h"
#include "test.h"
#include "train/train.h"

static lsd_model *tiny(void)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    return m;
}

/* Metadata value of key in a safetensors file, copied into buf ("" and a failure when absent). */
static const char *meta(const char *path, const char *key, char *buf, size_t n)
{
    lsd_safetensors *f = NULL;
    buf[0] = 0;
    int found = 0;
    if (!CHECK_OK(lsd_safetensors_open(path, &f)))
        return buf;
    for (size_t i = 0; i < lsd_safetensors_metadata_count(f); i++) {
        const char *k, *v;
        if (lsd_safetensors_metadata(f, i, &k, &v) == LSD_OK && !strcmp(k, key)) {
            snprintf(buf, n, "%s", v);
            found = 1;
        }
    }
    lsd_safetensors_close(f);
    CHECK(found, "%s: no metadata %s", path, key);
    return buf;
}

#define CHECK_META(path, key, want)                                                     \
    do {                                                                                \
        char b_[4096];                                                                  \
        const char *got_ = meta(path, key, b_, sizeof b_);                              \
        CHECK(!strcmp(got_, want), "%s = \"%s\", want \"%s\"", key, got_, want);        \
    } while (0)

static void sha256_hex(const unsigned char *data, size_t n, char hex[65])
{
    unsigned char md[32];
    unsigned int len = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    CHECK(c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) && EVP_DigestUpdate(c, data, n) &&
          EVP_DigestFinal_ex(c, md, &len) && len == 32);
    EVP_MD_CTX_free(c);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* A1111's addnet_hash_legacy over a buffer: sha256 of the 0x10000 bytes at 0x100000 (fewer past the end), 8 digits. */
static void legacy_hex(const unsigned char *data, size_t n, char out[9])
{
    char hex[65];
    size_t lo = n < 0x100000 ? n : 0x100000, hi = n < 0x110000 ? n : 0x110000;
    sha256_hex(data + lo, hi - lo, hex);
    snprintf(out, 9, "%.8s", hex);
}

static uint64_t header_len(const unsigned char *b)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | b[i];
    return n;
}

TEST(py_float_matches_python_str)
{
    static const struct {
        double v;
        int f32;
        const char *want;
    } cases[] = {
        {1e-4, 0, "0.0001"}, {1e-5, 0, "1e-05"}, {4.0, 0, "4.0"}, {0.05, 1, "0.05"}, {0.05f, 0, "0.05000000074505806"},
        {1e16, 0, "1e+16"}, {123456789.0, 0, "123456789.0"}, {1.5e-7, 0, "1.5e-07"}, {0.1 + 0.2, 0, "0.30000000000000004"},
        {1712345678.125, 0, "1712345678.125"}, {-2.5, 0, "-2.5"}, {0.0, 0, "0.0"}, {1e-8, 0, "1e-08"},
        {0.999, 0, "0.999"}, {9999999999999998.0, 0, "9999999999999998.0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[40];
        lsdi_py_float(cases[i].v, cases[i].f32, buf, sizeof buf);
        CHECK(!strcmp(buf, cases[i].want), "%.17g: \"%s\", want \"%s\"", cases[i].v, buf, cases[i].want);
    }
}

static void run_params(lsd_train_params *p, const char *out)
{
    lsd_train_params_init(p);
    p->train_batch_size = 2;
    p->resolution = 16;
    p->max_train_steps = 2;
    p->learning_rate = 1e-3;
    p->seed = 5;
    p->snr_gamma = 5.0f;
    p->noise_offset = 0.05f;
    p->output_dir = out;
    p->checkpointing_steps = 0;
}

/* One step, then lsd_trainer_save_lora: the run's settings in kohya's keys, tensors in save_precision. */
TEST(train_save_metadata_keys)
{
    const char *data = tiny_dataset(), *out = temp_dir();
    lsd_dataset *ds = NULL;
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    run_params(&p, out);
    char name[] = "mylora", comment[] = "hello, world";
    p.output_name = name;
    p.training_comment = comment;
    p.save_precision = LSD_F16;
    p.conv_dim = 2;
    p.conv_alpha = 1.0f;
    p.train_text_encoder = 1;
    p.text_encoder_lr = 5e-5;
    double t0 = lsdi_unix_time();
    if (!CHECK_OK(lsd_dataset_open(data, NULL, &ds)) || !m || !CHECK_OK(lsd_adapter_set_new(m, &set)) ||
        !CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr)))
        goto done;
    name[0] = comment[0] = 'X'; /* the trainer keeps copies */
    float loss;
    CHECK_OK(lsd_trainer_step(tr, &loss));
    char f[600];
    snprintf(f, sizeof f, "%s/mylora.safetensors", out);
    CHECK_OK(lsd_trainer_save_lora(tr, f, LSD_LORA_FORMAT_KOHYA));
    double t1 = lsdi_unix_time();
    static const char *const want[][2] = {
        {"ss_output_name", "mylora"}, {"ss_training_comment", "hello, world"}, {"ss_learning_rate", "0.001"},
        {"ss_text_encoder_lr", "5e-05"}, {"ss_unet_lr", "None"}, {"ss_max_train_steps", "2"},
        {"ss_num_epochs", "1"}, {"ss_epoch", "1"}, {"ss_steps", "1"}, {"ss_num_train_images", "4"},
        {"ss_num_reg_images", "0"}, {"ss_num_batches_per_epoch", "2"}, {"ss_seed", "5"},
        {"ss_lr_scheduler", "constant"}, {"ss_lr_warmup_steps", "500"}, {"ss_gradient_accumulation_steps", "1"},
        {"ss_batch_size_per_device", "2"}, {"ss_total_batch_size", "2"}, {"ss_resolution", "(16, 16)"},
        {"ss_min_snr_gamma", "5.0"}, {"ss_noise_offset", "0.05"}, {"ss_mixed_precision", "no"},
        {"ss_gradient_checkpointing", "False"}, {"ss_clip_skip", "1"}, {"ss_v2", "False"},
        {"ss_base_model_version", "sd_v1"}, {"ss_network_module", "networks.lora"}, {"ss_network_dim", "4"},
        {"ss_network_alpha", "4.0"}, {"ss_network_args", "{\"conv_dim\": \"2\", \"conv_alpha\": \"1.0\"}"},
        {"ss_sd_model_name", "sd-tiny"}, {"ss_max_grad_norm", "1.0"}, {"ss_prior_loss_weight", "1.0"},
        {"ss_optimizer", "torch.optim.adamw.AdamW(weight_decay=0.01,betas=(0.9, 0.999),eps=1e-08)"},
        {"ss_flip_aug", "False"}, {"ss_random_crop", "True"}, {"ss_cache_latents", "False"}, {"ss_full_fp16", "False"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_META(f, want[i][0], want[i][1]);
    char b[256];
    double started = atof(meta(f, "ss_training_started_at", b, sizeof b));
    double finished = atof(meta(f, "ss_training_finished_at", b, sizeof b));
    CHECK(started >= t0 - 1e-3 && started <= finished && finished <= t1 + 1e-3, "%f <= %f <= %f <= %f", t0, started,
          finished, t1);
    char *end = NULL;
    strtoull(meta(f, "ss_session_id", b, sizeof b), &end, 10);
    CHECK(b[0] && !*end, "ss_session_id \"%s\"", b);
    lsd_safetensors *sf = NULL;
    int n_ss = 0, n_f16 = 0, n_tensors = 0;
    if (CHECK_OK(lsd_safetensors_open(f, &sf))) {
        for (size_t i = 0; i < lsd_safetensors_metadata_count(sf); i++) {
            const char *k, *v;
            lsd_safetensors_metadata(sf, i, &k, &v);
            n_ss += !strncmp(k, "ss_", 3);
        }
        n_tensors = (int)lsd_safetensors_count(sf);
        for (size_t i = 0; i < lsd_safetensors_count(sf); i++) {
            lsd_tensor_info ti = {sizeof ti, "", "", 0, {0}, 0};
            lsd_safetensors_tensor_info(sf, i, &ti);
            n_f16 += !strcmp(ti.dtype, "F16");
        }
        lsd_safetensors_close(sf);
    }
    CHECK(n_ss >= 55, "%d ss_ keys", n_ss);
    CHECK(n_tensors > 0 && n_f16 == n_tensors, "save_precision fp16: %d of %d tensors F16", n_f16, n_tensors);
    /* The text encoder's LoRA is in the file, trained. */
    float *up = load_f32(f, "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", NULL, NULL, NULL);
    CHECK(up && (up[0] != 0 || up[1] != 0), "text-encoder lora_up trained");
    free(up);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
}

/* sshs_model_hash: sha256 of the file's bytes after the header. sshs_legacy_hash: addnet_hash_legacy of the file
 * as kohya serialises it for the hash, i.e. with only the ss_* metadata: rebuilt here from the tensors and ss_* keys
 * read back. The base model's hashes: ss_new_sd_model_hash = sha256 of the checkpoint, ss_sd_model_hash = its
 * A1111 legacy hash. */
TEST(lora_save_sshs_and_model_hashes)
{
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.config_dir = data_path("sd-tiny");
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    const char *sf = data_path("sd-tiny-sf/single-file/model.safetensors");
    if (!CHECK_OK(lsd_model_load(sf, &mp, &m)) || !CHECK_OK(lsd_adapter_set_new(m, &set))) {
        lsd_model_free(m);
        return;
    }
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.rank = 48; /* > 1.06 MB of tensors, so the legacy hash reads a full 64 KiB */
    lp.targets = LSD_TARGET_UNET_ATTN | LSD_TARGET_UNET_FF | LSD_TARGET_UNET_PROJ;
    CHECK_OK(lsd_adapter_set_add(set, "big", &lp));
    char path[600], rebuilt[600];
    snprintf(path, sizeof path, "%s/big.safetensors", temp_dir());
    snprintf(rebuilt, sizeof rebuilt, "%s/ss_only.safetensors", temp_dir());
    const char *keys[] = {"ss_output_name", "modelspec.title", "ss_seed"};
    const char *vals[] = {"big", "not an ss_ key", "42"};
    lsd_lora_save_params sp;
    lsd_lora_save_params_init(&sp);
    sp.metadata_keys = keys;
    sp.metadata_values = vals;
    sp.n_metadata = 3;
    CHECK_OK(lsd_adapter_set_save_ex(set, "big", path, &sp));
    size_t n = 0;
    unsigned char *bytes = (unsigned char *)read_file(path, &n);
    char want[65];
    if (bytes && n > 8 + header_len(bytes)) {
        CHECK(n > 0x110000, "file of %zu bytes", n);
        sha256_hex(bytes + 8 + header_len(bytes), n - 8 - header_len(bytes), want);
        CHECK_META(path, "sshs_model_hash", want);
    }
    CHECK_META(path, "modelspec.title", "not an ss_ key");
    /* The file with the ss_ keys only, in the order the reader gives (sorted, as the library writes them). */
    lsdi_st_file *f = NULL;
    if (CHECK_OK(lsdi_st_open(path, &f))) {
        size_t nt = lsdi_st_count(f), nm = lsdi_st_metadata_count(f), k = 0;
        lsdi_st_entry *e = calloc(nt + 1, sizeof *e);
        const char **mk = calloc(nm + 1, sizeof *mk), **mv = calloc(nm + 1, sizeof *mv);
        for (size_t i = 0; e && i < nt; i++) {
            const lsdi_st_tensor *t = lsdi_st_at(f, i);
            e[i] = (lsdi_st_entry){t->name, t->dtype, t->ndim, t->shape, t->data};
        }
        for (size_t i = 0; mk && mv && i < nm; i++) {
            lsdi_st_metadata_at(f, i, &mk[k], &mv[k]);
            k += !strncmp(mk[k], "ss_", 3);
        }
        CHECK(k >= 7, "%zu ss_ keys", k);
        CHECK_OK(lsdi_st_write(rebuilt, e, nt, mk, mv, k));
        size_t rn = 0;
        unsigned char *rb = (unsigned char *)read_file(rebuilt, &rn);
        char legacy[9];
        if (rb) {
            legacy_hex(rb, rn, legacy);
            CHECK_META(path, "sshs_legacy_hash", legacy);
        }
        free(rb);
        free(e);
        free(mk);
        free(mv);
        lsdi_st_close(f);
    }
    free(bytes);
    /* The base model. */
    bytes = (unsigned char *)read_file(sf, &n);
    if (bytes) {
        sha256_hex(bytes, n, want);
        CHECK_META(path, "ss_new_sd_model_hash", want);
        char legacy[9];
        legacy_hex(bytes, n, legacy);
        CHECK_META(path, "ss_sd_model_hash", legacy);
    }
    CHECK_META(path, "ss_sd_model_name", "model.safetensors");
    free(bytes);
    /* A file under 1 MiB: the legacy hash reads nothing, as Python's read() past the end. */
    lp.rank = 1;
    lp.targets = LSD_TARGET_UNET_ATTN;
    CHECK_OK(lsd_adapter_set_add(set, "small", &lp));
    CHECK_OK(lsd_adapter_set_save(set, "small", path, LSD_LORA_FORMAT_KOHYA));
    sha256_hex((const unsigned char *)"", 0, want);
    want[8] = 0;
    CHECK_META(path, "sshs_legacy_hash", want);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

TEST(lora_save_precision_dtypes)
{
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    if (!m || !CHECK_OK(lsd_adapter_set_new(m, &set))) {
        lsd_model_free(m);
        return;
    }
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.init = LSD_LORA_INIT_GAUSSIAN;
    CHECK_OK(lsd_adapter_set_add(set, "a", &lp));
    const lsdi_adapter *ad = lsdi_adapter_find(set, "a");
    static const struct {
        lsd_dtype dt;
        const char *name;
        double tol; /* relative rounding of the format */
    } cases[] = {{LSD_F32, "F32", 0}, {LSD_F16, "F16", 1.0 / 2048}, {LSD_BF16, "BF16", 1.0 / 256}};
    char path[600];
    snprintf(path, sizeof path, "%s/p.safetensors", temp_dir());
    const char *down = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight";
    for (size_t c = 0; c < 3; c++) {
        lsd_lora_save_params sp;
        lsd_lora_save_params_init(&sp);
        sp.dtype = cases[c].dt;
        CHECK_OK(lsd_adapter_set_save_ex(set, "a", path, &sp));
        lsd_safetensors *f = NULL;
        int bad = 0, n = 0;
        if (CHECK_OK(lsd_safetensors_open(path, &f))) {
            n = (int)lsd_safetensors_count(f);
            for (int i = 0; i < n; i++) {
                lsd_tensor_info ti = {sizeof ti, "", "", 0, {0}, 0};
                lsd_safetensors_tensor_info(f, (size_t)i, &ti);
                bad += strcmp(ti.dtype, cases[c].name) != 0;
            }
            lsd_safetensors_close(f);
        }
        CHECK(n == 88 * 3 && bad == 0, "%s: %d of %d tensors in another dtype", cases[c].name, bad, n);
        size_t cnt = 0;
        float *got = load_f32(path, down, NULL, NULL, &cnt);
        float *ref = got ? malloc(cnt * sizeof *ref) : NULL;
        if (ref && lsdt_to_host(ad->mods[0].down, ref, LSDT_F32, cnt) == 0)
            for (size_t i = 0; i < cnt; i++)
                CHECK(fabs(got[i] - ref[i]) <= cases[c].tol * fabs(ref[i]), "%s[%zu] %g vs %g", cases[c].name, i,
                      got[i], ref[i]);
        free(got);
        free(ref);
    }
    lsd_lora_save_params sp;
    lsd_lora_save_params_init(&sp);
    sp.dtype = (lsd_dtype)7;
    CHECK_STATUS(lsd_adapter_set_save_ex(set, "a", path, &sp), LSD_ERR_INVALID_ARGUMENT, "dtype 7");
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

static int file_exists(const char *dir, const char *leaf)
{
    char path[700];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, leaf);
    return stat(path, &sb) == 0;
}

/* 4 images, batch 2: 2 steps an epoch; 3 epochs = 6 steps; epoch files after epochs 1 and 2 (the last is the
 * caller's final save). With accumulation 2: 1 step an epoch. */
TEST(train_epochs_and_epoch_files)
{
    const char *data = tiny_dataset(), *out = temp_dir();
    lsd_dataset *ds = NULL;
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    run_params(&p, out);
    p.num_train_epochs = 3;
    p.save_every_n_epochs = 1;
    p.output_name = "ep";
    if (!CHECK_OK(lsd_dataset_open(data, NULL, &ds)) || !m || !CHECK_OK(lsd_adapter_set_new(m, &set)) ||
        !CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr)))
        goto done;
    CHECK(tr->p.max_train_steps == 6, "max_train_steps %d", tr->p.max_train_steps);
    float loss;
    for (int k = 1; k <= 6; k++) {
        CHECK_OK(lsd_trainer_step(tr, &loss));
        CHECK(file_exists(out, "ep-000001.safetensors") == (k >= 2), "after step %d", k);
        CHECK(file_exists(out, "ep-000002.safetensors") == (k >= 4), "after step %d", k);
    }
    CHECK(!file_exists(out, "ep-000003.safetensors"), "the last epoch is the final save's");
    char f[700];
    snprintf(f, sizeof f, "%s/ep-000002.safetensors", out);
    CHECK_META(f, "ss_epoch", "2");
    CHECK_META(f, "ss_steps", "4");
    CHECK_META(f, "ss_num_epochs", "3");
    CHECK_META(f, "ss_max_train_steps", "6");
    lsd_trainer_free(tr);
    tr = NULL;
    p.gradient_accumulation_steps = 2;
    p.save_every_n_epochs = 0;
    p.num_train_epochs = 5;
    CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr));
    CHECK(tr && tr->p.max_train_steps == 5, "accumulation 2: %d", tr ? tr->p.max_train_steps : -1);
    lsd_trainer_free(tr);
    tr = NULL;
    p.num_train_epochs = -1;
    CHECK_STATUS(lsd_trainer_new(m, set, "lora", ds, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "num_train_epochs");
    p.num_train_epochs = 0;
    p.save_precision = (lsd_dtype)9;
    CHECK_STATUS(lsd_trainer_new(m, set, "lora", ds, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "save_precision");
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
}

/* kohya's dataset keys of a kohya layout with a regularisation folder and buckets (read before any step). */
TEST(train_save_dataset_metadata)
{
    const char *d = temp_dir();
    const char *train = put_dir(d, "train"), *reg = put_dir(d, "reg");
    put_image(train, "3_cat/a.png", 48, 32, IMG_PNG, 0);
    put_text(train, "3_cat/a.txt", "Cat, sitting , cat", -1);
    put_image(train, "3_cat/b.png", 32, 48, IMG_PNG, 1);
    put_text(train, "3_cat/b.txt", "cat,  HAT,,", -1);
    put_image(reg, "1_dog/r.png", 32, 32, IMG_PNG, 2); /* captioned by its folder: "dog" */
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.reg_data_dir = reg;
    dp.enable_bucket = 1;
    dp.min_bucket_reso = 32;
    dp.max_bucket_reso = 128;
    dp.bucket_reso_steps = 32;
    dp.resolution = 64;
    lsd_dataset *ds = open_ok(train, &dp);
    lsd_model *m = ds ? tiny() : NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    run_params(&p, NULL);
    p.resolution = 64;
    if (!m || !CHECK_OK(lsd_adapter_set_new(m, &set)) || !CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr)))
        goto done;
    char f[600], b[4096];
    snprintf(f, sizeof f, "%s/d.safetensors", temp_dir());
    CHECK_OK(lsd_trainer_save_lora(tr, f, LSD_LORA_FORMAT_KOHYA));
    CHECK_META(f, "ss_num_train_images", "6");
    CHECK_META(f, "ss_num_reg_images", "1");
    CHECK_META(f, "ss_enable_bucket", "True");
    CHECK_META(f, "ss_min_bucket_reso", "32");
    CHECK_META(f, "ss_max_bucket_reso", "128");
    CHECK_META(f, "ss_dataset_dirs", "{\"3_cat\":{\"n_repeats\":3,\"img_count\":2}}");
    CHECK_META(f, "ss_reg_dataset_dirs", "{\"1_dog\":{\"n_repeats\":1,\"img_count\":1}}");
    cJSON *tags = cJSON_Parse(meta(f, "ss_tag_frequency", b, sizeof b));
    const cJSON *cat = cJSON_GetObjectItemCaseSensitive(tags, "3_cat"), *dog = cJSON_GetObjectItemCaseSensitive(tags, "1_dog");
    CHECK(cJSON_GetArraySize(cat) == 3 && cJSON_GetArraySize(dog) == 1, "%s", b);
    CHECK(cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cat, "cat")) == 3 &&
              cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cat, "sitting")) == 1 &&
              cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cat, "hat")) == 1 &&
              cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(dog, "dog")) == 1,
          "%s", b);
    cJSON_Delete(tags);
    /* Buckets: every entry of the epoch counted once (6 training draws + 6 balanced regularisation draws). */
    cJSON *bi = cJSON_Parse(meta(f, "ss_bucket_info", b, sizeof b));
    const cJSON *bk = cJSON_GetObjectItemCaseSensitive(bi, "buckets"), *e;
    double count = 0;
    int ok = cJSON_IsObject(bk);
    cJSON_ArrayForEach(e, bk)
    {
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(e, "resolution");
        ok &= cJSON_GetArraySize(res) == 2 && (int)cJSON_GetArrayItem(res, 0)->valuedouble % 32 == 0;
        count += cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "count"));
    }
    double err = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(bi, "mean_img_ar_error"));
    CHECK(ok && count == 12 && err >= 0 && err < 0.5, "%s", b);
    cJSON_Delete(bi);
    size_t batches = lsdi_loader_batches_per_epoch(tr);
    snprintf(b, sizeof b, "%zu", batches);
    CHECK(batches >= 6 && batches <= 9, "12 entries in batches of 2 over the buckets: %zu", batches);
    CHECK_META(f, "ss_num_batches_per_epoch", b);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
}
