//! A small, exact CPU forward pass, so that a checkpoint can be verified without PyTorch.
//!
//! A conversion is only proven when the converted file computes the same logits as the
//! original. This module runs the catalogue's dense decoders (Llama incl. `llama3` RoPE
//! scaling, Mistral, Qwen2, Qwen3, GPT-2, Gemma 1/2/3, Phi-3, GPT-NeoX) on a prompt, in f32,
//! following transformers' numerics closely enough to match its logits to ~1e-5 and to be
//! *bit-identical* across storage layouts (HF, Flax, a user's layout file). The layout catalogue binds the checkpoint's tensors, in
//! whichever convention it is stored, to typed per-layer weights (`weights`): lazy views that
//! `read` hands to the matrix product in place (a transposed layout is a strided view, not a
//! copy) or gathers into f32. What differs between architectures is data (`traits`).
//!
//! Memory stays at about one weight matrix in f32 plus activations: bf16/f16 weights (and
//! permuted views) are gathered one matrix at a time into a reused buffer, and each layer's
//! mmap pages are released after use, so a checkpoint larger than free RAM still runs.
//! Attention is tiled over query rows, logits are computed only where asked for, and the peak
//! is estimated before the forward starts ([`memory`]): a prompt that cannot fit is refused
//! with the numbers, not aborted.

pub mod amx;
mod attention;
pub mod cache;
pub mod compare;
mod encoder;
mod forward;
mod locate;
pub mod matmul;
pub mod memory;
mod moe;
pub mod ops;
mod read;
pub mod rope;
pub mod save;
mod traits;
mod weights;

use std::sync::Arc;

use orient_inspect::layout::catalogue::CatalogueError;
use orient_inspect::layout::convention::Convention;
use orient_inspect::layout::gather::GatherError;
use orient_inspect::{Checkpoint, ConfigStatus, ModelConfig};
use serde::Serialize;

pub use cache::KvCache;
pub use encoder::EncoderInputs;

/// Why the forward could not run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The checkpoint has no usable `config.json`.
    #[error("{path}: cannot run without a config.json of a known architecture ({status})")]
    NoConfig {
        /// Model folder.
        path: String,
        /// What the reader found instead.
        status: String,
    },
    /// A tensor's shape is neither the expected one nor its exact transpose.
    #[error("{0}")]
    ShapeMismatch(Box<ShapeMismatch>),
    /// A user layout file does not fit this model.
    #[error("{path}: the layout does not fit this model")]
    Layout {
        /// Model folder.
        path: String,
        /// What does not fit.
        #[source]
        source: CatalogueError,
    },
    /// A required weight is absent.
    #[error("{0}")]
    MissingTensor(Box<MissingTensor>),
    /// The same weight is stored under two names (e.g. both its HF and Flax forms).
    #[error("{path}: `{canonical}` is stored twice, as `{first}` and as `{second}`")]
    DuplicateTensor {
        /// Model folder.
        path: String,
        /// Canonical (HF) name.
        canonical: String,
        /// First stored name.
        first: String,
        /// Second stored name.
        second: String,
    },
    /// A weight dtype the forward does not read.
    #[error("{path}: tensor `{name}` is {dtype}; the forward reads F32, BF16, F16 and F64")]
    UnsupportedDtype {
        /// Model folder.
        path: String,
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: &'static str,
    },
    /// A RoPE scaling type the forward does not implement.
    #[error(
        "config.json: rope scaling `{0}` is not supported (only the default, `llama3` and `linear`)"
    )]
    UnsupportedRope(String),
    /// An activation the forward does not implement.
    #[error(
        "config.json: hidden activation `{0}` is not supported (silu, gelu_new, \
         gelu_pytorch_tanh, gelu)"
    )]
    UnsupportedActivation(String),
    /// An architecture the layout catalogue knows but the forward has no traits for.
    #[error("config.json: the forward does not run `{0}` models yet")]
    UnsupportedArch(String),
    /// A setting of the config the forward does not compute.
    #[error(
        "config.json: this {arch} model uses {feature}, which the forward does not compute yet"
    )]
    Unsupported {
        /// The architecture.
        arch: String,
        /// The setting, in words.
        feature: &'static str,
    },
    /// A prompt token outside the vocabulary.
    #[error("token {token} at position {position} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// Its position in the prompt.
        position: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A generation (prompt and new tokens) longer than the learned position table: refused
    /// before the first forward, not at the token that would fall off the table.
    #[error(
        "a {prompt}-token prompt and {new} new tokens exceed the model's {max} learned positions: \
         at most {} new tokens fit",
        max.saturating_sub(*prompt)
    )]
    GenerationTooLong {
        /// Prompt length.
        prompt: usize,
        /// Tokens asked for.
        new: usize,
        /// Rows of `wpe`.
        max: usize,
    },
    /// A GPT-2 prompt longer than its learned position table.
    #[error("{tokens} tokens exceed the model's {max} learned positions")]
    TooManyPositions {
        /// Prompt length.
        tokens: usize,
        /// Rows of `wpe`.
        max: usize,
    },
    /// A prompt so long that its activations would not fit in memory.
    #[error("a prompt of {tokens} tokens is too long: its activations would not fit in memory")]
    PromptTooLong {
        /// Prompt length.
        tokens: usize,
    },
    /// The estimated peak of the forward exceeds the memory available.
    #[error("{0}")]
    WouldNotFit(Box<WouldNotFit>),
    /// A KV cache without room for the tokens of a forward.
    #[error("the KV cache has room for {capacity} positions; it holds {held} and {tokens} more were run")]
    CacheFull {
        /// Positions the cache has room for.
        capacity: usize,
        /// Positions it holds.
        held: usize,
        /// Tokens of the forward.
        tokens: usize,
    },
    /// No tokens.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A weight's bytes could not be read as numbers.
    #[error("{path}: reading `{name}`")]
    Read {
        /// Model folder.
        path: String,
        /// The weight (canonical name).
        name: String,
        /// The reader's error.
        #[source]
        source: GatherError,
    },
    /// A weight file changed while the forward read it (truncated or rewritten by
    /// another process): the values read are garbage. The error names the file.
    #[error(transparent)]
    Changed(orient_inspect::Error),
    /// An encoder's token types or attention mask do not fit the prompt or the model.
    #[error("encoder inputs: {0}")]
    EncoderInputs(String),
    /// A KV-cached forward (generation) asked of an encoder.
    #[error("this model is an encoder (BERT): it has no LM head to generate tokens with")]
    EncoderCannotGenerate,
    /// A broken invariant inside the forward (a bug, reported rather than panicking).
    #[error("internal error in the forward: {0}")]
    Internal(String),
}

/// Details of [`ModelError::ShapeMismatch`].
#[derive(Debug)]
pub struct ShapeMismatch {
    /// Model folder.
    pub path: String,
    /// Tensor name as stored.
    pub name: String,
    /// Stored shape.
    pub found: Vec<usize>,
    /// Shape the catalogue expects in that convention.
    pub expected: Vec<usize>,
    /// The canonical shape in words.
    pub formula: String,
    /// The convention it is read in.
    pub convention: String,
}

impl std::fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: tensor `{}` has shape {:?}, expected {:?} ({}, {} layout)",
            self.path, self.name, self.found, self.expected, self.formula, self.convention
        )
    }
}

/// Details of [`ModelError::MissingTensor`].
#[derive(Debug)]
pub struct MissingTensor {
    /// Model folder.
    pub path: String,
    /// Its name in the convention the checkpoint is read in.
    pub name: String,
    /// Canonical (HF) name.
    pub canonical: String,
    /// The convention.
    pub convention: String,
    /// The checkpoint's tensors no convention recognised, when there are any: the likely
    /// reason (a checkpoint that names its tensors its own way).
    pub unrecognised: Option<Unrecognised>,
}

impl std::fmt::Display for MissingTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: missing tensor `{}`", self.path, self.name)?;
        if self.name != self.canonical {
            write!(f, ", the model's `{}`", self.canonical)?;
        }
        write!(f, " ({} layout)", self.convention)?;
        if let Some(u) = &self.unrecognised {
            write!(f, "; {u}")?;
        }
        Ok(())
    }
}

/// Tensors of a checkpoint that no known convention names (see [`ModelError::MissingTensor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognised {
    /// How many.
    pub count: usize,
    /// Tensors in the checkpoint.
    pub total: usize,
    /// The first one's name.
    pub example: String,
    /// The architecture of the config.
    pub arch: String,
}

impl std::fmt::Display for Unrecognised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of its {} tensors (e.g. `{}`) have names no known layout gives a {} model: if \
             its code names them its own way, describe that in a layout file and pass --layout FILE",
            self.count, self.total, self.example, self.arch
        )
    }
}

/// Details of [`ModelError::WouldNotFit`].
#[derive(Debug)]
pub struct WouldNotFit {
    /// Prompt length.
    pub tokens: usize,
    /// Positions whose logits were asked for.
    pub logit_positions: usize,
    /// The estimate.
    pub estimate: memory::MemoryEstimate,
    /// What the machine (or the cgroup) has.
    pub available: memory::Available,
}

impl std::fmt::Display for WouldNotFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a forward over {} tokens (logits at {} position{}) needs {}, but only {} is \
             available ({}); refusing to start",
            self.tokens,
            self.logit_positions,
            if self.logit_positions == 1 { "" } else { "s" },
            self.estimate,
            memory::Bytes(self.available.bytes),
            self.available.source
        )
    }
}

/// Something loading noticed that a user should know about. Returned as data; `verify` and
/// `run` print them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadNote {
    /// A 2-D weight whose shape is exactly the transpose of the expected one was read as its
    /// transpose (what a shape-trusting loader does). Square weights cannot be caught this way.
    ReadTransposed {
        /// Stored name.
        name: String,
        /// Stored shape.
        found: Vec<usize>,
        /// Expected shape.
        expected: Vec<usize>,
    },
    /// A tensor the catalogue does not know; not used.
    Ignored {
        /// Stored name.
        name: String,
    },
    /// `tie_word_embeddings`: logits use the token embedding.
    Tied,
    /// The config ties embeddings but the file also stores an lm_head; like transformers, the
    /// embedding is used.
    TiedLmHeadIgnored,
    /// The config ties embeddings, but the layout is one whose framework never ties (the Flax
    /// llama family always owns an `lm_head.kernel`): like that framework, the stored head
    /// computes the logits.
    TiedButOwnLmHead {
        /// Stored name of the head.
        name: String,
        /// The convention whose framework always owns a head.
        convention: String,
        /// It is one of orient's own (else a user's `--layout` file).
        builtin: bool,
    },
    /// The config says untied, but there is no lm_head: the embedding is used.
    UntiedButNoLmHead,
}

/// Per-layer activations of one forward.
#[derive(Clone, Debug, Default)]
pub struct LayerTrace {
    /// `[T, H]` residual stream after the attention block (input + attention output).
    pub after_attention: Vec<f32>,
    /// `[T, H]` residual stream after the whole layer (transformers' `layer_output`).
    pub output: Vec<f32>,
}

/// What one forward computed.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// The prompt.
    pub tokens: Vec<u32>,
    /// H.
    pub hidden_size: usize,
    /// V.
    pub vocab_size: usize,
    /// `[T, H]` embedding output (GPT-2: token + position); empty unless recorded.
    pub embedding: Vec<f32>,
    /// One per layer; empty unless recorded.
    pub layers: Vec<LayerTrace>,
    /// `[T, H]` final norm output, the lm_head input; empty unless recorded.
    pub final_norm: Vec<f32>,
    /// The positions the logits were computed at, ascending (all T by default).
    pub logit_positions: Vec<usize>,
    /// `[P, V]` logits at `logit_positions` (`[T, V]` when every position was asked for).
    /// Empty for an encoder without an LM head (BERT).
    pub logits: Vec<f32>,
    /// `[H]` an encoder's `pooler_output` (`tanh(dense(h[0]))`); empty otherwise.
    pub pooler_output: Vec<f32>,
}

/// Which positions a forward computes logits for. The `[T, V]` logits of a long prompt over a
/// large vocabulary are often the largest buffer of all (8,192 tokens × 151,936 entries is
/// 5 GB), while generating or printing the next token needs only the last row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LogitPositions {
    /// Every position: `[T, V]` (what `verify` and `run --save` compare and store).
    #[default]
    All,
    /// The last position only: `[1, V]`.
    Last,
    /// These positions (sorted and deduplicated; each below T).
    These(Vec<usize>),
}

/// What a forward computes besides the requested logits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Keep the embedding output, every layer's residual streams and the final norm output.
    pub record: bool,
    /// Which positions get logits.
    pub logits: LogitPositions,
}

impl ForwardOutput {
    /// Number of prompt tokens T.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True for an empty prompt (never produced by [`Model::forward`]).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Logits `[V]` at position `t`.
    ///
    /// # Panics
    /// If the forward did not compute logits at `t` (see [`LogitPositions`]).
    pub fn logits_at(&self, t: usize) -> &[f32] {
        let row = match self.logit_positions.binary_search(&t) {
            Ok(row) => row,
            Err(_) => panic!("no logits computed at position {t}"),
        };
        &self.logits[row * self.vocab_size..(row + 1) * self.vocab_size]
    }

    /// transformers' `output_hidden_states` (L + 1 tensors `[T, H]`): index 0 the embedding
    /// output, index i (1..L-1) the output of layer i-1, index L the final norm output (the
    /// lm_head input, *not* the raw output of the last layer). Empty unless recorded.
    pub fn hidden_states(&self) -> Vec<&[f32]> {
        if self.embedding.is_empty() {
            return Vec::new();
        }
        let mut out = vec![self.embedding.as_slice()];
        let n = self.layers.len();
        for layer in self.layers.iter().take(n.saturating_sub(1)) {
            out.push(&layer.output);
        }
        out.push(&self.final_norm);
        out
    }
}

/// One candidate next token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TopToken {
    /// Token id.
    pub token: u32,
    /// Its logit.
    pub logit: f32,
    /// Its softmax probability at that position.
    pub prob: f64,
}

impl ForwardOutput {
    /// The `k` highest logits at position `t`, best first (ties: lower id first).
    ///
    /// # Panics
    /// If the forward did not compute logits at `t`, as [`ForwardOutput::logits_at`].
    pub fn top_k(&self, t: usize, k: usize) -> Vec<TopToken> {
        let row = self.logits_at(t);
        let mut order: Vec<usize> = (0..row.len()).collect();
        let k = k.min(row.len());
        let by_logit = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
        if k < order.len() {
            order.select_nth_unstable_by(k, by_logit);
            order.truncate(k);
        }
        order.sort_by(by_logit);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
        order
            .into_iter()
            .map(|i| TopToken {
                token: i as u32,
                logit: row[i],
                prob: f64::from(row[i] - max).exp() / z,
            })
            .collect()
    }
}

/// A deterministic prompt of `len` token ids below `vocab` (a fixed xorshift sequence), for
/// comparing two models when no prompt is given. Long enough by default (80) that RoPE and
/// masking mistakes show.
pub fn default_prompt(vocab: usize, len: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let vocab = vocab.max(1) as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab) as u32
        })
        .collect()
}

/// Default length of [`default_prompt`].
pub const DEFAULT_PROMPT_LEN: usize = 80;

/// A model ready to run: its config, its architecture's traits, and its typed weights.
#[derive(Debug)]
pub struct Model<'c> {
    config: ModelConfig,
    traits: traits::Traits,
    weights: weights::Weights,
    reader: read::Reader<'c>,
    notes: Vec<LoadNote>,
    convention: String,
    threads: usize,
    exact_decode: bool,
}

impl<'c> Model<'c> {
    /// Resolves every weight of `ckpt` (any built-in convention) and checks shapes. Nothing is
    /// read yet.
    pub fn new(ckpt: &'c Checkpoint) -> Result<Model<'c>, ModelError> {
        Model::with_layouts(ckpt, &[])
    }

    /// [`Model::new`] with user layout files (`--layout`) besides the built-in conventions;
    /// the last one is preferred when the tensors' names and shapes do not decide.
    pub fn with_layouts(
        ckpt: &'c Checkpoint,
        layouts: &[Arc<Convention>],
    ) -> Result<Model<'c>, ModelError> {
        let config = model_config(ckpt)?;
        let traits = traits::Traits::of(&config)?;
        let located = locate::locate(ckpt, &config, &traits, layouts)?;
        Ok(Model {
            config,
            traits,
            weights: located.weights,
            reader: read::Reader::new(ckpt),
            notes: located.notes,
            convention: located.convention,
            threads: rayon::current_num_threads(),
            exact_decode: false,
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// What loading noticed (transposed reads, tied embeddings, ignored tensors).
    pub fn notes(&self) -> &[LoadNote] {
        &self.notes
    }

    /// Number of weight parameters the forward uses (a tied lm_head counted once), for
    /// `2 · parameters · tokens` FLOP counts.
    pub fn parameters(&self) -> usize {
        let all = self.reader.tensors();
        let used = match &self.weights {
            weights::Weights::Decoder(w) => w.all_tensors(),
            weights::Weights::Encoder(w) => w.all_tensors(),
        };
        used.into_iter()
            .filter_map(|k| all.get(k))
            .map(|t| t.numel())
            .sum()
    }

    /// The parameters one token multiplies on average: [`Model::parameters`] with each sparse
    /// layer's routed experts counted at `top_k / E` of their size (a token runs k of the E
    /// experts), for FLOP counts that follow the active parameters of a mixture of experts.
    pub fn active_parameters(&self) -> f64 {
        let total = self.parameters() as f64;
        let weights::Weights::Decoder(w) = &self.weights else {
            return total;
        };
        let idle: f64 = w
            .layers
            .iter()
            .filter_map(|l| l.moe.as_ref())
            .map(|m| {
                let routed: f64 = m
                    .experts
                    .iter()
                    .flat_map(|e| [&e.gate, &e.up, &e.down])
                    .map(|x| (x.out * x.inp) as f64)
                    .sum();
                routed * (1.0 - m.routing.top_k as f64 / m.experts.len().max(1) as f64)
            })
            .sum();
        total - idle
    }

    /// By default each layer's mmap pages are released after use, so resident memory stays
    /// at about one layer even for a model larger than RAM. `keep = true` leaves them mapped:
    /// repeated forwards skip the page faults, at the cost of RSS growing to the model size.
    pub fn keep_pages(&mut self, keep: bool) {
        self.reader.release_pages = !keep;
    }

    /// The name of the convention the checkpoint is read in (`hf`, `flax`, or a layout
    /// file's): the one its names and shapes show, else the `--layout` one.
    pub fn convention(&self) -> &str {
        &self.convention
    }

    /// Runs the prompt through the model (prefill, causal mask), with logits at every
    /// position. With `record`, keeps the embedding output, every layer's residual stream after
    /// attention and after the MLP, and the final norm output; otherwise only the logits.
    pub fn forward(&mut self, tokens: &[u32], record: bool) -> Result<ForwardOutput, ModelError> {
        self.forward_with(
            tokens,
            &ForwardOptions {
                record,
                logits: LogitPositions::All,
            },
        )
    }

    /// [`Model::forward`] with the logits computed only where `opts` asks. The peak memory is
    /// estimated first; [`ModelError::WouldNotFit`] when it exceeds what is available.
    pub fn forward_with(
        &mut self,
        tokens: &[u32],
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput, ModelError> {
        let weights::Weights::Decoder(w) = &self.weights else {
            return self.encode(tokens, &EncoderInputs::default(), opts.record);
        };
        let out = forward::forward(
            &self.config,
            &self.traits,
            w,
            &mut self.reader,
            tokens,
            opts,
            self.threads,
            None,
            false,
        );
        // Weights used in place are read inside the matmuls, after the per-tensor checks:
        // nothing computed from a file that changed underneath is returned.
        self.reader.check_intact()?;
        out
    }

    /// Makes [`Model::forward_cached`] compute each product of a decode step in the order a
    /// prefill over the whole sequence does (gemm's general path, see [`matmul::matmul_rows`]),
    /// over the same cached keys and values: each step's logits then equal, bit for bit, those
    /// of [`Model::forward_with`] over the sequence at that position. The one exception is a
    /// prompt of a single token: it is cached as a longer prefill computes it (so that the steps
    /// after it stay exact), and differs in the last bits from a plain one-token forward, which
    /// uses the matrix–vector kernel. Several times slower than the default: gemm packs each
    /// weight for a single row. For tests and for checking the cache itself.
    pub fn exact_decode(&mut self, exact: bool) {
        self.exact_decode = exact;
    }

    /// The most positions the model can take: the rows of a learned position table (GPT-2's
    /// `wpe`), or `None` for rotary positions (no fixed limit).
    pub fn max_positions(&self) -> Option<usize> {
        match &self.weights {
            weights::Weights::Decoder(w) => w.position.as_ref().map(|t| t.rows),
            weights::Weights::Encoder(_) => None,
        }
    }

    /// An empty KV cache for this model with room for `capacity` positions (prompt and
    /// generated tokens), for [`Model::forward_cached`].
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ModelError> {
        KvCache::new(
            self.config.num_hidden_layers,
            self.config.num_key_value_heads * self.config.head_dim,
            capacity,
        )
    }

    /// Runs `tokens` as the positions after those `cache` holds (a prefill on an empty cache, a
    /// decode step on one token), appending their keys and values to it. Positions in `opts`
    /// and in the output count from the first of `tokens`.
    ///
    /// A prefill through the cache is the plain forward. A decode step (one token) uses the
    /// matrix–vector kernel, whose sums run in another order than the many-row product of a
    /// prefill over the whole sequence: its logits agree with that prefill's to float rounding
    /// (about 1e-6). With [`Model::exact_decode`] they are equal bit for bit. On an error the
    /// cache keeps the positions it held before.
    pub fn forward_cached(
        &mut self,
        tokens: &[u32],
        cache: &mut KvCache,
        opts: &ForwardOptions,
    ) -> Result<ForwardOutput, ModelError> {
        let weights::Weights::Decoder(w) = &self.weights else {
            return Err(ModelError::EncoderCannotGenerate);
        };
        let out = forward::forward(
            &self.config,
            &self.traits,
            w,
            &mut self.reader,
            tokens,
            opts,
            self.threads,
            Some(&mut *cache),
            self.exact_decode,
        );
        if let Err(e) = self.reader.check_intact() {
            if out.is_ok() {
                // computed from a file that changed: forget what this forward appended
                cache.truncate(cache.len().saturating_sub(tokens.len()));
            }
            return Err(e);
        }
        out
    }
}

impl Model<'_> {
    /// True for an encoder (BERT): no logits; the last hidden state and the pooler output.
    pub fn is_encoder(&self) -> bool {
        matches!(self.weights, weights::Weights::Encoder(_))
    }

    /// Runs an encoder on `tokens` with its token types and attention mask (the last hidden
    /// state is `final_norm`, and [`ForwardOutput::hidden_states`] has transformers' meaning);
    /// `record` keeps the embedding output and every layer's streams. An error for a decoder.
    pub fn encode(
        &mut self,
        tokens: &[u32],
        inputs: &EncoderInputs,
        record: bool,
    ) -> Result<ForwardOutput, ModelError> {
        let weights::Weights::Encoder(w) = &self.weights else {
            return Err(ModelError::Internal(
                "token types and an attention mask are inputs of an encoder".into(),
            ));
        };
        let out = encoder::forward(
            &self.config,
            self.traits.activation,
            w,
            &mut self.reader,
            tokens,
            inputs,
            record,
            self.threads,
        );
        self.reader.check_intact()?;
        out
    }
}

/// The resolved `config.json` of a checkpoint, or why there is none the forward can use.
pub fn model_config(ckpt: &Checkpoint) -> Result<ModelConfig, ModelError> {
    let status = match ckpt.config_status() {
        ConfigStatus::Known(cfg) => return Ok(cfg.clone()),
        ConfigStatus::Missing => "no config.json next to the weights".to_string(),
        ConfigStatus::UnknownArch { model_type, .. } => format!(
            "unknown architecture {}",
            model_type.as_deref().unwrap_or("(no model_type)")
        ),
    };
    Err(ModelError::NoConfig {
        path: ckpt.root().display().to_string(),
        status,
    })
}
