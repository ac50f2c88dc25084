//! The browser's manifest (`meacap-manifest.json`): for each model, the files the page needs, with
//! their size and sha256, at paths relative to the folder the page loads them from. The page
//! checks every file against it before storing it, so a wrong, truncated or HTML "file" (a dev
//! server's 404 page) never reaches its store.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::HubError;
use crate::resolve::Resolved;
use crate::roles::{check_folder, Layout, Role};

pub const BROWSER_MANIFEST_FILE: &str = "meacap-manifest.json";
pub const BROWSER_MANIFEST_FORMAT: &str = "meacap-wgpu-manifest-v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserManifest {
    pub format: String,
    /// Role key (`clip`, `gpt2`, `parser`, `sbert`, `viecap`, `memory`) → its files.
    pub models: BTreeMap<String, ManifestModel>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestModel {
    /// Where it came from, for people (a hub id, a memory id, the checkpoint's name).
    pub source: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// URL path relative to the manifest's folder (`/`-separated, no `..`).
    pub path: String,
    /// The name the model reads it by (`config.json`, `1_Pooling/config.json`, the `.pt` name).
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl BrowserManifest {
    pub fn total_size(&self) -> u64 {
        self.models.values().flat_map(|m| &m.files).map(|f| f.size).sum()
    }
}

/// The files of a resolved model the page needs, as (name in the model, path on disk): the
/// required ones and the optional ones present. Memory banks: the native `memory.safetensors`
/// when present (smaller when f16), else MeaCap's `.pt`; never the SBERT `wte` embeddings, which
/// MeaCap-InvLM does not use.
pub fn browser_files(resolved: &Resolved) -> Result<Vec<(String, PathBuf)>, HubError> {
    let spec = resolved.role.spec();
    if spec.layout == Layout::SingleFile {
        let name = resolved.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(vec![(name, resolved.path.clone())]);
    }
    let dir = &resolved.path;
    let mut names: Vec<String> = if resolved.role == Role::Memory {
        let embeddings = if dir.join("memory.safetensors").is_file() { "memory.safetensors" } else { "memory_clip_embeddings.pt" };
        vec!["memory_captions.json".to_string(), embeddings.to_string()]
    } else {
        let found = check_folder(resolved.role, dir);
        if !found.is_complete() {
            return Err(HubError::Manifest(format!(
                "{} ({}) is incomplete: {}",
                spec.key,
                dir.display(),
                found.missing.join("; ")
            )));
        }
        let mut names = found.present;
        names.extend(spec.optional.iter().filter(|f| dir.join(f).is_file()).map(|f| f.to_string()));
        names
    };
    names.sort();
    names.dedup();
    Ok(names.into_iter().map(|name| {
        let path = dir.join(&name);
        (name, path)
    }).collect())
}

/// The manifest for `found` with paths relative to `root` (the folder the page is served from,
/// or the folder a user will pick). Every file must lie under `root`. `on_file` is told each
/// file before it is hashed (progress).
pub fn build_browser_manifest(
    found: &[Resolved],
    root: &Path,
    mut on_file: impl FnMut(&Path, u64),
) -> Result<BrowserManifest, HubError> {
    if !root.is_dir() {
        return Err(HubError::Manifest(format!("{} is not a folder", root.display())));
    }
    let root_abs = lexical_absolute(root).ok_or_else(|| HubError::Manifest(format!("cannot make {} absolute", root.display())))?;
    let mut models = BTreeMap::new();
    for resolved in found {
        let mut files = Vec::new();
        for (name, path) in browser_files(resolved)? {
            let rel = relative_url_path(&root_abs, &path).ok_or_else(|| {
                HubError::Manifest(format!(
                    "{} ({}) is not under {}: the page can only load files below the folder it is served from. \
                     Copy the model there (e.g. `meacap-wgpu models fetch --to {}/checkpoints`) or pass --root with a folder that holds it",
                    resolved.role.key(),
                    path.display(),
                    root_abs.display(),
                    root.display()
                ))
            })?;
            let size = std::fs::metadata(&path)
                .map_err(|source| HubError::Io { action: "cannot read", path: path.clone(), source })?
                .len();
            on_file(&path, size);
            files.push(ManifestFile { path: rel, name, size, sha256: sha256_file(&path)? });
        }
        models.insert(resolved.role.key().to_string(), ManifestModel { source: resolved.id.clone(), files });
    }
    Ok(BrowserManifest { format: BROWSER_MANIFEST_FORMAT.to_string(), models })
}

/// `path` relative to `root` as a URL path, when it lies under it. Compared lexically (not by
/// resolving links): a `checkpoints/` that is a symlink to another disk is still served from
/// below the root.
fn relative_url_path(root_abs: &Path, path: &Path) -> Option<String> {
    let rel = lexical_absolute(path)?.strip_prefix(root_abs).ok()?.to_path_buf();
    let parts: Option<Vec<&str>> = rel
        .components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect();
    Some(parts?.join("/"))
}

/// The absolute form of `path` with `.` and `..` folded, without touching the file system.
fn lexical_absolute(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in std::path::absolute(path).ok()?.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

pub fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut file =
        std::fs::File::open(path).map_err(|source| HubError::Io { action: "cannot read", path: path.to_path_buf(), source })?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|source| HubError::Io { action: "cannot read", path: path.to_path_buf(), source })?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
