//! The `meacap-wgpu` binary end to end, against the tiny fixture models in tests/fixtures laid out
//! (by symlinks) as a user's checkpoints tree in a temporary working directory.

#[path = "../../meacap-hub/tests/common/fake_hub.rs"]
mod fake_hub;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fake_hub::{ConnectionCounter, FakeFile, FakeHub, FakeRepo};

const SEED_ARGS: &[&str] = &[
    "caption",
    "--offline_mode",
    "--memory_id",
    "coco",
    "--memory_caption_num",
    "5",
    "--using_hard_prompt",
    "--image_path",
    "./images/street.jpg",
    "--weight_path",
    "./checkpoints/train_coco/coco_prefix-0014.pt",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").canonicalize().unwrap()
}

fn link(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(src, dst).unwrap();
}

/// A working directory with checkpoints/, data/memory/coco and images/.
struct Tree {
    _temp: tempfile::TempDir,
    root: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Without {
    Nothing,
    Viecap,
    ParserTokenizer,
}

impl Tree {
    fn new() -> Self {
        Self::without(Without::Nothing)
    }

    fn without(what: Without) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().to_path_buf();
        let f = fixtures();
        let ck = root.join("checkpoints");
        link(&f.join("clip"), &ck.join("clip-vit-base-patch32"));
        link(&f.join("gpt2"), &ck.join("gpt2"));
        link(&f.join("bert"), &ck.join("all-MiniLM-L6-v2"));
        if what == Without::ParserTokenizer {
            for name in ["config.json", "model.safetensors", "generation_config.json", "special_tokens_map.json", "tokenizer_config.json"] {
                link(&f.join("t5").join(name), &ck.join("flan-t5-base-VG-factual-sg").join(name));
            }
        } else {
            link(&f.join("t5"), &ck.join("flan-t5-base-VG-factual-sg"));
        }
        if what != Without::Viecap {
            link(&f.join("viecap/coco_prefix-tiny.pt"), &ck.join("train_coco/coco_prefix-0014.pt"));
        }
        link(&f.join("memory/tiny"), &root.join("data/memory/coco"));
        link(&f.join("pipeline/images"), &root.join("images"));
        Tree { _temp: temp, root }
    }

    /// The binary in this tree, with a clean hub environment (no cache, no offline variables, a
    /// hub endpoint nothing listens on).
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meacap-wgpu"));
        c.args(args).current_dir(&self.root);
        for var in meacap_hub::RELEVANT_VARS {
            c.env_remove(var);
        }
        c.env_remove("MEACAP_TEST_STOP_AFTER_BATCHES").env_remove("MEACAP_LOG");
        c.env("HF_HOME", self.root.join("hf-home")).env("HF_ENDPOINT", "http://127.0.0.1:9");
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::of(self.cmd(args).output().unwrap())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(out: Output) -> Self {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    #[track_caller]
    fn assert_ok(&self) {
        assert!(self.ok(), "exit {:?}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr);
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// The reference pipeline's default-mode caption for portrait.png.
fn expected_portrait_caption() -> String {
    let text = std::fs::read_to_string(fixtures().join("expected/pipeline.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(v["images"][1]["image"].as_str().unwrap().ends_with("portrait.png"));
    v["images"][1]["modes"]["default"]["caption"].as_str().unwrap().trim().to_string()
}

fn caption_json(tree: &Tree, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["caption", "--offline", "--device", "cpu", "--json", "--image-path", "./images/portrait.png"];
    args.extend_from_slice(extra);
    let run = tree.run(&args);
    run.assert_ok();
    run.json()
}

// (a) -----------------------------------------------------------------------------------------

#[test]
fn seed_command_verbatim_prints_a_caption() {
    let tree = Tree::new();
    let run = tree.run(SEED_ARGS);
    run.assert_ok();
    let line = run.stdout.lines().find(|l| l.starts_with("./images/street.jpg:")).expect(&run.stdout);
    assert!(line.len() > "./images/street.jpg: ".len() + 1, "{line}");
}

#[test]
fn original_and_kebab_flags_give_the_reference_caption() {
    let tree = Tree::new();
    let want = expected_portrait_caption();
    for args in [
        &[
            "caption", "--offline_mode", "--memory_id", "coco", "--memory_caption_num", "5", "--using_hard_prompt",
            "--image_path", "./images/portrait.png", "--weight_path", "./checkpoints/train_coco/coco_prefix-0014.pt",
            "--device", "cpu",
        ][..],
        &[
            "caption", "--offline-mode", "--memory-id", "coco", "--memory-caption-num", "5", "--using-hard-prompt",
            "--image-path", "./images/portrait.png", "--weight-path", "./checkpoints/train_coco/coco_prefix-0014.pt",
            "--device", "cpu",
        ][..],
    ] {
        let run = tree.run(args);
        run.assert_ok();
        let line = run.stdout.lines().find(|l| l.starts_with("./images/portrait.png:")).expect(&run.stdout);
        assert_eq!(line["./images/portrait.png:".len()..].trim(), want, "{args:?}");
    }
}

// (b) -----------------------------------------------------------------------------------------

#[test]
fn offline_and_all_local_runs_make_no_connection() {
    let tree = Tree::new();
    let counter = ConnectionCounter::start();
    let with_counter = |args: &[&str]| {
        let mut c = tree.cmd(args);
        c.env("HF_ENDPOINT", counter.endpoint());
        Run::of(c.output().unwrap())
    };
    with_counter(&["doctor", "--offline", "--device", "cpu"]).assert_ok();
    let mut seed: Vec<&str> = SEED_ARGS.to_vec();
    seed.extend(["--device", "cpu"]);
    with_counter(&seed).assert_ok();
    // Online (no --offline): every model is local, so nothing may reach the network either.
    with_counter(&["caption", "--image-path", "./images/portrait.png", "--device", "cpu"]).assert_ok();
    with_counter(&["doctor", "--device", "cpu"]).assert_ok();
    // HF_HUB_OFFLINE=1 is honoured like --offline.
    let mut c = tree.cmd(&["caption", "--image-path", "./images/portrait.png", "--device", "cpu"]);
    c.env("HF_ENDPOINT", counter.endpoint()).env("HF_HUB_OFFLINE", "1");
    Run::of(c.output().unwrap()).assert_ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(counter.count(), 0, "a run opened a connection to the hub");
}

// (c) -----------------------------------------------------------------------------------------

#[test]
fn json_output_has_the_documented_keys() {
    let tree = Tree::new();
    let v = caption_json(&tree, &[]);
    for key in ["image", "caption", "concepts", "memory", "scene_graphs", "prompt_ids", "timings_ms"] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["image"], "./images/portrait.png");
    assert_eq!(v["caption"].as_str().unwrap().trim(), expected_portrait_caption());
    let memory = v["memory"].as_array().unwrap();
    assert_eq!(memory.len(), 5);
    for hit in memory {
        assert!(hit["index"].is_u64() && hit["score"].is_number() && hit["caption"].is_string(), "{hit}");
    }
    assert!(v["timings_ms"].as_object().is_some_and(|t| !t.is_empty()));
}

// (d) -----------------------------------------------------------------------------------------

#[test]
fn batch_with_a_corrupt_image_goes_on_and_resumes() {
    let tree = Tree::new();
    let f = fixtures().join("pipeline/images");
    let batch = tree.path("batch");
    std::fs::create_dir_all(&batch).unwrap();
    std::fs::copy(f.join("portrait.png"), batch.join("a.png")).unwrap();
    let jpeg = std::fs::read(f.join("street.jpg")).unwrap();
    std::fs::write(batch.join("b.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::copy(f.join("nothing.png"), batch.join("c.png")).unwrap();
    let args = ["caption", "--offline", "--device", "cpu", "--image-path", "batch", "--output", "out.jsonl"];

    let first = tree.run(&args);
    assert!(!first.ok(), "a failed image must make the exit code non-zero");
    assert!(first.stderr.contains("b.jpg"), "{}", first.stderr);
    assert!(first.stdout.contains("batch/a.png:") && first.stdout.contains("batch/c.png:"), "{}", first.stdout);

    let second = tree.run(&args);
    assert!(!second.ok());
    assert!(second.stderr.contains("b.jpg"), "{}", second.stderr);
    assert!(!second.stdout.contains("batch/a.png"), "a.png was captioned again: {}", second.stdout);

    let text = std::fs::read_to_string(tree.path("out.jsonl")).unwrap();
    let images: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(images, ["batch/a.png", "batch/c.png"]);
}

/// `--batch` changes how images are grouped, not what they get: the same captions, beams and
/// scores one at a time and in batches (a bad file in the middle of a batch included).
#[test]
fn batch_sizes_give_the_same_captions() {
    let tree = Tree::new();
    let f = fixtures().join("pipeline/images");
    let batch = tree.path("mixed");
    std::fs::create_dir_all(&batch).unwrap();
    for (i, entry) in std::fs::read_dir(&f).unwrap().enumerate() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, batch.join(format!("{i}-{}", path.file_name().unwrap().to_string_lossy()))).unwrap();
    }
    std::fs::write(batch.join("1-broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let by_image = |size: &str| {
        let run = tree.run(&["caption", "--offline", "--device", "cpu", "--json", "--image-path", "mixed", "--batch", size]);
        assert!(!run.ok(), "the broken file must make the exit code non-zero");
        assert!(run.stderr.contains("1-broken.png"), "{}", run.stderr);
        run.stdout
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["image"].as_str().unwrap().to_string(), (v["caption"].clone(), v["beams"].clone(), v["concepts"].clone()))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let one = by_image("1");
    assert_eq!(one.len(), std::fs::read_dir(&f).unwrap().count(), "every good image captioned");
    for size in ["2", "64"] {
        let batched = by_image(size);
        assert_eq!(batched.keys().collect::<Vec<_>>(), one.keys().collect::<Vec<_>>(), "--batch {size}: images");
        for (image, (caption, beams, concepts)) in &one {
            let (c, b, k) = &batched[image];
            assert_eq!((c, k), (caption, concepts), "--batch {size}: {image}");
            let tokens = |b: &serde_json::Value| b.as_array().unwrap().iter().map(|x| x["tokens"].clone()).collect::<Vec<_>>();
            assert_eq!(tokens(b), tokens(beams), "--batch {size}: {image} beams");
            for (x, y) in b.as_array().unwrap().iter().zip(beams.as_array().unwrap()) {
                let (x, y) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
                assert!((x - y).abs() <= 1e-5, "--batch {size}: {image} beam score {x} vs {y}");
            }
        }
    }
}

// (e) -----------------------------------------------------------------------------------------

#[test]
fn missing_parser_tokenizer_names_role_places_and_fix() {
    let tree = Tree::without(Without::ParserTokenizer);
    let run = tree.run(&["caption", "--offline", "--device", "cpu", "--image-path", "./images/portrait.png"]);
    assert!(!run.ok());
    assert!(run.stderr.contains("parser"), "{}", run.stderr);
    assert!(run.stderr.contains("checkpoints/flan-t5-base-VG-factual-sg"), "{}", run.stderr);
    assert!(run.stderr.contains("tokenizer"), "{}", run.stderr);
    assert!(run.stderr.contains("meacap-wgpu models fetch --only parser"), "{}", run.stderr);
}

// (f) -----------------------------------------------------------------------------------------

#[test]
fn doctor_exit_codes_and_json() {
    let tree = Tree::new();
    let run = tree.run(&["doctor", "--offline", "--device", "cpu"]);
    run.assert_ok();
    assert!(run.stdout.contains("✓ clip") && run.stdout.contains("36 captions"), "{}", run.stdout);
    let run = tree.run(&["doctor", "--offline", "--device", "cpu", "--json"]);
    run.assert_ok();
    let v = run.json();
    assert_eq!(v["ready"], true);
    assert_eq!(v["models"].as_array().unwrap().len(), 6);
    let bank = &v["memory_checks"][0];
    assert_eq!((bank["id"].as_str(), bank["captions"].as_u64(), bank["rows"].as_u64()), (Some("coco"), Some(36), Some(36)));
    assert_eq!(bank["dim"], bank["clip_dim"]);
    assert!(v["devices"]["cpu"].is_string());

    let missing = Tree::without(Without::Viecap);
    let run = missing.run(&["doctor", "--offline", "--device", "cpu"]);
    assert!(!run.ok());
    assert!(run.stdout.contains("✗ viecap") && run.stdout.contains("github.com/FeiElysia/ViECap"), "{}", run.stdout);
    let run = missing.run(&["doctor", "--offline", "--device", "cpu", "--json"]);
    assert!(!run.ok());
    assert_eq!(run.json()["ready"], false);
}

#[test]
fn doctor_flags_a_bank_whose_captions_do_not_match_its_rows() {
    let tree = Tree::new();
    let bank = tree.path("data/memory/coco");
    std::fs::remove_file(&bank).unwrap();
    std::fs::create_dir_all(&bank).unwrap();
    let tiny = fixtures().join("memory/tiny");
    link(&tiny.join("memory_clip_embeddings.pt"), &bank.join("memory_clip_embeddings.pt"));
    let captions: Vec<String> = serde_json::from_str(&std::fs::read_to_string(tiny.join("memory_captions.json")).unwrap()).unwrap();
    std::fs::write(bank.join("memory_captions.json"), serde_json::to_string(&captions[..35]).unwrap()).unwrap();
    let run = tree.run(&["doctor", "--offline", "--device", "cpu"]);
    assert!(!run.ok());
    assert!(run.stdout.contains("35 captions but 36 embedding rows"), "{}", run.stdout);
}

// (g) -----------------------------------------------------------------------------------------

#[test]
fn converted_bank_gives_the_same_caption() {
    let tree = Tree::new();
    tree.run(&["memory", "convert", "--from", "data/memory/coco", "--out", "conv/coco"]).assert_ok();
    assert!(tree.path("conv/coco/memory.safetensors").is_file() && tree.path("conv/coco/memory_captions.json").is_file());
    let pt = caption_json(&tree, &[]);
    let native = caption_json(&tree, &["--memory-dir", "conv"]);
    assert_eq!(native["caption"], pt["caption"]);
    let indices = |v: &serde_json::Value| v["memory"].as_array().unwrap().iter().map(|h| h["index"].as_u64()).collect::<Vec<_>>();
    assert_eq!(indices(&native), indices(&pt));
    // f16 storage also loads and retrieves the same memories.
    tree.run(&["memory", "convert", "--from", "data/memory/coco", "--out", "half/coco", "--dtype", "f16"]).assert_ok();
    assert_eq!(indices(&caption_json(&tree, &["--memory-dir", "half"])), indices(&pt));
}

// (h) -----------------------------------------------------------------------------------------

/// Tensors of a safetensors file as f32 (F32 only), with shapes.
fn read_safetensors(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = std::collections::BTreeMap::new();
    for (name, entry) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(entry["dtype"], "F32");
        let shape: Vec<usize> = entry["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let off: Vec<usize> = entry["data_offsets"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let values = data[off[0]..off[1]].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        out.insert(name.clone(), (shape, values));
    }
    out
}

#[test]
fn memory_build_matches_the_reference_builder_and_resumes() {
    let tree = Tree::new();
    let captions = "data/memory/coco/memory_captions.json";
    let build = |out: &str| {
        let mut c = tree.cmd(&["memory", "build", "--captions", captions, "--out", out, "--batch-size", "8", "--device", "cpu", "--offline"]);
        c.env_remove("MEACAP_TEST_STOP_AFTER_BATCHES");
        c
    };
    Run::of(build("built/coco").output().unwrap()).assert_ok();
    // The reference tensors, normalised the same way, through `memory convert` (f32).
    tree.run(&["memory", "convert", "--from", "data/memory/coco", "--out", "ref/coco", "--with-wte"]).assert_ok();
    let got = read_safetensors(&tree.path("built/coco/memory.safetensors"));
    let want = read_safetensors(&tree.path("ref/coco/memory.safetensors"));
    for name in ["clip", "wte"] {
        let (gs, gv) = &got[name];
        let (ws, wv) = &want[name];
        assert_eq!(gs, ws, "{name} shape");
        let worst = gv.iter().zip(wv).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{name}: max |diff| {worst}");
    }
    assert_eq!(
        std::fs::read(tree.path("built/coco/memory_captions.json")).unwrap(),
        std::fs::read(tree.path("ref/coco/memory_captions.json")).unwrap()
    );

    // Interrupted after 2 batches of 8, then resumed: the same bytes as the uninterrupted build.
    let mut first = build("resumed/coco");
    first.env("MEACAP_TEST_STOP_AFTER_BATCHES", "2");
    let run = Run::of(first.output().unwrap());
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(!tree.path("resumed/coco/memory.safetensors").exists(), "no final file before the build is complete");
    assert!(tree.path("resumed/coco/memory.clip.part").is_file());
    let run = Run::of(build("resumed/coco").output().unwrap());
    run.assert_ok();
    assert!(run.stderr.contains("resuming: 16 of 36"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(tree.path("resumed/coco/memory.safetensors")).unwrap(),
        std::fs::read(tree.path("built/coco/memory.safetensors")).unwrap()
    );
    assert!(!tree.path("resumed/coco/memory.clip.part").exists(), "part files are removed when done");

    // A plain-text caption list (one per line) builds the same bank.
    let list: Vec<String> = serde_json::from_str(&std::fs::read_to_string(tree.path(captions)).unwrap()).unwrap();
    std::fs::write(tree.path("captions.txt"), list.join("\n") + "\n").unwrap();
    tree.run(&["memory", "build", "--captions", "captions.txt", "--out", "txt/coco", "--batch-size", "8", "--device", "cpu", "--offline"])
        .assert_ok();
    assert_eq!(
        std::fs::read(tree.path("txt/coco/memory.safetensors")).unwrap(),
        std::fs::read(tree.path("built/coco/memory.safetensors")).unwrap()
    );
}

// (i) -----------------------------------------------------------------------------------------

/// A fake repository holding the files of a fixture folder (weights served as LFS, like the hub).
fn fixture_repo(id: &str, dir: &Path, prefix: &str) -> FakeRepo {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = format!("{rel}{}", path.file_name().unwrap().to_string_lossy());
            if path.is_dir() {
                walk(&path, &format!("{name}/"), out);
            } else {
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, prefix, &mut files);
    let files = files
        .into_iter()
        .map(|(name, bytes)| {
            if name.ends_with(".safetensors") || name.ends_with(".pt") || name.ends_with(".model") {
                FakeFile::lfs(&name, bytes)
            } else {
                FakeFile::new(&name, bytes)
            }
        })
        .collect();
    FakeRepo::new(id, files)
}

#[test]
fn models_fetch_downloads_what_doctor_then_finds() {
    let f = fixtures();
    let hub = FakeHub::start(vec![
        fixture_repo("openai/clip-vit-base-patch32", &f.join("clip"), ""),
        fixture_repo("openai-community/gpt2", &f.join("gpt2"), ""),
        fixture_repo("lizhuang144/flan-t5-base-VG-factual-sg", &f.join("t5"), ""),
        fixture_repo("sentence-transformers/all-MiniLM-L6-v2", &f.join("bert"), ""),
        fixture_repo("JoeyZoZ/MeaCap", &f.join("memory/tiny"), "memory/coco/"),
    ]);
    let tree = Tree::new();
    let fetch = |extra: &[&str]| {
        let mut args = vec!["models", "fetch", "--to", "fetched", "--memory-dir", "fetched-memory", "--memory-id", "coco"];
        args.extend_from_slice(extra);
        let mut c = tree.cmd(&args);
        c.env("HF_ENDPOINT", hub.endpoint());
        Run::of(c.output().unwrap())
    };
    let run = fetch(&[]);
    run.assert_ok();
    assert!(run.stdout.contains("✓ clip") && run.stdout.contains("downloaded"), "{}", run.stdout);
    assert!(run.stdout.contains("viecap") && run.stdout.contains("FeiElysia/ViECap"), "ViECap's source must be named: {}", run.stdout);

    let doctor = tree.run(&[
        "doctor", "--offline", "--device", "cpu", "--checkpoints", "fetched", "--memory-dir", "fetched-memory",
        "--weight-path", "./checkpoints/train_coco/coco_prefix-0014.pt",
    ]);
    doctor.assert_ok();
    assert!(doctor.stdout.contains("fetched/clip-vit-base-patch32"), "{}", doctor.stdout);

    let again = fetch(&["--only", "clip"]);
    again.assert_ok();
    assert!(again.stdout.contains("0 downloaded, 0 resumed"), "{}", again.stdout);

    let connections = hub.connections();
    let offline = fetch(&["--offline"]);
    assert!(!offline.ok());
    assert!(offline.stderr.contains("offline"), "{}", offline.stderr);
    assert_eq!(hub.connections(), connections, "an offline fetch touched the network");
}

#[test]
fn models_manifest_lists_what_the_page_needs_with_sizes_and_hashes() {
    let tree = Tree::new();
    let run = tree.run(&["models", "manifest", "--weight-path", "./checkpoints/train_coco/coco_prefix-0014.pt"]);
    run.assert_ok();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tree.path("meacap-manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "meacap-wgpu-manifest-v1");
    let models = manifest["models"].as_object().unwrap();
    let roles: Vec<&str> = models.keys().map(String::as_str).collect();
    assert_eq!(roles, ["clip", "gpt2", "memory", "parser", "sbert", "viecap"]);
    for (role, model) in models {
        for file in model["files"].as_array().unwrap() {
            let path = tree.path(file["path"].as_str().unwrap());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), file["size"].as_u64().unwrap(), "{role} {path:?}");
            assert_eq!(meacap_hub::sha256_file(&path).unwrap(), file["sha256"].as_str().unwrap(), "{role} {path:?}");
        }
    }
    let names = |role: &str| -> Vec<String> {
        models[role]["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect()
    };
    assert!(names("clip").contains(&"preprocessor_config.json".to_string()), "{:?}", names("clip"));
    assert!(names("sbert").contains(&"1_Pooling/config.json".to_string()), "{:?}", names("sbert"));
    assert_eq!(names("viecap"), ["coco_prefix-0014.pt"]);
    assert_eq!(names("memory"), ["memory_captions.json", "memory_clip_embeddings.pt"]);
    assert_eq!(models["viecap"]["files"][0]["path"], "checkpoints/train_coco/coco_prefix-0014.pt");

    // Files outside the served folder cannot be loaded by the page: say so and how to fix it.
    std::fs::create_dir_all(tree.path("site")).unwrap();
    let run = tree.run(&["models", "manifest", "--root", "site", "--weight-path", "./checkpoints/train_coco/coco_prefix-0014.pt"]);
    assert!(!run.ok());
    assert!(run.stderr.contains("is not under") && run.stderr.contains("--root"), "{}", run.stderr);
}
