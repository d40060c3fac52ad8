/* The data-parallel group (lsd_dist) and what the trainer does with it: the rendezvous with its checks, the start
 * from rank 0's weights, the per-step gradient sum with the failures named, the resume check. The collectives are
 * c10d's (shim/dist.cpp); this file decides who is at fault when one fails.
 *
 * Store keys (under rank 0's TCPStore or the FileStore): lsd/rank/<r> (a counter: a rank claimed twice),
 * lsd/world/<r> (each rank's world_size), lsd/verdict (rank 0's "ok" or why not), and for the group's n-th trainer
 * lsd/<n>/at/<r> (the last step whose gradient sum rank r entered: who did not come), lsd/<n>/error/<r> (why rank
 * r's step failed). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "model/model.h"
#include "train/train.h"

#define DEFAULT_PORT 29500
#define DEFAULT_TIMEOUT 300.0

void lsd_dist_params_init(lsd_dist_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->world_size = 1;
    p->backend = "gloo";
    p->master_addr = "127.0.0.1";
    p->master_port = DEFAULT_PORT;
    p->timeout_seconds = DEFAULT_TIMEOUT;
}

static lsd_status env_int(const char *name, int lo, int hi, int *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return LSD_OK;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "environment %s=\"%s\": expected an integer in [%d, %d]", name, v,
                          lo, hi);
    *out = (int)x;
    return LSD_OK;
}

lsd_status lsd_dist_params_from_env(lsd_dist_params *p)
{
    if (!p || p->struct_size != sizeof *p)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dist_params_from_env: %s",
                          !p ? "params is NULL" : "params struct_size is not this library's (call lsd_dist_params_init)");
    LSDI_TRY(env_int("RANK", 0, INT_MAX - 1, &p->rank));
    LSDI_TRY(env_int("WORLD_SIZE", 1, INT_MAX, &p->world_size));
    LSDI_TRY(env_int("LOCAL_RANK", 0, INT_MAX - 1, &p->local_rank));
    LSDI_TRY(env_int("MASTER_PORT", 1, 65535, &p->master_port));
    const char *addr = getenv("MASTER_ADDR");
    if (addr && *addr)
        p->master_addr = addr;
    return LSD_OK;
}

int lsd_dist_rank(const lsd_dist *d)
{
    return d ? d->rank : 0;
}

int lsd_dist_world_size(const lsd_dist *d)
{
    return d ? d->world : 1;
}

lsd_dist *lsdi_dist_retain(lsd_dist *d)
{
    lsdi_ref_retain(&d->ref);
    return d;
}

void lsd_dist_free(lsd_dist *d)
{
    if (!d || !lsdi_ref_release(&d->ref))
        return;
    lsdt_dist_free(d->g);
    free(d);
}

static int is_loopback(const char *addr)
{
    return !strncmp(addr, "127.", 4) || !strcmp(addr, "localhost") || !strcmp(addr, "::1");
}

static double remaining(double deadline)
{
    double r = deadline - lsdi_model_clock();
    return r > 0.001 ? r : 0.001;
}

/* Each rank says its world_size; rank 0 checks everyone's and gives its verdict, which the others wait for: so a
 * mismatch or a missing rank fails every rank with the same reason instead of a hang in the backend's rendezvous. */
static lsd_status check_members(lsd_dist *d, double deadline)
{
    char key[48], val[512];
    int64_t claims = 0;
    snprintf(key, sizeof key, "lsd/rank/%d", d->rank);
    if (lsdt_dist_add(d->g, key, 1, &claims))
        return lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "%s", d->where);
    if (claims > 1)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: rank %d is claimed by another process too (check RANK)",
                          d->where, d->rank);
    snprintf(key, sizeof key, "lsd/world/%d", d->rank);
    snprintf(val, sizeof val, "%d", d->world);
    if (lsdt_dist_set(d->g, key, val))
        return lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "%s", d->where);
    if (d->rank != 0) {
        if (lsdt_dist_get(d->g, "lsd/verdict", remaining(deadline), val, sizeof val))
            return lsdi_error(LSD_ERR_IO, "%s: rank 0 gave no word within %g s (are all %d ranks started, with the "
                              "same world size?): %s", d->where, d->timeout, d->world, lsdt_last_error());
        if (!strcmp(val, "ok"))
            return LSD_OK;
        (void)lsdt_dist_add(d->g, "lsd/verdict_read", 1, &claims); /* rank 0 may close its store now */
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: rank 0 refused the group: %s", d->where, val);
    }
    lsd_status st = LSD_OK;
    for (int q = 1; q < d->world && st == LSD_OK; q++) {
        snprintf(key, sizeof key, "lsd/world/%d", q);
        if (lsdt_dist_get(d->g, key, remaining(deadline), val, sizeof val))
            st = lsdi_error(LSD_ERR_IO, "rank %d of %d did not join within %g s", q, d->world, d->timeout);
        else if (atoi(val) != d->world)
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "rank %d has world size %s, rank 0 has %d", q, val, d->world);
    }
    (void)lsdt_dist_set(d->g, "lsd/verdict", st == LSD_OK ? "ok" : lsd_last_error());
    if (st == LSD_OK)
        return LSD_OK;
    /* The store lives in this process: keep it up until the ranks that came have read why (a few seconds at most). */
    char why[1024];
    snprintf(why, sizeof why, "%s", lsd_last_error());
    int64_t read = 0, came = 0;
    for (int q = 1; q < d->world; q++) {
        snprintf(key, sizeof key, "lsd/world/%d", q);
        came += lsdt_dist_get(d->g, key, 0, val, sizeof val) == 0;
    }
    double until = lsdi_model_clock() + 5;
    while (lsdt_dist_add(d->g, "lsd/verdict_read", 0, &read) == 0 && read < came && lsdi_model_clock() < until)
        nanosleep(&(struct timespec){0, 20000000}, NULL);
    return lsdi_error(st, "%s: %s", d->where, why);
}

lsd_status lsd_dist_new(const lsd_dist_params *params, lsd_dist **out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dist_new: out is NULL");
    *out = NULL;
    lsd_dist_params p;
    lsd_dist_params_init(&p);
    if (params)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_DIST_PARAMS, params, &p, "lsd_dist_new"));
    const char *backend = p.backend ? p.backend : "gloo", *addr = p.master_addr ? p.master_addr : "127.0.0.1";
    if (p.world_size < 1 || p.rank < 0 || p.rank >= p.world_size)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dist_new: rank %d is not in [0, world_size %d)", p.rank,
                          p.world_size);
    if (p.master_port < 1 || p.master_port > 65535)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dist_new: master_port %d is not in [1, 65535]",
                          p.master_port);
    if (!(p.timeout_seconds > 0) || p.timeout_seconds > 1e7)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dist_new: timeout_seconds %g is not in (0, 1e7]",
                          p.timeout_seconds);
    if (strcmp(backend, "gloo") && strcmp(backend, "nccl"))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dist_new: backend \"%s\": expected gloo or nccl", backend);
    lsd_dist *d = calloc(1, sizeof *d);
    if (!d)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_dist_new");
    lsdi_ref_init(&d->ref);
    d->rank = p.rank;
    d->world = p.world_size;
    d->timeout = p.timeout_seconds;
    if (p.init_file)
        snprintf(d->where, sizeof d->where, "rendezvous of rank %d of %d through file %s", d->rank, d->world,
                 p.init_file);
    else
        snprintf(d->where, sizeof d->where, "rendezvous of rank %d of %d at %s:%d", d->rank, d->world, addr,
                 p.master_port);
    if (d->world == 1) { /* a group of one: nothing to meet, nothing to sum */
        *out = d;
        return LSD_OK;
    }
    double deadline = lsdi_model_clock() + d->timeout;
    lsd_status st = LSD_OK;
    d->g = lsdt_dist_store_new(addr, p.master_port, p.init_file, d->rank, d->world, d->timeout);
    if (!d->g && d->rank == 0 && !p.init_file)
        st = lsdi_error(LSD_ERR_IO, "%s: rank 0 cannot serve the store on port %d (in use? MASTER_PORT): %s",
                        d->where, p.master_port, lsdt_last_error());
    else if (!d->g)
        st = lsdi_error(LSD_ERR_IO, "%s: cannot reach the store %s within %g s (is rank 0 running there?): %s",
                        d->where, p.init_file ? "file" : "served by rank 0", d->timeout, lsdt_last_error());
    if (st == LSD_OK)
        st = check_members(d, deadline);
    if (st == LSD_OK &&
        lsdt_dist_group_new(d->g, backend, p.init_file && !is_loopback(addr) ? NULL
                                           : is_loopback(addr)              ? "127.0.0.1"
                                                                            : NULL))
        st = lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "%s: %s process group", d->where, backend);
    if (st != LSD_OK) {
        lsd_dist_free(d);
        return st;
    }
    lsdi_log(LSD_LOG_INFO, "rank %d of %d joined the %s group", d->rank, d->world, backend);
    *out = d;
    return LSD_OK;
}

/* ---- the trainer's side ---- */

/* After a failed collective of step `step`: the ranks that never entered it (their lsd/<n>/at/ is older), or rank 0
 * when its store is gone too. */
static lsd_status name_culprit(lsd_dist *d, int step, const char *what, const char *cause)
{
    char key[48], val[64], names[256] = "";
    size_t len = 0;
    int store_gone = 0;
    for (int q = 0; q < d->world && !store_gone; q++) {
        if (q == d->rank)
            continue;
        snprintf(key, sizeof key, "lsd/%d/at/%d", d->trainers, q);
        int rc = lsdt_dist_get(d->g, key, 0, val, sizeof val);
        if (rc && rc != LSD_ERR_NOT_FOUND) {
            store_gone = 1;
        } else if (rc || atoi(val) < step) {
            len += (size_t)snprintf(names + len, len < sizeof names ? sizeof names - len : 0, "%srank %d (last at "
                                    "step %s)", len ? ", " : "", q, rc ? "none" : val);
        }
    }
    if (store_gone && d->rank != 0)
        return lsdi_error(LSD_ERR_IO, "training step %d: rank 0 is gone (its store does not answer): it died or "
                          "hangs; %s failed: %s", step, what, cause);
    if (*names)
        return lsdi_error(LSD_ERR_IO, "training step %d: %s never came to the %s: it died or hangs (waited at most "
                          "%g s): %s", step, names, what, d->timeout, cause);
    return lsdi_error(LSD_ERR_IO, "training step %d: the %s failed (timeout %g s): %s", step, what, d->timeout,
                      cause);
}

/* A rank that another rank's failure stops: the first failed rank (a flag each in the sum) and its message, when
 * the store still has it (rank 0's store goes with rank 0). */
static lsd_status peer_failed(lsd_dist *d, int step, const float *failed)
{
    char key[48], val[1024];
    int q = 0;
    while (q < d->world - 1 && !(failed[q] > 0))
        q++;
    snprintf(key, sizeof key, "lsd/%d/error/%d", d->trainers, q);
    if (lsdt_dist_get(d->g, key, 0, val, sizeof val) == 0)
        return lsdi_error(LSD_ERR_IO, "training step %d: stopped because rank %d failed: %s", step, q, val);
    return lsdi_error(LSD_ERR_IO, "training step %d: stopped because rank %d failed (see its output)", step, q);
}

/* Every rank did as many steps as this one: ranks that resumed different checkpoints, or some none, would mix their
 * gradients. */
static lsd_status same_step(const lsd_dist *d, int step, int mine, const float *done)
{
    for (int q = 0; q < d->world; q++)
        if ((int)done[q] != mine)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training step %d: rank %d has done %d steps, rank %d has done "
                              "%d (every rank must resume from the same checkpoint, or none)", step, q, (int)done[q],
                              d->rank, mine);
    return LSD_OK;
}

/* The buffer's extra values: the loss, the images, the cancels, then a failure flag a rank, then the steps done
 * a rank (each rank fills its own slot: exact in float32 to 2^24 steps). */
enum { EX_LOSS, EX_IMAGES, EX_CANCEL, EX_FAILED };

lsd_status lsdi_dist_reduce(lsd_trainer *tr, lsd_status local, int cancel, double *loss, int *images)
{
    lsd_dist *d = tr->dist;
    int step = tr->step + 1, n_extra = EX_FAILED + 2 * d->world;
    float *steps_done = NULL;
    char key[48], val[1024], own[1024];
    float *extra = calloc((size_t)n_extra, sizeof *extra);
    if (!extra) /* without its flag the others see this rank's absence, and name it */
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "training step %d: the all-reduce buffer", step);
    if (local != LSD_OK) {
        snprintf(own, sizeof own, "%s", lsd_last_error());
        snprintf(key, sizeof key, "lsd/%d/error/%d", d->trainers, d->rank);
        (void)lsdt_dist_set(d->g, key, own); /* the flag below names this rank even without it */
    }
    extra[EX_LOSS] = (float)*loss;
    extra[EX_IMAGES] = (float)*images;
    extra[EX_CANCEL] = cancel != 0;
    extra[EX_FAILED + d->rank] = local != LSD_OK;
    steps_done = extra + EX_FAILED + d->world;
    steps_done[d->rank] = (float)tr->step;
    snprintf(key, sizeof key, "lsd/%d/at/%d", d->trainers, d->rank);
    snprintf(val, sizeof val, "%d", step);
    (void)lsdt_dist_set(d->g, key, val); /* a store that is gone shows in the collective */
    double t0 = lsdi_model_clock();
    int rc = lsdt_dist_allreduce_grads(d->g, tr->params, tr->n_params, extra, n_extra);
    tr->allreduce_seconds = lsdi_model_clock() - t0;
    lsd_status st = LSD_OK;
    int failed = 0;
    for (int q = 0; q < d->world; q++)
        failed |= extra[EX_FAILED + q] > 0;
    if (local != LSD_OK) { /* its own message, not the peers' */
        st = lsdi_error(local, "%s", own);
    } else if (rc) {
        snprintf(own, sizeof own, "%s", lsdt_last_error());
        st = name_culprit(d, step, "gradient all-reduce", own);
    } else if (failed) {
        st = peer_failed(d, step, extra + EX_FAILED);
    } else {
        st = same_step(d, step, tr->step, steps_done);
    }
    if (st == LSD_OK && extra[EX_CANCEL] > 0)
        st = lsdi_error(LSD_ERR_CANCELLED, "training step %d cancelled by the progress callback of %.0f rank(s)",
                        step, extra[EX_CANCEL]);
    if (st == LSD_OK) {
        *loss = extra[EX_LOSS];
        *images = (int)(extra[EX_IMAGES] + 0.5f);
    }
    free(extra);
    return st;
}

/* What every rank must agree on for the group to train one adapter, as rank 0 has it. */
enum { AG_SEED, AG_BATCH, AG_ACCUM, AG_STEPS, AG_RES, AG_PARAMS, AG_NUMEL, AG_ITEMS, AG_N };
static const char *const ag_names[AG_N] = {"seed", "train_batch_size", "gradient_accumulation_steps",
                                           "max_train_steps", "resolution", "trainable tensors",
                                           "trainable values", "dataset items"};

static void agreement(const lsd_trainer *tr, int64_t *v)
{
    int64_t numel = 0;
    for (int i = 0; i < tr->n_params; i++)
        numel += lsdt_numel(tr->params[i]);
    v[AG_SEED] = (int64_t)tr->p.seed;
    v[AG_BATCH] = tr->p.train_batch_size;
    v[AG_ACCUM] = tr->p.gradient_accumulation_steps;
    v[AG_STEPS] = tr->p.max_train_steps;
    v[AG_RES] = tr->p.resolution;
    v[AG_PARAMS] = tr->n_params;
    v[AG_NUMEL] = numel;
    v[AG_ITEMS] = tr->dataset ? (int64_t)lsd_dataset_size(tr->dataset) : -1;
}

/* One broadcast from rank 0 carries its agreement values and its LoRA tensors. A rank that differs says which value
 * (the others go on to fail at the first step, naming it). */
lsd_status lsdi_dist_start(lsd_trainer *tr)
{
    static const char what[] = "lsd_trainer_new: rank 0's weights";
    lsd_dist *d = tr->dist;
    d->trainers++; /* every rank makes its trainers in the same order: their keys do not meet an earlier one's */
    int64_t mine[AG_N], root[AG_N];
    agreement(tr, mine);
    memcpy(root, mine, sizeof root);
    if (lsdt_dist_broadcast(d->g, tr->params, tr->n_params, root, AG_N, 0)) /* a rank gone before step one */
        return lsdi_error(LSD_ERR_IO, "%s: the broadcast failed (a rank stopped before training, or did not come "
                          "within %g s): %s", what, d->timeout, lsdt_last_error());
    for (int i = 0; i < AG_N; i++)
        if (mine[i] != root[i])
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: rank %d has %s %lld, rank 0 has %lld (every rank must "
                              "be given the same training parameters)", what, d->rank, ag_names[i],
                              (long long)mine[i], (long long)root[i]);
    return LSD_OK;
}
