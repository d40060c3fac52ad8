/* Single-file original-layout checkpoints (.safetensors, .ckpt, .pt): the weights of all three networks under
 * model.diffusion_model., first_stage_model. and cond_stage_model.transformer., mapped onto the diffusers
 * parameter tables through the key map derived from the configs. The file carries no config and no tokenizer:
 * those come from params->config_dir, or the SD 1.x set installed with the library. */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/datadir.h"
#include "core/error.h"
#include "io/hash.h"
#include "io/weights.h"
#include "model/keymap.h"
#include "model/model.h"

typedef struct {
    const lsdi_weights *w;
    const lsdi_keymap *km;
    lsdi_km_part part;
} part_lookup;

#define TEXT_PREFIX "cond_stage_model.transformer."

/* Old (pre-transformers-4.x) text encoders lack the "text_model." level; A1111 accepts them, so do we. */
static const lsdi_st_tensor *find_text_fallback(const lsdi_weights *w, const char *original)
{
    const char *inner = original + strlen(TEXT_PREFIX);
    if (strncmp(inner, "text_model.", 11) != 0)
        return NULL;
    char alt[512];
    if ((size_t)snprintf(alt, sizeof alt, "%s%s", TEXT_PREFIX, inner + 11) >= sizeof alt)
        return NULL;
    return lsdi_weights_find(w, alt);
}

static const lsdi_st_tensor *lookup_part(void *user, const char *name)
{
    const part_lookup *pl = user;
    const lsdi_km_entry *e = lsdi_keymap_to_original(pl->km, pl->part, name);
    if (!e)
        return NULL;
    const lsdi_st_tensor *t = lsdi_weights_find(pl->w, e->original);
    if (!t && pl->part == LSDI_KM_TEXT)
        t = find_text_fallback(pl->w, e->original);
    return t;
}

/* Layouts we know by their prefixes but cannot load: say which, rather than "missing tensors". */
static lsd_status check_family(const lsdi_weights *w, const char *path)
{
    static const struct {
        const char *prefix, *what;
    } others[] = {{"conditioner.embedders.", "an SDXL checkpoint"},
                  {"cond_stage_model.model.", "an SD 2.x checkpoint (OpenCLIP text encoder)"}};
    for (size_t i = 0; i < lsdi_weights_count(w); i++) {
        const char *name = lsdi_weights_at(w, i)->name;
        for (size_t k = 0; k < sizeof others / sizeof *others; k++)
            if (!strncmp(name, others[k].prefix, strlen(others[k].prefix)))
                return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: %s (tensor '%s'); only SD 1.x single files are supported",
                                  path, others[k].what, name);
    }
    return LSD_OK;
}

static int weight_prefix(const char *name)
{
    return !strncmp(name, "model.diffusion_model.", 22) || !strncmp(name, "first_stage_model.", 18) ||
           !strncmp(name, TEXT_PREFIX, strlen(TEXT_PREFIX));
}

/* A tensor under a weight prefix that the architecture has no place for means the file is for another model. */
static lsd_status check_unexpected(const lsdi_weights *w, const lsdi_keymap *km, const char *path)
{
    char list[768] = "";
    size_t used = 0;
    int n_bad = 0;
    for (size_t i = 0; i < lsdi_weights_count(w); i++) {
        const char *name = lsdi_weights_at(w, i)->name;
        if (!weight_prefix(name) || lsdi_keymap_to_diffusers(km, name))
            continue;
        if (!strncmp(name, TEXT_PREFIX, strlen(TEXT_PREFIX))) {
            char alt[512];
            snprintf(alt, sizeof alt, "%stext_model.%s", TEXT_PREFIX, name + strlen(TEXT_PREFIX));
            if (lsdi_keymap_to_diffusers(km, alt))
                continue;
        }
        if (++n_bad <= 4 && used < sizeof list)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s'%s'", used ? ", " : "", name);
    }
    if (n_bad)
        return lsdi_error(LSD_ERR_FORMAT, "%s: %d unexpected tensor%s for this architecture (%s%s)", path, n_bad,
                          n_bad > 1 ? "s" : "", list, n_bad > 4 ? ", ..." : "");
    return LSD_OK;
}

static lsd_status config_dir_for(const lsd_model_params *p, char *out, size_t n)
{
    if (p->config_dir && *p->config_dir) {
        snprintf(out, n, "%s", p->config_dir);
        return LSD_OK;
    }
    char data[4096];
    LSDI_TRY(lsdi_data_dir(data, sizeof data));
    snprintf(out, n, "%s/configs/sd-v1-4", data);
    return LSD_OK;
}

static void set_identity(lsd_model *m, const char *path, const char *sha256, const char *legacy)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    char *base = basename(copy);
    char *dot = strrchr(base, '.');
    if (dot && dot != base)
        *dot = 0;
    snprintf(m->name, sizeof m->name, "%s", base);
    /* A1111 writes the first 10 hex digits of the file's SHA-256 as "Model hash". */
    snprintf(m->hash, sizeof m->hash, "%.10s", sha256);
    snprintf(m->sha256, sizeof m->sha256, "%s", sha256);
    snprintf(m->legacy_hash, sizeof m->legacy_hash, "%.8s", legacy);
}

lsd_status lsdi_model_load_single_file(const char *path, const lsd_model_params *p, lsd_model **out)
{
    *out = NULL;
    double t0 = lsdi_model_clock();
    char config_dir[4096];
    LSDI_TRY(config_dir_for(p, config_dir, sizeof config_dir));
    lsdi_weights *w = NULL;
    LSDI_TRY(lsdi_weights_open(path, &w));
    lsd_model *m = NULL;
    lsdi_keymap *km = NULL;
    char sha[65] = "", legacy[65] = "";
    lsd_status st = check_family(w, path);
    if (st == LSD_OK)
        st = lsdi_model_new(config_dir, p, &m);
    if (st == LSD_OK)
        st = lsdi_keymap_build(&m->unet->cfg, &m->vae->cfg, &m->text->cfg, &km);
    if (st == LSD_OK)
        st = check_unexpected(w, km, path);
    struct {
        lsdi_params *params;
        lsdi_km_part part;
        const char *network;
    } parts[3];
    if (m) {
        parts[0].params = &m->text->params, parts[0].part = LSDI_KM_TEXT, parts[0].network = "text_encoder";
        parts[1].params = &m->vae->params, parts[1].part = LSDI_KM_VAE, parts[1].network = "vae";
        parts[2].params = &m->unet->params, parts[2].part = LSDI_KM_UNET, parts[2].network = "unet";
    }
    for (int i = 0; i < 3 && st == LSD_OK; i++) {
        part_lookup pl = {w, km, parts[i].part};
        st = lsdi_params_fill(parts[i].params, path, parts[i].network, lookup_part, &pl, m->tdtype, m->device);
        if (st == LSD_OK)
            st = lsdi_model_progress(p, i + 1, 4, t0);
    }
    lsdi_keymap_free(km);
    lsdi_weights_close(w);
    if (st == LSD_OK)
        st = lsdi_sha256_file(path, sha);
    if (st == LSD_OK)
        st = lsdi_sha256_file_range(path, 0x100000, 0x10000, legacy);
    if (st == LSD_OK)
        st = lsdi_model_progress(p, 4, 4, t0);
    if (st != LSD_OK) {
        lsd_model_free(m);
        return st;
    }
    set_identity(m, path, sha, legacy);
    *out = m;
    return LSD_OK;
}
