/* Saving an adapter: kohya by default (lora_unet_* and lora_te_* names with .alpha tensors and the ss_* metadata kohya and
 * A1111 read), PEFT (unet.<path>.lora_A.weight) or older diffusers (.lora.down.weight) on request, with alpha in
 * the metadata (a PEFT LoraConfig as JSON under "lora_config", alpha_pattern for modules that differ). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "lora/lora.h"

#define MAX_META 8

typedef struct writer {
    lsdi_st_entry *ent;
    char **names;
    void **data;
    int64_t (*shapes)[4];
    size_t n, cap;
    const char *meta_k[MAX_META];
    char *meta_v[MAX_META];
    size_t n_meta;
} writer;

static void writer_free(writer *w)
{
    for (size_t i = 0; i < w->n; i++) {
        free(w->names[i]);
        free(w->data[i]);
    }
    free(w->ent);
    free(w->names);
    free(w->data);
    free(w->shapes);
    for (size_t i = 0; i < w->n_meta; i++)
        free(w->meta_v[i]);
}

static lsd_status reserve(writer *w, size_t cap)
{
    w->ent = calloc(cap, sizeof *w->ent);
    w->names = calloc(cap, sizeof *w->names);
    w->data = calloc(cap, sizeof *w->data);
    w->shapes = calloc(cap, sizeof *w->shapes);
    w->cap = cap;
    if (!w->ent || !w->names || !w->data || !w->shapes)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: tensor list");
    return LSD_OK;
}

static lsdi_st_dtype st_dtype(lsdt_dtype dt)
{
    return dt == LSDT_F16 ? LSDI_ST_F16 : dt == LSDT_BF16 ? LSDI_ST_BF16 : LSDI_ST_F32;
}

static lsd_status add_tensor(writer *w, const char *name, const char *suffix, const lsdt_tensor *t)
{
    size_t i = w->n;
    lsdt_dtype dt = lsdt_get_dtype(t);
    lsdt_dtype out = dt == LSDT_F16 || dt == LSDT_BF16 ? dt : LSDT_F32;
    size_t numel = (size_t)lsdt_numel(t);
    size_t len = strlen(name) + strlen(suffix) + 1;
    if (!(w->names[i] = malloc(len)) || !(w->data[i] = malloc(numel * lsdt_dtype_size(out) + 1)))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: tensor %s%s", name, suffix);
    w->n++;
    snprintf(w->names[i], len, "%s%s", name, suffix);
    if (lsdt_to_host(t, w->data[i], out, numel))
        return lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "LoRA save: tensor %s", w->names[i]);
    int nd = lsdt_ndim(t);
    for (int d = 0; d < nd && d < 4; d++)
        w->shapes[i][d] = lsdt_size(t, d);
    w->ent[i] = (lsdi_st_entry){w->names[i], st_dtype(out), nd, w->shapes[i], w->data[i]};
    return LSD_OK;
}

static lsd_status add_alpha(writer *w, const char *name, float alpha)
{
    size_t i = w->n;
    size_t len = strlen(name) + 7;
    if (!(w->names[i] = malloc(len)) || !(w->data[i] = malloc(sizeof(float))))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: alpha of %s", name);
    w->n++;
    snprintf(w->names[i], len, "%s.alpha", name);
    memcpy(w->data[i], &alpha, sizeof alpha);
    w->ent[i] = (lsdi_st_entry){w->names[i], LSDI_ST_F32, 0, w->shapes[i], w->data[i]};
    return LSD_OK;
}

static lsd_status meta(writer *w, const char *key, const char *value)
{
    if (w->n_meta == MAX_META || !(w->meta_v[w->n_meta] = strdup(value)))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: metadata");
    w->meta_k[w->n_meta++] = key;
    return LSD_OK;
}

/* Python's repr of a float for whole numbers ("2.0"), as kohya writes ss_network_alpha. */
static void float_str(float v, char *buf, size_t n)
{
    snprintf(buf, n, "%.9g", (double)v);
    if (!strpbrk(buf, ".eni"))
        snprintf(buf + strlen(buf), n - strlen(buf), ".0");
}

static const lsdi_module *entry_module(const lsd_adapter_set *set, const lsdi_lora_entry *e)
{
    return &lsdi_lora_net_params(set->model, e->layer->net)->mods[e->layer->module];
}

static lsd_status kohya_meta(writer *w, const lsd_adapter_set *set, const lsdi_adapter *ad, int tucker)
{
    char buf[160];
    snprintf(buf, sizeof buf, "%d", ad->rank);
    LSDI_TRY(meta(w, "ss_network_dim", buf));
    float_str(ad->alpha, buf, sizeof buf);
    LSDI_TRY(meta(w, "ss_network_alpha", buf));
    LSDI_TRY(meta(w, "ss_network_module", tucker ? "lycoris.kohya" : "networks.lora"));
    LSDI_TRY(meta(w, "ss_base_model_version", "sd_v1"));
    LSDI_TRY(meta(w, "ss_v2", "False"));
    if (set->model->hash[0])
        LSDI_TRY(meta(w, "ss_sd_model_hash", set->model->hash));
    if (set->model->name[0])
        LSDI_TRY(meta(w, "ss_sd_model_name", set->model->name));
    if (ad->conv_rank) {
        char a[48];
        float_str(ad->conv_alpha, a, sizeof a);
        snprintf(buf, sizeof buf, "{\"conv_dim\": \"%d\", \"conv_alpha\": \"%s\"%s}", ad->conv_rank, a,
                 tucker ? ", \"use_tucker\": \"True\"" : "");
        LSDI_TRY(meta(w, "ss_network_args", buf));
    }
    return LSD_OK;
}

/* {"r": R, "lora_alpha": A, "alpha_pattern": {"unet.<path>": a, ...}} for the modules whose alpha is not A. */
static lsd_status peft_meta(writer *w, const lsd_adapter_set *set, const lsdi_adapter *ad)
{
    static const char *const prefix[LSDI_NET_COUNT] = {"unet.", "text_encoder."};
    cJSON *root = cJSON_CreateObject(), *pat = cJSON_CreateObject();
    int ok = root && pat && cJSON_AddNumberToObject(root, "r", ad->rank) &&
             cJSON_AddNumberToObject(root, "lora_alpha", ad->alpha);
    for (int i = 0; ok && i < ad->n_mods; i++) {
        const lsdi_lora_entry *e = &ad->mods[i];
        if (e->alpha == ad->alpha)
            continue;
        char key[640];
        snprintf(key, sizeof key, "%s%s", prefix[e->layer->net], entry_module(set, e)->name);
        ok = cJSON_AddNumberToObject(pat, key, e->alpha) != NULL;
    }
    if (ok)
        ok = cJSON_AddItemToObject(root, "alpha_pattern", pat);
    else
        cJSON_Delete(pat);
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!json)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: lora_config metadata");
    lsd_status st = meta(w, "lora_config", json);
    cJSON_free(json);
    char a[48];
    float_str(ad->alpha, a, sizeof a);
    return st == LSD_OK ? meta(w, "lora_alpha", a) : st;
}

static lsd_status fill(writer *w, const lsd_adapter_set *set, const lsdi_adapter *ad, lsd_lora_format fmt)
{
    static const char *const prefix[LSDI_NET_COUNT] = {"unet.", "text_encoder."};
    lsdi_kohya_names *kn = NULL;
    int tucker = 0;
    for (int i = 0; i < ad->n_mods; i++)
        tucker |= ad->mods[i].mid != NULL;
    if (tucker && fmt != LSD_LORA_FORMAT_KOHYA)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "adapter \"%s\" has Tucker (lora_mid) convs, which only the kohya "
                          "format can hold", ad->name);
    if (fmt == LSD_LORA_FORMAT_KOHYA)
        LSDI_TRY(lsdi_kohya_names_new(set->model, &kn));
    lsd_status st = reserve(w, (size_t)ad->n_mods * 4);
    for (int i = 0; i < ad->n_mods && st == LSD_OK; i++) {
        const lsdi_lora_entry *e = &ad->mods[i];
        int net = e->layer->net;
        if (fmt == LSD_LORA_FORMAT_KOHYA) {
            const char *k = lsdi_kohya_name(kn, net, e->layer->module);
            st = add_tensor(w, k, ".lora_down.weight", e->down);
            if (st == LSD_OK)
                st = add_tensor(w, k, ".lora_up.weight", e->up);
            if (st == LSD_OK && e->mid)
                st = add_tensor(w, k, ".lora_mid.weight", e->mid);
            if (st == LSD_OK)
                st = add_alpha(w, k, e->alpha);
            continue;
        }
        char base[640];
        snprintf(base, sizeof base, "%s%s", prefix[net], entry_module(set, e)->name);
        const char *down = fmt == LSD_LORA_FORMAT_PEFT ? ".lora_A.weight"
                           : net == LSDI_NET_UNET     ? ".lora.down.weight"
                                                      : ".lora_linear_layer.down.weight";
        const char *up = fmt == LSD_LORA_FORMAT_PEFT ? ".lora_B.weight"
                         : net == LSDI_NET_UNET     ? ".lora.up.weight"
                                                    : ".lora_linear_layer.up.weight";
        st = add_tensor(w, base, down, e->down);
        if (st == LSD_OK)
            st = add_tensor(w, base, up, e->up);
    }
    if (st == LSD_OK)
        st = fmt == LSD_LORA_FORMAT_KOHYA ? kohya_meta(w, set, ad, tucker) : peft_meta(w, set, ad);
    lsdi_kohya_names_free(kn);
    return st;
}

lsd_status lsd_adapter_set_save(const lsd_adapter_set *set, const char *name, const char *path,
                                lsd_lora_format format)
{
    if (!set || !name || !path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_save: set, name or path is NULL");
    const lsdi_adapter *ad = lsdi_adapter_find(set, name);
    if (!ad)
        return lsdi_error(LSD_ERR_NOT_FOUND, "lsd_adapter_set_save: no adapter named \"%s\" in the set", name);
    if (format == LSD_LORA_FORMAT_AUTO)
        format = LSD_LORA_FORMAT_KOHYA;
    if (format != LSD_LORA_FORMAT_KOHYA && format != LSD_LORA_FORMAT_PEFT && format != LSD_LORA_FORMAT_DIFFUSERS)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "lsd_adapter_set_save: cannot write the %s format (kohya, peft or "
                          "diffusers)", lsd_lora_format_name(format));
    writer w;
    memset(&w, 0, sizeof w);
    lsd_status st = fill(&w, set, ad, format);
    if (st == LSD_OK)
        st = lsdi_st_write(path, w.ent, w.n, w.meta_k, (const char *const *)w.meta_v, w.n_meta);
    writer_free(&w);
    if (st == LSD_OK)
        lsdi_log(LSD_LOG_INFO, "saved LoRA \"%s\" (%d modules, %s) to %s", name, ad->n_mods,
                 lsd_lora_format_name(format), path);
    return st;
}
