/* The allow-list pickle reader on hand-made pickles: what it builds, and how it refuses hostile input. */
#include <stdlib.h>

#include "io/pickle.h"
#include "test.h"

#define RUN(bytes, out) lsdi_pickle_open_memory((bytes), sizeof(bytes), "t.pkl", (out))

TEST(pickle_dict_of_scalars)
{
    /* {'a': 5, 'b': -2, 'c': True, 'd': None, 'e': 1.5, 'f': -300 (LONG1), 'g': b'xy'} */
    static const unsigned char p[] = {
        0x80, 2, '}', 'q', 0, '(',
        'X', 1, 0, 0, 0, 'a', 'K', 5,
        'X', 1, 0, 0, 0, 'b', 'J', 0xfe, 0xff, 0xff, 0xff,
        'X', 1, 0, 0, 0, 'c', 0x88,
        'X', 1, 0, 0, 0, 'd', 'N',
        'X', 1, 0, 0, 0, 'e', 'G', 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,
        'X', 1, 0, 0, 0, 'f', 0x8a, 2, 0xd4, 0xfe,
        'X', 1, 0, 0, 0, 'g', 'C', 2, 'x', 'y',
        'u', '.'};
    lsdi_pickle *pk = NULL;
    CHECK_OK(RUN(p, &pk));
    if (!pk)
        return;
    const lsdi_pk_value *r = lsdi_pickle_root(pk);
    CHECK(r->kind == LSDI_PK_DICT && r->u.dict.n == 7);
    const lsdi_pk_value *v = lsdi_pk_dict_get(r, "a");
    CHECK(v && v->kind == LSDI_PK_INT && v->u.i == 5);
    v = lsdi_pk_dict_get(r, "b");
    CHECK(v && v->kind == LSDI_PK_INT && v->u.i == -2);
    v = lsdi_pk_dict_get(r, "c");
    CHECK(v && v->kind == LSDI_PK_BOOL && v->u.i == 1);
    v = lsdi_pk_dict_get(r, "d");
    CHECK(v && v->kind == LSDI_PK_NONE);
    v = lsdi_pk_dict_get(r, "e");
    CHECK(v && v->kind == LSDI_PK_FLOAT && v->u.f == 1.5);
    v = lsdi_pk_dict_get(r, "f");
    CHECK(v && v->kind == LSDI_PK_INT && v->u.i == -300, "got %lld", v ? (long long)v->u.i : 0);
    v = lsdi_pk_dict_get(r, "g");
    CHECK(v && v->kind == LSDI_PK_BYTES && v->u.str.len == 2 && !memcmp(v->u.str.s, "xy", 2));
    CHECK(lsdi_pk_dict_get(r, "zz") == NULL);
    lsdi_pickle_free(pk);
}

TEST(pickle_protocol4_ordered_dict_and_lists)
{
    /* FRAME, SHORT_BINUNICODE + MEMOIZE + STACK_GLOBAL: OrderedDict(); then {'l': [1, 2, 3], 't': (1, (2,))} into
     * it, the list built with APPEND and APPENDS and the tuple fetched back through the memo. */
    static const unsigned char p[] = {
        0x80, 4, 0x95, 60, 0, 0, 0, 0, 0, 0, 0,
        0x8c, 11, 'c', 'o', 'l', 'l', 'e', 'c', 't', 'i', 'o', 'n', 's', 0x94,
        0x8c, 11, 'O', 'r', 'd', 'e', 'r', 'e', 'd', 'D', 'i', 'c', 't', 0x94,
        0x93, 0x94, ')', 'R', 0x94,
        0x8c, 1, 'l', ']', 'K', 1, 'a', '(', 'K', 2, 'K', 3, 'e', 's',
        0x8c, 1, 't', 'K', 1, 'K', 2, 0x85, 'r', 9, 0, 0, 0, 0x86, 's',
        0x8c, 1, 'u', 'j', 9, 0, 0, 0, 's', '.'};
    lsdi_pickle *pk = NULL;
    CHECK_OK(RUN(p, &pk));
    if (!pk)
        return;
    const lsdi_pk_value *r = lsdi_pickle_root(pk);
    CHECK(r->kind == LSDI_PK_DICT && r->u.dict.n == 3);
    const lsdi_pk_value *l = lsdi_pk_dict_get(r, "l");
    CHECK(l && l->kind == LSDI_PK_LIST && l->u.seq.n == 3 && l->u.seq.items[2]->u.i == 3);
    const lsdi_pk_value *t = lsdi_pk_dict_get(r, "t");
    CHECK(t && t->kind == LSDI_PK_TUPLE && t->u.seq.n == 2 && t->u.seq.items[1]->kind == LSDI_PK_TUPLE);
    const lsdi_pk_value *u = lsdi_pk_dict_get(r, "u");
    CHECK(u && u == t->u.seq.items[1], "the memo must return the same object");
    lsdi_pickle_free(pk);
}

TEST(pickle_tensor_rebuild)
{
    /* _rebuild_parameter(_rebuild_tensor_v2(pid('storage', HalfStorage, '7', 'cpu', 6), 2, (2, 2), (2, 1), False,
     * OrderedDict()), True, OrderedDict()) */
    static const unsigned char p[] = {
        0x80, 2, 'c', 't', 'o', 'r', 'c', 'h', '.', '_', 'u', 't', 'i', 'l', 's', '\n',
        '_', 'r', 'e', 'b', 'u', 'i', 'l', 'd', '_', 'p', 'a', 'r', 'a', 'm', 'e', 't', 'e', 'r', '\n',
        'c', 't', 'o', 'r', 'c', 'h', '.', '_', 'u', 't', 'i', 'l', 's', '\n',
        '_', 'r', 'e', 'b', 'u', 'i', 'l', 'd', '_', 't', 'e', 'n', 's', 'o', 'r', '_', 'v', '2', '\n',
        '(', '(', 'X', 7, 0, 0, 0, 's', 't', 'o', 'r', 'a', 'g', 'e',
        'c', 't', 'o', 'r', 'c', 'h', '\n', 'H', 'a', 'l', 'f', 'S', 't', 'o', 'r', 'a', 'g', 'e', '\n',
        'X', 1, 0, 0, 0, '7', 'X', 3, 0, 0, 0, 'c', 'p', 'u', 'K', 6, 't', 'Q',
        'K', 2, 'K', 2, 'K', 2, 0x86, 'K', 2, 'K', 1, 0x86, 0x89,
        'c', 'c', 'o', 'l', 'l', 'e', 'c', 't', 'i', 'o', 'n', 's', '\n',
        'O', 'r', 'd', 'e', 'r', 'e', 'd', 'D', 'i', 'c', 't', '\n', 'q', 0, ')', 'R', 't', 'R',
        0x88, 'h', 0, ')', 'R', 0x87, 'R', '.'};
    lsdi_pickle *pk = NULL;
    CHECK_OK(RUN(p, &pk));
    if (!pk)
        return;
    const lsdi_pk_value *r = lsdi_pickle_root(pk);
    CHECK(r->kind == LSDI_PK_TENSOR, "got a %s", lsdi_pk_kind_name(r->kind));
    if (r->kind == LSDI_PK_TENSOR) {
        const lsdi_pk_tensor *t = &r->u.tensor;
        CHECK(t->offset == 2 && t->ndim == 2 && t->size[0] == 2 && t->size[1] == 2 && t->stride[0] == 2 &&
              t->stride[1] == 1);
        const lsdi_pk_storage *s = &t->storage->u.storage;
        CHECK(s->dtype == LSDI_ST_F16 && s->numel == 6 && !strcmp(s->key, "7"));
    }
    lsdi_pickle_free(pk);
}

TEST(pickle_forbidden_globals)
{
    static const unsigned char os_system[] = {0x80, 2, 'c', 'o', 's', '\n', 's', 'y', 's', 't', 'e', 'm', '\n',
                                              'X', 4, 0, 0, 0, 't', 'r', 'u', 'e', 0x85, 'R', '.'};
    lsdi_pickle *pk = NULL;
    CHECK_STATUS(RUN(os_system, &pk), LSD_ERR_FORMAT, "forbidden global os.system at offset 2");
    CHECK(pk == NULL);
    /* A module that only starts like an allowed one. */
    static const unsigned char torch_like[] = {'c', 't', 'o', 'r', 'c', 'h', 'x', '\n', 'F', 'l', 'o', 'a', 't',
                                               'S', 't', 'o', 'r', 'a', 'g', 'e', '\n', '.'};
    CHECK_STATUS(RUN(torch_like, &pk), LSD_ERR_FORMAT, "forbidden global torchx.FloatStorage");
    /* STACK_GLOBAL goes through the same list. */
    static const unsigned char stack[] = {0x80, 4, 0x8c, 8, 'b', 'u', 'i', 'l', 't', 'i', 'n', 's',
                                          0x8c, 4, 'e', 'x', 'e', 'c', 0x93, '.'};
    CHECK_STATUS(RUN(stack, &pk), LSD_ERR_FORMAT, "forbidden global builtins.exec");
    static const unsigned char stack_int[] = {0x80, 4, 'K', 1, 'K', 2, 0x93, '.'};
    CHECK_STATUS(RUN(stack_int, &pk), LSD_ERR_FORMAT, "STACK_GLOBAL on int and int");
    /* An allowed name that is no callable: a storage class cannot be applied. */
    static const unsigned char reduce_storage[] = {'c', 't', 'o', 'r', 'c', 'h', '\n', 'F', 'l', 'o', 'a', 't',
                                                   'S', 't', 'o', 'r', 'a', 'g', 'e', '\n', ')', 'R', '.'};
    CHECK_STATUS(RUN(reduce_storage, &pk), LSD_ERR_FORMAT, "torch.FloatStorage, which is not callable");
    static const unsigned char reduce_int[] = {'K', 1, ')', 'R', '.'};
    CHECK_STATUS(RUN(reduce_int, &pk), LSD_ERR_FORMAT, "REDUCE applies a int");
    static const unsigned char unterminated[] = {'c', 'o', 's', '\n', 's', 'y', 's'};
    CHECK_STATUS(RUN(unterminated, &pk), LSD_ERR_FORMAT, "not terminated");
}

TEST(pickle_unknown_and_unsupported_opcodes)
{
    lsdi_pickle *pk = NULL;
    static const unsigned char unknown[] = {0x80, 2, 'K', 1, 0xff, '.'};
    CHECK_STATUS(RUN(unknown, &pk), LSD_ERR_UNSUPPORTED, "unknown (0xff) at offset 4");
    static const unsigned char newobj[] = {0x80, 2, ')', ')', 0x81, '.'};
    CHECK_STATUS(RUN(newobj, &pk), LSD_ERR_UNSUPPORTED, "NEWOBJ (0x81) at offset 4");
    static const unsigned char inst[] = {'(', 'i', 'o', 's', '\n', 's', 'y', 's', 't', 'e', 'm', '\n', '.'};
    CHECK_STATUS(RUN(inst, &pk), LSD_ERR_UNSUPPORTED, "INST");
    static const unsigned char proto9[] = {0x80, 9, 'N', '.'};
    CHECK_STATUS(RUN(proto9, &pk), LSD_ERR_UNSUPPORTED, "protocol 9");
    static const unsigned char long1_big[] = {0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, '.'};
    CHECK_STATUS(RUN(long1_big, &pk), LSD_ERR_UNSUPPORTED, "LONG1 integer of 9 bytes");
    static const unsigned char build[] = {'}', 'K', 1, 'b', '.'};
    CHECK_STATUS(RUN(build, &pk), LSD_ERR_UNSUPPORTED, "BUILD with a non-empty int state");
    static const unsigned char build_empty[] = {'}', 'N', 'b', '.'};
    CHECK_OK(RUN(build_empty, &pk));
    lsdi_pickle_free(pk);
}

TEST(pickle_huge_declared_lengths)
{
    lsdi_pickle *pk = NULL;
    static const unsigned char uni[] = {0x80, 2, 'X', 0xff, 0xff, 0xff, 0xff, 'a', '.'};
    CHECK_STATUS(RUN(uni, &pk), LSD_ERR_FORMAT, "BINUNICODE declares 4294967295 bytes");
    static const unsigned char uni8[] = {0x80, 4, 0x8d, 0, 0, 0, 0, 0, 0, 0, 0x80, '.'};
    CHECK_STATUS(RUN(uni8, &pk), LSD_ERR_FORMAT, "BINUNICODE8 declares 9223372036854775808 bytes");
    static const unsigned char bytes[] = {'B', 0, 0, 0, 0x40, '.'};
    CHECK_STATUS(RUN(bytes, &pk), LSD_ERR_FORMAT, "BINBYTES declares");
    static const unsigned char frame[] = {0x80, 4, 0x95, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 'N', '.'};
    CHECK_STATUS(RUN(frame, &pk), LSD_ERR_FORMAT, "FRAME of");
    static const unsigned char cut[] = {0x80, 2, 'J', 1, 2};
    CHECK_STATUS(RUN(cut, &pk), LSD_ERR_FORMAT, "BININT needs 4 bytes, 2 left");
    static const unsigned char no_stop[] = {0x80, 2, 'N'};
    CHECK_STATUS(RUN(no_stop, &pk), LSD_ERR_FORMAT, "without STOP");
    CHECK_STATUS(lsdi_pickle_open_memory("", 0, "empty.pkl", &pk), LSD_ERR_FORMAT, "empty.pkl: pickle ends");
}

TEST(pickle_memo_abuse)
{
    lsdi_pickle *pk = NULL;
    static const unsigned char unset[] = {'N', 'q', 0, 'h', 7, '.'};
    CHECK_STATUS(RUN(unset, &pk), LSD_ERR_FORMAT, "memo slot 7 read before it was written");
    static const unsigned char long_get[] = {'j', 0xff, 0xff, 0xff, 0xff, '.'};
    CHECK_STATUS(RUN(long_get, &pk), LSD_ERR_FORMAT, "memo slot 4294967295");
    /* A far memo index must not make the reader allocate a table that size. */
    static const unsigned char far_put[] = {'N', 'r', 0xff, 0xff, 0xff, 0xff, '.'};
    CHECK_STATUS(RUN(far_put, &pk), LSD_ERR_FORMAT, "memo index 4294967295 out of range");
    static const unsigned char put_empty[] = {'q', 0, '.'};
    CHECK_STATUS(RUN(put_empty, &pk), LSD_ERR_FORMAT, "stack underflow (BINPUT");
    static const unsigned char put_past_mark[] = {'N', '(', 'q', 0, '.'};
    CHECK_STATUS(RUN(put_past_mark, &pk), LSD_ERR_FORMAT, "stack underflow");
    /* A list that holds itself: fine to build, and nothing walks it forever. */
    static const unsigned char self[] = {']', 'q', 0, 'h', 0, 'a', '.'};
    CHECK_OK(RUN(self, &pk));
    if (pk) {
        const lsdi_pk_value *r = lsdi_pickle_root(pk);
        CHECK(r->kind == LSDI_PK_LIST && r->u.seq.n == 1 && r->u.seq.items[0] == r);
        lsdi_pickle_free(pk);
    }
}

TEST(pickle_deep_nesting)
{
    lsdi_pickle *pk = NULL;
    unsigned char buf[4096];
    size_t n = 0;
    for (int i = 0; i < 1000; i++)
        buf[n++] = '(';
    buf[n++] = '.';
    CHECK_STATUS(lsdi_pickle_open_memory(buf, n, "marks.pkl", &pk), LSD_ERR_FORMAT, "MARKs nested deeper than");
    /* 300 lists, each appended into the one before: depth 300. */
    n = 0;
    for (int i = 0; i < 300; i++)
        buf[n++] = ']';
    for (int i = 0; i < 299; i++)
        buf[n++] = 'a';
    buf[n++] = '.';
    CHECK_STATUS(lsdi_pickle_open_memory(buf, n, "lists.pkl", &pk), LSD_ERR_FORMAT, "nested deeper than 128");
    n = 0;
    buf[n++] = 'N';
    for (int i = 0; i < 300; i++)
        buf[n++] = 0x85;
    buf[n++] = '.';
    CHECK_STATUS(lsdi_pickle_open_memory(buf, n, "tuples.pkl", &pk), LSD_ERR_FORMAT, "nested deeper than 128");
    /* 100 levels is within the limit. */
    n = 1;
    buf[n - 1] = 'N';
    for (int i = 0; i < 100; i++)
        buf[n++] = 0x85;
    buf[n++] = '.';
    CHECK_OK(lsdi_pickle_open_memory(buf, n, "ok.pkl", &pk));
    lsdi_pickle_free(pk);
}

TEST(pickle_structure_errors)
{
    lsdi_pickle *pk = NULL;
    static const unsigned char stop_empty[] = {'.'};
    CHECK_STATUS(RUN(stop_empty, &pk), LSD_ERR_FORMAT, "stack underflow (STOP");
    static const unsigned char tuple_no_mark[] = {'N', 't', '.'};
    CHECK_STATUS(RUN(tuple_no_mark, &pk), LSD_ERR_FORMAT, "TUPLE without MARK");
    static const unsigned char setitem_list[] = {']', 'N', 'N', 's', '.'};
    CHECK_STATUS(RUN(setitem_list, &pk), LSD_ERR_FORMAT, "SETITEM on a list");
    static const unsigned char setitems_odd[] = {'}', '(', 'N', 'u', '.'};
    CHECK_STATUS(RUN(setitems_odd, &pk), LSD_ERR_FORMAT, "odd number");
    static const unsigned char appends_bare[] = {'(', 'N', 'e', '.'};
    CHECK_STATUS(RUN(appends_bare, &pk), LSD_ERR_FORMAT, "APPENDS with no container below its MARK");
    static const unsigned char persid_bad[] = {'K', 1, 'Q', '.'};
    CHECK_STATUS(RUN(persid_bad, &pk), LSD_ERR_FORMAT, "persistent id is not");
    static const unsigned char rebuild_bad[] = {'c', 't', 'o', 'r', 'c', 'h', '.', '_', 'u', 't', 'i', 'l', 's',
                                                '\n', '_', 'r', 'e', 'b', 'u', 'i', 'l', 'd', '_', 't', 'e', 'n',
                                                's', 'o', 'r', '_', 'v', '2', '\n', 'K', 1, 0x85, 'R', '.'};
    CHECK_STATUS(RUN(rebuild_bad, &pk), LSD_ERR_FORMAT, "_rebuild_tensor_v2 takes 6 or 7 arguments, got 1");
}

/* Every prefix of a valid pickle and every single-byte change of it fails cleanly or succeeds: never a crash,
 * a leak or a read past the buffer (the sanitizers watch). */
TEST(pickle_mutations_never_crash)
{
    static const unsigned char p[] = {
        0x80, 2, '}', 'q', 0, '(', 'X', 1, 0, 0, 0, 'a', ']', 'q', 1, '(', 'K', 1, 'K', 2, 'e',
        'X', 1, 0, 0, 0, 'b', 'h', 1, 'K', 7, 0x86, 'u', '.'};
    unsigned char buf[sizeof(p)];
    lsdi_pickle *pk = NULL;
    int failures = 0;
    for (size_t cut = 0; cut < sizeof(p); cut++) {
        if (lsdi_pickle_open_memory(p, cut, "cut.pkl", &pk) == LSD_OK)
            lsdi_pickle_free(pk);
        else
            failures++;
    }
    CHECK(failures == (int)sizeof(p), "every strict prefix lacks STOP: %d of %zu failed", failures, sizeof(p));
    for (size_t i = 0; i < sizeof(p); i++) {
        for (int v = 0; v < 256; v += 3) {
            memcpy(buf, p, sizeof(p));
            buf[i] = (unsigned char)v;
            lsd_status st = lsdi_pickle_open_memory(buf, sizeof(buf), "mut.pkl", &pk);
            if (st == LSD_OK)
                lsdi_pickle_free(pk);
            else
                CHECK(lsd_last_error()[0] != 0 && pk == NULL);
        }
    }
}
