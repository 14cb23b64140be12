//! PyTorch checkpoints in the zip format (`torch.save` since torch 1.6):
//! `pytorch_model.bin`, `*.pth`, Meta's `consolidated.NN.pth`.
//!
//! The archive holds `<archive>/data.pkl` (the pickled object, read with the restricted
//! unpickler in [`super::pickle`]) and one entry `<archive>/data/<key>` per storage.
//! Each tensor is a strided view of a storage; contiguous (row-major) views resolve to
//! a byte range inside their storage's entry, in place, so the data is never read.
//!
//! Refused: the legacy formats (a raw pickle stream, torch < 1.6, and the older tar
//! archives), archives with no or several `data.pkl`, big-endian archives, storages that
//! are missing, compressed, or of the wrong size, non-contiguous tensors (named with
//! their strides), and tensors that run past the end of their storage. Two tensors may
//! share a storage (tied weights, slices): their ranges may then overlap.

use super::pickle::{self, PickleError, PickledTensor, StateDict};
use super::zip::{self, Archive, Method, ZipError};
use super::{checked_numel, Encoding, MetaValue, RawFile, RawTensor};

/// Largest `data.pkl` inflated when it is compressed (torch never compresses it; a
/// 70B state dict's pickle is under 1 MB).
pub const MAX_PICKLE_BYTES: usize = 256 << 20;

/// The ten bytes of torch's legacy magic number 0x1950a86a20f9469cfc6c, little-endian,
/// as pickled by `torch.save(..., _use_new_zipfile_serialization=False)`.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// What is wrong with a PyTorch file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TorchError {
    /// The zip container is invalid.
    #[error(transparent)]
    Zip(#[from] ZipError),
    /// The pickle is invalid or not a state dict.
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// A raw pickle stream with torch's magic number.
    #[error("this is the legacy PyTorch format (torch < 1.6, or _use_new_zipfile_serialization=False), which orient does not read; re-save it with a current torch.save")]
    Legacy,
    /// A tar archive.
    #[error("this is PyTorch's oldest tar-based format (torch < 0.4), which orient does not read; re-save it with a current torch.save")]
    Tar,
    /// No `<archive>/data.pkl` entry.
    #[error("no `<archive>/data.pkl` in this zip, so it is not a torch.save file (TorchScript archives are not state dicts)")]
    NoDataPkl,
    /// More than one `data.pkl` at the top level.
    #[error("several pickles in one zip ({}); expected one `<archive>/data.pkl`", names.join(", "))]
    SeveralArchives {
        /// Their names.
        names: Vec<String>,
    },
    /// `byteorder` says big-endian.
    #[error("the archive's byteorder is `{found}`; only little-endian archives are supported")]
    BigEndian {
        /// Contents of the `byteorder` entry.
        found: String,
    },
    /// A storage key with no entry.
    #[error("storage `{key}` has no archive entry `{entry}`")]
    MissingStorage {
        /// The key.
        key: String,
        /// The expected entry name.
        entry: String,
    },
    /// A storage entry that is compressed, so it cannot be read in place.
    #[error("storage entry `{entry}` is compressed; orient reads storages in place and needs them stored (as torch writes them)")]
    CompressedStorage {
        /// The entry.
        entry: String,
    },
    /// A storage entry whose size is not what the pickle says.
    #[error("storage entry `{entry}` holds {actual} bytes, but the pickle declares {expected}")]
    StorageSize {
        /// The entry.
        entry: String,
        /// Bytes declared (numel × element size).
        expected: u64,
        /// Bytes in the entry.
        actual: u64,
    },
    /// A storage size or tensor extent that overflows.
    #[error("tensor `{name}`: size computation overflows (shape {shape:?}, offset {offset})")]
    SizeOverflow {
        /// The tensor (or storage key).
        name: String,
        /// Shape.
        shape: Vec<usize>,
        /// Storage offset in elements.
        offset: usize,
    },
    /// A tensor whose strides are not row-major.
    #[error("tensor `{name}` is not contiguous: shape {shape:?} with strides {stride:?} (row-major would be {expected:?}); save it with .contiguous()")]
    NonContiguous {
        /// The tensor.
        name: String,
        /// Shape.
        shape: Vec<usize>,
        /// Its strides.
        stride: Vec<usize>,
        /// Row-major strides.
        expected: Vec<usize>,
    },
    /// A tensor that runs past the end of its storage.
    #[error("tensor `{name}` needs bytes {start}..{end} of storage `{key}`, which holds only {storage_bytes}")]
    StorageTooShort {
        /// The tensor.
        name: String,
        /// Storage key.
        key: String,
        /// Start within the storage.
        start: usize,
        /// End within the storage.
        end: usize,
        /// Storage size in bytes.
        storage_bytes: usize,
    },
}

/// Whether `bytes` start like a legacy (non-zip) torch pickle: a PROTO opcode and the
/// legacy magic number within the first bytes.
pub fn is_legacy_pickle(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x80)
        && bytes
            .get(..32.min(bytes.len()))
            .is_some_and(|head| head.windows(LEGACY_MAGIC.len()).any(|w| w == LEGACY_MAGIC))
}

/// Row-major strides of `shape`.
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![0; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in out.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d);
    }
    out
}

/// Whether a view with these strides is contiguous in row-major order, as torch's
/// `is_contiguous` decides: dimensions of size 1 may have any stride, and a tensor with
/// no elements is contiguous.
pub fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let expected = row_major_strides(shape);
    shape
        .iter()
        .zip(stride)
        .zip(&expected)
        .all(|((&d, &s), &e)| d == 1 || s == e)
}

/// Parses a whole `torch.save` zip file into tensors with byte ranges in the file.
pub fn parse(bytes: &[u8]) -> Result<RawFile, TorchError> {
    if is_legacy_pickle(bytes) {
        return Err(TorchError::Legacy);
    }
    if bytes.get(257..262) == Some(b"ustar") {
        return Err(TorchError::Tar);
    }
    let archive = zip::read(bytes)?;
    let prefix = archive_prefix(&archive)?;
    let mut metadata = vec![("torch.archive".to_owned(), MetaValue::Str(prefix.clone()))];
    for (key, entry) in [
        ("torch.byteorder", "byteorder"),
        ("torch.version", "version"),
    ] {
        if let Some(e) = archive.entry(&format!("{prefix}/{entry}")) {
            let text = zip::inflate(bytes, e, 64)?;
            let text = String::from_utf8_lossy(&text).trim().to_owned();
            if entry == "byteorder" && text != "little" {
                return Err(TorchError::BigEndian { found: text });
            }
            metadata.push((key.to_owned(), MetaValue::Str(text)));
        }
    }
    let pkl_entry = archive
        .entry(&format!("{prefix}/data.pkl"))
        .ok_or(TorchError::NoDataPkl)?;
    let pkl = zip::inflate(bytes, pkl_entry, MAX_PICKLE_BYTES)?;
    let state = pickle::load_state_dict(&pkl)?;
    let tensors = resolve(&archive, &prefix, &state)?;
    metadata.extend(state.scalars);
    Ok(RawFile { tensors, metadata })
}

fn archive_prefix(archive: &Archive) -> Result<String, TorchError> {
    let names: Vec<&str> = archive
        .entries
        .iter()
        .filter_map(|e| e.name.strip_suffix("/data.pkl"))
        .filter(|p| !p.contains('/'))
        .collect();
    match names.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(TorchError::NoDataPkl),
        many => Err(TorchError::SeveralArchives {
            names: many.iter().map(|p| format!("{p}/data.pkl")).collect(),
        }),
    }
}

fn resolve(
    archive: &Archive,
    prefix: &str,
    state: &StateDict,
) -> Result<Vec<RawTensor>, TorchError> {
    // Each storage's absolute byte range, checked once.
    let mut storages = Vec::with_capacity(state.storages.len());
    for s in &state.storages {
        let entry_name = format!("{prefix}/data/{}", s.key);
        let entry = archive
            .entry(&entry_name)
            .ok_or_else(|| TorchError::MissingStorage {
                key: s.key.clone(),
                entry: entry_name.clone(),
            })?;
        if entry.method != Method::Stored {
            return Err(TorchError::CompressedStorage { entry: entry_name });
        }
        let expected = match s.dtype {
            Some(d) => d.checked_size(s.numel),
            None => Some(s.numel),
        }
        .ok_or_else(|| TorchError::SizeOverflow {
            name: s.key.clone(),
            shape: vec![s.numel],
            offset: 0,
        })?;
        if entry.data.len() != expected {
            return Err(TorchError::StorageSize {
                entry: entry_name,
                expected: expected as u64,
                actual: entry.data.len() as u64,
            });
        }
        storages.push(entry.data.clone());
    }
    state
        .tensors
        .iter()
        .map(|t| place(t, &state.storages[t.storage].key, &storages[t.storage]))
        .collect()
}

fn place(
    t: &PickledTensor,
    key: &str,
    storage: &std::ops::Range<usize>,
) -> Result<RawTensor, TorchError> {
    let overflow = || TorchError::SizeOverflow {
        name: t.name.clone(),
        shape: t.shape.clone(),
        offset: t.offset,
    };
    if !is_contiguous(&t.shape, &t.stride) {
        return Err(TorchError::NonContiguous {
            name: t.name.clone(),
            shape: t.shape.clone(),
            stride: t.stride.clone(),
            expected: row_major_strides(&t.shape),
        });
    }
    let numel = checked_numel(&t.shape).ok_or_else(overflow)?;
    let start = t.dtype.checked_size(t.offset).ok_or_else(overflow)?;
    let len = t.dtype.checked_size(numel).ok_or_else(overflow)?;
    let end = start.checked_add(len).ok_or_else(overflow)?;
    if end > storage.len() {
        return Err(TorchError::StorageTooShort {
            name: t.name.clone(),
            key: key.to_owned(),
            start,
            end,
            storage_bytes: storage.len(),
        });
    }
    Ok(RawTensor {
        name: t.name.clone(),
        encoding: Encoding::Plain(t.dtype),
        shape: t.shape.clone(),
        range: storage.start + start..storage.start + end,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::pickle::tests::{two_tensors, P};
    use super::super::zip::tests::{build, stored_member, Member};
    use super::*;
    use crate::dtype::Dtype;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn file(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut m = vec![
            stored_member("arc/data.pkl", pkl),
            stored_member("arc/byteorder", b"little"),
        ];
        for (k, d) in storages {
            m.push(stored_member(&format!("arc/data/{k}"), d));
        }
        m.push(stored_member("arc/version", b"3\n"));
        build(&m, true)
    }

    #[test]
    fn tensors_resolve_in_place() {
        let data = f32s(&[0., 1., 2., 3., 4., 5.]);
        let f = file(&two_tensors(), &[("0", data)]);
        let raw = parse(&f).unwrap();
        let a = raw.tensor("a").unwrap();
        assert_eq!(a.encoding, Encoding::Plain(Dtype::F32));
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(&f[a.range.clone()], &f32s(&[0., 1., 2., 3., 4., 5.])[..]);
        let b = raw.tensor("b").unwrap();
        assert_eq!(
            &f[b.range.clone()],
            &f32s(&[4., 5.])[..],
            "a view at offset 4"
        );
        assert_eq!(raw.meta("torch.archive").unwrap().as_str(), Some("arc"));
        assert_eq!(
            raw.meta("torch.byteorder").unwrap().as_str(),
            Some("little")
        );
        assert_eq!(raw.meta("torch.version").unwrap().as_str(), Some("3"));
    }

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(is_contiguous(&[0, 3], &[7, 7]));
        assert!(is_contiguous(&[], &[]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        assert_eq!(row_major_strides(&[2, 3, 4]), [12, 4, 1]);
        let pkl = P::new()
            .op(b"}")
            .s("w.t")
            .tensor("FloatStorage", "0", 6, 0, &[3, 2], &[1, 3])
            .op(b"s")
            .stop();
        let f = file(&pkl, &[("0", vec![0; 24])]);
        let e = parse(&f).unwrap_err();
        assert!(
            matches!(&e, TorchError::NonContiguous { name, stride, .. } if name == "w.t" && stride == &[1, 3])
        );
        assert!(e.to_string().contains("[1, 3]"), "{e}");
    }

    #[test]
    fn storage_problems() {
        // Storage shorter than its tensor.
        let pkl = P::new()
            .op(b"}")
            .s("t")
            .tensor("FloatStorage", "0", 4, 2, &[4], &[1])
            .op(b"s")
            .stop();
        let f = file(&pkl, &[("0", vec![0; 16])]);
        assert!(matches!(
            parse(&f),
            Err(TorchError::StorageTooShort {
                start: 8,
                end: 24,
                storage_bytes: 16,
                ..
            })
        ));
        // Entry size differs from the declared numel.
        let f = file(&two_tensors(), &[("0", vec![0; 20])]);
        assert!(matches!(
            parse(&f),
            Err(TorchError::StorageSize {
                expected: 24,
                actual: 20,
                ..
            })
        ));
        // Missing entry.
        let f = file(&two_tensors(), &[("1", vec![0; 24])]);
        assert!(matches!(parse(&f), Err(TorchError::MissingStorage { key, .. }) if key == "0"));
        // Compressed storage.
        let data = vec![0u8; 24];
        let m = vec![
            stored_member("arc/data.pkl", &two_tensors()),
            Member {
                name: "arc/data/0".into(),
                data: data.clone(),
                method: 8,
                raw: Some(miniz_oxide::deflate::compress_to_vec(&data, 6)),
                descriptor: true,
            },
        ];
        assert!(matches!(
            parse(&build(&m, false)),
            Err(TorchError::CompressedStorage { .. })
        ));
    }

    #[test]
    fn compressed_pickle_is_inflated() {
        let pkl = two_tensors();
        let m = vec![
            Member {
                name: "arc/data.pkl".into(),
                data: pkl.clone(),
                method: 8,
                raw: Some(miniz_oxide::deflate::compress_to_vec(&pkl, 6)),
                descriptor: false,
            },
            stored_member("arc/data/0", &[0; 24]),
        ];
        assert_eq!(parse(&build(&m, false)).unwrap().tensors.len(), 2);
    }

    #[test]
    fn archive_shape() {
        let f = build(&[stored_member("arc/other.pkl", b".")], false);
        assert_eq!(parse(&f), Err(TorchError::NoDataPkl));
        let f = build(
            &[
                stored_member("a/data.pkl", b"."),
                stored_member("b/data.pkl", b"."),
            ],
            false,
        );
        assert!(
            matches!(parse(&f), Err(TorchError::SeveralArchives { names }) if names.len() == 2)
        );
        let m = vec![
            stored_member("arc/data.pkl", &two_tensors()),
            stored_member("arc/byteorder", b"big"),
        ];
        assert_eq!(
            parse(&build(&m, false)),
            Err(TorchError::BigEndian {
                found: "big".into()
            })
        );
        assert!(matches!(
            parse(b"not a zip at all"),
            Err(TorchError::Zip(ZipError::NoEndOfCentralDirectory))
        ));
    }

    #[test]
    fn legacy_formats_are_named() {
        let mut legacy = vec![0x80, 2, 0x8a, 10];
        legacy.extend(LEGACY_MAGIC);
        legacy.extend(b".");
        assert!(is_legacy_pickle(&legacy));
        assert_eq!(parse(&legacy), Err(TorchError::Legacy));
        assert!(parse(&legacy).unwrap_err().to_string().contains("legacy"));
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(parse(&tar), Err(TorchError::Tar));
    }

    #[test]
    fn forbidden_global_surfaces_with_its_name() {
        let pkl = P::new().global("os", "system").op(b")R").stop();
        let f = file(&pkl, &[]);
        let e = parse(&f).unwrap_err();
        assert!(e.to_string().contains("os.system"), "{e}");
    }
}
