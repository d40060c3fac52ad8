/* kohya's training metadata: the ss_* keys of sd-scripts' train_network.py (its `metadata` dict, every value
 * str()'d, JSON where kohya json.dumps), for the adapter a trainer trains. Values follow Python's str(): "True",
 * "None", repr of floats. A setting kohya leaves at None by default and we hold as 0 (noise_offset, min_snr_gamma,
 * unet_lr, text_encoder_lr) is written "None" when 0; features this library does not have are written as kohya
 * writes them when they are off. The network keys (ss_network_module/dim/alpha/args) and the base model's
 * (ss_sd_model_name/hash, ss_new_sd_model_hash) come with the kohya format itself (lib/lora/save.c). */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "core/pyfmt.h"
#include "model/model.h"
#include "train/train.h"

void lsdi_kv_free(lsdi_kv *kv)
{
    for (size_t i = 0; i < kv->n; i++) {
        free(kv->keys[i]);
        free(kv->values[i]);
    }
    free(kv->keys);
    free(kv->values);
    memset(kv, 0, sizeof *kv);
}

lsd_status lsdi_kv_add(lsdi_kv *kv, const char *key, const char *fmt, ...)
{
    if (kv->n == kv->cap) {
        size_t cap = kv->cap ? 2 * kv->cap : 64;
        char **k = realloc(kv->keys, cap * sizeof *k);
        if (k)
            kv->keys = k;
        char **v = k ? realloc(kv->values, cap * sizeof *v) : NULL;
        if (!v)
            return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "metadata %s", key);
        kv->values = v;
        kv->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    char *value = NULL;
    int len = vasprintf(&value, fmt, ap);
    va_end(ap);
    char *k = strdup(key);
    if (len < 0 || !k) {
        free(k);
        free(len < 0 ? NULL : value);
        return lsdi_error(LSD_ERR_OUT_OF_MEMORY, "metadata %s", key);
    }
    kv->keys[kv->n] = k;
    kv->values[kv->n++] = value;
    return LSD_OK;
}

double lsdi_unix_time(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Python's str() of a float; of a float32 field when f32. */
typedef struct pyf {
    char s[40];
} pyf;
static pyf F(double v, int f32)
{
    pyf r;
    lsdi_py_float(v, f32, r.s, sizeof r.s);
    return r;
}

/* str(x) of a setting kohya leaves at None, which we hold as 0 when unset. */
static pyf F_or_none(double v, int f32)
{
    pyf r;
    if (v == 0)
        snprintf(r.s, sizeof r.s, "None");
    else
        lsdi_py_float(v, f32, r.s, sizeof r.s);
    return r;
}

/* kohya's ss_optimizer: the Python class of the reference implementation, then "(key=value,...)" of its arguments. */
static lsd_status optimizer_key(const lsd_train_params *p, lsdi_kv *kv)
{
    static const char *const cls[] = {"torch.optim.adamw.AdamW", "lion_pytorch.lion_pytorch.Lion",
                                      "prodigyopt.prodigy.Prodigy", "transformers.optimization.Adafactor",
                                      "torch.optim.sgd.SGD"};
    const char *name = (unsigned)p->optimizer < sizeof cls / sizeof cls[0] ? cls[p->optimizer] : "unknown";
    if (p->optimizer == LSD_OPTIM_ADAMW && !(p->optimizer_args && *p->optimizer_args))
        return lsdi_kv_add(kv, "ss_optimizer", "%s(weight_decay=%s,betas=(%s, %s),eps=%s)", name,
                           F(p->adam_weight_decay, 0).s, F(p->adam_beta1, 0).s, F(p->adam_beta2, 0).s,
                           F(p->adam_epsilon, 0).s);
    if (!(p->optimizer_args && *p->optimizer_args))
        return lsdi_kv_add(kv, "ss_optimizer", "%s", name);
    char args[1024];
    snprintf(args, sizeof args, "%s", p->optimizer_args);
    for (char *c = args; *c; c++)
        if (*c == ' ')
            *c = ',';
    return lsdi_kv_add(kv, "ss_optimizer", "%s(%s)", name, args);
}

#define ADD(key, ...)                                          \
    do {                                                       \
        if (st == LSD_OK)                                      \
            st = lsdi_kv_add(kv, key, __VA_ARGS__);            \
    } while (0)

lsd_status lsdi_train_metadata(const lsd_trainer *tr, lsdi_kv *kv)
{
    const lsd_train_params *p = &tr->p;
    static const char *const precision[] = {"no", "fp16", "bf16"};
    lsd_status st = LSD_OK;
    int spe = tr->steps_per_epoch;
    ADD("ss_session_id", "%" PRIu32, tr->session_id);
    ADD("ss_training_started_at", "%s", F(tr->started_at, 0).s);
    ADD("ss_output_name", "%s", p->output_name ? p->output_name : "None");
    ADD("ss_learning_rate", "%s", F(p->learning_rate, 0).s);
    ADD("ss_text_encoder_lr", "%s", F_or_none(p->text_encoder_lr, 0).s);
    ADD("ss_unet_lr", "%s", F_or_none(p->unet_lr, 0).s);
    ADD("ss_gradient_checkpointing", "%s", lsdi_py_bool(p->gradient_checkpointing));
    ADD("ss_gradient_accumulation_steps", "%d", p->gradient_accumulation_steps);
    ADD("ss_max_train_steps", "%d", p->max_train_steps);
    ADD("ss_lr_warmup_steps", "%d", p->lr_warmup_steps);
    ADD("ss_lr_scheduler", "%s", lsd_lr_scheduler_name(p->lr_scheduler));
    ADD("ss_network_dropout", "None");
    ADD("ss_mixed_precision", "%s", (unsigned)p->mixed_precision < 3 ? precision[p->mixed_precision] : "no");
    ADD("ss_full_fp16", "False");
    ADD("ss_clip_skip", "%d", tr->model->clip_skip);
    ADD("ss_max_token_length", "None");
    ADD("ss_cache_latents", "%s", lsdi_py_bool(p->cache_latents || p->cache_latents_to_disk));
    ADD("ss_seed", "%" PRIu64, p->seed);
    ADD("ss_lowram", "False");
    ADD("ss_noise_offset", "%s", F_or_none(p->noise_offset, 1).s);
    ADD("ss_multires_noise_iterations", "None");
    ADD("ss_multires_noise_discount", "0.3");
    ADD("ss_adaptive_noise_scale", "None");
    ADD("ss_zero_terminal_snr", "False");
    ADD("ss_training_comment", "%s", p->training_comment ? p->training_comment : "None");
    ADD("ss_sd_scripts_commit_hash", "liblora_sd %s", lsd_version_string());
    if (st == LSD_OK)
        st = optimizer_key(p, kv);
    ADD("ss_max_grad_norm", "%s", F(p->max_grad_norm > 0 ? p->max_grad_norm : 0, 1).s);
    ADD("ss_prior_loss_weight", "%s", F(p->prior_loss_weight, 1).s);
    ADD("ss_min_snr_gamma", "%s", F_or_none(p->snr_gamma, 1).s);
    ADD("ss_scale_weight_norms", "None");
    ADD("ss_ip_noise_gamma", "None");
    ADD("ss_debiased_estimation", "False");
    ADD("ss_loss_type", "l2");
    ADD("ss_fp8_base", "False");
    ADD("ss_validation_seed", "%" PRIu64, p->validation_seed);
    ADD("ss_validation_split", "%s", F(p->validation_split, 1).s);
    ADD("ss_batch_size_per_device", "%d", p->train_batch_size);
    ADD("ss_total_batch_size", "%d", p->train_batch_size * p->gradient_accumulation_steps * tr->world);
    ADD("ss_resolution", "(%d, %d)", p->resolution, p->resolution);
    ADD("ss_color_aug", "False");
    ADD("ss_flip_aug", "%s", lsdi_py_bool(p->random_flip));
    ADD("ss_random_crop", "%s", lsdi_py_bool(!p->center_crop));
    if (st == LSD_OK && tr->dataset)
        st = lsdi_dataset_metadata(tr, kv);
    if (spe > 0) {
        ADD("ss_num_epochs", "%d", (p->max_train_steps + spe - 1) / spe);
        ADD("ss_epoch", "%d", (tr->step + spe - 1) / spe);
    }
    ADD("ss_steps", "%d", tr->step);
    ADD("ss_training_finished_at", "%s", F(lsdi_unix_time(), 0).s);
    if (st != LSD_OK)
        lsdi_kv_free(kv);
    return st;
}
