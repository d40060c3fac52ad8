#include "model/keymap.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define KM_NAME_MAX 192

/* Names are pool offsets while the pool may still move. */
typedef struct raw_entry {
    lsdi_km_part part;
    size_t diffusers, original;
    int reshape_1x1, buffer;
} raw_entry;

struct lsdi_keymap {
    raw_entry *raw;
    lsdi_km_entry *entries;
    size_t n, cap;
    const lsdi_km_entry **by_diffusers, **by_original;
    char *pool; /* every name, NUL-terminated */
    size_t pool_len, pool_cap;
    int failed;
};

static const char *const prefixes[] = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."};

const char *lsdi_keymap_prefix(lsdi_km_part part)
{
    return prefixes[part];
}

static size_t pool_add(lsdi_keymap *km, const char *s)
{
    size_t len = strlen(s) + 1;
    if (km->pool_len + len > km->pool_cap) {
        size_t cap = km->pool_cap ? km->pool_cap * 2 : 16384;
        while (cap < km->pool_len + len)
            cap *= 2;
        char *p = realloc(km->pool, cap);
        if (!p) {
            km->failed = 1;
            return 0;
        }
        km->pool = p;
        km->pool_cap = cap;
    }
    memcpy(km->pool + km->pool_len, s, len);
    km->pool_len += len;
    return km->pool_len - len;
}

typedef struct kb {
    lsdi_keymap *km;
    lsdi_km_part part;
} kb;

static void add(kb *b, const char *d, const char *o, int reshape, int buffer)
{
    lsdi_keymap *km = b->km;
    if (km->failed)
        return;
    if (km->n == km->cap) {
        size_t cap = km->cap ? km->cap * 2 : 1024;
        raw_entry *e = realloc(km->raw, cap * sizeof(*e));
        if (!e) {
            km->failed = 1;
            return;
        }
        km->raw = e;
        km->cap = cap;
    }
    char full[KM_NAME_MAX + 64];
    snprintf(full, sizeof(full), "%s%s", prefixes[b->part], o);
    size_t doff = pool_add(km, d), ooff = pool_add(km, full);
    km->raw[km->n++] = (raw_entry){b->part, doff, ooff, reshape, buffer};
}

LSDI_PRINTF(3, 4)
static void fmt(char *dst, size_t n, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    vsnprintf(dst, n, f, ap);
    va_end(ap);
}

/* Module d (diffusers) = module o (original), with the given parameter suffixes. */
static void mod(kb *b, const char *d, const char *o, const char *suffixes)
{
    char dn[KM_NAME_MAX], on[KM_NAME_MAX], sfx[32];
    const char *s = suffixes;
    while (*s) {
        size_t len = strcspn(s, ",");
        fmt(sfx, sizeof(sfx), "%.*s", (int)len, s);
        fmt(dn, sizeof(dn), "%s.%s", d, sfx);
        fmt(on, sizeof(on), "%s.%s", o, sfx);
        add(b, dn, on, 0, 0);
        s += len + (s[len] == ',');
    }
}

static void wb(kb *b, const char *d, const char *o)
{
    mod(b, d, o, "weight,bias");
}

static void sub(kb *b, const char *dpre, const char *opre, const char *d, const char *o, const char *suffixes)
{
    char dn[KM_NAME_MAX], on[KM_NAME_MAX];
    fmt(dn, sizeof(dn), "%s.%s", dpre, d);
    fmt(on, sizeof(on), "%s.%s", opre, o);
    mod(b, dn, on, suffixes);
}

static void unet_resnet(kb *b, const char *d, const char *o, int in_ch, int out_ch)
{
    static const char *const names[][2] = {{"norm1", "in_layers.0"},   {"conv1", "in_layers.2"},
                                           {"time_emb_proj", "emb_layers.1"}, {"norm2", "out_layers.0"},
                                           {"conv2", "out_layers.3"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        sub(b, d, o, names[i][0], names[i][1], "weight,bias");
    if (in_ch != out_ch)
        sub(b, d, o, "conv_shortcut", "skip_connection", "weight,bias");
}

/* Transformer2DModel: the same names on both sides. */
static void unet_transformer(kb *b, const char *d, const char *o, int layers)
{
    sub(b, d, o, "norm", "norm", "weight,bias");
    sub(b, d, o, "proj_in", "proj_in", "weight,bias");
    for (int t = 0; t < layers; t++) {
        char dt[KM_NAME_MAX], ot[KM_NAME_MAX];
        fmt(dt, sizeof(dt), "%s.transformer_blocks.%d", d, t);
        fmt(ot, sizeof(ot), "%s.transformer_blocks.%d", o, t);
        static const char *const parts[][2] = {
            {"norm1", "weight,bias"},        {"norm2", "weight,bias"},      {"norm3", "weight,bias"},
            {"attn1.to_q", "weight"},        {"attn1.to_k", "weight"},      {"attn1.to_v", "weight"},
            {"attn1.to_out.0", "weight,bias"}, {"attn2.to_q", "weight"},    {"attn2.to_k", "weight"},
            {"attn2.to_v", "weight"},        {"attn2.to_out.0", "weight,bias"}, {"ff.net.0.proj", "weight,bias"},
            {"ff.net.2", "weight,bias"}};
        for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
            sub(b, dt, ot, parts[i][0], parts[i][0], parts[i][1]);
    }
    sub(b, d, o, "proj_out", "proj_out", "weight,bias");
}

static void build_unet(lsdi_keymap *km, const lsdi_unet_config *c)
{
    kb b = {km, LSDI_KM_UNET};
    const int N = c->n_blocks, L = c->layers_per_block, B = L + 1, *ch = c->block_out_channels;
    char d[KM_NAME_MAX], o[KM_NAME_MAX];
    wb(&b, "conv_in", "input_blocks.0.0");
    wb(&b, "time_embedding.linear_1", "time_embed.0");
    wb(&b, "time_embedding.linear_2", "time_embed.2");
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < L; j++) {
            int in_ch = j ? ch[i] : ch[i ? i - 1 : 0];
            fmt(d, sizeof(d), "down_blocks.%d.resnets.%d", i, j);
            fmt(o, sizeof(o), "input_blocks.%d.0", 1 + i * B + j);
            unet_resnet(&b, d, o, in_ch, ch[i]);
            if (c->down_attn[i]) {
                fmt(d, sizeof(d), "down_blocks.%d.attentions.%d", i, j);
                fmt(o, sizeof(o), "input_blocks.%d.1", 1 + i * B + j);
                unet_transformer(&b, d, o, c->transformer_layers);
            }
        }
        if (i < N - 1) {
            fmt(d, sizeof(d), "down_blocks.%d.downsamplers.0.conv", i);
            fmt(o, sizeof(o), "input_blocks.%d.0.op", (i + 1) * B);
            wb(&b, d, o);
        }
    }
    unet_resnet(&b, "mid_block.resnets.0", "middle_block.0", ch[N - 1], ch[N - 1]);
    unet_transformer(&b, "mid_block.attentions.0", "middle_block.1", c->transformer_layers);
    unet_resnet(&b, "mid_block.resnets.1", "middle_block.2", ch[N - 1], ch[N - 1]);
    /* Up block i works at level N-1-i and takes the skip connections of that level's down block. */
    for (int i = 0; i < N; i++) {
        int out_ch = ch[N - 1 - i], prev_ch = ch[N - 1 - (i ? i - 1 : 0)];
        int in_ch = ch[N - 1 - (i + 1 < N ? i + 1 : N - 1)];
        for (int j = 0; j <= L; j++) {
            int res_in = (j ? out_ch : prev_ch) + (j == L ? in_ch : out_ch);
            fmt(d, sizeof(d), "up_blocks.%d.resnets.%d", i, j);
            fmt(o, sizeof(o), "output_blocks.%d.0", i * B + j);
            unet_resnet(&b, d, o, res_in, out_ch);
            if (c->up_attn[i]) {
                fmt(d, sizeof(d), "up_blocks.%d.attentions.%d", i, j);
                fmt(o, sizeof(o), "output_blocks.%d.1", i * B + j);
                unet_transformer(&b, d, o, c->transformer_layers);
            }
        }
        if (i < N - 1) {
            fmt(d, sizeof(d), "up_blocks.%d.upsamplers.0.conv", i);
            fmt(o, sizeof(o), "output_blocks.%d.%d.conv", i * B + L, c->up_attn[i] ? 2 : 1);
            wb(&b, d, o);
        }
    }
    wb(&b, "conv_norm_out", "out.0");
    wb(&b, "conv_out", "out.2");
}

static void vae_resnet(kb *b, const char *d, const char *o, int in_ch, int out_ch)
{
    static const char *const same[] = {"norm1", "conv1", "norm2", "conv2"};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
        sub(b, d, o, same[i], same[i], "weight,bias");
    if (in_ch != out_ch)
        sub(b, d, o, "conv_shortcut", "nin_shortcut", "weight,bias");
}

static void vae_mid(kb *b, const char *coder, int ch)
{
    static const char *const attn[][2] = {{"to_q", "q"}, {"to_k", "k"}, {"to_v", "v"}, {"to_out.0", "proj_out"}};
    char d[KM_NAME_MAX], o[KM_NAME_MAX];
    fmt(d, sizeof(d), "%s.mid_block.resnets.0", coder);
    fmt(o, sizeof(o), "%s.mid.block_1", coder);
    vae_resnet(b, d, o, ch, ch);
    fmt(d, sizeof(d), "%s.mid_block.attentions.0", coder);
    fmt(o, sizeof(o), "%s.mid.attn_1", coder);
    sub(b, d, o, "group_norm", "norm", "weight,bias");
    for (size_t i = 0; i < sizeof(attn) / sizeof(attn[0]); i++) {
        char dn[KM_NAME_MAX], on[KM_NAME_MAX];
        fmt(dn, sizeof(dn), "%s.%s.weight", d, attn[i][0]);
        fmt(on, sizeof(on), "%s.%s.weight", o, attn[i][1]);
        add(b, dn, on, 1, 0);
        sub(b, d, o, attn[i][0], attn[i][1], "bias");
    }
    fmt(d, sizeof(d), "%s.mid_block.resnets.1", coder);
    fmt(o, sizeof(o), "%s.mid.block_2", coder);
    vae_resnet(b, d, o, ch, ch);
}

static void build_vae(lsdi_keymap *km, const lsdi_vae_config *c)
{
    kb b = {km, LSDI_KM_VAE};
    const int N = c->n_blocks, L = c->layers_per_block, *ch = c->block_out_channels;
    char d[KM_NAME_MAX], o[KM_NAME_MAX];
    wb(&b, "encoder.conv_in", "encoder.conv_in");
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < L; j++) {
            fmt(d, sizeof(d), "encoder.down_blocks.%d.resnets.%d", i, j);
            fmt(o, sizeof(o), "encoder.down.%d.block.%d", i, j);
            vae_resnet(&b, d, o, j ? ch[i] : ch[i ? i - 1 : 0], ch[i]);
        }
        if (i < N - 1) {
            fmt(d, sizeof(d), "encoder.down_blocks.%d.downsamplers.0.conv", i);
            fmt(o, sizeof(o), "encoder.down.%d.downsample.conv", i);
            wb(&b, d, o);
        }
    }
    vae_mid(&b, "encoder", ch[N - 1]);
    wb(&b, "encoder.conv_norm_out", "encoder.norm_out");
    wb(&b, "encoder.conv_out", "encoder.conv_out");
    wb(&b, "quant_conv", "quant_conv");
    wb(&b, "post_quant_conv", "post_quant_conv");
    wb(&b, "decoder.conv_in", "decoder.conv_in");
    vae_mid(&b, "decoder", ch[N - 1]);
    for (int i = 0; i < N; i++) {
        int level = N - 1 - i, out_ch = ch[level], prev_ch = ch[N - 1 - (i ? i - 1 : 0)];
        for (int j = 0; j <= L; j++) {
            fmt(d, sizeof(d), "decoder.up_blocks.%d.resnets.%d", i, j);
            fmt(o, sizeof(o), "decoder.up.%d.block.%d", level, j);
            vae_resnet(&b, d, o, j ? out_ch : prev_ch, out_ch);
        }
        if (i < N - 1) {
            fmt(d, sizeof(d), "decoder.up_blocks.%d.upsamplers.0.conv", i);
            fmt(o, sizeof(o), "decoder.up.%d.upsample.conv", level);
            wb(&b, d, o);
        }
    }
    wb(&b, "decoder.conv_norm_out", "decoder.norm_out");
    wb(&b, "decoder.conv_out", "decoder.conv_out");
}

/* The single file keeps transformers' own names under its prefix. */
static void build_text(lsdi_keymap *km, const lsdi_text_config *c)
{
    kb b = {km, LSDI_KM_TEXT};
    static const char *const layer[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"};
    const char *tok = "text_model.embeddings.token_embedding.weight";
    const char *pos = "text_model.embeddings.position_embedding.weight";
    const char *ids = "text_model.embeddings.position_ids";
    add(&b, tok, tok, 0, 0);
    add(&b, pos, pos, 0, 0);
    add(&b, ids, ids, 0, 1);
    for (int k = 0; k < c->num_layers; k++) {
        char d[KM_NAME_MAX];
        for (size_t i = 0; i < sizeof(layer) / sizeof(layer[0]); i++) {
            fmt(d, sizeof(d), "text_model.encoder.layers.%d.%s", k, layer[i]);
            wb(&b, d, d);
        }
    }
    wb(&b, "text_model.final_layer_norm", "text_model.final_layer_norm");
}

static int cmp_diffusers(const void *a, const void *b)
{
    const lsdi_km_entry *x = *(const lsdi_km_entry *const *)a, *y = *(const lsdi_km_entry *const *)b;
    if (x->part != y->part)
        return x->part < y->part ? -1 : 1;
    return strcmp(x->diffusers, y->diffusers);
}

static int cmp_original(const void *a, const void *b)
{
    return strcmp((*(const lsdi_km_entry *const *)a)->original, (*(const lsdi_km_entry *const *)b)->original);
}

static lsd_status finish(lsdi_keymap *km)
{
    size_t n = km->n ? km->n : 1;
    km->by_diffusers = malloc(n * sizeof(*km->by_diffusers));
    km->by_original = malloc(n * sizeof(*km->by_original));
    km->entries = malloc(n * sizeof(*km->entries));
    if (km->failed || !km->by_diffusers || !km->by_original || !km->entries)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "key map: out of memory");
    for (size_t i = 0; i < km->n; i++) {
        const raw_entry *r = &km->raw[i];
        lsdi_km_entry *e = &km->entries[i];
        *e = (lsdi_km_entry){r->part, km->pool + r->diffusers, km->pool + r->original, r->reshape_1x1, r->buffer};
        km->by_diffusers[i] = km->by_original[i] = e;
    }
    qsort(km->by_diffusers, km->n, sizeof(*km->by_diffusers), cmp_diffusers);
    qsort(km->by_original, km->n, sizeof(*km->by_original), cmp_original);
    for (size_t i = 1; i < km->n; i++)
        if (!cmp_original(&km->by_original[i - 1], &km->by_original[i]) ||
            !cmp_diffusers(&km->by_diffusers[i - 1], &km->by_diffusers[i]))
            return lsdi_error(LSD_ERR_INTERNAL, "key map: '%s' / '%s' named twice", km->by_original[i]->original,
                              km->by_diffusers[i]->diffusers);
    return LSD_OK;
}

lsd_status lsdi_keymap_build(const lsdi_unet_config *unet, const lsdi_vae_config *vae, const lsdi_text_config *text,
                             lsdi_keymap **out)
{
    *out = NULL;
    if (unet && !unet->mid_attn)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "key map: a UNet without mid-block attention has no original layout");
    if ((unet && (unet->n_blocks < 1 || unet->n_blocks > LSDI_MAX_BLOCKS)) ||
        (vae && (vae->n_blocks < 1 || vae->n_blocks > LSDI_MAX_BLOCKS)))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "key map: block count out of range 1..%d", LSDI_MAX_BLOCKS);
    lsdi_keymap *km = calloc(1, sizeof(*km));
    if (!km)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "key map: out of memory");
    if (unet)
        build_unet(km, unet);
    if (vae)
        build_vae(km, vae);
    if (text)
        build_text(km, text);
    lsd_status st = finish(km);
    if (st != LSD_OK) {
        lsdi_keymap_free(km);
        return st;
    }
    *out = km;
    return LSD_OK;
}

void lsdi_keymap_free(lsdi_keymap *km)
{
    if (!km)
        return;
    free(km->raw);
    free(km->entries);
    free(km->by_diffusers);
    free(km->by_original);
    free(km->pool);
    free(km);
}

size_t lsdi_keymap_count(const lsdi_keymap *km)
{
    return km->n;
}

const lsdi_km_entry *lsdi_keymap_at(const lsdi_keymap *km, size_t i)
{
    return i < km->n ? &km->entries[i] : NULL;
}

const lsdi_km_entry *lsdi_keymap_to_original(const lsdi_keymap *km, lsdi_km_part part, const char *diffusers)
{
    lsdi_km_entry key = {.part = part, .diffusers = diffusers};
    const lsdi_km_entry *kp = &key;
    const lsdi_km_entry **hit = bsearch(&kp, km->by_diffusers, km->n, sizeof(*km->by_diffusers), cmp_diffusers);
    return hit ? *hit : NULL;
}

const lsdi_km_entry *lsdi_keymap_to_diffusers(const lsdi_keymap *km, const char *original)
{
    lsdi_km_entry key = {.original = original};
    const lsdi_km_entry *kp = &key;
    const lsdi_km_entry **hit = bsearch(&kp, km->by_original, km->n, sizeof(*km->by_original), cmp_original);
    return hit ? *hit : NULL;
}
