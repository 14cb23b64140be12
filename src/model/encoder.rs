//! The encoder forward (BERT), as transformers 5.24's `BertModel` computes it.
//!
//! Why its own path: an encoder shares little with the decoder loop beyond the projections.
//! Its attention is bidirectional (every query sees every key the attention mask keeps, so
//! padding never leaks into real tokens), positions and token types are learned tables, each
//! block normalises *after* its residual add (`LayerNorm(x + f(x))`), and there is no final
//! norm and no LM head: what it computes is the last hidden state and the pooler output
//! (`tanh(dense(h[0]))`).
//!
//! Order of operations (`modeling_bert.py`): embeddings `(word + token_type) + position`, then
//! `embeddings.LayerNorm`; per layer `x = LayerNorm(o(attn(x)) + x)` (`BertSelfOutput`), then
//! `x = LayerNorm(down(gelu(up(x))) + x)` (`BertOutput`), GELU the exact erf form; attention
//! scores `q·kᵀ · D^-½` with an additive mask that removes padded keys (their weight is an
//! exact 0), softmax in f32.

use rayon::prelude::*;

use super::forward::{act, linear, Product};
use super::matmul::{MatMut, MatRef};
use super::memory::{self, Footprint};
use super::ops;
use super::read::Reader;
use super::traits::Activation;
use super::weights::{Linear, Norm, Table};
use super::{ForwardOutput, LayerTrace, ModelError};

/// True for an encoder: bidirectional attention and norms after the residual adds (BERT).
pub(crate) fn is_encoder(cfg: &orient_inspect::ModelConfig) -> bool {
    !cfg.causal && cfg.norm_placement == orient_inspect::config::NormPlacement::Post
}

/// Query rows per attention tile.
const QUERY_BLOCK: usize = 64;

/// One encoder layer's weights.
#[derive(Clone, Debug)]
pub(crate) struct EncoderLayer {
    /// `[H, H]` each, with biases.
    pub q: Linear,
    /// Keys.
    pub k: Linear,
    /// Values.
    pub v: Linear,
    /// `attention.output.dense`.
    pub o: Linear,
    /// `attention.output.LayerNorm`, on `o(attn) + x`.
    pub attn_norm: Norm,
    /// `intermediate.dense` `[I, H]`.
    pub up: Linear,
    /// `output.dense` `[H, I]`.
    pub down: Linear,
    /// `output.LayerNorm`, on `down(…) + x`.
    pub mlp_norm: Norm,
    /// The checkpoint tensors this layer reads.
    pub tensors: Vec<usize>,
}

/// Every weight of an encoder.
#[derive(Clone, Debug)]
pub(crate) struct EncoderWeights {
    /// `[V, H]` word embeddings.
    pub embed: Table,
    /// `[positions, H]`.
    pub position: Table,
    /// `[types, H]`.
    pub token_type: Table,
    /// `embeddings.LayerNorm`.
    pub embed_norm: Norm,
    /// The layers.
    pub layers: Vec<EncoderLayer>,
    /// `pooler.dense` `[H, H]` (absent in checkpoints of heads built without it).
    pub pooler: Option<Linear>,
}

impl EncoderWeights {
    /// Every checkpoint tensor the forward reads, once each.
    pub fn all_tensors(&self) -> Vec<usize> {
        let mut views = vec![&self.embed.view, &self.position.view, &self.token_type.view];
        views.extend(norm_views(&self.embed_norm));
        for l in self.pooler.iter() {
            views.push(&l.weight.view);
            views.extend(l.bias.iter().map(|b| &b.view));
        }
        let mut all: Vec<usize> = views.into_iter().flat_map(|v| v.sources()).collect();
        for l in &self.layers {
            all.extend(&l.tensors);
        }
        all.sort_unstable();
        all.dedup();
        all
    }
}

pub(crate) fn norm_views(n: &Norm) -> Vec<&orient_inspect::layout::view::View> {
    std::iter::once(&n.weight.view)
        .chain(n.bias.iter().map(|b| &b.view))
        .collect()
}

impl EncoderLayer {
    /// Every view of the layer.
    pub fn views(&self) -> Vec<&orient_inspect::layout::view::View> {
        let mut v = Vec::new();
        for l in [&self.q, &self.k, &self.v, &self.o, &self.up, &self.down] {
            v.push(&l.weight.view);
            v.extend(l.bias.iter().map(|b| &b.view));
        }
        v.extend(norm_views(&self.attn_norm));
        v.extend(norm_views(&self.mlp_norm));
        v
    }
}

/// What an encoder reads besides the token ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncoderInputs {
    /// `token_type_ids`, one per token (all 0 when `None`: a single segment).
    pub token_types: Option<Vec<u32>>,
    /// `attention_mask`: `false` for a padding position, whose key no query sees (all kept
    /// when `None`).
    pub attention_mask: Option<Vec<bool>>,
}

/// Sizes of one encoder forward.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    t: usize,
    h: usize,
    heads: usize,
    d: usize,
    inter: usize,
    eps: f32,
    threads: usize,
    /// Keep every layer's streams.
    record: bool,
}

/// Runs the encoder on `tokens`. `record` keeps the embedding output and every layer's
/// streams (the last layer's output is always kept: it is `last_hidden_state`, stored as
/// `final_norm`, which an encoder does not have, so that `hidden_states()` has transformers'
/// meaning).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    cfg: &orient_inspect::ModelConfig,
    activation: Activation,
    w: &EncoderWeights,
    r: &mut Reader<'_>,
    tokens: &[u32],
    inputs: &EncoderInputs,
    record: bool,
    threads: usize,
) -> Result<ForwardOutput, ModelError> {
    let s = Sizes {
        t: tokens.len(),
        h: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        d: cfg.head_dim,
        inter: cfg.intermediate_size,
        eps: cfg.norm_eps as f32,
        threads,
        record,
    };
    let (types, keep) = check_inputs(w, tokens, inputs, cfg.vocab_size)?;
    let t = s.t;
    s.t.checked_mul(s.inter.max(s.h).max(t))
        .and_then(|c| c.checked_mul(4))
        .filter(|&b| isize::try_from(b).is_ok())
        .ok_or(ModelError::PromptTooLong { tokens: t })?;
    // Everything is known now: refuse before the first large allocation.
    let estimate = footprint(w, r, s, record).estimate();
    if let Some(available) = memory::available() {
        if estimate.total > available.bytes {
            return Err(ModelError::WouldNotFit(Box::new(super::WouldNotFit {
                tokens: t,
                logit_positions: 0,
                estimate,
                available,
            })));
        }
    }

    let mut x = embed(r, w, tokens, &types, s)?; // [T, H]
    let embedding = if record { x.clone() } else { Vec::new() };
    let mut layers = Vec::new();
    let mut buf = LayerBuffers::new(s);
    for layer in &w.layers {
        let after_attention = encoder_layer(r, layer, activation, &keep, s, &mut x, &mut buf)?;
        if record {
            layers.push(LayerTrace {
                after_attention,
                output: x.clone(),
            });
        }
        r.release(&layer.tensors);
    }
    let pooler = match &w.pooler {
        Some(p) => {
            let first = &x[..s.h]; // hidden_states[:, 0]
            let mut out = vec![0.0f32; s.h]; // [H]
            linear(r, p, first, 1, &mut out, threads)?;
            out.iter_mut().for_each(|v| *v = v.tanh());
            out
        }
        None => Vec::new(),
    };
    r.release(&w.all_tensors());
    Ok(ForwardOutput {
        tokens: tokens.to_vec(),
        hidden_size: s.h,
        vocab_size: cfg.vocab_size,
        embedding,
        layers,
        final_norm: x,
        logit_positions: Vec::new(),
        logits: Vec::new(),
        pooler_output: pooler,
    })
}

/// The peak memory of an encoder forward, in the buffers [`forward`] allocates: a layer's
/// mapped weights (released after it) plus one gathered f32 matrix, the activations, the
/// attention tiles, and the recorded streams.
fn footprint(w: &EncoderWeights, r: &Reader<'_>, s: Sizes, record: bool) -> Footprint {
    let u = |x: usize| x as u128;
    let tensors = r.tensors();
    let bytes = |ks: &[usize]| -> u128 {
        ks.iter()
            .filter_map(|&k| tensors.get(k))
            .map(|t| u(t.nbytes()))
            .sum()
    };
    let sources = |views: &[&orient_inspect::layout::view::View]| -> Vec<usize> {
        let mut v: Vec<usize> = views.iter().flat_map(|v| v.sources()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let gathered = w
        .layers
        .iter()
        .flat_map(|l| [&l.q, &l.k, &l.v, &l.o, &l.up, &l.down])
        .map(|l| 4 * u(l.weight.out) * u(l.weight.inp))
        .max()
        .unwrap_or(0);
    let layer = w
        .layers
        .iter()
        .map(|l| bytes(&l.tensors))
        .max()
        .unwrap_or(0);
    let tables = bytes(&sources(&[
        &w.embed.view,
        &w.position.view,
        &w.token_type.view,
    ]));
    let (t, h) = (u(s.t), u(s.h));
    let workers = u(s.threads.max(1)).min(t.div_ceil(u(QUERY_BLOCK)));
    Footprint {
        // x, q, k, v, attn, out, the kept keys and values; inner; types and mask
        activations: t * (8 * h + u(s.inter)) + 2 * t,
        attention: workers * u(QUERY_BLOCK) * t,
        logits: 0,
        recorded: if record {
            t * h * (1 + 2 * u(w.layers.len()))
        } else {
            0
        },
        embedding_output: 4 * t * h, // word, token type and position rows, the LayerNorm output
        weights_gather: tables,
        weights_layers: layer + gathered,
        weights_final: tables + layer,
    }
}

/// The token types (0 when not given) and which keys are kept, checked against the prompt and
/// the tables.
fn check_inputs(
    w: &EncoderWeights,
    tokens: &[u32],
    inputs: &EncoderInputs,
    vocab: usize,
) -> Result<(Vec<u32>, Vec<bool>), ModelError> {
    let t = tokens.len();
    if t == 0 {
        return Err(ModelError::EmptyPrompt);
    }
    for (position, &token) in tokens.iter().enumerate() {
        if token as usize >= vocab {
            return Err(ModelError::TokenOutOfRange {
                token,
                position,
                vocab,
            });
        }
    }
    if t > w.position.rows {
        return Err(ModelError::TooManyPositions {
            tokens: t,
            max: w.position.rows,
        });
    }
    let types = inputs.token_types.clone().unwrap_or_else(|| vec![0; t]);
    let keep = inputs
        .attention_mask
        .clone()
        .unwrap_or_else(|| vec![true; t]);
    if types.len() != t || keep.len() != t {
        return Err(ModelError::EncoderInputs(format!(
            "{t} tokens but {} token types and {} attention-mask values",
            types.len(),
            keep.len()
        )));
    }
    if let Some((position, &ty)) = types
        .iter()
        .enumerate()
        .find(|(_, &ty)| ty as usize >= w.token_type.rows)
    {
        return Err(ModelError::EncoderInputs(format!(
            "token type {ty} at position {position} is outside the model's {} token types",
            w.token_type.rows
        )));
    }
    if !keep.iter().any(|&k| k) {
        return Err(ModelError::EncoderInputs(
            "the attention mask keeps no token".to_string(),
        ));
    }
    Ok((types, keep))
}

/// `LayerNorm((word + token_type) + position)`, `[T, H]`.
fn embed(
    r: &Reader<'_>,
    w: &EncoderWeights,
    tokens: &[u32],
    types: &[u32],
    s: Sizes,
) -> Result<Vec<f32>, ModelError> {
    let rows = |ids: &[u32]| ids.iter().map(|&x| x as usize).collect::<Vec<_>>();
    let mut x = r.rows(&w.embed, &rows(tokens))?; // [T, H]
    let tt = r.rows(&w.token_type, &rows(types))?; // [T, H]
    ops::add_in_place(&mut x, &tt);
    let positions: Vec<usize> = (0..s.t).collect();
    let p = r.rows(&w.position, &positions)?; // [T, H]
    ops::add_in_place(&mut x, &p);
    let mut out = vec![0.0f32; s.t * s.h]; // [T, H]
    layer_norm(r, &w.embed_norm, &x, s, &mut out)?;
    Ok(out)
}

/// `out = LayerNorm(x)` with the norm's weight and bias.
fn layer_norm(
    r: &Reader<'_>,
    n: &Norm,
    x: &[f32],
    s: Sizes,
    out: &mut [f32],
) -> Result<(), ModelError> {
    let g = r.vector(&n.weight)?;
    let b = match &n.bias {
        Some(b) => r.vector(b)?,
        None => {
            return Err(ModelError::Internal(format!(
                "LayerNorm `{}` without its bias",
                n.weight.name
            )))
        }
    };
    if g.len() != s.h || b.len() != s.h {
        return Err(ModelError::Internal(format!(
            "`{}` has {} values, expected {}",
            n.weight.name,
            g.len(),
            s.h
        )));
    }
    ops::layer_norm(x, &g, &b, s.eps, out);
    Ok(())
}

/// Activations of one layer, reused by every layer.
struct LayerBuffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    out: Vec<f32>,
    inner: Vec<f32>,
}

impl LayerBuffers {
    fn new(s: Sizes) -> LayerBuffers {
        let th = s.t * s.h;
        LayerBuffers {
            q: vec![0.0; th],
            k: vec![0.0; th],
            v: vec![0.0; th],
            attn: vec![0.0; th],
            out: vec![0.0; th],
            inner: vec![0.0; s.t * s.inter],
        }
    }
}

/// One post-LayerNorm encoder layer on `x` in place; returns the stream after the attention
/// block when `s.record` (empty otherwise).
fn encoder_layer(
    r: &mut Reader<'_>,
    w: &EncoderLayer,
    activation: Activation,
    keep: &[bool],
    s: Sizes,
    x: &mut [f32],
    b: &mut LayerBuffers,
) -> Result<Vec<f32>, ModelError> {
    let (t, threads) = (s.t, s.threads);
    linear(r, &w.q, x, t, &mut b.q, threads)?;
    linear(r, &w.k, x, t, &mut b.k, threads)?;
    linear(r, &w.v, x, t, &mut b.v, threads)?;
    bidirectional_attention(&b.q, &b.k, &b.v, keep, s, &mut b.attn)?;
    linear(r, &w.o, &b.attn, t, &mut b.out, threads)?;
    ops::add_in_place(&mut b.out, x); // dense(attn) + input
    layer_norm(r, &w.attn_norm, &b.out, s, x)?;
    let after_attention = if s.record { x.to_vec() } else { Vec::new() };
    linear(r, &w.up, x, t, &mut b.inner, threads)?;
    ops::map_in_place(&mut b.inner, act(activation));
    linear(r, &w.down, &b.inner, t, &mut b.out, threads)?;
    ops::add_in_place(&mut b.out, x); // dense(intermediate) + input
    layer_norm(r, &w.mlp_norm, &b.out, s, x)?;
    Ok(after_attention)
}

/// Multi-head attention where every query sees every kept key (`out` `[T, nH·D]`): the
/// additive mask of transformers gives a padded key the weight exp(min − max) = 0 exactly, so
/// the kept keys are gathered once and each softmax runs over them alone. Tiled over blocks of
/// query rows, in parallel.
fn bidirectional_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    keep: &[bool],
    s: Sizes,
    out: &mut [f32],
) -> Result<(), ModelError> {
    let (t, d, width) = (s.t, s.d, s.heads * s.d);
    let kept: Vec<usize> = (0..t).filter(|&i| keep[i]).collect();
    let n = kept.len();
    let gather = |m: &[f32]| -> Vec<f32> {
        kept.iter()
            .flat_map(|&i| &m[i * width..(i + 1) * width])
            .copied()
            .collect()
    };
    let (kk, vk) = (gather(k), gather(v)); // [n, nH·D] each
    let scale = (d as f64).powf(-0.5) as f32;
    let product = if t > 1 {
        Product::General
    } else {
        Product::Fast
    };
    out[..t * width]
        .par_chunks_mut(QUERY_BLOCK * width)
        .enumerate()
        .try_for_each(|(blk, out_rows)| -> Result<(), ModelError> {
            let rows = out_rows.len() / width;
            let r0 = blk * QUERY_BLOCK;
            let mut scores = vec![0.0f32; rows * n]; // [rows, n]
            for j in 0..s.heads {
                let qh = MatRef::new(&q[r0 * width + j * d..], rows, d, width, 1)?;
                let kh = MatRef::new(&kk[j * d..], n, d, width, 1)?;
                let vh = MatRef::new(&vk[j * d..], n, d, width, 1)?;
                product.run(
                    MatMut::row_major(&mut scores, rows, n)?,
                    qh,
                    kh.t(),
                    false,
                    1,
                )?;
                for row in scores.chunks_mut(n) {
                    row.iter_mut().for_each(|x| *x *= scale);
                    ops::softmax_in_place(row);
                }
                product.run(
                    MatMut::new(&mut out_rows[j * d..], rows, d, width)?,
                    MatRef::row_major(&scores, rows, n)?,
                    vh,
                    false,
                    1,
                )?;
            }
            Ok(())
        })
}
