/* Internals of the dataset, LR schedules, trainer and checkpoints (lib/train). */
#ifndef LSD_TRAIN_TRAIN_H
#define LSD_TRAIN_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "lora_sd.h"
#include "lsd_torch.h"
#include "sample/scheduler.h"

/* ---- seeds (every random draw of a step is a function of (seed, step, ...), so a resumed run repeats an
 * uninterrupted one without saving any generator's internal state) ---- */
uint64_t lsdi_train_seed(uint64_t seed, uint64_t a, uint64_t b);

/* ---- dataset.c ---- */
/* Item `index` resized (shortest side to resolution, bilinear), cropped square (center, or at a position drawn
 * from seed) and optionally flipped (drawn from seed), into out [3, resolution, resolution] in [-1, 1]. */
lsd_status lsdi_dataset_load(lsd_dataset *ds, size_t index, int resolution, int center_crop, int random_flip,
                             uint64_t seed, float *out, lsd_dataset_item *info);
const char *lsdi_dataset_caption(const lsd_dataset *ds, size_t index);
/* A permutation of 0..n-1 drawn from seed (Fisher-Yates). */
void lsdi_shuffle(size_t *idx, size_t n, uint64_t seed);

/* ---- lr_schedule.c ---- */
/* The factor diffusers' get_scheduler applies to the base LR after `step` optimizer steps (the LR of the
 * step numbered step + 1). */
double lsdi_lr_factor(const lsd_train_params *p, int step);

/* ---- trainer.c ---- */
struct lsd_trainer {
    lsd_model *model;
    lsd_adapter_set *set;
    char *adapter;
    lsd_dataset *dataset;
    lsd_train_params p;
    char *output_dir;
    lsdi_noise_schedule ns;
    lsdt_tensor **params; /* the adapter's trainable tensors (the set's) */
    int n_params;
    lsdt_adamw *opt;
    int step;             /* optimizer steps done */
    uint64_t micro;       /* batches drawn from the dataset so far (the data loader's position) */
    /* Test hooks: when keep_debug is set, each step leaves copies of what it computed here. */
    int keep_debug;
    lsdt_tensor **last_grads;      /* before clipping */
    lsdt_tensor **last_grads_used; /* after clipping: what AdamW consumed */
    float *last_pred, *last_target; /* of the last batch */
    size_t last_n;
    double last_grad_norm;
    double t0;
};

/* ---- checkpoint.c ---- */
/* Removes the oldest output_dir/checkpoint-<n> directories beyond checkpoints_total_limit. */
lsd_status lsdi_checkpoint_prune(const char *output_dir, int limit);

#endif
