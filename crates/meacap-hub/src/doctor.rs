//! `doctor`: what is installed where, which environment is in effect, which memory banks exist.
//! File-system only; the CLI adds GPU adapters and memory-bank shape checks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::env::{CacheRoot, EnvVarReport};
use crate::resolve::{Candidate, Resolved, Resolver};
use crate::roles::{check_folder, fix_hint, Role};

/// Everything `meacap-wgpu doctor` prints (and `--json` serialises).
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub offline: bool,
    /// What turned offline mode on ("--offline", "HF_HUB_OFFLINE=1").
    pub offline_reason: Option<String>,
    pub checkpoints_dir: PathBuf,
    pub memory_dir: PathBuf,
    pub memory_id: String,
    pub hf_cache: CacheRoot,
    pub endpoint: String,
    pub environment: Vec<EnvVarReport>,
    pub models: Vec<ModelReport>,
    pub memory_banks: Vec<MemoryBankReport>,
}

/// One role's state.
#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub role: Role,
    pub id: String,
    pub flag: String,
    pub summary: String,
    pub found: Option<Resolved>,
    /// Every place searched, in order, with its verdict.
    pub candidates: Vec<Candidate>,
    pub note: Option<String>,
    /// Set when not found.
    pub fix: Option<String>,
}

/// A folder under the memory dir.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryBankReport {
    pub id: String,
    pub path: PathBuf,
    pub files: Vec<FileEntry>,
    /// Unmet requirements (empty when the bank has captions and embeddings).
    pub missing: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
}

impl DoctorReport {
    /// True when every role resolved.
    pub fn all_found(&self) -> bool {
        self.models.iter().all(|m| m.found.is_some())
    }

    /// The plain-text rendering used by `meacap-wgpu doctor`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "Models")?;
        for model in &self.models {
            match &model.found {
                Some(found) => writeln!(
                    out,
                    "  [ok]      {:<7} {} ({}{})",
                    model.role.key(),
                    found.path.display(),
                    found.source,
                    found.commit.as_deref().map(|c| format!(", commit {c}")).unwrap_or_default(),
                )?,
                None => writeln!(out, "  [missing] {:<7} {} ({})", model.role.key(), model.id, model.summary)?,
            }
            if model.found.is_none() {
                if let Some(note) = &model.note {
                    writeln!(out, "            note: {note}")?;
                }
                for candidate in &model.candidates {
                    writeln!(out, "            searched {candidate}")?;
                }
                if let Some(fix) = &model.fix {
                    writeln!(out, "            fix: {fix}")?;
                }
            }
        }

        writeln!(out, "\nMemory banks in {}", self.memory_dir.display())?;
        if self.memory_banks.is_empty() {
            writeln!(out, "  (none)")?;
        }
        for bank in &self.memory_banks {
            let state = if bank.missing.is_empty() { "[ok]     " } else { "[partial]" };
            let files: Vec<String> =
                bank.files.iter().map(|f| format!("{} ({})", f.name, human_size(f.size))).collect();
            writeln!(out, "  {state} {:<12} {}", bank.id, files.join(", "))?;
            if !bank.missing.is_empty() {
                writeln!(out, "            missing: {}", bank.missing.join(", "))?;
            }
        }

        self.write_settings(out, "downloads only by `meacap-wgpu models fetch`")
    }

    /// The "Settings" and "Environment" sections; `online_note` explains what "offline: no" means
    /// for the command printing it.
    pub fn write_settings(&self, out: &mut impl std::fmt::Write, online_note: &str) -> std::fmt::Result {
        writeln!(out, "\nSettings")?;
        writeln!(out, "  checkpoints dir: {}", self.checkpoints_dir.display())?;
        writeln!(out, "  memory id:       {}", self.memory_id)?;
        writeln!(out, "  HF cache:        {} (from {})", self.hf_cache.path.display(), self.hf_cache.from)?;
        writeln!(out, "  hub endpoint:    {}", self.endpoint)?;
        match &self.offline_reason {
            Some(reason) => writeln!(out, "  offline:         yes ({reason})")?,
            None => writeln!(out, "  offline:         no ({online_note})")?,
        }
        writeln!(out, "\nEnvironment")?;
        for var in &self.environment {
            writeln!(out, "  {:<22} {}", var.name, var.value.as_deref().unwrap_or("(unset)"))?;
        }
        Ok(())
    }
}

/// Builds the report: resolves every role, lists memory banks. No network, no GPU.
pub fn doctor(resolver: &Resolver) -> DoctorReport {
    let models = Role::ALL
        .into_iter()
        .map(|role| {
            let search = resolver.search(role);
            let spec = role.spec();
            let fix = search.resolved.is_none().then(|| {
                fix_hint(role, resolver.checkpoints(), resolver.memory_dir(), resolver.memory_id())
            });
            ModelReport {
                role,
                id: search.id,
                flag: spec.cli_flag.to_string(),
                summary: spec.summary.to_string(),
                found: search.resolved,
                candidates: search.candidates,
                note: search.note,
                fix,
            }
        })
        .collect();
    let env = resolver.env();
    DoctorReport {
        offline: resolver.is_offline(),
        offline_reason: resolver.offline_reason(),
        checkpoints_dir: resolver.checkpoints().to_path_buf(),
        memory_dir: resolver.memory_dir().to_path_buf(),
        memory_id: resolver.memory_id().to_string(),
        hf_cache: env.hf_cache_root(),
        endpoint: env.endpoint(),
        environment: env.report(),
        models,
        memory_banks: list_memory_banks(resolver.memory_dir()),
    }
}

/// Each subfolder of the memory dir, with its files (sorted by id). A missing dir is no banks.
pub fn list_memory_banks(memory_dir: &Path) -> Vec<MemoryBankReport> {
    let Ok(entries) = std::fs::read_dir(memory_dir) else {
        return Vec::new();
    };
    let mut banks: Vec<MemoryBankReport> = entries
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| {
            let path = entry.path();
            let mut files: Vec<FileEntry> = std::fs::read_dir(&path)
                .map(|inner| {
                    inner
                        .flatten()
                        .filter_map(|f| {
                            let meta = f.path().metadata().ok()?;
                            meta.is_file().then(|| FileEntry {
                                name: f.file_name().to_string_lossy().into_owned(),
                                size: meta.len(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort_by(|a, b| a.name.cmp(&b.name));
            MemoryBankReport {
                id: entry.file_name().to_string_lossy().into_owned(),
                missing: check_folder(Role::Memory, &path).missing,
                path,
                files,
            }
        })
        .collect();
    banks.sort_by(|a, b| a.id.cmp(&b.id));
    banks
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
