/* Training checkpoints: a directory holding the LoRA in kohya format (for users) and the exact training state
 * (LoRA tensors, AdamW moments and step counts, trainer step, data position and seed), written to a temp
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
#define STATE_FORMAT "lora_sd.training_state.v1"

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

typedef struct host_state {
    float *data;
    lsdi_st_entry *e;
    char (*names)[32];
    int64_t (*shapes)[4];
    int64_t *adam_steps;
    size_t n;
} host_state;

static void host_state_free(host_state *h)
{
    free(h->data);
    free(h->e);
    free(h->names);
    free(h->shapes);
    free(h->adam_steps);
}

/* Tensor t as entry k named prefix.i, its floats at *off in h->data. */
static lsd_status add_entry(host_state *h, size_t *off, const char *prefix, int i, const lsdt_tensor *t,
                            const lsdt_tensor *like)
{
    size_t k = h->n++, numel = (size_t)lsdt_numel(like);
    snprintf(h->names[k], sizeof h->names[k], "%s.%d", prefix, i);
    int nd = lsdt_ndim(like);
    if (nd < 1 || nd > 4)
        return lsdi_error(LSD_ERR_INTERNAL, "checkpoint: parameter %d has %d dims", i, nd);
    for (int d = 0; d < nd; d++)
        h->shapes[k][d] = lsdt_size(like, d);
    int rc = lsdt_to_host(t, h->data + *off, LSDT_F32, numel);
    if (rc)
        return lsdi_error_prefix(lsdi_error_from_shim(rc), "checkpoint: %s", h->names[k]);
    h->e[k] = (lsdi_st_entry){h->names[k], LSDI_ST_F32, nd, h->shapes[k], h->data + *off};
    *off += numel;
    return LSD_OK;
}

static int adapter_rank(const lsd_trainer *tr)
{
    const lsdi_adapter *ad = lsdi_adapter_find(tr->set, tr->adapter);
    return ad ? ad->rank : 0;
}

static lsd_status write_state(lsd_trainer *tr, const char *path)
{
    int n = tr->n_params;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (size_t)lsdt_numel(tr->params[i]);
    host_state h = {0};
    h.data = malloc((3 * total + 1) * sizeof *h.data);
    h.e = calloc((size_t)3 * n + 1, sizeof *h.e);
    h.names = calloc((size_t)3 * n + 1, sizeof *h.names);
    h.shapes = calloc((size_t)3 * n + 1, sizeof *h.shapes);
    h.adam_steps = calloc((size_t)n + 1, sizeof *h.adam_steps);
    lsd_status st = h.data && h.e && h.names && h.shapes && h.adam_steps
                        ? LSD_OK
                        : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "checkpoint of %zu numbers", total);
    size_t off = 0;
    for (int i = 0; i < n && st == LSD_OK; i++) {
        lsdt_tensor *m = NULL, *v = NULL;
        int rc = lsdt_adamw_state(tr->opt, i, &h.adam_steps[i], &m, &v);
        if (rc)
            st = lsdi_error_from_shim(rc);
        if (st == LSD_OK)
            st = add_entry(&h, &off, "param", i, tr->params[i], tr->params[i]);
        if (st == LSD_OK && m && v)
            st = add_entry(&h, &off, "exp_avg", i, m, tr->params[i]);
        if (st == LSD_OK && m && v)
            st = add_entry(&h, &off, "exp_avg_sq", i, v, tr->params[i]);
        lsdt_free(m);
        lsdt_free(v);
    }
    int64_t ns[1] = {n};
    char step[32], micro[32], seed[32], count[32], rank[32], split[32];
    snprintf(step, sizeof step, "%d", tr->step);
    snprintf(micro, sizeof micro, "%" PRIu64, tr->micro);
    snprintf(seed, sizeof seed, "%" PRIu64, tr->p.seed);
    snprintf(count, sizeof count, "%d", n);
    snprintf(rank, sizeof rank, "%d", adapter_rank(tr));
    snprintf(split, sizeof split, "%.9g", (double)tr->p.validation_split);
    /* rank and validation_split let a resume say what differs instead of failing on a shape. */
    const char *keys[] = {"format", "step", "data_position", "seed", "n_params", "adapter", "rank", "validation_split"};
    const char *vals[] = {STATE_FORMAT, step, micro, seed, count, tr->adapter, rank, split};
    if (st == LSD_OK) {
        h.e[h.n++] = (lsdi_st_entry){"adam_steps", LSDI_ST_I64, 1, ns, h.adam_steps};
        st = lsdi_st_write(path, h.e, h.n, keys, vals, sizeof keys / sizeof keys[0]);
    }
    host_state_free(&h);
    return st;
}

lsd_status lsd_trainer_save_checkpoint(lsd_trainer *tr, const char *dir)
{
    if (!tr || !dir || !*dir)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_save_checkpoint: %s is NULL",
                          !tr ? "trainer" : "dir");
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
        st = lsd_adapter_set_save(tr->set, tr->adapter, lora, LSD_LORA_FORMAT_KOHYA);
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

/* The stored tensor prefix.i, checked against parameter i's shape; NULL with LSD_OK when absent and optional. */
static lsd_status find_like(const lsdi_st_file *f, const char *path, const char *prefix, int i, const lsdt_tensor *p,
                            int optional, const lsdi_st_tensor **out)
{
    char name[32];
    snprintf(name, sizeof name, "%s.%d", prefix, i);
    const lsdi_st_tensor *t = lsdi_st_find(f, name);
    *out = t;
    if (!t)
        return optional ? LSD_OK : lsdi_error(LSD_ERR_FORMAT, "%s: tensor \"%s\" is missing", path, name);
    int ok = t->dtype == LSDI_ST_F32 && t->ndim == lsdt_ndim(p);
    for (int d = 0; ok && d < t->ndim; d++)
        ok = t->shape[d] == lsdt_size(p, d);
    if (!ok)
        return lsdi_error(LSD_ERR_SHAPE_MISMATCH, "%s: tensor \"%s\" does not match the adapter's parameter %d "
                          "(F32 of %d dims expected)", path, name, i, lsdt_ndim(p));
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
    if (step > (uint64_t)tr->p.max_train_steps)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s is at step %" PRIu64 ", past max_train_steps %d of this run",
                          name, step, tr->p.max_train_steps);
    return LSD_OK;
}

static lsdt_tensor *to_tensor(const lsdi_st_tensor *t)
{
    return lsdt_from_host(NULL, t->data, LSDT_F32, t->shape, t->ndim, LSDT_F32, NULL);
}

lsd_status lsd_trainer_resume(lsd_trainer *tr, const char *dir)
{
    if (!tr || !dir)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_resume: %s is NULL", !tr ? "trainer" : "dir");
    char *path = lsdi_path_join(dir, STATE_FILE);
    if (!path)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "resume %s", dir);
    lsdi_st_file *f = NULL;
    lsd_status st = lsdi_st_open(path, &f);
    uint64_t step = 0, micro = 0, seed = 0, n = 0;
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
    const lsdi_st_tensor *steps = f ? lsdi_st_find(f, "adam_steps") : NULL;
    if (st == LSD_OK && (!steps || steps->dtype != LSDI_ST_I64 || steps->numel != n))
        st = lsdi_error(LSD_ERR_FORMAT, "%s: \"adam_steps\" missing or not I64 [%" PRIu64 "]", path, n);
    /* Check everything before changing anything. */
    for (int i = 0; st == LSD_OK && i < tr->n_params; i++) {
        const lsdi_st_tensor *a, *m, *v;
        st = find_like(f, path, "param", i, tr->params[i], 0, &a);
        if (st == LSD_OK)
            st = find_like(f, path, "exp_avg", i, tr->params[i], 1, &m);
        if (st == LSD_OK)
            st = find_like(f, path, "exp_avg_sq", i, tr->params[i], 1, &v);
        if (st == LSD_OK && !m != !v)
            st = lsdi_error(LSD_ERR_FORMAT, "%s: parameter %d has only one of exp_avg and exp_avg_sq", path, i);
    }
    for (int i = 0; st == LSD_OK && i < tr->n_params; i++) {
        const lsdi_st_tensor *a, *m, *v;
        find_like(f, path, "param", i, tr->params[i], 0, &a);
        find_like(f, path, "exp_avg", i, tr->params[i], 1, &m);
        find_like(f, path, "exp_avg_sq", i, tr->params[i], 1, &v);
        lsdt_tensor *ta = to_tensor(a), *tm = m ? to_tensor(m) : NULL, *tv = v ? to_tensor(v) : NULL;
        int64_t s;
        memcpy(&s, (const char *)steps->data + (size_t)i * sizeof s, sizeof s);
        int rc = !ta || (m && (!tm || !tv)) ? lsdt_last_status() : lsdt_copy_(tr->params[i], ta);
        if (!rc && tm)
            rc = lsdt_adamw_set_state(tr->opt, i, s, tm, tv);
        lsdt_free(ta);
        lsdt_free(tm);
        lsdt_free(tv);
        if (rc)
            st = lsdi_error_prefix(lsdi_error_from_shim(rc), "resume %s: parameter %d", path, i);
    }
    lsdi_st_close(f);
    free(path);
    if (st != LSD_OK)
        return st;
    tr->step = (int)step;
    tr->micro = micro;
    return LSD_OK;
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
