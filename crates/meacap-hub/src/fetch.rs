//! `models fetch`: download hub roles into `<to>/<name>/` (memory banks into `<memory dir>/<id>/`),
//! in the layout the resolver reads. Verified (size, sha256 for LFS files, git blob sha1 for the
//! rest), resumable (`<file>.part` + Range) and atomic (fsync + rename: no partial file ever sits
//! under a final name).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha1::Digest as _;

use crate::env::Env;
use crate::error::HubError;
use crate::resolve::DEFAULT_MEMORY_DIR;
use crate::roles::{shard_list_from_json, FileOption, Layout, Pick, Role, DEFAULT_MEMORY_ID, VIECAP_RELEASE_URL};

/// What to fetch and how.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Checkpoints dir: hub roles land in `<to>/<name>/`.
    pub to: PathBuf,
    /// Memory banks land in `<memory_dir>/<id>/`.
    pub memory_dir: PathBuf,
    /// Roles to fetch (`--only`); [`Role::DEFAULT_FETCH`] by default.
    pub roles: Vec<Role>,
    /// Memory banks to fetch when `roles` holds [`Role::Memory`].
    pub memory_ids: Vec<String>,
    /// Branch, tag or commit (`--revision`); `main` when `None`.
    pub revision: Option<String>,
    /// `--offline`: refuse (the environment's HF_HUB_OFFLINE is honoured too).
    pub offline: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Extra attempts per file after a broken transfer (each resumes with Range).
    pub retries: u32,
    /// Pause before a retry.
    pub retry_delay: Duration,
    pub connect_timeout: Duration,
    /// Longest silence allowed while waiting for a response or for body bytes.
    pub read_timeout: Duration,
}

impl FetchOptions {
    /// Defaults: all fetchable roles, memory bank `cc3m` under `data/memory`, revision `main`,
    /// progress bars on, 3 retries, 30 s connect / 60 s read timeouts.
    pub fn new(to: impl Into<PathBuf>) -> Self {
        FetchOptions {
            to: to.into(),
            memory_dir: PathBuf::from(DEFAULT_MEMORY_DIR),
            roles: Role::DEFAULT_FETCH.to_vec(),
            memory_ids: vec![DEFAULT_MEMORY_ID.to_string()],
            revision: None,
            offline: false,
            progress: true,
            retries: 3,
            retry_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// What `fetch` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FetchReport {
    pub models: Vec<FetchedModel>,
    /// Roles that cannot be fetched (ViECap), with what to do instead.
    pub skipped: Vec<SkippedRole>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FetchedModel {
    pub role: Role,
    pub repo: String,
    pub revision: String,
    /// The commit the files were downloaded from (pins all files of one model to one commit).
    pub commit: Option<String>,
    /// Folder the files are in.
    pub path: PathBuf,
    pub files: Vec<FetchedFile>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FetchedFile {
    /// Path relative to the model folder.
    pub name: String,
    pub size: u64,
    pub outcome: FileOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileOutcome {
    Downloaded,
    /// Continued from a `.part` file left by an earlier, interrupted transfer.
    Resumed,
    /// Already there with the right size and hash.
    AlreadyPresent,
}

#[derive(Clone, Debug, Serialize)]
pub struct SkippedRole {
    pub role: Role,
    pub reason: String,
}

/// Name of the small manifest written next to fetched files (repo, commit, sizes, hashes).
pub const MANIFEST_NAME: &str = ".meacap-fetch.json";

/// Downloads the requested roles. Refuses before any network access when offline.
pub fn fetch(env: &Env, options: &FetchOptions) -> Result<FetchReport, HubError> {
    let mut report = FetchReport::default();
    let requested: Vec<Role> = dedup(&options.roles);
    if options.offline || env.is_offline() {
        let reason = if options.offline {
            "--offline".to_string()
        } else {
            let var = env.offline_var().unwrap_or("HF_HUB_OFFLINE");
            format!("{var}={}", env.get(var).unwrap_or(""))
        };
        let what: Vec<&str> = requested.iter().map(|r| r.key()).collect();
        return Err(HubError::Offline { what: what.join(", "), reason });
    }
    let viecap_hint = viecap_hint(&options.to);
    if requested == [Role::Viecap] {
        return Err(HubError::NotOnHub { role: Role::Viecap, hint: viecap_hint });
    }
    let client = HubClient::new(env, options);
    for role in requested {
        let spec = role.spec();
        let Some(repo) = spec.hub_repo else {
            report.skipped.push(SkippedRole { role, reason: viecap_hint.clone() });
            continue;
        };
        let revision = options.revision.clone().unwrap_or_else(|| "main".to_string());
        match spec.layout {
            Layout::MemoryBank => {
                let info = client.model_info(repo, &revision)?;
                for id in dedup(&options.memory_ids) {
                    let dir = options.memory_dir.join(&id);
                    let plan = plan_memory_bank(repo, &revision, &id, &info)?;
                    report.models.push(client.fetch_plan(role, repo, &revision, &info, plan, &dir)?);
                }
            }
            _ => {
                let info = client.model_info(repo, &revision)?;
                let plan = plan_model_files(role, repo, &revision, &info)?;
                let dir = options.to.join(spec.local_name);
                report.models.push(client.fetch_plan(role, repo, &revision, &info, plan, &dir)?);
            }
        }
    }
    Ok(report)
}

fn viecap_hint(checkpoints: &Path) -> String {
    format!(
        "download checkpoints.zip from the `checkpoints` release of https://github.com/FeiElysia/ViECap \
         ({VIECAP_RELEASE_URL}), unzip it and copy train_coco/coco_prefix-0014.pt to {}",
        checkpoints.join(Role::Viecap.spec().local_name).display()
    )
}

fn dedup<T: Clone + Ord>(items: &[T]) -> Vec<T> {
    let mut seen = BTreeSet::new();
    items.iter().filter(|item| seen.insert((*item).clone())).cloned().collect()
}

/// The hub's answer to `GET /api/models/{repo}/revision/{rev}`.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelInfo {
    pub sha: Option<String>,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    pub size: Option<u64>,
    #[serde(rename = "blobId")]
    pub blob_id: Option<String>,
    pub lfs: Option<LfsInfo>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LfsInfo {
    pub sha256: Option<String>,
    pub oid: Option<String>,
    pub size: Option<u64>,
}

/// What a downloaded file must match. Unknown fields are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Expected {
    size: Option<u64>,
    sha256: Option<String>,
    /// Git blob id (sha1 of "blob {len}\0" + content); for non-LFS files only.
    git_sha1: Option<String>,
}

impl Expected {
    fn from_sibling(sibling: &Sibling) -> Self {
        match &sibling.lfs {
            Some(lfs) => Expected {
                size: lfs.size.or(sibling.size),
                sha256: lfs
                    .sha256
                    .as_deref()
                    .or(lfs.oid.as_deref())
                    .map(|s| s.trim_start_matches("sha256:").to_ascii_lowercase()),
                // An LFS file's blobId hashes the pointer, not the content.
                git_sha1: None,
            },
            None => Expected {
                size: sibling.size,
                sha256: None,
                git_sha1: sibling.blob_id.as_ref().map(|s| s.to_ascii_lowercase()),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct PlannedFile {
    /// Path in the repository.
    remote: String,
    /// Path relative to the local folder.
    local: String,
    expected: Expected,
}

#[derive(Clone, Debug, Default)]
struct Plan {
    files: Vec<PlannedFile>,
    /// A safetensors index whose shards are added once it is downloaded.
    shard_index: Option<String>,
    /// Repository prefix of every file (memory banks), stripped locally.
    prefix: String,
}

fn siblings_by_name<'a>(info: &'a ModelInfo, prefix: &str) -> BTreeMap<String, &'a Sibling> {
    info.siblings
        .iter()
        .filter_map(|s| s.rfilename.strip_prefix(prefix).map(|local| (local.to_string(), s)))
        .collect()
}

/// Picks the files a role needs from the repository listing: required groups (one weight
/// format, safetensors first; every tokenizer format present) plus known optional files.
fn plan_from_names(
    role: Role,
    repo: &str,
    revision: &str,
    prefix: &str,
    by_name: &BTreeMap<String, &Sibling>,
    take_everything: bool,
) -> Result<Plan, HubError> {
    let spec = role.spec();
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    let mut plan = Plan { prefix: prefix.to_string(), ..Plan::default() };
    let mut missing = Vec::new();
    for group in spec.required {
        let available: Vec<&FileOption> = group
            .options
            .iter()
            .filter(|option| match option {
                FileOption::Files(files) => files.iter().all(|f| by_name.contains_key(*f)),
                FileOption::ShardedSafetensors { index } => by_name.contains_key(*index),
            })
            .collect();
        if available.is_empty() {
            missing.push(group.describe());
            continue;
        }
        let take = if group.pick == Pick::First { &available[..1] } else { &available[..] };
        for option in take {
            match option {
                FileOption::Files(files) => chosen.extend(files.iter().map(|f| f.to_string())),
                FileOption::ShardedSafetensors { index } => {
                    chosen.insert(index.to_string());
                    plan.shard_index = Some(index.to_string());
                }
            }
        }
    }
    if !missing.is_empty() {
        return Err(HubError::RepoIncomplete {
            role,
            repo: repo.to_string(),
            revision: revision.to_string(),
            missing,
        });
    }
    if take_everything {
        chosen.extend(by_name.keys().cloned());
    } else {
        chosen.extend(spec.optional.iter().filter(|f| by_name.contains_key(**f)).map(|f| f.to_string()));
    }
    for local in chosen {
        let Some(sibling) = by_name.get(&local) else { continue };
        plan.files.push(PlannedFile {
            remote: sibling.rfilename.clone(),
            local,
            expected: Expected::from_sibling(sibling),
        });
    }
    Ok(plan)
}

fn plan_model_files(role: Role, repo: &str, revision: &str, info: &ModelInfo) -> Result<Plan, HubError> {
    plan_from_names(role, repo, revision, "", &siblings_by_name(info, ""), false)
}

fn plan_memory_bank(repo: &str, revision: &str, id: &str, info: &ModelInfo) -> Result<Plan, HubError> {
    let prefix = format!("memory/{id}/");
    let by_name = siblings_by_name(info, &prefix);
    if by_name.is_empty() {
        let available: BTreeSet<String> = info
            .siblings
            .iter()
            .filter_map(|s| s.rfilename.strip_prefix("memory/")?.split_once('/').map(|(id, _)| id.to_string()))
            .collect();
        return Err(HubError::MemoryBankNotInRepo {
            id: id.to_string(),
            repo: repo.to_string(),
            available: available.into_iter().collect(),
        });
    }
    // A bank folder is small and all of it is used (captions, CLIP and SBERT embeddings).
    plan_from_names(Role::Memory, repo, revision, &prefix, &by_name, true)
}

/// Rejects repository paths that would escape the target folder.
fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Percent-encodes a URL path component; `/` kept when `keep_slash` (file paths).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(byte as char),
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

struct HubClient {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
    progress: bool,
    retries: u32,
    retry_delay: Duration,
}

/// A failed transfer attempt: worth retrying (resume) or not.
enum AttemptError {
    Retry(HubError),
    Fatal(HubError),
}

impl HubClient {
    fn new(env: &Env, options: &FetchOptions) -> Self {
        let endpoint = env.endpoint();
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_recv_response(Some(options.read_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(format!("meacap-wgpu/{}", env!("CARGO_PKG_VERSION")));
        // A proxy from the environment must not capture a loopback endpoint (local mirrors, tests).
        if is_loopback_url(&endpoint) {
            config = config.proxy(None);
        }
        HubClient {
            agent: config.build().into(),
            endpoint,
            token: env.token().map(str::to_string),
            progress: options.progress,
            retries: options.retries,
            retry_delay: options.retry_delay,
        }
    }

    fn get(&self, url: &str, range_from: Option<u64>) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(offset) = range_from {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        tracing::debug!(url, ?range_from, "GET");
        request.call()
    }

    fn status_hint(status: u16) -> String {
        match status {
            401 | 403 => ": the repository is gated or private; set HF_TOKEN to a token with access".into(),
            404 => ": repository, revision or file not found (check the id and --revision)".into(),
            429 => ": rate limited by the hub; wait and retry".into(),
            _ => String::new(),
        }
    }

    /// File list of a repository at a revision, with sizes and hashes when the hub gives them.
    fn model_info(&self, repo: &str, revision: &str) -> Result<ModelInfo, HubError> {
        let base = format!("{}/api/models/{}/revision/{}", self.endpoint, encode(repo, true), encode(revision, false));
        let mut last_status = 0;
        // `?blobs=true` adds sizes and LFS hashes; fall back to the plain listing if refused.
        for url in [format!("{base}?blobs=true"), base.clone()] {
            let mut response =
                self.get(&url, None).map_err(|e| HubError::Transport { url: url.clone(), source: Box::new(e) })?;
            let status = response.status().as_u16();
            if status == 200 {
                let text = response
                    .body_mut()
                    .read_to_string()
                    .map_err(|e| HubError::Transport { url: url.clone(), source: Box::new(e) })?;
                return serde_json::from_str(&text).map_err(|e| HubError::BadResponse {
                    url: url.clone(),
                    reason: format!("model info is not the expected JSON ({e})"),
                });
            }
            last_status = status;
            if matches!(status, 401 | 403 | 404) {
                break;
            }
        }
        Err(HubError::Http { url: base, status: last_status, hint: Self::status_hint(last_status) })
    }

    fn fetch_plan(
        &self,
        role: Role,
        repo: &str,
        revision: &str,
        info: &ModelInfo,
        mut plan: Plan,
        dir: &Path,
    ) -> Result<FetchedModel, HubError> {
        // Download by commit so every file of one model comes from the same snapshot.
        let pinned = info.sha.clone().unwrap_or_else(|| revision.to_string());
        let mut fetched = Vec::new();
        let mut queue: Vec<PlannedFile> = std::mem::take(&mut plan.files);
        let mut index = 0;
        while index < queue.len() {
            let file = queue[index].clone();
            index += 1;
            if !safe_relative(&file.local) || !safe_relative(&file.remote) {
                return Err(HubError::BadResponse {
                    url: format!("{}/api/models/{repo}", self.endpoint),
                    reason: format!("file name '{}' escapes the model folder", file.remote),
                });
            }
            let url = format!(
                "{}/{}/resolve/{}/{}",
                self.endpoint,
                encode(repo, true),
                encode(&pinned, false),
                encode(&file.remote, true)
            );
            let dest = dir.join(&file.local);
            let (outcome, size) = self.download_file(&url, &dest, &file.local, &file.expected)?;
            fetched.push(FetchedFile { name: file.local.clone(), size, outcome });
            if plan.shard_index.as_deref() == Some(file.local.as_str()) {
                queue.extend(self.shards_to_fetch(role, repo, revision, info, &plan.prefix, &dest)?);
            }
        }
        write_manifest(dir, repo, revision, info.sha.as_deref(), &fetched)?;
        Ok(FetchedModel {
            role,
            repo: repo.to_string(),
            revision: revision.to_string(),
            commit: info.sha.clone(),
            path: dir.to_path_buf(),
            files: fetched,
        })
    }

    fn shards_to_fetch(
        &self,
        role: Role,
        repo: &str,
        revision: &str,
        info: &ModelInfo,
        prefix: &str,
        index_path: &Path,
    ) -> Result<Vec<PlannedFile>, HubError> {
        let text = std::fs::read_to_string(index_path).map_err(|e| HubError::io("cannot read", index_path, e))?;
        let shards = shard_list_from_json(&text).map_err(|reason| HubError::BadResponse {
            url: index_path.display().to_string(),
            reason,
        })?;
        let by_name = siblings_by_name(info, prefix);
        let mut planned = Vec::new();
        let mut missing = Vec::new();
        for shard in shards {
            match by_name.get(&shard) {
                Some(sibling) => planned.push(PlannedFile {
                    remote: sibling.rfilename.clone(),
                    local: shard,
                    expected: Expected::from_sibling(sibling),
                }),
                None => missing.push(shard),
            }
        }
        if missing.is_empty() {
            Ok(planned)
        } else {
            Err(HubError::RepoIncomplete { role, repo: repo.to_string(), revision: revision.to_string(), missing })
        }
    }

    fn progress_bar(&self, name: &str, total: Option<u64>) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(name.to_string());
        bar
    }

    /// Downloads one file to `dest` through `<dest>.part`, resuming and retrying as needed.
    fn download_file(
        &self,
        url: &str,
        dest: &Path,
        name: &str,
        expected: &Expected,
    ) -> Result<(FileOutcome, u64), HubError> {
        if expected.size.is_some() && dest.is_file() && verify(dest, name, expected).is_ok() {
            let size = expected.size.unwrap_or(0);
            return Ok((FileOutcome::AlreadyPresent, size));
        }
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| HubError::io("cannot create folder", parent, e))?;
        let part = part_path(dest);
        let bar = self.progress_bar(name, expected.size);
        let mut resumed = false;
        let mut attempt = 0;
        loop {
            let mut offset = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            if expected.size.is_some_and(|size| offset > size) {
                remove_if_present(&part)?;
                offset = 0;
            }
            // A `.part` already holding every byte (crash before rename) needs no request.
            let already_whole = offset > 0 && expected.size == Some(offset);
            if !already_whole {
                resumed |= offset > 0;
                match self.transfer(url, &part, offset, &bar) {
                    Ok(()) => {}
                    Err(AttemptError::Retry(error)) if attempt < self.retries => {
                        attempt += 1;
                        tracing::warn!(url, attempt, %error, "download interrupted; resuming");
                        std::thread::sleep(self.retry_delay);
                        continue;
                    }
                    Err(AttemptError::Retry(error) | AttemptError::Fatal(error)) => {
                        bar.abandon();
                        return Err(error);
                    }
                }
            }
            bar.finish_and_clear();
            if let Err(error) = verify(&part, name, expected) {
                // A corrupt download must not be resumed from either.
                remove_if_present(&part)?;
                return Err(error);
            }
            let size = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            commit_file(&part, dest)?;
            let outcome = if resumed { FileOutcome::Resumed } else { FileOutcome::Downloaded };
            return Ok((outcome, size));
        }
    }

    /// One HTTP attempt: appends to `part` from `offset` (or restarts it when the server ignores
    /// the Range).
    fn transfer(&self, url: &str, part: &Path, offset: u64, bar: &ProgressBar) -> Result<(), AttemptError> {
        let range = (offset > 0).then_some(offset);
        let response = self.get(url, range).map_err(|e| {
            let error = HubError::Transport { url: url.to_string(), source: Box::new(e) };
            AttemptError::Retry(error)
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let http_error = |status| HubError::Http { url: url.to_string(), status, hint: Self::status_hint(status) };
        let start = match status {
            200 => 0,
            206 => {
                let content_range = header("content-range").unwrap_or_default();
                if !content_range.starts_with(&format!("bytes {offset}-")) {
                    // Not the bytes asked for: start over rather than splice wrong data.
                    remove_if_present(part).map_err(AttemptError::Fatal)?;
                    return Err(AttemptError::Retry(HubError::BadResponse {
                        url: url.to_string(),
                        reason: format!("asked for bytes {offset}-, got Content-Range '{content_range}'"),
                    }));
                }
                offset
            }
            416 => {
                remove_if_present(part).map_err(AttemptError::Fatal)?;
                return Err(AttemptError::Retry(http_error(status)));
            }
            408 | 429 | 500..=599 => return Err(AttemptError::Retry(http_error(status))),
            _ => return Err(AttemptError::Fatal(http_error(status))),
        };
        // Total length the server announced: `Content-Range: bytes a-b/total`, else start + length.
        let announced_end = header("content-range")
            .and_then(|r| r.rsplit('/').next().and_then(|total| total.parse::<u64>().ok()))
            .or_else(|| header("content-length").and_then(|l| l.parse::<u64>().ok()).map(|len| start + len));
        if header("content-type").is_some_and(|t| t.starts_with("text/html")) && !url.ends_with(".html") {
            return Err(AttemptError::Fatal(HubError::BadResponse {
                url: url.to_string(),
                reason: "got an HTML page instead of the file (a proxy or login page?)".to_string(),
            }));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(start > 0)
            .truncate(start == 0)
            .open(part)
            .map_err(|e| AttemptError::Fatal(HubError::io("cannot write", part, e)))?;
        bar.set_position(start);
        let mut reader = response.into_body().into_reader();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut received = start;
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    file.write_all(&buffer[..n])
                        .map_err(|e| AttemptError::Fatal(HubError::io("cannot write", part, e)))?;
                    received += n as u64;
                    bar.set_position(received);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // Keep what arrived: the next attempt (or run) resumes from here.
                    let _ = file.flush();
                    return Err(AttemptError::Retry(HubError::Interrupted {
                        url: url.to_string(),
                        part: part.to_path_buf(),
                        received,
                        source,
                    }));
                }
            }
        }
        file.flush().map_err(|e| AttemptError::Fatal(HubError::io("cannot write", part, e)))?;
        // Belt and braces: a clean EOF before the announced end is a broken transfer too.
        if let Some(end) = announced_end.filter(|end| received < *end) {
            return Err(AttemptError::Retry(HubError::Interrupted {
                url: url.to_string(),
                part: part.to_path_buf(),
                received,
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed at byte {received} of {end}"),
                ),
            }));
        }
        Ok(())
    }
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if host_port.starts_with('[') {
        host_port.split(']').next().unwrap_or("").trim_start_matches('[')
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// `<dest>.part`, next to the final file so the rename stays on one file system.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    dest.with_file_name(name)
}

fn remove_if_present(path: &Path) -> Result<(), HubError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HubError::io("cannot remove", path, e)),
    }
}

/// Checks size, sha256 and git blob sha1 (whichever are known) of a file.
fn verify(path: &Path, name: &str, expected: &Expected) -> Result<(), HubError> {
    let size = std::fs::metadata(path).map_err(|e| HubError::io("cannot read", path, e))?.len();
    if let Some(want) = expected.size {
        if size != want {
            return Err(HubError::Integrity {
                file: name.to_string(),
                check: "size",
                expected: want.to_string(),
                actual: size.to_string(),
            });
        }
    }
    if expected.sha256.is_none() && expected.git_sha1.is_none() {
        return Ok(());
    }
    let mut sha256 = sha2::Sha256::new();
    let mut git_sha1 = sha1::Sha1::new();
    git_sha1.update(format!("blob {size}\0").as_bytes());
    let mut file = File::open(path).map_err(|e| HubError::io("cannot read", path, e))?;
    let mut buffer = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(|e| HubError::io("cannot read", path, e))?;
        if n == 0 {
            break;
        }
        if expected.sha256.is_some() {
            sha256.update(&buffer[..n]);
        }
        if expected.git_sha1.is_some() {
            git_sha1.update(&buffer[..n]);
        }
    }
    let checks = [
        ("sha256", &expected.sha256, hex::encode(sha256.finalize())),
        ("git blob sha1", &expected.git_sha1, hex::encode(git_sha1.finalize())),
    ];
    for (check, want, actual) in checks {
        if let Some(want) = want {
            if *want != actual {
                return Err(HubError::Integrity { file: name.to_string(), check, expected: want.clone(), actual });
            }
        }
    }
    Ok(())
}

/// fsync the finished `.part`, rename it over the final name, fsync the folder.
fn commit_file(part: &Path, dest: &Path) -> Result<(), HubError> {
    File::open(part)
        .and_then(|f| f.sync_all())
        .map_err(|e| HubError::io("cannot sync", part, e))?;
    std::fs::rename(part, dest).map_err(|e| HubError::io("cannot rename into place", dest, e))?;
    sync_dir(dest.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Best effort: makes the rename durable where the platform allows opening a folder.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    repo: &'a str,
    revision: &'a str,
    commit: Option<&'a str>,
    files: &'a [FetchedFile],
}

fn write_manifest(
    dir: &Path,
    repo: &str,
    revision: &str,
    commit: Option<&str>,
    files: &[FetchedFile],
) -> Result<(), HubError> {
    let path = dir.join(MANIFEST_NAME);
    let manifest = Manifest { repo, revision, commit, files };
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    let temp = part_path(&path);
    std::fs::write(&temp, text).map_err(|e| HubError::io("cannot write", &temp, e))?;
    commit_file(&temp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_paths() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("1_Pooling/config.json", true), "1_Pooling/config.json");
        assert_eq!(encode("a b", true), "a%20b");
    }

    #[test]
    fn rejects_escaping_paths() {
        assert!(safe_relative("1_Pooling/config.json"));
        assert!(!safe_relative("../x"));
        assert!(!safe_relative("/etc/passwd"));
        assert!(!safe_relative("a//b"));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("http://localhost:1"));
        assert!(is_loopback_url("http://[::1]:80/x"));
        assert!(!is_loopback_url("https://huggingface.co"));
    }
}
