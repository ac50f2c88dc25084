//! Offline-first model resolution for meacap-wgpu (native only).
//!
//! * [`Resolver`]: explicit value → `<checkpoints>/<name>/` → the Hugging Face cache (laid out as
//!   huggingface_hub does). Never touches the network; a miss is a [`HubError::NotFound`] that
//!   lists every place searched and the command that fixes it.
//! * [`doctor`]: a serialisable report of what is installed where and which settings are in effect.
//! * [`fetch`]: the only networked part, behind `meacap-wgpu models fetch`; refuses when offline.
//!
//! The model table ([`ROLES`], [`Role::spec`]) is the single source for flags, folders and
//! required files. The environment comes in through [`Env`] so tests never touch process env.

mod doctor;
mod env;
mod error;
mod fetch;
mod manifest;
mod resolve;
mod roles;

pub use doctor::{doctor, list_memory_banks, DoctorReport, FileEntry, MemoryBankReport, ModelReport};
pub use env::{is_true, CacheRoot, Env, EnvVarReport, DEFAULT_ENDPOINT, RELEVANT_VARS};
pub use error::{HubError, MissingModels, NotFound};
pub use fetch::{
    fetch, part_path, FetchOptions, FetchReport, FetchedFile, FetchedModel, FileOutcome, SkippedRole,
    MANIFEST_NAME,
};
pub use manifest::{
    browser_files, build_browser_manifest, sha256_file, BrowserManifest, ManifestFile, ManifestModel,
    BROWSER_MANIFEST_FILE, BROWSER_MANIFEST_FORMAT,
};
pub use resolve::{
    is_commit_hash, looks_like_hub_id, repo_folder_name, Candidate, CandidateStatus, Resolved, Resolver,
    Search, SourceKind, DEFAULT_MEMORY_DIR,
};
pub use roles::{
    check_folder, check_single_file, default_local_path, read_shard_list, Completeness, FileGroup, FileOption,
    Layout, Pick, Role, RoleSpec, UnknownRole, DEFAULT_MEMORY_ID, ROLES, VIECAP_RELEASE_URL,
};

/// Default checkpoints folder (relative to the working directory), overridden by
/// `MEACAP_CHECKPOINTS` or `--checkpoints`.
pub const DEFAULT_CHECKPOINTS_DIR: &str = "checkpoints";
