//! Pairing the tensors of two checkpoints through the layout catalogue.
//!
//! Why through the catalogue: A and B may be in different conventions (HF `q_proj.weight` vs
//! Flax `q_proj.kernel`, a `params.` prefix, GPT-2 with or without `transformer.`, a user's JAX
//! port with its own names, fused `gate_up` kernels and interleaved RoPE). Each side is read in
//! its own convention, the one the detector ([`Catalogue::detect`]) picks for it among the
//! built-ins and the user layouts, and its tensors are bound to canonical entries. A pair is a
//! canonical entry present on both sides, each side seen through a canonical view of its stored
//! tensors. Names the catalogue does not know (no config, unknown architecture, extra tensors)
//! still pair when they are spelled identically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::checkpoint::{Checkpoint, ConfigStatus};
use crate::config::ModelConfig;
use crate::diff::compare::Operand;
use crate::diff::relation::{self, Move, RopeCheck};
use crate::diff::report::{DiffError, HeadKind, OneSided, PairError, SideSummary};
use crate::layout::arch::{self, Role, Slot};
use crate::layout::catalogue::{Catalogue, ConvId};
use crate::layout::convention::{Convention, Pattern};
use crate::layout::gather::Source;
use crate::layout::resolve::{BindError, Verdict as Detected};
use crate::layout::view::View;

/// One checkpoint, read in its convention.
pub(crate) struct Side<'a> {
    /// `A` or `B`.
    pub label: &'static str,
    /// The checkpoint.
    pub ck: &'a Checkpoint,
    /// Its tensors' bytes, by tensor index.
    pub sources: Vec<Source<'a>>,
    /// The catalogue its names are resolved with (none without a usable config).
    pub cat: Option<Catalogue>,
    /// The convention its tensors are read in.
    pub conv: Option<ConvId>,
    /// Its canonical tensors (and unresolved tensors), each with its view.
    pub items: Vec<Item>,
    /// How it was read.
    pub summary: SideSummary,
}

impl Side<'_> {
    /// The name of convention `c` of this side's catalogue.
    pub(crate) fn conv_name(&self, c: Option<ConvId>) -> Option<&str> {
        Some(self.cat.as_ref()?.conventions().get(c?)?.name.as_str())
    }

    /// The convention the side is read in, when it is a user layout.
    pub(crate) fn user_layout(&self) -> Option<&Convention> {
        let c = self.cat.as_ref()?.conventions().get(self.conv?)?;
        (!c.builtin).then_some(c.as_ref())
    }
}

/// A canonical tensor of one side (or a tensor the catalogue does not know), with its view.
pub(crate) struct Item {
    /// Pairing key: the canonical name, or the stored name (without `params.`).
    pub key: String,
    /// The catalogue entry.
    pub entry: Option<usize>,
    /// The stored tensor shown for it (the first one its view reads).
    pub tensor: usize,
    /// The canonical view over the side's tensors, and whether the stored tensor is read
    /// transposed (stored as the transpose of the shape its convention expects).
    pub view: Result<(View, bool), BindError>,
    /// Canonical → stored, by its convention.
    pub chain: Vec<Move>,
    /// Stored → canonical.
    pub chain_inv: Vec<Move>,
    /// The canonical tensor is exactly the one stored tensor.
    pub single: bool,
    /// `(index, count)` when the stored tensor holds several canonical ones.
    pub part: Option<(usize, usize)>,
    /// The convention of the form it was bound in.
    pub conv: Option<ConvId>,
    /// Its stored name is spelled alike in another convention (so it says nothing about it).
    pub shared: bool,
}

/// A matched pair: an item of A and one of B.
#[derive(Debug, Clone)]
pub(crate) struct PlannedPair {
    /// A's item.
    pub a: usize,
    /// B's item.
    pub b: usize,
    /// A remark on how the pair was formed (tied heads).
    pub note: Option<String>,
}

/// The pairing of two checkpoints.
pub(crate) struct Plan<'a> {
    /// A and B.
    pub sides: [Side<'a>; 2],
    /// Pairs in model order.
    pub pairs: Vec<PlannedPair>,
    /// Tensors only in A.
    pub only_a: Vec<OneSided>,
    /// Tensors only in B.
    pub only_b: Vec<OneSided>,
    /// Remarks about the configs and the naming.
    pub warnings: Vec<String>,
}

/// A side's config: resolved config (if usable), a short description, and a warning.
fn read_config(ck: &Checkpoint, label: &str) -> (Option<ModelConfig>, String, Option<String>) {
    match ck.config_status() {
        ConfigStatus::Known(cfg) => (Some(cfg.clone()), cfg.model_type.clone(), None),
        ConfigStatus::Missing => (None, "no config.json".to_string(), None),
        ConfigStatus::UnknownArch { model_type, .. } => {
            let mt = model_type.as_deref().unwrap_or("(none)");
            let path = ck
                .config_path()
                .map_or_else(String::new, |p| p.display().to_string());
            (
                None,
                format!("unknown architecture `{mt}`"),
                Some(format!("{label}: {path}: model_type `{mt}` is not in the layout catalogue; names are matched only when spelled identically")),
            )
        }
    }
}

/// The configs of both sides: if only one side has one, it describes both.
fn configs(
    a: &Checkpoint,
    b: &Checkpoint,
    warnings: &mut Vec<String>,
) -> ([Option<ModelConfig>; 2], [String; 2]) {
    let (cfg_a, desc_a, warn_a) = read_config(a, "A");
    let (cfg_b, desc_b, warn_b) = read_config(b, "B");
    warnings.extend(warn_a);
    warnings.extend(warn_b);
    let cfgs = match (cfg_a, cfg_b) {
        (Some(x), None) => {
            warnings.push(format!(
                "B has no usable config.json: using A's ({}) for both sides",
                x.model_type
            ));
            [Some(x.clone()), Some(x)]
        }
        (None, Some(y)) => {
            warnings.push(format!(
                "A has no usable config.json: using B's ({}) for both sides",
                y.model_type
            ));
            [Some(y.clone()), Some(y)]
        }
        (None, None) => {
            warnings.push(
                "neither side has a usable config.json: tensors are paired by identical names only, and RoPE permutations cannot be checked"
                    .to_string(),
            );
            [None, None]
        }
        (x, y) => [x, y],
    };
    if let [Some(x), Some(y)] = &cfgs {
        if x.arch != y.arch {
            warnings.push(format!(
                "A is {} and B is {}: each side's names are resolved with its own catalogue",
                x.model_type, y.model_type
            ));
        }
    }
    (cfgs, [desc_a, desc_b])
}

/// The convention a side is read in: the detected one; among several that fit equally, the
/// last user layout; when the tensors disagree, the one most of them vote for.
fn pick_convention(cat: &Catalogue, ck: &Checkpoint) -> ConvId {
    let candidates: Vec<ConvId> = (0..cat.conventions().len()).collect();
    let tensors: Vec<(&str, &[usize])> = ck
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    let d = cat.detect(&tensors, &candidates);
    match &d.verdict {
        Detected::One(c) => *c,
        Detected::Ambiguous(cs) => cs
            .iter()
            .rev()
            .find(|&&c| !cat.conventions()[c].builtin)
            .or(cs.first())
            .copied()
            .unwrap_or(0),
        Detected::Mixed | Detected::NoEvidence => candidates
            .iter()
            .copied()
            .max_by_key(|&c| (d.votes(c), std::cmp::Reverse(c)))
            .unwrap_or(0),
    }
}

/// Reads one side: its catalogue, its convention, and an item per canonical tensor.
fn side<'a>(
    label: &'static str,
    ck: &'a Checkpoint,
    cfg: Option<&ModelConfig>,
    config: String,
    layouts: &[Arc<Convention>],
) -> Result<Side<'a>, DiffError> {
    let cat = cfg
        .map(|c| Catalogue::for_model(c, layouts))
        .transpose()
        .map_err(|source| DiffError::Catalogue {
            side: label,
            root: ck.root().display().to_string(),
            source: Box::new(source),
        })?;
    let conv = cat.as_ref().map(|c| pick_convention(c, ck));
    let sources = ck
        .tensors()
        .iter()
        .map(|t| Source {
            bytes: ck.view(t).bytes,
            dtype: t.dtype,
        })
        .collect();
    let items = match (&cat, conv) {
        (Some(cat), Some(conv)) => bound_items(cat, ck, conv),
        _ => (0..ck.tensors().len()).map(|k| raw_item(ck, k)).collect(),
    };
    let user = conv
        .zip(cat.as_ref())
        .map(|(c, cat)| &cat.conventions()[c])
        .filter(|c| !c.builtin);
    let summary = SideSummary {
        root: ck.root().display().to_string(),
        tensors: ck.tensors().len(),
        config,
        convention: conv
            .zip(cat.as_ref())
            .map(|(c, cat)| cat.conventions()[c].name.clone()),
        layout_file: user.map(|c| c.origin.clone()),
    };
    Ok(Side {
        label,
        ck,
        sources,
        cat,
        conv,
        items,
        summary,
    })
}

/// A tensor the catalogue does not place: paired by its name, read as stored.
fn raw_item(ck: &Checkpoint, k: usize) -> Item {
    let t = &ck.tensors()[k];
    Item {
        key: t
            .name
            .strip_prefix("params.")
            .unwrap_or(&t.name)
            .to_string(),
        entry: None,
        tensor: k,
        view: Ok((View::contiguous(k, &t.shape), false)),
        chain: Vec::new(),
        chain_inv: Vec::new(),
        single: true,
        part: None,
        conv: None,
        shared: false,
    }
}

/// One item per canonical entry the binding places, then one per tensor it does not.
fn bound_items(cat: &Catalogue, ck: &Checkpoint, conv: ConvId) -> Vec<Item> {
    let names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
    let shapes: Vec<&[usize]> = ck.tensors().iter().map(|t| t.shape.as_slice()).collect();
    let binding = cat.bind(&names, conv);
    let mut items = Vec::new();
    let mut placed: BTreeSet<usize> = BTreeSet::new();
    for (e, f) in binding.entry_form.iter().enumerate() {
        let Some(f) = *f else { continue };
        let form = &cat.forms()[f];
        let Some((m, p)) = form
            .entries
            .iter()
            .enumerate()
            .find_map(|(m, parts)| parts.iter().position(|&x| x == e).map(|p| (m, p)))
        else {
            continue;
        };
        let present: Vec<usize> = binding
            .forms
            .get(&f)
            .map(|g| g.iter().flatten().flatten().copied().collect())
            .unwrap_or_default();
        let view = match binding.entry_view(cat, e, &shapes) {
            Ok(Some((v, rts))) => Ok((v, !rts.is_empty())),
            Ok(None) => Err(BindError::Missing {
                name: cat.entries()[e].name.clone(),
            }),
            Err(err) => Err(err),
        };
        let tensor = match &view {
            Ok((v, _)) => v.sources().first().copied(),
            Err(_) => None,
        }
        .or(present.first().copied());
        let Some(tensor) = tensor else { continue };
        placed.extend(view.as_ref().map_or(present.clone(), |(v, _)| v.sources()));
        let entries: usize = form.entries.iter().map(Vec::len).sum();
        let stored: usize = form.stored.iter().map(Vec::len).sum();
        let parts = form.entries[m].len();
        let part_of = (parts > 1).then_some((p, parts));
        let member_of = (form.entries.len() > 1).then_some((m, form.entries.len()));
        let name = &ck.tensors()[tensor].name;
        let shared = cat.hits(name).iter().any(|h| {
            let o = &cat.forms()[h.form];
            o.convention != form.convention && o.entries == form.entries
        });
        items.push(Item {
            key: cat.entries()[e].name.clone(),
            entry: Some(e),
            tensor,
            view,
            chain: relation::moves_of(&form.chain, part_of, member_of),
            chain_inv: relation::moves_of(&form.chain.inverse(), part_of, member_of),
            single: form.is_one_to_one(),
            part: (entries > 1 && stored < entries).then(|| {
                let k = form.entries[..m].iter().map(Vec::len).sum::<usize>() + p;
                (k, entries)
            }),
            conv: Some(form.convention),
            shared,
        });
    }
    for k in 0..ck.tensors().len() {
        if !placed.contains(&k) {
            items.push(raw_item(ck, k));
        }
    }
    items
}

/// Pairs the tensors of `a` and `b`, each read in its convention among the built-ins and
/// `layouts`.
pub(crate) fn plan<'a>(
    a: &'a Checkpoint,
    b: &'a Checkpoint,
    layouts: &[Arc<Convention>],
) -> Result<Plan<'a>, DiffError> {
    let mut warnings = Vec::new();
    let ([cfg_a, cfg_b], [desc_a, desc_b]) = configs(a, b, &mut warnings);
    let sa = side("A", a, cfg_a.as_ref(), desc_a, layouts)?;
    let sb = side("B", b, cfg_b.as_ref(), desc_b, layouts)?;
    let (ia, ib) = (&sa.items, &sb.items);

    // key → B item; a second item with the same key stays one-sided.
    let mut b_by_key: HashMap<&str, usize> = HashMap::new();
    for (j, it) in ib.iter().enumerate() {
        b_by_key.entry(it.key.as_str()).or_insert(j);
    }
    let mut b_used = vec![false; ib.len()];
    let mut a_used = vec![false; ia.len()];
    let mut matched: Vec<(usize, usize)> = Vec::new();
    for (i, it) in ia.iter().enumerate() {
        if let Some(&j) = b_by_key.get(it.key.as_str()) {
            if !b_used[j] {
                b_used[j] = true;
                a_used[i] = true;
                matched.push((i, j));
            }
        }
    }
    // Leftovers spelled identically on both sides (e.g. resolved on one side only).
    let name_of = |s: &Side<'_>, it: &Item| s.ck.tensors()[it.tensor].name.clone();
    let mut b_by_name: BTreeMap<String, usize> = BTreeMap::new();
    for (j, it) in ib.iter().enumerate() {
        if !b_used[j] {
            b_by_name.entry(name_of(&sb, it)).or_insert(j);
        }
    }
    for (i, it) in ia.iter().enumerate() {
        if a_used[i] {
            continue;
        }
        if let Some(j) = b_by_name.remove(&name_of(&sa, it)) {
            b_used[j] = true;
            a_used[i] = true;
            matched.push((i, j));
        }
    }

    // Model order: catalogue entry order, then unrecognised names alphabetically.
    matched.sort_by_cached_key(|&(i, j)| {
        let e = ia[i].entry.or(ib[j].entry).unwrap_or(usize::MAX);
        (e, name_of(&sa, &ia[i]))
    });
    let mut pairs: Vec<PlannedPair> = matched
        .into_iter()
        .map(|(a, b)| PlannedPair { a, b, note: None })
        .collect();
    pairs.extend(tied(&sa, &mut a_used, &sb, &mut b_used));

    let only_a = one_sided(&sa, &a_used, &sb);
    let only_b = one_sided(&sb, &b_used, &sa);
    Ok(Plan {
        sides: [sa, sb],
        pairs,
        only_a,
        only_b,
        warnings,
    })
}

fn role(s: &Side<'_>, it: &Item) -> Option<Role> {
    Some(s.cat.as_ref()?.entries()[it.entry?].role)
}

/// Tied embeddings: an lm_head on one side only is compared with the other side's token
/// embedding, which is what a tied head computes with (`[V, H]`, the HF lm_head layout).
fn tied(
    sa: &Side<'_>,
    a_used: &mut [bool],
    sb: &Side<'_>,
    b_used: &mut [bool],
) -> Vec<PlannedPair> {
    let mut out = Vec::new();
    let head = |s: &Side<'_>, used: &[bool]| {
        s.items
            .iter()
            .enumerate()
            .position(|(k, it)| !used[k] && role(s, it) == Some(Role::LmHead))
    };
    let embedding = |s: &Side<'_>| {
        s.items
            .iter()
            .position(|it| role(s, it) == Some(Role::Embedding))
    };
    let name = |s: &Side<'_>, k: usize| s.ck.tensors()[s.items[k].tensor].name.clone();
    if let (Some(h), Some(e)) = (head(sb, b_used), embedding(sa)) {
        b_used[h] = true;
        out.push(PlannedPair {
            a: e,
            b: h,
            note: Some(format!(
                "A has no lm_head (tied): B's head compared with A's `{}`",
                name(sa, e)
            )),
        });
    }
    if let (Some(h), Some(e)) = (head(sa, a_used), embedding(sb)) {
        a_used[h] = true;
        out.push(PlannedPair {
            a: h,
            b: e,
            note: Some(format!(
                "B has no lm_head (tied): A's head compared with B's `{}`",
                name(sb, e)
            )),
        });
    }
    out
}

/// The tensors of `s` left out of every pair: one row per tensor, or per canonical tensor
/// when the stored tensor also holds a paired one (half of a fused `gate_up`).
fn one_sided(s: &Side<'_>, used: &[bool], other: &Side<'_>) -> Vec<OneSided> {
    let paired: BTreeSet<usize> = s
        .items
        .iter()
        .zip(used)
        .filter(|(_, u)| **u)
        .flat_map(|(it, _)| match &it.view {
            Ok((v, _)) => v.sources(),
            Err(_) => vec![it.tensor],
        })
        .collect();
    let mut seen: BTreeSet<usize> = BTreeSet::new();
    let mut out = Vec::new();
    for (it, _) in s.items.iter().zip(used).filter(|(_, u)| !**u) {
        let partial = paired.contains(&it.tensor);
        if !partial && !seen.insert(it.tensor) {
            continue;
        }
        let t = &s.ck.tensors()[it.tensor];
        // May it be absent from the other side, in the other side's convention?
        let optional = s.cat.as_ref().zip(it.entry).and_then(|(cat, e)| {
            let conv = other.conv.or(s.conv)?;
            cat.optional(e, conv).map(str::to_string)
        });
        out.push((
            it.tensor,
            OneSided {
                name: t.name.clone(),
                dtype: t.dtype.name(),
                shape: t.shape.clone(),
                canonical: partial.then(|| it.key.clone()),
                optional,
            },
        ));
    }
    // In file order.
    out.sort_by_key(|(k, _)| *k);
    out.into_iter().map(|(_, o)| o).collect()
}

/// The operands of a pair, each side's canonical view fitted to the other's shape when the
/// catalogue does not place it (a stored transpose is read transposed).
pub(crate) fn operands<'p>(
    plan: &'p Plan<'_>,
    pair: &PlannedPair,
) -> Result<(Operand<'p>, Operand<'p>), PairError> {
    let [sa, sb] = &plan.sides;
    let (ia, ib) = (&sa.items[pair.a], &sb.items[pair.b]);
    let mut a = operand(sa, ia)?;
    let mut b = operand(sb, ib)?;
    match (ia.entry, ib.entry) {
        (None, Some(_)) => fit(&mut a, &b.canonical.shape()),
        _ if ib.entry.is_none() => fit(&mut b, &a.canonical.shape()),
        _ => {}
    }
    Ok((a, b))
}

fn operand<'p>(s: &'p Side<'_>, it: &Item) -> Result<Operand<'p>, PairError> {
    let convention = || s.conv_name(it.conv).unwrap_or("?").to_string();
    let (view, read_transposed) = it.view.clone().map_err(|source| match source {
        BindError::Shape {
            tensor,
            found,
            expected,
        } => PairError::StoredShape {
            side: s.label,
            tensor: s
                .ck
                .tensors()
                .get(tensor)
                .map_or_else(|| tensor.to_string(), |t| t.name.clone()),
            found: found.into(),
            expected: expected.into(),
            convention: convention(),
            canonical: it.key.clone(),
        },
        source => PairError::Layout {
            side: s.label,
            canonical: it.key.clone(),
            convention: convention(),
            source: Box::new(source),
        },
    })?;
    Ok(Operand {
        info: &s.ck.tensors()[it.tensor],
        tensor: it.tensor,
        tensors: s.ck.tensors(),
        sources: &s.sources,
        canonical: view,
        chain: it.chain.clone(),
        chain_inv: it.chain_inv.clone(),
        read_transposed,
        single: it.single,
    })
}

/// Reads an unplaced tensor stored as the transpose of `shape` transposed.
fn fit(o: &mut Operand<'_>, shape: &[usize]) {
    let have = o.canonical.shape();
    if have != shape
        && have.len() == 2
        && shape.len() == 2
        && have[0] == shape[1]
        && have[1] == shape[0]
    {
        if let Ok(v) = o.canonical.clone().transpose_last() {
            o.canonical = v;
            o.read_transposed = true;
        }
    }
}

/// Whether and how a pair can be RoPE-permuted: from the forward slot of its catalogue entry
/// (q and its bias: nH heads; k and its bias: nKV), or, for a name the catalogue does not place,
/// from the canonical name patterns.
pub(crate) fn rope_check(plan: &Plan<'_>, pair: &PlannedPair) -> RopeCheck {
    let [sa, sb] = &plan.sides;
    let from_entry = |s: &Side<'_>, it: &Item| {
        let cat = s.cat.as_ref()?;
        Some((cat.entries()[it.entry?].slots.clone(), cat.config().clone()))
    };
    let (ia, ib) = (&sa.items[pair.a], &sb.items[pair.b]);
    let (slots, cfg) = match from_entry(sa, ia).or_else(|| from_entry(sb, ib)) {
        Some((slots, cfg)) => (slots, Some(cfg)),
        None => {
            let cfg = sa
                .cat
                .as_ref()
                .or(sb.cat.as_ref())
                .map(|c| c.config().clone());
            (slots_by_name(&ia.key), cfg)
        }
    };
    let kind = match slots.as_slice() {
        [Slot::Q | Slot::QBias] => HeadKind::Query,
        [Slot::K | Slot::KBias] => HeadKind::KeyValue,
        _ => return RopeCheck::NotApplicable,
    };
    let Some(cfg) = cfg else {
        return RopeCheck::MissingConfig { kind };
    };
    if !cfg.uses_rope() {
        return RopeCheck::NotApplicable;
    }
    RopeCheck::Heads {
        heads: match kind {
            HeadKind::Query => cfg.num_attention_heads,
            HeadKind::KeyValue => cfg.num_key_value_heads,
        },
        head_dim: cfg.head_dim,
        rotary: cfg.rotary_dim(),
        kind,
    }
}

/// The forward slots of the canonical tensor a name spells, by the built-in name patterns of
/// every architecture.
fn slots_by_name(name: &str) -> Vec<Slot> {
    arch::builtin_templates()
        .iter()
        .find(|t| Pattern::parse(&t.name).is_ok_and(|p| p.matches(name).is_some()))
        .map(|t| t.slots.clone())
        .unwrap_or_default()
}
