#include "data_util.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <webp/decode.h>
#include <webp/encode.h>

#include "data/data.h"

static char *slot(void)
{
    static char bufs[8][1024];
    static int k;
    return bufs[k++ % 8];
}

/* Folders are kept longer by callers than files: a ring of their own. */
static char *dir_slot(void)
{
    static char bufs[32][1024];
    static int k;
    return bufs[k++ % 32];
}

static void make_parents(char *path)
{
    for (char *s = path + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            mkdir(path, 0777);
            *s = '/';
        }
}

const char *put_dir(const char *dir, const char *rel)
{
    char *p = dir_slot();
    snprintf(p, 1024, "%s/%s/", dir, rel);
    make_parents(p);
    p[strlen(p) - 1] = '\0';
    return p;
}

const char *put_text(const char *dir, const char *rel, const char *text, int n)
{
    char *p = slot();
    snprintf(p, 1024, "%s/%s", dir, rel);
    make_parents(p);
    CHECK(write_file(p, text, n < 0 ? strlen(text) : (size_t)n), "writing %s", p);
    return p;
}

const char *put_image(const char *dir, const char *rel, int w, int h, img_format fmt, int seed)
{
    char *p = slot();
    snprintf(p, 1024, "%s/%s", dir, rel);
    make_parents(p);
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            px[(y * w + x) * 3] = (uint8_t)(6 * x);
            px[(y * w + x) * 3 + 1] = (uint8_t)(y + seed);
            px[(y * w + x) * 3 + 2] = (uint8_t)(200 - 3 * seed);
        }
    if (fmt == IMG_PNG) {
        lsd_image img = {sizeof img, w, h, 3, px};
        CHECK_OK(lsd_image_save_png(p, &img, NULL, NULL, 0));
    } else if (fmt == IMG_JPEG) {
        tjhandle tj = tjInitCompress();
        unsigned char *buf = NULL;
        unsigned long len = 0;
        CHECK(tj && tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, &len, TJSAMP_444, 100, 0) == 0, "jpeg %s", p);
        CHECK(write_file(p, buf, len));
        tjFree(buf);
        tjDestroy(tj);
    } else {
        uint8_t *out = NULL;
        size_t len = WebPEncodeRGB(px, w, h, w * 3, 100, &out);
        CHECK(len > 0 && write_file(p, out, len), "webp %s", p);
        WebPFree(out);
    }
    free(px);
    return p;
}

lsd_dataset *open_ok(const char *dir, const lsd_dataset_params *p)
{
    lsd_dataset *ds = NULL;
    if (!CHECK_OK(lsd_dataset_open(dir, p, &ds)))
        return NULL;
    return ds;
}

long item_index(lsd_dataset *ds, const char *suffix)
{
    size_t k = strlen(suffix);
    for (size_t i = 0; ds && i < ds->n; i++) {
        size_t m = strlen(ds->items[i].path);
        if (m >= k && !strcmp(ds->items[i].path + m - k, suffix))
            return (long)i;
    }
    CHECK(0, "no item ends with %s", suffix);
    return -1;
}

const char *put_png_header(const char *dir, const char *rel, int w, int h)
{
    uint8_t b[33] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    for (int k = 0; k < 4; k++) {
        b[16 + k] = (uint8_t)((unsigned)w >> (24 - 8 * k));
        b[20 + k] = (uint8_t)((unsigned)h >> (24 - 8 * k));
    }
    b[24] = 8; /* bit depth; colour type 2 (RGB) next */
    b[25] = 2;
    return put_text(dir, rel, (const char *)b, (int)sizeof b);
}
