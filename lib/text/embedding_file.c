/* The layouts, as A1111 (modules/textual_inversion/textual_inversion.py) and diffusers' load_textual_inversion
 * accept them for SD 1.x:
 *   pickle {"string_to_param": {"*": [n, dim]}, "name": ..., ...}   A1111's own .pt (one term only)
 *   pickle or safetensors with one tensor [dim] or [n, dim]          diffusers' learned_embeds.{bin,safetensors}
 *                                                                     (key: the token), kohya's {"emb_params": ...}
 * A safetensors file is a flat table, so A1111's rule for it is "one tensor, whatever its key"; SDXL's pair
 * (clip_l + clip_g) is recognised and refused by name. Embeddings stored inside PNG images are not read. */
#include "text/embedding_file.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/ckpt.h"
#include "io/file.h"
#include "io/safetensors.h"

/* An embedding is a few KB (75 vectors of 768 fp32 floats: 230 KB); a checkpoint given by mistake stops here. */
#define EMBEDDING_FILE_MAX ((size_t)64 << 20)

typedef struct table {
    size_t (*count)(const void *src);
    const lsdi_st_tensor *(*at)(const void *src, size_t i);
    const lsdi_st_tensor *(*find)(const void *src, const char *name);
    const void *src;
} table;

static size_t st_count(const void *f) { return lsdi_st_count(f); }
static const lsdi_st_tensor *st_at(const void *f, size_t i) { return lsdi_st_at(f, i); }
static const lsdi_st_tensor *st_find(const void *f, const char *n) { return lsdi_st_find(f, n); }
static size_t ck_count(const void *c) { return lsdi_ckpt_count(c); }
static const lsdi_st_tensor *ck_at(const void *c, size_t i) { return lsdi_ckpt_at(c, i); }
static const lsdi_st_tensor *ck_find(const void *c, const char *n) { return lsdi_ckpt_find(c, n); }

/* Keys that hold an embedding without naming its token. */
static int generic_key(const char *key)
{
    return !strcmp(key, "emb_params") || !strcmp(key, "*") || !strncmp(key, "string_to_param", 15);
}

static lsd_status take_tensor(const lsdi_st_tensor *t, const char *label, lsdi_embedding_file *out)
{
    if (t->dtype != LSDI_ST_F32 && t->dtype != LSDI_ST_F16 && t->dtype != LSDI_ST_BF16 && t->dtype != LSDI_ST_F64)
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' is %s; an embedding is F32, F16 or BF16", label, t->name,
                          lsdi_st_dtype_name(t->dtype));
    int64_t n = t->ndim == 2 ? t->shape[0] : 1, dim = t->ndim >= 1 ? t->shape[t->ndim - 1] : 0;
    if (t->ndim < 1 || t->ndim > 2 || n < 1 || dim < 1 || n > INT_MAX || dim > INT_MAX) {
        char shape[128] = "";
        size_t used = 0;
        for (int d = 0; d < t->ndim && used < sizeof shape; d++)
            used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%lld", d ? ", " : "",
                                     (long long)t->shape[d]);
        return lsdi_error(LSD_ERR_FORMAT, "%s: tensor '%s' has shape [%s]; an embedding is [dim] or [vectors, dim]",
                          label, t->name, shape);
    }
    out->vectors = malloc((size_t)t->numel * sizeof *out->vectors);
    if (!out->vectors)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: tensor '%s'", label, t->name);
    lsdi_st_to_f32(t, out->vectors);
    out->n_vectors = (int)n;
    out->dim = (int)dim;
    return LSD_OK;
}

static lsd_status set_token(lsdi_embedding_file *out, const char *token, const char *label)
{
    if (!token)
        return LSD_OK;
    out->token = strdup(token);
    return out->token ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", label);
}

/* The one-tensor rule shared by both containers; where is "" or " in 'string_to_param'" for messages. */
static lsd_status read_table(const table *tb, const char *label, const char *where, lsdi_embedding_file *out)
{
    size_t n = tb->count(tb->src);
    if (tb->find(tb->src, "clip_l") && tb->find(tb->src, "clip_g"))
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: an SDXL embedding (tensors 'clip_l' and 'clip_g'); only SD 1.x "
                          "embeddings are supported", label);
    if (n == 0)
        return lsdi_error(LSD_ERR_FORMAT, "%s: no tensor%s: neither an A1111 embedding ('string_to_param') nor a "
                          "diffusers one ({token: tensor})", label, where);
    if (n > 1)
        return lsdi_error(LSD_ERR_FORMAT, "%s: %zu tensors%s ('%s', '%s'%s); an embedding file holds one", label, n,
                          where, tb->at(tb->src, 0)->name, tb->at(tb->src, 1)->name, n > 2 ? ", ..." : "");
    return take_tensor(tb->at(tb->src, 0), label, out);
}

static const lsdi_pk_value *a1111_params(const lsdi_pk_value *root)
{
    const lsdi_pk_value *v = lsdi_pk_dict_get(root, "string_to_param");
    return v && v->kind == LSDI_PK_DICT ? v : NULL;
}

static lsd_status read_pickle(const void *data, size_t size, const char *label, lsdi_embedding_file *out)
{
    lsdi_ckpt *c;
    LSDI_TRY(lsdi_ckpt_open_memory_at(data, size, label, a1111_params, &c));
    const lsdi_pk_value *root = lsdi_ckpt_root(c);
    const lsdi_pk_value *sp = lsdi_pk_dict_get(root, "string_to_param");
    lsd_status st = LSD_OK;
    if (sp && sp->kind != LSDI_PK_DICT)
        st = lsdi_error(LSD_ERR_FORMAT, "%s: 'string_to_param' is a %s, not a dict (an nn.ParameterDict from torch "
                        "1.11 is not read: re-save the file)", label, lsdi_pk_kind_name(sp->kind));
    table tb = {ck_count, ck_at, ck_find, c};
    if (st == LSD_OK)
        st = read_table(&tb, label, sp ? " in 'string_to_param'" : "", out);
    if (st == LSD_OK && sp) {
        const lsdi_pk_value *name = lsdi_pk_dict_get(root, "name");
        if (name && name->kind == LSDI_PK_STR && name->u.str.len && strlen(name->u.str.s) == name->u.str.len)
            st = set_token(out, name->u.str.s, label);
    } else if (st == LSD_OK && !generic_key(lsdi_ckpt_at(c, 0)->name)) {
        st = set_token(out, lsdi_ckpt_at(c, 0)->name, label);
    }
    lsdi_ckpt_close(c);
    return st;
}

static lsd_status read_safetensors(const void *data, size_t size, const char *label, lsdi_embedding_file *out)
{
    lsdi_st_file *f;
    LSDI_TRY(lsdi_st_open_memory(data, size, label, &f));
    table tb = {st_count, st_at, st_find, f};
    lsd_status st = read_table(&tb, label, "", out);
    if (st == LSD_OK && !generic_key(lsdi_st_at(f, 0)->name))
        st = set_token(out, lsdi_st_at(f, 0)->name, label);
    lsdi_st_close(f);
    return st;
}

lsd_status lsdi_embedding_file_read_memory(const void *data, size_t size, const char *label,
                                           lsdi_embedding_file *out)
{
    *out = (lsdi_embedding_file){0};
    const unsigned char *b = data;
    /* A zip (torch.save >= 1.6) or a bare pickle (older torch.save, which the checkpoint reader names). */
    int pickle = size >= 2 && ((b[0] == 'P' && b[1] == 'K') || (b[0] == 0x80 && b[1] <= 5));
    lsd_status st = pickle ? read_pickle(data, size, label, out) : read_safetensors(data, size, label, out);
    if (st != LSD_OK)
        lsdi_embedding_file_clear(out);
    return st;
}

lsd_status lsdi_embedding_file_read(const char *path, lsdi_embedding_file *out)
{
    *out = (lsdi_embedding_file){0};
    char *data;
    size_t size;
    LSDI_TRY(lsdi_read_file(path, EMBEDDING_FILE_MAX, &data, &size));
    lsd_status st = lsdi_embedding_file_read_memory(data, size, path, out);
    free(data);
    return st;
}

void lsdi_embedding_file_clear(lsdi_embedding_file *f)
{
    free(f->token);
    free(f->vectors);
    *f = (lsdi_embedding_file){0};
}
