//! Causal multi-head attention over tiles of query rows.
//!
//! Why tiles: the eager formulation materialises `[T, T]` scores per head, which is 40 GB for
//! one head of a 100,000-token prompt. Attention here runs over blocks of query rows, each
//! block holding `[block, keys]` scores for one head at a time (`keys` ≤ T, and only up to the
//! block's last row under the causal mask), so memory grows as O(T·block) and the work of the
//! masked upper triangle is skipped. Each row's softmax still sees its whole row, so it is the
//! exact softmax of the eager formulation, and the products are arranged so that the result
//! is bit-identical to one tile over the whole prompt while rows are short enough for gemm to
//! sum them in one k-block (hundreds of keys); longer rows differ only by float reassociation
//! (see [`attention`]).

use rayon::prelude::*;

use super::forward::{Dims, Product};
use super::matmul::{MatMut, MatRef};
use super::ops;
use super::traits::Attention;
use super::ModelError;

/// f32 attention scores per worker tile (16 MiB): a query block spans this many cells.
const SCORE_TILE: usize = 1 << 22;
/// At most this many query rows per attention tile.
const MAX_QUERY_BLOCK: usize = 256;
/// At least this many keys per tile, where the prompt has them (see [`attention`]).
pub(super) const MIN_KEYS: usize = 3;

/// Query rows per attention tile for a prompt of `t` tokens: enough tiles for every thread
/// (two each, for balance under the causal mask), each within [`SCORE_TILE`] scores.
pub(super) fn query_block(t: usize, threads: usize) -> usize {
    let by_memory = SCORE_TILE / t.max(1);
    let for_threads = t.div_ceil(2 * threads.max(1));
    by_memory.min(for_threads).clamp(1, MAX_QUERY_BLOCK)
}

/// Rows of one projection: head `j` of token `t` starts at `data[t·stride + j·D]`.
#[derive(Clone, Copy)]
pub(super) struct Head<'a> {
    /// The projection's output `[T, stride]`.
    pub data: &'a [f32],
    /// Elements from one token's row to the next.
    pub stride: usize,
}

/// Causal multi-head attention (eager, as transformers' `eager_attention_forward`):
/// `softmax(q·kᵀ · scale + mask) · v` per head (`mask.scale` is `D^-½` unless the model says
/// otherwise; `mask.window` a sliding window; `mask.softcap` caps the scaled scores as
/// `cap · tanh(s / cap)` before the mask, as Gemma 2), key/value head `j / (nH/nKV)` for query head
/// `j` (GQA/MQA); `out` is `[T, nH·D]`.
///
/// The `T = dims.t` queries are the positions `past..past + T` of the sequence; `k` and `v`
/// hold its keys and values from position 0: `keys` rows, at least `past + T` (a KV cache's
/// followed by this forward's; a prefill has `past = 0` and `keys = T`). Rows past `past + T`
/// are masked, and only widen a tile to [`MIN_KEYS`] keys: a KV cache hands them (zeroed) to a
/// sequence shorter than that, so that the rows it caches have the bits a longer prefill gives
/// them. A query row computes the same bits whichever forward it belongs to, since its keys,
/// its products and their order do not depend on the other query rows of its tile.
///
/// Tiled over blocks of `block` query rows (in parallel; each block runs every head in turn):
/// a block needs only the keys from the first one its first row may see to its last row, so
/// one tile holds `[block, keys]` scores and a prompt costs O(T·block) memory, not T² per
/// head. Each row's softmax is exact over its whole allowed span (the row is complete in the
/// tile), and each output sums the same products in the same order as a full `[T, T]` product
/// would (the masked keys it leaves out contribute exact zeros), up to gemm's k-blocking of
/// very long rows.
// Every argument is one of the product's operands or sizes; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    q: Head<'_>,
    k: Head<'_>,
    v: Head<'_>,
    dims: Dims,
    past: usize,
    keys: usize,
    mask: Attention,
    block: usize,
    out: &mut [f32],
) -> Result<(), ModelError> {
    let Attention {
        window,
        scale,
        softcap,
        ..
    } = mask;
    let (t, d) = (dims.t, dims.d);
    let total = past + t; // positions
    if keys < total {
        return Err(ModelError::Internal(format!(
            "attention over {total} positions with {keys} keys"
        )));
    }
    let available = keys;
    let group = dims.n_heads / dims.n_kv;
    let width = dims.n_heads * d;
    // first key row i may attend to: i - window < key <= i
    let first_key = |i: usize| window.map_or(0, |wnd| (i + 1).saturating_sub(wnd));
    // A tile of one row keeps the many-row arithmetic (see `matmul_rows`); a one-token
    // prompt is the single-row product it always was.
    let product = if available > 1 {
        Product::General
    } else {
        Product::Fast
    };
    out[..t * width]
        .par_chunks_mut(block.max(1) * width)
        .enumerate()
        .try_for_each(|(b, out_rows)| -> Result<(), ModelError> {
            let rows = out_rows.len() / width;
            let r0 = b * block; // this tile's first query row
            let p0 = past + r0; // and its position
                                // Keys first_key(p0)..p0+rows, widened to at least MIN_KEYS (masked keys weigh an
                                // exact 0): gemm computes products over 1 or 2 keys with other kernels, whose
                                // sums would differ in the last bits from those of the one-tile product.
            let hi = (p0 + rows).max(MIN_KEYS.min(available));
            let lo = first_key(p0).min(hi.saturating_sub(MIN_KEYS));
            let keys = hi - lo;
            let mut scores = vec![0.0f32; rows * keys]; // [rows, keys]: query r0+i, key lo+j
            for j in 0..dims.n_heads {
                let kv = j / group;
                let qh = MatRef::new(&q.data[r0 * q.stride + j * d..], rows, d, q.stride, 1)?;
                let kh = MatRef::new(&k.data[lo * k.stride + kv * d..], keys, d, k.stride, 1)?;
                let vh = MatRef::new(&v.data[lo * v.stride + kv * d..], keys, d, v.stride, 1)?;
                product.run(
                    MatMut::row_major(&mut scores, rows, keys)?,
                    qh,
                    kh.t(),
                    false,
                    1,
                )?;
                for (ri, row) in scores.chunks_mut(keys).enumerate() {
                    let i = p0 + ri;
                    let (from, to) = (first_key(i) - lo, i - lo); // allowed keys, in the tile
                    let allowed = &mut row[from..=to];
                    for s in allowed.iter_mut() {
                        *s *= scale;
                    }
                    if let Some(cap) = softcap {
                        for s in allowed.iter_mut() {
                            *s = ops::softcap(*s, cap);
                        }
                    }
                    ops::softmax_in_place(allowed);
                    row[..from].fill(0.0);
                    row[to + 1..].fill(0.0);
                }
                // head j's columns of these rows: [rows, D], row stride nH·D
                product.run(
                    MatMut::new(&mut out_rows[j * d..], rows, d, width)?,
                    MatRef::row_major(&scores, rows, keys)?,
                    vh,
                    false,
                    1,
                )?;
            }
            Ok(())
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One head, D = 2, values one-hot per position: the output at position i is the
    /// attention distribution itself, so the mask can be read off directly.
    fn attend(t: usize, window: Option<usize>) -> Vec<f32> {
        let dims = Dims {
            t,
            h: 2,
            n_heads: 1,
            n_kv: 1,
            d: 2,
            inter: 1,
            vocab: 1,
        };
        let q = vec![0.0f32; t * 2]; // zero queries: uniform scores over the allowed keys
        let k = vec![1.0f32; t * 2];
        let mut out = vec![0.0f32; t * 2];
        // values: position j carries (j, 1), so out[i] = (Σ p_j·j, Σ p_j)
        let v: Vec<f32> = (0..t).flat_map(|j| [j as f32, 1.0]).collect();
        attention(
            Head {
                data: &q,
                stride: 2,
            },
            Head {
                data: &k,
                stride: 2,
            },
            Head {
                data: &v,
                stride: 2,
            },
            dims,
            0,
            t,
            Attention {
                window,
                scale: (2f64).powf(-0.5) as f32,
                softcap: None,
                local_rope: false,
            },
            3, // tiles of 3 query rows: every test below crosses tile boundaries
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn causal_mask_averages_the_prefix() {
        let out = attend(4, None);
        // position i averages keys 0..=i: mean index i/2, weights summing to 1
        for i in 0..4 {
            assert!((out[2 * i] - i as f32 / 2.0).abs() < 1e-6, "{out:?}");
            assert!((out[2 * i + 1] - 1.0).abs() < 1e-6);
        }
    }

    /// Deterministic values in about [-2, 2].
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Attention over `t` tokens (GQA: 4 query heads over 2 KV heads, D = 8) tiled by `block`.
    fn gqa(t: usize, window: Option<usize>, block: usize) -> Vec<f32> {
        gqa_capped(t, window, block, None)
    }

    /// [`gqa`] with the scaled scores soft-capped at `softcap`.
    fn gqa_capped(t: usize, window: Option<usize>, block: usize, softcap: Option<f32>) -> Vec<f32> {
        let dims = Dims {
            t,
            h: 32,
            n_heads: 4,
            n_kv: 2,
            d: 8,
            inter: 1,
            vocab: 1,
        };
        let (q, k, v) = (values(t * 32, 1), values(t * 16, 2), values(t * 16, 3));
        let mut out = vec![0.0f32; t * 32];
        attention(
            Head {
                data: &q,
                stride: 32,
            },
            Head {
                data: &k,
                stride: 16,
            },
            Head {
                data: &v,
                stride: 16,
            },
            dims,
            0,
            t,
            Attention {
                window,
                scale: (8f64).powf(-0.5) as f32,
                softcap,
                local_rope: false,
            },
            block,
            &mut out,
        )
        .unwrap();
        out
    }

    /// Query tiles change the memory, not the numbers: every tiling of a prompt gives the same
    /// bits as one tile over the whole prompt (what the forward computed before tiling), with
    /// and without a sliding window, and agrees with a plain f64 evaluation.
    #[test]
    fn tiled_attention_is_bit_identical_to_one_tile() {
        for window in [None, Some(5)] {
            for t in [1, 2, 7, 40, 130] {
                let whole = gqa(t, window, t);
                for block in [1, 2, 3, 16, 64, 256] {
                    let tiled = gqa(t, window, block);
                    let same = whole
                        .iter()
                        .zip(&tiled)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "t={t} window={window:?} block={block}");
                }
                // against f64 arithmetic, head by head
                let (q, k, v) = (values(t * 32, 1), values(t * 16, 2), values(t * 16, 3));
                for i in 0..t {
                    let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
                    for j in 0..4 {
                        let kv = j / 2;
                        let s: Vec<f64> = (lo..=i)
                            .map(|key| {
                                (0..8)
                                    .map(|c| {
                                        f64::from(q[i * 32 + j * 8 + c])
                                            * f64::from(k[key * 16 + kv * 8 + c])
                                    })
                                    .sum::<f64>()
                                    / 8f64.sqrt()
                            })
                            .collect();
                        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                        for c in 0..8 {
                            let want: f64 = (lo..=i)
                                .zip(&s)
                                .map(|(key, x)| {
                                    (x - m).exp() / z * f64::from(v[key * 16 + kv * 8 + c])
                                })
                                .sum();
                            let got = f64::from(whole[i * 32 + j * 8 + c]);
                            assert!(
                                (got - want).abs() < 1e-5,
                                "t={t} i={i} j={j}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Soft-capping (Gemma 2) bounds each scaled score by `cap · tanh(s / cap)` before the
    /// mask and the softmax: against an f64 evaluation, with a window, across tiles.
    #[test]
    fn soft_capped_scores_match_an_f64_evaluation() {
        let (t, cap) = (40, 0.5f64);
        let window = Some(9);
        let got = gqa_capped(t, window, 7, Some(cap as f32));
        assert_ne!(got, gqa(t, window, 7), "the cap must matter here");
        let (q, k, v) = (values(t * 32, 1), values(t * 16, 2), values(t * 16, 3));
        for i in 0..t {
            let lo = (i + 1).saturating_sub(9);
            for j in 0..4 {
                let kv = j / 2;
                let s: Vec<f64> = (lo..=i)
                    .map(|key| {
                        let dot: f64 = (0..8)
                            .map(|c| {
                                f64::from(q[i * 32 + j * 8 + c])
                                    * f64::from(k[key * 16 + kv * 8 + c])
                            })
                            .sum();
                        (dot / 8f64.sqrt() / cap).tanh() * cap
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for c in 0..8 {
                    let want: f64 = (lo..=i)
                        .zip(&s)
                        .map(|(key, x)| (x - m).exp() / z * f64::from(v[key * 16 + kv * 8 + c]))
                        .sum();
                    let g = f64::from(got[i * 32 + j * 8 + c]);
                    assert!((g - want).abs() < 1e-5, "i={i} j={j}: {g} vs {want}");
                }
            }
        }
    }

    #[test]
    fn query_blocks_are_bounded_by_the_tile_and_shared_among_threads() {
        assert_eq!(query_block(80, 2), 20);
        assert_eq!(query_block(1, 2), 1);
        assert_eq!(query_block(8192, 2), MAX_QUERY_BLOCK);
        // 100,000 tokens: 41 rows × 100,000 keys ≤ the 4 Mi-score tile
        let b = query_block(100_000, 2);
        assert_eq!(b, SCORE_TILE / 100_000);
        assert!(b * 100_000 <= SCORE_TILE);
    }

    #[test]
    fn sliding_window_keeps_the_last_w_keys() {
        let out = attend(5, Some(2));
        // window 2: position i averages keys i-1 and i (position 0 only itself)
        let want = [0.0, 0.5, 1.5, 2.5, 3.5];
        for (i, w) in want.iter().enumerate() {
            assert!((out[2 * i] - w).abs() < 1e-6, "{out:?}");
        }
    }
}
