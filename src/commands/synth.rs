//! `orient synth CONFIG_OR_DIR OUT`: a random-weights checkpoint in HF layout for any
//! config the catalogue knows, deterministic per seed, streamed and sharded. Lets tests
//! and benchmarks build 7B-shaped models without a download.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use orient::output;
use orient_convert::destination;
use orient_convert::synth::{self, SynthOptions};
use orient_convert::writer::parse_size;
use orient_inspect::checkpoint::MAX_JSON_FILE_LEN;
use orient_inspect::{parse_config, Arch, ConfigOutcome, Dtype};

/// Weight dtype of the synthesized model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthDtype {
    /// float32.
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

/// Arguments of `orient synth`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A `config.json`, or a folder containing one.
    pub config: PathBuf,
    /// Destination folder (must not exist unless --force; never the config's folder).
    pub out: PathBuf,
    /// Weight dtype.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: SynthDtype,
    /// Seed of the generator: same seed, same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Split the output into shards of at most SIZE (default 5GB).
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<String>,
    /// How the output is written.
    #[command(flatten)]
    pub write: super::convert::WriteArgs,
}

/// Runs `orient synth`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = if args.config.is_dir() {
        args.config.join("config.json")
    } else {
        args.config.clone()
    };
    // Regular files only: a FIFO named as the config would block forever.
    let text = orient_inspect::file::read_regular(&path, MAX_JSON_FILE_LEN)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let cfg = match parse_config(&text).with_context(|| format!("{}", path.display()))? {
        ConfigOutcome::Known(cfg) => cfg,
        ConfigOutcome::UnknownArch { model_type, .. } => anyhow::bail!(
            "{}: the layout catalogue has no entry for model_type `{}` (known: {})",
            path.display(),
            model_type.unwrap_or_default(),
            Arch::names().join(", ")
        ),
    };
    let opts = SynthOptions {
        dtype: match args.dtype {
            SynthDtype::F32 => Dtype::F32,
            SynthDtype::Bf16 => Dtype::BF16,
            SynthDtype::F16 => Dtype::F16,
        },
        seed: args.seed,
        max_shard_size: args.max_shard_size.as_deref().map(parse_size).transpose()?,
        force: args.write.force,
        sync: !args.write.no_fsync,
    };
    // The config (or its folder) is this command's source: never replace it.
    let target = destination::check_destination(&args.config, &args.out, args.write.force)?;
    let list = synth::tensors(&cfg, opts.dtype)?;
    // The config resolver knows more architectures than synth's tensor list does yet: an
    // empty list would be an empty "checkpoint".
    if list.is_empty() {
        anyhow::bail!(
            "{}: the catalogue lists no tensor for model_type `{}`",
            path.display(),
            cfg.model_type
        );
    }
    let total: u64 = list.iter().map(|(t, _)| t.nbytes).sum();
    super::convert::prepare_write(&target)?;
    let progress = output::progress::BytesProgress::new(!args.write.quiet, total, "synthesizing");
    let start = Instant::now();
    let result = synth::synthesize(&cfg, &text, &args.out, &opts, &mut |n| progress.inc(n));
    progress.finish();
    let outcome = result.with_context(|| {
        format!(
            "synthesizing {} failed; nothing was written",
            args.out.display()
        )
    })?;
    if !args.write.quiet {
        let mut out = output::stdout();
        output::convert::synth_summary(
            &cfg.model_type,
            &outcome,
            start.elapsed().as_secs_f64(),
            &mut out,
        )?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
