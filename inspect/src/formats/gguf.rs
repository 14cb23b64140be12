//! GGUF (llama.cpp) files, versions 2 and 3, parsed as a straight line of checked steps.
//!
//! Layout (all little-endian): `GGUF` magic, u32 version, u64 tensor count, u64
//! key/value count; the key/value pairs (u64-length-prefixed UTF-8 key, u32 value type,
//! value; arrays carry a u32 element type and a u64 count and may nest); the tensor
//! infos (name, u32 dimension count, that many u64 `ne`, u32 ggml type, u64 offset);
//! padding to `general.alignment` (u32, default 32); the data section. A tensor's
//! offset is relative to the data section and a multiple of the alignment.
//!
//! What is refused follows ggml's own reader (`gguf.cpp`) and the GGUF spec: version 1
//! (32-bit counts) and big-endian files, empty or repeated keys, unknown value types,
//! bools other than 0 and 1, an alignment that is not a power-of-two `u32`, repeated
//! tensor names, names of 64 bytes or more, more than 4 dimensions, unknown or removed
//! ggml types, rows that are not whole blocks, misaligned offsets, and data past the
//! end of the file or overlapping another tensor's. Unlike ggml, tensors need not be
//! stored in the order they are listed. Shapes are kept in `ne` order (`ne[0]`
//! fastest), never reversed here.

use std::collections::HashSet;
use std::fmt;

use super::{checked_numel, Encoding, MetaArray, MetaValue, RawFile, RawTensor, ScalarKind};
use crate::dtype::Dtype;

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Largest `general.alignment` accepted (1 MiB). ggml accepts any power of two up to
/// 2³¹; nothing real uses more than 64, and a huge value only pads the file.
pub const MAX_ALIGNMENT: u32 = 1 << 20;
/// The key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes (ggml's `GGML_MAX_NAME` is 64, including the NUL).
pub const MAX_NAME_LEN: usize = 63;
/// Deepest nesting of arrays in a metadata value.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Smallest encoding of one key/value pair: key length, one key byte, type, one byte.
const MIN_KV_BYTES: usize = 8 + 1 + 4 + 1;
/// Smallest encoding of one tensor info: name length, dimension count, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;
/// Smallest encoding of a nested array: element type and count.
const MIN_ARRAY_BYTES: usize = 4 + 8;

macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $blck:literal, $size:literal;)*) => {
        /// A ggml tensor type, as numbered by `enum ggml_type` in ggml.h and named by
        /// gguf-py's `GGMLQuantizationType` (gguf 0.19).
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum GgmlType {
            $(
                #[doc = concat!("`", stringify!($variant), "` (id ", $id, "): blocks of ", $blck,
                                " values in ", $size, " bytes.")]
                $variant,
            )*
        }

        impl GgmlType {
            /// Every type a GGUF file may use, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$variant,)*];

            /// The id stored in the file.
            pub fn id(self) -> u32 {
                match self { $(GgmlType::$variant => $id,)* }
            }

            /// The type for an id, or `None` for an unknown or removed id.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id { $($id => Some(GgmlType::$variant),)* _ => None }
            }

            /// The name as ggml and gguf-py spell it in upper case (`"Q8_0"`).
            pub fn name(self) -> &'static str {
                match self { $(GgmlType::$variant => stringify!($variant),)* }
            }

            /// Values per block (1 for plain types).
            pub fn block_size(self) -> usize {
                match self { $(GgmlType::$variant => $blck,)* }
            }

            /// Bytes per block.
            pub fn type_size(self) -> usize {
                match self { $(GgmlType::$variant => $size,)* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 40;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    IQ2_XXS = 16, 256, 66;
    IQ2_XS = 17, 256, 74;
    IQ3_XXS = 18, 256, 98;
    IQ1_S = 19, 256, 50;
    IQ4_NL = 20, 32, 18;
    IQ3_S = 21, 256, 110;
    IQ2_S = 22, 256, 82;
    IQ4_XS = 23, 256, 136;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    IQ1_M = 29, 256, 56;
    BF16 = 30, 1, 2;
    TQ1_0 = 34, 256, 54;
    TQ2_0 = 35, 256, 66;
    MXFP4 = 39, 32, 17;
    NVFP4 = 40, 64, 36;
    Q1_0 = 41, 128, 18;
}

impl GgmlType {
    /// The plain element type this ggml type stores, if it is not block-quantized.
    pub fn plain_dtype(self) -> Option<Dtype> {
        Some(match self {
            GgmlType::F32 => Dtype::F32,
            GgmlType::F16 => Dtype::F16,
            GgmlType::BF16 => Dtype::BF16,
            GgmlType::F64 => Dtype::F64,
            GgmlType::I8 => Dtype::I8,
            GgmlType::I16 => Dtype::I16,
            GgmlType::I32 => Dtype::I32,
            GgmlType::I64 => Dtype::I64,
            _ => return None,
        })
    }

    /// How a tensor of this type is encoded: plain types map to their dtype.
    pub fn encoding(self) -> Encoding {
        match self.plain_dtype() {
            Some(d) => Encoding::Plain(d),
            None => Encoding::Gguf(self),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ids that ggml once used and has since removed from GGUF files.
fn removed_type(id: u32) -> Option<&'static str> {
    Some(match id {
        4 => "Q4_2",
        5 => "Q4_3",
        31 => "Q4_0_4_4",
        32 => "Q4_0_4_8",
        33 => "Q4_0_8_8",
        36 => "IQ4_NL_4_4",
        37 => "IQ4_NL_4_8",
        38 => "IQ4_NL_8_8",
        _ => return None,
    })
}

fn unknown_type_hint(id: u32) -> String {
    match removed_type(id) {
        Some(name) => format!(" ({name}, removed from GGUF by ggml; requantize the file)"),
        None => String::new(),
    }
}

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: it starts with {found:02x?}, not the magic `GGUF`")]
    BadMagic {
        /// The first bytes (up to 4).
        found: Vec<u8>,
    },
    /// Version 1 used 32-bit counts and is obsolete.
    #[error("GGUF version 1 is obsolete (32-bit counts) and not supported; convert the file again with a current llama.cpp")]
    VersionOne,
    /// The version bytes read as a byte-swapped small number.
    #[error("GGUF version field {version:#010x} looks byte-swapped: big-endian GGUF files are not supported")]
    BigEndian {
        /// The raw version field.
        version: u32,
    },
    /// A version other than 2 or 3.
    #[error("GGUF version {version} is not supported (only 2 and 3)")]
    UnsupportedVersion {
        /// The version field.
        version: u32,
    },
    /// The file ends inside a fixed-size field.
    #[error("file is truncated: {what} needs {needed} bytes at offset {offset}, but only {available} remain")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where.
        offset: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes left in the file.
        available: usize,
    },
    /// A string's length prefix runs past the end of the file.
    #[error("{what}: string length {len} at offset {offset} runs past the end of the file ({available} bytes remain)")]
    StringPastEnd {
        /// What was being read.
        what: String,
        /// Declared length.
        len: u64,
        /// Offset of the length prefix.
        offset: usize,
        /// Bytes left after the prefix.
        available: usize,
    },
    /// A count (of key/value pairs, tensors or array elements) that the rest of the
    /// file cannot possibly hold.
    #[error("{what}: count {count} cannot fit in the {available} bytes left (each needs at least {min_each})")]
    CountPastEnd {
        /// What is counted.
        what: String,
        /// Declared count.
        count: u64,
        /// Bytes left in the file.
        available: usize,
        /// Smallest encoding of one element.
        min_each: usize,
    },
    /// A key or string value that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    NotUtf8 {
        /// What was being read.
        what: String,
    },
    /// A key of length 0.
    #[error("metadata key #{index} is empty")]
    EmptyKey {
        /// Index of the pair.
        index: u64,
    },
    /// The same key twice.
    #[error("metadata key `{key}` appears more than once")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A value (or array element) type id outside 0..=12.
    #[error("metadata key `{key}`: unknown value type {type_id}")]
    UnknownValueType {
        /// The key.
        key: String,
        /// The type id.
        type_id: u32,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("metadata key `{key}`: arrays nested more than {MAX_ARRAY_DEPTH} deep")]
    ArrayTooDeep {
        /// The key.
        key: String,
    },
    /// A bool byte other than 0 or 1.
    #[error("metadata key `{key}`: bool byte {value} is neither 0 nor 1")]
    InvalidBool {
        /// The key.
        key: String,
        /// The byte.
        value: u8,
    },
    /// `general.alignment` is not a `u32`.
    #[error("`{ALIGNMENT_KEY}` must be a u32, but it is {found}")]
    AlignmentType {
        /// The type it has.
        found: &'static str,
    },
    /// `general.alignment` is 0 or not a power of two.
    #[error("`{ALIGNMENT_KEY}` is {value}, which is not a power of two")]
    AlignmentNotPowerOfTwo {
        /// The value.
        value: u32,
    },
    /// `general.alignment` above [`MAX_ALIGNMENT`].
    #[error("`{ALIGNMENT_KEY}` is {value}, above the {MAX_ALIGNMENT}-byte limit")]
    AlignmentTooLarge {
        /// The value.
        value: u32,
    },
    /// A tensor name of [`MAX_NAME_LEN`] + 1 bytes or more.
    #[error("tensor `{name}`: name is {len} bytes long, more than ggml's {MAX_NAME_LEN}")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// Two tensors with the same name.
    #[error("tensor `{name}`: name appears more than once")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// More than [`MAX_DIMS`] dimensions.
    #[error("tensor `{name}`: {n_dims} dimensions, more than ggml's {MAX_DIMS}")]
    TooManyDims {
        /// The name.
        name: String,
        /// Declared dimension count.
        n_dims: u32,
    },
    /// A dimension above `i64::MAX`, or an element count or byte size that overflows.
    #[error("tensor `{name}`: shape {ne:?} (ne order) of {ty} overflows the size computation")]
    ShapeOverflow {
        /// The name.
        name: String,
        /// The dimensions as stored.
        ne: Vec<u64>,
        /// The type.
        ty: GgmlType,
    },
    /// A tensor type id ggml does not define (or has removed).
    #[error("tensor `{name}`: unknown ggml type id {type_id}{}", unknown_type_hint(*type_id))]
    UnknownTensorType {
        /// The name.
        name: String,
        /// The type id.
        type_id: u32,
    },
    /// `ne[0]` is not a multiple of the type's block size.
    #[error("tensor `{name}`: rows of {ne0} values are not whole {ty} blocks of {block}")]
    PartialBlock {
        /// The name.
        name: String,
        /// Row length.
        ne0: usize,
        /// The type.
        ty: GgmlType,
        /// Its block size.
        block: usize,
    },
    /// The padded end of the tensor infos lies past the end of the file.
    #[error("file is truncated: the data section would start at byte {data_start}, past the end ({file_len} bytes)")]
    DataStartPastEnd {
        /// Where the data section starts.
        data_start: usize,
        /// File length.
        file_len: usize,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error("tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedOffset {
        /// The name.
        name: String,
        /// Offset within the data section.
        offset: u64,
        /// The alignment.
        alignment: usize,
    },
    /// A tensor whose data runs past the end of the file.
    #[error("tensor `{name}`: data at offset {offset} of the data section ({size} bytes) runs past the end of the file ({file_len} bytes)")]
    DataPastEnd {
        /// The name.
        name: String,
        /// Offset within the data section.
        offset: u64,
        /// Its byte size.
        size: usize,
        /// File length.
        file_len: usize,
    },
    /// Two tensors share bytes.
    #[error("tensor `{name}`: data at bytes {start}..{end} overlaps tensor `{other}`, which ends at byte {other_end}")]
    Overlap {
        /// The tensor that starts later.
        name: String,
        /// Its absolute start.
        start: usize,
        /// Its absolute end.
        end: usize,
        /// The tensor it overlaps.
        other: String,
        /// Where that one ends.
        other_end: usize,
    },
}

/// A parsed GGUF file: the format-neutral [`RawFile`] plus the GGUF-level facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Alignment of the data section and of every tensor.
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_start: usize,
    /// Tensors (shapes in `ne` order) and key/value metadata in file order.
    pub file: RawFile,
}

/// Parses a whole GGUF file (only the header is read; tensor data is not touched).
pub fn parse(bytes: &[u8]) -> Result<RawFile, GgufError> {
    parse_detailed(bytes).map(|g| g.file)
}

/// Where a read happens, for error messages (formatted only on failure).
#[derive(Clone, Copy)]
enum Site<'a> {
    Header,
    KeyNo(u64),
    Value(&'a str),
    TensorNo(u64),
    Tensor(&'a str),
}

impl fmt::Display for Site<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Header => f.write_str("the header"),
            Site::KeyNo(i) => write!(f, "metadata key #{i}"),
            Site::Value(k) => write!(f, "the value of metadata key `{k}`"),
            Site::TensorNo(i) => write!(f, "the name of tensor info #{i}"),
            Site::Tensor(n) => write!(f, "the info of tensor `{n}`"),
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, site: Site<'_>) -> Result<&'a [u8], GgufError> {
        let available = self.remaining();
        if n > available {
            return Err(GgufError::Truncated {
                what: site.to_string(),
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, site: Site<'_>) -> Result<[u8; N], GgufError> {
        let b = self.take(N, site)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, site: Site<'_>) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(site)?))
    }

    fn u64(&mut self, site: Site<'_>) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(site)?))
    }

    fn string(&mut self, site: Site<'_>) -> Result<&'a str, GgufError> {
        let offset = self.pos;
        let len = self.u64(site)?;
        let available = self.remaining();
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n <= available)
            .ok_or_else(|| GgufError::StringPastEnd {
                what: site.to_string(),
                len,
                offset,
                available,
            })?;
        let b = self.take(n, site)?;
        std::str::from_utf8(b).map_err(|_| GgufError::NotUtf8 {
            what: site.to_string(),
        })
    }

    /// Checks that `count` elements of at least `min_each` bytes can fit in what is
    /// left, and returns the count as a `usize`.
    fn count(
        &self,
        count: u64,
        min_each: usize,
        what: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        let available = self.remaining();
        usize::try_from(count)
            .ok()
            .filter(|&n| n.checked_mul(min_each).is_some_and(|b| b <= available))
            .ok_or_else(|| GgufError::CountPastEnd {
                what: what(),
                count,
                available,
                min_each,
            })
    }
}

/// Parses a whole GGUF file and also returns its version, alignment and data offset.
pub fn parse_detailed(bytes: &[u8]) -> Result<Gguf, GgufError> {
    if !bytes.starts_with(MAGIC) {
        return Err(GgufError::BadMagic {
            found: bytes.iter().take(4).copied().collect(),
        });
    }
    let mut c = Cursor { bytes, pos: 4 };
    let version = c.u32(Site::Header)?;
    match version {
        2 | 3 => {}
        1 => return Err(GgufError::VersionOne),
        v if v != 0 && v & 0xffff == 0 => return Err(GgufError::BigEndian { version: v }),
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    let n_tensors = c.u64(Site::Header)?;
    let n_kv = c.u64(Site::Header)?;

    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment(&metadata)?;
    let infos = read_tensor_infos(&mut c, n_tensors)?;

    let data_start = if infos.is_empty() {
        c.pos
    } else {
        // c.pos ≤ bytes.len() and alignment ≤ 1 MiB, so this cannot overflow in practice;
        // checked anyway.
        let padded = c
            .pos
            .checked_next_multiple_of(alignment)
            .unwrap_or(usize::MAX);
        if padded > bytes.len() {
            return Err(GgufError::DataStartPastEnd {
                data_start: padded,
                file_len: bytes.len(),
            });
        }
        padded
    };
    let tensors = place_tensors(infos, data_start, alignment, bytes.len())?;
    Ok(Gguf {
        version,
        alignment,
        data_start,
        file: RawFile { tensors, metadata },
    })
}

fn read_metadata(c: &mut Cursor<'_>, n_kv: u64) -> Result<Vec<(String, MetaValue)>, GgufError> {
    let n = c.count(n_kv, MIN_KV_BYTES, &|| {
        "metadata key/value pairs".to_owned()
    })?;
    let mut out = Vec::with_capacity(n);
    let mut seen: HashSet<&str> = HashSet::with_capacity(n);
    for index in 0..n_kv {
        let key = c.string(Site::KeyNo(index))?;
        if key.is_empty() {
            return Err(GgufError::EmptyKey { index });
        }
        if !seen.insert(key) {
            return Err(GgufError::DuplicateKey {
                key: key.to_owned(),
            });
        }
        let site = Site::Value(key);
        let type_id = c.u32(site)?;
        let value = read_value(c, type_id, key, 0)?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

fn scalar_kind(type_id: u32) -> Option<ScalarKind> {
    Some(match type_id {
        0 => ScalarKind::U8,
        1 => ScalarKind::I8,
        2 => ScalarKind::U16,
        3 => ScalarKind::I16,
        4 => ScalarKind::U32,
        5 => ScalarKind::I32,
        6 => ScalarKind::F32,
        7 => ScalarKind::Bool,
        10 => ScalarKind::U64,
        11 => ScalarKind::I64,
        12 => ScalarKind::F64,
        _ => return None,
    })
}

const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

fn read_value(
    c: &mut Cursor<'_>,
    type_id: u32,
    key: &str,
    depth: usize,
) -> Result<MetaValue, GgufError> {
    let site = Site::Value(key);
    if let Some(kind) = scalar_kind(type_id) {
        let b = c.take(kind.size(), site)?;
        if kind == ScalarKind::Bool && b[0] > 1 {
            return Err(GgufError::InvalidBool {
                key: key.to_owned(),
                value: b[0],
            });
        }
        return kind.decode(b).ok_or_else(|| GgufError::Truncated {
            what: site.to_string(),
            offset: c.pos,
            needed: kind.size(),
            available: c.remaining(),
        });
    }
    match type_id {
        TYPE_STRING => Ok(MetaValue::Str(c.string(site)?.to_owned())),
        TYPE_ARRAY => Ok(MetaValue::Array(read_array(c, key, depth + 1)?)),
        _ => Err(GgufError::UnknownValueType {
            key: key.to_owned(),
            type_id,
        }),
    }
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<MetaArray, GgufError> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep {
            key: key.to_owned(),
        });
    }
    let site = Site::Value(key);
    let elem = c.u32(site)?;
    let count = c.u64(site)?;
    let what = || format!("array in metadata key `{key}`");
    if let Some(kind) = scalar_kind(elem) {
        let n = c.count(count, kind.size(), &what)?;
        let bytes = c.take(n * kind.size(), site)?;
        if kind == ScalarKind::Bool {
            if let Some(&bad) = bytes.iter().find(|&&b| b > 1) {
                return Err(GgufError::InvalidBool {
                    key: key.to_owned(),
                    value: bad,
                });
            }
        }
        return Ok(MetaArray::Scalars {
            kind,
            bytes: bytes.to_vec(),
        });
    }
    match elem {
        TYPE_STRING => {
            // Copy the bytes back to back and validate UTF-8 once for the whole array
            // (a 150k-token vocabulary is then a few memcpys, not 150k validations);
            // each end must then fall on a character boundary for every piece to be
            // valid on its own.
            let n = c.count(count, 8, &what)?;
            let mut ends = Vec::with_capacity(n);
            let mut text = Vec::new();
            for _ in 0..n {
                let offset = c.pos;
                let len = c.u64(site)?;
                let available = c.remaining();
                let len_usize = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= available)
                    .ok_or_else(|| GgufError::StringPastEnd {
                        what: site.to_string(),
                        len,
                        offset,
                        available,
                    })?;
                text.extend_from_slice(c.take(len_usize, site)?);
                ends.push(text.len());
            }
            let not_utf8 = || GgufError::NotUtf8 {
                what: site.to_string(),
            };
            let text = String::from_utf8(text).map_err(|_| not_utf8())?;
            if !ends.iter().all(|&e| text.is_char_boundary(e)) {
                return Err(not_utf8());
            }
            Ok(MetaArray::Strings { text, ends })
        }
        TYPE_ARRAY => {
            let n = c.count(count, MIN_ARRAY_BYTES, &what)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_array(c, key, depth + 1)?);
            }
            Ok(MetaArray::Arrays(items))
        }
        _ => Err(GgufError::UnknownValueType {
            key: key.to_owned(),
            type_id: elem,
        }),
    }
}

fn alignment(metadata: &[(String, MetaValue)]) -> Result<usize, GgufError> {
    let Some((_, value)) = metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let MetaValue::U32(value) = *value else {
        return Err(GgufError::AlignmentType {
            found: value.type_name(),
        });
    };
    if !value.is_power_of_two() {
        return Err(GgufError::AlignmentNotPowerOfTwo { value });
    }
    if value > MAX_ALIGNMENT {
        return Err(GgufError::AlignmentTooLarge { value });
    }
    Ok(value as usize)
}

/// One tensor info, before its offset is placed in the file.
struct Info {
    name: String,
    ty: GgmlType,
    shape: Vec<usize>,
    size: usize,
    offset: u64,
}

fn read_tensor_infos(c: &mut Cursor<'_>, n_tensors: u64) -> Result<Vec<Info>, GgufError> {
    let n = c.count(n_tensors, MIN_TENSOR_INFO_BYTES, &|| {
        "tensor infos".to_owned()
    })?;
    let mut infos = Vec::with_capacity(n);
    let mut seen: HashSet<String> = HashSet::with_capacity(n);
    for index in 0..n_tensors {
        let name = c.string(Site::TensorNo(index))?;
        if name.len() > MAX_NAME_LEN {
            return Err(GgufError::NameTooLong {
                name: name.to_owned(),
                len: name.len(),
            });
        }
        if !seen.insert(name.to_owned()) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_owned(),
            });
        }
        let site = Site::Tensor(name);
        let n_dims = c.u32(site)?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                name: name.to_owned(),
                n_dims,
            });
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64(site)?);
        }
        let type_id = c.u32(site)?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            name: name.to_owned(),
            type_id,
        })?;
        let overflow = || GgufError::ShapeOverflow {
            name: name.to_owned(),
            ne: ne.clone(),
            ty,
        };
        let shape: Vec<usize> = ne
            .iter()
            .map(|&d| usize::try_from(d).ok().filter(|_| i64::try_from(d).is_ok()))
            .collect::<Option<_>>()
            .ok_or_else(overflow)?;
        let numel = checked_numel(&shape)
            .filter(|&n| i64::try_from(n).is_ok())
            .ok_or_else(overflow)?;
        let ne0 = shape.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(ty.block_size()) {
            return Err(GgufError::PartialBlock {
                name: name.to_owned(),
                ne0,
                ty,
                block: ty.block_size(),
            });
        }
        let size = ty.encoding().byte_len(numel).ok_or_else(overflow)?;
        let offset = c.u64(site)?;
        infos.push(Info {
            name: name.to_owned(),
            ty,
            shape,
            size,
            offset,
        });
    }
    Ok(infos)
}

fn place_tensors(
    infos: Vec<Info>,
    data_start: usize,
    alignment: usize,
    file_len: usize,
) -> Result<Vec<RawTensor>, GgufError> {
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        if info.offset % alignment as u64 != 0 {
            return Err(GgufError::MisalignedOffset {
                name: info.name,
                offset: info.offset,
                alignment,
            });
        }
        let past_end = || GgufError::DataPastEnd {
            name: info.name.clone(),
            offset: info.offset,
            size: info.size,
            file_len,
        };
        let start = usize::try_from(info.offset)
            .ok()
            .and_then(|o| o.checked_add(data_start))
            .ok_or_else(past_end)?;
        let end = start
            .checked_add(info.size)
            .filter(|&e| e <= file_len)
            .ok_or_else(past_end)?;
        tensors.push(RawTensor {
            name: info.name,
            encoding: info.ty.encoding(),
            shape: info.shape,
            range: start..end,
        });
    }
    check_overlap(&tensors)?;
    Ok(tensors)
}

fn check_overlap(tensors: &[RawTensor]) -> Result<(), GgufError> {
    let mut order: Vec<&RawTensor> = tensors.iter().filter(|t| !t.range.is_empty()).collect();
    order.sort_by_key(|t| (t.range.start, t.range.end));
    for pair in order.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        if next.range.start < prev.range.end {
            return Err(GgufError::Overlap {
                name: next.name.clone(),
                start: next.range.start,
                end: next.range.end,
                other: prev.name.clone(),
                other_end: prev.range.end,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// Writes GGUF files for tests, the way gguf-py's writer lays them out.
    #[derive(Default)]
    pub(crate) struct Writer {
        pub version: u32,
        kv: Vec<u8>,
        n_kv: u64,
        infos: Vec<u8>,
        n_tensors: u64,
        data: Vec<u8>,
        pub alignment: usize,
    }

    pub(crate) fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }

    impl Writer {
        pub fn new() -> Writer {
            Writer {
                version: 3,
                alignment: DEFAULT_ALIGNMENT,
                ..Writer::default()
            }
        }

        /// Adds a key with a raw type id and raw value bytes.
        pub fn kv_raw(&mut self, key: &str, type_id: u32, value: &[u8]) -> &mut Self {
            s(&mut self.kv, key);
            self.kv.extend(type_id.to_le_bytes());
            self.kv.extend(value);
            self.n_kv += 1;
            self
        }

        pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
            self.kv_raw(key, 4, &v.to_le_bytes())
        }

        pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
            let mut b = Vec::new();
            s(&mut b, v);
            self.kv_raw(key, 8, &b)
        }

        /// Adds a tensor info with an explicit offset; data is appended separately.
        pub fn info(&mut self, name: &str, ne: &[u64], type_id: u32, offset: u64) -> &mut Self {
            s(&mut self.infos, name);
            self.infos.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                self.infos.extend(d.to_le_bytes());
            }
            self.infos.extend(type_id.to_le_bytes());
            self.infos.extend(offset.to_le_bytes());
            self.n_tensors += 1;
            self
        }

        /// Adds a tensor and its data at the next aligned offset.
        pub fn tensor(&mut self, name: &str, ne: &[u64], ty: GgmlType, data: &[u8]) -> &mut Self {
            let offset = self.data.len().next_multiple_of(self.alignment);
            self.data.resize(offset, 0);
            self.data.extend(data);
            self.info(name, ne, ty.id(), offset as u64)
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut out = MAGIC.to_vec();
            out.extend(self.version.to_le_bytes());
            out.extend(self.n_tensors.to_le_bytes());
            out.extend(self.n_kv.to_le_bytes());
            out.extend(&self.kv);
            out.extend(&self.infos);
            if self.n_tensors > 0 {
                out.resize(out.len().next_multiple_of(self.alignment), 0);
            }
            out.extend(&self.data);
            out
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A file with every value type and the five decodable tensor types.
    fn full_file() -> Vec<u8> {
        let mut w = Writer::new();
        w.kv_raw("u8", 0, &[200])
            .kv_raw("i8", 1, &[0xff])
            .kv_raw("u16", 2, &500u16.to_le_bytes())
            .kv_raw("i16", 3, &(-500i16).to_le_bytes())
            .kv_u32("u32", 70000)
            .kv_raw("i32", 5, &(-70000i32).to_le_bytes())
            .kv_raw("f32", 6, &1.5f32.to_le_bytes())
            .kv_raw("bool", 7, &[1])
            .kv_str("general.architecture", "llama")
            .kv_raw("u64", 10, &u64::MAX.to_le_bytes())
            .kv_raw("i64", 11, &i64::MIN.to_le_bytes())
            .kv_raw("f64", 12, &0.1f64.to_le_bytes());
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(3u64.to_le_bytes());
        for t in ["<s>", "", "héllo"] {
            s(&mut arr, t);
        }
        w.kv_raw("tokens", 9, &arr);
        let mut nested = 9u32.to_le_bytes().to_vec();
        nested.extend(2u64.to_le_bytes());
        nested.extend(5u32.to_le_bytes());
        nested.extend(2u64.to_le_bytes());
        nested.extend(f32_bytes(&[0.0, 0.0])); // two i32 zeros
        nested.extend(8u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
        s(&mut nested, "x");
        w.kv_raw("nested", 9, &nested);
        let mut bools = 7u32.to_le_bytes().to_vec();
        bools.extend(3u64.to_le_bytes());
        bools.extend([0, 1, 0]);
        w.kv_raw("bools", 9, &bools);
        w.tensor(
            "f32",
            &[3, 2],
            GgmlType::F32,
            &f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        )
        .tensor("f16", &[4], GgmlType::F16, &[0; 8])
        .tensor("bf16", &[2, 1, 1], GgmlType::BF16, &[0; 4])
        .tensor("q8", &[32, 2], GgmlType::Q8_0, &[0; 68])
        .tensor("q4", &[64], GgmlType::Q4_0, &[0; 36]);
        w.bytes()
    }

    #[test]
    fn valid_file() {
        let f = full_file();
        let g = parse_detailed(&f).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.data_start % 32, 0);
        let m = &g.file;
        assert_eq!(m.meta("u8"), Some(&MetaValue::U8(200)));
        assert_eq!(m.meta("i8"), Some(&MetaValue::I8(-1)));
        assert_eq!(m.meta("u16"), Some(&MetaValue::U16(500)));
        assert_eq!(m.meta("i16"), Some(&MetaValue::I16(-500)));
        assert_eq!(m.meta("u32"), Some(&MetaValue::U32(70000)));
        assert_eq!(m.meta("i32"), Some(&MetaValue::I32(-70000)));
        assert_eq!(m.meta("f32"), Some(&MetaValue::F32(1.5)));
        assert_eq!(m.meta("bool"), Some(&MetaValue::Bool(true)));
        assert_eq!(
            m.meta("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        assert_eq!(m.meta("u64"), Some(&MetaValue::U64(u64::MAX)));
        assert_eq!(m.meta("i64"), Some(&MetaValue::I64(i64::MIN)));
        assert_eq!(m.meta("f64"), Some(&MetaValue::F64(0.1)));
        let Some(MetaValue::Array(tokens)) = m.meta("tokens") else {
            panic!()
        };
        assert_eq!(tokens.strings().collect::<Vec<_>>(), ["<s>", "", "héllo"]);
        let Some(MetaValue::Array(MetaArray::Arrays(nested))) = m.meta("nested") else {
            panic!()
        };
        assert_eq!(nested.len(), 2);
        assert_eq!(nested[0].get(1), Some(MetaValue::I32(0)));
        assert_eq!(nested[1].str(0), Some("x"));
        let Some(MetaValue::Array(bools)) = m.meta("bools") else {
            panic!()
        };
        assert_eq!(bools.get(1), Some(MetaValue::Bool(true)));
        assert_eq!(m.metadata[0].0, "u8", "file order is kept");

        let names: Vec<_> = m.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["f32", "f16", "bf16", "q8", "q4"]);
        let t = m.tensor("f32").unwrap();
        assert_eq!(t.shape, [3, 2], "ne order, not reversed");
        assert_eq!(t.encoding, Encoding::Plain(Dtype::F32));
        assert_eq!(t.range.start, g.data_start);
        assert_eq!(
            &f[t.range.clone()],
            &f32_bytes(&[1., 2., 3., 4., 5., 6.])[..]
        );
        assert_eq!(
            m.tensor("f16").unwrap().encoding,
            Encoding::Plain(Dtype::F16)
        );
        assert_eq!(m.tensor("bf16").unwrap().shape, [2, 1, 1]);
        let q8 = m.tensor("q8").unwrap();
        assert_eq!(q8.encoding, Encoding::Gguf(GgmlType::Q8_0));
        assert_eq!(q8.range.len(), 68);
        let q4 = m.tensor("q4").unwrap();
        assert_eq!(q4.range.len(), 36);
        assert_eq!(q4.range.end, f.len());
        for t in &m.tensors {
            assert_eq!(t.range.start % 32, 0, "{}", t.name);
        }
    }

    #[test]
    fn version_two_and_empty_files() {
        let mut w = Writer::new();
        w.version = 2;
        w.kv_str("a", "b");
        let g = parse_detailed(&w.bytes()).unwrap();
        assert_eq!(g.version, 2);
        assert!(g.file.tensors.is_empty());
        assert_eq!(g.data_start, w.bytes().len(), "no padding without tensors");
        let empty = Writer::new().bytes();
        assert_eq!(empty.len(), 24);
        assert_eq!(parse(&empty).unwrap(), RawFile::default());
    }

    #[test]
    fn every_type_is_listed_with_its_size() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert!(t.block_size() >= 1 && t.type_size() >= 1);
        }
        assert_eq!(GgmlType::ALL.len(), 34);
        assert_eq!(GgmlType::from_id(8), Some(GgmlType::Q8_0));
        assert_eq!(GgmlType::Q4_K.encoding(), Encoding::Gguf(GgmlType::Q4_K));
        assert_eq!(GgmlType::BF16.encoding(), Encoding::Plain(Dtype::BF16));
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
            assert_eq!(GgmlType::from_id(removed), None);
        }
    }

    /// Every non-empty prefix of a valid file (every truncation point) gives an error.
    #[test]
    fn truncation_at_every_point() {
        let f = full_file();
        for len in 0..f.len() {
            let r = parse(&f[..len]);
            assert!(r.is_err(), "prefix of {len} bytes parsed");
        }
        assert!(matches!(parse(&f[..3]), Err(GgufError::BadMagic { .. })));
        assert!(matches!(parse(&f[..10]), Err(GgufError::Truncated { .. })));
        assert!(
            matches!(parse(&f[..f.len() - 1]), Err(GgufError::DataPastEnd { name, .. }) if name == "q4")
        );
    }

    #[test]
    fn bad_magic_and_versions() {
        assert_eq!(
            parse(b"GGML\x03\0\0\0"),
            Err(GgufError::BadMagic {
                found: b"GGML".to_vec()
            })
        );
        let mut w = Writer::new();
        for (v, want) in [
            (1, GgufError::VersionOne),
            (0, GgufError::UnsupportedVersion { version: 0 }),
            (4, GgufError::UnsupportedVersion { version: 4 }),
            (
                0x0300_0000,
                GgufError::BigEndian {
                    version: 0x0300_0000,
                },
            ),
        ] {
            w.version = v;
            assert_eq!(parse(&w.bytes()), Err(want));
        }
    }

    fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(n_tensors.to_le_bytes());
        out.extend(n_kv.to_le_bytes());
        out
    }

    #[test]
    fn counts_past_the_end() {
        assert!(matches!(
            parse(&header(0, u64::MAX)),
            Err(GgufError::CountPastEnd {
                count: u64::MAX,
                ..
            })
        ));
        assert!(matches!(
            parse(&header(1 << 40, 0)),
            Err(GgufError::CountPastEnd { .. })
        ));
        // One key claims 2^62 u32 elements.
        let mut f = header(0, 1);
        s(&mut f, "arr");
        f.extend(9u32.to_le_bytes());
        f.extend(4u32.to_le_bytes());
        f.extend((1u64 << 62).to_le_bytes());
        assert!(
            matches!(parse(&f), Err(GgufError::CountPastEnd { what, .. }) if what.contains("arr"))
        );
        // A string array whose count is more than its bytes could hold.
        let mut f = header(0, 1);
        s(&mut f, "arr");
        f.extend(9u32.to_le_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend(1000u64.to_le_bytes());
        s(&mut f, "only one");
        assert!(matches!(parse(&f), Err(GgufError::CountPastEnd { .. })));
    }

    #[test]
    fn string_lengths_past_the_end() {
        let mut f = header(0, 1);
        f.extend(u64::MAX.to_le_bytes());
        f.extend(b"key and some more bytes");
        assert!(matches!(
            parse(&f),
            Err(GgufError::StringPastEnd { len: u64::MAX, .. })
        ));
        let mut f = header(0, 1);
        s(&mut f, "k");
        f.extend(8u32.to_le_bytes());
        f.extend(100u64.to_le_bytes());
        f.extend(b"short");
        assert!(
            matches!(parse(&f), Err(GgufError::StringPastEnd { len: 100, what, .. }) if what.contains("`k`"))
        );
        let mut w = Writer::new();
        w.kv_raw("k", 8, &[0xff; 8]);
        assert!(matches!(
            parse(&w.bytes()),
            Err(GgufError::StringPastEnd { .. })
        ));
    }

    #[test]
    fn keys() {
        let mut w = Writer::new();
        w.kv_u32("a", 1).kv_u32("a", 2);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::DuplicateKey { key: "a".into() })
        );
        let mut w = Writer::new();
        w.kv_u32("", 1);
        assert_eq!(parse(&w.bytes()), Err(GgufError::EmptyKey { index: 0 }));
        let mut f = header(0, 1);
        f.extend(2u64.to_le_bytes());
        f.extend([0xc3, 0x28]);
        f.extend(4u32.to_le_bytes());
        f.extend(1u32.to_le_bytes());
        assert!(matches!(parse(&f), Err(GgufError::NotUtf8 { .. })));
        let mut w = Writer::new();
        w.kv_raw("s", 8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]);
        assert!(
            matches!(parse(&w.bytes()), Err(GgufError::NotUtf8 { what }) if what.contains("`s`"))
        );
    }

    #[test]
    fn string_array_pieces_must_each_be_utf8() {
        // "é" split across two elements: the concatenation is valid UTF-8, the pieces are not.
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        arr.extend(1u64.to_le_bytes());
        arr.push(0xc3);
        arr.extend(1u64.to_le_bytes());
        arr.push(0xa9);
        let mut w = Writer::new();
        w.kv_raw("tokens", 9, &arr);
        assert!(
            matches!(parse(&w.bytes()), Err(GgufError::NotUtf8 { what }) if what.contains("tokens"))
        );
        // Whole characters in each piece are fine.
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        s(&mut arr, "é");
        s(&mut arr, "💡");
        let mut w = Writer::new();
        w.kv_raw("tokens", 9, &arr);
        let f = parse(&w.bytes()).unwrap();
        let Some(MetaValue::Array(a)) = f.meta("tokens") else {
            panic!()
        };
        assert_eq!(a.strings().collect::<Vec<_>>(), ["é", "💡"]);
    }

    #[test]
    fn unknown_value_types() {
        for bad in [13u32, 0xffff_ffff] {
            let mut w = Writer::new();
            w.kv_raw("k", bad, &[0; 8]);
            assert_eq!(
                parse(&w.bytes()),
                Err(GgufError::UnknownValueType {
                    key: "k".into(),
                    type_id: bad
                })
            );
            let mut arr = bad.to_le_bytes().to_vec();
            arr.extend(1u64.to_le_bytes());
            arr.extend([0; 8]);
            let mut w = Writer::new();
            w.kv_raw("k", 9, &arr);
            assert!(matches!(
                parse(&w.bytes()),
                Err(GgufError::UnknownValueType { .. })
            ));
        }
    }

    #[test]
    fn invalid_bools() {
        let mut w = Writer::new();
        w.kv_raw("b", 7, &[2]);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::InvalidBool {
                key: "b".into(),
                value: 2
            })
        );
        let mut arr = 7u32.to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        arr.extend([1, 0x80]);
        let mut w = Writer::new();
        w.kv_raw("b", 9, &arr);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::InvalidBool {
                key: "b".into(),
                value: 0x80
            })
        );
    }

    #[test]
    fn arrays_nested_too_deep() {
        let mut arr = Vec::new();
        for _ in 0..=MAX_ARRAY_DEPTH {
            arr.extend(9u32.to_le_bytes());
            arr.extend(1u64.to_le_bytes());
        }
        arr.extend(4u32.to_le_bytes());
        arr.extend(0u64.to_le_bytes());
        let mut w = Writer::new();
        w.kv_raw("deep", 9, &arr);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::ArrayTooDeep { key: "deep".into() })
        );
    }

    #[test]
    fn alignment_key_abuse() {
        for (value, want) in [
            (0u32, Some(GgufError::AlignmentNotPowerOfTwo { value: 0 })),
            (3, Some(GgufError::AlignmentNotPowerOfTwo { value: 3 })),
            (48, Some(GgufError::AlignmentNotPowerOfTwo { value: 48 })),
            (
                1 << 31,
                Some(GgufError::AlignmentTooLarge { value: 1 << 31 }),
            ),
            (1, None),
            (64, None),
        ] {
            let mut w = Writer::new();
            w.kv_u32(ALIGNMENT_KEY, value);
            if want.is_none() {
                w.alignment = value as usize;
            }
            w.tensor("t", &[2], GgmlType::F32, &[0; 8]);
            let r = parse_detailed(&w.bytes());
            match want {
                Some(e) => assert_eq!(r, Err(e)),
                None => {
                    let g = r.unwrap();
                    assert_eq!(g.alignment, value as usize);
                    assert_eq!(g.data_start % value as usize, 0);
                }
            }
        }
        let mut w = Writer::new();
        w.kv_raw(ALIGNMENT_KEY, 10, &32u64.to_le_bytes());
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::AlignmentType { found: "u64" })
        );
        let mut w = Writer::new();
        w.kv_str(ALIGNMENT_KEY, "32");
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::AlignmentType { found: "str" })
        );
    }

    #[test]
    fn tensor_info_abuse() {
        let mut w = Writer::new();
        w.tensor("a", &[1], GgmlType::F32, &[0; 4])
            .tensor("a", &[1], GgmlType::F32, &[0; 4]);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::DuplicateTensor { name: "a".into() })
        );

        let long = "x".repeat(MAX_NAME_LEN + 1);
        let mut w = Writer::new();
        w.tensor(&long, &[1], GgmlType::F32, &[0; 4]);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::NameTooLong {
                name: long,
                len: 64
            })
        );
        let mut w = Writer::new();
        w.tensor(&"y".repeat(MAX_NAME_LEN), &[1], GgmlType::F32, &[0; 4]);
        assert!(parse(&w.bytes()).is_ok());

        let mut w = Writer::new();
        w.tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32, &[0; 4]);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::TooManyDims {
                name: "t".into(),
                n_dims: 5
            })
        );

        for ne in [[1u64 << 63, 1], [1 << 32, 1 << 32]] {
            let mut w = Writer::new();
            w.info("t", &ne, 0, 0);
            assert!(
                matches!(parse(&w.bytes()), Err(GgufError::ShapeOverflow { .. })),
                "{ne:?}"
            );
        }

        for id in [31u32, 1000] {
            let mut w = Writer::new();
            w.info("t", &[32], id, 0);
            let e = parse(&w.bytes()).unwrap_err();
            assert_eq!(
                e,
                GgufError::UnknownTensorType {
                    name: "t".into(),
                    type_id: id
                }
            );
            if id == 31 {
                assert!(e.to_string().contains("Q4_0_4_4"), "{e}");
            }
        }

        let mut w = Writer::new();
        w.tensor("q", &[16, 2], GgmlType::Q8_0, &[0; 34]);
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::PartialBlock {
                name: "q".into(),
                ne0: 16,
                ty: GgmlType::Q8_0,
                block: 32
            })
        );
        let mut w = Writer::new();
        w.info("q", &[], GgmlType::Q4_0.id(), 0);
        assert!(matches!(
            parse(&w.bytes()),
            Err(GgufError::PartialBlock { ne0: 1, .. })
        ));
    }

    #[test]
    fn data_placement() {
        // Misaligned.
        let mut w = Writer::new();
        w.info("t", &[1], 0, 4);
        w.data = vec![0; 8];
        assert_eq!(
            parse(&w.bytes()),
            Err(GgufError::MisalignedOffset {
                name: "t".into(),
                offset: 4,
                alignment: 32
            })
        );
        // Past the end, including offsets that overflow.
        for offset in [32u64, u64::MAX - 31] {
            let mut w = Writer::new();
            w.info("t", &[1], 0, offset);
            w.data = vec![0; 4];
            assert!(
                matches!(parse(&w.bytes()), Err(GgufError::DataPastEnd { .. })),
                "{offset}"
            );
        }
        // Overlapping, listed in either order.
        let mut w = Writer::new();
        w.info("a", &[16], 0, 0).info("b", &[4], 0, 32);
        w.data = vec![0; 64];
        assert!(matches!(parse(&w.bytes()),
            Err(GgufError::Overlap { name, other, .. }) if name == "b" && other == "a"));
        let mut w = Writer::new();
        w.info("b", &[4], 0, 32).info("a", &[16], 0, 0);
        w.data = vec![0; 64];
        assert!(matches!(parse(&w.bytes()), Err(GgufError::Overlap { .. })));
        // Out of order but disjoint is fine; an empty tensor overlaps nothing.
        let mut w = Writer::new();
        w.info("late", &[4], 0, 32)
            .info("early", &[4], 0, 0)
            .info("empty", &[0], 0, 0);
        w.data = vec![0; 48];
        let f = parse(&w.bytes()).unwrap();
        assert!(f.tensor("late").unwrap().range.start > f.tensor("early").unwrap().range.start);
        assert!(f.tensor("empty").unwrap().range.is_empty());
        // Padding of the data section missing.
        let mut w = Writer::new();
        w.info("t", &[0], 0, 0);
        let mut f = w.bytes();
        f.truncate(f.len() - 1);
        assert!(matches!(parse(&f), Err(GgufError::DataStartPastEnd { .. })));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes after the magic never panic.
            #[test]
            fn random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
                let mut f = header(1, 2);
                f.extend(&tail);
                let _ = parse(&f);
                let _ = parse(&tail);
            }

            /// A valid file with bytes overwritten, or cut short, never panics.
            #[test]
            fn mutated_files_never_panic(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut f = full_file();
                for (at, byte) in edits {
                    let i = at.index(f.len());
                    f[i] = byte;
                }
                let _ = parse(&f);
                let _ = parse(&f[..cut.index(f.len())]);
            }
        }
    }
}
