/* The public safetensors inspection API: a read-only view over the internal reader. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "io/safetensors.h"

struct lsd_safetensors {
    lsdi_st_file *file;
    lsdi_errbox err; /* lsd_safetensors_last_error */
};

LSDI_DEFINE_LAST_ERROR(safetensors, lsd_safetensors)

lsd_status lsd_safetensors_open(const char *path, lsd_safetensors **out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_safetensors_open: out is NULL");
    *out = NULL;
    if (!path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_safetensors_open: path is NULL");
    lsd_safetensors *f = calloc(1, sizeof *f);
    if (!f)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    lsd_status st = lsdi_st_open(path, &f->file);
    if (st != LSD_OK) {
        free(f);
        return st;
    }
    *out = f;
    return LSD_OK;
}

size_t lsd_safetensors_count(const lsd_safetensors *f) { return f ? lsdi_st_count(f->file) : 0; }

static lsd_status safetensors_tensor_info(const lsd_safetensors *f, size_t index, lsd_tensor_info *info)
{
    if (!f)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_safetensors_tensor_info: file is NULL");
    LSDI_TRY(lsdi_struct_check_out(LSD_STRUCT_TENSOR_INFO, info, "lsd_safetensors_tensor_info"));
    const lsdi_st_tensor *t = lsdi_st_at(f->file, index);
    if (!t)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: tensor index %zu out of range (%zu tensors)",
                          lsdi_st_path(f->file), index, lsdi_st_count(f->file));
    lsd_tensor_info full;
    memset(&full, 0, sizeof full);
    /* Longer names (rare, legal) are cut to fit the ABI's fixed buffer; the prefix still identifies them. */
    snprintf(full.name, sizeof full.name, "%s", t->name);
    snprintf(full.dtype, sizeof full.dtype, "%s", lsdi_st_dtype_name(t->dtype));
    full.ndim = t->ndim;
    memcpy(full.shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    full.nbytes = t->nbytes;
    lsdi_struct_write(LSD_STRUCT_TENSOR_INFO, info, &full);
    return LSD_OK;
}

lsd_status lsd_safetensors_tensor_info(const lsd_safetensors *f, size_t index, lsd_tensor_info *info)
{
    return lsdi_safetensors_record(f, safetensors_tensor_info(f, index, info));
}

static lsd_status safetensors_tensor_name(const lsd_safetensors *f, size_t index, const char **name)
{
    if (!f || !name)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_safetensors_tensor_name: %s is NULL", f ? "name" : "file");
    const lsdi_st_tensor *t = lsdi_st_at(f->file, index);
    if (!t)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: tensor index %zu out of range (%zu tensors)",
                          lsdi_st_path(f->file), index, lsdi_st_count(f->file));
    *name = t->name;
    return LSD_OK;
}

lsd_status lsd_safetensors_tensor_name(const lsd_safetensors *f, size_t index, const char **name)
{
    return lsdi_safetensors_record(f, safetensors_tensor_name(f, index, name));
}

size_t lsd_safetensors_metadata_count(const lsd_safetensors *f)
{
    return f ? lsdi_st_metadata_count(f->file) : 0;
}

static lsd_status safetensors_metadata(const lsd_safetensors *f, size_t index, const char **key,
                                               const char **value)
{
    if (!f)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_safetensors_metadata: file is NULL");
    if (index >= lsdi_st_metadata_count(f->file))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: metadata index %zu out of range (%zu entries)",
                          lsdi_st_path(f->file), index, lsdi_st_metadata_count(f->file));
    lsdi_st_metadata_at(f->file, index, key, value);
    return LSD_OK;
}

lsd_status lsd_safetensors_metadata(const lsd_safetensors *f, size_t index, const char **key,
                                            const char **value)
{
    return lsdi_safetensors_record(f, safetensors_metadata(f, index, key, value));
}

void lsd_safetensors_close(lsd_safetensors *f)
{
    if (!f)
        return;
    lsdi_st_close(f->file);
    free(f);
}
