/* JPEG decoding to RGB8 over TurboJPEG, with CMYK conversion and EXIF orientation applied to the pixels. */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "core/error.h"
#include "io/image.h"

static unsigned rd16(const uint8_t *p, int le) { return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1]; }

static uint32_t rd32(const uint8_t *p, int le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Orientation (tag 0x0112) from IFD0 of a TIFF block; 1 when absent or malformed: a bad EXIF block is
 * metadata damage, not a reason to refuse the pixels. */
static int tiff_orientation(const uint8_t *t, size_t n)
{
    if (n < 8)
        return 1;
    int le;
    if (memcmp(t, "II*\0", 4) == 0)
        le = 1;
    else if (memcmp(t, "MM\0*", 4) == 0)
        le = 0;
    else
        return 1;
    uint32_t ifd = rd32(t + 4, le);
    if (ifd > n - 2)
        return 1;
    unsigned count = rd16(t + ifd, le);
    for (unsigned i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + 12 * (size_t)i;
        if (e + 12 > n)
            break;
        if (rd16(t + e, le) != 0x0112)
            continue;
        unsigned v = rd16(t + e + 8, le);
        return rd16(t + e + 2, le) == 3 && v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

/* Walks the marker segments before the first scan looking for an APP1 "Exif" block. *truncated (optional) is
 * set when the data ends before the walk reaches the scan or the Exif block. */
static int exif_orientation(const uint8_t *d, size_t n, int *truncated)
{
    size_t p = 2;
    int cut = 1, o = 1;
    while (p + 4 <= n) {
        if (d[p] != 0xFF) {
            cut = 0;
            break;
        }
        uint8_t m = d[p + 1];
        if (m == 0xFF) { /* fill byte */
            p++;
            continue;
        }
        if (m == 0xDA || m == 0xD9) {
            cut = 0;
            break;
        }
        if ((m >= 0xD0 && m <= 0xD7) || m == 0x01) {
            p += 2;
            continue;
        }
        size_t len = (size_t)d[p + 2] << 8 | d[p + 3];
        if (len < 2) {
            cut = 0;
            break;
        }
        if (len > n - p - 2)
            break;
        if (m == 0xE1 && len >= 8 && memcmp(d + p + 4, "Exif\0\0", 6) == 0) {
            o = tiff_orientation(d + p + 10, len - 8);
            cut = 0;
            break;
        }
        p += 2 + len;
    }
    if (truncated)
        *truncated = cut;
    return cut ? 1 : o;
}

/* Rewrites img as seen after EXIF orientation o: out(ox, oy) = in(x0 + xx*ox + xy*oy, y0 + yx*ox + yy*oy). */
static lsd_status apply_orientation(lsd_image *img, int o, const char *name)
{
    if (o == 1)
        return LSD_OK;
    long w = img->width, h = img->height;
    long x0 = 0, xx = 0, xy = 0, y0 = 0, yx = 0, yy = 0;
    switch (o) {
    case 2: x0 = w - 1, xx = -1, yy = 1; break;                 /* mirror horizontally */
    case 3: x0 = w - 1, xx = -1, y0 = h - 1, yy = -1; break;    /* rotate 180 */
    case 4: xx = 1, y0 = h - 1, yy = -1; break;                 /* mirror vertically */
    case 5: xy = 1, yx = 1; break;                              /* transpose */
    case 6: xy = 1, y0 = h - 1, yx = -1; break;                 /* rotate 90 clockwise */
    case 7: x0 = w - 1, xy = -1, y0 = h - 1, yx = -1; break;    /* transverse */
    default: x0 = w - 1, xy = -1, yx = 1; break;                /* 8: rotate 90 counter-clockwise */
    }
    long ow = o >= 5 ? h : w, oh = o >= 5 ? w : h;
    uint8_t *dst = malloc((size_t)w * (size_t)h * 3);
    if (!dst)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot allocate the buffer to apply EXIF orientation %d",
                          name, o);
    for (long oy = 0; oy < oh; oy++)
        for (long ox = 0; ox < ow; ox++) {
            long sx = x0 + xx * ox + xy * oy, sy = y0 + yx * ox + yy * oy;
            const uint8_t *src = img->data + ((size_t)sy * (size_t)w + (size_t)sx) * 3;
            memcpy(dst + ((size_t)oy * (size_t)ow + (size_t)ox) * 3, src, 3);
        }
    free(img->data);
    img->data = dst;
    img->width = (int)ow;
    img->height = (int)oh;
    return LSD_OK;
}

/* libjpeg-turbo's own tools (djpeg, tjLoadImage's writers) treat CMYK samples as Adobe writes them, inverted
 * (255 = no ink), so R = C*K/255; done in place, 4 bytes a pixel to 3. */
static void cmyk_to_rgb(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned k = p[4 * i + 3];
        for (int c = 0; c < 3; c++)
            p[3 * i + c] = (uint8_t)((p[4 * i + c] * k + 127) / 255);
    }
}

/* TurboJPEG's header reader: the size before orientation and the colour space. */
static lsd_status read_header(tjhandle tj, const uint8_t *data, size_t size, const char *name, int *w, int *h, int *cs)
{
    int subsamp;
    if (tjDecompressHeader3(tj, data, (unsigned long)size, w, h, &subsamp, cs) != 0)
        return lsdi_error(LSD_ERR_FORMAT, "%s: corrupt JPEG header: %s", name, tjGetErrorStr2(tj));
    /* TurboJPEG 2.1 reports success without touching w/h for a stream that ends before its frame header
     * (it takes it for a tables-only stream). */
    if (*w <= 0 || *h <= 0)
        return lsdi_error(LSD_ERR_FORMAT, "%s: corrupt JPEG: no frame header before the data ends (%s)", name,
                          tjGetErrorStr2(tj));
    return lsdi_image_check_size(name, "JPEG", (uint64_t)(unsigned)*w, (uint64_t)(unsigned)*h);
}

static lsd_status decode(tjhandle tj, const uint8_t *data, size_t size, const char *name, lsd_image *out)
{
    int w = 0, h = 0, cs;
    LSDI_TRY(read_header(tj, data, size, name, &w, &h, &cs));
    int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    LSDI_TRY(lsdi_image_alloc(out, name, w, h, cmyk ? 4 : 3));
    /* A warning (truncated data, corrupt entropy-coded segment) means some pixels are made up: refuse it. */
    if (tjDecompress2(tj, data, (unsigned long)size, out->data, w, 0, h, cmyk ? TJPF_CMYK : TJPF_RGB,
                      TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) != 0)
        return lsdi_error(LSD_ERR_FORMAT, "%s: corrupt JPEG: %s", name, tjGetErrorStr2(tj));
    if (cmyk) {
        cmyk_to_rgb(out->data, (size_t)w * (size_t)h);
        lsdi_image_shrink_to_rgb(out);
    }
    return apply_orientation(out, exif_orientation(data, size, NULL), name);
}

lsd_status lsdi_jpeg_probe(const uint8_t *data, size_t size, const char *name, int *width, int *height)
{
    int truncated = 0, o = exif_orientation(data, size, &truncated);
    if (truncated)
        return LSD_ERR_NOT_FOUND;
#if SIZE_MAX > ULONG_MAX
    if (size > ULONG_MAX)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: JPEG of %zu bytes is too large for TurboJPEG", name, size);
#endif
    tjhandle tj = tjInitDecompress();
    if (!tj)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot create a JPEG decoder: %s", name, tjGetErrorStr2(NULL));
    int w = 0, h = 0, cs;
    lsd_status st = read_header(tj, data, size, name, &w, &h, &cs);
    tjDestroy(tj);
    if (st == LSD_OK) {
        *width = o >= 5 ? h : w; /* orientations 5-8 turn the image a quarter */
        *height = o >= 5 ? w : h;
    }
    return st;
}

lsd_status lsdi_jpeg_decode(const uint8_t *data, size_t size, const char *name, lsd_image *out)
{
#if SIZE_MAX > ULONG_MAX
    if (size > ULONG_MAX)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: JPEG of %zu bytes is too large for TurboJPEG", name, size);
#endif
    tjhandle tj = tjInitDecompress();
    if (!tj)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: cannot create a JPEG decoder: %s", name, tjGetErrorStr2(NULL));
    lsd_status st = decode(tj, data, size, name, out);
    tjDestroy(tj);
    return st;
}
