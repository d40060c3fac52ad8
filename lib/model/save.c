/* lsd_model_save: the model's weights (adapters fused in, if the caller fused them) as an original-layout single
 * .safetensors, or as a diffusers folder with the configs and tokenizer the model was built from. Both are
 * written atomically: a failure leaves whatever was at the path before. */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/atomic.h"
#include "io/safetensors.h"
#include "model/keymap.h"
#include "model/model.h"

/* Host copies of a parameter table's tensors in the model's dtype, as safetensors entries. */
typedef struct {
    lsdi_st_entry *e;
    char **names;
    void **data;
    size_t n, cap;
} entry_list;

static void entries_free(entry_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->names[i]);
        free(l->data[i]);
        free((void *)l->e[i].shape);
    }
    free(l->e);
    free(l->names);
    free(l->data);
    memset(l, 0, sizeof *l);
}

static lsdi_st_dtype file_dtype(lsdt_dtype dt)
{
    return dt == LSDT_F16 ? LSDI_ST_F16 : dt == LSDT_BF16 ? LSDI_ST_BF16 : LSDI_ST_F32;
}

/* name: the key to write; shape_1x1: append [.., 1, 1] (VAE attention stored as 1x1 convs in the original layout). */
static lsd_status entries_add(entry_list *l, const char *name, const lsdt_tensor *t, int shape_1x1)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        lsdi_st_entry *e = realloc(l->e, cap * sizeof *e);
        if (e)
            l->e = e;
        char **names = realloc(l->names, cap * sizeof *names);
        if (names)
            l->names = names;
        void **data = realloc(l->data, cap * sizeof *data);
        if (data)
            l->data = data;
        if (!e || !names || !data)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "model save: out of memory");
        l->cap = cap;
    }
    lsdt_dtype dt = lsdt_get_dtype(t);
    int ndim = lsdt_ndim(t);
    size_t numel = (size_t)lsdt_numel(t), esize = lsdt_dtype_size(dt);
    int64_t *shape = calloc((size_t)ndim + 2, sizeof *shape);
    void *buf = malloc(numel ? numel * esize : 1);
    char *nm = strdup(name);
    if (!shape || !buf || !nm) {
        free(shape), free(buf), free(nm);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "model save: out of memory for '%s'", name);
    }
    for (int d = 0; d < ndim; d++)
        shape[d] = lsdt_size(t, d);
    if (shape_1x1 && ndim == 2)
        shape[ndim++] = 1, shape[ndim++] = 1;
    if (lsdt_to_host(t, buf, dt, numel) != 0) {
        free(shape), free(buf), free(nm);
        return lsdi_error_from_shim(lsdt_last_status());
    }
    l->names[l->n] = nm;
    l->data[l->n] = buf;
    l->e[l->n] = (lsdi_st_entry){nm, file_dtype(dt), ndim, shape, buf};
    l->n++;
    return LSD_OK;
}

/* One table's parameters, renamed through the key map when km is given. */
static lsd_status add_table(entry_list *l, const lsdi_params *p, const lsdi_keymap *km, lsdi_km_part part)
{
    for (int i = 0; i < p->n; i++) {
        const lsdi_param *pr = &p->v[i];
        if (!pr->slot || !*pr->slot)
            return lsdi_error(LSD_ERR_INTERNAL, "model save: parameter '%s' has no tensor", pr->name);
        const char *name = pr->name;
        int reshape = 0;
        if (km) {
            const lsdi_km_entry *e = lsdi_keymap_to_original(km, part, pr->name);
            if (!e)
                return lsdi_error(LSD_ERR_UNSUPPORTED, "model save: no original-layout name for '%s'", pr->name);
            name = e->original;
            reshape = e->reshape_1x1;
        }
        LSDI_TRY(entries_add(l, name, *pr->slot, reshape));
    }
    return LSD_OK;
}

static lsd_status write_entries(const char *path, entry_list *l, const char *format)
{
    const char *keys[] = {"format"}, *values[] = {format};
    return lsdi_st_write(path, l->e, l->n, keys, values, 1);
}

static lsd_status save_single(const lsd_model *m, const char *path)
{
    lsdi_keymap *km = NULL;
    LSDI_TRY(lsdi_keymap_build(&m->unet->cfg, &m->vae->cfg, &m->text->cfg, &km));
    entry_list l = {0};
    lsd_status st = add_table(&l, &m->unet->params, km, LSDI_KM_UNET);
    if (st == LSD_OK)
        st = add_table(&l, &m->vae->params, km, LSDI_KM_VAE);
    if (st == LSD_OK)
        st = add_table(&l, &m->text->params, km, LSDI_KM_TEXT);
    lsdi_keymap_free(km);
    if (st == LSD_OK)
        st = write_entries(path, &l, "pt");
    entries_free(&l);
    return st;
}

static lsd_status save_table(const lsdi_params *p, const char *path)
{
    entry_list l = {0};
    lsd_status st = add_table(&l, p, NULL, LSDI_KM_UNET);
    if (st == LSD_OK)
        st = write_entries(path, &l, "pt");
    entries_free(&l);
    return st;
}

static lsd_status copy_file(const char *from, const char *to)
{
    FILE *f = fopen(from, "rb");
    if (!f)
        return lsdi_error(LSD_ERR_IO, "model save: cannot read %s: %s", from, strerror(errno));
    lsdi_atomic_file af;
    lsd_status st = lsdi_atomic_begin(&af, to);
    char buf[1 << 16];
    size_t n;
    while (st == LSD_OK && (n = fread(buf, 1, sizeof buf, f)) > 0)
        st = lsdi_atomic_write(&af, buf, n);
    if (st == LSD_OK && ferror(f))
        st = lsdi_error(LSD_ERR_IO, "model save: read error on %s", from);
    fclose(f);
    if (st == LSD_OK)
        return lsdi_atomic_commit(&af);
    lsdi_atomic_abort(&af);
    return st;
}

static lsd_status make_dir(const char *path)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return lsdi_error(LSD_ERR_IO, "model save: cannot create %s: %s", path, strerror(errno));
    return LSD_OK;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Depth first and never through a symlink. */
static void remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Everything but the weights comes from the folder the model was built from. */
static lsd_status copy_configs(const lsd_model *m, const char *dir)
{
    static const char *const required[] = {"model_index.json",       "unet/config.json",
                                           "vae/config.json",        "text_encoder/config.json",
                                           "tokenizer/vocab.json",   "tokenizer/merges.txt",
                                           "scheduler/scheduler_config.json"};
    static const char *const optional[] = {"tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json"};
    char from[4096], to[4096];
    for (size_t i = 0; i < sizeof required / sizeof *required + sizeof optional / sizeof *optional; i++) {
        int is_optional = i >= sizeof required / sizeof *required;
        const char *rel = is_optional ? optional[i - sizeof required / sizeof *required] : required[i];
        snprintf(from, sizeof from, "%s/%s", m->config_dir, rel);
        snprintf(to, sizeof to, "%s/%s", dir, rel);
        if (is_optional && access(from, R_OK) != 0)
            continue;
        LSDI_TRY(copy_file(from, to));
    }
    return LSD_OK;
}

static lsd_status save_diffusers(const lsd_model *m, const char *path)
{
    char tmp[4096], sub[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid()) >= sizeof tmp)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "model save: path too long: %s", path);
    remove_tree(tmp);
    lsd_status st = make_dir(tmp);
    static const char *const subs[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};
    for (size_t i = 0; st == LSD_OK && i < sizeof subs / sizeof *subs; i++) {
        snprintf(sub, sizeof sub, "%s/%s", tmp, subs[i]);
        st = make_dir(sub);
    }
    if (st == LSD_OK)
        st = copy_configs(m, tmp);
    struct {
        const lsdi_params *p;
        const char *rel;
    } parts[] = {{&m->unet->params, "unet/diffusion_pytorch_model.safetensors"},
                 {&m->vae->params, "vae/diffusion_pytorch_model.safetensors"},
                 {&m->text->params, "text_encoder/model.safetensors"}};
    for (size_t i = 0; st == LSD_OK && i < 3; i++) {
        snprintf(sub, sizeof sub, "%s/%s", tmp, parts[i].rel);
        st = save_table(parts[i].p, sub);
    }
    /* Swap the finished folder in; an existing one is moved aside first and removed only after. */
    char old[4200];
    snprintf(old, sizeof old, "%s.old-%ld", path, (long)getpid());
    int had_old = 0;
    if (st == LSD_OK && access(path, F_OK) == 0) {
        if (rename(path, old) != 0)
            st = lsdi_error(LSD_ERR_IO, "model save: cannot move the existing %s aside: %s", path, strerror(errno));
        else
            had_old = 1;
    }
    if (st == LSD_OK && rename(tmp, path) != 0) {
        st = lsdi_error(LSD_ERR_IO, "model save: cannot rename %s to %s: %s", tmp, path, strerror(errno));
        if (had_old)
            rename(old, path);
        had_old = 0;
    }
    if (had_old)
        remove_tree(old);
    if (st != LSD_OK)
        remove_tree(tmp);
    return st;
}

static lsd_status model_save(const lsd_model *model, const char *path, lsd_model_format format)
{
    if (!model)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_save: model is NULL");
    if (!path || !*path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_save: path is NULL or empty");
    /* the file would hold a VAE without its encoder, which nothing (this library included) loads as a whole model */
    LSDI_TRY(lsdi_model_check_encoder(model, "lsd_model_save"));
    switch (format) {
    case LSD_MODEL_SINGLE_FILE: return save_single(model, path);
    case LSD_MODEL_DIFFUSERS: return save_diffusers(model, path);
    }
    return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_model_save: unknown format %d", (int)format);
}

lsd_status lsd_model_save(const lsd_model *model, const char *path, lsd_model_format format)
{
    return lsdi_model_record(model, model_save(model, path, format));
}
