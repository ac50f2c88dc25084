//! MeaCap-InvLM on burn: memory-augmented zero-shot image captioning.
//!
//! The library knows tensors, models and the MeaCap algorithm. It reads model files only through
//! [`files::ModelFiles`] (bytes or memory maps handed in by the caller), so the same code serves a
//! native folder, the Hugging Face cache and files held by a browser. It opens no file by path,
//! no socket and no window.

pub mod activations;
pub mod attention;
pub mod concepts;
pub mod device;
pub mod error;
pub mod files;
pub mod jpeg;
pub mod memory;
pub mod models;
pub mod norms;
mod parallel;
pub mod preprocess;
pub mod rowmatmul;
pub mod tokenize;
pub mod weights;
pub mod decode;
pub mod pipeline;

pub use error::{Error, Result};
pub use files::{FileBytes, MemFiles, ModelFiles};
