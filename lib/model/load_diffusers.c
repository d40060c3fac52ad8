#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"
#include "io/weights.h"
#include "model/model.h"

/* Buffers that state dicts carry but that are not parameters. */
static int known_buffer(const char *name)
{
    return strcmp(name, "text_model.embeddings.position_ids") == 0;
}

static const lsdi_st_tensor *lookup_file(void *user, const char *name)
{
    return lsdi_weights_find((const lsdi_weights *)user, name);
}

#define MAX_LISTED 4

/* Every tensor of w must have a slot in p, or be one of `skipped`'s (the parts not built: NULL for none). */
static lsd_status check_unexpected(const lsdi_params *p, const lsdi_params *skipped, const lsdi_weights *w,
                                   const char *network)
{
    char msg[768];
    size_t used = 0;
    int n_bad = 0;
    for (size_t i = 0; i < lsdi_weights_count(w); i++) {
        const lsdi_st_tensor *t = lsdi_weights_at(w, i);
        if (known_buffer(t->name) || lsdi_params_find(p, t->name) || (skipped && lsdi_params_find(skipped, t->name)))
            continue;
        if (++n_bad <= MAX_LISTED && used < sizeof msg)
            used += (size_t)snprintf(msg + used, sizeof msg - used, "%s'%s'", used ? ", " : "", t->name);
    }
    if (n_bad)
        return lsdi_error(LSD_ERR_FORMAT, "%s: %s: %d unexpected tensor%s (%s%s)", lsdi_weights_path(w), network,
                          n_bad, n_bad > 1 ? "s" : "", msg, n_bad > MAX_LISTED ? ", ..." : "");
    return LSD_OK;
}

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The weights of a component, in diffusers' order of preference: the variant before the plain file (falling back
 * when a component is published without the variant), safetensors before a PyTorch .bin. */
static lsd_status weights_path(const char *dir, const char *sub, const char *st_stem, const char *bin_stem,
                               const char *variant, char *out, size_t n)
{
    const char *stems[2] = {st_stem, bin_stem}, *exts[2] = {"safetensors", "bin"};
    for (int with_variant = variant && *variant ? 1 : 0; with_variant >= 0; with_variant--)
        for (int k = 0; k < 2; k++) {
            int len = with_variant ? snprintf(out, n, "%s/%s/%s.%s.%s", dir, sub, stems[k], variant, exts[k])
                                   : snprintf(out, n, "%s/%s/%s.%s", dir, sub, stems[k], exts[k]);
            if (len < 0 || (size_t)len >= n)
                return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: path too long", dir);
            if (is_file(out))
                return LSD_OK;
        }
    return lsdi_error(LSD_ERR_NOT_FOUND, "%s/%s/%s.safetensors: missing (and no %s.bin)%s%s", dir, sub, st_stem,
                      bin_stem, variant && *variant ? "; variant tried: " : "", variant && *variant ? variant : "");
}

static lsd_status load_component(lsd_model *m, lsdi_params *p, const lsdi_params *skipped, const char *dir,
                                 const char *sub, const char *stem, const char *bin_stem, const char *variant)
{
    char path[4096];
    LSDI_TRY(weights_path(dir, sub, stem, bin_stem, variant, path, sizeof path));
    lsdi_weights *w = NULL;
    LSDI_TRY(lsdi_weights_open(path, &w));
    lsd_status st = check_unexpected(p, skipped, w, sub);
    if (st == LSD_OK)
        st = lsdi_params_fill(p, path, sub, lookup_file, w, m->tdtype, m->device);
    lsdi_weights_close(w);
    return st;
}

lsd_status lsdi_model_load_diffusers(const char *dir, const lsd_model_params *p, lsd_model **out)
{
    *out = NULL;
    double t0 = lsdi_model_clock();
    char index[4096];
    if ((size_t)snprintf(index, sizeof index, "%s/model_index.json", dir) >= sizeof index)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: path too long", dir);
    if (!is_file(index))
        return lsdi_error(LSD_ERR_NOT_FOUND, "%s: not a diffusers folder (no model_index.json)", dir);
    lsd_model *m = NULL;
    LSDI_TRY(lsdi_model_new(dir, p, &m));
    lsd_status st = load_component(m, &m->text->params, NULL, dir, "text_encoder", "model", "pytorch_model",
                                   p->variant);
    if (st == LSD_OK)
        st = lsdi_model_progress(p, 1, 3, t0);
    /* vae_decode_only: the whole VAE's table (names and shapes, no weights) says which tensors of the file are the
     * encoder's and quant_conv's, to skip; any other tensor the decoder has no slot for is still refused. */
    lsdi_vae *whole = NULL;
    if (st == LSD_OK && m->vae->decode_only)
        st = lsdi_vae_new(&m->vae->cfg, 0, &whole);
    if (st == LSD_OK)
        st = load_component(m, &m->vae->params, whole ? &whole->params : NULL, dir, "vae", "diffusion_pytorch_model",
                            "diffusion_pytorch_model", p->variant);
    lsdi_vae_free(whole);
    if (st == LSD_OK)
        st = lsdi_model_progress(p, 2, 3, t0);
    if (st == LSD_OK)
        st = load_component(m, &m->unet->params, NULL, dir, "unet", "diffusion_pytorch_model",
                            "diffusion_pytorch_model", p->variant);
    if (st == LSD_OK)
        st = lsdi_model_progress(p, 3, 3, t0);
    if (st != LSD_OK) {
        lsd_model_free(m);
        return st;
    }
    *out = m;
    return LSD_OK;
}
