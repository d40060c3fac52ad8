#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "io/file.h"
#include "core/runtime.h"
#include "model/hf_cache.h"

void lsd_model_params_init(lsd_model_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->device = "cpu";
    p->dtype = LSD_F32;
    p->clip_skip = 1;
}

lsd_status lsdi_model_params_read(const lsd_model_params *in, lsd_model_params *out)
{
    lsd_model_params_init(out);
    if (!in)
        return LSD_OK;
    LSDI_TRY(lsdi_struct_read(LSD_STRUCT_MODEL_PARAMS, in, out, "model params"));
    if (!out->device)
        out->device = "cpu";
    if (out->dtype != LSD_F32 && out->dtype != LSD_F16 && out->dtype != LSD_BF16)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "model params: dtype %d is not LSD_F32, LSD_F16 or LSD_BF16",
                          (int)out->dtype);
    if (out->clip_skip <= 0)
        out->clip_skip = 1;
    if (strlen(out->device) >= 32 || lsdt_device_check(out->device) != 0)
        return lsdi_error(LSD_ERR_DEVICE, "model params: device \"%s\" is not available (%s)", out->device,
                          lsdt_last_error());
    if (out->dtype_policy < LSD_DTYPE_FALLBACK || out->dtype_policy > LSD_DTYPE_KEEP)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "model params: dtype_policy %d is not LSD_DTYPE_FALLBACK, "
                          "LSD_DTYPE_REFUSE or LSD_DTYPE_KEEP", out->dtype_policy);
    if (out->vae_decode_only != 0 && out->vae_decode_only != 1)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "model params: vae_decode_only %d is not 0 or 1",
                          out->vae_decode_only);
    if (out->dtype_policy != LSD_DTYPE_KEEP && !lsdi_dtype_is_fast(out->device, out->dtype)) {
        const char *why = lsdi_slow_dtype_reason(out->dtype);
        if (out->dtype_policy == LSD_DTYPE_REFUSE)
            return lsdi_error(LSD_ERR_UNSUPPORTED, "model params: dtype %s on \"%s\": %s", lsd_dtype_name(out->dtype),
                              out->device, why);
        lsdi_log(LSD_LOG_WARN, "dtype %s on \"%s\": %s; loading f32 instead", lsd_dtype_name(out->dtype),
                 out->device, why);
        out->dtype = LSD_F32;
    }
    return LSD_OK;
}

double lsdi_model_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

lsd_status lsdi_model_progress(const lsd_model_params *p, int step, int total, double t0)
{
    if (!p || !p->progress)
        return LSD_OK;
    lsd_progress pr = {sizeof pr, LSD_STAGE_LOAD, step, total, lsdi_model_clock() - t0};
    if (p->progress(&pr, p->progress_user))
        return lsdi_error(LSD_ERR_CANCELLED, "model load cancelled by the progress callback");
    return LSD_OK;
}

static lsd_status build(lsd_model *m, const char *dir, int vae_decode_only)
{
    lsdi_unet_config uc;
    lsdi_vae_config vc;
    lsdi_text_config tc;
    char *paths[4] = {lsdi_path_join(dir, "unet/config.json"), lsdi_path_join(dir, "vae/config.json"),
                      lsdi_path_join(dir, "text_encoder/config.json"), lsdi_path_join(dir, "tokenizer")};
    lsd_status st = LSD_OK;
    for (int i = 0; i < 4; i++)
        if (!paths[i])
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "config paths");
    if (st == LSD_OK)
        st = lsdi_unet_config_load(paths[0], &uc);
    if (st == LSD_OK)
        st = lsdi_vae_config_load(paths[1], &vc);
    if (st == LSD_OK)
        st = lsdi_text_config_load(paths[2], &tc);
    if (st == LSD_OK)
        st = lsdi_tokenizer_load(paths[3], &m->tokenizer);
    if (st == LSD_OK)
        st = lsdi_unet_new(&uc, &m->unet);
    if (st == LSD_OK)
        st = lsdi_vae_new(&vc, vae_decode_only, &m->vae);
    if (st == LSD_OK)
        st = lsdi_clip_text_new(&tc, &m->text);
    for (int i = 0; i < 4; i++)
        free(paths[i]);
    if (st == LSD_OK && uc.cross_attention_dim != tc.hidden_size)
        st = lsdi_error(LSD_ERR_FORMAT, "%s: UNet cross_attention_dim %d differs from the text encoder's hidden_size %d",
                        dir, uc.cross_attention_dim, tc.hidden_size);
    if (st == LSD_OK && uc.in_channels != vc.latent_channels)
        st = lsdi_error(LSD_ERR_FORMAT, "%s: UNet in_channels %d differs from the VAE's latent_channels %d", dir,
                        uc.in_channels, vc.latent_channels);
    if (st == LSD_OK && !(m->scheduler_config = lsdi_path_join(dir, "scheduler/scheduler_config.json")))
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "config paths");
    return st;
}

/* The last component of path (trailing slashes ignored), as os.path.basename of a normalised path. */
static void base_name(const char *path, char *out, size_t cap)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && path[start - 1] != '/')
        start--;
    snprintf(out, cap, "%.*s", (int)(n - start), path + start);
}

lsd_status lsdi_model_new(const char *config_dir, const lsd_model_params *p, lsd_model **out)
{
    *out = NULL;
    lsdi_runtime_init();
    lsd_model *m = calloc(1, sizeof *m);
    if (!m)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "model");
    lsdi_ref_init(&m->ref);
    m->dtype = p->dtype;
    m->tdtype = lsdi_dtype_to_shim(p->dtype);
    snprintf(m->device, sizeof m->device, "%s", p->device);
    m->clip_skip = p->clip_skip;
    base_name(config_dir, m->name, sizeof m->name);
    m->config_dir = strdup(config_dir);
    lsd_status st = m->config_dir ? build(m, config_dir, p->vae_decode_only)
                                  : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "model");
    if (st != LSD_OK) {
        lsd_model_free(m);
        return st;
    }
    *out = m;
    return LSD_OK;
}

LSDI_DEFINE_LAST_ERROR(model, lsd_model)

lsd_status lsdi_model_check_encoder(const lsd_model *m, const char *fn)
{
    if (!m->vae->decode_only)
        return LSD_OK;
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: needs the VAE encoder, which the model loaded with "
                      "vae_decode_only = 1 does not have (load it with 0)", fn);
}

lsd_model *lsdi_model_retain(lsd_model *m)
{
    lsdi_ref_retain(&m->ref);
    return m;
}

void lsd_model_free(lsd_model *m)
{
    if (!m || !lsdi_ref_release(&m->ref))
        return;
    lsdi_unet_free(m->unet);
    lsdi_vae_free(m->vae);
    lsdi_clip_text_free(m->text);
    lsdi_tokenizer_free(m->tokenizer);
    lsdi_embeddings_clear(&m->embeddings);
    free(m->scheduler_config);
    free(m->config_dir);
    free(m);
}

lsd_status lsdi_model_to_dtype(lsd_model *m, lsdt_dtype dt)
{
    lsdi_params *tables[3] = {&m->unet->params, &m->vae->params, &m->text->params};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < tables[k]->n; i++) {
            lsdt_tensor **slot = tables[k]->v[i].slot;
            lsdt_tensor *t = *slot ? lsdt_to_dtype(NULL, *slot, dt) : NULL;
            if (*slot && !t)
                return lsdi_error_prefix(lsdi_error_from_shim(lsdt_last_status()), "%s", tables[k]->v[i].name);
            lsdt_free(*slot);
            *slot = t;
        }
    m->tdtype = dt;
    return LSD_OK;
}

lsd_status lsd_model_load(const char *path, const lsd_model_params *params, lsd_model **out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_load: out is NULL");
    *out = NULL;
    if (!path || !*path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_load: path_or_hub_id is NULL or empty");
    lsd_model_params p;
    LSDI_TRY(lsdi_model_params_read(params, &p));
    struct stat sb;
    int exists = stat(path, &sb) == 0;
    lsd_status st;
    if (exists && S_ISDIR(sb.st_mode)) {
        st = lsdi_model_load_diffusers(path, &p, out);
    } else if (exists) {
        st = lsdi_model_load_single_file(path, &p, out);
    } else if (lsdi_looks_like_hub_id(path)) {
        char dir[4096];
        LSDI_TRY(lsdi_hf_cache_resolve(path, dir, sizeof dir));
        st = lsdi_model_load_diffusers(dir, &p, out);
    } else {
        return lsdi_error(LSD_ERR_NOT_FOUND, "%s: no such folder or file", path);
    }
    /* kohya's ss_sd_model_name: os.path.basename of an existing path, a hub id as given */
    if (st == LSD_OK && exists)
        base_name(path, (*out)->source_name, sizeof (*out)->source_name);
    else if (st == LSD_OK)
        snprintf((*out)->source_name, sizeof (*out)->source_name, "%s", path);
    return st;
}

static lsd_status model_get_info(const lsd_model *m, lsd_model_info *info)
{
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_get_info: model is NULL");
    LSDI_TRY(lsdi_struct_check_out(LSD_STRUCT_MODEL_INFO, info, "lsd_model_get_info"));
    lsd_model_info r;
    memset(&r, 0, sizeof r);
    r.unet_params = lsdi_params_count_elements(&m->unet->params);
    r.vae_params = lsdi_params_count_elements(&m->vae->params);
    r.text_encoder_params = lsdi_params_count_elements(&m->text->params);
    r.latent_channels = m->vae->cfg.latent_channels;
    r.vae_scale_factor = lsdi_vae_scale_factor(m->vae);
    r.context_dim = m->text->cfg.hidden_size;
    r.max_tokens = m->text->cfg.max_positions;
    r.scaling_factor = m->vae->cfg.scaling_factor;
    r.dtype = m->dtype;
    snprintf(r.device, sizeof r.device, "%s", m->device);
    snprintf(r.name, sizeof r.name, "%s", m->name);
    snprintf(r.hash, sizeof r.hash, "%s", m->hash);
    lsdi_struct_write(LSD_STRUCT_MODEL_INFO, info, &r);
    return LSD_OK;
}

lsd_status lsd_model_get_info(const lsd_model *m, lsd_model_info *info)
{
    return lsdi_model_record(m, model_get_info(m, info));
}

static lsd_status model_get_name(const lsd_model *m, const char **name)
{
    if (!m || !name)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_get_name: %s is NULL", m ? "name" : "model");
    *name = m->name;
    return LSD_OK;
}

lsd_status lsd_model_get_name(const lsd_model *m, const char **name)
{
    return lsdi_model_record(m, model_get_name(m, name));
}

static lsd_status model_tokenize(const lsd_model *m, const char *text, int64_t *ids_out, int max_ids, int *n_tokens_out)
{
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_tokenize: model is NULL");
    if (!text)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_tokenize: text is NULL");
    if (!ids_out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_tokenize: ids_out is NULL");
    int n = m->text->cfg.max_positions;
    if (max_ids < n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_tokenize: max_ids %d is less than max_tokens %d",
                          max_ids, n);
    return lsdi_tokenizer_encode(m->tokenizer, text, ids_out, n, n_tokens_out);
}

lsd_status lsd_model_tokenize(const lsd_model *m, const char *text, int64_t *ids_out, int max_ids, int *n_tokens_out)
{
    return lsdi_model_record(m, model_tokenize(m, text, ids_out, max_ids, n_tokens_out));
}

static lsd_status model_add_embedding(lsd_model *m, const char *token, const float *vectors, int n_vectors, int dim)
{
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_add_embedding: model is NULL");
    if (!token || !*token)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_add_embedding: token is NULL or empty");
    for (const char *c = token; *c; c++)
        if (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r' || *c == ',')
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                              "lsd_model_add_embedding: token '%s' holds a space or comma (one word is matched)", token);
    if (!vectors)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_add_embedding: '%s': vectors is NULL", token);
    int max = m->text->cfg.max_positions - 2;
    if (n_vectors < 1 || n_vectors > max)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_add_embedding: '%s' has %d vectors (1 to %d fit a chunk)",
                          token, n_vectors, max);
    if (dim != m->text->cfg.hidden_size)
        return lsdi_error(LSD_ERR_SHAPE_MISMATCH, "lsd_model_add_embedding: '%s' has vectors of %d, the text encoder's are %d",
                          token, dim, m->text->cfg.hidden_size);
    return lsdi_embeddings_add(&m->embeddings, token, vectors, n_vectors, dim);
}

lsd_status lsd_model_add_embedding(lsd_model *m, const char *token, const float *vectors, int n_vectors, int dim)
{
    return lsdi_model_record(m, model_add_embedding(m, token, vectors, n_vectors, dim));
}

/* ---- inference over host buffers ---------------------------------------------------------------- */

#define MAX_BATCH 4096
#define MAX_SIDE 16384

static lsdt_tensor *host_input(lsdt_scope *s, const lsd_model *m, const float *data, const int64_t *shape, int ndim)
{
    lsdt_tensor *t = lsdt_from_host(s, data, LSDT_F32, shape, ndim, m->tdtype, m->device);
    return ndim == 4 ? lsdt_channels_last(s, t) : t;
}

/* Runs the body's scope under no-grad and copies `out` (n floats) to dst; one exit for every failure. */
static lsd_status finish(lsdt_scope *s, lsdt_tensor *out, float *dst, size_t n, const char *fn)
{
    int rc = 0;
    if (out && lsdt_scope_status(s) == 0) {
        if ((size_t)lsdt_numel(out) != n)
            lsdt_scope_fail(s, LSD_ERR_INTERNAL, "output size differs from the expected size");
        else
            rc = lsdt_to_host(out, dst, LSDT_F32, n);
    }
    int st = lsdt_scope_end(s);
    lsdt_no_grad_end();
    if (st == 0 && rc == 0 && !out)
        return lsdi_error(LSD_ERR_INTERNAL, "%s: no output", fn);
    if (st || rc)
        return lsdi_error_prefix(lsdi_error_from_shim(st ? st : rc), "%s", fn);
    return LSD_OK;
}

static lsd_status begin(lsdt_scope **s, const char *fn)
{
    lsdt_no_grad_begin();
    *s = lsdt_scope_begin();
    if (!*s) {
        lsdt_no_grad_end();
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: scope", fn);
    }
    return LSD_OK;
}

/* An output buffer of the *_n forms holds cap floats; the 0.1 forms pass SIZE_MAX (the caller sized it). Checked
 * before any work, naming the buffer, its shape and both counts. */
static lsd_status room(const char *fn, const char *buffer, size_t cap, const int64_t *shape, int ndim)
{
    size_t need = 1;
    for (int i = 0; i < ndim; i++)
        need *= (size_t)shape[i];
    if (cap >= need)
        return LSD_OK;
    char dims[96];
    size_t at = 0;
    for (int i = 0; i < ndim; i++)
        at += (size_t)snprintf(dims + at, sizeof dims - at, "%s%lld", i ? ", " : "", (long long)shape[i]);
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s holds %zu floats; [%s] needs %zu", fn, buffer, cap, dims,
                      need);
}

static lsd_status model_encode_tokens(lsd_model *m, const int64_t *ids, int batch, int n_ids, int clip_skip,
                                      float *hidden_out, size_t hidden_cap)
{
    const char *fn = "lsd_model_encode_tokens";
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    if (!ids)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: ids is NULL", fn);
    if (!hidden_out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: hidden_out is NULL", fn);
    const lsdi_text_config *c = &m->text->cfg;
    if (batch < 1 || batch > MAX_BATCH)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: batch %d not in [1, %d]", fn, batch, MAX_BATCH);
    if (n_ids < 1 || n_ids > c->max_positions)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: n_ids %d not in [1, %d]", fn, n_ids, c->max_positions);
    if (clip_skip <= 0)
        clip_skip = m->clip_skip;
    if (clip_skip > c->num_layers)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: clip_skip %d exceeds the text encoder's %d layers", fn,
                          clip_skip, c->num_layers);
    int64_t hs[3] = {batch, n_ids, c->hidden_size};
    LSDI_TRY(room(fn, "hidden_out", hidden_cap, hs, 3));
    for (int64_t i = 0; i < (int64_t)batch * n_ids; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: ids[%lld] = %lld is outside the vocabulary [0, %d)", fn,
                              (long long)i, (long long)ids[i], c->vocab_size);
    lsdt_scope *s;
    LSDI_TRY(begin(&s, fn));
    int64_t shape[2] = {batch, n_ids};
    lsdt_tensor *t = lsdt_from_host(s, ids, LSDT_I64, shape, 2, LSDT_I64, m->device);
    lsdt_tensor *h = lsdi_clip_text_forward(s, m->text, t, clip_skip);
    return finish(s, h, hidden_out, (size_t)batch * n_ids * c->hidden_size, fn);
}

lsd_status lsd_model_encode_tokens(lsd_model *m, const int64_t *ids, int batch, int n_ids, int clip_skip,
                                   float *hidden_out)
{
    return lsdi_model_record(m, model_encode_tokens(m, ids, batch, n_ids, clip_skip, hidden_out, SIZE_MAX));
}

lsd_status lsd_model_encode_tokens_n(lsd_model *m, const int64_t *ids, int batch, int n_ids, int clip_skip,
                                     float *hidden_out, size_t hidden_cap)
{
    return lsdi_model_record(m, model_encode_tokens(m, ids, batch, n_ids, clip_skip, hidden_out, hidden_cap));
}

/* ids [batch, max_tokens] of the prompts, malloc'd. */
static lsd_status tokenize_batch(const lsd_model *m, const char *const *prompts, int batch, const char *fn,
                                 int64_t **out)
{
    *out = NULL;
    if (batch < 1 || batch > MAX_BATCH)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: batch %d not in [1, %d]", fn, batch, MAX_BATCH);
    int n = m->text->cfg.max_positions;
    int64_t *ids = malloc((size_t)batch * n * sizeof *ids);
    if (!ids)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: token ids", fn);
    lsd_status st = LSD_OK;
    for (int b = 0; b < batch && st == LSD_OK; b++) {
        if (!prompts[b])
            st = lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: prompts[%d] is NULL", fn, b);
        else
            st = lsd_model_tokenize(m, prompts[b], ids + (size_t)b * n, n, NULL);
    }
    if (st != LSD_OK)
        free(ids);
    else
        *out = ids;
    return st;
}

lsd_status lsdi_model_text_context(lsdt_scope *s, lsd_model *m, const char *const *captions, int batch,
                                   lsdt_tensor **out)
{
    int64_t *ids;
    *out = NULL;
    LSDI_TRY(tokenize_batch(m, captions, batch, "text encoder", &ids));
    int64_t shape[2] = {batch, m->text->cfg.max_positions};
    *out = lsdi_clip_text_forward(s, m->text, lsdt_from_host(s, ids, LSDT_I64, shape, 2, LSDT_I64, m->device),
                                  m->clip_skip);
    free(ids);
    return LSD_OK;
}

static lsd_status model_encode_text(lsd_model *m, const char *const *prompts, int batch, int clip_skip,
                                    float *hidden_out, size_t hidden_cap)
{
    const char *fn = "lsd_model_encode_text";
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    if (!prompts)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: prompts is NULL", fn);
    int64_t *ids;
    LSDI_TRY(tokenize_batch(m, prompts, batch, fn, &ids));
    lsd_status st = model_encode_tokens(m, ids, batch, m->text->cfg.max_positions, clip_skip, hidden_out, hidden_cap);
    free(ids);
    return st;
}

lsd_status lsd_model_encode_text(lsd_model *m, const char *const *prompts, int batch, int clip_skip,
                                 float *hidden_out)
{
    return lsdi_model_record(m, model_encode_text(m, prompts, batch, clip_skip, hidden_out, SIZE_MAX));
}

lsd_status lsd_model_encode_text_n(lsd_model *m, const char *const *prompts, int batch, int clip_skip,
                                   float *hidden_out, size_t hidden_cap)
{
    return lsdi_model_record(m, model_encode_text(m, prompts, batch, clip_skip, hidden_out, hidden_cap));
}

static lsd_status check_image_dims(const char *fn, int batch, int height, int width, int factor, const char *what)
{
    if (batch < 1 || batch > MAX_BATCH)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: batch %d not in [1, %d]", fn, batch, MAX_BATCH);
    if (height < 1 || height > MAX_SIDE || height % factor)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: height %d must be a multiple of %d (%s) in [1, %d]", fn,
                          height, factor, what, MAX_SIDE);
    if (width < 1 || width > MAX_SIDE || width % factor)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: width %d must be a multiple of %d (%s) in [1, %d]", fn,
                          width, factor, what, MAX_SIDE);
    return LSD_OK;
}

static lsd_status model_unet(lsd_model *m, const float *sample, int batch, int height, int width,
                             const float *timesteps, int n_timesteps, const float *context, int n_ctx, float *out,
                             size_t out_cap)
{
    const char *fn = "lsd_model_unet";
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    if (!sample || !timesteps || !context || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                          !sample ? "sample" : !timesteps ? "timesteps" : !context ? "context" : "out");
    const lsdi_unet_config *c = &m->unet->cfg;
    LSDI_TRY(check_image_dims(fn, batch, height, width, lsdi_unet_size_factor(m->unet), "the UNet's downsampling"));
    if (n_timesteps != 1 && n_timesteps != batch)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: n_timesteps %d must be 1 or batch (%d)", fn, n_timesteps,
                          batch);
    if (n_ctx < 1 || n_ctx > MAX_BATCH)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: n_ctx %d not in [1, %d]", fn, n_ctx, MAX_BATCH);
    int64_t os[4] = {batch, c->out_channels, height, width};
    LSDI_TRY(room(fn, "out", out_cap, os, 4));
    lsdt_scope *s;
    LSDI_TRY(begin(&s, fn));
    int64_t xs[4] = {batch, c->in_channels, height, width}, ts[1] = {n_timesteps}, tb[1] = {batch};
    int64_t cs[3] = {batch, n_ctx, c->cross_attention_dim};
    lsdt_tensor *x = host_input(s, m, sample, xs, 4);
    lsdt_tensor *t = lsdt_from_host(s, timesteps, LSDT_F32, ts, 1, LSDT_F32, m->device);
    if (n_timesteps != batch)
        t = lsdt_expand(s, t, tb, 1);
    lsdt_tensor *ctx = host_input(s, m, context, cs, 3);
    lsdt_tensor *y = lsdi_unet_forward(s, m->unet, x, t, ctx);
    return finish(s, y, out, (size_t)batch * c->out_channels * height * width, fn);
}

lsd_status lsd_model_unet(lsd_model *m, const float *sample, int batch, int height, int width,
                          const float *timesteps, int n_timesteps, const float *context, int n_ctx, float *out)
{
    return lsdi_model_record(m, model_unet(m, sample, batch, height, width, timesteps, n_timesteps, context, n_ctx,
                                           out, SIZE_MAX));
}

lsd_status lsd_model_unet_n(lsd_model *m, const float *sample, int batch, int height, int width,
                            const float *timesteps, int n_timesteps, const float *context, int n_ctx, float *out,
                            size_t out_cap)
{
    return lsdi_model_record(m, model_unet(m, sample, batch, height, width, timesteps, n_timesteps, context, n_ctx,
                                           out, out_cap));
}

static lsd_status model_vae_encode(lsd_model *m, const float *image, int batch, int height, int width, float *mean_out,
                                   float *logvar_out, size_t out_cap)
{
    const char *fn = "lsd_model_vae_encode";
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    if (!image || !mean_out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, !image ? "image" : "mean_out");
    LSDI_TRY(lsdi_model_check_encoder(m, fn));
    const lsdi_vae_config *c = &m->vae->cfg;
    int f = lsdi_vae_scale_factor(m->vae);
    LSDI_TRY(check_image_dims(fn, batch, height, width, f, "the VAE scale factor"));
    size_t n = (size_t)batch * c->latent_channels * (height / f) * (width / f);
    int64_t ms[4] = {batch, c->latent_channels, height / f, width / f};
    LSDI_TRY(room(fn, logvar_out ? "mean_out (and logvar_out)" : "mean_out", out_cap, ms, 4));
    lsdt_scope *s;
    LSDI_TRY(begin(&s, fn));
    int64_t xs[4] = {batch, c->in_channels, height, width};
    lsdt_tensor *mean = NULL, *logvar = NULL;
    lsdi_vae_encode(s, m->vae, host_input(s, m, image, xs, 4), &mean, logvar_out ? &logvar : NULL);
    if (logvar_out && logvar && lsdt_scope_status(s) == 0) {
        int rc = lsdt_to_host(logvar, logvar_out, LSDT_F32, n);
        if (rc)
            lsdt_scope_fail(s, rc, lsdt_last_error());
    }
    return finish(s, mean, mean_out, n, fn);
}

lsd_status lsd_model_vae_encode(lsd_model *m, const float *image, int batch, int height, int width, float *mean_out,
                                float *logvar_out)
{
    return lsdi_model_record(m, model_vae_encode(m, image, batch, height, width, mean_out, logvar_out, SIZE_MAX));
}

lsd_status lsd_model_vae_encode_n(lsd_model *m, const float *image, int batch, int height, int width, float *mean_out,
                                  float *logvar_out, size_t out_cap)
{
    return lsdi_model_record(m, model_vae_encode(m, image, batch, height, width, mean_out, logvar_out, out_cap));
}

static lsd_status model_vae_decode(lsd_model *m, const float *latents, int batch, int height, int width,
                                   float *image_out, size_t image_cap)
{
    const char *fn = "lsd_model_vae_decode";
    if (!m)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: model is NULL", fn);
    if (!latents || !image_out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, !latents ? "latents" : "image_out");
    const lsdi_vae_config *c = &m->vae->cfg;
    int f = lsdi_vae_scale_factor(m->vae);
    LSDI_TRY(check_image_dims(fn, batch, height, width, 1, "latent pixels"));
    if ((int64_t)height * f > MAX_SIDE || (int64_t)width * f > MAX_SIDE)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %dx%d latents decode to more than %d pixels a side", fn,
                          height, width, MAX_SIDE);
    int64_t is[4] = {batch, c->out_channels, (int64_t)height * f, (int64_t)width * f};
    LSDI_TRY(room(fn, "image_out", image_cap, is, 4));
    lsdt_scope *s;
    LSDI_TRY(begin(&s, fn));
    int64_t xs[4] = {batch, c->latent_channels, height, width};
    lsdt_tensor *y = lsdi_vae_decode(s, m->vae, host_input(s, m, latents, xs, 4));
    return finish(s, y, image_out, (size_t)batch * c->out_channels * height * f * width * f, fn);
}

lsd_status lsd_model_vae_decode(lsd_model *m, const float *latents, int batch, int height, int width,
                                float *image_out)
{
    return lsdi_model_record(m, model_vae_decode(m, latents, batch, height, width, image_out, SIZE_MAX));
}

lsd_status lsd_model_vae_decode_n(lsd_model *m, const float *latents, int batch, int height, int width,
                                  float *image_out, size_t image_cap)
{
    return lsdi_model_record(m, model_vae_decode(m, latents, batch, height, width, image_out, image_cap));
}
