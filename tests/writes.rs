//! What the writing commands may destroy, and what they leave behind: `synth` and
//! `convert` never replace their own input nor anything but a previous checkpoint,
//! `run --save` never overwrites the model it reads, destinations such as `.` get true
//! messages, and a signal or a killed run leaves no staging folder for long.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn orient() -> Command {
    Command::cargo_bin("orient").unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Every file under `dir` (relative path → bytes), folders included as empty entries.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.push((rel, Vec::new()));
                walk(root, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- issue 8, item 2: run --save ----

#[test]
fn run_save_needs_force_to_replace_a_file_and_stays_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("forward.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let save = |force: bool| {
        let mut c = orient();
        c.arg("run")
            .arg(fixture("qwen2"))
            .args(["--tokens", "1,2,3", "--save"])
            .arg(&out);
        if force {
            c.arg("--force");
        }
        c.assert()
    };
    save(false).code(2).stderr(predicate::str::contains(
        "already exists (use --force to replace it)",
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    save(true).success();
    // A complete reference file, readable by verify; no temporary file beside it.
    orient()
        .arg("verify")
        .arg(fixture("qwen2"))
        .arg("--reference")
        .arg(&out)
        .assert()
        .success();
    assert_eq!(names(tmp.path()), ["forward.safetensors"]);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_ne!(mode & 0o044, 0, "saved with a private mode {mode:o}");
    // A folder is not a file.
    orient()
        .arg("run")
        .arg(fixture("qwen2"))
        .args(["--tokens", "1", "--force", "--save"])
        .arg(tmp.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is a folder"));
}

#[test]
fn run_save_never_overwrites_the_models_own_files() {
    let tmp = tempfile::tempdir().unwrap();
    let m9 = tmp.path().join("m9");
    copy_dir(&fixture("qwen2"), &m9);
    // A sharded twin, for the index and a shard.
    let sharded = tmp.path().join("sharded");
    orient()
        .arg("convert")
        .arg(&m9)
        .arg(&sharded)
        .args(["-q", "--max-shard-size", "200KB"])
        .assert()
        .success();
    std::os::unix::fs::symlink(m9.join("model.safetensors"), tmp.path().join("soft")).unwrap();
    std::fs::hard_link(m9.join("model.safetensors"), tmp.path().join("hard")).unwrap();
    let before = (snapshot(&m9), snapshot(&sharded));
    let cases: Vec<(&Path, PathBuf)> = vec![
        (&m9, m9.join("model.safetensors")),
        (&m9, m9.join("./model.safetensors")),
        (&m9, tmp.path().join("m9/../m9/model.safetensors")),
        (&m9, m9.join("config.json")),
        (&m9, m9.join("generation_config.json")),
        (&m9, tmp.path().join("soft")),
        (&m9, tmp.path().join("hard")),
        (&sharded, sharded.join("model.safetensors.index.json")),
        (&sharded, sharded.join("model-00002-of-00004.safetensors")),
    ];
    for (model, target) in cases {
        orient()
            .arg("run")
            .arg(model)
            .args(["--tokens", "1,2", "--force", "--save"])
            .arg(&target)
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("part of the model being read")
                    .and(predicate::str::contains("even with --force")),
            );
    }
    assert!(sharded.join("model-00004-of-00004.safetensors").exists());
    assert_eq!((snapshot(&m9), snapshot(&sharded)), before);
    assert_eq!(names(tmp.path()), ["hard", "m9", "sharded", "soft"]);
    // Another model's files are only files: --force replaces them (a link or a hard
    // link by a new file; what they pointed at stays).
    for target in [tmp.path().join("hard"), tmp.path().join("soft")] {
        orient()
            .arg("run")
            .arg(&sharded)
            .args(["--tokens", "1,2", "--force", "--save"])
            .arg(&target)
            .assert()
            .success();
        assert!(!target.symlink_metadata().unwrap().file_type().is_symlink());
    }
    assert_eq!(snapshot(&m9), before.0);
}
