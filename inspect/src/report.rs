//! The `inspect` report: every tensor of a checkpoint checked against the layout
//! catalogue, plus a summary. Pure data (serde-serializable, the documented JSON
//! schema); rendering lives in the binary's output module.
//!
//! Statuses compare a tensor's shape with the shape the catalogue expects *in the
//! convention its name belongs to* (an HF name must look like HF, a Flax name like
//! Flax). A shape cannot prove the orientation of a square projection, so those are
//! flagged `square_ambiguous`: the failure this project exists for (a Qwen2-7B port
//! whose 3584×3584 q/o projections were transposed on load) looks exactly like `ok`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint::{Checkpoint, ConfigStatus, OpenNote, Source, TensorInfo};
use crate::dtype::Dtype;
use crate::layout::arch::Role;
use crate::layout::catalogue::{Catalogue, ConvId, Hit};
use crate::layout::convention::Convention;
use crate::layout::resolve::{Detection, Verdict};

/// Version of the JSON schema of [`Report`]. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// How one tensor compares with the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Name known, shape as expected.
    Ok,
    /// Name known, shape is the transpose of the expected one.
    Transposed,
    /// Name known, shape neither expected nor its transpose.
    ShapeMismatch,
    /// The catalogue has no tensor of this name for this architecture.
    Unexpected,
    /// The catalogue expects this tensor and the checkpoint lacks it.
    Missing,
    /// No catalogue to check against (no `config.json`, or an unknown architecture).
    Unchecked,
}

impl Status {
    /// The kebab-case name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Transposed => "transposed",
            Status::ShapeMismatch => "shape-mismatch",
            Status::Unexpected => "unexpected",
            Status::Missing => "missing",
            Status::Unchecked => "unchecked",
        }
    }
}

/// Per-tensor statistics of the data (`--stats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Smallest finite value (`null` when there is none).
    pub min: Option<f64>,
    /// Largest finite value.
    pub max: Option<f64>,
    /// Mean of finite values.
    pub mean: Option<f64>,
    /// Population standard deviation of finite values.
    pub std: Option<f64>,
    /// Count of NaN values.
    pub nan: u64,
    /// Count of ±Inf values.
    pub inf: u64,
}

/// One row of the report: a tensor of the file, or a missing one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorRow {
    /// Tensor name as stored (for a missing tensor: its name in the detected convention).
    pub name: String,
    /// Element type (`null` when missing).
    pub dtype: Option<Dtype>,
    /// Shape (`null` when missing).
    pub shape: Option<Vec<usize>>,
    /// Number of elements.
    pub params: u64,
    /// Role from the catalogue (`null` when unknown).
    pub role: Option<Role>,
    /// The convention the name belongs to (`null` when unknown or spelled alike in several).
    pub convention: Option<String>,
    /// The layout that convention implies, in words, e.g. `hf Linear [out,in]`.
    pub layout: Option<String>,
    /// The shape the config implies for this name.
    pub expected_shape: Option<Vec<usize>>,
    /// The canonical shape as a formula of the config, e.g. `[nH·D, H]`.
    pub shape_formula: Option<String>,
    /// The verdict.
    pub status: Status,
    /// A square projection: the shape cannot prove its orientation.
    pub square_ambiguous: bool,
    /// Layer index for per-layer tensors.
    pub layer: Option<usize>,
    /// Index of the shard holding it (`null` when missing).
    pub shard: Option<usize>,
    /// Extra explanation (e.g. a buffer, an lm_head kept despite tied embeddings).
    pub note: Option<String>,
    /// Data statistics, with `--stats`.
    pub stats: Option<Stats>,
}

/// Rows of one tensor kind across layers (`--group-layers`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    /// Name with the layer index replaced by `{i}`.
    pub pattern: String,
    /// Layers covered, compacted (`0-27`, `0,2,5`).
    pub layers: String,
    /// Number of tensors in the group.
    pub count: usize,
    /// The shared row (its `name` is the first member's).
    pub row: TensorRow,
    /// Parameters of all members.
    pub params: u64,
}

/// The convention a checkpoint's names and shapes say it follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetectedConvention {
    /// A convention's name (`hf`, `flax`, a user layout's), `mixed` or `unknown`.
    pub kind: String,
    /// Tensors that contradict the majority: names of the other convention, and tensors
    /// stored transposed relative to what their names say.
    pub offending: Vec<String>,
    /// One line saying why.
    pub reason: String,
}

/// Totals and context.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// What was opened.
    pub path: String,
    /// `single-file` or `sharded`.
    pub layout: &'static str,
    /// Number of shard files.
    pub shards: usize,
    /// The file format and what reading it noticed (the format notes of `notes`, as data).
    pub format: FormatInfo,
    /// Architecture from `config.json` (`null` when unknown).
    pub architecture: Option<String>,
    /// `known`, `missing` or `unknown-architecture`, with the model_type when known.
    pub config: String,
    /// Detected layout convention.
    pub convention: DetectedConvention,
    /// Number of tensors in the checkpoint.
    pub tensors: usize,
    /// Sum of element counts.
    pub total_params: u64,
    /// Bytes of data per dtype.
    pub bytes_by_dtype: BTreeMap<String, u64>,
    /// Row counts per status over the whole checkpoint (missing rows included), whatever
    /// the filter.
    pub status_counts: BTreeMap<&'static str, usize>,
    /// With a filter: the rows it kept and their statuses. `--check` judges these rows,
    /// so under a filter these counts, not `status_counts`, decide its exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filtered: Option<Filtered>,
    /// Number of square projections whose orientation no shape check can prove.
    pub square_ambiguous: usize,
    /// `__metadata__` merged over shards.
    pub metadata: BTreeMap<String, String>,
    /// Observations a user must see (tied lm_head present/absent, unknown roles, …).
    pub notes: Vec<String>,
}

/// The file format of a checkpoint and what reading it noticed: the structured form of the
/// format notes that [`Summary::notes`] states in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormatInfo {
    /// `safetensors`, `gguf`, `pytorch`, `flax-msgpack` or `meta`.
    pub kind: &'static str,
    /// Tensors stored in a type orient cannot decode (GGUF): listed, refused by commands
    /// that read values.
    pub undecodable: Vec<UndecodableTensor>,
    /// How many block-quantized tensors (GGUF Q8_0/Q4_0) are read dequantized to F32.
    pub dequantized: usize,
    /// With no `config.json`: the file the config was reconstructed from and what it could
    /// not state (`null` when the checkpoint has its own `config.json`).
    pub config_reconstructed: Option<ConfigReconstructed>,
}

/// One tensor orient cannot decode (see [`FormatInfo::undecodable`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UndecodableTensor {
    /// Tensor name as stored.
    pub name: String,
    /// Its ggml type, e.g. `Q4_K`.
    #[serde(rename = "type")]
    pub ggml_type: &'static str,
}

/// A `config.json` reconstructed from the file (see [`FormatInfo::config_reconstructed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigReconstructed {
    /// The file it came from (GGUF file, `params.json`).
    pub from: String,
    /// Each setting the file does not state, in words.
    pub unknown: Vec<String>,
}

impl FormatInfo {
    /// Collects the format notes of an opened checkpoint.
    pub fn of(ck: &Checkpoint) -> FormatInfo {
        let mut info = FormatInfo {
            kind: ck.format().name(),
            undecodable: Vec::new(),
            dequantized: 0,
            config_reconstructed: None,
        };
        for note in ck.notes() {
            match note {
                OpenNote::Undecodable { tensors, .. } => {
                    info.undecodable
                        .extend(tensors.iter().map(|(name, t)| UndecodableTensor {
                            name: name.clone(),
                            ggml_type: t,
                        }));
                }
                OpenNote::Dequantized { count, .. } => info.dequantized += count,
                OpenNote::ConfigReconstructed { from, unknown } => {
                    info.config_reconstructed = Some(ConfigReconstructed {
                        from: from.display().to_string(),
                        unknown: unknown.clone(),
                    });
                }
                OpenNote::IndexIgnored { .. } | OpenNote::ModelFileIgnored { .. } => {}
            }
        }
        info
    }
}

/// What a filter kept (see [`Summary::filtered`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filtered {
    /// The glob as given.
    pub glob: String,
    /// Rows it kept (missing rows included).
    pub rows: usize,
    /// Row counts per status among them.
    pub status_counts: BTreeMap<&'static str, usize>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// One row per tensor (file order: sorted by name), then missing tensors.
    pub tensors: Vec<TensorRow>,
    /// Per-layer groups, with `--group-layers` (rows still listed in `tensors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupRow>>,
    /// Totals and context.
    pub summary: Summary,
}

impl Report {
    /// True when every row is `ok`: what `--check` asks. Under a filter, only the rows
    /// it kept (those listed) are judged.
    pub fn all_ok(&self) -> bool {
        self.tensors.iter().all(|r| r.status == Status::Ok)
    }
}

/// Options of [`inspect`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep only tensors whose name matches this glob. The summary's totals stay whole;
    /// [`Summary::filtered`] counts what was kept.
    pub filter: Option<GlobMatcher>,
    /// Also build per-layer groups.
    pub group_layers: bool,
    /// Read the data and compute statistics.
    pub stats: bool,
    /// User layouts (`--layout FILE`), tried beside the built-ins; the last one is the
    /// convention the tensors are checked against.
    pub layouts: Vec<Arc<Convention>>,
}

/// A `--filter` glob that is not valid.
#[derive(Debug, thiserror::Error)]
#[error("invalid --filter glob `{glob}`: {reason}")]
pub struct FilterError {
    /// The glob as given.
    pub glob: String,
    /// Why globset refused it.
    pub reason: String,
}

/// Compiles a `--filter` glob. `*` matches across dots, so `*q_proj*` finds every layer's.
pub fn compile_filter(glob: &str) -> Result<GlobMatcher, FilterError> {
    Glob::new(glob)
        .map(|g| g.compile_matcher())
        .map_err(|e| FilterError {
            glob: glob.to_owned(),
            reason: e.kind().to_string(),
        })
}

/// Builds the report. With `opts.stats`, reads tensor data in parallel and calls
/// `progress(bytes)` as each tensor finishes; otherwise touches headers only.
pub fn inspect(
    ck: &Checkpoint,
    opts: &Options,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Report, crate::layout::catalogue::CatalogueError> {
    let catalogue = ck
        .config()
        .map(|cfg| Catalogue::for_model(cfg, &opts.layouts))
        .transpose()?;
    // What opening noticed (e.g. which of model.safetensors and the index was read).
    let mut notes: Vec<String> = ck.notes().iter().map(ToString::to_string).collect();
    let (convention, mut rows) = match &catalogue {
        Some(cat) => {
            let candidates: Vec<ConvId> = (0..cat.conventions().len()).collect();
            let tensors: Vec<(&str, &[usize])> = ck
                .tensors()
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice()))
                .collect();
            let detection = cat.detect(&tensors, &candidates);
            let convention = describe_detection(cat, &detection, ck);
            // The convention rows are checked in: a user layout when given, else the detected
            // one (HF when undecided).
            let target = match (opts.layouts.last(), &detection.verdict) {
                (Some(l), _) => cat.convention_id(&l.name).unwrap_or(0),
                (None, Verdict::One(c)) => *c,
                _ => 0,
            };
            let names: Vec<&str> = tensors.iter().map(|(n, _)| *n).collect();
            let binding = cat.bind(&names, target);
            let mut rows: Vec<TensorRow> = ck
                .tensors()
                .iter()
                .zip(&binding.hits)
                .map(|(t, h)| tensor_row(t, Some(cat), *h))
                .collect();
            missing_rows(cat, &binding.entry_form, target, &mut rows, &mut notes);
            (convention, rows)
        }
        None => {
            notes.push(match ck.config_status() {
                ConfigStatus::Missing => "no config.json: roles and expected shapes are unknown".to_owned(),
                ConfigStatus::UnknownArch { model_type, .. } => format!(
                    "architecture `{}` is not in the layout catalogue ({}): roles and expected shapes are unknown",
                    model_type.as_deref().unwrap_or("?"),
                    crate::config::Arch::names().join(", ")
                ),
                ConfigStatus::Known(_) => String::new(),
            });
            let rows = ck
                .tensors()
                .iter()
                .map(|t| tensor_row(t, None, None))
                .collect();
            (
                DetectedConvention {
                    kind: "unknown".to_owned(),
                    offending: Vec::new(),
                    reason: "no layout catalogue for this checkpoint".to_owned(),
                },
                rows,
            )
        }
    };

    let square = rows.iter().filter(|r| r.square_ambiguous).count();
    if square > 0 {
        notes.push(format!(
            "{square} square {} their expected shape either way round: a shape cannot prove {} orientation; check the values (`orient verify`, `orient diff`)",
            if square == 1 { "projection matches" } else { "projections match" },
            if square == 1 { "its" } else { "their" },
        ));
    }

    let mut bytes_by_dtype = BTreeMap::new();
    let mut total_params = 0u64;
    for t in ck.tensors() {
        *bytes_by_dtype
            .entry(t.dtype.name().to_owned())
            .or_insert(0u64) += t.nbytes() as u64;
        total_params += t.numel() as u64;
    }
    let mut status_counts = BTreeMap::new();
    for r in &rows {
        *status_counts.entry(r.status.name()).or_insert(0) += 1;
    }

    let filtered = opts.filter.as_ref().map(|filter| {
        rows.retain(|r| filter.is_match(&r.name));
        let mut status_counts = BTreeMap::new();
        for r in &rows {
            *status_counts.entry(r.status.name()).or_insert(0) += 1;
        }
        Filtered {
            glob: filter.glob().glob().to_owned(),
            rows: rows.len(),
            status_counts,
        }
    });
    if opts.stats {
        let stats: Vec<Option<Stats>> = rows
            .par_iter()
            .map(|r| {
                let t = ck.tensor(&r.name)?;
                let s = tensor_stats(ck, t);
                progress(t.nbytes() as u64);
                s
            })
            .collect();
        for (r, s) in rows.iter_mut().zip(stats) {
            r.stats = s;
        }
    }
    let groups = opts.group_layers.then(|| group_layers(&rows));

    let (layout, shards) = match ck.source() {
        Source::SingleFile => ("single-file", 1),
        Source::Sharded { .. } => (
            "sharded",
            ck.shards().iter().filter(|s| !s.is_assembled()).count(),
        ),
    };
    let (architecture, config) = match ck.config_status() {
        ConfigStatus::Known(cfg) => (
            Some(cfg.arch.model_type().to_owned()),
            format!("known ({})", cfg.model_type),
        ),
        ConfigStatus::Missing => (None, "missing".to_owned()),
        ConfigStatus::UnknownArch { model_type, .. } => (
            None,
            format!(
                "unknown-architecture ({})",
                model_type.as_deref().unwrap_or("no model_type")
            ),
        ),
    };
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        tensors: rows,
        groups,
        summary: Summary {
            path: ck.root().display().to_string(),
            layout,
            shards,
            format: FormatInfo::of(ck),
            architecture,
            config,
            convention,
            tensors: ck.tensors().len(),
            total_params,
            bytes_by_dtype,
            status_counts,
            filtered,
            square_ambiguous: square,
            metadata: ck.metadata().clone(),
            notes,
        },
    })
}

fn tensor_row(t: &TensorInfo, cat: Option<&Catalogue>, hit: Option<Hit>) -> TensorRow {
    let mut row = TensorRow {
        name: t.name.clone(),
        dtype: Some(t.dtype),
        shape: Some(t.shape.clone()),
        params: t.numel() as u64,
        role: None,
        convention: None,
        layout: None,
        expected_shape: None,
        shape_formula: None,
        status: if cat.is_some() {
            Status::Unexpected
        } else {
            Status::Unchecked
        },
        square_ambiguous: false,
        layer: None,
        shard: Some(t.shard),
        note: None,
        stats: None,
    };
    let (Some(cat), Some(h)) = (cat, hit) else {
        return row;
    };
    let form = &cat.forms()[h.form];
    let Some(stored) = form.stored.get(h.member).and_then(|m| m.get(h.part)) else {
        return row;
    };
    let entry_index = form
        .entries
        .get(h.member)
        .and_then(|m| m.get(h.part).or(m.first()))
        .or_else(|| form.entries.first().and_then(|m| m.first()))
        .copied()
        .unwrap_or(0);
    let entry = &cat.entries()[entry_index];
    // A name every convention spells alike says nothing about the convention.
    let shared = cat.hits(&t.name).iter().any(|o| {
        let f = &cat.forms()[o.form];
        f.convention != form.convention && f.entries == form.entries
    });
    row.role = Some(entry.role);
    row.convention = (!shared).then(|| cat.conventions()[form.convention].name.clone());
    row.layout = Some(form.layout.clone());
    row.expected_shape = Some(stored.shape.clone());
    row.shape_formula = Some(entry.shape_formula.clone());
    row.layer = entry.layer;
    row.status = shape_status(&t.shape, &stored.shape);
    // A projection stored with equal last two dims (a square matrix, or packed experts whose
    // per-expert blocks are square) looks the same either way round.
    row.square_ambiguous = row.status == Status::Ok
        && entry.role.is_projection()
        && matches!(stored.shape.as_slice(), [.., a, b] if a == b);
    if entry.role == Role::Buffer {
        row.note = Some("causal-mask buffer, not a weight".to_owned());
    }
    row
}

/// Rows for the tensors convention `c` expects and the checkpoint lacks, and the notes
/// about a tied lm_head.
fn missing_rows(
    cat: &Catalogue,
    entry_form: &[Option<usize>],
    c: ConvId,
    rows: &mut Vec<TensorRow>,
    notes: &mut Vec<String>,
) {
    let mut reported: HashSet<usize> = HashSet::new();
    for (i, e) in cat.entries().iter().enumerate() {
        let Some(form) = cat.form_of(i, c) else {
            continue;
        };
        let stored_name = || {
            form.single()
                .map_or_else(|| e.name.clone(), |s| s.name.clone())
        };
        if entry_form[i].is_some() {
            if e.tied && cat.optional(i, c).is_some() && e.optional.is_some() {
                notes.push(format!(
                    "`{}` is present although tie_word_embeddings is true: transformers ties it to the embedding and ignores the stored values",
                    stored_name()
                ));
            }
            continue;
        }
        if let Some(why) = cat.optional(i, c) {
            if e.role == Role::LmHead {
                notes.push(format!("`{}` is absent: {why}", stored_name()));
            }
            continue;
        }
        let Some(f) = cat.form_index(i, c) else {
            continue;
        };
        if !reported.insert(f) {
            continue;
        }
        for st in form.stored_tensors() {
            rows.push(TensorRow {
                name: st.name.clone(),
                dtype: None,
                shape: None,
                params: 0,
                role: Some(e.role),
                convention: Some(cat.conventions()[c].name.clone()),
                layout: Some(form.layout.clone()),
                expected_shape: Some(st.shape.clone()),
                shape_formula: Some(e.shape_formula.clone()),
                status: Status::Missing,
                square_ambiguous: false,
                layer: e.layer,
                shard: None,
                note: None,
                stats: None,
            });
        }
    }
    let lm_head_missing = rows
        .iter()
        .any(|r| r.status == Status::Missing && r.role == Some(Role::LmHead));
    if lm_head_missing && !cat.config().tie_word_embeddings {
        notes.push(
            "config says tie_word_embeddings=false but lm_head is absent: transformers would initialise it randomly".to_owned(),
        );
    }
}

/// `ok` when equal, `transposed` when the last two dims of a non-square expectation are swapped
/// (a 2-D matrix, or packed experts `[E, a, b]` stored `[E, b, a]`), `shape-mismatch` otherwise.
pub fn shape_status(actual: &[usize], expected: &[usize]) -> Status {
    let n = expected.len();
    if actual == expected {
        Status::Ok
    } else if n >= 2
        && actual.len() == n
        && actual[..n - 2] == expected[..n - 2]
        && actual[n - 2] == expected[n - 1]
        && actual[n - 1] == expected[n - 2]
    {
        Status::Transposed
    } else {
        Status::ShapeMismatch
    }
}

/// The detector's conclusion in words: the convention, or `mixed` with the tensors that
/// contradict the majority (names of another convention, and tensors stored transposed
/// relative to what their names say).
fn describe_detection(cat: &Catalogue, d: &Detection, ck: &Checkpoint) -> DetectedConvention {
    let display = |c: ConvId| cat.conventions()[c].display.clone();
    let name = |k: usize| ck.tensors()[k].name.clone();
    let others = |c: ConvId| {
        d.candidates
            .iter()
            .filter(|&&o| o != c)
            .map(|&o| display(o))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let only = |c: ConvId| {
        d.only_names
            .iter()
            .find(|(o, _)| *o == c)
            .map_or(0, |(_, n)| *n)
    };
    let transposed: Vec<String> = d
        .evidence
        .iter()
        .filter(|e| e.transposed)
        .map(|e| name(e.tensor))
        .collect();
    // Conventions that tensors' names point to, by count.
    let mut by_names: Vec<(ConvId, usize)> = d
        .only_names
        .iter()
        .copied()
        .filter(|(_, n)| *n > 0)
        .collect();
    by_names.sort_by_key(|(c, n)| (std::cmp::Reverse(*n), *c));
    let (kind, mut offending, reason) = match (&d.verdict, by_names.as_slice()) {
        (Verdict::One(c), _) if transposed.is_empty() => (
            cat.conventions()[*c].name.clone(),
            Vec::new(),
            format!(
                "{} {} {}-only {}, none {}",
                only(*c),
                if only(*c) == 1 {
                    "name is an"
                } else {
                    "names are"
                },
                display(*c),
                if only(*c) == 1 {
                    "spelling"
                } else {
                    "spellings"
                },
                others(*c)
            ),
        ),
        (_, []) => (
            "unknown".to_owned(),
            Vec::new(),
            match &d.verdict {
                Verdict::Ambiguous(cs) => format!(
                    "the tensors fit several conventions equally ({})",
                    cs.iter()
                        .map(|&c| display(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => "no tensor name belongs to one convention only".to_owned(),
            },
        ),
        (_, [(c, n)]) => (
            cat.conventions()[*c].name.clone(),
            Vec::new(),
            format!(
                "{n} {} {}-only {}, none {}",
                if *n == 1 { "name is an" } else { "names are" },
                display(*c),
                if *n == 1 { "spelling" } else { "spellings" },
                others(*c)
            ),
        ),
        (_, [(major, n), rest @ ..]) => {
            let minor: Vec<String> = d
                .evidence
                .iter()
                .filter(|e| {
                    e.by_name
                        .as_ref()
                        .is_some_and(|s| s.len() == 1 && !s.contains(major))
                })
                .map(|e| name(e.tensor))
                .collect();
            let kinds = rest
                .iter()
                .map(|(c, _)| display(*c))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = major;
            (
                "mixed".to_owned(),
                minor.clone(),
                format!(
                    "{n} {} of the majority convention, {} {kinds} {}",
                    if *n == 1 { "name" } else { "names" },
                    minor.len(),
                    if minor.len() == 1 { "name" } else { "names" }
                ),
            )
        }
    };
    if !transposed.is_empty() {
        let reason = format!(
            "{reason}, but {} {} stored transposed relative to what {} names say",
            transposed.len(),
            if transposed.len() == 1 {
                "tensor is"
            } else {
                "tensors are"
            },
            if transposed.len() == 1 {
                "its"
            } else {
                "their"
            },
        );
        offending.extend(transposed);
        return DetectedConvention {
            kind: "mixed".to_owned(),
            offending,
            reason,
        };
    }
    DetectedConvention {
        kind,
        offending,
        reason,
    }
}

/// Replaces the first all-digit dotted segment (the layer index) with `{i}`, and returns
/// the pattern with that index; `None` for names without one.
pub fn layer_pattern(name: &str) -> Option<(String, usize)> {
    let mut out = Vec::new();
    let mut layer = None;
    for seg in name.split('.') {
        if layer.is_none() && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            layer = seg.parse().ok();
            out.push("{i}");
        } else {
            out.push(seg);
        }
    }
    layer.map(|l| (out.join("."), l))
}

/// Collapses per-layer rows that agree on everything but the layer index.
fn group_layers(rows: &[TensorRow]) -> Vec<GroupRow> {
    type Key = (
        String,
        Option<Dtype>,
        Option<Vec<usize>>,
        Status,
        bool,
        Option<Vec<usize>>,
    );
    let mut groups: Vec<(Key, GroupRow, Vec<usize>)> = Vec::new();
    for r in rows {
        let (pattern, layer) = match layer_pattern(&r.name) {
            Some((p, l)) => (p, Some(l)),
            None => (r.name.clone(), None),
        };
        let key: Key = (
            pattern.clone(),
            r.dtype,
            r.shape.clone(),
            r.status,
            r.square_ambiguous,
            r.expected_shape.clone(),
        );
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, g, layers)) if layer.is_some() => {
                g.count += 1;
                g.params += r.params;
                layers.extend(layer);
            }
            _ => groups.push((
                key,
                GroupRow {
                    pattern,
                    layers: String::new(),
                    count: 1,
                    row: r.clone(),
                    params: r.params,
                },
                layer.into_iter().collect(),
            )),
        }
    }
    groups
        .into_iter()
        .map(|(_, mut g, layers)| {
            g.layers = compact_ranges(&layers);
            g
        })
        .collect()
}

/// `[0,1,2,5,7,8]` → `0-2,5,7-8`.
pub fn compact_ranges(xs: &[usize]) -> String {
    let mut xs = xs.to_vec();
    xs.sort_unstable();
    xs.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < xs.len() {
        let mut j = i;
        while j + 1 < xs.len() && xs[j + 1] == xs[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            xs[i].to_string()
        } else {
            format!("{}-{}", xs[i], xs[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Reads one tensor tile by tile and summarises it. `None` for dtypes without a numeric
/// reading here (F8, F6, F4, C64).
fn tensor_stats(ck: &Checkpoint, t: &TensorInfo) -> Option<Stats> {
    const TILE: usize = 1 << 16;
    let view = ck.view(t);
    let mut acc = Acc::default();
    if t.dtype.is_computable() {
        let size = t.dtype.bits() / 8;
        let mut buf = vec![0f32; TILE];
        for chunk in view.bytes.chunks(TILE * size) {
            let n = chunk.len() / size;
            // Cannot fail: the dtype is computable.
            if !crate::view::widen_into(t.dtype, chunk, &mut buf[..n]) {
                return None;
            }
            for &v in &buf[..n] {
                acc.push(f64::from(v));
            }
        }
    } else {
        let read: fn(&[u8]) -> f64 = match t.dtype {
            Dtype::BOOL | Dtype::U8 => |b| f64::from(b[0]),
            Dtype::I8 => |b| f64::from(b[0] as i8),
            Dtype::I16 => |b| f64::from(i16::from_le_bytes([b[0], b[1]])),
            Dtype::U16 => |b| f64::from(u16::from_le_bytes([b[0], b[1]])),
            Dtype::I32 => |b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::U32 => |b| f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::I64 => {
                |b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
            }
            Dtype::U64 => {
                |b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
            }
            _ => return None,
        };
        for b in view.bytes.chunks_exact(t.dtype.bits() / 8) {
            acc.push(read(b));
        }
    }
    ck.release(t);
    Some(acc.finish())
}

#[derive(Default)]
struct Acc {
    n: u64,
    sum: f64,
    sumsq: f64,
    min: f64,
    max: f64,
    nan: u64,
    inf: u64,
}

impl Acc {
    fn push(&mut self, v: f64) {
        if v.is_nan() {
            self.nan += 1;
        } else if v.is_infinite() {
            self.inf += 1;
        } else {
            if self.n == 0 {
                self.min = v;
                self.max = v;
            } else {
                self.min = self.min.min(v);
                self.max = self.max.max(v);
            }
            self.n += 1;
            self.sum += v;
            self.sumsq += v * v;
        }
    }

    fn finish(self) -> Stats {
        let some = |v| (self.n > 0).then_some(v);
        let mean = self.sum / self.n.max(1) as f64;
        let var = (self.sumsq / self.n.max(1) as f64 - mean * mean).max(0.0);
        Stats {
            min: some(self.min),
            max: some(self.max),
            mean: some(mean),
            std: some(var.sqrt()),
            nan: self.nan,
            inf: self.inf,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(shape_status(&[64, 32], &[64, 32]), Status::Ok);
        assert_eq!(shape_status(&[32, 64], &[64, 32]), Status::Transposed);
        assert_eq!(shape_status(&[32, 32], &[64, 32]), Status::ShapeMismatch);
        assert_eq!(shape_status(&[64], &[32]), Status::ShapeMismatch);
        // Packed experts [E, 2I, H] stored with each expert's block transposed.
        assert_eq!(shape_status(&[4, 32, 64], &[4, 64, 32]), Status::Transposed);
        assert_eq!(
            shape_status(&[8, 32, 64], &[4, 64, 32]),
            Status::ShapeMismatch
        );
        assert_eq!(shape_status(&[4, 64, 32], &[4, 64, 32]), Status::Ok);
    }

    #[test]
    fn ranges() {
        assert_eq!(compact_ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(compact_ranges(&[3]), "3");
        assert_eq!(compact_ranges(&[]), "");
    }

    #[test]
    fn patterns() {
        assert_eq!(
            layer_pattern("model.layers.12.mlp.up_proj.weight"),
            Some(("model.layers.{i}.mlp.up_proj.weight".to_owned(), 12))
        );
        assert_eq!(
            layer_pattern("h.0.attn.c_attn.weight"),
            Some(("h.{i}.attn.c_attn.weight".to_owned(), 0))
        );
        assert_eq!(layer_pattern("model.norm.weight"), None);
    }

    #[test]
    fn stats_accumulate() {
        let mut a = Acc::default();
        for v in [1.0, 2.0, 3.0, f64::NAN, f64::INFINITY] {
            a.push(v);
        }
        let s = a.finish();
        assert_eq!(
            (s.min, s.max, s.mean, s.nan, s.inf),
            (Some(1.0), Some(3.0), Some(2.0), 1, 1)
        );
        assert!((s.std.unwrap_or(0.0) - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
