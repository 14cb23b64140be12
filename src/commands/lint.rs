//! `orient lint MODEL`: consistency checks between the weights and the config, each finding
//! naming the tensors. The checks are [`orient_inspect::lint`]; this file parses flags and hands
//! the report to [`orient::output::lint`].

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use orient::output;
use orient_inspect::lint::{self, LintOptions, PlannedConversion};

/// Arguments of `orient lint`.
///
/// Checks: tie_word_embeddings against lm_head (absent, present, equal to the embedding or
/// not); norm weights stored as `w` or `1 + w` against the architecture's forward; q/k/v/o shapes
/// against the head counts and head_dim, MLP shapes against intermediate_size (naming the config
/// field the weights disagree with); float dtypes against `dtype`/`torch_dtype`; orient provenance
/// (converted already, about to be converted again the same way); FP8 weights and their
/// scales; the same bytes under two names. Exit 0 without findings, 1 with, 2 on an error.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `.safetensors` file, a `model.safetensors.index.json`, or a model folder (with
    /// `config.json`, which most checks need).
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub model: super::ModelPath,
    /// Print the report as JSON (schema in README.md) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The conversion you are about to run (`orient convert --to CONV`): a checkpoint that orient
    /// already converted to CONV is a finding.
    #[arg(long, value_name = "CONV")]
    pub to: Option<String>,
    /// With --to: the source layout you would force (`orient convert --from CONV`).
    #[arg(long, value_name = "CONV", requires = "to")]
    pub from: Option<String>,
    #[command(flatten)]
    pub layout: super::LayoutArgs,
    #[command(flatten)]
    pub hub: super::HubArgs,
}

/// Runs `orient lint`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = args.model.resolve(&args.hub)?;
    let ck = args
        .layout
        .open(&path)
        .with_context(|| format!("cannot lint {}", path.display()))?;
    output::notes::warn(ck.notes());
    let opts = LintOptions {
        layouts: args.layout.load_for(&[&ck])?,
        planned: args.to.map(|to| PlannedConversion {
            from: args.from,
            to,
        }),
    };
    let report =
        lint::lint(&ck, &opts).with_context(|| format!("cannot lint {}", path.display()))?;
    let mut out = std::io::BufWriter::new(output::stdout());
    if args.json {
        output::lint::json(&report, &mut out)?;
    } else {
        output::lint::table(&report, &mut out)?;
    }
    out.flush()?;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
