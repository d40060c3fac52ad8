/* Validation (images grid, held-out loss), the metrics callback, checkpoint pruning and what a resume refuses:
 * lib/train/validate.c, metrics.c, checkpoint.c, on the tiny model. */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lora/lora.h"
#include "test.h"
#include "train_util.h"
#include "train/train.h"

static const char *const captions[] = {"a photo of a cat", "a red car", "two dogs", "a blue house",
                                       "a green tree", "the sea", "a yellow bird", "snow"};

/* n captioned 32x32 images, each of its own colours, so that held-out items differ from the trained ones. */
static const char *pattern_dataset(int n)
{
    const char *d = temp_dir();
    for (int i = 0; i < n; i++) {
        uint8_t px[32 * 32 * 3];
        for (int k = 0; k < 32 * 32; k++) {
            px[3 * k] = (uint8_t)(37 * i + 3 * (k % 32));
            px[3 * k + 1] = (uint8_t)(90 * (i % 3) + 2 * (k / 32));
            px[3 * k + 2] = (uint8_t)(255 - 31 * i);
        }
        lsd_image img = {sizeof img, 32, 32, 3, px};
        char path[600];
        snprintf(path, sizeof path, "%s/%d.png", d, i);
        CHECK_OK(lsd_image_save_png(path, &img, NULL, NULL, 0));
        snprintf(path, sizeof path, "%s/%d.txt", d, i);
        write_file(path, captions[i % 8], strlen(captions[i % 8]));
    }
    return d;
}

static void base_params(lsd_train_params *p, const char *out)
{
    lsd_train_params_init(p);
    p->train_batch_size = 2;
    p->resolution = 32;
    p->max_train_steps = 3;
    p->learning_rate = 1e-3;
    p->seed = 42;
    p->random_flip = 1;
    p->snr_gamma = 5.0f;
    p->output_dir = out;
    p->checkpointing_steps = 0;
}

typedef struct run {
    lsd_model *m;
    lsd_adapter_set *set;
    lsd_dataset *ds;
    lsd_trainer *tr;
} run;

static int run_open(run *r, const char *data, const lsd_train_params *p)
{
    memset(r, 0, sizeof *r);
    return CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &r->m)) && CHECK_OK(lsd_dataset_open(data, NULL, &r->ds)) &&
           CHECK_OK(lsd_adapter_set_new(r->m, &r->set)) && CHECK_OK(lsd_trainer_new(r->m, r->set, "lora", r->ds, p, &r->tr));
}

static void run_close(run *r)
{
    lsd_trainer_free(r->tr);
    lsd_adapter_set_free(r->set);
    lsd_model_free(r->m);
    lsd_dataset_free(r->ds);
}

typedef struct record {
    lsd_train_metrics m[32];
    char path[32][600];
    int n;
} record;

static void keep_metrics(const lsd_train_metrics *m, void *user)
{
    record *r = user;
    if (r->n < 32) {
        r->m[r->n] = *m;
        snprintf(r->path[r->n], sizeof r->path[r->n], "%s", m->sample_path ? m->sample_path : "");
        r->n++;
    }
}

TEST(validate_loss_is_fixed_and_follows_the_weights)
{
    const char *data = pattern_dataset(4), *held = pattern_dataset(3);
    lsd_dataset *val = NULL;
    lsd_train_params p;
    base_params(&p, NULL);
    record rec = {0};
    p.metrics = keep_metrics;
    p.metrics_user = &rec;
    run r;
    if (!CHECK_OK(lsd_dataset_open(held, NULL, &val)))
        return;
    p.validation_dataset = val;
    if (run_open(&r, data, &p)) {
        double a = NAN, b = NAN, c = NAN;
        CHECK_OK(lsd_trainer_validate(r.tr, &a));
        CHECK_OK(lsd_trainer_validate(r.tr, &b));
        CHECK(isfinite(a) && a > 0 && a == b, "same weights, same loss: %.9g vs %.9g", a, b);
        CHECK(rec.n == 2 && rec.m[0].val_loss == a && isnan(rec.m[0].loss) && rec.m[0].step == 0 &&
                  rec.m[0].sample_path == NULL,
              "validation reported through the metrics callback (%d reports)", rec.n);
        float loss = 0;
        CHECK_OK(lsd_trainer_step(r.tr, &loss));
        CHECK_OK(lsd_trainer_validate(r.tr, &c));
        CHECK(isfinite(c) && c != a, "a step moves the validation loss: %.9g then %.9g", a, c);
        /* The loss is the training loss's quantity (min-SNR MSE) over 3 items x 4 timesteps: a validation_dataset
         * of one item repeated gives the same per-item numbers. */
        CHECK(r.tr->n_val_items == 3 && r.tr->n_train_items == 4);
    }
    run_close(&r);
    lsd_dataset_free(val);
}

/* PNG tEXt "parameters" value (a plain scan: the chunk is uncompressed). */
static char *png_parameters(const char *path)
{
    size_t n = 0;
    char *png = read_file(path, &n);
    for (size_t i = 0; png && i + 11 < n; i++)
        if (!memcmp(png + i, "tEXtparameters", 15)) {
            uint32_t len = (uint32_t)(uint8_t)png[i - 4] << 24 | (uint32_t)(uint8_t)png[i - 3] << 16 |
                           (uint32_t)(uint8_t)png[i - 2] << 8 | (uint8_t)png[i - 1];
            char *v = strndup(png + i + 15, len - 11);
            free(png);
            return v;
        }
    free(png);
    return NULL;
}

TEST(validate_grid_png_and_training_untouched)
{
    const char *data = pattern_dataset(4), *out = temp_dir();
    static const char *const prompts[] = {"a red car", "a blue house"};
    lsd_train_params p;
    base_params(&p, NULL);
    run plain;
    size_t n0 = 0, n1 = 0;
    float *w0 = NULL, *w1 = NULL, l0[3], l1[3];
    if (run_open(&plain, data, &p)) {
        for (int k = 0; k < 3; k++)
            CHECK_OK(lsd_trainer_step(plain.tr, &l0[k]));
        w0 = trainer_weights(plain.tr, &n0);
    }
    run_close(&plain);

    /* The same run with validation images and a validation loss after every step. */
    record rec = {0};
    base_params(&p, out);
    p.validation_prompts = prompts;
    p.n_validation_prompts = 2;
    p.num_validation_images = 3;
    p.validation_steps = 2;
    p.validation_inference_steps = 2;
    p.validation_sampler = LSD_SAMPLER_EULER_A;
    p.validation_seed = 5;
    p.metrics = keep_metrics;
    p.metrics_user = &rec;
    lsd_dataset *val = NULL;
    CHECK_OK(lsd_dataset_open(pattern_dataset(2), NULL, &val));
    p.validation_dataset = val;
    run v;
    if (run_open(&v, data, &p)) {
        for (int k = 0; k < 3; k++)
            CHECK_OK(lsd_trainer_step(v.tr, &l1[k]));
        w1 = trainer_weights(v.tr, &n1);
    }
    CHECK(w0 && w1 && n0 == n1 && !memcmp(w0, w1, n0 * sizeof *w0), "validation changed the training's weights");
    CHECK(!memcmp(l0, l1, sizeof l0), "validation changed the training's losses");
    /* Reports: step 1, step 2, validation 2, step 3, validation 3 (the last step is always validated). */
    CHECK(rec.n == 5, "%d metrics reports", rec.n);
    if (rec.n == 5) {
        CHECK(rec.m[0].step == 1 && rec.m[1].step == 2 && rec.m[3].step == 3);
        CHECK(rec.m[2].step == 2 && isnan(rec.m[2].loss) && isfinite(rec.m[2].val_loss) && rec.m[4].step == 3);
        CHECK((float)rec.m[0].loss == l1[0] && (float)rec.m[3].loss == l1[2], "step losses as returned");
        CHECK(isnan(rec.m[0].val_loss) && rec.m[0].sample_path == NULL);
        char want[700];
        snprintf(want, sizeof want, "%s/samples/step-000002.png", out);
        CHECK(!strcmp(rec.path[2], want), "grid path %s", rec.path[2]);
    }
    char grid[700];
    snprintf(grid, sizeof grid, "%s/samples/step-000003.png", out);
    lsd_image img = {0};
    if (CHECK_OK(lsd_image_load(grid, &img)))
        CHECK(img.width == 3 * 32 && img.height == 2 * 32, "a row of 3 per prompt: %dx%d", img.width, img.height);
    /* Each cell is an image of its own: the rows (prompts) and columns (seeds) differ. */
    if (img.data) {
        CHECK(memcmp(img.data, img.data + 32 * 3, 32 * 3) != 0, "columns differ");
        CHECK(memcmp(img.data, img.data + (size_t)32 * 96 * 3, 32 * 3) != 0, "rows differ");
    }
    lsd_image_release(&img);
    char *text = png_parameters(grid);
    CHECK(text && !strncmp(text, "a red car\na blue house\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 5, "
                                 "Size: 32x32", 71), "parameters: %s", text ? text : "(none)");
    CHECK(text && strstr(text, "Training step: 3") && strstr(text, "Batch size: 3"), "%s", text ? text : "");
    free(text);
    run_close(&v);
    lsd_dataset_free(val);
    free(w0);
    free(w1);
}

TEST(validate_split_holds_items_out)
{
    const char *data = pattern_dataset(8);
    lsd_train_params p;
    base_params(&p, NULL);
    p.validation_split = 0.25f;
    run a, b;
    if (run_open(&a, data, &p)) {
        CHECK(a.tr->n_val_items == 2 && a.tr->n_train_items == 6);
        int seen[8] = {0};
        for (size_t i = 0; i < a.tr->n_val_items; i++)
            seen[a.tr->val_items[i]] |= 1;
        for (size_t i = 0; i < a.tr->n_train_items; i++)
            seen[a.tr->train_items[i]] |= 2;
        for (int i = 0; i < 8; i++)
            CHECK(seen[i] == 1 || seen[i] == 2, "item %d is in exactly one part (%d)", i, seen[i]);
        double l = NAN;
        CHECK_OK(lsd_trainer_validate(a.tr, &l));
        CHECK(isfinite(l) && l > 0);
    }
    p.seed = 43;
    if (run_open(&b, data, &p) && a.tr)
        CHECK(b.tr->n_val_items == 2 && memcmp(a.tr->val_items, b.tr->val_items, 2 * sizeof(size_t)) != 0,
              "the hold-out follows the seed");
    run_close(&b);
    run_close(&a);
    p.validation_split = 0.95f;
    run c;
    memset(&c, 0, sizeof c);
    CHECK_OK(lsd_dataset_open(data, NULL, &c.ds));
    CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &c.m));
    if (c.m && CHECK_OK(lsd_adapter_set_new(c.m, &c.set))) {
        CHECK_STATUS(lsd_trainer_new(c.m, c.set, "lora", c.ds, &p, &c.tr), LSD_ERR_INVALID_ARGUMENT,
                     "validation_split 0.95 of a dataset of 8 item(s) leaves nothing to train on");
        p.validation_split = 0;
        p.num_validation_images = 0;
        CHECK_STATUS(lsd_trainer_new(c.m, c.set, "lora", c.ds, &p, &c.tr), LSD_ERR_INVALID_ARGUMENT,
                     "num_validation_images");
    }
    run_close(&c);
}

TEST(validate_metrics_after_each_step)
{
    const char *data = pattern_dataset(4);
    lsd_train_params p;
    base_params(&p, NULL);
    p.lr_scheduler = LSD_LR_LINEAR;
    p.lr_warmup_steps = 2;
    p.gradient_accumulation_steps = 2;
    record rec = {0};
    p.metrics = keep_metrics;
    p.metrics_user = &rec;
    run r;
    if (run_open(&r, data, &p)) {
        float loss[3];
        double norm[3];
        for (int k = 0; k < 3; k++) {
            CHECK_OK(lsd_trainer_step(r.tr, &loss[k]));
            norm[k] = r.tr->last_grad_norm;
        }
        CHECK(rec.n == 3, "%d reports", rec.n);
        /* linear with 2 warmup steps over 3: factors 0/2, 1/2, then (3 - 2) / (3 - 2) = 1. */
        static const double lr[3] = {0.0, 0.5e-3, 1e-3};
        for (int k = 0; k < 3 && k < rec.n; k++) {
            const lsd_train_metrics *m = &rec.m[k];
            CHECK(m->struct_size == sizeof *m && m->step == k + 1);
            CHECK((float)m->loss == loss[k] && isnan(m->val_loss));
            CHECK(fabs(m->lr_unet - lr[k]) < 1e-12, "step %d lr %g, expected %g", k + 1, m->lr_unet, lr[k]);
            CHECK(isnan(m->lr_text_encoder));
            CHECK(m->grad_norm == norm[k] && m->grad_norm > 0);
            /* 2 micro-batches of 2 images a step over 4 items: an epoch a step. */
            CHECK(fabs(m->epoch - (k + 1)) < 1e-12, "epoch %g", m->epoch);
            CHECK(m->images_per_second > 0 && isfinite(m->images_per_second));
            CHECK(m->elapsed_seconds > 0 && (k == 0 || m->elapsed_seconds >= rec.m[k - 1].elapsed_seconds));
        }
    }
    run_close(&r);
}

static int is_dir(const char *dir, const char *leaf)
{
    char path[700];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, leaf);
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static void mkdir_in(const char *dir, const char *leaf)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, leaf);
    CHECK(mkdir(path, 0777) == 0, "%s", path);
}

TEST(validate_checkpoint_pruning_before_save_and_by_name_only)
{
    const char *data = pattern_dataset(4), *out = temp_dir();
    /* Only checkpoint-<digits> directories count; look-alikes and files are never touched. */
    static const char *const keep[] = {"checkpoint-foo", "checkpoint-+3", "checkpoint-5.tmp-99", "checkpoint-"};
    for (int i = 0; i < 4; i++)
        mkdir_in(out, keep[i]);
    mkdir_in(out, "checkpoint-1");
    mkdir_in(out, "checkpoint-2");
    mkdir_in(out, "checkpoint-10");
    char file[700];
    snprintf(file, sizeof file, "%s/checkpoint-0", out);
    write_file(file, "x", 1);
    lsd_train_params p;
    base_params(&p, out);
    p.checkpointing_steps = 1;
    p.checkpoints_total_limit = 2;
    p.max_train_steps = 20;
    run r;
    if (run_open(&r, data, &p)) {
        r.tr->step = 11; /* as if resumed: the next automatic save is checkpoint-12 */
        float loss;
        CHECK_OK(lsd_trainer_step(r.tr, &loss));
        CHECK(is_dir(out, "checkpoint-12") && is_dir(out, "checkpoint-10"));
        CHECK(!is_dir(out, "checkpoint-1") && !is_dir(out, "checkpoint-2"), "the oldest are pruned, by number");
        for (int i = 0; i < 4; i++)
            CHECK(is_dir(out, keep[i]), "%s kept", keep[i]);
        struct stat sb;
        CHECK(stat(file, &sb) == 0 && S_ISREG(sb.st_mode), "the file checkpoint-0 kept");
        /* Saving the same step again replaces it and prunes nothing else. */
        CHECK_OK(lsd_trainer_save_step_checkpoint(r.tr));
        CHECK(is_dir(out, "checkpoint-12") && is_dir(out, "checkpoint-10"));
        /* Pruning comes before the save: when the save then fails, the oldest is already gone, so the disk never
         * holds more than the limit (diffusers' order). A file where the temp directory goes makes it fail. */
        r.tr->step = 13;
        char tmp[700];
        snprintf(tmp, sizeof tmp, "%s/checkpoint-13.tmp-%ld", out, (long)getpid());
        write_file(tmp, "x", 1);
        CHECK_STATUS(lsd_trainer_save_step_checkpoint(r.tr), LSD_ERR_IO, "checkpoint-13.tmp");
        CHECK(!is_dir(out, "checkpoint-10") && is_dir(out, "checkpoint-12") && !is_dir(out, "checkpoint-13"));
        unlink(tmp);
    }
    run_close(&r);
}

TEST(validate_resume_mismatch_says_what_differs)
{
    const char *data = pattern_dataset(4), *out = temp_dir();
    lsd_train_params p;
    base_params(&p, out);
    p.checkpointing_steps = 2;
    p.max_train_steps = 2;
    run r;
    char ck[700];
    snprintf(ck, sizeof ck, "%s/checkpoint-2", out);
    if (run_open(&r, data, &p)) {
        float loss;
        CHECK_OK(lsd_trainer_step(r.tr, &loss));
        CHECK_OK(lsd_trainer_step(r.tr, &loss));
    }
    run_close(&r);
    int nc = 0;
#define CASE(body, m)                                                                                              \
    do {                                                                                                           \
        lsd_train_params q = p;                                                                                    \
        body;                                                                                                      \
        run x;                                                                                                     \
        if (run_open(&x, data, &q)) {                                                                              \
            CHECK_STATUS(lsd_trainer_resume(x.tr, ck), LSD_ERR_INVALID_ARGUMENT, m);                               \
            CHECK(lsd_trainer_get_step(x.tr) == 0, "nothing changed");                                             \
        }                                                                                                          \
        run_close(&x);                                                                                             \
        nc++;                                                                                                      \
    } while (0)
    CASE(q.rank = 8, "checkpoint-2 was trained with rank 4, this run asks for rank 8");
    CASE(q.seed = 7, "checkpoint-2 was trained with seed 42, this run asks for seed 7");
    CASE(q.max_train_steps = 1, "checkpoint-2 is at step 2, past max_train_steps 1 of this run");
    CASE(q.validation_split = 0.25f, "checkpoint-2 was trained with validation_split 0, this run asks for "
                                     "validation_split 0.25");
#undef CASE
    CHECK(nc == 4);
    /* The same settings resume. */
    p.max_train_steps = 3;
    if (run_open(&r, data, &p)) {
        CHECK_OK(lsd_trainer_resume(r.tr, ck));
        CHECK(lsd_trainer_get_step(r.tr) == 2);
    }
    run_close(&r);
}

/* With use_ema the EMA weights are validated (diffusers' store / copy_to / restore) and put back exactly; a caller
 * who swapped them in already gets the same numbers (no second swap). */
TEST(validate_uses_the_ema_weights)
{
    const char *data = pattern_dataset(4), *held = pattern_dataset(2);
    lsd_dataset *val = NULL;
    lsd_train_params p;
    base_params(&p, NULL);
    p.ema_decay = 0.5f;
    run r = {0}, raw = {0};
    if (!CHECK_OK(lsd_dataset_open(held, NULL, &val)))
        return;
    p.validation_dataset = val;
    double with_raw = NAN, a = NAN, b = NAN;
    if (run_open(&raw, data, &p)) { /* the same run without the EMA */
        CHECK_OK(lsd_trainer_step(raw.tr, NULL));
        CHECK_OK(lsd_trainer_step(raw.tr, NULL));
        CHECK_OK(lsd_trainer_validate(raw.tr, &with_raw));
    }
    run_close(&raw);
    p.use_ema = 1;
    if (run_open(&r, data, &p)) {
        CHECK_OK(lsd_trainer_step(r.tr, NULL));
        CHECK_OK(lsd_trainer_step(r.tr, NULL));
        size_t n = 0, n2 = 0;
        float *w0 = trainer_weights(r.tr, &n);
        CHECK_OK(lsd_trainer_validate(r.tr, &a));
        float *w1 = trainer_weights(r.tr, &n2);
        CHECK(w0 && w1 && n == n2 && !memcmp(w0, w1, n * sizeof *w0), "the weights are put back exactly");
        CHECK_OK(lsd_trainer_swap_ema(r.tr));
        CHECK_OK(lsd_trainer_validate(r.tr, &b));
        CHECK_OK(lsd_trainer_swap_ema(r.tr));
        CHECK(isfinite(a) && a == b && a != with_raw, "EMA loss %.9g, swapped by the caller %.9g, raw weights %.9g", a,
              b, with_raw);
        free(w0);
        free(w1);
    }
    run_close(&r);
    lsd_dataset_free(val);
}
