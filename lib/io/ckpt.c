#include "io/ckpt.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/pickle.h"
#include "io/zip_archive.h"

/* Copies of strided views may add up to this many times the archive's size (as zip entries may). */
#define CKPT_MAX_COPY_RATIO 64u

struct lsdi_ckpt {
    lsdi_pickle *pk; /* owns the tensor names */
    lsdi_ckpt_select select;
    lsdi_st_tensor *tensors;
    size_t n;
    const lsdi_st_tensor **by_name;
    void **bufs; /* storages and contiguous copies */
    size_t n_bufs;
    char name[];
};

typedef struct storage_ref {
    const lsdi_pk_storage *st;
    size_t tensor;
} storage_ref;

typedef struct loader {
    lsdi_ckpt *c;
    lsdi_zip *z;
    const char *stem;
    size_t stem_len;
    uint64_t archive_size, copied;
    const lsdi_pk_tensor **views; /* per tensor */
    const unsigned char **bases;  /* per tensor: its storage's bytes */
    uint64_t *storage_numel;      /* per tensor */
} loader;

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(((const storage_ref *)a)->st->key, ((const storage_ref *)b)->st->key);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const lsdi_st_tensor *const *)a)->name, (*(const lsdi_st_tensor *const *)b)->name);
}

static lsd_status keep_buf(loader *L, void *buf)
{
    L->c->bufs[L->c->n_bufs++] = buf;
    return LSD_OK;
}

/* <stem>/data.pkl, with one folder level; torch names the folder after the file (or "archive"). */
static lsd_status find_pickle(loader *L, size_t *index)
{
    size_t found = 0, count = lsdi_zip_count(L->z);
    for (size_t i = 0; i < count; i++) {
        const char *e = lsdi_zip_entry_name(L->z, i);
        const char *slash = e ? strchr(e, '/') : NULL;
        if (!slash || slash == e || strcmp(slash, "/data.pkl") != 0)
            continue;
        if (found++)
            return lsdi_error(LSD_ERR_FORMAT, "%s: more than one data.pkl record ('%.*s/', '%s')", L->c->name,
                              (int)L->stem_len, L->stem, e);
        L->stem = e;
        L->stem_len = (size_t)(slash - e);
        *index = i;
    }
    if (!found)
        return lsdi_error(LSD_ERR_FORMAT, "%s: not a PyTorch zip checkpoint (no <folder>/data.pkl record)",
                          L->c->name);
    return LSD_OK;
}

/* Reads record <stem>/data/<key>, which must hold exactly the storage's numel x itemsize bytes. */
static lsd_status read_storage(loader *L, const lsdi_pk_storage *st, const char *tensor, void **buf)
{
    size_t item = lsdi_st_dtype_size(st->dtype), idx, size, got;
    char rec[512];
    if ((size_t)snprintf(rec, sizeof(rec), "%.*s/data/%s", (int)L->stem_len, L->stem, st->key) >= sizeof(rec))
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': storage key '%.40s...' is too long", L->c->name,
                          tensor, st->key);
    lsd_status s = lsdi_zip_find(L->z, rec, &idx);
    if (s != LSD_OK)
        return lsdi_error(s, "%s: tensor '%s': its storage record '%s' is missing", L->c->name, tensor, rec);
    LSDI_TRY(lsdi_zip_entry_size(L->z, idx, &size));
    if ((uint64_t)st->numel > SIZE_MAX / item || size != (size_t)st->numel * item)
        return lsdi_error(LSD_ERR_FORMAT,
                          "%s: record '%s' holds %zu bytes, but tensor '%s' declares a %s storage of %lld "
                          "elements (%llu bytes)", L->c->name, rec, size, tensor, lsdi_st_dtype_name(st->dtype),
                          (long long)st->numel, (unsigned long long)((uint64_t)st->numel * item));
    LSDI_TRY(lsdi_zip_read(L->z, idx, buf, &got));
    return keep_buf(L, *buf);
}

/* Storages are shared between tensors (views, tied weights): read each record once, and insist that every
 * reference agrees on its dtype and size. */
static lsd_status load_storages(loader *L)
{
    size_t n = L->c->n;
    storage_ref *refs = malloc((n ? n : 1) * sizeof(*refs));
    if (!refs)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", L->c->name);
    for (size_t i = 0; i < n; i++)
        refs[i] = (storage_ref){&L->views[i]->storage->u.storage, i};
    qsort(refs, n, sizeof(*refs), cmp_ref);
    lsd_status s = LSD_OK;
    void *buf = NULL;
    for (size_t i = 0; i < n && s == LSD_OK; i++) {
        const lsdi_pk_storage *st = refs[i].st;
        const char *tname = L->c->tensors[refs[i].tensor].name;
        if (i == 0 || strcmp(st->key, refs[i - 1].st->key) != 0) {
            s = read_storage(L, st, tname, &buf);
        } else if (st->dtype != refs[i - 1].st->dtype || st->numel != refs[i - 1].st->numel) {
            s = lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': storage '%s' is declared as %s x %lld here and as "
                           "%s x %lld by tensor '%s'", L->c->name, tname, st->key, lsdi_st_dtype_name(st->dtype),
                           (long long)st->numel, lsdi_st_dtype_name(refs[i - 1].st->dtype),
                           (long long)refs[i - 1].st->numel, L->c->tensors[refs[i - 1].tensor].name);
        }
        L->bases[refs[i].tensor] = buf;
        L->storage_numel[refs[i].tensor] = (uint64_t)st->numel;
    }
    free(refs);
    return s;
}

static void copy_strided(const lsdi_pk_tensor *v, const unsigned char *base, size_t item, unsigned char *dst)
{
    int64_t idx[LSDI_ST_MAX_DIMS] = {0};
    int64_t off = v->offset;
    for (;;) {
        memcpy(dst, base + (size_t)off * item, item);
        dst += item;
        int d = v->ndim - 1;
        for (; d >= 0; d--) {
            off += v->stride[d];
            if (++idx[d] < v->size[d])
                break;
            off -= v->stride[d] * v->size[d];
            idx[d] = 0;
        }
        if (d < 0)
            return;
    }
}

/* offset + sum((size_i - 1) * stride_i) must fall inside the storage; contiguous views point into it, others
 * are copied. A view with more elements than its storage overlaps itself (stride 0), which torch.save only
 * writes for expanded tensors no model file holds, and whose copy could be far larger than the file. */
static lsd_status place_tensor(loader *L, size_t i)
{
    lsdi_st_tensor *t = &L->c->tensors[i];
    const lsdi_pk_tensor *v = L->views[i];
    size_t item = lsdi_st_dtype_size(t->dtype);
    uint64_t storage_numel = L->storage_numel[i];
    int64_t numel = 1, last = v->offset, want = 1;
    int contiguous = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        int64_t sz = v->size[d], sd = v->stride[d];
        if (sz && numel > INT64_MAX / sz)
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': element count overflows", L->c->name, t->name);
        numel *= sz;
        if (sz > 1) {
            if (sd && sz - 1 > (INT64_MAX - last) / sd)
                return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': strides overflow", L->c->name, t->name);
            last += (sz - 1) * sd;
            contiguous &= sd == want;
        }
        if (want <= INT64_MAX / (sz ? sz : 1))
            want *= sz ? sz : 1;
    }
    t->ndim = v->ndim;
    memcpy(t->shape, v->size, sizeof(int64_t) * (size_t)v->ndim);
    t->numel = (uint64_t)numel;
    t->nbytes = (uint64_t)numel * item;
    t->data = L->bases[i];
    if (numel == 0)
        return LSD_OK;
    if ((uint64_t)last >= storage_numel || (uint64_t)numel > storage_numel)
        return lsdi_error(LSD_ERR_FORMAT,
                          "%s: tensor '%s': view (offset %lld, %lld elements, last element %lld) does not fit "
                          "its storage '%s' of %llu elements", L->c->name, t->name, (long long)v->offset,
                          (long long)numel, (long long)last, v->storage->u.storage.key,
                          (unsigned long long)storage_numel);
    if (contiguous) {
        t->data = L->bases[i] + (size_t)v->offset * item;
        return LSD_OK;
    }
    uint64_t budget = L->archive_size > UINT64_MAX / CKPT_MAX_COPY_RATIO ? UINT64_MAX
                                                                         : L->archive_size * CKPT_MAX_COPY_RATIO;
    if (t->nbytes > budget - L->copied)
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': strided copies add up to more than %ux the file",
                          L->c->name, t->name, CKPT_MAX_COPY_RATIO);
    unsigned char *copy = malloc((size_t)t->nbytes);
    if (!copy)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: tensor '%s': cannot allocate %llu bytes", L->c->name,
                          t->name, (unsigned long long)t->nbytes);
    L->copied += t->nbytes;
    copy_strided(v, L->bases[i], item, copy);
    t->data = copy;
    return keep_buf(L, copy);
}

static const lsdi_pk_value *state_dict(const lsdi_ckpt *c)
{
    const lsdi_pk_value *root = lsdi_pickle_root(c->pk);
    const lsdi_pk_value *picked = c->select ? c->select(root) : NULL;
    if (picked)
        return picked;
    const lsdi_pk_value *sd = lsdi_pk_dict_get(root, "state_dict");
    return sd && sd->kind == LSDI_PK_DICT ? sd : root;
}

static lsd_status collect_tensors(loader *L)
{
    lsdi_ckpt *c = L->c;
    const lsdi_pk_value *sd = state_dict(c);
    if (sd->kind != LSDI_PK_DICT)
        return lsdi_error(LSD_ERR_FORMAT, "%s: the pickle holds a %s, not a state dict", c->name,
                          lsdi_pk_kind_name(sd->kind));
    size_t n = 0;
    for (size_t i = 0; i < sd->u.dict.n; i++)
        n += sd->u.dict.vals[i]->kind == LSDI_PK_TENSOR;
    size_t cnt = n ? n : 1;
    c->tensors = calloc(cnt, sizeof(*c->tensors));
    c->by_name = calloc(cnt, sizeof(*c->by_name));
    c->bufs = calloc(2 * cnt, sizeof(*c->bufs)); /* at most one storage and one copy per tensor */
    L->views = calloc(cnt, sizeof(*L->views));
    L->bases = calloc(cnt, sizeof(*L->bases));
    L->storage_numel = calloc(cnt, sizeof(*L->storage_numel));
    if (!c->tensors || !c->by_name || !c->bufs || !L->views || !L->bases || !L->storage_numel)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu tensors", c->name, n);
    for (size_t i = 0; i < sd->u.dict.n; i++) {
        const lsdi_pk_value *k = sd->u.dict.keys[i], *v = sd->u.dict.vals[i];
        if (v->kind != LSDI_PK_TENSOR) {
            if (k->kind == LSDI_PK_STR)
                lsdi_log(LSD_LOG_DEBUG, "%s: skipping '%s' (a %s, not a tensor)", c->name, k->u.str.s,
                         lsdi_pk_kind_name(v->kind));
            continue;
        }
        if (k->kind != LSDI_PK_STR || strlen(k->u.str.s) != k->u.str.len)
            return lsdi_error(LSD_ERR_FORMAT, "%s: state dict entry #%zu has a %s key, not a plain string", c->name,
                              i, lsdi_pk_kind_name(k->kind));
        lsdi_st_tensor *t = &c->tensors[c->n];
        t->name = k->u.str.s;
        t->dtype = v->u.tensor.storage->u.storage.dtype;
        L->views[c->n] = &v->u.tensor;
        c->by_name[c->n] = t;
        c->n++;
    }
    qsort(c->by_name, c->n, sizeof(*c->by_name), cmp_name);
    for (size_t i = 1; i < c->n; i++)
        if (strcmp(c->by_name[i - 1]->name, c->by_name[i]->name) == 0)
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' appears twice in the state dict", c->name,
                              c->by_name[i]->name);
    return LSD_OK;
}

/* torch >= 2.1 records the byte order of the storages; older files are little-endian, as this reader assumes. */
static lsd_status check_byteorder(loader *L)
{
    char rec[512];
    size_t idx, size;
    void *data;
    snprintf(rec, sizeof(rec), "%.*s/byteorder", (int)L->stem_len, L->stem);
    if (lsdi_zip_find(L->z, rec, &idx) != LSD_OK)
        return LSD_OK;
    LSDI_TRY(lsdi_zip_entry_size(L->z, idx, &size));
    if (size > 16)
        return lsdi_error(LSD_ERR_FORMAT, "%s: record '%s' has %zu bytes", L->c->name, rec, size);
    LSDI_TRY(lsdi_zip_read(L->z, idx, &data, &size));
    int little = size == 6 && !memcmp(data, "little", 6);
    free(data);
    if (!little)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: record '%s' says the storages are not little-endian",
                          L->c->name, rec);
    return LSD_OK;
}

static lsd_status load(loader *L)
{
    size_t pkl_index = 0, pkl_size = 0;
    void *pkl;
    LSDI_TRY(find_pickle(L, &pkl_index));
    LSDI_TRY(check_byteorder(L));
    LSDI_TRY(lsdi_zip_read(L->z, pkl_index, &pkl, &pkl_size));
    char pname[1024];
    snprintf(pname, sizeof(pname), "%s:%s", L->c->name, lsdi_zip_entry_name(L->z, pkl_index));
    lsd_status s = lsdi_pickle_open_memory(pkl, pkl_size, pname, &L->c->pk);
    free(pkl);
    LSDI_TRY(s);
    LSDI_TRY(collect_tensors(L));
    LSDI_TRY(load_storages(L));
    for (size_t i = 0; i < L->c->n; i++)
        LSDI_TRY(place_tensor(L, i));
    return LSD_OK;
}

/* A zip starts with a local header; anything else is refused here, before libzip, with the reason a user can act
 * on. A pre-1.6 torch.save file is a bare pickle, whose tensors follow the pickle in a layout not read here. */
static lsd_status check_magic(const unsigned char *head, size_t n, const char *name)
{
    static const unsigned char pk[4] = {'P', 'K', 3, 4};
    if (n >= 4 && memcmp(head, pk, 4) == 0)
        return LSD_OK;
    if (n >= 2 && head[0] == 0x80 && head[1] <= 5)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: not a PyTorch zip checkpoint but a legacy (pre-1.6) torch.save "
                          "pickle; re-save it with a newer torch or convert it to safetensors", name);
    return lsdi_error(LSD_ERR_FORMAT, "%s: not a PyTorch zip checkpoint (no zip signature)", name);
}

static lsd_status open_common(lsdi_zip *z, const char *name, uint64_t size, lsdi_ckpt_select select,
                              lsdi_ckpt **out)
{
    size_t name_len = strlen(name);
    lsdi_ckpt *c = calloc(1, sizeof(*c) + name_len + 1);
    if (!c) {
        lsdi_zip_close(z);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
    }
    memcpy(c->name, name, name_len + 1);
    c->select = select;
    loader L = {.c = c, .z = z, .archive_size = size};
    lsd_status s = load(&L);
    free(L.views);
    free(L.bases);
    free(L.storage_numel);
    lsdi_zip_close(z);
    if (s != LSD_OK) {
        lsdi_ckpt_close(c);
        return s;
    }
    *out = c;
    return LSD_OK;
}

lsd_status lsdi_ckpt_open_memory_at(const void *data, size_t size, const char *name, lsdi_ckpt_select select,
                                    lsdi_ckpt **out)
{
    *out = NULL;
    lsdi_zip *z;
    LSDI_TRY(check_magic(data, data ? size : 0, name));
    LSDI_TRY(lsdi_zip_open_memory(data, size, name, &z));
    return open_common(z, name, size, select, out);
}

lsd_status lsdi_ckpt_open_memory(const void *data, size_t size, const char *name, lsdi_ckpt **out)
{
    return lsdi_ckpt_open_memory_at(data, size, name, NULL, out);
}

lsd_status lsdi_ckpt_open(const char *path, lsdi_ckpt **out)
{
    *out = NULL;
    unsigned char head[4];
    FILE *f = fopen(path, "rb");
    if (!f)
        return lsdi_error(LSD_ERR_IO, "%s: cannot open", path);
    size_t n = fread(head, 1, sizeof(head), f);
    int ok = fseek(f, 0, SEEK_END) == 0;
    long size = ftell(f);
    fclose(f);
    if (!ok || size < 0)
        return lsdi_error(LSD_ERR_IO, "%s: cannot read", path);
    LSDI_TRY(check_magic(head, n, path));
    lsdi_zip *z;
    LSDI_TRY(lsdi_zip_open(path, &z));
    return open_common(z, path, (uint64_t)size, NULL, out);
}

void lsdi_ckpt_close(lsdi_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_bufs; i++)
        free(c->bufs[i]);
    free(c->bufs);
    free(c->tensors);
    free(c->by_name);
    lsdi_pickle_free(c->pk);
    free(c);
}

const lsdi_pk_value *lsdi_ckpt_root(const lsdi_ckpt *c)
{
    return lsdi_pickle_root(c->pk);
}

const char *lsdi_ckpt_path(const lsdi_ckpt *c)
{
    return c->name;
}

size_t lsdi_ckpt_count(const lsdi_ckpt *c)
{
    return c->n;
}

const lsdi_st_tensor *lsdi_ckpt_at(const lsdi_ckpt *c, size_t i)
{
    return i < c->n ? &c->tensors[i] : NULL;
}

const lsdi_st_tensor *lsdi_ckpt_find(const lsdi_ckpt *c, const char *name)
{
    lsdi_st_tensor key = {.name = name};
    const lsdi_st_tensor *kp = &key;
    const lsdi_st_tensor **hit = bsearch(&kp, c->by_name, c->n, sizeof(*c->by_name), cmp_name);
    return hit ? *hit : NULL;
}
