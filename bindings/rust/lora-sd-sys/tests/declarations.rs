//! The declarations against the header and the library: every struct has the size lsd_struct_size reports, every
//! declared function is an LSD_API function of include/lora_sd.h.
use lora_sd_sys::*;
use std::mem::size_of;

#[test]
fn struct_sizes_match_the_library() {
    let ours = [
        (LSD_STRUCT_RUNTIME_INFO, size_of::<lsd_runtime_info>(), "lsd_runtime_info"),
        (LSD_STRUCT_PROGRESS, size_of::<lsd_progress>(), "lsd_progress"),
        (LSD_STRUCT_IMAGE, size_of::<lsd_image>(), "lsd_image"),
        (LSD_STRUCT_MODEL_PARAMS, size_of::<lsd_model_params>(), "lsd_model_params"),
        (LSD_STRUCT_MODEL_INFO, size_of::<lsd_model_info>(), "lsd_model_info"),
        (LSD_STRUCT_SAMPLE_PARAMS, size_of::<lsd_sample_params>(), "lsd_sample_params"),
        (LSD_STRUCT_LORA_PARAMS, size_of::<lsd_lora_params>(), "lsd_lora_params"),
        (LSD_STRUCT_LOAD_REPORT, size_of::<lsd_load_report>(), "lsd_load_report"),
        (LSD_STRUCT_ADAPTER_INFO, size_of::<lsd_adapter_info>(), "lsd_adapter_info"),
        (LSD_STRUCT_DATASET_PARAMS, size_of::<lsd_dataset_params>(), "lsd_dataset_params"),
        (LSD_STRUCT_DATASET_INFO, size_of::<lsd_dataset_info>(), "lsd_dataset_info"),
        (LSD_STRUCT_TRAIN_METRICS, size_of::<lsd_train_metrics>(), "lsd_train_metrics"),
        (LSD_STRUCT_TRAIN_PARAMS, size_of::<lsd_train_params>(), "lsd_train_params"),
        (LSD_STRUCT_TRAIN_BATCH, size_of::<lsd_train_batch>(), "lsd_train_batch"),
    ];
    for (id, size, name) in ours {
        let mut first = 0usize;
        let lib = unsafe { lsd_struct_size(id, &mut first) };
        assert_eq!(size, lib, "{}: declared {} bytes, the library has {}", name, size, lib);
        assert!(first > 0 && first <= lib, "{}: first published size {}", name, first);
    }
    assert_eq!(unsafe { lsd_struct_size(999, std::ptr::null_mut()) }, 0);
}

#[test]
fn functions_are_the_headers() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let header = std::fs::read_to_string(format!("{}/../../../include/lora_sd.h", dir)).unwrap();
    let ours = std::fs::read_to_string(format!("{}/src/lib.rs", dir)).unwrap();
    let mut n = 0;
    for piece in ours.split("pub fn ").skip(1) {
        let name = &piece[..piece.find('(').unwrap()];
        let declared = header
            .lines()
            .any(|l| l.starts_with("LSD_API ") && (l.contains(&format!(" {}(", name)) || l.contains(&format!("*{}(", name))));
        assert!(declared, "{} is not an LSD_API function of lora_sd.h", name);
        n += 1;
    }
    assert!(n >= 30, "only {} functions found", n);
}

#[test]
fn status_numbers_have_names() {
    for st in [LSD_OK, LSD_ERR_INVALID_ARGUMENT, LSD_ERR_IO, LSD_ERR_FORMAT, LSD_ERR_UNSUPPORTED, LSD_ERR_SHAPE_MISMATCH,
               LSD_ERR_OUT_OF_MEMORY, LSD_ERR_DEVICE, LSD_ERR_CANCELLED, LSD_ERR_NOT_FOUND, LSD_ERR_NUMERIC,
               LSD_ERR_INTERNAL] {
        let s = unsafe { std::ffi::CStr::from_ptr(lsd_status_string(st)) }.to_str().unwrap();
        assert_ne!(s, "unknown status", "status {}", st);
    }
    let s = unsafe { std::ffi::CStr::from_ptr(lsd_status_string(LSD_ERR_CANCELLED)) };
    assert_eq!(s.to_str().unwrap(), "cancelled");
}
