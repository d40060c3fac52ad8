/* Parameter tables: every weight of a network under its diffusers / transformers state-dict name, with the
 * shape it must have and the slot (a field of a layer struct) that holds it, plus the list of linear and conv
 * modules by module path (what LoRA adapters attach to). Loaders and random init fill the slots through it. */
#ifndef LSD_NN_PARAMS_H
#define LSD_NN_PARAMS_H

#include <stdint.h>

#include "io/safetensors.h"
#include "lora_sd.h"
#include "lsd_torch.h"

#if defined(__GNUC__)
#define LSDI_PARAMS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LSDI_PARAMS_PRINTF(a, b)
#endif

enum { LSDI_MOD_LINEAR = 1, LSDI_MOD_CONV = 2 };

typedef struct lsdi_param {
    char *name;
    int ndim;
    int64_t shape[4];
    lsdt_tensor **slot; /* owned by the table once filled: lsdi_params_free frees *slot */
} lsdi_param;

typedef struct lsdi_module {
    char *name;
    int kind;   /* LSDI_MOD_LINEAR (layer is lsdi_linear *) or LSDI_MOD_CONV (lsdi_conv2d *) */
    void *layer;
} lsdi_module;

typedef struct lsdi_params {
    lsdi_param *v;
    int n, cap;
    lsdi_module *mods;
    int n_mods, cap_mods;
} lsdi_params;

lsd_status lsdi_params_add(lsdi_params *p, lsdt_tensor **slot, const int64_t *shape, int ndim, const char *fmt, ...)
    LSDI_PARAMS_PRINTF(5, 6);
lsd_status lsdi_params_module(lsdi_params *p, int kind, void *layer, const char *fmt, ...) LSDI_PARAMS_PRINTF(4, 5);
lsdi_param *lsdi_params_find(const lsdi_params *p, const char *name);
const lsdi_module *lsdi_params_find_module(const lsdi_params *p, const char *name);
/* Frees the names, the lists and every tensor held in a slot (setting the slot to NULL). */
void lsdi_params_free(lsdi_params *p);
int64_t lsdi_params_count_elements(const lsdi_params *p);

/* The tensor stored under a parameter's name (the table's naming), or NULL if the source has none.
 * A single-file loader maps the name to its own layout inside this callback. */
typedef const lsdi_st_tensor *(*lsdi_tensor_lookup)(void *user, const char *name);

/* Fills every slot from lookup: all parameters must be present with their shape (a found shape that differs only
 * by trailing size-1 dims, e.g. [C,C,1,1] for [C,C], is accepted). Nothing is changed on failure, which names the
 * first few missing (LSD_ERR_FORMAT) or mis-shaped (LSD_ERR_SHAPE_MISMATCH) tensors; origin (a path) and network
 * prefix messages. Values are converted to dtype on device (f16 upcasts exactly); 4-d weights are stored
 * channels_last. */
lsd_status lsdi_params_fill(lsdi_params *p, const char *origin, const char *network, lsdi_tensor_lookup lookup,
                            void *user, lsdt_dtype dtype, const char *device);

lsdt_dtype lsdi_dtype_to_shim(lsd_dtype dt);

#endif
