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
use orient_inspect::{Checkpoint, Source};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::ForwardOutput;

/// Why a reference file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// I/O on the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {source}")]
    Format {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: safetensors::SafeTensorError,
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
}

/// A stored 2-D shape `[rows, cols]`.
type Shape2 = [usize; 2];
/// A tensor's f32 values and its 2-D shape.
type Stored = (Vec<f32>, Shape2);

/// The F32 2-D tensor `name` with its shape, `None` when absent.
fn f32_tensor(
    st: &SafeTensors<'_>,
    path: &str,
    name: &str,
    width: Option<usize>,
) -> Result<Option<Stored>, ReferenceError> {
    let Ok(t) = st.tensor(name) else {
        return Ok(None);
    };
    let shape = match (t.dtype(), t.shape()) {
        (Dtype::F32, [rows, cols]) if width.is_none_or(|w| *cols == w) => [*rows, *cols],
        _ => {
            return Err(ReferenceError::Malformed {
                path: path.to_string(),
                name: name.to_string(),
                dtype: format!("{:?}", t.dtype()),
                shape: t.shape().to_vec(),
                expected: "F32 [T, width]".to_string(),
            })
        }
    };
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some((data, shape)))
}

/// `prefix.0`, `prefix.1`, … up to the first absent index, refusing any `prefix.N` stored
/// beyond that gap.
fn numbered(
    st: &SafeTensors<'_>,
    path: &str,
    prefix: &str,
) -> Result<(Vec<Vec<f32>>, Vec<Shape2>), ReferenceError> {
    let (mut data, mut shapes) = (Vec::new(), Vec::new());
    while let Some((d, s)) = f32_tensor(st, path, &format!("{prefix}.{}", data.len()), None)? {
        data.push(d);
        shapes.push(s);
    }
    let beyond = st.names().into_iter().find(|name| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i > data.len())
    });
    if let Some(name) = beyond {
        return Err(ReferenceError::Gap {
            path: path.to_string(),
            name: name.to_string(),
            missing: format!("{prefix}.{}", data.len()),
        });
    }
    Ok((data, shapes))
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
        let (_, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|source| ReferenceError::Format {
                path: p.clone(),
                source,
            })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).map_err(|source| ReferenceError::Format {
            path: p.clone(),
            source,
        })?;
        let ids = st
            .tensor("input_ids")
            .map_err(|_| ReferenceError::Missing {
                path: p.clone(),
                name: "input_ids".into(),
            })?;
        if ids.dtype() != Dtype::I64 || ids.shape().len() != 1 {
            return Err(ReferenceError::Malformed {
                path: p,
                name: "input_ids".into(),
                dtype: format!("{:?}", ids.dtype()),
                shape: ids.shape().to_vec(),
                expected: "I64 [T]".into(),
            });
        }
        let mut input_ids = Vec::new();
        for (position, c) in ids.data().chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            let value = i64::from_le_bytes(b);
            let id = u32::try_from(value).map_err(|_| ReferenceError::BadToken {
                path: p.clone(),
                position,
                value,
            })?;
            input_ids.push(id);
        }
        let t = input_ids.len();
        let logits_view = st.tensor("logits").map_err(|_| ReferenceError::Missing {
            path: p.clone(),
            name: "logits".into(),
        })?;
        let vocab_size = match logits_view.shape() {
            [rows, v] if *rows == t => *v,
            other => {
                return Err(ReferenceError::Malformed {
                    path: p,
                    name: "logits".into(),
                    dtype: format!("{:?}", logits_view.dtype()),
                    shape: other.to_vec(),
                    expected: format!("F32 [{t}, V]"),
                })
            }
        };
        let logits = f32_tensor(&st, &p, "logits", Some(vocab_size))?
            .map(|(data, _)| data)
            .unwrap_or_default();
        let (hidden_states, hidden_state_shapes) = numbered(&st, &p, "hidden_states")?;
        let (layer_outputs, layer_output_shapes) = numbered(&st, &p, "layer_output")?;
        Ok(Reference {
            input_ids,
            logits,
            vocab_size,
            hidden_states,
            hidden_state_shapes,
            layer_outputs,
            layer_output_shapes,
            metadata,
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
    let t = out.len();
    let h = out.hidden_size;
    let ids: Vec<u8> = out
        .tokens
        .iter()
        .flat_map(|&x| i64::from(x).to_le_bytes())
        .collect();
    let as_bytes = |x: &[f32]| -> Vec<u8> { x.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
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
    let mut views = Vec::new();
    for (name, dtype, shape, data) in &owned {
        let v = TensorView::new(*dtype, shape.clone(), data).map_err(|source| {
            ReferenceError::Format {
                path: p.clone(),
                source,
            }
        })?;
        views.push((name.clone(), v));
    }
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|source| ReferenceError::Format {
            path: p.clone(),
            source,
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
