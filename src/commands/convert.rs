//! `orient convert` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `orient convert`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `orient convert`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`orient convert` is not implemented yet")
}
