//! Activation functions for the CPU backend, written so the compiler vectorises them.
//!
//! burn flex evaluates `tanh`, `sigmoid` and `erf` one element at a time through libm (`tanhf`
//! calls `expm1f`); perf put that at ~7 % of a GPT-2 beam search and of the T5 parse, ~5 % of
//! MiniLM. Here every activation goes through one branch-free `exp` (Cephes' `expf` polynomial,
//! relative error ≤ 2e-7 over the whole range) in loops the compiler turns into AVX2 (chosen at
//! run time) or wasm simd128 code.
//!
//! In place on plain slices (no tensor types here): `models::Activation` decides when to use
//! them. Each is the reference formula rewritten exactly, apart from `exp`'s rounding and (exact
//! GELU) erfc's 1.2e-7 fit, so results agree with PyTorch to ~1e-7 relative.

/// `exp(x)` for f32, branch-free. Inputs are clamped to the range where the result is a normal
/// float (`exp(-87.3)` ≈ 1.2e-38, `exp(88.3)` ≈ 2.2e38), which is all the callers below need.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `x - n ln2` is exact for |n| < 2^8 (Cephes).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5.000_000_1e-1;
    let y = p * (r * r) + r + 1.0;
    // 2^n from its exponent bits: n + 127 is in 1..=254 for the clamped range. The integer n is
    // read from `shifted`'s low mantissa bits (its bits are 0x4B40_0000 + n): Rust's saturating
    // `n as i32` would be compiled to scalar compares per element instead of vector code.
    let biased = shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

/// `ln(x)` for normal positive f32 (Cephes' `logf`: the mantissa reduced to [sqrt(1/2), sqrt(2)),
/// a degree-9 polynomial, ln 2 split in two), branch-free. Zero, subnormal, negative or
/// non-finite inputs give meaningless values: callers check their range (see [`softmax_log`]).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let bits = x.to_bits();
    // Mantissa in [1, 2), then halved (exponent + 1) above sqrt(2).
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let above = m > std::f32::consts::SQRT_2;
    let e = ((bits >> 23) as i32 - 127 + above as i32) as f32;
    let f = if above { 0.5 * m } else { m } - 1.0;
    let z = f * f;
    let p = (((((((7.037_683_6e-2 * f - 1.151_461e-1) * f + 1.167_699_9e-1) * f - 1.242_014_1e-1) * f + 1.424_932_3e-1) * f - 1.666_805_8e-1) * f + 2.000_071_4e-1) * f
        - 2.499_999_4e-1)
        * f
        + 3.333_333_1e-1;
    let y = p * f * z + e * LN2_LO - 0.5 * z;
    f + y + e * LN2_HI
}

/// `softmax(row).log()` as PyTorch computes it on the CPU: `exp(x - max)`, times the reciprocal
/// of the sum, then the natural log, each element (GPT-2's next-token log-probabilities: 50,257
/// per beam, per step). Vectorised through [`exp`] and [`ln`] where every intermediate is a
/// normal float (`x - max` above -75, so no probability is subnormal); a row with a smaller
/// probability takes libm's scalar `expf`/`logf`, which round subnormals and underflow (to
/// `-inf`) as PyTorch does. The sum is taken in 16 interleaved partial sums.
pub fn softmax_log(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { softmax_log_avx2(row) };
    }
    softmax_log_any(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_log_avx2(row: &mut [f32]) {
    softmax_log_any(row)
}

#[inline(always)]
// `!(a >= b)` on purpose: NaN takes the libm path.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn softmax_log_any(row: &mut [f32]) {
    const LANES: usize = 16;
    let (mut max, mut min) = ([f32::NEG_INFINITY; LANES], [f32::INFINITY; LANES]);
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            max[l] = max[l].max(c[l]);
            min[l] = min[l].min(c[l]);
        }
    }
    let tail = chunks.remainder();
    let max = max.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max);
    let min = min.iter().chain(tail).copied().fold(f32::INFINITY, f32::min);
    // Also false for NaN and infinite inputs: those take the scalar path too.
    if !(min - max >= -75.0 && max.is_finite()) {
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x = (*x * inv).ln();
        }
        return;
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            c[l] = exp(c[l] - max);
            sums[l] += c[l];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    // exp(-75) / 50,257 rows is still above f32::MIN_POSITIVE, so every probability is normal
    // for any row up to ~3e5 wide; wider rows with a tiny probability go through libm, and so
    // does a NaN sum (from a NaN input), which libm's log propagates.
    if !(exp(min - max) * inv >= f32::MIN_POSITIVE) {
        row.iter_mut().for_each(|x| *x = (*x * inv).ln());
        return;
    }
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for v in c.iter_mut() {
            *v = ln(*v * inv);
        }
    }
    for x in chunks.into_remainder() {
        *x = ln(*x * inv);
    }
}

/// `1 / (1 + exp(-x))`: saturates to ~0 or exactly 1 far out (NaN only for a NaN input).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// tanh-approximate GELU (`gelu_new`: GPT-2, T5 v1.1): `0.5 x (1 + tanh(u))` with
/// `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed as `x * sigmoid(2u)` (the same function:
/// `1 + tanh(u) = 2 sigmoid(2u)`), which also keeps its relative accuracy for very negative x.
pub fn gelu_tanh(x: &mut [f32]) {
    const TWO_SQRT_2_OVER_PI: f32 = 2.0 * 0.797_884_6;
    map(x, |v| v * sigmoid(TWO_SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v)))
}

/// QuickGELU (CLIP): `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: &mut [f32]) {
    map(x, |v| v * sigmoid(1.702 * v))
}

/// Exact GELU (`gelu`: BERT/MiniLM), `0.5 x (1 + erf(x / sqrt 2))`, written with
/// `erfc(|x| / sqrt 2)` so neither tail cancels: `x (1 - erfc/2)` for x >= 0, `x erfc/2` below.
/// erfc is the Numerical Recipes Chebyshev fit (relative error < 1.2e-7 for every argument).
pub fn gelu_erf(x: &mut [f32]) {
    map(x, |v| {
        let half_erfc = 0.5 * erfc_abs(v * std::f32::consts::FRAC_1_SQRT_2);
        v * if v >= 0.0 { 1.0 - half_erfc } else { half_erfc }
    })
}

/// `erfc(|z|)`, branch-free.
#[inline(always)]
fn erfc_abs(z: f32) -> f32 {
    let z = z.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18 + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    // exp(-z^2) split as exp(-s^2) exp((s - z)(s + z)) with s = z cut to 12 significant bits, so s^2
    // is exact: rounding z^2 itself would cost ~4e-6 relative at z = 8.
    let s = f32::from_bits(z.to_bits() & 0xffff_f000);
    t * exp(-s * s) * exp((s - z) * (s + z) + p)
}

/// `x = f(x)` for every element, in place, in chunks the compiler vectorises (AVX2 + FMA when the
/// CPU has them), split between the cores when there are many.
#[inline(always)]
fn map(x: &mut [f32], f: impl Fn(f32) -> f32 + Copy + Send + Sync) {
    crate::parallel::for_each_chunk(x, crate::parallel::TASK_ELEMENTS, |(_, x)| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { map_avx2(x, f) };
        }
        map_chunks(x, f)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2(x: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    map_chunks(x, f)
}

#[inline(always)]
fn map_chunks(x: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    const CHUNK: usize = 16;
    let mut xs = x.chunks_exact_mut(CHUNK);
    for xc in &mut xs {
        for v in xc.iter_mut() {
            *v = f(*v);
        }
    }
    for v in xs.into_remainder() {
        *v = f(*v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-200_000..=200_000).map(|i| i as f32 * 1e-3).chain([f32::MIN_POSITIVE, -0.0, 1e-30, -1e-30, 1e4, -1e4])
    }

    #[test]
    fn exp_is_within_2e7_relative_over_its_range() {
        for x in (-87_000..=88_000).map(|i| i as f32 * 1e-3) {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            assert!(rel <= 2e-7, "exp({x}) = {} vs {want}: {rel:e}", exp(x));
        }
        assert_eq!(exp(-1e4), exp(-87.3));
        assert!(exp(1e4).is_finite());
    }

    #[test]
    fn ln_is_within_a_few_ulp_over_the_normal_range() {
        // Every 97th f32 from the smallest normal to the largest finite value, and around 1
        // (where ln crosses zero) every f32 in [1 - 2^-10, 1 + 2^-10).
        let spread = (f32::MIN_POSITIVE.to_bits()..f32::MAX.to_bits()).step_by(97).map(f32::from_bits);
        let near_one = (1.0f32 - 2f32.powi(-10)).to_bits()..(1.0f32 + 2f32.powi(-10)).to_bits();
        for x in spread.chain(near_one.map(f32::from_bits)) {
            let want = (x as f64).ln();
            let err = (ln(x) as f64 - want).abs();
            // 1.5 ulp of the result (ulp of f32 near |want|), at least 2^-24 * 2^-24 near 1.
            let ulp = (want.abs() as f32).max(f32::MIN_POSITIVE);
            let ulp = (f32::from_bits(ulp.to_bits() + 1) - ulp) as f64;
            assert!(err <= 1.5 * ulp, "ln({x:e}) = {} vs {want}", ln(x));
        }
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn softmax_log_matches_f64_and_keeps_torchs_underflow() {
        // A GPT-2-sized row: vectorised path (spread 60 < 75).
        let n = 50_257;
        let mut row: Vec<f32> = (0..n).map(|i| ((i * 7919) % 6000) as f32 * 0.01 - 30.0).collect();
        let want = |row: &[f32]| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            row.iter().map(|&x| x as f64 - max - sum.ln()).collect::<Vec<f64>>()
        };
        let expected = want(&row);
        softmax_log(&mut row);
        for (g, w) in row.iter().zip(&expected) {
            assert!((*g as f64 - w).abs() <= 2e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
        // A spread past 75: libm's path, where exp underflows and the log is -inf, as in PyTorch.
        let mut row = vec![0.0f32, -10.0, -120.0];
        softmax_log(&mut row);
        assert!((row[0] as f64 - (-(1.0 + (-10f64).exp() + (-120f64).exp()).ln())).abs() < 1e-7);
        assert_eq!(row[2], f32::NEG_INFINITY);
        // NaN in, NaN out; short rows (no whole chunk) are fine.
        let mut row = vec![1.0f32, f32::NAN];
        softmax_log(&mut row);
        assert!(row[1].is_nan());
        let mut row = vec![2.0f32];
        softmax_log(&mut row);
        assert_eq!(row, [0.0]);
    }

    #[test]
    fn activations_match_their_f64_formulas() {
        let x: Vec<f32> = grid().collect();
        let applied = |f: fn(&mut [f32])| {
            let mut y = x.clone();
            f(&mut y);
            y
        };
        let tanh_form = applied(gelu_tanh);
        let quick = applied(quick_gelu);
        // The arguments of exp are rounded to f32 as any f32 implementation (PyTorch's too) rounds
        // them: the tolerance measures exp and sigmoid, not the conditioning of exp for large x.
        let sigmoid64 = |z: f32| 1.0 / (1.0 + (-(z as f64)).exp());
        for (i, &v) in x.iter().enumerate() {
            let want = v as f64 * sigmoid64(2.0 * 0.797_884_6 * (v + 0.044_715 * v * v * v));
            assert!((tanh_form[i] as f64 - want).abs() <= 5e-7 * want.abs() + 1e-30, "gelu_tanh({v}) = {} vs {want}", tanh_form[i]);
            let want = v as f64 * sigmoid64(1.702 * v);
            assert!((quick[i] as f64 - want).abs() <= 5e-7 * want.abs() + 1e-30, "quick_gelu({v}) = {} vs {want}", quick[i]);
        }
        // And the rewrite x * sigmoid(2u) is gelu_new's 0.5 x (1 + tanh(u)) where that form is
        // well conditioned.
        for (i, &v) in x.iter().enumerate().filter(|(_, v)| v.abs() <= 10.0) {
            let v64 = v as f64;
            let want = 0.5 * v64 * (1.0 + (0.797_884_560_802_865_4 * (v64 + 0.044715 * v64.powi(3))).tanh());
            assert!((tanh_form[i] as f64 - want).abs() <= 1e-6 * v64.abs().max(1e-3), "gelu_tanh({v}) = {} vs {want}", tanh_form[i]);
        }
        // Exact GELU against f64 erfc at the f32-rounded argument (see above), relative with a
        // tiny absolute floor: below x = -13 the result underflows.
        let exact = applied(gelu_erf);
        for (i, &v) in x.iter().enumerate() {
            let z = (v * std::f32::consts::FRAC_1_SQRT_2) as f64;
            let want = 0.5 * v as f64 * libm::erfc(-z);
            assert!((exact[i] as f64 - want).abs() <= 5e-7 * want.abs() + 1e-37, "gelu_erf({v}) = {} vs {want}", exact[i]);
        }
        let mut nan = [f32::NAN];
        gelu_tanh(&mut nan);
        assert!(nan[0].is_nan());
        gelu_tanh(&mut []);
    }
}
