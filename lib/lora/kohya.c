/* kohya-ss / A1111 names. They cannot be turned back into module paths ('_' is both the separator and part of
 * names like down_blocks or to_q), so the table is built forward: every module of the model gets its kohya name
 * (lora_unet_ / lora_te_ + path with '.' -> '_') and, for the UNet, the name kohya gives it in the original
 * (ldm/sgm) layout; a file's prefixes are looked up in that table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "lora/lora.h"

typedef struct kname {
    char *name;
    int net, module;
} kname;

struct lsdi_kohya_names {
    kname *v; /* sorted by name */
    int n;
    char **by_module[LSDI_NET_COUNT]; /* the diffusers-layout kohya name of each module */
    int n_mods[LSDI_NET_COUNT];
};

static void underscores(char *s)
{
    for (; *s; s++)
        if (*s == '.')
            *s = '_';
}

static const char *resnet_part(const char *sub)
{
    static const char *const map[][2] = {{"conv1", "in_layers_2"},
                                         {"conv2", "out_layers_3"},
                                         {"time_emb_proj", "emb_layers_1"},
                                         {"conv_shortcut", "skip_connection"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(sub, map[i][0]))
            return map[i][1];
    return NULL;
}

/* Offset just past the match of fmt (ending in %n) with one or two ints, 0 if no match. */
static int match(const char *path, const char *fmt, int *a, int *b)
{
    int len = 0;
    int got = b ? sscanf(path, fmt, a, b, &len) : sscanf(path, fmt, a, &len);
    return got == (b ? 2 : 1) ? len : 0;
}

/* The original-layout kohya name of UNet module `path` (block rule of the README: input_blocks_n holds
 * down_blocks[(n-1)/(L+1)] layer (n-1)%(L+1), output_blocks_n holds up_blocks[n/(L+1)] layer n%(L+1); sub-module 0
 * is the resnet, 1 the attention). 0 if the module has no such name. */
static int sgm_name(const lsdi_unet_config *c, const char *path, char *out, size_t n)
{
    int L = c->layers_per_block, i = 0, j = 0, k, len;
    const char *rest;
    char buf[512];
    if ((len = match(path, "down_blocks.%d.attentions.%d.%n", &i, &j)))
        snprintf(buf, sizeof buf, "lora_unet_input_blocks_%d_1_%s", i * (L + 1) + j + 1, path + len);
    else if ((len = match(path, "down_blocks.%d.resnets.%d.%n", &i, &j)) && (rest = resnet_part(path + len)))
        snprintf(buf, sizeof buf, "lora_unet_input_blocks_%d_0_%s", i * (L + 1) + j + 1, rest);
    else if ((len = match(path, "down_blocks.%d.downsamplers.0.conv%n", &i, NULL)) && !path[len])
        snprintf(buf, sizeof buf, "lora_unet_input_blocks_%d_0_op", (i + 1) * (L + 1));
    else if (!strncmp(path, "mid_block.attentions.0.", 23))
        snprintf(buf, sizeof buf, "lora_unet_middle_block_1_%s", path + 23);
    else if ((len = match(path, "mid_block.resnets.%d.%n", &i, NULL)) && (rest = resnet_part(path + len)))
        snprintf(buf, sizeof buf, "lora_unet_middle_block_%d_%s", 2 * i, rest);
    else if ((len = match(path, "up_blocks.%d.attentions.%d.%n", &i, &j)))
        snprintf(buf, sizeof buf, "lora_unet_output_blocks_%d_1_%s", i * (L + 1) + j, path + len);
    else if ((len = match(path, "up_blocks.%d.resnets.%d.%n", &i, &j)) && (rest = resnet_part(path + len)))
        snprintf(buf, sizeof buf, "lora_unet_output_blocks_%d_0_%s", i * (L + 1) + j, rest);
    else if ((len = match(path, "up_blocks.%d.upsamplers.0.conv%n", &i, NULL)) && !path[len]) {
        k = i >= 0 && i < LSDI_MAX_BLOCKS && c->up_attn[i] ? 2 : 1;
        snprintf(buf, sizeof buf, "lora_unet_output_blocks_%d_%d_conv", i * (L + 1) + L, k);
    } else if (!strcmp(path, "conv_in"))
        snprintf(buf, sizeof buf, "lora_unet_input_blocks_0_0");
    else if (!strcmp(path, "conv_out"))
        snprintf(buf, sizeof buf, "lora_unet_out_2");
    else if (!strcmp(path, "time_embedding.linear_1"))
        snprintf(buf, sizeof buf, "lora_unet_time_embed_0");
    else if (!strcmp(path, "time_embedding.linear_2"))
        snprintf(buf, sizeof buf, "lora_unet_time_embed_2");
    else
        return 0;
    if (strlen(buf) >= n)
        return 0;
    snprintf(out, n, "%s", buf);
    underscores(out);
    return 1;
}

static int cmp_kname(const void *a, const void *b)
{
    return strcmp(((const kname *)a)->name, ((const kname *)b)->name);
}

static lsd_status push(lsdi_kohya_names *k, const char *name, int net, int module)
{
    char *s = strdup(name);
    if (!s)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "kohya name table");
    k->v[k->n++] = (kname){s, net, module};
    return LSD_OK;
}

static lsd_status build(const lsd_model *m, lsdi_kohya_names *k)
{
    static const char *const prefix[LSDI_NET_COUNT] = {"lora_unet_", "lora_te_"};
    int total = 0;
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        const lsdi_params *p = lsdi_lora_net_params(m, net);
        k->n_mods[net] = p ? p->n_mods : 0;
        total += 2 * k->n_mods[net];
    }
    k->v = calloc(total ? (size_t)total : 1, sizeof *k->v);
    if (!k->v)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "kohya name table");
    for (int net = 0; net < LSDI_NET_COUNT; net++) {
        const lsdi_params *p = lsdi_lora_net_params(m, net);
        if (!k->n_mods[net])
            continue;
        k->by_module[net] = calloc((size_t)k->n_mods[net], sizeof(char *));
        if (!k->by_module[net])
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "kohya name table");
        for (int i = 0; i < p->n_mods; i++) {
            char buf[600];
            snprintf(buf, sizeof buf, "%s%s", prefix[net], p->mods[i].name);
            underscores(buf);
            LSDI_TRY(push(k, buf, net, i));
            k->by_module[net][i] = k->v[k->n - 1].name;
            if (net == LSDI_NET_UNET && sgm_name(&m->unet->cfg, p->mods[i].name, buf, sizeof buf))
                LSDI_TRY(push(k, buf, net, i));
        }
    }
    qsort(k->v, (size_t)k->n, sizeof *k->v, cmp_kname);
    return LSD_OK;
}

lsd_status lsdi_kohya_names_new(const lsd_model *m, lsdi_kohya_names **out)
{
    *out = NULL;
    lsdi_kohya_names *k = calloc(1, sizeof *k);
    if (!k)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "kohya name table");
    lsd_status st = build(m, k);
    if (st != LSD_OK) {
        lsdi_kohya_names_free(k);
        return st;
    }
    *out = k;
    return LSD_OK;
}

void lsdi_kohya_names_free(lsdi_kohya_names *k)
{
    if (!k)
        return;
    for (int i = 0; i < k->n; i++)
        free(k->v[i].name);
    free(k->v);
    for (int net = 0; net < LSDI_NET_COUNT; net++)
        free(k->by_module[net]);
    free(k);
}

const char *lsdi_kohya_name(const lsdi_kohya_names *k, int net, int module)
{
    if (net < 0 || net >= LSDI_NET_COUNT || module < 0 || module >= k->n_mods[net])
        return NULL;
    return k->by_module[net][module];
}

/* kohya's LoRA names, then LyCORIS's (its kohya-format files: lycoris/modules/{loha,lokr,full}.py weight_list). */
static const char *const suffixes[LSDI_ROLE_COUNT] = {
    [LSDI_ROLE_DOWN] = ".lora_down.weight", [LSDI_ROLE_UP] = ".lora_up.weight",
    [LSDI_ROLE_MID] = ".lora_mid.weight",   [LSDI_ROLE_ALPHA] = ".alpha",
    [LSDI_ROLE_HADA_W1_A] = ".hada_w1_a",   [LSDI_ROLE_HADA_W1_B] = ".hada_w1_b",
    [LSDI_ROLE_HADA_W2_A] = ".hada_w2_a",   [LSDI_ROLE_HADA_W2_B] = ".hada_w2_b",
    [LSDI_ROLE_HADA_T1] = ".hada_t1",       [LSDI_ROLE_HADA_T2] = ".hada_t2",
    [LSDI_ROLE_LOKR_W1] = ".lokr_w1",       [LSDI_ROLE_LOKR_W1_A] = ".lokr_w1_a",
    [LSDI_ROLE_LOKR_W1_B] = ".lokr_w1_b",   [LSDI_ROLE_LOKR_W2] = ".lokr_w2",
    [LSDI_ROLE_LOKR_W2_A] = ".lokr_w2_a",   [LSDI_ROLE_LOKR_W2_B] = ".lokr_w2_b",
    [LSDI_ROLE_LOKR_T2] = ".lokr_t2",       [LSDI_ROLE_DIFF] = ".diff",
    [LSDI_ROLE_DIFF_B] = ".diff_b",         [LSDI_ROLE_DORA_SCALE] = ".dora_scale",
};

const char *lsdi_kohya_suffix(int role)
{
    return role >= 0 && role < LSDI_ROLE_COUNT ? suffixes[role] : NULL;
}

static const kname *lookup(const lsdi_kohya_names *k, const char *name, size_t len)
{
    char prefix[600];
    if (len >= sizeof prefix)
        return NULL;
    memcpy(prefix, name, len);
    prefix[len] = 0;
    kname probe = {prefix, 0, 0};
    return bsearch(&probe, k->v, (size_t)k->n, sizeof *k->v, cmp_kname);
}

int lsdi_kohya_parse(const lsdi_kohya_names *k, const char *name, lsdi_lora_key *key)
{
    size_t n = strlen(name);
    for (int role = 0; role < LSDI_ROLE_COUNT; role++) {
        size_t sl = strlen(suffixes[role]);
        if (n <= sl || strcmp(name + n - sl, suffixes[role]))
            continue;
        const kname *hit = lookup(k, name, n - sl);
        if (!hit)
            return 0;
        key->net = hit->net;
        key->module = hit->module;
        key->role = role;
        return 1;
    }
    return 0;
}

int lsdi_kohya_explain(const lsdi_kohya_names *k, const lsd_model *m, const char *name, char *out, size_t n)
{
    /* The module part ends at the first '.' (kohya names have none inside); a known suffix names a missing
     * module, an unknown one a tensor kind this library does not apply (LyCORIS's lokr_t1, IA3's, ...). */
    const char *dot = strchr(name, '.');
    if (!dot || dot == name)
        return 0;
    size_t len = (size_t)(dot - name);
    const kname *hit = lookup(k, name, len);
    if (!hit) {
        snprintf(out, n, "module '%.*s' is no linear or conv layer of this model", (int)len, name);
        return 1;
    }
    snprintf(out, n, "'%s' is not a tensor kind this library applies, on module '%s'", dot,
             lsdi_lora_net_params(m, hit->net)->mods[hit->module].name);
    return 1;
}
