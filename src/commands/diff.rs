//! `orient diff A B`: compare two checkpoints tensor by tensor and name the transform between
//! each pair. The comparison is [`orient_inspect::diff`]; this file parses flags, shows progress
//! on a terminal, and hands the report to [`orient::output::diff`].

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use orient_inspect::diff::{self, Conversion, DiffOptions};
use orient_inspect::layout::convention;

/// Arguments of `orient diff`.
///
/// Each side is read in its own convention, detected from its names and non-square shapes
/// among the built-ins (hf, flax) and the `--layout` files; pairs are the canonical tensors
/// present on both sides. Verdicts: the relation the two conventions imply is tried first
/// (transposed, rope-permuted, fused, …, "expected by conventions"); otherwise the first
/// hypothesis that holds: transposed, rope-permuted, rounded, scaled (B = c·A), offset
/// (B = A + c), different (max |Δ|, max relative Δ, cosine). Exit status: 0 when every pair is
/// identical or explained by `--expect-conversion` (or by a side's `--layout`) and no tensor
/// is missing on one side (the catalogue may allow some, e.g. lm_head under tied embeddings);
/// 1 otherwise, including pairs that could not be compared; 2 when a checkpoint cannot be
/// opened.
#[derive(Debug, clap::Args)]
#[command(mut_arg("layouts", |a| a.help(LAYOUT_HELP)))]
pub struct Args {
    /// First checkpoint: a .safetensors file, a model.safetensors.index.json, or a folder.
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub a: super::ModelPath,
    /// Second checkpoint, in the same or another convention (HF, Flax, or a `--layout`); a path or a
    /// repo id (`ORG/NAME@REV` compares two revisions of one repo).
    pub b: super::ModelPath,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Hide pairs whose verdict is `identical`.
    #[arg(long)]
    pub only_differences: bool,
    /// Compare whole tensors from the start instead of screening candidates on sampled rows
    /// and columns first (slower on different pairs; same verdicts).
    #[arg(long)]
    pub full: bool,
    /// Conversions that explain differences, comma-separated or repeated, e.g.
    /// `--expect-conversion hf-to-flax,cast`: `transpose` (any 2-D pair may be transposed),
    /// `rope-permute` (q/k projections and biases may be RoPE-permuted per head, either way),
    /// `cast` (equal within one ulp of the narrower dtype, where the dtypes differ), or
    /// FROM-to-TO for two conventions (`hf-to-flax`, `flax-to-hf`, `hf-to-my-port` with a
    /// `--layout`): A in FROM, B in TO, related as those conventions say. Without it only
    /// `identical` pairs pass (and, with a `--layout` side, what its conventions imply).
    #[arg(long, value_delimiter = ',', value_name = "CONVERSION")]
    pub expect_conversion: Vec<String>,
    #[command(flatten)]
    pub layout: super::LayoutArgs,
    #[command(flatten)]
    pub hub: super::HubArgs,
}

/// `--layout` as diff uses it: a candidate for either side.
const LAYOUT_HELP: &str = "A layout file (TOML) describing a convention, e.g. a hand-written JAX \
port's names and transforms (format in README.md). Repeat to load several. Each side is read in \
the convention its names and shapes fit, among the built-ins and these; a side read in a layout \
makes the conversion between the two sides' conventions expected";

/// Runs `orient diff`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (path_a, path_b) = (args.a.resolve(&args.hub)?, args.b.resolve(&args.hub)?);
    let a = args
        .layout
        .open(&path_a)
        .with_context(|| format!("cannot open A ({})", path_a.display()))?;
    let b = args
        .layout
        .open(&path_b)
        .with_context(|| format!("cannot open B ({})", path_b.display()))?;
    orient::output::notes::warn(a.notes());
    orient::output::notes::warn(b.notes());
    a.check_decodable().context("cannot compare A")?;
    b.check_decodable().context("cannot compare B")?;
    let layouts = args.layout.load_for(&[&a, &b])?;
    let names: Vec<&str> = convention::builtins()
        .iter()
        .chain(&layouts)
        .map(|c| c.name.as_str())
        .collect();
    let expect = args
        .expect_conversion
        .iter()
        .map(|text| Conversion::parse(text, &names))
        .collect::<Result<Vec<_>, _>>()
        .context("invalid --expect-conversion")?;
    let opts = DiffOptions {
        full: args.full,
        expect,
        layouts,
    };

    let bar = orient::output::stdio::stderr_is_terminal().then(orient::output::diff::progress_bar);
    let progress = |r: &diff::PairResult, total: usize| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.inc(1);
            bar.set_message(r.a.name.clone());
        }
    };
    let report = diff::diff(&a, &b, &opts, &progress).context("cannot compare A and B")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Verdicts computed from a file that changed underneath mean nothing.
    a.check_intact()
        .with_context(|| format!("cannot compare A ({})", path_a.display()))?;
    b.check_intact()
        .with_context(|| format!("cannot compare B ({})", path_b.display()))?;

    let mut out = orient::output::stdout();
    if args.json {
        orient::output::diff::render_json(&report, args.only_differences, &mut out)?;
    } else {
        orient::output::diff::render_table(&report, args.only_differences, &mut out)?;
    }
    out.flush()?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
