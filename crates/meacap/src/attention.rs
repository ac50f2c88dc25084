//! Causal attention on the host for the CPU backend's decoding: one batch row's queries over
//! its cached keys and values, as plain slices (`models::gpt2` keeps the caches).
//!
//! burn's form is two batched matmuls and a softmax per group of rows, over caches it
//! concatenates anew at every step; here each row reads its cache where it grows. The sums are
//! the reference's: `q·k` times the scale, softmax as `exp(s - max) / sum`, then `Σ p v`, with
//! `exp` from [`crate::activations`] (≤ 2e-7 relative).

/// `out [seq][d] = softmax(q kᵀ · scale + causal mask) v` for one row: `q` holds `seq` query
/// rows `stride` apart (the first `d` of each, `heads` heads of `d / heads`), `keys` and
/// `values` are `[len][d]` position-major with the queries' own positions last, so query `i`
/// sees positions `..len - seq + i + 1`.
#[allow(clippy::too_many_arguments)]
pub fn causal_row(q: &[f32], stride: usize, keys: &[f32], values: &[f32], len: usize, heads: usize, d: usize, scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { causal_row_avx2(q, stride, keys, values, len, heads, d, scale, out) };
    }
    causal_row_any(q, stride, keys, values, len, heads, d, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn causal_row_avx2(q: &[f32], stride: usize, keys: &[f32], values: &[f32], len: usize, heads: usize, d: usize, scale: f32, out: &mut [f32]) {
    causal_row_any(q, stride, keys, values, len, heads, d, scale, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn causal_row_any(q: &[f32], stride: usize, keys: &[f32], values: &[f32], len: usize, heads: usize, d: usize, scale: f32, out: &mut [f32]) {
    let seq = out.len() / d.max(1);
    let dh = d / heads.max(1);
    assert!(seq <= len && keys.len() >= len * d && values.len() >= len * d && q.len() >= seq.saturating_sub(1) * stride + d, "causal_row: slice lengths");
    let mut scores = vec![0f32; len];
    for i in 0..seq {
        let visible = len - seq + i + 1;
        for h in 0..heads {
            let qh = &q[i * stride + h * dh..i * stride + (h + 1) * dh];
            let scores = &mut scores[..visible];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(qh, &keys[j * d + h * dh..j * d + (h + 1) * dh]) * scale;
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
    fn matches_f64_causal_attention() {
        // 3 new positions after 5 cached, 4 heads of 6 (a tail past the 8 lanes is 6 < 8), queries
        // strided as in c_attn's output.
        let (past, seq, heads, dh) = (5, 3, 4, 6);
        let (d, len, stride) = (heads * dh, past + seq, 3 * heads * dh);
        let (q, keys, vals) = (values(seq * stride, 1), values(len * d, 2), values(len * d, 3));
        let scale = 0.4f32;
        let mut out = vec![f32::NAN; seq * d];
        causal_row(&q, stride, &keys, &vals, len, heads, d, scale, &mut out);
        for i in 0..seq {
            for h in 0..heads {
                let visible = past + i + 1;
                let s: Vec<f64> = (0..visible)
                    .map(|j| (0..dh).map(|c| q[i * stride + h * dh + c] as f64 * keys[j * d + h * dh + c] as f64).sum::<f64>() * scale as f64)
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for c in 0..dh {
                    let want: f64 = (0..visible).map(|j| (s[j] - max).exp() / sum * vals[j * d + h * dh + c] as f64).sum();
                    let got = out[i * d + h * dh + c] as f64;
                    assert!((got - want).abs() <= 1e-6, "query {i} head {h} [{c}]: {got} vs {want}");
                }
            }
        }
    }
}
