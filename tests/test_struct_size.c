/* The one struct_size rule (docs/ABI.md "Struct sizes"), struct by struct through the public call that takes it:
 * below the first published size: refused, naming the struct; the first published size with garbage after it
 * (params: the garbage is never read, defaults apply; info: nothing is written past it); larger with a zero tail
 * (params: accepted; info: the tail zeroed, struct_size = the library's); larger with a set byte in the tail
 * (params: refused, naming the struct). lsd_struct_size reports the sizes bindings check. */
#include <stdalign.h>
#include <stdlib.h>

#include "test.h"

typedef struct ctx {
    lsd_model *m;
    lsd_adapter_set *set;
    lsd_dataset *ds;
    lsd_trainer *tr;
    lsd_safetensors *f;
    const char *dir, *class_dir, *data;
    int serial;
    float latents[4 * 8 * 8];
} ctx;

typedef struct entry {
    lsd_struct_id id;
    const char *name;
    size_t size, first; /* as the header defines them */
    int out;            /* written by the library */
    void (*init)(ctx *c, void *s);
    lsd_status (*call)(ctx *c, void *s);
} entry;

static const char *const captions[] = {"x"};

static void i_model_params(ctx *c, void *s) { (void)c; lsd_model_params_init(s); }
static lsd_status c_model_params(ctx *c, void *s)
{
    lsd_model *m = NULL;
    lsd_status st = lsd_model_load(data_path("sd-tiny"), s, &m);
    lsd_model_free(m);
    (void)c;
    return st;
}
static void i_sample_params(ctx *c, void *s)
{
    lsd_sample_params *p = s;
    (void)c;
    lsd_sample_params_init(p);
    p->prompt = "x";
    p->steps = 1;
    p->width = p->height = 32;
}
static lsd_status c_sample_params(ctx *c, void *s)
{
    lsd_image img = {.struct_size = sizeof img};
    lsd_status st = lsd_sample(c->m, s, &img, NULL);
    lsd_image_release(&img);
    return st;
}
static void i_lora_params(ctx *c, void *s)
{
    lsd_lora_params *p = s;
    (void)c;
    lsd_lora_params_init(p);
    p->rank = 1;
}
static lsd_status c_lora_params(ctx *c, void *s)
{
    char name[32];
    snprintf(name, sizeof name, "add%d", c->serial++);
    return lsd_adapter_set_add(c->set, name, s);
}
static void i_lora_save_params(ctx *c, void *s) { (void)c; lsd_lora_save_params_init(s); }
static lsd_status c_lora_save_params(ctx *c, void *s)
{
    char path[600];
    snprintf(path, sizeof path, "%s/save.safetensors", c->dir);
    return lsd_adapter_set_save_ex(c->set, "a", path, s);
}
static void i_dataset_params(ctx *c, void *s)
{
    lsd_dataset_params *p = s;
    (void)c;
    lsd_dataset_params_init(p);
    p->resolution = 32;
}
static lsd_status c_dataset_params(ctx *c, void *s)
{
    lsd_dataset *ds = NULL;
    lsd_status st = lsd_dataset_open(c->data, s, &ds);
    lsd_dataset_free(ds);
    return st;
}
static void i_class_images_params(ctx *c, void *s)
{
    lsd_class_images_params *p = s;
    lsd_class_images_params_init(p);
    p->class_data_dir = c->class_dir;
    p->class_prompt = "x";
    p->num_class_images = 1;
    p->sample_batch_size = 1;
    p->steps = 1;
    p->resolution = 32;
}
static lsd_status c_class_images_params(ctx *c, void *s) { return lsd_generate_class_images(c->m, s, NULL); }
static void i_train_params(ctx *c, void *s)
{
    lsd_train_params *p = s;
    (void)c;
    lsd_train_params_init(p);
    p->resolution = 32;
    p->train_batch_size = 1;
}
static lsd_status c_train_params(ctx *c, void *s)
{
    lsd_trainer *tr = NULL;
    lsd_status st = lsd_trainer_new(c->m, c->set, "t", NULL, s, &tr);
    lsd_trainer_free(tr);
    return st;
}
static void i_train_batch(ctx *c, void *s)
{
    lsd_train_batch *b = s;
    memset(b, 0, sizeof *b);
    b->struct_size = sizeof *b;
    b->batch = 1;
    b->height = b->width = 8;
    b->latents = c->latents;
    b->captions = captions;
}
static lsd_status c_train_batch(ctx *c, void *s) { return lsd_trainer_step_batch(c->tr, s, NULL); }
static void i_dist_params(ctx *c, void *s)
{
    (void)c;
    lsd_dist_params_init(s); /* a group of one: nothing to meet */
}
static lsd_status c_dist_params(ctx *c, void *s)
{
    (void)c;
    lsd_dist *d = NULL;
    lsd_status st = lsd_dist_new(s, &d);
    lsd_dist_free(d);
    return st;
}

static void i_out(ctx *c, void *s) { (void)c; (void)s; } /* the harness sets struct_size */
static lsd_status c_runtime_info(ctx *c, void *s) { (void)c; return lsd_runtime_info_get(s); }
static lsd_status c_model_info(ctx *c, void *s) { return lsd_model_get_info(c->m, s); }
static lsd_status c_load_report(ctx *c, void *s)
{
    char name[32];
    snprintf(name, sizeof name, "load%d", c->serial++);
    return lsd_adapter_set_load(c->set, name, data_path("sd-tiny/ref/lora_kohya.safetensors"), NULL, s);
}
static lsd_status c_adapter_info(ctx *c, void *s) { return lsd_adapter_set_get_info(c->set, 0, s); }
static lsd_status c_tensor_info(ctx *c, void *s) { return lsd_safetensors_tensor_info(c->f, 0, s); }
static lsd_status c_dataset_item(ctx *c, void *s)
{
    lsd_status st = lsd_dataset_get(c->ds, 0, 1, s);
    if (st == LSD_OK)
        lsd_dataset_item_release(s);
    return st;
}
static lsd_status c_dataset_info(ctx *c, void *s) { return lsd_dataset_get_info(c->ds, s); }
static lsd_status c_dataset_folder(ctx *c, void *s) { return lsd_dataset_folder_info(c->ds, 0, s); }

#define IN(ID, T, FIRST, f) {ID, #T, sizeof(T), FIRST, 0, i_##f, c_##f}
#define OUT(ID, T, FIRST, f) {ID, #T, sizeof(T), FIRST, 1, i_out, c_##f}
static const entry entries[] = {
    IN(LSD_STRUCT_MODEL_PARAMS, lsd_model_params, offsetof(lsd_model_params, dtype_policy), model_params),
    IN(LSD_STRUCT_SAMPLE_PARAMS, lsd_sample_params, offsetof(lsd_sample_params, prompt_syntax), sample_params),
    IN(LSD_STRUCT_LORA_PARAMS, lsd_lora_params, sizeof(lsd_lora_params), lora_params),
    IN(LSD_STRUCT_LORA_SAVE_PARAMS, lsd_lora_save_params, sizeof(lsd_lora_save_params), lora_save_params),
    IN(LSD_STRUCT_DATASET_PARAMS, lsd_dataset_params, offsetof(lsd_dataset_params, layout), dataset_params),
    IN(LSD_STRUCT_CLASS_IMAGES_PARAMS, lsd_class_images_params, sizeof(lsd_class_images_params),
       class_images_params),
    IN(LSD_STRUCT_TRAIN_PARAMS, lsd_train_params, offsetof(lsd_train_params, with_prior_preservation),
       train_params),
    IN(LSD_STRUCT_TRAIN_BATCH, lsd_train_batch, offsetof(lsd_train_batch, is_class), train_batch),
    IN(LSD_STRUCT_DIST_PARAMS, lsd_dist_params, sizeof(lsd_dist_params), dist_params),
    OUT(LSD_STRUCT_RUNTIME_INFO, lsd_runtime_info, offsetof(lsd_runtime_info, cpu_model), runtime_info),
    OUT(LSD_STRUCT_MODEL_INFO, lsd_model_info, sizeof(lsd_model_info), model_info),
    OUT(LSD_STRUCT_LOAD_REPORT, lsd_load_report, offsetof(lsd_load_report, loha_modules), load_report),
    OUT(LSD_STRUCT_ADAPTER_INFO, lsd_adapter_info, sizeof(lsd_adapter_info), adapter_info),
    OUT(LSD_STRUCT_TENSOR_INFO, lsd_tensor_info, sizeof(lsd_tensor_info), tensor_info),
    OUT(LSD_STRUCT_DATASET_ITEM, lsd_dataset_item, offsetof(lsd_dataset_item, bucket), dataset_item),
    OUT(LSD_STRUCT_DATASET_INFO, lsd_dataset_info, sizeof(lsd_dataset_info), dataset_info),
    OUT(LSD_STRUCT_DATASET_FOLDER, lsd_dataset_folder, sizeof(lsd_dataset_folder), dataset_folder),
};

#define TAIL 24
static alignas(max_align_t) unsigned char buf[2048];

static size_t *size_field(void) { return (size_t *)buf; }

/* A fresh struct in buf at the library's size; bytes [from, to) set to fill. */
static void fresh(ctx *c, const entry *e, size_t from, size_t to, int fill)
{
    memset(buf, 0, sizeof buf);
    e->init(c, buf);
    *size_field() = e->size;
    memset(buf + from, fill, to - from);
}

static void check_entry(ctx *c, const entry *e)
{
    size_t first = 0;
    CHECK(lsd_struct_size(e->id, &first) == e->size && first == e->first, "%s: lsd_struct_size %zu min %zu, "
          "header %zu min %zu", e->name, lsd_struct_size(e->id, NULL), first, e->size, e->first);
    char want[160];
    /* below the first published size */
    fresh(c, e, 0, 0, 0);
    *size_field() = e->first - 1;
    snprintf(want, sizeof want, "%s struct_size %zu is not a size of it", e->name, e->first - 1);
    CHECK_STATUS(e->call(c, buf), LSD_ERR_INVALID_ARGUMENT, want);
    fresh(c, e, 0, 0, 0);
    *size_field() = 100000;
    CHECK_STATUS(e->call(c, buf), LSD_ERR_INVALID_ARGUMENT, e->name);
    /* the first published size, garbage after it */
    fresh(c, e, e->first, e->size + TAIL, e->out ? 0xCD : 0xAB);
    *size_field() = e->first;
    if (CHECK_OK(e->call(c, buf)) && e->out) {
        CHECK(*size_field() == e->first, "%s: struct_size %zu after the call", e->name, *size_field());
        for (size_t i = e->first; i < e->size + TAIL; i++)
            if (buf[i] != 0xCD) {
                CHECK(0, "%s: byte %zu written past the caller's struct_size %zu", e->name, i, e->first);
                break;
            }
    }
    /* a newer caller: larger, zero tail (info: a tail of garbage, zeroed by the call) */
    fresh(c, e, e->size, e->size + TAIL, e->out ? 0xCD : 0);
    *size_field() = e->size + TAIL;
    if (CHECK_OK(e->call(c, buf)) && e->out) {
        CHECK(*size_field() == e->size, "%s: struct_size %zu after the call", e->name, *size_field());
        for (size_t i = e->size; i < e->size + TAIL; i++)
            if (buf[i]) {
                CHECK(0, "%s: byte %zu of a newer caller's tail not zeroed", e->name, i);
                break;
            }
    }
    if (e->out)
        return;
    /* a newer caller that set a field this library does not know */
    fresh(c, e, e->size, e->size + TAIL, 0);
    *size_field() = e->size + TAIL;
    buf[e->size + 5] = 1;
    snprintf(want, sizeof want, "%s has struct_size %zu, but this library", e->name, e->size + TAIL);
    CHECK_STATUS(e->call(c, buf), LSD_ERR_INVALID_ARGUMENT, want);
    CHECK(strstr(lsd_last_error(), "is not zero") != NULL, "%s", lsd_last_error());
}

static int progress_size(const lsd_progress *p, void *user)
{
    *(size_t *)user = p->struct_size;
    return 0;
}

TEST(struct_size_every_struct)
{
    ctx c = {0};
    c.dir = temp_dir();
    c.class_dir = temp_dir();
    c.data = tiny_dataset();
    lsd_train_params tp;
    lsd_train_params_init(&tp);
    tp.resolution = 32;
    tp.train_batch_size = 1;
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = 32;
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &c.m)) || !CHECK_OK(lsd_adapter_set_new(c.m, &c.set)) ||
        !CHECK_OK(lsd_adapter_set_add(c.set, "a", NULL)) || !CHECK_OK(lsd_dataset_open(c.data, &dp, &c.ds)) ||
        !CHECK_OK(lsd_trainer_new(c.m, c.set, "a", NULL, &tp, &c.tr)) ||
        !CHECK_OK(lsd_safetensors_open(data_path("sd-tiny/ref/lora_kohya.safetensors"), &c.f)))
        goto done;
    for (size_t k = 0; k < sizeof entries / sizeof entries[0]; k++)
        check_entry(&c, &entries[k]);

    /* Structs the library fills for a callback, and the frozen lsd_image, have one size. */
    size_t first = 0;
    CHECK(lsd_struct_size(LSD_STRUCT_IMAGE, &first) == sizeof(lsd_image) && first == sizeof(lsd_image));
    CHECK(lsd_struct_size(LSD_STRUCT_PROGRESS, &first) == sizeof(lsd_progress) && first == sizeof(lsd_progress));
    CHECK(lsd_struct_size(LSD_STRUCT_TRAIN_METRICS, &first) == sizeof(lsd_train_metrics) &&
          first == sizeof(lsd_train_metrics));
    CHECK(lsd_struct_size((lsd_struct_id)0, &first) == 0 && first == 0);
    CHECK(lsd_struct_size((lsd_struct_id)21, &first) == 0 && first == 0);
    lsd_sample_params sp;
    i_sample_params(&c, &sp);
    size_t seen = 0;
    sp.progress = progress_size;
    sp.progress_user = &seen;
    CHECK_OK(c_sample_params(&c, &sp));
    CHECK(seen == sizeof(lsd_progress), "progress struct_size %zu", seen);
done:
    lsd_safetensors_close(c.f);
    lsd_trainer_free(c.tr);
    lsd_dataset_free(c.ds);
    lsd_adapter_set_free(c.set);
    lsd_model_free(c.m);
}

/* vae_decode_only came after dtype_policy: a caller whose struct ends before it (0.1's, or 0.2's before the field)
 * gets the whole VAE whatever lies past its struct_size. */
TEST(struct_size_model_params_before_vae_decode_only)
{
    lsd_model *full = NULL;
    lsd_model_info want = {.struct_size = sizeof want}, got = {.struct_size = sizeof got};
    if (!CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &full)) || !CHECK_OK(lsd_model_get_info(full, &want)))
        return;
    lsd_model_free(full);
    size_t ends[2] = {offsetof(lsd_model_params, dtype_policy), offsetof(lsd_model_params, vae_decode_only)};
    for (int k = 0; k < 2; k++) {
        lsd_model_params old;
        lsd_model_params_init(&old);
        memset((char *)&old + ends[k], 0x01, sizeof old - ends[k]); /* vae_decode_only = 0x01010101 if it were read */
        old.struct_size = ends[k];
        lsd_model *m = NULL;
        if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), &old, &m)) && CHECK_OK(lsd_model_get_info(m, &got)))
            CHECK(got.vae_params == want.vae_params, "struct_size %zu: vae_params %lld, whole VAE %lld", ends[k],
                  (long long)got.vae_params, (long long)want.vae_params);
        lsd_model_free(m);
    }
}
