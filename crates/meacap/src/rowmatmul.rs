//! Matmul for the CPU backend: `x [rows, d_in] · W [d_in, d_out] (+ bias)`.
//!
//! Model weights are packed once at load ([`PackedMatrix`]) into panels of 16 output features
//! that every kernel reads as sequential streams. Below [`PACKED_MIN_ROWS`] rows (decoding steps,
//! GPT-2's prompt, the mapping network, and encoder passes: an image's 50 tokens, 5 captions x 20
//! tokens, four images' 400) register tiles of up to 24 rows walk each panel ([`few_rows`]):
//! bound by reading the weights from memory at a few rows, by the FMAs at many. From there on
//! (memory-build batches of 2,560 rows) a cache-blocked GEMM ([`packed`]) takes over. General
//! GEMM kernels pack and tile for the many-row case at every call and reach ~40 % of the memory
//! bandwidth on decoding shapes.
//!
//! [`matmul_rows`] streams row-major weights as they are stored, for data that is not a model
//! weight: a memory bank's rows (f32 or f16), which queries read a few at a time.
//!
//! Pure slices in, `Vec` out: no tensor types here; `models::Linear` and the memory bank's CPU
//! store decide when to use them.

/// Rows multiplied together in one pass over the weights (register blocking).
pub const MAX_ROWS: usize = 8;
/// From this many rows on [`PackedMatrix::matmul`] runs the cache-blocked GEMM; below, the
/// few-rows tiles (24 accumulators against the GEMM tile's 6: measured on 2 AVX-512 cores,
/// 1.3-1.7x faster at 32-60 rows, 1.1-1.4x at 400 (CLIP image, 4 images: 279 -> 208 ms), even
/// at 500-1,000; the GEMM is ~8 % ahead at 2,560 rows, where it splits the rows between cores).
const PACKED_MIN_ROWS: usize = 512;

/// Output features per parallel task: large enough to amortise scheduling, small enough that two
/// cores share the vocabulary projections evenly.
const TASK_OUTPUTS: usize = 256;
/// Weight bytes per task when several row blocks reuse them (half a typical L2).
const L2_BYTES: usize = 256 << 10;
const LANES: usize = 8;
/// How far ahead of the weights being read to prefetch: the hardware prefetcher alone falls
/// behind (measured: 5 rows x T5's lm_head went from ~9 to ~14 GB/s; 1 query over a 3.3 M x 512
/// f16 memory from ~11 to ~13.5 GB/s, 285-320 ms to 235-250 ms).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 8192;

/// What the weights may be stored as: f32, or f16 widened on the fly (half the bytes to stream,
/// e.g. an f16 memory bank).
pub trait WeightElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// The kernel for this element type (the SIMD form when the CPU has it).
    #[doc(hidden)]
    fn kernel(x: &[f32], rows: usize, d_in: usize, w: &[Self], row_stride: usize, features: usize, out: &mut [f32]);
}

/// `x [rows, d_in]` (row-major, contiguous) times `W [d_in, d_out]` stored output-major: element
/// `(k, n)` at `w[n * row_stride + k]`, i.e. storage rows are output features (PyTorch
/// `nn.Linear`'s `[out, in]` through a transposed view, tied embeddings, memory-bank rows).
/// Returns `[rows, d_out]` row-major. Rows beyond `MAX_ROWS` are taken in blocks, each
/// task's weights staying in cache across the blocks (for many rows of a weight used again and
/// again, pack it: [`PackedMatrix`]). Panics if a slice is too short (a caller bug: callers check
/// the shapes of what they unpack).
pub fn matmul_rows<W: WeightElem>(x: &[f32], rows: usize, d_in: usize, w: &[W], row_stride: usize, d_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    assert!(rows >= 1, "matmul_rows: no rows");
    assert_eq!(x.len(), rows * d_in, "matmul_rows: x is not [rows, d_in]");
    assert!(row_stride >= d_in, "matmul_rows: weight rows overlap");
    assert!(w.len() >= d_out.saturating_sub(1) * row_stride + d_in, "matmul_rows: weight storage too short");
    if let Some(b) = bias {
        assert_eq!(b.len(), d_out, "matmul_rows: bias is not [d_out]");
    }
    // With many row blocks a task's weights must stay in L2 between blocks.
    let max_outputs = if rows <= MAX_ROWS { TASK_OUTPUTS } else { (L2_BYTES / (d_in * std::mem::size_of::<W>()).max(1)).clamp(8, TASK_OUTPUTS) };
    // At least a few tasks per thread so the last ones even out: 768 outputs in tasks of 256 are
    // 3 tasks on 2 cores, one core idle for a third of the time (measured: 5 rows x 768 x 768
    // streamed at 11.8 GB/s against 14-15 for wider layers).
    let tasks = d_out.div_ceil(max_outputs).max(4 * threads());
    let task_outputs = d_out.div_ceil(tasks).next_multiple_of(8).clamp(8, max_outputs);
    // Many rows go in blocks of 6: with two weight rows per pass that is 12 accumulators and
    // 8 loads per 12 multiply-adds (blocks of 8 take one weight row per pass: 9 per 8).
    let block_rows = if rows <= MAX_ROWS { rows } else { 6 };
    let blocks = move || (0..rows).step_by(block_rows).map(move |r0| (r0, (rows - r0).min(block_rows)));

    // Each task writes, per row block, a feature-major `[task outputs, block rows]` slab;
    // rearranged to `[rows, d_out]` below (for one row the layouts coincide).
    let mut by_task = vec![0.0f32; d_out * rows];
    let task = |(t, slab): (usize, &mut [f32])| {
        let n0 = t * task_outputs;
        let m = slab.len() / rows;
        let mut at = 0;
        for (r0, rb) in blocks() {
            W::kernel(&x[r0 * d_in..(r0 + rb) * d_in], rb, d_in, &w[n0 * row_stride..], row_stride, m, &mut slab[at..at + m * rb]);
            at += m * rb;
        }
    };
    for_each_chunk(&mut by_task, task_outputs * rows, task);

    if rows == 1 && bias.is_none() {
        return by_task;
    }
    let mut out = vec![0.0f32; rows * d_out];
    for (t, slab) in by_task.chunks(task_outputs * rows).enumerate() {
        let n0 = t * task_outputs;
        let m = slab.len() / rows;
        let mut at = 0;
        for (r0, rb) in blocks() {
            for (n, feature) in slab[at..at + m * rb].chunks_exact(rb).enumerate() {
                let b = bias.map_or(0.0, |b| b[n0 + n]);
                for (r, v) in feature.iter().enumerate() {
                    out[(r0 + r) * d_out + n0 + n] = v + b;
                }
            }
            at += m * rb;
        }
    }
    out
}

mod few_rows;
mod packed;

pub use packed::PackedMatrix;

use crate::parallel::{for_each_chunk, threads};


/// Calls `$f::<R>` with `R = rows` (1..=8) as a compile-time constant.
macro_rules! by_rows {
    ($f:ident, $rows:expr, $($arg:expr),*) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<8>($($arg),*),
        }
    };
}

impl WeightElem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn kernel(x: &[f32], rows: usize, d_in: usize, w: &[f32], row_stride: usize, features: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { by_rows!(rows_avx2_f32, rows, x, d_in, w, row_stride, features, out) };
        }
        by_rows!(rows_portable, rows, x, d_in, w, row_stride, features, out)
    }
}

impl WeightElem for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn kernel(x: &[f32], rows: usize, d_in: usize, w: &[half::f16], row_stride: usize, features: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
            return unsafe { by_rows!(rows_avx2_f16, rows, x, d_in, w, row_stride, features, out) };
        }
        by_rows!(rows_portable, rows, x, d_in, w, row_stride, features, out)
    }
}

/// Portable form (wasm simd128, SSE2, other CPUs): `LANES` partial sums per row, as fixed-width
/// arrays the compiler can vectorise.
fn rows_portable<const R: usize>(x: &[f32], d_in: usize, w: &[impl WeightElem], row_stride: usize, features: usize, out: &mut [f32]) {
    let body = d_in - d_in % LANES;
    for n in 0..features {
        let wr = &w[n * row_stride..n * row_stride + d_in];
        let mut acc = [[0.0f32; LANES]; R];
        for k in (0..body).step_by(LANES) {
            let wv: [f32; LANES] = std::array::from_fn(|l| wr[k + l].to_f32());
            for (r, acc) in acc.iter_mut().enumerate() {
                let xr = &x[r * d_in + k..r * d_in + k + LANES];
                for l in 0..LANES {
                    acc[l] += xr[l] * wv[l];
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let xr = &x[r * d_in..(r + 1) * d_in];
            let tail: f32 = (body..d_in).map(|k| xr[k] * wr[k].to_f32()).sum();
            out[n * R + r] = acc.iter().sum::<f32>() + tail;
        }
    }
}

/// AVX2 + FMA: `G` weight rows at a time, so each 8-wide load of `x` feeds `G` fused
/// multiply-adds and `G x R` independent sums hide the FMA latency (at most 16 registers:
/// G = 4 for R <= 2, 2 for R <= 6, else 1). `$load` widens 8 stored elements to f32 lanes.
/// Every output is summed in the same order whatever `G`, so equal rows give equal results.
macro_rules! rows_avx2 {
    ($name:ident, $group:ident, $elem:ty, $features:literal, $load:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(x: &[f32], d_in: usize, w: &[$elem], row_stride: usize, features: usize, out: &mut [f32]) {
            let mut n = 0;
            // SAFETY (all calls): the caller's CPU has `$features`; n + G <= features.
            while n < features {
                let left = features - n;
                n += if R == 1 && left >= 8 {
                    unsafe { $group::<R, 8>(x, d_in, w, row_stride, n, out) }
                } else if R <= 2 && left >= 4 {
                    unsafe { $group::<R, 4>(x, d_in, w, row_stride, n, out) }
                } else if R <= 6 && left >= 2 {
                    unsafe { $group::<R, 2>(x, d_in, w, row_stride, n, out) }
                } else {
                    unsafe { $group::<R, 1>(x, d_in, w, row_stride, n, out) }
                };
            }
        }

        /// Outputs `n..n + G` for all `R` rows; returns `G`.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn $group<const R: usize, const G: usize>(x: &[f32], d_in: usize, w: &[$elem], row_stride: usize, n: usize, out: &mut [f32]) -> usize {
            use std::arch::x86_64::*;
            let body = d_in - d_in % LANES;
            let xp = x.as_ptr();
            let wrows: [&[$elem]; G] = std::array::from_fn(|g| &w[(n + g) * row_stride..(n + g) * row_stride + d_in]);
            let mut acc = [[_mm256_setzero_ps(); R]; G];
            let mut k = 0;
            while k < body {
                // SAFETY: k + 8 <= body <= d_in, the length of every weight row taken and of
                // every row of x.
                unsafe {
                    let wv: [__m256; G] = std::array::from_fn(|g| $load(wrows[g].as_ptr().add(k)));
                    for row in &wrows {
                        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(k).cast::<i8>().wrapping_add(PREFETCH_BYTES));
                    }
                    for r in 0..R {
                        let xv = _mm256_loadu_ps(xp.add(r * d_in + k));
                        for g in 0..G {
                            acc[g][r] = _mm256_fmadd_ps(xv, wv[g], acc[g][r]);
                        }
                    }
                }
                k += LANES;
            }
            for g in 0..G {
                for r in 0..R {
                    let mut lanes = [0.0f32; LANES];
                    // SAFETY: `lanes` holds 8 floats.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[g][r]) };
                    let xr = &x[r * d_in..(r + 1) * d_in];
                    let tail: f32 = (body..d_in).map(|k| xr[k] * wrows[g][k].to_f32()).sum();
                    out[(n + g) * R + r] = lanes.iter().sum::<f32>() + tail;
                }
            }
            G
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load8_f32(p: *const f32) -> std::arch::x86_64::__m256 {
    // SAFETY: the caller passes a pointer to 8 readable floats.
    unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8_f16(p: *const half::f16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes a pointer to 8 readable f16 (16 bytes).
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
}

rows_avx2!(rows_avx2_f32, group_avx2_f32, f32, "avx2,fma", load8_f32);
rows_avx2!(rows_avx2_f16, group_avx2_f16, half::f16, "avx2,fma,f16c", load8_f16);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (xorshift), shared with the packed kernel's tests.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `x · W (+ bias)` in f64, `W` output-major with rows `row_stride` apart.
    fn reference(x: &[f32], rows: usize, d_in: usize, w: &[f32], row_stride: usize, d_out: usize, bias: Option<&[f32]>) -> Vec<f64> {
        let mut out = Vec::with_capacity(rows * d_out);
        for r in 0..rows {
            for n in 0..d_out {
                let dot: f64 = (0..d_in).map(|k| x[r * d_in + k] as f64 * w[n * row_stride + k] as f64).sum();
                out.push(bias.map_or(0.0, |b| b[n] as f64) + dot);
            }
        }
        out
    }

    /// The first `d_in` of every `row_stride` values: a strided view's rows, compacted.
    fn rows_of(w: &[f32], row_stride: usize, d_in: usize) -> Vec<f32> {
        w.chunks(row_stride).flat_map(|row| &row[..d_in]).copied().collect()
    }

    /// fp32 rounding of `d_in` products: ~1e-6 relative per term, growing as sqrt(d_in).
    fn assert_close(got: &[f32], want: &[f64], d_in: usize, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((*g as f64 - w).abs() <= 2e-6 * (d_in as f64).sqrt() + 1e-6, "{what} [{i}]: {g} vs {w}");
        }
    }

    const ROW_COUNTS: [usize; 17] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 20, 24, 25, 31, 131, PACKED_MIN_ROWS - 1, PACKED_MIN_ROWS];

    #[test]
    fn matches_f64_reference_for_every_row_count() {
        // Odd sizes exercise the lane tail, edge panels and partial tasks; a row stride wider
        // than the row is a view into a larger buffer.
        for &(d_in, d_out) in &[(1, 1), (13, 7), (67, 301), (256, 513), (768, 300)] {
            let row_stride = d_in + 3;
            let w = values(d_out * row_stride, 7);
            let bias = values(d_out, 99);
            let packed = PackedMatrix::from_output_major(rows_of(&w, row_stride, d_in), d_in, d_out);
            for rows in ROW_COUNTS {
                let x = values(rows * d_in, 1 + rows as u32);
                for b in [None, Some(&bias[..])] {
                    let want = reference(&x, rows, d_in, &w, row_stride, d_out, b);
                    assert_close(&matmul_rows(&x, rows, d_in, &w, row_stride, d_out, b), &want, d_in, &format!("streamed, rows {rows} {d_in}x{d_out}"));
                    assert_close(&packed.matmul(&x, rows, b), &want, d_in, &format!("packed, rows {rows} {d_in}x{d_out}"));
                }
            }
        }
    }

    /// Enough rows for the packed GEMM to split them between tasks (memory-build batches) on
    /// [`THREADS`] threads.
    fn many_rows() -> usize {
        2 * 120 * THREADS + 7
    }

    /// Worker threads for the tests that cover every kernel path: with 8, 512-1,919 rows take
    /// the GEMM split by output features (on 2 cores every GEMM call splits the rows).
    const THREADS: usize = 8;

    fn on_threads<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().expect("a thread pool").install(f)
    }

    #[test]
    fn a_row_gives_the_same_bits_whatever_rows_come_with_it() {
        // d_in over one depth slice (256) and not a multiple of 8; d_out leaves an edge panel;
        // the row counts take every kernel: few-rows tiles (one block, blocks of 24, padded
        // blocks), the GEMM split by features and by row chunks with an edge tile.
        let (d_in, d_out, row_stride) = (300, 37, 301);
        let w = values(d_out * row_stride, 17);
        let bias = values(d_out, 23);
        let packed = PackedMatrix::from_output_major(rows_of(&w, row_stride, d_in), d_in, d_out);
        let rows = many_rows();
        let x = values(rows * d_in, 29);
        let all = on_threads(|| packed.matmul(&x, rows, Some(&bias)));
        assert_close(&all, &reference(&x, rows, d_in, &w, row_stride, d_out, Some(&bias)), d_in, "many rows");
        let first = rows / 4 - 1;
        for some in [1, 5, 20, 25, 40, 150, PACKED_MIN_ROWS - 1, PACKED_MIN_ROWS + 100] {
            let part = on_threads(|| packed.matmul(&x[first * d_in..(first + some) * d_in], some, Some(&bias)));
            assert_eq!(part, all[first * d_out..(first + some) * d_out], "{some} rows");
            // The thread count changes nothing either.
            assert_eq!(part, packed.matmul(&x[first * d_in..(first + some) * d_in], some, Some(&bias)), "{some} rows, default threads");
        }
    }

    #[test]
    fn input_major_weights_pack_as_their_transpose() {
        let (d_in, d_out) = (45, 70);
        let w = values(d_out * d_in, 5);
        let transposed: Vec<f32> = (0..d_in * d_out).map(|i| w[(i % d_out) * d_in + i / d_out]).collect();
        let a = PackedMatrix::from_output_major(w.clone(), d_in, d_out);
        let b = PackedMatrix::from_input_major(&transposed, d_in, d_out);
        let x = values(3 * d_in, 8);
        assert_eq!(a.matmul(&x, 3, None), b.matmul(&x, 3, None));
        assert_eq!(b.to_output_major(), w);
        assert_eq!(a.output_rows(&[69, 0, 17]), [&w[69 * d_in..70 * d_in], &w[..d_in], &w[17 * d_in..18 * d_in]].concat());
    }

    #[test]
    fn no_output_features_is_an_empty_result() {
        for rows in [3, PACKED_MIN_ROWS + 1, many_rows()] {
            assert!(matmul_rows(&values(rows * 4, 5), rows, 4, &values(4, 6), 4, 0, None).is_empty());
            assert!(PackedMatrix::from_output_major(Vec::new(), 4, 0).matmul(&values(rows * 4, 5), rows, None).is_empty());
        }
        // No inputs: the bias alone.
        let empty = PackedMatrix::from_input_major(&[], 0, 3);
        assert_eq!(empty.matmul(&[], 2, Some(&[1.0, 2.0, 3.0])), [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn f16_weights_match_their_f32_widening() {
        let (d_in, d_out, row_stride) = (77, 600, 80);
        let w16: Vec<half::f16> = values(d_out * row_stride, 3).into_iter().map(half::f16::from_f32).collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        for rows in [1, 5] {
            let x = values(rows * d_in, 11);
            let a = matmul_rows(&x, rows, d_in, &w16, row_stride, d_out, None);
            let b = matmul_rows(&x, rows, d_in, &w32, row_stride, d_out, None);
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
