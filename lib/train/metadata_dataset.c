/* kohya's dataset keys of the training metadata (train_network.py, its DreamBooth-method branch): image counts
 * with repeats, the folders (ss_dataset_dirs, ss_reg_dataset_dirs: {"<folder>": {"n_repeats": r, "img_count": n}}),
 * the tags of each folder's captions (ss_tag_frequency: {"<folder>": {"<tag>": count}}: each image once, its
 * caption split at commas, stripped, lower-cased, as BaseDataset.set_tag_frequency), the buckets (ss_bucket_info:
 * {"buckets": {"<i>": {"resolution": [w, h], "count": entries}}, "mean_img_ar_error": e}, or null without) and the
 * dataset's caption and bucket settings. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/error.h"
#include "core/pyfmt.h"
#include "train/train.h"

static const char *base_name(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    const char *s = path + n;
    while (s > path && s[-1] != '/')
        s--;
    return s;
}

/* obj[key] as an object, made when missing; key is the first n bytes of k. */
static cJSON *child(cJSON *obj, const char *k, size_t n)
{
    char key[1024];
    snprintf(key, sizeof key, "%.*s", (int)(n < sizeof key - 1 ? n : sizeof key - 1), k);
    cJSON *c = cJSON_GetObjectItemCaseSensitive(obj, key);
    return c ? c : cJSON_AddObjectToObject(obj, key);
}

/* Python's tag.strip().lower() into out (room for 4 bytes per input byte + 1); invalid UTF-8 is kept as is. */
static void strip_lower(const char *s, size_t n, char *out)
{
    while (n && strchr(" \t\n\r\v\f", s[0]))
        s++, n--;
    while (n && strchr(" \t\n\r\v\f", s[n - 1]))
        n--;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k < 1) {
            out[o++] = s[i++];
            continue;
        }
        o += (size_t)utf8proc_encode_char(utf8proc_tolower(c), (utf8proc_uint8_t *)out + o);
        i += (size_t)k;
    }
    out[o] = 0;
}

static lsd_status add_json(lsdi_kv *kv, const char *key, cJSON *v)
{
    char *text = v ? cJSON_PrintUnformatted(v) : NULL;
    cJSON_Delete(v);
    if (!text)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "metadata %s", key);
    lsd_status st = lsdi_kv_add(kv, key, "%s", text);
    cJSON_free(text);
    return st;
}

static cJSON *tag_frequency(const lsd_dataset *ds)
{
    cJSON *root = cJSON_CreateObject();
    char *tag = NULL;
    size_t cap = 0;
    for (size_t i = 0; root && i < ds->n; i++) {
        const char *dir = base_name(ds->subsets[ds->items[i].subset].path);
        cJSON *freq = child(root, dir, strlen(dir));
        const char *cap_text = ds->items[i].captions[0];
        for (const char *t = cap_text; freq; t++) {
            size_t n = strcspn(t, ",");
            if (4 * n + 1 > cap && !(tag = realloc(tag, cap = 4 * n + 64)))
                freq = NULL;
            if (freq) {
                strip_lower(t, n, tag);
                cJSON *c = *tag ? cJSON_GetObjectItemCaseSensitive(freq, tag) : NULL;
                if (c)
                    cJSON_SetNumberValue(c, c->valuedouble + 1);
                else if (*tag && !cJSON_AddNumberToObject(freq, tag, 1))
                    freq = NULL;
            }
            t += n;
            if (!*t)
                break;
        }
        if (!freq) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    free(tag);
    return root;
}

/* The training folders (is_class 0) or the regularisation / class folders (1). */
static cJSON *dirs(const lsd_dataset *ds, int is_class)
{
    cJSON *root = cJSON_CreateObject();
    for (int s = 0; root && s < ds->n_subsets; s++) {
        const lsdi_subset *sub = &ds->subsets[s];
        if (!sub->is_class != !is_class)
            continue;
        cJSON *d = cJSON_CreateObject();
        const char *name = base_name(sub->path);
        if (!d || !cJSON_AddNumberToObject(d, "n_repeats", sub->repeats) ||
            !cJSON_AddNumberToObject(d, "img_count", (double)sub->images) ||
            !(cJSON_GetObjectItemCaseSensitive(root, name) ? cJSON_ReplaceItemInObjectCaseSensitive(root, name, d)
                                                            : cJSON_AddItemToObject(root, name, d))) {
            cJSON_Delete(d);
            cJSON_Delete(root);
            root = NULL;
        }
    }
    return root;
}

static cJSON *bucket_info(const lsd_trainer *tr)
{
    if (!tr->dataset->p.enable_bucket)
        return cJSON_CreateNull();
    cJSON *root = cJSON_CreateObject(), *buckets = root ? cJSON_AddObjectToObject(root, "buckets") : NULL;
    int w, h, ok = buckets != NULL;
    size_t entries;
    double err, err_sum = 0;
    for (int b = 0; ok && lsdi_loader_bucket(tr, b, &w, &h, &entries, &err); b++) {
        err_sum += err;
        if (!entries) /* kohya lists the buckets that hold images */
            continue;
        char key[16];
        snprintf(key, sizeof key, "%d", b);
        cJSON *one = cJSON_AddObjectToObject(buckets, key), *res = one ? cJSON_AddArrayToObject(one, "resolution") : NULL;
        ok = res && cJSON_AddItemToArray(res, cJSON_CreateNumber(w)) && cJSON_AddItemToArray(res, cJSON_CreateNumber(h)) &&
             cJSON_AddNumberToObject(one, "count", (double)entries);
    }
    size_t n = tr->dataset->n ? tr->dataset->n : 1;
    if (ok && !cJSON_AddNumberToObject(root, "mean_img_ar_error", err_sum / (double)n))
        ok = 0;
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

#define ADD(key, ...)                                          \
    do {                                                       \
        if (st == LSD_OK)                                      \
            st = lsdi_kv_add(kv, key, __VA_ARGS__);            \
    } while (0)

lsd_status lsdi_dataset_metadata(const lsd_trainer *tr, lsdi_kv *kv)
{
    const lsd_dataset *ds = tr->dataset;
    const lsd_dataset_params *dp = &ds->p;
    size_t train = 0, reg = 0;
    for (int s = 0; s < ds->n_subsets; s++)
        *(ds->subsets[s].is_class ? &reg : &train) += (size_t)ds->subsets[s].repeats * ds->subsets[s].images;
    char drop[40];
    lsdi_py_float(dp->caption_dropout_rate, 1, drop, sizeof drop);
    lsd_status st = LSD_OK;
    ADD("ss_num_train_images", "%zu", train);
    ADD("ss_num_reg_images", "%zu", reg);
    ADD("ss_num_batches_per_epoch", "%zu", lsdi_loader_batches_per_epoch(tr));
    ADD("ss_shuffle_caption", "%s", lsdi_py_bool(dp->shuffle_caption));
    ADD("ss_keep_tokens", "%d", dp->keep_tokens);
    ADD("ss_caption_dropout_rate", "%s", drop);
    ADD("ss_caption_dropout_every_n_epochs", "0");
    ADD("ss_caption_tag_dropout_rate", "0.0");
    ADD("ss_face_crop_aug_range", "None");
    ADD("ss_enable_bucket", "%s", lsdi_py_bool(dp->enable_bucket));
    ADD("ss_bucket_no_upscale", "%s", lsdi_py_bool(dp->bucket_no_upscale));
    ADD("ss_min_bucket_reso", "%d", dp->min_bucket_reso);
    ADD("ss_max_bucket_reso", "%d", dp->max_bucket_reso);
    if (st == LSD_OK)
        st = add_json(kv, "ss_dataset_dirs", dirs(ds, 0));
    if (st == LSD_OK)
        st = add_json(kv, "ss_reg_dataset_dirs", dirs(ds, 1));
    if (st == LSD_OK)
        st = add_json(kv, "ss_tag_frequency", tag_frequency(ds));
    if (st == LSD_OK)
        st = add_json(kv, "ss_bucket_info", bucket_info(tr));
    return st;
}
