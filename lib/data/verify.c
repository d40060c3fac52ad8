/* Every image decoded once before training, so that a truncated or corrupt file stops the run before its first
 * step (with every bad file listed) instead of hours into it. */
#include <time.h>

#include "core/error.h"
#include "data/data.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static lsd_status dataset_verify(lsd_dataset *ds, size_t *n_bad)
{
    if (n_bad)
        *n_bad = 0;
    if (!ds)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_verify: dataset is NULL");
    lsdi_problems pr = {0};
    lsd_status st = LSD_OK;
    double t0 = now();
    for (size_t i = 0; i < ds->n && st == LSD_OK; i++) {
        const lsdi_item *it = &ds->items[i];
        lsd_image img = {sizeof img, 0, 0, 0, NULL};
        lsd_status is = lsd_image_load(it->path, &img);
        if (is == LSD_OK && (img.width != it->width || img.height != it->height))
            is = lsdi_error(LSD_ERR_FORMAT, "%s: decodes to %dx%d but its header says %dx%d", it->path, img.width,
                            img.height, it->width, it->height);
        lsd_image_release(&img);
        if (is != LSD_OK)
            st = is == LSD_ERR_OUT_OF_MEMORY ? is : lsdi_problems_add(&pr, is);
        lsd_progress p = {sizeof p, LSD_STAGE_CHECK, (int)(i + 1), (int)ds->n, now() - t0};
        if (st == LSD_OK && ds->p.progress && ds->p.progress(&p, ds->p.progress_user))
            st = lsdi_error(LSD_ERR_CANCELLED, "lsd_dataset_verify: cancelled by the progress callback after %zu of "
                            "%zu images", i + 1, ds->n);
    }
    if (n_bad)
        *n_bad = pr.count;
    if (st != LSD_OK) { /* the cancellation or allocation failure is the error, not the listing so far */
        lsdi_problems_release(&pr);
        return st;
    }
    return lsdi_problems_finish(&pr, ds->dir);
}

lsd_status lsd_dataset_verify(lsd_dataset *ds, size_t *n_bad)
{
    return lsdi_dataset_record(ds, dataset_verify(ds, n_bad));
}
