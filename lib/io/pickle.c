#include "io/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* Limits that no torch.save output comes near, so that hostile input fails fast instead of eating memory. */
#define PK_MAX_STACK (1u << 22)
#define PK_MAX_MARKS 512u
#define PK_MAX_DEPTH 128
#define PK_MAX_MEMO (1u << 24)
#define PK_MAX_GLOBAL_PART 256u
#define PK_HIGHEST_PROTOCOL 5

enum {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_PARAMETER,
    G_FIRST_STORAGE
};

static const struct {
    const char *full; /* module.name, as GLOBAL and STACK_GLOBAL name it */
    lsdi_st_dtype dtype; /* storage classes only */
} allowed[] = {
    {"collections.OrderedDict", LSDI_ST_F32},
    {"torch._utils._rebuild_tensor_v2", LSDI_ST_F32},
    {"torch._utils._rebuild_parameter", LSDI_ST_F32},
    {"torch.FloatStorage", LSDI_ST_F32},
    {"torch.HalfStorage", LSDI_ST_F16},
    {"torch.BFloat16Storage", LSDI_ST_BF16},
    {"torch.DoubleStorage", LSDI_ST_F64},
    {"torch.LongStorage", LSDI_ST_I64},
    {"torch.IntStorage", LSDI_ST_I32},
    {"torch.ShortStorage", LSDI_ST_I16},
    {"torch.CharStorage", LSDI_ST_I8},
    {"torch.ByteStorage", LSDI_ST_U8},
    {"torch.BoolStorage", LSDI_ST_BOOL},
};
#define N_ALLOWED (sizeof(allowed) / sizeof(allowed[0]))

/* Names of every standard opcode, so that an unsupported one is reported by the name pickletools shows. */
static const struct {
    unsigned char code;
    const char *name;
} opnames[] = {
    {'(', "MARK"}, {'.', "STOP"}, {'0', "POP"}, {'1', "POP_MARK"}, {'2', "DUP"}, {'F', "FLOAT"}, {'I', "INT"},
    {'J', "BININT"}, {'K', "BININT1"}, {'L', "LONG"}, {'M', "BININT2"}, {'N', "NONE"}, {'P', "PERSID"},
    {'Q', "BINPERSID"}, {'R', "REDUCE"}, {'S', "STRING"}, {'T', "BINSTRING"}, {'U', "SHORT_BINSTRING"},
    {'V', "UNICODE"}, {'X', "BINUNICODE"}, {'a', "APPEND"}, {'b', "BUILD"}, {'c', "GLOBAL"}, {'d', "DICT"},
    {'}', "EMPTY_DICT"}, {'e', "APPENDS"}, {'g', "GET"}, {'h', "BINGET"}, {'i', "INST"}, {'j', "LONG_BINGET"},
    {'l', "LIST"}, {']', "EMPTY_LIST"}, {'o', "OBJ"}, {'p', "PUT"}, {'q', "BINPUT"}, {'r', "LONG_BINPUT"},
    {'s', "SETITEM"}, {'t', "TUPLE"}, {')', "EMPTY_TUPLE"}, {'u', "SETITEMS"}, {'G', "BINFLOAT"},
    {0x80, "PROTO"}, {0x81, "NEWOBJ"}, {0x82, "EXT1"}, {0x83, "EXT2"}, {0x84, "EXT4"}, {0x85, "TUPLE1"},
    {0x86, "TUPLE2"}, {0x87, "TUPLE3"}, {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {0x8a, "LONG1"}, {0x8b, "LONG4"},
    {'B', "BINBYTES"}, {'C', "SHORT_BINBYTES"}, {0x8c, "SHORT_BINUNICODE"}, {0x8d, "BINUNICODE8"},
    {0x8e, "BINBYTES8"}, {0x8f, "EMPTY_SET"}, {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {0x92, "NEWOBJ_EX"},
    {0x93, "STACK_GLOBAL"}, {0x94, "MEMOIZE"}, {0x95, "FRAME"}, {0x96, "BYTEARRAY8"}, {0x97, "NEXT_BUFFER"},
    {0x98, "READONLY_BUFFER"},
};

typedef struct pk_node {
    struct pk_node *next;
    lsdi_pk_value v;
} pk_node;

struct lsdi_pickle {
    pk_node *values;
    const lsdi_pk_value *root;
};

typedef struct vm {
    const unsigned char *p;
    size_t n, pos, op_pos;
    const char *name;
    lsdi_pickle *pk;
    lsdi_pk_value **stack;
    size_t sp, stack_cap;
    size_t marks[PK_MAX_MARKS];
    size_t n_marks;
    lsdi_pk_value **memo;
    size_t memo_cap, memo_used;
} vm;

static const char *op_name(unsigned char code)
{
    for (size_t i = 0; i < sizeof(opnames) / sizeof(opnames[0]); i++)
        if (opnames[i].code == code)
            return opnames[i].name;
    return "unknown";
}

const char *lsdi_pk_kind_name(lsdi_pk_kind k)
{
    static const char *const names[] = {"None", "bool", "int", "float", "str", "bytes",
                                        "tuple", "list", "dict", "global", "storage", "tensor"};
    return (unsigned)k < sizeof(names) / sizeof(names[0]) ? names[k] : "?";
}

const char *lsdi_pk_global_name(int global)
{
    return global >= 0 && (size_t)global < N_ALLOWED ? allowed[global].full : "?";
}

LSDI_PRINTF(3, 4)
static lsd_status fail(const vm *m, lsd_status st, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return lsdi_error(st, "%s: %s at offset %zu", m->name, msg, m->op_pos);
}

/* extra: bytes for a string's copy, placed after the node and pointed to by u.str.s. */
static lsdi_pk_value *new_value(vm *m, lsdi_pk_kind kind, size_t extra)
{
    pk_node *nd = calloc(1, sizeof(*nd) + extra);
    if (!nd)
        return NULL;
    nd->next = m->pk->values;
    m->pk->values = nd;
    nd->v.kind = kind;
    nd->v.depth = 1;
    if (extra)
        nd->v.u.str.s = (const char *)(nd + 1);
    return &nd->v;
}

static lsd_status oom(const vm *m)
{
    return fail(m, LSD_ERR_OUT_OF_MEMORY, "out of memory");
}

static lsd_status push(vm *m, lsdi_pk_value *v)
{
    if (!v)
        return oom(m);
    if (m->sp == m->stack_cap) {
        if (m->stack_cap >= PK_MAX_STACK)
            return fail(m, LSD_ERR_FORMAT, "stack deeper than %u entries", PK_MAX_STACK);
        size_t cap = m->stack_cap ? m->stack_cap * 2 : 64;
        lsdi_pk_value **s = realloc(m->stack, cap * sizeof(*s));
        if (!s)
            return oom(m);
        m->stack = s;
        m->stack_cap = cap;
    }
    m->stack[m->sp++] = v;
    return LSD_OK;
}

/* Entries above the last MARK: like Python's unpickler, an opcode never reaches below a MARK. */
static size_t avail(const vm *m)
{
    return m->sp - (m->n_marks ? m->marks[m->n_marks - 1] : 0);
}

static lsd_status need(const vm *m, size_t k)
{
    if (avail(m) < k)
        return fail(m, LSD_ERR_FORMAT, "stack underflow (%s needs %zu entries)", op_name(m->p[m->op_pos]), k);
    return LSD_OK;
}

static lsd_status pop_mark(vm *m, size_t *start)
{
    if (!m->n_marks)
        return fail(m, LSD_ERR_FORMAT, "%s without MARK", op_name(m->p[m->op_pos]));
    *start = m->marks[--m->n_marks];
    return LSD_OK;
}

static lsd_status read_bytes(vm *m, size_t k, const unsigned char **out)
{
    if (k > m->n - m->pos)
        return fail(m, LSD_ERR_FORMAT, "%s needs %zu bytes, %zu left in the pickle", op_name(m->p[m->op_pos]), k,
                    m->n - m->pos);
    *out = m->p + m->pos;
    m->pos += k;
    return LSD_OK;
}

static lsd_status read_uint(vm *m, size_t k, uint64_t *v)
{
    const unsigned char *b = NULL;
    LSDI_TRY(read_bytes(m, k, &b));
    *v = 0;
    for (size_t i = 0; i < k; i++)
        *v |= (uint64_t)b[i] << (8 * i);
    return LSD_OK;
}

/* Raises a container's depth for a new child, refusing nesting that only an attacker would write. */
static lsd_status nest(const vm *m, lsdi_pk_value *container, const lsdi_pk_value *child)
{
    if (child->depth + 1 > container->depth)
        container->depth = child->depth + 1;
    if (container->depth > PK_MAX_DEPTH)
        return fail(m, LSD_ERR_FORMAT, "values nested deeper than %d levels", PK_MAX_DEPTH);
    return LSD_OK;
}

static lsd_status grow(const vm *m, void **arr, size_t *cap, size_t need_n, size_t elem)
{
    if (need_n <= *cap)
        return LSD_OK;
    size_t c = *cap ? *cap : 4;
    while (c < need_n)
        c *= 2;
    void *a = realloc(*arr, c * elem);
    if (!a)
        return oom(m);
    *arr = a;
    *cap = c;
    return LSD_OK;
}

static lsd_status make_str(vm *m, lsdi_pk_kind kind, size_t len)
{
    const unsigned char *b = NULL;
    LSDI_TRY(read_bytes(m, len, &b));
    lsdi_pk_value *v = new_value(m, kind, len + 1);
    if (!v)
        return oom(m);
    memcpy((char *)v->u.str.s, b, len); /* calloc'd one byte longer: NUL-terminated */
    v->u.str.len = len;
    return push(m, v);
}

static lsd_status make_int(vm *m, int64_t i, lsdi_pk_kind kind)
{
    lsdi_pk_value *v = new_value(m, kind, 0);
    if (v)
        v->u.i = i;
    return push(m, v);
}

/* Pops the top k entries into a new tuple. */
static lsd_status make_tuple(vm *m, size_t k)
{
    LSDI_TRY(need(m, k));
    lsdi_pk_value *t = new_value(m, LSDI_PK_TUPLE, 0);
    if (!t)
        return oom(m);
    if (k) {
        t->u.seq.items = malloc(k * sizeof(*t->u.seq.items));
        if (!t->u.seq.items)
            return oom(m);
        t->u.seq.n = t->u.seq.cap = k;
    }
    for (size_t i = 0; i < k; i++) {
        t->u.seq.items[i] = m->stack[m->sp - k + i];
        LSDI_TRY(nest(m, t, t->u.seq.items[i]));
    }
    m->sp -= k;
    return push(m, t);
}

static lsd_status memo_put(vm *m, uint64_t idx)
{
    LSDI_TRY(need(m, 1));
    if (idx >= PK_MAX_MEMO || idx >= m->n)
        return fail(m, LSD_ERR_FORMAT, "memo index %llu out of range for a %zu-byte pickle",
                    (unsigned long long)idx, m->n);
    if (idx >= m->memo_cap) {
        size_t old = m->memo_cap;
        LSDI_TRY(grow(m, (void **)&m->memo, &m->memo_cap, (size_t)idx + 1, sizeof(*m->memo)));
        memset(m->memo + old, 0, (m->memo_cap - old) * sizeof(*m->memo));
    }
    if (!m->memo[idx])
        m->memo_used++;
    m->memo[idx] = m->stack[m->sp - 1];
    return LSD_OK;
}

static lsd_status memo_get(vm *m, uint64_t idx)
{
    if (idx >= m->memo_cap || !m->memo[idx])
        return fail(m, LSD_ERR_FORMAT, "memo slot %llu read before it was written", (unsigned long long)idx);
    return push(m, m->memo[idx]);
}

static lsd_status resolve_global(vm *m, const char *module, size_t mlen, const char *name, size_t nlen)
{
    for (size_t i = 0; i < N_ALLOWED; i++) {
        const char *full = allowed[i].full;
        /* the split must be the allowed one: no dotted attribute path hiding in the name */
        if (strlen(full) == mlen + 1 + nlen && memcmp(full, module, mlen) == 0 && full[mlen] == '.' &&
            memcmp(full + mlen + 1, name, nlen) == 0 && !memchr(name, '.', nlen)) {
            lsdi_pk_value *v = new_value(m, LSDI_PK_GLOBAL, 0);
            if (v)
                v->u.global = (int)i;
            return push(m, v);
        }
    }
    return fail(m, LSD_ERR_FORMAT, "forbidden global %.*s.%.*s", (int)mlen, module, (int)nlen, name);
}

static lsd_status read_line(vm *m, const char **s, size_t *len)
{
    size_t rest = m->n - m->pos;
    size_t lim = rest < PK_MAX_GLOBAL_PART + 1 ? rest : PK_MAX_GLOBAL_PART + 1;
    const unsigned char *nl = memchr(m->p + m->pos, '\n', lim);
    if (!nl)
        return fail(m, LSD_ERR_FORMAT, "GLOBAL name not terminated within %u bytes", PK_MAX_GLOBAL_PART);
    *s = (const char *)(m->p + m->pos);
    *len = (size_t)(nl - (m->p + m->pos));
    m->pos += *len + 1;
    return LSD_OK;
}

static lsd_status op_global(vm *m)
{
    const char *mod = NULL, *name = NULL;
    size_t mlen = 0, nlen = 0;
    LSDI_TRY(read_line(m, &mod, &mlen));
    LSDI_TRY(read_line(m, &name, &nlen));
    return resolve_global(m, mod, mlen, name, nlen);
}

static lsd_status op_stack_global(vm *m)
{
    LSDI_TRY(need(m, 2));
    const lsdi_pk_value *mod = m->stack[m->sp - 2], *name = m->stack[m->sp - 1];
    if (mod->kind != LSDI_PK_STR || name->kind != LSDI_PK_STR)
        return fail(m, LSD_ERR_FORMAT, "STACK_GLOBAL on %s and %s, not two str", lsdi_pk_kind_name(mod->kind),
                    lsdi_pk_kind_name(name->kind));
    m->sp -= 2;
    return resolve_global(m, mod->u.str.s, mod->u.str.len, name->u.str.s, name->u.str.len);
}

static int is_int_tuple(const lsdi_pk_value *v)
{
    if (v->kind != LSDI_PK_TUPLE)
        return 0;
    for (size_t i = 0; i < v->u.seq.n; i++)
        if (v->u.seq.items[i]->kind != LSDI_PK_INT)
            return 0;
    return 1;
}

static int is_empty_state(const lsdi_pk_value *v)
{
    return v->kind == LSDI_PK_NONE || (v->kind == LSDI_PK_DICT && v->u.dict.n == 0) ||
           (v->kind == LSDI_PK_TUPLE && v->u.seq.n == 0);
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
static lsd_status rebuild_tensor(vm *m, const lsdi_pk_value *args)
{
    size_t n = args->u.seq.n;
    lsdi_pk_value *const *a = args->u.seq.items;
    if (n != 6 && n != 7)
        return fail(m, LSD_ERR_FORMAT, "_rebuild_tensor_v2 takes 6 or 7 arguments, got %zu", n);
    if (a[0]->kind != LSDI_PK_STORAGE || a[1]->kind != LSDI_PK_INT || !is_int_tuple(a[2]) || !is_int_tuple(a[3]))
        return fail(m, LSD_ERR_FORMAT, "_rebuild_tensor_v2 arguments are (%s, %s, %s, %s), expected (storage, int, "
                    "tuple of int, tuple of int)", lsdi_pk_kind_name(a[0]->kind), lsdi_pk_kind_name(a[1]->kind),
                    lsdi_pk_kind_name(a[2]->kind), lsdi_pk_kind_name(a[3]->kind));
    if (!is_empty_state(a[5]) || (n == 7 && !is_empty_state(a[6])))
        return fail(m, LSD_ERR_UNSUPPORTED, "tensor with backward hooks or metadata");
    size_t nd = a[2]->u.seq.n;
    if (nd != a[3]->u.seq.n || nd > LSDI_ST_MAX_DIMS)
        return fail(m, LSD_ERR_FORMAT, "tensor with %zu sizes and %zu strides (at most %d dims)", nd,
                    a[3]->u.seq.n, LSDI_ST_MAX_DIMS);
    lsdi_pk_value *t = new_value(m, LSDI_PK_TENSOR, 0);
    if (!t)
        return oom(m);
    t->u.tensor.storage = a[0];
    t->u.tensor.offset = a[1]->u.i;
    t->u.tensor.ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        t->u.tensor.size[i] = a[2]->u.seq.items[i]->u.i;
        t->u.tensor.stride[i] = a[3]->u.seq.items[i]->u.i;
        if (t->u.tensor.size[i] < 0 || t->u.tensor.stride[i] < 0)
            return fail(m, LSD_ERR_FORMAT, "tensor with a negative size or stride in dim %zu", i);
    }
    if (t->u.tensor.offset < 0)
        return fail(m, LSD_ERR_FORMAT, "tensor with negative storage offset %lld", (long long)t->u.tensor.offset);
    t->depth = a[0]->depth + 1;
    return push(m, t);
}

static lsd_status op_reduce(vm *m)
{
    LSDI_TRY(need(m, 2));
    const lsdi_pk_value *fn = m->stack[m->sp - 2], *args = m->stack[m->sp - 1];
    if (fn->kind != LSDI_PK_GLOBAL)
        return fail(m, LSD_ERR_FORMAT, "REDUCE applies a %s, not an allowed callable", lsdi_pk_kind_name(fn->kind));
    if (args->kind != LSDI_PK_TUPLE)
        return fail(m, LSD_ERR_FORMAT, "REDUCE arguments are a %s, not a tuple", lsdi_pk_kind_name(args->kind));
    m->sp -= 2;
    switch (fn->u.global) {
    case G_ORDERED_DICT:
        if (args->u.seq.n)
            return fail(m, LSD_ERR_UNSUPPORTED, "collections.OrderedDict called with arguments");
        return push(m, new_value(m, LSDI_PK_DICT, 0));
    case G_REBUILD_TENSOR_V2:
        return rebuild_tensor(m, args);
    case G_REBUILD_PARAMETER:
        /* (data, requires_grad, backward_hooks): a Parameter is its tensor for a reader. */
        if (args->u.seq.n != 3 || args->u.seq.items[0]->kind != LSDI_PK_TENSOR ||
            !is_empty_state(args->u.seq.items[2]))
            return fail(m, LSD_ERR_FORMAT, "_rebuild_parameter expects (tensor, bool, empty hooks)");
        return push(m, args->u.seq.items[0]);
    default:
        return fail(m, LSD_ERR_FORMAT, "REDUCE on %s, which is not callable here", lsdi_pk_global_name(fn->u.global));
    }
}

/* ('storage', torch.<T>Storage, key, location, numel) */
static lsd_status op_binpersid(vm *m)
{
    LSDI_TRY(need(m, 1));
    const lsdi_pk_value *pid = m->stack[m->sp - 1];
    lsdi_pk_value *const *a = pid->kind == LSDI_PK_TUPLE ? pid->u.seq.items : NULL;
    if (!a || pid->u.seq.n != 5 || a[0]->kind != LSDI_PK_STR || strcmp(a[0]->u.str.s, "storage") != 0 ||
        a[1]->kind != LSDI_PK_GLOBAL || a[1]->u.global < G_FIRST_STORAGE || a[2]->kind != LSDI_PK_STR ||
        a[3]->kind != LSDI_PK_STR || a[4]->kind != LSDI_PK_INT)
        return fail(m, LSD_ERR_FORMAT, "persistent id is not ('storage', torch.<T>Storage, key, location, numel)");
    if (a[4]->u.i < 0 || strlen(a[2]->u.str.s) != a[2]->u.str.len)
        return fail(m, LSD_ERR_FORMAT, "storage '%s' with numel %lld", a[2]->u.str.s, (long long)a[4]->u.i);
    lsdi_pk_value *s = new_value(m, LSDI_PK_STORAGE, 0);
    if (!s)
        return oom(m);
    s->u.storage.dtype = allowed[a[1]->u.global].dtype;
    s->u.storage.key = a[2]->u.str.s;
    s->u.storage.numel = a[4]->u.i;
    m->sp--;
    return push(m, s);
}

static lsd_status dict_add(vm *m, lsdi_pk_value *d, lsdi_pk_value *k, lsdi_pk_value *v)
{
    size_t cap = d->u.dict.cap;
    LSDI_TRY(grow(m, (void **)&d->u.dict.keys, &cap, d->u.dict.n + 1, sizeof(*d->u.dict.keys)));
    LSDI_TRY(grow(m, (void **)&d->u.dict.vals, &d->u.dict.cap, d->u.dict.n + 1, sizeof(*d->u.dict.vals)));
    LSDI_TRY(nest(m, d, k));
    LSDI_TRY(nest(m, d, v));
    d->u.dict.keys[d->u.dict.n] = k;
    d->u.dict.vals[d->u.dict.n++] = v;
    return LSD_OK;
}

/* Pops 2*k entries (key, value pairs) into the dict below them. */
static lsd_status setitems(vm *m, size_t base, size_t k)
{
    lsdi_pk_value *d = m->stack[base - 1];
    if (d->kind != LSDI_PK_DICT)
        return fail(m, LSD_ERR_FORMAT, "%s on a %s", op_name(m->p[m->op_pos]), lsdi_pk_kind_name(d->kind));
    for (size_t i = 0; i < k; i++)
        LSDI_TRY(dict_add(m, d, m->stack[base + 2 * i], m->stack[base + 2 * i + 1]));
    m->sp = base;
    return LSD_OK;
}

static lsd_status appends(vm *m, size_t base, size_t k)
{
    lsdi_pk_value *l = m->stack[base - 1];
    if (l->kind != LSDI_PK_LIST)
        return fail(m, LSD_ERR_FORMAT, "%s on a %s", op_name(m->p[m->op_pos]), lsdi_pk_kind_name(l->kind));
    LSDI_TRY(grow(m, (void **)&l->u.seq.items, &l->u.seq.cap, l->u.seq.n + k, sizeof(*l->u.seq.items)));
    for (size_t i = 0; i < k; i++) {
        LSDI_TRY(nest(m, l, m->stack[base + i]));
        l->u.seq.items[l->u.seq.n++] = m->stack[base + i];
    }
    m->sp = base;
    return LSD_OK;
}

/* After a MARK: the container sits just below the mark, inside the enclosing segment. */
static lsd_status op_marked_items(vm *m, int dict)
{
    size_t base = 0;
    LSDI_TRY(pop_mark(m, &base));
    if (base <= (m->n_marks ? m->marks[m->n_marks - 1] : 0))
        return fail(m, LSD_ERR_FORMAT, "%s with no container below its MARK", op_name(m->p[m->op_pos]));
    size_t k = m->sp - base;
    if (dict && k % 2)
        return fail(m, LSD_ERR_FORMAT, "SETITEMS with an odd number (%zu) of entries", k);
    return dict ? setitems(m, base, k / 2) : appends(m, base, k);
}

static lsd_status op_long1(vm *m)
{
    uint64_t len = 0, v = 0;
    LSDI_TRY(read_uint(m, 1, &len));
    if (len > 8)
        return fail(m, LSD_ERR_UNSUPPORTED, "LONG1 integer of %llu bytes (at most 8)", (unsigned long long)len);
    LSDI_TRY(read_uint(m, (size_t)len, &v));
    if (len && len < 8 && (v >> (8 * len - 1)) & 1)
        v |= ~(uint64_t)0 << (8 * len);
    return make_int(m, (int64_t)v, LSDI_PK_INT);
}

static lsd_status op_binfloat(vm *m)
{
    const unsigned char *b = NULL;
    LSDI_TRY(read_bytes(m, 8, &b));
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++)
        bits = bits << 8 | b[i];
    lsdi_pk_value *v = new_value(m, LSDI_PK_FLOAT, 0);
    if (v)
        memcpy(&v->u.f, &bits, sizeof(bits));
    return push(m, v);
}

static lsd_status op_sized(vm *m, size_t width, lsdi_pk_kind kind)
{
    uint64_t len = 0;
    LSDI_TRY(read_uint(m, width, &len));
    if (len > m->n - m->pos)
        return fail(m, LSD_ERR_FORMAT, "%s declares %llu bytes, %zu left in the pickle", op_name(m->p[m->op_pos]),
                    (unsigned long long)len, m->n - m->pos);
    return make_str(m, kind, (size_t)len);
}

static lsd_status op_build(vm *m)
{
    LSDI_TRY(need(m, 2));
    const lsdi_pk_value *state = m->stack[m->sp - 1];
    if (!is_empty_state(state))
        return fail(m, LSD_ERR_UNSUPPORTED, "BUILD with a non-empty %s state on a %s",
                    lsdi_pk_kind_name(state->kind), lsdi_pk_kind_name(m->stack[m->sp - 2]->kind));
    m->sp--;
    return LSD_OK;
}

static lsd_status step(vm *m, int *done)
{
    uint64_t u = 0;
    size_t base = 0;
    m->op_pos = m->pos;
    unsigned char op = m->p[m->pos++];
    switch (op) {
    case 0x80: /* PROTO */
        LSDI_TRY(read_uint(m, 1, &u));
        if (u > PK_HIGHEST_PROTOCOL)
            return fail(m, LSD_ERR_UNSUPPORTED, "pickle protocol %llu", (unsigned long long)u);
        return LSD_OK;
    case 0x95: /* FRAME: a hint for buffered readers; the whole pickle is in memory */
        LSDI_TRY(read_uint(m, 8, &u));
        if (u > m->n - m->pos)
            return fail(m, LSD_ERR_FORMAT, "FRAME of %llu bytes, %zu left", (unsigned long long)u, m->n - m->pos);
        return LSD_OK;
    case '.': /* STOP */
        LSDI_TRY(need(m, 1));
        m->pk->root = m->stack[--m->sp];
        *done = 1;
        return LSD_OK;
    case '(': /* MARK */
        if (m->n_marks == PK_MAX_MARKS)
            return fail(m, LSD_ERR_FORMAT, "MARKs nested deeper than %u", PK_MAX_MARKS);
        m->marks[m->n_marks++] = m->sp;
        return LSD_OK;
    case '0': /* POP */
        if (avail(m)) {
            m->sp--;
            return LSD_OK;
        }
        return pop_mark(m, &base);
    case '1': /* POP_MARK */
        LSDI_TRY(pop_mark(m, &base));
        m->sp = base;
        return LSD_OK;
    case '}':
        return push(m, new_value(m, LSDI_PK_DICT, 0));
    case ']':
        return push(m, new_value(m, LSDI_PK_LIST, 0));
    case ')':
        return make_tuple(m, 0);
    case 't': /* TUPLE */
        LSDI_TRY(pop_mark(m, &base));
        return make_tuple(m, m->sp - base);
    case 0x85:
    case 0x86:
    case 0x87: /* TUPLE1..3 */
        return make_tuple(m, (size_t)(op - 0x84));
    case 'q':
        LSDI_TRY(read_uint(m, 1, &u));
        return memo_put(m, u);
    case 'r':
        LSDI_TRY(read_uint(m, 4, &u));
        return memo_put(m, u);
    case 0x94: /* MEMOIZE */
        return memo_put(m, m->memo_used);
    case 'h':
        LSDI_TRY(read_uint(m, 1, &u));
        return memo_get(m, u);
    case 'j':
        LSDI_TRY(read_uint(m, 4, &u));
        return memo_get(m, u);
    case 'J': /* BININT: signed 32-bit */
        LSDI_TRY(read_uint(m, 4, &u));
        return make_int(m, (int64_t)(int32_t)(uint32_t)u, LSDI_PK_INT);
    case 'K':
        LSDI_TRY(read_uint(m, 1, &u));
        return make_int(m, (int64_t)u, LSDI_PK_INT);
    case 'M':
        LSDI_TRY(read_uint(m, 2, &u));
        return make_int(m, (int64_t)u, LSDI_PK_INT);
    case 0x8a:
        return op_long1(m);
    case 'G':
        return op_binfloat(m);
    case 0x89:
        return make_int(m, 0, LSDI_PK_BOOL);
    case 0x88:
        return make_int(m, 1, LSDI_PK_BOOL);
    case 'N':
        return push(m, new_value(m, LSDI_PK_NONE, 0));
    case 'X':
        return op_sized(m, 4, LSDI_PK_STR);
    case 0x8c:
    case 'U': /* SHORT_BINSTRING: Python 3 reads it as str */
        return op_sized(m, 1, LSDI_PK_STR);
    case 0x8d:
        return op_sized(m, 8, LSDI_PK_STR);
    case 'C':
        return op_sized(m, 1, LSDI_PK_BYTES);
    case 'B':
        return op_sized(m, 4, LSDI_PK_BYTES);
    case 0x8e:
        return op_sized(m, 8, LSDI_PK_BYTES);
    case 's': /* SETITEM */
        LSDI_TRY(need(m, 3));
        return setitems(m, m->sp - 2, 1);
    case 'u':
        return op_marked_items(m, 1);
    case 'a': /* APPEND */
        LSDI_TRY(need(m, 2));
        return appends(m, m->sp - 1, 1);
    case 'e':
        return op_marked_items(m, 0);
    case 'c':
        return op_global(m);
    case 0x93:
        return op_stack_global(m);
    case 'R':
        return op_reduce(m);
    case 'Q':
        return op_binpersid(m);
    case 'b':
        return op_build(m);
    default:
        return fail(m, LSD_ERR_UNSUPPORTED, "unsupported pickle opcode %s (0x%02x)", op_name(op), op);
    }
}

void lsdi_pickle_free(lsdi_pickle *p)
{
    if (!p)
        return;
    for (pk_node *nd = p->values, *next; nd; nd = next) {
        next = nd->next;
        if (nd->v.kind == LSDI_PK_TUPLE || nd->v.kind == LSDI_PK_LIST)
            free(nd->v.u.seq.items);
        else if (nd->v.kind == LSDI_PK_DICT) {
            free(nd->v.u.dict.keys);
            free(nd->v.u.dict.vals);
        }
        free(nd);
    }
    free(p);
}

lsd_status lsdi_pickle_open_memory(const void *data, size_t size, const char *name, lsdi_pickle **out)
{
    *out = NULL;
    vm m = {.p = data, .n = size, .name = name};
    m.pk = calloc(1, sizeof(*m.pk));
    if (!m.pk)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
    lsd_status st = LSD_OK;
    int done = 0;
    while (st == LSD_OK && !done) {
        if (m.pos >= m.n) {
            m.op_pos = m.pos;
            st = fail(&m, LSD_ERR_FORMAT, "pickle ends without STOP");
            break;
        }
        st = step(&m, &done);
    }
    free(m.stack);
    free(m.memo);
    if (st != LSD_OK) {
        lsdi_pickle_free(m.pk);
        return st;
    }
    *out = m.pk;
    return LSD_OK;
}

const lsdi_pk_value *lsdi_pickle_root(const lsdi_pickle *p)
{
    return p->root;
}

const lsdi_pk_value *lsdi_pk_dict_get(const lsdi_pk_value *d, const char *key)
{
    if (!d || d->kind != LSDI_PK_DICT)
        return NULL;
    size_t len = strlen(key);
    for (size_t i = d->u.dict.n; i-- > 0;) {
        const lsdi_pk_value *k = d->u.dict.keys[i];
        if (k->kind == LSDI_PK_STR && k->u.str.len == len && memcmp(k->u.str.s, key, len) == 0)
            return d->u.dict.vals[i];
    }
    return NULL;
}
