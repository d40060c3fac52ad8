/* lora-sd train: LoRA fine-tuning with the flags of diffusers' train_text_to_image_lora.py. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "lora_sd.h"
#include "train_log.h"

#define CMD "train"
#define MAX_PROMPTS 256

static const char usage[] =
    "usage: lora-sd train --pretrained_model_name_or_path M --train_data_dir D [options]\n"
    "       lora-sd train --pretrained_model_name_or_path M --instance_data_dir D --instance_prompt P [options]\n"
    "\n"
    "Trains a LoRA (by default on the UNet's attention: to_q, to_k, to_v, to_out.0) from a folder of captioned\n"
    "images (captions beside the images, metadata.jsonl, Images/ + ImageCaptions/, kohya's N_name/ folders, or\n"
    "DreamBooth's instance images) as diffusers' train_text_to_image_lora.py does, with kohya sd-scripts' network\n"
    "flags. Every caption and image is checked, and output_dir created, before the model is loaded.\n"
    "\n"
    "  --pretrained_model_name_or_path M   diffusers folder, single file or cached hub id (required; alias --model)\n"
    "  --train_data_dir D                  the images and captions (required)\n"
    "  --output_dir O                      default sd-model-finetuned-lora; gets pytorch_lora_weights.safetensors\n"
    "                                      and checkpoint-<step>/ directories\n"
    "  --resolution N                      default 512\n"
    "  --center_crop, --random_flip        default random crop, no flip\n"
    "  --train_batch_size N                default 16\n"
    "  --max_train_steps N                 default 1000\n"
    "  --gradient_accumulation_steps N     default 1\n"
    "  --gradient_checkpointing            recompute each UNet block in backward: less memory, ~30 % slower\n"
    "  --learning_rate LR                  default 1e-4\n"
    "  --lr_scheduler NAME                 constant (default), constant_with_warmup, linear, cosine,\n"
    "                                      cosine_with_restarts, polynomial\n"
    "  --lr_warmup_steps N                 default 500\n"
    "  --lr_num_cycles N, --lr_power P     cosine_with_restarts cycles (1), polynomial power (1.0)\n"
    "  --snr_gamma G                       min-SNR loss weighting (5.0 recommended); default off\n"
    "  --noise_offset F                    default 0\n"
    "  --prediction_type T                 epsilon or v_prediction; default: the model's scheduler config\n"
    "  --max_grad_norm F                   default 1.0; 0 disables clipping\n"
    "  --optimizer NAME                    adamw (default), lion, prodigy, adafactor, sgd, or kohya's SGDNesterov\n"
    "                                      (sgd, nesterov=True, momentum 0.9 unless given); --optimizer_type too\n"
    "  --optimizer_args K=V [K=V ...]      kohya's: e.g. weight_decay=0.01 betas=0.9,0.99 (docs/train.md lists\n"
    "                                      each optimizer's keys and defaults)\n"
    "  --adam_beta1 B, --adam_beta2 B      AdamW: default 0.9, 0.999\n"
    "  --adam_weight_decay W               AdamW: default 1e-2\n"
    "  --adam_epsilon E                    AdamW: default 1e-08\n"
    "  --use_ema                           keep an EMA of the LoRA weights (diffusers' EMAModel): validation\n"
    "                                      uses it, the final file holds it, the raw weights go to\n"
    "                                      <output_name>_raw.safetensors\n"
    "  --ema_decay F                       default 0.9999\n"
    "  --ema_warmup                        decay 1 - (1 + step / ema_inv_gamma)^-ema_power instead of\n"
    "                                      (1 + step) / (10 + step)\n"
    "  --ema_inv_gamma F, --ema_power F    default 1.0, 2/3\n"
    "  --rank R, --network_dim R           LoRA rank, default 4\n"
    "  --network_alpha A                   default: the rank (scale alpha / rank = 1)\n"
    "  --lora_targets LIST                 modules that get a LoRA, of attn, ff, proj, conv (LoCon), te_attn, te_mlp;\n"
    "                                      default attn (+ te_attn,te_mlp with --train_text_encoder, + conv with\n"
    "                                      --conv_dim)\n"
    "  --conv_dim R, --conv_alpha A        rank and alpha of the conv (LoCon) modules; default rank, conv_dim\n"
    "  --network_args K=V ...              kohya's form of conv_dim=R and conv_alpha=A\n"
    "  --train_text_encoder                also train the text encoder's LoRA (with gradients through it)\n"
    "  --network_train_unet_only           train only the UNet's LoRA (the default)\n"
    "  --network_train_text_encoder_only   train only the text encoder's LoRA\n"
    "  --unet_lr LR, --text_encoder_lr LR  each network's LR (kohya); default --learning_rate\n"
    "  --num_train_epochs N                train N epochs (overrides --max_train_steps)\n"
    "  --save_every_n_epochs N             also save <output_name>-<epoch, 6 digits>.safetensors every N epochs\n"
    "  --output_name NAME                  file name of the LoRA in output_dir, default pytorch_lora_weights\n"
    "  --save_precision float|fp16|bf16    dtype of the saved LoRA tensors, default float\n"
    "  --training_comment TEXT             stored as ss_training_comment in the file's metadata\n"
    "  --seed S                            default 0\n"
    "  --mixed_precision no|fp16|bf16      default no; bf16 where the CPU has AVX512-BF16/AMX or on CUDA, fp16 on\n"
    "                                      CUDA; elsewhere a warning and fp32. The LoRA weights stay fp32\n"
    "  --device DEV                        cpu (default), cuda, cuda:N\n"
    "  --dtype T                           dtype the model is loaded in: f32, f16, bf16 (default: that of\n"
    "                                      --mixed_precision)\n"
    "  --checkpointing_steps N             default 500\n"
    "  --checkpoints_total_limit N         default: keep all\n"
    "  --resume_from_checkpoint latest|DIR continue a run from output_dir's latest checkpoint or from DIR\n"
    "  --save_format kohya|peft|diffusers  format of the final LoRA file (default kohya)\n"
    "\n"
    "Data (docs/train.md \"Data\"; the layout of --train_data_dir is detected):\n"
    "  --dataset_layout L                  auto (default), folder, seed, kohya or dreambooth\n"
    "  --caption_column NAME               metadata.jsonl key of the caption (default text)\n"
    "  --caption_extension EXT             caption files beside the images; default .caption, then .txt\n"
    "  --caption_data_dir D                Images/ + captions folder layout: the captions folder\n"
    "  --reg_data_dir D                    kohya: regularisation images in N_name/ folders\n"
    "  --instance_data_dir D               DreamBooth: the instance images (instead of --train_data_dir)\n"
    "  --instance_prompt P                 DreamBooth: the caption of every instance image\n"
    "  --allow_empty_captions              an image without a caption trains on \"\" instead of stopping the run\n"
    "  --shuffle_caption                   shuffle the caption's tags (split on --caption_separator) each draw\n"
    "  --keep_tokens N                     with --shuffle_caption, the first N tags stay in place (default 0)\n"
    "  --caption_separator S               default \", \"\n"
    "  --caption_dropout_rate P            train on an empty caption with probability P (default 0)\n"
    "  --enable_bucket                     kohya's aspect-ratio buckets instead of square crops\n"
    "  --min_bucket_reso N, --max_bucket_reso N   default 256, 1024\n"
    "  --bucket_reso_steps N               default 64\n"
    "  --bucket_no_upscale                 buckets from the images' own sizes, never enlarged\n"
    "\n"
    "DreamBooth prior preservation (diffusers' train_dreambooth_lora.py):\n"
    "  --with_prior_preservation           each batch pairs instance and class images; loss = instance MSE +\n"
    "                                      prior_loss_weight x class MSE\n"
    "  --class_data_dir D, --class_prompt P  the class images and their caption (both required with it)\n"
    "  --num_class_images N                default 100: missing class images are first sampled with the base\n"
    "                                      model (class_prompt, 50 steps) into class_data_dir and kept\n"
    "  --sample_batch_size N               images per sampling call, default 4\n"
    "  --prior_loss_weight W               default 1.0 (kohya reg images: the loss weight of each one)\n"
    "  --reg_data_dir D                    kohya: regularisation images in N_name/ folders (weighted by\n"
    "                                      prior_loss_weight; without --with_prior_preservation)\n"
    "\n"
    "Caches (kohya's flags; need --center_crop, --random_flip is fine):\n"
    "  --cache_latents                     each image's VAE posterior computed once and kept in memory (and the\n"
    "                                      captions' embeddings, the text encoder being frozen)\n"
    "  --cache_latents_to_disk             ... and kept in IMAGE.latents.safetensors files that later runs reuse\n"
    "                                      while the image, its size and crop and the VAE are unchanged\n"
    "  --cache_dir D                       put those files in D instead of beside the images\n"
    "\n"
    "Validation (docs/train.md \"Validation\"):\n"
    "  --validation_prompt P               sampled with the LoRA at each validation (repeatable); one grid PNG per\n"
    "                                      validation in output_dir/samples/step-<step>.png, a row per prompt\n"
    "  --num_validation_images N           images per prompt, default 4\n"
    "  --validation_steps N                validate every N steps and after the last one; default 100\n"
    "  --validation_seed S                 default: --seed\n"
    "  --validation_inference_steps N      default 30\n"
    "  --validation_guidance_scale G       default 7.5\n"
    "  --validation_sampler NAME           default pndm (see lora-sd help generate)\n"
    "  --validation_split F                hold this fraction of the images out of training for a validation loss\n"
    "  --validation_data_dir D             or held-out images and captions of their own\n"
    "\n"
    "Logs (docs/train.md \"Logs\"):\n"
    "  --logging_dir D                     under output_dir, default logs: metrics.jsonl (a JSON object per step and\n"
    "                                      validation) and TensorBoard event files; loss.png in output_dir at the end\n"
    "  --report_to tensorboard|none        default tensorboard (as diffusers)\n"
    "\n"
    "Several processes and machines (docs/train.md \"Several processes and machines\"): data parallel over\n"
    "libtorch's c10d, as torchrun + DistributedDataParallel; each worker trains on its share of every batch of\n"
    "world_size x train_batch_size images; rank 0 alone writes checkpoints, logs, samples and the LoRA.\n"
    "  --nproc_per_node N                  start N workers on this machine (torchrun's standalone mode); the\n"
    "                                      threads (--threads, default all cores) are shared out among them\n"
    "  --master_addr A, --master_port P    with --nproc_per_node: the rendezvous (default 127.0.0.1, a free port)\n"
    "  --dist_backend gloo|nccl            default gloo; nccl on CUDA builds made with NCCL=1\n"
    "  --dist_timeout S                    seconds a worker waits for the others (rendezvous, each step's gradient\n"
    "                                      sum) before it stops naming the rank at fault; default 300\n"
    "  --dist_init_file F                  rendezvous through file F on a shared file system instead of\n"
    "                                      MASTER_ADDR:MASTER_PORT (F must not exist yet)\n"
    "Run under torchrun, SLURM or by hand, a worker reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and\n"
    "MASTER_PORT from its environment; WORLD_SIZE unset or 1 is one process.\n"
    "\n"
    "SIGINT or SIGTERM stops after the current step, saves checkpoint-<step> and the LoRA, and exits 130 or 143;\n"
    "a second signal exits at once (every file is written to a temp name and renamed: none is ever torn).\n"
    "\n"
    "Exit status: 0 done, 1 failure, 2 usage error, 130/143 stopped by SIGINT/SIGTERM.\n";

enum {
    O_MODEL = 256, O_DATA, O_OUT, O_RES, O_CENTER, O_FLIP, O_BATCH, O_STEPS, O_ACCUM, O_GCKPT, O_LR, O_SCHED,
    O_WARMUP, O_CYCLES, O_POWER, O_SNR, O_OFFSET, O_PRED, O_CLIP, O_B1, O_B2, O_WD, O_EPS, O_RANK, O_SEED, O_MIXED,
    O_CKSTEPS, O_CKLIMIT, O_RESUME, O_CAPCOL, O_FORMAT, O_PRIOR, O_CLASS_DIR, O_CLASS_PROMPT, O_NUM_CLASS,
    O_SAMPLE_BATCH, O_PRIOR_W, O_TRAIN_TE, O_UNET_ONLY, O_TE_ONLY, O_TARGETS, O_NET_ALPHA, O_CONV_DIM, O_CONV_ALPHA,
    O_NET_ARGS, O_EPOCHS, O_SAVE_EPOCHS, O_OUT_NAME, O_SAVE_PREC, O_COMMENT, O_UNET_LR, O_TE_LR,
    O_CACHE, O_CACHE_DISK, O_CACHE_DIR, O_OPTIM, O_OPTIM_ARGS, O_EMA, O_EMA_DECAY, O_EMA_WARMUP, O_EMA_INV_GAMMA,
    O_EMA_POWER, O_LAYOUT, O_CAPEXT, O_CAPDIR, O_REG, O_INST_DIR, O_INST_PROMPT, O_EMPTY, O_SHUFFLE, O_KEEP, O_SEP,
    O_DROPOUT, O_BUCKET, O_MIN_B, O_MAX_B, O_STEPS_B, O_NO_UP, O_VAL_PROMPT, O_VAL_IMAGES, O_VAL_STEPS, O_VAL_SEED,
    O_VAL_INF_STEPS, O_VAL_GUIDANCE, O_VAL_SAMPLER, O_VAL_SPLIT, O_VAL_DATA, O_LOGDIR, O_REPORT, O_DEVICE, O_DTYPE,
    O_NPROC, O_MASTER_ADDR, O_MASTER_PORT, O_DIST_BACKEND, O_DIST_TIMEOUT, O_DIST_INIT, O_HELP
};

static const struct option opts[] = {
    {"pretrained_model_name_or_path", 1, 0, O_MODEL}, {"train_data_dir", 1, 0, O_DATA}, {"output_dir", 1, 0, O_OUT},
    {"resolution", 1, 0, O_RES}, {"center_crop", 0, 0, O_CENTER}, {"random_flip", 0, 0, O_FLIP},
    {"train_batch_size", 1, 0, O_BATCH}, {"max_train_steps", 1, 0, O_STEPS},
    {"gradient_accumulation_steps", 1, 0, O_ACCUM}, {"gradient_checkpointing", 0, 0, O_GCKPT},
    {"learning_rate", 1, 0, O_LR}, {"lr_scheduler", 1, 0, O_SCHED}, {"lr_warmup_steps", 1, 0, O_WARMUP},
    {"lr_num_cycles", 1, 0, O_CYCLES}, {"lr_power", 1, 0, O_POWER}, {"snr_gamma", 1, 0, O_SNR},
    {"noise_offset", 1, 0, O_OFFSET}, {"prediction_type", 1, 0, O_PRED}, {"max_grad_norm", 1, 0, O_CLIP},
    {"adam_beta1", 1, 0, O_B1}, {"adam_beta2", 1, 0, O_B2}, {"adam_weight_decay", 1, 0, O_WD},
    {"adam_epsilon", 1, 0, O_EPS}, {"rank", 1, 0, O_RANK}, {"seed", 1, 0, O_SEED}, {"mixed_precision", 1, 0, O_MIXED},
    {"checkpointing_steps", 1, 0, O_CKSTEPS}, {"checkpoints_total_limit", 1, 0, O_CKLIMIT},
    {"resume_from_checkpoint", 1, 0, O_RESUME}, {"caption_column", 1, 0, O_CAPCOL}, {"save_format", 1, 0, O_FORMAT},
    {"with_prior_preservation", 0, 0, O_PRIOR}, {"class_data_dir", 1, 0, O_CLASS_DIR},
    {"class_prompt", 1, 0, O_CLASS_PROMPT}, {"num_class_images", 1, 0, O_NUM_CLASS},
    {"sample_batch_size", 1, 0, O_SAMPLE_BATCH}, {"prior_loss_weight", 1, 0, O_PRIOR_W},
    {"train_text_encoder", 0, 0, O_TRAIN_TE}, {"network_train_unet_only", 0, 0, O_UNET_ONLY},
    {"network_train_text_encoder_only", 0, 0, O_TE_ONLY}, {"lora_targets", 1, 0, O_TARGETS},
    {"network_alpha", 1, 0, O_NET_ALPHA}, {"conv_dim", 1, 0, O_CONV_DIM}, {"conv_alpha", 1, 0, O_CONV_ALPHA},
    {"network_args", 1, 0, O_NET_ARGS},
    {"num_train_epochs", 1, 0, O_EPOCHS}, {"save_every_n_epochs", 1, 0, O_SAVE_EPOCHS},
    {"output_name", 1, 0, O_OUT_NAME}, {"save_precision", 1, 0, O_SAVE_PREC}, {"training_comment", 1, 0, O_COMMENT},
    {"unet_lr", 1, 0, O_UNET_LR}, {"text_encoder_lr", 1, 0, O_TE_LR},
    {"cache_latents", 0, 0, O_CACHE}, {"cache_latents_to_disk", 0, 0, O_CACHE_DISK}, {"cache_dir", 1, 0, O_CACHE_DIR},
    {"optimizer", 1, 0, O_OPTIM}, {"optimizer_args", 1, 0, O_OPTIM_ARGS}, {"use_ema", 0, 0, O_EMA},
    {"ema_decay", 1, 0, O_EMA_DECAY}, {"ema_warmup", 0, 0, O_EMA_WARMUP}, {"ema_inv_gamma", 1, 0, O_EMA_INV_GAMMA},
    {"ema_power", 1, 0, O_EMA_POWER}, {"dataset_layout", 1, 0, O_LAYOUT}, {"caption_extension", 1, 0, O_CAPEXT},
    {"caption_data_dir", 1, 0, O_CAPDIR}, {"reg_data_dir", 1, 0, O_REG}, {"instance_data_dir", 1, 0, O_INST_DIR},
    {"instance_prompt", 1, 0, O_INST_PROMPT}, {"allow_empty_captions", 0, 0, O_EMPTY},
    {"shuffle_caption", 0, 0, O_SHUFFLE}, {"keep_tokens", 1, 0, O_KEEP}, {"caption_separator", 1, 0, O_SEP},
    {"caption_dropout_rate", 1, 0, O_DROPOUT}, {"enable_bucket", 0, 0, O_BUCKET}, {"min_bucket_reso", 1, 0, O_MIN_B},
    {"max_bucket_reso", 1, 0, O_MAX_B}, {"bucket_reso_steps", 1, 0, O_STEPS_B}, {"bucket_no_upscale", 0, 0, O_NO_UP},
    {"validation_prompt", 1, 0, O_VAL_PROMPT}, {"num_validation_images", 1, 0, O_VAL_IMAGES},
    {"validation_steps", 1, 0, O_VAL_STEPS}, {"validation_seed", 1, 0, O_VAL_SEED},
    {"validation_inference_steps", 1, 0, O_VAL_INF_STEPS}, {"validation_guidance_scale", 1, 0, O_VAL_GUIDANCE},
    {"validation_sampler", 1, 0, O_VAL_SAMPLER}, {"validation_split", 1, 0, O_VAL_SPLIT},
    {"validation_data_dir", 1, 0, O_VAL_DATA}, {"logging_dir", 1, 0, O_LOGDIR}, {"report_to", 1, 0, O_REPORT},
    {"device", 1, 0, O_DEVICE}, {"dtype", 1, 0, O_DTYPE},
    {"nproc_per_node", 1, 0, O_NPROC}, {"master_addr", 1, 0, O_MASTER_ADDR}, {"master_port", 1, 0, O_MASTER_PORT},
    {"dist_backend", 1, 0, O_DIST_BACKEND}, {"dist_timeout", 1, 0, O_DIST_TIMEOUT}, {"dist_init_file", 1, 0, O_DIST_INIT},
    {"help", 0, 0, O_HELP},
    /* aliases after O_HELP's entry, so that opts[c - O_MODEL] is each code's first spelling */
    {"model", 1, 0, O_MODEL}, {"network_dim", 1, 0, O_RANK}, {"optimizer_type", 1, 0, O_OPTIM}, {0, 0, 0, 0}};

static int g_rank = -1; /* this worker's rank in a group of several, for its messages */

static int fail(const char *what)
{
    if (g_rank >= 0)
        fprintf(stderr, "[rank %d] ", g_rank);
    lsd_cli_fail(CMD, what);
    return 1;
}

static int parse_int(const char *opt, const char *v, int lo, int *out)
{
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > 1000000000)
        return lsd_cli_usage_error(CMD, "--%s expects an integer >= %d, got '%s'", opt, lo, v);
    *out = (int)x;
    return 0;
}

static int parse_num(const char *opt, const char *v, double *out)
{
    char *end = NULL;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x) || x < 0)
        return lsd_cli_usage_error(CMD, "--%s expects a number >= 0, got '%s'", opt, v);
    *out = x;
    return 0;
}

/* kohya's --network_args: "key=value" words (several per argument allowed); conv_dim and conv_alpha are known. */
static int parse_network_arg(const char *arg, lsd_train_params *tp)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", arg);
    for (char *save = NULL, *w = strtok_r(buf, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
        char *eq = strchr(w, '=');
        if (!eq)
            return lsd_cli_usage_error(CMD, "--network_args expects key=value, got '%s'", w);
        *eq = '\0';
        double d;
        if (!strcmp(w, "conv_dim")) {
            if (parse_int("network_args conv_dim", eq + 1, 1, &tp->conv_dim))
                return 2;
        } else if (!strcmp(w, "conv_alpha")) {
            if (parse_num("network_args conv_alpha", eq + 1, &d))
                return 2;
            tp->conv_alpha = (float)d;
        } else {
            return lsd_cli_usage_error(CMD, "--network_args: unsupported key '%s' (conv_dim and conv_alpha are "
                                       "supported)", w);
        }
    }
    return 0;
}

/* output_dir's checkpoint-<n> with the largest n, or "" if none. */
static void latest_checkpoint(const char *out_dir, char *buf, size_t n)
{
    buf[0] = '\0';
    DIR *d = opendir(out_dir);
    long best = -1;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        char *end = NULL;
        if (strncmp(e->d_name, "checkpoint-", 11) || !e->d_name[11])
            continue;
        long k = strtol(e->d_name + 11, &end, 10);
        if (!*end && k > best)
            best = k;
    }
    if (d)
        closedir(d);
    if (best >= 0)
        snprintf(buf, n, "%s/checkpoint-%ld", out_dir, best);
}

static int parse_seed(const char *opt, const char *v, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long s = strtoull(v, &end, 10);
    if (!*v || *end || errno || v[0] == '-')
        return lsd_cli_usage_error(CMD, "--%s expects a non-negative integer, got '%s'", opt, v);
    *out = s;
    return 0;
}

/* What the training reports goes to the logs (docs/train.md "Logs"). */
typedef struct progress_state {
    int quiet;     /* a worker other than rank 0: rank 0 reports for the group */
    int group;     /* in a group: a stop is agreed at the step's gradient sum */
    int tty;
    progress_line line;
    jsonl_log *jsonl;
    tb_writer *tb;
} progress_state;

static void on_metrics(const lsd_train_metrics *m, void *user)
{
    progress_state *ps = user;
    if (ps->quiet)
        return;
    jsonl_write(ps->jsonl, m);
    tb_write(ps->tb, m);
    progress_metrics(&ps->line, m);
}

/* After a stop was asked for, whatever can be cancelled is (a validation, class images, caching); the step under
 * way is finished: its gradients are already computed. */
static int on_progress(const lsd_progress *p, void *user)
{
    progress_state *ps = user;
    if (stop_requested() && p->stage != LSD_STAGE_TRAIN_STEP && p->stage != LSD_STAGE_CHECKPOINT)
        return 1;
    /* In a group the step under way is dropped on every rank, so that all stop at the same step. */
    if (ps->group && p->stage == LSD_STAGE_TRAIN_STEP)
        return stop_requested() != 0;
    if (ps->quiet)
        return 0;
    if (p->stage == LSD_STAGE_CHECKPOINT) {
        progress_break(&ps->line);
        fprintf(ps->line.out, "saved checkpoint-%d\n", p->step);
    }
    else if (p->stage == LSD_STAGE_CLASS_IMAGES && ps->tty)
        fprintf(stderr, "\rclass images %d/%d (%.0f s)%s", p->step, p->total, p->elapsed_seconds,
                p->step == p->total ? "\n" : "");
    else if (p->stage == LSD_STAGE_CLASS_IMAGES)
        printf("class images %d/%d (%.0f s)\n", p->step, p->total, p->elapsed_seconds);
    else if (p->stage == LSD_STAGE_CHECK && (ps->tty || p->step == p->total))
        fprintf(ps->tty ? stderr : stdout, "%schecked %d/%d images (%.1f s)%s", ps->tty ? "\r" : "", p->step,
                p->total, p->elapsed_seconds, !ps->tty || p->step == p->total ? "\n" : "");
    return 0;
}

/* Opens and decodes the whole dataset, so a bad file stops the run before the model is loaded. */
static int open_checked(const char *dir, lsd_dataset_params *dp, progress_state *ps, lsd_dataset **ds)
{
    dp->progress = on_progress;
    dp->progress_user = ps;
    if (lsd_dataset_open(dir, dp, ds) != LSD_OK)
        return fail(dir);
    if (lsd_dataset_verify(*ds, NULL) != LSD_OK) {
        if (ps->tty)
            fputc('\n', stderr);
        lsd_dataset_free(*ds);
        *ds = NULL;
        return fail(dir);
    }
    return 0;
}

/* What the run will draw: images per folder, repeats, class images, buckets, steps per epoch. */
static int print_summary(const lsd_dataset *ds, const lsd_train_params *tp)
{
    lsd_dataset_info info = {.struct_size = sizeof info};
    int steps = 0;
    if (lsd_dataset_get_info(ds, &info) != LSD_OK || lsd_dataset_steps_per_epoch(ds, tp, &steps) != LSD_OK)
        return fail("dataset");
    printf("%s layout: %zu images (%zu draws an epoch), %zu class images (%zu draws)\n",
           lsd_dataset_layout_name(info.layout), info.images, info.draws, info.class_images, info.class_draws);
    for (int i = 0; i < info.folders; i++) {
        lsd_dataset_folder f = {.struct_size = sizeof f};
        if (lsd_dataset_folder_info(ds, i, &f) != LSD_OK)
            return fail("dataset");
        printf("  %s%s: %zu images x %d repeats%s%s%s\n", f.is_class ? "class " : "", f.path, f.images, f.repeats,
               f.caption ? ", caption \"" : "", f.caption ? f.caption : "", f.caption ? "\"" : "");
    }
    printf("  buckets:");
    for (int b = 0; b < info.buckets; b++) {
        int w = 0, h = 0;
        size_t n = 0;
        lsd_dataset_bucket_info(ds, b, &w, &h, &n);
        printf(" %dx%d: %zu%s", w, h, n, b + 1 < info.buckets ? "," : "\n");
    }
    printf("  %d steps an epoch (batch %d%s, %d accumulation)\n", steps, tp->train_batch_size,
           tp->dist ? " x the group's workers" : "", tp->gradient_accumulation_steps);
    return 0;
}

/* DreamBooth: class_data_dir topped up with images of the base model before the dataset lists it. */
/* Images (.png .jpg .jpeg .webp) directly in dir; 0 when it cannot be read. */
static int count_images(const char *dir)
{
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".webp"};
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)) != NULL) {
        const char *dot = strrchr(e->d_name, '.');
        for (size_t i = 0; dot && i < sizeof ext / sizeof ext[0]; i++)
            n += !strcasecmp(dot, ext[i]);
    }
    if (d)
        closedir(d);
    return n;
}

static int class_images(lsd_model *m, lsd_class_images_params *cp, progress_state *ps)
{
    /* Workers do not sample: N of them would sample the same images N times, and the others would wait for them
     * longer than any timeout. */
    if (ps->group) {
        int have = count_images(cp->class_data_dir);
        if (have >= cp->num_class_images)
            return 0;
        fprintf(stderr, "[rank %d] lora-sd train: %s holds %d of the %d class images; in a group of processes the "
                "workers do not sample them: run once with one process first (it samples them, then trains: "
                "--max_train_steps 1 will do) or lower --num_class_images\n", g_rank, cp->class_data_dir, have,
                cp->num_class_images);
        return 1;
    }
    cp->progress = on_progress;
    cp->progress_user = ps;
    int made = 0;
    lsd_status st = lsd_generate_class_images(m, cp, &made);
    if (ps->tty && st != LSD_OK)
        fputc('\n', stderr);
    if (st != LSD_OK)
        return fail(cp->class_data_dir);
    if (made)
        printf("%d class images sampled into %s\n", made, cp->class_data_dir);
    return 0;
}

/* output_dir/<output_name><suffix>.safetensors */
static int save_lora(lsd_trainer *tr, const lsd_train_params *tp, const char *suffix, lsd_lora_format fmt)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%s.safetensors", tp->output_dir,
             tp->output_name ? tp->output_name : "pytorch_lora_weights", suffix);
    if (lsd_trainer_save_lora(tr, path, fmt) != LSD_OK)
        return fail(path);
    printf("saved %s (%s, %s)\n", path, lsd_lora_format_name(fmt), lsd_dtype_name(tp->save_precision));
    return 0;
}

/* What the CLI adds to the library's options: the logs and the validation data folder. */
typedef struct cli_opts {
    const char *logging_dir; /* under output_dir */
    int tensorboard;
    const char *validation_data_dir;
    const char *const *prompts; /* --validation_prompt, in order */
    int n_prompts;
    lsd_dist_params dist;       /* the group this worker joins (torchrun's environment) */
} cli_opts;

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* metrics.jsonl (continuing the checkpoint's history) and the TensorBoard file, in output_dir/logging_dir. */
static int open_logs(const lsd_train_params *tp, const cli_opts *o, int start_step, progress_state *ps)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/%s", tp->output_dir, o->logging_dir);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "lora-sd train: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (jsonl_open(path, start_step, &ps->jsonl) != 0) {
        fprintf(stderr, "lora-sd train: %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (o->tensorboard && tb_open(dir, start_step, &ps->tb) != 0) {
        fprintf(stderr, "lora-sd train: TensorBoard event file in %s: %s\n", dir, strerror(errno));
        return 1;
    }
    return 0;
}

/* output_dir/loss.png from the whole metrics.jsonl; a failure only warns: the training itself is done. */
static void plot(const lsd_train_params *tp, const cli_opts *o)
{
    char path[4200], png[4200];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", tp->output_dir, o->logging_dir);
    snprintf(png, sizeof png, "%s/loss.png", tp->output_dir);
    loss_series ls;
    if (jsonl_read_losses(path, &ls) != 0 || plot_losses(&ls, png) != 0)
        fprintf(stderr, "lora-sd train: warning: could not draw %s: %s\n", png, lsd_last_error());
    else
        printf("plotted %s\n", png);
    loss_series_free(&ls);
}

/* After a stop: checkpoint-<step> (unless the schedule just saved it), then the LoRA as at the end of a run. */
static int save_stopped(lsd_trainer *tr, const lsd_train_params *tp)
{
    char ck[4200];
    snprintf(ck, sizeof ck, "%s/checkpoint-%d", tp->output_dir, lsd_trainer_get_step(tr));
    if (!exists(ck) && lsd_trainer_save_step_checkpoint(tr) != LSD_OK)
        return fail(ck);
    return 0;
}

/* cp: the class images to make first (DreamBooth prior preservation), or NULL. */
static int train(const char *model_path, const lsd_model_params *mp, const char *data_dir, lsd_dataset_params *dp,
                 lsd_train_params *tp, lsd_class_images_params *cp, const char *resume, lsd_lora_format fmt,
                 const cli_opts *o)
{
    lsd_model *m = NULL;
    lsd_adapter_set *set = NULL;
    lsd_dataset *ds = NULL, *val = NULL;
    lsd_trainer *tr = NULL;
    progress_state ps;
    memset(&ps, 0, sizeof ps);
    /* A worker of a group joins it first, so that a rendezvous that cannot form says so before any long work. */
    lsd_dist *dist = NULL;
    if (o->dist.world_size > 1) {
        g_rank = o->dist.rank;
        if (lsd_dist_new(&o->dist, &dist) != LSD_OK)
            return fail("group");
        tp->dist = dist;
    }
    int rank0 = lsd_dist_rank(dist) == 0;
    ps.quiet = !rank0;
    ps.group = dist != NULL;
    ps.tty = rank0 && isatty(STDERR_FILENO);
    progress_init(&ps.line, ps.tty, 0, tp->max_train_steps);
    setvbuf(stdout, NULL, _IOLBF, 0);
    stop_install();
    tp->progress = on_progress;
    tp->progress_user = &ps;
    tp->metrics = on_metrics;
    tp->metrics_user = &ps;
    tp->validation_prompts = o->prompts;
    tp->n_validation_prompts = o->n_prompts;
    int rc = 0;
    /* The data (without the class images, which may not exist yet: sampling them takes long) and output_dir are
     * checked before the model is loaded. */
    const char *class_dir = dp->class_data_dir;
    dp->class_data_dir = cp ? NULL : class_dir;
    if (open_checked(data_dir, dp, &ps, &ds))
        return 1;
    dp->class_data_dir = class_dir;
    if (o->validation_data_dir) {
        lsd_dataset_params vp = *dp;
        vp.class_data_dir = vp.reg_data_dir = NULL;
        if (open_checked(o->validation_data_dir, &vp, &ps, &val))
            rc = 1;
        tp->validation_dataset = val;
    }
    if (!rc && rank0 && lsd_prepare_output_dir(tp->output_dir) != LSD_OK)
        rc = fail("output_dir");
    else if (!rc && lsd_model_load(model_path, mp, &m) != LSD_OK)
        rc = fail(model_path);
    else if (!rc && cp && (rc = class_images(m, cp, &ps)) == 0) {
        lsd_dataset_free(ds);
        rc = open_checked(data_dir, dp, &ps, &ds);
    }
    if (!rc && rank0)
        rc = print_summary(ds, tp);
    if (!rc && lsd_adapter_set_new(m, &set) != LSD_OK)
        rc = fail("adapter set");
    else if (!rc && lsd_trainer_new(m, set, "lora", ds, tp, &tr) != LSD_OK)
        rc = fail("trainer");
    if (!rc && resume) {
        char dir[4096];
        if (!strcmp(resume, "latest"))
            latest_checkpoint(tp->output_dir, dir, sizeof dir);
        else
            snprintf(dir, sizeof dir, "%s", resume);
        if (!dir[0] && rank0)
            printf("Checkpoint 'latest' does not exist in %s. Starting a new training run.\n", tp->output_dir);
        else if (dir[0] && lsd_trainer_resume(tr, dir) != LSD_OK)
            rc = fail(dir);
        else if (dir[0] && rank0)
            printf("resumed from %s at step %d\n", dir, lsd_trainer_get_step(tr));
    }
    int start = tr ? lsd_trainer_get_step(tr) : 0, total = tr ? lsd_trainer_get_max_train_steps(tr) : 0;
    if (!rc && rank0)
        rc = open_logs(tp, o, start, &ps);
    if (!rc && rank0)
        printf("training for %d steps%s\n", total, dist ? " (the group's)" : "");
    progress_init(&ps.line, ps.tty, start, total);
    int group_stop = 0; /* another worker was stopped: the group stopped at this step */
    while (!rc && !stop_requested() && lsd_trainer_get_step(tr) < total) {
        float loss = 0;
        lsd_status st = lsd_trainer_step(tr, &loss);
        if (st == LSD_ERR_CANCELLED && (stop_requested() || dist)) {
            group_stop = !stop_requested();
            break; /* a validation abandoned for the stop (the step itself is done), or the group's stop */
        }
        if (st != LSD_OK) {
            progress_break(&ps.line);
            rc = fail("training");
        }
    }
    progress_break(&ps.line);
    /* Stopped: what counts is whether the checkpoint and the LoRA get saved. */
    int sig = stop_requested() ? stop_requested() : group_stop ? SIGTERM : 0;
    int step = tr ? lsd_trainer_get_step(tr) : 0, trained = step > start;
    if (sig)
        rc = trained && rank0 ? save_stopped(tr, tp) : 0;
    int save = rank0 && !rc && (!sig || trained);
    /* With an EMA the final file holds the averaged weights, as diffusers saves the EMA model; the raw ones go
     * beside it. */
    if (save && tp->use_ema)
        rc = save_lora(tr, tp, "_raw", fmt);
    if (save && !rc && tp->use_ema && lsd_trainer_swap_ema(tr) != LSD_OK)
        rc = fail("EMA weights");
    if (save && !rc)
        rc = save_lora(tr, tp, "", fmt);
    jsonl_close(ps.jsonl);
    tb_close(ps.tb);
    if (save && !rc)
        plot(tp, o);
    lsd_trainer_free(tr);
    lsd_adapter_set_free(set);
    lsd_model_free(m);
    lsd_dataset_free(ds);
    lsd_dataset_free(val);
    lsd_dist_free(dist);
    if (sig && !rc) {
        if (rank0)
            fprintf(stderr, "lora-sd train: stopped by %s at step %d\n",
                    group_stop ? "a stopped worker" : sig == SIGINT ? "SIGINT" : "SIGTERM", step);
        return 128 + sig;
    }
    return rc;
}

/* optarg and the words after it up to the next option (kohya's nargs="*"), joined by blanks into buf. */
static int join_words(const char *opt, int argc, char **argv, char *buf, size_t n)
{
    size_t len = (size_t)snprintf(buf, n, "%s", optarg);
    while (len < n && optind < argc && argv[optind][0] != '-')
        len += (size_t)snprintf(buf + len, n - len, " %s", argv[optind++]);
    return len < n ? 0 : lsd_cli_usage_error(CMD, "--%s is too long", opt);
}

/* wargv: the arguments as given, without --nproc_per_node: the workers' (getopt permutes argv). */
static int run_args(int argc, char **argv, int wargc, char **wargv)
{
    const char *model = NULL, *data = NULL, *instance = NULL, *resume = NULL, *dtype = NULL;
    int nesterov = 0; /* kohya's SGDNesterov */
    char user_args[2048], optim_args[2100];
    lsd_model_params mp;
    lsd_model_params_init(&mp);
    lsd_dataset_params dp;
    lsd_train_params tp;
    lsd_class_images_params cp;
    lsd_dataset_params_init(&dp);
    lsd_train_params_init(&tp);
    lsd_class_images_params_init(&cp);
    tp.output_dir = "sd-model-finetuned-lora";
    static const char *prompts[MAX_PROMPTS];
    cli_opts o = {"logs", 1, NULL, prompts, 0, {0}};
    lsd_dist_params_init(&o.dist);
    if (lsd_dist_params_from_env(&o.dist) != LSD_OK)
        return lsd_cli_usage_error(CMD, "%s", lsd_last_error());
    int nproc = 1, master_port = 0;
    const char *master_addr = NULL;

    int val_seed_given = 0;
    lsd_lora_format fmt = LSD_LORA_FORMAT_KOHYA;
    optind = 1;
    opterr = 0;
    int c, bad = 0, li = -1;
    double d;
    while (!bad && (c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
        const char *name = li >= 0 ? opts[li].name : ""; /* as typed: aliases share a code */
        li = -1;
        switch (c) {
        case O_MODEL: model = optarg; break;
        case O_DATA: data = optarg; break;
        case O_OUT: tp.output_dir = optarg; break;
        case O_RES: bad = parse_int(name, optarg, 8, &tp.resolution); break;
        case O_CENTER: tp.center_crop = 1; break;
        case O_FLIP: tp.random_flip = 1; break;
        case O_BATCH: bad = parse_int(name, optarg, 1, &tp.train_batch_size); break;
        case O_STEPS: bad = parse_int(name, optarg, 1, &tp.max_train_steps); break;
        case O_ACCUM: bad = parse_int(name, optarg, 1, &tp.gradient_accumulation_steps); break;
        case O_GCKPT: tp.gradient_checkpointing = 1; break;
        case O_LR: bad = parse_num(name, optarg, &tp.learning_rate); break;
        case O_SCHED:
            if (lsd_lr_scheduler_from_name(optarg, &tp.lr_scheduler) != LSD_OK)
                bad = lsd_cli_usage_error(CMD, "%s", lsd_last_error());
            break;
        case O_WARMUP: bad = parse_int(name, optarg, 0, &tp.lr_warmup_steps); break;
        case O_CYCLES: bad = parse_int(name, optarg, 1, &tp.lr_num_cycles); break;
        case O_POWER: bad = parse_num(name, optarg, &d); tp.lr_power = (float)d; break;
        case O_SNR: bad = parse_num(name, optarg, &d); tp.snr_gamma = (float)d; break;
        case O_OFFSET: bad = parse_num(name, optarg, &d); tp.noise_offset = (float)d; break;
        case O_PRED:
            if (!strcmp(optarg, "epsilon"))
                tp.prediction_type = LSD_PREDICTION_EPSILON;
            else if (!strcmp(optarg, "v_prediction"))
                tp.prediction_type = LSD_PREDICTION_V;
            else
                bad = lsd_cli_usage_error(CMD, "--prediction_type must be epsilon or v_prediction, got '%s'", optarg);
            break;
        case O_CLIP: bad = parse_num(name, optarg, &d); tp.max_grad_norm = (float)d; break;
        case O_B1: bad = parse_num(name, optarg, &tp.adam_beta1); break;
        case O_B2: bad = parse_num(name, optarg, &tp.adam_beta2); break;
        case O_WD: bad = parse_num(name, optarg, &tp.adam_weight_decay); break;
        case O_EPS: bad = parse_num(name, optarg, &tp.adam_epsilon); break;
        case O_RANK: bad = parse_int(name, optarg, 1, &tp.rank); break;
        case O_SEED: bad = parse_seed(name, optarg, &tp.seed); break;
        case O_MIXED:
            if (!strcmp(optarg, "no"))
                tp.mixed_precision = LSD_F32;
            else if (!strcmp(optarg, "fp16"))
                tp.mixed_precision = LSD_F16;
            else if (!strcmp(optarg, "bf16"))
                tp.mixed_precision = LSD_BF16;
            else
                bad = lsd_cli_usage_error(CMD, "--mixed_precision must be no, fp16 or bf16, got '%s'", optarg);
            break;
        case O_CKSTEPS: bad = parse_int(name, optarg, 1, &tp.checkpointing_steps); break;
        case O_CKLIMIT: bad = parse_int(name, optarg, 1, &tp.checkpoints_total_limit); break;
        case O_RESUME: resume = optarg; break;
        case O_CAPCOL: dp.caption_column = optarg; break;
        case O_FORMAT:
            if (lsd_lora_format_from_name(optarg, &fmt) != LSD_OK || fmt == LSD_LORA_FORMAT_AUTO ||
                fmt == LSD_LORA_FORMAT_ATTN_PROCS)
                bad = lsd_cli_usage_error(CMD, "--save_format must be kohya, peft or diffusers, got '%s'", optarg);
            break;
        case O_PRIOR: tp.with_prior_preservation = 1; break;
        case O_CLASS_DIR: dp.class_data_dir = optarg; break;
        case O_CLASS_PROMPT: dp.class_prompt = optarg; break;
        case O_NUM_CLASS: bad = parse_int(name, optarg, 0, &cp.num_class_images); break;
        case O_SAMPLE_BATCH: bad = parse_int(name, optarg, 1, &cp.sample_batch_size); break;
        case O_PRIOR_W: bad = parse_num(name, optarg, &d); tp.prior_loss_weight = (float)d; break;
        case O_TRAIN_TE: tp.train_text_encoder = 1; break;
        case O_UNET_ONLY: tp.train_unet = 1; tp.train_text_encoder = 0; break;
        case O_TE_ONLY: tp.train_unet = 0; tp.train_text_encoder = 1; break;
        case O_TARGETS:
            if (lsd_lora_targets_from_names(optarg, &tp.lora_targets) != LSD_OK)
                bad = lsd_cli_usage_error(CMD, "--lora_targets: %s", lsd_last_error());
            break;
        case O_NET_ALPHA: bad = parse_num(name, optarg, &d); tp.network_alpha = (float)d; break;
        case O_CONV_DIM: bad = parse_int(name, optarg, 1, &tp.conv_dim); break;
        case O_CONV_ALPHA: bad = parse_num(name, optarg, &d); tp.conv_alpha = (float)d; break;
        case O_NET_ARGS: /* nargs="*" as kohya: the words up to the next option */
            bad = parse_network_arg(optarg, &tp);
            while (!bad && optind < argc && argv[optind][0] != '-')
                bad = parse_network_arg(argv[optind++], &tp);
            break;
        case O_EPOCHS: bad = parse_int(name, optarg, 1, &tp.num_train_epochs); break;
        case O_SAVE_EPOCHS: bad = parse_int(name, optarg, 1, &tp.save_every_n_epochs); break;
        case O_OUT_NAME:
            if (!*optarg || strchr(optarg, '/'))
                bad = lsd_cli_usage_error(CMD, "--output_name expects a file name without '/', got '%s'", optarg);
            tp.output_name = optarg;
            break;
        case O_SAVE_PREC: /* kohya's "float", or any dtype name */
            if (strcmp(optarg, "float") ? lsd_dtype_from_name(optarg, &tp.save_precision) != LSD_OK
                                        : (tp.save_precision = LSD_F32, 0))
                bad = lsd_cli_usage_error(CMD, "--save_precision must be float, fp16 or bf16, got '%s'", optarg);
            break;
        case O_COMMENT: tp.training_comment = optarg; break;
        case O_UNET_LR: bad = parse_num(name, optarg, &tp.unet_lr); break;
        case O_TE_LR: bad = parse_num(name, optarg, &tp.text_encoder_lr); break;
        case O_VAL_PROMPT:
            if (o.n_prompts == MAX_PROMPTS)
                return lsd_cli_usage_error(CMD, "more than %d --validation_prompt", MAX_PROMPTS);
            prompts[o.n_prompts++] = optarg;
            break;
        case O_VAL_IMAGES: bad = parse_int(name, optarg, 1, &tp.num_validation_images); break;
        case O_VAL_STEPS: bad = parse_int(name, optarg, 1, &tp.validation_steps); break;
        case O_VAL_SEED: bad = parse_seed(name, optarg, &tp.validation_seed); val_seed_given = 1; break;
        case O_VAL_INF_STEPS: bad = parse_int(name, optarg, 1, &tp.validation_inference_steps); break;
        case O_VAL_GUIDANCE: bad = parse_num(name, optarg, &d); tp.validation_guidance_scale = (float)d; break;
        case O_VAL_SAMPLER:
            if (lsd_sampler_from_name(optarg, &tp.validation_sampler) != LSD_OK)
                bad = lsd_cli_usage_error(CMD, "--validation_sampler: %s", lsd_last_error());
            break;
        case O_VAL_SPLIT:
            bad = parse_num(name, optarg, &d);
            if (!bad && d >= 1)
                bad = lsd_cli_usage_error(CMD, "--validation_split expects a fraction in [0, 1), got '%s'", optarg);
            tp.validation_split = (float)d;
            break;
        case O_VAL_DATA: o.validation_data_dir = optarg; break;
        case O_LOGDIR: o.logging_dir = optarg; break;
        case O_REPORT:
            if (!strcmp(optarg, "tensorboard") || !strcmp(optarg, "all"))
                o.tensorboard = 1;
            else if (!strcmp(optarg, "none"))
                o.tensorboard = 0;
            else
                bad = lsd_cli_usage_error(CMD, "--report_to: '%s' is not supported (tensorboard, all or none; the "
                                          "metrics are always in logging_dir/metrics.jsonl)", optarg);
            break;
        case O_CACHE: tp.cache_latents = 1; break;
        case O_CACHE_DISK: tp.cache_latents_to_disk = 1; break;
        case O_CACHE_DIR: tp.cache_dir = optarg; break;
        case O_OPTIM:
            nesterov = !strcasecmp(optarg, "SGDNesterov");
            if (nesterov)
                tp.optimizer = LSD_OPTIM_SGD;
            else if (lsd_optimizer_from_name(optarg, &tp.optimizer) != LSD_OK)
                bad = lsd_cli_usage_error(CMD, "--%s: %s", name, lsd_last_error());
            break;
        case O_OPTIM_ARGS:
            bad = join_words(name, argc, argv, user_args, sizeof user_args);
            tp.optimizer_args = user_args;
            break;
        case O_EMA: tp.use_ema = 1; break;
        case O_EMA_DECAY: bad = parse_num(name, optarg, &d); tp.ema_decay = (float)d; break;
        case O_EMA_WARMUP: tp.ema_warmup = 1; break;
        case O_EMA_INV_GAMMA: bad = parse_num(name, optarg, &d); tp.ema_inv_gamma = (float)d; break;
        case O_EMA_POWER: bad = parse_num(name, optarg, &d); tp.ema_power = (float)d; break;
        case O_LAYOUT:
            if (lsd_dataset_layout_from_name(optarg, &dp.layout) != LSD_OK)
                bad = lsd_cli_usage_error(CMD, "--dataset_layout: %s", lsd_last_error());
            break;
        case O_CAPEXT: dp.caption_extension = optarg; break;
        case O_CAPDIR: dp.caption_data_dir = optarg; break;
        case O_REG: dp.reg_data_dir = optarg; break;
        case O_INST_DIR: instance = optarg; break;
        case O_INST_PROMPT: dp.instance_prompt = optarg; break;
        case O_EMPTY: dp.allow_empty_captions = 1; break;
        case O_SHUFFLE: dp.shuffle_caption = 1; break;
        case O_KEEP: bad = parse_int(name, optarg, 0, &dp.keep_tokens); break;
        case O_SEP: dp.caption_separator = optarg; break;
        case O_DROPOUT:
            bad = parse_num(name, optarg, &d);
            if (!bad && d > 1)
                bad = lsd_cli_usage_error(CMD, "--caption_dropout_rate expects a probability in [0, 1], got '%s'",
                                          optarg);
            dp.caption_dropout_rate = (float)d;
            break;
        case O_BUCKET: dp.enable_bucket = 1; break;
        case O_MIN_B: bad = parse_int(name, optarg, 1, &dp.min_bucket_reso); break;
        case O_MAX_B: bad = parse_int(name, optarg, 1, &dp.max_bucket_reso); break;
        case O_STEPS_B: bad = parse_int(name, optarg, 1, &dp.bucket_reso_steps); break;
        case O_NO_UP: dp.bucket_no_upscale = 1; break;
        case O_DEVICE: mp.device = optarg; break;
        case O_DTYPE: dtype = optarg; break;
        case O_NPROC: bad = parse_int(name, optarg, 1, &nproc); break;
        case O_MASTER_ADDR: master_addr = optarg; break;
        case O_MASTER_PORT:
            bad = parse_int(name, optarg, 1, &master_port);
            if (!bad && master_port > 65535)
                bad = lsd_cli_usage_error(CMD, "--master_port expects a port in [1, 65535], got '%s'", optarg);
            break;
        case O_DIST_BACKEND:
            if (strcmp(optarg, "gloo") && strcmp(optarg, "nccl"))
                bad = lsd_cli_usage_error(CMD, "--dist_backend must be gloo or nccl, got '%s'", optarg);
            o.dist.backend = optarg;
            break;
        case O_DIST_TIMEOUT:
            bad = parse_num(name, optarg, &o.dist.timeout_seconds);
            if (!bad && !(o.dist.timeout_seconds > 0))
                bad = lsd_cli_usage_error(CMD, "--dist_timeout expects seconds > 0, got '%s'", optarg);
            break;
        case O_DIST_INIT: o.dist.init_file = optarg; break;
        case 'h':
        case O_HELP: fputs(usage, stdout); return 0;
        case ':': return lsd_cli_usage_error(CMD, "option '%s' needs a value", argv[optind - 1]);
        default: return lsd_cli_usage_error(CMD, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (bad)
        return 2;
    if (optind < argc)
        return lsd_cli_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (data && instance)
        return lsd_cli_usage_error(CMD, "give --train_data_dir or --instance_data_dir, not both");
    if (instance && !dp.instance_prompt)
        return lsd_cli_usage_error(CMD, "--instance_data_dir needs --instance_prompt");
    data = data ? data : instance;
    if (!model || !data)
        return lsd_cli_usage_error(CMD, "--%s is required",
                                   !model ? "pretrained_model_name_or_path" : "train_data_dir");
    if (tp.with_prior_preservation && (!dp.class_data_dir || !dp.class_prompt))
        return lsd_cli_usage_error(CMD, "--with_prior_preservation needs --%s",
                                   !dp.class_data_dir ? "class_data_dir" : "class_prompt");
    if (!tp.with_prior_preservation && (dp.class_data_dir || dp.class_prompt)) {
        fprintf(stderr, "lora-sd train: warning: --%s has no effect without --with_prior_preservation\n",
                dp.class_data_dir ? "class_data_dir" : "class_prompt");
        dp.class_data_dir = dp.class_prompt = NULL;
    }
    /* kohya: SGDNesterov is torch's SGD with nesterov=True and, unless given, momentum 0.9 (a later key wins). */
    if (nesterov && snprintf(optim_args, sizeof optim_args, "nesterov=True momentum=0.9 %s",
                             tp.optimizer_args ? tp.optimizer_args : "") >= (int)sizeof optim_args)
        return lsd_cli_usage_error(CMD, "--optimizer_args is too long");
    if (nesterov)
        tp.optimizer_args = optim_args;
    /* Everything the trainer will check of its settings alone, before the dataset and the model take minutes. */
    if (lsd_train_params_check(&tp) != LSD_OK)
        return lsd_cli_usage_error(CMD, "%s", lsd_last_error());
    /* The frozen weights live in the compute dtype (diffusers' weight_dtype); the library falls back to f32 with a
     * warning where the device cannot compute it fast, and so does the trainer. */
    mp.dtype = tp.mixed_precision;
    if (dtype && lsd_dtype_from_name(dtype, &mp.dtype) != LSD_OK)
        return lsd_cli_usage_error(CMD, "--dtype: %s", lsd_last_error());
    dp.resolution = tp.resolution;
    cp.class_data_dir = dp.class_data_dir;
    cp.class_prompt = dp.class_prompt;
    cp.seed = tp.seed;
    if (!val_seed_given)
        tp.validation_seed = tp.seed; /* diffusers seeds its validation generator with --seed */
    if (master_addr)
        o.dist.master_addr = master_addr;
    if (master_port)
        o.dist.master_port = master_port;
    /* torchrun's convention: with nccl, worker LOCAL_RANK drives cuda:LOCAL_RANK */
    char device[32];
    if (o.dist.world_size > 1 && o.dist.backend && !strcmp(o.dist.backend, "nccl") && mp.device &&
        !strcmp(mp.device, "cuda")) {
        snprintf(device, sizeof device, "cuda:%d", o.dist.local_rank);
        mp.device = device;
    }
    if (nproc > 1 && o.dist.world_size > 1)
        return lsd_cli_usage_error(CMD, "--nproc_per_node %d in a worker of a group (WORLD_SIZE=%d is set): give "
                                   "one or the other", nproc, o.dist.world_size);
    if (nproc > 1)
        return train_launch(nproc, master_addr ? master_addr : "127.0.0.1", master_port,
                            o.dist.timeout_seconds + 30, wargc, wargv);
    return train(model, &mp, data, &dp, &tp, tp.with_prior_preservation ? &cp : NULL, resume, fmt, &o);
}

static int run(int argc, char **argv)
{
    char **wargv = calloc((size_t)argc + 1, sizeof *wargv);
    int wargc = 0;
    if (!wargv)
        return fail("arguments");
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--nproc_per_node"))
            i++;
        else if (strncmp(argv[i], "--nproc_per_node=", 17))
            wargv[wargc++] = argv[i];
    }
    int rc = run_args(argc, argv, wargc, wargv);
    free(wargv);
    return rc;
}

const struct lsd_cli_command lsd_cli_train = {
    CMD, "train a LoRA on a folder of captioned images (diffusers' flags)", usage, run};
