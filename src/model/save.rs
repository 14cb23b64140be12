//! Reading transformers reference files and writing our own in the same format.
//!
//! The format is the fixtures' `reference.safetensors`: `input_ids` (I64 `[T]`), `logits`
//! (F32 `[T, V]`), `hidden_states.{i}` (F32 `[T, H]`, transformers' `output_hidden_states`) and
//! `layer_output.{i}` (each decoder layer's raw output), so that `orient verify --reference`
//! reads a file written by `orient run --save` as readily as one written by transformers.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use orient_convert::convert::COMPANION_FILES;
use orient_inspect::header::{self, HeaderError, HeaderTensor};
use orient_inspect::write::{self, WriteError};
use orient_inspect::{Checkpoint, Dtype, Source};

use super::ForwardOutput;

/// Why a reference file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// I/O on the file.
    #[error("{path}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid safetensors file.
    #[error("{path}: not a valid safetensors file")]
    Format {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: HeaderError,
    },
    /// The forward cannot be written as safetensors (a bug: its sizes are the model's).
    #[error("{path}")]
    Write {
        /// The file.
        path: String,
        /// The writer's error.
        #[source]
        source: WriteError,
    },
    /// A required tensor is absent.
    #[error("{path}: no `{name}` tensor")]
    Missing {
        /// The file.
        path: String,
        /// The tensor.
        name: String,
    },
    /// A tensor has the wrong dtype or shape.
    #[error("{path}: `{name}` is {dtype} {shape:?}, expected {expected}")]
    Malformed {
        /// The file.
        path: String,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// The file to write exists and replacing it was not asked for.
    #[error("{path} already exists (use --force to replace it)")]
    Exists {
        /// The file.
        path: String,
    },
    /// The file to write is a folder.
    #[error("{path} is a folder; name a file to write")]
    IsFolder {
        /// The path.
        path: String,
    },
    /// The file to write is one of the files of the model being read.
    #[error(
        "refusing to write {path}: it is {file}, part of the model being read (even with --force)"
    )]
    PartOfModel {
        /// The file given.
        path: String,
        /// The model's file it is (after links).
        file: String,
    },
    /// A numbered tensor after a gap in the numbering (e.g. `hidden_states.2` without
    /// `hidden_states.1`): which stage it belongs to cannot be known.
    #[error("{path}: `{name}` is present but `{missing}` is not; the numbering must have no gaps")]
    Gap {
        /// The file.
        path: String,
        /// The tensor after the gap.
        name: String,
        /// The first missing one.
        missing: String,
    },
    /// A reference of the other kind: an encoder's (hidden states and `pooler_output`, no
    /// `logits`) for a decoder, or a decoder's for an encoder.
    #[error("{path} is {is}, but the model is {model}")]
    WrongKind {
        /// The file.
        path: String,
        /// What the file is.
        is: &'static str,
        /// What the model is.
        model: &'static str,
    },
    /// A token id that is negative or too large.
    #[error("{path}: input_ids[{position}] = {value} is not a valid token id")]
    BadToken {
        /// The file.
        path: String,
        /// Position.
        position: usize,
        /// The value.
        value: i64,
    },
}

/// A stored forward: what transformers (or `orient run --save`) computed.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    /// The prompt.
    pub input_ids: Vec<u32>,
    /// `[T, V]`.
    pub logits: Vec<f32>,
    /// V.
    pub vocab_size: usize,
    /// `hidden_states.{i}`, each `[T, H]` once checked, in index order (may be empty).
    pub hidden_states: Vec<Vec<f32>>,
    /// The stored shape of each of `hidden_states` (2-D; checked against the model by
    /// [`super::compare::check_reference`]).
    pub hidden_state_shapes: Vec<[usize; 2]>,
    /// `layer_output.{i}`, each `[T, H]` once checked (may be empty).
    pub layer_outputs: Vec<Vec<f32>>,
    /// The stored shape of each of `layer_outputs`.
    pub layer_output_shapes: Vec<[usize; 2]>,
    /// `__metadata__`.
    pub metadata: HashMap<String, String>,
    /// What an encoder reference (BERT: no `logits`) holds instead; `None` for a decoder's.
    pub encoder: Option<EncoderReference>,
}

/// An encoder's reference (transformers' `BertModel`): its inputs besides the token ids, the
/// hidden states it stores (a bf16 twin keeps only the last) and the pooler output.
#[derive(Clone, Debug, Default)]
pub struct EncoderReference {
    /// `token_type_ids` (I64 `[T]`), when stored.
    pub token_type_ids: Option<Vec<u32>>,
    /// `attention_mask` (I64 `[T]`, 0 for padding), when stored.
    pub attention_mask: Option<Vec<bool>>,
    /// `hidden_states.{i}` by index, each with its stored shape: 0 the embedding output, i the
    /// output of layer i-1 (the last is `last_hidden_state`).
    pub hidden: std::collections::BTreeMap<usize, (Vec<f32>, [usize; 2])>,
    /// `pooler_output` (F32 `[H]`), when stored.
    pub pooler_output: Option<Vec<f32>>,
}

/// A stored 2-D shape `[rows, cols]`.
type Shape2 = [usize; 2];
/// A tensor's f32 values and its 2-D shape.
type Stored = (Vec<f32>, Shape2);

/// A reference file read into memory and its validated header (orient's own reader: the
/// offsets tile the data, every size is checked).
struct RefFile<'a> {
    path: &'a str,
    bytes: &'a [u8],
    header: header::Header,
}

impl RefFile<'_> {
    fn get(&self, name: &str) -> Option<&HeaderTensor> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The data bytes of `t` (inside the file: the header was validated against its length).
    fn data(&self, t: &HeaderTensor) -> &[u8] {
        let (s, e) = t.data_offsets;
        &self.bytes[self.header.data_start + s..self.header.data_start + e]
    }

    fn malformed(&self, t: &HeaderTensor, expected: String) -> ReferenceError {
        ReferenceError::Malformed {
            path: self.path.to_string(),
            name: t.name.clone(),
            dtype: t.dtype.name().to_string(),
            shape: t.shape.clone(),
            expected,
        }
    }

    fn missing(&self, name: &str) -> ReferenceError {
        ReferenceError::Missing {
            path: self.path.to_string(),
            name: name.to_string(),
        }
    }

    /// The F32 2-D tensor `name` with its shape, `None` when absent.
    fn f32_tensor(
        &self,
        name: &str,
        width: Option<usize>,
    ) -> Result<Option<Stored>, ReferenceError> {
        let Some(t) = self.get(name) else {
            return Ok(None);
        };
        let shape = match (t.dtype, t.shape.as_slice()) {
            (Dtype::F32, [rows, cols]) if width.is_none_or(|w| *cols == w) => [*rows, *cols],
            _ => return Err(self.malformed(t, "F32 [T, width]".to_string())),
        };
        let data = self
            .data(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Some((data, shape)))
    }

    /// `prefix.0`, `prefix.1`, … up to the first absent index, refusing any `prefix.N` stored
    /// beyond that gap.
    fn numbered(&self, prefix: &str) -> Result<(Vec<Vec<f32>>, Vec<Shape2>), ReferenceError> {
        let (mut data, mut shapes) = (Vec::new(), Vec::new());
        while let Some((d, s)) = self.f32_tensor(&format!("{prefix}.{}", data.len()), None)? {
            data.push(d);
            shapes.push(s);
        }
        let beyond = self.header.tensors.iter().find(|t| {
            t.name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i > data.len())
        });
        if let Some(t) = beyond {
            return Err(ReferenceError::Gap {
                path: self.path.to_string(),
                name: t.name.clone(),
                missing: format!("{prefix}.{}", data.len()),
            });
        }
        Ok((data, shapes))
    }

    /// `input_ids` (I64 `[T]`) as token ids.
    fn input_ids(&self) -> Result<Vec<u32>, ReferenceError> {
        self.ids("input_ids", None)?
            .ok_or_else(|| self.missing("input_ids"))
    }

    /// The I64 `[T]` tensor `name` as non-negative ids (`t`: the length it must have), `None`
    /// when absent.
    fn ids(&self, name: &str, t: Option<usize>) -> Result<Option<Vec<u32>>, ReferenceError> {
        let Some(ids) = self.get(name) else {
            return Ok(None);
        };
        let fits = match (ids.shape.as_slice(), t) {
            ([n], Some(t)) => *n == t,
            ([_], None) => true,
            _ => false,
        };
        if ids.dtype != Dtype::I64 || !fits {
            let len = t.map_or("T".to_string(), |t| t.to_string());
            return Err(self.malformed(ids, format!("I64 [{len}]")));
        }
        self.data(ids)
            .chunks_exact(8)
            .enumerate()
            .map(|(position, c)| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                let value = i64::from_le_bytes(b);
                u32::try_from(value).map_err(|_| ReferenceError::BadToken {
                    path: self.path.to_string(),
                    position,
                    value,
                })
            })
            .collect::<Result<Vec<u32>, _>>()
            .map(Some)
    }

    /// What an encoder reference holds: its inputs, every `hidden_states.{i}` present (in any
    /// numbering: a bf16 twin stores only the last) and `pooler_output`; `None` when it has
    /// none of the outputs.
    fn encoder(&self, t: usize) -> Result<Option<EncoderReference>, ReferenceError> {
        let mut hidden = std::collections::BTreeMap::new();
        for h in &self.header.tensors {
            let Some(i) = h
                .name
                .strip_prefix("hidden_states.")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                continue;
            };
            if let Some(stored) = self.f32_tensor(&h.name, None)? {
                hidden.insert(i, stored);
            }
        }
        let pooler_output = match self.get("pooler_output") {
            Some(p) if p.dtype == Dtype::F32 && p.shape.len() == 1 => Some(
                self.data(p)
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Some(p) => return Err(self.malformed(p, "F32 [H]".to_string())),
            None => None,
        };
        if hidden.is_empty() && pooler_output.is_none() {
            return Ok(None);
        }
        let attention_mask = self
            .ids("attention_mask", Some(t))?
            .map(|m| m.into_iter().map(|v| v != 0).collect());
        Ok(Some(EncoderReference {
            token_type_ids: self.ids("token_type_ids", Some(t))?,
            attention_mask,
            hidden,
            pooler_output,
        }))
    }
}

impl Reference {
    /// Reads a reference file.
    pub fn read(path: &Path) -> Result<Reference, ReferenceError> {
        let p = path.display().to_string();
        // Regular files only: a FIFO passed as the reference would block forever.
        let bytes = orient_inspect::file::read_regular(path, u64::MAX).map_err(|source| {
            ReferenceError::Io {
                path: p.clone(),
                source,
            }
        })?;
        let header = header::parse(&bytes).map_err(|source| ReferenceError::Format {
            path: p.clone(),
            source,
        })?;
        let file = RefFile {
            path: &p,
            bytes: &bytes,
            header,
        };
        let input_ids = file.input_ids()?;
        let t = input_ids.len();
        if file.get("logits").is_none() {
            // an encoder's reference: hidden states and the pooler, no logits
            if let Some(encoder) = file.encoder(t)? {
                return Ok(Reference {
                    input_ids,
                    metadata: file.header.metadata.into_iter().collect(),
                    encoder: Some(encoder),
                    ..Reference::default()
                });
            }
        }
        let logits_t = file.get("logits").ok_or_else(|| file.missing("logits"))?;
        let vocab_size = match logits_t.shape.as_slice() {
            [rows, v] if *rows == t => *v,
            _ => return Err(file.malformed(logits_t, format!("F32 [{t}, V]"))),
        };
        let logits = file
            .f32_tensor("logits", Some(vocab_size))?
            .map(|(data, _)| data)
            .unwrap_or_default();
        let (hidden_states, hidden_state_shapes) = file.numbered("hidden_states")?;
        let (layer_outputs, layer_output_shapes) = file.numbered("layer_output")?;
        Ok(Reference {
            input_ids,
            logits,
            vocab_size,
            hidden_states,
            hidden_state_shapes,
            layer_outputs,
            layer_output_shapes,
            metadata: file.header.metadata.into_iter().collect(),
            encoder: None,
        })
    }
}

/// Checks, before any work, that `path` may receive a saved forward of `ckpt`: it must
/// not exist unless `replace`, must not be a folder, and must never be one of the
/// model's own files (its shards, index, `config.json`, or the companion files beside
/// them), whatever path, link or hard link names it: files are compared by device and
/// inode.
pub fn check_target(ckpt: &Checkpoint, path: &Path, replace: bool) -> Result<(), ReferenceError> {
    let p = path.display().to_string();
    // A dangling link exists too: the rename would replace it.
    if path.symlink_metadata().is_err() {
        return Ok(());
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(ReferenceError::Io { path: p, source }),
    };
    if let Some(meta) = &meta {
        if meta.is_dir() {
            return Err(ReferenceError::IsFolder { path: p });
        }
        for file in model_files(ckpt) {
            let same = std::fs::metadata(&file)
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
            if same {
                return Err(ReferenceError::PartOfModel {
                    path: p,
                    file: file.display().to_string(),
                });
            }
        }
    }
    if !replace {
        return Err(ReferenceError::Exists { path: p });
    }
    Ok(())
}

/// Every file of the model `ckpt` was opened from.
fn model_files(ckpt: &Checkpoint) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ckpt.shards().iter().map(|s| s.path.clone()).collect();
    if let Source::Sharded { index, .. } = ckpt.source() {
        files.push(index.clone());
    }
    files.extend(ckpt.config_path().map(Path::to_path_buf));
    files.extend(COMPANION_FILES.iter().map(|n| ckpt.root().join(n)));
    files
}

/// The tensors of the reference format for a recorded forward: (name, dtype, shape, bytes).
fn reference_tensors(out: &ForwardOutput) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let (t, h) = (out.len(), out.hidden_size);
    let ids: Vec<u8> = out
        .tokens
        .iter()
        .flat_map(|&x| i64::from(x).to_le_bytes())
        .collect();
    let as_bytes = |x: &[f32]| -> Vec<u8> { x.iter().flat_map(|v| v.to_le_bytes()).collect() };
    if out.logits.is_empty() {
        // an encoder: its hidden states (the last is `last_hidden_state`) and the pooler
        let mut owned = vec![("input_ids".into(), Dtype::I64, vec![t], ids)];
        for (i, hs) in out.hidden_states().iter().enumerate() {
            owned.push((
                format!("hidden_states.{i}"),
                Dtype::F32,
                vec![t, h],
                as_bytes(hs),
            ));
        }
        if !out.pooler_output.is_empty() {
            owned.push((
                "pooler_output".into(),
                Dtype::F32,
                vec![out.pooler_output.len()],
                as_bytes(&out.pooler_output),
            ));
        }
        return owned;
    }
    let mut owned = vec![
        ("input_ids".into(), Dtype::I64, vec![t], ids),
        (
            "logits".into(),
            Dtype::F32,
            vec![t, out.vocab_size],
            as_bytes(&out.logits),
        ),
    ];
    for (i, hs) in out.hidden_states().iter().enumerate() {
        owned.push((
            format!("hidden_states.{i}"),
            Dtype::F32,
            vec![t, h],
            as_bytes(hs),
        ));
    }
    for (i, layer) in out.layers.iter().enumerate() {
        owned.push((
            format!("layer_output.{i}"),
            Dtype::F32,
            vec![t, h],
            as_bytes(&layer.output),
        ));
    }
    owned
}

/// Writes `out` (a recorded forward) in the reference format, atomically: into a
/// temporary file beside `path`, fsynced, then renamed onto it (without `replace`, the
/// rename fails rather than replace a file that appeared meanwhile). Call
/// [`check_target`] first.
pub fn write(
    out: &ForwardOutput,
    path: &Path,
    metadata: HashMap<String, String>,
    replace: bool,
) -> Result<(), ReferenceError> {
    let p = path.display().to_string();
    let owned = reference_tensors(out);
    let tensors: Vec<write::Tensor<'_>> = owned
        .iter()
        .map(|(name, dtype, shape, data)| write::Tensor {
            name,
            dtype: *dtype,
            shape,
            data,
        })
        .collect();
    let bytes = write::to_bytes(&tensors, &metadata.into_iter().collect()).map_err(|source| {
        ReferenceError::Write {
            path: p.clone(),
            source,
        }
    })?;
    // Write beside the destination and rename, so a failure never leaves a partial file.
    let io = |source| ReferenceError::Io {
        path: p.clone(),
        source,
    };
    let dir = orient_inspect::checkpoint::parent_dir(path);
    // tempfile's default mode is 0600; the saved file gets what any new file gets
    // (0666 less the umask).
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io)?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    if replace {
        tmp.persist(path).map_err(|e| io(e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                ReferenceError::Exists { path: p.clone() }
            } else {
                io(e.error)
            }
        })?;
    }
    // The rename itself is durable only once the folder is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
