//! BERT (HF `BertModel`, e.g. all-MiniLM-L6-v2) as sentence-transformers uses it: post-LN layers,
//! erf GELU, attention-masked mean pooling and L2 normalisation
//! (`SentenceTransformer.encode(..., normalize_embeddings=True)`).
//!
//! Checkpoint keys (optionally under `bert.`): `embeddings.{word,position,token_type}_embeddings`,
//! `embeddings.LayerNorm`, `encoder.layer.{i}.{attention.self.{query,key,value},
//! attention.output.{dense,LayerNorm}, intermediate.dense, output.{dense,LayerNorm}}`.

use burn::prelude::*;
use serde::Deserialize;

use super::{attention, merge_heads, padding_mask, split_heads, Activation, LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::weights::Weights;

#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: Activation,
    #[serde(default = "d512")]
    pub max_position_embeddings: usize,
    #[serde(default = "d2")]
    pub type_vocab_size: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn gelu() -> Activation { Activation::Gelu }
fn d512() -> usize { 512 }
fn d2() -> usize { 2 }
fn eps() -> f64 { 1e-12 }

impl BertConfig {
    pub fn from_json(model: &str, bytes: &[u8]) -> Result<Self> {
        let cfg: Self = super::parse_config(model, bytes)?;
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(Error::Config {
                model: model.into(),
                file: "config.json".into(),
                message: format!("hidden_size {} is not divisible by {} heads", cfg.hidden_size, cfg.num_attention_heads),
            });
        }
        Ok(cfg)
    }
}

#[derive(Clone, Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

#[derive(Clone, Debug)]
pub struct Bert {
    pub config: BertConfig,
    word_embeddings: Tensor<2>,
    position_embeddings: Tensor<2>,
    token_type_embeddings: Tensor<2>,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    pub fn load(w: &Weights, config: &BertConfig) -> Result<Self> {
        let w = if !w.contains("embeddings.word_embeddings.weight") && w.contains("bert.embeddings.word_embeddings.weight") {
            w.pp("bert")
        } else {
            w.clone()
        };
        let d = config.hidden_size;
        let eps = config.layer_norm_eps;
        let e = w.pp("embeddings");
        e.ignore("position_ids");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = w.pp("encoder").pp("layer").pp(i);
                let a = l.pp("attention");
                Ok(Layer {
                    query: Linear::load(&a.pp("self").pp("query"), d, d, true)?,
                    key: Linear::load(&a.pp("self").pp("key"), d, d, true)?,
                    value: Linear::load(&a.pp("self").pp("value"), d, d, true)?,
                    attention_output: Linear::load(&a.pp("output").pp("dense"), d, d, true)?,
                    attention_norm: LayerNorm::load(&a.pp("output").pp("LayerNorm"), d, eps)?,
                    intermediate: Linear::load(&l.pp("intermediate").pp("dense"), d, config.intermediate_size, true)?,
                    output: Linear::load(&l.pp("output").pp("dense"), config.intermediate_size, d, true)?,
                    output_norm: LayerNorm::load(&l.pp("output").pp("LayerNorm"), d, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings: e.get::<2>("word_embeddings.weight", [config.vocab_size, d])?,
            position_embeddings: e.get::<2>("position_embeddings.weight", [config.max_position_embeddings, d])?,
            token_type_embeddings: e.get::<2>("token_type_embeddings.weight", [config.type_vocab_size, d])?,
            embeddings_norm: LayerNorm::load(&e.pp("LayerNorm"), d, eps)?,
            layers,
            config: config.clone(),
        })
    }

    /// Last hidden states `[batch, seq, d]` for padded ids, their masks and token type ids.
    pub fn forward(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u32>], token_type_ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        let device = self.word_embeddings.device();
        let t = ids.first().map_or(0, Vec::len);
        if ids.is_empty() || t == 0 || t > self.config.max_position_embeddings || ids.iter().any(|r| r.len() != t) {
            return Err(Error::InvalidInput(format!(
                "BERT expects a non-empty batch of rows of equal length ≤ {}",
                self.config.max_position_embeddings
            )));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::InvalidInput(format!("token id {bad} is outside the vocabulary ({})", self.config.vocab_size)));
        }
        let x = super::embed(&self.word_embeddings, super::ids_tensor(ids, &device))
            + super::embed(&self.token_type_embeddings, super::ids_tensor(token_type_ids, &device))
            + self.position_embeddings.clone().narrow(0, 0, t).unsqueeze::<3>();
        let mut x = self.embeddings_norm.forward(x);
        let mask = padding_mask(attention_mask, &device);
        let heads = self.config.num_attention_heads;
        let scale = 1.0 / ((self.config.hidden_size / heads) as f64).sqrt();
        for l in &self.layers {
            let q = split_heads(l.query.forward(x.clone()), heads);
            let k = split_heads(l.key.forward(x.clone()), heads);
            let v = split_heads(l.value.forward(x.clone()), heads);
            let a = l.attention_output.forward(merge_heads(attention(q, k, v, scale, Some(mask.clone()))));
            x = l.attention_norm.forward(a + x);
            let h = l.output.forward(l.intermediate.forward_act(x.clone(), self.config.hidden_act));
            x = l.output_norm.forward(h + x);
        }
        Ok(x)
    }

    /// Attention-masked mean pooling, then L2 normalisation: `[batch, d]`.
    pub fn sentence_embeddings(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u32>]) -> Result<Tensor<2>> {
        let device = self.word_embeddings.device();
        let token_types: Vec<Vec<u32>> = ids.iter().map(|r| vec![0; r.len()]).collect();
        let hidden = self.forward(ids, attention_mask, &token_types)?;
        let [b, t, _] = hidden.dims();
        let mask_values: Vec<f32> = attention_mask.iter().flatten().map(|&m| m as f32).collect();
        let mask = Tensor::<1>::from_floats(mask_values.as_slice(), &device).reshape([b, t, 1]);
        let summed = (hidden * mask.clone()).sum_dim(1).reshape([b, self.config.hidden_size]);
        let counts = mask.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
        let mean = summed / counts;
        let norm = mean.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
        Ok(mean / norm)
    }
}
