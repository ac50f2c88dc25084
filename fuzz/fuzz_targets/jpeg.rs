#![no_main]
//! Any bytes → the JPEG decoder returns Ok or Err: never a panic, an endless loop or an
//! allocation beyond what the header (under the pixel limit) and the data account for; a decoded
//! image always has one sample per pixel and band.
//!
//! `crates/meacap/src/jpeg.rs` is compiled here as it is in meacap (it depends on nothing), so
//! this target does not need burn.
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/meacap/src/jpeg.rs"]
#[allow(dead_code)]
mod jpeg;

fuzz_target!(|data: &[u8]| {
    // 4 Mpixels: bigger claims are refused from the header, as preprocess refuses beyond
    // Pillow's limit; this keeps each run within libFuzzer's memory and time limits.
    if let Ok(img) = jpeg::decode(data, 1 << 22) {
        assert_eq!(img.data.len(), img.width as usize * img.height as usize * img.format.bands());
    }
});
