/* The latent and text caches: cached posteriors are the uncached bits, the posterior sample is
 * (mean + std * eps) * scaling_factor, files are reused across runs and recomputed when the image bytes, the draw's
 * geometry or the VAE change; caption embeddings are those of the caption encoded alone. */
#include <stdlib.h>
#include <sys/stat.h>

#include "data/cache.h"
#include "model/model.h"
#include "test.h"
#include "train/train.h"

/* A side x side PNG whose pixels depend on tone. */
static void write_png(const char *path, int side, int tone)
{
    uint8_t *px = malloc((size_t)side * side * 3);
    for (int i = 0; px && i < side * side * 3; i++)
        px[i] = (uint8_t)(i * 13 + tone * 71 + (i / 3) % 7);
    lsd_image img = {sizeof img, side, side, 3, px};
    CHECK_OK(lsd_image_save_png(path, &img, NULL, NULL, 0));
    free(px);
}

/* The top-left width x height of the key's image in [-1, 1], flipped when asked; counts the renders. */
static lsd_status render(void *user, const lsdi_latent_key *k, float *out)
{
    (*(int *)user)++;
    lsd_image img = {sizeof img, 0, 0, 0, NULL};
    lsd_status st = lsd_image_load(k->path, &img);
    for (int c = 0; st == LSD_OK && c < 3; c++)
        for (int y = 0; y < k->height; y++)
            for (int x = 0; x < k->width; x++) {
                int sx = k->flip ? k->width - 1 - x : x;
                out[((size_t)c * k->height + y) * k->width + x] = img.data[(y * img.width + sx) * 3 + c] / 127.5f - 1;
            }
    lsd_image_release(&img);
    return st;
}

#define N_LAT (4 * 16 * 16) /* the tiny VAE halves 32 pixels */

typedef struct run {
    lsdi_latent_stats stats;
    int renders;
} run;

/* A fresh cache (as in a new training run) asked once for k: its counters, the posterior in mean/std. */
static run one_run(lsd_model *m, const char *cache_dir, const lsdi_latent_key *k, float *mean, float *std)
{
    run r = {{0, 0, 0, 0, 0}, 0};
    lsdi_latent_cache *c = NULL;
    if (CHECK_OK(lsdi_latent_cache_new(2, 1, cache_dir, &c)) &&
        CHECK_OK(lsdi_latent_moments(c, m, k, render, &r.renders, mean, std)))
        r.stats = *lsdi_latent_cache_stats(c);
    lsdi_latent_cache_free(c);
    return r;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

TEST(cache_latents_memory_and_sample)
{
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    char img[600];
    snprintf(img, sizeof img, "%s/a.png", temp_dir());
    write_png(img, 32, 1);
    lsdi_latent_key k = {1, img, 32, 32, 32, 32, 0, 0, 0};
    static float mean[N_LAT], std[N_LAT], mean2[N_LAT], std2[N_LAT], lat[2][N_LAT];
    int renders = 0;
    /* Uncached: the VAE run on the image. */
    CHECK_OK(lsdi_latent_moments(NULL, m, &k, render, &renders, mean, std));
    lsdi_latent_cache *c = NULL;
    if (CHECK_OK(lsdi_latent_cache_new(2, 0, NULL, &c))) {
        CHECK_OK(lsdi_latent_moments(c, m, &k, render, &renders, mean2, std2));
        CHECK(!memcmp(mean, mean2, sizeof mean) && !memcmp(std, std2, sizeof std), "first use: the uncached bits");
        memset(mean2, 0, sizeof mean2);
        CHECK_OK(lsdi_latent_moments(c, m, &k, render, &renders, mean2, std2));
        CHECK(!memcmp(mean, mean2, sizeof mean) && !memcmp(std, std2, sizeof std), "second use: the same bits");
        const lsdi_latent_stats *s = lsdi_latent_cache_stats(c);
        CHECK(renders == 2 && s->encoded == 1 && s->memory_hits == 1 && s->files_written == 0, "renders %d", renders);
        /* The flipped draw is another entry. */
        k.flip = 1;
        CHECK_OK(lsdi_latent_moments(c, m, &k, render, &renders, mean2, std2));
        CHECK(renders == 3 && s->encoded == 2 && memcmp(mean, mean2, sizeof mean));
    }
    lsdi_latent_cache_free(c);
    float ref_std = 0;
    for (int i = 0; i < N_LAT; i++)
        ref_std = fmaxf(ref_std, std[i]);
    CHECK(ref_std > 0 && ref_std < 10, "std in a sane range: max %g", ref_std);

    /* The sample: (mean + std * eps) * scaling_factor, eps the generator's randn; the same seed, the same bits. */
    for (int r = 0; r < 2; r++) {
        lsdt_generator *g = lsdt_generator_new(99);
        CHECK(g && lsdi_posterior_sample(m, g, mean, std, 1, NULL, 1, 16, 16, lat[r]) == LSD_OK);
        lsdt_generator_free(g);
    }
    CHECK(!memcmp(lat[0], lat[1], sizeof lat[0]));
    lsdt_generator *g = lsdt_generator_new(99);
    int64_t shape[4] = {1, 4, 16, 16};
    lsdt_tensor *eps = g ? lsdt_randn(NULL, g, shape, 4, LSDT_F32, NULL) : NULL;
    static float e[N_LAT];
    CHECK(eps && lsdt_to_host(eps, e, LSDT_F32, N_LAT) == 0);
    double worst = 0;
    for (int i = 0; i < N_LAT; i++)
        worst = fmax(worst, fabs(lat[0][i] - ((double)mean[i] + (double)std[i] * e[i]) * 0.18215));
    CHECK(fabs(m->vae->cfg.scaling_factor - 0.18215f) < 1e-7 && worst < 1e-6, "sample differs by %g", worst);
    lsdt_free(eps);
    lsdt_generator_free(g);
    lsd_model_free(m);
}

TEST(cache_latents_files)
{
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    const char *dir = temp_dir();
    char img[600], beside[700];
    snprintf(img, sizeof img, "%s/a.png", dir);
    snprintf(beside, sizeof beside, "%s/a.png.latents.safetensors", dir);
    write_png(img, 32, 1);
    lsdi_latent_key k = {0, img, 32, 32, 32, 32, 0, 0, 0};
    static float mean[N_LAT], std[N_LAT], mean2[N_LAT], std2[N_LAT];

    run r = one_run(m, NULL, &k, mean, std);
    CHECK(r.renders == 1 && r.stats.encoded == 1 && r.stats.files_written == 1 && file_exists(beside),
          "first run: encoded %d, written %d", (int)r.stats.encoded, (int)r.stats.files_written);
    /* The next run reads the file: no render, no VAE, the same bits. */
    r = one_run(m, NULL, &k, mean2, std2);
    CHECK(r.renders == 0 && r.stats.file_hits == 1 && r.stats.encoded == 0, "second run: %d renders", r.renders);
    CHECK(!memcmp(mean, mean2, sizeof mean) && !memcmp(std, std2, sizeof std));

    /* Other image bytes: stale, computed again (and the file rewritten: the run after reuses it). */
    write_png(img, 32, 2);
    r = one_run(m, NULL, &k, mean2, std2);
    CHECK(r.renders == 1 && r.stats.files_stale == 1 && r.stats.encoded == 1 && r.stats.files_written == 1);
    CHECK(memcmp(mean, mean2, sizeof mean), "new pixels, new posterior");
    r = one_run(m, NULL, &k, mean, std);
    CHECK(r.renders == 0 && r.stats.file_hits == 1 && !memcmp(mean, mean2, sizeof mean));

    /* Another resolution / crop of the same image: stale. */
    lsdi_latent_key k16 = {0, img, 16, 16, 16, 16, 0, 0, 0};
    r = one_run(m, NULL, &k16, mean2, std2);
    CHECK(r.renders == 1 && r.stats.files_stale == 1 && r.stats.encoded == 1, "resolution change");
    lsdi_latent_key kc = {0, img, 32, 32, 32, 32, 0, 2, 0};
    r = one_run(m, NULL, &kc, mean2, std2);
    CHECK(r.renders == 1 && r.stats.files_stale == 1, "crop change");
    r = one_run(m, NULL, &k, mean2, std2); /* back: the file now holds the crop-2 draw */
    CHECK(r.renders == 1 && r.stats.files_stale == 1 && !memcmp(mean, mean2, sizeof mean));

    /* Another VAE: stale. Its weights back: reused again (the file was written for the changed VAE, so once more). */
    lsdt_tensor *w = *m->vae->params.v[0].slot;
    CHECK(lsdt_mul_scalar_(w, 1.5) == 0);
    r = one_run(m, NULL, &k, mean2, std2);
    CHECK(r.renders == 1 && r.stats.files_stale == 1 && memcmp(mean, mean2, sizeof mean), "VAE change");
    CHECK(lsdt_mul_scalar_(w, 1.0 / 1.5) == 0);
    r = one_run(m, NULL, &k, mean2, std2);
    r = one_run(m, NULL, &k, mean2, std2);
    CHECK(r.renders == 0 && r.stats.file_hits == 1);

    /* A damaged file is computed again, with a warning, not an error. */
    write_file(beside, "garbage", 7);
    r = one_run(m, NULL, &k, mean2, std2);
    CHECK(r.renders == 1 && r.stats.files_stale == 1 && r.stats.files_written == 1);

    /* cache_dir: files there (images of the same name in two folders do not share one), none beside the image. */
    char cache[600], sub[600], img2[700];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    mkdir(sub, 0777);
    snprintf(img2, sizeof img2, "%s/a.png", sub);
    write_png(img2, 32, 3);
    remove(beside);
    lsdi_latent_key k2 = {1, img2, 32, 32, 32, 32, 0, 0, 0};
    r = one_run(m, cache, &k, mean, std);
    run r2 = one_run(m, cache, &k2, mean2, std2);
    CHECK(r.stats.files_written == 1 && r2.stats.files_written == 1 && !file_exists(beside));
    r = one_run(m, cache, &k, mean2, std2);
    CHECK(r.renders == 0 && r.stats.file_hits == 1 && !memcmp(mean, mean2, sizeof mean), "cache_dir reused");
    /* A cache_dir that cannot be a directory is named. */
    lsdi_latent_cache *c = NULL;
    CHECK_STATUS(lsdi_latent_cache_new(1, 1, img, &c), LSD_ERR_IO, "a.png");
    lsd_model_free(m);
}

TEST(cache_text_embeddings)
{
    lsd_model *m = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)))
        return;
    enum { PER = 77 * 32 };
    static float ctx[3 * PER], alone[PER];
    const char *caps[3] = {"a red car", "two dogs", "a red car"};
    lsdi_text_cache *c = NULL;
    if (CHECK_OK(lsdi_text_cache_new(&c)) && CHECK_OK(lsdi_text_context(c, m, caps, 3, ctx))) {
        uint64_t enc = 0, hits = 0;
        lsdi_text_cache_counts(c, &enc, &hits);
        CHECK(enc == 2 && hits == 1, "encoded %d, hits %d", (int)enc, (int)hits);
        for (int i = 0; i < 3; i++) {
            CHECK_OK(lsd_model_encode_text(m, &caps[i], 1, 0, alone));
            CHECK(!memcmp(alone, ctx + i * PER, sizeof alone), "caption %d: the bits of the caption encoded alone", i);
        }
        CHECK(memcmp(ctx, ctx + PER, sizeof alone));
    }
    lsdi_text_cache_free(c);
    lsd_model_free(m);
}

/* ---- in the trainer ---- */

static const char *cache_dataset(void)
{
    const char *d = temp_dir();
    static const char *caps[] = {"a photo of a cat", "a red car", "two dogs", "a blue house"};
    for (int i = 0; i < 4; i++) {
        char path[600];
        snprintf(path, sizeof path, "%s/%d.png", d, i);
        write_png(path, 32 + 8 * (i % 2), i);
        snprintf(path, sizeof path, "%s/%d.txt", d, i);
        write_file(path, caps[i], strlen(caps[i]));
    }
    return d;
}

static void cache_params(lsd_train_params *p, int cache, int to_disk, const char *out)
{
    lsd_train_params_init(p);
    p->train_batch_size = 2;
    p->resolution = 32;
    p->center_crop = 1;
    p->random_flip = 1;
    p->max_train_steps = 3;
    p->learning_rate = 1e-3;
    p->seed = 5;
    p->cache_latents = cache;
    p->cache_latents_to_disk = to_disk;
    p->output_dir = out;
    p->checkpointing_steps = 1;
}

typedef struct trained {
    float *w;
    size_t n;
    float loss[3];
    lsdi_latent_stats stats;
    uint64_t texts_encoded, text_hits;
} trained;

/* steps optimizer steps from a fresh model (resumed from resume_dir when given); the adapter's weights after. */
static trained train_run(const char *data, const lsd_train_params *p, const char *resume_dir, int steps)
{
    trained t = {NULL, 0, {0, 0, 0}, {0, 0, 0, 0, 0}, 0, 0};
    lsd_model *m = NULL;
    lsd_dataset *ds = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = 32;
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_dataset_open(data, &dp, &ds)) &&
        CHECK_OK(lsd_adapter_set_new(m, &set)) && CHECK_OK(lsd_trainer_new(m, set, "lora", ds, p, &tr)) &&
        (!resume_dir || CHECK_OK(lsd_trainer_resume(tr, resume_dir)))) {
        for (int s = 0; s < steps; s++)
            CHECK_OK(lsd_trainer_step(tr, &t.loss[s]));
        for (int i = 0; i < tr->n_params; i++)
            t.n += (size_t)lsdt_numel(tr->params[i]);
        t.w = malloc(t.n * sizeof *t.w);
        size_t at = 0;
        for (int i = 0; t.w && i < tr->n_params; i++) {
            size_t k = (size_t)lsdt_numel(tr->params[i]);
            CHECK(lsdt_to_host(tr->params[i], t.w + at, LSDT_F32, k) == 0);
            at += k;
        }
        if (tr->latent_cache)
            t.stats = *lsdi_latent_cache_stats(tr->latent_cache);
        if (tr->text_cache)
            lsdi_text_cache_counts(tr->text_cache, &t.texts_encoded, &t.text_hits);
    }
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_dataset_free(ds);
    lsd_model_free(m);
    return t;
}

TEST(cache_training_same_bits_and_resume)
{
    const char *data = cache_dataset();
    lsd_train_params p;
    cache_params(&p, 0, 0, NULL);
    trained plain = train_run(data, &p, NULL, 3);
    cache_params(&p, 1, 0, NULL);
    trained mem = train_run(data, &p, NULL, 3);
    CHECK(plain.w && mem.w && plain.n == mem.n && !memcmp(plain.w, mem.w, plain.n * sizeof *plain.w),
          "cache_latents changes no bit of the trained weights");
    CHECK(!memcmp(plain.loss, mem.loss, sizeof plain.loss), "losses %g %g", plain.loss[2], mem.loss[2]);
    /* 3 steps x 2 items = 6 draws of 4 items with random flips: some were seen before. */
    CHECK(mem.stats.memory_hits > 0 && mem.stats.encoded + mem.stats.memory_hits == 6 && mem.stats.files_written == 0,
          "%d encoded, %d hits", (int)mem.stats.encoded, (int)mem.stats.memory_hits);
    CHECK(mem.texts_encoded + mem.text_hits == 6 && mem.texts_encoded <= 4 && mem.text_hits > 0,
          "captions: %d encoded, %d hits", (int)mem.texts_encoded, (int)mem.text_hits);

    /* On disk, with a checkpoint per step; a fresh process resumed from step 2 reads the files and ends on the
     * uninterrupted run's bits. */
    const char *out = temp_dir();
    cache_params(&p, 0, 1, out);
    trained disk = train_run(data, &p, NULL, 3);
    CHECK(disk.w && !memcmp(disk.w, plain.w, plain.n * sizeof *plain.w), "cache_latents_to_disk: the same bits");
    CHECK(disk.stats.files_written == disk.stats.encoded && disk.stats.encoded > 0);
    char ck[700];
    snprintf(ck, sizeof ck, "%s/checkpoint-2", out);
    trained resumed = train_run(data, &p, ck, 1);
    CHECK(resumed.w && !memcmp(resumed.w, plain.w, plain.n * sizeof *plain.w), "resumed with caches: the same bits");
    CHECK(resumed.loss[0] == plain.loss[2]);
    CHECK(resumed.stats.encoded == 0 && resumed.stats.file_hits > 0, "resumed run: %d encoded, %d from files",
          (int)resumed.stats.encoded, (int)resumed.stats.file_hits);
    free(plain.w);
    free(mem.w);
    free(disk.w);
    free(resumed.w);

    /* A random crop cannot be cached. */
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_adapter_set_new(m, &set))) {
        cache_params(&p, 1, 0, NULL);
        p.center_crop = 0;
        CHECK_STATUS(lsd_trainer_new(m, set, "x", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "center_crop");
        CHECK(!tr && strstr(lsd_last_error(), "cache_latents"));
    }
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}
