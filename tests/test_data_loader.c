/* The trainer's loader: without buckets the stream of earlier versions, draw for draw (a reimplementation of
 * its formula below); the same (seed, micro) gives the same refs in any order of asking; with buckets every batch
 * is of one bucket and an epoch draws each item `repeats` times; DreamBooth prior preservation pairs instance and
 * class items; steps per epoch. The loader needs no model: the trainer here is a bare struct. */
#include <stdlib.h>

#include "data_util.h"
#include "train/train.h"

static lsd_trainer *bare_trainer(lsd_dataset *ds, const lsd_train_params *p)
{
    lsd_trainer *tr = calloc(1, sizeof *tr);
    tr->dataset = ds;
    tr->p = *p;
    if (!CHECK_OK(lsdi_loader_new(ds, &tr->p, NULL, 0, &tr->loader))) {
        free(tr);
        return NULL;
    }
    return tr;
}

static void bare_free(lsd_trainer *tr)
{
    if (tr)
        lsdi_loader_free(tr->loader);
    free(tr);
}

static int same_ref(const lsdi_sample_ref *a, const lsdi_sample_ref *b)
{
    return a->index == b->index && a->width == b->width && a->height == b->height && a->crop_left == b->crop_left &&
           a->crop_top == b->crop_top && a->flip == b->flip && a->is_class == b->is_class &&
           a->resized_w == b->resized_w && a->resized_h == b->resized_h && !strcmp(a->caption, b->caption);
}

TEST(data_loader_unbucketed_stream_is_the_old_one)
{
    const char *d = temp_dir();
    static const int sizes[5][2] = {{40, 32}, {32, 48}, {33, 33}, {64, 20}, {20, 21}};
    for (int i = 0; i < 5; i++) {
        char rel[16];
        snprintf(rel, sizeof rel, "%d.png", i);
        put_png_header(d, rel, sizes[i][0], sizes[i][1]);
        snprintf(rel, sizeof rel, "%d.txt", i);
        put_text(d, rel, "caption", -1);
    }
    lsd_dataset *ds = open_ok(d, NULL);
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.train_batch_size = 3;
    p.resolution = 16;
    p.seed = 11;
    p.random_flip = 1;
    lsd_trainer *tr = ds ? bare_trainer(ds, &p) : NULL;
    lsdi_sample_ref refs[3], again[3];
    int n = 0, m = 0;
    for (uint64_t micro = 0; tr && micro < 12; micro++) {
        if (!CHECK_OK(lsdi_loader_next(tr, micro, refs, 3, &n)))
            break;
        CHECK(n == 3);
        for (int i = 0; i < 3; i++) {
            /* Item k of the stream: epoch k / 5 shuffled from (seed, epoch, 0x5A0F); Resize(16) of the shortest side
             * (the other truncated); crop and flip from (seed, k, 0xC409) then (item, 0x5EED): top, left, flip. */
            uint64_t k = micro * 3 + (uint64_t)i;
            size_t perm[5];
            lsdi_shuffle(perm, 5, lsdi_train_seed(11, k / 5, 0x5A0F));
            size_t idx = perm[k % 5];
            int w = sizes[idx][0], h = sizes[idx][1];
            int rw = w <= h ? 16 : 16 * w / h, rh = w <= h ? 16 * h / w : 16;
            uint64_t rng = lsdi_train_seed(lsdi_train_seed(11, k, 0xC409), idx, 0x5EED);
            int top = (int)lsdi_rng_below(&rng, (size_t)(rh - 16 + 1));
            int left = (int)lsdi_rng_below(&rng, (size_t)(rw - 16 + 1));
            int flip = (int)(lsdi_rng_next(&rng) >> 63);
            CHECK(refs[i].index == idx && refs[i].width == 16 && refs[i].height == 16 && refs[i].resized_w == rw &&
                      refs[i].resized_h == rh && refs[i].crop_top == top && refs[i].crop_left == left &&
                      refs[i].flip == flip && !refs[i].is_class && !strcmp(refs[i].caption, "caption"),
                  "micro %d item %d: got index %zu crop %d,%d flip %d of %dx%d", (int)micro, i, refs[i].index,
                  refs[i].crop_left, refs[i].crop_top, refs[i].flip, refs[i].resized_w, refs[i].resized_h);
        }
        /* Asked again after another epoch's order was drawn, and by a fresh loader: the same. */
        lsdi_sample_ref other[3];
        int o = 0;
        CHECK_OK(lsdi_loader_next(tr, micro + 40, other, 3, &o));
        lsdi_sample_refs_release(other, o);
        CHECK_OK(lsdi_loader_next(tr, micro, again, 3, &m));
        for (int i = 0; i < 3 && m == 3; i++)
            CHECK(same_ref(&refs[i], &again[i]), "micro %d ref %d differs when asked again", (int)micro, i);
        lsdi_sample_refs_release(again, m);
        lsd_trainer *fresh = bare_trainer(ds, &p);
        if (fresh && CHECK_OK(lsdi_loader_next(fresh, micro, again, 3, &m)))
            for (int i = 0; i < 3 && m == 3; i++)
                CHECK(same_ref(&refs[i], &again[i]), "micro %d ref %d differs in a fresh loader", (int)micro, i);
        lsdi_sample_refs_release(again, m);
        bare_free(fresh);
        lsdi_sample_refs_release(refs, n);
    }
    CHECK(tr && lsdi_loader_steps_per_epoch(tr) == 2, "ceil(5 / 3) batches");
    lsdi_sample_ref small[2];
    CHECK_STATUS(lsdi_loader_next(tr, 0, small, 2, &n), LSD_ERR_INTERNAL, "room for 2 refs");
    bare_free(tr);
    /* Only the listed items are drawn (validation_split holds the others out): the stream over items 1, 3, 4. */
    static const size_t kept[3] = {1, 3, 4};
    tr = calloc(1, sizeof *tr);
    tr->dataset = ds;
    tr->p = p;
    if (ds && CHECK_OK(lsdi_loader_new(ds, &tr->p, kept, 3, &tr->loader)))
        for (uint64_t micro = 0; micro < 4; micro++) {
            if (!CHECK_OK(lsdi_loader_next(tr, micro, refs, 3, &n)))
                break;
            for (int i = 0; i < n; i++) {
                uint64_t k = micro * 3 + (uint64_t)i;
                size_t perm[3];
                lsdi_shuffle(perm, 3, lsdi_train_seed(11, k / 3, 0x5A0F));
                CHECK(refs[i].index == kept[perm[k % 3]], "micro %d ref %d: item %zu", (int)micro, i, refs[i].index);
            }
            lsdi_sample_refs_release(refs, n);
        }
    bare_free(tr);
    lsd_dataset_free(ds);
}

TEST(data_loader_buckets_batches_and_repeats)
{
    const char *d = temp_dir();
    char train[600];
    snprintf(train, sizeof train, "%s", put_dir(d, "train"));
    static const int sizes[7][2] = {{64, 64}, {128, 64}, {64, 128}, {70, 66}, {120, 60}, {60, 62}, {40, 100}};
    for (int i = 0; i < 7; i++) {
        char rel[32];
        snprintf(rel, sizeof rel, "%s/%d.png", i < 3 ? "3_a" : "2_b", i);
        put_png_header(train, rel, sizes[i][0], sizes[i][1]);
    }
    put_png_header(d, "reg/1_r/r0.png", 64, 64);
    put_png_header(d, "reg/1_r/r1.png", 128, 64);
    char reg[600];
    snprintf(reg, sizeof reg, "%s/reg", d);
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = 64;
    dp.enable_bucket = 1;
    dp.bucket_reso_steps = 16;
    dp.min_bucket_reso = 32;
    dp.max_bucket_reso = 128;
    dp.reg_data_dir = reg;
    lsd_dataset *ds = open_ok(train, &dp);
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.train_batch_size = 2;
    p.resolution = 64;
    p.seed = 5;
    lsd_trainer *tr = ds ? bare_trainer(ds, &p) : NULL;
    if (!tr) {
        lsd_dataset_free(ds);
        return;
    }
    /* 3 x 3 + 4 x 2 = 17 training draws, regularisation balanced to 17 (r0 9, r1 8): 34 draws an epoch. */
    size_t n = lsd_dataset_size(ds), draws = 0, batches = 0;
    for (size_t i = 0; i < n; i++)
        draws += (size_t)ds->items[i].repeats;
    CHECK(n == 9 && draws == 34, "%zu items, %zu draws", n, draws);
    for (int b = 0; b < ds->buckets.n; b++)
        batches += (ds->buckets.count[b] + 1) / 2;
    CHECK(lsdi_loader_steps_per_epoch(tr) == (int)batches, "%d steps, %zu batches", lsdi_loader_steps_per_epoch(tr),
          batches);
    int buckets_seen = 0;
    size_t orders_differ = 0;
    size_t first_epoch[64] = {0};
    for (int epoch = 0; epoch < 2; epoch++) {
        size_t count[9] = {0};
        for (size_t j = 0; j < batches; j++) {
            lsdi_sample_ref refs[2];
            int got = 0;
            uint64_t micro = (uint64_t)epoch * batches + j;
            if (!CHECK_OK(lsdi_loader_next(tr, micro, refs, 2, &got)))
                break;
            CHECK(got >= 1 && got <= 2);
            for (int i = 0; i < got; i++) {
                int b = ds->buckets.item_bucket[refs[i].index];
                CHECK(refs[i].width == refs[0].width && refs[i].height == refs[0].height, "one bucket a batch");
                CHECK(refs[i].width == ds->buckets.w[b] && refs[i].height == ds->buckets.h[b] &&
                          refs[i].resized_w == ds->buckets.resized_w[refs[i].index] &&
                          refs[i].is_class == ds->items[refs[i].index].is_class,
                      "the item's own bucket");
                count[refs[i].index]++;
                buckets_seen |= 1 << b;
            }
            if (epoch == 0)
                first_epoch[j] = refs[0].index * 16 + (size_t)refs[0].width;
            else
                orders_differ += first_epoch[j] != refs[0].index * 16 + (size_t)refs[0].width;
            lsdi_sample_refs_release(refs, got);
        }
        for (size_t i = 0; i < n; i++)
            CHECK(count[i] == (size_t)ds->items[i].repeats, "epoch %d: item %zu drawn %zu times, repeats %d", epoch,
                  i, count[i], ds->items[i].repeats);
    }
    CHECK(__builtin_popcount((unsigned)buckets_seen) == ds->buckets.n && ds->buckets.n >= 3, "%d buckets",
          ds->buckets.n);
    CHECK(orders_differ > 0, "the second epoch is shuffled anew");
    /* Public: the same count, and accumulation divides it (rounded up). */
    int steps = 0;
    CHECK_OK(lsd_dataset_steps_per_epoch(ds, &p, &steps));
    CHECK(steps == (int)batches);
    p.gradient_accumulation_steps = 4;
    CHECK_OK(lsd_dataset_steps_per_epoch(ds, &p, &steps));
    CHECK(steps == (int)(batches + 3) / 4);
    bare_free(tr);
    lsd_dataset_free(ds);
}

TEST(data_loader_dreambooth_pairs)
{
    const char *d = temp_dir();
    char inst[600], cls[600];
    snprintf(inst, sizeof inst, "%s", put_dir(d, "instance"));
    snprintf(cls, sizeof cls, "%s", put_dir(d, "class"));
    for (int i = 0; i < 3; i++) {
        char rel[16];
        snprintf(rel, sizeof rel, "i%d.png", i);
        put_png_header(inst, rel, 48 + 16 * i, 32);
    }
    for (int i = 0; i < 5; i++) {
        char rel[16];
        snprintf(rel, sizeof rel, "c%d.png", i);
        put_png_header(cls, rel, 32, 32 + 8 * i);
    }
    lsd_dataset_params dp;
    lsd_dataset_params_init(&dp);
    dp.resolution = 32;
    dp.instance_prompt = "sks dog";
    dp.class_data_dir = cls;
    dp.class_prompt = "dog";
    lsd_dataset *ds = open_ok(inst, &dp);
    lsd_train_params p;
    lsd_train_params_init(&p);
    p.train_batch_size = 2;
    p.resolution = 32;
    p.with_prior_preservation = 1;
    lsd_trainer *tr = ds ? bare_trainer(ds, &p) : NULL;
    if (!tr) {
        lsd_dataset_free(ds);
        return;
    }
    /* max(3, 5) = 5 entries an epoch; entry v pairs instance v % 3 with class image v % 5. */
    CHECK(lsdi_loader_capacity(tr) == 4 && lsdi_loader_steps_per_epoch(tr) == 3);
    size_t seen_inst[8] = {0}, seen_cls[8] = {0};
    for (uint64_t micro = 0; micro < 5; micro++) { /* 10 entries: two epochs */
        lsdi_sample_ref refs[4];
        int n = 0;
        if (!CHECK_OK(lsdi_loader_next(tr, micro, refs, 4, &n)))
            break;
        CHECK(n == 4);
        for (int i = 0; i < 2; i++) {
            CHECK(!refs[i].is_class && refs[i].index < 3 && !strcmp(refs[i].caption, "sks dog"));
            CHECK(refs[2 + i].is_class && refs[2 + i].index >= 3 && !strcmp(refs[2 + i].caption, "dog"));
            CHECK(refs[2 + i].width == 32 && refs[2 + i].height == 32);
            /* The pair shares its entry: (instance, class) = (v % 3, v % 5) for one v. */
            size_t a = refs[i].index, c = refs[2 + i].index - 3;
            int v_ok = 0;
            for (size_t v = 0; v < 5; v++)
                v_ok |= v % 3 == a && v % 5 == c;
            CHECK(v_ok, "instance %zu with class %zu is not a pair of one entry", a, c);
            seen_inst[a]++;
            seen_cls[c]++;
        }
        lsdi_sample_refs_release(refs, n);
    }
    CHECK(seen_inst[0] == 4 && seen_inst[1] == 4 && seen_inst[2] == 2, "%zu %zu %zu", seen_inst[0], seen_inst[1],
          seen_inst[2]);
    for (int c = 0; c < 5; c++)
        CHECK(seen_cls[c] == 2, "class %d drawn %zu times in two epochs", c, seen_cls[c]);
    bare_free(tr);
    lsd_dataset_free(ds);

    /* With buckets a class image is cropped to its partner's bucket. */
    dp.enable_bucket = 1;
    dp.bucket_reso_steps = 8;
    dp.min_bucket_reso = 16;
    dp.max_bucket_reso = 64;
    ds = open_ok(inst, &dp);
    tr = ds ? bare_trainer(ds, &p) : NULL;
    for (uint64_t micro = 0; tr && micro < 6; micro++) {
        lsdi_sample_ref refs[4];
        int n = 0;
        if (!CHECK_OK(lsdi_loader_next(tr, micro, refs, 4, &n)))
            break;
        for (int i = 0; i < n; i++)
            CHECK(refs[i].width == refs[0].width && refs[i].height == refs[0].height &&
                      refs[i].resized_w >= refs[i].width && refs[i].resized_h >= refs[i].height &&
                      (refs[i].resized_w == refs[i].width || refs[i].resized_h == refs[i].height),
                  "micro %d ref %d: %dx%d resized %dx%d", (int)micro, i, refs[i].width, refs[i].height,
                  refs[i].resized_w, refs[i].resized_h);
        lsdi_sample_refs_release(refs, n);
    }
    bare_free(tr);
    lsd_dataset_free(ds);

    /* Prior preservation without class images. */
    dp.class_data_dir = put_dir(d, "empty");
    dp.enable_bucket = 0;
    ds = open_ok(inst, &dp);
    lsdi_loader *l = NULL;
    if (ds)
        CHECK_STATUS(lsdi_loader_new(ds, &p, NULL, 0, &l), LSD_ERR_NOT_FOUND, "class_data_dir has no images");
    lsd_dataset_free(ds);
}
