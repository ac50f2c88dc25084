//! How model files reach the library: by name, as bytes or memory maps, from whoever holds them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The bytes of one file. Natively usually a memory map; in the browser a buffer from storage.
pub type FileBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The files of one model (a checkpoint folder, a cache snapshot, a browser store).
pub trait ModelFiles: Send + Sync {
    /// A human-readable name for messages, e.g. `"parser (checkpoints/flan-t5-base-VG-factual-sg)"`.
    fn describe(&self) -> String;
    /// The bytes of `name` (a path relative to the model folder), or `None` if it does not exist.
    fn open(&self, name: &str) -> Result<Option<FileBytes>>;
    /// Where `name` would be, for messages (a path or URL).
    fn location(&self, name: &str) -> String {
        format!("{}/{}", self.describe(), name)
    }

    /// `open`, with a missing file turned into an error naming model and file.
    fn require(&self, name: &str) -> Result<FileBytes> {
        self.open(name)?.ok_or_else(|| Error::MissingFile { model: self.describe(), file: name.to_string() })
    }
    fn exists(&self, name: &str) -> bool {
        matches!(self.open(name), Ok(Some(_)))
    }
    /// Reads and parses a JSON file.
    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T>
    where
        Self: Sized,
    {
        read_json(self, name)
    }
}

/// Reads and parses a JSON file of `files` (object-safe form of [`ModelFiles::json`]).
pub fn read_json<T: serde::de::DeserializeOwned>(files: &(impl ModelFiles + ?Sized), name: &str) -> Result<T> {
    let bytes = files.require(name)?;
    serde_json::from_slice(bytes.as_ref().as_ref()).map_err(|e| Error::Config {
        model: files.describe(),
        file: name.to_string(),
        message: e.to_string(),
    })
}

/// Files held in memory: tests, and the browser after reading its store.
#[derive(Clone, Default)]
pub struct MemFiles {
    name: String,
    files: BTreeMap<String, FileBytes>,
}

impl MemFiles {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), files: BTreeMap::new() }
    }
    pub fn insert(&mut self, file: impl Into<String>, bytes: impl AsRef<[u8]> + Send + Sync + 'static) {
        self.files.insert(file.into(), Arc::new(bytes));
    }
    pub fn with(mut self, file: impl Into<String>, bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        self.insert(file, bytes);
        self
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }
}

impl ModelFiles for MemFiles {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn open(&self, name: &str) -> Result<Option<FileBytes>> {
        Ok(self.files.get(name).cloned())
    }
}
