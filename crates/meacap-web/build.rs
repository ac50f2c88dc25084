// WebAssembly's Rust stack is 1 MiB by default and an overflow does not trap: it silently
// overwrites the heap. Compiling GPU kernels (cubecl) and the nested decoding futures need more
// than that on WebGPU (seen as garbage token ids, then "memory access out of bounds"), so the
// wasm module gets 16 MiB. Only this crate's links change; dependencies are not rebuilt.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_FAMILY").as_deref() == Ok("wasm") {
        println!("cargo:rustc-link-arg=-zstack-size=16777216");
    }
}
