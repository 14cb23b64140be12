//! The forward, as a sequence of named steps: check the prompt, estimate the memory, embed,
//! run each decoder layer (attention block, MLP block), final norm, lm_head.
//!
//! A prefill runs the whole prompt through each layer at once, with a causal mask. With a
//! [`KvCache`], the same code runs the tokens after the positions the cache holds: their
//! queries attend over the cached keys and values and their own, which are appended (a decode
//! step is a forward over one token). Each layer reads its typed weights ([`LayerWeights`]) and
//! its mmap pages are released after it. What differs between architectures is decided by
//! [`Traits`], never by the architecture's name.
//!
//! Memory is bounded and known before the first allocation: attention runs over blocks of
//! query rows (a `[block, keys]` score tile per worker, never `[T, T]` per head), the logits
//! are computed only for the positions asked for, and the peak is estimated from the config
//! and refused when it exceeds the memory available (see [`super::memory`]).

use orient_inspect::ModelConfig;

use super::amx;
use super::attention::{attention, query_block, Head, MIN_KEYS};
use super::cache::KvCache;
use super::matmul::{matmul, matmul_rows, MatMut, MatRef};
use super::memory::{self, Footprint};
use super::ops;
use super::read::Reader;
use super::rope::RopeTables;
use super::traits::{Activation, Attention, MlpKind, NormKind, Position, Residual, Traits};
use super::weights::{LayerWeights, Linear, Matrix, ModelWeights, Norm};
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

impl Dims {
    fn of(cfg: &ModelConfig, tokens: usize) -> Dims {
        Dims {
            t: tokens,
            h: cfg.hidden_size,
            n_heads: cfg.num_attention_heads,
            n_kv: cfg.num_key_value_heads,
            d: cfg.head_dim,
            inter: cfg.intermediate_size,
            vocab: cfg.vocab_size,
        }
    }

    /// nH·D: the width of the queries and of the attention output.
    fn q_width(&self) -> usize {
        self.n_heads * self.d
    }

    /// nKV·D: the width of the keys and values.
    fn kv_width(&self) -> usize {
        self.n_kv * self.d
    }
}

/// The activations of one forward, allocated once and reused by every layer.
#[derive(Debug)]
struct Buffers {
    /// `[T, H]` the residual stream
    x: Vec<f32>,
    /// `[T, H]` normed input of a block
    h: Vec<f32>,
    /// `[T, nH·D]` queries
    q: Vec<f32>,
    /// `[T, nKV·D]` keys
    k: Vec<f32>,
    /// `[T, nKV·D]` values
    v: Vec<f32>,
    /// `[T, nH·D]` attention output, heads concatenated
    attn: Vec<f32>,
    /// `[T, H]` output of a block, before the residual add
    out: Vec<f32>,
    /// `[T, I]` the MLP's inner activation (the gate, or GPT-2's `c_fc` output)
    inner: Vec<f32>,
    /// `[T, I]` the up projection of a gated MLP (empty otherwise)
    up: Vec<f32>,
    /// `[T, H]` the attention output, held while the MLP runs (parallel residual; empty
    /// otherwise)
    held: Vec<f32>,
}

impl Buffers {
    fn new(dims: Dims, traits: &Traits) -> Buffers {
        let t = dims.t;
        Buffers {
            x: Vec::new(),
            h: vec![0.0; t * dims.h],
            q: vec![0.0; t * dims.q_width()],
            k: vec![0.0; t * dims.kv_width()],
            v: vec![0.0; t * dims.kv_width()],
            attn: vec![0.0; t * dims.q_width()],
            out: vec![0.0; t * dims.h],
            inner: vec![0.0; t * dims.inter],
            up: match traits.mlp {
                MlpKind::Gated => vec![0.0; t * dims.inter],
                MlpKind::Plain => Vec::new(),
            },
            held: match traits.residual {
                Residual::Parallel => vec![0.0; t * dims.h],
                Residual::Sequential | Residual::Sandwich => Vec::new(),
            },
        }
    }
}

/// What every step of the layer loop reads besides the weights and the buffers.
struct Ctx<'a> {
    traits: &'a Traits,
    dims: Dims,
    eps: f32,
    threads: usize,
    /// cos/sin for rotary positions.
    rope: Option<&'a RopeTables>,
    /// cos/sin of the local RoPE (layers with [`Attention::local_rope`]).
    local_rope: Option<&'a RopeTables>,
    /// Positions before this forward's tokens (held by the KV cache; 0 for a prefill).
    past: usize,
    /// Products of one row take gemm's general path (see [`Ctx::product`]).
    general: bool,
}

impl Ctx<'_> {
    /// Positions of the whole sequence: the cached ones and this forward's.
    fn total(&self) -> usize {
        self.past + self.dims.t
    }

    /// The product of a few rows. A forward of one token uses the matrix–vector kernel (a
    /// memory-bound pass over each weight, the fast way to decode). With `exact_decode`, gemm's
    /// general path is used as soon as the sequence has more than one position, so that a
    /// decode step sums every product in the same order as a prefill over the whole sequence
    /// does (bit-identical logits; but gemm then packs every weight for a single row, several
    /// times slower); a one-token prompt into a cache with room for more takes it too, so that
    /// the keys and values cached are those a longer prefill computes.
    fn product(&self) -> Product {
        if self.general {
            Product::General
        } else {
            Product::Fast
        }
    }
}

/// Which gemm path a product of activations and weights takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Product {
    /// [`matmul`]: a single row takes the matrix–vector kernel.
    Fast,
    /// [`matmul_rows`]: every row takes the general path (same bits alone or among others).
    General,
}

impl Product {
    /// `dst (+)= lhs · rhs` on this path (see [`matmul`]).
    pub(super) fn run(
        self,
        dst: MatMut<'_>,
        lhs: MatRef<'_>,
        rhs: MatRef<'_>,
        accumulate: bool,
        threads: usize,
    ) -> Result<(), ModelError> {
        match self {
            Product::Fast => matmul(dst, lhs, rhs, accumulate, threads),
            Product::General => matmul_rows(dst, lhs, rhs, accumulate, threads),
        }
    }
}

/// Runs the model on `tokens`, after the positions `cache` holds when there is one (their keys
/// and values are appended to it). See [`super::Model::forward_with`] and
/// [`super::Model::forward_cached`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    cfg: &ModelConfig,
    traits: &Traits,
    w: &ModelWeights,
    r: &mut Reader<'_>,
    tokens: &[u32],
    opts: &ForwardOptions,
    threads: usize,
    mut cache: Option<&mut KvCache>,
    exact_decode: bool,
) -> Result<ForwardOutput, ModelError> {
    let dims = Dims::of(cfg, tokens.len());
    let past = cache.as_ref().map_or(0, |c| c.len());
    if let Some(c) = &cache {
        c.check_fits(w.layers.len(), dims.kv_width(), dims.t)?;
    }
    check_prompt(w, tokens, dims, past)?;
    let positions = logit_positions(&opts.logits, dims.t)?;
    check_sizes(dims, past)?;
    // Everything below is known now: refuse before the first large allocation.
    let mut fp = footprint(
        traits,
        w,
        r,
        dims,
        past,
        positions.len(),
        opts.record,
        threads,
    );
    if let Some(c) = &cache {
        fp.activations += c.elements();
    }
    refuse_if_too_large(&fp, dims.t, positions.len())?;
    let rope = traits.rope_tables_at(past..past + dims.t);
    let local_rope = traits.local_rope_tables_at(past..past + dims.t);
    let ctx = Ctx {
        traits,
        dims,
        eps: cfg.norm_eps as f32,
        threads,
        rope: rope.as_ref(),
        local_rope: local_rope.as_ref(),
        past,
        general: if exact_decode {
            past + dims.t > 1 || cache.as_ref().is_some_and(|c| c.capacity() > 1)
        } else {
            dims.t > 1
        },
    };
    let mut b = Buffers::new(dims, traits);

    // hidden_states[0]
    b.x = embed(&ctx, w, r, tokens)?;
    let embedding = if opts.record { b.x.clone() } else { Vec::new() };
    let mut layers = Vec::new();
    for (i, layer) in w.layers.iter().enumerate() {
        let after_attention =
            decoder_layer(&ctx, i, layer, r, &mut b, opts.record, cache.as_deref_mut())?;
        if opts.record {
            layers.push(LayerTrace {
                after_attention,
                output: b.x.clone(),
            });
        }
        r.release(&layer.tensors);
    }
    // hidden_states[L] in transformers' convention: the final norm's output.
    let mut normed = vec![0.0f32; dims.t * dims.h]; // [T, H]
    norm(&ctx, r, &w.final_norm, &b.x, &mut normed)?;
    drop(b);

    let mut logits = lm_head(&ctx, r, &w.lm_head, &normed, &positions)?;
    if let Some(cap) = traits.final_softcap {
        ops::map_in_place(&mut logits, |z| ops::softcap(z, cap));
    }
    r.release(&w.head_tensors());
    r.release(&w.embed_tensors());
    // Only a forward that completed extends the cache.
    if let Some(c) = cache {
        c.commit(dims.t);
    }
    Ok(ForwardOutput {
        tokens: tokens.to_vec(),
        hidden_size: dims.h,
        vocab_size: dims.vocab,
        embedding,
        layers,
        final_norm: if opts.record { normed } else { Vec::new() },
        logit_positions: positions,
        logits,
        pooler_output: Vec::new(),
    })
}

/// A prompt of at least one token, each inside the vocabulary, no longer (after the `past`
/// cached positions) than a learned position table.
fn check_prompt(
    w: &ModelWeights,
    tokens: &[u32],
    dims: Dims,
    past: usize,
) -> Result<(), ModelError> {
    if tokens.is_empty() {
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
    if let Some(table) = &w.position {
        if past + tokens.len() > table.rows {
            return Err(ModelError::TooManyPositions {
                tokens: past + tokens.len(),
                max: table.rows,
            });
        }
    }
    Ok(())
}

/// The positions to compute logits at, sorted and distinct.
fn logit_positions(which: &LogitPositions, t: usize) -> Result<Vec<usize>, ModelError> {
    Ok(match which {
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
    })
}

/// Every buffer is T × (one of the model's widths, or the `past + T` keys) f32s: check the
/// largest product once, so that no size below can overflow.
fn check_sizes(dims: Dims, past: usize) -> Result<(), ModelError> {
    let keys = past
        .checked_add(dims.t)
        .ok_or(ModelError::PromptTooLong { tokens: dims.t })?;
    let widest = [
        dims.vocab,
        dims.inter,
        dims.q_width(),
        dims.kv_width(),
        dims.h,
        keys,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    dims.t
        .checked_mul(widest)
        .and_then(|cells| cells.checked_mul(size_of::<f32>()))
        .filter(|&bytes| isize::try_from(bytes).is_ok())
        .map(|_| ())
        .ok_or(ModelError::PromptTooLong { tokens: dims.t })
}

/// The peak memory of a forward over `dims.t` tokens (after `past` cached ones) computing
/// logits at `positions` positions, in the buffers [`forward`] allocates (all widths fit: see
/// [`check_sizes`]). The cache's own buffers are the caller's to add.
#[allow(clippy::too_many_arguments)]
fn footprint(
    traits: &Traits,
    w: &ModelWeights,
    r: &Reader<'_>,
    dims: Dims,
    past: usize,
    positions: usize,
    record: bool,
    threads: usize,
) -> Footprint {
    let u = |x: usize| x as u128;
    let (t, h, inter) = (u(dims.t), u(dims.h), u(dims.inter));
    let (qd, kv) = (u(dims.q_width()), u(dims.kv_width()));
    // x, h, q, k, v, attn, out, inner; token ids
    let mut buffers = t * (h + h + qd + 2 * kv + qd + h + inter) + 2 * t;
    if traits.mlp == MlpKind::Gated {
        buffers += t * inter; // up
    }
    // a sparse layer's router, expert and shared-expert scratch (one layer at a time)
    buffers += w
        .layers
        .iter()
        .filter_map(|l| l.moe.as_ref())
        .map(|m| m.scratch_cells(dims.t))
        .max()
        .unwrap_or(0);
    buffers += match &traits.position {
        Position::Rotary(rot) => 2 * t * u(rot.dims), // cos, sin [T, R]
        Position::Learned => t * h,                   // the position rows
    };
    if let Some(local) = &traits.local_rope {
        buffers += 2 * t * u(local.dims); // the local cos, sin [T, R]
    }
    if traits.residual == Residual::Parallel {
        buffers += t * h; // held
    }
    let block = u(query_block(dims.t, threads));
    let workers = u(threads.max(1)).min(t.div_ceil(block));
    // the final norm output, the rows the logits are asked for and their logits (+ 2 rows:
    // the padding of a one-row product, see `matmul_rows`)
    let rows = u(positions) + 2;
    let logits = t * h + rows * h + rows * u(dims.vocab);
    let recorded = if record {
        t * h * (2 + 2 * u(w.layers.len()))
    } else {
        0
    };
    let resident = r.resident_bytes(w, dims.t, VOCAB_BLOCK);
    Footprint {
        activations: buffers,
        attention: workers * block * (u(past) + t),
        logits,
        recorded,
        embedding_output: 2 * t * h, // learned positions add their rows
        weights_gather: resident.gather,
        weights_layers: resident.layers,
        weights_final: resident.logits,
    }
}

/// [`ModelError::WouldNotFit`] when the estimate exceeds the memory available.
fn refuse_if_too_large(fp: &Footprint, tokens: usize, positions: usize) -> Result<(), ModelError> {
    let estimate = fp.estimate();
    if let Some(available) = memory::available() {
        if estimate.total > available.bytes {
            return Err(ModelError::WouldNotFit(Box::new(super::WouldNotFit {
                tokens,
                logit_positions: positions,
                estimate,
                available,
            })));
        }
    }
    Ok(())
}

/// The embedding output `[T, H]`: token rows (scaled where the architecture scales them),
/// plus the learned position rows.
fn embed(
    ctx: &Ctx<'_>,
    w: &ModelWeights,
    r: &Reader<'_>,
    tokens: &[u32],
) -> Result<Vec<f32>, ModelError> {
    let rows: Vec<usize> = tokens.iter().map(|&x| x as usize).collect();
    let mut x = r.rows(&w.embed, &rows)?; // [T, H]
    if let Some(scale) = ctx.traits.embedding_scale {
        x.iter_mut().for_each(|v| *v *= scale);
    }
    if let Position::Learned = ctx.traits.position {
        let table = w
            .position
            .as_ref()
            .ok_or_else(|| ModelError::Internal("no position table".into()))?;
        let positions: Vec<usize> = (ctx.past..ctx.total()).collect();
        let p = r.rows(table, &positions)?; // [T, H]
        ops::add_in_place(&mut x, &p);
        r.release(&table.view.sources());
    }
    // The table is not needed again until a tied lm_head reads it at the end.
    r.release(&w.embed_tensors());
    Ok(x)
}

/// One decoder layer on `b.x` in place; returns the residual stream after the attention
/// block when `record`.
fn decoder_layer(
    ctx: &Ctx<'_>,
    layer: usize,
    w: &LayerWeights,
    r: &mut Reader<'_>,
    b: &mut Buffers,
    record: bool,
    cache: Option<&mut KvCache>,
) -> Result<Vec<f32>, ModelError> {
    match ctx.traits.residual {
        Residual::Sequential => {
            attention_block(ctx, layer, w, r, b, cache)?;
            ops::add_in_place(&mut b.x, &b.out);
            let after_attention = if record { b.x.clone() } else { Vec::new() };
            mlp_block(ctx, w, r, b)?;
            ops::add_in_place(&mut b.x, &b.out);
            Ok(after_attention)
        }
        Residual::Sandwich => {
            let (post_attn, post_mlp) = w.post_norms.as_ref().ok_or_else(|| {
                ModelError::Internal(format!("layer {layer} has no post-block norms"))
            })?;
            attention_block(ctx, layer, w, r, b, cache)?;
            norm(ctx, r, post_attn, &b.out, &mut b.h)?;
            ops::add_in_place(&mut b.x, &b.h);
            let after_attention = if record { b.x.clone() } else { Vec::new() };
            mlp_block(ctx, w, r, b)?;
            norm(ctx, r, post_mlp, &b.out, &mut b.h)?;
            ops::add_in_place(&mut b.x, &b.h);
            Ok(after_attention)
        }
        Residual::Parallel => {
            attention_block(ctx, layer, w, r, b, cache)?;
            // the attention output waits in `held` while the MLP reads the same x
            std::mem::swap(&mut b.out, &mut b.held);
            // x + attn: what the stream would be after attention alone (for comparisons)
            let after_attention = if record {
                let mut a = b.x.clone();
                ops::add_in_place(&mut a, &b.held);
                a
            } else {
                Vec::new()
            };
            mlp_block(ctx, w, r, b)?;
            ops::parallel_residual_in_place(&mut b.x, &b.out, &b.held);
            Ok(after_attention)
        }
    }
}

/// `out = o(attention(rope(q(n)), rope(k(n)), v(n)))` with `n = norm(x)`; the caller adds it
/// to the residual stream. With a cache, the keys and values attended over are the cached ones
/// followed by this forward's (appended).
fn attention_block(
    ctx: &Ctx<'_>,
    layer: usize,
    w: &LayerWeights,
    r: &mut Reader<'_>,
    b: &mut Buffers,
    cache: Option<&mut KvCache>,
) -> Result<(), ModelError> {
    let dims = ctx.dims;
    let t = dims.t;
    norm(ctx, r, &w.attn_norm, &b.x, &mut b.h)?;
    project(ctx, r, &w.q, &b.h, &mut b.q)?;
    project(ctx, r, &w.k, &b.h, &mut b.k)?;
    project(ctx, r, &w.v, &b.h, &mut b.v)?;
    if let Some((qn, kn)) = &w.qk_norm {
        let qn = r.norm_weight(qn, ctx.traits.norm)?;
        let kn = r.norm_weight(kn, ctx.traits.norm)?;
        ops::rms_norm_in_place(&mut b.q, &qn, ctx.eps);
        ops::rms_norm_in_place(&mut b.k, &kn, ctx.eps);
    }
    let (qd, kvd) = (dims.q_width(), dims.kv_width());
    let mask = ctx
        .traits
        .attention
        .get(layer)
        .map(|a| Attention {
            window: ctx.traits.window(layer, ctx.total()),
            ..*a
        })
        .ok_or_else(|| ModelError::Internal(format!("no attention traits for layer {layer}")))?;
    let rope = if mask.local_rope {
        ctx.local_rope
    } else {
        ctx.rope
    };
    if let Some(rope) = rope {
        rope.apply(&mut b.q, t, dims.d);
        rope.apply(&mut b.k, t, dims.d);
    }
    let (keys, values) = match cache {
        Some(c) => {
            let rows = c
                .layer_mut(layer)?
                .append(&b.k, &b.v, ctx.past, t, kvd, MIN_KEYS)?;
            (rows.k, rows.v)
        }
        None => (b.k.as_slice(), b.v.as_slice()),
    };
    let available = keys.len() / kvd.max(1);
    attention(
        Head {
            data: &b.q,
            stride: qd,
        },
        Head {
            data: keys,
            stride: kvd,
        },
        Head {
            data: values,
            stride: kvd,
        },
        dims,
        ctx.past,
        available,
        mask,
        query_block(t, ctx.threads),
        &mut b.attn,
    )?;
    project(ctx, r, &w.o, &b.attn, &mut b.out)?;
    Ok(())
}

/// `out = down(act(gate(n)) · up(n))` (gated) or `out = down(act(up(n)))` (plain), with
/// `n = norm(x)`; the caller adds it to the residual stream.
fn mlp_block(
    ctx: &Ctx<'_>,
    w: &LayerWeights,
    r: &mut Reader<'_>,
    b: &mut Buffers,
) -> Result<(), ModelError> {
    norm(ctx, r, &w.mlp_norm, &b.x, &mut b.h)?;
    if let Some(moe) = &w.moe {
        let act = ctx.traits.activation;
        return super::moe::sparse_mlp(r, moe, act, &b.h, ctx.dims.t, &mut b.out, ctx.threads);
    }
    let mlp = w
        .mlp
        .as_ref()
        .ok_or_else(|| ModelError::Internal("a layer without its MLP".into()))?;
    match (ctx.traits.mlp, &mlp.gate) {
        (MlpKind::Gated, Some(gate)) => {
            project(ctx, r, gate, &b.h, &mut b.inner)?;
            project(ctx, r, &mlp.up, &b.h, &mut b.up)?;
            ops::gated_in_place(&mut b.inner, &b.up, act(ctx.traits.activation));
        }
        (MlpKind::Plain, _) => {
            project(ctx, r, &mlp.up, &b.h, &mut b.inner)?;
            ops::map_in_place(&mut b.inner, act(ctx.traits.activation));
        }
        (MlpKind::Gated, None) => {
            return Err(ModelError::Internal("a gated MLP without its gate".into()))
        }
    }
    project(ctx, r, &mlp.down, &b.inner, &mut b.out)?;
    Ok(())
}

/// The function computing `a`.
pub(super) fn act(a: Activation) -> fn(f32) -> f32 {
    match a {
        Activation::Silu => ops::silu,
        Activation::GeluNew => ops::gelu_new,
        Activation::GeluTanh => ops::gelu_tanh,
        Activation::Gelu => ops::gelu,
    }
}

/// `out [T, H] = norm(x [T, H])` with the norm `n` of the architecture's kind.
fn norm(
    ctx: &Ctx<'_>,
    r: &Reader<'_>,
    n: &Norm,
    x: &[f32],
    out: &mut [f32],
) -> Result<(), ModelError> {
    let g = r.norm_weight(&n.weight, ctx.traits.norm)?;
    if g.len() != ctx.dims.h {
        return Err(ModelError::Internal(format!(
            "`{}` has {} values, expected {}",
            n.weight.name,
            g.len(),
            ctx.dims.h
        )));
    }
    match (ctx.traits.norm, &n.bias) {
        (NormKind::Rms { .. }, _) => ops::rms_norm(x, &g, ctx.eps, out),
        (NormKind::Layer, Some(bias)) => {
            let beta = r.vector(bias)?;
            ops::layer_norm(x, &g, &beta, ctx.eps, out);
        }
        (NormKind::Layer, None) => {
            return Err(ModelError::Internal(format!(
                "LayerNorm `{}` without its bias",
                n.weight.name
            )))
        }
    }
    Ok(())
}

/// [`linear`] in a decoder forward: its rows, threads and product ([`Ctx::product`]).
fn project(
    ctx: &Ctx<'_>,
    r: &mut Reader<'_>,
    l: &Linear,
    x: &[f32],
    out: &mut [f32],
) -> Result<(), ModelError> {
    linear_with(ctx.product(), r, l, x, ctx.dims.t, out, ctx.threads)
}

/// `out [T, N] = x [T, K] · Wᵀ + bias` for the `[N, K]` weight of `l`, read in place or
/// gathered.
pub(super) fn linear(
    r: &mut Reader<'_>,
    l: &Linear,
    x: &[f32],
    t: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<(), ModelError> {
    linear_with(Product::Fast, r, l, x, t, out, threads)
}

/// [`linear`] with the product `product`.
fn linear_with(
    product: Product,
    r: &mut Reader<'_>,
    l: &Linear,
    x: &[f32],
    t: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<(), ModelError> {
    let bias = l.bias.as_ref().map(|b| r.vector(b)).transpose()?;
    let (k, n) = (l.weight.inp, l.weight.out);
    let size = |len: usize, what: &str| {
        ModelError::Internal(format!(
            "`{}`: {what} holds {len} values, fewer than {t} rows",
            l.weight.name
        ))
    };
    let (out_len, x_len) = (out.len(), x.len());
    let out = out
        .get_mut(..t * n)
        .ok_or_else(|| size(out_len, "the output"))?;
    let x = x.get(..t * k).ok_or_else(|| size(x_len, "the input"))?;
    if let Some(bias) = &bias {
        if bias.len() != n {
            return Err(ModelError::Internal(format!(
                "bias of `{}` has {} values, expected {n}",
                l.weight.name,
                bias.len()
            )));
        }
        ops::fill_rows(out, bias);
    }
    // A weight read in place is one product. One that must be widened (bf16, f16) or
    // gathered is read in blocks of outputs, each widened just before gemm packs it, so the
    // f32 copy stays in cache instead of making a round trip through memory.
    let block = r.block_outputs(&l.weight);
    let mut start = 0;
    while start < n {
        let end = (start + block).min(n);
        weight_product(
            product,
            r,
            &l.weight,
            start..end,
            x,                 // [T, K]
            &mut out[start..], // dst [T, end-start] of [T, N]
            n,
            bias.is_some(),
            threads,
        )?;
        start = end;
    }
    Ok(())
}

/// `dst [T, outs] = x [T, K] · W[outs]ᵀ` (or `+=` when `accumulate`) for the outputs `outs`
/// of the `[N, K]` weight `m`, where `dst` starts at output `outs.start` of row 0 and its rows
/// are `dst_stride` apart (`T = x.len() / K`).
///
/// A bf16 weight goes to the AMX tiles when the reader uses them ([`super::amx`]), except a
/// single row on the [`Product::Fast`] path (a decode step: the matrix–vector kernel reads the
/// weight once, the fast way); everything else to gemm, in place or widened.
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_product(
    product: Product,
    r: &mut Reader<'_>,
    m: &Matrix,
    outs: std::ops::Range<usize>,
    x: &[f32],
    dst: &mut [f32],
    dst_stride: usize,
    accumulate: bool,
    threads: usize,
) -> Result<(), ModelError> {
    let k = m.inp;
    let t = x.len() / k.max(1);
    if !(t == 1 && product == Product::Fast) {
        if let Some(w) = r.tile_weight(m, outs.clone())? {
            // dst [T, outs] (+)= x [T, K] · w [outs, Kp]ᵀ
            return amx::matmul(dst, dst_stride, x, t, k, w, accumulate, threads);
        }
    }
    let width = outs.len();
    let wm = r.matrix(m, outs)?; // [K, width]
    product.run(
        MatMut::new(dst, t, width, dst_stride)?, // dst [T, width], rows dst_stride apart
        MatRef::row_major(x, t, k)?,             // lhs [T, K]
        wm,                                      // rhs [K, width]
        accumulate,
        threads,
    )
}

/// `[P, V]` logits of the rows `positions` of `normed` `[T, H]`, computed in vocabulary
/// blocks (a widened bf16 head never needs V·H f32 at once).
///
/// A subset of a sequence of several positions keeps gemm's general path ([`matmul_rows`])
/// even for one row: each logit is then summed in the same order as when every position is
/// computed, and the last position's logits are bit-identical either way (and equal to those
/// of a decode step over the same sequence).
fn lm_head(
    ctx: &Ctx<'_>,
    r: &mut Reader<'_>,
    head: &Matrix,
    normed: &[f32],
    positions: &[usize],
) -> Result<Vec<f32>, ModelError> {
    let (dims, threads) = (ctx.dims, ctx.threads);
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
    let product = ctx.product();
    let mut logits = vec![0.0f32; p * vocab]; // [P, V]
    let mut start = 0;
    while start < vocab {
        let end = (start + VOCAB_BLOCK).min(vocab);
        weight_product(
            product,
            r,
            head,
            start..end,
            &x[..p * h],          // [P, H]
            &mut logits[start..], // dst [P, end-start] of [P, V]
            vocab,
            false,
            threads,
        )?;
        r.release_rows(head, start..end);
        start = end;
    }
    Ok(logits)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use orient_inspect::layout::view::View;
    use orient_inspect::{write, Checkpoint, Dtype};

    /// A bf16 weight read in many widened blocks gives the product of one block, and both
    /// equal the f32 weight (same values) read in place, bit for bit: every output sums its
    /// inputs in the same order whichever block it falls in.
    #[test]
    fn blocked_widening_matches_one_block_and_the_in_place_f32_weight() {
        let (n, k, t) = (4500usize, 48usize, 5usize);
        // values exactly representable in bf16, so both files hold the same weights
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 97) as f32 - 48.0) / 64.0)
            .collect();
        let f32_bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = w
            .iter()
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensors = [
            write::Tensor {
                name: "a_f32",
                dtype: Dtype::F32,
                shape: &[n, k],
                data: &f32_bytes,
            },
            write::Tensor {
                name: "b_bf16",
                dtype: Dtype::BF16,
                shape: &[n, k],
                data: &bf16_bytes,
            },
        ];
        std::fs::write(
            &path,
            write::to_bytes(&tensors, &Default::default()).unwrap(),
        )
        .unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        let linear_of = |src: usize| Linear {
            weight: Matrix {
                view: View::contiguous(src, &[n, k]),
                out: n,
                inp: k,
                name: "w".into(),
            },
            bias: None,
        };
        let x: Vec<f32> = (0..t * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
            .collect();
        let product = |src: usize, block_bytes: usize| -> Vec<f32> {
            let mut r = Reader::new(&ckpt);
            r.kernels = amx::Kernels::Portable; // the widening path, on any CPU
            r.widen_block_bytes = block_bytes;
            let mut out = vec![0.0f32; t * n]; // [T, N]
            linear(&mut r, &linear_of(src), &x, t, &mut out, 2).unwrap();
            out
        };
        let in_place = product(0, 4 << 20);
        let one_block = product(1, 4 << 20);
        // a budget smaller than one output: blocks of the fewest outputs (2048), the last of
        // them partial
        let many = product(1, 1);
        assert_eq!(one_block, in_place);
        assert_eq!(many, in_place);
        let mut r = Reader::new(&ckpt);
        r.kernels = amx::Kernels::Portable;
        assert_eq!(r.block_outputs(&linear_of(0).weight), n);
        let mut small = Reader::new(&ckpt);
        small.kernels = amx::Kernels::Portable;
        small.widen_block_bytes = 1;
        assert_eq!(small.block_outputs(&linear_of(1).weight), 2048);
        // exact: integers over powers of two sum without rounding at these sizes
        for (o, row) in (0..t).map(|i| (i, &many[i * n..(i + 1) * n])) {
            for (j, &y) in row.iter().enumerate() {
                let want: f64 = (0..k)
                    .map(|i| f64::from(x[o * k + i]) * f64::from(w[j * k + i]))
                    .sum();
                assert_eq!(f64::from(y), want, "row {o} output {j}");
            }
        }
    }

    /// A bf16 `[n, k]` weight stored as HF `[out, in]` and as its Flax `[in, out]` transpose,
    /// with activations `x [t, k]` and a bias: the checkpoint and the three as f32.
    struct TileCase {
        _dir: tempfile::TempDir,
        ckpt: Checkpoint,
        w: Vec<f32>,
        x: Vec<f32>,
        bias: Vec<f32>,
        n: usize,
        k: usize,
        t: usize,
        threads: usize,
    }

    fn tile_case(n: usize, k: usize, t: usize) -> TileCase {
        let bf16 = |v: f32| half::bf16::from_f32(v);
        let w: Vec<f32> = (0..n * k)
            .map(|i| bf16(((i * 7919 % 1013) as f32 - 506.0) / 397.0).to_f32())
            .collect();
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect(); // [k, n]
        let bytes = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|&x| bf16(x).to_bits().to_le_bytes())
                .collect()
        };
        let (hf, flax) = (bytes(&w), bytes(&wt));
        let bias: Vec<f32> = (0..n).map(|i| (i as f32 - 40.0) / 3.0).collect();
        let bias_bytes: Vec<u8> = bias.iter().flat_map(|x| x.to_le_bytes()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensors = [
            write::Tensor {
                name: "a_hf",
                dtype: Dtype::BF16,
                shape: &[n, k],
                data: &hf,
            },
            write::Tensor {
                name: "b_flax",
                dtype: Dtype::BF16,
                shape: &[k, n],
                data: &flax,
            },
            write::Tensor {
                name: "c_bias",
                dtype: Dtype::F32,
                shape: &[n],
                data: &bias_bytes,
            },
        ];
        std::fs::write(
            &path,
            write::to_bytes(&tensors, &Default::default()).unwrap(),
        )
        .unwrap();
        // activations with every bit of an f32 significand in use, of mixed magnitudes
        let x: Vec<f32> = (0..t * k)
            .map(|i| ((i * 104729 % 7919) as f32 / 7919.0 - 0.5) * 10f32.powi((i % 7) as i32 - 3))
            .collect();
        TileCase {
            ckpt: Checkpoint::open(&path).unwrap(),
            _dir: dir,
            w,
            x,
            bias,
            n,
            k,
            t,
            threads: 2,
        }
    }

    impl TileCase {
        /// `[out, in]` (HF) or the transposed Flax kernel, with the bias.
        fn linear(&self, flax: bool) -> Linear {
            let (n, k) = (self.n, self.k);
            let view = if flax {
                View::contiguous(1, &[k, n]).transpose_last().unwrap()
            } else {
                View::contiguous(0, &[n, k])
            };
            Linear {
                weight: Matrix {
                    view,
                    out: n,
                    inp: k,
                    name: "w".into(),
                },
                bias: Some(super::super::weights::Vector {
                    view: View::contiguous(2, &[n]),
                    name: "b".into(),
                }),
            }
        }

        /// `x[rows] · Wᵀ + b` with `kernels`, one product over the rows.
        fn product(
            &self,
            kernels: amx::Kernels,
            flax: bool,
            rows: std::ops::Range<usize>,
            p: Product,
        ) -> Vec<f32> {
            let mut r = Reader::new(&self.ckpt);
            r.kernels = kernels;
            let t = rows.len();
            let x = &self.x[rows.start * self.k..rows.end * self.k];
            let mut out = vec![0.0f32; t * self.n]; // [t, N]
            linear_with(p, &mut r, &self.linear(flax), x, t, &mut out, self.threads).unwrap();
            out
        }

        /// Largest |error| against the f64 product, relative to Σ|w·x| + |b| of its output.
        fn worst_relative_error(&self, y: &[f32]) -> f64 {
            let (n, k) = (self.n, self.k);
            let mut worst = 0f64;
            for o in 0..self.t {
                for j in 0..n {
                    let (mut sum, mut mag) =
                        (f64::from(self.bias[j]), f64::from(self.bias[j]).abs());
                    for i in 0..k {
                        let p = f64::from(self.x[o * k + i]) * f64::from(self.w[j * k + i]);
                        sum += p;
                        mag += p.abs();
                    }
                    worst = worst
                        .max((f64::from(y[o * n + j]) - sum).abs() / mag.max(f64::MIN_POSITIVE));
                }
            }
            worst
        }
    }

    /// The AMX tiles multiply a bf16 weight as accurately as gemm's f32 kernels do (the
    /// activations split into three bf16 parts lose nothing), and their bits depend neither on
    /// the checkpoint's layout (HF rows read in place, a Flax kernel made into panels) nor on
    /// which rows are computed together: outputs not a multiple of 32, inputs not a multiple
    /// of 32 (padded) and odd, more rows than one packed chunk (256), a bias accumulated.
    #[test]
    fn amx_tiles_match_f32_accuracy_and_give_the_same_bits_whatever_the_layout_or_rows() {
        if !amx::available() {
            // a CPU without AMX: the portable kernels are what runs, and other tests cover them
            return;
        }
        for (n, k, t) in [
            (100usize, 96usize, 300usize),
            (33, 80, 5),
            (64, 32, 1),
            (40, 47, 3),
        ] {
            let case = tile_case(n, k, t);
            let hf = case.product(amx::Kernels::Auto, false, 0..t, Product::General);
            let flax = case.product(amx::Kernels::Auto, true, 0..t, Product::General);
            assert_eq!(hf, flax, "[{n}, {k}] × {t}: HF and Flax layouts");
            let one_thread = TileCase {
                threads: 1,
                ..tile_case(n, k, t)
            };
            let alone = one_thread.product(amx::Kernels::Auto, false, 0..t, Product::General);
            assert_eq!(alone, hf, "[{n}, {k}] × {t}: one thread and two");
            for row in [0, t / 2, t - 1] {
                let alone = case.product(amx::Kernels::Auto, false, row..row + 1, Product::General);
                assert_eq!(
                    alone,
                    hf[row * n..(row + 1) * n],
                    "[{n}, {k}] row {row} alone"
                );
            }
            let portable = case.product(amx::Kernels::Portable, false, 0..t, Product::General);
            let (e_amx, e_f32) = (
                case.worst_relative_error(&hf),
                case.worst_relative_error(&portable),
            );
            // f32 accumulation over k terms: a few ulps (2⁻²⁴ ≈ 6e-8) of Σ|w·x| at most
            assert!(
                e_amx < 1e-6,
                "[{n}, {k}] × {t}: AMX relative error {e_amx:e}"
            );
            assert!(
                e_f32 < 1e-6,
                "[{n}, {k}] × {t}: f32 relative error {e_f32:e}"
            );
            assert_ne!(hf, portable, "the AMX path was not taken for [{n}, {k}]");
        }
    }

    /// A one-row product on the fast path (a decode step) keeps gemm's matrix–vector kernel.
    #[test]
    fn a_fast_single_row_stays_on_the_matrix_vector_kernel() {
        let case = tile_case(64, 64, 1);
        let fast = case.product(amx::Kernels::Auto, false, 0..1, Product::Fast);
        let portable = case.product(amx::Kernels::Portable, false, 0..1, Product::Fast);
        assert_eq!(fast, portable);
    }

    proptest::proptest! {
        /// Three bf16 parts hold an f32 of magnitude ≥ 2⁻¹⁰³ exactly, and any smaller finite
        /// one to within the smallest normal f32 (2⁻¹²⁶, the parts' floor).
        #[test]
        fn three_bf16_parts_sum_to_the_f32(bits in 0u32..u32::MAX) {
            let x = f32::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            let parts = amx::split_for_tests(x);
            let sum: f64 = parts.iter().map(|&p| f64::from(half::bf16::from_bits(p).to_f32())).sum();
            if x.abs() >= 2f32.powi(-103) || x == 0.0 {
                proptest::prop_assert_eq!(sum, f64::from(x));
            } else {
                proptest::prop_assert!((sum - f64::from(x)).abs() < 2f64.powi(-126));
            }
        }
    }
}
