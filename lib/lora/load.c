/* Loading a LoRA file into an adapter set: detect the layout, map every key to a module of the model, check every
 * shape against its layer, then build the adapter (nothing is attached unless the whole file is valid). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "lora/lora.h"

typedef lsdi_lora_pending pending;

typedef struct loader {
    lsd_adapter_set *set;
    const lsd_model *m;
    lsdi_st_file *f;
    const char *path;
    lsd_lora_format format;
    lsdi_kohya_names *kohya;
    pending *pend[LSDI_NET_COUNT];
    int matched, unmatched, applied, applied_net[LSDI_NET_COUNT];
    int kinds[LSDI_KIND_FULL + 1], dora;
    char first_unmatched[256];
    char why_unmatched[320]; /* the first unmatched key's module, when its name has one */
} loader;

static int parse_key(const loader *ld, const char *name, lsdi_lora_key *key)
{
    if (ld->format == LSD_LORA_FORMAT_KOHYA)
        return lsdi_kohya_parse(ld->kohya, name, key);
    return lsdi_peft_parse(ld->m, name, key) || lsdi_diffusers_parse(ld->m, name, key) ||
           lsdi_attn_procs_parse(ld->m, name, key);
}

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t n)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

lsd_status lsdi_lora_mismatch(const char *path, const lsdi_st_tensor *t, const lsdi_module *mod, const int64_t *want,
                              int want_ndim)
{
    char got[96], exp[96], base[96];
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    int64_t bs[4] = {out, in, k, k};
    shape_str(t->shape, t->ndim, got, sizeof got);
    shape_str(want, want_ndim, exp, sizeof exp);
    shape_str(bs, mod->kind == LSDI_MOD_LINEAR ? 2 : 4, base, sizeof base);
    return lsdi_error(LSD_ERR_SHAPE_MISMATCH,
                      "%s: tensor '%s' has shape %s, but this model's module '%s' (weight %s) needs %s "
                      "(a LoRA made for another architecture?)",
                      path, t->name, got, mod->name, base, exp);
}

static lsd_status mismatch(const loader *ld, const lsdi_st_tensor *t, const lsdi_module *mod, const int64_t *want,
                           int want_ndim)
{
    return lsdi_lora_mismatch(ld->path, t, mod, want, want_ndim);
}

lsd_status lsdi_lora_missing(const char *path, const lsdi_lora_pending *p, const lsdi_st_tensor *have,
                             const lsdi_module *mod, int missing)
{
    for (int r = 0; r < LSDI_ROLE_COUNT && !have; r++) /* a weight tensor rather than alpha or dora_scale */
        if (r != LSDI_ROLE_ALPHA && r != LSDI_ROLE_DORA_SCALE)
            have = p->t[r];
    for (int r = 0; r < LSDI_ROLE_COUNT && !have; r++)
        have = p->t[r];
    return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' has no matching '%s' tensor for module '%s'", path,
                      have ? have->name : "?", lsdi_kohya_suffix(missing) + 1, mod->name);
}

static int is_float(lsdi_st_dtype dt)
{
    return dt == LSDI_ST_F32 || dt == LSDI_ST_F16 || dt == LSDI_ST_BF16 || dt == LSDI_ST_F64;
}

/* Checks one tensor against the layer it names; the rank is whatever the tensor says (checked across the
 * module's tensors later). */
static lsd_status check_tensor(const loader *ld, const lsdi_st_tensor *t, const lsdi_module *mod, int role)
{
    if (role == LSDI_ROLE_ALPHA) {
        float a = 0.0f;
        if (t->numel == 1)
            lsdi_st_to_f32(t, &a);
        if (t->numel != 1 || !isfinite(a))
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' (an alpha) must hold one finite number (%llu elements)",
                              ld->path, t->name, (unsigned long long)t->numel);
        return LSD_OK;
    }
    if (!is_float(t->dtype))
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' has dtype %s; LoRA tensors must be floating point",
                          ld->path, t->name, lsdi_st_dtype_name(t->dtype));
    if (role > LSDI_ROLE_ALPHA) {
        /* LyCORIS tensors: their shapes are checked per kind, once the module's tensors are all known */
        if (t->ndim < 1 || t->ndim > 4)
            return lsdi_error(LSD_ERR_SHAPE_MISMATCH, "%s: tensor '%s' has %d dimensions (module '%s'); LyCORIS "
                              "tensors have 1 to 4", ld->path, t->name, t->ndim, mod->name);
        return LSD_OK;
    }
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    const int64_t *s = t->shape;
    int64_t r = t->ndim >= 2 ? (role == LSDI_ROLE_UP ? s[1] : s[0]) : 1;
    if (r < 1)
        r = 1;
    if (role == LSDI_ROLE_DOWN) {
        int ok = t->ndim == 2 ? k == 1 && s[1] == in
                              : t->ndim == 4 && s[1] == in && ((s[2] == k && s[3] == k) || (s[2] == 1 && s[3] == 1));
        if (!ok || s[0] < 1) {
            int64_t want[4] = {r, in, k, k};
            return mismatch(ld, t, mod, want, mod->kind == LSDI_MOD_LINEAR ? 2 : 4);
        }
    } else if (role == LSDI_ROLE_UP) {
        int ok = (t->ndim == 2 || (t->ndim == 4 && s[2] == 1 && s[3] == 1)) && s[0] == out && s[1] >= 1;
        if (!ok) {
            int64_t want[4] = {out, r, 1, 1};
            return mismatch(ld, t, mod, want, mod->kind == LSDI_MOD_LINEAR ? 2 : 4);
        }
    } else {
        int ok = mod->kind == LSDI_MOD_CONV && t->ndim == 4 && s[0] >= 1 && s[1] >= 1 && s[2] == k && s[3] == k;
        if (!ok) {
            int64_t want[4] = {r, r, k, k};
            return mismatch(ld, t, mod, want, 4);
        }
    }
    return LSD_OK;
}

static lsd_status scan(loader *ld)
{
    for (size_t i = 0; i < lsdi_st_count(ld->f); i++) {
        const lsdi_st_tensor *t = lsdi_st_at(ld->f, i);
        lsdi_lora_key key;
        if (!parse_key(ld, t->name, &key)) {
            if (!ld->unmatched++) {
                snprintf(ld->first_unmatched, sizeof ld->first_unmatched, "%s", t->name);
                if (ld->kohya)
                    lsdi_kohya_explain(ld->kohya, ld->m, t->name, ld->why_unmatched, sizeof ld->why_unmatched);
            }
            continue;
        }
        ld->matched++;
        const lsdi_module *mod = &lsdi_lora_net_params(ld->m, key.net)->mods[key.module];
        LSDI_TRY(check_tensor(ld, t, mod, key.role));
        pending *p = &ld->pend[key.net][key.module];
        if (p->t[key.role])
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensors '%s' and '%s' both give the same part of module '%s'",
                              ld->path, p->t[key.role]->name, t->name, mod->name);
        p->t[key.role] = t;
        p->used = 1;
    }
    return LSD_OK;
}

/* Ranks agree between down, mid and up; a Tucker down is 1x1 and needs a mid, a plain conv down has the kernel. */
static lsd_status check_lora(const loader *ld, const pending *p, const lsdi_module *mod)
{
    const lsdi_st_tensor *d = p->t[LSDI_ROLE_DOWN], *u = p->t[LSDI_ROLE_UP], *mid = p->t[LSDI_ROLE_MID];
    if (!d || !u) {
        const lsdi_st_tensor *have = d     ? d
                                     : u   ? u
                                     : mid ? mid
                                     : p->t[LSDI_ROLE_ALPHA] ? p->t[LSDI_ROLE_ALPHA]
                                                             : p->t[LSDI_ROLE_DORA_SCALE];
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' has no matching %s tensor for module '%s'", ld->path,
                          have->name, d ? "up (B)" : "down (A)", mod->name);
    }
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    int64_t r = d->shape[0];
    int64_t r_mid_out = mid ? mid->shape[0] : r;
    if (mid && mid->shape[1] != r) {
        int64_t want[4] = {r_mid_out, r, k, k};
        return mismatch(ld, mid, mod, want, 4);
    }
    if (u->shape[1] != r_mid_out) {
        int64_t want[4] = {out, r_mid_out, 1, 1};
        return mismatch(ld, u, mod, want, u->ndim);
    }
    if (k > 1 && !mid && d->shape[2] != k) {
        int64_t want[4] = {r, in, k, k};
        return mismatch(ld, d, mod, want, 4);
    }
    if (mid && (d->ndim != 4 || d->shape[2] != 1)) {
        int64_t want[4] = {r, in, 1, 1};
        return mismatch(ld, d, mod, want, 4);
    }
    return LSD_OK;
}

static int role_kind(int role)
{
    if (role <= LSDI_ROLE_MID)
        return LSDI_KIND_LORA;
    if (role >= LSDI_ROLE_HADA_W1_A && role <= LSDI_ROLE_HADA_T2)
        return LSDI_KIND_LOHA;
    if (role >= LSDI_ROLE_LOKR_W1 && role <= LSDI_ROLE_LOKR_T2)
        return LSDI_KIND_LOKR;
    if (role == LSDI_ROLE_DIFF || role == LSDI_ROLE_DIFF_B)
        return LSDI_KIND_FULL;
    return -1; /* alpha, dora_scale: any kind */
}

static const char *const kind_names[] = {"LoRA", "LoHa", "LoKr", "full diff"};

/* The module's kind from its tensors; one module holds one kind. */
static lsd_status module_kind(const loader *ld, const pending *p, const lsdi_module *mod, int *kind)
{
    int first = -1;
    *kind = LSDI_KIND_LORA; /* alpha or dora_scale alone: reported as a LoRA without down/up */
    for (int r = 0; r < LSDI_ROLE_COUNT; r++) {
        int k = p->t[r] ? role_kind(r) : -1;
        if (k < 0)
            continue;
        if (first >= 0 && k != *kind)
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensors '%s' (%s) and '%s' (%s) give module '%s' two kinds of "
                              "adapter", ld->path, p->t[first]->name, kind_names[*kind], p->t[r]->name,
                              kind_names[k], mod->name);
        if (first < 0) {
            first = r;
            *kind = k;
        }
    }
    return LSD_OK;
}

/* The module's tensors make one adapter of one kind, of shapes that fit the layer; *rank is what its scale divides
 * by (0: none). */
static lsd_status check_module(const loader *ld, const pending *p, const lsdi_module *mod, int *kind, int *rank,
                               int *dora_axis)
{
    LSDI_TRY(module_kind(ld, p, mod, kind));
    switch (*kind) {
    case LSDI_KIND_LOHA:
        LSDI_TRY(lsdi_loha_check(p, mod, ld->path, rank));
        break;
    case LSDI_KIND_LOKR:
        LSDI_TRY(lsdi_lokr_check(p, mod, ld->path, rank));
        break;
    case LSDI_KIND_FULL:
        LSDI_TRY(lsdi_full_check(p, mod, ld->path));
        *rank = 0;
        break;
    default:
        LSDI_TRY(check_lora(ld, p, mod));
        *rank = (int)p->t[LSDI_ROLE_DOWN]->shape[0];
    }
    *dora_axis = 0;
    return p->t[LSDI_ROLE_DORA_SCALE] ? lsdi_dora_check(p, mod, ld->path, dora_axis) : LSD_OK;
}

static lsdt_dtype shim_dtype(lsdi_st_dtype dt)
{
    switch (dt) {
    case LSDI_ST_F16:
        return LSDT_F16;
    case LSDI_ST_BF16:
        return LSDT_BF16;
    case LSDI_ST_F64:
        return LSDT_F64;
    default:
        return LSDT_F32;
    }
}

/* The file's tensor in the model's dtype and device; linear modules get 2-D tensors, conv modules 4-D. */
static lsdt_tensor *to_model(const loader *ld, const lsdi_st_tensor *t, int kind)
{
    int64_t shape[4] = {t->shape[0], t->shape[1], 1, 1};
    int ndim = kind == LSDI_MOD_LINEAR ? 2 : 4;
    if (t->ndim == 4 && kind == LSDI_MOD_CONV) {
        shape[2] = t->shape[2];
        shape[3] = t->shape[3];
    }
    return lsdt_from_host(NULL, t->data, shim_dtype(t->dtype), shape, ndim, ld->m->tdtype, ld->m->device);
}

static float module_alpha(const loader *ld, const pending *p, const lsdi_module *mod, int net, float fallback,
                          int64_t rank)
{
    if (p->t[LSDI_ROLE_ALPHA]) {
        float a;
        lsdi_st_to_f32(p->t[LSDI_ROLE_ALPHA], &a);
        return a;
    }
    if (ld->format != LSD_LORA_FORMAT_KOHYA) {
        float a = lsdi_peft_metadata_alpha(ld->f, net, mod->name);
        if (a > 0.0f)
            return a;
    }
    return fallback > 0.0f ? fallback : (float)rank;
}

/* The entry's tensors: LoRA's in the model's dtype as before; LyCORIS's (and dora_scale) as the file shapes them,
 * in float32 (their delta W is made in float32 anyway). */
static lsd_status make_tensors(const loader *ld, const pending *p, const lsdi_module *mod, lsdi_lora_entry *e)
{
    int ok = 1;
    if (e->kind == LSDI_KIND_LORA) {
        ok = (e->down = to_model(ld, p->t[LSDI_ROLE_DOWN], mod->kind)) &&
             (e->up = to_model(ld, p->t[LSDI_ROLE_UP], mod->kind)) &&
             (!p->t[LSDI_ROLE_MID] || (e->mid = to_model(ld, p->t[LSDI_ROLE_MID], mod->kind)));
    }
    for (int r = LSDI_ROLE_ALPHA + 1; ok && r < LSDI_ROLE_COUNT; r++) {
        const lsdi_st_tensor *t = p->t[r];
        if (t && !(e->t[r] = lsdt_from_host(NULL, t->data, shim_dtype(t->dtype), t->shape, t->ndim, LSDT_F32,
                                            ld->m->device)))
            ok = 0;
    }
    return ok ? LSD_OK : lsdi_error_from_shim(lsdt_last_status());
}

static lsd_status build(loader *ld, const char *name, const lsd_lora_params *lp, lsdi_adapter **out)
{
    lsdi_adapter *ad = calloc(1, sizeof *ad);
    if (!ad || !(ad->name = strdup(name)) || !(ad->mods = calloc((size_t)ld->applied, sizeof *ad->mods))) {
        lsdi_adapter_free(ad);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: adapter \"%s\"", ld->path, name);
    }
    ad->weight = lp->weight;
    ad->te_weight = lp->te_weight;
    ad->enabled = 1;
    int have_linear = 0;
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        const lsdi_params *params = lsdi_lora_net_params(ld->m, net);
        for (int i = 0; params && i < params->n_mods; i++) {
            const pending *p = &ld->pend[net][i];
            if (!p->used)
                continue;
            const lsdi_module *mod = &params->mods[i];
            lsdi_lora_entry *e = &ad->mods[ad->n_mods++];
            e->ad = ad;
            e->kind = (lsdi_lora_kind)p->kind;
            e->rank = p->rank;
            e->dora_axis = p->dora_axis;
            if (e->rank) {
                e->alpha = module_alpha(ld, p, mod, net, lp->alpha, e->rank);
                e->scale = e->alpha / (float)e->rank;
            } else { /* LoKr without a decomposed factor, full diffs: scale 1, the file's alpha kept for saving */
                if (p->t[LSDI_ROLE_ALPHA])
                    lsdi_st_to_f32(p->t[LSDI_ROLE_ALPHA], &e->alpha);
                e->scale = 1.0f;
            }
            lsd_status st = make_tensors(ld, p, mod, e);
            if (st == LSD_OK)
                st = lsdi_lora_layer_get(ld->set, net, i, &e->layer);
            if (st != LSD_OK) {
                lsdi_adapter_free(ad);
                return lsdi_error_prefix(st, "%s: module '%s'", ld->path, mod->name);
            }
            int k = mod->kind == LSDI_MOD_CONV ? ((lsdi_conv2d *)mod->layer)->k : 1;
            if (!ad->rank || (mod->kind == LSDI_MOD_LINEAR && !have_linear)) {
                ad->rank = e->rank;
                ad->alpha = e->alpha;
                have_linear = mod->kind == LSDI_MOD_LINEAR;
            }
            if (k > 1 && !ad->conv_rank) {
                ad->conv_rank = e->rank;
                ad->conv_alpha = e->alpha;
            }
        }
    }
    *out = ad;
    return LSD_OK;
}

static void stem(const char *path, char *out, size_t n)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t len = strlen(b);
    const char *dot = strrchr(b, '.');
    if (dot && dot != b)
        len = (size_t)(dot - b);
    if (len >= n)
        len = n - 1;
    memcpy(out, b, len);
    out[len] = 0;
}

static lsd_status run(loader *ld, const char *name, const lsd_lora_params *lp)
{
    ld->format = lsdi_lora_detect(ld->f);
    if (ld->format == LSD_LORA_FORMAT_AUTO)
        return lsdi_error(LSD_ERR_FORMAT,
                          "%s: no LoRA tensor names recognised (expected kohya or LyCORIS lora_unet_*/lora_te_*, PEFT "
                          "*.lora_A/lora_B, diffusers *.lora.down/up or *_lora.down/up names; %zu tensors)",
                          ld->path, lsdi_st_count(ld->f));
    if (ld->format == LSD_LORA_FORMAT_KOHYA)
        LSDI_TRY(lsdi_kohya_names_new(ld->m, &ld->kohya));
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        const lsdi_params *p = lsdi_lora_net_params(ld->m, net);
        if (p && p->n_mods && !(ld->pend[net] = calloc((size_t)p->n_mods, sizeof(pending))))
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: key table", ld->path);
    }
    LSDI_TRY(scan(ld));
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        const lsdi_params *p = lsdi_lora_net_params(ld->m, net);
        for (int i = 0; p && i < p->n_mods; i++) {
            pending *pd = &ld->pend[net][i];
            if (!pd->used)
                continue;
            LSDI_TRY(check_module(ld, pd, &p->mods[i], &pd->kind, &pd->rank, &pd->dora_axis));
            ld->applied++;
            ld->applied_net[net]++;
            ld->kinds[pd->kind]++;
            ld->dora += pd->t[LSDI_ROLE_DORA_SCALE] != NULL;
        }
    }
    char why[340] = "";
    if (ld->why_unmatched[0])
        snprintf(why, sizeof why, ": %s", ld->why_unmatched);
    if (!ld->applied)
        return lsdi_error(LSD_ERR_NOT_FOUND,
                          "%s: none of its %d tensors names a module of this model (%s layout; first: '%s'%s)",
                          ld->path, ld->unmatched, lsd_lora_format_name(ld->format), ld->first_unmatched, why);
    if (lp->strict && ld->unmatched)
        return lsdi_error(LSD_ERR_FORMAT, "%s: %d tensors name no module of this model (first: '%s'%s; strict load)",
                          ld->path, ld->unmatched, ld->first_unmatched, why);
    lsdi_adapter *ad = NULL;
    LSDI_TRY(build(ld, name, lp, &ad));
    LSDI_TRY(lsdi_adapter_install(ld->set, ad));
    lsdi_log(LSD_LOG_INFO,
             "LoRA \"%s\" from %s (%s): %d modules applied (%d UNet, %d text encoder; %d LoRA, %d LoHa, %d LoKr, "
             "%d full diff, %d with DoRA), %d keys matched, %d unmatched%s%s%s",
             name, ld->path, lsd_lora_format_name(ld->format), ld->applied, ld->applied_net[LSDI_NET_UNET],
             ld->applied_net[LSDI_NET_TE], ld->kinds[LSDI_KIND_LORA], ld->kinds[LSDI_KIND_LOHA],
             ld->kinds[LSDI_KIND_LOKR], ld->kinds[LSDI_KIND_FULL], ld->dora, ld->matched, ld->unmatched,
             ld->unmatched ? ", first: " : "", ld->unmatched ? ld->first_unmatched : "", why);
    return LSD_OK;
}

/* Loads from an opened file (taken over and closed here); label names it in messages. */
static lsd_status load_opened(lsd_adapter_set *set, const char *name, lsdi_st_file *f, const char *label,
                              const lsd_lora_params *params, lsd_load_report *report)
{
    lsd_lora_params lp;
    lsd_status st = lsdi_lora_params_read(params, &lp);
    char auto_name[128];
    if (st == LSD_OK && (!name || !*name)) {
        stem(label, auto_name, sizeof auto_name);
        name = auto_name;
    }
    if (st == LSD_OK && lsdi_adapter_find(set, name))
        st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_load: the set already has an adapter named \"%s\"",
                        name);
    loader ld;
    memset(&ld, 0, sizeof ld);
    ld.set = set;
    ld.m = set->model;
    ld.path = label;
    ld.f = f;
    if (st == LSD_OK)
        st = run(&ld, name, &lp);
    if (report) {
        lsd_load_report r;
        memset(&r, 0, sizeof r);
        r.format = ld.format;
        r.matched_keys = ld.matched;
        r.unmatched_keys = ld.unmatched;
        r.applied_modules = st == LSD_OK ? ld.applied : 0;
        if (st == LSD_OK) {
            r.loha_modules = ld.kinds[LSDI_KIND_LOHA];
            r.lokr_modules = ld.kinds[LSDI_KIND_LOKR];
            r.full_modules = ld.kinds[LSDI_KIND_FULL];
            r.dora_modules = ld.dora;
        }
        snprintf(r.first_unmatched, sizeof r.first_unmatched, "%s", ld.first_unmatched);
        lsdi_struct_write(LSD_STRUCT_LOAD_REPORT, report, &r);
    }
    lsdi_kohya_names_free(ld.kohya);
    for (int net = 0; net < LSDI_NET_COUNT; net++)
        free(ld.pend[net]);
    lsdi_st_close(f);
    return st;
}

static lsd_status check_args(const lsd_adapter_set *set, const void *src, const lsd_load_report *report)
{
    if (!set || !src)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_load: set or path is NULL");
    return report ? lsdi_struct_check_out(LSD_STRUCT_LOAD_REPORT, report, "lsd_adapter_set_load") : LSD_OK;
}

static lsd_status adapter_set_load(lsd_adapter_set *set, const char *name, const char *path,
                                   const lsd_lora_params *params, lsd_load_report *report)
{
    LSDI_TRY(check_args(set, path, report));
    lsdi_st_file *f = NULL;
    LSDI_TRY(lsdi_st_open(path, &f));
    return load_opened(set, name, f, path, params, report);
}

lsd_status lsd_adapter_set_load(lsd_adapter_set *set, const char *name, const char *path,
                                const lsd_lora_params *params, lsd_load_report *report)
{
    return lsdi_adapter_set_record(set, adapter_set_load(set, name, path, params, report));
}

lsd_status lsdi_lora_load_memory(lsd_adapter_set *set, const char *name, const void *data, size_t size,
                                 const char *label, const lsd_lora_params *params, lsd_load_report *report)
{
    LSDI_TRY(check_args(set, data, report));
    lsdi_st_file *f = NULL;
    LSDI_TRY(lsdi_st_open_memory(data, size, label, &f));
    return load_opened(set, name, f, label, params, report);
}
