//! The shard writer: a producer fills write buffers in place while a writer thread writes
//! the previous ones.
//!
//! Why a thread: computing the output (transposes, casts) costs about as much as the kernel's
//! copy of it into the page cache, so the two overlap. Every job names its absolute file offset
//! (`pwrite`), so a producer may also hand over column blocks of a tensor that land in every
//! row ([`TensorSink::fill_columns`]) or a range of a source file copied inside the kernel
//! ([`TensorSink::copy_from`]); every produced byte is copied once, and memory stays bounded by
//! [`WRITE_BUFFERS`] buffers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::layout::{Layout, ShardPlan};
use crate::error::{io, Error, Result};

/// Start kernel writeback of dirty pages every this many bytes, so that a final fsync
/// does not find the whole model dirty in the page cache.
const WRITEBACK_WINDOW: u64 = 64 << 20;

/// Streams the data of one shard into `file` (whose first `start` bytes, the header, are
/// already written): `produce` fills a [`Pipe`] while a writer thread writes what it hands
/// over, each job at its offset, with (when `writeback`) kernel writeback started on the way.
/// Returns the file once every byte is written; a write error is reported in preference to
/// the producer's error it causes (the producer sees its channel close).
pub(crate) fn stream(
    file: File,
    path: &Path,
    start: u64,
    buffer_bytes: usize,
    writeback: bool,
    produce: impl FnOnce(&mut Pipe) -> Result<()>,
) -> Result<File> {
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(WRITE_BUFFERS + 1);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    let (produced, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_loop(file, path, writeback, job_rx, free_tx));
        let mut pipe = Pipe {
            jobs: job_tx,
            free: free_rx,
            allocated: 0,
            buffer_bytes: buffer_bytes.max(1),
            current: Vec::new(),
            used: 0,
            current_at: 0,
            next: start,
            path: path.to_path_buf(),
        };
        let produced = produce(&mut pipe);
        // Hand over the last partial buffer, then close the channel so that the
        // writer drains the queue and returns the file.
        let produced = produced.and_then(|()| pipe.submit());
        drop(pipe);
        let written = writer.join().unwrap_or_else(|_| {
            Err(Error::Validation {
                path: path.to_path_buf(),
                problem: "the writer thread panicked".into(),
            })
        });
        (produced, written)
    });
    // A failed write makes the producer fail too (its channel closes): report the
    // cause, which is the writer's error.
    match (produced, written) {
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(file)) => Ok(file),
    }
}

/// Runs `produce` for every tensor of the shard, in data order, and checks that each
/// produced exactly its declared size.
pub(crate) fn produce_all(
    layout: &Layout,
    plan: &ShardPlan,
    pipe: &mut Pipe,
    produce: &mut dyn FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    for &i in &plan.tensors {
        let t = &layout.tensors[i];
        let mut sink = TensorSink {
            pipe: &mut *pipe,
            tensor: &t.name,
            total: t.nbytes,
            remaining: t.nbytes,
            columns: None,
            progress: &mut *progress,
        };
        produce(i, &mut sink)?;
        if sink.remaining != 0 {
            return Err(Error::ProducerShort {
                tensor: t.name.clone(),
                expected: t.nbytes,
                written: t.nbytes - sink.remaining,
            });
        }
    }
    Ok(())
}

/// Default length of each write buffer (and so of a transposed band).
pub const DEFAULT_BUFFER_BYTES: usize = 32 << 20;
/// Write buffers in circulation between a producer and the writer thread: one being
/// filled, one being written, one queued, so neither side waits for the other when
/// their speeds are close.
pub const WRITE_BUFFERS: usize = 3;

/// Work for the writer thread. Every job names the absolute file offset it writes at.
enum Job {
    /// Write the first `used` bytes of `buf` at `at`, then hand the buffer back.
    Data { buf: Vec<u8>, used: usize, at: u64 },
    /// Write `count` runs of `width` bytes (`buf` holds them back to back) at `at`,
    /// `at + stride`, `at + 2·stride`, …: one column block of a tensor seen as `count`
    /// rows of `stride` bytes. `pooled` buffers are handed back.
    Scatter {
        buf: Vec<u8>,
        width: usize,
        count: usize,
        stride: u64,
        at: u64,
        pooled: bool,
    },
    /// Copy `len` bytes of `src` from byte `offset` to `at` (a duplicated descriptor,
    /// so the job owns it).
    Copy {
        src: File,
        src_path: PathBuf,
        offset: u64,
        len: u64,
        at: u64,
    },
}

/// The producer's end of the writer thread: a pool of at most [`WRITE_BUFFERS`]
/// buffers, the one being filled, and the job queue.
pub(crate) struct Pipe {
    jobs: mpsc::SyncSender<Job>,
    /// Buffers the writer has finished with.
    free: mpsc::Receiver<Vec<u8>>,
    /// Buffers allocated so far (never more than `WRITE_BUFFERS`).
    allocated: usize,
    buffer_bytes: usize,
    /// The buffer being filled (empty Vec when none is held), `buffer_bytes` long.
    current: Vec<u8>,
    /// Bytes of `current` already filled.
    used: usize,
    /// File offset of `current[0]`.
    current_at: u64,
    /// File offset of the next sequential byte.
    next: u64,
    path: PathBuf,
}

impl Pipe {
    /// The error a producer sees when the writer thread has stopped; the writer's own
    /// error, which is the real cause, is the one reported.
    fn gone(&self) -> Error {
        io("write", &self.path)(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the writer thread stopped",
        ))
    }

    /// Makes sure a buffer with at least `len` free bytes is held (`len ≤ buffer_bytes`).
    fn room(&mut self, len: usize) -> Result<()> {
        if !self.current.is_empty() && self.buffer_bytes - self.used >= len {
            return Ok(());
        }
        self.submit()?;
        self.current = self.take()?;
        self.used = 0;
        self.current_at = self.next;
        Ok(())
    }

    /// A free pool buffer (`buffer_bytes` long): a returned one, a new one while fewer
    /// than [`WRITE_BUFFERS`] exist, else the next one the writer hands back.
    fn take(&mut self) -> Result<Vec<u8>> {
        match self.free.try_recv() {
            Ok(b) => Ok(b),
            Err(_) if self.allocated < WRITE_BUFFERS => {
                self.allocated += 1;
                Ok(vec![0u8; self.buffer_bytes]) // [buffer_bytes] output bytes
            }
            Err(_) => self.free.recv().map_err(|_| self.gone()),
        }
    }

    /// Queues the filled part of the current buffer for writing.
    pub(crate) fn submit(&mut self) -> Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.current);
        let used = std::mem::take(&mut self.used);
        if used == 0 {
            // Nothing to write: keep the buffer.
            self.current = buf;
            return Ok(());
        }
        let at = self.current_at;
        self.jobs
            .send(Job::Data { buf, used, at })
            .map_err(|_| self.gone())
    }
}

/// The writer thread: writes buffers and copies ranges in queue order, each at its
/// offset, returns each pool buffer to the producer, and (with `writeback`) starts
/// kernel writeback every [`WRITEBACK_WINDOW`] bytes. Returns the file once the queue
/// is closed.
fn write_loop(
    file: File,
    path: &Path,
    writeback: bool,
    jobs: mpsc::Receiver<Job>,
    free: mpsc::Sender<Vec<u8>>,
) -> Result<File> {
    use std::os::unix::fs::FileExt;
    let mut synced_to = 0u64;
    let mut high = 0u64; // end of the furthest byte written
    for job in jobs {
        match job {
            Job::Data { buf, used, at } => {
                file.write_all_at(&buf[..used], at)
                    .map_err(io("write", path))?;
                high = high.max(at + used as u64);
                // The producer may already be gone (it failed); the buffer is then freed.
                let _ = free.send(buf);
            }
            Job::Scatter {
                buf,
                width,
                count,
                stride,
                at,
                pooled,
            } => {
                // `buf` holds at least `count` runs (the sink sized it); a zero width
                // writes nothing.
                let runs = buf.get(..width.saturating_mul(count)).unwrap_or_default();
                for (k, run) in runs.chunks(width.max(1)).enumerate() {
                    let to = at + k as u64 * stride;
                    file.write_all_at(run, to).map_err(io("write", path))?;
                    high = high.max(to + width as u64);
                }
                if pooled {
                    let _ = free.send(buf);
                }
            }
            Job::Copy {
                src,
                src_path,
                offset,
                len,
                at,
            } => {
                copy_range(&src, &src_path, offset, len, &file, path, at)?;
                high = high.max(at + len);
            }
        }
        if writeback && high.saturating_sub(synced_to) >= WRITEBACK_WINDOW {
            start_writeback(&file, synced_to, high);
            synced_to = high;
        }
    }
    Ok(file)
}

/// Copies `len` bytes of `src` from byte `offset` to byte `at` of `dst`: with
/// `copy_file_range` inside the kernel where the filesystem allows it, else through a
/// bounded buffer.
fn copy_range(
    src: &File,
    src_path: &Path,
    offset: u64,
    len: u64,
    dst: &File,
    dst_path: &Path,
    at: u64,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut copied = 0u64;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        while copied < len {
            let mut off_in = (offset + copied) as libc::loff_t;
            let mut off_out = (at + copied) as libc::loff_t;
            let want = (len - copied).min(1 << 30) as usize;
            // SAFETY: both descriptors are open files owned by live `File`s; `off_in` and
            // `off_out` are valid pointers to locals (explicit offsets: the file
            // positions are neither used nor moved). The call reads no memory of ours.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    want,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // Not supported here (cross-device, old kernel, special file): fall
                    // back to the buffered copy below.
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => break,
                    _ => return Err(io("write", dst_path)(e)),
                }
            }
            if n == 0 {
                return Err(io("read", src_path)(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            copied += n as u64;
        }
    }
    if copied < len {
        let mut buf = vec![0u8; (len - copied).min(8 << 20) as usize]; // copy buffer, ≤ 8 MiB
        while copied < len {
            let n = (len - copied).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], offset + copied)
                .map_err(io("read", src_path))?;
            dst.write_all_at(&buf[..n], at + copied)
                .map_err(io("write", dst_path))?;
            copied += n as u64;
        }
    }
    Ok(())
}

/// Asks the kernel to start writing back bytes `from..to` of `file` without waiting,
/// so that dirty pages do not pile up before the final fsync. Linux only; elsewhere a
/// no-op. Only an optimisation: a real write error surfaces from write or fsync.
fn start_writeback(file: &File, from: u64, to: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to the live `file`; the call only schedules
        // writeback of a byte range and touches no memory of ours.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                (to - from) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from, to);
}

/// Where a producer writes one tensor's bytes, in order. It refuses to write past the
/// tensor's declared size. The bytes go through buffers to the shard's writer thread.
#[allow(missing_debug_implementations)]
pub struct TensorSink<'a> {
    pipe: &'a mut Pipe,
    tensor: &'a str,
    /// The tensor's declared size.
    total: u64,
    remaining: u64,
    /// Set while the tensor is being written by column blocks.
    columns: Option<Columns>,
    progress: &'a mut dyn FnMut(u64),
}

/// A tensor being written by column blocks ([`TensorSink::fill_columns`]).
#[derive(Debug, Clone, Copy)]
struct Columns {
    rows: usize,
    row_bytes: usize,
    /// Bytes of every row written so far.
    done: usize,
    /// File offset of the tensor's first byte.
    start: u64,
}

impl TensorSink<'_> {
    /// The tensor being written.
    pub fn tensor(&self) -> &str {
        self.tensor
    }

    /// Bytes still expected for this tensor.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The largest `len` that [`TensorSink::fill_with`] serves from a write buffer
    /// without a temporary allocation: producers size their bands by it.
    pub fn buffer_bytes(&self) -> usize {
        self.pipe.buffer_bytes
    }

    /// Refuses `n` more bytes than the tensor has left, and sequential bytes in the
    /// middle of column blocks.
    fn check(&self, n: u64) -> Result<()> {
        if self.columns.is_some() {
            return Err(self.columns_error("sequential bytes in the middle of column blocks"));
        }
        if n > self.remaining {
            return Err(Error::ProducerOverrun {
                tensor: self.tensor.to_string(),
                expected: self.remaining,
            });
        }
        Ok(())
    }

    fn columns_error(&self, problem: &str) -> Error {
        Error::ProducerColumns {
            tensor: self.tensor.to_string(),
            problem: problem.to_string(),
        }
    }

    /// Books `n` bytes handed to the writer.
    fn account(&mut self, n: u64) {
        self.remaining -= n;
        (self.progress)(n);
    }

    /// Appends `bytes` to the tensor's data (copied into a write buffer).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.check(bytes.len() as u64)?;
        let mut rest = bytes;
        while !rest.is_empty() {
            let want = rest.len().min(self.pipe.buffer_bytes);
            self.pipe.room(1)?;
            let pipe = &mut *self.pipe;
            let n = want.min(pipe.buffer_bytes - pipe.used);
            pipe.current[pipe.used..pipe.used + n].copy_from_slice(&rest[..n]);
            pipe.used += n;
            pipe.next += n as u64;
            rest = &rest[n..];
            self.account(n as u64);
        }
        Ok(())
    }

    /// Appends the next `len` bytes of the tensor by letting `fill` write them in place
    /// into a write buffer (no intermediate copy). `fill` receives exactly `len` bytes
    /// of unspecified content and must overwrite all of them. A `len` above
    /// [`TensorSink::buffer_bytes`] goes through a temporary buffer instead.
    pub fn fill_with<T>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<T>,
    ) -> Result<T> {
        self.check(len as u64)?;
        if len > self.pipe.buffer_bytes {
            let mut tmp = vec![0u8; len]; // [len] output bytes
            let r = fill(&mut tmp)?;
            self.write(&tmp)?;
            return Ok(r);
        }
        self.pipe.room(len)?;
        let pipe = &mut *self.pipe;
        let r = fill(&mut pipe.current[pipe.used..pipe.used + len])?;
        pipe.used += len;
        pipe.next += len as u64;
        self.account(len as u64);
        Ok(r)
    }

    /// Writes the tensor, seen as `rows` rows of `row_bytes` bytes, one column block at
    /// a time: `fill` receives a `[rows, width]` buffer (row-major, unspecified content
    /// to overwrite) that becomes bytes `done..done + width` of every row, where `done`
    /// is the width written by the previous calls. The whole tensor must be written
    /// this way, with the same `rows` and `row_bytes`, until `done == row_bytes`.
    ///
    /// Why: a transpose whose output rows are long (a Flax `lm_head`, `[H, V]`) is a
    /// sequence of column blocks, one per chunk of source rows, so the source is read
    /// once, in order, instead of once per band of output rows. The writer puts each
    /// row's piece at its offset.
    pub fn fill_columns<T>(
        &mut self,
        rows: usize,
        row_bytes: usize,
        width: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<T>,
    ) -> Result<T> {
        let total = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| Error::SizeOverflow(self.tensor.to_string()))?;
        let mut c = match self.columns {
            Some(c) if c.rows == rows && c.row_bytes == row_bytes => c,
            Some(_) => return Err(self.columns_error("the row count or length changed")),
            None if self.remaining == self.total && total as u64 == self.total => {
                self.pipe.submit()?;
                Columns {
                    rows,
                    row_bytes,
                    done: 0,
                    start: self.pipe.next,
                }
            }
            None => {
                return Err(self.columns_error(
                    "rows × row length is not the tensor's size, or bytes were already written",
                ))
            }
        };
        if width > row_bytes - c.done {
            return Err(self.columns_error("a block reaches past the end of the rows"));
        }
        let len = rows
            .checked_mul(width)
            .ok_or_else(|| Error::SizeOverflow(self.tensor.to_string()))?;
        let pooled = len <= self.pipe.buffer_bytes;
        let mut buf = if pooled {
            self.pipe.take()?
        } else {
            vec![0u8; len] // [rows, width] output bytes, larger than a pool buffer
        };
        let r = fill(&mut buf[..len])?;
        let at = c.start + c.done as u64;
        self.pipe
            .jobs
            .send(Job::Scatter {
                buf,
                width,
                count: rows,
                stride: row_bytes as u64,
                at,
                pooled,
            })
            .map_err(|_| self.pipe.gone())?;
        c.done += width;
        self.columns = if c.done == row_bytes {
            self.pipe.next = c.start + total as u64;
            None
        } else {
            Some(c)
        };
        self.account(len as u64);
        Ok(r)
    }

    /// Appends `len` bytes of `src` starting at byte `offset`, copied inside the kernel
    /// (`copy_file_range`) where the filesystem allows it, else through a bounded buffer.
    /// No tensor data passes through this process's memory on the fast path.
    pub fn copy_from(&mut self, src: &File, src_path: &Path, offset: u64, len: u64) -> Result<()> {
        self.check(len)?;
        let src = src
            .try_clone()
            .map_err(io("duplicate the descriptor of", src_path))?;
        self.pipe.submit()?;
        let at = self.pipe.next;
        self.pipe
            .jobs
            .send(Job::Copy {
                src,
                src_path: src_path.to_path_buf(),
                offset,
                len,
                at,
            })
            .map_err(|_| self.pipe.gone())?;
        self.pipe.next += len;
        self.account(len);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::writer::{OutTensor, Staging, SINGLE_FILE};

    fn t(name: &str, dtype: &str, shape: &[usize], esize: u64) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            nbytes: shape.iter().product::<usize>() as u64 * esize,
        }
    }

    #[test]
    fn copy_from_copies_a_file_range() {
        let tmp = tempfile::tempdir().unwrap();
        let src_path = tmp.path().join("src.bin");
        let data: Vec<u8> = (0..100_000u32).map(|k| (k % 251) as u8).collect();
        std::fs::write(&src_path, &data).unwrap();
        let src = File::open(&src_path).unwrap();
        let dst = tmp.path().join("out");
        let layout = Layout::new(
            vec![t("a", "U8", &[10], 1), t("b", "U8", &[50_000], 1)],
            &BTreeMap::new(),
            u64::MAX,
        )
        .unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        let mut produce = |i: usize, sink: &mut TensorSink<'_>| {
            if i == 0 {
                sink.write(&[7u8; 10])
            } else {
                sink.copy_from(&src, &src_path, 1234, 50_000)
            }
        };
        staging
            .write_shard(&layout, 0, &mut produce, &mut |_| {})
            .unwrap();
        staging.commit(false).unwrap();
        let bytes = std::fs::read(dst.join(SINGLE_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &[7u8; 10]);
        assert_eq!(st.tensor("b").unwrap().data(), &data[1234..51_234]);
    }

    #[test]
    fn column_blocks_land_in_every_row() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        // [3, 4] U8 between two sequential tensors, written as a 1-wide and a 3-wide
        // column block with 5-byte buffers (the 3-wide block, 9 bytes, is larger).
        let layout = Layout::new(
            vec![
                t("a", "U8", &[2], 1),
                t("b", "U8", &[3, 4], 1),
                t("c", "U8", &[3], 1),
            ],
            &BTreeMap::new(),
            u64::MAX,
        )
        .unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        let mut produce = |i: usize, sink: &mut TensorSink<'_>| match i {
            0 => sink.write(&[1, 2]),
            1 => {
                sink.fill_columns(3, 4, 1, |out| {
                    out.copy_from_slice(&[10, 20, 30]);
                    Ok(())
                })?;
                // Sequential bytes in the middle of column blocks are refused.
                let err = sink.write(&[0]).unwrap_err();
                assert!(matches!(err, Error::ProducerColumns { .. }), "{err}");
                sink.fill_columns(3, 4, 3, |out| {
                    out.copy_from_slice(&[11, 12, 13, 21, 22, 23, 31, 32, 33]);
                    Ok(())
                })
            }
            _ => sink.write(&[7, 8, 9]),
        };
        staging
            .write_shard_with(&layout, 0, 5, &mut produce, &mut |_| {})
            .unwrap();
        staging.commit(false).unwrap();
        let bytes = std::fs::read(dst.join(SINGLE_FILE)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("a").unwrap().data(), &[1, 2]);
        assert_eq!(
            st.tensor("b").unwrap().data(),
            &[10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33]
        );
        assert_eq!(st.tensor("c").unwrap().data(), &[7, 8, 9]);
    }

    #[test]
    fn column_blocks_must_tile_the_tensor() {
        let tmp = tempfile::tempdir().unwrap();
        let layout =
            Layout::new(vec![t("b", "U8", &[3, 4], 1)], &BTreeMap::new(), u64::MAX).unwrap();
        let staging = Staging::create(&tmp.path().join("out"), false).unwrap();
        // Rows × row length must be the tensor's size.
        let err = staging
            .write_shard(
                &layout,
                0,
                &mut |_, s| s.fill_columns(2, 4, 4, |_| Ok(())),
                &mut |_| {},
            )
            .unwrap_err();
        assert!(matches!(err, Error::ProducerColumns { .. }), "{err}");
        // A block may not reach past the end of the rows.
        let err = staging
            .write_shard(
                &layout,
                0,
                &mut |_, s| s.fill_columns(3, 4, 5, |_| Ok(())),
                &mut |_| {},
            )
            .unwrap_err();
        assert!(matches!(err, Error::ProducerColumns { .. }), "{err}");
        // Stopping early leaves the tensor short.
        let err = staging
            .write_shard(
                &layout,
                0,
                &mut |_, s| s.fill_columns(3, 4, 2, |_| Ok(())),
                &mut |_| {},
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::ProducerShort { written: 6, .. }),
            "{err}"
        );
    }
}
