//! Checkpoints in the formats that are not safetensors: a GGUF file, `pytorch_model.bin`
//! (single or sharded), `flax_model.msgpack`, Meta's `consolidated.NN.pth` + `params.json`.
//!
//! The format readers ([`crate::formats`]) turn each file into tensors with byte ranges; this
//! module makes those a [`Checkpoint`] like any other: every file memory-mapped as a [`Shard`],
//! every tensor a [`TensorInfo`] whose range points into its file, so that every command reads
//! them the same way. Two kinds of tensor have no bytes in any file and are *assembled*: GGUF
//! Q8_0/Q4_0 tensors (dequantized to F32) and Meta tensors split across model-parallel shards
//! (concatenated). They live in one extra shard, an unlinked temporary file of their total size
//! (sparse, so opening costs nothing), and each is written there the first time it is read
//! ([`Assembled::ensure`]): `inspect` touches no data, and memory stays bounded by the page
//! cache, as for a mapped file. GGUF types orient cannot decode are kept out of the tensor list
//! and reported ([`Undecodable`]).

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{entry_kind, file_error, Checkpoint, Entry, Shard, Source, TensorInfo};
use crate::dtype::Dtype;
use crate::error::Error;
use crate::file;
use crate::formats::hfconfig::{self, Reconstructed};
use crate::formats::meta::{self, Combine, MetaParams};
use crate::formats::{self, quant, Encoding, GgmlType, MetaArray, MetaValue, RawFile};
use crate::mmap::GuardedMap;

/// The format a checkpoint was stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `.safetensors` (single or sharded).
    Safetensors,
    /// A llama.cpp `.gguf` file.
    Gguf,
    /// `pytorch_model.bin` / `*.pth` in torch's zip format (single or sharded).
    PytorchBin,
    /// `flax_model.msgpack`.
    FlaxMsgpack,
    /// Meta's `consolidated.NN.pth` + `params.json`.
    Meta,
}

impl Format {
    /// The format's name as orient prints it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Gguf => "gguf",
            Format::PytorchBin => "pytorch",
            Format::FlaxMsgpack => "flax-msgpack",
            Format::Meta => "meta",
        }
    }

    /// The layout convention the format brings with it
    /// ([`crate::layout::formats::format_convention`]), when it has its own (GGUF, Meta).
    /// PyTorch files use HF names and msgpack files Flax names: the built-ins read them.
    pub fn convention(self) -> Option<&'static str> {
        match self {
            Format::Gguf => Some("gguf"),
            Format::Meta => Some("meta"),
            _ => None,
        }
    }
}

/// A GGUF tensor stored in a ggml type orient cannot decode (Q4_K, IQ2_XS, …): listed, never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Tensor name, as stored.
    pub name: String,
    /// The ggml type's name.
    pub ggml_type: &'static str,
    /// Shape in numpy order.
    pub shape: Vec<usize>,
}

/// What was found at a path that is not safetensors.
#[derive(Debug, Clone)]
pub(super) enum Found {
    Gguf(PathBuf),
    Torch(PathBuf),
    TorchIndex(PathBuf),
    Msgpack(PathBuf),
    Meta {
        params: PathBuf,
        shards: Vec<PathBuf>,
    },
}

/// Recognises a file by its name (and a GGUF by its magic number).
pub(super) fn detect_file(path: &Path) -> Option<Found> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".safetensors") || name == super::INDEX_FILE {
        return None;
    }
    if name.ends_with(".gguf") || has_gguf_magic(path) {
        Some(Found::Gguf(path.to_owned()))
    } else if name.ends_with(".bin.index.json") || name.ends_with(".pth.index.json") {
        Some(Found::TorchIndex(path.to_owned()))
    } else if name.ends_with(".msgpack") {
        Some(Found::Msgpack(path.to_owned()))
    } else if name.ends_with(".bin") || name.ends_with(".pth") || name.ends_with(".pt") {
        let dir = super::parent_dir(path);
        let params = dir.join("params.json");
        if name.starts_with("consolidated.") && entry_kind(&params).ok() == Some(Entry::Regular) {
            return meta_shards(dir)
                .ok()
                .map(|shards| Found::Meta { params, shards });
        }
        Some(Found::Torch(path.to_owned()))
    } else {
        None
    }
}

fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = file::open_regular(path) else {
        return false;
    };
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).is_ok() && &magic == formats::gguf::MAGIC
}

/// Looks for a non-safetensors checkpoint in a folder, in transformers' order of preference
/// (`pytorch_model.bin`, its index, `flax_model.msgpack`), then a Meta original, then a lone
/// `.gguf` file.
pub(super) fn detect_dir(dir: &Path) -> Result<Option<Found>, Error> {
    let regular = |name: &str| -> Result<Option<PathBuf>, Error> {
        let p = dir.join(name);
        Ok(match entry_kind(&p)? {
            Entry::Regular => Some(p),
            Entry::Absent => None,
            Entry::Other(kind) => return Err(Error::NotRegularFile { path: p, kind }),
        })
    };
    if let Some(p) = regular("pytorch_model.bin")? {
        return Ok(Some(Found::Torch(p)));
    }
    if let Some(p) = regular("pytorch_model.bin.index.json")? {
        return Ok(Some(Found::TorchIndex(p)));
    }
    if let Some(p) = regular("flax_model.msgpack")? {
        return Ok(Some(Found::Msgpack(p)));
    }
    if let Some(params) = regular("params.json")? {
        let shards = meta_shards(dir)?;
        if !shards.is_empty() {
            return Ok(Some(Found::Meta { params, shards }));
        }
    }
    let ggufs = list(dir, |n| n.ends_with(".gguf"))?;
    Ok(match ggufs.as_slice() {
        [one] => Some(Found::Gguf(one.clone())),
        _ => None,
    })
}

/// `consolidated.NN.pth` files of a folder, in shard order.
fn meta_shards(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    list(dir, |n| {
        n.strip_prefix("consolidated.")
            .and_then(|r| r.strip_suffix(".pth"))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn list(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_str().is_some_and(&keep) {
            out.push(entry.path());
        }
    }
    out.sort_by(|a, b| super::natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(out)
}

/// A foreign checkpoint, opened.
pub(super) struct Opened {
    pub source: Source,
    pub shards: Vec<Shard>,
    pub tensors: Vec<TensorInfo>,
    pub format: Format,
    pub assembled: Option<Assembled>,
    pub undecodable: Vec<Undecodable>,
    /// `config.json` reconstructed from the file (GGUF metadata, `params.json`), and from where.
    pub config: Option<(Reconstructed, PathBuf)>,
}

/// Opens what [`detect_file`] / [`detect_dir`] found.
pub(super) fn open(found: Found) -> Result<Opened, Error> {
    match found {
        Found::Gguf(path) => open_gguf(&path),
        Found::Torch(path) => open_plain(&[path], Format::PytorchBin, Source::SingleFile),
        Found::Msgpack(path) => open_plain(&[path], Format::FlaxMsgpack, Source::SingleFile),
        Found::TorchIndex(index) => open_torch_index(&index),
        Found::Meta { params, shards } => open_meta(&params, &shards),
    }
}

/// Maps one file whole (every format reader parses from the mapped bytes).
fn map_file(path: &Path) -> Result<Shard, Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let file = file::open_regular(path).map_err(|e| file_error(path, e))?;
    let meta = file.metadata().map_err(io)?;
    // SAFETY: a regular file opened read-only, under the contract documented on
    // `Checkpoint::open`: orient never writes to a file it has open, another process's change
    // is caught by `Shard::check_intact`, and a truncation reads zeros instead of SIGBUS.
    let map = unsafe { GuardedMap::new(&file) }.map_err(io)?;
    Ok(Shard {
        path: path.to_owned(),
        header_len: 0,
        metadata: Default::default(),
        tensor_count: 0,
        map,
        file,
        modified: meta.modified().ok(),
        assembled: false,
    })
}

/// Parses a mapped file with its format's reader; a file changed while parsing is reported as
/// the change.
fn parse(shard: &Shard, format: formats::Format) -> Result<RawFile, Error> {
    let parsed = formats::parse(format, &shard.map);
    shard.check_intact()?;
    parsed.map_err(|source| Error::Format {
        path: shard.path.clone(),
        source: Box::new(source),
    })
}

/// Parses a PyTorch file (of the kind its first bytes say), with the kernel's read-ahead
/// off for the map meanwhile.
///
/// Why: what a torch zip's reader touches (the central directory at the end, one local
/// header before each entry, the pickle at the start) is a few kilobytes scattered over
/// gigabytes of tensor data. On a map with the default advice every page fault reads the
/// surrounding read-around window (`read_ahead_kb`, often 8 MiB) too: about 1.3 GiB of a
/// 7B model's four shards for an `inspect` that needs a few hundred pages. With
/// `MADV_RANDOM` each fault reads its own page only. The advice is put back afterwards, so
/// that reading tensor data streams with read-ahead as before. Advice only: a kernel that
/// refuses it changes nothing but the pages read.
fn parse_torch(shard: &Shard) -> Result<RawFile, Error> {
    let _ = shard.map.mmap().advise(memmap2::Advice::Random);
    let kind = formats::sniff(&shard.map).unwrap_or(formats::Format::TorchZip);
    let parsed = parse(shard, kind);
    let _ = shard.map.mmap().advise(memmap2::Advice::Normal);
    parsed
}

/// PyTorch and msgpack files: every tensor is plain bytes in its file.
fn open_plain(paths: &[PathBuf], format: Format, source: Source) -> Result<Opened, Error> {
    let mut shards = Vec::new();
    let mut tensors = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let mut shard = map_file(path)?;
        let raw = match format {
            Format::FlaxMsgpack => parse(&shard, formats::Format::FlaxMsgpack)?,
            _ => parse_torch(&shard)?,
        };
        for t in &raw.tensors {
            tensors.push(plain_info(&shard.path, t, i, t.shape.clone())?);
        }
        shard.tensor_count = raw.tensors.len();
        shard.metadata = metadata_strings(&raw.metadata);
        shards.push(shard);
    }
    Ok(Opened {
        source,
        shards,
        tensors,
        format,
        assembled: None,
        undecodable: Vec::new(),
        config: None,
    })
}

fn plain_info(
    path: &Path,
    t: &formats::RawTensor,
    shard: usize,
    shape: Vec<usize>,
) -> Result<TensorInfo, Error> {
    match t.encoding {
        Encoding::Plain(dtype) => Ok(TensorInfo {
            name: t.name.clone(),
            dtype,
            shape,
            shard,
            range: t.range.clone(),
        }),
        Encoding::Gguf(ty) => Err(Error::Undecodable {
            path: path.to_owned(),
            tensor: t.name.clone(),
            ggml_type: ty.name(),
        }),
    }
}

/// `pytorch_model.bin.index.json`: the same checks as a safetensors index (plain shard names,
/// every listed tensor found in its shard, nothing unlisted).
fn open_torch_index(index: &Path) -> Result<Opened, Error> {
    let text = super::read_json_file(index)?;
    let invalid = |reason: String| Error::InvalidIndex {
        index: index.to_owned(),
        reason,
    };
    let raw: super::RawIndex = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
    let mut weight_map: HashMap<String, String> = HashMap::new();
    for (tensor, shard) in raw.weight_map.0 {
        let serde_json::Value::String(shard) = shard else {
            return Err(invalid(format!(
                "weight_map entry for `{tensor}` is not a string"
            )));
        };
        super::check_shard_name(index, &tensor, &shard)?;
        if let Some(first) = weight_map.insert(tensor.clone(), shard.clone()) {
            return Err(Error::DuplicateInIndex {
                index: index.to_owned(),
                tensor,
                first,
                second: shard,
            });
        }
    }
    let root = super::parent_dir(index);
    let mut names: Vec<&String> = weight_map.values().collect();
    names.sort_by(|a, b| super::natural_cmp(a, b));
    names.dedup();
    let paths: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    for (path, name) in paths.iter().zip(&names) {
        if entry_kind(path)? == Entry::Absent {
            let tensor = weight_map
                .iter()
                .find(|(_, s)| s == name)
                .map(|(t, _)| t.clone())
                .unwrap_or_default();
            return Err(Error::MissingShard {
                index: index.to_owned(),
                shard: (*name).clone(),
                tensor,
            });
        }
    }
    let opened = open_plain(
        &paths,
        Format::PytorchBin,
        Source::Sharded {
            index: index.to_owned(),
            metadata: Default::default(),
        },
    )?;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for t in &opened.tensors {
        let shard_path = &opened.shards[t.shard].path;
        if let Some(&prev) = seen.get(t.name.as_str()) {
            return Err(Error::DuplicateAcrossShards {
                tensor: t.name.clone(),
                first: opened.shards[prev].path.clone(),
                second: shard_path.clone(),
            });
        }
        seen.insert(&t.name, t.shard);
        match weight_map.get(&t.name) {
            None => {
                return Err(Error::NotInIndex {
                    shard: shard_path.clone(),
                    tensor: t.name.clone(),
                    index: index.to_owned(),
                })
            }
            Some(listed) if root.join(listed) != *shard_path => {
                return Err(Error::WrongShard {
                    index: index.to_owned(),
                    tensor: t.name.clone(),
                    listed: listed.clone(),
                    found: shard_path.clone(),
                })
            }
            Some(_) => {}
        }
    }
    if let Some((tensor, shard)) = weight_map
        .iter()
        .find(|(t, _)| !seen.contains_key(t.as_str()))
    {
        return Err(Error::NotInShard {
            index: index.to_owned(),
            tensor: tensor.clone(),
            shard: root.join(shard),
        });
    }
    let mut metadata = std::collections::BTreeMap::new();
    for (k, v) in raw.metadata.0 {
        let v = match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        metadata.insert(k, v);
    }
    Ok(Opened {
        source: Source::Sharded {
            index: index.to_owned(),
            metadata,
        },
        ..opened
    })
}

/// A GGUF file: plain tensors in place (shapes listed in numpy order, the reverse of `ne`),
/// Q8_0/Q4_0 assembled as F32, other block types listed as undecodable.
fn open_gguf(path: &Path) -> Result<Opened, Error> {
    let mut shard = map_file(path)?;
    let raw = parse(&shard, formats::Format::Gguf)?;
    let mut tensors = Vec::new();
    let mut undecodable = Vec::new();
    let mut plan = Vec::new();
    for t in &raw.tensors {
        let shape: Vec<usize> = t.shape.iter().rev().copied().collect();
        match t.encoding {
            Encoding::Plain(_) => tensors.push(plain_info(path, t, 0, shape)?),
            Encoding::Gguf(ty @ (GgmlType::Q8_0 | GgmlType::Q4_0)) => plan.push((
                t.name.clone(),
                shape,
                Recipe::Dequant {
                    ty,
                    shard: 0,
                    range: t.range.clone(),
                },
            )),
            Encoding::Gguf(ty) => undecodable.push(Undecodable {
                name: t.name.clone(),
                ggml_type: ty.name(),
                shape,
            }),
        }
    }
    shard.tensor_count = raw.tensors.len();
    shard.metadata = metadata_strings(&raw.metadata);
    let mut shards = vec![shard];
    let assembled = Assembled::create(path, plan, &mut shards, &mut tensors)?;
    let config = hfconfig::from_gguf(&raw).map(|r| (r, path.to_owned()));
    Ok(Opened {
        source: Source::SingleFile,
        shards,
        tensors,
        format: Format::Gguf,
        assembled,
        undecodable,
        config,
    })
}

/// Meta's shards: one shard is read in place; several are combined as the fairscale layers
/// split them (concatenated tensors assembled, replicated ones checked equal and read from the
/// first shard).
fn open_meta(params_path: &Path, paths: &[PathBuf]) -> Result<Opened, Error> {
    let text = super::read_json_file(params_path)?;
    let meta_err = |source| Error::Meta {
        path: params_path.to_owned(),
        source: Box::new(source),
    };
    let params = MetaParams::parse(&String::from_utf8_lossy(&text)).map_err(meta_err)?;
    let mut shards = Vec::new();
    let mut raws = Vec::new();
    for path in paths {
        let shard = map_file(path)?;
        raws.push(parse_torch(&shard)?);
        shards.push(shard);
    }
    let plans = meta::plan_shards(&params, &raws).map_err(meta_err)?;
    let mut tensors = Vec::new();
    let mut plan = Vec::new();
    for p in &plans {
        let parts: Vec<&formats::RawTensor> =
            raws.iter().filter_map(|r| r.tensor(&p.name)).collect();
        let (Some(first), Encoding::Plain(dtype)) = (parts.first(), p.encoding) else {
            return Err(Error::Meta {
                path: params_path.to_owned(),
                source: Box::new(meta::MetaError::NoShards),
            });
        };
        match p.combine {
            _ if parts.len() == 1 => {
                tensors.push(plain_info(&shards[0].path, first, 0, p.shape.clone())?)
            }
            Combine::Replicated => {
                let bytes: Vec<&[u8]> = parts
                    .iter()
                    .zip(&shards)
                    .map(|(t, s)| &s.map[t.range.clone()])
                    .collect();
                meta::check_replicas(&p.name, &bytes).map_err(meta_err)?;
                tensors.push(plain_info(&shards[0].path, first, 0, p.shape.clone())?);
            }
            Combine::Concat { axis } => plan.push((
                p.name.clone(),
                p.shape.clone(),
                Recipe::Concat {
                    axis,
                    dtype,
                    parts: parts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (i, t.range.clone(), t.shape.clone()))
                        .collect(),
                },
            )),
        }
    }
    for (shard, raw) in shards.iter_mut().zip(&raws) {
        shard.tensor_count = raw.tensors.len();
        shard.metadata = metadata_strings(&raw.metadata);
    }
    shards.iter().try_for_each(Shard::check_intact)?;
    let vocab = plans
        .iter()
        .find(|p| p.name == "tok_embeddings.weight")
        .and_then(|p| p.shape.first().copied());
    let source = if paths.len() == 1 {
        Source::SingleFile
    } else {
        Source::Sharded {
            index: params_path.to_owned(),
            metadata: Default::default(),
        }
    };
    let assembled = Assembled::create(params_path, plan, &mut shards, &mut tensors)?;
    Ok(Opened {
        source,
        shards,
        tensors,
        format: Format::Meta,
        assembled,
        undecodable: Vec::new(),
        config: Some((hfconfig::from_meta(&params, vocab), params_path.to_owned())),
    })
}

/// How an assembled tensor is made.
#[derive(Debug)]
enum Recipe {
    /// Dequantize `range` of `shard` (ggml blocks of `ty`) to F32.
    Dequant {
        ty: GgmlType,
        shard: usize,
        range: Range<usize>,
    },
    /// Concatenate parts (shard, byte range, shape) along `axis`.
    Concat {
        axis: usize,
        dtype: Dtype,
        parts: Vec<(usize, Range<usize>, Vec<usize>)>,
    },
}

#[derive(Debug)]
struct Job {
    recipe: Recipe,
    out: Range<usize>,
    done: OnceLock<Result<(), String>>,
}

/// The tensors assembled on first read, and the shard (a temporary file) that holds them.
#[derive(Debug)]
pub(super) struct Assembled {
    /// Index of the temporary shard.
    pub shard: usize,
    jobs: HashMap<String, Job>,
}

impl Assembled {
    /// Lays out `plan` (name, shape, recipe) in a new sparse temporary file, appends it to
    /// `shards` and the tensors to `tensors`. `None` when there is nothing to assemble.
    fn create(
        origin: &Path,
        plan: Vec<(String, Vec<usize>, Recipe)>,
        shards: &mut Vec<Shard>,
        tensors: &mut Vec<TensorInfo>,
    ) -> Result<Option<Assembled>, Error> {
        if plan.is_empty() {
            return Ok(None);
        }
        let shard = shards.len();
        let mut jobs = HashMap::new();
        let mut end = 0usize;
        for (name, shape, recipe) in plan {
            let dtype = match &recipe {
                Recipe::Dequant { .. } => Dtype::F32,
                Recipe::Concat { dtype, .. } => *dtype,
            };
            let len = formats::checked_numel(&shape)
                .and_then(|n| dtype.checked_size(n))
                .ok_or_else(|| Error::Assemble {
                    path: origin.to_owned(),
                    tensor: name.clone(),
                    reason: format!("shape {shape:?} overflows"),
                })?;
            // 64-byte aligned starts, so every assembled tensor can be read in place as f32.
            let start = end.div_ceil(64).checked_mul(64);
            let stop = start.and_then(|s| s.checked_add(len));
            let (Some(start), Some(stop)) = (start, stop) else {
                return Err(Error::Assemble {
                    path: origin.to_owned(),
                    tensor: name,
                    reason: "the assembled tensors overflow".into(),
                });
            };
            end = stop;
            tensors.push(TensorInfo {
                name: name.clone(),
                dtype,
                shape,
                shard,
                range: start..stop,
            });
            jobs.insert(
                name,
                Job {
                    recipe,
                    out: start..stop,
                    done: OnceLock::new(),
                },
            );
        }
        let io = |source| Error::Io {
            path: std::env::temp_dir(),
            source,
        };
        let file = tempfile::tempfile().map_err(io)?;
        file.set_len(end as u64).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        // SAFETY: an unlinked temporary file that no other process can name. This process
        // writes each range once (`Assembled::ensure`, with `pwrite`, never through the map)
        // before any slice of that range is handed out, and never again; its length is fixed
        // here. A shared read-only mapping sees those writes.
        let map = unsafe { GuardedMap::new(&file) }.map_err(io)?;
        shards.push(Shard {
            path: PathBuf::from(format!("{} (assembled)", origin.display())),
            header_len: 0,
            metadata: Default::default(),
            tensor_count: jobs.len(),
            map,
            file,
            modified: meta.modified().ok(),
            assembled: true,
        });
        Ok(Some(Assembled { shard, jobs }))
    }

    /// Writes `t` into the temporary file unless it already is there. A failure is kept and
    /// reported by [`Assembled::check`] (the bytes then read as zeros).
    pub fn ensure(&self, shards: &[Shard], t: &TensorInfo) {
        if let Some(job) = self.jobs.get(&t.name) {
            job.done
                .get_or_init(|| run(job, shards, &shards[self.shard].file));
        }
    }

    /// The recipe of a tensor dequantized from ggml blocks: type, shard and byte range.
    fn dequant(&self, name: &str) -> Option<(GgmlType, usize, &Range<usize>)> {
        match &self.jobs.get(name)?.recipe {
            Recipe::Dequant { ty, shard, range } => Some((*ty, *shard, range)),
            Recipe::Concat { .. } => None,
        }
    }

    /// The first assembly that failed, as an error naming the tensor.
    pub fn check(&self, shards: &[Shard]) -> Result<(), Error> {
        for (name, job) in &self.jobs {
            if let Some(Err(reason)) = job.done.get() {
                return Err(Error::Assemble {
                    path: shards[self.shard].path.clone(),
                    tensor: name.clone(),
                    reason: reason.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Output is produced and written in pieces of about this many bytes.
const PIECE: usize = 8 << 20;

fn run(job: &Job, shards: &[Shard], out: &File) -> Result<(), String> {
    let write = |buf: &[u8], at: usize| {
        out.write_all_at(buf, at as u64)
            .map_err(|e| format!("cannot write the temporary file: {e}"))
    };
    let src = |shard: usize, range: &Range<usize>| -> Result<&[u8], String> {
        shards
            .get(shard)
            .and_then(|s| s.map.get(range.clone()))
            .ok_or_else(|| "source range outside its file".to_string())
    };
    match &job.recipe {
        Recipe::Dequant { ty, shard, range } => {
            let bytes = src(*shard, range)?;
            let block_bytes = ty.type_size();
            let block = ty.block_size();
            let blocks_per_piece = (PIECE / 4 / block).max(1);
            let mut vals = vec![0f32; blocks_per_piece * block];
            let mut at = job.out.start;
            let mut from = range.start;
            for chunk in bytes.chunks(blocks_per_piece * block_bytes) {
                let n = chunk.len() / block_bytes * block;
                quant::dequantize(*ty, chunk, &mut vals[..n]).map_err(|e| e.to_string())?;
                write(bytemuck::cast_slice(&vals[..n]), at)?;
                // The blocks are read once: keep their mapped pages out of the RSS.
                shards[*shard].advise_dont_need(from..from + chunk.len());
                from += chunk.len();
                at += n * 4;
            }
            Ok(())
        }
        Recipe::Concat { axis, dtype, parts } => {
            let outer: usize = parts
                .first()
                .map(|(_, _, s)| s[..*axis].iter().product())
                .unwrap_or(0);
            let inner: Vec<usize> = parts
                .iter()
                .map(|(_, _, s)| {
                    formats::checked_numel(&s[*axis..])
                        .and_then(|n| dtype.checked_size(n))
                        .unwrap_or(0)
                })
                .collect();
            let srcs: Vec<&[u8]> = parts
                .iter()
                .map(|(s, r, _)| src(*s, r))
                .collect::<Result<_, _>>()?;
            let mut buf = Vec::with_capacity(PIECE);
            let mut at = job.out.start;
            for o in 0..outer {
                for (s, &n) in srcs.iter().zip(&inner) {
                    let piece = s
                        .get(o * n..(o + 1) * n)
                        .ok_or_else(|| "a part is shorter than its shape".to_string())?;
                    buf.extend_from_slice(piece);
                }
                if buf.len() >= PIECE {
                    write(&buf, at)?;
                    at += buf.len();
                    buf.clear();
                }
            }
            write(&buf, at)
        }
    }
}

/// Metadata values as the strings `inspect` lists: arrays summarized by type and length, long
/// strings cut.
fn metadata_strings(meta: &[(String, MetaValue)]) -> std::collections::BTreeMap<String, String> {
    meta.iter().map(|(k, v)| (k.clone(), show(v))).collect()
}

fn show(v: &MetaValue) -> String {
    const MAX: usize = 120;
    match v {
        MetaValue::Str(s) if s.chars().count() > MAX => {
            let cut: String = s.chars().take(MAX).collect();
            format!("{cut}… ({} bytes)", s.len())
        }
        MetaValue::Str(s) => s.clone(),
        MetaValue::Array(a) => show_array(a),
        MetaValue::Bool(b) => b.to_string(),
        MetaValue::None => "None".into(),
        MetaValue::F32(f) => f.to_string(),
        MetaValue::F64(f) => f.to_string(),
        other => other
            .as_u64()
            .map(|u| u.to_string())
            .or_else(|| other.as_f64().map(|f| f.to_string()))
            .unwrap_or_default(),
    }
}

fn show_array(a: &MetaArray) -> String {
    if a.len() <= 8 && !matches!(a, MetaArray::Arrays(_)) {
        let items: Vec<String> = (0..a.len())
            .filter_map(|i| a.get(i))
            .map(|v| show(&v))
            .collect();
        format!("[{}]", items.join(", "))
    } else {
        format!("[{} × {}]", a.len(), a.elem_type_name())
    }
}

/// A GGUF tensor stored block-quantized (Q8_0, Q4_0), seen as its blocks: what
/// [`Checkpoint::quantized`] gives a reader that decodes values itself.
///
/// Why: such a tensor reads as F32 through the temporary file of assembled tensors, which
/// dequantizes it whole on first read. A reader that streams each value once (`convert`)
/// would then write every byte twice, once into that file and once into its output, and
/// the write is what costs: decoding the blocks straight into the output instead halves it.
#[derive(Debug, Clone, Copy)]
pub struct Quantized<'a> {
    ckpt: &'a Checkpoint,
    tensor: &'a TensorInfo,
    ty: GgmlType,
    shard: usize,
    blocks: &'a [u8],
}

impl Quantized<'_> {
    /// The ggml type of the blocks.
    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Decodes values `first..first + out.len()` of the tensor (row-major order, as the F32
    /// tensor reads) into `out`, bit for bit as the temporary file holds them. An error
    /// names the file and the tensor.
    pub fn decode(&self, first: usize, out: &mut [f32]) -> Result<(), Error> {
        quant::dequantize_range(self.ty, self.blocks, first, out).map_err(|e| Error::Assemble {
            path: self.path().to_owned(),
            tensor: self.tensor.name.clone(),
            reason: e.to_string(),
        })
    }

    /// Tells the kernel this process is done with the mapped blocks holding values
    /// `values` (advice, as [`Checkpoint::release_part`]): streaming a large tensor keeps
    /// resident memory bounded.
    pub fn release(&self, values: Range<usize>) {
        let Some(bytes) = quant::block_bytes(self.ty, values) else {
            return;
        };
        if let Some(part) = self.blocks.get(bytes) {
            let base = self.ckpt.shards[self.shard].map.as_ptr() as usize;
            let start = part.as_ptr() as usize - base;
            self.ckpt
                .advise_dont_need(self.shard, start..start + part.len());
        }
    }

    /// The file the blocks are read from.
    pub fn path(&self) -> &Path {
        &self.ckpt.shards[self.shard].path
    }
}

impl Checkpoint {
    /// The blocks of `t` when it is a GGUF tensor stored block-quantized (Q8_0, Q4_0)
    /// that reads as F32 through the temporary file of assembled tensors; `None` for every
    /// other tensor. Reading the blocks through [`Quantized::decode`] never writes that file.
    pub fn quantized<'a>(&'a self, t: &'a TensorInfo) -> Option<Quantized<'a>> {
        let a = self.assembled.as_ref()?;
        if t.shard != a.shard {
            return None;
        }
        let (ty, shard, range) = a.dequant(&t.name)?;
        let blocks = self.shards.get(shard)?.map.get(range.clone())?;
        Some(Quantized {
            ckpt: self,
            tensor: t,
            ty,
            shard,
            blocks,
        })
    }

    /// The format the checkpoint was stored in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// GGUF tensors stored in ggml types orient cannot decode (listed, never read).
    pub fn undecodable(&self) -> &[Undecodable] {
        &self.undecodable
    }

    /// Refuses a checkpoint that holds tensors orient cannot decode (for commands that read
    /// every tensor's values: run, verify, convert, diff), naming the first and its type.
    pub fn check_decodable(&self) -> Result<(), Error> {
        match self.undecodable.first() {
            None => Ok(()),
            Some(u) => Err(Error::Undecodable {
                path: self
                    .shards
                    .first()
                    .map(|s| s.path.clone())
                    .unwrap_or_default(),
                tensor: u.name.clone(),
                ggml_type: u.ggml_type,
            }),
        }
    }

    /// Makes sure an assembled tensor's bytes are in place before they are read other than
    /// through [`Checkpoint::view`] (a kernel copy from [`Shard::file`]). A no-op for tensors
    /// read in place.
    pub fn prepare(&self, t: &TensorInfo) {
        if let Some(a) = &self.assembled {
            if t.shard == a.shard {
                a.ensure(&self.shards, t);
            }
        }
    }
}
