//! Readers for the checkpoint formats that are not safetensors: GGUF, PyTorch zip
//! pickles (`pytorch_model.bin`, Meta's `consolidated.NN.pth`) and Flax msgpack.
//!
//! Each reader is a pure function from the bytes of one whole file (which the caller
//! memory-maps) to a [`RawFile`]: the tensors as the file stores them (name, encoding,
//! shape in the format's own order, and the absolute byte range of their data) plus
//! the file's metadata. Readers know bytes, never layouts: no name is translated, no
//! shape reversed, no row permuted. That is the layout model's job.
//!
//! Every reader treats its input as hostile: each failure has its own error variant,
//! every size and offset goes through checked arithmetic, no count read from the file
//! drives an allocation larger than the remaining bytes could hold, and nothing panics.
//! Tensor data is never touched while parsing, so opening a 7B file costs only its
//! header (GGUF) or its pickle (PyTorch).
//!
//! - [`gguf`]: GGUF v2/v3 header, metadata and tensor infos; [`quant`]: ggml block
//!   formats (Q8_0 and Q4_0 dequantized bit-for-bit as ggml does).
//! - [`zip`]: the zip container torch writes (central directory, zip64, bounded inflate).
//! - [`pickle`]: a restricted unpickler for `torch.save` state dicts; nothing is executed.
//! - [`torch`]: zip + pickle → tensors resolved to byte ranges in the file.
//! - [`msgpack`]: `flax_model.msgpack` as flax's `msgpack_serialize` writes it.
//! - [`meta`]: Meta's `params.json` and how `consolidated.NN.pth` shards combine.

pub mod gguf;
pub mod hfconfig;
pub mod meta;
pub mod msgpack;
pub mod pickle;
pub mod quant;
pub mod torch;
pub mod zip;

use std::fmt;
use std::ops::Range;

use crate::dtype::Dtype;

pub use gguf::{GgmlType, GgufError};
pub use meta::MetaError;
pub use msgpack::MsgpackError;
pub use pickle::PickleError;
pub use torch::TorchError;
pub use zip::ZipError;

/// How a stored tensor's bytes encode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// One little-endian element after another, as in safetensors.
    Plain(Dtype),
    /// A ggml type with no plain equivalent: block-quantized (Q8_0, Q4_K, IQ2_XS, …).
    /// The byte size of a row follows from the type's block size and block bytes.
    Gguf(GgmlType),
}

impl Encoding {
    /// Bytes needed for a tensor of `numel` elements, or `None` on overflow, when
    /// sub-byte elements do not fill whole bytes, or when `numel` is not a whole
    /// number of blocks.
    pub fn byte_len(self, numel: usize) -> Option<usize> {
        match self {
            Encoding::Plain(d) => d.checked_size(numel),
            Encoding::Gguf(t) => {
                let block = t.block_size();
                if !numel.is_multiple_of(block) {
                    return None;
                }
                (numel / block).checked_mul(t.type_size())
            }
        }
    }

    /// The encoding's name: the safetensors dtype spelling for plain data, the ggml
    /// type name (`"Q8_0"`) otherwise.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Plain(d) => d.name(),
            Encoding::Gguf(t) => t.name(),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor as the file stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    /// Exactly as stored: the GGUF name, the pickle state-dict key (nested dicts joined
    /// with `.`), or the msgpack path joined with `.`.
    pub name: String,
    /// How the bytes encode numbers.
    pub encoding: Encoding,
    /// The shape as the format lists it: GGUF in `ne` order (`ne[0]`, the fastest
    /// varying dimension, first; not reversed), pickle as the torch size, msgpack as the
    /// numpy shape.
    pub shape: Vec<usize>,
    /// Absolute byte range of the data within the file. Ranges of different tensors
    /// never overlap, except in PyTorch files where two tensors may be views of one
    /// storage (tied weights).
    pub range: Range<usize>,
}

impl RawTensor {
    /// Number of elements (the product of the shape; 1 for a scalar). The readers have
    /// checked that it does not overflow.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything a reader found in one file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawFile {
    /// The tensors, in the order the file lists them.
    pub tensors: Vec<RawTensor>,
    /// Key/value metadata in file order: GGUF key/value pairs; for PyTorch, facts about
    /// the archive (`torch.*`) and the non-tensor leaves of the pickled object; for
    /// msgpack, the non-array leaves.
    pub metadata: Vec<(String, MetaValue)>,
}

impl RawFile {
    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The metadata value under `key`, if any.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A metadata value. Numbers keep the width the file gave them.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Unsigned 8-bit integer.
    U8(u8),
    /// Signed 8-bit integer.
    I8(i8),
    /// Unsigned 16-bit integer.
    U16(u16),
    /// Signed 16-bit integer.
    I16(i16),
    /// Unsigned 32-bit integer.
    U32(u32),
    /// Signed 32-bit integer.
    I32(i32),
    /// Unsigned 64-bit integer.
    U64(u64),
    /// Signed 64-bit integer.
    I64(i64),
    /// Single-precision float.
    F32(f32),
    /// Double-precision float.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array (GGUF arrays may nest).
    Array(MetaArray),
    /// Python `None` (pickle) or msgpack `nil`.
    None,
}

impl MetaValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is a number (integers convert, possibly rounding).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The GGUF spelling of the value's type (`"u32"`, `"str"`, `"arr"`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::Str(_) => "str",
            MetaValue::Array(_) => "arr",
            MetaValue::None => "none",
        }
    }
}

/// The element type of a numeric [`MetaArray`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarKind {
    /// u8
    U8,
    /// i8
    I8,
    /// u16
    U16,
    /// i16
    I16,
    /// u32
    U32,
    /// i32
    I32,
    /// u64
    U64,
    /// i64
    I64,
    /// f32
    F32,
    /// f64
    F64,
    /// bool, one byte (0 or 1)
    Bool,
}

impl ScalarKind {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ScalarKind::U8 | ScalarKind::I8 | ScalarKind::Bool => 1,
            ScalarKind::U16 | ScalarKind::I16 => 2,
            ScalarKind::U32 | ScalarKind::I32 | ScalarKind::F32 => 4,
            ScalarKind::U64 | ScalarKind::I64 | ScalarKind::F64 => 8,
        }
    }

    /// Decodes one little-endian element. `bytes` must be exactly [`Self::size`] long.
    fn decode(self, b: &[u8]) -> Option<MetaValue> {
        Some(match self {
            ScalarKind::U8 => MetaValue::U8(b[0]),
            ScalarKind::I8 => MetaValue::I8(i8::from_le_bytes([b[0]])),
            ScalarKind::Bool => MetaValue::Bool(b[0] != 0),
            ScalarKind::U16 => MetaValue::U16(u16::from_le_bytes(b.try_into().ok()?)),
            ScalarKind::I16 => MetaValue::I16(i16::from_le_bytes(b.try_into().ok()?)),
            ScalarKind::U32 => MetaValue::U32(u32::from_le_bytes(b.try_into().ok()?)),
            ScalarKind::I32 => MetaValue::I32(i32::from_le_bytes(b.try_into().ok()?)),
            ScalarKind::F32 => MetaValue::F32(f32::from_le_bytes(b.try_into().ok()?)),
            ScalarKind::U64 => MetaValue::U64(u64::from_le_bytes(b.try_into().ok()?)),
            ScalarKind::I64 => MetaValue::I64(i64::from_le_bytes(b.try_into().ok()?)),
            ScalarKind::F64 => MetaValue::F64(f64::from_le_bytes(b.try_into().ok()?)),
        })
    }
}

/// An array value, stored compactly: a 150k-entry tokenizer vocabulary costs two
/// allocations, not 150k.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    /// Numbers or bools of one kind, as the file's little-endian bytes.
    Scalars {
        /// Element type.
        kind: ScalarKind,
        /// `len × kind.size()` bytes.
        bytes: Vec<u8>,
    },
    /// Strings, concatenated; string `i` is `text[ends[i-1]..ends[i]]` (from 0 for `i = 0`).
    Strings {
        /// All strings, back to back.
        text: String,
        /// End offset of each string in `text`.
        ends: Vec<usize>,
    },
    /// Arrays of arrays (GGUF allows nesting; each inner array has its own type).
    Arrays(Vec<MetaArray>),
}

impl MetaArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::Scalars { kind, bytes } => bytes.len() / kind.size(),
            MetaArray::Strings { ends, .. } => ends.len(),
            MetaArray::Arrays(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF spelling of the element type (`"u32"`, `"str"`, `"arr"`).
    pub fn elem_type_name(&self) -> &'static str {
        match self {
            MetaArray::Scalars { kind, .. } => match kind {
                ScalarKind::U8 => "u8",
                ScalarKind::I8 => "i8",
                ScalarKind::U16 => "u16",
                ScalarKind::I16 => "i16",
                ScalarKind::U32 => "u32",
                ScalarKind::I32 => "i32",
                ScalarKind::U64 => "u64",
                ScalarKind::I64 => "i64",
                ScalarKind::F32 => "f32",
                ScalarKind::F64 => "f64",
                ScalarKind::Bool => "bool",
            },
            MetaArray::Strings { .. } => "str",
            MetaArray::Arrays(_) => "arr",
        }
    }

    /// Element `i` as a value (strings are copied; nested arrays are cloned).
    pub fn get(&self, i: usize) -> Option<MetaValue> {
        match self {
            MetaArray::Scalars { kind, bytes } => {
                let size = kind.size();
                let start = i.checked_mul(size)?;
                let b = bytes.get(start..start.checked_add(size)?)?;
                kind.decode(b)
            }
            MetaArray::Strings { .. } => self.str(i).map(|s| MetaValue::Str(s.to_owned())),
            MetaArray::Arrays(v) => v.get(i).cloned().map(MetaValue::Array),
        }
    }

    /// String element `i`, without copying, when this is a string array.
    pub fn str(&self, i: usize) -> Option<&str> {
        match self {
            MetaArray::Strings { text, ends } => {
                let end = *ends.get(i)?;
                let start = if i == 0 { 0 } else { *ends.get(i - 1)? };
                text.get(start..end)
            }
            _ => None,
        }
    }

    /// Iterates over the strings of a string array (empty for other arrays).
    pub fn strings(&self) -> impl Iterator<Item = &str> + '_ {
        let n = match self {
            MetaArray::Strings { ends, .. } => ends.len(),
            _ => 0,
        };
        (0..n).filter_map(move |i| self.str(i))
    }
}

/// The formats that can be recognised from their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `GGUF` magic.
    Gguf,
    /// A zip archive (`PK\x03\x04`): `torch.save` since torch 1.6.
    TorchZip,
    /// A raw pickle starting with torch's legacy magic number (torch < 1.6).
    TorchLegacy,
    /// A tar archive: torch's oldest format (before 0.4).
    TorchTar,
    /// `flax_model.msgpack` (never returned by [`sniff`]: msgpack has no magic number).
    FlaxMsgpack,
}

/// Recognises a format from the first bytes of a file. msgpack has no magic number
/// (a Flax file is recognised by its name), so it is never returned.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(gguf::MAGIC) {
        Some(Format::Gguf)
    } else if bytes.starts_with(zip::LOCAL_HEADER_SIG) {
        Some(Format::TorchZip)
    } else if torch::is_legacy_pickle(bytes) {
        Some(Format::TorchLegacy)
    } else if bytes.get(257..262) == Some(b"ustar") {
        Some(Format::TorchTar)
    } else {
        None
    }
}

/// Parses a whole file of the given format. The torch formats all go to
/// [`torch::parse`], which reads the zip format and names the legacy ones it refuses.
pub fn parse(format: Format, bytes: &[u8]) -> Result<RawFile, FormatError> {
    Ok(match format {
        Format::Gguf => gguf::parse(bytes)?,
        Format::TorchZip | Format::TorchLegacy | Format::TorchTar => torch::parse(bytes)?,
        Format::FlaxMsgpack => msgpack::parse(bytes)?,
    })
}

/// Any reader's error.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A GGUF file is invalid.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A PyTorch file is invalid or not a state dict.
    #[error(transparent)]
    Torch(#[from] TorchError),
    /// A msgpack file is invalid.
    #[error(transparent)]
    Msgpack(#[from] MsgpackError),
}

/// Joins a path prefix and a key with `.` (no dot for an empty prefix).
pub(crate) fn join_name(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        let mut s = String::with_capacity(prefix.len() + 1 + key.len());
        s.push_str(prefix);
        s.push('.');
        s.push_str(key);
        s
    }
}

/// Checked product of a shape, or `None` on overflow.
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encoding_sizes() {
        assert_eq!(Encoding::Plain(Dtype::F32).byte_len(3), Some(12));
        assert_eq!(Encoding::Gguf(GgmlType::Q8_0).byte_len(64), Some(68));
        assert_eq!(Encoding::Gguf(GgmlType::Q4_0).byte_len(32), Some(18));
        assert_eq!(Encoding::Gguf(GgmlType::Q4_0).byte_len(33), None);
        assert_eq!(
            Encoding::Gguf(GgmlType::Q8_0).byte_len(usize::MAX - 31),
            None
        );
        assert_eq!(Encoding::Gguf(GgmlType::Q4_K).name(), "Q4_K");
    }

    #[test]
    fn meta_arrays() {
        let a = MetaArray::Strings {
            text: "abcde".into(),
            ends: vec![1, 1, 5],
        };
        assert_eq!(a.len(), 3);
        assert_eq!(a.strings().collect::<Vec<_>>(), ["a", "", "bcde"]);
        assert_eq!(a.get(2), Some(MetaValue::Str("bcde".into())));
        assert_eq!(a.get(3), None);
        let n = MetaArray::Scalars {
            kind: ScalarKind::I16,
            bytes: vec![1, 0, 0xff, 0xff],
        };
        assert_eq!(n.len(), 2);
        assert_eq!(n.get(1), Some(MetaValue::I16(-1)));
        assert_eq!(n.get(2), None);
        assert_eq!(n.elem_type_name(), "i16");
        assert_eq!(MetaValue::I32(-1).as_u64(), None);
        assert_eq!(MetaValue::U8(7).as_f64(), Some(7.0));
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b"GGUF\x03\0\0\0"), Some(Format::Gguf));
        assert_eq!(sniff(b"PK\x03\x04rest"), Some(Format::TorchZip));
        assert_eq!(sniff(b"\x89HDF"), None);
        assert_eq!(sniff(b""), None);
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(sniff(&tar), Some(Format::TorchTar));
        assert!(matches!(
            parse(Format::TorchTar, &tar),
            Err(FormatError::Torch(TorchError::Tar))
        ));
        assert!(matches!(
            parse(Format::Gguf, b"GGUF"),
            Err(FormatError::Gguf(GgufError::Truncated { .. }))
        ));
        assert!(matches!(
            parse(Format::FlaxMsgpack, &[0x80]),
            Ok(RawFile { ref tensors, .. }) if tensors.is_empty()
        ));
    }
}
