#![no_main]
//! Any bytes → SafetensorsFile::parse must return Ok or Err, never panic; every view it hands
//! out must validate or be rejected, and small ones must convert.
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use meacap::weights::safetensors::SafetensorsFile;
use meacap::weights::TensorSource;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = SafetensorsFile::parse("fuzz".into(), Arc::new(data.to_vec())) {
        for name in f.names() {
            if let Some(v) = f.view(&name) {
                if v.validate("fuzz", &name).is_ok() && v.numel() < 1 << 20 {
                    let _ = v.to_f32("fuzz", &name);
                }
            }
        }
    }
});
