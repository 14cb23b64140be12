//! Parsing and validation of one safetensors header.
//!
//! The header is untrusted input, so parsing is a straight line of checked steps, each
//! failure with its own [`HeaderError`] variant: length prefix, size limits, UTF-8,
//! JSON, duplicate keys, entries, dtypes, sizes, then the layout of the data buffer
//! (contiguous, no overlap, no hole, nothing past the end and nothing left over).
//! Only the header bytes are read; tensor data is never touched here.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::dtype::Dtype;

/// Bytes of the little-endian u64 that prefixes every file.
pub const LEN_PREFIX: usize = 8;

/// Largest header accepted, as in the `safetensors` crate (100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Most tensors accepted in one file (or one index). Real models have at most tens of
/// thousands; a header of a million zero-size tensors fits in 100 MB and would otherwise
/// cost gigabytes of memory downstream, so it is refused while parsing, before any of
/// it is kept.
pub const MAX_TENSORS: usize = 1_000_000;

/// What is wrong with a header. The file name is added by the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 8 bytes: not even the length prefix.
    #[error("file is {len} bytes long, too short for the 8-byte header length")]
    TooShort {
        /// Length of the file.
        len: u64,
    },
    /// The length prefix exceeds the 100 MB limit.
    #[error("header length {len} exceeds the {MAX_HEADER_LEN}-byte limit")]
    TooLarge {
        /// Declared header length.
        len: u64,
    },
    /// The length prefix points past the end of the file.
    #[error("header length {len} is larger than the {available} bytes that follow it")]
    LargerThanFile {
        /// Declared header length.
        len: u64,
        /// File length minus the 8-byte prefix.
        available: u64,
    },
    /// The header bytes are not UTF-8.
    #[error("header is not valid UTF-8 (bad byte at offset {offset} of the header)")]
    NotUtf8 {
        /// Offset of the first invalid byte within the header.
        offset: usize,
    },
    /// The header is not valid JSON, or not a JSON object.
    #[error("header is not a valid JSON object: {reason}")]
    InvalidJson {
        /// serde_json's description, with line and column.
        reason: String,
    },
    /// More tensors than [`MAX_TENSORS`].
    #[error("header declares more than {max} tensors; no real model has that many, refusing it")]
    TooManyTensors {
        /// The limit.
        max: usize,
    },
    /// A key appears twice in the header.
    #[error("tensor `{name}`: name appears more than once in the header")]
    DuplicateName {
        /// The repeated key.
        name: String,
    },
    /// `__metadata__` is not a map of strings to strings.
    #[error("`__metadata__` must map strings to strings, but `{key}` is {found}")]
    MetadataNotString {
        /// The offending key (or `__metadata__` itself when it is not an object).
        key: String,
        /// What was found instead.
        found: &'static str,
    },
    /// A tensor entry lacks a field or has one of the wrong type.
    #[error("tensor `{name}`: malformed entry: {reason}")]
    MalformedEntry {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The dtype string is not one the format defines.
    #[error("tensor `{name}`: unknown dtype `{dtype}`")]
    UnknownDtype {
        /// Tensor name.
        name: String,
        /// The dtype string as written.
        dtype: String,
    },
    /// The element count or byte size does not fit in `usize`.
    #[error("tensor `{name}`: shape {shape:?} of {dtype} overflows the size computation")]
    SizeOverflow {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<u64>,
        /// Declared dtype.
        dtype: Dtype,
    },
    /// Sub-byte elements that do not fill a whole number of bytes.
    #[error("tensor `{name}`: {numel} elements of {dtype} do not fill a whole number of bytes")]
    PartialByte {
        /// Tensor name.
        name: String,
        /// Element count.
        numel: usize,
        /// Declared dtype.
        dtype: Dtype,
    },
    /// `data_offsets` with end before start.
    #[error("tensor `{name}`: data_offsets [{start}, {end}] end before they start")]
    ReversedOffsets {
        /// Tensor name.
        name: String,
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
    },
    /// The byte length given by `data_offsets` differs from shape × dtype.
    #[error(
        "tensor `{name}`: data_offsets [{start}, {end}] span {actual} bytes, \
         but shape {shape:?} of {dtype} needs {expected}"
    )]
    SizeMismatch {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<usize>,
        /// Declared dtype.
        dtype: Dtype,
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
        /// `end - start`.
        actual: u64,
        /// numel × dtype size.
        expected: usize,
    },
    /// A tensor starts beyond the end of the data buffer.
    #[error(
        "tensor `{name}`: data_offsets [{start}, {end}] are out of range: \
         the data buffer holds only {data_len} bytes"
    )]
    OutOfRange {
        /// Tensor name.
        name: String,
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
        /// Length of the data buffer.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensor `{name}`: data_offsets [{start}, {end}] overlap tensor `{other}`, which ends at {other_end}")]
    Overlap {
        /// Tensor name.
        name: String,
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
        /// The tensor it overlaps.
        other: String,
        /// Where that tensor ends.
        other_end: u64,
    },
    /// Unused bytes between two tensors (or before the first).
    #[error("tensor `{name}`: {gap} unused bytes before it (it starts at {start}, the previous data ends at {prev_end})")]
    Hole {
        /// Tensor name.
        name: String,
        /// Its start offset.
        start: u64,
        /// End of the previous tensor (0 for the first).
        prev_end: u64,
        /// `start - prev_end`.
        gap: u64,
    },
    /// The file ends inside a tensor's data.
    #[error(
        "file is truncated: tensor `{name}` needs data up to byte {end} of the data buffer, \
         which holds only {data_len} bytes ({missing} missing)"
    )]
    Truncated {
        /// The tensor the file ends in.
        name: String,
        /// Its end offset.
        end: u64,
        /// Length of the data buffer.
        data_len: u64,
        /// `end - data_len`.
        missing: u64,
    },
    /// Bytes after the last tensor.
    #[error("{extra} bytes follow the last tensor's data (the header accounts for {used} of {data_len})")]
    TrailingBytes {
        /// Bytes the header describes.
        used: u64,
        /// Length of the data buffer.
        data_len: u64,
        /// `data_len - used`.
        extra: u64,
    },
}

/// One tensor as declared in a header, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data buffer.
    pub data_offsets: (usize, usize),
}

/// A parsed and validated header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Length of the JSON header in bytes (the u64 prefix).
    pub header_len: usize,
    /// Absolute offset of the data buffer in the file: `8 + header_len`.
    pub data_start: usize,
    /// Tensors in the order they appear in the header.
    pub tensors: Vec<HeaderTensor>,
    /// `__metadata__`, if present.
    pub metadata: BTreeMap<String, String>,
}

/// Reads the 8-byte length prefix and checks it against the file length and the limit.
/// Returns the header length. Needs only the first 8 bytes of `file` plus its length.
pub fn read_len_prefix(prefix: &[u8], file_len: u64) -> Result<usize, HeaderError> {
    let Some(bytes) = prefix.get(..LEN_PREFIX) else {
        return Err(HeaderError::TooShort { len: file_len });
    };
    let mut arr = [0u8; LEN_PREFIX];
    arr.copy_from_slice(bytes);
    let len = u64::from_le_bytes(arr);
    if len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge { len });
    }
    let available = file_len.saturating_sub(LEN_PREFIX as u64);
    if len > available {
        return Err(HeaderError::LargerThanFile { len, available });
    }
    // `len <= MAX_HEADER_LEN` fits in usize on every platform orient builds for.
    usize::try_from(len).map_err(|_| HeaderError::TooLarge { len })
}

/// Parses and validates a whole header. `file` is the whole file (usually a memory map;
/// only the header bytes are touched) and `file_len` its length.
pub fn parse(file: &[u8]) -> Result<Header, HeaderError> {
    let file_len = file.len() as u64;
    let header_len = read_len_prefix(file, file_len)?;
    // Cannot overflow: header_len <= file.len() - 8 was checked above.
    let data_start = LEN_PREFIX + header_len;
    let json = &file[LEN_PREFIX..data_start];
    let data_len = file_len - data_start as u64;
    parse_json(json, data_len).map(|(tensors, metadata)| Header {
        header_len,
        data_start,
        tensors,
        metadata,
    })
}

/// Parses the JSON part of a header and validates it against a data buffer of
/// `data_len` bytes.
pub fn parse_json(
    json: &[u8],
    data_len: u64,
) -> Result<(Vec<HeaderTensor>, BTreeMap<String, String>), HeaderError> {
    let text = std::str::from_utf8(json).map_err(|e| HeaderError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let too_many = std::cell::Cell::new(false);
    let raw = RawHeader::parse(text, &too_many).map_err(|e| {
        if too_many.get() {
            HeaderError::TooManyTensors { max: MAX_TENSORS }
        } else {
            HeaderError::InvalidJson {
                reason: e.to_string(),
            }
        }
    })?;
    if raw
        .iter()
        .filter(|(name, _)| name != "__metadata__")
        .count()
        > MAX_TENSORS
    {
        return Err(HeaderError::TooManyTensors { max: MAX_TENSORS });
    }
    let mut seen = HashSet::with_capacity(raw.len());
    if let Some((name, _)) = raw.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(HeaderError::DuplicateName { name: name.clone() });
    }
    drop(seen);

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            let value =
                serde_json::from_str(value.get()).map_err(|e| HeaderError::InvalidJson {
                    reason: e.to_string(),
                })?;
            metadata = parse_metadata(value)?;
        } else {
            tensors.push(parse_entry(name, value)?);
        }
    }
    check_layout(&tensors, data_len)?;
    Ok((tensors, metadata))
}

fn parse_metadata(value: Value) -> Result<BTreeMap<String, String>, HeaderError> {
    let Value::Object(map) = value else {
        return Err(HeaderError::MetadataNotString {
            key: "__metadata__".to_owned(),
            found: json_kind(&value),
        });
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(HeaderError::MetadataNotString {
                key: k,
                found: json_kind(&other),
            }),
        })
        .collect()
}

/// How a JSON value is described in error messages ("a number", "an object", …).
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

fn parse_entry(name: String, value: &RawValue) -> Result<HeaderTensor, HeaderError> {
    let raw: RawEntry = match serde_json::from_str(value.get()) {
        Ok(raw) => raw,
        Err(e) => {
            return Err(HeaderError::MalformedEntry {
                name,
                reason: e.to_string(),
            })
        }
    };
    let Some(dtype) = Dtype::parse(&raw.dtype) else {
        return Err(HeaderError::UnknownDtype {
            name,
            dtype: raw.dtype,
        });
    };
    let (start, end) = raw.data_offsets;
    if end < start {
        return Err(HeaderError::ReversedOffsets { name, start, end });
    }
    let overflow = |name: String, shape: Vec<u64>| HeaderError::SizeOverflow { name, shape, dtype };
    let mut shape = Vec::with_capacity(raw.shape.len());
    for &d in &raw.shape {
        match usize::try_from(d) {
            Ok(d) => shape.push(d),
            Err(_) => return Err(overflow(name, raw.shape)),
        }
    }
    let Some(numel) = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) else {
        return Err(overflow(name, raw.shape));
    };
    let Some(bits) = numel.checked_mul(dtype.bits()) else {
        return Err(overflow(name, raw.shape));
    };
    if bits % 8 != 0 {
        return Err(HeaderError::PartialByte { name, numel, dtype });
    }
    let expected = bits / 8;
    let actual = end - start;
    if actual != expected as u64 {
        return Err(HeaderError::SizeMismatch {
            name,
            shape,
            dtype,
            start,
            end,
            actual,
            expected,
        });
    }
    // `end` fits in usize because the tensor must lie inside a mapped file; that is
    // checked in `check_layout`, which runs before any offset is used.
    let (Ok(s), Ok(e)) = (usize::try_from(start), usize::try_from(end)) else {
        return Err(overflow(name, raw.shape));
    };
    Ok(HeaderTensor {
        name,
        dtype,
        shape,
        data_offsets: (s, e),
    })
}

/// Checks that the tensors tile `[0, data_len)` exactly: sorted by offset, each starts
/// where the previous ended, and the last ends at `data_len`.
fn check_layout(tensors: &[HeaderTensor], data_len: u64) -> Result<(), HeaderError> {
    let mut order: Vec<&HeaderTensor> = tensors.iter().collect();
    order.sort_by_key(|t| t.data_offsets);
    let mut prev_end = 0u64;
    let mut prev_name: Option<&str> = None;
    for t in order {
        let (start, end) = (t.data_offsets.0 as u64, t.data_offsets.1 as u64);
        if start > data_len {
            return Err(HeaderError::OutOfRange {
                name: t.name.clone(),
                start,
                end,
                data_len,
            });
        }
        if start < prev_end {
            return Err(HeaderError::Overlap {
                name: t.name.clone(),
                start,
                end,
                other: prev_name.unwrap_or_default().to_owned(),
                other_end: prev_end,
            });
        }
        if start > prev_end {
            return Err(HeaderError::Hole {
                name: t.name.clone(),
                start,
                prev_end,
                gap: start - prev_end,
            });
        }
        if end > data_len {
            return Err(HeaderError::Truncated {
                name: t.name.clone(),
                end,
                data_len,
                missing: end - data_len,
            });
        }
        prev_end = end;
        prev_name = Some(&t.name);
    }
    if prev_end != data_len {
        return Err(HeaderError::TrailingBytes {
            used: prev_end,
            data_len,
            extra: data_len - prev_end,
        });
    }
    Ok(())
}

/// The top-level header object as its entries in file order, duplicates kept
/// (serde_json's own maps silently keep the last value of a repeated key). Each value
/// stays unparsed text borrowed from the header, so the memory held while parsing is a
/// name and two pointers per tensor, not a JSON tree.
struct RawHeader<'a>(Vec<(String, &'a RawValue)>);

impl<'a> RawHeader<'a> {
    /// Parses the object, stopping with an error (and `too_many` set) as soon as it has
    /// more than [`MAX_TENSORS`] tensors.
    fn parse(
        text: &'a str,
        too_many: &std::cell::Cell<bool>,
    ) -> Result<Vec<(String, &'a RawValue)>, serde_json::Error> {
        struct V<'c> {
            too_many: &'c std::cell::Cell<bool>,
        }
        impl<'de> Visitor<'de> for V<'_> {
            type Value = RawHeader<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader<'de>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    // One more than the limit allows for `__metadata__`.
                    if entries.len() > MAX_TENSORS {
                        self.too_many.set(true);
                        return Err(de::Error::custom("too many tensors"));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(RawHeader(entries))
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let raw = de.deserialize_map(V { too_many })?;
        de.end()?;
        Ok(raw.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Builds a file from a header string and a data buffer, like the writers do
    /// (without padding, which the format does not require).
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn valid_file() {
        let f = file(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 12],
        );
        let h = parse(&f).unwrap();
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].name, "b");
        assert_eq!(h.tensors[0].dtype, Dtype::BF16);
        assert_eq!(h.tensors[1].data_offsets, (0, 8));
        assert_eq!(h.metadata["format"], "pt");
        assert_eq!(h.data_start, f.len() - 12);
    }

    #[test]
    fn empty_header_and_scalars() {
        let h = parse(&file("{}", &[])).unwrap();
        assert!(h.tensors.is_empty());
        let h = parse(&file(
            r#"{"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]}}"#,
            &[0; 8],
        ))
        .unwrap();
        assert_eq!(h.tensors[0].shape, Vec::<usize>::new());
        assert_eq!(h.tensors[1].shape, vec![0, 3]);
    }

    #[test]
    fn too_short() {
        assert_eq!(parse(&[1, 2, 3]), Err(HeaderError::TooShort { len: 3 }));
    }

    #[test]
    fn header_larger_than_file() {
        let mut f = 1000u64.to_le_bytes().to_vec();
        f.extend_from_slice(b"{}");
        assert_eq!(
            parse(&f),
            Err(HeaderError::LargerThanFile {
                len: 1000,
                available: 2
            })
        );
    }

    #[test]
    fn header_over_limit() {
        let f = (MAX_HEADER_LEN + 1).to_le_bytes().to_vec();
        assert!(matches!(parse(&f), Err(HeaderError::TooLarge { .. })));
        let f = u64::MAX.to_le_bytes().to_vec();
        assert!(matches!(parse(&f), Err(HeaderError::TooLarge { .. })));
    }

    #[test]
    fn not_utf8() {
        let mut f = 4u64.to_le_bytes().to_vec();
        f.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
        assert_eq!(parse(&f), Err(HeaderError::NotUtf8 { offset: 1 }));
    }

    #[test]
    fn invalid_json() {
        for bad in ["{", "[]", "\"x\"", "{\"a\":}", "{}{}", "null"] {
            assert!(
                matches!(parse(&file(bad, &[])), Err(HeaderError::InvalidJson { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_names() {
        let f = file(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
            &[0; 2],
        );
        assert_eq!(
            parse(&f),
            Err(HeaderError::DuplicateName { name: "a".into() })
        );
    }

    #[test]
    fn metadata_must_be_strings() {
        let f = file(r#"{"__metadata__":{"n":1}}"#, &[]);
        assert!(
            matches!(parse(&f), Err(HeaderError::MetadataNotString { key, found: "a number" }) if key == "n")
        );
        let f = file(r#"{"__metadata__":[]}"#, &[]);
        assert!(matches!(
            parse(&f),
            Err(HeaderError::MetadataNotString { .. })
        ));
    }

    #[test]
    fn malformed_entries() {
        for bad in [
            r#"{"a":{"dtype":"U8","shape":[1]}}"#,
            r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#,
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}}"#,
            r#"{"a":3}"#,
        ] {
            assert!(
                matches!(
                    parse(&file(bad, &[0])),
                    Err(HeaderError::MalformedEntry { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_dtype() {
        let f = file(
            r#"{"w":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#,
            &[0; 16],
        );
        assert_eq!(
            parse(&f),
            Err(HeaderError::UnknownDtype {
                name: "w".into(),
                dtype: "F128".into()
            })
        );
    }

    #[test]
    fn size_overflow() {
        let f = file(
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        assert!(matches!(parse(&f), Err(HeaderError::SizeOverflow { .. })));
        let f = file(
            r#"{"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        assert!(matches!(parse(&f), Err(HeaderError::SizeOverflow { .. })));
    }

    #[test]
    fn partial_byte() {
        let f = file(
            r#"{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
            &[0; 2],
        );
        assert!(matches!(
            parse(&f),
            Err(HeaderError::PartialByte { numel: 3, .. })
        ));
        let f = file(
            r#"{"w":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}}"#,
            &[0; 2],
        );
        assert!(parse(&f).is_ok());
    }

    #[test]
    fn size_mismatch() {
        let f = file(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            &[0; 4],
        );
        assert!(matches!(
            parse(&f),
            Err(HeaderError::SizeMismatch {
                actual: 4,
                expected: 8,
                ..
            })
        ));
    }

    #[test]
    fn reversed_offsets() {
        let f = file(
            r#"{"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#,
            &[0; 4],
        );
        assert!(matches!(
            parse(&f),
            Err(HeaderError::ReversedOffsets { .. })
        ));
    }

    #[test]
    fn out_of_range() {
        let f = file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[1000,1004]}}"#,
            &[0; 8],
        );
        assert!(matches!(parse(&f), Err(HeaderError::OutOfRange { name, .. }) if name == "b"));
    }

    #[test]
    fn overlap() {
        let f = file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            &[0; 6],
        );
        assert!(
            matches!(parse(&f), Err(HeaderError::Overlap { name, other, .. }) if name == "b" && other == "a")
        );
    }

    #[test]
    fn hole() {
        let f = file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}"#,
            &[0; 10],
        );
        assert!(matches!(parse(&f), Err(HeaderError::Hole { gap: 2, .. })));
        let f = file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            &[0; 6],
        );
        assert!(matches!(
            parse(&f),
            Err(HeaderError::Hole { prev_end: 0, .. })
        ));
    }

    #[test]
    fn truncated() {
        let f = file(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0; 10],
        );
        assert_eq!(
            parse(&f),
            Err(HeaderError::Truncated {
                name: "a".into(),
                end: 16,
                data_len: 10,
                missing: 6
            })
        );
    }

    #[test]
    fn trailing_bytes() {
        let f = file(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            &[0; 9],
        );
        assert!(matches!(
            parse(&f),
            Err(HeaderError::TrailingBytes { extra: 5, .. })
        ));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn dtype() -> impl Strategy<Value = Dtype> {
            proptest::sample::select(Dtype::ALL.to_vec())
        }

        proptest! {
            /// Any header a correct writer produces parses back to the same tensors.
            #[test]
            fn written_headers_parse_back(
                specs in proptest::collection::vec((dtype(), proptest::collection::vec(0usize..5, 0..4)), 0..12),
                pad in 0usize..8,
            ) {
                let mut json = String::from("{");
                let mut offset = 0usize;
                let mut expected = Vec::new();
                for (i, (dtype, mut shape)) in specs.into_iter().enumerate() {
                    if dtype.bits() < 8 {
                        shape.push(8); // keep sub-byte tensors whole
                    }
                    let size = dtype.checked_size(shape.iter().product()).unwrap();
                    let name = format!("t{i}");
                    json.push_str(&format!(
                        "{}\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
                        if i == 0 { "" } else { "," },
                        offset + size
                    ));
                    expected.push(HeaderTensor { name, dtype, shape, data_offsets: (offset, offset + size) });
                    offset += size;
                }
                json.push('}');
                json.push_str(&" ".repeat(pad));
                let f = file(&json, &vec![7u8; offset]);
                let h = parse(&f).unwrap();
                prop_assert_eq!(h.tensors, expected);
            }

            /// Arbitrary bytes never panic: they parse or give a typed error.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse(&bytes);
            }

            /// Arbitrary JSON-ish headers with arbitrary offsets never panic.
            #[test]
            fn arbitrary_entries_never_panic(
                entries in proptest::collection::vec(
                    ("[a-c]", dtype(), proptest::collection::vec(0u64..u64::MAX, 0..3), any::<u64>(), any::<u64>()),
                    0..5),
                data_len in 0usize..64,
            ) {
                let body: Vec<String> = entries.iter().map(|(n, d, s, a, b)| format!(
                    "\"{n}\":{{\"dtype\":\"{d}\",\"shape\":{s:?},\"data_offsets\":[{a},{b}]}}"
                )).collect();
                let f = file(&format!("{{{}}}", body.join(",")), &vec![0; data_len]);
                let _ = parse(&f);
            }
        }
    }
}
