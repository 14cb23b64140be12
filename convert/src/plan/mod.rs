//! Deciding, before any byte is written, what happens to every tensor.
//!
//! Why a separate plan: the conversion must refuse to guess. Every rename, relayout, cast and
//! skip is read from the layout catalogue of `orient-inspect` (conventions as data, never name
//! patterns here), and the whole plan is checked (source convention, names, shapes, lm_head,
//! castable dtypes) before the writer starts, so a refusal costs nothing and leaves nothing.
//! `--dry-run` prints this plan as it is.
//!
//! A conversion goes from any convention to any convention through canonical tensors: each
//! output tensor is the target convention's chain applied to canonical views, and each
//! canonical view is the source's stored tensors read through the source convention's inverse
//! chain ([`orient_inspect::layout`]). Both chains are index maps (plus value operations), so
//! an output is one [`View`] over source tensors that the engine reads band by band; the
//! composed chain, with steps that cancel removed, is what `--dry-run` and the provenance name.
//!
//! Source detection (`--from auto`) is the catalogue's one detector
//! ([`Catalogue::detect`]): a tensor's name (`kernel`/`embedding`/`scale` are Flax spellings, a
//! port's own names are its own; a norm's `weight` or a bias is spelled alike and says nothing)
//! and, for tensors stored differently between conventions, a **non-square** shape. A square
//! projection carries no shape evidence, so it is never transposed on a guess: its orientation
//! follows the file's names only when all other evidence agrees. A tensor whose name and shape
//! disagree (HF names with transposed non-square projections, as a buggy JAX loader writes
//! them), or a file mixing conventions, is refused with the offending tensors listed. An
//! explicit `--from NAME` reads every tensor in that convention whatever its spelling (a port
//! that renamed without transposing), and detection is still reported.
//!
//! lm_head: HF leaves it out when `tie_word_embeddings` is set; FlaxGPT2 does too (it
//! applies `wte.embedding.T`), but FlaxLlama/FlaxMistral always own an `lm_head` Dense
//! and never tie (transformers 4.57 `modeling_flax_llama.py`: `self.lm_head = nn.Dense`
//! and `lm_logits = self.lm_head(hidden_states)`). The conventions say so as data (a rule's
//! `tied = "stored"`, [`Form::tied_stored`]): a target form that stores a tied head gets one
//! built from the embedding, and a target that does not store it loses it. A tied model whose
//! file stores an lm_head is converted only after one check, whatever the target: the head
//! must be bit-equal to the embedding (compared as canonical tensors). Otherwise PyTorch (which
//! ignores it) and Flax (which uses it) compute different logits from the same file, and no
//! conversion can preserve both.

mod outputs;
mod provenance;
mod source;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use orient_inspect::layout::arch::Role;
use orient_inspect::layout::catalogue::{Catalogue, ConvId};
use orient_inspect::layout::convention::Convention;
#[cfg(doc)]
use orient_inspect::layout::{catalogue::Form, view::View};
use orient_inspect::{parse_config, Arch, Checkpoint, ConfigOutcome, Dtype, ModelConfig};

use crate::engine::TensorOp;
use crate::error::{Error, Result};
use outputs::Builder;
use source::{
    bind_in, check_duplicates, check_known, check_missing, check_shapes, entry_of, judge, Detect,
};

/// How the source convention is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// Detect it from names and non-square shapes.
    Auto,
    /// The user names it (a built-in or a `--layout` file's); detection is still run and
    /// reported.
    Explicit(String),
}

/// Options of a conversion.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target convention, by name (`hf`, `flax`, or a user layout's).
    pub to: String,
    /// Source convention or detection.
    pub from: From,
    /// `None` keeps every dtype; `Some(d)` casts every float tensor to `d`.
    pub dtype: Option<Dtype>,
    /// User conventions (`--layout FILE`), besides the built-ins.
    pub layouts: Vec<Arc<Convention>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            to: "hf".into(),
            from: From::Auto,
            dtype: None,
            layouts: Vec::new(),
        }
    }
}

/// What happens to one source tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read by these outputs (indices into [`Plan::ops`]): one for a rename or relayout,
    /// several when the target splits it, shared with other sources when it fuses them.
    Write {
        /// Indices into [`Plan::ops`].
        ops: Vec<usize>,
    },
    /// Left out of the output, for the stated reason.
    Skip(String),
}

/// One source tensor and its fate.
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
    pub source: String,
    /// The target convention.
    pub target: String,
    /// True when `--from` was given explicitly.
    pub explicit_from: bool,
    /// What detection concluded (reported even with an explicit `--from`).
    pub detected: std::result::Result<String, String>,
    /// One row per source tensor, sorted by name.
    pub rows: Vec<Row>,
    /// The output tensors, with their views, in the target convention's order.
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

    /// Outputs whose chain is exactly a 2-D transpose.
    pub fn transposed(&self) -> usize {
        self.ops.iter().filter(|o| o.is_transpose()).count()
    }

    /// Outputs made through any other chain (RoPE permutations, fused or split parts, …).
    pub fn relaid(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| !o.chain.is_empty() && !o.is_transpose())
            .count()
    }

    /// Outputs whose dtype changes.
    pub fn cast(&self) -> usize {
        self.ops.iter().filter(|o| o.casts()).count()
    }

    /// Source tensors left out.
    pub fn skipped(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.action, Action::Skip(_)))
            .count()
    }
}

impl TensorOp {
    /// Short description of the operations, e.g. `rename, transpose, cast F32→BF16`, or
    /// `rename, transpose → rope-permute(heads=4, to=half, rotary=16)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.tied {
            parts.push(format!("from {}", self.source()));
        } else if self.sources.iter().all(|s| s.name != self.target) {
            parts.push("rename".to_string());
        }
        if !self.chain.is_empty() {
            parts.push(self.chain_text());
        }
        if self.casts() {
            parts.push(format!(
                "cast {}→{}",
                self.source_dtype().name(),
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

/// The architectures the catalogue knows, for messages.
fn known_archs() -> String {
    Arch::names().join(", ")
}

/// Reads the config of `ckpt`, or says precisely why it cannot be used (`target` names the
/// layout asked for, for the message).
pub fn config_of(ckpt: &Checkpoint, target: &str) -> Result<ModelConfig> {
    let root = ckpt.root().to_path_buf();
    let text = ckpt
        .config_text()
        .ok_or_else(|| Error::NoConfig { path: root.clone() })?;
    match parse_config(text) {
        Ok(ConfigOutcome::Known(cfg)) => Ok(cfg),
        Ok(ConfigOutcome::UnknownArch {
            model_type,
            architectures,
        }) => Err(Error::UnknownArchitecture {
            model_type: model_type
                .or_else(|| architectures.first().cloned())
                .unwrap_or_else(|| "(none given)".into()),
            known: known_archs(),
            target: target.into(),
        }),
        Err(source) => Err(Error::Config {
            path: root.join("config.json"),
            source,
        }),
    }
}

/// Builds and checks the plan of converting `ckpt` with `opts`: the conventions, the source
/// read and checked in its convention, the outputs of the target's, and the provenance.
pub fn plan(ckpt: &Checkpoint, opts: &Options) -> Result<Plan> {
    let cfg = config_of(ckpt, &opts.to)?;
    let cat = Catalogue::for_model(&cfg, &opts.layouts)?;
    let path = ckpt.root();
    let conv = |c: ConvId| cat.conventions()[c].name.clone();
    let target = find(&cat, &opts.to)?;
    let explicit = match &opts.from {
        From::Explicit(name) => Some(find(&cat, name)?),
        From::Auto => None,
    };
    check_known(&cat, ckpt)?;
    let listing: Vec<(&str, &[usize])> = ckpt
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.shape.as_slice()))
        .collect();
    let candidates: Vec<ConvId> = (0..cat.conventions().len()).collect();
    let detected = judge(&cat, &cat.detect(&listing, &candidates), &listing);
    // The same tensor twice (in two spellings or two conventions) is refused before anything
    // is decided from it.
    let names: Vec<&str> = listing.iter().map(|(n, _)| *n).collect();
    let prefer = explicit.or(detected.as_ref().ok().copied()).unwrap_or(0);
    let first = cat.bind(&names, prefer);
    check_duplicates(&cat, &first, &names, path)?;
    let (source, notes) = decide(&cat, explicit, &detected, path)?;
    let binding = bind_in(&cat, &first, &names, source, path)?;
    check_shapes(&cat, &binding, &listing, source)?;
    check_missing(&cat, &binding, source, path)?;

    let shapes: Vec<&[usize]> = listing.iter().map(|(_, s)| *s).collect();
    let mut b = Builder {
        ckpt,
        cat: &cat,
        binding: &binding,
        shapes: &shapes,
        source,
        target,
        dtype: opts.dtype,
        ops: Vec::new(),
        skips: HashMap::new(),
        notes,
    };
    b.outputs()?;
    let rows = rows(&cat, &b, target);
    let Builder { ops, mut notes, .. } = b;
    notes.dedup();
    let metadata = provenance::provenance(&cat, source, target, &ops, &rows);
    Ok(Plan {
        config: cfg,
        source: conv(source),
        target: conv(target),
        explicit_from: explicit.is_some(),
        detected: match &detected {
            Ok(c) => Ok(conv(*c)),
            Err(d) => Err(d.summary()),
        },
        rows,
        ops,
        notes,
        metadata,
    })
}

/// The convention named `name`, or an error listing the known ones.
fn find(cat: &Catalogue, name: &str) -> Result<ConvId> {
    cat.convention_id(name)
        .ok_or_else(|| Error::UnknownConvention {
            name: name.to_string(),
            known: known_conventions(cat),
        })
}

/// The conventions of `cat`, comma-separated.
fn known_conventions(cat: &Catalogue) -> String {
    cat.conventions()
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The source convention: the explicit one (with a note saying what detection says), or
/// the detected one, or why there is none.
fn decide(
    cat: &Catalogue,
    explicit: Option<ConvId>,
    detected: &std::result::Result<ConvId, Detect>,
    path: &std::path::Path,
) -> Result<(ConvId, Vec<String>)> {
    let conv = |c: ConvId| cat.conventions()[c].name.as_str();
    let Some(source) = explicit else {
        return match detected {
            Ok(c) => Ok((*c, Vec::new())),
            Err(Detect::Contradictory(problems)) => Err(Error::Contradictory {
                path: path.to_path_buf(),
                problems: problems.clone(),
            }),
            Err(Detect::NoEvidence(reason)) => Err(Error::Undetectable {
                path: path.to_path_buf(),
                candidates: known_conventions(cat),
                reason: reason.clone(),
            }),
        };
    };
    let note = match detected {
        Ok(c) if *c == source => format!(
            "--from {} given explicitly (detection agrees)",
            conv(source)
        ),
        Ok(c) => format!(
            "--from {} given explicitly: it OVERRIDES detection, which says {}",
            conv(source),
            conv(*c)
        ),
        Err(d) => format!(
            "--from {} given explicitly: it OVERRIDES detection, which says: {}",
            conv(source),
            d.summary()
        ),
    };
    Ok((source, vec![note]))
}

/// One row per source tensor, sorted by name: the outputs reading it, or why it is left out.
fn rows(cat: &Catalogue, b: &Builder<'_>, target: ConvId) -> Vec<Row> {
    let tensors = b.ckpt.tensors();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, op) in b.ops.iter().enumerate().filter(|(_, o)| !o.tied) {
        for s in &op.sources {
            readers.entry(s.name.as_str()).or_default().push(i);
        }
    }
    let mut rows: Vec<Row> = tensors
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let buffer =
                entry_of(cat, b.binding, k).is_some_and(|e| cat.entries()[e].role == Role::Buffer);
            let action = match (b.skips.get(&k), readers.get(t.name.as_str())) {
                (Some(why), _) => Action::Skip(why.clone()),
                (None, _) if buffer => Action::Skip("causal-mask buffer, not a weight".into()),
                (None, Some(ops)) => Action::Write { ops: ops.clone() },
                (None, None) => Action::Skip(format!(
                    "the {} layout does not use it",
                    cat.conventions()[target].name
                )),
            };
            Row {
                source: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
                action,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.source.cmp(&b.source));
    rows
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Write { ops } => write!(f, "write op(s) {ops:?}"),
            Action::Skip(why) => write!(f, "skip: {why}"),
        }
    }
}
