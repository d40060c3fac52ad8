/* lsd_dataset: opening (params, layout scan, every caption and image header checked, buckets), the public
 * getters, and one transformed item for callers outside the trainer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "data/data.h"
#include "io/image.h"

static const char *const layout_names[] = {"auto", "folder", "seed", "kohya", "dreambooth"};

const char *lsd_dataset_layout_name(lsd_dataset_layout l)
{
    return (unsigned)l < sizeof layout_names / sizeof layout_names[0] ? layout_names[l] : "unknown";
}

lsd_status lsd_dataset_layout_from_name(const char *name, lsd_dataset_layout *out)
{
    for (size_t i = 0; name && out && i < sizeof layout_names / sizeof layout_names[0]; i++)
        if (!strcasecmp(name, layout_names[i])) {
            *out = (lsd_dataset_layout)i;
            return LSD_OK;
        }
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "dataset layout '%s': expected auto, folder, seed, kohya or dreambooth",
                      name ? name : "(null)");
}

void lsd_dataset_params_init(lsd_dataset_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->resolution = 512;
    p->caption_column = "text";
    p->caption_separator = ", ";
    p->min_bucket_reso = 256;
    p->max_bucket_reso = 1024;
    p->bucket_reso_steps = 64;
}

static lsd_status read_params(const lsd_dataset_params *in, lsd_dataset_params *p)
{
    lsd_dataset_params_init(p);
    if (in)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_DATASET_PARAMS, in, p, "lsd_dataset_open"));
    if (!p->caption_column)
        p->caption_column = "text";
    if (!p->caption_separator)
        p->caption_separator = ", ";
    const char *bad = NULL;
    if (p->resolution < 8 || p->resolution > 8192)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_open: resolution %d not in [8, 8192]", p->resolution);
    if ((unsigned)p->layout > LSD_LAYOUT_DREAMBOOTH)
        bad = "layout is not an lsd_dataset_layout";
    else if (!(p->caption_dropout_rate >= 0 && p->caption_dropout_rate <= 1))
        bad = "caption_dropout_rate must be in [0, 1]";
    else if (p->keep_tokens < 0)
        bad = "keep_tokens must be >= 0";
    else if (!*p->caption_separator)
        bad = "caption_separator must not be empty";
    else if (p->caption_extension && !*p->caption_extension)
        bad = "caption_extension must not be empty (NULL: .caption, then .txt)";
    if (bad)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_open: %s", bad);
    return lsdi_bucket_params_check(p, p->resolution);
}

/* The params' strings become the dataset's own copies. */
static lsd_status own_strings(lsd_dataset *ds)
{
    const char **fields[] = {&ds->p.caption_extension, &ds->p.caption_column, &ds->p.caption_data_dir,
                             &ds->p.reg_data_dir, &ds->p.instance_prompt, &ds->p.class_data_dir,
                             &ds->p.class_prompt, &ds->p.caption_separator};
    _Static_assert(sizeof fields / sizeof fields[0] == sizeof ds->owned / sizeof ds->owned[0], "owned[] size");
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        if (!*fields[k])
            continue;
        if (!(ds->owned[k] = strdup(*fields[k])))
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "dataset %s", ds->dir);
        *fields[k] = ds->owned[k];
    }
    return LSD_OK;
}

static lsd_status probe_headers(lsd_dataset *ds, lsdi_problems *pr)
{
    for (size_t i = 0; i < ds->n; i++) {
        lsd_status st = lsdi_image_probe(ds->items[i].path, &ds->items[i].width, &ds->items[i].height);
        if (st != LSD_OK)
            LSDI_TRY(st == LSD_ERR_OUT_OF_MEMORY ? st : lsdi_problems_add(pr, st));
    }
    return LSD_OK;
}

static lsd_status scan(lsd_dataset *ds)
{
    lsdi_problems pr = {0};
    lsd_status st = lsdi_layout_scan(ds, &pr);
    if (st == LSD_OK)
        st = probe_headers(ds, &pr);
    size_t train = 0;
    for (size_t i = 0; i < ds->n; i++)
        train += !ds->items[i].is_class;
    if (st == LSD_OK && !train && !pr.count)
        st = lsdi_error(LSD_ERR_NOT_FOUND, "%s %s: no images (.png, .jpg, .jpeg, .webp)",
                        ds->layout == LSD_LAYOUT_DREAMBOOTH ? "instance_data_dir" : "train_data_dir", ds->dir);
    if (st == LSD_OK)
        st = lsdi_problems_finish(&pr, ds->dir);
    lsdi_problems_release(&pr);
    if (st == LSD_OK)
        st = lsdi_buckets_build(ds, ds->p.resolution, &ds->buckets, &pr);
    if (st == LSD_OK)
        st = lsdi_problems_finish(&pr, ds->dir);
    lsdi_problems_release(&pr);
    return st;
}

lsd_status lsd_dataset_open(const char *dir, const lsd_dataset_params *params, lsd_dataset **out)
{
    if (!dir || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_open: dir or out is NULL");
    *out = NULL;
    lsd_dataset_params p;
    LSDI_TRY(read_params(params, &p));
    lsd_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "dataset %s", dir);
    lsdi_ref_init(&ds->ref);
    ds->p = p;
    ds->dir = strdup(dir);
    lsd_status st = ds->dir ? own_strings(ds) : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "dataset %s", dir);
    if (st == LSD_OK)
        st = scan(ds);
    if (st != LSD_OK) {
        lsd_dataset_free(ds);
        return st;
    }
    *out = ds;
    return LSD_OK;
}

size_t lsd_dataset_size(const lsd_dataset *ds)
{
    return ds ? ds->n : 0;
}

LSDI_DEFINE_LAST_ERROR(dataset, lsd_dataset)

lsd_dataset *lsdi_dataset_retain(lsd_dataset *ds)
{
    lsdi_ref_retain(&ds->ref);
    return ds;
}

void lsd_dataset_free(lsd_dataset *ds)
{
    if (!ds || !lsdi_ref_release(&ds->ref))
        return;
    for (size_t i = 0; i < ds->n; i++) {
        lsdi_item *it = &ds->items[i];
        for (int k = 0; k < it->n_captions; k++)
            free(it->captions[k]);
        free(it->captions);
        free(it->caption_file);
        free(it->path);
    }
    for (int s = 0; s < ds->n_subsets; s++) {
        free(ds->subsets[s].path);
        free(ds->subsets[s].caption);
    }
    free(ds->subsets);
    free(ds->items);
    lsdi_buckets_release(&ds->buckets);
    for (size_t k = 0; k < sizeof ds->owned / sizeof ds->owned[0]; k++)
        free(ds->owned[k]);
    free(ds->dir);
    free(ds);
}

static lsd_status dataset_get(lsd_dataset *ds, size_t index, uint64_t seed, lsd_dataset_item *item)
{
    if (!ds)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_get: dataset is NULL");
    LSDI_TRY(lsdi_struct_check_out(LSD_STRUCT_DATASET_ITEM, item, "lsd_dataset_get"));
    if (index >= ds->n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "dataset %s: index %zu >= size %zu", ds->dir, index, ds->n);
    const lsdi_item *it = &ds->items[index];
    const lsdi_buckets *b = &ds->buckets;
    int bucket = b->item_bucket[index];
    lsdi_sample_ref r = {.index = index, .width = b->w[bucket], .height = b->h[bucket],
                         .resized_w = b->resized_w[index], .resized_h = b->resized_h[index], .is_class = it->is_class};
    lsdi_place(&r, ds->p.center_crop, ds->p.enable_bucket, ds->p.random_flip, seed);
    float *px = malloc((size_t)3 * r.width * r.height * sizeof *px);
    if (!px)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_dataset_get: %dx%d pixels", r.width, r.height);
    lsd_status st = lsdi_dataset_load_ref(ds, &r, px);
    if (st != LSD_OK) {
        free(px);
        return st;
    }
    uint64_t rng = lsdi_train_seed(seed, index, 0xCA9);
    lsd_dataset_item full = {
        .struct_size = sizeof full,
        .caption = it->captions[it->n_captions > 1 ? lsdi_rng_below(&rng, (size_t)it->n_captions) : 0],
        .path = it->path,
        .width = r.width,
        .height = r.height,
        .pixels = px,
        .crop_left = r.crop_left,
        .crop_top = r.crop_top,
        .flipped = r.flip,
        .bucket = bucket,
        .original_width = it->width,
        .original_height = it->height,
        .is_class = it->is_class,
        .repeats = it->repeats,
    };
    lsdi_struct_write(LSD_STRUCT_DATASET_ITEM, item, &full);
    return LSD_OK;
}

lsd_status lsd_dataset_get(lsd_dataset *ds, size_t index, uint64_t seed, lsd_dataset_item *item)
{
    return lsdi_dataset_record(ds, dataset_get(ds, index, seed, item));
}

void lsd_dataset_item_release(lsd_dataset_item *item)
{
    if (!item)
        return;
    free(item->pixels);
    item->pixels = NULL;
}

static lsd_status dataset_get_info(const lsd_dataset *ds, lsd_dataset_info *info)
{
    if (!ds)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_get_info: dataset is NULL");
    LSDI_TRY(lsdi_struct_check_out(LSD_STRUCT_DATASET_INFO, info, "lsd_dataset_get_info"));
    lsd_dataset_info r = {.struct_size = sizeof r, .layout = ds->layout, .folders = ds->n_subsets,
                          .buckets = ds->buckets.n};
    for (size_t i = 0; i < ds->n; i++) {
        const lsdi_item *it = &ds->items[i];
        *(it->is_class ? &r.class_images : &r.images) += 1;
        *(it->is_class ? &r.class_draws : &r.draws) += (size_t)it->repeats;
    }
    lsdi_struct_write(LSD_STRUCT_DATASET_INFO, info, &r);
    return LSD_OK;
}

lsd_status lsd_dataset_get_info(const lsd_dataset *ds, lsd_dataset_info *info)
{
    return lsdi_dataset_record(ds, dataset_get_info(ds, info));
}

static lsd_status dataset_folder_info(const lsd_dataset *ds, int index, lsd_dataset_folder *out)
{
    if (!ds)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_folder_info: dataset is NULL");
    LSDI_TRY(lsdi_struct_check_out(LSD_STRUCT_DATASET_FOLDER, out, "lsd_dataset_folder_info"));
    if (index < 0 || index >= ds->n_subsets)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_folder_info: index %d not in [0, %d)", index,
                          ds->n_subsets);
    const lsdi_subset *s = &ds->subsets[index];
    lsd_dataset_folder r = {sizeof r, s->path, s->caption, s->images, s->repeats, s->is_class};
    lsdi_struct_write(LSD_STRUCT_DATASET_FOLDER, out, &r);
    return LSD_OK;
}

lsd_status lsd_dataset_folder_info(const lsd_dataset *ds, int index, lsd_dataset_folder *out)
{
    return lsdi_dataset_record(ds, dataset_folder_info(ds, index, out));
}

int lsd_dataset_bucket_count(const lsd_dataset *ds)
{
    return ds ? ds->buckets.n : 0;
}

static lsd_status dataset_bucket_info(const lsd_dataset *ds, int index, int *width, int *height, size_t *count)
{
    if (!ds)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_bucket_info: dataset is NULL");
    if (index < 0 || index >= ds->buckets.n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_bucket_info: index %d not in [0, %d)", index,
                          ds->buckets.n);
    if (width)
        *width = ds->buckets.w[index];
    if (height)
        *height = ds->buckets.h[index];
    if (count)
        *count = ds->buckets.count[index];
    return LSD_OK;
}

lsd_status lsd_dataset_bucket_info(const lsd_dataset *ds, int index, int *width, int *height, size_t *count)
{
    return lsdi_dataset_record(ds, dataset_bucket_info(ds, index, width, height, count));
}

const char *lsdi_dataset_caption(const lsd_dataset *ds, size_t index)
{
    return index < ds->n ? ds->items[index].captions[0] : "";
}
