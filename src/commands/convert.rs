//! `orient convert SRC DST`: rewrite a checkpoint from one layout convention into another
//! (the canonical HF layout by default, Flax, or a `--layout FILE` convention), streaming,
//! from the layout catalogue. Refuses to guess, never writes into the source, and leaves
//! nothing behind on failure.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use orient::output;
use orient_convert::convert::{self, WriteOptions};
use orient_convert::destination::{self, Destination};
use orient_convert::parts::{self, Job, PartSpec};
use orient_convert::plan::{self, From, Options};
use orient_convert::writer::parse_size;
use orient_inspect::{Checkpoint, Dtype};

/// Output dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    /// Keep every tensor's dtype.
    Keep,
    /// float32.
    F32,
    /// bfloat16 (round to nearest even).
    Bf16,
    /// float16 (overflows and flushes are counted and reported).
    F16,
}

/// Arguments of `orient convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source checkpoint: a model folder, a `.safetensors` file or an index.
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub src: super::ModelPath,
    /// Destination folder (must not exist unless --force).
    pub dst: PathBuf,
    /// Target layout convention: `hf` (what transformers' PyTorch classes load), `flax`
    /// (transformers 4.x Flax / JAX), or the name of a `--layout FILE` convention.
    #[arg(long, value_name = "NAME", default_value = "hf")]
    pub to: String,
    /// Source layout convention: `auto` detects it from names and non-square shapes and
    /// refuses mixed sources; a name (`hf`, `flax`, a `--layout FILE` convention's) reads
    /// every tensor in that convention and overrides detection (which is still reported).
    #[arg(long, value_name = "NAME", default_value = "auto")]
    pub from: String,
    /// Output dtype for float tensors.
    #[arg(long, value_enum, default_value = "keep")]
    pub dtype: DtypeArg,
    /// Split the output into shards of at most SIZE (e.g. 500MB, 2GiB, 1000000);
    /// default 5GB, as transformers.
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<String>,
    /// Print the plan (one row per output tensor, with the chain that makes it) and write
    /// nothing. With --part, the shards and tensors that part writes.
    #[arg(long)]
    pub dry_run: bool,
    /// Convert only part I of N (1-based) into the staging area `DST.orient-parts/`, for
    /// parts run in parallel, on any machines that see the same filesystem; then
    /// `--finish`. Every part gets whole output shards, balanced by bytes (lower
    /// --max-shard-size for more shards than parts).
    #[arg(long, value_name = "I/N", conflicts_with = "finish")]
    pub part: Option<String>,
    /// Check that every part of a `--part` conversion (same SRC, DST and options) is
    /// present and whole, then write the index and make DST appear at once.
    #[arg(long)]
    pub finish: bool,
    #[command(flatten)]
    pub hub: super::HubArgs,
    /// How the output is written.
    #[command(flatten)]
    pub write: WriteArgs,
    /// User layout conventions.
    #[command(flatten)]
    pub layouts: super::LayoutArgs,
}

/// Flags shared by the commands that write a checkpoint (`convert`, `synth`).
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// Replace an existing destination that holds a previous checkpoint (and nothing
    /// else: other files are listed and refused).
    #[arg(long)]
    pub force: bool,
    /// No progress bar and no summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Skip the fsync of the output before the final rename (faster; not crash-safe).
    #[arg(long)]
    pub no_fsync: bool,
}

/// Before a command writes `dst`: a Ctrl-C or SIGTERM from now on removes the staging
/// folder, and staging folders that dead runs left beside `dst` are removed (and named
/// on stderr).
pub fn prepare_write(dst: &Destination) -> anyhow::Result<()> {
    orient::interrupt::install().context("cannot watch for Ctrl-C and SIGTERM")?;
    let found = destination::sweep_stale(dst)?;
    // Notes only: a closed stderr must not stop the write.
    let _ = output::staging::stale(&found, &dst.given, &mut output::stderr());
    Ok(())
}

/// Runs `orient convert`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let max_shard_size = args.max_shard_size.as_deref().map(parse_size).transpose()?;
    let part = args.part.as_deref().map(PartSpec::parse).transpose()?;
    let src = args.src.resolve(&args.hub)?;
    let target = destination::check_destination(&src, &args.dst, args.write.force)?;
    let ckpt = args
        .layouts
        .open(&src)
        .with_context(|| format!("cannot read {}", src.display()))?;
    output::notes::warn(ckpt.notes());
    ckpt.check_decodable()
        .with_context(|| format!("cannot convert {}", src.display()))?;
    let layouts = args.layouts.load_for(&[&ckpt])?;
    let opts = Options {
        to: args.to.clone(),
        from: match args.from.as_str() {
            "auto" => From::Auto,
            name => From::Explicit(name.to_string()),
        },
        layouts,
        dtype: match args.dtype {
            DtypeArg::Keep => None,
            DtypeArg::F32 => Some(Dtype::F32),
            DtypeArg::Bf16 => Some(Dtype::BF16),
            DtypeArg::F16 => Some(Dtype::F16),
        },
    };
    // Some plan errors name only the tensor: say which checkpoint.
    let plan =
        plan::plan(&ckpt, &opts).with_context(|| format!("cannot convert {}", src.display()))?;
    let write_opts = WriteOptions {
        max_shard_size,
        force: args.write.force,
        sync: !args.write.no_fsync,
        ..WriteOptions::default()
    };
    let mut out = output::stdout();
    if args.dry_run {
        match part {
            Some(spec) => {
                let layout = parts::layout(&plan, &write_opts)?;
                let pp = parts::part_plan(&layout, spec);
                output::convert::part_plan(&plan, &pp, &src, &args.dst, &mut out)?;
            }
            None => output::convert::plan_table(&plan, &src, &args.dst, &mut out)?,
        }
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(spec) = part {
        return run_part(&args, &ckpt, &plan, &src, &write_opts, spec);
    }
    if args.finish {
        return run_finish(&args, &ckpt, &plan, &src, &write_opts);
    }
    if !args.write.quiet {
        output::convert::header(&plan, &src, &args.dst, &mut out)?;
        out.flush()?;
    }
    prepare_write(&target)?;
    let progress = output::progress::BytesProgress::new(
        !args.write.quiet,
        plan.output_bytes().unwrap_or(0),
        "converting",
    );
    let start = Instant::now();
    let result = convert::write(&ckpt, &plan, &args.dst, &write_opts, &mut |n| {
        progress.inc(n)
    });
    progress.finish();
    let outcome = result.with_context(|| {
        format!(
            "converting {} to {} failed; nothing was written",
            src.display(),
            args.dst.display()
        )
    })?;
    let seconds = start.elapsed().as_secs_f64();
    if !args.write.quiet {
        output::convert::summary(&plan, &outcome, seconds, &mut out)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The job every part and `--finish` must agree on: the source, the options as given,
/// the plan, this build of orient.
fn job(
    args: &Args,
    ckpt: &Checkpoint,
    plan: &plan::Plan,
    write_opts: &WriteOptions,
    parts: usize,
) -> anyhow::Result<Job> {
    let layout = parts::layout(plan, write_opts)?;
    let mut options = BTreeMap::new();
    options.insert("--to".to_string(), args.to.clone());
    options.insert("--from".to_string(), args.from.clone());
    options.insert(
        "--dtype".to_string(),
        format!("{:?}", args.dtype).to_lowercase(),
    );
    options.insert(
        "--max-shard-size".to_string(),
        args.max_shard_size.clone().unwrap_or_else(|| "5GB".into()),
    );
    if !args.layouts.layouts.is_empty() {
        let files: Vec<String> = args
            .layouts
            .layouts
            .iter()
            // File names only: nodes may see the same file under other paths (the
            // plan hash catches a different content).
            .map(|p| {
                p.file_name()
                    .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
            })
            .collect();
        options.insert("--layout".to_string(), files.join(", "));
    }
    let producer = format!("orient {}", env!("ORIENT_VERSION"));
    Ok(Job::new(ckpt, plan, &layout, options, &producer, parts)?)
}

/// `--part I/N`: one part into the staging area.
fn run_part(
    args: &Args,
    ckpt: &Checkpoint,
    plan: &plan::Plan,
    src: &std::path::Path,
    write_opts: &WriteOptions,
    spec: PartSpec,
) -> anyhow::Result<ExitCode> {
    let job = job(args, ckpt, plan, write_opts, spec.count)?;
    let layout = parts::layout(plan, write_opts)?;
    let pp = parts::part_plan(&layout, spec);
    let mut out = output::stdout();
    if !args.write.quiet {
        output::convert::header(plan, src, &args.dst, &mut out)?;
        out.flush()?;
    }
    orient::interrupt::install().context("cannot watch for Ctrl-C and SIGTERM")?;
    let found = parts::sweep_part(&args.dst, spec)?;
    let _ = output::staging::stale(&found, &args.dst, &mut output::stderr());
    let bytes: u64 = pp.shards.iter().map(|s| s.1).sum();
    let progress = output::progress::BytesProgress::new(!args.write.quiet, bytes, "converting");
    let start = Instant::now();
    let result = parts::write_part(ckpt, plan, &args.dst, write_opts, &job, spec, &mut |n| {
        progress.inc(n)
    });
    progress.finish();
    let outcome = result.with_context(|| {
        format!(
            "part {spec} of converting {} to {} failed; nothing of it was kept",
            src.display(),
            args.dst.display()
        )
    })?;
    if !args.write.quiet {
        let seconds = start.elapsed().as_secs_f64();
        output::convert::part_summary(&outcome, &pp, seconds, &mut out)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--finish`: check the parts, put the output together.
fn run_finish(
    args: &Args,
    ckpt: &Checkpoint,
    plan: &plan::Plan,
    src: &std::path::Path,
    write_opts: &WriteOptions,
) -> anyhow::Result<ExitCode> {
    let job = job(args, ckpt, plan, write_opts, 0)?;
    let layout = parts::layout(plan, write_opts)?;
    let mut out = output::stdout();
    if !args.write.quiet {
        output::convert::header(plan, src, &args.dst, &mut out)?;
        out.flush()?;
    }
    let target = Destination::resolve(&args.dst)?;
    prepare_write(&target)?;
    let bytes: u64 = layout.shards.iter().map(|s| s.file_len()).sum();
    let progress = output::progress::BytesProgress::new(!args.write.quiet, bytes, "verifying");
    let start = Instant::now();
    let result = parts::finish(ckpt, plan, &args.dst, write_opts, &job, &|n| {
        progress.inc(n)
    });
    progress.finish();
    let done = result.with_context(|| {
        format!(
            "cannot finish converting {} to {}",
            src.display(),
            args.dst.display()
        )
    })?;
    if !args.write.quiet {
        let seconds = start.elapsed().as_secs_f64();
        output::convert::finish_summary(plan, &done, seconds, &mut out)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}
