//! The layer loop: llama-family decoders (Llama, Mistral, Qwen2, Qwen3) and GPT-2.
//!
//! Prefill only: the whole prompt goes through each layer at once, with a causal mask, and
//! no KV cache is kept. Weights are fetched per layer and their mmap pages released after it.

use orient_inspect::{Arch, ModelConfig, RopeScaling};
use rayon::prelude::*;

use super::matmul::{matmul, MatMut, MatRef};
use super::ops;
use super::rope::{self, Llama3Scaling, RopeTables};
use super::weights::Weights;
use super::{ForwardOutput, LayerTrace, ModelError};

/// Sizes of one forward, taken from the config.
#[derive(Clone, Copy, Debug)]
struct Dims {
    t: usize,
    h: usize,
    n_heads: usize,
    n_kv: usize,
    d: usize,
    inter: usize,
    vocab: usize,
}

/// The activations of one forward, allocated once and reused by every layer.
#[derive(Debug)]
struct Buffers {
    /// `[T, H]` the residual stream
    x: Vec<f32>,
    /// `[T, H]` normed input of a block
    h: Vec<f32>,
    /// `[T, nH·D]` queries (GPT-2: `[T, 3H]` fused q,k,v)
    q: Vec<f32>,
    /// `[T, nKV·D]` keys
    k: Vec<f32>,
    /// `[T, nKV·D]` values
    v: Vec<f32>,
    /// `[T, nH·D]` attention output, heads concatenated
    attn: Vec<f32>,
    /// `[T, H]` output of a block, before the residual add
    out: Vec<f32>,
    /// `[T, I]` MLP gate (GPT-2: c_fc output)
    gate: Vec<f32>,
    /// `[T, I]` MLP up projection
    up: Vec<f32>,
}

/// Runs the model on `tokens`. See [`super::Model::forward`].
pub(crate) fn forward(
    cfg: &ModelConfig,
    w: &mut Weights<'_>,
    tokens: &[u32],
    record: bool,
    threads: usize,
) -> Result<ForwardOutput, ModelError> {
    let dims = Dims {
        t: tokens.len(),
        h: cfg.hidden_size,
        n_heads: cfg.num_attention_heads,
        n_kv: cfg.num_key_value_heads,
        d: cfg.head_dim,
        inter: cfg.intermediate_size,
        vocab: cfg.vocab_size,
    };
    let t = dims.t;
    if t == 0 {
        return Err(ModelError::EmptyPrompt);
    }
    for (position, &token) in tokens.iter().enumerate() {
        if token as usize >= dims.vocab {
            return Err(ModelError::TokenOutOfRange {
                token,
                position,
                vocab: dims.vocab,
            });
        }
    }
    let rows: Vec<usize> = tokens.iter().map(|&x| x as usize).collect();
    let gpt2 = cfg.arch == Arch::Gpt2;
    let eps = cfg.norm_eps as f32;
    let qkv_width = if gpt2 {
        3 * dims.h
    } else {
        dims.n_heads * dims.d
    };
    // Every buffer is T × (one of these widths) f32s: check the largest product once, so that
    // no size below can overflow.
    let widest = [
        dims.vocab,
        dims.inter,
        qkv_width,
        dims.n_heads * dims.d,
        dims.h,
        t,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    t.checked_mul(widest)
        .and_then(|cells| cells.checked_mul(size_of::<f32>()))
        .filter(|&bytes| isize::try_from(bytes).is_ok())
        .ok_or(ModelError::PromptTooLong { tokens: t })?;
    let mut b = Buffers {
        x: Vec::new(),
        h: vec![0.0; t * dims.h],
        q: vec![0.0; t * qkv_width],
        k: vec![0.0; t * dims.n_kv * dims.d],
        v: vec![0.0; t * dims.n_kv * dims.d],
        attn: vec![0.0; t * dims.n_heads * dims.d],
        out: vec![0.0; t * dims.h],
        gate: vec![0.0; t * dims.inter],
        up: vec![0.0; if gpt2 { 0 } else { t * dims.inter }],
    };

    // Embedding: hidden_states[0].
    if gpt2 {
        if t > cfg.max_position_embeddings {
            return Err(ModelError::TooManyPositions {
                tokens: t,
                max: cfg.max_position_embeddings,
            });
        }
        b.x = w.embedding_rows("transformer.wte.weight", &rows)?;
        let positions: Vec<usize> = (0..t).collect();
        let wpe = w.embedding_rows("transformer.wpe.weight", &positions)?;
        ops::add_in_place(&mut b.x, &wpe);
        w.release("transformer.wpe.weight");
    } else {
        b.x = w.embedding_rows("model.embed_tokens.weight", &rows)?;
    }
    let embedding = if record { b.x.clone() } else { Vec::new() };

    let rope_tables = if gpt2 {
        None
    } else {
        let llama3 = match &cfg.rope_scaling {
            None => None,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => Some(Llama3Scaling {
                factor: *factor,
                low_freq_factor: *low_freq_factor,
                high_freq_factor: *high_freq_factor,
                original_max_position_embeddings: *original_max_position_embeddings,
            }),
            Some(other) => return Err(ModelError::UnsupportedRope(other.name().to_string())),
        };
        let inv = rope::inv_freq(dims.d, cfg.rope_theta, llama3.as_ref());
        Some(RopeTables::new(&inv, t))
    };
    // Mistral slides its window in every layer. Qwen2/Qwen3 (`use_sliding_window`) slide only
    // from `max_window_layers` on, which the resolved config does not carry: a window shorter
    // than the prompt is refused there rather than applied to the wrong layers. Within the
    // window the mask is the plain causal one.
    let window = match (cfg.arch, cfg.sliding_window) {
        (Arch::Mistral, Some(w)) if w < t => Some(w),
        (Arch::Qwen2 | Arch::Qwen3, Some(w)) if w < t => {
            return Err(ModelError::UnsupportedSlidingWindow {
                window: w,
                tokens: t,
            })
        }
        _ => None,
    };
    let act_ok = if gpt2 {
        cfg.hidden_act == "gelu_new"
    } else {
        cfg.hidden_act == "silu"
    };
    if !act_ok {
        return Err(ModelError::UnsupportedActivation(cfg.hidden_act.clone()));
    }

    let mut layers = Vec::new();
    for layer in 0..cfg.num_hidden_layers {
        let after_attention = if gpt2 {
            gpt2_layer(w, &mut b, dims, layer, eps, record, threads)?
        } else {
            let rope = rope_tables
                .as_ref()
                .ok_or_else(|| ModelError::Internal("rope tables missing".into()))?;
            llama_layer(
                cfg, w, &mut b, dims, layer, eps, rope, window, record, threads,
            )?
        };
        if record {
            layers.push(LayerTrace {
                after_attention,
                output: b.x.clone(),
            });
        }
        w.release_layer(layer);
    }

    // Final norm: hidden_states[L] in transformers' convention.
    let mut normed = vec![0.0f32; t * dims.h]; // [T, H]
    if gpt2 {
        let g = w.vector("transformer.ln_f.weight")?;
        let beta = w.vector("transformer.ln_f.bias")?;
        ops::layer_norm(&b.x, &g, &beta, eps, &mut normed);
    } else {
        let g = w.vector("model.norm.weight")?;
        ops::rms_norm(&b.x, &g, eps, &mut normed);
    }
    drop(b);

    // lm_head, in vocabulary blocks so that a widened bf16 head never needs V·H f32 at once.
    let head = if w.has("lm_head.weight") {
        "lm_head.weight"
    } else if gpt2 {
        "transformer.wte.weight"
    } else {
        "model.embed_tokens.weight"
    };
    let mut logits = vec![0.0f32; t * dims.vocab]; // [T, V]
    const VOCAB_BLOCK: usize = 16384;
    let mut start = 0;
    while start < dims.vocab {
        let end = (start + VOCAB_BLOCK).min(dims.vocab);
        let wm = w.matrix_block(head, start, end)?; // [H, end-start]
        let dst = MatMut::new(&mut logits[start..], t, end - start, dims.vocab)?;
        matmul(
            dst,
            MatRef::row_major(&normed, t, dims.h)?,
            wm,
            false,
            threads,
        )?;
        start = end;
    }
    w.release(head);
    if gpt2 {
        w.release("transformer.wte.weight");
    } else {
        w.release("model.embed_tokens.weight");
    }

    Ok(ForwardOutput {
        tokens: tokens.to_vec(),
        hidden_size: dims.h,
        vocab_size: dims.vocab,
        embedding,
        layers,
        final_norm: if record { normed } else { Vec::new() },
        logits,
    })
}

/// `out [T, N] = x [T, K] · W + bias`, W fetched by name (any stored layout).
fn linear(
    w: &mut Weights<'_>,
    x: &[f32],
    t: usize,
    weight: &str,
    bias: Option<&str>,
    out: &mut [f32],
    threads: usize,
) -> Result<(), ModelError> {
    let bias = match bias {
        Some(name) if w.has(name) => Some(w.vector(name)?),
        _ => None,
    };
    let wm = w.matrix(weight)?; // [K, N]
    let (k, n) = (wm.rows(), wm.cols());
    if let Some(bias) = &bias {
        if bias.len() != n {
            return Err(ModelError::Internal(format!(
                "bias of `{weight}` has {} values, expected {n}",
                bias.len()
            )));
        }
        ops::fill_rows(&mut out[..t * n], bias);
    }
    matmul(
        MatMut::row_major(&mut out[..t * n], t, n)?,
        MatRef::row_major(&x[..t * k], t, k)?,
        wm,
        bias.is_some(),
        threads,
    )
}

/// One llama-family decoder layer on `b.x` in place; returns the residual stream after the
/// attention block when `record`.
#[allow(clippy::too_many_arguments)]
fn llama_layer(
    cfg: &ModelConfig,
    w: &mut Weights<'_>,
    b: &mut Buffers,
    dims: Dims,
    i: usize,
    eps: f32,
    rope: &RopeTables,
    window: Option<usize>,
    record: bool,
    threads: usize,
) -> Result<Vec<f32>, ModelError> {
    let t = dims.t;
    let p = format!("model.layers.{i}.");
    let name = |s: &str| format!("{p}{s}");

    // attention block
    let g = w.vector(&name("input_layernorm.weight"))?;
    ops::rms_norm(&b.x, &g, eps, &mut b.h);
    for (proj, buf) in [
        ("q_proj", &mut b.q),
        ("k_proj", &mut b.k),
        ("v_proj", &mut b.v),
    ] {
        linear(
            w,
            &b.h,
            t,
            &name(&format!("self_attn.{proj}.weight")),
            Some(&name(&format!("self_attn.{proj}.bias"))),
            buf,
            threads,
        )?;
    }
    if cfg.qk_norm {
        let qn = w.vector(&name("self_attn.q_norm.weight"))?;
        let kn = w.vector(&name("self_attn.k_norm.weight"))?;
        ops::rms_norm_in_place(&mut b.q, &qn, eps);
        ops::rms_norm_in_place(&mut b.k, &kn, eps);
    }
    rope.apply(&mut b.q, t);
    rope.apply(&mut b.k, t);
    let qd = dims.n_heads * dims.d;
    let kvd = dims.n_kv * dims.d;
    attention(
        Head {
            data: &b.q,
            stride: qd,
        },
        Head {
            data: &b.k,
            stride: kvd,
        },
        Head {
            data: &b.v,
            stride: kvd,
        },
        dims,
        window,
        &mut b.attn,
    )?;
    linear(
        w,
        &b.attn,
        t,
        &name("self_attn.o_proj.weight"),
        Some(&name("self_attn.o_proj.bias")),
        &mut b.out,
        threads,
    )?;
    ops::add_in_place(&mut b.x, &b.out);
    let after_attention = if record { b.x.clone() } else { Vec::new() };

    // MLP block: down(silu(gate(x)) * up(x))
    let g = w.vector(&name("post_attention_layernorm.weight"))?;
    ops::rms_norm(&b.x, &g, eps, &mut b.h);
    linear(
        w,
        &b.h,
        t,
        &name("mlp.gate_proj.weight"),
        Some(&name("mlp.gate_proj.bias")),
        &mut b.gate,
        threads,
    )?;
    linear(
        w,
        &b.h,
        t,
        &name("mlp.up_proj.weight"),
        Some(&name("mlp.up_proj.bias")),
        &mut b.up,
        threads,
    )?;
    ops::silu_mul_in_place(&mut b.gate, &b.up);
    linear(
        w,
        &b.gate,
        t,
        &name("mlp.down_proj.weight"),
        Some(&name("mlp.down_proj.bias")),
        &mut b.out,
        threads,
    )?;
    ops::add_in_place(&mut b.x, &b.out);
    Ok(after_attention)
}

/// One GPT-2 block on `b.x` in place; returns the residual stream after attention when
/// `record`.
fn gpt2_layer(
    w: &mut Weights<'_>,
    b: &mut Buffers,
    dims: Dims,
    i: usize,
    eps: f32,
    record: bool,
    threads: usize,
) -> Result<Vec<f32>, ModelError> {
    let t = dims.t;
    let h = dims.h;
    let name = |s: &str| format!("transformer.h.{i}.{s}");

    let g = w.vector(&name("ln_1.weight"))?;
    let beta = w.vector(&name("ln_1.bias"))?;
    ops::layer_norm(&b.x, &g, &beta, eps, &mut b.h);
    // fused q,k,v: [T, 3H], split along the columns
    linear(
        w,
        &b.h,
        t,
        &name("attn.c_attn.weight"),
        Some(&name("attn.c_attn.bias")),
        &mut b.q,
        threads,
    )?;
    attention(
        Head {
            data: &b.q,
            stride: 3 * h,
        },
        Head {
            data: &b.q[h..],
            stride: 3 * h,
        },
        Head {
            data: &b.q[2 * h..],
            stride: 3 * h,
        },
        dims,
        None,
        &mut b.attn,
    )?;
    linear(
        w,
        &b.attn,
        t,
        &name("attn.c_proj.weight"),
        Some(&name("attn.c_proj.bias")),
        &mut b.out,
        threads,
    )?;
    ops::add_in_place(&mut b.x, &b.out);
    let after_attention = if record { b.x.clone() } else { Vec::new() };

    let g = w.vector(&name("ln_2.weight"))?;
    let beta = w.vector(&name("ln_2.bias"))?;
    ops::layer_norm(&b.x, &g, &beta, eps, &mut b.h);
    linear(
        w,
        &b.h,
        t,
        &name("mlp.c_fc.weight"),
        Some(&name("mlp.c_fc.bias")),
        &mut b.gate,
        threads,
    )?;
    ops::gelu_new_in_place(&mut b.gate);
    linear(
        w,
        &b.gate,
        t,
        &name("mlp.c_proj.weight"),
        Some(&name("mlp.c_proj.bias")),
        &mut b.out,
        threads,
    )?;
    ops::add_in_place(&mut b.x, &b.out);
    Ok(after_attention)
}

/// Rows of one projection: head `j` of token `t` starts at `data[t·stride + j·D]`.
#[derive(Clone, Copy)]
struct Head<'a> {
    data: &'a [f32],
    stride: usize,
}

/// Causal multi-head attention (eager, as transformers' `eager_attention_forward`):
/// `softmax(q·kᵀ · D^-½ + mask) · v` per head, key/value head `j / (nH/nKV)` for query head
/// `j` (GQA/MQA). Heads run in parallel; `out` is `[T, nH·D]`.
fn attention(
    q: Head<'_>,
    k: Head<'_>,
    v: Head<'_>,
    dims: Dims,
    window: Option<usize>,
    out: &mut [f32],
) -> Result<(), ModelError> {
    let (t, d) = (dims.t, dims.d);
    let group = dims.n_heads / dims.n_kv;
    // transformers: scaling = head_dim ** -0.5 (a Python float), applied as an f32 multiply
    let scale = (d as f64).powf(-0.5) as f32;
    let per_head: Vec<Vec<f32>> = (0..dims.n_heads)
        .into_par_iter()
        .map(|j| -> Result<Vec<f32>, ModelError> {
            let kv = j / group;
            let qh = MatRef::new(&q.data[j * d..], t, d, q.stride, 1)?; // [T, D]
            let kh = MatRef::new(&k.data[kv * d..], t, d, k.stride, 1)?; // [T, D]
            let vh = MatRef::new(&v.data[kv * d..], t, d, v.stride, 1)?; // [T, D]
            let mut scores = vec![0.0f32; t * t]; // [T, T]
            matmul(MatMut::row_major(&mut scores, t, t)?, qh, kh.t(), false, 1)?;
            for (i, row) in scores.chunks_mut(t).enumerate() {
                // allowed keys: i - window < j <= i
                let lo = window.map_or(0, |wnd| (i + 1).saturating_sub(wnd));
                let allowed = &mut row[lo..=i];
                for s in allowed.iter_mut() {
                    *s *= scale;
                }
                ops::softmax_in_place(allowed);
                row[..lo].fill(0.0);
                row[i + 1..].fill(0.0);
            }
            let mut o = vec![0.0f32; t * d]; // [T, D]
            matmul(
                MatMut::row_major(&mut o, t, d)?,
                MatRef::row_major(&scores, t, t)?,
                vh,
                false,
                1,
            )?;
            Ok(o)
        })
        .collect::<Result<_, _>>()?;
    let width = dims.n_heads * d;
    for (j, o) in per_head.iter().enumerate() {
        for r in 0..t {
            out[r * width + j * d..r * width + (j + 1) * d].copy_from_slice(&o[r * d..(r + 1) * d]);
        }
    }
    Ok(())
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
            window,
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
