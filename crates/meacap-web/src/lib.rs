//! The browser entry of meacap-wgpu: the `meacap` library behind a small wasm-bindgen API that
//! `web/worker.js` drives from a dedicated Web Worker.
//!
//! JS owns storage and networking (fetch, OPFS, the manifest); this crate owns everything the
//! native CLI does with the bytes. Model files arrive one model at a time as [`IncomingFile`]s
//! (copied chunk by chunk into wasm memory and hashed on the way), are checked against the
//! manifest's size and sha256, turned into that model's tensors (uploaded to the GPU tensor by
//! tensor) and then freed, so wasm memory never holds more than one model's files at once.

#[cfg(target_family = "wasm")]
mod web;
#[cfg(target_family = "wasm")]
pub use web::*;

/// Checks a received file against the manifest entry (size in bytes, lowercase hex sha256).
pub fn check_file(name: &str, data_len: usize, digest_hex: &str, size: u64, sha256: &str) -> Result<(), String> {
    if data_len as u64 != size {
        return Err(format!("{name}: received {data_len} bytes, the manifest says {size}"));
    }
    if !digest_hex.eq_ignore_ascii_case(sha256) {
        return Err(format!(
            "{name}: sha256 {digest_hex} does not match the manifest ({sha256}): the file is corrupt or from another model"
        ));
    }
    Ok(())
}

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
