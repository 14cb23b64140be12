//! Rendering of `orient lint` reports: a table of checks and a list of findings for people,
//! JSON for scripts.
//!
//! Why two parts: the table says what was checked (and what could not be, and why) at a
//! glance; findings carry long messages and tensor lists that would wreck a table's columns.
//! Tensor lists collapse their layer indices (`model.layers.{0-27}.self_attn.k_proj.weight`).

use std::io::{self, Write};

use comfy_table::{presets, Cell, ContentArrangement, Table};
use orient_inspect::lint::{CheckStatus, LintReport};
use orient_inspect::report::{compact_ranges, layer_pattern};

use crate::output::escape::{cell, escape, escape_text};

/// The report as JSON (schema in README.md).
pub fn json(report: &LintReport, w: &mut dyn Write) -> io::Result<()> {
    crate::output::json::write_pretty(w, report)
}

/// The report as a table of checks, then the findings.
pub fn table(report: &LintReport, w: &mut dyn Write) -> io::Result<()> {
    writeln!(
        w,
        "lint {} ({}, {} layout)",
        escape(&report.path),
        report
            .architecture
            .as_deref()
            .unwrap_or("architecture unknown"),
        report.convention.as_deref().unwrap_or("undecided")
    )?;
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["check", "status", "detail"]);
    for c in &report.checks {
        let n = report
            .findings
            .iter()
            .filter(|f| f.check == c.check)
            .count();
        let status = match c.status {
            CheckStatus::Passed => "ok".to_string(),
            CheckStatus::Skipped => "skipped".to_string(),
            CheckStatus::Failed => format!("✗ {n}"),
        };
        table.add_row(vec![
            Cell::new(c.check.name()),
            Cell::new(status),
            cell(&c.detail),
        ]);
    }
    writeln!(w, "{table}")?;
    for f in &report.findings {
        writeln!(w, "✗ {}: {}", f.check.name(), escape_text(&f.message))?;
        for name in compact_names(&f.tensors) {
            writeln!(w, "    {}", escape(&name))?;
        }
    }
    match report.findings.len() {
        0 => writeln!(w, "result: no findings"),
        1 => writeln!(w, "result: 1 finding"),
        n => writeln!(w, "result: {n} findings"),
    }
}

/// Names with their layer index collapsed: `a.{0-3}.b` for `a.0.b` … `a.3.b`, in first-seen
/// order.
pub fn compact_names(names: &[String]) -> Vec<String> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for n in names {
        match layer_pattern(n) {
            Some((pattern, layer)) => match groups.iter_mut().find(|(p, _)| *p == pattern) {
                Some((_, layers)) => layers.push(layer),
                None => groups.push((pattern, vec![layer])),
            },
            None => groups.push((n.clone(), Vec::new())),
        }
    }
    groups
        .into_iter()
        .map(|(pattern, layers)| match layers.as_slice() {
            [] => pattern,
            [one] => pattern.replacen("{i}", &one.to_string(), 1),
            _ => pattern.replacen("{i}", &format!("{{{}}}", compact_ranges(&layers)), 1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_collapse() {
        let names: Vec<String> = [
            "model.layers.0.self_attn.k_proj.weight",
            "lm_head.weight",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.3.self_attn.k_proj.weight",
            "model.layers.2.mlp.up_proj.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            compact_names(&names),
            vec![
                "model.layers.{0-1,3}.self_attn.k_proj.weight",
                "lm_head.weight",
                "model.layers.2.mlp.up_proj.weight",
            ]
        );
    }
}
