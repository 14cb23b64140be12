//! What an architecture computes, as data: one plain struct resolved once from the config.
//!
//! Why: the forward used to branch on a `gpt2` bool in nine places, and every architecture
//! that was not GPT-2 silently became the llama family. Here each way in which architectures
//! differ is one field (the norm, the activation, the MLP's shape, the attention mask of each
//! layer, the residual form, the position scheme, an embedding scale, q/k norms), and the
//! layer code matches on those fields only. Adding an architecture is one row in
//! [`Traits::of`]; where it computes something new (Gemma's `1 + w` norms, Phi-3's partial
//! rotary, NeoX's parallel residual, soft-capped or bidirectional attention), it is one new
//! variant of one of these enums and the one match arm that computes it.

use orient_inspect::{Arch, ModelConfig, RopeScaling};

use super::rope::{self, Llama3Scaling, RopeTables};
use super::ModelError;

/// How a block's input is normalised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum NormKind {
    /// `LlamaRMSNorm`: `(w + offset) · x / rms(x)`, no bias. `offset` is 0 for every
    /// architecture today (Gemma stores `w` and multiplies by `1 + w`).
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
    /// Rotated dimensions at the start of each head (the whole head today).
    pub dims: usize,
    /// The base θ.
    pub theta: f64,
    /// `rope_scaling` of type `llama3`, when the config has one.
    pub llama3: Option<Llama3Scaling>,
}

/// Which keys the queries of a layer see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Window {
    /// Every earlier position (the causal mask).
    Full,
    /// Mistral: every layer sees only the last `w` positions.
    EveryLayer(usize),
    /// Qwen2/Qwen3 `use_sliding_window`: the window applies from `max_window_layers` on,
    /// which the resolved config does not carry, so a prompt longer than the window is refused
    /// rather than masked in the wrong layers.
    SomeLayers(usize),
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
    /// The attention mask's window.
    pub window: Window,
    /// How the blocks feed the residual stream.
    pub residual: Residual,
    /// Rotary or learned positions.
    pub position: Position,
    /// A factor on the token embedding (Gemma's `√H`); `None` for every architecture today.
    pub embedding_scale: Option<f32>,
    /// Per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
}

impl Traits {
    /// The traits of `cfg`'s architecture; an error for a setting the forward does not
    /// implement (an activation, a RoPE scaling) or an architecture it has no row for.
    pub fn of(cfg: &ModelConfig) -> Result<Traits, ModelError> {
        let activation = Activation::from_config(&cfg.hidden_act)?;
        let rotary = || -> Result<Position, ModelError> {
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
            Ok(Position::Rotary(Rotary {
                dims: cfg.rotary_dim(),
                theta: cfg.rope_theta,
                llama3,
            }))
        };
        let llama_family = |window: Window| -> Result<Traits, ModelError> {
            Ok(Traits {
                norm: NormKind::Rms { offset: 0.0 },
                activation,
                mlp: MlpKind::Gated,
                window,
                residual: Residual::Sequential,
                position: rotary()?,
                embedding_scale: None,
                qk_norm: cfg.qk_norm,
            })
        };
        #[allow(unreachable_patterns)] // architectures the catalogue knows before the forward
        match cfg.arch {
            Arch::Llama => llama_family(Window::Full),
            Arch::Mistral => {
                llama_family(cfg.sliding_window.map_or(Window::Full, Window::EveryLayer))
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                llama_family(cfg.sliding_window.map_or(Window::Full, Window::SomeLayers))
            }
            Arch::Gpt2 => Ok(Traits {
                norm: NormKind::Layer,
                activation,
                mlp: MlpKind::Plain,
                window: Window::Full,
                residual: Residual::Sequential,
                position: Position::Learned,
                embedding_scale: None,
                qk_norm: false,
            }),
            other => Err(ModelError::UnsupportedArch(other.model_type().to_string())),
        }
    }

    /// The sliding window every layer applies to a prompt of `tokens` tokens (`None`: the
    /// plain causal mask; a window no shorter than the prompt is the causal mask too).
    pub fn window(&self, tokens: usize) -> Result<Option<usize>, ModelError> {
        match self.window {
            Window::Full => Ok(None),
            Window::EveryLayer(w) => Ok((w < tokens).then_some(w)),
            Window::SomeLayers(w) if w < tokens => {
                Err(ModelError::UnsupportedSlidingWindow { window: w, tokens })
            }
            Window::SomeLayers(_) => Ok(None),
        }
    }

    /// The cos/sin tables for `tokens` positions with heads of `head_dim`, when positions are
    /// rotary.
    pub fn rope_tables(&self, tokens: usize) -> Option<RopeTables> {
        match &self.position {
            Position::Rotary(r) => {
                let inv = rope::inv_freq(r.dims, r.theta, r.llama3.as_ref());
                Some(RopeTables::new(&inv, tokens))
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
        assert!(g.rope_tables(4).is_none());
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
    fn windows_apply_only_to_prompts_longer_than_them() {
        let m = Traits::of(&cfg(&llama("").replace("llama", "mistral").replace(
            r#""vocab_size": 512"#,
            r#""vocab_size": 512, "sliding_window": 8"#,
        )))
        .unwrap();
        assert_eq!(m.window, Window::EveryLayer(8));
        assert_eq!(m.window(8).unwrap(), None);
        assert_eq!(m.window(9).unwrap(), Some(8));
        let q = Traits {
            window: Window::SomeLayers(8),
            ..m
        };
        assert_eq!(q.window(8).unwrap(), None);
        assert!(matches!(
            q.window(9),
            Err(ModelError::UnsupportedSlidingWindow {
                window: 8,
                tokens: 9
            })
        ));
    }
}
