/* The folder layouts a dataset is read from (docs/train.md "Data"), each as its reference tool reads it:
 * - folder: images with captions beside them, or a metadata.jsonl (diffusers' imagefolder);
 * - seed: Images/ and ImageCaptions/ side by side (Images/a/cat.png is captioned by ImageCaptions/a/cat.txt);
 * - kohya: N_name/ folders repeated N times, the folder's name captioning images without a caption file, and
 *   reg_data_dir's folders as regularisation images (config_util.generate_dreambooth_subsets_config_by_subdirs);
 * - DreamBooth: instance images captioned by instance_prompt (diffusers' train_dreambooth_lora.py).
 * With any of them, class_data_dir's images captioned by class_prompt are the class images DreamBooth's prior
 * preservation pairs with the training images.
 * Images are found in nested folders too; hidden files and folders are skipped. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/error.h"
#include "data/data.h"
#include "io/file.h"

#define MAX_ITEMS 10000000
#define MAX_DEPTH 32
#define MAX_METADATA (256u << 20)

int lsdi_is_image_name(const char *name)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".webp"};
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; name[0] != '.' && dot && i < sizeof ext / sizeof ext[0]; i++)
        if (!strcasecmp(dot, ext[i]))
            return 1;
    return 0;
}

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

lsd_status lsdi_dataset_push(lsd_dataset *ds, char *path, char **captions, int n_captions, char *caption_file,
                             int subset)
{
    if (ds->n == ds->cap) {
        size_t cap = ds->cap ? ds->cap * 2 : 64;
        lsdi_item *ni = ds->n >= MAX_ITEMS ? NULL : realloc(ds->items, cap * sizeof *ni);
        if (!ni) {
            free(path);
            for (int k = 0; k < n_captions; k++)
                free(captions[k]);
            free(captions);
            free(caption_file);
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: more than %zu images", ds->dir, ds->n);
        }
        ds->items = ni;
        ds->cap = cap;
    }
    const lsdi_subset *sub = &ds->subsets[subset];
    ds->items[ds->n++] = (lsdi_item){path, captions, n_captions, caption_file, subset, sub->repeats, sub->is_class,
                                     0, 0};
    ds->subsets[subset].images++;
    return LSD_OK;
}

/* One caption, as the malloc'd array of one that items hold. */
static lsd_status push_one(lsd_dataset *ds, char *path, char *caption, char *caption_file, int subset)
{
    char **caps = caption ? malloc(sizeof *caps) : NULL;
    if (!caps) {
        free(path);
        free(caption);
        free(caption_file);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", ds->dir);
    }
    caps[0] = caption;
    return lsdi_dataset_push(ds, path, caps, 1, caption_file, subset);
}

static lsd_status add_subset(lsd_dataset *ds, const char *path, const char *caption, int repeats, int is_class,
                             int paired)
{
    lsdi_subset *ns = realloc(ds->subsets, (size_t)(ds->n_subsets + 1) * sizeof *ns);
    if (!ns)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", path);
    ds->subsets = ns;
    lsdi_subset *s = &ns[ds->n_subsets];
    *s = (lsdi_subset){strdup(path), caption ? strdup(caption) : NULL, repeats, is_class, paired, 0};
    if (!s->path || (caption && !s->caption)) {
        free(s->path);
        free(s->caption);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", path);
    }
    ds->n_subsets++;
    return LSD_OK;
}

typedef struct paths {
    char **v;
    size_t n, cap;
} paths;

static void paths_free(paths *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->v[i]);
    free(p->v);
    memset(p, 0, sizeof *p);
}

static lsd_status paths_push(paths *p, char *s)
{
    if (!s)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "listing images");
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        char **nv = p->n >= MAX_ITEMS ? NULL : realloc(p->v, cap * sizeof *nv);
        if (!nv) {
            free(s);
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "listing more than %zu images", p->n);
        }
        p->v = nv;
        p->cap = cap;
    }
    p->v[p->n++] = s;
    return LSD_OK;
}

static int by_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static lsd_status list_dir(const char *dir, const char *what, paths *out)
{
    DIR *d = opendir(dir);
    if (!d)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "%s %s: %s", what, dir, strerror(errno));
    lsd_status st = LSD_OK;
    struct dirent *e;
    while (st == LSD_OK && (e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            st = paths_push(out, lsdi_path_join(dir, e->d_name));
    closedir(d);
    if (st == LSD_OK && out->n)
        qsort(out->v, out->n, sizeof *out->v, by_str);
    return st;
}

/* Every image under dir, nested folders included, sorted by path. */
static lsd_status find_images(const char *dir, const char *what, int depth, paths *out)
{
    paths entries = {0};
    lsd_status st = list_dir(dir, what, &entries);
    for (size_t i = 0; st == LSD_OK && i < entries.n; i++) {
        char *p = entries.v[i];
        if (is_dir(p))
            st = depth < MAX_DEPTH ? find_images(p, what, depth + 1, out)
                                   : lsdi_error(LSD_ERR_UNSUPPORTED, "%s: folders nested over %d deep", p, MAX_DEPTH);
        else if (lsdi_is_image_name(p)) {
            st = paths_push(out, p);
            entries.v[i] = NULL;
        }
    }
    paths_free(&entries);
    if (st == LSD_OK && depth == 0 && out->n)
        qsort(out->v, out->n, sizeof *out->v, by_str);
    return st;
}

/* "stem<ext>" of an image path under caption_dir (NULL: beside the image) with the caption_extension rule
 * (NULL: ".caption", then ".txt"). *text NULL when none exists; *file the one read. */
static lsd_status read_caption_for(const lsd_dataset *ds, const char *img, const char *img_root,
                                   const char *caption_dir, char **text, char **file, char *tried, size_t tried_n)
{
    static const char *const defaults[] = {".caption", ".txt"};
    const char *const *exts = ds->p.caption_extension ? &ds->p.caption_extension : defaults;
    int n_ext = ds->p.caption_extension ? 1 : 2;
    const char *dot = strrchr(img, '.'), *rel = caption_dir ? img + strlen(img_root) + 1 : img;
    size_t stem = (size_t)(dot - rel);
    *text = *file = NULL;
    tried[0] = '\0';
    for (int k = 0; k < n_ext && !*text; k++) {
        size_t n = (caption_dir ? strlen(caption_dir) + 1 : 0) + stem + strlen(exts[k]) + 1;
        char *cp = malloc(n);
        if (!cp)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "caption path of %s", img);
        snprintf(cp, n, "%s%s%.*s%s", caption_dir ? caption_dir : "", caption_dir ? "/" : "", (int)stem, rel,
                 exts[k]);
        size_t at = strlen(tried);
        snprintf(tried + at, tried_n - at, "%s%s", k ? " or " : "", cp);
        lsd_status st = lsdi_caption_read(cp, text);
        if (st != LSD_OK || !*text)
            free(cp);
        else
            *file = cp;
        LSDI_TRY(st);
    }
    return LSD_OK;
}

/* Images of a folder with their captions from files (beside them, or mirrored under caption_dir); an image
 * without one gets `fallback` (kohya's folder caption) or, when NULL, is a problem unless allow_empty_captions. */
static lsd_status scan_captioned(lsd_dataset *ds, const char *dir, const char *caption_dir, const char *fallback,
                                 int subset, const char *what, lsdi_problems *pr)
{
    paths imgs = {0};
    lsd_status st = find_images(dir, what, 0, &imgs);
    char tried[1024];
    for (size_t i = 0; st == LSD_OK && i < imgs.n; i++) {
        char *text = NULL, *file = NULL;
        lsd_status cs = read_caption_for(ds, imgs.v[i], dir, caption_dir, &text, &file, tried, sizeof tried);
        if (cs == LSD_OK && !text && (fallback || ds->p.allow_empty_captions))
            text = strdup(fallback ? fallback : "");
        else if (cs == LSD_OK && !text)
            cs = lsdi_error(LSD_ERR_FORMAT, "%s: no caption (expected %s%s)", imgs.v[i], tried,
                            caption_dir ? "" : ", or a metadata.jsonl in the folder");
        if (cs == LSD_OK && !text)
            cs = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "caption of %s", imgs.v[i]);
        if (cs == LSD_OK)
            cs = lsdi_caption_check(ds, text, file ? file : imgs.v[i]);
        if (cs == LSD_OK) {
            st = push_one(ds, imgs.v[i], text, file, subset);
            imgs.v[i] = NULL;
            continue;
        }
        free(text);
        free(file);
        st = cs == LSD_ERR_OUT_OF_MEMORY ? cs : lsdi_problems_add(pr, cs);
    }
    paths_free(&imgs);
    return st;
}

static int safe_relative(const char *name)
{
    if (!*name || name[0] == '/' || strstr(name, "\\"))
        return 0;
    for (const char *p = name; p; p = strchr(p, '/')) {
        if (*p == '/')
            p++;
        if (!strncmp(p, "..", 2) && (p[2] == '/' || !p[2]))
            return 0;
    }
    return 1;
}

/* The caption of one metadata line: a string, or a list of strings (one is drawn per use, as diffusers'
 * tokenize_captions does); NULL in *caps with n 0 when the key is missing. */
static lsd_status metadata_caption(const cJSON *cap, const char *where, char ***caps, int *n)
{
    *caps = NULL;
    *n = 0;
    if (!cap)
        return LSD_OK;
    int count = cJSON_IsString(cap) ? 1 : cJSON_IsArray(cap) ? cJSON_GetArraySize(cap) : 0;
    if (count < 1)
        return lsdi_error(LSD_ERR_FORMAT, "%s: the caption must be a string or a non-empty list of strings", where);
    char **v = calloc((size_t)count, sizeof *v);
    if (!v)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", where);
    lsd_status st = LSD_OK;
    for (int k = 0; k < count && st == LSD_OK; k++) {
        const cJSON *e = cJSON_IsString(cap) ? cap : cJSON_GetArrayItem(cap, k);
        if (!cJSON_IsString(e))
            st = lsdi_error(LSD_ERR_FORMAT, "%s: caption list item %d is not a string", where, k);
        else if (!lsdi_utf8_valid(e->valuestring, strlen(e->valuestring)))
            st = lsdi_error(LSD_ERR_FORMAT, "%s: caption is not UTF-8 text", where);
        else if (!(v[k] = strdup(e->valuestring)))
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", where);
        else {
            char *s = v[k];
            size_t a = strspn(s, " \t\r\n"), len = strlen(s);
            while (len > a && strchr(" \t\r\n", s[len - 1]))
                len--;
            memmove(s, s + a, len - a);
            s[len - a] = '\0';
        }
    }
    if (st != LSD_OK) {
        for (int k = 0; k < count; k++)
            free(v[k]);
        free(v);
        return st;
    }
    *caps = v;
    *n = count;
    return LSD_OK;
}

static lsd_status metadata_line(lsd_dataset *ds, const char *meta_path, int line, const char *text, lsdi_problems *pr)
{
    cJSON *j = cJSON_Parse(text);
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(j, "file_name");
    char where[600];
    lsd_status st = LSD_OK;
    if (!j || !cJSON_IsObject(j))
        st = lsdi_error(LSD_ERR_FORMAT, "%s: line %d is not a JSON object", meta_path, line);
    else if (!cJSON_IsString(fn) || !safe_relative(fn->valuestring))
        st = lsdi_error(LSD_ERR_FORMAT, "%s: line %d: \"file_name\" must be a relative path inside the folder",
                        meta_path, line);
    if (st != LSD_OK) {
        cJSON_Delete(j);
        return st;
    }
    snprintf(where, sizeof where, "%s: line %d (%s)", meta_path, line, fn->valuestring);
    char **caps = NULL;
    int n = 0;
    lsd_status cs = metadata_caption(cJSON_GetObjectItemCaseSensitive(j, ds->p.caption_column), where, &caps, &n);
    if (cs == LSD_OK && !n && !ds->p.allow_empty_captions)
        cs = lsdi_error(LSD_ERR_FORMAT, "%s: no \"%s\" caption", where, ds->p.caption_column);
    for (int k = 0; cs == LSD_OK && k < n; k++)
        cs = lsdi_caption_check(ds, caps[k], where);
    char *path = cs == LSD_OK ? lsdi_path_join(ds->dir, fn->valuestring) : NULL;
    if (cs == LSD_OK && !n && (caps = malloc(sizeof *caps)) != NULL && (caps[0] = strdup("")) != NULL)
        n = 1;
    if (cs == LSD_OK && (!path || !n))
        cs = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", where);
    cJSON_Delete(j);
    if (cs == LSD_OK)
        return lsdi_dataset_push(ds, path, caps, n, NULL, 0);
    free(path);
    for (int k = 0; k < n; k++)
        free(caps[k]);
    free(caps);
    return cs == LSD_ERR_OUT_OF_MEMORY ? cs : lsdi_problems_add(pr, cs);
}

static int item_by_path(const void *a, const void *b)
{
    return strcmp(((const lsdi_item *)a)->path, ((const lsdi_item *)b)->path);
}

static lsd_status scan_metadata(lsd_dataset *ds, const char *meta_path, char *text, lsdi_problems *pr)
{
    LSDI_TRY(add_subset(ds, ds->dir, NULL, 1, 0, 0));
    size_t skip = !strncmp(text, "\xEF\xBB\xBF", 3) ? 3 : 0;
    int line = 0;
    lsd_status st = LSD_OK;
    for (char *save = NULL, *l = strtok_r(text + skip, "\n", &save); l && st == LSD_OK;
         l = strtok_r(NULL, "\n", &save)) {
        line++; /* strtok_r skips empty lines, which only matters for the numbering of blank runs */
        if (l[strspn(l, " \t\r")])
            st = metadata_line(ds, meta_path, line, l, pr);
    }
    if (st == LSD_OK && ds->n) /* qsort's base must not be NULL, even for no items */
        qsort(ds->items, ds->n, sizeof *ds->items, item_by_path);
    return st;
}

static lsd_status scan_folder(lsd_dataset *ds, lsdi_problems *pr)
{
    char *meta_path = lsdi_path_join(ds->dir, "metadata.jsonl"), *meta = NULL;
    if (!meta_path)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", ds->dir);
    lsd_status st = lsdi_read_file(meta_path, MAX_METADATA, &meta, NULL);
    if (st == LSD_OK)
        st = scan_metadata(ds, meta_path, meta, pr);
    else if (st == LSD_ERR_NOT_FOUND && (st = add_subset(ds, ds->dir, NULL, 1, 0, 0)) == LSD_OK)
        st = scan_captioned(ds, ds->dir, NULL, NULL, 0, "train_data_dir", pr);
    free(meta);
    free(meta_path);
    return st;
}

/* dir's parent joined with leaf ("Images" -> "ImageCaptions" beside it). */
static char *sibling(const char *dir, const char *leaf)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    while (n && dir[n - 1] != '/')
        n--;
    size_t m = n + strlen(leaf) + 2;
    char *s = malloc(m);
    if (s)
        snprintf(s, m, "%.*s%s", (int)n, n ? dir : "./", leaf);
    return s;
}

static const char *base_name(const char *dir, size_t *len)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t b = n;
    while (b && dir[b - 1] != '/')
        b--;
    *len = n - b;
    return dir + b;
}

static int is_named(const char *dir, const char *name)
{
    size_t n;
    const char *b = base_name(dir, &n);
    return n == strlen(name) && !strncmp(b, name, n);
}

/* Images/ and its captions folder: given Dataset/ (holding Images/), or Images/ itself. */
static lsd_status seed_dirs(const lsd_dataset *ds, char **images, char **captions)
{
    char *inside = lsdi_path_join(ds->dir, "Images");
    int parent = inside && is_dir(inside);
    *images = parent ? inside : strdup(ds->dir);
    if (!parent)
        free(inside);
    if (ds->p.caption_data_dir)
        *captions = strdup(ds->p.caption_data_dir);
    else
        *captions = parent ? lsdi_path_join(ds->dir, "ImageCaptions") : sibling(ds->dir, "ImageCaptions");
    if (!*images || !*captions)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", ds->dir);
    if (!is_dir(*captions))
        return lsdi_error(LSD_ERR_NOT_FOUND, "%s: no captions folder %s (%s)", ds->dir, *captions,
                          ds->p.caption_data_dir ? "caption_data_dir" : "ImageCaptions/ beside Images/");
    return LSD_OK;
}

static lsd_status scan_seed(lsd_dataset *ds, lsdi_problems *pr)
{
    char *images = NULL, *captions = NULL;
    lsd_status st = seed_dirs(ds, &images, &captions);
    if (st == LSD_OK)
        st = add_subset(ds, images, NULL, 1, 0, 0);
    if (st == LSD_OK)
        st = scan_captioned(ds, images, captions, NULL, 0, "Images folder", pr);
    free(images);
    free(captions);
    return st;
}

/* kohya's extract_dreambooth_params: "N_caption" with N an integer; 0 when the name has no such prefix. */
static int kohya_repeats(const char *name, const char **caption)
{
    const char *us = strchr(name, '_');
    size_t digits = strspn(name, "0123456789");
    *caption = us ? us + 1 : "";
    if (!digits || digits != (size_t)((us ? us : name + strlen(name)) - name) || digits > 9)
        return 0;
    return atoi(name);
}

/* The N_name folders of a kohya train_data_dir or reg_data_dir, in name order. */
static lsd_status scan_kohya_dir(lsd_dataset *ds, const char *dir, int is_class, lsdi_problems *pr)
{
    const char *what = is_class ? "reg_data_dir" : "train_data_dir";
    paths entries = {0};
    lsd_status st = list_dir(dir, what, &entries);
    size_t loose = 0;
    for (size_t i = 0; st == LSD_OK && i < entries.n; i++) {
        size_t n;
        const char *name = base_name(entries.v[i], &n), *caption;
        if (!is_dir(entries.v[i])) {
            loose += lsdi_is_image_name(name);
            continue;
        }
        int repeats = kohya_repeats(name, &caption);
        if (repeats < 1) {
            lsdi_log(LSD_LOG_WARN, "%s: ignored: not an N_name folder (N repeats >= 1)", entries.v[i]);
            continue;
        }
        int subset = ds->n_subsets;
        size_t bad = pr->count;
        st = add_subset(ds, entries.v[i], caption, repeats, is_class, 0);
        if (st == LSD_OK)
            st = scan_captioned(ds, entries.v[i], NULL, caption, subset, what, pr);
        if (st == LSD_OK && !ds->subsets[subset].images && pr->count == bad)
            lsdi_log(LSD_LOG_WARN, "%s: no images", entries.v[i]);
    }
    if (loose)
        lsdi_log(LSD_LOG_WARN, "%s: %zu images directly in the folder are ignored: kohya's layout reads only its "
                 "N_name/ folders", dir, loose);
    paths_free(&entries);
    return st;
}

/* kohya's DreamBoothDataset: regularisation images are registered, repeats and all, until they match the
 * training images with repeats; further rounds add one repeat an image. Images never reached get no draws. */
static void balance_reg(lsd_dataset *ds)
{
    size_t train = 0, reg = 0;
    for (size_t i = 0; i < ds->n; i++)
        *(ds->items[i].is_class ? &reg : &train) += (size_t)ds->items[i].repeats;
    if (!reg)
        return;
    size_t n = 0;
    for (size_t i = 0; i < ds->n; i++)
        if (ds->items[i].is_class) {
            if (n >= train)
                ds->items[i].repeats = 0;
            else
                n += (size_t)ds->items[i].repeats;
        }
    while (n < train)
        for (size_t i = 0; i < ds->n && n < train; i++)
            if (ds->items[i].is_class) {
                ds->items[i].repeats++;
                n++;
            }
}

static lsd_status scan_kohya(lsd_dataset *ds, lsdi_problems *pr)
{
    LSDI_TRY(scan_kohya_dir(ds, ds->dir, 0, pr));
    if (ds->p.reg_data_dir)
        LSDI_TRY(scan_kohya_dir(ds, ds->p.reg_data_dir, 1, pr));
    balance_reg(ds);
    return LSD_OK;
}

/* Every image of the folder captioned by the prompt (the script reads no caption files). */
static lsd_status scan_prompted(lsd_dataset *ds, const char *dir, const char *prompt, int is_class, const char *what)
{
    int subset = ds->n_subsets;
    LSDI_TRY(lsdi_caption_check(ds, prompt, is_class ? "class_prompt" : "instance_prompt"));
    LSDI_TRY(add_subset(ds, dir, prompt, 1, is_class, is_class));
    paths imgs = {0};
    lsd_status st = find_images(dir, what, 0, &imgs);
    for (size_t i = 0; st == LSD_OK && i < imgs.n; i++) {
        char *c = strdup(prompt);
        st = c ? push_one(ds, imgs.v[i], c, NULL, subset) : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", dir);
        imgs.v[i] = NULL;
    }
    paths_free(&imgs);
    return st;
}

static lsd_status scan_dreambooth(lsd_dataset *ds)
{
    if (!ds->p.instance_prompt)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: the DreamBooth layout needs instance_prompt", ds->dir);
    return scan_prompted(ds, ds->dir, ds->p.instance_prompt, 0, "instance_data_dir");
}

static lsd_status scan_layout(lsd_dataset *ds, lsdi_problems *pr)
{
    switch (ds->layout) {
    case LSD_LAYOUT_SEED: return scan_seed(ds, pr);
    case LSD_LAYOUT_KOHYA: return scan_kohya(ds, pr);
    case LSD_LAYOUT_DREAMBOOTH: return scan_dreambooth(ds);
    default: return scan_folder(ds, pr);
    }
}

static int has_kohya_folder(const char *dir)
{
    paths entries = {0};
    int found = 0;
    if (list_dir(dir, "train_data_dir", &entries) == LSD_OK)
        for (size_t i = 0; i < entries.n && !found; i++) {
            size_t n;
            const char *caption, *name = base_name(entries.v[i], &n);
            found = kohya_repeats(name, &caption) > 0 && is_dir(entries.v[i]);
        }
    paths_free(&entries);
    return found;
}

static lsd_dataset_layout detect(const lsd_dataset *ds)
{
    const lsd_dataset_params *p = &ds->p;
    if (p->instance_prompt)
        return LSD_LAYOUT_DREAMBOOTH;
    char *meta = lsdi_path_join(ds->dir, "metadata.jsonl"), *images = lsdi_path_join(ds->dir, "Images");
    char *captions = sibling(ds->dir, "ImageCaptions");
    struct stat sb;
    lsd_dataset_layout l = meta && stat(meta, &sb) == 0 ? LSD_LAYOUT_FOLDER
                           : p->caption_data_dir || (images && is_dir(images)) ||
                                   (is_named(ds->dir, "Images") && captions && is_dir(captions))
                               ? LSD_LAYOUT_SEED
                           : p->reg_data_dir || has_kohya_folder(ds->dir) ? LSD_LAYOUT_KOHYA
                                                                          : LSD_LAYOUT_FOLDER;
    free(meta);
    free(images);
    free(captions);
    return l;
}

/* Options that only one layout reads are an error elsewhere, rather than silently unused. */
static lsd_status check_options(const lsd_dataset *ds)
{
    const lsd_dataset_params *p = &ds->p;
    const char *opt = ds->layout != LSD_LAYOUT_KOHYA && p->reg_data_dir ? "reg_data_dir"
                      : ds->layout != LSD_LAYOUT_SEED && p->caption_data_dir ? "caption_data_dir"
                      : ds->layout != LSD_LAYOUT_DREAMBOOTH && p->instance_prompt ? "instance_prompt"
                                                                                  : NULL;
    if (opt)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s does not apply to the %s layout", ds->dir, opt,
                          lsd_dataset_layout_name(ds->layout));
    if (p->class_data_dir && !p->class_prompt)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "class_data_dir %s needs class_prompt", p->class_data_dir);
    return LSD_OK;
}

lsd_status lsdi_layout_scan(lsd_dataset *ds, lsdi_problems *pr)
{
    struct stat sb;
    if (stat(ds->dir, &sb) != 0)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "train_data_dir %s: %s", ds->dir,
                          strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "train_data_dir %s: not a directory", ds->dir);
    ds->layout = ds->p.layout == LSD_LAYOUT_AUTO ? detect(ds) : ds->p.layout;
    LSDI_TRY(check_options(ds));
    LSDI_TRY(scan_layout(ds, pr));
    return ds->p.class_data_dir ? scan_prompted(ds, ds->p.class_data_dir, ds->p.class_prompt, 1, "class_data_dir")
                                : LSD_OK;
}
