/* The un-merged LoRA forward on a linear/conv layer and the merged delta W. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "lora/lora.h"

const lsdi_params *lsdi_lora_net_params(const lsd_model *m, int net)
{
    if (net == LSDI_NET_UNET)
        return m->unet ? &m->unet->params : NULL;
    return m->text ? &m->text->params : NULL;
}

void lsdi_lora_module_dims(const lsdi_module *mod, int *in, int *out, int *k)
{
    if (mod->kind == LSDI_MOD_LINEAR) {
        const lsdi_linear *l = mod->layer;
        *in = l->in;
        *out = l->out;
        *k = 1;
    } else {
        const lsdi_conv2d *c = mod->layer;
        *in = c->in;
        *out = c->out;
        *k = c->k;
    }
}

lsdt_tensor *lsdi_lora_module_weight(const lsdi_module *mod)
{
    return mod->kind == LSDI_MOD_LINEAR ? ((lsdi_linear *)mod->layer)->weight : ((lsdi_conv2d *)mod->layer)->weight;
}

lsdi_lora_hook **lsdi_lora_module_hook_slot(const lsdi_module *mod)
{
    return mod->kind == LSDI_MOD_LINEAR ? &((lsdi_linear *)mod->layer)->lora : &((lsdi_conv2d *)mod->layer)->lora;
}

/* t in x's dtype: float32 master weights of a trained adapter meet bf16/f16 activations as under autocast (the
 * cast is differentiable, so their gradients arrive in float32). */
static const lsdt_tensor *as_input(lsdt_scope *s, const lsdt_tensor *t, const lsdt_tensor *x)
{
    return t && lsdt_get_dtype(t) != lsdt_get_dtype(x) ? lsdt_to_dtype(s, t, lsdt_get_dtype(x)) : t;
}

static lsdt_tensor *branch(lsdt_scope *s, const lsdi_lora_layer *l, const lsdi_lora_entry *e, const lsdt_tensor *x)
{
    const lsdt_tensor *down = as_input(s, e->down, x), *up = as_input(s, e->up, x), *mid = as_input(s, e->mid, x);
    if (l->kind == LSDI_MOD_LINEAR)
        return lsdt_linear(s, lsdt_linear(s, x, down, NULL), up, NULL);
    lsdt_tensor *h;
    if (mid)
        h = lsdt_conv2d(s, lsdt_conv2d(s, x, down, NULL, 1, 0), mid, NULL, l->stride, l->padding);
    else
        h = lsdt_conv2d(s, x, down, NULL, l->stride, l->padding);
    return lsdt_conv2d(s, h, up, NULL, 1, 0);
}

/* The layer's original weight: the kept copy while other adapters are fused into it. */
static const lsdt_tensor *base_weight(const lsdi_lora_layer *l)
{
    const lsdi_module *mod = &lsdi_lora_net_params(l->set->model, l->net)->mods[l->module];
    return l->orig_weight ? l->orig_weight : lsdi_lora_module_weight(mod);
}

/* LoHa, LoKr, full diffs and DoRA: x through the materialized delta W (and diff_b), as LyCORIS and A1111 apply
 * them un-merged. */
static lsdt_tensor *delta_branch(lsdt_scope *s, const lsdi_lora_layer *l, const lsdi_lora_entry *e,
                                 const lsdt_tensor *x)
{
    const lsdt_tensor *dw = as_input(s, lsdi_lora_delta(s, e, base_weight(l)), x);
    const lsdt_tensor *db = as_input(s, e->t[LSDI_ROLE_DIFF_B], x);
    if (!dw)
        return NULL;
    if (l->kind == LSDI_MOD_LINEAR)
        return lsdt_linear(s, x, dw, db);
    return lsdt_conv2d(s, x, dw, db, l->stride, l->padding);
}

static lsdt_tensor *apply(lsdt_scope *s, const lsdi_lora_hook *h, const lsdt_tensor *x, lsdt_tensor *y)
{
    const lsdi_lora_layer *l = (const lsdi_lora_layer *)h;
    for (int i = 0; i < l->n && y; i++) {
        const lsdi_lora_entry *e = l->e[i];
        const lsdi_adapter *ad = e->ad;
        float w = l->net == LSDI_NET_TE ? ad->te_weight : ad->weight;
        if (!ad->enabled || ad->fused || w == 0.0f)
            continue;
        if (e->kind == LSDI_KIND_LORA && !e->t[LSDI_ROLE_DORA_SCALE])
            y = lsdt_add_scaled(s, y, branch(s, l, e, x), (double)w * (double)e->scale);
        else
            y = lsdt_add_scaled(s, y, delta_branch(s, l, e, x), (double)w);
    }
    return y;
}

lsd_status lsdi_lora_layer_get(lsd_adapter_set *set, int net, int module, lsdi_lora_layer **out)
{
    lsdi_lora_layer *l = &set->layers[net][module];
    if (!l->set) {
        const lsdi_module *mod = &lsdi_lora_net_params(set->model, net)->mods[module];
        lsdi_lora_hook **slot = lsdi_lora_module_hook_slot(mod);
        if (*slot)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                              "module '%s' already carries adapters of another adapter set (one set per model)",
                              mod->name);
        l->hook.apply = apply;
        l->set = set;
        l->net = net;
        l->module = module;
        l->kind = mod->kind;
        if (mod->kind == LSDI_MOD_CONV) {
            const lsdi_conv2d *c = mod->layer;
            l->stride = c->stride;
            l->padding = c->padding;
        }
    }
    *out = l;
    return LSD_OK;
}

lsd_status lsdi_lora_layer_attach(lsdi_lora_layer *l, lsdi_lora_entry *e)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 2;
        lsdi_lora_entry **v = realloc(l->e, (size_t)cap * sizeof *v);
        if (!v)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "adapter hook list");
        l->e = v;
        l->cap = cap;
    }
    l->e[l->n++] = e;
    e->layer = l;
    const lsdi_module *mod = &lsdi_lora_net_params(l->set->model, l->net)->mods[l->module];
    *lsdi_lora_module_hook_slot(mod) = &l->hook;
    return LSD_OK;
}

void lsdi_lora_layer_detach(lsdi_lora_layer *l, const lsdi_adapter *ad)
{
    int j = 0;
    for (int i = 0; i < l->n; i++)
        if (l->e[i]->ad != ad)
            l->e[j++] = l->e[i];
    l->n = j;
    if (l->n == 0 && !l->orig_weight) {
        /* No adapter left: the layer runs its plain forward again. */
        const lsdi_module *mod = &lsdi_lora_net_params(l->set->model, l->net)->mods[l->module];
        *lsdi_lora_module_hook_slot(mod) = NULL;
    }
}

lsdt_tensor *lsdi_tucker_rebuild(lsdt_scope *s, const lsdt_tensor *u, const lsdt_tensor *t, const lsdt_tensor *d)
{
    /* batch the kernel taps: [kh, kw, r, r2], then [kh, kw, out, in] back to [out, in, kh, kw] */
    static const int khw_first[4] = {2, 3, 0, 1};
    lsdt_tensor *m = lsdt_permute(s, t, khw_first, 4);
    return lsdt_contiguous(s, lsdt_permute(s, lsdt_matmul(s, lsdt_matmul(s, u, m), d), khw_first, 4));
}

/* scale * up @ down (Tucker: sum_ij up[p,i] mid[i,j,k,l] down[j,q]), in the weight's shape. */
static lsdt_tensor *lora_delta(lsdt_scope *s, const lsdi_lora_entry *e)
{
    const lsdt_tensor *down = lsdt_to_dtype(s, e->down, LSDT_F32);
    const lsdt_tensor *up = lsdt_to_dtype(s, e->up, LSDT_F32);
    int64_t r = e->rank, out = lsdt_size(e->up, 0), in = lsdt_size(e->down, 1);
    int64_t up2[2] = {out, lsdt_size(e->up, 1)};
    lsdt_tensor *u = lsdt_reshape(s, up, up2, 2);
    lsdt_tensor *d;
    if (lsdt_ndim(e->down) == 2) {
        d = lsdt_matmul(s, u, down);
    } else if (e->mid) {
        int64_t dn2[2] = {r, in};
        d = lsdi_tucker_rebuild(s, u, lsdt_to_dtype(s, e->mid, LSDT_F32), lsdt_reshape(s, down, dn2, 2));
    } else {
        int64_t kh = lsdt_size(e->down, 2), kw = lsdt_size(e->down, 3);
        int64_t flat[2] = {r, in * kh * kw}, full[4] = {out, in, kh, kw};
        d = lsdt_reshape(s, lsdt_matmul(s, u, lsdt_reshape(s, down, flat, 2)), full, 4);
    }
    return lsdt_mul_scalar(s, d, e->scale);
}

lsdt_tensor *lsdi_lora_delta(lsdt_scope *s, const lsdi_lora_entry *e, const lsdt_tensor *base)
{
    const lsdi_module *mod = &lsdi_lora_net_params(e->layer->set->model, e->layer->net)->mods[e->layer->module];
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    int64_t shape[4] = {out, in, k, k};
    int nd = mod->kind == LSDI_MOD_CONV ? 4 : 2;
    lsdt_tensor *d = e->kind == LSDI_KIND_LOHA   ? lsdi_loha_delta(s, e, shape, nd)
                     : e->kind == LSDI_KIND_LOKR ? lsdi_lokr_delta(s, e, shape, nd)
                     : e->kind == LSDI_KIND_FULL ? lsdi_full_delta(s, e, shape, nd)
                                                 : lora_delta(s, e);
    return e->t[LSDI_ROLE_DORA_SCALE] ? lsdi_dora_apply(s, e, base, d) : d;
}
