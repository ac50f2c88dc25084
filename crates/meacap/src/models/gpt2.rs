//! GPT-2 (HF `GPT2LMHeadModel`): learned positions, pre-LN blocks, tanh-GELU, causal attention
//! with a key/value cache, `lm_head` tied to `wte`.
//!
//! Checkpoint keys: `transformer.wte.weight`, `transformer.wpe.weight`,
//! `transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}`, `transformer.ln_f`.
//! The projections are HF `Conv1D`s whose weights are already `[in, out]`.

use burn::prelude::*;
use serde::Deserialize;

use super::{attention, causal_mask, merge_heads, split_heads, Activation, LayerNorm, Linear};
use crate::error::{Error, Result};
use crate::weights::Weights;

#[derive(Clone, Debug, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    #[serde(default = "default_positions")]
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
}

fn default_positions() -> usize {
    1024
}
fn default_activation() -> Activation {
    Activation::GeluNew
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Gpt2Config {
    pub fn from_json(model: &str, bytes: &[u8]) -> Result<Self> {
        let cfg: Self = super::parse_config(model, bytes)?;
        if cfg.n_head == 0 || cfg.n_embd % cfg.n_head != 0 {
            return Err(Error::Config {
                model: model.into(),
                file: "config.json".into(),
                message: format!("n_embd {} is not divisible by n_head {}", cfg.n_embd, cfg.n_head),
            });
        }
        Ok(cfg)
    }
}

#[derive(Clone, Debug)]
struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
    scale: f64,
}

#[derive(Clone, Debug)]
struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

#[derive(Clone, Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

/// Per-layer keys and values `[batch, heads, seq, head_dim]` of everything seen so far.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<(Tensor<4>, Tensor<4>)>,
}

impl KvCache {
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reorders (and possibly repeats) the batch rows: beam search's `generated[src]`.
    pub fn select(&mut self, rows: Tensor<1, Int>) {
        super::select_cached_rows(&mut self.layers, rows);
    }
}

#[derive(Clone, Debug)]
pub struct Gpt2 {
    pub config: Gpt2Config,
    /// The output projection, tied to the token embeddings `wte [vocab, d]` (which it looks up).
    wte: Linear,
    wpe: Tensor<2>,
    h: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt2 {
    /// Loads from weights scoped at the `transformer` level's parent, i.e. keys
    /// `transformer.wte.weight` etc. under `w` (for ViECap: `w = root.pp("gpt")`).
    /// The causal-mask buffers `attn.bias`/`attn.masked_bias` are ignored.
    pub fn load(w: &Weights, config: &Gpt2Config) -> Result<Self> {
        let t = w.pp("transformer");
        let d = config.n_embd;
        let inner = config.n_inner.unwrap_or(4 * d);
        let eps = config.layer_norm_epsilon;
        let head_dim = d / config.n_head;
        let scale = if config.scale_attn_weights { 1.0 / (head_dim as f64).sqrt() } else { 1.0 };
        let mut h = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let b = t.pp("h").pp(i);
            b.pp("attn").ignore("bias");
            b.pp("attn").ignore("masked_bias");
            h.push(Block {
                ln_1: LayerNorm::load(&b.pp("ln_1"), d, eps)?,
                attn: Attention {
                    c_attn: Linear::load_conv1d(&b.pp("attn").pp("c_attn"), d, 3 * d)?,
                    c_proj: Linear::load_conv1d(&b.pp("attn").pp("c_proj"), d, d)?,
                    n_head: config.n_head,
                    scale,
                },
                ln_2: LayerNorm::load(&b.pp("ln_2"), d, eps)?,
                mlp: Mlp {
                    c_fc: Linear::load_conv1d(&b.pp("mlp").pp("c_fc"), d, inner)?,
                    c_proj: Linear::load_conv1d(&b.pp("mlp").pp("c_proj"), inner, d)?,
                    act: config.activation_function,
                },
            });
        }
        // lm_head is tied to wte; a checkpoint may carry it as a copy.
        w.ignore("lm_head.weight");
        Ok(Self {
            wte: Linear::load(&t.pp("wte"), d, config.vocab_size, false)?,
            wpe: t.get::<2>("wpe.weight", [config.n_positions, d])?,
            h,
            ln_f: LayerNorm::load(&t.pp("ln_f"), d, eps)?,
            config: config.clone(),
        })
    }

    pub fn device(&self) -> Device {
        self.wpe.device()
    }

    /// Token embeddings for ids: `[batch, seq]` → `[batch, seq, d]`.
    pub fn embed_tokens(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.wte.tied_embedding(ids)
    }

    /// Runs `inputs_embeds` `[batch, seq, d]` after the cached positions (positions continue from
    /// `cache.len()`), extends the cache, and returns the final hidden states `[batch, seq, d]`.
    pub fn forward(&self, inputs_embeds: Tensor<3>, cache: &mut KvCache) -> Result<Tensor<3>> {
        let rows = inputs_embeds.dims()[0];
        self.forward_groups(inputs_embeds, std::slice::from_mut(cache), &[rows])
    }

    /// [`Self::forward`] for independent sequences stacked along the batch: group `g` is the next
    /// `group_rows[g]` rows of `inputs_embeds` and continues `caches[g]`, whose length may differ
    /// from the other groups'. The dense layers run once over every row (on a CPU a decoding step
    /// streams each weight matrix once for all the groups); attention runs per group over its own
    /// cache, so no padding or mask enters and each group computes what it computes alone.
    pub fn forward_groups(&self, inputs_embeds: Tensor<3>, caches: &mut [KvCache], group_rows: &[usize]) -> Result<Tensor<3>> {
        let [rows, seq, d_model] = inputs_embeds.dims();
        if caches.len() != group_rows.len() || group_rows.iter().sum::<usize>() != rows || group_rows.contains(&0) {
            return Err(Error::InvalidInput(format!(
                "GPT-2: {} caches and groups of {group_rows:?} rows for a batch of {rows}",
                caches.len()
            )));
        }
        let pasts: Vec<usize> = caches.iter().map(KvCache::len).collect();
        for &past in &pasts {
            if past + seq > self.config.n_positions {
                return Err(Error::InvalidInput(format!(
                    "GPT-2 sequence of {} positions exceeds n_positions {}",
                    past + seq,
                    self.config.n_positions
                )));
            }
        }
        let device = inputs_embeds.device();
        let positions = if pasts.iter().all(|&p| p == pasts[0]) {
            self.wpe.clone().narrow(0, pasts[0], seq).unsqueeze::<3>()
        } else {
            let ids: Vec<i64> = pasts
                .iter()
                .zip(group_rows)
                .flat_map(|(&past, &n)| (0..n).flat_map(move |_| (past..past + seq).map(|p| p as i64)))
                .collect();
            let ids = Tensor::<1, Int>::from_ints(ids.as_slice(), &device);
            self.wpe.clone().select(0, ids).reshape([rows, seq, d_model])
        };
        let mut x = inputs_embeds + positions;
        let masks: Vec<Option<Tensor<4>>> = pasts.iter().map(|&past| (seq > 1).then(|| causal_mask(seq, past, &device))).collect();
        let starts: Vec<usize> = group_rows.iter().scan(0, |at, &n| { let s = *at; *at += n; Some(s) }).collect();
        for (i, block) in self.h.iter().enumerate() {
            let a = &block.attn;
            let qkv = a.c_attn.forward(block.ln_1.forward(x.clone()));
            let d = qkv.dims()[2] / 3;
            let mut outs = Vec::with_capacity(caches.len());
            for (g, cache) in caches.iter_mut().enumerate() {
                let qkv = if group_rows.len() == 1 { qkv.clone() } else { qkv.clone().narrow(0, starts[g], group_rows[g]) };
                let q = split_heads(qkv.clone().narrow(2, 0, d), a.n_head);
                let mut k = split_heads(qkv.clone().narrow(2, d, d), a.n_head);
                let mut v = split_heads(qkv.narrow(2, 2 * d, d), a.n_head);
                if cache.layers.len() <= i {
                    cache.layers.push((super::cached(k.clone()), super::cached(v.clone())));
                } else {
                    let (ck, cv) = &cache.layers[i];
                    k = Tensor::cat(vec![ck.clone(), k], 2);
                    v = Tensor::cat(vec![cv.clone(), v], 2);
                    cache.layers[i] = (k.clone(), v.clone());
                }
                outs.push(merge_heads(attention(q, k, v, a.scale, masks[g].clone())));
            }
            let out = if outs.len() == 1 { outs.pop().expect("one group") } else { Tensor::cat(outs, 0) };
            x = x + a.c_proj.forward(out);
            let m = &block.mlp;
            x = x.clone() + m.c_proj.forward(m.c_fc.forward_act(block.ln_2.forward(x), m.act));
        }
        Ok(self.ln_f.forward(x))
    }

    /// Vocabulary logits for hidden states `[rows, d]` → `[rows, vocab]` (tied `lm_head`).
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.wte.forward(hidden)
    }

    /// Logits of the last position only: `[batch, seq, d]` → `[batch, vocab]`.
    pub fn last_logits(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [b, t, d] = hidden.dims();
        self.logits(hidden.narrow(1, t - 1, 1).reshape([b, d]))
    }
}
