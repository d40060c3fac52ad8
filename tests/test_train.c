/* LoRA training: two steps against diffusers' train_text_to_image_lora.py (sd-tiny/ref/train_step_*), AdamW
 * alone (lib/optim), the dataset folder, LR schedules, an end-to-end run with checkpoints and exact resume, NaN and cancel. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "io/safetensors.h"
#include "lora/lora.h"
#include "model/model.h"
#include "test.h"
#include "train_util.h"
#include "train/train.h"

#define INPUTS "sd-tiny/ref/train_step_inputs.safetensors"
#define LAT_N (2 * 4 * 16 * 16)

/* Reads tensors as float32 from a few files kept open (each load_f32 would parse the whole header again). */
static struct {
    char path[512];
    lsdi_st_file *f;
} cache[4];

static float *get(const char *path, const char *name, int64_t *shape, int *ndim, size_t *numel)
{
    int k = 0;
    while (k < 4 && cache[k].f && strcmp(cache[k].path, path))
        k++;
    if (k == 4)
        return load_f32(path, name, shape, ndim, numel);
    if (!cache[k].f) {
        snprintf(cache[k].path, sizeof cache[k].path, "%s", path);
        if (!CHECK_OK(lsdi_st_open(path, &cache[k].f)))
            return NULL;
    }
    const lsdi_st_tensor *t = lsdi_st_find(cache[k].f, name);
    CHECK(t != NULL, "%s: no tensor %s", path, name);
    float *v = t ? malloc((t->numel + 1) * sizeof *v) : NULL;
    if (!v)
        return NULL;
    lsdi_st_to_f32(t, v);
    if (shape)
        memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
    if (ndim)
        *ndim = t->ndim;
    if (numel)
        *numel = t->numel;
    return v;
}

static void cache_clear(void)
{
    for (int k = 0; k < 4; k++) {
        lsdi_st_close(cache[k].f);
        cache[k].f = NULL;
    }
}

static lsd_model *tiny(void)
{
    lsd_model *m = NULL;
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m));
    return m;
}

static const char *module_name(const lsd_model *m, const lsdi_lora_entry *e)
{
    return lsdi_lora_net_params(m, e->layer->net)->mods[e->layer->module].name;
}

/* "unet.<module>.lora_A.weight" of parameter i (even: down = A, odd: up = B). */
static void peft_name(const lsd_model *m, const lsdi_adapter *ad, int i, char *buf, size_t n)
{
    snprintf(buf, n, "unet.%s.lora_%s.weight", module_name(m, &ad->mods[i / 2]), i % 2 ? "B" : "A");
}

static float *tensor_host(const lsdt_tensor *t)
{
    size_t n = (size_t)lsdt_numel(t);
    float *v = malloc(n * sizeof *v);
    CHECK(v && lsdt_to_host(t, v, LSDT_F32, n) == 0);
    return v;
}

static void set_tensor(lsdt_tensor *t, const float *v)
{
    int64_t shape[4];
    int nd = lsdt_ndim(t);
    for (int d = 0; d < nd; d++)
        shape[d] = lsdt_size(t, d);
    lsdt_tensor *src = lsdt_from_host(NULL, v, LSDT_F32, shape, nd, LSDT_F32, NULL);
    CHECK(src && lsdt_copy_(t, src) == 0);
    lsdt_free(src);
}

static cJSON *load_json(const char *rel)
{
    char *text = read_file(data_path(rel), NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    CHECK(j, "%s parses", rel);
    return j;
}

static double jnum(const cJSON *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *c = o;
    for (char *save = NULL, *k = strtok_r(buf, ".", &save); k && c; k = strtok_r(NULL, ".", &save))
        c = cJSON_GetObjectItemCaseSensitive(c, k);
    return cJSON_IsNumber(c) ? c->valuedouble : NAN;
}

/* The per-tensor criteria of the fixture: every entry within abs, and max|d| / max|ref| within rel. */
static void check_tensor(const char *what, const float *got, const float *ref, size_t n, double abs_tol, double rel_tol)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)got[i] - ref[i]));
        r = fmax(r, fabs((double)ref[i]));
    }
    CHECK(d <= abs_tol, "%s: max abs diff %g > %g", what, d, abs_tol);
    if (rel_tol > 0)
        CHECK(d <= rel_tol * r, "%s: max diff %g > %g * max|ref| %g", what, d, rel_tol, r);
}

/* A set with rank-4 adapter "t" holding the fixture's initial A and B. */
static lsd_adapter_set *fixture_adapter(lsd_model *m, float alpha)
{
    lsd_adapter_set *set = NULL;
    CHECK_OK(lsd_adapter_set_new(m, &set));
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.rank = 4;
    lp.alpha = alpha;
    CHECK_OK(lsd_adapter_set_add(set, "t", &lp));
    lsdi_adapter *ad = lsdi_adapter_find(set, "t");
    CHECK(ad && ad->n_mods == 88, "88 attention modules, got %d", ad ? ad->n_mods : -1);
    for (int i = 0; ad && i < 2 * ad->n_mods; i++) {
        char name[256];
        peft_name(m, ad, i, name, sizeof name);
        size_t n = 0;
        float *v = get(data_path(INPUTS), name, NULL, NULL, &n);
        lsdt_tensor *t = i % 2 ? ad->mods[i / 2].up : ad->mods[i / 2].down;
        CHECK(v && n == (size_t)lsdt_numel(t), "%s size", name);
        if (v && n == (size_t)lsdt_numel(t))
            set_tensor(t, v);
        free(v);
    }
    return set;
}

static void check_step(lsd_trainer *tr, const lsd_model *m, const char *ref, const cJSON *j, int k, float loss,
                       float **used_prev)
{
    char name[320], what[64];
    const cJSON *tol = cJSON_GetObjectItem(j, "tolerances");
    snprintf(what, sizeof what, "step%d.loss", k);
    double ref_loss = jnum(j, what);
    CHECK(fabs(loss - ref_loss) <= jnum(tol, "loss_rel") * fabs(ref_loss), "%s %.9g vs %.9g", what, loss, ref_loss);
    snprintf(what, sizeof what, "step%d.grad_norm", k);
    double gn = jnum(j, what);
    CHECK(fabs(tr->last_grad_norm - gn) <= jnum(tol, "grad_norm_rel") * gn, "%s %.9g vs %.9g", what,
          tr->last_grad_norm, gn);
    snprintf(name, sizeof name, "pred%d", k);
    float *pred = get(ref, name, NULL, NULL, NULL), *target = NULL;
    snprintf(name, sizeof name, "target%d", k);
    target = get(ref, name, NULL, NULL, NULL);
    CHECK(tr->last_n == LAT_N);
    if (pred && target && tr->last_n == LAT_N) {
        check_tensor(name, tr->last_target, target, LAT_N, 1e-6, 0);
        check_tensor("pred", tr->last_pred, pred, LAT_N, jnum(tol, "pred_abs"), 0);
    }
    free(pred);
    free(target);
    int clip = strstr(ref, "clip") != NULL;
    lsdi_adapter *ad = lsdi_adapter_find(tr->set, "t");
    for (int i = 0; i < tr->n_params; i++) {
        char base[256];
        peft_name(m, ad, i, base, sizeof base);
        size_t n = (size_t)lsdt_numel(tr->params[i]);
        snprintf(name, sizeof name, "grad%d/%s", k, base);
        float *g_ref = get(ref, name, NULL, NULL, NULL), *g = tensor_host(tr->last_grads[i]);
        if (g_ref && g)
            check_tensor(name, g, g_ref, n, jnum(tol, "grad_abs"), jnum(tol, "grad_rel_to_tensor_max"));
        if (clip) {
            snprintf(name, sizeof name, "grad%d_clipped/%s", k, base);
            float *c_ref = get(ref, name, NULL, NULL, NULL), *c = tensor_host(tr->last_grads_used[i]);
            if (c_ref && c)
                check_tensor(name, c, c_ref, n, jnum(tol, "grad_abs"), jnum(tol, "grad_rel_to_tensor_max"));
            free(c_ref);
            free(c);
        }
        if (k == 1)
            used_prev[i] = tensor_host(tr->last_grads_used[i]);
        snprintf(name, sizeof name, "step%d/%s", k, base);
        float *w_ref = get(ref, name, NULL, NULL, NULL), *w = tensor_host(tr->params[i]);
        if (w_ref && w) {
            check_tensor(name, w, w_ref, n, jnum(tol, "weights_abs"), 0);
            double worst = 0;
            for (size_t e = 0; used_prev[i] && e < n; e++)
                if (fabs(used_prev[i][e]) >= 1e-5)
                    worst = fmax(worst, fabs((double)w[e] - w_ref[e]));
            CHECK(worst <= jnum(tol, "weights_abs_where_abs_grad1_ge_1e-05"), "%s well-conditioned entries: %g", name,
                  worst);
        }
        free(g_ref);
        free(g);
        free(w_ref);
        free(w);
    }
}

static void run_case(const char *c)
{
    char rel[128], jrel[128], ref[512];
    snprintf(rel, sizeof rel, "sd-tiny/ref/train_step_%s.safetensors", c);
    snprintf(jrel, sizeof jrel, "sd-tiny/ref/train_step_%s.json", c);
    snprintf(ref, sizeof ref, "%s", data_path(rel));
    cJSON *j = load_json(jrel);
    lsd_model *m = tiny();
    if (!j || !m) {
        cJSON_Delete(j);
        lsd_model_free(m);
        return;
    }
    const cJSON *s = cJSON_GetObjectItem(j, "settings");
    lsd_adapter_set *set = fixture_adapter(m, (float)jnum(s, "lora_alpha"));
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.learning_rate = jnum(s, "lr");
    p.lr_warmup_steps = 0;
    p.adam_weight_decay = jnum(s, "weight_decay");
    p.adam_epsilon = jnum(s, "eps");
    p.snr_gamma = cJSON_IsNumber(cJSON_GetObjectItem(s, "snr_gamma")) ? (float)jnum(s, "snr_gamma") : 0.0f;
    p.max_grad_norm = cJSON_IsNumber(cJSON_GetObjectItem(s, "max_grad_norm")) ? (float)jnum(s, "max_grad_norm") : 0.0f;
    const char *pt = cJSON_GetStringValue(cJSON_GetObjectItem(s, "prediction_type"));
    p.prediction_type = pt && !strcmp(pt, "v_prediction") ? LSD_PREDICTION_V : LSD_PREDICTION_EPSILON;
    lsd_trainer *tr = NULL;
    CHECK_OK(lsd_trainer_new(m, set, "t", NULL, &p, &tr));
    float *ac = get(data_path(INPUTS), "alphas_cumprod", NULL, NULL, NULL);
    if (tr && ac) {
        CHECK_OK(lsdi_noise_schedule_set_alphas_cumprod(&tr->ns, ac, 1000));
        tr->keep_debug = 1;
        float *used1[176] = {0};
        for (int k = 1; k <= 2; k++) {
            const char *sfx = k == 1 ? "" : "2";
            char nl[16], nn[16], nt[16], nc[16];
            snprintf(nl, sizeof nl, "latents%s", sfx);
            snprintf(nn, sizeof nn, "noise%s", sfx);
            snprintf(nt, sizeof nt, "timesteps%s", sfx);
            snprintf(nc, sizeof nc, "context%s", sfx);
            float *lat = get(data_path(INPUTS), nl, NULL, NULL, NULL);
            float *noise = get(data_path(INPUTS), nn, NULL, NULL, NULL);
            float *ctx = get(data_path(INPUTS), nc, NULL, NULL, NULL);
            int64_t *ts = load_i64(data_path(INPUTS), nt, NULL);
            lsd_train_batch b = {sizeof b, 2, 16, 16, NULL, lat, NULL, ctx, 77, noise, ts, NULL};
            float loss = NAN;
            if (lat && noise && ctx && ts && CHECK_OK(lsd_trainer_step_batch(tr, &b, &loss)))
                check_step(tr, m, ref, j, k, loss, used1);
            free(lat);
            free(noise);
            free(ctx);
            free(ts);
        }
        for (int i = 0; i < 176; i++)
            free(used1[i]);
        CHECK(lsd_trainer_get_step(tr) == 2);
    }
    free(ac);
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    cJSON_Delete(j);
    cache_clear();
}

TEST(train_step_eps) { run_case("eps"); }
TEST(train_step_v) { run_case("v"); }
TEST(train_step_eps_snr5) { run_case("eps_snr5"); }
TEST(train_step_v_snr5) { run_case("v_snr5"); }
TEST(train_step_eps_clip) { run_case("eps_clip"); }
TEST(train_step_eps_alpha1) { run_case("eps_alpha1"); }

/* AdamW alone: the stored gradients fed in (as d/dθ sum(θ·g) = g, exactly) reproduce step1/ and step2/. */
static void adamw_alone(const char *c, int clipped)
{
    char rel[128], ref[512];
    snprintf(rel, sizeof rel, "sd-tiny/ref/train_step_%s.safetensors", c);
    snprintf(ref, sizeof ref, "%s", data_path(rel));
    lsd_model *m = tiny();
    lsd_adapter_set *set = m ? fixture_adapter(m, 4.0f) : NULL;
    lsdi_adapter *ad = set ? lsdi_adapter_find(set, "t") : NULL;
    lsdt_tensor **params = NULL;
    int n = 0;
    if (ad)
        CHECK_OK(lsdi_adapter_trainable_params(set, "t", &params, &n));
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    lsdi_optim_group grp = {params, n, 1e-3};
    lsdi_optim *o = NULL;
    if (params)
        CHECK_OK(lsdi_optim_new(LSD_OPTIM_ADAMW, NULL, &tp, &grp, 1, &o));
    double worst = 0;
    for (int k = 1; k <= 2 && o; k++) {
        for (int i = 0; i < n; i++) {
            char base[256], name[320];
            peft_name(m, ad, i, base, sizeof base);
            snprintf(name, sizeof name, "grad%d%s/%s", k, clipped ? "_clipped" : "", base);
            int64_t shape[8];
            int nd = 0;
            float *g = get(ref, name, shape, &nd, NULL);
            if (!g)
                continue;
            lsdt_scope *s = lsdt_scope_begin();
            lsdt_tensor *gt = lsdt_from_host(s, g, LSDT_F32, shape, nd, LSDT_F32, NULL);
            CHECK(lsdt_backward(lsdt_sum(s, lsdt_mul(s, params[i], gt))) == 0);
            CHECK(lsdt_scope_end(s) == 0);
            free(g);
        }
        CHECK_OK(lsdi_optim_step(o));
        lsdt_zero_grad(params, n);
        for (int i = 0; i < n; i++) {
            char base[256], name[320];
            peft_name(m, ad, i, base, sizeof base);
            snprintf(name, sizeof name, "step%d/%s", k, base);
            size_t cnt = 0;
            float *w_ref = get(ref, name, NULL, NULL, &cnt), *w = tensor_host(params[i]);
            if (w_ref && w)
                worst = fmax(worst, max_abs_diff(w, w_ref, cnt));
            free(w_ref);
            free(w);
        }
    }
    CHECK(o && worst <= 5e-7, "%s: AdamW from stored gradients differs by %g", c, worst);
    lsdi_optim_free(o);
    free(params);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    cache_clear();
}

TEST(train_adamw_alone)
{
    adamw_alone("eps", 0);
    adamw_alone("eps_clip", 1);
}

/* ---- dataset ---- */

static float red_at(int x_out, int left, int src_w, int rw)
{
    double sx = (x_out + left + 0.5) * src_w / rw - 0.5;
    return (float)(6 * fmax(sx, 0) / 127.5 - 1);
}

TEST(train_dataset_folder)
{
    const char *d = temp_dir();
    make_captioned_png(d, "a.png", 40, 20, "  a red square\n");
    make_captioned_png(d, "b.png", 16, 32, "tall");
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.resolution = 16;
    p.center_crop = 1;
    lsd_dataset *ds = NULL;
    if (!CHECK_OK(lsd_dataset_open(d, &p, &ds)))
        return;
    CHECK(lsd_dataset_size(ds) == 2);
    lsd_dataset_item it = {.struct_size = sizeof it};
    CHECK_OK(lsd_dataset_get(ds, 0, 7, &it));
    CHECK(!strcmp(it.caption, "a red square"), "caption \"%s\"", it.caption);
    CHECK(it.width == 16 && it.height == 16 && it.crop_left == 8 && it.crop_top == 0 && !it.flipped);
    for (int x = 0; x < 16; x++)
        CHECK(fabsf(it.pixels[x] - red_at(x, 8, 40, 32)) < 1e-5, "x %d: %f vs %f", x, it.pixels[x], red_at(x, 8, 40, 32));
    CHECK(fabsf(it.pixels[2 * 256 + 5] - (200 / 127.5f - 1)) < 1e-6);
    lsd_dataset_item_release(&it);
    CHECK_OK(lsd_dataset_get(ds, 1, 7, &it));
    CHECK(!strcmp(it.caption, "tall") && it.crop_top == 8 && it.crop_left == 0);
    lsd_dataset_item_release(&it);
    lsd_dataset_free(ds);

    /* Random crop and flip: positions within range, pixels consistent with them, both flips seen. */
    p.center_crop = 0;
    p.random_flip = 1;
    CHECK_OK(lsd_dataset_open(d, &p, &ds));
    int flips[2] = {0, 0}, lefts = 0;
    for (uint64_t seed = 0; ds && seed < 16; seed++) {
        CHECK_OK(lsd_dataset_get(ds, 0, seed, &it));
        CHECK(it.crop_left >= 0 && it.crop_left <= 16 && it.crop_top == 0);
        flips[it.flipped]++;
        lefts |= 1 << (it.crop_left % 16);
        for (int x = 0; x < 16; x++) {
            int ox = it.flipped ? 15 - x : x;
            CHECK(fabsf(it.pixels[ox] - red_at(x, it.crop_left, 40, 32)) < 1e-5, "seed %llu x %d",
                  (unsigned long long)seed, x);
        }
        lsd_dataset_item_release(&it);
    }
    CHECK(flips[0] && flips[1] && lefts != 1, "flips %d/%d", flips[0], flips[1]);
    lsd_dataset_free(ds);

    /* A missing caption names the image; allowed, it is "". */
    make_captioned_png(d, "c.png", 8, 8, NULL);
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_FORMAT, "c.png");
    p.allow_empty_captions = 1;
    CHECK_OK(lsd_dataset_open(d, &p, &ds));
    CHECK(lsd_dataset_size(ds) == 3 && ds && !strcmp(lsdi_dataset_caption(ds, 2), ""));
    lsd_dataset_free(ds);
    /* An unreadable image is named when the dataset is opened (its header is read then). */
    char bad[512];
    snprintf(bad, sizeof bad, "%s/d.png", d);
    write_file(bad, "not a png", 9);
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_FORMAT, "d.png");
    CHECK_STATUS(lsd_dataset_open("/nonexistent/lsd", NULL, &ds), LSD_ERR_NOT_FOUND, "/nonexistent/lsd");
}

TEST(train_dataset_metadata_jsonl)
{
    const char *d = temp_dir();
    char sub[512], meta[600];
    snprintf(sub, sizeof sub, "%s/img", d);
    mkdir(sub, 0777);
    make_captioned_png(sub, "x.png", 12, 12, NULL);
    make_captioned_png(d, "y.png", 12, 12, "ignored: metadata wins");
    snprintf(meta, sizeof meta, "%s/metadata.jsonl", d);
    const char *lines = "{\"file_name\": \"y.png\", \"text\": \"a dog\"}\n\n"
                        "{\"file_name\": \"img/x.png\", \"text\": \"a cat\"}\n";
    write_file(meta, lines, strlen(lines));
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.resolution = 8;
    lsd_dataset *ds = NULL;
    CHECK_OK(lsd_dataset_open(d, &p, &ds));
    CHECK(lsd_dataset_size(ds) == 2);
    lsd_dataset_item it = {.struct_size = sizeof it};
    if (CHECK_OK(lsd_dataset_get(ds, 0, 0, &it))) { /* sorted by path: img/x.png first */
        CHECK(!strcmp(it.caption, "a cat") && strstr(it.path, "img/x.png") && it.width == 8);
        lsd_dataset_item_release(&it);
    }
    CHECK(ds && !strcmp(lsdi_dataset_caption(ds, 1), "a dog"));
    lsd_dataset_free(ds);
    const char *evil = "{\"file_name\": \"../../etc/passwd\", \"text\": \"x\"}\n";
    write_file(meta, evil, strlen(evil));
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_FORMAT, "line 1");
    const char *nocap = "{\"file_name\": \"y.png\"}\n";
    write_file(meta, nocap, strlen(nocap));
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_FORMAT, "y.png");
}

/* ---- LR schedules (diffusers get_scheduler) ---- */

TEST(train_lr_schedules)
{
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.max_train_steps = 100;
    p.lr_warmup_steps = 10;
    p.learning_rate = 1e-3;
    struct {
        lsd_lr_scheduler s;
        int step;
        double want;
    } cases[] = {
        {LSD_LR_CONSTANT, 0, 1.0},
        {LSD_LR_CONSTANT_WITH_WARMUP, 0, 0.0},
        {LSD_LR_CONSTANT_WITH_WARMUP, 5, 0.5},
        {LSD_LR_CONSTANT_WITH_WARMUP, 50, 1.0},
        {LSD_LR_LINEAR, 5, 0.5},
        {LSD_LR_LINEAR, 10, 1.0},
        {LSD_LR_LINEAR, 55, 0.5},
        {LSD_LR_LINEAR, 100, 0.0},
        {LSD_LR_COSINE, 55, 0.5},
        {LSD_LR_COSINE, 10, 1.0},
        {LSD_LR_COSINE, 40, 0.5 * (1 + cos(M_PI * 30.0 / 90.0))},
        {LSD_LR_COSINE_WITH_RESTARTS, 100, 0.0},
        {LSD_LR_POLYNOMIAL, 55, ((1e-3 - 1e-7) * 0.5 + 1e-7) / 1e-3},
        {LSD_LR_POLYNOMIAL, 200, 1e-7 / 1e-3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        p.lr_scheduler = cases[i].s;
        double got = lsdi_lr_factor(&p, cases[i].step);
        CHECK(fabs(got - cases[i].want) < 1e-12, "%s at %d: %g, want %g", lsd_lr_scheduler_name(cases[i].s),
              cases[i].step, got, cases[i].want);
    }
    p.lr_scheduler = LSD_LR_COSINE_WITH_RESTARTS;
    p.lr_warmup_steps = 0;
    p.lr_num_cycles = 2;
    CHECK(fabs(lsdi_lr_factor(&p, 25) - 0.5) < 1e-12 && fabs(lsdi_lr_factor(&p, 50) - 1.0) < 1e-12);
    p.lr_scheduler = LSD_LR_POLYNOMIAL;
    p.lr_power = 2;
    CHECK(fabs(lsdi_lr_factor(&p, 50) - ((1e-3 - 1e-7) * 0.25 + 1e-7) / 1e-3) < 1e-12);
    for (int s = 0; s <= LSD_LR_POLYNOMIAL; s++) {
        lsd_lr_scheduler back;
        CHECK_OK(lsd_lr_scheduler_from_name(lsd_lr_scheduler_name((lsd_lr_scheduler)s), &back));
        CHECK(back == (lsd_lr_scheduler)s);
    }
    lsd_lr_scheduler x;
    CHECK_STATUS(lsd_lr_scheduler_from_name("cosine_annealing", &x), LSD_ERR_INVALID_ARGUMENT, "cosine_annealing");
}

/* ---- end to end on sd-tiny ---- */

static void e2e_params(lsd_train_params *p, const char *out)
{
    lsd_train_params_init(p);
    p->train_batch_size = 2;
    p->resolution = 32;
    p->max_train_steps = 3;
    p->learning_rate = 1e-3;
    p->seed = 42;
    p->random_flip = 1;
    p->snr_gamma = 5.0f;
    p->noise_offset = 0.05f;
    p->output_dir = out;
    p->checkpointing_steps = 1;
    p->checkpoints_total_limit = 2;
}

TEST(train_end_to_end_checkpoint_resume)
{
    const char *data = tiny_dataset(), *out = temp_dir();
    lsd_dataset *ds = NULL;
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    e2e_params(&p, out);
    if (!CHECK_OK(lsd_dataset_open(data, NULL, &ds)) || !m || !CHECK_OK(lsd_adapter_set_new(m, &set)) ||
        !CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr)))
        goto done;
    float loss[3];
    size_t n = 0;
    float *w0 = trainer_weights(tr, &n);
    for (int k = 0; k < 3; k++) {
        CHECK_OK(lsd_trainer_step(tr, &loss[k]));
        CHECK(isfinite(loss[k]) && loss[k] > 0, "loss %d = %f", k, loss[k]);
    }
    float *w3 = trainer_weights(tr, &n);
    CHECK(w0 && w3 && max_abs_diff(w0, w3, n) > 1e-4, "the LoRA moved by %g", w0 && w3 ? max_abs_diff(w0, w3, n) : 0);
    CHECK(lsd_trainer_get_step(tr) == 3);
    CHECK(!exists_in(out, "checkpoint-1") && exists_in(out, "checkpoint-2") && exists_in(out, "checkpoint-3"),
          "checkpoints_total_limit 2 keeps checkpoint-2 and -3");
    CHECK(exists_in(out, "checkpoint-2/pytorch_lora_weights.safetensors") &&
          exists_in(out, "checkpoint-2/training_state.safetensors"));

    /* A fresh model resumed from checkpoint-2 takes step 3 exactly as the uninterrupted run did. */
    lsd_model *m2 = tiny();
    lsd_adapter_set *set2 = NULL;
    lsd_trainer *tr2 = NULL;
    lsd_train_params p2;
    e2e_params(&p2, NULL);
    char ck[600];
    snprintf(ck, sizeof ck, "%s/checkpoint-2", out);
    if (m2 && CHECK_OK(lsd_adapter_set_new(m2, &set2)) && CHECK_OK(lsd_trainer_new(m2, set2, "lora", ds, &p2, &tr2)) &&
        CHECK_OK(lsd_trainer_resume(tr2, ck))) {
        CHECK(lsd_trainer_get_step(tr2) == 2);
        float l3 = 0;
        CHECK_OK(lsd_trainer_step(tr2, &l3));
        size_t n2 = 0;
        float *r3 = trainer_weights(tr2, &n2);
        CHECK(n2 == n && r3 && w3 && !memcmp(r3, w3, n * sizeof *r3), "resumed step 3 differs by %g",
              r3 && w3 && n2 == n ? max_abs_diff(r3, w3, n) : -1.0);
        CHECK(l3 == loss[2], "loss %.9g vs %.9g", l3, loss[2]);
        free(r3);
    }
    /* The kohya file loads back as an adapter. */
    char kf[700];
    snprintf(kf, sizeof kf, "%s/checkpoint-3/pytorch_lora_weights.safetensors", out);
    lsd_load_report rep = {.struct_size = sizeof rep};
    if (set2)
        CHECK_OK(lsd_adapter_set_load(set2, "back", kf, NULL, &rep));
    CHECK(rep.format == LSD_LORA_FORMAT_KOHYA && rep.applied_modules == 88 && rep.unmatched_keys == 0);
    CHECK_STATUS(lsd_trainer_resume(tr2, out), LSD_ERR_NOT_FOUND, "training_state.safetensors");
    lsd_trainer_free(tr2);
    lsd_adapter_set_free(set2);
    lsd_model_free(m2);
    free(w0);
    free(w3);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
}

static int cancel_cb(const lsd_progress *pr, void *user)
{
    (*(int *)user)++;
    return pr->stage == LSD_STAGE_TRAIN_STEP;
}

TEST(train_nan_and_cancel_change_nothing)
{
    lsd_model *m = tiny();
    lsd_adapter_set *set = m ? fixture_adapter(m, 4.0f) : NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    lsd_train_params_init(&p);
    int calls = 0;
    p.progress = cancel_cb;
    p.progress_user = &calls;
    if (!set || !CHECK_OK(lsd_trainer_new(m, set, "t", NULL, &p, &tr)))
        goto done;
    float *lat = get(data_path(INPUTS), "latents", NULL, NULL, NULL);
    float *ctx = get(data_path(INPUTS), "context", NULL, NULL, NULL);
    size_t n = 0;
    float *w0 = trainer_weights(tr, &n);
    if (lat && ctx && w0) {
        lat[100] = NAN;
        lsd_train_batch b = {sizeof b, 2, 16, 16, NULL, lat, NULL, ctx, 77, NULL, NULL, NULL};
        float loss = 0;
        CHECK_STATUS(lsd_trainer_step_batch(tr, &b, &loss), LSD_ERR_NUMERIC, "step 1");
        CHECK(calls == 0 && lsd_trainer_get_step(tr) == 0);
        lat[100] = 0.0f;
        CHECK_STATUS(lsd_trainer_step_batch(tr, &b, &loss), LSD_ERR_CANCELLED, "step 1");
        CHECK(calls == 1 && lsd_trainer_get_step(tr) == 0);
        float *w1 = trainer_weights(tr, &n);
        CHECK(w1 && !memcmp(w0, w1, n * sizeof *w0), "weights unchanged");
        free(w1);
        /* Optimizer state untouched too: moments and step counts still 0. */
        for (int k = 0; k < lsdi_optim_state_count(tr->opt); k++) {
            lsdt_tensor *t = lsdi_optim_state_get(tr->opt, k);
            double sq = 1;
            lsdt_scope *s = lsdt_scope_begin();
            CHECK(lsdt_item(lsdt_sum(s, lsdt_mul(s, t, t)), &sq) == 0 && sq == 0, "%s",
                  lsdi_optim_state_name(tr->opt, k));
            lsdt_scope_end(s);
        }
        b.latents = NULL;
        CHECK_STATUS(lsd_trainer_step_batch(tr, &b, &loss), LSD_ERR_INVALID_ARGUMENT, "images and latents");
        CHECK_STATUS(lsd_trainer_step(tr, &loss), LSD_ERR_INVALID_ARGUMENT, "no dataset");
    }
    free(lat);
    free(ctx);
    free(w0);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    cache_clear();
}

TEST(train_params_rejected)
{
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    if (!m || !CHECK_OK(lsd_adapter_set_new(m, &set)))
        goto done;
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.gradient_accumulation_steps = 0;
    CHECK_STATUS(lsd_trainer_new(m, set, "x", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "gradient_accumulation_steps");
    lsd_train_params_init(&p);
    p.mixed_precision = (lsd_dtype)7;
    CHECK_STATUS(lsd_trainer_new(m, set, "x", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "mixed_precision");
    CHECK(tr == NULL);
done:
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}

/* ---- the CLI ---- */

static int cli(const char *args)
{
    const char *bin = getenv("LSD_CLI") ? getenv("LSD_CLI") : "build/lora-sd";
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s train %s >/dev/null 2>&1", bin, args);
    int rc = system(cmd);
    return rc >= 0 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(train_cli)
{
    const char *data = tiny_dataset(), *out = temp_dir();
    char args[3072], common[2048];
    snprintf(common, sizeof common,
             "--pretrained_model_name_or_path %s --train_data_dir %s --output_dir %s --resolution 32 "
             "--train_batch_size 1 --learning_rate 1e-3 --lr_scheduler constant --rank 4 --seed 3 --snr_gamma 5 "
             "--max_grad_norm 1 --checkpointing_steps 1 --checkpoints_total_limit 1 --mixed_precision no",
             data_path("sd-tiny"), data, out);
    snprintf(args, sizeof args, "%s --max_train_steps 1", common);
    CHECK(cli(args) == 0);
    CHECK(exists_in(out, "pytorch_lora_weights.safetensors") && exists_in(out, "checkpoint-1"));
    snprintf(args, sizeof args, "%s --max_train_steps 2 --resume_from_checkpoint latest --save_format peft", common);
    CHECK(cli(args) == 0);
    CHECK(exists_in(out, "checkpoint-2") && !exists_in(out, "checkpoint-1"));
    lsd_model *m = tiny();
    lsd_adapter_set *set = NULL;
    char f[700];
    snprintf(f, sizeof f, "%s/pytorch_lora_weights.safetensors", out);
    lsd_load_report rep = {.struct_size = sizeof rep};
    if (m && CHECK_OK(lsd_adapter_set_new(m, &set)))
        CHECK_OK(lsd_adapter_set_load(set, "out", f, NULL, &rep));
    CHECK(rep.format == LSD_LORA_FORMAT_PEFT && rep.applied_modules == 88);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    snprintf(args, sizeof args, "%s --learning_rate abc", common);
    CHECK(cli(args) == 2);
    CHECK(cli("--pretrained_model_name_or_path x") == 2);
    snprintf(args, sizeof args, "%s --train_data_dir /nonexistent/lsd-data", common);
    CHECK(cli(args) == 1);
    snprintf(args, sizeof args, "%s --mixed_precision fp8", common);
    CHECK(cli(args) == 2);
}

/* The same tensors, bit for bit (the metadata, which has times in it, aside). */
static int same_tensors(const char *a, const char *b)
{
    lsdi_st_file *x = NULL, *y = NULL;
    int same = lsdi_st_open(a, &x) == LSD_OK && lsdi_st_open(b, &y) == LSD_OK && lsdi_st_count(x) == lsdi_st_count(y);
    for (size_t i = 0; same && i < lsdi_st_count(x); i++) {
        const lsdi_st_tensor *t = lsdi_st_at(x, i), *u = lsdi_st_find(y, t->name);
        same = u && u->dtype == t->dtype &&
               u->nbytes == t->nbytes && !memcmp(u->data, t->data, t->nbytes);
    }
    lsdi_st_close(x);
    lsdi_st_close(y);
    return same;
}

TEST(train_cli_optimizers_and_ema)
{
    const char *data = tiny_dataset(), *out = temp_dir();
    char args[3072], common[2048], f[700], g[700];
    snprintf(common, sizeof common,
             "--pretrained_model_name_or_path %s --train_data_dir %s --resolution 32 --train_batch_size 1 "
             "--learning_rate 1e-4 --seed 3 --checkpointing_steps 2",
             data_path("sd-tiny"), data);
    /* kohya's spelling: several words after --optimizer_args. With --use_ema the final file holds the EMA weights
     * and the raw ones (those the checkpoint of the last step holds) go beside it. */
    snprintf(args, sizeof args, "%s --output_dir %s --max_train_steps 2 --optimizer_type Lion --optimizer_args "
             "weight_decay=0.1 betas=0.9,0.99 --use_ema --ema_decay 0.5", common, out);
    CHECK(cli(args) == 0);
    snprintf(f, sizeof f, "%s/pytorch_lora_weights_raw.safetensors", out);
    snprintf(g, sizeof g, "%s/checkpoint-2/pytorch_lora_weights.safetensors", out);
    CHECK(same_tensors(f, g), "the raw weights are the last step's");
    snprintf(g, sizeof g, "%s/pytorch_lora_weights.safetensors", out);
    CHECK(exists_in(out, "pytorch_lora_weights.safetensors") && !same_tensors(f, g), "the final file holds the EMA");
    snprintf(args, sizeof args, "%s --output_dir %s --max_train_steps 1 --optimizer SGDNesterov "
             "--optimizer_args=momentum=0.5", common, temp_dir());
    CHECK(cli(args) == 0);
    snprintf(args, sizeof args, "%s --output_dir %s --optimizer AdamW8bit", common, temp_dir());
    CHECK(cli(args) == 2);
    /* a bad key is a usage error found before the dataset and the model are read */
    snprintf(args, sizeof args, "%s --output_dir %s --optimizer prodigy --optimizer_args d_coef=2 foo=1", common,
             temp_dir());
    CHECK(cli(args) == 2);
}
