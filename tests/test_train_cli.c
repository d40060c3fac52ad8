/* `lora-sd train` as a person runs it ($LSD_CLI): metrics.jsonl, TensorBoard event files (read back by a reader of
 * our own: TFRecord framing, both CRC-32C checks, Event / Summary protos), loss.png, validation grids; SIGINT and
 * SIGTERM stops that save a checkpoint and the LoRA; resumes that say what differs. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

static const char *bin(void)
{
    return getenv("LSD_CLI") ? getenv("LSD_CLI") : "build/lora-sd";
}

/* Four captioned 32x32 images of their own colours. */
static const char *dataset(int n, int shade)
{
    static const char *const caps[] = {"a photo of a cat", "a red car", "two dogs", "a blue house"};
    const char *d = temp_dir();
    for (int i = 0; i < n; i++) {
        uint8_t px[32 * 32 * 3];
        for (int k = 0; k < 32 * 32; k++) {
            px[3 * k] = (uint8_t)(50 * i + 3 * (k % 32) + shade);
            px[3 * k + 1] = (uint8_t)(2 * (k / 32));
            px[3 * k + 2] = (uint8_t)(200 - 40 * i);
        }
        lsd_image img = {sizeof img, 32, 32, 3, px};
        char path[600];
        snprintf(path, sizeof path, "%s/%d.png", d, i);
        CHECK_OK(lsd_image_save_png(path, &img, NULL, NULL, 0));
        snprintf(path, sizeof path, "%s/%d.txt", d, i);
        write_file(path, caps[i % 4], strlen(caps[i % 4]));
    }
    return d;
}

/* Runs `lora-sd train ARGS`, its output in *log (may be NULL); returns the exit status. */
static int train_cli(char **log, const char *args)
{
    char cmd[8192], path[600];
    snprintf(path, sizeof path, "%s/train.log", temp_dir());
    snprintf(cmd, sizeof cmd, "%s train %s >%s 2>&1 </dev/null", bin(), args, path);
    int st = system(cmd);
    if (log)
        *log = read_file(path, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int has(const char *dir, const char *leaf)
{
    char path[1200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, leaf);
    return stat(path, &sb) == 0;
}

/* ---- an independent TensorBoard reader ---- */

/* CRC-32C (Castagnoli, reflected 0x82F63B78), bit by bit: nothing shared with the writer's ISA-L. */
static uint32_t crc32c(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

static uint32_t masked(const uint8_t *p, size_t n)
{
    uint32_t c = crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static int rd_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

typedef struct tb_field {
    unsigned field, wire;
    uint64_t u;              /* varint, fixed64, fixed32 */
    const uint8_t *data;     /* length-delimited */
    size_t len;
} tb_field;

/* The next field of a message; 1 when one was read, 0 at the end, -1 on malformed input. */
static int next_field(const uint8_t **p, const uint8_t *end, tb_field *f)
{
    if (*p >= end)
        return 0;
    uint64_t k;
    if (rd_varint(p, end, &k))
        return -1;
    f->field = (unsigned)(k >> 3);
    f->wire = (unsigned)(k & 7);
    f->data = NULL;
    if (f->wire == 0)
        return rd_varint(p, end, &f->u) ? -1 : 1;
    int n = f->wire == 1 ? 8 : f->wire == 5 ? 4 : 0;
    if (n) {
        if (end - *p < n)
            return -1;
        f->u = rd_le(*p, n);
        *p += n;
        return 1;
    }
    if (f->wire != 2 || rd_varint(p, end, &f->u) || (uint64_t)(end - *p) < f->u)
        return -1;
    f->data = *p;
    f->len = (size_t)f->u;
    *p += f->len;
    return 1;
}

typedef struct tb_scalar {
    long step;
    char tag[64];
    float value;
} tb_scalar;

typedef struct tb_file {
    int records, bad_crc, malformed;
    char first_version[32];
    int session_start_step;
    double first_wall_time;
    tb_scalar s[256];
    int n;
} tb_file;

static void tb_summary(tb_file *t, long step, const uint8_t *p, const uint8_t *end)
{
    tb_field f;
    int r;
    while ((r = next_field(&p, end, &f)) == 1) {
        if (f.field != 1 || f.wire != 2)
            continue;
        const uint8_t *q = f.data, *qe = f.data + f.len;
        tb_field g;
        tb_scalar sc = {step, "", NAN};
        while ((r = next_field(&q, qe, &g)) == 1) {
            if (g.field == 1 && g.wire == 2)
                snprintf(sc.tag, sizeof sc.tag, "%.*s", (int)g.len, (const char *)g.data);
            else if (g.field == 2 && g.wire == 5) {
                uint32_t u = (uint32_t)g.u;
                memcpy(&sc.value, &u, 4);
            }
        }
        if (r < 0)
            t->malformed++;
        if (t->n < 256)
            t->s[t->n++] = sc;
    }
    if (r < 0)
        t->malformed++;
}

static void tb_read(const char *path, tb_file *t)
{
    memset(t, 0, sizeof *t);
    t->session_start_step = -1;
    size_t n = 0;
    uint8_t *buf = (uint8_t *)read_file(path, &n);
    size_t off = 0;
    while (buf && off + 12 <= n) {
        uint64_t len = rd_le(buf + off, 8);
        if (masked(buf + off, 8) != (uint32_t)rd_le(buf + off + 8, 4))
            t->bad_crc++;
        if (off + 16 + len > n) {
            t->malformed++;
            break;
        }
        const uint8_t *d = buf + off + 12, *end = d + len;
        if (masked(d, len) != (uint32_t)rd_le(end, 4))
            t->bad_crc++;
        off += 16 + len;
        t->records++;
        long step = 0;
        double wall = 0;
        const uint8_t *summary = NULL, *summary_end = NULL;
        tb_field f;
        int r;
        while ((r = next_field(&d, end, &f)) == 1) {
            if (f.field == 1 && f.wire == 1)
                memcpy(&wall, &f.u, 8);
            else if (f.field == 2 && f.wire == 0)
                step = (long)f.u;
            else if (f.field == 3 && f.wire == 2 && t->records == 1)
                snprintf(t->first_version, sizeof t->first_version, "%.*s", (int)f.len, (const char *)f.data);
            else if (f.field == 5 && f.wire == 2)
                summary = f.data, summary_end = f.data + f.len;
            else if (f.field == 6 && f.wire == 2) {
                const uint8_t *q = f.data;
                tb_field g;
                if (next_field(&q, f.data + f.len, &g) == 1 && g.field == 1 && g.u == 1)
                    t->session_start_step = (int)step;
            }
        }
        if (r < 0)
            t->malformed++;
        if (t->records == 1)
            t->first_wall_time = wall;
        if (summary)
            tb_summary(t, step, summary, summary_end);
    }
    if (off != n)
        t->malformed++;
    free(buf);
}

static const tb_scalar *tb_find(const tb_file *t, long step, const char *tag)
{
    for (int i = 0; i < t->n; i++)
        if (t->s[i].step == step && !strcmp(t->s[i].tag, tag))
            return &t->s[i];
    return NULL;
}

/* The events.out.tfevents.* files of dir: how many, and the path of the last in name order. */
static int events_files(const char *dir, char *last, size_t n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int count = 0;
    last[0] = '\0';
    while (d && (e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, "events.out.tfevents.", 20)) {
            count++;
            char p[1200];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (strcmp(p, last) > 0)
                snprintf(last, n, "%s", p);
        }
    if (d)
        closedir(d);
    return count;
}

/* ---- the library run the CLI's numbers are compared with ---- */

typedef struct record {
    lsd_train_metrics m[64];
    int n;
} record;

static void keep(const lsd_train_metrics *m, void *user)
{
    record *r = user;
    if (r->n < 64)
        r->m[r->n++] = *m;
}

static const char *const prompts[] = {"a red car", "a blue house"};

#define COMMON                                                                                                     \
    "--pretrained_model_name_or_path %s --train_data_dir %s --output_dir %s --resolution 32 --train_batch_size 2 " \
    "--learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 2 --rank 4 --seed 3 --snr_gamma 5 "             \
    "--checkpointing_steps 3 --max_train_steps 6"

/* What the CLI's flags above mean in lsd_train_params. */
static void library_params(lsd_train_params *p, const char *out)
{
    lsd_train_params_init(p);
    p->resolution = 32;
    p->train_batch_size = 2;
    p->learning_rate = 1e-3;
    p->lr_scheduler = LSD_LR_COSINE;
    p->lr_warmup_steps = 2;
    p->rank = 4;
    p->seed = 3;
    p->validation_seed = 3;
    p->snr_gamma = 5;
    p->checkpointing_steps = 3;
    p->max_train_steps = 6;
    p->output_dir = out;
}

TEST(train_cli_logs_jsonl_tensorboard_plot_grids)
{
    const char *data = dataset(4, 0), *val = dataset(2, 90), *out = temp_dir();
    char args[4096], *log = NULL;
    snprintf(args, sizeof args,
             COMMON " --validation_prompt 'a red car' --validation_prompt 'a blue house' --validation_steps 3 "
                    "--validation_inference_steps 2 --num_validation_images 2 --validation_sampler euler "
                    "--validation_data_dir %s --report_to tensorboard",
             data_path("sd-tiny"), data, out, val);
    CHECK(train_cli(&log, args) == 0, "%s", log ? log : "");
    /* Piped output: one plain line per step. */
    CHECK(log && strstr(log, "step 1/6 loss ") && strstr(log, "step 6/6 loss ") && strstr(log, " it/s "), "%s",
          log ? log : "");
    free(log);

    /* The same training through the API, to know what the CLI's logs must hold. */
    record rec = {0};
    lsd_train_params p;
    library_params(&p, temp_dir());
    p.validation_prompts = prompts;
    p.n_validation_prompts = 2;
    p.validation_steps = 3;
    p.validation_inference_steps = 2;
    p.num_validation_images = 2;
    p.validation_sampler = LSD_SAMPLER_EULER;
    p.metrics = keep;
    p.metrics_user = &rec;
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_dataset *ds = NULL, *vds = NULL;
    lsd_trainer *tr = NULL;
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_dataset_open(data, NULL, &ds)) &&
        CHECK_OK(lsd_dataset_open(val, NULL, &vds)) && CHECK_OK(lsd_adapter_set_new(m, &set))) {
        p.validation_dataset = vds;
        if (CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr)))
            for (int k = 0; k < 6; k++)
                CHECK_OK(lsd_trainer_step(tr, NULL));
    }
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
    lsd_dataset_free(vds);
    CHECK(rec.n == 8, "6 steps and 2 validations reported, got %d", rec.n);

    /* metrics.jsonl: a JSON object a line, the API's numbers exactly. */
    char path[1200];
    snprintf(path, sizeof path, "%s/logs/metrics.jsonl", out);
    char *text = read_file(path, NULL);
    int lines = 0;
    for (char *save = NULL, *line = text ? strtok_r(text, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save), lines++) {
        cJSON *j = cJSON_Parse(line);
        CHECK(j != NULL, "line %d parses: %s", lines + 1, line);
        if (!j || lines >= rec.n)
            continue;
        const lsd_train_metrics *r = &rec.m[lines];
        const cJSON *step = cJSON_GetObjectItem(j, "step"), *loss = cJSON_GetObjectItem(j, "loss");
        const cJSON *vl = cJSON_GetObjectItem(j, "val_loss"), *lr = cJSON_GetObjectItem(j, "lr");
        const cJSON *gn = cJSON_GetObjectItem(j, "grad_norm"), *smp = cJSON_GetObjectItem(j, "sample");
        CHECK(cJSON_IsNumber(step) && step->valueint == r->step, "line %d step", lines + 1);
        if (isfinite(r->loss)) {
            CHECK(cJSON_IsNumber(loss) && loss->valuedouble == r->loss, "line %d loss %.17g vs %.17g", lines + 1,
                  loss ? loss->valuedouble : NAN, r->loss);
            CHECK(cJSON_IsNumber(lr) && lr->valuedouble == r->lr_unet && cJSON_IsNumber(gn) &&
                  gn->valuedouble == r->grad_norm && !vl);
        } else {
            CHECK(!loss && cJSON_IsNumber(vl) && vl->valuedouble == r->val_loss, "line %d val_loss %.17g vs %.17g",
                  lines + 1, vl ? vl->valuedouble : NAN, r->val_loss);
            char want[1300];
            snprintf(want, sizeof want, "%s/samples/step-%06d.png", out, r->step);
            CHECK(cJSON_IsString(smp) && !strcmp(smp->valuestring, want), "sample %s",
                  cJSON_IsString(smp) ? smp->valuestring : "(none)");
        }
        cJSON_Delete(j);
    }
    free(text);
    CHECK(lines == 8, "metrics.jsonl has %d lines", lines);

    /* TensorBoard: one event file whose records all check, holding the same numbers as float32. */
    char logs[1200], ev[1300];
    snprintf(logs, sizeof logs, "%s/logs", out);
    CHECK(events_files(logs, ev, sizeof ev) == 1, "one event file in %s", logs);
    tb_file *t = calloc(1, sizeof *t);
    tb_read(ev, t);
    CHECK(t->records == 1 + 8 && t->bad_crc == 0 && t->malformed == 0, "%d records, %d bad CRCs, %d malformed",
          t->records, t->bad_crc, t->malformed);
    CHECK(!strcmp(t->first_version, "brain.Event:2") && t->first_wall_time > 1.6e9 && t->session_start_step == -1,
          "first event: file_version \"%s\", wall_time %f", t->first_version, t->first_wall_time);
    for (int i = 0; i < rec.n; i++) {
        const lsd_train_metrics *r = &rec.m[i];
        const tb_scalar *s = tb_find(t, r->step, isfinite(r->loss) ? "train/loss" : "val/loss");
        CHECK(s && s->value == (float)(isfinite(r->loss) ? r->loss : r->val_loss), "step %d %s", r->step,
              isfinite(r->loss) ? "train/loss" : "val/loss");
        if (isfinite(r->loss)) {
            s = tb_find(t, r->step, "train/lr");
            CHECK(s && s->value == (float)r->lr_unet, "step %d train/lr", r->step);
            s = tb_find(t, r->step, "train/grad_norm");
            CHECK(s && s->value == (float)r->grad_norm, "step %d train/grad_norm", r->step);
        }
    }
    free(t);

    /* loss.png and the grids decode, at their sizes. */
    lsd_image img = {0};
    snprintf(path, sizeof path, "%s/loss.png", out);
    if (CHECK_OK(lsd_image_load(path, &img)))
        CHECK(img.width == 900 && img.height == 540, "loss.png %dx%d", img.width, img.height);
    lsd_image_release(&img);
    for (int s = 3; s <= 6; s += 3) {
        snprintf(path, sizeof path, "%s/samples/step-%06d.png", out, s);
        if (CHECK_OK(lsd_image_load(path, &img)))
            CHECK(img.width == 2 * 32 && img.height == 2 * 32, "%s: %dx%d", path, img.width, img.height);
        lsd_image_release(&img);
    }
    CHECK(has(out, "pytorch_lora_weights.safetensors") && has(out, "checkpoint-3") && has(out, "checkpoint-6"));
}

/* ---- stops ---- */

/* Starts `lora-sd train ARGS` with stdout on a pipe (stderr to err_path); the pipe's read end in *fd. */
static pid_t spawn(const char *args, const char *err_path, int *fd)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], STDOUT_FILENO);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(e, STDERR_FILENO);
        close(p[0]);
        close(p[1]);
        char cmd[8192];
        snprintf(cmd, sizeof cmd, "exec %s train %s </dev/null", bin(), args);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *fd = p[0];
    return pid;
}

/* Reads the child's stdout until a line starts with `prefix` (1) or the pipe ends (0). */
static int wait_line(int fd, const char *prefix)
{
    char buf[8192];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r <= 0)
            return 0;
        n += (size_t)r;
        buf[n] = '\0';
        for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
            if (!strncmp(line, prefix, strlen(prefix)) && strchr(line, '\n'))
                return 1;
        if (n > sizeof buf / 2) { /* keep the tail: a line may be cut */
            memmove(buf, buf + n - 256, 256);
            n = 256;
        }
    }
}

static void drain(int fd)
{
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
}

/* The step of the newest checkpoint-<n> in dir, -1 if none. */
static int newest_checkpoint(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int best = -1;
    while (d && (e = readdir(d)) != NULL) {
        char *end = NULL;
        if (strncmp(e->d_name, "checkpoint-", 11))
            continue;
        long k = strtol(e->d_name + 11, &end, 10);
        if (!*end && k > best)
            best = (int)k;
    }
    if (d)
        closedir(d);
    return best;
}

/* checkpoint-<step> resumes into a trainer of the same settings, and the LoRA file loads. */
static void check_saved(const char *data, const char *out, int step)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_dataset *ds = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    library_params(&p, NULL);
    p.max_train_steps = 1000;
    char ck[1200], lora[1200];
    snprintf(ck, sizeof ck, "%s/checkpoint-%d", out, step);
    snprintf(lora, sizeof lora, "%s/pytorch_lora_weights.safetensors", out);
    lsd_load_report rep = {.struct_size = sizeof rep};
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_dataset_open(data, NULL, &ds)) &&
        CHECK_OK(lsd_adapter_set_new(m, &set)) && CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr))) {
        if (CHECK_OK(lsd_trainer_resume(tr, ck)))
            CHECK(lsd_trainer_get_step(tr) == step);
        CHECK_OK(lsd_adapter_set_load(set, "saved", lora, NULL, &rep));
        CHECK(rep.applied_modules == 88 && rep.unmatched_keys == 0);
    }
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
}

static void stop_with(int sig, int want_status)
{
    const char *data = dataset(4, 0), *out = temp_dir();
    char args[4096], err[1200];
    /* No scheduled checkpoint in reach: the one found after the stop is the stop's. */
    snprintf(args, sizeof args,
             "--pretrained_model_name_or_path %s --train_data_dir %s --output_dir %s --resolution 32 "
             "--train_batch_size 2 --learning_rate 1e-3 --rank 4 --seed 3 --snr_gamma 5 --checkpointing_steps 500 "
             "--max_train_steps 1000 --report_to none",
             data_path("sd-tiny"), data, out);
    snprintf(err, sizeof err, "%s/stderr.log", temp_dir());
    int fd = -1, status = -1;
    pid_t pid = spawn(args, err, &fd);
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    int seen = wait_line(fd, "step 1/1000");
    CHECK(seen, "the first step's line");
    kill(pid, sig);
    drain(fd);
    waitpid(pid, &status, 0);
    char *e = read_file(err, NULL);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == want_status, "exit %d (want %d): %s",
          WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status), want_status, e ? e : "");
    CHECK(e && strstr(e, sig == SIGINT ? "stopped by SIGINT at step" : "stopped by SIGTERM at step"), "%s",
          e ? e : "");
    free(e);
    int step = newest_checkpoint(out);
    CHECK(step >= 1 && step < 500, "checkpoint-%d saved at the stop", step);
    if (step >= 1)
        check_saved(data, out, step);
    /* The run continues from there; the metrics history has each step once. */
    if (sig == SIGINT && step >= 1) {
        char more[4400];
        snprintf(more, sizeof more, "%s --resume_from_checkpoint latest --max_train_steps %d", args, step + 2);
        char *o = NULL;
        CHECK(train_cli(&o, more) == 0, "%s", o ? o : "");
        free(o);
        char path[1200];
        snprintf(path, sizeof path, "%s/logs/metrics.jsonl", out);
        char *text = read_file(path, NULL);
        int n = 0;
        for (char *save = NULL, *line = text ? strtok_r(text, "\n", &save) : NULL; line;
             line = strtok_r(NULL, "\n", &save)) {
            cJSON *j = cJSON_Parse(line);
            const cJSON *s = cJSON_GetObjectItem(j, "step");
            CHECK(cJSON_IsNumber(s) && s->valueint == n + 1, "line %d is step %d", n + 1, s ? s->valueint : -1);
            n++;
            cJSON_Delete(j);
        }
        CHECK(n == step + 2, "%d lines for %d steps", n, step + 2);
        free(text);
    }
}

TEST(train_cli_sigint_saves_and_exits_130) { stop_with(SIGINT, 130); }

TEST(train_cli_sigterm_saves_and_exits_143) { stop_with(SIGTERM, 143); }

/* Two signals: out at once. Whatever is left is whole or named as a temp file. */
TEST(train_cli_second_signal_exits_at_once)
{
    const char *data = dataset(4, 0), *out = temp_dir();
    char args[4096], err[1200];
    /* Steps long enough (64 px) that the second signal comes while the step under way is still computing. */
    snprintf(args, sizeof args,
             "--pretrained_model_name_or_path %s --train_data_dir %s --output_dir %s --resolution 64 "
             "--train_batch_size 2 --seed 3 --checkpointing_steps 1 --max_train_steps 1000",
             data_path("sd-tiny"), data, out);
    snprintf(err, sizeof err, "%s/stderr.log", temp_dir());
    int fd = -1, status = -1;
    pid_t pid = spawn(args, err, &fd);
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    /* A step's line comes at its end, so the next step has just begun when the first signal lands. */
    CHECK(wait_line(fd, "step 2/1000"));
    kill(pid, SIGINT);
    /* The second only once the first was handled (two deliveries, not one merged pending signal). */
    for (int i = 0; i < 5000; i++) {
        char *e = read_file(err, NULL);
        int handled = e && strstr(e, "stopping after this step");
        free(e);
        if (handled)
            break;
        usleep(2000);
    }
    kill(pid, SIGINT);
    drain(fd);
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 130, "exit %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    char *msg = read_file(err, NULL);
    CHECK(msg && strstr(msg, "second signal: exiting now"), "%s", msg ? msg : "");
    free(msg);
    DIR *d = opendir(out);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (n[0] == '.' || !strcmp(n, "logs"))
            continue;
        if (strstr(n, ".tmp")) /* checkpoint-7.tmp-<pid>/ or X.tmp.XXXXXX: never a result's name */
            continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s/training_state.safetensors", out, n);
        if (!strncmp(n, "checkpoint-", 11)) {
            lsd_safetensors *f = NULL;
            CHECK_OK(lsd_safetensors_open(path, &f));
            lsd_safetensors_close(f);
        } else {
            CHECK(!strcmp(n, "pytorch_lora_weights.safetensors") || !strcmp(n, "loss.png"), "unexpected %s", n);
        }
    }
    if (d)
        closedir(d);
}

TEST(train_cli_resume_says_what_differs)
{
    const char *data = dataset(4, 0), *out = temp_dir();
    char args[4096], more[4400], *log = NULL;
    snprintf(args, sizeof args,
             "--pretrained_model_name_or_path %s --train_data_dir %s --output_dir %s --resolution 32 "
             "--train_batch_size 2 --checkpointing_steps 2 --report_to none --resume_from_checkpoint latest",
             data_path("sd-tiny"), data, out);
    snprintf(more, sizeof more, "%s --rank 4 --seed 3 --max_train_steps 2", args);
    CHECK(train_cli(&log, more) == 0, "%s", log ? log : "");
    free(log);
    static const struct {
        const char *flags, *msg;
    } cases[] = {
        {"--rank 8 --seed 3 --max_train_steps 4", "checkpoint-2 was trained with rank 4, this run asks for rank 8"},
        {"--rank 4 --seed 9 --max_train_steps 4", "checkpoint-2 was trained with seed 3, this run asks for seed 9"},
        {"--rank 4 --seed 3 --max_train_steps 1", "checkpoint-2 is at step 2, past max_train_steps 1 of this run"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(more, sizeof more, "%s %s", args, cases[i].flags);
        CHECK(train_cli(&log, more) == 1 && log && strstr(log, cases[i].msg), "%s: %s", cases[i].flags,
              log ? log : "");
        free(log);
    }
}
