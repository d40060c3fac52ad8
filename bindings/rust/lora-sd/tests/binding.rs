//! The safe binding against the C library and its CLI: the same pixels as `lora-sd generate` for a seed, progress
//! that cancels and panics that come out of the call, errors, two training steps, handles dropped in any order.
use lora_sd::*;
use lora_sd_sys as sys;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn tiny() -> PathBuf {
    repo().join("tests/data/sd-tiny")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lora-sd-rust-{}-{}", std::process::id(), name));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small(prompt: &str) -> SampleOptions<'_> {
    SampleOptions { prompt, steps: 3, sampler: "euler_a", seed: 7, width: 32, height: 32, ..Default::default() }
}

#[test]
fn generate_matches_the_cli() {
    let dir = temp_dir("cli");
    let png = dir.join("ref.png");
    let cli = std::env::var("LORA_SD_CLI").map(PathBuf::from).unwrap_or_else(|_| repo().join("build/lora-sd"));
    let out = Command::new(cli)
        .args(["generate", "--model", tiny().to_str().unwrap(), "--prompt", "a red cube", "--negative-prompt",
               "blurry", "--steps", "3", "--sampler", "euler_a", "--seed", "7", "--width", "32", "--height", "32",
               "--guidance", "7.5", "--output", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The CLI's PNG read back by the library's decoder (not by the code under test: the sampler).
    let mut img: sys::lsd_image = unsafe { std::mem::zeroed() };
    let path = CString::new(png.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { sys::lsd_image_load(path.as_ptr(), &mut img) }, sys::LSD_OK);
    let want = unsafe { std::slice::from_raw_parts(img.data, (img.width * img.height * 3) as usize) }.to_vec();
    unsafe { sys::lsd_image_release(&mut img) };

    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let got = m.generate(&SampleOptions { negative_prompt: "blurry", ..small("a red cube") }, None).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].width, got[0].height), (32, 32));
    assert!(got[0].pixels == want, "pixels differ from lora-sd generate's");
}

#[test]
fn progress_cancels_and_panics_propagate() {
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let mut steps = Vec::new();
    let mut record = |p: Progress| {
        if p.stage == sys::LSD_STAGE_DENOISE {
            steps.push(p.step);
        }
        false
    };
    m.generate(&SampleOptions { sampler: "euler", ..small("x") }, Some(&mut record)).unwrap();
    assert_eq!(steps, vec![1, 2, 3]);
    let mut cancel = |p: Progress| p.stage == sys::LSD_STAGE_DENOISE;
    let err = m.generate(&small("x"), Some(&mut cancel)).unwrap_err();
    assert_eq!(err.status, sys::LSD_ERR_CANCELLED);
    assert!(err.message.contains("cancel"), "{}", err);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut boom = |p: Progress| {
            if p.stage == sys::LSD_STAGE_DENOISE && p.step == 2 {
                panic!("boom at step 2");
            }
            false
        };
        let _ = m.generate(&small("x"), Some(&mut boom));
    }));
    let payload = caught.expect_err("the closure's panic did not come out of generate");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom at step 2"));
    assert_eq!(m.generate(&SampleOptions { steps: 1, ..small("x") }, None).unwrap().len(), 1, "still usable");
}

#[test]
fn errors_carry_status_and_message() {
    let err = Model::load("/nonexistent/model-dir", &ModelOptions::default()).err().unwrap();
    assert_eq!(err.status, sys::LSD_ERR_NOT_FOUND);
    assert!(err.message.contains("/nonexistent/model-dir"), "{}", err.message);
    assert!(err.to_string().ends_with("(not found)"), "{}", err);
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let err = m.generate(&SampleOptions { sampler: "warp", ..small("x") }, None).unwrap_err();
    assert_eq!(err.status, sys::LSD_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("'warp'"), "{}", err.message);
    let err = m.generate(&SampleOptions { width: 33, ..small("x") }, None).unwrap_err();
    assert!(err.message.contains("width = 33 is not a multiple of 8"), "{}", err.message);
    let err = m.generate(&SampleOptions { prompt_syntax: "fancy", ..small("x") }, None).unwrap_err();
    assert!(err.message.contains("prompt syntax 'fancy' is not one of plain, a1111"), "{}", err.message);
}

#[test]
fn prompt_syntax_reads_weights() {
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let plain = m.generate(&small("(red:1.5) cube"), None).unwrap();
    let a1111 = m.generate(&SampleOptions { prompt_syntax: "a1111", ..small("(red:1.5) cube") }, None).unwrap();
    let same = m.generate(&SampleOptions { prompt_syntax: "a1111", ..small("red cube") }, None).unwrap();
    let same_plain = m.generate(&small("red cube"), None).unwrap();
    assert_ne!(plain[0].pixels, a1111[0].pixels, "the weight changes the image");
    assert_eq!(same[0].pixels, same_plain[0].pixels, "no brackets: the same image in both");
}

/// Textual-inversion files, a folder and vectors (fixtures: tests/data/embeddings/gen_embeddings.py); failures keep
/// their status and the message naming the file or token.
#[test]
fn embeddings_load_and_errors_name_the_culprit() {
    let emb = repo().join("tests/data/embeddings");
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    m.load_embedding(emb.join("a1111_one.pt"), None).unwrap();
    m.load_embedding(emb.join("kohya_emb_bf16.safetensors"), Some("kw")).unwrap();
    // 7 files load (3 at the top, 2 kohya, diffusers' 2); the 9 of bad/ are skipped, each with a warning
    assert_eq!(m.load_embeddings_dir(&emb).unwrap(), (7, 9));
    m.add_embedding("tok", &[0.5; 64], 32).unwrap();

    let wrong = emb.join("bad/wrong_dim.pt");
    let err = m.load_embedding(&wrong, None).unwrap_err();
    assert_eq!(err.status, sys::LSD_ERR_SHAPE_MISMATCH);
    assert_eq!(err.message, format!("{}: lsd_model_add_embedding: 'wrong_dim' has vectors of 24, the text encoder's \
                                     are 32", wrong.display()));
    let err = m.add_embedding("tok", &[1.0; 24], 24).unwrap_err();
    assert_eq!(err.status, sys::LSD_ERR_SHAPE_MISMATCH);
    assert_eq!(err.message, "lsd_model_add_embedding: 'tok' has vectors of 24, the text encoder's are 32");
    let err = m.load_embedding(emb.join("a1111_one.pt"), Some("two words")).unwrap_err();
    assert_eq!(err.status, sys::LSD_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("token 'two words' holds a space or comma"), "{}", err.message);
    let err = m.add_embedding("odd", &[1.0; 33], 32).unwrap_err();
    assert_eq!(err.message, "add_embedding: 'odd': 33 floats are not rows of 32");
    let missing = emb.join("none");
    let err = m.load_embeddings_dir(&missing).unwrap_err();
    assert_eq!(err.status, sys::LSD_ERR_NOT_FOUND);
    assert!(err.message.contains(missing.to_str().unwrap()), "{}", err.message);
}

/// lsd_adapter_info.name holds 127 bytes (here half an "é"); adapters() gives the whole name.
#[test]
fn long_adapter_names_come_back_whole() {
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let mut set = AdapterSet::new(&mut m).unwrap();
    let name = format!("{}-lora", "é".repeat(100));
    set.add(&name, 2, 1).unwrap();
    assert_eq!(set.adapters().unwrap().iter().map(|a| a.name.clone()).collect::<Vec<_>>(), vec![name]);
}

/// A dataset of four images sampled by the model, each with a caption.
fn dataset(dir: &Path) {
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    for (i, caption) in ["a photo of a cat", "a red car", "two dogs", "a blue house"].iter().enumerate() {
        let img = m.generate(&SampleOptions { steps: 1, seed: i as u64, ..small(caption) }, None).unwrap();
        img[0].save_png(dir.join(format!("{}.png", i))).unwrap();
        std::fs::write(dir.join(format!("{}.txt", i)), caption).unwrap();
    }
}

fn train_two_steps(data: &Path, lora: &Path) -> Vec<f32> {
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let mut set = AdapterSet::new(&mut m).unwrap();
    let mut ds = Dataset::open(data, 32).unwrap();
    assert_eq!(ds.len(), 4);
    let o = TrainOptions { learning_rate: 1e-3, max_train_steps: 2, train_batch_size: 1, resolution: 32, seed: 3,
                           ..Default::default() };
    let mut tr = Trainer::new(&mut m, &mut set, "lora", Some(&mut ds), &o).unwrap();
    drop(m); // the trainer keeps what it trains on
    drop(ds);
    let losses = vec![tr.step().unwrap(), tr.step().unwrap()];
    assert_eq!(tr.global_step(), 2);
    tr.save_lora(lora).unwrap();
    // a trainer may move to another thread
    let tr = std::thread::spawn(move || tr).join().unwrap();
    drop(set);
    drop(tr);
    losses
}

#[test]
fn train_two_steps_twice_and_load_back() {
    let dir = temp_dir("train");
    dataset(&dir);
    let a = train_two_steps(&dir, &dir.join("a.safetensors"));
    let b = train_two_steps(&dir, &dir.join("b.safetensors"));
    assert!(a.iter().all(|l| l.is_finite() && *l > 0.0), "{:?}", a);
    assert_eq!(a, b, "same seed, same losses");
    let mut m = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let mut set = AdapterSet::new(&mut m).unwrap();
    set.load("back", dir.join("a.safetensors")).unwrap();
    let info = set.adapters().unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!((info[0].name.as_str(), info[0].rank), ("back", 4));
    assert!(info[0].modules > 0);
    let err = set.remove("nope").unwrap_err();
    assert_eq!(err.status, sys::LSD_ERR_NOT_FOUND);
    assert_eq!(err.message, "lsd_adapter_set_remove: no adapter named \"nope\" in the set");
}

#[test]
fn vae_decode_only_same_pixels_and_no_training() {
    let mut whole = Model::load(tiny(), &ModelOptions::default()).unwrap();
    let mut dec = Model::load(tiny(), &ModelOptions { vae_decode_only: true, ..Default::default() }).unwrap();
    let a = whole.generate(&small("a red cube"), None).unwrap();
    let b = dec.generate(&small("a red cube"), None).unwrap();
    assert!(a[0].pixels == b[0].pixels, "decode-only pixels differ from the whole VAE's");
    let mut set = AdapterSet::new(&mut dec).unwrap();
    let err = Trainer::new(&mut dec, &mut set, "lora", None, &TrainOptions::default()).err().unwrap();
    assert_eq!(err.status, sys::LSD_ERR_INVALID_ARGUMENT);
    assert!(err.message.contains("lsd_trainer_new: needs the VAE encoder") && err.message.contains("vae_decode_only"),
            "{}", err);
}
