//! Exit codes that hold whoever reads the output: a closed stdout stops the printing but
//! not the work, and its verdict (0, 1 or 2) stands; a closed stderr never turns an error
//! into a panic; and under `inspect --filter`, `--check` judges the rows the summary says.
#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde_json::Value;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn orient() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("orient"))
}

/// The write end of a pipe whose read end is already closed: the first write to it
/// fails with EPIPE (SIGPIPE, were it not ignored).
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

/// Runs orient with stdout connected to a closed pipe; returns the status and stderr.
fn with_closed_stdout(args: &[&str]) -> (ExitStatus, String) {
    let out = orient()
        .args(args)
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (out.status, String::from_utf8(out.stderr).unwrap())
}

/// Runs orient with stderr connected to a closed pipe; returns the status and stdout.
fn with_closed_stderr(args: &[&str]) -> (ExitStatus, String) {
    let out = orient()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(closed_pipe())
        .output()
        .unwrap();
    (out.status, String::from_utf8(out.stdout).unwrap())
}

/// An exit code, never a signal (SIGPIPE) nor a panic (101).
fn code(status: ExitStatus) -> i32 {
    assert_eq!(status.signal(), None, "killed by a signal: {status:?}");
    status.code().unwrap()
}

#[test]
fn failing_checks_still_exit_1_when_stdout_is_closed() {
    let (buggy, good) = (fixture("qwen2-buggy"), fixture("qwen2"));
    let cases: [&[&str]; 7] = [
        &["verify", &buggy, "--against", &good],
        &["verify", &buggy, "--against", &good, "--json"],
        &["diff", &buggy, &good],
        &["diff", &buggy, &good, "--json"],
        &["inspect", &buggy, "--check"],
        &["inspect", &buggy, "--check", "--json"],
        &["inspect", &buggy, "--check", "--group-layers", "--stats"],
    ];
    for args in cases {
        let (status, stderr) = with_closed_stdout(args);
        assert_eq!(code(status), 1, "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}: the closed pipe is not worth a word");
    }
}

#[test]
fn passing_commands_exit_0_when_stdout_is_closed() {
    let good = fixture("qwen2");
    let reference = fixture("qwen2/reference.safetensors");
    let cases: [&[&str]; 5] = [
        &["inspect", &good, "--check"],
        &["verify", &good, "--reference", &reference],
        &["diff", &good, &good],
        &["run", &good, "--tokens", "1,2,3", "--all-positions"],
        &["--help"],
    ];
    for args in cases {
        let (status, stderr) = with_closed_stdout(args);
        assert_eq!(code(status), 0, "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

#[test]
fn errors_still_exit_2_when_stdout_is_closed() {
    let (status, stderr) = with_closed_stdout(&["inspect", "/nonexistent/model"]);
    assert_eq!(code(status), 2);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
}

#[test]
fn convert_and_synth_finish_their_work_when_stdout_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    // convert prints its header before it starts writing: `orient convert A B | true`.
    let dst = tmp.path().join("qwen2-hf");
    let (status, stderr) =
        with_closed_stdout(&["convert", &fixture("qwen2-flax"), dst.to_str().unwrap()]);
    assert_eq!(code(status), 0, "{stderr}");
    assert_eq!(stderr, "");
    assert!(dst.join("model.safetensors").is_file());
    assert!(dst.join("config.json").is_file());
    // What it wrote is whole: the transformers-made HF twin, tensor for tensor.
    let diff = orient()
        .args(["diff", dst.to_str().unwrap(), &fixture("qwen2")])
        .output()
        .unwrap();
    assert_eq!(
        code(diff.status),
        0,
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );

    let synth = tmp.path().join("synth");
    let (status, stderr) = with_closed_stdout(&[
        "synth",
        &fixture("qwen2/config.json"),
        synth.to_str().unwrap(),
    ]);
    assert_eq!(code(status), 0, "{stderr}");
    assert!(synth.join("model.safetensors").is_file());

    // Nothing but the two outputs: no staging folder left behind.
    let mut left: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    assert_eq!(left, [dst, synth]);
}

#[cfg(target_os = "linux")]
#[test]
fn a_stdout_that_cannot_be_written_is_an_error() {
    // A full disk behind `>` is not a closed pipe: the report was lost, say so.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = orient()
        .args(["inspect", &fixture("qwen2")])
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(code(out.status), 2, "{stderr}");
    assert!(
        stderr.contains("cannot write to standard output"),
        "{stderr}"
    );
}

#[test]
fn errors_exit_2_without_a_panic_when_stderr_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    let cases: [&[&str]; 5] = [
        &["inspect", "/nonexistent/model"],
        &["convert", "/nonexistent/model", dst.to_str().unwrap()],
        &["diff", &fixture("qwen2"), "/nonexistent/model"],
        &[
            "verify",
            "/nonexistent/model",
            "--against",
            &fixture("qwen2"),
        ],
        &["inspect", "--no-such-flag"],
    ];
    for args in cases {
        let (status, _) = with_closed_stderr(args);
        assert_eq!(code(status), 2, "{args:?}");
    }
    // Both streams closed.
    let status = orient()
        .args(["inspect", "/nonexistent/model"])
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .status()
        .unwrap();
    assert_eq!(code(status), 2);
    // And a run that succeeds is not disturbed by a closed stderr.
    let (status, stdout) = with_closed_stderr(&["inspect", &fixture("qwen2"), "--check"]);
    assert_eq!(code(status), 0);
    assert!(stdout.contains("status:        ok 27"), "{stdout}");
}

fn inspect(args: &[&str]) -> (i32, String) {
    let out = orient().arg("inspect").args(args).output().unwrap();
    (code(out.status), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn check_under_a_filter_judges_the_listed_rows_and_the_summary_says_so() {
    let buggy = fixture("qwen2-buggy");
    // The norms are all fine, though the file has 10 transposed tensors: the summary
    // shows both sets, and --check judges the one the filter kept.
    let (code_norm, out) = inspect(&[&buggy, "--filter", "*norm*", "--check"]);
    assert_eq!(code_norm, 0, "{out}");
    assert!(
        out.contains("status:        ok 17, transposed 10 (whole checkpoint)\n"),
        "{out}"
    );
    assert!(
        out.contains("filtered:      ok 5 in the 5 rows matching `*norm*` (what --check judges)\n"),
        "{out}"
    );

    let (code_mlp, out) = inspect(&[&buggy, "--filter", "*mlp*", "--check"]);
    assert_eq!(code_mlp, 1, "{out}");
    assert!(
        out.contains("filtered:      transposed 6 in the 6 rows matching `*mlp*`"),
        "{out}"
    );

    let (code_none, out) = inspect(&[&buggy, "--filter", "*no_such*", "--check"]);
    assert_eq!(code_none, 0, "{out}");
    assert!(out.contains("no row matches `*no_such*`"), "{out}");

    // Without a filter nothing changes: one status line, judged whole.
    let (code_all, out) = inspect(&[&buggy, "--check"]);
    assert_eq!(code_all, 1);
    assert!(
        out.contains("status:        ok 17, transposed 10\n"),
        "{out}"
    );
    assert!(!out.contains("filtered:"), "{out}");

    // The JSON says the same.
    let (_, json) = inspect(&[&buggy, "--filter", "*mlp*", "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    let f = &v["summary"]["filtered"];
    assert_eq!(f["glob"], "*mlp*");
    assert_eq!(f["rows"], 6);
    assert_eq!(f["status_counts"], serde_json::json!({"transposed": 6}));
    assert_eq!(
        v["summary"]["status_counts"],
        serde_json::json!({"ok": 17, "transposed": 10})
    );
    let (_, json) = inspect(&[&buggy, "--json"]);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert!(v["summary"].get("filtered").is_none());
}
