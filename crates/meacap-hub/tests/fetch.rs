//! `fetch` against a fake hub on 127.0.0.1: selection, verification, resume, atomicity.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fake_hub::{FakeFile, FakeHub, FakeRepo};
use meacap_hub::{fetch, part_path, Env, FetchOptions, FileOutcome, HubError, Resolver, Role, SourceKind, MANIFEST_NAME};

const CLIP: &str = "openai/clip-vit-base-patch32";

/// Pseudo-random bytes, so a wrong offset in a resume shows up in the hash.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 31) as u8 ^ seed).collect()
}

fn clip_repo() -> FakeRepo {
    FakeRepo::new(
        CLIP,
        vec![
            FakeFile::new("config.json", r#"{"model_type":"clip"}"#),
            FakeFile::lfs("model.safetensors", bytes(300_000, 1)),
            FakeFile::lfs("pytorch_model.bin", bytes(1000, 2)),
            FakeFile::lfs("tf_model.h5", bytes(1000, 3)),
            FakeFile::lfs("flax_model.msgpack", bytes(1000, 4)),
            FakeFile::lfs("onnx/model.onnx", bytes(1000, 5)),
            FakeFile::new("tokenizer.json", r#"{"model":{}}"#),
            FakeFile::new("vocab.json", "{}"),
            FakeFile::new("merges.txt", "#version: 0.2\n"),
            FakeFile::new("preprocessor_config.json", "{}"),
            FakeFile::new("README.md", "# clip"),
        ],
    )
}

struct Setup {
    _temp: tempfile::TempDir,
    root: PathBuf,
    hub: FakeHub,
}

impl Setup {
    fn new(repos: Vec<FakeRepo>) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        Setup { _temp: temp, root, hub: FakeHub::start(repos) }
    }
    fn env(&self) -> Env {
        Env::from_pairs([("HF_ENDPOINT", self.hub.endpoint()), ("HF_TOKEN", "hf_test_token".to_string())])
    }
    fn options(&self, roles: &[Role]) -> FetchOptions {
        let mut options = FetchOptions::new(self.root.join("checkpoints"));
        options.memory_dir = self.root.join("data/memory");
        options.roles = roles.to_vec();
        options.progress = false;
        options.retry_delay = Duration::from_millis(10);
        options
    }
    fn clip_dir(&self) -> PathBuf {
        self.root.join("checkpoints/clip-vit-base-patch32")
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    fn walk(base: &Path, dir: &Path, names: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, names);
            } else {
                names.push(path.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    walk(dir, dir, &mut names);
    names.sort();
    names
}

#[test]
fn downloads_only_the_files_a_role_needs() {
    let s = Setup::new(vec![clip_repo()]);
    let report = fetch(&s.env(), &s.options(&[Role::Clip])).unwrap();

    assert_eq!(
        files_in(&s.clip_dir()),
        vec![
            MANIFEST_NAME,
            "config.json",
            "merges.txt",
            "model.safetensors",
            "preprocessor_config.json",
            "tokenizer.json",
            "vocab.json"
        ]
    );
    assert_eq!(std::fs::read(s.clip_dir().join("model.safetensors")).unwrap(), bytes(300_000, 1));
    let model = &report.models[0];
    assert_eq!(model.commit.as_deref(), Some(clip_repo().commit.as_str()));
    assert!(model.files.iter().all(|f| f.outcome == FileOutcome::Downloaded));

    // Files are fetched by commit, with the token, and LFS files through the redirect.
    let resolves = s.hub.requests_for("/resolve/");
    assert!(resolves.iter().all(|r| r.target.contains(&clip_repo().commit)));
    assert!(resolves.iter().all(|r| r.authorization.as_deref() == Some("Bearer hf_test_token")));
    assert_eq!(s.hub.requests_for("/cdn/").len(), 1);
    assert!(s.hub.requests_for("/api/models/openai/clip-vit-base-patch32/revision/main?blobs=true").len() == 1);

    // The resolver reads what fetch wrote.
    let env = Env::from_pairs([("HF_HUB_CACHE", s.root.join("empty-cache").display().to_string())]);
    let found = Resolver::new(env).with_checkpoints(s.root.join("checkpoints")).resolve(Role::Clip).unwrap();
    assert_eq!((found.source, found.path), (SourceKind::Checkpoints, s.clip_dir()));

    // A second run finds everything in place and downloads nothing.
    let before = s.hub.requests_for("/resolve/").len();
    let again = fetch(&s.env(), &s.options(&[Role::Clip])).unwrap();
    assert!(again.models[0].files.iter().all(|f| f.outcome == FileOutcome::AlreadyPresent));
    assert_eq!(s.hub.requests_for("/resolve/").len(), before);
}

#[test]
fn resumes_after_the_server_cuts_a_transfer() {
    let s = Setup::new(vec![clip_repo()]);
    s.hub.cut_after("model.safetensors", 100_000, 1);
    let report = fetch(&s.env(), &s.options(&[Role::Clip])).unwrap();

    let transfers = s.hub.requests_for("/cdn/");
    assert_eq!(transfers.len(), 2, "{transfers:?}");
    assert_eq!(transfers[0].range, None);
    assert_eq!(transfers[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(std::fs::read(s.clip_dir().join("model.safetensors")).unwrap(), bytes(300_000, 1));
    assert!(!part_path(&s.clip_dir().join("model.safetensors")).exists());
    let weights = report.models[0].files.iter().find(|f| f.name == "model.safetensors").unwrap();
    assert_eq!(weights.outcome, FileOutcome::Resumed);
}

#[test]
fn interrupted_run_keeps_the_part_file_and_the_next_run_resumes() {
    let s = Setup::new(vec![clip_repo()]);
    s.hub.cut_after("model.safetensors", 65_536, 1);
    let mut options = s.options(&[Role::Clip]);
    options.retries = 0;
    let error = fetch(&s.env(), &options).unwrap_err();
    assert!(matches!(error, HubError::Interrupted { .. }), "{error:?}");
    assert!(error.to_string().contains("run the same command again to resume"), "{error}");

    let final_path = s.clip_dir().join("model.safetensors");
    let part = part_path(&final_path);
    assert!(!final_path.exists(), "no partial file under the final name");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 65_536);

    let report = fetch(&s.env(), &options).unwrap();
    let transfers = s.hub.requests_for("/cdn/");
    assert_eq!(transfers.last().unwrap().range.as_deref(), Some("bytes=65536-"));
    assert_eq!(std::fs::read(&final_path).unwrap(), bytes(300_000, 1));
    assert!(!part.exists());
    let weights = report.models[0].files.iter().find(|f| f.name == "model.safetensors").unwrap();
    assert_eq!(weights.outcome, FileOutcome::Resumed);
}

#[test]
fn wrong_hash_is_rejected_without_a_file_under_the_final_name() {
    let s = Setup::new(vec![clip_repo()]);
    s.hub.corrupt("model.safetensors");
    let error = fetch(&s.env(), &s.options(&[Role::Clip])).unwrap_err();
    match &error {
        HubError::Integrity { file, check, .. } => assert_eq!((file.as_str(), *check), ("model.safetensors", "sha256")),
        other => panic!("expected Integrity, got {other:?}"),
    }
    let final_path = s.clip_dir().join("model.safetensors");
    assert!(!final_path.exists());
    assert!(!part_path(&final_path).exists(), "a corrupt download is not kept for resuming");
}

#[test]
fn wrong_git_sha1_of_a_regular_file_is_rejected() {
    let s = Setup::new(vec![clip_repo()]);
    s.hub.corrupt("config.json");
    let error = fetch(&s.env(), &s.options(&[Role::Clip])).unwrap_err();
    assert!(matches!(&error, HubError::Integrity { check: "git blob sha1", .. }), "{error:?}");
    assert!(!s.clip_dir().join("config.json").exists());
}

#[test]
fn wrong_size_is_rejected() {
    let s = Setup::new(vec![clip_repo()]);
    s.hub.grow("model.safetensors", 10);
    let mut options = s.options(&[Role::Clip]);
    options.retries = 0;
    let error = fetch(&s.env(), &options).unwrap_err();
    assert!(matches!(&error, HubError::Integrity { check: "size", .. }), "{error:?}");
    let final_path = s.clip_dir().join("model.safetensors");
    assert!(!final_path.exists());
    assert!(!part_path(&final_path).exists());
}

#[test]
fn works_without_blob_metadata() {
    let s = Setup::new(vec![clip_repo()]);
    s.hub.refuse_blobs();
    fetch(&s.env(), &s.options(&[Role::Clip])).unwrap();
    assert_eq!(std::fs::read(s.clip_dir().join("model.safetensors")).unwrap(), bytes(300_000, 1));
    assert_eq!(s.hub.requests_for("/revision/main").len(), 2, "blobs=true, then the plain listing");
}

#[test]
fn sharded_weights_and_nested_files() {
    let index = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#;
    let repo = FakeRepo::new(
        "sentence-transformers/all-MiniLM-L6-v2",
        vec![
            FakeFile::new("config.json", "{}"),
            FakeFile::new("model.safetensors.index.json", index),
            FakeFile::lfs("model-00001-of-00002.safetensors", bytes(5000, 7)),
            FakeFile::lfs("model-00002-of-00002.safetensors", bytes(3000, 8)),
            FakeFile::lfs("pytorch_model.bin", bytes(100, 9)),
            FakeFile::lfs("rust_model.ot", bytes(100, 10)),
            FakeFile::new("vocab.txt", "[PAD]\n"),
            FakeFile::new("tokenizer.json", "{}"),
            FakeFile::new("modules.json", "[]"),
            FakeFile::new("1_Pooling/config.json", "{}"),
        ],
    );
    let s = Setup::new(vec![repo]);
    fetch(&s.env(), &s.options(&[Role::Sbert])).unwrap();
    let dir = s.root.join("checkpoints/all-MiniLM-L6-v2");
    let files = files_in(&dir);
    assert!(files.contains(&"model-00002-of-00002.safetensors".to_string()), "{files:?}");
    assert!(files.contains(&"1_Pooling/config.json".to_string()), "{files:?}");
    assert!(!files.contains(&"pytorch_model.bin".to_string()), "{files:?}");
    assert!(!files.contains(&"rust_model.ot".to_string()), "{files:?}");
    let found = Resolver::new(Env::from_pairs([("HF_HUB_CACHE", "/nonexistent")]))
        .with_checkpoints(s.root.join("checkpoints"))
        .resolve(Role::Sbert)
        .unwrap();
    assert_eq!(found.path, dir);
}

#[test]
fn memory_bank_from_the_meacap_repo() {
    let repo = FakeRepo::new(
        "JoeyZoZ/MeaCap",
        vec![
            FakeFile::new("README.md", "x"),
            FakeFile::new("memory/coco/memory_captions.json", r#"["a cat"]"#),
            FakeFile::lfs("memory/coco/memory_clip_embeddings.pt", bytes(4096, 11)),
            FakeFile::lfs("memory/coco/memory_wte_embeddings.pt", bytes(2048, 12)),
            FakeFile::new("memory/cc3m/memory_captions.json", "[]"),
        ],
    );
    let s = Setup::new(vec![repo]);
    let mut options = s.options(&[Role::Memory]);
    options.memory_ids = vec!["coco".to_string()];
    fetch(&s.env(), &options).unwrap();
    let dir = s.root.join("data/memory/coco");
    assert_eq!(
        files_in(&dir),
        vec![MANIFEST_NAME, "memory_captions.json", "memory_clip_embeddings.pt", "memory_wte_embeddings.pt"]
    );
    let found = Resolver::new(Env::default())
        .with_memory_dir(s.root.join("data/memory"))
        .with_memory_id("coco")
        .resolve(Role::Memory)
        .unwrap();
    assert_eq!(found.path, dir);

    options.memory_ids = vec!["flickr".to_string()];
    let error = fetch(&s.env(), &options).unwrap_err();
    assert!(error.to_string().contains("available banks: cc3m, coco"), "{error}");

    // cc3m lacks its embeddings in this fake repo: refused before downloading anything.
    options.memory_ids = vec!["cc3m".to_string()];
    let error = fetch(&s.env(), &options).unwrap_err();
    assert!(matches!(error, HubError::RepoIncomplete { .. }), "{error:?}");
    assert!(!s.root.join("data/memory/cc3m").exists());
}

#[test]
fn viecap_is_not_on_the_hub() {
    let s = Setup::new(vec![]);
    let error = fetch(&s.env(), &s.options(&[Role::Viecap])).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("FeiElysia/ViECap") && text.contains("train_coco/coco_prefix-0014.pt"), "{text}");
    assert_eq!(s.hub.connections(), 0);

    // Among other roles it is skipped with the same advice.
    let s = Setup::new(vec![clip_repo()]);
    let report = fetch(&s.env(), &s.options(&[Role::Viecap, Role::Clip])).unwrap();
    assert_eq!(report.skipped[0].role, Role::Viecap);
    assert_eq!(report.models.len(), 1);
}

#[test]
fn unknown_repo_or_revision_is_a_clear_http_error() {
    let s = Setup::new(vec![clip_repo()]);
    let mut options = s.options(&[Role::Clip]);
    options.revision = Some("no-such-branch".to_string());
    let error = fetch(&s.env(), &options).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, HubError::Http { status: 404, .. }), "{text}");
    assert!(text.contains("revision"), "{text}");

    let mut options = s.options(&[Role::Parser]);
    options.retries = 0;
    assert!(matches!(fetch(&s.env(), &options).unwrap_err(), HubError::Http { status: 404, .. }));
}

#[test]
fn revision_by_tag_and_required_files_checked() {
    let mut repo = FakeRepo::new(
        "openai-community/gpt2",
        vec![FakeFile::new("config.json", "{}"), FakeFile::new("tokenizer.json", "{}"), FakeFile::lfs("model.safetensors", bytes(10, 1))],
    );
    repo.revisions.push("v1.0".to_string());
    let s = Setup::new(vec![repo.clone()]);
    let mut options = s.options(&[Role::Gpt2]);
    options.revision = Some("v1.0".to_string());
    let report = fetch(&s.env(), &options).unwrap();
    // GPT-2 weights are not needed (they come from the ViECap checkpoint).
    let names: Vec<&str> = report.models[0].files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["config.json", "tokenizer.json"]);
    assert_eq!(report.models[0].revision, "v1.0");

    let incomplete = FakeRepo::new("lizhuang144/flan-t5-base-VG-factual-sg", vec![FakeFile::new("config.json", "{}")]);
    let s = Setup::new(vec![incomplete]);
    let text = fetch(&s.env(), &s.options(&[Role::Parser])).unwrap_err().to_string();
    assert!(text.contains("lacks required files for parser"), "{text}");
    assert!(text.contains("weights (") && text.contains("tokenizer ("), "{text}");
}
