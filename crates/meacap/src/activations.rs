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
