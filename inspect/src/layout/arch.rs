//! The canonical catalogue: which tensors a model of each architecture has, as transformers'
//! PyTorch classes load them (names, shapes, orientation), and which slot of the forward each
//! one feeds. Read from `layouts/canonical.toml`, embedded in the binary.
//!
//! Canonical is one fixed point: every convention (hf, flax, a user's JAX port) is described as
//! transforms *from* these tensors, so adding a convention never touches this table, and adding
//! an architecture never touches a convention unless its tensors are stored unusually there.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{Arch, ModelConfig};
use crate::layout::expr::ShapeFormula;
use crate::layout::file::{self, LayoutError, Source};
use crate::layout::transform::TransformSpec;

/// What a tensor is, independent of naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Token embedding table.
    Embedding,
    /// Learned position table (GPT-2 `wpe`).
    PositionEmbedding,
    /// A dense projection stored as HF `nn.Linear`.
    Linear,
    /// A dense projection stored as HF `Conv1D` (GPT-2).
    Conv1d,
    /// GPT-2's fused q,k,v Conv1D (`c_attn`).
    FusedQkv,
    /// A normalisation weight (RMSNorm/LayerNorm scale).
    Norm,
    /// A bias vector (of a projection or a LayerNorm).
    Bias,
    /// The output projection to the vocabulary.
    LmHead,
    /// A non-weight buffer some files carry (GPT-2's causal mask); never used, never converted.
    Buffer,
}

impl Role {
    /// The kebab-case name used in layout files, tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Role::Embedding => "embedding",
            Role::PositionEmbedding => "position-embedding",
            Role::Linear => "linear",
            Role::Conv1d => "conv1d",
            Role::FusedQkv => "fused-qkv",
            Role::Norm => "norm",
            Role::Bias => "bias",
            Role::LmHead => "lm-head",
            Role::Buffer => "buffer",
        }
    }

    /// Every role.
    pub const ALL: [Role; 9] = [
        Role::Embedding,
        Role::PositionEmbedding,
        Role::Linear,
        Role::Conv1d,
        Role::FusedQkv,
        Role::Norm,
        Role::Bias,
        Role::LmHead,
        Role::Buffer,
    ];

    /// The role named `name`.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// A projection whose orientation a square shape cannot prove.
    pub fn is_projection(self) -> bool {
        matches!(
            self,
            Role::Linear | Role::Conv1d | Role::FusedQkv | Role::LmHead
        )
    }
}

/// Which part of the model a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// Token and position embeddings.
    Embedding,
    /// Self-attention projections, their biases, q/k norms and mask buffers.
    Attention,
    /// The feed-forward block.
    Mlp,
    /// The norm before attention (`input_layernorm`, `ln_1`).
    AttentionNorm,
    /// The norm before the MLP (`post_attention_layernorm`, `ln_2`).
    MlpNorm,
    /// The final norm (`model.norm`, `ln_f`).
    FinalNorm,
    /// The output projection.
    LmHead,
    /// The pooler over the first token (BERT).
    Pooler,
}

/// Where the forward uses a tensor. Matrices are read as `[out, in]`, tables as
/// `[rows, hidden]`, everything else as vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// Token embedding table `[V, H]`.
    Embed,
    /// Learned position table `[P, H]`.
    PositionEmbed,
    /// Norm before attention.
    AttnNorm,
    /// Its bias (LayerNorm).
    AttnNormBias,
    /// Query projection `[nH·D, H]`.
    Q,
    /// Key projection `[nKV·D, H]`.
    K,
    /// Value projection `[nKV·D, H]`.
    V,
    /// Query bias.
    QBias,
    /// Key bias.
    KBias,
    /// Value bias.
    VBias,
    /// Per-head query norm `[D]`.
    QNorm,
    /// Per-head key norm `[D]`.
    KNorm,
    /// Attention output projection `[H, nH·D]`.
    O,
    /// Its bias.
    OBias,
    /// Norm before the MLP.
    MlpNorm,
    /// Its bias (LayerNorm).
    MlpNormBias,
    /// Gate projection `[I, H]`.
    Gate,
    /// Its bias.
    GateBias,
    /// Up projection `[I, H]` (GPT-2: `c_fc`).
    Up,
    /// Its bias.
    UpBias,
    /// Down projection `[H, I]` (GPT-2: `mlp.c_proj`).
    Down,
    /// Its bias.
    DownBias,
    /// Final norm.
    FinalNorm,
    /// Its bias (LayerNorm).
    FinalNormBias,
    /// Output projection `[V, H]`.
    LmHead,
    /// Norm after attention: Gemma 2/3's `post_attention_layernorm` on the attention output
    /// before the residual add; BERT's `attention.output.LayerNorm` on x + attention(x).
    PostAttnNorm,
    /// Its bias (BERT).
    PostAttnNormBias,
    /// Norm after the MLP: Gemma 2/3's `post_feedforward_layernorm` on the MLP output before the
    /// residual add; BERT's `output.LayerNorm` on x + mlp(x).
    PostMlpNorm,
    /// Its bias (BERT).
    PostMlpNormBias,
    /// MoE router `[E, H]`: `softmax(x · routerᵀ)` picks the top-k experts.
    Router,
    /// One routed expert's gate projection `[I_moe, H]` (the entry's `expert` says which).
    ExpertGate,
    /// One routed expert's up projection `[I_moe, H]`.
    ExpertUp,
    /// One routed expert's down projection `[H, I_moe]`.
    ExpertDown,
    /// The shared expert's gate projection `[I_shared, H]` (Qwen2-MoE).
    SharedGate,
    /// The shared expert's up projection `[I_shared, H]`.
    SharedUp,
    /// The shared expert's down projection `[H, I_shared]`.
    SharedDown,
    /// The shared expert's output gate `[1, H]`: its output is scaled by sigmoid(x · gateᵀ).
    SharedExpertGate,
    /// Token-type table `[n_types, H]` (BERT).
    TokenTypeEmbed,
    /// Norm of the summed embeddings (BERT `embeddings.LayerNorm`).
    EmbedNorm,
    /// Its bias.
    EmbedNormBias,
    /// Pooler projection `[H, H]` (BERT: tanh(dense(first token))).
    Pooler,
    /// Its bias.
    PoolerBias,
}

/// A config predicate for tensors that exist only in some models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// q/k/v biases ([`ModelConfig::qkv_bias`]).
    QkvBias,
    /// o_proj bias ([`ModelConfig::o_bias`]).
    OBias,
    /// MLP biases ([`ModelConfig::mlp_bias`]).
    MlpBias,
    /// Per-head q/k norms ([`ModelConfig::qk_norm`]).
    QkNorm,
    /// Per layer: the layer's MLP is the sparse mixture of experts
    /// ([`ModelConfig::is_moe_layer`]).
    MoeLayer,
    /// Per layer: the layer's MLP is dense (every layer of a dense model).
    DenseMlp,
}

impl When {
    /// True when some layer (or the model) has the tensor.
    fn holds(self, cfg: &ModelConfig) -> bool {
        match self {
            When::QkvBias => cfg.qkv_bias,
            When::OBias => cfg.o_bias,
            When::MlpBias => cfg.mlp_bias,
            When::QkNorm => cfg.qk_norm,
            When::MoeLayer => (0..cfg.num_hidden_layers).any(|i| cfg.is_moe_layer(i)),
            When::DenseMlp => (0..cfg.num_hidden_layers).any(|i| !cfg.is_moe_layer(i)),
        }
    }

    /// True when layer `layer` has the tensor.
    fn holds_at(self, cfg: &ModelConfig, layer: usize) -> bool {
        match self {
            When::MoeLayer => cfg.is_moe_layer(layer),
            When::DenseMlp => !cfg.is_moe_layer(layer),
            other => other.holds(cfg),
        }
    }
}

/// Whether an expected tensor may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optional {
    /// May be absent when `tie_word_embeddings` is true.
    Tied,
    /// May always be absent.
    Always,
}

/// One row of the canonical catalogue, before expansion for a config.
#[derive(Debug, Clone)]
pub struct Template {
    /// Architectures that have it.
    pub archs: Vec<Arch>,
    /// HF name pattern (`{i}` layer, `{j}` expert).
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Where it belongs.
    pub component: Component,
    /// Shape formula.
    pub shape: ShapeFormula,
    /// The canonical layout in words.
    pub layout: String,
    /// Existence condition.
    pub when: Option<When>,
    /// May it be absent.
    pub optional: Option<Optional>,
    /// Why it may be absent.
    pub why: Option<String>,
    /// Forward slots it feeds, in the order `derive` produces them.
    pub slots: Vec<Slot>,
    /// Canonical → slots.
    pub derive: Vec<TransformSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tensor: Vec<RawTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    archs: Spanned<Vec<String>>,
    name: String,
    role: Role,
    component: Component,
    shape: Spanned<String>,
    layout: String,
    #[serde(default)]
    when: Option<When>,
    #[serde(default)]
    optional: Option<Optional>,
    #[serde(default)]
    why: Option<String>,
    #[serde(default)]
    slot: Option<Slot>,
    #[serde(default)]
    slots: Option<Vec<Slot>>,
    #[serde(default)]
    derive: Vec<Spanned<toml::Value>>,
}

/// The canonical catalogue shipped with orient.
pub const CANONICAL: &str = include_str!("../../layouts/canonical.toml");

/// Parses a canonical catalogue file.
pub fn parse_templates(src: &Source<'_>) -> Result<Vec<Template>, LayoutError> {
    let raw: RawFile = src.parse()?;
    raw.tensor
        .into_iter()
        .enumerate()
        .map(|(k, t)| {
            let field = |f: &str| format!("tensor[{k}].{f}");
            let archs = t
                .archs
                .get_ref()
                .iter()
                .map(|a| {
                    Arch::from_model_type(a).ok_or_else(|| {
                        src.error(
                            t.archs.span(),
                            field("archs"),
                            format!("unknown architecture `{a}`"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let shape = ShapeFormula::parse(t.shape.get_ref())
                .map_err(|e| src.error(t.shape.span(), field("shape"), e.to_string()))?;
            let slots = match (t.slot, t.slots) {
                (Some(s), None) => vec![s],
                (None, Some(s)) => s,
                (None, None) => Vec::new(),
                (Some(_), Some(_)) => {
                    return Err(src.error(
                        t.shape.span(),
                        field("slot"),
                        "give `slot` or `slots`, not both",
                    ))
                }
            };
            let derive = file::transforms(src, &t.derive, &field("derive"))?;
            Ok(Template {
                archs,
                name: t.name,
                role: t.role,
                component: t.component,
                shape,
                layout: t.layout,
                when: t.when,
                optional: t.optional,
                why: t.why,
                slots,
                derive,
            })
        })
        .collect()
}

/// The built-in canonical catalogue, parsed once.
pub fn builtin_templates() -> &'static [Template] {
    static TEMPLATES: std::sync::OnceLock<Vec<Template>> = std::sync::OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let src = Source {
            file: "built-in canonical.toml",
            text: CANONICAL,
        };
        // The built-in file is tested by every test; a failure here is a build defect.
        parse_templates(&src).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// One expected tensor of a concrete model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Canonical (HF) name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Where it belongs.
    pub component: Component,
    /// Layer index for per-layer tensors.
    pub layer: Option<usize>,
    /// Expert index for per-expert tensors.
    pub expert: Option<usize>,
    /// Canonical shape.
    pub shape: Vec<usize>,
    /// Canonical shape in words, e.g. `[nH·D, H]`.
    pub shape_formula: String,
    /// The canonical layout in words.
    pub layout: String,
    /// `Some(why)` when the tensor may be absent (a tied lm_head, GPT-2 mask buffers).
    pub optional: Option<String>,
    /// Absent-able because of `tie_word_embeddings` (an lm_head).
    pub tied: bool,
    /// Forward slots.
    #[serde(skip)]
    pub slots: Vec<Slot>,
    /// Index of the template row it came from.
    #[serde(skip)]
    pub template: usize,
}

impl Entry {
    /// True for a weight (anything but a [`Role::Buffer`]).
    pub fn is_weight(&self) -> bool {
        self.role != Role::Buffer
    }

    /// 2-D, square, and a projection (Linear, Conv1D, fused qkv, lm_head): its orientation cannot
    /// be proven from the shape alone.
    pub fn is_square_ambiguous(&self) -> bool {
        self.role.is_projection() && matches!(self.shape.as_slice(), [a, b] if a == b)
    }
}

/// Expands the templates of `cfg.arch` into concrete entries, in model order: rows containing
/// `{i}` are expanded per layer, consecutive layer rows forming one block; within a layer,
/// consecutive rows containing `{j}` are expanded per expert (expert 0's rows, then expert 1's).
/// Per-layer conditions (`moe_layer`, `dense_mlp`) are decided layer by layer.
pub fn expand(templates: &[Template], cfg: &ModelConfig) -> Result<Vec<Entry>, LayoutError> {
    let rows: Vec<(usize, &Template)> = templates
        .iter()
        .enumerate()
        .filter(|(_, t)| t.archs.contains(&cfg.arch) && t.when.is_none_or(|w| w.holds(cfg)))
        .collect();
    let mut entries = Vec::new();
    let mut block: Vec<(usize, &Template)> = Vec::new();
    let experts = cfg.moe.as_ref().map_or(0, |m| m.num_experts);
    let one = |k: usize,
               t: &Template,
               layer: Option<usize>,
               expert: Option<usize>|
     -> Result<Entry, LayoutError> {
        let shape = t.shape.eval(cfg).map_err(|e| LayoutError {
            file: "built-in canonical.toml".into(),
            line: None,
            field: Some(format!("{}.shape", t.name)),
            message: e.to_string(),
        })?;
        let (optional, tied) = match t.optional {
            None => (None, false),
            Some(Optional::Tied) => (
                cfg.tie_word_embeddings.then(|| {
                    t.why
                        .clone()
                        .unwrap_or_else(|| "tied to the embedding".into())
                }),
                cfg.tie_word_embeddings,
            ),
            Some(Optional::Always) => (
                Some(t.why.clone().unwrap_or_else(|| "optional".into())),
                false,
            ),
        };
        let mut name = t.name.clone();
        if let Some(i) = layer {
            name = name.replace("{i}", &i.to_string());
        }
        if let Some(j) = expert {
            name = name.replace("{j}", &j.to_string());
        }
        Ok(Entry {
            name,
            role: t.role,
            component: t.component,
            layer,
            expert,
            shape,
            shape_formula: t.shape.text.clone(),
            layout: t.layout.clone(),
            optional,
            tied,
            slots: t.slots.clone(),
            template: k,
        })
    };
    let no_experts = |t: &Template| LayoutError {
        file: "built-in canonical.toml".into(),
        line: None,
        field: Some(t.name.clone()),
        message: format!(
            "a per-expert tensor, but the {} config has no experts",
            cfg.model_type
        ),
    };
    let flush = |block: &mut Vec<(usize, &Template)>,
                 entries: &mut Vec<Entry>|
     -> Result<(), LayoutError> {
        for i in 0..cfg.num_hidden_layers {
            let here: Vec<(usize, &Template)> = block
                .iter()
                .copied()
                .filter(|(_, t)| t.when.is_none_or(|w| w.holds_at(cfg, i)))
                .collect();
            let mut r = 0;
            while r < here.len() {
                if !here[r].1.name.contains("{j}") {
                    entries.push(one(here[r].0, here[r].1, Some(i), None)?);
                    r += 1;
                    continue;
                }
                let run_end = here[r..]
                    .iter()
                    .position(|(_, t)| !t.name.contains("{j}"))
                    .map_or(here.len(), |n| r + n);
                if experts == 0 {
                    return Err(no_experts(here[r].1));
                }
                for j in 0..experts {
                    for (k, t) in &here[r..run_end] {
                        entries.push(one(*k, t, Some(i), Some(j))?);
                    }
                }
                r = run_end;
            }
        }
        block.clear();
        Ok(())
    };
    for (k, t) in rows {
        if t.name.contains("{i}") {
            block.push((k, t));
        } else if t.name.contains("{j}") {
            return Err(LayoutError {
                message: "`{j}` (an expert) in a tensor that is not per layer (`{i}`)".into(),
                ..no_experts(t)
            });
        } else {
            flush(&mut block, &mut entries)?;
            entries.push(one(k, t, None, None)?);
        }
    }
    flush(&mut block, &mut entries)?;
    Ok(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalogue_parses() {
        let t = builtin_templates();
        assert!(t.len() >= 40);
        let q = t
            .iter()
            .find(|t| t.name.ends_with("c_attn.weight"))
            .unwrap();
        assert_eq!(q.slots, [Slot::Q, Slot::K, Slot::V]);
        assert_eq!(q.derive.len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "[[tensor]]\narchs = [\"llama\"]\nname = \"x\"\nrole = \"linear\"\ncomponent = \"mlp\"\nshape = \"[H, Q]\"\nlayout = \"x\"\n";
        let e = parse_templates(&Source {
            file: "t.toml",
            text,
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "t.toml:6: `tensor[0].shape`: unknown size `Q` (known: H, I, V, L, nH, nKV, D, R, n_positions, E, I_moe, I_shared, n_types)");
        let text = "[[tensor]]\narchs = [\"llama\"]\nname = \"x\"\nrole = \"lienar\"\n";
        let e = parse_templates(&Source {
            file: "t.toml",
            text,
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.toml:4: unknown variant `lienar`"),
            "{e}"
        );
        let text = "[[tensor]]\narchs = [\"llama\"]\nname = \"x\"\nrole = \"linear\"\ncomponent = \"mlp\"\nshape = \"[H]\"\nlayout = \"x\"\nderive = [\"tranpose\"]\n";
        let e = parse_templates(&Source {
            file: "t.toml",
            text,
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.toml:8: `tensor[0].derive[0]`: unknown transform `tranpose`"),
            "{e}"
        );
    }
}
