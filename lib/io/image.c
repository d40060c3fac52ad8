/* Image loading entry points: reads the bytes, picks the codec from the magic bytes, and owns the shared
 * size limits and pixel helpers. */
#include "io/image.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"

/* No real PNG/JPEG/WebP within the pixel limits comes near this; a larger file is not worth reading whole. */
#define MAX_FILE_BYTES ((uint64_t)1 << 30)

lsd_status lsdi_image_check_size(const char *name, const char *format, uint64_t width, uint64_t height)
{
    if (width == 0 || height == 0)
        return lsdi_error(LSD_ERR_FORMAT, "%s: %s header gives an empty %llux%llu image", name, format,
                          (unsigned long long)width, (unsigned long long)height);
    if (width > LSDI_IMAGE_MAX_SIDE || height > LSDI_IMAGE_MAX_SIDE || width * height > LSDI_IMAGE_MAX_PIXELS)
        return lsdi_error(LSD_ERR_UNSUPPORTED,
                          "%s: %s image is %llux%llu, larger than the limit of %d pixels a side and %llu pixels",
                          name, format, (unsigned long long)width, (unsigned long long)height, LSDI_IMAGE_MAX_SIDE,
                          (unsigned long long)LSDI_IMAGE_MAX_PIXELS);
    return LSD_OK;
}

lsd_status lsdi_image_alloc(lsd_image *out, const char *name, int width, int height, int bytes_per_pixel)
{
    size_t n = (size_t)width * (size_t)height * (size_t)bytes_per_pixel;
    uint8_t *data = malloc(n);
    if (!data)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes for a %dx%d image", name, n, width,
                          height);
    out->struct_size = sizeof *out;
    out->width = width;
    out->height = height;
    out->channels = 3;
    out->data = data;
    return LSD_OK;
}

void lsdi_image_shrink_to_rgb(lsd_image *img)
{
    /* Shrinking never fails in practice; if it does, the larger block is still valid. */
    uint8_t *p = realloc(img->data, (size_t)img->width * (size_t)img->height * 3);
    if (p)
        img->data = p;
}

void lsdi_image_composite_white(const uint8_t *rgba, uint8_t *rgb, size_t n)
{
    /* Forward order keeps this correct in place: pixel i is written at 3i, at or before where it was read. */
    for (size_t i = 0; i < n; i++) {
        unsigned a = rgba[4 * i + 3];
        for (int c = 0; c < 3; c++)
            rgb[3 * i + c] = (uint8_t)((a * rgba[4 * i + c] + (255 - a) * 255 + 127) / 255);
    }
}

static int has_prefix(const uint8_t *d, size_t n, const void *magic, size_t m, size_t at)
{
    return n >= at + m && memcmp(d + at, magic, m) == 0;
}

typedef struct codec {
    lsd_status (*decode)(const uint8_t *data, size_t size, const char *name, lsd_image *out);
    lsd_status (*probe)(const uint8_t *data, size_t size, const char *name, int *width, int *height);
} codec;

/* The codec of the magic bytes; NULL (with the error set) when none matches. */
static const codec *codec_of(const uint8_t *d, size_t n, const char *name)
{
    static const codec png = {lsdi_png_decode, lsdi_png_probe}, jpeg = {lsdi_jpeg_decode, lsdi_jpeg_probe},
                       webp = {lsdi_webp_decode, lsdi_webp_probe};
    if (has_prefix(d, n, "\x89PNG\r\n\x1a\n", 8, 0))
        return &png;
    if (has_prefix(d, n, "\xff\xd8\xff", 3, 0))
        return &jpeg;
    if (has_prefix(d, n, "RIFF", 4, 0) && has_prefix(d, n, "WEBP", 4, 8))
        return &webp;
    lsdi_error(LSD_ERR_FORMAT, "%s: not a PNG, JPEG or WebP image (unrecognised signature)", name);
    return NULL;
}

lsd_status lsd_image_load_memory(const void *data, size_t size, const char *name, lsd_image *out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_image_load_memory: out is NULL");
    memset(out, 0, sizeof *out);
    if (!name)
        name = "<memory>";
    if (!data && size)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_image_load_memory(%s): data is NULL", name);
    const codec *c = codec_of(data, size, name);
    if (!c)
        return LSD_ERR_FORMAT;
    lsd_status st = c->decode(data, size, name, out);
    if (st != LSD_OK)
        lsd_image_release(out);
    return st;
}

/* The first min(limit, file size) bytes of path (limit 0: the whole file, which must be within MAX_FILE_BYTES);
 * *file_size gets the whole size. */
static lsd_status read_image_file(const char *path, uint64_t limit, uint8_t **out, size_t *out_size,
                                  uint64_t *file_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lsdi_error(LSD_ERR_IO, "%s: cannot open image: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return lsdi_error(LSD_ERR_IO, "%s: cannot stat image: %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return lsdi_error(LSD_ERR_IO, "%s: cannot read image: %s", path,
                          S_ISDIR(sb.st_mode) ? "is a directory" : "not a regular file");
    }
    if (!limit && (uint64_t)sb.st_size > MAX_FILE_BYTES) {
        close(fd);
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: image file of %lld bytes exceeds the %llu-byte limit", path,
                          (long long)sb.st_size, (unsigned long long)MAX_FILE_BYTES);
    }
    *file_size = (uint64_t)sb.st_size;
    size_t size = (size_t)(limit && limit < (uint64_t)sb.st_size ? limit : (uint64_t)sb.st_size);
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes to read the image", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int err = r < 0 ? errno : 0;
            free(buf);
            close(fd);
            return lsdi_error(LSD_ERR_IO, "%s: read failed after %zu of %zu bytes: %s", path, got, size,
                              err ? strerror(err) : "file shrank while reading");
        }
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *out_size = size;
    return LSD_OK;
}

lsd_status lsd_image_load(const char *path, lsd_image *out)
{
    if (!out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_image_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_image_load: path is NULL");
    uint8_t *buf = NULL;
    size_t size = 0;
    uint64_t file_size = 0;
    LSDI_TRY(read_image_file(path, 0, &buf, &size, &file_size));
    lsd_status st = lsd_image_load_memory(buf, size, path, out);
    free(buf);
    return st;
}

static lsd_status probe_bytes(const uint8_t *d, size_t n, const char *path, int *w, int *h)
{
    const codec *c = codec_of(d, n, path);
    return c ? c->probe(d, n, path, w, h) : LSD_ERR_FORMAT;
}

/* Headers are at the start of a file (JPEG's can follow tens of kilobytes of EXIF and ICC data); a header that
 * runs past this prefix is probed again over the whole file. */
#define PROBE_BYTES 65536

lsd_status lsdi_image_probe(const char *path, int *width, int *height)
{
    uint8_t *buf = NULL;
    size_t size = 0;
    uint64_t file_size = 0;
    LSDI_TRY(read_image_file(path, PROBE_BYTES, &buf, &size, &file_size));
    lsd_status st = probe_bytes(buf, size, path, width, height);
    free(buf);
    if (st == LSD_ERR_NOT_FOUND && file_size > size) {
        LSDI_TRY(read_image_file(path, 0, &buf, &size, &file_size));
        st = probe_bytes(buf, size, path, width, height);
        free(buf);
    }
    if (st == LSD_ERR_NOT_FOUND)
        st = lsdi_error(LSD_ERR_FORMAT, "%s: truncated image: the file ends inside its header", path);
    return st;
}

void lsd_image_release(lsd_image *img)
{
    if (!img)
        return;
    free(img->data);
    memset(img, 0, sizeof *img);
}
