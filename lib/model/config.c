#include "model/config.h"

#include <string.h>

#include "core/error.h"
#include "io/json.h"

/* Reads key as an int in [lo, hi]; absent keys keep *v (the default) unless required. */
/* Range first: casting an out-of-range double to int is undefined. */
static int is_int_in(const cJSON *x, int lo, int hi)
{
    return cJSON_IsNumber(x) && x->valuedouble >= lo && x->valuedouble <= hi &&
           x->valuedouble == (double)(int)x->valuedouble;
}

static lsd_status get_int(const char *path, const cJSON *j, const char *key, int *v, int lo, int hi, int required)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!x || cJSON_IsNull(x)) {
        if (required)
            return lsdi_error(LSD_ERR_FORMAT, "%s: missing key \"%s\"", path, key);
        return LSD_OK;
    }
    if (cJSON_IsBool(x)) { /* diffusers configs spell some flags as booleans; they obey the same range */
        if (cJSON_IsTrue(x) < lo || cJSON_IsTrue(x) > hi)
            return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\" must be an integer in [%d, %d]", path, key, lo, hi);
        *v = cJSON_IsTrue(x);
        return LSD_OK;
    }
    if (!is_int_in(x, lo, hi))
        return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\" must be an integer in [%d, %d]", path, key, lo, hi);
    *v = (int)x->valuedouble;
    return LSD_OK;
}

static lsd_status get_float(const char *path, const cJSON *j, const char *key, float *v)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!x || cJSON_IsNull(x))
        return LSD_OK;
    if (!cJSON_IsNumber(x))
        return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\" must be a number", path, key);
    *v = (float)x->valuedouble;
    return LSD_OK;
}

/* An int list, or a single int repeated n times (diffusers allows both for per-block settings). */
static lsd_status get_int_list(const char *path, const cJSON *j, const char *key, int *v, int *n, int lo, int hi)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!x || cJSON_IsNull(x))
        return LSD_OK;
    if (cJSON_IsNumber(x)) {
        int one = 0;
        LSDI_TRY(get_int(path, j, key, &one, lo, hi, 1));
        for (int i = 0; i < LSDI_MAX_BLOCKS; i++)
            v[i] = one;
        return LSD_OK;
    }
    if (!cJSON_IsArray(x))
        return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\" must be a list of integers", path, key);
    int count = cJSON_GetArraySize(x);
    if (count < 1 || count > LSDI_MAX_BLOCKS || (*n && count != *n))
        return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\" has %d entries, expected %d (1..%d)", path, key, count,
                          *n ? *n : count, LSDI_MAX_BLOCKS);
    for (int i = 0; i < count; i++) {
        const cJSON *e = cJSON_GetArrayItem(x, i);
        if (!is_int_in(e, lo, hi))
            return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\"[%d] must be an integer in [%d, %d]", path, key, i, lo, hi);
        v[i] = (int)e->valuedouble;
    }
    *n = count;
    return LSD_OK;
}

/* Block type lists: flags[i] = 1 for attn_type, 0 for plain_type, anything else unsupported. */
static lsd_status get_block_types(const char *path, const cJSON *j, const char *key, int n, int *flags,
                                  const char *attn_type, const char *plain_type)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!x)
        return lsdi_error(LSD_ERR_FORMAT, "%s: missing key \"%s\"", path, key);
    if (!cJSON_IsArray(x) || cJSON_GetArraySize(x) != n)
        return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\" must list %d block types", path, key, n);
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(x, i);
        if (!cJSON_IsString(e))
            return lsdi_error(LSD_ERR_FORMAT, "%s: \"%s\"[%d] must be a string", path, key, i);
        if (attn_type && !strcmp(e->valuestring, attn_type))
            flags[i] = 1;
        else if (!strcmp(e->valuestring, plain_type))
            flags[i] = 0;
        else
            return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: block type \"%s\" in \"%s\" is not supported", path,
                              e->valuestring, key);
    }
    return LSD_OK;
}

static lsd_status check_groups(const char *path, const int *ch, int n, int groups)
{
    for (int i = 0; i < n; i++)
        if (ch[i] % groups)
            return lsdi_error(LSD_ERR_FORMAT, "%s: block_out_channels[%d] = %d is not a multiple of norm_num_groups %d",
                              path, i, ch[i], groups);
    return LSD_OK;
}

static lsd_status parse_unet(const char *path, const cJSON *j, lsdi_unet_config *c)
{
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 4;
    c->layers_per_block = 2;
    c->transformer_layers = 1;
    c->cross_attention_dim = 768;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->downsample_padding = 1;
    c->mid_block_scale_factor = 1;
    c->mid_attn = 1;
    c->sample_size = 64;
    for (int i = 0; i < LSDI_MAX_BLOCKS; i++)
        c->heads[i] = 8;
    LSDI_TRY(get_int(path, j, "in_channels", &c->in_channels, 1, 64, 0));
    LSDI_TRY(get_int(path, j, "out_channels", &c->out_channels, 1, 64, 0));
    LSDI_TRY(get_int_list(path, j, "block_out_channels", c->block_out_channels, &c->n_blocks, 1, 16384));
    if (!c->n_blocks)
        return lsdi_error(LSD_ERR_FORMAT, "%s: missing key \"block_out_channels\"", path);
    LSDI_TRY(get_int(path, j, "layers_per_block", &c->layers_per_block, 1, 16, 0));
    int tl[LSDI_MAX_BLOCKS] = {1, 1, 1, 1, 1, 1, 1, 1}, n_tl = c->n_blocks;
    LSDI_TRY(get_int_list(path, j, "transformer_layers_per_block", tl, &n_tl, 1, 1));
    LSDI_TRY(get_int(path, j, "cross_attention_dim", &c->cross_attention_dim, 1, 16384, 0));
    LSDI_TRY(get_int(path, j, "norm_num_groups", &c->norm_num_groups, 1, 1024, 0));
    LSDI_TRY(get_float(path, j, "norm_eps", &c->norm_eps));
    LSDI_TRY(get_int(path, j, "flip_sin_to_cos", &c->flip_sin_to_cos, 0, 1, 0));
    LSDI_TRY(get_float(path, j, "freq_shift", &c->freq_shift));
    LSDI_TRY(get_int(path, j, "downsample_padding", &c->downsample_padding, 0, 8, 0));
    LSDI_TRY(get_float(path, j, "mid_block_scale_factor", &c->mid_block_scale_factor));
    LSDI_TRY(get_int(path, j, "use_linear_projection", &c->use_linear_projection, 0, 1, 0));
    LSDI_TRY(get_int(path, j, "upcast_attention", &c->upcast_attention, 0, 1, 0));
    LSDI_TRY(get_int(path, j, "sample_size", &c->sample_size, 1, 65536, 0));
    /* SD 1.x configs name the head count attention_head_dim (diffusers' historical naming); num_attention_heads,
     * when present, is the same thing spelled correctly. */
    int n_heads = c->n_blocks;
    const char *heads_key = cJSON_GetObjectItemCaseSensitive(j, "num_attention_heads") &&
                                    !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "num_attention_heads"))
                                ? "num_attention_heads"
                                : "attention_head_dim";
    LSDI_TRY(get_int_list(path, j, heads_key, c->heads, &n_heads, 1, 1024));
    LSDI_TRY(get_block_types(path, j, "down_block_types", c->n_blocks, c->down_attn, "CrossAttnDownBlock2D",
                             "DownBlock2D"));
    LSDI_TRY(get_block_types(path, j, "up_block_types", c->n_blocks, c->up_attn, "CrossAttnUpBlock2D", "UpBlock2D"));
    const cJSON *mid = cJSON_GetObjectItemCaseSensitive(j, "mid_block_type");
    if (mid && cJSON_IsString(mid) && strcmp(mid->valuestring, "UNetMidBlock2DCrossAttn"))
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: mid_block_type \"%s\" is not supported", path, mid->valuestring);
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "addition_embed_type");
    if (cls && cJSON_IsString(cls))
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: addition_embed_type \"%s\" (SDXL) is not supported", path,
                          cls->valuestring);
    LSDI_TRY(check_groups(path, c->block_out_channels, c->n_blocks, c->norm_num_groups));
    for (int i = 0; i < c->n_blocks; i++)
        if (c->block_out_channels[i] % c->heads[i])
            return lsdi_error(LSD_ERR_FORMAT, "%s: block_out_channels[%d] = %d is not divisible by %d heads", path, i,
                              c->block_out_channels[i], c->heads[i]);
    return LSD_OK;
}

static lsd_status parse_vae(const char *path, const cJSON *j, lsdi_vae_config *c)
{
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 3;
    c->latent_channels = 4;
    c->layers_per_block = 1;
    c->norm_num_groups = 32;
    c->scaling_factor = 0.18215f;
    c->sample_size = 512;
    LSDI_TRY(get_int(path, j, "in_channels", &c->in_channels, 1, 64, 0));
    LSDI_TRY(get_int(path, j, "out_channels", &c->out_channels, 1, 64, 0));
    LSDI_TRY(get_int(path, j, "latent_channels", &c->latent_channels, 1, 64, 0));
    LSDI_TRY(get_int_list(path, j, "block_out_channels", c->block_out_channels, &c->n_blocks, 1, 16384));
    if (!c->n_blocks)
        return lsdi_error(LSD_ERR_FORMAT, "%s: missing key \"block_out_channels\"", path);
    LSDI_TRY(get_int(path, j, "layers_per_block", &c->layers_per_block, 1, 16, 0));
    LSDI_TRY(get_int(path, j, "norm_num_groups", &c->norm_num_groups, 1, 1024, 0));
    LSDI_TRY(get_float(path, j, "scaling_factor", &c->scaling_factor));
    LSDI_TRY(get_int(path, j, "sample_size", &c->sample_size, 1, 65536, 0));
    int flags[LSDI_MAX_BLOCKS];
    LSDI_TRY(get_block_types(path, j, "down_block_types", c->n_blocks, flags, NULL, "DownEncoderBlock2D"));
    LSDI_TRY(get_block_types(path, j, "up_block_types", c->n_blocks, flags, NULL, "UpDecoderBlock2D"));
    return check_groups(path, c->block_out_channels, c->n_blocks, c->norm_num_groups);
}

static lsd_status parse_text(const char *path, const cJSON *j, lsdi_text_config *c)
{
    memset(c, 0, sizeof *c);
    c->vocab_size = 49408;
    c->max_positions = 77;
    c->layer_norm_eps = 1e-5f;
    c->quick_gelu = 1;
    LSDI_TRY(get_int(path, j, "vocab_size", &c->vocab_size, 1, 1 << 24, 0));
    LSDI_TRY(get_int(path, j, "hidden_size", &c->hidden_size, 1, 16384, 1));
    LSDI_TRY(get_int(path, j, "intermediate_size", &c->intermediate_size, 1, 65536, 1));
    LSDI_TRY(get_int(path, j, "num_hidden_layers", &c->num_layers, 1, 256, 1));
    LSDI_TRY(get_int(path, j, "num_attention_heads", &c->num_heads, 1, 1024, 1));
    LSDI_TRY(get_int(path, j, "max_position_embeddings", &c->max_positions, 1, 4096, 0));
    LSDI_TRY(get_float(path, j, "layer_norm_eps", &c->layer_norm_eps));
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (act && cJSON_IsString(act)) {
        if (!strcmp(act->valuestring, "quick_gelu"))
            c->quick_gelu = 1;
        else if (!strcmp(act->valuestring, "gelu"))
            c->quick_gelu = 0;
        else
            return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported", path, act->valuestring);
    }
    if (c->hidden_size % c->num_heads)
        return lsdi_error(LSD_ERR_FORMAT, "%s: hidden_size %d is not divisible by num_attention_heads %d", path,
                          c->hidden_size, c->num_heads);
    return LSD_OK;
}

/* Each network gets a loader from a path and a parser from memory (the fuzzers' entry point). */
#define DEFINE_LOADERS(load_fn, parse_fn, type, parse)                                      \
    lsd_status load_fn(const char *path, type *c)                                           \
    {                                                                                       \
        cJSON *j;                                                                           \
        LSDI_TRY(lsdi_json_load(path, &j));                                                 \
        lsd_status st = parse(path, j, c);                                                  \
        cJSON_Delete(j);                                                                    \
        return st;                                                                          \
    }                                                                                       \
    lsd_status parse_fn(const char *text, size_t len, const char *name, type *c)            \
    {                                                                                       \
        cJSON *j = cJSON_ParseWithLength(text, len);                                        \
        if (!j || !cJSON_IsObject(j)) {                                                     \
            cJSON_Delete(j);                                                                \
            return lsdi_error(LSD_ERR_FORMAT, "%s: not a JSON object", name);               \
        }                                                                                   \
        lsd_status st = parse(name, j, c);                                                  \
        cJSON_Delete(j);                                                                    \
        return st;                                                                          \
    }

DEFINE_LOADERS(lsdi_unet_config_load, lsdi_unet_config_parse, lsdi_unet_config, parse_unet)
DEFINE_LOADERS(lsdi_vae_config_load, lsdi_vae_config_parse, lsdi_vae_config, parse_vae)
DEFINE_LOADERS(lsdi_text_config_load, lsdi_text_config_parse, lsdi_text_config, parse_text)
