//! `config.json` → [`ModelConfig`]: every default resolved once, in one place.
//!
//! Why this module exists: real `config.json` files differ by transformers version and by
//! architecture (`rope_theta` at top level vs `rope_parameters` vs `rope_scaling`, `dtype` vs
//! `torch_dtype`, GPT-2's `n_embd`/`n_head`/`n_layer`, `head_dim` absent, `null` or explicit,
//! per-architecture `tie_word_embeddings` defaults). If every consumer (catalogue, report,
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

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Largest `num_hidden_layers` accepted. The catalogue expands one set of entries per layer, so an
/// absurd value from a hostile file must not become an absurd allocation. The deepest public
/// decoder-only models have a few hundred layers.
pub const MAX_LAYERS: usize = 10_000;

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
];

impl Arch {
    /// Every known architecture, in a fixed order.
    pub const ALL: [Arch; 5] = [
        Arch::Llama,
        Arch::Mistral,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Gpt2,
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

    /// True for the decoder family that shares llama's tensor names (llama, mistral, qwen2, qwen3).
    pub fn is_llama_family(self) -> bool {
        !matches!(self, Arch::Gpt2)
    }

    /// Which normalisation layer the architecture uses.
    pub fn norm_kind(self) -> NormKind {
        match self {
            Arch::Gpt2 => NormKind::LayerNorm,
            _ => NormKind::RmsNorm,
        }
    }
}

/// The normalisation layer an architecture uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) · weight` (llama family).
    RmsNorm,
    /// `(x − mean) / sqrt(var + eps) · weight + bias` (GPT-2).
    LayerNorm,
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
    /// A rope type orient does not implement (e.g. `linear`, `dynamic`, `yarn`). Kept so that
    /// `inspect` still works; the forward refuses it by name.
    Unsupported(String),
}

impl RopeScaling {
    /// The `rope_type` name as written in config files.
    pub fn name(&self) -> &str {
        match self {
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Unsupported(name) => name,
        }
    }
}

/// A resolved model configuration: every HF default applied, every size checked.
///
/// Invariants established by [`parse_config`]: all sizes are non-zero;
/// `num_attention_heads % num_key_value_heads == 0`; `q_dim = num_attention_heads · head_dim`,
/// `kv_dim = num_key_value_heads · head_dim` and `3 · hidden_size` do not overflow;
/// `num_hidden_layers <= MAX_LAYERS`.
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
    /// I: `intermediate_size` (GPT-2: `n_inner`, or 4·H when it is null/absent).
    pub intermediate_size: usize,
    /// `num_hidden_layers` (GPT-2: `n_layer`).
    pub num_hidden_layers: usize,
    /// nH: `num_attention_heads` (GPT-2: `n_head`).
    pub num_attention_heads: usize,
    /// nKV: `num_key_value_heads`; equals nH when absent (and always for GPT-2).
    pub num_key_value_heads: usize,
    /// D: explicit `head_dim`, else H / nH (qwen3: 128 when the field is absent, HF's default).
    pub head_dim: usize,
    /// True when `head_dim` came from the file rather than being derived.
    pub head_dim_explicit: bool,
    /// nH · D: rows of q_proj, columns of o_proj.
    pub q_dim: usize,
    /// nKV · D: rows of k_proj and v_proj.
    pub kv_dim: usize,
    /// V: `vocab_size`.
    pub vocab_size: usize,
    /// `max_position_embeddings` (GPT-2: `n_positions`, the rows of `wpe`).
    pub max_position_embeddings: usize,
    /// `rms_norm_eps` (llama family) or `layer_norm_epsilon` (GPT-2).
    pub norm_eps: f64,
    /// RoPE base θ. 0.0 for GPT-2, which has learned positions (see [`ModelConfig::uses_rope`]).
    pub rope_theta: f64,
    /// RoPE rescaling, `None` for `rope_type: "default"` (and for GPT-2).
    pub rope_scaling: Option<RopeScaling>,
    /// Whether lm_head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// `attention_bias` as transformers applies it (llama, qwen3: q/k/v/o biases). Always false
    /// for mistral (no such option) and qwen2 (whose q/k/v biases are unconditional: see
    /// `qkv_bias`); true for GPT-2, whose Conv1D layers always carry a bias.
    pub attention_bias: bool,
    /// q/k/v projections carry a bias (qwen2 always; llama/qwen3 when `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj carries a bias (llama/qwen3 when `attention_bias`).
    pub o_bias: bool,
    /// MLP projections carry biases (llama `mlp_bias`; always for GPT-2).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (qwen3).
    pub qk_norm: bool,
    /// `hidden_act` (GPT-2: `activation_function`).
    pub hidden_act: String,
    /// `dtype` (transformers 5.x) or `torch_dtype` (4.x), when present.
    pub torch_dtype: Option<String>,
    /// Effective sliding window: mistral's `sliding_window`; qwen2/qwen3's only when
    /// `use_sliding_window` is true.
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// False for GPT-2 (learned position table), true for the llama family.
    pub fn uses_rope(&self) -> bool {
        self.arch.is_llama_family()
    }

    /// Rotary dimensions per head: the whole head for the llama family, 0 without RoPE.
    pub fn rotary_dim(&self) -> usize {
        if self.uses_rope() {
            self.head_dim
        } else {
            0
        }
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
    #[error("not valid JSON: {0}")]
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
    /// A derived size does not fit in `usize`.
    #[error("size overflow computing {what}")]
    Overflow {
        /// The product that overflowed, e.g. `num_attention_heads × head_dim`.
        what: &'static str,
    },
    /// `rope_parameters` is nested per attention type (`{"full_attention": {...}, ...}`).
    #[error(
        "`rope_parameters` is nested per attention type ({keys}); only the flat form \
         (`{{\"rope_type\": ..., \"rope_theta\": ...}}`) is supported"
    )]
    NestedRopeParameters {
        /// The nested keys found, comma-separated.
        keys: String,
    },
}

/// `config.json` with HF's own field names, every field optional: the file as written.
///
/// Unknown fields are ignored (configs carry dozens irrelevant to layout). `Option<Option<T>>`
/// distinguishes "absent" (outer `None`) from explicit `null` (`Some(None)`) where transformers
/// treats them differently.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    // llama family names
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    head_dim: Option<Option<usize>>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    use_sliding_window: Option<bool>,
    // GPT-2 names
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
}

/// Deserializes a field that is present (possibly `null`) as `Some(inner)`; with
/// `#[serde(default)]` an absent field stays `None`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// The flat form of `rope_parameters` (5.x) / `rope_scaling` (4.x).
#[derive(Debug, Default, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    /// 4.x spelling of `rope_type`.
    #[serde(rename = "type")]
    type_: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

/// Deserializes `T` (all-optional fields) from an object; on failure, finds the field at fault
/// by deserializing each member alone, so the error can name it.
fn deserialize_named<T>(
    map: &serde_json::Map<String, Value>,
    prefix: &str,
) -> Result<T, ConfigError>
where
    T: for<'de> Deserialize<'de>,
{
    match T::deserialize(Value::Object(map.clone())) {
        Ok(raw) => Ok(raw),
        Err(whole) => {
            for (key, value) in map {
                let mut single = serde_json::Map::new();
                single.insert(key.clone(), value.clone());
                if let Err(e) = T::deserialize(Value::Object(single)) {
                    return Err(ConfigError::InvalidField {
                        field: format!("{prefix}{key}"),
                        message: e.to_string(),
                    });
                }
            }
            Err(ConfigError::InvalidField {
                field: prefix.trim_end_matches('.').to_string(),
                message: whole.to_string(),
            })
        }
    }
}

fn required(value: Option<usize>, field: &'static str) -> Result<usize, ConfigError> {
    let v = value.ok_or(ConfigError::MissingField { field })?;
    nonzero(v, field)
}

fn nonzero(v: usize, field: &'static str) -> Result<usize, ConfigError> {
    if v == 0 {
        Err(ConfigError::Zero { field })
    } else {
        Ok(v)
    }
}

fn positive_finite(v: f64, field: &str) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(ConfigError::InvalidField {
            field: field.to_string(),
            message: format!("{v} is not a positive finite number"),
        })
    }
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
    let raw: RawConfig = deserialize_named(map, "")?;

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
        Arch::Gpt2 => resolve_gpt2(raw, architectures)?,
        _ => resolve_llama_family(arch, raw, architectures)?,
    };
    Ok(ConfigOutcome::Known(resolved))
}

/// Checked nH·D, nKV·D and 3·H, so no later shape computation can overflow.
fn derived_dims(
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(usize, usize), ConfigError> {
    let q_dim = heads.checked_mul(head_dim).ok_or(ConfigError::Overflow {
        what: "num_attention_heads × head_dim",
    })?;
    let kv_dim = kv_heads
        .checked_mul(head_dim)
        .ok_or(ConfigError::Overflow {
            what: "num_key_value_heads × head_dim",
        })?;
    hidden.checked_mul(3).ok_or(ConfigError::Overflow {
        what: "3 × hidden_size",
    })?;
    Ok((q_dim, kv_dim))
}

fn check_layers(layers: usize, field: &'static str) -> Result<usize, ConfigError> {
    let layers = nonzero(layers, field)?;
    if layers > MAX_LAYERS {
        return Err(ConfigError::TooLarge {
            field,
            value: layers,
            max: MAX_LAYERS,
        });
    }
    Ok(layers)
}

fn resolve_llama_family(
    arch: Arch,
    raw: RawConfig,
    architectures: Vec<String>,
) -> Result<ModelConfig, ConfigError> {
    let hidden_size = required(raw.hidden_size, "hidden_size")?;
    let intermediate_size = required(raw.intermediate_size, "intermediate_size")?;
    let num_hidden_layers = check_layers(
        raw.num_hidden_layers.ok_or(ConfigError::MissingField {
            field: "num_hidden_layers",
        })?,
        "num_hidden_layers",
    )?;
    let heads = required(raw.num_attention_heads, "num_attention_heads")?;
    let vocab_size = required(raw.vocab_size, "vocab_size")?;
    // Absent ⇒ = num_attention_heads (every configuration_*.py __post_init__; mistral's dataclass
    // default is 8 but only for constructing a config in Python, files always carry the field).
    let kv_heads = match raw.num_key_value_heads {
        Some(n) => nonzero(n, "num_key_value_heads")?,
        None => heads,
    };
    if heads % kv_heads != 0 {
        return Err(ConfigError::HeadsNotDivisibleByKvHeads { heads, kv_heads });
    }
    // head_dim: explicit value wins. Qwen3Config declares `head_dim: int = 128` (not derived), so
    // an *absent* head_dim means 128 there; `null` (or absent elsewhere) means H / nH as in
    // LlamaConfig/MistralConfig.__post_init__ and modeling_qwen2.py's
    // getattr(config, "head_dim", hidden_size // num_attention_heads).
    let (head_dim, head_dim_explicit) = match (raw.head_dim, arch) {
        (Some(Some(d)), _) => (nonzero(d, "head_dim")?, true),
        (None, Arch::Qwen3) => (128, false),
        _ => {
            if hidden_size % heads != 0 {
                return Err(ConfigError::HiddenNotDivisibleByHeads {
                    hidden_field: "hidden_size",
                    hidden: hidden_size,
                    heads_field: "num_attention_heads",
                    heads,
                });
            }
            (hidden_size / heads, false)
        }
    };
    let (q_dim, kv_dim) = derived_dims(hidden_size, heads, kv_heads, head_dim)?;
    // Every llama-family model rotates q and k (RoPE); rotate_half needs an even D.
    if !head_dim.is_multiple_of(2) {
        return Err(ConfigError::OddHeadDim {
            head_dim,
            origin: if head_dim_explicit {
                "as given".to_string()
            } else {
                format!("hidden_size / num_attention_heads = {hidden_size} / {heads}")
            },
        });
    }

    // max_position_embeddings defaults: llama 2048, mistral 4096·32, qwen2/qwen3 32768
    // (configuration_{llama,mistral,qwen2,qwen3}.py).
    let max_position_embeddings = match raw.max_position_embeddings {
        Some(n) => nonzero(n, "max_position_embeddings")?,
        None => match arch {
            Arch::Llama => 2048,
            Arch::Mistral => 4096 * 32,
            _ => 32768,
        },
    };
    // rms_norm_eps default 1e-6 in all four configuration files.
    let norm_eps = positive_finite(raw.rms_norm_eps.unwrap_or(1e-6), "rms_norm_eps")?;
    let (rope_theta, rope_scaling) = resolve_rope(&raw, max_position_embeddings)?;

    // tie_word_embeddings defaults to false for llama, mistral, qwen2 and qwen3 (each
    // configuration_*.py declares `tie_word_embeddings: bool = False`).
    let tie_word_embeddings = raw.tie_word_embeddings.unwrap_or(false);
    // Biases, from the modeling files: llama/qwen3 q,k,v,o use `bias=config.attention_bias`;
    // qwen2 q,k,v `bias=True`, o `bias=False`; mistral all `bias=False`; MLP bias only llama's
    // `mlp_bias` (modeling_{llama,qwen2,qwen3,mistral}.py).
    let attention_bias = match arch {
        Arch::Llama | Arch::Qwen3 => raw.attention_bias.unwrap_or(false),
        _ => false,
    };
    let qkv_bias = attention_bias || arch == Arch::Qwen2;
    let mlp_bias = arch == Arch::Llama && raw.mlp_bias.unwrap_or(false);
    // Sliding window: mistral uses the field directly (default 4096 when absent, null ⇒ none);
    // qwen2/qwen3 set it to None unless `use_sliding_window` (configuration_qwen2/3.py).
    let sliding_window = match arch {
        Arch::Mistral => match raw.sliding_window {
            None => Some(4096),
            Some(w) => w,
        },
        Arch::Qwen2 | Arch::Qwen3 if raw.use_sliding_window.unwrap_or(false) => {
            match raw.sliding_window {
                None => Some(4096),
                Some(w) => w,
            }
        }
        _ => None,
    };
    if sliding_window == Some(0) {
        return Err(ConfigError::Zero {
            field: "sliding_window",
        });
    }

    Ok(ModelConfig {
        arch,
        model_type: raw
            .model_type
            .unwrap_or_else(|| arch.model_type().to_string()),
        architectures,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        head_dim_explicit,
        q_dim,
        kv_dim,
        vocab_size,
        max_position_embeddings,
        norm_eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings,
        attention_bias,
        qkv_bias,
        o_bias: attention_bias,
        mlp_bias,
        qk_norm: arch == Arch::Qwen3,
        hidden_act: raw.hidden_act.unwrap_or_else(|| "silu".to_string()),
        torch_dtype: raw.dtype.or(raw.torch_dtype),
        sliding_window,
    })
}

/// θ and scaling from `rope_scaling` (4.x), `rope_parameters` (5.x) or top-level `rope_theta`.
///
/// Precedence follows `RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` in transformers
/// 5.24 `modeling_rope_utils.py`: `rope_scaling or rope_parameters`; θ from that dict, else the
/// top-level `rope_theta`, else `default_theta = 10_000.0`; `rope_type` from `rope_type`, else
/// `type`, else `"default"`; llama3's `original_max_position_embeddings` defaults to
/// `max_position_embeddings`.
fn resolve_rope(
    raw: &RawConfig,
    max_position_embeddings: usize,
) -> Result<(f64, Option<RopeScaling>), ConfigError> {
    for (name, v) in [
        ("rope_scaling", &raw.rope_scaling),
        ("rope_parameters", &raw.rope_parameters),
    ] {
        if let Some(v) = v {
            if !(v.is_object() || v.is_null()) {
                return Err(ConfigError::InvalidField {
                    field: name.to_string(),
                    message: format!(
                        "expected an object or null, found {}",
                        crate::header::json_kind(v)
                    ),
                });
            }
        }
    }
    let (field, source) = match (&raw.rope_scaling, &raw.rope_parameters) {
        (Some(Value::Object(m)), _) if !m.is_empty() => ("rope_scaling", Some(m)),
        (_, Some(Value::Object(m))) => ("rope_parameters", Some(m)),
        _ => ("rope_parameters", None),
    };
    let rope: RawRope = match source {
        Some(m) => {
            let nested: Vec<&str> = m
                .iter()
                .filter(|(_, v)| v.is_object())
                .map(|(k, _)| k.as_str())
                .collect();
            if !nested.is_empty() {
                return Err(ConfigError::NestedRopeParameters {
                    keys: nested.join(", "),
                });
            }
            deserialize_named(m, &format!("{field}."))?
        }
        None => RawRope::default(),
    };
    let theta = rope.rope_theta.or(raw.rope_theta).unwrap_or(10_000.0);
    let theta_field = if rope.rope_theta.is_some() {
        format!("{field}.rope_theta")
    } else {
        "rope_theta".to_string()
    };
    let theta = positive_finite(theta, &theta_field)?;
    let rope_type = rope
        .rope_type
        .clone()
        .or_else(|| rope.type_.clone())
        .unwrap_or_else(|| "default".to_string());
    let scaling = match rope_type.as_str() {
        "default" => None,
        "llama3" => {
            let need = |v: Option<f64>, name: &'static str| -> Result<f64, ConfigError> {
                let full = format!("{field}.{name}");
                match v {
                    Some(x) => positive_finite(x, &full),
                    None => Err(ConfigError::InvalidField {
                        field: full,
                        message: "required for rope_type \"llama3\" but missing".to_string(),
                    }),
                }
            };
            let original = match rope.original_max_position_embeddings {
                Some(0) => {
                    return Err(ConfigError::InvalidField {
                        field: format!("{field}.original_max_position_embeddings"),
                        message: "must be at least 1".to_string(),
                    })
                }
                Some(n) => n,
                None => max_position_embeddings,
            };
            Some(RopeScaling::Llama3 {
                factor: need(rope.factor, "factor")?,
                low_freq_factor: need(rope.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(rope.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: original,
            })
        }
        other => Some(RopeScaling::Unsupported(other.to_string())),
    };
    Ok((theta, scaling))
}

fn resolve_gpt2(raw: RawConfig, architectures: Vec<String>) -> Result<ModelConfig, ConfigError> {
    // GPT2Config.attribute_map maps hidden_size→n_embd, num_attention_heads→n_head,
    // num_hidden_layers→n_layer, max_position_embeddings→n_positions; accept either spelling,
    // the GPT-2 name first (configuration_gpt2.py).
    let (hidden_size, hidden_field) = match (raw.n_embd, raw.hidden_size) {
        (Some(n), _) => (nonzero(n, "n_embd")?, "n_embd"),
        (None, Some(n)) => (nonzero(n, "hidden_size")?, "hidden_size"),
        (None, None) => return Err(ConfigError::MissingField { field: "n_embd" }),
    };
    let heads = match (raw.n_head, raw.num_attention_heads) {
        (Some(n), _) => nonzero(n, "n_head")?,
        (None, Some(n)) => nonzero(n, "num_attention_heads")?,
        (None, None) => return Err(ConfigError::MissingField { field: "n_head" }),
    };
    let num_hidden_layers = match (raw.n_layer, raw.num_hidden_layers) {
        (Some(n), _) => check_layers(n, "n_layer")?,
        (None, Some(n)) => check_layers(n, "num_hidden_layers")?,
        (None, None) => return Err(ConfigError::MissingField { field: "n_layer" }),
    };
    let vocab_size = required(raw.vocab_size, "vocab_size")?;
    // n_positions default 1024 (configuration_gpt2.py).
    let max_position_embeddings = match (raw.n_positions, raw.max_position_embeddings) {
        (Some(n), _) => nonzero(n, "n_positions")?,
        (None, Some(n)) => nonzero(n, "max_position_embeddings")?,
        (None, None) => 1024,
    };
    // GPT2Attention requires embed_dim divisible by num_heads (modeling_gpt2.py).
    if hidden_size % heads != 0 {
        return Err(ConfigError::HiddenNotDivisibleByHeads {
            hidden_field,
            hidden: hidden_size,
            heads_field: "n_head",
            heads,
        });
    }
    let head_dim = hidden_size / heads;
    let (q_dim, kv_dim) = derived_dims(hidden_size, heads, heads, head_dim)?;
    // n_inner None ⇒ 4·n_embd (GPT2Block: `inner_dim = config.n_inner if not None else 4 * hidden_size`).
    let intermediate_size = match raw.n_inner {
        Some(n) => nonzero(n, "n_inner")?,
        None => hidden_size.checked_mul(4).ok_or(ConfigError::Overflow {
            what: "4 × n_embd (n_inner)",
        })?,
    };
    // layer_norm_epsilon default 1e-5; activation_function default "gelu_new";
    // tie_word_embeddings default true (configuration_gpt2.py 5.24: `tie_word_embeddings: bool =
    // True`; 4.x inherits PretrainedConfig's True).
    let norm_eps = positive_finite(raw.layer_norm_epsilon.unwrap_or(1e-5), "layer_norm_epsilon")?;
    Ok(ModelConfig {
        arch: Arch::Gpt2,
        model_type: raw.model_type.unwrap_or_else(|| "gpt2".to_string()),
        architectures,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        head_dim_explicit: false,
        q_dim,
        kv_dim,
        vocab_size,
        max_position_embeddings,
        norm_eps,
        rope_theta: 0.0,
        rope_scaling: None,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
        attention_bias: true,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        qk_norm: false,
        hidden_act: raw
            .activation_function
            .unwrap_or_else(|| "gelu_new".to_string()),
        torch_dtype: raw.dtype.or(raw.torch_dtype),
        sliding_window: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn known(text: &str) -> ModelConfig {
        match parse_config(text).unwrap() {
            ConfigOutcome::Known(c) => c,
            other => panic!("expected a known arch, got {other:?}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        match parse_config(text) {
            Err(e) => e,
            Ok(o) => panic!("expected an error, got {o:?}"),
        }
    }

    /// transformers 5.x llama config with llama3 rope_parameters (as written by 5.24).
    const LLAMA_5X: &str = r#"{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 128000, "dtype": "bfloat16", "eos_token_id": 128001, "head_dim": 64,
      "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
      "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
      "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_theta": 500000.0, "rope_type": "llama3"},
      "tie_word_embeddings": true, "transformers_version": "5.24.0", "use_cache": true,
      "vocab_size": 128256
    }"#;

    #[test]
    fn llama_5x_rope_parameters_llama3() {
        let c = known(LLAMA_5X);
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.model_type, "llama");
        assert_eq!(c.architectures, vec!["LlamaForCausalLM".to_string()]);
        assert_eq!(c.hidden_size, 2048);
        assert_eq!(c.intermediate_size, 8192);
        assert_eq!(c.num_hidden_layers, 16);
        assert_eq!(c.num_attention_heads, 32);
        assert_eq!(c.num_key_value_heads, 8);
        assert_eq!(c.head_dim, 64);
        assert!(c.head_dim_explicit);
        assert_eq!(c.q_dim, 2048);
        assert_eq!(c.kv_dim, 512);
        assert_eq!(c.vocab_size, 128256);
        assert_eq!(c.max_position_embeddings, 131072);
        assert_eq!(c.norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            })
        );
        assert!(c.tie_word_embeddings);
        assert!(!c.attention_bias && !c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm);
        assert_eq!(c.hidden_act, "silu");
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.sliding_window, None);
        assert!(c.uses_rope());
    }

    #[test]
    fn llama_4x_rope_theta_and_rope_scaling() {
        // Llama-3.1-8B as written by transformers 4.4x: top-level rope_theta, `rope_scaling`
        // without original_max_position_embeddings falls back to max_position_embeddings.
        let c = known(
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
              "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "rope_type": "llama3"},
              "tie_word_embeddings": false, "torch_dtype": "bfloat16"}"#,
        );
        assert_eq!(c.head_dim, 128);
        assert!(!c.head_dim_explicit);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 131072,
            })
        );
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn rope_scaling_old_type_key_and_defaults() {
        // 4.x `"type": "linear"` is kept as Unsupported; θ defaults to 10000 when nothing
        // gives it; a null rope_scaling means none.
        let base = r#""model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512"#;
        let c = known(&format!(
            r#"{{{base}, "rope_scaling": {{"type": "linear", "factor": 2.0}}}}"#
        ));
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Unsupported("linear".into()))
        );
        assert_eq!(c.rope_scaling.as_ref().map(|r| r.name()), Some("linear"));
        assert_eq!(c.rope_theta, 10000.0);
        let c = known(&format!(
            r#"{{{base}, "rope_scaling": null, "rope_theta": 20000.0}}"#
        ));
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.rope_theta, 20000.0);
        // rope_scaling takes precedence over rope_parameters, as in convert_rope_params_to_dict.
        let c = known(&format!(
            r#"{{{base}, "rope_parameters": {{"rope_type": "default", "rope_theta": 1.0e6}},
                "rope_scaling": {{"rope_type": "yarn", "factor": 4.0, "rope_theta": 3.0e5}}}}"#
        ));
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Unsupported("yarn".into()))
        );
        assert_eq!(c.rope_theta, 3.0e5);
        // Defaults for an otherwise bare llama config.
        let c = known(&format!("{{{base}}}"));
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.max_position_embeddings, 2048);
        assert_eq!(c.norm_eps, 1e-6);
        assert_eq!(c.hidden_act, "silu");
        assert_eq!(c.torch_dtype, None);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn llama_attention_and_mlp_bias() {
        let c = known(
            r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
              "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512,
              "attention_bias": true, "mlp_bias": true}"#,
        );
        assert!(c.attention_bias && c.qkv_bias && c.o_bias && c.mlp_bias);
    }

    #[test]
    fn qwen2_biases_and_sliding_window() {
        let c = known(
            r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
              "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "max_position_embeddings": 32768, "max_window_layers": 21, "rms_norm_eps": 1e-06,
              "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": false,
              "tie_word_embeddings": true, "torch_dtype": "bfloat16", "hidden_act": "silu"}"#,
        );
        assert_eq!(c.arch, Arch::Qwen2);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.q_dim, 896);
        assert_eq!(c.kv_dim, 128);
        assert_eq!(c.rope_theta, 1.0e6);
        assert!(c.qkv_bias);
        assert!(!c.o_bias && !c.attention_bias && !c.mlp_bias && !c.qk_norm);
        assert_eq!(c.sliding_window, None);
        assert!(c.tie_word_embeddings);
        let c = known(
            r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 176,
              "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512,
              "use_sliding_window": true, "sliding_window": 128}"#,
        );
        assert_eq!(c.sliding_window, Some(128));
        assert_eq!(c.max_position_embeddings, 32768);
    }

    #[test]
    fn mistral_sliding_window() {
        let base = r#""model_type": "mistral", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
            "vocab_size": 512, "attention_bias": true"#;
        let c = known(&format!(r#"{{{base}, "sliding_window": 4096}}"#));
        assert_eq!(c.arch, Arch::Mistral);
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.kv_dim, 16);
        // MistralAttention has no bias option: attention_bias in the file is ignored.
        assert!(!c.qkv_bias && !c.o_bias);
        assert_eq!(c.max_position_embeddings, 131072);
        let c = known(&format!(r#"{{{base}, "sliding_window": null}}"#));
        assert_eq!(c.sliding_window, None);
    }

    #[test]
    fn qwen3_explicit_head_dim() {
        // Qwen3-0.6B: head_dim 128 with hidden 1024 and 16 heads (nH·D = 2048 ≠ H).
        let c = known(
            r#"{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
              "attention_bias": false, "head_dim": 128, "hidden_size": 1024,
              "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
              "num_key_value_heads": 8, "vocab_size": 151936, "max_position_embeddings": 40960,
              "rms_norm_eps": 1e-06, "rope_theta": 1000000, "tie_word_embeddings": true,
              "torch_dtype": "bfloat16", "sliding_window": null, "use_sliding_window": false}"#,
        );
        assert_eq!(c.arch, Arch::Qwen3);
        assert_eq!(c.head_dim, 128);
        assert!(c.head_dim_explicit);
        assert_eq!(c.q_dim, 2048);
        assert_eq!(c.kv_dim, 1024);
        assert!(c.qk_norm);
        assert!(!c.qkv_bias && !c.o_bias);
        assert_eq!(c.rope_theta, 1.0e6);
    }

    #[test]
    fn qwen3_head_dim_null_or_absent() {
        let base = r#""model_type": "qwen3", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512"#;
        // null ⇒ derived H / nH.
        let c = known(&format!(r#"{{{base}, "head_dim": null}}"#));
        assert_eq!(c.head_dim, 16);
        assert!(!c.head_dim_explicit);
        assert_eq!(c.q_dim, 64);
        // absent ⇒ Qwen3Config's declared default 128.
        let c = known(&format!("{{{base}}}"));
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.q_dim, 512);
        assert_eq!(c.kv_dim, 256);
    }

    #[test]
    fn gpt2_hub_minimal() {
        // openai-community/gpt2's config.json (abridged to the fields that matter), n_inner null.
        let c = known(
            r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
              "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
              "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
              "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_inner": null, "n_layer": 12,
              "n_positions": 1024, "vocab_size": 50257}"#,
        );
        assert_eq!(c.arch, Arch::Gpt2);
        assert_eq!(c.hidden_size, 768);
        assert_eq!(c.intermediate_size, 3072);
        assert_eq!(c.num_hidden_layers, 12);
        assert_eq!(c.num_attention_heads, 12);
        assert_eq!(c.num_key_value_heads, 12);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.max_position_embeddings, 1024);
        assert_eq!(c.norm_eps, 1e-5);
        assert_eq!(c.hidden_act, "gelu_new");
        assert!(c.tie_word_embeddings);
        assert!(!c.uses_rope());
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.torch_dtype, None);
        assert_eq!(c.arch.norm_kind(), NormKind::LayerNorm);
        // Bare minimum: defaults for n_positions, eps, activation; explicit n_inner.
        let c = known(
            r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2,
              "vocab_size": 512, "n_inner": 100, "tie_word_embeddings": false}"#,
        );
        assert_eq!(c.intermediate_size, 100);
        assert_eq!(c.max_position_embeddings, 1024);
        assert_eq!(c.hidden_act, "gelu_new");
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn dtype_preferred_over_torch_dtype() {
        let base = r#""model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512"#;
        let c = known(&format!(
            r#"{{{base}, "dtype": "float32", "torch_dtype": "bfloat16"}}"#
        ));
        assert_eq!(c.torch_dtype.as_deref(), Some("float32"));
        let c = known(&format!(r#"{{{base}, "torch_dtype": "float16"}}"#));
        assert_eq!(c.torch_dtype.as_deref(), Some("float16"));
    }

    #[test]
    fn arch_from_architectures_when_model_type_absent() {
        let c = known(
            r#"{"architectures": ["MistralForCausalLM"], "hidden_size": 64,
              "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 512}"#,
        );
        assert_eq!(c.arch, Arch::Mistral);
        assert_eq!(c.model_type, "mistral");
    }

    #[test]
    fn unknown_arch() {
        let o = parse_config(
            r#"{"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
              "hidden_size": 4096}"#,
        )
        .unwrap();
        assert_eq!(
            o,
            ConfigOutcome::UnknownArch {
                model_type: Some("mixtral".into()),
                architectures: vec!["MixtralForCausalLM".into()],
            }
        );
        assert_eq!(
            parse_config("{}").unwrap(),
            ConfigOutcome::UnknownArch {
                model_type: None,
                architectures: vec![],
            }
        );
    }

    const SMALL: &str = r#""model_type": "llama", "intermediate_size": 176,
        "num_hidden_layers": 2, "vocab_size": 512"#;

    #[test]
    fn error_invalid_json_and_not_object() {
        assert!(matches!(err("{ not json"), ConfigError::InvalidJson(_)));
        let e = err("[1, 2]");
        assert!(matches!(e, ConfigError::NotAnObject { found: "an array" }));
        assert_eq!(
            e.to_string(),
            "expected a JSON object at the top level, found an array"
        );
    }

    #[test]
    fn error_wrong_type_names_field() {
        let e = err(&format!(
            r#"{{{SMALL}, "hidden_size": "64", "num_attention_heads": 4}}"#
        ));
        match &e {
            ConfigError::InvalidField { field, .. } => assert_eq!(field, "hidden_size"),
            other => panic!("{other:?}"),
        }
        assert!(e
            .to_string()
            .starts_with("field `hidden_size` has an invalid value"));
        let e = err(&format!(
            r#"{{{SMALL}, "hidden_size": -64, "num_attention_heads": 4}}"#
        ));
        assert!(matches!(e, ConfigError::InvalidField { ref field, .. } if field == "hidden_size"));
    }

    #[test]
    fn error_missing_field() {
        let e = err(&format!(r#"{{{SMALL}, "num_attention_heads": 4}}"#));
        assert!(matches!(
            e,
            ConfigError::MissingField {
                field: "hidden_size"
            }
        ));
        assert_eq!(e.to_string(), "required field `hidden_size` is missing");
        let e = err(r#"{"model_type": "gpt2", "n_head": 4, "n_layer": 2, "vocab_size": 5}"#);
        assert!(matches!(e, ConfigError::MissingField { field: "n_embd" }));
    }

    #[test]
    fn error_zero_and_too_large() {
        let e = err(&format!(
            r#"{{{SMALL}, "hidden_size": 64, "num_attention_heads": 0}}"#
        ));
        assert!(matches!(
            e,
            ConfigError::Zero {
                field: "num_attention_heads"
            }
        ));
        assert_eq!(
            e.to_string(),
            "field `num_attention_heads` is 0; it must be at least 1"
        );
        let e = err(
            r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
              "num_hidden_layers": 10001, "num_attention_heads": 4, "vocab_size": 512}"#,
        );
        assert!(matches!(
            e,
            ConfigError::TooLarge {
                field: "num_hidden_layers",
                value: 10001,
                max: MAX_LAYERS
            }
        ));
    }

    #[test]
    fn error_inconsistent_heads() {
        let e = err(&format!(
            r#"{{{SMALL}, "hidden_size": 64, "num_attention_heads": 5}}"#
        ));
        assert!(matches!(
            e,
            ConfigError::HiddenNotDivisibleByHeads {
                hidden: 64,
                heads: 5,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "`hidden_size` (64) is not divisible by `num_attention_heads` (5) and no `head_dim` \
             is given"
        );
        // With an explicit head_dim the division is not needed.
        let ok = known(&format!(
            r#"{{{SMALL}, "hidden_size": 64, "num_attention_heads": 5, "head_dim": 16}}"#
        ));
        assert_eq!(ok.q_dim, 80);
        let e = err(&format!(
            r#"{{{SMALL}, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3}}"#
        ));
        assert!(matches!(
            e,
            ConfigError::HeadsNotDivisibleByKvHeads {
                heads: 4,
                kv_heads: 3
            }
        ));
        let e = err(
            r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 5, "n_layer": 2, "vocab_size": 5}"#,
        );
        assert!(matches!(
            e,
            ConfigError::HiddenNotDivisibleByHeads {
                hidden_field: "n_embd",
                heads_field: "n_head",
                ..
            }
        ));
    }

    /// rotate_half splits each head at D/2: an odd D is refused for every RoPE architecture,
    /// whether given or derived, while GPT-2 (learned positions) may have one.
    #[test]
    fn error_odd_head_dim_for_rope_models_only() {
        for model_type in ["llama", "mistral", "qwen2", "qwen3"] {
            let e = err(&format!(
                r#"{{"model_type": "{model_type}", "intermediate_size": 176,
                    "num_hidden_layers": 2, "vocab_size": 512, "hidden_size": 64,
                    "num_attention_heads": 4, "head_dim": 5}}"#
            ));
            assert!(
                matches!(e, ConfigError::OddHeadDim { head_dim: 5, .. }),
                "{model_type}: {e}"
            );
            assert_eq!(
                e.to_string(),
                "`head_dim` is 5 (as given): rotary position embeddings rotate each head by \
                 halves, so it must be even (transformers' rotate_half cannot run it either)"
            );
        }
        let e = err(&format!(
            r#"{{{SMALL}, "hidden_size": 15, "num_attention_heads": 3}}"#
        ));
        assert!(
            e.to_string()
                .contains("(hidden_size / num_attention_heads = 15 / 3)"),
            "{e}"
        );
        // GPT-2 has no RoPE: n_embd 15 over 3 heads (D = 5) is fine.
        let c = known(
            r#"{"model_type": "gpt2", "n_embd": 15, "n_head": 3, "n_layer": 2, "vocab_size": 5}"#,
        );
        assert_eq!(c.head_dim, 5);
    }

    #[test]
    fn error_overflow() {
        let e = err(&format!(
            r#"{{{SMALL}, "hidden_size": 64, "num_attention_heads": 4,
                "head_dim": {}}}"#,
            usize::MAX / 2
        ));
        assert!(matches!(
            e,
            ConfigError::Overflow {
                what: "num_attention_heads × head_dim"
            }
        ));
    }

    #[test]
    fn error_rope() {
        let base = r#""model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512"#;
        let e = err(&format!(
            r#"{{{base}, "rope_parameters": {{"full_attention": {{"rope_type": "default"}},
                "sliding_attention": {{"rope_type": "default"}}}}}}"#
        ));
        match &e {
            ConfigError::NestedRopeParameters { keys } => {
                assert_eq!(keys, "full_attention, sliding_attention")
            }
            other => panic!("{other:?}"),
        }
        let e = err(&format!(
            r#"{{{base}, "rope_parameters": {{"rope_type": "llama3", "factor": 8.0,
                "high_freq_factor": 4.0}}}}"#
        ));
        assert!(
            matches!(e, ConfigError::InvalidField { ref field, .. } if field == "rope_parameters.low_freq_factor"),
            "{e:?}"
        );
        let e = err(&format!(
            r#"{{{base}, "rope_parameters": {{"rope_theta": "big"}}}}"#
        ));
        assert!(
            matches!(e, ConfigError::InvalidField { ref field, .. } if field == "rope_parameters.rope_theta"),
            "{e:?}"
        );
        let e = err(&format!(r#"{{{base}, "rope_theta": -1.0}}"#));
        assert!(
            matches!(e, ConfigError::InvalidField { ref field, .. } if field == "rope_theta"),
            "{e:?}"
        );
        let e = err(&format!(r#"{{{base}, "rope_scaling": 3}}"#));
        assert!(
            matches!(e, ConfigError::InvalidField { ref field, .. } if field == "rope_scaling"),
            "{e:?}"
        );
    }
}
