//! ViECap's `ClipCaptionModel`: a mapping network that turns a normalised CLIP image feature into
//! `continuous_length` soft-prompt vectors, and the GPT-2 it fine-tuned.
//!
//! The checkpoint (`coco_prefix-0014.pt`, `torch.save(model.state_dict())`) holds
//! `mapping_network.*` and `gpt.*`. It is loaded strictly: every parameter must be present with
//! the shape the model expects, and the only keys allowed to be extra are GPT-2's causal-mask
//! buffers and its tied `lm_head` copy (the original's `strict=False` hid misnamed keys).

use burn::prelude::*;
use burn::tensor::activation;

use super::gpt2::{Gpt2, Gpt2Config};
use super::{attention, LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Sizes of the mapping network. All but `num_heads` are read off the checkpoint; `num_heads` is a
/// constructor argument of the original (`ClipCaptionModel(..., num_heads=8)`) and not stored.
#[derive(Clone, Debug)]
pub struct MappingConfig {
    pub clip_hidden_size: usize,
    pub clip_project_length: usize,
    pub prefix_length: usize,
    pub d_model: usize,
    pub num_layers: usize,
    pub num_heads: usize,
}

impl MappingConfig {
    /// Infers the sizes from the checkpoint's tensors.
    pub fn infer(w: &Weights, num_heads: usize) -> Result<Self> {
        let file = w.file_names();
        let shape = |name: &str| {
            w.shape(name).ok_or_else(|| Error::StrictLoad {
                file: file.clone(),
                message: format!("tensor `{}.{name}` is missing", w.prefix()),
            })
        };
        let prefix = shape("prefix_const")?;
        let linear = shape("linear.weight")?;
        if prefix.len() != 2 || linear.len() != 2 || prefix[1] == 0 || linear[0] % prefix[1] != 0 {
            return Err(Error::StrictLoad {
                file,
                message: format!("mapping network shapes prefix_const {prefix:?}, linear.weight {linear:?} are inconsistent"),
            });
        }
        let d_model = prefix[1];
        let num_layers = (0..).take_while(|i| w.contains(&format!("transformer.layers.{i}.norm1.weight"))).count();
        if num_heads == 0 || d_model % num_heads != 0 {
            return Err(Error::InvalidInput(format!("mapping network: d_model {d_model} is not divisible by {num_heads} heads")));
        }
        Ok(Self {
            clip_hidden_size: linear[1],
            clip_project_length: linear[0] / d_model,
            prefix_length: prefix[0],
            d_model,
            num_layers,
            num_heads,
        })
    }
}

#[derive(Clone, Debug)]
struct MultiHeadAttention {
    to_queries: Linear,
    to_keys_values: Linear,
    project: Linear,
    num_heads: usize,
}

impl MultiHeadAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let q = self.to_queries.forward(x.clone()).reshape([b, n, h, hd]).swap_dims(1, 2);
        // `to_keys_values` output is laid out as (2, heads, head_dim): keys first, then values.
        let kv = self.to_keys_values.forward(x);
        let k = kv.clone().narrow(2, 0, d).reshape([b, n, h, hd]).swap_dims(1, 2);
        let v = kv.narrow(2, d, d).reshape([b, n, h, hd]).swap_dims(1, 2);
        let out = attention(q, k, v, (hd as f64).powf(-0.5), None);
        self.project.forward(out.swap_dims(1, 2).reshape([b, n, d]))
    }
}

#[derive(Clone, Debug)]
struct TransformerLayer {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

#[derive(Clone, Debug)]
pub struct MappingNetwork {
    pub config: MappingConfig,
    linear: Linear,
    prefix_const: Tensor<2>,
    layers: Vec<TransformerLayer>,
}

impl MappingNetwork {
    pub fn load(w: &Weights, config: &MappingConfig) -> Result<Self> {
        let d = config.d_model;
        let eps = 1e-5; // torch.nn.LayerNorm default
        let layers = (0..config.num_layers)
            .map(|i| {
                let l = w.pp("transformer").pp("layers").pp(i);
                let a = l.pp("attn");
                let hidden = l.pp("mlp").pp("fc1").shape("weight").map_or(2 * d, |s| s[0]);
                Ok(TransformerLayer {
                    norm1: LayerNorm::load(&l.pp("norm1"), d, eps)?,
                    attn: MultiHeadAttention {
                        to_queries: Linear::load(&a.pp("to_queries"), d, d, false)?,
                        to_keys_values: Linear::load(&a.pp("to_keys_values"), d, 2 * d, false)?,
                        project: Linear::load(&a.pp("project"), d, d, true)?,
                        num_heads: config.num_heads,
                    },
                    norm2: LayerNorm::load(&l.pp("norm2"), d, eps)?,
                    fc1: Linear::load(&l.pp("mlp").pp("fc1"), d, hidden, true)?,
                    fc2: Linear::load(&l.pp("mlp").pp("fc2"), hidden, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            linear: Linear::load(&w.pp("linear"), config.clip_hidden_size, config.clip_project_length * d, true)?,
            prefix_const: w.get::<2>("prefix_const", [config.prefix_length, d])?,
            layers,
            config: config.clone(),
        })
    }

    /// Normalised CLIP features `[batch, clip_hidden]` → soft prompt `[batch, prefix_length, d]`.
    pub fn forward(&self, clip_features: Tensor<2>) -> Tensor<3> {
        let b = clip_features.dims()[0];
        let c = &self.config;
        let x = self.linear.forward(clip_features).reshape([b, c.clip_project_length, c.d_model]);
        let prefix = self.prefix_const.clone().unsqueeze::<3>().repeat_dim(0, b);
        let mut h = Tensor::cat(vec![x, prefix], 1);
        for layer in &self.layers {
            h = h.clone() + layer.attn.forward(layer.norm1.forward(h));
            h = h.clone() + layer.fc2.forward(activation::relu(layer.fc1.forward(layer.norm2.forward(h))));
        }
        h.narrow(1, c.clip_project_length, c.prefix_length)
    }
}

/// The ViECap caption model: mapping network + fine-tuned GPT-2.
#[derive(Clone, Debug)]
pub struct ClipCaptionModel {
    pub mapping_network: MappingNetwork,
    pub gpt: Gpt2,
}

impl ClipCaptionModel {
    /// Loads `mapping_network.*` and `gpt.*` strictly. `gpt_config` comes from the GPT-2 folder's
    /// `config.json` (head count is not in the weights); layer count and sizes are checked against it.
    pub fn load(w: &Weights, gpt_config: &Gpt2Config, mapping_heads: usize) -> Result<Self> {
        let w = &w.collecting();
        let mapping_config = MappingConfig::infer(&w.pp("mapping_network"), mapping_heads)?;
        let mapping_network = MappingNetwork::load(&w.pp("mapping_network"), &mapping_config)?;
        let layers = (0..).take_while(|i| w.contains(&format!("gpt.transformer.h.{i}.ln_1.weight"))).count();
        let file = w.file_names();
        if layers != gpt_config.n_layer {
            return Err(Error::StrictLoad {
                file,
                message: format!("the checkpoint has {layers} GPT-2 layers, config.json says n_layer = {}", gpt_config.n_layer),
            });
        }
        let gpt = Gpt2::load(&w.pp("gpt"), gpt_config)?;
        if mapping_config.d_model != gpt_config.n_embd {
            return Err(Error::StrictLoad {
                file,
                message: format!("mapping network d_model {} ≠ GPT-2 n_embd {}", mapping_config.d_model, gpt_config.n_embd),
            });
        }
        let problems = w.problems();
        let unused = w.unused();
        if !problems.is_empty() || !unused.is_empty() {
            let mut message = Vec::new();
            if !problems.is_empty() {
                message.push(format!("{} missing or misshapen: {}", problems.len(), problems.join("; ")));
            }
            if !unused.is_empty() {
                message.push(format!("{} unexpected keys: {}", unused.len(), unused.join(", ")));
            }
            return Err(Error::StrictLoad { file, message: message.join("; ") });
        }
        Ok(Self { mapping_network, gpt })
    }
}
