//! Attention on the host for the CPU backend's decoding: one batch row's queries over its cached
//! keys and values ([`KvRows`], kept by `models::gpt2` and `models::t5`), on plain slices.
//!
//! burn's form is two batched matmuls and a softmax per group of rows, over caches it
//! concatenates anew at every step; here each row reads its cache where it grows. The sums are
//! the reference's: `q·k` times the scale, softmax as `exp(s - max) / sum`, then `Σ p v`, with
//! `exp` from [`crate::activations`] (≤ 2e-7 relative).

/// Additive terms of a row's attention scores, as the reference adds them after scaling.
#[derive(Clone, Copy, Default)]
pub struct Bias<'a> {
    /// `[heads][seq][len]`: T5's relative position bias.
    pub per_head: Option<&'a [f32]>,
    /// `[len]`: a padding mask over the keys (0 or a large negative).
    pub per_key: Option<&'a [f32]>,
}

/// `out [seq][d] = softmax(q kᵀ · scale + bias (+ causal mask)) v` for one row: `q` holds `seq`
/// query rows `stride` apart (the first `d` of each, `heads` heads of `d / heads`), `keys` and
/// `values` are `[len][d]` position-major. Causal: the queries are the last `seq` positions and
/// query `i` sees positions `..len - seq + i + 1` (masked ones contribute exactly nothing, as a
/// finite large-negative mask does after `exp`).
#[allow(clippy::too_many_arguments)]
pub fn row(q: &[f32], stride: usize, keys: &[f32], values: &[f32], len: usize, heads: usize, d: usize, scale: f32, causal: bool, bias: Bias, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { row_avx2(q, stride, keys, values, len, heads, d, scale, causal, bias, out) };
    }
    row_any(q, stride, keys, values, len, heads, d, scale, causal, bias, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_avx2(q: &[f32], stride: usize, keys: &[f32], values: &[f32], len: usize, heads: usize, d: usize, scale: f32, causal: bool, bias: Bias, out: &mut [f32]) {
    row_any(q, stride, keys, values, len, heads, d, scale, causal, bias, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_any(q: &[f32], stride: usize, keys: &[f32], values: &[f32], len: usize, heads: usize, d: usize, scale: f32, causal: bool, bias: Bias, out: &mut [f32]) {
    let seq = out.len() / d.max(1);
    let dh = d / heads.max(1);
    assert!(seq <= len && keys.len() >= len * d && values.len() >= len * d && q.len() >= seq.saturating_sub(1) * stride + d, "attention row: slice lengths");
    assert!(bias.per_head.is_none_or(|b| b.len() >= heads * seq * len) && bias.per_key.is_none_or(|b| b.len() >= len), "attention row: bias lengths");
    let mut scores = vec![0f32; len];
    for i in 0..seq {
        let visible = if causal { len - seq + i + 1 } else { len };
        for h in 0..heads {
            let qh = &q[i * stride + h * dh..i * stride + (h + 1) * dh];
            let scores = &mut scores[..visible];
            for (j, s) in scores.iter_mut().enumerate() {
                let mut v = dot(qh, &keys[j * d + h * dh..j * d + (h + 1) * dh]);
                // As the reference: no multiply for a scale of 1 (T5), then the bias terms.
                if scale != 1.0 {
                    v *= scale;
                }
                if let Some(b) = bias.per_head {
                    v += b[(h * seq + i) * len + j];
                }
                if let Some(b) = bias.per_key {
                    v += b[j];
                }
                *s = v;
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = crate::activations::exp(*s - max);
                sum += *s;
            }
            let o = &mut out[i * d + h * dh..i * d + (h + 1) * dh];
            o.fill(0.0);
            for (j, s) in scores.iter().enumerate() {
                let p = s / sum;
                for (o, v) in o.iter_mut().zip(&values[j * d + h * dh..j * d + (h + 1) * dh]) {
                    *o += p * v;
                }
            }
        }
    }
}

/// [`row`] for every row of one cache, on all cores: queries `q [rows][seq][stride]` (the first
/// `width` of each) against `kv`'s rows → `[rows][seq][width]`. `per_head` is shared by the rows,
/// `per_key` is `[rows][len]`.
#[allow(clippy::too_many_arguments)]
pub fn rows(q: &[f32], stride: usize, seq: usize, kv: &KvRows, heads: usize, scale: f32, causal: bool, per_head: Option<&[f32]>, per_key: Option<&[f32]>) -> Vec<f32> {
    let (d, len) = (kv.width, kv.len);
    let mut out = vec![0f32; kv.rows() * seq * d];
    crate::parallel::for_each_chunk(&mut out, (seq * d).max(1), |(r, out)| {
        let (keys, values) = kv.row(r);
        let bias = Bias { per_head, per_key: per_key.map(|b| &b[r * len..(r + 1) * len]) };
        row(&q[r * seq * stride..], stride, keys, values, len, heads, d, scale, causal, bias, out);
    });
    out
}

/// Keys and values per batch row, position-major (`[position][width]`), growing in place: the
/// CPU backend's attention caches. A step appends (tensors would be concatenated into a copy of
/// the whole cache per layer and step: 20 rows at 40 positions of GPT-2 ~60 MB per step), and
/// reordering rows (beam search, rows leaving a batch) moves them: a row taken twice is the only
/// copy, made with room to grow.
#[derive(Debug, Default)]
pub struct KvRows {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    width: usize,
    len: usize,
}

/// Positions of room a copied row gets, so the next steps append without moving it.
const ROOM: usize = 16;

impl KvRows {
    /// `rows` empty rows of `width` floats per position.
    pub fn new(rows: usize, width: usize) -> Self {
        Self { keys: vec![Vec::new(); rows], values: vec![Vec::new(); rows], width, len: 0 }
    }

    pub fn rows(&self) -> usize {
        self.keys.len()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `positions` positions to every row: row `r`'s keys and values are the
    /// `positions x width` floats `keys(r)` and `values(r)` give.
    pub fn append<'a>(&mut self, positions: usize, keys: impl Fn(usize) -> &'a [f32], values: impl Fn(usize) -> &'a [f32]) {
        for (r, (k, v)) in self.keys.iter_mut().zip(&mut self.values).enumerate() {
            k.extend_from_slice(&keys(r)[..positions * self.width]);
            v.extend_from_slice(&values(r)[..positions * self.width]);
        }
        self.len += positions;
    }

    /// Row `r`'s keys and values, `[len][width]` each.
    pub fn row(&self, r: usize) -> (&[f32], &[f32]) {
        (&self.keys[r], &self.values[r])
    }

    /// Keeps (and possibly repeats) rows: row `i` becomes the old row `rows[i]`. Panics on a row
    /// out of range (callers select among their own rows).
    pub fn select(&mut self, rows: &[usize]) {
        let mut uses = vec![0usize; self.keys.len()];
        rows.iter().for_each(|&r| uses[r] += 1);
        // Moved at a row's last use, copied before.
        let pick = |mut from: Vec<Vec<f32>>, mut uses: Vec<usize>| -> Vec<Vec<f32>> {
            rows.iter()
                .map(|&r| {
                    uses[r] -= 1;
                    if uses[r] == 0 { std::mem::take(&mut from[r]) } else { copy_row(&from[r], self.width) }
                })
                .collect()
        };
        self.keys = pick(std::mem::take(&mut self.keys), uses.clone());
        self.values = pick(std::mem::take(&mut self.values), uses);
    }
}

impl Clone for KvRows {
    fn clone(&self) -> Self {
        let copy = |rows: &[Vec<f32>]| rows.iter().map(|r| copy_row(r, self.width)).collect();
        Self { keys: copy(&self.keys), values: copy(&self.values), width: self.width, len: self.len }
    }
}

/// A row's copy with room for [`ROOM`] more positions of `width` floats.
fn copy_row(row: &[f32], width: usize) -> Vec<f32> {
    let mut copy = Vec::with_capacity(row.len() + ROOM * width);
    copy.extend_from_slice(row);
    copy
}

/// Dot product in 8 interleaved partial sums (vectorised; one fixed order on every CPU).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rowmatmul::tests::values;

    #[test]
    fn matches_f64_attention_with_masks_and_biases() {
        // 3 new positions after 5 cached, 4 heads of 6 (a tail past the 8 lanes is 6 < 8), queries
        // strided as in c_attn's output; causal or not, with and without T5's per-head bias and a
        // padding mask (one key masked with f32::MIN, as `padding_mask` does).
        let (past, seq, heads, dh) = (5, 3, 4, 6);
        let (d, len, stride) = (heads * dh, past + seq, 3 * heads * dh);
        let (q, keys, vals) = (values(seq * stride, 1), values(len * d, 2), values(len * d, 3));
        let per_head = values(heads * seq * len, 4);
        let mut per_key = vec![0f32; len];
        per_key[2] = f32::MIN;
        for (causal, scale, bias) in [
            (true, 0.4f32, Bias::default()),
            (false, 1.0, Bias { per_head: Some(&per_head), per_key: None }),
            (false, 1.0, Bias { per_head: None, per_key: Some(&per_key) }),
            (true, 1.0, Bias { per_head: Some(&per_head), per_key: Some(&per_key) }),
        ] {
            let mut out = vec![f32::NAN; seq * d];
            row(&q, stride, &keys, &vals, len, heads, d, scale, causal, bias, &mut out);
            for i in 0..seq {
                for h in 0..heads {
                    let visible = if causal { past + i + 1 } else { len };
                    let s: Vec<f64> = (0..visible)
                        .map(|j| {
                            let dot: f64 = (0..dh).map(|c| q[i * stride + h * dh + c] as f64 * keys[j * d + h * dh + c] as f64).sum();
                            dot * scale as f64
                                + bias.per_head.map_or(0.0, |b| b[(h * seq + i) * len + j] as f64)
                                + bias.per_key.map_or(0.0, |b| b[j] as f64)
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                    for c in 0..dh {
                        let want: f64 = (0..visible).map(|j| (s[j] - max).exp() / sum * vals[j * d + h * dh + c] as f64).sum();
                        let got = out[i * d + h * dh + c] as f64;
                        assert!((got - want).abs() <= 1e-6, "causal {causal}, query {i} head {h} [{c}]: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn kv_rows_append_reorder_and_copy() {
        let mut kv = KvRows::new(3, 2);
        let (k, v) = (values(6 * 2, 1), values(6 * 2, 2));
        kv.append(2, |r| &k[r * 4..], |r| &v[r * 4..]);
        assert_eq!((kv.rows(), kv.len()), (3, 2));
        let before: Vec<(Vec<f32>, Vec<f32>)> = (0..3).map(|r| (kv.row(r).0.to_vec(), kv.row(r).1.to_vec())).collect();
        kv.select(&[2, 0, 0, 2]);
        assert_eq!(kv.rows(), 4);
        for (i, &r) in [2, 0, 0, 2].iter().enumerate() {
            assert_eq!((kv.row(i).0.to_vec(), kv.row(i).1.to_vec()), before[r]);
        }
        let copy = kv.clone();
        kv.append(1, |_| &k[..2], |_| &v[..2]);
        assert_eq!((copy.len(), kv.len()), (2, 3));
        assert_eq!(kv.row(3).0[4..], k[..2]);
    }
}
