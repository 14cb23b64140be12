//! RoPE in all its spellings: top-level `rope_theta` (4.x), `rope_scaling` (4.x), flat
//! `rope_parameters` (5.x), `rope_parameters` nested per layer type (5.x Gemma 3), Gemma 3's
//! `rope_local_base_freq`, GPT-NeoX's `rotary_emb_base` / `rotary_pct`, and
//! `partial_rotary_factor` in the dict or at the top level.

use serde_json::{Map, Value};

use super::raw::{deserialize_named, fraction, positive_finite, RawConfig, RawRope};
use super::{Arch, ConfigError, LayerRope, RopeScaling};

/// The resolved RoPE of a config.
pub(super) struct Rope {
    /// Full-attention (or every) layer's base.
    pub theta: f64,
    /// Its rescaling.
    pub scaling: Option<RopeScaling>,
    /// Rotary fraction of each head.
    pub partial_rotary_factor: f64,
    /// Sliding layers' RoPE when it differs (Gemma 3).
    pub sliding: Option<LayerRope>,
}

/// `int(head_dim · factor)`, as `modeling_rope_utils.py` and the Phi-3 / GPT-NeoX attention
/// compute the rotary width (a Python float product, truncated).
pub(super) fn rotary_dim(head_dim: usize, factor: f64) -> usize {
    // The product of two finite positive numbers ≤ head_dim; `as` truncates like int().
    (head_dim as f64 * factor) as usize
}

/// The `rope_type` name of a flat dict (`rope_type`, else 4.x `type`, else `default`).
fn rope_type(rope: &RawRope) -> String {
    rope.rope_type
        .clone()
        .or_else(|| rope.type_.clone())
        .unwrap_or_else(|| "default".to_string())
}

/// The rescaling a flat dict declares; `field` is the dict's name for error messages.
fn scaling(
    rope: &RawRope,
    field: &str,
    max_position_embeddings: usize,
) -> Result<Option<RopeScaling>, ConfigError> {
    let need = |v: Option<f64>, name: &'static str, kind: &str| -> Result<f64, ConfigError> {
        let full = format!("{field}.{name}");
        match v {
            Some(x) => positive_finite(x, &full),
            None => Err(ConfigError::InvalidField {
                field: full,
                message: format!("required for rope_type \"{kind}\" but missing"),
            }),
        }
    };
    Ok(match rope_type(rope).as_str() {
        "default" => None,
        "llama3" => {
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
                factor: need(rope.factor, "factor", "llama3")?,
                low_freq_factor: need(rope.low_freq_factor, "low_freq_factor", "llama3")?,
                high_freq_factor: need(rope.high_freq_factor, "high_freq_factor", "llama3")?,
                original_max_position_embeddings: original,
            })
        }
        "linear" => Some(RopeScaling::Linear {
            factor: need(rope.factor, "factor", "linear")?,
        }),
        other => Some(RopeScaling::Unsupported(other.to_string())),
    })
}

/// Checks that `rope_scaling` / `rope_parameters` are objects or null.
fn check_kinds(raw: &RawConfig) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Keys of `m` whose values are objects (a dict nested per layer type).
fn nested_keys(m: &Map<String, Value>) -> Vec<&str> {
    m.iter()
        .filter(|(_, v)| v.is_object())
        .map(|(k, _)| k.as_str())
        .collect()
}

/// Resolves the RoPE of `arch`.
///
/// Precedence follows `RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` in transformers
/// 5.24 `modeling_rope_utils.py`: `rope_scaling or rope_parameters`; θ from that dict, else the
/// top-level `rope_theta`, else the class's `default_theta` (10,000; mixtral 1,000,000);
/// `rope_type` from `rope_type`, else `type`, else `"default"`; llama3's
/// `original_max_position_embeddings` defaults to `max_position_embeddings`. Per architecture:
/// - gpt_neox (`configuration_gpt_neox.py`): θ from the dict, else `rotary_emb_base`, else
///   10,000 (a top-level `rope_theta` is ignored); the rotary fraction from the dict, else
///   `rotary_pct`, else 0.25 (a top-level `partial_rotary_factor` is ignored).
/// - phi3 (`configuration_phi3.py`): the fraction from the dict, else the top-level
///   `partial_rotary_factor`, else 1.0. Other architectures' models rotate the whole head
///   whatever the config says (only `modeling_phi3.py` and `modeling_gpt_neox.py` split off
///   `q_pass`), so their factor is 1.0.
/// - gemma3_text: see [`gemma3`].
pub(super) fn resolve(
    arch: Arch,
    raw: &RawConfig,
    max_position_embeddings: usize,
) -> Result<Rope, ConfigError> {
    check_kinds(raw)?;
    if arch == Arch::Gemma3 {
        return gemma3(raw, max_position_embeddings);
    }
    let (field, source) = match (&raw.rope_scaling, &raw.rope_parameters) {
        (Some(Value::Object(m)), _) if !m.is_empty() => ("rope_scaling", Some(m)),
        (_, Some(Value::Object(m))) => ("rope_parameters", Some(m)),
        _ => ("rope_parameters", None),
    };
    let rope: RawRope = match source {
        Some(m) => {
            let nested = nested_keys(m);
            if !nested.is_empty() {
                return Err(ConfigError::NestedRopeParameters {
                    keys: nested.join(", "),
                    arch: arch.model_type(),
                });
            }
            deserialize_named(m, &format!("{field}."))?
        }
        None => RawRope::default(),
    };
    let dict_theta = rope.rope_theta.map(|t| (t, format!("{field}.rope_theta")));
    let (theta, theta_field) = match arch {
        Arch::GptNeox => dict_theta.unwrap_or_else(|| match raw.rotary_emb_base {
            Some(t) => (t, "rotary_emb_base".to_string()),
            None => (10_000.0, String::new()),
        }),
        _ => dict_theta.unwrap_or_else(|| match raw.rope_theta {
            Some(t) => (t, "rope_theta".to_string()),
            None if arch == Arch::Mixtral => (1_000_000.0, String::new()),
            None => (10_000.0, String::new()),
        }),
    };
    let theta = positive_finite(theta, &theta_field)?;
    let partial_rotary_factor = match arch {
        Arch::GptNeox => match (rope.partial_rotary_factor, raw.rotary_pct) {
            (Some(f), _) => fraction(f, &format!("{field}.partial_rotary_factor"))?,
            (None, Some(f)) => fraction(f, "rotary_pct")?,
            (None, None) => 0.25,
        },
        Arch::Phi3 => match (rope.partial_rotary_factor, raw.partial_rotary_factor) {
            (Some(f), _) => fraction(f, &format!("{field}.partial_rotary_factor"))?,
            (None, Some(f)) => fraction(f, "partial_rotary_factor")?,
            (None, None) => 1.0,
        },
        _ => 1.0,
    };
    Ok(Rope {
        theta,
        scaling: scaling(&rope, field, max_position_embeddings)?,
        partial_rotary_factor,
        sliding: None,
    })
}

/// Gemma 3's two RoPEs, as `Gemma3TextConfig.convert_rope_params_to_dict` (transformers 5.24
/// `configuration_gemma3.py`) builds them: `rope_parameters` nested per layer type
/// (`full_attention`, `sliding_attention`; either may be absent or null); a 4.x `rope_scaling`
/// (e.g. `{"rope_type": "linear", "factor": 8.0}`) updates the full-attention dict; the full θ
/// defaults to the top-level `rope_theta`, else 1,000,000; the sliding θ to
/// `rope_local_base_freq`, else 10,000. A *flat* `rope_parameters` is refused: transformers 5.24
/// keeps it beside the nested defaults and never reads it, so its θ would be silently lost.
fn gemma3(raw: &RawConfig, max_position_embeddings: usize) -> Result<Rope, ConfigError> {
    let empty = Map::new();
    let params = match &raw.rope_parameters {
        Some(Value::Object(m)) => m,
        _ => &empty,
    };
    let flat: Vec<&str> = params
        .iter()
        .filter(|(k, v)| !(v.is_object() || v.is_null() && is_layer_type(k)))
        .map(|(k, _)| k.as_str())
        .collect();
    if !flat.is_empty() {
        return Err(ConfigError::InvalidField {
            field: "rope_parameters".to_string(),
            message: format!(
                "gemma3_text takes `rope_parameters` nested per layer type \
                 (`{{\"full_attention\": {{...}}, \"sliding_attention\": {{...}}}}`); found flat \
                 keys ({}), which transformers 5.24 ignores",
                flat.join(", ")
            ),
        });
    }
    if let Some(k) = params
        .iter()
        .find(|(k, v)| v.is_object() && !is_layer_type(k))
        .map(|(k, _)| k)
    {
        return Err(ConfigError::InvalidField {
            field: format!("rope_parameters.{k}"),
            message: "gemma3_text layer types are `full_attention` and `sliding_attention`"
                .to_string(),
        });
    }
    let dict = |key: &str| -> (Map<String, Value>, String) {
        let field = format!("rope_parameters.{key}");
        match params.get(key) {
            Some(Value::Object(m)) => (m.clone(), field),
            _ => (Map::new(), field),
        }
    };
    let (mut full, mut full_field) = dict("full_attention");
    if let Some(Value::Object(s)) = &raw.rope_scaling {
        for (k, v) in s {
            full.insert(k.clone(), v.clone());
        }
        if !s.is_empty() {
            full_field = "rope_scaling".to_string();
        }
    }
    let (sliding, sliding_field) = dict("sliding_attention");
    let full_rope: RawRope = deserialize_named(&full, &format!("{full_field}."))?;
    let sliding_rope: RawRope = deserialize_named(&sliding, &format!("{sliding_field}."))?;
    let theta = match (full_rope.rope_theta, raw.rope_theta) {
        (Some(t), _) => positive_finite(t, &format!("{full_field}.rope_theta"))?,
        (None, Some(t)) => positive_finite(t, "rope_theta")?,
        (None, None) => 1_000_000.0,
    };
    let local = match (sliding_rope.rope_theta, raw.rope_local_base_freq) {
        (Some(t), _) => positive_finite(t, &format!("{sliding_field}.rope_theta"))?,
        (None, Some(t)) => positive_finite(t, "rope_local_base_freq")?,
        (None, None) => 10_000.0,
    };
    Ok(Rope {
        theta,
        scaling: scaling(&full_rope, &full_field, max_position_embeddings)?,
        partial_rotary_factor: 1.0,
        sliding: Some(LayerRope {
            theta: local,
            scaling: scaling(&sliding_rope, &sliding_field, max_position_embeddings)?,
        }),
    })
}

fn is_layer_type(k: &str) -> bool {
    k == "full_attention" || k == "sliding_attention"
}
