//! Row normalisations for the CPU backend, in place on plain slices, in one pass per statistic.
//!
//! burn's LayerNorm is nine tensor ops (two means, a centring, a square, a square root, a division,
//! scale and shift), each a full pass over the activations with a fresh output buffer: ~4 % of a
//! memory-build CLIP text pass, and per-op overhead in every decoding step. Same formulas, same
//! order of operations per element; sums in eight interleaved f32 lanes (vectorised), so results
//! agree with PyTorch's to ~1e-7 relative.

use crate::parallel::{for_each_chunk, TASK_ELEMENTS};

/// LayerNorm over rows of `dim` (biased variance, as PyTorch): `(x - mean) / sqrt(var + eps) *
/// weight + bias`.
pub fn layer_norm(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(bias.len() == dim && dim > 0 && x.len() % dim == 0, "layer_norm: shapes");
    by_rows(x, dim, |row| {
        let mean = sum(row.iter().copied()) / dim as f32;
        let var = sum(row.iter().map(|&v| (v - mean) * (v - mean))) / dim as f32;
        let std = (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) / std * w + b;
        }
    });
}

/// T5's RMS norm over rows of `dim`: `x / sqrt(mean(x^2) + eps) * weight` (no mean, no bias).
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    assert!(dim > 0 && x.len() % dim == 0, "rms_norm: shapes");
    by_rows(x, dim, |row| {
        let std = (sum(row.iter().map(|&v| v * v)) / dim as f32 + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v / std * w;
        }
    });
}

/// `f` on every `dim`-long row, whole rows split between the cores in tasks of ~[`TASK_ELEMENTS`].
fn by_rows(x: &mut [f32], dim: usize, f: impl Fn(&mut [f32]) + Send + Sync) {
    let task = (TASK_ELEMENTS / dim).max(1) * dim;
    for_each_chunk(x, task, |(_, rows)| rows.chunks_exact_mut(dim).for_each(&f));
}

/// Sum in eight interleaved lanes (the compiler keeps them in one vector register).
#[inline(always)]
fn sum(values: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0.0f32; 8];
    for (i, v) in values.enumerate() {
        lanes[i % 8] += v;
    }
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 reference of both norms on awkward rows (offset mean, tiny and huge values, a dim that
    /// is not a multiple of 8).
    #[test]
    fn norms_match_f64() {
        for dim in [1usize, 7, 384, 771] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.3) * if i % 3 == 0 { 1e3 } else { 1.0 } + 10.0).collect();
            let w: Vec<f32> = (0..dim).map(|i| 0.5 + (i % 13) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..dim).map(|i| (i % 5) as f32 * 0.01 - 0.02).collect();
            let (mut ln, mut rms) = (x.clone(), x.clone());
            layer_norm(&mut ln, &w, &b, 1e-5);
            rms_norm(&mut rms, &w, 1e-6);
            for r in 0..rows {
                let row: Vec<f64> = x[r * dim..(r + 1) * dim].iter().map(|&v| v as f64).collect();
                let mean = row.iter().sum::<f64>() / dim as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
                let ms = row.iter().map(|v| v * v).sum::<f64>() / dim as f64;
                for j in 0..dim {
                    let want = (row[j] - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64;
                    let got = ln[r * dim + j] as f64;
                    assert!((got - want).abs() <= 2e-5 * want.abs().max(1.0), "layer_norm dim {dim} [{r},{j}]: {got} vs {want}");
                    let want = row[j] / (ms + 1e-6).sqrt() * w[j] as f64;
                    let got = rms[r * dim + j] as f64;
                    assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-3), "rms_norm dim {dim} [{r},{j}]: {got} vs {want}");
                }
            }
        }
    }
}
