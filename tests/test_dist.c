/* Data-parallel training over c10d/Gloo on loopback (docs/train.md "Several processes and machines"). The ranks are
 * this test binary started again (posix_spawn of /proc/self/exe) with LSD_TEST_DIST_WORKER set: a constructor below
 * turns such a process into one rank of a training run before the runner's main starts, so no rank is a fork of a
 * process whose libtorch threads already ran. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "model/model.h"
#include "test.h"
#include "train_util.h"
#include "train/train.h"

extern char **environ;

/* ---- the run every test trains: sd-tiny at 32 px, 4 images, min-SNR, noise offset, flips, AdamW ---- */

/* A variant of the run: gradient accumulation, and buckets (kohya's: a bucket's last batch may be short, so that
 * one rank's share is empty). */
typedef struct variant {
    int accumulation, buckets;
} variant;

static void open_dataset(const char *dir, const variant *v, lsd_dataset **ds)
{
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = 32;
    if (v->buckets) {
        dp.enable_bucket = 1;
        dp.min_bucket_reso = 32;
        dp.max_bucket_reso = 64;
        dp.bucket_reso_steps = 32;
    }
    CHECK_OK(lsd_dataset_open(dir, &dp, ds));
}

static void run_params(lsd_train_params *p, int batch, int steps, const char *out)
{
    lsd_train_params_init(p);
    p->train_batch_size = batch;
    p->resolution = 32;
    p->max_train_steps = steps;
    p->learning_rate = 1e-3;
    p->seed = 42;
    p->random_flip = 1;
    p->snr_gamma = 5.0f;
    p->noise_offset = 0.05f;
    p->output_dir = out;
    p->checkpointing_steps = out ? 2 : 0;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* Items first .. first + n of a batch of `total` a caller gives lsd_trainer_step_batch: latents and text context
 * that depend on the item's index alone. */
typedef struct caller_batch {
    lsd_train_batch b;
    float *lat, *ctx;
} caller_batch;

static lsd_status make_caller_batch(const lsd_model *m, int total, int first, int n, caller_batch *cb)
{
    int C = m->vae->cfg.latent_channels, h = 32 / lsdi_vae_scale_factor(m->vae);
    int T = m->text->cfg.max_positions, D = m->unet->cfg.cross_attention_dim;
    size_t per = (size_t)C * h * h, pc = (size_t)T * D;
    cb->lat = malloc((size_t)n * per * sizeof *cb->lat);
    cb->ctx = malloc((size_t)n * pc * sizeof *cb->ctx);
    if (!cb->lat || !cb->ctx || first + n > total)
        return LSD_ERR_OUT_OF_MEMORY;
    for (int i = 0; i < n; i++) {
        for (size_t k = 0; k < per; k++)
            cb->lat[i * per + k] = sinf(0.37f * (float)k + 1.3f * (float)(first + i));
        for (size_t k = 0; k < pc; k++)
            cb->ctx[i * pc + k] = 0.5f * cosf(0.11f * (float)k - 0.7f * (float)(first + i));
    }
    cb->b = (lsd_train_batch){sizeof cb->b, n, h, h, NULL, cb->lat, NULL, cb->ctx, T, NULL, NULL, NULL};
    return LSD_OK;
}

static void caller_batch_free(caller_batch *cb)
{
    free(cb->lat);
    free(cb->ctx);
}

/* ---- a rank (a process started by spawn_rank) ----
 * LSDW_DATA dataset, LSDW_BATCH, LSDW_STEPS: the run; LSDW_OUTDIR: output_dir/r<rank> is the rank's output_dir
 * (checkpoints every 2 steps);
 * LSDW_RESUME: checkpoint to resume; LSDW_WEIGHTS: where rank 0 writes the final LoRA values (raw float32) and
 * step losses; LSDW_STOP_AT, LSDW_STOP_SIGNAL: this rank sends itself the signal before that step; LSDW_ERR:
 * a failure's message goes to LSDW_ERR.<rank>; LSDW_STEP_BATCH: lsd_trainer_step_batch with item <rank> of a
 * caller's batch of 2 instead of the dataset, with a NaN in it from step LSDW_NAN_AT; LSDW_SEED: the run's seed; LSDW_TIMEOUT, LSDW_INIT_FILE: the group's. */
static int worker(void)
{
    lsd_dist_params dp;
    lsd_dist_params_init(&dp);
    lsd_dist *d = NULL;
    lsd_model *m = NULL;
    lsd_dataset *ds = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_status st = lsd_dist_params_from_env(&dp);
    dp.timeout_seconds = atof(env_or("LSDW_TIMEOUT", "60"));
    dp.init_file = getenv("LSDW_INIT_FILE");
    if (st == LSD_OK)
        st = lsd_dist_new(&dp, &d);
    lsd_set_num_threads(1);
    if (st == LSD_OK)
        st = lsd_model_load(env_or("LSDW_MODEL", "tests/data/sd-tiny"), NULL, &m);
    variant v = {atoi(env_or("LSDW_ACCUM", "1")), getenv("LSDW_BUCKET") != NULL};
    if (st == LSD_OK)
        open_dataset(getenv("LSDW_DATA"), &v, &ds);
    if (st == LSD_OK && !ds)
        st = LSD_ERR_INVALID_ARGUMENT;
    if (st == LSD_OK)
        st = lsd_adapter_set_new(m, &set);
    int steps = atoi(env_or("LSDW_STEPS", "3")), stop_at = atoi(env_or("LSDW_STOP_AT", "0"));
    float loss[64] = {0};
    lsd_train_params p;
    char outdir[600];
    if (getenv("LSDW_OUTDIR")) /* a folder a rank for the test to see who wrote what */
        snprintf(outdir, sizeof outdir, "%s/r%d", getenv("LSDW_OUTDIR"), dp.rank);
    run_params(&p, atoi(env_or("LSDW_BATCH", "1")), steps, getenv("LSDW_OUTDIR") ? outdir : NULL);
    p.dist = d;
    p.gradient_accumulation_steps = v.accumulation;
    p.seed = (uint64_t)atoi(env_or("LSDW_SEED", "42"));
    if (st == LSD_OK)
        st = lsd_trainer_new(m, set, "lora", ds, &p, &tr);
    /* The group goes before its trainer, as a binding's finalizers may do: the trainer keeps its own reference. */
    int rank = lsd_dist_rank(d);
    lsd_dist_free(d);
    if (st == LSD_OK && getenv("LSDW_RESUME"))
        st = lsd_trainer_resume(tr, getenv("LSDW_RESUME"));
    caller_batch cb = {0};
    if (st == LSD_OK && getenv("LSDW_STEP_BATCH"))
        st = make_caller_batch(m, 2, rank, 1, &cb);
    while (st == LSD_OK && lsd_trainer_get_step(tr) < steps) {
        int k = lsd_trainer_get_step(tr);
        if (k + 1 == stop_at)
            raise(atoi(env_or("LSDW_STOP_SIGNAL", "9")));
        if (cb.lat && k + 1 == atoi(env_or("LSDW_NAN_AT", "0")))
            cb.lat[0] = NAN;
        st = cb.lat ? lsd_trainer_step_batch(tr, &cb.b, k < 64 ? &loss[k] : NULL)
                    : lsd_trainer_step(tr, k < 64 ? &loss[k] : NULL);
    }
    caller_batch_free(&cb);
    if (st == LSD_OK && rank == 0 && getenv("LSDW_WEIGHTS")) {
        size_t n = 0;
        float *w = trainer_weights(tr, &n);
        FILE *f = fopen(getenv("LSDW_WEIGHTS"), "wb");
        if (!f || !w || fwrite(loss, sizeof loss, 1, f) != 1 || fwrite(w, sizeof *w, n, f) != n)
            st = LSD_ERR_IO;
        if (f && fclose(f))
            st = LSD_ERR_IO;
        free(w);
    }
    if (st != LSD_OK && getenv("LSDW_ERR")) {
        char path[600];
        snprintf(path, sizeof path, "%s.%d", getenv("LSDW_ERR"), dp.rank);
        FILE *f = fopen(path, "w");
        if (f) {
            fprintf(f, "%s", lsd_last_error());
            fclose(f);
        }
    }
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_dataset_free(ds);
    lsd_model_free(m);
    return st == LSD_OK ? 0 : 10 + (int)st;
}

__attribute__((constructor)) static void maybe_worker(void)
{
    if (getenv("LSD_TEST_DIST_WORKER"))
        _exit(worker());
}

/* ---- the test side ---- */

/* A port nothing listens on right now (the kernel's pick). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Starts rank `rank` of `world` with the environment torchrun gives plus extra ("NAME=value", NULL-terminated). */
static pid_t spawn_rank(int rank, int world, int port, const char *const *extra)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 32, sizeof *env);
    static char buf[8][64];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "RANK=", 5) && strncmp(environ[i], "WORLD_SIZE=", 11) &&
            strncmp(environ[i], "MASTER_", 7) && strncmp(environ[i], "LSDW_", 5))
            env[k++] = environ[i];
    snprintf(buf[0], sizeof buf[0], "RANK=%d", rank);
    snprintf(buf[1], sizeof buf[1], "WORLD_SIZE=%d", world);
    snprintf(buf[2], sizeof buf[2], "MASTER_PORT=%d", port);
    snprintf(buf[3], sizeof buf[3], "LOCAL_RANK=%d", rank);
    env[k++] = buf[0];
    env[k++] = buf[1];
    env[k++] = buf[2];
    env[k++] = buf[3];
    env[k++] = "MASTER_ADDR=127.0.0.1";
    env[k++] = "LSD_TEST_DIST_WORKER=1";
    env[k++] = "OMP_NUM_THREADS=1";
    static char model[600];
    snprintf(model, sizeof model, "LSDW_MODEL=%s", data_path("sd-tiny"));
    env[k++] = model;
    for (int i = 0; extra && extra[i]; i++)
        env[k++] = (char *)extra[i];
    env[k] = NULL;
    char *argv[] = {"run-tests-dist-worker", NULL};
    pid_t pid = -1;
    if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, env) != 0)
        pid = -1;
    free(env);
    return pid;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Waits for pid up to `seconds`; its exit status (or 128 + signal), -1 on time out (then it is killed). */
static int wait_for(pid_t pid, double seconds)
{
    double end = now() + seconds;
    for (;;) {
        int ws = 0;
        pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid)
            return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
        if (r < 0)
            return -1;
        if (now() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        usleep(20000);
    }
}

static char *env_kv(const char *k, const char *v)
{
    size_t n = strlen(k) + strlen(v) + 2;
    char *s = malloc(n);
    snprintf(s, n, "%s=%s", k, v);
    return s;
}

/* The 1-process reference: batch `batch`, `steps` steps; its weights and losses. */
static size_t reference(const char *data, const variant *v, int batch, int steps, float *loss, float **w)
{
    lsd_model *m = NULL;
    lsd_dataset *ds = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    run_params(&p, batch, steps, NULL);
    p.gradient_accumulation_steps = v->accumulation;
    size_t n = 0;
    *w = NULL;
    open_dataset(data, v, &ds);
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && ds && CHECK_OK(lsd_adapter_set_new(m, &set)) &&
        CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr))) {
        for (int k = 0; k < steps; k++)
            CHECK_OK(lsd_trainer_step(tr, &loss[k]));
        *w = trainer_weights(tr, &n);
    }
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_dataset_free(ds);
    lsd_model_free(m);
    return n;
}

/* Rank 0's file: 64 losses, then the weights. */
static float *read_weights(const char *path, size_t n, float *loss)
{
    size_t len = 0;
    char *b = read_file(path, &len);
    CHECK(!b || len == 64 * sizeof(float) + n * sizeof(float), "%s: %zu bytes for %zu weights", path, len, n);
    if (!b || len != 64 * sizeof(float) + n * sizeof(float)) {
        free(b);
        return NULL;
    }
    memcpy(loss, b, 64 * sizeof *loss);
    float *w = malloc(n * sizeof *w);
    memcpy(w, b + 64 * sizeof(float), n * sizeof *w);
    free(b);
    return w;
}

/* Runs `world` ranks with the extra environment; every rank's exit status into rc (-1: still running after
 * `seconds`, then killed). */
static void run_group(int world, const char *const *extra, double seconds, int *rc)
{
    int port = free_port();
    pid_t pid[8];
    for (int r = 0; r < world; r++)
        pid[r] = spawn_rank(r, world, port, extra);
    double t0 = now();
    for (int r = 0; r < world; r++) {
        double left = seconds - (now() - t0);
        rc[r] = pid[r] > 0 ? wait_for(pid[r], left > 1 ? left : 1) : -2;
    }
}

static double rel_diff(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* 2 processes x batch 1 train what 1 process x batch 2 trains. Both draw the same global batches (the loader
 * plans world x batch items; rank r takes item r) with the same noise, timesteps and posterior samples (drawn for
 * the whole batch, then cut), so the only difference is float rounding: the batch-2 backward sums the two items'
 * weight gradients inside each conv/matmul, the group adds two batch-1 gradients in Gloo's all-reduce (one f32
 * add): another summation order, ~1e-7 relative on a gradient. The losses of the 3 steps agree to 1e-6 relative.
 * The weights agree to 1e-5 relative (L2 over the adapter; measured 2.5e-6) and 1e-4 absolute per value
 * (measured 2.7e-5, against a movement of up to 3e-3 = 3 steps x lr): the largest gaps are values whose gradient
 * is near 0, where AdamW's m / (sqrt(v) + eps) turns a rounding-sized change of the gradient into a visible change
 * of the step. Training 1 process x batch 1 instead moves the weights far more than that (checked). */
TEST(dist_two_ranks_equal_one_rank_double_batch)
{
    const char *data = tiny_dataset(), *tmp = temp_dir();
    float ref_loss[64] = {0}, loss[64] = {0}, *ref = NULL;
    static const variant plain = {1, 0};
    size_t n = reference(data, &plain, 2, 3, ref_loss, &ref);
    CHECK(n > 0, "reference run");
    if (!n)
        return;
    char wpath[600], epath[600];
    snprintf(wpath, sizeof wpath, "%s/w", tmp);
    snprintf(epath, sizeof epath, "%s/err", tmp);
    char *extra[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_WEIGHTS", wpath), env_kv("LSDW_ERR", epath),
                     "LSDW_BATCH=1", "LSDW_STEPS=3", NULL};
    int rc[2];
    run_group(2, (const char *const *)extra, 300, rc);
    char e0[620];
    snprintf(e0, sizeof e0, "%s.%d", epath, rc[0] ? 0 : 1);
    char *err = rc[0] || rc[1] ? read_file(e0, NULL) : NULL;
    CHECK(rc[0] == 0 && rc[1] == 0, "ranks exited %d %d: %s", rc[0], rc[1], err ? err : "");
    free(err);
    float *w = rc[0] == 0 ? read_weights(wpath, n, loss) : NULL;
    if (w) {
        double d = max_abs_diff(w, ref, n);
        printf("    2x1 vs 1x2 after 3 steps: max |dw| %.3g, relative %.3g; losses %.7g %.7g %.7g vs %.7g %.7g %.7g\n",
               d, rel_diff(w, ref, n), loss[0], loss[1], loss[2], ref_loss[0], ref_loss[1], ref_loss[2]);
        CHECK(d <= 1e-4 && rel_diff(w, ref, n) <= 1e-5, "weights differ by %g (relative %g)", d,
              rel_diff(w, ref, n));
        for (int k = 0; k < 3; k++)
            CHECK(fabsf(loss[k] - ref_loss[k]) <= 1e-6f * fabsf(ref_loss[k]), "loss %d: %.9g vs %.9g", k, loss[k],
                  ref_loss[k]);
        /* ... and it is not the 1 x batch 1 run: the group really trained on both items. */
        float l1[64], *w1 = NULL;
        size_t n1 = reference(data, &plain, 1, 3, l1, &w1);
        CHECK(n1 == n && w1 && max_abs_diff(w, w1, n) > 100 * d + 1e-5, "1x1 differs by only %g",
              w1 ? max_abs_diff(w, w1, n) : 0);
        free(w1);
    }
    free(w);
    free(ref);
    for (int i = 0; i < 3; i++)
        free(extra[i]);
}

/* A 2-process run of 4 steps checkpoints at steps 2 and 4 from rank 0 alone; a 2-process run resumed from step 2
 * (rendezvous through a FileStore this time) ends on the same bits; the checkpoint's LoRA says the batch was 2. */
TEST(dist_resume_exact_and_rank0_writes)
{
    const char *data = tiny_dataset(), *tmp = temp_dir();
    char out[600], out2[600], w1[600], w2[600], ck[700], err[600], init[600];
    snprintf(out, sizeof out, "%s/a", tmp);
    snprintf(out2, sizeof out2, "%s/b", tmp);
    snprintf(w1, sizeof w1, "%s/w1", tmp);
    snprintf(w2, sizeof w2, "%s/w2", tmp);
    snprintf(ck, sizeof ck, "%s/r0/checkpoint-2", out);
    snprintf(err, sizeof err, "%s/err", tmp);
    snprintf(init, sizeof init, "%s/filestore", tmp);
    char *a[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_WEIGHTS", w1), env_kv("LSDW_OUTDIR", out),
                 env_kv("LSDW_ERR", err), "LSDW_BATCH=1", "LSDW_STEPS=4", NULL};
    char *b[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_WEIGHTS", w2), env_kv("LSDW_RESUME", ck),
                 env_kv("LSDW_INIT_FILE", init), env_kv("LSDW_ERR", err), "LSDW_BATCH=1", "LSDW_STEPS=4", NULL};
    int rc[2];
    run_group(2, (const char *const *)a, 300, rc);
    CHECK(rc[0] == 0 && rc[1] == 0, "first run: ranks exited %d %d", rc[0], rc[1]);
    char r0[700], r1[700];
    snprintf(r0, sizeof r0, "%s/r0", out);
    snprintf(r1, sizeof r1, "%s/r1", out);
    CHECK(exists_in(r0, "checkpoint-2/training_state.safetensors") && exists_in(r0, "checkpoint-4/training_state.safetensors"),
          "rank 0 checkpoints");
    CHECK(!exists_in(r1, "checkpoint-2") && !exists_in(r1, "checkpoint-4"), "rank 1 wrote a checkpoint");
    char kf[800];
    snprintf(kf, sizeof kf, "%s/pytorch_lora_weights.safetensors", ck);
    lsdi_st_file *f = NULL;
    if (CHECK_OK(lsdi_st_open(kf, &f))) {
        const char *tb = lsdi_st_metadata_get(f, "ss_total_batch_size"),
                   *pd = lsdi_st_metadata_get(f, "ss_batch_size_per_device");
        CHECK(tb && !strcmp(tb, "2") && pd && !strcmp(pd, "1"), "ss_total_batch_size %s, per device %s",
              tb ? tb : "-", pd ? pd : "-");
        lsdi_st_close(f);
    }
    run_group(2, (const char *const *)b, 300, rc);
    CHECK(rc[0] == 0 && rc[1] == 0, "resumed run: ranks exited %d %d", rc[0], rc[1]);
    size_t l1 = 0, l2 = 0;
    char *x = read_file(w1, &l1), *y = read_file(w2, &l2);
    /* the resumed run trained steps 3 and 4 only (an unresumed run would also end on these bits) ... */
    float head[3] = {1, 1, 0};
    if (y && l2 >= sizeof head)
        memcpy(head, y, sizeof head);
    CHECK(head[0] == 0 && head[1] == 0 && head[2] > 0, "resumed run's losses %g %g %g", head[0], head[1], head[2]);
    /* ... with the uninterrupted run's losses of steps 3 and 4 and every weight bit */
    CHECK(x && y && l1 == l2 && l1 > 64 * sizeof(float) &&
              !memcmp(x + 2 * sizeof(float), y + 2 * sizeof(float), l1 - 2 * sizeof(float)),
          "the resumed run differs from the uninterrupted one");
    free(x);
    free(y);
    /* rank 1 alone resumed: the first step's sum finds the ranks at different steps, both stop naming them */
    char *c0[] = {b[0], b[4], "LSDW_BATCH=1", "LSDW_STEPS=4", NULL}, *c1[] = {b[0], b[2], b[4], "LSDW_BATCH=1",
                                                                             "LSDW_STEPS=4", NULL};
    int port = free_port();
    pid_t p0 = spawn_rank(0, 2, port, (const char *const *)c0), p1 = spawn_rank(1, 2, port, (const char *const *)c1);
    int rc0 = wait_for(p0, 300), rc1 = wait_for(p1, 60);
    char e0[620], e1[620];
    snprintf(e0, sizeof e0, "%s.0", err);
    snprintf(e1, sizeof e1, "%s.1", err);
    char *m0 = read_file(e0, NULL), *m1 = read_file(e1, NULL);
    CHECK(rc0 == 10 + LSD_ERR_INVALID_ARGUMENT && rc1 == 10 + LSD_ERR_INVALID_ARGUMENT, "exits %d %d", rc0, rc1);
    CHECK(m0 && strstr(m0, "training step 1: rank 1 has done 2 steps, rank 0 has done 0"), "rank 0: %s",
          m0 ? m0 : "");
    CHECK(m1 && strstr(m1, "training step 3: rank 0 has done 0 steps, rank 1 has done 2"), "rank 1: %s",
          m1 ? m1 : "");
    free(m0);
    free(m1);
    for (int i = 0; i < 4; i++)
        free(a[i]);
    for (int i = 0; i < 5; i++)
        free(b[i]);
}

/* A rank that dies (SIGKILL before its step 2) or hangs (SIGSTOP, with a 5 s timeout) stops rank 0 with a message
 * naming it, in time, with no checkpoint torn: rank 0 writes nothing after step 1 (checkpoints are every 2 steps). */
static void stopped_rank(int sig, double timeout, double limit)
{
    const char *data = tiny_dataset(), *tmp = temp_dir();
    char err[600], e0[620], out[600];
    snprintf(err, sizeof err, "%s/err", tmp);
    snprintf(e0, sizeof e0, "%s.0", err);
    snprintf(out, sizeof out, "%s/out", tmp);
    char sigv[32], tov[32];
    snprintf(sigv, sizeof sigv, "LSDW_STOP_SIGNAL=%d", sig);
    snprintf(tov, sizeof tov, "LSDW_TIMEOUT=%g", timeout);
    char *extra[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_ERR", err), env_kv("LSDW_OUTDIR", out),
                     "LSDW_BATCH=1", "LSDW_STEPS=3", sigv, tov, NULL};
    /* rank 1 alone stops itself: it is the only one given LSDW_STOP_AT */
    int port = free_port();
    pid_t p0 = spawn_rank(0, 2, port, (const char *const *)extra);
    char *extra1[] = {extra[0], extra[1], extra[2], extra[3], extra[4], sigv, tov, "LSDW_STOP_AT=2", NULL};
    pid_t p1 = spawn_rank(1, 2, port, (const char *const *)extra1);
    double t0 = now();
    int rc0 = wait_for(p0, limit + 60);
    double took = now() - t0;
    kill(p1, SIGKILL);
    waitpid(p1, NULL, 0);
    char *msg = read_file(e0, NULL);
    printf("    rank 0 stopped after %.1f s: %s\n", took, msg ? msg : "(no message)");
    CHECK(rc0 == 10 + LSD_ERR_IO, "rank 0 exited %d", rc0);
    CHECK(msg && strstr(msg, "rank 1 (last at step 1) never came to the gradient all-reduce"), "message: %s",
          msg ? msg : "");
    CHECK(took < limit, "rank 0 took %.1f s to stop (limit %.0f)", took, limit);
    char r0[700];
    snprintf(r0, sizeof r0, "%s/r0/checkpoint-2", out);
    struct stat sb;
    CHECK(stat(r0, &sb) != 0, "a checkpoint of step 2 was written");
    free(msg);
    for (int i = 0; i < 3; i++)
        free(extra[i]);
}

TEST(dist_killed_rank_is_named) { stopped_rank(SIGKILL, 60, 30); }
TEST(dist_hung_rank_is_named_after_the_timeout) { stopped_rank(SIGSTOP, 5, 25); }

/* ---- rendezvous failures, in this process (the store alone: no backend is formed) ---- */

typedef struct joiner {
    lsd_dist_params p;
    lsd_status st;
    char msg[1024];
} joiner;

static void *join(void *arg)
{
    joiner *j = arg;
    lsd_dist *d = NULL;
    j->st = lsd_dist_new(&j->p, &d);
    snprintf(j->msg, sizeof j->msg, "%s", j->st ? lsd_last_error() : "");
    lsd_dist_free(d);
    return NULL;
}

static void dist_params(lsd_dist_params *p, int rank, int world, int port, double timeout)
{
    lsd_dist_params_init(p);
    p->rank = rank;
    p->world_size = world;
    p->master_port = port;
    p->timeout_seconds = timeout;
}

TEST(dist_rendezvous_failures_say_why)
{
    char want[128];
    joiner j;
    /* nobody serves the store */
    int port = free_port();
    dist_params(&j.p, 1, 2, port, 1);
    join(&j);
    snprintf(want, sizeof want, "rendezvous of rank 1 of 2 at 127.0.0.1:%d: cannot reach the store", port);
    CHECK(j.st == LSD_ERR_IO && strstr(j.msg, want), "%d %s", j.st, j.msg);
    /* the port is taken */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)};
    socklen_t len = sizeof a;
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 1) == 0 &&
          getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    dist_params(&j.p, 0, 2, ntohs(a.sin_port), 1);
    join(&j);
    snprintf(want, sizeof want, "rank 0 cannot serve the store on port %d", ntohs(a.sin_port));
    CHECK(j.st == LSD_ERR_IO && strstr(j.msg, want), "%d %s", j.st, j.msg);
    close(fd);
    /* rank 1 never comes */
    dist_params(&j.p, 0, 2, free_port(), 1);
    join(&j);
    CHECK(j.st == LSD_ERR_IO && strstr(j.msg, "rank 1 of 2 did not join within 1 s"), "%d %s", j.st, j.msg);
    /* the ranks disagree on the world size: both fail, naming it */
    joiner j0, j1;
    port = free_port();
    dist_params(&j0.p, 0, 2, port, 20);
    dist_params(&j1.p, 1, 3, port, 20);
    pthread_t t0, t1;
    pthread_create(&t0, NULL, join, &j0);
    usleep(200000);
    pthread_create(&t1, NULL, join, &j1);
    pthread_join(t0, NULL);
    pthread_join(t1, NULL);
    CHECK(j0.st == LSD_ERR_INVALID_ARGUMENT && strstr(j0.msg, "rank 1 has world size 3, rank 0 has 2"), "%d %s",
          j0.st, j0.msg);
    CHECK(j1.st == LSD_ERR_INVALID_ARGUMENT && strstr(j1.msg, "rank 0 refused the group: rank 1 has world size 3"),
          "%d %s", j1.st, j1.msg);
    /* params out of range, and torchrun's variables read or refused by name */
    dist_params(&j.p, 2, 2, 29500, 1);
    join(&j);
    CHECK(j.st == LSD_ERR_INVALID_ARGUMENT && strstr(j.msg, "rank 2 is not in [0, world_size 2)"), "%s", j.msg);
    lsd_dist_params p;
    lsd_dist_params_init(&p);
    setenv("RANK", "3", 1);
    setenv("WORLD_SIZE", "4", 1);
    setenv("MASTER_ADDR", "10.1.2.3", 1);
    setenv("MASTER_PORT", "1234", 1);
    setenv("LOCAL_RANK", "1", 1);
    CHECK_OK(lsd_dist_params_from_env(&p));
    CHECK(p.rank == 3 && p.world_size == 4 && p.local_rank == 1 && p.master_port == 1234 &&
          !strcmp(p.master_addr, "10.1.2.3"));
    setenv("MASTER_PORT", "70000", 1);
    CHECK_STATUS(lsd_dist_params_from_env(&p), LSD_ERR_INVALID_ARGUMENT, "MASTER_PORT=\"70000\"");
    setenv("RANK", "x", 1);
    CHECK_STATUS(lsd_dist_params_from_env(&p), LSD_ERR_INVALID_ARGUMENT, "RANK=\"x\"");
    unsetenv("RANK");
    unsetenv("WORLD_SIZE");
    unsetenv("MASTER_ADDR");
    unsetenv("MASTER_PORT");
    unsetenv("LOCAL_RANK");
    /* a group of one forms nothing and trains as one process */
    lsd_dist *d = NULL;
    dist_params(&p, 0, 1, 29500, 1);
    CHECK_OK(lsd_dist_new(&p, &d));
    CHECK(lsd_dist_rank(d) == 0 && lsd_dist_world_size(d) == 1 && lsd_dist_world_size(NULL) == 1);
    lsd_dist_free(d);
}

/* ---- the CLI: lora-sd train --nproc_per_node 2 (its workers read torchrun's environment) ---- */

static int cli(char **log, const char *env, const char *args)
{
    char cmd[8192], path[600];
    snprintf(path, sizeof path, "%s/cli.log", temp_dir());
    snprintf(cmd, sizeof cmd, "%s %s train %s >%s 2>&1 </dev/null", env,
             getenv("LSD_CLI") ? getenv("LSD_CLI") : "build/lora-sd", args, path);
    int st = system(cmd);
    if (log)
        *log = read_file(path, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int count(const char *s, const char *sub)
{
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, sub)); p += strlen(sub))
        n++;
    return n;
}

/* The largest difference between the float32 tensors of two LoRA files with the same keys (-1: they differ). */
static double file_diff(const char *a, const char *b)
{
    lsdi_st_file *fa = NULL, *fb = NULL;
    double d = -1;
    if (CHECK_OK(lsdi_st_open(a, &fa)) && CHECK_OK(lsdi_st_open(b, &fb)) && lsdi_st_count(fa) == lsdi_st_count(fb)) {
        d = 0;
        for (size_t i = 0; i < lsdi_st_count(fa) && d >= 0; i++) {
            const lsdi_st_tensor *x = lsdi_st_at(fa, i), *y = lsdi_st_find(fb, x->name);
            if (!y || y->numel != x->numel || x->dtype != LSDI_ST_F32 || y->dtype != LSDI_ST_F32) {
                d = -1;
                break;
            }
            double m = max_abs_diff(x->data, y->data, x->numel);
            d = m > d ? m : d;
        }
    }
    lsdi_st_close(fa);
    lsdi_st_close(fb);
    return d;
}

TEST(dist_cli_nproc_per_node_trains_as_one_process)
{
    char data[512], oa[512], ob[512], args[4096], *log = NULL; /* copies: temp_dir() reuses 8 buffers */
    snprintf(data, sizeof data, "%s", tiny_dataset());
    snprintf(oa, sizeof oa, "%s", temp_dir());
    snprintf(ob, sizeof ob, "%s", temp_dir());
    const char *common = "--pretrained_model_name_or_path %s --train_data_dir %s --output_dir %s --resolution 32 "
                         "--max_train_steps 3 --learning_rate 1e-3 --seed 42 --snr_gamma 5 --noise_offset 0.05 "
                         "--random_flip --checkpointing_steps 2 --report_to none --threads 2 --train_batch_size %d %s";
    snprintf(args, sizeof args, common, data_path("sd-tiny"), data, oa, 2, "");
    CHECK(cli(&log, "", args) == 0, "%s", log ? log : "");
    free(log);
    snprintf(args, sizeof args, common, data_path("sd-tiny"), data, ob, 1, "--nproc_per_node 2 --dist_timeout 60");
    CHECK(cli(&log, "", args) == 0, "%s", log ? log : "");
    /* one report for the group: rank 0's */
    CHECK(log && strstr(log, "2 workers, rendezvous at 127.0.0.1:") && strstr(log, "1 threads each") &&
              count(log, "training for 3 steps (the group's)") == 1 && count(log, "step 3/3 loss ") == 1 &&
              count(log, "saved checkpoint-2") == 1,
          "%s", log ? log : "");
    free(log);
    char fa[700], fb[700], mj[700];
    snprintf(fa, sizeof fa, "%s/pytorch_lora_weights.safetensors", oa);
    snprintf(fb, sizeof fb, "%s/pytorch_lora_weights.safetensors", ob);
    double d = file_diff(fa, fb);
    CHECK(d >= 0 && d <= 1e-4, "2 workers x batch 1 vs 1 x batch 2: the LoRA files differ by %g", d);
    snprintf(mj, sizeof mj, "%s/logs/metrics.jsonl", ob);
    char *j = read_file(mj, NULL);
    CHECK(j && count(j, "\n") == 3, "metrics.jsonl has %d lines", j ? count(j, "\n") : -1);
    free(j);
    /* usage errors, in the launcher or a worker */
    snprintf(args, sizeof args, common, data_path("sd-tiny"), data, ob, 1, "--dist_backend mpi");
    CHECK(cli(&log, "", args) == 2 && log && strstr(log, "--dist_backend must be gloo or nccl, got 'mpi'"), "%s",
          log ? log : "");
    free(log);
    snprintf(args, sizeof args, common, data_path("sd-tiny"), data, ob, 1, "--nproc_per_node 2");
    CHECK(cli(&log, "WORLD_SIZE=2 RANK=0", args) == 2 && log && strstr(log, "WORLD_SIZE=2 is set"), "%s",
          log ? log : "");
    free(log);
    snprintf(args, sizeof args, common, data_path("sd-tiny"), data, ob, 1, "");
    CHECK(cli(&log, "WORLD_SIZE=2 RANK=two", args) == 2 && log && strstr(log, "RANK=\"two\""), "%s", log ? log : "");
    free(log);
    /* DreamBooth: workers do not sample missing class images, they say so */
    char cls[700], more[1400];
    snprintf(cls, sizeof cls, "%s/class", temp_dir());
    snprintf(more, sizeof more, "--nproc_per_node 2 --with_prior_preservation --class_data_dir %s --class_prompt "
             "'a photo' --num_class_images 2", cls);
    snprintf(args, sizeof args, common, data_path("sd-tiny"), data, ob, 1, more);
    int crc = cli(&log, "", args);
    CHECK(crc == 1 && log && strstr(log, "holds 0 of the 2 class images; in a group of processes"), "exit %d: %s",
          crc, log ? log : "");
    free(log);
}

/* lsd_trainer_step_batch in a group: each rank's batch is its share of one batch of world x batch items (its noise
 * and timesteps drawn for that batch, the gradients averaged over the ranks as DDP does), so 2 ranks giving items 0
 * and 1 train as 1 process giving both. Tolerances as in dist_two_ranks_equal_one_rank_double_batch. */
TEST(dist_step_batch_shares_one_batch)
{
    const char *data = tiny_dataset(), *tmp = temp_dir();
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    run_params(&p, 2, 3, NULL);
    float ref_loss[3] = {0}, *ref = NULL;
    size_t n = 0;
    caller_batch cb = {0};
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_adapter_set_new(m, &set)) &&
        CHECK_OK(lsd_trainer_new(m, set, "lora", NULL, &p, &tr)) && CHECK_OK(make_caller_batch(m, 2, 0, 2, &cb))) {
        for (int k = 0; k < 3; k++)
            CHECK_OK(lsd_trainer_step_batch(tr, &cb.b, &ref_loss[k]));
        ref = trainer_weights(tr, &n);
    }
    caller_batch_free(&cb);
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    char wpath[600], epath[600];
    snprintf(wpath, sizeof wpath, "%s/w", tmp);
    snprintf(epath, sizeof epath, "%s/err", tmp);
    char *extra[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_WEIGHTS", wpath), env_kv("LSDW_ERR", epath),
                     "LSDW_BATCH=1", "LSDW_STEPS=3", "LSDW_STEP_BATCH=1", NULL};
    int rc[2];
    run_group(2, (const char *const *)extra, 300, rc);
    CHECK(rc[0] == 0 && rc[1] == 0, "ranks exited %d %d", rc[0], rc[1]);
    float loss[64];
    float *w = n && rc[0] == 0 ? read_weights(wpath, n, loss) : NULL;
    if (w) {
        double d = max_abs_diff(w, ref, n);
        printf("    step_batch 2x1 vs 1x2: max |dw| %.3g, relative %.3g\n", d, rel_diff(w, ref, n));
        CHECK(d <= 1e-4 && rel_diff(w, ref, n) <= 1e-5, "weights differ by %g (relative %g)", d,
              rel_diff(w, ref, n));
        for (int k = 0; k < 3; k++)
            CHECK(fabsf(loss[k] - ref_loss[k]) <= 1e-6f * fabsf(ref_loss[k]), "loss %d: %.9g vs %.9g", k, loss[k],
                  ref_loss[k]);
    }
    free(w);
    free(ref);
    for (int i = 0; i < 3; i++)
        free(extra[i]);
}

/* A rank whose step fails (a NaN loss) still takes part in the step's sum, with its failure flag: the other rank
 * stops at once naming it and its message, rather than waiting for the timeout. */
TEST(dist_failed_rank_stops_the_others_at_once)
{
    const char *data = tiny_dataset(), *tmp = temp_dir();
    char err[600], e0[620], e1[620];
    snprintf(err, sizeof err, "%s/err", tmp);
    snprintf(e0, sizeof e0, "%s.0", err);
    snprintf(e1, sizeof e1, "%s.1", err);
    char *common[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_ERR", err), "LSDW_BATCH=1", "LSDW_STEPS=3",
                      "LSDW_STEP_BATCH=1", "LSDW_TIMEOUT=120", NULL, NULL};
    int port = free_port();
    pid_t p0 = spawn_rank(0, 2, port, (const char *const *)common);
    common[6] = "LSDW_NAN_AT=2";
    pid_t p1 = spawn_rank(1, 2, port, (const char *const *)common);
    double t0 = now();
    int rc0 = wait_for(p0, 200), rc1 = wait_for(p1, 30);
    double took = now() - t0;
    char *m0 = read_file(e0, NULL), *m1 = read_file(e1, NULL);
    CHECK(rc0 == 10 + LSD_ERR_IO && rc1 == 10 + LSD_ERR_NUMERIC, "exits %d %d", rc0, rc1);
    CHECK(m1 && strstr(m1, "training step 2: the loss is nan"), "rank 1: %s", m1 ? m1 : "");
    CHECK(m0 && strstr(m0, "training step 2: stopped because rank 1 failed: training step 2: the loss is nan"),
          "rank 0: %s", m0 ? m0 : "");
    CHECK(took < 60, "took %.1f s (the timeout is 120 s)", took);
    free(m0);
    free(m1);
    free(common[0]);
    free(common[1]);
}

/* The same equality with gradient accumulation (2 micro-batches a step), and with buckets over 3 images: each epoch
 * has a batch of 2 and a batch of 1, whose share on rank 0 is empty (it sends zeros; rank 1's item is weighted as
 * the whole batch). */
static void equal_variant(const variant *v, const char *data)
{
    const char *tmp = temp_dir();
    float ref_loss[64] = {0}, loss[64] = {0}, *ref = NULL;
    size_t n = reference(data, v, 2, 3, ref_loss, &ref);
    char wpath[600], acc[32];
    snprintf(wpath, sizeof wpath, "%s/w", tmp);
    snprintf(acc, sizeof acc, "LSDW_ACCUM=%d", v->accumulation);
    char *extra[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_WEIGHTS", wpath), acc, "LSDW_BATCH=1", "LSDW_STEPS=3",
                     v->buckets ? "LSDW_BUCKET=1" : NULL, NULL};
    int rc[2];
    run_group(2, (const char *const *)extra, 300, rc);
    CHECK(n > 0 && rc[0] == 0 && rc[1] == 0, "reference %zu values, ranks exited %d %d", n, rc[0], rc[1]);
    float *w = n && rc[0] == 0 ? read_weights(wpath, n, loss) : NULL;
    if (w) {
        double d = max_abs_diff(w, ref, n);
        printf("    accumulation %d, buckets %d: max |dw| %.3g, relative %.3g; losses %.7g %.7g %.7g vs %.7g %.7g %.7g\n",
               v->accumulation, v->buckets, d, rel_diff(w, ref, n), loss[0], loss[1], loss[2], ref_loss[0],
               ref_loss[1], ref_loss[2]);
        CHECK(d <= 1e-4 && rel_diff(w, ref, n) <= 1e-5, "weights differ by %g (relative %g)", d, rel_diff(w, ref, n));
        for (int k = 0; k < 3; k++)
            CHECK(fabsf(loss[k] - ref_loss[k]) <= 1e-6f * fabsf(ref_loss[k]), "loss %d: %.9g vs %.9g", k, loss[k],
                  ref_loss[k]);
    }
    free(w);
    free(ref);
    free(extra[0]);
    free(extra[1]);
}

TEST(dist_equal_with_accumulation)
{
    static const variant v = {2, 0};
    equal_variant(&v, tiny_dataset());
}

TEST(dist_equal_with_a_short_bucket_batch)
{
    const char *d = temp_dir();
    static const char *caps[] = {"a photo of a cat", "a red car", "two dogs"};
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "%d.png", i);
        make_captioned_png(d, name, 32, 32, caps[i]);
    }
    static const variant v = {1, 1};
    equal_variant(&v, d);
}

/* Ranks given different runs: the one that differs from rank 0 names the value at lsd_trainer_new; rank 0 then
 * finds it absent at the first step's sum. */
TEST(dist_ranks_must_agree_on_the_run)
{
    const char *data = tiny_dataset(), *tmp = temp_dir();
    char err[600], e0[620], e1[620];
    snprintf(err, sizeof err, "%s/err", tmp);
    snprintf(e0, sizeof e0, "%s.0", err);
    snprintf(e1, sizeof e1, "%s.1", err);
    char *c[] = {env_kv("LSDW_DATA", data), env_kv("LSDW_ERR", err), "LSDW_BATCH=1", "LSDW_STEPS=2", NULL, NULL};
    int port = free_port();
    pid_t p0 = spawn_rank(0, 2, port, (const char *const *)c);
    c[4] = "LSDW_SEED=7";
    pid_t p1 = spawn_rank(1, 2, port, (const char *const *)c);
    int rc0 = wait_for(p0, 120), rc1 = wait_for(p1, 60);
    char *m0 = read_file(e0, NULL), *m1 = read_file(e1, NULL);
    CHECK(rc0 == 10 + LSD_ERR_IO && rc1 == 10 + LSD_ERR_INVALID_ARGUMENT, "exits %d %d", rc0, rc1);
    CHECK(m1 && strstr(m1, "lsd_trainer_new: rank 0's weights: rank 1 has seed 7, rank 0 has 42"), "rank 1: %s",
          m1 ? m1 : "");
    CHECK(m0 && strstr(m0, "training step 1: rank 1 (last at step none) never came to the gradient all-reduce"),
          "rank 0: %s", m0 ? m0 : "");
    free(m0);
    free(m1);
    free(c[0]);
    free(c[1]);
}
