/* DoRA (weight decomposition, LyCORIS's weight_decompose): W' = (W + delta) * dora_scale / ||W + delta||, the norms
 * taken along the axis dora_scale's shape gives: [out, 1, ...] one per output row (LyCORIS wd_on_out, its default),
 * [1, in, ...] one per input column (wd_on_out false, the only one A1111 reads); ||.|| + float32 eps as LyCORIS's
 * apply_weight_decompose. The user's weight m then scales W' - W (W + m (W' - W), as A1111's network.py and
 * ComfyUI; at m = 1 all three agree). */
#include "core/error.h"
#include "lora/lora.h"

#define F32_EPS 1.1920928955078125e-07

lsdt_tensor *lsdi_dora_apply(lsdt_scope *s, const lsdi_lora_entry *e, const lsdt_tensor *base, const lsdt_tensor *delta)
{
    const lsdt_tensor *w = lsdt_to_dtype(s, base, LSDT_F32);
    lsdt_tensor *v = lsdt_add(s, w, delta);
    if (!v)
        return NULL;
    int nd = lsdt_ndim(v), dims[3], n = 0;
    int64_t count = 1, shape[4];
    for (int i = 0; i < nd; i++) {
        shape[i] = i == e->dora_axis ? lsdt_size(v, i) : 1;
        if (i != e->dora_axis) {
            dims[n++] = i;
            count *= lsdt_size(v, i);
        }
    }
    /* ||v|| along the axis = sqrt(mean(v^2) * count) */
    lsdt_tensor *norm = lsdt_sqrt(s, lsdt_mul_scalar(s, lsdt_mean_dims(s, lsdt_mul(s, v, v), dims, n), (double)count));
    norm = lsdt_add_scalar(s, lsdt_reshape(s, norm, shape, nd), F32_EPS);
    const lsdt_tensor *m = lsdt_reshape(s, lsdt_to_dtype(s, e->t[LSDI_ROLE_DORA_SCALE], LSDT_F32), shape, nd);
    return lsdt_sub(s, lsdt_mul(s, v, lsdt_div(s, m, norm)), w);
}

lsd_status lsdi_dora_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int *axis)
{
    const lsdi_st_tensor *t = p->t[LSDI_ROLE_DORA_SCALE];
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    int nd = mod->kind == LSDI_MOD_CONV ? 4 : 2;
    if (p->t[LSDI_ROLE_DIFF])
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': DoRA applies to LoRA, LoHa and LoKr, not to the full "
                          "diff of module '%s'", path, t->name, mod->name);
    /* [out, 1, 1, 1] or [1, in, 1, 1]; out first when both fit (a 1x1 weight) */
    for (int ax = 0; ax < 2; ax++) {
        int ok = t->ndim == nd && t->shape[ax] == (ax ? in : out);
        for (int i = 0; ok && i < nd; i++)
            ok = i == ax || t->shape[i] == 1;
        if (ok) {
            *axis = ax;
            return LSD_OK;
        }
    }
    int64_t want[4] = {out, 1, 1, 1};
    return lsdi_lora_mismatch(path, t, mod, want, nd);
}
