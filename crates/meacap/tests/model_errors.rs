//! Bad model input gives typed errors that name the model, file and tensor — never a panic.

mod common;

use burn::prelude::*;
use common::*;
use meacap::models::bert::BertConfig;
use meacap::models::gpt2::Gpt2Config;
use meacap::models::viecap::ClipCaptionModel;
use meacap::weights::pickle::PickleCheckpoint;
use meacap::weights::{TensorSource, TensorView, Weights};
use meacap::{Error, MemFiles, ModelFiles};

/// A checkpoint with some keys hidden and some renamed copies added.
struct Edited {
    inner: PickleCheckpoint,
    hide: Vec<&'static str>,
    extra: Vec<(&'static str, &'static str)>,
}

impl TensorSource for Edited {
    fn file(&self) -> &str {
        self.inner.file()
    }
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.names().into_iter().filter(|n| !self.hide.contains(&n.as_str())).collect();
        names.extend(self.extra.iter().map(|(n, _)| n.to_string()));
        names
    }
    fn view(&self, name: &str) -> Option<TensorView> {
        if self.hide.contains(&name) {
            return None;
        }
        let source = self.extra.iter().find(|(n, _)| *n == name).map_or(name, |(_, from)| from);
        self.inner.view(source)
    }
}

fn viecap_source() -> PickleCheckpoint {
    PickleCheckpoint::parse("coco_prefix-tiny.pt".into(), dir("viecap").require("coco_prefix-tiny.pt").unwrap()).unwrap()
}

fn gpt_config() -> Gpt2Config {
    Gpt2Config::from_json("gpt2", dir("gpt2").require("config.json").unwrap().as_ref().as_ref()).unwrap()
}

#[test]
fn viecap_strict_load_lists_every_missing_and_unexpected_key() {
    let device = Device::flex();
    let edited = Edited {
        inner: viecap_source(),
        hide: vec!["mapping_network.transformer.layers.1.mlp.fc2.bias", "gpt.transformer.h.0.ln_2.weight"],
        extra: vec![("mapping_network.transformer.layers.0.attn.to_kv.weight", "mapping_network.transformer.layers.0.attn.to_queries.weight")],
    };
    let w = Weights::new(vec![Box::new(edited)], &device);
    let err = ClipCaptionModel::load(&w, &gpt_config(), 8).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::StrictLoad { .. }), "{message}");
    for key in ["mapping_network.transformer.layers.1.mlp.fc2.bias", "gpt.transformer.h.0.ln_2.weight", "to_kv.weight", "coco_prefix-tiny.pt"] {
        assert!(message.contains(key), "`{key}` not named in: {message}");
    }
}

#[test]
fn viecap_wrong_gpt2_config_is_reported() {
    let device = Device::flex();
    let w = Weights::new(vec![Box::new(viecap_source())], &device);
    let mut config = gpt_config();
    config.n_layer += 1;
    let err = ClipCaptionModel::load(&w, &config, 8).unwrap_err();
    assert!(matches!(err, Error::StrictLoad { .. }), "{err}");
    assert!(err.to_string().contains("n_layer"), "{err}");
    let mut config = gpt_config();
    config.n_embd = 48;
    config.n_head = 4;
    let err = ClipCaptionModel::load(&w, &config, 8).unwrap_err();
    assert!(err.to_string().contains("n_embd"), "{err}");
}

#[test]
fn malformed_config_json_names_model_and_file() {
    for bad in [&b"{not json"[..], b"{}", b"{\"hidden_size\": \"big\"}", b""] {
        let err = BertConfig::from_json("sbert (somewhere)", bad).unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("sbert (somewhere)") && message.contains("config.json"), "{message}");
    }
    let err = Gpt2Config::from_json("gpt2", br#"{"vocab_size": 10, "n_embd": 30, "n_layer": 1, "n_head": 4}"#).unwrap_err();
    assert!(err.to_string().contains("not divisible"), "{err}");
}

#[test]
fn missing_weight_tokenizer_and_config_files_are_named() {
    let device = Device::flex();
    let empty = MemFiles::new("parser (empty folder)");
    let err = Weights::from_model_files(&empty, &device).err().expect("no weights");
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let err = meacap::tokenize::TextTokenizer::from_tokenizer_json(&empty).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json") && err.to_string().contains("parser (empty folder)"), "{err}");
    let err = meacap::pipeline::SentenceEncoder::load(&empty, &device).err().expect("no config");
    assert!(err.to_string().contains("config.json"), "{err}");
    // A broken tokenizer.json is an error, not a panic.
    let broken = MemFiles::new("gpt2 (broken)").with("tokenizer.json", b"{\"model\": 3}".to_vec());
    assert!(matches!(meacap::tokenize::TextTokenizer::gpt2(&broken).unwrap_err(), Error::Tokenizer { .. }));
}

#[test]
fn a_tensor_of_the_wrong_shape_names_file_and_tensor() {
    let device = Device::flex();
    let files = dir("bert");
    let mut config = BertConfig::from_json("bert", files.require("config.json").unwrap().as_ref().as_ref()).unwrap();
    config.intermediate_size += 1;
    let w = Weights::from_model_files(&files, &device).unwrap();
    let err = meacap::models::bert::Bert::load(&w, &config).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Tensor { .. }), "{message}");
    assert!(message.contains("model.safetensors") && message.contains("intermediate.dense.weight"), "{message}");
}
