#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "test.h"

int check_status_impl(const char *file, int line, const char *expr, lsd_status got, lsd_status want,
                      const char *sub)
{
    if (got != want) {
        test_fail(file, line, "%s: status %d (%s), wanted %d (%s); message: %s", expr, got, lsd_status_string(got),
                  want, lsd_status_string(want), lsd_last_error());
        return 0;
    }
    if (want != LSD_OK) {
        const char *msg = lsd_last_error();
        if (!msg[0] || (sub && !strstr(msg, sub))) {
            test_fail(file, line, "%s: message \"%s\" lacks \"%s\"", expr, msg, sub ? sub : "(non-empty)");
            return 0;
        }
    }
    return 1;
}

double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d)
            m = d != d ? INFINITY : d;
    }
    return m;
}

int check_close_impl(const char *file, int line, const char *what, const float *a, const float *b, size_t n,
                     double tol)
{
    if (!a || !b) {
        test_fail(file, line, "%s: missing data", what);
        return 0;
    }
    size_t worst = 0;
    double m = -1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d)
            d = INFINITY;
        if (d > m) {
            m = d;
            worst = i;
        }
    }
    if (m > tol) {
        test_fail(file, line, "%s: max abs diff %.3g > %.3g at %zu (%.6g vs %.6g)", what, m, tol, worst,
                  (double)a[worst], (double)b[worst]);
        return 0;
    }
    return 1;
}

static const lsdi_st_tensor *find_tensor(const char *path, const char *name, lsdi_st_file **f)
{
    if (lsdi_st_open(path, f) != LSD_OK) {
        test_fail(__FILE__, __LINE__, "cannot open %s: %s", path, lsd_last_error());
        return NULL;
    }
    const lsdi_st_tensor *t = lsdi_st_find(*f, name);
    if (!t) {
        test_fail(__FILE__, __LINE__, "%s: no tensor %s", path, name);
        lsdi_st_close(*f);
    }
    return t;
}

float *load_f32(const char *path, const char *name, int64_t *shape, int *ndim, size_t *numel)
{
    lsdi_st_file *f;
    const lsdi_st_tensor *t = find_tensor(path, name, &f);
    if (!t)
        return NULL;
    float *out = malloc((t->numel ? t->numel : 1) * sizeof(float));
    lsdi_st_to_f32(t, out);
    if (shape)
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    if (ndim)
        *ndim = t->ndim;
    if (numel)
        *numel = (size_t)t->numel;
    lsdi_st_close(f);
    return out;
}

int64_t *load_i64(const char *path, const char *name, size_t *numel)
{
    lsdi_st_file *f;
    const lsdi_st_tensor *t = find_tensor(path, name, &f);
    if (!t)
        return NULL;
    int64_t *out = malloc((t->numel ? t->numel : 1) * sizeof(int64_t));
    if (t->dtype == LSDI_ST_I64) {
        memcpy(out, t->data, t->numel * sizeof(int64_t));
    } else {
        float *tmp = malloc((t->numel ? t->numel : 1) * sizeof(float));
        lsdi_st_to_f32(t, tmp);
        for (uint64_t i = 0; i < t->numel; i++)
            out[i] = (int64_t)tmp[i];
        free(tmp);
    }
    if (numel)
        *numel = (size_t)t->numel;
    lsdi_st_close(f);
    return out;
}

char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        test_fail(__FILE__, __LINE__, "cannot read %s", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    buf[got] = 0;
    if (len)
        *len = got;
    return buf;
}

int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len;
}

void make_captioned_png(const char *dir, const char *name, int w, int h, const char *caption)
{
    char path[512];
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            px[(y * w + x) * 3] = (uint8_t)(6 * x);
            px[(y * w + x) * 3 + 1] = (uint8_t)y;
            px[(y * w + x) * 3 + 2] = 200;
        }
    lsd_image img = {sizeof img, w, h, 3, px};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK_OK(lsd_image_save_png(path, &img, NULL, NULL, 0));
    free(px);
    if (caption) {
        char *dot = strrchr(path, '.');
        strcpy(dot, ".txt");
        write_file(path, caption, strlen(caption));
    }
}

const char *tiny_dataset(void)
{
    const char *d = temp_dir();
    static const char *caps[] = {"a photo of a cat", "a red car", "two dogs", "a blue house"};
    for (int i = 0; i < 4; i++) {
        char name[16];
        snprintf(name, sizeof name, "%d.png", i);
        make_captioned_png(d, name, 32 + 8 * i, 32, caps[i]);
    }
    return d;
}

int exists_in(const char *dir, const char *leaf)
{
    char path[700];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, leaf);
    return stat(path, &sb) == 0;
}
