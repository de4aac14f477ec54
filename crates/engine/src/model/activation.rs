//! The gated MLP's activation on the CPU: `act(gate) · up`, in place, in one
//! vectorised pass over both (candle's element-wise ops take two passes and
//! call libm's scalar `tanhf`/`expf` per value: 8–11% of Gemma's prefill).
//!
//! Both activations are `x · σ(z)`, `σ(z) = 1 / (1 + e^−z)`: SiLU with
//! `z = x`; GELU's tanh form `½x(1 + tanh u)` with `z = 2u`,
//! `u = √(2/π)(x + 0.044715x³)`, since `½(1 + tanh u) = σ(2u)`. `e^t` is
//! computed as `2ⁿ · p(r)` (Cephes' `expf` reduction: `n = round(t / ln 2)`,
//! `r = t − n ln 2` in two parts, `|r| ≤ ½ ln 2`) with `p` the degree-7
//! Taylor polynomial (truncation `r⁸/8! < 6·10⁻⁹`), branch-free so that the
//! compiler vectorises it; with AVX2 and FMA where the CPU has them.

use crate::family::Activation;

/// `gate[i] = act(gate[i]) · up[i]`, rows of `row_len` values split across
/// the step's pool.
pub(crate) fn gated_in_place(gate: &mut [f32], up: &[f32], row_len: usize, activation: Activation) {
    debug_assert_eq!(gate.len(), up.len());
    let row_len = if gate.len().is_multiple_of(row_len.max(1)) {
        row_len.max(1)
    } else {
        gate.len().max(1)
    };
    crate::parallel::for_row_runs(gate, row_len, |first, run| {
        let up = &up[first * row_len..first * row_len + run.len()];
        run_on_best(run, up, activation);
    });
}

fn run_on_best(gate: &mut [f32], up: &[f32], activation: Activation) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { run_avx2(gate, up, activation) };
    }
    run(gate, up, activation)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(gate: &mut [f32], up: &[f32], activation: Activation) {
    run(gate, up, activation)
}

#[inline(always)]
fn run(gate: &mut [f32], up: &[f32], activation: Activation) {
    match activation {
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + exp(-*g)) * u;
            }
        }
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            for (g, &u) in gate.iter_mut().zip(up) {
                let x = *g;
                let z = 2.0 * SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
                *g = x / (1.0 + exp(-z)) * u;
            }
        }
    }
}

/// `e^t`, relative error a few ulp; `t` is clamped to `[−87, 88]` (where
/// `2ⁿ` stays a normal float), which only the limits `σ → 0, 1` see.
#[inline(always)]
fn exp(t: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = t.clamp(-87.0, 88.0);
    let n = (t * std::f32::consts::LOG2_E).round();
    let r = t - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: f64, activation: Activation) -> f64 {
        match activation {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::GeluTanh => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }
        }
    }

    proptest::proptest! {
        /// Within 2·10⁻⁶ (relative, or absolute near zero) of the f64
        /// formula, on both code paths.
        #[test]
        fn matches_the_f64_formula(xs in proptest::collection::vec(-30f32..30.0, 1..64), up in -4f32..4.0) {
            for activation in [Activation::Silu, Activation::GeluTanh] {
                let ups = vec![up; xs.len()];
                let mut scalar = xs.clone();
                run(&mut scalar, &ups, activation);
                let mut best = xs.clone();
                gated_in_place(&mut best, &ups, xs.len(), activation);
                for ((&x, &s), &b) in xs.iter().zip(&scalar).zip(&best) {
                    let want = reference(x as f64, activation) * up as f64;
                    for got in [s, b] {
                        let err = (got as f64 - want).abs();
                        proptest::prop_assert!(
                            err <= 2e-6 * want.abs().max(1e-3),
                            "{activation:?}({x}) · {up}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut t = -87.0f32;
        while t <= 88.0 {
            let (got, want) = (exp(t) as f64, (t as f64).exp());
            assert!(
                (got - want).abs() <= 4e-7 * want,
                "exp({t}) = {got}, want {want}"
            );
            t += 0.0173;
        }
    }

    #[test]
    fn extremes_saturate() {
        for activation in [Activation::Silu, Activation::GeluTanh] {
            let mut g = vec![-1e4f32, 1e4, 0.0];
            gated_in_place(&mut g, &[1.0, 1.0, 1.0], 3, activation);
            assert!(
                g[0].abs() < 1e-30 && g[1] == 1e4 && g[2] == 0.0,
                "{activation:?}: {g:?}"
            );
        }
    }
}
