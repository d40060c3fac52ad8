/*
 * liblora_sd — Stable Diffusion 1.x LoRA fine-tuning and sampling, as a C library.
 *
 * Conventions (see docs/API.md):
 *  - every fallible call returns lsd_status (LSD_OK == 0); results come back through out-parameters;
 *  - after a failure lsd_last_error() names the file, tensor, key or argument at fault;
 *  - params/info structs start with struct_size; call lsd_X_params_init() before filling them;
 *    a NULL params pointer means the defaults;
 *  - every *_free accepts NULL; the library never prints, exits or aborts.
 */
#ifndef LORA_SD_H
#define LORA_SD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LSD_API __declspec(dllexport)
#elif defined(__GNUC__)
#define LSD_API __attribute__((visibility("default")))
#else
#define LSD_API
#endif

#define LSD_VERSION_MAJOR 0
#define LSD_VERSION_MINOR 1
#define LSD_VERSION_PATCH 0

/* ---------------------------------------------------------------------------------------------- */
/* Status and errors                                                                               */

/* Pinned numbers: never renumbered, never reused. */
typedef enum lsd_status {
    LSD_OK = 0,
    LSD_ERR_INVALID_ARGUMENT = 1,
    LSD_ERR_IO = 2,
    LSD_ERR_FORMAT = 3,
    LSD_ERR_UNSUPPORTED = 4,
    LSD_ERR_SHAPE_MISMATCH = 5,
    LSD_ERR_OUT_OF_MEMORY = 6,
    LSD_ERR_DEVICE = 7,
    LSD_ERR_CANCELLED = 8,
    LSD_ERR_NOT_FOUND = 9,
    LSD_ERR_NUMERIC = 10,
    LSD_ERR_INTERNAL = 11
} lsd_status;

LSD_API const char *lsd_status_string(lsd_status st);
/* Thread-local, library-owned message about the last failure on this thread. Never NULL. */
LSD_API const char *lsd_last_error(void);

LSD_API const char *lsd_version_string(void);

typedef enum lsd_log_level {
    LSD_LOG_DEBUG = 0,
    LSD_LOG_INFO = 1,
    LSD_LOG_WARN = 2,
    LSD_LOG_ERROR = 3
} lsd_log_level;

typedef void (*lsd_log_fn)(lsd_log_level level, const char *message, void *user);
/* Process-wide sink for messages; NULL silences the library (the default). */
LSD_API void lsd_set_log_callback(lsd_log_fn fn, void *user);

/* Intra-op threads of the tensor backend; n <= 0 keeps the backend's default. */
LSD_API lsd_status lsd_set_num_threads(int n);
LSD_API int lsd_cuda_available(void);

typedef struct lsd_runtime_info {
    size_t struct_size;
    char torch_version[32];
    char blas[256];      /* the BLAS library actually loaded (path or name) */
    int num_threads;
    int cuda_device_count;
} lsd_runtime_info;
LSD_API lsd_status lsd_runtime_info_get(lsd_runtime_info *info);

typedef enum lsd_dtype {
    LSD_F32 = 0,
    LSD_F16 = 1,
    LSD_BF16 = 2
} lsd_dtype;
LSD_API const char *lsd_dtype_name(lsd_dtype dt);
LSD_API lsd_status lsd_dtype_from_name(const char *name, lsd_dtype *out);

/* Strings returned by the library are freed with this. */
LSD_API void lsd_string_free(char *s);

/* ---------------------------------------------------------------------------------------------- */
/* Progress and cancellation                                                                       */

typedef enum lsd_stage {
    LSD_STAGE_LOAD = 0,
    LSD_STAGE_ENCODE = 1,
    LSD_STAGE_DENOISE = 2,
    LSD_STAGE_DECODE = 3,
    LSD_STAGE_TRAIN_STEP = 4,
    LSD_STAGE_CHECKPOINT = 5
} lsd_stage;

typedef struct lsd_progress {
    size_t struct_size;
    lsd_stage stage;
    int step;     /* 1-based steps done in this stage */
    int total;
    double elapsed_seconds;
} lsd_progress;

/* Non-zero return cancels the call: it returns LSD_ERR_CANCELLED and leaves nothing half-done. */
typedef int (*lsd_progress_fn)(const lsd_progress *p, void *user);

/* ---------------------------------------------------------------------------------------------- */
/* Images: 8-bit RGB, row-major, channels == 3                                                    */

typedef struct lsd_image {
    size_t struct_size;
    int width;
    int height;
    int channels;
    uint8_t *data; /* width * height * channels bytes */
} lsd_image;

/* PNG, JPEG or WebP (detected from the bytes) to RGB8. Alpha is composited on white. */
LSD_API lsd_status lsd_image_load(const char *path, lsd_image *out);
LSD_API lsd_status lsd_image_load_memory(const void *data, size_t size, const char *name, lsd_image *out);
/* Writes atomically. Text: keys of 1..79 Latin-1 bytes; UTF-8 values, stored as tEXt when ASCII, else iTXt. */
LSD_API lsd_status lsd_image_save_png(const char *path, const lsd_image *img, const char *const *text_keys,
                                      const char *const *text_values, size_t n_text);
/* Frees the pixels and zeroes the struct; accepts NULL and already-released images. */
LSD_API void lsd_image_release(lsd_image *img);

/* ---------------------------------------------------------------------------------------------- */
/* Opaque handles                                                                                  */

typedef struct lsd_model lsd_model;
typedef struct lsd_adapter_set lsd_adapter_set;
typedef struct lsd_dataset lsd_dataset;
typedef struct lsd_trainer lsd_trainer;

/* ---------------------------------------------------------------------------------------------- */
/* Model                                                                                           */

typedef struct lsd_model_params {
    size_t struct_size;
    const char *device;     /* "cpu" (default), "cuda", "cuda:N" */
    lsd_dtype dtype;        /* weights and compute dtype; default LSD_F32 */
    const char *config_dir; /* diffusers-style folder of configs + tokenizer for single files; NULL = built-in SD 1.x */
    const char *variant;    /* e.g. "fp16": prefer *.fp16.safetensors in a diffusers folder; NULL = none */
    int clip_skip;          /* 1 = last layer (default), 2 = penultimate, ... */
    lsd_progress_fn progress;
    void *progress_user;
} lsd_model_params;
LSD_API void lsd_model_params_init(lsd_model_params *p);

/* path_or_hub_id: a diffusers folder, a single .safetensors/.ckpt/.pt file, or an id "ORG/NAME" found in the
 * local Hugging Face cache ($HF_HOME/hub or ~/.cache/huggingface/hub); nothing is downloaded. */
LSD_API lsd_status lsd_model_load(const char *path_or_hub_id, const lsd_model_params *params, lsd_model **out);
/* Builds the architecture described by config_dir (a diffusers folder of configs) with seeded random weights. */
LSD_API lsd_status lsd_model_create_random(const char *config_dir, uint64_t seed, const lsd_model_params *params,
                                           lsd_model **out);
LSD_API void lsd_model_free(lsd_model *model);

typedef struct lsd_model_info {
    size_t struct_size;
    int64_t unet_params;
    int64_t vae_params;
    int64_t text_encoder_params;
    int latent_channels;
    int vae_scale_factor;     /* image pixels per latent pixel */
    int context_dim;          /* text encoder hidden size */
    int max_tokens;           /* 77 */
    float scaling_factor;     /* VAE latent scaling */
    lsd_dtype dtype;
    char device[32];
    char name[128];           /* base name of what was loaded */
    char hash[16];            /* A1111-style short hash of a single-file checkpoint, "" otherwise */
} lsd_model_info;
LSD_API lsd_status lsd_model_get_info(const lsd_model *model, lsd_model_info *info);

/* ids_out receives max_tokens ids (BOS, tokens, EOS, EOS padding). n_tokens_out (optional) = BPE tokens before
 * truncation; a prompt over the limit is truncated with a warning through the log callback. */
LSD_API lsd_status lsd_model_tokenize(const lsd_model *model, const char *text, int64_t *ids_out, int max_ids,
                                      int *n_tokens_out);
/* ids [batch, n_ids] -> hidden [batch, n_ids, context_dim]; clip_skip <= 0 uses the model's default. */
LSD_API lsd_status lsd_model_encode_tokens(lsd_model *model, const int64_t *ids, int batch, int n_ids, int clip_skip,
                                           float *hidden_out);
LSD_API lsd_status lsd_model_encode_text(lsd_model *model, const char *const *prompts, int batch, int clip_skip,
                                         float *hidden_out);
/* sample [batch,C,h,w]; timesteps: n_timesteps == 1 broadcasts to the batch, else == batch;
 * context [batch, n_ctx, context_dim]; out [batch,C,h,w]. */
LSD_API lsd_status lsd_model_unet(lsd_model *model, const float *sample, int batch, int height, int width,
                                  const float *timesteps, int n_timesteps, const float *context, int n_ctx,
                                  float *out);
/* image [batch,3,H,W] in [-1,1] -> mean and logvar [batch,latent_channels,H/f,W/f] (logvar may be NULL). */
LSD_API lsd_status lsd_model_vae_encode(lsd_model *model, const float *image, int batch, int height, int width,
                                        float *mean_out, float *logvar_out);
/* latents [batch,latent_channels,h,w] (already divided by scaling_factor) -> image [batch,3,h*f,w*f]. */
LSD_API lsd_status lsd_model_vae_decode(lsd_model *model, const float *latents, int batch, int height, int width,
                                        float *image_out);

typedef enum lsd_model_format {
    LSD_MODEL_SINGLE_FILE = 0, /* original (ldm) layout .safetensors */
    LSD_MODEL_DIFFUSERS = 1    /* diffusers folder */
} lsd_model_format;
LSD_API lsd_status lsd_model_save(const lsd_model *model, const char *path, lsd_model_format format);

/* ---------------------------------------------------------------------------------------------- */
/* Sampling                                                                                        */

typedef enum lsd_sampler {
    LSD_SAMPLER_PNDM = 0,
    LSD_SAMPLER_DDIM = 1,
    LSD_SAMPLER_EULER = 2,
    LSD_SAMPLER_EULER_A = 3,
    LSD_SAMPLER_DPMPP_2M = 4,
    LSD_SAMPLER_DPMPP_2M_KARRAS = 5
} lsd_sampler;
LSD_API const char *lsd_sampler_name(lsd_sampler s);
LSD_API lsd_status lsd_sampler_from_name(const char *name, lsd_sampler *out);

typedef struct lsd_sample_params {
    size_t struct_size;
    const char *const *prompts;          /* batch prompts; NULL with batch 1 means prompt */
    const char *const *negative_prompts; /* NULL: "" for each */
    const char *prompt;                  /* convenience for batch 1 */
    const char *negative_prompt;
    int batch;                           /* default 1 */
    int steps;                           /* default 50 */
    float guidance_scale;                /* default 7.5; <= 1 disables classifier-free guidance */
    lsd_sampler sampler;                 /* default PNDM */
    float eta;                           /* DDIM eta, default 0 */
    uint64_t seed;                       /* default 0 */
    int width, height;                   /* default 512 x 512 (multiples of 8 * vae factor) */
    const float *init_latents;           /* optional [batch,C,h,w], before init_noise_sigma */
    int clip_skip;                       /* <= 0: the model's */
    int vae_tile;                        /* decode in tiles of this many latent pixels; 0 = whole */
    int attention_chunk;                 /* > 0: split attention queries in chunks of this size */
    lsd_progress_fn progress;
    void *progress_user;
} lsd_sample_params;
LSD_API void lsd_sample_params_init(lsd_sample_params *p);

/* images_out: batch lsd_image (release each); latents_out (optional): [batch,C,h,w] final latents.
 * images_out may be NULL when latents_out is given: the VAE decode is then skipped. */
LSD_API lsd_status lsd_sample(lsd_model *model, const lsd_sample_params *params, lsd_image *images_out,
                              float *latents_out);

/* ---------------------------------------------------------------------------------------------- */
/* LoRA adapters                                                                                   */

typedef enum lsd_lora_target {
    LSD_TARGET_UNET_ATTN = 1 << 0,   /* to_q, to_k, to_v, to_out.0 */
    LSD_TARGET_UNET_FF = 1 << 1,     /* ff.net.0.proj, ff.net.2 */
    LSD_TARGET_UNET_PROJ = 1 << 2,   /* proj_in, proj_out */
    LSD_TARGET_UNET_CONV = 1 << 3,   /* resnet conv1/conv2, down/upsampler convs (LoCon) */
    LSD_TARGET_TE_ATTN = 1 << 4,     /* q_proj, k_proj, v_proj, out_proj */
    LSD_TARGET_TE_MLP = 1 << 5       /* fc1, fc2 */
} lsd_lora_target;

typedef enum lsd_lora_init {
    LSD_LORA_INIT_KOHYA = 0,    /* A kaiming-uniform, B zero */
    LSD_LORA_INIT_GAUSSIAN = 1  /* A normal(0, 1/rank), B zero */
} lsd_lora_init;

typedef enum lsd_lora_format {
    LSD_LORA_FORMAT_AUTO = 0,
    LSD_LORA_FORMAT_KOHYA = 1,
    LSD_LORA_FORMAT_PEFT = 2,
    LSD_LORA_FORMAT_DIFFUSERS = 3,
    LSD_LORA_FORMAT_ATTN_PROCS = 4
} lsd_lora_format;
LSD_API const char *lsd_lora_format_name(lsd_lora_format f);
LSD_API lsd_status lsd_lora_format_from_name(const char *name, lsd_lora_format *out);

typedef struct lsd_lora_params {
    size_t struct_size;
    int rank;               /* default 4 */
    float alpha;            /* default = rank; for load: alpha of files that store none (<= 0: rank) */
    unsigned targets;       /* lsd_lora_target bits; default LSD_TARGET_UNET_ATTN */
    int conv_rank;          /* LoCon conv rank, default = rank */
    float conv_alpha;       /* default = conv_rank */
    lsd_lora_init init;
    uint64_t seed;
    float weight;           /* UNet multiplier, default 1 */
    float te_weight;        /* text-encoder multiplier, default = weight (NAN) */
    int strict;             /* load: any unmatched key is an error */
} lsd_lora_params;
LSD_API void lsd_lora_params_init(lsd_lora_params *p);

typedef struct lsd_load_report {
    size_t struct_size;
    lsd_lora_format format;
    int matched_keys;
    int unmatched_keys;
    int applied_modules;
    char first_unmatched[256];
} lsd_load_report;

typedef struct lsd_adapter_info {
    size_t struct_size;
    char name[128];
    int rank;
    float alpha;
    float weight;
    float te_weight;
    int enabled;
    int modules;
    int trainable;
    int fused;
} lsd_adapter_info;

LSD_API lsd_status lsd_adapter_set_new(lsd_model *model, lsd_adapter_set **out);
LSD_API lsd_status lsd_adapter_set_add(lsd_adapter_set *set, const char *name, const lsd_lora_params *params);
LSD_API lsd_status lsd_adapter_set_load(lsd_adapter_set *set, const char *name, const char *path,
                                        const lsd_lora_params *params, lsd_load_report *report);
LSD_API lsd_status lsd_adapter_set_save(const lsd_adapter_set *set, const char *name, const char *path,
                                        lsd_lora_format format);
LSD_API lsd_status lsd_adapter_set_set_weights(lsd_adapter_set *set, const char *name, float weight, float te_weight);
LSD_API lsd_status lsd_adapter_set_enable(lsd_adapter_set *set, const char *name, int enabled);
LSD_API lsd_status lsd_adapter_set_remove(lsd_adapter_set *set, const char *name);
LSD_API lsd_status lsd_adapter_set_fuse(lsd_adapter_set *set);
LSD_API lsd_status lsd_adapter_set_unfuse(lsd_adapter_set *set);
LSD_API int lsd_adapter_set_count(const lsd_adapter_set *set);
LSD_API lsd_status lsd_adapter_set_get_info(const lsd_adapter_set *set, int index, lsd_adapter_info *info);
LSD_API void lsd_adapter_set_free(lsd_adapter_set *set);

/* ---------------------------------------------------------------------------------------------- */
/* Safetensors inspection (what `lora-sd inspect` prints)                                          */

typedef struct lsd_tensor_info {
    size_t struct_size;
    char name[256];
    char dtype[8];          /* "F32", "F16", ... as in the file */
    int ndim;
    int64_t shape[8];
    uint64_t nbytes;
} lsd_tensor_info;

typedef struct lsd_safetensors lsd_safetensors;
LSD_API lsd_status lsd_safetensors_open(const char *path, lsd_safetensors **out);
LSD_API size_t lsd_safetensors_count(const lsd_safetensors *f);
LSD_API lsd_status lsd_safetensors_tensor_info(const lsd_safetensors *f, size_t index, lsd_tensor_info *info);
LSD_API size_t lsd_safetensors_metadata_count(const lsd_safetensors *f);
LSD_API lsd_status lsd_safetensors_metadata(const lsd_safetensors *f, size_t index, const char **key,
                                            const char **value);
LSD_API void lsd_safetensors_close(lsd_safetensors *f);

#ifdef __cplusplus
}
#endif
#endif
