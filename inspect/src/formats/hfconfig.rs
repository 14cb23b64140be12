//! `config.json` reconstructed from what a non-HF file says about its model: GGUF metadata
//! (`llama.*`, `qwen2.*`, `qwen3.*`, `gemma.*` keys) and Meta's `params.json`.
//!
//! The result is the JSON text transformers would have written, built only from keys the file
//! has; what the file cannot tell is listed in [`Reconstructed::unknown`] (and left to
//! transformers' defaults or to `--config FILE`), never guessed. The key names follow
//! llama.cpp's `gguf-py/gguf/constants.py` (`Keys.LLM`, `Keys.Attention`, `Keys.Rope`) and the
//! mapping transformers uses to load a GGUF (`integrations/ggml.py`, `GGUF_CONFIG_MAPPING`).

use serde_json::{json, Map, Value};

use super::meta::MetaParams;
use super::{MetaValue, RawFile};

/// A reconstructed `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconstructed {
    /// The JSON text.
    pub json: String,
    /// What the source could not say, in words (one item per setting).
    pub unknown: Vec<String>,
}

/// The HF class and `model_type` for a GGUF `general.architecture`.
fn hf_arch(arch: &str) -> Option<(&'static str, &'static str)> {
    Some(match arch {
        "llama" => ("llama", "LlamaForCausalLM"),
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "qwen3" => ("qwen3", "Qwen3ForCausalLM"),
        "gemma" => ("gemma", "GemmaForCausalLM"),
        _ => return None,
    })
}

/// (GGUF key under `ARCH.`, HF field) for the integer settings.
const GGUF_INTS: &[(&str, &str)] = &[
    ("block_count", "num_hidden_layers"),
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("context_length", "max_position_embeddings"),
    ("attention.key_length", "head_dim"),
];

/// Builds `config.json` from a GGUF file's metadata and tensor list. `None` when the file has
/// no `general.architecture`.
pub fn from_gguf(raw: &RawFile) -> Option<Reconstructed> {
    let arch = raw.meta("general.architecture")?.as_str()?.to_owned();
    let mut cfg = Map::new();
    let mut unknown = Vec::new();
    let Some((model_type, class)) = hf_arch(&arch) else {
        // An architecture the catalogue lacks: say so through model_type.
        cfg.insert("model_type".into(), json!(arch));
        return Some(Reconstructed {
            json: serde_json::to_string_pretty(&Value::Object(cfg)).unwrap_or_default(),
            unknown: vec![format!(
                "general.architecture `{arch}` has no HF equivalent orient knows (llama, qwen2, qwen3, gemma)"
            )],
        });
    };
    cfg.insert("architectures".into(), json!([class]));
    cfg.insert("model_type".into(), json!(model_type));
    let key = |k: &str| format!("{arch}.{k}");
    for (k, field) in GGUF_INTS {
        match raw.meta(&key(k)).and_then(MetaValue::as_u64) {
            Some(v) => {
                cfg.insert((*field).into(), json!(v));
            }
            None if *k == "attention.head_count_kv" => {
                // llama.cpp's own default: no GQA.
                if let Some(h) = cfg.get("num_attention_heads").cloned() {
                    cfg.insert((*field).into(), h);
                }
            }
            None if *k == "attention.key_length" => {}
            None => unknown.push(format!("{field} (no `{}` key)", key(k))),
        }
    }
    match raw
        .meta(&key("attention.layer_norm_rms_epsilon"))
        .and_then(MetaValue::as_f64)
    {
        Some(eps) => {
            cfg.insert("rms_norm_eps".into(), json!(f32_exact(eps)));
        }
        None => unknown.push(format!(
            "rms_norm_eps (no `{}` key)",
            key("attention.layer_norm_rms_epsilon")
        )),
    }
    let theta = raw.meta(&key("rope.freq_base")).and_then(MetaValue::as_f64);
    match theta {
        Some(t) => {
            cfg.insert("rope_theta".into(), json!(f32_exact(t)));
        }
        None => unknown.push(format!(
            "rope_theta (no `{}` key; llama.cpp would use 10000)",
            key("rope.freq_base")
        )),
    }
    let vocab = raw
        .meta(&key("vocab_size"))
        .and_then(MetaValue::as_u64)
        .map(|v| v as usize)
        .or_else(|| match raw.meta("tokenizer.ggml.tokens") {
            Some(MetaValue::Array(a)) => Some(a.len()),
            _ => None,
        })
        .or_else(|| {
            raw.tensor("token_embd.weight")
                .and_then(|t| t.shape.get(1).copied())
        });
    match vocab {
        Some(v) => {
            cfg.insert("vocab_size".into(), json!(v));
        }
        None => unknown.push("vocab_size (no vocab_size key, tokenizer or token_embd)".into()),
    }
    cfg.insert(
        "tie_word_embeddings".into(),
        json!(raw.tensor("output.weight").is_none()),
    );
    for (k, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
    ] {
        if let Some(v) = raw.meta(k).and_then(MetaValue::as_u64) {
            cfg.insert(field.into(), json!(v));
        }
    }
    match raw
        .meta(&key("rope.scaling.type"))
        .and_then(MetaValue::as_str)
    {
        None | Some("none") => {}
        Some(kind @ ("linear" | "yarn")) => {
            let mut s = Map::new();
            s.insert("rope_type".into(), json!(kind));
            match raw
                .meta(&key("rope.scaling.factor"))
                .and_then(MetaValue::as_f64)
            {
                Some(f) => {
                    s.insert("factor".into(), json!(f32_exact(f)));
                }
                None => unknown.push(format!(
                    "rope_scaling.factor (no `{}` key)",
                    key("rope.scaling.factor")
                )),
            }
            if let Some(n) = raw
                .meta(&key("rope.scaling.original_context_length"))
                .and_then(MetaValue::as_u64)
            {
                s.insert("original_max_position_embeddings".into(), json!(n));
            }
            cfg.insert("rope_scaling".into(), Value::Object(s));
        }
        Some(other) => unknown.push(format!(
            "rope_scaling (type `{other}` is not reconstructed)"
        )),
    }
    if raw.tensor("rope_freqs.weight").is_some() {
        unknown.push(
            "llama3 rope_scaling (stored as the rope_freqs tensor of per-frequency factors, from which low/high_freq_factor cannot be recovered)".into(),
        );
    }
    match model_type {
        "llama" => unknown.push(
            "whether the model was a Mistral (convert_hf_to_gguf writes it as arch llama) and its sliding_window".into(),
        ),
        "qwen2" | "qwen3" => {
            cfg.insert("use_sliding_window".into(), json!(false));
            unknown.push("sliding_window settings (no GGUF key; full attention assumed by llama.cpp)".into());
        }
        _ => {}
    }
    Some(Reconstructed {
        json: serde_json::to_string_pretty(&Value::Object(cfg)).unwrap_or_default(),
        unknown,
    })
}

/// `config.json` from Meta's `params.json`, as `convert_llama_weights_to_hf.py` writes it
/// without `--llama_version`. `vocab_from_weights` is the embedding's row count, used when
/// `params.json` says `-1`.
pub fn from_meta(params: &MetaParams, vocab_from_weights: Option<usize>) -> Reconstructed {
    let mut unknown = Vec::new();
    let mut cfg = Map::new();
    cfg.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    cfg.insert("model_type".into(), json!("llama"));
    cfg.insert("hidden_size".into(), json!(params.dim));
    cfg.insert(
        "intermediate_size".into(),
        json!(params.intermediate_size()),
    );
    cfg.insert("num_hidden_layers".into(), json!(params.n_layers));
    cfg.insert("num_attention_heads".into(), json!(params.n_heads));
    cfg.insert("num_key_value_heads".into(), json!(params.kv_heads()));
    cfg.insert("head_dim".into(), json!(params.head_dim()));
    cfg.insert("rms_norm_eps".into(), json!(params.norm_eps));
    cfg.insert(
        "rope_theta".into(),
        json!(params.rope_theta.unwrap_or(10000.0)),
    );
    cfg.insert("tie_word_embeddings".into(), json!(false));
    let vocab = params
        .vocab_size
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v > 0)
        .or(vocab_from_weights);
    match vocab {
        Some(v) => {
            cfg.insert("vocab_size".into(), json!(v));
        }
        None => unknown.push("vocab_size (params.json says -1 and there is no embedding)".into()),
    }
    match params.rope_scaling(None) {
        Ok(Some(s)) => {
            cfg.insert(
                "rope_scaling".into(),
                json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            );
        }
        Ok(None) => {}
        Err(e) => unknown.push(format!("rope_scaling ({e})")),
    }
    unknown.push(
        "max_position_embeddings (depends on the Llama version, which params.json does not name)"
            .into(),
    );
    Reconstructed {
        json: serde_json::to_string_pretty(&Value::Object(cfg)).unwrap_or_default(),
        unknown,
    }
}

/// An f32 metadata value widened to f64 prints as `9.999999747378752e-6`; print the shortest
/// decimal that reads back as the same f32 (`1e-5`), as the file's writer meant it.
fn f32_exact(v: f64) -> f64 {
    let f = v as f32;
    if f64::from(f) == v {
        format!("{f}").parse().unwrap_or(v)
    } else {
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gguf_meta(pairs: &[(&str, MetaValue)]) -> RawFile {
        RawFile {
            tensors: Vec::new(),
            metadata: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn llama_keys() {
        let raw = gguf_meta(&[
            ("general.architecture", MetaValue::Str("llama".into())),
            ("llama.block_count", MetaValue::U32(2)),
            ("llama.embedding_length", MetaValue::U32(64)),
            ("llama.feed_forward_length", MetaValue::U32(176)),
            ("llama.attention.head_count", MetaValue::U32(4)),
            ("llama.context_length", MetaValue::U32(256)),
            (
                "llama.attention.layer_norm_rms_epsilon",
                MetaValue::F32(1e-5),
            ),
            ("llama.rope.freq_base", MetaValue::F32(10000.0)),
            ("llama.vocab_size", MetaValue::U32(512)),
        ]);
        let r = from_gguf(&raw).unwrap();
        let v: Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["num_key_value_heads"], json!(4));
        assert_eq!(v["rms_norm_eps"], json!(1e-5));
        assert_eq!(v["tie_word_embeddings"], json!(true));
        assert_eq!(v["architectures"], json!(["LlamaForCausalLM"]));
        assert!(r.unknown.iter().any(|u| u.contains("Mistral")));
        let missing = from_gguf(&gguf_meta(&[(
            "general.architecture",
            MetaValue::Str("qwen2".into()),
        )]))
        .unwrap();
        assert!(missing.unknown.iter().any(|u| u.starts_with("hidden_size")));
        assert!(from_gguf(&gguf_meta(&[])).is_none());
    }

    #[test]
    fn meta_params() {
        let p = MetaParams::parse(
            r#"{"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": -1,
                "multiple_of": 16, "norm_eps": 1e-5}"#,
        )
        .unwrap();
        let r = from_meta(&p, Some(512));
        let v: Value = serde_json::from_str(&r.json).unwrap();
        assert_eq!(v["intermediate_size"], json!(176));
        assert_eq!(v["vocab_size"], json!(512));
        assert_eq!(v["head_dim"], json!(16));
    }
}
