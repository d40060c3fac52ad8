/* The safetensors writer: header (tensors in the given order, offsets contiguous, padded with spaces to a multiple of
 * 8 as the reference does) then the data, through an atomic temp-file-and-rename. */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/atomic.h"
#include "io/safetensors.h"

static int add_item(cJSON *obj, const char *key, cJSON *item)
{
    if (item && cJSON_AddItemToObject(obj, key, item))
        return 1;
    cJSON_Delete(item);
    return 0;
}

static int add_u64(cJSON *arr, uint64_t v)
{
    /* Raw text: cJSON prints numbers as doubles, which would turn large offsets into exponents. */
    char buf[24];
    snprintf(buf, sizeof buf, "%" PRIu64, v);
    cJSON *item = cJSON_CreateRaw(buf);
    if (item && cJSON_AddItemToArray(arr, item))
        return 1;
    cJSON_Delete(item);
    return 0;
}

/* 0 when a dimension is negative or the byte size overflows. */
static int entry_nbytes(const lsdi_st_entry *e, uint64_t *out)
{
    uint64_t n = lsdi_st_dtype_size(e->dtype);
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] < 0 || __builtin_mul_overflow(n, (uint64_t)e->shape[d], &n))
            return 0;
    *out = n;
    return 1;
}

static lsd_status check_entry(const char *path, const lsdi_st_entry *e, uint64_t *nbytes)
{
    size_t bad;
    if (!e->name || !lsdi_st_utf8_valid((const unsigned char *)e->name, strlen(e->name), &bad) ||
        strcmp(e->name, "__metadata__") == 0)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: tensor name '%s' is missing, not UTF-8 or reserved", path,
                          e->name ? e->name : "(null)");
    if (!lsdi_st_dtype_size(e->dtype) || e->ndim < 0 || e->ndim > LSDI_ST_MAX_DIMS || (e->ndim && !e->shape))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: tensor '%s': bad dtype %d or ndim %d", path, e->name,
                          (int)e->dtype, e->ndim);
    uint64_t n;
    if (!entry_nbytes(e, &n))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: tensor '%s': a negative dimension or a size overflow",
                          path, e->name);
    if (n && !e->data)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: tensor '%s': NULL data", path, e->name);
    *nbytes = n;
    return LSD_OK;
}

lsd_status lsdi_st_header(const char *path, const lsdi_st_entry *entries, size_t n, const char *const *meta_keys,
                          const char *const *meta_values, size_t n_meta, char **out)
{
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && n_meta) {
        cJSON *meta = cJSON_CreateObject();
        ok = add_item(root, "__metadata__", meta);
        for (size_t i = 0; ok && i < n_meta; i++) {
            if (!meta_keys[i] || !meta_values[i] || cJSON_GetObjectItemCaseSensitive(meta, meta_keys[i])) {
                cJSON_Delete(root);
                return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: metadata entry %zu ('%s') is NULL or repeated",
                                  path, i, meta_keys[i] ? meta_keys[i] : "(null)");
            }
            ok = add_item(meta, meta_keys[i], cJSON_CreateString(meta_values[i]));
        }
    }
    uint64_t offset = 0;
    for (size_t i = 0; ok && i < n; i++) {
        const lsdi_st_entry *e = &entries[i];
        uint64_t nbytes = 0;
        lsd_status st = check_entry(path, e, &nbytes);
        if (st == LSD_OK && cJSON_GetObjectItemCaseSensitive(root, e->name))
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: duplicate tensor name '%s'", path, e->name);
        if (st == LSD_OK && __builtin_add_overflow(offset, nbytes, &nbytes))
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: tensor '%s': total size overflows", path, e->name);
        if (st != LSD_OK) {
            cJSON_Delete(root);
            return st;
        }
        cJSON *t = cJSON_CreateObject(), *shape = NULL, *offs = NULL;
        ok = add_item(root, e->name, t) && add_item(t, "dtype", cJSON_CreateString(lsdi_st_dtype_name(e->dtype))) &&
             add_item(t, "shape", shape = cJSON_CreateArray()) &&
             add_item(t, "data_offsets", offs = cJSON_CreateArray());
        for (int d = 0; ok && d < e->ndim; d++)
            ok = add_u64(shape, (uint64_t)e->shape[d]);
        ok = ok && add_u64(offs, offset) && add_u64(offs, nbytes);
        offset = nbytes;
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory building the header", path);
    /* Space padding to a multiple of 8, as the reference writer does, keeps the data section aligned. */
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    char *buf = realloc(text, padded + 1);
    if (!buf) {
        free(text);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory building the header", path);
    }
    memset(buf + len, ' ', padded - len);
    buf[padded] = 0;
    *out = buf;
    return LSD_OK;
}

lsd_status lsdi_st_write(const char *path, const lsdi_st_entry *entries, size_t n, const char *const *meta_keys,
                         const char *const *meta_values, size_t n_meta)
{
    if (!path || (n && !entries) || (n_meta && (!meta_keys || !meta_values)))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "safetensors write %s: NULL argument", path ? path : "(null)");
    char *header = NULL;
    LSDI_TRY(lsdi_st_header(path, entries, n, meta_keys, meta_values, n_meta, &header));
    size_t hlen = strlen(header);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    lsdi_atomic_file af;
    lsd_status st = lsdi_atomic_begin(&af, path);
    if (st == LSD_OK)
        st = lsdi_atomic_write(&af, len8, sizeof len8);
    if (st == LSD_OK)
        st = lsdi_atomic_write(&af, header, hlen);
    for (size_t i = 0; st == LSD_OK && i < n; i++) {
        uint64_t nbytes = 0;
        entry_nbytes(&entries[i], &nbytes); /* checked by lsdi_st_header */
        st = lsdi_atomic_write(&af, entries[i].data, (size_t)nbytes);
    }
    free(header);
    if (st == LSD_OK)
        return lsdi_atomic_commit(&af);
    lsdi_atomic_abort(&af);
    return st;
}
