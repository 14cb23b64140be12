//! Executes a list of output tensors against an open checkpoint, streaming.
//!
//! Each output tensor is a [`View`] over one or more source tensors (the source convention's
//! inverse chain composed with the target's chain, see [`crate::plan`]) and a dtype. Why it is
//! built this way: the converted model may be larger than RAM, so no tensor is ever gathered
//! whole unless it is small, and the work must overlap the kernel's copy of the output into
//! the page cache, which costs about as much as the transposes. Each output tensor is
//! produced by the cheapest path that keeps memory bounded, straight into the write buffers
//! that the shard's writer thread drains (see [`crate::writer::Staging::write_shard_with`]).
//! The path is chosen from the view itself, whatever chain made it:
//! - a contiguous range of one source (a copy, a rename, or a chain whose steps cancel):
//!   `copy_file_range` inside the kernel, so the bytes never enter this process (nor its
//!   RSS);
//! - the same with a cast: chunks of the memory map cast on all cores into a write buffer;
//! - a 2-D transpose of one source (± cast) whose output fits one buffer (every projection
//!   of a 0.5B–7B model): in one go, from the memory map into the buffer;
//! - a larger one (a tied embedding becoming a Flax `lm_head`, a 7B model's `lm_head`):
//!   chunk of source rows by chunk, each transposed into a column block of the output
//!   that the writer scatters to its rows, so the source is read once, in order, and each
//!   chunk's mapped pages are released right after use;
//! - only when a single source row exceeds a buffer: bands of whole output rows, each
//!   assembled from all source rows, keeping a window of them mapped between bands;
//! - anything else (RoPE permutations, fused or split parts, stacked experts, value
//!   operations): the generic path, bands of whole output rows gathered through the view
//!   ([`orient_inspect::layout::gather`]) on all cores, byte for byte when nothing is
//!   computed, else widened to f32, computed, and cast with the same kernels as above.
//!
//! Resident memory is the write buffers plus one chunk of mapped source (plus the window
//! in the transpose case; in the generic case, the sources of the one tensor being made,
//! released after every band once they exceed the window), whatever the model's size.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;

use orient_inspect::layout::gather::{self, GatherError, Source as Data};
use orient_inspect::layout::transform::Transform;
use orient_inspect::layout::view::{row_major_strides, View};
use orient_inspect::{Checkpoint, Dtype, Quantized, TensorInfo};
use rayon::prelude::*;

use crate::buffer::Buffer;
use crate::cast::{self, CastStats, FloatFormat};
use crate::error::{io, Error, Result};
use crate::transpose;
use crate::writer::{Layout, OutTensor, Staging, TensorSink, DEFAULT_BUFFER_BYTES, INDEX_FILE};

/// Memory budgets of the streaming paths (bytes). Peak memory is about
/// `band_bytes × (WRITE_BUFFERS + 1) + chunk_bytes + resident_bytes` (the write
/// buffers, one band of scratch before a cast, the mapped source rows in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Length of each write buffer, hence the output bytes of one band of a transposed
    /// tensor (a tensor that fits is transposed in one go).
    pub band_bytes: usize,
    /// Source bytes used per step when streaming (row chunks and cast chunks); their
    /// mapped pages are released after use.
    pub chunk_bytes: usize,
    /// Mapped source bytes a transpose done in several bands keeps resident from one
    /// band to the next, so that they are not faulted in again (see `transpose_banded`).
    pub resident_bytes: usize,
    /// Output bytes of one pass over the source of a transpose larger than a write buffer,
    /// when the output is written in file order (made in scratch: fewer passes).
    pub stripe_bytes: usize,
}

impl Default for Tiling {
    fn default() -> Tiling {
        Tiling {
            band_bytes: DEFAULT_BUFFER_BYTES,
            chunk_bytes: 32 << 20,
            resident_bytes: 128 << 20,
            stripe_bytes: 128 << 20,
        }
    }
}
/// Elements cast by one rayon task.
const CAST_TASK: usize = 1 << 18;
/// Output bytes gathered by one rayon task of the generic path.
const GATHER_TASK: usize = 256 << 10;

/// One source tensor an output tensor reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    /// Name in the source checkpoint.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype.
    pub dtype: Dtype,
}

/// How to make one output tensor: a view over source tensors, and a dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorOp {
    /// Name in the output.
    pub target: String,
    /// The tensors the view reads: source `k` of the view is `sources[k]`.
    pub sources: Vec<SourceTensor>,
    /// Where every element of the output comes from (and what is computed on it).
    pub view: View,
    /// Output dtype (equal to the sources' when there is no cast).
    pub target_dtype: Dtype,
    /// Output shape (the view's).
    pub target_shape: Vec<usize>,
    /// The chain of transforms the view stands for (source convention's inverse chain, then
    /// the target's, with steps that cancel removed): empty for a copy or a rename.
    pub chain: Vec<Transform>,
    /// Built from another tensor (an lm_head from the tied embedding), not from the
    /// same tensor under another name.
    pub tied: bool,
}

impl TensorOp {
    /// An output made from one whole source tensor `[rows, cols]`, transposed or not, for
    /// callers that build plain operations (and tests).
    pub fn plain(
        source: &str,
        target: &str,
        transpose: bool,
        from: Dtype,
        to: Dtype,
        shape: &[usize],
    ) -> Result<TensorOp> {
        let mut view = View::contiguous(0, shape);
        let mut chain = Vec::new();
        if transpose {
            view = view.transpose_last().map_err(|e| Error::Transform {
                tensor: target.to_string(),
                source: orient_inspect::layout::transform::TransformError::View {
                    transform: "transpose".into(),
                    source: e,
                },
            })?;
            chain.push(Transform::Transpose);
        }
        Ok(TensorOp {
            target: target.to_string(),
            sources: vec![SourceTensor {
                name: source.to_string(),
                shape: shape.to_vec(),
                dtype: from,
            }],
            target_shape: view.shape(),
            view,
            target_dtype: to,
            chain,
            tied: false,
        })
    }

    /// The first source tensor's name (the only one for most outputs).
    pub fn source(&self) -> &str {
        self.sources.first().map_or("", |s| s.name.as_str())
    }

    /// The first source tensor's dtype.
    pub fn source_dtype(&self) -> Dtype {
        self.sources.first().map_or(self.target_dtype, |s| s.dtype)
    }

    /// True when the dtype changes.
    pub fn casts(&self) -> bool {
        self.sources.iter().any(|s| s.dtype != self.target_dtype)
    }

    /// True when the chain is exactly a 2-D transpose (what HF ↔ Flax does to a kernel).
    pub fn is_transpose(&self) -> bool {
        matches!(self.chain.as_slice(), [Transform::Transpose])
    }

    /// The chain in words, e.g. `transpose → rope-permute(heads=4, to=half, rotary=16)`;
    /// `identity` when nothing moves.
    pub fn chain_text(&self) -> String {
        if self.chain.is_empty() {
            return "identity".into();
        }
        self.chain
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" → ")
    }

    /// Output data size in bytes.
    pub fn target_nbytes(&self) -> Result<u64> {
        let numel = self
            .target_shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::SizeOverflow(self.target.clone()))?;
        self.target_dtype
            .checked_size(numel)
            .map(|n| n as u64)
            .ok_or_else(|| Error::SizeOverflow(self.target.clone()))
    }
}

/// What writing the output did.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Number of tensors written.
    pub tensors: usize,
    /// Tensor data bytes written.
    pub bytes: u64,
    /// Output files written (shards, not counting the index).
    pub files: Vec<String>,
    /// Tensors whose cast lost something (overflow, flush, subnormal), with the counts.
    pub lossy_casts: Vec<(String, CastStats)>,
    /// All cast counts summed.
    pub cast_total: CastStats,
}

/// Writes every op's output tensor into `staging` (sharded by `max_shard_size`, with an
/// index when there are several files). `progress` hears about every byte written.
pub fn write_tensors(
    ckpt: &Checkpoint,
    ops: &[TensorOp],
    metadata: &BTreeMap<String, String>,
    max_shard_size: u64,
    tiling: &Tiling,
    staging: &Staging,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let layout = layout_of(ops, metadata, max_shard_size)?;
    let all: Vec<usize> = (0..layout.shards.len()).collect();
    let written = write_shards(ckpt, ops, &layout, &all, tiling, staging, progress)?;
    if let Some(index) = layout.index_json() {
        staging.write_file(INDEX_FILE, index.as_bytes())?;
    }
    Ok(written)
}

/// The output files of `ops`: names sorted, shards of at most `max_shard_size`, headers.
/// A pure function of the plan, so every part of a partitioned conversion computes the
/// same one.
pub fn layout_of(
    ops: &[TensorOp],
    metadata: &BTreeMap<String, String>,
    max_shard_size: u64,
) -> Result<Layout> {
    let mut outs = Vec::with_capacity(ops.len());
    for op in ops {
        outs.push(OutTensor {
            name: op.target.clone(),
            dtype: op.target_dtype.name().to_string(),
            shape: op.target_shape.clone(),
            nbytes: op.target_nbytes()?,
        });
    }
    Layout::new(outs, metadata, max_shard_size)
}

/// Writes shards `shards` (indices into `layout.shards`) of the output of `ops` into
/// `staging`, without the index. `progress` hears about every byte written.
pub fn write_shards(
    ckpt: &Checkpoint,
    ops: &[TensorOp],
    layout: &Layout,
    shards: &[usize],
    tiling: &Tiling,
    staging: &Staging,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let by_target: HashMap<&str, &TensorOp> = ops.iter().map(|o| (o.target.as_str(), o)).collect();
    // The checkpoint's own descriptors: the very files that are mapped, even if a path
    // has been replaced since (and never a FIFO swapped in).
    let files = ckpt
        .shards()
        .iter()
        .map(|s| {
            s.file()
                .try_clone()
                .map_err(io("duplicate the descriptor of", &s.path))
        })
        .collect::<Result<Vec<File>>>()?;
    let mut written = Written::default();
    let mut scratch = Scratch::default();
    let mut produce = |i: usize, sink: &mut TensorSink<'_>| -> Result<()> {
        let name = &layout.tensors[i].name;
        let op = by_target
            .get(name.as_str())
            .ok_or_else(|| Error::MissingTensor(name.clone()))?;
        let stats = produce_tensor(ckpt, &files, op, tiling, &mut scratch, sink)?;
        written.tensors += 1;
        written.bytes += layout.tensors[i].nbytes;
        if !stats.is_clean() {
            written.lossy_casts.push((op.target.clone(), stats));
        }
        written.cast_total.merge(&stats);
        Ok(())
    };
    for &k in shards {
        let result = staging.write_shard_with(layout, k, tiling.band_bytes, &mut produce, progress);
        // A source that changed underneath explains any failure best (a copy that ended
        // early, a cast of zeros): say that, naming the file.
        ckpt.check_intact()?;
        result?;
    }
    written.files = shards
        .iter()
        .filter_map(|&k| layout.shards.get(k))
        .map(|s| s.file_name.clone())
        .collect();
    // Every byte was read from the source by now (copies included): the output is
    // committed only if the source did not change meanwhile.
    ckpt.check_intact()?;
    Ok(written)
}

/// The float format of a dtype that can be cast, if it is one.
fn float_format(d: Dtype) -> Option<FloatFormat> {
    FloatFormat::from_name(d.name())
}

/// How an output tensor is produced, read off its view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Elements `offset..offset + numel` of the one source, in order (± cast).
    Range { offset: usize },
    /// The one 2-D source `[rows, cols]`, transposed (± cast).
    Transpose { rows: usize, cols: usize },
    /// Anything else: bands of output rows gathered through the view.
    Gather,
}

/// The cheapest path that produces `op` (see the module docs).
fn path_of(op: &TensorOp) -> Path {
    let [src] = op.sources.as_slice() else {
        return Path::Gather;
    };
    let Some((0, offset, strides)) = op.view.simple_strides() else {
        return Path::Gather;
    };
    let shape = op.view.shape();
    let row_major = row_major_strides(&shape);
    let contiguous = shape
        .iter()
        .zip(&strides)
        .zip(&row_major)
        .all(|((&n, &s), &r)| n <= 1 || s == r);
    if contiguous {
        return Path::Range { offset };
    }
    match (src.shape.as_slice(), shape.as_slice(), strides.as_slice()) {
        (&[rows, cols], &[c, r], &[1, s]) if offset == 0 && r == rows && c == cols && s == cols => {
            Path::Transpose { rows, cols }
        }
        _ => Path::Gather,
    }
}

/// Produces one output tensor into `sink`; returns the cast counts.
fn produce_tensor(
    ckpt: &Checkpoint,
    files: &[File],
    op: &TensorOp,
    tiling: &Tiling,
    scratch: &mut Scratch,
    sink: &mut TensorSink<'_>,
) -> Result<CastStats> {
    let mut infos: Vec<&TensorInfo> = Vec::with_capacity(op.sources.len());
    for s in &op.sources {
        let info = ckpt
            .tensor(&s.name)
            .ok_or_else(|| Error::MissingTensor(s.name.clone()))?;
        if info.shape != s.shape || info.dtype != s.dtype {
            return Err(Error::ShapeMismatch {
                tensor: s.name.clone(),
                actual: info.shape.clone(),
                expected: s.shape.clone(),
                convention: "the plan".into(),
            });
        }
        if info.dtype.bits() % 8 != 0 {
            return Err(Error::UnsupportedDtype {
                tensor: s.name.clone(),
                dtype: info.dtype.name().into(),
            });
        }
        infos.push(info);
    }
    let formats = if op.casts() || op.view.has_values() {
        let to = float_format(op.target_dtype);
        let from = infos
            .iter()
            .map(|i| float_format(i.dtype))
            .collect::<Option<Vec<_>>>();
        match (from, to) {
            (Some(f), Some(t)) => Some((f[0], t)),
            _ => {
                let bad = infos
                    .iter()
                    .find(|i| float_format(i.dtype).is_none())
                    .copied()
                    .unwrap_or(infos[0]);
                return Err(Error::NotCastable {
                    tensor: bad.name.clone(),
                    dtype: bad.dtype.name().into(),
                    target: op.target_dtype.name().into(),
                });
            }
        }
    } else {
        None
    };
    let stats = match path_of(op) {
        Path::Range { offset } => {
            let info = infos[0];
            let es = info.dtype.bits() / 8;
            let numel: usize = op.target_shape.iter().product();
            let (start, len) = (offset * es, numel * es);
            if start.checked_add(len).is_none_or(|end| end > info.nbytes()) {
                return Err(Error::Gather {
                    tensor: op.target.clone(),
                    source: GatherError::OutOfBounds {
                        source_index: 0,
                        len: info.numel(),
                        last: offset + numel,
                    },
                });
            }
            match (ckpt.quantized(info), formats) {
                (Some(q), _) => decode_stream(
                    &q,
                    info,
                    offset..offset + numel,
                    formats.map(|(_, to)| to),
                    tiling,
                    scratch,
                    sink,
                )?,
                (None, None) => {
                    // An assembled tensor (concatenated from shards) is written to its
                    // file on first use.
                    ckpt.prepare(info);
                    sink.copy_from(
                        &files[info.shard],
                        &ckpt.shards()[info.shard].path,
                        (info.range.start + start) as u64,
                        len as u64,
                    )?;
                    CastStats::default()
                }
                (None, Some((from, to))) => {
                    let src = &ckpt.view(info).bytes[start..start + len];
                    let release = |part: &[u8]| ckpt.release_part(info, part);
                    let s = cast_stream(src, info, &release, from, to, tiling, sink);
                    ckpt.release(info);
                    s?
                }
            }
        }
        Path::Transpose { rows, cols } => {
            let info = infos[0];
            let decoded = decode_whole(ckpt, info, &mut { tiling.resident_bytes })?;
            let src = match &decoded {
                Some(values) => bytemuck::cast_slice(values),
                None => ckpt.view(info).bytes,
            };
            let release = |part: &[u8]| {
                if decoded.is_none() {
                    ckpt.release_part(info, part)
                }
            };
            let s = transpose_banded(
                src, info, &release, rows, cols, formats, tiling, scratch, sink,
            );
            ckpt.release(info);
            s?
        }
        Path::Gather => {
            // The sources decoded into memory share one window between them.
            let mut budget = tiling.resident_bytes;
            let decoded = infos
                .iter()
                .map(|i| decode_whole(ckpt, i, &mut budget))
                .collect::<Result<Vec<_>>>()?;
            let data: Vec<Data<'_>> = infos
                .iter()
                .zip(&decoded)
                .map(|(i, d)| Data {
                    bytes: match d {
                        Some(values) => bytemuck::cast_slice(values),
                        None => ckpt.view(i).bytes,
                    },
                    dtype: i.dtype,
                })
                .collect();
            let total: usize = infos.iter().map(|i| i.nbytes()).sum();
            let release = || {
                if total > tiling.resident_bytes {
                    infos.iter().for_each(|i| ckpt.release(i));
                }
            };
            let s = gather_banded(op, &data, &release, tiling, scratch, sink);
            infos.iter().for_each(|i| ckpt.release(i));
            s?
        }
    };
    // The bytes just read came from the map: trust them only if the file is intact.
    for info in infos {
        ckpt.check_tensor(info)?;
    }
    Ok(stats)
}

/// Values `first..first + out.len()` of a block-quantized tensor, decoded on all cores.
fn par_decode(q: &Quantized<'_>, first: usize, out: &mut [f32]) -> Result<()> {
    out.par_chunks_mut(CAST_TASK)
        .enumerate()
        .try_for_each(|(k, o)| q.decode(first + k * CAST_TASK, o))
        .map_err(Error::from)
}

/// A block-quantized source decoded straight into the write buffers, chunk by chunk (then
/// cast to `to`, if given, as the F32 values it reads as would be), instead of through the
/// temporary file that [`Checkpoint::view`] dequantizes it into: that would write every
/// output byte twice. The chunk's mapped blocks are released after use, so resident memory
/// is the write buffers (plus one chunk of f32 before a cast).
#[allow(clippy::too_many_arguments)]
fn decode_stream(
    q: &Quantized<'_>,
    info: &TensorInfo,
    values: std::ops::Range<usize>,
    to: Option<FloatFormat>,
    tiling: &Tiling,
    scratch: &mut Scratch,
    sink: &mut TensorSink<'_>,
) -> Result<CastStats> {
    let ts = to.map_or(4, FloatFormat::size);
    let chunk = (tiling.chunk_bytes / 4)
        .min(sink.buffer_bytes() / ts)
        .max(1);
    let mut stats = CastStats::default();
    let mut at = values.start;
    while at < values.end {
        let n = chunk.min(values.end - at);
        match to {
            None => sink.fill_with(n * 4, |out| {
                // out: [n] f32 bytes, decoded in place when the buffer is aligned for f32
                match bytemuck::try_cast_slice_mut::<u8, f32>(out) {
                    Ok(f) => par_decode(q, at, f),
                    Err(_) => {
                        let w = scratch.wide(n); // [n] f32
                        par_decode(q, at, w)?;
                        out.copy_from_slice(bytemuck::cast_slice(w));
                        Ok(())
                    }
                }
            })?,
            Some(to) => {
                let w = scratch.wide(n); // [n] f32
                par_decode(q, at, w)?;
                let f32s: &[u8] = bytemuck::cast_slice(w);
                stats.merge(&sink.fill_with(n * ts, |d| {
                    par_cast(&info.name, f32s, FloatFormat::F32, d, to)
                })?);
            }
        }
        q.release(at..at + n);
        at += n;
    }
    Ok(stats)
}

/// A block-quantized source of a transpose or a gather, decoded whole into memory when it
/// fits what is left of `budget` (the window of source bytes those paths may keep resident,
/// [`Tiling::resident_bytes`]: every projection of a 7B model fits), so that it is not
/// written into the temporary file first; its size is taken from the budget. `None` for any
/// other tensor, and for larger ones, which are read through [`Checkpoint::view`].
fn decode_whole(
    ckpt: &Checkpoint,
    info: &TensorInfo,
    budget: &mut usize,
) -> Result<Option<Vec<f32>>> {
    let Some(q) = ckpt.quantized(info) else {
        return Ok(None);
    };
    if info.nbytes() > *budget {
        return Ok(None);
    }
    *budget -= info.nbytes();
    let mut values = vec![0f32; info.numel()]; // the tensor, row-major f32
    par_decode(&q, 0, &mut values)?;
    q.release(0..info.numel());
    Ok(Some(values))
}

/// Rows `rows` of `view` copied byte for byte into `out` ([rows, cols] elements), on all
/// cores: a few hundred KiB of output per task.
pub(crate) fn par_gather_bytes(
    view: &View,
    data: &[Data<'_>],
    rows: std::ops::Range<usize>,
    out: &mut [u8],
) -> std::result::Result<(), GatherError> {
    let n = rows.len();
    if n == 0 {
        return Ok(());
    }
    let row_bytes = out.len() / n;
    if row_bytes == 0 || row_bytes * n != out.len() {
        // Let the kernel say what is wrong with the buffer.
        return gather::gather_bytes(view, data, rows, out);
    }
    // Enough rows per task for blocks of rows to form even when rows are long (the
    // scratch of a block is the size of the task's output, within the band).
    let task = (GATHER_TASK / row_bytes).max(2 * MIN_BLOCK);
    out.par_chunks_mut(task * row_bytes)
        .enumerate()
        .try_for_each(|(k, chunk)| {
            let a = rows.start + k * task;
            gather_task(view, data, a..a + chunk.len() / row_bytes, chunk)
        })
}

/// Rows that form a block for [`gather_task`]'s transpose, at least.
const MIN_BLOCK: usize = 8;
/// Blocks [`gather_task`] made, for the tests to see that they are made.
#[cfg(test)]
static BLOCKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One run of a view's row: `len` elements of source `source` from element `off`, `stride`
/// apart, landing at output column `col`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    col: usize,
    source: usize,
    off: usize,
    len: usize,
    stride: usize,
}

/// The runs of row `row` of `view` into `out` (cleared first).
fn runs_of(view: &View, row: usize, cols: usize, out: &mut Vec<Run>) {
    out.clear();
    view.runs(row, 0..cols, &mut |col, leaf, off, len, stride| {
        out.push(Run {
            col,
            source: leaf.source,
            off,
            len,
            stride,
        })
    });
}

/// Rows `rows` of `view` into `out` byte for byte, on one core. Rows read across the source
/// (strided runs, as in every chain with a transpose in it) are slow element by element, so
/// consecutive rows whose runs are the first row's shifted by a small constant step (row
/// `r + i` reads element `off + i·δ` where row `r` reads `off`, `δ` within a cache line) are
/// done as a block: each output column's `B` elements are read together (contiguous when
/// `δ = 1`) into a `[cols, B]` scratch, which the cache-blocked transpose kernel turns into
/// the `B` output rows. Other rows go through [`gather::gather_bytes`]. Every block is
/// bounds-checked like a run.
fn gather_task(
    view: &View,
    data: &[Data<'_>],
    rows: std::ops::Range<usize>,
    out: &mut [u8],
) -> std::result::Result<(), GatherError> {
    let (_, cols) = gather::rows_cols(view);
    let es = match view.sources().first().and_then(|&s| data.get(s)) {
        Some(d) => d.dtype.bits() / 8,
        None => return gather::gather_bytes(view, data, rows, out),
    };
    let blockable = matches!(es, 1 | 2 | 4 | 8)
        && !view.has_values()
        && view
            .sources()
            .iter()
            .all(|&s| data.get(s).is_some_and(|d| d.dtype.bits() == es * 8));
    if !blockable || cols == 0 || out.len() != rows.len() * cols * es {
        return gather::gather_bytes(view, data, rows, out);
    }
    let row_bytes = cols * es;
    let (mut first, mut next) = (Vec::new(), Vec::new());
    let mut tmp: Vec<u8> = Vec::new(); // [cols, B] elements, one output column per row
    let mut r = rows.start;
    while r < rows.end {
        runs_of(view, r, cols, &mut first);
        let across = first.iter().any(|x| x.stride != 1 && x.len > 1) || first.len() * 4 > cols;
        // Extend the block while the next row is this one shifted by one more step.
        let mut b = 1;
        let mut step = 0usize;
        while across && r + b < rows.end {
            runs_of(view, r + b, cols, &mut next);
            let fits = next.len() == first.len()
                && next.iter().zip(&first).all(|(n, f)| {
                    let shifted = n.off.checked_sub(f.off);
                    if b == 1 && step == 0 {
                        step = shifted.unwrap_or(0);
                    }
                    // A step past a cache line would read each column from far apart:
                    // those rows are read as they are.
                    (n.col, n.source, n.len, n.stride) == (f.col, f.source, f.len, f.stride)
                        && step > 0
                        && step * es <= 64
                        && shifted == step.checked_mul(b)
                });
            if !fits {
                break;
            }
            b += 1;
        }
        let dst = &mut out[(r - rows.start) * row_bytes..(r - rows.start + b) * row_bytes];
        if b < MIN_BLOCK {
            gather::gather_bytes(view, data, r..r + b, dst)?;
            r += b;
            continue;
        }
        #[cfg(test)]
        BLOCKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tmp.clear();
        tmp.resize(cols * b * es, 0);
        for run in &first {
            let src = data
                .get(run.source)
                .ok_or(GatherError::NoSource(run.source))?;
            let n = src.bytes.len() / es;
            let last = (run.len - 1)
                .checked_mul(run.stride)
                .and_then(|x| (b - 1).checked_mul(step).and_then(|y| x.checked_add(y)))
                .and_then(|x| x.checked_add(run.off));
            if last.is_none_or(|l| l >= n) {
                return Err(GatherError::OutOfBounds {
                    source_index: run.source,
                    len: n,
                    last: last.unwrap_or(usize::MAX),
                });
            }
            for j in 0..run.len {
                let at = run.off + j * run.stride;
                let col = &mut tmp[(run.col + j) * b * es..(run.col + j + 1) * b * es];
                if step == 1 {
                    col.copy_from_slice(&src.bytes[at * es..(at + b) * es]);
                } else {
                    for (i, e) in col.chunks_exact_mut(es).enumerate() {
                        let k = (at + i * step) * es;
                        e.copy_from_slice(&src.bytes[k..k + es]);
                    }
                }
            }
        }
        // tmp is [cols, b]; the output rows are its transpose.
        transpose::transpose_strided(&tmp, b, dst, cols, cols, b, es)
            .map_err(|e| GatherError::Mixed(format!("the blocked transpose failed: {e}")))?;
        r += b;
    }
    Ok(())
}

/// The generic path: bands of whole output rows (as many as fit a write buffer), each
/// gathered through `op.view` from `data` on all cores straight into the buffer when the
/// bytes are copied unchanged, else widened to f32 in scratch, computed (the view's value
/// operations) and cast into the buffer. `release` runs after every band, to bound the
/// mapped source pages in use. Every read is bounds-checked by the gather kernels.
pub(crate) fn gather_banded(
    op: &TensorOp,
    data: &[Data<'_>],
    release: &dyn Fn(),
    tiling: &Tiling,
    scratch: &mut Scratch,
    sink: &mut TensorSink<'_>,
) -> Result<CastStats> {
    let view = &op.view;
    let (rows, cols) = gather::rows_cols(view);
    let err = |source| Error::Gather {
        tensor: op.target.clone(),
        source,
    };
    let copy = !op.casts() && !view.has_values();
    let out_es = op.target_dtype.bits() / 8;
    let to = float_format(op.target_dtype);
    let row_bytes = cols.max(1) * if copy { out_es } else { out_es.max(4) };
    let band = (sink.buffer_bytes().min(tiling.band_bytes) / row_bytes).clamp(1, rows.max(1));
    // Rows per rayon task.
    let task = (GATHER_TASK / row_bytes).max(1);
    let mut stats = CastStats::default();
    let mut r0 = 0;
    while r0 < rows {
        let n = band.min(rows - r0);
        let s = if copy {
            sink.fill_with(n * cols * out_es, |out| {
                par_gather_bytes(view, data, r0..r0 + n, out).map_err(err)?;
                Ok(CastStats::default())
            })?
        } else {
            let to = to.ok_or_else(|| Error::NotCastable {
                tensor: op.target.clone(),
                dtype: op.source_dtype().name().into(),
                target: op.target_dtype.name().into(),
            })?;
            let wide = scratch.wide(n * cols); // [n, cols] f32
            wide.par_chunks_mut(task * cols)
                .enumerate()
                .try_for_each(|(k, chunk)| {
                    let a = r0 + k * task;
                    let b = a + chunk.len() / cols.max(1);
                    gather::gather_f32(view, data, a..b, chunk)
                })
                .map_err(err)?;
            let wide: &[u8] = bytemuck::cast_slice(wide);
            sink.fill_with(n * cols * out_es, |out| {
                par_cast(&op.target, wide, FloatFormat::F32, out, to)
            })?
        };
        stats.merge(&s);
        release();
        r0 += n;
    }
    Ok(stats)
}

/// Casts `src` into `dst` on all cores.
fn par_cast(
    tensor: &str,
    src: &[u8],
    from: FloatFormat,
    dst: &mut [u8],
    to: FloatFormat,
) -> Result<CastStats> {
    let (fs, ts) = (from.size(), to.size());
    if src.len() / fs * ts != dst.len() {
        // Let the kernel produce the precise error.
        return cast::cast(src, from, dst, to).map_err(|source| Error::Cast {
            tensor: tensor.into(),
            source,
        });
    }
    src.par_chunks(CAST_TASK * fs)
        .zip(dst.par_chunks_mut(CAST_TASK * ts))
        .map(|(s, d)| cast::cast(s, from, d, to))
        .try_reduce(CastStats::default, |mut a, b| {
            a.merge(&b);
            Ok(a)
        })
        .map_err(|source| Error::Cast {
            tensor: tensor.into(),
            source,
        })
}

/// Cast without transpose: chunk by chunk of the memory map, each cast straight into a
/// write buffer; the chunk's mapped pages are released after use.
fn cast_stream(
    src: &[u8],
    info: &TensorInfo,
    release: &dyn Fn(&[u8]),
    from: FloatFormat,
    to: FloatFormat,
    tiling: &Tiling,
    sink: &mut TensorSink<'_>,
) -> Result<CastStats> {
    let (fs, ts) = (from.size(), to.size());
    let chunk_elems = (tiling.chunk_bytes / fs)
        .min(sink.buffer_bytes() / ts)
        .max(1);
    let total = src.len() / fs;
    let mut stats = CastStats::default();
    let mut done = 0usize;
    while done < total {
        let n = chunk_elems.min(total - done);
        let s = &src[done * fs..(done + n) * fs]; // [n] source elements, mapped
        stats.merge(&sink.fill_with(n * ts, |d| par_cast(&info.name, s, from, d, to))?);
        release(s);
        done += n;
    }
    Ok(stats)
}

/// Buffers reused from tensor to tensor (a transposed band before its cast, a gathered
/// band before its cast), so that each tensor does not pay for fresh zeroed pages.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// [band, rows] transposed elements in the source dtype.
    t: Buffer,
    /// [band, cols] gathered elements widened to f32.
    w: Vec<f32>,
    /// [stripe, rows] transposed elements of one wide pass (see `transpose_banded`).
    s: Buffer,
}

impl Scratch {
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.t.len() < len {
            // Huge pages: see `crate::buffer` (the contents need not survive).
            self.t = Buffer::zeroed(len);
        }
        &mut self.t[..len]
    }

    fn stripe(&mut self, len: usize) -> &mut [u8] {
        if self.s.len() < len {
            self.s = Buffer::zeroed(len);
        }
        &mut self.s[..len]
    }

    fn wide(&mut self, len: usize) -> &mut [f32] {
        if self.w.len() < len {
            self.w.resize(len, 0.0);
        }
        &mut self.w[..len]
    }
}

/// Transpose (± cast), band of output rows by band: each band (source columns
/// `j0..j1`, as many as fit in a write buffer) is assembled from chunks of source rows
/// of the memory map straight into the write buffer (or into scratch, then cast into
/// it). Mapped source pages are released once used, except for the last
/// `resident_bytes` of them, so resident memory is the buffers plus that window plus one
/// chunk whatever the tensor's size. Most tensors fit in one band.
#[allow(clippy::too_many_arguments)]
fn transpose_banded(
    src: &[u8],
    info: &TensorInfo,
    release: &dyn Fn(&[u8]),
    rows: usize,
    cols: usize,
    formats: Option<(FloatFormat, FloatFormat)>,
    tiling: &Tiling,
    scratch: &mut Scratch,
    sink: &mut TensorSink<'_>,
) -> Result<CastStats> {
    let es = info.nbytes() / (rows * cols).max(1);
    let out_es = formats.map_or(es, |(_, t)| t.size());
    let band = (sink.buffer_bytes() / (rows * es.max(out_es)).max(1)).clamp(1, cols.max(1));
    if band < cols && cols * es.max(out_es) <= sink.buffer_bytes() && !sink.sequential() {
        return transpose_columns(src, info, release, rows, cols, formats, scratch, sink);
    }
    let chunk_rows = (tiling.chunk_bytes / (cols * es).max(1)).clamp(1, rows.max(1));
    let mut stats = CastStats::default();
    let chunk_len = chunk_rows * cols * es;
    let n_chunks = rows.div_ceil(chunk_rows);
    // Chunks left mapped from one band to the next: bands walk the chunks alternately
    // forwards and backwards, so the chunks a band used last are the ones the next band
    // uses first, and only the others are faulted in again.
    let keep = (tiling.resident_bytes / chunk_len.max(1)).min(n_chunks);
    let chunk = |c: usize| -> (usize, &[u8]) {
        let i0 = c * chunk_rows;
        let n = chunk_rows.min(rows - i0);
        (i0, &src[i0 * cols * es..(i0 + n) * cols * es]) // [n, cols] source rows
    };
    // Band `b`: source columns j0..j0+w of all rows, transposed into `out` ([w, rows],
    // `es` each).
    let fill_band = |b: usize, j0: usize, w: usize, out: &mut [u8]| -> Result<()> {
        let order = |p: usize| {
            if b.is_multiple_of(2) {
                p
            } else {
                n_chunks - 1 - p
            }
        };
        for p in 0..n_chunks {
            let (i0, rows_chunk) = chunk(order(p));
            populate(rows_chunk);
            let n = rows_chunk.len() / (cols * es);
            transpose::transpose_strided(
                &rows_chunk[j0 * es..],
                cols,
                &mut out[i0 * es..],
                rows,
                n,
                w,
                es,
            )
            .map_err(|source| Error::Transpose {
                tensor: info.name.clone(),
                source,
            })?;
            // Bound the mapped source: drop from our RSS the pages of the chunk used
            // `keep` steps ago (the next band faults them back in from the page cache).
            if let Some(old) = p.checked_sub(keep) {
                release(chunk(order(old)).1);
            }
        }
        Ok(())
    };
    let mut j0 = 0;
    let mut b = 0;
    if band < cols && sink.sequential() {
        // Passes over the whole source cost page faults: make them wide, in scratch
        // (`stripe_bytes` of output each), then hand each pass to the writer in bands.
        let wide = (tiling.stripe_bytes / (rows * es.max(out_es)).max(1)).clamp(band, cols);
        while j0 < cols {
            let w = wide.min(cols - j0);
            let stripe = scratch.stripe(w * rows * es); // [w, rows] source dtype
            fill_band(b, j0, w, stripe)?;
            let row_in = rows * es;
            for part in stripe.chunks(band * row_in) {
                let s = match formats {
                    None => {
                        sink.write(part)?;
                        CastStats::default()
                    }
                    Some((from, to)) => {
                        let n = part.len() / row_in * rows * out_es;
                        sink.fill_with(n, |out| par_cast(&info.name, part, from, out, to))?
                    }
                };
                stats.merge(&s);
            }
            j0 += w;
            b += 1;
        }
        return Ok(stats);
    }
    while j0 < cols {
        let w = band.min(cols - j0);
        let s = match formats {
            None => sink.fill_with(w * rows * es, |out| {
                fill_band(b, j0, w, out).map(|()| CastStats::default())
            })?,
            Some((from, to)) => {
                let t = scratch.get(w * rows * es); // [w, rows] source dtype
                fill_band(b, j0, w, t)?;
                sink.fill_with(w * rows * out_es, |out| {
                    par_cast(&info.name, t, from, out, to)
                })?
            }
        };
        stats.merge(&s);
        j0 += w;
        b += 1;
    }
    Ok(stats)
}

/// Transpose (± cast) of a tensor too large for one band of whole output rows (a Flax
/// `lm_head` `[H, V]` from a `[V, H]` embedding): chunk of source rows by chunk, each
/// chunk `[n, cols]` transposed into a `[cols, n]` column block of the output, which the
/// writer scatters to its rows ([`TensorSink::fill_columns`]). The source is read once,
/// in order, and each chunk's mapped pages are released right after use; building whole
/// output rows instead would read (and fault in) the whole source once per band.
#[allow(clippy::too_many_arguments)]
fn transpose_columns(
    src: &[u8],
    info: &TensorInfo,
    release: &dyn Fn(&[u8]),
    rows: usize,
    cols: usize,
    formats: Option<(FloatFormat, FloatFormat)>,
    scratch: &mut Scratch,
    sink: &mut TensorSink<'_>,
) -> Result<CastStats> {
    let es = info.nbytes() / (rows * cols).max(1);
    let out_es = formats.map_or(es, |(_, t)| t.size());
    // Source rows per block: its output and its pre-cast scratch each fit a buffer.
    let block = (sink.buffer_bytes() / (cols * es.max(out_es)).max(1)).clamp(1, rows.max(1));
    let err = |source| Error::Transpose {
        tensor: info.name.clone(),
        source,
    };
    let mut stats = CastStats::default();
    let mut i0 = 0;
    while i0 < rows {
        let n = block.min(rows - i0);
        let chunk = &src[i0 * cols * es..(i0 + n) * cols * es]; // [n, cols] source rows
        let s = match formats {
            None => sink.fill_columns(cols, rows * es, n * es, |out| {
                // out: [cols, n] source dtype
                transpose::transpose(chunk, n, cols, es, out).map_err(err)?;
                Ok(CastStats::default())
            })?,
            Some((from, to)) => {
                let t = scratch.get(n * cols * es); // [cols, n] source dtype
                transpose::transpose(chunk, n, cols, es, t).map_err(err)?;
                // out: [cols, n] target dtype
                sink.fill_columns(cols, rows * out_es, n * out_es, |out| {
                    par_cast(&info.name, t, from, out, to)
                })?
            }
        };
        stats.merge(&s);
        release(chunk);
        i0 += n;
    }
    Ok(stats)
}

/// Maps the pages of `bytes` (a part of a source memory map) in one call, instead of one
/// page fault per few pages as a transpose walks them. Advice only: errors are ignored,
/// and only whole pages inside `bytes` are named, so no neighbouring memory is touched.
fn populate(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: [start, end) lies inside `bytes`, a live mapped region; populating
            // only reads it into the page tables and changes no memory.
            unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    end - start,
                    libc::MADV_POPULATE_READ,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView as StView;

    /// A source file with an F32 [37, 23], a BF16 [50, 7], an F16 [9, 4] and an I64 [5].
    fn source(dir: &std::path::Path) -> std::path::PathBuf {
        let w: Vec<u8> = (0..37 * 23)
            .flat_map(|k| ((k as f32) * 0.37 - 100.0).to_le_bytes())
            .collect();
        let b: Vec<u8> = (0..50 * 7u16)
            .flat_map(|k| (0x3c00u16 + k * 13).to_le_bytes())
            .collect();
        let h: Vec<u8> = (0..36u16).flat_map(|k| (k * 977).to_le_bytes()).collect();
        let i: Vec<u8> = (0..5i64).flat_map(|k| (k - 2).to_le_bytes()).collect();
        let views = vec![
            (
                "w",
                StView::new(safetensors::Dtype::F32, vec![37, 23], &w).unwrap(),
            ),
            (
                "b",
                StView::new(safetensors::Dtype::BF16, vec![50, 7], &b).unwrap(),
            ),
            (
                "h",
                StView::new(safetensors::Dtype::F16, vec![9, 4], &h).unwrap(),
            ),
            (
                "i",
                StView::new(safetensors::Dtype::I64, vec![5], &i).unwrap(),
            ),
        ];
        let path = dir.join("src.safetensors");
        std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
        path
    }

    fn op(src: &str, dst: &str, t: bool, from: Dtype, to: Dtype, shape: &[usize]) -> TensorOp {
        TensorOp::plain(src, dst, t, from, to, shape).unwrap()
    }

    fn ops() -> Vec<TensorOp> {
        vec![
            op("w", "w.t", true, Dtype::F32, Dtype::F32, &[37, 23]),
            op("w", "w.bf16", false, Dtype::F32, Dtype::BF16, &[37, 23]),
            op("w", "w.t.f16", true, Dtype::F32, Dtype::F16, &[37, 23]),
            op("b", "b.t.f32", true, Dtype::BF16, Dtype::F32, &[50, 7]),
            op("h", "h.t", true, Dtype::F16, Dtype::F16, &[9, 4]),
            op("i", "i", false, Dtype::I64, Dtype::I64, &[5]),
        ]
    }

    fn run(
        ckpt: &Checkpoint,
        ops: &[TensorOp],
        tiling: &Tiling,
        dst: &std::path::Path,
    ) -> Result<Written> {
        let staging = Staging::create(dst, false)?;
        let w = write_tensors(
            ckpt,
            ops,
            &BTreeMap::new(),
            u64::MAX,
            tiling,
            &staging,
            &mut |_| {},
        )?;
        staging.commit(false)?;
        Ok(w)
    }

    fn naive_t(bytes: &[u8], rows: usize, cols: usize, es: usize) -> Vec<u8> {
        let mut out = vec![0u8; bytes.len()];
        for r in 0..rows {
            for c in 0..cols {
                out[(c * rows + r) * es..][..es]
                    .copy_from_slice(&bytes[(r * cols + c) * es..][..es]);
            }
        }
        out
    }

    #[test]
    fn every_path_produces_the_expected_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = Checkpoint::open(source(tmp.path())).unwrap();
        let whole = tmp.path().join("whole");
        let banded = tmp.path().join("banded");
        run(&ckpt, &ops(), &Tiling::default(), &whole).unwrap();
        // Tiny budgets force the banded transpose and several pread chunks.
        let tiny = Tiling {
            band_bytes: 300,
            chunk_bytes: 100,
            resident_bytes: 200,
            stripe_bytes: 700,
        };
        let written = run(&ckpt, &ops(), &tiny, &banded).unwrap();
        assert_eq!(written.tensors, 6);
        // Buffers shorter than a source row force bands of output rows (with the
        // resident window) instead of column blocks.
        let narrow = tmp.path().join("narrow");
        let tinier = Tiling {
            band_bytes: 40,
            chunk_bytes: 100,
            resident_bytes: 200,
            stripe_bytes: 700,
        };
        run(&ckpt, &ops(), &tinier, &narrow).unwrap();
        let a = std::fs::read(whole.join("model.safetensors")).unwrap();
        let b = std::fs::read(banded.join("model.safetensors")).unwrap();
        let c = std::fs::read(narrow.join("model.safetensors")).unwrap();
        assert_eq!(
            a, b,
            "column-block and whole-tensor paths must agree byte for byte"
        );
        assert_eq!(
            a, c,
            "banded and whole-tensor paths must agree byte for byte"
        );

        let st = safetensors::SafeTensors::deserialize(&a).unwrap();
        let src = |n: &str| ckpt.view(ckpt.tensor(n).unwrap()).bytes;
        assert_eq!(
            st.tensor("w.t").unwrap().data(),
            &naive_t(src("w"), 37, 23, 4)[..]
        );
        assert_eq!(st.tensor("w.t").unwrap().shape(), &[23, 37]);
        assert_eq!(
            st.tensor("h.t").unwrap().data(),
            &naive_t(src("h"), 9, 4, 2)[..]
        );
        assert_eq!(st.tensor("i").unwrap().data(), src("i"));
        let bf: Vec<u8> = src("w")
            .chunks_exact(4)
            .flat_map(|c| {
                half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
            })
            .collect();
        assert_eq!(st.tensor("w.bf16").unwrap().data(), &bf[..]);
        let f16t: Vec<u8> = naive_t(src("w"), 37, 23, 4)
            .chunks_exact(4)
            .flat_map(|c| {
                half::f16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
            })
            .collect();
        assert_eq!(st.tensor("w.t.f16").unwrap().data(), &f16t[..]);
        let wide: Vec<u8> = naive_t(src("b"), 50, 7, 2)
            .chunks_exact(2)
            .flat_map(|c| (u32::from(u16::from_le_bytes([c[0], c[1]])) << 16).to_le_bytes())
            .collect();
        assert_eq!(st.tensor("b.t.f32").unwrap().data(), &wide[..]);
        assert_eq!(
            st.tensor("b.t.f32").unwrap().dtype(),
            safetensors::Dtype::F32
        );
    }

    /// The three ways a shard reaches its file (page cache at offsets; in file order and
    /// hashed; in file order by direct I/O, with a carried tail and a padded last block)
    /// write the same bytes for every path and budget, and the hash is the file's.
    #[test]
    fn every_stream_mode_writes_the_same_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = Checkpoint::open(source(tmp.path())).unwrap();
        let budgets = [
            Tiling::default(),
            Tiling {
                band_bytes: 300,
                chunk_bytes: 100,
                resident_bytes: 200,
                stripe_bytes: 700,
            },
            Tiling {
                band_bytes: 40,
                chunk_bytes: 100,
                resident_bytes: 200,
                stripe_bytes: 90,
            },
        ];
        let mut files = Vec::new();
        for (k, tiling) in budgets.iter().enumerate() {
            for mode in 0..3 {
                let dst = tmp.path().join(format!("out-{k}-{mode}"));
                let staging = match mode {
                    0 => Staging::create(&dst, false).unwrap(),
                    1 => Staging::create(&dst, false).unwrap().hashing(),
                    _ => Staging::create(&dst, true).unwrap().hashing(),
                };
                write_tensors(
                    &ckpt,
                    &ops(),
                    &BTreeMap::new(),
                    u64::MAX,
                    tiling,
                    &staging,
                    &mut |_| {},
                )
                .unwrap();
                let digests = staging.written();
                staging.commit(false).unwrap();
                let bytes = std::fs::read(dst.join("model.safetensors")).unwrap();
                let d = digests["model.safetensors"];
                assert_eq!(d.len, bytes.len() as u64);
                match mode {
                    0 => assert_eq!(d.hash, None),
                    _ => assert_eq!(d.hash, Some(xxhash_rust::xxh3::xxh3_128(&bytes))),
                }
                files.push(bytes);
            }
        }
        assert!(files.windows(2).all(|w| w[0] == w[1]));
    }

    /// Q8_0 and Q4_0 tensors of a GGUF file, read through every path (a range from an
    /// unaligned element, with and without a cast, into a write buffer that is not aligned
    /// for f32; a transpose; a gather), under the default budgets and tiny ones: the output
    /// holds exactly the values gguf-py's `gguf.quants.dequantize` computed (the fixture's
    /// `.f32` files), and, within the budgets, nothing was dequantized into the temporary
    /// file of assembled tensors first.
    #[test]
    fn quantized_sources_are_decoded_straight_into_the_output() {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats/gguf");
        let want = |name: &str| -> Vec<f32> {
            std::fs::read(fixtures.join(format!("{name}.f32")))
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let shape = [4usize, 64];
        let op_of =
            |src: &str, dst: &str, view: View, from: Dtype, to: Dtype, n: &[usize]| TensorOp {
                target: dst.to_string(),
                sources: vec![SourceTensor {
                    name: src.to_string(),
                    shape: n.to_vec(),
                    dtype: from,
                }],
                target_shape: view.shape(),
                view,
                target_dtype: to,
                chain: Vec::new(),
                tied: false,
            };
        let ops = vec![
            // 7 F16 values (14 bytes) first: the tensors after it start 2 bytes off f32
            // alignment in the output.
            op_of(
                "f16",
                "a.f16",
                View::with_strides(0, 1, &[7], &[1]),
                Dtype::F16,
                Dtype::F16,
                &[8],
            ),
            op_of(
                "q8_0",
                "q8.range",
                View::with_strides(0, 5, &[241], &[1]),
                Dtype::F32,
                Dtype::F32,
                &shape,
            ),
            op("q8_0", "q8.t", true, Dtype::F32, Dtype::F32, &shape),
            op("q4_0", "q4.bf16", false, Dtype::F32, Dtype::BF16, &shape),
            op("q4_0", "q4.f32", false, Dtype::F32, Dtype::F32, &shape),
            op_of(
                "q4_0",
                "q4.slice",
                View::contiguous(0, &shape).slice(1, 3, 40).unwrap(),
                Dtype::F32,
                Dtype::F32,
                &shape,
            ),
        ];
        let tiny = Tiling {
            band_bytes: 300,
            chunk_bytes: 100,
            resident_bytes: 200,
            stripe_bytes: 700,
        };
        for (k, tiling) in [Tiling::default(), tiny].iter().enumerate() {
            let tmp = tempfile::tempdir().unwrap();
            let ckpt = Checkpoint::open(fixtures.join("tiny.gguf")).unwrap();
            for n in ["q8_0", "q4_0"] {
                assert!(ckpt.quantized(ckpt.tensor(n).unwrap()).is_some(), "{n}");
            }
            let dst = tmp.path().join("out");
            run(&ckpt, &ops, tiling, &dst).unwrap();
            let bytes = std::fs::read(dst.join("model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            for o in &ops[1..] {
                let src = want(o.source());
                let vals = orient_inspect::layout::view::collect(&o.view, &|_, i| src[i]);
                let expected = match o.target_dtype {
                    Dtype::F32 => le(&vals),
                    _ => vals
                        .iter()
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect(),
                };
                let got = st.tensor(&o.target).unwrap();
                assert_eq!(got.shape(), &o.target_shape[..], "{}", o.target);
                assert!(got.data() == &expected[..], "{} (budget {k})", o.target);
            }
            // The temporary file stays a hole unless a transpose or a gather of a tensor
            // larger than the resident window (the tiny budget) needed it.
            let assembled = ckpt.shards().iter().find(|s| s.is_assembled()).unwrap();
            let blocks =
                std::os::unix::fs::MetadataExt::blocks(&assembled.file().metadata().unwrap());
            assert_eq!(
                blocks == 0,
                k == 0,
                "allocated blocks: {blocks} (budget {k})"
            );
        }
    }

    #[test]
    fn casting_an_integer_tensor_is_refused_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = Checkpoint::open(source(tmp.path())).unwrap();
        let dst = tmp.path().join("out");
        let bad = vec![op("i", "i", false, Dtype::I64, Dtype::F32, &[5])];
        let err = run(&ckpt, &bad, &Tiling::default(), &dst).unwrap_err();
        assert!(
            matches!(&err, Error::NotCastable { tensor, .. } if tensor == "i"),
            "{err}"
        );
        assert!(err.to_string().contains("`i` has dtype I64"), "{err}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["src.safetensors"]);
    }

    #[test]
    fn f16_overflow_is_counted_per_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let vals: Vec<u8> = [1.0f32, 7.0e4, -1.0e5, 1.0e-9]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let path = tmp.path().join("s.safetensors");
        let views = vec![(
            "x",
            StView::new(safetensors::Dtype::F32, vec![4], &vals).unwrap(),
        )];
        std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        let w = run(
            &ckpt,
            &[op("x", "x", false, Dtype::F32, Dtype::F16, &[4])],
            &Tiling::default(),
            &tmp.path().join("o"),
        )
        .unwrap();
        assert_eq!(w.lossy_casts.len(), 1);
        assert_eq!(w.cast_total.overflowed, 2);
        assert_eq!(w.cast_total.flushed_to_zero, 1);
    }

    /// Blocks of rows (a transpose somewhere in the chain) read exactly what the plain
    /// gather reads, and a block past its source's end is an error, not a read.
    #[test]
    fn blocked_rows_match_the_plain_gather() {
        use orient_inspect::layout::transform::{Chain, RopeOrder};
        let bytes: Vec<u8> = (0..4 * 40 * 30).map(|k| (k * 7 % 251) as u8).collect();
        let data = [
            Data {
                bytes: &bytes,
                dtype: Dtype::F32,
            },
            Data {
                bytes: &bytes[..4 * 20 * 30],
                dtype: Dtype::F32,
            },
        ];
        let t = View::contiguous(0, &[40, 30]).transpose_last().unwrap();
        let rope = Chain::from_transforms(
            vec![
                Transform::Transpose,
                // Runs of 15 rows a step of 2 apart (the halves of one 30-row head).
                Transform::RopePermute {
                    axis: 0,
                    heads: 1,
                    rotary: 30,
                    to: RopeOrder::Half,
                },
            ],
            vec![vec![vec![40, 30]]],
        )
        .unwrap()
        .apply(vec![vec![View::contiguous(0, &[40, 30])]])
        .unwrap()
        .remove(0)
        .remove(0);
        let rope_after = Chain::from_transforms(
            vec![
                Transform::RopePermute {
                    axis: 0,
                    heads: 4,
                    rotary: 10,
                    to: RopeOrder::Interleaved,
                },
                Transform::Transpose,
            ],
            vec![vec![vec![40, 30]]],
        )
        .unwrap()
        .apply(vec![vec![View::contiguous(0, &[40, 30])]])
        .unwrap()
        .remove(0)
        .remove(0);
        let fused = View::concat(
            0,
            vec![
                View::contiguous(0, &[40, 30]),
                View::contiguous(1, &[20, 30]),
            ],
        )
        .unwrap()
        .transpose_last()
        .unwrap();
        for view in [t, rope, rope_after, fused] {
            let before = BLOCKS.load(std::sync::atomic::Ordering::Relaxed);
            let (rows, cols) = gather::rows_cols(&view);
            let mut want = vec![0u8; rows * cols * 4];
            gather::gather_bytes(&view, &data, 0..rows, &mut want).unwrap();
            for (a, b) in [(0, rows), (3, rows - 1), (5, 17)] {
                let mut got = vec![0u8; (b - a) * cols * 4];
                gather_task(&view, &data, a..b, &mut got).unwrap();
                assert_eq!(
                    got,
                    want[a * cols * 4..b * cols * 4],
                    "{view:?} rows {a}..{b}"
                );
            }
            assert!(
                BLOCKS.load(std::sync::atomic::Ordering::Relaxed) > before,
                "no block for {view:?}"
            );
        }
        // The same transpose over a source that is too short.
        let short = [Data {
            bytes: &bytes[..4 * 40 * 29],
            dtype: Dtype::F32,
        }];
        let t = View::contiguous(0, &[40, 30]).transpose_last().unwrap();
        let mut out = vec![0u8; 30 * 40 * 4];
        assert!(matches!(
            gather_task(&t, &short, 0..30, &mut out),
            Err(GatherError::OutOfBounds { .. })
        ));
    }

    /// The generic path's property: every transform kind followed by its inverse, each leg
    /// produced by `gather_banded` through the shard writer with tiny bands (so every tensor
    /// takes many bands and most rows straddle two write buffers), gives back the input bit
    /// for bit. Index transforms run on random bytes of every dtype; value transforms (add,
    /// scale) on the float dtypes with values where the arithmetic is exact: multiples of 1/4
    /// below 16 in magnitude, constants 0.5 to 2 that add exactly, and powers of two that
    /// scale exactly, so `(x + c) − c` and `(x · c) / c` are `x` in F32, BF16 and F16.
    mod generic_round_trip {
        use std::collections::HashMap;

        use orient_inspect::layout::transform::{Arrangement, Chain, Group, RopeOrder};
        use proptest::prelude::*;

        use super::super::*;
        use crate::writer::SINGLE_FILE;

        /// Random bytes for index transforms, exact values for value transforms.
        fn data(dtype: Dtype, numel: usize, exact: bool, seed: &mut u64) -> Vec<u8> {
            let mut next = || {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed
            };
            if !exact {
                return (0..numel * dtype.bits() / 8)
                    .map(|_| next() as u8)
                    .collect();
            }
            (0..numel)
                .flat_map(|_| {
                    let x = ((next() % 128) as i32 - 64) as f32 / 4.0;
                    match dtype {
                        Dtype::F32 => x.to_le_bytes().to_vec(),
                        Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                        _ => half::f16::from_f32(x).to_le_bytes().to_vec(),
                    }
                })
                .collect()
        }

        /// Writes every op of `ops` (whose views read `data`) through the generic path into
        /// a staged shard, and returns each output's bytes, in op order.
        fn produce(ops: &[TensorOp], data: &[Data<'_>], band: usize) -> Vec<Vec<u8>> {
            let tmp = tempfile::tempdir().unwrap();
            let outs = ops
                .iter()
                .map(|op| OutTensor {
                    name: op.target.clone(),
                    dtype: op.target_dtype.name().into(),
                    shape: op.target_shape.clone(),
                    nbytes: op.target_nbytes().unwrap(),
                })
                .collect();
            let layout = Layout::new(outs, &BTreeMap::new(), u64::MAX).unwrap();
            let staging = Staging::create(&tmp.path().join("out"), false).unwrap();
            let tiling = Tiling {
                band_bytes: band,
                chunk_bytes: band,
                resident_bytes: band,
                stripe_bytes: 3 * band,
            };
            let by_name: HashMap<&str, &TensorOp> =
                ops.iter().map(|o| (o.target.as_str(), o)).collect();
            let mut scratch = Scratch::default();
            let mut produce = |i: usize, sink: &mut TensorSink<'_>| -> Result<()> {
                let op = by_name[layout.tensors[i].name.as_str()];
                gather_banded(op, data, &|| {}, &tiling, &mut scratch, sink).map(|_| ())
            };
            staging
                .write_shard_with(&layout, 0, band, &mut produce, &mut |_| {})
                .unwrap();
            let bytes = std::fs::read(staging.dir().join(SINGLE_FILE)).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            ops.iter()
                .map(|op| st.tensor(&op.target).unwrap().data().to_vec())
                .collect()
        }

        /// One output per view of `group`, reading `sources` (name, shape, dtype each).
        fn ops_of(
            group: Group<View>,
            sources: &[SourceTensor],
            dtype: Dtype,
            prefix: &str,
        ) -> Vec<TensorOp> {
            group
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(k, view)| TensorOp {
                    target: format!("{prefix}{k}"),
                    sources: sources.to_vec(),
                    target_shape: view.shape(),
                    view,
                    target_dtype: dtype,
                    chain: Vec::new(),
                    tied: false,
                })
                .collect()
        }

        /// One contiguous view per tensor of `shapes` (members × parts), over sources numbered
        /// in that order.
        fn numbered_views(shapes: &Group<Vec<usize>>) -> Group<View> {
            let mut k = 0;
            shapes
                .iter()
                .map(|m| {
                    m.iter()
                        .map(|s| {
                            k += 1;
                            View::contiguous(k - 1, s)
                        })
                        .collect()
                })
                .collect()
        }

        /// Runs `transforms` over tensors of `shapes` (members × parts) and back.
        fn round_trip(
            transforms: Vec<Transform>,
            shapes: Group<Vec<usize>>,
            dtype: Dtype,
            seed: u64,
            band: usize,
        ) -> std::result::Result<(), TestCaseError> {
            let exact = transforms.iter().any(|t| !t.is_index());
            let chain = Chain::from_transforms(transforms, shapes.clone()).unwrap();
            let mut seed = seed | 1;
            let inputs: Vec<Vec<u8>> = shapes
                .iter()
                .flatten()
                .map(|s| data(dtype, s.iter().product(), exact, &mut seed))
                .collect();
            let sources: Vec<SourceTensor> = shapes
                .iter()
                .flatten()
                .enumerate()
                .map(|(k, s)| SourceTensor {
                    name: format!("in{k}"),
                    shape: s.clone(),
                    dtype,
                })
                .collect();
            let group = numbered_views(&shapes);
            let stored_views = chain.apply(group).unwrap();
            let ops = ops_of(stored_views, &sources, dtype, "out");
            let d: Vec<Data<'_>> = inputs.iter().map(|b| Data { bytes: b, dtype }).collect();
            let stored = produce(&ops, &d, band);
            // Back: the stored tensors through the inverse chain.
            let out_shapes = chain.output().cloned().unwrap_or(shapes);
            let stored_sources: Vec<SourceTensor> = ops
                .iter()
                .map(|o| SourceTensor {
                    name: o.target.clone(),
                    shape: o.target_shape.clone(),
                    dtype,
                })
                .collect();
            let group = numbered_views(&out_shapes);
            let back_views = chain.inverse().apply(group).unwrap();
            let back_ops = ops_of(back_views, &stored_sources, dtype, "back");
            let d: Vec<Data<'_>> = stored.iter().map(|b| Data { bytes: b, dtype }).collect();
            let back = produce(&back_ops, &d, band);
            prop_assert_eq!(back, inputs, "{}", chain.describe());
            Ok(())
        }

        fn one(shape: &[usize]) -> Group<Vec<usize>> {
            vec![vec![shape.to_vec()]]
        }

        /// Transform kind `kind` with its input shapes, from small random sizes.
        fn case(
            kind: usize,
            a: usize,
            b: usize,
            c: usize,
            flip: bool,
        ) -> (Vec<Transform>, Group<Vec<usize>>) {
            let rope = |heads, rotary, to| Transform::RopePermute {
                axis: 0,
                heads,
                rotary,
                to,
            };
            let order = if flip {
                RopeOrder::Interleaved
            } else {
                RopeOrder::Half
            };
            match kind {
                0 => (vec![Transform::Transpose], one(&[a, b])),
                // Per expert on a stack.
                1 => (vec![Transform::Transpose], one(&[c, a, b])),
                2 => (vec![Transform::Permute(vec![2, 0, 1])], one(&[a, b, c])),
                3 => (vec![Transform::ReverseDims], one(&[a, b, c])),
                // Whole heads, then partial rotary (2 dims of each head pass through).
                4 => (vec![rope(a, 2 * b, order)], one(&[a * 2 * b, c])),
                5 => (vec![rope(a, 2 * b, order)], one(&[a * (2 * b + 2), c])),
                // Fused parts: concatenated, per head (outer = a), grouped (outer = a).
                6 => (
                    vec![Transform::Fuse {
                        axis: 0,
                        arrangement: Arrangement::Concat,
                        outer: 1,
                    }],
                    vec![vec![vec![a, c], vec![b, c], vec![b, c]]],
                ),
                7 => (
                    vec![Transform::Fuse {
                        axis: 0,
                        arrangement: Arrangement::PerHead,
                        outer: a,
                    }],
                    vec![vec![vec![a * b, c]; 3]],
                ),
                8 => (
                    vec![Transform::Fuse {
                        axis: 1,
                        arrangement: Arrangement::Grouped,
                        outer: a,
                    }],
                    vec![vec![vec![c, a * b * 2], vec![c, a], vec![c, a]]],
                ),
                // Experts stacked on a new axis (first or middle).
                9 => (
                    vec![Transform::Stack {
                        axis: usize::from(flip),
                    }],
                    vec![vec![vec![a, b]]; c],
                ),
                10 => (
                    vec![Transform::Add(if flip { 0.5 } else { 2.0 })],
                    one(&[a, b]),
                ),
                11 => (
                    vec![Transform::Scale(if flip { 0.25 } else { 2.0 })],
                    one(&[a, b]),
                ),
                // Composed as the port does: RoPE then transpose; fuse then transpose.
                12 => (
                    vec![rope(a, 2 * b, RopeOrder::Interleaved), Transform::Transpose],
                    one(&[a * 2 * b, c]),
                ),
                _ => (
                    vec![
                        Transform::Fuse {
                            axis: 0,
                            arrangement: Arrangement::Concat,
                            outer: 1,
                        },
                        Transform::Transpose,
                    ],
                    vec![vec![vec![a, c], vec![b, c]]],
                ),
            }
        }

        fn dtype() -> impl Strategy<Value = Dtype> {
            prop_oneof![
                Just(Dtype::F32),
                Just(Dtype::BF16),
                Just(Dtype::F16),
                Just(Dtype::F64),
                Just(Dtype::I32),
                Just(Dtype::U8),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]
            #[test]
            fn every_transform_and_its_inverse_is_bit_identical_through_the_generic_path(
                kind in 0usize..14,
                d in dtype(),
                a in 1usize..4, b in 1usize..4, c in 1usize..5,
                grow in prop_oneof![Just(1usize), Just(6usize)],
                flip in any::<bool>(),
                seed in any::<u64>(),
                band in prop_oneof![1usize..48, Just(1usize << 16)],
            ) {
                // Grown sizes with whole bands make blocks of rows for `gather_task`.
                let (transforms, shapes) = case(kind, a, b * grow, c * grow, flip);
                let computes = transforms.iter().any(|t| !t.is_index());
                // Arithmetic is for floats the cast kernels write (F32, BF16, F16).
                let d = if computes && !matches!(d, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
                    Dtype::BF16
                } else {
                    d
                };
                round_trip(transforms, shapes, d, seed, band)?;
            }
        }
    }
}
