//! `config.json` → [`ModelConfig`]: every default resolved once, in one place.
//!
//! Why this module exists: real `config.json` files differ by transformers version and by
//! architecture (`rope_theta` at top level vs `rope_parameters` vs `rope_scaling`, `dtype` vs
//! `torch_dtype`, GPT-2's `n_embd`/`n_head`/`n_layer`, `head_dim` absent, `null` or explicit,
//! per-architecture `tie_word_embeddings` defaults, GPT-NeoX's `rotary_pct`, Gemma 3's RoPE
//! nested per layer type, Qwen's `max_window_layers`). If every consumer (catalogue, report,
//! forward) re-derived these it would eventually disagree with itself, so the raw file is read
//! into `RawConfig` (HF's own field names, everything optional) and resolved **once** into the
//! plain [`ModelConfig`] that the rest of orient uses.
//!
//! Defaults follow transformers' own configuration classes; each is noted where it is applied,
//! with the file it was checked against (transformers 5.24 `models/*/configuration_*.py` and
//! `modeling_rope_utils.py`, cross-checked with 4.57 for the 4.x field names).
//!
//! Size fields that define tensor shapes (`hidden_size`, `num_hidden_layers`,
//! `num_attention_heads`, `intermediate_size`, `vocab_size`, and GPT-2's `n_embd`, `n_layer`,
//! `n_head`, `vocab_size`) are *required* here even though transformers would silently fill in
//! its defaults: every `save_pretrained` writes them, and guessing a 4096-wide model for a file
//! that lacks `hidden_size` would make every shape check lie.
//!
//! The module is split along its seams: `raw` (the file as written), `rope` (RoPE in all its
//! spellings), `resolve` (per-architecture defaults, layer types, mixtures of experts).

mod raw;
mod resolve;
mod rope;
#[cfg(test)]
mod tests;

use serde::Serialize;
use serde_json::Value;

/// Largest `num_hidden_layers` accepted. The catalogue expands one set of entries per layer, so an
/// absurd value from a hostile file must not become an absurd allocation. The deepest public
/// decoder-only models have a few hundred layers.
pub const MAX_LAYERS: usize = 10_000;

/// Largest number of routed experts accepted (the catalogue expands entries per expert and per
/// layer). Public mixtures have at most a few hundred (DeepSeek-V3: 256).
pub const MAX_EXPERTS: usize = 4096;

/// Largest number of expert MLPs over all layers (MoE layers × experts) accepted, for the same
/// reason; DeepSeek-V3 has 58 × 256 = 14,848.
pub const MAX_EXPERT_MLPS: usize = 1 << 20;

/// The model families orient knows the tensor layout of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `model_type: "llama"` (`LlamaForCausalLM`).
    Llama,
    /// `model_type: "mistral"` (`MistralForCausalLM`).
    Mistral,
    /// `model_type: "qwen2"` (`Qwen2ForCausalLM`): q/k/v biases always present.
    Qwen2,
    /// `model_type: "qwen3"` (`Qwen3ForCausalLM`): per-head q/k RMSNorm.
    Qwen3,
    /// `model_type: "gpt2"` (`GPT2LMHeadModel`): Conv1D weights, LayerNorm, learned positions.
    Gpt2,
    /// `model_type: "gemma"` (`GemmaForCausalLM`): `x·(1 + w)` RMSNorm, embeddings × √H.
    Gemma,
    /// `model_type: "gemma2"` (`Gemma2ForCausalLM`): Gemma plus post-attention and
    /// pre/post-feed-forward norms, soft-capping, alternating sliding-window layers.
    Gemma2,
    /// `model_type: "gemma3_text"` (`Gemma3ForCausalLM`, the text model): Gemma 2 plus q/k
    /// norms and separate RoPE bases for sliding and full layers.
    #[serde(rename = "gemma3_text")]
    Gemma3,
    /// `model_type: "phi3"` (`Phi3ForCausalLM`): fused `qkv_proj` and `gate_up_proj`.
    Phi3,
    /// `model_type: "gpt_neox"` (`GPTNeoXForCausalLM`, Pythia): `query_key_value` fused per
    /// head, partial rotary, LayerNorm with biases, parallel residual.
    #[serde(rename = "gpt_neox")]
    GptNeox,
    /// `model_type: "mixtral"` (`MixtralForCausalLM`): sparse mixture of experts.
    Mixtral,
    /// `model_type: "qwen2_moe"` (`Qwen2MoeForCausalLM`): experts plus a gated shared expert.
    #[serde(rename = "qwen2_moe")]
    Qwen2Moe,
    /// `model_type: "qwen3_moe"` (`Qwen3MoeForCausalLM`): experts, q/k norms.
    #[serde(rename = "qwen3_moe")]
    Qwen3Moe,
    /// `model_type: "bert"` (`BertModel`): a bidirectional encoder with post-LayerNorm, token
    /// types and a pooler.
    Bert,
}

/// Every architecture orient knows, with its `model_type` and the class names transformers writes
/// into `architectures`: the one table every "known architectures" list derives from.
const ARCHS: &[(Arch, &str, &[&str])] = &[
    (Arch::Llama, "llama", &["LlamaForCausalLM", "LlamaModel"]),
    (
        Arch::Mistral,
        "mistral",
        &["MistralForCausalLM", "MistralModel"],
    ),
    (Arch::Qwen2, "qwen2", &["Qwen2ForCausalLM", "Qwen2Model"]),
    (Arch::Qwen3, "qwen3", &["Qwen3ForCausalLM", "Qwen3Model"]),
    (Arch::Gpt2, "gpt2", &["GPT2LMHeadModel", "GPT2Model"]),
    (Arch::Gemma, "gemma", &["GemmaForCausalLM", "GemmaModel"]),
    (
        Arch::Gemma2,
        "gemma2",
        &["Gemma2ForCausalLM", "Gemma2Model"],
    ),
    (
        Arch::Gemma3,
        "gemma3_text",
        &["Gemma3ForCausalLM", "Gemma3TextModel"],
    ),
    (Arch::Phi3, "phi3", &["Phi3ForCausalLM", "Phi3Model"]),
    (
        Arch::GptNeox,
        "gpt_neox",
        &["GPTNeoXForCausalLM", "GPTNeoXModel"],
    ),
    (
        Arch::Mixtral,
        "mixtral",
        &["MixtralForCausalLM", "MixtralModel"],
    ),
    (
        Arch::Qwen2Moe,
        "qwen2_moe",
        &["Qwen2MoeForCausalLM", "Qwen2MoeModel"],
    ),
    (
        Arch::Qwen3Moe,
        "qwen3_moe",
        &["Qwen3MoeForCausalLM", "Qwen3MoeModel"],
    ),
    (
        Arch::Bert,
        "bert",
        &["BertModel", "BertForMaskedLM", "BertForPreTraining"],
    ),
];

impl Arch {
    /// Every known architecture, in a fixed order.
    pub const ALL: [Arch; 14] = [
        Arch::Llama,
        Arch::Mistral,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Gpt2,
        Arch::Gemma,
        Arch::Gemma2,
        Arch::Gemma3,
        Arch::Phi3,
        Arch::GptNeox,
        Arch::Mixtral,
        Arch::Qwen2Moe,
        Arch::Qwen3Moe,
        Arch::Bert,
    ];

    /// The architecture for a `model_type` string, exactly as transformers spells it.
    pub fn from_model_type(model_type: &str) -> Option<Arch> {
        ARCHS
            .iter()
            .find(|(_, t, _)| *t == model_type)
            .map(|(a, _, _)| *a)
    }

    /// The architecture for a class name from `architectures` (e.g. `LlamaForCausalLM`).
    pub fn from_class_name(class: &str) -> Option<Arch> {
        ARCHS
            .iter()
            .find(|(_, _, classes)| classes.contains(&class))
            .map(|(a, _, _)| *a)
    }

    /// The canonical `model_type` string of this architecture.
    pub fn model_type(self) -> &'static str {
        ARCHS
            .iter()
            .find(|(a, _, _)| *a == self)
            .map_or("", |(_, t, _)| t)
    }

    /// Every known `model_type`, in table order (for messages listing what is supported).
    pub fn names() -> Vec<&'static str> {
        ARCHS.iter().map(|(_, t, _)| *t).collect()
    }

    /// True for the decoder family that shares llama's tensor names and computation (llama,
    /// mistral, qwen2, qwen3).
    pub fn is_llama_family(self) -> bool {
        matches!(
            self,
            Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3
        )
    }

    /// True for the Gemma family (`x·(1 + w)` norms, embeddings × √H).
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3)
    }

    /// True for the mixtures of experts.
    pub fn is_moe(self) -> bool {
        matches!(self, Arch::Mixtral | Arch::Qwen2Moe | Arch::Qwen3Moe)
    }

    /// Which normalisation layer the architecture uses.
    pub fn norm_kind(self) -> NormKind {
        match self {
            Arch::Gpt2 | Arch::GptNeox | Arch::Bert => NormKind::LayerNorm,
            _ => NormKind::RmsNorm,
        }
    }
}

/// The normalisation layer an architecture uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) · weight` (llama family; Gemma with `1 + weight`, see
    /// [`ModelConfig::norm_unit_offset`]).
    RmsNorm,
    /// `(x − mean) / sqrt(var + eps) · weight + bias` (GPT-2, GPT-NeoX, BERT).
    LayerNorm,
}

/// Where the norms of a block sit relative to its residual connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormPlacement {
    /// `x + f(norm(x))` for attention and MLP (llama, GPT-2, GPT-NeoX, Phi-3, the MoEs, Gemma).
    Pre,
    /// `x + post_norm(f(pre_norm(x)))`: Gemma 2/3's post-attention and pre/post-feed-forward
    /// norms around each sublayer.
    Sandwich,
    /// `norm(x + f(x))`: BERT's post-LayerNorm (no final norm).
    Post,
}

/// The attention one layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKind {
    /// Every allowed key (all earlier ones when causal, all when bidirectional).
    Full,
    /// Only the last [`ModelConfig::sliding_window`] keys: query i sees key j when
    /// `i − window < j ≤ i` (transformers' `sliding_window_overlay`: `kv_idx > q_idx − window`).
    Sliding,
}

/// A RoPE frequency rescaling, as declared by `rope_parameters` / `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RopeScaling {
    /// `rope_type: "llama3"`: `inv_freq` rescaled by wavelength band.
    Llama3 {
        /// `factor`: how much the low-frequency band is slowed down.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// `original_max_position_embeddings` (HF defaults it to `max_position_embeddings`).
        original_max_position_embeddings: usize,
    },
    /// `rope_type: "linear"`: `inv_freq / factor` (`_compute_linear_scaling_rope_parameters`),
    /// e.g. Gemma 3 4B/12B/27B's full-attention layers (factor 8).
    Linear {
        /// `factor`.
        factor: f64,
    },
    /// A rope type orient does not implement (e.g. `dynamic`, `yarn`, Phi-3's `longrope`/`su`).
    /// Kept so that `inspect` still works; the forward refuses it by name.
    Unsupported(String),
}

impl RopeScaling {
    /// The `rope_type` name as written in config files.
    pub fn name(&self) -> &str {
        match self {
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Unsupported(name) => name,
        }
    }
}

/// The RoPE of one kind of layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRope {
    /// Base θ.
    pub theta: f64,
    /// Rescaling, `None` for `rope_type: "default"`.
    pub scaling: Option<RopeScaling>,
}

/// The mixture-of-experts part of a config (Mixtral, Qwen2-MoE, Qwen3-MoE).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeConfig {
    /// E: routed experts (`num_local_experts`, Qwen's `num_experts`).
    pub num_experts: usize,
    /// k: experts each token is routed to (`num_experts_per_tok`).
    pub top_k: usize,
    /// I_moe: the intermediate size of one routed expert (Mixtral: `intermediate_size`; Qwen:
    /// `moe_intermediate_size`).
    pub expert_intermediate_size: usize,
    /// I_shared: the shared expert's intermediate size (Qwen2-MoE
    /// `shared_expert_intermediate_size`); `None` for models without one.
    pub shared_expert_intermediate_size: Option<usize>,
    /// The top-k routing probabilities are renormalised to sum to 1 (Mixtral always; Qwen
    /// `norm_topk_prob`). The router itself is `softmax(router(x))` in f32 over all experts.
    pub norm_topk_prob: bool,
    /// Per layer: `true` when its MLP is the sparse block, `false` for a dense MLP of
    /// `intermediate_size` (Qwen's `mlp_only_layers` and `decoder_sparse_step`: layer i is
    /// sparse when `i ∉ mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`).
    pub sparse_layers: Vec<bool>,
}

/// A resolved model configuration: every HF default applied, every size checked.
///
/// Invariants established by [`parse_config`]: all sizes are non-zero;
/// `num_attention_heads % num_key_value_heads == 0`; `q_dim = num_attention_heads · head_dim`,
/// `kv_dim = num_key_value_heads · head_dim` and `3 · hidden_size` do not overflow;
/// `num_hidden_layers <= MAX_LAYERS`; `layer_types` has one entry per layer, and a
/// [`AttentionKind::Sliding`] layer implies a `sliding_window`; the rotary width is even.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The detected architecture.
    pub arch: Arch,
    /// `model_type` as written in the file (the arch's canonical one if the file had none).
    pub model_type: String,
    /// `architectures` as written (may be empty).
    pub architectures: Vec<String>,
    /// H: `hidden_size` (GPT-2: `n_embd`).
    pub hidden_size: usize,
    /// I: `intermediate_size` (GPT-2: `n_inner`, or 4·H when it is null/absent). For the
    /// Qwen MoEs, the size of the dense MLP layers (see [`MoeConfig`]).
    pub intermediate_size: usize,
    /// `num_hidden_layers` (GPT-2: `n_layer`).
    pub num_hidden_layers: usize,
    /// nH: `num_attention_heads` (GPT-2: `n_head`).
    pub num_attention_heads: usize,
    /// nKV: `num_key_value_heads`; equals nH when absent for llama, mistral, qwen2, qwen3 and
    /// phi3 (and always for GPT-2, GPT-NeoX and BERT); otherwise the configuration class's
    /// default (gemma 16, gemma2/gemma3 4, mixtral 8, qwen2_moe 16, qwen3_moe 4).
    pub num_key_value_heads: usize,
    /// D: explicit `head_dim`, else the class default (qwen3 128, gemma/gemma2/gemma3 256),
    /// else H / nH. GPT-NeoX and BERT always use H / nH.
    pub head_dim: usize,
    /// True when `head_dim` came from the file rather than being derived.
    pub head_dim_explicit: bool,
    /// nH · D: rows of q_proj, columns of o_proj.
    pub q_dim: usize,
    /// nKV · D: rows of k_proj and v_proj.
    pub kv_dim: usize,
    /// V: `vocab_size`.
    pub vocab_size: usize,
    /// `max_position_embeddings` (GPT-2: `n_positions`, the rows of `wpe`; BERT: the rows of
    /// `position_embeddings`).
    pub max_position_embeddings: usize,
    /// `rms_norm_eps` (RMSNorm models) or `layer_norm_epsilon` (GPT-2) / `layer_norm_eps`
    /// (GPT-NeoX, BERT).
    pub norm_eps: f64,
    /// RoPE base θ of the full-attention layers (of every layer unless [`Self::sliding_rope`]).
    /// 0.0 for GPT-2 and BERT, which have learned positions (see [`ModelConfig::uses_rope`]).
    pub rope_theta: f64,
    /// RoPE rescaling of the full-attention layers, `None` for `rope_type: "default"`.
    pub rope_scaling: Option<RopeScaling>,
    /// Whether lm_head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// `attention_bias` as transformers applies it (llama, qwen3, qwen3_moe, gemma*, gpt_neox:
    /// q/k/v/o biases). Always false for mistral, mixtral, phi3 (no such option) and qwen2 /
    /// qwen2_moe (whose q/k/v biases come from elsewhere: see `qkv_bias`); true for GPT-2 and
    /// BERT, whose projections always carry a bias.
    pub attention_bias: bool,
    /// q/k/v projections carry a bias (qwen2 always; qwen2_moe `qkv_bias`, default true;
    /// llama/qwen3/gemma*/gpt_neox when `attention_bias`; GPT-2, BERT always).
    pub qkv_bias: bool,
    /// o_proj (GPT-NeoX `dense`, BERT `attention.output.dense`) carries a bias.
    pub o_bias: bool,
    /// MLP projections carry biases (llama `mlp_bias`; always for GPT-2, GPT-NeoX and BERT).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (qwen3, qwen3_moe, gemma3).
    pub qk_norm: bool,
    /// The MLP activation: `hidden_act` (GPT-2: `activation_function`; gemma2/gemma3:
    /// `hidden_activation`; gemma's legacy `gelu` becomes `gelu_pytorch_tanh` as transformers
    /// 5 does). `gelu` is the erf GELU (GPT-NeoX, BERT).
    pub hidden_act: String,
    /// `dtype` (transformers 5.x) or `torch_dtype` (4.x), when present.
    pub torch_dtype: Option<String>,
    /// The sliding window, when the architecture's switch enables one: mistral's
    /// `sliding_window`; qwen2/qwen3/qwen2_moe/qwen3_moe's only when `use_sliding_window` is
    /// true; mixtral's and phi3's when not null; gemma2/gemma3's (default 4096; gemma3 with
    /// `use_bidirectional_attention` uses `w / 2 + 1` as transformers does). Which layers use
    /// it is [`Self::layer_types`].
    pub sliding_window: Option<usize>,
    /// Per layer, the attention it computes. Full everywhere unless the architecture slides:
    /// mistral, mixtral, phi3, qwen3_moe slide every layer when `sliding_window` is set;
    /// qwen2/qwen3 slide layers `i >= max_window_layers`; qwen2_moe layers with `i` even and
    /// `i < max_window_layers`; gemma2 every other layer starting with layer 0; gemma3 all but
    /// every `sliding_window_pattern`-th. An explicit `layer_types` in the file wins for the
    /// architectures whose configuration class has the field (qwen2, qwen3, qwen2_moe, gemma2,
    /// gemma3).
    pub layer_types: Vec<AttentionKind>,
    /// Causal (decoders) or bidirectional (BERT; gemma's `use_bidirectional_attention`)
    /// attention.
    pub causal: bool,
    /// The rotary fraction of each head: `partial_rotary_factor` (in `rope_parameters` or at
    /// the top level), GPT-NeoX's `rotary_pct` (default 0.25). 1.0 rotates the whole head.
    pub partial_rotary_factor: f64,
    /// The RoPE of the sliding-window layers when it differs by layer type (Gemma 3: the local
    /// base, `rope_parameters.sliding_attention` or `rope_local_base_freq`, default 10,000);
    /// `None` when every layer uses `rope_theta` / `rope_scaling`.
    pub sliding_rope: Option<LayerRope>,
    /// Attention scores are soft-capped, `cap · tanh(s / cap)`, before the mask (Gemma 2:
    /// `attn_logit_softcapping`, default 50).
    pub attn_logit_softcapping: Option<f64>,
    /// Logits are soft-capped, `cap · tanh(z / cap)` (Gemma 2: `final_logit_softcapping`,
    /// default 30).
    pub final_logit_softcapping: Option<f64>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of `D^-0.5` (Gemma 2
    /// and 3, default 256); see [`ModelConfig::attention_scale`].
    pub query_pre_attn_scalar: Option<f64>,
    /// Norm weights act as `x·(1 + w)`, computed in f32 (Gemma 1/2/3, including Gemma 3's q/k
    /// norms); the stored weight is `w`.
    pub norm_unit_offset: bool,
    /// The token embedding output is multiplied by this (Gemma: √H, as a Python float that
    /// transformers turns into a tensor of the activation dtype).
    pub embed_scale: Option<f64>,
    /// Where the norms sit relative to the residual connections.
    pub norm_placement: NormPlacement,
    /// GPT-NeoX `use_parallel_residual` (default true): `x + attn(ln1(x)) + mlp(ln2(x))`
    /// instead of two sequential residual steps.
    pub parallel_residual: bool,
    /// The mixture of experts, `None` for dense models.
    pub moe: Option<MoeConfig>,
    /// BERT `type_vocab_size` (default 2): rows of `token_type_embeddings`.
    pub type_vocab_size: Option<usize>,
    /// `pad_token_id` as written (BERT default 0, gemma 0), when a non-negative integer.
    pub pad_token_id: Option<usize>,
}

impl ModelConfig {
    /// False for GPT-2 and BERT (learned position tables), true for the rotary models.
    pub fn uses_rope(&self) -> bool {
        !matches!(self.arch, Arch::Gpt2 | Arch::Bert)
    }

    /// Rotary dimensions per head: `int(head_dim · partial_rotary_factor)` as transformers
    /// computes it (`modeling_rope_utils.py`), 0 without RoPE.
    pub fn rotary_dim(&self) -> usize {
        if self.uses_rope() {
            rope::rotary_dim(self.head_dim, self.partial_rotary_factor)
        } else {
            0
        }
    }

    /// The RoPE base and rescaling of layer `layer` (its layer type's, for Gemma 3).
    pub fn layer_rope(&self, layer: usize) -> (f64, Option<&RopeScaling>) {
        match (&self.sliding_rope, self.layer_types.get(layer)) {
            (Some(r), Some(AttentionKind::Sliding)) => (r.theta, r.scaling.as_ref()),
            _ => (self.rope_theta, self.rope_scaling.as_ref()),
        }
    }

    /// The attention score scale: `query_pre_attn_scalar^-0.5` when given, else `D^-0.5`.
    pub fn attention_scale(&self) -> f64 {
        self.query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64)
            .powf(-0.5)
    }

    /// True when layer `layer`'s MLP is the sparse mixture of experts.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe
            .as_ref()
            .is_some_and(|m| m.sparse_layers.get(layer).copied().unwrap_or(false))
    }
}

/// The result of reading a syntactically valid `config.json`.
// Built once per checkpoint and immediately destructured: boxing the config would only make
// the callers' pattern matches noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigOutcome {
    /// A known architecture, fully resolved.
    Known(ModelConfig),
    /// Valid JSON but an architecture orient does not know the layout of.
    UnknownArch {
        /// `model_type`, if the file had one.
        model_type: Option<String>,
        /// `architectures`, as written.
        architectures: Vec<String>,
    },
}

/// Why a `config.json` could not be resolved. Messages name the field; the caller adds the path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON at all.
    #[error("not valid JSON")]
    InvalidJson(#[source] serde_json::Error),
    /// The JSON is not an object.
    #[error("expected a JSON object at the top level, found {found}")]
    NotAnObject {
        /// The JSON kind found instead.
        found: &'static str,
    },
    /// A field has a value of the wrong type or range (e.g. a string or negative `hidden_size`).
    #[error("field `{field}` has an invalid value: {message}")]
    InvalidField {
        /// The field's name (dotted for nested fields, e.g. `rope_parameters.factor`).
        field: String,
        /// What serde or the check said.
        message: String,
    },
    /// A field orient needs to know tensor shapes is absent.
    #[error("required field `{field}` is missing")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// A size field is zero.
    #[error("field `{field}` is 0; it must be at least 1")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// A size field is implausibly large.
    #[error("field `{field}` is {value}, more than the supported maximum {max}")]
    TooLarge {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// `head_dim` is absent/null and the hidden size does not split evenly over the heads.
    #[error(
        "`{hidden_field}` ({hidden}) is not divisible by `{heads_field}` ({heads}) and no \
         `head_dim` is given"
    )]
    HiddenNotDivisibleByHeads {
        /// `hidden_size` or `n_embd`.
        hidden_field: &'static str,
        /// Its value.
        hidden: usize,
        /// `num_attention_heads` or `n_head`.
        heads_field: &'static str,
        /// Its value.
        heads: usize,
    },
    /// Grouped-query attention needs nH to be a multiple of nKV.
    #[error(
        "`num_attention_heads` ({heads}) is not divisible by `num_key_value_heads` ({kv_heads})"
    )]
    HeadsNotDivisibleByKvHeads {
        /// nH.
        heads: usize,
        /// nKV.
        kv_heads: usize,
    },
    /// RoPE rotates each head by halves (`rotate_half` splits it at D/2), so a RoPE model
    /// needs an even head dimension; transformers cannot run an odd one either.
    #[error(
        "`head_dim` is {head_dim} ({origin}): rotary position embeddings rotate each head by \
         halves, so it must be even (transformers' rotate_half cannot run it either)"
    )]
    OddHeadDim {
        /// D.
        head_dim: usize,
        /// Where D came from, e.g. `hidden_size / num_attention_heads = 15 / 3`.
        origin: String,
    },
    /// The rotary part of a head (`head_dim · partial_rotary_factor`) is odd or empty.
    #[error(
        "the rotary width is {rotary} (`head_dim` {head_dim} × partial rotary factor {factor}): \
         rotate_half needs an even, non-zero width"
    )]
    BadRotaryDim {
        /// int(D · factor).
        rotary: usize,
        /// D.
        head_dim: usize,
        /// The factor.
        factor: f64,
    },
    /// A derived size does not fit in `usize`.
    #[error("size overflow computing {what}")]
    Overflow {
        /// The product that overflowed, e.g. `num_attention_heads × head_dim`.
        what: &'static str,
    },
    /// `rope_parameters` is nested per attention type (`{"full_attention": {...}, ...}`) for an
    /// architecture whose model reads one flat dict.
    #[error(
        "`rope_parameters` is nested per attention type ({keys}); {arch} reads only the flat \
         form (`{{\"rope_type\": ..., \"rope_theta\": ...}}`)"
    )]
    NestedRopeParameters {
        /// The nested keys found, comma-separated.
        keys: String,
        /// The architecture's `model_type`.
        arch: &'static str,
    },
    /// A setting whose computation orient does not know, refused by name rather than ignored.
    #[error("`{field}` is {value}: {reason}")]
    Unsupported {
        /// The field.
        field: String,
        /// Its value as written.
        value: String,
        /// Why it is refused, and what is supported.
        reason: String,
    },
}

/// Parses and resolves a `config.json` text.
///
/// Returns [`ConfigOutcome::UnknownArch`] for valid JSON of an architecture orient does not know
/// (not an error: `inspect` still lists the tensors). Errors name the offending field but not the
/// file; the caller adds the path.
pub fn parse_config(text: &str) -> Result<ConfigOutcome, ConfigError> {
    let value: Value = serde_json::from_str(text).map_err(ConfigError::InvalidJson)?;
    let Value::Object(map) = &value else {
        return Err(ConfigError::NotAnObject {
            found: crate::header::json_kind(&value),
        });
    };
    let raw: raw::RawConfig = raw::deserialize_named(map, "")?;

    let architectures = raw.architectures.clone().unwrap_or_default();
    // model_type first; when absent or unrecognised, the first class name in `architectures`.
    let arch = raw
        .model_type
        .as_deref()
        .and_then(Arch::from_model_type)
        .or_else(|| architectures.first().and_then(|c| Arch::from_class_name(c)));
    let Some(arch) = arch else {
        return Ok(ConfigOutcome::UnknownArch {
            model_type: raw.model_type,
            architectures,
        });
    };
    let resolved = match arch {
        Arch::Gpt2 => resolve::gpt2(raw, architectures)?,
        _ => resolve::decoder_or_encoder(arch, raw, architectures)?,
    };
    Ok(ConfigOutcome::Known(resolved))
}
