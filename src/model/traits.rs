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

use orient_inspect::config::{AttentionKind, NormPlacement};
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
    /// `gelu_pytorch_tanh`: PyTorch's `gelu(approximate="tanh")` (Gemma).
    GeluTanh,
    /// `gelu`: PyTorch's exact, erf-based GELU (GPT-NeoX).
    Gelu,
}

impl Activation {
    /// The activation named by `hidden_act` (GPT-2: `activation_function`).
    fn from_config(name: &str) -> Result<Activation, ModelError> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_new" => Ok(Activation::GeluNew),
            "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
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
    /// GPT-NeoX's `use_parallel_residual`: both blocks read the same input,
    /// `x = (mlp(norm₂(x)) + attn(norm₁(x))) + x`, summed in that order.
    Parallel,
    /// Gemma 2/3: each block's output is normed before the add,
    /// `x += post₁(attn(norm₁(x)))`, then `x += post₂(mlp(norm₂(x)))`.
    Sandwich,
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
    /// `rope_type: "linear"`: every inverse frequency divided by this factor.
    pub linear: Option<f64>,
}

/// The attention one layer computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Attention {
    /// Causal; only the last `w` positions when `Some(w)` (a sliding window).
    pub window: Option<usize>,
    /// The factor on `q·kᵀ` (`D^-½`, or `query_pre_attn_scalar^-½`), in f32 as transformers'
    /// `scaling` multiplies it.
    pub scale: f32,
    /// Scaled scores soft-capped as `cap · tanh(s / cap)` before the mask (Gemma 2).
    pub softcap: Option<f32>,
    /// Positions rotate with the local RoPE ([`Traits::local_rope`]) rather than the global one
    /// (Gemma 3's sliding layers).
    pub local_rope: bool,
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
    /// Per-head RMSNorm on q and k before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// The rotary embedding of the layers whose [`Attention::local_rope`] is set (Gemma 3's
    /// sliding layers: `rope_local_base_freq`, or `rope_parameters.sliding_attention`).
    pub local_rope: Option<Rotary>,
    /// Logits soft-capped as `cap · tanh(z / cap)` (Gemma 2/3 `final_logit_softcapping`).
    pub final_softcap: Option<f32>,
}

/// The shape of an architecture's blocks: one row per architecture the forward runs.
struct Row {
    norm: fn(&ModelConfig) -> NormKind,
    mlp: MlpKind,
    learned_positions: bool,
    /// The attention applies `attn_logit_softcapping` (Gemma 2). transformers 5.24's
    /// Gemma3Attention never passes `softcap` to its attention function, so Gemma 3 ignores the
    /// field, as here.
    attention_softcap: bool,
}

/// The row of `arch`, `None` for one the forward has no traits for yet.
fn row(arch: Arch) -> Option<Row> {
    let rms = |cfg: &ModelConfig| NormKind::Rms {
        offset: if cfg.norm_unit_offset { 1.0 } else { 0.0 },
    };
    match arch {
        Arch::Llama
        | Arch::Mistral
        | Arch::Qwen2
        | Arch::Qwen3
        | Arch::Gemma
        | Arch::Gemma3
        | Arch::Phi3 => Some(Row {
            norm: rms,
            mlp: MlpKind::Gated,
            learned_positions: false,
            attention_softcap: false,
        }),
        Arch::Gemma2 => Some(Row {
            norm: rms,
            mlp: MlpKind::Gated,
            learned_positions: false,
            attention_softcap: true,
        }),
        Arch::Gpt2 => Some(Row {
            norm: |_| NormKind::Layer,
            mlp: MlpKind::Plain,
            learned_positions: true,
            attention_softcap: false,
        }),
        Arch::GptNeox => Some(Row {
            norm: |_| NormKind::Layer,
            mlp: MlpKind::Plain,
            learned_positions: false,
            attention_softcap: false,
        }),
        // BERT: LayerNorm, a plain MLP, learned positions (the encoder forward, `encoder`).
        Arch::Bert => Some(Row {
            norm: |_| NormKind::Layer,
            mlp: MlpKind::Plain,
            learned_positions: true,
            attention_softcap: false,
        }),
        // llama's blocks; a sparse layer's experts come with its weights (`moe`), so the
        // dense layers of a Qwen MoE (`mlp_only_layers`) stay gated MLPs.
        Arch::Mixtral | Arch::Qwen2Moe | Arch::Qwen3Moe => Some(Row {
            norm: rms,
            mlp: MlpKind::Gated,
            learned_positions: false,
            attention_softcap: false,
        }),
    }
}

/// The first setting of `cfg` the forward does not compute yet, in words.
fn unimplemented(cfg: &ModelConfig) -> Option<&'static str> {
    [
        (
            !cfg.causal && !super::encoder::is_encoder(cfg),
            "bidirectional attention",
        ),
        (
            cfg.norm_placement == NormPlacement::Post && !super::encoder::is_encoder(cfg),
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
            Position::Rotary(rotary(
                cfg.rotary_dim(),
                cfg.rope_theta,
                cfg.rope_scaling.as_ref(),
            )?)
        };
        // Gemma 3: sliding layers rotate with their own base (and scaling).
        let local_rope = match (&cfg.sliding_rope, &position) {
            (Some(local), Position::Rotary(_)) => Some(rotary(
                cfg.rotary_dim(),
                local.theta,
                local.scaling.as_ref(),
            )?),
            _ => None,
        };
        // transformers: `scaling = head_dim ** -0.5` (a Python float), applied in f32
        let scale = cfg.attention_scale() as f32;
        let softcap = cfg
            .attn_logit_softcapping
            .filter(|_| row.attention_softcap)
            .map(|c| c as f32);
        let attention = (0..cfg.num_hidden_layers)
            .map(|i| {
                let sliding = cfg.layer_types.get(i) == Some(&AttentionKind::Sliding);
                Attention {
                    window: if sliding { cfg.sliding_window } else { None },
                    scale,
                    softcap,
                    local_rope: sliding && local_rope.is_some(),
                }
            })
            .collect();
        let residual = match (cfg.parallel_residual, cfg.norm_placement) {
            (true, _) => Residual::Parallel,
            (false, NormPlacement::Sandwich) => Residual::Sandwich,
            (false, _) => Residual::Sequential,
        };
        Ok(Traits {
            norm: (row.norm)(cfg),
            activation,
            mlp: row.mlp,
            attention,
            residual,
            position,
            embedding_scale: cfg.embed_scale.map(|s| s as f32),
            qk_norm: cfg.qk_norm,
            local_rope,
            final_softcap: cfg.final_logit_softcapping.map(|c| c as f32),
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
            Position::Rotary(r) => Some(r.tables(positions)),
            Position::Learned => None,
        }
    }

    /// The cos/sin tables of the local RoPE ([`Traits::local_rope`]) at `positions`, when
    /// there is one.
    pub fn local_rope_tables_at(&self, positions: std::ops::Range<usize>) -> Option<RopeTables> {
        self.local_rope.as_ref().map(|r| r.tables(positions))
    }
}

impl Rotary {
    /// The cos/sin tables of the positions `positions`.
    fn tables(&self, positions: std::ops::Range<usize>) -> RopeTables {
        let mut inv = rope::inv_freq(self.dims, self.theta, self.llama3.as_ref());
        if let Some(factor) = self.linear {
            // `_compute_linear_scaling_rope_parameters`: `inv_freq /= factor`, in f32
            let factor = factor as f32;
            inv.iter_mut().for_each(|f| *f /= factor);
        }
        RopeTables::at(&inv, positions)
    }
}

/// The rotary embedding of base `theta` with `scaling` over the first `dims` dimensions of each
/// head; a scaling the forward does not compute is refused by name.
fn rotary(dims: usize, theta: f64, scaling: Option<&RopeScaling>) -> Result<Rotary, ModelError> {
    let (llama3, linear) = match scaling {
        None => (None, None),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => (
            Some(Llama3Scaling {
                factor: *factor,
                low_freq_factor: *low_freq_factor,
                high_freq_factor: *high_freq_factor,
                original_max_position_embeddings: *original_max_position_embeddings,
            }),
            None,
        ),
        Some(RopeScaling::Linear { factor }) => (None, Some(*factor)),
        Some(other) => return Err(ModelError::UnsupportedRope(other.name().to_string())),
    };
    Ok(Rotary {
        dims,
        theta,
        llama3,
        linear,
    })
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
        let m = Traits::of(&cfg(
            r#"{"model_type": "mixtral", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 32, "num_hidden_layers": 2, "vocab_size": 256}"#,
        ))
        .unwrap();
        assert_eq!(
            (m.mlp, m.norm),
            (MlpKind::Gated, NormKind::Rms { offset: 0.0 })
        );
        let b = Traits::of(&cfg(
            r#"{"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4,
                "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 256}"#,
        ))
        .unwrap();
        assert_eq!((b.mlp, b.activation), (MlpKind::Plain, Activation::Gelu));
        assert_eq!((b.norm, b.position), (NormKind::Layer, Position::Learned));
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
    fn gemma_norms_offset_activation_and_embedding_scale() {
        let g = Traits::of(&cfg(
            r#"{"model_type": "gemma", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 1,
                "head_dim": 16, "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 256,
                "hidden_act": "gelu_pytorch_tanh"}"#,
        ))
        .unwrap();
        assert_eq!(g.norm, NormKind::Rms { offset: 1.0 });
        assert_eq!(
            (g.mlp, g.activation),
            (MlpKind::Gated, Activation::GeluTanh)
        );
        assert_eq!(g.embedding_scale, Some((32f64).sqrt() as f32));
        assert_eq!(g.residual, Residual::Sequential);
        assert!(g.local_rope.is_none() && g.final_softcap.is_none());
    }

    /// Gemma 2: sandwich norms, soft-capping of scores and logits, sliding layers 0 and 2,
    /// `query_pre_attn_scalar`; Gemma 3 has the local RoPE on its sliding layers and, as
    /// transformers 5.24's Gemma3Attention, no score soft-capping even when the config has one.
    #[test]
    fn gemma2_and_gemma3_layers() {
        let g2 = Traits::of(&cfg(
            r#"{"model_type": "gemma2", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "intermediate_size": 64, "num_hidden_layers": 3, "vocab_size": 256,
                "sliding_window": 64, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 2.0,
                "final_logit_softcapping": 3.0}"#,
        ))
        .unwrap();
        assert_eq!(g2.residual, Residual::Sandwich);
        assert_eq!(g2.final_softcap, Some(3.0));
        let windows: Vec<_> = g2.attention.iter().map(|a| a.window).collect();
        assert_eq!(windows, [Some(64), None, Some(64)]);
        assert!(g2.attention.iter().all(|a| a.softcap == Some(2.0)
            && a.scale == (24f64).powf(-0.5) as f32
            && !a.local_rope));
        let g3 = Traits::of(&cfg(
            r#"{"model_type": "gemma3_text", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "intermediate_size": 64, "num_hidden_layers": 3, "vocab_size": 256,
                "sliding_window": 64, "sliding_window_pattern": 3, "rope_theta": 1000000.0,
                "rope_local_base_freq": 10000.0, "attn_logit_softcapping": 5.0,
                "rope_scaling": {"rope_type": "linear", "factor": 8.0}}"#,
        ))
        .unwrap();
        assert_eq!(g3.residual, Residual::Sandwich);
        assert!(g3.qk_norm);
        let local: Vec<_> = g3.attention.iter().map(|a| a.local_rope).collect();
        assert_eq!(local, [true, true, false]);
        assert!(g3.attention.iter().all(|a| a.softcap.is_none()));
        let (Position::Rotary(global), Some(l)) = (&g3.position, &g3.local_rope) else {
            panic!("{g3:?}")
        };
        assert_eq!((global.theta, global.linear), (1e6, Some(8.0)));
        assert_eq!((l.theta, l.linear), (1e4, None));
        // the linear factor divides every inverse frequency
        let inv: Vec<f32> = rope::inv_freq(16, 1e6, None)
            .iter()
            .map(|f| f / 8.0)
            .collect();
        let (got, want) = (global.tables(0..3), RopeTables::new(&inv, 3));
        assert_eq!((got.cos, got.sin), (want.cos, want.sin));
    }

    #[test]
    fn gpt_neox_residuals_and_partial_rotary() {
        let neox = |extra: &str| {
            Traits::of(&cfg(&format!(
                r#"{{"model_type": "gpt_neox", "hidden_size": 32, "num_attention_heads": 2,
                    "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 256,
                    "hidden_act": "gelu", "rotary_pct": 0.25{extra}}}"#
            )))
            .unwrap()
        };
        let p = neox("");
        assert_eq!(
            (p.norm, p.mlp, p.activation),
            (NormKind::Layer, MlpKind::Plain, Activation::Gelu)
        );
        assert_eq!(p.residual, Residual::Parallel);
        assert!(matches!(
            p.position,
            Position::Rotary(Rotary { dims: 4, .. })
        ));
        assert_eq!(
            neox(r#", "use_parallel_residual": false"#).residual,
            Residual::Sequential
        );
    }

    #[test]
    fn unimplemented_rope_scalings_are_refused_by_name() {
        let phi3 = |scaling: &str| {
            Traits::of(&cfg(&format!(
                r#"{{"model_type": "phi3", "hidden_size": 32, "num_attention_heads": 2,
                    "intermediate_size": 64, "num_hidden_layers": 2, "vocab_size": 256,
                    "original_max_position_embeddings": 256, "rope_scaling": {scaling}}}"#
            )))
        };
        assert!(phi3("null").is_ok());
        for name in ["longrope", "su"] {
            let e = phi3(&format!(
                r#"{{"type": "{name}", "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                    "long_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]}}"#
            ))
            .unwrap_err();
            assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
        }
    }
}
