/* The adapter set: named adapters on one model, their weights, enable/disable, remove, info. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "lora/lora.h"

void lsd_lora_params_init(lsd_lora_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->rank = 4;
    p->alpha = 0.0f; /* = rank; also what a loaded file without alpha gets */
    p->targets = LSD_TARGET_UNET_ATTN;
    p->conv_rank = 0;    /* = rank */
    p->conv_alpha = 0.0f; /* = conv_rank */
    p->init = LSD_LORA_INIT_KOHYA;
    p->weight = 1.0f;
    p->te_weight = NAN;
}

lsd_status lsdi_lora_params_read(const lsd_lora_params *in, lsd_lora_params *out)
{
    lsd_lora_params_init(out);
    if (in)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_LORA_PARAMS, in, out, "lora params"));
    if (out->rank <= 0 || out->rank > 65536)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lora params: rank %d is not in 1..65536", out->rank);
    if (out->conv_rank < 0 || out->conv_rank > 65536)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lora params: conv_rank %d is not in 0..65536", out->conv_rank);
    if (!isfinite(out->alpha) || !isfinite(out->conv_alpha))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lora params: alpha and conv_alpha must be finite");
    if (!isfinite(out->weight) || isinf(out->te_weight))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lora params: weight must be finite, te_weight finite or NAN");
    if (out->init != LSD_LORA_INIT_KOHYA && out->init != LSD_LORA_INIT_GAUSSIAN)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lora params: init %d is not KOHYA or GAUSSIAN", (int)out->init);
    if (isnan(out->te_weight))
        out->te_weight = out->weight;
    return LSD_OK;
}

static const char *const format_names[] = {"auto", "kohya", "peft", "diffusers", "attn_procs"};

const char *lsd_lora_format_name(lsd_lora_format f)
{
    if ((int)f < 0 || (size_t)f >= sizeof format_names / sizeof format_names[0])
        return "unknown";
    return format_names[f];
}

lsd_status lsd_lora_format_from_name(const char *name, lsd_lora_format *out)
{
    if (!name || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_lora_format_from_name: name or out is NULL");
    for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++)
        if (!strcmp(name, format_names[i])) {
            *out = (lsd_lora_format)i;
            return LSD_OK;
        }
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                      "unknown LoRA format \"%s\" (expected auto, kohya, peft, diffusers or attn_procs)", name);
}

static lsd_status adapter_set_new(lsd_model *model, lsd_adapter_set **out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_new: out is NULL");
    *out = NULL;
    if (!model)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_new: model is NULL");
    lsd_adapter_set *set = calloc(1, sizeof *set);
    if (!set)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "adapter set");
    lsdi_ref_init(&set->ref);
    set->model = lsdi_model_retain(model);
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        const lsdi_params *p = lsdi_lora_net_params(model, net);
        set->n_layers[net] = p ? p->n_mods : 0;
        if (!set->n_layers[net])
            continue;
        set->layers[net] = calloc((size_t)set->n_layers[net], sizeof(lsdi_lora_layer));
        if (!set->layers[net]) {
            lsd_adapter_set_free(set);
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "adapter set hooks");
        }
    }
    *out = set;
    return LSD_OK;
}

lsd_status lsd_adapter_set_new(lsd_model *model, lsd_adapter_set **out)
{
    return lsdi_model_record(model, adapter_set_new(model, out));
}

void lsdi_adapter_free(lsdi_adapter *ad)
{
    if (!ad)
        return;
    for (int i = 0; i < ad->n_mods; i++) {
        lsdt_free(ad->mods[i].down);
        lsdt_free(ad->mods[i].up);
        lsdt_free(ad->mods[i].mid);
        for (int r = 0; r < LSDI_ROLE_COUNT; r++)
            lsdt_free(ad->mods[i].t[r]);
    }
    free(ad->mods);
    free(ad->name);
    free(ad);
}

static void detach_all(lsdi_adapter *ad)
{
    for (int i = 0; i < ad->n_mods; i++)
        if (ad->mods[i].layer)
            lsdi_lora_layer_detach(ad->mods[i].layer, ad);
}

LSDI_DEFINE_LAST_ERROR(adapter_set, lsd_adapter_set)

lsd_adapter_set *lsdi_adapter_set_retain(lsd_adapter_set *set)
{
    lsdi_ref_retain(&set->ref);
    return set;
}

/* The hooks come off the model's layers before the set's reference to the model goes. */
void lsd_adapter_set_free(lsd_adapter_set *set)
{
    if (!set || !lsdi_ref_release(&set->ref))
        return;
    if (set->fused)
        lsd_adapter_set_unfuse(set);
    for (int i = 0; i < set->n; i++) {
        detach_all(set->ad[i]);
        lsdi_adapter_free(set->ad[i]);
    }
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        for (int i = 0; i < set->n_layers[net]; i++) {
            lsdi_lora_layer *l = &set->layers[net][i];
            if (l->set) {
                const lsdi_module *mod = &lsdi_lora_net_params(set->model, net)->mods[i];
                lsdi_lora_hook **slot = lsdi_lora_module_hook_slot(mod);
                if (*slot == &l->hook)
                    *slot = NULL;
            }
            free(l->e);
            lsdt_free(l->orig_weight);
            lsdt_free(l->orig_bias);
        }
        free(set->layers[net]);
    }
    free(set->ad);
    lsd_model_free(set->model);
    free(set);
}

lsdi_adapter *lsdi_adapter_find(const lsd_adapter_set *set, const char *name)
{
    for (int i = 0; i < set->n; i++)
        if (!strcmp(set->ad[i]->name, name))
            return set->ad[i];
    return NULL;
}

lsd_status lsdi_adapter_install(lsd_adapter_set *set, lsdi_adapter *ad)
{
    if (set->n == set->cap) {
        int cap = set->cap ? 2 * set->cap : 4;
        lsdi_adapter **v = realloc(set->ad, (size_t)cap * sizeof *v);
        if (!v) {
            lsdi_adapter_free(ad);
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "adapter list");
        }
        set->ad = v;
        set->cap = cap;
    }
    for (int i = 0; i < ad->n_mods; i++) {
        lsdi_lora_entry *e = &ad->mods[i];
        lsdi_lora_layer *l = e->layer;
        e->layer = NULL;
        lsd_status st = lsdi_lora_layer_attach(l, e);
        if (st != LSD_OK) {
            detach_all(ad);
            lsdi_adapter_free(ad);
            return st;
        }
    }
    set->ad[set->n++] = ad;
    return LSD_OK;
}

static lsd_status find(const lsd_adapter_set *set, const char *name, const char *fn, lsdi_adapter **out)
{
    if (!set)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: adapter set is NULL", fn);
    if (!name)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: adapter name is NULL", fn);
    *out = lsdi_adapter_find(set, name);
    if (!*out)
        return lsdi_error(LSD_ERR_NOT_FOUND, "%s: no adapter named \"%s\" in the set", fn, name);
    return LSD_OK;
}

static lsd_status not_fused(const lsdi_adapter *ad, const char *fn)
{
    if (ad->fused)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: adapter \"%s\" is fused into the base weights; unfuse first",
                          fn, ad->name);
    return LSD_OK;
}

static lsd_status adapter_set_set_weights(lsd_adapter_set *set, const char *name, float weight, float te_weight)
{
    lsdi_adapter *ad;
    LSDI_TRY(find(set, name, "lsd_adapter_set_set_weights", &ad));
    LSDI_TRY(not_fused(ad, "lsd_adapter_set_set_weights"));
    if (!isfinite(weight) || isinf(te_weight))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "lsd_adapter_set_set_weights: weight %g must be finite and te_weight %g finite or NAN",
                          (double)weight, (double)te_weight);
    ad->weight = weight;
    ad->te_weight = isnan(te_weight) ? weight : te_weight;
    return LSD_OK;
}

lsd_status lsd_adapter_set_set_weights(lsd_adapter_set *set, const char *name, float weight, float te_weight)
{
    return lsdi_adapter_set_record(set, adapter_set_set_weights(set, name, weight, te_weight));
}

static lsd_status adapter_set_enable(lsd_adapter_set *set, const char *name, int enabled)
{
    lsdi_adapter *ad;
    LSDI_TRY(find(set, name, "lsd_adapter_set_enable", &ad));
    LSDI_TRY(not_fused(ad, "lsd_adapter_set_enable"));
    ad->enabled = enabled != 0;
    return LSD_OK;
}

lsd_status lsd_adapter_set_enable(lsd_adapter_set *set, const char *name, int enabled)
{
    return lsdi_adapter_set_record(set, adapter_set_enable(set, name, enabled));
}

static lsd_status adapter_set_remove(lsd_adapter_set *set, const char *name)
{
    lsdi_adapter *ad;
    LSDI_TRY(find(set, name, "lsd_adapter_set_remove", &ad));
    LSDI_TRY(not_fused(ad, "lsd_adapter_set_remove"));
    detach_all(ad);
    int j = 0;
    for (int i = 0; i < set->n; i++)
        if (set->ad[i] != ad)
            set->ad[j++] = set->ad[i];
    set->n = j;
    lsdi_adapter_free(ad);
    return LSD_OK;
}

lsd_status lsd_adapter_set_remove(lsd_adapter_set *set, const char *name)
{
    return lsdi_adapter_set_record(set, adapter_set_remove(set, name));
}

int lsd_adapter_set_count(const lsd_adapter_set *set)
{
    return set ? set->n : 0;
}

static lsd_status adapter_set_get_name(const lsd_adapter_set *set, int index, const char **name)
{
    if (!set || !name)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_get_name: %s is NULL", set ? "name" : "set");
    if (index < 0 || index >= set->n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_get_name: index %d is not in 0..%d", index,
                          set->n - 1);
    *name = set->ad[index]->name;
    return LSD_OK;
}

lsd_status lsd_adapter_set_get_name(const lsd_adapter_set *set, int index, const char **name)
{
    return lsdi_adapter_set_record(set, adapter_set_get_name(set, index, name));
}

static lsd_status adapter_set_get_info(const lsd_adapter_set *set, int index, lsd_adapter_info *info)
{
    if (!set)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_get_info: set is NULL");
    LSDI_TRY(lsdi_struct_check_out(LSD_STRUCT_ADAPTER_INFO, info, "lsd_adapter_set_get_info"));
    if (index < 0 || index >= set->n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_get_info: index %d is not in 0..%d", index,
                          set->n - 1);
    const lsdi_adapter *ad = set->ad[index];
    lsd_adapter_info r;
    memset(&r, 0, sizeof r);
    snprintf(r.name, sizeof r.name, "%s", ad->name);
    r.rank = ad->rank;
    r.alpha = ad->alpha;
    r.weight = ad->weight;
    r.te_weight = ad->te_weight;
    r.enabled = ad->enabled;
    r.modules = ad->n_mods;
    r.trainable = ad->trainable;
    r.fused = ad->fused;
    lsdi_struct_write(LSD_STRUCT_ADAPTER_INFO, info, &r);
    return LSD_OK;
}

lsd_status lsd_adapter_set_get_info(const lsd_adapter_set *set, int index, lsd_adapter_info *info)
{
    return lsdi_adapter_set_record(set, adapter_set_get_info(set, index, info));
}

lsd_status lsdi_adapter_trainable_params_net(lsd_adapter_set *set, const char *name, int net, lsdt_tensor ***params,
                                             int *n)
{
    lsdi_adapter *ad;
    LSDI_TRY(find(set, name, "trainable params", &ad));
    if (!ad->trainable)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "adapter \"%s\" was loaded from a file, not created with lsd_adapter_set_add", name);
    lsdt_tensor **v = malloc((size_t)ad->n_mods * 2 * sizeof *v + 1);
    if (!v)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "trainable params of \"%s\"", name);
    int k = 0;
    for (int i = 0; i < ad->n_mods; i++) {
        if (net >= 0 && ad->mods[i].layer->net != net)
            continue;
        v[k++] = ad->mods[i].down;
        v[k++] = ad->mods[i].up;
    }
    *params = v;
    *n = k;
    return LSD_OK;
}

lsd_status lsdi_adapter_trainable_params(lsd_adapter_set *set, const char *name, lsdt_tensor ***params, int *n)
{
    return lsdi_adapter_trainable_params_net(set, name, -1, params, n);
}
