//! The outputs: for each form of the target convention, its stored tensors as views over the
//! source tensors (the target chain over canonical views read through the source's inverse
//! chains), their dtypes, and the lm_head decided with the tie.

use std::collections::{BTreeSet, HashMap};

use orient_inspect::layout::arch::Role;
use orient_inspect::layout::catalogue::{Catalogue, ConvId, Form};
use orient_inspect::layout::gather::{self, Source as Data};
use orient_inspect::layout::resolve::{BindError, Binding};
use orient_inspect::layout::transform::{Chain, Group, Transform};
use orient_inspect::layout::view::View;
use orient_inspect::{Checkpoint, Dtype};

use crate::engine::{SourceTensor, TensorOp};
use crate::error::{Error, Result};

/// Mapped source bytes a tie check reads before it drops their pages (RSS bound).
const RELEASE_BYTES: usize = 64 << 20;

/// Makes the output tensors of the target convention from the bound source.
pub(super) struct Builder<'a> {
    pub(super) ckpt: &'a Checkpoint,
    pub(super) cat: &'a Catalogue,
    pub(super) binding: &'a Binding,
    pub(super) shapes: &'a [&'a [usize]],
    pub(super) source: ConvId,
    pub(super) target: ConvId,
    pub(super) dtype: Option<Dtype>,
    pub(super) ops: Vec<TensorOp>,
    /// Source tensors left out, with the reason.
    pub(super) skips: HashMap<usize, String>,
    pub(super) notes: Vec<String>,
}

impl Builder<'_> {
    fn conv(&self, c: ConvId) -> String {
        self.cat.conventions()[c].name.clone()
    }

    /// The canonical view of `entry` over source tensor indices, if the source has it.
    fn canonical(&self, entry: usize) -> Result<Option<View>> {
        let name = &self.cat.entries()[entry].name;
        let mismatch = |tensor: usize, found: &[usize], expected: &[usize]| Error::ShapeMismatch {
            tensor: self.ckpt.tensors()[tensor].name.clone(),
            actual: found.to_vec(),
            expected: expected.to_vec(),
            convention: self.conv(self.source),
        };
        // Shapes were checked exactly before (`check_shapes`): a tensor read transposed here
        // would be a guess, and convert never guesses.
        match self.binding.entry_view(self.cat, entry, self.shapes) {
            Ok(Some((view, transposed))) => match transposed.first() {
                None => Ok(Some(view)),
                Some(t) => Err(mismatch(t.tensor, &t.found, &t.expected)),
            },
            Err(BindError::Shape {
                tensor,
                found,
                expected,
            }) => Err(mismatch(tensor, &found, &expected)),
            Ok(None) | Err(BindError::Missing { .. }) => Ok(None),
            Err(BindError::Transform(source)) => Err(Error::Transform {
                tensor: name.clone(),
                source,
            }),
        }
    }

    /// The source tensors bound to `entry` (all of its source form's).
    fn tensors_of(&self, entry: usize) -> Vec<usize> {
        self.binding.entry_form[entry]
            .and_then(|f| self.binding.forms.get(&f))
            .map(|g| g.iter().flatten().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// The source form's inverse chain for `entry` (stored → canonical), as transforms.
    fn source_steps(&self, entry: usize) -> Vec<Transform> {
        self.binding.entry_form[entry]
            .map(|f| steps(&self.cat.forms()[f].chain.inverse()))
            .unwrap_or_default()
    }

    /// Every target form, in the target convention's order.
    pub(super) fn outputs(&mut self) -> Result<()> {
        let cat = self.cat;
        let lm = cat.entries().iter().position(|e| e.role == Role::LmHead);
        for (f, form) in cat.forms().iter().enumerate() {
            if form.convention != self.target {
                continue;
            }
            let entries: Vec<usize> = form.entries.iter().flatten().copied().collect();
            if entries
                .iter()
                .all(|&e| cat.entries()[e].role == Role::Buffer)
            {
                continue;
            }
            if lm.is_some_and(|l| entries.contains(&l)) {
                self.lm_head(f, lm.unwrap_or_default())?;
                continue;
            }
            if form.stored.is_empty() {
                for &e in &entries {
                    for k in self.tensors_of(e) {
                        self.skips.insert(
                            k,
                            format!("the {} layout does not store it", self.conv(self.target)),
                        );
                    }
                }
                continue;
            }
            let mut absent = Vec::new();
            let mut group: Group<View> = Vec::new();
            for member in &form.entries {
                let mut parts = Vec::new();
                for &e in member {
                    match self.canonical(e)? {
                        Some(v) => parts.push(v),
                        None => absent.push(e),
                    }
                }
                group.push(parts);
            }
            if !absent.is_empty() {
                // Optional tensors the source does not have: nothing to write.
                if absent.len() == entries.len()
                    && entries
                        .iter()
                        .all(|&e| cat.optional(e, self.source).is_some())
                {
                    continue;
                }
                return Err(Error::MissingTensors {
                    path: self.ckpt.root().to_path_buf(),
                    convention: self.conv(self.source),
                    tensors: absent
                        .iter()
                        .map(|&e| {
                            format!(
                                "  {}: missing (the {} layout stores it in {})",
                                cat.entries()[e].name,
                                self.conv(self.target),
                                form.stored_tensors()
                                    .map(|s| s.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                        .collect(),
                });
            }
            let mut chain = self.source_steps(entries[0]);
            chain.extend(steps(&form.chain));
            self.push_form(f, group, &chain, false)?;
        }
        Ok(())
    }

    /// Adds the outputs of target form `f` made from canonical views `group`, read through
    /// `chain` (for the record).
    fn push_form(
        &mut self,
        f: usize,
        group: Group<View>,
        chain: &[Transform],
        tied: bool,
    ) -> Result<()> {
        let cat = self.cat;
        let form = &cat.forms()[f];
        let first = &cat.entries()[form.entries[0][0]].name;
        let stored = cat.to_stored(f, group).map_err(|source| Error::Transform {
            tensor: first.clone(),
            source,
        })?;
        let chain = simplify(chain.to_vec());
        for (m, member) in form.stored.iter().enumerate() {
            for (p, st) in member.iter().enumerate() {
                let view = stored
                    .get(m)
                    .and_then(|x| x.get(p))
                    .cloned()
                    .ok_or_else(|| Error::MissingTensor(st.name.clone()))?;
                let op = self.make_op(&st.name, view, chain.clone(), form, tied)?;
                self.ops.push(op);
            }
        }
        Ok(())
    }

    /// One output tensor named `target` from `view` (over source tensor indices).
    fn make_op(
        &self,
        target: &str,
        view: View,
        chain: Vec<Transform>,
        form: &Form,
        tied: bool,
    ) -> Result<TensorOp> {
        let tensors = self.ckpt.tensors();
        let order = view.sources();
        let local: HashMap<usize, usize> = order.iter().enumerate().map(|(i, &k)| (k, i)).collect();
        let view = remap(view, &local);
        let sources: Vec<SourceTensor> = order
            .iter()
            .map(|&k| SourceTensor {
                name: tensors[k].name.clone(),
                shape: tensors[k].shape.clone(),
                dtype: tensors[k].dtype,
            })
            .collect();
        let dtypes: BTreeSet<Dtype> = sources.iter().map(|s| s.dtype).collect();
        let wanted = self.dtype.or(form.chain.cast());
        let castable = |d: Dtype| matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16);
        let target_dtype = match wanted {
            Some(d) => {
                if let Some(s) = sources
                    .iter()
                    .find(|s| s.dtype != d && !(castable(s.dtype) && castable(d)))
                {
                    return Err(Error::NotCastable {
                        tensor: s.name.clone(),
                        dtype: s.dtype.name().into(),
                        target: d.name().into(),
                    });
                }
                d
            }
            None => match dtypes.iter().copied().collect::<Vec<_>>().as_slice() {
                [d] => *d,
                _ => {
                    return Err(Error::MixedDtypes {
                        tensor: target.to_string(),
                        dtypes: dtypes
                            .iter()
                            .map(|d| d.name())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
                }
            },
        };
        let op = TensorOp {
            target: target.to_string(),
            sources,
            target_shape: view.shape(),
            view,
            target_dtype,
            chain,
            tied,
        };
        if op.view.has_values() {
            if let Some(s) = op
                .sources
                .iter()
                .find(|s| !castable(s.dtype))
                .map(|s| (s.name.clone(), s.dtype))
                .or_else(|| (!castable(target_dtype)).then(|| (op.target.clone(), target_dtype)))
            {
                return Err(Error::NotComputable {
                    tensor: s.0,
                    dtype: s.1.name().into(),
                    chain: op.chain_text(),
                });
            }
        }
        Ok(op)
    }

    /// Decides the lm_head (target form `f` storing entry `lm`): keep it (through the
    /// chains), build it from a tied embedding, drop a tied copy after checking it equals
    /// the embedding, or refuse.
    fn lm_head(&mut self, f: usize, lm: usize) -> Result<()> {
        let cat = self.cat;
        let form = &cat.forms()[f];
        let entry = &cat.entries()[lm];
        let target_name = form
            .stored_tensors()
            .next()
            .map_or_else(|| entry.name.clone(), |s| s.name.clone());
        let needed = !form.stored.is_empty() && (!entry.tied || form.tied_stored);
        let head = self.canonical(lm)?;
        let emb = cat
            .entries()
            .iter()
            .position(|e| e.role == Role::Embedding)
            .ok_or_else(|| Error::MissingTensor("the token embedding".into()))?;
        let source_lm_name = cat
            .form_of(lm, self.source)
            .and_then(|f| f.stored_tensors().next())
            .map_or_else(|| entry.name.clone(), |s| s.name.clone());
        let emb_name = self
            .tensors_of(emb)
            .first()
            .map(|&k| self.ckpt.tensors()[k].name.clone())
            .unwrap_or_else(|| cat.entries()[emb].name.clone());
        if self.cat.config().tie_word_embeddings {
            if let Some(h) = &head {
                // The one check for every target: see the module docs.
                let e = self
                    .canonical(emb)?
                    .ok_or_else(|| Error::MissingTensor(cat.entries()[emb].name.clone()))?;
                if !self.equal(h, &e)? {
                    return Err(Error::LmHeadDiffers {
                        lm_head: self.names(&self.tensors_of(lm)),
                        embedding: emb_name.clone(),
                        target: self.conv(self.target),
                    });
                }
            }
        }
        match (head, needed) {
            (Some(h), true) => {
                let mut chain = self.source_steps(lm);
                chain.extend(steps(&form.chain));
                self.push_form(f, vec![vec![h]], &chain, false)?;
            }
            (None, true) if entry.tied => {
                let e = self
                    .canonical(emb)?
                    .ok_or_else(|| Error::MissingTensor(cat.entries()[emb].name.clone()))?;
                let mut chain = self.source_steps(emb);
                chain.extend(steps(&form.chain));
                let chain = simplify(chain);
                let how = match chain.as_slice() {
                    [] => String::new(),
                    [Transform::Transpose] => " transposed".into(),
                    other => format!(" through {}", text(other)),
                };
                self.notes.push(format!(
                    "tie_word_embeddings: the {} layout has its own {}, written from {}{}",
                    self.conv(self.target),
                    target_name,
                    emb_name,
                    how
                ));
                self.push_form(f, vec![vec![e]], &chain, true)?;
            }
            (None, true) => {
                return Err(Error::MissingLmHead {
                    expected: source_lm_name,
                    target_name,
                    target: self.conv(self.target),
                })
            }
            (Some(_), false) => {
                let lm_tensors = self.tensors_of(lm);
                let reason = if entry.tied {
                    // Only a tied model leaves the head out, and it was checked equal above.
                    let source_form = self.binding.entry_form[lm].map(|f| &cat.forms()[f]);
                    let mark = match source_form {
                        Some(sf) if sf.is_transposed() => "ᵀ".to_string(),
                        Some(sf) if !sf.chain.is_identity() => {
                            format!(" through {}", sf.chain.describe())
                        }
                        _ => String::new(),
                    };
                    self.notes.push(format!(
                        "tie_word_embeddings: {} dropped after checking it is bit-equal to the embedding",
                        self.names(&lm_tensors)
                    ));
                    format!(
                        "tied: equal to {}{}, and the {} layout leaves lm_head out",
                        emb_name,
                        mark,
                        self.conv(self.target)
                    )
                } else {
                    format!("the {} layout does not store it", self.conv(self.target))
                };
                for k in lm_tensors {
                    self.skips.insert(k, reason.clone());
                }
            }
            (None, false) => {}
        }
        Ok(())
    }

    fn names(&self, tensors: &[usize]) -> String {
        tensors
            .iter()
            .map(|&k| self.ckpt.tensors()[k].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True when canonical views `a` and `b` hold exactly the same bytes (same dtype, same
    /// elements), compared band by band; the sources are checked intact afterwards.
    fn equal(&self, a: &View, b: &View) -> Result<bool> {
        let tensors = self.ckpt.tensors();
        let (sa, sb) = (a.sources(), b.sources());
        let infos: Vec<_> = sa.iter().chain(&sb).map(|&k| &tensors[k]).collect();
        let dtype = infos[0].dtype;
        let equal = if a.shape() != b.shape() || infos.iter().any(|i| i.dtype != dtype) {
            false
        } else if let ([x], [y], true, true) = (
            sa.as_slice(),
            sb.as_slice(),
            a.is_identity_of(tensors[sa[0]].numel()),
            b.is_identity_of(tensors[sb[0]].numel()),
        ) {
            let (x, y) = (&tensors[*x], &tensors[*y]);
            let (bx, by) = (self.ckpt.view(x).bytes, self.ckpt.view(y).bytes);
            // By chunks, each dropped once compared: mapped pages count in the RSS, and
            // an embedding with its head is 1 GB in a 0.5B f32 model.
            bx.len() == by.len()
                && bx
                    .chunks(RELEASE_BYTES)
                    .zip(by.chunks(RELEASE_BYTES))
                    .all(|(p, q)| {
                        let same = p == q;
                        self.ckpt.release_part(x, p);
                        self.ckpt.release_part(y, q);
                        same
                    })
        } else {
            // Sources indexed as in the checkpoint, so both views read the same slice.
            let mut data: Vec<Data<'_>> = Vec::with_capacity(tensors.len());
            for t in tensors {
                let used = infos.iter().any(|i| i.name == t.name);
                data.push(Data {
                    bytes: if used { self.ckpt.view(t).bytes } else { &[] },
                    dtype: t.dtype,
                });
            }
            let es = dtype.bits() / 8;
            let (rows, cols) = gather::rows_cols(a);
            let band = ((8usize << 20) / (cols * es).max(1)).clamp(1, rows.max(1));
            let mut x = vec![0u8; band * cols * es]; // [band, cols] of `a`
            let mut y = vec![0u8; band * cols * es]; // [band, cols] of `b`
            let mut same = true;
            let mut r = 0;
            let mut since = 0usize; // bytes compared since the pages were last dropped
            while same && r < rows {
                let n = band.min(rows - r);
                let len = n * cols * es;
                let read = |v: &View, out: &mut [u8]| {
                    crate::engine::par_gather_bytes(v, &data, r..r + n, out).map_err(|source| {
                        Error::Gather {
                            tensor: self.names(&sa),
                            source,
                        }
                    })
                };
                read(a, &mut x[..len])?;
                read(b, &mut y[..len])?;
                same = x[..len] == y[..len];
                r += n;
                // A transposed view touches pages all over its source on every band:
                // drop them now and then, so that RSS stays bounded (a later band faults
                // back in what it needs from the page cache).
                since += 2 * len;
                if since >= RELEASE_BYTES {
                    for i in &infos {
                        self.ckpt.release(i);
                    }
                    since = 0;
                }
            }
            same
        };
        for i in &infos {
            self.ckpt.release(i);
        }
        // Bytes read from a file that changed meanwhile decide nothing.
        for i in &infos {
            self.ckpt.check_tensor(i)?;
        }
        Ok(equal)
    }
}

/// A view with its source indices renumbered through `map`.
fn remap(view: View, map: &HashMap<usize, usize>) -> View {
    match view {
        View::Strided(mut s) => {
            s.source = map.get(&s.source).copied().unwrap_or(s.source);
            View::Strided(s)
        }
        View::Pieces(mut p) => {
            p.chunks = p
                .chunks
                .into_iter()
                .map(|(c, v)| (c, remap(v, map)))
                .collect();
            View::Pieces(p)
        }
    }
}

/// The transforms of a chain, without casts (the output dtype says those).
fn steps(chain: &Chain) -> Vec<Transform> {
    chain
        .steps
        .iter()
        .map(|s| s.transform.clone())
        .filter(|t| !matches!(t, Transform::Cast(_)))
        .collect()
}

/// Removes neighbouring steps that undo each other (a source convention's inverse transpose
/// followed by the target's transpose), so that the chain names what actually moves. Value
/// operations are kept: `add(-1)` then `add(1)` is not exact in floating point.
fn simplify(chain: Vec<Transform>) -> Vec<Transform> {
    let mut out: Vec<Transform> = Vec::with_capacity(chain.len());
    for t in chain {
        if out.last().is_some_and(|last| undoes(last, &t)) {
            out.pop();
        } else {
            out.push(t);
        }
    }
    out
}

/// True when `b` right after `a` leaves every element where it was.
fn undoes(a: &Transform, b: &Transform) -> bool {
    use Transform as T;
    match (a, b) {
        (T::Transpose, T::Transpose) | (T::ReverseDims, T::ReverseDims) => true,
        (T::Permute(p), T::Permute(q)) => {
            p.len() == q.len() && q.iter().enumerate().all(|(k, &a)| p.get(a) == Some(&k))
        }
        (
            T::RopePermute {
                axis,
                heads,
                rotary,
                to,
            },
            T::RopePermute {
                axis: a2,
                heads: h2,
                rotary: r2,
                to: t2,
            },
        ) => axis == a2 && heads == h2 && rotary == r2 && to != t2,
        (
            T::Split {
                axis,
                arrangement,
                outer,
                ..
            },
            T::Fuse {
                axis: a2,
                arrangement: r2,
                outer: o2,
            },
        ) => axis == a2 && arrangement == r2 && outer == o2,
        (T::Stack { axis }, T::Unstack { axis: a2 })
        | (T::Unstack { axis }, T::Stack { axis: a2 }) => axis == a2,
        _ => false,
    }
}

fn text(chain: &[Transform]) -> String {
    chain
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_that_undo_each_other_cancel() {
        use orient_inspect::layout::transform::RopeOrder;
        let rope = |to| Transform::RopePermute {
            axis: 0,
            heads: 4,
            rotary: 16,
            to,
        };
        assert_eq!(
            simplify(vec![Transform::Transpose, Transform::Transpose]),
            []
        );
        assert_eq!(
            simplify(vec![
                Transform::Transpose,
                rope(RopeOrder::Half),
                rope(RopeOrder::Interleaved),
                Transform::Transpose
            ]),
            []
        );
        assert_eq!(
            simplify(vec![Transform::Transpose, rope(RopeOrder::Half)]),
            [Transform::Transpose, rope(RopeOrder::Half)]
        );
        assert_eq!(
            simplify(vec![
                Transform::Permute(vec![1, 2, 0]),
                Transform::Permute(vec![2, 0, 1])
            ]),
            []
        );
        assert_eq!(
            simplify(vec![
                Transform::Permute(vec![1, 2, 0]),
                Transform::Permute(vec![1, 2, 0])
            ])
            .len(),
            2
        );
        // Arithmetic never cancels.
        assert_eq!(
            simplify(vec![Transform::Add(-1.0), Transform::Add(1.0)]).len(),
            2
        );
    }
}
