//! T5 v1.1 / Flan-T5 (HF `T5ForConditionalGeneration`), e.g. the FACTUAL scene-graph parser
//! `flan-t5-base-VG-factual-sg`: RMS norms, relative position buckets (bidirectional in the
//! encoder, causal in the decoder, computed once per stack from layer 0's table), no 1/sqrt(d)
//! attention scaling, gated-GELU feed-forward, untied `lm_head`.
//!
//! Checkpoint keys: `shared.weight`, `{encoder,decoder}.block.{i}.layer.{j}.{SelfAttention,
//! EncDecAttention}.{q,k,v,o}.weight`, `...layer.0.SelfAttention.relative_attention_bias.weight`
//! (block 0 only), `...DenseReluDense.{wi_0,wi_1,wo|wi,wo}.weight`, `...layer_norm.weight`,
//! `{encoder,decoder}.final_layer_norm.weight`, `lm_head.weight`.

use burn::prelude::*;
use serde::Deserialize;

use super::{attention, merge_heads, padding_mask, split_heads, Activation, Linear, RmsNorm};
use crate::attention::{self as host_attention, KvRows};
use crate::error::{Error, Result};
use crate::weights::Weights;

#[derive(Clone, Debug, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "d32")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "d128")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    #[serde(default = "one")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub pad_token_id: u32,
}

fn d32() -> usize { 32 }
fn d128() -> usize { 128 }
fn eps() -> f64 { 1e-6 }
fn relu() -> String { "relu".into() }
fn yes() -> bool { true }
fn one() -> u32 { 1 }

impl T5Config {
    pub fn from_json(model: &str, bytes: &[u8]) -> Result<Self> {
        let cfg: Self = super::parse_config(model, bytes)?;
        cfg.feed_forward()?;
        Ok(cfg)
    }

    /// (gated?, activation) from `feed_forward_proj`, as transformers 4.26 reads it.
    fn feed_forward(&self) -> Result<(bool, Activation)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let gated = parts.len() == 2 && parts[0] == "gated";
        let act = match *parts.last().unwrap_or(&"") {
            // "gated-gelu" means the tanh approximation in transformers (dense_act_fn = gelu_new).
            "gelu" if gated => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            "gelu_new" => Activation::GeluNew,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::Config {
                    model: "T5".into(),
                    file: "config.json".into(),
                    message: format!("unsupported feed_forward_proj `{}` (activation `{other}`)", self.feed_forward_proj),
                })
            }
        };
        if parts.len() > 2 || (parts.len() == 2 && !gated) {
            return Err(Error::Config {
                model: "T5".into(),
                file: "config.json".into(),
                message: format!("unsupported feed_forward_proj `{}`", self.feed_forward_proj),
            });
        }
        Ok((gated, act))
    }
}

/// HF's `_relative_position_bucket`, in f32 as torch computes it.
pub fn relative_position_bucket(relative_position: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> usize {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let mut rp = relative_position;
    if bidirectional {
        num_buckets /= 2;
        if rp > 0 {
            bucket += num_buckets;
        }
        rp = rp.abs();
    } else {
        rp = -rp.min(0);
    }
    let max_exact = num_buckets / 2;
    if rp < max_exact {
        bucket += rp;
    } else {
        let ratio = (rp as f32 / max_exact as f32).ln() / ((max_distance as f64 / max_exact as f64).ln() as f32);
        let large = max_exact + (ratio * (num_buckets - max_exact) as f32) as i64;
        bucket += large.min(num_buckets - 1);
    }
    bucket as usize
}

#[derive(Clone, Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    fn load(w: &Weights, c: &T5Config) -> Result<Self> {
        let inner = c.num_heads * c.d_kv;
        Ok(Self {
            q: Linear::load(&w.pp("q"), c.d_model, inner, false)?,
            k: Linear::load(&w.pp("k"), c.d_model, inner, false)?,
            v: Linear::load(&w.pp("v"), c.d_model, inner, false)?,
            o: Linear::load(&w.pp("o"), inner, c.d_model, false)?,
            heads: c.num_heads,
        })
    }

    fn project_kv(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        (split_heads(self.k.forward(x.clone()), self.heads), split_heads(self.v.forward(x), self.heads))
    }

    fn attend(&self, x: Tensor<3>, k: Tensor<4>, v: Tensor<4>, bias: Tensor<4>) -> Tensor<3> {
        let q = split_heads(self.q.forward(x), self.heads);
        self.o.forward(merge_heads(attention(q, k, v, 1.0, Some(bias))))
    }
}

#[derive(Clone, Debug)]
struct FeedForward {
    wi_0: Linear,
    wi_1: Option<Linear>,
    wo: Linear,
    act: Activation,
}

impl FeedForward {
    fn load(w: &Weights, c: &T5Config) -> Result<Self> {
        let (gated, act) = c.feed_forward()?;
        let (wi_0, wi_1) = if gated {
            (Linear::load(&w.pp("wi_0"), c.d_model, c.d_ff, false)?, Some(Linear::load(&w.pp("wi_1"), c.d_model, c.d_ff, false)?))
        } else {
            (Linear::load(&w.pp("wi"), c.d_model, c.d_ff, false)?, None)
        };
        Ok(Self { wi_0, wi_1, wo: Linear::load(&w.pp("wo"), c.d_ff, c.d_model, false)?, act })
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.wi_0.forward_act(x.clone(), self.act);
        let h = match &self.wi_1 {
            Some(wi_1) => h * wi_1.forward(x),
            None => h,
        };
        self.wo.forward(h)
    }
}

#[derive(Clone, Debug)]
struct Block {
    self_attention: Attention,
    self_norm: RmsNorm,
    cross_attention: Option<(Attention, RmsNorm)>,
    feed_forward: FeedForward,
    ff_norm: RmsNorm,
}

#[derive(Clone, Debug)]
struct Stack {
    blocks: Vec<Block>,
    final_layer_norm: RmsNorm,
    /// Layer 0's relative attention bias table `[num_buckets, heads]`, shared by all layers.
    relative_attention_bias: Tensor<2>,
    bidirectional: bool,
}

impl Stack {
    fn load(w: &Weights, c: &T5Config, layers: usize, decoder: bool) -> Result<Self> {
        let eps = c.layer_norm_epsilon;
        let blocks = (0..layers)
            .map(|i| {
                let b = w.pp("block").pp(i);
                let ff_index = if decoder { 2 } else { 1 };
                Ok(Block {
                    self_attention: Attention::load(&b.pp("layer.0.SelfAttention"), c)?,
                    self_norm: RmsNorm::load(&b.pp("layer.0.layer_norm"), c.d_model, eps)?,
                    cross_attention: if decoder {
                        Some((
                            Attention::load(&b.pp("layer.1.EncDecAttention"), c)?,
                            RmsNorm::load(&b.pp("layer.1.layer_norm"), c.d_model, eps)?,
                        ))
                    } else {
                        None
                    },
                    feed_forward: FeedForward::load(&b.pp(format!("layer.{ff_index}.DenseReluDense")), c)?,
                    ff_norm: RmsNorm::load(&b.pp(format!("layer.{ff_index}.layer_norm")), c.d_model, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            blocks,
            final_layer_norm: RmsNorm::load(&w.pp("final_layer_norm"), c.d_model, eps)?,
            relative_attention_bias: w
                .pp("block.0.layer.0.SelfAttention.relative_attention_bias")
                .get::<2>("weight", [c.relative_attention_num_buckets, c.num_heads])?,
            bidirectional: !decoder,
        })
    }

    /// Position bias `[1, heads, q_len, k_len]` for queries at absolute positions
    /// `q_start..q_start+q_len` against keys `0..k_len`.
    fn position_bias(&self, q_start: usize, q_len: usize, k_len: usize, c: &T5Config) -> Tensor<4> {
        let device = self.relative_attention_bias.device();
        let buckets: Vec<i64> = (0..q_len)
            .flat_map(|i| {
                (0..k_len).map(move |j| {
                    relative_position_bucket(
                        j as i64 - (q_start + i) as i64,
                        self.bidirectional,
                        c.relative_attention_num_buckets,
                        c.relative_attention_max_distance,
                    ) as i64
                })
            })
            .collect();
        let idx = Tensor::<1, Int>::from_ints(buckets.as_slice(), &device);
        let heads = self.relative_attention_bias.dims()[1];
        self.relative_attention_bias
            .clone()
            .select(0, idx)
            .reshape([q_len, k_len, heads])
            .permute([2, 0, 1])
            .unsqueeze::<4>()
    }
}

/// Greedy decoding steps issued between two read-backs of the chosen ids on a GPU.
const STEPS_PER_READ: usize = 4;

/// Encoder output kept for generation: hidden states and the encoder padding mask.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    pub hidden: Tensor<3>,
    mask: Tensor<4>,
}

/// Decoder caches: self-attention keys/values that grow, cross-attention keys/values fixed. On
/// GPUs `[batch, heads, seq, d_kv]` tensors; on the CPU backend host rows that grow in place
/// (see [`KvRows`]: no concatenation of the whole cache per layer and step).
enum DecoderCache {
    Device { self_kv: Vec<(Tensor<4>, Tensor<4>)>, cross_kv: Vec<(Tensor<4>, Tensor<4>)> },
    Host { self_kv: Vec<KvRows>, cross_kv: Vec<KvRows> },
}

impl DecoderCache {
    /// Keeps the batch rows `rows` (in that order) of every cached key and value.
    fn select(&mut self, rows: Tensor<1, Int>) {
        match self {
            DecoderCache::Device { self_kv, cross_kv } => {
                super::select_cached_rows(self_kv, rows.clone());
                super::select_cached_rows(cross_kv, rows);
            }
            DecoderCache::Host { self_kv, cross_kv } => {
                let rows = super::host_indices(rows);
                self_kv.iter_mut().chain(cross_kv.iter_mut()).for_each(|kv| kv.select(&rows));
            }
        }
    }
}

/// The host data of a CPU-backend tensor (`None` on GPUs).
fn host<const D: usize>(x: &Tensor<D>) -> Option<burn::backend::flex::FlexTensor> {
    super::flex_f32_contiguous(x)
}

/// The error for a CPU cache meeting a tensor that is not on the CPU backend.
fn not_on_cpu() -> Error {
    Error::InvalidInput("T5: a CPU decoder cache met a tensor on another device".into())
}

#[derive(Clone, Debug)]
pub struct T5 {
    pub config: T5Config,
    shared: Tensor<2>,
    encoder: Stack,
    decoder: Stack,
    lm_head: Linear,
}

impl T5 {
    pub fn load(w: &Weights, config: &T5Config) -> Result<Self> {
        let shared = w.get::<2>("shared.weight", [config.vocab_size, config.d_model])?;
        // Tied copies of `shared` that some files carry.
        w.ignore("encoder.embed_tokens.weight");
        w.ignore("decoder.embed_tokens.weight");
        let lm_head = if w.contains("lm_head.weight") && !config.tie_word_embeddings {
            Linear::load(&w.pp("lm_head"), config.d_model, config.vocab_size, false)?
        } else {
            w.ignore("lm_head.weight");
            // Tied: `shared` again, as the output projection.
            Linear::load(&w.pp("shared"), config.d_model, config.vocab_size, false)?
        };
        Ok(Self {
            encoder: Stack::load(&w.pp("encoder"), config, config.num_layers, false)?,
            decoder: Stack::load(&w.pp("decoder"), config, config.num_decoder_layers.unwrap_or(config.num_layers), true)?,
            lm_head,
            shared,
            config: config.clone(),
        })
    }

    fn check_ids(&self, ids: &[Vec<u32>]) -> Result<usize> {
        let t = ids.first().map_or(0, Vec::len);
        if ids.is_empty() || t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(Error::InvalidInput("T5 expects a non-empty batch of rows of equal length".into()));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::InvalidInput(format!("token id {bad} is outside the vocabulary ({})", self.config.vocab_size)));
        }
        Ok(t)
    }

    /// Encoder last hidden state `[batch, seq, d]` for padded ids and masks.
    pub fn encode(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u32>]) -> Result<EncoderOutput> {
        let t = self.check_ids(ids)?;
        let device = self.shared.device();
        let mask = padding_mask(attention_mask, &device);
        let bias = self.encoder.position_bias(0, t, t, &self.config) + mask.clone();
        let mut x = super::embed(&self.shared, super::ids_tensor(ids, &device));
        for block in &self.encoder.blocks {
            let h = block.self_norm.forward(x.clone());
            let (k, v) = block.self_attention.project_kv(h.clone());
            x = x + block.self_attention.attend(h, k, v, bias.clone());
            x = x.clone() + block.feed_forward.forward(block.ff_norm.forward(x));
        }
        Ok(EncoderOutput { hidden: self.encoder.final_layer_norm.forward(x), mask })
    }

    fn new_cache(&self, enc: &EncoderOutput) -> DecoderCache {
        if let Some(cross_kv) = self.host_cross_kv(enc) {
            return DecoderCache::Host { self_kv: Vec::new(), cross_kv };
        }
        let cross_kv = self
            .decoder
            .blocks
            .iter()
            .filter_map(|b| b.cross_attention.as_ref().map(|(a, _)| a.project_kv(enc.hidden.clone())))
            .collect();
        DecoderCache::Device { self_kv: Vec::new(), cross_kv }
    }

    /// Cross-attention keys and values as host rows (`[enc_len][inner]` per batch row), when the
    /// encoder output is on the CPU backend.
    fn host_cross_kv(&self, enc: &EncoderOutput) -> Option<Vec<KvRows>> {
        let [b, enc_len, _] = enc.hidden.dims();
        host(&enc.hidden)?;
        let mut layers = Vec::new();
        for (a, _) in self.decoder.blocks.iter().filter_map(|b| b.cross_attention.as_ref()) {
            let (k, v) = (a.k.forward(enc.hidden.clone()), a.v.forward(enc.hidden.clone()));
            let (k, v) = (host(&k)?, host(&v)?);
            let (k, v) = (k.as_slice::<f32>()?, v.as_slice::<f32>()?);
            let inner = k.len() / (b * enc_len).max(1);
            let mut kv = KvRows::new(b, inner);
            let row = enc_len * inner;
            kv.append(enc_len, |r| &k[r * row..(r + 1) * row], |r| &v[r * row..(r + 1) * row]);
            layers.push(kv);
        }
        Some(layers)
    }

    /// Runs decoder ids `[batch, q_len]` after the cached positions; returns logits `[batch, q_len, vocab]`.
    fn decode_step(&self, ids: Tensor<2, Int>, enc: &EncoderOutput, cache: &mut DecoderCache) -> Result<Tensor<3>> {
        let x = match cache {
            DecoderCache::Device { self_kv, cross_kv } => self.decode_on_device(ids, enc, self_kv, cross_kv),
            DecoderCache::Host { self_kv, cross_kv } => self.decode_on_host(ids, enc, self_kv, cross_kv)?,
        };
        Ok(self.logits(x))
    }

    /// The decoder layers with burn's ops (GPUs): hidden states `[batch, q_len, d_model]`.
    fn decode_on_device(&self, ids: Tensor<2, Int>, enc: &EncoderOutput, self_kv: &mut Vec<(Tensor<4>, Tensor<4>)>, cross_kv: &[(Tensor<4>, Tensor<4>)]) -> Tensor<3> {
        let [_, q_len] = ids.dims();
        let past = self_kv.first().map_or(0, |(k, _)| k.dims()[2]);
        let device = self.shared.device();
        let mut bias = self.decoder.position_bias(past, q_len, past + q_len, &self.config);
        if q_len > 1 {
            bias = bias + super::causal_mask(q_len, past, &device);
        }
        let fresh = self_kv.is_empty();
        let mut x = super::embed(&self.shared, ids);
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let h = block.self_norm.forward(x.clone());
            let (mut k, mut v) = block.self_attention.project_kv(h.clone());
            if fresh {
                self_kv.push((k.clone(), v.clone()));
            } else {
                let (ck, cv) = &self_kv[i];
                k = Tensor::cat(vec![ck.clone(), k], 2);
                v = Tensor::cat(vec![cv.clone(), v], 2);
                self_kv[i] = (k.clone(), v.clone());
            }
            x = x + block.self_attention.attend(h, k, v, bias.clone());
            if let Some((cross, norm)) = &block.cross_attention {
                let (ck, cv) = cross_kv[i].clone();
                x = x.clone() + cross.attend(norm.forward(x), ck, cv, enc.mask.clone());
            }
            x = x.clone() + block.feed_forward.forward(block.ff_norm.forward(x));
        }
        x
    }

    /// The decoder layers on the CPU backend, attention on the host over [`KvRows`] caches (the
    /// same sums as [`Self::decode_on_device`]'s, see [`crate::attention`]).
    fn decode_on_host(&self, ids: Tensor<2, Int>, enc: &EncoderOutput, self_kv: &mut Vec<KvRows>, cross_kv: &[KvRows]) -> Result<Tensor<3>> {
        let [b, q_len] = ids.dims();
        let past = self_kv.first().map_or(0, KvRows::len);
        let len = past + q_len;
        let c = &self.config;
        let heads = c.num_heads;
        // Relative position bias `[heads][q_len][len]` from layer 0's table `[buckets, heads]`.
        let table = host(&self.decoder.relative_attention_bias).ok_or_else(not_on_cpu)?;
        let table = table.as_slice::<f32>().ok_or_else(not_on_cpu)?;
        let mut position_bias = vec![0f32; heads * q_len * len];
        for i in 0..q_len {
            for j in 0..len {
                let bucket = relative_position_bucket(j as i64 - (past + i) as i64, self.decoder.bidirectional, c.relative_attention_num_buckets, c.relative_attention_max_distance);
                for h in 0..heads {
                    position_bias[(h * q_len + i) * len + j] = table[bucket * heads + h];
                }
            }
        }
        // The encoder padding mask `[batch, 1, 1, enc_len]`: one additive row per batch row.
        let mask = host(&enc.mask).ok_or_else(not_on_cpu)?;
        let mask = mask.as_slice::<f32>().ok_or_else(not_on_cpu)?;
        let mut x = super::embed(&self.shared, ids);
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let sa = &block.self_attention;
            let h = block.self_norm.forward(x.clone());
            let (q, k, v) = (sa.q.forward(h.clone()), sa.k.forward(h.clone()), sa.v.forward(h));
            let (q, k, v) = (host(&q).ok_or_else(not_on_cpu)?, host(&k).ok_or_else(not_on_cpu)?, host(&v).ok_or_else(not_on_cpu)?);
            let (q, k, v) = (q.as_slice::<f32>().ok_or_else(not_on_cpu)?, k.as_slice::<f32>().ok_or_else(not_on_cpu)?, v.as_slice::<f32>().ok_or_else(not_on_cpu)?);
            let inner = q.len() / (b * q_len).max(1);
            if self_kv.len() <= i {
                self_kv.push(KvRows::new(b, inner));
            }
            let kv = &mut self_kv[i];
            if kv.rows() != b || kv.len() != past {
                return Err(Error::InvalidInput(format!("T5: a decoder cache of {} rows x {} positions continued with {b} rows after {past}", kv.rows(), kv.len())));
            }
            let row = q_len * inner;
            kv.append(q_len, |r| &k[r * row..(r + 1) * row], |r| &v[r * row..(r + 1) * row]);
            let out = host_attention::rows(q, inner, q_len, kv, heads, 1.0, true, Some(&position_bias), None);
            x = x + sa.o.forward(super::cpu_tensor(out, [b, q_len, inner]));
            if let Some((cross, norm)) = &block.cross_attention {
                let q = cross.q.forward(norm.forward(x.clone()));
                let q = host(&q).ok_or_else(not_on_cpu)?;
                let q = q.as_slice::<f32>().ok_or_else(not_on_cpu)?;
                let kv = cross_kv.get(i).ok_or_else(not_on_cpu)?;
                if kv.rows() != b || mask.len() != b * kv.len() {
                    return Err(Error::InvalidInput(format!("T5: cross-attention over {} rows, {} mask values, for {b} rows", kv.rows(), mask.len())));
                }
                let out = host_attention::rows(q, inner, q_len, kv, heads, 1.0, false, None, Some(mask));
                x = x.clone() + cross.o.forward(super::cpu_tensor(out, [b, q_len, inner]));
            }
            x = x.clone() + block.feed_forward.forward(block.ff_norm.forward(x));
        }
        Ok(x)
    }

    /// Vocabulary logits of the decoder's last hidden states `[batch, q_len, d_model]`.
    fn logits(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, q_len, d] = x.dims();
        let mut x = self.decoder.final_layer_norm.forward(x);
        if self.config.tie_word_embeddings {
            // Only tied heads rescale (Flan-T5 is untied: no rescale).
            x = x * (self.config.d_model as f64).powf(-0.5);
        }
        self.lm_head.forward(x.reshape([b * q_len, d])).reshape([b, q_len, self.config.vocab_size])
    }

    /// Teacher-forced decoder logits `[batch, len, vocab]` for decoder input ids (tests, scoring).
    pub fn decoder_logits(&self, enc: &EncoderOutput, decoder_ids: &[Vec<u32>]) -> Result<Tensor<3>> {
        self.check_ids(decoder_ids)?;
        let device = self.shared.device();
        let mut cache = self.new_cache(enc);
        self.decode_step(super::ids_tensor(decoder_ids, &device), enc, &mut cache)
    }

    /// Batched greedy generation as HF `generate(num_beams=1, max_length)`: decoding starts from
    /// `decoder_start_token_id` (else pad) and stops when every row has produced EOS or the
    /// decoder sequence reaches `max_length` positions (the start token included). Returns the
    /// generated ids per row, start token excluded, up to and including EOS when produced.
    pub fn generate_greedy(&self, ids: &[Vec<u32>], attention_mask: &[Vec<u32>], max_length: usize) -> Result<Vec<Vec<u32>>> {
        crate::device::block_on(self.generate_greedy_async(ids, attention_mask, max_length))
    }

    /// [`Self::generate_greedy`] with asynchronous read-backs (WebGPU in the browser).
    pub async fn generate_greedy_async(
        &self,
        ids: &[Vec<u32>],
        attention_mask: &[Vec<u32>],
        max_length: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let mut enc = self.encode(ids, attention_mask)?;
        let device = self.shared.device();
        let b = ids.len();
        let start = self.config.decoder_start_token_id.unwrap_or(self.config.pad_token_id);
        let eos = self.config.eos_token_id;
        let mut cache = self.new_cache(&enc);
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); b];
        let mut finished = vec![false; b];
        // The input row behind each row of the running batch: rows that produced EOS leave the
        // batch (rows never interact, so the others compute the same), and a step costs what
        // the rows still running cost.
        let mut live: Vec<usize> = (0..b).collect();
        // The next ids are chosen on the device (argmax) and read back every `STEPS_PER_READ`
        // steps on a GPU: a read-back per step would make the GPU wait for the host to issue each
        // step and the host wait for the GPU. Steps past the point where every row finished are
        // discarded unread. Until the next read-back a finished row is fed its argmax rather
        // than HF's pad: what a row produces after its EOS is dropped, so the output is the same.
        let steps_per_read = if crate::device::is_cpu(&device) { 1 } else { STEPS_PER_READ };
        let mut next = Tensor::<1, Int>::from_ints(vec![start as i64; b].as_slice(), &device);
        let mut pending: Vec<Tensor<1, Int>> = Vec::new();
        let steps = max_length.max(1) - 1;
        for step in 0..steps {
            let n = live.len();
            let logits = self.decode_step(next.reshape([n, 1]), &enc, &mut cache)?;
            next = logits.reshape([n, self.config.vocab_size]).argmax(1).reshape([n]);
            pending.push(next.clone());
            if pending.len() < steps_per_read && step + 1 < steps {
                continue;
            }
            let chosen = super::read_i64(Tensor::cat(std::mem::take(&mut pending), 0)).await?;
            for ids in chosen.chunks(n) {
                for (&row, &id) in live.iter().zip(ids) {
                    if !finished[row] {
                        out[row].push(id as u32);
                        finished[row] = id as u32 == eos;
                    }
                }
            }
            if finished.iter().all(|&f| f) {
                return Ok(out);
            }
            let keep: Vec<usize> = (0..n).filter(|&r| !finished[live[r]]).collect();
            if keep.len() < n {
                let rows = super::rows_tensor(&keep, &device);
                cache.select(rows.clone());
                enc.mask = enc.mask.select(0, rows.clone());
                next = next.select(0, rows);
                live = keep.iter().map(|&r| live[r]).collect();
            }
        }
        Ok(out)
    }
}

