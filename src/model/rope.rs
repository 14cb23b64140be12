//! Rotary position embeddings, computed the way transformers computes them.
//!
//! The inverse frequencies follow `_compute_default_rope_parameters` and
//! `_compute_llama3_parameters` (transformers' `modeling_rope_utils.py`) operation by
//! operation in f32, including PyTorch's rewrite of `scalar / tensor` as
//! `tensor.reciprocal() * scalar`. A one-ulp slip in an inverse frequency grows with the position,
//! and a long prompt makes it visible in the logits.

use rayon::prelude::*;

/// The `llama3` frequency rescaling (Llama 3.1 and later).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// `factor` (8 in Llama 3.1).
    pub factor: f64,
    /// `low_freq_factor` (1).
    pub low_freq_factor: f64,
    /// `high_freq_factor` (4).
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings` (8192).
    pub original_max_position_embeddings: usize,
}

/// `inv_freq[i] = 1 / θ^(2i/D)` for `i < D/2`, optionally rescaled by `llama3`, in f32.
pub fn inv_freq(head_dim: usize, theta: f64, llama3: Option<&Llama3Scaling>) -> Vec<f32> {
    let half = head_dim / 2;
    let base = theta as f32;
    // torch.arange(0, dim, 2, dtype=int64).float() / dim, then base ** that, then 1.0 / that.
    let mut inv: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = (2 * i) as f32 / head_dim as f32;
            // PyTorch's f32 pow is accurate to about an ulp; rounding the f64 power is the
            // correctly rounded value it approximates.
            let power = f64::from(base).powf(f64::from(exponent)) as f32;
            1.0 / power
        })
        .collect();
    if let Some(s) = llama3 {
        let factor = s.factor as f32;
        let low = s.low_freq_factor as f32;
        let high = s.high_freq_factor as f32;
        let old_ctx = s.original_max_position_embeddings as f32;
        let low_freq_wavelen =
            (s.original_max_position_embeddings as f64 / s.low_freq_factor) as f32;
        let high_freq_wavelen =
            (s.original_max_position_embeddings as f64 / s.high_freq_factor) as f32;
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        for f in inv.iter_mut() {
            let wavelen = (1.0 / *f) * two_pi; // 2π / inv_freq = inv_freq.reciprocal() * 2π
            let scaled = if wavelen > low_freq_wavelen {
                *f / factor
            } else {
                *f
            };
            let smooth = ((1.0 / wavelen) * old_ctx - low) / (high - low);
            let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
            // `~(wavelen < high) * ~(wavelen > low)`; wavelengths are finite, so this is `high <= w <= low`
            let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
            *f = if medium { smoothed } else { scaled };
        }
    }
    inv
}

/// The `cos` and `sin` tables for positions `0..len`, each `[len, R]` for R rotated dimensions
/// per head (the half-width table repeated twice, as `torch.cat((freqs, freqs), -1)`).
#[derive(Clone, Debug)]
pub struct RopeTables {
    /// `[len, R]`
    pub cos: Vec<f32>,
    /// `[len, R]`
    pub sin: Vec<f32>,
    /// R: the rotated dimensions at the start of each head (D unless the rotary is partial).
    pub rotary: usize,
}

impl RopeTables {
    /// `freqs[t, i] = t · inv_freq[i]` in f32, then cos and sin (correctly rounded from f64).
    pub fn new(inv_freq: &[f32], len: usize) -> RopeTables {
        RopeTables::at(inv_freq, 0..len)
    }

    /// The tables of the positions `positions` only (row 0 is position `positions.start`): what
    /// a decode step over tokens after a KV cache needs. Each row depends on its position alone,
    /// so it has the same bits as the same row of [`RopeTables::new`] over the whole sequence.
    pub fn at(inv_freq: &[f32], positions: std::ops::Range<usize>) -> RopeTables {
        let half = inv_freq.len();
        let d = 2 * half;
        let len = positions.len();
        let mut cos = vec![0.0f32; len * d]; // [len, D]
        let mut sin = vec![0.0f32; len * d]; // [len, D]
        for (row, t) in positions.enumerate() {
            for (i, &f) in inv_freq.iter().enumerate() {
                let angle = f64::from(t as f32 * f);
                let (s, c) = angle.sin_cos();
                cos[row * d + i] = c as f32;
                cos[row * d + half + i] = c as f32;
                sin[row * d + i] = s as f32;
                sin[row * d + half + i] = s as f32;
            }
        }
        RopeTables {
            cos,
            sin,
            rotary: d,
        }
    }

    /// Rotates the first R dimensions of every head of `x` `[T, heads·head_dim]` in place,
    /// leaving the rest of each head as it is (transformers' partial rotary):
    /// `x·cos + rotate_half(x)·sin`, `rotate_half(x) = cat(-x[R/2:R], x[:R/2])`.
    pub fn apply(&self, x: &mut [f32], tokens: usize, head_dim: usize) {
        let d = self.rotary;
        let half = d / 2;
        let width = x.len().checked_div(tokens).unwrap_or(0);
        if width == 0 || head_dim < d || head_dim == 0 {
            return;
        }
        x.par_chunks_mut(width).enumerate().for_each(|(t, row)| {
            let cos = &self.cos[t * d..(t + 1) * d];
            let sin = &self.sin[t * d..(t + 1) * d];
            for head in row.chunks_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] + (-b) * sin[i];
                    head[i + half] = b * cos[i + half] + a * sin[i + half];
                }
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_inv_freq_is_theta_power() {
        // D = 4, θ = 100: [1/100^0, 1/100^(2/4)] = [1, 0.1]
        assert_eq!(inv_freq(4, 100.0, None), vec![1.0, 0.1]);
    }

    /// Bit-exact against transformers 5.24 `_compute_llama3_parameters` for the llama fixture
    /// (D = 16, θ = 1e4, factor 8, low 1, high 4, original context 64): printed with
    /// `ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(...))[0].tolist()` in /work/venv-pt.
    #[test]
    fn llama3_scaling_matches_transformers() {
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let got = inv_freq(16, 10000.0, Some(&s));
        let want: Vec<f32> = LLAMA3_REFERENCE_BITS
            .iter()
            .map(|&b| f32::from_bits(b))
            .collect();
        assert_eq!(got, want);
        // high frequencies untouched, low ones divided by the factor
        assert_eq!(got[0], 1.0);
        assert_eq!(got[7], inv_freq(16, 10000.0, None)[7] / 8.0);
    }

    const LLAMA3_REFERENCE_BITS: [u32; 8] = [
        1065353216, 1048199156, 1012248368, 998344419, 983815946, 969883192, 956502639, 942000992,
    ];

    /// `1.0 / (10000 ** (torch.arange(0, 16, 2, dtype=torch.int64).float() / 16))`, as bits.
    #[test]
    fn default_inv_freq_matches_transformers_bits() {
        let want: [u32; 8] = [
            1065353216, 1050798235, 1036831949, 1023510243, 1008981770, 995049016, 981668463,
            967166816,
        ];
        let got: Vec<u32> = inv_freq(16, 10000.0, None)
            .iter()
            .map(|f| f.to_bits())
            .collect();
        assert_eq!(got, want.to_vec());
    }

    #[test]
    fn rotation_of_one_head_by_hand() {
        // D = 2, inv_freq = [1]: position 1 rotates (a, b) by 1 radian.
        let tables = RopeTables::new(&[1.0], 2);
        let mut x = vec![1.0, 0.0, 1.0, 0.0]; // [T=2, D=2]
        tables.apply(&mut x, 2, 2);
        assert_eq!(&x[..2], &[1.0, 0.0]); // position 0: identity
        let (s, c) = (1.0f64.sin() as f32, 1.0f64.cos() as f32);
        assert_eq!(&x[2..], &[c, s]);
    }

    /// A table that starts at a later position has the same bits as the rows of the whole one.
    #[test]
    fn tables_from_an_offset_are_rows_of_the_whole_table() {
        let inv = inv_freq(16, 1e6, None);
        let whole = RopeTables::new(&inv, 40);
        let tail = RopeTables::at(&inv, 33..40);
        assert_eq!(tail.cos, whole.cos[33 * 16..]);
        assert_eq!(tail.sin, whole.sin[33 * 16..]);
        assert!(RopeTables::at(&inv, 5..5).cos.is_empty());
    }

    /// Partial rotary: heads of 4 with 2 rotated dimensions keep their last two untouched.
    #[test]
    fn partial_rotary_leaves_the_rest_of_each_head() {
        let tables = RopeTables::new(&[1.0], 2);
        let mut x = vec![1.0, 0.0, 7.0, 8.0, 1.0, 0.0, 7.0, 8.0]; // [T=2, heads=1, D=4]
        tables.apply(&mut x, 2, 4);
        let (s, c) = (1.0f64.sin() as f32, 1.0f64.cos() as f32);
        assert_eq!(x, [1.0, 0.0, 7.0, 8.0, c, s, 7.0, 8.0]);
    }
}
