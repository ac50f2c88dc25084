#![no_main]
//! Any bytes → PickleCheckpoint::parse. Inputs that are not zips also get wrapped in a minimal
//! torch-style zip as `archive/data.pkl`, so the fuzzer reaches the pickle VM quickly.
use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use meacap::weights::pickle::PickleCheckpoint;
use meacap::weights::TensorSource;

fn wrap(pickle: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let _ = zip.start_file("archive/data.pkl", opts);
    let _ = zip.write_all(pickle);
    for key in ["0", "1", "2"] {
        let _ = zip.start_file(format!("archive/data/{key}"), opts);
        let _ = zip.write_all(&[0u8; 64]);
    }
    zip.finish().map(|c| c.into_inner()).unwrap_or_default()
}

fn check(bytes: Vec<u8>) {
    if let Ok(ck) = PickleCheckpoint::parse("fuzz.pt".into(), Arc::new(bytes)) {
        for name in ck.names() {
            if let Some(v) = ck.view(&name) {
                if v.validate("fuzz", &name).is_ok() && v.numel() < 1 << 20 {
                    let _ = v.to_f32("fuzz", &name);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data.to_vec());
    if !data.starts_with(b"PK") {
        check(wrap(data));
    }
});
