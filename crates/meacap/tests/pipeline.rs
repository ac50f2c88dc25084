//! End-to-end MeaCap-InvLM parity with tests/reference/meacap_reference.py (the original algorithm,
//! with the documented first-occurrence-order deviation) on the tiny models: memory ids and
//! cosines, scene graphs, concepts, prompt ids and captions, for beam (hard first), soft prompt
//! first, greedy and hard prompt only.

mod common;

use common::*;
use meacap::memory::{MemoryBank, MemoryOptions};
use meacap::pipeline::{CaptionOptions, Captioner, CaptionerFiles, PromptOrder, Search};

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn captioner(device: &burn::prelude::Device, options: CaptionOptions) -> Captioner {
    let (clip, gpt2, parser, sbert, viecap) = (dir("clip"), dir("gpt2"), dir("t5"), dir("bert"), dir("viecap"));
    let files = CaptionerFiles {
        clip: &clip,
        gpt2: &gpt2,
        parser: &parser,
        sbert: &sbert,
        viecap: &viecap,
        viecap_file: "coco_prefix-tiny.pt",
    };
    let memory = MemoryBank::load(&dir("memory/tiny"), &MemoryOptions { expected_dim: Some(16), ..Default::default() }, device).unwrap();
    Captioner::load(&files, memory, device, options).unwrap()
}

#[test]
fn pipeline_matches_reference_in_every_mode() {
    let reference = json("pipeline.json");
    let modes = [
        ("default", PromptOrder::HardFirst, Search::Beam { width: 5 }),
        ("soft_prompt_first", PromptOrder::SoftFirst, Search::Beam { width: 5 }),
        ("greedy", PromptOrder::HardFirst, Search::Greedy),
        ("only_hard_prompt", PromptOrder::OnlyHard, Search::Beam { width: 5 }),
    ];
    for (device_name, device) in devices() {
        let mut captioner = captioner(&device, CaptionOptions::default());
        for image in reference["images"].as_array().unwrap() {
            let (path, bytes) = image_input(image);
            for (mode, order, search) in modes {
                captioner.options.prompt_order = order;
                captioner.options.search = search;
                let got = captioner.caption(&bytes, &path.display().to_string()).unwrap();
                let what = format!("{device_name} {} {mode}", path.file_name().unwrap().to_string_lossy());
                check_caption(&what, &got, image, mode);
                eprintln!("{what}: {:?} ✓", got.caption);
            }
        }
    }
}

/// Asserts one image's caption against its reference entry for `mode`.
fn check_caption(what: &str, got: &meacap::pipeline::Caption, image: &serde_json::Value, mode: &str) {
    let ids: Vec<usize> = got.memory.iter().map(|h| h.index).collect();
    let want_ids: Vec<usize> = image["memory_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(ids, want_ids, "{what}: memory ids");
    let scores: Vec<f32> = got.memory.iter().map(|h| h.score).collect();
    let want_scores: Vec<f32> = image["memory_cosine"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_close(&format!("{what}: memory cosines"), &scores, &want_scores, 1e-4);
    assert_eq!(got.scene_graphs, strings(&image["parser_formatted"]), "{what}: scene graphs");
    assert_eq!(got.concepts, strings(&image["concepts"]), "{what}: concepts");
    assert_eq!(got.prompt, image["hard_prompt"].as_str().unwrap(), "{what}: prompt");
    let want_prompt: Vec<u32> = image["hard_prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(got.prompt_ids, want_prompt, "{what}: prompt ids");
    let want = &image["modes"][mode];
    assert_eq!(got.caption, want["caption"].as_str().unwrap(), "{what}: caption");
    if let Some(beams) = want["beams"].as_array() {
        assert_eq!(got.beams.len(), beams.len(), "{what}: beam count");
        for (g, w) in got.beams.iter().zip(beams) {
            let tokens: Vec<u32> = w["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(g.tokens, tokens, "{what}: beam tokens");
            assert_eq!(g.text, w["text"].as_str().unwrap(), "{what}: beam text");
            let score = w["score"].as_f64().unwrap() as f32;
            assert!((g.score - score).abs() <= 1e-4, "{what}: beam score {} vs {score}", g.score);
        }
    } else {
        let tokens: Vec<u32> = want["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(got.beams[0].tokens, tokens, "{what}: greedy tokens");
    }
}

/// The reference image's path, and the bytes to caption: JPEGs go in as Pillow's decode (lossless
/// PNG), since Rust JPEG decoders differ from libjpeg-turbo by a few levels, which the
/// preprocessing tests bound separately.
fn image_input(image: &serde_json::Value) -> (std::path::PathBuf, Vec<u8>) {
    let path = fixtures().join(image["image"].as_str().unwrap());
    let input = if path.extension().is_some_and(|e| e == "jpg") {
        fixtures().join("pipeline/decoded").join(format!("{}.png", path.file_name().unwrap().to_string_lossy()))
    } else {
        path.clone()
    };
    let bytes = std::fs::read(&input).unwrap();
    (path, bytes)
}

/// Every reference image captioned in one batch, with a truncated and an empty file among them:
/// each good image gets the caption it gets alone (the reference's), each bad one its own error.
#[test]
fn batch_matches_reference_and_keeps_bad_images_apart() {
    let reference = json("pipeline.json");
    let images = reference["images"].as_array().unwrap();
    let inputs: Vec<(std::path::PathBuf, Vec<u8>)> = images.iter().map(image_input).collect();
    let truncated = inputs[0].1[..inputs[0].1.len() / 3].to_vec();
    let modes = [("default", Search::Beam { width: 5 }), ("greedy", Search::Greedy)];
    for (device_name, device) in devices() {
        let mut captioner = captioner(&device, CaptionOptions::default());
        for (mode, search) in modes {
            captioner.options.search = search;
            // Bad files at the front, in the middle and at the end; every image twice (shared captions).
            let mut batch: Vec<(&[u8], String)> = vec![(truncated.as_slice(), "truncated.png".to_string())];
            for (i, (path, bytes)) in inputs.iter().chain(&inputs).enumerate() {
                batch.push((bytes.as_slice(), path.display().to_string()));
                if i == 1 {
                    batch.push((&[], "empty.png".to_string()));
                }
            }
            batch.push((&truncated[..10], "header-only.png".to_string()));
            let named: Vec<(&[u8], &str)> = batch.iter().map(|(b, n)| (*b, n.as_str())).collect();
            let results = captioner.caption_batch(&named).unwrap();
            assert_eq!(results.len(), batch.len(), "{device_name} {mode}: one result per image");
            let mut good = 0;
            for ((_, name), result) in batch.iter().zip(&results) {
                match images.iter().position(|im| fixtures().join(im["image"].as_str().unwrap()).display().to_string() == *name) {
                    Some(at) => {
                        let got = result.as_ref().unwrap_or_else(|e| panic!("{device_name} {mode} {name}: {e}"));
                        check_caption(&format!("{device_name} batch {name} {mode}"), got, &images[at], mode);
                        let stages: Vec<&str> = got.timings_ms.0.iter().map(|(s, _)| s.as_str()).collect();
                        assert_eq!(
                            stages,
                            ["decode_image", "preprocess", "clip_image", "retrieval", "parse", "concepts", "mapping", "generate"],
                            "{device_name} {mode} {name}: timings"
                        );
                        good += 1;
                    }
                    None => {
                        let err = result.as_ref().err().unwrap_or_else(|| panic!("{device_name} {mode} {name}: a bad file was captioned"));
                        assert!(err.to_string().contains(name.as_str()), "{device_name} {mode}: error does not name the image: {err}");
                    }
                }
            }
            assert_eq!(good, 2 * images.len(), "{device_name} {mode}: every good image captioned");
            // No image, and only bad ones: results, not panics.
            assert!(captioner.caption_batch(&[]).unwrap().is_empty());
            let bad = captioner.caption_batch(&[(&truncated[..], "a.png"), (&[], "b.png")]).unwrap();
            assert!(bad.len() == 2 && bad.iter().all(Result::is_err), "{device_name} {mode}: bad-only batch");
        }
    }
}
