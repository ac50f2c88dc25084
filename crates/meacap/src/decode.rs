//! ViECap's decoders over GPT-2 (`search.py`): beam search and greedy search, computed with a
//! key/value cache and last-position logits only. The arithmetic is the original's: probabilities
//! as `softmax().log()`, stopped beams extended by id 0 at no cost, ranking by the mean log-prob
//! of the generated tokens (stop token included), stop on the ids of "." and " .".

use burn::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::gpt2::{Gpt2, KvCache};
use crate::device::block_on;
use crate::models::read_f32;

#[derive(Clone, Debug)]
pub struct SearchConfig {
    pub beam_width: usize,
    pub max_new_tokens: usize,
    /// Token ids that end a caption (ViECap: the last ids of "." and " .").
    pub stop_ids: Vec<u32>,
    /// Keep generating to `max_new_tokens` even when every beam stopped (benchmarks: fixed work).
    pub ignore_stop: bool,
}

/// One decoded hypothesis.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Hypothesis {
    /// Generated ids up to and including the stop token (padding removed).
    pub tokens: Vec<u32>,
    /// Mean log-probability per generated token.
    pub score: f32,
}

/// Last-position log-probabilities `[rows × vocab]`, computed on the host from the logits.
///
/// The original takes `softmax(logits).log()` (not `log_softmax`) on the CPU in f32, where
/// probabilities below f32's normal range stay denormal (log ≈ -100) or underflow to 0 (log =
/// -inf). GPUs flush denormals to zero or clamp them, which turns some -inf candidates finite
/// (or the reverse) and changes which beams survive once the finite candidates run out. The
/// host computes the same arithmetic on every device.
async fn log_probs(gpt: &Gpt2, hidden: Tensor<3>) -> Result<(Vec<f32>, usize)> {
    let logits = gpt.last_logits(hidden);
    let vocab = logits.dims()[1];
    let mut values = read_f32(logits).await?;
    for row in values.chunks_mut(vocab) {
        softmax_log_in_place(row);
    }
    Ok((values, vocab))
}

/// `softmax(x).log()` as torch computes it on the CPU: exp(x - max), times the reciprocal of the
/// sum, then the natural log.
fn softmax_log_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x = (*x * inv).ln();
    }
}

fn embed_ids(gpt: &Gpt2, ids: &[u32]) -> Tensor<3> {
    let device = gpt.device();
    let ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let n = ids.len();
    gpt.embed_tokens(Tensor::<1, Int>::from_ints(ids.as_slice(), &device).reshape([n, 1]))
}

/// Indices of the `k` largest values, descending; ties go to the lower index.
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// ViECap `beam_search`: returns every beam, best first.
pub fn beam_search(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Vec<Hypothesis>> {
    block_on(beam_search_async(gpt, prefix, cfg))
}

/// [`beam_search`] with asynchronous read-backs (WebGPU in the browser).
pub async fn beam_search_async(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Vec<Hypothesis>> {
    let [batch, _, _] = prefix.dims();
    if batch != 1 {
        return Err(Error::InvalidInput(format!("beam search takes one prefix, got a batch of {batch}")));
    }
    let width = cfg.beam_width.max(1);
    let device = gpt.device();
    let mut cache = KvCache::default();
    let hidden = gpt.forward(prefix, &mut cache)?;
    let (logp, vocab) = log_probs(gpt, hidden).await?;

    // First step: the top `width` tokens of the single prefix.
    let first = top_k(&logp, width);
    let mut scores: Vec<f32> = first.iter().map(|&i| logp[i]).collect();
    let mut tokens: Vec<Vec<u32>> = first.iter().map(|&i| vec![i as u32]).collect();
    let mut lengths = vec![1f32; width];
    let mut stopped: Vec<bool> = tokens.iter().map(|t| cfg.stop_ids.contains(&t[0])).collect();
    cache.select(Tensor::<1, Int>::from_ints(vec![0i64; width].as_slice(), &device));
    let mut last: Vec<u32> = tokens.iter().map(|t| t[0]).collect();

    for _ in 1..cfg.max_new_tokens {
        if stopped.iter().all(|&s| s) && !cfg.ignore_stop {
            break;
        }
        let hidden = gpt.forward(embed_ids(gpt, &last), &mut cache)?;
        let (mut logp, _) = log_probs(gpt, hidden).await?;
        for (beam, &is_stopped) in stopped.iter().enumerate() {
            if is_stopped {
                let row = &mut logp[beam * vocab..(beam + 1) * vocab];
                row.fill(f32::NEG_INFINITY);
                row[0] = 0.0;
            }
        }
        for (len, &is_stopped) in lengths.iter_mut().zip(&stopped) {
            if !is_stopped {
                *len += 1.0;
            }
        }
        // (scores + logp) / length, flattened over beams × vocabulary.
        let average: Vec<f32> = logp
            .iter()
            .enumerate()
            .map(|(i, &lp)| {
                let beam = i / vocab;
                (scores[beam] + lp) / lengths[beam]
            })
            .collect();
        let best = top_k(&average, width);
        let source: Vec<usize> = best.iter().map(|&i| i / vocab).collect();
        let next: Vec<u32> = best.iter().map(|&i| (i % vocab) as u32).collect();
        lengths = source.iter().map(|&s| lengths[s]).collect();
        scores = best.iter().zip(&lengths).map(|(&i, &len)| average[i] * len).collect();
        tokens = source.iter().zip(&next).map(|(&s, &t)| {
            let mut row = tokens[s].clone();
            row.push(t);
            row
        }).collect();
        stopped = source.iter().zip(&next).map(|(&s, t)| stopped[s] || cfg.stop_ids.contains(t)).collect();
        cache.select(Tensor::<1, Int>::from_ints(source.iter().map(|&s| s as i64).collect::<Vec<_>>().as_slice(), &device));
        last = next;
    }

    let mut hypotheses: Vec<Hypothesis> = tokens
        .into_iter()
        .zip(scores.iter().zip(&lengths))
        .map(|(mut t, (&score, &len))| {
            t.truncate(len as usize);
            Hypothesis { tokens: t, score: score / len }
        })
        .collect();
    // Stable sort: equal scores keep beam order.
    hypotheses.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(hypotheses)
}

/// ViECap `greedy_search`: argmax each step, stop after a stop token (kept) or `max_new_tokens`.
pub fn greedy_search(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Hypothesis> {
    block_on(greedy_search_async(gpt, prefix, cfg))
}

/// [`greedy_search`] with asynchronous read-backs (WebGPU in the browser).
pub async fn greedy_search_async(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Hypothesis> {
    let mut cache = KvCache::default();
    let mut hidden = gpt.forward(prefix, &mut cache)?;
    let mut tokens = Vec::new();
    let mut total = 0f32;
    for step in 0..cfg.max_new_tokens {
        let (logp, _) = log_probs(gpt, hidden).await?;
        let best = top_k(&logp, 1)[0];
        tokens.push(best as u32);
        total += logp[best];
        if cfg.stop_ids.contains(&(best as u32)) && !cfg.ignore_stop {
            break;
        }
        if step + 1 == cfg.max_new_tokens {
            break;
        }
        hidden = gpt.forward(embed_ids(gpt, &[best as u32]), &mut cache)?;
    }
    let n = tokens.len().max(1) as f32;
    Ok(Hypothesis { tokens, score: total / n })
}
