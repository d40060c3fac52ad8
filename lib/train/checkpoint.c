/* Training checkpoints: a directory holding the LoRA in kohya format (for users) and the exact training state
 * (LoRA tensors, the optimizer's state, the EMA weights, trainer step, data position and seed), written to a temp
 * directory and renamed into place, so a checkpoint appears whole or not at all. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/file.h"
#include "io/safetensors.h"
#include "lora/lora.h"
#include "train/train.h"

#define LORA_FILE "pytorch_lora_weights.safetensors"
#define STATE_FILE "training_state.safetensors"
#define STATE_FORMAT "lora_sd.training_state.v2"

/* Removes a directory of plain files (what a checkpoint holds). */
static lsd_status remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? LSD_OK : lsdi_error(LSD_ERR_IO, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    lsd_status st = LSD_OK;
    while ((e = readdir(d)) != NULL && st == LSD_OK) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *p = lsdi_path_join(dir, e->d_name);
        if (!p || unlink(p) != 0)
            st = lsdi_error(LSD_ERR_IO, "removing %s/%s: %s", dir, e->d_name, p ? strerror(errno) : "out of memory");
        free(p);
    }
    closedir(d);
    if (st == LSD_OK && rmdir(dir) != 0)
        st = lsdi_error(LSD_ERR_IO, "removing %s: %s", dir, strerror(errno));
    return st;
}

/* The tensors of a training state: the LoRA tensors ("param.<i>"), the optimizer's state ("optim.<name>"), the EMA
 * weights ("ema.<i>"), each passed to f (which reads it when saving, writes it when resuming). */
typedef lsd_status (*state_fn)(void *ctx, const char *name, lsdt_tensor *t);

static lsd_status each_state(lsd_trainer *tr, state_fn f, void *ctx)
{
    char name[64];
    for (int i = 0; i < tr->n_params; i++) {
        snprintf(name, sizeof name, "param.%d", i);
        LSDI_TRY(f(ctx, name, tr->params[i]));
    }
    for (int k = 0; k < lsdi_optim_state_count(tr->opt); k++) {
        snprintf(name, sizeof name, "optim.%s", lsdi_optim_state_name(tr->opt, k));
        LSDI_TRY(f(ctx, name, lsdi_optim_state_get(tr->opt, k)));
    }
    for (int i = 0; tr->ema && i < tr->n_params; i++) {
        snprintf(name, sizeof name, "ema.%d", i);
        LSDI_TRY(f(ctx, name, lsdi_ema_shadow(tr->ema, i)));
    }
    return LSD_OK;
}

static lsdi_st_dtype st_dtype(const lsdt_tensor *t)
{
    return lsdt_get_dtype(t) == LSDT_F64 ? LSDI_ST_F64 : LSDI_ST_F32;
}

typedef struct host_state {
    size_t n, cap;
    lsdi_st_entry *e;
    char (*names)[64];
    int64_t (*shapes)[LSDT_MAX_DIMS];
    void **data;
} host_state;

static void host_state_free(host_state *h)
{
    for (size_t k = 0; h->data && k < h->n; k++)
        free(h->data[k]);
    free(h->e);
    free(h->names);
    free(h->shapes);
    free(h->data);
}

static lsd_status count_entry(void *ctx, const char *name, lsdt_tensor *t)
{
    (void)name;
    (void)t;
    ((host_state *)ctx)->cap++;
    return LSD_OK;
}

/* A host copy of t as the next entry. */
static lsd_status add_entry(void *ctx, const char *name, lsdt_tensor *t)
{
    host_state *h = ctx;
    size_t k = h->n, numel = (size_t)lsdt_numel(t);
    int nd = lsdt_ndim(t);
    lsdt_dtype dt = lsdt_get_dtype(t);
    if (k == h->cap || nd < 1 || nd > LSDT_MAX_DIMS || (dt != LSDT_F32 && dt != LSDT_F64))
        return lsdi_error(LSD_ERR_INTERNAL, "checkpoint: %s has %d dims or an unexpected dtype", name, nd);
    snprintf(h->names[k], sizeof h->names[k], "%s", name);
    for (int d = 0; d < nd; d++)
        h->shapes[k][d] = lsdt_size(t, d);
    if (!(h->data[k] = malloc(numel * lsdt_dtype_size(dt) + 1)))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "checkpoint: %s", name);
    h->n++;
    int rc = lsdt_to_host(t, h->data[k], dt, numel);
    if (rc)
        return lsdi_error_prefix(lsdi_error_from_shim(rc), "checkpoint: %s", name);
    h->e[k] = (lsdi_st_entry){h->names[k], st_dtype(t), nd, h->shapes[k], h->data[k]};
    return LSD_OK;
}

static int adapter_rank(const lsd_trainer *tr)
{
    const lsdi_adapter *ad = lsdi_adapter_find(tr->set, tr->adapter);
    return ad ? ad->rank : 0;
}

static lsd_status write_state(lsd_trainer *tr, const char *path)
{
    host_state h = {0};
    each_state(tr, count_entry, &h);
    h.e = calloc(h.cap + 1, sizeof *h.e);
    h.names = calloc(h.cap + 1, sizeof *h.names);
    h.shapes = calloc(h.cap + 1, sizeof *h.shapes);
    h.data = calloc(h.cap + 1, sizeof *h.data);
    lsd_status st = h.e && h.names && h.shapes && h.data
                        ? each_state(tr, add_entry, &h)
                        : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "checkpoint of %zu tensors", h.cap);
    char step[32], micro[32], seed[32], count[32], rank[32], split[32], ema_step[32];
    snprintf(step, sizeof step, "%d", tr->step);
    snprintf(micro, sizeof micro, "%" PRIu64, tr->micro);
    snprintf(seed, sizeof seed, "%" PRIu64, tr->p.seed);
    snprintf(count, sizeof count, "%d", tr->n_params);
    snprintf(rank, sizeof rank, "%d", adapter_rank(tr));
    snprintf(split, sizeof split, "%.9g", (double)tr->p.validation_split);
    snprintf(ema_step, sizeof ema_step, "%" PRId64, tr->ema ? lsdi_ema_get_step(tr->ema) : (int64_t)0);
    /* rank, validation_split and optimizer let a resume say what differs instead of failing on a shape. */
    const char *keys[] = {"format",  "step",     "data_position", "seed",     "n_params",
                          "adapter", "rank",     "validation_split", "optimizer", "ema_step"};
    const char *vals[] = {STATE_FORMAT, step, micro, seed, count, tr->adapter, rank, split, lsdi_optim_name(tr->opt),
                          ema_step};
    size_t n_meta = sizeof keys / sizeof keys[0] - (tr->ema ? 0 : 1); /* ema_step last: only with an EMA */
    if (st == LSD_OK)
        st = lsdi_st_write(path, h.e, h.n, keys, vals, n_meta);
    host_state_free(&h);
    return st;
}

static lsd_status trainer_save_checkpoint(lsd_trainer *tr, const char *dir)
{
    if (!tr || !dir || !*dir)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_save_checkpoint: %s is NULL",
                          !tr ? "trainer" : "dir");
    LSDI_TRY(lsdi_trainer_check_live(tr, "lsd_trainer_save_checkpoint"));
    size_t len = strlen(dir) + 48;
    char *tmp = malloc(len), *old = malloc(len), *lora = NULL, *state = NULL;
    if (!tmp || !old) {
        free(tmp);
        free(old);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "checkpoint %s", dir);
    }
    snprintf(tmp, len, "%s.tmp-%ld", dir, (long)getpid());
    snprintf(old, len, "%s.old-%ld", dir, (long)getpid());
    lsd_status st = remove_dir(tmp); /* left by a crash of this same process id */
    if (st == LSD_OK && mkdir(tmp, 0777) != 0)
        st = lsdi_error(LSD_ERR_IO, "checkpoint %s: cannot create %s: %s", dir, tmp, strerror(errno));
    if (st == LSD_OK && (!(lora = lsdi_path_join(tmp, LORA_FILE)) || !(state = lsdi_path_join(tmp, STATE_FILE))))
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "checkpoint %s", dir);
    if (st == LSD_OK)
        st = lsd_trainer_save_lora(tr, lora, LSD_LORA_FORMAT_KOHYA);
    if (st == LSD_OK)
        st = write_state(tr, state);
    struct stat sb;
    int had_old = st == LSD_OK && stat(dir, &sb) == 0;
    if (had_old && rename(dir, old) != 0)
        st = lsdi_error(LSD_ERR_IO, "checkpoint %s: cannot move the old one aside: %s", dir, strerror(errno));
    if (st == LSD_OK && rename(tmp, dir) != 0) {
        st = lsdi_error(LSD_ERR_IO, "checkpoint %s: rename from %s: %s", dir, tmp, strerror(errno));
        if (had_old)
            (void)rename(old, dir);
    }
    if (st == LSD_OK && had_old && remove_dir(old) != LSD_OK)
        lsdi_log(LSD_LOG_WARN, "checkpoint %s: could not remove the replaced copy %s", dir, old);
    if (st != LSD_OK) {
        lsd_status keep = st;
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", lsd_last_error());
        (void)remove_dir(tmp);
        st = lsdi_error(keep, "%s", msg);
    }
    free(lora);
    free(state);
    free(tmp);
    free(old);
    return st;
}

lsd_status lsd_trainer_save_checkpoint(lsd_trainer *tr, const char *dir)
{
    return lsdi_trainer_record(tr, trainer_save_checkpoint(tr, dir));
}

static lsd_status meta_u64(const lsdi_st_file *f, const char *path, const char *key, uint64_t *out)
{
    const char *v = lsdi_st_metadata_get(f, key);
    char *end = NULL;
    errno = 0;
    unsigned long long x = v ? strtoull(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || v[0] == '-')
        return lsdi_error(LSD_ERR_FORMAT, "%s: metadata \"%s\" is missing or not a number", path, key);
    *out = x;
    return LSD_OK;
}

/* Resuming: every stored tensor is looked up and checked first (check_entry), then copied in (load_entry). */
typedef struct resume_ctx {
    const lsdi_st_file *f;
    const char *path;
} resume_ctx;

static lsd_status check_entry(void *ctx, const char *name, lsdt_tensor *like)
{
    const resume_ctx *c = ctx;
    const lsdi_st_tensor *t = lsdi_st_find(c->f, name);
    if (!t)
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor \"%s\" is missing", c->path, name);
    int ok = t->dtype == st_dtype(like) && t->ndim == lsdt_ndim(like);
    for (int d = 0; ok && d < t->ndim; d++)
        ok = t->shape[d] == lsdt_size(like, d);
    if (!ok)
        return lsdi_error(LSD_ERR_SHAPE_MISMATCH, "%s: tensor \"%s\" does not match this trainer's (%s of %d dims "
                          "expected)", c->path, name, st_dtype(like) == LSDI_ST_F64 ? "F64" : "F32", lsdt_ndim(like));
    return LSD_OK;
}

/* The last component of a checkpoint's path ("checkpoint-400"), for messages. */
static void dir_name(const char *dir, char *buf, size_t n)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    snprintf(buf, n, "%.*s", (int)(len - start), dir + start);
}

/* What a resume cannot honour is said by name, before anything changes: the run asked for something else than
 * the checkpoint holds (continuing would fail on a shape, or silently train another run). */
static lsd_status same_run(const lsd_trainer *tr, const lsdi_st_file *f, const char *dir, uint64_t step,
                           uint64_t seed)
{
    char name[256];
    dir_name(dir, name, sizeof name);
    const char *rank = lsdi_st_metadata_get(f, "rank"), *split = lsdi_st_metadata_get(f, "validation_split");
    int r = adapter_rank(tr);
    if (rank && r > 0 && atoi(rank) != r)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s was trained with rank %s, this run asks for rank %d", name,
                          rank, r);
    if (seed != tr->p.seed)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s was trained with seed %" PRIu64 ", this run asks for seed %"
                          PRIu64 " (the seed decides every draw: give the checkpoint's)", name, seed, tr->p.seed);
    if (split && strtod(split, NULL) != (double)tr->p.validation_split)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s was trained with validation_split %s, this run asks for "
                          "validation_split %g (it decides which items train)", name, split,
                          (double)tr->p.validation_split);
    const char *opt = lsdi_st_metadata_get(f, "optimizer");
    if (!opt || strcmp(opt, lsdi_optim_name(tr->opt)))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s was trained with optimizer %s, this run asks for %s", name,
                          opt ? opt : "(none)", lsdi_optim_name(tr->opt));
    if (tr->ema && !lsdi_st_metadata_get(f, "ema_step"))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s was trained without use_ema (it holds no EMA weights), this "
                          "run asks for use_ema", name);
    if (step > (uint64_t)tr->p.max_train_steps)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s is at step %" PRIu64 ", past max_train_steps %d of this run",
                          name, step, tr->p.max_train_steps);
    return LSD_OK;
}

static lsd_status load_entry(void *ctx, const char *name, lsdt_tensor *dst)
{
    const resume_ctx *c = ctx;
    const lsdi_st_tensor *t = lsdi_st_find(c->f, name);
    lsdt_dtype dt = lsdt_get_dtype(dst);
    lsdt_tensor *src = lsdt_from_host(NULL, t->data, dt, t->shape, t->ndim, dt, NULL);
    int rc = src ? lsdt_copy_(dst, src) : lsdt_last_status();
    lsdt_free(src);
    return rc ? lsdi_error_prefix(lsdi_error_from_shim(rc), "resume %s: %s", c->path, name) : LSD_OK;
}

static lsd_status trainer_resume(lsd_trainer *tr, const char *dir)
{
    if (!tr || !dir)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_resume: %s is NULL", !tr ? "trainer" : "dir");
    LSDI_TRY(lsdi_trainer_check_live(tr, "lsd_trainer_resume"));
    char *path = lsdi_path_join(dir, STATE_FILE);
    if (!path)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "resume %s", dir);
    lsdi_st_file *f = NULL;
    lsd_status st = lsdi_st_open(path, &f);
    uint64_t step = 0, micro = 0, seed = 0, n = 0, ema_step = 0;
    const char *fmt = f ? lsdi_st_metadata_get(f, "format") : NULL;
    if (st == LSD_OK && (!fmt || strcmp(fmt, STATE_FORMAT)))
        st = lsdi_error(LSD_ERR_FORMAT, "%s: not a lora_sd training state (format \"%s\", expected \"%s\")", path,
                        fmt ? fmt : "", STATE_FORMAT);
    if (st == LSD_OK)
        st = meta_u64(f, path, "step", &step);
    if (st == LSD_OK)
        st = meta_u64(f, path, "data_position", &micro);
    if (st == LSD_OK)
        st = meta_u64(f, path, "seed", &seed);
    if (st == LSD_OK)
        st = meta_u64(f, path, "n_params", &n);
    if (st == LSD_OK)
        st = same_run(tr, f, dir, step, seed);
    if (st == LSD_OK && (n != (uint64_t)tr->n_params || step > 1000000000))
        st = lsdi_error(LSD_ERR_SHAPE_MISMATCH, "%s: %" PRIu64 " parameters at step %" PRIu64
                        ", the adapter \"%s\" has %d", path, n, step, tr->adapter, tr->n_params);
    if (st == LSD_OK && tr->ema)
        st = meta_u64(f, path, "ema_step", &ema_step);
    resume_ctx c = {f, path};
    if (st == LSD_OK) /* check everything before changing anything */
        st = each_state(tr, check_entry, &c);
    if (st == LSD_OK)
        st = each_state(tr, load_entry, &c);
    lsdi_st_close(f);
    free(path);
    if (st != LSD_OK)
        return st;
    if (tr->ema)
        lsdi_ema_set_step(tr->ema, (int64_t)ema_step);
    tr->step = (int)step;
    tr->micro = micro;
    return LSD_OK; /* in a group every rank resumes; the first step's sum checks they are at the same step */
}

lsd_status lsd_trainer_resume(lsd_trainer *tr, const char *dir)
{
    return lsdi_trainer_record(tr, trainer_resume(tr, dir));
}

/* checkpoint-<digits> exactly (not "checkpoint-+5", "checkpoint-5.tmp-123" or "checkpoint-foo"). */
static int checkpoint_number(const char *name, long *n)
{
    if (strncmp(name, "checkpoint-", 11) || !name[11] || strlen(name + 11) > 9)
        return 0;
    long v = 0;
    for (const char *c = name + 11; *c; c++) {
        if (*c < '0' || *c > '9')
            return 0;
        v = v * 10 + (*c - '0');
    }
    *n = v;
    return 1;
}

static int by_number(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* The checkpoint numbers in dir, ascending; malloc'd. */
static lsd_status list(const char *dir, long **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "output_dir %s: %s", dir, strerror(errno));
    long *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    lsd_status st = LSD_OK;
    while ((e = readdir(d)) != NULL) {
        long k;
        struct stat sb;
        if (!checkpoint_number(e->d_name, &k) || fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISDIR(sb.st_mode))
            continue;
        if (n == cap) {
            long *nv = cap > 1000000 ? NULL : realloc(v, (cap = cap * 2 + 16) * sizeof *v);
            if (!nv) {
                st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "listing %s", dir);
                break;
            }
            v = nv;
        }
        v[n++] = k;
    }
    closedir(d);
    if (st != LSD_OK) {
        free(v);
        return st;
    }
    if (n)
        qsort(v, n, sizeof *v, by_number);
    *out = v;
    *count = n;
    return LSD_OK;
}

lsd_status lsdi_checkpoint_prune(const char *output_dir, int limit, int step)
{
    long *v;
    size_t n;
    lsd_status st = list(output_dir, &v, &n);
    if (st == LSD_ERR_NOT_FOUND)
        return LSD_OK; /* nothing saved yet */
    if (st != LSD_OK)
        return st;
    size_t others = 0; /* checkpoint-<step> itself is replaced, not pruned */
    for (size_t i = 0; i < n; i++)
        if (v[i] != step)
            v[others++] = v[i];
    for (size_t i = 0; limit > 0 && i + (size_t)limit <= others && st == LSD_OK; i++) {
        char name[48];
        snprintf(name, sizeof name, "checkpoint-%ld", v[i]);
        char *p = lsdi_path_join(output_dir, name);
        st = p ? remove_dir(p) : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "pruning %s", output_dir);
        if (st == LSD_OK)
            lsdi_log(LSD_LOG_INFO, "removed %s (checkpoints_total_limit %d)", p, limit);
        free(p);
    }
    free(v);
    return st;
}
