//! Reading the source: the detector's verdict in words, binding every tensor in the source
//! convention, and the tensors that convention requires.

use std::collections::BTreeSet;
use std::path::Path;

use orient_inspect::layout::arch::Role;
use orient_inspect::layout::catalogue::{Catalogue, ConvId};
use orient_inspect::layout::resolve::{Binding, Detection, Verdict};
use orient_inspect::Checkpoint;

use crate::error::{Error, Result};

/// Every tensor must be a known part of this model's layout, in some convention.
pub(super) fn check_known(cat: &Catalogue, ckpt: &Checkpoint) -> Result<()> {
    let unknown: Vec<String> = ckpt
        .tensors()
        .iter()
        .filter(|t| cat.hits(&t.name).is_empty())
        .map(|t| t.name.clone())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::UnexpectedTensors {
        path: ckpt.root().to_path_buf(),
        model_type: cat.config().model_type.clone(),
        tensors: unknown,
    })
}

/// Refuses the same canonical tensor stored twice (two spellings, or two conventions).
pub(super) fn check_duplicates(
    cat: &Catalogue,
    binding: &Binding,
    names: &[&str],
    path: &Path,
) -> Result<()> {
    if binding.duplicates.is_empty() {
        return Ok(());
    }
    Err(Error::DuplicateTensors {
        path: path.to_path_buf(),
        pairs: binding
            .duplicates
            .iter()
            .map(|&(a, b)| {
                format!(
                    "  {} and {} are the same tensor ({}) in two spellings",
                    names[a],
                    names[b],
                    entry_of(cat, binding, a).map_or("?", |e| &cat.entries()[e].name)
                )
            })
            .collect(),
    })
}

/// Every tensor has exactly the shape the source convention stores it in (a transposed
/// shape is not read as a transpose here: convert never guesses). Buffers are not read.
pub(super) fn check_shapes(
    cat: &Catalogue,
    binding: &Binding,
    tensors: &[(&str, &[usize])],
    source: ConvId,
) -> Result<()> {
    for (k, (name, shape)) in tensors.iter().enumerate() {
        let Some(h) = binding.hits[k] else { continue };
        if entry_of(cat, binding, k).is_some_and(|e| cat.entries()[e].role == Role::Buffer) {
            continue;
        }
        let want = &cat.forms()[h.form].stored[h.member][h.part].shape;
        if shape != want {
            return Err(Error::ShapeMismatch {
                tensor: name.to_string(),
                actual: shape.to_vec(),
                expected: want.clone(),
                convention: cat.conventions()[source].name.clone(),
            });
        }
    }
    Ok(())
}

/// The canonical entry tensor `k` stands for in `binding`.
pub(super) fn entry_of(cat: &Catalogue, binding: &Binding, k: usize) -> Option<usize> {
    let h = binding.hits.get(k).copied().flatten()?;
    let form = &cat.forms()[h.form];
    form.entries
        .get(h.member)
        .and_then(|m| m.get(h.part).or(m.first()))
        .or_else(|| form.entries.first().and_then(|m| m.first()))
        .copied()
}

/// Binds every tensor in convention `source`. A tensor whose name belongs to another
/// convention only (an explicit `--from` over a port that renamed without transposing) is
/// read as the source convention's tensor of the same canonical entry, which needs both
/// forms to be one tensor each.
pub(super) fn bind_in(
    cat: &Catalogue,
    first: &Binding,
    names: &[&str],
    source: ConvId,
    path: &Path,
) -> Result<Binding> {
    let mut renamed: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut changed = false;
    for (k, name) in names.iter().enumerate() {
        let Some(h) = first.hits[k] else { continue };
        let form = &cat.forms()[h.form];
        if form.convention == source {
            continue;
        }
        let Some(e) = entry_of(cat, first, k) else {
            continue;
        };
        if cat.entries()[e].role == Role::Buffer {
            continue;
        }
        let own = cat.stored(e, source);
        match own {
            Some(st) if form.is_one_to_one() => {
                renamed[k] = st.name.clone();
                changed = true;
            }
            _ => {
                return Err(Error::ForeignName {
                    tensor: name.to_string(),
                    named: cat.conventions()[form.convention].name.clone(),
                    source_convention: cat.conventions()[source].name.clone(),
                })
            }
        }
    }
    let refs: Vec<&str> = renamed.iter().map(String::as_str).collect();
    let binding = cat.bind(&refs, source);
    if changed && !binding.duplicates.is_empty() {
        let &(a, b) = &binding.duplicates[0];
        return Err(Error::DuplicateTensors {
            path: path.to_path_buf(),
            pairs: vec![format!(
                "  {} and {} are the same tensor ({}) read as {} layout",
                names[a],
                names[b],
                refs[a],
                cat.conventions()[source].name
            )],
        });
    }
    Ok(binding)
}

/// Refuses a source that lacks a tensor its convention requires (lm_heads are decided
/// separately, with the tie).
pub(super) fn check_missing(
    cat: &Catalogue,
    binding: &Binding,
    source: ConvId,
    path: &Path,
) -> Result<()> {
    let mut missing = Vec::new();
    for (f, form) in cat.forms().iter().enumerate() {
        if form.convention != source || form.stored.is_empty() {
            continue;
        }
        let entries: Vec<usize> = form.entries.iter().flatten().copied().collect();
        if entries
            .iter()
            .any(|&e| matches!(cat.entries()[e].role, Role::Buffer | Role::LmHead))
        {
            continue;
        }
        let present = binding.forms.get(&f);
        let any = present.is_some_and(|g| g.iter().flatten().any(Option::is_some));
        if !any && entries.iter().all(|&e| cat.optional(e, source).is_some()) {
            continue;
        }
        for (m, member) in form.stored.iter().enumerate() {
            for (p, st) in member.iter().enumerate() {
                let here = present
                    .and_then(|g| g.get(m))
                    .and_then(|x| x.get(p))
                    .copied()
                    .flatten();
                if here.is_none() {
                    missing.push(format!("  {}: missing (expected {:?})", st.name, st.shape));
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::MissingTensors {
        path: path.to_path_buf(),
        convention: cat.conventions()[source].name.clone(),
        tensors: missing,
    })
}

/// Detection failure.
#[derive(Debug, Clone)]
pub(super) enum Detect {
    /// One line per offending tensor.
    Contradictory(Vec<String>),
    /// Nothing in the file tells the conventions apart.
    NoEvidence(String),
}

impl Detect {
    /// What detection says, in a few words.
    pub(super) fn summary(&self) -> String {
        match self {
            Detect::Contradictory(p) => format!(
                "mixed or contradictory ({} offending tensor{})",
                p.len(),
                if p.len() == 1 { "" } else { "s" }
            ),
            Detect::NoEvidence(r) => r.clone(),
        }
    }
}

/// The detector's verdict, with the offending tensors in words when the source is mixed
/// (see the module docs).
pub(super) fn judge(
    cat: &Catalogue,
    d: &Detection,
    tensors: &[(&str, &[usize])],
) -> std::result::Result<ConvId, Detect> {
    let name = |c: ConvId| cat.conventions()[c].name.as_str();
    let names = |set: &BTreeSet<ConvId>| set.iter().map(|&c| name(c)).collect::<Vec<_>>().join("/");
    match &d.verdict {
        Verdict::One(c) => return Ok(*c),
        Verdict::NoEvidence => {
            return Err(Detect::NoEvidence(
                "no tensor name or non-square shape distinguishes them".into(),
            ))
        }
        Verdict::Ambiguous(cs) => {
            return Err(Detect::NoEvidence(format!(
                "the tensors fit {} equally",
                cs.iter().map(|&c| name(c)).collect::<Vec<_>>().join(", ")
            )))
        }
        Verdict::Mixed => {}
    }
    let mut problems = Vec::new();
    for e in d.evidence.iter().filter(|e| e.contradicts()) {
        let (Some(n), Some(s)) = (&e.by_name, &e.by_shape) else {
            continue;
        };
        let (tensor, shape) = tensors[e.tensor];
        let expected = n
            .iter()
            .find_map(|&c| cat.stored(e.entry, c))
            .map(|st| st.shape.clone())
            .unwrap_or_default();
        problems.push(format!(
            "  {}: {} name, but its non-square shape {:?} is the {} orientation ({} expects {:?})",
            tensor,
            names(n),
            shape,
            names(s),
            names(n),
            expected
        ));
    }
    if problems.is_empty() {
        // Mixed without a per-tensor contradiction: list the tensors against the majority.
        let majority = d
            .candidates
            .iter()
            .copied()
            .max_by_key(|&c| (d.votes(c), std::cmp::Reverse(c)))
            .unwrap_or(0);
        for e in d.evidence.iter().filter(|e| !e.admits(majority)) {
            let by_name = e.by_name.as_ref().filter(|n| !n.contains(&majority));
            let (conv, by) = match (by_name, &e.by_shape) {
                (Some(n), _) => (names(n), "name"),
                (None, Some(s)) => (names(s), "shape"),
                (None, None) => continue,
            };
            problems.push(format!(
                "  {}: {} by its {}, while {} other tensors are {}",
                tensors[e.tensor].0,
                conv,
                by,
                d.votes(majority),
                name(majority)
            ));
        }
    }
    if problems.is_empty() {
        problems.push("  the tensors' names and shapes point to different conventions".into());
    }
    Err(Detect::Contradictory(problems))
}
