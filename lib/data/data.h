/* Internals of lib/data: the dataset's items and the pieces that build and read them. One job a file:
 * dataset.c (open, free, the public getters), layouts.c (scanning folders into items), captions.c (reading and
 * drawing captions), buckets.c (kohya's aspect-ratio buckets and the resize rules), problems.c (the bad-files
 * listing), verify.c (decoding every image once), transform.c (the pixels of a draw), rng.c (seeded draws). */
#ifndef LSD_DATA_DATA_H
#define LSD_DATA_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/refcount.h"
#include "lora_sd.h"

/* ---- rng.c: every random draw is a function of (seed, a, b), so a resumed run repeats an uninterrupted one
 * without saving any generator's internal state ---- */
uint64_t lsdi_train_seed(uint64_t seed, uint64_t a, uint64_t b);
/* A splitmix64 stream over *state. */
uint64_t lsdi_rng_next(uint64_t *state);
/* Uniform in [0, n) (n > 0). */
size_t lsdi_rng_below(uint64_t *state, size_t n);
/* Uniform in [0, 1). */
double lsdi_rng_unit(uint64_t *state);
/* A permutation of 0..n-1 drawn from seed (Fisher-Yates). */
void lsdi_shuffle(size_t *idx, size_t n, uint64_t seed);

/* ---- the dataset ---- */
typedef struct lsdi_subset {
    char *path;
    char *caption; /* kohya: the folder's caption; DreamBooth: the prompt; NULL otherwise */
    int repeats;
    int is_class;
    int paired;   /* class_data_dir: drawn only as the partners of training images (prior preservation) */
    size_t images;
} lsdi_subset;

typedef struct lsdi_item {
    char *path;
    char **captions;    /* n_captions >= 1; a list-valued metadata caption has several, one drawn per use */
    int n_captions;
    char *caption_file; /* the file the caption came from; NULL for a folder name, a prompt or metadata.jsonl */
    int subset;
    int repeats;        /* draws per epoch: kohya's N_ (regularisation images: balanced as kohya does) */
    int is_class;
    int width, height;  /* from the header (after EXIF orientation) */
} lsdi_item;

/* Where each item goes at one resolution: its bucket and the size it is resized to before the crop. */
typedef struct lsdi_buckets {
    int n;
    int *w, *h;        /* [n], sorted by (w, h) */
    size_t *count;     /* [n] draws per epoch */
    int *item_bucket;  /* [items] */
    int *resized_w, *resized_h; /* [items] */
} lsdi_buckets;

struct lsd_dataset {
    lsdi_ref ref; /* the caller's, plus one per trainer that reads it (training or validation data) */
    lsdi_errbox err; /* lsd_dataset_last_error */
    char *dir;
    lsd_dataset_params p; /* its strings point at copies the dataset owns (owned[]) */
    char *owned[8];
    lsd_dataset_layout layout;
    lsdi_item *items;
    size_t n, cap;
    lsdi_subset *subsets;
    int n_subsets;
    lsdi_buckets buckets; /* at p.resolution */
};

/* Another reference to ds (a trainer's); lsd_dataset_free drops one. */
lsd_dataset *lsdi_dataset_retain(lsd_dataset *ds);
/* Records a failed call's status and message on ds (lsd_dataset_last_error); returns st. */
lsd_status lsdi_dataset_record(const lsd_dataset *ds, lsd_status st);

/* The first caption of item index ("" past the end). */
const char *lsdi_dataset_caption(const lsd_dataset *ds, size_t index);

/* ---- problems.c: the bad files of a dataset, reported together ---- */
typedef struct lsdi_problems {
    lsd_status first;  /* status of the first problem; LSD_OK when none */
    size_t count;
    char *text;        /* the first LSDI_PROBLEMS_LISTED messages, one a line */
    size_t len, cap;
} lsdi_problems;
#define LSDI_PROBLEMS_LISTED 20
/* Records the current lsd_last_error() message under status st (st != LSD_OK). Returns LSD_OK, or
 * LSD_ERR_OUT_OF_MEMORY when even that fails. */
lsd_status lsdi_problems_add(lsdi_problems *pr, lsd_status st);
/* LSD_OK when there were none; else sets the one error listing them ("<what>: N bad files:" then the first 20,
 * then "and N more") and returns the first one's status. Frees pr's text either way. */
lsd_status lsdi_problems_finish(lsdi_problems *pr, const char *what);
/* Drops what was collected (when another error wins). */
void lsdi_problems_release(lsdi_problems *pr);

/* ---- layouts.c ---- */
/* The layout of ds->dir under ds->p (detected when LSD_LAYOUT_AUTO); items and subsets appended in order;
 * per-file problems (captions) go to pr, structural errors (missing folder, bad metadata line) are returned. */
lsd_status lsdi_layout_scan(lsd_dataset *ds, lsdi_problems *pr);
/* Appends an item (takes path; captions are given as a malloc'd array of n malloc'd strings, taken too). */
lsd_status lsdi_dataset_push(lsd_dataset *ds, char *path, char **captions, int n_captions, char *caption_file,
                             int subset);
int lsdi_is_image_name(const char *name);

/* ---- captions.c ---- */
/* The caption of an image from a caption file, as kohya reads it: a UTF-8 BOM dropped, the first line, stripped.
 * *out NULL with LSD_OK when the file does not exist. Not UTF-8 is LSD_ERR_FORMAT naming the file. */
lsd_status lsdi_caption_read(const char *path, char **out);
/* Empty-caption rule: LSD_ERR_FORMAT naming `what` unless allow_empty_captions. */
lsd_status lsdi_caption_check(const lsd_dataset *ds, const char *caption, const char *what);
/* 1 when s is valid UTF-8. */
int lsdi_utf8_valid(const char *s, size_t n);
/* The caption of one draw of item `index` (list pick, dropout, shuffle with keep_tokens), malloc'd. */
lsd_status lsdi_caption_draw(const lsd_dataset *ds, size_t index, uint64_t seed, char **out);
/* Logs a warning once per caption source (file, folder, prompt) whose caption has more BPE tokens than the text
 * encoder reads; count_tokens returns the token count of a text (BOS/EOS excluded). */
typedef lsd_status (*lsdi_token_counter)(const char *text, int *n, void *user);
lsd_status lsdi_captions_warn_long(const lsd_dataset *ds, lsdi_token_counter count_tokens, void *user, int window);

/* ---- buckets.c ---- */
/* Bucket params checked and adjusted (kohya: min rounded down, max up to bucket_reso_steps) at a resolution. */
lsd_status lsdi_bucket_params_check(const lsd_dataset_params *p, int resolution);
/* Buckets of ds's items at `resolution` with ds's bucket params (one resolution^2 square without enable_bucket);
 * an item too small for any bucket (bucket_no_upscale) goes to pr when pr is given, else is an error. */
lsd_status lsdi_buckets_build(const lsd_dataset *ds, int resolution, lsdi_buckets *out, lsdi_problems *pr);
void lsdi_buckets_release(lsdi_buckets *b);
/* The size kohya resizes a w x h image to so that it covers bw x bh (aspect kept, rounded half up). */
void lsdi_cover_size(int w, int h, int bw, int bh, int *rw, int *rh);
/* torchvision's Resize(res): the shortest side becomes res, the other keeps the aspect ratio (truncated). */
void lsdi_square_resize(int w, int h, int res, int *rw, int *rh);

/* ---- one draw of an item: what the trainer's loader decides (lib/train/loader.c) and transform.c renders ----
 * Everything about the draw (which item, bucket size, crop, flip, caption) is decided before any pixel is read,
 * so a latent cache can key on it and a resumed run can redo it. */
typedef struct lsdi_sample_ref {
    size_t index;            /* dataset item */
    int width, height;       /* pixels of the crop: the bucket (resolution x resolution without buckets) */
    int crop_left, crop_top; /* in the image resized to cover width x height */
    int flip;
    int is_class;            /* class / regularisation item: its loss is weighted by prior_loss_weight */
    char *caption;           /* owned: the caption drawn for this use (list pick, shuffle, dropout) */
    int resized_w, resized_h; /* the size the image is resized to before the crop */
} lsdi_sample_ref;

/* ---- transform.c ---- */
/* The crop and flip of a ref whose width, height, resized_w and resized_h are set: center or uniform, flip with
 * p = 0.5, drawn from (seed, index). kohya_center: the center offset is trim // 2 (kohya's trim_and_resize)
 * rather than round(trim / 2) (torchvision's CenterCrop). */
void lsdi_place(lsdi_sample_ref *r, int center_crop, int kohya_center, int random_flip, uint64_t seed);
/* Item `index` as the script's square pipeline makes it (Resize(res), center or seeded random crop, seeded flip;
 * seed as lsd_dataset_get's) into out [3, res, res]; info (optional) gets the caption, path, size, crop, flip. */
lsd_status lsdi_dataset_load(lsd_dataset *ds, size_t index, int res, int center_crop, int random_flip, uint64_t seed,
                             float *out, lsd_dataset_item *info);
/* Pixels [3, r->height, r->width] in [-1, 1] of item r->index: resized (bilinear) to r->resized_w x resized_h,
 * cropped at (crop_left, crop_top), flipped when r->flip. */
lsd_status lsdi_dataset_load_ref(lsd_dataset *ds, const lsdi_sample_ref *r, float *out);

#endif
