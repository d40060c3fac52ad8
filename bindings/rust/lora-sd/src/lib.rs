//! Safe bindings of liblora_sd: RAII handles (`Model`, `AdapterSet`, `Dataset`, `Trainer`), `Result<_, Error>`
//! with the library's status and message, progress closures that can cancel and whose panics come out of the call.
//!
//! Handles are `Send` (a handle may move to another thread; the library allows one thread at a time per handle) and
//! not `Sync`. Any drop order is fine: the library keeps a model alive while a set or trainer needs it.
use lora_sd_sys as sys;
use std::ffi::{CStr, CString};
use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;

/// A failed call: `status` (lsd_status, e.g. `sys::LSD_ERR_NOT_FOUND`) and the library's message, which names the
/// file, key or argument at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: i32,
    pub message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = unsafe { CStr::from_ptr(sys::lsd_status_string(self.status)) };
        write!(f, "{} ({})", self.message, name.to_string_lossy())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// The failure of the call that just returned `st`. A Rust thread is one OS thread, so the library's thread-local
/// message is this call's.
fn check(st: sys::lsd_status) -> Result<()> {
    if st == sys::LSD_OK {
        return Ok(());
    }
    let message = unsafe { CStr::from_ptr(sys::lsd_last_error()) }.to_string_lossy().into_owned();
    Err(Error { status: st, message })
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error { status: sys::LSD_ERR_INVALID_ARGUMENT, message: format!("{:?} holds a NUL", s) })
}

fn cpath(p: &Path) -> Result<CString> {
    cstr(p.to_str().ok_or_else(|| Error { status: sys::LSD_ERR_INVALID_ARGUMENT,
                                          message: format!("{:?} is not UTF-8", p) })?)
}

/// One progress report: `step` of `total` (1-based) of `stage` (`sys::LSD_STAGE_*`).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: i32,
    pub step: i32,
    pub total: i32,
    pub elapsed_seconds: f64,
}

/// A closure as the library's callback: returning true cancels the call; a panic cancels it and is resumed in the
/// caller once the library has returned.
struct Callback<'a> {
    f: Box<dyn FnMut(Progress) -> bool + 'a>,
    panic: Option<Box<dyn std::any::Any + Send>>,
}

unsafe extern "C" fn trampoline(p: *const sys::lsd_progress, user: *mut c_void) -> c_int {
    let cb = &mut *(user as *mut Callback);
    if cb.panic.is_some() {
        return 1;
    }
    let p = &*p;
    let report = Progress { stage: p.stage, step: p.step, total: p.total, elapsed_seconds: p.elapsed_seconds };
    match catch_unwind(AssertUnwindSafe(|| (cb.f)(report))) {
        Ok(cancel) => cancel as c_int,
        Err(payload) => {
            cb.panic = Some(payload);
            1
        }
    }
}

impl<'a> Callback<'a> {
    fn new(f: impl FnMut(Progress) -> bool + 'a) -> Box<Self> {
        Box::new(Callback { f: Box::new(f), panic: None })
    }
    fn user(&mut self) -> *mut c_void {
        self as *mut Callback as *mut c_void
    }
    fn finish(&mut self, st: sys::lsd_status) -> Result<()> {
        if let Some(payload) = self.panic.take() {
            resume_unwind(payload);
        }
        check(st)
    }
}

/// An SD 1.x model (lsd_model).
pub struct Model {
    h: *mut sys::lsd_model,
}
unsafe impl Send for Model {}

/// Options of `Model::load`: `None` fields take the library's defaults.
#[derive(Default)]
pub struct ModelOptions<'a> {
    pub device: Option<&'a str>,
    pub dtype: Option<&'a str>,
    /// Load the VAE without its encoder (lsd_model_params.vae_decode_only): less memory for text-to-image; encoding,
    /// training and saving the model then fail.
    pub vae_decode_only: bool,
}

/// 8-bit RGB, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl Image {
    /// Writes a PNG atomically (lsd_image_save_png).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let img = sys::lsd_image {
            struct_size: std::mem::size_of::<sys::lsd_image>(),
            width: self.width as c_int,
            height: self.height as c_int,
            channels: 3,
            data: self.pixels.as_ptr() as *mut u8,
        };
        let p = cpath(path.as_ref())?;
        check(unsafe { sys::lsd_image_save_png(p.as_ptr(), &img, ptr::null(), ptr::null(), 0) })
    }
}

/// lsd_sample_params for `batch` images of one prompt; `Default` is the library's defaults.
pub struct SampleOptions<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub steps: i32,
    pub guidance_scale: f32,
    pub sampler: &'a str,
    pub seed: u64,
    pub width: i32,
    pub height: i32,
    pub batch: usize,
    /// "plain" (default) or "a1111": (word:1.3), [word], BREAK and prompts over 75 tokens as A1111 reads them.
    pub prompt_syntax: &'a str,
}

impl Default for SampleOptions<'_> {
    fn default() -> Self {
        SampleOptions { prompt: "", negative_prompt: "", steps: 50, guidance_scale: 7.5, sampler: "pndm", seed: 0,
                        width: 512, height: 512, batch: 1, prompt_syntax: "plain" }
    }
}

impl Model {
    /// A diffusers folder, a single .safetensors/.ckpt file or a hub id of the local Hugging Face cache.
    pub fn load(path: impl AsRef<Path>, o: &ModelOptions) -> Result<Model> {
        let mut p: sys::lsd_model_params = unsafe { std::mem::zeroed() };
        unsafe { sys::lsd_model_params_init(&mut p) };
        let device = o.device.map(cstr).transpose()?;
        if let Some(d) = &device {
            p.device = d.as_ptr();
        }
        if let Some(name) = o.dtype {
            let n = cstr(name)?;
            check(unsafe { sys::lsd_dtype_from_name(n.as_ptr(), &mut p.dtype) })?;
        }
        p.vae_decode_only = o.vae_decode_only as c_int;
        let path = cpath(path.as_ref())?;
        let mut h = ptr::null_mut();
        check(unsafe { sys::lsd_model_load(path.as_ptr(), &p, &mut h) })?;
        Ok(Model { h })
    }

    /// Textual inversion (lsd_model_add_embedding): `token` (one word) then stands in prompts for `vectors`, rows of
    /// `dim` floats (the model's context_dim) one after another; they are copied, and adding a token again replaces
    /// it.
    pub fn add_embedding(&mut self, token: &str, vectors: &[f32], dim: usize) -> Result<()> {
        if dim == 0 || vectors.len() % dim != 0 {
            return Err(Error { status: sys::LSD_ERR_INVALID_ARGUMENT,
                               message: format!("add_embedding: '{}': {} floats are not rows of {}", token,
                                                vectors.len(), dim) });
        }
        let t = cstr(token)?;
        check(unsafe {
            sys::lsd_model_add_embedding(self.h, t.as_ptr(), vectors.as_ptr(), (vectors.len() / dim) as c_int,
                                         dim as c_int)
        })
    }

    /// Reads a textual-inversion file (A1111 .pt, kohya, diffusers learned_embeds; lsd_model_load_embedding).
    /// `token` None: the file's stem, or the token stored in diffusers' learned_embeds.*.
    pub fn load_embedding(&mut self, path: impl AsRef<Path>, token: Option<&str>) -> Result<()> {
        let p = cpath(path.as_ref())?;
        let t = token.map(cstr).transpose()?;
        let t = t.as_ref().map_or(ptr::null(), |t| t.as_ptr());
        check(unsafe { sys::lsd_model_load_embedding(self.h, p.as_ptr(), t) })
    }

    /// Loads every embedding file below `dir` as A1111's embeddings folder does (lsd_model_load_embeddings_dir): a
    /// file that does not load is skipped with a warning to the log callback. Returns (loaded, skipped).
    pub fn load_embeddings_dir(&mut self, dir: impl AsRef<Path>) -> Result<(usize, usize)> {
        let d = cpath(dir.as_ref())?;
        let (mut loaded, mut skipped): (c_int, c_int) = (0, 0);
        check(unsafe { sys::lsd_model_load_embeddings_dir(self.h, d.as_ptr(), &mut loaded, &mut skipped) })?;
        Ok((loaded as usize, skipped as usize))
    }

    /// Samples images (lsd_sample); `progress` may cancel (return true).
    pub fn generate(&mut self, o: &SampleOptions, progress: Option<&mut dyn FnMut(Progress) -> bool>)
        -> Result<Vec<Image>> {
        let batch = o.batch.max(1);
        let prompt = cstr(o.prompt)?;
        let negative = cstr(o.negative_prompt)?;
        let sampler = cstr(o.sampler)?;
        let syntax = cstr(o.prompt_syntax)?;
        let prompts: Vec<*const _> = vec![prompt.as_ptr(); batch];
        let negatives: Vec<*const _> = vec![negative.as_ptr(); batch];
        let mut p: sys::lsd_sample_params = unsafe { std::mem::zeroed() };
        unsafe { sys::lsd_sample_params_init(&mut p) };
        p.prompts = prompts.as_ptr();
        p.negative_prompts = negatives.as_ptr();
        p.batch = batch as c_int;
        p.steps = o.steps;
        p.guidance_scale = o.guidance_scale;
        p.seed = o.seed;
        p.width = o.width;
        p.height = o.height;
        check(unsafe { sys::lsd_sampler_from_name(sampler.as_ptr(), &mut p.sampler) })?;
        check(unsafe { sys::lsd_prompt_syntax_from_name(syntax.as_ptr(), &mut p.prompt_syntax) })?;
        let mut cb = progress.map(|f| Callback::new(move |r| f(r)));
        if let Some(cb) = cb.as_mut() {
            p.progress = Some(trampoline);
            p.progress_user = cb.user();
        }
        let mut images: Vec<sys::lsd_image> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
        for img in images.iter_mut() {
            img.struct_size = std::mem::size_of::<sys::lsd_image>();
        }
        let st = unsafe { sys::lsd_sample_n(self.h, &p, images.as_mut_ptr(), images.len(), ptr::null_mut(), 0) };
        match cb.as_mut() {
            Some(cb) => cb.finish(st)?,
            None => check(st)?,
        }
        Ok(images
            .iter_mut()
            .map(|img| {
                let n = (img.width * img.height * img.channels) as usize;
                let pixels = unsafe { std::slice::from_raw_parts(img.data, n) }.to_vec();
                let out = Image { width: img.width as usize, height: img.height as usize, pixels };
                unsafe { sys::lsd_image_release(img) };
                out
            })
            .collect())
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        unsafe { sys::lsd_model_free(self.h) }
    }
}

/// Named LoRA adapters on a model (lsd_adapter_set); keeps the model alive.
pub struct AdapterSet {
    h: *mut sys::lsd_adapter_set,
}
unsafe impl Send for AdapterSet {}

/// lsd_adapter_info, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub rank: i32,
    pub alpha: f32,
    pub modules: i32,
    pub trainable: bool,
}

impl AdapterSet {
    pub fn new(model: &mut Model) -> Result<AdapterSet> {
        let mut h = ptr::null_mut();
        check(unsafe { sys::lsd_adapter_set_new(model.h, &mut h) })?;
        Ok(AdapterSet { h })
    }

    /// A trainable adapter of `rank` on the UNet's attention layers.
    pub fn add(&mut self, name: &str, rank: i32, seed: u64) -> Result<()> {
        let mut p: sys::lsd_lora_params = unsafe { std::mem::zeroed() };
        unsafe { sys::lsd_lora_params_init(&mut p) };
        p.rank = rank;
        p.seed = seed;
        let n = cstr(name)?;
        check(unsafe { sys::lsd_adapter_set_add(self.h, n.as_ptr(), &p) })
    }

    /// Loads a LoRA file (kohya, PEFT, diffusers) as adapter `name`.
    pub fn load(&mut self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        let n = cstr(name)?;
        let p = cpath(path.as_ref())?;
        check(unsafe { sys::lsd_adapter_set_load(self.h, n.as_ptr(), p.as_ptr(), ptr::null(), ptr::null_mut()) })
    }

    pub fn remove(&mut self, name: &str) -> Result<()> {
        let n = cstr(name)?;
        check(unsafe { sys::lsd_adapter_set_remove(self.h, n.as_ptr()) })
    }

    pub fn adapters(&self) -> Result<Vec<AdapterInfo>> {
        let n = unsafe { sys::lsd_adapter_set_count(self.h) };
        (0..n)
            .map(|i| {
                let mut ai: sys::lsd_adapter_info = unsafe { std::mem::zeroed() };
                ai.struct_size = std::mem::size_of::<sys::lsd_adapter_info>();
                check(unsafe { sys::lsd_adapter_set_get_info(self.h, i, &mut ai) })?;
                // the whole name: ai.name holds its first 127 bytes
                let mut name = ptr::null();
                check(unsafe { sys::lsd_adapter_set_get_name(self.h, i, &mut name) })?;
                Ok(AdapterInfo {
                    name: unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned(),
                    rank: ai.rank,
                    alpha: ai.alpha,
                    modules: ai.modules,
                    trainable: ai.trainable != 0,
                })
            })
            .collect()
    }
}

impl Drop for AdapterSet {
    fn drop(&mut self) {
        unsafe { sys::lsd_adapter_set_free(self.h) }
    }
}

/// A folder of captioned images (lsd_dataset).
pub struct Dataset {
    h: *mut sys::lsd_dataset,
}
unsafe impl Send for Dataset {}

impl Dataset {
    /// Lists `dir` at `resolution` (0: the library's 512).
    pub fn open(dir: impl AsRef<Path>, resolution: i32) -> Result<Dataset> {
        let mut p: sys::lsd_dataset_params = unsafe { std::mem::zeroed() };
        unsafe { sys::lsd_dataset_params_init(&mut p) };
        if resolution > 0 {
            p.resolution = resolution;
        }
        let d = cpath(dir.as_ref())?;
        let mut h = ptr::null_mut();
        check(unsafe { sys::lsd_dataset_open(d.as_ptr(), &p, &mut h) })?;
        Ok(Dataset { h })
    }

    pub fn len(&self) -> usize {
        unsafe { sys::lsd_dataset_size(self.h) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Dataset {
    fn drop(&mut self) {
        unsafe { sys::lsd_dataset_free(self.h) }
    }
}

/// The lsd_train_params most runs set; `Default` is the library's defaults.
pub struct TrainOptions {
    pub learning_rate: f64,
    pub max_train_steps: i32,
    pub train_batch_size: i32,
    pub resolution: i32,
    pub rank: i32,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { learning_rate: 1e-4, max_train_steps: 1000, train_batch_size: 16, resolution: 512, rank: 4,
                       seed: 0 }
    }
}

/// Trains one adapter of a set (lsd_trainer); keeps the model, set and dataset alive.
pub struct Trainer {
    h: *mut sys::lsd_trainer,
}
unsafe impl Send for Trainer {}

impl Trainer {
    pub fn new(model: &mut Model, set: &mut AdapterSet, name: &str, dataset: Option<&mut Dataset>,
               o: &TrainOptions) -> Result<Trainer> {
        let mut p: sys::lsd_train_params = unsafe { std::mem::zeroed() };
        unsafe { sys::lsd_train_params_init(&mut p) };
        p.learning_rate = o.learning_rate;
        p.max_train_steps = o.max_train_steps;
        p.train_batch_size = o.train_batch_size;
        p.resolution = o.resolution;
        p.rank = o.rank;
        p.seed = o.seed;
        let n = cstr(name)?;
        let ds = dataset.map_or(ptr::null_mut(), |d| d.h);
        let mut h = ptr::null_mut();
        check(unsafe { sys::lsd_trainer_new(model.h, set.h, n.as_ptr(), ds, &p, &mut h) })?;
        Ok(Trainer { h })
    }

    /// One optimizer step on the dataset: its mean loss.
    pub fn step(&mut self) -> Result<f32> {
        let mut loss = 0f32;
        check(unsafe { sys::lsd_trainer_step(self.h, &mut loss) })?;
        Ok(loss)
    }

    pub fn global_step(&self) -> i32 {
        unsafe { sys::lsd_trainer_get_step(self.h) }
    }

    /// Writes the adapter in kohya's format.
    pub fn save_lora(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let p = cpath(path.as_ref())?;
        check(unsafe { sys::lsd_trainer_save_lora(self.h, p.as_ptr(), sys::LSD_LORA_FORMAT_KOHYA) })
    }
}

impl Drop for Trainer {
    fn drop(&mut self) {
        unsafe { sys::lsd_trainer_free(self.h) }
    }
}

/// The library's version string.
pub fn version() -> String {
    unsafe { CStr::from_ptr(sys::lsd_version_string()) }.to_string_lossy().into_owned()
}
