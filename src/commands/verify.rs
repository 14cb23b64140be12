//! `orient verify` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `orient verify`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `orient verify`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`orient verify` is not implemented yet")
}
