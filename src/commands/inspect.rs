//! `orient inspect PATH`: list every tensor with its layout convention, expected shape
//! and status. Reads headers only, unless `--stats` asks for the data.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use orient::output;
use orient_inspect::report::{self, Options};

/// Arguments of `orient inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `.safetensors` file, a `model.safetensors.index.json`, or a model folder
    /// (with `config.json` for roles and expected shapes).
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub path: super::ModelPath,
    /// Print the report as JSON (schema in README.md) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only list tensors whose name matches this glob, e.g. `*self_attn*`. The summary keeps
    /// the whole checkpoint's totals and statuses, and adds a `filtered:` line with the
    /// statuses of the listed rows (what --check judges).
    #[arg(long, value_name = "GLOB")]
    pub filter: Option<String>,
    /// Collapse `layers.{0..N}` into one row per tensor kind, with the layers it covers.
    #[arg(long)]
    pub group_layers: bool,
    /// Read the data: per-tensor min/max/mean/std and NaN/Inf counts (in parallel).
    #[arg(long)]
    pub stats: bool,
    /// Exit with status 1 unless every listed tensor's status is `ok`. With --filter, only
    /// the rows the filter keeps are judged (the `filtered:` line of the summary).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub layout: super::LayoutArgs,
    #[command(flatten)]
    pub hub: super::HubArgs,
}

/// Runs `orient inspect`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let filter = args
        .filter
        .as_deref()
        .map(report::compile_filter)
        .transpose()?;
    let path = args.path.resolve(&args.hub)?;
    let ck = args
        .layout
        .open(&path)
        .with_context(|| format!("cannot inspect {}", path.display()))?;
    let opts = Options {
        filter,
        group_layers: args.group_layers,
        stats: args.stats,
        layouts: args.layout.load_for(&[&ck])?,
    };
    let total = ck.tensors().iter().map(|t| t.nbytes() as u64).sum();
    let progress = output::progress::BytesProgress::new(args.stats, total, "reading");
    let report = report::inspect(&ck, &opts, &|n| progress.inc(n))
        .with_context(|| format!("cannot inspect {}", path.display()))?;
    progress.finish();
    // --stats read the data: none of it counts if a file changed meanwhile.
    ck.check_intact()
        .with_context(|| format!("cannot inspect {}", path.display()))?;
    // One write per buffer, not per line: a 7B report is ~350 lines.
    let mut out = std::io::BufWriter::new(output::stdout());
    if args.json {
        output::inspect::json(&report, &mut out)?;
    } else {
        output::inspect::table(&report, &mut out, args.stats)?;
    }
    out.flush()?;
    Ok(if args.check && !report.all_ok() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
