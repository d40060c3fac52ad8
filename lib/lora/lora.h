/* LoRA adapter sets: the internals shared by the loaders, the forward hook, fuse and save. */
#ifndef LSD_LORA_LORA_H
#define LSD_LORA_LORA_H

#include "io/safetensors.h"
#include "model/model.h"
#include "nn/layers.h"

enum { LSDI_NET_UNET = 0, LSDI_NET_TE = 1, LSDI_NET_COUNT = 2 };

typedef struct lsdi_adapter lsdi_adapter;
typedef struct lsdi_lora_layer lsdi_lora_layer;

/* The tensors a file may give a module: LoRA's down/up/mid and alpha, then LyCORIS's (kohya-style names
 * <module>.hada_w1_a etc., docs/lora.md "LyCORIS"). */
enum {
    LSDI_ROLE_DOWN, LSDI_ROLE_UP, LSDI_ROLE_MID, LSDI_ROLE_ALPHA,
    LSDI_ROLE_HADA_W1_A, LSDI_ROLE_HADA_W1_B, LSDI_ROLE_HADA_W2_A, LSDI_ROLE_HADA_W2_B, LSDI_ROLE_HADA_T1,
    LSDI_ROLE_HADA_T2,
    LSDI_ROLE_LOKR_W1, LSDI_ROLE_LOKR_W1_A, LSDI_ROLE_LOKR_W1_B, LSDI_ROLE_LOKR_W2, LSDI_ROLE_LOKR_W2_A,
    LSDI_ROLE_LOKR_W2_B, LSDI_ROLE_LOKR_T2,
    LSDI_ROLE_DIFF, LSDI_ROLE_DIFF_B,
    LSDI_ROLE_DORA_SCALE,
    LSDI_ROLE_COUNT
};

/* What an entry's tensors are: how its delta W is made (hook.c, loha.c, lokr.c, full.c). */
typedef enum lsdi_lora_kind { LSDI_KIND_LORA = 0, LSDI_KIND_LOHA, LSDI_KIND_LOKR, LSDI_KIND_FULL } lsdi_lora_kind;

/* One adapter on one module. LoRA: down [r, in] or [r, in, kh, kw] (Tucker: [r, in, 1, 1] with mid [r, r, kh, kw]),
 * up [out, r] or [out, r, 1, 1], in the model's dtype. The other kinds keep the file's tensors (float32, the
 * file's shapes) in t[role]; dora_scale (any kind but FULL) is t[LSDI_ROLE_DORA_SCALE]. The tensors are the
 * adapter's. */
typedef struct lsdi_lora_entry {
    lsdi_adapter *ad;
    lsdi_lora_layer *layer;
    lsdt_tensor *down, *up, *mid;
    lsdt_tensor *t[LSDI_ROLE_COUNT];
    lsdi_lora_kind kind;
    int rank; /* LoKr with no decomposed factor and full diffs: 0 (their scale is 1) */
    float alpha;
    float scale; /* alpha / rank */
    int dora_axis; /* with dora_scale: 0 = one norm per output row (dora_scale [out, 1, ...]), 1 = per input column */
} lsdi_lora_entry;

/* The hook installed on one linear/conv layer: the entries of every adapter that targets it. */
struct lsdi_lora_layer {
    lsdi_lora_hook hook; /* first member: the layer calls hook.apply */
    lsd_adapter_set *set;
    int net, module;     /* index into the network's lsdi_params module list */
    int kind;            /* LSDI_MOD_LINEAR / LSDI_MOD_CONV */
    int stride, padding; /* of the base conv */
    lsdi_lora_entry **e;
    int n, cap;
    lsdt_tensor *orig_weight; /* a copy of the base weight while fused */
    lsdt_tensor *orig_bias;   /* the same for the bias, when a full diff (diff_b) was fused into it */
};

struct lsdi_adapter {
    char *name;
    lsdi_lora_entry *mods; /* allocated once with its final count */
    int n_mods;
    int rank;   /* the first linear module's (else first module's), for info and kohya metadata */
    float alpha;
    int conv_rank; /* 0 when no conv module */
    float conv_alpha;
    float weight, te_weight;
    int enabled, trainable, fused;
};

struct lsd_adapter_set {
    lsdi_ref ref;    /* the caller's, plus one per trainer on the set */
    lsdi_errbox err; /* lsd_adapter_set_last_error */
    lsd_model *model; /* a reference of the set's own */
    lsdi_adapter **ad;
    int n, cap;
    lsdi_lora_layer *layers[LSDI_NET_COUNT]; /* one slot per module of the network, hooks made on demand */
    int n_layers[LSDI_NET_COUNT];
    int fused;
};

/* Another reference to set (a trainer's); lsd_adapter_set_free drops one. */
lsd_adapter_set *lsdi_adapter_set_retain(lsd_adapter_set *set);
/* Records a failed call's status and message on set (lsd_adapter_set_last_error); returns st. */
lsd_status lsdi_adapter_set_record(const lsd_adapter_set *set, lsd_status st);

/* ---- the model side --------------------------------------------------------------------------------------- */
const lsdi_params *lsdi_lora_net_params(const lsd_model *m, int net);
/* The layer's in/out features (conv: channels) and kernel (1 for linear). */
void lsdi_lora_module_dims(const lsdi_module *mod, int *in, int *out, int *k);
lsdt_tensor *lsdi_lora_module_weight(const lsdi_module *mod);
lsdi_lora_hook **lsdi_lora_module_hook_slot(const lsdi_module *mod);

/* ---- hook (hook.c) ----------------------------------------------------------------------------------------- */
/* The hook on module `module` of `net`, installed on the layer on first use. */
lsd_status lsdi_lora_layer_get(lsd_adapter_set *set, int net, int module, lsdi_lora_layer **out);
lsd_status lsdi_lora_layer_attach(lsdi_lora_layer *l, lsdi_lora_entry *e);
void lsdi_lora_layer_detach(lsdi_lora_layer *l, const lsdi_adapter *ad);
/* The change of the layer's weight for user weight 1, in fp32 and the base weight's shape; a tensor of scope s.
 * LoRA: scale * up @ down (Tucker with mid); LoHa, LoKr, full diffs: their delta W (loha.c, lokr.c, full.c); with
 * dora_scale, the decomposed weight minus base (dora.c). base: the layer's original weight (read by DoRA only). */
lsdt_tensor *lsdi_lora_delta(lsdt_scope *s, const lsdi_lora_entry *e, const lsdt_tensor *base);
/* The kinds' delta W before DoRA (scale included), in fp32 and the base weight's shape. */
lsdt_tensor *lsdi_loha_delta(lsdt_scope *s, const lsdi_lora_entry *e, const int64_t *shape, int ndim);
lsdt_tensor *lsdi_lokr_delta(lsdt_scope *s, const lsdi_lora_entry *e, const int64_t *shape, int ndim);
lsdt_tensor *lsdi_full_delta(lsdt_scope *s, const lsdi_lora_entry *e, const int64_t *shape, int ndim);
/* DoRA (dora.c): base' = (base + delta) * dora_scale / ||base + delta|| (norms along e->dora_axis), returned as
 * base' - base; fp32 tensors of the base weight's shape. */
lsdt_tensor *lsdi_dora_apply(lsdt_scope *s, const lsdi_lora_entry *e, const lsdt_tensor *base,
                             const lsdt_tensor *delta);
/* sum_ij u[p, i] t[i, j, kh, kw] d[j, q] -> [p, q, kh, kw], contiguous: the Tucker rebuild of LoCon (u = up),
 * LoHa and LoKr (u = w_a^T); u [out, r], t [r, r2, kh, kw], d [r2, in], fp32. */
lsdt_tensor *lsdi_tucker_rebuild(lsdt_scope *s, const lsdt_tensor *u, const lsdt_tensor *t, const lsdt_tensor *d);

/* ---- names (kohya.c, peft.c, attn_procs.c) ----------------------------------------------------------------- */
typedef struct lsdi_lora_key {
    int net, module, role;
} lsdi_lora_key;

/* Forward tables of every module's kohya names (diffusers layout and original/sgm layout). */
typedef struct lsdi_kohya_names lsdi_kohya_names;
lsd_status lsdi_kohya_names_new(const lsd_model *m, lsdi_kohya_names **out);
void lsdi_kohya_names_free(lsdi_kohya_names *k);
const char *lsdi_kohya_name(const lsdi_kohya_names *k, int net, int module);
/* The kohya-style suffix of a role (".lora_down.weight", ".hada_w1_a", ...). */
const char *lsdi_kohya_suffix(int role);
/* Why a kohya-style name is not a tensor this library applies, naming the module ("module 'lora_unet_x' is no linear
 * or conv layer of this model" or "'.y' is not a tensor kind this library applies, on module 'down_blocks...'"); 0
 * when the name has no module part. */
int lsdi_kohya_explain(const lsdi_kohya_names *k, const lsd_model *m, const char *name, char *out, size_t n);


/* Each returns 1 and fills *key when `name` is a tensor of its format naming a module of the model, else 0. */
int lsdi_kohya_parse(const lsdi_kohya_names *k, const char *name, lsdi_lora_key *key);
int lsdi_peft_parse(const lsd_model *m, const char *name, lsdi_lora_key *key);
int lsdi_diffusers_parse(const lsd_model *m, const char *name, lsdi_lora_key *key);
int lsdi_attn_procs_parse(const lsd_model *m, const char *name, lsdi_lora_key *key);
/* Looks a module path up in one network; -1 if absent. */
int lsdi_lora_find_module(const lsd_model *m, int net, const char *path, size_t len);

/* PEFT/diffusers alpha carried in __metadata__ for module `path` of net; <= 0 if none. */
float lsdi_peft_metadata_alpha(const lsdi_st_file *f, int net, const char *path);

/* ---- kinds' checks at load (loha.c, lokr.c, full.c, dora.c) -------------------------------------------------- */
/* A module's tensors in a file, by role, and what load.c made of them. */
typedef struct lsdi_lora_pending {
    const lsdi_st_tensor *t[LSDI_ROLE_COUNT];
    int used, kind, rank, dora_axis;
} lsdi_lora_pending;
/* Each checks the module's tensors of its kind against the layer, naming the tensor and module on an error. rank:
 * the rank its scale divides by (0: scale 1, alpha ignored); axis: dora_scale's norm axis. */
lsd_status lsdi_loha_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int *rank);
lsd_status lsdi_lokr_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int *rank);
lsd_status lsdi_full_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path);
lsd_status lsdi_dora_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int *axis);
/* LSD_ERR_SHAPE_MISMATCH: tensor t of `path` has the wrong shape for module mod, which needs `want`. */
lsd_status lsdi_lora_mismatch(const char *path, const lsdi_st_tensor *t, const lsdi_module *mod, const int64_t *want,
                              int want_ndim);
/* LSD_ERR_FORMAT: role `missing` of module mod is absent although the module has other tensors; the message names
 * `have`, or when NULL the module's first tensor. */
lsd_status lsdi_lora_missing(const char *path, const lsdi_lora_pending *p, const lsdi_st_tensor *have,
                             const lsdi_module *mod, int missing);

/* ---- detect.c -------------------------------------------------------------------------------------------------- */
lsd_lora_format lsdi_lora_detect(const lsdi_st_file *f);

/* ---- adapter_set.c --------------------------------------------------------------------------------------------- */
lsdi_adapter *lsdi_adapter_find(const lsd_adapter_set *set, const char *name);
/* Adds a complete adapter (its entries filled) to the set and attaches it to its layers; takes ownership. */
lsd_status lsdi_adapter_install(lsd_adapter_set *set, lsdi_adapter *ad);
void lsdi_adapter_free(lsdi_adapter *ad);
lsd_status lsdi_lora_params_read(const lsd_lora_params *in, lsd_lora_params *out);

/* The trainable tensors (down, up per module) of adapter `name`; *params is malloc'd, the tensors stay the set's. */
lsd_status lsdi_adapter_trainable_params(lsd_adapter_set *set, const char *name, lsdt_tensor ***params, int *n);
/* The same for the modules on one network (LSDI_NET_UNET, LSDI_NET_TE; < 0: all), in module order. */
lsd_status lsdi_adapter_trainable_params_net(lsd_adapter_set *set, const char *name, int net, lsdt_tensor ***params,
                                             int *n);

/* ---- add.c ------------------------------------------------------------------------------------------------------ */
#define LSDI_TARGETS_UNET \
    ((unsigned)(LSD_TARGET_UNET_ATTN | LSD_TARGET_UNET_FF | LSD_TARGET_UNET_PROJ | LSD_TARGET_UNET_CONV))
#define LSDI_TARGETS_TE ((unsigned)(LSD_TARGET_TE_ATTN | LSD_TARGET_TE_MLP))
/* The lsd_lora_target bit a module of net belongs to (0: none: LoRA is not offered on it). */
unsigned lsdi_lora_target_of(int net, const lsdi_module *mod);

/* ---- load.c / save.c ------------------------------------------------------------------------------------------- */
/* lsd_adapter_set_load from a buffer the caller keeps alive for the call (the fuzzers' entry point). */
lsd_status lsdi_lora_load_memory(lsd_adapter_set *set, const char *name, const void *data, size_t size,
                                 const char *label, const lsd_lora_params *params, lsd_load_report *report);

#endif
