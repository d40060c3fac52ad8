/* Full-size SD v1-4 timings and memory with random weights, one row per process so each row's peak RSS is its own.
 * Usage: LSD_DATA_DIR=data build/bench [--threads N] [ROW...]; no ROW lists the rows. `make bench` runs them all.
 *
 * Peak RSS: the kernel's high-water mark (VmHWM) reset after the model is built (/proc/self/clear_refs), so it is
 * the peak of the row's work with the weights it needs resident. Like ../shared/bench/diffusers_bench.py, which
 * loads only the network a row runs, a row frees the weights of the networks it does not run before it starts. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lora_sd.h"
#include "lsd_torch.h"
#include "model/model.h"
#include "sample/vae_tiles.h"

/* LSD_BENCH_CPU=1 times rows in the process's CPU seconds instead: with --threads 1 that is the work itself,
 * whatever else the machine runs (a shared machine's wall time is not). */
static double now(void)
{
    static int cpu = -1;
    if (cpu < 0)
        cpu = getenv("LSD_BENCH_CPU") != NULL;
    struct timespec ts;
    clock_gettime(cpu ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A field of /proc/self/status in GB. */
static double status_gb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':')
            kb = atof(line + n + 1);
    if (f)
        fclose(f);
    return kb / (1024.0 * 1024.0);
}

static long minor_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static long faults_at_start;

/* Starts a row's peak: the memory freed so far goes back to the kernel, then the high-water mark restarts. */
static double reset_peak(void)
{
    faults_at_start = minor_faults();
    malloc_trim(0);
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
    return status_gb("VmRSS");
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

static void drop_weights(lsdi_params *p)
{
    for (int i = 0; i < p->n; i++) {
        lsdt_free(*p->v[i].slot);
        *p->v[i].slot = NULL;
    }
}

enum { NET_UNET = 1, NET_VAE = 2, NET_TEXT = 4, NET_ALL = 7 };

static const char *config_dir(void)
{
    static char dir[4096];
    const char *data = getenv("LSD_DATA_DIR");
    snprintf(dir, sizeof dir, "%s/configs/sd-v1-4", data && *data ? data : "data");
    return dir;
}

/* The random full-size model with only the weights of `keep` resident. */
static int make_model(lsd_dtype dt, int keep, lsd_model **m)
{
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    mp.dtype = dt;
    double t0 = now();
    lsd_status st = lsd_model_create_random(config_dir(), 0, &mp, m);
    if (st != LSD_OK)
        return fail("create_random", st);
    if (!(keep & NET_UNET))
        drop_weights(&(*m)->unet->params);
    if (!(keep & NET_VAE))
        drop_weights(&(*m)->vae->params);
    if (!(keep & NET_TEXT))
        drop_weights(&(*m)->text->params);
    printf("  random SD v1-4 (%s) built in %.1f s\n", lsd_dtype_name(dt), now() - t0);
    return 0;
}

/* Page faults count the fresh memory the row touched (each costs a fault and the zeroing of a page): unlike the
 * time, they do not depend on what else the machine runs. */
static void report(const char *row, const char *what, double seconds, double base)
{
    printf("%-14s %-52s %8.2f s   peak RSS %5.2f GB (%.2f GB resident before), %ld page faults\n", row, what,
           seconds, status_gb("VmHWM"), base, minor_faults() - faults_at_start);
    fflush(stdout);
}

/* ---- rows ---------------------------------------------------------------------------------------- */

typedef struct row_args {
    const char *name;
    int side;
    lsd_dtype dtype;
    int flag; /* checkpointing for train rows, the tile for vae rows */
} row_args;

static double unet_call(lsd_model *m, int side, lsd_status *st)
{
    const int batch = 2, ch = 4, ctx_len = 77, ctx_dim = 768;
    size_t n = (size_t)batch * ch * side * side;
    float *x = filled(n, 1), *ctx = filled((size_t)batch * ctx_len * ctx_dim, 2), *out = malloc(n * sizeof *out);
    float t[1] = {500.0f};
    double t0 = now();
    *st = x && ctx && out ? lsd_model_unet(m, x, batch, side, side, t, 1, ctx, ctx_len, out) : LSD_ERR_OUT_OF_MEMORY;
    double dt = now() - t0;
    free(x);
    free(ctx);
    free(out);
    return dt;
}

static int row_unet(const row_args *a)
{
    lsd_model *m;
    if (make_model(a->dtype, NET_UNET, &m))
        return 1;
    double base = reset_peak();
    lsd_status st;
    unet_call(m, 32, &st); /* warm-up: oneDNN builds its primitives on the first call of a shape family */
    double dt = st == LSD_OK ? unet_call(m, a->side, &st) : 0;
    if (st != LSD_OK)
        return fail("unet", st);
    char what[96];
    snprintf(what, sizeof what, "UNet batch 2, %dx%d latents, %s", a->side, a->side, lsd_dtype_name(a->dtype));
    report(a->name, what, dt, base);
    lsd_model_free(m);
    return 0;
}

static int row_vae(const row_args *a)
{
    lsd_model *m;
    if (make_model(a->dtype, NET_VAE, &m))
        return 1;
    size_t nl = 4 * (size_t)a->side * a->side, ni = 3 * (size_t)a->side * a->side * 64;
    float *lat = filled(nl, 3), *img = malloc(ni * sizeof *img);
    if (!lat || !img)
        return 1;
    double base = reset_peak();
    double dt = 0;
    lsd_status st = LSD_OK;
    for (int rep = 0; rep < 2 && st == LSD_OK; rep++) { /* warm-up, then the timed call */
        double t0 = now();
        st = lsdi_vae_decode_host(m->vae, m->tdtype, m->device, lat, 1, a->side, a->side, a->flag, img);
        dt = now() - t0;
    }
    if (st != LSD_OK)
        return fail("vae decode", st);
    char what[96];
    snprintf(what, sizeof what, "VAE decode to %dx%d, %s%s", a->side * 8, a->side * 8, lsd_dtype_name(a->dtype),
             a->flag ? ", tiled" : "");
    report(a->name, what, dt, base);
    free(lat);
    free(img);
    lsd_model_free(m);
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

/* Seconds per sampling step (CFG, batch 1: one UNet call on batch 2, the guidance and the scheduler step), from the
 * progress callback's clock between the first and the last UNet call; the image is decoded, as generate does. */
static int row_sample(const row_args *a)
{
    lsd_model *m;
    if (make_model(a->dtype, NET_ALL, &m))
        return 1;
    double base = reset_peak();
    step_clock c = {0, 0, 0};
    lsd_sample_params sp;
    lsd_sample_params_init(&sp);
    sp.prompt = "a photo of an astronaut riding a horse";
    sp.steps = 3;
    sp.sampler = LSD_SAMPLER_EULER;
    sp.width = sp.height = a->side * 8;
    sp.progress = on_progress;
    sp.progress_user = &c;
    lsd_image img;
    double t0 = now();
    lsd_status st = lsd_sample(m, &sp, &img, NULL);
    double total = now() - t0;
    if (st != LSD_OK)
        return fail("sample", st);
    lsd_image_release(&img);
    char what[96];
    snprintf(what, sizeof what, "sampling step %dx%d (CFG), %s; 3 steps + decode %.1f s", a->side, a->side,
             lsd_dtype_name(a->dtype), total);
    report(a->name, what, (c.last - c.first) / (c.calls - 1), base);
    lsd_model_free(m);
    return 0;
}

/* One LoRA training step as diffusers_bench.py's `lora` mode: rank 4 on the UNet's attention projections, batch 1,
 * latents and text context given, MSE to the noise, backward, AdamW. One warm-up step, then the timed one. */
static int row_train(const row_args *a)
{
    lsd_model *m;
    if (make_model(a->dtype, NET_UNET, &m))
        return 1;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    tp.rank = 4;
    tp.lr_warmup_steps = 0;
    tp.mixed_precision = a->dtype;
    tp.gradient_checkpointing = a->flag;
    lsd_status st = lsd_adapter_set_new(m, &set);
    if (st == LSD_OK)
        st = lsd_trainer_new(m, set, "bench", NULL, &tp, &tr);
    if (st != LSD_OK)
        return fail("trainer", st);
    size_t nl = 4 * (size_t)a->side * a->side, nc = 77 * 768;
    float *lat = filled(nl, 4), *ctx = filled(nc, 5);
    if (!lat || !ctx)
        return 1;
    lsd_train_batch b = {sizeof b, 1, a->side, a->side, NULL, lat, NULL, ctx, 77, NULL, NULL, NULL};
    double base = reset_peak(), dt = 0;
    float loss = 0;
    for (int rep = 0; rep < 2 && st == LSD_OK; rep++) {
        double t0 = now();
        st = lsd_trainer_step_batch(tr, &b, &loss);
        dt = now() - t0;
    }
    if (st != LSD_OK)
        return fail("train step", st);
    char what[96];
    snprintf(what, sizeof what, "LoRA step %dx%d, %s%s (loss %.4f)", a->side, a->side,
             a->dtype == LSD_F32 ? "fp32" : lsd_dtype_name(a->dtype), a->flag ? ", checkpointing" : "", loss);
    report(a->name, what, dt, base);
    free(lat);
    free(ctx);
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
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

/* A whole training step from a dataset (rank 4, batch 1, 64x64 images: 8x8 latents), with the VAE and the text
 * encoder in it unless cache_latents (a->flag) serves them: timed over 4 steps of the second epoch of a 4-image
 * folder, when every item is in the cache. */
static int row_train_data(const row_args *a)
{
    char dir[] = "/tmp/lsd-bench-XXXXXX";
    if (make_dataset(dir)) {
        fprintf(stderr, "bench: cannot write a dataset in %s\n", dir);
        return 1;
    }
    lsd_model *m;
    if (make_model(a->dtype, NET_ALL, &m))
        return 1;
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = a->side * 8;
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    tp.train_batch_size = 1;
    tp.rank = 4;
    tp.resolution = a->side * 8;
    tp.center_crop = 1;
    tp.lr_warmup_steps = 0;
    tp.cache_latents = a->flag;
    lsd_dataset *ds = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_status st = lsd_dataset_open(dir, &dp, &ds);
    if (st == LSD_OK)
        st = lsd_adapter_set_new(m, &set);
    if (st == LSD_OK)
        st = lsd_trainer_new(m, set, "lora", ds, &tp, &tr);
    double base = reset_peak(), t0 = 0;
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
    char what[96];
    snprintf(what, sizeof what, "LoRA step from a dataset, %dx%d images, %s", a->side * 8, a->side * 8,
             a->flag ? "cache_latents" : "no cache");
    report(a->name, what, dt, base);
    lsd_model_free(m);
    return 0;
}

static int row_tiny(const row_args *a)
{
    char dir[4096];
    const char *data = getenv("LSD_DATA_DIR");
    snprintf(dir, sizeof dir, "%s/../tests/data/sd-tiny", data && *data ? data : "data");
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
    double base = reset_peak(), t0 = now();
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
    char what[96];
    snprintf(what, sizeof what, "tiny fixture, 20 PNDM steps, 32x32, batch 4: %.1f images/s", n / dt);
    report(a->name, what, dt, base);
    return 0;
}

typedef struct row {
    row_args a;
    int (*run)(const row_args *a);
    int needs_bf16;
} row;

static const row rows[] = {
    {{"unet32", 32, LSD_F32, 0}, row_unet, 0},
    {{"unet64", 64, LSD_F32, 0}, row_unet, 0},
    {{"unet64_bf16", 64, LSD_BF16, 0}, row_unet, 1},
    {{"vae", 64, LSD_F32, 0}, row_vae, 0},
    {{"vae_tiled", 64, LSD_F32, 32}, row_vae, 0},
    {{"sample32", 32, LSD_F32, 0}, row_sample, 0},
    {{"sample64", 64, LSD_F32, 0}, row_sample, 0},
    {{"sample64_bf16", 64, LSD_BF16, 0}, row_sample, 1},
    {{"train32", 32, LSD_F32, 0}, row_train, 0},
    {{"train32_gc", 32, LSD_F32, 1}, row_train, 0},
    {{"train64", 64, LSD_F32, 0}, row_train, 0},
    {{"train64_gc", 64, LSD_F32, 1}, row_train, 0},
    {{"train32_bf16", 32, LSD_BF16, 0}, row_train, 1},
    {{"train64_bf16", 64, LSD_BF16, 0}, row_train, 1},
    {{"train64_bf16_gc", 64, LSD_BF16, 1}, row_train, 1},
    {{"train_data8", 8, LSD_F32, 0}, row_train_data, 0},
    {{"train_data8_cache", 8, LSD_F32, 1}, row_train_data, 0},
    {{"tiny", 32, LSD_F32, 0}, row_tiny, 0},
};
#define N_ROWS (sizeof rows / sizeof rows[0])

/* LSD_BENCH_MALLOC picks glibc's policy for comparisons (the rows themselves use the default, as a plain program
 * does): "keep" holds freed memory for reuse (fewer page faults, more memory), "lean" maps every block over 1 MB
 * afresh and returns it on free (the live set, more page faults). */
static void malloc_policy(void)
{
    const char *p = getenv("LSD_BENCH_MALLOC");
    if (p && !strcmp(p, "keep")) {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
        mallopt(M_TOP_PAD, 256 << 20);
    } else if (p && !strcmp(p, "lean")) {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }
}

int main(int argc, char **argv)
{
    malloc_policy();
    int first = 1;
    if (argc > 2 && !strcmp(argv[1], "--threads")) {
        lsd_set_num_threads(atoi(argv[2]));
        first = 3;
    }
    lsd_runtime_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    lsd_status st = lsd_runtime_info_get(&info);
    if (st != LSD_OK)
        return fail("runtime info", st);
    if (first >= argc) {
        printf("liblora_sd %s, libtorch %s, %d threads, BLAS %s\nCPU: %s; native bf16: %s\nrows:",
               lsd_version_string(), info.torch_version, info.num_threads, info.blas,
               info.cpu_model[0] ? info.cpu_model : "unknown", info.cpu_native_bf16 ? "yes" : "no");
        for (size_t i = 0; i < N_ROWS; i++)
            if (!rows[i].needs_bf16 || info.cpu_native_bf16)
                printf(" %s", rows[i].a.name);
        printf("\n");
        return 0;
    }
    /* LSD_BENCH_PROFILE=1: where each row spends its time, op by op. */
    lsdt_profile_enable(getenv("LSD_BENCH_PROFILE") != NULL);
    for (int i = first; i < argc; i++) {
        const row *r = NULL;
        for (size_t k = 0; k < N_ROWS; k++)
            if (!strcmp(rows[k].a.name, argv[i]))
                r = &rows[k];
        if (!r) {
            fprintf(stderr, "bench: unknown row '%s' (run without arguments for the list)\n", argv[i]);
            return 2;
        }
        if (r->run(&r->a))
            return 1;
        if (getenv("LSD_BENCH_PROFILE")) {
            static char buf[1 << 16];
            lsdt_profile_report(buf, sizeof buf);
            printf("per-op time of %s:\n%s", r->a.name, buf);
            lsdt_profile_enable(1);
        }
    }
    return 0;
}
