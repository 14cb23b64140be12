//! `orient diff` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `orient diff`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `orient diff`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`orient diff` is not implemented yet")
}
