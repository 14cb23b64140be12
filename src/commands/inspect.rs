//! `orient inspect` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `orient inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `orient inspect`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`orient inspect` is not implemented yet")
}
