"""lora_sd: Python bindings of liblora_sd (Stable Diffusion 1.x sampling and LoRA training) over ctypes.

    import lora_sd
    with lora_sd.Model("sd-v1-5") as model:
        image = model.generate("a red cube", steps=20, seed=1)[0]
        image.save_png("cube.png")

Every failure raises lora_sd.Error (.status, .message); a progress callback returning a true value cancels the call
(lora_sd.Cancelled), and an exception raised inside a callback comes out of the call that ran it. Handles are freed
by close(), by a with block or by the garbage collector, in any order: the library keeps a model alive while an
adapter set or trainer needs it. docs/python.md has the guide.
"""
import collections
import ctypes
import math
import os

from . import _callbacks
from . import _native as N
from ._callbacks import Metrics, ProgressInfo
from ._errors import Cancelled, Error, Status

__all__ = ["Model", "AdapterSet", "Dataset", "Trainer", "Image", "Error", "Cancelled", "Status", "ProgressInfo",
           "Metrics", "version"]


def version():
    return N.version_string().decode()


def _b(s):
    """str or path -> bytes for a const char *; None stays NULL."""
    if s is None:
        return None
    return os.fsencode(s) if isinstance(s, os.PathLike) else s.encode() if isinstance(s, str) else bytes(s)


def _enum(parse, name):
    out = ctypes.c_int()
    _callbacks.check(parse(_b(name), ctypes.byref(out)))
    return out.value


def _targets(names):
    out = ctypes.c_uint()
    _callbacks.check(N.lora_targets_from_names(_b(names), ctypes.byref(out)))
    return out.value


def _fill(struct, kwargs, converters):
    """Sets struct fields by name; a name that is not a field is a TypeError, as for a function's keywords."""
    fields = {f[0] for f in struct._fields_} - {"struct_size", "progress", "progress_user", "metrics", "metrics_user"}
    for key, value in kwargs.items():
        if key not in fields:
            raise TypeError(f"{type(struct).__name__[:-6].lower() or 'params'}: unknown parameter {key!r}")
        if key in converters:
            value = converters[key](value)
        elif isinstance(value, (str, os.PathLike)):
            value = _b(value)
        setattr(struct, key, value)


def _is_rows(vectors):
    """True for a sequence of rows (a list of lists, a 2-D array) or no rows at all, False for one row of numbers."""
    first = next(iter(vectors), None)
    return first is None or hasattr(first, "__iter__")


class _Handle:
    """An owned library handle: close() (or a with block, or the garbage collector) frees it once."""
    _free = None

    def __init__(self):
        self._h = None

    def _ptr(self):
        if self._h is None:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._h

    def close(self):
        h, self._h = self._h, None
        if h is not None:
            type(self)._free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Image:
    """8-bit RGB pixels, row-major: data holds height * width * channels bytes."""

    def __init__(self, width, height, channels, data):
        self.width, self.height, self.channels, self.data = width, height, channels, data

    def to_numpy(self):
        """A [height, width, channels] uint8 array (needs numpy)."""
        import numpy
        return numpy.frombuffer(self.data, dtype=numpy.uint8).reshape(self.height, self.width, self.channels).copy()

    def save_png(self, path, text=None):
        """Writes a PNG atomically; text: optional {key: value} tEXt/iTXt chunks."""
        buf = (ctypes.c_uint8 * len(self.data)).from_buffer_copy(self.data)
        img = N.Image(ctypes.sizeof(N.Image), self.width, self.height, self.channels,
                      ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8)))
        text = text or {}
        keys = (ctypes.c_char_p * max(len(text), 1))(*[_b(k) for k in text])
        values = (ctypes.c_char_p * max(len(text), 1))(*[_b(v) for v in text.values()])
        _callbacks.check(N.image_save_png(_b(path), ctypes.byref(img), keys, values, len(text)))


ModelInfo = collections.namedtuple("ModelInfo", "unet_params vae_params text_encoder_params latent_channels "
                                                "vae_scale_factor context_dim max_tokens scaling_factor dtype device "
                                                "name hash")


class Model(_Handle):
    """A Stable Diffusion 1.x model: a diffusers folder, a single .safetensors/.ckpt file or a hub id in the local
    Hugging Face cache. dtype: "f32", "f16" or "bf16". vae_decode_only: load the VAE without its encoder (less
    memory for text-to-image; vae_encode, training and save then fail)."""
    _free = N.model_free

    def __init__(self, path, device="cpu", dtype="f32", config_dir=None, variant=None, clip_skip=1, progress=None,
                 vae_decode_only=False):
        super().__init__()
        p = N.ModelParams()
        N.model_params_init(ctypes.byref(p))
        p.device, p.config_dir, p.variant = _b(device), _b(config_dir), _b(variant)
        p.dtype = _enum(N.dtype_from_name, dtype)
        p.clip_skip = clip_skip
        p.vae_decode_only = 1 if vae_decode_only else 0
        cb = _callbacks.make(progress, "progress")
        if cb:
            p.progress = cb.c
        h = N.H()
        _callbacks.check(N.model_load(_b(path), ctypes.byref(p), ctypes.byref(h)), cb)
        self._h = h.value

    def info(self):
        i = N.ModelInfo()
        i.struct_size = ctypes.sizeof(i)
        _callbacks.check(N.model_get_info(self._ptr(), ctypes.byref(i)))
        name = ctypes.c_char_p()  # the whole name: i.name holds its first 127 bytes
        _callbacks.check(N.model_get_name(self._ptr(), ctypes.byref(name)))
        return ModelInfo(i.unet_params, i.vae_params, i.text_encoder_params, i.latent_channels, i.vae_scale_factor,
                         i.context_dim, i.max_tokens, i.scaling_factor, i.dtype, i.device.decode(),
                         os.fsdecode(name.value), i.hash.decode())

    def add_embedding(self, token, vectors):
        """Textual inversion: `token` (one word) then stands in prompts for `vectors`, rows of context_dim floats (a
        list of rows, one row, or a numpy array [n, dim] or [dim]); they are copied, and adding a token again
        replaces it (lsd_model_add_embedding)."""
        rows = [list(map(float, row)) for row in vectors] if _is_rows(vectors) else [list(map(float, vectors))]
        dim = len(rows[0]) if rows else 0
        if any(len(row) != dim for row in rows):
            raise ValueError(f"add_embedding: {token!r}: rows of {sorted({len(r) for r in rows})} floats; "
                             "every row has context_dim")
        flat = (ctypes.c_float * max(len(rows) * dim, 1))(*[x for row in rows for x in row])
        _callbacks.check(N.model_add_embedding(self._ptr(), _b(token), flat, len(rows), dim))

    def load_embedding(self, path, token=None):
        """Reads a textual-inversion file (A1111 .pt, kohya, diffusers learned_embeds); token None: the file's stem,
        or the token stored in diffusers' learned_embeds.* (lsd_model_load_embedding)."""
        _callbacks.check(N.model_load_embedding(self._ptr(), _b(path), _b(token)))

    def load_embeddings_dir(self, directory):
        """Every embedding file below directory, as A1111's embeddings folder (a file that does not load is skipped
        with a warning to the log callback) -> (loaded, skipped)."""
        loaded, skipped = ctypes.c_int(), ctypes.c_int()
        _callbacks.check(N.model_load_embeddings_dir(self._ptr(), _b(directory), ctypes.byref(loaded),
                                                     ctypes.byref(skipped)))
        return loaded.value, skipped.value

    def generate(self, prompt, negative_prompt="", steps=50, guidance_scale=7.5, sampler="pndm", seed=0,
                 width=512, height=512, batch=1, eta=0.0, clip_skip=0, progress=None, prompt_syntax="plain"):
        """Samples `batch` images (lsd_sample) -> a list of Image. progress(ProgressInfo) may return True to
        cancel. prompt_syntax "a1111" reads (word:1.3), [word], BREAK and prompts over 75 tokens as A1111 does."""
        p = N.SampleParams()
        N.sample_params_init(ctypes.byref(p))
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negatives)} negative prompts")
        c_prompts = (ctypes.c_char_p * len(prompts))(*[_b(s) for s in prompts])
        c_negatives = (ctypes.c_char_p * len(prompts))(*[_b(s) for s in negatives])
        p.prompts, p.negative_prompts, p.batch = c_prompts, c_negatives, len(prompts)
        p.steps, p.guidance_scale, p.eta, p.seed = steps, guidance_scale, eta, seed
        p.sampler = _enum(N.sampler_from_name, sampler)
        p.prompt_syntax = _enum(N.prompt_syntax_from_name, prompt_syntax)
        p.width, p.height, p.clip_skip = width, height, clip_skip
        cb = _callbacks.make(progress, "progress")
        if cb:
            p.progress = cb.c
        out = (N.Image * max(len(prompts), 1))()
        for img in out:
            img.struct_size = ctypes.sizeof(N.Image)
        _callbacks.check(N.sample_n(self._ptr(), ctypes.byref(p), out, len(out), None, 0), cb)
        images = []
        for img in out[:len(prompts)]:
            n = img.width * img.height * img.channels
            images.append(Image(img.width, img.height, img.channels, ctypes.string_at(img.data, n)))
            N.image_release(ctypes.byref(img))
        return images


AdapterInfo = collections.namedtuple("AdapterInfo", "name rank alpha weight te_weight enabled modules trainable fused")
LoadReport = collections.namedtuple("LoadReport", "format matched_keys unmatched_keys applied_modules first_unmatched "
                                                 "loha_modules lokr_modules full_modules dora_modules")


class AdapterSet(_Handle):
    """Named LoRA adapters on a model (the set keeps the model alive)."""
    _free = N.adapter_set_free

    def __init__(self, model):
        super().__init__()
        h = N.H()
        _callbacks.check(N.adapter_set_new(model._ptr(), ctypes.byref(h)))
        self._h = h.value

    @staticmethod
    def _params(**kwargs):
        p = N.LoraParams()
        N.lora_params_init(ctypes.byref(p))
        if kwargs.get("te_weight", 0) is None:
            kwargs["te_weight"] = math.nan
        _fill(p, kwargs, {"targets": lambda v: _targets(v) if isinstance(v, str) else v})
        return p

    def add(self, name, **lora_params):
        """A new trainable adapter: rank, alpha, targets ("attn,ff,te_attn" or bits), conv_rank, seed, ..."""
        p = self._params(**lora_params)
        _callbacks.check(N.adapter_set_add(self._ptr(), _b(name), ctypes.byref(p)))

    def load(self, name, path, **lora_params):
        """Loads a LoRA file (kohya, PEFT, diffusers; LyCORIS LoHa/LoKr/full/DoRA) as adapter `name`; weight,
        te_weight, strict, ... The report counts the LyCORIS modules (loha_modules, ...)."""
        p = self._params(**lora_params)
        r = N.LoadReport()
        r.struct_size = ctypes.sizeof(r)
        _callbacks.check(N.adapter_set_load(self._ptr(), _b(name), _b(path), ctypes.byref(p), ctypes.byref(r)))
        return LoadReport(r.format, r.matched_keys, r.unmatched_keys, r.applied_modules, r.first_unmatched.decode(),
                          r.loha_modules, r.lokr_modules, r.full_modules, r.dora_modules)

    def save(self, name, path, format="kohya"):
        fmt = _enum(N.lora_format_from_name, format)
        _callbacks.check(N.adapter_set_save(self._ptr(), _b(name), _b(path), fmt))

    def set_weights(self, name, weight, te_weight=None):
        _callbacks.check(N.adapter_set_set_weights(self._ptr(), _b(name), weight,
                                                   math.nan if te_weight is None else te_weight))

    def enable(self, name, enabled=True):
        _callbacks.check(N.adapter_set_enable(self._ptr(), _b(name), 1 if enabled else 0))

    def remove(self, name):
        _callbacks.check(N.adapter_set_remove(self._ptr(), _b(name)))

    def fuse(self):
        _callbacks.check(N.adapter_set_fuse(self._ptr()))

    def unfuse(self):
        _callbacks.check(N.adapter_set_unfuse(self._ptr()))

    def __len__(self):
        return N.adapter_set_count(self._ptr())

    def info(self, index):
        i = N.AdapterInfo()
        i.struct_size = ctypes.sizeof(i)
        _callbacks.check(N.adapter_set_get_info(self._ptr(), index, ctypes.byref(i)))
        name = ctypes.c_char_p()  # the whole name: i.name holds its first 127 bytes, maybe half a character
        _callbacks.check(N.adapter_set_get_name(self._ptr(), index, ctypes.byref(name)))
        return AdapterInfo(name.value.decode(), i.rank, i.alpha, i.weight, i.te_weight, bool(i.enabled), i.modules,
                           bool(i.trainable), bool(i.fused))

    def adapters(self):
        return [self.info(k) for k in range(len(self))]


DatasetInfo = collections.namedtuple("DatasetInfo", "layout images class_images draws class_draws folders buckets")


class Dataset(_Handle):
    """A folder of captioned images; keyword arguments are lsd_dataset_params fields (resolution, center_crop,
    caption_extension, layout="kohya", ...)."""
    _free = N.dataset_free

    def __init__(self, path, progress=None, **params):
        super().__init__()
        p = N.DatasetParams()
        N.dataset_params_init(ctypes.byref(p))
        layouts = {"auto": 0, "folder": 1, "seed": 2, "kohya": 3, "dreambooth": 4}
        _fill(p, params, {"layout": lambda v: layouts[v] if isinstance(v, str) else v})
        cb = _callbacks.make(progress, "progress")
        if cb:
            p.progress = cb.c
        self._progress = cb  # lsd_dataset_verify calls it later
        h = N.H()
        _callbacks.check(N.dataset_open(_b(path), ctypes.byref(p), ctypes.byref(h)), cb)
        self._h = h.value

    def __len__(self):
        return N.dataset_size(self._ptr())

    def info(self):
        i = N.DatasetInfo()
        i.struct_size = ctypes.sizeof(i)
        _callbacks.check(N.dataset_get_info(self._ptr(), ctypes.byref(i)))
        return DatasetInfo(i.layout, i.images, i.class_images, i.draws, i.class_draws, i.folders, i.buckets)


class Trainer(_Handle):
    """Trains adapter `name` of `adapters` (added when missing). Keyword arguments are lsd_train_params fields, named
    as diffusers' script flags (learning_rate, max_train_steps, train_batch_size, resolution, seed, output_dir, ...;
    lr_scheduler, optimizer, mixed_precision, save_precision, validation_sampler and lora_targets take names).
    progress(ProgressInfo) may return True to cancel a step; metrics(Metrics) is called after every step."""
    _free = N.trainer_free

    def __init__(self, model, adapters, name="lora", dataset=None, progress=None, metrics=None, **params):
        super().__init__()
        p = N.TrainParams()
        N.train_params_init(ctypes.byref(p))
        dtype = lambda v: _enum(N.dtype_from_name, v) if isinstance(v, str) else v  # noqa: E731
        prompts = params.pop("validation_prompts", None)
        if prompts is not None:
            self._prompts = (ctypes.c_char_p * max(len(prompts), 1))(*[_b(s) for s in prompts])
            p.validation_prompts, p.n_validation_prompts = self._prompts, len(prompts)
        _fill(p, params, {
            "lr_scheduler": lambda v: _enum(N.lr_scheduler_from_name, v) if isinstance(v, str) else v,
            "optimizer": lambda v: _enum(N.optimizer_from_name, v) if isinstance(v, str) else v,
            "mixed_precision": dtype, "save_precision": dtype,
            "validation_sampler": lambda v: _enum(N.sampler_from_name, v) if isinstance(v, str) else v,
            "lora_targets": lambda v: _targets(v) if isinstance(v, str) else v,
            "validation_dataset": lambda v: v._ptr() if v is not None else None,
        })
        # The library calls these on every step: they live as long as the trainer.
        self._progress = _callbacks.make(progress, "progress")
        self._metrics = _callbacks.make(metrics, "metrics")
        if self._progress:
            p.progress = self._progress.c
        if self._metrics:
            p.metrics = self._metrics.c
        h = N.H()
        _callbacks.check(N.trainer_new(model._ptr(), adapters._ptr(), _b(name),
                                       dataset._ptr() if dataset is not None else None, ctypes.byref(p),
                                       ctypes.byref(h)), self._progress, self._metrics)
        self._h = h.value

    def step(self):
        """One optimizer step on the dataset -> its mean loss."""
        loss = ctypes.c_float()
        _callbacks.check(N.trainer_step(self._ptr(), ctypes.byref(loss)), self._progress, self._metrics)
        return loss.value

    @property
    def global_step(self):
        return N.trainer_get_step(self._ptr())

    def save_lora(self, path, format="kohya"):
        _callbacks.check(N.trainer_save_lora(self._ptr(), _b(path), _enum(N.lora_format_from_name, format)))

    def save_checkpoint(self, directory):
        _callbacks.check(N.trainer_save_checkpoint(self._ptr(), _b(directory)), self._progress, self._metrics)

    def resume(self, directory):
        _callbacks.check(N.trainer_resume(self._ptr(), _b(directory)))
