//! Opening a checkpoint: one file, a sharded set, or a model folder.
//!
//! A [`Checkpoint`] owns the memory map of every shard and lends out views; nothing
//! else maps files. Opening reads headers only: tensor data pages are touched only
//! when a caller asks for a [`TensorView`]'s bytes.
//!
//! Files are found the way transformers finds them, and the Hugging Face cache (a
//! folder of symbolic links into `../../blobs/`) is read like any folder: the safety
//! rule is about the *names* an index lists (plain file names, never a path), not about
//! where links lead. Only regular files are opened, so a FIFO cannot hang a command.
//! The data stays in the files while it is read: see [`Checkpoint::open`] for that
//! contract and [`Checkpoint::check_intact`] for how a change is caught.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::config::{parse_config, ConfigOutcome, ModelConfig};
use crate::dtype::Dtype;
use crate::error::{Error, FileChange};
use crate::file;
use crate::header::{self, HeaderError};
use crate::mmap::GuardedMap;
use crate::view::TensorView;

mod foreign;
pub use foreign::{Format, Quantized, Undecodable};

/// File name of a sharded set's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of an unsharded model, what transformers loads from a folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of a model's configuration.
pub const CONFIG_FILE: &str = "config.json";

/// Largest index or `config.json` read (bytes), like the header limit: a real index of a
/// million tensors is under 100 MB, a config a few KB.
pub const MAX_JSON_FILE_LEN: u64 = header::MAX_HEADER_LEN;

/// One tensor of a checkpoint, as its header declares it (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Index into [`Checkpoint::shards`].
    pub shard: usize,
    /// Absolute byte range in the shard file.
    pub range: Range<usize>,
}

impl TensorInfo {
    /// Number of elements (validated not to overflow when the header was read).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of bytes of data.
    pub fn nbytes(&self) -> usize {
        self.range.len()
    }
}

/// One memory-mapped safetensors file.
#[derive(Debug)]
pub struct Shard {
    /// Path of the file.
    pub path: PathBuf,
    /// Length of its JSON header.
    pub header_len: usize,
    /// Its `__metadata__`.
    pub metadata: BTreeMap<String, String>,
    /// Number of tensors it holds.
    pub tensor_count: usize,
    map: GuardedMap,
    file: File,
    modified: Option<SystemTime>,
    /// The temporary file of assembled tensors (written by this process, so its modification
    /// time changes by design).
    assembled: bool,
}

impl Shard {
    /// Size of the file in bytes (when it was opened).
    pub fn file_len(&self) -> usize {
        self.map.len()
    }

    /// Whether this is the temporary file of tensors assembled on read (dequantized, or
    /// concatenated from model-parallel shards), not a file of the checkpoint.
    pub fn is_assembled(&self) -> bool {
        self.assembled
    }

    /// The open file behind the map (the same inode, even if the path has since been
    /// replaced), for readers that copy ranges inside the kernel.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Checks that the file is still the one that was mapped: no read of ours ran past
    /// its end (it was truncated), and its length and modification time are unchanged.
    pub fn check_intact(&self) -> Result<(), Error> {
        if self.assembled {
            return Ok(());
        }
        let was = self.map.len() as u64;
        let meta = self.file.metadata().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        let now = meta.len();
        let change = if now != was {
            Some(FileChange::Resized { was, now })
        } else if self.map.faulted() {
            Some(FileChange::PagesVanished { len: was })
        } else if meta.modified().ok() != self.modified {
            Some(FileChange::Modified)
        } else {
            None
        };
        match change {
            Some(change) => Err(Error::Changed {
                path: self.path.clone(),
                change,
            }),
            None => Ok(()),
        }
    }
}

/// Something opening noticed that the user should hear about (the binary prints these
/// with every command's output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenNote {
    /// The folder holds both `model.safetensors` and `model.safetensors.index.json`:
    /// `model.safetensors` was read, as transformers' `from_pretrained` does.
    IndexIgnored {
        /// The model folder.
        dir: PathBuf,
    },
    /// `model.safetensors` exists but is not a regular file: the index was read
    /// instead, as transformers does.
    ModelFileIgnored {
        /// Path of `model.safetensors`.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// There is no `config.json`: one was reconstructed from the file (GGUF metadata, Meta's
    /// `params.json`); what it could not say is listed.
    ConfigReconstructed {
        /// The file it came from.
        from: PathBuf,
        /// Settings the file does not state (left to transformers' defaults).
        unknown: Vec<String>,
    },
    /// Tensors stored block-quantized (GGUF Q8_0, Q4_0) are read dequantized to F32.
    Dequantized {
        /// The GGUF file.
        path: PathBuf,
        /// How many tensors.
        count: usize,
    },
    /// Tensors stored in ggml types orient cannot decode: listed, refused by commands that
    /// read values.
    Undecodable {
        /// The GGUF file.
        path: PathBuf,
        /// (tensor, ggml type) of each.
        tensors: Vec<(String, &'static str)>,
    },
}

impl fmt::Display for OpenNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenNote::IndexIgnored { dir } => write!(
                f,
                "{}: both {MODEL_FILE} and {INDEX_FILE} are present; reading {MODEL_FILE}, as transformers does (the index and its shards are ignored; pass the index itself to read them)",
                dir.display()
            ),
            OpenNote::ModelFileIgnored { path, kind } => write!(
                f,
                "{} is {kind}, not a regular file; reading {INDEX_FILE} instead, as transformers does",
                path.display()
            ),
            OpenNote::ConfigReconstructed { from, unknown } => {
                write!(f, "{}: no config.json; reconstructed from the file", from.display())?;
                if !unknown.is_empty() {
                    write!(f, "; not stated there (pass --config FILE if they matter): {}", unknown.join("; "))?;
                }
                Ok(())
            }
            OpenNote::Dequantized { path, count } => write!(
                f,
                "{}: {count} block-quantized {} (Q8_0/Q4_0) {} read dequantized to F32, as ggml computes them",
                path.display(),
                if *count == 1 { "tensor" } else { "tensors" },
                if *count == 1 { "is" } else { "are" },
            ),
            OpenNote::Undecodable { path, tensors } => {
                let list: Vec<String> = tensors.iter().map(|(n, t)| format!("{n} ({t})")).collect();
                let one = tensors.len() == 1;
                write!(
                    f,
                    "{}: {} {} stored in {} orient cannot decode (it decodes F32, F16, BF16, Q8_0, Q4_0); listed, not read: {}",
                    path.display(),
                    tensors.len(),
                    if one { "tensor is" } else { "tensors are" },
                    if one { "a ggml type" } else { "ggml types" },
                    list.join(", ")
                )
            }
        }
    }
}

/// How the checkpoint was laid out on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A single `.safetensors` file.
    SingleFile,
    /// Shards listed by a `model.safetensors.index.json`.
    Sharded {
        /// Path of the index file.
        index: PathBuf,
        /// The index's own `metadata` object (e.g. `total_size`), rendered as strings.
        metadata: BTreeMap<String, String>,
    },
}

/// What the folder's `config.json` says.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per checkpoint; boxing buys nothing
pub enum ConfigStatus {
    /// A known architecture, resolved.
    Known(ModelConfig),
    /// No `config.json` beside the weights.
    Missing,
    /// Valid JSON, but an architecture the layout catalogue lacks.
    UnknownArch {
        /// `model_type`, if the file had one.
        model_type: Option<String>,
        /// `architectures`, as written.
        architectures: Vec<String>,
    },
}

/// An open checkpoint: every shard mapped, every header validated, tensors sorted by name.
#[derive(Debug)]
pub struct Checkpoint {
    root: PathBuf,
    source: Source,
    shards: Vec<Shard>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    config_path: Option<PathBuf>,
    config_text: Option<String>,
    config: ConfigStatus,
    notes: Vec<OpenNote>,
    format: Format,
    assembled: Option<foreign::Assembled>,
    undecodable: Vec<Undecodable>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a folder holding
    /// either (plus an optional `config.json`). In a folder, `model.safetensors` wins,
    /// then the index (the order of transformers' `from_pretrained`; the other one
    /// present is reported in [`Checkpoint::notes`]), then the folder's only
    /// `.safetensors` file; several other files and no index is an error. Symbolic links
    /// are followed (the Hugging Face cache is made of them); what they lead to must be
    /// a regular file.
    ///
    /// # Memory-map contract
    /// Every shard is memory-mapped, not read: the tensor bytes lent out by
    /// [`Checkpoint::view`] *are* the file's pages. The files must therefore not change
    /// while the checkpoint is open. orient never writes to a file it has open, but
    /// another process may (a download restarting, a job rewriting the checkpoint). A
    /// file **truncated** underneath does not kill the process with SIGBUS (on Linux):
    /// the missing pages read as zeros and the shard is marked (see [`crate::mmap`]). A
    /// file **rewritten** in place yields whatever bytes it holds at the moment of the
    /// read. Either way the values read are garbage, so every caller that computes from
    /// tensor data must call [`Checkpoint::check_intact`] (or
    /// [`Checkpoint::check_tensor`]) after reading and before reporting or committing
    /// anything, and turn its error into the command's error.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, Error> {
        Checkpoint::open_with(path, None)
    }

    /// [`Checkpoint::open`], also reading the formats that are not safetensors (a `.gguf`
    /// file; `pytorch_model.bin`, single or with its `.bin.index.json`; `flax_model.msgpack`;
    /// Meta's `consolidated.NN.pth` with `params.json`; in a folder, safetensors win, as in
    /// transformers), with `config` (when given) read instead of the folder's `config.json`
    /// or the one reconstructed from a GGUF file's metadata or Meta's `params.json`.
    pub fn open_with(path: impl AsRef<Path>, config: Option<&Path>) -> Result<Checkpoint, Error> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut notes = Vec::new();
        let (root, target) = if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            let single = path.join(MODEL_FILE);
            let target = match (entry_kind(&single)?, entry_kind(&index)?) {
                (Entry::Regular, other) => {
                    if other != Entry::Absent {
                        notes.push(OpenNote::IndexIgnored {
                            dir: path.to_owned(),
                        });
                    }
                    Target::File(single)
                }
                (other, Entry::Regular) => {
                    if let Entry::Other(kind) = other {
                        notes.push(OpenNote::ModelFileIgnored { path: single, kind });
                    }
                    Target::Index(index)
                }
                (Entry::Other(kind), _) => {
                    return Err(Error::NotRegularFile { path: single, kind })
                }
                (Entry::Absent, Entry::Other(kind)) => {
                    return Err(Error::NotRegularFile { path: index, kind })
                }
                (Entry::Absent, Entry::Absent) => match lone_safetensors(path) {
                    Ok(file) => Target::File(file),
                    Err(e @ Error::NoSafetensors { .. }) => match foreign::detect_dir(path)? {
                        Some(found) => Target::Foreign(found),
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                },
            };
            (path.to_owned(), target)
        } else {
            let root = parent_dir(path).to_owned();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(found) = foreign::detect_file(path) {
                (root, Target::Foreign(found))
            } else if name.ends_with(".index.json") {
                (root, Target::Index(path.to_owned()))
            } else {
                (root, Target::File(path.to_owned()))
            }
        };

        let mut format = Format::Safetensors;
        let mut assembled = None;
        let mut undecodable = Vec::new();
        let mut reconstructed = None;
        let (source, shards, tensors) = match target {
            Target::File(file) => {
                let (shard, tensors) = open_shard(&file, 0)?;
                (Source::SingleFile, vec![shard], tensors)
            }
            Target::Index(index) => open_index(&root, &index)?,
            Target::Foreign(found) => {
                let o = foreign::open(found)?;
                format = o.format;
                assembled = o.assembled;
                undecodable = o.undecodable;
                reconstructed = o.config;
                (o.source, o.shards, o.tensors)
            }
        };
        if let (Some(a), Format::Gguf) = (&assembled, format) {
            let count = tensors.iter().filter(|t| t.shard == a.shard).count();
            notes.push(OpenNote::Dequantized {
                path: shards[0].path.clone(),
                count,
            });
        }
        if !undecodable.is_empty() {
            notes.push(OpenNote::Undecodable {
                path: shards[0].path.clone(),
                tensors: undecodable
                    .iter()
                    .map(|u| (u.name.clone(), u.ggml_type))
                    .collect(),
            });
        }

        let mut tensors = tensors;
        tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name));
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut metadata = BTreeMap::new();
        for shard in &shards {
            for (k, v) in &shard.metadata {
                metadata.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }

        let mut reconstructed_used = false;
        let config_path = config.map_or_else(|| root.join(CONFIG_FILE), Path::to_path_buf);
        let config_kind = match (config, &reconstructed) {
            // A reconstructed config replaces the folder's config.json only when there is
            // none (a GGUF file beside the HF model it came from reads that model's config).
            (None, Some((r, from))) if entry_kind(&config_path)? == Entry::Absent => {
                notes.push(OpenNote::ConfigReconstructed {
                    from: from.clone(),
                    unknown: r.unknown.clone(),
                });
                Entry::Absent
            }
            (Some(_), _) => match entry_kind(&config_path)? {
                Entry::Absent => {
                    return Err(Error::Io {
                        path: config_path,
                        source: io::Error::from(io::ErrorKind::NotFound),
                    })
                }
                other => other,
            },
            _ => entry_kind(&config_path)?,
        };
        let (config_path, config_text) = match config_kind {
            Entry::Absent => match reconstructed {
                Some((r, from)) if config.is_none() => {
                    reconstructed_used = true;
                    (Some(from), Some(r.json))
                }
                _ => (None, None),
            },
            Entry::Other(kind) => {
                return Err(Error::NotRegularFile {
                    path: config_path,
                    kind,
                })
            }
            Entry::Regular => {
                let text = read_json_file(&config_path)?;
                let text = String::from_utf8(text).map_err(|_| Error::Io {
                    path: config_path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "not valid UTF-8"),
                })?;
                (Some(config_path), Some(text))
            }
        };
        let config = match (&config_path, &config_text) {
            (Some(path), Some(text)) => match parse_config(text) {
                Ok(ConfigOutcome::Known(cfg)) => ConfigStatus::Known(cfg),
                Ok(ConfigOutcome::UnknownArch {
                    model_type,
                    architectures,
                }) => ConfigStatus::UnknownArch {
                    model_type,
                    architectures,
                },
                // A reconstructed config that cannot be resolved (the file lacks a size) is
                // no config: the note says what was missing, `--config` supplies one.
                Err(source) if reconstructed_used => {
                    if let Some(OpenNote::ConfigReconstructed { unknown, .. }) = notes.last_mut() {
                        unknown.push(format!("so it cannot be used: {source}"));
                    }
                    ConfigStatus::Missing
                }
                Err(source) => {
                    return Err(Error::Config {
                        path: path.clone(),
                        source,
                    })
                }
            },
            _ => ConfigStatus::Missing,
        };
        let (config_path, config_text) = match config {
            ConfigStatus::Missing => (None, None),
            _ => (config_path, config_text),
        };

        Ok(Checkpoint {
            root,
            source,
            shards,
            tensors,
            by_name,
            metadata,
            config_path,
            config_text,
            config,
            notes,
            format,
            assembled,
            undecodable,
        })
    }

    /// What opening noticed that the user should hear about (which of two candidate
    /// files was read, and why). Every command prints these.
    pub fn notes(&self) -> &[OpenNote] {
        &self.notes
    }

    /// Checks that no shard changed since it was opened (see the memory-map contract
    /// on [`Checkpoint::open`]): an error names the first file that was truncated,
    /// resized or modified. Call it after reading tensor data and before trusting
    /// anything computed from it.
    pub fn check_intact(&self) -> Result<(), Error> {
        self.shards.iter().try_for_each(Shard::check_intact)?;
        match &self.assembled {
            Some(a) => a.check(&self.shards),
            None => Ok(()),
        }
    }

    /// [`Checkpoint::check_intact`] for the shard holding `t` only (one `fstat`): the
    /// check to run after each tensor of a long computation.
    pub fn check_tensor(&self, t: &TensorInfo) -> Result<(), Error> {
        if self.assembled.as_ref().is_some_and(|a| a.shard == t.shard) {
            // Assembled from other shards: check them all, and the assembly.
            return self.check_intact();
        }
        match self.shards.get(t.shard) {
            Some(shard) => shard.check_intact(),
            None => Ok(()),
        }
    }

    /// The model folder (the file's folder for a single file).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Single file or sharded set.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Every tensor, sorted by name with digit runs compared as numbers, so that
    /// `layers.2` comes before `layers.10`.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this exact name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The mapped shards, in the order of [`TensorInfo::shard`].
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// `__metadata__` of all shards merged (the first shard wins on conflicts).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The resolved config, when `config.json` exists and names a known architecture.
    pub fn config(&self) -> Option<&ModelConfig> {
        match &self.config {
            ConfigStatus::Known(cfg) => Some(cfg),
            _ => None,
        }
    }

    /// What `config.json` said: known, missing, or an unknown architecture.
    pub fn config_status(&self) -> &ConfigStatus {
        &self.config
    }

    /// Path of `config.json`, when the folder has one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Raw text of `config.json`, when the folder has one.
    pub fn config_text(&self) -> Option<&str> {
        self.config_text.as_deref()
    }

    /// Borrows a tensor's bytes. `t` must come from this checkpoint.
    ///
    /// # Panics
    /// If `t` does not belong to this checkpoint (its shard or range is out of bounds).
    pub fn view<'a>(&'a self, t: &'a TensorInfo) -> TensorView<'a> {
        self.prepare(t);
        TensorView {
            info: t,
            bytes: &self.shards[t.shard].map[t.range.clone()],
        }
    }

    /// Tells the kernel this process is done with a tensor's pages, so that streaming
    /// over a model larger than RAM keeps resident memory bounded. The data stays
    /// readable: a later access faults it back in from the file. Errors are ignored
    /// (this is advice).
    pub fn release(&self, t: &TensorInfo) {
        self.advise_dont_need(t.shard, t.range.clone());
    }

    /// Like [`Checkpoint::release`], for part of a tensor: `part` must be a sub-slice of
    /// `self.view(t).bytes` (a chunk a streaming reader is done with). Anything else is
    /// ignored, so no memory outside the mapping can ever be advised away.
    pub fn release_part(&self, t: &TensorInfo, part: &[u8]) {
        let Some(shard) = self.shards.get(t.shard) else {
            return;
        };
        let base = shard.map.as_ptr() as usize;
        let start = (part.as_ptr() as usize).wrapping_sub(base);
        let Some(end) = start.checked_add(part.len()) else {
            return;
        };
        if start < t.range.start || end > t.range.end {
            return;
        }
        self.advise_dont_need(t.shard, start..end);
    }

    /// MADV_DONTNEED on the whole pages inside `range` (byte offsets in the shard's map).
    fn advise_dont_need(&self, shard: usize, range: Range<usize>) {
        if let Some(shard) = self.shards.get(shard) {
            shard.advise_dont_need(range);
        }
    }
}

impl Shard {
    /// MADV_DONTNEED on the whole pages inside `range` (byte offsets in the map): see
    /// [`Checkpoint::release`].
    fn advise_dont_need(&self, range: Range<usize>) {
        let shard = self;
        let page = page_size();
        // Only whole pages inside the range, so neighbours in use are not dropped.
        let start = range.start.div_ceil(page) * page;
        let end = (range.end.min(shard.map.len()) / page) * page;
        if end <= start {
            return;
        }
        // SAFETY: the map is a read-only, file-backed shared mapping (`Mmap::map` of a
        // file opened read-only), possibly with anonymous zero pages mapped over a
        // truncated tail by the SIGBUS guard. MADV_DONTNEED on such a mapping only drops
        // this process's page-table entries; the next access reloads the same bytes from
        // the page cache or the file (or zeros, for the guard's pages), so no data is
        // lost and no borrowed slice can observe a change. The range is page-aligned
        // and inside the map.
        unsafe {
            let _ = shard.map.mmap().unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                end - start,
            );
        }
    }
}

/// The folder holding `path`: its parent, or `.` for a bare file name (where
/// `Path::parent` gives an empty path).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Compares names with runs of ASCII digits compared by value (`h.2` < `h.10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..da], &b[..db]);
                // Compare by value: strip leading zeros, then by length, then bytes.
                let ta = &na[na.iter().take_while(|&&c| c == b'0').count()..];
                let tb = &nb[nb.iter().take_while(|&&c| c == b'0').count()..];
                let ord = ta.len().cmp(&tb.len()).then(ta.cmp(tb)).then(da.cmp(&db));
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn page_size() -> usize {
    // 4 KiB on every platform orient targets; a larger real page size only makes the
    // advice cover fewer bytes, never bytes outside the tensor.
    4096
}

enum Target {
    File(PathBuf),
    Index(PathBuf),
    Foreign(foreign::Found),
}

/// What a name in a folder is, after following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Nothing has that name.
    Absent,
    /// A regular file (or a link to one).
    Regular,
    /// Something else: a FIFO, a folder, a link to nothing, …
    Other(&'static str),
}

fn entry_kind(path: &Path) -> Result<Entry, Error> {
    match file::non_regular_kind(path) {
        Ok(None) => Ok(Entry::Regular),
        Ok(Some(kind)) => Ok(Entry::Other(kind)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entry::Absent),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The error of [`file::open_regular`] / [`file::read_regular`] for `path`.
fn file_error(path: &Path, source: io::Error) -> Error {
    match file::not_regular(&source) {
        Some(n) => Error::NotRegularFile {
            path: path.to_owned(),
            kind: n.kind,
        },
        None => Error::Io {
            path: path.to_owned(),
            source,
        },
    }
}

/// Reads an index or `config.json` (regular files only, at most [`MAX_JSON_FILE_LEN`]).
fn read_json_file(path: &Path) -> Result<Vec<u8>, Error> {
    file::read_regular(path, MAX_JSON_FILE_LEN).map_err(|e| file_error(path, e))
}

/// Finds the single `.safetensors` file of a folder without an index. Entries that are
/// not regular files count too (and are refused by name when opened), so that a FIFO
/// is reported as what it is rather than as "no file".
fn lone_safetensors(dir: &Path) -> Result<PathBuf, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "safetensors") && !p.is_dir() {
            found.push(p);
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::NoSafetensors {
            dir: dir.to_owned(),
        }),
        _ => Err(Error::AmbiguousFolder {
            dir: dir.to_owned(),
            files: found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
        }),
    }
}

/// Maps one file and validates its header.
fn open_shard(path: &Path, shard: usize) -> Result<(Shard, Vec<TensorInfo>), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = file::open_regular(path).map_err(|e| file_error(path, e))?;
    let meta = file.metadata().map_err(io)?;
    let len = meta.len();
    let bad = |source: HeaderError| Error::Header {
        path: path.to_owned(),
        source,
    };
    if len < header::LEN_PREFIX as u64 {
        return Err(bad(HeaderError::TooShort { len }));
    }
    // SAFETY: the file is a regular file opened read-only, and this checkpoint keeps the
    // contract documented on `Checkpoint::open`: orient never writes to a file it has
    // open (`convert` refuses a destination inside its source), and a change made by
    // another process is caught by `Shard::check_intact`, which every reader of tensor
    // data calls before trusting what it read; a truncation reads zeros instead of
    // raising SIGBUS.
    let map = unsafe { GuardedMap::new(&file) }.map_err(io)?;
    let shard_data = Shard {
        path: path.to_owned(),
        header_len: 0,
        metadata: BTreeMap::new(),
        tensor_count: 0,
        map,
        file,
        modified: meta.modified().ok(),
        assembled: false,
    };
    let parsed = match header::parse(&shard_data.map) {
        Ok(parsed) => parsed,
        // A header that changed while it was parsed is reported as the change.
        Err(e) => return Err(shard_data.check_intact().err().unwrap_or_else(|| bad(e))),
    };
    shard_data.check_intact()?;
    let tensors: Vec<TensorInfo> = parsed
        .tensors
        .into_iter()
        .map(|t| TensorInfo {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            shard,
            // Cannot overflow: check_layout proved data_start + end <= file length.
            range: parsed.data_start + t.data_offsets.0..parsed.data_start + t.data_offsets.1,
        })
        .collect();
    Ok((
        Shard {
            header_len: parsed.header_len,
            metadata: parsed.metadata,
            tensor_count: tensors.len(),
            ..shard_data
        },
        tensors,
    ))
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Pairs,
    weight_map: Pairs,
}

/// A JSON object as its key/value pairs in file order, duplicates kept: serde_json's own
/// maps silently keep the last value of a repeated key, which would let an index hide
/// an entry (say `../../etc/passwd`) from every check.
#[derive(Default)]
struct Pairs(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    pairs.push((key, map.next_value()?));
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(V).map_err(de::Error::custom)
    }
}

/// Reads an index, refuses unsafe shard names and repeated keys before opening any file,
/// then opens the shards and checks that index and shards agree exactly.
fn open_index(root: &Path, index: &Path) -> Result<(Source, Vec<Shard>, Vec<TensorInfo>), Error> {
    let text = read_json_file(index)?;
    let invalid = |reason: String| Error::InvalidIndex {
        index: index.to_owned(),
        reason,
    };
    let raw: RawIndex = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    drop(text);
    if raw.weight_map.0.len() > header::MAX_TENSORS {
        return Err(invalid(format!(
            "weight_map lists {} tensors, over the limit of {} (no real model has that many)",
            raw.weight_map.0.len(),
            header::MAX_TENSORS
        )));
    }

    // tensor -> shard file name, and the distinct shard names in sorted order.
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    for (tensor, shard) in raw.weight_map.0 {
        let serde_json::Value::String(shard) = shard else {
            return Err(invalid(format!(
                "weight_map entry for `{tensor}` is not a string"
            )));
        };
        if let Some(first) = weight_map.get(&tensor) {
            return Err(Error::DuplicateInIndex {
                index: index.to_owned(),
                tensor,
                first: first.clone(),
                second: shard,
            });
        }
        weight_map.insert(tensor, shard);
    }
    for (tensor, shard) in &weight_map {
        check_shard_name(index, tensor, shard)?;
    }
    let mut metadata = BTreeMap::new();
    for (k, v) in raw.metadata.0 {
        if metadata.contains_key(&k) {
            return Err(invalid(format!(
                "metadata key `{k}` appears more than once"
            )));
        }
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        metadata.insert(k, v);
    }
    let mut shard_names: Vec<&str> = weight_map.values().map(String::as_str).collect();
    shard_names.sort_unstable();
    shard_names.dedup();

    // Every name is a plain file name of the model folder. What it is a link to is not
    // judged (the Hugging Face cache links every file to `../../blobs/`); it must only
    // be a regular file.
    let mut shards = Vec::with_capacity(shard_names.len());
    let mut tensors = Vec::new();
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, name) in shard_names.iter().enumerate() {
        let path = root.join(name);
        match entry_kind(&path)? {
            Entry::Regular => {}
            Entry::Other(kind) => return Err(Error::NotRegularFile { path, kind }),
            Entry::Absent => {
                let tensor = weight_map
                    .iter()
                    .find(|(_, s)| s.as_str() == *name)
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default();
                return Err(Error::MissingShard {
                    index: index.to_owned(),
                    shard: (*name).to_owned(),
                    tensor,
                });
            }
        }
        let (shard, shard_tensors) = open_shard(&path, i)?;
        for t in &shard_tensors {
            if let Some(&prev) = owner.get(&t.name) {
                return Err(Error::DuplicateAcrossShards {
                    tensor: t.name.clone(),
                    first: shards_path(&shards, prev, &path),
                    second: path.clone(),
                });
            }
            owner.insert(t.name.clone(), i);
            match weight_map.get(&t.name) {
                None => {
                    return Err(Error::NotInIndex {
                        shard: path.clone(),
                        tensor: t.name.clone(),
                        index: index.to_owned(),
                    })
                }
                Some(listed) if listed != name => {
                    return Err(Error::WrongShard {
                        index: index.to_owned(),
                        tensor: t.name.clone(),
                        listed: listed.clone(),
                        found: path.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        tensors.extend(shard_tensors);
        shards.push(shard);
    }
    for (tensor, shard) in &weight_map {
        if !owner.contains_key(tensor) {
            return Err(Error::NotInShard {
                index: index.to_owned(),
                tensor: tensor.clone(),
                shard: root.join(shard),
            });
        }
    }
    Ok((
        Source::Sharded {
            index: index.to_owned(),
            metadata,
        },
        shards,
        tensors,
    ))
}

fn shards_path(shards: &[Shard], i: usize, fallback: &Path) -> PathBuf {
    shards
        .get(i)
        .map_or_else(|| fallback.to_owned(), |s| s.path.clone())
}

/// A shard name must be a plain file name of the model folder: not empty, not `.` or
/// `..`, no separator (`/` or `\\`), no NUL. Judged on the name as written, before any
/// file is opened; links are then followed wherever they lead.
fn check_shard_name(index: &Path, tensor: &str, shard: &str) -> Result<(), Error> {
    let plain =
        !shard.is_empty() && shard != "." && shard != ".." && !shard.contains(['/', '\\', '\0']);
    if plain {
        Ok(())
    } else {
        Err(Error::ShardEscapes {
            index: index.to_owned(),
            shard: shard.to_owned(),
            tensor: tensor.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn natural_order() {
        let mut names = vec!["h.10.w", "h.2.w", "h.1.w", "a", "h.02.w", "h.2.v"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(names, ["a", "h.1.w", "h.2.v", "h.2.w", "h.02.w", "h.10.w"]);
    }
}
