// Links liblora_sd.so.0: from LORA_SD_LIB_DIR when set (a build tree), else from the directories pkg-config gives for
// lora_sd (none for a library in the system's path, as Debian's liblora-sd-dev installs it), else from the system's
// library path. std only: pkg-config is run as a command, so the crate needs no build dependency.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LORA_SD_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    if let Ok(dir) = std::env::var("LORA_SD_LIB_DIR") {
        println!("cargo:rustc-link-search=native={}", dir);
    } else if let Ok(out) = Command::new("pkg-config").args(["--libs-only-L", "lora_sd"]).output() {
        if out.status.success() {
            for dir in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|f| f.strip_prefix("-L")) {
                println!("cargo:rustc-link-search=native={}", dir);
            }
        }
    }
    println!("cargo:rustc-link-lib=dylib=lora_sd");
}
