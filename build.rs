//! Sets `ORIENT_VERSION` for `orient --version`: the package version and, when built from a git
//! checkout of this repository, the commit (`0.1.0 (abc1234)`). Built from a tarball, or with no
//! `git` on the PATH, it is the package version alone: nothing here can fail the build.

// Cargo reads a build script's instructions from its stdout.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let dir = Path::new(&dir);
    // Only this repository's own commit: a tarball unpacked inside some other git checkout
    // must not claim that checkout's commit.
    let ours = git(dir, &["rev-parse", "--show-toplevel"])
        .zip(dir.canonicalize().ok())
        .is_some_and(|(top, here)| Path::new(&top).canonicalize().ok() == Some(here));
    let commit = ours
        .then(|| git(dir, &["rev-parse", "--short", "HEAD"]))
        .flatten();
    match &commit {
        Some(c) => println!("cargo:rustc-env=ORIENT_VERSION={version} ({c})"),
        None => println!("cargo:rustc-env=ORIENT_VERSION={version}"),
    }
    // Re-run when HEAD moves (a commit, a checkout); a worktree's HEAD lives in its own git dir.
    if ours {
        for what in ["HEAD", "packed-refs"] {
            if let Some(p) = git(dir, &["rev-parse", "--git-path", what]) {
                println!("cargo:rerun-if-changed={}", dir.join(p).display());
            }
        }
        if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            if let Some(p) = git(dir, &["rev-parse", "--git-path", &head_ref]) {
                println!("cargo:rerun-if-changed={}", dir.join(p).display());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
