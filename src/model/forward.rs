//! The layer loop: llama-family decoders (Llama, Mistral, Qwen2, Qwen3) and GPT-2.
//!
//! Prefill only: the whole prompt goes through each layer at once, with a causal mask, and
//! no KV cache is kept. Weights are fetched per layer and their mmap pages released after it.
//!
//! Memory is bounded and known before the first allocation: attention runs over blocks of
//! query rows (a `[block, keys]` score tile per worker, never `[T, T]` per head), the logits
//! are computed only for the positions asked for, and the peak is estimated from the config
//! and refused when it exceeds the memory available (see [`super::memory`]).

use orient_inspect::{Arch, ModelConfig, RopeScaling};

use super::attention::{attention, query_block, Head};
use super::matmul::{matmul, matmul_rows, MatMut, MatRef};
use super::memory::{self, Footprint};
use super::ops;
use super::rope::{self, Llama3Scaling, RopeTables};
use super::weights::Weights;
use super::{ForwardOptions, ForwardOutput, LayerTrace, LogitPositions, ModelError};

/// Vocabulary entries per lm_head block: a widened bf16 head never needs V·H f32 at once.
const VOCAB_BLOCK: usize = 16384;
/// Sizes of one forward, taken from the config.
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    /// T: prompt length.
    pub t: usize,
    /// H.
    pub h: usize,
    /// nH.
    pub n_heads: usize,
    /// nKV.
    pub n_kv: usize,
    /// D.
    pub d: usize,
    /// I.
    pub inter: usize,
    /// V.
    pub vocab: usize,
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

/// The names of the token embedding and of the weight the logits are computed with.
fn embedding_and_head(gpt2: bool, w: &Weights<'_>) -> (&'static str, &'static str) {
    let embedding = if gpt2 {
        "transformer.wte.weight"
    } else {
        "model.embed_tokens.weight"
    };
    let head = if w.has("lm_head.weight") {
        "lm_head.weight"
    } else {
        embedding
    };
    (embedding, head)
}

/// The peak memory of a forward over `t` tokens computing logits at `positions` positions,
/// in the buffers [`forward`] allocates (all widths fit: checked by the caller).
fn footprint(
    cfg: &ModelConfig,
    w: &Weights<'_>,
    dims: Dims,
    positions: usize,
    record: bool,
    threads: usize,
) -> Footprint {
    let gpt2 = cfg.arch == Arch::Gpt2;
    let u = |x: usize| x as u128;
    let (t, h) = (u(dims.t), u(dims.h));
    let kv = u(dims.n_kv * dims.d);
    let attn = u(dims.n_heads * dims.d);
    let qkv = if gpt2 { 3 * h } else { attn };
    let inter = u(dims.inter);
    // x, h, q, (k, v), attn, out, gate, (up); RoPE cos/sin [T, D]; token ids
    let buffers = t * (h + h + qkv + attn + h + inter)
        + if gpt2 {
            t * h
        } else {
            t * (2 * kv + inter + 2 * u(dims.d))
        }
        + 2 * t;
    let block = u(query_block(dims.t, threads));
    let workers = u(threads.max(1)).min(t.div_ceil(block));
    // the final norm output, the rows the logits are asked for and their logits (+ 2 rows:
    // the padding of a one-row product, see `matmul_rows`)
    let rows = u(positions) + 2;
    let logits = t * h + rows * h + rows * u(dims.vocab);
    let recorded = if record {
        t * h * (2 + 2 * u(cfg.num_hidden_layers))
    } else {
        0
    };
    let (embedding, head) = embedding_and_head(gpt2, w);
    let resident = w.resident_bytes(dims.t, embedding, head, VOCAB_BLOCK);
    Footprint {
        activations: buffers,
        attention: workers * block * t,
        logits,
        recorded,
        embedding_output: 2 * t * h, // GPT-2 adds the position rows
        weights_gather: resident.gather,
        weights_layers: resident.layers,
        weights_final: resident.logits,
    }
}

/// Runs the model on `tokens`. See [`super::Model::forward_with`].
pub(crate) fn forward(
    cfg: &ModelConfig,
    w: &mut Weights<'_>,
    tokens: &[u32],
    opts: &ForwardOptions,
    threads: usize,
) -> Result<ForwardOutput, ModelError> {
    let record = opts.record;
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
    let positions: Vec<usize> = match &opts.logits {
        LogitPositions::All => (0..t).collect(),
        LogitPositions::Last => vec![t - 1],
        LogitPositions::These(p) => {
            let mut p = p.clone();
            p.sort_unstable();
            p.dedup();
            if let Some(&bad) = p.iter().find(|&&x| x >= t) {
                return Err(ModelError::Internal(format!(
                    "logits asked for position {bad} of a {t}-token prompt"
                )));
            }
            p
        }
    };
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
    // Everything below is known now: refuse before the first large allocation.
    let estimate = footprint(cfg, w, dims, positions.len(), record, threads).estimate();
    if let Some(available) = memory::available() {
        if estimate.total > available.bytes {
            return Err(ModelError::WouldNotFit(Box::new(super::WouldNotFit {
                tokens: t,
                logit_positions: positions.len(),
                estimate,
                available,
            })));
        }
    }
    let mut b = Buffers {
        x: Vec::new(),
        h: vec![0.0; t * dims.h],
        q: vec![0.0; t * qkv_width],
        // GPT-2 keeps its fused q,k,v in `q`
        k: vec![0.0; if gpt2 { 0 } else { t * dims.n_kv * dims.d }],
        v: vec![0.0; if gpt2 { 0 } else { t * dims.n_kv * dims.d }],
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
    // The table is not needed again until a tied lm_head reads it at the end.
    w.release(embedding_and_head(gpt2, w).0);
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

    // lm_head on the positions asked for, in vocabulary blocks.
    let (embedding_name, head) = embedding_and_head(gpt2, w);
    let logits = lm_head(w, head, &normed, &positions, dims, threads)?;
    w.release(head);
    w.release(embedding_name);

    Ok(ForwardOutput {
        tokens: tokens.to_vec(),
        hidden_size: dims.h,
        vocab_size: dims.vocab,
        embedding,
        layers,
        final_norm: if record { normed } else { Vec::new() },
        logit_positions: positions,
        logits,
    })
}

/// `[P, V]` logits of the rows `positions` of `normed` `[T, H]`, computed in vocabulary
/// blocks (a widened bf16 head never needs V·H f32 at once).
///
/// A subset of a prompt of several tokens keeps gemm's general path ([`matmul_rows`]) even
/// for one row: each logit is then summed in the same order as when every position is
/// computed, and the last position's logits are bit-identical either way.
fn lm_head(
    w: &mut Weights<'_>,
    head: &str,
    normed: &[f32],
    positions: &[usize],
    dims: Dims,
    threads: usize,
) -> Result<Vec<f32>, ModelError> {
    let (t, h, vocab) = (dims.t, dims.h, dims.vocab);
    let p = positions.len();
    let gathered: Vec<f32>; // [P, H] when not every position
    let x = if p == t {
        normed
    } else {
        gathered = positions
            .iter()
            .flat_map(|&pos| &normed[pos * h..(pos + 1) * h])
            .copied()
            .collect();
        &gathered
    };
    let product = if t > 1 { matmul_rows } else { matmul };
    let mut logits = vec![0.0f32; p * vocab]; // [P, V]
    let mut start = 0;
    while start < vocab {
        let end = (start + VOCAB_BLOCK).min(vocab);
        let wm = w.matrix_block(head, start, end)?; // [H, end-start]
        let dst = MatMut::new(&mut logits[start..], p, end - start, vocab)?;
        product(dst, MatRef::row_major(x, p, h)?, wm, false, threads)?;
        w.release_block(head, start, end);
        start = end;
    }
    Ok(logits)
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
        query_block(t, threads),
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
        query_block(t, threads),
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
