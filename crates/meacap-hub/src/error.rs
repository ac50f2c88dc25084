//! The crate's error type. Display texts are written to be printed as-is by the CLI.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::resolve::Candidate;
use crate::roles::Role;

/// Errors from resolving, checking and fetching models.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// One or more models are not available locally.
    #[error("{0}")]
    NotFound(MissingModels),

    /// A download was asked for while offline mode is on.
    #[error(
        "offline mode is on ({reason}): refusing to download {what}. Unset HF_HUB_OFFLINE / \
         TRANSFORMERS_OFFLINE and drop --offline to fetch, or copy the files in by hand"
    )]
    Offline { what: String, reason: String },

    /// The role has no Hugging Face repository (ViECap).
    #[error("{role} cannot be fetched from the Hugging Face hub: {hint}")]
    NotOnHub { role: Role, hint: String },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The browser manifest cannot be written for these models.
    #[error("{0}")]
    Manifest(String),

    /// The hub answered with an error status.
    #[error("GET {url} failed with HTTP {status}{hint}")]
    Http { url: String, status: u16, hint: String },

    /// The connection could not be made or broke before a response arrived.
    #[error("GET {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },

    /// The transfer broke midway and retries ran out; the partial file stays for a resume.
    #[error(
        "download of {url} was interrupted after {received} bytes ({source}); the partial file {part} \
         is kept: run the same command again to resume"
    )]
    Interrupted {
        url: String,
        part: PathBuf,
        received: u64,
        #[source]
        source: std::io::Error,
    },

    /// Downloaded bytes do not match what the hub announced; nothing was written under the
    /// final name.
    #[error("{file}: {check} mismatch (expected {expected}, got {actual}); the download was discarded")]
    Integrity { file: String, check: &'static str, expected: String, actual: String },

    /// The hub answered 200 with something that is not what was asked for.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse { url: String, reason: String },

    /// The repository (at that revision) lacks files the role requires.
    #[error("{repo} at revision {revision} lacks required files for {role}: {}", missing.join(", "))]
    RepoIncomplete { role: Role, repo: String, revision: String, missing: Vec<String> },

    #[error(
        "memory bank '{id}' is not in {repo} (folder memory/{id}/ absent); available banks: {}",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    MemoryBankNotInRepo { id: String, repo: String, available: Vec<String> },
}

/// One role that could not be found locally, with everything the user needs to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct NotFound {
    pub role: Role,
    /// Hub id, explicit path, or file name.
    pub id: String,
    /// The CLI flag that sets its location.
    pub flag: String,
    /// Every place searched, in order, with why it was rejected.
    pub candidates: Vec<Candidate>,
    /// The incomplete folder closest to usable, if any.
    pub best_candidate: Option<PathBuf>,
    pub missing_in_best: Vec<String>,
    pub note: Option<String>,
    /// What to run or copy.
    pub fix: String,
    /// Set when offline mode is on (the fix then needs a networked machine).
    pub offline_reason: Option<String>,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} model not found locally ({}, set with {})", self.role, self.id, self.flag)?;
        if let Some(note) = &self.note {
            writeln!(f, "  note: {note}")?;
        }
        writeln!(f, "  searched, in order:")?;
        for (i, candidate) in self.candidates.iter().enumerate() {
            writeln!(f, "    {}. {candidate}", i + 1)?;
        }
        if let Some(best) = &self.best_candidate {
            writeln!(f, "  missing in {}: {}", best.display(), self.missing_in_best.join(", "))?;
        }
        if let Some(reason) = &self.offline_reason {
            writeln!(f, "  offline mode is on ({reason}): no download was attempted")?;
        }
        write!(f, "  to fix: {}", self.fix)
    }
}

/// Several missing roles, reported together.
#[derive(Clone, Debug, Serialize)]
pub struct MissingModels(pub Vec<NotFound>);

impl fmt::Display for MissingModels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, missing) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{missing}")?;
        }
        Ok(())
    }
}

impl HubError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HubError::Io { action, path: path.into(), source }
    }

    /// The missing roles when this is a [`HubError::NotFound`].
    pub fn missing(&self) -> &[NotFound] {
        match self {
            HubError::NotFound(MissingModels(list)) => list,
            _ => &[],
        }
    }
}
