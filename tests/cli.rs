//! The CLI around the commands: shell completions and `--version`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command as StdCommand;

use assert_cmd::Command;

fn orient(args: &[&str]) -> String {
    let out = Command::cargo_bin("orient")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `orient --help` lists.
fn subcommands() -> Vec<String> {
    let help = orient(&["--help"]);
    let list = help
        .split("Commands:")
        .nth(1)
        .and_then(|s| s.split("Options:").next())
        .unwrap();
    // Entries start two spaces in; wrapped descriptions are indented further.
    list.lines()
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_mention_every_subcommand() {
    let commands = subcommands();
    for c in [
        "inspect",
        "convert",
        "lint",
        "completions",
        "diff",
        "verify",
    ] {
        assert!(commands.iter().any(|x| x == c), "{commands:?}");
    }
    let bash = orient(&["completions", "bash"]);
    assert!(bash.contains("complete -F _orient"), "{bash}");
    for c in &commands {
        assert!(
            bash.contains(&format!(
                "orient,{c})\n                cmd=\"orient__subcmd__{c}\""
            )),
            "bash lacks {c}"
        );
    }
    // Flags of the new commands are completed too.
    assert!(bash.contains("--revision") && bash.contains("--json"));
    for shell in ["zsh", "fish"] {
        let script = orient(&["completions", shell]);
        for c in &commands {
            let entry = match shell {
                "zsh" => format!("'{c}:"),
                _ => format!("-a \"{c}\""),
            };
            assert!(script.contains(&entry), "{shell} lacks {entry}");
        }
    }
    let out = Command::cargo_bin("orient")
        .unwrap()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn git(args: &[&str]) -> Option<String> {
    let out = StdCommand::new("git")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_commit_when_built_in_a_git_tree() {
    let version = orient(&["--version"]);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    let in_tree = git(&["rev-parse", "--show-toplevel"])
        .and_then(|t| Path::new(&t).canonicalize().ok())
        .is_some_and(|t| t == manifest);
    let pkg = env!("CARGO_PKG_VERSION");
    if in_tree {
        let head = git(&["rev-parse", "HEAD"]).unwrap();
        let commit = version
            .trim()
            .strip_prefix(&format!("orient {pkg} ("))
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no commit in {version:?}"));
        assert!(
            commit.len() >= 7 && head.starts_with(commit),
            "{commit} vs {head}"
        );
    } else {
        // A tarball build: the version alone.
        assert_eq!(version, format!("orient {pkg}\n"));
    }
}
