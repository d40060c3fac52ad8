// Links liblora_sd.so.0: from LORA_SD_LIB_DIR when set (a build tree), else from the system's library path.
fn main() {
    println!("cargo:rerun-if-env-changed=LORA_SD_LIB_DIR");
    if let Ok(dir) = std::env::var("LORA_SD_LIB_DIR") {
        println!("cargo:rustc-link-search=native={}", dir);
    }
    println!("cargo:rustc-link-lib=dylib=lora_sd");
}
