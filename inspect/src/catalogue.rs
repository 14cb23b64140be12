//! The layout catalogue: which tensors a model of a given config has, under which names, in which
//! shapes and orientations, in the HF/PyTorch and the Flax conventions.
//!
//! Why it is data: the knowledge "q_proj is `[nH·D, H]` in PyTorch and its transpose in Flax" is
//! needed by inspect (is this file complete, which convention is it), convert (what to transpose)
//! and the forward (where each weight is). Spread over `if name.contains("q_proj")` tests it would
//! drift; kept as one static table of [`Template`] rows it can be read, tested and extended (GGUF,
//! MaxText) in one place. [`Catalogue::new`] expands the table for one [`ModelConfig`]: per-layer
//! names, concrete shapes, and an index from every accepted spelling of a name to its entry.
//!
//! Facts, and where they were checked (transformers 5.24 for the PyTorch classes, 4.57 for the
//! Flax ones, both installed in the project's venvs; also readable upstream in
//! huggingface/transformers):
//! - `nn.Linear(in, out)` stores `weight` as `[out, in]` (PyTorch) — every llama-family projection
//!   and `lm_head` (`models/{llama,mistral,qwen2,qwen3}/modeling_*.py`).
//! - q/k/v/o shapes `[nH·D, H]`, `[nKV·D, H]`, `[nKV·D, H]`, `[H, nH·D]`; gate/up `[I, H]`, down
//!   `[H, I]`: same files (`nn.Linear(config.hidden_size, config.num_attention_heads *
//!   self.head_dim, ...)` etc.).
//! - Biases: llama/qwen3 q,k,v,o `bias=config.attention_bias`; qwen2 q,k,v `bias=True`, o
//!   `bias=False`; mistral none; llama MLP `bias=config.mlp_bias`, others none.
//! - qwen3 `q_norm`/`k_norm` are `Qwen3RMSNorm(self.head_dim)` → `[D]` (`modeling_qwen3.py`).
//! - RMSNorm parameter is `weight` `[H]`; `nn.Embedding(V, H)` → `[V, H]`.
//! - GPT-2 `Conv1D(nf, nx)` stores `weight` as `[nx, nf]` = `[in, out]` and computes
//!   `addmm(bias, x, weight)` (`pytorch_utils.py`); `c_attn = Conv1D(3·H, H)` → `[H, 3H]`,
//!   `c_proj = Conv1D(H, H)`, `mlp.c_fc = Conv1D(I, H)` → `[H, I]`, `mlp.c_proj = Conv1D(H, I)`
//!   → `[I, H]`; `wte`/`wpe` `nn.Embedding`; `ln_*` `nn.LayerNorm` (`weight`, `bias`);
//!   `_keys_to_ignore_on_load_unexpected = ["attn.bias", ...]`; lm_head tied to
//!   `transformer.wte.weight` (`models/gpt2/modeling_gpt2.py`).
//! - Flax `nn.Dense` `kernel` is `[in, out]`; FlaxLlama RMSNorm declares
//!   `self.param("weight", ..., hidden_size)` (keeps `weight`); layers are named
//!   `model.layers.{i}` (`FlaxLlamaLayerCollection` blocks `name=str(i)`); `embed_tokens` is an
//!   `nn.Embed` → `embedding`; `FlaxLlamaForCausalLMModule` always has its own `lm_head` Dense
//!   (`models/llama/modeling_flax_llama.py`; `modeling_flax_mistral.py` is the same, no biases).
//! - FlaxGPT2: `FlaxConv1D` declares `kernel` with shape `(features, in)` = `[out, in]` and
//!   transposes it in `__call__`; LayerNorm params are `scale` and `bias`; `wte`/`wpe` are
//!   `nn.Embed` → `embedding`; with `tie_word_embeddings` the LM head applies
//!   `wte.embedding.T` and has no parameter of its own (`models/gpt2/modeling_flax_gpt2.py`).
//! - PT→Flax (`modeling_flax_pytorch_utils.py`, `rename_key_and_reshape_tensor`): a `weight`
//!   becomes `scale` when the Flax tree has `scale` (no transpose), `embedding` when the tree has
//!   `embedding` (no transpose), stays `weight` when the tree has `weight` (llama RMSNorm, no
//!   transpose), and otherwise any 2-D `weight` becomes `kernel` **transposed** (`pt_tensor.T`).
//!   So a GPT-2 Conv1D `[in, out]` weight becomes a `[out, in]` Flax kernel: the stored
//!   `c_attn.kernel` is `[3H, H]`. Every Flax kernel is therefore the transpose of its HF weight,
//!   for Linear and Conv1D alike (confirmed by the gpt2-flax fixture: `c_attn.kernel [192, 64]`).
//! - Flax has no Qwen2/Qwen3 classes in transformers; their Flax names here follow the llama
//!   pattern (`kernel`, `embedding`, RMSNorm `weight`, Dense `bias`), as hand-written ports do.

use std::collections::HashMap;

use serde::Serialize;

use crate::config::{Arch, ModelConfig};

/// A weight layout convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convention {
    /// HF / PyTorch: Linear `[out, in]`, Conv1D `[in, out]`; the canonical layout.
    Hf,
    /// Flax / JAX: Dense kernel `[in, out]`, GPT-2 Conv1D kernel `[out, in]`.
    Flax,
}

impl Convention {
    /// Short lowercase name (`hf`, `flax`).
    pub fn name(self) -> &'static str {
        match self {
            Convention::Hf => "hf",
            Convention::Flax => "flax",
        }
    }
}

/// Whether the framework that loads layout `c` of this model computes the logits with the
/// model's own lm_head (true) or with the token embedding (false), and so whether that layout
/// stores an lm_head at all.
///
/// Untied models always own one. With `tie_word_embeddings`, transformers' PyTorch classes tie
/// `lm_head` to the embedding (a stored `lm_head.weight` is ignored) and FlaxGPT2 applies
/// `wte.embedding.T`, but FlaxLlama/FlaxMistral (and hand-written ports of the family) always
/// own an `lm_head` Dense and use it (transformers 4.57 `modeling_flax_llama.py`:
/// `self.lm_head = nn.Dense`, `lm_logits = self.lm_head(hidden_states)`).
pub fn uses_own_lm_head(cfg: &ModelConfig, c: Convention) -> bool {
    if !cfg.tie_word_embeddings {
        return true;
    }
    match (c, cfg.arch) {
        (Convention::Hf, _) | (Convention::Flax, Arch::Gpt2) => false,
        (Convention::Flax, _) => true,
    }
}

/// What a tensor is, independent of naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Token embedding table.
    Embedding,
    /// Learned position table (GPT-2 `wpe`).
    PositionEmbedding,
    /// A dense projection stored as HF `nn.Linear`.
    Linear,
    /// A dense projection stored as HF `Conv1D` (GPT-2).
    Conv1d,
    /// GPT-2's fused q,k,v Conv1D (`c_attn`).
    FusedQkv,
    /// A normalisation weight (RMSNorm/LayerNorm scale).
    Norm,
    /// A bias vector (of a projection or a LayerNorm).
    Bias,
    /// The output projection to the vocabulary.
    LmHead,
    /// A non-weight buffer some files carry (GPT-2's causal mask); never used, never converted.
    Buffer,
}

/// Which part of the model a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// Token and position embeddings.
    Embedding,
    /// Self-attention projections, their biases, q/k norms and mask buffers.
    Attention,
    /// The feed-forward block.
    Mlp,
    /// The norm before attention (`input_layernorm`, `ln_1`).
    AttentionNorm,
    /// The norm before the MLP (`post_attention_layernorm`, `ln_2`).
    MlpNorm,
    /// The final norm (`model.norm`, `ln_f`).
    FinalNorm,
    /// The output projection.
    LmHead,
}

/// How a tensor's axes are laid out in one convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Orientation {
    /// HF `nn.Linear` weight `[out, in]`.
    HfLinear,
    /// Flax `nn.Dense` kernel `[in, out]`.
    FlaxKernel,
    /// HF GPT-2 `Conv1D` weight `[in, out]`.
    HfConv1d,
    /// Flax GPT-2 `FlaxConv1D` kernel `[out, in]`.
    FlaxConv1dKernel,
    /// Token embedding `[vocab, hidden]`, the same in both conventions.
    Embedding,
    /// Position table `[positions, hidden]`.
    PositionTable,
    /// Norm weight `[hidden]`.
    Norm,
    /// Per-head norm weight `[head_dim]` (qwen3 q/k norm).
    HeadNorm,
    /// Projection bias `[out]`.
    Bias,
    /// LayerNorm bias `[hidden]`.
    NormBias,
    /// A buffer, not a weight.
    Buffer,
}

impl Orientation {
    /// Human words for reports, e.g. `hf Linear [out,in]`.
    pub fn describe(self) -> &'static str {
        match self {
            Orientation::HfLinear => "hf Linear [out,in]",
            Orientation::FlaxKernel => "flax kernel [in,out]",
            Orientation::HfConv1d => "hf Conv1D [in,out]",
            Orientation::FlaxConv1dKernel => "flax Conv1D kernel [out,in]",
            Orientation::Embedding => "embedding [vocab,hidden]",
            Orientation::PositionTable => "embedding [positions,hidden]",
            Orientation::Norm => "norm [hidden]",
            Orientation::HeadNorm => "norm [head_dim]",
            Orientation::Bias => "bias [out]",
            Orientation::NormBias => "norm bias [hidden]",
            Orientation::Buffer => "buffer (not a weight)",
        }
    }
}

/// A symbolic dimension of a template shape, made concrete by a [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// H.
    Hidden,
    /// V.
    Vocab,
    /// `max_position_embeddings` (GPT-2 `n_positions`).
    Positions,
    /// nH·D.
    QOut,
    /// nKV·D.
    KvOut,
    /// D.
    HeadDim,
    /// I (GPT-2: `n_inner` or 4H).
    Inter,
    /// 3H (GPT-2 fused qkv).
    Qkv3,
    /// The literal 1.
    One,
}

impl Dim {
    fn size(self, cfg: &ModelConfig) -> usize {
        match self {
            Dim::Hidden => cfg.hidden_size,
            Dim::Vocab => cfg.vocab_size,
            Dim::Positions => cfg.max_position_embeddings,
            Dim::QOut => cfg.q_dim,
            Dim::KvOut => cfg.kv_dim,
            Dim::HeadDim => cfg.head_dim,
            Dim::Inter => cfg.intermediate_size,
            // parse_config guarantees 3·H fits; saturate for hand-built configs.
            Dim::Qkv3 => cfg.hidden_size.saturating_mul(3),
            Dim::One => 1,
        }
    }
}

/// When a template's tensor exists for a given config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// q/k/v biases ([`ModelConfig::qkv_bias`]).
    QkvBias,
    /// o_proj bias ([`ModelConfig::o_bias`]).
    OBias,
    /// MLP biases ([`ModelConfig::mlp_bias`]).
    MlpBias,
    /// Per-head q/k norms ([`ModelConfig::qk_norm`]).
    QkNorm,
}

impl When {
    fn holds(self, cfg: &ModelConfig) -> bool {
        match self {
            When::Always => true,
            When::QkvBias => cfg.qkv_bias,
            When::OBias => cfg.o_bias,
            When::MlpBias => cfg.mlp_bias,
            When::QkNorm => cfg.qk_norm,
        }
    }
}

/// Whether an expected tensor may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optional {
    /// Required.
    Never,
    /// May be absent when `tie_word_embeddings` is true; the text says what it is tied to.
    WhenTied(&'static str),
    /// May always be absent; the text says why.
    Always(&'static str),
}

/// One row of the catalogue: a tensor kind, with `{i}` standing for the layer index.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// HF name pattern.
    pub hf: &'static str,
    /// Flax name pattern.
    pub flax: &'static str,
    /// What the tensor is.
    pub role: Role,
    /// Where it belongs.
    pub component: Component,
    /// HF shape, symbolically. The Flax shape is its reverse when `transposed_between`.
    pub shape: &'static [Dim],
    /// HF axis layout.
    pub hf_orientation: Orientation,
    /// Flax axis layout.
    pub flax_orientation: Orientation,
    /// Flax tensor == HF tensorᵀ.
    pub transposed_between: bool,
    /// Condition for the tensor to exist.
    pub when: When,
    /// Architectures that have it.
    pub archs: &'static [Arch],
    /// May it be absent.
    pub optional: Optional,
    /// HF shape in words, e.g. `[nH·D, H]`.
    pub formula: &'static str,
}

const LLAMA_FAMILY: &[Arch] = &[Arch::Llama, Arch::Mistral, Arch::Qwen2, Arch::Qwen3];
const GPT2: &[Arch] = &[Arch::Gpt2];

/// The static layout table. Order is model order; rows containing `{i}` are expanded per layer,
/// consecutive layer rows forming one block.
pub static TEMPLATES: &[Template] = &[
    // ---- llama, mistral, qwen2, qwen3 ----
    Template {
        hf: "model.embed_tokens.weight",
        flax: "model.embed_tokens.embedding",
        role: Role::Embedding,
        component: Component::Embedding,
        shape: &[Dim::Vocab, Dim::Hidden],
        hf_orientation: Orientation::Embedding,
        flax_orientation: Orientation::Embedding,
        transposed_between: false,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[V, H]",
    },
    Template {
        hf: "model.layers.{i}.input_layernorm.weight",
        flax: "model.layers.{i}.input_layernorm.weight",
        role: Role::Norm,
        component: Component::AttentionNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Norm,
        flax_orientation: Orientation::Norm,
        transposed_between: false,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.q_proj.weight",
        flax: "model.layers.{i}.self_attn.q_proj.kernel",
        role: Role::Linear,
        component: Component::Attention,
        shape: &[Dim::QOut, Dim::Hidden],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[nH·D, H]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.q_proj.bias",
        flax: "model.layers.{i}.self_attn.q_proj.bias",
        role: Role::Bias,
        component: Component::Attention,
        shape: &[Dim::QOut],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::QkvBias,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[nH·D]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.k_proj.weight",
        flax: "model.layers.{i}.self_attn.k_proj.kernel",
        role: Role::Linear,
        component: Component::Attention,
        shape: &[Dim::KvOut, Dim::Hidden],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[nKV·D, H]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.k_proj.bias",
        flax: "model.layers.{i}.self_attn.k_proj.bias",
        role: Role::Bias,
        component: Component::Attention,
        shape: &[Dim::KvOut],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::QkvBias,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[nKV·D]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.v_proj.weight",
        flax: "model.layers.{i}.self_attn.v_proj.kernel",
        role: Role::Linear,
        component: Component::Attention,
        shape: &[Dim::KvOut, Dim::Hidden],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[nKV·D, H]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.v_proj.bias",
        flax: "model.layers.{i}.self_attn.v_proj.bias",
        role: Role::Bias,
        component: Component::Attention,
        shape: &[Dim::KvOut],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::QkvBias,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[nKV·D]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.q_norm.weight",
        flax: "model.layers.{i}.self_attn.q_norm.weight",
        role: Role::Norm,
        component: Component::Attention,
        shape: &[Dim::HeadDim],
        hf_orientation: Orientation::HeadNorm,
        flax_orientation: Orientation::HeadNorm,
        transposed_between: false,
        when: When::QkNorm,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[D]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.k_norm.weight",
        flax: "model.layers.{i}.self_attn.k_norm.weight",
        role: Role::Norm,
        component: Component::Attention,
        shape: &[Dim::HeadDim],
        hf_orientation: Orientation::HeadNorm,
        flax_orientation: Orientation::HeadNorm,
        transposed_between: false,
        when: When::QkNorm,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[D]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.o_proj.weight",
        flax: "model.layers.{i}.self_attn.o_proj.kernel",
        role: Role::Linear,
        component: Component::Attention,
        shape: &[Dim::Hidden, Dim::QOut],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[H, nH·D]",
    },
    Template {
        hf: "model.layers.{i}.self_attn.o_proj.bias",
        flax: "model.layers.{i}.self_attn.o_proj.bias",
        role: Role::Bias,
        component: Component::Attention,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::OBias,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "model.layers.{i}.post_attention_layernorm.weight",
        flax: "model.layers.{i}.post_attention_layernorm.weight",
        role: Role::Norm,
        component: Component::MlpNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Norm,
        flax_orientation: Orientation::Norm,
        transposed_between: false,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "model.layers.{i}.mlp.gate_proj.weight",
        flax: "model.layers.{i}.mlp.gate_proj.kernel",
        role: Role::Linear,
        component: Component::Mlp,
        shape: &[Dim::Inter, Dim::Hidden],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[I, H]",
    },
    Template {
        hf: "model.layers.{i}.mlp.gate_proj.bias",
        flax: "model.layers.{i}.mlp.gate_proj.bias",
        role: Role::Bias,
        component: Component::Mlp,
        shape: &[Dim::Inter],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::MlpBias,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[I]",
    },
    Template {
        hf: "model.layers.{i}.mlp.up_proj.weight",
        flax: "model.layers.{i}.mlp.up_proj.kernel",
        role: Role::Linear,
        component: Component::Mlp,
        shape: &[Dim::Inter, Dim::Hidden],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[I, H]",
    },
    Template {
        hf: "model.layers.{i}.mlp.up_proj.bias",
        flax: "model.layers.{i}.mlp.up_proj.bias",
        role: Role::Bias,
        component: Component::Mlp,
        shape: &[Dim::Inter],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::MlpBias,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[I]",
    },
    Template {
        hf: "model.layers.{i}.mlp.down_proj.weight",
        flax: "model.layers.{i}.mlp.down_proj.kernel",
        role: Role::Linear,
        component: Component::Mlp,
        shape: &[Dim::Hidden, Dim::Inter],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[H, I]",
    },
    Template {
        hf: "model.layers.{i}.mlp.down_proj.bias",
        flax: "model.layers.{i}.mlp.down_proj.bias",
        role: Role::Bias,
        component: Component::Mlp,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::MlpBias,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "model.norm.weight",
        flax: "model.norm.weight",
        role: Role::Norm,
        component: Component::FinalNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Norm,
        flax_orientation: Orientation::Norm,
        transposed_between: false,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "lm_head.weight",
        flax: "lm_head.kernel",
        role: Role::LmHead,
        component: Component::LmHead,
        shape: &[Dim::Vocab, Dim::Hidden],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: LLAMA_FAMILY,
        optional: Optional::WhenTied("tied to model.embed_tokens.weight"),
        formula: "[V, H]",
    },
    // ---- gpt2 ----
    Template {
        hf: "transformer.wte.weight",
        flax: "transformer.wte.embedding",
        role: Role::Embedding,
        component: Component::Embedding,
        shape: &[Dim::Vocab, Dim::Hidden],
        hf_orientation: Orientation::Embedding,
        flax_orientation: Orientation::Embedding,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[V, H]",
    },
    Template {
        hf: "transformer.wpe.weight",
        flax: "transformer.wpe.embedding",
        role: Role::PositionEmbedding,
        component: Component::Embedding,
        shape: &[Dim::Positions, Dim::Hidden],
        hf_orientation: Orientation::PositionTable,
        flax_orientation: Orientation::PositionTable,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[n_positions, H]",
    },
    Template {
        hf: "transformer.h.{i}.ln_1.weight",
        flax: "transformer.h.{i}.ln_1.scale",
        role: Role::Norm,
        component: Component::AttentionNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Norm,
        flax_orientation: Orientation::Norm,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "transformer.h.{i}.ln_1.bias",
        flax: "transformer.h.{i}.ln_1.bias",
        role: Role::Bias,
        component: Component::AttentionNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::NormBias,
        flax_orientation: Orientation::NormBias,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "transformer.h.{i}.attn.c_attn.weight",
        flax: "transformer.h.{i}.attn.c_attn.kernel",
        role: Role::FusedQkv,
        component: Component::Attention,
        shape: &[Dim::Hidden, Dim::Qkv3],
        hf_orientation: Orientation::HfConv1d,
        flax_orientation: Orientation::FlaxConv1dKernel,
        transposed_between: true,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H, 3H]",
    },
    Template {
        hf: "transformer.h.{i}.attn.c_attn.bias",
        flax: "transformer.h.{i}.attn.c_attn.bias",
        role: Role::Bias,
        component: Component::Attention,
        shape: &[Dim::Qkv3],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[3H]",
    },
    Template {
        hf: "transformer.h.{i}.attn.c_proj.weight",
        flax: "transformer.h.{i}.attn.c_proj.kernel",
        role: Role::Conv1d,
        component: Component::Attention,
        shape: &[Dim::Hidden, Dim::Hidden],
        hf_orientation: Orientation::HfConv1d,
        flax_orientation: Orientation::FlaxConv1dKernel,
        transposed_between: true,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H, H]",
    },
    Template {
        hf: "transformer.h.{i}.attn.c_proj.bias",
        flax: "transformer.h.{i}.attn.c_proj.bias",
        role: Role::Bias,
        component: Component::Attention,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    // Old GPT-2 files (e.g. the hub's openai-community/gpt2) carry the causal mask
    // `torch.tril(ones(P, P)).view(1, 1, P, P)` and `masked_bias = tensor(-1e4)`; modeling_gpt2.py
    // lists `attn.bias` in `_keys_to_ignore_on_load_unexpected`. Not weights; FlaxGPT2 has none.
    Template {
        hf: "transformer.h.{i}.attn.bias",
        flax: "transformer.h.{i}.attn.bias",
        role: Role::Buffer,
        component: Component::Attention,
        shape: &[Dim::One, Dim::One, Dim::Positions, Dim::Positions],
        hf_orientation: Orientation::Buffer,
        flax_orientation: Orientation::Buffer,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Always("causal-mask buffer of old GPT-2 files, not a weight"),
        formula: "[1, 1, n_positions, n_positions]",
    },
    Template {
        hf: "transformer.h.{i}.attn.masked_bias",
        flax: "transformer.h.{i}.attn.masked_bias",
        role: Role::Buffer,
        component: Component::Attention,
        shape: &[],
        hf_orientation: Orientation::Buffer,
        flax_orientation: Orientation::Buffer,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Always("mask-fill constant of old GPT-2 files, not a weight"),
        formula: "[]",
    },
    Template {
        hf: "transformer.h.{i}.ln_2.weight",
        flax: "transformer.h.{i}.ln_2.scale",
        role: Role::Norm,
        component: Component::MlpNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Norm,
        flax_orientation: Orientation::Norm,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "transformer.h.{i}.ln_2.bias",
        flax: "transformer.h.{i}.ln_2.bias",
        role: Role::Bias,
        component: Component::MlpNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::NormBias,
        flax_orientation: Orientation::NormBias,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "transformer.h.{i}.mlp.c_fc.weight",
        flax: "transformer.h.{i}.mlp.c_fc.kernel",
        role: Role::Conv1d,
        component: Component::Mlp,
        shape: &[Dim::Hidden, Dim::Inter],
        hf_orientation: Orientation::HfConv1d,
        flax_orientation: Orientation::FlaxConv1dKernel,
        transposed_between: true,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H, I]",
    },
    Template {
        hf: "transformer.h.{i}.mlp.c_fc.bias",
        flax: "transformer.h.{i}.mlp.c_fc.bias",
        role: Role::Bias,
        component: Component::Mlp,
        shape: &[Dim::Inter],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[I]",
    },
    Template {
        hf: "transformer.h.{i}.mlp.c_proj.weight",
        flax: "transformer.h.{i}.mlp.c_proj.kernel",
        role: Role::Conv1d,
        component: Component::Mlp,
        shape: &[Dim::Inter, Dim::Hidden],
        hf_orientation: Orientation::HfConv1d,
        flax_orientation: Orientation::FlaxConv1dKernel,
        transposed_between: true,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[I, H]",
    },
    Template {
        hf: "transformer.h.{i}.mlp.c_proj.bias",
        flax: "transformer.h.{i}.mlp.c_proj.bias",
        role: Role::Bias,
        component: Component::Mlp,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Bias,
        flax_orientation: Orientation::Bias,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "transformer.ln_f.weight",
        flax: "transformer.ln_f.scale",
        role: Role::Norm,
        component: Component::FinalNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::Norm,
        flax_orientation: Orientation::Norm,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "transformer.ln_f.bias",
        flax: "transformer.ln_f.bias",
        role: Role::Bias,
        component: Component::FinalNorm,
        shape: &[Dim::Hidden],
        hf_orientation: Orientation::NormBias,
        flax_orientation: Orientation::NormBias,
        transposed_between: false,
        when: When::Always,
        archs: GPT2,
        optional: Optional::Never,
        formula: "[H]",
    },
    Template {
        hf: "lm_head.weight",
        flax: "lm_head.kernel",
        role: Role::LmHead,
        component: Component::LmHead,
        shape: &[Dim::Vocab, Dim::Hidden],
        hf_orientation: Orientation::HfLinear,
        flax_orientation: Orientation::FlaxKernel,
        transposed_between: true,
        when: When::Always,
        archs: GPT2,
        optional: Optional::WhenTied("tied to transformer.wte.weight"),
        formula: "[V, H]",
    },
];

/// How an entry looks in one convention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Form {
    /// Canonical name in this convention (with `transformer.`/`model.` prefix, no `params.`).
    pub name: String,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Axis layout.
    pub orientation: Orientation,
}

/// One expected tensor of a concrete model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// What it is.
    pub role: Role,
    /// Where it belongs.
    pub component: Component,
    /// Layer index for per-layer tensors.
    pub layer: Option<usize>,
    /// HF/PyTorch form.
    pub hf: Form,
    /// Flax form.
    pub flax: Form,
    /// Flax tensor == HF tensorᵀ.
    pub transposed_between: bool,
    /// `Some(why)` when the tensor may be absent (lm_head under tied embeddings, GPT-2 mask
    /// buffers). `None`: required.
    pub optional: Option<&'static str>,
    /// HF shape in words, e.g. `[nH·D, H]`.
    pub shape_formula: &'static str,
}

impl Entry {
    /// The form in convention `c`.
    pub fn form(&self, c: Convention) -> &Form {
        match c {
            Convention::Hf => &self.hf,
            Convention::Flax => &self.flax,
        }
    }

    /// True for a weight (anything but a [`Role::Buffer`]).
    pub fn is_weight(&self) -> bool {
        self.role != Role::Buffer
    }

    /// 2-D, square, and a projection (Linear, Conv1D, fused qkv, lm_head): its orientation cannot
    /// be proven from the shape alone.
    pub fn is_square_ambiguous(&self) -> bool {
        matches!(
            self.role,
            Role::Linear | Role::Conv1d | Role::FusedQkv | Role::LmHead
        ) && matches!(self.hf.shape.as_slice(), [a, b] if a == b)
    }
}

/// Which spelling of a name matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The canonical name.
    Bare,
    /// `params.` + canonical name (flattened Flax trees keep the collection name).
    ParamsPrefixed,
    /// Canonical name without the base-model prefix (`transformer.` for GPT-2, as in hub GPT-2
    /// files `h.0.attn.c_attn.weight`; `model.` for llama-family base-model saves).
    NoBasePrefix,
    /// `params.` + name without the base-model prefix (a flattened `FlaxGPT2Model` tree).
    ParamsNoBasePrefix,
}

/// The result of [`Catalogue::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NameMatch {
    /// Index into [`Catalogue::entries`].
    pub entry: usize,
    /// The convention the name belongs to ([`Convention::Hf`] when `shared`).
    pub convention: Convention,
    /// Which spelling matched.
    pub variant: Variant,
    /// The name is spelled identically in both conventions (norm weights of the llama family,
    /// biases), so it says nothing about the convention.
    pub shared: bool,
}

/// The expected tensors of one concrete model, and an index of every accepted name.
#[derive(Debug, Clone)]
pub struct Catalogue {
    arch: Arch,
    entries: Vec<Entry>,
    index: HashMap<String, NameMatch>,
}

fn base_prefix(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 => "transformer.",
        _ => "model.",
    }
}

fn expand(t: &Template, layer: Option<usize>, cfg: &ModelConfig) -> Entry {
    let name = |pattern: &str| match layer {
        Some(i) => pattern.replace("{i}", &i.to_string()),
        None => pattern.to_string(),
    };
    let hf_shape: Vec<usize> = t.shape.iter().map(|d| d.size(cfg)).collect();
    let flax_shape: Vec<usize> = if t.transposed_between {
        hf_shape.iter().rev().copied().collect()
    } else {
        hf_shape.clone()
    };
    let optional = match t.optional {
        Optional::Never => None,
        Optional::WhenTied(why) => cfg.tie_word_embeddings.then_some(why),
        Optional::Always(why) => Some(why),
    };
    Entry {
        role: t.role,
        component: t.component,
        layer,
        hf: Form {
            name: name(t.hf),
            shape: hf_shape,
            orientation: t.hf_orientation,
        },
        flax: Form {
            name: name(t.flax),
            shape: flax_shape,
            orientation: t.flax_orientation,
        },
        transposed_between: t.transposed_between,
        optional,
        shape_formula: t.formula,
    }
}

impl Catalogue {
    /// Expands [`TEMPLATES`] for `cfg`: per-layer names, concrete shapes, name index.
    pub fn new(cfg: &ModelConfig) -> Catalogue {
        let rows: Vec<&Template> = TEMPLATES
            .iter()
            .filter(|t| t.archs.contains(&cfg.arch) && t.when.holds(cfg))
            .collect();
        let mut entries = Vec::new();
        let mut block: Vec<&Template> = Vec::new();
        let flush = |block: &mut Vec<&Template>, entries: &mut Vec<Entry>| {
            for i in 0..cfg.num_hidden_layers {
                entries.extend(block.iter().map(|t| expand(t, Some(i), cfg)));
            }
            block.clear();
        };
        for t in rows {
            if t.hf.contains("{i}") {
                block.push(t);
            } else {
                flush(&mut block, &mut entries);
                entries.push(expand(t, None, cfg));
            }
        }
        flush(&mut block, &mut entries);

        let prefix = base_prefix(cfg.arch);
        let mut index = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            // Names spelled identically in both conventions are indexed once, under Hf with
            // `shared`; only their `params.` spellings are unambiguously Flax.
            let shared = e.hf.name == e.flax.name;
            let mut add = |name: &str, convention, shared| {
                let m = NameMatch {
                    entry: i,
                    convention,
                    variant: Variant::Bare,
                    shared,
                };
                index.entry(name.to_string()).or_insert(m);
                if let Some(rest) = name.strip_prefix(prefix) {
                    index.entry(rest.to_string()).or_insert(NameMatch {
                        variant: Variant::NoBasePrefix,
                        ..m
                    });
                }
            };
            add(&e.hf.name, Convention::Hf, shared);
            // A buffer exists only in PyTorch files; its "Flax form" is a placeholder.
            if e.role == Role::Buffer {
                continue;
            }
            if !shared {
                add(&e.flax.name, Convention::Flax, false);
            }
            let flax = &e.flax.name;
            index.entry(format!("params.{flax}")).or_insert(NameMatch {
                entry: i,
                convention: Convention::Flax,
                variant: Variant::ParamsPrefixed,
                shared: false,
            });
            if let Some(rest) = flax.strip_prefix(prefix) {
                index.entry(format!("params.{rest}")).or_insert(NameMatch {
                    entry: i,
                    convention: Convention::Flax,
                    variant: Variant::ParamsNoBasePrefix,
                    shared: false,
                });
            }
        }
        Catalogue {
            arch: cfg.arch,
            entries,
            index,
        }
    }

    /// The architecture this catalogue was built for.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// All expected tensors, in model order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry, convention and spelling a tensor name stands for; `None` if the name is not
    /// part of this model's layout.
    pub fn resolve(&self, name: &str) -> Option<NameMatch> {
        self.index.get(name).copied()
    }

    /// The form of entry `entry` in convention `c`.
    ///
    /// # Panics
    /// If `entry` is not an index into [`Catalogue::entries`] (indices come from
    /// [`Catalogue::resolve`] or from enumerating `entries()`).
    pub fn form(&self, entry: usize, c: Convention) -> &Form {
        self.entries[entry].form(c)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{parse_config, ConfigOutcome};

    fn cfg(json: &str) -> ModelConfig {
        match parse_config(json).unwrap() {
            ConfigOutcome::Known(c) => c,
            other => panic!("{other:?}"),
        }
    }

    /// The tiny llama-family config of the fixtures, with `extra` fields appended.
    fn tiny(model_type: &str, extra: &str) -> ModelConfig {
        cfg(&format!(
            r#"{{"model_type": "{model_type}", "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 176, "num_hidden_layers": 2,
                "vocab_size": 512, "max_position_embeddings": 256{extra}}}"#
        ))
    }

    fn tiny_gpt2(extra: &str) -> ModelConfig {
        cfg(&format!(
            r#"{{"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": null,
                "n_positions": 256, "vocab_size": 512{extra}}}"#
        ))
    }

    fn listing(cat: &Catalogue, c: Convention) -> Vec<(String, Vec<usize>)> {
        cat.entries()
            .iter()
            .map(|e| (e.form(c).name.clone(), e.form(c).shape.clone()))
            .collect()
    }

    fn owned(rows: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
        rows.iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    /// Per-layer llama-family rows (HF), in model order, for layer `i`.
    fn llama_layer_hf(
        i: usize,
        q: usize,
        kv: usize,
        bias: bool,
        qk_norm: Option<usize>,
    ) -> Vec<(String, Vec<usize>)> {
        let p = format!("model.layers.{i}");
        let mut v = vec![
            (format!("{p}.input_layernorm.weight"), vec![64]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, 64]),
        ];
        if bias {
            v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
        }
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, 64]));
        if bias {
            v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
        }
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, 64]));
        if bias {
            v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        if let Some(d) = qk_norm {
            v.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
            v.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
        }
        v.extend([
            (format!("{p}.self_attn.o_proj.weight"), vec![64, q]),
            (format!("{p}.post_attention_layernorm.weight"), vec![64]),
            (format!("{p}.mlp.gate_proj.weight"), vec![176, 64]),
            (format!("{p}.mlp.up_proj.weight"), vec![176, 64]),
            (format!("{p}.mlp.down_proj.weight"), vec![64, 176]),
        ]);
        v
    }

    fn llama_hf(
        q: usize,
        kv: usize,
        bias: bool,
        qk_norm: Option<usize>,
    ) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![512, 64])];
        for i in 0..2 {
            v.extend(llama_layer_hf(i, q, kv, bias, qk_norm));
        }
        v.push(("model.norm.weight".to_string(), vec![64]));
        v.push(("lm_head.weight".to_string(), vec![512, 64]));
        v
    }

    #[test]
    fn llama_hf_and_flax_listing() {
        let cat = Catalogue::new(&tiny("llama", ""));
        assert_eq!(cat.arch(), Arch::Llama);
        assert_eq!(cat.entries().len(), 1 + 2 * 9 + 2);
        assert_eq!(listing(&cat, Convention::Hf), llama_hf(64, 32, false, None));
        let flax = listing(&cat, Convention::Flax);
        let expected_layer0 = owned(&[
            ("model.layers.0.input_layernorm.weight", &[64]),
            ("model.layers.0.self_attn.q_proj.kernel", &[64, 64]),
            ("model.layers.0.self_attn.k_proj.kernel", &[64, 32]),
            ("model.layers.0.self_attn.v_proj.kernel", &[64, 32]),
            ("model.layers.0.self_attn.o_proj.kernel", &[64, 64]),
            ("model.layers.0.post_attention_layernorm.weight", &[64]),
            ("model.layers.0.mlp.gate_proj.kernel", &[64, 176]),
            ("model.layers.0.mlp.up_proj.kernel", &[64, 176]),
            ("model.layers.0.mlp.down_proj.kernel", &[176, 64]),
        ]);
        assert_eq!(
            flax[0],
            ("model.embed_tokens.embedding".to_string(), vec![512, 64])
        );
        assert_eq!(flax[1..10].to_vec(), expected_layer0);
        assert_eq!(flax[10].0, "model.layers.1.input_layernorm.weight");
        assert_eq!(flax[19], ("model.norm.weight".to_string(), vec![64]));
        assert_eq!(flax[20], ("lm_head.kernel".to_string(), vec![64, 512]));

        let q = &cat.entries()[2];
        assert_eq!(q.role, Role::Linear);
        assert_eq!(q.component, Component::Attention);
        assert_eq!(q.layer, Some(0));
        assert!(q.transposed_between);
        assert_eq!(q.shape_formula, "[nH·D, H]");
        assert_eq!(q.hf.orientation.describe(), "hf Linear [out,in]");
        assert_eq!(q.flax.orientation.describe(), "flax kernel [in,out]");
        assert_eq!(
            cat.entries()[0].hf.orientation.describe(),
            "embedding [vocab,hidden]"
        );
        assert_eq!(cat.entries()[1].hf.orientation.describe(), "norm [hidden]");
        // Untied: lm_head required.
        assert_eq!(cat.entries()[20].optional, None);
    }

    #[test]
    fn llama_attention_and_mlp_bias_rows() {
        let cat = Catalogue::new(&tiny(
            "llama",
            r#", "attention_bias": true, "mlp_bias": true"#,
        ));
        let names: Vec<&str> = cat.entries().iter().map(|e| e.hf.name.as_str()).collect();
        for n in [
            "model.layers.1.self_attn.q_proj.bias",
            "model.layers.1.self_attn.k_proj.bias",
            "model.layers.1.self_attn.v_proj.bias",
            "model.layers.1.self_attn.o_proj.bias",
            "model.layers.1.mlp.gate_proj.bias",
            "model.layers.1.mlp.up_proj.bias",
            "model.layers.1.mlp.down_proj.bias",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert_eq!(cat.entries().len(), 1 + 2 * 16 + 2);
        let o_bias = cat.resolve("model.layers.1.self_attn.o_proj.bias").unwrap();
        assert_eq!(cat.form(o_bias.entry, Convention::Hf).shape, vec![64]);
        assert_eq!(
            cat.form(o_bias.entry, Convention::Hf)
                .orientation
                .describe(),
            "bias [out]"
        );
        let down_bias = cat.resolve("model.layers.0.mlp.down_proj.bias").unwrap();
        assert_eq!(cat.form(down_bias.entry, Convention::Flax).shape, vec![64]);
        // Without the options there are no biases at all.
        let plain = Catalogue::new(&tiny("llama", ""));
        assert!(plain.entries().iter().all(|e| e.role != Role::Bias));
        assert_eq!(plain.resolve("model.layers.0.self_attn.q_proj.bias"), None);
    }

    #[test]
    fn mistral_listing() {
        let cat = Catalogue::new(&tiny("mistral", r#", "attention_bias": true"#));
        assert_eq!(listing(&cat, Convention::Hf), llama_hf(64, 32, false, None));
    }

    #[test]
    fn qwen2_listing_has_qkv_biases() {
        let cat = Catalogue::new(&tiny("qwen2", ""));
        assert_eq!(listing(&cat, Convention::Hf), llama_hf(64, 32, true, None));
        let qb = cat.resolve("model.layers.0.self_attn.q_proj.bias").unwrap();
        assert_eq!(qb.convention, Convention::Hf);
        assert!(qb.shared);
        assert_eq!(cat.entries()[qb.entry].flax.shape, vec![64]);
        let kb = cat
            .resolve("params.model.layers.0.self_attn.k_proj.bias")
            .unwrap();
        assert_eq!(kb.convention, Convention::Flax);
        assert_eq!(kb.variant, Variant::ParamsPrefixed);
        assert_eq!(cat.entries()[kb.entry].hf.shape, vec![32]);
    }

    #[test]
    fn qwen3_listing_has_qk_norm_and_head_dim() {
        let cat = Catalogue::new(&tiny("qwen3", r#", "head_dim": 32"#));
        // nH·D = 128, nKV·D = 64.
        assert_eq!(
            listing(&cat, Convention::Hf),
            llama_hf(128, 64, false, Some(32))
        );
        let qn = cat
            .resolve("model.layers.1.self_attn.q_norm.weight")
            .unwrap();
        let e = &cat.entries()[qn.entry];
        assert_eq!(e.role, Role::Norm);
        assert_eq!(e.hf.orientation.describe(), "norm [head_dim]");
        assert_eq!(e.flax.shape, vec![32]);
        let o = cat
            .resolve("model.layers.0.self_attn.o_proj.kernel")
            .unwrap();
        assert_eq!(cat.form(o.entry, Convention::Flax).shape, vec![128, 64]);
        assert_eq!(cat.form(o.entry, Convention::Hf).shape, vec![64, 128]);
    }

    #[test]
    fn gpt2_hf_and_flax_listing() {
        let cat = Catalogue::new(&tiny_gpt2(""));
        let mut hf = owned(&[
            ("transformer.wte.weight", &[512, 64]),
            ("transformer.wpe.weight", &[256, 64]),
        ]);
        let mut flax = owned(&[
            ("transformer.wte.embedding", &[512, 64]),
            ("transformer.wpe.embedding", &[256, 64]),
        ]);
        for i in 0..2 {
            let p = format!("transformer.h.{i}");
            let rows_hf: [(&str, &[usize]); 14] = [
                ("ln_1.weight", &[64]),
                ("ln_1.bias", &[64]),
                ("attn.c_attn.weight", &[64, 192]),
                ("attn.c_attn.bias", &[192]),
                ("attn.c_proj.weight", &[64, 64]),
                ("attn.c_proj.bias", &[64]),
                ("attn.bias", &[1, 1, 256, 256]),
                ("attn.masked_bias", &[]),
                ("ln_2.weight", &[64]),
                ("ln_2.bias", &[64]),
                ("mlp.c_fc.weight", &[64, 256]),
                ("mlp.c_fc.bias", &[256]),
                ("mlp.c_proj.weight", &[256, 64]),
                ("mlp.c_proj.bias", &[64]),
            ];
            let rows_flax: [(&str, &[usize]); 14] = [
                ("ln_1.scale", &[64]),
                ("ln_1.bias", &[64]),
                ("attn.c_attn.kernel", &[192, 64]),
                ("attn.c_attn.bias", &[192]),
                ("attn.c_proj.kernel", &[64, 64]),
                ("attn.c_proj.bias", &[64]),
                ("attn.bias", &[1, 1, 256, 256]),
                ("attn.masked_bias", &[]),
                ("ln_2.scale", &[64]),
                ("ln_2.bias", &[64]),
                ("mlp.c_fc.kernel", &[256, 64]),
                ("mlp.c_fc.bias", &[256]),
                ("mlp.c_proj.kernel", &[64, 256]),
                ("mlp.c_proj.bias", &[64]),
            ];
            hf.extend(
                rows_hf
                    .iter()
                    .map(|(n, s)| (format!("{p}.{n}"), s.to_vec())),
            );
            flax.extend(
                rows_flax
                    .iter()
                    .map(|(n, s)| (format!("{p}.{n}"), s.to_vec())),
            );
        }
        hf.extend(owned(&[
            ("transformer.ln_f.weight", &[64]),
            ("transformer.ln_f.bias", &[64]),
            ("lm_head.weight", &[512, 64]),
        ]));
        flax.extend(owned(&[
            ("transformer.ln_f.scale", &[64]),
            ("transformer.ln_f.bias", &[64]),
            ("lm_head.kernel", &[64, 512]),
        ]));
        assert_eq!(listing(&cat, Convention::Hf), hf);
        assert_eq!(listing(&cat, Convention::Flax), flax);

        let c_attn = cat.resolve("transformer.h.0.attn.c_attn.weight").unwrap();
        let e = &cat.entries()[c_attn.entry];
        assert_eq!(e.role, Role::FusedQkv);
        assert!(e.transposed_between);
        assert_eq!(e.shape_formula, "[H, 3H]");
        assert_eq!(e.hf.orientation.describe(), "hf Conv1D [in,out]");
        assert_eq!(e.flax.orientation.describe(), "flax Conv1D kernel [out,in]");
        let wpe = cat.resolve("transformer.wpe.weight").unwrap();
        assert_eq!(cat.entries()[wpe.entry].role, Role::PositionEmbedding);
        // Tied by default: lm_head may be absent.
        let lm = cat.resolve("lm_head.weight").unwrap();
        assert_eq!(
            cat.entries()[lm.entry].optional,
            Some("tied to transformer.wte.weight")
        );
    }

    #[test]
    fn gpt2_buffers_are_not_weights() {
        let cat = Catalogue::new(&tiny_gpt2(""));
        for name in [
            "transformer.h.1.attn.bias",
            "h.1.attn.bias",
            "transformer.h.0.attn.masked_bias",
            "h.0.attn.masked_bias",
        ] {
            let m = cat.resolve(name).unwrap();
            let e = &cat.entries()[m.entry];
            assert_eq!(e.role, Role::Buffer, "{name}");
            assert!(!e.is_weight());
            assert!(e.optional.is_some());
            assert_eq!(m.convention, Convention::Hf);
        }
        // They are not Flax params.
        assert_eq!(cat.resolve("params.transformer.h.0.attn.bias"), None);
        // The c_attn *bias* is a weight.
        let b = cat.resolve("h.0.attn.c_attn.bias").unwrap();
        assert_eq!(cat.entries()[b.entry].role, Role::Bias);
    }

    #[test]
    fn resolve_every_variant() {
        let cat = Catalogue::new(&tiny_gpt2(""));
        let c_attn = cat.resolve("transformer.h.1.attn.c_attn.weight").unwrap();
        let cases = [
            (
                "transformer.h.1.attn.c_attn.weight",
                Convention::Hf,
                Variant::Bare,
            ),
            (
                "h.1.attn.c_attn.weight",
                Convention::Hf,
                Variant::NoBasePrefix,
            ),
            (
                "transformer.h.1.attn.c_attn.kernel",
                Convention::Flax,
                Variant::Bare,
            ),
            (
                "h.1.attn.c_attn.kernel",
                Convention::Flax,
                Variant::NoBasePrefix,
            ),
            (
                "params.transformer.h.1.attn.c_attn.kernel",
                Convention::Flax,
                Variant::ParamsPrefixed,
            ),
            (
                "params.h.1.attn.c_attn.kernel",
                Convention::Flax,
                Variant::ParamsNoBasePrefix,
            ),
        ];
        for (name, convention, variant) in cases {
            let m = cat.resolve(name).unwrap();
            assert_eq!(
                m,
                NameMatch {
                    entry: c_attn.entry,
                    convention,
                    variant,
                    shared: false
                },
                "{name}"
            );
        }
        assert_eq!(
            cat.resolve("wte.weight").unwrap().variant,
            Variant::NoBasePrefix
        );
        assert_eq!(
            cat.resolve("wte.embedding").unwrap().convention,
            Convention::Flax
        );
        assert_eq!(
            cat.resolve("params.ln_f.scale").unwrap().variant,
            Variant::ParamsNoBasePrefix
        );
        // LayerNorm bias is spelled the same in both conventions.
        let lnb = cat.resolve("ln_f.bias").unwrap();
        assert!(lnb.shared);
        assert_eq!(lnb.variant, Variant::NoBasePrefix);
        // Names not in the layout.
        for bad in [
            "transformer.h.2.attn.c_attn.weight",
            "transformer.h.0.attn.c_attn.kernel.extra",
            "params.params.wte.embedding",
            "model.embed_tokens.weight",
            "",
        ] {
            assert_eq!(cat.resolve(bad), None, "{bad}");
        }

        let cat = Catalogue::new(&tiny("llama", ""));
        let q = cat
            .resolve("model.layers.1.self_attn.q_proj.weight")
            .unwrap();
        let cases = [
            (
                "model.layers.1.self_attn.q_proj.weight",
                Convention::Hf,
                Variant::Bare,
            ),
            (
                "layers.1.self_attn.q_proj.weight",
                Convention::Hf,
                Variant::NoBasePrefix,
            ),
            (
                "model.layers.1.self_attn.q_proj.kernel",
                Convention::Flax,
                Variant::Bare,
            ),
            (
                "params.model.layers.1.self_attn.q_proj.kernel",
                Convention::Flax,
                Variant::ParamsPrefixed,
            ),
            (
                "params.layers.1.self_attn.q_proj.kernel",
                Convention::Flax,
                Variant::ParamsNoBasePrefix,
            ),
        ];
        for (name, convention, variant) in cases {
            let m = cat.resolve(name).unwrap();
            assert_eq!(
                (m.entry, m.convention, m.variant, m.shared),
                (q.entry, convention, variant, false),
                "{name}"
            );
        }
        // RMSNorm weights keep `weight` in Flax: the bare name is shared, `params.` is Flax.
        let n = cat.resolve("model.norm.weight").unwrap();
        assert_eq!(
            (n.convention, n.variant, n.shared),
            (Convention::Hf, Variant::Bare, true)
        );
        let n = cat.resolve("params.model.norm.weight").unwrap();
        assert_eq!(
            (n.convention, n.variant, n.shared),
            (Convention::Flax, Variant::ParamsPrefixed, false)
        );
        let lm = cat.resolve("params.lm_head.kernel").unwrap();
        assert_eq!(lm.entry, cat.entries().len() - 1);
        assert_eq!(
            cat.resolve("model.embed_tokens.embedding")
                .unwrap()
                .convention,
            Convention::Flax
        );
        assert_eq!(cat.resolve("transformer.wte.weight"), None);
    }

    #[test]
    fn every_form_name_resolves_to_its_entry() {
        for cfg in [
            tiny("llama", r#", "attention_bias": true, "mlp_bias": true"#),
            tiny("mistral", ""),
            tiny("qwen2", ""),
            tiny("qwen3", r#", "head_dim": 32"#),
            tiny_gpt2(""),
        ] {
            let cat = Catalogue::new(&cfg);
            for (i, e) in cat.entries().iter().enumerate() {
                for c in [Convention::Hf, Convention::Flax] {
                    if c == Convention::Flax && !e.is_weight() {
                        continue;
                    }
                    let m = cat.resolve(&e.form(c).name).unwrap();
                    assert_eq!(m.entry, i, "{}", e.form(c).name);
                    let expect = if e.hf.name == e.flax.name {
                        Convention::Hf
                    } else {
                        c
                    };
                    assert_eq!(m.convention, expect, "{}", e.form(c).name);
                    if e.transposed_between {
                        let mut rev = e.hf.shape.clone();
                        rev.reverse();
                        assert_eq!(e.flax.shape, rev);
                    } else {
                        assert_eq!(e.flax.shape, e.hf.shape);
                    }
                }
            }
        }
    }

    #[test]
    fn tied_and_untied_lm_head() {
        let tied = Catalogue::new(&tiny(
            "qwen3",
            r#", "head_dim": 32, "tie_word_embeddings": true"#,
        ));
        let lm = tied.resolve("lm_head.weight").unwrap();
        assert_eq!(
            tied.entries()[lm.entry].optional,
            Some("tied to model.embed_tokens.weight")
        );
        assert_eq!(tied.entries()[lm.entry].role, Role::LmHead);
        // Config says untied: lm_head is a required entry, so a file without it is reported
        // as missing.
        let untied = Catalogue::new(&tiny(
            "qwen3",
            r#", "head_dim": 32, "tie_word_embeddings": false"#,
        ));
        let lm = untied.resolve("lm_head.weight").unwrap();
        assert_eq!(untied.entries()[lm.entry].optional, None);
        let untied = Catalogue::new(&tiny_gpt2(r#", "tie_word_embeddings": false"#));
        let lm = untied.resolve("lm_head.kernel").unwrap();
        assert_eq!(untied.entries()[lm.entry].optional, None);
        assert_eq!(untied.form(lm.entry, Convention::Flax).shape, vec![64, 512]);
    }

    #[test]
    fn square_ambiguity() {
        let cat = Catalogue::new(&tiny("qwen2", ""));
        let amb = |n: &str| cat.entries()[cat.resolve(n).unwrap().entry].is_square_ambiguous();
        assert!(amb("model.layers.0.self_attn.q_proj.weight"));
        assert!(amb("model.layers.0.self_attn.o_proj.weight"));
        assert!(!amb("model.layers.0.self_attn.k_proj.weight"));
        assert!(!amb("model.layers.0.self_attn.v_proj.weight"));
        assert!(!amb("model.layers.0.mlp.gate_proj.weight"));
        assert!(!amb("model.layers.0.mlp.down_proj.weight"));
        assert!(!amb("lm_head.weight"));
        assert!(!amb("model.embed_tokens.weight"));
        assert!(!amb("model.norm.weight"));
        let ambiguous: Vec<&str> = cat
            .entries()
            .iter()
            .filter(|e| e.is_square_ambiguous())
            .map(|e| e.hf.name.as_str())
            .collect();
        assert_eq!(
            ambiguous,
            [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.o_proj.weight",
                "model.layers.1.self_attn.q_proj.weight",
                "model.layers.1.self_attn.o_proj.weight",
            ]
        );
        // qwen3 with head_dim 32: q is 128×64 and o 64×128, but k/v are nKV·D × H = 64×64.
        let q3 = Catalogue::new(&tiny("qwen3", r#", "head_dim": 32"#));
        let ambiguous: Vec<&str> = q3
            .entries()
            .iter()
            .filter(|e| e.is_square_ambiguous())
            .map(|e| e.hf.name.as_str())
            .collect();
        assert_eq!(
            ambiguous,
            [
                "model.layers.0.self_attn.k_proj.weight",
                "model.layers.0.self_attn.v_proj.weight",
                "model.layers.1.self_attn.k_proj.weight",
                "model.layers.1.self_attn.v_proj.weight",
            ]
        );

        let g = Catalogue::new(&tiny_gpt2(""));
        let ambiguous: Vec<&str> = g
            .entries()
            .iter()
            .filter(|e| e.is_square_ambiguous())
            .map(|e| e.hf.name.as_str())
            .collect();
        assert_eq!(
            ambiguous,
            [
                "transformer.h.0.attn.c_proj.weight",
                "transformer.h.1.attn.c_proj.weight"
            ]
        );
    }
}
