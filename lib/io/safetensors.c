#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "core/error.h"

/* The reference implementation's limit: a larger header is an attack, not a model. */
#define MAX_HEADER_BYTES (100u * 1000u * 1000u)
/* JSON numbers are doubles: past 2^53 an integer is no longer exact. */
#define MAX_JSON_INT 9007199254740992.0

struct lsdi_st_file {
    char *name; /* path or the caller's name, for messages */
    const unsigned char *base;
    size_t size;
    int mapped;
    lsdi_st_tensor *tensors; /* by data offset */
    const lsdi_st_tensor **by_name;
    size_t n;
    const char **meta_keys; /* by key */
    const char **meta_values;
    size_t n_meta;
    char *strings; /* every name, key and value */
    atomic_int refs;
};

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [LSDI_ST_F64] = {"F64", 8}, [LSDI_ST_F32] = {"F32", 4}, [LSDI_ST_F16] = {"F16", 2},
    [LSDI_ST_BF16] = {"BF16", 2}, [LSDI_ST_I64] = {"I64", 8}, [LSDI_ST_I32] = {"I32", 4},
    [LSDI_ST_I16] = {"I16", 2},   [LSDI_ST_I8] = {"I8", 1},   [LSDI_ST_U8] = {"U8", 1},
    [LSDI_ST_BOOL] = {"BOOL", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *lsdi_st_dtype_name(lsdi_st_dtype dt) { return (unsigned)dt < N_DTYPES ? dtypes[dt].name : "?"; }
size_t lsdi_st_dtype_size(lsdi_st_dtype dt) { return (unsigned)dt < N_DTYPES ? dtypes[dt].size : 0; }

static int dtype_parse(const char *s, lsdi_st_dtype *out)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (lsdi_st_dtype)i;
            return 1;
        }
    return 0;
}

int lsdi_st_utf8_valid(const unsigned char *s, size_t n, size_t *bad_at)
{
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        size_t left = n - i;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(left > 4 ? 4 : left), &cp);
        if (k <= 0) {
            *bad_at = i;
            return 0;
        }
        i += (size_t)k;
    }
    return 1;
}

/* NULL when v is an exact non-negative integer, else what is wrong with it. */
static const char *json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return "is not a number";
    double d = v->valuedouble;
    if (d < 0)
        return "is negative";
    if (d > MAX_JSON_INT)
        return "is too large";
    if (d != (double)(uint64_t)d)
        return "is not an integer";
    *out = (uint64_t)d;
    return NULL;
}

/* Parse state: one per tensor until the checks pass. */
typedef struct entry {
    lsdi_st_tensor t;
    uint64_t begin, end;
} entry;

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->t.name, ((const entry *)b)->t.name);
}

static int cmp_entry_offset(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->t.name, y->t.name);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int cmp_tensor_ptr(const void *a, const void *b)
{
    return strcmp((*(const lsdi_st_tensor *const *)a)->name, (*(const lsdi_st_tensor *const *)b)->name);
}

static int cmp_json_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

static char *arena_put(char **cursor, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = *cursor;
    memcpy(p, s, n);
    *cursor += n;
    return p;
}

static lsd_status parse_tensor(const char *file, const cJSON *item, entry *e)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", file, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt))
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", file, name);
    if (!dtype_parse(dt->valuestring, &e->t.dtype))
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", file, name, dt->valuestring);
    if (!cJSON_IsArray(shape))
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", file, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > LSDI_ST_MAX_DIMS)
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': shape has %d dimensions, more than %d", file, name,
                          ndim, LSDI_ST_MAX_DIMS);
    e->t.ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t dim;
        const char *why = json_u64(v, &dim);
        if (why)
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': shape dimension %d %s", file, name, d, why);
        e->t.shape[d] = (int64_t)dim;
        if (__builtin_mul_overflow(numel, dim, &numel))
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': shape product overflows 64 bits", file, name);
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)dtypes[e->t.dtype].size, &nbytes))
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': size in bytes overflows 64 bits", file, name);
    e->t.numel = numel;
    e->t.nbytes = nbytes;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" is not an array of 2 integers", file,
                          name);
    const char *why = json_u64(offs->child, &e->begin);
    if (!why)
        why = json_u64(offs->child->next, &e->end);
    if (why)
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': a data offset %s", file, name, why);
    if (e->end < e->begin)
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                          file, name, e->begin, e->end);
    if (e->end - e->begin != nbytes)
        return lsdi_error(LSD_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                          " bytes, but %" PRIu64 " elements of %s need %" PRIu64,
                          file, name, e->begin, e->end, e->end - e->begin, numel, dtypes[e->t.dtype].name, nbytes);
    return LSD_OK;
}

static lsd_status parse_metadata(lsdi_st_file *f, const cJSON *meta, char **cursor)
{
    if (!cJSON_IsObject(meta))
        return lsdi_error(LSD_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", f->name);
    const cJSON **items = malloc((f->n_meta ? f->n_meta : 1) * sizeof *items);
    if (!items)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu metadata entries", f->name, f->n_meta);
    size_t i = 0;
    for (const cJSON *v = meta->child; v; v = v->next)
        items[i++] = v;
    qsort(items, f->n_meta, sizeof *items, cmp_json_key);
    lsd_status st = LSD_OK;
    for (i = 0; i < f->n_meta && st == LSD_OK; i++) {
        if (!cJSON_IsString(items[i]))
            st = lsdi_error(LSD_ERR_FORMAT, "%s: metadata value of '%s' is not a string", f->name, items[i]->string);
        else if (i > 0 && strcmp(items[i - 1]->string, items[i]->string) == 0)
            st = lsdi_error(LSD_ERR_FORMAT, "%s: duplicate metadata key '%s'", f->name, items[i]->string);
        else {
            f->meta_keys[i] = arena_put(cursor, items[i]->string);
            f->meta_values[i] = arena_put(cursor, items[i]->valuestring);
        }
    }
    free(items);
    return st;
}

/* Names, offsets and sizes are checked as a whole once every entry parsed on its own. */
static lsd_status check_layout(const lsdi_st_file *f, entry *es, size_t n, uint64_t data_len)
{
    qsort(es, n, sizeof *es, cmp_entry_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(es[i - 1].t.name, es[i].t.name) == 0)
            return lsdi_error(LSD_ERR_FORMAT, "%s: duplicate tensor name '%s'", f->name, es[i].t.name);
    qsort(es, n, sizeof *es, cmp_entry_offset);
    uint64_t expect = 0;
    for (size_t i = 0; i < n; i++) {
        if (es[i].end > data_len)
            return lsdi_error(LSD_ERR_FORMAT,
                              "%s: tensor '%s': data ends at byte %" PRIu64 " of the data section, past the end of "
                              "the file (%" PRIu64 " data bytes)",
                              f->name, es[i].t.name, es[i].end, data_len);
        if (es[i].begin > expect)
            return lsdi_error(LSD_ERR_FORMAT,
                              "%s: tensor '%s': data starts at %" PRIu64 ", leaving a hole after byte %" PRIu64,
                              f->name, es[i].t.name, es[i].begin, expect);
        if (es[i].begin < expect)
            return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s': data [%" PRIu64 ", %" PRIu64 ") overlaps '%s'",
                              f->name, es[i].t.name, es[i].begin, es[i].end, es[i - 1].t.name);
        expect = es[i].end;
    }
    if (expect != data_len)
        return lsdi_error(LSD_ERR_FORMAT, "%s: %" PRIu64 " trailing bytes after the last tensor%s%s%s", f->name,
                          data_len - expect, n ? " ('" : "", n ? es[n - 1].t.name : "", n ? "')" : "");
    return LSD_OK;
}

static lsd_status parse_json(lsdi_st_file *f, const cJSON *root, uint64_t data_len)
{
    const cJSON *meta = NULL;
    size_t n = 0, strings = 0;
    for (const cJSON *v = root->child; v; v = v->next) {
        strings += strlen(v->string) + 1;
        if (strcmp(v->string, "__metadata__") != 0) {
            n++;
            continue;
        }
        if (meta)
            return lsdi_error(LSD_ERR_FORMAT, "%s: duplicate name '__metadata__'", f->name);
        meta = v;
        if (cJSON_IsObject(v))
            for (const cJSON *m = v->child; m; m = m->next) {
                strings += strlen(m->string) + 1 + (cJSON_IsString(m) ? strlen(m->valuestring) + 1 : 0);
                f->n_meta++;
            }
    }
    /* Every count here is bounded by the header's size, itself bounded above. */
    entry *es = calloc(n ? n : 1, sizeof *es);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    f->meta_keys = calloc(f->n_meta ? f->n_meta : 1, sizeof *f->meta_keys);
    f->meta_values = calloc(f->n_meta ? f->n_meta : 1, sizeof *f->meta_values);
    f->strings = malloc(strings ? strings : 1);
    lsd_status st = LSD_OK;
    if (!es || !f->tensors || !f->by_name || !f->meta_keys || !f->meta_values || !f->strings)
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory for a header of %zu tensors", f->name, n);
    char *cursor = f->strings;
    size_t i = 0;
    for (const cJSON *v = root->child; v && st == LSD_OK; v = v->next) {
        if (v == meta)
            continue;
        es[i].t.name = arena_put(&cursor, v->string);
        st = parse_tensor(f->name, v, &es[i]);
        i++;
    }
    if (st == LSD_OK && meta)
        st = parse_metadata(f, meta, &cursor);
    if (st == LSD_OK)
        st = check_layout(f, es, n, data_len);
    if (st == LSD_OK) {
        const unsigned char *data = f->base + (f->size - data_len);
        for (i = 0; i < n; i++) {
            f->tensors[i] = es[i].t;
            f->tensors[i].data = data + es[i].begin;
            f->tensors[i].in_mapping = f->mapped;
            f->by_name[i] = &f->tensors[i];
        }
        f->n = n;
        qsort(f->by_name, n, sizeof *f->by_name, cmp_tensor_ptr);
    }
    free(es);
    return st;
}

static lsd_status parse(lsdi_st_file *f)
{
    if (f->size < 8)
        return lsdi_error(LSD_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length", f->name,
                          f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->base[i];
    if (hlen > MAX_HEADER_BYTES)
        return lsdi_error(LSD_ERR_FORMAT, "%s: header length %" PRIu64 " is over the %u-byte limit", f->name, hlen,
                          MAX_HEADER_BYTES);
    if (hlen > f->size - 8)
        return lsdi_error(LSD_ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
                          f->name, hlen, f->size);
    const char *header = (const char *)f->base + 8;
    size_t bad;
    if (!lsdi_st_utf8_valid((const unsigned char *)header, (size_t)hlen, &bad))
        return lsdi_error(LSD_ERR_FORMAT, "%s: header is not valid UTF-8 (byte %zu of the header)", f->name, bad);
    if (hlen == 0 || header[0] != '{')
        return lsdi_error(LSD_ERR_FORMAT, "%s: header is not a JSON object (it must start with '{')", f->name);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= header && end <= header + hlen ? (size_t)(end - header) : 0;
        return lsdi_error(LSD_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu of the header)", f->name, at);
    }
    lsd_status st = LSD_OK;
    for (const char *p = end; p < header + hlen && st == LSD_OK; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            st = lsdi_error(LSD_ERR_FORMAT, "%s: header has bytes after its JSON object (byte %zu)", f->name,
                            (size_t)(p - header));
    if (st == LSD_OK)
        st = parse_json(f, root, f->size - 8 - hlen);
    cJSON_Delete(root);
    return st;
}

static void destroy(lsdi_st_file *f)
{
    if (f->mapped && f->base)
        munmap((void *)f->base, f->size);
    free(f->tensors);
    free(f->by_name);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->strings);
    free(f->name);
    free(f);
}

static lsd_status finish_open(lsdi_st_file *f, lsdi_st_file **out)
{
    lsd_status st = parse(f);
    if (st != LSD_OK) {
        destroy(f);
        return st;
    }
    *out = f;
    return LSD_OK;
}

static lsdi_st_file *new_file(const char *name)
{
    lsdi_st_file *f = calloc(1, sizeof *f);
    if (f && !(f->name = strdup(name))) {
        free(f);
        return NULL;
    }
    if (f)
        atomic_init(&f->refs, 1);
    return f;
}

lsd_status lsdi_st_open_memory(const void *data, size_t size, const char *name, lsdi_st_file **out)
{
    if (!out || (!data && size))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "safetensors: NULL %s", out ? "data" : "output pointer");
    *out = NULL;
    lsdi_st_file *f = new_file(name ? name : "(memory)");
    if (!f)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", name ? name : "(memory)");
    f->base = data;
    f->size = size;
    return finish_open(f, out);
}

lsd_status lsdi_st_open(const char *path, lsdi_st_file **out)
{
    if (!path || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "safetensors: NULL %s", path ? "output pointer" : "path");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "%s: cannot open: %s", path,
                          strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        lsd_status st = lsdi_error(LSD_ERR_IO, "%s: not a regular file", path);
        close(fd);
        return st;
    }
    lsdi_st_file *f = new_file(path);
    if (!f) {
        close(fd);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    f->size = (size_t)sb.st_size;
    if (f->size >= 8) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            lsd_status st = lsdi_error(LSD_ERR_IO, "%s: cannot map %zu bytes: %s", path, f->size, strerror(errno));
            close(fd);
            destroy(f);
            return st;
        }
        f->base = m;
        f->mapped = 1;
    }
    close(fd);
    return finish_open(f, out);
}

void lsdi_st_drop_pages(const lsdi_st_tensor *t)
{
    if (!t || !t->in_mapping || !t->nbytes)
        return;
    /* Whole pages only: a page shared with a neighbour is dropped too, and simply read again from the file when
     * the neighbour is copied (the private mapping was never written, so nothing is lost). */
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)t->data & ~(page - 1);
    uintptr_t end = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(page - 1);
    madvise((void *)start, end - start, MADV_DONTNEED);
}

void lsdi_st_retain(lsdi_st_file *f) { atomic_fetch_add(&f->refs, 1); }

void lsdi_st_release(void *p)
{
    lsdi_st_file *f = p;
    if (f && atomic_fetch_sub(&f->refs, 1) == 1)
        destroy(f);
}

void lsdi_st_close(lsdi_st_file *f) { lsdi_st_release(f); }

const char *lsdi_st_path(const lsdi_st_file *f) { return f->name; }
size_t lsdi_st_count(const lsdi_st_file *f) { return f ? f->n : 0; }
const lsdi_st_tensor *lsdi_st_at(const lsdi_st_file *f, size_t i) { return f && i < f->n ? &f->tensors[i] : NULL; }

const lsdi_st_tensor *lsdi_st_find(const lsdi_st_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    const lsdi_st_tensor key = {.name = name}, *pkey = &key;
    const lsdi_st_tensor **hit = bsearch(&pkey, f->by_name, f->n, sizeof *f->by_name, cmp_tensor_ptr);
    return hit ? *hit : NULL;
}

size_t lsdi_st_metadata_count(const lsdi_st_file *f) { return f ? f->n_meta : 0; }

void lsdi_st_metadata_at(const lsdi_st_file *f, size_t i, const char **key, const char **value)
{
    int ok = f && i < f->n_meta;
    if (key)
        *key = ok ? f->meta_keys[i] : NULL;
    if (value)
        *value = ok ? f->meta_values[i] : NULL;
}

const char *lsdi_st_metadata_get(const lsdi_st_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    const char **hit = bsearch(&key, f->meta_keys, f->n_meta, sizeof *f->meta_keys, cmp_str);
    return hit ? f->meta_values[hit - f->meta_keys] : NULL;
}

/* ---- conversion ---------------------------------------------------------------------------------------- */

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* Exact: every f16 value is a f32 value; subnormals are renormalised into f32's wider exponent. */
static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f)
        return bits_f32(sign | 0x7f800000u | man << 13);
    if (exp)
        return bits_f32(sign | (exp + 112) << 23 | man << 13);
    if (!man)
        return bits_f32(sign);
    uint32_t e = 113; /* 2^-14, the subnormals' scale, in f32's bias */
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return bits_f32(sign | e << 23 | (man & 0x3ffu) << 13);
}

void lsdi_st_to_f32(const lsdi_st_tensor *t, float *out)
{
    const unsigned char *p = t->data;
    size_t sz = dtypes[t->dtype].size;
    /* Element reads go through memcpy: the reference writer does not align the data section. */
    for (uint64_t i = 0; i < t->numel; i++, p += sz) {
        union {
            double f64;
            float f32;
            uint16_t u16;
            int64_t i64;
            int32_t i32;
            int16_t i16;
            int8_t i8;
            uint8_t u8;
        } v;
        memcpy(&v, p, sz);
        switch (t->dtype) {
        case LSDI_ST_F64: out[i] = (float)v.f64; break;
        case LSDI_ST_F32: out[i] = v.f32; break;
        case LSDI_ST_F16: out[i] = f16_to_f32(v.u16); break;
        case LSDI_ST_BF16: out[i] = bits_f32((uint32_t)v.u16 << 16); break;
        case LSDI_ST_I64: out[i] = (float)v.i64; break;
        case LSDI_ST_I32: out[i] = (float)v.i32; break;
        case LSDI_ST_I16: out[i] = (float)v.i16; break;
        case LSDI_ST_I8: out[i] = (float)v.i8; break;
        case LSDI_ST_U8: out[i] = (float)v.u8; break;
        case LSDI_ST_BOOL: out[i] = v.u8 ? 1.0f : 0.0f; break;
        }
    }
}
