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
/* Thread-local, library-owned message about the last failure on this thread. Never NULL. A binding that cannot
 * read it on the thread of the failed call uses the handle's record instead (lsd_model_last_error, below). */
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
    /* ---- 0.2 ---- */
    char cpu_model[128]; /* "model name" of /proc/cpuinfo; "" when unknown */
    int cpu_native_bf16; /* 1: the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), so bf16 runs fast on "cpu";
                            LSD_NATIVE_BF16=0/1 in the environment overrides the detection */
} lsd_runtime_info;
LSD_API lsd_status lsd_runtime_info_get(lsd_runtime_info *info);

typedef enum lsd_dtype {
    LSD_F32 = 0,
    LSD_F16 = 1,
    LSD_BF16 = 2
} lsd_dtype;
LSD_API const char *lsd_dtype_name(lsd_dtype dt);
LSD_API lsd_status lsd_dtype_from_name(const char *name, lsd_dtype *out);

/* The public structs, for lsd_struct_size. Pinned numbers. */
typedef enum lsd_struct_id {
    LSD_STRUCT_RUNTIME_INFO = 1,
    LSD_STRUCT_PROGRESS = 2,
    LSD_STRUCT_IMAGE = 3,           /* frozen: passed as an array (docs/ABI.md) */
    LSD_STRUCT_MODEL_PARAMS = 4,
    LSD_STRUCT_MODEL_INFO = 5,
    LSD_STRUCT_SAMPLE_PARAMS = 6,
    LSD_STRUCT_LORA_PARAMS = 7,
    LSD_STRUCT_LOAD_REPORT = 8,
    LSD_STRUCT_ADAPTER_INFO = 9,
    LSD_STRUCT_LORA_SAVE_PARAMS = 10,
    LSD_STRUCT_TENSOR_INFO = 11,
    LSD_STRUCT_DATASET_PARAMS = 12,
    LSD_STRUCT_DATASET_ITEM = 13,
    LSD_STRUCT_DATASET_INFO = 14,
    LSD_STRUCT_DATASET_FOLDER = 15,
    LSD_STRUCT_CLASS_IMAGES_PARAMS = 16,
    LSD_STRUCT_TRAIN_METRICS = 17,
    LSD_STRUCT_TRAIN_PARAMS = 18,
    LSD_STRUCT_TRAIN_BATCH = 19,
    LSD_STRUCT_DIST_PARAMS = 20
} lsd_struct_id;
/* sizeof the struct in this library; *min_size (optional) = the smallest struct_size it accepts, the struct's size
 * in the first release that had it. 0 (both) for an unknown id. Bindings check their declarations against these at
 * run time. Rule for every struct with struct_size (docs/ABI.md "Struct sizes"): a size from min_size up to this one
 * is an older caller (the rest takes defaults; info structs are written only that far); a larger one is a newer
 * caller (params: accepted when the bytes this library does not know are zero; info: those bytes are zeroed). */
LSD_API size_t lsd_struct_size(lsd_struct_id id, size_t *min_size);

/* Deprecated since 0.2, kept because release 0.1 exports it (a released symbol never goes within the soname,
 * docs/ABI.md): no function returns an owned string. Strings the library gives are borrowed from a handle
 * (lsd_model_get_name, lsd_safetensors_metadata, ...) or static (lsd_status_string, lsd_*_name), and messages are
 * copied into the caller's buffer (lsd_model_last_error & co.). It calls free(s) and accepts NULL. */
LSD_API void lsd_string_free(char *s);

/* ---------------------------------------------------------------------------------------------- */
/* Progress and cancellation                                                                       */

typedef enum lsd_stage {
    LSD_STAGE_LOAD = 0,
    LSD_STAGE_ENCODE = 1,
    LSD_STAGE_DENOISE = 2,
    LSD_STAGE_DECODE = 3,
    LSD_STAGE_TRAIN_STEP = 4,
    LSD_STAGE_CHECKPOINT = 5,
    LSD_STAGE_CHECK = 6,           /* a dataset's images decoded once before training */
    LSD_STAGE_CLASS_IMAGES = 7,    /* DreamBooth class images generated */
    LSD_STAGE_CACHE = 8,           /* latents / text embeddings cached */
    LSD_STAGE_VALIDATION = 9       /* validation images sampled */
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
typedef struct lsd_safetensors lsd_safetensors;

/* A failure's message that does not depend on the calling thread, for bindings whose calls may run on another OS
 * thread than the next one (Go moves a goroutine between threads between two cgo calls; finalizer threads).
 * Every call that takes one of these handles and fails records its status and message on that handle, as well as in
 * lsd_last_error(): lsd_trainer_new on its model, set and dataset; lsd_adapter_set_new, lsd_sample and
 * lsd_generate_class_images on the model. The record stays until the handle's next failure (successes keep it).
 * Copies the message into buf (cap bytes with the NUL, cut to fit; buf may be NULL with cap 0) and the status into
 * *status (optional; LSD_OK when no call on the handle failed yet, or for a NULL handle); returns the message's
 * length, so a first call with cap 0 sizes the buffer. Safe from any thread, also while another thread runs a call
 * on the handle. Calls that make a handle from nothing (lsd_model_load, lsd_dataset_open, lsd_safetensors_open) or
 * take none report through lsd_last_error() alone: read it in the same native call (a C helper) or on a pinned
 * thread (Go: runtime.LockOSThread). */
LSD_API size_t lsd_model_last_error(const lsd_model *model, lsd_status *status, char *buf, size_t cap);
LSD_API size_t lsd_adapter_set_last_error(const lsd_adapter_set *set, lsd_status *status, char *buf, size_t cap);
LSD_API size_t lsd_dataset_last_error(const lsd_dataset *ds, lsd_status *status, char *buf, size_t cap);
LSD_API size_t lsd_trainer_last_error(const lsd_trainer *tr, lsd_status *status, char *buf, size_t cap);
LSD_API size_t lsd_safetensors_last_error(const lsd_safetensors *f, lsd_status *status, char *buf, size_t cap);

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
    /* ---- 0.2 ---- */
    int dtype_policy;       /* when the device cannot compute dtype fast (bf16 on a CPU without AVX512-BF16 or
                               AMX-BF16, f16 on any CPU: libtorch runs reference kernels, 15x slower than fp32):
                               LSD_DTYPE_FALLBACK (default) logs a warning and loads fp32, LSD_DTYPE_REFUSE fails with
                               LSD_ERR_UNSUPPORTED, LSD_DTYPE_KEEP loads dtype anyway (conversion, storage) */
    int vae_decode_only;    /* 1: the VAE encoder and quant_conv are neither built nor loaded (their tensors in the
                               file are skipped; SD 1.x: 34 M parameters, 130 MiB in fp32): text-to-image
                               needs only the decoder. Then lsd_model_vae_encode(_n), lsd_trainer_new and
                               lsd_model_save fail up front with LSD_ERR_INVALID_ARGUMENT naming vae_decode_only.
                               Default 0 (the whole VAE) */
} lsd_model_params;
#define LSD_DTYPE_FALLBACK 0
#define LSD_DTYPE_REFUSE 1
#define LSD_DTYPE_KEEP 2
LSD_API void lsd_model_params_init(lsd_model_params *p);

/* path_or_hub_id: a diffusers folder, a single .safetensors/.ckpt/.pt file, or an id "ORG/NAME" found in the
 * local Hugging Face cache ($HF_HOME/hub or ~/.cache/huggingface/hub); nothing is downloaded. */
LSD_API lsd_status lsd_model_load(const char *path_or_hub_id, const lsd_model_params *params, lsd_model **out);
/* Builds the architecture described by config_dir (a diffusers folder of configs) with seeded random weights. */
LSD_API lsd_status lsd_model_create_random(const char *config_dir, uint64_t seed, const lsd_model_params *params,
                                           lsd_model **out);
/* Drops the caller's handle. Adapter sets and trainers made on the model keep it alive (a reference count), so
 * handles may be freed in any order; the memory goes with the last of them. The handle is not used after this. */
LSD_API void lsd_model_free(lsd_model *model);

typedef struct lsd_model_info {
    size_t struct_size;
    int64_t unet_params;
    int64_t vae_params;       /* those loaded: without the encoder and quant_conv under vae_decode_only */
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
/* The whole name lsd_model_info.name holds the first 127 bytes of: *name is borrowed from the model (valid while the
 * caller's handle is). The char[] fields of the 0.1 info structs keep their size (docs/ABI.md); this function,
 * lsd_adapter_set_get_name and lsd_safetensors_tensor_name give the names those cut. */
LSD_API lsd_status lsd_model_get_name(const lsd_model *model, const char **name);

/* ids_out receives max_tokens ids (BOS, tokens, EOS, EOS padding). n_tokens_out (optional) = BPE tokens before
 * truncation; a prompt over the limit is truncated with a warning through the log callback. */
LSD_API lsd_status lsd_model_tokenize(const lsd_model *model, const char *text, int64_t *ids_out, int max_ids,
                                      int *n_tokens_out);
/* Textual inversion: `token` (one word, no spaces or commas) then stands in prompts for n_vectors (1 to
 * max_tokens - 2) vectors of context_dim floats, which replace its token embeddings in the text encoder's input
 * (A1111's rule: matched on the prompt's token ids, each vector counting as one of a chunk's 75 tokens). The vectors
 * are copied; adding a token again replaces it. LSD_ERR_SHAPE_MISMATCH when dim is not context_dim. */
LSD_API lsd_status lsd_model_add_embedding(lsd_model *model, const char *token, const float *vectors, int n_vectors,
                                           int dim);
/* Reads a textual-inversion file and adds it as lsd_model_add_embedding does. Layouts (taken from the bytes, not the
 * extension): A1111's .pt ({"string_to_param": {"*": [n, dim]}, "name": ...}), kohya's {"emb_params": [n, dim]}
 * (.pt or .safetensors), diffusers' learned_embeds.bin / .safetensors ({token: [dim] or [n, dim]}), any single
 * tensor in a safetensors file; fp32, fp16, bf16 or fp64. Not read: embeddings inside PNG images, SDXL's
 * clip_l/clip_g pairs (LSD_ERR_UNSUPPORTED), pre-1.6 torch.save pickles (LSD_ERR_UNSUPPORTED: re-save them).
 * token NULL: the file name without its extension is the prompt word (A1111's rule, whatever "name" the file
 * holds), except for diffusers' fixed name learned_embeds.*, where the token stored in the file is used (diffusers'
 * rule). Errors name the file: LSD_ERR_NOT_FOUND / LSD_ERR_IO for the path, LSD_ERR_FORMAT for the key, shape or
 * dtype at fault, LSD_ERR_SHAPE_MISMATCH when dim is not the model's context_dim, LSD_ERR_INVALID_ARGUMENT for a
 * word holding a space or comma. On failure the model's embeddings are unchanged. */
LSD_API lsd_status lsd_model_load_embedding(lsd_model *model, const char *path, const char *token);
/* A1111's embeddings folder: every .pt, .bin and .safetensors file (any case) in dir and its subfolders (links
 * followed, names starting with '.' and empty files passed over; sorted by name, so when two files give the same
 * word, the later path wins), each loaded as lsd_model_load_embedding(model, file, NULL) does. A file that does not
 * load is skipped, as A1111 does: a warning naming it and why goes to the log callback and it counts in
 * *n_skipped; the others still load and the call returns LSD_OK. The call fails only when dir cannot be listed
 * (LSD_ERR_NOT_FOUND / LSD_ERR_IO naming it) or memory runs out. n_loaded and n_skipped are optional. */
LSD_API lsd_status lsd_model_load_embeddings_dir(lsd_model *model, const char *dir, int *n_loaded, int *n_skipped);
/* How a prompt is read (lsd_sample_params.prompt_syntax, lsd_model_encode_prompt; docs/generate.md). */
typedef enum lsd_prompt_syntax {
    LSD_PROMPT_PLAIN = 0, /* the text as it is, cut after 75 tokens: diffusers' StableDiffusionPipeline */
    LSD_PROMPT_A1111 = 1  /* A1111's: (word) x1.1, [word] /1.1, (word:1.3), \( escapes, BREAK; any length, in
                             chunks of 75 tokens whose hidden states are concatenated */
} lsd_prompt_syntax;
/* "plain", "a1111"; NULL for an unknown value. */
LSD_API const char *lsd_prompt_syntax_name(lsd_prompt_syntax s);
/* The reverse of lsd_prompt_syntax_name; an unknown name is LSD_ERR_INVALID_ARGUMENT naming it. */
LSD_API lsd_status lsd_prompt_syntax_from_name(const char *name, lsd_prompt_syntax *out);

/* prompt read with `syntax` -> hidden_out [n_chunks * max_tokens, context_dim], the context lsd_sample conditions
 * on: A1111 syntax gives chunks of 75 tokens (each with BOS, EOS, padding to max_tokens) with the emphasis applied;
 * plain gives one chunk. hidden_out NULL: only the counts (no text encoder run). *n_chunks_out (optional) gets the
 * chunk count and *n_tokens_out (optional) A1111's token count (the N of its "N/75"; for plain text the tokens
 * before the cut), even when max_chunks is too small: then LSD_ERR_INVALID_ARGUMENT and nothing is written to
 * hidden_out. Embeddings' vectors count one token each. clip_skip <= 0: the model's. */
LSD_API lsd_status lsd_model_encode_prompt(lsd_model *model, const char *prompt, lsd_prompt_syntax syntax,
                                           int clip_skip, float *hidden_out, int max_chunks, int *n_chunks_out,
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
/* 0.2, the *_n forms: the five calls above with the number of floats each output buffer holds. A buffer smaller than
 * its shape is LSD_ERR_INVALID_ARGUMENT naming it, its shape and both counts, before any work; the buffer is left as
 * it was. The 0.1 forms stay: they trust the caller's sizing. This one: lsd_model_encode_tokens, hidden_out holding
 * hidden_cap floats. */
LSD_API lsd_status lsd_model_encode_tokens_n(lsd_model *model, const int64_t *ids, int batch, int n_ids, int clip_skip,
                                             float *hidden_out, size_t hidden_cap);
/* lsd_model_encode_text, hidden_out holding hidden_cap floats (the *_n rule above). */
LSD_API lsd_status lsd_model_encode_text_n(lsd_model *model, const char *const *prompts, int batch, int clip_skip,
                                           float *hidden_out, size_t hidden_cap);
/* lsd_model_unet, out holding out_cap floats (the *_n rule above). */
LSD_API lsd_status lsd_model_unet_n(lsd_model *model, const float *sample, int batch, int height, int width,
                                    const float *timesteps, int n_timesteps, const float *context, int n_ctx,
                                    float *out, size_t out_cap);
/* lsd_model_vae_encode, mean_out and logvar_out (when given) holding out_cap floats each (the *_n rule above). */
LSD_API lsd_status lsd_model_vae_encode_n(lsd_model *model, const float *image, int batch, int height, int width,
                                          float *mean_out, float *logvar_out, size_t out_cap);
/* lsd_model_vae_decode, image_out holding image_cap floats (the *_n rule above). */
LSD_API lsd_status lsd_model_vae_decode_n(lsd_model *model, const float *latents, int batch, int height, int width,
                                          float *image_out, size_t image_cap);

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
    /* ---- 0.2 ---- */
    lsd_prompt_syntax prompt_syntax;     /* default LSD_PROMPT_PLAIN; both find lsd_model_add_embedding's tokens */
} lsd_sample_params;
LSD_API void lsd_sample_params_init(lsd_sample_params *p);

/* images_out: batch lsd_image (release each); latents_out (optional): [batch,C,h,w] final latents.
 * images_out may be NULL when latents_out is given: the VAE decode is then skipped. */
LSD_API lsd_status lsd_sample(lsd_model *model, const lsd_sample_params *params, lsd_image *images_out,
                              float *latents_out);
/* 0.2: lsd_sample with the room of its outputs: images_out holds n_images lsd_image (at least batch), latents_out
 * latents_cap floats (at least batch x C x height/f x width/f); less is LSD_ERR_INVALID_ARGUMENT naming the buffer,
 * before any work. */
LSD_API lsd_status lsd_sample_n(lsd_model *model, const lsd_sample_params *params, lsd_image *images_out,
                                size_t n_images, float *latents_out, size_t latents_cap);

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
/* Names as `lora-sd train --lora_targets` takes them: "attn", "ff", "proj", "conv", "te_attn", "te_mlp". */
LSD_API const char *lsd_lora_target_name(lsd_lora_target t);
/* "attn,ff,te_attn" -> the OR of the bits; an unknown or empty list is LSD_ERR_INVALID_ARGUMENT naming it. */
LSD_API lsd_status lsd_lora_targets_from_names(const char *list, unsigned *out);

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
    /* 0.2: how many of applied_modules are LyCORIS LoHa, LoKr and full diffs (the rest are LoRA/LoCon), and how
     * many of them all carry DoRA's dora_scale (docs/lora.md "LyCORIS") */
    int loha_modules;  /* LoHa (hada_w1_a ...) */
    int lokr_modules;  /* LoKr (lokr_w1 ...) */
    int full_modules;  /* full diffs (diff, diff_b) */
    int dora_modules;  /* of every kind, those with dora_scale */
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

/* The set keeps a reference to model (lsd_model_free may come first); a trainer keeps one to the set. */
LSD_API lsd_status lsd_adapter_set_new(lsd_model *model, lsd_adapter_set **out);
LSD_API lsd_status lsd_adapter_set_add(lsd_adapter_set *set, const char *name, const lsd_lora_params *params);
LSD_API lsd_status lsd_adapter_set_load(lsd_adapter_set *set, const char *name, const char *path,
                                        const lsd_lora_params *params, lsd_load_report *report);
/* Writes adapter `name` atomically; AUTO means kohya. The tensors keep the adapter's dtype (float32 unless the model is
 * float16/bfloat16). The kohya format carries kohya's ss_network_* and base-model keys and the sshs_* hashes. */
LSD_API lsd_status lsd_adapter_set_save(const lsd_adapter_set *set, const char *name, const char *path,
                                        lsd_lora_format format);

/* How lsd_adapter_set_save_ex writes a file. */
typedef struct lsd_lora_save_params {
    size_t struct_size;
    lsd_lora_format format;             /* LSD_LORA_FORMAT_KOHYA (default; AUTO means kohya) */
    lsd_dtype dtype;                    /* of the tensors (kohya's alpha too) in the file: LSD_F32 (default), F16, BF16 */
    const char *const *metadata_keys;   /* extra __metadata__ entries (e.g. kohya's ss_* training keys); an entry */
    const char *const *metadata_values; /* replaces the format's own entry of the same key */
    size_t n_metadata;
} lsd_lora_save_params;
LSD_API void lsd_lora_save_params_init(lsd_lora_save_params *p);
/* lsd_adapter_set_save with a dtype and metadata (written in key order). In the kohya format, sshs_model_hash and
 * sshs_legacy_hash are computed last, as kohya's save_weights does (docs/train.md "Saved files and metadata"). */
LSD_API lsd_status lsd_adapter_set_save_ex(const lsd_adapter_set *set, const char *name, const char *path,
                                           const lsd_lora_save_params *params);
LSD_API lsd_status lsd_adapter_set_set_weights(lsd_adapter_set *set, const char *name, float weight, float te_weight);
LSD_API lsd_status lsd_adapter_set_enable(lsd_adapter_set *set, const char *name, int enabled);
LSD_API lsd_status lsd_adapter_set_remove(lsd_adapter_set *set, const char *name);
LSD_API lsd_status lsd_adapter_set_fuse(lsd_adapter_set *set);
LSD_API lsd_status lsd_adapter_set_unfuse(lsd_adapter_set *set);
LSD_API int lsd_adapter_set_count(const lsd_adapter_set *set);
LSD_API lsd_status lsd_adapter_set_get_info(const lsd_adapter_set *set, int index, lsd_adapter_info *info);
/* The whole name of adapter `index` (lsd_adapter_info.name holds its first 127 bytes); *name is borrowed from the
 * set, valid until the adapter is removed or the set freed. */
LSD_API lsd_status lsd_adapter_set_get_name(const lsd_adapter_set *set, int index, const char **name);
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

LSD_API lsd_status lsd_safetensors_open(const char *path, lsd_safetensors **out);
LSD_API size_t lsd_safetensors_count(const lsd_safetensors *f);
LSD_API lsd_status lsd_safetensors_tensor_info(const lsd_safetensors *f, size_t index, lsd_tensor_info *info);
/* The whole name of tensor `index` (lsd_tensor_info.name holds its first 255 bytes); *name is borrowed from f, valid
 * until lsd_safetensors_close, as lsd_safetensors_metadata's strings are. */
LSD_API lsd_status lsd_safetensors_tensor_name(const lsd_safetensors *f, size_t index, const char **name);
LSD_API size_t lsd_safetensors_metadata_count(const lsd_safetensors *f);
LSD_API lsd_status lsd_safetensors_metadata(const lsd_safetensors *f, size_t index, const char **key,
                                            const char **value);
LSD_API void lsd_safetensors_close(lsd_safetensors *f);

/* ---------------------------------------------------------------------------------------------- */
/* Datasets: a folder of captioned images                                                          */

typedef enum lsd_dataset_layout {
    LSD_LAYOUT_AUTO = 0,
    LSD_LAYOUT_FOLDER = 1,     /* images with captions beside them, or metadata.jsonl (diffusers imagefolder) */
    LSD_LAYOUT_SEED = 2,       /* Images/ + ImageCaptions/ side by side */
    LSD_LAYOUT_KOHYA = 3,      /* N_name/ subfolders, N repeats */
    LSD_LAYOUT_DREAMBOOTH = 4  /* uncaptioned instance images + instance_prompt */
} lsd_dataset_layout;
LSD_API const char *lsd_dataset_layout_name(lsd_dataset_layout l);
LSD_API lsd_status lsd_dataset_layout_from_name(const char *name, lsd_dataset_layout *out);

/* A folder of images (.png, .jpg, .jpeg, .webp, nested folders included) with captions, in one of the layouts
 * above (docs/train.md "Data"): captions beside the images (`name.caption` / `name.txt`), a `metadata.jsonl`
 * (diffusers imagefolder, wins when present), Images/ + ImageCaptions/, kohya's N_name/ folders, or DreamBooth's
 * instance (+ class) folders. Items are in path order (kohya: folder by folder, regularisation folders last). */
typedef struct lsd_dataset_params {
    size_t struct_size;
    int resolution;              /* shortest side is resized to this, then cropped square; default 512 */
    int center_crop;             /* 1: center crop; 0 (default): random crop */
    int random_flip;             /* 1: horizontal flip with probability 0.5; default 0 */
    int allow_empty_captions;    /* 1: an image without caption gets ""; default 0 (LSD_ERR_FORMAT) */
    const char *caption_extension; /* NULL (default): ".caption", else ".txt" (kohya); set: only that one */
    const char *caption_column;  /* metadata.jsonl key of the caption; default "text" */
    /* ---- 0.2: layouts, captions, buckets (docs/train.md "Data"); the names are kohya's / diffusers' flags ---- */
    lsd_dataset_layout layout;      /* LSD_LAYOUT_AUTO (default): detected from the folder */
    const char *caption_data_dir;   /* seed layout: the captions folder when it is not Images/'s sibling ImageCaptions/ */
    const char *reg_data_dir;       /* kohya: regularisation images, in the N_name layout */
    const char *instance_prompt;    /* DreamBooth: the caption of every instance image */
    const char *class_data_dir;     /* prior preservation: class images (captioned by class_prompt), any layout */
    const char *class_prompt;
    int keep_tokens;                /* shuffle_caption keeps this many leading tags in place; default 0 */
    const char *caption_separator;  /* tag separator for shuffle_caption / keep_tokens; default ", " */
    int shuffle_caption;            /* default 0 */
    float caption_dropout_rate;     /* probability that an item's caption is replaced by ""; default 0 */
    int enable_bucket;              /* aspect-ratio buckets (kohya); default 0: square crops */
    int min_bucket_reso;            /* default 256 */
    int max_bucket_reso;            /* default 1024 */
    int bucket_reso_steps;          /* default 64 */
    int bucket_no_upscale;          /* default 0 */
    lsd_progress_fn progress;       /* stage LSD_STAGE_CHECK while lsd_dataset_verify decodes images */
    void *progress_user;
} lsd_dataset_params;
LSD_API void lsd_dataset_params_init(lsd_dataset_params *p);

/* One transformed item (set struct_size = sizeof before lsd_dataset_get). pixels [3, height, width] float32 in
 * [-1, 1], malloc'd by the library and freed with lsd_dataset_item_release; caption and path are borrowed from the
 * dataset (valid until lsd_dataset_free). */
typedef struct lsd_dataset_item {
    size_t struct_size;
    const char *caption;
    const char *path;
    int width, height;
    float *pixels;
    int crop_left, crop_top;     /* in the resized image */
    int flipped;
    /* ---- 0.2 ---- */
    int bucket;                  /* index of the item's bucket (0 without buckets) */
    int original_width, original_height;
    int is_class;                /* a class / regularisation image (prior preservation) */
    int repeats;                 /* times the item is drawn per epoch (kohya's N_ prefix; 1 otherwise) */
} lsd_dataset_item;

/* Reads the listing, every caption and every image's header (its size; not the pixels); keeps the paths. Every
 * bad file (no caption, empty caption, caption not UTF-8, unreadable header, image too small for its bucket) is
 * listed with its reason in one error (the first 20, then "and N more"); the status is the first one's. dir is the
 * train_data_dir (DreamBooth: the instance_data_dir). */
LSD_API lsd_status lsd_dataset_open(const char *dir, const lsd_dataset_params *params, lsd_dataset **out);
/* Items: training images, then class / regularisation images (is_class). */
LSD_API size_t lsd_dataset_size(const lsd_dataset *ds);
/* Loads and transforms item `index` at the dataset's resolution (its bucket with enable_bucket); `seed` drives
 * the random crop, the flip and the pick of a list-valued caption (same seed, same item). The caption is the one
 * stored (no shuffle or dropout: those happen when the trainer draws the item). */
LSD_API lsd_status lsd_dataset_get(lsd_dataset *ds, size_t index, uint64_t seed, lsd_dataset_item *item);
LSD_API void lsd_dataset_item_release(lsd_dataset_item *item);
LSD_API void lsd_dataset_free(lsd_dataset *ds);
/* Decodes every image once (progress: LSD_STAGE_CHECK through the params' progress callback, which may cancel)
 * so that a bad file stops a run before its first step rather than in the middle. Every bad file is listed in one
 * error as lsd_dataset_open does. n_bad (optional) = how many failed. */
LSD_API lsd_status lsd_dataset_verify(lsd_dataset *ds, size_t *n_bad);

/* What lsd_dataset_open found, for a summary before training. */
typedef struct lsd_dataset_info {
    size_t struct_size;
    lsd_dataset_layout layout;   /* the one used (detected when LSD_LAYOUT_AUTO) */
    size_t images;               /* training images */
    size_t class_images;         /* DreamBooth class images / kohya regularisation images */
    size_t draws;                /* training images x repeats: what an epoch draws */
    size_t class_draws;          /* kohya: regularisation draws per epoch, balanced to `draws` as kohya does;
                                    class_data_dir: its images (prior preservation pairs them with the others) */
    int folders;                 /* lsd_dataset_folder_info indices */
    int buckets;                 /* lsd_dataset_bucket_info indices (1 without enable_bucket) */
} lsd_dataset_info;
LSD_API lsd_status lsd_dataset_get_info(const lsd_dataset *ds, lsd_dataset_info *info);

/* A folder of the layout (kohya's N_name/, Images/, the instance or class folder, the train_data_dir). */
typedef struct lsd_dataset_folder {
    size_t struct_size;
    const char *path;            /* borrowed from the dataset */
    const char *caption;         /* kohya: the folder's caption (name after N_); DreamBooth: the prompt; else NULL */
    size_t images;
    int repeats;                 /* kohya's N (1 otherwise) */
    int is_class;
} lsd_dataset_folder;
LSD_API lsd_status lsd_dataset_folder_info(const lsd_dataset *ds, int index, lsd_dataset_folder *out);

/* Buckets in (width, height) order: enable_bucket's aspect-ratio buckets that hold images, or the one
 * resolution x resolution square. count = draws per epoch of the bucket's items (repeats included; class_data_dir's
 * images follow the bucket of the image they are paired with and are not counted). */
LSD_API int lsd_dataset_bucket_count(const lsd_dataset *ds);
LSD_API lsd_status lsd_dataset_bucket_info(const lsd_dataset *ds, int index, int *width, int *height, size_t *count);

/* DreamBooth prior preservation (diffusers' train_dreambooth_lora.py): class_data_dir is topped up to
 * num_class_images images sampled from the base model with class_prompt, before the dataset is opened. */
typedef struct lsd_class_images_params {
    size_t struct_size;
    const char *class_data_dir;  /* created when missing; its images (.png .jpg .jpeg .webp) count as present */
    const char *class_prompt;
    int num_class_images;        /* 100 */
    int sample_batch_size;       /* 4: images per lsd_sample call */
    int steps;                   /* 50 (the pipeline's default num_inference_steps) */
    float guidance_scale;        /* 7.5 (the pipeline's default) */
    lsd_sampler sampler;         /* PNDM (SD 1.x's scheduler) */
    int resolution;              /* 0: the model's own size (UNet sample_size x VAE factor: 512 for SD 1.x) */
    uint64_t seed;               /* image k (0-based over the folder) is drawn from (seed, k) */
    lsd_progress_fn progress;    /* LSD_STAGE_CLASS_IMAGES after each saved batch (step = images saved, total =
                                    images missing); the sampler's own stages pass through */
    void *progress_user;
} lsd_class_images_params;
LSD_API void lsd_class_images_params_init(lsd_class_images_params *p);
/* Saves the missing images as class_data_dir/<k>-<sha1 of the RGB bytes>.png (k counts on from the images already
 * there), each written atomically as soon as its batch is sampled: a cancelled or failed run leaves whole files
 * that the next run counts. n_generated (optional) = images written by this call, also on failure. */
LSD_API lsd_status lsd_generate_class_images(lsd_model *model, const lsd_class_images_params *params,
                                             int *n_generated);

/* ---------------------------------------------------------------------------------------------- */
/* Training (diffusers' examples/text_to_image/train_text_to_image_lora.py)                        */

typedef enum lsd_lr_scheduler {
    LSD_LR_CONSTANT = 0,
    LSD_LR_CONSTANT_WITH_WARMUP = 1,
    LSD_LR_LINEAR = 2,
    LSD_LR_COSINE = 3,
    LSD_LR_COSINE_WITH_RESTARTS = 4,
    LSD_LR_POLYNOMIAL = 5
} lsd_lr_scheduler;
/* diffusers' names: "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial". */
LSD_API const char *lsd_lr_scheduler_name(lsd_lr_scheduler s);
LSD_API lsd_status lsd_lr_scheduler_from_name(const char *name, lsd_lr_scheduler *out);

typedef enum lsd_prediction_type {
    LSD_PREDICTION_FROM_SCHEDULER = 0, /* the model's scheduler_config.json (default) */
    LSD_PREDICTION_EPSILON = 1,
    LSD_PREDICTION_V = 2               /* "v_prediction" */
} lsd_prediction_type;

typedef enum lsd_optimizer {
    LSD_OPTIM_ADAMW = 0,
    LSD_OPTIM_LION = 1,
    LSD_OPTIM_PRODIGY = 2,
    LSD_OPTIM_ADAFACTOR = 3,
    LSD_OPTIM_SGD = 4
} lsd_optimizer;
/* "adamw", "lion", "prodigy", "adafactor", "sgd" (case-insensitive; "AdamW8bit" etc. are not accepted). */
LSD_API const char *lsd_optimizer_name(lsd_optimizer o);
LSD_API lsd_status lsd_optimizer_from_name(const char *name, lsd_optimizer *out);

/* ---- Data-parallel training (docs/train.md "Several processes and machines") ----
 * A group of processes, on one machine or several, each with its own model, adapter set, dataset and trainer, that
 * train one adapter as PyTorch's DistributedDataParallel with a DistributedSampler does: every rank starts from
 * rank 0's LoRA weights, draws its own share of each global batch (world_size x train_batch_size items of the
 * one epoch shuffle), and the gradients are summed over the group (libtorch's c10d: Gloo; NCCL on CUDA builds)
 * before clipping and the optimizer step, so that N processes of batch B train as one process of batch N x B.
 * Only rank 0 writes checkpoints, epoch files and validation images. */
typedef struct lsd_dist lsd_dist;
typedef struct lsd_dist_params {
    size_t struct_size;
    int rank;                /* 0: this process's rank in [0, world_size) */
    int world_size;          /* 1 */
    int local_rank;          /* 0: rank on this machine (with nccl: the CUDA device cuda:local_rank) */
    const char *backend;     /* "gloo" (NULL: gloo); "nccl" on CUDA builds made with NCCL=1 */
    const char *master_addr; /* "127.0.0.1": the host of rank 0, which serves the rendezvous TCPStore; Gloo's
                                sockets use the address of GLOO_SOCKET_IFNAME's interface, else this one when it is
                                a loopback address, else the host name's */
    int master_port;         /* 29500 */
    const char *init_file;   /* non-NULL: rendezvous through a FileStore at this path (on a file system every rank
                                sees, fresh for each run) instead of the TCPStore */
    double timeout_seconds;  /* 300: the longest a rank waits for the others (rendezvous, each collective); a rank
                                that died is noticed at once, one that hangs after this */
} lsd_dist_params;
LSD_API void lsd_dist_params_init(lsd_dist_params *p);
/* torchrun's environment into p: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (a variable not set leaves
 * its field). A value that is not a number in range is LSD_ERR_INVALID_ARGUMENT naming the variable. */
LSD_API lsd_status lsd_dist_params_from_env(lsd_dist_params *p);
/* Joins the group: blocks until every rank has joined (or timeout_seconds), checking that they agree on
 * world_size and that no rank is claimed twice. Failures name the address, port, file or rank at fault. The
 * strings of params are not kept. */
LSD_API lsd_status lsd_dist_new(const lsd_dist_params *params, lsd_dist **out);
LSD_API int lsd_dist_rank(const lsd_dist *d);       /* 0 for NULL */
LSD_API int lsd_dist_world_size(const lsd_dist *d); /* 1 for NULL */
LSD_API void lsd_dist_free(lsd_dist *d);

/* What the trainer reports after each optimizer step (val_loss NaN) and each validation (loss NaN). */
typedef struct lsd_train_metrics {
    size_t struct_size;
    int step;                 /* optimizer steps done */
    double epoch;             /* fractional epoch */
    double loss;              /* mean loss of the step; NaN in a validation report */
    double val_loss;          /* validation loss; NaN in a step report */
    double lr_unet, lr_text_encoder; /* learning rates of the groups (NaN when the group is not trained) */
    double grad_norm;         /* before clipping */
    double images_per_second;
    double elapsed_seconds;
    const char *sample_path;  /* validation: the grid PNG written, or NULL */
    /* ---- 0.2: data-parallel training ---- */
    double allreduce_seconds; /* time the step spent summing gradients over the group (0 in one process) */
    int world_size;           /* processes of the group (1 without one); images_per_second counts them all */
} lsd_train_metrics;
typedef void (*lsd_train_metrics_fn)(const lsd_train_metrics *m, void *user);

/* Field names are the script's flags; defaults are the script's. */
typedef struct lsd_train_params {
    size_t struct_size;
    double learning_rate;            /* 1e-4 */
    lsd_lr_scheduler lr_scheduler;   /* constant */
    int lr_warmup_steps;             /* 500 */
    int gradient_accumulation_steps; /* 1 */
    int max_train_steps;             /* 1000: the length of the LR schedule and of lsd_trainer_step's run */
    int train_batch_size;            /* 16 */
    int resolution;                  /* 512; overrides the dataset's */
    int center_crop;                 /* 0 */
    int random_flip;                 /* 0 */
    lsd_dtype mixed_precision;       /* LSD_F32 ("no", default); LSD_BF16 where the device computes it natively (CUDA,
                                        CPUs with AVX512-BF16 or AMX-BF16), LSD_F16 on CUDA (dynamic loss scaling).
                                        The model must be loaded in that dtype; the adapter stays float32. Elsewhere:
                                        a warning and fp32 (docs/train.md "Memory and precision") */
    int gradient_checkpointing;      /* recompute each UNet block's activations in backward instead of keeping
                                        them: less memory, ~30 % more time (docs/train.md) */
    float snr_gamma;                 /* 0 = plain MSE; > 0 = min-SNR weighting (5.0 recommended) */
    float noise_offset;              /* 0 */
    lsd_prediction_type prediction_type;
    float max_grad_norm;             /* 1.0; <= 0 disables clipping */
    double adam_beta1;               /* 0.9 */
    double adam_beta2;               /* 0.999 */
    double adam_weight_decay;        /* 1e-2 */
    double adam_epsilon;             /* 1e-8 */
    uint64_t seed;                   /* 0 */
    int checkpointing_steps;         /* 500; <= 0: no automatic checkpoints */
    int checkpoints_total_limit;     /* 0 = keep all */
    const char *output_dir;          /* where checkpoint-<step>/ go; NULL: no automatic checkpoints */
    int rank;                        /* 4: used when the adapter must be created (see lsd_trainer_new) */
    int lr_num_cycles;               /* cosine_with_restarts: 1 */
    float lr_power;                  /* polynomial: 1.0 */
    lsd_progress_fn progress;        /* stage TRAIN_STEP after each step, CHECKPOINT after each save */
    void *progress_user;
    /* ---- 0.2: data (docs/train.md "Data") ---- */
    int with_prior_preservation;     /* DreamBooth: each batch pairs instance and class items; default 0 */
    float prior_loss_weight;         /* 1.0: loss = instance MSE + prior_loss_weight * class MSE */
    int cache_latents;               /* VAE posterior (mean, std) per item computed once, in memory */
    int cache_latents_to_disk;       /* ... and kept in safetensors files reused by later runs */
    const char *cache_dir;           /* NULL: beside each image */
    int num_train_epochs;            /* > 0: max_train_steps = epochs * steps per epoch (kohya, diffusers) */
    /* ---- 0.2: what is trained, optimizer, EMA (docs/train.md "The run") ---- */
    unsigned lora_targets;           /* lsd_lora_target bits of a new adapter; 0: UNet attention (+ TE attention
                                        and MLP with train_text_encoder) */
    float network_alpha;             /* alpha of a new adapter; <= 0: rank */
    int conv_dim;                    /* LoCon conv rank of a new adapter; 0: rank */
    float conv_alpha;                /* <= 0: conv_dim */
    int train_text_encoder;          /* train the adapter's text-encoder modules; default 0 */
    int train_unet;                  /* train the adapter's UNet modules; default 1 */
    double unet_lr;                  /* 0: learning_rate */
    double text_encoder_lr;          /* 0: learning_rate */
    lsd_optimizer optimizer;         /* LSD_OPTIM_ADAMW */
    const char *optimizer_args;      /* kohya's --optimizer_args, "key=value key=value"; NULL: the reference's defaults */
    int use_ema;                     /* exponential moving average of the LoRA weights */
    float ema_decay;                 /* 0.9999 (diffusers' EMAModel) */
    int ema_warmup;                  /* diffusers' use_ema_warmup: decay = 1 - (1 + step / inv_gamma)^-power */
    float ema_inv_gamma, ema_power;  /* 1.0, 2/3 */
    /* ---- 0.2: validation, metrics, saving ---- */
    const char *const *validation_prompts; /* sampled every validation_steps (and at the last step) into
                                              output_dir/samples/step-<step>.png, one grid: a row per prompt */
    int n_validation_prompts;
    int num_validation_images;       /* 4 per prompt */
    int validation_steps;            /* 100; <= 0: never */
    uint64_t validation_seed;        /* 0: the images' seed and the validation loss's noise */
    float validation_split;          /* fraction of the dataset held out for the validation loss (chosen from
                                        `seed`, never trained on); default 0 */
    lsd_dataset *validation_dataset; /* or held-out items of their own (the trainer keeps a reference) */
    lsd_train_metrics_fn metrics;    /* after every optimizer step and every validation */
    void *metrics_user;
    lsd_dtype save_precision;        /* dtype of the saved LoRA tensors: LSD_F32 (default), LSD_F16, LSD_BF16 */
    int save_every_n_epochs;         /* 0: off */
    const char *output_name;         /* base name of saved files; default "pytorch_lora_weights" */
    const char *training_comment;    /* ss_training_comment */
    /* ---- 0.2: how validation images are sampled (docs/train.md "Validation") ---- */
    int validation_inference_steps;  /* 30, as diffusers' validation pipeline call */
    float validation_guidance_scale; /* 7.5 */
    lsd_sampler validation_sampler;  /* LSD_SAMPLER_PNDM (SD 1.x's scheduler, what diffusers' pipeline uses) */
    /* ---- 0.2: precision (docs/train.md "Memory and precision") ---- */
    int mixed_precision_strict;      /* 1: a mixed_precision the device cannot compute fast fails with
                                        LSD_ERR_UNSUPPORTED instead of training in fp32 */
    /* ---- 0.2: data-parallel training (docs/train.md "Several processes and machines") ---- */
    lsd_dist *dist;                  /* NULL: one process. The trainer keeps a reference (lsd_dist_free may come
                                        first). Every rank must give the same params (checked: seed, batch,
                                        accumulation, steps) */
} lsd_train_params;
LSD_API void lsd_train_params_init(lsd_train_params *p);
/* What lsd_trainer_new checks of params alone, optimizer_args included, without a model: for a front end to refuse
 * bad settings before it loads anything. LSD_ERR_INVALID_ARGUMENT naming the field or the optimizer_args key. */
LSD_API lsd_status lsd_train_params_check(const lsd_train_params *params);

/* One batch given by the caller (lsd_trainer_step_batch). Either images [batch,3,height,width] in [-1,1]
 * (VAE-encoded, posterior sampled with the trainer's generator, times the scaling factor) or latents
 * [batch,C,height,width] already scaled; either captions (batch strings) or context [batch,n_ctx,context_dim].
 * noise [batch,C,h,w] and timesteps [batch] are optional: NULL draws them with the trainer's generator. */
typedef struct lsd_train_batch {
    size_t struct_size;
    int batch;
    int height, width;         /* of images, or of latents when latents are given */
    const float *images;
    const float *latents;
    const char *const *captions;
    const float *context;
    int n_ctx;
    const float *noise;
    const int64_t *timesteps;
    /* ---- 0.2 ---- */
    const int *is_class;       /* [batch] or NULL: non-zero marks a class / regularisation item (see docs/train.md
                                  "Prior preservation": with_prior_preservation picks DreamBooth's or kohya's loss) */
} lsd_train_batch;

/* Optimizer steps in one epoch of `ds` under params (batch size, accumulation, buckets, resolution, prior
 * preservation): the batches an epoch makes (kohya: per bucket; diffusers: ceil(draws / train_batch_size)),
 * divided by gradient_accumulation_steps, rounded up. */
LSD_API lsd_status lsd_dataset_steps_per_epoch(const lsd_dataset *ds, const lsd_train_params *params, int *out);

/* Creates dir and its missing parents and checks that a file can be created and removed in it, so a run fails
 * before its first step, not at its first save. Errors (LSD_ERR_IO) name the component at fault: a parent that
 * is a file, a directory that cannot be created or written. lsd_trainer_new does this for params->output_dir. */
LSD_API lsd_status lsd_prepare_output_dir(const char *dir);

/* Trains adapter `adapter_name` of set (which must be trainable: made by lsd_adapter_set_add; when the set has
 * no adapter of that name one is added with params->rank, the UNet attention targets and `seed`). dataset may be
 * NULL when only lsd_trainer_step_batch is used. The trainer keeps references to model, set, dataset and
 * params->validation_dataset, which may be freed before or after it (params' strings are copied). Checked here,
 * before any step: the dataset's plan at this resolution (buckets, prior preservation's class images), sizes the
 * UNet takes, output_dir (lsd_prepare_output_dir); captions longer than the text encoder reads are logged as
 * warnings, once per caption file. */
LSD_API lsd_status lsd_trainer_new(lsd_model *model, lsd_adapter_set *set, const char *adapter_name,
                                   lsd_dataset *dataset, const lsd_train_params *params, lsd_trainer **out);
/* One optimizer step: gradient_accumulation_steps batches of train_batch_size from the dataset (shuffled per
 * epoch with the seed). loss_out (optional) = mean loss of the step. A NaN/Inf loss or gradient returns
 * LSD_ERR_NUMERIC naming the step, with the weights, optimizer state and step count unchanged. Then reports the
 * metrics, saves checkpoint-<step> in output_dir every checkpointing_steps and validates every validation_steps
 * (and at max_train_steps); a failure of these is returned with the step counted (lsd_trainer_get_step). */
LSD_API lsd_status lsd_trainer_step(lsd_trainer *tr, float *loss_out);
/* One optimizer step on the caller's batch (no accumulation). */
LSD_API lsd_status lsd_trainer_step_batch(lsd_trainer *tr, const lsd_train_batch *batch, float *loss_out);
/* Optimizer steps done so far. */
LSD_API int lsd_trainer_get_step(const lsd_trainer *tr);
/* The run's length in optimizer steps: max_train_steps, or num_train_epochs x the dataset's steps per epoch. */
LSD_API int lsd_trainer_get_max_train_steps(const lsd_trainer *tr);
/* Writes dir/ (created, or replaced as a whole): pytorch_lora_weights.safetensors (kohya names) and
 * training_state.safetensors (exact LoRA tensors, optimizer state, EMA weights, trainer step, seed). The directory
 * appears complete or not at all. */
LSD_API lsd_status lsd_trainer_save_checkpoint(lsd_trainer *tr, const char *dir);
/* Saves output_dir/checkpoint-<step> as the automatic saves do: first removing the oldest checkpoint-<n>
 * directories so that at most checkpoints_total_limit remain after the save (for a loop that stops early). */
LSD_API lsd_status lsd_trainer_save_step_checkpoint(lsd_trainer *tr);
/* Writes the adapter being trained to path (format; AUTO = kohya) with save_precision's dtype, kohya's ss_* training
 * metadata of the run so far (learning rates, steps, epochs, dataset, base model, ...) and, in the kohya format,
 * the sshs_* hashes (docs/train.md "Saved files and metadata"). Atomic. */
LSD_API lsd_status lsd_trainer_save_lora(lsd_trainer *tr, const char *path, lsd_lora_format format);
/* Restores what save_checkpoint wrote; training then continues exactly as without the interruption. A checkpoint
 * of another rank, seed, validation_split or optimizer, or past max_train_steps, or without EMA weights for a
 * trainer with use_ema, is LSD_ERR_INVALID_ARGUMENT naming both values, before anything changes. */
LSD_API lsd_status lsd_trainer_resume(lsd_trainer *tr, const char *dir);
/* Runs a validation now (what lsd_trainer_step does every validation_steps): the image grid when there are
 * validation_prompts and an output_dir, the loss on the held-out items when there are any (val_loss_out, optional,
 * NaN without). Reports through the metrics callback; changes nothing the training depends on. */
LSD_API lsd_status lsd_trainer_validate(lsd_trainer *tr, double *val_loss_out);
/* With use_ema: exchanges the adapter's weights and the EMA weights (diffusers' EMAModel store + copy_to; the
 * second call restores). While the EMA weights are in, stepping, saving checkpoints and resuming are refused
 * (LSD_ERR_INVALID_ARGUMENT): save the adapter (lsd_adapter_set_save) or sample with it, then swap back. */
LSD_API lsd_status lsd_trainer_swap_ema(lsd_trainer *tr);
LSD_API void lsd_trainer_free(lsd_trainer *tr);

#ifdef __cplusplus
}
#endif
#endif
