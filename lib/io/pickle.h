/* A pickle reader (protocols 2-5) that executes nothing: it builds a tree of plain values, and the only callables
 * it knows are the few torch.save needs (an allow-list). Any other global is refused by name at the opcode that
 * names it, before anything could be applied to it. */
#ifndef LSD_IO_PICKLE_H
#define LSD_IO_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"
#include "lora_sd.h"

typedef enum lsdi_pk_kind {
    LSDI_PK_NONE,
    LSDI_PK_BOOL,
    LSDI_PK_INT,
    LSDI_PK_FLOAT,
    LSDI_PK_STR,
    LSDI_PK_BYTES,
    LSDI_PK_TUPLE,
    LSDI_PK_LIST,
    LSDI_PK_DICT,    /* dict and collections.OrderedDict: insertion order kept */
    LSDI_PK_GLOBAL,  /* an allowed callable or storage class, not yet applied */
    LSDI_PK_STORAGE, /* a torch storage named by a persistent id */
    LSDI_PK_TENSOR   /* the result of torch._utils._rebuild_tensor_v2 (or _rebuild_parameter) */
} lsdi_pk_kind;

typedef struct lsdi_pk_value lsdi_pk_value;

typedef struct lsdi_pk_storage {
    lsdi_st_dtype dtype;
    const char *key; /* the record name under <stem>/data/ */
    int64_t numel;
} lsdi_pk_storage;

typedef struct lsdi_pk_tensor {
    const lsdi_pk_value *storage; /* kind LSDI_PK_STORAGE */
    int64_t offset;               /* in elements; >= 0 */
    int ndim;                     /* <= LSDI_ST_MAX_DIMS */
    int64_t size[LSDI_ST_MAX_DIMS];
    int64_t stride[LSDI_ST_MAX_DIMS];
} lsdi_pk_tensor;

struct lsdi_pk_value {
    lsdi_pk_kind kind;
    int depth; /* nesting depth: 1 for scalars */
    union {
        int64_t i; /* BOOL, INT */
        double f;
        struct {
            const char *s; /* NUL-terminated copy; may also hold NULs inside (use len) */
            size_t len;
        } str; /* STR, BYTES */
        struct {
            lsdi_pk_value **items;
            size_t n, cap;
        } seq; /* TUPLE, LIST */
        struct {
            lsdi_pk_value **keys, **vals;
            size_t n, cap;
        } dict;
        int global; /* an internal id; see lsdi_pk_global_name */
        lsdi_pk_storage storage;
        lsdi_pk_tensor tensor;
    } u;
};

typedef struct lsdi_pickle lsdi_pickle;

/* Runs the pickle in data[0..size). name is used in messages ("<file>:<record>"). Errors: LSD_ERR_FORMAT for
 * malformed input, a forbidden global ("forbidden global posix.system at offset 42") or a broken limit;
 * LSD_ERR_UNSUPPORTED for an opcode this reader does not run (named, with its offset). */
lsd_status lsdi_pickle_open_memory(const void *data, size_t size, const char *name, lsdi_pickle **out);
void lsdi_pickle_free(lsdi_pickle *p);
const lsdi_pk_value *lsdi_pickle_root(const lsdi_pickle *p);

/* The value stored under a string key (the last one if repeated), or NULL; d may be any kind. */
const lsdi_pk_value *lsdi_pk_dict_get(const lsdi_pk_value *d, const char *key);
const char *lsdi_pk_kind_name(lsdi_pk_kind k);
/* "module.name" of an LSDI_PK_GLOBAL value's id. */
const char *lsdi_pk_global_name(int global);

#endif
