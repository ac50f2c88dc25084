//! Weights packed once, at load ([`PackedMatrix`]), and the many-rows case over them: a
//! register-tiled GEMM (the BLIS scheme) for memory-build batches (thousands of rows).
//!
//! The weights are kept as panels of [`NR`] output features, each stored k-major (`[k][NR]`), so
//! every kernel reads a panel as one sequential stream and no call repacks them (packing per call
//! cost more than it saved below ~20 rows). Few rows go to [`super::few_rows`].
//!
//! With many rows every weight is used many times, so the work is arithmetic, not memory
//! traffic. `x` is repacked into panels of [`MR`] rows stored k-major (`[k][MR]`), and a micro-kernel
//! keeps an `MR x NR` tile of outputs in registers (AVX2: 12 accumulators, 2 weight loads and 6
//! broadcasts per 12 FMAs; AVX-512: one register per tile row, the same FMAs in the same order)
//! while it walks `k`. The depth is cut into [`KC`]-long slices so a
//! weight panel slice and the row panels it meets stay in L1.
//!
//! Tasks split the output features (the tiles go to a slab gathered afterwards) until there are
//! two [`ROW_CHUNK`]-row chunks per thread; from there on they split the rows (tiles written in
//! place), see [`matmul_by_row_chunks`].
//!
//! Every output is one sum over `k` in increasing order, accumulated in one place (carried
//! through memory between depth slices), so the result depends neither on the thread count nor
//! on how rows are blocked.

use crate::parallel::{for_each_chunk, threads};

/// Rows per register tile.
const MR: usize = 6;
/// Output features per panel and per register tile (one AVX-512 vector, two AVX2 ones).
pub(super) const NR: usize = 16;
/// Depth slice: a `[KC][NR]` weight panel slice is 16 KiB.
const KC: usize = 256;
/// Rows per pass over a task's packed weights: their packed slices (`KC x 120` floats,
/// 120 KiB) stay in L2 while every weight panel of the task meets them.
const ROW_CHUNK: usize = 120;
/// Weight panel bytes per task: half a typical 512 KiB L2 (the row slices take most of the rest).
const TASK_BYTES: usize = 256 << 10;
/// From this many row chunks per thread on, tasks split the rows instead of the output features
/// (measured on 2 cores: 480 x 512 x 512 in 2.6 ms against 4.0; with one chunk per thread the
/// feature split is still ahead).
const ROW_TASKS_PER_THREAD: usize = 2;

/// A weight matrix `W [d_in, d_out]` packed for the CPU kernels: panels of [`NR`] output
/// features, `[panel][k][NR]`, the last panel padded with zeros. It takes the memory of the
/// matrix itself (a model keeps this instead of its dense tensor on the CPU backend).
#[derive(Clone)]
pub struct PackedMatrix {
    panels: Vec<f32>,
    d_in: usize,
    d_out: usize,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix [{}, {}]", self.d_in, self.d_out)
    }
}

impl PackedMatrix {
    /// From output-major rows `[d_out, d_in]`: element `(k, n)` at `w[n * d_in + k]` (PyTorch
    /// `nn.Linear`'s `[out, in]`, an embedding table used as a tied output projection). Packed in
    /// place: a panel holds the same 16 rows as the 16 x `d_in` block it replaces, transposed, so
    /// loading costs no second buffer (fresh pages cost more than the transposes: a copy took
    /// Flan-T5's load from 0.36 to 1.6-2 s). Panics if `w` is not `[d_out, d_in]` (a caller bug).
    pub fn from_output_major(mut w: Vec<f32>, d_in: usize, d_out: usize) -> Self {
        assert_eq!(w.len(), d_in * d_out, "PackedMatrix: weights are not [d_out, d_in]");
        if d_in > 0 {
            let whole = d_out / NR * NR * d_in;
            for_each_chunk(&mut w[..whole], NR * d_in, |(_, block)| {
                BLOCK.with(|rows| {
                    let mut rows = rows.borrow_mut();
                    rows.clear();
                    rows.extend_from_slice(block);
                    pack_feature_panel(&rows, d_in, d_in, 0, NR, block);
                })
            });
            if whole < w.len() {
                let last = w[whole..].to_vec();
                w.resize(d_out.div_ceil(NR) * NR * d_in, 0.0);
                pack_feature_panel(&last, d_in, d_in, 0, d_out % NR, &mut w[whole..]);
            }
        }
        Self { panels: w, d_in, d_out }
    }

    /// From input-major storage `[d_in, d_out]` (HF `Conv1D`, GPT-2's layers): element `(k, n)` at
    /// `w[k * d_out + n]`, so each panel row is a straight copy.
    pub fn from_input_major(w: &[f32], d_in: usize, d_out: usize) -> Self {
        assert_eq!(w.len(), d_in * d_out, "PackedMatrix: weights are not [d_in, d_out]");
        let mut panels = vec![0.0f32; d_out.div_ceil(NR) * d_in * NR];
        if d_in > 0 {
            for_each_chunk(&mut panels, d_in * NR, |(p, panel)| {
                let (j0, width) = (p * NR, (d_out - p * NR).min(NR));
                for (k, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    dst[..width].copy_from_slice(&w[k * d_out + j0..k * d_out + j0 + width]);
                }
            });
        }
        Self { panels, d_in, d_out }
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// `x [rows, d_in] · W (+ bias)` → `[rows, d_out]` row-major. Each output is one sum over `k`
    /// in increasing order (then `+ bias`), whatever the row count, thread count or SIMD width:
    /// a row's result does not depend on the rows that came with it. Panics if `x` is not
    /// `[rows, d_in]` or `bias` not `[d_out]` (caller bugs).
    pub fn matmul(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (d_in, d_out) = (self.d_in, self.d_out);
        assert_eq!(x.len(), rows * d_in, "PackedMatrix::matmul: x is not [rows, d_in]");
        assert!(bias.is_none_or(|b| b.len() == d_out), "PackedMatrix::matmul: bias is not [d_out]");
        if rows == 0 || d_out == 0 || d_in == 0 {
            return match bias {
                Some(b) => b.iter().copied().cycle().take(rows * d_out).collect(),
                None => vec![0.0; rows * d_out],
            };
        }
        if rows < super::PACKED_MIN_ROWS {
            super::few_rows::matmul(x, rows, d_in, &self.panels, d_out, bias)
        } else {
            matmul(x, rows, d_in, &self.panels, d_out, bias)
        }
    }

    /// The weights of output features `ids`, as rows `[ids.len(), d_in]`: a tied embedding
    /// table's lookup. Panics on an id `>= d_out` (as an out-of-range embedding index would).
    pub fn output_rows(&self, ids: &[usize]) -> Vec<f32> {
        let d_in = self.d_in;
        let mut rows = Vec::with_capacity(ids.len() * d_in);
        for &n in ids {
            assert!(n < self.d_out, "PackedMatrix: output feature {n} of {}", self.d_out);
            let panel = &self.panels[(n / NR) * d_in * NR..(n / NR + 1) * d_in * NR];
            rows.extend(panel.iter().skip(n % NR).step_by(NR));
        }
        rows
    }

    /// The matrix as output-major rows `[d_out, d_in]` (to move it to another backend).
    pub fn to_output_major(&self) -> Vec<f32> {
        self.output_rows(&(0..self.d_out).collect::<Vec<_>>())
    }
}

/// `x [rows, d_in] · panels (+ bias)` for many rows, `panels` as [`PackedMatrix`] keeps them.
fn matmul(x: &[f32], rows: usize, d_in: usize, panels: &[f32], d_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    if rows.div_ceil(ROW_CHUNK) >= ROW_TASKS_PER_THREAD * threads() {
        return matmul_by_row_chunks(x, rows, d_in, panels, d_out, bias);
    }
    let all_panels = panels;
    let row_panels = rows.div_ceil(MR);
    let x_packed = pack_rows(x, rows, d_in);
    // Output features per task, in whole panels: as many as fit TASK_BYTES, at least one panel.
    let task_panels = (TASK_BYTES / (d_in * NR * 4).max(1)).clamp(1, d_out.div_ceil(NR));
    let task_outputs = task_panels * NR;
    let tasks = d_out.div_ceil(task_outputs);

    // Each task fills its own slab of whole `[MR][NR]` tiles, row chunk by row chunk (the tiles a
    // chunk updates are contiguous, so they stay in cache across depth slices); scattered to the
    // row-major result (with the bias) afterwards.
    let chunk_panels = ROW_CHUNK / MR;
    let tile_at = move |panels: usize, p: usize, rp: usize| {
        let r0 = rp - rp % chunk_panels;
        let in_chunk = (row_panels - r0).min(chunk_panels);
        (r0 * panels + p * in_chunk + rp - r0) * MR * NR
    };
    let slab_len = task_panels * row_panels * MR * NR;
    let mut slabs = vec![0.0f32; tasks * slab_len];
    let task = |(t, slab): (usize, &mut [f32])| {
        let n0 = t * task_outputs;
        let panels = (d_out - n0).min(task_outputs).div_ceil(NR);
        let w_packed = &all_panels[(n0 / NR) * d_in * NR..(n0 / NR + panels) * d_in * NR];
        for r0 in (0..row_panels).step_by(chunk_panels) {
            let r1 = (r0 + chunk_panels).min(row_panels);
            for k0 in (0..d_in).step_by(KC) {
                let kc = (d_in - k0).min(KC);
                for p in 0..panels {
                    let wp = &w_packed[(p * d_in + k0) * NR..(p * d_in + k0 + kc) * NR];
                    for rp in r0..r1 {
                        let xp = &x_packed[(rp * d_in + k0) * MR..(rp * d_in + k0 + kc) * MR];
                        tile_kernel(xp, wp, &mut slab[tile_at(panels, p, rp)..][..MR * NR], NR, k0 == 0, None);
                    }
                }
            }
        }
    };
    for_each_chunk(&mut slabs, slab_len, task);

    let mut out = vec![0.0f32; rows * d_out];
    let gather = |(r, out_row): (usize, &mut [f32])| {
        for (t, slab) in slabs.chunks(slab_len).enumerate() {
            let n0 = t * task_outputs;
            let width = (d_out - n0).min(task_outputs);
            let panels = width.div_ceil(NR);
            for p in 0..panels {
                let tile_row = &slab[tile_at(panels, p, r / MR) + (r % MR) * NR..][..NR];
                let (j0, j1) = (n0 + p * NR, (n0 + p * NR + NR).min(n0 + width));
                match bias {
                    Some(b) => out_row[j0..j1].iter_mut().zip(tile_row).zip(&b[j0..j1]).for_each(|((o, v), b)| *o = v + b),
                    None => out_row[j0..j1].copy_from_slice(&tile_row[..j1 - j0]),
                }
            }
        }
    };
    for_each_chunk(&mut out, d_out, gather);
    out
}

/// Many rows (memory-build batches: 2,560 rows): tasks own chunks of [`ROW_CHUNK`] rows, so each
/// writes its rows of the result in place (tiles finish in cache, no slab to gather from DRAM),
/// all reading the same panels (4 MiB for 512 x 2048, from L3).
fn matmul_by_row_chunks(x: &[f32], rows: usize, d_in: usize, w_packed: &[f32], d_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let panels = d_out.div_ceil(NR);
    let mut out = vec![0.0f32; rows * d_out];
    let task = |(c, out_rows): (usize, &mut [f32])| {
        let r0 = c * ROW_CHUNK;
        let n = out_rows.len() / d_out;
        PACKED_ROWS.with(|buf| {
            let mut buf = buf.borrow_mut();
            for k0 in (0..d_in).step_by(KC) {
                let kc = (d_in - k0).min(KC);
                let xs = pack_row_slice(&mut buf, &x[r0 * d_in..(r0 + n) * d_in], d_in, k0, kc);
                let last = k0 + kc == d_in;
                for p in 0..panels {
                    let j0 = p * NR;
                    let cols = (d_out - j0).min(NR);
                    let wp = &w_packed[(p * d_in + k0) * NR..(p * d_in + k0 + kc) * NR];
                    let b = bias.filter(|_| last).map(|b| &b[j0..j0 + cols]);
                    for (rp, xp) in xs.chunks_exact(kc * MR).enumerate() {
                        let i0 = rp * MR;
                        let tile_rows = (n - i0).min(MR);
                        let tile = &mut out_rows[i0 * d_out + j0..];
                        if tile_rows == MR && cols == NR {
                            tile_kernel(xp, wp, tile, d_out, k0 == 0, b);
                        } else {
                            // Edge tile: through a full-size copy (the kernel always writes MR x NR).
                            let mut edge = [0.0f32; MR * NR];
                            for r in 0..tile_rows {
                                edge[r * NR..r * NR + cols].copy_from_slice(&tile[r * d_out..r * d_out + cols]);
                            }
                            let b = b.map(|b| std::array::from_fn::<f32, NR, _>(|j| b.get(j).copied().unwrap_or(0.0)));
                            tile_kernel(xp, wp, &mut edge, NR, k0 == 0, b.as_ref().map(|b| &b[..]));
                            for r in 0..tile_rows {
                                tile[r * d_out..r * d_out + cols].copy_from_slice(&edge[r * NR..r * NR + cols]);
                            }
                        }
                    }
                }
            }
        });
    };
    for_each_chunk(&mut out, ROW_CHUNK * d_out, task);
    out
}

/// Columns `k0 .. k0 + kc` of `x [n, d_in]` → `[row panel][kc][MR]` in `buf`, the last panel
/// padded with zero rows.
fn pack_row_slice<'a>(buf: &'a mut Vec<f32>, x: &[f32], d_in: usize, k0: usize, kc: usize) -> &'a [f32] {
    let n = x.len() / d_in;
    let len = n.div_ceil(MR) * kc * MR;
    buf.clear();
    buf.resize(len, 0.0);
    for (block, panel) in x.chunks(MR * d_in).zip(buf.chunks_exact_mut(kc * MR)) {
        pack_panel_rows(block, d_in, k0, kc, panel);
    }
    &buf[..len]
}

/// Columns `k0 .. k0 + kc` of up to [`MR`] rows of `d_in` → `panel [kc][MR]` (rows past the
/// block stay as they are: zero in a fresh buffer).
fn pack_panel_rows(block: &[f32], d_in: usize, k0: usize, kc: usize, panel: &mut [f32]) {
    if block.len() == MR * d_in {
        // Whole panel: contiguous writes from six sequential reads (no per-element index
        // arithmetic: a scattered form took ~13 % of a memory-build matmul).
        let r: [&[f32]; MR] = std::array::from_fn(|i| &block[i * d_in + k0..i * d_in + k0 + kc]);
        for (k, column) in panel.chunks_exact_mut(MR).enumerate() {
            for (c, row) in column.iter_mut().zip(&r) {
                *c = row[k];
            }
        }
    } else {
        for (i, row) in block.chunks_exact(d_in).enumerate() {
            for (k, &v) in row[k0..k0 + kc].iter().enumerate() {
                panel[k * MR + i] = v;
            }
        }
    }
}

thread_local! {
    /// Each worker's copy of the block it packs in place (`NR x d_in` floats).
    static BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker's packed slice of a row chunk (`ROW_CHUNK x KC` floats).
    static PACKED_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `x [rows, d_in]` → `[row panel][k][MR]`, the last panel padded with zero rows.
fn pack_rows(x: &[f32], rows: usize, d_in: usize) -> Vec<f32> {
    let mut packed = vec![0.0f32; rows.div_ceil(MR) * d_in * MR];
    let pack = |(rp, panel): (usize, &mut [f32])| pack_panel_rows(&x[rp * MR * d_in..(rp * MR + MR).min(rows) * d_in], d_in, 0, d_in, panel);
    for_each_chunk(&mut packed, d_in * MR, pack);
    packed
}

/// Output features `first .. first + NR` (those below `d_out`) → `panel [k][NR]`.
fn pack_feature_panel(w: &[f32], row_stride: usize, d_in: usize, first: usize, d_out: usize, panel: &mut [f32]) {
    let (w, features) = (&w[first * row_stride..], (d_out - first).min(NR));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { pack_panel_avx2_f32(w, row_stride, d_in, features, panel) };
    }
    pack_panel_portable(w, row_stride, d_in, features, panel)
}

/// Scalar panel packing: `panel[k * NR + j] = w[j * row_stride + k]` for `j < features`, zero for
/// the rest.
fn pack_panel_portable(w: &[f32], row_stride: usize, d_in: usize, features: usize, panel: &mut [f32]) {
    for j in 0..NR {
        if j < features {
            for (k, v) in w[j * row_stride..j * row_stride + d_in].iter().enumerate() {
                panel[k * NR + j] = *v;
            }
        } else {
            for k in 0..d_in {
                panel[k * NR + j] = 0.0;
            }
        }
    }
}

/// [`pack_panel_portable`] for f32 with AVX2: 8 x 8 blocks transposed in registers (the scalar
/// form spends ~3 cycles per weight on scattered stores, as much as the arithmetic at 10 rows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_panel_avx2_f32(w: &[f32], row_stride: usize, d_in: usize, features: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    if features < NR {
        return pack_panel_portable(w, row_stride, d_in, features, panel);
    }
    assert!(w.len() >= (NR - 1) * row_stride + d_in && panel.len() >= d_in * NR, "pack_panel: slice lengths");
    let body = d_in - d_in % 8;
    let (src, dst) = (w.as_ptr(), panel.as_mut_ptr());
    for half in 0..NR / 8 {
        let mut k = 0;
        while k < body {
            // SAFETY: rows half*8 .. half*8 + 8 < NR = features are within `w`, k + 8 <= d_in,
            // and the stores land in panel[(k + i) * NR + half * 8 ..][..8], i < 8 (asserted above).
            unsafe {
                let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add((half * 8 + i) * row_stride + k)));
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let columns = [
                    _mm256_permute2f128_ps::<0x20>(s0, s4),
                    _mm256_permute2f128_ps::<0x20>(s1, s5),
                    _mm256_permute2f128_ps::<0x20>(s2, s6),
                    _mm256_permute2f128_ps::<0x20>(s3, s7),
                    _mm256_permute2f128_ps::<0x31>(s0, s4),
                    _mm256_permute2f128_ps::<0x31>(s1, s5),
                    _mm256_permute2f128_ps::<0x31>(s2, s6),
                    _mm256_permute2f128_ps::<0x31>(s3, s7),
                ];
                for (i, c) in columns.iter().enumerate() {
                    _mm256_storeu_ps(dst.add((k + i) * NR + half * 8), *c);
                }
            }
            k += 8;
        }
    }
    for k in body..d_in {
        for j in 0..NR {
            panel[k * NR + j] = w[j * row_stride + k];
        }
    }
}

/// `tile [MR][NR] (+)= xp [kc][MR]ᵀ · wp [kc][NR]` with tile rows `ldc` apart; starts from zero
/// when `first`; adds `bias [NR]` to the finished sums when given (after the last depth slice).
fn tile_kernel(xp: &[f32], wp: &[f32], tile: &mut [f32], ldc: usize, first: bool, bias: Option<&[f32]>) {
    let kc = wp.len() / NR;
    assert!(xp.len() == kc * MR && ldc >= NR && tile.len() >= (MR - 1) * ldc + NR, "tile_kernel: slice lengths");
    assert!(bias.is_none_or(|b| b.len() == NR), "tile_kernel: bias is not [NR]");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above); lengths checked above.
        return unsafe { tile_avx512(xp, wp, tile, ldc, first, bias, kc) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); lengths checked above.
        return unsafe { tile_avx2(xp, wp, tile, ldc, first, bias, kc) };
    }
    let mut acc = [[0.0f32; NR]; MR];
    if !first {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&tile[r * ldc..r * ldc + NR]);
        }
    }
    for (xk, wk) in xp.chunks_exact(MR).zip(wp.chunks_exact(NR)) {
        for (acc, &xv) in acc.iter_mut().zip(xk) {
            for (a, &wv) in acc.iter_mut().zip(wk) {
                *a += xv * wv;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let row = &mut tile[r * ldc..r * ldc + NR];
        match bias {
            Some(b) => row.iter_mut().zip(acc).zip(b).for_each(|((o, a), b)| *o = a + b),
            None => row.copy_from_slice(acc),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(xp: &[f32], wp: &[f32], tile: &mut [f32], ldc: usize, first: bool, bias: Option<&[f32]>, kc: usize) {
    use std::arch::x86_64::*;
    let (x, w, c) = (xp.as_ptr(), wp.as_ptr(), tile.as_mut_ptr());
    // SAFETY (all pointer reads and writes): xp holds kc * MR floats, wp kc * NR, tile
    // (MR - 1) * ldc + NR, bias NR (checked by the caller).
    unsafe {
        let mut acc: [[__m256; 2]; MR] = if first {
            [[_mm256_setzero_ps(); 2]; MR]
        } else {
            std::array::from_fn(|r| [_mm256_loadu_ps(c.add(r * ldc)), _mm256_loadu_ps(c.add(r * ldc + 8))])
        };
        for k in 0..kc {
            let w0 = _mm256_loadu_ps(w.add(k * NR));
            let w1 = _mm256_loadu_ps(w.add(k * NR + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*x.add(k * MR + r));
                acc[0] = _mm256_fmadd_ps(xv, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(xv, w1, acc[1]);
            }
        }
        if let Some(b) = bias {
            let (b0, b1) = (_mm256_loadu_ps(b.as_ptr()), _mm256_loadu_ps(b.as_ptr().add(8)));
            for acc in &mut acc {
                acc[0] = _mm256_add_ps(acc[0], b0);
                acc[1] = _mm256_add_ps(acc[1], b1);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * ldc), acc[0]);
            _mm256_storeu_ps(c.add(r * ldc + 8), acc[1]);
        }
    }
}

/// [`tile_avx2`] with one 16-lane register per tile row: half the instructions for the same
/// FMAs, in the same order (each output is the same sum over `k`, so the results are identical).
/// Measured on an AVX-512 VM (2 cores): CLIP's matrices at 50-400 rows 1.25-1.4x faster; CLIP
/// image 65 -> 51-54 ms, T5 encode 107 -> 81 ms, MiniLM 20 -> 13 ms, CLIP text (memory build)
/// 1028 -> 750 ms.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(xp: &[f32], wp: &[f32], tile: &mut [f32], ldc: usize, first: bool, bias: Option<&[f32]>, kc: usize) {
    use std::arch::x86_64::*;
    let (x, w, c) = (xp.as_ptr(), wp.as_ptr(), tile.as_mut_ptr());
    // SAFETY (all pointer reads and writes): xp holds kc * MR floats, wp kc * NR, tile
    // (MR - 1) * ldc + NR, bias NR (checked by the caller).
    unsafe {
        let mut acc: [__m512; MR] = if first { [_mm512_setzero_ps(); MR] } else { std::array::from_fn(|r| _mm512_loadu_ps(c.add(r * ldc))) };
        for k in 0..kc {
            let wv = _mm512_loadu_ps(w.add(k * NR));
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(k * MR + r)), wv, *acc);
            }
        }
        if let Some(b) = bias {
            let b = _mm512_loadu_ps(b.as_ptr());
            for acc in &mut acc {
                *acc = _mm512_add_ps(*acc, b);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rowmatmul::tests::values;

    /// Every SIMD form this CPU has gives the AVX2 tile bit for bit (same FMAs in the same order):
    /// results do not depend on which x86 machine ran them. Fresh and accumulating tiles, with
    /// and without bias, a row stride wider than the tile.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_tiles_are_identical() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let (kc, ldc) = (203, NR + 5);
        let (xp, wp, bias) = (values(kc * MR, 1), values(kc * NR, 2), values(NR, 3));
        let start = values(MR * ldc, 4);
        for first in [true, false] {
            for b in [None, Some(&bias[..])] {
                let mut want = start.clone();
                // SAFETY: AVX2 and FMA checked above; slice lengths as tile_kernel asserts.
                unsafe { tile_avx2(&xp, &wp, &mut want, ldc, first, b, kc) };
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut got = start.clone();
                    // SAFETY: AVX-512F checked just above; same slices.
                    unsafe { tile_avx512(&xp, &wp, &mut got, ldc, first, b, kc) };
                    assert_eq!(got, want, "first {first}, bias {}", b.is_some());
                }
                // The dispatching entry point takes one of them.
                let mut got = start.clone();
                tile_kernel(&xp, &wp, &mut got, ldc, first, b);
                assert_eq!(got, want);
            }
        }
    }
}
