//! Per-architecture resolution: the defaults of each configuration class, the per-layer
//! attention kinds, the mixture of experts, the biases. Every default names the file it was
//! checked against (transformers 5.24 `models/*/configuration_*.py` and `modeling_*.py`).

use serde_json::Value;

use super::raw::{mul, nonzero, positive_finite, required, RawConfig};
use super::rope;
use super::{
    Arch, AttentionKind, ConfigError, ModelConfig, MoeConfig, NormPlacement, MAX_EXPERTS,
    MAX_EXPERT_MLPS, MAX_LAYERS,
};

/// The defaults a configuration class declares for the fields every architecture but GPT-2
/// shares.
struct Defaults {
    /// `num_key_value_heads` when absent: `None` = nH.
    kv_heads: Option<usize>,
    /// `head_dim` when absent: `None` = H / nH.
    head_dim: Option<usize>,
    /// The model ignores `num_key_value_heads` and `head_dim` (GPT-NeoX's `head_size` and
    /// BERT's `attention_head_size` are always H / nH, with nH key/value heads).
    plain_heads: bool,
    max_position_embeddings: usize,
    /// `rms_norm_eps`, or `layer_norm_eps` for the LayerNorm models.
    norm_eps: f64,
    tie_word_embeddings: bool,
    hidden_act: &'static str,
}

/// From the configuration classes (5.24): `num_key_value_heads`, `head_dim`,
/// `max_position_embeddings`, the norm epsilon, `tie_word_embeddings` and the activation.
/// llama, mistral, qwen2 and qwen3 keep nKV = nH when the field is absent (orient's behaviour
/// before the zoo: their files always carry it; the dataclass defaults are 8 for mistral and 32
/// for qwen2/qwen3). The newer ones use the declared default (gemma 16, gemma2/gemma3 4,
/// mixtral 8, qwen2_moe 16, qwen3_moe 4; phi3 `None` = nH).
fn defaults(arch: Arch) -> Defaults {
    let d = |kv, head_dim, max_pos, eps, tie, act| Defaults {
        kv_heads: kv,
        head_dim,
        plain_heads: false,
        max_position_embeddings: max_pos,
        norm_eps: eps,
        tie_word_embeddings: tie,
        hidden_act: act,
    };
    match arch {
        Arch::Llama => d(None, None, 2048, 1e-6, false, "silu"),
        Arch::Mistral => d(None, None, 4096 * 32, 1e-6, false, "silu"),
        Arch::Qwen2 => d(None, None, 32768, 1e-6, false, "silu"),
        // Qwen3Config declares `head_dim: int = 128` (not derived).
        Arch::Qwen3 => d(None, Some(128), 32768, 1e-6, false, "silu"),
        Arch::Gemma => d(Some(16), Some(256), 8192, 1e-6, true, "gelu_pytorch_tanh"),
        Arch::Gemma2 => d(Some(4), Some(256), 8192, 1e-6, true, "gelu_pytorch_tanh"),
        Arch::Gemma3 => d(Some(4), Some(256), 131_072, 1e-6, true, "gelu_pytorch_tanh"),
        Arch::Phi3 => d(None, None, 4096, 1e-5, false, "silu"),
        Arch::Mixtral => d(Some(8), None, 4096 * 32, 1e-5, false, "silu"),
        // Qwen2MoeConfig has no head_dim field; modeling reads getattr(config, "head_dim", H/nH).
        Arch::Qwen2Moe => d(Some(16), None, 32768, 1e-6, false, "silu"),
        // Qwen3MoeConfig has no head_dim field either (unlike Qwen3Config's 128).
        Arch::Qwen3Moe => d(Some(4), None, 32768, 1e-6, false, "silu"),
        Arch::GptNeox => Defaults {
            plain_heads: true,
            ..d(None, None, 2048, 1e-5, false, "gelu")
        },
        Arch::Bert => Defaults {
            plain_heads: true,
            ..d(None, None, 512, 1e-12, true, "gelu")
        },
        // Resolved by `gpt2`; listed for completeness of the match.
        Arch::Gpt2 => d(None, None, 1024, 1e-5, true, "gelu_new"),
    }
}

/// Checked nH·D, nKV·D and 3·H, so no later shape computation can overflow.
fn derived_dims(
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<(usize, usize), ConfigError> {
    let q_dim = mul(heads, head_dim, "num_attention_heads × head_dim")?;
    let kv_dim = mul(kv_heads, head_dim, "num_key_value_heads × head_dim")?;
    mul(hidden, 3, "3 × hidden_size")?;
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

/// Every architecture but GPT-2: the llama family, Gemma 1/2/3, Phi-3, GPT-NeoX, the MoEs and
/// BERT share the field names `hidden_size`, `num_attention_heads`, … .
pub(super) fn decoder_or_encoder(
    arch: Arch,
    raw: RawConfig,
    architectures: Vec<String>,
) -> Result<ModelConfig, ConfigError> {
    let def = defaults(arch);
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
    let kv_heads = match (def.plain_heads, raw.num_key_value_heads) {
        (true, _) => heads,
        (false, Some(n)) => nonzero(n, "num_key_value_heads")?,
        (false, None) => def.kv_heads.unwrap_or(heads),
    };
    if heads % kv_heads != 0 {
        return Err(ConfigError::HeadsNotDivisibleByKvHeads { heads, kv_heads });
    }
    // head_dim: an explicit value wins; absent means the class default (qwen3 128, gemma 256);
    // `null` (or absent without a default) means H / nH as in LlamaConfig/MistralConfig
    // .__post_init__ and `getattr(config, "head_dim", None) or hidden_size // num_heads`.
    let explicit = if def.plain_heads { None } else { raw.head_dim };
    let (head_dim, head_dim_explicit) = match (explicit, def.head_dim) {
        (Some(Some(d)), _) => (nonzero(d, "head_dim")?, true),
        (None, Some(d)) => (d, false),
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

    let max_position_embeddings = match raw.max_position_embeddings {
        Some(n) => nonzero(n, "max_position_embeddings")?,
        None => def.max_position_embeddings,
    };
    let norm_eps = match arch {
        Arch::GptNeox | Arch::Bert => {
            positive_finite(raw.layer_norm_eps.unwrap_or(def.norm_eps), "layer_norm_eps")?
        }
        _ => positive_finite(raw.rms_norm_eps.unwrap_or(def.norm_eps), "rms_norm_eps")?,
    };

    // RoPE (none for BERT's learned positions).
    let uses_rope = arch != Arch::Bert;
    let rope = if uses_rope {
        Some(rope::resolve(arch, &raw, max_position_embeddings)?)
    } else {
        None
    };
    let partial_rotary_factor = rope.as_ref().map_or(1.0, |r| r.partial_rotary_factor);
    if uses_rope {
        check_rotary(
            head_dim,
            head_dim_explicit,
            partial_rotary_factor,
            hidden_size,
            heads,
        )?;
    }

    let tie_word_embeddings = raw.tie_word_embeddings.unwrap_or(def.tie_word_embeddings);
    let hidden_act = activation(arch, &raw, def.hidden_act);
    let biases = biases(arch, &raw);
    let causal = match arch {
        // BertModel builds a causal mask only for `is_decoder` (modeling_bert.py
        // `_create_attention_masks`).
        Arch::Bert => raw.is_decoder.unwrap_or(false),
        // GemmaAttention: `is_causal = not use_bidirectional_attention`.
        a if a.is_gemma() => !raw.use_bidirectional_attention.unwrap_or(false),
        _ => true,
    };
    let sliding_window = sliding_window(arch, &raw, causal)?;
    let layer_types = layer_types(arch, &raw, num_hidden_layers, sliding_window)?;
    let moe = moe(arch, &raw, num_hidden_layers, intermediate_size)?;
    let gemma = arch.is_gemma();
    let cap = |v: Option<Option<f64>>, default: Option<f64>, field: &str| match v {
        None => default.map(|c| positive_finite(c, field)).transpose(),
        Some(None) => Ok(None),
        Some(Some(c)) => positive_finite(c, field).map(Some),
    };
    // Gemma2Config: attn 50.0, final 30.0; Gemma3TextConfig: both None; Gemma 1 has none.
    let (attn_cap, final_cap) = match arch {
        Arch::Gemma2 => (Some(50.0), Some(30.0)),
        _ => (None, None),
    };
    let (attn_logit_softcapping, final_logit_softcapping) =
        if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
            (
                cap(
                    raw.attn_logit_softcapping,
                    attn_cap,
                    "attn_logit_softcapping",
                )?,
                cap(
                    raw.final_logit_softcapping,
                    final_cap,
                    "final_logit_softcapping",
                )?,
            )
        } else {
            (None, None)
        };
    // Gemma2Config / Gemma3TextConfig: `query_pre_attn_scalar: int = 256`.
    let query_pre_attn_scalar = if matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
        Some(positive_finite(
            raw.query_pre_attn_scalar.unwrap_or(256.0),
            "query_pre_attn_scalar",
        )?)
    } else {
        None
    };
    let type_vocab_size = if arch == Arch::Bert {
        bert_checks(&raw)?;
        // BertConfig: `type_vocab_size: int = 2`.
        Some(nonzero(
            raw.type_vocab_size.unwrap_or(2),
            "type_vocab_size",
        )?)
    } else {
        None
    };
    // `pad_token_id` defaults: BertConfig 0, GemmaConfig/Gemma2/Gemma3 0; others None.
    let pad_token_id = match &raw.pad_token_id {
        Some(Value::Number(n)) => n.as_u64().and_then(|v| usize::try_from(v).ok()),
        Some(_) => None,
        None if arch == Arch::Bert || gemma => Some(0),
        None => None,
    };
    let (rope_theta, rope_scaling, sliding_rope) = match rope {
        Some(r) => (r.theta, r.scaling, r.sliding),
        None => (0.0, None, None),
    };

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
        attention_bias: biases.attention,
        qkv_bias: biases.qkv,
        o_bias: biases.o,
        mlp_bias: biases.mlp,
        qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3),
        hidden_act,
        torch_dtype: raw.dtype.or(raw.torch_dtype),
        sliding_window,
        layer_types,
        causal,
        partial_rotary_factor,
        sliding_rope,
        attn_logit_softcapping,
        final_logit_softcapping,
        query_pre_attn_scalar,
        norm_unit_offset: gemma,
        // GemmaModel: `embed_scale=self.config.hidden_size**0.5`.
        embed_scale: gemma.then(|| (hidden_size as f64).sqrt()),
        norm_placement: match arch {
            Arch::Gemma2 | Arch::Gemma3 => NormPlacement::Sandwich,
            Arch::Bert => NormPlacement::Post,
            _ => NormPlacement::Pre,
        },
        // GPTNeoXConfig: `use_parallel_residual: bool = True`.
        parallel_residual: arch == Arch::GptNeox && raw.use_parallel_residual.unwrap_or(true),
        moe,
        type_vocab_size,
        pad_token_id,
    })
}

/// rotate_half splits the rotary part of each head at its middle: it must be even and
/// non-empty. With the whole head rotating, an odd D is reported as such (its origin named).
fn check_rotary(
    head_dim: usize,
    explicit: bool,
    factor: f64,
    hidden_size: usize,
    heads: usize,
) -> Result<(), ConfigError> {
    let rotary = rope::rotary_dim(head_dim, factor);
    if rotary == head_dim && !head_dim.is_multiple_of(2) {
        return Err(ConfigError::OddHeadDim {
            head_dim,
            origin: if explicit {
                "as given".to_string()
            } else {
                format!("hidden_size / num_attention_heads = {hidden_size} / {heads}")
            },
        });
    }
    if rotary == 0 || !rotary.is_multiple_of(2) {
        return Err(ConfigError::BadRotaryDim {
            rotary,
            head_dim,
            factor,
        });
    }
    Ok(())
}

/// The activation each modeling file applies: gemma2/gemma3 read `hidden_activation` (their
/// classes have no `hidden_act`); gemma reads `hidden_act`, turning the legacy `"gelu"` into
/// `"gelu_pytorch_tanh"` (`GemmaConfig.__post_init__`; a `hidden_activation` in a gemma file is
/// ignored by 5.24); the others read `hidden_act`.
fn activation(arch: Arch, raw: &RawConfig, default: &str) -> String {
    let act = match arch {
        Arch::Gemma2 | Arch::Gemma3 => raw.hidden_activation.clone(),
        _ => raw.hidden_act.clone(),
    }
    .unwrap_or_else(|| default.to_string());
    if arch == Arch::Gemma && act == "gelu" {
        "gelu_pytorch_tanh".to_string()
    } else {
        act
    }
}

struct Biases {
    attention: bool,
    qkv: bool,
    o: bool,
    mlp: bool,
}

/// From the modeling files: llama/qwen3/qwen3_moe/gemma* q,k,v,o use
/// `bias=config.attention_bias` (default false); gpt_neox `query_key_value` and `dense` use
/// `bias=config.attention_bias` (default **true**) and its MLP `nn.Linear` defaults (biased);
/// qwen2 q,k,v `bias=True`, o none; qwen2_moe q,k,v `bias=config.qkv_bias` (default true, a
/// 5.x field: 4.x files lack it and had unconditional biases), o none; mistral, mixtral and
/// phi3 none; BERT every `nn.Linear` biased; llama's MLP `bias=config.mlp_bias`.
fn biases(arch: Arch, raw: &RawConfig) -> Biases {
    let attention = match arch {
        Arch::Llama | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma | Arch::Gemma2 | Arch::Gemma3 => {
            raw.attention_bias.unwrap_or(false)
        }
        Arch::GptNeox => raw.attention_bias.unwrap_or(true),
        Arch::Bert | Arch::Gpt2 => true,
        _ => false,
    };
    let qkv = attention
        || arch == Arch::Qwen2
        || (arch == Arch::Qwen2Moe && raw.qkv_bias.unwrap_or(true));
    let mlp = match arch {
        Arch::Llama => raw.mlp_bias.unwrap_or(false),
        Arch::GptNeox | Arch::Bert | Arch::Gpt2 => true,
        _ => false,
    };
    Biases {
        attention,
        qkv,
        o: attention,
        mlp,
    }
}

/// The window as each configuration class resolves it: mistral's field (default 4096, `null` =
/// none); mixtral's and phi3's (default `None`); qwen2/qwen3/qwen2_moe/qwen3_moe's only with
/// `use_sliding_window` (default 4096; qwen2_moe writes `0` when disabled); gemma2/gemma3's
/// (default 4096; gemma3 with `use_bidirectional_attention` halves it, `w // 2 + 1`, in
/// `Gemma3TextConfig.__post_init__`).
fn sliding_window(arch: Arch, raw: &RawConfig, causal: bool) -> Result<Option<usize>, ConfigError> {
    let or_default = |d: Option<usize>| match raw.sliding_window {
        None => d,
        Some(w) => w,
    };
    let window = match arch {
        Arch::Mistral | Arch::Gemma2 | Arch::Gemma3 => or_default(Some(4096)),
        Arch::Mixtral | Arch::Phi3 => or_default(None),
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen2Moe | Arch::Qwen3Moe
            if raw.use_sliding_window.unwrap_or(false) =>
        {
            or_default(Some(4096))
        }
        _ => None,
    };
    if window == Some(0) {
        return Err(ConfigError::Zero {
            field: "sliding_window",
        });
    }
    Ok(match window {
        Some(w) if arch == Arch::Gemma3 && !causal => Some(w / 2 + 1),
        w => w,
    })
}

/// Which layers slide (see [`ModelConfig::layer_types`] for the rules and their files).
fn layer_types(
    arch: Arch,
    raw: &RawConfig,
    layers: usize,
    window: Option<usize>,
) -> Result<Vec<AttentionKind>, ConfigError> {
    use AttentionKind::{Full, Sliding};
    let has_field = matches!(
        arch,
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen2Moe | Arch::Gemma2 | Arch::Gemma3
    );
    let kinds: Vec<AttentionKind> = match (&raw.layer_types, has_field) {
        (Some(list), true) => {
            if list.len() != layers {
                return Err(ConfigError::InvalidField {
                    field: "layer_types".to_string(),
                    message: format!(
                        "{} entries for {layers} layers (num_hidden_layers)",
                        list.len()
                    ),
                });
            }
            list.iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "full_attention" => Ok(Full),
                    "sliding_attention" => Ok(Sliding),
                    other => Err(ConfigError::Unsupported {
                        field: format!("layer_types[{i}]"),
                        value: format!("\"{other}\""),
                        reason: format!(
                            "{} layers are `full_attention` or `sliding_attention`",
                            arch.model_type()
                        ),
                    }),
                })
                .collect::<Result<_, _>>()?
        }
        _ => {
            // Qwen2Config/Qwen3Config/Qwen2MoeConfig: `max_window_layers: int = 28`.
            let max_window = raw.max_window_layers.unwrap_or(28);
            let sliding_on = raw.use_sliding_window.unwrap_or(false);
            let pattern = match raw.sliding_window_pattern {
                // Gemma3TextConfig: `kwargs.get("sliding_window_pattern", 6)`.
                None => 6,
                Some(p) => nonzero(p, "sliding_window_pattern")?,
            };
            (0..layers)
                .map(|i| {
                    let slides = match arch {
                        Arch::Mistral | Arch::Mixtral | Arch::Phi3 | Arch::Qwen3Moe => {
                            window.is_some()
                        }
                        // Qwen2Config/Qwen3Config.__post_init__.
                        Arch::Qwen2 | Arch::Qwen3 => window.is_some() && i >= max_window,
                        // Qwen2MoeConfig.__post_init__: `bool((i + 1) % 2) and i <
                        // max_window_layers and use_sliding_window` (the opposite half of
                        // Qwen2's rule, and only even layers).
                        Arch::Qwen2Moe => sliding_on && i % 2 == 0 && i < max_window,
                        // Gemma2Config.__post_init__: `bool((i + 1) % 2)`.
                        Arch::Gemma2 => i % 2 == 0,
                        // Gemma3TextConfig.__post_init__: `bool((i + 1) % pattern)`.
                        Arch::Gemma3 => (i + 1) % pattern != 0,
                        _ => false,
                    };
                    if slides {
                        Sliding
                    } else {
                        Full
                    }
                })
                .collect()
        }
    };
    if window.is_none() {
        if let Some(i) = kinds.iter().position(|k| *k == Sliding) {
            return Err(ConfigError::InvalidField {
                field: "sliding_window".to_string(),
                message: format!(
                    "layer {i} is a sliding_attention layer but no window is set (transformers' \
                     create_sliding_window_causal_mask refuses this too)"
                ),
            });
        }
    }
    Ok(kinds)
}

/// The mixture of experts (5.24 `configuration_{mixtral,qwen2_moe,qwen3_moe}.py` and the
/// modeling files' `*SparseMoeBlock` / `*TopKRouter` / `*DecoderLayer`).
/// - mixtral: `num_local_experts` (default 8; `num_experts` is an alias), top-k
///   `num_experts_per_tok` (default 2), experts of `intermediate_size`, the top-k always
///   renormalised (`MixtralTopKRouter`), every layer sparse.
/// - qwen2_moe: `num_experts` (default 60), top-k 4, `moe_intermediate_size` 1408,
///   `shared_expert_intermediate_size` 5632, `norm_topk_prob` false.
/// - qwen3_moe: `num_experts` (default 128; 5.24 writes it as `num_local_experts`, which wins when
///   both are present), top-k 8, `moe_intermediate_size` 768, `norm_topk_prob` false, no shared
///   expert.
/// - Qwen: layer i is sparse when `i ∉ mlp_only_layers` (default []) and
///   `num_experts > 0 and (i + 1) % decoder_sparse_step == 0` (default 1); with 0 experts every
///   layer is dense and `moe` is `None`.
fn moe(
    arch: Arch,
    raw: &RawConfig,
    layers: usize,
    intermediate_size: usize,
) -> Result<Option<MoeConfig>, ConfigError> {
    let (experts, top_k, expert_size, shared, norm_topk_prob) = match arch {
        Arch::Mixtral => (
            nonzero(
                raw.num_local_experts.or(raw.num_experts).unwrap_or(8),
                "num_local_experts",
            )?,
            raw.num_experts_per_tok.unwrap_or(2),
            intermediate_size,
            None,
            true,
        ),
        Arch::Qwen2Moe => (
            raw.num_experts.unwrap_or(60),
            raw.num_experts_per_tok.unwrap_or(4),
            nonzero(
                raw.moe_intermediate_size.unwrap_or(1408),
                "moe_intermediate_size",
            )?,
            Some(nonzero(
                raw.shared_expert_intermediate_size.unwrap_or(5632),
                "shared_expert_intermediate_size",
            )?),
            raw.norm_topk_prob.unwrap_or(false),
        ),
        Arch::Qwen3Moe => (
            raw.num_local_experts.or(raw.num_experts).unwrap_or(128),
            raw.num_experts_per_tok.unwrap_or(8),
            nonzero(
                raw.moe_intermediate_size.unwrap_or(768),
                "moe_intermediate_size",
            )?,
            None,
            raw.norm_topk_prob.unwrap_or(false),
        ),
        _ => return Ok(None),
    };
    if experts == 0 {
        return Ok(None);
    }
    if experts > MAX_EXPERTS {
        return Err(ConfigError::TooLarge {
            field: "num_experts",
            value: experts,
            max: MAX_EXPERTS,
        });
    }
    if top_k == 0 || top_k > experts {
        return Err(ConfigError::InvalidField {
            field: "num_experts_per_tok".to_string(),
            message: format!("{top_k} is not between 1 and the {experts} experts"),
        });
    }
    let step = match arch {
        Arch::Mixtral => 1,
        _ => nonzero(raw.decoder_sparse_step.unwrap_or(1), "decoder_sparse_step")?,
    };
    let dense: &[usize] = raw.mlp_only_layers.as_deref().unwrap_or(&[]);
    let sparse_layers: Vec<bool> = (0..layers)
        .map(|i| arch == Arch::Mixtral || (!dense.contains(&i) && (i + 1) % step == 0))
        .collect();
    let n_sparse = sparse_layers.iter().filter(|s| **s).count();
    match n_sparse.checked_mul(experts) {
        Some(n) if n <= MAX_EXPERT_MLPS => {}
        _ => {
            return Err(ConfigError::TooLarge {
                field: "num_experts",
                value: experts,
                max: MAX_EXPERT_MLPS / n_sparse.max(1),
            })
        }
    }
    Ok(Some(MoeConfig {
        num_experts: experts,
        top_k,
        expert_intermediate_size: expert_size,
        shared_expert_intermediate_size: shared,
        norm_topk_prob,
        sparse_layers,
    }))
}

/// BERT settings whose computation orient does not know, refused by name.
fn bert_checks(raw: &RawConfig) -> Result<(), ConfigError> {
    if let Some(t) = &raw.position_embedding_type {
        if t != "absolute" {
            return Err(ConfigError::Unsupported {
                field: "position_embedding_type".to_string(),
                value: format!("\"{t}\""),
                reason: "only \"absolute\" position embeddings are supported (transformers 4.x's \
                         relative_key / relative_key_query add distance_embedding tensors; \
                         transformers 5.24's BertModel silently ignores this field)"
                    .to_string(),
            });
        }
    }
    if raw.add_cross_attention == Some(true) {
        return Err(ConfigError::Unsupported {
            field: "add_cross_attention".to_string(),
            value: "true".to_string(),
            reason: "BERT as the decoder of an encoder-decoder (cross-attention tensors) is not \
                     in the layout catalogue"
                .to_string(),
        });
    }
    Ok(())
}

pub(super) fn gpt2(raw: RawConfig, architectures: Vec<String>) -> Result<ModelConfig, ConfigError> {
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
        None => mul(hidden_size, 4, "4 × n_embd (n_inner)")?,
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
        layer_types: vec![AttentionKind::Full; num_hidden_layers],
        causal: true,
        partial_rotary_factor: 1.0,
        sliding_rope: None,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        query_pre_attn_scalar: None,
        norm_unit_offset: false,
        embed_scale: None,
        norm_placement: NormPlacement::Pre,
        parallel_residual: false,
        moe: None,
        type_vocab_size: None,
        pad_token_id: None,
    })
}
