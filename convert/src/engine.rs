//! Executes a list of per-tensor operations against an open checkpoint, streaming.
//!
//! Why it is built this way: the converted model may be larger than RAM, so no tensor is
//! ever gathered whole unless it is small, and the work must overlap the kernel's copy
//! of the output into the page cache, which costs about as much as the transposes. Each
//! output tensor is produced by the cheapest path that keeps memory bounded, straight
//! into the write buffers that the shard's writer thread drains (see
//! [`crate::writer::Staging::write_shard_with`]):
//! - copy (no transpose, no cast): `copy_file_range` inside the kernel, so the bytes never
//!   enter this process (nor its RSS);
//! - cast only: chunks of the memory map cast on all cores into a write buffer;
//! - transpose (± cast) of a tensor whose output fits one buffer (every projection of a
//!   0.5B–7B model): in one go, from the memory map into the buffer;
//! - a larger one (a tied embedding becoming a Flax `lm_head`, a 7B model's `lm_head`):
//!   chunk of source rows by chunk, each transposed into a column block of the output
//!   that the writer scatters to its rows, so the source is read once, in order, and each
//!   chunk's mapped pages are released right after use;
//! - only when a single source row exceeds a buffer: bands of whole output rows, each
//!   assembled from all source rows, keeping a window of them mapped between bands.
//!
//! Resident memory is the write buffers plus one chunk of mapped source (plus the window
//! in the last case), whatever the model's size.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;

use orient_inspect::{Checkpoint, Dtype, TensorInfo};
use rayon::prelude::*;

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
}

impl Default for Tiling {
    fn default() -> Tiling {
        Tiling {
            band_bytes: DEFAULT_BUFFER_BYTES,
            chunk_bytes: 32 << 20,
            resident_bytes: 256 << 20,
        }
    }
}
/// Elements cast by one rayon task.
const CAST_TASK: usize = 1 << 18;

/// What to do with one source tensor to obtain one output tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorOp {
    /// Name in the source checkpoint.
    pub source: String,
    /// Name in the output.
    pub target: String,
    /// Transpose the 2-D tensor (`[r, c]` → `[c, r]`).
    pub transpose: bool,
    /// Source dtype.
    pub source_dtype: Dtype,
    /// Output dtype (equal to the source dtype when there is no cast).
    pub target_dtype: Dtype,
    /// Source shape.
    pub source_shape: Vec<usize>,
    /// Output shape.
    pub target_shape: Vec<usize>,
    /// Built from another tensor (an lm_head from the tied embedding), not from the
    /// same tensor under another name.
    pub tied: bool,
}

impl TensorOp {
    /// True when the dtype changes.
    pub fn casts(&self) -> bool {
        self.source_dtype != self.target_dtype
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
    let mut outs = Vec::with_capacity(ops.len());
    for op in ops {
        outs.push(OutTensor {
            name: op.target.clone(),
            dtype: op.target_dtype.name().to_string(),
            shape: op.target_shape.clone(),
            nbytes: op.target_nbytes()?,
        });
    }
    let layout = Layout::new(outs, metadata, max_shard_size)?;
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
    for k in 0..layout.shards.len() {
        let result =
            staging.write_shard_with(&layout, k, tiling.band_bytes, &mut produce, progress);
        // A source that changed underneath explains any failure best (a copy that ended
        // early, a cast of zeros): say that, naming the file.
        ckpt.check_intact()?;
        result?;
    }
    written.files = layout.shards.iter().map(|s| s.file_name.clone()).collect();
    if let Some(index) = layout.index_json() {
        staging.write_file(INDEX_FILE, index.as_bytes())?;
    }
    // Every byte was read from the source by now (copies included): the output is
    // committed only if the source did not change meanwhile.
    ckpt.check_intact()?;
    Ok(written)
}

/// The float format of a dtype that can be cast, if it is one.
fn float_format(d: Dtype) -> Option<FloatFormat> {
    FloatFormat::from_name(d.name())
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
    let info = ckpt
        .tensor(&op.source)
        .ok_or_else(|| Error::MissingTensor(op.source.clone()))?;
    if info.shape != op.source_shape || info.dtype != op.source_dtype {
        return Err(Error::ShapeMismatch {
            tensor: op.source.clone(),
            actual: info.shape.clone(),
            expected: op.source_shape.clone(),
            convention: "the plan".into(),
        });
    }
    if info.dtype.bits() % 8 != 0 {
        return Err(Error::UnsupportedDtype {
            tensor: op.source.clone(),
            dtype: info.dtype.name().into(),
        });
    }
    let formats = if op.casts() {
        match (float_format(op.source_dtype), float_format(op.target_dtype)) {
            (Some(f), Some(t)) => Some((f, t)),
            _ => {
                return Err(Error::NotCastable {
                    tensor: op.source.clone(),
                    dtype: op.source_dtype.name().into(),
                    target: op.target_dtype.name().into(),
                })
            }
        }
    } else {
        None
    };
    let shard = &ckpt.shards()[info.shard];
    let file = &files[info.shard];
    let stats = match (op.transpose, formats) {
        (false, None) => {
            sink.copy_from(
                file,
                &shard.path,
                info.range.start as u64,
                info.nbytes() as u64,
            )?;
            CastStats::default()
        }
        (false, Some((from, to))) => {
            let src = ckpt.view(info).bytes;
            let release = |part: &[u8]| ckpt.release_part(info, part);
            let s = cast_stream(src, info, &release, from, to, tiling, sink);
            ckpt.release(info);
            s?
        }
        (true, formats) => {
            let [rows, cols] = info.shape[..] else {
                return Err(Error::ShapeMismatch {
                    tensor: op.source.clone(),
                    actual: info.shape.clone(),
                    expected: op.source_shape.clone(),
                    convention: "a 2-D transpose".into(),
                });
            };
            let src = ckpt.view(info).bytes;
            let release = |part: &[u8]| ckpt.release_part(info, part);
            let s = transpose_banded(
                src, info, &release, rows, cols, formats, tiling, scratch, sink,
            );
            ckpt.release(info);
            s?
        }
    };
    // The bytes just read came from the map: trust them only if the file is intact.
    ckpt.check_tensor(info)?;
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

/// A buffer reused from tensor to tensor (a transposed band before its cast), so that
/// each tensor does not pay for fresh zeroed pages.
#[derive(Debug, Default)]
struct Scratch {
    /// [band, rows] transposed elements in the source dtype.
    t: Vec<u8>,
}

impl Scratch {
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.t.len() < len {
            self.t.resize(len, 0);
        }
        &mut self.t[..len]
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
    if band < cols && cols * es.max(out_es) <= sink.buffer_bytes() {
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
        let target_shape = if t {
            vec![shape[1], shape[0]]
        } else {
            shape.to_vec()
        };
        TensorOp {
            source: src.into(),
            target: dst.into(),
            transpose: t,
            source_dtype: from,
            target_dtype: to,
            source_shape: shape.to_vec(),
            target_shape,
            tied: false,
        }
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
}
