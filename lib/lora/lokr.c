/* LoKr (LyCORIS): delta W = kron(w1, w2) * scale, reshaped to the weight: w1 [a, c] (lokr_w1, or lokr_w1_a @
 * lokr_w1_b), w2 [b, d] or, for a conv, [b, d, kh, kw] (lokr_w2, or lokr_w2_a @ lokr_w2_b with w2_b [r, d * kh * kw],
 * or Tucker: sum_ij w2_a[i, p] t2[i, j] w2_b[j, q]), so out = a * b and in = c * d. The scale is alpha / rank with
 * rank the first dimension of lokr_w1_b (else lokr_w2_b); with neither factor decomposed it is 1 and alpha is
 * ignored (lycoris/modules/lokr.py: "use scale = 1"; A1111's network_lokr.py leaves dim unset). */
#include "core/error.h"
#include "lora/lora.h"

/* The second factor as [b, d * kh * kw]. */
static lsdt_tensor *second(lsdt_scope *s, const lsdi_lora_entry *e, int64_t b)
{
    const lsdt_tensor *w2 = e->t[LSDI_ROLE_LOKR_W2];
    int64_t flat[2] = {b, -1};
    if (w2)
        return lsdt_reshape(s, lsdt_to_dtype(s, w2, LSDT_F32), flat, 2);
    const lsdt_tensor *wa = lsdt_to_dtype(s, e->t[LSDI_ROLE_LOKR_W2_A], LSDT_F32);
    const lsdt_tensor *wb = lsdt_to_dtype(s, e->t[LSDI_ROLE_LOKR_W2_B], LSDT_F32);
    if (e->t[LSDI_ROLE_LOKR_T2]) {
        lsdt_tensor *t = lsdt_to_dtype(s, e->t[LSDI_ROLE_LOKR_T2], LSDT_F32);
        return lsdt_reshape(s, lsdi_tucker_rebuild(s, lsdt_transpose(s, wa, 0, 1), t, wb), flat, 2);
    }
    int64_t rflat[2] = {lsdt_size(e->t[LSDI_ROLE_LOKR_W2_B], 0), -1};
    return lsdt_matmul(s, wa, lsdt_reshape(s, wb, rflat, 2));
}

lsdt_tensor *lsdi_lokr_delta(lsdt_scope *s, const lsdi_lora_entry *e, const int64_t *shape, int ndim)
{
    lsdt_tensor *w1 = e->t[LSDI_ROLE_LOKR_W1]
                          ? lsdt_to_dtype(s, e->t[LSDI_ROLE_LOKR_W1], LSDT_F32)
                          : lsdt_matmul(s, lsdt_to_dtype(s, e->t[LSDI_ROLE_LOKR_W1_A], LSDT_F32),
                                        lsdt_to_dtype(s, e->t[LSDI_ROLE_LOKR_W1_B], LSDT_F32));
    if (!w1)
        return NULL;
    int64_t a = lsdt_size(w1, 0), c = lsdt_size(w1, 1), b = shape[0] / a, d = shape[1] / c;
    /* kron: delta[i * b + p, j * d + q, kernel] = w1[i, j] * w2[p, q, kernel] */
    int64_t s1[5] = {a, 1, c, 1, 1}, s2[5] = {1, b, 1, d, -1};
    lsdt_tensor *k = lsdt_mul(s, lsdt_reshape(s, w1, s1, 5), lsdt_reshape(s, second(s, e, b), s2, 5));
    return lsdt_reshape(s, lsdt_mul_scalar(s, k, e->scale), shape, ndim);
}

static lsd_status both(const char *path, const lsdi_st_tensor *x, const lsdi_st_tensor *y, const lsdi_module *mod)
{
    return lsdi_error(LSD_ERR_FORMAT, "%s: tensors '%s' and '%s' both give the same part of module '%s'", path,
                      x->name, y->name, mod->name);
}

static int is_matrix(const lsdi_st_tensor *t)
{
    return t->ndim == 2 && t->shape[0] >= 1 && t->shape[1] >= 1;
}

/* w1's [a, c] (and its rank, 0 when whole). */
static lsd_status check_w1(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int64_t *a,
                           int64_t *c, int *rank)
{
    const lsdi_st_tensor *w = p->t[LSDI_ROLE_LOKR_W1], *wa = p->t[LSDI_ROLE_LOKR_W1_A], *wb = p->t[LSDI_ROLE_LOKR_W1_B];
    if (w && (wa || wb))
        return both(path, w, wa ? wa : wb, mod);
    if (w) {
        if (!is_matrix(w)) {
            int64_t want[2] = {1, 1};
            return lsdi_lora_mismatch(path, w, mod, want, 2);
        }
        *a = w->shape[0];
        *c = w->shape[1];
        *rank = 0;
        return LSD_OK;
    }
    if (!wa || !wb) {
        return lsdi_lora_missing(path, p, wa ? wa : wb, mod,
                                 wa   ? LSDI_ROLE_LOKR_W1_B
                                 : wb ? LSDI_ROLE_LOKR_W1_A
                                      : LSDI_ROLE_LOKR_W1);
    }
    if (!is_matrix(wb)) {
        int64_t want[2] = {1, 1};
        return lsdi_lora_mismatch(path, wb, mod, want, 2);
    }
    if (!is_matrix(wa) || wa->shape[1] != wb->shape[0]) {
        int64_t want[2] = {wa->ndim >= 1 ? wa->shape[0] : 1, wb->shape[0]};
        return lsdi_lora_mismatch(path, wa, mod, want, 2);
    }
    *a = wa->shape[0];
    *c = wb->shape[1];
    *rank = (int)wb->shape[0];
    return LSD_OK;
}

/* Where a dimension of w2 comes from: the tensor, its axis, and the factor it holds there (w2_b [r, d * kh * kw]). */
typedef struct dim_src {
    const lsdi_st_tensor *t;
    int axis;
    int64_t mult;
} dim_src;

/* w2's [b, d] (its kernel checked against the layer's), the tensors that fix them, its rank (0 when whole). */
static lsd_status check_w2(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int64_t *b,
                           int64_t *d, dim_src *bs, dim_src *ds, int *rank)
{
    const lsdi_st_tensor *w = p->t[LSDI_ROLE_LOKR_W2], *wa = p->t[LSDI_ROLE_LOKR_W2_A], *wb = p->t[LSDI_ROLE_LOKR_W2_B];
    const lsdi_st_tensor *t = p->t[LSDI_ROLE_LOKR_T2];
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    int conv = mod->kind == LSDI_MOD_CONV;
    if (w && (wa || wb || t))
        return both(path, w, wa ? wa : wb ? wb : t, mod);
    if (w) {
        int ok = is_matrix(w) ? k == 1 : conv && w->ndim == 4 && w->shape[2] == k && w->shape[3] == k;
        if (!ok) {
            int64_t want[4] = {w->shape[0], w->ndim > 1 ? w->shape[1] : 1, k, k};
            return lsdi_lora_mismatch(path, w, mod, want, conv ? 4 : 2);
        }
        *b = w->shape[0];
        *d = w->shape[1];
        *bs = (dim_src){w, 0, 1};
        *ds = (dim_src){w, 1, 1};
        *rank = 0;
        return LSD_OK;
    }
    if (!wa || !wb)
        return lsdi_lora_missing(path, p, wa ? wa : wb ? wb : t, mod,
                                 wa ? LSDI_ROLE_LOKR_W2_B : wb ? LSDI_ROLE_LOKR_W2_A : LSDI_ROLE_LOKR_W2);
    if (t) {
        int64_t ra = t->ndim == 4 ? t->shape[0] : 1, rb = t->ndim == 4 ? t->shape[1] : 1;
        if (!conv || t->ndim != 4 || ra < 1 || rb < 1 || t->shape[2] != k || t->shape[3] != k) {
            int64_t want[4] = {ra, rb, k, k};
            return lsdi_lora_mismatch(path, t, mod, want, 4);
        }
        if (!is_matrix(wa) || wa->shape[0] != ra) {
            int64_t want[2] = {ra, wa->ndim >= 2 ? wa->shape[1] : 1};
            return lsdi_lora_mismatch(path, wa, mod, want, 2);
        }
        if (!is_matrix(wb) || wb->shape[0] != rb) {
            int64_t want[2] = {rb, wb->ndim >= 2 ? wb->shape[1] : 1};
            return lsdi_lora_mismatch(path, wb, mod, want, 2);
        }
        *b = wa->shape[1];
        *d = wb->shape[1];
        *bs = (dim_src){wa, 1, 1};
        *ds = (dim_src){wb, 1, 1};
        *rank = (int)rb;
        return LSD_OK;
    }
    int64_t kk = (int64_t)k * k;
    int ok_b = wb->ndim >= 2 && wb->shape[0] >= 1 && wb->shape[1] >= 1 &&
               ((wb->ndim == 2 && wb->shape[1] % kk == 0) ||
                (conv && wb->ndim == 4 && wb->shape[2] == k && wb->shape[3] == k));
    if (!ok_b) {
        int64_t want[4] = {wb->ndim >= 1 ? wb->shape[0] : 1, wb->ndim >= 2 ? wb->shape[1] : 1, k, k};
        return lsdi_lora_mismatch(path, wb, mod, want, conv ? 4 : 2);
    }
    if (!is_matrix(wa) || wa->shape[1] != wb->shape[0]) {
        int64_t want[2] = {wa->ndim >= 1 ? wa->shape[0] : 1, wb->shape[0]};
        return lsdi_lora_mismatch(path, wa, mod, want, 2);
    }
    *b = wa->shape[0];
    *d = wb->ndim == 2 ? wb->shape[1] / kk : wb->shape[1];
    *bs = (dim_src){wa, 0, 1};
    *ds = (dim_src){wb, 1, wb->ndim == 2 ? kk : 1};
    *rank = (int)wb->shape[0];
    return LSD_OK;
}

lsd_status lsdi_lokr_check(const lsdi_lora_pending *p, const lsdi_module *mod, const char *path, int *rank)
{
    int64_t a = 0, c = 0, b = 0, d = 0;
    int r1 = 0, r2 = 0;
    dim_src bs, ds;
    LSDI_TRY(check_w1(p, mod, path, &a, &c, &r1));
    LSDI_TRY(check_w2(p, mod, path, &b, &d, &bs, &ds, &r2));
    int in, out, k;
    lsdi_lora_module_dims(mod, &in, &out, &k);
    if (a * b != out || c * d != in) {
        /* kron(w1, w2) must tile the weight: w2 is [out / a, in / c] */
        const dim_src *src = a * b != out ? &bs : &ds;
        int64_t want[LSDI_ST_MAX_DIMS];
        for (int i = 0; i < src->t->ndim; i++)
            want[i] = src->t->shape[i];
        want[src->axis] = (a * b != out ? out / a : in / c) * src->mult;
        return lsdi_lora_mismatch(path, src->t, mod, want, src->t->ndim);
    }
    *rank = r1 ? r1 : r2;
    return LSD_OK;
}
