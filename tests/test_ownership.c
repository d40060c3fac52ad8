/* Handles that depend on others keep them alive (lib/core/refcount.h): an adapter set its model, a trainer its model,
 * set and datasets. Bindings whose garbage collector frees in any order must never crash, so every order of frees
 * is run here, with the handles still alive used between the frees (ASan: `make check SANITIZE=1 B=build-asan
 * TESTS=ownership`), and the reference counts are read to show that each object goes with its last handle. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "data/data.h"
#include "lora/lora.h"
#include "test.h"
#include "train/train.h"

enum { MODEL, SET, DATASET, TRAINER, N_HANDLES };
static const char *const handle_names[N_HANDLES] = {"model", "set", "dataset", "trainer"};

typedef struct world {
    lsd_model *m;
    lsd_adapter_set *set;
    lsd_dataset *ds;
    lsd_trainer *tr;
    int live[N_HANDLES];
} world;

static void train_params(lsd_train_params *p)
{
    lsd_train_params_init(p);
    p->train_batch_size = 1;
    p->resolution = 32;
    p->max_train_steps = 100;
    p->learning_rate = 1e-3;
    p->seed = 7;
    p->validation_steps = 0;
}

static int world_new(world *w)
{
    memset(w, 0, sizeof *w);
    lsd_train_params p;
    train_params(&p);
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &w->m)) ||
        !CHECK_OK(lsd_dataset_open(tiny_dataset(), NULL, &w->ds)) || !CHECK_OK(lsd_adapter_set_new(w->m, &w->set)) ||
        !CHECK_OK(lsd_trainer_new(w->m, w->set, "lora", w->ds, &p, &w->tr)))
        return 0;
    for (int h = 0; h < N_HANDLES; h++)
        w->live[h] = 1;
    return 1;
}

static int refs(const lsdi_ref *r) { return atomic_load(&r->n); }

/* The references each object must hold now: the caller's while its handle is live, one per live dependent. */
static void check_refs(const world *w, const char *when)
{
    int set_alive = w->live[SET] || w->live[TRAINER], tr = w->live[TRAINER];
    if (w->live[MODEL] || set_alive)
        CHECK(refs(&w->m->ref) == w->live[MODEL] + set_alive + tr, "%s: model refs %d", when, refs(&w->m->ref));
    if (set_alive)
        CHECK(refs(&w->set->ref) == w->live[SET] + tr, "%s: set refs %d", when, refs(&w->set->ref));
    if (w->live[DATASET] || tr)
        CHECK(refs(&w->ds->ref) == w->live[DATASET] + tr, "%s: dataset refs %d", when, refs(&w->ds->ref));
}

/* Every handle the caller still holds works, whatever was freed before it. */
static void use_live(world *w, const char *when)
{
    if (w->live[MODEL]) {
        lsd_model_info info;
        info.struct_size = sizeof info;
        CHECK_OK(lsd_model_get_info(w->m, &info));
        CHECK(info.latent_channels == 4, "%s", when);
    }
    if (w->live[SET]) {
        lsd_adapter_info ai;
        ai.struct_size = sizeof ai;
        CHECK(lsd_adapter_set_count(w->set) == 1, "%s", when);
        CHECK_OK(lsd_adapter_set_get_info(w->set, 0, &ai));
        CHECK(!strcmp(ai.name, "lora") && ai.rank == 4, "%s: adapter %s rank %d", when, ai.name, ai.rank);
        CHECK_OK(lsd_adapter_set_set_weights(w->set, "lora", 1.0f, NAN));
    }
    if (w->live[DATASET]) {
        lsd_dataset_info di;
        di.struct_size = sizeof di;
        CHECK_OK(lsd_dataset_get_info(w->ds, &di));
        CHECK(di.images == 4, "%s: %zu images", when, di.images);
    }
    if (w->live[TRAINER]) {
        int before = lsd_trainer_get_step(w->tr);
        float loss = NAN;
        CHECK_OK(lsd_trainer_step(w->tr, &loss));
        CHECK(isfinite(loss) && lsd_trainer_get_step(w->tr) == before + 1, "%s: loss %f", when, loss);
    }
}

static void free_handle(world *w, int h)
{
    switch (h) {
    case MODEL: lsd_model_free(w->m); break;
    case SET: lsd_adapter_set_free(w->set); break;
    case DATASET: lsd_dataset_free(w->ds); break;
    case TRAINER: lsd_trainer_free(w->tr); break;
    }
    w->live[h] = 0;
}

static int next_permutation(int *a, int n)
{
    int i = n - 2;
    while (i >= 0 && a[i] >= a[i + 1])
        i--;
    if (i < 0)
        return 0;
    int j = n - 1;
    while (a[j] <= a[i])
        j--;
    int t = a[i];
    a[i] = a[j];
    a[j] = t;
    for (int l = i + 1, r = n - 1; l < r; l++, r--) {
        t = a[l];
        a[l] = a[r];
        a[r] = t;
    }
    return 1;
}

TEST(ownership_every_free_order)
{
    int order[N_HANDLES] = {0, 1, 2, 3}, runs = 0;
    do {
        world w;
        char when[128];
        int n = snprintf(when, sizeof when, "order");
        for (int k = 0; k < N_HANDLES; k++)
            n += snprintf(when + n, sizeof when - (size_t)n, " %s", handle_names[order[k]]);
        if (!world_new(&w)) {
            lsd_trainer_free(w.tr);
            lsd_adapter_set_free(w.set);
            lsd_dataset_free(w.ds);
            lsd_model_free(w.m);
            return;
        }
        check_refs(&w, when);
        for (int k = 0; k < N_HANDLES; k++) {
            free_handle(&w, order[k]);
            check_refs(&w, when);
            use_live(&w, when);
        }
        runs++;
    } while (next_permutation(order, N_HANDLES) && !test_failed_now());
    CHECK(runs == 24 || test_failed_now(), "%d orders run", runs);
}

/* A set whose model the caller freed still adds, saves, loads and fuses adapters: the model is the set's too. */
TEST(ownership_adapter_set_outlives_model)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) || !CHECK_OK(lsd_adapter_set_new(m, &set)))
        goto done;
    CHECK(refs(&m->ref) == 2, "model refs %d: the caller's and the set's", refs(&m->ref));
    lsd_model_free(m);
    m = NULL;
    CHECK(refs(&set->model->ref) == 1, "model refs %d after lsd_model_free", refs(&set->model->ref));
    char path[600];
    snprintf(path, sizeof path, "%s/x.safetensors", temp_dir());
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.rank = 2;
    lsd_load_report rep;
    rep.struct_size = sizeof rep;
    lsd_adapter_info ai;
    ai.struct_size = sizeof ai;
    if (CHECK_OK(lsd_adapter_set_add(set, "x", &lp)) &&
        CHECK_OK(lsd_adapter_set_save(set, "x", path, LSD_LORA_FORMAT_KOHYA)) &&
        CHECK_OK(lsd_adapter_set_load(set, "y", path, NULL, &rep)) && CHECK_OK(lsd_adapter_set_get_info(set, 1, &ai))) {
        CHECK(rep.unmatched_keys == 0 && rep.applied_modules > 0, "unmatched %d applied %d", rep.unmatched_keys,
              rep.applied_modules);
        CHECK(!strcmp(ai.name, "y") && ai.rank == 2, "loaded %s rank %d", ai.name, ai.rank);
    }
    CHECK_OK(lsd_adapter_set_fuse(set));
done:
    lsd_adapter_set_free(set); /* unfuses into the model, then frees it: ASan sees any use after */
    lsd_model_free(m);
}

/* validation_dataset is kept by the trainer: freeing it first leaves the validation loss computable. */
TEST(ownership_trainer_keeps_validation_dataset)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_dataset *ds = NULL, *val = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    train_params(&p);
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) ||
        !CHECK_OK(lsd_dataset_open(tiny_dataset(), NULL, &ds)) ||
        !CHECK_OK(lsd_dataset_open(tiny_dataset(), NULL, &val)) || !CHECK_OK(lsd_adapter_set_new(m, &set)))
        goto done;
    p.validation_dataset = val;
    if (!CHECK_OK(lsd_trainer_new(m, set, "lora", ds, &p, &tr)))
        goto done;
    CHECK(refs(&val->ref) == 2, "validation dataset refs %d", refs(&val->ref));
    lsd_dataset_free(val);
    val = NULL;
    lsd_dataset_free(ds);
    ds = NULL;
    double vl = NAN;
    CHECK_OK(lsd_trainer_validate(tr, &vl));
    CHECK(isfinite(vl) && vl > 0, "validation loss %f", vl);
done:
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_dataset_free(val);
    lsd_dataset_free(ds);
    lsd_model_free(m);
}

/* A failed lsd_trainer_new gives back the references it took. */
TEST(ownership_failed_trainer_new_releases)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    lsd_train_params p;
    train_params(&p);
    p.learning_rate = -1;
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_adapter_set_new(m, &set))) {
        CHECK_STATUS(lsd_trainer_new(m, set, "lora", NULL, &p, &tr), LSD_ERR_INVALID_ARGUMENT, "learning_rate");
        CHECK(!tr && refs(&m->ref) == 2 && refs(&set->ref) == 1, "model refs %d set refs %d", refs(&m->ref),
              refs(&set->ref));
    }
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}
