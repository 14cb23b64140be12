//! The model's weights as the forward sees them: typed per-layer structs of lazy views, built
//! once from the layout catalogue.
//!
//! Why views: whatever convention a checkpoint is stored in (HF, Flax, a user's layout file),
//! the catalogue binds its tensors to canonical entries and the entries to the forward's slots
//! (`q`, `k`, `o`, `gate`, …), each as a [`View`] over the stored tensors: a transposed kernel
//! is a strided view, a slice of a fused `c_attn` or `gate_up` tensor an offset one, a
//! RoPE-permuted projection an index map. Nothing is read here; [`super::read::Reader`]
//! reads a view when the forward multiplies by it. So model code never spells a tensor name:
//! it asks for `layer.q`, and the names, transforms and shapes come from the catalogue
//! ([`super::locate`] binds the checkpoint; [`Slots::assemble`] builds the structs the
//! architecture's traits call for).

use std::collections::HashMap;

use orient_inspect::layout::arch::Slot;
use orient_inspect::layout::view::View;
use orient_inspect::ModelConfig;

use super::encoder::{EncoderLayer, EncoderWeights};
use super::moe::{Expert, MoeWeights, Routing, SharedExpert};
use super::traits::{MlpKind, NormKind, Position, Residual, Traits};
use super::ModelError;

/// A 1-D weight (a norm scale, a bias), read whole when a layer needs it.
#[derive(Clone, Debug)]
pub(crate) struct Vector {
    /// `[len]` over the checkpoint's tensors (source `k` = tensor `k`).
    pub view: View,
    /// What it is, for messages: the canonical name (and slot, for a split tensor).
    pub name: String,
}

/// A 2-D weight `[out, in]`, multiplied by without a copy when the view allows.
#[derive(Clone, Debug)]
pub(crate) struct Matrix {
    /// `[out, in]` over the checkpoint's tensors.
    pub view: View,
    /// Outputs.
    pub out: usize,
    /// Inputs.
    pub inp: usize,
    /// What it is, for messages.
    pub name: String,
}

/// A `[rows, width]` table whose rows are gathered (token and position embeddings).
#[derive(Clone, Debug)]
pub(crate) struct Table {
    /// `[rows, width]` over the checkpoint's tensors.
    pub view: View,
    /// Rows (vocabulary or positions).
    pub rows: usize,
    /// What it is, for messages.
    pub name: String,
}

/// A norm's scale and, for LayerNorm, its bias.
#[derive(Clone, Debug)]
pub(crate) struct Norm {
    /// `[width]`.
    pub weight: Vector,
    /// `[width]`, LayerNorm only.
    pub bias: Option<Vector>,
}

/// A projection and its optional bias.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    /// `[out, in]`.
    pub weight: Matrix,
    /// `[out]`.
    pub bias: Option<Vector>,
}

/// The feed-forward block.
#[derive(Clone, Debug)]
pub(crate) struct Mlp {
    /// `[I, H]`, gated MLPs only.
    pub gate: Option<Linear>,
    /// `[I, H]` (GPT-2's `c_fc`).
    pub up: Linear,
    /// `[H, I]` (GPT-2's `mlp.c_proj`).
    pub down: Linear,
}

/// Everything one decoder layer reads.
#[derive(Clone, Debug)]
pub(crate) struct LayerWeights {
    /// Norm before attention.
    pub attn_norm: Norm,
    /// `[nH·D, H]`.
    pub q: Linear,
    /// `[nKV·D, H]`.
    pub k: Linear,
    /// `[nKV·D, H]`.
    pub v: Linear,
    /// Per-head `[D]` norms on q and k (Qwen3).
    pub qk_norm: Option<(Vector, Vector)>,
    /// `[H, nH·D]`.
    pub o: Linear,
    /// Norm before the MLP.
    pub mlp_norm: Norm,
    /// The dense MLP (`None` in a sparse layer).
    pub mlp: Option<Mlp>,
    /// The sparse mixture of experts that replaces the dense MLP in a sparse layer.
    pub moe: Option<Box<MoeWeights>>,
    /// Norms on the attention and MLP outputs before their residual adds (Gemma 2/3's
    /// `post_attention_layernorm`, `post_feedforward_layernorm`).
    pub post_norms: Option<(Norm, Norm)>,
    /// The checkpoint tensors this layer reads (whose pages are released after it).
    pub tensors: Vec<usize>,
}

/// Every weight of the model.
#[derive(Clone, Debug)]
pub(crate) struct ModelWeights {
    /// `[V, H]` token embedding.
    pub embed: Table,
    /// `[positions, H]` learned positions (GPT-2).
    pub position: Option<Table>,
    /// One per layer.
    pub layers: Vec<LayerWeights>,
    /// The final norm.
    pub final_norm: Norm,
    /// `[V, H]`: the stored head, or the embedding when tied.
    pub lm_head: Matrix,
}

/// View sources are checkpoint tensor indices; the distinct ones of `views`.
fn sources<'a>(views: impl IntoIterator<Item = &'a View>) -> Vec<usize> {
    let mut out: Vec<usize> = views.into_iter().flat_map(View::sources).collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl Norm {
    fn views(&self) -> impl Iterator<Item = &View> {
        std::iter::once(&self.weight.view).chain(self.bias.iter().map(|b| &b.view))
    }
}

impl Linear {
    fn views(&self) -> impl Iterator<Item = &View> {
        std::iter::once(&self.weight.view).chain(self.bias.iter().map(|b| &b.view))
    }
}

impl LayerWeights {
    fn views(&self) -> Vec<&View> {
        let mut v: Vec<&View> = self.attn_norm.views().collect();
        for l in [&self.q, &self.k, &self.v, &self.o] {
            v.extend(l.views());
        }
        if let Some((q, k)) = &self.qk_norm {
            v.extend([&q.view, &k.view]);
        }
        v.extend(self.mlp_norm.views());
        if let Some(mlp) = &self.mlp {
            for l in mlp.gate.iter().chain([&mlp.up, &mlp.down]) {
                v.extend(l.views());
            }
        }
        v.extend(self.moe.iter().flat_map(|m| m.matrices()).map(|m| &m.view));
        if let Some((a, m)) = &self.post_norms {
            v.extend(a.views().chain(m.views()));
        }
        v
    }

    /// Every matrix of the layer.
    pub fn matrices(&self) -> impl Iterator<Item = &Matrix> {
        [&self.q, &self.k, &self.v, &self.o]
            .into_iter()
            .chain(
                self.mlp
                    .iter()
                    .flat_map(|m| m.gate.iter().chain([&m.up, &m.down])),
            )
            .map(|l| &l.weight)
            .chain(self.moe.iter().flat_map(|m| m.matrices()))
    }
}

impl ModelWeights {
    /// The checkpoint tensors of the embedding table.
    pub fn embed_tensors(&self) -> Vec<usize> {
        self.embed.view.sources()
    }

    /// The checkpoint tensors the logits are computed from.
    pub fn head_tensors(&self) -> Vec<usize> {
        self.lm_head.view.sources()
    }

    /// Tensors read outside the layers, the embedding and the head: the final norm, the
    /// position table.
    pub fn other_tensors(&self) -> Vec<usize> {
        let mut views: Vec<&View> = self.final_norm.views().collect();
        views.extend(self.position.iter().map(|p| &p.view));
        let (embed, head) = (self.embed_tensors(), self.head_tensors());
        sources(views)
            .into_iter()
            .filter(|k| !embed.contains(k) && !head.contains(k))
            .collect()
    }

    /// Every checkpoint tensor the forward reads, once each.
    pub fn all_tensors(&self) -> Vec<usize> {
        let mut all = self.embed_tensors();
        all.extend(self.head_tensors());
        all.extend(self.other_tensors());
        for l in &self.layers {
            all.extend(&l.tensors);
        }
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// The weights of a decoder or of an encoder.
#[derive(Clone, Debug)]
pub(crate) enum Weights {
    /// A decoder (every causal LM).
    Decoder(Box<ModelWeights>),
    /// An encoder (BERT).
    Encoder(Box<EncoderWeights>),
}

/// The slot's name in the catalogue's spelling (`q_bias`, `lm_head`).
pub(crate) fn slot_name(slot: Slot) -> String {
    serde_json::to_value(slot)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{slot:?}"))
}

/// Views by (layer, slot), each with a name for messages, and those of the routed experts by
/// (layer, expert, slot); consumed as the typed structs are built.
#[derive(Debug, Default)]
pub(crate) struct Slots(
    HashMap<(Option<usize>, Slot), (View, String)>,
    HashMap<(usize, usize, Slot), (View, String)>,
);

impl Slots {
    /// Adds the view of `slot` (of layer `layer`).
    pub fn insert(&mut self, layer: Option<usize>, slot: Slot, view: View, name: String) {
        self.0.insert((layer, slot), (view, name));
    }

    /// Adds the view of `slot` of routed expert `expert` of layer `layer`.
    pub fn insert_expert(
        &mut self,
        layer: usize,
        expert: usize,
        slot: Slot,
        view: View,
        name: String,
    ) {
        self.1.insert((layer, expert, slot), (view, name));
    }

    fn take(&mut self, layer: Option<usize>, slot: Slot) -> Option<(View, String)> {
        self.0.remove(&(layer, slot))
    }

    fn need(&mut self, layer: Option<usize>, slot: Slot) -> Result<(View, String), ModelError> {
        self.take(layer, slot).ok_or_else(|| {
            ModelError::Internal(format!(
                "the layout catalogue has no tensor for the forward's `{}` slot{}",
                slot_name(slot),
                layer.map_or(String::new(), |l| format!(" of layer {l}"))
            ))
        })
    }

    fn vector(&mut self, layer: Option<usize>, slot: Slot) -> Result<Option<Vector>, ModelError> {
        self.take(layer, slot).map(to_vector).transpose()
    }

    fn need_vector(&mut self, layer: Option<usize>, slot: Slot) -> Result<Vector, ModelError> {
        to_vector(self.need(layer, slot)?)
    }

    fn matrix(&mut self, layer: Option<usize>, slot: Slot) -> Result<Matrix, ModelError> {
        to_matrix(self.need(layer, slot)?)
    }

    fn linear(&mut self, layer: Option<usize>, w: Slot, b: Slot) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: self.matrix(layer, w)?,
            bias: self.vector(layer, b)?,
        })
    }

    fn norm(
        &mut self,
        kind: NormKind,
        layer: Option<usize>,
        w: Slot,
        b: Slot,
    ) -> Result<Norm, ModelError> {
        let weight = self.need_vector(layer, w)?;
        let bias = match kind {
            NormKind::Layer => Some(self.need_vector(layer, b)?),
            NormKind::Rms { .. } => None,
        };
        Ok(Norm { weight, bias })
    }

    fn table(&mut self, layer: Option<usize>, slot: Slot) -> Result<Table, ModelError> {
        let (view, name) = self.need(layer, slot)?;
        match view.shape().as_slice() {
            [rows, _] => Ok(Table {
                rows: *rows,
                view,
                name,
            }),
            other => Err(ModelError::Internal(format!(
                "`{name}` is {other:?}, not a table"
            ))),
        }
    }

    fn layer(
        &mut self,
        i: usize,
        cfg: &ModelConfig,
        traits: &Traits,
    ) -> Result<LayerWeights, ModelError> {
        let l = Some(i);
        let attn_norm = self.norm(traits.norm, l, Slot::AttnNorm, Slot::AttnNormBias)?;
        let q = self.linear(l, Slot::Q, Slot::QBias)?;
        let k = self.linear(l, Slot::K, Slot::KBias)?;
        let v = self.linear(l, Slot::V, Slot::VBias)?;
        let qk_norm = if traits.qk_norm {
            Some((
                self.need_vector(l, Slot::QNorm)?,
                self.need_vector(l, Slot::KNorm)?,
            ))
        } else {
            None
        };
        let o = self.linear(l, Slot::O, Slot::OBias)?;
        let mlp_norm = self.norm(traits.norm, l, Slot::MlpNorm, Slot::MlpNormBias)?;
        let moe = self.moe(i, cfg)?.map(Box::new);
        let mlp = match (&moe, traits.mlp) {
            (Some(_), _) => None,
            (None, MlpKind::Gated) => Some(Mlp {
                gate: Some(self.linear(l, Slot::Gate, Slot::GateBias)?),
                up: self.linear(l, Slot::Up, Slot::UpBias)?,
                down: self.linear(l, Slot::Down, Slot::DownBias)?,
            }),
            (None, MlpKind::Plain) => Some(Mlp {
                gate: None,
                up: self.linear(l, Slot::Up, Slot::UpBias)?,
                down: self.linear(l, Slot::Down, Slot::DownBias)?,
            }),
        };
        let post_norms = match traits.residual {
            Residual::Sandwich => Some((
                self.norm(traits.norm, l, Slot::PostAttnNorm, Slot::PostAttnNormBias)?,
                self.norm(traits.norm, l, Slot::PostMlpNorm, Slot::PostMlpNormBias)?,
            )),
            Residual::Sequential | Residual::Parallel => None,
        };
        let mut layer = LayerWeights {
            attn_norm,
            q,
            k,
            v,
            qk_norm,
            o,
            mlp_norm,
            mlp,
            moe,
            post_norms,
            tensors: Vec::new(),
        };
        layer.tensors = sources(layer.views());
        Ok(layer)
    }

    /// The typed weights `traits` call for; an error names a slot the catalogue left empty.
    pub fn assemble(
        mut self,
        cfg: &ModelConfig,
        traits: &Traits,
    ) -> Result<ModelWeights, ModelError> {
        let embed = self.table(None, Slot::Embed)?;
        let position = match traits.position {
            Position::Learned => Some(self.table(None, Slot::PositionEmbed)?),
            Position::Rotary(_) => None,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| self.layer(i, cfg, traits))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = self.norm(traits.norm, None, Slot::FinalNorm, Slot::FinalNormBias)?;
        let lm_head = match self.take(None, Slot::LmHead) {
            Some(head) => to_matrix(head)?,
            None => to_matrix((embed.view.clone(), embed.name.clone()))?,
        };
        Ok(ModelWeights {
            embed,
            position,
            layers,
            final_norm,
            lm_head,
        })
    }
}

impl Slots {
    /// The sparse block of layer `i`, when the config makes it one: its router, its E experts
    /// (stored one tensor each or packed, the catalogue's views either way) and Qwen2-MoE's
    /// shared expert.
    fn moe(&mut self, i: usize, cfg: &ModelConfig) -> Result<Option<MoeWeights>, ModelError> {
        let Some(moe) = cfg.moe.as_ref().filter(|_| cfg.is_moe_layer(i)) else {
            return Ok(None);
        };
        let l = Some(i);
        let router = self.matrix(l, Slot::Router)?;
        let experts = (0..moe.num_experts)
            .map(|j| {
                let mut slot = |s: Slot| {
                    self.1.remove(&(i, j, s)).ok_or_else(|| {
                        ModelError::Internal(format!(
                            "the layout catalogue has no tensor for the forward's `{}` slot of \
                             expert {j} of layer {i}",
                            slot_name(s)
                        ))
                    })
                };
                Ok(Expert {
                    gate: to_matrix(slot(Slot::ExpertGate)?)?,
                    up: to_matrix(slot(Slot::ExpertUp)?)?,
                    down: to_matrix(slot(Slot::ExpertDown)?)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let shared = match moe.shared_expert_intermediate_size {
            Some(_) => Some(SharedExpert {
                mlp: Expert {
                    gate: self.matrix(l, Slot::SharedGate)?,
                    up: self.matrix(l, Slot::SharedUp)?,
                    down: self.matrix(l, Slot::SharedDown)?,
                },
                gate: self.matrix(l, Slot::SharedExpertGate)?,
            }),
            None => None,
        };
        Ok(Some(MoeWeights {
            router,
            experts,
            shared,
            routing: Routing {
                top_k: moe.top_k,
                renormalise: moe.norm_topk_prob,
            },
        }))
    }
}

impl Slots {
    /// The typed weights of an encoder (BERT): embeddings with token types and their
    /// LayerNorm, post-LayerNorm layers, the optional pooler.
    pub fn encoder(mut self, cfg: &ModelConfig) -> Result<EncoderWeights, ModelError> {
        let layer_norm = NormKind::Layer;
        let embed = self.table(None, Slot::Embed)?;
        let position = self.table(None, Slot::PositionEmbed)?;
        let token_type = self.table(None, Slot::TokenTypeEmbed)?;
        let embed_norm = self.norm(layer_norm, None, Slot::EmbedNorm, Slot::EmbedNormBias)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = Some(i);
                let mut layer = EncoderLayer {
                    q: self.linear(l, Slot::Q, Slot::QBias)?,
                    k: self.linear(l, Slot::K, Slot::KBias)?,
                    v: self.linear(l, Slot::V, Slot::VBias)?,
                    o: self.linear(l, Slot::O, Slot::OBias)?,
                    attn_norm: self.norm(
                        layer_norm,
                        l,
                        Slot::PostAttnNorm,
                        Slot::PostAttnNormBias,
                    )?,
                    up: self.linear(l, Slot::Up, Slot::UpBias)?,
                    down: self.linear(l, Slot::Down, Slot::DownBias)?,
                    mlp_norm: self.norm(layer_norm, l, Slot::PostMlpNorm, Slot::PostMlpNormBias)?,
                    tensors: Vec::new(),
                };
                layer.tensors = sources(layer.views());
                Ok(layer)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let pooler = match self.take(None, Slot::Pooler) {
            Some(weight) => Some(Linear {
                weight: to_matrix(weight)?,
                bias: self.vector(None, Slot::PoolerBias)?,
            }),
            None => None,
        };
        Ok(EncoderWeights {
            embed,
            position,
            token_type,
            embed_norm,
            layers,
            pooler,
        })
    }
}

fn to_vector((view, name): (View, String)) -> Result<Vector, ModelError> {
    match view.ndim() {
        1 => Ok(Vector { view, name }),
        _ => Err(ModelError::Internal(format!(
            "`{name}` is {:?}, not a vector",
            view.shape()
        ))),
    }
}

fn to_matrix((view, name): (View, String)) -> Result<Matrix, ModelError> {
    match view.shape().as_slice() {
        [out, inp] => Ok(Matrix {
            out: *out,
            inp: *inp,
            view,
            name,
        }),
        other => Err(ModelError::Internal(format!(
            "`{name}` is {other:?}, not a matrix"
        ))),
    }
}
