/* kohya's aspect-ratio buckets (library/model_util.py make_bucket_resolutions, library/train_util.py
 * BucketManager.select_bucket), and the square resize of diffusers' scripts when buckets are off. The floating
 * point follows the Python expression by expression, so an image lands in the bucket kohya would pick. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "data/data.h"

void lsdi_square_resize(int w, int h, int res, int *rw, int *rh)
{
    *rw = w <= h ? res : (int)((int64_t)res * w / h);
    *rh = w <= h ? (int)((int64_t)res * h / w) : res;
    if (*rw < res)
        *rw = res;
    if (*rh < res)
        *rh = res;
}

void lsdi_cover_size(int w, int h, int bw, int bh, int *rw, int *rh)
{
    double ar = (double)w / h, scale = ar > (double)bw / bh ? (double)bh / h : (double)bw / w;
    *rw = (int)(w * scale + 0.5);
    *rh = (int)(h * scale + 0.5);
}

/* kohya's adjust_min_max_bucket_reso_by_steps. */
static void adjusted_range(const lsd_dataset_params *p, int *lo, int *hi)
{
    int s = p->bucket_reso_steps;
    *lo = p->min_bucket_reso - p->min_bucket_reso % s;
    *hi = p->max_bucket_reso % s ? p->max_bucket_reso + s - p->max_bucket_reso % s : p->max_bucket_reso;
}

lsd_status lsdi_bucket_params_check(const lsd_dataset_params *p, int resolution)
{
    if (!p->enable_bucket)
        return LSD_OK;
    if (p->bucket_reso_steps < 8 || p->bucket_reso_steps % 8 || p->bucket_reso_steps > 4096)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "bucket_reso_steps %d: expected a multiple of 8 (the VAE's factor) in [8, 4096]",
                          p->bucket_reso_steps);
    if (p->bucket_no_upscale)
        return LSD_OK; /* kohya ignores min/max_bucket_reso then: buckets follow the images */
    if (p->min_bucket_reso < 1 || p->max_bucket_reso < p->min_bucket_reso || p->max_bucket_reso > 16384)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "min_bucket_reso %d / max_bucket_reso %d: expected 1 <= min <= "
                          "max <= 16384", p->min_bucket_reso, p->max_bucket_reso);
    int lo, hi;
    adjusted_range(p, &lo, &hi);
    if (resolution < lo || resolution > hi)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "resolution %d is outside [min_bucket_reso, max_bucket_reso] = "
                          "[%d, %d] (rounded to bucket_reso_steps %d)", resolution, lo, hi, p->bucket_reso_steps);
    return LSD_OK;
}

typedef struct reso {
    int w, h;
} reso;

static int by_wh(const void *a, const void *b)
{
    const reso *x = a, *y = b;
    return x->w != y->w ? (x->w > y->w) - (x->w < y->w) : (x->h > y->h) - (x->h < y->h);
}

static int add_reso(reso *r, int n, int w, int h)
{
    for (int i = 0; i < n; i++)
        if (r[i].w == w && r[i].h == h)
            return n;
    r[n].w = w;
    r[n].h = h;
    return n + 1;
}

/* make_bucket_resolutions((res, res), lo, hi, step): the square, then every width from lo to hi in steps with the
 * largest height of area <= res^2 (capped at hi, at least lo), both ways round; sorted. r has room for
 * 2 * ((hi - lo) / step + 1) + 1. */
static int predefined(int res, int lo, int hi, int step, reso *r)
{
    int64_t area = (int64_t)res * res;
    int n = add_reso(r, 0, res / step * step, res / step * step);
    for (int w = lo; w <= hi; w += step) {
        int64_t hh = area / w / step * step;
        int h = hh < hi ? (int)hh : hi;
        if (h >= lo) {
            n = add_reso(r, n, w, h);
            n = add_reso(r, n, h, w);
        }
    }
    qsort(r, (size_t)n, sizeof *r, by_wh);
    return n;
}

/* BucketManager.select_bucket with predefined buckets: the image's own size when it is one, else the bucket
 * whose aspect ratio is nearest (numpy's argmin: the first of equals); resized to cover it. */
static reso select_predefined(const reso *r, int n, int w, int h, int *rw, int *rh)
{
    int best = -1;
    for (int i = 0; i < n && best < 0; i++)
        if (r[i].w == w && r[i].h == h)
            best = i;
    if (best < 0) {
        double ar = (double)w / h, err = INFINITY;
        for (int i = 0; i < n; i++) {
            double e = fabs((double)r[i].w / r[i].h - ar);
            if (e < err) {
                err = e;
                best = i;
            }
        }
    }
    lsdi_cover_size(w, h, r[best].w, r[best].h, rw, rh);
    return r[best];
}

static int round_to_steps(double x, int step)
{
    int v = (int)(x + 0.5);
    return v - v % step;
}

/* select_bucket with bucket_no_upscale: an image over res^2 pixels is shrunk to that area (one side rounded to
 * the step, whichever keeps the aspect ratio better), a smaller one is kept; the bucket is the size rounded down
 * to the step, so the image always covers it. A side under the step leaves no bucket ({0, 0}). */
static reso select_no_upscale(int64_t max_area, int step, int w, int h, int *rw, int *rh)
{
    double ar = (double)w / h;
    *rw = w;
    *rh = h;
    if ((int64_t)w * h > max_area) {
        double fw = sqrt((double)max_area * ar), fh = (double)max_area / fw;
        int bw = round_to_steps(fw, step), bh_w = round_to_steps(bw / ar, step);
        int bh = round_to_steps(fh, step), bw_h = round_to_steps(bh * ar, step);
        double ar_w = bh_w ? (double)bw / bh_w : INFINITY, ar_h = bh ? (double)bw_h / bh : INFINITY;
        if (fabs(ar_w - ar) < fabs(ar_h - ar)) {
            *rw = bw;
            *rh = (int)(bw / ar + 0.5);
        } else {
            *rw = (int)(bh * ar + 0.5);
            *rh = bh;
        }
    }
    reso b = {*rw - *rw % step, *rh - *rh % step};
    if (b.w <= 0 || b.h <= 0)
        b.w = b.h = 0;
    return b;
}

void lsdi_buckets_release(lsdi_buckets *b)
{
    free(b->w);
    free(b->h);
    free(b->count);
    free(b->item_bucket);
    free(b->resized_w);
    free(b->resized_h);
    memset(b, 0, sizeof *b);
}

/* class_data_dir's images are cropped to the bucket of the image they are paired with. */
static int counted(const lsd_dataset *ds, const lsdi_item *it)
{
    return !ds->subsets[it->subset].paired;
}

lsd_status lsdi_buckets_build(const lsd_dataset *ds, int resolution, lsdi_buckets *out, lsdi_problems *pr)
{
    const lsd_dataset_params *p = &ds->p;
    memset(out, 0, sizeof *out);
    LSDI_TRY(lsdi_bucket_params_check(p, resolution));
    int step = p->bucket_reso_steps, lo = 0, hi = 0, n_pre = 0;
    reso *pre = NULL, *own = malloc((ds->n ? ds->n : 1) * sizeof *own);
    out->item_bucket = malloc((ds->n ? ds->n : 1) * sizeof *out->item_bucket);
    out->resized_w = malloc((ds->n ? ds->n : 1) * sizeof *out->resized_w);
    out->resized_h = malloc((ds->n ? ds->n : 1) * sizeof *out->resized_h);
    lsd_status st = own && out->item_bucket && out->resized_w && out->resized_h
                        ? LSD_OK
                        : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "buckets of %zu images", ds->n);
    if (st == LSD_OK && p->enable_bucket && !p->bucket_no_upscale) {
        adjusted_range(p, &lo, &hi);
        pre = malloc((size_t)(2 * ((hi - lo) / step + 1) + 1) * sizeof *pre);
        if (!pre)
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "bucket resolutions");
        else
            n_pre = predefined(resolution, lo, hi, step, pre);
    }
    for (size_t i = 0; st == LSD_OK && i < ds->n; i++) {
        const lsdi_item *it = &ds->items[i];
        int *rw = &out->resized_w[i], *rh = &out->resized_h[i];
        if (!p->enable_bucket) {
            own[i] = (reso){resolution, resolution};
            lsdi_square_resize(it->width, it->height, resolution, rw, rh);
        } else if (pre) {
            own[i] = select_predefined(pre, n_pre, it->width, it->height, rw, rh);
        } else {
            own[i] = select_no_upscale((int64_t)resolution * resolution, step, it->width, it->height, rw, rh);
            if (!own[i].w) {
                st = lsdi_error(LSD_ERR_UNSUPPORTED, "%s: %dx%d has a side under bucket_reso_steps %d once fitted to "
                                "resolution %d^2 (bucket_no_upscale never enlarges it)", it->path, it->width,
                                it->height, step, resolution);
                if (pr)
                    st = lsdi_problems_add(pr, st);
            }
        }
    }
    /* The buckets in use, sorted (BucketManager.sort), with their draws per epoch. */
    reso *used = st == LSD_OK ? malloc((ds->n ? ds->n : 1) * sizeof *used) : NULL;
    if (st == LSD_OK && !used)
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "buckets of %zu images", ds->n);
    int n_used = 0;
    if (st == LSD_OK) {
        for (size_t i = 0; i < ds->n; i++)
            if (own[i].w)
                n_used = add_reso(used, n_used, own[i].w, own[i].h);
        if (!n_used)
            used[n_used++] = (reso){resolution, resolution};
        qsort(used, (size_t)n_used, sizeof *used, by_wh);
        out->w = malloc((size_t)n_used * sizeof *out->w);
        out->h = malloc((size_t)n_used * sizeof *out->h);
        out->count = calloc((size_t)n_used, sizeof *out->count);
        if (!out->w || !out->h || !out->count)
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "buckets of %zu images", ds->n);
    }
    if (st == LSD_OK) {
        out->n = n_used;
        for (int b = 0; b < n_used; b++) {
            out->w[b] = used[b].w;
            out->h[b] = used[b].h;
        }
        for (size_t i = 0; i < ds->n; i++) {
            const reso *r = bsearch(&own[i], used, (size_t)n_used, sizeof *used, by_wh);
            out->item_bucket[i] = r ? (int)(r - used) : -1;
            if (r && counted(ds, &ds->items[i]))
                out->count[r - used] += (size_t)ds->items[i].repeats;
        }
    }
    free(pre);
    free(own);
    free(used);
    if (st != LSD_OK)
        lsdi_buckets_release(out);
    return st;
}
