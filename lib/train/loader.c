/* The trainer's data loader: which items make batch `micro`, at what size, cropped and flipped how, with which
 * caption, all from (seed, micro), so a resumed run draws what the uninterrupted one did.
 * - Entries: each item repeated `repeats` times (kohya's N_ and balanced regularisation images). DreamBooth
 *   prior preservation (diffusers' DreamBoothDataset) makes max(training draws, class images) entries, entry v
 *   pairing training draw v % draws with class image v % class images (class_data_dir's).
 * - Without buckets: one endless stream of entries, epoch after epoch, each in an order shuffled from
 *   (seed, epoch); a batch may span two epochs (as the script's loop never sees, but resume needs no more).
 *   Images are resized as torchvision's Resize(resolution) and cropped square.
 * - With buckets (kohya's BucketManager): each epoch shuffles every bucket's entries, cuts them in batches (the
 *   last one of a bucket short), and shuffles the batches; an image is resized to cover its bucket and cropped. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "train/train.h"

struct lsdi_loader {
    const lsd_dataset *ds;
    lsdi_buckets b;       /* at the trainer's resolution */
    int bucketed, pair, batch, accumulation, center_crop, random_flip, resolution;
    uint64_t seed;
    size_t n;             /* entries an epoch */
    size_t *item;         /* [n] the entry's item */
    size_t *partner;      /* [n] its class item (pair) */
    /* bucketed: entries grouped by bucket, the batches of each bucket counted from batch_start */
    size_t *bucket_start; /* [buckets + 1] into by_bucket */
    size_t *by_bucket;    /* [n] */
    size_t *batch_start;  /* [buckets + 1] */
    size_t batches;       /* an epoch */
    /* the epoch whose order is at hand */
    uint64_t epoch;
    int have_epoch;
    size_t *order;        /* [n] without buckets: the epoch's entries; with buckets: each bucket's, shuffled */
    size_t *batch_order;  /* [batches] */
};

void lsdi_loader_free(lsdi_loader *l)
{
    if (!l)
        return;
    lsdi_buckets_release(&l->b);
    free(l->item);
    free(l->partner);
    free(l->bucket_start);
    free(l->by_bucket);
    free(l->batch_start);
    free(l->order);
    free(l->batch_order);
    free(l);
}

/* class_data_dir's images: drawn only as partners. */
static int paired(const lsd_dataset *ds, size_t i)
{
    return ds->subsets[ds->items[i].subset].paired;
}

/* The drawable items of one role in dataset order, each `repeats` times (regularisation folders come after the
 * training folders, as kohya registers them). */
static size_t collect(const lsd_dataset *ds, const unsigned char *drawable, int partners, size_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < ds->n; i++)
        for (int r = 0; drawable[i] && paired(ds, i) == partners && r < ds->items[i].repeats; r++) {
            if (out)
                out[n] = i;
            n++;
        }
    return n;
}

static lsd_status make_entries(lsdi_loader *l, const unsigned char *drawable)
{
    const lsd_dataset *ds = l->ds;
    size_t n_train = collect(ds, drawable, 0, NULL), n_class = collect(ds, drawable, 1, NULL);
    if (l->pair && !n_class)
        return lsdi_error(LSD_ERR_NOT_FOUND, "with_prior_preservation: %s", ds->p.class_data_dir
                          ? "class_data_dir has no images (lsd_generate_class_images makes them)"
                          : "no class_data_dir (kohya's reg_data_dir images are drawn without it)");
    l->n = l->pair && n_class > n_train ? n_class : n_train;
    size_t *cls = malloc((n_class + 1) * sizeof *cls);
    l->item = malloc((l->n + 1) * sizeof *l->item);
    l->partner = l->pair ? malloc((l->n + 1) * sizeof *l->partner) : NULL;
    if (!cls || !l->item || (l->pair && !l->partner)) {
        free(cls);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "loader of %zu entries", l->n);
    }
    collect(ds, drawable, 0, l->item);
    collect(ds, drawable, 1, cls);
    for (size_t v = n_train; v < l->n; v++)
        l->item[v] = l->item[v % n_train];
    for (size_t v = 0; l->pair && v < l->n; v++)
        l->partner[v] = cls[v % n_class];
    free(cls);
    return LSD_OK;
}

static lsd_status group_by_bucket(lsdi_loader *l)
{
    int nb = l->b.n;
    l->bucket_start = calloc((size_t)nb + 1, sizeof *l->bucket_start);
    l->batch_start = calloc((size_t)nb + 1, sizeof *l->batch_start);
    l->by_bucket = malloc((l->n + 1) * sizeof *l->by_bucket);
    if (!l->bucket_start || !l->batch_start || !l->by_bucket)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "loader buckets");
    for (size_t e = 0; e < l->n; e++)
        l->bucket_start[l->b.item_bucket[l->item[e]] + 1]++;
    for (int b = 0; b < nb; b++) {
        size_t len = l->bucket_start[b + 1];
        l->bucket_start[b + 1] += l->bucket_start[b];
        l->batch_start[b + 1] = l->batch_start[b] + (len + (size_t)l->batch - 1) / (size_t)l->batch;
    }
    size_t *fill = calloc((size_t)nb, sizeof *fill);
    if (!fill)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "loader buckets");
    for (size_t e = 0; e < l->n; e++) {
        int b = l->b.item_bucket[l->item[e]];
        l->by_bucket[l->bucket_start[b] + fill[b]++] = e;
    }
    free(fill);
    l->batches = l->batch_start[nb];
    return LSD_OK;
}

lsd_status lsdi_loader_new(const lsd_dataset *ds, const lsd_train_params *p, const size_t *items, size_t n_items,
                           lsdi_loader **out)
{
    *out = NULL;
    lsdi_loader *l = calloc(1, sizeof *l);
    unsigned char *drawable = malloc(ds->n + 1);
    if (!l || !drawable) {
        free(l);
        free(drawable);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "loader");
    }
    memset(drawable, !items, ds->n);
    for (size_t k = 0; items && k < n_items; k++)
        if (items[k] < ds->n)
            drawable[items[k]] = 1;
    *l = (lsdi_loader){.ds = ds, .bucketed = ds->p.enable_bucket, .batch = p->train_batch_size,
                       .accumulation = p->gradient_accumulation_steps, .center_crop = p->center_crop,
                       .random_flip = p->random_flip, .resolution = p->resolution, .seed = p->seed,
                       .pair = p->with_prior_preservation};
    lsd_status st = lsdi_buckets_build(ds, p->resolution, &l->b, NULL);
    if (st == LSD_OK)
        st = make_entries(l, drawable);
    free(drawable);
    if (st == LSD_OK && !l->n)
        st = lsdi_error(LSD_ERR_NOT_FOUND, "dataset %s: no image is drawn in an epoch (every repeat count is 0)",
                        ds->dir);
    if (st == LSD_OK && l->bucketed)
        st = group_by_bucket(l);
    if (st == LSD_OK) {
        l->order = malloc(l->n * sizeof *l->order);
        l->batch_order = l->bucketed ? malloc(l->batches * sizeof *l->batch_order) : NULL;
        if (!l->order || (l->bucketed && !l->batch_order))
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "loader of %zu entries", l->n);
    }
    if (st != LSD_OK) {
        lsdi_loader_free(l);
        return st;
    }
    *out = l;
    return LSD_OK;
}

/* The order of epoch e, drawn once and kept until another epoch is asked for. */
static void use_epoch(lsdi_loader *l, uint64_t e)
{
    if (l->have_epoch && l->epoch == e)
        return;
    if (!l->bucketed) {
        lsdi_shuffle(l->order, l->n, lsdi_train_seed(l->seed, e, 0x5A0F));
    } else {
        for (int b = 0; b < l->b.n; b++) {
            size_t s = l->bucket_start[b], len = l->bucket_start[b + 1] - s;
            lsdi_shuffle(l->order + s, len, lsdi_train_seed(l->seed ^ 0xB0C7E7ull, e, (uint64_t)b));
            for (size_t k = 0; k < len; k++)
                l->order[s + k] = l->by_bucket[s + l->order[s + k]];
        }
        lsdi_shuffle(l->batch_order, l->batches, lsdi_train_seed(l->seed ^ 0xBA7C4E5ull, e, 0));
    }
    l->epoch = e;
    l->have_epoch = 1;
}

/* The ref of `item` drawn into a w x h crop (the bucket, or the square), its placement and caption drawn from
 * place_seed and caption_seed. */
static lsd_status make_ref(const lsdi_loader *l, size_t item, int w, int h, uint64_t place_seed,
                           uint64_t caption_seed, lsdi_sample_ref *r)
{
    const lsdi_item *it = &l->ds->items[item];
    *r = (lsdi_sample_ref){.index = item, .width = w, .height = h, .is_class = it->is_class};
    if (!l->bucketed)
        lsdi_square_resize(it->width, it->height, l->resolution, &r->resized_w, &r->resized_h);
    else if (w == l->b.w[l->b.item_bucket[item]] && h == l->b.h[l->b.item_bucket[item]])
        r->resized_w = l->b.resized_w[item], r->resized_h = l->b.resized_h[item];
    else /* a class image in its instance partner's bucket */
        lsdi_cover_size(it->width, it->height, w, h, &r->resized_w, &r->resized_h);
    lsdi_place(r, l->center_crop, l->bucketed, l->random_flip, place_seed);
    return lsdi_caption_draw(l->ds, item, caption_seed, &r->caption);
}

void lsdi_sample_refs_release(lsdi_sample_ref *refs, int n)
{
    for (int i = 0; refs && i < n; i++) {
        free(refs[i].caption);
        refs[i].caption = NULL;
    }
}

int lsdi_loader_capacity(const lsd_trainer *tr)
{
    return tr->loader ? tr->loader->batch * (tr->loader->pair ? 2 : 1) : tr->p.train_batch_size;
}

lsd_status lsdi_loader_next(lsd_trainer *tr, uint64_t micro, lsdi_sample_ref *refs, int capacity, int *n)
{
    lsdi_loader *l = tr->loader;
    *n = 0;
    if (!l)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "the trainer has no dataset");
    if (l->seed != tr->p.seed) { /* lsd_trainer_resume restored the checkpoint's seed */
        l->seed = tr->p.seed;
        l->have_epoch = 0;
    }
    if (capacity < lsdi_loader_capacity(tr))
        return lsdi_error(LSD_ERR_INTERNAL, "loader: room for %d refs, a batch needs %d", capacity,
                          lsdi_loader_capacity(tr));
    size_t entries[512];
    int count = 0, w = l->resolution, h = l->resolution;
    uint64_t stream = micro * (uint64_t)l->batch; /* the stream position of the batch's first entry */
    if (!l->bucketed) {
        for (int i = 0; i < l->batch; i++) {
            uint64_t k = stream + (uint64_t)i;
            use_epoch(l, k / l->n);
            entries[count++] = l->order[k % l->n];
        }
    } else {
        use_epoch(l, micro / l->batches);
        size_t g = l->batch_order[micro % l->batches];
        int b = 0;
        while (l->batch_start[b + 1] <= g)
            b++;
        size_t first = l->bucket_start[b] + (g - l->batch_start[b]) * (size_t)l->batch;
        for (size_t e = first; e < l->bucket_start[b + 1] && count < l->batch; e++)
            entries[count++] = l->order[e];
        w = l->b.w[b];
        h = l->b.h[b];
    }
    lsd_status st = LSD_OK;
    for (int i = 0; i < count && st == LSD_OK; i++) {
        uint64_t k = stream + (uint64_t)i;
        st = make_ref(l, l->item[entries[i]], w, h, lsdi_train_seed(l->seed, k, 0xC409),
                      lsdi_train_seed(l->seed, k, 0xCA9), &refs[i]);
        *n = i + 1;
        if (st == LSD_OK && l->pair) {
            st = make_ref(l, l->partner[entries[i]], w, h, lsdi_train_seed(l->seed, k, 0xC1A5),
                          lsdi_train_seed(l->seed, k, 0xCA8), &refs[count + i]);
            *n = count + i + 1;
        }
    }
    if (st != LSD_OK) {
        lsdi_sample_refs_release(refs, l->pair ? 2 * count : count);
        *n = 0;
        return st;
    }
    *n = l->pair ? 2 * count : count;
    return LSD_OK;
}

static size_t batches_per_epoch(const lsdi_loader *l)
{
    return l->bucketed ? l->batches : (l->n + (size_t)l->batch - 1) / (size_t)l->batch;
}

size_t lsdi_loader_batches_per_epoch(const lsd_trainer *tr)
{
    return tr && tr->loader ? batches_per_epoch(tr->loader) : 0;
}

int lsdi_loader_bucket(const lsd_trainer *tr, int b, int *w, int *h, size_t *entries, double *ar_error_sum)
{
    const lsdi_loader *l = tr ? tr->loader : NULL;
    if (!l || !l->bucketed || b < 0 || b >= l->b.n)
        return 0;
    *w = l->b.w[b];
    *h = l->b.h[b];
    *entries = l->bucket_start[b + 1] - l->bucket_start[b];
    *ar_error_sum = 0;
    for (size_t i = 0; i < l->ds->n; i++)
        if (l->b.item_bucket[i] == b && l->ds->items[i].height > 0)
            *ar_error_sum += fabs((double)*w / *h - (double)l->ds->items[i].width / l->ds->items[i].height);
    return 1;
}

static int steps_per_epoch(const lsdi_loader *l)
{
    size_t batches = batches_per_epoch(l);
    size_t steps = (batches + (size_t)l->accumulation - 1) / (size_t)l->accumulation;
    return steps > 1000000000 ? 1000000000 : (int)steps;
}

int lsdi_loader_steps_per_epoch(const lsd_trainer *tr)
{
    return tr && tr->loader ? steps_per_epoch(tr->loader) : 0;
}

static lsd_status dataset_steps_per_epoch(const lsd_dataset *ds, const lsd_train_params *params, int *out)
{
    if (!ds || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_steps_per_epoch: %s is NULL", !ds ? "ds" : "out");
    lsd_train_params p;
    lsd_train_params_init(&p);
    if (params)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_TRAIN_PARAMS, params, &p, "lsd_dataset_steps_per_epoch"));
    if (p.train_batch_size < 1 || p.train_batch_size > 256 || p.gradient_accumulation_steps < 1 ||
        p.resolution < 8 || p.resolution > 8192)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_dataset_steps_per_epoch: train_batch_size %d, "
                          "gradient_accumulation_steps %d or resolution %d out of range", p.train_batch_size,
                          p.gradient_accumulation_steps, p.resolution);
    if (p.dist && p.dist->world > 1) /* the group's batches */
        p.train_batch_size *= p.dist->world;
    lsdi_loader *l = NULL;
    LSDI_TRY(lsdi_loader_new(ds, &p, NULL, 0, &l));
    *out = steps_per_epoch(l);
    lsdi_loader_free(l);
    return LSD_OK;
}

lsd_status lsd_dataset_steps_per_epoch(const lsd_dataset *ds, const lsd_train_params *params, int *out)
{
    return lsdi_dataset_record(ds, dataset_steps_per_epoch(ds, params, out));
}
