//! `orient lint`: consistency checks between a checkpoint's weights and its config, each
//! finding naming the tensors. Pure data (the JSON schema of `orient lint --json`); rendering is
//! the binary's.
//!
//! Why a separate command from `inspect`: inspect says how each tensor is *stored* (names,
//! shapes, conventions); lint says where the weights and `config.json` *disagree* in ways that
//! load without an error and then compute garbage: an lm_head the config ties away, norm weights
//! stored as `1 + w` for a forward that adds the 1 itself, a `num_key_value_heads` that does not
//! match k_proj, a `torch_dtype` the weights are not in, FP8 weights without their scales, the
//! same bytes under two names, a checkpoint orient already converted about to be converted again.
//!
//! Cost: names and shapes only, except where values are the evidence: the embedding and lm_head
//! (compared row band by row band), the norm vectors (small), and the duplicate search, which
//! groups tensors by byte length, fingerprints only those sharing a length (a few sampled
//! windows), hashes in full only those whose fingerprints collide, and confirms byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;
use crate::layout::arch::{self, Component, Role};
use crate::layout::catalogue::{Catalogue, CatalogueError, ConvId, HF};
use crate::layout::convention::Convention;
use crate::layout::gather::{self, GatherError, Source};
use crate::layout::resolve::{Binding, Verdict};
use crate::layout::view::View;

mod duplicates;
mod shapes;

use duplicates::duplicate_sets;
use shapes::{explain_shapes, ShapeRow};

/// Version of the JSON schema of [`LintReport`]. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// One kind of consistency check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// `tie_word_embeddings` against lm_head: present, absent, or different from the embedding.
    TieWordEmbeddings,
    /// Norm weights stored as `w` (means near 1) or as an offset from 1 (means near 0), against
    /// what the architecture's forward expects.
    NormStorage,
    /// q/k/v/o shapes against `num_attention_heads`, `num_key_value_heads`, `head_dim`.
    AttentionShapes,
    /// MLP shapes against `intermediate_size`.
    MlpShapes,
    /// Float tensors' dtype against the config's `dtype` / `torch_dtype`.
    Dtype,
    /// orient provenance in `__metadata__`: converted already, and about to be again.
    Reconversion,
    /// FP8 weights without their scales, and scales without their weights.
    Fp8Scales,
    /// The same bytes stored under two names.
    Duplicates,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 8] = [
        Check::TieWordEmbeddings,
        Check::NormStorage,
        Check::AttentionShapes,
        Check::MlpShapes,
        Check::Dtype,
        Check::Reconversion,
        Check::Fp8Scales,
        Check::Duplicates,
    ];

    /// The kebab-case name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Check::TieWordEmbeddings => "tie-word-embeddings",
            Check::NormStorage => "norm-storage",
            Check::AttentionShapes => "attention-shapes",
            Check::MlpShapes => "mlp-shapes",
            Check::Dtype => "dtype",
            Check::Reconversion => "reconversion",
            Check::Fp8Scales => "fp8-scales",
            Check::Duplicates => "duplicates",
        }
    }
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    /// Ran, found nothing.
    Passed,
    /// Ran, with findings.
    Failed,
    /// Could not run (e.g. no config.json); `detail` says why.
    Skipped,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckOutcome {
    /// Which check.
    pub check: Check,
    /// Passed, failed or skipped.
    pub status: CheckStatus,
    /// What it looked at, or why it was skipped.
    pub detail: String,
}

/// A config field the weights disagree with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigDisagreement {
    /// The field of `config.json` (e.g. `num_key_value_heads`).
    pub field: String,
    /// Its value in the config (`null` when absent).
    pub config: Value,
    /// The value the weights imply.
    pub weights: Value,
}

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The check that found it.
    pub check: Check,
    /// What is wrong and what follows from it.
    pub message: String,
    /// The tensors involved, as stored.
    pub tensors: Vec<String>,
    /// The config field involved, when there is one.
    pub config: Option<ConfigDisagreement>,
}

/// The whole lint report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LintReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The checkpoint's folder (or file's folder).
    pub path: String,
    /// The architecture from config.json (`null` without a known one).
    pub architecture: Option<String>,
    /// The convention the tensors were read in (`null` when undecided or without a catalogue).
    pub convention: Option<String>,
    /// One outcome per check, in [`Check::ALL`] order.
    pub checks: Vec<CheckOutcome>,
    /// Every finding, in check order.
    pub findings: Vec<Finding>,
}

impl LintReport {
    /// No findings.
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

/// A conversion the user is about to run (for [`Check::Reconversion`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlannedConversion {
    /// `--from`: the source convention forced, or `None` for detection.
    pub from: Option<String>,
    /// `--to`: the target convention.
    pub to: String,
}

/// What to lint with.
#[derive(Debug, Clone, Default)]
pub struct LintOptions {
    /// User layouts (`--layout FILE`), the last one the checkpoint is read in.
    pub layouts: Vec<Arc<Convention>>,
    /// The conversion about to be run, if any.
    pub planned: Option<PlannedConversion>,
}

/// Why linting could not finish.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// The catalogue cannot be built for this config and layouts.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// A tensor's values cannot be read.
    #[error("tensor `{tensor}`")]
    Read {
        /// The tensor (as stored).
        tensor: String,
        /// Why.
        #[source]
        source: GatherError,
    },
    /// A file changed while it was read.
    #[error(transparent)]
    Changed(#[from] crate::error::Error),
}

/// How an architecture's forward applies its norm weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormStorage {
    /// `x̂ · w`: stored weights are the scale (llama, qwen2, gpt2 …; initialised to 1).
    Scale,
    /// `x̂ · (1 + w)`: stored weights are an offset from 1 (Gemma 1/2/3/3n, Qwen3-Next;
    /// initialised to 0). GGUF files bake the 1 in.
    OffsetFromOne,
}

/// Model types whose RMSNorm computes `x̂ · (1 + w)` (transformers' `GemmaRMSNorm` and its copies).
/// Keyed by `model_type` so that an architecture added to the catalogue is covered as soon as it
/// parses; the catalogue's per-arch traits should take this over when they exist.
const OFFSET_NORM_MODEL_TYPES: &[&str] = &[
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "gemma3n",
    "gemma3n_text",
    "qwen3_next",
];

/// What the forward of `model_type` expects of its stored norm weights.
pub fn expected_norm_storage(model_type: &str) -> NormStorage {
    if OFFSET_NORM_MODEL_TYPES.contains(&model_type) {
        NormStorage::OffsetFromOne
    } else {
        NormStorage::Scale
    }
}

/// How a norm weight's mean reads: near 1 (a scale), near 0 (an offset), or neither.
fn classify_mean(mean: f64) -> Option<NormStorage> {
    if (mean - 1.0).abs() < 0.5 {
        Some(NormStorage::Scale)
    } else if mean.abs() < 0.5 {
        Some(NormStorage::OffsetFromOne)
    } else {
        None
    }
}

/// Runs every check on `ck`.
pub fn lint(ck: &Checkpoint, opts: &LintOptions) -> Result<LintReport, LintError> {
    let ctx = Ctx::new(ck, opts)?;
    let mut checks = Vec::new();
    let mut findings = Vec::new();
    let mut run = |check: Check, result: Outcome| {
        let status = match (&result.skipped, result.findings.is_empty()) {
            (Some(_), _) => CheckStatus::Skipped,
            (None, true) => CheckStatus::Passed,
            (None, false) => CheckStatus::Failed,
        };
        checks.push(CheckOutcome {
            check,
            status,
            detail: result.skipped.unwrap_or(result.detail),
        });
        findings.extend(result.findings);
    };
    run(Check::TieWordEmbeddings, ctx.tie()?);
    run(Check::NormStorage, ctx.norms()?);
    let (attn, mlp) = ctx.shapes();
    run(Check::AttentionShapes, attn);
    run(Check::MlpShapes, mlp);
    run(Check::Dtype, ctx.dtype());
    run(Check::Reconversion, ctx.reconversion(opts.planned.as_ref()));
    run(Check::Fp8Scales, ctx.fp8());
    run(Check::Duplicates, ctx.duplicates());
    // Values were read: none of it counts if a file changed meanwhile.
    ck.check_intact()?;
    Ok(LintReport {
        schema_version: SCHEMA_VERSION,
        path: ck.root().display().to_string(),
        architecture: ck.config().map(|c| c.model_type.clone()),
        convention: ctx
            .model
            .as_ref()
            .and_then(|m| m.detected)
            .map(|c| ctx.conv_name(c)),
        checks,
        findings,
    })
}

/// One check's result before it is filed.
#[derive(Debug, Default)]
struct Outcome {
    detail: String,
    skipped: Option<String>,
    findings: Vec<Finding>,
}

impl Outcome {
    fn skipped(why: impl Into<String>) -> Outcome {
        Outcome {
            skipped: Some(why.into()),
            ..Outcome::default()
        }
    }

    fn passed(detail: impl Into<String>) -> Outcome {
        Outcome {
            detail: detail.into(),
            ..Outcome::default()
        }
    }
}

/// The catalogue side of a checkpoint with a known architecture.
struct Model {
    cat: Catalogue,
    binding: Binding,
    /// The convention the tensors were bound in.
    conv: ConvId,
    /// The convention detection decided on, if it did.
    detected: Option<ConvId>,
}

struct Ctx<'a> {
    ck: &'a Checkpoint,
    sources: Vec<Source<'a>>,
    shapes: Vec<&'a [usize]>,
    model: Option<Model>,
    /// `config.json` as raw JSON (for fields the resolved config does not keep).
    raw_config: Option<Value>,
}

impl<'a> Ctx<'a> {
    fn new(ck: &'a Checkpoint, opts: &LintOptions) -> Result<Ctx<'a>, LintError> {
        let sources = ck
            .tensors()
            .iter()
            .map(|t| Source {
                bytes: ck.view(t).bytes,
                dtype: t.dtype,
            })
            .collect();
        let shapes: Vec<&[usize]> = ck.tensors().iter().map(|t| t.shape.as_slice()).collect();
        let model = match ck.config() {
            Some(cfg) => {
                let cat = Catalogue::for_model(cfg, &opts.layouts)?;
                let named: Vec<(&str, &[usize])> = ck
                    .tensors()
                    .iter()
                    .map(|t| (t.name.as_str(), t.shape.as_slice()))
                    .collect();
                let candidates: Vec<ConvId> = (0..cat.conventions().len()).collect();
                let detection = cat.detect(&named, &candidates);
                let detected = match detection.verdict {
                    Verdict::One(c) => Some(c),
                    _ => None,
                };
                let conv = match (opts.layouts.last(), detected) {
                    (Some(l), _) => cat.convention_id(&l.name).unwrap_or(HF),
                    (None, Some(c)) => c,
                    (None, None) => HF,
                };
                let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                let binding = cat.bind(&names, conv);
                Some(Model {
                    cat,
                    binding,
                    conv,
                    detected,
                })
            }
            None => None,
        };
        let raw_config = ck
            .config_text()
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        Ok(Ctx {
            ck,
            sources,
            shapes,
            model,
            raw_config,
        })
    }

    fn conv_name(&self, c: ConvId) -> String {
        self.model
            .as_ref()
            .and_then(|m| m.cat.conventions().get(c))
            .map_or_else(|| "?".to_string(), |c| c.name.clone())
    }

    fn name(&self, k: usize) -> &str {
        &self.ck.tensors()[k].name
    }

    fn no_catalogue(&self) -> String {
        match self.ck.config_path() {
            None => "no config.json beside the weights".to_string(),
            Some(_) => format!(
                "architecture `{}` is not in the layout catalogue",
                self.raw_config
                    .as_ref()
                    .and_then(|v| v.get("model_type"))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ),
        }
    }

    /// The canonical view of `entry` and the tensors it reads (`None` when nothing binds it or it
    /// cannot be viewed, e.g. a shape that fits nothing: the shape checks report that).
    fn entry_view(&self, m: &Model, entry: usize) -> Option<(View, Vec<usize>)> {
        let (view, _) = m
            .binding
            .entry_view(&m.cat, entry, &self.shapes)
            .ok()
            .flatten()?;
        let sources = view.sources();
        Some((view, sources))
    }

    fn read(&self, view: &View, tensors: &[usize]) -> Result<Vec<f32>, LintError> {
        gather::to_f32(view, &self.sources).map_err(|source| LintError::Read {
            tensor: tensors
                .iter()
                .map(|&k| self.name(k).to_string())
                .collect::<Vec<_>>()
                .join(", "),
            source,
        })
    }

    // ---- tie_word_embeddings ----

    fn tie(&self) -> Result<Outcome, LintError> {
        let Some(m) = &self.model else {
            return Ok(Outcome::skipped(self.no_catalogue()));
        };
        let cfg = m.cat.config();
        let find = |role: Role| m.cat.entries().iter().position(|e| e.role == role);
        let (Some(embed), Some(head)) = (find(Role::Embedding), find(Role::LmHead)) else {
            return Ok(Outcome::skipped(
                "the catalogue has no embedding / lm_head pair for this architecture",
            ));
        };
        let field = |weights: bool| ConfigDisagreement {
            field: "tie_word_embeddings".into(),
            config: Value::Bool(cfg.tie_word_embeddings),
            weights: Value::Bool(weights),
        };
        let head_name = m
            .cat
            .form_of(head, m.conv)
            .and_then(|f| f.stored_tensors().next())
            .map_or_else(|| m.cat.entries()[head].name.clone(), |s| s.name.clone());
        let Some((ev, e_tensors)) = self.entry_view(m, embed) else {
            return Ok(Outcome::skipped(
                "the embedding is missing or has an unexpected shape (see `orient inspect`)",
            ));
        };
        let Some((hv, h_tensors)) = self.entry_view(m, head) else {
            if cfg.tie_word_embeddings {
                return Ok(Outcome::passed(format!(
                    "tied, and no `{head_name}` stored: the embedding is the output projection"
                )));
            }
            return Ok(Outcome {
                findings: vec![Finding {
                    check: Check::TieWordEmbeddings,
                    message: format!(
                        "config says the output projection is its own tensor (tie_word_embeddings: false), but `{head_name}` is not in the checkpoint: transformers would initialise it at random. Add the tensor, or set tie_word_embeddings: true if it is meant to share `{}`",
                        self.name(e_tensors[0])
                    ),
                    tensors: vec![head_name],
                    config: Some(field(true)),
                }],
                ..Outcome::default()
            });
        };
        let names: Vec<String> = h_tensors
            .iter()
            .chain(&e_tensors)
            .map(|&k| self.name(k).to_string())
            .collect();
        let cmp = self.compare(&ev, &e_tensors, &hv, &h_tensors)?;
        let finding = |message: String, weights: bool| Outcome {
            findings: vec![Finding {
                check: Check::TieWordEmbeddings,
                message,
                tensors: names.clone(),
                config: Some(field(weights)),
            }],
            ..Outcome::default()
        };
        Ok(match (cfg.tie_word_embeddings, cmp) {
            (true, Comparison::Equal) => Outcome::passed(format!(
                "tied; `{}` is stored too, equal to the embedding",
                names[0]
            )),
            (true, Comparison::Differ { max_abs, rows }) => finding(
                format!(
                    "config ties the output projection to the embedding (tie_word_embeddings: true), but `{}` is stored with different values ({rows} rows differ, max |Δ| = {max_abs:.4e}): a loader that ties ignores one of the two. Drop it, or set tie_word_embeddings: false",
                    names[0]
                ),
                false,
            ),
            (true, Comparison::Shape) | (false, Comparison::Shape) => Outcome::skipped(
                "the embedding and lm_head shapes differ (see `orient inspect`)",
            ),
            (false, Comparison::Equal) => finding(
                format!(
                    "config says untied (tie_word_embeddings: false), but `{}` equals `{}` value for value: the file stores the table twice. Set tie_word_embeddings: true and drop `{}` if they are meant to be shared",
                    names[0], names[h_tensors.len()], names[0]
                ),
                true,
            ),
            (false, Comparison::Differ { .. }) => {
                Outcome::passed("untied; lm_head is stored and differs from the embedding")
            }
        })
    }

    /// Compares two canonical views value for value, band by band.
    fn compare(
        &self,
        a: &View,
        a_tensors: &[usize],
        b: &View,
        b_tensors: &[usize],
    ) -> Result<Comparison, LintError> {
        if a.shape() != b.shape() {
            return Ok(Comparison::Shape);
        }
        let (rows, cols) = gather::rows_cols(a);
        let band = (1 << 20) / cols.max(1);
        let band = band.max(1);
        let mut ba = vec![0f32; band * cols];
        let mut bb = vec![0f32; band * cols];
        let mut max_abs = 0f32;
        let mut differ = 0usize;
        let mut start = 0;
        while start < rows {
            let end = (start + band).min(rows);
            let n = (end - start) * cols;
            let err = |tensors: &[usize], source| LintError::Read {
                tensor: tensors
                    .iter()
                    .map(|&k| self.name(k).to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            };
            gather::gather_f32(a, &self.sources, start..end, &mut ba[..n])
                .map_err(|e| err(a_tensors, e))?;
            gather::gather_f32(b, &self.sources, start..end, &mut bb[..n])
                .map_err(|e| err(b_tensors, e))?;
            for (ra, rb) in ba[..n].chunks(cols).zip(bb[..n].chunks(cols)) {
                let mut row_differs = false;
                for (x, y) in ra.iter().zip(rb) {
                    if x.to_bits() != y.to_bits() {
                        row_differs = true;
                        let d = (x - y).abs();
                        if d > max_abs || d.is_nan() {
                            max_abs = d;
                        }
                    }
                }
                differ += usize::from(row_differs);
            }
            start = end;
        }
        Ok(if differ == 0 {
            Comparison::Equal
        } else {
            Comparison::Differ {
                max_abs,
                rows: differ,
            }
        })
    }

    // ---- norm storage ----

    fn norms(&self) -> Result<Outcome, LintError> {
        let Some(m) = &self.model else {
            return Ok(Outcome::skipped(self.no_catalogue()));
        };
        let cfg = m.cat.config();
        let expect = expected_norm_storage(&cfg.model_type);
        let mut means: Vec<(String, f64)> = Vec::new();
        for (i, e) in m.cat.entries().iter().enumerate() {
            if e.role != Role::Norm {
                continue;
            }
            let Some((view, tensors)) = self.entry_view(m, i) else {
                continue;
            };
            let values = self.read(&view, &tensors)?;
            if values.is_empty() {
                continue;
            }
            let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
            means.push((self.name(tensors[0]).to_string(), mean));
        }
        if means.is_empty() {
            return Ok(Outcome::skipped("no norm weights found"));
        }
        Ok(judge_norms(&cfg.model_type, expect, &means))
    }

    // ---- shapes ----

    fn shapes(&self) -> (Outcome, Outcome) {
        let Some(m) = &self.model else {
            let why = self.no_catalogue();
            return (Outcome::skipped(why.clone()), Outcome::skipped(why));
        };
        let cfg = m.cat.config();
        let templates = arch::builtin_templates();
        // One-to-one attention and MLP tensors stored as canonical or as its transpose.
        let mut rows = Vec::new();
        for (k, hit) in m.binding.hits.iter().enumerate() {
            let Some(hit) = hit else { continue };
            let form = &m.cat.forms()[hit.form];
            let Some(&entry) = form.entries.first().and_then(|g| g.first()) else {
                continue;
            };
            let e = &m.cat.entries()[entry];
            if !matches!(e.component, Component::Attention | Component::Mlp)
                || !form.is_one_to_one()
                || !(form.chain.steps.is_empty() || form.is_transposed())
            {
                continue;
            }
            let Some(template) = templates.get(e.template) else {
                continue;
            };
            rows.push(ShapeRow {
                tensor: k,
                formula: &template.shape,
                transposed: form.is_transposed(),
                mlp: e.component == Component::Mlp,
            });
        }
        let found: Vec<&[usize]> = rows.iter().map(|r| self.shapes[r.tensor]).collect();
        let explained = explain_shapes(cfg, &rows, &found);
        let mut attn = Outcome::default();
        let mut mlp = Outcome::default();
        for f in explained.findings {
            let tensors: Vec<String> = f
                .rows
                .iter()
                .map(|&r| self.name(rows[r].tensor).to_string())
                .collect();
            let all_mlp = f.rows.iter().all(|&r| rows[r].mlp);
            // A matrix says more than a bias.
            let example = f
                .rows
                .iter()
                .copied()
                .find(|&r| found[r].len() == 2)
                .unwrap_or(f.rows[0]);
            let example_name = self.name(rows[example].tensor).to_string();
            let r = &rows[example];
            let expected = r.expected(cfg).unwrap_or_default();
            let formula = if r.transposed {
                format!("the transpose of {}", r.formula.text)
            } else {
                r.formula.text.clone()
            };
            let (message, config) = match &f.field {
                Some(fix) => {
                    let others = if fix.alternatives.is_empty() {
                        String::new()
                    } else {
                        format!(" (or {})", fix.alternatives.join(", "))
                    };
                    let config_value = if fix.field == "head_dim" && !cfg.head_dim_explicit {
                        format!("not set (derived as {})", fix.config)
                    } else {
                        format!("{}", fix.config)
                    };
                    (
                        format!(
                            "config `{}` is {config_value}, but {} fit {} = {}{others}: e.g. `{}` is {:?}, where the config implies {:?} ({formula})",
                            fix.field,
                            plural(tensors.len(), "tensor"),
                            fix.field,
                            fix.weights,
                            example_name,
                            found[example],
                            expected
                        ),
                        Some(ConfigDisagreement {
                            field: fix.field.to_string(),
                            config: if fix.field == "head_dim" && !cfg.head_dim_explicit {
                                Value::Null
                            } else {
                                Value::from(fix.config)
                            },
                            weights: Value::from(fix.weights),
                        }),
                    )
                }
                None => (
                    format!(
                        "`{}` is {:?}, but the config implies {:?} ({formula}); no single config field explains it",
                        example_name, found[example], expected
                    ),
                    None,
                ),
            };
            let finding = Finding {
                check: if all_mlp {
                    Check::MlpShapes
                } else {
                    Check::AttentionShapes
                },
                message,
                tensors,
                config,
            };
            if all_mlp {
                mlp.findings.push(finding);
            } else {
                attn.findings.push(finding);
            }
        }
        let count = |want_mlp: bool| rows.iter().filter(|r| r.mlp == want_mlp).count();
        attn.detail = format!(
            "{} attention tensors checked against num_attention_heads = {}, num_key_value_heads = {}, head_dim = {}, hidden_size = {}",
            count(false),
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.hidden_size
        );
        mlp.detail = format!(
            "{} MLP tensors checked against intermediate_size = {}, hidden_size = {}",
            count(true),
            cfg.intermediate_size,
            cfg.hidden_size
        );
        if explained.transposed > 0 {
            let note = format!(
                "; {} stored transposed (a layout question: see `orient inspect`)",
                plural(explained.transposed, "tensor")
            );
            attn.detail.push_str(&note);
        }
        (attn, mlp)
    }

    // ---- dtype ----

    fn dtype(&self) -> Outcome {
        let Some(raw) = &self.raw_config else {
            return Outcome::skipped(match self.ck.config_path() {
                None => "no config.json beside the weights".to_string(),
                Some(_) => "config.json is not valid JSON".to_string(),
            });
        };
        let (key, value) = match (raw.get("dtype"), raw.get("torch_dtype")) {
            (Some(Value::String(s)), _) => ("dtype", s.as_str()),
            (_, Some(Value::String(s))) => ("torch_dtype", s.as_str()),
            _ => return Outcome::skipped("config.json names no dtype (`dtype` / `torch_dtype`)"),
        };
        let Some(want) = torch_dtype(value) else {
            return Outcome::skipped(format!(
                "config `{key}` is `{value}`, not a float dtype orient can compare"
            ));
        };
        let mut by_dtype: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut checked = 0;
        for (k, t) in self.ck.tensors().iter().enumerate() {
            let buffer = self.model.as_ref().is_some_and(|m| {
                m.binding.hits[k].is_some_and(|h| {
                    m.cat.forms()[h.form]
                        .entries
                        .iter()
                        .flatten()
                        .any(|&e| m.cat.entries()[e].role == Role::Buffer)
                })
            });
            if !t.dtype.is_computable() || buffer || scale_base(&t.name).is_some() {
                continue;
            }
            checked += 1;
            if t.dtype != want {
                by_dtype
                    .entry(t.dtype.name())
                    .or_default()
                    .push(t.name.clone());
            }
        }
        let findings = by_dtype
            .into_iter()
            .map(|(dtype, tensors)| Finding {
                check: Check::Dtype,
                message: format!(
                    "config `{key}` is {value} ({}), but {} stored as {dtype}: loading with dtype=\"auto\" casts them to {value}, and whatever reads the config misjudges the model's precision and memory",
                    want.name(),
                    plural_are(tensors.len(), "tensor"),
                ),
                tensors,
                config: Some(ConfigDisagreement {
                    field: key.to_string(),
                    config: Value::from(value),
                    weights: Value::from(dtype),
                }),
            })
            .collect();
        Outcome {
            detail: format!("{checked} float tensors compared with config `{key}` = {value}"),
            skipped: None,
            findings,
        }
    }

    // ---- reconversion ----

    fn reconversion(&self, planned: Option<&PlannedConversion>) -> Outcome {
        let meta = self.ck.metadata();
        let Some(source) = meta.get("orient.source_convention") else {
            return Outcome::passed(
                "no orient provenance in the metadata: not converted by orient",
            );
        };
        let version = meta.get("orient.version").map_or("?", String::as_str);
        let target = meta
            .get("orient.target_convention")
            .cloned()
            .or_else(|| {
                let format = meta.get("format")?;
                let from_catalogue = self.model.as_ref().and_then(|m| {
                    m.cat
                        .conventions()
                        .iter()
                        .find(|c| &c.format == format)
                        .map(|c| c.name.clone())
                });
                Some(from_catalogue.unwrap_or_else(|| match format.as_str() {
                    "pt" => "hf".to_string(),
                    other => other.to_string(),
                }))
            })
            .unwrap_or_else(|| "?".to_string());
        let ops = meta
            .get("orient.ops")
            .filter(|o| !o.is_empty())
            .map_or_else(String::new, |o| format!(" (ops: {})", truncate(o, 160)));
        let converted = format!("converted by orient {version} from {source} to {target}{ops}");
        let tensors: Vec<String> = self
            .ck
            .shards()
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        let finding = |message: String| Outcome {
            findings: vec![Finding {
                check: Check::Reconversion,
                message,
                tensors: tensors.clone(),
                config: None,
            }],
            ..Outcome::default()
        };
        // The metadata against the tensors themselves.
        let detected = self
            .model
            .as_ref()
            .and_then(|m| m.detected)
            .map(|c| self.conv_name(c));
        if let Some(d) = &detected {
            if *d != target && target != "?" {
                return finding(format!(
                    "the metadata says this checkpoint was {converted}, but its tensors are in the {d} layout: it was converted again (or back) without updating the metadata, or the metadata is stale"
                ));
            }
        }
        match planned {
            Some(p) if p.from.as_deref() == Some(source.as_str()) && p.to == target => finding(format!(
                "this checkpoint was already {converted}; converting it from {source} to {target} again applies the same transforms a second time (every kernel transposed back, every permutation undone)"
            )),
            Some(p) if p.to == target => finding(format!(
                "this checkpoint was already {converted}; converting it to {target} again would change nothing, and with --from {source} would apply the same transforms a second time"
            )),
            Some(p) => Outcome::passed(format!("{converted}; converting it to {} is a new conversion", p.to)),
            None => Outcome::passed(format!("{converted}; pass --to (and --from) to check a planned conversion")),
        }
    }

    // ---- FP8 scales ----

    fn fp8(&self) -> Outcome {
        let names: HashMap<&str, &crate::checkpoint::TensorInfo> = self
            .ck
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut unscaled = Vec::new();
        let mut orphans = Vec::new();
        let mut stale = Vec::new();
        let mut weights = 0;
        let mut scales = 0;
        for t in self.ck.tensors() {
            if let Some(base) = t.name.strip_suffix(".weight") {
                if is_fp8(t.dtype) {
                    weights += 1;
                    let scaled = SCALE_SUFFIXES[..2]
                        .iter()
                        .any(|s| names.contains_key(format!("{base}.{s}").as_str()));
                    if !scaled {
                        unscaled.push(t.name.clone());
                    }
                }
            }
            if let Some(base) = scale_base(&t.name) {
                scales += 1;
                match names.get(format!("{base}.weight").as_str()) {
                    None => orphans.push(t.name.clone()),
                    Some(w) if !is_quantized(w.dtype) => {
                        stale.push((t.name.clone(), w.name.clone(), w.dtype))
                    }
                    Some(_) => {}
                }
            }
        }
        let mut out = Outcome::passed(if weights + scales == 0 {
            "no FP8 weights and no scale tensors".to_string()
        } else {
            format!("{weights} FP8 weights, {scales} scale tensors, each with its partner")
        });
        if !unscaled.is_empty() {
            out.findings.push(Finding {
                check: Check::Fp8Scales,
                message: format!(
                    "{} FP8 without a `weight_scale` or `weight_scale_inv` beside it: the stored values are read unscaled, off by the missing factor",
                    plural_is(unscaled.len(), "weight")
                ),
                tensors: unscaled,
                config: None,
            });
        }
        if !orphans.is_empty() {
            out.findings.push(Finding {
                check: Check::Fp8Scales,
                message: format!(
                    "{} no `.weight` beside it: a scale for a weight that is not in the checkpoint (dropped on conversion, or a name that changed)",
                    plural_has(orphans.len(), "scale tensor")
                ),
                tensors: orphans,
                config: None,
            });
        }
        if !stale.is_empty() {
            let dtypes: Vec<&str> = {
                let mut d: Vec<&str> = stale.iter().map(|s| s.2.name()).collect();
                d.sort_unstable();
                d.dedup();
                d
            };
            out.findings.push(Finding {
                check: Check::Fp8Scales,
                message: format!(
                    "{} beside a weight that is not quantized ({}): left over from a dequantization? A loader that still applies it scales the weight twice",
                    plural_is(stale.len(), "scale tensor"),
                    dtypes.join(", ")
                ),
                tensors: stale.into_iter().flat_map(|(s, w, _)| [s, w]).collect(),
                config: None,
            });
        }
        out
    }

    // ---- duplicates ----

    fn duplicates(&self) -> Outcome {
        let tensors = self.ck.tensors();
        let bytes: Vec<&[u8]> = self.sources.iter().map(|s| s.bytes).collect();
        let sets = duplicate_sets(&bytes, |k| element_size(tensors[k].dtype));
        // The embedding and a stored lm_head are the tie check's business.
        let tie_pair = self.model.as_ref().and_then(|m| {
            let find = |role: Role| m.cat.entries().iter().position(|e| e.role == role);
            let (e, h) = (find(Role::Embedding)?, find(Role::LmHead)?);
            let (_, mut a) = self.entry_view(m, e)?;
            let (_, b) = self.entry_view(m, h)?;
            a.extend(b);
            a.sort_unstable();
            Some(a)
        });
        let mut out = Outcome::passed(format!(
            "{} tensors: {} share a byte length with another (sampled), {} read in full; {} constant (all elements equal) not counted",
            tensors.len(),
            sets.fingerprinted,
            sets.hashed,
            sets.constant
        ));
        for set in sets.sets {
            if tie_pair.as_ref() == Some(&set) {
                continue;
            }
            let names: Vec<String> = set.iter().map(|&k| self.name(k).to_string()).collect();
            let t = &tensors[set[0]];
            out.findings.push(Finding {
                check: Check::Duplicates,
                message: format!(
                    "{} hold the same {} bytes ({} {:?}): one tensor stored {} times, e.g. copied into the wrong slot by a converter",
                    plural(names.len(), "tensor"),
                    t.nbytes(),
                    t.dtype.name(),
                    t.shape,
                    names.len()
                ),
                tensors: names,
                config: None,
            });
        }
        out
    }
}

/// Outcome of comparing two canonical views.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Comparison {
    Equal,
    Differ { max_abs: f32, rows: usize },
    Shape,
}

/// Judges norm means against the architecture's expectation: a finding when most norm weights
/// look stored the other way.
fn judge_norms(model_type: &str, expect: NormStorage, means: &[(String, f64)]) -> Outcome {
    let other = match expect {
        NormStorage::Scale => NormStorage::OffsetFromOne,
        NormStorage::OffsetFromOne => NormStorage::Scale,
    };
    let wrong: Vec<&(String, f64)> = means
        .iter()
        .filter(|(_, m)| classify_mean(*m) == Some(other))
        .collect();
    let mut sorted: Vec<f64> = means.iter().map(|(_, m)| *m).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let says = |s: NormStorage| match s {
        NormStorage::Scale => "the scale w (means near 1)",
        NormStorage::OffsetFromOne => "an offset from 1 (means near 0; the forward computes 1 + w)",
    };
    let detail = format!(
        "{} norm weights, median mean {median:.3}; {model_type}'s forward expects {}",
        means.len(),
        says(expect)
    );
    // A few small norms are normal in trained models (early layers); most of them is not.
    if wrong.len() * 2 <= means.len() {
        return Outcome::passed(detail);
    }
    let fix = match expect {
        NormStorage::Scale => "add 1 to them",
        NormStorage::OffsetFromOne => {
            "subtract 1 from them (GGUF and some converters bake the 1 in)"
        }
    };
    Outcome {
        detail,
        skipped: None,
        findings: vec![Finding {
            check: Check::NormStorage,
            message: format!(
                "{} of {} norm weights look stored as {} (median mean {median:.3}), but {model_type}'s forward expects {}: every normalised activation is off by the missing or extra 1; {fix}",
                wrong.len(),
                means.len(),
                says(other),
                says(expect)
            ),
            tensors: wrong.iter().map(|(n, _)| n.clone()).collect(),
            config: None,
        }],
    }
}

/// The float dtype a config's `dtype` / `torch_dtype` names.
fn torch_dtype(s: &str) -> Option<Dtype> {
    match s.strip_prefix("torch.").unwrap_or(s) {
        "float32" | "float" => Some(Dtype::F32),
        "bfloat16" => Some(Dtype::BF16),
        "float16" | "half" => Some(Dtype::F16),
        "float64" | "double" => Some(Dtype::F64),
        _ => None,
    }
}

/// Suffixes of quantization scales as transformers' quantizers name them: `weight_scale`
/// (compressed-tensors, fbgemm_fp8), `weight_scale_inv` (fine-grained FP8), `input_scale`
/// (static activation scales).
const SCALE_SUFFIXES: [&str; 3] = ["weight_scale", "weight_scale_inv", "input_scale"];

/// The module name of a scale tensor (`x.weight_scale` → `x`).
fn scale_base(name: &str) -> Option<&str> {
    SCALE_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s).and_then(|b| b.strip_suffix('.')))
}

fn is_fp8(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::F8_E4M3 | Dtype::F8_E5M2 | Dtype::F8_E4M3FNUZ | Dtype::F8_E5M2FNUZ
    )
}

/// A weight dtype a scale makes sense for (FP8, integer, sub-byte float).
fn is_quantized(d: Dtype) -> bool {
    is_fp8(d)
        || matches!(
            d,
            Dtype::I8 | Dtype::U8 | Dtype::F4 | Dtype::F6_E2M3 | Dtype::F6_E3M2 | Dtype::I32
        )
}

fn element_size(d: Dtype) -> usize {
    (d.bits() / 8).max(1)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn plural_is(n: usize, what: &str) -> String {
    format!("{} {}", plural(n, what), if n == 1 { "is" } else { "are" })
}

fn plural_are(n: usize, what: &str) -> String {
    plural_is(n, what)
}

fn plural_has(n: usize, what: &str) -> String {
    format!(
        "{} {}",
        plural(n, what),
        if n == 1 { "has" } else { "have" }
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn norm_storage_is_judged_by_the_majority() {
        let means = |v: &[f64]| -> Vec<(String, f64)> {
            v.iter()
                .enumerate()
                .map(|(i, m)| (format!("n{i}"), *m))
                .collect()
        };
        // Llama-style scales near 1, with one small early-layer norm: fine.
        let o = judge_norms("llama", NormStorage::Scale, &means(&[0.05, 1.1, 0.9, 1.3]));
        assert!(o.findings.is_empty(), "{o:?}");
        // The same weights stored as offsets (the 1 taken out): most means near 0.
        let o = judge_norms("llama", NormStorage::Scale, &means(&[0.02, 0.1, -0.1, 0.3]));
        assert_eq!(o.findings.len(), 1);
        assert_eq!(o.findings[0].tensors.len(), 4);
        // Gemma expects offsets; GGUF-style 1 + w (means near 1) is the finding there.
        assert_eq!(expected_norm_storage("gemma2"), NormStorage::OffsetFromOne);
        let o = judge_norms(
            "gemma",
            NormStorage::OffsetFromOne,
            &means(&[1.0, 1.1, 0.95]),
        );
        assert_eq!(o.findings.len(), 1);
        assert!(
            o.findings[0].message.contains("subtract 1"),
            "{}",
            o.findings[0].message
        );
        let o = judge_norms(
            "gemma",
            NormStorage::OffsetFromOne,
            &means(&[0.0, 0.1, -0.05]),
        );
        assert!(o.findings.is_empty());
        // Large trained scales are neither: no finding.
        assert_eq!(classify_mean(2.5), None);
    }

    #[test]
    fn scale_names_follow_the_quantizers() {
        assert_eq!(
            scale_base("m.layers.0.mlp.down_proj.weight_scale"),
            Some("m.layers.0.mlp.down_proj")
        );
        assert_eq!(scale_base("a.weight_scale_inv"), Some("a"));
        assert_eq!(scale_base("a.input_scale"), Some("a"));
        assert_eq!(scale_base("a.weight"), None);
        assert_eq!(scale_base("weight_scale"), None);
        assert_eq!(torch_dtype("torch.bfloat16"), Some(Dtype::BF16));
        assert_eq!(torch_dtype("auto"), None);
    }
}
