/* A folder of captioned images, transformed as the script's torchvision pipeline: Resize(resolution, bilinear) of
 * the shortest side, CenterCrop or RandomCrop, optional RandomHorizontalFlip, ToTensor, Normalize(0.5, 0.5). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"
#include "io/file.h"
#include "train/train.h"

#define MAX_ITEMS 10000000
#define MAX_CAPTION (1 << 20)
#define MAX_METADATA (256u << 20)

typedef struct item {
    char *path;
    char *caption;
} item;

struct lsd_dataset {
    char *dir;
    lsd_dataset_params p;
    char *caption_extension, *caption_column;
    item *items;
    size_t n, cap;
};

uint64_t lsdi_train_seed(uint64_t seed, uint64_t a, uint64_t b)
{
    uint64_t z = seed ^ (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Whole small text file; *out NULL with LSD_OK when it does not exist. */
static lsd_status read_text(const char *path, size_t limit, char **out)
{
    lsd_status st = lsdi_read_file(path, limit, out, NULL);
    return st == LSD_ERR_NOT_FOUND ? LSD_OK : st;
}

static uint64_t next_u64(uint64_t *state)
{
    *state += 0x9E3779B97F4A7C15ull;
    return lsdi_train_seed(*state, 0, 0);
}

/* Uniform in [0, n) (n > 0), without modulo bias worth speaking of for dataset sizes. */
static size_t below(uint64_t *state, size_t n)
{
    return (size_t)((next_u64(state) >> 11) * (1.0 / 9007199254740992.0) * (double)n);
}

void lsdi_shuffle(size_t *idx, size_t n, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = below(&st, i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

void lsd_dataset_params_init(lsd_dataset_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->resolution = 512;
    p->caption_extension = ".txt";
    p->caption_column = "text";
    p->caption_separator = ", ";
    p->min_bucket_reso = 256;
    p->max_bucket_reso = 1024;
    p->bucket_reso_steps = 64;
}

static int is_image(const char *name)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".webp"};
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof ext / sizeof ext[0]; i++)
        if (!strcasecmp(dot, ext[i]))
            return 1;
    return 0;
}

static char *strip(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

static lsd_status push(lsd_dataset *ds, char *path, char *caption)
{
    if (ds->n == ds->cap) {
        size_t cap = ds->cap ? ds->cap * 2 : 64;
        item *ni = ds->n >= MAX_ITEMS ? NULL : realloc(ds->items, cap * sizeof *ni);
        if (!ni) {
            free(path);
            free(caption);
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: more than %zu items", ds->dir, ds->n);
        }
        ds->items = ni;
        ds->cap = cap;
    }
    ds->items[ds->n].path = path;
    ds->items[ds->n].caption = caption;
    ds->n++;
    return LSD_OK;
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const item *)a)->path, ((const item *)b)->path);
}

/* A caption file beside the image: name.png -> name<caption_extension>. */
static lsd_status caption_beside(const lsd_dataset *ds, const char *img, char **out)
{
    const char *dot = strrchr(img, '.');
    size_t stem = (size_t)(dot - img), n = stem + strlen(ds->caption_extension) + 1;
    char *cp = malloc(n);
    if (!cp)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "caption path of %s", img);
    snprintf(cp, n, "%.*s%s", (int)stem, img, ds->caption_extension);
    char *text = NULL;
    lsd_status st = read_text(cp, MAX_CAPTION, &text);
    free(cp);
    if (st != LSD_OK)
        return st;
    if (!text) {
        if (!ds->p.allow_empty_captions)
            return lsdi_error(LSD_ERR_FORMAT, "%s: no caption (expected %.*s%s beside it, or a metadata.jsonl)", img,
                              (int)stem, img, ds->caption_extension);
        text = strdup("");
        if (!text)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "caption of %s", img);
    }
    char *s = strip(text);
    memmove(text, s, strlen(s) + 1);
    *out = text;
    return LSD_OK;
}

static lsd_status scan_folder(lsd_dataset *ds)
{
    DIR *d = opendir(ds->dir);
    if (!d)
        return lsdi_error(errno == ENOENT ? LSD_ERR_NOT_FOUND : LSD_ERR_IO, "train_data_dir %s: %s", ds->dir,
                          strerror(errno));
    lsd_status st = LSD_OK;
    struct dirent *e;
    while (st == LSD_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !is_image(e->d_name))
            continue;
        char *path = lsdi_path_join(ds->dir, e->d_name);
        st = path ? push(ds, path, NULL) : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", ds->dir);
    }
    closedir(d);
    if (st != LSD_OK)
        return st;
    qsort(ds->items, ds->n, sizeof *ds->items, by_path);
    for (size_t i = 0; i < ds->n && st == LSD_OK; i++)
        st = caption_beside(ds, ds->items[i].path, &ds->items[i].caption);
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

static lsd_status scan_metadata(lsd_dataset *ds, const char *meta_path, char *text)
{
    int line = 0;
    lsd_status st = LSD_OK;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l && st == LSD_OK; l = strtok_r(NULL, "\n", &save)) {
        line++;
        if (!*strip(l))
            continue;
        cJSON *j = cJSON_Parse(l);
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(j, "file_name");
        const cJSON *cap = cJSON_GetObjectItemCaseSensitive(j, ds->caption_column);
        if (!j || !cJSON_IsObject(j))
            st = lsdi_error(LSD_ERR_FORMAT, "%s: line %d is not a JSON object", meta_path, line);
        else if (!cJSON_IsString(fn) || !safe_relative(fn->valuestring))
            st = lsdi_error(LSD_ERR_FORMAT, "%s: line %d: \"file_name\" must be a relative path inside the folder",
                            meta_path, line);
        else if (!cJSON_IsString(cap) && !(ds->p.allow_empty_captions && !cap))
            st = lsdi_error(LSD_ERR_FORMAT, "%s: line %d (%s): no string \"%s\" caption", meta_path, line,
                            fn->valuestring, ds->caption_column);
        else {
            char *path = lsdi_path_join(ds->dir, fn->valuestring);
            char *c = strdup(cJSON_IsString(cap) ? cap->valuestring : "");
            if (!path || !c) {
                free(path);
                free(c);
                st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", meta_path);
            } else {
                memmove(c, strip(c), strlen(strip(c)) + 1);
                st = push(ds, path, c);
            }
        }
        cJSON_Delete(j);
    }
    if (st == LSD_OK)
        qsort(ds->items, ds->n, sizeof *ds->items, by_path);
    return st;
}

lsd_status lsd_dataset_open(const char *dir, const lsd_dataset_params *params, lsd_dataset **out)
{
    if (!dir || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_open: dir or out is NULL");
    *out = NULL;
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    if (params) {
        if (params->struct_size < sizeof(size_t) || params->struct_size > sizeof p)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_open: params struct_size %zu not in [%zu, %zu]",
                              params->struct_size, sizeof(size_t), sizeof p);
        memcpy(&p, params, params->struct_size);
        p.struct_size = sizeof p;
    }
    if (p.resolution < 8 || p.resolution > 8192)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_open: resolution %d not in [8, 8192]", p.resolution);
    lsd_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "dataset %s", dir);
    ds->p = p;
    ds->dir = strdup(dir);
    ds->caption_extension = strdup(p.caption_extension ? p.caption_extension : ".txt");
    ds->caption_column = strdup(p.caption_column ? p.caption_column : "text");
    if (!ds->dir || !ds->caption_extension || !ds->caption_column) {
        lsd_dataset_free(ds);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "dataset %s", dir);
    }
    ds->p.caption_extension = ds->caption_extension;
    ds->p.caption_column = ds->caption_column;
    char *meta_path = lsdi_path_join(dir, "metadata.jsonl"), *meta = NULL;
    lsd_status st = meta_path ? read_text(meta_path, MAX_METADATA, &meta) : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s", dir);
    if (st == LSD_OK)
        st = meta ? scan_metadata(ds, meta_path, meta) : scan_folder(ds);
    free(meta);
    free(meta_path);
    if (st == LSD_OK && ds->n == 0)
        st = lsdi_error(LSD_ERR_NOT_FOUND, "train_data_dir %s: no images (.png, .jpg, .jpeg, .webp)", dir);
    if (st != LSD_OK) {
        lsd_dataset_free(ds);
        return st;
    }
    *out = ds;
    return LSD_OK;
}

size_t lsd_dataset_size(const lsd_dataset *ds)
{
    return ds ? ds->n : 0;
}

const char *lsdi_dataset_caption(const lsd_dataset *ds, size_t index)
{
    return index < ds->n ? ds->items[index].caption : "";
}

void lsd_dataset_free(lsd_dataset *ds)
{
    if (!ds)
        return;
    for (size_t i = 0; i < ds->n; i++) {
        free(ds->items[i].path);
        free(ds->items[i].caption);
    }
    free(ds->items);
    free(ds->dir);
    free(ds->caption_extension);
    free(ds->caption_column);
    free(ds);
}

/* Source coordinate of output pixel i when n_in pixels are resized to n_out (PIL/torch align_corners=False). */
static void taps(int i, int n_in, int n_out, int *i0, int *i1, float *w1)
{
    double x = ((double)i + 0.5) * n_in / n_out - 0.5;
    if (x < 0)
        x = 0;
    int a = (int)x;
    if (a > n_in - 1)
        a = n_in - 1;
    *i0 = a;
    *i1 = a + 1 < n_in ? a + 1 : n_in - 1;
    *w1 = (float)(x - a);
}

lsd_status lsdi_dataset_load(lsd_dataset *ds, size_t index, int res, int center_crop, int random_flip,
                             uint64_t seed, float *out, lsd_dataset_item *info)
{
    if (index >= ds->n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "dataset %s: index %zu >= size %zu", ds->dir, index, ds->n);
    lsd_image img = {sizeof img, 0, 0, 0, NULL};
    LSDI_TRY(lsd_image_load(ds->items[index].path, &img));
    int w = img.width, h = img.height;
    /* Resize(res): the shortest side becomes res, the other keeps the aspect ratio (truncated, as torchvision). */
    int rw = w <= h ? res : (int)((int64_t)res * w / h), rh = w <= h ? (int)((int64_t)res * h / w) : res;
    if (rw < res)
        rw = res;
    if (rh < res)
        rh = res;
    uint64_t rng = lsdi_train_seed(seed, index, 0x5EED);
    int top = (int)lround((rh - res) / 2.0), left = (int)lround((rw - res) / 2.0);
    if (!center_crop) {
        top = (int)below(&rng, (size_t)(rh - res + 1));
        left = (int)below(&rng, (size_t)(rw - res + 1));
    }
    int flip = random_flip && (next_u64(&rng) >> 63);
    size_t plane = (size_t)res * res;
    for (int y = 0; y < res; y++) {
        int y0, y1;
        float fy;
        taps(y + top, h, rh, &y0, &y1, &fy);
        for (int x = 0; x < res; x++) {
            int x0, x1;
            float fx;
            taps(x + left, w, rw, &x0, &x1, &fx);
            int ox = flip ? res - 1 - x : x;
            for (int c = 0; c < 3; c++) {
                const uint8_t *d = img.data;
                float a = d[((size_t)y0 * w + x0) * 3 + c], b = d[((size_t)y0 * w + x1) * 3 + c];
                float e = d[((size_t)y1 * w + x0) * 3 + c], f = d[((size_t)y1 * w + x1) * 3 + c];
                float v = (a + (b - a) * fx) * (1 - fy) + (e + (f - e) * fx) * fy;
                out[c * plane + (size_t)y * res + ox] = v / 127.5f - 1.0f;
            }
        }
    }
    lsd_image_release(&img);
    if (info) {
        info->caption = ds->items[index].caption;
        info->path = ds->items[index].path;
        info->width = info->height = res;
        info->crop_left = left;
        info->crop_top = top;
        info->flipped = flip;
    }
    return LSD_OK;
}

lsd_status lsd_dataset_get(lsd_dataset *ds, size_t index, uint64_t seed, lsd_dataset_item *item)
{
    if (!ds || !item)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_get: dataset or item is NULL");
    int res = ds->p.resolution;
    float *px = malloc((size_t)3 * res * res * sizeof *px);
    if (!px)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_dataset_get: %dx%d pixels", res, res);
    lsd_dataset_item it = {.struct_size = sizeof it};
    lsd_status st = lsdi_dataset_load(ds, index, res, ds->p.center_crop, ds->p.random_flip, seed, px, &it);
    if (st != LSD_OK) {
        free(px);
        return st;
    }
    it.pixels = px;
    *item = it;
    return LSD_OK;
}

void lsd_dataset_item_release(lsd_dataset_item *item)
{
    if (!item)
        return;
    free(item->pixels);
    item->pixels = NULL;
}
