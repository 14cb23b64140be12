//! Binding a checkpoint's tensors to the forward's slots through the layout catalogue: the
//! one convention detector, then names, shapes, dtypes, the tied lm_head, and what loading
//! should tell the user.
//!
//! Every step is the catalogue's: [`Catalogue::detect`] picks the convention from names and
//! non-square shapes (a user's `--layout` when they do not decide), [`Catalogue::bind`] maps
//! each stored tensor to its canonical entry, [`Binding::entry_view`] reads an entry through
//! the inverse of its convention's transforms (a shape that is the exact transpose of the
//! expected one is read transposed, and noted), and [`Catalogue::slot_views`] splits a fused
//! entry into the slots it feeds.

use std::collections::BTreeMap;
use std::sync::Arc;

use orient_inspect::layout::arch::Role;
use orient_inspect::layout::catalogue::{Catalogue, ConvId, HF};
use orient_inspect::layout::convention::Convention;
use orient_inspect::layout::resolve::{BindError, Binding, ReadTransposed, Verdict};
use orient_inspect::layout::view::View;
use orient_inspect::{Checkpoint, ModelConfig};

use super::traits::Traits;
use super::weights::{slot_name, Slots, Weights};
use super::{LoadNote, MissingTensor, ModelError, ShapeMismatch, Unrecognised};

/// The weights of a checkpoint, what loading noticed, and the convention they were read in.
#[derive(Debug)]
pub(crate) struct Located {
    /// The typed weights.
    pub weights: Weights,
    /// Notes, in tensor order, then the lm_head's.
    pub notes: Vec<LoadNote>,
    /// Name of the convention the checkpoint was read in.
    pub convention: String,
}

/// Binds every tensor of `ckpt` through the catalogue of `cfg` (built-in conventions plus
/// `layouts`), checks names, shapes and dtypes, and builds the typed weights `traits` call
/// for. Nothing is read.
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
    let names: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
    let shapes: Vec<&[usize]> = ckpt.tensors().iter().map(|t| t.shape.as_slice()).collect();
    let conv = choose_convention(&cat, &names, &shapes, layouts);
    let b = Bound {
        binding: cat.bind(&names, conv),
        cat: &cat,
        ckpt,
        names,
        shapes,
        conv,
        path,
    };
    b.refuse_duplicates()?;
    let mut notes = b.check_tensors()?;
    let mut canonical = b.canonical_views(&mut notes)?;
    b.require_present(&canonical, &notes)?;
    let mut notes: Vec<LoadNote> = notes.into_values().collect();
    let weights = if super::encoder::is_encoder(cfg) {
        // no LM head to choose: the encoder computes hidden states and the pooler
        Weights::Encoder(Box::new(b.slots(canonical)?.encoder(cfg)?))
    } else {
        notes.extend(b.choose_head(&mut canonical));
        Weights::Decoder(Box::new(b.slots(canonical)?.assemble(cfg, traits)?))
    };
    Ok(Located {
        weights,
        notes,
        convention: cat.conventions()[conv].name.clone(),
    })
}

/// The convention a checkpoint is read in: the one the detector finds, else the user's
/// layout file, else the one with the most names of its own (HF on a tie or without
/// evidence).
fn choose_convention(
    cat: &Catalogue,
    names: &[&str],
    shapes: &[&[usize]],
    layouts: &[Arc<Convention>],
) -> ConvId {
    let tensors: Vec<(&str, &[usize])> =
        names.iter().copied().zip(shapes.iter().copied()).collect();
    let candidates: Vec<ConvId> = (0..cat.conventions().len()).collect();
    let detection = cat.detect(&tensors, &candidates);
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

/// A checkpoint bound to the catalogue in convention `conv`.
struct Bound<'a> {
    cat: &'a Catalogue,
    ckpt: &'a Checkpoint,
    binding: Binding,
    names: Vec<&'a str>,
    shapes: Vec<&'a [usize]>,
    conv: ConvId,
    path: String,
}

impl Bound<'_> {
    /// The name of the convention of form `f` (the checkpoint's, when `None`).
    fn convention_of(&self, f: Option<usize>) -> String {
        let c = f.map_or(self.conv, |f| self.cat.forms()[f].convention);
        self.cat.conventions()[c].name.clone()
    }

    /// The same canonical tensor stored twice (in two conventions, or two spellings).
    fn refuse_duplicates(&self) -> Result<(), ModelError> {
        let Some(&(a, b)) = self.binding.duplicates.first() else {
            return Ok(());
        };
        let canonical = self.binding.hits[a]
            .and_then(|h| {
                let form = &self.cat.forms()[h.form];
                form.entries.get(h.member)?.get(h.part).copied()
            })
            .map_or_else(
                || self.names[a].to_string(),
                |e| self.cat.entries()[e].name.clone(),
            );
        Err(ModelError::DuplicateTensor {
            path: self.path.clone(),
            canonical,
            first: self.names[a].to_string(),
            second: self.names[b].to_string(),
        })
    }

    /// Per tensor: a name no convention knows is noted (and not used); a weight of a dtype the
    /// forward cannot read is refused. Buffers (old GPT-2 mask tensors) are skipped silently.
    fn check_tensors(&self) -> Result<BTreeMap<usize, LoadNote>, ModelError> {
        let mut notes = BTreeMap::new();
        for (k, (t, hit)) in self
            .ckpt
            .tensors()
            .iter()
            .zip(&self.binding.hits)
            .enumerate()
        {
            let Some(h) = hit else {
                notes.insert(
                    k,
                    LoadNote::Ignored {
                        name: t.name.clone(),
                    },
                );
                continue;
            };
            let buffer = self.cat.forms()[h.form]
                .entries
                .iter()
                .flatten()
                .all(|&e| self.cat.entries()[e].role == Role::Buffer);
            if !buffer && !t.dtype.is_computable() {
                return Err(ModelError::UnsupportedDtype {
                    path: self.path.clone(),
                    name: t.name.clone(),
                    dtype: t.dtype.name(),
                });
            }
        }
        Ok(notes)
    }

    /// Every bound weight's canonical view, checking each stored shape; tensors read
    /// transposed because of their shape are noted.
    fn canonical_views(
        &self,
        notes: &mut BTreeMap<usize, LoadNote>,
    ) -> Result<Vec<Option<View>>, ModelError> {
        let mut canonical: Vec<Option<View>> = vec![None; self.cat.entries().len()];
        for (e, entry) in self.cat.entries().iter().enumerate() {
            if !entry.is_weight() {
                continue;
            }
            match self.binding.entry_view(self.cat, e, &self.shapes) {
                Ok(Some((view, transposed))) => {
                    canonical[e] = Some(view);
                    for ReadTransposed {
                        tensor,
                        found,
                        expected,
                    } in transposed
                    {
                        let name = self.names[tensor].to_string();
                        let note = LoadNote::ReadTransposed {
                            name,
                            found,
                            expected,
                        };
                        notes.insert(tensor, note);
                    }
                }
                Ok(None) => {}
                Err(BindError::Shape {
                    tensor,
                    found,
                    expected,
                }) => {
                    return Err(ModelError::ShapeMismatch(Box::new(ShapeMismatch {
                        path: self.path.clone(),
                        name: self.names[tensor].to_string(),
                        found,
                        expected,
                        formula: entry.shape_formula.clone(),
                        convention: self.convention_of(self.binding.entry_form[e]),
                    })))
                }
                Err(BindError::Missing { name }) => {
                    return Err(ModelError::MissingTensor(Box::new(MissingTensor {
                        path: self.path.clone(),
                        name,
                        canonical: entry.name.clone(),
                        convention: self.convention_of(self.binding.entry_form[e]),
                        unrecognised: None,
                    })))
                }
                Err(BindError::Transform(source)) => {
                    return Err(ModelError::Internal(format!(
                        "reading `{}` through its layout: {source}",
                        entry.name
                    )))
                }
            }
        }
        Ok(canonical)
    }

    /// Fails on a required entry that is absent, saying how many of the checkpoint's tensors
    /// no convention recognised (the usual reason: a checkpoint that names its tensors its own
    /// way). A missing lm_head is never fatal: the embedding is then the only sensible head.
    fn require_present(
        &self,
        canonical: &[Option<View>],
        notes: &BTreeMap<usize, LoadNote>,
    ) -> Result<(), ModelError> {
        let missing = self.cat.entries().iter().enumerate().find(|(e, entry)| {
            entry.is_weight()
                && entry.optional.is_none()
                && entry.role != Role::LmHead
                && canonical[*e].is_none()
        });
        let Some((e, entry)) = missing else {
            return Ok(());
        };
        let ignored: Vec<&str> = notes
            .values()
            .filter_map(|n| match n {
                LoadNote::Ignored { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let unrecognised = ignored.first().map(|first| Unrecognised {
            count: ignored.len(),
            total: self.names.len(),
            example: first.to_string(),
            arch: self.cat.arch().model_type().to_string(),
        });
        Err(ModelError::MissingTensor(Box::new(MissingTensor {
            path: self.path.clone(),
            name: self
                .cat
                .stored(e, self.conv)
                .map_or_else(|| entry.name.clone(), |s| s.name.clone()),
            canonical: entry.name.clone(),
            convention: self.convention_of(None),
            unrecognised,
        })))
    }

    /// Which head computes the logits, as the framework that loads the stored layout decides:
    /// with tied embeddings PyTorch ignores a stored head (logits from the embedding), while a
    /// convention whose framework always owns one (the Flax llama family: `Form::tied_stored`)
    /// uses it. A head that differs from the embedding then gives different logits, as in the
    /// two frameworks. Drops an ignored head from `canonical`; returns the note to show.
    fn choose_head(&self, canonical: &mut [Option<View>]) -> Option<LoadNote> {
        let h = self
            .cat
            .entries()
            .iter()
            .position(|e| e.role == Role::LmHead)?;
        let stored = self.binding.entry_form[h].filter(|_| canonical[h].is_some());
        match (self.cat.config().tie_word_embeddings, stored) {
            (true, Some(f)) if self.cat.forms()[f].tied_stored => {
                let name = self.binding.forms[&f]
                    .iter()
                    .flatten()
                    .flatten()
                    .next()
                    .map_or_else(
                        || self.cat.entries()[h].name.clone(),
                        |&k| self.names[k].to_string(),
                    );
                let conv = &self.cat.conventions()[self.cat.forms()[f].convention];
                Some(LoadNote::TiedButOwnLmHead {
                    name,
                    convention: conv.name.clone(),
                    builtin: conv.builtin,
                })
            }
            (true, Some(_)) => {
                canonical[h] = None;
                Some(LoadNote::TiedLmHeadIgnored)
            }
            (true, None) => Some(LoadNote::Tied),
            (false, Some(_)) => None,
            (false, None) => Some(LoadNote::UntiedButNoLmHead),
        }
    }

    /// The canonical views split into the forward's slots (a fused entry feeds several).
    fn slots(&self, canonical: Vec<Option<View>>) -> Result<Slots, ModelError> {
        let mut slots = Slots::default();
        for (e, view) in canonical.into_iter().enumerate() {
            let Some(view) = view else { continue };
            let entry = &self.cat.entries()[e];
            let views = self.cat.slot_views(e, view).map_err(|source| {
                ModelError::Internal(format!(
                    "deriving the forward's slots of `{}`: {source}",
                    entry.name
                ))
            })?;
            let several = views.len() > 1;
            for (slot, v) in views {
                let name = if several {
                    format!("{} ({})", entry.name, slot_name(slot))
                } else {
                    entry.name.clone()
                };
                match (entry.layer, entry.expert) {
                    (Some(layer), Some(expert)) => {
                        slots.insert_expert(layer, expert, slot, v, name)
                    }
                    _ => slots.insert(entry.layer, slot, v, name),
                }
            }
        }
        Ok(slots)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use orient_inspect::layout::convention;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn located(name: &str, layouts: &[Arc<Convention>]) -> Result<Located, ModelError> {
        let ckpt = Checkpoint::open(fixture(name)).unwrap();
        let cfg = ckpt.config().unwrap().clone();
        let traits = Traits::of(&cfg).unwrap();
        locate(&ckpt, &cfg, &traits, layouts)
    }

    /// GPT-2's q, k, v are column blocks of one `c_attn` `[H, 3H]` Conv1D weight: three
    /// strided views of the same tensor, read in place; its bias splits the same way.
    #[test]
    fn a_fused_tensor_feeds_several_slots_as_strided_views() {
        let l = located("gpt2", &[]).unwrap();
        let h = 64;
        let Weights::Decoder(w) = &l.weights else {
            panic!("gpt2 is a decoder")
        };
        let layer = &w.layers[0];
        let parts: Vec<(usize, usize, Vec<usize>)> = [&layer.q, &layer.k, &layer.v]
            .iter()
            .map(|p| p.weight.view.simple_strides().unwrap())
            .collect();
        assert!(parts.iter().all(|(s, _, _)| *s == parts[0].0));
        assert_eq!(
            parts
                .iter()
                .map(|(_, o, st)| (*o, st.clone()))
                .collect::<Vec<_>>(),
            [
                (0, vec![1, 3 * h]),
                (h, vec![1, 3 * h]),
                (2 * h, vec![1, 3 * h])
            ]
        );
        assert_eq!(
            layer
                .k
                .bias
                .as_ref()
                .unwrap()
                .view
                .simple_strides()
                .unwrap()
                .1,
            h
        );
        assert_eq!(l.convention, "hf");
        assert!(l.notes.contains(&LoadNote::Tied));
    }

    /// The made-up JAX port through its layout file: kernels `[in, out]` and the fused
    /// gate/up stay strided views (in place); q and k, stored in interleaved RoPE order, are
    /// index maps the reader gathers.
    #[test]
    fn a_user_layout_binds_its_own_names() {
        let layout =
            convention::load_with(&fixture("qwen2-port/layout.toml"), convention::builtins())
                .unwrap();
        let l = located("qwen2-port", &[Arc::new(layout)]).unwrap();
        assert_eq!(l.convention, "qwen2-jax-port");
        assert!(l.notes.is_empty(), "{:?}", l.notes);
        let Weights::Decoder(w) = &l.weights else {
            panic!("a decoder")
        };
        let layer = &w.layers[1];
        let gate = layer
            .mlp
            .as_ref()
            .unwrap()
            .gate
            .as_ref()
            .unwrap()
            .weight
            .view
            .simple_strides()
            .unwrap();
        let up = layer
            .mlp
            .as_ref()
            .unwrap()
            .up
            .weight
            .view
            .simple_strides()
            .unwrap();
        assert_eq!(gate.0, up.0, "one stored tensor");
        assert_eq!((gate.1, up.1), (0, 176));
        assert_eq!(gate.2, [1, 352]);
        assert_eq!(layer.o.weight.view.simple_strides().unwrap().2, [1, 64]);
        assert!(layer.q.weight.view.simple_strides().is_none());
        assert!(layer
            .k
            .bias
            .as_ref()
            .unwrap()
            .view
            .simple_strides()
            .is_none());
        assert_eq!(
            layer
                .v
                .bias
                .as_ref()
                .unwrap()
                .view
                .simple_strides()
                .unwrap()
                .2,
            [1]
        );
    }

    /// Packed experts (`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`) feed each expert's
    /// gate, up and down as strided views into the packed tensors, read in place like the
    /// per-expert file's own tensors; layer 1 of qwen3-moe is a dense MLP (`mlp_only_layers`).
    #[test]
    fn packed_experts_are_strided_views_of_the_packed_tensors() {
        let (i, h) = (16, 32);
        for name in ["qwen3-moe", "qwen3-moe-packed"] {
            let l = located(name, &[]).unwrap();
            let Weights::Decoder(w) = &l.weights else {
                panic!("a decoder")
            };
            assert!(w.layers[1].moe.is_none() && w.layers[1].mlp.is_some());
            let moe = w.layers[0].moe.as_ref().unwrap();
            assert!(w.layers[0].mlp.is_none());
            assert_eq!(moe.experts.len(), 4);
            assert_eq!((moe.routing.top_k, moe.routing.renormalise), (2, true));
            let e = &moe.experts[3];
            let (gate, up, down) = (
                e.gate.view.simple_strides().unwrap(),
                e.up.view.simple_strides().unwrap(),
                e.down.view.simple_strides().unwrap(),
            );
            assert_eq!((gate.2.clone(), down.2.clone()), (vec![h, 1], vec![i, 1]));
            if name.ends_with("packed") {
                assert_eq!(gate.0, up.0, "gate and up: one packed tensor");
                assert_eq!((gate.1, up.1), (3 * 2 * i * h, 3 * 2 * i * h + i * h));
                assert_eq!(down.1, 3 * h * i);
                assert_eq!(l.convention, "hf-packed");
            } else {
                assert_ne!(gate.0, up.0);
                assert_eq!((gate.1, up.1, down.1), (0, 0, 0));
            }
        }
    }

    /// Without its layout file, the port's names mean nothing to the built-in conventions:
    /// the error says which tensor is missing and why that is the likely reason.
    #[test]
    fn a_checkpoint_with_its_own_names_asks_for_a_layout() {
        let e = located("qwen2-port", &[]).unwrap_err().to_string();
        assert!(
            e.contains("missing tensor `model.embed_tokens.embedding`"),
            "{e}"
        );
        assert!(
            e.contains("24 of its 25 tensors (e.g. `params.decoder.layer_0.attn.bk`)"),
            "{e}"
        );
        assert!(e.ends_with("pass --layout FILE"), "{e}");
    }
}
