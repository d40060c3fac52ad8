/* Full-size SD v1-4 timings with random weights: UNet forward (batch 2, fp32) at 32x32 and 64x64 latents, VAE
 * decode to 512x512, a LoRA training step on 64x64 images with and without cache_latents.
 * Usage: LSD_DATA_DIR=data build/bench [threads]; LSD_BENCH_ONLY=train runs only the training rows. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lora_sd.h"
#include "lsd_torch.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double peak_rss_gb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / (1024.0 * 1024.0);
}

static float *filled(size_t n, unsigned seed)
{
    float *v = malloc(n * sizeof *v);
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = (float)((seed >> 8) & 0xFFFF) / 32768.0f - 1.0f;
    }
    return v;
}

static int fail(const char *what, lsd_status st)
{
    fprintf(stderr, "bench: %s: %s: %s\n", what, lsd_status_string(st), lsd_last_error());
    return 1;
}

static int bench_unet(lsd_model *m, int side)
{
    const int batch = 2, ch = 4, ctx_len = 77, ctx_dim = 768;
    size_t n = (size_t)batch * ch * side * side;
    float *x = filled(n, 1), *ctx = filled((size_t)batch * ctx_len * ctx_dim, 2), *out = malloc(n * sizeof *out);
    float t[1] = {500.0f};
    if (!x || !ctx || !out)
        return 1;
    double t0 = now();
    lsd_status st = lsd_model_unet(m, x, batch, side, side, t, 1, ctx, ctx_len, out);
    double dt = now() - t0;
    free(x);
    free(ctx);
    free(out);
    if (st != LSD_OK)
        return fail("unet", st);
    printf("unet %dx%d latents, batch 2, fp32: %.2f s (peak RSS %.2f GB)\n", side, side, dt, peak_rss_gb());
    fflush(stdout);
    return 0;
}

typedef struct {
    double first, last;
    int calls;
} step_clock;

static int on_progress(const lsd_progress *p, void *user)
{
    step_clock *c = user;
    if (p->stage == LSD_STAGE_DENOISE) {
        if (c->calls++ == 0)
            c->first = p->elapsed_seconds;
        c->last = p->elapsed_seconds;
    }
    return 0;
}

/* Seconds per sampling step (CFG, batch 1: one UNet call on batch 2, the guidance and the scheduler step), from
 * the progress callback's clock between the first and the last UNet call. */
static int bench_sampling(lsd_model *m, int side, const char *label)
{
    step_clock c = {0, 0, 0};
    lsd_sample_params sp;
    lsd_sample_params_init(&sp);
    sp.prompt = "a photo of an astronaut riding a horse";
    sp.steps = 3;
    sp.sampler = LSD_SAMPLER_EULER;
    sp.width = sp.height = side * 8;
    sp.progress = on_progress;
    sp.progress_user = &c;
    float *lat = malloc((size_t)4 * side * side * sizeof *lat);
    double t0 = now();
    lsd_status st = lsd_sample(m, &sp, NULL, lat);
    double total = now() - t0;
    free(lat);
    if (st != LSD_OK)
        return fail("sample", st);
    printf("%s sampling step %dx%d latents (CFG, batch 1): %.2f s per step (3 steps + text encoding: %.2f s)\n",
           label, side, side, (c.last - c.first) / (c.calls - 1), total);
    fflush(stdout);
    return 0;
}

/* A folder of 4 captioned 64x64 PNGs in a fresh temporary directory (dir holds its path). */
static int make_dataset(char *dir)
{
    if (!mkdtemp(dir))
        return 1;
    static const char *const caps[4] = {"a red square", "a blue circle", "a green field", "a grey wall"};
    uint8_t px[64 * 64 * 3];
    for (int i = 0; i < 4; i++) {
        for (size_t k = 0; k < sizeof px; k++)
            px[k] = (uint8_t)(k * (i + 3) + (k / 192) * 5);
        lsd_image img = {sizeof img, 64, 64, 3, px};
        char path[128];
        snprintf(path, sizeof path, "%s/%d.png", dir, i);
        FILE *f = NULL;
        if (lsd_image_save_png(path, &img, NULL, NULL, 0) != LSD_OK)
            return 1;
        snprintf(path, sizeof path, "%s/%d.txt", dir, i);
        if (!(f = fopen(path, "w")) || fputs(caps[i], f) < 0 || fclose(f))
            return 1;
    }
    return 0;
}

static void remove_dataset(const char *dir)
{
    char path[128];
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 2; k++) {
            snprintf(path, sizeof path, "%s/%d.%s", dir, i, k ? "txt" : "png");
            unlink(path);
        }
    rmdir(dir);
}

/* Seconds per LoRA training step (rank 4, batch 1, 64x64 images: 8x8 latents) in the second epoch of a 4-image
 * folder, so that with cache_latents every item's posterior and caption embedding come from the cache. */
static int bench_train(lsd_model *m, int cache)
{
    char dir[] = "/tmp/lsd-bench-XXXXXX";
    if (make_dataset(dir)) {
        fprintf(stderr, "bench: cannot write a dataset in %s\n", dir);
        return 1;
    }
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = 64;
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    tp.train_batch_size = 1;
    tp.resolution = 64;
    tp.center_crop = 1;
    tp.lr_warmup_steps = 0;
    tp.cache_latents = cache;
    lsd_dataset *ds = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_status st = lsd_dataset_open(dir, &dp, &ds);
    if (st == LSD_OK)
        st = lsd_adapter_set_new(m, &set);
    if (st == LSD_OK)
        st = lsd_trainer_new(m, set, "lora", ds, &tp, &tr);
    double t0 = 0;
    for (int s = 0; s < 8 && st == LSD_OK; s++) {
        if (s == 4)
            t0 = now();
        st = lsd_trainer_step(tr, NULL);
    }
    double dt = (now() - t0) / 4;
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_dataset_free(ds);
    remove_dataset(dir);
    if (st != LSD_OK)
        return fail("train", st);
    printf("LoRA train step, 64x64 images (8x8 latents), batch 1, rank 4, %s: %.2f s (peak RSS %.2f GB)\n",
           cache ? "cache_latents" : "no cache", dt, peak_rss_gb());
    fflush(stdout);
    return 0;
}

/* With LSD_BENCH_PROFILE set, the shim's per-op times since the last call, then a fresh count. */
static void profile_report(const char *what)
{
    if (!getenv("LSD_BENCH_PROFILE"))
        return;
    static char report[1 << 16];
    lsdt_profile_report(report, sizeof report);
    printf("per-op time of %s:\n%s", what, report);
    lsdt_profile_enable(1);
}

static int bench_tiny(const char *data)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/../tests/data/sd-tiny", data);
    lsd_model *m = NULL;
    lsd_status st = lsd_model_load(dir, NULL, &m);
    if (st != LSD_OK)
        return fail("tiny model", st);
    lsd_sample_params sp;
    lsd_sample_params_init(&sp);
    sp.prompt = "a photo of an astronaut riding a horse";
    sp.steps = 20;
    sp.width = sp.height = 32;
    sp.batch = 4;
    lsd_image img[4];
    lsdt_profile_enable(getenv("LSD_BENCH_PROFILE") != NULL);
    double t0 = now();
    int n = 0;
    for (int r = 0; r < 5 && st == LSD_OK; r++) {
        st = lsd_sample(m, &sp, img, NULL);
        for (int i = 0; st == LSD_OK && i < 4; i++, n++)
            lsd_image_release(&img[i]);
    }
    double dt = now() - t0;
    lsd_model_free(m);
    if (st != LSD_OK)
        return fail("tiny sample", st);
    printf("tiny fixture, 20 PNDM steps, 32x32, batch 4: %.1f images/s\n", n / dt);
    profile_report("the tiny runs");
    return 0;
}

int main(int argc, char **argv)
{
    /* glibc hands big freed blocks back to the kernel, so every activation of a forward pass is page-faulted in
     * afresh (a third of the time here). A program that runs the model keeps them: LSD_BENCH_PLAIN_MALLOC=1
     * measures the default. */
    if (!getenv("LSD_BENCH_PLAIN_MALLOC")) {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
        mallopt(M_TOP_PAD, 256 << 20);
    }
    if (argc > 1)
        lsd_set_num_threads(atoi(argv[1]));
    lsd_runtime_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    lsd_status st = lsd_runtime_info_get(&info);
    if (st != LSD_OK)
        return fail("runtime info", st);
    printf("liblora_sd %s, libtorch %s, %d threads, BLAS %s\n", lsd_version_string(), info.torch_version,
           info.num_threads, info.blas);

    const char *data = getenv("LSD_DATA_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/configs/sd-v1-4", data && *data ? data : "data");
    double t0 = now();
    lsd_model *m = NULL;
    st = lsd_model_create_random(dir, 0, NULL, &m);
    if (st != LSD_OK)
        return fail("create_random", st);
    printf("random SD v1-4 built in %.2f s (peak RSS %.2f GB)\n", now() - t0, peak_rss_gb());
    fflush(stdout);
    const char *only = getenv("LSD_BENCH_ONLY");
    int train_only = only && !strcmp(only, "train");
    if (train_only) {
        int rc = bench_train(m, 0) || bench_train(m, 1);
        lsd_model_free(m);
        return rc;
    }

    /* One warm-up call at the small size so one-time costs (oneDNN primitive creation) are not timed. */
    if (bench_unet(m, 32) || bench_unet(m, 32))
        return 1;
    /* LSD_BENCH_PROFILE=1: where the calls spend their time, op by op. */
    lsdt_profile_enable(getenv("LSD_BENCH_PROFILE") != NULL);
    if (bench_unet(m, 64))
        return 1;
    profile_report("the 64x64 UNet call");
    if (bench_sampling(m, 32, "fp32") || bench_sampling(m, 64, "fp32"))
        return 1;
    profile_report("the two sampling runs");

    size_t nl = 4 * 64 * 64, ni = 3 * 512 * 512;
    float *lat = filled(nl, 3), *img = malloc(ni * sizeof *img);
    if (!lat || !img)
        return 1;
    t0 = now();
    st = lsd_model_vae_decode(m, lat, 1, 64, 64, img);
    if (st != LSD_OK)
        return fail("vae decode", st);
    printf("vae decode 512x512: %.2f s (peak RSS %.2f GB)\n", now() - t0, peak_rss_gb());
    profile_report("the VAE decode");
    free(lat);
    free(img);
    if (bench_train(m, 0) || bench_train(m, 1))
        return 1;
    lsd_model_free(m);

    /* bf16 weights and activations through oneDNN, as a caller asks with lsd_model_params.dtype. */
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.dtype = LSD_BF16;
    st = lsd_model_create_random(dir, 0, &mp, &m);
    if (st != LSD_OK)
        return fail("create_random bf16", st);
    if (bench_sampling(m, 32, "bf16") || bench_sampling(m, 64, "bf16"))
        return 1;
    lsd_model_free(m);
    return bench_tiny(data && *data ? data : "data");
}
