/* DreamBooth prior preservation: the two loss rules (diffusers' instance + prior_loss_weight x class, kohya's
 * per-item weights) against a float64 reference and against gradients of single items, and class images
 * generated, reused and cancelled on the tiny model. */
#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "io/hash.h"
#include "model/model.h"
#include "test.h"
#include "train/train.h"

#define INPUTS "sd-tiny/ref/train_step_inputs.safetensors"
#define PER (4 * 16 * 16) /* floats of one fixture latent */

/* Every adapter tensor filled with small deterministic values, so that both LoRA factors get gradients. */
static void fill_adapter(lsd_trainer *tr)
{
    uint32_t seed = 12345;
    for (int i = 0; i < tr->n_params; i++) {
        size_t n = (size_t)lsdt_numel(tr->params[i]);
        float *v = malloc(n * sizeof *v);
        for (size_t k = 0; v && k < n; k++) {
            seed = seed * 1664525u + 1013904223u;
            v[k] = ((float)(seed >> 9) / 8388608.0f - 0.5f) * 0.2f;
        }
        int64_t shape[4];
        int nd = lsdt_ndim(tr->params[i]);
        for (int d = 0; d < nd; d++)
            shape[d] = lsdt_size(tr->params[i], d);
        lsdt_tensor *src = v ? lsdt_from_host(NULL, v, LSDT_F32, shape, nd, LSDT_F32, NULL) : NULL;
        CHECK(src && lsdt_copy_(tr->params[i], src) == 0);
        lsdt_free(src);
        free(v);
    }
}

/* All gradients of the last step (before clipping), concatenated. */
static double *grads(lsd_trainer *tr, size_t *count)
{
    size_t n = 0;
    for (int i = 0; i < tr->n_params; i++)
        n += (size_t)lsdt_numel(tr->params[i]);
    double *g = malloc(n * sizeof *g);
    float *tmp = malloc(n * sizeof *tmp);
    size_t at = 0;
    for (int i = 0; g && tmp && i < tr->n_params; i++) {
        size_t k = (size_t)lsdt_numel(tr->params[i]);
        CHECK(tr->last_grads[i] && lsdt_to_host(tr->last_grads[i], tmp, LSDT_F32, k) == 0);
        for (size_t e = 0; e < k; e++)
            g[at + e] = tmp[e];
        at += k;
    }
    free(tmp);
    *count = n;
    return g;
}

typedef struct fixture {
    float *lat, *noise, *ctx, *ac;
    int64_t *ts;
} fixture;

static int fixture_load(fixture *f)
{
    f->lat = load_f32(data_path(INPUTS), "latents", NULL, NULL, NULL);
    f->noise = load_f32(data_path(INPUTS), "noise", NULL, NULL, NULL);
    f->ctx = load_f32(data_path(INPUTS), "context", NULL, NULL, NULL);
    f->ac = load_f32(data_path(INPUTS), "alphas_cumprod", NULL, NULL, NULL);
    f->ts = load_i64(data_path(INPUTS), "timesteps", NULL);
    return f->lat && f->noise && f->ctx && f->ac && f->ts;
}

static void fixture_free(fixture *f)
{
    free(f->lat);
    free(f->noise);
    free(f->ctx);
    free(f->ac);
    free(f->ts);
}

/* One step on fixture items [first, first + n) with the given class flags; loss and (copied) gradients out. */
static double *step(lsd_trainer *tr, const fixture *f, int first, int n, const int *is_class, float *loss,
                    size_t *count)
{
    lsd_train_batch b = {sizeof b, n, 16, 16, NULL, f->lat + first * PER, NULL, f->ctx + (size_t)first * 77 * 32, 77,
                         f->noise + first * PER, f->ts + first, is_class};
    if (!CHECK_OK(lsd_trainer_step_batch(tr, &b, loss)))
        return NULL;
    return grads(tr, count);
}

/* min-SNR weight of the trainer's rule, in float64 from the same alphas_cumprod. */
static double snr_weight(const fixture *f, int64_t t, double gamma)
{
    double snr = f->ac[t] / (1.0 - f->ac[t]);
    return gamma > 0 ? fmin(snr, gamma) / snr : 1.0;
}

static void prior_case(lsd_model *m, const fixture *f, int dreambooth, float gamma)
{
    const float plw = 0.7f;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.learning_rate = 1e-30; /* the steps below must see the same weights */
    p.max_grad_norm = 0;
    p.prediction_type = LSD_PREDICTION_EPSILON;
    p.snr_gamma = gamma;
    p.with_prior_preservation = dreambooth;
    p.prior_loss_weight = plw;
    if (!CHECK_OK(lsd_adapter_set_new(m, &set)) || !CHECK_OK(lsd_trainer_new(m, set, "t", NULL, &p, &tr)))
        goto done;
    CHECK_OK(lsdi_noise_schedule_set_alphas_cumprod(&tr->ns, f->ac, 1000));
    fill_adapter(tr);
    tr->keep_debug = 1;
    static const int flags[2] = {0, 1};
    float loss = 0, l0 = 0, l1 = 0;
    size_t n = 0, n0 = 0, n1 = 0;
    double *g = step(tr, f, 0, 2, flags, &loss, &n);
    double mse[2] = {0, 0};
    for (int i = 0; i < 2 && tr->last_n == 2 * PER; i++)
        for (int k = 0; k < PER; k++) {
            double d = (double)tr->last_pred[i * PER + k] - tr->last_target[i * PER + k];
            mse[i] += d * d / PER;
        }
    CHECK(tr->last_n == 2 * PER);
    double w0 = snr_weight(f, f->ts[0], gamma), w1 = snr_weight(f, f->ts[1], gamma);
    /* diffusers: instance MSE (min-SNR weighted) + plw x class MSE; kohya: mean of plw-weighted, SNR-weighted items */
    double want = dreambooth ? w0 * mse[0] + plw * mse[1] : (w0 * mse[0] + plw * w1 * mse[1]) / 2;
    CHECK(fabs(loss - want) <= 2e-6 * want, "%s snr %g: loss %.9g, float64 reference %.9g",
          dreambooth ? "dreambooth" : "kohya", gamma, loss, want);
    /* The gradient is the same combination of each item's own gradient (alone, unflagged, an item's loss is
     * w_i * mse_i). */
    double *g0 = step(tr, f, 0, 1, NULL, &l0, &n0), *g1 = step(tr, f, 1, 1, NULL, &l1, &n1);
    CHECK(fabs(l0 - w0 * mse[0]) <= 1e-5 * w0 * mse[0] && fabs(l1 - w1 * mse[1]) <= 1e-5 * w1 * mse[1],
          "single items %g %g vs %g %g", l0, l1, w0 * mse[0], w1 * mse[1]);
    double c0 = dreambooth ? 1 : 0.5, c1 = dreambooth ? plw / w1 : plw / 2, worst = 0, big = 0;
    for (size_t k = 0; g && g0 && g1 && n0 == n && n1 == n && k < n; k++) {
        double e = c0 * g0[k] + c1 * g1[k];
        worst = fmax(worst, fabs(g[k] - e));
        big = fmax(big, fabs(e));
    }
    CHECK(g && g0 && g1 && big > 0 && worst <= 1e-4 * big, "gradient differs by %g (max %g)", worst, big);
    free(g);
    free(g0);
    free(g1);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
}

TEST(prior_loss_rules)
{
    lsd_model *m = NULL;
    fixture f = {0};
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && fixture_load(&f)) {
        CHECK(f.ts[0] != f.ts[1], "the fixture's two timesteps differ, so the SNR weights tell the items apart");
        prior_case(m, &f, 1, 0.0f);
        prior_case(m, &f, 1, 5.0f);
        prior_case(m, &f, 0, 0.0f);
        prior_case(m, &f, 0, 5.0f);
    }
    fixture_free(&f);
    lsd_model_free(m);
}

/* ---- class images ---- */

typedef struct listing {
    int n, index_mask, bad;
} listing;

/* Files of dir: every one must be "<k>-<sha1 of its pixels>.png" (k < 30) holding a side x side image. */
static listing list_class_dir(const char *dir, int side)
{
    listing l = {0, 0, 0};
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        l.n++;
        int k = -1, used = 0;
        char hex[41] = {0}, want[41] = {0}, path[1024];
        if (sscanf(e->d_name, "%d-%40[0-9a-f].png%n", &k, hex, &used) != 2 || (size_t)used != strlen(e->d_name) ||
            k < 0 || k >= 30) {
            if (strcmp(e->d_name, "mine.jpg"))
                l.bad++;
            continue;
        }
        l.index_mask |= 1 << k;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        lsd_image img = {sizeof img, 0, 0, 0, NULL};
        if (!CHECK_OK(lsd_image_load(path, &img)) || img.width != side || img.height != side ||
            lsdi_sha1_hex(img.data, (size_t)side * side * 3, want) != LSD_OK || strcmp(hex, want))
            l.bad++;
        lsd_image_release(&img);
    }
    if (d)
        closedir(d);
    return l;
}

typedef struct progress_log {
    int class_reports, last_step, last_total, cancel_at_report, cancel_in_second_batch;
} progress_log;

static int on_progress(const lsd_progress *p, void *user)
{
    progress_log *pl = user;
    if (p->stage == LSD_STAGE_DENOISE)
        return pl->cancel_in_second_batch && pl->class_reports == 1;
    if (p->stage != LSD_STAGE_CLASS_IMAGES)
        return 0;
    pl->class_reports++;
    pl->last_step = p->step;
    pl->last_total = p->total;
    return pl->class_reports == pl->cancel_at_report;
}

TEST(prior_class_images)
{
    char hex[41];
    CHECK_OK(lsdi_sha1_hex("abc", 3, hex));
    CHECK(!strcmp(hex, "a9993e364706816aba3e25717850c26c9cd0d89d"), "sha1(abc) = %s", hex);
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/class/dogs", temp_dir()); /* made with its parent */
    progress_log pl = {0};
    lsd_class_images_params p;
    lsd_class_images_params_init(&p);
    CHECK(p.num_class_images == 100 && p.sample_batch_size == 4 && p.steps == 50 && p.resolution == 0);
    p.class_data_dir = dir;
    p.class_prompt = "a photo of a dog";
    p.num_class_images = 5;
    p.sample_batch_size = 2;
    p.steps = 2;
    p.progress = on_progress;
    p.progress_user = &pl;
    int made = -1;
    CHECK_OK(lsd_generate_class_images(m, &p, &made));
    listing l = list_class_dir(dir, 32); /* the tiny UNet's sample_size 16 x VAE factor 2 */
    CHECK(made == 5 && l.n == 5 && l.index_mask == 0x1F && !l.bad, "made %d, %d files, mask %x, %d bad", made, l.n,
          l.index_mask, l.bad);
    CHECK(pl.class_reports == 3 && pl.last_step == 5 && pl.last_total == 5, "%d reports, last %d/%d",
          pl.class_reports, pl.last_step, pl.last_total);
    /* A second run finds them all. */
    pl.class_reports = 0;
    CHECK_OK(lsd_generate_class_images(m, &p, &made));
    CHECK(made == 0 && pl.class_reports == 0 && list_class_dir(dir, 32).n == 5);

    /* Cancelled after the first batch, then inside the second batch's sampling: whole files only, reused. */
    snprintf(dir, sizeof dir, "%s/cats", temp_dir());
    p.class_prompt = "a photo of a cat";
    pl = (progress_log){0, 0, 0, 1, 0};
    CHECK_STATUS(lsd_generate_class_images(m, &p, &made), LSD_ERR_CANCELLED, "after 2 of 5");
    l = list_class_dir(dir, 32);
    CHECK(made == 2 && l.n == 2 && l.index_mask == 0x3 && !l.bad, "made %d, %d files", made, l.n);
    pl = (progress_log){0, 0, 0, 0, 1};
    CHECK_STATUS(lsd_generate_class_images(m, &p, &made), LSD_ERR_CANCELLED, NULL);
    l = list_class_dir(dir, 32);
    CHECK(made == 2 && l.n == 4 && l.index_mask == 0xF && !l.bad, "made %d, %d files", made, l.n);
    pl = (progress_log){0};
    CHECK_OK(lsd_generate_class_images(m, &p, &made));
    l = list_class_dir(dir, 32);
    CHECK(made == 1 && l.n == 5 && l.index_mask == 0x1F && !l.bad, "made %d, %d files", made, l.n);

    /* The user's own images count; new names go on from them. */
    snprintf(dir, sizeof dir, "%s", temp_dir());
    char mine[700];
    snprintf(mine, sizeof mine, "%s/mine.jpg", dir);
    write_file(mine, "x", 1);
    p.num_class_images = 2;
    p.resolution = 16;
    CHECK_OK(lsd_generate_class_images(m, &p, &made));
    l = list_class_dir(dir, 16);
    CHECK(made == 1 && l.n == 2 && l.index_mask == 0x2 && !l.bad, "made %d, %d files, mask %x", made, l.n,
          l.index_mask);

    p.class_prompt = NULL;
    CHECK_STATUS(lsd_generate_class_images(m, &p, &made), LSD_ERR_INVALID_ARGUMENT, "class_prompt");
    p.class_prompt = "x";
    p.class_data_dir = mine;
    CHECK_STATUS(lsd_generate_class_images(m, &p, &made), LSD_ERR_IO, "mine.jpg");
    lsd_model_free(m);
}

static int cli(const char *args)
{
    const char *bin = getenv("LSD_CLI") ? getenv("LSD_CLI") : "build/lora-sd";
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s train %s >/dev/null 2>&1", bin, args);
    int rc = system(cmd);
    return rc >= 0 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(prior_cli_class_images)
{
    const char *data = temp_dir(), *out = temp_dir();
    char img[600], cls[600], args[3072];
    snprintf(img, sizeof img, "%s/a.png", data);
    uint8_t px[32 * 32 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 7);
    lsd_image im = {sizeof im, 32, 32, 3, px};
    CHECK_OK(lsd_image_save_png(img, &im, NULL, NULL, 0));
    snprintf(cls, sizeof cls, "%s/class", out);
    snprintf(args, sizeof args,
             "--pretrained_model_name_or_path %s --instance_data_dir %s --instance_prompt 'a photo of sks dog' "
             "--output_dir %s --resolution 32 --center_crop "
             "--train_batch_size 1 --max_train_steps 1 --with_prior_preservation --class_data_dir %s "
             "--class_prompt 'a dog' --num_class_images 1 --sample_batch_size 2 --prior_loss_weight 0.5",
             data_path("sd-tiny"), data, out, cls);
    CHECK(cli(args) == 0);
    listing l = list_class_dir(cls, 32);
    CHECK(l.n == 1 && l.index_mask == 0x1 && !l.bad, "%d class images, mask %x", l.n, l.index_mask);
    snprintf(args, sizeof args,
             "--pretrained_model_name_or_path %s --instance_data_dir %s --instance_prompt x --with_prior_preservation "
             "--class_data_dir %s",
             data_path("sd-tiny"), data, cls);
    CHECK(cli(args) == 2, "--class_prompt is required");
    snprintf(args, sizeof args,
             "--pretrained_model_name_or_path %s --train_data_dir /nonexistent/lsd --with_prior_preservation "
             "--class_data_dir %s/never --class_prompt x",
             data_path("sd-tiny"), out);
    CHECK(cli(args) == 1);
    struct stat sb;
    snprintf(cls, sizeof cls, "%s/never", out);
    CHECK(stat(cls, &sb) != 0, "bad instance data is found before any class image is sampled");
}

/* Through the data loader: a DreamBooth folder with class images, one step with prior preservation. The batch is
 * the instance items then as many class items, and the loss is the instance half's MSE + prior_loss_weight x the
 * class half's (float64 from the step's own predictions and targets). */
TEST(prior_trainer_pairs_instance_and_class)
{
    const char *inst = temp_dir(), *cls = temp_dir();
    uint8_t px[32 * 32 * 3];
    for (int f = 0; f < 5; f++) {
        for (size_t i = 0; i < sizeof px; i++)
            px[i] = (uint8_t)(i * (f + 2) + f * 40);
        lsd_image im = {sizeof im, 32, 32, 3, px};
        char path[700];
        snprintf(path, sizeof path, "%s/%d.png", f < 2 ? inst : cls, f);
        CHECK_OK(lsd_image_save_png(path, &im, NULL, NULL, 0));
    }
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = 32;
    dp.instance_prompt = "a photo of sks dog";
    dp.class_data_dir = cls;
    dp.class_prompt = "a photo of a dog";
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.train_batch_size = 2;
    p.resolution = 32;
    p.center_crop = 1;
    p.with_prior_preservation = 1;
    p.prior_loss_weight = 0.3f;
    p.seed = 11;
    lsd_model *m = NULL;
    lsd_dataset *ds = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    float loss = 0;
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_dataset_open(inst, &dp, &ds)) &&
        CHECK_OK(lsd_adapter_set_new(m, &set)) && CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr))) {
        tr->keep_debug = 1;
        CHECK_OK(lsd_trainer_step(tr, &loss));
        const size_t per = 4 * 16 * 16;
        CHECK(tr->last_n == 4 * per, "2 instance + 2 class items: %zu floats", tr->last_n);
        double half[2] = {0, 0};
        for (size_t i = 0; tr->last_n == 4 * per && i < 4 * per; i++) {
            double d = (double)tr->last_pred[i] - tr->last_target[i];
            half[i / (2 * per)] += d * d / (2 * per);
        }
        double want = half[0] + 0.3 * half[1];
        CHECK(fabs(loss - want) <= 2e-6 * want, "loss %.9g, float64 reference %.9g", loss, want);
        CHECK(fabs(half[0] - half[1]) > 1e-3 * want, "the halves differ, so the weighting is seen");
    }
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_dataset_free(ds);
    lsd_model_free(m);
}
