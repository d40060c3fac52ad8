/* The pixels of one draw, as the scripts' pipelines make them: resized (bilinear, half-pixel centres, no
 * antialiasing) to cover the crop, cropped (center or random), optionally flipped, scaled to [-1, 1] CHW
 * (torchvision's ToTensor + Normalize(0.5, 0.5)). */
#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "data/data.h"

void lsdi_place(lsdi_sample_ref *r, int center_crop, int kohya_center, int random_flip, uint64_t seed)
{
    uint64_t rng = lsdi_train_seed(seed, r->index, 0x5EED);
    int tv = r->resized_h - r->height, th = r->resized_w - r->width;
    if (center_crop) {
        r->crop_top = kohya_center ? tv / 2 : (int)lround(tv / 2.0);
        r->crop_left = kohya_center ? th / 2 : (int)lround(th / 2.0);
    } else {
        r->crop_top = (int)lsdi_rng_below(&rng, (size_t)tv + 1);
        r->crop_left = (int)lsdi_rng_below(&rng, (size_t)th + 1);
    }
    r->flip = random_flip && (lsdi_rng_next(&rng) >> 63);
}

/* Source coordinate of output pixel i when n_in pixels are resized to n_out (PIL/torch align_corners=False). */
static void taps(int i, int n_in, int n_out, int *i0, int *i1, float *w1)
{
    double x = ((double)i + 0.5) * n_in / n_out - 0.5;
    if (x < 0)
        x = 0;
    int a = (int)x;
    if (a > n_in - 1)
        a = n_in - 1;
    *i0 = a;
    *i1 = a + 1 < n_in ? a + 1 : n_in - 1;
    *w1 = (float)(x - a);
}

static void render(const lsd_image *img, const lsdi_sample_ref *r, float *out)
{
    int w = img->width, h = img->height, W = r->width, H = r->height;
    size_t plane = (size_t)W * H;
    const uint8_t *d = img->data;
    for (int y = 0; y < H; y++) {
        int y0, y1;
        float fy;
        taps(y + r->crop_top, h, r->resized_h, &y0, &y1, &fy);
        for (int x = 0; x < W; x++) {
            int x0, x1;
            float fx;
            taps(x + r->crop_left, w, r->resized_w, &x0, &x1, &fx);
            int ox = r->flip ? W - 1 - x : x;
            for (int c = 0; c < 3; c++) {
                float a = d[((size_t)y0 * w + x0) * 3 + c], b = d[((size_t)y0 * w + x1) * 3 + c];
                float e = d[((size_t)y1 * w + x0) * 3 + c], f = d[((size_t)y1 * w + x1) * 3 + c];
                float v = (a + (b - a) * fx) * (1 - fy) + (e + (f - e) * fx) * fy;
                out[c * plane + (size_t)y * W + ox] = v / 127.5f - 1.0f;
            }
        }
    }
}

lsd_status lsdi_dataset_load_ref(lsd_dataset *ds, const lsdi_sample_ref *r, float *out)
{
    if (r->index >= ds->n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "dataset %s: index %zu >= size %zu", ds->dir, r->index, ds->n);
    const lsdi_item *it = &ds->items[r->index];
    if (r->width < 1 || r->height < 1 || r->resized_w < r->width || r->resized_h < r->height ||
        r->crop_left < 0 || r->crop_top < 0 || r->crop_left > r->resized_w - r->width ||
        r->crop_top > r->resized_h - r->height)
        return lsdi_error(LSD_ERR_INTERNAL, "%s: crop %dx%d at (%d, %d) does not fit the image resized to %dx%d",
                          it->path, r->width, r->height, r->crop_left, r->crop_top, r->resized_w, r->resized_h);
    lsd_image img = {sizeof img, 0, 0, 0, NULL};
    LSDI_TRY(lsd_image_load(it->path, &img));
    lsd_status st = LSD_OK;
    if (img.width != it->width || img.height != it->height)
        st = lsdi_error(LSD_ERR_FORMAT, "%s: the image is %dx%d now but was %dx%d when the dataset was opened",
                        it->path, img.width, img.height, it->width, it->height);
    else
        render(&img, r, out);
    lsd_image_release(&img);
    return st;
}

lsd_status lsdi_dataset_load(lsd_dataset *ds, size_t index, int res, int center_crop, int random_flip, uint64_t seed,
                             float *out, lsd_dataset_item *info)
{
    if (index >= ds->n)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "dataset %s: index %zu >= size %zu", ds->dir, index, ds->n);
    const lsdi_item *it = &ds->items[index];
    lsdi_sample_ref r = {.index = index, .width = res, .height = res, .is_class = it->is_class};
    lsdi_square_resize(it->width, it->height, res, &r.resized_w, &r.resized_h);
    lsdi_place(&r, center_crop, 0, random_flip, seed);
    LSDI_TRY(lsdi_dataset_load_ref(ds, &r, out));
    if (info) {
        info->caption = it->captions[0];
        info->path = it->path;
        info->width = info->height = res;
        info->crop_left = r.crop_left;
        info->crop_top = r.crop_top;
        info->flipped = r.flip;
    }
    return LSD_OK;
}
