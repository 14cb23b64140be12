//! The shard writer: a producer fills write buffers in place while a writer thread writes
//! the previous ones.
//!
//! Why a thread: computing the output (transposes, casts) costs about as much as writing it,
//! so the two overlap. Two ways of writing, chosen per shard ([`StreamMode`]):
//! - **sequential** (what a durable conversion uses): every byte of the file, header first,
//!   passes in file order through the write buffers, which the writer thread writes with
//!   `O_DIRECT` where the filesystem allows it. Why: the output is written once and then
//!   fsynced, so a page-cache copy of it buys nothing, while it costs a copy per byte, pages
//!   to allocate (on a VM whose host takes free memory back, ~2 s per GB of first touches)
//!   and a writeback that the final fsync waits for. Direct I/O moves the buffers to the disk
//!   instead, and leaves the page cache to the source. Bytes copied from the source are read
//!   into the buffers (`pread`), so the writer thread also sees every byte in order and can
//!   hash the file as it goes (for `--part`). Offsets and lengths of direct writes are
//!   multiples of [`ALIGN`]: a buffer's unaligned tail is carried into the next buffer, and
//!   the last one is padded with zeros and the file cut to its length.
//! - **random access** (`--no-fsync`): through the page cache, each job at its own offset, so
//!   that a producer may also hand over column blocks of a tensor that land in every row
//!   ([`TensorSink::fill_columns`]) or a range of a source file copied inside the kernel
//!   ([`TensorSink::copy_from`], `copy_file_range`).
//!
//! Either way every produced byte is copied once into a buffer, and memory stays bounded by
//! [`WRITE_BUFFERS`] buffers.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use xxhash_rust::xxh3::Xxh3;

use super::layout::{Layout, ShardPlan};
use crate::buffer::Buffer;
use crate::error::{io, Error, Result};

/// Start kernel writeback of dirty pages every this many bytes, so that a final fsync
/// does not find the whole model dirty in the page cache.
const WRITEBACK_WINDOW: u64 = 64 << 20;
/// Offsets and lengths of direct writes are multiples of this (the logical block size of
/// every common device, and the page size).
pub const ALIGN: usize = 4096;

/// How one shard's bytes reach its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamMode {
    /// Every byte in file order through the write buffers: no column blocks, copies read
    /// into the buffers.
    pub sequential: bool,
    /// Write with `O_DIRECT` (sequential only) where the filesystem allows it.
    pub direct: bool,
    /// Hash the file (XXH3-128) as it is written (sequential only).
    pub hash: bool,
    /// Start kernel writeback every 64 MiB (`WRITEBACK_WINDOW`; a buffered write that
    /// will be fsynced).
    pub writeback: bool,
}

/// A written shard file.
#[derive(Debug)]
pub(crate) struct Streamed {
    pub(crate) file: File,
    /// Its XXH3-128, when asked for.
    pub(crate) hash: Option<u128>,
    /// True when every byte went through direct I/O.
    pub(crate) direct: bool,
}

/// Streams one shard into `file` (empty): `header`, then what `produce` fills into a
/// [`Pipe`] while a writer thread writes what it hands over. Returns the file once every
/// byte is written; a write error is reported in preference to the producer's error it
/// causes (the producer sees its channel close).
pub(crate) fn stream(
    file: File,
    path: &Path,
    header: &[u8],
    buffer_bytes: usize,
    mode: StreamMode,
    produce: impl FnOnce(&mut Pipe) -> Result<()>,
) -> Result<Streamed> {
    let sequential = mode.sequential || mode.direct || mode.hash;
    let direct = sequential && mode.direct && set_direct(&file, true);
    let align = if direct { ALIGN } else { 1 };
    let buffer_bytes = if sequential {
        buffer_bytes.max(1).next_multiple_of(ALIGN)
    } else {
        buffer_bytes.max(1)
    };
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(WRITE_BUFFERS + 1);
    let (free_tx, free_rx) = mpsc::channel::<Buffer>();
    let writer_mode = WriterMode {
        direct,
        hash: sequential && mode.hash,
        writeback: !direct && mode.writeback,
    };
    let (produced, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_loop(file, path, writer_mode, job_rx, free_tx));
        let mut pipe = Pipe {
            jobs: job_tx,
            free: free_rx,
            allocated: 0,
            buffer_bytes,
            // Room for a carried unaligned tail besides a full request, and a whole
            // number of aligned blocks (the last write is padded to one).
            capacity: buffer_bytes + align,
            align,
            sequential,
            current: Buffer::default(),
            spare: None,
            used: 0,
            current_at: 0,
            next: 0,
            path: path.to_path_buf(),
        };
        let produced = pipe
            .append(header)
            .and_then(|()| produce(&mut pipe))
            // Hand over the last partial buffer, then close the channel so that the
            // writer drains the queue and returns the file.
            .and_then(|()| pipe.finish());
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
        (Ok(()), Ok(done)) => Ok(done),
    }
}

/// Turns `O_DIRECT` on or off for `file`; false when the filesystem refuses it (tmpfs,
/// some network filesystems) or the platform has no such flag.
fn set_direct(file: &File, on: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor owned by the live `file`; no memory of
        // ours is passed.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                return false;
            }
            let flags = if on {
                flags | libc::O_DIRECT
            } else {
                flags & !libc::O_DIRECT
            };
            libc::fcntl(fd, libc::F_SETFL, flags) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, on);
        false
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
    /// Write the first `used` bytes of `buf` at `at`, then hand the buffer back. The first
    /// `len ≤ used` of them are file content; the rest is the zero padding of a final
    /// direct write, cut off again when the file is complete.
    Data {
        buf: Buffer,
        used: usize,
        len: usize,
        at: u64,
    },
    /// Write `count` runs of `width` bytes (`buf` holds them back to back) at `at`,
    /// `at + stride`, `at + 2·stride`, …: one column block of a tensor seen as `count`
    /// rows of `stride` bytes. `pooled` buffers are handed back.
    Scatter {
        buf: Buffer,
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
    free: mpsc::Receiver<Buffer>,
    /// Buffers allocated so far (never more than `WRITE_BUFFERS`).
    allocated: usize,
    /// The largest request a producer may make ([`TensorSink::buffer_bytes`]).
    buffer_bytes: usize,
    /// Length of each buffer: `buffer_bytes` plus room for a carried tail.
    capacity: usize,
    /// Offsets and lengths of the writes are multiples of this (1: anything goes).
    align: usize,
    /// Every byte in file order (see [`StreamMode::sequential`]).
    sequential: bool,
    /// The buffer being filled (empty when none is held), `capacity` long.
    current: Buffer,
    /// A pool buffer handed back unused, served before the others.
    spare: Option<Buffer>,
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
    /// A full buffer is handed over up to its last aligned byte; the rest (less than
    /// [`Pipe::align`] bytes) moves to the start of the next one.
    fn room(&mut self, len: usize) -> Result<()> {
        if self.current.is_empty() {
            // None held (at the start, or after a job at another offset).
            self.current = self.take()?;
            self.used = 0;
            self.current_at = self.next;
            return Ok(());
        }
        if self.capacity - self.used >= len {
            return Ok(());
        }
        let keep = self.used % self.align;
        let mut next = self.take()?;
        next[..keep].copy_from_slice(&self.current[self.used - keep..self.used]);
        let old = std::mem::replace(&mut self.current, next);
        let done = self.used - keep;
        if done > 0 {
            self.jobs
                .send(Job::Data {
                    buf: old,
                    used: done,
                    len: done,
                    at: self.current_at,
                })
                .map_err(|_| self.gone())?;
        } else if !old.is_empty() {
            // Nothing to write from it: back to the pool.
            self.recycle(old);
        }
        self.current_at += done as u64;
        self.used = keep;
        Ok(())
    }

    /// Puts an unused pool buffer back (the pool's channel is the writer's to send on).
    fn recycle(&mut self, buf: Buffer) {
        self.spare = Some(buf);
    }

    /// A free pool buffer (`capacity` long): a returned one, a new one while fewer
    /// than [`WRITE_BUFFERS`] exist, else the next one the writer hands back.
    fn take(&mut self) -> Result<Buffer> {
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        match self.free.try_recv() {
            Ok(b) => Ok(b),
            Err(_) if self.allocated < WRITE_BUFFERS => {
                self.allocated += 1;
                Ok(Buffer::zeroed(self.capacity)) // [capacity] output bytes
            }
            Err(_) => self.free.recv().map_err(|_| self.gone()),
        }
    }

    /// Appends `bytes` at the next sequential offset (through the buffers).
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            self.room(1)?;
            let n = rest.len().min(self.capacity - self.used);
            self.current[self.used..self.used + n].copy_from_slice(&rest[..n]);
            self.used += n;
            self.next += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Queues the filled part of the current buffer for writing (random-access mode:
    /// before a job at another offset).
    pub(crate) fn submit(&mut self) -> Result<()> {
        if self.current.is_empty() || self.used == 0 {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.current);
        let used = std::mem::take(&mut self.used);
        let at = self.current_at;
        self.jobs
            .send(Job::Data {
                buf,
                used,
                len: used,
                at,
            })
            .map_err(|_| self.gone())
    }

    /// Hands over the last bytes: with direct I/O padded with zeros to a whole aligned
    /// block (the writer cuts the file back to its length).
    fn finish(&mut self) -> Result<()> {
        if self.current.is_empty() || self.used == 0 {
            return Ok(());
        }
        let len = self.used;
        let used = len.next_multiple_of(self.align);
        self.current[len..used].fill(0);
        let buf = std::mem::take(&mut self.current);
        self.used = 0;
        let at = self.current_at;
        self.jobs
            .send(Job::Data { buf, used, len, at })
            .map_err(|_| self.gone())
    }
}

/// What the writer thread does besides writing.
#[derive(Debug, Clone, Copy)]
struct WriterMode {
    /// The file is open with `O_DIRECT`.
    direct: bool,
    /// Hash the bytes (they arrive in file order).
    hash: bool,
    /// Start kernel writeback every [`WRITEBACK_WINDOW`] bytes.
    writeback: bool,
}

/// The writer thread: writes buffers and copies ranges in queue order, each at its
/// offset, returns each pool buffer to the producer, and (with `writeback`) starts
/// kernel writeback every [`WRITEBACK_WINDOW`] bytes. Returns the file once the queue
/// is closed.
fn write_loop(
    file: File,
    path: &Path,
    mode: WriterMode,
    jobs: mpsc::Receiver<Job>,
    free: mpsc::Sender<Buffer>,
) -> Result<Streamed> {
    use std::os::unix::fs::FileExt;
    let mut direct = mode.direct;
    let mut hasher = mode.hash.then(Xxh3::new);
    let mut hashed = 0u64; // file bytes hashed so far, in order
    let mut synced_to = 0u64;
    let mut high = 0u64; // end of the furthest content byte written
    let mut padded = false; // a padded final block was written past `high`
    for job in jobs {
        match job {
            Job::Data { buf, used, len, at } => {
                if let Some(h) = hasher.as_mut() {
                    if at != hashed {
                        return Err(Error::Validation {
                            path: path.to_path_buf(),
                            problem: format!(
                                "bytes at offset {at} reached the hash out of order (at {hashed})"
                            ),
                        });
                    }
                    h.update(&buf[..len]);
                    hashed += len as u64;
                }
                match file.write_all_at(&buf[..used], at) {
                    Ok(()) => {}
                    // A filesystem that accepted O_DIRECT at open but not these writes
                    // (a block size above ALIGN, buffer memory not aligned to it, a FUSE
                    // or network filesystem that refuses it late): go on through the page
                    // cache. A direct write that fails this way has written nothing, and
                    // the buffered one rewrites the whole job at its offset anyway.
                    Err(e)
                        if direct
                            && matches!(
                                e.raw_os_error(),
                                Some(libc::EINVAL | libc::EOPNOTSUPP)
                            ) =>
                    {
                        direct = false;
                        set_direct(&file, false);
                        file.write_all_at(&buf[..used], at)
                            .map_err(io("write", path))?;
                    }
                    Err(e) => return Err(io("write", path)(e)),
                }
                high = high.max(at + len as u64);
                padded |= used > len;
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
        if mode.writeback && high.saturating_sub(synced_to) >= WRITEBACK_WINDOW {
            start_writeback(&file, synced_to, high);
            synced_to = high;
        }
    }
    if padded {
        file.set_len(high).map_err(io("set the length of", path))?;
    }
    Ok(Streamed {
        file,
        hash: hasher.map(|h| h.digest128()),
        direct,
    })
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

    /// True when the bytes must come in file order ([`StreamMode::sequential`]): then
    /// [`TensorSink::fill_columns`] is refused, and [`TensorSink::copy_from`] reads.
    pub fn sequential(&self) -> bool {
        self.pipe.sequential
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
            self.pipe.room(1)?;
            let pipe = &mut *self.pipe;
            let n = rest.len().min(pipe.capacity - pipe.used);
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
            let mut tmp = Buffer::zeroed(len); // [len] output bytes
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
        if self.pipe.sequential {
            return Err(self.columns_error("column blocks need a random-access writer"));
        }
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
            Buffer::zeroed(len) // [rows, width] output bytes, larger than a pool buffer
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
        if self.pipe.sequential {
            // Read into the buffers, in order (see the module docs).
            use std::os::unix::fs::FileExt;
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(self.pipe.buffer_bytes as u64) as usize;
                let at = offset + done;
                self.fill_with(n, |out| {
                    src.read_exact_at(out, at).map_err(io("read", src_path))
                })?;
                done += n as u64;
            }
            return Ok(());
        }
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

    /// Durable shards by direct I/O: buffers of huge pages (memory aligned, so real
    /// `O_DIRECT` writes on a disk filesystem), an unaligned tail carried from buffer to
    /// buffer and a padded last block cut back; small heap buffers (memory not aligned:
    /// the kernel refuses the direct write and the writer goes on through the page
    /// cache); and tmpfs. Every file has exactly the planned bytes and length, and its
    /// hash is the file's.
    #[test]
    fn direct_writes_are_exact_on_every_filesystem_and_buffer() {
        let tmp = tempfile::tempdir().unwrap();
        let mut places = vec![tmp.path().to_path_buf()];
        let shm = Path::new("/dev/shm");
        let shm_tmp = shm
            .is_dir()
            .then(|| tempfile::tempdir_in(shm).ok())
            .flatten();
        if let Some(d) = &shm_tmp {
            places.push(d.path().to_path_buf());
        }
        // [3 MiB + 4097] and [1001] bytes: neither the header, the tensors nor the file
        // end on a block boundary.
        let a: Vec<u8> = (0..(3 << 20) + 4097u32).map(|k| (k % 253) as u8).collect();
        let b: Vec<u8> = (0..1001u32).map(|k| (k * 7 % 256) as u8).collect();
        let layout = Layout::new(
            vec![t("a", "U8", &[a.len()], 1), t("b", "U8", &[b.len()], 1)],
            &BTreeMap::new(),
            u64::MAX,
        )
        .unwrap();
        for place in &places {
            // 1 MiB buffers are huge-page maps; 5000-byte ones are heap vectors.
            for buffer_bytes in [1 << 20, 5000] {
                let dst = place.join(format!("out-{buffer_bytes}"));
                let staging = Staging::create(&dst, true).unwrap().hashing();
                let mut produce = |i: usize, sink: &mut TensorSink<'_>| {
                    if i == 0 {
                        // Odd pieces, some through the buffers, some filled in place.
                        for piece in a.chunks(777_777) {
                            let (x, y) = piece.split_at(piece.len() / 3);
                            sink.write(x)?;
                            sink.fill_with(y.len(), |out| {
                                out.copy_from_slice(y);
                                Ok(())
                            })?;
                        }
                        Ok(())
                    } else {
                        sink.write(&b)
                    }
                };
                staging
                    .write_shard_with(&layout, 0, buffer_bytes, &mut produce, &mut |_| {})
                    .unwrap();
                let d = staging.written()[SINGLE_FILE];
                staging.commit(false).unwrap();
                let bytes = std::fs::read(dst.join(SINGLE_FILE)).unwrap();
                let plan = &layout.shards[0];
                assert_eq!(bytes.len() as u64, plan.file_len(), "{}", dst.display());
                assert_eq!(d.len, plan.file_len());
                assert_eq!(d.hash, Some(xxhash_rust::xxh3::xxh3_128(&bytes)));
                assert_eq!(&bytes[..plan.header.len()], &plan.header[..]);
                let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                assert_eq!(st.tensor("a").unwrap().data(), &a[..], "{}", dst.display());
                assert_eq!(st.tensor("b").unwrap().data(), &b[..], "{}", dst.display());
            }
        }
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
