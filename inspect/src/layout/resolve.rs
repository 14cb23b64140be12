//! Reading a checkpoint through the catalogue: the one convention detector, and the binding of
//! stored tensors to canonical entries (and from there to views).
//!
//! Detection weighs two kinds of evidence per tensor: its *name* (a Flax `kernel` is no HF name;
//! a norm's `weight` fits both and says nothing) and, where conventions store a tensor in
//! different shapes, its *non-square shape*. A square projection carries no shape evidence, so
//! nothing is ever decided for it on a guess. A tensor whose name and shape point to different
//! conventions (HF names over transposed non-square projections, as a buggy JAX loader writes
//! them), or a file mixing conventions, is reported with the offending tensors.

use std::collections::{BTreeSet, HashMap};

use crate::layout::catalogue::{self, Catalogue, ConvId, Hit};
use crate::layout::transform::{Group, TransformError};
use crate::layout::view::View;

/// What one tensor says about the convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Index of the tensor in the list given to [`Catalogue::detect`].
    pub tensor: usize,
    /// The canonical entry its name stands for.
    pub entry: usize,
    /// Candidate conventions whose names include it, when that is not all of them.
    pub by_name: Option<BTreeSet<ConvId>>,
    /// Candidate conventions whose stored shape it has, when that is not all of them and the
    /// tensor is not square.
    pub by_shape: Option<BTreeSet<ConvId>>,
    /// Its shape is the exact transpose of the shape its name's convention expects.
    pub transposed: bool,
}

impl Evidence {
    /// True when the name and the shape point to different conventions.
    pub fn contradicts(&self) -> bool {
        match (&self.by_name, &self.by_shape) {
            (Some(n), Some(s)) => n.is_disjoint(s),
            _ => false,
        }
    }

    /// True when this tensor's evidence admits convention `c`.
    pub fn admits(&self, c: ConvId) -> bool {
        self.by_name.as_ref().is_none_or(|n| n.contains(&c))
            && self.by_shape.as_ref().is_none_or(|s| s.contains(&c))
    }

    /// True when it is evidence *for* `c`.
    pub fn votes(&self, c: ConvId) -> bool {
        self.by_name.as_ref().is_some_and(|n| n.contains(&c))
            || self.by_shape.as_ref().is_some_and(|s| s.contains(&c))
    }
}

/// The detector's conclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every piece of evidence agrees on one convention.
    One(ConvId),
    /// Tensors point to different conventions (or contradict themselves).
    Mixed,
    /// No name or non-square shape distinguishes the candidates.
    NoEvidence,
    /// Several conventions explain every tensor equally (a user layout that renames nothing
    /// its base does not).
    Ambiguous(Vec<ConvId>),
}

/// Everything the detector saw, for reports to phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The conclusion.
    pub verdict: Verdict,
    /// The candidates, in order.
    pub candidates: Vec<ConvId>,
    /// Per resolved tensor.
    pub evidence: Vec<Evidence>,
    /// Per candidate: tensors whose name belongs to that convention alone.
    pub only_names: Vec<(ConvId, usize)>,
}

impl Detection {
    /// Tensors voting for each candidate.
    pub fn votes(&self, c: ConvId) -> usize {
        self.evidence.iter().filter(|e| e.votes(c)).count()
    }
}

impl Catalogue {
    /// Detects the convention of a checkpoint among `candidates` from its tensors' names and
    /// shapes (`tensors[k] = (name, shape)`).
    pub fn detect(&self, tensors: &[(&str, &[usize])], candidates: &[ConvId]) -> Detection {
        let mut evidence = Vec::new();
        for (k, (name, shape)) in tensors.iter().enumerate() {
            let hits: Vec<&Hit> = self
                .hits(name)
                .iter()
                .filter(|h| candidates.contains(&self.forms()[h.form].convention))
                .collect();
            let Some(first) = hits.first() else { continue };
            let form = &self.forms()[first.form];
            let Some(&entry) = form.entries.first().and_then(|m| m.first()) else {
                continue;
            };
            let entry = form
                .entries
                .get(first.member)
                .and_then(|m| m.get(first.part))
                .copied()
                .unwrap_or(entry);
            if self.entries()[entry].role == crate::layout::arch::Role::Buffer {
                continue;
            }
            // Candidates that store this entry at all.
            let storing: BTreeSet<ConvId> = candidates
                .iter()
                .copied()
                .filter(|&c| self.form_of(entry, c).is_some_and(|f| !f.stored.is_empty()))
                .collect();
            let named: BTreeSet<ConvId> = hits
                .iter()
                .map(|h| self.forms()[h.form].convention)
                .collect();
            let by_name = (named != storing).then_some(named);
            let square = matches!(shape, [a, b] if a == b);
            let shapes: Vec<(ConvId, Option<&Vec<usize>>)> = storing
                .iter()
                .map(|&c| (c, self.stored(entry, c).map(|s| &s.shape)))
                .collect();
            let differ = shapes.iter().any(|(_, s)| s.is_some() && *s != shapes[0].1);
            let by_shape = if differ && !square {
                let fit: BTreeSet<ConvId> = shapes
                    .iter()
                    .filter(|(_, s)| s.is_some_and(|s| s.as_slice() == *shape))
                    .map(|(c, _)| *c)
                    .collect();
                (!fit.is_empty() && fit != storing).then_some(fit)
            } else {
                None
            };
            let own = self.stored(entry, form.convention).map(|s| s.shape.clone());
            let transposed = own.is_some_and(|want| {
                want.len() == 2
                    && shape.len() == 2
                    && want[0] != want[1]
                    && shape[0] == want[1]
                    && shape[1] == want[0]
            });
            evidence.push(Evidence {
                tensor: k,
                entry,
                by_name,
                by_shape,
                transposed,
            });
        }
        let only_names = candidates
            .iter()
            .map(|&c| {
                let n = evidence
                    .iter()
                    .filter(|e| {
                        e.by_name
                            .as_ref()
                            .is_some_and(|s| s.len() == 1 && s.contains(&c))
                    })
                    .count();
                (c, n)
            })
            .collect();
        // The conventions every tensor admits, among those some tensor votes for.
        let admitted: Vec<ConvId> = candidates
            .iter()
            .copied()
            .filter(|&c| {
                evidence.iter().any(|e| e.votes(c)) && evidence.iter().all(|e| e.admits(c))
            })
            .collect();
        let verdict = match admitted.as_slice() {
            [c] => Verdict::One(*c),
            [] if evidence
                .iter()
                .any(|e| e.by_name.is_some() || e.by_shape.is_some()) =>
            {
                Verdict::Mixed
            }
            [] => Verdict::NoEvidence,
            // Built-in conventions that differ only for some tensors (hf and hf-packed, when a
            // file has none of the packed ones, e.g. a tied GPT-NeoX): the first, what
            // transformers' save_pretrained writes.
            several if several.iter().all(|&c| self.conventions()[c].builtin) => {
                Verdict::One(several[0])
            }
            several => Verdict::Ambiguous(several.to_vec()),
        };
        Detection {
            verdict,
            candidates: candidates.to_vec(),
            evidence,
            only_names,
        }
    }

    /// Binds stored tensors (`names[k]`) to the catalogue, preferring convention `prefer` for
    /// names several conventions share.
    pub fn bind(&self, names: &[&str], prefer: ConvId) -> Binding {
        let mut hits = Vec::with_capacity(names.len());
        let mut forms: HashMap<usize, Group<Option<usize>>> = HashMap::new();
        let mut duplicates = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let all = self.hits(name);
            let hit = all
                .iter()
                .find(|h| self.forms()[h.form].convention == prefer)
                .or_else(|| all.first())
                .copied();
            hits.push(hit);
            let Some(h) = hit else { continue };
            let form = &self.forms()[h.form];
            let slots = forms
                .entry(h.form)
                .or_insert_with(|| form.stored.iter().map(|m| vec![None; m.len()]).collect());
            match &mut slots[h.member][h.part] {
                Some(other) => duplicates.push((*other, k)),
                slot => *slot = Some(k),
            }
        }
        // Each entry bound by one form; the same tensor stored in two conventions is a duplicate.
        let mut entry_form: Vec<Option<usize>> = vec![None; self.entries().len()];
        let mut order: Vec<usize> = forms.keys().copied().collect();
        order.sort_unstable_by_key(|f| (self.forms()[*f].convention != prefer, *f));
        for f in order {
            for &e in self.forms()[f].entries.iter().flatten() {
                match entry_form[e] {
                    None => entry_form[e] = Some(f),
                    Some(g) if g != f => {
                        let first = forms[&g].iter().flatten().flatten().next();
                        let second = forms[&f].iter().flatten().flatten().next();
                        if let (Some(&a), Some(&b)) = (first, second) {
                            duplicates.push((a, b));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        duplicates.sort_unstable();
        duplicates.dedup();
        Binding {
            hits,
            forms,
            entry_form,
            duplicates,
        }
    }
}

/// How a checkpoint's tensors fit the catalogue.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Per tensor: where its name fits (`None`: not part of this model).
    pub hits: Vec<Option<Hit>>,
    /// Per form with any tensor present: members × parts → tensor.
    pub forms: HashMap<usize, Group<Option<usize>>>,
    /// Per canonical entry: the form binding it.
    pub entry_form: Vec<Option<usize>>,
    /// Pairs of tensors that are the same canonical tensor (a name in two spellings, or in two
    /// conventions).
    pub duplicates: Vec<(usize, usize)>,
}

/// A tensor read as its transpose because its shape is the transpose of the expected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadTransposed {
    /// Index of the tensor.
    pub tensor: usize,
    /// Its stored shape.
    pub found: Vec<usize>,
    /// The shape its convention expects.
    pub expected: Vec<usize>,
}

/// Why a canonical view cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    /// A stored tensor of the entry's form is absent.
    #[error("`{name}` is missing")]
    Missing {
        /// Its name in the convention.
        name: String,
    },
    /// A stored tensor has a shape that is neither the expected one nor its transpose.
    #[error("`{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Index of the tensor.
        tensor: usize,
        /// Its shape.
        found: Vec<usize>,
        /// Expected.
        expected: Vec<usize>,
    },
    /// The transforms failed.
    #[error(transparent)]
    Transform(#[from] TransformError),
}

impl Binding {
    /// The canonical view of `entry`, reading tensor `k` as source `k` with shape `shapes[k]`.
    /// Also returns the tensors read transposed because of their shape.
    pub fn entry_view(
        &self,
        cat: &Catalogue,
        entry: usize,
        shapes: &[&[usize]],
    ) -> Result<Option<(View, Vec<ReadTransposed>)>, BindError> {
        let Some(f) = self.entry_form[entry] else {
            return Ok(None);
        };
        let form = &cat.forms()[f];
        let present = &self.forms[&f];
        let mut transposed = Vec::new();
        let mut group: Group<View> = Vec::new();
        for (m, pm) in form.stored.iter().zip(present) {
            let mut parts = Vec::new();
            for (st, p) in m.iter().zip(pm) {
                let Some(k) = *p else {
                    return Err(BindError::Missing {
                        name: st.name.clone(),
                    });
                };
                let shape = shapes[k];
                let v = if shape == st.shape.as_slice() {
                    View::contiguous(k, shape)
                } else if shape.len() == 2
                    && st.shape.len() == 2
                    && shape[0] == st.shape[1]
                    && shape[1] == st.shape[0]
                {
                    transposed.push(ReadTransposed {
                        tensor: k,
                        found: shape.to_vec(),
                        expected: st.shape.clone(),
                    });
                    View::contiguous(k, shape).transpose_last().map_err(|e| {
                        BindError::Transform(TransformError::View {
                            transform: "read transposed".into(),
                            source: e,
                        })
                    })?
                } else {
                    return Err(BindError::Shape {
                        tensor: k,
                        found: shape.to_vec(),
                        expected: st.shape.clone(),
                    });
                };
                parts.push(v);
            }
            group.push(parts);
        }
        let canon = cat.canonical_views(f, group)?;
        for (m, members) in form.entries.iter().enumerate() {
            for (p, &e) in members.iter().enumerate() {
                if e == entry {
                    let v = canon
                        .get(m)
                        .and_then(|x| x.get(p))
                        .cloned()
                        .ok_or_else(|| BindError::Missing {
                            name: cat.entries()[entry].name.clone(),
                        })?;
                    return Ok(Some((v, transposed)));
                }
            }
        }
        Ok(None)
    }

    /// The convention the most tensors were bound in.
    pub fn main_convention(&self, cat: &Catalogue) -> Option<ConvId> {
        let mut counts: HashMap<ConvId, usize> = HashMap::new();
        for h in self.hits.iter().flatten() {
            *counts.entry(cat.forms()[h.form].convention).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(c, n)| (*n, usize::MAX - c))
            .map(|(c, _)| c)
    }
}

/// Re-exported for callers that only need the default ids.
pub use catalogue::{FLAX, HF};
