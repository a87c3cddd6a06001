//! The GGUF header reader: any bytes are read into model facts or refused with a typed error;
//! it never panics, never allocates what the file merely claims, and never reads out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = appl_firmware_profiles::gguf::GgufInfo::from_bytes(data) {
        let _ = info.weights_bytes();
        let _ = info.parameter_count();
        let _ = info.bits_per_weight();
        let _ = info.file_type_name();
        let _ = info.has_swa();
        let _ = info.layer_bytes(0);
    }
});
