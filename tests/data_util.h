/* Fixture folders for the data tests (tests/test_data_*.c): images in each format and caption files, written
 * under a test's temporary directory with their parent folders. */
#ifndef LSD_TESTS_DATA_UTIL_H
#define LSD_TESTS_DATA_UTIL_H

#include "test.h"

typedef enum { IMG_PNG, IMG_JPEG, IMG_WEBP } img_format;

/* dir/rel as a w x h image: red = (6 x) mod 256, green = (y + seed) mod 256, blue = 200 - 3 seed. JPEG and WebP
 * are written at quality 100 (lossy: compare pixels of PNGs only). Returns the path (static rotation). */
const char *put_image(const char *dir, const char *rel, int w, int h, img_format fmt, int seed);
/* dir/rel as a PNG of w x h that ends after its IHDR chunk: enough for lsd_dataset_open (which reads headers),
 * not for decoding. Returns the path (static rotation). */
const char *put_png_header(const char *dir, const char *rel, int w, int h);
/* dir/rel with the bytes of text (n < 0: strlen). Returns the path (static rotation). */
const char *put_text(const char *dir, const char *rel, const char *text, int n);
/* dir/rel as a directory (and its parents). Returns the path (a ring of 32, apart from the files' 8). */
const char *put_dir(const char *dir, const char *rel);
/* Opens dir with p, checking success; NULL after recording a failure. */
lsd_dataset *open_ok(const char *dir, const lsd_dataset_params *p);
/* Index of the item whose path ends with suffix; -1 if none (recorded). */
long item_index(lsd_dataset *ds, const char *suffix);

#endif
