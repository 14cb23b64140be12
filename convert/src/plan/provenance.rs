//! The provenance written into `__metadata__`: the format, both conventions, and per output
//! tensor its chain and cast, with per-layer entries folded so that it stays short.

use std::collections::BTreeMap;

use orient_inspect::layout::catalogue::{Catalogue, ConvId};

use super::{Action, Row};
use crate::engine::TensorOp;

/// The layer pattern of a provenance entry: the first number in its name that stands alone
/// between separators (`model.layers.12.x`, `params.decoder.layer_12.x`, `blk.12.x`)
/// replaced by `{i}`.
fn layer_pattern(entry: &str) -> Option<(String, usize)> {
    let end = entry.find(':').unwrap_or(entry.len());
    let name = &entry[..end];
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let before = start == 0 || matches!(bytes[start - 1], b'.' | b'_');
            let after = i == bytes.len() || matches!(bytes[i], b'.' | b'_');
            if before && after {
                let layer = name[start..i].parse().ok()?;
                return Some((format!("{}{{i}}{}", &entry[..start], &entry[i..]), layer));
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Folds `model.layers.0.x:T`, `model.layers.1.x:T`, … into `model.layers.{0-27}.x:T`, so
/// the per-tensor summary stays a few lines long whatever the depth of the model. Entries
/// keep their first position; layers that differ in their operations stay apart.
fn compact_layers(entries: &[String]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut plain: Vec<(usize, String)> = Vec::new();
    for entry in entries {
        match layer_pattern(entry) {
            Some((pattern, layer)) => match groups.iter_mut().find(|(p, _)| *p == pattern) {
                Some((_, layers)) => layers.push(layer),
                None => groups.push((pattern, vec![layer])),
            },
            None => plain.push((groups.len() + plain.len(), entry.clone())),
        }
    }
    let mut out: Vec<String> = groups
        .into_iter()
        .map(|(pattern, layers)| {
            let ranges = orient_inspect::report::compact_ranges(&layers);
            pattern.replacen("{i}", &format!("{{{ranges}}}"), 1)
        })
        .collect();
    for (at, entry) in plain {
        out.insert(at.min(out.len()), entry);
    }
    out
}

/// `__metadata__` of the output: `format`, and provenance under `orient.*`: per output
/// tensor, its chain (`T` for a plain transpose), its cast and where a built tensor came from.
pub(super) fn provenance(
    cat: &Catalogue,
    source: ConvId,
    target: ConvId,
    ops: &[TensorOp],
    rows: &[Row],
) -> BTreeMap<String, String> {
    let mut summary: Vec<String> = Vec::new();
    let mut sorted: Vec<&TensorOp> = ops.iter().collect();
    sorted.sort_by(|a, b| a.target.cmp(&b.target));
    for op in sorted {
        let mut parts = Vec::new();
        if op.is_transpose() {
            parts.push("T".to_string());
        } else if !op.chain.is_empty() {
            parts.push(op.chain_text());
        }
        if op.casts() {
            parts.push(op.target_dtype.name().to_ascii_lowercase());
        }
        if op.tied {
            parts.push(format!("={}", op.source()));
        }
        if !parts.is_empty() {
            summary.push(format!("{}:{}", op.target, parts.join(",")));
        }
    }
    let summary = compact_layers(&summary);
    let dropped: Vec<String> = rows
        .iter()
        .filter(|r| matches!(r.action, Action::Skip(_)))
        .map(|r| r.source.clone())
        .collect();
    let conv = |c: ConvId| cat.conventions()[c].clone();
    let mut m = BTreeMap::new();
    m.insert("format".into(), conv(target).format.clone());
    m.insert("orient.source_convention".into(), conv(source).name.clone());
    m.insert("orient.target_convention".into(), conv(target).name.clone());
    m.insert("orient.version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("orient.ops".into(), summary.join(";"));
    if !dropped.is_empty() {
        m.insert("orient.dropped".into(), dropped.join(";"));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_folds_layers() {
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let got = compact_layers(&e(&[
            "lm_head.kernel:T",
            "model.layers.0.q.kernel:T",
            "model.layers.1.q.kernel:T",
            "model.layers.3.q.kernel:T",
            "model.norm.weight:bf16",
            "model.layers.2.q.kernel:T,bf16",
        ]));
        assert_eq!(
            got,
            e(&[
                "lm_head.kernel:T",
                "model.layers.{0-1,3}.q.kernel:T",
                "model.norm.weight:bf16",
                "model.layers.{2}.q.kernel:T,bf16",
            ])
        );
    }

    #[test]
    fn provenance_folds_layers_of_other_spellings_and_keeps_chains_apart() {
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rope = "rope-permute(heads=4, to=interleaved, rotary=16) → transpose";
        let got = compact_layers(&e(&[
            &format!("params.decoder.layer_0.attn.wq:{rope}"),
            &format!("params.decoder.layer_1.attn.wq:{rope}"),
            "params.decoder.layer_0.attn.wv:T",
            "params.decoder.layer_1.attn.wv:T",
            "blk.7.attn_q:scale(0.5)",
            "lm_head.kernel:T",
        ]));
        assert_eq!(
            got,
            e(&[
                &format!("params.decoder.layer_{{0-1}}.attn.wq:{rope}"),
                "params.decoder.layer_{0-1}.attn.wv:T",
                "blk.{7}.attn_q:scale(0.5)",
                "lm_head.kernel:T",
            ])
        );
        // Digits that are part of a word are not layers.
        assert_eq!(layer_pattern("model.w13:T"), None);
        assert_eq!(layer_pattern("h2o.x:T"), None);
    }
}
