/* PyTorch zip checkpoints: the fixtures' model.ckpt and VAE .bin against their safetensors twins, the hostile
 * files of sd-tiny-sf/single-file/bad, and small zips made here for strided views and broken records. */
#include <stdlib.h>
#include <zip.h>

#include "io/ckpt.h"
#include "io/safetensors.h"
#include "io/zip_archive.h"
#include "test.h"

static int has_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/* Every tensor of the safetensors file has a twin of the same name, shape and (as float32) values. */
static void check_same_tensors(const lsdi_ckpt *c, const char *st_path, size_t *matched)
{
    lsdi_st_file *sf = NULL;
    CHECK_OK(lsdi_st_open(st_path, &sf));
    if (!sf)
        return;
    *matched = 0;
    for (size_t i = 0; i < lsdi_st_count(sf); i++) {
        const lsdi_st_tensor *a = lsdi_st_at(sf, i);
        const lsdi_st_tensor *b = lsdi_ckpt_find(c, a->name);
        CHECK(b != NULL, "%s missing from %s", a->name, lsdi_ckpt_path(c));
        if (!b)
            continue;
        CHECK(a->ndim == b->ndim && a->numel == b->numel && !memcmp(a->shape, b->shape, sizeof(int64_t) * a->ndim),
              "%s: shapes differ", a->name);
        if (a->numel != b->numel || !a->numel)
            continue;
        CHECK(b->nbytes == b->numel * lsdi_st_dtype_size(b->dtype));
        float *fa = malloc(a->numel * sizeof(float)), *fb = malloc(b->numel * sizeof(float));
        lsdi_st_to_f32(a, fa);
        lsdi_st_to_f32(b, fb);
        if (!CHECK_CLOSE(fb, fa, a->numel, 0.0))
            test_fail(__FILE__, __LINE__, "tensor %s", a->name);
        free(fa);
        free(fb);
        (*matched)++;
    }
    lsdi_st_close(sf);
}

TEST(ckpt_model_ckpt_equals_safetensors)
{
    lsdi_ckpt *c = NULL;
    CHECK_OK(lsdi_ckpt_open(data_path("sd-tiny-sf/single-file/model.ckpt"), &c));
    if (!c)
        return;
    CHECK(lsdi_ckpt_count(c) == 708, "got %zu tensors", lsdi_ckpt_count(c));
    size_t matched = 0;
    check_same_tensors(c, data_path("sd-tiny-sf/single-file/model.safetensors"), &matched);
    CHECK(matched == 703, "matched %zu", matched);
    size_t n_f32 = 0, n_f16 = 0;
    for (size_t i = 0; i < lsdi_ckpt_count(c); i++) {
        const lsdi_st_tensor *t = lsdi_ckpt_at(c, i);
        if (has_prefix(t->name, "model.diffusion_model.") || has_prefix(t->name, "first_stage_model.")) {
            CHECK(t->dtype == LSDI_ST_F32, "%s is %s", t->name, lsdi_st_dtype_name(t->dtype));
            n_f32++;
        } else if (!strcmp(t->name, "cond_stage_model.transformer.text_model.embeddings.position_ids")) {
            CHECK(t->dtype == LSDI_ST_I64 && t->numel == 77 && ((const int64_t *)t->data)[76] == 76);
        } else if (has_prefix(t->name, "cond_stage_model.")) {
            CHECK(t->dtype == LSDI_ST_F16, "%s is %s", t->name, lsdi_st_dtype_name(t->dtype));
            n_f16++;
        }
    }
    CHECK(n_f32 == 618 && n_f16 == 84, "%zu F32, %zu F16", n_f32, n_f16);
    /* State-dict order, and the non-weight entries a loader skips by prefix. */
    CHECK(!strcmp(lsdi_ckpt_at(c, 0)->name, "betas"));
    const lsdi_st_tensor *t = lsdi_ckpt_find(c, "alphas_cumprod");
    CHECK(t && t->dtype == LSDI_ST_F32 && t->ndim == 1 && t->shape[0] == 1000);
    t = lsdi_ckpt_find(c, "model_ema.decay");
    CHECK(t && t->ndim == 0 && t->numel == 1 && t->dtype == LSDI_ST_F32 && *(const float *)t->data == 0.9999f);
    t = lsdi_ckpt_find(c, "model_ema.num_updates");
    CHECK(t && t->ndim == 0 && t->dtype == LSDI_ST_I32 && *(const int32_t *)t->data == 470000);
    CHECK(lsdi_ckpt_find(c, "epoch") == NULL && lsdi_ckpt_find(c, "global_step") == NULL);
    CHECK(lsdi_ckpt_find(c, "model.diffusion_model.nope") == NULL);
    lsdi_ckpt_close(c);
}

TEST(ckpt_diffusers_vae_bin_equals_safetensors)
{
    lsdi_ckpt *c = NULL;
    CHECK_OK(lsdi_ckpt_open(data_path("sd-tiny/vae/diffusion_pytorch_model.bin"), &c));
    if (!c)
        return;
    CHECK(lsdi_ckpt_count(c) == 124, "got %zu", lsdi_ckpt_count(c));
    size_t matched = 0;
    check_same_tensors(c, data_path("sd-tiny/vae/diffusion_pytorch_model.safetensors"), &matched);
    CHECK(matched == 124, "matched %zu", matched);
    const lsdi_st_tensor *t = lsdi_ckpt_find(c, "encoder.conv_in.weight");
    CHECK(t && t->dtype == LSDI_ST_F32 && t->ndim == 4 && t->shape[0] == 16 && t->shape[1] == 3);
    lsdi_ckpt_close(c);
}

TEST(ckpt_open_memory_matches_file)
{
    size_t len = 0;
    char *buf = read_file(data_path("sd-tiny-sf/single-file/model.ckpt"), &len);
    if (!buf)
        return;
    lsdi_ckpt *c = NULL;
    CHECK_OK(lsdi_ckpt_open_memory(buf, len, "mem.ckpt", &c));
    free(buf); /* the reader keeps nothing of the caller's buffer */
    if (!c)
        return;
    CHECK(lsdi_ckpt_count(c) == 708);
    const lsdi_st_tensor *t = lsdi_ckpt_find(c, "model.diffusion_model.out.2.bias");
    CHECK(t && t->numel == 4 && t->dtype == LSDI_ST_F32);
    CHECK(!strcmp(lsdi_ckpt_path(c), "mem.ckpt"));
    lsdi_ckpt_close(c);
}

TEST(ckpt_bad_files_rejected)
{
    static const struct {
        const char *file;
        lsd_status st;
        const char *msg;
    } cases[] = {
        {"evil_global.ckpt", LSD_ERR_FORMAT, "forbidden global posix.system"},
        {"evil_builtins.ckpt", LSD_ERR_FORMAT, "forbidden global builtins.eval"},
        {"evil_stack_global.ckpt", LSD_ERR_FORMAT, "forbidden global builtins.exec"},
        {"oob_tensor.ckpt", LSD_ERR_FORMAT, "tensor 'model.diffusion_model.out.2.bias'"},
        {"short_storage.ckpt", LSD_ERR_FORMAT, "record 'short_storage/data/0' holds 16 bytes"},
        {"truncated.ckpt", LSD_ERR_FORMAT, "truncated"},
        {"not_a_zip.ckpt", LSD_ERR_FORMAT, "not a PyTorch zip checkpoint"},
    };
    char rel[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(rel, sizeof(rel), "sd-tiny-sf/single-file/bad/%s", cases[i].file);
        lsdi_ckpt *c = NULL;
        CHECK_STATUS(lsdi_ckpt_open(data_path(rel), &c), cases[i].st, cases[i].msg);
        CHECK(c == NULL);
        CHECK(strstr(lsd_last_error(), cases[i].file) != NULL, "message names the file: %s", lsd_last_error());
        /* The same through memory. */
        size_t len = 0;
        char *buf = read_file(data_path(rel), &len);
        if (buf) {
            CHECK_STATUS(lsdi_ckpt_open_memory(buf, len, cases[i].file, &c), cases[i].st, cases[i].msg);
            free(buf);
        }
    }
    /* The storage's bounds are part of the oob message. */
    lsdi_ckpt *c = NULL;
    CHECK_STATUS(lsdi_ckpt_open(data_path("sd-tiny-sf/single-file/bad/oob_tensor.ckpt"), &c), LSD_ERR_FORMAT,
                 "8 elements, last element 7) does not fit its storage '0' of 4 elements");
    CHECK_STATUS(lsdi_ckpt_open(data_path("sd-tiny-sf/single-file/nope.ckpt"), &c), LSD_ERR_IO, "nope.ckpt");
}

/* ---- small checkpoints made here ---- */

typedef struct rec {
    const char *name;
    const void *data;
    size_t len;
    int deflate;
} rec;

/* Writes a zip with the given records to a temp file and returns its path (static buffer). */
static const char *make_zip(const char *file, const rec *recs, size_t n)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", temp_dir(), file);
    int err = 0;
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
    CHECK(za != NULL);
    if (!za)
        return path;
    for (size_t i = 0; i < n; i++) {
        zip_source_t *src = zip_source_buffer(za, recs[i].data, recs[i].len, 0);
        zip_int64_t idx = zip_file_add(za, recs[i].name, src, ZIP_FL_ENC_UTF_8);
        CHECK(idx >= 0);
        zip_set_file_compression(za, (zip_uint64_t)idx, recs[i].deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
    }
    CHECK(zip_close(za) == 0);
    return path;
}

/* {'w': _rebuild_tensor_v2(pid('storage', FloatStorage, '0', 'cpu', 6), off, size, stride, False, {}),
 *  'v': the same storage as a second view} with (size, stride, offset) picked by the caller. */
static size_t make_pickle(unsigned char *p, unsigned char sz0, unsigned char sz1, unsigned char st0,
                          unsigned char st1, unsigned char off, unsigned char numel_v)
{
    static const char glob[] = "ctorch._utils\n_rebuild_tensor_v2\nq\x01";
    static const char fstore[] = "ctorch\nFloatStorage\nq\x02";
    size_t n = 0;
    p[n++] = 0x80, p[n++] = 2, p[n++] = '}', p[n++] = '(';
    for (int k = 0; k < 2; k++) {
        p[n++] = 'X', p[n++] = 1, p[n++] = 0, p[n++] = 0, p[n++] = 0, p[n++] = k ? 'v' : 'w';
        if (!k) {
            memcpy(p + n, glob, sizeof(glob) - 1);
            n += sizeof(glob) - 1;
        } else {
            p[n++] = 'h', p[n++] = 1;
        }
        p[n++] = '(', p[n++] = '(';
        memcpy(p + n, "X\x07\0\0\0storage", 12);
        n += 12;
        if (!k) {
            memcpy(p + n, fstore, sizeof(fstore) - 1);
            n += sizeof(fstore) - 1;
        } else {
            p[n++] = 'h', p[n++] = 2;
        }
        memcpy(p + n, "X\x01\0\0\0" "0X\x03\0\0\0cpu", 14);
        n += 14;
        p[n++] = 'K', p[n++] = k ? numel_v : 6, p[n++] = 't', p[n++] = 'Q';
        if (!k) {
            p[n++] = 'K', p[n++] = off;
            p[n++] = 'K', p[n++] = sz0, p[n++] = 'K', p[n++] = sz1, p[n++] = 0x86;
            p[n++] = 'K', p[n++] = st0, p[n++] = 'K', p[n++] = st1, p[n++] = 0x86;
        } else { /* the last 2 elements, contiguous */
            p[n++] = 'K', p[n++] = 4, p[n++] = 'K', p[n++] = 2, p[n++] = 0x85, p[n++] = 'K', p[n++] = 1,
            p[n++] = 0x85;
        }
        p[n++] = 0x89, p[n++] = '}', p[n++] = 't', p[n++] = 'R';
    }
    p[n++] = 'u', p[n++] = '.';
    return n;
}

static const float storage6[6] = {0, 1, 2, 3, 4, 5};

TEST(ckpt_strided_views_copied_and_shared)
{
    unsigned char pkl[512];
    /* A transposed [2,3] view of a [3,2] storage: element (i, j) is storage[i + 2j]. */
    size_t n = make_pickle(pkl, 2, 3, 1, 2, 0, 6);
    rec recs[] = {{"m/data.pkl", pkl, n, 1}, {"m/data/0", storage6, sizeof(storage6), 0}, {"m/version", "3\n", 2, 0}};
    lsdi_ckpt *c = NULL;
    CHECK_OK(lsdi_ckpt_open(make_zip("m.ckpt", recs, 3), &c));
    if (!c)
        return;
    CHECK(lsdi_ckpt_count(c) == 2);
    const lsdi_st_tensor *w = lsdi_ckpt_find(c, "w"), *v = lsdi_ckpt_find(c, "v");
    CHECK(w && w->ndim == 2 && w->shape[0] == 2 && w->shape[1] == 3 && w->numel == 6 && w->nbytes == 24);
    static const float want_w[6] = {0, 2, 4, 1, 3, 5};
    if (w)
        CHECK_CLOSE((const float *)w->data, want_w, 6, 0.0);
    static const float want_v[2] = {4, 5};
    CHECK(v && v->numel == 2 && v->ndim == 1);
    if (v)
        CHECK_CLOSE((const float *)v->data, want_v, 2, 0.0);
    lsdi_ckpt_close(c);

    /* Contiguous with an offset: a pointer into the storage, last element exactly at the end. */
    n = make_pickle(pkl, 1, 3, 3, 1, 3, 6);
    recs[0].len = n;
    CHECK_OK(lsdi_ckpt_open(make_zip("off.ckpt", recs, 3), &c));
    if (c) {
        static const float want[3] = {3, 4, 5};
        CHECK_CLOSE((const float *)lsdi_ckpt_find(c, "w")->data, want, 3, 0.0);
        lsdi_ckpt_close(c);
    }
    /* One past the end. */
    n = make_pickle(pkl, 1, 3, 3, 1, 4, 6);
    recs[0].len = n;
    CHECK_STATUS(lsdi_ckpt_open(make_zip("oob.ckpt", recs, 3), &c), LSD_ERR_FORMAT, "tensor 'w'");
    /* A stride-0 view with more elements than its storage. */
    n = make_pickle(pkl, 7, 1, 0, 0, 0, 6);
    recs[0].len = n;
    CHECK_STATUS(lsdi_ckpt_open(make_zip("bcast.ckpt", recs, 3), &c), LSD_ERR_FORMAT, "does not fit its storage");
    /* The two references to storage '0' disagree on its size. */
    n = make_pickle(pkl, 2, 3, 3, 1, 0, 5);
    recs[0].len = n;
    CHECK_STATUS(lsdi_ckpt_open(make_zip("disagree.ckpt", recs, 3), &c), LSD_ERR_FORMAT,
                 "storage '0' is declared as F32 x 5 here and as F32 x 6");
}

TEST(ckpt_broken_containers)
{
    unsigned char pkl[512];
    size_t n = make_pickle(pkl, 2, 3, 3, 1, 0, 6);
    lsdi_ckpt *c = NULL;
    rec no_storage[] = {{"m/data.pkl", pkl, n, 0}};
    CHECK_STATUS(lsdi_ckpt_open(make_zip("nostore.ckpt", no_storage, 1), &c), LSD_ERR_NOT_FOUND,
                 "its storage record 'm/data/0' is missing");
    rec no_pickle[] = {{"m/data/0", storage6, sizeof(storage6), 0}};
    CHECK_STATUS(lsdi_ckpt_open(make_zip("nopkl.ckpt", no_pickle, 1), &c), LSD_ERR_FORMAT, "no <folder>/data.pkl");
    rec two[] = {{"a/data.pkl", pkl, n, 0}, {"b/data.pkl", pkl, n, 0}};
    CHECK_STATUS(lsdi_ckpt_open(make_zip("two.ckpt", two, 2), &c), LSD_ERR_FORMAT, "more than one data.pkl");
    static const unsigned char list_pkl[] = {0x80, 2, ']', '.'};
    rec list[] = {{"m/data.pkl", list_pkl, sizeof(list_pkl), 0}};
    CHECK_STATUS(lsdi_ckpt_open(make_zip("list.ckpt", list, 1), &c), LSD_ERR_FORMAT, "holds a list, not a state dict");
    rec big[] = {{"m/data.pkl", pkl, n, 0}, {"m/byteorder", "big", 3, 0}, {"m/data/0", storage6, sizeof(storage6), 0}};
    CHECK_STATUS(lsdi_ckpt_open(make_zip("big.ckpt", big, 3), &c), LSD_ERR_UNSUPPORTED, "'m/byteorder'");
    big[1] = (rec){"m/byteorder", "little", 6, 0};
    CHECK_OK(lsdi_ckpt_open(make_zip("little.ckpt", big, 3), &c));
    lsdi_ckpt_close(c);
    static const unsigned char legacy[] = {0x80, 2, '}', '.'};
    CHECK_STATUS(lsdi_ckpt_open_memory(legacy, sizeof(legacy), "old.pt", &c), LSD_ERR_UNSUPPORTED,
                 "old.pt: not a PyTorch zip checkpoint but a legacy");
}

TEST(zip_size_caps)
{
    /* A stored entry whose directory claims more than the archive holds is refused before any allocation. */
    static unsigned char big[4096];
    rec recs[] = {{"x/data/0", big, sizeof(big), 0}, {"x/z", big, sizeof(big), 1}};
    size_t len = 0;
    char *buf = read_file(make_zip("caps.zip", recs, 2), &len);
    if (!buf)
        return;
    lsdi_zip *z = NULL;
    CHECK_OK(lsdi_zip_open_memory(buf, len, "caps.zip", &z));
    if (z) {
        size_t i = 0, size = 0;
        void *data = NULL;
        CHECK(lsdi_zip_count(z) == 2 && !strcmp(lsdi_zip_entry_name(z, 1), "x/z"));
        CHECK_OK(lsdi_zip_find(z, "x/z", &i));
        CHECK_OK(lsdi_zip_read(z, i, &data, &size));
        CHECK(size == sizeof(big) && data && !memcmp(data, big, size));
        free(data);
        CHECK_STATUS(lsdi_zip_find(z, "x/none", &i), LSD_ERR_NOT_FOUND, "x/none");
        lsdi_zip_close(z);
    }
    /* A deflated entry that claims 1 GiB in both its headers: libzip cannot know better until it inflates, so
     * the cap refuses it before allocating. A stored entry claiming more than the file is refused at open. */
    unsigned char *cd = NULL, *lh = NULL;
    for (size_t k = 0; k + 46 + 3 <= len; k++) {
        if (!memcmp(buf + k, "PK\x03\x04", 4) && !memcmp(buf + k + 30, "x/z", 3))
            lh = (unsigned char *)buf + k;
        if (!memcmp(buf + k, "PK\x01\x02", 4) && !memcmp(buf + k + 46, "x/z", 3))
            cd = (unsigned char *)buf + k;
    }
    CHECK(cd != NULL && lh != NULL);
    if (cd && lh) {
        lh[22] = cd[24] = 0, lh[23] = cd[25] = 0, lh[24] = cd[26] = 0, lh[25] = cd[27] = 0x40;
        CHECK_OK(lsdi_zip_open_memory(buf, len, "lie.zip", &z));
        if (z) {
            void *data = NULL;
            size_t size = 0;
            CHECK_STATUS(lsdi_zip_read(z, 1, &data, &size), LSD_ERR_FORMAT,
                         "lie.zip: record 'x/z' claims 1073741824 bytes");
            CHECK(data == NULL);
            lsdi_zip_close(z);
        }
    }
    free(buf);
}

/* Cuts and byte changes of a small valid checkpoint: each open fails cleanly or succeeds, under the
 * sanitizers, and a failure always leaves a message and no handle. */
TEST(ckpt_mutations_never_crash)
{
    size_t len = 0;
    char *orig = read_file(data_path("sd-tiny-sf/single-file/bad/oob_tensor.ckpt"), &len);
    if (!orig)
        return;
    char *buf = malloc(len);
    lsdi_ckpt *c = NULL;
    for (size_t cut = 0; cut < len; cut += 7) {
        lsd_status st = lsdi_ckpt_open_memory(orig, cut, "cut.ckpt", &c);
        CHECK(st != LSD_OK && c == NULL && lsd_last_error()[0]);
    }
    unsigned seed = 12345;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, orig, len);
        for (int k = 0; k < 1 + iter % 4; k++) {
            seed = seed * 1103515245u + 12345u;
            buf[(seed >> 8) % len] = (char)(seed >> 20);
        }
        lsd_status st = lsdi_ckpt_open_memory(buf, len, "mut.ckpt", &c);
        if (st == LSD_OK)
            lsdi_ckpt_close(c);
        else
            CHECK(c == NULL && lsd_last_error()[0]);
    }
    free(buf);
    free(orig);
}

/* LSD_MAX_LOAD_BYTES caps what one checkpoint may make the reader allocate, below the size-derived defaults. */
TEST(ckpt_user_load_cap)
{
    const char *bin = data_path("sd-tiny/vae/diffusion_pytorch_model.bin");
    lsdi_ckpt *c = NULL;
    setenv("LSD_MAX_LOAD_BYTES", "100000", 1);
    CHECK_STATUS(lsdi_ckpt_open(bin, &c), LSD_ERR_OUT_OF_MEMORY, "LSD_MAX_LOAD_BYTES=100000");
    CHECK(c == NULL);
    setenv("LSD_MAX_LOAD_BYTES", "1000000000", 1);
    CHECK_OK(lsdi_ckpt_open(bin, &c));
    lsdi_ckpt_close(c);
    unsetenv("LSD_MAX_LOAD_BYTES");
}
