#include <stdlib.h>

#include "io/safetensors.h"
#include "test.h"

/* Writes an 8-byte little-endian header length (hlen, normally strlen(header)), the header and data_len
 * zero bytes to a fresh file; returns its path. */
static const char *make_file_len(const char *header, uint64_t hlen, size_t data_len)
{
    static char path[8][600];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 600, "%s/bad.safetensors", temp_dir());
    size_t n = strlen(header), total = 8 + n + data_len;
    unsigned char *buf = calloc(1, total);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, n);
    CHECK(write_file(p, buf, total));
    free(buf);
    return p;
}

static const char *make_file(const char *header, size_t data_len)
{
    return make_file_len(header, strlen(header), data_len);
}

/* The reader must refuse the file with LSD_ERR_FORMAT, and the message must name the file and contain sub. */
#define CHECK_REJECT(path, sub)                                                               \
    do {                                                                                      \
        const char *path_ = (path);                                                           \
        lsdi_st_file *f_ = NULL;                                                              \
        if (!CHECK_STATUS(lsdi_st_open(path_, &f_), LSD_ERR_FORMAT, sub))                     \
            lsdi_st_close(f_);                                                                \
        else                                                                                  \
            CHECK(strstr(lsd_last_error(), path_) != NULL, "message lacks the path: %s", lsd_last_error()); \
    } while (0)

#define T(name, dtype, shape, offs) "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}"

/* ---- round trips ---------------------------------------------------------------------------------------- */

TEST(st_roundtrip_all_dtypes)
{
    const char *path = NULL;
    char pathbuf[600];
    snprintf(pathbuf, sizeof pathbuf, "%s/all.safetensors", temp_dir());
    path = pathbuf;

    double f64[3] = {1.5, -2.25, 1e10};
    float f32[2][3] = {{1, 2, 3}, {-4.5f, 0.125f, 1e-7f}};
    uint16_t f16[4] = {0x3c00, 0xc000, 0x0001, 0x7bff};   /* 1, -2, 2^-24, 65504 */
    uint16_t bf16[3] = {0x3f80, 0x4049, 0xbf00};          /* 1, 3.140625, -0.5 */
    int64_t i64[2] = {-1099511627776, 77};
    int32_t i32[3] = {-7, 0, 2147483647};
    int16_t i16[2] = {-32768, 12};
    int8_t i8[4] = {-128, -1, 0, 127};
    uint8_t u8[3] = {0, 200, 255};
    uint8_t b[2] = {0, 1};
    float alpha = 8.0f;
    int64_t s3[] = {3}, s23[] = {2, 3}, s4[] = {4}, s2[] = {2}, s221[] = {2, 2, 1}, s03[] = {0, 3};
    const lsdi_st_entry es[] = {
        {"f64", LSDI_ST_F64, 1, s3, f64},      {"f32", LSDI_ST_F32, 2, s23, f32},
        {"f16", LSDI_ST_F16, 1, s4, f16},      {"bf16", LSDI_ST_BF16, 1, s3, bf16},
        {"i64", LSDI_ST_I64, 1, s2, i64},      {"i32", LSDI_ST_I32, 1, s3, i32},
        {"i16", LSDI_ST_I16, 1, s2, i16},      {"i8", LSDI_ST_I8, 3, s221, i8},
        {"u8", LSDI_ST_U8, 1, s3, u8},         {"bool", LSDI_ST_BOOL, 1, s2, b},
        {"lora_unet_x.alpha", LSDI_ST_F32, 0, NULL, &alpha}, {"empty", LSDI_ST_F32, 2, s03, NULL},
    };
    const size_t n = sizeof es / sizeof es[0];
    const char *keys[] = {"format", "ss_network_dim"}, *vals[] = {"pt", "4 \"quoted\" ü"};
    CHECK_OK(lsdi_st_write(path, es, n, keys, vals, 2));

    size_t len = 0;
    unsigned char *raw = (unsigned char *)read_file(path, &len);
    if (!raw)
        return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | raw[i];
    CHECK((hlen & 7) == 0, "header length %llu not padded to 8", (unsigned long long)hlen);
    CHECK(raw[8] == '{' && (raw[8 + hlen - 1] == ' ' || raw[8 + hlen - 1] == '}'));
    free(raw);

    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(path, &f)))
        return;
    CHECK(lsdi_st_count(f) == n, "%zu tensors", lsdi_st_count(f));
    /* Data is laid out in the given order, so file order equals it (the empty tensor sits at the end, 0 bytes). */
    for (size_t i = 0; i < n && i < lsdi_st_count(f); i++) {
        const lsdi_st_tensor *t = lsdi_st_find(f, es[i].name);
        CHECK(t != NULL, "missing %s", es[i].name);
        if (!t)
            continue;
        CHECK(t->dtype == es[i].dtype && t->ndim == es[i].ndim, "%s", es[i].name);
        uint64_t numel = 1;
        for (int d = 0; d < es[i].ndim; d++) {
            CHECK(t->shape[d] == es[i].shape[d], "%s dim %d", es[i].name, d);
            numel *= (uint64_t)es[i].shape[d];
        }
        CHECK(t->numel == numel && t->nbytes == numel * lsdi_st_dtype_size(es[i].dtype), "%s", es[i].name);
        CHECK(numel == 0 || memcmp(t->data, es[i].data, t->nbytes) == 0, "%s bytes differ", es[i].name);
        CHECK(lsdi_st_at(f, i) == t, "%s not at file position %zu", es[i].name, i);
    }
    CHECK(lsdi_st_find(f, "nope") == NULL);
    CHECK(lsdi_st_metadata_count(f) == 2);
    const char *v = lsdi_st_metadata_get(f, "ss_network_dim");
    CHECK(v && strcmp(v, vals[1]) == 0, "metadata value %s", v ? v : "(null)");
    CHECK(lsdi_st_metadata_get(f, "absent") == NULL);
    const char *k0, *v0;
    lsdi_st_metadata_at(f, 0, &k0, &v0);
    CHECK(k0 && strcmp(k0, "format") == 0 && strcmp(v0, "pt") == 0);

    float out[6];
    const struct {
        const char *name;
        float want[6];
        int n;
    } conv[] = {
        {"f64", {1.5f, -2.25f, 1e10f}, 3},
        {"f32", {1, 2, 3, -4.5f, 0.125f, 1e-7f}, 6},
        {"f16", {1, -2, 5.9604644775390625e-08f, 65504}, 4},
        {"bf16", {1, 3.140625f, -0.5f}, 3},
        {"i64", {-1099511627776.0f, 77}, 2},
        {"i32", {-7, 0, 2147483648.0f}, 3},
        {"i16", {-32768, 12}, 2},
        {"i8", {-128, -1, 0, 127}, 4},
        {"u8", {0, 200, 255}, 3},
        {"bool", {0, 1}, 2},
        {"lora_unet_x.alpha", {8}, 1},
    };
    for (size_t c = 0; c < sizeof conv / sizeof conv[0]; c++) {
        const lsdi_st_tensor *t = lsdi_st_find(f, conv[c].name);
        if (!t)
            continue;
        lsdi_st_to_f32(t, out);
        for (int i = 0; i < conv[c].n; i++)
            CHECK(out[i] == conv[c].want[i], "%s[%d] = %.9g, want %.9g", conv[c].name, i, (double)out[i],
                  (double)conv[c].want[i]);
    }
    lsdi_st_close(f);
}

TEST(st_roundtrip_empty_file)
{
    char path[600];
    snprintf(path, sizeof path, "%s/empty.safetensors", temp_dir());
    CHECK_OK(lsdi_st_write(path, NULL, 0, NULL, NULL, 0));
    size_t len = 0;
    char *raw = read_file(path, &len);
    /* The reference writer's bytes for an empty dict: length 8, "{}" padded with six spaces. */
    CHECK(raw && len == 16 && memcmp(raw, "\x08\0\0\0\0\0\0\0{}      ", 16) == 0, "%zu bytes", len);
    free(raw);
    lsdi_st_file *f = NULL;
    if (CHECK_OK(lsdi_st_open(path, &f))) {
        CHECK(lsdi_st_count(f) == 0 && lsdi_st_metadata_count(f) == 0);
        lsdi_st_close(f);
    }
}

TEST(st_writer_rejects_bad_entries)
{
    char path[600];
    snprintf(path, sizeof path, "%s/w.safetensors", temp_dir());
    float x = 1;
    int64_t neg[] = {-1};
    lsdi_st_entry dup[] = {{"w", LSDI_ST_F32, 0, NULL, &x}, {"w", LSDI_ST_F32, 0, NULL, &x}};
    CHECK_STATUS(lsdi_st_write(path, dup, 2, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "duplicate tensor name 'w'");
    lsdi_st_entry bad[] = {{"n", LSDI_ST_F32, 1, neg, &x}};
    CHECK_STATUS(lsdi_st_write(path, bad, 1, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "'n'");
    FILE *fp = fopen(path, "rb");
    CHECK(fp == NULL, "a rejected write created %s", path);
    if (fp)
        fclose(fp);
}

TEST(st_f16_bf16_exact)
{
    /* Every special class of half: zeroes, subnormals, normals, the largest, infinities, NaN. */
    uint16_t h[] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3555, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x8001};
    float want[] = {0.0f, -0.0f, 0x1p-24f, 0x1.ff8p-15f, 0x1p-14f, 0x1.554p-2f, 65504.0f, INFINITY, -INFINITY, NAN,
                    -0x1p-24f};
    uint16_t bf[] = {0x3f80, 0x0001, 0x7f80, 0xff80, 0x7fc0, 0x8000};
    float bwant[] = {1.0f, 0x1p-133f, INFINITY, -INFINITY, NAN, -0.0f};
    const size_t nh = sizeof h / sizeof h[0], nb = sizeof bf / sizeof bf[0];
    unsigned char buf[256];
    char header[200];
    int hl = snprintf(header, sizeof header, "{" T("h", "F16", "[%zu]", "[0,%zu]") "," T("b", "BF16", "[%zu]",
                                                                                         "[%zu,%zu]") "}",
                      nh, 2 * nh, nb, 2 * nh, 2 * nh + 2 * nb);
    memset(buf, 0, 8);
    buf[0] = (unsigned char)hl;
    memcpy(buf + 8, header, (size_t)hl);
    memcpy(buf + 8 + hl, h, sizeof h);
    memcpy(buf + 8 + hl + sizeof h, bf, sizeof bf);
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open_memory(buf, 8 + (size_t)hl + sizeof h + sizeof bf, "mem", &f)))
        return;
    float out[16];
    lsdi_st_to_f32(lsdi_st_find(f, "h"), out);
    for (size_t i = 0; i < nh; i++)
        CHECK(isnan(want[i]) ? isnan(out[i]) : (out[i] == want[i] && signbit(out[i]) == signbit(want[i])),
              "half 0x%04x -> %a, want %a", h[i], (double)out[i], (double)want[i]);
    lsdi_st_to_f32(lsdi_st_find(f, "b"), out);
    for (size_t i = 0; i < nb; i++)
        CHECK(isnan(bwant[i]) ? isnan(out[i]) : (out[i] == bwant[i] && signbit(out[i]) == signbit(bwant[i])),
              "bf16 0x%04x -> %a, want %a", bf[i], (double)out[i], (double)bwant[i]);
    lsdi_st_close(f);
}

TEST(st_zero_element_tensors)
{
    /* Several 0-byte tensors may share an offset, including the end of the data. */
    const char *p = make_file("{" T("a", "F32", "[0]", "[0,0]") "," T("b", "F32", "[1]", "[0,4]") ","
                              T("c", "I64", "[2,0]", "[4,4]") "," T("d", "F16", "[]", "[4,6]") "}", 6);
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(p, &f)))
        return;
    CHECK(lsdi_st_count(f) == 4);
    const lsdi_st_tensor *c = lsdi_st_find(f, "c"), *d = lsdi_st_find(f, "d");
    CHECK(c && c->numel == 0 && c->nbytes == 0 && c->ndim == 2 && c->shape[0] == 2);
    CHECK(d && d->ndim == 0 && d->numel == 1 && d->nbytes == 2);
    lsdi_st_close(f);
}

/* ---- rejections: one per rule --------------------------------------------------------------------------- */

TEST(st_reject_short_file)
{
    char p[600];
    snprintf(p, sizeof p, "%s/short.safetensors", temp_dir());
    CHECK(write_file(p, "\x02\0\0\0\0", 5));
    CHECK_REJECT(p, "5 bytes, too short");
    CHECK(write_file(p, "", 0));
    CHECK_REJECT(p, "0 bytes, too short");
}

TEST(st_reject_header_length)
{
    CHECK_REJECT(make_file_len("{}", 100000001, 0), "header length 100000001 is over");
    CHECK_REJECT(make_file_len("{}", 1000, 4), "header length 1000 runs past the end of the file (14 bytes)");
    CHECK_REJECT(make_file_len("{}", UINT64_MAX, 0), "header length 18446744073709551615 is over");
}

TEST(st_reject_bad_utf8)
{
    CHECK_REJECT(make_file("{" T("w\xff", "F32", "[1]", "[0,4]") "}", 4), "not valid UTF-8 (byte 3");
    CHECK_REJECT(make_file("{\"\xed\xa0\x80\":1}", 0), "not valid UTF-8"); /* an encoded surrogate */
    CHECK_REJECT(make_file("{\"\xc0\xaf\":1}", 0), "not valid UTF-8 (byte 2"); /* an overlong '/' */
}

TEST(st_reject_not_json_object)
{
    CHECK_REJECT(make_file("[1, 2]  ", 0), "not a JSON object");
    CHECK_REJECT(make_file("", 0), "not a JSON object");
    CHECK_REJECT(make_file("{\"w\": ", 0), "not valid JSON");
    CHECK_REJECT(make_file("{} {}", 0), "bytes after its JSON object");
    CHECK_REJECT(make_file("{\"w\": 3}", 0), "tensor 'w': entry is not a JSON object");
    CHECK_REJECT(make_file("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4), "tensor 'w': missing");
}

TEST(st_reject_duplicate_names)
{
    CHECK_REJECT(make_file("{" T("w", "F32", "[1]", "[0,4]") "," T("w", "F32", "[1]", "[4,8]") "}", 8),
                 "duplicate tensor name 'w'");
    CHECK_REJECT(make_file("{\"__metadata__\":{},\"__metadata__\":{}}", 0), "duplicate name '__metadata__'");
    CHECK_REJECT(make_file("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0), "duplicate metadata key 'k'");
}

TEST(st_reject_unknown_dtype)
{
    CHECK_REJECT(make_file("{" T("w", "F8_E4M3", "[1]", "[0,1]") "}", 1), "tensor 'w': unknown dtype 'F8_E4M3'");
    CHECK_REJECT(make_file("{" T("w", "f32", "[1]", "[0,4]") "}", 4), "unknown dtype 'f32'");
}

TEST(st_reject_bad_shape_numbers)
{
    CHECK_REJECT(make_file("{" T("w", "F32", "[-1]", "[0,4]") "}", 4), "tensor 'w': shape dimension 0 is negative");
    CHECK_REJECT(make_file("{" T("w", "F32", "[2, 1.5]", "[0,12]") "}", 12),
                 "tensor 'w': shape dimension 1 is not an integer");
    CHECK_REJECT(make_file("{" T("w", "F32", "[\"2\"]", "[0,8]") "}", 8), "shape dimension 0 is not a number");
    CHECK_REJECT(make_file("{" T("w", "F32", "[1e300]", "[0,4]") "}", 4), "shape dimension 0 is too large");
}

TEST(st_reject_bad_offsets)
{
    CHECK_REJECT(make_file("{" T("w", "F32", "[1]", "[-4,0]") "}", 4), "tensor 'w': a data offset is negative");
    CHECK_REJECT(make_file("{" T("w", "F32", "[1]", "[0,4.5]") "}", 4), "tensor 'w': a data offset is not an integer");
    CHECK_REJECT(make_file("{" T("w", "F32", "[1]", "[0]") "}", 4), "tensor 'w': \"data_offsets\" is not an array");
    CHECK_REJECT(make_file("{" T("w", "F32", "[0]", "[4,0]") "}", 4), "tensor 'w': data_offsets [4, 0] end before");
}

TEST(st_reject_hole)
{
    CHECK_REJECT(make_file("{" T("a", "F32", "[1]", "[0,4]") "," T("b", "F32", "[1]", "[8,12]") "}", 12),
                 "tensor 'b': data starts at 8, leaving a hole after byte 4");
    CHECK_REJECT(make_file("{" T("a", "F32", "[1]", "[4,8]") "}", 8), "tensor 'a': data starts at 4");
}

TEST(st_reject_overlap)
{
    CHECK_REJECT(make_file("{" T("a", "F32", "[2]", "[0,8]") "," T("b", "F32", "[2]", "[4,12]") "}", 12),
                 "tensor 'b': data [4, 12) overlaps 'a'");
    CHECK_REJECT(make_file("{" T("a", "F32", "[1]", "[0,4]") "," T("b", "F32", "[1]", "[0,4]") "}", 4),
                 "tensor 'b': data [0, 4) overlaps 'a'");
}

TEST(st_reject_size_mismatch)
{
    CHECK_REJECT(make_file("{" T("w", "F32", "[3]", "[0,8]") "}", 8),
                 "tensor 'w': data_offsets [0, 8] hold 8 bytes, but 3 elements of F32 need 12");
    CHECK_REJECT(make_file("{" T("s", "BF16", "[]", "[0,4]") "}", 4), "tensor 's'");
}

TEST(st_reject_shape_overflow)
{
    CHECK_REJECT(make_file("{" T("w", "F32", "[4294967296, 4294967296, 2]", "[0,4]") "}", 4),
                 "tensor 'w': shape product overflows");
    CHECK_REJECT(make_file("{" T("w", "F64", "[4294967296, 1073741824]", "[0,4]") "}", 4),
                 "tensor 'w': size in bytes overflows");
}

TEST(st_reject_trailing_and_truncated_data)
{
    CHECK_REJECT(make_file("{" T("w", "F32", "[1]", "[0,4]") "}", 8), "4 trailing bytes after the last tensor ('w')");
    CHECK_REJECT(make_file("{}", 3), "3 trailing bytes");
    CHECK_REJECT(make_file("{" T("w", "F32", "[2]", "[0,8]") "}", 4), "tensor 'w': data ends at byte 8");
}

TEST(st_reject_non_string_metadata)
{
    CHECK_REJECT(make_file("{\"__metadata__\":{\"ok\":\"x\",\"ss_steps\":100}}", 0),
                 "metadata value of 'ss_steps' is not a string");
    CHECK_REJECT(make_file("{\"__metadata__\":[\"x\"]}", 0), "\"__metadata__\" is not a JSON object");
}

TEST(st_reject_too_many_dims)
{
    CHECK_REJECT(make_file("{" T("w", "F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4),
                 "tensor 'w': shape has 9 dimensions, more than 8");
    const char *p = make_file("{" T("w", "F32", "[1,1,1,1,1,1,1,1]", "[0,4]") "}", 4);
    lsdi_st_file *f = NULL;
    if (CHECK_OK(lsdi_st_open(p, &f)))
        lsdi_st_close(f);
}

TEST(st_missing_file)
{
    lsdi_st_file *f = NULL;
    CHECK_STATUS(lsdi_st_open("/nonexistent/x.safetensors", &f), LSD_ERR_NOT_FOUND, "/nonexistent/x.safetensors");
    CHECK_STATUS(lsdi_st_open(temp_dir(), &f), LSD_ERR_IO, "not a regular file");
}

/* ---- fixtures ------------------------------------------------------------------------------------------- */

TEST(st_fixture_unet)
{
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(data_path("sd-tiny/unet/diffusion_pytorch_model.safetensors"), &f)))
        return;
    CHECK(lsdi_st_count(f) == 494, "%zu tensors", lsdi_st_count(f));
    CHECK(lsdi_st_metadata_count(f) == 0);
    const lsdi_st_tensor *t = lsdi_st_find(f, "conv_in.weight");
    CHECK(t && t->dtype == LSDI_ST_F32 && t->ndim == 4 && t->shape[0] == 16 && t->shape[1] == 4 &&
          t->shape[2] == 3 && t->shape[3] == 3 && t->nbytes == 2304);
    const lsdi_st_tensor *first = lsdi_st_at(f, 0);
    CHECK(first && strcmp(first->name, "conv_in.bias") == 0, "first by offset: %s", first ? first->name : "-");
    lsdi_st_close(f);
}

TEST(st_fixture_text_encoder_f16_i64)
{
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(data_path("sd-tiny/text_encoder/model.safetensors"), &f)))
        return;
    CHECK(lsdi_st_count(f) == 85, "%zu tensors", lsdi_st_count(f));
    const lsdi_st_tensor *ids = lsdi_st_find(f, "text_model.embeddings.position_ids");
    CHECK(ids && ids->dtype == LSDI_ST_I64 && ids->ndim == 2 && ids->shape[0] == 1 && ids->shape[1] == 77);
    if (ids && ids->numel == 77) {
        float v[77];
        lsdi_st_to_f32(ids, v);
        for (int i = 0; i < 77; i++)
            CHECK(v[i] == (float)i, "position_ids[%d] = %g", i, (double)v[i]);
    }
    const lsdi_st_tensor *emb = lsdi_st_find(f, "text_model.embeddings.token_embedding.weight");
    CHECK(emb && emb->dtype == LSDI_ST_F16 && emb->shape[0] == 49408 && emb->shape[1] == 32);
    lsdi_st_close(f);
}

TEST(st_fixture_fp16_variant_converts_exactly)
{
    /* The VAE's fp16 variant holds the same fp16-exact weights as the F32 file: conversion must be bit-exact. */
    lsdi_st_file *a = NULL, *b = NULL;
    if (!CHECK_OK(lsdi_st_open(data_path("sd-tiny/vae/diffusion_pytorch_model.safetensors"), &a)))
        return;
    if (!CHECK_OK(lsdi_st_open(data_path("sd-tiny/vae/diffusion_pytorch_model.fp16.safetensors"), &b))) {
        lsdi_st_close(a);
        return;
    }
    CHECK(lsdi_st_count(a) == lsdi_st_count(b) && lsdi_st_count(a) > 0);
    size_t compared = 0;
    for (size_t i = 0; i < lsdi_st_count(a); i++) {
        const lsdi_st_tensor *ta = lsdi_st_at(a, i), *tb = lsdi_st_find(b, ta->name);
        CHECK(tb && tb->dtype == LSDI_ST_F16 && ta->dtype == LSDI_ST_F32 && tb->numel == ta->numel, "%s", ta->name);
        if (!tb || tb->numel != ta->numel)
            continue;
        float *fa = malloc(ta->numel * sizeof(float) + 1), *fb = malloc(tb->numel * sizeof(float) + 1);
        lsdi_st_to_f32(ta, fa);
        lsdi_st_to_f32(tb, fb);
        CHECK(memcmp(fa, fb, ta->numel * sizeof(float)) == 0, "%s differs", ta->name);
        compared += ta->numel;
        free(fa);
        free(fb);
    }
    CHECK(compared > 10000, "%zu values", compared);
    lsdi_st_close(a);
    lsdi_st_close(b);
}

TEST(st_retain_outlives_close)
{
    lsdi_st_file *f = NULL;
    if (!CHECK_OK(lsdi_st_open(data_path("sd-tiny/unet/diffusion_pytorch_model.safetensors"), &f)))
        return;
    const lsdi_st_tensor *t = lsdi_st_find(f, "conv_in.bias");
    const float *data = t ? t->data : NULL;
    lsdi_st_retain(f);
    lsdi_st_retain(f);
    lsdi_st_close(f);
    lsdi_st_release(f);
    /* One reference left: the mapping (and the tensor table) must still be readable; ASan would catch it. */
    float first;
    if (data) {
        memcpy(&first, data, sizeof first);
        CHECK(isfinite(first));
        CHECK(strcmp(t->name, "conv_in.bias") == 0);
    }
    lsdi_st_release(f);
}

/* ---- public API ---------------------------------------------------------------------------------------- */

TEST(st_public_inspect)
{
    lsd_safetensors *f = NULL;
    if (!CHECK_OK(lsd_safetensors_open(data_path("sd-tiny/text_encoder/model.safetensors"), &f)))
        return;
    CHECK(lsd_safetensors_count(f) == 85);
    lsd_tensor_info info = {.struct_size = sizeof info};
    int found = 0;
    for (size_t i = 0; i < lsd_safetensors_count(f); i++) {
        if (!CHECK_OK(lsd_safetensors_tensor_info(f, i, &info)))
            break;
        if (strcmp(info.name, "text_model.embeddings.position_ids") == 0) {
            found = 1;
            CHECK(strcmp(info.dtype, "I64") == 0 && info.ndim == 2 && info.shape[1] == 77 && info.nbytes == 616);
        }
    }
    CHECK(found);
    CHECK_STATUS(lsd_safetensors_tensor_info(f, 85, &info), LSD_ERR_INVALID_ARGUMENT, "index 85 out of range");
    CHECK(lsd_safetensors_metadata_count(f) == 0);
    const char *k, *v;
    CHECK_STATUS(lsd_safetensors_metadata(f, 0, &k, &v), LSD_ERR_INVALID_ARGUMENT, "metadata index 0");

    /* lsd_tensor_info has had one size since 0.1: a smaller struct_size is refused and nothing is written; a newer
     * caller's larger struct gets the fields this library knows and zeros after them. */
    struct {
        lsd_tensor_info head;
        char newer[8];
    } small;
    memset(&small, 0x5a, sizeof small);
    small.head.struct_size = offsetof(lsd_tensor_info, dtype);
    CHECK_STATUS(lsd_safetensors_tensor_info(f, 0, &small.head), LSD_ERR_INVALID_ARGUMENT,
                 "lsd_tensor_info struct_size");
    CHECK(small.head.name[0] == 0x5a);
    small.head.struct_size = sizeof small;
    CHECK_OK(lsd_safetensors_tensor_info(f, 0, &small.head));
    CHECK(small.head.name[0] != 0x5a && small.head.struct_size == sizeof small.head);
    for (size_t i = 0; i < sizeof small.newer; i++)
        CHECK(small.newer[i] == 0, "byte %zu past this library's struct", i);
    lsd_safetensors_close(f);
    lsd_safetensors_close(NULL);

    CHECK_STATUS(lsd_safetensors_open(make_file("{" T("w", "F32", "[3]", "[0,8]") "}", 8), &f), LSD_ERR_FORMAT,
                 "tensor 'w'");
    CHECK(f == NULL);
}

TEST(st_public_metadata)
{
    char path[600];
    snprintf(path, sizeof path, "%s/m.safetensors", temp_dir());
    const char *keys[] = {"b", "a"}, *vals[] = {"2", "1"};
    CHECK_OK(lsdi_st_write(path, NULL, 0, keys, vals, 2));
    lsd_safetensors *f = NULL;
    if (!CHECK_OK(lsd_safetensors_open(path, &f)))
        return;
    const char *k = NULL, *v = NULL;
    CHECK(lsd_safetensors_metadata_count(f) == 2);
    CHECK_OK(lsd_safetensors_metadata(f, 0, &k, &v));
    CHECK(k && v && strcmp(k, "a") == 0 && strcmp(v, "1") == 0, "sorted by key");
    lsd_safetensors_close(f);
}
