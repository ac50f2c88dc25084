//! The tiny-model pipeline inside a browser (headless Chromium through wasm-bindgen-test-runner, in
//! a dedicated worker as in production), on WebGPU and on the CPU backend, through the same API
//! the page uses. Expected values are the native fixtures (tests/fixtures/expected/pipeline.json,
//! from the Python reference), with the native tolerances: memory cosines and beam scores within
//! 1e-4, ids, scene graphs, concepts, prompts and captions identical.
//!
//! Run: scripts/test-web.sh (builds, then runs this under Chromium with --enable-unsafe-webgpu).
#![cfg(target_family = "wasm")]

use meacap_web::{Hasher, IncomingFile, Session};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

macro_rules! fixture {
    ($path:literal) => {
        ($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/", $path)) as &[u8])
    };
}

/// (role, files as (name in the model, fixture path, bytes)), in the order the page loads them.
fn models() -> Vec<(&'static str, Vec<(&'static str, &'static [u8])>)> {
    let named = |prefix: &'static str, files: Vec<(&'static str, &'static [u8])>| {
        files.into_iter().map(move |(path, bytes)| (path.strip_prefix(prefix).unwrap(), bytes)).collect::<Vec<_>>()
    };
    vec![
        (
            "clip",
            named(
                "clip/",
                vec![
                    fixture!("clip/config.json"),
                    fixture!("clip/model.safetensors"),
                    fixture!("clip/tokenizer.json"),
                    fixture!("clip/preprocessor_config.json"),
                ],
            ),
        ),
        ("gpt2", named("gpt2/", vec![fixture!("gpt2/config.json"), fixture!("gpt2/tokenizer.json")])),
        ("viecap", named("viecap/", vec![fixture!("viecap/coco_prefix-tiny.pt")])),
        (
            "parser",
            named("t5/", vec![fixture!("t5/config.json"), fixture!("t5/model.safetensors"), fixture!("t5/tokenizer.json")]),
        ),
        (
            "sbert",
            named(
                "bert/",
                vec![
                    fixture!("bert/config.json"),
                    fixture!("bert/model.safetensors"),
                    fixture!("bert/tokenizer.json"),
                    fixture!("bert/sentence_bert_config.json"),
                ],
            ),
        ),
        (
            "memory",
            named(
                "memory/tiny/",
                vec![fixture!("memory/tiny/memory_captions.json"), fixture!("memory/tiny/memory_clip_embeddings.pt")],
            ),
        ),
    ]
}

fn sha256(bytes: &[u8]) -> String {
    let mut h = Hasher::new();
    h.update(bytes);
    h.finish()
}

/// Sends a file the way web/worker.js does: in chunks, then checked against its digest.
fn send(session: &mut Session, name: &str, bytes: &[u8], sha: &str) -> Result<(), String> {
    let mut file = IncomingFile::new(name.to_string(), bytes.len() as f64).map_err(js_message)?;
    for chunk in bytes.chunks(1 << 20) {
        file.push(chunk).map_err(js_message)?;
    }
    session.add_file(file, sha).map_err(js_message)
}

fn js_message(e: wasm_bindgen::JsError) -> String {
    let value = wasm_bindgen::JsValue::from(e);
    js_sys::Reflect::get(&value, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_default()
}

async fn session(backend: &str) -> Session {
    let mut session = Session::open(backend.into()).await.map_err(js_message).expect("open session");
    for (role, files) in models() {
        for (name, bytes) in &files {
            send(&mut session, name, bytes, &sha256(bytes)).expect("send");
        }
        let file = (role == "viecap").then(|| files[0].0.to_string());
        session.load(role, role, file).map_err(js_message).unwrap_or_else(|e| panic!("load {role}: {e}"));
    }
    session.finish().map_err(js_message).expect("finish");
    session
}

const PIPELINE: &str = include_str!("../../../tests/fixtures/expected/pipeline.json");

fn image(path: &str) -> &'static [u8] {
    // JPEGs go in as Pillow's decode, as in the native test (crates/meacap/tests/pipeline.rs).
    match path {
        "pipeline/images/street.jpg" => include_bytes!("../../../tests/fixtures/pipeline/decoded/street.jpg.png"),
        "pipeline/images/wide.jpg" => include_bytes!("../../../tests/fixtures/pipeline/decoded/wide.jpg.png"),
        "pipeline/images/portrait.png" => include_bytes!("../../../tests/fixtures/pipeline/images/portrait.png"),
        "pipeline/images/nothing.png" => include_bytes!("../../../tests/fixtures/pipeline/images/nothing.png"),
        other => panic!("no such fixture image {other}"),
    }
}

fn u64s(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn close(what: &str, got: &serde_json::Value, want: &serde_json::Value) {
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: length");
    for (a, b) in g.iter().zip(w) {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4, "{what}: {a} vs {b}");
    }
}

/// Every image in every decoding mode against the reference.
async fn check_pipeline(backend: &str) {
    let mut session = session(backend).await;
    let reference: serde_json::Value = serde_json::from_str(PIPELINE).unwrap();
    let modes = [("default", "hard-first", 5), ("soft_prompt_first", "soft-first", 5), ("greedy", "hard-first", 0), ("only_hard_prompt", "only-hard", 5)];
    for want in reference["images"].as_array().unwrap() {
        let path = want["image"].as_str().unwrap();
        for (mode, order, beam) in modes {
            session.set_options(order, beam, 5).map_err(js_message).unwrap();
            let json = session.caption(image(path).to_vec(), path.to_string()).await.map_err(js_message).expect("caption");
            let got: serde_json::Value = serde_json::from_str(&json).unwrap();
            let what = format!("{backend} {path} {mode}");
            let ids: Vec<u64> = got["memory"].as_array().unwrap().iter().map(|h| h["index"].as_u64().unwrap()).collect();
            assert_eq!(ids, u64s(&want["memory_ids"]), "{what}: memory ids");
            let scores = serde_json::Value::Array(got["memory"].as_array().unwrap().iter().map(|h| h["score"].clone()).collect());
            close(&format!("{what}: memory cosines"), &scores, &want["memory_cosine"]);
            assert_eq!(got["scene_graphs"], want["parser_formatted"], "{what}: scene graphs");
            assert_eq!(got["concepts"], want["concepts"], "{what}: concepts");
            assert_eq!(got["prompt"], want["hard_prompt"], "{what}: prompt");
            assert_eq!(u64s(&got["prompt_ids"]), u64s(&want["hard_prompt_ids"]), "{what}: prompt ids");
            let expected = &want["modes"][mode];
            assert_eq!(got["caption"], expected["caption"], "{what}: caption");
            match expected["beams"].as_array() {
                Some(beams) => {
                    let got_beams = got["beams"].as_array().unwrap();
                    assert_eq!(got_beams.len(), beams.len(), "{what}: beam count");
                    for (g, w) in got_beams.iter().zip(beams) {
                        assert_eq!(u64s(&g["tokens"]), u64s(&w["tokens"]), "{what}: beam tokens");
                        assert_eq!(g["text"], w["text"], "{what}: beam text");
                        close(&format!("{what}: beam score"), &serde_json::json!([g["score"]]), &serde_json::json!([w["score"]]));
                    }
                }
                None => assert_eq!(u64s(&got["beams"][0]["tokens"]), u64s(&expected["tokens"]), "{what}: greedy tokens"),
            }
        }
    }
}

#[wasm_bindgen_test]
async fn cpu_pipeline_matches_native_fixtures() {
    check_pipeline("cpu").await;
}

#[wasm_bindgen_test]
async fn webgpu_pipeline_matches_native_fixtures() {
    check_pipeline("webgpu").await;
}

/// Negative control: the WebGPU session is really WebGPU. Its device is a wgpu adapter (here
/// SwiftShader, the only one headless Chromium offers) and its results can only be read back
/// asynchronously, so the blocking API refuses, whereas the CPU session answers at once.
#[wasm_bindgen_test]
async fn webgpu_session_is_really_webgpu() {
    let gpu = session("webgpu").await;
    assert!(gpu.is_webgpu(), "{}", gpu.device());
    assert!(gpu.device().contains("wgpu"), "{}", gpu.device());
    let bytes = image("pipeline/images/portrait.png").to_vec();
    let blocking = gpu.caption_blocking(bytes.clone(), "portrait.png".into()).map_err(js_message);
    let message = blocking.expect_err("a WebGPU read-back cannot complete synchronously");
    assert!(message.contains("asynchronously"), "{message}");

    let cpu = session("cpu").await;
    assert!(!cpu.is_webgpu());
    cpu.caption_blocking(bytes, "portrait.png".into()).map_err(js_message).expect("the CPU backend reads back at once");
}

#[wasm_bindgen_test]
async fn corrupt_and_missing_files_are_reported() {
    let mut session = Session::open("cpu".into()).await.map_err(js_message).unwrap();
    let (_, files) = &models()[0];
    let (name, bytes) = files[1]; // model.safetensors
    let mut flipped = bytes.to_vec();
    flipped[1000] ^= 0xff;
    let message = send(&mut session, name, &flipped, &sha256(bytes)).unwrap_err();
    assert!(message.contains("model.safetensors") && message.contains("sha256"), "{message}");
    let short = &bytes[..bytes.len() - 1];
    let mut file = IncomingFile::new(name.into(), bytes.len() as f64).map_err(js_message).unwrap();
    file.push(short).map_err(js_message).unwrap();
    let message = session.add_file(file, &sha256(bytes)).map_err(js_message).unwrap_err();
    assert!(message.contains("bytes"), "{message}");

    // The CLIP folder without its weights: loading names the model and the file.
    for (name, bytes) in files.iter().filter(|(n, _)| *n != "model.safetensors") {
        send(&mut session, name, bytes, &sha256(bytes)).unwrap();
    }
    let message = session.load("clip", "clip (test)", None).map_err(js_message).unwrap_err();
    assert!(message.contains("clip (test)") && message.contains("model.safetensors"), "{message}");
    let message = session.finish().map_err(js_message).unwrap_err();
    assert!(message.contains("clip"), "{message}");
}
