//! Opening a checkpoint: one file, a sharded set, or a model folder.
//!
//! A [`Checkpoint`] owns the memory map of every shard and lends out views; nothing
//! else maps files. Opening reads headers only: tensor data pages are touched only
//! when a caller asks for a [`TensorView`]'s bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;

use crate::config::{parse_config, ConfigOutcome, ModelConfig};
use crate::dtype::Dtype;
use crate::error::Error;
use crate::header::{self, HeaderError};
use crate::view::TensorView;

/// File name of a sharded set's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of an unsharded model, what transformers loads from a folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of a model's configuration.
pub const CONFIG_FILE: &str = "config.json";

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
    map: Mmap,
}

impl Shard {
    /// Size of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.map.len()
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
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a folder holding
    /// either (plus an optional `config.json`). In a folder, the index wins, then
    /// `model.safetensors` (as transformers loads it), then the folder's only
    /// `.safetensors` file; several other files and no index is an error.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, Error> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let (root, target) = if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            let single = path.join(MODEL_FILE);
            if index.is_file() {
                (path.to_owned(), Target::Index(index))
            } else if single.is_file() {
                (path.to_owned(), Target::File(single))
            } else {
                (path.to_owned(), Target::File(lone_safetensors(path)?))
            }
        } else {
            let root = parent_dir(path).to_owned();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".index.json") {
                (root, Target::Index(path.to_owned()))
            } else {
                (root, Target::File(path.to_owned()))
            }
        };

        let (source, shards, tensors) = match target {
            Target::File(file) => {
                let (shard, tensors) = open_shard(&file, 0)?;
                (Source::SingleFile, vec![shard], tensors)
            }
            Target::Index(index) => open_index(&root, &index)?,
        };

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

        let config_path = root.join(CONFIG_FILE);
        let (config_path, config_text) = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
                path: config_path.clone(),
                source,
            })?;
            (Some(config_path), Some(text))
        } else {
            (None, None)
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
                Err(source) => {
                    return Err(Error::Config {
                        path: path.clone(),
                        source,
                    })
                }
            },
            _ => ConfigStatus::Missing,
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
        })
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
        let Some(shard) = self.shards.get(shard) else {
            return;
        };
        let page = page_size();
        // Only whole pages inside the range, so neighbours in use are not dropped.
        let start = range.start.div_ceil(page) * page;
        let end = (range.end.min(shard.map.len()) / page) * page;
        if end <= start {
            return;
        }
        // SAFETY: the map is a read-only, file-backed shared mapping (`Mmap::map` of a
        // file opened read-only). MADV_DONTNEED on such a mapping only drops this
        // process's page-table entries; the next access reloads the same bytes from
        // the page cache or the file, so no data is lost and no borrowed slice can
        // observe a change. The range is page-aligned and inside the map.
        unsafe {
            let _ = shard.map.unchecked_advise_range(
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
}

/// Finds the single `.safetensors` file of a folder without an index.
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
        if p.extension().is_some_and(|e| e == "safetensors") && p.is_file() {
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
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let bad = |source: HeaderError| Error::Header {
        path: path.to_owned(),
        source,
    };
    if len < header::LEN_PREFIX as u64 {
        return Err(bad(HeaderError::TooShort { len }));
    }
    // SAFETY: the file is opened read-only and mapped read-only. Like every mmap-based
    // reader (safetensors, candle), this assumes no other process truncates or rewrites
    // the file while it is mapped; orient itself never writes to a file it has open,
    // and `convert` refuses a destination inside its source.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    let parsed = header::parse(&map).map_err(bad)?;
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
            path: path.to_owned(),
            header_len: parsed.header_len,
            metadata: parsed.metadata,
            tensor_count: tensors.len(),
            map,
        },
        tensors,
    ))
}

#[derive(serde::Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
    weight_map: serde_json::Map<String, serde_json::Value>,
}

/// Reads an index, refuses unsafe shard names before opening any file, then opens the
/// shards and checks that index and shards agree exactly.
fn open_index(root: &Path, index: &Path) -> Result<(Source, Vec<Shard>, Vec<TensorInfo>), Error> {
    let text = std::fs::read(index).map_err(|source| Error::Io {
        path: index.to_owned(),
        source,
    })?;
    let raw: RawIndex = serde_json::from_slice(&text).map_err(|e| Error::InvalidIndex {
        index: index.to_owned(),
        reason: e.to_string(),
    })?;

    // tensor -> shard file name, and the distinct shard names in sorted order.
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    for (tensor, shard) in raw.weight_map {
        let serde_json::Value::String(shard) = shard else {
            return Err(Error::InvalidIndex {
                index: index.to_owned(),
                reason: format!("weight_map entry for `{tensor}` is not a string"),
            });
        };
        check_shard_name(index, &tensor, &shard)?;
        weight_map.insert(tensor, shard);
    }
    let mut shard_names: Vec<&str> = weight_map.values().map(String::as_str).collect();
    shard_names.sort_unstable();
    shard_names.dedup();

    // Every name is lexically safe; now make sure no symlink leads outside either.
    let canonical_root = root.canonicalize().map_err(|source| Error::Io {
        path: root.to_owned(),
        source,
    })?;
    let mut shards = Vec::with_capacity(shard_names.len());
    let mut tensors = Vec::new();
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, name) in shard_names.iter().enumerate() {
        let path = root.join(name);
        let Ok(canonical) = path.canonicalize() else {
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
        };
        if !canonical.starts_with(&canonical_root) {
            return Err(Error::ShardEscapes {
                index: index.to_owned(),
                shard: (*name).to_owned(),
                tensor: String::new(),
            });
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
    let metadata = raw
        .metadata
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
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

/// A shard name must be a plain relative path that stays inside the model folder:
/// no `..`, no root, no drive prefix, not empty.
fn check_shard_name(index: &Path, tensor: &str, shard: &str) -> Result<(), Error> {
    let escapes = Error::ShardEscapes {
        index: index.to_owned(),
        shard: shard.to_owned(),
        tensor: tensor.to_owned(),
    };
    if shard.is_empty() || shard.contains('\\') || shard.contains('\0') {
        return Err(escapes);
    }
    let p = Path::new(shard);
    if p.is_absolute() {
        return Err(escapes);
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes)
            }
        }
    }
    Ok(())
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
