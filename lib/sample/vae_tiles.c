#include "sample/vae_tiles.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* Decodes the [th, tw] window at (i0, j0) of host latents [batch, C, h, w] into out [batch, oc, th*f, tw*f]. */
static lsd_status decode_window(const lsdi_vae *v, lsdt_dtype dt, const char *device, const float *lat, int batch,
                                int h, int w, int i0, int j0, int th, int tw, float *out)
{
    int C = v->cfg.latent_channels, f = lsdi_vae_scale_factor(v), oc = v->cfg.out_channels;
    size_t n_out = (size_t)batch * oc * th * f * tw * f;
    const float *src = lat;
    float *window = NULL;
    if (th != h || tw != w) {
        window = malloc((size_t)batch * C * th * tw * sizeof *window);
        if (!window)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE decode: %dx%d latent tile", th, tw);
        for (int p = 0; p < batch * C; p++)
            for (int y = 0; y < th; y++)
                memcpy(window + ((size_t)p * th + y) * tw, lat + ((size_t)p * h + i0 + y) * w + j0,
                       (size_t)tw * sizeof *window);
        src = window;
    }
    lsdt_scope *s = lsdt_scope_begin();
    if (!s) {
        free(window);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE decode: scope");
    }
    int64_t shape[4] = {batch, C, th, tw};
    lsdt_tensor *x = lsdt_channels_last(s, lsdt_from_host(s, src, LSDT_F32, shape, 4, dt, device));
    lsdt_tensor *y = lsdi_vae_decode(s, v, x);
    int rc = 0;
    if (y && lsdt_scope_status(s) == 0) {
        if ((size_t)lsdt_numel(y) != n_out)
            lsdt_scope_fail(s, LSD_ERR_INTERNAL, "decoder output size differs from latents x scale factor");
        else
            rc = lsdt_to_host(y, out, LSDT_F32, n_out);
    }
    int st = lsdt_scope_end(s);
    free(window);
    if (st || rc)
        return lsdi_error_prefix(lsdi_error_from_shim(st ? st : rc), "VAE decode of %dx%d latents at (%d, %d)", th,
                                 tw, i0, j0);
    return LSD_OK;
}

/* diffusers' blend_v / blend_h: the first e rows (columns) of b fade in from the last e of a. The weights are
 * Python floats there, applied to float32 tensors as float32 scalars. */
static void blend_v(const float *a, int ah, float *b, int bh, int planes, int width, int extent)
{
    int e = extent < ah ? extent : ah;
    e = e < bh ? e : bh;
    for (int y = 0; y < e; y++) {
        float wa = (float)(1.0 - (double)y / e), wb = (float)((double)y / e);
        for (int p = 0; p < planes; p++) {
            const float *ar = a + ((size_t)p * ah + ah - e + y) * width;
            float *br = b + ((size_t)p * bh + y) * width;
            for (int x = 0; x < width; x++)
                br[x] = ar[x] * wa + br[x] * wb;
        }
    }
}

static void blend_h(const float *a, int aw, float *b, int bw, int planes, int height, int extent)
{
    int e = extent < aw ? extent : aw;
    e = e < bw ? e : bw;
    for (int x = 0; x < e; x++) {
        float wa = (float)(1.0 - (double)x / e), wb = (float)((double)x / e);
        for (size_t r = 0; r < (size_t)planes * height; r++)
            b[r * bw + x] = a[r * aw + aw - e + x] * wa + b[r * bw + x] * wb;
    }
}

typedef struct tile_buf {
    float *px;
    int h, w; /* pixels */
} tile_buf;

/* AutoencoderKL.tiled_decode with tile_latent_min_size = tile, tile_sample_min_size = tile * f and
 * tile_overlap_factor 0.25. diffusers decodes every tile first and then blends each one in place with its
 * (already blended) upper and left neighbours; the same order over one row of tiles plus a scratch tile gives
 * the same numbers in a fraction of the memory. */
static lsd_status decode_tiled(const lsdi_vae *v, lsdt_dtype dt, const char *device, const float *lat, int batch,
                               int h, int w, int tile, float *out)
{
    int f = lsdi_vae_scale_factor(v), oc = v->cfg.out_channels;
    int overlap = tile - tile / 4, sample = tile * f, extent = sample / 4, limit = sample - extent;
    int H = h * f, W = w * f, planes = batch * oc, cols = (w + overlap - 1) / overlap;
    size_t tile_floats = (size_t)planes * sample * sample;
    tile_buf *row = calloc((size_t)cols + 1, sizeof *row);
    if (!row)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE tiled decode: %d tiles a row", cols);
    lsd_status st = LSD_OK;
    for (int j = 0; j <= cols && st == LSD_OK; j++)
        if (!(row[j].px = malloc(tile_floats * sizeof(float))))
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "VAE tiled decode: %d tiles of %dx%d pixels", cols + 1, sample,
                            sample);
    tile_buf *scratch = &row[cols];
    for (int i = 0, ti = 0; i < h && st == LSD_OK; i += overlap, ti++) {
        for (int j = 0, tj = 0; j < w && st == LSD_OK; j += overlap, tj++) {
            int th = h - i < tile ? h - i : tile, tw = w - j < tile ? w - j : tile;
            st = decode_window(v, dt, device, lat, batch, h, w, i, j, th, tw, scratch->px);
            if (st != LSD_OK)
                break;
            scratch->h = th * f;
            scratch->w = tw * f;
            if (ti > 0)
                blend_v(row[tj].px, row[tj].h, scratch->px, scratch->h, planes, scratch->w, extent);
            if (tj > 0)
                blend_h(row[tj - 1].px, row[tj - 1].w, scratch->px, scratch->w, planes, scratch->h, extent);
            tile_buf done = *scratch;
            *scratch = row[tj];
            row[tj] = done;
            int ch = done.h < limit ? done.h : limit, cw = done.w < limit ? done.w : limit;
            int y0 = ti * limit, x0 = tj * limit;
            if (y0 + ch > H || x0 + cw > W) {
                st = lsdi_error(LSD_ERR_INTERNAL, "VAE tiled decode: tile (%d, %d) runs past the image", ti, tj);
                break;
            }
            for (int p = 0; p < planes; p++)
                for (int y = 0; y < ch; y++)
                    memcpy(out + ((size_t)p * H + y0 + y) * W + x0, done.px + ((size_t)p * done.h + y) * done.w,
                           (size_t)cw * sizeof(float));
        }
    }
    for (int j = 0; j <= cols; j++)
        free(row[j].px);
    free(row);
    return st;
}

lsd_status lsdi_vae_decode_host(const lsdi_vae *v, lsdt_dtype dtype, const char *device, const float *latents,
                                int batch, int h, int w, int tile, float *out)
{
    if (tile > 0 && (tile < 4 || tile % 4))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "VAE tile %d is not a positive multiple of 4 latent pixels", tile);
    if (tile <= 0 || (h <= tile && w <= tile))
        return decode_window(v, dtype, device, latents, batch, h, w, 0, 0, h, w, out);
    return decode_tiled(v, dtype, device, latents, batch, h, w, tile, out);
}
