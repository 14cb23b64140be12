//! Finding each weight of the model in a checkpoint, in whichever convention it is stored,
//! and handing it to the forward as an f32 matrix view.
//!
//! Names are resolved through the layout catalogue, so an HF file, a Flax file (or a mix) are
//! all read directly: an HF `[out, in]` Linear and a Flax `[in, out]` kernel become the same
//! logical `[in, out]` matrix with different strides. f32 tensors that are aligned in the mmap
//! are used in place; bf16/f16 (or misaligned f32) are widened into one reusable buffer, so the
//! memory held is about one weight matrix, whatever the size of the model.

use std::collections::HashMap;

use orient_inspect::catalogue::uses_own_lm_head;
use orient_inspect::{
    Catalogue, Checkpoint, Convention, Dtype, ModelConfig, Orientation, Role, TensorInfo,
};
use rayon::prelude::*;

use super::matmul::MatRef;
use super::{LoadNote, ModelError, ShapeMismatch};

/// How a 2-D weight is stored, relative to the logical `[in, out]` matrix the forward
/// multiplies by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    /// Rows are outputs: HF Linear `[out, in]`, Flax GPT-2 Conv1D `[out, in]`, embeddings
    /// `[V, H]` used as lm_head.
    OutIn,
    /// Rows are inputs: Flax kernel `[in, out]`, HF GPT-2 Conv1D `[in, out]`.
    InOut,
    /// Not a matrix (norm weights, biases).
    Vector,
}

impl Stored {
    fn of(o: Orientation) -> Stored {
        match o {
            Orientation::HfLinear
            | Orientation::FlaxConv1dKernel
            | Orientation::Embedding
            | Orientation::PositionTable => Stored::OutIn,
            Orientation::FlaxKernel | Orientation::HfConv1d => Stored::InOut,
            _ => Stored::Vector,
        }
    }

    fn flipped(self) -> Stored {
        match self {
            Stored::OutIn => Stored::InOut,
            Stored::InOut => Stored::OutIn,
            Stored::Vector => Stored::Vector,
        }
    }
}

/// One weight found in the checkpoint.
#[derive(Clone, Debug)]
struct Found<'c> {
    info: &'c TensorInfo,
    /// How it is stored (after any transposed-read correction).
    stored: Stored,
    /// Layer index, for releasing its pages after the layer.
    layer: Option<usize>,
}

/// The model's weights, by canonical (HF) name.
#[derive(Debug)]
pub(crate) struct Weights<'c> {
    ckpt: &'c Checkpoint,
    found: HashMap<String, Found<'c>>,
    /// Reusable f32 buffer for widened weights. Grows to the largest matrix read.
    scratch: Vec<f32>,
    /// What loading noticed (transposed reads, tied embeddings, unknown tensors, ...).
    pub notes: Vec<LoadNote>,
    /// The convention most weights were stored in.
    pub convention: Convention,
    /// Release each tensor's mmap pages after use (bounded RSS), or keep them mapped
    /// (faster repeated forwards on a model that fits in RAM).
    pub release_pages: bool,
}

impl<'c> Weights<'c> {
    /// Resolves every tensor of `ckpt` through the catalogue of `cfg` and checks shapes.
    pub fn locate(ckpt: &'c Checkpoint, cfg: &ModelConfig) -> Result<Weights<'c>, ModelError> {
        let path = ckpt.root().display().to_string();
        let cat = Catalogue::new(cfg);
        let mut found: HashMap<String, Found<'c>> = HashMap::new();
        let mut notes = Vec::new();
        let (mut n_hf, mut n_flax) = (0usize, 0usize);
        // The convention the stored lm_head is named in, if there is one.
        let mut lm_head_convention = None;
        for info in ckpt.tensors() {
            let Some(m) = cat.resolve(&info.name) else {
                notes.push(LoadNote::Ignored {
                    name: info.name.clone(),
                });
                continue;
            };
            let entry = &cat.entries()[m.entry];
            if entry.role == Role::Buffer {
                continue;
            }
            if !m.shared {
                match m.convention {
                    Convention::Hf => n_hf += 1,
                    Convention::Flax => n_flax += 1,
                }
            }
            let form = entry.form(m.convention);
            let mut stored = Stored::of(form.orientation);
            if info.shape != form.shape {
                let reversed: Vec<usize> = form.shape.iter().rev().copied().collect();
                if form.shape.len() == 2 && info.shape == reversed && stored != Stored::Vector {
                    // What a loader that trusts shapes does: read it as the transpose. Loudly.
                    stored = stored.flipped();
                    notes.push(LoadNote::ReadTransposed {
                        name: info.name.clone(),
                        found: info.shape.clone(),
                        expected: form.shape.clone(),
                    });
                } else {
                    return Err(ModelError::ShapeMismatch(Box::new(ShapeMismatch {
                        path,
                        name: info.name.clone(),
                        found: info.shape.clone(),
                        expected: form.shape.clone(),
                        formula: entry.shape_formula,
                        convention: m.convention.name(),
                    })));
                }
            }
            match info.dtype {
                Dtype::F32 | Dtype::BF16 | Dtype::F16 | Dtype::F64 => {}
                other => {
                    return Err(ModelError::UnsupportedDtype {
                        path,
                        name: info.name.clone(),
                        dtype: other.name(),
                    })
                }
            }
            if entry.role == Role::LmHead {
                lm_head_convention = Some(m.convention);
            }
            let canonical = entry.hf.name.clone();
            if let Some(previous) = found.get(&canonical) {
                return Err(ModelError::DuplicateTensor {
                    path,
                    canonical,
                    first: previous.info.name.clone(),
                    second: info.name.clone(),
                });
            }
            found.insert(
                canonical,
                Found {
                    info,
                    stored,
                    layer: entry.layer,
                },
            );
        }
        for entry in cat.entries() {
            if entry.role == Role::Buffer || entry.optional.is_some() {
                continue;
            }
            if !found.contains_key(&entry.hf.name) {
                if entry.role == Role::LmHead {
                    // Config says untied but there is no lm_head: transformers would leave it
                    // random; the only sensible reading is tied.
                    notes.push(LoadNote::UntiedButNoLmHead);
                    continue;
                }
                return Err(ModelError::MissingTensor {
                    path,
                    name: entry.hf.name.clone(),
                    flax_name: entry.flax.name.clone(),
                });
            }
        }
        // Tied embeddings: compute the logits as the framework that loads the stored layout
        // does. PyTorch ignores a stored lm_head.weight (logits from the embedding); the Flax
        // llama-family classes always use their lm_head.kernel. A head that differs from the
        // embedding then gives different logits, as it would in the two frameworks.
        let lm_head = cat.entries().iter().find(|e| e.role == Role::LmHead);
        if cfg.tie_word_embeddings {
            if let Some(e) = lm_head {
                match lm_head_convention {
                    Some(c) if uses_own_lm_head(cfg, c) => {
                        notes.push(LoadNote::TiedButOwnLmHead {
                            name: e.form(c).name.clone(),
                        });
                    }
                    Some(_) => {
                        found.remove(&e.hf.name);
                        notes.push(LoadNote::TiedLmHeadIgnored);
                    }
                    None => notes.push(LoadNote::Tied),
                }
            }
        }
        let convention = if n_flax > n_hf {
            Convention::Flax
        } else {
            Convention::Hf
        };
        Ok(Weights {
            ckpt,
            found,
            scratch: Vec::new(),
            notes,
            convention,
            release_pages: true,
        })
    }

    /// Total elements of the located weights.
    pub fn parameters(&self) -> usize {
        self.found.values().map(|f| f.info.numel()).sum()
    }

    /// Whether the weight is present (optional biases, an untied lm_head).
    pub fn has(&self, name: &str) -> bool {
        self.found.contains_key(name)
    }

    fn get(&self, name: &str) -> Result<&Found<'c>, ModelError> {
        self.found
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.ckpt.root().display().to_string(),
                name: name.to_string(),
                flax_name: String::new(),
            })
    }

    /// A 1-D weight (norm scale, bias) as f32.
    pub fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let f = self.get(name)?;
        let v = self
            .ckpt
            .view(f.info)
            .to_f32_vec()
            .map_err(|e| self.read_error(name, e))?;
        self.check(f.info)?;
        Ok(v)
    }

    /// Fails if the file holding `t` changed since it was opened (see
    /// `Checkpoint::check_intact`): run after each read, so that a truncated file ends
    /// the forward with an error naming it.
    fn check(&self, t: &TensorInfo) -> Result<(), ModelError> {
        self.ckpt.check_tensor(t).map_err(ModelError::Changed)
    }

    /// Fails if any weight file changed since it was opened; run after the forward,
    /// since weights used in place are read inside the matmuls.
    pub fn check_intact(&self) -> Result<(), ModelError> {
        self.ckpt.check_intact().map_err(ModelError::Changed)
    }

    /// The weight `name` as the logical `[in, out]` matrix (`rows = in`), restricted to the
    /// outputs `out_start..out_end`. Zero-copy when stored aligned f32, else widened into the
    /// reusable buffer.
    pub fn matrix_block(
        &mut self,
        name: &str,
        out_start: usize,
        out_end: usize,
    ) -> Result<MatRef<'_>, ModelError> {
        let f = self.get(name)?.clone();
        let shape = &f.info.shape;
        let (rows, cols) = match shape.as_slice() {
            [r, c] => (*r, *c),
            _ => return Err(ModelError::Internal(format!("`{name}` is not 2-D"))),
        };
        let (n_in, n_out) = match f.stored {
            Stored::OutIn => (cols, rows),
            Stored::InOut => (rows, cols),
            Stored::Vector => {
                return Err(ModelError::Internal(format!("`{name}` is not a matrix")))
            }
        };
        if out_start > out_end || out_end > n_out {
            return Err(ModelError::Internal(format!(
                "`{name}`: output block {out_start}..{out_end} outside {n_out}"
            )));
        }
        let width = out_end - out_start;
        let view = self.ckpt.view(f.info);
        if let Some(all) = view.as_f32() {
            // Read later, in place, by the matmul: `Model::forward` checks the files
            // after it; this catches a change before it.
            self.check(f.info)?;
            // In place: offset the view to the first output of the block.
            return match f.stored {
                // [out, in]: element (i, o) at o·in + i
                Stored::OutIn => MatRef::new(&all[out_start * n_in..], n_in, width, 1, n_in),
                // [in, out]: element (i, o) at i·out + o
                _ => MatRef::new(&all[out_start..], n_in, width, n_out, 1),
            };
        }
        let elem = f.info.dtype.bits() / 8;
        let len = n_in
            .checked_mul(width)
            .ok_or_else(|| ModelError::Internal(format!("`{name}` too large")))?;
        self.scratch.resize(len, 0.0);
        let bytes = view.bytes;
        let dtype = f.info.dtype;
        match f.stored {
            Stored::OutIn => {
                // the block is contiguous: outputs out_start..out_end, each n_in long
                let src = &bytes[out_start * n_in * elem..out_end * n_in * elem];
                widen_par(dtype, src, &mut self.scratch);
                self.check(f.info)?;
                MatRef::new(&self.scratch, n_in, width, 1, n_in)
            }
            _ => {
                // one segment of `width` outputs per input row
                let scratch = &mut self.scratch;
                scratch
                    .par_chunks_mut(width)
                    .enumerate()
                    .for_each(|(i, dst)| {
                        let start = (i * n_out + out_start) * elem;
                        widen(dtype, &bytes[start..start + width * elem], dst);
                    });
                self.check(f.info)?;
                MatRef::new(&self.scratch, n_in, width, width, 1)
            }
        }
    }

    /// The whole weight `name` as the logical `[in, out]` matrix.
    pub fn matrix(&mut self, name: &str) -> Result<MatRef<'_>, ModelError> {
        let n_out = self.out_features(name)?;
        self.matrix_block(name, 0, n_out)
    }

    /// Number of outputs of a 2-D weight.
    pub fn out_features(&self, name: &str) -> Result<usize, ModelError> {
        let f = self.get(name)?;
        match (f.info.shape.as_slice(), f.stored) {
            ([r, _], Stored::OutIn) => Ok(*r),
            ([_, c], Stored::InOut) => Ok(*c),
            _ => Err(ModelError::Internal(format!("`{name}` is not a matrix"))),
        }
    }

    /// Rows `tokens` of an embedding table `[V, H]`, as f32 `[T, H]`.
    pub fn embedding_rows(&self, name: &str, rows: &[usize]) -> Result<Vec<f32>, ModelError> {
        let f = self.get(name)?;
        // A table is [rows, width]; one read transposed is stored [width, rows].
        let (n_rows, width) = match (f.info.shape.as_slice(), f.stored) {
            ([r, c], Stored::InOut) => (*c, *r),
            ([r, c], _) => (*r, *c),
            _ => return Err(ModelError::Internal(format!("`{name}` is not 2-D"))),
        };
        let elem = f.info.dtype.bits() / 8;
        let bytes = self.ckpt.view(f.info).bytes;
        let mut out = vec![0.0f32; rows.len() * width]; // [T, H]
        for (dst, &r) in out.chunks_mut(width).zip(rows) {
            if r >= n_rows {
                return Err(ModelError::Internal(format!("row {r} outside `{name}`")));
            }
            if f.stored == Stored::InOut {
                // element (r, h) at h·n_rows + r
                for (h, d) in dst.iter_mut().enumerate() {
                    let at = (h * n_rows + r) * elem;
                    widen(f.info.dtype, &bytes[at..at + elem], std::slice::from_mut(d));
                }
            } else {
                widen(
                    f.info.dtype,
                    &bytes[r * width * elem..(r + 1) * width * elem],
                    dst,
                );
            }
        }
        self.check(f.info)?;
        Ok(out)
    }

    /// Weight bytes resident in the three phases of a forward over `tokens` tokens: while the
    /// embedding rows are gathered, while the layers run, and while the logits are computed.
    /// Mapped pages count (one layer at a time when pages are released, every weight
    /// otherwise; the lm_head `head` one vocabulary block at a time when its rows are its
    /// outputs), as does the reusable f32 buffer bf16/f16 weights are widened into.
    pub fn resident_bytes(
        &self,
        tokens: usize,
        embedding: &str,
        head: &str,
        head_block: usize,
    ) -> ResidentWeights {
        const PAGE: u128 = 4096;
        let bytes = |f: &Found<'_>| f.info.nbytes() as u128;
        // The widening buffer grows to the largest matrix (or lm_head block) read widened.
        let widened = |name: &str, f: &Found<'_>| -> u128 {
            if self.ckpt.view(f.info).as_f32().is_some() || f.stored == Stored::Vector {
                return 0;
            }
            let numel = f.info.numel() as u128;
            if name == head {
                let n_out = self.out_features(name).unwrap_or(1).max(1) as u128;
                4 * numel / n_out * n_out.min(head_block as u128)
            } else {
                4 * numel
            }
        };
        let scratch = self
            .found
            .iter()
            .map(|(name, f)| widened(name, f))
            .max()
            .unwrap_or(0);
        if !self.release_pages {
            let all: u128 = self.found.values().map(bytes).sum::<u128>() + scratch;
            return ResidentWeights {
                gather: all,
                layers: all,
                logits: all,
            };
        }
        let mut per_layer: HashMap<usize, u128> = HashMap::new();
        let mut other = 0u128; // final norm, position table, ...
        for (name, f) in &self.found {
            match f.layer {
                Some(l) => *per_layer.entry(l).or_default() += bytes(f),
                None if name == embedding || name == head => {}
                None => other += bytes(f),
            }
        }
        let layer = per_layer.values().copied().max().unwrap_or(0);
        let table = self.found.get(embedding).map_or(0, bytes);
        let rows = self
            .found
            .get(embedding)
            .and_then(|f| f.info.shape.first().copied())
            .unwrap_or(1)
            .max(1) as u128;
        // each prompt row touches its own page(s); never more than the whole table
        let row_bytes = table / rows;
        let transposed = self
            .found
            .get(embedding)
            .is_some_and(|f| f.stored == Stored::InOut);
        // The kernel maps up to 16 neighbouring cached pages on each fault (fault-around).
        const FAULT_AROUND: u128 = 16 * PAGE;
        let touched = if transposed {
            table // a row read across a transposed table touches every page
        } else {
            (tokens as u128 * (row_bytes + FAULT_AROUND)).min(table)
        };
        let head_all = self.found.get(head).map_or(0, bytes);
        let head_bytes = if self.releases_by_block(head) {
            let n_out = self.out_features(head).unwrap_or(1).max(1) as u128;
            head_all / n_out * n_out.min(head_block as u128) + FAULT_AROUND
        } else {
            head_all
        };
        ResidentWeights {
            gather: touched + other,
            layers: layer + other + scratch,
            logits: head_bytes + other + scratch,
        }
    }

    /// Drops the mmap pages of every tensor of layer `layer` (see `Checkpoint::release`).
    pub fn release_layer(&self, layer: usize) {
        if !self.release_pages {
            return;
        }
        for f in self.found.values().filter(|f| f.layer == Some(layer)) {
            self.ckpt.release(f.info);
        }
    }

    /// Drops the mmap pages of the outputs `out_start..out_end` of a weight whose outputs are
    /// its rows (`[out, in]`, e.g. a tied embedding used as lm_head), so a head read block by
    /// block is never resident whole. Other layouts keep their pages until [`Weights::release`]
    /// (a block of columns shares every page with the next).
    pub fn release_block(&self, name: &str, out_start: usize, out_end: usize) {
        if !self.release_pages {
            return;
        }
        let Some(f) = self.found.get(name) else {
            return;
        };
        let ([_, n_in], Stored::OutIn) = (f.info.shape.as_slice(), f.stored) else {
            return;
        };
        let row = n_in * (f.info.dtype.bits() / 8);
        let bytes = self.ckpt.view(f.info).bytes;
        if let Some(part) = bytes.get(out_start * row..out_end * row) {
            self.ckpt.release_part(f.info, part);
        }
    }

    /// Whether [`Weights::release_block`] frees the pages of `name` block by block.
    pub fn releases_by_block(&self, name: &str) -> bool {
        self.release_pages
            && self
                .found
                .get(name)
                .is_some_and(|f| f.stored == Stored::OutIn && f.info.shape.len() == 2)
    }

    /// Drops the mmap pages of one tensor.
    pub fn release(&self, name: &str) {
        if !self.release_pages {
            return;
        }
        if let Some(f) = self.found.get(name) {
            self.ckpt.release(f.info);
        }
    }

    fn read_error(&self, name: &str, e: orient_inspect::ViewError) -> ModelError {
        ModelError::Read {
            path: self.ckpt.root().display().to_string(),
            name: name.to_string(),
            source: e,
        }
    }
}

/// Weight bytes resident in each phase of a forward (see [`Weights::resident_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResidentWeights {
    /// While the prompt's embedding rows are gathered.
    pub gather: u128,
    /// While the layers run (the embedding released).
    pub layers: u128,
    /// While the logits are computed.
    pub logits: u128,
}

/// Widens little-endian `dtype` elements in `src` into `dst` (same element count), with the
/// inspect crate's kernels. Only the dtypes accepted by [`Weights::locate`] reach here.
fn widen(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    let widened = orient_inspect::view::widen_into(dtype, src, dst);
    debug_assert!(widened, "{dtype} reached widen()");
}

/// [`widen`] split over rayon's threads.
fn widen_par(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    const CHUNK: usize = 1 << 16;
    let elem = dtype.bits() / 8;
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK * elem))
        .for_each(|(d, s)| widen(dtype, s, d));
}
