//! What an architecture computes, as data: one plain struct resolved once from the config.
//!
//! Why: the forward used to branch on a `gpt2` bool in nine places, and every architecture
//! that was not GPT-2 silently became the llama family. Here each way in which architectures
//! differ is one field (the norm, the activation, the MLP's shape, the attention of each
//! layer, the residual form, the position scheme, an embedding scale, q/k norms), resolved
//! from the config, and the layer code matches on those fields only. Adding an architecture
//! is one row in [`row`]; where it computes something new (NeoX's parallel residual,
//! soft-capped or bidirectional attention, experts), it is one new variant of one of these
//! enums and the one match arm that computes it, and its setting leaves the list of
//! [`unimplemented`] ones. Settings the forward does not compute are refused by name, never
//! silently skipped.

use orient_inspect::config::AttentionKind;
use orient_inspect::{Arch, ModelConfig, RopeScaling};

use super::rope::{self, Llama3Scaling, RopeTables};
use super::ModelError;

/// How a block's input is normalised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum NormKind {
    /// `LlamaRMSNorm`: `(w + offset) · x / rms(x)`, no bias. `offset` is 1 where the config
    /// says norms act as `x·(1 + w)` (Gemma stores `w`), else 0.
    Rms {
        /// Added to every weight as it is read.
        offset: f32,
    },
    /// `nn.LayerNorm`: `(x − mean) / std · γ + β`, with a bias.
    Layer,
}

/// The MLP's nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `x · sigmoid(x)` (`silu`).
    Silu,
    /// transformers' `gelu_new` (the tanh approximation, as GPT-2 computes it).
    GeluNew,
}

impl Activation {
    /// The activation named by `hidden_act` (GPT-2: `activation_function`).
    fn from_config(name: &str) -> Result<Activation, ModelError> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_new" => Ok(Activation::GeluNew),
            other => Err(ModelError::UnsupportedActivation(other.to_string())),
        }
    }
}

/// The shape of the feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MlpKind {
    /// `down(act(gate(x)) · up(x))` (SwiGLU, the llama family).
    Gated,
    /// `down(act(up(x)))` (GPT-2's `c_fc` → `c_proj`).
    Plain,
}

/// How the attention and MLP blocks feed the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Residual {
    /// `x += attn(norm₁(x))`, then `x += mlp(norm₂(x))`.
    Sequential,
}

/// Where positions enter the model.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Position {
    /// Rotary embeddings on q and k (half-split pairs, as transformers' `rotate_half`).
    Rotary(Rotary),
    /// A learned `[positions, H]` table added to the token embedding (GPT-2's `wpe`).
    Learned,
}

/// The parameters of rotary embeddings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rotary {
    /// Rotated dimensions at the start of each head: `int(D · partial_rotary_factor)`.
    pub dims: usize,
    /// The base θ.
    pub theta: f64,
    /// `rope_scaling` of type `llama3`, when the config has one.
    pub llama3: Option<Llama3Scaling>,
}

/// The attention one layer computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Attention {
    /// Causal; only the last `w` positions when `Some(w)` (a sliding window).
    pub window: Option<usize>,
    /// The factor on `q·kᵀ` (`D^-½`, or `query_pre_attn_scalar^-½`), in f32 as transformers'
    /// `scaling` multiplies it.
    pub scale: f32,
}

/// Everything the forward needs to know about an architecture beyond its sizes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Traits {
    /// Every norm of the model (attention, MLP, final, and q/k norms).
    pub norm: NormKind,
    /// The MLP's nonlinearity.
    pub activation: Activation,
    /// Gated or plain MLP.
    pub mlp: MlpKind,
    /// Per layer, its attention.
    pub attention: Vec<Attention>,
    /// How the blocks feed the residual stream.
    pub residual: Residual,
    /// Rotary or learned positions.
    pub position: Position,
    /// A factor on the token embedding (Gemma's `√H`).
    pub embedding_scale: Option<f32>,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
}

/// The shape of an architecture's blocks: one row per architecture the forward runs.
struct Row {
    norm: fn(&ModelConfig) -> NormKind,
    mlp: MlpKind,
    learned_positions: bool,
}

/// The row of `arch`, `None` for one the forward has no traits for yet.
fn row(arch: Arch) -> Option<Row> {
    let rms = |cfg: &ModelConfig| NormKind::Rms {
        offset: if cfg.norm_unit_offset { 1.0 } else { 0.0 },
    };
    match arch {
        Arch::Llama | Arch::Mistral | Arch::Qwen2 | Arch::Qwen3 => Some(Row {
            norm: rms,
            mlp: MlpKind::Gated,
            learned_positions: false,
        }),
        Arch::Gpt2 => Some(Row {
            norm: |_| NormKind::Layer,
            mlp: MlpKind::Plain,
            learned_positions: true,
        }),
        _ => None,
    }
}

/// The first setting of `cfg` the forward does not compute yet, in words.
fn unimplemented(cfg: &ModelConfig) -> Option<&'static str> {
    use orient_inspect::config::NormPlacement;
    [
        (cfg.moe.is_some(), "a mixture of experts"),
        (!cfg.causal, "bidirectional attention"),
        (
            cfg.attn_logit_softcapping.is_some(),
            "soft-capped attention scores",
        ),
        (cfg.final_logit_softcapping.is_some(), "soft-capped logits"),
        (
            cfg.sliding_rope.is_some(),
            "a separate RoPE for sliding-window layers",
        ),
        (cfg.parallel_residual, "a parallel residual"),
        (
            cfg.norm_placement != NormPlacement::Pre,
            "norms after the blocks",
        ),
    ]
    .into_iter()
    .find_map(|(set, what)| set.then_some(what))
}

impl Traits {
    /// The traits of `cfg`; an error for a setting the forward does not implement (an
    /// activation, a RoPE scaling, soft-capping, …) or an architecture it has no row for.
    pub fn of(cfg: &ModelConfig) -> Result<Traits, ModelError> {
        let arch = cfg.arch.model_type().to_string();
        if let Some(feature) = unimplemented(cfg) {
            return Err(ModelError::Unsupported { arch, feature });
        }
        let row = row(cfg.arch).ok_or(ModelError::UnsupportedArch(arch))?;
        let activation = Activation::from_config(&cfg.hidden_act)?;
        let position = if row.learned_positions {
            Position::Learned
        } else {
            let llama3 = match &cfg.rope_scaling {
                None => None,
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_position_embeddings,
                }) => Some(Llama3Scaling {
                    factor: *factor,
                    low_freq_factor: *low_freq_factor,
                    high_freq_factor: *high_freq_factor,
                    original_max_position_embeddings: *original_max_position_embeddings,
                }),
                Some(other) => return Err(ModelError::UnsupportedRope(other.name().to_string())),
            };
            Position::Rotary(Rotary {
                dims: cfg.rotary_dim(),
                theta: cfg.rope_theta,
                llama3,
            })
        };
        // transformers: `scaling = head_dim ** -0.5` (a Python float), applied in f32
        let scale = cfg.attention_scale() as f32;
        let attention = (0..cfg.num_hidden_layers)
            .map(|i| Attention {
                window: match cfg.layer_types.get(i) {
                    Some(AttentionKind::Sliding) => cfg.sliding_window,
                    _ => None,
                },
                scale,
            })
            .collect();
        Ok(Traits {
            norm: (row.norm)(cfg),
            activation,
            mlp: row.mlp,
            attention,
            residual: Residual::Sequential,
            position,
            embedding_scale: cfg.embed_scale.map(|s| s as f32),
            qk_norm: cfg.qk_norm,
        })
    }

    /// The sliding window layer `layer` applies to a prompt of `tokens` tokens (`None`: the
    /// plain causal mask; a window no shorter than the prompt is the causal mask too).
    pub fn window(&self, layer: usize, tokens: usize) -> Option<usize> {
        self.attention
            .get(layer)
            .and_then(|a| a.window)
            .filter(|&w| w < tokens)
    }

    /// The cos/sin tables of the positions `positions` (a prefill's `0..T`; the tokens after a
    /// KV cache start past 0), when positions are rotary.
    pub fn rope_tables_at(&self, positions: std::ops::Range<usize>) -> Option<RopeTables> {
        match &self.position {
            Position::Rotary(r) => {
                let inv = rope::inv_freq(r.dims, r.theta, r.llama3.as_ref());
                Some(RopeTables::at(&inv, positions))
            }
            Position::Learned => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use orient_inspect::{parse_config, ConfigOutcome};

    fn cfg(json: &str) -> ModelConfig {
        match parse_config(json).unwrap() {
            ConfigOutcome::Known(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn llama(extra: &str) -> String {
        format!(
            r#"{{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                "intermediate_size": 176, "num_hidden_layers": 2, "vocab_size": 512{extra}}}"#
        )
    }

    #[test]
    fn each_architecture_gets_its_row() {
        let t = Traits::of(&cfg(&llama(""))).unwrap();
        assert_eq!(t.norm, NormKind::Rms { offset: 0.0 });
        assert_eq!((t.mlp, t.activation), (MlpKind::Gated, Activation::Silu));
        assert!(matches!(
            t.position,
            Position::Rotary(Rotary { dims: 16, .. })
        ));
        let g = Traits::of(&cfg(
            r#"{"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 512}"#,
        ))
        .unwrap();
        assert_eq!(g.norm, NormKind::Layer);
        assert_eq!((g.mlp, g.activation), (MlpKind::Plain, Activation::GeluNew));
        assert_eq!(g.position, Position::Learned);
        assert!(g.rope_tables_at(0..4).is_none());
    }

    #[test]
    fn settings_the_forward_lacks_are_refused_by_name() {
        let e = Traits::of(&cfg(&llama(r#", "hidden_act": "relu""#))).unwrap_err();
        assert!(e.to_string().contains("`relu`"), "{e}");
        let e = Traits::of(&cfg(&llama(
            r#", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#,
        )))
        .unwrap_err();
        assert!(e.to_string().contains("`yarn`"), "{e}");
    }

    #[test]
    fn windows_apply_per_layer_and_only_to_prompts_longer_than_them() {
        let m = Traits::of(&cfg(&llama("").replace("llama", "mistral").replace(
            r#""vocab_size": 512"#,
            r#""vocab_size": 512, "sliding_window": 8"#,
        )))
        .unwrap();
        assert_eq!(m.window(0, 8), None);
        assert_eq!(m.window(1, 9), Some(8));
        // qwen2: layers from max_window_layers on
        let q = Traits::of(&cfg(&llama("").replace("llama", "qwen2").replace(
            r#""vocab_size": 512"#,
            r#""vocab_size": 512, "sliding_window": 8, "use_sliding_window": true, "max_window_layers": 1"#,
        )))
        .unwrap();
        assert_eq!((q.window(0, 20), q.window(1, 20)), (None, Some(8)));
        assert_eq!(q.attention[0].scale, (16f64).powf(-0.5) as f32);
    }

    #[test]
    fn architectures_and_settings_without_a_row_are_refused_by_name() {
        let e = Traits::of(&cfg(
            r#"{"model_type": "gpt_neox", "hidden_size": 32, "num_attention_heads": 2,
                "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 256}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("a parallel residual"), "{e}");
        let e = Traits::of(&cfg(
            r#"{"model_type": "gemma", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 1,
                "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 256}"#,
        ))
        .unwrap_err();
        assert!(e.to_string().contains("`gemma`"), "{e}");
    }
}
