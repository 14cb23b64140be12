//! Rendering of `orient convert`: the plan table (`--dry-run`), and the summary.

use std::io::{self, Write};
use std::path::Path;

use comfy_table::{presets, Cell, ContentArrangement, Table};
use orient_convert::convert::Outcome;
use orient_convert::plan::{Action, Plan};

use crate::output::escape::{cell, escape, path, Escaping};
use crate::output::inspect::{human_bytes, shape, thousands};

/// The header lines: source, detected/explicit convention, target, notes.
pub fn header(plan: &Plan, src: &Path, dst: &Path, w: &mut dyn Write) -> io::Result<()> {
    let w = &mut Escaping::new(w);
    let how = if plan.explicit_from {
        "from --from"
    } else {
        "detected from names and non-square shapes"
    };
    writeln!(
        w,
        "source:  {} ({}, {} layout, {})",
        path(src),
        escape(&plan.config.model_type),
        plan.source.name(),
        how
    )?;
    if plan.explicit_from {
        let det = match &plan.detected {
            Ok(c) => c.name().to_string(),
            Err(why) => why.clone(),
        };
        writeln!(w, "detect:  {}", escape(&det))?;
    }
    writeln!(w, "target:  {} ({} layout)", path(dst), plan.target.name())?;
    for note in &plan.notes {
        writeln!(w, "note:    {}", escape(note))?;
    }
    Ok(())
}

/// The plan: one row per source tensor (plus rows for tensors built from another one).
pub fn plan_table(plan: &Plan, src: &Path, dst: &Path, w: &mut dyn Write) -> io::Result<()> {
    header(plan, src, dst, w)?;
    let w = &mut Escaping::new(w);
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(vec!["source", "target", "operations", "shape", "dtype"]);
    for row in &plan.rows {
        match &row.action {
            Action::Write { op } => {
                let Some(op) = plan.ops.get(*op) else {
                    continue;
                };
                t.add_row(vec![
                    cell(&row.source),
                    cell(&op.target),
                    cell(op.describe()),
                    Cell::new(shapes(&op.source_shape, &op.target_shape)),
                    Cell::new(dtypes(op.source_dtype.name(), op.target_dtype.name())),
                ]);
            }
            Action::Skip(why) => {
                t.add_row(vec![
                    cell(&row.source),
                    Cell::new("-"),
                    cell(format!("skip: {why}")),
                    Cell::new(shape(&row.shape)),
                    Cell::new(row.dtype.name()),
                ]);
            }
        }
    }
    for op in plan.ops.iter().filter(|o| o.tied) {
        t.add_row(vec![
            cell(format!("({})", op.source)),
            cell(&op.target),
            cell(op.describe()),
            Cell::new(shapes(&op.source_shape, &op.target_shape)),
            Cell::new(dtypes(op.source_dtype.name(), op.target_dtype.name())),
        ]);
    }
    writeln!(w, "{t}")?;
    let skipped = plan
        .rows
        .iter()
        .filter(|r| matches!(r.action, Action::Skip(_)))
        .count();
    let transposed = plan.ops.iter().filter(|o| o.transpose).count();
    let cast = plan.ops.iter().filter(|o| o.casts()).count();
    writeln!(
        w,
        "plan:    {} tensors written ({} transposed, {} cast), {} skipped, {} of output; nothing written (--dry-run)",
        plan.ops.len(),
        transposed,
        cast,
        skipped,
        plan.output_bytes().map(human_bytes).unwrap_or_else(|_| "?".into())
    )
}

fn shapes(a: &[usize], b: &[usize]) -> String {
    if a == b {
        shape(a)
    } else {
        format!("{} → {}", shape(a), shape(b))
    }
}

fn dtypes(a: &str, b: &str) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a} → {b}")
    }
}

/// The summary after a conversion. `seconds` is the wall time of the write.
pub fn summary(plan: &Plan, outcome: &Outcome, seconds: f64, w: &mut dyn Write) -> io::Result<()> {
    let w = &mut Escaping::new(w);
    let wr = &outcome.written;
    let skipped = plan
        .rows
        .iter()
        .filter(|r| matches!(r.action, Action::Skip(_)))
        .count();
    writeln!(
        w,
        "wrote:   {} tensors ({} transposed, {} cast, {} skipped), {} in {:.2} s ({}/s)",
        wr.tensors,
        plan.ops.iter().filter(|o| o.transpose).count(),
        plan.ops.iter().filter(|o| o.casts()).count(),
        skipped,
        human_bytes(wr.bytes),
        seconds,
        human_bytes((wr.bytes as f64 / seconds.max(1e-9)) as u64)
    )?;
    writeln!(w, "files:   {}", escape(&wr.files.join(", ")))?;
    if !outcome.copied.is_empty() {
        writeln!(w, "copied:  {}", escape(&outcome.copied.join(", ")))?;
    }
    let c = &wr.cast_total;
    if plan.ops.iter().any(|o| o.casts()) {
        writeln!(
            w,
            "casts:   {} overflowed to Inf, {} flushed to zero, {} became subnormal, {} NaN kept",
            thousands(c.overflowed),
            thousands(c.flushed_to_zero),
            thousands(c.subnormal),
            thousands(c.nan)
        )?;
        for (name, s) in &wr.lossy_casts {
            writeln!(
                w,
                "  {}: {} overflowed, {} flushed, {} subnormal",
                escape(name),
                s.overflowed,
                s.flushed_to_zero,
                s.subnormal
            )?;
        }
    }
    Ok(())
}

/// The summary after `orient synth`.
pub fn synth_summary(
    model_type: &str,
    outcome: &orient_convert::synth::SynthOutcome,
    seconds: f64,
    w: &mut dyn Write,
) -> io::Result<()> {
    let w = &mut Escaping::new(w);
    writeln!(
        w,
        "synthesized: {} ({}), {} tensors, {} in {:.2} s ({}/s)",
        path(&outcome.dst),
        escape(model_type),
        outcome.tensors,
        human_bytes(outcome.bytes),
        seconds,
        human_bytes((outcome.bytes as f64 / seconds.max(1e-9)) as u64)
    )?;
    writeln!(w, "files:       {}", escape(&outcome.files.join(", ")))
}
