//! Writing safetensors: the header serializer, the inverse of [`crate::header::parse`], and
//! small files built whole in memory.
//!
//! Why here: the format's rules (an 8-byte little-endian length, a JSON header padded with
//! spaces so that the data starts 8-byte aligned, `__metadata__` first, offsets tiling the data
//! buffer in order) belong next to the parser that enforces them, so that every writer of the
//! workspace produces what every reader accepts. [`header`] works from names, dtypes, shapes
//! and byte counts alone, so a streaming writer can put it first and stream the data after
//! it; [`to_bytes`] is the whole-file form for small outputs (`orient run --save`).

use std::collections::{BTreeMap, HashSet};

use crate::dtype::Dtype;

/// One tensor's header entry: what the header says about it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: &'a [usize],
    /// Number of data bytes; must be the exact size of `shape` elements of `dtype`.
    pub nbytes: u64,
}

/// One tensor with its data, for [`to_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a scalar).
    pub shape: &'a [usize],
    /// Little-endian element bytes.
    pub data: &'a [u8],
}

/// Why a set of tensors cannot be written as safetensors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The data length is not the size of the shape in that dtype.
    #[error("tensor `{name}`: {dtype} {shape:?} needs {want} bytes, but {got} were given")]
    Length {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes given.
        got: u64,
        /// Bytes the shape needs.
        want: u64,
    },
    /// The size of the tensor (or of all data) does not fit in 64 bits, or a sub-byte dtype
    /// does not fill whole bytes.
    #[error("tensor `{0}`: its size overflows or does not fill whole bytes")]
    Size(String),
    /// Two tensors with one name.
    #[error("tensor `{0}` is given twice")]
    Duplicate(String),
    /// A tensor named `__metadata__`, which the format reserves.
    #[error("`__metadata__` is reserved and cannot name a tensor")]
    Reserved,
}

/// The bytes of a header for `entries` in this data order: the 8-byte length, then the JSON
/// (`__metadata__` first, when not empty) padded with spaces to a multiple of 8. Returns the
/// header and the length of the data buffer that must follow it.
pub fn header(
    entries: &[Entry<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, u64), WriteError> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        map.insert("__metadata__".into(), meta.into());
    }
    let mut seen = HashSet::with_capacity(entries.len());
    let mut offset = 0u64;
    for e in entries {
        if e.name == "__metadata__" {
            return Err(WriteError::Reserved);
        }
        if !seen.insert(e.name) {
            return Err(WriteError::Duplicate(e.name.to_string()));
        }
        let want = e
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|numel| e.dtype.checked_size(numel))
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| WriteError::Size(e.name.to_string()))?;
        if want != e.nbytes {
            return Err(WriteError::Length {
                name: e.name.to_string(),
                dtype: e.dtype,
                shape: e.shape.to_vec(),
                got: e.nbytes,
                want,
            });
        }
        let end = offset
            .checked_add(e.nbytes)
            .ok_or_else(|| WriteError::Size(e.name.to_string()))?;
        map.insert(
            e.name.to_string(),
            serde_json::json!({ "dtype": e.dtype.name(), "shape": e.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    // A map of strings and numbers always serializes.
    let mut json = serde_json::Value::Object(map).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok((out, offset))
}

/// A whole safetensors file in memory: the tensors sorted by name, their header, then their
/// data in that order.
pub fn to_bytes(
    tensors: &[Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WriteError> {
    let mut order: Vec<&Tensor<'_>> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(b.name));
    let entries: Vec<Entry<'_>> = order
        .iter()
        .map(|t| Entry {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
            nbytes: t.data.len() as u64,
        })
        .collect();
    let (mut out, data_len) = header(&entries, metadata)?;
    let total = usize::try_from(data_len)
        .ok()
        .and_then(|d| d.checked_add(out.len()))
        .ok_or_else(|| WriteError::Size("(all tensors)".to_string()))?;
    out.reserve_exact(total - out.len());
    for t in order {
        out.extend_from_slice(t.data);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::header;
    use proptest::prelude::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_written_file_parses_back_with_its_metadata_and_alignment() {
        let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let ids: Vec<u8> = [7i64, 8].iter().flat_map(|x| x.to_le_bytes()).collect();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = to_bytes(
            &[
                Tensor {
                    name: "z",
                    dtype: Dtype::F32,
                    shape: &[2, 3],
                    data: &a,
                },
                Tensor {
                    name: "ids",
                    dtype: Dtype::I64,
                    shape: &[2],
                    data: &ids,
                },
            ],
            &meta,
        )
        .unwrap();
        let h = header::parse(&bytes).unwrap();
        assert_eq!(h.data_start % 8, 0);
        assert_eq!(h.metadata, meta);
        // sorted by name: ids first
        assert_eq!(h.tensors[0].name, "ids");
        assert_eq!(h.tensors[1].shape, vec![2, 3]);
        let (s, e) = h.tensors[1].data_offsets;
        assert_eq!(&bytes[h.data_start + s..h.data_start + e], a.as_slice());
        // the JSON starts with the metadata
        assert!(std::str::from_utf8(&bytes[8..h.data_start])
            .unwrap()
            .starts_with(r#"{"__metadata__":{"format":"pt"}"#));
    }

    #[test]
    fn inconsistent_tensors_are_refused() {
        fn t(name: &'static str, shape: &'static [usize], data: &'static [u8]) -> Tensor<'static> {
            Tensor {
                name,
                dtype: Dtype::F32,
                shape,
                data,
            }
        }
        let e = to_bytes(&[t("x", &[2], &[0u8; 4])], &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor `x`: F32 [2] needs 8 bytes, but 4 were given"
        );
        let e = to_bytes(
            &[t("x", &[1], &[0u8; 4]), t("x", &[1], &[0u8; 4])],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e, WriteError::Duplicate("x".into()));
        assert_eq!(
            to_bytes(&[t("__metadata__", &[1], &[0u8; 4])], &BTreeMap::new()).unwrap_err(),
            WriteError::Reserved
        );
        let huge: &'static [usize] = &[usize::MAX, 2];
        assert!(matches!(
            to_bytes(&[t("h", huge, &[0u8; 4])], &BTreeMap::new()),
            Err(WriteError::Size(_))
        ));
        assert!(to_bytes(&[t("ok", &[1], &[0u8; 4])], &BTreeMap::new()).is_ok());
    }

    proptest! {
        /// Any set of tensors with distinct names round-trips through the reader: names,
        /// dtypes, shapes, data and metadata.
        #[test]
        fn round_trips_through_the_reader(
            tensors in proptest::collection::btree_map(
                "[a-z][a-z0-9._]{0,12}",
                (prop_oneof![Just(Dtype::F32), Just(Dtype::BF16), Just(Dtype::I64), Just(Dtype::U8)],
                 proptest::collection::vec(0usize..4, 0..3), any::<u64>()),
                0..6),
            meta in proptest::collection::btree_map("[a-z]{1,6}", "[ -~]{0,10}", 0..3),
        ) {
            let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
                .into_iter()
                .map(|(name, (dtype, shape, seed))| {
                    let n = dtype.checked_size(shape.iter().product()).unwrap();
                    let data = (0..n).map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8).collect();
                    (name, dtype, shape, data)
                })
                .collect();
            let list: Vec<Tensor<'_>> = owned
                .iter()
                .map(|(name, dtype, shape, data)| Tensor { name, dtype: *dtype, shape, data })
                .collect();
            let bytes = to_bytes(&list, &meta).unwrap();
            let h = header::parse(&bytes).unwrap();
            prop_assert_eq!(h.data_start % 8, 0);
            prop_assert_eq!(&h.metadata, &meta);
            prop_assert_eq!(h.tensors.len(), owned.len());
            for (name, dtype, shape, data) in &owned {
                let t = h.tensors.iter().find(|t| &t.name == name).unwrap();
                prop_assert_eq!(t.dtype, *dtype);
                prop_assert_eq!(&t.shape, shape);
                let (s, e) = t.data_offsets;
                prop_assert_eq!(&bytes[h.data_start + s..h.data_start + e], data.as_slice());
            }
        }
    }
}
