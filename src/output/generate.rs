//! Rendering of `orient generate`: the continuation as it comes (text, or ids without a
//! tokenizer), the `--json` object, and the side-by-side comparison of `--against`.
//!
//! Streamed text goes through [`escape_text`]: a model's output is as untrusted as a tensor
//! name (a byte-level vocabulary holds ESC and the bidi controls), so it keeps its line breaks
//! but cannot drive the terminal.

use std::io::{self, Write};

use comfy_table::{presets, Cell, CellAlignment, Table};
use serde::Serialize;

use crate::generate::{Divergence, Stop};
use crate::model::{LoadNote, TopToken};
use crate::output::escape::{escape, escape_text, Escaping};
use crate::output::run::{describe_note, quoted};

/// Writes one piece of streamed output (a token's text, or its id and a space) and flushes it,
/// so that it shows as soon as it is generated.
pub fn piece(out: &mut dyn Write, text: &str) -> io::Result<()> {
    out.write_all(escape_text(text).as_bytes())?;
    out.flush()
}

/// The load notes of a model (weights read transposed, an lm_head ignored…) on `err`, under
/// its path, as `run` and `verify` list them.
pub fn load_notes(err: &mut dyn Write, model: &str, notes: &[LoadNote]) -> io::Result<()> {
    let shown: Vec<&LoadNote> = notes
        .iter()
        .filter(|n| !matches!(n, LoadNote::Tied | LoadNote::Ignored { .. }))
        .collect();
    if shown.is_empty() {
        return Ok(());
    }
    let err = &mut Escaping::new(err);
    writeln!(err, "{}:", escape(model))?;
    for n in shown {
        writeln!(err, "  {}", describe_note(n))?;
    }
    Ok(())
}

/// What `--json` prints for one model (without `--against`).
#[derive(Clone, Debug, Serialize)]
pub struct GenerateJson {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// The tokens generated (an EOS that stopped generation included).
    pub generated_ids: Vec<u32>,
    /// Their text (special tokens skipped); null without a tokenizer.
    pub text: Option<String>,
}

/// The end of a streamed continuation: a line break, then on `err` why it stopped and how fast
/// (`seconds` in all; `prefill` until the first token, after which each token is a decode step).
pub fn summary(
    out: &mut dyn Write,
    err: &mut dyn Write,
    generated: usize,
    stop: Stop,
    seconds: f64,
    prefill: Option<f64>,
) -> io::Result<()> {
    writeln!(out)?;
    out.flush()?;
    let why = match stop {
        Stop::Eos => "an EOS token",
        Stop::MaxNewTokens => "--max-new-tokens",
    };
    write!(
        err,
        "{generated} tokens generated (stopped by {why}) in {seconds:.3} s"
    )?;
    match prefill {
        Some(p) if generated > 1 => writeln!(
            err,
            ": prompt {p:.3} s, then {:.1} tokens/s",
            (generated - 1) as f64 / (seconds - p).max(1e-9)
        ),
        _ => writeln!(err),
    }
}

/// One model's side of `generate --against`.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// The model path as given.
    pub model: String,
    /// The tokens generated.
    pub generated_ids: Vec<u32>,
    /// Their text; null without a tokenizer.
    pub text: Option<String>,
    /// Each generated token's text alone (for the table); empty without a tokenizer.
    #[serde(skip)]
    pub pieces: Vec<String>,
    /// Why it stopped.
    pub stop: Stop,
}

/// Everything `generate --against` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// The model under test.
    pub a: Side,
    /// The other model.
    pub b: Side,
    /// Where they part; null when the continuations are equal.
    pub first_difference: Option<Divergence>,
    /// The texts of the candidates at the difference (A's, then B's), when a tokenizer is known.
    #[serde(skip)]
    pub candidate_texts: Option<(Vec<String>, Vec<String>)>,
}

/// The comparison as a table of both continuations, then the first difference with both
/// models' candidates there (or JSON with `json`).
pub fn render_compare(report: &CompareReport, json: bool, out: &mut dyn Write) -> io::Result<()> {
    if json {
        return crate::output::json::write_pretty(out, report);
    }
    let out = &mut Escaping::new(out);
    writeln!(
        out,
        "A: {}\nB: {}\nprompt: {} tokens",
        escape(&report.a.model),
        escape(&report.b.model),
        report.prompt_ids.len()
    )?;
    let with_text = !report.a.pieces.is_empty() || !report.b.pieces.is_empty();
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    let mut header = vec!["#", "position", "A token"];
    if with_text {
        header.push("A text");
    }
    header.push("B token");
    if with_text {
        header.push("B text");
    }
    header.push("");
    table.set_header(header);
    let first = report.first_difference.as_ref().map(|d| d.index);
    let n = report
        .a
        .generated_ids
        .len()
        .max(report.b.generated_ids.len());
    for i in 0..n {
        let mut row = vec![
            Cell::new(i).set_alignment(CellAlignment::Right),
            Cell::new(report.prompt_ids.len() + i).set_alignment(CellAlignment::Right),
        ];
        for side in [&report.a, &report.b] {
            let id = side.generated_ids.get(i);
            row.push(
                Cell::new(id.map_or(String::new(), u32::to_string))
                    .set_alignment(CellAlignment::Right),
            );
            if with_text {
                row.push(Cell::new(
                    side.pieces.get(i).map_or(String::new(), |p| quoted(p)),
                ));
            }
        }
        let mark = match first {
            Some(f) if i == f => "← first difference",
            Some(f) if i > f => "after",
            _ => "",
        };
        row.push(Cell::new(mark));
        table.add_row(row);
    }
    writeln!(out, "{table}")?;
    match &report.first_difference {
        None => writeln!(
            out,
            "SAME: both models continue the prompt with the same {n} tokens."
        )?,
        Some(d) => {
            writeln!(
                out,
                "DIFFERENT: the continuations part at generated token {} (position {}): A chose {}, B chose {}.",
                d.index,
                d.position,
                token_name(d.a),
                token_name(d.b)
            )?;
            let texts = report.candidate_texts.as_ref();
            writeln!(out, "{}", top_table("A", &d.a_top, texts.map(|t| &t.0)))?;
            writeln!(out, "{}", top_table("B", &d.b_top, texts.map(|t| &t.1)))?;
            writeln!(
                out,
                "{}",
                if d.within_top5 {
                    "Each model's token is among the other's top 5 (a near-tie, vLLM's rule passes)."
                } else {
                    "A token is outside the other model's top 5 (vLLM's rule fails)."
                }
            )?;
        }
    }
    Ok(())
}

/// A token id, or "nothing (stopped)" for a side that ended first.
fn token_name(t: u32) -> String {
    if t == u32::MAX {
        "nothing (it had stopped)".to_string()
    } else {
        t.to_string()
    }
}

/// One model's candidates at the difference.
fn top_table(side: &str, top: &[TopToken], texts: Option<&Vec<String>>) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    let mut header = vec![
        format!("{side} top"),
        "token".into(),
        "logit".into(),
        "prob".into(),
    ];
    if texts.is_some() {
        header.push("text".into());
    }
    table.set_header(header);
    for (rank, t) in top.iter().enumerate() {
        let mut row = vec![
            Cell::new(rank + 1).set_alignment(CellAlignment::Right),
            Cell::new(t.token).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.6}", t.logit)).set_alignment(CellAlignment::Right),
            Cell::new(format!("{:.6}", t.prob)).set_alignment(CellAlignment::Right),
        ];
        if let Some(texts) = texts {
            row.push(Cell::new(
                texts.get(rank).map_or(String::new(), |p| quoted(p)),
            ));
        }
        table.add_row(row);
    }
    table
}
