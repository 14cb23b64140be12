//! The `orient` command-line tool: a flat dispatch to one file per subcommand.
//!
//! Errors are reported here, once, with their context chain. Exit codes:
//! 0 success, 1 a check failed (`inspect --check`, `verify`, `diff`), 2 an error.
//!
//! A closed stdout is not an error at all: the commands print through
//! [`orient::output::stdout`], which stops printing and lets the work and its exit code
//! stand (see [`orient::output::stdio`]). So every error that reaches here is real, even
//! one that wraps an `io::ErrorKind::BrokenPipe` from somewhere else, and exits 2. The
//! message itself is written with a fallible write whose failure is ignored: a closed
//! stderr must not turn exit 2 into a panic.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// Look inside ML checkpoints, put weights in one canonical orientation, and prove
/// that a converted model still computes the same logits.
#[derive(Debug, Parser)]
#[command(name = "orient", version = env!("ORIENT_VERSION"), about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every tensor of a checkpoint with its layout convention, expected shape and status.
    Inspect(commands::inspect::Args),
    /// Rewrite a checkpoint from one layout convention into another (HF, Flax, a layout file's).
    Convert(commands::convert::Args),
    /// Write a random-weights checkpoint for a config, in HF layout.
    Synth(commands::synth::Args),
    /// Run the CPU forward pass and print the top next-token logits.
    Run(commands::run::Args),
    /// Compare logits and per-layer hidden states against a reference or another model.
    Verify(commands::verify::Args),
    /// Continue a prompt greedily (KV cache), printing text as it comes; `--against` compares two models.
    Generate(commands::generate::Args),
    /// Compare two checkpoints tensor by tensor and name the transform between them.
    Diff(commands::diff::Args),
    /// The whole story on a bundled tiny Qwen2 in Flax layout: inspect, convert, verify.
    Demo(commands::demo::Args),
    /// Check weights against config: tying, norm storage, shapes, dtypes, FP8 scales, duplicates.
    Lint(commands::lint::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(commands::completions::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A misspelt kernel choice is an error, not a silent fallback.
    if let Err(e) = orient::model::amx::Kernels::from_env() {
        return finish(Err(anyhow::anyhow!(e)), &mut orient::output::stderr());
    }
    let result = match cli.command {
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Synth(args) => commands::synth::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Diff(args) => commands::diff::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Lint(args) => commands::lint::run(args),
        Command::Completions(args) => commands::completions::run(args),
    };
    finish(result, &mut orient::output::stderr())
}

/// The exit code of a command's outcome; an error is written to `stderr` (escaped, for a
/// terminal), and a failure to write it is ignored.
fn finish(result: anyhow::Result<ExitCode>, stderr: &mut dyn Write) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            let message = render_error(&err);
            let message = orient::output::escape::escape_text(&message);
            let _ = writeln!(stderr, "error: {message}");
            let _ = stderr.flush();
            ExitCode::from(2)
        }
    }
}

/// The context chain joined with `: `. No error prints its source inline, so nothing repeats.
fn render_error(err: &anyhow::Error) -> String {
    err.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn error_chain_is_not_repeated() {
        // A library error names its file; its source says what is wrong, once.
        let source = orient_inspect::HeaderError::TooShort { len: 3 };
        let inner = orient_inspect::Error::Header {
            path: "m/model.safetensors".into(),
            source,
        };
        let err = anyhow::Error::new(inner).context("cannot inspect m");
        assert_eq!(
            render_error(&err),
            format!(
                "cannot inspect m: m/model.safetensors: {}",
                orient_inspect::HeaderError::TooShort { len: 3 }
            )
        );
        let err = anyhow::anyhow!("disk full").context("writing out");
        assert_eq!(render_error(&err), "writing out: disk full");
    }

    /// Writes nothing, always failing: a closed stderr.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_broken_pipe_inside_the_work_is_an_error_not_a_quiet_success() {
        // E.g. the converter's writer thread gone: not stdout's closed pipe.
        let pipe = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the writer thread stopped");
        let err = anyhow::Error::new(pipe).context("writing shard 1");
        let mut stderr = Vec::new();
        assert_eq!(finish(Err(err), &mut stderr), ExitCode::from(2));
        let text = String::from_utf8(stderr).unwrap_or_default();
        assert_eq!(text, "error: writing shard 1: the writer thread stopped\n");
        assert_eq!(
            finish(Ok(ExitCode::from(1)), &mut Closed),
            ExitCode::from(1)
        );
    }

    #[test]
    fn an_error_is_escaped_and_a_closed_stderr_still_exits_2() {
        let err =
            anyhow::anyhow!("tensor `a\x1b]0;pwned\x07\u{202e}b`: unknown dtype\nsecond line");
        let mut stderr = Vec::new();
        assert_eq!(finish(Err(err), &mut stderr), ExitCode::from(2));
        assert_eq!(
            String::from_utf8(stderr).unwrap_or_default(),
            "error: tensor `a\\x1b]0;pwned\\x07\\u{202e}b`: unknown dtype\nsecond line\n"
        );
        let err = anyhow::anyhow!("no such file");
        assert_eq!(finish(Err(err), &mut Closed), ExitCode::from(2));
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
