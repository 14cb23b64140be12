//! Deciding, before any byte is written, what happens to every tensor.
//!
//! Why a separate plan: the conversion must refuse to guess. Every rename, transpose,
//! cast and skip is read from the layout catalogue of `orient-inspect`, never from
//! name patterns, and the whole plan is checked (source convention, shapes, lm_head,
//! castable dtypes) before the writer starts, so a refusal costs nothing and leaves
//! nothing. `--dry-run` prints this plan as it is.
//!
//! Source detection (`--from auto`) uses two kinds of evidence per tensor: its name
//! (`kernel`/`embedding`/`scale` are Flax spellings, `weight` of a projection is HF; a
//! norm's `weight` or a bias is spelled the same in both and says nothing) and, for
//! tensors that differ by a transpose between conventions, a **non-square** shape.
//! A square projection carries no shape evidence, so it is never transposed on a guess:
//! its orientation follows the file's names only when all other evidence agrees. A
//! tensor whose name and shape disagree (HF names with transposed non-square
//! projections, as a buggy JAX loader writes them), or a file mixing conventions, is
//! refused with the offending tensors listed.
//!
//! lm_head: HF leaves it out when `tie_word_embeddings` is set; FlaxGPT2 does too (it
//! applies `wte.embedding.T`), but FlaxLlama/FlaxMistral always own an `lm_head` Dense
//! and never tie (transformers 4.57 `modeling_flax_llama.py`: `self.lm_head = nn.Dense`
//! and `lm_logits = self.lm_head(hidden_states)`). So a tied llama-family model gets an
//! `lm_head.kernel` built from the embedding when converted to Flax, and loses it again
//! on the way back. A tied model whose file stores an lm_head is converted only after one
//! check, whatever the target: the head must be bit-equal to the embedding. Otherwise PyTorch
//! (which ignores it) and Flax (which uses it) compute different logits from the same file,
//! and no conversion can preserve both.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use orient_inspect::{
    parse_config, Catalogue, Checkpoint, ConfigOutcome, Convention, Dtype, Entry, ModelConfig,
    Role, TensorInfo,
};

use crate::engine::TensorOp;
use crate::error::{Error, Result};

/// How the source convention is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// Detect it from names and non-square shapes.
    Auto,
    /// The user says so; detection is still run and reported.
    Explicit(Convention),
}

/// Options of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Target convention.
    pub to: Convention,
    /// Source convention or detection.
    pub from: From,
    /// `None` keeps every dtype; `Some(d)` casts every float tensor to `d`.
    pub dtype: Option<Dtype>,
}

/// What happens to one source tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Written to the output (possibly renamed, transposed, cast).
    Write {
        /// Index into [`Plan::ops`].
        op: usize,
    },
    /// Left out of the output, for the stated reason.
    Skip(String),
}

/// One row of the plan: a source tensor and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Source tensor name.
    pub source: String,
    /// Source shape.
    pub shape: Vec<usize>,
    /// Source dtype.
    pub dtype: Dtype,
    /// What happens to it.
    pub action: Action,
}

/// The complete, checked plan of a conversion.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The resolved config.
    pub config: ModelConfig,
    /// The convention the source is read as.
    pub source: Convention,
    /// The target convention.
    pub target: Convention,
    /// True when `--from` was given explicitly.
    pub explicit_from: bool,
    /// What detection concluded (reported even with an explicit `--from`).
    pub detected: std::result::Result<Convention, String>,
    /// One row per source tensor, sorted by name.
    pub rows: Vec<Row>,
    /// The output tensors, with their operations.
    pub ops: Vec<TensorOp>,
    /// Plain-language notes (lm_head built or dropped, overrides).
    pub notes: Vec<String>,
    /// `__metadata__` of the output (format and provenance).
    pub metadata: BTreeMap<String, String>,
}

impl Plan {
    /// Total output data bytes.
    pub fn output_bytes(&self) -> Result<u64> {
        self.ops.iter().try_fold(0u64, |acc, op| {
            acc.checked_add(op.target_nbytes()?)
                .ok_or_else(|| Error::SizeOverflow(op.target.clone()))
        })
    }
}

impl TensorOp {
    /// Short description of the operations, e.g. `rename, transpose, cast F32→BF16`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.tied {
            parts.push(format!("from {}", self.source));
        } else if self.source != self.target {
            parts.push("rename".to_string());
        }
        if self.transpose {
            parts.push("transpose".into());
        }
        if self.casts() {
            parts.push(format!(
                "cast {}→{}",
                self.source_dtype.name(),
                self.target_dtype.name()
            ));
        }
        if parts.is_empty() {
            "copy".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Name of a convention as the output metadata spells its `format`.
pub fn format_name(c: Convention) -> &'static str {
    match c {
        Convention::Hf => "pt",
        Convention::Flax => "flax",
    }
}

/// Whether the layout `c` of this model has an lm_head tensor: exactly when the framework
/// loading it computes the logits with its own head (the catalogue's rule, shared with the
/// forward: [`orient_inspect::catalogue::uses_own_lm_head`]).
pub fn has_lm_head(cfg: &ModelConfig, c: Convention) -> bool {
    orient_inspect::catalogue::uses_own_lm_head(cfg, c)
}

/// Reads the config of `ckpt`, or says precisely why it cannot be used.
pub fn config_of(ckpt: &Checkpoint, target: Convention) -> Result<ModelConfig> {
    let root = ckpt.root().to_path_buf();
    let text = ckpt.config_text().ok_or_else(|| Error::Config {
        path: root.clone(),
        problem: "no config.json next to the checkpoint; orient needs it to know the layout".into(),
    })?;
    match parse_config(text) {
        Ok(ConfigOutcome::Known(cfg)) => Ok(cfg),
        Ok(ConfigOutcome::UnknownArch {
            model_type,
            architectures,
        }) => Err(Error::UnknownArchitecture {
            model_type: model_type
                .or_else(|| architectures.first().cloned())
                .unwrap_or_else(|| "(none given)".into()),
            target: target.name().into(),
        }),
        Err(e) => Err(Error::Config {
            path: root.join("config.json"),
            problem: e.to_string(),
        }),
    }
}

/// Builds and checks the plan of converting `ckpt` with `opts`.
pub fn plan(ckpt: &Checkpoint, opts: &Options) -> Result<Plan> {
    let cfg = config_of(ckpt, opts.to)?;
    let cat = Catalogue::new(&cfg);
    let path = ckpt.root();

    // Every tensor must be a known part of this model's layout.
    let mut resolved = Vec::new();
    let mut unknown = Vec::new();
    for t in ckpt.tensors() {
        match cat.resolve(&t.name) {
            Some(m) => resolved.push((t, m)),
            None => unknown.push(format!(
                "  {}: not a tensor of a {} model with this config",
                t.name, cfg.model_type
            )),
        }
    }
    if !unknown.is_empty() {
        return Err(Error::Contradictory {
            path: path.to_path_buf(),
            problems: unknown,
        });
    }
    let mut seen: HashMap<usize, &str> = HashMap::new();
    let mut dups = Vec::new();
    for (t, m) in &resolved {
        if let Some(other) = seen.insert(m.entry, &t.name) {
            dups.push(format!(
                "  {} and {} are the same tensor ({}) in two spellings",
                other,
                t.name,
                cat.entries()[m.entry].hf.name
            ));
        }
    }
    if !dups.is_empty() {
        return Err(Error::Contradictory {
            path: path.to_path_buf(),
            problems: dups,
        });
    }

    let detected = detect(&cat, &resolved);
    let (source, explicit_from) = match opts.from {
        From::Explicit(c) => (c, true),
        From::Auto => match &detected {
            Ok(c) => (*c, false),
            Err(Detect::Contradictory(problems)) => {
                return Err(Error::Contradictory {
                    path: path.to_path_buf(),
                    problems: problems.clone(),
                })
            }
            Err(Detect::NoEvidence(reason)) => {
                return Err(Error::Undetectable {
                    path: path.to_path_buf(),
                    reason: reason.clone(),
                })
            }
        },
    };
    let mut notes = Vec::new();
    let detected_summary = match &detected {
        Ok(c) => Ok(*c),
        Err(Detect::Contradictory(p)) => Err(format!(
            "mixed or contradictory ({} offending tensor{})",
            p.len(),
            if p.len() == 1 { "" } else { "s" }
        )),
        Err(Detect::NoEvidence(r)) => Err(r.clone()),
    };
    if explicit_from {
        notes.push(match &detected_summary {
            Ok(c) if *c == source => format!(
                "--from {} given explicitly (detection agrees)",
                source.name()
            ),
            Ok(c) => format!(
                "--from {} given explicitly: it OVERRIDES detection, which says {}",
                source.name(),
                c.name()
            ),
            Err(why) => format!(
                "--from {} given explicitly: it OVERRIDES detection, which says: {}",
                source.name(),
                why
            ),
        });
    }

    let mut rows = Vec::new();
    let mut ops = Vec::new();
    let mut lm_head: Option<(&TensorInfo, usize)> = None;
    let mut present = vec![false; cat.entries().len()];
    for (t, m) in &resolved {
        present[m.entry] = true;
        let e = &cat.entries()[m.entry];
        if e.role == Role::Buffer {
            rows.push(Row {
                source: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
                action: Action::Skip("causal-mask buffer, not a weight".into()),
            });
            continue;
        }
        check_shape(t, e, source)?;
        if e.role == Role::LmHead {
            lm_head = Some((t, m.entry));
            continue;
        }
        push_write(&mut rows, &mut ops, t, e, opts, source)?;
    }

    // Required tensors that are absent.
    let missing: Vec<String> = cat
        .entries()
        .iter()
        .zip(&present)
        .filter(|(e, p)| !**p && e.optional.is_none() && e.role != Role::LmHead)
        .map(|(e, _)| {
            format!(
                "  {}: missing (expected {:?})",
                e.form(source).name,
                e.form(source).shape
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(Error::Contradictory {
            path: path.to_path_buf(),
            problems: missing,
        });
    }

    plan_lm_head(
        ckpt, &cfg, &cat, source, opts, lm_head, &mut rows, &mut ops, &mut notes,
    )?;
    rows.sort_by(|a, b| a.source.cmp(&b.source));

    let metadata = provenance(source, opts.to, &ops, &rows);
    Ok(Plan {
        config: cfg,
        source,
        target: opts.to,
        explicit_from,
        detected: detected_summary,
        rows,
        ops,
        notes,
        metadata,
    })
}

/// The tensor's shape must be its entry's shape in the source convention.
fn check_shape(t: &TensorInfo, e: &Entry, source: Convention) -> Result<()> {
    let want = &e.form(source).shape;
    if &t.shape != want {
        return Err(Error::ShapeMismatch {
            tensor: t.name.clone(),
            actual: t.shape.clone(),
            expected: want.clone(),
            convention: source.name().into(),
        });
    }
    Ok(())
}

/// Plans `t` (the source of catalogue entry `e`) as written: its operation (transposed
/// when the two conventions differ for that entry) and the plan row pointing at it.
fn push_write(
    rows: &mut Vec<Row>,
    ops: &mut Vec<TensorOp>,
    t: &TensorInfo,
    e: &Entry,
    opts: &Options,
    source: Convention,
) -> Result<()> {
    let transpose = e.transposed_between && source != opts.to;
    let op = make_op(t, e, opts, &t.name, transpose)?;
    rows.push(Row {
        source: t.name.clone(),
        shape: t.shape.clone(),
        dtype: t.dtype,
        action: Action::Write { op: ops.len() },
    });
    ops.push(op);
    Ok(())
}

/// One output tensor from source tensor `t` (entry `e`), named as in the target.
fn make_op(
    t: &TensorInfo,
    e: &Entry,
    opts: &Options,
    source_name: &str,
    transpose: bool,
) -> Result<TensorOp> {
    let target_dtype = match opts.dtype {
        None => t.dtype,
        Some(d) if d == t.dtype => d,
        Some(d) => {
            let castable = |x: Dtype| matches!(x, Dtype::F32 | Dtype::F16 | Dtype::BF16);
            if !castable(t.dtype) || !castable(d) {
                return Err(Error::NotCastable {
                    tensor: t.name.clone(),
                    dtype: t.dtype.name().into(),
                    target: d.name().into(),
                });
            }
            d
        }
    };
    Ok(TensorOp {
        source: source_name.to_string(),
        target: e.form(opts.to).name.clone(),
        transpose,
        source_dtype: t.dtype,
        target_dtype,
        source_shape: t.shape.clone(),
        target_shape: e.form(opts.to).shape.clone(),
        tied: false,
    })
}

/// Decides the lm_head: keep (transposed if needed), build from a tied embedding, drop
/// a tied copy after checking it equals the embedding, or refuse.
#[allow(clippy::too_many_arguments)]
fn plan_lm_head(
    ckpt: &Checkpoint,
    cfg: &ModelConfig,
    cat: &Catalogue,
    source: Convention,
    opts: &Options,
    lm_head: Option<(&TensorInfo, usize)>,
    rows: &mut Vec<Row>,
    ops: &mut Vec<TensorOp>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let Some(lm_index) = cat.entries().iter().position(|e| e.role == Role::LmHead) else {
        return Ok(());
    };
    let lm_entry = &cat.entries()[lm_index];
    let emb_entry = cat
        .entries()
        .iter()
        .find(|e| e.role == Role::Embedding)
        .ok_or_else(|| Error::MissingTensor("the token embedding".into()))?;
    let emb = ckpt
        .tensors()
        .iter()
        .find(|t| {
            cat.resolve(&t.name)
                .is_some_and(|m| cat.entries()[m.entry].role == Role::Embedding)
        })
        .ok_or_else(|| Error::MissingTensor(emb_entry.form(source).name.clone()))?;
    let needed = has_lm_head(cfg, opts.to);
    let target_name = lm_entry.form(opts.to).name.clone();
    if cfg.tie_word_embeddings {
        if let Some((t, _)) = lm_head {
            // The one check for every target: see the module docs.
            let equal = tied_copy_equals(ckpt, t, emb, source == Convention::Flax);
            // Bytes read from a file that changed meanwhile decide nothing.
            ckpt.check_tensor(t)?;
            ckpt.check_tensor(emb)?;
            if !equal {
                return Err(Error::LmHeadDiffers {
                    lm_head: t.name.clone(),
                    embedding: emb.name.clone(),
                    target: opts.to.name().into(),
                });
            }
        }
    }
    match (lm_head, needed) {
        (Some((t, _)), true) => {
            push_write(rows, ops, t, lm_entry, opts, source)?;
        }
        (None, true) if cfg.tie_word_embeddings => {
            // The embedding is [V, H] in both conventions; lm_head is [V, H] in HF and
            // [H, V] in Flax.
            let mut op = make_op(emb, lm_entry, opts, &emb.name, opts.to == Convention::Flax)?;
            op.tied = true;
            notes.push(format!(
                "tie_word_embeddings: the {} layout has its own {}, written from {}{}",
                opts.to.name(),
                target_name,
                emb.name,
                if op.transpose { " transposed" } else { "" }
            ));
            ops.push(op);
        }
        (None, true) => {
            return Err(Error::MissingLmHead {
                expected: lm_entry.form(source).name.clone(),
                target_name,
                target: opts.to.name().into(),
            })
        }
        (Some((t, _)), false) => {
            // Only a tied model leaves the head out, and it was checked equal above.
            rows.push(Row {
                source: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
                action: Action::Skip(format!(
                    "tied: equal to {}{}, and the {} layout leaves lm_head out",
                    emb.name,
                    if source == Convention::Flax {
                        "ᵀ"
                    } else {
                        ""
                    },
                    opts.to.name()
                )),
            });
            notes.push(format!(
                "tie_word_embeddings: {} dropped after checking it is bit-equal to the embedding",
                t.name
            ));
        }
        (None, false) => {}
    }
    Ok(())
}

/// True when `lm` holds exactly the embedding's bytes (transposed when `transposed`).
fn tied_copy_equals(
    ckpt: &Checkpoint,
    lm: &TensorInfo,
    emb: &TensorInfo,
    transposed: bool,
) -> bool {
    if lm.dtype != emb.dtype || lm.nbytes() != emb.nbytes() {
        return false;
    }
    let (a, b) = (ckpt.view(lm).bytes, ckpt.view(emb).bytes);
    let equal = if !transposed {
        a == b
    } else {
        // lm is [H, V], emb is [V, H].
        match emb.shape[..] {
            [v, h] if lm.shape[..] == [h, v] => {
                let es = emb.nbytes() / (v * h).max(1);
                (0..v).all(|r| {
                    (0..h).all(|c| {
                        a[(c * v + r) * es..(c * v + r + 1) * es]
                            == b[(r * h + c) * es..(r * h + c + 1) * es]
                    })
                })
            }
            _ => false,
        }
    };
    ckpt.release(lm);
    ckpt.release(emb);
    equal
}

/// Detection failure.
#[derive(Debug, Clone)]
enum Detect {
    /// One line per offending tensor.
    Contradictory(Vec<String>),
    /// Nothing in the file tells the conventions apart.
    NoEvidence(String),
}

/// Detects the source convention from names and non-square shapes (see module docs).
fn detect(
    cat: &Catalogue,
    resolved: &[(&TensorInfo, orient_inspect::NameMatch)],
) -> std::result::Result<Convention, Detect> {
    struct Evidence<'a> {
        name: &'a str,
        by_name: Option<Convention>,
        by_shape: Option<Convention>,
        shape: &'a [usize],
        hf_shape: &'a [usize],
    }
    let mut ev = Vec::new();
    for (t, m) in resolved {
        let e = &cat.entries()[m.entry];
        if e.role == Role::Buffer {
            continue;
        }
        let by_name = (!m.shared).then_some(m.convention);
        let square = matches!(t.shape[..], [a, b] if a == b);
        let by_shape = if e.transposed_between && !square {
            if t.shape == e.hf.shape {
                Some(Convention::Hf)
            } else if t.shape == e.flax.shape {
                Some(Convention::Flax)
            } else {
                None
            }
        } else {
            None
        };
        ev.push(Evidence {
            name: &t.name,
            by_name,
            by_shape,
            shape: &t.shape,
            hf_shape: &e.hf.shape,
        });
    }
    let mut problems = Vec::new();
    for e in &ev {
        if let (Some(n), Some(s)) = (e.by_name, e.by_shape) {
            if n != s {
                problems.push(format!(
                    "  {}: {} name, but its non-square shape {:?} is the {} orientation ({} expects {:?})",
                    e.name,
                    n.name(),
                    e.shape,
                    s.name(),
                    n.name(),
                    if n == Convention::Hf { e.hf_shape.to_vec() } else { e.hf_shape.iter().rev().copied().collect() }
                ));
            }
        }
    }
    let votes = |c: Convention| {
        ev.iter()
            .filter(|e| e.by_name == Some(c) || e.by_shape == Some(c))
            .count()
    };
    let (hf, flax) = (votes(Convention::Hf), votes(Convention::Flax));
    if problems.is_empty() && hf > 0 && flax > 0 {
        // Mixed without a per-tensor contradiction: list the minority.
        let minority = if hf < flax {
            Convention::Hf
        } else {
            Convention::Flax
        };
        for e in &ev {
            if e.by_name == Some(minority) || e.by_shape == Some(minority) {
                problems.push(format!(
                    "  {}: {} by its {}, while {} other tensors are {}",
                    e.name,
                    minority.name(),
                    if e.by_name == Some(minority) {
                        "name"
                    } else {
                        "shape"
                    },
                    hf.max(flax),
                    if minority == Convention::Hf {
                        "flax"
                    } else {
                        "hf"
                    }
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Detect::Contradictory(problems));
    }
    match (hf > 0, flax > 0) {
        (true, false) => Ok(Convention::Hf),
        (false, true) => Ok(Convention::Flax),
        _ => Err(Detect::NoEvidence(
            "no tensor name or non-square shape distinguishes the two layouts".into(),
        )),
    }
}

/// Folds `model.layers.0.x:T`, `model.layers.1.x:T`, … into `model.layers.{0-27}.x:T`, so
/// the per-tensor summary stays a few lines long whatever the depth of the model. Entries
/// keep their first position; layers that differ in their operations stay apart.
fn compact_layers(entries: &[String]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut plain: Vec<(usize, String)> = Vec::new();
    for entry in entries {
        match orient_inspect::report::layer_pattern(entry) {
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

/// `__metadata__` of the output: `format`, and provenance under `orient.*`.
fn provenance(
    source: Convention,
    target: Convention,
    ops: &[TensorOp],
    rows: &[Row],
) -> BTreeMap<String, String> {
    let mut summary: Vec<String> = Vec::new();
    let mut sorted: Vec<&TensorOp> = ops.iter().collect();
    sorted.sort_by(|a, b| a.target.cmp(&b.target));
    for op in sorted {
        let mut parts = Vec::new();
        if op.transpose {
            parts.push("T".to_string());
        }
        if op.casts() {
            parts.push(op.target_dtype.name().to_ascii_lowercase());
        }
        if op.tied {
            parts.push(format!("={}", op.source));
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
    let mut m = BTreeMap::new();
    m.insert("format".into(), format_name(target).into());
    m.insert("orient.source_convention".into(), source.name().into());
    m.insert("orient.version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("orient.ops".into(), summary.join(";"));
    if !dropped.is_empty() {
        m.insert("orient.dropped".into(), dropped.join(";"));
    }
    m
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Write { op } => write!(f, "write op {op}"),
            Action::Skip(why) => write!(f, "skip: {why}"),
        }
    }
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
}
