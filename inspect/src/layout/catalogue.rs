//! One catalogue for every command: the canonical tensors of a concrete model, how each
//! convention stores them, an index from every stored spelling back to them, the one convention
//! detector, and the binding of a checkpoint's tensors to canonical views.
//!
//! [`Catalogue::new`] expands the canonical templates for a config, then, for each convention,
//! runs its rules over the canonical entries to get [`Form`]s: a group of canonical entries, the
//! stored tensors they become, and the [`Chain`] between them. Everything downstream reads these
//! forms: inspect compares stored shapes, convert composes one convention's inverse chain with
//! another's chain, the forward and diff read canonical tensors through views.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Arch, ModelConfig};
use crate::layout::arch::{self, Entry, Role, Slot};
use crate::layout::convention::{self, Captures, Convention, Rule, StoredAs};
use crate::layout::file::LayoutError;
use crate::layout::transform::{Chain, Group, TransformError, TransformSpec};
use crate::layout::view::View;

/// Index of a convention in [`Catalogue::conventions`].
pub type ConvId = usize;

/// The built-in HF convention's id in a catalogue made by [`Catalogue::new`].
pub const HF: ConvId = 0;
/// The built-in Flax convention's id in a catalogue made by [`Catalogue::new`].
pub const FLAX: ConvId = 1;

/// One stored tensor of a form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredTensor {
    /// Name in the convention (no read prefix).
    pub name: String,
    /// Shape in the convention.
    pub shape: Vec<usize>,
}

/// How a group of canonical entries is stored in one convention.
#[derive(Debug, Clone, PartialEq)]
pub struct Form {
    /// The convention.
    pub convention: ConvId,
    /// Canonical entries (members × parts).
    pub entries: Group<usize>,
    /// Stored tensors (members × parts); empty when the convention does not store them.
    pub stored: Group<StoredTensor>,
    /// Canonical → stored.
    pub chain: Chain,
    /// The stored layout in words.
    pub layout: String,
    /// A tied lm_head is stored anyway in this convention.
    pub tied_stored: bool,
    /// The rule that made it (file, line); `None` for the default (stored as canonical).
    pub origin: Option<(String, usize)>,
}

impl Form {
    /// True when one canonical tensor is stored as one tensor.
    pub fn is_one_to_one(&self) -> bool {
        self.entries.len() == 1
            && self.entries[0].len() == 1
            && self.stored.len() == 1
            && self.stored[0].len() == 1
    }

    /// The single stored tensor of a one-to-one form.
    pub fn single(&self) -> Option<&StoredTensor> {
        if self.stored.len() == 1 && self.stored[0].len() == 1 {
            self.stored[0].first()
        } else {
            None
        }
    }

    /// Every stored tensor, in order.
    pub fn stored_tensors(&self) -> impl Iterator<Item = &StoredTensor> {
        self.stored.iter().flatten()
    }

    /// True when the chain is a transpose alone (what tells HF from Flax for a projection).
    pub fn is_transposed(&self) -> bool {
        matches!(self.chain.steps.as_slice(), [s] if s.transform.kind() == "transpose")
    }
}

/// Which spelling of a stored name matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// The name as the convention writes it.
    Bare,
    /// With a read prefix (`params.`).
    ParamsPrefixed,
    /// Without the base-model prefix (`transformer.` for GPT-2, `model.` for the llama family).
    NoBasePrefix,
    /// With a read prefix and without the base prefix (a flattened `FlaxGPT2Model` tree).
    ParamsNoBasePrefix,
}

/// One place a stored name fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// Index into [`Catalogue::forms`].
    pub form: usize,
    /// Member of the form's stored group.
    pub member: usize,
    /// Part of that member.
    pub part: usize,
    /// Spelling.
    pub variant: Variant,
}

/// The result of [`Catalogue::resolve`]: the first place a name fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NameMatch {
    /// The first canonical entry of the form (the entry itself for one-to-one forms).
    pub entry: usize,
    /// Index into [`Catalogue::forms`].
    pub form: usize,
    /// The convention the name belongs to (the first one, when `shared`).
    pub convention: ConvId,
    /// Which spelling matched.
    pub variant: Variant,
    /// Several conventions spell this tensor identically (norm weights, biases), so the name
    /// says nothing about the convention.
    pub shared: bool,
}

/// Why a catalogue cannot be built for a config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CatalogueError {
    /// A layout file (a rule or the canonical table) does not fit this model.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Two canonical tensors would be stored under one name.
    #[error("convention `{convention}`: `{name}` would store both `{first}` and `{second}`")]
    NameClash {
        /// Convention.
        convention: String,
        /// The stored name.
        name: String,
        /// First canonical tensor.
        first: String,
        /// Second canonical tensor.
        second: String,
    },
}

/// The expected tensors of one concrete model, in every convention.
#[derive(Debug, Clone)]
pub struct Catalogue {
    config: ModelConfig,
    entries: Vec<Entry>,
    conventions: Vec<Arc<Convention>>,
    forms: Vec<Form>,
    /// `[convention][entry]` → form.
    entry_forms: Vec<Vec<Option<usize>>>,
    index: HashMap<String, Vec<Hit>>,
    /// Per entry: canonical → forward slots.
    derive: Vec<Chain>,
}

/// The prefix of the base model's names, which base-model saves and hub GPT-2 files drop.
pub fn base_prefix(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 => "transformer.",
        Arch::GptNeox => "gpt_neox.",
        Arch::Bert => "bert.",
        _ => "model.",
    }
}

impl Catalogue {
    /// The catalogue of `cfg` in the built-in conventions (hf, flax).
    ///
    /// # Panics
    /// Only if the built-in layout files do not fit a config that `parse_config` accepted, a
    /// defect every test would show.
    pub fn new(cfg: &ModelConfig) -> Catalogue {
        Catalogue::with_conventions(cfg, convention::builtins().to_vec())
            .unwrap_or_else(|e| panic!("built-in layouts: {e}"))
    }

    /// The catalogue of `cfg` in the built-in conventions and the user layouts `extra`.
    pub fn for_model(
        cfg: &ModelConfig,
        extra: &[Arc<Convention>],
    ) -> Result<Catalogue, CatalogueError> {
        let mut all = convention::builtins().to_vec();
        all.extend(extra.iter().cloned());
        Catalogue::with_conventions(cfg, all)
    }

    /// The catalogue of `cfg` in `conventions` (built-ins first, by convention). Conventions
    /// restricted to other architectures (`archs` in their header, e.g. hf-packed) are left
    /// out, so the built-in ids [`HF`] and [`FLAX`] hold for every model.
    pub fn with_conventions(
        cfg: &ModelConfig,
        mut conventions: Vec<Arc<Convention>>,
    ) -> Result<Catalogue, CatalogueError> {
        conventions.retain(|c| c.archs.as_ref().is_none_or(|a| a.contains(&cfg.arch)));
        let templates = arch::builtin_templates();
        let entries = arch::expand(templates, cfg)?;
        let derive = entries
            .iter()
            .map(|e| {
                let t = &templates[e.template];
                Chain::resolve(&t.derive, cfg, vec![vec![e.shape.clone()]]).map_err(|err| {
                    chain_error("built-in canonical.toml", None, &e.name, "derive", err)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let by_name: HashMap<&str, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        let mut forms = Vec::new();
        let mut entry_forms = Vec::new();
        for (c, conv) in conventions.iter().enumerate() {
            let mut assigned: Vec<Option<usize>> = vec![None; entries.len()];
            for e in 0..entries.len() {
                if assigned[e].is_some() {
                    continue;
                }
                let form = conv
                    .rules
                    .iter()
                    .find_map(|r| try_rule(r, c, e, &entries, &by_name, cfg).transpose())
                    .transpose()?
                    .unwrap_or_else(|| identity_form(c, e, &entries[e]));
                for &k in form.entries.iter().flatten() {
                    assigned[k] = Some(forms.len());
                }
                forms.push(form);
            }
            entry_forms.push(assigned);
        }
        let mut cat = Catalogue {
            config: cfg.clone(),
            entries,
            conventions,
            forms,
            entry_forms,
            index: HashMap::new(),
            derive,
        };
        cat.build_index()?;
        Ok(cat)
    }

    fn build_index(&mut self) -> Result<(), CatalogueError> {
        let prefix = base_prefix(self.config.arch);
        let mut index: HashMap<String, Vec<Hit>> = HashMap::new();
        for (f, form) in self.forms.iter().enumerate() {
            let conv = &self.conventions[form.convention];
            for (m, member) in form.stored.iter().enumerate() {
                for (p, st) in member.iter().enumerate() {
                    let mut spellings = vec![(st.name.clone(), Variant::Bare)];
                    let stripped = conv
                        .strip_base_prefix
                        .then(|| st.name.strip_prefix(prefix))
                        .flatten();
                    if let Some(rest) = stripped {
                        spellings.push((rest.to_string(), Variant::NoBasePrefix));
                    }
                    for rp in &conv.read_prefixes {
                        spellings.push((format!("{rp}{}", st.name), Variant::ParamsPrefixed));
                        if let Some(rest) = stripped {
                            spellings.push((format!("{rp}{rest}"), Variant::ParamsNoBasePrefix));
                        }
                    }
                    for (name, variant) in spellings {
                        let hits = index.entry(name.clone()).or_default();
                        // Within one convention a name may stand for one tensor only.
                        if let Some(h) = hits.iter().find(|h| {
                            self.forms[h.form].convention == form.convention
                                && (h.form, h.member, h.part) != (f, m, p)
                        }) {
                            if h.variant == Variant::Bare || variant == Variant::Bare {
                                let other = &self.forms[h.form];
                                return Err(CatalogueError::NameClash {
                                    convention: conv.name.clone(),
                                    name,
                                    first: self.entries[other.entries[0][0]].name.clone(),
                                    second: self.entries[form.entries[0][0]].name.clone(),
                                });
                            }
                            continue;
                        }
                        hits.push(Hit {
                            form: f,
                            member: m,
                            part: p,
                            variant,
                        });
                    }
                }
            }
        }
        self.index = index;
        Ok(())
    }

    /// The resolved config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The architecture this catalogue was built for.
    pub fn arch(&self) -> Arch {
        self.config.arch
    }

    /// All canonical tensors, in model order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The conventions, in order.
    pub fn conventions(&self) -> &[Arc<Convention>] {
        &self.conventions
    }

    /// The convention named `name`.
    pub fn convention_id(&self, name: &str) -> Option<ConvId> {
        self.conventions.iter().position(|c| c.name == name)
    }

    /// Every form of every convention.
    pub fn forms(&self) -> &[Form] {
        &self.forms
    }

    /// The form storing `entry` in convention `c`.
    pub fn form_of(&self, entry: usize, c: ConvId) -> Option<&Form> {
        self.entry_forms
            .get(c)
            .and_then(|v| v.get(entry).copied().flatten())
            .map(|f| &self.forms[f])
    }

    /// Index of the form storing `entry` in convention `c`.
    pub fn form_index(&self, entry: usize, c: ConvId) -> Option<usize> {
        self.entry_forms
            .get(c)
            .and_then(|v| v.get(entry).copied().flatten())
    }

    /// The stored tensor of `entry` in convention `c` when it is stored one-to-one.
    pub fn stored(&self, entry: usize, c: ConvId) -> Option<&StoredTensor> {
        self.form_of(entry, c)
            .filter(|f| f.is_one_to_one())
            .and_then(Form::single)
    }

    /// Why `entry` may be absent from a checkpoint in convention `c` (`None`: required). A tied
    /// lm_head is required where the convention stores it anyway.
    pub fn optional(&self, entry: usize, c: ConvId) -> Option<&str> {
        let e = &self.entries[entry];
        if e.tied && self.form_of(entry, c).is_some_and(|f| f.tied_stored) {
            return None;
        }
        e.optional.as_deref()
    }

    /// Canonical → forward slots of `entry`.
    pub fn derive(&self, entry: usize) -> &Chain {
        &self.derive[entry]
    }

    /// Every place `name` fits, in convention order.
    pub fn hits(&self, name: &str) -> &[Hit] {
        self.index.get(name).map_or(&[], Vec::as_slice)
    }

    /// The convention, entry and spelling a stored name stands for; `None` if the name is not
    /// part of this model's layout in any convention.
    pub fn resolve(&self, name: &str) -> Option<NameMatch> {
        let hits = self.hits(name);
        let first = hits.first()?;
        let form = &self.forms[first.form];
        let entry = form
            .entries
            .get(first.member)
            .and_then(|m| m.get(first.part).or(m.first()))
            .or_else(|| form.entries.first().and_then(|m| m.first()))
            .copied()
            .unwrap_or(0);
        let shared = hits.iter().any(|h| {
            let f = &self.forms[h.form];
            f.convention != form.convention && f.entries == form.entries
        });
        Some(NameMatch {
            entry,
            form: first.form,
            convention: form.convention,
            variant: first.variant,
            shared,
        })
    }

    /// The canonical entries the forward reads for `slot` (with the derive chain's output index).
    pub fn slot_entries(&self, layer: Option<usize>, slot: Slot) -> Option<(usize, usize)> {
        self.entries.iter().enumerate().find_map(|(i, e)| {
            (e.layer == layer)
                .then(|| e.slots.iter().position(|s| *s == slot).map(|k| (i, k)))
                .flatten()
        })
    }
}

fn chain_error(
    file: &str,
    line: Option<usize>,
    tensor: &str,
    field: &str,
    err: TransformError,
) -> CatalogueError {
    CatalogueError::Layout(LayoutError {
        file: file.to_string(),
        line,
        field: Some(field.to_string()),
        message: format!("for `{tensor}`: {}", crate::error::chain(&err)),
    })
}

fn identity_form(c: ConvId, e: usize, entry: &Entry) -> Form {
    Form {
        convention: c,
        entries: vec![vec![e]],
        stored: vec![vec![StoredTensor {
            name: entry.name.clone(),
            shape: entry.shape.clone(),
        }]],
        chain: Chain::default(),
        layout: entry.layout.clone(),
        tied_stored: false,
        origin: None,
    }
}

/// The form rule `r` makes for entry `e`, if it applies.
fn try_rule(
    r: &Rule,
    c: ConvId,
    e: usize,
    entries: &[Entry],
    by_name: &HashMap<&str, usize>,
    cfg: &ModelConfig,
) -> Result<Option<Form>, CatalogueError> {
    let entry = &entries[e];
    if r.roles.as_ref().is_some_and(|rs| !rs.contains(&entry.role))
        || r.archs.as_ref().is_some_and(|a| !a.contains(&cfg.arch))
    {
        return Ok(None);
    }
    let layout = |default: String| r.layout.clone().unwrap_or(default);
    if r.canonical.is_empty() {
        // Filters only: an omission rule.
        return Ok(Some(Form {
            convention: c,
            entries: vec![vec![e]],
            stored: Vec::new(),
            chain: Chain::default(),
            layout: layout(entry.layout.clone()),
            tied_stored: r.tied_stored,
            origin: Some(r.origin.clone()),
        }));
    }
    // Which part `e` is, and the captures.
    let Some((_, caps)) = r
        .canonical
        .iter()
        .enumerate()
        .find_map(|(k, p)| p.matches(&entry.name).map(|caps| (k, caps)))
    else {
        return Ok(None);
    };
    let stored_vars: Vec<String> = match &r.stored {
        StoredAs::Names(ps) => ps.iter().flat_map(|p| p.vars()).map(String::from).collect(),
        StoredAs::Omitted => Vec::new(),
    };
    // `{j}` captured canonically but absent from the stored names: the experts are stacked.
    let family = caps.iter().any(|(k, _)| k == "j")
        && !stored_vars.iter().any(|v| v == "j")
        && !matches!(r.stored, StoredAs::Omitted);
    let member_caps: Vec<Captures> = if family {
        let mut js: Vec<usize> = entries
            .iter()
            .filter_map(|x| {
                let cx = r.canonical.iter().find_map(|p| p.matches(&x.name))?;
                let same = cx
                    .iter()
                    .all(|(k, v)| k == "j" || caps.iter().any(|(k2, v2)| k2 == k && v2 == v));
                if !same {
                    return None;
                }
                cx.iter()
                    .find(|(k, _)| k == "j")
                    .and_then(|(_, v)| v.parse().ok())
            })
            .collect();
        js.sort_unstable();
        js.dedup();
        if js.iter().enumerate().any(|(k, &j)| k != j) {
            return Ok(None);
        }
        js.iter()
            .map(|j| {
                caps.iter()
                    .map(|(k, v)| (k.clone(), if k == "j" { j.to_string() } else { v.clone() }))
                    .collect()
            })
            .collect()
    } else {
        vec![caps.clone()]
    };
    // Every part of every member must be a canonical entry of this model.
    let mut group: Group<usize> = Vec::new();
    for mc in &member_caps {
        let mut parts = Vec::new();
        for p in &r.canonical {
            let Some(name) = p.fill(mc) else {
                return Ok(None);
            };
            let Some(&k) = by_name.get(name.as_str()) else {
                return Ok(None);
            };
            parts.push(k);
        }
        group.push(parts);
    }
    let origin = Some(r.origin.clone());
    let names = match &r.stored {
        StoredAs::Omitted => {
            return Ok(Some(Form {
                convention: c,
                entries: group,
                stored: Vec::new(),
                chain: Chain::default(),
                layout: layout(entry.layout.clone()),
                tied_stored: r.tied_stored,
                origin,
            }))
        }
        StoredAs::Names(ns) => ns,
    };
    let shapes: Group<Vec<usize>> = group
        .iter()
        .map(|m| m.iter().map(|&k| entries[k].shape.clone()).collect())
        .collect();
    let chain = Chain::resolve(&r.transforms, cfg, shapes.clone()).map_err(|err| {
        chain_error(
            &r.origin.0,
            Some(r.origin.1),
            &entry.name,
            "transforms",
            err,
        )
    })?;
    let out = chain.output().cloned().unwrap_or(shapes);
    let unstacked = stored_vars.iter().any(|v| v == "j") && !caps.iter().any(|(k, _)| k == "j");
    let fits = out.iter().all(|m| m.len() == names.len()) && (unstacked || out.len() == 1);
    if !fits {
        return Err(chain_error(
            &r.origin.0,
            Some(r.origin.1),
            &entry.name,
            "stored",
            TransformError::Shape {
                transform: chain.describe(),
                shapes: format!("{out:?}"),
                problem: format!(
                    "the transforms make {} tensor(s) of {} part(s), but `stored` names {}",
                    out.len(),
                    out.first().map_or(0, Vec::len),
                    names.len()
                ),
            },
        ));
    }
    let stored = out
        .iter()
        .enumerate()
        .map(|(j, m)| {
            let mut mc = caps.clone();
            if unstacked {
                mc.push(("j".into(), j.to_string()));
            }
            m.iter()
                .zip(names)
                .map(|(shape, p)| StoredTensor {
                    name: p.fill(&mc).unwrap_or_else(|| p.text.clone()),
                    shape: shape.clone(),
                })
                .collect()
        })
        .collect();
    Ok(Some(Form {
        convention: c,
        entries: group,
        stored,
        layout: layout(if chain.is_identity() {
            entry.layout.clone()
        } else {
            chain.describe()
        }),
        chain,
        tied_stored: r.tied_stored,
        origin,
    }))
}

/// Resolves a transform chain from specs, for callers outside the catalogue (tests, synth).
pub fn resolve_chain(
    specs: &[TransformSpec],
    cfg: &ModelConfig,
    shapes: Group<Vec<usize>>,
) -> Result<Chain, TransformError> {
    Chain::resolve(specs, cfg, shapes)
}

/// A view of every stored tensor of `form`, given where each one is among the caller's sources
/// (`None`: absent) and its actual shape. A 2-D tensor stored as the exact transpose of its
/// expected shape is read transposed (what a shape-trusting loader does; the caller reports it).
pub fn stored_views(
    form: &Form,
    present: &Group<Option<(usize, Vec<usize>)>>,
) -> Option<Group<View>> {
    form.stored
        .iter()
        .zip(present)
        .map(|(m, pm)| {
            m.iter()
                .zip(pm)
                .map(|(st, p)| {
                    let (src, shape) = p.as_ref()?;
                    if *shape == st.shape {
                        Some(View::contiguous(*src, shape))
                    } else if shape.len() == 2 && shape[0] == st.shape[1] && shape[1] == st.shape[0]
                    {
                        View::contiguous(*src, shape).transpose_last().ok()
                    } else {
                        None
                    }
                })
                .collect()
        })
        .collect()
}

impl Catalogue {
    /// The canonical views of a form's entries from views of its stored tensors (the inverse
    /// chain), members × parts like [`Form::entries`].
    pub fn canonical_views(
        &self,
        form: usize,
        stored: Group<View>,
    ) -> Result<Group<View>, TransformError> {
        self.forms[form].chain.inverse().apply(stored)
    }

    /// The stored views of a form in convention terms from canonical views of its entries.
    pub fn to_stored(
        &self,
        form: usize,
        canonical: Group<View>,
    ) -> Result<Group<View>, TransformError> {
        self.forms[form].chain.apply(canonical)
    }

    /// Views of the forward slots of `entry` from its canonical view, in slot order.
    pub fn slot_views(
        &self,
        entry: usize,
        canonical: View,
    ) -> Result<Vec<(Slot, View)>, TransformError> {
        let out = self.derive[entry].apply(vec![vec![canonical]])?;
        Ok(self.entries[entry]
            .slots
            .iter()
            .copied()
            .zip(out.into_iter().flatten())
            .collect())
    }

    /// True when `role` entries exist whose stored shape differs between conventions `a`
    /// and `b`.
    pub fn differ(&self, entry: usize, a: ConvId, b: ConvId) -> bool {
        match (self.form_of(entry, a), self.form_of(entry, b)) {
            (Some(x), Some(y)) => x.chain != y.chain,
            _ => false,
        }
    }
}

/// Roles whose tensors carry orientation evidence.
pub fn is_projection(role: Role) -> bool {
    role.is_projection()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{parse_config, ConfigOutcome};
    use crate::layout::arch::Component;
    use crate::layout::file::Source;
    use crate::layout::view::collect;

    fn cfg(json: &str) -> ModelConfig {
        match parse_config(json).unwrap() {
            ConfigOutcome::Known(c) => c,
            other => panic!("{other:?}"),
        }
    }

    /// The tiny llama-family config of the fixtures, with `extra` fields appended.
    fn tiny(model_type: &str, extra: &str) -> ModelConfig {
        cfg(&format!(
            r#"{{"model_type": "{model_type}", "hidden_size": 64, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 176, "num_hidden_layers": 2,
                "vocab_size": 512, "max_position_embeddings": 256{extra}}}"#
        ))
    }

    fn tiny_gpt2(extra: &str) -> ModelConfig {
        cfg(&format!(
            r#"{{"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": null,
                "n_positions": 256, "vocab_size": 512{extra}}}"#
        ))
    }

    /// (stored name, stored shape) of every entry stored one-to-one in `c`, in model order.
    fn listing(cat: &Catalogue, c: ConvId) -> Vec<(String, Vec<usize>)> {
        (0..cat.entries().len())
            .filter_map(|e| cat.stored(e, c).map(|s| (s.name.clone(), s.shape.clone())))
            .collect()
    }

    fn llama_layer_hf(
        i: usize,
        q: usize,
        kv: usize,
        bias: bool,
        qk: Option<usize>,
    ) -> Vec<(String, Vec<usize>)> {
        let p = format!("model.layers.{i}");
        let mut v = vec![
            (format!("{p}.input_layernorm.weight"), vec![64]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, 64]),
        ];
        if bias {
            v.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
        }
        v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, 64]));
        if bias {
            v.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
        }
        v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, 64]));
        if bias {
            v.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        if let Some(d) = qk {
            v.push((format!("{p}.self_attn.q_norm.weight"), vec![d]));
            v.push((format!("{p}.self_attn.k_norm.weight"), vec![d]));
        }
        v.extend([
            (format!("{p}.self_attn.o_proj.weight"), vec![64, q]),
            (format!("{p}.post_attention_layernorm.weight"), vec![64]),
            (format!("{p}.mlp.gate_proj.weight"), vec![176, 64]),
            (format!("{p}.mlp.up_proj.weight"), vec![176, 64]),
            (format!("{p}.mlp.down_proj.weight"), vec![64, 176]),
        ]);
        v
    }

    fn llama_hf(q: usize, kv: usize, bias: bool, qk: Option<usize>) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![512, 64])];
        for i in 0..2 {
            v.extend(llama_layer_hf(i, q, kv, bias, qk));
        }
        v.push(("model.norm.weight".to_string(), vec![64]));
        v.push(("lm_head.weight".to_string(), vec![512, 64]));
        v
    }

    #[test]
    fn llama_hf_and_flax_listing() {
        let cat = Catalogue::new(&tiny("llama", ""));
        assert_eq!(cat.arch(), Arch::Llama);
        assert_eq!(cat.entries().len(), 1 + 2 * 9 + 2);
        assert_eq!(listing(&cat, HF), llama_hf(64, 32, false, None));
        let flax = listing(&cat, FLAX);
        assert_eq!(
            flax[0],
            ("model.embed_tokens.embedding".to_string(), vec![512, 64])
        );
        assert_eq!(
            flax[2],
            (
                "model.layers.0.self_attn.q_proj.kernel".to_string(),
                vec![64, 64]
            )
        );
        assert_eq!(
            flax[3],
            (
                "model.layers.0.self_attn.k_proj.kernel".to_string(),
                vec![64, 32]
            )
        );
        assert_eq!(
            flax[9],
            (
                "model.layers.0.mlp.down_proj.kernel".to_string(),
                vec![176, 64]
            )
        );
        assert_eq!(flax[10].0, "model.layers.1.input_layernorm.weight");
        assert_eq!(flax[19], ("model.norm.weight".to_string(), vec![64]));
        assert_eq!(flax[20], ("lm_head.kernel".to_string(), vec![64, 512]));
        let q = &cat.entries()[2];
        assert_eq!(
            (q.role, q.component, q.layer),
            (Role::Linear, Component::Attention, Some(0))
        );
        assert_eq!(q.shape_formula, "[nH·D, H]");
        assert_eq!(cat.form_of(2, HF).unwrap().layout, "hf Linear [out,in]");
        assert_eq!(cat.form_of(2, FLAX).unwrap().layout, "flax kernel [in,out]");
        assert!(cat.form_of(2, FLAX).unwrap().is_transposed());
        assert_eq!(
            cat.form_of(0, FLAX).unwrap().layout,
            "embedding [vocab,hidden]"
        );
        assert_eq!(cat.form_of(1, HF).unwrap().layout, "norm [hidden]");
        assert_eq!(cat.optional(20, HF), None);
        assert_eq!(cat.derive(2).describe(), "identity");
    }

    #[test]
    fn biases_follow_the_config() {
        let cat = Catalogue::new(&tiny(
            "llama",
            r#", "attention_bias": true, "mlp_bias": true"#,
        ));
        assert_eq!(cat.entries().len(), 1 + 2 * 16 + 2);
        let o = cat.resolve("model.layers.1.self_attn.o_proj.bias").unwrap();
        assert_eq!(cat.stored(o.entry, HF).unwrap().shape, [64]);
        assert!(o.shared);
        let plain = Catalogue::new(&tiny("llama", ""));
        assert!(plain.entries().iter().all(|e| e.role != Role::Bias));
        assert_eq!(plain.resolve("model.layers.0.self_attn.q_proj.bias"), None);
        let cat = Catalogue::new(&tiny("mistral", r#", "attention_bias": true"#));
        assert_eq!(listing(&cat, HF), llama_hf(64, 32, false, None));
        let cat = Catalogue::new(&tiny("qwen2", ""));
        assert_eq!(listing(&cat, HF), llama_hf(64, 32, true, None));
        let kb = cat
            .resolve("params.model.layers.0.self_attn.k_proj.bias")
            .unwrap();
        assert_eq!(
            (kb.convention, kb.variant, kb.shared),
            (FLAX, Variant::ParamsPrefixed, false)
        );
    }

    #[test]
    fn qwen3_head_dim_and_gpt2_listings() {
        let cat = Catalogue::new(&tiny("qwen3", r#", "head_dim": 32"#));
        assert_eq!(listing(&cat, HF), llama_hf(128, 64, false, Some(32)));
        let o = cat
            .resolve("model.layers.0.self_attn.o_proj.kernel")
            .unwrap();
        assert_eq!(cat.stored(o.entry, FLAX).unwrap().shape, [128, 64]);
        let g = Catalogue::new(&tiny_gpt2(""));
        let hf = listing(&g, HF);
        assert_eq!(hf[0], ("transformer.wte.weight".to_string(), vec![512, 64]));
        assert_eq!(
            hf[4],
            (
                "transformer.h.0.attn.c_attn.weight".to_string(),
                vec![64, 192]
            )
        );
        assert_eq!(hf.len(), 2 + 2 * 14 + 3);
        let flax = listing(&g, FLAX);
        // Buffers are not Flax params: 2 per layer fewer.
        assert_eq!(flax.len(), 2 + 2 * 12 + 3);
        assert_eq!(
            flax[2],
            ("transformer.h.0.ln_1.scale".to_string(), vec![64])
        );
        assert_eq!(
            flax[4],
            (
                "transformer.h.0.attn.c_attn.kernel".to_string(),
                vec![192, 64]
            )
        );
        assert_eq!(
            flax.last().unwrap(),
            &("lm_head.kernel".to_string(), vec![64, 512])
        );
        let c = g.resolve("h.0.attn.c_attn.weight").unwrap();
        assert_eq!((c.convention, c.variant), (HF, Variant::NoBasePrefix));
        assert_eq!(
            g.form_of(c.entry, FLAX).unwrap().layout,
            "flax Conv1D kernel [out,in]"
        );
        assert_eq!(
            g.resolve("params.h.0.attn.c_attn.kernel").unwrap().variant,
            Variant::ParamsNoBasePrefix
        );
        assert_eq!(g.resolve("params.transformer.h.0.attn.bias"), None);
        // Tied by default: lm_head may be absent, in both conventions (FlaxGPT2 has none).
        let lm = g.resolve("lm_head.weight").unwrap();
        assert_eq!(
            g.optional(lm.entry, HF),
            Some("tied to transformer.wte.weight")
        );
        assert_eq!(
            g.optional(lm.entry, FLAX),
            Some("tied to transformer.wte.weight")
        );
        // A tied llama-family lm_head is stored anyway by Flax (FlaxLlama owns one).
        let t = Catalogue::new(&tiny(
            "qwen3",
            r#", "head_dim": 32, "tie_word_embeddings": true"#,
        ));
        let lm = t.resolve("lm_head.weight").unwrap();
        assert_eq!(
            t.optional(lm.entry, HF),
            Some("tied to model.embed_tokens.weight")
        );
        assert_eq!(t.optional(lm.entry, FLAX), None);
    }

    #[test]
    fn every_stored_name_resolves_to_its_entry() {
        for c in [
            tiny("llama", r#", "attention_bias": true, "mlp_bias": true"#),
            tiny("mistral", ""),
            tiny("qwen2", ""),
            tiny("qwen3", r#", "head_dim": 32"#),
            tiny_gpt2(""),
            tiny("gemma", r#", "head_dim": 32, "attention_bias": true"#),
            tiny(
                "gemma2",
                r#", "head_dim": 32, "tie_word_embeddings": false"#,
            ),
            tiny("gemma3_text", r#", "head_dim": 32"#),
            tiny("phi3", r#", "tie_word_embeddings": true"#),
            tiny("gpt_neox", r#", "tie_word_embeddings": true"#),
            tiny("mixtral", r#", "num_local_experts": 3"#),
            tiny(
                "qwen2_moe",
                r#", "num_experts": 3, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                    "shared_expert_intermediate_size": 32, "mlp_only_layers": [0]"#,
            ),
            tiny(
                "qwen3_moe",
                r#", "num_experts": 3, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                    "decoder_sparse_step": 2"#,
            ),
            tiny("bert", ""),
        ] {
            let cat = Catalogue::new(&c);
            for (f, form) in cat.forms().iter().enumerate() {
                for st in form.stored_tensors() {
                    let hits = cat.hits(&st.name);
                    assert!(hits.iter().any(|h| h.form == f), "{}", st.name);
                }
                // A transposing form stores the reversed shape.
                if form.is_transposed() {
                    let e = &cat.entries()[form.entries[0][0]];
                    let mut rev = e.shape.clone();
                    rev.reverse();
                    assert_eq!(form.single().unwrap().shape, rev);
                }
            }
        }
    }

    #[test]
    fn experts_expand_per_layer_and_per_expert_in_model_order() {
        let cat = Catalogue::new(&tiny(
            "qwen2_moe",
            r#", "num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16,
                "shared_expert_intermediate_size": 32, "mlp_only_layers": [0]"#,
        ));
        let names: Vec<&str> = cat
            .entries()
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| n.contains(".mlp."))
            .collect();
        assert_eq!(
            names,
            [
                "model.layers.0.mlp.gate_proj.weight",
                "model.layers.0.mlp.up_proj.weight",
                "model.layers.0.mlp.down_proj.weight",
                "model.layers.1.mlp.gate.weight",
                "model.layers.1.mlp.experts.0.gate_proj.weight",
                "model.layers.1.mlp.experts.0.up_proj.weight",
                "model.layers.1.mlp.experts.0.down_proj.weight",
                "model.layers.1.mlp.experts.1.gate_proj.weight",
                "model.layers.1.mlp.experts.1.up_proj.weight",
                "model.layers.1.mlp.experts.1.down_proj.weight",
                "model.layers.1.mlp.shared_expert.gate_proj.weight",
                "model.layers.1.mlp.shared_expert.up_proj.weight",
                "model.layers.1.mlp.shared_expert.down_proj.weight",
                "model.layers.1.mlp.shared_expert_gate.weight",
            ]
        );
        let e = cat
            .entries()
            .iter()
            .find(|e| e.name == "model.layers.1.mlp.experts.1.down_proj.weight")
            .unwrap();
        assert_eq!(
            (e.layer, e.expert, e.shape.clone()),
            (Some(1), Some(1), vec![64, 16])
        );
        assert_eq!(e.slots, [Slot::ExpertDown]);
        // In hf-packed the two experts of layer 1 are one gate_up tensor [E, 2·I_moe, H].
        let p = cat.convention_id("hf-packed").unwrap();
        let gu = cat
            .resolve("model.layers.1.mlp.experts.gate_up_proj")
            .unwrap();
        let form = &cat.forms()[gu.form];
        assert_eq!(form.convention, p);
        assert_eq!(form.entries.len(), 2);
        assert_eq!(form.single().unwrap().shape, [2, 32, 64]);
        assert_eq!(
            form.chain.describe(),
            "fuse(concat, axis=0, outer=1) → stack(axis=0)"
        );
        assert_eq!(cat.resolve("model.layers.0.mlp.experts.gate_up_proj"), None);
    }

    #[test]
    fn built_ins_that_explain_a_file_equally_resolve_to_the_first() {
        // A tied GPT-NeoX has no embed_out: every name is spelled alike in hf and hf-packed.
        let cat = Catalogue::new(&tiny("gpt_neox", r#", "tie_word_embeddings": true"#));
        let p = cat.convention_id("hf-packed").unwrap();
        let hf = listing(&cat, HF);
        let t: Vec<(&str, &[usize])> = hf.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
        assert_eq!(cat.detect(&t, &[HF, FLAX, p]).verdict, Verdict::One(HF));
        // Untied, embed_out (hf) or lm_head (hf-packed) decides.
        let cat = Catalogue::new(&tiny("gpt_neox", ""));
        let t = [("embed_out.weight", [512usize, 64].as_slice())];
        assert_eq!(cat.detect(&t, &[HF, FLAX, p]).verdict, Verdict::One(HF));
        let t = [("lm_head.weight", [512usize, 64].as_slice())];
        assert_eq!(cat.detect(&t, &[HF, FLAX, p]).verdict, Verdict::One(p));
    }

    #[test]
    fn square_ambiguity() {
        let cat = Catalogue::new(&tiny("qwen2", ""));
        let amb: Vec<&str> = cat
            .entries()
            .iter()
            .filter(|e| e.is_square_ambiguous())
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            amb,
            [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.self_attn.o_proj.weight",
                "model.layers.1.self_attn.q_proj.weight",
                "model.layers.1.self_attn.o_proj.weight",
            ]
        );
        let g = Catalogue::new(&tiny_gpt2(""));
        let amb: Vec<&str> = g
            .entries()
            .iter()
            .filter(|e| e.is_square_ambiguous())
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            amb,
            [
                "transformer.h.0.attn.c_proj.weight",
                "transformer.h.1.attn.c_proj.weight"
            ]
        );
    }

    #[test]
    fn detection_by_names_and_non_square_shapes() {
        let cat = Catalogue::new(&tiny("qwen2", ""));
        let all = [HF, FLAX];
        let hf: Vec<(String, Vec<usize>)> = listing(&cat, HF);
        let as_refs = |v: &[(String, Vec<usize>)]| {
            v.iter()
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect::<Vec<_>>()
        };
        let detect = |v: &[(String, Vec<usize>)]| {
            let t: Vec<(&str, &[usize])> =
                v.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
            cat.detect(&t, &all)
        };
        assert_eq!(detect(&hf).verdict, Verdict::One(HF));
        assert_eq!(detect(&listing(&cat, FLAX)).verdict, Verdict::One(FLAX));
        // The buggy loader: HF names, non-square projections transposed.
        let mut buggy = as_refs(&hf);
        for (n, s) in buggy.iter_mut() {
            if n.ends_with("proj.weight") {
                s.reverse();
            }
        }
        let d = detect(&buggy);
        assert_eq!(d.verdict, Verdict::Mixed);
        assert_eq!(d.evidence.iter().filter(|e| e.contradicts()).count(), 10);
        assert_eq!(d.evidence.iter().filter(|e| e.transposed).count(), 10);
        // Only shared names: no evidence.
        let norms: Vec<(String, Vec<usize>)> = hf
            .iter()
            .filter(|(n, _)| n.contains("norm"))
            .cloned()
            .collect();
        assert_eq!(detect(&norms).verdict, Verdict::NoEvidence);
    }

    use crate::layout::resolve::Verdict;

    /// A made-up JAX port of qwen2: own names, transposed kernels, interleaved RoPE on q and k.
    const PORT: &str = r#"
[convention]
name = "toy-port"
base = "flax"

[[rule]]
canonical = "model.layers.{i}.self_attn.q_proj.weight"
stored = "decoder.{i}.wq"
transforms = [{ rope_permute = { heads = "nH", to = "interleaved" } }, "transpose"]

[[rule]]
canonical = "model.layers.{i}.self_attn.k_proj.weight"
stored = "decoder.{i}.wk"
transforms = [{ rope_permute = { heads = "nKV", to = "interleaved" } }, "transpose"]

[[rule]]
canonical = ["model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"]
stored = "decoder.{i}.w13"
transforms = [{ fuse = { axis = 0 } }, "transpose"]
"#;

    #[test]
    fn a_user_layout_fuses_permutes_and_reads_back() {
        let port = convention::parse(
            &Source {
                file: "port.toml",
                text: PORT,
            },
            convention::builtins(),
        )
        .unwrap();
        let mut convs = convention::builtins().to_vec();
        convs.push(Arc::new(port));
        let cat = Catalogue::with_conventions(&tiny("qwen2", ""), convs).unwrap();
        let p = cat.convention_id("toy-port").unwrap();
        let q = cat.resolve("decoder.0.wq").unwrap();
        assert_eq!(
            cat.entries()[q.entry].name,
            "model.layers.0.self_attn.q_proj.weight"
        );
        assert_eq!(cat.stored(q.entry, p).unwrap().shape, [64, 64]);
        let w13 = cat.resolve("decoder.1.w13").unwrap();
        let form = &cat.forms()[w13.form];
        assert_eq!(form.entries[0].len(), 2);
        assert_eq!(form.single().unwrap().shape, [64, 352]);
        assert_eq!(
            form.chain.describe(),
            "fuse(concat, axis=0, outer=1) → transpose"
        );
        // v_proj falls through to the flax base rule; the bias keeps its name.
        let v = cat
            .resolve("model.layers.0.self_attn.v_proj.kernel")
            .unwrap();
        assert_eq!(v.convention, FLAX);
        // Bind a port-shaped checkpoint and read gate back through the inverse chain.
        let names: Vec<String> = cat
            .forms()
            .iter()
            .filter(|f| f.convention == p)
            .flat_map(|f| f.stored_tensors().map(|s| s.name.clone()))
            .collect();
        let shapes: Vec<Vec<usize>> = cat
            .forms()
            .iter()
            .filter(|f| f.convention == p)
            .flat_map(|f| f.stored_tensors().map(|s| s.shape.clone()))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let det = cat.detect(
            &refs
                .iter()
                .zip(&shapes)
                .map(|(n, s)| (*n, s.as_slice()))
                .collect::<Vec<_>>(),
            &[HF, FLAX, p],
        );
        assert_eq!(det.verdict, Verdict::One(p));
        let b = cat.bind(&refs, p);
        assert!(b.duplicates.is_empty());
        let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        let gate = cat
            .entries()
            .iter()
            .position(|e| e.name == "model.layers.1.mlp.gate_proj.weight")
            .unwrap();
        let (view, t) = b.entry_view(&cat, gate, &shape_refs).unwrap().unwrap();
        assert!(t.is_empty());
        assert_eq!(view.shape(), [176, 64]);
        // Element (r, c) of gate is element (c, r) of the stored [64, 352] w13.
        let w13_src = refs.iter().position(|n| *n == "decoder.1.w13").unwrap();
        let got = collect(&view, &|s, e| (s, e));
        assert_eq!(got[0], (w13_src, 0));
        assert_eq!(got[1], (w13_src, 352));
        assert_eq!(got[64], (w13_src, 1));
        // q: canonical row r of head h comes from the interleaved stored column.
        let q0 = cat
            .entries()
            .iter()
            .position(|e| e.name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        let (qv, _) = b.entry_view(&cat, q0, &shape_refs).unwrap().unwrap();
        let got = collect(&qv, &|_, e| e);
        // Canonical row 1 (first half, i = 1) is stored column 2 (pair 1, element 0); D = 16.
        assert_eq!(got[64], 2);
        // Canonical row 8 (second half, i = 0) is stored column 1.
        assert_eq!(got[8 * 64], 1);
    }

    #[test]
    fn rules_that_do_not_fit_say_so() {
        let bad = "[convention]\nname = \"bad\"\n[[rule]]\ncanonical = \"model.layers.{i}.self_attn.k_proj.weight\"\nstored = \"k.{i}\"\ntransforms = [{ rope_permute = { heads = 3, to = \"interleaved\" } }]\n";
        let c = convention::parse(
            &Source {
                file: "bad.toml",
                text: bad,
            },
            convention::builtins(),
        )
        .unwrap();
        let e = Catalogue::with_conventions(&tiny("qwen2", ""), vec![Arc::new(c)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad.toml:5: `transforms`: for `model.layers.0.self_attn.k_proj.weight`: `rope-permute(heads=3, to=interleaved, rotary=0)` cannot apply to [32, 64]: 32 is not a multiple of 3 heads"
        );
        let two = "[convention]\nname = \"two\"\n[[rule]]\ncanonical = \"model.layers.{i}.mlp.{p}.weight\"\nstored = \"mlp\"\n";
        let c = convention::parse(
            &Source {
                file: "two.toml",
                text: two,
            },
            convention::builtins(),
        )
        .unwrap();
        let e = Catalogue::with_conventions(&tiny("qwen2", ""), vec![Arc::new(c)]).unwrap_err();
        assert!(matches!(e, CatalogueError::NameClash { .. }), "{e}");
    }
}
