//! ViECap's decoders over GPT-2 (`search.py`): beam search and greedy search, computed with a
//! key/value cache and last-position logits only. The arithmetic is the original's: probabilities
//! as `softmax().log()`, stopped beams extended by id 0 at no cost, ranking by the mean log-prob
//! of the generated tokens (stop token included), stop on the ids of "." and " .".

use burn::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::gpt2::{Gpt2, KvCache};
use crate::device::block_on;
use crate::models::{read_f32, rows_tensor};

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

/// Last-position log-probabilities `[rows × vocab]` (and `vocab`), computed on the host from
/// the logits: what beam search and greedy search score each step with.
///
/// The original takes `softmax(logits).log()` (not `log_softmax`) on the CPU in f32, where
/// probabilities below f32's normal range stay denormal (log ≈ -100) or underflow to 0 (log =
/// -inf). GPUs flush denormals to zero or clamp them, which turns some -inf candidates finite
/// (or the reverse) and changes which beams survive once the finite candidates run out. The
/// host computes the same arithmetic on every device.
pub async fn log_probs(gpt: &Gpt2, hidden: Tensor<3>) -> Result<(Vec<f32>, usize)> {
    let logits = gpt.last_logits(hidden);
    let vocab = logits.dims()[1];
    let mut values = read_f32(logits).await?;
    // One row per task: the rows (beams of every image in a batch) are independent.
    crate::parallel::for_each_chunk(&mut values, vocab.max(1), |(_, row)| crate::activations::softmax_log(row));
    Ok((values, vocab))
}

fn embed_ids(gpt: &Gpt2, ids: &[u32]) -> Tensor<3> {
    let device = gpt.device();
    let ids: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let n = ids.len();
    gpt.embed_tokens(Tensor::<1, Int>::from_ints(ids.as_slice(), &device).reshape([n, 1]))
}

/// Indices of the `k` largest values, descending; ties go to the lower index (NaN above
/// everything, as `f32::total_cmp` orders it).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(values.len());
    if k > 64 {
        let mut idx: Vec<usize> = (0..values.len()).collect();
        let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
        if k < idx.len() {
            idx.select_nth_unstable_by(k, cmp);
            idx.truncate(k);
        }
        idx.sort_by(cmp);
        return idx;
    }
    // A beam's width from ~250 k log-probabilities: one pass, keeping the best k in order;
    // most values lose to the k-th best at once.
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, v) in values.iter().enumerate() {
        if best.len() == k {
            match best.last() {
                Some(&last) if v.total_cmp(&values[last]).is_gt() => {}
                _ => continue,
            }
        }
        // After every value not below this one: earlier indices win ties.
        let at = best.partition_point(|&j| values[j].total_cmp(v).is_ge());
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// ViECap `beam_search`: returns every beam, best first.
pub fn beam_search(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Vec<Hypothesis>> {
    block_on(beam_search_async(gpt, prefix, cfg))
}

/// [`beam_search`] with asynchronous read-backs (WebGPU in the browser).
pub async fn beam_search_async(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Vec<Hypothesis>> {
    let mut all = beam_search_many_async(gpt, vec![prefix], cfg).await?;
    Ok(all.pop().unwrap_or_default())
}

/// [`beam_search`] for several prefixes (one per image, of any lengths) at once: each prefix is
/// searched exactly as alone, but every decoding step runs GPT-2's dense layers once over the
/// beams of all unfinished prefixes ([`Gpt2::forward_groups`]).
pub fn beam_search_many(gpt: &Gpt2, prefixes: Vec<Tensor<3>>, cfg: &SearchConfig) -> Result<Vec<Vec<Hypothesis>>> {
    block_on(beam_search_many_async(gpt, prefixes, cfg))
}

/// One prefix's beams during [`beam_search_many`].
struct Beams {
    scores: Vec<f32>,
    tokens: Vec<Vec<u32>>,
    lengths: Vec<f32>,
    stopped: Vec<bool>,
}

impl Beams {
    /// First step: the top `width` tokens of the single prefix.
    fn start(logp: &[f32], width: usize, cfg: &SearchConfig) -> Self {
        let first = top_k(logp, width);
        let tokens: Vec<Vec<u32>> = first.iter().map(|&i| vec![i as u32]).collect();
        Self {
            scores: first.iter().map(|&i| logp[i]).collect(),
            lengths: vec![1f32; tokens.len()],
            stopped: tokens.iter().map(|t| cfg.stop_ids.contains(&t[0])).collect(),
            tokens,
        }
    }

    fn finished(&self, cfg: &SearchConfig) -> bool {
        self.stopped.iter().all(|&s| s) && !cfg.ignore_stop
    }

    /// The ids to feed next, one per beam.
    fn last(&self) -> impl Iterator<Item = u32> + '_ {
        self.tokens.iter().map(|t| t.last().copied().unwrap_or(0))
    }

    /// One step from this prefix's rows of log-probabilities; returns the beam each new beam
    /// extends (the cache rows to keep).
    fn advance(&mut self, logp: &mut [f32], vocab: usize, width: usize, cfg: &SearchConfig) -> Vec<usize> {
        for (beam, &is_stopped) in self.stopped.iter().enumerate() {
            if is_stopped {
                let row = &mut logp[beam * vocab..(beam + 1) * vocab];
                row.fill(f32::NEG_INFINITY);
                row[0] = 0.0;
            }
        }
        for (len, &is_stopped) in self.lengths.iter_mut().zip(&self.stopped) {
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
                (self.scores[beam] + lp) / self.lengths[beam]
            })
            .collect();
        let best = top_k(&average, width);
        let source: Vec<usize> = best.iter().map(|&i| i / vocab).collect();
        let next: Vec<u32> = best.iter().map(|&i| (i % vocab) as u32).collect();
        self.lengths = source.iter().map(|&s| self.lengths[s]).collect();
        self.scores = best.iter().zip(&self.lengths).map(|(&i, &len)| average[i] * len).collect();
        self.tokens = source
            .iter()
            .zip(&next)
            .map(|(&s, &t)| {
                let mut row = self.tokens[s].clone();
                row.push(t);
                row
            })
            .collect();
        self.stopped = source.iter().zip(&next).map(|(&s, t)| self.stopped[s] || cfg.stop_ids.contains(t)).collect();
        source
    }

    /// Every beam, best first (mean log-prob per generated token).
    fn finish(self) -> Vec<Hypothesis> {
        let mut hypotheses: Vec<Hypothesis> = self
            .tokens
            .into_iter()
            .zip(self.scores.iter().zip(&self.lengths))
            .map(|(mut t, (&score, &len))| {
                t.truncate(len as usize);
                Hypothesis { tokens: t, score: score / len }
            })
            .collect();
        // Stable sort: equal scores keep beam order.
        hypotheses.sort_by(|a, b| b.score.total_cmp(&a.score));
        hypotheses
    }
}

/// Checks that every prefix is one sequence `[1, seq, d]`.
fn check_prefixes(prefixes: &[Tensor<3>]) -> Result<()> {
    for prefix in prefixes {
        let [batch, _, _] = prefix.dims();
        if batch != 1 {
            return Err(Error::InvalidInput(format!("a search takes prefixes of one sequence each, got a batch of {batch}")));
        }
    }
    Ok(())
}

/// One step over the given prefixes' caches (taken out of `caches` for the call and put back):
/// `ids[g]` are group `g`'s next tokens. Returns the log-probabilities, rows in group order.
async fn step_groups(
    gpt: &Gpt2,
    caches: &mut [KvCache],
    active: &[usize],
    ids: &[Vec<u32>],
) -> Result<(Vec<f32>, usize)> {
    let flat: Vec<u32> = ids.iter().flatten().copied().collect();
    let rows: Vec<usize> = ids.iter().map(Vec::len).collect();
    let mut group: Vec<KvCache> = active.iter().map(|&i| std::mem::take(&mut caches[i])).collect();
    let hidden = gpt.forward_groups(embed_ids(gpt, &flat), &mut group, &rows);
    for (&i, cache) in active.iter().zip(group) {
        caches[i] = cache;
    }
    log_probs(gpt, hidden?).await
}

/// [`beam_search_many`] with asynchronous read-backs (WebGPU in the browser).
pub async fn beam_search_many_async(gpt: &Gpt2, prefixes: Vec<Tensor<3>>, cfg: &SearchConfig) -> Result<Vec<Vec<Hypothesis>>> {
    check_prefixes(&prefixes)?;
    let width = cfg.beam_width.max(1);
    let device = gpt.device();
    // Prefixes differ in length: each fills its own cache alone.
    let mut caches = vec![KvCache::default(); prefixes.len()];
    let mut beams = Vec::with_capacity(prefixes.len());
    for (prefix, cache) in prefixes.into_iter().zip(&mut caches) {
        let hidden = gpt.forward(prefix, cache)?;
        let (logp, _) = log_probs(gpt, hidden).await?;
        let started = Beams::start(&logp, width, cfg);
        cache.select(rows_tensor(&vec![0; started.tokens.len()], &device));
        beams.push(started);
    }
    for _ in 1..cfg.max_new_tokens {
        let active: Vec<usize> = (0..beams.len()).filter(|&i| !beams[i].finished(cfg)).collect();
        if active.is_empty() {
            break;
        }
        let ids: Vec<Vec<u32>> = active.iter().map(|&i| beams[i].last().collect()).collect();
        let (mut logp, vocab) = step_groups(gpt, &mut caches, &active, &ids).await?;
        let mut row = 0;
        for (&i, group_ids) in active.iter().zip(&ids) {
            let n = group_ids.len();
            let source = beams[i].advance(&mut logp[row * vocab..(row + n) * vocab], vocab, width, cfg);
            caches[i].select(rows_tensor(&source, &device));
            row += n;
        }
    }
    Ok(beams.into_iter().map(Beams::finish).collect())
}

/// ViECap `greedy_search`: argmax each step, stop after a stop token (kept) or `max_new_tokens`.
pub fn greedy_search(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Hypothesis> {
    block_on(greedy_search_async(gpt, prefix, cfg))
}

/// [`greedy_search`] with asynchronous read-backs (WebGPU in the browser).
pub async fn greedy_search_async(gpt: &Gpt2, prefix: Tensor<3>, cfg: &SearchConfig) -> Result<Hypothesis> {
    let mut all = greedy_search_many_async(gpt, vec![prefix], cfg).await?;
    all.pop().ok_or_else(|| Error::InvalidInput("greedy search produced no hypothesis".into()))
}

/// [`greedy_search`] for several prefixes at once, batched per step like [`beam_search_many`].
pub fn greedy_search_many(gpt: &Gpt2, prefixes: Vec<Tensor<3>>, cfg: &SearchConfig) -> Result<Vec<Hypothesis>> {
    block_on(greedy_search_many_async(gpt, prefixes, cfg))
}

/// [`greedy_search_many`] with asynchronous read-backs (WebGPU in the browser).
pub async fn greedy_search_many_async(gpt: &Gpt2, prefixes: Vec<Tensor<3>>, cfg: &SearchConfig) -> Result<Vec<Hypothesis>> {
    check_prefixes(&prefixes)?;
    let mut caches = vec![KvCache::default(); prefixes.len()];
    // Each prefix's log-probabilities for its next token (None once it has finished).
    let mut pending: Vec<Option<Vec<f32>>> = Vec::with_capacity(prefixes.len());
    for (prefix, cache) in prefixes.into_iter().zip(&mut caches) {
        let hidden = gpt.forward(prefix, cache)?;
        pending.push(Some(log_probs(gpt, hidden).await?.0));
    }
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); pending.len()];
    let mut totals = vec![0f32; pending.len()];
    for step in 0..cfg.max_new_tokens {
        let mut active = Vec::new();
        for (i, slot) in pending.iter_mut().enumerate() {
            let Some(logp) = slot.take() else { continue };
            let best = top_k(&logp, 1)[0];
            tokens[i].push(best as u32);
            totals[i] += logp[best];
            let stop = cfg.stop_ids.contains(&(best as u32)) && !cfg.ignore_stop;
            if !stop && step + 1 < cfg.max_new_tokens {
                active.push(i);
            }
        }
        if active.is_empty() {
            break;
        }
        let ids: Vec<Vec<u32>> = active.iter().map(|&i| vec![*tokens[i].last().expect("a token was just pushed")]).collect();
        let (logp, vocab) = step_groups(gpt, &mut caches, &active, &ids).await?;
        for (&i, row) in active.iter().zip(logp.chunks(vocab)) {
            pending[i] = Some(row.to_vec());
        }
    }
    Ok(tokens
        .into_iter()
        .zip(totals)
        .map(|(tokens, total)| {
            let n = tokens.len().max(1) as f32;
            Hypothesis { tokens, score: total / n }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_the_sorted_prefix() {
        // Ties (ids repeat every 37 values), NaN, infinities; k from 0 past the length, both the
        // one-pass and the selection path.
        let mut values: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 37) as f32 - 18.0).collect();
        values[100] = f32::NAN;
        values[200] = f32::INFINITY;
        values[300] = f32::NEG_INFINITY;
        let mut sorted: Vec<usize> = (0..values.len()).collect();
        sorted.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
        for k in [0, 1, 2, 5, 64, 65, 200, 5000, 6000] {
            assert_eq!(top_k(&values, k), sorted[..k.min(values.len())], "k = {k}");
        }
        assert!(top_k(&[], 3).is_empty());
    }
}
