/* PNG decoding to RGB8 and lsd_image_save_png, over libpng's full API. libpng reports errors by longjmp, so
 * each libpng-calling function keeps all state that must survive a longjmp in a png_ctx (memory, not locals). */
#include <limits.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/atomic.h"
#include "io/image.h"

typedef struct png_ctx {
    const char *name;
    char msg[256];
    /* reading */
    const uint8_t *data;
    size_t size, pos;
    png_bytep *rows;
    /* writing */
    uint8_t *buf;
    size_t len, cap;
    int oom;
} png_ctx;

static void on_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    lsdi_log(LSD_LOG_DEBUG, "%s: libpng: %s", c->name, msg);
}

static void read_mem(png_structp png, png_bytep dst, size_t n)
{
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->size - c->pos)
        png_error(png, "unexpected end of data (truncated file)");
    memcpy(dst, c->data + c->pos, n);
    c->pos += n;
}

static lsd_status decode(png_structp png, png_infop info, png_ctx *c, lsd_image *out)
{
    if (setjmp(png_jmpbuf(png)))
        return lsdi_error(LSD_ERR_FORMAT, "%s: corrupt PNG: %s", c->name, c->msg);
    png_set_read_fn(png, c, read_mem);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    LSDI_TRY(lsdi_image_check_size(c->name, "PNG", w, h));

    /* Everything becomes 8-bit RGBA (palette, low-bit grey and tRNS expanded; 16-bit rounded down to 8),
     * then alpha is composited on white by us: libpng's own compositing works in linear light, which is
     * not what image tools and training scripts (PIL) do. gAMA is ignored for the same reason. */
    png_set_expand(png);
    png_set_scale_16(png);
    png_set_gray_to_rgb(png);
    png_set_add_alpha(png, 0xff, PNG_FILLER_AFTER);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 4)
        return lsdi_error(LSD_ERR_INTERNAL, "%s: PNG transforms gave %zu bytes a row, expected %zu", c->name,
                          (size_t)png_get_rowbytes(png, info), (size_t)w * 4);

    LSDI_TRY(lsdi_image_alloc(out, c->name, (int)w, (int)h, 4));
    c->rows = malloc(h * sizeof *c->rows);
    if (!c->rows)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot allocate PNG row table", c->name);
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = out->data + (size_t)y * w * 4;
    png_read_image(png, c->rows);
    /* Reading up to IEND is what detects a file cut short after its last IDAT. */
    png_read_end(png, NULL);

    lsdi_image_composite_white(out->data, out->data, (size_t)w * h);
    lsdi_image_shrink_to_rgb(out);
    return LSD_OK;
}

lsd_status lsdi_png_decode(const uint8_t *data, size_t size, const char *name, lsd_image *out)
{
    png_ctx c = {.name = name, .data = data, .size = size};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    lsd_status st = info ? decode(png, info, &c, out)
                         : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot create a PNG decoder", name);
    png_destroy_read_struct(&png, &info, NULL);
    free(c.rows);
    return st;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* IHDR is the first chunk of every PNG: length 13, type, width, height. */
lsd_status lsdi_png_probe(const uint8_t *data, size_t size, const char *name, int *width, int *height)
{
    if (size < 24)
        return LSD_ERR_NOT_FOUND;
    if (be32(data + 8) != 13 || memcmp(data + 12, "IHDR", 4) != 0)
        return lsdi_error(LSD_ERR_FORMAT, "%s: corrupt PNG: the first chunk is not a 13-byte IHDR", name);
    uint32_t w = be32(data + 16), h = be32(data + 20);
    LSDI_TRY(lsdi_image_check_size(name, "PNG", w, h));
    *width = (int)w;
    *height = (int)h;
    return LSD_OK;
}

static void write_mem(png_structp png, png_bytep src, size_t n)
{
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->cap - c->len) {
        if (n > SIZE_MAX / 2 - c->len) {
            c->oom = 1;
            png_error(png, "encoded PNG too large");
        }
        size_t cap = c->cap ? c->cap : 65536;
        while (cap < c->len + n)
            cap *= 2;
        uint8_t *p = realloc(c->buf, cap);
        if (!p) {
            c->oom = 1;
            png_error(png, "out of memory");
        }
        c->buf = p;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, src, n);
    c->len += n;
}

/* The default flush would fflush() our io pointer as if it were a FILE *. */
static void flush_nothing(png_structp png) { (void)png; }

static lsd_status encode(png_structp png, png_infop info, png_ctx *c, const lsd_image *img, png_text *text,
                         int n_text)
{
    if (setjmp(png_jmpbuf(png)))
        return lsdi_error(c->oom ? LSD_ERR_OUT_OF_MEMORY : LSD_ERR_INTERNAL, "%s: PNG encoding failed: %s",
                          c->name, c->msg);
    png_set_write_fn(png, c, write_mem, flush_nothing);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text)
        png_set_text(png, info, text, n_text);
    png_write_info(png, info);
    for (int y = 0; y < img->height; y++)
        png_write_row(png, img->data + (size_t)y * (size_t)img->width * 3);
    png_write_end(png, info);
    return LSD_OK;
}

/* PNG keywords: 1..79 printable Latin-1 bytes, no leading, trailing or doubled spaces. libpng would silently
 * rewrite a bad key, so it is refused here instead. */
static lsd_status check_key(const char *path, const char *key, size_t i)
{
    if (!key)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: PNG text key %zu is NULL", path, i);
    size_t n = strlen(key);
    if (n < 1 || n > 79)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: PNG text key \"%s\" is %zu bytes; keys are 1..79 bytes",
                          path, key, n);
    for (size_t j = 0; j < n; j++) {
        unsigned char b = (unsigned char)key[j];
        if (!((b >= 32 && b <= 126) || b >= 161))
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                              "%s: PNG text key \"%s\" has byte 0x%02x at %zu; keys are printable Latin-1", path,
                              key, b, j);
    }
    if (key[0] == ' ' || key[n - 1] == ' ' || strstr(key, "  "))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "%s: PNG text key \"%s\" has leading, trailing or doubled spaces", path, key);
    return LSD_OK;
}

static lsd_status check_args(const char *path, const lsd_image *img, const char *const *keys,
                             const char *const *values, size_t n_text)
{
    if (!path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_image_save_png: path is NULL");
    if (!img)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_image_save_png(%s): img is NULL", path);
    if (img->channels != 3 || !img->data || img->width <= 0 || img->height <= 0)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "lsd_image_save_png(%s): image must have width, height > 0, channels == 3 and data; "
                          "found %dx%d, %d channels, data %s",
                          path, img->width, img->height, img->channels, img->data ? "set" : "NULL");
    if (lsdi_image_check_size(path, "output", (uint64_t)img->width, (uint64_t)img->height) != LSD_OK)
        return LSD_ERR_INVALID_ARGUMENT;
    if (n_text > INT_MAX)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %zu PNG text entries are too many", path, n_text);
    if (n_text && (!keys || !values))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %zu PNG text entries but text_keys or text_values is NULL",
                          path, n_text);
    for (size_t i = 0; i < n_text; i++) {
        LSDI_TRY(check_key(path, keys[i], i));
        if (!values[i])
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: PNG text value for key \"%s\" is NULL", path, keys[i]);
    }
    return LSD_OK;
}

static lsd_status encode_to_memory(const char *path, const lsd_image *img, const char *const *keys,
                                   const char *const *values, size_t n_text, png_ctx *c)
{
    png_text *text = calloc(n_text ? n_text : 1, sizeof *text);
    if (!text)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu PNG text entries", path, n_text);
    for (size_t i = 0; i < n_text; i++) {
        /* libpng's png_text is not const-qualified but png_set_text only copies from it. Values are UTF-8: plain
         * ASCII goes in tEXt, anything else in iTXt, which readers decode as UTF-8 (tEXt means Latin-1), as Pillow
         * and A1111 do. */
        int ascii = 1;
        for (const unsigned char *v = (const unsigned char *)values[i]; *v && ascii; v++)
            ascii = *v < 0x80;
        text[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        text[i].key = (char *)keys[i];
        text[i].text = (char *)values[i];
        if (ascii)
            text[i].text_length = strlen(values[i]);
        else
            text[i].itxt_length = strlen(values[i]);
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, on_error, on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    lsd_status st = info ? encode(png, info, c, img, text, (int)n_text)
                         : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot create a PNG encoder", path);
    png_destroy_write_struct(&png, &info);
    free(text);
    return st;
}

lsd_status lsd_image_save_png(const char *path, const lsd_image *img, const char *const *text_keys,
                              const char *const *text_values, size_t n_text)
{
    LSDI_TRY(check_args(path, img, text_keys, text_values, n_text));
    png_ctx c = {.name = path};
    lsd_status st = encode_to_memory(path, img, text_keys, text_values, n_text, &c);
    lsdi_atomic_file af;
    if (st == LSD_OK && (st = lsdi_atomic_begin(&af, path)) == LSD_OK) {
        st = lsdi_atomic_write(&af, c.buf, c.len);
        if (st == LSD_OK)
            st = lsdi_atomic_commit(&af);
        if (st != LSD_OK)
            lsdi_atomic_abort(&af);
    }
    free(c.buf);
    return st;
}
