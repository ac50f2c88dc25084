//! The library's one error type. Every variant names what it concerns (model, file, tensor) so a
//! user can act on the message alone.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A file the model needs is not among its files.
    #[error("{model}: file `{file}` is missing")]
    MissingFile { model: String, file: String },

    /// A `config.json` (or similar) that does not parse or lacks a field.
    #[error("{model}: invalid `{file}`: {message}")]
    Config { model: String, file: String, message: String },

    /// A weight file that is malformed: truncated, lying header, bad zip, unexpected pickle.
    #[error("{file}: {message}")]
    WeightFile { file: String, message: String },

    /// A tensor that is absent, has the wrong shape or an unsupported dtype.
    #[error("{file}: tensor `{tensor}`: {message}")]
    Tensor { file: String, tensor: String, message: String },

    /// A checkpoint loaded strictly whose keys do not match the model.
    #[error("{file}: checkpoint does not match the model: {message}")]
    StrictLoad { file: String, message: String },

    #[error("{model}: tokenizer: {message}")]
    Tokenizer { model: String, message: String },

    /// An image that cannot be decoded or is unusable.
    #[error("image {image}: {message}")]
    Image { image: String, message: String },

    /// A memory bank that is empty, inconsistent or corrupt.
    #[error("memory bank {memory}: {message}")]
    Memory { memory: String, message: String },

    /// Input of the wrong shape or range handed to a model or stage.
    #[error("{0}")]
    InvalidInput(String),

    /// The compute device failed (adapter lost, allocation refused, readback failed).
    #[error("device: {0}")]
    Device(String),
}

impl Error {
    pub fn weight_file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::WeightFile { file: file.into(), message: message.into() }
    }
    pub fn tensor(file: impl Into<String>, tensor: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Tensor { file: file.into(), tensor: tensor.into(), message: message.into() }
    }
}
