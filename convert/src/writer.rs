//! A streaming, all-or-nothing safetensors writer.
//!
//! Why this shape: a converted model can be larger than RAM, so the header (which must
//! come first in the file) is computed from names, dtypes and shapes alone, and the data
//! is then streamed tensor by tensor (or tile by tile) from a producer callback. Nothing
//! of the output is visible until all of it is complete: every file is written into a
//! hidden staging folder next to the destination (same parent, hence same filesystem),
//! each shard is re-read and checked after writing, and only then is the staging folder
//! renamed onto the destination in one step. Any error, including a full disk, drops the
//! staging folder and leaves nothing behind.
//!
//! Speed: producers fill a small pool of write buffers in place while a writer thread
//! writes the previous ones (`pwrite` at explicit offsets, so a producer may also hand
//! over column blocks of a tensor that land in every row), so computing the output and
//! copying it into the page cache overlap, and every produced byte is copied once.
//!
//! Layout rules: tensor names sorted, data contiguous in that order, the JSON header
//! padded with spaces to a multiple of 8 so data starts 8-byte aligned, `__metadata__`
//! first. Outputs above the shard limit are split into `model-0000k-of-0000n.safetensors`
//! with a `model.safetensors.index.json` (`metadata.total_size`, `weight_map`), as
//! transformers writes them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::destination::{self, Destination, OwnedDir};
use crate::error::{io, Error, Result};

/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;
/// Name of the single-file output and of the index's data files' stem.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Start kernel writeback of dirty pages every this many bytes, so that a final fsync
/// does not find the whole model dirty in the page cache.
const WRITEBACK_WINDOW: u64 = 64 << 20;

/// One tensor of the output, as its header entry will describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    /// Name in the output.
    pub name: String,
    /// safetensors dtype name, e.g. "BF16".
    pub dtype: String,
    /// Shape in the output.
    pub shape: Vec<usize>,
    /// Exact number of data bytes (numel × dtype size).
    pub nbytes: u64,
}

/// One output file: which tensors it holds and its serialized header.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// File name inside the destination folder.
    pub file_name: String,
    /// Indices into [`Layout::tensors`], in data order.
    pub tensors: Vec<usize>,
    /// The 8-byte little-endian header length followed by the padded JSON header.
    pub header: Vec<u8>,
    /// Bytes of tensor data after the header.
    pub data_len: u64,
}

impl ShardPlan {
    /// Total file length in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }
}

/// The complete plan of the output files, computed before any data is written.
#[derive(Debug, Clone)]
pub struct Layout {
    /// All output tensors, sorted by name.
    pub tensors: Vec<OutTensor>,
    /// The files, in order; one file means no index.
    pub shards: Vec<ShardPlan>,
    /// Sum of all tensor data bytes (the index's `metadata.total_size`).
    pub total_size: u64,
}

impl Layout {
    /// Sorts `tensors` by name, splits them into shards of at most `max_shard_size`
    /// data bytes (a single larger tensor gets a shard of its own) and serializes each
    /// shard's header with `metadata` as `__metadata__`.
    pub fn new(
        mut tensors: Vec<OutTensor>,
        metadata: &BTreeMap<String, String>,
        max_shard_size: u64,
    ) -> Result<Layout> {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        for pair in tensors.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(Error::DuplicateTensor(pair[0].name.clone()));
            }
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut current = 0u64;
        let mut total = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            total = total
                .checked_add(t.nbytes)
                .ok_or_else(|| Error::SizeOverflow(t.name.clone()))?;
            match groups.last_mut() {
                Some(g) if current.saturating_add(t.nbytes) <= max_shard_size => {
                    g.push(i);
                    current += t.nbytes;
                }
                _ => {
                    groups.push(vec![i]);
                    current = t.nbytes;
                }
            }
        }
        if groups.is_empty() {
            groups.push(Vec::new());
        }
        let n = groups.len();
        let mut shards = Vec::with_capacity(n);
        for (k, group) in groups.into_iter().enumerate() {
            let file_name = if n == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
            };
            let (header, data_len) = serialize_header(&tensors, &group, metadata)?;
            shards.push(ShardPlan {
                file_name,
                tensors: group,
                header,
                data_len,
            });
        }
        Ok(Layout {
            tensors,
            shards,
            total_size: total,
        })
    }

    /// The `model.safetensors.index.json` text, or `None` for a single-file output.
    pub fn index_json(&self) -> Option<String> {
        if self.shards.len() < 2 {
            return None;
        }
        let mut by_name: BTreeMap<&str, &str> = BTreeMap::new();
        for s in &self.shards {
            for &i in &s.tensors {
                if let Some(t) = self.tensors.get(i) {
                    by_name.insert(&t.name, &s.file_name);
                }
            }
        }
        let weight_map: serde_json::Map<String, serde_json::Value> = by_name
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let index = serde_json::json!({
            "metadata": { "total_size": self.total_size },
            "weight_map": weight_map,
        });
        serde_json::to_string_pretty(&index).ok().map(|s| s + "\n")
    }
}

/// The header bytes (length prefix + JSON padded to a multiple of 8) and data length.
fn serialize_header(
    tensors: &[OutTensor],
    group: &[usize],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, u64)> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        map.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0u64;
    for &i in group {
        let t = &tensors[i];
        let end = offset
            .checked_add(t.nbytes)
            .ok_or_else(|| Error::SizeOverflow(t.name.clone()))?;
        map.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&map).map_err(|e| Error::Validation {
        path: PathBuf::from("<header>"),
        problem: e.to_string(),
    })?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut header = Vec::with_capacity(8 + json.len());
    header.extend_from_slice(&(json.len() as u64).to_le_bytes());
    header.extend_from_slice(&json);
    Ok((header, offset))
}

/// Parses a size such as `500MB` (10^6), `2GiB` (2^30), `1000000` or `1.5GB`.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || Error::InvalidSize(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !(v >= 1.0 && v < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(v as u64)
}

/// A hidden folder next to the destination that receives every output file and becomes
/// the destination with one rename in [`Staging::commit`]. Dropped without a commit,
/// it deletes itself and everything in it; a signal or the next run to the same
/// destination removes it when its process cannot (see [`crate::destination`]).
#[derive(Debug)]
pub struct Staging {
    dst: Destination,
    dir: OwnedDir,
    sync: bool,
}

impl Staging {
    /// Creates the staging folder in `dst`'s parent. With `sync`, every file and the
    /// folder are fsynced before the final rename.
    pub fn create(dst: &Path, sync: bool) -> Result<Staging> {
        let dst = Destination::resolve(dst)?;
        let dir = OwnedDir::create(&dst.parent, &dst.name)?;
        Ok(Staging { dst, dir, sync })
    }

    /// The staging folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes one shard of `layout`: the header, then every tensor's bytes as produced by
    /// `produce(index, sink)`, then (with sync) an fsync, then a re-read check of the
    /// header and length. `progress` is told about every chunk of bytes written.
    /// Buffers are [`DEFAULT_BUFFER_BYTES`] long; see [`Staging::write_shard_with`].
    pub fn write_shard(
        &self,
        layout: &Layout,
        shard: usize,
        produce: &mut dyn FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        self.write_shard_with(layout, shard, DEFAULT_BUFFER_BYTES, produce, progress)
    }

    /// [`Staging::write_shard`] with write buffers of `buffer_bytes` each.
    ///
    /// The bytes are written by a separate thread: the producer fills one of
    /// [`WRITE_BUFFERS`] buffers (transposing or casting straight into it, see
    /// [`TensorSink::fill_with`]) while the writer thread copies the previous ones into
    /// the file, so computation and the kernel's copy into the page cache overlap.
    /// Memory stays bounded by `WRITE_BUFFERS × buffer_bytes`.
    pub fn write_shard_with(
        &self,
        layout: &Layout,
        shard: usize,
        buffer_bytes: usize,
        produce: &mut dyn FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let plan = layout.shards.get(shard).ok_or_else(|| Error::Validation {
            path: self.dir().to_path_buf(),
            problem: format!("no shard number {shard}"),
        })?;
        let path = self.dir().join(&plan.file_name);
        let mut file = File::create(&path).map_err(io("create", &path))?;
        file.write_all(&plan.header).map_err(io("write", &path))?;
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(WRITE_BUFFERS + 1);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let writeback = self.sync;
        let (produced, written) = std::thread::scope(|scope| {
            let path = &path;
            let writer = scope.spawn(move || write_loop(file, path, writeback, job_rx, free_tx));
            let mut pipe = Pipe {
                jobs: job_tx,
                free: free_rx,
                allocated: 0,
                buffer_bytes: buffer_bytes.max(1),
                current: Vec::new(),
                used: 0,
                current_at: 0,
                next: plan.header.len() as u64,
                path: path.clone(),
            };
            let produced = produce_all(layout, plan, &mut pipe, produce, progress);
            // Hand over the last partial buffer, then close the channel so that the
            // writer drains the queue and returns the file.
            let produced = produced.and_then(|()| pipe.submit());
            drop(pipe);
            let written = writer.join().unwrap_or_else(|_| {
                Err(Error::Validation {
                    path: path.clone(),
                    problem: "the writer thread panicked".into(),
                })
            });
            (produced, written)
        });
        // A failed write makes the producer fail too (its channel closes): report the
        // cause, which is the writer's error.
        let file = match (produced, written) {
            (_, Err(e)) => return Err(e),
            (Err(e), Ok(_)) => return Err(e),
            (Ok(()), Ok(file)) => file,
        };
        if self.sync {
            file.sync_all().map_err(io("fsync", &path))?;
        }
        drop(file);
        validate(&path, plan)
    }

    /// Writes a small file (index, config) into the staging folder.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir().join(name);
        let mut f = File::create(&path).map_err(io("create", &path))?;
        f.write_all(bytes).map_err(io("write", &path))?;
        if self.sync {
            f.sync_all().map_err(io("fsync", &path))?;
        }
        Ok(())
    }

    /// Copies `src` into the staging folder under `name`.
    pub fn copy_file(&self, src: &Path, name: &str) -> Result<()> {
        let bytes = std::fs::read(src).map_err(io("read", src))?;
        self.write_file(name, &bytes)
    }

    /// Renames the staging folder onto the destination. With `replace`, an existing
    /// destination that holds only a previous checkpoint is first moved aside and removed
    /// only after the rename succeeded; without it, an existing destination is an error.
    /// Returns the destination as it was given.
    pub fn commit(self, replace: bool) -> Result<PathBuf> {
        if self.sync {
            let d = File::open(self.dir()).map_err(io("open", self.dir()))?;
            d.sync_all().map_err(io("fsync", self.dir()))?;
        }
        destination::commit(self.dir, &self.dst, replace, self.sync)?;
        Ok(self.dst.given)
    }
}

/// Runs `produce` for every tensor of the shard, in data order, and checks that each
/// produced exactly its declared size.
fn produce_all(
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
struct Pipe {
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
    fn submit(&mut self) -> Result<()> {
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

/// Re-reads the header of a written shard and checks that it is exactly the planned one,
/// parses as JSON with contiguous offsets, and that the file has the planned length.
fn validate(path: &Path, plan: &ShardPlan) -> Result<()> {
    let fail = |problem: String| Error::Validation {
        path: path.to_path_buf(),
        problem,
    };
    let mut f = File::open(path).map_err(io("re-open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    if len != plan.file_len() {
        return Err(fail(format!(
            "file is {len} bytes, expected {}",
            plan.file_len()
        )));
    }
    let mut prefix = [0u8; 8];
    f.read_exact(&mut prefix).map_err(io("re-read", path))?;
    let n = u64::from_le_bytes(prefix);
    if n.checked_add(8) != Some(plan.header.len() as u64) {
        return Err(fail(format!(
            "header length {n} differs from the planned one"
        )));
    }
    let mut header = vec![0u8; plan.header.len() - 8];
    f.read_exact(&mut header).map_err(io("re-read", path))?;
    if header != plan.header[8..] {
        return Err(fail("header bytes differ from the planned header".into()));
    }
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| fail(format!("header is not JSON: {e}")))?;
    let mut ranges: Vec<(u64, u64)> = parsed
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| {
            let o = v.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?))
        })
        .collect();
    ranges.sort_unstable();
    let mut at = 0u64;
    for (a, b) in ranges {
        if a != at || b < a {
            return Err(fail(format!(
                "data offsets are not contiguous at byte {at}"
            )));
        }
        at = b;
    }
    if at != plan.data_len {
        return Err(fail(format!(
            "data offsets end at {at}, expected {}",
            plan.data_len
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: &str, shape: &[usize], esize: u64) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            nbytes: shape.iter().product::<usize>() as u64 * esize,
        }
    }

    fn fill(layout: &Layout) -> impl FnMut(usize, &mut TensorSink<'_>) -> Result<()> + '_ {
        move |i, sink| {
            let n = layout.tensors[i].nbytes as usize;
            let bytes: Vec<u8> = (0..n).map(|k| (k as u8).wrapping_add(i as u8)).collect();
            // Write in two pieces to exercise chunked production.
            sink.write(&bytes[..n / 2])?;
            sink.write(&bytes[n / 2..])
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000000").unwrap(), 1_000_000);
        assert_eq!(parse_size("1.5gb").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("64 KiB").unwrap(), 65536);
        for bad in ["", "0", "MB", "12XB", "-5", "99999999999999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn single_file_round_trips_through_the_safetensors_crate() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let tensors = vec![
            t("b.weight", "F32", &[3, 5], 4),
            t("a.bias", "BF16", &[7], 2),
            t("c", "I64", &[2], 8),
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let layout = Layout::new(tensors, &meta, DEFAULT_MAX_SHARD_SIZE).unwrap();
        assert_eq!(layout.shards.len(), 1);
        assert_eq!(layout.index_json(), None);
        assert_eq!(layout.shards[0].header.len() % 8, 0);
        let staging = Staging::create(&dst, true).unwrap();
        let mut written = 0u64;
        staging
            .write_shard(&layout, 0, &mut fill(&layout), &mut |n| written += n)
            .unwrap();
        assert_eq!(written, 3 * 5 * 4 + 7 * 2 + 16);
        staging.commit(false).unwrap();

        let bytes = std::fs::read(dst.join(SINGLE_FILE)).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        assert_eq!(names, ["a.bias", "b.weight", "c"]);
        let b = st.tensor("b.weight").unwrap();
        assert_eq!(b.shape(), &[3, 5]);
        assert_eq!(b.dtype(), safetensors::Dtype::F32);
        // Tensor index 1 (sorted) is b.weight: bytes k + 1.
        let want: Vec<u8> = (0..60u8).map(|k| k.wrapping_add(1)).collect();
        assert_eq!(b.data(), &want[..]);
        // No staging folder left behind.
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn sharding_writes_an_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let tensors = (0..5)
            .map(|k| t(&format!("t{k}"), "F32", &[10], 4))
            .collect();
        let layout = Layout::new(tensors, &BTreeMap::new(), 100).unwrap();
        // 40 bytes each, 100 max: [t0 t1] [t2 t3] [t4]
        assert_eq!(layout.shards.len(), 3);
        assert_eq!(
            layout.shards[2].file_name,
            "model-00003-of-00003.safetensors"
        );
        let staging = Staging::create(&dst, false).unwrap();
        for s in 0..3 {
            staging
                .write_shard(&layout, s, &mut fill(&layout), &mut |_| {})
                .unwrap();
        }
        staging
            .write_file(INDEX_FILE, layout.index_json().unwrap().as_bytes())
            .unwrap();
        staging.commit(false).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dst.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 200);
        assert_eq!(
            index["weight_map"]["t3"],
            "model-00002-of-00003.safetensors"
        );
        for s in &layout.shards {
            let bytes = std::fs::read(dst.join(&s.file_name)).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.len(), s.tensors.len());
        }
    }

    #[test]
    fn a_failing_producer_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let layout = Layout::new(vec![t("x", "F32", &[4], 4)], &BTreeMap::new(), u64::MAX).unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        // Too few bytes.
        let err = staging
            .write_shard(&layout, 0, &mut |_, s| s.write(&[0u8; 8]), &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(err, Error::ProducerShort { written: 8, .. }),
            "{err}"
        );
        // Too many bytes.
        let err = staging
            .write_shard(&layout, 0, &mut |_, s| s.write(&[0u8; 20]), &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, Error::ProducerOverrun { .. }), "{err}");
        drop(staging);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_refuses_or_replaces_an_existing_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(dst.join(SINGLE_FILE), b"old").unwrap();
        std::fs::write(dst.join("config.json"), b"{}").unwrap();
        let layout = Layout::new(vec![], &BTreeMap::new(), u64::MAX).unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        staging
            .write_shard(&layout, 0, &mut |_, _| Ok(()), &mut |_| {})
            .unwrap();
        let err = staging.commit(false).unwrap_err();
        assert!(matches!(err, Error::DestinationExists(_)));
        // The staging folder was dropped with the error: only `out` remains.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

        let staging = Staging::create(&dst, false).unwrap();
        staging
            .write_shard(&layout, 0, &mut |_, _| Ok(()), &mut |_| {})
            .unwrap();
        staging.commit(true).unwrap();
        assert_ne!(std::fs::read(dst.join(SINGLE_FILE)).unwrap(), b"old");
        assert!(!dst.join("config.json").exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

        // Not a previous checkpoint: refused even with replace, and nothing is lost.
        std::fs::write(dst.join("old.txt"), b"mine").unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        staging
            .write_shard(&layout, 0, &mut |_, _| Ok(()), &mut |_| {})
            .unwrap();
        let err = staging.commit(true).unwrap_err();
        assert!(
            matches!(err, Error::DestinationNotReplaceable { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(dst.join("old.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
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

    #[test]
    fn parent_must_be_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Staging::create(&file.join("out"), false).unwrap_err();
        assert!(matches!(err, Error::DestinationUnusable { .. }), "{err}");
        assert!(err.to_string().contains("is not a folder"), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = Layout::new(
            vec![t("x", "F32", &[1], 4), t("x", "F32", &[1], 4)],
            &BTreeMap::new(),
            u64::MAX,
        )
        .unwrap_err();
        assert!(matches!(err, Error::DuplicateTensor(n) if n == "x"));
    }
}
