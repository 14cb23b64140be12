//! The model's weights as the forward sees them: typed per-layer structs of lazy views, built
//! once from the layout catalogue.
//!
//! Why views: whatever convention a checkpoint is stored in (HF, Flax, a user's layout file),
//! the catalogue binds its tensors to canonical entries and the entries to the forward's slots
//! (`q`, `k`, `o`, `gate`, …), each as a [`View`] over the stored tensors: a transposed kernel
//! is a strided view, a slice of a fused `c_attn` or `gate_up` tensor an offset one, a
//! RoPE-permuted projection an index map. Nothing is read here; [`super::read::Reader`]
//! reads a view when the forward multiplies by it. So model code never spells a tensor name:
//! it asks for `layer.q`, and the names, transforms and shapes come from the catalogue.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use orient_inspect::layout::arch::{Role, Slot};
use orient_inspect::layout::catalogue::{Catalogue, ConvId, HF};
use orient_inspect::layout::convention::Convention;
use orient_inspect::layout::resolve::{BindError, ReadTransposed, Verdict};
use orient_inspect::layout::view::View;
use orient_inspect::{Checkpoint, ModelConfig};

use super::traits::{MlpKind, NormKind, Position, Traits};
use super::{LoadNote, ModelError, ShapeMismatch};

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
    /// The MLP.
    pub mlp: Mlp,
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
        for l in self.mlp.gate.iter().chain([&self.mlp.up, &self.mlp.down]) {
            v.extend(l.views());
        }
        v
    }

    /// Every matrix of the layer.
    pub fn matrices(&self) -> impl Iterator<Item = &Matrix> {
        [&self.q, &self.k, &self.v, &self.o]
            .into_iter()
            .chain(self.mlp.gate.as_ref())
            .chain([&self.mlp.up, &self.mlp.down])
            .map(|l| &l.weight)
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

/// The weights of a checkpoint, what loading noticed, and the convention they were read in.
#[derive(Debug)]
pub(crate) struct Located {
    /// The typed weights.
    pub weights: ModelWeights,
    /// Notes, in tensor order, then the lm_head's.
    pub notes: Vec<LoadNote>,
    /// Name of the convention the checkpoint was bound in.
    pub convention: String,
}

/// The convention a checkpoint is read in: the one the detector finds, else the user's
/// layout file, else the one with the most names of its own (HF on a tie or without
/// evidence).
fn choose_convention(
    cat: &Catalogue,
    tensors: &[(&str, &[usize])],
    layouts: &[Arc<Convention>],
) -> ConvId {
    let candidates: Vec<ConvId> = (0..cat.conventions().len()).collect();
    let detection = cat.detect(tensors, &candidates);
    let layout = layouts.last().and_then(|l| cat.convention_id(&l.name));
    match (&detection.verdict, layout) {
        (Verdict::One(c), _) => *c,
        (_, Some(l)) => l,
        _ => detection
            .only_names
            .iter()
            .filter(|(_, n)| *n > 0)
            .max_by_key(|(c, n)| (*n, std::cmp::Reverse(*c)))
            .map_or(HF, |(c, _)| *c),
    }
}

/// Binds every tensor of `ckpt` through the catalogue of `cfg` (built-in conventions plus
/// `layouts`), checks names, shapes and dtypes, and builds the typed weights `traits` need.
/// Nothing is read.
pub(crate) fn locate(
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    traits: &Traits,
    layouts: &[Arc<Convention>],
) -> Result<Located, ModelError> {
    let path = ckpt.root().display().to_string();
    let cat = Catalogue::for_model(cfg, layouts).map_err(|source| ModelError::Layout {
        path: path.clone(),
        source,
    })?;
    let tensors = ckpt.tensors();
    let pairs: Vec<(&str, &[usize])> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    let conv = choose_convention(&cat, &pairs, layouts);
    let convention = cat.conventions()[conv].name.clone();
    let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
    let binding = cat.bind(&names, conv);
    if let Some(&(a, b)) = binding.duplicates.first() {
        let canonical = binding.hits[a]
            .and_then(|h| cat.forms()[h.form].entries.get(h.member)?.get(h.part).copied())
            .map_or_else(|| names[a].to_string(), |e| cat.entries()[e].name.clone());
        return Err(ModelError::DuplicateTensor {
            path,
            canonical,
            first: names[a].to_string(),
            second: names[b].to_string(),
        });
    }

    // Per tensor: unknown names are noted, weights of a dtype the forward cannot read refused.
    let mut notes: BTreeMap<usize, LoadNote> = BTreeMap::new();
    let mut bound = 0usize;
    for (k, (t, hit)) in tensors.iter().zip(&binding.hits).enumerate() {
        let Some(h) = hit else {
            notes.insert(
                k,
                LoadNote::Ignored {
                    name: t.name.clone(),
                },
            );
            continue;
        };
        let is_buffer = cat.forms()[h.form]
            .entries
            .iter()
            .flatten()
            .all(|&e| cat.entries()[e].role == Role::Buffer);
        if is_buffer {
            continue;
        }
        bound += 1;
        if !t.dtype.is_computable() {
            return Err(ModelError::UnsupportedDtype {
                path,
                name: t.name.clone(),
                dtype: t.dtype.name(),
            });
        }
    }
    if bound == 0 {
        return Err(ModelError::NoKnownTensors {
            path,
            tensors: tensors.len(),
            example: names.first().map(|n| n.to_string()).unwrap_or_default(),
            arch: cfg.arch.model_type().to_string(),
            conventions: cat
                .conventions()
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }

    // Every bound weight's canonical view: checks each stored shape (a 2-D tensor stored as
    // the exact transpose of its expected shape is read transposed, and noted).
    let shapes: Vec<&[usize]> = pairs.iter().map(|(_, s)| *s).collect();
    let mut canonical: Vec<Option<View>> = vec![None; cat.entries().len()];
    for (e, entry) in cat.entries().iter().enumerate() {
        if !entry.is_weight() {
            continue;
        }
        let conv_of = |f: Option<usize>| {
            f.map_or(convention.clone(), |f| {
                cat.conventions()[cat.forms()[f].convention].name.clone()
            })
        };
        match binding.entry_view(&cat, e, &shapes) {
            Ok(Some((view, transposed))) => {
                canonical[e] = Some(view);
                for ReadTransposed {
                    tensor,
                    found,
                    expected,
                } in transposed
                {
                    notes.insert(
                        tensor,
                        LoadNote::ReadTransposed {
                            name: names[tensor].to_string(),
                            found,
                            expected,
                        },
                    );
                }
            }
            Ok(None) => {}
            Err(BindError::Shape {
                tensor,
                found,
                expected,
            }) => {
                return Err(ModelError::ShapeMismatch(Box::new(ShapeMismatch {
                    path,
                    name: names[tensor].to_string(),
                    found,
                    expected,
                    formula: entry.shape_formula.clone(),
                    convention: conv_of(binding.entry_form[e]),
                })))
            }
            Err(BindError::Missing { name }) => {
                return Err(ModelError::MissingTensor {
                    path,
                    name,
                    canonical: entry.name.clone(),
                    convention: conv_of(binding.entry_form[e]),
                })
            }
            Err(BindError::Transform(source)) => {
                return Err(ModelError::Internal(format!(
                    "reading `{}` through its layout: {source}",
                    entry.name
                )))
            }
        }
    }
    let mut notes: Vec<LoadNote> = notes.into_values().collect();

    // Required entries that are absent. A missing lm_head is never fatal: the embedding is
    // the only sensible head (what a tied model uses).
    for (e, entry) in cat.entries().iter().enumerate() {
        if entry.is_weight()
            && entry.optional.is_none()
            && entry.role != Role::LmHead
            && canonical[e].is_none()
        {
            let stored = cat
                .stored(e, conv)
                .map_or_else(|| entry.name.clone(), |s| s.name.clone());
            return Err(ModelError::MissingTensor {
                path,
                name: stored,
                canonical: entry.name.clone(),
                convention,
            });
        }
    }

    // Tied embeddings: compute the logits as the framework that loads the stored layout does.
    // PyTorch ignores a stored head (logits from the embedding); a convention whose framework
    // always owns a head (the Flax llama family: `Form::tied_stored`) uses it. A head that
    // differs from the embedding then gives different logits, as in the two frameworks.
    let head_entry = cat.entries().iter().position(|e| e.role == Role::LmHead);
    if let Some(h) = head_entry {
        let stored_head = binding.entry_form[h].filter(|_| canonical[h].is_some());
        match (cfg.tie_word_embeddings, stored_head) {
            (true, Some(f)) if cat.forms()[f].tied_stored => {
                let name = binding.forms[&f]
                    .iter()
                    .flatten()
                    .flatten()
                    .next()
                    .map_or_else(|| cat.entries()[h].name.clone(), |&k| names[k].to_string());
                notes.push(LoadNote::TiedButOwnLmHead { name });
            }
            (true, Some(_)) => {
                canonical[h] = None;
                notes.push(LoadNote::TiedLmHeadIgnored);
            }
            (true, None) => notes.push(LoadNote::Tied),
            (false, Some(_)) => {}
            (false, None) => notes.push(LoadNote::UntiedButNoLmHead),
        }
    }

    // Entries → the forward's slots (a fused tensor feeds several).
    let mut slots = Slots::default();
    for (e, view) in canonical.into_iter().enumerate() {
        let Some(view) = view else { continue };
        let entry = &cat.entries()[e];
        let views = cat.slot_views(e, view).map_err(|source| {
            ModelError::Internal(format!("deriving the forward's slots of `{}`: {source}", entry.name))
        })?;
        let several = views.len() > 1;
        for (slot, v) in views {
            let name = if several {
                format!("{} ({})", entry.name, slot_name(slot))
            } else {
                entry.name.clone()
            };
            slots.0.insert((entry.layer, slot), (v, name));
        }
    }
    let weights = slots.assemble(cfg, traits)?;
    Ok(Located {
        weights,
        notes,
        convention,
    })
}

/// The slot's name in the catalogue's spelling (`q_bias`, `lm_head`).
fn slot_name(slot: Slot) -> String {
    serde_json::to_value(slot)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{slot:?}"))
}

/// Views by (layer, slot), consumed as the typed structs are built.
#[derive(Default)]
struct Slots(HashMap<(Option<usize>, Slot), (View, String)>);

impl Slots {
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
            other => Err(ModelError::Internal(format!("`{name}` is {other:?}, not a table"))),
        }
    }

    fn layer(&mut self, i: usize, traits: &Traits) -> Result<LayerWeights, ModelError> {
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
        let gate = match traits.mlp {
            MlpKind::Gated => Some(self.linear(l, Slot::Gate, Slot::GateBias)?),
            MlpKind::Plain => None,
        };
        let mlp = Mlp {
            gate,
            up: self.linear(l, Slot::Up, Slot::UpBias)?,
            down: self.linear(l, Slot::Down, Slot::DownBias)?,
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
            tensors: Vec::new(),
        };
        layer.tensors = sources(layer.views());
        Ok(layer)
    }

    fn assemble(mut self, cfg: &ModelConfig, traits: &Traits) -> Result<ModelWeights, ModelError> {
        let embed = self.table(None, Slot::Embed)?;
        let position = match traits.position {
            Position::Learned => Some(self.table(None, Slot::PositionEmbed)?),
            Position::Rotary(_) => None,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| self.layer(i, traits))
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
