//! CLIP (HF `CLIPModel`, e.g. `openai/clip-vit-base-patch32`): a ViT vision tower and a causal
//! text tower, both pre-LN with QuickGELU, each followed by a bias-free projection.
//!
//! Checkpoint keys: `vision_model.{embeddings.{class_embedding,patch_embedding,position_embedding},
//! pre_layrnorm, encoder.layers.{i}.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2,
//! layer_norm2}, post_layernorm}`, `text_model.{embeddings.{token,position}_embedding, encoder...,
//! final_layer_norm}`, `visual_projection`, `text_projection`.

use burn::prelude::*;
use serde::Deserialize;

use super::{attention, causal_mask, merge_heads, padding_mask, split_heads, Activation, LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::weights::Weights;

#[derive(Clone, Debug, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d49408")]
    pub vocab_size: usize,
    #[serde(default = "d512")]
    pub hidden_size: usize,
    #[serde(default = "d2048")]
    pub intermediate_size: usize,
    #[serde(default = "d8")]
    pub num_attention_heads: usize,
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d77")]
    pub max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: Activation,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d768")]
    pub hidden_size: usize,
    #[serde(default = "d3072")]
    pub intermediate_size: usize,
    #[serde(default = "d12")]
    pub num_attention_heads: usize,
    #[serde(default = "d12")]
    pub num_hidden_layers: usize,
    #[serde(default = "d224")]
    pub image_size: usize,
    #[serde(default = "d32")]
    pub patch_size: usize,
    #[serde(default = "d3")]
    pub num_channels: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: Activation,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "d512")]
    pub projection_dim: usize,
}

fn d3() -> usize { 3 }
fn d8() -> usize { 8 }
fn d12() -> usize { 12 }
fn d32() -> usize { 32 }
fn d77() -> usize { 77 }
fn d224() -> usize { 224 }
fn d512() -> usize { 512 }
fn d768() -> usize { 768 }
fn d2048() -> usize { 2048 }
fn d3072() -> usize { 3072 }
fn d49408() -> usize { 49408 }
fn quick_gelu() -> Activation { Activation::QuickGelu }
fn eps() -> f64 { 1e-5 }

impl ClipConfig {
    pub fn from_json(model: &str, bytes: &[u8]) -> Result<Self> {
        let cfg: Self = super::parse_config(model, bytes)?;
        let bad = |message: String| Error::Config { model: model.into(), file: "config.json".into(), message };
        if cfg.vision_config.patch_size == 0 || cfg.vision_config.image_size % cfg.vision_config.patch_size != 0 {
            return Err(bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                cfg.vision_config.image_size, cfg.vision_config.patch_size
            )));
        }
        for (name, d, h) in [
            ("text", cfg.text_config.hidden_size, cfg.text_config.num_attention_heads),
            ("vision", cfg.vision_config.hidden_size, cfg.vision_config.num_attention_heads),
        ] {
            if h == 0 || d % h != 0 {
                return Err(bad(format!("{name} hidden_size {d} is not divisible by {h} heads")));
            }
        }
        Ok(cfg)
    }
}

/// One pre-LN encoder layer, shared by both towers.
#[derive(Clone, Debug)]
struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
    heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn load(w: &Weights, d: usize, inner: usize, heads: usize, act: Activation, eps: f64) -> Result<Self> {
        let a = w.pp("self_attn");
        Ok(Self {
            q_proj: Linear::load(&a.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(&a.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(&a.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(&a.pp("out_proj"), d, d, true)?,
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), d, eps)?,
            fc1: Linear::load(&w.pp("mlp").pp("fc1"), d, inner, true)?,
            fc2: Linear::load(&w.pp("mlp").pp("fc2"), inner, d, true)?,
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), d, eps)?,
            heads,
            act,
        })
    }

    fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4>>) -> Tensor<3> {
        let h = self.layer_norm1.forward(x.clone());
        let d = h.dims()[2];
        let scale = 1.0 / ((d / self.heads) as f64).sqrt();
        let q = split_heads(self.q_proj.forward(h.clone()), self.heads);
        let k = split_heads(self.k_proj.forward(h.clone()), self.heads);
        let v = split_heads(self.v_proj.forward(h), self.heads);
        let x = x + self.out_proj.forward(merge_heads(attention(q, k, v, scale, mask)));
        let h = self.fc2.forward(self.fc1.forward_act(self.layer_norm2.forward(x.clone()), self.act));
        x + h
    }
}

fn load_layers(w: &Weights, n: usize, d: usize, inner: usize, heads: usize, act: Activation, eps: f64) -> Result<Vec<EncoderLayer>> {
    (0..n).map(|i| EncoderLayer::load(&w.pp("encoder").pp("layers").pp(i), d, inner, heads, act, eps)).collect()
}

#[derive(Clone, Debug)]
pub struct ClipVision {
    class_embedding: Tensor<1>,
    /// Patch convolution as a matrix `[channels*patch*patch, d]` (stride = kernel = patch).
    patch_embedding: Tensor<2>,
    position_embedding: Tensor<2>,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    patch: usize,
    channels: usize,
    image_size: usize,
}

impl ClipVision {
    fn load(w: &Weights, c: &ClipVisionConfig) -> Result<Self> {
        let d = c.hidden_size;
        let e = w.pp("embeddings");
        let p = c.patch_size;
        let positions = (c.image_size / p).pow(2) + 1;
        let patch = e.get::<4>("patch_embedding.weight", [d, c.num_channels, p, p])?;
        e.ignore("position_ids");
        Ok(Self {
            class_embedding: e.get::<1>("class_embedding", [d])?,
            patch_embedding: patch.reshape([d, c.num_channels * p * p]).transpose(),
            position_embedding: e.get::<2>("position_embedding.weight", [positions, d])?,
            pre_layrnorm: LayerNorm::load(&w.pp("pre_layrnorm"), d, c.layer_norm_eps)?,
            layers: load_layers(w, c.num_hidden_layers, d, c.intermediate_size, c.num_attention_heads, c.hidden_act, c.layer_norm_eps)?,
            post_layernorm: LayerNorm::load(&w.pp("post_layernorm"), d, c.layer_norm_eps)?,
            patch: p,
            channels: c.num_channels,
            image_size: c.image_size,
        })
    }

    /// `pixel_values` `[batch, channels, size, size]` → pooled output (class token after
    /// `post_layernorm`) `[batch, d]`.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        let [b, c, hgt, wid] = pixel_values.dims();
        if c != self.channels || hgt != self.image_size || wid != self.image_size {
            return Err(Error::InvalidInput(format!(
                "CLIP vision expects [batch, {}, {}, {}], got {:?}",
                self.channels,
                self.image_size,
                self.image_size,
                [b, c, hgt, wid]
            )));
        }
        let p = self.patch;
        let g = hgt / p;
        // Unfold non-overlapping patches: [b, c, g, p, g, p] → [b, g, g, c, p, p].
        let patches = pixel_values
            .reshape([b, c, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * g * g, c * p * p]);
        let d = self.class_embedding.dims()[0];
        let patches = patches.matmul(self.patch_embedding.clone()).reshape([b, g * g, d]);
        let class = self.class_embedding.clone().reshape([1, 1, d]).repeat_dim(0, b);
        let x = Tensor::cat(vec![class, patches], 1) + self.position_embedding.clone().unsqueeze::<3>();
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x, None);
        }
        Ok(self.post_layernorm.forward(x.narrow(1, 0, 1).reshape([b, d])))
    }
}

#[derive(Clone, Debug)]
pub struct ClipText {
    token_embedding: Tensor<2>,
    position_embedding: Tensor<2>,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipText {
    fn load(w: &Weights, c: &ClipTextConfig) -> Result<Self> {
        let d = c.hidden_size;
        let e = w.pp("embeddings");
        e.ignore("position_ids");
        Ok(Self {
            token_embedding: e.get::<2>("token_embedding.weight", [c.vocab_size, d])?,
            position_embedding: e.get::<2>("position_embedding.weight", [c.max_position_embeddings, d])?,
            layers: load_layers(w, c.num_hidden_layers, d, c.intermediate_size, c.num_attention_heads, c.hidden_act, c.layer_norm_eps)?,
            final_layer_norm: LayerNorm::load(&w.pp("final_layer_norm"), d, c.layer_norm_eps)?,
        })
    }

    /// Token ids (rows padded to one length) with their attention masks → pooled output `[batch, d]`
    /// taken at each row's first occurrence of its largest id (the EOS token, as HF does).
    pub fn forward(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u32>]) -> Result<Tensor<2>> {
        let device = self.token_embedding.device();
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        let max_positions = self.position_embedding.dims()[0];
        if b == 0 || t == 0 || t > max_positions || ids.iter().any(|r| r.len() != t) {
            return Err(Error::InvalidInput(format!(
                "CLIP text expects a non-empty batch of rows of equal length ≤ {max_positions}"
            )));
        }
        let vocab = self.token_embedding.dims()[0];
        if let Some(bad) = ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidInput(format!("token id {bad} is outside the vocabulary ({vocab})")));
        }
        let d = self.token_embedding.dims()[1];
        let x = super::embed(&self.token_embedding, super::ids_tensor(ids, &device))
            + self.position_embedding.clone().narrow(0, 0, t).unsqueeze::<3>();
        let mask = causal_mask(t, 0, &device) + padding_mask(attention_mask, &device);
        let mut x = x;
        for layer in &self.layers {
            x = layer.forward(x, Some(mask.clone()));
        }
        let x = self.final_layer_norm.forward(x);
        let eos: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(row, r)| {
                let max = r.iter().copied().max().unwrap_or(0);
                (row * t + r.iter().position(|&id| id == max).unwrap_or(0)) as i64
            })
            .collect();
        let rows = Tensor::<1, Int>::from_ints(eos.as_slice(), &device);
        Ok(x.reshape([b * t, d]).select(0, rows))
    }
}

#[derive(Clone, Debug)]
pub struct Clip {
    pub config: ClipConfig,
    pub vision_model: ClipVision,
    pub text_model: ClipText,
    visual_projection: Linear,
    text_projection: Linear,
}

impl Clip {
    pub fn load(w: &Weights, config: &ClipConfig) -> Result<Self> {
        let p = config.projection_dim;
        w.ignore("logit_scale");
        Ok(Self {
            vision_model: ClipVision::load(&w.pp("vision_model"), &config.vision_config)?,
            text_model: ClipText::load(&w.pp("text_model"), &config.text_config)?,
            visual_projection: Linear::load(&w.pp("visual_projection"), config.vision_config.hidden_size, p, false)?,
            text_projection: Linear::load(&w.pp("text_projection"), config.text_config.hidden_size, p, false)?,
            config: config.clone(),
        })
    }

    /// `get_image_features`: projected, unnormalised image embeddings `[batch, projection_dim]`.
    pub fn image_features(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        Ok(self.visual_projection.forward(self.vision_model.forward(pixel_values)?))
    }

    /// `get_text_features`: projected, unnormalised text embeddings `[batch, projection_dim]`.
    pub fn text_features(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u32>]) -> Result<Tensor<2>> {
        Ok(self.text_projection.forward(self.text_model.forward(ids, attention_mask)?))
    }

    pub fn image_size(&self) -> usize {
        self.config.vision_config.image_size
    }
}
