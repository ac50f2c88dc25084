//! Builds folders shaped like a real Hugging Face hub cache (`models--org--name/{refs,blobs,
//! snapshots}`) and minimal complete model folders for each role.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use meacap_hub::Role;
use sha2::Digest as _;

/// A hub cache rooted at `root` (what `HF_HUB_CACHE` points to).
pub struct FakeCache {
    pub root: PathBuf,
}

impl FakeCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        std::fs::create_dir_all(&root).unwrap();
        FakeCache { root }
    }

    pub fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.root.join(format!("models--{}", repo_id.replace('/', "--")))
    }

    /// Writes `snapshots/<commit>/...`: relative symlinks into `blobs/` (as huggingface_hub does
    /// by default) or plain copies (`HF_HUB_DISABLE_SYMLINKS`, Windows without developer mode).
    pub fn add_snapshot(&self, repo_id: &str, commit: &str, files: &[(String, Vec<u8>)], symlinks: bool) -> PathBuf {
        let repo = self.repo_dir(repo_id);
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        for (name, content) in files {
            let dest = snapshot.join(name);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            if symlinks {
                let blob_name = hex::encode(sha2::Sha256::digest(content));
                std::fs::write(repo.join("blobs").join(&blob_name), content).unwrap();
                // snapshots/<commit>/<a>/<b> → ../../(../)blobs/<hash>
                let depth = name.split('/').count() + 1;
                let target: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(blob_name);
                symlink(&target, &dest);
            } else {
                std::fs::write(&dest, content).unwrap();
            }
        }
        snapshot
    }

    /// Writes `refs/<name>` (a branch or a tag) holding `commit`.
    pub fn set_ref(&self, repo_id: &str, name: &str, commit: &str) {
        let path = self.repo_dir(repo_id).join("refs").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, commit).unwrap();
    }

    /// Deletes the blob a snapshot file links to, leaving a dangling symlink (interrupted download).
    pub fn delete_blob_of(&self, repo_id: &str, commit: &str, name: &str) {
        let link = self.repo_dir(repo_id).join("snapshots").join(commit).join(name);
        let target = std::fs::read_link(&link).unwrap();
        std::fs::remove_file(link.parent().unwrap().join(target)).unwrap();
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) {
    std::os::windows::fs::symlink_file(target, link).unwrap();
}

/// A fake 40-hex commit derived from a label.
pub fn commit(label: &str) -> String {
    let digest = hex::encode(sha2::Sha256::digest(label.as_bytes()));
    digest[..40].to_string()
}

fn file(name: &str, content: &str) -> (String, Vec<u8>) {
    (name.to_string(), content.as_bytes().to_vec())
}

/// A minimal complete file set for a folder role (contents are placeholders: the resolver only
/// checks presence).
pub fn model_files(role: Role) -> Vec<(String, Vec<u8>)> {
    let config = file("config.json", "{}");
    match role {
        Role::Clip => vec![config, file("model.safetensors", "weights"), file("tokenizer.json", "{}")],
        Role::Gpt2 => vec![config, file("vocab.json", "{}"), file("merges.txt", "#version: 0.2")],
        Role::Parser => vec![config, file("pytorch_model.bin", "weights"), file("spiece.model", "sp")],
        Role::Sbert => vec![
            config,
            file("model.safetensors", "weights"),
            file("vocab.txt", "[PAD]"),
            file("modules.json", "[]"),
            file("1_Pooling/config.json", "{}"),
        ],
        Role::Memory => vec![file("memory_captions.json", "[]"), file("memory_clip_embeddings.pt", "pt")],
        Role::Viecap => vec![file("coco_prefix-0014.pt", "pt")],
    }
}

/// Writes files into a plain folder.
pub fn write_folder(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, content) in files {
        let dest = dir.join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, content).unwrap();
    }
}

/// `files` without the named ones.
pub fn without(files: Vec<(String, Vec<u8>)>, drop: &[&str]) -> Vec<(String, Vec<u8>)> {
    files.into_iter().filter(|(name, _)| !drop.contains(&name.as_str())).collect()
}
