//! From command-line flags to model folders: the hub crate's offline-first resolver, plus a
//! download of what is missing when (and only when) the network is allowed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::Device;
use meacap::memory::{MemoryBank, MemoryOptions};
use meacap_hub::{Env, FetchOptions, HubError, Resolver, Role};

use crate::caption::ModelArgs;
use crate::files::DirFiles;

/// The resolver for these flags and the process environment.
pub fn resolver(args: &ModelArgs) -> Resolver {
    let env = Env::from_process();
    let mut r = Resolver::new(env).with_offline(args.offline).with_memory_id(&args.memory_id);
    if let Some(dir) = &args.checkpoints {
        r = r.with_checkpoints(dir);
    }
    if let Some(dir) = &args.memory_dir {
        r = r.with_memory_dir(dir);
    }
    for (role, value) in [
        (Role::Clip, &args.vl_model),
        (Role::Gpt2, &args.language_model),
        (Role::Parser, &args.parser_checkpoint),
        (Role::Sbert, &args.wte_model_path),
        (Role::Viecap, &args.weight_path),
    ] {
        if let Some(value) = value {
            r = r.with_explicit(role, value.clone());
        }
    }
    r
}

/// Local paths of everything a caption run needs.
pub struct CaptionModels {
    pub clip: PathBuf,
    pub gpt2: PathBuf,
    pub parser: PathBuf,
    pub sbert: PathBuf,
    /// The ViECap `.pt` file itself.
    pub viecap: PathBuf,
    /// The memory bank folder.
    pub memory: PathBuf,
}

/// Resolves every role locally. When some are missing and the network is allowed, downloads the
/// ones the hub has (into the checkpoints tree, as `models fetch` would) and resolves again.
pub fn resolve_for_caption(args: &ModelArgs) -> Result<CaptionModels> {
    let resolver = resolver(args);
    let found = match resolver.resolve_all(&Role::ALL) {
        Ok(found) => found,
        Err(HubError::NotFound(missing)) if !resolver.is_offline() => {
            let fetchable: Vec<Role> = missing.0.iter().map(|m| m.role).filter(|r| r.spec().hub_repo.is_some()).collect();
            if fetchable.len() < missing.0.len() || fetchable.is_empty() {
                // Something cannot be downloaded (the ViECap checkpoint): say everything at once.
                return Err(HubError::NotFound(missing).into());
            }
            eprintln!(
                "downloading missing models: {} (use --offline to forbid network access)",
                fetchable.iter().map(|r| r.key()).collect::<Vec<_>>().join(", ")
            );
            let mut options = FetchOptions::new(resolver.checkpoints());
            options.memory_dir = resolver.memory_dir().to_path_buf();
            options.memory_ids = vec![resolver.memory_id().to_string()];
            options.roles = fetchable;
            meacap_hub::fetch(resolver.env(), &options).context("downloading missing models")?;
            resolver.resolve_all(&Role::ALL)?
        }
        Err(e) => return Err(e.into()),
    };
    let path = |role: Role| found.iter().find(|r| r.role == role).map(|r| r.path.clone()).unwrap_or_default();
    Ok(CaptionModels {
        clip: path(Role::Clip),
        gpt2: path(Role::Gpt2),
        parser: path(Role::Parser),
        sbert: path(Role::Sbert),
        viecap: path(Role::Viecap),
        memory: path(Role::Memory),
    })
}

/// Opens a memory bank folder (MeaCap's `.pt` layout or ours) on `device`.
pub fn open_memory(path: &std::path::Path, device: &Device) -> Result<MemoryBank> {
    let files = DirFiles::new("memory", path);
    Ok(MemoryBank::load(&files, &MemoryOptions::default(), device)?)
}
