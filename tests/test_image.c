/* lsd_image_load / _load_memory / _save_png / _release: every PNG colour type, JPEG (RGB, grey, CMYK, EXIF
 * orientation), WebP, size limits, and hostile input (truncations and byte flips; run under ASan). Test images
 * are generated here with libpng, TurboJPEG and libwebp. */
#include <png.h>
#include <stdlib.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <webp/encode.h>
#include <zlib.h>

#include "test.h"

/* ---------------------------------------------------------------------------------------------- */
/* Helpers */

typedef struct membuf {
    uint8_t *p;
    size_t n, cap;
} membuf;

static void mem_write(png_structp png, png_bytep d, size_t n)
{
    membuf *m = png_get_io_ptr(png);
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->p = realloc(m->p, m->cap);
        if (!m->p)
            abort();
    }
    memcpy(m->p + m->n, d, n);
    m->n += n;
}

static void mem_flush(png_structp png) { (void)png; }

typedef struct png_spec {
    int w, h, color_type, depth, interlace;
    const uint8_t *rows; /* raw PNG sample bytes, rows packed back to back */
    const png_color *palette;
    int n_palette;
    const png_byte *trans;
    int n_trans;
    const png_color_16 *trans_color;
} png_spec;

/* Encodes spec as a PNG in memory with libpng (malloc'd; free it). */
static uint8_t *make_png(const png_spec *s, size_t *len)
{
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        test_fail(__FILE__, __LINE__, "libpng failed to write the test image");
        png_destroy_write_struct(&png, &info);
        free(m.p);
        return NULL;
    }
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)s->w, (png_uint_32)s->h, s->depth, s->color_type, s->interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (s->palette)
        png_set_PLTE(png, info, s->palette, s->n_palette);
    if (s->trans || s->trans_color)
        png_set_tRNS(png, info, s->trans, s->n_trans, s->trans_color);
    png_write_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < s->h; y++)
            png_write_row(png, s->rows + (size_t)y * rowbytes);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    *len = m.n;
    return m.p;
}

/* Decodes a PNG/JPEG/WebP buffer and checks it is w x h; returns 1 on success (img then holds the pixels). */
static int load_mem(const void *d, size_t n, const char *name, int w, int h, lsd_image *img)
{
    if (!CHECK_OK(lsd_image_load_memory(d, n, name, img)))
        return 0;
    CHECK(img->struct_size == sizeof(lsd_image));
    CHECK(img->channels == 3 && img->data != NULL);
    CHECK(img->width == w && img->height == h, "%s: got %dx%d, want %dx%d", name, img->width, img->height, w, h);
    return img->width == w && img->height == h && img->data;
}

static void check_px(const lsd_image *img, int x, int y, int r, int g, int b, int tol, const char *what)
{
    const uint8_t *p = img->data + ((size_t)y * (size_t)img->width + (size_t)x) * 3;
    CHECK(abs(p[0] - r) <= tol && abs(p[1] - g) <= tol && abs(p[2] - b) <= tol,
          "%s: pixel (%d,%d) = (%d,%d,%d), want (%d,%d,%d) +- %d", what, x, y, p[0], p[1], p[2], r, g, b, tol);
}

static int is_zeroed(const lsd_image *img)
{
    return img->struct_size == 0 && img->width == 0 && img->height == 0 && img->channels == 0 && !img->data;
}

static unsigned char *make_jpeg(const uint8_t *px, int w, int h, int pf, int subsamp, unsigned long *len)
{
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    *len = 0;
    if (tjCompress2(tj, px, w, 0, h, pf, &buf, len, subsamp, 100, TJFLAG_ACCURATEDCT) != 0)
        test_fail(__FILE__, __LINE__, "tjCompress2: %s", tjGetErrorStr2(tj));
    tjDestroy(tj);
    return buf;
}

/* A w x h RGB image of 8x8 solid blocks (aligned with JPEG blocks, so quality 100 keeps them nearly exact). */
static const uint8_t block_colours[8][3] = {{255, 0, 0},   {0, 255, 0},     {0, 0, 255},   {255, 255, 0},
                                            {0, 255, 255}, {255, 0, 255},   {40, 40, 40},  {230, 230, 230}};

static uint8_t *blocks_image(int bw, int bh)
{
    int w = bw * 8, h = bh * 8;
    uint8_t *px = malloc((size_t)w * (size_t)h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            memcpy(px + ((size_t)y * (size_t)w + (size_t)x) * 3, block_colours[((y / 8) * bw + x / 8) % 8], 3);
    return px;
}

/* ---------------------------------------------------------------------------------------------- */
/* PNG write + read back */

/* want_compression: PNG_TEXT_COMPRESSION_NONE (tEXt) or PNG_ITXT_COMPRESSION_NONE (iTXt). */
static void read_png_text(const char *path, const char *key, char *value, size_t cap, int *bit_depth, int *ct,
                          int want_compression)
{
    value[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        test_fail(__FILE__, __LINE__, "cannot open %s", path);
        return;
    }
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        test_fail(__FILE__, __LINE__, "libpng failed reading %s", path);
    } else {
        png_init_io(png, f);
        png_read_info(png, info);
        *bit_depth = png_get_bit_depth(png, info);
        *ct = png_get_color_type(png, info);
        png_textp text;
        int n = 0;
        png_get_text(png, info, &text, &n);
        for (int i = 0; i < n; i++)
            if (strcmp(text[i].key, key) == 0) {
                CHECK(text[i].compression == want_compression, "key %s: compression %d, wanted %d", key,
                      text[i].compression, want_compression);
                snprintf(value, cap, "%s", text[i].text);
            }
    }
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
}

TEST(image_png_round_trip_with_text)
{
    char path[600];
    snprintf(path, sizeof path, "%s/out.png", temp_dir());
    uint8_t px[5 * 3 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 37 + 11);
    lsd_image img = {sizeof img, 5, 3, 3, px};
    const char *keys[] = {"parameters", "Software", "Caf\xe9 key"};
    const char *values[] = {"a cat, Steps: 20, Sampler: euler_a", "liblora_sd", "UTF-8 caf\xc3\xa9 \xe6\x97\xa5"};
    CHECK_OK(lsd_image_save_png(path, &img, keys, values, 3));

    lsd_image back;
    if (CHECK_OK(lsd_image_load(path, &back))) {
        CHECK(back.struct_size == sizeof back && back.width == 5 && back.height == 3 && back.channels == 3);
        CHECK(memcmp(back.data, px, sizeof px) == 0, "pixels differ after round trip");
    }
    lsd_image_release(&back);
    CHECK(is_zeroed(&back));

    char v[256];
    int depth = 0, ct = -1;
    read_png_text(path, "parameters", v, sizeof v, &depth, &ct, PNG_TEXT_COMPRESSION_NONE);
    CHECK(strcmp(v, values[0]) == 0, "parameters = \"%s\"", v);
    CHECK(depth == 8 && ct == PNG_COLOR_TYPE_RGB, "depth %d colour type %d", depth, ct);
    read_png_text(path, "Software", v, sizeof v, &depth, &ct, PNG_TEXT_COMPRESSION_NONE);
    CHECK(strcmp(v, "liblora_sd") == 0, "Software = \"%s\"", v);
    read_png_text(path, "Caf\xe9 key", v, sizeof v, &depth, &ct, PNG_ITXT_COMPRESSION_NONE);
    CHECK(strcmp(v, values[2]) == 0, "UTF-8 value = \"%s\" (iTXt)", v);

    /* Saving again replaces the file. */
    memset(px, 7, sizeof px);
    CHECK_OK(lsd_image_save_png(path, &img, NULL, NULL, 0));
    if (CHECK_OK(lsd_image_load(path, &back)))
        CHECK(back.data[0] == 7 && back.data[sizeof px - 1] == 7);
    lsd_image_release(&back);
}

TEST(image_png_save_rejects_bad_arguments)
{
    char path[600];
    snprintf(path, sizeof path, "%s/bad.png", temp_dir());
    uint8_t px[2 * 2 * 4] = {0};
    lsd_image img = {sizeof img, 2, 2, 3, px};
    const char *v[] = {"x"};

    lsd_image four = img;
    four.channels = 4;
    CHECK_STATUS(lsd_image_save_png(path, &four, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "4 channels");
    lsd_image nodata = img;
    nodata.data = NULL;
    CHECK_STATUS(lsd_image_save_png(path, &nodata, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "data NULL");
    lsd_image zero = img;
    zero.width = 0;
    CHECK_STATUS(lsd_image_save_png(path, &zero, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "0x2");
    static uint8_t wide_px[16385 * 3];
    lsd_image wide = {sizeof wide, 16385, 1, 3, wide_px};
    CHECK_STATUS(lsd_image_save_png(path, &wide, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "16385x1");
    CHECK_STATUS(lsd_image_save_png(path, NULL, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "img is NULL");
    CHECK_STATUS(lsd_image_save_png(NULL, &img, NULL, NULL, 0), LSD_ERR_INVALID_ARGUMENT, "path is NULL");
    CHECK_STATUS(lsd_image_save_png(path, &img, NULL, v, 1), LSD_ERR_INVALID_ARGUMENT, "text_keys");

    const char *bad_keys[] = {"", "0123456789012345678901234567890123456789012345678901234567890123456789012345678X",
                              "new\nline", "ctl\x85", " lead", "trail ", "two  spaces", "del\x7f"};
    for (size_t i = 0; i < sizeof bad_keys / sizeof *bad_keys; i++) {
        const char *k[] = {bad_keys[i]};
        char quoted[128];
        snprintf(quoted, sizeof quoted, "\"%s\"", bad_keys[i]);
        CHECK_STATUS(lsd_image_save_png(path, &img, k, v, 1), LSD_ERR_INVALID_ARGUMENT, quoted);
    }
    const char *null_key[] = {NULL};
    CHECK_STATUS(lsd_image_save_png(path, &img, null_key, v, 1), LSD_ERR_INVALID_ARGUMENT, "key 0 is NULL");
    const char *good_key[] = {"Title"}, *null_val[] = {NULL};
    CHECK_STATUS(lsd_image_save_png(path, &img, good_key, null_val, 1), LSD_ERR_INVALID_ARGUMENT, "\"Title\"");
    const char *k79[] = {"0123456789012345678901234567890123456789012345678901234567890123456789012345678"};
    CHECK(strlen(k79[0]) == 79);
    CHECK(access(path, F_OK) != 0, "a rejected save created %s", path);
    CHECK_OK(lsd_image_save_png(path, &img, k79, v, 1));
}

TEST(image_png_save_to_missing_directory_is_io_error)
{
    char path[600];
    snprintf(path, sizeof path, "%s/no/such/dir/out.png", temp_dir());
    uint8_t px[3] = {1, 2, 3};
    lsd_image img = {sizeof img, 1, 1, 3, px};
    CHECK_STATUS(lsd_image_save_png(path, &img, NULL, NULL, 0), LSD_ERR_IO, path);
}

/* ---------------------------------------------------------------------------------------------- */
/* PNG colour types */

TEST(image_png_grey_depths)
{
    const uint8_t g8[] = {0, 100, 255};
    png_spec s8 = {3, 1, PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, g8, NULL, 0, NULL, 0, NULL};
    size_t n;
    uint8_t *png = make_png(&s8, &n);
    lsd_image img;
    if (png && load_mem(png, n, "grey8.png", 3, 1, &img)) {
        check_px(&img, 0, 0, 0, 0, 0, 0, "grey8");
        check_px(&img, 1, 0, 100, 100, 100, 0, "grey8");
        check_px(&img, 2, 0, 255, 255, 255, 0, "grey8");
    }
    lsd_image_release(&img);
    free(png);

    /* 2-bit grey 0,1,2,3 packed into one byte: scaled to 0, 85, 170, 255. */
    const uint8_t g2[] = {0x1b};
    png_spec s2 = {4, 1, PNG_COLOR_TYPE_GRAY, 2, PNG_INTERLACE_NONE, g2, NULL, 0, NULL, 0, NULL};
    png = make_png(&s2, &n);
    if (png && load_mem(png, n, "grey2.png", 4, 1, &img))
        for (int x = 0; x < 4; x++)
            check_px(&img, x, 0, 85 * x, 85 * x, 85 * x, 0, "grey2");
    lsd_image_release(&img);
    free(png);

    /* Grey with a tRNS colour key: the keyed value is transparent, so white. */
    png_color_16 key = {0, 0, 0, 0, 100};
    png_spec sk = {3, 1, PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, g8, NULL, 0, NULL, 0, &key};
    png = make_png(&sk, &n);
    if (png && load_mem(png, n, "greykey.png", 3, 1, &img)) {
        check_px(&img, 0, 0, 0, 0, 0, 0, "grey key");
        check_px(&img, 1, 0, 255, 255, 255, 0, "grey key (transparent)");
    }
    lsd_image_release(&img);
    free(png);
}

TEST(image_png_grey_alpha)
{
    const uint8_t ga[] = {0, 128, 200, 255, 0, 0, 50, 64};
    png_spec s = {4, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE, ga, NULL, 0, NULL, 0, NULL};
    size_t n;
    uint8_t *png = make_png(&s, &n);
    lsd_image img;
    if (png && load_mem(png, n, "ga.png", 4, 1, &img)) {
        check_px(&img, 0, 0, 127, 127, 127, 1, "black at half alpha on white");
        check_px(&img, 1, 0, 200, 200, 200, 0, "opaque");
        check_px(&img, 2, 0, 255, 255, 255, 0, "transparent");
        /* 50*64/255 + 255*191/255 = 203.5 */
        check_px(&img, 3, 0, 203, 203, 203, 1, "quarter alpha");
    }
    lsd_image_release(&img);
    free(png);
}

TEST(image_png_palette_with_trns)
{
    const png_color pal[] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}};
    const png_byte trans[] = {255, 0, 128}; /* index 3 has no entry: opaque */
    const uint8_t idx[] = {0, 1, 2, 3};
    png_spec s = {4, 1, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, idx, pal, 4, trans, 3, NULL};
    size_t n;
    uint8_t *png = make_png(&s, &n);
    lsd_image img;
    if (png && load_mem(png, n, "pal.png", 4, 1, &img)) {
        check_px(&img, 0, 0, 255, 0, 0, 0, "opaque red");
        check_px(&img, 1, 0, 255, 255, 255, 0, "transparent green");
        check_px(&img, 2, 0, 127, 127, 255, 1, "half blue");
        check_px(&img, 3, 0, 10, 20, 30, 0, "entry without alpha");
    }
    lsd_image_release(&img);
    free(png);

    /* 4-bit palette indices. */
    const uint8_t idx4[] = {0x30, 0x12};
    png_spec s4 = {4, 1, PNG_COLOR_TYPE_PALETTE, 4, PNG_INTERLACE_NONE, idx4, pal, 4, NULL, 0, NULL};
    png = make_png(&s4, &n);
    if (png && load_mem(png, n, "pal4.png", 4, 1, &img)) {
        check_px(&img, 0, 0, 10, 20, 30, 0, "pal4[0]");
        check_px(&img, 1, 0, 255, 0, 0, 0, "pal4[1]");
        check_px(&img, 2, 0, 0, 255, 0, 0, "pal4[2]");
        check_px(&img, 3, 0, 0, 0, 255, 0, "pal4[3]");
    }
    lsd_image_release(&img);
    free(png);
}

TEST(image_png_rgba_composited_on_white)
{
    const uint8_t rgba[] = {255, 0, 0, 128, 0, 0, 255, 255, 10, 20, 30, 0, 100, 150, 200, 200};
    png_spec s = {4, 1, PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE, rgba, NULL, 0, NULL, 0, NULL};
    size_t n;
    uint8_t *png = make_png(&s, &n);
    lsd_image img;
    if (png && load_mem(png, n, "rgba.png", 4, 1, &img)) {
        check_px(&img, 0, 0, 255, 128, 128, 1, "half-transparent red");
        check_px(&img, 1, 0, 0, 0, 255, 0, "opaque blue");
        check_px(&img, 2, 0, 255, 255, 255, 0, "transparent");
        /* round(c*200/255 + 255*55/255) */
        check_px(&img, 3, 0, 133, 173, 212, 0, "alpha 200");
    }
    lsd_image_release(&img);
    free(png);
}

TEST(image_png_16_bit)
{
    /* Big-endian samples: 0xFFFF, 0x8000, 0x1234 | 0x0000, 0x00FF, 0xFF00 */
    const uint8_t rgb16[] = {0xff, 0xff, 0x80, 0x00, 0x12, 0x34, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00};
    png_spec s = {2, 1, PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE, rgb16, NULL, 0, NULL, 0, NULL};
    size_t n;
    uint8_t *png = make_png(&s, &n);
    lsd_image img;
    if (png && load_mem(png, n, "rgb16.png", 2, 1, &img)) {
        check_px(&img, 0, 0, 255, 128, 18, 0, "16-bit scaled");
        check_px(&img, 1, 0, 0, 1, 254, 0, "16-bit scaled (rounded)");
    }
    lsd_image_release(&img);
    free(png);

    /* 16-bit grey + alpha: black at alpha 0x8000. */
    const uint8_t ga16[] = {0x00, 0x00, 0x80, 0x00, 0xff, 0xff, 0xff, 0xff};
    png_spec sga = {2, 1, PNG_COLOR_TYPE_GRAY_ALPHA, 16, PNG_INTERLACE_NONE, ga16, NULL, 0, NULL, 0, NULL};
    png = make_png(&sga, &n);
    if (png && load_mem(png, n, "ga16.png", 2, 1, &img)) {
        check_px(&img, 0, 0, 127, 127, 127, 1, "16-bit grey alpha");
        check_px(&img, 1, 0, 255, 255, 255, 0, "16-bit white");
    }
    lsd_image_release(&img);
    free(png);
}

TEST(image_png_interlaced)
{
    enum { W = 11, H = 9 };
    uint8_t px[W * H * 3];
    for (int i = 0; i < W * H * 3; i++)
        px[i] = (uint8_t)(i * 29 + i / 7);
    png_spec s = {W, H, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7, px, NULL, 0, NULL, 0, NULL};
    size_t n;
    uint8_t *png = make_png(&s, &n);
    CHECK(png && n > 29 && png[28] == 1, "test PNG is not interlaced");
    lsd_image img;
    if (png && load_mem(png, n, "adam7.png", W, H, &img))
        CHECK(memcmp(img.data, px, sizeof px) == 0, "interlaced pixels differ");
    lsd_image_release(&img);
    free(png);
}

/* ---------------------------------------------------------------------------------------------- */
/* JPEG */

TEST(image_jpeg_rgb_and_grey)
{
    enum { W = 24, H = 16 };
    uint8_t px[W * H * 3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = px + (y * W + x) * 3;
            p[0] = (uint8_t)(x * 10);
            p[1] = (uint8_t)(y * 15);
            p[2] = (uint8_t)(255 - x * 5 - y * 3);
        }
    unsigned long n;
    unsigned char *jpg = make_jpeg(px, W, H, TJPF_RGB, TJSAMP_444, &n);
    lsd_image img;
    if (jpg && load_mem(jpg, n, "rgb.jpg", W, H, &img)) {
        int worst = 0;
        for (int i = 0; i < W * H * 3; i++)
            worst = abs(img.data[i] - px[i]) > worst ? abs(img.data[i] - px[i]) : worst;
        CHECK(worst <= 3, "quality-100 JPEG differs by %d", worst);
    }
    lsd_image_release(&img);
    tjFree(jpg);

    uint8_t grey[W * H];
    for (int i = 0; i < W * H; i++)
        grey[i] = (uint8_t)(i % W * 10);
    jpg = make_jpeg(grey, W, H, TJPF_GRAY, TJSAMP_GRAY, &n);
    if (jpg && load_mem(jpg, n, "grey.jpg", W, H, &img))
        for (int x = 0; x < W; x += 5)
            check_px(&img, x, 3, x * 10, x * 10, x * 10, 2, "grey JPEG");
    lsd_image_release(&img);
    tjFree(jpg);
}

/* libjpeg-turbo's rgb_to_cmyk (cmyk.h): the inverted ("Adobe") convention, 255 = no ink. */
static void rgb_to_inverted_cmyk(const uint8_t *rgb, uint8_t *cmyk)
{
    double c = 1.0 - rgb[0] / 255.0, m = 1.0 - rgb[1] / 255.0, y = 1.0 - rgb[2] / 255.0;
    double k = c < m ? (c < y ? c : y) : (m < y ? m : y);
    if (k == 1.0)
        c = m = y = 0.0;
    else {
        c = (c - k) / (1.0 - k);
        m = (m - k) / (1.0 - k);
        y = (y - k) / (1.0 - k);
    }
    cmyk[0] = (uint8_t)(255.0 - c * 255.0 + 0.5);
    cmyk[1] = (uint8_t)(255.0 - m * 255.0 + 0.5);
    cmyk[2] = (uint8_t)(255.0 - y * 255.0 + 0.5);
    cmyk[3] = (uint8_t)(255.0 - k * 255.0 + 0.5);
}

static unsigned char *make_cmyk_jpeg(const uint8_t *rgb, int w, int h, unsigned long *n)
{
    uint8_t *cmyk = malloc((size_t)w * (size_t)h * 4);
    for (int i = 0; i < w * h; i++)
        rgb_to_inverted_cmyk(rgb + i * 3, cmyk + i * 4);
    unsigned char *jpg = make_jpeg(cmyk, w, h, TJPF_CMYK, TJSAMP_444, n);
    free(cmyk);
    return jpg;
}

TEST(image_jpeg_cmyk)
{
    static const uint8_t colours[7][3] = {{255, 0, 0},     {0, 255, 0},   {0, 0, 255}, {255, 255, 255},
                                          {0, 0, 0},       {128, 128, 128}, {255, 128, 0}};
    enum { W = 56, H = 8 };
    uint8_t rgb[W * H * 3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            memcpy(rgb + (y * W + x) * 3, colours[x / 8], 3);
    unsigned long n;
    unsigned char *jpg = make_cmyk_jpeg(rgb, W, H, &n);
    int w, h, ss, cs = -1;
    tjhandle tj = tjInitDecompress();
    CHECK(jpg && tjDecompressHeader3(tj, jpg, n, &w, &h, &ss, &cs) == 0 && (cs == TJCS_CMYK || cs == TJCS_YCCK),
          "test JPEG is not CMYK (colourspace %d)", cs);
    tjDestroy(tj);
    lsd_image img;
    if (jpg && load_mem(jpg, n, "cmyk.jpg", W, H, &img))
        for (int i = 0; i < 7; i++)
            check_px(&img, i * 8 + 4, 4, colours[i][0], colours[i][1], colours[i][2], 4, "CMYK colour");
    lsd_image_release(&img);
    tjFree(jpg);
}

/* Inserts an APP1 Exif block (IFD0: a Make tag, then Orientation = o) after the JFIF APP0 segment. */
static uint8_t *with_exif(const uint8_t *jpg, size_t n, int o, int little_endian, size_t *out_n)
{
    uint8_t seg[48] = {0xff, 0xe1, 0, 46, 'E', 'x', 'i', 'f', 0, 0};
    uint8_t *t = seg + 10;
#define PUT16(p, v) (little_endian ? ((p)[0] = (uint8_t)(v), (p)[1] = (uint8_t)((v) >> 8)) \
                                   : ((p)[0] = (uint8_t)((v) >> 8), (p)[1] = (uint8_t)(v)))
    memcpy(t, little_endian ? "II*\0" : "MM\0*", 4);
    if (little_endian)
        t[4] = 8;
    else
        t[7] = 8;
    PUT16(t + 8, 2);
    PUT16(t + 10, 0x010f); /* Make, ASCII, 4 bytes inline */
    PUT16(t + 12, 2);
    PUT16(little_endian ? t + 14 : t + 16, 4);
    memcpy(t + 18, "abc", 4);
    PUT16(t + 22, 0x0112);
    PUT16(t + 24, 3);
    PUT16(little_endian ? t + 26 : t + 28, 1);
    PUT16(t + 30, o);
#undef PUT16
    size_t at = 2;
    if (n > 6 && jpg[2] == 0xff && jpg[3] == 0xe0)
        at = 4 + ((size_t)jpg[4] << 8 | jpg[5]);
    uint8_t *out = malloc(n + sizeof seg);
    memcpy(out, jpg, at);
    memcpy(out + at, seg, sizeof seg);
    memcpy(out + at + sizeof seg, jpg + at, n - at);
    *out_n = n + sizeof seg;
    return out;
}

TEST(image_jpeg_exif_orientation)
{
    enum { BW = 4, BH = 2, W = BW * 8, H = BH * 8 };
    uint8_t *src = blocks_image(BW, BH);
    unsigned long n;
    unsigned char *jpg = make_jpeg(src, W, H, TJPF_RGB, TJSAMP_444, &n);
    if (!jpg) {
        free(src);
        return;
    }
    /* Where each source corner (TL, TR, BL, BR = block 0, 3, 4, 7) lands: out TL, TR, BL, BR. */
    static const int corners[9][4] = {{0}, {0, 3, 4, 7}, {3, 0, 7, 4}, {7, 4, 3, 0}, {4, 7, 0, 3},
                                      {0, 4, 3, 7}, {4, 0, 7, 3}, {7, 3, 4, 0}, {3, 7, 0, 4}};
    for (int o = 1; o <= 8; o++)
        for (int le = 0; le <= 1; le++) {
            size_t en;
            uint8_t *e = with_exif(jpg, n, o, le, &en);
            char name[32];
            snprintf(name, sizeof name, "exif%d%s.jpg", o, le ? "le" : "be");
            int ow = o >= 5 ? H : W, oh = o >= 5 ? W : H;
            lsd_image img;
            if (load_mem(e, en, name, ow, oh, &img)) {
                const int xs[4] = {2, ow - 3, 2, ow - 3}, ys[4] = {2, 2, oh - 3, oh - 3};
                for (int c = 0; c < 4; c++) {
                    const uint8_t *want = block_colours[corners[o][c]];
                    check_px(&img, xs[c], ys[c], want[0], want[1], want[2], 3, name);
                }
                /* Full check for rotate-180 (3) and rotate-90-clockwise (6). */
                for (int y = 0; (o == 3 || o == 6) && y < oh; y++)
                    for (int x = 0; x < ow; x++) {
                        int sx = o == 3 ? W - 1 - x : y, sy = o == 3 ? H - 1 - y : H - 1 - x;
                        const uint8_t *want = src + (sy * W + sx) * 3;
                        const uint8_t *got = img.data + (y * ow + x) * 3;
                        if (abs(got[0] - want[0]) > 3 || abs(got[1] - want[1]) > 3 || abs(got[2] - want[2]) > 3) {
                            check_px(&img, x, y, want[0], want[1], want[2], 3, name);
                            y = oh;
                            break;
                        }
                    }
            }
            lsd_image_release(&img);
            free(e);
        }

    /* A damaged EXIF block (IFD offset past the end, entry count past the end) is ignored, not fatal. */
    size_t en;
    uint8_t *e = with_exif(jpg, n, 6, 0, &en);
    size_t app1 = 0;
    while (app1 + 1 < en && !(e[app1] == 0xff && e[app1 + 1] == 0xe1))
        app1++;
    e[app1 + 10 + 4] = 0x7f; /* IFD0 offset 0x7f000008: orientation ignored */
    lsd_image img;
    load_mem(e, en, "badifd.jpg", W, H, &img);
    lsd_image_release(&img);
    e[app1 + 10 + 4] = 0;
    e[app1 + 10 + 31] = 9; /* no such orientation: ignored */
    load_mem(e, en, "orient9.jpg", W, H, &img);
    lsd_image_release(&img);
    e[app1 + 10 + 31] = 6;
    e[app1 + 10 + 8] = 0xff; /* 0xff02 entries: the walk stops at the end of the block, after Orientation */
    load_mem(e, en, "badcount.jpg", H, W, &img);
    lsd_image_release(&img);
    e[app1 + 10 + 8] = 0;
    e[app1 + 10 + 9] = 1; /* one entry: Orientation is never reached */
    load_mem(e, en, "shortcount.jpg", W, H, &img);
    lsd_image_release(&img);
    free(e);
    tjFree(jpg);
    free(src);
}

/* ---------------------------------------------------------------------------------------------- */
/* WebP */

TEST(image_webp_lossless_rgb_and_rgba)
{
    enum { W = 7, H = 5 };
    uint8_t px[W * H * 3];
    for (int i = 0; i < W * H * 3; i++)
        px[i] = (uint8_t)(i * 53 + 1);
    uint8_t *webp = NULL;
    size_t n = WebPEncodeLosslessRGB(px, W, H, W * 3, &webp);
    lsd_image img;
    CHECK(n > 0);
    if (n && load_mem(webp, n, "rgb.webp", W, H, &img))
        CHECK(memcmp(img.data, px, sizeof px) == 0, "lossless WebP pixels differ");
    lsd_image_release(&img);
    WebPFree(webp);

    const uint8_t rgba[] = {255, 0, 0, 128, 0, 255, 0, 255, 9, 9, 9, 0, 100, 150, 200, 200};
    n = WebPEncodeLosslessRGBA(rgba, 2, 2, 8, &webp);
    CHECK(n > 0);
    if (n && load_mem(webp, n, "rgba.webp", 2, 2, &img)) {
        check_px(&img, 0, 0, 255, 128, 128, 1, "half-transparent red");
        check_px(&img, 1, 0, 0, 255, 0, 0, "opaque green");
        check_px(&img, 0, 1, 255, 255, 255, 0, "transparent");
        check_px(&img, 1, 1, 133, 173, 212, 0, "alpha 200");
    }
    lsd_image_release(&img);
    WebPFree(webp);

    /* Lossy: size and rough colour. */
    uint8_t *blocks = blocks_image(2, 1);
    n = WebPEncodeRGB(blocks, 16, 8, 48, 95, &webp);
    if (n && load_mem(webp, n, "lossy.webp", 16, 8, &img))
        check_px(&img, 3, 3, 255, 0, 0, 40, "lossy red");
    lsd_image_release(&img);
    WebPFree(webp);
    free(blocks);
}

/* ---------------------------------------------------------------------------------------------- */
/* Files, limits, hostile input */

TEST(image_load_from_path_errors)
{
    const char *dir = temp_dir();
    char path[600];
    lsd_image img;
    snprintf(path, sizeof path, "%s/missing.png", dir);
    CHECK_STATUS(lsd_image_load(path, &img), LSD_ERR_IO, path);
    CHECK(is_zeroed(&img));
    CHECK_STATUS(lsd_image_load(dir, &img), LSD_ERR_IO, "directory");
    snprintf(path, sizeof path, "%s/garbage.png", dir);
    write_file(path, "GIF89a not a png", 16);
    CHECK_STATUS(lsd_image_load(path, &img), LSD_ERR_FORMAT, path);
    snprintf(path, sizeof path, "%s/empty.jpg", dir);
    write_file(path, "", 0);
    CHECK_STATUS(lsd_image_load(path, &img), LSD_ERR_FORMAT, path);
    CHECK_STATUS(lsd_image_load(NULL, &img), LSD_ERR_INVALID_ARGUMENT, "path");
    CHECK_STATUS(lsd_image_load(path, NULL), LSD_ERR_INVALID_ARGUMENT, "out");
    CHECK_STATUS(lsd_image_load_memory(NULL, 5, "x.png", &img), LSD_ERR_INVALID_ARGUMENT, "x.png");
    CHECK_STATUS(lsd_image_load_memory("\x89PNG", 4, NULL, &img), LSD_ERR_FORMAT, "<memory>");
}

TEST(image_release_is_idempotent)
{
    lsd_image_release(NULL);
    uint8_t px[3] = {1, 2, 3};
    lsd_image img = {sizeof img, 1, 1, 3, NULL};
    img.data = malloc(3);
    memcpy(img.data, px, 3);
    lsd_image_release(&img);
    CHECK(is_zeroed(&img));
    lsd_image_release(&img);
    CHECK(is_zeroed(&img));
}

static void set_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

TEST(image_oversize_rejected_before_decoding)
{
    /* A real 16384x1 PNG is at the limit and loads; 16385x1 does not. */
    static uint8_t row[16385 / 8 + 1];
    lsd_image img;
    size_t n;
    png_spec s = {16384, 1, PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE, row, NULL, 0, NULL, 0, NULL};
    uint8_t *png = make_png(&s, &n);
    if (png)
        load_mem(png, n, "wide.png", 16384, 1, &img);
    lsd_image_release(&img);
    free(png);
    s.w = 16385;
    png = make_png(&s, &n);
    if (png)
        CHECK_STATUS(lsd_image_load_memory(png, n, "wider.png", &img), LSD_ERR_UNSUPPORTED,
                     "wider.png: PNG image is 16385x1");
    CHECK(is_zeroed(&img));

    /* A header claiming 100000 x 100000 (IHDR patched, CRC fixed) is refused without allocating 30 GB. */
    if (png) {
        set_be32(png + 16, 100000);
        set_be32(png + 20, 100000);
        set_be32(png + 29, (uint32_t)crc32(0, png + 12, 17));
        CHECK_STATUS(lsd_image_load_memory(png, n, "huge.png", &img), LSD_ERR_UNSUPPORTED, "100000x100000");
    }
    free(png);

    /* JPEG: a real 16385x8 image, and an 8x8 one whose SOF is patched to 30000x30000. */
    uint8_t *grey = calloc(16385 * 8, 1);
    unsigned long jn;
    unsigned char *jpg = make_jpeg(grey, 16385, 8, TJPF_GRAY, TJSAMP_GRAY, &jn);
    if (jpg)
        CHECK_STATUS(lsd_image_load_memory(jpg, jn, "wide.jpg", &img), LSD_ERR_UNSUPPORTED, "16385x8");
    tjFree(jpg);
    jpg = make_jpeg(grey, 8, 8, TJPF_GRAY, TJSAMP_GRAY, &jn);
    free(grey);
    size_t sof = 2;
    while (jpg && sof + 9 < jn && !(jpg[sof] == 0xff && jpg[sof + 1] == 0xc0))
        sof++;
    if (jpg && sof + 9 < jn) {
        jpg[sof + 5] = jpg[sof + 7] = 30000 >> 8;
        jpg[sof + 6] = jpg[sof + 8] = 30000 & 0xff;
        CHECK_STATUS(lsd_image_load_memory(jpg, jn, "huge.jpg", &img), LSD_ERR_UNSUPPORTED,
                     "huge.jpg: JPEG image is 30000x30000");
    } else {
        test_fail(__FILE__, __LINE__, "no SOF0 in the test JPEG");
    }
    tjFree(jpg);
    /* WebP cannot express more than 16383 pixels a side, so it never reaches the limit. */
}

typedef struct sample {
    const char *name;
    uint8_t *data;
    size_t n;
} sample;

/* Small images of every kind, for the hostile-input tests. */
static int make_samples(sample *s)
{
    uint8_t *blocks = blocks_image(2, 2); /* 16x16 */
    uint8_t rgba[16 * 16 * 4];
    for (int i = 0; i < 256; i++) {
        memcpy(rgba + i * 4, blocks + i * 3, 3);
        rgba[i * 4 + 3] = (uint8_t)i;
    }
    int k = 0;
    png_spec ps = {16, 16, PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE, rgba, NULL, 0, NULL, 0, NULL};
    size_t pn;
    uint8_t *p = make_png(&ps, &pn);
    s[k++] = (sample){"hostile.png", p, pn};
    ps.interlace = PNG_INTERLACE_ADAM7;
    p = make_png(&ps, &pn);
    s[k++] = (sample){"hostile-adam7.png", p, pn};
    unsigned long n;
    unsigned char *j = make_jpeg(blocks, 16, 16, TJPF_RGB, TJSAMP_420, &n);
    size_t en;
    s[k++] = (sample){"hostile.jpg", with_exif(j, n, 6, 1, &en), en};
    tjFree(j);
    j = make_cmyk_jpeg(blocks, 16, 16, &n);
    s[k] = (sample){"hostile-cmyk.jpg", malloc(n), n};
    memcpy(s[k++].data, j, n);
    tjFree(j);
    uint8_t *w;
    size_t wn = WebPEncodeLosslessRGBA(rgba, 16, 16, 64, &w);
    s[k] = (sample){"hostile.webp", malloc(wn), wn};
    memcpy(s[k++].data, w, wn);
    WebPFree(w);
    wn = WebPEncodeRGBA(rgba, 16, 16, 64, 80, &w);
    s[k] = (sample){"hostile-lossy.webp", malloc(wn), wn};
    memcpy(s[k++].data, w, wn);
    WebPFree(w);
    free(blocks);
    return k;
}

TEST(image_truncated_files_are_format_errors)
{
    sample s[8];
    int ns = make_samples(s);
    for (int i = 0; i < ns; i++) {
        CHECK(s[i].data && s[i].n > 0, "%s not made", s[i].name);
        lsd_image img;
        if (!load_mem(s[i].data, s[i].n, s[i].name, 16, 16, &img))
            continue;
        lsd_image_release(&img);
        int bad = 0;
        for (size_t len = 0; len < s[i].n && bad < 3; len++) {
            /* A copy of exactly len bytes, so ASan sees any read past the end. */
            uint8_t *cut = malloc(len ? len : 1);
            memcpy(cut, s[i].data, len);
            lsd_status st = lsd_image_load_memory(cut, len, s[i].name, &img);
            if (st != LSD_ERR_FORMAT || !strstr(lsd_last_error(), s[i].name) || !is_zeroed(&img)) {
                test_fail(__FILE__, __LINE__, "%s cut to %zu of %zu bytes: status %d, message \"%s\"", s[i].name,
                          len, s[i].n, st, lsd_last_error());
                bad++;
            }
            lsd_image_release(&img);
            free(cut);
        }
        free(s[i].data);
    }
}

TEST(image_corrupt_bytes_never_crash)
{
    sample s[8];
    int ns = make_samples(s);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < ns; i++) {
        uint8_t *buf = malloc(s[i].n);
        int failures = 0, bad = 0;
        for (int iter = 0; iter < 400 && bad < 3; iter++) {
            memcpy(buf, s[i].data, s[i].n);
            int flips = 1 + iter % 4;
            for (int f = 0; f < flips; f++) {
                rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                buf[(rng >> 8) % s[i].n] ^= (uint8_t)(1 + (rng & 0xfe));
            }
            lsd_image img;
            lsd_status st = lsd_image_load_memory(buf, s[i].n, s[i].name, &img);
            if (st == LSD_OK) {
                if (img.channels != 3 || !img.data || img.width <= 0 || img.height <= 0 ||
                    img.struct_size != sizeof img) {
                    test_fail(__FILE__, __LINE__, "%s: bad image returned after corruption", s[i].name);
                    bad++;
                }
                /* Touch every byte so ASan checks the buffer is as large as claimed. */
                unsigned sum = 0;
                for (size_t b = 0; b < (size_t)img.width * (size_t)img.height * 3; b++)
                    sum += img.data[b];
                (void)sum;
            } else {
                failures++;
                if ((st != LSD_ERR_FORMAT && st != LSD_ERR_UNSUPPORTED) || !strstr(lsd_last_error(), s[i].name) ||
                    !is_zeroed(&img)) {
                    test_fail(__FILE__, __LINE__, "%s corrupted: status %d, message \"%s\"", s[i].name, st,
                              lsd_last_error());
                    bad++;
                }
            }
            lsd_image_release(&img);
        }
        /* PNG has CRCs and WebP lossless has no slack; most flips must be caught. */
        if (strstr(s[i].name, ".png"))
            CHECK(failures > 300, "%s: only %d of 400 corruptions detected", s[i].name, failures);
        free(buf);
        free(s[i].data);
    }
}
