/* A new trainable adapter on the modules chosen by lsd_lora_params.targets, initialised as kohya (A kaiming-
 * uniform with a = sqrt(5), torch's Linear default; B zero) or gaussian (A normal(0, 1/rank); B zero), seeded. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "lora/lora.h"

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static int any_suffix(const char *name, const char *const *suffixes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ends_with(name, suffixes[i]))
            return 1;
    return 0;
}

unsigned lsdi_lora_target_of(int net, const lsdi_module *mod)
{
    static const char *const attn[] = {".to_q", ".to_k", ".to_v", ".to_out.0"};
    static const char *const ff[] = {".ff.net.0.proj", ".ff.net.2"};
    static const char *const proj[] = {".proj_in", ".proj_out"};
    static const char *const conv[] = {".conv1", ".conv2", ".downsamplers.0.conv", ".upsamplers.0.conv"};
    static const char *const te_attn[] = {".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj",
                                          ".self_attn.out_proj"};
    static const char *const te_mlp[] = {".mlp.fc1", ".mlp.fc2"};
#define IS(list) any_suffix(mod->name, list, sizeof list / sizeof list[0])
    if (net == LSDI_NET_TE)
        return IS(te_attn) ? LSD_TARGET_TE_ATTN : IS(te_mlp) ? LSD_TARGET_TE_MLP : 0;
    if (IS(attn))
        return LSD_TARGET_UNET_ATTN;
    if (IS(ff))
        return LSD_TARGET_UNET_FF;
    if (IS(proj))
        return LSD_TARGET_UNET_PROJ;
    if (mod->kind == LSDI_MOD_CONV && IS(conv) && ((const lsdi_conv2d *)mod->layer)->k > 1)
        return LSD_TARGET_UNET_CONV;
    return 0;
#undef IS
}

/* The CLI's names (--lora_targets), in bit order. */
static const char *const target_names[] = {"attn", "ff", "proj", "conv", "te_attn", "te_mlp"};
#define N_TARGETS (sizeof target_names / sizeof target_names[0])

const char *lsd_lora_target_name(lsd_lora_target t)
{
    for (size_t i = 0; i < N_TARGETS; i++)
        if ((unsigned)t == 1u << i)
            return target_names[i];
    return "unknown";
}

lsd_status lsd_lora_targets_from_names(const char *list, unsigned *out)
{
    if (!list || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_lora_targets_from_names: list or out is NULL");
    unsigned bits = 0;
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        size_t i = 0;
        while (i < N_TARGETS && (strlen(target_names[i]) != n || strncmp(p, target_names[i], n)))
            i++;
        if (i == N_TARGETS)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "unknown LoRA target \"%.*s\" (expected a comma-separated "
                              "list of attn, ff, proj, conv, te_attn, te_mlp)", (int)n, p);
        bits |= 1u << i;
        p += n + (p[n] == ',');
    }
    if (!bits)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "empty LoRA target list (expected attn, ff, proj, conv, te_attn "
                          "and/or te_mlp)");
    *out = bits;
    return LSD_OK;
}

static lsd_status init_entry(lsd_adapter_set *set, lsdi_lora_entry *e, const lsdi_module *mod,
                             const lsd_lora_params *p, lsdt_generator *g)
{
    const lsd_model *m = set->model;
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    int conv3 = mod->kind == LSDI_MOD_CONV && k > 1;
    int r = conv3 && p->conv_rank > 0 ? p->conv_rank : p->rank;
    float alpha = conv3 ? (p->conv_alpha > 0.0f ? p->conv_alpha : (float)r) : (p->alpha > 0.0f ? p->alpha : (float)r);
    int ndim = mod->kind == LSDI_MOD_LINEAR ? 2 : 4;
    int64_t ds[4] = {r, in, k, k}, us[4] = {out, r, 1, 1};
    e->rank = r;
    e->alpha = alpha;
    e->scale = alpha / (float)r;
    /* At least float32 whatever the model's dtype: these are the master weights a mixed-precision run trains
     * (diffusers' cast_training_params); the layer hook casts them to its input's dtype. */
    lsdt_dtype master = m->tdtype == LSDT_F64 ? LSDT_F64 : LSDT_F32;
    e->down = lsdt_zeros(NULL, ds, ndim, master, m->device);
    e->up = lsdt_zeros(NULL, us, ndim, master, m->device);
    if (!e->down || !e->up)
        return lsdi_error_from_shim(lsdt_last_status());
    int rc;
    if (p->init == LSD_LORA_INIT_GAUSSIAN) {
        rc = lsdt_normal_(e->down, g, 0.0, 1.0 / r);
    } else {
        double bound = 1.0 / sqrt((double)in * k * k); /* gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in) */
        rc = lsdt_uniform_(e->down, g, -bound, bound);
    }
    if (rc || lsdt_set_requires_grad(e->down, 1) || lsdt_set_requires_grad(e->up, 1))
        return lsdi_error_from_shim(rc ? rc : lsdt_last_status());
    return LSD_OK;
}

static lsd_status adapter_set_add(lsd_adapter_set *set, const char *name, const lsd_lora_params *params)
{
    if (!set || !name || !*name)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_add: set is NULL or name is NULL/empty");
    lsd_lora_params p;
    LSDI_TRY(lsdi_lora_params_read(params, &p));
    if (lsdi_adapter_find(set, name))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_add: the set already has an adapter named \"%s\"",
                          name);
    int count = 0;
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        const lsdi_params *tab = lsdi_lora_net_params(set->model, net);
        for (int i = 0; tab && i < tab->n_mods; i++)
            count += (lsdi_lora_target_of(net, &tab->mods[i]) & p.targets) != 0;
    }
    if (!count)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_add: targets 0x%x select no module of the model",
                          p.targets);
    lsdi_adapter *ad = calloc(1, sizeof *ad);
    if (!ad || !(ad->name = strdup(name)) || !(ad->mods = calloc((size_t)count, sizeof *ad->mods))) {
        lsdi_adapter_free(ad);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "adapter \"%s\"", name);
    }
    ad->weight = p.weight;
    ad->te_weight = p.te_weight;
    ad->enabled = 1;
    ad->trainable = 1;
    lsdt_generator *g = lsdt_generator_new(p.seed);
    lsd_status st = g ? LSD_OK : lsdi_error_from_shim(lsdt_last_status());
    for (int net = 0; net < LSDI_NET_COUNT && st == LSD_OK; net++) {
        const lsdi_params *tab = lsdi_lora_net_params(set->model, net);
        for (int i = 0; tab && i < tab->n_mods && st == LSD_OK; i++) {
            const lsdi_module *mod = &tab->mods[i];
            if (!(lsdi_lora_target_of(net, mod) & p.targets))
                continue;
            lsdi_lora_entry *e = &ad->mods[ad->n_mods++];
            e->ad = ad;
            st = init_entry(set, e, mod, &p, g);
            if (st == LSD_OK)
                st = lsdi_lora_layer_get(set, net, i, &e->layer);
            int conv3 = mod->kind == LSDI_MOD_CONV && ((const lsdi_conv2d *)mod->layer)->k > 1;
            if (st == LSD_OK && conv3 && !ad->conv_rank) {
                ad->conv_rank = e->rank;
                ad->conv_alpha = e->alpha;
            } else if (st == LSD_OK && !conv3 && !ad->rank) {
                ad->rank = e->rank;
                ad->alpha = e->alpha;
            }
        }
    }
    lsdt_generator_free(g);
    if (st != LSD_OK) {
        lsdi_adapter_free(ad);
        return lsdi_error_prefix(st, "lsd_adapter_set_add \"%s\"", name);
    }
    if (!ad->rank) {
        ad->rank = ad->conv_rank;
        ad->alpha = ad->conv_alpha;
    }
    return lsdi_adapter_install(set, ad);
}

lsd_status lsd_adapter_set_add(lsd_adapter_set *set, const char *name, const lsd_lora_params *params)
{
    return lsdi_adapter_set_record(set, adapter_set_add(set, name, params));
}
