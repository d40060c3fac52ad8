/* safetensors files: a validating, mmap-backed reader and an atomic writer. */
#ifndef LSD_IO_SAFETENSORS_H
#define LSD_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "lora_sd.h"

typedef enum lsdi_st_dtype {
    LSDI_ST_F64,
    LSDI_ST_F32,
    LSDI_ST_F16,
    LSDI_ST_BF16,
    LSDI_ST_I64,
    LSDI_ST_I32,
    LSDI_ST_I16,
    LSDI_ST_I8,
    LSDI_ST_U8,
    LSDI_ST_BOOL
} lsdi_st_dtype;

#define LSDI_ST_MAX_DIMS 8

typedef struct lsdi_st_tensor {
    const char *name;
    lsdi_st_dtype dtype;
    int ndim;
    int64_t shape[LSDI_ST_MAX_DIMS];
    uint64_t numel;
    const void *data; /* inside the mapping; valid until lsdi_st_close */
    uint64_t nbytes;
    int in_mapping;   /* data lies in a read-only mapping of the file (lsdi_st_drop_pages applies) */
} lsdi_st_tensor;

typedef struct lsdi_st_file lsdi_st_file;

const char *lsdi_st_dtype_name(lsdi_st_dtype dt);
size_t lsdi_st_dtype_size(lsdi_st_dtype dt);

/* Validates everything (see docs/formats.md); every rejection names the file and the tensor at fault. */
lsd_status lsdi_st_open(const char *path, lsdi_st_file **out);
/* Parses a buffer the caller keeps alive until close; name is used in messages. */
lsd_status lsdi_st_open_memory(const void *data, size_t size, const char *name, lsdi_st_file **out);
void lsdi_st_close(lsdi_st_file *f);
/* For loaders that copy tensors out one at a time: the pages under t's bytes leave the process's resident set (they
 * stay in the page cache, and a later read brings them back), so a mapped file never adds its whole size to the
 * peak memory of a load (3.4 GB for SD 1.x's UNet). No effect on tensors that do not lie in a mapping. */
void lsdi_st_drop_pages(const lsdi_st_tensor *t);
const char *lsdi_st_path(const lsdi_st_file *f);

size_t lsdi_st_count(const lsdi_st_file *f);
/* Tensors in file order of their data offsets. */
const lsdi_st_tensor *lsdi_st_at(const lsdi_st_file *f, size_t i);
const lsdi_st_tensor *lsdi_st_find(const lsdi_st_file *f, const char *name);

size_t lsdi_st_metadata_count(const lsdi_st_file *f);
void lsdi_st_metadata_at(const lsdi_st_file *f, size_t i, const char **key, const char **value);
const char *lsdi_st_metadata_get(const lsdi_st_file *f, const char *key); /* NULL if absent */

/* Lets a tensor made from the mapping (no copy) keep it alive after lsdi_st_close: each retain is matched by
 * one release, and the mapping goes when the file is closed and the last release is done. */
void lsdi_st_retain(lsdi_st_file *f);
void lsdi_st_release(void *f);

/* 1 if s[0..n) is valid UTF-8 (tensor names, header); else 0 with *bad_at the offset of the first bad byte. */
int lsdi_st_utf8_valid(const unsigned char *s, size_t n, size_t *bad_at);

/* Converts a tensor's elements to float32 (any float, int or bool dtype); out holds t->numel floats. */
void lsdi_st_to_f32(const lsdi_st_tensor *t, float *out);

typedef struct lsdi_st_entry {
    const char *name;
    lsdi_st_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data; /* numel * dtype size bytes, little-endian */
} lsdi_st_entry;

/* Writes atomically (temp file in the same directory, fsync, rename): a failure leaves any old file intact.
 * Metadata: n_meta key/value string pairs, written under "__metadata__" (omitted when n_meta == 0). */
lsd_status lsdi_st_write(const char *path, const lsdi_st_entry *entries, size_t n, const char *const *meta_keys,
                         const char *const *meta_values, size_t n_meta);
/* The header text lsdi_st_write writes for these entries and metadata (padded to a multiple of 8), malloc'd; the
 * file is its length as 8 little-endian bytes, the text, then the entries' data in order. */
lsd_status lsdi_st_header(const char *path, const lsdi_st_entry *entries, size_t n, const char *const *meta_keys,
                          const char *const *meta_values, size_t n_meta, char **out);

#endif
