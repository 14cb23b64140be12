//! The `orient` command-line tool: a flat dispatch to one file per subcommand.
//!
//! Errors are reported here, once, with their context chain. Exit codes:
//! 0 success, 1 a check failed (`inspect --check`, `verify`, `diff`), 2 an error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// Look inside ML checkpoints, put weights in one canonical orientation, and prove
/// that a converted model still computes the same logits.
#[derive(Debug, Parser)]
#[command(name = "orient", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every tensor of a checkpoint with its layout convention, expected shape and status.
    Inspect(commands::inspect::Args),
    /// Rewrite a checkpoint into the canonical HF layout (or into Flax), streaming.
    Convert(commands::convert::Args),
    /// Write a random-weights checkpoint for a config, in HF layout.
    Synth(commands::synth::Args),
    /// Run the CPU forward pass and print the top next-token logits.
    Run(commands::run::Args),
    /// Compare logits and per-layer hidden states against a reference or another model.
    Verify(commands::verify::Args),
    /// Compare two checkpoints tensor by tensor and name the transform between them.
    Diff(commands::diff::Args),
    /// The whole story on a bundled tiny Qwen2 in Flax layout: inspect, convert, verify.
    Demo(commands::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Diff(args) => commands::diff::run(args),
        Command::Demo(args) => commands::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {}", render_error(&err));
            }
            ExitCode::from(2)
        }
    }
}

/// The context chain joined with `: `, skipping a cause whose text its parent already
/// shows (library errors print their source inline, so `{:#}` would repeat it).
fn render_error(err: &anyhow::Error) -> String {
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
    }
    msg
}

/// A closed stdout (`orient inspect … | head`) is not an error worth reporting.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn error_chain_is_not_repeated() {
        let inner = anyhow::anyhow!("tensor `w`: truncated");
        let err = inner
            .context("model.safetensors: tensor `w`: truncated")
            .context("cannot inspect m");
        assert_eq!(
            render_error(&err),
            "cannot inspect m: model.safetensors: tensor `w`: truncated"
        );
        let err = anyhow::anyhow!("disk full").context("writing out");
        assert_eq!(render_error(&err), "writing out: disk full");
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
