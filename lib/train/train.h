/* Internals of the data loader, trainer and checkpoints (lib/train). */
#ifndef LSD_TRAIN_TRAIN_H
#define LSD_TRAIN_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/refcount.h"
#include "data/cache.h"
#include "data/data.h"
#include "lora_sd.h"
#include "lsd_torch.h"
#include "optim/ema.h"
#include "optim/lr_schedule.h"
#include "optim/optim.h"
#include "sample/scheduler.h"

/* ---- loader.c: what the trainer draws (the seam between the data pipeline and the step) ----
 * The loader decides every item of a batch (which item, bucket size, crop, flip, caption: an lsdi_sample_ref of
 * data/data.h) from (seed, position) alone; pixels or latents are fetched afterwards by lsdi_batch_latents, so a
 * latent cache can skip decoding. Without buckets the items form one endless stream, an epoch at a time in an
 * order shuffled from (seed, epoch); with buckets each epoch is kohya's: every bucket's items shuffled and cut in
 * batches, the batches shuffled. DreamBooth prior preservation pairs each instance item with a class item. */
typedef struct lsdi_loader lsdi_loader;
/* The plan of ds under p (the trainer's resolution, batch size, crop, flip, prior preservation), drawing only the
 * items listed (ascending; NULL: all; validation_split holds the others out). */
lsd_status lsdi_loader_new(const lsd_dataset *ds, const lsd_train_params *p, const size_t *items, size_t n_items,
                           lsdi_loader **out);
void lsdi_loader_free(lsdi_loader *l);
/* Batch `micro` of the run (0-based, counting every accumulation micro-batch): fills refs[0..*n) (*n <= capacity;
 * all of one bucket; with prior preservation the instance items first, then as many class items). */
lsd_status lsdi_loader_next(lsd_trainer *tr, uint64_t micro, lsdi_sample_ref *refs, int capacity, int *n);
/* Refs a batch can fill: train_batch_size (times the group's world size), twice that with prior preservation. */
int lsdi_loader_capacity(const lsd_trainer *tr);
void lsdi_sample_refs_release(lsdi_sample_ref *refs, int n);
/* Optimizer steps in one epoch (items x repeats, batches, accumulation), for num_train_epochs and metadata. */
int lsdi_loader_steps_per_epoch(const lsd_trainer *tr);
/* For kohya's metadata: the batches of an epoch (len(train_dataloader)); and bucket b of a bucketed loader (1, its
 * size, its entries an epoch and the sum over its images of |bucket aspect - image aspect|; 0 past the last). */
size_t lsdi_loader_batches_per_epoch(const lsd_trainer *tr);
int lsdi_loader_bucket(const lsd_trainer *tr, int b, int *w, int *h, size_t *entries, double *ar_error_sum);
/* Scaled latents [n, C, h, w] of the refs: from the latent cache when on, else decoded and VAE-encoded;
 * the posterior sample draws its noise from g, for a batch of `total` whose items pick[0..n) the refs are (pick
 * NULL: the n refs are the batch). (latents.c) */
lsd_status lsdi_batch_latents(lsd_trainer *tr, const lsdi_sample_ref *refs, int n, const int *pick, int total,
                              lsdt_generator *g, float *latents);

/* ---- precision.c ---- */
/* The dtype a run computes in: mixed_precision where the device does it fast, else fp32 with a warning (or
 * LSD_ERR_UNSUPPORTED under mixed_precision_strict); the model's weights must already be in it. */
lsd_status lsdi_train_precision(const lsd_model *m, const lsd_train_params *p, lsd_dtype *out);

/* torch.cuda.amp.GradScaler's rules for fp16: the loss is multiplied by `scale` before backward; the gradients are
 * divided by it before clipping; a step whose gradients hold a NaN/Inf is skipped and halves the scale, 2000 clean
 * steps in a row double it. */
typedef struct lsdi_grad_scaler {
    int enabled;
    double scale;   /* 65536 to start */
    int good_steps; /* clean steps since the scale last changed */
} lsdi_grad_scaler;
void lsdi_grad_scaler_init(lsdi_grad_scaler *g, int enabled);
/* Unscales the gradients of params, sets *skip when one is not finite, and updates the scale. */
lsd_status lsdi_grad_scaler_unscale_update(lsdi_grad_scaler *g, lsdt_tensor *const *params, int n, int *skip);

/* ---- dist.c: the data-parallel group ---- */
struct lsd_dist {
    lsdi_ref ref;      /* the caller's and each trainer's on the group: freed in any order */
    lsdt_dist *g;      /* NULL in a group of one */
    int rank, world;
    double timeout;
    int trainers;      /* trainers made on this group so far (a namespace of store keys each) */
    char where[320];   /* "rendezvous of rank r of w at addr:port", for messages */
};
lsd_dist *lsdi_dist_retain(lsd_dist *d);
/* Rank 0's LoRA weights to every rank, after checking that all were given the same run (lsd_trainer_new). */
lsd_status lsdi_dist_start(lsd_trainer *tr);
/* The step's gradient sum: the adapter's gradients, the step's loss and images, and every rank's failure (local,
 * its message kept for the others), cancel flag and steps done summed over the group in one collective. Fails when
 * any rank failed or cancelled, or is at another step (resumed elsewhere), or the collective failed, naming the
 * rank at fault; else *loss and *images are the group's. */
lsd_status lsdi_dist_reduce(lsd_trainer *tr, lsd_status local, int cancel, double *loss, int *images);

/* ---- trainer.c ---- */
struct lsd_trainer {
    lsdi_errbox err; /* lsd_trainer_last_error */
    /* The trainer's own references (lib/core/refcount.h): the caller may free these handles before the trainer. */
    lsd_model *model;
    lsd_adapter_set *set;
    char *adapter;
    lsd_dataset *dataset;
    lsd_dataset *validation_dataset; /* p.validation_dataset */
    lsdi_loader *loader;  /* the dataset's plan, when there is a dataset */
    lsd_train_params p;
    char *output_dir, *output_name, *training_comment; /* copies p's strings point to */
    lsdi_noise_schedule ns;
    lsdi_grad_scaler scaler; /* fp16 only */
    lsdt_tensor **params; /* the adapter's trainable tensors (the set's) */
    int n_params;
    lsdi_optim *opt;
    int n_groups;         /* of the optimizer: the UNet's parameters (and the text encoder's, when trained) */
    double base_lr[2];    /* their LRs before the schedule */
    lsdi_ema *ema;        /* use_ema */
    int ema_swapped;      /* lsd_trainer_swap_ema: the EMA weights are in the adapter */
    int n_params_net[2];  /* UNet's, then the text encoder's: params[0 .. n_params_net[0]) are the UNet's */
    int net_group[2];     /* the optimizer group of the UNet's / text encoder's params; -1: that network is not trained */
    lsdi_latent_cache *latent_cache; /* cache_latents: item draws' VAE posteriors (lib/data/cache.h) */
    lsdi_text_cache *text_cache;     /* ... and captions' embeddings while the text encoder is frozen */
    int step;             /* optimizer steps done */
    uint64_t micro;       /* batches drawn from the dataset so far (the data loader's position) */
    double last_grad_norm; /* of the last step, before clipping (the metrics' grad_norm) */
    /* Test hooks: when keep_debug is set, each step leaves copies of what it computed here. */
    int keep_debug;
    lsdt_tensor **last_grads;      /* before clipping */
    lsdt_tensor **last_grads_used; /* after clipping: what the optimizer consumed */
    float *last_pred, *last_target; /* of the last batch */
    size_t last_n;
    double t0;
    double step_t0;       /* when the step under way started (images_per_second) */
    /* validate.c: the dataset items the loader may draw (all but the validation_split hold-out, ascending), and
     * the held-out items the validation loss runs on (of validation_dataset, or of dataset). */
    size_t *train_items, n_train_items;
    lsd_dataset *val_ds;
    size_t *val_items, n_val_items;
    float *val_latents;   /* [n_val_items, C, h, w] scaled posterior samples, made at the first validation */
    char **val_prompts;   /* the trainer's copies of validation_prompts */
    /* saving (save.c, metadata.c) */
    double started_at;    /* unix time of lsd_trainer_new: ss_training_started_at */
    uint32_t session_id;  /* ss_session_id: random per trainer, as kohya's per run */
    int steps_per_epoch;  /* 0 without a dataset */
    /* data parallel (dist.c): a group of more than one, or NULL; this rank's share of each global batch */
    lsd_dist *dist;
    int rank, world;      /* 0 and 1 without a group */
    double allreduce_seconds; /* of the last step */
};

/* Records a failed call's status and message on tr (lsd_trainer_last_error); returns st. */
lsd_status lsdi_trainer_record(const lsd_trainer *tr, lsd_status st);

/* One batch's loss with nothing recorded for backward: no gradients, no debug copies (the validation loss). */
lsd_status lsdi_batch_loss(lsd_trainer *tr, const lsd_train_batch *b, double *loss_out);

/* ---- validate.c ---- */
/* Checks the validation params, copies the prompts, splits the dataset into train_items and val_items. */
lsd_status lsdi_validation_init(lsd_trainer *tr);
void lsdi_validation_free(lsd_trainer *tr);
/* After step tr->step: a validation when one is due (every validation_steps, and at max_train_steps). */
lsd_status lsdi_validation_after_step(lsd_trainer *tr);

/* ---- metrics.c ---- */
/* The metrics callback after an optimizer step of `images` images with mean loss `loss`. */
void lsdi_metrics_step(lsd_trainer *tr, double loss, int images);
/* ... and after a validation (val_loss NaN without held-out items; sample_path NULL without images). */
void lsdi_metrics_validation(lsd_trainer *tr, double val_loss, const char *sample_path);

/* LSD_ERR_INVALID_ARGUMENT naming fn while lsd_trainer_swap_ema has the EMA weights in the adapter. */
lsd_status lsdi_trainer_check_live(const lsd_trainer *tr, const char *fn);

/* ---- metadata.c: kohya's ss_* training metadata ---- */
typedef struct lsdi_kv {
    char **keys, **values;
    size_t n, cap;
} lsdi_kv;
lsd_status lsdi_kv_add(lsdi_kv *kv, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void lsdi_kv_free(lsdi_kv *kv);
double lsdi_unix_time(void);
/* The ss_* keys (strings as kohya writes them) of the trainer's run at its current step; kv is appended to. */
lsd_status lsdi_train_metadata(const lsd_trainer *tr, lsdi_kv *kv);
/* The dataset's part of them (metadata_dataset.c). */
lsd_status lsdi_dataset_metadata(const lsd_trainer *tr, lsdi_kv *kv);

/* ---- save.c ---- */
/* After optimizer step `step`: the epoch file <output_name>-<epoch, 6 digits>.safetensors in output_dir when an
 * epoch ended and save_every_n_epochs says so (not after the last epoch: the final save is the caller's). */
lsd_status lsdi_trainer_epoch_save(lsd_trainer *tr);

/* ---- checkpoint.c ---- */
/* Before saving checkpoint-<step>: removes the oldest output_dir/checkpoint-<digits> directories (never other
 * names, never files, never checkpoint-<step> itself) so that at most `limit` remain once it is saved. */
lsd_status lsdi_checkpoint_prune(const char *output_dir, int limit, int step);

#endif
