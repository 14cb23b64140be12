//! Unit tests of config resolution: hand-written configs (old and new spellings) and the
//! fixtures' own `config.json` files, per architecture.
#![allow(clippy::unwrap_used)]

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
    // 4.x `"type": "dynamic"` is kept as Unsupported, `"type": "linear"` is read; θ defaults
    // to 10000 when nothing gives it; a null rope_scaling means none.
    let base = r#""model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512"#;
    let c = known(&format!(
        r#"{{{base}, "rope_scaling": {{"type": "dynamic", "factor": 2.0}}}}"#
    ));
    assert_eq!(
        c.rope_scaling,
        Some(RopeScaling::Unsupported("dynamic".into()))
    );
    assert_eq!(c.rope_scaling.as_ref().map(|r| r.name()), Some("dynamic"));
    let c = known(&format!(
        r#"{{{base}, "rope_scaling": {{"type": "linear", "factor": 2.0}}}}"#
    ));
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
    assert_eq!(c.rope_scaling.as_ref().map(|r| r.name()), Some("linear"));
    let e = err(&format!(
        r#"{{{base}, "rope_parameters": {{"rope_type": "linear"}}}}"#
    ));
    assert!(
        matches!(e, ConfigError::InvalidField { ref field, .. } if field == "rope_parameters.factor"),
        "{e:?}"
    );
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
        r#"{"model_type": "falcon", "architectures": ["FalconForCausalLM"],
          "hidden_size": 4096}"#,
    )
    .unwrap();
    assert_eq!(
        o,
        ConfigOutcome::UnknownArch {
            model_type: Some("falcon".into()),
            architectures: vec!["FalconForCausalLM".into()],
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
    let e =
        err(r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 5, "n_layer": 2, "vocab_size": 5}"#);
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
        ConfigError::NestedRopeParameters { keys, .. } => {
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

// ---------------------------------------------------------------- the zoo (issue 10)

/// The `config.json` of fixture `dir`, as transformers 5.24 `save_pretrained` wrote it.
fn fixture(dir: &str) -> ModelConfig {
    let path = format!(
        "{}/../tests/fixtures/{dir}/config.json",
        env!("CARGO_MANIFEST_DIR")
    );
    known(&std::fs::read_to_string(&path).unwrap())
}

use AttentionKind::{Full, Sliding};

#[test]
fn gemma_fixture_and_hub_config() {
    let c = fixture("gemma");
    assert_eq!(c.arch, Arch::Gemma);
    assert_eq!(
        (c.hidden_size, c.head_dim, c.q_dim, c.kv_dim),
        (32, 16, 64, 16)
    );
    assert!(c.head_dim_explicit);
    assert_eq!(c.num_key_value_heads, 1);
    assert!(c.tie_word_embeddings && c.norm_unit_offset && c.causal);
    assert_eq!(c.embed_scale, Some(32f64.sqrt()));
    assert_eq!(c.hidden_act, "gelu_pytorch_tanh");
    assert_eq!(c.layer_types, [Full, Full]);
    assert_eq!((c.rope_theta, c.rotary_dim()), (10000.0, 16));
    assert_eq!(c.norm_placement, NormPlacement::Pre);
    assert_eq!(c.arch.norm_kind(), NormKind::RmsNorm);
    assert_eq!(c.pad_token_id, Some(0));
    assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.qk_norm);
    assert_eq!(c.attention_scale(), 0.25);
    // google/gemma-2b as written by transformers 4.38: the legacy `"hidden_act": "gelu"` means
    // the tanh approximation (GemmaConfig.__post_init__); top-level rope_theta.
    let c = known(
        r#"{"architectures": ["GemmaForCausalLM"], "bos_token_id": 2, "eos_token_id": 1,
          "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048, "intermediate_size": 16384,
          "max_position_embeddings": 8192, "model_type": "gemma", "num_attention_heads": 8,
          "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0,
          "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 10000.0,
          "torch_dtype": "bfloat16", "vocab_size": 256000}"#,
    );
    assert_eq!(c.hidden_act, "gelu_pytorch_tanh");
    assert_eq!((c.q_dim, c.kv_dim), (2048, 256));
    assert!(c.tie_word_embeddings);
    // GemmaConfig defaults: head_dim 256 and 16 KV heads when absent.
    let c = known(
        r#"{"model_type": "gemma", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 1, "num_attention_heads": 16, "vocab_size": 10}"#,
    );
    assert_eq!((c.head_dim, c.num_key_value_heads), (256, 16));
    assert!(!c.head_dim_explicit);
    // 5.24 reads `hidden_act` for gemma and ignores `hidden_activation`.
    let c = known(
        r#"{"model_type": "gemma", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
          "num_key_value_heads": 1,
          "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu"}"#,
    );
    assert_eq!(c.hidden_act, "gelu_pytorch_tanh");
}

#[test]
fn gemma2_fixture_and_hub_config() {
    let c = fixture("gemma2");
    assert_eq!(c.arch, Arch::Gemma2);
    assert_eq!(c.layer_types, [Sliding, Full, Sliding]);
    assert_eq!(c.sliding_window, Some(64));
    assert_eq!(c.attn_logit_softcapping, Some(2.0));
    assert_eq!(c.final_logit_softcapping, Some(3.0));
    assert_eq!(c.query_pre_attn_scalar, Some(24.0));
    assert_eq!(c.attention_scale(), 24f64.powf(-0.5));
    assert_ne!(c.query_pre_attn_scalar, Some(c.head_dim as f64));
    assert_eq!(c.norm_placement, NormPlacement::Sandwich);
    assert_eq!((c.head_dim, c.q_dim), (16, 64));
    assert!(c.norm_unit_offset && c.tie_word_embeddings && !c.qk_norm);
    assert_eq!(c.hidden_act, "gelu_pytorch_tanh");
    // google/gemma-2-2b as written by 4.42 (no layer_types: the alternating default, starting
    // with a sliding layer), and the class defaults for the soft-caps.
    let c = known(
        r#"{"architectures": ["Gemma2ForCausalLM"], "attn_logit_softcapping": 50.0,
          "cache_implementation": "hybrid", "final_logit_softcapping": 30.0, "head_dim": 256,
          "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
          "hidden_size": 2304, "intermediate_size": 9216, "max_position_embeddings": 8192,
          "model_type": "gemma2", "num_attention_heads": 8, "num_hidden_layers": 26,
          "num_key_value_heads": 4, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
          "rope_theta": 10000.0, "sliding_window": 4096, "vocab_size": 256000}"#,
    );
    assert_eq!(c.layer_types.len(), 26);
    assert!(c
        .layer_types
        .iter()
        .enumerate()
        .all(|(i, k)| *k == if i % 2 == 0 { Sliding } else { Full }));
    assert_eq!((c.q_dim, c.attention_scale()), (2048, 1.0 / 16.0));
    let base = r#""model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16, "vocab_size": 10"#;
    let c = known(&format!("{{{base}}}"));
    assert_eq!(c.attn_logit_softcapping, Some(50.0));
    assert_eq!(c.final_logit_softcapping, Some(30.0));
    assert_eq!(c.query_pre_attn_scalar, Some(256.0));
    assert_eq!(c.sliding_window, Some(4096));
    let c = known(&format!(
        r#"{{{base}, "attn_logit_softcapping": null, "final_logit_softcapping": null}}"#
    ));
    assert_eq!(
        (c.attn_logit_softcapping, c.final_logit_softcapping),
        (None, None)
    );
    // A sliding layer without a window cannot run (transformers refuses it too).
    let e = err(&format!(r#"{{{base}, "sliding_window": null}}"#));
    assert!(
        e.to_string().starts_with(
            "field `sliding_window` has an invalid value: layer 0 is a sliding_attention layer"
        ),
        "{e}"
    );
    // Gemma 2's RoPE is one flat dict: a nested one is refused by name.
    let e = err(&format!(
        r#"{{{base}, "rope_parameters": {{"full_attention": {{"rope_theta": 1.0}}}}}}"#
    ));
    assert_eq!(
        e.to_string(),
        "`rope_parameters` is nested per attention type (full_attention); gemma2 reads only the \
         flat form (`{\"rope_type\": ..., \"rope_theta\": ...}`)"
    );
}

#[test]
fn gemma3_fixture_nested_rope_and_old_style() {
    let c = fixture("gemma3");
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(c.model_type, "gemma3_text");
    assert_eq!(c.layer_types, [Sliding, Sliding, Full]);
    assert_eq!((c.rope_theta, c.rope_scaling.clone()), (1.0e6, None));
    assert_eq!(
        c.sliding_rope,
        Some(LayerRope {
            theta: 1.0e4,
            scaling: None
        })
    );
    assert_eq!(c.layer_rope(0), (1.0e4, None));
    assert_eq!(c.layer_rope(2), (1.0e6, None));
    assert!(c.qk_norm && c.norm_unit_offset);
    assert_eq!(c.query_pre_attn_scalar, Some(32.0));
    assert_eq!(
        (c.attn_logit_softcapping, c.final_logit_softcapping),
        (None, None)
    );
    assert_eq!(c.norm_placement, NormPlacement::Sandwich);
    // The same model in the 4.x spelling (what generate_zoo.py loads into transformers 5 to
    // the same logits): rope_theta + rope_local_base_freq + sliding_window_pattern.
    let old = known(
        r#"{"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
          "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
          "vocab_size": 256, "max_position_embeddings": 256, "query_pre_attn_scalar": 32,
          "sliding_window": 64, "sliding_window_pattern": 3, "rope_theta": 1000000.0,
          "rope_local_base_freq": 10000.0, "hidden_activation": "gelu_pytorch_tanh",
          "attn_logit_softcapping": null, "final_logit_softcapping": null}"#,
    );
    assert_eq!(
        (&old.layer_types, old.rope_theta, &old.sliding_rope),
        (&c.layer_types, c.rope_theta, &c.sliding_rope)
    );
    // google/gemma-3-4b-it's text part as 4.50 wrote it: linear ×8 on the global layers only,
    // pattern 6 by default; and the class defaults (θ 1e6 global, 1e4 local).
    let c = known(
        r#"{"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
          "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
          "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
          "vocab_size": 262208, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
          "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 1024,
          "query_pre_attn_scalar": 256}"#,
    );
    assert_eq!(c.layer_types.iter().filter(|k| **k == Full).count(), 5);
    assert_eq!(c.layer_types[5], Full);
    assert_eq!(
        c.layer_rope(5),
        (1.0e6, Some(&RopeScaling::Linear { factor: 8.0 }))
    );
    assert_eq!(c.layer_rope(4), (1.0e4, None));
    let base = r#""model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 7, "num_attention_heads": 4, "head_dim": 16, "vocab_size": 10"#;
    let c = known(&format!("{{{base}}}"));
    assert_eq!((c.rope_theta, c.layer_rope(0).0), (1.0e6, 1.0e4));
    assert_eq!(c.layer_types[5], Full);
    assert_eq!(c.layer_types[6], Sliding);
    // Nested rope_parameters with one layer type given: the other gets its default.
    let c = known(&format!(
        r#"{{{base}, "rope_parameters": {{"sliding_attention": {{"rope_type": "default",
            "rope_theta": 20000.0}}}}}}"#
    ));
    assert_eq!((c.rope_theta, c.layer_rope(0).0), (1.0e6, 2.0e4));
    // A flat rope_parameters would be ignored by transformers 5.24: refused by name.
    let e = err(&format!(
        r#"{{{base}, "rope_parameters": {{"rope_type": "default", "rope_theta": 5e5}}}}"#
    ));
    assert!(
        matches!(e, ConfigError::InvalidField { ref field, ref message } if field == "rope_parameters" && message.contains("(rope_type, rope_theta)")),
        "{e}"
    );
    // use_bidirectional_attention: not causal, and the window becomes w // 2 + 1.
    let c = known(&format!(
        r#"{{{base}, "use_bidirectional_attention": true, "sliding_window": 512}}"#
    ));
    assert!(!c.causal);
    assert_eq!(c.sliding_window, Some(257));
    // The multimodal Gemma 3 (model_type gemma3, text_config nested) is another layout.
    assert!(matches!(
        parse_config(r#"{"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": {}}"#).unwrap(),
        ConfigOutcome::UnknownArch { .. }
    ));
}

#[test]
fn phi3_fixture_and_rope_scaling_kept_for_refusal() {
    let c = fixture("phi3");
    assert_eq!(c.arch, Arch::Phi3);
    assert_eq!((c.q_dim, c.kv_dim, c.num_key_value_heads), (32, 16, 1));
    assert_eq!(c.sliding_window, Some(64));
    assert_eq!(c.layer_types, [Sliding, Sliding]);
    assert_eq!((c.partial_rotary_factor, c.rotary_dim()), (1.0, 16));
    assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias && !c.tie_word_embeddings);
    // Phi-3-mini-128k as written by 4.4x: `rope_scaling` type `su` (renamed `longrope` by
    // 5.24) is kept by name for the forward to refuse; sliding_window 2047 on every layer.
    let c = known(
        r#"{"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072,
          "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 131072,
          "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
          "rope_scaling": {"long_factor": [1.0, 1.1], "short_factor": [1.0, 1.0], "type": "su"},
          "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": false}"#,
    );
    assert_eq!(c.rope_scaling, Some(RopeScaling::Unsupported("su".into())));
    assert_eq!(c.layer_types.len(), 32);
    assert!(c.layer_types.iter().all(|k| *k == Sliding));
    // Phi-4-mini: a top-level partial_rotary_factor (0.75 of 128 = 96 rotary dims).
    let c = known(
        r#"{"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
          "num_hidden_layers": 1, "num_attention_heads": 24, "num_key_value_heads": 8,
          "vocab_size": 200064, "partial_rotary_factor": 0.75, "sliding_window": null}"#,
    );
    assert_eq!((c.head_dim, c.rotary_dim()), (128, 96));
    assert_eq!(c.layer_types, [Full]);
}

#[test]
fn gpt_neox_fixtures_and_pythia_config() {
    let c = fixture("gpt-neox");
    assert_eq!(c.arch, Arch::GptNeox);
    assert_eq!(
        (c.head_dim, c.partial_rotary_factor, c.rotary_dim()),
        (16, 0.25, 4)
    );
    assert!(c.parallel_residual);
    assert!(c.qkv_bias && c.o_bias && c.mlp_bias && c.attention_bias);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.norm_eps, 1e-5);
    assert_eq!(c.arch.norm_kind(), NormKind::LayerNorm);
    assert_eq!(c.hidden_act, "gelu");
    let s = fixture("gpt-neox-seq");
    assert_eq!((s.partial_rotary_factor, s.rotary_dim()), (0.5, 8));
    assert!(!s.parallel_residual);
    // EleutherAI/pythia-70m: the 4.x spelling `rotary_pct` + `rotary_emb_base`.
    let c = known(
        r#"{"architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
          "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
          "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
          "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
          "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": false,
          "torch_dtype": "float16", "use_cache": true, "use_parallel_residual": true,
          "vocab_size": 50304}"#,
    );
    assert_eq!(
        (c.head_dim, c.rotary_dim(), c.rope_theta),
        (64, 16, 10000.0)
    );
    // GPTNeoXConfig ignores a top-level rope_theta / partial_rotary_factor (5.24 reads
    // rotary_emb_base and rotary_pct, defaults 10000 and 0.25), and any head_dim / nKV.
    let c = known(
        r#"{"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 256,
          "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
          "rope_theta": 500000.0, "partial_rotary_factor": 1.0, "head_dim": 8,
          "num_key_value_heads": 1}"#,
    );
    assert_eq!((c.rope_theta, c.partial_rotary_factor), (10000.0, 0.25));
    assert_eq!((c.head_dim, c.num_key_value_heads), (16, 4));
    assert!(c.parallel_residual);
    // A rotary part that rotate_half cannot split.
    let e = err(
        r#"{"model_type": "gpt_neox", "hidden_size": 40, "intermediate_size": 256,
          "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
          "rotary_pct": 0.5}"#,
    );
    assert_eq!(
        e.to_string(),
        "the rotary width is 5 (`head_dim` 10 × partial rotary factor 0.5): rotate_half needs \
         an even, non-zero width"
    );
    let e = err(
        r#"{"model_type": "gpt_neox", "hidden_size": 40, "intermediate_size": 256,
          "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
          "rotary_pct": 1.5}"#,
    );
    assert!(
        matches!(e, ConfigError::InvalidField { ref field, .. } if field == "rotary_pct"),
        "{e}"
    );
}

#[test]
fn mixtral_fixture_and_hub_config() {
    let c = fixture("mixtral");
    assert_eq!(c.arch, Arch::Mixtral);
    let m = c.moe.clone().unwrap();
    assert_eq!(
        (m.num_experts, m.top_k, m.expert_intermediate_size),
        (4, 2, 32)
    );
    assert_eq!(m.shared_expert_intermediate_size, None);
    assert!(m.norm_topk_prob);
    assert_eq!(m.sparse_layers, [true, true]);
    assert!(c.is_moe_layer(1) && !c.is_moe_layer(2));
    assert_eq!(c.layer_types, [Full, Full]);
    assert_eq!(c.rope_theta, 1.0e6);
    // mistralai/Mixtral-8x7B-v0.1 (4.36): top-level rope_theta, sliding_window null.
    let c = known(
        r#"{"architectures": ["MixtralForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
          "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
          "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
          "num_key_value_heads": 8, "num_local_experts": 8, "rms_norm_eps": 1e-05,
          "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false,
          "vocab_size": 32000}"#,
    );
    assert_eq!(c.moe.as_ref().unwrap().num_experts, 8);
    assert_eq!(c.sliding_window, None);
    // MixtralConfig defaults: θ 1e6 (default_theta), 8 KV heads, 8 experts, top-2.
    let c = known(
        r#"{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 64,
          "num_hidden_layers": 1, "num_attention_heads": 16, "vocab_size": 10,
          "sliding_window": 16}"#,
    );
    assert_eq!((c.rope_theta, c.num_key_value_heads), (1.0e6, 8));
    assert_eq!(
        (
            c.moe.as_ref().unwrap().num_experts,
            c.moe.as_ref().unwrap().top_k
        ),
        (8, 2)
    );
    assert_eq!(c.layer_types, [Sliding]);
    let e = err(
        r#"{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 64,
          "num_hidden_layers": 1, "num_attention_heads": 8, "vocab_size": 10,
          "num_local_experts": 4, "num_experts_per_tok": 5}"#,
    );
    assert_eq!(
        e.to_string(),
        "field `num_experts_per_tok` has an invalid value: 5 is not between 1 and the 4 experts"
    );
    let e = err(
        r#"{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 64,
          "num_hidden_layers": 1, "num_attention_heads": 8, "vocab_size": 10,
          "num_local_experts": 100000}"#,
    );
    assert!(
        matches!(
            e,
            ConfigError::TooLarge {
                field: "num_experts",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn qwen2_moe_fixture_hub_config_and_its_sliding_rule() {
    let c = fixture("qwen2-moe");
    assert_eq!(c.arch, Arch::Qwen2Moe);
    let m = c.moe.clone().unwrap();
    assert_eq!(
        (m.num_experts, m.top_k, m.expert_intermediate_size),
        (4, 2, 24)
    );
    assert_eq!(m.shared_expert_intermediate_size, Some(48));
    assert!(!m.norm_topk_prob);
    assert_eq!(m.sparse_layers, [true, true]);
    assert!(c.qkv_bias && !c.o_bias);
    // 5.24 writes `sliding_window: 0` when use_sliding_window is false.
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.layer_types, [Full, Full]);
    // Qwen/Qwen1.5-MoE-A2.7B (4.40): no qkv_bias field (biases unconditional in 4.x).
    let c = known(
        r#"{"architectures": ["Qwen2MoeForCausalLM"], "decoder_sparse_step": 1,
          "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 5632,
          "max_position_embeddings": 8192, "max_window_layers": 21, "model_type": "qwen2_moe",
          "moe_intermediate_size": 1408, "norm_topk_prob": false, "num_attention_heads": 16,
          "num_experts": 60, "num_experts_per_tok": 4, "num_hidden_layers": 24,
          "num_key_value_heads": 16, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
          "shared_expert_intermediate_size": 5632, "sliding_window": 32768,
          "tie_word_embeddings": false, "use_sliding_window": false, "vocab_size": 151936}"#,
    );
    assert!(c.qkv_bias);
    assert_eq!(c.moe.as_ref().unwrap().num_experts, 60);
    assert!(c.layer_types.iter().all(|k| *k == Full));
    // Qwen2MoeConfig's own rule: even layers below max_window_layers slide.
    let base = r#""model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 10"#;
    let c = known(&format!(
        r#"{{{base}, "use_sliding_window": true, "max_window_layers": 3, "sliding_window": 64}}"#
    ));
    assert_eq!(c.layer_types, [Sliding, Full, Sliding, Full, Full, Full]);
    // mlp_only_layers and decoder_sparse_step make dense layers; no experts: all dense.
    let c = known(&format!(
        r#"{{{base}, "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 2,
            "mlp_only_layers": [5]}}"#
    ));
    assert_eq!(
        c.moe.unwrap().sparse_layers,
        [false, true, false, true, false, false]
    );
    let c = known(&format!(r#"{{{base}, "num_experts": 0}}"#));
    assert_eq!(c.moe, None);
    assert!(!c.is_moe_layer(0));
    let c = known(&format!(r#"{{{base}, "qkv_bias": false}}"#));
    assert!(!c.qkv_bias);
    let e = err(&format!(r#"{{{base}, "decoder_sparse_step": 0}}"#));
    assert!(
        matches!(
            e,
            ConfigError::Zero {
                field: "decoder_sparse_step"
            }
        ),
        "{e}"
    );
}

#[test]
fn qwen3_moe_fixture_and_hub_config() {
    let c = fixture("qwen3-moe");
    assert_eq!(c.arch, Arch::Qwen3Moe);
    assert_eq!((c.head_dim, c.q_dim, c.kv_dim), (16, 64, 32));
    let m = c.moe.clone().unwrap();
    assert_eq!(
        (m.num_experts, m.top_k, m.expert_intermediate_size),
        (4, 2, 16)
    );
    assert!(m.norm_topk_prob);
    assert_eq!(m.sparse_layers, [true, false]);
    assert!(c.qk_norm && !c.qkv_bias);
    // Qwen/Qwen3-30B-A3B (4.51): `num_experts`, explicit head_dim 128 (nH·D = 4096 ≠ 2048).
    let c = known(
        r#"{"architectures": ["Qwen3MoeForCausalLM"], "decoder_sparse_step": 1,
          "head_dim": 128, "hidden_size": 2048, "intermediate_size": 6144,
          "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
          "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": true,
          "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
          "num_hidden_layers": 48, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false,
          "use_sliding_window": false, "vocab_size": 151936}"#,
    );
    assert_eq!((c.q_dim, c.moe.as_ref().unwrap().num_experts), (4096, 128));
    // No head_dim field in Qwen3MoeConfig: absent means H / nH (not Qwen3's 128);
    // num_local_experts (what 5.24 writes) wins over num_experts.
    let c = known(
        r#"{"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10,
          "num_experts": 6, "num_local_experts": 8, "use_sliding_window": true,
          "sliding_window": 32}"#,
    );
    assert_eq!((c.head_dim, c.num_key_value_heads), (16, 4));
    assert_eq!(c.moe.as_ref().unwrap().num_experts, 8);
    // Qwen3MoE slides every layer when use_sliding_window (no max_window_layers).
    assert_eq!(c.layer_types, [Sliding, Sliding]);
}

#[test]
fn bert_fixture_hub_config_and_refusals() {
    let c = fixture("bert");
    assert_eq!(c.arch, Arch::Bert);
    assert_eq!(c.type_vocab_size, Some(2));
    assert_eq!((c.norm_eps, c.pad_token_id), (1e-12, Some(0)));
    assert!(!c.causal && !c.uses_rope());
    assert_eq!((c.rotary_dim(), c.rope_theta), (0, 0.0));
    assert_eq!(c.norm_placement, NormPlacement::Post);
    assert_eq!(c.arch.norm_kind(), NormKind::LayerNorm);
    assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
    assert_eq!((c.num_key_value_heads, c.head_dim), (4, 8));
    assert_eq!(c.layer_types, [Full, Full]);
    assert_eq!(c.max_position_embeddings, 256);
    // google-bert/bert-base-uncased.
    let c = known(
        r#"{"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
          "gradient_checkpointing": false, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
          "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
          "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
          "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
          "position_embedding_type": "absolute", "transformers_version": "4.6.0.dev0",
          "type_vocab_size": 2, "use_cache": true, "vocab_size": 30522}"#,
    );
    assert_eq!((c.head_dim, c.hidden_act.as_str()), (64, "gelu"));
    let base = r#""model_type": "bert", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10"#;
    let c = known(&format!("{{{base}}}"));
    assert_eq!(
        (c.type_vocab_size, c.max_position_embeddings, c.norm_eps),
        (Some(2), 512, 1e-12)
    );
    let e = err(&format!(
        r#"{{{base}, "position_embedding_type": "relative_key"}}"#
    ));
    assert_eq!(
        e.to_string(),
        "`position_embedding_type` is \"relative_key\": only \"absolute\" position embeddings \
         are supported (transformers 4.x's relative_key / relative_key_query add \
         distance_embedding tensors; transformers 5.24's BertModel silently ignores this field)"
    );
    let e = err(&format!(r#"{{{base}, "add_cross_attention": true}}"#));
    assert!(
        matches!(e, ConfigError::Unsupported { ref field, .. } if field == "add_cross_attention")
    );
    let c = known(&format!(r#"{{{base}, "is_decoder": true}}"#));
    assert!(c.causal);
}

#[test]
fn qwen_sliding_window_over_some_layers() {
    let c = fixture("qwen2-sw");
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!(c.sliding_window, Some(64));
    assert_eq!(c.layer_types, [Full, Sliding, Sliding]);
    let c = fixture("qwen3-sw");
    assert_eq!(c.layer_types, [Full, Full, Sliding]);
    assert!(c.tie_word_embeddings && c.qk_norm);
    // 4.x files have no layer_types: layers from max_window_layers on slide.
    let base = r#""model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "vocab_size": 10"#;
    let c = known(&format!(
        r#"{{{base}, "use_sliding_window": true, "sliding_window": 32, "max_window_layers": 1}}"#
    ));
    assert_eq!(c.layer_types, [Full, Sliding, Sliding, Sliding]);
    // The default max_window_layers (28) leaves a 4-layer model all full.
    let c = known(&format!(
        r#"{{{base}, "use_sliding_window": true, "sliding_window": 32}}"#
    ));
    assert_eq!(c.layer_types, [Full; 4]);
    assert_eq!(c.sliding_window, Some(32));
    // An explicit layer_types wins; its length and names are checked.
    let c = known(&format!(
        r#"{{{base}, "use_sliding_window": true, "sliding_window": 32, "max_window_layers": 0,
            "layer_types": ["sliding_attention", "full_attention", "full_attention",
                            "full_attention"]}}"#
    ));
    assert_eq!(c.layer_types, [Sliding, Full, Full, Full]);
    let e = err(&format!(r#"{{{base}, "layer_types": ["full_attention"]}}"#));
    assert_eq!(
        e.to_string(),
        "field `layer_types` has an invalid value: 1 entries for 4 layers (num_hidden_layers)"
    );
    let e = err(&format!(
        r#"{{{base}, "layer_types": ["full_attention", "linear_attention", "full_attention",
            "full_attention"]}}"#
    ));
    assert_eq!(
        e.to_string(),
        "`layer_types[1]` is \"linear_attention\": qwen2 layers are `full_attention` or \
         `sliding_attention`"
    );
    // Sliding layers listed while use_sliding_window is off: no window to slide.
    let e = err(&format!(
        r#"{{{base}, "layer_types": ["sliding_attention", "full_attention", "full_attention",
            "full_attention"]}}"#
    ));
    assert!(matches!(e, ConfigError::InvalidField { ref field, .. } if field == "sliding_window"));
    // Other llama-family layer kinds.
    let c = known(
        r#"{"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10}"#,
    );
    assert_eq!(c.layer_types, [Sliding, Sliding]);
    let c = known(
        r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10,
          "sliding_window": 16, "layer_types": ["sliding_attention", "sliding_attention"]}"#,
    );
    assert_eq!(c.layer_types, [Full, Full]);
}

#[test]
fn every_fixture_config_resolves() {
    let dir = format!("{}/../tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("config.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            match parse_config(&text) {
                Ok(ConfigOutcome::Known(c)) => {
                    assert_eq!(c.layer_types.len(), c.num_hidden_layers, "{path:?}");
                    n += 1;
                }
                other => panic!("{path:?}: {other:?}"),
            }
        }
    }
    assert!(n >= 30, "{n}");
}
