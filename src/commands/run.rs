//! `orient run` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `orient run`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `orient run`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`orient run` is not implemented yet")
}
