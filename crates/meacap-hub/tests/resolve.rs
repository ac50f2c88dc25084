//! Resolution precedence, HF cache layouts and environment variables, on temporary folders.

mod common;

use std::path::{Path, PathBuf};

use common::hf_cache::{commit, model_files, without, write_folder, FakeCache};
use meacap_hub::{CandidateStatus, Env, HubError, Resolver, Role, SourceKind};

const CLIP: &str = "openai/clip-vit-base-patch32";
const PARSER: &str = "lizhuang144/flan-t5-base-VG-factual-sg";

struct Setup {
    _temp: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        Setup { _temp: temp, root }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn cache(&self) -> FakeCache {
        FakeCache::new(self.path("hf/hub"))
    }
    /// An env whose HF cache is `<root>/hf/hub` and HOME is `<root>/home`.
    fn env(&self) -> Env {
        Env::from_pairs([
            ("HF_HUB_CACHE", self.path("hf/hub").display().to_string()),
            ("HOME", self.path("home").display().to_string()),
        ])
    }
    fn resolver(&self) -> Resolver {
        Resolver::new(self.env()).with_checkpoints(self.path("checkpoints")).with_memory_dir(self.path("data/memory"))
    }
}

fn not_found_text(error: HubError) -> String {
    assert!(matches!(error, HubError::NotFound(_)), "expected NotFound, got {error:?}");
    error.to_string()
}

#[test]
fn checkpoints_folder_wins_over_hf_cache() {
    let s = Setup::new();
    write_folder(&s.path("checkpoints/clip-vit-base-patch32"), &model_files(Role::Clip));
    let cache = s.cache();
    cache.add_snapshot(CLIP, &commit("a"), &model_files(Role::Clip), true);
    cache.set_ref(CLIP, "main", &commit("a"));

    let found = s.resolver().resolve(Role::Clip).unwrap();
    assert_eq!(found.source, SourceKind::Checkpoints);
    assert_eq!(found.path, s.path("checkpoints/clip-vit-base-patch32"));
    assert_eq!(found.id, CLIP);
}

#[test]
fn hf_cache_symlinked_snapshot_through_refs_main() {
    let s = Setup::new();
    let cache = s.cache();
    let snapshot = cache.add_snapshot(CLIP, &commit("a"), &model_files(Role::Clip), true);
    cache.set_ref(CLIP, "main", &format!("{}\n", commit("a")));
    assert!(std::fs::symlink_metadata(snapshot.join("config.json")).unwrap().file_type().is_symlink());

    let found = s.resolver().resolve(Role::Clip).unwrap();
    assert_eq!(found.source, SourceKind::HfCache);
    assert_eq!(found.path, snapshot);
    assert_eq!(found.commit.as_deref(), Some(commit("a").as_str()));
}

#[test]
fn hf_cache_copied_snapshot_with_nested_files() {
    let s = Setup::new();
    let cache = s.cache();
    let repo = "sentence-transformers/all-MiniLM-L6-v2";
    let snapshot = cache.add_snapshot(repo, &commit("s"), &model_files(Role::Sbert), false);
    cache.set_ref(repo, "main", &commit("s"));
    let found = s.resolver().resolve(Role::Sbert).unwrap();
    assert_eq!(found.path, snapshot);
    assert!(found.path.join("1_Pooling/config.json").is_file());
}

#[test]
fn commit_hash_pin_reads_the_snapshot_directly() {
    let s = Setup::new();
    let cache = s.cache();
    // refs/main points at a newer commit; the pin must win and no ref is needed for it.
    cache.add_snapshot(CLIP, &commit("old"), &model_files(Role::Clip), true);
    cache.add_snapshot(CLIP, &commit("new"), &model_files(Role::Clip), true);
    cache.set_ref(CLIP, "main", &commit("new"));
    let found = s.resolver().with_revision(Role::Clip, commit("old")).resolve(Role::Clip).unwrap();
    assert_eq!(found.commit.as_deref(), Some(commit("old").as_str()));
    assert!(found.path.ends_with(commit("old")));

    let missing = s.resolver().with_revision(Role::Clip, commit("never")).resolve(Role::Clip).unwrap_err();
    let text = not_found_text(missing);
    assert!(text.contains(&format!("ref points to missing snapshot {}", commit("never"))), "{text}");
}

#[test]
fn tag_revision_reads_refs_tag() {
    let s = Setup::new();
    let cache = s.cache();
    cache.add_snapshot(PARSER, &commit("v1"), &model_files(Role::Parser), true);
    cache.set_ref(PARSER, "v1.0", &commit("v1"));
    let found = s.resolver().with_revision(Role::Parser, "v1.0").resolve(Role::Parser).unwrap();
    assert_eq!(found.commit.as_deref(), Some(commit("v1").as_str()));

    // Without the tag, `main` is looked up and reported as never downloaded.
    let text = not_found_text(s.resolver().resolve(Role::Parser).unwrap_err());
    assert!(text.contains("no refs/main"), "{text}");
}

#[test]
fn ref_pointing_to_missing_snapshot_is_reported() {
    let s = Setup::new();
    let cache = s.cache();
    cache.add_snapshot(CLIP, &commit("a"), &model_files(Role::Clip), true);
    cache.set_ref(CLIP, "main", &commit("gone"));
    let error = s.resolver().resolve(Role::Clip).unwrap_err();
    let search = &error.missing()[0];
    assert!(matches!(
        &search.candidates.last().unwrap().status,
        CandidateStatus::MissingSnapshot { commit: c } if *c == commit("gone")
    ));
}

#[test]
fn incomplete_snapshot_with_dangling_symlink_is_reported() {
    let s = Setup::new();
    let cache = s.cache();
    cache.add_snapshot(CLIP, &commit("a"), &model_files(Role::Clip), true);
    cache.set_ref(CLIP, "main", &commit("a"));
    cache.delete_blob_of(CLIP, &commit("a"), "model.safetensors");

    let error = s.resolver().resolve(Role::Clip).unwrap_err();
    let missing = &error.missing()[0];
    assert!(missing.missing_in_best[0].starts_with("weights (model.safetensors"), "{:?}", missing.missing_in_best);
    let text = error.to_string();
    assert!(text.contains("incomplete: missing weights"), "{text}");
}

#[test]
fn folder_missing_tokenizer_files_gives_a_full_error() {
    let s = Setup::new();
    let folder = s.path("checkpoints/flan-t5-base-VG-factual-sg");
    write_folder(&folder, &without(model_files(Role::Parser), &["spiece.model"]));

    let error = s.resolver().resolve(Role::Parser).unwrap_err();
    let text = not_found_text(error);
    // Role, id, every place searched with its verdict, what is missing and the fix.
    assert!(text.starts_with("parser model not found locally (lizhuang144/flan-t5-base-VG-factual-sg"), "{text}");
    assert!(text.contains("--parser-checkpoint"), "{text}");
    assert!(text.contains("1. ") && text.contains("2. "), "{text}");
    assert!(text.contains(&format!("{} (checkpoints): incomplete: missing tokenizer (tokenizer.json, or spiece.model)", folder.display())), "{text}");
    assert!(text.contains("models--lizhuang144--flan-t5-base-VG-factual-sg (HF cache, cache root from HF_HUB_CACHE): absent"), "{text}");
    assert!(text.contains(&format!("missing in {}: tokenizer", folder.display())), "{text}");
    assert!(text.contains("meacap-wgpu models fetch --only parser"), "{text}");
}

#[test]
fn incomplete_checkpoints_folder_falls_through_to_complete_cache() {
    let s = Setup::new();
    write_folder(&s.path("checkpoints/gpt2"), &without(model_files(Role::Gpt2), &["merges.txt"]));
    let cache = s.cache();
    cache.add_snapshot("openai-community/gpt2", &commit("g"), &model_files(Role::Gpt2), true);
    cache.set_ref("openai-community/gpt2", "main", &commit("g"));
    let search = s.resolver().search(Role::Gpt2);
    assert!(matches!(search.candidates[0].status, CandidateStatus::Incomplete { .. }));
    assert_eq!(search.resolved.unwrap().source, SourceKind::HfCache);
}

#[test]
fn legacy_gpt2_cache_name_is_found() {
    let s = Setup::new();
    let cache = s.cache();
    cache.add_snapshot("gpt2", &commit("g"), &model_files(Role::Gpt2), false);
    cache.set_ref("gpt2", "main", &commit("g"));
    let found = s.resolver().resolve(Role::Gpt2).unwrap();
    assert!(found.path.starts_with(cache.repo_dir("gpt2")));
}

#[test]
fn explicit_folder_is_authoritative() {
    let s = Setup::new();
    write_folder(&s.path("checkpoints/clip-vit-base-patch32"), &model_files(Role::Clip));
    let mine = s.path("my-clip");
    write_folder(&mine, &model_files(Role::Clip));
    let found = s.resolver().with_explicit(Role::Clip, mine.display().to_string()).resolve(Role::Clip).unwrap();
    assert_eq!((found.source, found.path), (SourceKind::Flag, mine.clone()));

    // An incomplete explicit folder is an error, not a silent fallback to checkpoints/.
    std::fs::remove_file(mine.join("tokenizer.json")).unwrap();
    let error = s.resolver().with_explicit(Role::Clip, mine.display().to_string()).resolve(Role::Clip).unwrap_err();
    assert_eq!(error.missing()[0].candidates.len(), 1);
    assert!(error.to_string().contains("(flag): incomplete: missing tokenizer"), "{error}");

    // A path that does not exist and does not look like a hub id.
    let error = s.resolver().with_explicit(Role::Clip, "./nowhere/at/all").resolve(Role::Clip).unwrap_err();
    assert!(error.to_string().contains("nowhere/at/all (flag): absent"), "{error}");
}

#[test]
fn explicit_hub_id_searches_checkpoints_name_then_cache() {
    let s = Setup::new();
    let other = "someone/clip-vit-large-patch14";
    write_folder(&s.path("checkpoints/clip-vit-large-patch14"), &model_files(Role::Clip));
    let found = s.resolver().with_explicit(Role::Clip, other).resolve(Role::Clip).unwrap();
    assert_eq!(found.source, SourceKind::Checkpoints);
    assert_eq!(found.id, other);

    std::fs::remove_dir_all(s.path("checkpoints/clip-vit-large-patch14")).unwrap();
    let cache = s.cache();
    cache.add_snapshot(other, &commit("l"), &model_files(Role::Clip), true);
    cache.set_ref(other, "main", &commit("l"));
    let found = s.resolver().with_explicit(Role::Clip, other).resolve(Role::Clip).unwrap();
    assert_eq!(found.source, SourceKind::HfCache);
    assert!(found.path.starts_with(cache.repo_dir(other)));
}

#[test]
fn sharded_safetensors_needs_every_shard() {
    let s = Setup::new();
    let folder = s.path("checkpoints/clip-vit-base-patch32");
    let index = r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    let mut files = without(model_files(Role::Clip), &["model.safetensors"]);
    files.push(("model.safetensors.index.json".into(), index.into()));
    files.push(("model-00001-of-00002.safetensors".into(), b"1".to_vec()));
    write_folder(&folder, &files);
    let error = s.resolver().resolve(Role::Clip).unwrap_err();
    assert!(error.to_string().contains("lists missing shards model-00002-of-00002.safetensors"), "{error}");

    std::fs::write(folder.join("model-00002-of-00002.safetensors"), b"2").unwrap();
    assert_eq!(s.resolver().resolve(Role::Clip).unwrap().source, SourceKind::Checkpoints);
}

#[test]
fn viecap_file_rules() {
    let s = Setup::new();
    let error = s.resolver().resolve(Role::Viecap).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("train_coco/coco_prefix-0014.pt (checkpoints): absent"), "{text}");
    assert!(text.contains("github.com/FeiElysia/ViECap"), "{text}");
    assert!(text.contains("checkpoints.zip"), "{text}");

    let file = s.path("checkpoints/train_coco/coco_prefix-0014.pt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"").unwrap();
    let text = s.resolver().resolve(Role::Viecap).unwrap_err().to_string();
    assert!(text.contains("is an empty file"), "{text}");

    std::fs::write(&file, b"zip").unwrap();
    let found = s.resolver().resolve(Role::Viecap).unwrap();
    assert_eq!((found.path, found.source), (file, SourceKind::Checkpoints));

    let mine = s.path("elsewhere.pt");
    std::fs::write(&mine, b"zip").unwrap();
    let found = s.resolver().with_explicit(Role::Viecap, mine.display().to_string()).resolve(Role::Viecap).unwrap();
    assert_eq!((found.path, found.source), (mine, SourceKind::Flag));
}

#[test]
fn memory_bank_locations() {
    let s = Setup::new();
    let error = s.resolver().with_memory_id("coco").resolve(Role::Memory).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("--only memory --memory-id coco"), "{text}");

    // Safetensors variant in the memory dir.
    write_folder(
        &s.path("data/memory/coco"),
        &[("memory_captions.json".into(), b"[]".to_vec()), ("memory.safetensors".into(), b"x".to_vec())],
    );
    let found = s.resolver().with_memory_id("coco").resolve(Role::Memory).unwrap();
    assert_eq!((found.source, found.path), (SourceKind::MemoryDir, s.path("data/memory/coco")));

    // The HF cache layout: memory/<id>/ inside a JoeyZoZ/MeaCap snapshot.
    let cache = s.cache();
    let files: Vec<(String, Vec<u8>)> =
        model_files(Role::Memory).into_iter().map(|(n, c)| (format!("memory/cc3m/{n}"), c)).collect();
    let snapshot = cache.add_snapshot("JoeyZoZ/MeaCap", &commit("m"), &files, true);
    cache.set_ref("JoeyZoZ/MeaCap", "main", &commit("m"));
    let found = s.resolver().resolve(Role::Memory).unwrap();
    assert_eq!((found.source, found.path), (SourceKind::HfCache, snapshot.join("memory/cc3m")));

    // An explicit bank folder.
    let mine = s.path("bank");
    write_folder(&mine, &model_files(Role::Memory));
    let found = s.resolver().with_explicit(Role::Memory, mine.display().to_string()).resolve(Role::Memory).unwrap();
    assert_eq!(found.source, SourceKind::Flag);
}

#[test]
fn resolve_all_reports_every_missing_role() {
    let s = Setup::new();
    write_folder(&s.path("checkpoints/gpt2"), &model_files(Role::Gpt2));
    let error = s.resolver().resolve_all(&[Role::Gpt2, Role::Clip, Role::Sbert]).unwrap_err();
    let roles: Vec<Role> = error.missing().iter().map(|m| m.role).collect();
    assert_eq!(roles, vec![Role::Clip, Role::Sbert]);
    let found = s.resolver().resolve_all(&[Role::Gpt2]).unwrap();
    assert_eq!(found[0].role, Role::Gpt2);
}

/// The cache root each environment variable selects, in huggingface_hub's precedence order.
#[test]
fn cache_root_precedence_of_every_variable() {
    let s = Setup::new();
    let p = |rel: &str| s.path(rel).display().to_string();
    let all = [
        ("HF_HUB_CACHE", p("a")),
        ("HUGGINGFACE_HUB_CACHE", p("b")),
        ("HF_HOME", p("c")),
        ("TRANSFORMERS_CACHE", p("d")),
        ("XDG_CACHE_HOME", p("e")),
        ("HOME", p("home")),
    ];
    let expected = [
        ("HF_HUB_CACHE", s.path("a")),
        ("HUGGINGFACE_HUB_CACHE", s.path("b")),
        ("HF_HOME", s.path("c/hub")),
        ("TRANSFORMERS_CACHE", s.path("d")),
        ("XDG_CACHE_HOME", s.path("e/huggingface/hub")),
        ("HOME", s.path("home/.cache/huggingface/hub")),
    ];
    // Drop the variables one by one from the top: the next one in line must take over, and a
    // model placed in that root must resolve from there.
    for (skip, (from, root)) in expected.iter().enumerate() {
        let env = Env::from_pairs(all[skip..].iter().cloned());
        let cache_root = env.hf_cache_root();
        assert_eq!((cache_root.from.as_str(), &cache_root.path), (*from, root));

        let cache = FakeCache::new(root);
        cache.add_snapshot(CLIP, &commit(from), &model_files(Role::Clip), true);
        cache.set_ref(CLIP, "main", &commit(from));
        let found = Resolver::new(env).with_checkpoints(s.path("no-checkpoints")).resolve(Role::Clip).unwrap();
        assert_eq!(found.commit.as_deref(), Some(commit(from).as_str()), "from {from}");
    }
}

#[test]
fn tilde_and_vars_are_expanded_in_cache_paths() {
    let s = Setup::new();
    let env = Env::from_pairs([("HOME", s.path("home").display().to_string()), ("HF_HUB_CACHE", "~/hf".to_string())]);
    assert_eq!(env.hf_cache_root().path, s.path("home/hf"));
    let env = Env::from_pairs([("HOME", s.path("home").display().to_string()), ("HF_HOME", "$HOME/x".to_string())]);
    assert_eq!(env.hf_cache_root().path, s.path("home/x/hub"));
    // An empty value counts as unset.
    let env = Env::from_pairs([("HOME", s.path("home").display().to_string()), ("HF_HUB_CACHE", String::new())]);
    assert_eq!(env.hf_cache_root().from, "HOME");
}

#[test]
fn meacap_checkpoints_moves_the_tree() {
    let s = Setup::new();
    write_folder(&s.path("elsewhere/gpt2"), &model_files(Role::Gpt2));
    let env = s.env().with("MEACAP_CHECKPOINTS", s.path("elsewhere").display().to_string());
    let found = Resolver::new(env.clone()).resolve(Role::Gpt2).unwrap();
    assert_eq!(found.path, s.path("elsewhere/gpt2"));
    // --checkpoints beats the variable.
    let error = Resolver::new(env).with_checkpoints(s.path("empty")).resolve(Role::Gpt2).unwrap_err();
    assert!(error.to_string().contains("--to "), "a non-default checkpoints dir is passed to fetch: {error}");
    // Default without the variable.
    assert_eq!(Resolver::new(Env::default()).checkpoints(), Path::new("checkpoints"));
}

#[test]
fn offline_mode_from_variables_and_flag() {
    for var in ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] {
        for value in ["1", "ON", "yes", "True"] {
            let resolver = Resolver::new(Env::from_pairs([(var, value)]));
            assert!(resolver.is_offline(), "{var}={value}");
            assert_eq!(resolver.offline_reason().unwrap(), format!("{var}={value}"));
        }
        for value in ["0", "off", "no", "false", ""] {
            assert!(!Resolver::new(Env::from_pairs([(var, value)])).is_offline(), "{var}={value}");
        }
    }
    let resolver = Resolver::new(Env::default()).with_offline(true);
    assert!(resolver.is_offline());
    assert_eq!(resolver.offline_reason().as_deref(), Some("--offline"));
    let text = resolver.resolve(Role::Clip).unwrap_err().to_string();
    assert!(text.contains("offline mode is on (--offline): no download was attempted"), "{text}");
}

#[test]
fn roles_table_round_trips() {
    for role in Role::ALL {
        assert_eq!(role.key().parse::<Role>().unwrap(), role);
        assert_eq!(role.spec().role, role);
    }
    assert!("nope".parse::<Role>().is_err());
    assert_eq!(Role::Clip.spec().hub_repo, Some(CLIP));
    assert_eq!(Role::Viecap.spec().hub_repo, None);
}
