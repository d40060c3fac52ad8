/* The insides of lsd_model, shared by the loaders, the sampler, LoRA and the trainer. */
#ifndef LSD_MODEL_MODEL_H
#define LSD_MODEL_MODEL_H

#include "core/error.h"
#include "core/refcount.h"
#include "model/config.h"
#include "nn/clip_text.h"
#include "nn/unet.h"
#include "nn/vae.h"
#include "text/clip_tokenizer.h"
#include "text/embeddings.h"
#include "text/prompt_chunks.h"

struct lsd_model {
    lsdi_ref ref;           /* the caller's, plus one per adapter set and trainer on the model */
    lsdi_errbox err;        /* lsd_model_last_error */
    lsdi_unet *unet;
    lsdi_vae *vae;
    lsdi_clip_text *text;
    lsdi_tokenizer *tokenizer;
    lsdi_embeddings embeddings; /* textual inversion, lsd_model_add_embedding */
    char *config_dir;       /* where the configs and tokenizer came from (copied by lsd_model_save) */
    char *scheduler_config; /* path of scheduler/scheduler_config.json */
    lsd_dtype dtype;
    lsdt_dtype tdtype;
    char device[32];
    char name[256];         /* a path component (NAME_MAX bytes at most): whole, for lsd_model_get_name */
    char hash[16];
    int clip_skip;
    /* What kohya records of the base model (ss_sd_model_name, ss_sd_model_hash, ss_new_sd_model_hash): the base name
     * of the path as given (the id of a hub model), and for a single file its SHA-256 and A1111's old 8-digit hash. */
    char source_name[256];
    char sha256[65];
    char legacy_hash[9];
};

/* Another reference to m (for a handle that depends on it); lsd_model_free drops one. */
lsd_model *lsdi_model_retain(lsd_model *m);
/* Records a failed call's status and message on m (lsd_model_last_error); returns st. */
lsd_status lsdi_model_record(const lsd_model *m, lsd_status st);

/* LSD_ERR_INVALID_ARGUMENT naming fn and vae_decode_only when m was loaded without the VAE encoder: every caller
 * that would encode images (or write the whole VAE) asks first, before any work. */
lsd_status lsdi_model_check_encoder(const lsd_model *m, const char *fn);

/* Caller's params (any struct_size, or NULL) -> a complete copy with defaults for the fields not given. */
lsd_status lsdi_model_params_read(const lsd_model_params *in, lsd_model_params *out);

/* Builds the three networks (empty weight slots), tokenizer and scheduler path from a diffusers-style folder of
 * configs (unet/, vae/, text_encoder/ config.json, tokenizer/, scheduler/). */
lsd_status lsdi_model_new(const char *config_dir, const lsd_model_params *p, lsd_model **out);

/* Loads a diffusers folder (model_index.json + component folders with .safetensors weights). */
lsd_status lsdi_model_load_diffusers(const char *dir, const lsd_model_params *p, lsd_model **out);

/* Loads an original-layout single file (.safetensors, .ckpt, .pt); configs and tokenizer from p->config_dir or the
 * installed SD 1.x set. */
lsd_status lsdi_model_load_single_file(const char *path, const lsd_model_params *p, lsd_model **out);

/* Seeded random weights for every slot of the table (random_init.c): kaiming-uniform (bound 1/sqrt(fan_in),
 * torch's default) for linear/conv weights, normal(0, 0.02) for embeddings, ones for norm weights, zeros for
 * biases. The values are drawn for each entry of `order` in turn (p itself, or a larger table whose entries p lacks
 * are drawn and dropped one at a time, so p gets what a table of all of them would). */
lsd_status lsdi_params_init_random(lsdi_params *p, const lsdi_params *order, lsdt_generator *g, lsdt_dtype dtype,
                                   const char *device);

/* Reports load step `step` of `total` (started at monotonic time t0, see lsdi_model_clock) to the caller's
 * progress callback; LSD_ERR_CANCELLED if it asks to stop. */
lsd_status lsdi_model_progress(const lsd_model_params *p, int step, int total, double t0);
double lsdi_model_clock(void);

/* Converts every weight to dt in place. Only tests use it, for float64 (which the public lsd_dtype does not offer):
 * finite-difference gradient checks need its precision. */
lsd_status lsdi_model_to_dtype(lsd_model *m, lsdt_dtype dt);

/* The text encoder's hidden states [batch, max_tokens, hidden] of the captions in scope s, at the model's clip_skip
 * (kohya: the output of layer -clip_skip, then final_layer_norm), under the caller's grad mode: the trainer calls it
 * with autograd on to train text-encoder LoRA. Errors of the ops are the scope's. */
lsd_status lsdi_model_text_context(lsdt_scope *s, lsd_model *m, const char *const *captions, int batch,
                                   lsdt_tensor **out);

/* prompt_encode.c: prompt -> chunks with m's tokenizer, embeddings and window (max_positions). */
lsd_status lsdi_model_prompt_chunks(const lsd_model *m, const char *prompt, int syntax, lsdi_prompt_chunks *out);
/* n prompts' chunks (all with the same n_chunks C) -> *out [n, C * window, hidden] in scope s: each chunk through
 * the text encoder (embeddings' vectors in place of their positions' token rows), hidden states concatenated along
 * the tokens; with emphasis, A1111's "Original" emphasis per chunk: z * weight, then * mean(z) / mean(z * weight). */
lsd_status lsdi_model_chunks_context(lsdt_scope *s, lsd_model *m, const lsdi_prompt_chunks *c, int n, int clip_skip,
                                     int emphasis, lsdt_tensor **out);

#endif
