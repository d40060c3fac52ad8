/* Checked before step one: image headers read at open (each format, EXIF orientation, headers past the first
 * 64 KiB), every bad file listed in one error (20, then a count), lsd_dataset_verify decoding every image
 * (progress, cancel), and output_dir created and probed. */
#include <stdlib.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "data/data.h"
#include "data_util.h"
#include "io/image.h"

/* A 17x9 JPEG with `extra` bytes of segments inserted after SOI: an EXIF orientation (when orient > 0) and
 * padding APP2 segments. */
static const char *jpeg_with_segments(const char *dir, const char *name, int orient, size_t padding)
{
    const char *plain = put_image(dir, name, 17, 9, IMG_JPEG, 0);
    size_t n = 0;
    char *src = read_file(plain, &n);
    size_t cap = n + padding + 64 + 4 * (padding / 60000 + 1);
    uint8_t *out = malloc(cap), *p = out;
    if (!src || !out) {
        free(src);
        free(out);
        return plain;
    }
    *p++ = 0xFF;
    *p++ = 0xD8;
    if (orient > 0) {
        static const uint8_t tiff_head[] = {'E', 'x', 'i', 'f', 0, 0, 'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1,
                                            0x01, 0x12, 0, 3, 0, 0, 0, 1};
        uint8_t seg[4 + sizeof tiff_head + 8] = {0xFF, 0xE1, 0, (uint8_t)(2 + sizeof tiff_head + 8)};
        memcpy(seg + 4, tiff_head, sizeof tiff_head);
        uint8_t *v = seg + 4 + sizeof tiff_head;
        v[0] = 0;
        v[1] = (uint8_t)orient; /* value (short, left-justified), then 4 bytes of next-IFD offset 0 */
        memset(v + 2, 0, 6);
        memcpy(p, seg, sizeof seg);
        p += sizeof seg;
    }
    for (size_t left = padding; left > 0;) {
        size_t k = left > 60000 ? 60000 : left;
        *p++ = 0xFF;
        *p++ = 0xE2;
        *p++ = (uint8_t)((k + 2) >> 8);
        *p++ = (uint8_t)(k + 2);
        memset(p, 'x', k);
        p += k;
        left -= k;
    }
    memcpy(p, src + 2, n - 2);
    p += n - 2;
    write_file(plain, out, (size_t)(p - out));
    free(src);
    free(out);
    return plain;
}

TEST(data_check_header_probes)
{
    const char *d = temp_dir();
    static const struct {
        const char *name;
        int kind; /* 0 png, 1 jpeg, 2 webp, 3 jpeg rotated, 4 jpeg with 120 KB before its frame header */
        int w, h;
    } cases[] = {{"p.png", 0, 17, 9}, {"j.jpg", 1, 17, 9}, {"w.webp", 2, 17, 9}, {"r.jpg", 3, 9, 17},
                 {"big.jpg", 4, 17, 9}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *path = cases[k].kind == 0   ? put_image(d, cases[k].name, 17, 9, IMG_PNG, 0)
                           : cases[k].kind == 1 ? put_image(d, cases[k].name, 17, 9, IMG_JPEG, 0)
                           : cases[k].kind == 2 ? put_image(d, cases[k].name, 17, 9, IMG_WEBP, 0)
                           : cases[k].kind == 3 ? jpeg_with_segments(d, cases[k].name, 6, 0)
                                                : jpeg_with_segments(d, cases[k].name, 0, 120000);
        int w = 0, h = 0;
        CHECK_OK(lsdi_image_probe(path, &w, &h));
        CHECK(w == cases[k].w && h == cases[k].h, "%s: %dx%d, want %dx%d", cases[k].name, w, h, cases[k].w,
              cases[k].h);
        lsd_image img;
        if (CHECK_OK(lsd_image_load(path, &img))) /* the probe agrees with the decoder */
            CHECK(img.width == w && img.height == h, "%s decodes to %dx%d", cases[k].name, img.width, img.height);
        lsd_image_release(&img);
    }
    int w, h;
    CHECK_STATUS(lsdi_image_probe(put_text(d, "t.png", "\x89PNG\r\n\x1a\n\0\0\0\x0dIH", 14), &w, &h), LSD_ERR_FORMAT,
                 "t.png: truncated image");
    CHECK_STATUS(lsdi_image_probe(put_text(d, "g.png", "GIF89a", -1), &w, &h), LSD_ERR_FORMAT, "g.png: not a PNG");
    CHECK_STATUS(lsdi_image_probe(put_png_header(d, "z.png", 0, 5), &w, &h), LSD_ERR_FORMAT, "z.png");
    CHECK_STATUS(lsdi_image_probe(put_png_header(d, "huge.png", 20000, 5), &w, &h), LSD_ERR_UNSUPPORTED, "huge.png");
    CHECK_STATUS(lsdi_image_probe("/nonexistent/x.png", &w, &h), LSD_ERR_IO, "/nonexistent/x.png");
}

TEST(data_check_bad_files_listed)
{
    /* 25 unreadable images: the first 20 by path named with their reason, then a count. */
    const char *d = temp_dir();
    for (int i = 0; i < 25; i++) {
        char rel[32];
        snprintf(rel, sizeof rel, "bad%02d.png", i);
        put_text(d, rel, "not an image", -1);
        snprintf(rel, sizeof rel, "bad%02d.txt", i);
        put_text(d, rel, "x", -1);
    }
    put_image(d, "good.png", 8, 8, IMG_PNG, 0);
    put_text(d, "good.txt", "x", -1);
    lsd_dataset *ds = NULL;
    CHECK_STATUS(lsd_dataset_open(d, NULL, &ds), LSD_ERR_FORMAT, ": 25 bad files:");
    const char *msg = lsd_last_error();
    int lines = 0;
    for (const char *p = msg; (p = strstr(p, "\n  ")) != NULL; p++)
        lines++;
    CHECK(lines == 21, "%d lines (20 files + the count)", lines);
    CHECK(strstr(msg, "bad00.png: not a PNG, JPEG or WebP image") && strstr(msg, "bad19.png") &&
              !strstr(msg, "bad20.png") && strstr(msg, "\n  and 5 more"),
          "%s", msg);
    CHECK(ds == NULL);

    /* Different reasons, listed together; the status is the first one's. */
    const char *e = temp_dir();
    put_image(e, "m.png", 8, 8, IMG_PNG, 0);          /* no caption */
    put_image(e, "u.png", 8, 8, IMG_PNG, 0);
    put_text(e, "u.txt", "caf\xE9", -1);                /* caption not UTF-8 */
    put_text(e, "h.png", "GIF89a", -1);                 /* not an image */
    put_text(e, "h.txt", "x", -1);
    put_image(e, "s.png", 8, 8, IMG_PNG, 0);
    put_text(e, "s.txt", "", 0);                        /* empty caption */
    CHECK_STATUS(lsd_dataset_open(e, NULL, &ds), LSD_ERR_FORMAT, ": 4 bad files:");
    msg = lsd_last_error();
    CHECK(strstr(msg, "m.png: no caption") && strstr(msg, "u.txt: caption is not UTF-8") &&
              strstr(msg, "s.txt: empty caption") && strstr(msg, "h.png: not a PNG"),
          "%s", msg);
    /* One bad file reads as its own error. */
    const char *f = temp_dir();
    put_image(f, "m.png", 8, 8, IMG_PNG, 0);
    CHECK_STATUS(lsd_dataset_open(f, NULL, &ds), LSD_ERR_FORMAT, "m.png: no caption");
    CHECK(!strstr(lsd_last_error(), "bad files"));
}

typedef struct calls {
    int n, last_step, last_total, cancel_at;
    lsd_stage stage;
} calls;

static int count_progress(const lsd_progress *p, void *user)
{
    calls *c = user;
    c->n++;
    c->last_step = p->step;
    c->last_total = p->total;
    c->stage = p->stage;
    return c->cancel_at && p->step == c->cancel_at;
}

TEST(data_check_verify_decodes_everything)
{
    const char *d = temp_dir();
    put_image(d, "a.png", 16, 16, IMG_PNG, 0);
    put_image(d, "b.jpg", 16, 16, IMG_JPEG, 1);
    put_image(d, "c.webp", 16, 16, IMG_WEBP, 2);
    for (char c = 'a'; c <= 'c'; c++) {
        char rel[8] = {c, '.', 't', 'x', 't', 0};
        put_text(d, rel, "x", -1);
    }
    calls c = {0};
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.progress = count_progress;
    p.progress_user = &c;
    lsd_dataset *ds = open_ok(d, &p);
    size_t bad = 9;
    CHECK_OK(lsd_dataset_verify(ds, &bad));
    CHECK(bad == 0 && c.n == 3 && c.last_step == 3 && c.last_total == 3 && c.stage == LSD_STAGE_CHECK);
    lsd_dataset_free(ds);

    /* Headers intact, data cut short: open succeeds, verify names the files. */
    const char *png = put_image(d, "t.png", 64, 64, IMG_PNG, 3);
    size_t n = 0;
    char *bytes = read_file(png, &n);
    write_file(png, bytes, n - 40);
    free(bytes);
    const char *jpg = put_image(d, "u.jpg", 64, 64, IMG_JPEG, 3);
    bytes = read_file(jpg, &n);
    write_file(jpg, bytes, n / 2);
    free(bytes);
    put_text(d, "t.txt", "x", -1);
    put_text(d, "u.txt", "x", -1);
    c = (calls){0};
    ds = open_ok(d, &p);
    CHECK_STATUS(lsd_dataset_verify(ds, &bad), LSD_ERR_FORMAT, ": 2 bad files:");
    CHECK(bad == 2 && c.n == 5, "%zu bad, %d calls", bad, c.n);
    CHECK(strstr(lsd_last_error(), "t.png: corrupt PNG") && strstr(lsd_last_error(), "u.jpg: corrupt JPEG"), "%s",
          lsd_last_error());
    /* The callback cancels. */
    c = (calls){.cancel_at = 2};
    if (ds)
        ds->p.progress_user = &c;
    CHECK_STATUS(lsd_dataset_verify(ds, &bad), LSD_ERR_CANCELLED, "after 2 of 5 images");
    CHECK(c.n == 2);
    lsd_dataset_free(ds);
    CHECK_STATUS(lsd_dataset_verify(NULL, NULL), LSD_ERR_INVALID_ARGUMENT, "NULL");
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

TEST(data_check_output_dir)
{
    const char *d = temp_dir();
    char path[700];
    snprintf(path, sizeof path, "%s/a/b/c", d);
    CHECK_OK(lsd_prepare_output_dir(path));
    CHECK(exists(path));
    CHECK_OK(lsd_prepare_output_dir(path)); /* already there: fine */
    char probe_left[800];
    snprintf(probe_left, sizeof probe_left, "ls -A %s | grep -q .", path);
    CHECK(system(probe_left) != 0, "the probe file is removed");
    const char *file = put_text(d, "a/file", "x", -1);
    snprintf(path, sizeof path, "%s/out", file);
    CHECK_STATUS(lsd_prepare_output_dir(path), LSD_ERR_IO, "a/file is a file, not a directory");
    CHECK_STATUS(lsd_prepare_output_dir("/sys/lsd-test-out/x"), LSD_ERR_IO, "cannot create /sys/lsd-test-out");
    CHECK_STATUS(lsd_prepare_output_dir("/sys"), LSD_ERR_IO, "/sys: cannot create a file in it");
    CHECK_STATUS(lsd_prepare_output_dir(""), LSD_ERR_INVALID_ARGUMENT, "empty");

    /* lsd_trainer_new checks output_dir before anything is trained. */
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_trainer *tr = NULL;
    if (CHECK_OK(lsd_model_load(data_path("sd-tiny"), NULL, &m)) && CHECK_OK(lsd_adapter_set_new(m, &set))) {
        lsd_train_params tp;
        lsd_train_params_init(&tp);
        tp.output_dir = path;
        CHECK_STATUS(lsd_trainer_new(m, set, "l", NULL, &tp, &tr), LSD_ERR_IO, "a/file is a file");
        CHECK(tr == NULL);
    }
    lsd_adapter_set_free(set);
    lsd_model_free(m);
}
