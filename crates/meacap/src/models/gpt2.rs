//! GPT-2 (HF `GPT2LMHeadModel`): learned positions, pre-LN blocks, tanh-GELU, causal attention
//! with a key/value cache, `lm_head` tied to `wte`.
//!
//! Checkpoint keys: `transformer.wte.weight`, `transformer.wpe.weight`,
//! `transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}`, `transformer.ln_f`.
//! The projections are HF `Conv1D`s whose weights are already `[in, out]`.

use burn::prelude::*;
use serde::Deserialize;

use super::{attention, causal_mask, merge_heads, split_heads, Activation, LayerNorm, Linear};
use crate::attention::{Bias, KvRows};
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

/// Per-layer keys and values of everything seen so far: on GPUs `[batch, heads, seq, head_dim]`
/// tensors, on the CPU backend host rows that grow in place ([`KvRows`]).
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
}

#[derive(Clone, Debug)]
enum LayerKv {
    Device(Tensor<4>, Tensor<4>),
    /// The CPU backend's: keys and values in host rows that grow in place.
    Host(KvRows),
}

impl KvCache {
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(LayerKv::Device(k, _)) => k.dims()[2],
            Some(LayerKv::Host(kv)) => kv.len(),
            None => 0,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reorders (and possibly repeats) the batch rows: beam search's `generated[src]`.
    pub fn select(&mut self, rows: Tensor<1, Int>) {
        let mut host_rows: Option<Vec<usize>> = None;
        for layer in &mut self.layers {
            match layer {
                LayerKv::Device(k, v) => {
                    *k = k.clone().select(0, rows.clone());
                    *v = v.clone().select(0, rows.clone());
                }
                LayerKv::Host(kv) => {
                    // Rows come from beam search's top-k over this cache's rows: in range.
                    kv.select(host_rows.get_or_insert_with(|| super::host_indices(rows.clone())));
                }
            }
        }
    }
}

/// Causal attention of `seq` new positions per row over the host caches, after appending their
/// keys and values: `qkv [rows, seq, 3 d]` (c_attn's output) → `[rows, seq, d]`, the groups'
/// rows one after another. `None` (burn's ops instead) unless `qkv` is a CPU-backend tensor and
/// every cache keeps this layer on the host (or has not reached it).
fn host_attention(attn: &Attention, layer: usize, qkv: &Tensor<3>, caches: &mut [KvCache], group_rows: &[usize]) -> Result<Option<Tensor<3>>> {
    let [rows, seq, d3] = qkv.dims();
    if caches.iter().any(|c| matches!(c.layers.get(layer), Some(LayerKv::Device(..)))) {
        return Ok(None);
    }
    let Some(t) = super::flex_f32_contiguous(qkv) else { return Ok(None) };
    let Some(qkv) = t.as_slice::<f32>() else { return Ok(None) };
    for (cache, &n) in caches.iter().zip(group_rows) {
        if let Some(LayerKv::Host(kv)) = cache.layers.get(layer) {
            if kv.rows() != n {
                return Err(Error::InvalidInput(format!("GPT-2: a cache of {} rows continued with {n}", kv.rows())));
            }
        }
    }
    let (d, heads) = (d3 / 3, attn.n_head);
    let mut first_row = 0;
    for (cache, &n) in caches.iter_mut().zip(group_rows) {
        if cache.layers.len() <= layer {
            cache.layers.push(LayerKv::Host(KvRows::new(n, d)));
        }
        let LayerKv::Host(kv) = &mut cache.layers[layer] else { return Ok(None) };
        // Position by position: keys and values are thirds of each position's c_attn output.
        for s in 0..seq {
            let at = |r: usize| ((first_row + r) * seq + s) * d3;
            kv.append(1, |r| &qkv[at(r) + d..at(r) + 2 * d], |r| &qkv[at(r) + 2 * d..at(r) + 3 * d]);
        }
        first_row += n;
    }
    // Each output row's cache and its row in it.
    let row_kv: Vec<(&KvRows, usize)> = caches
        .iter()
        .zip(group_rows)
        .flat_map(|(cache, &n)| {
            let LayerKv::Host(kv) = &cache.layers[layer] else { unreachable!("host layers appended above") };
            (0..n).map(move |r| (kv, r))
        })
        .collect();
    let mut out = vec![0f32; rows * seq * d];
    let scale = attn.scale as f32;
    crate::parallel::for_each_chunk(&mut out, (seq * d).max(1), |(row, out)| {
        let (kv, r) = row_kv[row];
        let (keys, values) = kv.row(r);
        let q = &qkv[row * seq * d3..(row + 1) * seq * d3];
        crate::attention::row(q, d3, keys, values, kv.len(), heads, d, scale, true, Bias::default(), out);
    });
    Ok(Some(super::cpu_tensor(out, [rows, seq, d])))
}

/// Attention with burn's ops (GPUs): per group over its cache, concatenated along the batch.
fn device_attention(a: &Attention, i: usize, qkv: Tensor<3>, caches: &mut [KvCache], group_rows: &[usize], masks: &[Option<Tensor<4>>]) -> Result<Tensor<3>> {
    let starts: Vec<usize> = group_rows.iter().scan(0, |at, &n| { let s = *at; *at += n; Some(s) }).collect();
    let d = qkv.dims()[2] / 3;
    let mut outs = Vec::with_capacity(caches.len());
    for (g, cache) in caches.iter_mut().enumerate() {
        let qkv = if group_rows.len() == 1 { qkv.clone() } else { qkv.clone().narrow(0, starts[g], group_rows[g]) };
        let q = split_heads(qkv.clone().narrow(2, 0, d), a.n_head);
        let mut k = split_heads(qkv.clone().narrow(2, d, d), a.n_head);
        let mut v = split_heads(qkv.narrow(2, 2 * d, d), a.n_head);
        match cache.layers.get(i) {
            None => cache.layers.push(LayerKv::Device(k.clone(), v.clone())),
            Some(LayerKv::Device(ck, cv)) => {
                k = Tensor::cat(vec![ck.clone(), k], 2);
                v = Tensor::cat(vec![cv.clone(), v], 2);
                cache.layers[i] = LayerKv::Device(k.clone(), v.clone());
            }
            Some(LayerKv::Host(_)) => {
                return Err(Error::InvalidInput("GPT-2: a CPU key/value cache continued on another device".into()));
            }
        }
        outs.push(merge_heads(attention(q, k, v, a.scale, masks[g].clone())));
    }
    Ok(if outs.len() == 1 { outs.pop().expect("one group") } else { Tensor::cat(outs, 0) })
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
        for (i, block) in self.h.iter().enumerate() {
            let a = &block.attn;
            let qkv = a.c_attn.forward(block.ln_1.forward(x.clone()));
            let out = match host_attention(a, i, &qkv, caches, group_rows)? {
                Some(out) => out,
                None => device_attention(a, i, qkv, caches, group_rows, &masks)?,
            };
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
