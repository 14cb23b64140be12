//! Rendering of `orient convert`: the plan table (`--dry-run`), and the summary.

use std::io::{self, Write};
use std::path::Path;

use comfy_table::{presets, Cell, ContentArrangement, Table};
use orient_convert::convert::Outcome;
use orient_convert::engine::TensorOp;
use orient_convert::parts::{FinishOutcome, PartOutcome, PartPlan};
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
        escape(&plan.source),
        how
    )?;
    if plan.explicit_from {
        let det = match &plan.detected {
            Ok(c) => c.clone(),
            Err(why) => why.clone(),
        };
        writeln!(w, "detect:  {}", escape(&det))?;
    }
    writeln!(
        w,
        "target:  {} ({} layout)",
        path(dst),
        escape(&plan.target)
    )?;
    for note in &plan.notes {
        writeln!(w, "note:    {}", escape(note))?;
    }
    Ok(())
}

/// The plan: one row per output tensor with the source tensor(s) it is made from, one per
/// source tensor left out (in source-name order), then the outputs built from another tensor.
pub fn plan_table(plan: &Plan, src: &Path, dst: &Path, w: &mut dyn Write) -> io::Result<()> {
    header(plan, src, dst, w)?;
    let w = &mut Escaping::new(w);
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(vec!["source", "target", "operations", "shape", "dtype"]);
    // (sort key, row): outputs by their first source, skipped sources by their name.
    let mut lines: Vec<(String, Vec<Cell>)> = Vec::new();
    for op in plan.ops.iter().filter(|o| !o.tied) {
        let names: Vec<&str> = op.sources.iter().map(|s| s.name.as_str()).collect();
        lines.push((
            names.first().map_or(String::new(), |n| n.to_string()),
            op_row(&names.join(", "), op),
        ));
    }
    for row in &plan.rows {
        if let Action::Skip(why) = &row.action {
            lines.push((
                row.source.clone(),
                vec![
                    cell(&row.source),
                    Cell::new("-"),
                    cell(format!("skip: {why}")),
                    Cell::new(shape(&row.shape)),
                    Cell::new(row.dtype.name()),
                ],
            ));
        }
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, cells) in lines {
        t.add_row(cells);
    }
    for op in plan.ops.iter().filter(|o| o.tied) {
        t.add_row(op_row(&format!("({})", op.source()), op));
    }
    writeln!(w, "{t}")?;
    writeln!(
        w,
        "plan:    {} tensors written ({}{} cast), {} skipped, {} of output; nothing written (--dry-run)",
        plan.ops.len(),
        counts(plan),
        plan.cast(),
        plan.skipped(),
        plan.output_bytes().map(human_bytes).unwrap_or_else(|_| "?".into())
    )
}

/// `--dry-run --part I/N`: the shards that part writes and the tensors in them, with the
/// operations that make each.
pub fn part_plan(
    plan: &Plan,
    part: &PartPlan,
    src: &Path,
    dst: &Path,
    w: &mut dyn Write,
) -> io::Result<()> {
    header(plan, src, dst, w)?;
    let w = &mut Escaping::new(w);
    let by_target: std::collections::HashMap<&str, &TensorOp> =
        plan.ops.iter().map(|o| (o.target.as_str(), o)).collect();
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(vec![
        "file",
        "target",
        "source",
        "operations",
        "shape",
        "dtype",
    ]);
    for (file, _, tensors) in &part.shards {
        for name in tensors {
            let Some(op) = by_target.get(name.as_str()) else {
                continue;
            };
            let sources: Vec<&str> = op.sources.iter().map(|s| s.name.as_str()).collect();
            let mut row = vec![cell(file)];
            let cells = op_row(&sources.join(", "), op);
            // op_row gives source, target, operations, shape, dtype.
            let mut it = cells.into_iter();
            let (source, target) = (it.next(), it.next());
            row.extend(target);
            row.extend(source);
            row.extend(it);
            t.add_row(row);
        }
    }
    if part.shards.is_empty() {
        writeln!(
            w,
            "part {}: nothing to write (the output has {} shard{}; lower --max-shard-size for more)",
            part.spec,
            part.total_shards,
            if part.total_shards == 1 { "" } else { "s" }
        )?;
    } else {
        writeln!(w, "{t}")?;
    }
    let bytes: u64 = part.shards.iter().map(|s| s.1).sum();
    let files: Vec<&str> = part.shards.iter().map(|s| s.0.as_str()).collect();
    writeln!(
        w,
        "part:    {} writes {} of {} shards ({} of {}): {}; nothing written (--dry-run)",
        part.spec,
        part.shards.len(),
        part.total_shards,
        human_bytes(bytes),
        human_bytes(part.total_bytes),
        if files.is_empty() {
            "-".to_string()
        } else {
            escape(&files.join(", ")).into_owned()
        }
    )
}

/// The summary after `--part I/N`.
pub fn part_summary(
    outcome: &PartOutcome,
    part: &PartPlan,
    seconds: f64,
    w: &mut dyn Write,
) -> io::Result<()> {
    let w = &mut Escaping::new(w);
    let bytes: u64 = part.shards.iter().map(|s| s.1).sum();
    match &outcome.written {
        Some(wr) => writeln!(
            w,
            "part {}: wrote {} tensors, {} in {:.2} s ({}/s) into {}",
            outcome.spec,
            wr.tensors,
            human_bytes(bytes),
            seconds,
            human_bytes((bytes as f64 / seconds.max(1e-9)) as u64),
            path(&outcome.folder)
        )?,
        None => writeln!(
            w,
            "part {}: already complete in {} for this conversion; left as it is (--force writes it again)",
            outcome.spec,
            path(&outcome.folder)
        )?,
    }
    let files = if outcome.files.is_empty() {
        "- (no shard falls to this part)".to_string()
    } else {
        escape(&outcome.files.join(", ")).into_owned()
    };
    writeln!(w, "files:   {files}")
}

/// The summary after `--finish`.
pub fn finish_summary(
    plan: &Plan,
    done: &FinishOutcome,
    seconds: f64,
    w: &mut dyn Write,
) -> io::Result<()> {
    {
        let w = &mut Escaping::new(&mut *w);
        writeln!(
            w,
            "finish:  {} parts checked ({} read again and hashed) and put together in {:.2} s",
            done.parts,
            human_bytes(done.verified_bytes),
            seconds
        )?;
    }
    let o = &done.outcome;
    {
        let w = &mut Escaping::new(&mut *w);
        writeln!(
            w,
            "wrote:   {} tensors ({}{} cast, {} skipped), {} in {}",
            o.written.tensors,
            counts(plan),
            plan.cast(),
            plan.skipped(),
            human_bytes(o.written.bytes),
            path(&o.dst)
        )?;
        writeln!(w, "files:   {}", escape(&o.written.files.join(", ")))?;
        if !o.copied.is_empty() {
            writeln!(w, "copied:  {}", escape(&o.copied.join(", ")))?;
        }
        if let Some(left) = &done.left {
            writeln!(
                w,
                "note:    could not remove {}; delete it by hand",
                path(left)
            )?;
        }
    }
    Ok(())
}

/// `N transposed, ` and, when some outputs go through other chains, `M through other
/// chains, `.
fn counts(plan: &Plan) -> String {
    let mut s = format!("{} transposed, ", plan.transposed());
    if plan.relaid() > 0 {
        s.push_str(&format!("{} through other chains, ", plan.relaid()));
    }
    s
}

/// One output tensor of the plan table.
fn op_row(source: &str, op: &TensorOp) -> Vec<Cell> {
    let shapes_in: Vec<&[usize]> = op.sources.iter().map(|s| s.shape.as_slice()).collect();
    let dtypes_in: Vec<&str> = op.sources.iter().map(|s| s.dtype.name()).collect();
    vec![
        cell(source),
        cell(&op.target),
        cell(op.describe()),
        Cell::new(shapes(&shapes_in, &op.target_shape)),
        Cell::new(dtypes(&dtypes_in, op.target_dtype.name())),
    ]
}

/// `[64, 192] → [192, 64]`, or one shape when nothing changes; several sources are
/// joined with `+`.
fn shapes(a: &[&[usize]], b: &[usize]) -> String {
    match a {
        [one] if *one == b => shape(b),
        _ => format!(
            "{} → {}",
            a.iter().map(|s| shape(s)).collect::<Vec<_>>().join(" + "),
            shape(b)
        ),
    }
}

/// `F32 → BF16`, or one dtype when nothing changes.
fn dtypes(a: &[&str], b: &str) -> String {
    let mut distinct: Vec<&str> = a.to_vec();
    distinct.dedup();
    match distinct.as_slice() {
        [one] if *one == b => b.to_string(),
        _ => format!("{} → {b}", distinct.join(" + ")),
    }
}

/// The summary after a conversion. `seconds` is the wall time of the write.
pub fn summary(plan: &Plan, outcome: &Outcome, seconds: f64, w: &mut dyn Write) -> io::Result<()> {
    let w = &mut Escaping::new(w);
    let wr = &outcome.written;
    writeln!(
        w,
        "wrote:   {} tensors ({}{} cast, {} skipped), {} in {:.2} s ({}/s)",
        wr.tensors,
        counts(plan),
        plan.cast(),
        plan.skipped(),
        human_bytes(wr.bytes),
        seconds,
        human_bytes((wr.bytes as f64 / seconds.max(1e-9)) as u64)
    )?;
    writeln!(w, "files:   {}", escape(&wr.files.join(", ")))?;
    if !outcome.copied.is_empty() {
        writeln!(w, "copied:  {}", escape(&outcome.copied.join(", ")))?;
    }
    let c = &wr.cast_total;
    if plan.cast() > 0 {
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
