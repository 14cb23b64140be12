//! The plan of the output files, computed before any data is written: tensor order,
//! sharding, and each shard's serialized header.
//!
//! Why first: the header must come first in a safetensors file, and a converted model can be
//! larger than RAM, so the header is computed from names, dtypes and shapes alone. Tensor names
//! are sorted, data is contiguous in that order, the JSON header is padded with spaces to a
//! multiple of 8 so data starts 8-byte aligned, and `__metadata__` comes first. Outputs above
//! the shard limit are split into `model-0000k-of-0000n.safetensors` with a
//! `model.safetensors.index.json` (`metadata.total_size`, `weight_map`), as transformers writes
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use orient_inspect::{write, Dtype};

use crate::error::{Error, Result};

/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;
/// Name of the single-file output and of the index's data files' stem.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor of the output, as its header entry will describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutTensor {
    /// Name in the output.
    pub name: String,
    /// safetensors dtype name, e.g. "BF16".
    pub dtype: String,
    /// Shape in the output.
    pub shape: Vec<usize>,
    /// Exact number of data bytes (numel × dtype size).
    pub nbytes: u64,
}

/// One output file: which tensors it holds and its serialized header.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    /// File name inside the destination folder.
    pub file_name: String,
    /// Indices into [`Layout::tensors`], in data order.
    pub tensors: Vec<usize>,
    /// The 8-byte little-endian header length followed by the padded JSON header.
    pub header: Vec<u8>,
    /// Bytes of tensor data after the header.
    pub data_len: u64,
}

impl ShardPlan {
    /// Total file length in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }
}

/// The complete plan of the output files, computed before any data is written.
#[derive(Debug, Clone)]
pub struct Layout {
    /// All output tensors, sorted by name.
    pub tensors: Vec<OutTensor>,
    /// The files, in order; one file means no index.
    pub shards: Vec<ShardPlan>,
    /// Sum of all tensor data bytes (the index's `metadata.total_size`).
    pub total_size: u64,
}

impl Layout {
    /// Sorts `tensors` by name, splits them into shards of at most `max_shard_size`
    /// data bytes (a single larger tensor gets a shard of its own) and serializes each
    /// shard's header with `metadata` as `__metadata__`.
    pub fn new(
        mut tensors: Vec<OutTensor>,
        metadata: &BTreeMap<String, String>,
        max_shard_size: u64,
    ) -> Result<Layout> {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        for pair in tensors.windows(2) {
            if pair[0].name == pair[1].name {
                return Err(Error::DuplicateTensor(pair[0].name.clone()));
            }
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut current = 0u64;
        let mut total = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            total = total
                .checked_add(t.nbytes)
                .ok_or_else(|| Error::SizeOverflow(t.name.clone()))?;
            match groups.last_mut() {
                Some(g) if current.saturating_add(t.nbytes) <= max_shard_size => {
                    g.push(i);
                    current += t.nbytes;
                }
                _ => {
                    groups.push(vec![i]);
                    current = t.nbytes;
                }
            }
        }
        if groups.is_empty() {
            groups.push(Vec::new());
        }
        let n = groups.len();
        let mut shards = Vec::with_capacity(n);
        for (k, group) in groups.into_iter().enumerate() {
            let file_name = if n == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
            };
            let (header, data_len) = serialize_header(&tensors, &group, metadata)?;
            shards.push(ShardPlan {
                file_name,
                tensors: group,
                header,
                data_len,
            });
        }
        Ok(Layout {
            tensors,
            shards,
            total_size: total,
        })
    }

    /// The `model.safetensors.index.json` text, or `None` for a single-file output.
    pub fn index_json(&self) -> Option<String> {
        if self.shards.len() < 2 {
            return None;
        }
        let mut by_name: BTreeMap<&str, &str> = BTreeMap::new();
        for s in &self.shards {
            for &i in &s.tensors {
                if let Some(t) = self.tensors.get(i) {
                    by_name.insert(&t.name, &s.file_name);
                }
            }
        }
        let weight_map: serde_json::Map<String, serde_json::Value> = by_name
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let index = serde_json::json!({
            "metadata": { "total_size": self.total_size },
            "weight_map": weight_map,
        });
        serde_json::to_string_pretty(&index).ok().map(|s| s + "\n")
    }
}

/// The header of the shard holding `group` (in data order): the one safetensors header
/// writer (`orient_inspect::write::header`), which also refuses duplicate or reserved names
/// and byte counts that do not match their shapes.
fn serialize_header(
    tensors: &[OutTensor],
    group: &[usize],
    metadata: &BTreeMap<String, String>,
) -> Result<(Vec<u8>, u64)> {
    let entries = group
        .iter()
        .map(|&i| {
            let t = &tensors[i];
            let dtype = Dtype::parse(&t.dtype).ok_or_else(|| Error::Validation {
                path: PathBuf::from("<header>"),
                problem: format!("tensor `{}`: unknown dtype {}", t.name, t.dtype),
            })?;
            Ok(write::Entry {
                name: &t.name,
                dtype,
                shape: &t.shape,
                nbytes: t.nbytes,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    write::header(&entries, metadata).map_err(|e| Error::Validation {
        path: PathBuf::from("<header>"),
        problem: e.to_string(),
    })
}

/// Parses a size such as `500MB` (10^6), `2GiB` (2^30), `1000000` or `1.5GB`.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || Error::InvalidSize(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !(v >= 1.0 && v < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(v as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: &str, shape: &[usize], esize: u64) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            nbytes: shape.iter().product::<usize>() as u64 * esize,
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000000").unwrap(), 1_000_000);
        assert_eq!(parse_size("1.5gb").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("64 KiB").unwrap(), 65536);
        for bad in ["", "0", "MB", "12XB", "-5", "99999999999999999999TB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = Layout::new(
            vec![t("x", "F32", &[1], 4), t("x", "F32", &[1], 4)],
            &BTreeMap::new(),
            u64::MAX,
        )
        .unwrap_err();
        assert!(matches!(err, Error::DuplicateTensor(n) if n == "x"));
    }
}
