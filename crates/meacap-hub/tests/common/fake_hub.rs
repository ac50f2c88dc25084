//! A tiny fake Hugging Face hub on 127.0.0.1 for hermetic tests, and a listener that only counts
//! connections (to prove that nothing talks to the network).
//!
//! Reusable from other crates' tests with
//! `#[path = "../../meacap-hub/tests/common/fake_hub.rs"] mod fake_hub;` (needs the `sha1`,
//! `sha2` and `hex` crates as dev-dependencies).
//!
//! Serves, for each registered repository:
//! * `GET /api/models/{repo}/revision/{rev}[?blobs=true]` → `{id, sha, siblings:[{rfilename, size,
//!   blobId, lfs:{sha256,size,pointerSize}}]}` (`size`/`blobId`/`lfs` only with `blobs=true`);
//! * `GET /{repo}/resolve/{rev}/{path}` → the bytes, with `ETag` (git blob sha1) for regular files;
//!   LFS files answer `302` to `/cdn/{sha256}` like the real hub's CDN redirect;
//! * `Range: bytes=N-` → `206` + `Content-Range`, or `416` past the end.
//!
//! Faults: cut a transfer after N bytes, serve corrupted bytes (same length), serve a wrong
//! length, refuse `?blobs=true`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha1::Digest as _;

/// One file of a fake repository.
#[derive(Clone, Debug)]
pub struct FakeFile {
    pub path: String,
    pub content: Vec<u8>,
    /// Stored in LFS: listed with `lfs.sha256`, served through a redirect.
    pub lfs: bool,
}

impl FakeFile {
    pub fn new(path: &str, content: impl Into<Vec<u8>>) -> Self {
        FakeFile { path: path.to_string(), content: content.into(), lfs: false }
    }
    pub fn lfs(path: &str, content: impl Into<Vec<u8>>) -> Self {
        FakeFile { path: path.to_string(), content: content.into(), lfs: true }
    }
    pub fn sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.content))
    }
    pub fn git_sha1(&self) -> String {
        let mut hasher = sha1::Sha1::new();
        hasher.update(format!("blob {}\0", self.content.len()).as_bytes());
        hasher.update(&self.content);
        hex::encode(hasher.finalize())
    }
}

/// A repository at one commit; `revisions` lists extra names (branches, tags) that resolve to it.
#[derive(Clone, Debug)]
pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub revisions: Vec<String>,
    pub files: Vec<FakeFile>,
}

impl FakeRepo {
    pub fn new(id: &str, files: Vec<FakeFile>) -> Self {
        let commit = hex::encode(sha1::Sha1::digest(id.as_bytes()));
        FakeRepo { id: id.to_string(), commit, revisions: vec!["main".to_string()], files }
    }
}

/// A request as the fake hub saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Faults {
    /// path → (bytes to send before closing, how many more requests to cut)
    cut: HashMap<String, (usize, usize)>,
    corrupt: Vec<String>,
    /// path → number of extra bytes appended
    grow: HashMap<String, usize>,
    no_blobs: bool,
}

struct State {
    repos: Vec<FakeRepo>,
    requests: Vec<RecordedRequest>,
    faults: Faults,
}

/// The fake hub. Stops accepting when dropped.
pub struct FakeHub {
    port: u16,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    pub fn start(repos: Vec<FakeRepo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(Mutex::new(State { repos, requests: Vec::new(), faults: Faults::default() }));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, connections, stop) = (state.clone(), connections.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let state = state.clone();
                    std::thread::spawn(move || {
                        let _ = handle_connection(stream, port, &state);
                    });
                }
            })
        };
        FakeHub { port, state, connections, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests whose target contains `needle`.
    pub fn requests_for(&self, needle: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.target.contains(needle)).collect()
    }

    /// The next `times` transfers of `path` (repo file path) close the connection after `bytes`
    /// body bytes (the headers announce the full length).
    pub fn cut_after(&self, path: &str, bytes: usize, times: usize) {
        self.state.lock().unwrap().faults.cut.insert(path.to_string(), (bytes, times));
    }

    /// Serve `path` with every byte flipped (same length, wrong hash).
    pub fn corrupt(&self, path: &str) {
        self.state.lock().unwrap().faults.corrupt.push(path.to_string());
    }

    /// Serve `path` with `extra` more bytes than listed (wrong size).
    pub fn grow(&self, path: &str, extra: usize) {
        self.state.lock().unwrap().faults.grow.insert(path.to_string(), extra);
    }

    /// Answer `?blobs=true` with 400, like an old or minimal mirror.
    pub fn refuse_blobs(&self) {
        self.state.lock().unwrap().faults.no_blobs = true;
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listener that accepts and immediately closes connections, counting them.
pub struct ConnectionCounter {
    port: u16,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectionCounter {
    pub fn start() -> ConnectionCounter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (count, stop) = (count.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                }
            })
        };
        ConnectionCounter { port, count, stop, thread: Some(thread) }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for ConnectionCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex_digits = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex_digits, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle_connection(stream: TcpStream, port: u16, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let recorded = RecordedRequest {
        method: method.clone(),
        target: target.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    let reply = {
        let mut state = state.lock().unwrap();
        state.requests.push(recorded);
        route(&mut state, &target, headers.get("range").map(String::as_str), port)
    };
    let mut stream = stream;
    write_reply(&mut stream, reply)
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection after this many body bytes.
    cut_at: Option<usize>,
}

impl Reply {
    fn simple(status: u16, body: &str) -> Reply {
        Reply { status, headers: vec![("Content-Type".into(), "text/plain".into())], body: body.into(), cut_at: None }
    }
}

fn write_reply(stream: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n", reply.status, reply.body.len());
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    match reply.cut_at {
        Some(n) => {
            stream.write_all(&reply.body[..n.min(reply.body.len())])?;
            stream.flush()?;
            let _ = stream.shutdown(Shutdown::Both);
        }
        None => {
            stream.write_all(&reply.body)?;
            stream.flush()?;
        }
    }
    Ok(())
}

fn find_repo<'a>(repos: &'a [FakeRepo], id: &str, revision: &str) -> Option<&'a FakeRepo> {
    repos.iter().find(|r| r.id == id && (r.commit == revision || r.revisions.iter().any(|n| n == revision)))
}

fn route(state: &mut State, target: &str, range: Option<&str>, port: u16) -> Reply {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_id, revision)) = rest.split_once("/revision/") else {
            return Reply::simple(404, "no such route");
        };
        if query.contains("blobs=true") && state.faults.no_blobs {
            return Reply::simple(400, "blobs not supported");
        }
        let Some(repo) = find_repo(&state.repos, repo_id, &percent_decode(revision)) else {
            return Reply::simple(404, "Repository not found");
        };
        let blobs = query.contains("blobs=true");
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                if !blobs {
                    return serde_json::json!({ "rfilename": f.path });
                }
                // An LFS file's blobId is the pointer's sha1; any value the client must ignore.
                let blob_id = if f.lfs { "0".repeat(40) } else { f.git_sha1() };
                let mut entry = serde_json::json!({
                    "rfilename": f.path,
                    "size": f.content.len(),
                    "blobId": blob_id,
                });
                if f.lfs {
                    entry["lfs"] = serde_json::json!({ "sha256": f.sha256(), "size": f.content.len(), "pointerSize": 134 });
                }
                entry
            })
            .collect();
        let body = serde_json::json!({ "id": repo.id, "sha": repo.commit, "siblings": siblings }).to_string();
        return Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into_bytes(),
            cut_at: None,
        };
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = state.repos.iter().flat_map(|r| r.files.iter()).find(|f| f.lfs && f.sha256() == sha).cloned();
        return match file {
            Some(file) => serve_file(state, &file, range),
            None => Reply::simple(404, "no such blob"),
        };
    }
    if let Some((repo_id, rest)) = path.trim_start_matches('/').split_once("/resolve/") {
        let Some((revision, file_path)) = rest.split_once('/') else {
            return Reply::simple(404, "no file");
        };
        let Some(repo) = find_repo(&state.repos, repo_id, &percent_decode(revision)) else {
            return Reply::simple(404, "Repository not found");
        };
        let file_path = percent_decode(file_path);
        let Some(file) = repo.files.iter().find(|f| f.path == file_path).cloned() else {
            return Reply::simple(404, "Entry not found");
        };
        if file.lfs {
            return Reply {
                status: 302,
                headers: vec![("Location".into(), format!("http://127.0.0.1:{port}/cdn/{}", file.sha256()))],
                body: Vec::new(),
                cut_at: None,
            };
        }
        return serve_file(state, &file, range);
    }
    Reply::simple(404, "no such route")
}

fn serve_file(state: &mut State, file: &FakeFile, range: Option<&str>) -> Reply {
    let mut content = file.content.clone();
    if state.faults.corrupt.contains(&file.path) {
        content.iter_mut().for_each(|b| *b = !*b);
    }
    if let Some(extra) = state.faults.grow.get(&file.path) {
        content.extend(std::iter::repeat_n(b'x', *extra));
    }
    let total = content.len();
    let mut headers = vec![("Content-Type".to_string(), "application/octet-stream".to_string())];
    if !file.lfs {
        headers.push(("ETag".into(), format!("\"{}\"", file.git_sha1())));
    }
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let (status, body) = match start {
        Some(start) if start >= total => {
            headers.push(("Content-Range".into(), format!("bytes */{total}")));
            return Reply { status: 416, headers, body: Vec::new(), cut_at: None };
        }
        Some(start) => {
            headers.push(("Content-Range".into(), format!("bytes {start}-{}/{total}", total - 1)));
            (206, content[start..].to_vec())
        }
        None => (200, content),
    };
    let mut cut_at = None;
    if let Some((bytes, times)) = state.faults.cut.get_mut(&file.path) {
        if *times > 0 {
            *times -= 1;
            cut_at = Some(*bytes);
        }
    }
    Reply { status, headers, body, cut_at }
}
