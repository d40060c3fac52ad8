/* Saving an adapter: kohya by default (lora_unet_* and lora_te_* names with .alpha tensors, the ss_* metadata kohya
 * and A1111 read and the sshs_* hashes kohya precomputes for them), PEFT (unet.<path>.lora_A.weight) or older
 * diffusers (.lora.down.weight) on request, with alpha in the metadata (a PEFT LoraConfig as JSON under
 * "lora_config", alpha_pattern for modules that differ); in float32, float16 or bfloat16; with the caller's
 * metadata (the trainer's ss_* keys) on top. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "core/pyfmt.h"
#include "io/hash.h"
#include "lora/lora.h"

typedef struct writer {
    lsdt_dtype dtype; /* of every tensor written */
    lsdi_st_entry *ent;
    char **names;
    void **data;
    size_t *nbytes;
    int64_t (*shapes)[4];
    size_t n, cap;
    char **meta_k, **meta_v;
    size_t n_meta, cap_meta;
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
    free(w->nbytes);
    free(w->shapes);
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta_k[i]);
        free(w->meta_v[i]);
    }
    free(w->meta_k);
    free(w->meta_v);
}

static lsd_status reserve(writer *w, size_t cap)
{
    w->ent = calloc(cap, sizeof *w->ent);
    w->names = calloc(cap, sizeof *w->names);
    w->data = calloc(cap, sizeof *w->data);
    w->nbytes = calloc(cap, sizeof *w->nbytes);
    w->shapes = calloc(cap, sizeof *w->shapes);
    w->cap = cap;
    if (!w->ent || !w->names || !w->data || !w->nbytes || !w->shapes)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: tensor list");
    return LSD_OK;
}

static lsdi_st_dtype st_dtype(lsdt_dtype dt)
{
    return dt == LSDT_F16 ? LSDI_ST_F16 : dt == LSDT_BF16 ? LSDI_ST_BF16 : LSDI_ST_F32;
}

/* Tensor t (of any float dtype; 0-dim for kohya's alpha) as name+suffix, converted to the writer's dtype. */
static lsd_status add_tensor(writer *w, const char *name, const char *suffix, const lsdt_tensor *t)
{
    size_t i = w->n;
    size_t numel = (size_t)lsdt_numel(t), nb = numel * lsdt_dtype_size(w->dtype);
    size_t len = strlen(name) + strlen(suffix) + 1;
    if (!(w->names[i] = malloc(len)) || !(w->data[i] = malloc(nb + 1)))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: tensor %s%s", name, suffix);
    w->n++;
    snprintf(w->names[i], len, "%s%s", name, suffix);
    if (lsdt_to_host(t, w->data[i], w->dtype, numel))
        return lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "LoRA save: tensor %s", w->names[i]);
    int nd = lsdt_ndim(t);
    for (int d = 0; d < nd && d < 4; d++)
        w->shapes[i][d] = lsdt_size(t, d);
    w->nbytes[i] = nb;
    w->ent[i] = (lsdi_st_entry){w->names[i], st_dtype(w->dtype), nd, w->shapes[i], w->data[i]};
    return LSD_OK;
}

/* kohya's alpha buffer: a 0-dim tensor, in the save dtype as kohya's save_weights converts the whole state dict. */
static lsd_status add_alpha(writer *w, const char *name, float alpha)
{
    lsdt_tensor *t = lsdt_scalar(NULL, alpha, LSDT_F32, NULL);
    lsd_status st = t ? add_tensor(w, name, ".alpha", t) : lsdi_error_from_shim(lsdt_last_status());
    lsdt_free(t);
    return st;
}

/* Sets key to value, replacing an earlier value of the key. */
static lsd_status meta(writer *w, const char *key, const char *value)
{
    for (size_t i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta_k[i], key)) {
            char *v = strdup(value);
            if (!v)
                return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: metadata");
            free(w->meta_v[i]);
            w->meta_v[i] = v;
            return LSD_OK;
        }
    if (w->n_meta == w->cap_meta) {
        size_t cap = w->cap_meta ? 2 * w->cap_meta : 16;
        char **k = realloc(w->meta_k, cap * sizeof *k);
        if (k)
            w->meta_k = k;
        char **v = k ? realloc(w->meta_v, cap * sizeof *v) : NULL;
        if (!v)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: metadata");
        w->meta_v = v;
        w->cap_meta = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: metadata");
    }
    w->meta_k[w->n_meta] = k;
    w->meta_v[w->n_meta++] = v;
    return LSD_OK;
}

static const lsdi_module *entry_module(const lsd_adapter_set *set, const lsdi_lora_entry *e)
{
    return &lsdi_lora_net_params(set->model, e->layer->net)->mods[e->layer->module];
}

/* lyco: LoHa/LoKr/full/DoRA modules, which LyCORIS (its kohya network module) reads. */
static lsd_status kohya_meta(writer *w, const lsd_adapter_set *set, const lsdi_adapter *ad, int tucker, int lyco)
{
    const lsd_model *m = set->model;
    char buf[160];
    snprintf(buf, sizeof buf, "%d", ad->rank);
    LSDI_TRY(meta(w, "ss_network_dim", buf));
    lsdi_py_float(ad->alpha, 1, buf, sizeof buf);
    LSDI_TRY(meta(w, "ss_network_alpha", buf));
    LSDI_TRY(meta(w, "ss_network_module", tucker || lyco ? "lycoris.kohya" : "networks.lora"));
    LSDI_TRY(meta(w, "ss_base_model_version", "sd_v1"));
    LSDI_TRY(meta(w, "ss_v2", "False"));
    if (m->source_name[0])
        LSDI_TRY(meta(w, "ss_sd_model_name", m->source_name));
    if (m->legacy_hash[0])
        LSDI_TRY(meta(w, "ss_sd_model_hash", m->legacy_hash));
    if (m->sha256[0])
        LSDI_TRY(meta(w, "ss_new_sd_model_hash", m->sha256));
    if (ad->conv_rank) {
        char a[48];
        lsdi_py_float(ad->conv_alpha, 1, a, sizeof a);
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
    lsdi_py_float(ad->alpha, 1, a, sizeof a);
    return st == LSD_OK ? meta(w, "lora_alpha", a) : st;
}

/* A LyCORIS module (LoHa, LoKr, full diff) or DoRA: only kohya-style names carry those. */
static int lycoris(const lsdi_lora_entry *e)
{
    return e->kind != LSDI_KIND_LORA || e->t[LSDI_ROLE_DORA_SCALE];
}

/* A loaded LyCORIS module's tensors back under their names (kohya.c's suffixes), alpha where the scale reads it. */
static lsd_status add_lycoris(writer *w, const char *k, const lsdi_lora_entry *e)
{
    lsd_status st = LSD_OK;
    if (e->kind == LSDI_KIND_LORA) {
        st = add_tensor(w, k, ".lora_down.weight", e->down);
        if (st == LSD_OK)
            st = add_tensor(w, k, ".lora_up.weight", e->up);
        if (st == LSD_OK && e->mid)
            st = add_tensor(w, k, ".lora_mid.weight", e->mid);
    }
    for (int r = LSDI_ROLE_ALPHA + 1; r < LSDI_ROLE_COUNT && st == LSD_OK; r++)
        if (e->t[r])
            st = add_tensor(w, k, lsdi_kohya_suffix(r), e->t[r]);
    if (st == LSD_OK && (e->rank || e->alpha != 0.0f))
        st = add_alpha(w, k, e->alpha);
    return st;
}

static lsd_status fill(writer *w, const lsd_adapter_set *set, const lsdi_adapter *ad, lsd_lora_format fmt)
{
    static const char *const prefix[LSDI_NET_COUNT] = {"unet.", "text_encoder."};
    lsdi_kohya_names *kn = NULL;
    int tucker = 0;
    const lsdi_lora_entry *lyco = NULL;
    for (int i = 0; i < ad->n_mods; i++) {
        tucker |= ad->mods[i].mid != NULL;
        if (!lyco && lycoris(&ad->mods[i]))
            lyco = &ad->mods[i];
    }
    if (tucker && fmt != LSD_LORA_FORMAT_KOHYA)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "adapter \"%s\" has Tucker (lora_mid) convs, which only the kohya "
                          "format can hold", ad->name);
    if (lyco && fmt != LSD_LORA_FORMAT_KOHYA)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "adapter \"%s\" has LyCORIS modules (module '%s': %s), which only the "
                          "kohya format can hold", ad->name, entry_module(set, lyco)->name,
                          lyco->kind == LSDI_KIND_LOHA   ? "LoHa"
                          : lyco->kind == LSDI_KIND_LOKR ? "LoKr"
                          : lyco->kind == LSDI_KIND_FULL ? "full diff"
                                                         : "DoRA");
    if (fmt == LSD_LORA_FORMAT_KOHYA)
        LSDI_TRY(lsdi_kohya_names_new(set->model, &kn));
    lsd_status st = reserve(w, (size_t)ad->n_mods * LSDI_ROLE_COUNT);
    for (int i = 0; i < ad->n_mods && st == LSD_OK; i++) {
        const lsdi_lora_entry *e = &ad->mods[i];
        int net = e->layer->net;
        if (fmt == LSD_LORA_FORMAT_KOHYA) {
            const char *k = lsdi_kohya_name(kn, net, e->layer->module);
            if (lycoris(e)) {
                st = add_lycoris(w, k, e);
                continue;
            }
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
        st = fmt == LSD_LORA_FORMAT_KOHYA ? kohya_meta(w, set, ad, tucker, lyco != NULL) : peft_meta(w, set, ad);
    lsdi_kohya_names_free(kn);
    return st;
}

static int by_key(const void *a, const void *b)
{
    return strcmp(**(char *const *const *)a, **(char *const *const *)b);
}

/* Metadata in key order (readers sort anyway; a fixed order makes the file a function of its content). */
static lsd_status sort_meta(writer *w)
{
    char ***pairs = malloc((w->n_meta + 1) * sizeof *pairs);
    char **k = malloc((w->n_meta + 1) * sizeof *k), **v = malloc((w->n_meta + 1) * sizeof *v);
    if (!pairs || !k || !v) {
        free(pairs);
        free(k);
        free(v);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: metadata");
    }
    for (size_t i = 0; i < w->n_meta; i++)
        pairs[i] = &w->meta_k[i];
    qsort(pairs, w->n_meta, sizeof *pairs, by_key);
    for (size_t i = 0; i < w->n_meta; i++) {
        k[i] = *pairs[i];
        v[i] = w->meta_v[pairs[i] - w->meta_k];
    }
    free(pairs);
    free(w->meta_k);
    free(w->meta_v);
    w->meta_k = k;
    w->meta_v = v;
    w->cap_meta = w->n_meta + 1;
    return LSD_OK;
}

/* kohya's train_util.precalculate_safetensors_hashes: the file serialised with only the ss_* metadata, then
 * sshs_model_hash = sha256 of its bytes after the header (A1111's addnet_hash_safetensors; the data alone, so
 * the real file gives the same) and sshs_legacy_hash = the first 8 hex digits of the sha256 of its 0x10000 bytes at
 * 0x100000 (addnet_hash_legacy; of fewer or no bytes when the file is shorter). */
static lsd_status add_sshs(writer *w, const char *path)
{
    const char **k = malloc((w->n_meta + 1) * sizeof *k), **v = malloc((w->n_meta + 1) * sizeof *v);
    const void **parts = malloc((w->n + 2) * sizeof *parts);
    size_t *lens = malloc((w->n + 2) * sizeof *lens), n_ss = 0;
    char *header = NULL;
    lsd_status st = k && v && parts && lens ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "LoRA save: hashes");
    for (size_t i = 0; st == LSD_OK && i < w->n_meta; i++)
        if (!strncmp(w->meta_k[i], "ss_", 3)) {
            k[n_ss] = w->meta_k[i];
            v[n_ss++] = w->meta_v[i];
        }
    if (st == LSD_OK)
        st = lsdi_st_header(path, w->ent, w->n, k, v, n_ss, &header);
    char model[65], legacy[65];
    if (st == LSD_OK) {
        size_t hlen = strlen(header);
        unsigned char len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
        parts[0] = len8;
        lens[0] = 8;
        parts[1] = header;
        lens[1] = hlen;
        for (size_t i = 0; i < w->n; i++) {
            parts[2 + i] = w->data[i];
            lens[2 + i] = w->nbytes[i];
        }
        st = lsdi_sha256_range(parts, lens, (int)w->n + 2, 8 + hlen, UINT64_MAX, model);
        if (st == LSD_OK)
            st = lsdi_sha256_range(parts, lens, (int)w->n + 2, 0x100000, 0x10000, legacy);
    }
    free(header);
    free(k);
    free(v);
    free(parts);
    free(lens);
    if (st == LSD_OK)
        st = meta(w, "sshs_model_hash", model);
    legacy[8] = 0;
    if (st == LSD_OK)
        st = meta(w, "sshs_legacy_hash", legacy);
    return st;
}

void lsd_lora_save_params_init(lsd_lora_save_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->format = LSD_LORA_FORMAT_KOHYA;
    p->dtype = LSD_F32;
}

/* The adapter's own dtype, as lsd_adapter_set_save has always written it. */
static lsd_dtype adapter_dtype(const lsd_adapter_set *set)
{
    lsdt_dtype dt = set->model->tdtype;
    return dt == LSDT_F16 ? LSD_F16 : dt == LSDT_BF16 ? LSD_BF16 : LSD_F32;
}

static lsd_status adapter_set_save(const lsd_adapter_set *set, const char *name, const char *path,
                                   lsd_lora_format format)
{
    if (!set)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_save: set is NULL");
    lsd_lora_save_params p;
    lsd_lora_save_params_init(&p);
    p.format = format;
    p.dtype = adapter_dtype(set);
    return lsd_adapter_set_save_ex(set, name, path, &p);
}

lsd_status lsd_adapter_set_save(const lsd_adapter_set *set, const char *name, const char *path,
                                lsd_lora_format format)
{
    return lsdi_adapter_set_record(set, adapter_set_save(set, name, path, format));
}

static lsd_status adapter_set_save_ex(const lsd_adapter_set *set, const char *name, const char *path,
                                      const lsd_lora_save_params *params)
{
    const char *fn = "lsd_adapter_set_save";
    if (!set || !name || !path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: set, name or path is NULL", fn);
    lsd_lora_save_params p;
    lsd_lora_save_params_init(&p);
    if (params)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_LORA_SAVE_PARAMS, params, &p, fn));
    const lsdi_adapter *ad = lsdi_adapter_find(set, name);
    if (!ad)
        return lsdi_error(LSD_ERR_NOT_FOUND, "%s: no adapter named \"%s\" in the set", fn, name);
    if (p.format == LSD_LORA_FORMAT_AUTO)
        p.format = LSD_LORA_FORMAT_KOHYA;
    if (p.format != LSD_LORA_FORMAT_KOHYA && p.format != LSD_LORA_FORMAT_PEFT && p.format != LSD_LORA_FORMAT_DIFFUSERS)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: cannot write the %s format (kohya, peft or diffusers)", fn,
                          lsd_lora_format_name(p.format));
    if (p.dtype != LSD_F32 && p.dtype != LSD_F16 && p.dtype != LSD_BF16)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: dtype %d is not LSD_F32, LSD_F16 or LSD_BF16", fn,
                          (int)p.dtype);
    if (p.n_metadata && (!p.metadata_keys || !p.metadata_values))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %zu metadata entries but no keys or values", fn,
                          p.n_metadata);
    writer w;
    memset(&w, 0, sizeof w);
    w.dtype = lsdi_dtype_to_shim(p.dtype);
    lsd_status st = fill(&w, set, ad, p.format);
    for (size_t i = 0; i < p.n_metadata && st == LSD_OK; i++) {
        if (!p.metadata_keys[i] || !p.metadata_values[i])
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: metadata entry %zu (\"%s\") is NULL", fn, i,
                            p.metadata_keys[i] ? p.metadata_keys[i] : "(null)");
        else
            st = meta(&w, p.metadata_keys[i], p.metadata_values[i]);
    }
    if (st == LSD_OK)
        st = sort_meta(&w);
    if (st == LSD_OK && p.format == LSD_LORA_FORMAT_KOHYA && (st = add_sshs(&w, path)) == LSD_OK)
        st = sort_meta(&w);
    if (st == LSD_OK)
        st = lsdi_st_write(path, w.ent, w.n, (const char *const *)w.meta_k, (const char *const *)w.meta_v, w.n_meta);
    writer_free(&w);
    if (st == LSD_OK)
        lsdi_log(LSD_LOG_INFO, "saved LoRA \"%s\" (%d modules, %s, %s) to %s", name, ad->n_mods,
                 lsd_lora_format_name(p.format), lsd_dtype_name(p.dtype), path);
    return st;
}

lsd_status lsd_adapter_set_save_ex(const lsd_adapter_set *set, const char *name, const char *path,
                                   const lsd_lora_save_params *params)
{
    return lsdi_adapter_set_record(set, adapter_set_save_ex(set, name, path, params));
}
