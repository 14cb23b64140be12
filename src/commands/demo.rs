//! `orient demo`: the whole story on the bundled tiny Qwen2 in Flax layout — inspect it,
//! convert it to HF, and verify the result against transformers' own logits.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Instant;

use anyhow::Context;
use orient::output;
use orient_convert::convert::{self, WriteOptions};
use orient_convert::plan;
use orient_inspect::report::{self, Options};
use orient_inspect::Checkpoint;

use super::verify;

/// Arguments of `orient demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder holding the `qwen2-flax/` and `qwen2/` fixtures (default: the repository's
    /// `tests/fixtures`, found from where orient was built).
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
}

/// Runs `orient demo`: exit 0 when the converted model matches the reference, 1 if not.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let fixtures = args.fixtures.unwrap_or_else(|| {
        let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        // Shown relative to the working directory when it is inside the repository,
        // which is where `cargo run -- demo` runs.
        std::env::current_dir()
            .ok()
            .and_then(|cwd| bundled.strip_prefix(cwd).ok().map(PathBuf::from))
            .unwrap_or(bundled)
    });
    let flax = fixtures.join("qwen2-flax");
    let reference = fixtures.join("qwen2/reference.safetensors");
    let mut out = output::stdout();

    output::demo::step(&mut out, 1, 3, &format!("inspect {}", flax.display()))?;
    output::demo::say(
        &mut out,
        "A tiny Qwen2 saved by a JAX/Flax pipeline: `kernel` names, [in, out] matrices. \
         Square q/o projections look the same either way round.",
    )?;
    let ckpt = Checkpoint::open(&flax).with_context(|| format!("opening {}", flax.display()))?;
    let opts = Options {
        group_layers: true,
        ..Options::default()
    };
    let inspected = report::inspect(&ckpt, &opts, &|_| {})?;
    output::inspect::table(&inspected, &mut out, false)?;

    output::demo::step(
        &mut out,
        2,
        3,
        "convert to HF layout (in a temporary folder)",
    )?;
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let converted = tmp.path().join("qwen2-hf");
    let plan = plan::plan(&ckpt, &plan::Options::default())?;
    output::convert::header(&plan, &flax, &converted, &mut out)?;
    let start = Instant::now();
    let write_opts = WriteOptions {
        sync: false,
        ..WriteOptions::default()
    };
    let outcome = convert::write(&ckpt, &plan, &converted, &write_opts, &mut |_| {})
        .with_context(|| format!("converting {}", flax.display()))?;
    output::convert::summary(&plan, &outcome, start.elapsed().as_secs_f64(), &mut out)?;

    output::demo::step(
        &mut out,
        3,
        3,
        &format!(
            "verify against transformers' logits ({})",
            reference.display()
        ),
    )?;
    let report = verify::verify(&verify::Args {
        model: converted.into(),
        reference: Some(reference),
        against: None,
        tokens: None,
        prompt: None,
        generate: None,
        atol: 1e-4,
        rtol: 1e-4,
        json: false,
        layout: Default::default(),
        hub: Default::default(),
    })?;
    output::verify::render(&report, false, &mut out)?;
    out.flush()?;
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
