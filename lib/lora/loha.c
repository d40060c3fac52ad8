/* LoHa (LyCORIS): delta W = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank, an element-wise (Hadamard) product of
 * two low-rank products, rank = hada_w1_b's first dimension. Convolutions: w1_b [r, in * kh * kw] (or
 * [r, in, kh, kw]) reshaped to the kernel, or Tucker: each factor rebuilt from hada_t [r, r, kh, kw] with
 * w_a [r, out] and w_b [r, in] as sum_ij w_a[i, p] t[i, j] w_b[j, q] (lycoris/functional/loha.py). */
#include "core/error.h"
#include "lora/lora.h"

/* The Hadamard factor from roles a, b (and Tucker t): [out, in * kh * kw] or, Tucker, [out, in, kh, kw]. */
static lsdt_tensor *factor(lsdt_scope *s, const lsdi_lora_entry *e, int a, int b, int t)
{
    const lsdt_tensor *wa = lsdt_to_dtype(s, e->t[a], LSDT_F32), *wb = lsdt_to_dtype(s, e->t[b], LSDT_F32);
    if (e->t[t])
        return lsdi_tucker_rebuild(s, lsdt_transpose(s, wa, 0, 1), lsdt_to_dtype(s, e->t[t], LSDT_F32), wb);
    int64_t flat[2] = {lsdt_size(e->t[b], 0), lsdt_numel(e->t[b]) / lsdt_size(e->t[b], 0)};
    return lsdt_matmul(s, wa, lsdt_reshape(s, wb, flat, 2));
}

lsdt_tensor *lsdi_loha_delta(lsdt_scope *s, const lsdi_lora_entry *e, const int64_t *shape, int ndim)
{
    lsdt_tensor *f1 = factor(s, e, LSDI_ROLE_HADA_W1_A, LSDI_ROLE_HADA_W1_B, LSDI_ROLE_HADA_T1);
    lsdt_tensor *f2 = factor(s, e, LSDI_ROLE_HADA_W2_A, LSDI_ROLE_HADA_W2_B, LSDI_ROLE_HADA_T2);
    return lsdt_reshape(s, lsdt_mul_scalar(s, lsdt_mul(s, f1, f2), e->scale), shape, ndim);
}

/* One factor's tensors: a [out, r] and b [r, in * K] or [r, in, k, k] (linear: [r, in]); Tucker: a [r, out],
 * t [r, r2, k, k], b [r2, in]. */
static lsd_status check_factor(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int a, int b,
                               int t)
{
    const lsdi_st_tensor *ta = p->t[a], *tb = p->t[b], *tt = p->t[t];
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    int conv = mod->kind == LSDI_MOD_CONV;
    if (!ta || !tb)
        return lsdi_lora_missing(path, p, ta ? ta : tb, mod, ta ? b : a);
    if (tt) {
        int64_t r = tt->ndim == 4 ? tt->shape[0] : 1, r2 = tt->ndim == 4 ? tt->shape[1] : 1;
        if (!conv || tt->ndim != 4 || r < 1 || r2 < 1 || tt->shape[2] != k || tt->shape[3] != k) {
            int64_t want[4] = {r, r2, k, k};
            return lsdi_lora_mismatch(path, tt, mod, want, 4);
        }
        int64_t wa[2] = {r, out}, wb[2] = {r2, in};
        if (ta->ndim != 2 || ta->shape[0] != r || ta->shape[1] != out)
            return lsdi_lora_mismatch(path, ta, mod, wa, 2);
        if (tb->ndim != 2 || tb->shape[0] != r2 || tb->shape[1] != in)
            return lsdi_lora_mismatch(path, tb, mod, wb, 2);
        return LSD_OK;
    }
    int64_t r = tb->ndim >= 2 && tb->shape[0] >= 1 ? tb->shape[0] : 1;
    int ok_b = (tb->ndim == 2 && tb->shape[1] == (int64_t)in * k * k) ||
               (conv && tb->ndim == 4 && tb->shape[1] == in && tb->shape[2] == k && tb->shape[3] == k);
    if (!ok_b || tb->shape[0] < 1) {
        int64_t want[2] = {r, (int64_t)in * k * k};
        return lsdi_lora_mismatch(path, tb, mod, want, 2);
    }
    if (ta->ndim != 2 || ta->shape[0] != out || ta->shape[1] != r) {
        int64_t want[2] = {out, r};
        return lsdi_lora_mismatch(path, ta, mod, want, 2);
    }
    return LSD_OK;
}

lsd_status lsdi_loha_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int *rank)
{
    const lsdi_st_tensor *t1 = p->t[LSDI_ROLE_HADA_T1], *t2 = p->t[LSDI_ROLE_HADA_T2];
    if (!t1 != !t2) /* LyCORIS makes both factors Tucker or neither */
        return lsdi_lora_missing(path, p, t1 ? t1 : t2, mod, t1 ? LSDI_ROLE_HADA_T2 : LSDI_ROLE_HADA_T1);
    LSDI_TRY(check_factor(p, mod, path, LSDI_ROLE_HADA_W1_A, LSDI_ROLE_HADA_W1_B, LSDI_ROLE_HADA_T1));
    LSDI_TRY(check_factor(p, mod, path, LSDI_ROLE_HADA_W2_A, LSDI_ROLE_HADA_W2_B, LSDI_ROLE_HADA_T2));
    *rank = (int)p->t[LSDI_ROLE_HADA_W1_B]->shape[0];
    return LSD_OK;
}
