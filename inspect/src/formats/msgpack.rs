//! `flax_model.msgpack` as transformers 4.x `save_pretrained` writes it, through
//! `flax.serialization.to_bytes` → `msgpack_serialize`.
//!
//! The file is one msgpack map of nested maps. Each array leaf is an extension value of
//! type 1 (`ndarray`; type 3, `npscalar`, for numpy scalars) whose payload is itself
//! msgpack: a 3-array of the shape (array of ints), the numpy dtype name (`"float32"`,
//! `"bfloat16"`, as str or bin) and the row-major data (bin). flax's
//! `serialization.py` defines these codes (ndarray 1, native_complex 2, npscalar 3).
//! Nested map keys are joined with `.`; the range of each leaf is the bin payload's
//! bytes in the file, so nothing is copied.
//!
//! Refused: flax's chunked arrays (arrays over 1 GiB, which `msgpack_serialize` splits
//! into a `{"__msgpack_chunked_array__": True, "shape": …, "chunks": …}` map whose
//! pieces are not contiguous in the file), complex scalars (ext 2) and unknown ext
//! types, unknown dtype names, data whose length is not shape × dtype size, keys other
//! than strings and integers, repeated keys or flattened names, nesting deeper than
//! [`MAX_DEPTH`], and trailing bytes.
//!
//! The decoder is hand-written (about 150 lines) rather than taken from `rmp`: it must
//! report the absolute offset of every bin payload, bound every count by the bytes that
//! remain, and limit recursion, none of which the `rmp` value decoders expose.

use std::collections::HashSet;

use super::{checked_numel, join_name, Encoding, MetaValue, RawFile, RawTensor};
use crate::dtype::Dtype;

/// Deepest nesting of maps and arrays followed.
pub const MAX_DEPTH: usize = 64;

/// The key flax uses to mark a chunked array.
pub const CHUNKED_MARKER: &str = "__msgpack_chunked_array__";

const EXT_NDARRAY: i8 = 1;
const EXT_COMPLEX: i8 = 2;
const EXT_NPSCALAR: i8 = 3;

/// What is wrong with a msgpack file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgpackError {
    /// The file ends inside a value.
    #[error("file is truncated: {what} at offset {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: usize,
    },
    /// A map or array count the rest of the file cannot hold.
    #[error("`{name}`: {count} entries cannot fit in the {available} bytes left")]
    CountPastEnd {
        /// Dotted path.
        name: String,
        /// Declared count.
        count: u64,
        /// Bytes left.
        available: usize,
    },
    /// The reserved byte 0xc1.
    #[error("invalid msgpack byte 0xc1 at offset {offset}")]
    InvalidByte {
        /// Where.
        offset: usize,
    },
    /// The top-level value is not a map.
    #[error("the top-level value is {found}, not a map of parameters")]
    NotAMap {
        /// What it is.
        found: &'static str,
    },
    /// A string that is not UTF-8.
    #[error("string at offset {offset} is not valid UTF-8")]
    NotUtf8 {
        /// Where.
        offset: usize,
    },
    /// A map key that is not a string or an integer.
    #[error("`{name}`: map key at offset {offset} is {found}")]
    BadKey {
        /// Path of the map.
        name: String,
        /// Where.
        offset: usize,
        /// What it is.
        found: &'static str,
    },
    /// Two leaves with the same dotted name.
    #[error("`{name}` appears more than once")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// Deeper than [`MAX_DEPTH`].
    #[error("`{name}`: nested more than {MAX_DEPTH} deep")]
    TooDeep {
        /// Path where the limit was hit.
        name: String,
    },
    /// A flax chunked array.
    #[error("`{name}` is a flax chunked array (over 1 GiB, split into pieces that are not contiguous in the file); orient does not read chunked arrays")]
    ChunkedArray {
        /// Its path.
        name: String,
    },
    /// An extension type other than ndarray and npscalar.
    #[error("`{name}`: msgpack extension type {code} is not supported{}", if *code == EXT_COMPLEX { " (a Python complex number)" } else { "" })]
    UnsupportedExt {
        /// Path.
        name: String,
        /// Extension type code.
        code: i8,
    },
    /// An ndarray payload that is not (shape, dtype, data).
    #[error("`{name}`: malformed ndarray: {reason}")]
    BadNdarray {
        /// Path.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A numpy dtype name with no orient dtype.
    #[error("`{name}`: dtype `{dtype}` is not supported")]
    UnknownDtype {
        /// Path.
        name: String,
        /// The numpy name.
        dtype: String,
    },
    /// Data length differs from shape × dtype size.
    #[error("`{name}`: {actual} data bytes, but shape {shape:?} of {dtype} needs {expected}")]
    SizeMismatch {
        /// Path.
        name: String,
        /// Shape.
        shape: Vec<usize>,
        /// Dtype.
        dtype: Dtype,
        /// Bytes needed.
        expected: u64,
        /// Bytes present.
        actual: usize,
    },
    /// Raw bytes (bin) as a leaf of the tree.
    #[error("`{name}` is raw bytes, not an array or a plain value")]
    BytesLeaf {
        /// Path.
        name: String,
    },
    /// Bytes after the top-level value.
    #[error("{extra} bytes follow the top-level value")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// numpy dtype name → dtype.
pub fn numpy_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "float32" => Dtype::F32,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "float64" => Dtype::F64,
        "int8" => Dtype::I8,
        "int16" => Dtype::I16,
        "int32" => Dtype::I32,
        "int64" => Dtype::I64,
        "uint8" => Dtype::U8,
        "uint16" => Dtype::U16,
        "uint32" => Dtype::U32,
        "uint64" => Dtype::U64,
        "bool" => Dtype::BOOL,
        "complex64" => Dtype::C64,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "float8_e5m2" => Dtype::F8_E5M2,
        "float8_e4m3fnuz" => Dtype::F8_E4M3FNUZ,
        "float8_e5m2fnuz" => Dtype::F8_E5M2FNUZ,
        "float8_e8m0fnu" => Dtype::F8_E8M0,
        _ => return None,
    })
}

/// One decoded msgpack head: scalars carry their value, containers their count,
/// strings/bins/exts their absolute payload range.
#[derive(Debug, Clone, PartialEq)]
enum Head {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(std::ops::Range<usize>),
    Bin(std::ops::Range<usize>),
    Array(u64),
    Map(u64),
    Ext(i8, std::ops::Range<usize>),
}

impl Head {
    fn describe(&self) -> &'static str {
        match self {
            Head::Nil => "nil",
            Head::Bool(_) => "a bool",
            Head::Int(_) | Head::UInt(_) => "an int",
            Head::Float(_) => "a float",
            Head::Str(_) => "a string",
            Head::Bin(_) => "bytes",
            Head::Array(_) => "an array",
            Head::Map(_) => "a map",
            Head::Ext(..) => "an extension value",
        }
    }
}

struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cur<'a> {
    fn take(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<std::ops::Range<usize>, MsgpackError> {
        let start = self.pos;
        let end =
            start
                .checked_add(n)
                .filter(|&e| e <= self.end)
                .ok_or(MsgpackError::Truncated {
                    what,
                    offset: start,
                })?;
        self.pos = end;
        Ok(start..end)
    }

    fn be(&mut self, n: usize, what: &'static str) -> Result<u64, MsgpackError> {
        let r = self.take(n, what)?;
        Ok(self.b[r]
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn len_payload(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<std::ops::Range<usize>, MsgpackError> {
        let len = self.be(n, what)?;
        let len = usize::try_from(len).map_err(|_| MsgpackError::Truncated {
            what,
            offset: self.pos,
        })?;
        self.take(len, what)
    }

    fn head(&mut self) -> Result<Head, MsgpackError> {
        let at = self.pos;
        let b = self.b[self.take(1, "a value")?][0];
        Ok(match b {
            0x00..=0x7f => Head::UInt(b.into()),
            0x80..=0x8f => Head::Map((b & 0x0f).into()),
            0x90..=0x9f => Head::Array((b & 0x0f).into()),
            0xa0..=0xbf => Head::Str(self.take(usize::from(b & 0x1f), "a string")?),
            0xc0 => Head::Nil,
            0xc1 => return Err(MsgpackError::InvalidByte { offset: at }),
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => Head::Bin(self.len_payload(1, "bytes")?),
            0xc5 => Head::Bin(self.len_payload(2, "bytes")?),
            0xc6 => Head::Bin(self.len_payload(4, "bytes")?),
            0xc7..=0xc9 => {
                let len = self.be(1 << (b - 0xc7), "an extension")?;
                let code = self.be(1, "an extension")? as u8 as i8;
                let len = usize::try_from(len).map_err(|_| MsgpackError::Truncated {
                    what: "an extension",
                    offset: at,
                })?;
                Head::Ext(code, self.take(len, "an extension")?)
            }
            0xca => Head::Float(f32::from_bits(self.be(4, "a float")? as u32).into()),
            0xcb => Head::Float(f64::from_bits(self.be(8, "a float")?)),
            0xcc..=0xcf => Head::UInt(self.be(1 << (b - 0xcc), "an int")?),
            0xd0 => Head::Int((self.be(1, "an int")? as u8 as i8).into()),
            0xd1 => Head::Int((self.be(2, "an int")? as u16 as i16).into()),
            0xd2 => Head::Int((self.be(4, "an int")? as u32 as i32).into()),
            0xd3 => Head::Int(self.be(8, "an int")? as i64),
            0xd4..=0xd8 => {
                let code = self.be(1, "an extension")? as u8 as i8;
                Head::Ext(code, self.take(1 << (b - 0xd4), "an extension")?)
            }
            0xd9 => Head::Str(self.len_payload(1, "a string")?),
            0xda => Head::Str(self.len_payload(2, "a string")?),
            0xdb => Head::Str(self.len_payload(4, "a string")?),
            0xdc => Head::Array(self.be(2, "an array")?),
            0xdd => Head::Array(self.be(4, "an array")?),
            0xde => Head::Map(self.be(2, "a map")?),
            0xdf => Head::Map(self.be(4, "a map")?),
            0xe0..=0xff => Head::Int((b as i8).into()),
        })
    }

    fn text(&self, r: std::ops::Range<usize>) -> Result<&'a str, MsgpackError> {
        let offset = r.start;
        std::str::from_utf8(&self.b[r]).map_err(|_| MsgpackError::NotUtf8 { offset })
    }

    /// Checks that `count` items of at least `min_each` bytes fit in what is left.
    fn count(&self, count: u64, min_each: usize, name: &str) -> Result<usize, MsgpackError> {
        let available = self.end - self.pos;
        usize::try_from(count)
            .ok()
            .filter(|&n| n.checked_mul(min_each).is_some_and(|b| b <= available))
            .ok_or_else(|| MsgpackError::CountPastEnd {
                name: name.to_owned(),
                count,
                available,
            })
    }
}

struct Walker<'a> {
    cur: Cur<'a>,
    names: HashSet<String>,
    out: RawFile,
}

impl Walker<'_> {
    fn claim(&mut self, name: &str) -> Result<(), MsgpackError> {
        if !self.names.insert(name.to_owned()) {
            return Err(MsgpackError::DuplicateName {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    fn value(&mut self, head: Head, name: String, depth: usize) -> Result<(), MsgpackError> {
        if depth > MAX_DEPTH {
            return Err(MsgpackError::TooDeep { name });
        }
        let scalar = match head {
            Head::Nil => MetaValue::None,
            Head::Bool(v) => MetaValue::Bool(v),
            Head::Int(v) => MetaValue::I64(v),
            Head::UInt(v) => MetaValue::U64(v),
            Head::Float(v) => MetaValue::F64(v),
            Head::Str(r) => MetaValue::Str(self.cur.text(r)?.to_owned()),
            Head::Bin(_) => return Err(MsgpackError::BytesLeaf { name }),
            Head::Map(n) => return self.map(n, name, depth),
            Head::Array(n) => {
                let n = self.cur.count(n, 1, &name)?;
                for i in 0..n {
                    let h = self.cur.head()?;
                    self.value(h, join_name(&name, &i.to_string()), depth + 1)?;
                }
                return Ok(());
            }
            Head::Ext(code, r) => return self.ext(code, r, name),
        };
        self.claim(&name)?;
        self.out.metadata.push((name, scalar));
        Ok(())
    }

    fn map(&mut self, n: u64, name: String, depth: usize) -> Result<(), MsgpackError> {
        let n = self.cur.count(n, 2, &name)?;
        for _ in 0..n {
            let at = self.cur.pos;
            let key = match self.cur.head()? {
                Head::Str(r) => self.cur.text(r)?.to_owned(),
                Head::Int(i) => i.to_string(),
                Head::UInt(u) => u.to_string(),
                other => {
                    return Err(MsgpackError::BadKey {
                        name,
                        offset: at,
                        found: other.describe(),
                    })
                }
            };
            if key == CHUNKED_MARKER {
                return Err(MsgpackError::ChunkedArray { name });
            }
            let h = self.cur.head()?;
            self.value(h, join_name(&name, &key), depth + 1)?;
        }
        Ok(())
    }

    fn ext(
        &mut self,
        code: i8,
        r: std::ops::Range<usize>,
        name: String,
    ) -> Result<(), MsgpackError> {
        if code != EXT_NDARRAY && code != EXT_NPSCALAR {
            return Err(MsgpackError::UnsupportedExt { name, code });
        }
        let bad = |reason: String| MsgpackError::BadNdarray {
            name: name.clone(),
            reason,
        };
        let mut c = Cur {
            b: self.cur.b,
            pos: r.start,
            end: r.end,
        };
        if c.head()? != Head::Array(3) {
            return Err(bad(
                "the payload is not a 3-array (shape, dtype, data)".into()
            ));
        }
        let Head::Array(rank) = c.head()? else {
            return Err(bad("the shape is not an array".into()));
        };
        let rank = c.count(rank, 1, &name)?;
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            match c.head()? {
                Head::UInt(d) => shape.push(
                    usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large")))?,
                ),
                other => return Err(bad(format!("a dimension is {}", other.describe()))),
            }
        }
        let dtype_name = match c.head()? {
            Head::Str(r) | Head::Bin(r) => c.text(r)?,
            other => return Err(bad(format!("the dtype is {}", other.describe()))),
        };
        let dtype = numpy_dtype(dtype_name).ok_or_else(|| MsgpackError::UnknownDtype {
            name: name.clone(),
            dtype: dtype_name.to_owned(),
        })?;
        let Head::Bin(data) = c.head()? else {
            return Err(bad("the data is not bytes".into()));
        };
        if c.pos != c.end {
            return Err(bad(format!("{} bytes follow the data", c.end - c.pos)));
        }
        let expected = checked_numel(&shape).and_then(|n| dtype.checked_size(n));
        if expected != Some(data.len()) {
            return Err(MsgpackError::SizeMismatch {
                name,
                shape,
                dtype,
                expected: expected.map_or(u64::MAX, |e| e as u64),
                actual: data.len(),
            });
        }
        self.claim(&name)?;
        self.out.tensors.push(RawTensor {
            name,
            encoding: Encoding::Plain(dtype),
            shape,
            range: data,
        });
        Ok(())
    }
}

/// Parses a whole Flax msgpack file; array leaves become tensors named by their dotted
/// path, other leaves metadata.
pub fn parse(bytes: &[u8]) -> Result<RawFile, MsgpackError> {
    let mut w = Walker {
        cur: Cur {
            b: bytes,
            pos: 0,
            end: bytes.len(),
        },
        names: HashSet::new(),
        out: RawFile::default(),
    };
    let head = w.cur.head()?;
    let Head::Map(n) = head else {
        return Err(MsgpackError::NotAMap {
            found: head.describe(),
        });
    };
    w.map(n, String::new(), 0)?;
    if w.cur.pos != bytes.len() {
        return Err(MsgpackError::TrailingBytes {
            extra: bytes.len() - w.cur.pos,
        });
    }
    Ok(w.out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A small msgpack encoder for tests (flax's choices: fixstr keys, bin8/16/32).
    fn str_(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 32);
        out.push(0xa0 | s.len() as u8);
        out.extend(s.as_bytes());
    }

    fn bin(out: &mut Vec<u8>, b: &[u8]) {
        if b.len() < 256 {
            out.extend([0xc4, b.len() as u8]);
        } else {
            out.push(0xc6);
            out.extend((b.len() as u32).to_be_bytes());
        }
        out.extend(b);
    }

    fn ndarray(shape: &[u8], dtype: &str, data: &[u8]) -> Vec<u8> {
        let mut p = vec![0x93, 0x90 | shape.len() as u8];
        p.extend(shape);
        str_(&mut p, dtype);
        bin(&mut p, data);
        let mut out = vec![0xc7, p.len() as u8, 1];
        out.extend(p);
        out
    }

    /// `{"params": {"dense": {"kernel": f32[2,3], "bias": bf16[3]}, "step": 7, "name": "x", "scale": 0.5}}`
    fn sample() -> Vec<u8> {
        let mut f = vec![0x81];
        str_(&mut f, "params");
        f.push(0x84);
        str_(&mut f, "dense");
        f.push(0x82);
        str_(&mut f, "kernel");
        let k: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        f.extend(ndarray(&[2, 3], "float32", &k));
        str_(&mut f, "bias");
        f.extend(ndarray(&[3], "bfloat16", &[1, 2, 3, 4, 5, 6]));
        str_(&mut f, "step");
        f.push(7);
        str_(&mut f, "name");
        str_(&mut f, "x");
        str_(&mut f, "scale");
        f.push(0xcb);
        f.extend(0.5f64.to_be_bytes());
        f
    }

    #[test]
    fn nested_maps_flatten() {
        let f = sample();
        let raw = parse(&f).unwrap();
        let k = raw.tensor("params.dense.kernel").unwrap();
        assert_eq!(k.shape, [2, 3]);
        assert_eq!(k.encoding, Encoding::Plain(Dtype::F32));
        assert_eq!(
            &f[k.range.clone()],
            &(0..6)
                .flat_map(|i| (i as f32).to_le_bytes())
                .collect::<Vec<_>>()[..]
        );
        let b = raw.tensor("params.dense.bias").unwrap();
        assert_eq!(b.encoding, Encoding::Plain(Dtype::BF16));
        assert_eq!(&f[b.range.clone()], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(raw.meta("params.step"), Some(&MetaValue::U64(7)));
        assert_eq!(raw.meta("params.name").unwrap().as_str(), Some("x"));
        assert_eq!(raw.meta("params.scale"), Some(&MetaValue::F64(0.5)));
    }

    #[test]
    fn truncation_at_every_point() {
        let f = sample();
        for len in 0..f.len() {
            assert!(parse(&f[..len]).is_err(), "prefix {len}");
        }
        let mut g = f;
        g.push(0xc0);
        assert_eq!(parse(&g), Err(MsgpackError::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn scalar_encodings() {
        // {"a": -1, "b": -200 (int16), "c": u64 max, "d": f32 1.5, "e": nil, "f": true, "g": [1, 2]}
        let mut f = vec![0x87];
        str_(&mut f, "a");
        f.push(0xff);
        str_(&mut f, "b");
        f.extend([0xd1, 0xff, 0x38]);
        str_(&mut f, "c");
        f.push(0xcf);
        f.extend(u64::MAX.to_be_bytes());
        str_(&mut f, "d");
        f.push(0xca);
        f.extend(1.5f32.to_be_bytes());
        str_(&mut f, "e");
        f.push(0xc0);
        str_(&mut f, "f");
        f.push(0xc3);
        str_(&mut f, "g");
        f.extend([0x92, 1, 2]);
        let raw = parse(&f).unwrap();
        assert_eq!(raw.meta("a"), Some(&MetaValue::I64(-1)));
        assert_eq!(raw.meta("b"), Some(&MetaValue::I64(-200)));
        assert_eq!(raw.meta("c"), Some(&MetaValue::U64(u64::MAX)));
        assert_eq!(raw.meta("d"), Some(&MetaValue::F64(1.5)));
        assert_eq!(raw.meta("e"), Some(&MetaValue::None));
        assert_eq!(raw.meta("f"), Some(&MetaValue::Bool(true)));
        assert_eq!(raw.meta("g.1"), Some(&MetaValue::U64(2)));
    }

    #[test]
    fn refusals() {
        let wrap = |key: &str, value: &[u8]| {
            let mut f = vec![0x81];
            str_(&mut f, key);
            f.extend(value);
            f
        };
        // Chunked array.
        let mut chunked = vec![0x82];
        str_(&mut chunked, CHUNKED_MARKER);
        chunked.push(0xc3);
        str_(&mut chunked, "shape");
        chunked.push(0x80);
        assert_eq!(
            parse(&wrap("emb", &chunked)),
            Err(MsgpackError::ChunkedArray { name: "emb".into() })
        );
        // Complex and unknown ext types.
        assert!(matches!(
            parse(&wrap("c", &[0xd4, 2, 0])),
            Err(MsgpackError::UnsupportedExt { code: 2, .. })
        ));
        assert!(matches!(
            parse(&wrap("c", &[0xd4, 0x7f, 0])),
            Err(MsgpackError::UnsupportedExt { code: 127, .. })
        ));
        // Unknown dtype, size mismatch, malformed payloads.
        assert!(matches!(
            parse(&wrap("t", &ndarray(&[1], "object", &[0; 8]))),
            Err(MsgpackError::UnknownDtype { .. })
        ));
        assert!(matches!(
            parse(&wrap("t", &ndarray(&[2], "float32", &[0; 4]))),
            Err(MsgpackError::SizeMismatch {
                expected: 8,
                actual: 4,
                ..
            })
        ));
        assert!(matches!(
            parse(&wrap("t", &[0xd4, 1, 0x90])),
            Err(MsgpackError::BadNdarray { .. })
        ));
        let mut p = ndarray(&[1], "uint8", &[0]);
        p[1] += 1;
        p.push(0xc0);
        assert!(matches!(
            parse(&wrap("t", &p)),
            Err(MsgpackError::BadNdarray { .. })
        ));
        // Bytes as a leaf, bad keys, not a map, reserved byte.
        assert!(matches!(
            parse(&wrap("b", &[0xc4, 1, 0])),
            Err(MsgpackError::BytesLeaf { .. })
        ));
        assert!(matches!(
            parse(&[0x81, 0xc0, 0xc0]),
            Err(MsgpackError::BadKey { found: "nil", .. })
        ));
        assert!(matches!(
            parse(&[0x90]),
            Err(MsgpackError::NotAMap { found: "an array" })
        ));
        assert!(matches!(
            parse(&[0x81, 0xc1, 0xc0]),
            Err(MsgpackError::InvalidByte { .. })
        ));
        assert!(matches!(
            parse(&[0x81, 0xa1, 0xff, 0xc0]),
            Err(MsgpackError::NotUtf8 { .. })
        ));
        // Duplicate keys and colliding flattened names.
        let mut f = vec![0x82];
        str_(&mut f, "a");
        f.push(1);
        str_(&mut f, "a");
        f.push(2);
        assert_eq!(
            parse(&f),
            Err(MsgpackError::DuplicateName { name: "a".into() })
        );
        let mut f = vec![0x82];
        str_(&mut f, "a.b");
        f.push(1);
        str_(&mut f, "a");
        f.push(0x81);
        str_(&mut f, "b");
        f.push(2);
        assert_eq!(
            parse(&f),
            Err(MsgpackError::DuplicateName { name: "a.b".into() })
        );
    }

    #[test]
    fn counts_and_depth() {
        assert!(matches!(
            parse(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            Err(MsgpackError::CountPastEnd { .. })
        ));
        assert!(matches!(
            parse(&[0x81, 0xa1, b'a', 0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(MsgpackError::CountPastEnd { .. })
        ));
        assert!(matches!(
            parse(&[0x81, 0xa1, b'a', 0xc6, 0xff, 0xff, 0xff, 0xff]),
            Err(MsgpackError::Truncated { .. })
        ));
        let mut f = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            f.extend([0x81, 0xa1, b'k']);
        }
        f.push(0xc0);
        assert!(matches!(parse(&f), Err(MsgpackError::TooDeep { .. })));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn mutated_files_never_panic(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            ) {
                let mut f = sample();
                for (at, byte) in edits {
                    let i = at.index(f.len());
                    f[i] = byte;
                }
                let _ = parse(&f);
            }
        }
    }
}
