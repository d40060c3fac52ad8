/* Internal interface between the image entry points (image.c) and the per-format codecs. A decoder fills *out
 * with a malloc'd RGB8 image and returns LSD_OK, or returns a status whose message names `name` (the path, or
 * the caller's name for in-memory data); on failure *out may hold a partial buffer, which the caller releases. */
#ifndef LSD_IO_IMAGE_H
#define LSD_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "lora_sd.h"

/* Checked against header dimensions before any pixel buffer exists, so a hostile header cannot make us
 * allocate gigabytes. */
#define LSDI_IMAGE_MAX_SIDE 16384
#define LSDI_IMAGE_MAX_PIXELS ((uint64_t)1 << 28)

/* LSD_ERR_UNSUPPORTED naming `name` and the size when the dimensions exceed the limits; LSD_ERR_FORMAT if zero. */
lsd_status lsdi_image_check_size(const char *name, const char *format, uint64_t width, uint64_t height);

/* Allocates bytes_per_pixel * width * height bytes (the caller checked the size first); sets out's fields for
 * an RGB8 image of that size. bytes_per_pixel > 3 gives room to decode RGBA/CMYK in place. */
lsd_status lsdi_image_alloc(lsd_image *out, const char *name, int width, int height, int bytes_per_pixel);

/* Shrinks an in-place 4-byte-per-pixel buffer to RGB (see lsdi_image_alloc). */
void lsdi_image_shrink_to_rgb(lsd_image *img);

/* Converts n RGBA pixels to RGB with alpha composited on white (gamma-space, rounded). rgb may equal rgba. */
void lsdi_image_composite_white(const uint8_t *rgba, uint8_t *rgb, size_t n);

/* Width and height from the header alone (JPEG: after EXIF orientation), reading the start of the file; the
 * limits of lsdi_image_check_size apply. Errors name the path as lsd_image_load's would. */
lsd_status lsdi_image_probe(const char *path, int *width, int *height);

/* Header probes of the codecs over the first `size` bytes of a file; LSD_ERR_NOT_FOUND (no message) when those
 * bytes end before the header does, so the caller can retry with the whole file. */
lsd_status lsdi_png_probe(const uint8_t *data, size_t size, const char *name, int *width, int *height);
lsd_status lsdi_jpeg_probe(const uint8_t *data, size_t size, const char *name, int *width, int *height);
lsd_status lsdi_webp_probe(const uint8_t *data, size_t size, const char *name, int *width, int *height);

lsd_status lsdi_png_decode(const uint8_t *data, size_t size, const char *name, lsd_image *out);
lsd_status lsdi_jpeg_decode(const uint8_t *data, size_t size, const char *name, lsd_image *out);
lsd_status lsdi_webp_decode(const uint8_t *data, size_t size, const char *name, lsd_image *out);

#endif
