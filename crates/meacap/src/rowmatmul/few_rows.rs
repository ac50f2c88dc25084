//! The few-rows case over packed weights: decoding steps (5 beams, or 20 for four images),
//! GPT-2's prompt, the mapping network, encoder passes up to a few hundred rows.
//!
//! At a few rows every weight is used only a few times, so a step is bound by reading the
//! weights once from DRAM and then by the FMAs; with more rows, blocks of up to 24 rows walk each
//! panel in turn (from L2 after the first) and the FMAs bound it. Each 16-feature panel is read in storage order (`[k][NR]`, one
//! sequential stream) while a register tile of `R` rows x `G` panels walks `k`: one weight load
//! feeds `R` FMAs and one broadcast of `x` feeds `G`. On the row-major weights the streaming
//! kernel needs a load of `x` and of the weights per FMA pair and a horizontal sum at the end;
//! here one image's step (5 rows) streamed the weights 1.15-1.4x faster and four images' (20 rows)
//! ran 1.7-2x faster (measured on an AVX-512 VM, 2 cores, GPT-2's matrices from DRAM).
//!
//! Each output is one FMA chain over `k` from zero, then `+ bias`: the sum the register-tiled
//! kernel ([`super::packed`]) computes, so a row's result does not depend on how many rows came
//! with it (one image or a batch), nor on the SIMD width.

use super::packed::NR;
use crate::parallel::{for_each_chunk, for_each_index, threads};

/// Output panels per parallel task at most: a vocabulary projection (3,141 panels) is split
/// finely enough for two cores to finish together.
const TASK_PANELS: usize = 64;
/// How far ahead in a panel to prefetch (4 KiB: the hardware prefetcher alone falls behind).
#[cfg(target_arch = "x86_64")]
const PREFETCH_FLOATS: usize = 1024;

/// `x [rows, d_in] · panels → [rows, d_out] (+ bias)`, `panels` as [`super::PackedMatrix`] keeps
/// them.
pub(super) fn matmul(x: &[f32], rows: usize, d_in: usize, panels: &[f32], d_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * d_out];
    if d_out == 0 {
        return out;
    }
    let simd = Simd::detect();
    // Row blocks of one size (the last padded with zero rows), each at most what the tile holds.
    let blocks = rows.div_ceil(simd.max_rows());
    let block_rows = rows.div_ceil(blocks);
    // Each block k-major (`[d_in][block rows]`): the tile broadcasts one row after another.
    let mut x_blocks = vec![0.0f32; blocks * d_in * block_rows];
    for_each_chunk(&mut x_blocks, d_in * block_rows, |(b, xk)| {
        for r in 0..(rows - b * block_rows).min(block_rows) {
            let row = b * block_rows + r;
            for (k, v) in x[row * d_in..(row + 1) * d_in].iter().enumerate() {
                xk[k * block_rows + r] = *v;
            }
        }
    });
    let n_panels = d_out.div_ceil(NR);
    // At least four tasks per thread so the last ones even out.
    let tasks = n_panels.div_ceil(TASK_PANELS).max(4 * threads()).min(n_panels);
    let task_panels = n_panels.div_ceil(tasks);
    let tasks = n_panels.div_ceil(task_panels);
    let group = simd.panels_per_tile(block_rows);
    let out_at = SharedOut(out.as_mut_ptr());
    let task = |t: usize| {
        let (p0, p1) = (t * task_panels, ((t + 1) * task_panels).min(n_panels));
        let mut tile = [0.0f32; MAX_TILE];
        let mut p = p0;
        while p < p1 {
            // Whole groups, then single panels for the task's last few.
            let g = if p1 - p >= group { group } else { 1 };
            let wp = &panels[p * d_in * NR..(p + g) * d_in * NR];
            let (j0, j1) = (p * NR, ((p + g) * NR).min(d_out));
            for (b, xk) in x_blocks.chunks_exact(d_in * block_rows).enumerate() {
                let tile = &mut tile[..block_rows * g * NR];
                simd.tile(block_rows, g, xk, wp, d_in, tile);
                // Tile `[R][G][NR]` → features j0..j1 of the block's real rows, plus the bias.
                for r in 0..(rows - b * block_rows).min(block_rows) {
                    let row = b * block_rows + r;
                    let sums = &tile[r * g * NR..r * g * NR + (j1 - j0)];
                    // SAFETY: this task alone writes features p0*NR .. p1*NR of every row (tasks
                    // own disjoint panel ranges); row < rows and j1 <= d_out: in bounds.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_at.at(row * d_out + j0), j1 - j0) };
                    match bias {
                        Some(b) => dst.iter_mut().zip(sums).zip(&b[j0..j1]).for_each(|((o, s), b)| *o = s + b),
                        None => dst.copy_from_slice(sums),
                    }
                }
            }
            p += g;
        }
    };
    for_each_index(tasks, task);
    out
}

/// The result's base pointer, shared by tasks that write disjoint columns.
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul`), and `out` outlives them.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method, so closures capture the (Sync) wrapper rather than its raw pointer field.
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Floats in the largest tile any form uses (`R x G x NR`).
const MAX_TILE: usize = 32 * NR;

/// The widest tile the CPU runs, chosen once per call.
#[derive(Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Simd {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    }

    /// Rows per tile at most (accumulators plus weight and broadcast registers fit the register
    /// file: 32 x 16 lanes for AVX-512, 16 x 8 for AVX2).
    fn max_rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => 24,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => 6,
            Simd::Portable => 8,
        }
    }

    /// Panels per tile for `rows` rows: as many as the registers hold, so one broadcast feeds
    /// several FMAs and enough independent sums hide the FMA latency.
    fn panels_per_tile(self, rows: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => avx512_panels(rows),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => avx2_panels(rows),
            Simd::Portable => {
                // One panel per row block: the compiler vectorises the 16 lanes of a panel.
                let _ = rows;
                1
            }
        }
    }

    /// `tile [rows][g][NR] = xk [d_in][rows]ᵀ · wp [g][d_in][NR]`.
    fn tile(self, rows: usize, g: usize, xk: &[f32], wp: &[f32], d_in: usize, tile: &mut [f32]) {
        assert!(xk.len() == d_in * rows && wp.len() == g * d_in * NR && tile.len() == rows * g * NR, "few_rows tile: slice lengths");
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F detected; lengths asserted above.
            Simd::Avx512 => unsafe { avx512_tile(rows, g, xk, wp, d_in, tile) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA detected; lengths asserted above.
            Simd::Avx2 => unsafe { avx2_tile(rows, g, xk, wp, d_in, tile) },
            Simd::Portable => portable_tile(rows, g, xk, wp, d_in, tile),
        }
    }
}

/// `R * G` accumulators + `G` weights + 1 broadcast within 32 registers, at most 8 panels.
#[cfg(target_arch = "x86_64")]
const fn avx512_panels(rows: usize) -> usize {
    let g = 31 / (rows + 1);
    if g > 8 { 8 } else if g < 1 { 1 } else { g }
}

/// `2 R G` accumulators + `2 G` weights + 1 broadcast within 16 registers.
#[cfg(target_arch = "x86_64")]
const fn avx2_panels(rows: usize) -> usize {
    let g = 15 / (2 * rows + 2);
    if g < 1 { 1 } else { g }
}

fn portable_tile(rows: usize, g: usize, xk: &[f32], wp: &[f32], d_in: usize, tile: &mut [f32]) {
    for p in 0..g {
        let panel = &wp[p * d_in * NR..(p + 1) * d_in * NR];
        for r in 0..rows {
            let mut acc = [0.0f32; NR];
            for (k, w) in panel.chunks_exact(NR).enumerate() {
                let xv = xk[k * rows + r];
                for (a, w) in acc.iter_mut().zip(w) {
                    *a += xv * w;
                }
            }
            tile[(r * g + p) * NR..(r * g + p + 1) * NR].copy_from_slice(&acc);
        }
    }
}

/// Calls `$f::<R, G>` for the runtime `rows` with `G` the form's panel count for `R` when `g`
/// equals it, else 1 (a task's last panels).
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch {
    ($f:ident, $panels:ident, $rows:expr, $g:expr, $args:tt, [$($r:literal)*]) => {
        match $rows {
            $($r => if $g == $panels($r) { $f::<$r, { $panels($r) }> $args } else { $f::<$r, 1> $args },)*
            _ => unreachable!("tile rows above the form's maximum"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_tile(rows: usize, g: usize, xk: &[f32], wp: &[f32], d_in: usize, tile: &mut [f32]) {
    // SAFETY: as the caller's (AVX-512F present, lengths checked).
    unsafe { dispatch!(avx512_kernel, avx512_panels, rows, g, (xk, wp, d_in, tile), [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24]) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile(rows: usize, g: usize, xk: &[f32], wp: &[f32], d_in: usize, tile: &mut [f32]) {
    // SAFETY: as the caller's (AVX2 and FMA present, lengths checked).
    unsafe { dispatch!(avx2_kernel, avx2_panels, rows, g, (xk, wp, d_in, tile), [1 2 3 4 5 6]) }
}

/// One 16-lane register per (row, panel).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_kernel<const R: usize, const G: usize>(xk: &[f32], wp: &[f32], d_in: usize, tile: &mut [f32]) {
    use std::arch::x86_64::*;
    let (x, w, t) = (xk.as_ptr(), wp.as_ptr(), tile.as_mut_ptr());
    // SAFETY (all pointer reads and writes): xk holds d_in * R floats, wp G * d_in * NR, tile
    // R * G * NR (checked by `Simd::tile`); prefetches may point past the panel (harmless hints).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); G]; R];
        for k in 0..d_in {
            let wv: [__m512; G] = std::array::from_fn(|p| _mm512_loadu_ps(w.add((p * d_in + k) * NR)));
            for p in 0..G {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((p * d_in + k) * NR + PREFETCH_FLOATS).cast::<i8>());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(k * R + r));
                for (a, wv) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(t.add((r * G + p) * NR), *a);
            }
        }
    }
}

/// Two 8-lane registers per (row, panel): the same FMAs in the same order as the AVX-512 form.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_kernel<const R: usize, const G: usize>(xk: &[f32], wp: &[f32], d_in: usize, tile: &mut [f32]) {
    use std::arch::x86_64::*;
    let (x, w, t) = (xk.as_ptr(), wp.as_ptr(), tile.as_mut_ptr());
    // SAFETY: as in `avx512_kernel`.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; G]; R];
        for k in 0..d_in {
            let wv: [[__m256; 2]; G] = std::array::from_fn(|p| {
                let at = w.add((p * d_in + k) * NR);
                [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))]
            });
            for p in 0..G {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((p * d_in + k) * NR + PREFETCH_FLOATS).cast::<i8>());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*x.add(k * R + r));
                for (a, wv) in acc.iter_mut().zip(&wv) {
                    a[0] = _mm256_fmadd_ps(xv, wv[0], a[0]);
                    a[1] = _mm256_fmadd_ps(xv, wv[1], a[1]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(t.add((r * G + p) * NR), a[0]);
                _mm256_storeu_ps(t.add((r * G + p) * NR + 8), a[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rowmatmul::tests::values;

    /// Every form this CPU has gives the same tile bit for bit for every row count and panel
    /// group the dispatch uses (AVX2 and AVX-512 are the same FMAs in the same order), and each
    /// is the one sum per output it claims to be.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_tiles_are_identical() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let d_in = 37;
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        for rows in 1..=24 {
            for g in [1, avx2_panels(rows), avx512_panels(rows)] {
                let (xk, wp) = (values(d_in * rows, rows as u32), values(g * d_in * NR, 7 + g as u32));
                // The reference: one FMA chain per output (f32::mul_add rounds once, as FMA).
                let mut want = vec![0.0f32; rows * g * NR];
                for r in 0..rows {
                    for p in 0..g {
                        for j in 0..NR {
                            want[(r * g + p) * NR + j] = (0..d_in).fold(0.0f32, |a, k| xk[k * rows + r].mul_add(wp[(p * d_in + k) * NR + j], a));
                        }
                    }
                }
                if rows <= Simd::Portable.max_rows() && g == 1 {
                    // Portable: the same order, multiply then add (no fused form in scalar Rust).
                    let mut got = vec![f32::NAN; want.len()];
                    Simd::Portable.tile(rows, g, &xk, &wp, d_in, &mut got);
                    let unfused: Vec<f32> = (0..rows * NR).map(|i| (0..d_in).fold(0.0f32, |a, k| a + xk[k * rows + i / NR] * wp[k * NR + i % NR])).collect();
                    assert_eq!(got, unfused, "portable rows {rows}");
                }
                if rows <= Simd::Avx2.max_rows() && (g == 1 || g == avx2_panels(rows)) {
                    let mut got = vec![f32::NAN; want.len()];
                    Simd::Avx2.tile(rows, g, &xk, &wp, d_in, &mut got);
                    assert_eq!(got, want, "AVX2 rows {rows} panels {g}");
                }
                if avx512 && (g == 1 || g == avx512_panels(rows)) {
                    let mut got = vec![f32::NAN; want.len()];
                    Simd::Avx512.tile(rows, g, &xk, &wp, d_in, &mut got);
                    assert_eq!(got, want, "AVX-512 rows {rows} panels {g}");
                }
            }
        }
    }
}
