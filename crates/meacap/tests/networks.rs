//! Parity of each network with the PyTorch reference (transformers 4.26.1) on the tiny
//! random-weight fixtures of tests/reference/make_fixtures.py, on flex and on wgpu.
//! Tolerance: 1e-4 absolute on f32 hidden states, embeddings and logits; identical token ids.

mod common;

use burn::prelude::*;
use common::*;
use meacap::models::clip::{Clip, ClipConfig};
use meacap::models::gpt2::{Gpt2Config, KvCache};
use meacap::models::to_vec;
use meacap::models::viecap::ClipCaptionModel;
use meacap::weights::{pickle::PickleCheckpoint, Weights};
use meacap::ModelFiles;

const ATOL: f32 = 1e-4;

fn load_clip(device: &Device) -> Clip {
    let files = dir("clip");
    let config = ClipConfig::from_json("clip", files.require("config.json").unwrap().as_ref().as_ref()).unwrap();
    let w = Weights::from_model_files(&files, device).unwrap();
    Clip::load(&w, &config).unwrap()
}

fn load_viecap(device: &Device) -> ClipCaptionModel {
    let gpt_config = Gpt2Config::from_json("gpt2", dir("gpt2").require("config.json").unwrap().as_ref().as_ref()).unwrap();
    let pt = dir("viecap");
    let source = PickleCheckpoint::parse("coco_prefix-tiny.pt".into(), pt.require("coco_prefix-tiny.pt").unwrap()).unwrap();
    let w = Weights::new(vec![Box::new(source)], device);
    ClipCaptionModel::load(&w, &gpt_config, 8).unwrap()
}

#[test]
fn clip_image_and_text_features() {
    let exp = expected("clip.safetensors");
    let meta = json("clip.json");
    let input_ids = ids(&meta["input_ids"]);
    let mask = ids(&meta["attention_mask"]);
    for (name, device) in devices() {
        let clip = load_clip(&device);
        let pixels = tensor::<4>(&exp["pixel_values"], &device);
        let pooled = clip.vision_model.forward(pixels.clone()).unwrap();
        assert_close(&format!("{name} vision pooled"), &to_vec(pooled).unwrap(), &exp["vision_pooled"].1, ATOL);
        let image = clip.image_features(pixels).unwrap();
        assert_close(&format!("{name} image_embeds"), &to_vec(image).unwrap(), &exp["image_embeds"].1, ATOL);
        let text = clip.text_features(&input_ids, &mask).unwrap();
        assert_close(&format!("{name} text_embeds"), &to_vec(text).unwrap(), &exp["text_embeds"].1, ATOL);
    }
}

#[test]
fn gpt2_hidden_states_logits_and_cache() {
    let exp = expected("gpt2.safetensors");
    let meta = json("gpt2.json");
    for (name, device) in devices() {
        let model = load_viecap(&device);
        let gpt = &model.gpt;
        let embeds = tensor::<3>(&exp["inputs_embeds"], &device);
        let hidden = gpt.forward(embeds.clone(), &mut KvCache::default()).unwrap();
        assert_close(&format!("{name} last_hidden_state"), &to_vec(hidden.clone()).unwrap(), &exp["last_hidden_state"].1, ATOL);
        let [b, t, d] = hidden.dims();
        let logits = gpt.logits(hidden.reshape([b * t, d]));
        assert_close(&format!("{name} logits"), &to_vec(logits).unwrap(), &exp["logits"].1, ATOL);

        // The same positions fed one at a time through the cache give the same hidden states.
        let mut cache = KvCache::default();
        let mut steps = Vec::new();
        for i in 0..t {
            steps.push(gpt.forward(embeds.clone().narrow(1, i, 1), &mut cache).unwrap());
        }
        let stepped = Tensor::cat(steps, 1);
        assert_close(&format!("{name} cached hidden"), &to_vec(stepped).unwrap(), &exp["last_hidden_state"].1, ATOL);

        // Greedy continuation from each prefix: identical ids.
        let expected_ids = ids(&meta["greedy_ids"]);
        let steps = meta["greedy_steps"].as_u64().unwrap() as usize;
        let cfg = meacap::decode::SearchConfig { beam_width: 1, max_new_tokens: steps, stop_ids: vec![], ignore_stop: true };
        for (row, want) in expected_ids.iter().enumerate() {
            let got = meacap::decode::greedy_search(gpt, embeds.clone().narrow(0, row, 1), &cfg).unwrap();
            assert_eq!(&got.tokens, want, "{name} greedy ids row {row}");
        }
    }
}

#[test]
fn viecap_mapping_network() {
    let exp = expected("viecap.safetensors");
    for (name, device) in devices() {
        let model = load_viecap(&device);
        let out = model.mapping_network.forward(tensor::<2>(&exp["clip_features"], &device));
        assert_close(&format!("{name} mapping output"), &to_vec(out).unwrap(), &exp["mapping_output"].1, ATOL);
    }
}

#[test]
fn gpt2_tokenizer_matches_hf() {
    let meta = json("gpt2.json");
    let tok = meacap::tokenize::TextTokenizer::gpt2(&dir("gpt2")).unwrap();
    for case in meta["tokenizer_check"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text, false, None).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode_clean(&want, false).unwrap(), case["decoded"].as_str().unwrap(), "{text:?}");
    }
}
