/* The training step of diffusers' train_text_to_image_lora.py: VAE latents, noise (+ offset), uniform timesteps,
 * add_noise, epsilon or velocity target, UNet with the adapter, MSE or min-SNR loss, backward (accumulated over
 * gradient_accumulation_steps batches, each loss divided by that count as accelerate does), clipping, the optimizer
 * (lib/optim) at the scheduled LR, the EMA, gradients dropped. Every random draw comes from a generator seeded by (seed, step, batch), so a
 * resumed run repeats an uninterrupted one exactly. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/struct_size.h"
#include "data/cache.h"
#include "lora/lora.h"
#include "model/model.h"
#include "train/train.h"

#define MAX_BATCH 256

void lsd_train_params_init(lsd_train_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->learning_rate = 1e-4;
    p->lr_scheduler = LSD_LR_CONSTANT;
    p->lr_warmup_steps = 500;
    p->gradient_accumulation_steps = 1;
    p->max_train_steps = 1000;
    p->train_batch_size = 16;
    p->resolution = 512;
    p->mixed_precision = LSD_F32;
    p->prediction_type = LSD_PREDICTION_FROM_SCHEDULER;
    p->max_grad_norm = 1.0f;
    p->adam_beta1 = 0.9;
    p->adam_beta2 = 0.999;
    p->adam_weight_decay = 1e-2;
    p->adam_epsilon = 1e-8;
    p->checkpointing_steps = 500;
    p->rank = 4;
    p->lr_num_cycles = 1;
    p->lr_power = 1.0f;
    p->prior_loss_weight = 1.0f;
    p->train_unet = 1;
    p->optimizer = LSD_OPTIM_ADAMW;
    p->ema_decay = 0.9999f;
    p->ema_inv_gamma = 1.0f;
    p->ema_power = 2.0f / 3.0f;
    p->num_validation_images = 4;
    p->validation_steps = 100;
    p->save_precision = LSD_F32;
    p->validation_inference_steps = 30;
    p->validation_guidance_scale = 7.5f;
    p->validation_sampler = LSD_SAMPLER_PNDM;
}

static lsd_status read_params(const lsd_train_params *in, lsd_train_params *p, const char *fn)
{
    lsd_train_params_init(p);
    if (in)
        LSDI_TRY(lsdi_struct_read(LSD_STRUCT_TRAIN_PARAMS, in, p, fn));
    const char *bad = NULL;
    if (!(p->learning_rate > 0) || !isfinite(p->learning_rate))
        bad = "learning_rate must be > 0";
    else if ((unsigned)p->lr_scheduler > LSD_LR_POLYNOMIAL)
        bad = "lr_scheduler is not an lsd_lr_scheduler";
    else if (p->lr_scheduler == LSD_LR_POLYNOMIAL && !(p->learning_rate > 1e-7))
        bad = "polynomial lr_scheduler needs learning_rate > lr_end (1e-7)";
    else if (p->lr_warmup_steps < 0)
        bad = "lr_warmup_steps must be >= 0";
    else if (p->gradient_accumulation_steps < 1 || p->gradient_accumulation_steps > 65536)
        bad = "gradient_accumulation_steps must be in [1, 65536]";
    else if (p->max_train_steps < 1)
        bad = "max_train_steps must be >= 1";
    else if (p->train_batch_size < 1 || p->train_batch_size > MAX_BATCH)
        bad = "train_batch_size must be in [1, 256]";
    else if (p->resolution < 8 || p->resolution > 8192)
        bad = "resolution must be in [8, 8192]";
    else if ((unsigned)p->mixed_precision > LSD_BF16)
        bad = "mixed_precision is not an lsd_dtype";
    else if (!(p->snr_gamma >= 0) || !isfinite(p->snr_gamma))
        bad = "snr_gamma must be >= 0 (0 = off)";
    else if (!isfinite(p->noise_offset))
        bad = "noise_offset must be finite";
    else if ((unsigned)p->prediction_type > LSD_PREDICTION_V)
        bad = "prediction_type is not an lsd_prediction_type";
    else if (!isfinite(p->max_grad_norm))
        bad = "max_grad_norm must be finite";
    else if (!(p->adam_beta1 >= 0 && p->adam_beta1 < 1) || !(p->adam_beta2 >= 0 && p->adam_beta2 < 1))
        bad = "adam_beta1 and adam_beta2 must be in [0, 1)";
    else if (!(p->adam_weight_decay >= 0) || !(p->adam_epsilon > 0))
        bad = "adam_weight_decay must be >= 0 and adam_epsilon > 0";
    else if (p->checkpoints_total_limit < 0)
        bad = "checkpoints_total_limit must be >= 0";
    else if (p->rank < 1 || p->rank > 4096)
        bad = "rank must be in [1, 4096]";
    else if (p->dist && p->dist->world > 1 &&
             (long)p->train_batch_size * p->dist->world * (p->with_prior_preservation ? 2 : 1) > MAX_BATCH)
        bad = "train_batch_size x world_size (x 2 with prior preservation) must be <= 256: the ranks share out "
              "each global batch";
    else if (p->with_prior_preservation && p->train_batch_size > MAX_BATCH / 2)
        bad = "train_batch_size must be in [1, 128] with prior preservation (each batch also holds as many class "
              "images)";
    else if (!(p->prior_loss_weight >= 0) || !isfinite(p->prior_loss_weight))
        bad = "prior_loss_weight must be >= 0 and finite";
    else if ((unsigned)p->optimizer > LSD_OPTIM_SGD)
        bad = "optimizer is not an lsd_optimizer";
    else if (p->use_ema && !(p->ema_decay >= 0 && p->ema_decay <= 1))
        bad = "ema_decay must be in [0, 1]";
    else if (p->use_ema && p->ema_warmup && !(p->ema_inv_gamma > 0 && p->ema_power > 0))
        bad = "ema_inv_gamma and ema_power must be > 0";
    else if (p->lora_targets & ~(LSDI_TARGETS_UNET | LSDI_TARGETS_TE))
        bad = "lora_targets has bits that are not lsd_lora_target values";
    else if (!isfinite(p->network_alpha) || !isfinite(p->conv_alpha))
        bad = "network_alpha and conv_alpha must be finite";
    else if (p->conv_dim < 0 || p->conv_dim > 4096)
        bad = "conv_dim must be in [0, 4096] (0: rank)";
    else if (!(p->unet_lr >= 0) || !isfinite(p->unet_lr) || !(p->text_encoder_lr >= 0) ||
             !isfinite(p->text_encoder_lr))
        bad = "unet_lr and text_encoder_lr must be >= 0 (0: learning_rate)";
    else if (!p->train_unet && !p->train_text_encoder)
        bad = "train_unet and train_text_encoder are both 0: nothing to train";
    else if (p->num_train_epochs < 0 || p->save_every_n_epochs < 0)
        bad = "num_train_epochs and save_every_n_epochs must be >= 0 (0: off)";
    else if (p->save_precision != LSD_F32 && p->save_precision != LSD_F16 && p->save_precision != LSD_BF16)
        bad = "save_precision must be LSD_F32, LSD_F16 or LSD_BF16";
    else if (p->optimizer == LSD_OPTIM_PRODIGY && p->train_unet && p->train_text_encoder &&
             (p->unet_lr > 0 ? p->unet_lr : p->learning_rate) !=
                 (p->text_encoder_lr > 0 ? p->text_encoder_lr : p->learning_rate))
        bad = "prodigy finds one step size for every parameter group: unet_lr and text_encoder_lr must be equal "
              "(0: learning_rate)";
    else if ((p->cache_latents || p->cache_latents_to_disk) && !p->center_crop)
        bad = "cache_latents / cache_latents_to_disk need center_crop: a random crop is another image at every draw, "
              "so its latents cannot be reused (random_flip is fine: both flips are cached)";
    if (bad)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: %s", fn, bad);
    return LSD_OK;
}

lsd_status lsd_train_params_check(const lsd_train_params *params)
{
    lsd_train_params p;
    LSDI_TRY(read_params(params, &p, "lsd_train_params_check"));
    /* An optimizer over no parameters reads and checks every optimizer_args key as the real one will. */
    lsdi_optim *o = NULL;
    lsd_status st = lsdi_optim_new(p.optimizer, p.optimizer_args, &p, NULL, 0, &o);
    lsdi_optim_free(o);
    return st;
}

static void free_debug(lsd_trainer *tr)
{
    for (int i = 0; tr->last_grads && i < tr->n_params; i++) {
        lsdt_free(tr->last_grads[i]);
        lsdt_free(tr->last_grads_used[i]);
        tr->last_grads[i] = tr->last_grads_used[i] = NULL;
    }
}

void lsd_trainer_free(lsd_trainer *tr)
{
    if (!tr)
        return;
    if (tr->params)
        lsdt_zero_grad(tr->params, tr->n_params);
    free_debug(tr);
    free(tr->last_grads);
    free(tr->last_grads_used);
    free(tr->last_pred);
    free(tr->last_target);
    lsdi_optim_free(tr->opt);
    lsdi_ema_free(tr->ema);
    lsdi_latent_cache_free(tr->latent_cache);
    lsdi_text_cache_free(tr->text_cache);
    lsdi_loader_free(tr->loader);
    free(tr->params);
    lsdi_validation_free(tr);
    lsdi_noise_schedule_release(&tr->ns);
    free(tr->adapter);
    free(tr->output_dir);
    free(tr->output_name);
    free(tr->training_comment);
    lsd_dataset_free(tr->validation_dataset);
    lsd_dataset_free(tr->dataset);
    lsd_adapter_set_free(tr->set);
    lsd_model_free(tr->model);
    lsd_dist_free(tr->dist);
    free(tr);
}

/* num_train_epochs overrides max_train_steps (diffusers' and kohya's max_train_epochs rule); an epoch's steps are
 * the loader's (repeats, buckets and prior preservation counted). */
static lsd_status set_epochs(lsd_trainer *tr)
{
    tr->steps_per_epoch = lsdi_loader_steps_per_epoch(tr);
    if (tr->p.num_train_epochs <= 0)
        return LSD_OK;
    if (tr->steps_per_epoch < 1)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: num_train_epochs %d with an empty dataset",
                          tr->p.num_train_epochs);
    long long steps = (long long)tr->p.num_train_epochs * tr->steps_per_epoch;
    if (steps > 1000000000)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: num_train_epochs %d x %d steps per epoch is "
                          "too many steps", tr->p.num_train_epochs, tr->steps_per_epoch);
    tr->p.max_train_steps = (int)steps;
    return LSD_OK;
}

/* What lsd_trainer_new adds when the set has no adapter of that name: lora_targets, or the default of the nets
 * trained (UNet attention as diffusers' script; text-encoder attention and MLP as kohya's; LoCon convs when conv_dim
 * is given, as kohya's network_args conv_dim adds them). */
static lsd_status add_adapter(lsd_trainer *tr)
{
    const lsd_train_params *p = &tr->p;
    unsigned targets = p->lora_targets;
    if (!targets)
        targets = (p->train_unet ? LSD_TARGET_UNET_ATTN | (p->conv_dim > 0 ? LSD_TARGET_UNET_CONV : 0) : 0) |
                  (p->train_text_encoder ? LSDI_TARGETS_TE : 0);
    for (unsigned bit = 1; bit <= targets; bit <<= 1) {
        int te = (bit & LSDI_TARGETS_TE) != 0;
        if ((targets & bit) && !(te ? p->train_text_encoder : p->train_unet))
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: lora_targets has %s, but the %s is not "
                              "trained (%s is 0)", lsd_lora_target_name((lsd_lora_target)bit),
                              te ? "text encoder" : "UNet", te ? "train_text_encoder" : "train_unet");
    }
    lsd_lora_params lp;
    lsd_lora_params_init(&lp);
    lp.rank = p->rank;
    lp.alpha = p->network_alpha > 0 ? p->network_alpha : 0.0f;
    lp.targets = targets;
    lp.conv_rank = p->conv_dim;
    lp.conv_alpha = p->conv_alpha > 0 ? p->conv_alpha : 0.0f;
    lp.seed = p->seed;
    return lsd_adapter_set_add(tr->set, tr->adapter, &lp);
}

/* Every module of the adapter must be trained: one on a network left frozen would be saved untouched. */
static lsd_status check_adapter(lsd_trainer *tr)
{
    const lsdi_adapter *ad = lsdi_adapter_find(tr->set, tr->adapter);
    int on[LSDI_NET_COUNT] = {tr->p.train_unet != 0, tr->p.train_text_encoder != 0}, have[LSDI_NET_COUNT] = {0, 0};
    for (int i = 0; ad && i < ad->n_mods; i++) {
        const lsdi_lora_layer *l = ad->mods[i].layer;
        const lsdi_module *mod = &lsdi_lora_net_params(tr->model, l->net)->mods[l->module];
        have[l->net] = 1;
        if (!on[l->net])
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: adapter \"%s\" has a LoRA on %s (%s), but "
                              "%s is 0: it would be saved untrained", tr->adapter, mod->name,
                              lsd_lora_target_name((lsd_lora_target)lsdi_lora_target_of(l->net, mod)),
                              l->net == LSDI_NET_TE ? "train_text_encoder" : "train_unet");
        if (ad->mods[i].mid)
            return lsdi_error(LSD_ERR_UNSUPPORTED, "lsd_trainer_new: adapter \"%s\" has a Tucker (lora_mid) LoRA "
                              "on %s, which the trainer cannot train", tr->adapter, mod->name);
    }
    if (on[LSDI_NET_TE] && !have[LSDI_NET_TE])
        lsdi_log(LSD_LOG_WARN, "train_text_encoder is set, but adapter \"%s\" has no text-encoder module",
                 tr->adapter);
    return LSD_OK;
}

/* The adapter's tensors, UNet's first: params[0 .. n_params_net[0]) then the text encoder's. */
static lsd_status collect_params(lsd_trainer *tr)
{
    lsdt_tensor **v[LSDI_NET_COUNT] = {NULL, NULL};
    lsd_status st = LSD_OK;
    for (int net = 0; net < LSDI_NET_COUNT && st == LSD_OK; net++)
        st = lsdi_adapter_trainable_params_net(tr->set, tr->adapter, net, &v[net], &tr->n_params_net[net]);
    int n = tr->n_params_net[0] + tr->n_params_net[1];
    if (st == LSD_OK && !(tr->params = malloc((size_t)n * sizeof *tr->params + 1)))
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new");
    if (st == LSD_OK) {
        memcpy(tr->params, v[0], (size_t)tr->n_params_net[0] * sizeof *v[0]);
        memcpy(tr->params + tr->n_params_net[0], v[1], (size_t)tr->n_params_net[1] * sizeof *v[1]);
        tr->n_params = n;
    }
    free(v[0]);
    free(v[1]);
    return st;
}

/* One optimizer group per trained network, UNet's first, each at its LR (kohya's unet_lr / text_encoder_lr;
 * 0: learning_rate), as kohya's prepare_optimizer_params makes them. */
static lsd_status new_optimizer(lsd_trainer *tr)
{
    double lr[2] = {tr->p.unet_lr > 0 ? tr->p.unet_lr : tr->p.learning_rate,
                    tr->p.text_encoder_lr > 0 ? tr->p.text_encoder_lr : tr->p.learning_rate};
    lsdi_optim_group g[2];
    tr->n_groups = 0;
    for (int net = 0, first = 0; net < 2; first += tr->n_params_net[net], net++) {
        tr->net_group[net] = tr->n_params_net[net] ? tr->n_groups : -1;
        if (!tr->n_params_net[net])
            continue;
        tr->base_lr[tr->n_groups] = lr[net];
        g[tr->n_groups++] = (lsdi_optim_group){tr->params + first, tr->n_params_net[net], lr[net]};
    }
    return lsdi_optim_new(tr->p.optimizer, tr->p.optimizer_args, &tr->p, g, tr->n_groups, &tr->opt);
}

/* The latent cache with cache_latents (cache_latents_to_disk implies it, as in kohya), and then the caption cache
 * too while the text encoder is frozen (no trained text-encoder parameters). */
static lsd_status new_caches(lsd_trainer *tr)
{
    const lsd_train_params *p = &tr->p;
    if (!tr->dataset || !(p->cache_latents || p->cache_latents_to_disk))
        return LSD_OK;
    LSDI_TRY(lsdi_latent_cache_new(lsd_dataset_size(tr->dataset), p->cache_latents_to_disk, p->cache_dir,
                                   &tr->latent_cache));
    return tr->n_params_net[1] ? LSD_OK : lsdi_text_cache_new(&tr->text_cache);
}

/* BPE tokens of a caption, without the tokenizer's truncation warning (the dataset names the file instead):
 * the id buffer has room for more tokens than the text has bytes after normalisation can make. */
static lsd_status count_tokens(const char *text, int *n, void *user)
{
    const lsd_model *m = user;
    size_t room = 4 * strlen(text) + 8;
    int64_t *ids = malloc(room * sizeof *ids);
    if (!ids)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "counting the tokens of a caption");
    lsd_status st = lsdi_tokenizer_encode(m->tokenizer, text, ids, (int)room, n);
    free(ids);
    return st;
}

/* What can be checked about the data before step one: sizes the UNet takes, the loader's plan, the captions'
 * lengths, and an output_dir that can be written. */
static lsd_status check_run(lsd_trainer *tr)
{
    const lsd_model *m = tr->model;
    int grid = lsdi_vae_scale_factor(m->vae) * lsdi_unet_size_factor(m->unet);
    if (tr->dataset && tr->dataset->p.enable_bucket && tr->dataset->p.bucket_reso_steps % grid)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: bucket_reso_steps %d is not a multiple of the "
                          "model's %d-pixel grid", tr->dataset->p.bucket_reso_steps, grid);
    if (tr->dataset && !tr->dataset->p.enable_bucket && tr->p.resolution % grid)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: resolution %d is not a multiple of the model's "
                          "%d-pixel grid", tr->p.resolution, grid);
    if (tr->dataset) {
        lsd_train_params global = tr->p; /* the loader plans the group's batches; each rank takes its share */
        global.train_batch_size *= tr->world;
        LSDI_TRY(lsdi_loader_new(tr->dataset, &global, tr->train_items, tr->n_train_items, &tr->loader));
        LSDI_TRY(lsdi_captions_warn_long(tr->dataset, count_tokens, tr->model, m->text->cfg.max_positions));
    }
    return tr->output_dir && tr->rank == 0 ? lsd_prepare_output_dir(tr->output_dir) : LSD_OK;
}

static lsd_status trainer_new(lsd_model *model, lsd_adapter_set *set, const char *adapter_name, lsd_dataset *dataset,
                              const lsd_train_params *params, lsd_trainer **out)
{
    if (!model || !set || !adapter_name || !*adapter_name || !out)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: %s is NULL",
                          !model ? "model" : !set ? "set" : !adapter_name || !*adapter_name ? "adapter_name" : "out");
    *out = NULL;
    if (set->model != model)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_new: the adapter set belongs to another model");
    LSDI_TRY(lsdi_model_check_encoder(model, "lsd_trainer_new")); /* training encodes its images */
    lsd_trainer *tr = calloc(1, sizeof *tr);
    if (!tr)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new");
    lsd_status st = read_params(params, &tr->p, "lsd_trainer_new");
    tr->model = lsdi_model_retain(model);
    tr->set = lsdi_adapter_set_retain(set);
    tr->dataset = dataset ? lsdi_dataset_retain(dataset) : NULL;
    if (st == LSD_OK && tr->p.validation_dataset)
        tr->validation_dataset = lsdi_dataset_retain(tr->p.validation_dataset);
    tr->t0 = lsdi_model_clock();
    tr->world = 1;
    if (st == LSD_OK && tr->p.dist && tr->p.dist->world > 1) {
        tr->dist = lsdi_dist_retain(tr->p.dist);
        tr->rank = tr->dist->rank;
        tr->world = tr->dist->world;
    }
    tr->p.dist = tr->dist; /* a group of one is not kept: nothing reads it later */
    if (st == LSD_OK && (!(tr->adapter = strdup(adapter_name)) ||
                         (tr->p.output_dir && !(tr->output_dir = strdup(tr->p.output_dir))) ||
                         (tr->p.output_name && !(tr->output_name = strdup(tr->p.output_name))) ||
                         (tr->p.training_comment && !(tr->training_comment = strdup(tr->p.training_comment)))))
        st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new");
    tr->p.output_dir = tr->output_dir;
    tr->p.output_name = tr->output_name;
    tr->p.training_comment = tr->training_comment;
    tr->started_at = lsdi_unix_time();
    tr->session_id = (uint32_t)lsdi_train_seed((uint64_t)(tr->started_at * 1e6), (uint64_t)(uintptr_t)tr, 0x5E55);
    if (st == LSD_OK)
        st = lsdi_validation_init(tr);
    if (st == LSD_OK)
        st = check_run(tr);
    if (st == LSD_OK && dataset)
        st = set_epochs(tr);
    lsd_dtype compute = LSD_F32;
    if (st == LSD_OK)
        st = lsdi_train_precision(model, &tr->p, &compute);
    lsdi_grad_scaler_init(&tr->scaler, compute == LSD_F16);
    if (st == LSD_OK && !lsdi_adapter_find(set, adapter_name))
        st = add_adapter(tr);
    if (st == LSD_OK)
        st = collect_params(tr);
    if (st == LSD_OK)
        st = check_adapter(tr);
    for (int i = 0; st == LSD_OK && i < tr->n_params; i++)
        if (lsdt_get_dtype(tr->params[i]) != LSDT_F32)
            st = lsdi_error(LSD_ERR_UNSUPPORTED, "lsd_trainer_new: adapter \"%s\" is not float32 (load the model in "
                            "fp32 to train)", adapter_name);
    if (st == LSD_OK && tr->dist)
        st = lsdi_dist_start(tr);
    if (st == LSD_OK)
        st = new_caches(tr);
    if (st == LSD_OK)
        st = lsdi_noise_schedule_load(model->scheduler_config, &tr->ns);
    if (st == LSD_OK && tr->p.prediction_type != LSD_PREDICTION_FROM_SCHEDULER)
        tr->ns.prediction = tr->p.prediction_type == LSD_PREDICTION_V ? LSDI_PRED_V : LSDI_PRED_EPSILON;
    if (st == LSD_OK)
        st = new_optimizer(tr);
    if (st == LSD_OK && tr->p.use_ema)
        st = lsdi_ema_new(tr->params, tr->n_params, &tr->p, &tr->ema);
    if (st == LSD_OK) {
        tr->last_grads = calloc((size_t)tr->n_params + 1, sizeof *tr->last_grads);
        tr->last_grads_used = calloc((size_t)tr->n_params + 1, sizeof *tr->last_grads_used);
        if (!tr->last_grads || !tr->last_grads_used)
            st = lsdi_error(LSD_ERR_OUT_OF_MEMORY, "lsd_trainer_new");
    }
    if (st != LSD_OK) {
        lsd_trainer_free(tr);
        return st;
    }
    *out = tr;
    return LSD_OK;
}

lsd_status lsd_trainer_new(lsd_model *model, lsd_adapter_set *set, const char *adapter_name, lsd_dataset *dataset,
                           const lsd_train_params *params, lsd_trainer **out)
{
    lsd_status st = trainer_new(model, set, adapter_name, dataset, params, out);
    return lsdi_model_record(model, lsdi_adapter_set_record(set, lsdi_dataset_record(dataset, st)));
}

LSDI_DEFINE_LAST_ERROR(trainer, lsd_trainer)

int lsd_trainer_get_step(const lsd_trainer *tr)
{
    return tr ? tr->step : 0;
}

lsd_status lsdi_trainer_check_live(const lsd_trainer *tr, const char *fn)
{
    if (tr->ema_swapped)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "%s: the adapter holds the EMA weights (lsd_trainer_swap_ema "
                          "them back first)", fn);
    return LSD_OK;
}

static lsd_status trainer_swap_ema(lsd_trainer *tr)
{
    if (!tr || !tr->ema)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_swap_ema: %s",
                          !tr ? "trainer is NULL" : "the trainer keeps no EMA (use_ema is off)");
    lsd_status st;
    if (tr->ema_swapped) {
        st = lsdi_ema_restore(tr->ema);
    } else {
        st = lsdi_ema_store(tr->ema);
        if (st == LSD_OK && (st = lsdi_ema_copy_to(tr->ema)) != LSD_OK)
            (void)lsdi_ema_restore(tr->ema);
    }
    if (st == LSD_OK)
        tr->ema_swapped = !tr->ema_swapped;
    return st;
}

lsd_status lsd_trainer_swap_ema(lsd_trainer *tr)
{
    return lsdi_trainer_record(tr, trainer_swap_ema(tr));
}

int lsd_trainer_get_max_train_steps(const lsd_trainer *tr)
{
    return tr ? tr->p.max_train_steps : 0;
}

/* latents = (mean + std * eps) * scaling_factor, the posterior sample of the frozen VAE. */
static lsd_status encode_images(lsd_trainer *tr, lsdt_generator *g, const float *images, int B, const int *pick,
                                int total, int H, int W, float *latents)
{
    int f = lsdi_vae_scale_factor(tr->model->vae);
    size_t n = (size_t)B * tr->model->vae->cfg.latent_channels * (H / f) * (W / f);
    float *mean = malloc(2 * n * sizeof *mean);
    if (!mean)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "training batch: posterior of %d images", B);
    lsd_status st = lsdi_vae_moments(tr->model, images, B, H, W, mean, mean + n);
    if (st == LSD_OK)
        st = lsdi_posterior_sample(tr->model, g, mean, mean + n, B, pick, total, H / f, W / f, latents);
    free(mean);
    return st == LSD_OK ? LSD_OK : lsdi_error_prefix(st, "training batch");
}

/* N(0, 1) of shape (shape[0] = the batch) into out; with pick, drawn for a batch of `total` and items
 * pick[0 .. shape[0]) kept (a rank's share of the group's batch: the same values whichever rank draws them). */
static lsd_status host_randn(lsdt_generator *g, const int64_t *shape, int ndim, const int *pick, int total,
                             float *out, size_t n)
{
    int64_t full[4];
    memcpy(full, shape, (size_t)ndim * sizeof *full);
    if (pick)
        full[0] = total;
    size_t per = n / (size_t)shape[0], all = (size_t)full[0] * per;
    float *buf = pick ? malloc(all * sizeof *buf) : out;
    if (!buf)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "training noise of a batch of %d", total);
    lsdt_tensor *t = lsdt_randn(NULL, g, full, ndim, LSDT_F32, NULL);
    int rc = t ? lsdt_to_host(t, buf, LSDT_F32, all) : lsdt_last_status();
    lsdt_free(t);
    for (int64_t i = 0; pick && !rc && i < shape[0]; i++)
        memcpy(out + (size_t)i * per, buf + (size_t)pick[i] * per, per * sizeof *out);
    if (pick)
        free(buf);
    return rc ? lsdi_error_prefix(lsdi_error_from_shim(rc), "training noise") : LSD_OK;
}

static lsd_status keep_host(float **buf, size_t *cap, const float *src, size_t n)
{
    if (*cap < n) {
        float *nb = realloc(*buf, n * sizeof *nb);
        if (!nb)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "training debug copy");
        *buf = nb;
    }
    memcpy(*buf, src, n * sizeof **buf);
    return LSD_OK;
}

/* The loss is sum_i coef[i] * mean_chw((pred_i - target_i)^2); *per_item is 0 when that is plain MSE over the
 * batch (the script's F.mse_loss, kept as is). w_i is the min-SNR weight (1 without snr_gamma).
 * - No class items: coef = w_i / B (train_text_to_image_lora.py).
 * - with_prior_preservation (DreamBooth, diffusers' train_dreambooth*.py: model_pred chunked into the instance and
 *   the class halves): the instance items' mean, min-SNR weighted, plus prior_loss_weight times the class items'
 *   plain mean: coef = w_i / n_instance, prior_loss_weight / n_class. The min-SNR weights are the instance items'
 *   own (diffusers takes them from the whole batch's timesteps, which does not broadcast for batches over 1).
 * - Otherwise class items are kohya's regularisation images: every item's MSE is weighted by its loss weight
 *   (prior_loss_weight for reg images, 1 else) and its min-SNR weight, then averaged over the batch:
 *   coef = lw_i * w_i / B (train_network.py). */
static lsd_status loss_coefficients(const lsd_trainer *tr, const int *is_class, const int64_t *ts, int B,
                                    float *coef, int *per_item)
{
    int n_class = 0;
    for (int i = 0; is_class && i < B; i++)
        n_class += is_class[i] != 0;
    int dreambooth = tr->p.with_prior_preservation && n_class > 0;
    *per_item = tr->p.snr_gamma > 0 || n_class > 0;
    for (int i = 0; i < B; i++) {
        int cls = is_class && is_class[i];
        float w = 1.0f;
        if (tr->p.snr_gamma > 0 && !(dreambooth && cls)) {
            float snr;
            LSDI_TRY(lsdi_ddpm_snr(&tr->ns, ts[i], &snr));
            float mn = snr < tr->p.snr_gamma ? snr : tr->p.snr_gamma;
            w = tr->ns.prediction == LSDI_PRED_V ? mn / (snr + 1.0f) : mn / snr;
        }
        if (dreambooth)
            coef[i] = cls ? tr->p.prior_loss_weight / (float)n_class : w / (float)(B - n_class);
        else
            coef[i] = (cls ? tr->p.prior_loss_weight : 1.0f) * w / (float)B;
    }
    return LSD_OK;
}

/* Forward + backward of one batch; the gradients accumulate on the adapter's tensors. Without `backward`, the
 * forward alone, recording nothing for autograd (the validation loss). With pick, the batch is items pick[0..B)
 * of a group's batch of `total`: noise and timesteps are drawn for all of it and the batch's own kept. */
static lsd_status run_batch(lsd_trainer *tr, const lsd_train_batch *b, const int *pick, int total, uint64_t gen_seed,
                            double loss_scale, int backward, double *loss_out)
{
    lsd_model *m = tr->model;
    const lsdi_unet_config *uc = &m->unet->cfg;
    int B = b->batch, f = lsdi_vae_scale_factor(m->vae), C = uc->in_channels;
    int h = b->latents ? b->height : b->height / f, w = b->latents ? b->width : b->width / f;
    char what[64];
    snprintf(what, sizeof what, backward ? "training step %d" : "validation after step %d",
             backward ? tr->step + 1 : tr->step);
    if (B < 1 || B > MAX_BATCH)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training batch: batch %d not in [1, %d]", B, MAX_BATCH);
    if (!b->latents == !b->images)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training batch: give exactly one of images and latents");
    if (!b->context == !b->captions)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training batch: give exactly one of captions and context");
    int te = tr->n_params_net[1] > 0; /* the text encoder runs with autograd, inside the step's scope */
    if (te && b->context)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training batch: the text encoder is trained, so the batch needs "
                          "captions, not a precomputed context");
    int fac = lsdi_unet_size_factor(m->unet);
    if (b->height < 1 || b->width < 1 || b->height > 8192 || b->width > 8192 || h % fac || w % fac ||
        (!b->latents && (b->height % f || b->width % f)))
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT,
                          "training batch: %dx%d %s do not divide into the UNet's %d-pixel latent grid",
                          b->width, b->height, b->latents ? "latents" : "images", fac * (b->latents ? 1 : f));
    int n_ctx = b->context ? b->n_ctx : m->text->cfg.max_positions, D = uc->cross_attention_dim;
    if (n_ctx < 1 || n_ctx > 4096)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training batch: n_ctx %d not in [1, 4096]", n_ctx);
    for (int i = 0; b->timesteps && i < B; i++)
        if (b->timesteps[i] < 0 || b->timesteps[i] >= tr->ns.num_train_timesteps)
            return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training batch: timesteps[%d] = %lld not in [0, %d)", i,
                              (long long)b->timesteps[i], tr->ns.num_train_timesteps);
    size_t per = (size_t)C * h * w, n = (size_t)B * per, nc = (size_t)B * n_ctx * D;
    float *buf = malloc((4 * n + (b->context ? 0 : nc)) * sizeof *buf);
    int64_t *ts = malloc((size_t)B * sizeof *ts);
    if (!buf || !ts) {
        free(buf);
        free(ts);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "training batch of %d", B);
    }
    float *lat = buf, *noise = buf + n, *noisy = buf + 2 * n, *target = buf + 3 * n;
    float *ctx = b->context ? (float *)b->context : buf + 4 * n;
    lsdt_generator *g = lsdt_generator_new(gen_seed);
    lsd_status st = g ? LSD_OK : lsdi_error_from_shim(lsdt_last_status());
    int64_t ls[4] = {B, C, h, w}, os[4] = {B, C, 1, 1}, tsh[1] = {B};
    if (st == LSD_OK && b->latents)
        memcpy(lat, b->latents, n * sizeof *lat);
    else if (st == LSD_OK)
        st = encode_images(tr, g, b->images, B, pick, total, b->height, b->width, lat);
    if (st == LSD_OK && b->noise)
        memcpy(noise, b->noise, n * sizeof *noise);
    else if (st == LSD_OK) {
        st = host_randn(g, ls, 4, pick, total, noise, n);
        if (st == LSD_OK && tr->p.noise_offset != 0.0f) {
            float off[MAX_BATCH * 16];
            if ((size_t)B * C > sizeof off / sizeof off[0])
                st = lsdi_error(LSD_ERR_UNSUPPORTED, "noise_offset with %d latent channels", C);
            else
                st = host_randn(g, os, 4, pick, total, off, (size_t)B * C);
            for (size_t i = 0; st == LSD_OK && i < n; i++)
                noise[i] += tr->p.noise_offset * off[i / ((size_t)h * w)];
        }
    }
    if (st == LSD_OK && b->timesteps)
        memcpy(ts, b->timesteps, (size_t)B * sizeof *ts);
    else if (st == LSD_OK) {
        int64_t all[MAX_BATCH], tall[1] = {pick ? total : B};
        lsdt_tensor *t = lsdt_randint(NULL, g, 0, tr->ns.num_train_timesteps, pick ? tall : tsh, 1, NULL);
        int rc = t ? lsdt_to_host(t, pick ? all : ts, LSDT_I64, (size_t)tall[0]) : lsdt_last_status();
        lsdt_free(t);
        for (int i = 0; pick && !rc && i < B; i++)
            ts[i] = all[pick[i]];
        if (rc)
            st = lsdi_error_from_shim(rc);
    }
    lsdt_generator_free(g);
    if (st == LSD_OK && b->captions && !te)
        st = lsd_model_encode_text(m, b->captions, B, 0, ctx);
    if (st == LSD_OK)
        st = lsdi_ddpm_add_noise(&tr->ns, lat, noise, ts, B, per, noisy);
    if (st == LSD_OK)
        st = lsdi_ddpm_target(&tr->ns, lat, noise, ts, B, per, target);
    float tf[MAX_BATCH], coef[MAX_BATCH];
    for (int i = 0; i < B; i++)
        tf[i] = (float)ts[i];
    int per_item = 0;
    if (st == LSD_OK)
        st = loss_coefficients(tr, b->is_class, ts, B, coef, &per_item);
    if (st != LSD_OK) {
        free(buf);
        free(ts);
        return lsdi_error_prefix(st, "%s", what);
    }
    if (!backward)
        lsdt_no_grad_begin();
    lsdt_scope *s = lsdt_scope_begin();
    if (!s) {
        if (!backward)
            lsdt_no_grad_end();
        free(buf);
        free(ts);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "%s: scope", what);
    }
    int64_t cs[3] = {B, n_ctx, D};
    lsdt_tensor *x = lsdt_channels_last(s, lsdt_from_host(s, noisy, LSDT_F32, ls, 4, m->tdtype, m->device));
    lsdt_tensor *tt = lsdt_from_host(s, tf, LSDT_F32, tsh, 1, LSDT_F32, m->device);
    lsdt_tensor *ct = NULL;
    st = te ? lsdi_model_text_context(s, m, b->captions, B, &ct) : LSD_OK;
    if (!te)
        ct = lsdt_from_host(s, ctx, LSDT_F32, cs, 3, m->tdtype, m->device);
    if (st != LSD_OK) {
        lsdt_scope_end(s);
        if (!backward)
            lsdt_no_grad_end();
        free(buf);
        free(ts);
        return lsdi_error_prefix(st, "%s", what);
    }
    lsdt_tensor *tg = lsdt_from_host(s, target, LSDT_F32, ls, 4, LSDT_F32, m->device);
    lsdi_unet_set_checkpointing(m->unet, tr->p.gradient_checkpointing);
    lsdt_tensor *pred = lsdt_to_dtype(s, lsdi_unet_forward(s, m->unet, x, tt, ct), LSDT_F32);
    lsdi_unet_set_checkpointing(m->unet, 0); /* backward needs no flag: the checkpoints hold their blocks */
    lsdt_tensor *loss;
    if (per_item) {
        static const int dims[3] = {1, 2, 3};
        lsdt_tensor *d = lsdt_sub(s, pred, tg);
        lsdt_tensor *item_mse = lsdt_mean_dims(s, lsdt_mul(s, d, d), dims, 3);
        loss = lsdt_sum(s, lsdt_mul(s, item_mse, lsdt_from_host(s, coef, LSDT_F32, tsh, 1, LSDT_F32, m->device)));
    } else {
        loss = lsdt_mse_loss(s, pred, tg);
    }
    double lv = NAN;
    int rc = loss && lsdt_scope_status(s) == 0 ? lsdt_item(loss, &lv) : 0;
    if (!rc && lsdt_scope_status(s) == 0 && isfinite(lv) && backward) {
        if (tr->keep_debug) {
            rc = lsdt_to_host(pred, noisy, LSDT_F32, n); /* noisy is no longer needed */
            if (!rc && (keep_host(&tr->last_pred, &tr->last_n, noisy, n) != LSD_OK ||
                        keep_host(&tr->last_target, &tr->last_n, target, n) != LSD_OK))
                rc = LSD_ERR_OUT_OF_MEMORY;
            tr->last_n = n;
        }
        if (tr->scaler.enabled)
            loss_scale *= tr->scaler.scale;
        if (!rc && loss_scale != 1.0)
            loss = lsdt_mul_scalar(s, loss, loss_scale);
        if (!rc && loss)
            rc = lsdt_backward(loss);
    }
    int sst = lsdt_scope_end(s);
    if (!backward)
        lsdt_no_grad_end();
    free(buf);
    free(ts);
    if (sst || rc)
        return lsdi_error_prefix(lsdi_error_from_shim(sst ? sst : rc), "%s", what);
    if (!isfinite(lv))
        return lsdi_error(LSD_ERR_NUMERIC, "%s: the loss is %f (NaN/Inf in the inputs or the model)", what, lv);
    *loss_out = lv;
    return LSD_OK;
}

lsd_status lsdi_batch_loss(lsd_trainer *tr, const lsd_train_batch *b, double *loss_out)
{
    return run_batch(tr, b, NULL, 0, lsdi_train_seed(tr->p.validation_seed, 0, 0x7A1D), 1.0, 0, loss_out);
}

static int report(lsd_trainer *tr, lsd_stage stage, int step)
{
    if (!tr->p.progress)
        return 0;
    lsd_progress pr = {sizeof pr, stage, step, tr->p.max_train_steps, lsdi_model_clock() - tr->t0};
    return tr->p.progress(&pr, tr->p.progress_user);
}

/* Gradients are on the adapter: (in a group: summed over the ranks, with the step's loss and images,) measure,
 * clip, update, drop them; or drop them and report why not. */
static lsd_status apply_step(lsd_trainer *tr, lsd_status st, uint64_t micro_after, double *loss, int *images)
{
    int step = tr->step + 1;
    double norm = 0;
    int overflow = 0;
    if (tr->dist) { /* every rank takes part, failed or not, so that the others learn of it at once */
        int cancel = st == LSD_OK && report(tr, LSD_STAGE_TRAIN_STEP, step);
        st = lsdi_dist_reduce(tr, st, cancel, loss, images);
    }
    if (st == LSD_OK && tr->scaler.enabled)
        st = lsdi_grad_scaler_unscale_update(&tr->scaler, tr->params, tr->n_params, &overflow);
    if (st == LSD_OK && overflow) { /* GradScaler skips the optimizer step; the step still counts, as in diffusers */
        lsdi_log(LSD_LOG_INFO, "training step %d: fp16 gradients overflowed; step skipped, loss scale now %g", step,
                 tr->scaler.scale);
        lsdt_zero_grad(tr->params, tr->n_params);
        tr->step = step;
        tr->micro = micro_after;
        return LSD_OK;
    }
    if (st == LSD_OK && tr->keep_debug) {
        free_debug(tr);
        for (int i = 0; i < tr->n_params && st == LSD_OK; i++) {
            lsdt_tensor *g = lsdt_grad(NULL, tr->params[i]);
            tr->last_grads[i] = g ? lsdt_clone(NULL, g) : NULL;
            lsdt_free(g);
        }
    }
    if (st == LSD_OK) {
        int rc = lsdt_clip_grad_norm(tr->params, tr->n_params, 0, &norm);
        if (rc)
            st = lsdi_error_prefix(lsdi_error_from_shim(rc), "training step %d: gradient norm", step);
        else if (!isfinite(norm))
            st = lsdi_error(LSD_ERR_NUMERIC, "training step %d: the gradient norm is %f", step, norm);
        else
            tr->last_grad_norm = norm;
    }
    if (st == LSD_OK && !tr->dist && report(tr, LSD_STAGE_TRAIN_STEP, step))
        st = lsdi_error(LSD_ERR_CANCELLED, "training step %d cancelled by the progress callback", step);
    if (st == LSD_OK && tr->p.max_grad_norm > 0) {
        int rc = lsdt_clip_grad_norm(tr->params, tr->n_params, tr->p.max_grad_norm, NULL);
        if (rc)
            st = lsdi_error_prefix(lsdi_error_from_shim(rc), "training step %d: clipping", step);
    }
    if (st == LSD_OK && tr->keep_debug) {
        for (int i = 0; i < tr->n_params; i++) {
            lsdt_tensor *g = lsdt_grad(NULL, tr->params[i]);
            tr->last_grads_used[i] = g ? lsdt_clone(NULL, g) : NULL;
            lsdt_free(g);
        }
    }
    if (st == LSD_OK) {
        double factor = lsdi_lr_factor(&tr->p, tr->step);
        for (int g = 0; g < tr->n_groups; g++)
            lsdi_optim_set_lr(tr->opt, g, tr->base_lr[g] * factor);
        st = lsdi_optim_step(tr->opt);
        if (st == LSD_OK && tr->ema)
            st = lsdi_ema_step(tr->ema);
        if (st != LSD_OK)
            st = lsdi_error_prefix(st, "training step %d", step);
    }
    lsdt_zero_grad(tr->params, tr->n_params);
    if (st != LSD_OK)
        return st;
    tr->step = step;
    tr->micro = micro_after;
    return LSD_OK;
}

/* What follows a step that was applied: its metrics, the checkpoint and the validation when due. */
static lsd_status after_step(lsd_trainer *tr, double loss, int images)
{
    lsdi_metrics_step(tr, loss, images);
    if (tr->rank != 0) /* the ranks hold the same weights: rank 0 alone writes and validates */
        return LSD_OK;
    lsd_status st = LSD_OK;
    if (tr->output_dir && tr->p.checkpointing_steps > 0 && tr->step % tr->p.checkpointing_steps == 0)
        st = lsd_trainer_save_step_checkpoint(tr);
    if (st == LSD_OK)
        st = lsdi_trainer_epoch_save(tr);
    if (st == LSD_OK)
        st = lsdi_validation_after_step(tr);
    return st;
}

static lsd_status trainer_save_step_checkpoint(lsd_trainer *tr)
{
    if (!tr || !tr->output_dir)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_save_step_checkpoint: %s",
                          !tr ? "trainer is NULL" : "the trainer has no output_dir");
    size_t len = strlen(tr->output_dir) + 32;
    char *dir = malloc(len);
    if (!dir)
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "checkpoint path");
    snprintf(dir, len, "%s/checkpoint-%d", tr->output_dir, tr->step);
    /* Pruned first, as diffusers does, so the disk never holds more than the limit. */
    lsd_status st = tr->p.checkpoints_total_limit > 0
                        ? lsdi_checkpoint_prune(tr->output_dir, tr->p.checkpoints_total_limit, tr->step)
                        : LSD_OK;
    if (st == LSD_OK)
        st = lsd_trainer_save_checkpoint(tr, dir);
    free(dir);
    if (st == LSD_OK)
        report(tr, LSD_STAGE_CHECKPOINT, tr->step); /* the step is done: nothing left to cancel */
    return st;
}

lsd_status lsd_trainer_save_step_checkpoint(lsd_trainer *tr)
{
    return lsdi_trainer_record(tr, trainer_save_step_checkpoint(tr));
}

static lsd_status trainer_step_batch(lsd_trainer *tr, const lsd_train_batch *batch, float *loss_out)
{
    if (!tr || !batch)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_step_batch: %s is NULL", !tr ? "trainer" : "batch");
    LSDI_TRY(lsdi_trainer_check_live(tr, "lsd_trainer_step_batch"));
    lsd_train_batch b = {0};
    LSDI_TRY(lsdi_struct_read(LSD_STRUCT_TRAIN_BATCH, batch, &b, "lsd_trainer_step_batch"));
    double loss = 0;
    int images = b.batch;
    tr->step_t0 = lsdi_model_clock();
    /* In a group, each rank's batch is its share of one batch of world x batch items (DDP's mean over ranks). */
    int pick[MAX_BATCH], W = tr->world;
    for (int i = 0; tr->dist && i < b.batch && i < MAX_BATCH; i++)
        pick[i] = tr->rank * b.batch + i;
    lsd_status st = tr->dist && b.batch * W > MAX_BATCH
                        ? lsdi_error(LSD_ERR_INVALID_ARGUMENT, "training batch: batch %d x world size %d > %d",
                                     b.batch, W, MAX_BATCH)
                        : run_batch(tr, &b, tr->dist ? pick : NULL, b.batch * W,
                                    lsdi_train_seed(tr->p.seed, (uint64_t)tr->step, 0xBA7C), 1.0 / W, 1, &loss);
    if (tr->dist)
        loss /= W;
    st = apply_step(tr, st, tr->micro, &loss, &images);
    if (st != LSD_OK)
        return st;
    if (loss_out)
        *loss_out = (float)loss;
    return after_step(tr, loss, images);
}

lsd_status lsd_trainer_step_batch(lsd_trainer *tr, const lsd_train_batch *batch, float *loss_out)
{
    return lsdi_trainer_record(tr, trainer_step_batch(tr, batch, loss_out));
}

/* This rank's share of a group's batch of n refs (DistributedSampler's: disjoint, as even as the batch allows):
 * the positions in pick, their count returned. With prior preservation the instance half and the class half are
 * shared alike, so every rank keeps instance-class pairs. */
static int share(const lsd_trainer *tr, int n, int *pick)
{
    int pair = lsdi_loader_capacity(tr) == 2 * tr->p.train_batch_size * tr->world; /* prior preservation */
    int k = pair ? n / 2 : n, W = tr->world, r = tr->rank;
    int lo = (int)((long)k * r / W), hi = (int)((long)k * (r + 1) / W), c = 0;
    for (int half = 0; half < (pair ? 2 : 1); half++)
        for (int i = lo; i < hi; i++)
            pick[c++] = half * k + i;
    return c;
}

/* One micro-batch from the loader: the refs' latents (lsdi_batch_latents: cached or encoded one image at a time,
 * the posterior sample drawn from a generator of its own), their captions' embeddings while the text encoder is
 * frozen (one caption at a time, cached or not, so the caches change no bit; a trained text encoder gets the
 * captions in run_batch) and class flags, then forward + backward. In a group the loader gives the group's batch,
 * this rank computes its share, weighted by the share's size so that the ranks' gradients sum to the batch's.
 * *loss is the share's loss in that weight. */
static lsd_status run_micro(lsd_trainer *tr, uint64_t micro, lsdi_sample_ref *refs, int capacity, uint64_t gen_seed,
                            double loss_scale, double *loss, int *images_out)
{
    int total = 0, n, pick[2 * MAX_BATCH];
    LSDI_TRY(lsdi_loader_next(tr, micro, refs, capacity, &total));
    lsdi_sample_ref *all = refs;
    n = total;
    if (tr->dist) {
        n = share(tr, total, pick);
        refs += capacity; /* the second half of the caller's room holds the share (captions still owned by all) */
        for (int i = 0; i < n; i++)
            refs[i] = all[pick[i]];
        if (!n) { /* a short last batch of a bucket: this rank sends zeros */
            lsdi_sample_refs_release(all, total);
            *loss = 0;
            return LSD_OK;
        }
        loss_scale *= (double)n / total;
    }
    const lsd_model *m = tr->model;
    int f = lsdi_vae_scale_factor(m->vae), w = refs[0].width / f, h = refs[0].height / f;
    int n_ctx = m->text->cfg.max_positions, frozen_te = tr->n_params_net[1] == 0;
    size_t per = (size_t)m->vae->cfg.latent_channels * w * h, pc = (size_t)n_ctx * m->unet->cfg.cross_attention_dim;
    float *lat = malloc((size_t)n * per * sizeof *lat);
    float *ctx = frozen_te ? malloc((size_t)n * pc * sizeof *ctx) : NULL;
    const char **caps = malloc((size_t)n * sizeof *caps);
    int *is_class = malloc((size_t)n * sizeof *is_class);
    lsdt_generator *g = lsdt_generator_new(lsdi_train_seed(gen_seed, 0x1A7E, 0));
    lsd_status st = lat && caps && is_class && g && (ctx || !frozen_te)
                        ? LSD_OK
                        : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "batch of %d at %dx%d", n, refs[0].width, refs[0].height);
    for (int i = 0; st == LSD_OK && i < n; i++) {
        caps[i] = refs[i].caption;
        is_class[i] = refs[i].is_class;
    }
    if (st == LSD_OK)
        st = lsdi_batch_latents(tr, refs, n, tr->dist ? pick : NULL, total, g, lat);
    if (st == LSD_OK && ctx)
        st = lsdi_text_context(tr->text_cache, tr->model, caps, n, ctx);
    lsd_train_batch b = {sizeof b, n, h, w, NULL, lat, ctx ? NULL : caps, ctx, n_ctx, NULL, NULL, is_class};
    if (st == LSD_OK)
        st = run_batch(tr, &b, tr->dist ? pick : NULL, total, gen_seed, loss_scale, 1, loss);
    if (st == LSD_OK && tr->dist)
        *loss *= (double)n / total;
    *images_out += n;
    lsdt_generator_free(g);
    lsdi_sample_refs_release(all, total);
    free(lat);
    free(ctx);
    free(caps);
    free(is_class);
    return st;
}

static lsd_status trainer_step(lsd_trainer *tr, float *loss_out)
{
    if (!tr)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_step: trainer is NULL");
    LSDI_TRY(lsdi_trainer_check_live(tr, "lsd_trainer_step"));
    if (!tr->dataset)
        return lsdi_error(LSD_ERR_INVALID_ARGUMENT, "lsd_trainer_step: the trainer has no dataset "
                                                    "(use lsd_trainer_step_batch)");
    int A = tr->p.gradient_accumulation_steps, capacity = lsdi_loader_capacity(tr);
    lsdi_sample_ref *refs = calloc(2 * (size_t)capacity, sizeof *refs); /* the batch, and this rank's share */
    lsd_status st = refs ? LSD_OK : lsdi_error(LSD_ERR_OUT_OF_MEMORY, "batch of %d", capacity);
    double total = 0;
    int images = 0;
    uint64_t micro = tr->micro;
    tr->step_t0 = lsdi_model_clock();
    for (int a = 0; a < A && st == LSD_OK; a++, micro++) {
        double loss = 0;
        st = run_micro(tr, micro, refs, capacity, lsdi_train_seed(tr->p.seed, (uint64_t)tr->step, (uint64_t)a),
                       1.0 / A, &loss, &images);
        total += loss / A;
    }
    free(refs);
    st = apply_step(tr, st, micro, &total, &images);
    if (st != LSD_OK)
        return st;
    if (loss_out)
        *loss_out = (float)total;
    return after_step(tr, total, images);
}

lsd_status lsd_trainer_step(lsd_trainer *tr, float *loss_out)
{
    return lsdi_trainer_record(tr, trainer_step(tr, loss_out));
}
