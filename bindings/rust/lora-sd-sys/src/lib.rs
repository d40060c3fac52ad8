//! Raw declarations of liblora_sd's C API (include/lora_sd.h), field for field and in header order. The tests check
//! every struct against the library's `lsd_struct_size` and every function name against the header.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_double, c_float, c_int, c_uint, c_void};

pub type lsd_status = c_int;
pub const LSD_OK: lsd_status = 0;
pub const LSD_ERR_INVALID_ARGUMENT: lsd_status = 1;
pub const LSD_ERR_IO: lsd_status = 2;
pub const LSD_ERR_FORMAT: lsd_status = 3;
pub const LSD_ERR_UNSUPPORTED: lsd_status = 4;
pub const LSD_ERR_SHAPE_MISMATCH: lsd_status = 5;
pub const LSD_ERR_OUT_OF_MEMORY: lsd_status = 6;
pub const LSD_ERR_DEVICE: lsd_status = 7;
pub const LSD_ERR_CANCELLED: lsd_status = 8;
pub const LSD_ERR_NOT_FOUND: lsd_status = 9;
pub const LSD_ERR_NUMERIC: lsd_status = 10;
pub const LSD_ERR_INTERNAL: lsd_status = 11;

pub type lsd_dtype = c_int;
pub type lsd_stage = c_int;
pub const LSD_STAGE_LOAD: lsd_stage = 0;
pub const LSD_STAGE_DENOISE: lsd_stage = 2;
pub const LSD_STAGE_TRAIN_STEP: lsd_stage = 4;
pub type lsd_sampler = c_int;
pub type lsd_prompt_syntax = c_int;
pub const LSD_PROMPT_PLAIN: lsd_prompt_syntax = 0;
pub const LSD_PROMPT_A1111: lsd_prompt_syntax = 1;
pub type lsd_lora_format = c_int;
pub const LSD_LORA_FORMAT_KOHYA: lsd_lora_format = 1;

pub type lsd_struct_id = c_int;
pub const LSD_STRUCT_RUNTIME_INFO: lsd_struct_id = 1;
pub const LSD_STRUCT_PROGRESS: lsd_struct_id = 2;
pub const LSD_STRUCT_IMAGE: lsd_struct_id = 3;
pub const LSD_STRUCT_MODEL_PARAMS: lsd_struct_id = 4;
pub const LSD_STRUCT_MODEL_INFO: lsd_struct_id = 5;
pub const LSD_STRUCT_SAMPLE_PARAMS: lsd_struct_id = 6;
pub const LSD_STRUCT_LORA_PARAMS: lsd_struct_id = 7;
pub const LSD_STRUCT_LOAD_REPORT: lsd_struct_id = 8;
pub const LSD_STRUCT_ADAPTER_INFO: lsd_struct_id = 9;
pub const LSD_STRUCT_DATASET_PARAMS: lsd_struct_id = 12;
pub const LSD_STRUCT_DATASET_INFO: lsd_struct_id = 14;
pub const LSD_STRUCT_TRAIN_METRICS: lsd_struct_id = 17;
pub const LSD_STRUCT_TRAIN_PARAMS: lsd_struct_id = 18;
pub const LSD_STRUCT_TRAIN_BATCH: lsd_struct_id = 19;

#[repr(C)]
pub struct lsd_model {
    _private: [u8; 0],
}
#[repr(C)]
pub struct lsd_dist {
    _private: [u8; 0],
}
#[repr(C)]
pub struct lsd_adapter_set {
    _private: [u8; 0],
}
#[repr(C)]
pub struct lsd_dataset {
    _private: [u8; 0],
}
#[repr(C)]
pub struct lsd_trainer {
    _private: [u8; 0],
}

#[repr(C)]
pub struct lsd_runtime_info {
    pub struct_size: usize,
    pub torch_version: [c_char; 32],
    pub blas: [c_char; 256],
    pub num_threads: c_int,
    pub cuda_device_count: c_int,
    pub cpu_model: [c_char; 128],
    pub cpu_native_bf16: c_int,
}

#[repr(C)]
pub struct lsd_progress {
    pub struct_size: usize,
    pub stage: lsd_stage,
    pub step: c_int,
    pub total: c_int,
    pub elapsed_seconds: c_double,
}
pub type lsd_progress_fn = Option<unsafe extern "C" fn(p: *const lsd_progress, user: *mut c_void) -> c_int>;

#[repr(C)]
pub struct lsd_image {
    pub struct_size: usize,
    pub width: c_int,
    pub height: c_int,
    pub channels: c_int,
    pub data: *mut u8,
}

#[repr(C)]
pub struct lsd_model_params {
    pub struct_size: usize,
    pub device: *const c_char,
    pub dtype: lsd_dtype,
    pub config_dir: *const c_char,
    pub variant: *const c_char,
    pub clip_skip: c_int,
    pub progress: lsd_progress_fn,
    pub progress_user: *mut c_void,
    pub dtype_policy: c_int,
    pub vae_decode_only: c_int,
}

#[repr(C)]
pub struct lsd_model_info {
    pub struct_size: usize,
    pub unet_params: i64,
    pub vae_params: i64,
    pub text_encoder_params: i64,
    pub latent_channels: c_int,
    pub vae_scale_factor: c_int,
    pub context_dim: c_int,
    pub max_tokens: c_int,
    pub scaling_factor: c_float,
    pub dtype: lsd_dtype,
    pub device: [c_char; 32],
    pub name: [c_char; 128],
    pub hash: [c_char; 16],
}

#[repr(C)]
pub struct lsd_sample_params {
    pub struct_size: usize,
    pub prompts: *const *const c_char,
    pub negative_prompts: *const *const c_char,
    pub prompt: *const c_char,
    pub negative_prompt: *const c_char,
    pub batch: c_int,
    pub steps: c_int,
    pub guidance_scale: c_float,
    pub sampler: lsd_sampler,
    pub eta: c_float,
    pub seed: u64,
    pub width: c_int,
    pub height: c_int,
    pub init_latents: *const c_float,
    pub clip_skip: c_int,
    pub vae_tile: c_int,
    pub attention_chunk: c_int,
    pub progress: lsd_progress_fn,
    pub progress_user: *mut c_void,
    pub prompt_syntax: lsd_prompt_syntax,
}

#[repr(C)]
pub struct lsd_lora_params {
    pub struct_size: usize,
    pub rank: c_int,
    pub alpha: c_float,
    pub targets: c_uint,
    pub conv_rank: c_int,
    pub conv_alpha: c_float,
    pub init: c_int,
    pub seed: u64,
    pub weight: c_float,
    pub te_weight: c_float,
    pub strict: c_int,
}

#[repr(C)]
pub struct lsd_load_report {
    pub struct_size: usize,
    pub format: lsd_lora_format,
    pub matched_keys: c_int,
    pub unmatched_keys: c_int,
    pub applied_modules: c_int,
    pub first_unmatched: [c_char; 256],
    pub loha_modules: c_int,
    pub lokr_modules: c_int,
    pub full_modules: c_int,
    pub dora_modules: c_int,
}

#[repr(C)]
pub struct lsd_adapter_info {
    pub struct_size: usize,
    pub name: [c_char; 128],
    pub rank: c_int,
    pub alpha: c_float,
    pub weight: c_float,
    pub te_weight: c_float,
    pub enabled: c_int,
    pub modules: c_int,
    pub trainable: c_int,
    pub fused: c_int,
}

#[repr(C)]
pub struct lsd_dataset_params {
    pub struct_size: usize,
    pub resolution: c_int,
    pub center_crop: c_int,
    pub random_flip: c_int,
    pub allow_empty_captions: c_int,
    pub caption_extension: *const c_char,
    pub caption_column: *const c_char,
    pub layout: c_int,
    pub caption_data_dir: *const c_char,
    pub reg_data_dir: *const c_char,
    pub instance_prompt: *const c_char,
    pub class_data_dir: *const c_char,
    pub class_prompt: *const c_char,
    pub keep_tokens: c_int,
    pub caption_separator: *const c_char,
    pub shuffle_caption: c_int,
    pub caption_dropout_rate: c_float,
    pub enable_bucket: c_int,
    pub min_bucket_reso: c_int,
    pub max_bucket_reso: c_int,
    pub bucket_reso_steps: c_int,
    pub bucket_no_upscale: c_int,
    pub progress: lsd_progress_fn,
    pub progress_user: *mut c_void,
}

#[repr(C)]
pub struct lsd_dataset_info {
    pub struct_size: usize,
    pub layout: c_int,
    pub images: usize,
    pub class_images: usize,
    pub draws: usize,
    pub class_draws: usize,
    pub folders: c_int,
    pub buckets: c_int,
}

#[repr(C)]
pub struct lsd_train_metrics {
    pub struct_size: usize,
    pub step: c_int,
    pub epoch: c_double,
    pub loss: c_double,
    pub val_loss: c_double,
    pub lr_unet: c_double,
    pub lr_text_encoder: c_double,
    pub grad_norm: c_double,
    pub images_per_second: c_double,
    pub elapsed_seconds: c_double,
    pub sample_path: *const c_char,
    pub allreduce_seconds: c_double,
    pub world_size: c_int,
}
pub type lsd_train_metrics_fn = Option<unsafe extern "C" fn(m: *const lsd_train_metrics, user: *mut c_void)>;

#[repr(C)]
pub struct lsd_train_params {
    pub struct_size: usize,
    pub learning_rate: c_double,
    pub lr_scheduler: c_int,
    pub lr_warmup_steps: c_int,
    pub gradient_accumulation_steps: c_int,
    pub max_train_steps: c_int,
    pub train_batch_size: c_int,
    pub resolution: c_int,
    pub center_crop: c_int,
    pub random_flip: c_int,
    pub mixed_precision: lsd_dtype,
    pub gradient_checkpointing: c_int,
    pub snr_gamma: c_float,
    pub noise_offset: c_float,
    pub prediction_type: c_int,
    pub max_grad_norm: c_float,
    pub adam_beta1: c_double,
    pub adam_beta2: c_double,
    pub adam_weight_decay: c_double,
    pub adam_epsilon: c_double,
    pub seed: u64,
    pub checkpointing_steps: c_int,
    pub checkpoints_total_limit: c_int,
    pub output_dir: *const c_char,
    pub rank: c_int,
    pub lr_num_cycles: c_int,
    pub lr_power: c_float,
    pub progress: lsd_progress_fn,
    pub progress_user: *mut c_void,
    pub with_prior_preservation: c_int,
    pub prior_loss_weight: c_float,
    pub cache_latents: c_int,
    pub cache_latents_to_disk: c_int,
    pub cache_dir: *const c_char,
    pub num_train_epochs: c_int,
    pub lora_targets: c_uint,
    pub network_alpha: c_float,
    pub conv_dim: c_int,
    pub conv_alpha: c_float,
    pub train_text_encoder: c_int,
    pub train_unet: c_int,
    pub unet_lr: c_double,
    pub text_encoder_lr: c_double,
    pub optimizer: c_int,
    pub optimizer_args: *const c_char,
    pub use_ema: c_int,
    pub ema_decay: c_float,
    pub ema_warmup: c_int,
    pub ema_inv_gamma: c_float,
    pub ema_power: c_float,
    pub validation_prompts: *const *const c_char,
    pub n_validation_prompts: c_int,
    pub num_validation_images: c_int,
    pub validation_steps: c_int,
    pub validation_seed: u64,
    pub validation_split: c_float,
    pub validation_dataset: *mut lsd_dataset,
    pub metrics: lsd_train_metrics_fn,
    pub metrics_user: *mut c_void,
    pub save_precision: lsd_dtype,
    pub save_every_n_epochs: c_int,
    pub output_name: *const c_char,
    pub training_comment: *const c_char,
    pub validation_inference_steps: c_int,
    pub validation_guidance_scale: c_float,
    pub validation_sampler: lsd_sampler,
    pub mixed_precision_strict: c_int,
    pub dist: *mut lsd_dist,
}

#[repr(C)]
pub struct lsd_train_batch {
    pub struct_size: usize,
    pub batch: c_int,
    pub height: c_int,
    pub width: c_int,
    pub images: *const c_float,
    pub latents: *const c_float,
    pub captions: *const *const c_char,
    pub context: *const c_float,
    pub n_ctx: c_int,
    pub noise: *const c_float,
    pub timesteps: *const i64,
    pub is_class: *const c_int,
}

extern "C" {
    pub fn lsd_status_string(st: lsd_status) -> *const c_char;
    pub fn lsd_last_error() -> *const c_char;
    pub fn lsd_version_string() -> *const c_char;
    pub fn lsd_struct_size(id: lsd_struct_id, min_size: *mut usize) -> usize;
    pub fn lsd_runtime_info_get(info: *mut lsd_runtime_info) -> lsd_status;
    pub fn lsd_sampler_from_name(name: *const c_char, out: *mut lsd_sampler) -> lsd_status;
    pub fn lsd_prompt_syntax_name(s: lsd_prompt_syntax) -> *const c_char;
    pub fn lsd_prompt_syntax_from_name(name: *const c_char, out: *mut lsd_prompt_syntax) -> lsd_status;
    pub fn lsd_dtype_from_name(name: *const c_char, out: *mut lsd_dtype) -> lsd_status;

    pub fn lsd_image_load(path: *const c_char, out: *mut lsd_image) -> lsd_status;
    pub fn lsd_image_release(img: *mut lsd_image);
    pub fn lsd_image_save_png(path: *const c_char, img: *const lsd_image, text_keys: *const *const c_char,
                              text_values: *const *const c_char, n_text: usize) -> lsd_status;

    pub fn lsd_model_params_init(p: *mut lsd_model_params);
    pub fn lsd_model_load(path: *const c_char, p: *const lsd_model_params, out: *mut *mut lsd_model) -> lsd_status;
    pub fn lsd_model_free(m: *mut lsd_model);
    pub fn lsd_model_get_info(m: *const lsd_model, info: *mut lsd_model_info) -> lsd_status;
    pub fn lsd_model_get_name(m: *const lsd_model, name: *mut *const c_char) -> lsd_status;
    pub fn lsd_model_last_error(m: *const lsd_model, st: *mut lsd_status, buf: *mut c_char, cap: usize) -> usize;
    pub fn lsd_model_add_embedding(m: *mut lsd_model, token: *const c_char, vectors: *const c_float, n_vectors: c_int,
                                   dim: c_int) -> lsd_status;
    pub fn lsd_model_load_embedding(m: *mut lsd_model, path: *const c_char, token: *const c_char) -> lsd_status;
    pub fn lsd_model_load_embeddings_dir(m: *mut lsd_model, dir: *const c_char, n_loaded: *mut c_int,
                                         n_skipped: *mut c_int) -> lsd_status;
    pub fn lsd_sample_params_init(p: *mut lsd_sample_params);
    pub fn lsd_sample(m: *mut lsd_model, p: *const lsd_sample_params, images_out: *mut lsd_image,
                      latents_out: *mut c_float) -> lsd_status;
    pub fn lsd_sample_n(m: *mut lsd_model, p: *const lsd_sample_params, images_out: *mut lsd_image, n_images: usize,
                        latents_out: *mut c_float, latents_cap: usize) -> lsd_status;

    pub fn lsd_lora_params_init(p: *mut lsd_lora_params);
    pub fn lsd_adapter_set_new(m: *mut lsd_model, out: *mut *mut lsd_adapter_set) -> lsd_status;
    pub fn lsd_adapter_set_add(set: *mut lsd_adapter_set, name: *const c_char, p: *const lsd_lora_params)
        -> lsd_status;
    pub fn lsd_adapter_set_load(set: *mut lsd_adapter_set, name: *const c_char, path: *const c_char,
                                p: *const lsd_lora_params, report: *mut lsd_load_report) -> lsd_status;
    pub fn lsd_adapter_set_remove(set: *mut lsd_adapter_set, name: *const c_char) -> lsd_status;
    pub fn lsd_adapter_set_count(set: *const lsd_adapter_set) -> c_int;
    pub fn lsd_adapter_set_get_info(set: *const lsd_adapter_set, index: c_int, info: *mut lsd_adapter_info)
        -> lsd_status;
    pub fn lsd_adapter_set_get_name(set: *const lsd_adapter_set, index: c_int, name: *mut *const c_char)
                                    -> lsd_status;
    pub fn lsd_adapter_set_free(set: *mut lsd_adapter_set);

    pub fn lsd_dataset_params_init(p: *mut lsd_dataset_params);
    pub fn lsd_dataset_open(dir: *const c_char, p: *const lsd_dataset_params, out: *mut *mut lsd_dataset)
        -> lsd_status;
    pub fn lsd_dataset_size(ds: *const lsd_dataset) -> usize;
    pub fn lsd_dataset_free(ds: *mut lsd_dataset);

    pub fn lsd_train_params_init(p: *mut lsd_train_params);
    pub fn lsd_trainer_new(m: *mut lsd_model, set: *mut lsd_adapter_set, name: *const c_char, ds: *mut lsd_dataset,
                           p: *const lsd_train_params, out: *mut *mut lsd_trainer) -> lsd_status;
    pub fn lsd_trainer_step(tr: *mut lsd_trainer, loss_out: *mut c_float) -> lsd_status;
    pub fn lsd_trainer_get_step(tr: *const lsd_trainer) -> c_int;
    pub fn lsd_trainer_save_lora(tr: *mut lsd_trainer, path: *const c_char, format: lsd_lora_format) -> lsd_status;
    pub fn lsd_trainer_free(tr: *mut lsd_trainer);
}
