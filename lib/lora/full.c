/* Full diffs (LyCORIS "full"): delta W = diff, the whole weight difference, and the bias gains diff_b; no scale
 * (alpha is not read: A1111's network_full.py leaves dim unset, so its scale is 1). */
#include "core/error.h"
#include "lora/lora.h"

lsdt_tensor *lsdi_full_delta(lsdt_scope *s, const lsdi_lora_entry *e, const int64_t *shape, int ndim)
{
    return lsdt_reshape(s, lsdt_to_dtype(s, e->t[LSDI_ROLE_DIFF], LSDT_F32), shape, ndim);
}

static const lsdt_tensor *module_bias(const lsdi_module *mod)
{
    return mod->kind == LSDI_MOD_LINEAR ? ((const lsdi_linear *)mod->layer)->bias
                                        : ((const lsdi_conv2d *)mod->layer)->bias;
}

lsd_status lsdi_full_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path)
{
    const lsdi_st_tensor *d = p->t[LSDI_ROLE_DIFF], *b = p->t[LSDI_ROLE_DIFF_B];
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    if (!d)
        return lsdi_lora_missing(path, p, b, mod, LSDI_ROLE_DIFF);
    int64_t want[4] = {out, in, k, k};
    int nd = mod->kind == LSDI_MOD_CONV ? 4 : 2;
    int ok = d->ndim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = d->shape[i] == want[i];
    if (!ok)
        return lsdi_lora_mismatch(path, d, mod, want, nd);
    if (b && (b->ndim != 1 || b->shape[0] != out))
        return lsdi_lora_mismatch(path, b, mod, want, 1);
    if (b && !module_bias(mod))
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: tensor '%s' changes the bias of module '%s', which has none",
                          path, b->name, mod->name);
    return LSD_OK;
}
