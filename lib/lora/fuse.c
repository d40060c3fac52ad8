/* Fusing the active adapters into the base weights (W' = W + sum w * delta, computed in fp32 whatever the weights'
 * dtype, every delta from the original W as A1111 does) and unfusing from a kept copy of the original weights (and
 * biases, for full diffs' diff_b), so unfuse restores them bit for bit. */
#include "core/error.h"
#include "lora/lora.h"

static int active(const lsdi_adapter *ad)
{
    return ad->enabled && !ad->fused && (ad->weight != 0.0f || ad->te_weight != 0.0f);
}

static lsdt_tensor *module_bias(const lsdi_module *mod)
{
    return mod->kind == LSDI_MOD_LINEAR ? ((lsdi_linear *)mod->layer)->bias : ((lsdi_conv2d *)mod->layer)->bias;
}

/* bias += sum w * diff_b over the active full diffs that carry one (the loader checked that the layer has a bias). */
static void fuse_bias(lsdt_scope *s, lsdi_lora_layer *l, const lsdi_module *mod)
{
    lsdt_tensor *b = module_bias(mod), *acc = NULL;
    for (int i = 0; i < l->n && lsdt_scope_status(s) == 0; i++) {
        const lsdi_lora_entry *e = l->e[i];
        float uw = l->net == LSDI_NET_TE ? e->ad->te_weight : e->ad->weight;
        if (!active(e->ad) || !e->t[LSDI_ROLE_DIFF_B] || uw == 0.0f)
            continue;
        if (!l->orig_bias && !(l->orig_bias = lsdt_clone(NULL, b))) {
            lsdt_scope_fail(s, lsdt_last_status(), lsdt_last_error());
            return;
        }
        if (!acc && !(acc = lsdt_clone(s, lsdt_to_dtype(s, b, LSDT_F32))))
            return;
        if (lsdt_add_(acc, lsdt_to_dtype(s, e->t[LSDI_ROLE_DIFF_B], LSDT_F32), uw))
            lsdt_scope_fail(s, lsdt_last_status(), lsdt_last_error());
    }
    if (acc && lsdt_scope_status(s) == 0 && lsdt_copy_(b, acc))
        lsdt_scope_fail(s, lsdt_last_status(), lsdt_last_error());
}

static lsd_status fuse_layer(lsdi_lora_layer *l)
{
    const lsdi_module *mod = &lsdi_lora_net_params(l->set->model, l->net)->mods[l->module];
    lsdt_tensor *w = lsdi_lora_module_weight(mod);
    int any = 0;
    for (int i = 0; i < l->n; i++)
        any |= active(l->e[i]->ad);
    if (!any)
        return LSD_OK;
    if (!l->orig_weight && !(l->orig_weight = lsdt_clone(NULL, w)))
        return lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "fuse '%s'", mod->name);
    lsdt_scope *s = lsdt_scope_begin();
    lsdt_tensor *acc = lsdt_clone(s, lsdt_to_dtype(s, w, LSDT_F32));
    for (int i = 0; i < l->n && acc; i++) {
        const lsdi_lora_entry *e = l->e[i];
        if (!active(e->ad))
            continue;
        float uw = l->net == LSDI_NET_TE ? e->ad->te_weight : e->ad->weight;
        lsdt_tensor *d = lsdi_lora_delta(s, e, l->orig_weight);
        if (!d)
            break;
        if (uw != 0.0f && lsdt_add_(acc, d, uw)) {
            lsdt_scope_fail(s, lsdt_last_status(), lsdt_last_error());
            break;
        }
    }
    if (acc && lsdt_scope_status(s) == 0 && lsdt_copy_(w, acc))
        lsdt_scope_fail(s, lsdt_last_status(), lsdt_last_error());
    if (lsdt_scope_status(s) == 0)
        fuse_bias(s, l, mod);
    int rc = lsdt_scope_end(s);
    if (rc)
        return lsdi_error_prefix(lsdi_error_from_shim(rc), "fuse '%s'", mod->name);
    return LSD_OK;
}

static lsd_status adapter_set_fuse(lsd_adapter_set *set)
{
    if (!set)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_fuse: set is NULL");
    lsd_status st = LSD_OK;
    lsdt_no_grad_begin();
    for (int net = 0; net < LSDI_NET_COUNT && st == LSD_OK; net++)
        for (int i = 0; i < set->n_layers[net] && st == LSD_OK; i++)
            if (set->layers[net][i].set)
                st = fuse_layer(&set->layers[net][i]);
    lsdt_no_grad_end();
    if (st != LSD_OK) {
        lsd_adapter_set_unfuse(set); /* back to the original weights: a half-fused model helps nobody */
        return st;
    }
    int n = 0;
    for (int i = 0; i < set->n; i++)
        if (active(set->ad[i])) {
            set->ad[i]->fused = 1;
            n++;
        }
    set->fused |= n > 0;
    lsdi_log(LSD_LOG_INFO, "fused %d adapter(s) into the base weights", n);
    return LSD_OK;
}

lsd_status lsd_adapter_set_fuse(lsd_adapter_set *set)
{
    return lsdi_adapter_set_record(set, adapter_set_fuse(set));
}

static lsd_status adapter_set_unfuse(lsd_adapter_set *set)
{
    if (!set)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_adapter_set_unfuse: set is NULL");
    lsd_status st = LSD_OK;
    lsdt_no_grad_begin();
    for (int net = 0; net < LSDI_NET_COUNT; net++)
        for (int i = 0; i < set->n_layers[net]; i++) {
            lsdi_lora_layer *l = &set->layers[net][i];
            if (!l->orig_weight)
                continue;
            const lsdi_module *mod = &lsdi_lora_net_params(set->model, net)->mods[i];
            if (lsdt_copy_(lsdi_lora_module_weight(mod), l->orig_weight) ||
                (l->orig_bias && lsdt_copy_(module_bias(mod), l->orig_bias))) {
                if (st == LSD_OK)
                    st = lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "unfuse '%s'", mod->name);
                continue;
            }
            lsdt_free(l->orig_weight);
            lsdt_free(l->orig_bias);
            l->orig_weight = NULL;
            l->orig_bias = NULL;
            if (l->n == 0)
                *lsdi_lora_module_hook_slot(mod) = NULL;
        }
    lsdt_no_grad_end();
    if (st != LSD_OK)
        return st;
    for (int i = 0; i < set->n; i++)
        set->ad[i]->fused = 0;
    set->fused = 0;
    return LSD_OK;
}

lsd_status lsd_adapter_set_unfuse(lsd_adapter_set *set)
{
    return lsdi_adapter_set_record(set, adapter_set_unfuse(set));
}
