//! Rendering of `orient diff` reports: a table for people, JSON for scripts.
//!
//! Why the shape of the table: one row per pair with both sides' dtype and shape, so that a
//! reader sees at a glance which tensors moved and how; explanations that apply to many rows
//! (e.g. "pass --expect-conversion hf-to-flax") are grouped once under the table instead of
//! repeated on every row.

use std::collections::BTreeMap;
use std::io::{self, Write};

use comfy_table::{presets, Cell, ContentArrangement, Table};
use orient_inspect::diff::{DiffReport, PairResult, Verdict};

use crate::output::escape::{cell, escape, Escaping};

/// A bar counting compared pairs (the caller shows it only when stderr is a terminal and sets
/// its length once the pairing is known).
pub fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "comparing [{bar:30}] {pos}/{len} pairs, {elapsed} {wide_msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// A number in a short, stable form: plain for ordinary magnitudes, scientific otherwise.
fn num(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_string();
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let a = x.abs();
    if (1e-3..1e5).contains(&a) {
        let s = format!("{x:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{x:.3e}")
    }
}

fn shape(s: &[usize]) -> String {
    let dims: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Detail of a pair whose A equals its own transpose.
const SYMMETRIC: &str =
    "equal to its own transpose (symmetric, zero or 1×1): identical and transposed at once";

/// The detail column of one pair.
fn detail(p: &PairResult) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(e) = &p.error {
        parts.push(format!("error: {e}"));
    }
    match &p.verdict {
        Some(Verdict::Identical {
            lossless_cast,
            symmetric,
        }) => {
            if let Some(c) = lossless_cast {
                parts.push(format!("same values after lossless cast {c}"));
            }
            if *symmetric {
                parts.push(SYMMETRIC.to_string());
            }
        }
        Some(Verdict::Transposed {
            within_rounding,
            expected_by_conventions,
        }) => {
            parts.push(match within_rounding {
                Some(d) => format!("within {d} rounding"),
                None => "exact".to_string(),
            });
            if *expected_by_conventions {
                parts.push(by_conventions(p));
            }
        }
        Some(Verdict::RopePermuted {
            direction,
            heads,
            head_kind,
            transposed,
            within_rounding,
        }) => {
            parts.push(format!(
                "{}, {heads} {} heads",
                direction.describe(),
                match head_kind {
                    orient_inspect::diff::HeadKind::Query => "query",
                    orient_inspect::diff::HeadKind::KeyValue => "key/value",
                }
            ));
            if *transposed {
                parts.push("and transposed".to_string());
            }
            if let Some(d) = within_rounding {
                parts.push(format!("within {d} rounding"));
            }
            if p.matches_conventions {
                parts.push(by_conventions(p));
            }
        }
        Some(Verdict::Transformed(t)) => {
            if let Some((k, n)) = t.part {
                parts.push(format!("{} {} of {n}", t.verdict, k + 1));
            }
            if t.transposed {
                parts.push("and transposed".to_string());
            }
            parts.push(match t.within_rounding {
                Some(d) => format!("within {d} rounding"),
                None => "exact".to_string(),
            });
            if t.expected_by_conventions {
                parts.push(by_conventions(p));
            }
        }
        Some(Verdict::Rounded {
            dtype,
            max_abs_diff,
            symmetric,
        }) => {
            parts.push(format!(
                "within one {dtype} ulp, max |Δ| {}",
                num(*max_abs_diff)
            ));
            if *symmetric {
                parts.push(SYMMETRIC.to_string());
            }
        }
        Some(Verdict::Scaled {
            factor,
            hint,
            transposed,
        }) => {
            let mut s = format!("c = {}", num(*factor));
            if let Some(h) = hint {
                s.push_str(&format!(" = {h}"));
            }
            parts.push(s);
            if *transposed {
                parts.push("after a transpose".to_string());
            }
        }
        Some(Verdict::Offset { offset, transposed }) => {
            parts.push(format!("c = {}", num(*offset)));
            if *transposed {
                parts.push("after a transpose".to_string());
            }
        }
        Some(Verdict::Different {
            max_abs_diff,
            max_rel_diff,
            cosine,
            differing,
            numel,
            first_difference,
            against_transpose,
            bytes_only,
        }) => {
            if *bytes_only {
                parts.push(format!("{differing}/{numel} elements differ (bytes)"));
            } else {
                parts.push(format!(
                    "max |Δ| {}, max rel Δ {}, cos {}",
                    num(*max_abs_diff),
                    num(*max_rel_diff),
                    cosine.map_or("n/a".to_string(), |c| format!("{c:.6}"))
                ));
                parts.push(format!("{differing}/{numel} differ"));
            }
            if let Some(f) = first_difference {
                parts.push(format!("first at {}", shape(f)));
            }
            if *against_transpose {
                parts.push("against Aᵀ".to_string());
            }
        }
        None => {}
    }
    // A transform other than the one the conventions imply, when they imply more than a
    // transpose (which the flags above already place): say both. An unchanged tensor is said
    // so under the table, with what the conventions expected.
    if let Some(found) = &p.relation {
        let plain = ["identity", "transpose"].contains(&p.conventions_relation.as_str());
        if !p.matches_conventions && !plain && found != "identity" {
            parts.push(format!(
                "found `{found}` where the conventions expect `{}`",
                p.conventions_relation
            ));
        }
    }
    parts.extend(p.notes.iter().cloned());
    parts.join("; ")
}

/// `expected by conventions (hf → flax)`, from the conventions the two sides were read in.
fn by_conventions(p: &PairResult) -> String {
    let (a, b) = match &p.conventions {
        Some([a, b]) => (a.as_str(), b.as_str()),
        None => ("?", "?"),
    };
    format!("expected by conventions ({a} → {b})")
}

fn side(dtype: &str, s: &[usize]) -> String {
    format!("{dtype} {}", shape(s))
}

/// Renders the report as a table with a summary.
pub fn render_table(
    report: &DiffReport,
    only_differences: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    let out = &mut Escaping::new(out);
    for (label, s) in [("A", &report.a), ("B", &report.b)] {
        // The convention is named only when it is a user layout (the built-ins show in the
        // rows' names).
        let layout = match (&s.convention, &s.layout_file) {
            (Some(c), Some(_)) => format!(", layout {c}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "{label}: {} ({}, {} tensors{})",
            escape(&s.root),
            escape(&s.config),
            s.tensors,
            escape(&layout)
        )?;
    }
    for w in &report.warnings {
        writeln!(out, "warning: {}", escape(w))?;
    }
    for n in &report.notes {
        writeln!(out, "note: {}", escape(n))?;
    }

    let shown: Vec<&PairResult> = report
        .pairs
        .iter()
        .filter(|p| {
            !only_differences
                || !matches!(p.verdict, Some(Verdict::Identical { .. }))
                || !p.explained
        })
        .collect();
    if !shown.is_empty() {
        let mut table = Table::new();
        table
            .load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec!["", "tensor", "A", "B", "verdict", "detail"]);
        for p in shown {
            let name = if p.a.name == p.b.name {
                escape(&p.a.name).into_owned()
            } else {
                format!("{}\n→ {}", escape(&p.a.name), escape(&p.b.name))
            };
            // A part of a fused or stacked tensor: which canonical tensor the row compares.
            let name = match (&p.canonical, &p.a.part, &p.b.part) {
                (Some(c), Some(_), _) | (Some(c), _, Some(_))
                    if *c != p.a.name && *c != p.b.name =>
                {
                    format!("{name}\n({})", escape(c))
                }
                _ => name,
            };
            table.add_row(vec![
                Cell::new(if p.explained { "✓" } else { "✗" }),
                Cell::new(name),
                Cell::new(side(p.a.dtype, &p.a.shape)),
                Cell::new(side(p.b.dtype, &p.b.shape)),
                Cell::new(p.verdict.as_ref().map_or("error", Verdict::name)),
                cell(detail(p)),
            ]);
        }
        writeln!(out, "{table}")?;
    }

    for (label, list) in [("A", &report.only_in_a), ("B", &report.only_in_b)] {
        for o in list {
            let mut why = o
                .optional
                .as_ref()
                .map_or(String::new(), |w| format!(" (allowed: {w})"));
            if let Some(c) = &o.canonical {
                why.push_str(&format!(" (its part {c})"));
            }
            writeln!(
                out,
                "only in {label}: {} {}{}",
                escape(&o.name),
                side(o.dtype, &o.shape),
                escape(&why)
            )?;
        }
    }

    // Reasons shared by several unexplained pairs, once each.
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &report.pairs {
        if let Some(r) = &p.unexplained_because {
            *reasons.entry(r.as_str()).or_default() += 1;
        }
    }
    for (r, n) in &reasons {
        let pairs = if *n == 1 { "pair" } else { "pairs" };
        writeln!(out, "✗ {n} {pairs}: {}", escape(r))?;
    }

    let s = &report.summary;
    let verdicts: Vec<String> = s.verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    let mut line = format!("{} pairs", s.pairs);
    if !verdicts.is_empty() {
        line.push_str(&format!(": {}", verdicts.join(", ")));
    }
    if s.errors > 0 {
        line.push_str(&format!(", {} not comparable", s.errors));
    }
    line.push_str(&format!(
        "; {} only in A, {} only in B",
        report.only_in_a.len(),
        report.only_in_b.len()
    ));
    writeln!(out, "{line}")?;
    if report.ok {
        writeln!(out, "result: every pair identical or explained")?;
    } else {
        writeln!(
            out,
            "result: {} unexplained pair(s), {} unexpected name(s) on one side",
            s.unexplained,
            s.only_in_a + s.only_in_b
        )?;
    }
    Ok(())
}

/// Renders the report as pretty JSON (with `only_differences`, identical pairs are left out).
pub fn render_json(
    report: &DiffReport,
    only_differences: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    if only_differences {
        let mut r = report.clone();
        r.pairs
            .retain(|p| !matches!(p.verdict, Some(Verdict::Identical { .. })) || !p.explained);
        crate::output::json::write_pretty(out, &r)
    } else {
        crate::output::json::write_pretty(out, report)
    }
}
