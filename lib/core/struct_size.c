/* Sizes of the public structs: the first published one (the smallest struct_size accepted) and this library's. A
 * struct that is new in 0.2 has no older size; one that grew in 0.2 was first published up to its first "0.2"
 * field. */
#include "core/struct_size.h"

#include <stddef.h>
#include <string.h>

#include "core/error.h"

typedef struct desc {
    const char *name;
    size_t first, size;
} desc;

#define GREW(T, first_new_field) {#T, offsetof(T, first_new_field), sizeof(T)}
#define SAME(T) {#T, sizeof(T), sizeof(T)}

static const desc structs[] = {
    [LSD_STRUCT_RUNTIME_INFO] = GREW(lsd_runtime_info, cpu_model),
    [LSD_STRUCT_PROGRESS] = SAME(lsd_progress),
    [LSD_STRUCT_IMAGE] = SAME(lsd_image),
    [LSD_STRUCT_MODEL_PARAMS] = GREW(lsd_model_params, dtype_policy),
    [LSD_STRUCT_MODEL_INFO] = SAME(lsd_model_info),
    [LSD_STRUCT_SAMPLE_PARAMS] = GREW(lsd_sample_params, prompt_syntax),
    [LSD_STRUCT_LORA_PARAMS] = SAME(lsd_lora_params),
    [LSD_STRUCT_LOAD_REPORT] = GREW(lsd_load_report, loha_modules),
    [LSD_STRUCT_ADAPTER_INFO] = SAME(lsd_adapter_info),
    [LSD_STRUCT_LORA_SAVE_PARAMS] = SAME(lsd_lora_save_params),
    [LSD_STRUCT_TENSOR_INFO] = SAME(lsd_tensor_info),
    [LSD_STRUCT_DATASET_PARAMS] = GREW(lsd_dataset_params, layout),
    [LSD_STRUCT_DATASET_ITEM] = GREW(lsd_dataset_item, bucket),
    [LSD_STRUCT_DATASET_INFO] = SAME(lsd_dataset_info),
    [LSD_STRUCT_DATASET_FOLDER] = SAME(lsd_dataset_folder),
    [LSD_STRUCT_CLASS_IMAGES_PARAMS] = SAME(lsd_class_images_params),
    [LSD_STRUCT_TRAIN_METRICS] = SAME(lsd_train_metrics),
    [LSD_STRUCT_TRAIN_PARAMS] = GREW(lsd_train_params, with_prior_preservation),
    [LSD_STRUCT_TRAIN_BATCH] = GREW(lsd_train_batch, is_class),
    [LSD_STRUCT_DIST_PARAMS] = SAME(lsd_dist_params),
};
#define N_STRUCTS (sizeof structs / sizeof structs[0])

size_t lsd_struct_size(lsd_struct_id id, size_t *min_size)
{
    size_t first = 0, size = 0;
    if ((unsigned)id < N_STRUCTS && structs[id].name) {
        first = structs[id].first;
        size = structs[id].size;
    }
    if (min_size)
        *min_size = first;
    return size;
}

static lsd_status check(const desc *d, const void *s, const char *fn)
{
    if (!s)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, d->name);
    size_t n = *(const size_t *)s;
    if (n < d->first || n > LSDI_STRUCT_SIZE_MAX)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s struct_size %zu is not a size of it (%zu to %zu, or "
                          "more from a newer header; set struct_size = sizeof, or use its _init)", fn, d->name, n,
                          d->first, d->size);
    return LSD_OK;
}

lsd_status lsdi_struct_read(lsd_struct_id id, const void *in, void *out, const char *fn)
{
    const desc *d = &structs[id];
    LSDI_TRY(check(d, in, fn));
    size_t n = *(const size_t *)in;
    const unsigned char *bytes = in;
    for (size_t i = d->size; i < n; i++)
        if (bytes[i])
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s has struct_size %zu, but this library (%d.%d.%d) knows "
                              "%zu bytes of it and byte %zu is not zero: a field it does not know is set", fn,
                              d->name, n, LSD_VERSION_MAJOR, LSD_VERSION_MINOR, LSD_VERSION_PATCH, d->size, i);
    memcpy(out, in, n < d->size ? n : d->size);
    *(size_t *)out = d->size;
    return LSD_OK;
}

lsd_status lsdi_struct_check_out(lsd_struct_id id, const void *out, const char *fn)
{
    return check(&structs[id], out, fn);
}

void lsdi_struct_write(lsd_struct_id id, void *out, const void *full)
{
    const desc *d = &structs[id];
    size_t n = *(const size_t *)out;
    size_t k = n < d->size ? n : d->size;
    memcpy(out, full, k);
    if (n > d->size)
        memset((unsigned char *)out + d->size, 0, n - d->size);
    *(size_t *)out = k;
}
