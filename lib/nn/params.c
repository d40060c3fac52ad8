#include "nn/params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static char *vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

static int grow(void **v, int *cap, int n, size_t elem)
{
    if (n < *cap)
        return 0;
    if (*cap > (1 << 24))
        return -1;
    int ncap = *cap ? *cap * 2 : 64;
    void *nv = realloc(*v, (size_t)ncap * elem);
    if (!nv)
        return -1;
    *v = nv;
    *cap = ncap;
    return 0;
}

lsd_status lsdi_params_add(lsdi_params *p, lsdt_tensor **slot, const int64_t *shape, int ndim, const char *fmt, ...)
{
    if (ndim < 1 || ndim > 4)
        return lsdi_error(LSD_ERR_INTERNAL, "parameter '%s' with %d dims", fmt, ndim);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 1 || shape[i] > ((int64_t)1 << 31))
            return lsdi_error(LSD_ERR_FORMAT, "parameter '%s': dimension %d of size %lld", fmt, i,
                              (long long)shape[i]);
    if (grow((void **)&p->v, &p->cap, p->n, sizeof *p->v))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "parameter table");
    va_list ap;
    va_start(ap, fmt);
    char *name = vformat(fmt, ap);
    va_end(ap);
    if (!name)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "parameter name");
    lsdi_param *e = &p->v[p->n++];
    memset(e, 0, sizeof *e);
    e->name = name;
    e->ndim = ndim;
    memcpy(e->shape, shape, (size_t)ndim * sizeof *shape);
    e->slot = slot;
    return LSD_OK;
}

lsd_status lsdi_params_module(lsdi_params *p, int kind, void *layer, const char *fmt, ...)
{
    if (grow((void **)&p->mods, &p->cap_mods, p->n_mods, sizeof *p->mods))
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "module table");
    va_list ap;
    va_start(ap, fmt);
    char *name = vformat(fmt, ap);
    va_end(ap);
    if (!name)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "module name");
    lsdi_module *m = &p->mods[p->n_mods++];
    m->name = name;
    m->kind = kind;
    m->layer = layer;
    return LSD_OK;
}

lsdi_param *lsdi_params_find(const lsdi_params *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->v[i].name, name) == 0)
            return &p->v[i];
    return NULL;
}

const lsdi_module *lsdi_params_find_module(const lsdi_params *p, const char *name)
{
    for (int i = 0; i < p->n_mods; i++)
        if (strcmp(p->mods[i].name, name) == 0)
            return &p->mods[i];
    return NULL;
}

void lsdi_params_free(lsdi_params *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n; i++) {
        if (p->v[i].slot) {
            lsdt_free(*p->v[i].slot);
            *p->v[i].slot = NULL;
        }
        free(p->v[i].name);
    }
    for (int i = 0; i < p->n_mods; i++)
        free(p->mods[i].name);
    free(p->v);
    free(p->mods);
    memset(p, 0, sizeof *p);
}

int64_t lsdi_params_count_elements(const lsdi_params *p)
{
    int64_t total = 0;
    for (int i = 0; i < p->n; i++) {
        int64_t n = 1;
        for (int d = 0; d < p->v[i].ndim; d++)
            n *= p->v[i].shape[d];
        total += n;
    }
    return total;
}

lsdt_dtype lsdi_dtype_to_shim(lsd_dtype dt)
{
    switch (dt) {
    case LSD_F16:
        return LSDT_F16;
    case LSD_BF16:
        return LSDT_BF16;
    default:
        return LSDT_F32;
    }
}

static int float_dtype(lsdi_st_dtype dt, lsdt_dtype *out)
{
    switch (dt) {
    case LSDI_ST_F32:
        *out = LSDT_F32;
        return 1;
    case LSDI_ST_F16:
        *out = LSDT_F16;
        return 1;
    case LSDI_ST_BF16:
        *out = LSDT_BF16;
        return 1;
    case LSDI_ST_F64:
        *out = LSDT_F64;
        return 1;
    default:
        return 0;
    }
}

static void shape_str(char *buf, size_t n, const int64_t *shape, int ndim)
{
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (used < n)
        snprintf(buf + used, n - used, "]");
}

/* Equal once trailing size-1 dims are dropped on both sides. */
static int shape_matches(const lsdi_param *e, const lsdi_st_tensor *t)
{
    int a = e->ndim, b = t->ndim;
    while (a > 1 && e->shape[a - 1] == 1)
        a--;
    while (b > 1 && t->shape[b - 1] == 1)
        b--;
    if (a != b)
        return 0;
    for (int i = 0; i < a; i++)
        if (e->shape[i] != t->shape[i])
            return 0;
    return 1;
}

#define MAX_LISTED 4

lsd_status lsdi_params_fill(lsdi_params *p, const char *origin, const char *network, lsdi_tensor_lookup lookup,
                            void *user, lsdt_dtype dtype, const char *device)
{
    char msg[1024];
    size_t used = 0;
    int n_missing = 0, n_bad = 0, n_dtype = 0;
    for (int i = 0; i < p->n; i++) {
        const lsdi_param *e = &p->v[i];
        const lsdi_st_tensor *t = lookup(user, e->name);
        char want[96], got[96];
        shape_str(want, sizeof want, e->shape, e->ndim);
        lsdt_dtype sd;
        const char *what = NULL;
        if (!t) {
            n_missing++;
            what = "missing";
            snprintf(got, sizeof got, "-");
        } else if (!shape_matches(e, t)) {
            n_bad++;
            what = "shape";
            shape_str(got, sizeof got, t->shape, t->ndim);
        } else if (!float_dtype(t->dtype, &sd)) {
            n_dtype++;
            what = "dtype";
            snprintf(got, sizeof got, "%s", lsdi_st_dtype_name(t->dtype));
        }
        if (what && n_missing + n_bad + n_dtype <= MAX_LISTED && used < sizeof msg)
            used += (size_t)snprintf(msg + used, sizeof msg - used, "%s%s '%s' expected %s found %s",
                                     used ? "; " : "", what, e->name, want, got);
    }
    int n_fail = n_missing + n_bad + n_dtype;
    if (n_fail) {
        lsd_status st = n_bad ? LSD_ERR_SHAPE_MISMATCH : LSD_ERR_FORMAT;
        return lsdi_error(st, "%s: %s: %d missing, %d mis-shaped, %d non-float tensors (%s%s)", origin, network,
                          n_missing, n_bad, n_dtype, msg, n_fail > MAX_LISTED ? "; ..." : "");
    }
    /* Converted tensors go to a staging array first so that a failure midway leaves the slots untouched. */
    lsdt_tensor **staged = calloc((size_t)p->n ? (size_t)p->n : 1, sizeof *staged);
    if (!staged)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: %s: staging %d tensors", origin, network, p->n);
    lsd_status st = LSD_OK;
    for (int i = 0; i < p->n && st == LSD_OK; i++) {
        const lsdi_param *e = &p->v[i];
        const lsdi_st_tensor *t = lookup(user, e->name);
        lsdt_dtype sd = LSDT_F32;
        float_dtype(t->dtype, &sd);
        lsdt_tensor *x = lsdt_from_host(NULL, t->data, sd, e->shape, e->ndim, dtype, device);
        lsdi_st_drop_pages(t);
        if (x && e->ndim == 4) {
            lsdt_tensor *cl = lsdt_channels_last(NULL, x);
            lsdt_free(x);
            x = cl;
        }
        if (!x)
            st = lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status() ? lsdt_last_status() : LSD_ERR_INTERNAL),
                                   "%s: %s: tensor '%s'", origin, network, e->name);
        staged[i] = x;
    }
    for (int i = 0; i < p->n; i++) {
        if (st != LSD_OK) {
            lsdt_free(staged[i]);
            continue;
        }
        lsdt_free(*p->v[i].slot);
        *p->v[i].slot = staged[i];
    }
    free(staged);
    return st;
}
