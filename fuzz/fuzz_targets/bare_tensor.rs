#![no_main]
//! Any bytes (raw, or wrapped as a torch zip's data.pkl) → read_bare_tensor: Ok or Err, no panic.
use std::io::Write;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use meacap::weights::pickle::read_bare_tensor;

fn wrap(pickle: &[u8]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let _ = zip.start_file("archive/data.pkl", opts);
    let _ = zip.write_all(pickle);
    let _ = zip.start_file("archive/data/0", opts);
    let _ = zip.write_all(&[0u8; 64]);
    zip.finish().map(|c| c.into_inner()).unwrap_or_default()
}

fn check(bytes: Vec<u8>) {
    if let Ok(v) = read_bare_tensor("fuzz.pt".into(), Arc::new(bytes)) {
        if v.numel() < 1 << 20 {
            let _ = v.to_f32("fuzz", "t");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data.to_vec());
    if !data.starts_with(b"PK") {
        check(wrap(data));
    }
});
