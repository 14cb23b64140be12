//! Pairing the tensors of two checkpoints through the layout catalogue.
//!
//! Why through the catalogue: A and B may be in different conventions (HF `q_proj.weight` vs
//! Flax `q_proj.kernel`, a `params.` prefix, GPT-2 with or without `transformer.`). Each name is
//! resolved with its own side's catalogue to the entry it stands for, and pairs are formed per
//! entry. Names the catalogue does not know (no config, unknown architecture, extra tensors)
//! still pair when they are spelled identically.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{OneSided, SideSummary};
use crate::catalogue::{Catalogue, Convention, Entry, Role};
use crate::checkpoint::{Checkpoint, ConfigStatus, TensorInfo};
use crate::config::ModelConfig;

/// Which head count a RoPE permutation of a tensor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// q_proj: `num_attention_heads` (nH).
    Query,
    /// k_proj: `num_key_value_heads` (nKV).
    KeyValue,
}

impl HeadKind {
    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            HeadKind::Query => "query (num_attention_heads)",
            HeadKind::KeyValue => "key/value (num_key_value_heads)",
        }
    }
}

/// Modules whose output rows are RoPE-rotated, so that a GGUF/Meta-style per-head permutation
/// applies to their weight and bias: the data behind the `rope-permuted` check.
const ROPE_MODULES: &[(&str, HeadKind)] = &[
    ("self_attn.q_proj", HeadKind::Query),
    ("self_attn.k_proj", HeadKind::KeyValue),
];

/// Parameter names (last name component) a RoPE permutation can apply to.
const ROPE_PARAMS: &[&str] = &["weight", "bias", "kernel"];

/// Whether and how to test a pair for a RoPE permutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RopeCheck {
    /// Not a q/k projection, or an architecture without RoPE.
    NotApplicable,
    /// A q/k projection, but no config gives its head count.
    MissingConfig {
        /// Which head count is missing.
        kind: HeadKind,
    },
    /// Test with these heads along this axis of A.
    Heads {
        /// n.
        heads: usize,
        /// D.
        head_dim: usize,
        /// Which count n is.
        kind: HeadKind,
        /// The output axis in A's matrix view (0 for HF weights and biases, 1 for Flax kernels).
        axis: usize,
    },
}

/// A matched pair, with what the conventions say about it.
#[derive(Debug)]
pub(crate) struct PlannedPair<'a> {
    /// A's tensor.
    pub a: &'a TensorInfo,
    /// B's tensor.
    pub b: &'a TensorInfo,
    /// Canonical HF name of the entry, when recognised.
    pub canonical: Option<String>,
    /// A's convention (None when unrecognised or spelled the same in both).
    pub conv_a: Option<Convention>,
    /// B's convention.
    pub conv_b: Option<Convention>,
    /// The catalogue stores this entry transposed between `conv_a` and `conv_b`.
    pub transposed_by_conventions: bool,
    /// RoPE test parameters.
    pub rope: RopeCheck,
    /// A remark on how the pair was formed (tied heads).
    pub note: Option<String>,
}

/// The pairing of two checkpoints.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub side_a: SideSummary,
    pub side_b: SideSummary,
    /// Pairs in model order.
    pub pairs: Vec<PlannedPair<'a>>,
    pub only_a: Vec<OneSided>,
    pub only_b: Vec<OneSided>,
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

/// One tensor with what its side's catalogue says about it.
struct Resolved<'a> {
    t: &'a TensorInfo,
    /// Pairing key: the entry's canonical HF name, or the raw name (without `params.`).
    key: String,
    entry: Option<(usize, Entry)>,
    conv: Option<Convention>,
}

fn resolve<'a>(ck: &'a Checkpoint, cat: Option<&Catalogue>) -> Vec<Resolved<'a>> {
    ck.tensors()
        .iter()
        .map(|t| {
            let m = cat.and_then(|c| c.resolve(&t.name).map(|m| (c, m)));
            match m {
                Some((c, m)) => {
                    let e = c.entries()[m.entry].clone();
                    Resolved {
                        t,
                        key: e.hf.name.clone(),
                        conv: (!m.shared).then_some(m.convention),
                        entry: Some((m.entry, e)),
                    }
                }
                None => Resolved {
                    t,
                    key: t
                        .name
                        .strip_prefix("params.")
                        .unwrap_or(&t.name)
                        .to_string(),
                    entry: None,
                    conv: None,
                },
            }
        })
        .collect()
}

fn one_sided(r: &Resolved<'_>) -> OneSided {
    OneSided {
        name: r.t.name.clone(),
        dtype: r.t.dtype.name(),
        shape: r.t.shape.clone(),
        optional: r.entry.as_ref().and_then(|(_, e)| e.optional),
    }
}

/// Decides the RoPE test for a pair.
fn rope_check(ra: &Resolved<'_>, rb: &Resolved<'_>, cfg: Option<&ModelConfig>) -> RopeCheck {
    let entry = ra.entry.as_ref().or(rb.entry.as_ref()).map(|(_, e)| e);
    let name = entry.map_or(ra.key.as_str(), |e| e.hf.name.as_str());
    let Some((module, param)) = name.rsplit_once('.') else {
        return RopeCheck::NotApplicable;
    };
    if !ROPE_PARAMS.contains(&param) {
        return RopeCheck::NotApplicable;
    }
    let Some(&(_, kind)) = ROPE_MODULES.iter().find(|(m, _)| module.ends_with(m)) else {
        return RopeCheck::NotApplicable;
    };
    let Some(cfg) = cfg else {
        return RopeCheck::MissingConfig { kind };
    };
    if !cfg.uses_rope() {
        return RopeCheck::NotApplicable;
    }
    let heads = match kind {
        HeadKind::Query => cfg.num_attention_heads,
        HeadKind::KeyValue => cfg.num_key_value_heads,
    };
    // The output axis of A: axis 1 for a 2-D tensor stored as a Flax kernel [in, out].
    let a_is_kernel = match (&ra.entry, ra.conv) {
        (Some((_, e)), Some(Convention::Flax)) => e.transposed_between,
        (None, _) => ra.t.name.ends_with(".kernel"),
        _ => false,
    };
    let axis = usize::from(ra.t.shape.len() == 2 && a_is_kernel);
    RopeCheck::Heads {
        heads,
        head_dim: cfg.head_dim,
        kind,
        axis,
    }
}

/// Pairs the tensors of `a` and `b`.
pub(crate) fn plan<'a>(a: &'a Checkpoint, b: &'a Checkpoint) -> Plan<'a> {
    let mut warnings = Vec::new();
    let (cfg_a, desc_a, warn_a) = read_config(a, "A");
    let (cfg_b, desc_b, warn_b) = read_config(b, "B");
    warnings.extend(warn_a);
    warnings.extend(warn_b);
    // If only one side has a config, it describes both.
    let (cfg_a, cfg_b) = match (cfg_a, cfg_b) {
        (Some(x), None) => {
            warnings.push(format!(
                "B has no usable config.json: using A's ({}) for both sides",
                x.model_type
            ));
            (Some(x.clone()), Some(x))
        }
        (None, Some(y)) => {
            warnings.push(format!(
                "A has no usable config.json: using B's ({}) for both sides",
                y.model_type
            ));
            (Some(y.clone()), Some(y))
        }
        (None, None) => {
            warnings.push(
                "neither side has a usable config.json: tensors are paired by identical names only, and RoPE permutations cannot be checked"
                    .to_string(),
            );
            (None, None)
        }
        both => both,
    };
    if let (Some(x), Some(y)) = (&cfg_a, &cfg_b) {
        if x.arch != y.arch {
            warnings.push(format!(
                "A is {} and B is {}: each side's names are resolved with its own catalogue",
                x.model_type, y.model_type
            ));
        }
    }
    let cat_a = cfg_a.as_ref().map(Catalogue::new);
    let cat_b = cfg_b.as_ref().map(Catalogue::new);
    let ra = resolve(a, cat_a.as_ref());
    let rb = resolve(b, cat_b.as_ref());

    // key → index into rb; a second tensor with the same key stays one-sided.
    let mut b_by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in rb.iter().enumerate() {
        b_by_key.entry(r.key.as_str()).or_insert(i);
    }
    let mut b_used = vec![false; rb.len()];
    let mut matched: Vec<(usize, usize)> = Vec::new();
    let mut a_left: Vec<usize> = Vec::new();
    for (i, r) in ra.iter().enumerate() {
        match b_by_key.get(r.key.as_str()) {
            Some(&j) if !b_used[j] => {
                b_used[j] = true;
                matched.push((i, j));
            }
            _ => a_left.push(i),
        }
    }
    // Leftovers spelled identically on both sides (e.g. resolved on one side only).
    let mut b_by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (j, r) in rb.iter().enumerate() {
        if !b_used[j] {
            b_by_name.entry(r.t.name.as_str()).or_insert(j);
        }
    }
    let mut a_only: Vec<usize> = Vec::new();
    for i in a_left {
        match b_by_name.remove(ra[i].t.name.as_str()) {
            Some(j) => {
                b_used[j] = true;
                matched.push((i, j));
            }
            None => a_only.push(i),
        }
    }
    let mut b_only: Vec<usize> = (0..rb.len()).filter(|&j| !b_used[j]).collect();

    // Tied embeddings: an lm_head on one side only is compared with the other side's token
    // embedding, which is what a tied head computes with ([V, H], the HF lm_head layout).
    let role_of = |r: &Resolved<'_>| r.entry.as_ref().map(|(_, e)| e.role);
    let embedding = |side: &[Resolved<'_>]| {
        side.iter()
            .position(|r| role_of(r) == Some(Role::Embedding))
    };
    let mut tied: Vec<PlannedPair<'a>> = Vec::new();
    if let (Some(k), Some(e)) = (
        b_only
            .iter()
            .position(|&j| role_of(&rb[j]) == Some(Role::LmHead)),
        embedding(&ra),
    ) {
        let y = &rb[b_only[k]];
        if let Some((_, entry)) = &y.entry {
            tied.push(PlannedPair {
                a: ra[e].t,
                b: y.t,
                canonical: Some(entry.hf.name.clone()),
                conv_a: Some(Convention::Hf),
                conv_b: y.conv,
                transposed_by_conventions: entry.transposed_between
                    && y.conv == Some(Convention::Flax),
                rope: RopeCheck::NotApplicable,
                note: Some(format!(
                    "A has no lm_head (tied): B's head compared with A's `{}`",
                    ra[e].t.name
                )),
            });
            b_only.remove(k);
        }
    }
    if let (Some(k), Some(e)) = (
        a_only
            .iter()
            .position(|&i| role_of(&ra[i]) == Some(Role::LmHead)),
        embedding(&rb),
    ) {
        let x = &ra[a_only[k]];
        if let Some((_, entry)) = &x.entry {
            tied.push(PlannedPair {
                a: x.t,
                b: rb[e].t,
                canonical: Some(entry.hf.name.clone()),
                conv_a: x.conv,
                conv_b: Some(Convention::Hf),
                transposed_by_conventions: entry.transposed_between
                    && x.conv == Some(Convention::Flax),
                rope: RopeCheck::NotApplicable,
                note: Some(format!(
                    "B has no lm_head (tied): A's head compared with B's `{}`",
                    rb[e].t.name
                )),
            });
            a_only.remove(k);
        }
    }
    let only_a = a_only.iter().map(|&i| one_sided(&ra[i])).collect();
    let only_b = b_only.iter().map(|&j| one_sided(&rb[j])).collect();

    // Model order: catalogue entry order, then unrecognised names alphabetically.
    matched.sort_by(|&(i1, j1), &(i2, j2)| {
        let key = |i: usize, j: usize| {
            let e = ra[i]
                .entry
                .as_ref()
                .or(rb[j].entry.as_ref())
                .map_or(usize::MAX, |(k, _)| *k);
            (e, ra[i].t.name.clone())
        };
        key(i1, j1).cmp(&key(i2, j2))
    });

    let cfg = cfg_a.as_ref().or(cfg_b.as_ref());
    let pairs = matched
        .into_iter()
        .map(|(i, j)| {
            let (x, y) = (&ra[i], &rb[j]);
            let entry = x.entry.as_ref().or(y.entry.as_ref()).map(|(_, e)| e);
            let transposed_by_conventions = entry.is_some_and(|e| e.transposed_between)
                && x.conv.is_some()
                && y.conv.is_some()
                && x.conv != y.conv;
            PlannedPair {
                a: x.t,
                b: y.t,
                canonical: entry.map(|e| e.hf.name.clone()),
                conv_a: x.conv,
                conv_b: y.conv,
                transposed_by_conventions,
                rope: rope_check(x, y, cfg),
                note: None,
            }
        })
        .chain(tied)
        .collect();

    Plan {
        side_a: SideSummary {
            root: a.root().display().to_string(),
            tensors: a.tensors().len(),
            config: desc_a,
        },
        side_b: SideSummary {
            root: b.root().display().to_string(),
            tensors: b.tensors().len(),
            config: desc_b,
        },
        pairs,
        only_a,
        only_b,
        warnings,
    }
}
