//! Samples one image with the safe binding and writes it as a PNG (lsd_image_save_png):
//!
//!     cargo run --example generate -- MODEL PROMPT OUT.png [STEPS [SIZE]]
//!
//! euler_a, seed 7, guidance 7.5; STEPS 20 and SIZE 512 by default. tools/deb-smoke.sh builds it against the
//! installed packages and checks its pixels against lora-sd generate's.
use lora_sd::{Model, ModelOptions, SampleOptions};

fn number(args: &[String], i: usize, default: i32) -> i32 {
    args.get(i).map_or(default, |s| s.parse().unwrap_or_else(|_| usage()))
}

fn usage() -> ! {
    eprintln!("usage: generate MODEL PROMPT OUT.png [STEPS [SIZE]]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        usage();
    }
    let size = number(&args, 4, 512);
    let options = SampleOptions { prompt: &args[1], steps: number(&args, 3, 20), sampler: "euler_a", seed: 7,
                                  guidance_scale: 7.5, width: size, height: size, ..Default::default() };
    // only decoding: the VAE's encoder is not loaded, as lora-sd generate does
    let result = Model::load(&args[0], &ModelOptions { vae_decode_only: true, ..Default::default() })
        .and_then(|mut model| model.generate(&options, None))
        .and_then(|images| images[0].save_png(&args[2]));
    if let Err(e) = result {
        eprintln!("generate: {}", e);
        std::process::exit(1);
    }
}
