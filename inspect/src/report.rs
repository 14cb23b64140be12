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

use globset::{Glob, GlobMatcher};
use rayon::prelude::*;
use serde::Serialize;

use crate::catalogue::{Catalogue, Convention, Entry, NameMatch, Role};
use crate::checkpoint::{Checkpoint, ConfigStatus, Source, TensorInfo};
use crate::dtype::Dtype;

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
    /// The convention the name belongs to (`null` when unknown or spelled the same in both).
    pub convention: Option<Convention>,
    /// The layout that convention implies, in words, e.g. `hf Linear [out,in]`.
    pub layout: Option<&'static str>,
    /// The shape the config implies for this name.
    pub expected_shape: Option<Vec<usize>>,
    /// The expected shape as a formula of the config, e.g. `[nH·D, H]`.
    pub shape_formula: Option<&'static str>,
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
    /// `hf`, `flax`, `mixed` or `unknown`.
    pub kind: &'static str,
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
pub fn inspect(ck: &Checkpoint, opts: &Options, progress: &(dyn Fn(u64) + Sync)) -> Report {
    let catalogue = ck.config().map(Catalogue::new);
    let matches: Vec<Option<NameMatch>> = ck
        .tensors()
        .iter()
        .map(|t| catalogue.as_ref().and_then(|c| c.resolve(&t.name)))
        .collect();
    let convention = detect_convention(ck, catalogue.as_ref(), &matches);
    // What opening noticed (e.g. which of model.safetensors and the index was read).
    let mut notes: Vec<String> = ck.notes().iter().map(ToString::to_string).collect();

    let mut rows: Vec<TensorRow> = ck
        .tensors()
        .iter()
        .zip(&matches)
        .map(|(t, m)| tensor_row(t, catalogue.as_ref(), *m))
        .collect();

    if let Some(cat) = &catalogue {
        let present: HashSet<usize> = matches.iter().flatten().map(|m| m.entry).collect();
        let target = if convention.kind == "flax" {
            Convention::Flax
        } else {
            Convention::Hf
        };
        for (i, e) in cat.entries().iter().enumerate() {
            if present.contains(&i) {
                if e.role == Role::LmHead && e.optional.is_some() {
                    notes.push(format!(
                        "`{}` is present although tie_word_embeddings is true: transformers ties it to the embedding and ignores the stored values",
                        e.form(target).name
                    ));
                }
                continue;
            }
            if let Some(why) = e.optional {
                if e.role == Role::LmHead {
                    notes.push(format!("`{}` is absent: {why}", e.form(target).name));
                }
                continue;
            }
            rows.push(missing_row(e, target));
        }
        if let Some(cfg) = ck.config() {
            let lm_head_missing = rows
                .iter()
                .any(|r| r.status == Status::Missing && r.role == Some(Role::LmHead));
            if lm_head_missing && !cfg.tie_word_embeddings {
                notes.push(
                    "config says tie_word_embeddings=false but lm_head is absent: transformers would initialise it randomly".to_owned(),
                );
            }
        }
    } else {
        notes.push(match ck.config_status() {
            ConfigStatus::Missing => "no config.json: roles and expected shapes are unknown".to_owned(),
            ConfigStatus::UnknownArch { model_type, .. } => format!(
                "architecture `{}` is not in the layout catalogue (llama, mistral, qwen2, qwen3, gpt2): roles and expected shapes are unknown",
                model_type.as_deref().unwrap_or("?")
            ),
            ConfigStatus::Known(_) => String::new(),
        });
    }

    let square = rows.iter().filter(|r| r.square_ambiguous).count();
    if square > 0 {
        notes.push(format!(
            "{square} square projection(s) match their expected shape either way round: a shape cannot prove their orientation; check the values (`orient verify`, `orient diff`)"
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
        Source::Sharded { .. } => ("sharded", ck.shards().len()),
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
    Report {
        schema_version: SCHEMA_VERSION,
        tensors: rows,
        groups,
        summary: Summary {
            path: ck.root().display().to_string(),
            layout,
            shards,
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
    }
}

fn tensor_row(t: &TensorInfo, cat: Option<&Catalogue>, m: Option<NameMatch>) -> TensorRow {
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
    let (Some(cat), Some(m)) = (cat, m) else {
        return row;
    };
    let entry = &cat.entries()[m.entry];
    let form = entry.form(m.convention);
    row.role = Some(entry.role);
    row.convention = (!m.shared).then_some(m.convention);
    row.layout = Some(form.orientation.describe());
    row.expected_shape = Some(form.shape.clone());
    row.shape_formula = Some(entry.shape_formula);
    row.layer = entry.layer;
    row.status = shape_status(&t.shape, &form.shape);
    row.square_ambiguous = row.status == Status::Ok && entry.is_square_ambiguous();
    if entry.role == Role::Buffer {
        row.note = Some("causal-mask buffer, not a weight".to_owned());
    }
    row
}

fn missing_row(e: &Entry, c: Convention) -> TensorRow {
    let form = e.form(c);
    TensorRow {
        name: form.name.clone(),
        dtype: None,
        shape: None,
        params: 0,
        role: Some(e.role),
        convention: (e.hf.name != e.flax.name).then_some(c),
        layout: Some(form.orientation.describe()),
        expected_shape: Some(form.shape.clone()),
        shape_formula: Some(e.shape_formula),
        status: Status::Missing,
        square_ambiguous: false,
        layer: e.layer,
        shard: None,
        note: None,
        stats: None,
    }
}

/// `ok` when equal, `transposed` when the reverse of a non-square 2-D expectation,
/// `shape-mismatch` otherwise.
pub fn shape_status(actual: &[usize], expected: &[usize]) -> Status {
    if actual == expected {
        Status::Ok
    } else if actual.len() == 2
        && expected.len() == 2
        && actual[0] == expected[1]
        && actual[1] == expected[0]
    {
        Status::Transposed
    } else {
        Status::ShapeMismatch
    }
}

/// Decides hf / flax / mixed from the names (tensors spelled the same in both conventions
/// say nothing) and from non-square shapes: an HF-named projection stored `[in, out]` is
/// Flax-oriented whatever its name says, which is how a buggy loader's output looks.
fn detect_convention(
    ck: &Checkpoint,
    cat: Option<&Catalogue>,
    matches: &[Option<NameMatch>],
) -> DetectedConvention {
    let Some(cat) = cat else {
        return DetectedConvention {
            kind: "unknown",
            offending: Vec::new(),
            reason: "no layout catalogue for this checkpoint".to_owned(),
        };
    };
    let mut hf = Vec::new();
    let mut flax = Vec::new();
    let mut transposed = Vec::new();
    for (t, m) in ck.tensors().iter().zip(matches) {
        let Some(m) = m else { continue };
        let form = cat.form(m.entry, m.convention);
        if shape_status(&t.shape, &form.shape) == Status::Transposed {
            transposed.push(t.name.clone());
        }
        if m.shared {
            continue;
        }
        match m.convention {
            Convention::Hf => hf.push(t.name.clone()),
            Convention::Flax => flax.push(t.name.clone()),
        }
    }
    let (kind, mut offending, reason) = match (hf.is_empty(), flax.is_empty()) {
        (true, true) => (
            "unknown",
            Vec::new(),
            "no tensor name belongs to one convention only".to_owned(),
        ),
        (false, true) => (
            "hf",
            Vec::new(),
            format!("{} names are HF-only spellings, none Flax", hf.len()),
        ),
        (true, false) => (
            "flax",
            Vec::new(),
            format!("{} names are Flax-only spellings, none HF", flax.len()),
        ),
        (false, false) => {
            let (major, minor, minor_kind) = if hf.len() >= flax.len() {
                (hf.len(), flax, "Flax")
            } else {
                (flax.len(), hf, "HF")
            };
            (
                "mixed",
                minor.clone(),
                format!(
                    "{major} names of the majority convention, {} {minor_kind} names",
                    minor.len()
                ),
            )
        }
    };
    if !transposed.is_empty() {
        let reason = format!(
            "{reason}, but {} tensor(s) are stored transposed relative to what their names say",
            transposed.len()
        );
        offending.extend(transposed);
        return DetectedConvention {
            kind: "mixed",
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
