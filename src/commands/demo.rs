//! `orient demo` (not implemented yet).

use std::process::ExitCode;

/// Arguments of `orient demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `orient demo`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`orient demo` is not implemented yet")
}
