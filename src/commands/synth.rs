//! `orient synth` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `orient synth`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `orient synth`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`orient synth` is not implemented yet")
}
