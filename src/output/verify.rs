//! Rendering of `orient verify`: one row per stage (embedding, each layer, final norm,
//! logits), then the verdict naming the first stage out of tolerance.
//!
//! The verdict is the point of the report, so it is a sentence after the table; tensors read
//! transposed are listed before the table, because they explain the numbers that follow.

use std::io::{self, Write};

use comfy_table::{presets, Cell, CellAlignment, Table};
use serde::Serialize;

use crate::generate::Divergence;
use crate::model::compare::{Comparison, ReferenceNote, Stage};
use crate::model::LoadNote;
use crate::output::escape::{escape, Escaping};
use crate::output::run::describe_note;

/// `schema_version` of `orient verify --json` (README.md documents the schema).
pub const VERIFY_SCHEMA_VERSION: u32 = 1;

/// Everything `orient verify` reports.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// [`VERIFY_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The model under test.
    pub model: String,
    /// The reference file or the other model.
    pub against: String,
    /// `reference` (a stored transformers output) or `model` (a second forward).
    pub against_kind: &'static str,
    /// Prompt length.
    pub tokens: usize,
    /// Where the prompt came from.
    pub prompt: String,
    /// Load notes of the model under test.
    pub notes: Vec<LoadNote>,
    /// Load notes of the other model (empty for a reference file).
    pub against_notes: Vec<LoadNote>,
    /// What a reference file leaves uncompared (empty for a second model).
    pub reference_notes: Vec<ReferenceNote>,
    /// The stage-by-stage comparison.
    pub comparison: Comparison,
    /// Everything within tolerance (and, with `--generate`, vLLM's rule kept).
    pub passed: bool,
    /// `--generate N`: both greedy continuations and vLLM's rule.
    pub generation: Option<GenerationCheck>,
    /// The first stage out of tolerance, in words (e.g. "layer 0's attention").
    pub first_failure: Option<String>,
}

/// `verify --generate N`: both models' greedy continuations of the prompt, compared by vLLM's
/// rule.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationCheck {
    /// N.
    pub new_tokens: usize,
    /// The model under test's continuation.
    pub generated_ids: Vec<u32>,
    /// The other model's.
    pub against_generated_ids: Vec<u32>,
    /// Where they part (`a` is the model under test), with both top-5 lists; null when equal.
    pub first_difference: Option<Divergence>,
    /// Equal, or at the first difference each token is among the other model's top 5.
    pub passed: bool,
}

/// Plain for ordinary magnitudes, scientific for tiny or huge ones.
fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".to_string()
    } else if x.is_infinite() {
        "inf".to_string()
    } else if (1e-2..1e4).contains(&x.abs()) {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

fn notes(out: &mut dyn Write, who: &str, notes: &[LoadNote]) -> io::Result<()> {
    let shown: Vec<&LoadNote> = notes
        .iter()
        .filter(|n| !matches!(n, LoadNote::Tied | LoadNote::Ignored { .. }))
        .collect();
    if shown.is_empty() {
        return Ok(());
    }
    writeln!(out, "{}:", escape(who))?;
    for n in shown {
        writeln!(out, "  {}", describe_note(n))?;
    }
    Ok(())
}

/// `a-b`, or `a` alone.
fn span(a: usize, b: usize) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// One sentence per reference note, for people.
pub fn describe_reference_note(n: &ReferenceNote) -> String {
    match n {
        ReferenceNote::ExtraHiddenStates { layers, stored } => format!(
            "NOTE: {stored} hidden_states, but the model has {layers} layers (transformers returns \
             {}): hidden_states.{} skipped, and hidden_states.{layers} compared as layer {}'s \
             output, not as the final norm",
            layers + 1,
            span(layers + 1, stored - 1),
            layers.saturating_sub(1)
        ),
        ReferenceNote::MissingHiddenStates {
            layers,
            stored,
            uncompared_layers,
        } => {
            let mut missing = Vec::new();
            if *stored == 0 {
                missing.push("the embedding".to_string());
            }
            if let (Some(first), Some(last)) = (uncompared_layers.first(), uncompared_layers.last())
            {
                if uncompared_layers.len() == last - first + 1 {
                    missing.push(format!("layers {}", span(*first, *last)));
                } else {
                    let list: Vec<String> =
                        uncompared_layers.iter().map(usize::to_string).collect();
                    missing.push(format!("layers {}", list.join(", ")));
                }
            }
            missing.push("the final norm".to_string());
            let have = if *stored == 0 {
                "no hidden_states".to_string()
            } else {
                format!("hidden_states.{} only", span(0, stored - 1))
            };
            format!(
                "NOTE: {have} of the {} a {layers}-layer model has: {} not compared",
                layers + 1,
                missing.join(", ")
            )
        }
        ReferenceNote::ExtraLayerOutputs { layers, stored } => format!(
            "NOTE: {stored} layer_output tensors, but the model has {layers} layers: \
             layer_output.{} skipped",
            span(*layers, stored - 1)
        ),
    }
}

/// Renders the report as a table and a verdict (or JSON with `json`).
pub fn render(r: &VerifyReport, json: bool, out: &mut dyn Write) -> io::Result<()> {
    if json {
        return crate::output::json::write_pretty(out, r);
    }
    let out = &mut Escaping::new(out);
    writeln!(
        out,
        "verify {} against {} {} on {} tokens ({})",
        escape(&r.model),
        r.against_kind,
        escape(&r.against),
        r.tokens,
        escape(&r.prompt)
    )?;
    notes(out, &r.model, &r.notes)?;
    notes(out, &r.against, &r.against_notes)?;
    if !r.reference_notes.is_empty() {
        writeln!(out, "{}:", r.against)?;
        for n in &r.reference_notes {
            writeln!(out, "  {}", describe_reference_note(n))?;
        }
    }
    let tol = r.comparison.tolerance;
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "stage",
        "max |Δ|",
        "mean |Δ|",
        "NMSE",
        "outside tol",
        "top-1 agree",
        "top-5/10 overlap",
        "KL mean",
        "KL max",
        "",
    ]);
    let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
    for (i, row) in r.comparison.rows.iter().enumerate() {
        let (top1, overlap, kl_mean, kl_max) = match &row.agreement {
            Some(a) => (
                format!("{}/{}", a.top1_agree, a.positions),
                format!("{:.3} / {:.3}", a.top5_overlap, a.top10_overlap),
                sci(a.kl_mean),
                sci(a.kl_max),
            ),
            None => (String::new(), String::new(), String::new(), String::new()),
        };
        let mark = if r.comparison.first_failure == Some(i) {
            "← first over tolerance"
        } else if row.diff.within() {
            "ok"
        } else {
            "over"
        };
        table.add_row(vec![
            Cell::new(row.stage.label()),
            right(sci(f64::from(row.diff.max_abs))),
            right(sci(row.diff.mean_abs)),
            right(db(row.diff.nmse_db)),
            right(format!("{}/{}", row.diff.exceeding, row.diff.count)),
            right(top1),
            right(overlap),
            right(kl_mean),
            right(kl_max),
            Cell::new(mark),
        ]);
    }
    writeln!(out, "{table}")?;
    if let Some(g) = &r.generation {
        generation(out, g)?;
    }
    match (&r.first_failure, r.comparison.first_failing_stage()) {
        (Some(what), Some(stage)) => {
            writeln!(
                out,
                "FAIL: first divergence at {what} (|Δ| > {} + {}·|ref|).",
                tol.atol, tol.rtol
            )?;
            let own_head = r
                .notes
                .iter()
                .chain(&r.against_notes)
                .any(|n| matches!(n, LoadNote::TiedButOwnLmHead { .. }));
            if stage == Stage::LmHead && own_head {
                writeln!(
                    out,
                    "config.json ties the embeddings, but a Flax lm_head.kernel computes the logits \
                     (listed above) and differs from the embedding that PyTorch would use: the \
                     checkpoint computes different logits in the two frameworks."
                )?;
            }
            if matches!(stage, Stage::Attention { .. }) {
                let transposed = r
                    .notes
                    .iter()
                    .any(|n| matches!(n, LoadNote::ReadTransposed { .. }));
                if transposed {
                    writeln!(
                        out,
                        "Some weights were stored transposed (listed above); square q_proj/o_proj \
                         weights cannot be told apart by shape and are the likely culprits."
                    )?;
                }
            }
        }
        _ if !r.passed => writeln!(
            out,
            "FAIL: every stage within |Δ| ≤ {} + {}·|ref|, but the greedy continuations part \
             beyond vLLM's rule.",
            tol.atol, tol.rtol
        )?,
        _ => writeln!(
            out,
            "PASS: every stage within |Δ| ≤ {} + {}·|ref|{}.",
            tol.atol,
            tol.rtol,
            if r.generation.is_some() {
                ", and the greedy continuations keep vLLM's rule"
            } else {
                ""
            }
        )?,
    }
    Ok(())
}

/// NMSE in decibels (−∞ when identical).
fn db(x: Option<f64>) -> String {
    match x {
        None => "-inf dB".to_string(),
        Some(v) if v.is_infinite() => "inf dB".to_string(),
        Some(v) => format!("{v:.1} dB"),
    }
}

/// The `--generate` lines: equal continuations, or where they part and whether the rule holds.
fn generation(out: &mut dyn Write, g: &GenerationCheck) -> io::Result<()> {
    let Some(d) = &g.first_difference else {
        return writeln!(
            out,
            "greedy continuation: the same {} tokens from both models",
            g.generated_ids.len()
        );
    };
    let ids = |v: &[crate::model::TopToken]| -> String {
        let ids: Vec<String> = v.iter().map(|t| t.token.to_string()).collect();
        ids.join(", ")
    };
    writeln!(
        out,
        "greedy continuation ({} tokens): the models part at generated token {} (position {}): \
         {} vs {}; top 5 there: [{}] vs [{}]: {}",
        g.new_tokens,
        d.index,
        d.position,
        d.a,
        d.b,
        ids(&d.a_top),
        ids(&d.b_top),
        if d.within_top5 {
            "each token is in the other's top 5 (vLLM's rule holds)"
        } else {
            "a token is outside the other's top 5 (vLLM's rule fails)"
        }
    )
}
