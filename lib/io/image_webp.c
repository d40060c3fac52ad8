/* WebP decoding to RGB8 over libwebp's advanced API (for its status codes); alpha composited on white. */
#include <webp/decode.h>

#include "core/error.h"
#include "io/image.h"

static const char *vp8_status_text(VP8StatusCode s)
{
    switch (s) {
    case VP8_STATUS_OK: return "ok";
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "not enough data (truncated file)";
    }
    return "unknown error";
}

lsd_status lsdi_webp_decode(const uint8_t *data, size_t size, const char *name, lsd_image *out)
{
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg))
        return lsdi_error(LSD_ERR_INTERNAL, "%s: libwebp version mismatch", name);
    VP8StatusCode vs = WebPGetFeatures(data, size, &cfg.input);
    if (vs != VP8_STATUS_OK)
        return lsdi_error(LSD_ERR_FORMAT, "%s: corrupt WebP header: %s", name, vp8_status_text(vs));
    if (cfg.input.has_animation)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: animated WebP is not supported", name);
    int w = cfg.input.width, h = cfg.input.height, bpp = cfg.input.has_alpha ? 4 : 3;
    LSDI_TRY(lsdi_image_check_size(name, "WebP", (uint64_t)(unsigned)w, (uint64_t)(unsigned)h));
    LSDI_TRY(lsdi_image_alloc(out, name, w, h, bpp));

    cfg.output.colorspace = bpp == 4 ? MODE_RGBA : MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = out->data;
    cfg.output.u.RGBA.stride = w * bpp;
    cfg.output.u.RGBA.size = (size_t)w * (size_t)h * (size_t)bpp;
    vs = WebPDecode(data, size, &cfg);
    if (vs != VP8_STATUS_OK)
        return lsdi_error(vs == VP8_STATUS_OUT_OF_MEMORY ? LSD_ERR_OUT_OF_MEMORY : LSD_ERR_FORMAT,
                          "%s: corrupt WebP: %s", name, vp8_status_text(vs));
    if (bpp == 4) {
        lsdi_image_composite_white(out->data, out->data, (size_t)w * (size_t)h);
        lsdi_image_shrink_to_rgb(out);
    }
    return LSD_OK;
}

lsd_status lsdi_webp_probe(const uint8_t *data, size_t size, const char *name, int *width, int *height)
{
    WebPBitstreamFeatures f;
    VP8StatusCode vs = WebPGetFeatures(data, size, &f);
    if (vs == VP8_STATUS_NOT_ENOUGH_DATA)
        return LSD_ERR_NOT_FOUND;
    if (vs != VP8_STATUS_OK)
        return lsdi_error(LSD_ERR_FORMAT, "%s: corrupt WebP header: %s", name, vp8_status_text(vs));
    if (f.has_animation)
        return lsdi_error(LSD_ERR_UNSUPPORTED, "%s: animated WebP is not supported", name);
    LSDI_TRY(lsdi_image_check_size(name, "WebP", (uint64_t)(unsigned)f.width, (uint64_t)(unsigned)f.height));
    *width = f.width;
    *height = f.height;
    return LSD_OK;
}
