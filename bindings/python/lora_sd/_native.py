"""ctypes declarations of include/lora_sd.h: the library, its structs (field for field, in header order) and the
prototypes of the functions the classes call. Nothing here is public API."""
import ctypes
import ctypes.util
import os

c_size_t, c_int, c_uint, c_float, c_double = ctypes.c_size_t, ctypes.c_int, ctypes.c_uint, ctypes.c_float, ctypes.c_double
c_int64, c_uint64, c_char_p, c_void_p = ctypes.c_int64, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_void_p
c_status = ctypes.c_int
P = ctypes.POINTER


def _load():
    """LORA_SD_LIBRARY names the .so (tests point it at the build tree); otherwise the system's liblora_sd.so.0."""
    path = os.environ.get("LORA_SD_LIBRARY") or ctypes.util.find_library("lora_sd") or "liblora_sd.so.0"
    return ctypes.CDLL(path)


lib = _load()


class Progress(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("stage", c_int), ("step", c_int), ("total", c_int),
                ("elapsed_seconds", c_double)]


PROGRESS_FN = ctypes.CFUNCTYPE(c_int, P(Progress), c_void_p)


class Image(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("width", c_int), ("height", c_int), ("channels", c_int),
                ("data", P(ctypes.c_uint8))]


class ModelParams(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("device", c_char_p), ("dtype", c_int), ("config_dir", c_char_p),
                ("variant", c_char_p), ("clip_skip", c_int), ("progress", PROGRESS_FN), ("progress_user", c_void_p),
                ("dtype_policy", c_int), ("vae_decode_only", c_int)]


class ModelInfo(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("unet_params", c_int64), ("vae_params", c_int64),
                ("text_encoder_params", c_int64), ("latent_channels", c_int), ("vae_scale_factor", c_int),
                ("context_dim", c_int), ("max_tokens", c_int), ("scaling_factor", c_float), ("dtype", c_int),
                ("device", ctypes.c_char * 32), ("name", ctypes.c_char * 128), ("hash", ctypes.c_char * 16)]


class SampleParams(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("prompts", P(c_char_p)), ("negative_prompts", P(c_char_p)),
                ("prompt", c_char_p), ("negative_prompt", c_char_p), ("batch", c_int), ("steps", c_int),
                ("guidance_scale", c_float), ("sampler", c_int), ("eta", c_float), ("seed", c_uint64),
                ("width", c_int), ("height", c_int), ("init_latents", P(c_float)), ("clip_skip", c_int),
                ("vae_tile", c_int), ("attention_chunk", c_int), ("progress", PROGRESS_FN),
                ("progress_user", c_void_p), ("prompt_syntax", c_int)]


class LoraParams(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("rank", c_int), ("alpha", c_float), ("targets", c_uint),
                ("conv_rank", c_int), ("conv_alpha", c_float), ("init", c_int), ("seed", c_uint64),
                ("weight", c_float), ("te_weight", c_float), ("strict", c_int)]


class LoadReport(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("format", c_int), ("matched_keys", c_int), ("unmatched_keys", c_int),
                ("applied_modules", c_int), ("first_unmatched", ctypes.c_char * 256),
                ("loha_modules", c_int), ("lokr_modules", c_int), ("full_modules", c_int), ("dora_modules", c_int)]


class AdapterInfo(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("name", ctypes.c_char * 128), ("rank", c_int), ("alpha", c_float),
                ("weight", c_float), ("te_weight", c_float), ("enabled", c_int), ("modules", c_int),
                ("trainable", c_int), ("fused", c_int)]


class DatasetParams(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("resolution", c_int), ("center_crop", c_int), ("random_flip", c_int),
                ("allow_empty_captions", c_int), ("caption_extension", c_char_p), ("caption_column", c_char_p),
                ("layout", c_int), ("caption_data_dir", c_char_p), ("reg_data_dir", c_char_p),
                ("instance_prompt", c_char_p), ("class_data_dir", c_char_p), ("class_prompt", c_char_p),
                ("keep_tokens", c_int), ("caption_separator", c_char_p), ("shuffle_caption", c_int),
                ("caption_dropout_rate", c_float), ("enable_bucket", c_int), ("min_bucket_reso", c_int),
                ("max_bucket_reso", c_int), ("bucket_reso_steps", c_int), ("bucket_no_upscale", c_int),
                ("progress", PROGRESS_FN), ("progress_user", c_void_p)]


class DatasetInfo(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("layout", c_int), ("images", c_size_t), ("class_images", c_size_t),
                ("draws", c_size_t), ("class_draws", c_size_t), ("folders", c_int), ("buckets", c_int)]


class TrainMetrics(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("step", c_int), ("epoch", c_double), ("loss", c_double),
                ("val_loss", c_double), ("lr_unet", c_double), ("lr_text_encoder", c_double),
                ("grad_norm", c_double), ("images_per_second", c_double), ("elapsed_seconds", c_double),
                ("sample_path", c_char_p),
                # 0.2: data-parallel training
                ("allreduce_seconds", c_double), ("world_size", c_int)]


METRICS_FN = ctypes.CFUNCTYPE(None, P(TrainMetrics), c_void_p)


class TrainParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_size_t), ("learning_rate", c_double), ("lr_scheduler", c_int),
        ("lr_warmup_steps", c_int), ("gradient_accumulation_steps", c_int), ("max_train_steps", c_int),
        ("train_batch_size", c_int), ("resolution", c_int), ("center_crop", c_int), ("random_flip", c_int),
        ("mixed_precision", c_int), ("gradient_checkpointing", c_int), ("snr_gamma", c_float),
        ("noise_offset", c_float), ("prediction_type", c_int), ("max_grad_norm", c_float),
        ("adam_beta1", c_double), ("adam_beta2", c_double), ("adam_weight_decay", c_double),
        ("adam_epsilon", c_double), ("seed", c_uint64), ("checkpointing_steps", c_int),
        ("checkpoints_total_limit", c_int), ("output_dir", c_char_p), ("rank", c_int), ("lr_num_cycles", c_int),
        ("lr_power", c_float), ("progress", PROGRESS_FN), ("progress_user", c_void_p),
        # 0.2: data
        ("with_prior_preservation", c_int), ("prior_loss_weight", c_float), ("cache_latents", c_int),
        ("cache_latents_to_disk", c_int), ("cache_dir", c_char_p), ("num_train_epochs", c_int),
        # 0.2: what is trained, optimizer, EMA
        ("lora_targets", c_uint), ("network_alpha", c_float), ("conv_dim", c_int), ("conv_alpha", c_float),
        ("train_text_encoder", c_int), ("train_unet", c_int), ("unet_lr", c_double), ("text_encoder_lr", c_double),
        ("optimizer", c_int), ("optimizer_args", c_char_p), ("use_ema", c_int), ("ema_decay", c_float),
        ("ema_warmup", c_int), ("ema_inv_gamma", c_float), ("ema_power", c_float),
        # 0.2: validation, metrics, saving
        ("validation_prompts", P(c_char_p)), ("n_validation_prompts", c_int), ("num_validation_images", c_int),
        ("validation_steps", c_int), ("validation_seed", c_uint64), ("validation_split", c_float),
        ("validation_dataset", c_void_p), ("metrics", METRICS_FN), ("metrics_user", c_void_p),
        ("save_precision", c_int), ("save_every_n_epochs", c_int), ("output_name", c_char_p),
        ("training_comment", c_char_p),
        # 0.2: validation sampling, precision
        ("validation_inference_steps", c_int), ("validation_guidance_scale", c_float),
        ("validation_sampler", c_int), ("mixed_precision_strict", c_int),
        # 0.2: data-parallel training (an lsd_dist handle)
        ("dist", c_void_p)]


def _proto(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


H = c_void_p  # every opaque handle
struct_size = _proto("lsd_struct_size", c_size_t, c_int, P(c_size_t))
status_string = _proto("lsd_status_string", c_char_p, c_status)
last_error = _proto("lsd_last_error", c_char_p)
version_string = _proto("lsd_version_string", c_char_p)
sampler_from_name = _proto("lsd_sampler_from_name", c_status, c_char_p, P(c_int))
prompt_syntax_from_name = _proto("lsd_prompt_syntax_from_name", c_status, c_char_p, P(c_int))
dtype_from_name = _proto("lsd_dtype_from_name", c_status, c_char_p, P(c_int))
lora_format_from_name = _proto("lsd_lora_format_from_name", c_status, c_char_p, P(c_int))
lora_targets_from_names = _proto("lsd_lora_targets_from_names", c_status, c_char_p, P(c_uint))
lr_scheduler_from_name = _proto("lsd_lr_scheduler_from_name", c_status, c_char_p, P(c_int))
optimizer_from_name = _proto("lsd_optimizer_from_name", c_status, c_char_p, P(c_int))

image_release = _proto("lsd_image_release", None, P(Image))
image_save_png = _proto("lsd_image_save_png", c_status, c_char_p, P(Image), P(c_char_p), P(c_char_p), c_size_t)

model_params_init = _proto("lsd_model_params_init", None, P(ModelParams))
model_load = _proto("lsd_model_load", c_status, c_char_p, P(ModelParams), P(H))
model_free = _proto("lsd_model_free", None, H)
model_get_info = _proto("lsd_model_get_info", c_status, H, P(ModelInfo))
model_get_name = _proto("lsd_model_get_name", c_status, H, P(c_char_p))
model_add_embedding = _proto("lsd_model_add_embedding", c_status, H, c_char_p, P(c_float), c_int, c_int)
model_load_embedding = _proto("lsd_model_load_embedding", c_status, H, c_char_p, c_char_p)
model_load_embeddings_dir = _proto("lsd_model_load_embeddings_dir", c_status, H, c_char_p, P(c_int), P(c_int))
sample_params_init = _proto("lsd_sample_params_init", None, P(SampleParams))
sample_n = _proto("lsd_sample_n", c_status, H, P(SampleParams), P(Image), c_size_t, P(c_float), c_size_t)

lora_params_init = _proto("lsd_lora_params_init", None, P(LoraParams))
adapter_set_new = _proto("lsd_adapter_set_new", c_status, H, P(H))
adapter_set_add = _proto("lsd_adapter_set_add", c_status, H, c_char_p, P(LoraParams))
adapter_set_load = _proto("lsd_adapter_set_load", c_status, H, c_char_p, c_char_p, P(LoraParams), P(LoadReport))
adapter_set_save = _proto("lsd_adapter_set_save", c_status, H, c_char_p, c_char_p, c_int)
adapter_set_set_weights = _proto("lsd_adapter_set_set_weights", c_status, H, c_char_p, c_float, c_float)
adapter_set_enable = _proto("lsd_adapter_set_enable", c_status, H, c_char_p, c_int)
adapter_set_remove = _proto("lsd_adapter_set_remove", c_status, H, c_char_p)
adapter_set_fuse = _proto("lsd_adapter_set_fuse", c_status, H)
adapter_set_unfuse = _proto("lsd_adapter_set_unfuse", c_status, H)
adapter_set_count = _proto("lsd_adapter_set_count", c_int, H)
adapter_set_get_info = _proto("lsd_adapter_set_get_info", c_status, H, c_int, P(AdapterInfo))
adapter_set_get_name = _proto("lsd_adapter_set_get_name", c_status, H, c_int, P(c_char_p))
adapter_set_free = _proto("lsd_adapter_set_free", None, H)

dataset_params_init = _proto("lsd_dataset_params_init", None, P(DatasetParams))
dataset_open = _proto("lsd_dataset_open", c_status, c_char_p, P(DatasetParams), P(H))
dataset_size = _proto("lsd_dataset_size", c_size_t, H)
dataset_get_info = _proto("lsd_dataset_get_info", c_status, H, P(DatasetInfo))
dataset_free = _proto("lsd_dataset_free", None, H)

train_params_init = _proto("lsd_train_params_init", None, P(TrainParams))
trainer_new = _proto("lsd_trainer_new", c_status, H, H, c_char_p, H, P(TrainParams), P(H))
trainer_step = _proto("lsd_trainer_step", c_status, H, P(c_float))
trainer_get_step = _proto("lsd_trainer_get_step", c_int, H)
trainer_save_lora = _proto("lsd_trainer_save_lora", c_status, H, c_char_p, c_int)
trainer_save_checkpoint = _proto("lsd_trainer_save_checkpoint", c_status, H, c_char_p)
trainer_resume = _proto("lsd_trainer_resume", c_status, H, c_char_p)
trainer_free = _proto("lsd_trainer_free", None, H)
