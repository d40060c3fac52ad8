/* Aspect-ratio buckets: images of chosen sizes land where kohya's make_bucket_resolutions + select_bucket put
 * them (worked out by hand below), bucket_no_upscale's own rule, the parameter adjustments, and the pixels of a
 * bucketed item (resize to cover, center crop, flip) against a float64 reference. */
#include <stdlib.h>

#include "data/data.h"
#include "data_util.h"

static void expect_bucket(lsd_dataset *ds, const char *suffix, int bw, int bh, int rw, int rh)
{
    long i = item_index(ds, suffix);
    if (i < 0)
        return;
    const lsdi_buckets *b = &ds->buckets;
    int k = b->item_bucket[i];
    CHECK(k >= 0 && b->w[k] == bw && b->h[k] == bh, "%s: bucket %dx%d, want %dx%d", suffix, k >= 0 ? b->w[k] : 0,
          k >= 0 ? b->h[k] : 0, bw, bh);
    CHECK(b->resized_w[i] == rw && b->resized_h[i] == rh, "%s: resized %dx%d, want %dx%d", suffix, b->resized_w[i],
          b->resized_h[i], rw, rh);
}

/* resolution 512, min 256, max 1024, steps 64 (the defaults). max_area = 262144. make_bucket_resolutions:
 * the square 512x512; width w = 256..1024 step 64 with height min(1024, (262144 // w) // 64 * 64):
 *   256->1024, 320->768, 384->640, 448->576, 512->512, 576->448, 640->384, 704->320, 768->320, 832..1024->256,
 * both ways round: 17 buckets. An image takes the one of nearest aspect ratio, is scaled so the bucket's height
 * (image wider than the bucket) or width (otherwise) matches, sizes int(x + 0.5):
 *   1000x500 (2.0):  704x320 (2.2; 640x384 is 1.667), width matches: 0.704 -> 704x352
 *   600x800 (0.75):  448x576 (0.778; 384x640 is 0.6), width: 448/600 -> 448x int(597.33 + 0.5) = 448x597
 *   512x512:         its own size is a bucket: 512x512
 *   300x1200 (0.25): 256x1024 (exactly 0.25), width: 256/300 -> 256x1024
 *   3000x700 (4.29): 1024x256 (4.0; 960x256 is 3.75), height: 256/700 -> int(1097.14 + 0.5) = 1097x256
 *   64x48 (1.333):   576x448 (1.286; 512x512 and 640x384 are 0.333 away), height: 448/48 -> 597x448 (upscaled) */
TEST(data_buckets_kohya_assignment)
{
    const char *d = temp_dir();
    put_png_header(d, "2_x/wide.png", 1000, 500);
    put_png_header(d, "2_x/tall.png", 600, 800);
    put_png_header(d, "2_x/square.png", 512, 512);
    put_png_header(d, "2_x/narrow.png", 300, 1200);
    put_png_header(d, "1_y/panorama.png", 3000, 700);
    put_png_header(d, "1_y/small.png", 64, 48);
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.enable_bucket = 1;
    lsd_dataset *ds = open_ok(d, &p);
    if (!ds)
        return;
    expect_bucket(ds, "wide.png", 704, 320, 704, 352);
    expect_bucket(ds, "tall.png", 448, 576, 448, 597);
    expect_bucket(ds, "square.png", 512, 512, 512, 512);
    expect_bucket(ds, "narrow.png", 256, 1024, 256, 1024);
    expect_bucket(ds, "panorama.png", 1024, 256, 1097, 256);
    expect_bucket(ds, "small.png", 576, 448, 597, 448);
    /* The buckets in use, in (width, height) order, with their draws (2_x's images twice). */
    static const int want[6][3] = {{256, 1024, 2}, {448, 576, 2}, {512, 512, 2}, {576, 448, 1}, {704, 320, 2},
                                   {1024, 256, 1}};
    CHECK(lsd_dataset_bucket_count(ds) == 6, "%d buckets", lsd_dataset_bucket_count(ds));
    for (int k = 0; k < 6 && k < lsd_dataset_bucket_count(ds); k++) {
        int w = 0, h = 0;
        size_t n = 0;
        CHECK_OK(lsd_dataset_bucket_info(ds, k, &w, &h, &n));
        CHECK(w == want[k][0] && h == want[k][1] && n == (size_t)want[k][2], "bucket %d: %dx%d x%zu", k, w, h, n);
    }
    CHECK_STATUS(lsd_dataset_bucket_info(ds, 6, NULL, NULL, NULL), LSD_ERR_INVALID_ARGUMENT, "index 6");
    lsd_dataset_free(ds);

    /* Without enable_bucket: one resolution square; Resize(512) of the shortest side, the other truncated. */
    p.enable_bucket = 0;
    ds = open_ok(d, &p);
    CHECK(ds && lsd_dataset_bucket_count(ds) == 1);
    expect_bucket(ds, "wide.png", 512, 512, 1024, 512);
    expect_bucket(ds, "tall.png", 512, 512, 512, 682);
    expect_bucket(ds, "small.png", 512, 512, 682, 512);
    size_t n = 0;
    CHECK(ds && lsd_dataset_bucket_info(ds, 0, NULL, NULL, &n) == LSD_OK && n == 10, "%zu draws", n);
    lsd_dataset_free(ds);
}

/* bucket_no_upscale (resolution 512, steps 64): an image of at most 512^2 pixels keeps its size, one larger is
 * shrunk to that area with a side rounded to the step; the bucket is the size rounded down to the step.
 *   300x200:   kept; bucket 256x192
 *   700x300:   210000 <= 262144, kept; bucket 640x256
 *   2000x1000: ar 2, sqrt(262144 * 2) = 724.08 x 362.04. Width first: round_to_steps(724.08) = 724 - 724 % 64 = 704,
 *              height round_to_steps(704 / 2) = 320: ar 2.2. Height first: round_to_steps(362.04) = 320, width
 *              round_to_steps(640) = 640: ar 2.0, better -> resized int(320 * 2 + 0.5) x 320 = 640x320, bucket 640x320
 *   1000x1000: 512 both ways, a tie goes to the height branch: 512x512
 *   50x40:     kept, 0x0: no bucket, an error naming it */
TEST(data_buckets_no_upscale)
{
    const char *d = temp_dir();
    put_png_header(d, "a.png", 300, 200);
    put_png_header(d, "b.png", 700, 300);
    put_png_header(d, "c.png", 2000, 1000);
    put_png_header(d, "e.png", 1000, 1000);
    for (char c = 'a'; c <= 'e'; c++) {
        char rel[8] = {c, '.', 't', 'x', 't', 0};
        put_text(d, rel, "x", -1);
    }
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.enable_bucket = 1;
    p.bucket_no_upscale = 1;
    p.min_bucket_reso = 4096; /* ignored with bucket_no_upscale, as kohya does */
    lsd_dataset *ds = open_ok(d, &p);
    expect_bucket(ds, "a.png", 256, 192, 300, 200);
    expect_bucket(ds, "b.png", 640, 256, 700, 300);
    expect_bucket(ds, "c.png", 640, 320, 640, 320);
    expect_bucket(ds, "e.png", 512, 512, 512, 512);
    lsd_dataset_free(ds);
    put_png_header(d, "d.png", 50, 40);
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_UNSUPPORTED, "d.png: 50x40 has a side under bucket_reso_steps");
}

TEST(data_buckets_params)
{
    const char *d = temp_dir();
    put_png_header(d, "thin.png", 190, 1000);
    put_text(d, "thin.txt", "x", -1);
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.enable_bucket = 1;
    /* kohya rounds min down and max up to the step: 200 -> 192, 1000 -> 1024. Width 192 then gets height
     * min(1024, (262144 // 192) // 64 * 64 = 1344) = 1024, whose 0.1875 is nearest 190/1000. Unadjusted, there
     * would be no 192 and heights would stop at 1000. */
    p.min_bucket_reso = 200;
    p.max_bucket_reso = 1000;
    lsd_dataset *ds = open_ok(d, &p);
    expect_bucket(ds, "thin.png", 192, 1024, 195, 1024); /* 0.19 > 0.1875: height matches, 190 * 1.024 = 194.56 */
    lsd_dataset_free(ds);
    p.max_bucket_reso = 448;
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_INVALID_ARGUMENT, "resolution 512 is outside");
    p.max_bucket_reso = 1024;
    p.bucket_reso_steps = 12;
    CHECK_STATUS(lsd_dataset_open(d, &p, &ds), LSD_ERR_INVALID_ARGUMENT, "bucket_reso_steps 12");
}

/* Red is 6x (linear, so bilinear resizing is exact away from the edges) and green is y. */
static double ref_value(int out, int crop, int n_in, int n_resized, double slope)
{
    double x = (out + crop + 0.5) * n_in / n_resized - 0.5;
    if (x < 0)
        x = 0;
    if (x > n_in - 1)
        x = n_in - 1;
    return slope * x / 127.5 - 1;
}

/* resolution 32, steps 8, min 16, max 64: buckets 16x48 16x56 16x64 24x40 32x32 40x24 48x16 56x16 64x16.
 * A 40x20 image (2.0) goes to 40x24 (1.667; 48x16 is 3.0), height matches: 24/20 = 1.2 -> 48x24, center crop
 * left (48 - 40) // 2 = 4. */
TEST(data_buckets_pixels)
{
    const char *d = temp_dir();
    put_image(d, "a.png", 40, 20, IMG_PNG, 0);
    put_text(d, "a.txt", "x", -1);
    lsd_dataset_params p;
    lsd_dataset_params_init(&p);
    p.resolution = 32;
    p.enable_bucket = 1;
    p.bucket_reso_steps = 8;
    p.min_bucket_reso = 16;
    p.max_bucket_reso = 64;
    p.center_crop = 1;
    lsd_dataset *ds = open_ok(d, &p);
    lsd_dataset_item it = {.struct_size = sizeof it};
    if (!ds || !CHECK_OK(lsd_dataset_get(ds, 0, 0, &it))) {
        lsd_dataset_free(ds);
        return;
    }
    CHECK(it.width == 40 && it.height == 24 && it.crop_left == 4 && it.crop_top == 0 && !it.flipped &&
          it.original_width == 40 && it.original_height == 20 && it.bucket == 0 && it.repeats == 1 && !it.is_class,
          "%dx%d crop %d,%d bucket %d", it.width, it.height, it.crop_left, it.crop_top, it.bucket);
    double worst = 0;
    for (int y = 0; y < 24; y++)
        for (int x = 0; x < 40; x++) {
            worst = fmax(worst, fabs(it.pixels[y * 40 + x] - ref_value(x, 4, 40, 48, 6)));
            worst = fmax(worst, fabs(it.pixels[960 + y * 40 + x] - ref_value(y, 0, 20, 24, 1)));
            worst = fmax(worst, fabs(it.pixels[1920 + y * 40 + x] - (200 / 127.5 - 1)));
        }
    CHECK(worst < 1e-5, "pixels differ by %g", worst);
    lsd_dataset_item_release(&it);
    lsd_dataset_free(ds);
    /* Random crop (kohya's randint(0, trim)) and flip: offsets within 0..8, pixels where the offset says. */
    p.center_crop = 0;
    p.random_flip = 1;
    ds = open_ok(d, &p);
    int flips[2] = {0, 0}, lefts = 0;
    for (uint64_t seed = 0; ds && seed < 24; seed++) {
        if (!CHECK_OK(lsd_dataset_get(ds, 0, seed, &it)))
            break;
        CHECK(it.crop_left >= 0 && it.crop_left <= 8 && it.crop_top == 0);
        flips[it.flipped]++;
        lefts |= 1 << it.crop_left;
        for (int x = 0; x < 40; x++) {
            int ox = it.flipped ? 39 - x : x;
            CHECK(fabs(it.pixels[ox] - ref_value(x, it.crop_left, 40, 48, 6)) < 1e-5, "seed %d x %d", (int)seed, x);
        }
        lsd_dataset_item_release(&it);
    }
    CHECK(flips[0] && flips[1] && __builtin_popcount((unsigned)lefts) >= 4, "flips %d/%d, offsets %x", flips[0],
          flips[1], lefts);
    lsd_dataset_free(ds);
}
