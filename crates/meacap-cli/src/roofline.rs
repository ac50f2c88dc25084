//! This CPU's roofline, measured: peak fused multiply-add throughput on every core with the
//! widest SIMD it has, and how fast the cores together read memory that is not in cache. A
//! decoding step multiplies a few rows by every weight once, so its bound is
//! `min(peak, bandwidth x FLOPs per weight byte)`: with 5 rows the bandwidth term, far below the
//! arithmetic peak (issue 6's "FLOP bound" is this bound, measured here rather than assumed).

use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

#[derive(Serialize, Clone, Debug)]
pub struct Roofline {
    /// FMA throughput on all cores, GFLOP/s (2 FLOPs per lane per FMA).
    pub peak_gflops: f64,
    /// The instruction set that reached it.
    pub simd: &'static str,
    /// Read bandwidth of all cores over a 256 MiB buffer (well past any cache), GB/s.
    pub read_gbps: f64,
    pub threads: usize,
}

impl Roofline {
    /// Best of three runs of each (~0.3 s in all on 2 cores).
    pub fn measure() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (per_thread, simd) = fma_kernel();
        let iterations = 16_000_000u64;
        let mut best = f64::INFINITY;
        let mut flops_per_run = 0.0;
        for _ in 0..3 {
            let t = Instant::now();
            let flops: f64 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|_| s.spawn(move || per_thread(iterations))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            best = best.min(t.elapsed().as_secs_f64());
            flops_per_run = flops;
        }
        let peak_gflops = flops_per_run / best / 1e9;
        Self { peak_gflops, simd, read_gbps: read_bandwidth(threads), threads }
    }

    /// The bound of a step of `flops` that streams `bytes` of weights, GFLOP/s.
    pub fn bound_gflops(&self, flops: f64, bytes: f64) -> f64 {
        self.peak_gflops.min(self.read_gbps * flops / bytes.max(1.0))
    }
}

/// Runs `iterations` of 12 independent FMA chains (enough to cover the latency on two FMA
/// pipes) and returns the FLOPs done.
type FmaLoop = fn(u64) -> f64;

fn fma_kernel() -> (FmaLoop, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return (|n| unsafe { fma_avx512(n) }, "AVX-512");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return (|n| unsafe { fma_avx2(n) }, "AVX2+FMA");
        }
    }
    (fma_portable, "portable")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(n: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(black_box(0.999_999)), _mm512_set1_ps(black_box(1e-7)));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..n {
        for v in &mut acc {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (n * 12 * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(n: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(black_box(0.999_999)), _mm256_set1_ps(black_box(1e-7)));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..n {
        for v in &mut acc {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (n * 12 * 8 * 2) as f64
}

fn fma_portable(n: u64) -> f64 {
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    let mut acc = [[1.0f32; 8]; 12];
    for _ in 0..n / 4 {
        for v in &mut acc {
            for x in v.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
    }
    black_box(acc);
    ((n / 4) * 12 * 8 * 2) as f64
}

/// Sums a 256 MiB buffer split between the threads; best of 7 (other tenants of a shared VM move
/// single runs by ±20 %), GB/s.
fn read_bandwidth(threads: usize) -> f64 {
    let buffer = vec![1.0f32; 64 << 20];
    let chunk = buffer.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let t = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let handles: Vec<_> = buffer.chunks(chunk).map(|part| s.spawn(move || sum_lanes(part))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        });
        black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buffer.len() * 4) as f64 / best / 1e9
}

/// A sum the compiler vectorises (16 independent lanes).
fn sum_lanes(values: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_bound_by_the_lower_of_peak_and_bandwidth_times_intensity() {
        let r = Roofline { peak_gflops: 100.0, simd: "test", read_gbps: 10.0, threads: 1 };
        // 5 rows over f32 weights: 2 FLOPs per weight per row, 4 bytes per weight.
        assert_eq!(r.bound_gflops(2.0 * 5.0 * 1e6, 4e6), 25.0);
        // 100 rows: arithmetic-bound.
        assert_eq!(r.bound_gflops(2.0 * 100.0 * 1e6, 4e6), 100.0);
    }

    #[test]
    fn measured_rates_are_positive_and_finite() {
        let r = Roofline::measure();
        assert!(r.peak_gflops.is_finite() && r.peak_gflops > 0.1, "{r:?}");
        assert!(r.read_gbps.is_finite() && r.read_gbps > 0.01, "{r:?}");
        assert!(r.threads >= 1);
        // A 12-chain FMA loop cannot beat 2 FMA pipes of 16 lanes at 6 GHz per thread.
        assert!(r.peak_gflops < r.threads as f64 * 2.0 * 16.0 * 2.0 * 6.0, "{r:?}");
    }
}
