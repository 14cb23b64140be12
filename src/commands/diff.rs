//! `orient diff A B`: compare two checkpoints tensor by tensor and name the transform between
//! each pair. The comparison is [`orient_inspect::diff`]; this file parses flags, shows progress
//! on a terminal, and hands the report to [`orient::output::diff`].

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use orient_inspect::diff::{self, Conversion, DiffOptions};
use orient_inspect::Checkpoint;

/// A conversion that explains differences (the `--expect-conversion` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    /// A is HF/PyTorch, B is Flax: kernels the catalogue stores transposed must be exactly
    /// transposed (a square kernel left untransposed fails), everything else identical.
    HfToFlax,
    /// A is Flax, B is HF/PyTorch (the mirror of hf-to-flax).
    FlaxToHf,
    /// Any 2-D pair may be transposed, whatever the names say.
    Transpose,
    /// q_proj/k_proj weights and biases may be RoPE-permuted per head (GGUF / Meta layout), in
    /// either direction.
    RopePermute,
    /// The dtype may have been cast: pairs equal within one ulp of the narrower dtype pass
    /// (also combined with an expected transpose or permutation).
    Cast,
}

impl From<Expect> for Conversion {
    fn from(e: Expect) -> Conversion {
        match e {
            Expect::HfToFlax => Conversion::HfToFlax,
            Expect::FlaxToHf => Conversion::FlaxToHf,
            Expect::Transpose => Conversion::Transpose,
            Expect::RopePermute => Conversion::RopePermute,
            Expect::Cast => Conversion::Cast,
        }
    }
}

/// Arguments of `orient diff`.
///
/// Verdicts, first match wins: identical, transposed, rope-permuted, rounded, scaled (B = c·A),
/// offset (B = A + c), different (max |Δ|, max relative Δ, cosine). Exit status: 0 when every
/// pair is identical or explained by `--expect-conversion` and no tensor is missing on one side
/// (the catalogue may allow some, e.g. lm_head under tied embeddings); 1 otherwise, including
/// pairs that could not be compared; 2 when a checkpoint cannot be opened.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// First checkpoint: a .safetensors file, a model.safetensors.index.json, or a folder.
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub a: super::ModelPath,
    /// Second checkpoint, in the same or another convention (HF or Flax names); a path or a
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
    /// `--expect-conversion hf-to-flax,cast`. Without it only `identical` pairs pass.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub expect_conversion: Vec<Expect>,
    #[command(flatten)]
    pub hub: super::HubArgs,
}

/// Runs `orient diff`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (path_a, path_b) = (args.a.resolve(&args.hub)?, args.b.resolve(&args.hub)?);
    let a = Checkpoint::open(&path_a)
        .with_context(|| format!("cannot open A ({})", path_a.display()))?;
    let b = Checkpoint::open(&path_b)
        .with_context(|| format!("cannot open B ({})", path_b.display()))?;
    orient::output::notes::warn(a.notes());
    orient::output::notes::warn(b.notes());
    let mut expect: Vec<Conversion> = args.expect_conversion.iter().map(|&e| e.into()).collect();
    expect.dedup();
    let opts = DiffOptions {
        full: args.full,
        expect,
    };

    let bar = orient::output::stdio::stderr_is_terminal().then(orient::output::diff::progress_bar);
    let progress = |r: &diff::PairResult, total: usize| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.inc(1);
            bar.set_message(r.a.name.clone());
        }
    };
    let report = diff::diff(&a, &b, &opts, &progress);
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
