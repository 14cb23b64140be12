//! The file as written: HF's own field names, every field optional, and the small checked
//! conversions every resolver shares.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::ConfigError;

/// `config.json` with HF's own field names, every field optional: the file as written.
///
/// Unknown fields are ignored (configs carry dozens irrelevant to layout). `Option<Option<T>>`
/// distinguishes "absent" (outer `None`) from explicit `null` (`Some(None)`) where transformers
/// treats them differently.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    // llama family names (shared by every architecture but GPT-2)
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    pub head_dim: Option<Option<usize>>,
    pub vocab_size: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
    pub partial_rotary_factor: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub dtype: Option<String>,
    pub torch_dtype: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub pad_token_id: Option<Value>,
    // gemma, gemma2, gemma3
    pub hidden_activation: Option<String>,
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    pub sliding_window_pattern: Option<usize>,
    pub rope_local_base_freq: Option<f64>,
    pub use_bidirectional_attention: Option<bool>,
    // gpt_neox
    pub rotary_pct: Option<f64>,
    pub rotary_emb_base: Option<f64>,
    pub use_parallel_residual: Option<bool>,
    pub layer_norm_eps: Option<f64>,
    // mixtral, qwen2_moe, qwen3_moe
    pub num_local_experts: Option<usize>,
    pub num_experts: Option<usize>,
    pub num_experts_per_tok: Option<usize>,
    pub moe_intermediate_size: Option<usize>,
    pub shared_expert_intermediate_size: Option<usize>,
    pub norm_topk_prob: Option<bool>,
    pub decoder_sparse_step: Option<usize>,
    pub mlp_only_layers: Option<Vec<usize>>,
    pub qkv_bias: Option<bool>,
    // bert
    pub type_vocab_size: Option<usize>,
    pub position_embedding_type: Option<String>,
    pub is_decoder: Option<bool>,
    pub add_cross_attention: Option<bool>,
    // GPT-2 names
    pub n_embd: Option<usize>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_inner: Option<usize>,
    pub n_positions: Option<usize>,
    pub layer_norm_epsilon: Option<f64>,
    pub activation_function: Option<String>,
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
pub(super) struct RawRope {
    pub rope_type: Option<String>,
    /// 4.x spelling of `rope_type`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub partial_rotary_factor: Option<f64>,
}

/// Deserializes `T` (all-optional fields) from an object; on failure, finds the field at fault
/// by deserializing each member alone, so the error can name it.
pub(super) fn deserialize_named<T>(
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

pub(super) fn required(value: Option<usize>, field: &'static str) -> Result<usize, ConfigError> {
    let v = value.ok_or(ConfigError::MissingField { field })?;
    nonzero(v, field)
}

pub(super) fn nonzero(v: usize, field: &'static str) -> Result<usize, ConfigError> {
    if v == 0 {
        Err(ConfigError::Zero { field })
    } else {
        Ok(v)
    }
}

pub(super) fn positive_finite(v: f64, field: &str) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(ConfigError::InvalidField {
            field: field.to_string(),
            message: format!("{v} is not a positive finite number"),
        })
    }
}

/// A fraction in (0, 1] (`partial_rotary_factor`, `rotary_pct`).
pub(super) fn fraction(v: f64, field: &str) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(ConfigError::InvalidField {
            field: field.to_string(),
            message: format!("{v} is not in (0, 1]"),
        })
    }
}

/// Checked `a × b` for sizes.
pub(super) fn mul(a: usize, b: usize, what: &'static str) -> Result<usize, ConfigError> {
    a.checked_mul(b).ok_or(ConfigError::Overflow { what })
}
