//! Rendering of `orient run`: the top next-token candidates as a table or JSON.
//!
//! One row per (position, rank), so that `--all-positions` stays a single readable table; the
//! load notes (e.g. weights read transposed) come first because they change how to read the
//! numbers.

use std::io::{self, Write};
use std::time::Duration;

use comfy_table::{presets, Cell, CellAlignment, Table};
use serde::Serialize;

use crate::model::{LoadNote, TopToken};
use crate::output::escape::{escape, Escaping};

/// The candidates at one position.
#[derive(Clone, Debug, Serialize)]
pub struct PositionTop {
    /// Position in the prompt (0-based); the candidates are for the token after it.
    pub position: usize,
    /// Best first.
    pub top: Vec<TopToken>,
    /// With `--prompt`: each candidate's text, as the tokenizer decodes it alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<Vec<String>>,
}

/// `schema_version` of `orient run --json` (README.md documents the schema).
pub const RUN_SCHEMA_VERSION: u32 = 1;

/// Everything `orient run` reports.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// [`RUN_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The model path as given.
    pub model: String,
    /// `model_type`.
    pub model_type: String,
    /// The convention the checkpoint was read in: `hf`, `flax`, or a layout file's name.
    pub convention: String,
    /// Prompt length.
    pub tokens: usize,
    /// The prompt's token ids (given, or `--prompt`'s tokenization).
    pub input_ids: Vec<u32>,
    /// `--prompt`'s text, when given.
    pub prompt: Option<String>,
    /// What loading noticed.
    pub notes: Vec<LoadNote>,
    /// Candidates, by position.
    pub positions: Vec<PositionTop>,
    /// Where `--save` wrote the logits and hidden states.
    pub saved: Option<String>,
    /// An encoder's outputs (BERT: no LM head, so no candidates); `None` for a decoder.
    pub encoder: Option<EncoderSummary>,
}

/// What `orient run` shows of an encoder's forward.
#[derive(Clone, Debug, Serialize)]
pub struct EncoderSummary {
    /// `[T, H]` of `last_hidden_state`.
    pub last_hidden_state: [usize; 2],
    /// `[H]` `pooler_output` (empty without a pooler).
    pub pooler_output: Vec<f32>,
}

/// One sentence per load note, for people (tensor names escaped).
pub fn describe_note(n: &LoadNote) -> String {
    let text = match n {
        LoadNote::ReadTransposed {
            name,
            found,
            expected,
        } => format!(
            "WARNING: `{name}` is stored {found:?} but should be {expected:?}: read as its transpose"
        ),
        LoadNote::Ignored { name } => format!("ignored `{name}` (not part of this architecture)"),
        LoadNote::Tied => "tied embeddings: logits use the token embedding".to_string(),
        LoadNote::TiedLmHeadIgnored => {
            "tied embeddings: the stored lm_head is ignored, as transformers does".to_string()
        }
        LoadNote::TiedButOwnLmHead {
            name,
            convention,
            builtin,
        } => {
            let by = if *builtin {
                // The one built-in with `tied_stored` rows: flax.toml.
                "transformers' Flax llama-family classes do (they always use their own lm_head)"
                    .to_string()
            } else {
                format!("layout `{convention}` says its framework does (it always uses its own lm_head)")
            };
            format!("config.json ties the embeddings, but `{name}` computes the logits, as {by}")
        }
        LoadNote::UntiedButNoLmHead => {
            "config says untied, but there is no lm_head: the token embedding is used".to_string()
        }
    };
    escape(&text).into_owned()
}

/// Renders the report as a table (or JSON with `json`).
pub fn render(report: &RunReport, json: bool, out: &mut dyn Write) -> io::Result<()> {
    if json {
        return crate::output::json::write_pretty(out, report);
    }
    let out = &mut Escaping::new(out);
    writeln!(
        out,
        "{} ({}, {} layout), {} tokens",
        escape(&report.model),
        escape(&report.model_type),
        report.convention,
        report.tokens
    )?;
    if report.prompt.is_some() {
        let ids: Vec<String> = report.input_ids.iter().map(u32::to_string).collect();
        writeln!(out, "input_ids: [{}]", ids.join(", "))?;
    }
    for n in report.notes.iter().filter(|n| !matches!(n, LoadNote::Tied)) {
        writeln!(out, "  {}", describe_note(n))?;
    }
    if let Some(e) = &report.encoder {
        return render_encoder(e, report.saved.as_deref(), out);
    }
    let mut table = Table::new();
    table.load_preset(presets::UTF8_FULL_CONDENSED);
    let with_text = report.positions.iter().any(|p| p.text.is_some());
    let mut header = vec!["position", "rank", "token", "logit", "prob"];
    if with_text {
        header.push("text");
    }
    table.set_header(header);
    for p in &report.positions {
        for (rank, t) in p.top.iter().enumerate() {
            let mut row = vec![
                Cell::new(p.position).set_alignment(CellAlignment::Right),
                Cell::new(rank + 1).set_alignment(CellAlignment::Right),
                Cell::new(t.token).set_alignment(CellAlignment::Right),
                Cell::new(format!("{:.6}", t.logit)).set_alignment(CellAlignment::Right),
                Cell::new(format!("{:.6}", t.prob)).set_alignment(CellAlignment::Right),
            ];
            if with_text {
                let text = p.text.as_ref().and_then(|v| v.get(rank));
                row.push(Cell::new(text.map_or(String::new(), |s| quoted(s))));
            }
            table.add_row(row);
        }
    }
    writeln!(out, "{table}")?;
    if let Some(path) = &report.saved {
        writeln!(
            out,
            "saved input_ids, logits and hidden states to {}",
            escape(path)
        )?;
    }
    Ok(())
}

/// An encoder's outputs: the shape of its last hidden state and the start of its pooler output.
fn render_encoder(e: &EncoderSummary, saved: Option<&str>, out: &mut dyn Write) -> io::Result<()> {
    let [t, h] = e.last_hidden_state;
    writeln!(
        out,
        "encoder (no LM head): last_hidden_state [{t}, {h}], pooler_output [{}]",
        e.pooler_output.len()
    )?;
    if !e.pooler_output.is_empty() {
        let shown: Vec<String> = e
            .pooler_output
            .iter()
            .take(8)
            .map(|v| format!("{v:.6}"))
            .collect();
        let more = if e.pooler_output.len() > 8 {
            ", …"
        } else {
            ""
        };
        writeln!(out, "pooler_output: [{}{more}]", shown.join(", "))?;
    }
    if let Some(path) = saved {
        writeln!(
            out,
            "saved input_ids, hidden states and pooler_output to {}",
            escape(path)
        )?;
    }
    Ok(())
}

/// A token's text for a table cell: quoted, with control characters and invisible spaces
/// escaped (a newline shows as `\n`).
pub fn quoted(text: &str) -> String {
    escape(&format!("{text:?}")).into_owned()
}

/// Timings of `--repeat` runs (for benchmarks; goes to stderr).
#[derive(Clone, Debug, Serialize)]
pub struct Timings {
    /// Model load (config, catalogue, mmap), before the first forward.
    pub load: Duration,
    /// Each forward.
    pub forwards: Vec<Duration>,
    /// Prompt length.
    pub tokens: usize,
    /// 2 · parameters · tokens, for GFLOP/s.
    pub flops: f64,
}

/// One line per forward plus best and median, with GFLOP/s.
pub fn render_timings(t: &Timings, out: &mut dyn Write) -> io::Result<()> {
    let out = &mut Escaping::new(out);
    writeln!(out, "load: {:.3} s", t.load.as_secs_f64())?;
    for (i, d) in t.forwards.iter().enumerate() {
        writeln!(
            out,
            "forward {}: {:.4} s, {:.1} GFLOP/s",
            i + 1,
            d.as_secs_f64(),
            t.flops / d.as_secs_f64() / 1e9
        )?;
    }
    // the first forward faults the weights in: a warm-up, left out of the summary
    let timed = if t.forwards.len() > 1 {
        &t.forwards[1..]
    } else {
        &t.forwards[..]
    };
    let mut sorted = timed.to_vec();
    sorted.sort();
    if let (Some(best), Some(median)) = (sorted.first(), sorted.get(sorted.len() / 2)) {
        writeln!(
            out,
            "tokens {} best {:.4} s ({:.1} GFLOP/s) median {:.4} s ({:.1} GFLOP/s) over {} forward(s){}",
            t.tokens,
            best.as_secs_f64(),
            t.flops / best.as_secs_f64() / 1e9,
            median.as_secs_f64(),
            t.flops / median.as_secs_f64() / 1e9,
            timed.len(),
            if timed.len() < t.forwards.len() { " after a warm-up" } else { "" }
        )?;
    }
    Ok(())
}
