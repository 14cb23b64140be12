//! Rendering of the `inspect` report: a table (comfy-table) with a summary, or JSON.

use std::io::{self, Write};

use comfy_table::{presets, Cell, ColumnConstraint, ContentArrangement, Table, Width};
use orient_inspect::report::{GroupRow, Report, Stats, Status, TensorRow};

use crate::output::escape::{cell, escape, Escaping};

/// Writes the report as pretty JSON (the schema documented in README.md).
pub fn json(report: &Report, w: &mut dyn Write) -> io::Result<()> {
    crate::output::json::write_pretty(w, report)
}

/// Rows rendered per comfy-table: the cells of a table cost about a kilobyte per row, so
/// a header of a million tensors must not become one table.
const ROWS_PER_CHUNK: usize = 4096;

/// Writes the tensor table (or the per-layer groups) followed by the summary.
pub fn table(report: &Report, w: &mut dyn Write, with_stats: bool) -> io::Result<()> {
    let w = &mut Escaping::new(w);
    let mut header = vec![
        "name", "dtype", "shape", "params", "role", "layout", "expected", "status",
    ];
    if report.groups.is_some() {
        header.insert(1, "layers");
    }
    if with_stats {
        header.extend(["min", "max", "mean", "std", "nan/inf"]);
    }
    let rows: Box<dyn Fn(usize, usize) -> Vec<Vec<Cell>>> = match &report.groups {
        Some(groups) => Box::new(move |from, to| {
            groups[from..to]
                .iter()
                .map(|g| group_cells(g, with_stats))
                .collect()
        }),
        None => Box::new(move |from, to| {
            report.tensors[from..to]
                .iter()
                .map(|r| row_cells(r, r.params, with_stats))
                .collect()
        }),
    };
    let n = report
        .groups
        .as_ref()
        .map_or(report.tensors.len(), Vec::len);
    chunked_table(&header, n, ROWS_PER_CHUNK, &*rows, w)?;
    summary(report, w)
}

/// Writes one table of `n` rows, built `chunk` rows at a time by `rows(from, to)`, so
/// that memory stays bounded by a chunk of cells whatever `n` is. The output is the
/// same as one comfy-table holding every row: a first pass over the chunks measures
/// each column's widest cell, the second renders each chunk with those widths fixed
/// and stitches the chunks' borders together.
fn chunked_table(
    header: &[&str],
    n: usize,
    chunk: usize,
    rows: &dyn Fn(usize, usize) -> Vec<Vec<Cell>>,
    w: &mut dyn Write,
) -> io::Result<()> {
    let chunk = chunk.max(1);
    let new_table = |with_header: bool, cells: Vec<Vec<Cell>>| {
        let mut t = Table::new();
        t.load_preset(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Disabled);
        if with_header {
            t.set_header(header.to_vec());
        }
        t.add_rows(cells);
        t
    };
    let starts = (0..n.max(1)).step_by(chunk);
    // Pass 1: the widest cell of each column, over every chunk and the header.
    let mut widths: Vec<u16> = vec![0; header.len()];
    for (i, from) in starts.clone().enumerate() {
        let t = new_table(i == 0, rows(from, (from + chunk).min(n)));
        for (w, c) in widths.iter_mut().zip(t.column_max_content_widths()) {
            *w = (*w).max(c);
        }
    }
    // Pass 2: render each chunk at those widths; keep the top border of the first and
    // the bottom border of the last only.
    let chunks = starts.len();
    for (i, from) in starts.enumerate() {
        let mut t = new_table(i == 0, rows(from, (from + chunk).min(n)));
        for (column, &width) in t.column_iter_mut().zip(&widths) {
            // The constraint counts the padding (one space each side).
            column.set_constraint(ColumnConstraint::Absolute(Width::Fixed(
                width.saturating_add(2),
            )));
        }
        let text = t.to_string();
        let mut lines: Vec<&str> = text.lines().collect();
        if i + 1 < chunks {
            lines.pop();
        }
        let skip = usize::from(i > 0);
        for line in &lines[skip..] {
            writeln!(w, "{line}")?;
        }
    }
    Ok(())
}

fn group_cells(g: &GroupRow, with_stats: bool) -> Vec<Cell> {
    let mut cells = row_cells(&g.row, g.params, with_stats);
    cells[0] = cell(&g.pattern);
    let layers = if g.layers.is_empty() {
        String::new()
    } else {
        format!("{} (×{})", g.layers, g.count)
    };
    cells.insert(1, Cell::new(layers));
    cells
}

fn row_cells(r: &TensorRow, params: u64, with_stats: bool) -> Vec<Cell> {
    let mut cells = vec![
        cell(&r.name),
        Cell::new(r.dtype.map_or("-".to_owned(), |d| d.to_string())),
        Cell::new(r.shape.as_deref().map_or("-".to_owned(), shape)),
        Cell::new(if r.status == Status::Missing {
            "-".to_owned()
        } else {
            thousands(params)
        }),
        Cell::new(r.role.map_or("?", |r| r.name())),
        Cell::new(r.layout.as_deref().unwrap_or("?")),
        Cell::new(r.expected_shape.as_deref().map_or("?".to_owned(), shape)),
        cell(status_text(r)),
    ];
    if with_stats {
        let s = r.stats.as_ref();
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
        cells.extend([
            Cell::new(f(s.and_then(|s| s.min))),
            Cell::new(f(s.and_then(|s| s.max))),
            Cell::new(f(s.and_then(|s| s.mean))),
            Cell::new(f(s.and_then(|s| s.std))),
            Cell::new(s.map_or("-".to_owned(), |s: &Stats| format!("{}/{}", s.nan, s.inf))),
        ]);
    }
    cells
}

fn status_text(r: &TensorRow) -> String {
    let mut s = r.status.name().to_owned();
    if r.square_ambiguous {
        s.push_str(" ⚠ square: orientation unproven");
    }
    if let Some(note) = &r.note {
        s.push_str(&format!(" ({note})"));
    }
    s
}

fn summary(report: &Report, w: &mut dyn Write) -> io::Result<()> {
    let s = &report.summary;
    writeln!(
        w,
        "path:          {} ({}, {} shard{})",
        escape(&s.path),
        s.layout,
        s.shards,
        if s.shards == 1 { "" } else { "s" }
    )?;
    writeln!(
        w,
        "architecture:  {} (config.json: {})",
        s.architecture.as_deref().unwrap_or("unknown"),
        s.config
    )?;
    writeln!(
        w,
        "convention:    {} ({})",
        s.convention.kind,
        escape(&s.convention.reason)
    )?;
    if !s.convention.offending.is_empty() {
        let offending: Vec<_> = s.convention.offending.iter().map(|n| escape(n)).collect();
        writeln!(w, "  offending:   {}", offending.join(", "))?;
    }
    writeln!(
        w,
        "tensors:       {} ({} parameter{})",
        s.tensors,
        thousands(s.total_params),
        if s.total_params == 1 { "" } else { "s" }
    )?;
    let bytes: Vec<String> = s
        .bytes_by_dtype
        .iter()
        .map(|(d, b)| format!("{d} {}", human_bytes(*b)))
        .collect();
    writeln!(w, "bytes:         {}", bytes.join(", "))?;
    let counts = |c: &std::collections::BTreeMap<&str, usize>| {
        let parts: Vec<String> = c.iter().map(|(k, v)| format!("{k} {v}")).collect();
        parts.join(", ")
    };
    match &s.filtered {
        None => writeln!(w, "status:        {}", counts(&s.status_counts))?,
        // Both sets, each named: --check judges the rows the filter kept.
        Some(f) => {
            writeln!(
                w,
                "status:        {} (whole checkpoint)",
                counts(&s.status_counts)
            )?;
            let glob = escape(&f.glob);
            if f.rows == 0 {
                writeln!(
                    w,
                    "filtered:      no row matches `{glob}` (--check has nothing to judge)"
                )?;
            } else {
                writeln!(
                    w,
                    "filtered:      {} in the {} row{} matching `{glob}` (what --check judges)",
                    counts(&f.status_counts),
                    f.rows,
                    if f.rows == 1 { "" } else { "s" }
                )?;
            }
        }
    }
    if s.metadata.is_empty() {
        writeln!(w, "metadata:      (none)")?;
    } else {
        // Long values (a provenance summary) are cut here; --json has them whole.
        const LONG: usize = 160;
        let md: Vec<String> = s
            .metadata
            .iter()
            .map(|(k, v)| match v.char_indices().nth(LONG) {
                Some((cut, _)) => format!(
                    "{}={}… ({} chars; --json shows all)",
                    escape(k),
                    escape(&v[..cut]),
                    v.chars().count()
                ),
                None => format!("{}={}", escape(k), escape(v)),
            })
            .collect();
        writeln!(w, "metadata:      {}", md.join(", "))?;
    }
    for note in &s.notes {
        writeln!(w, "note:          {}", escape(note))?;
    }
    Ok(())
}

/// `[64, 176]`.
pub fn shape(s: &[usize]) -> String {
    let dims: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes with a binary unit, e.g. `1.5 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(100), "100");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(shape(&[64, 176]), "[64, 176]");
    }
}
