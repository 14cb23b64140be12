//! Reading the weights' views out of the memory map, as f32, when the forward needs them.
//!
//! A matrix whose view is a plain strided map onto aligned f32 data (HF `[out, in]`, a Flax
//! `[in, out]` kernel, a slice of a fused kernel) is handed to gemm in place, strides and all:
//! no copy. Anything else (bf16/f16 data, a misaligned f32 tensor, a RoPE-permuted projection,
//! interleaved parts) is gathered into one reused f32 buffer, in whichever orientation reads
//! the source more contiguously; gemm's result does not depend on the strides, so both paths
//! give the same bits. Memory stays at one matrix of scratch plus each layer's mapped pages,
//! which are released after the layer; each read is followed by a check that its file did not
//! change underneath, and a changed file ends the forward with an error naming it.

use std::ops::Range;

use orient_inspect::layout::gather::{self, Source};
use orient_inspect::layout::view::View;
use orient_inspect::view::widen_into;
use orient_inspect::Checkpoint;
use rayon::prelude::*;

use super::amx::{self, Kernels};
use super::matmul::MatRef;
use super::traits::NormKind;
use super::weights::{Matrix, ModelWeights, Table, Vector};
use super::ModelError;

/// f32 bytes of one widened block of a linear layer's weight (see [`Reader::block_outputs`]).
const WIDEN_BLOCK_BYTES: usize = 4 << 20;
/// Fewest outputs per widened block: each block repacks the activations (`[T, K]`) in gemm
/// and is one parallel section, so narrower blocks cost more than their locality saves.
const MIN_WIDEN_BLOCK: usize = 2048;
/// bf16 bytes of one gathered block of a weight bound for the AMX tiles (a Flax kernel, a
/// permuted or interleaved view): large, since each block repacks the activations.
const AMX_BLOCK_BYTES: usize = 64 << 20;
/// Panels (32 outputs each) of an `[in, out]` bf16 kernel made per task for the AMX tiles:
/// each input's run of 1024 outputs is 2 KiB of one page (8 panels per task, 512 bytes, were
/// 10% slower on a Flax 7B-shaped model).
const PANELS_PER_TASK: usize = 32;
/// Elements gathered per rayon task.
const GATHER_TASK: usize = 1 << 16;
/// The kernel maps up to 16 neighbouring cached pages on each fault (fault-around).
const FAULT_AROUND: u128 = 16 * 4096;

/// Reads views over the tensors of one checkpoint.
#[derive(Debug)]
pub(crate) struct Reader<'c> {
    ckpt: &'c Checkpoint,
    /// Source `k` of every view is tensor `k` of the checkpoint.
    sources: Vec<Source<'c>>,
    /// Reusable f32 buffer for gathered matrices. Grows to the largest one read.
    scratch: Vec<f32>,
    /// Release each layer's mmap pages after use (bounded RSS), or keep them mapped (faster
    /// repeated forwards on a model that fits in RAM).
    pub release_pages: bool,
    /// f32 bytes of one widened block of a linear layer's weight ([`Reader::block_outputs`]).
    pub widen_block_bytes: usize,
    /// Which kernels multiply bf16 weights (`ORIENT_KERNELS`).
    pub kernels: Kernels,
    /// Reusable buffer for bf16 weights gathered for the AMX tiles (`[out, in]` rows padded
    /// to a multiple of 32 inputs).
    bf16_scratch: Vec<u8>,
}

/// How a bf16 matrix reaches the AMX tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TileForm {
    /// `[out, in]` rows of the mapped tensor, `in` a multiple of 32: read in place.
    InPlace,
    /// Anything else (transposed, permuted, interleaved, `in` not a multiple of 32): copied
    /// byte for byte into `[out, in]` rows, zero-padded.
    Gathered,
}

/// A plain strided view onto aligned f32 data: the data from the view's first element, and
/// one stride per dimension.
struct InPlace<'c> {
    data: &'c [f32],
    strides: Vec<usize>,
}

impl<'c> Reader<'c> {
    /// A reader over every tensor of `ckpt`.
    pub fn new(ckpt: &'c Checkpoint) -> Reader<'c> {
        let sources = ckpt
            .tensors()
            .iter()
            .map(|t| Source {
                bytes: ckpt.view(t).bytes,
                dtype: t.dtype,
            })
            .collect();
        Reader {
            ckpt,
            sources,
            scratch: Vec::new(),
            release_pages: true,
            widen_block_bytes: WIDEN_BLOCK_BYTES,
            kernels: Kernels::from_env().unwrap_or(Kernels::Auto),
            bf16_scratch: Vec::new(),
        }
    }

    /// The checkpoint's tensors (view source `k` is tensor `k`).
    pub fn tensors(&self) -> &'c [orient_inspect::TensorInfo] {
        self.ckpt.tensors()
    }

    fn path(&self) -> String {
        self.ckpt.root().display().to_string()
    }

    /// `view` as aligned f32 data read in place, when it is one.
    fn in_place(&self, view: &View) -> Option<InPlace<'c>> {
        let (src, offset, strides) = view.simple_strides()?;
        let info = self.ckpt.tensors().get(src)?;
        let all = self.ckpt.view(info).as_f32()?;
        Some(InPlace {
            data: all.get(offset..)?,
            strides,
        })
    }

    /// How many outputs of `m` a linear layer reads at a time: all of them when `m` is
    /// handed to gemm in place, else blocks of about [`WIDEN_BLOCK_BYTES`] of f32 but at least
    /// [`MIN_WIDEN_BLOCK`] outputs (a multiple of 16), each widened just before gemm packs it,
    /// so that the f32 copy does not make a whole-matrix round trip through memory. On a
    /// Qwen2-7B-shaped bf16 model (200 tokens, gemm's AVX-512 kernels, quiet machine) a whole
    /// process took 55.9 s widening whole matrices, 20.7 s with 512-output blocks (too narrow:
    /// gemm repacks the activations per block and keeps fewer threads busy), 16.0–18.4 s with
    /// 2048 and 16.6 s with 4096; the AVX2 build before this widened whole matrices in 19.4–20.0 s.
    pub fn block_outputs(&self, m: &Matrix) -> usize {
        match self.tile_form(m) {
            Some(TileForm::InPlace) => return m.out.max(1),
            Some(TileForm::Gathered) => {
                let rows = AMX_BLOCK_BYTES / (2 * padded_inputs(m.inp).max(32));
                return (rows / 32 * 32).max(32).min(m.out.max(1));
            }
            None => {}
        }
        if self.in_place(&m.view).is_some() {
            return m.out.max(1);
        }
        let cols = self.widen_block_bytes / (4 * m.inp.max(1));
        (cols / 16 * 16).max(MIN_WIDEN_BLOCK).min(m.out.max(1))
    }

    /// How `m` reaches the AMX tiles, when it does: a bf16 weight (every source bf16, no value
    /// operations) with the tiles in use.
    fn tile_form(&self, m: &Matrix) -> Option<TileForm> {
        if !self.kernels.amx() || m.view.has_values() || m.inp == 0 {
            return None;
        }
        let sources = m.view.sources();
        let all_bf16 = !sources.is_empty()
            && sources.iter().all(|&k| {
                self.sources
                    .get(k)
                    .is_some_and(|s| s.dtype == orient_inspect::Dtype::BF16)
            });
        if !all_bf16 {
            return None;
        }
        let rows_in_place = m.inp.is_multiple_of(32)
            && contiguous_rows(&m.view, &self.sources).is_some_and(|r| r.cols == m.inp);
        Some(if rows_in_place {
            TileForm::InPlace
        } else {
            TileForm::Gathered
        })
    }

    /// The outputs `outs` of `m` as `[out, in]` bf16 rows for the AMX tiles, when `m` goes
    /// there ([`Reader::tile_form`]): in place, or gathered into a reused buffer.
    pub fn tile_weight(
        &mut self,
        m: &Matrix,
        outs: Range<usize>,
    ) -> Result<Option<amx::Weight<'_>>, ModelError> {
        let Some(form) = self.tile_form(m) else {
            return Ok(None);
        };
        if outs.start > outs.end || outs.end > m.out {
            return Err(ModelError::Internal(format!(
                "`{}`: output block {}..{} outside {}",
                m.name, outs.start, outs.end, m.out
            )));
        }
        let view = block(m, outs.clone())?;
        let rows = outs.len();
        if form == TileForm::InPlace {
            self.check(&view)?;
            let r = contiguous_rows(&view, &self.sources).ok_or_else(|| {
                ModelError::Internal(format!("`{}`: rows no longer contiguous", m.name))
            })?;
            let bytes = r
                .offset
                .checked_mul(2)
                .and_then(|start| r.source.bytes.get(start..))
                .ok_or_else(|| ModelError::Internal(format!("`{}` outside its data", m.name)))?;
            return amx::Weight::new(bytes, rows, m.inp, r.row_stride).map(Some);
        }
        let kp = padded_inputs(m.inp);
        let too_large = || ModelError::Internal(format!("`{}` is too large", m.name));
        let sources = &self.sources;
        let inp = m.inp;
        // An `[in, out]` kernel (Flax, GPT-2 Conv1D): its inputs are contiguous runs of
        // outputs, interleaved two by two into the pairs order (a streaming copy, where a
        // transpose into rows would read single elements); anything else row by row through
        // the view. Every byte of the buffer used is written, padding included.
        let columns = view
            .clone()
            .transpose_last()
            .ok()
            .and_then(|t| contiguous_rows(&t, sources));
        if let Some(columns) = columns {
            let panel = amx::panel_bytes(kp);
            let len = rows.div_ceil(32).checked_mul(panel).ok_or_else(too_large)?;
            grow(&mut self.bf16_scratch, len);
            self.bf16_scratch[..len]
                .par_chunks_mut(PANELS_PER_TASK * panel)
                .enumerate()
                .try_for_each(|(b, chunk)| columns.panels_into(b * PANELS_PER_TASK, inp, kp, chunk))
                .map_err(|e| self.read_error(&m.name, e))?;
            self.check(&view)?;
            return amx::Weight::paired(&self.bf16_scratch[..len], rows, kp).map(Some);
        }
        let len = rows
            .checked_mul(kp)
            .and_then(|e| e.checked_mul(2))
            .ok_or_else(too_large)?;
        grow(&mut self.bf16_scratch, len);
        let band = (GATHER_TASK / kp).max(1);
        self.bf16_scratch[..len]
            .par_chunks_mut(band * kp * 2)
            .enumerate()
            .try_for_each(|(b, chunk)| {
                for (i, row) in chunk.chunks_mut(kp * 2).enumerate() {
                    let r = b * band + i;
                    let (data, padding) = row.split_at_mut(inp * 2);
                    gather::gather_bytes(&view, sources, r..r + 1, data)?;
                    padding.fill(0);
                }
                Ok(())
            })
            .map_err(|e| self.read_error(&m.name, e))?;
        self.check(&view)?;
        amx::Weight::new(&self.bf16_scratch[..len], rows, kp, kp).map(Some)
    }

    /// Fails if a file `view` reads changed since it was opened (see
    /// `Checkpoint::check_tensor`): run after each read, so that a truncated file ends the
    /// forward with an error naming it.
    fn check(&self, view: &View) -> Result<(), ModelError> {
        for k in view.sources() {
            if let Some(t) = self.ckpt.tensors().get(k) {
                self.ckpt.check_tensor(t).map_err(ModelError::Changed)?;
            }
        }
        Ok(())
    }

    /// Fails if any weight file changed since it was opened; run after the forward, since
    /// weights used in place are read inside the matmuls.
    pub fn check_intact(&self) -> Result<(), ModelError> {
        self.ckpt.check_intact().map_err(ModelError::Changed)
    }

    fn read_error(&self, name: &str, source: gather::GatherError) -> ModelError {
        ModelError::Read {
            path: self.path(),
            name: name.to_string(),
            source,
        }
    }

    /// A 1-D weight as f32.
    pub fn vector(&self, v: &Vector) -> Result<Vec<f32>, ModelError> {
        let out =
            gather::to_f32(&v.view, &self.sources).map_err(|e| self.read_error(&v.name, e))?;
        self.check(&v.view)?;
        Ok(out)
    }

    /// A norm weight as the norm applies it (`w + offset` for an offset RMSNorm).
    pub fn norm_weight(&self, v: &Vector, kind: NormKind) -> Result<Vec<f32>, ModelError> {
        let mut w = self.vector(v)?;
        if let NormKind::Rms { offset } = kind {
            if offset != 0.0 {
                w.iter_mut().for_each(|x| *x += offset);
            }
        }
        Ok(w)
    }

    /// Rows `rows` of a table, as f32 `[rows.len(), width]`.
    pub fn rows(&self, t: &Table, rows: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (_, width) = gather::rows_cols(&t.view);
        let len = rows
            .len()
            .checked_mul(width)
            .ok_or(ModelError::PromptTooLong { tokens: rows.len() })?;
        let mut out = vec![0.0f32; len]; // [rows, width]
        for (dst, &r) in out.chunks_mut(width.max(1)).zip(rows) {
            if r >= t.rows {
                return Err(ModelError::Internal(format!(
                    "row {r} outside `{}` ({} rows)",
                    t.name, t.rows
                )));
            }
            gather::gather_f32(&t.view, &self.sources, r..r + 1, dst)
                .map_err(|e| self.read_error(&t.name, e))?;
        }
        self.check(&t.view)?;
        Ok(out)
    }

    /// The outputs `outs` of `m` as the logical `[in, out]` right-hand side of a product:
    /// in place when the view is plain aligned f32, else gathered into the reused buffer.
    pub fn matrix(&mut self, m: &Matrix, outs: Range<usize>) -> Result<MatRef<'_>, ModelError> {
        if outs.start > outs.end || outs.end > m.out {
            return Err(ModelError::Internal(format!(
                "`{}`: output block {}..{} outside {}",
                m.name, outs.start, outs.end, m.out
            )));
        }
        let (n_in, width) = (m.inp, outs.len());
        let view = block(m, outs)?;
        if let Some(p) = self.in_place(&view) {
            // Read later, in place, by the matmul: `Model::forward_with` checks the files
            // after it; this catches a change before it.
            self.check(&view)?;
            let (s_out, s_in) = match p.strides.as_slice() {
                [o, i] => (*o, *i),
                _ => return Err(ModelError::Internal(format!("`{}` is not 2-D", m.name))),
            };
            // element (o, i) of [out, in] is element (i, o) of the [in, out] operand
            return MatRef::new(p.data, n_in, width, s_in, s_out);
        }
        let len = n_in
            .checked_mul(width)
            .ok_or_else(|| ModelError::Internal(format!("`{}` is too large", m.name)))?;
        self.scratch.resize(len, 0.0);
        let as_in_out = reads_columns_faster(&view);
        let result = if as_in_out {
            // [in, out] row-major: element (i, o) at i·width + o
            view.clone()
                .transpose_last()
                .map_err(|e| ModelError::Internal(format!("`{}`: {e}", m.name)))
                .and_then(|t| self.gather(&t, &m.name))
        } else {
            // [out, in] row-major: element (i, o) at o·in + i
            self.gather(&view, &m.name)
        };
        result?;
        self.check(&view)?;
        let scratch = &self.scratch[..len];
        if as_in_out {
            MatRef::new(scratch, n_in, width, width, 1)
        } else {
            MatRef::new(scratch, n_in, width, 1, n_in)
        }
    }

    /// Gathers all of `view` into the scratch buffer (sized by the caller), in parallel
    /// bands of rows.
    fn gather(&mut self, view: &View, name: &str) -> Result<(), ModelError> {
        let (rows, cols) = gather::rows_cols(view);
        let cols = cols.max(1);
        let band = (GATHER_TASK / cols).max(1);
        let rows_of = |b: usize, chunk: &[f32]| b * band..b * band + chunk.len() / cols;
        let sources = &self.sources;
        let out = &mut self.scratch[..rows * cols];
        let result = match contiguous_rows(view, sources) {
            // Rows that are plain runs of the source (bf16/f16 weights, misaligned f32):
            // widened straight from the bytes, as one run per band when the rows follow
            // each other.
            Some(rows) => out
                .par_chunks_mut(band * cols)
                .enumerate()
                .try_for_each(|(b, chunk)| rows.widen(rows_of(b, chunk), chunk)),
            None => out
                .par_chunks_mut(band * cols)
                .enumerate()
                .try_for_each(|(b, chunk)| {
                    gather::gather_f32(view, sources, rows_of(b, chunk), chunk)
                }),
        };
        result.map_err(|e| ModelError::Read {
            path: self.ckpt.root().display().to_string(),
            name: name.to_string(),
            source: e,
        })
    }

    /// Drops the mmap pages of these checkpoint tensors (see `Checkpoint::release`).
    pub fn release(&self, tensors: &[usize]) {
        if !self.release_pages {
            return;
        }
        for &k in tensors {
            if let Some(t) = self.ckpt.tensors().get(k) {
                self.ckpt.release(t);
            }
        }
    }

    /// Drops the mmap pages of the outputs `outs` of a matrix whose outputs are contiguous rows
    /// of its tensor (`[out, in]`, e.g. a tied embedding used as lm_head), so a head read block
    /// by block is never resident whole. Other layouts keep their pages until
    /// [`Reader::release`] (a block of columns shares every page with the next).
    pub fn release_rows(&self, m: &Matrix, outs: Range<usize>) {
        if !self.release_pages {
            return;
        }
        let Some((k, bytes)) = block(m, outs).ok().and_then(|v| self.row_bytes(&v)) else {
            return;
        };
        if let Some(t) = self.ckpt.tensors().get(k) {
            self.ckpt.release_part(t, bytes);
        }
    }

    /// The tensor and byte range of a view whose rows are contiguous and consecutive in one
    /// tensor.
    fn row_bytes(&self, view: &View) -> Option<(usize, &'c [u8])> {
        let (src, offset, strides) = view.simple_strides()?;
        let shape = view.shape();
        let (&[rows, cols], &[s_row, s_col]) = (shape.as_slice(), strides.as_slice()) else {
            return None;
        };
        if (cols > 1 && s_col != 1) || (rows > 1 && s_row != cols) {
            return None;
        }
        let source = self.sources.get(src)?;
        let elem = source.dtype.bits() / 8;
        let start = offset.checked_mul(elem)?;
        let len = rows.checked_mul(cols)?.checked_mul(elem)?;
        Some((src, source.bytes.get(start..start.checked_add(len)?)?))
    }

    /// Whether [`Reader::release_rows`] frees the pages of `m` block by block.
    fn releases_by_rows(&self, m: &Matrix) -> bool {
        self.release_pages && self.row_bytes(&m.view).is_some()
    }

    fn nbytes(&self, tensors: &[usize]) -> u128 {
        tensors
            .iter()
            .filter_map(|&k| self.sources.get(k))
            .map(|s| s.bytes.len() as u128)
            .sum()
    }

    /// Weight bytes resident in the three phases of a forward over `tokens` tokens: while the
    /// embedding rows are gathered, while the layers run, and while the logits are computed.
    /// Mapped pages count (one layer at a time when pages are released, every weight
    /// otherwise; the lm_head one block of `head_block` outputs at a time when its outputs are
    /// contiguous rows), as does the reusable f32 buffer gathered matrices are read into.
    pub fn resident_bytes(&self, w: &ModelWeights, tokens: usize, head_block: usize) -> Resident {
        // The gathering buffer grows to the largest matrix (or lm_head block) not read in place;
        // a product on the AMX tiles also packs up to 256 token rows of its input as three
        // bf16 parts.
        let gathered = |m: &Matrix, block: usize| -> u128 {
            let kp = padded_inputs(m.inp) as u128;
            let packed = 6 * kp * tokens.min(256).next_multiple_of(32) as u128;
            match self.tile_form(m) {
                Some(TileForm::InPlace) => packed,
                Some(TileForm::Gathered) => 2 * kp * m.out.min(block) as u128 + packed,
                None if self.in_place(&m.view).is_some() => 0,
                None => 4 * m.inp as u128 * m.out.min(block) as u128,
            }
        };
        let scratch = w
            .layers
            .iter()
            .flat_map(|l| l.matrices())
            .map(|m| gathered(m, self.block_outputs(m)))
            .chain([gathered(&w.lm_head, head_block)])
            .max()
            .unwrap_or(0);
        if !self.release_pages {
            let all = self.nbytes(&w.all_tensors()) + scratch;
            return Resident {
                gather: all,
                layers: all,
                logits: all,
            };
        }
        let other = self.nbytes(&w.other_tensors());
        let layer = w
            .layers
            .iter()
            .map(|l| self.nbytes(&l.tensors))
            .max()
            .unwrap_or(0);
        let table = self.nbytes(&w.embed_tensors());
        // Each prompt row touches its own page(s), never more than the whole table; a row
        // read across a table whose rows are not contiguous touches every page.
        let touched = if self.row_bytes(&w.embed.view).is_some() {
            let row = table / w.embed.rows.max(1) as u128;
            (tokens as u128 * (row + FAULT_AROUND)).min(table)
        } else {
            table
        };
        let head_all = self.nbytes(&w.head_tensors());
        let head = if self.releases_by_rows(&w.lm_head) {
            let out = w.lm_head.out.max(1) as u128;
            head_all / out * out.min(head_block as u128) + FAULT_AROUND
        } else {
            head_all
        };
        Resident {
            gather: touched + other,
            layers: layer + other + scratch,
            logits: head + other + scratch,
        }
    }
}

/// `inp` rounded up to a multiple of 32 (the tiles' input width).
fn padded_inputs(inp: usize) -> usize {
    inp.div_ceil(32) * 32
}

/// A 2-D view whose rows are contiguous runs of one source, `row_stride` elements apart.
struct ContiguousRows<'a> {
    source: Source<'a>,
    index: usize,
    offset: usize,
    row_stride: usize,
    cols: usize,
}

/// `view` as [`ContiguousRows`], when it is one.
fn contiguous_rows<'a>(view: &View, sources: &[Source<'a>]) -> Option<ContiguousRows<'a>> {
    let (index, offset, strides) = view.simple_strides()?;
    let shape = view.shape();
    let (&[rows, cols], &[row_stride, col_stride]) = (shape.as_slice(), strides.as_slice()) else {
        return None;
    };
    if cols > 1 && col_stride != 1 {
        return None;
    }
    let row_stride = if rows > 1 { row_stride } else { cols };
    Some(ContiguousRows {
        source: *sources.get(index)?,
        index,
        offset,
        row_stride,
        cols,
    })
}

impl ContiguousRows<'_> {
    /// Widens rows `rows` into `out` (`rows.len() × cols` f32).
    fn widen(&self, rows: Range<usize>, out: &mut [f32]) -> Result<(), gather::GatherError> {
        let es = self.source.dtype.bits() / 8;
        let bytes = |first: usize, len: usize| -> Result<&[u8], gather::GatherError> {
            let out_of_bounds = || gather::GatherError::OutOfBounds {
                source_index: self.index,
                len: self.source.bytes.len() / es.max(1),
                last: first.saturating_add(len),
            };
            let start = first.checked_mul(es).ok_or_else(out_of_bounds)?;
            let end = len
                .checked_mul(es)
                .and_then(|l| start.checked_add(l))
                .ok_or_else(out_of_bounds)?;
            self.source.bytes.get(start..end).ok_or_else(out_of_bounds)
        };
        let widen = |src: &[u8], dst: &mut [f32]| {
            if widen_into(self.source.dtype, src, dst) {
                Ok(())
            } else {
                Err(gather::GatherError::Dtype {
                    dtype: self.source.dtype,
                    how: "as f32 (F32, BF16, F16 and F64 only)",
                })
            }
        };
        let first = self.offset + rows.start * self.row_stride;
        if self.row_stride == self.cols {
            return widen(bytes(first, out.len())?, out);
        }
        for (k, dst) in out.chunks_mut(self.cols.max(1)).enumerate() {
            widen(bytes(first + k * self.row_stride, self.cols)?, dst)?;
        }
        Ok(())
    }
}

impl ContiguousRows<'_> {
    /// Writes the panels `first..` (as many as `chunk` holds) of these rows (`[in, out]` bf16:
    /// row `i` holds the outputs of input `i`) in the tiles' panel order (see
    /// `amx::Weight`): for 32 outputs, each pair `j` of inputs as the 32 outputs' values of
    /// inputs `2j` and `2j + 1`. Outputs past the last and inputs past `inp` are zero.
    fn panels_into(
        &self,
        first: usize,
        inp: usize,
        kp: usize,
        chunk: &mut [u8],
    ) -> Result<(), gather::GatherError> {
        let panel = amx::panel_bytes(kp);
        let n0 = first * 32;
        let panels = chunk.len() / panel;
        let width = (panels * 32).min(self.cols.saturating_sub(n0)); // outputs read
                                                                     // input `i`'s values of outputs n0..n0+width
        let run = |i: usize| -> Result<&[u8], gather::GatherError> {
            if i >= inp {
                return Ok(&[]);
            }
            let start = i
                .checked_mul(self.row_stride)
                .and_then(|e| e.checked_add(self.offset))
                .and_then(|e| e.checked_add(n0));
            start
                .and_then(|s| Some((s.checked_mul(2)?, s.checked_add(width)?.checked_mul(2)?)))
                .and_then(|(a, b)| self.source.bytes.get(a..b))
                .ok_or(gather::GatherError::OutOfBounds {
                    source_index: self.index,
                    len: self.source.bytes.len() / 2,
                    last: start.unwrap_or(usize::MAX).saturating_add(width),
                })
        };
        for j in 0..kp / 2 {
            let (even, odd) = (run(2 * j)?, run(2 * j + 1)?);
            for p in 0..panels {
                let dst = &mut chunk[p * panel + j * 128..p * panel + (j + 1) * 128];
                let outs = p * 32..(p * 32 + 32).min(width);
                let (e, f) = (
                    even.get(outs.start * 2..outs.end * 2),
                    odd.get(outs.start * 2..outs.end * 2),
                );
                let filled = match (e, f) {
                    (Some(e), Some(f)) => {
                        let inputs = e.chunks_exact(2).zip(f.chunks_exact(2));
                        for (d, (e, f)) in dst.chunks_exact_mut(4).zip(inputs) {
                            d[..2].copy_from_slice(e);
                            d[2..].copy_from_slice(f);
                        }
                        outs.len() * 4
                    }
                    (Some(e), None) => {
                        // the last pair of an odd number of inputs
                        for (d, e) in dst.chunks_exact_mut(4).zip(e.chunks_exact(2)) {
                            d.copy_from_slice(&[e[0], e[1], 0, 0]);
                        }
                        outs.len() * 4
                    }
                    _ => 0,
                };
                dst[filled..].fill(0);
            }
        }
        Ok(())
    }
}

/// Makes `buf` at least `len` bytes long (its contents are overwritten by the caller).
fn grow(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// The view of outputs `outs` of `m` (`[outs.len(), in]`).
fn block(m: &Matrix, outs: Range<usize>) -> Result<View, ModelError> {
    if outs.start == 0 && outs.end == m.out {
        return Ok(m.view.clone());
    }
    m.view
        .clone()
        .slice(0, outs.start, outs.len())
        .map_err(|e| ModelError::Internal(format!("`{}`: {e}", m.name)))
}

/// True when the `[out, in]` view's output axis lies more contiguously in its source than its
/// input axis (a Flax `[in, out]` kernel, a RoPE-permuted one): gathering `[in, out]` rows
/// then reads runs instead of single elements.
fn reads_columns_faster(view: &View) -> bool {
    fn inner_strides(v: &View) -> Option<(usize, usize)> {
        match v {
            View::Strided(s) => {
                let inner = |a: usize| {
                    s.axes
                        .get(a)
                        .and_then(|ax| ax.0.last())
                        .map_or(usize::MAX, |&(_, st)| st)
                };
                Some((inner(0), inner(1)))
            }
            View::Pieces(p) => p.chunks.first().and_then(|(_, v)| inner_strides(v)),
        }
    }
    inner_strides(view).is_some_and(|(out, inp)| out < inp)
}

/// Weight bytes resident in each phase of a forward (see [`Reader::resident_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resident {
    /// While the prompt's embedding rows are gathered.
    pub gather: u128,
    /// While the layers run (the embedding released).
    pub layers: u128,
    /// While the logits are computed.
    pub logits: u128,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use orient_inspect::write;
    use orient_inspect::Dtype;

    /// A checkpoint of one `[3, 4]` matrix `w[o, i] = 10·o + i` stored four ways: as is (f32),
    /// transposed (f32 `[4, 3]`), as bf16, and as f32 with a permuted row order.
    fn checkpoint(dir: &std::path::Path) -> Checkpoint {
        let w = |o: usize, i: usize| (10 * o + i) as f32;
        let f32s = |v: Vec<f32>| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let plain = f32s((0..3).flat_map(|o| (0..4).map(move |i| w(o, i))).collect());
        let transposed = f32s((0..4).flat_map(|i| (0..3).map(move |o| w(o, i))).collect());
        let bf16: Vec<u8> = (0..3)
            .flat_map(|o| (0..4).map(move |i| w(o, i)))
            .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let tensors = [
            write::Tensor {
                name: "a_plain",
                dtype: Dtype::F32,
                shape: &[3, 4],
                data: &plain,
            },
            write::Tensor {
                name: "b_transposed",
                dtype: Dtype::F32,
                shape: &[4, 3],
                data: &transposed,
            },
            write::Tensor {
                name: "c_bf16",
                dtype: Dtype::BF16,
                shape: &[3, 4],
                data: &bf16,
            },
        ];
        let path = dir.join("model.safetensors");
        std::fs::write(
            &path,
            write::to_bytes(&tensors, &Default::default()).unwrap(),
        )
        .unwrap();
        Checkpoint::open(&path).unwrap()
    }

    fn matrix(view: View) -> Matrix {
        let shape = view.shape();
        Matrix {
            view,
            out: shape[0],
            inp: shape[1],
            name: "w".into(),
        }
    }

    /// Every element of the `[in, out]` operand for outputs `outs` of `m`.
    fn operand(r: &mut Reader<'_>, m: &Matrix, outs: Range<usize>) -> Vec<Vec<f32>> {
        let mr = r.matrix(m, outs.clone()).unwrap();
        assert_eq!((mr.rows(), mr.cols()), (m.inp, outs.len()));
        (0..m.inp)
            .map(|i| (0..outs.len()).map(|o| mr.get(i, o).unwrap()).collect())
            .collect()
    }

    fn expected(outs: Range<usize>, rows: &[usize]) -> Vec<Vec<f32>> {
        (0..4)
            .map(|i| outs.clone().map(|o| (10 * rows[o] + i) as f32).collect())
            .collect()
    }

    #[test]
    fn plain_and_transposed_f32_are_read_in_place_other_views_gathered() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = checkpoint(dir.path());
        let mut r = Reader::new(&ckpt);
        let ids = [0, 1, 2];
        let plain = matrix(View::contiguous(0, &[3, 4]));
        let transposed = matrix(View::contiguous(1, &[4, 3]).transpose_last().unwrap());
        let bf16 = matrix(View::contiguous(2, &[3, 4]));
        // rows in the order 2, 0, 1: a permutation no single stride expresses
        let permuted = matrix(
            View::contiguous(0, &[3, 4])
                .slice(0, 2, 1)
                .and_then(|last| {
                    View::concat(0, vec![last, View::contiguous(0, &[3, 4]).slice(0, 0, 2)?])
                })
                .unwrap(),
        );
        assert!(r.in_place(&plain.view).is_some());
        assert!(r.in_place(&transposed.view).is_some());
        assert!(r.in_place(&bf16.view).is_none());
        assert!(r.in_place(&permuted.view).is_none());
        for m in [&plain, &transposed, &bf16] {
            assert_eq!(
                operand(&mut r, m, 0..3),
                expected(0..3, &ids),
                "{:?}",
                m.view
            );
            assert_eq!(
                operand(&mut r, m, 1..3),
                expected(1..3, &ids),
                "{:?}",
                m.view
            );
        }
        assert_eq!(operand(&mut r, &permuted, 0..3), expected(0..3, &[2, 0, 1]));
        // bf16 rows that are runs of the source but not consecutive: inputs 1..3 only
        let cols = matrix(View::contiguous(2, &[3, 4]).slice(1, 1, 2).unwrap());
        let want: Vec<Vec<f32>> = (1..3)
            .map(|i| (0..3).map(|o| (10 * o + i) as f32).collect())
            .collect();
        assert_eq!(operand(&mut r, &cols, 0..3), want);
        // the transposed gather reads [in, out] rows; the plain one [out, in] rows
        assert!(reads_columns_faster(&transposed.view));
        assert!(!reads_columns_faster(&plain.view));
    }

    #[test]
    fn rows_vectors_and_release_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = checkpoint(dir.path());
        let r = Reader::new(&ckpt);
        let table = Table {
            view: View::contiguous(1, &[4, 3]).transpose_last().unwrap(),
            rows: 3,
            name: "t".into(),
        };
        // rows of a transposed table are gathered across the stored columns
        assert_eq!(
            r.rows(&table, &[2, 0]).unwrap(),
            [20.0, 21.0, 22.0, 23.0, 0.0, 1.0, 2.0, 3.0]
        );
        assert!(r.rows(&table, &[3]).is_err());
        let v = Vector {
            view: View::contiguous(2, &[12]).slice(0, 4, 4).unwrap(),
            name: "v".into(),
        };
        assert_eq!(r.vector(&v).unwrap(), [10.0, 11.0, 12.0, 13.0]);
        assert_eq!(
            r.norm_weight(&v, NormKind::Rms { offset: 1.0 }).unwrap(),
            [11.0, 12.0, 13.0, 14.0]
        );
        // contiguous rows release by block (any dtype); a transposed matrix does not
        let (k, bytes) = r
            .row_bytes(&View::contiguous(2, &[3, 4]).slice(0, 1, 2).unwrap())
            .unwrap();
        assert_eq!((k, bytes.len()), (2, 2 * 4 * 2));
        assert!(r.row_bytes(&table.view).is_none());
    }
}
