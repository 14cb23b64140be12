//! Row-wise kernels of the forward pass, written to follow transformers' own order of
//! floating-point operations (f32 throughout), so that our logits land within rounding of the
//! reference rather than merely close to it.
//!
//! Each function documents the PyTorch expression it mirrors. Rows are independent, so the
//! `[T, H]` versions split rows over rayon's threads.

use rayon::prelude::*;

/// Rows per rayon task: small enough to spread a short prompt over two cores.
const ROWS_PER_TASK: usize = 4;

/// RMSNorm of one row, as `LlamaRMSNorm`:
/// `weight * (x * torch.rsqrt(x.pow(2).mean(-1) + eps))`, all in f32.
///
/// The mean of squares is summed in f64 and rounded once (PyTorch's cascaded f32 sum is within
/// an ulp of that); `rsqrt` is `1 / sqrt`, as PyTorch's CPU kernel computes it.
pub fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum_sq: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum_sq as f32) / (x.len() as f32);
    let r = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * r);
    }
}

/// RMSNorm over every row of `x` `[rows, width]`, into `out` `[rows, width]`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(o, xi)| {
            for (o, xi) in o.chunks_mut(width).zip(xi.chunks(width)) {
                rms_norm_row(xi, weight, eps, o);
            }
        });
}

/// RMSNorm in place over every `width`-long piece of `x` (Qwen3's per-head q/k norm on
/// `[T, heads·D]` with a `[D]` weight).
pub fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    let mut row = vec![0.0f32; width]; // [width]
    for piece in x.chunks_mut(width) {
        row.copy_from_slice(piece);
        rms_norm_row(&row, weight, eps, piece);
    }
}

/// LayerNorm of one row, as PyTorch's CPU kernel: biased variance,
/// `rstd = 1 / sqrt(var + eps)`, then `(x * rstd + (-mean * rstd)) * gamma + beta`.
pub fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f64;
    let mean64 = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var64 = x
        .iter()
        .map(|&v| {
            let d = f64::from(v) - mean64;
            d * d
        })
        .sum::<f64>()
        / n;
    let mean = mean64 as f32;
    let var = (var64 as f32).max(0.0);
    let rstd = 1.0 / (var + eps).sqrt();
    let shift = -mean * rstd;
    for (((o, &v), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v * rstd + shift) * g + b;
    }
}

/// LayerNorm over every row of `x` `[rows, width]`, into `out`.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let width = gamma.len();
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(o, xi)| {
            for (o, xi) in o.chunks_mut(width).zip(xi.chunks(width)) {
                layer_norm_row(xi, gamma, beta, eps, o);
            }
        });
}

/// Softmax in place, as PyTorch's last-dim kernel: subtract the max, `exp`, sum, then multiply
/// by `1 / sum`.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// GPT-2's `gelu_new` (transformers' `NewGELUActivation`):
/// `0.5 * x * (1.0 + tanh(sqrt(2/π) * (x + 0.044715 * x³)))`, evaluated left to right in f32.
pub fn gelu_new(x: f32) -> f32 {
    let c = (2.0f64 / std::f64::consts::PI).sqrt() as f32;
    let cube = x * x * x; // torch.pow(x, 3.0) is x·x·x on CPU
    (0.5 * x) * (1.0 + (c * (x + 0.044715 * cube)).tanh())
}

/// PyTorch's `gelu(approximate="tanh")` (transformers' `gelu_pytorch_tanh`), as its CPU kernel:
/// `0.5 * x * (1 + tanh(kBeta * (x + kKappa * x³)))` with `kBeta = √2 · 2/√π · 0.5` rounded to
/// f32, evaluated left to right.
pub fn gelu_tanh(x: f32) -> f32 {
    let beta = (std::f64::consts::SQRT_2 * std::f64::consts::FRAC_2_SQRT_PI * 0.5) as f32;
    let cube = x * x * x;
    let inner = beta * (x + 0.044715 * cube);
    0.5 * x * (1.0 + inner.tanh())
}

/// PyTorch's exact GELU (`gelu`, approximate="none"), as its CPU kernel:
/// `x * 0.5 * (1 + erf(x * M_SQRT1_2))`; erf is evaluated in f64 and rounded once.
pub fn gelu(x: f32) -> f32 {
    let alpha = std::f32::consts::FRAC_1_SQRT_2;
    let erf = libm::erf(f64::from(x * alpha)) as f32;
    x * 0.5 * (1.0 + erf)
}

/// `cap · tanh(x / cap)` (Gemma 2's soft-capping of attention scores and logits), in f32 as
/// transformers computes it: divide, `tanh`, multiply.
pub fn softcap(x: f32, cap: f32) -> f32 {
    (x / cap).tanh() * cap
}

/// SiLU as PyTorch computes it: `x / (1 + exp(-x))`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate[i] = act(gate[i]) * up[i]`, the gated MLP (SwiGLU with [`silu`]), in parallel.
pub fn gated_in_place(gate: &mut [f32], up: &[f32], act: impl Fn(f32) -> f32 + Sync) {
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = act(*g) * u;
            }
        });
}

/// `x[i] = act(x[i])` (e.g. [`gelu_new`]), in parallel.
pub fn map_in_place(x: &mut [f32], act: impl Fn(f32) -> f32 + Sync) {
    x.par_chunks_mut(4096).for_each(|c| {
        for v in c {
            *v = act(*v);
        }
    });
}

/// `x[i] += y[i]` (a residual connection), in parallel.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}

/// `x[i] = (mlp[i] + attn[i]) + x[i]`: GPT-NeoX's parallel residual, summed in the order of
/// `mlp_output + attn_output + hidden_states`, in parallel.
pub fn parallel_residual_in_place(x: &mut [f32], mlp: &[f32], attn: &[f32]) {
    x.par_chunks_mut(4096)
        .zip(mlp.par_chunks(4096).zip(attn.par_chunks(4096)))
        .for_each(|(x, (m, a))| {
            for ((x, &m), &a) in x.iter_mut().zip(m).zip(a) {
                *x += m + a; // (m + a) + x: the sum is formed first, and + commutes
            }
        });
}

/// Fills every `bias.len()`-wide row of `dst` with `bias` (the starting value of a biased
/// Linear, which then accumulates `x · W` onto it, as `torch.addmm(bias, x, W)` does).
pub fn fill_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_hand_computation() {
        // x = [1, 2, 3, 4]: mean(x²) = 7.5; eps = 0.5 → 1/sqrt(8) = 0.35355339
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 2.0, 0.5, -1.0];
        let mut out = [0.0; 4];
        rms_norm_row(&x, &w, 0.5, &mut out);
        let r = 1.0f32 / 8.0f32.sqrt();
        assert_eq!(out, [r, 2.0 * (2.0 * r), 0.5 * (3.0 * r), -(4.0 * r)]);
        assert!((out[0] - 0.353_553_39).abs() < 1e-7);
    }

    #[test]
    fn layer_norm_uses_biased_variance() {
        // x = [1, 3]: mean 2, biased var 1; eps 0 → [-1, 1], then * gamma + beta
        let mut out = [0.0; 2];
        layer_norm_row(&[1.0, 3.0], &[2.0, 3.0], &[0.5, -0.5], 0.0, &mut out);
        assert_eq!(out, [-1.5, 2.5]);
    }

    #[test]
    fn softmax_is_shift_invariant_and_exact_on_simple_values() {
        let mut a = [0.0f32, 0.0, 2f32.ln()];
        softmax_in_place(&mut a);
        assert!((a[0] - 0.25).abs() < 1e-7 && (a[2] - 0.5).abs() < 1e-7);
        // large values must not overflow thanks to the max subtraction; the shift by 1024 is
        // exact in f32, so the results are identical
        let mut b = [0.0f32, 0.0, 1.0];
        let mut c = [1024.0f32, 1024.0, 1025.0];
        softmax_in_place(&mut b);
        softmax_in_place(&mut c);
        assert_eq!(b, c);
        let e = 1.0f64.exp();
        assert!((f64::from(b[2]) - e / (2.0 + e)).abs() < 1e-7);
    }

    #[test]
    fn gelu_new_matches_reference_values() {
        // reference: transformers NewGELUActivation in f64 (0.5x(1+tanh(√(2/π)(x+0.044715x³))))
        assert_eq!(gelu_new(0.0), 0.0);
        assert!((gelu_new(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu_new(-1.0) - (-0.158_808)).abs() < 1e-6);
        assert!((gelu_new(3.0) - 2.996_363_4).abs() < 1e-6);
    }

    #[test]
    fn gelus_match_reference_values() {
        // torch.nn.functional.gelu(torch.tensor([...]), approximate=...) in torch 2.15 (f32)
        for (x, tanh, erf) in [
            (1.0f32, 0.841_192, 0.841_344_7),
            (-1.0, -0.158_808, -0.158_655_26),
            (3.0, 2.996_362_7, 2.995_949_8),
            (-0.5, -0.154_286, -0.154_268_77),
        ] {
            assert!((gelu_tanh(x) - tanh).abs() < 1e-6, "{x}: {}", gelu_tanh(x));
            assert!((gelu(x) - erf).abs() < 1e-6, "{x}: {}", gelu(x));
        }
        assert_eq!((gelu(0.0), gelu_tanh(0.0)), (0.0, 0.0));
    }

    #[test]
    fn softcap_bounds_by_the_cap() {
        assert_eq!(softcap(0.0, 3.0), 0.0);
        assert!((softcap(1.0, 3.0) - 3.0 * (1.0f32 / 3.0).tanh()).abs() < 1e-7);
        assert!(softcap(1e6, 3.0) <= 3.0 && softcap(-1e6, 3.0) >= -3.0);
    }

    #[test]
    fn silu_matches_definition() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-7);
    }

    #[test]
    fn gated_and_plain_activations_apply_elementwise() {
        let mut g = vec![0.0f32, 1.0, -1.0];
        gated_in_place(&mut g, &[5.0, 2.0, 3.0], silu);
        assert_eq!(g, [0.0, silu(1.0) * 2.0, silu(-1.0) * 3.0]);
        let mut x = vec![0.0f32, 1.0];
        map_in_place(&mut x, gelu_new);
        assert_eq!(x, [0.0, gelu_new(1.0)]);
    }
}
