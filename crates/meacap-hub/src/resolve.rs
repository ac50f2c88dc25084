//! Offline model resolution: explicit value → `<checkpoints>/<name>/` → Hugging Face cache.
//! Nothing here opens a socket; downloading is [`crate::fetch`]'s job and only on request.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::env::{CacheRoot, Env};
use crate::error::{HubError, MissingModels, NotFound};
use crate::roles::{check_folder, check_single_file, fix_hint, Layout, Role};

/// Where a model was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// An explicit path given on the command line.
    Flag,
    /// `<checkpoints>/<name>/`.
    Checkpoints,
    /// `<memory dir>/<id>/`.
    MemoryDir,
    /// The Hugging Face hub cache.
    HfCache,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Flag => "flag",
            SourceKind::Checkpoints => "checkpoints",
            SourceKind::MemoryDir => "memory dir",
            SourceKind::HfCache => "HF cache",
        })
    }
}

/// A model found locally and complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub role: Role,
    /// Hub id (`org/name`), the explicit path for flag sources, or the ViECap file name.
    pub id: String,
    /// The folder holding the files (the `.pt` file itself for ViECap).
    pub path: PathBuf,
    pub source: SourceKind,
    /// For HF cache hits: the commit hash of the snapshot used.
    pub commit: Option<String>,
}

/// Why a searched place was not used (or `Found`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CandidateStatus {
    Found,
    Absent,
    NotADirectory,
    /// A single-file role's file exists but is unusable (empty, a folder).
    BadFile { reason: String },
    Incomplete { missing: Vec<String> },
    /// `models--org--name/` exists but has no `refs/<revision>`.
    MissingRef { revision: String },
    /// `refs/<revision>` (or a pinned commit) names a snapshot folder that does not exist.
    MissingSnapshot { commit: String },
    Unreadable { error: String },
}

impl fmt::Display for CandidateStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CandidateStatus::Found => f.write_str("found"),
            CandidateStatus::Absent => f.write_str("absent"),
            CandidateStatus::NotADirectory => f.write_str("not a folder"),
            CandidateStatus::BadFile { reason } => f.write_str(reason),
            CandidateStatus::Incomplete { missing } => write!(f, "incomplete: missing {}", missing.join(", ")),
            CandidateStatus::MissingRef { revision } => write!(f, "no refs/{revision} (revision never downloaded)"),
            CandidateStatus::MissingSnapshot { commit } => {
                write!(f, "ref points to missing snapshot {commit}")
            }
            CandidateStatus::Unreadable { error } => write!(f, "unreadable: {error}"),
        }
    }
}

/// One place searched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub source: SourceKind,
    pub path: PathBuf,
    /// Extra context, e.g. "revision main → 0123abcd…" or "cache root from HF_HOME".
    pub detail: Option<String>,
    #[serde(flatten)]
    pub status: CandidateStatus,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.path.display(), self.source)?;
        if let Some(detail) = &self.detail {
            write!(f, ", {detail}")?;
        }
        write!(f, "): {}", self.status)
    }
}

/// Every place searched for one role, in order.
#[derive(Clone, Debug, Serialize)]
pub struct Search {
    pub role: Role,
    pub id: String,
    pub candidates: Vec<Candidate>,
    /// Set when an explicit value was not an existing path and was read as a hub id.
    pub note: Option<String>,
    /// The hit, if any.
    pub resolved: Option<Resolved>,
}

impl Search {
    /// The candidate closest to usable: the incomplete one with the fewest gaps.
    pub fn best_incomplete(&self) -> Option<&Candidate> {
        self.candidates
            .iter()
            .filter_map(|c| match &c.status {
                CandidateStatus::Incomplete { missing } => Some((missing.len(), c)),
                _ => None,
            })
            .min_by_key(|(gaps, _)| *gaps)
            .map(|(_, c)| c)
    }
}

/// Default memory bank root (MeaCap keeps banks under `data/memory/<id>/`).
pub const DEFAULT_MEMORY_DIR: &str = "data/memory";

/// Resolves model locations without touching the network.
#[derive(Clone, Debug)]
pub struct Resolver {
    env: Env,
    checkpoints: PathBuf,
    memory_dir: PathBuf,
    memory_id: String,
    offline_flag: bool,
    explicit: BTreeMap<Role, String>,
    revisions: BTreeMap<Role, String>,
}

impl Resolver {
    /// Checkpoints dir from `MEACAP_CHECKPOINTS` (else `./checkpoints`), memory banks under
    /// `data/memory`, memory id `cc3m`, revision `main`.
    pub fn new(env: Env) -> Self {
        Resolver {
            checkpoints: env.checkpoints_dir(),
            env,
            memory_dir: PathBuf::from(DEFAULT_MEMORY_DIR),
            memory_id: crate::roles::DEFAULT_MEMORY_ID.to_string(),
            offline_flag: false,
            explicit: BTreeMap::new(),
            revisions: BTreeMap::new(),
        }
    }

    /// `--checkpoints DIR` (overrides `MEACAP_CHECKPOINTS`).
    pub fn with_checkpoints(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoints = dir.into();
        self
    }

    /// The root holding memory banks (`<dir>/<id>/`).
    pub fn with_memory_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.memory_dir = dir.into();
        self
    }

    /// `--memory-id`.
    pub fn with_memory_id(mut self, id: impl Into<String>) -> Self {
        self.memory_id = id.into();
        self
    }

    /// `--offline` (`--offline_mode`): the environment can turn offline on, never off.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline_flag = offline;
        self
    }

    /// An explicit value for a role: a folder, a file (ViECap), or a hub id (`org/name`).
    /// For memory it is the bank folder itself.
    pub fn with_explicit(mut self, role: Role, value: impl Into<String>) -> Self {
        self.explicit.insert(role, value.into());
        self
    }

    /// The revision to read from the HF cache for a role: a branch, a tag or a full commit hash.
    pub fn with_revision(mut self, role: Role, revision: impl Into<String>) -> Self {
        self.revisions.insert(role, revision.into());
        self
    }

    pub fn env(&self) -> &Env {
        &self.env
    }
    pub fn checkpoints(&self) -> &Path {
        &self.checkpoints
    }
    pub fn memory_dir(&self) -> &Path {
        &self.memory_dir
    }
    pub fn memory_id(&self) -> &str {
        &self.memory_id
    }

    /// Offline when the flag or `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` says so.
    pub fn is_offline(&self) -> bool {
        self.offline_flag || self.env.is_offline()
    }

    /// Why offline mode is on, e.g. "HF_HUB_OFFLINE" or "--offline".
    pub fn offline_reason(&self) -> Option<String> {
        if self.offline_flag {
            Some("--offline".to_string())
        } else {
            self.env.offline_var().map(|var| format!("{var}={}", self.env.get(var).unwrap_or("")))
        }
    }

    pub fn hf_cache_root(&self) -> CacheRoot {
        self.env.hf_cache_root()
    }

    fn revision(&self, role: Role) -> &str {
        self.revisions.get(&role).map(String::as_str).unwrap_or("main")
    }

    /// Finds a role's files, or a [`HubError::NotFound`] that lists every place searched and
    /// how to fix it.
    pub fn resolve(&self, role: Role) -> Result<Resolved, HubError> {
        let search = self.search(role);
        if let Some(found) = search.resolved.clone() {
            return Ok(found);
        }
        Err(HubError::NotFound(MissingModels(vec![self.not_found(search)])))
    }

    /// Resolves several roles and reports every missing one at once.
    pub fn resolve_all(&self, roles: &[Role]) -> Result<Vec<Resolved>, HubError> {
        let mut found = Vec::with_capacity(roles.len());
        let mut missing = Vec::new();
        for &role in roles {
            let search = self.search(role);
            match search.resolved.clone() {
                Some(hit) => found.push(hit),
                None => missing.push(self.not_found(search)),
            }
        }
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(HubError::NotFound(MissingModels(missing)))
        }
    }

    pub(crate) fn not_found(&self, search: Search) -> NotFound {
        let best = search.best_incomplete().cloned();
        NotFound {
            role: search.role,
            id: search.id,
            flag: search.role.spec().cli_flag.to_string(),
            candidates: search.candidates,
            best_candidate: best.as_ref().map(|c| c.path.clone()),
            missing_in_best: match best.map(|c| c.status) {
                Some(CandidateStatus::Incomplete { missing }) => missing,
                _ => Vec::new(),
            },
            note: search.note,
            fix: fix_hint(search.role, &self.checkpoints, &self.memory_dir, &self.memory_id),
            offline_reason: self.offline_reason(),
        }
    }

    /// Every place searched for a role, with the verdict for each; stops at the first hit.
    pub fn search(&self, role: Role) -> Search {
        let spec = role.spec();
        let mut search = Search {
            role,
            id: self.default_id(role),
            candidates: Vec::new(),
            note: None,
            resolved: None,
        };
        let mut hub_ids: Vec<String> = spec
            .hub_repo
            .iter()
            .chain(spec.legacy_ids)
            .map(|id| id.to_string())
            .collect();
        let mut local_name = spec.local_name.to_string();

        if let Some(value) = self.explicit.get(&role) {
            let path = self.env.expand_path(value);
            let exists = std::fs::symlink_metadata(&path).is_ok();
            if exists || !looks_like_hub_id(value) || spec.layout != Layout::HubFolder {
                // An explicit path is authoritative: never fall back to another copy silently.
                search.id = value.clone();
                let status = self.check_candidate(role, &path);
                self.push(&mut search, SourceKind::Flag, path, None, status, None);
                return search;
            }
            search.note = Some(format!("'{value}' is not an existing path; read as a hub id"));
            search.id = value.clone();
            hub_ids = vec![value.clone()];
            local_name = value.rsplit('/').next().unwrap_or(value).to_string();
        }

        // Local folder under the checkpoints dir (or the memory dir).
        let (local_kind, local_path) = match spec.layout {
            Layout::MemoryBank => (SourceKind::MemoryDir, self.memory_dir.join(&self.memory_id)),
            _ => (SourceKind::Checkpoints, self.checkpoints.join(&local_name)),
        };
        let status = self.check_candidate(role, &local_path);
        if self.push(&mut search, local_kind, local_path, None, status, None) {
            return search;
        }

        if spec.layout == Layout::SingleFile {
            return search;
        }
        let cache = self.env.hf_cache_root();
        for id in hub_ids {
            if self.search_hf_cache(role, &id, &cache, &mut search) {
                return search;
            }
        }
        search
    }

    fn default_id(&self, role: Role) -> String {
        let spec = role.spec();
        match spec.layout {
            Layout::MemoryBank => format!("{}:memory/{}", spec.hub_repo.unwrap_or("?"), self.memory_id),
            Layout::SingleFile => spec.local_name.to_string(),
            Layout::HubFolder => spec.hub_repo.unwrap_or(spec.local_name).to_string(),
        }
    }

    /// Records a candidate; returns true (and sets `resolved`) when it is usable.
    fn push(
        &self,
        search: &mut Search,
        source: SourceKind,
        path: PathBuf,
        detail: Option<String>,
        status: CandidateStatus,
        commit: Option<String>,
    ) -> bool {
        let found = status == CandidateStatus::Found;
        tracing::debug!(role = %search.role, path = %path.display(), %status, "model candidate");
        if found {
            search.resolved = Some(Resolved {
                role: search.role,
                id: search.id.clone(),
                path: path.clone(),
                source,
                commit,
            });
        }
        search.candidates.push(Candidate { source, path, detail, status });
        found
    }

    fn check_candidate(&self, role: Role, path: &Path) -> CandidateStatus {
        if role.spec().layout == Layout::SingleFile {
            return match check_single_file(path) {
                Ok(_) => CandidateStatus::Found,
                Err(reason) if reason == "absent" => CandidateStatus::Absent,
                Err(reason) => CandidateStatus::BadFile { reason },
            };
        }
        match std::fs::metadata(path) {
            Err(_) => CandidateStatus::Absent,
            Ok(meta) if !meta.is_dir() => CandidateStatus::NotADirectory,
            Ok(_) => {
                let completeness = check_folder(role, path);
                if completeness.is_complete() {
                    CandidateStatus::Found
                } else {
                    CandidateStatus::Incomplete { missing: completeness.missing }
                }
            }
        }
    }

    /// Looks in `<cache>/models--org--name/` the way huggingface_hub lays it out.
    fn search_hf_cache(&self, role: Role, id: &str, cache: &CacheRoot, search: &mut Search) -> bool {
        let repo_dir = cache.path.join(repo_folder_name(id));
        let revision = self.revision(role);
        let from = format!("cache root from {}", cache.from);
        if !repo_dir.is_dir() {
            return self.push(search, SourceKind::HfCache, repo_dir, Some(from), CandidateStatus::Absent, None);
        }
        let commit = if is_commit_hash(revision) {
            revision.to_string()
        } else {
            // huggingface_hub writes refs/<revision> for branches and tags alike.
            let ref_path = repo_dir.join("refs").join(revision);
            match std::fs::read_to_string(&ref_path) {
                Ok(text) => text.trim().to_string(),
                Err(error) => {
                    let status = if ref_path.exists() {
                        CandidateStatus::Unreadable { error: format!("{}: {error}", ref_path.display()) }
                    } else {
                        CandidateStatus::MissingRef { revision: revision.to_string() }
                    };
                    return self.push(search, SourceKind::HfCache, repo_dir, Some(from), status, None);
                }
            }
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        let detail = Some(format!("{from}, revision {revision}"));
        if commit.is_empty() || commit.contains(['/', '\\']) || !snapshot.is_dir() {
            let status = CandidateStatus::MissingSnapshot { commit };
            return self.push(search, SourceKind::HfCache, snapshot, detail, status, None);
        }
        let folder = match role.spec().layout {
            Layout::MemoryBank => snapshot.join("memory").join(&self.memory_id),
            _ => snapshot,
        };
        let status = self.check_candidate(role, &folder);
        self.push(search, SourceKind::HfCache, folder, detail, status, Some(commit))
    }
}

/// `org/name` → `models--org--name` (huggingface_hub's `repo_folder_name`).
pub fn repo_folder_name(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// A full 40-hex commit hash (used as a snapshot folder directly).
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `org/name` or a bare canonical name like `gpt2`, as the hub accepts; never something that
/// reads as a path (`./x`, `/x`, `~/x`, `a/b/c`).
pub fn looks_like_hub_id(value: &str) -> bool {
    let parts: Vec<&str> = value.split('/').collect();
    let valid_part = |p: &&str| {
        !p.is_empty()
            && !p.starts_with(['.', '-'])
            && !p.ends_with('.')
            && !p.contains("..")
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (1..=2).contains(&parts.len()) && parts.iter().all(valid_part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_shapes() {
        assert!(looks_like_hub_id("openai/clip-vit-base-patch32"));
        assert!(looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("./gpt2"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("~/models"));
        assert!(!looks_like_hub_id("../x"));
    }

    #[test]
    fn folder_names() {
        assert_eq!(repo_folder_name("openai/clip-vit-base-patch32"), "models--openai--clip-vit-base-patch32");
        assert_eq!(repo_folder_name("gpt2"), "models--gpt2");
    }
}
