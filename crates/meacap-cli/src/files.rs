//! `ModelFiles` over a folder on disk: files are memory-mapped, so multi-GB weights are paged in
//! on demand instead of being read into memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meacap::files::{FileBytes, ModelFiles};

pub struct DirFiles {
    root: PathBuf,
    label: String,
}

impl DirFiles {
    /// `label` names the model in messages, e.g. "parser".
    pub fn new(label: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), label: label.into() }
    }
}

/// Maps a file read-only; empty files (which cannot be mapped) become empty buffers.
pub fn map_file(path: &Path) -> std::io::Result<FileBytes> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Arc::new(Vec::<u8>::new()));
    }
    // SAFETY: the map is read-only; a file truncated by another process while mapped would fault,
    // which is the accepted trade-off of every memory-mapping model loader.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(Arc::new(map))
}

impl ModelFiles for DirFiles {
    fn describe(&self) -> String {
        format!("{} ({})", self.label, self.root.display())
    }

    fn location(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn open(&self, name: &str) -> meacap::Result<Option<FileBytes>> {
        let path = self.root.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        map_file(&path).map(Some).map_err(|e| meacap::Error::WeightFile {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })
    }
}
