//! What the writing commands may destroy: `synth` and `convert` never replace their own
//! input nor anything but a previous checkpoint, `run --save` never overwrites the model
//! it reads, and destinations such as `.` get true messages.
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

// ---- issue 8, item 1: synth and convert never destroy their input or unrelated files ----

#[test]
fn synth_never_replaces_the_folder_that_holds_its_config() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_dir(&fixture("qwen2"), &m.join("qwen2"));
    std::fs::write(m.join("notes.txt"), b"keep\n").unwrap();
    let before = snapshot(&m);
    let cfg = m.join("qwen2/config.json");
    // The repro: the folder that holds the config's folder; the model folder given as
    // config and as output; the config's own folder.
    for (config, out, relation) in [
        (cfg.clone(), m.clone(), "contains the source"),
        (m.join("qwen2"), m.join("qwen2"), "is the source"),
        (cfg.clone(), m.join("qwen2"), "contains the source"),
        (
            m.join("qwen2"),
            m.join("qwen2/out"),
            "lies inside the source",
        ),
    ] {
        orient()
            .arg("synth")
            .arg(&config)
            .arg(&out)
            .args(["--force", "-q"])
            .assert()
            .code(2)
            .stderr(
                predicate::str::contains("refusing to write")
                    .and(predicate::str::contains(relation)),
            );
    }
    assert_eq!(snapshot(&m), before, "the input folder changed");
    assert_eq!(names(tmp.path()), ["m"]);
}

/// A model folder of links (as the Hugging Face cache keeps them): the folder that holds
/// the files the links lead to is the source's too.
#[test]
fn a_destination_holding_the_targets_of_the_sources_links_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    copy_dir(&fixture("llama"), &blobs);
    let view = tmp.path().join("view");
    std::fs::create_dir(&view).unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::os::unix::fs::symlink(blobs.join(f), view.join(f)).unwrap();
    }
    let before = snapshot(&blobs);
    orient()
        .arg("convert")
        .arg(&view)
        .arg(&blobs)
        .args(["--to", "flax", "--force", "-q"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "it holds files linked from the source",
        ));
    assert_eq!(snapshot(&blobs), before);
}

#[test]
fn force_replaces_a_previous_checkpoint_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    let synth = |dst: &Path, force: bool| {
        let mut c = orient();
        c.arg("synth")
            .arg(fixture("qwen2"))
            .arg(dst)
            .args(["-q", "--seed", "3"]);
        if force {
            c.arg("--force");
        }
        c.assert()
    };
    let convert = |dst: &Path| {
        orient()
            .arg("convert")
            .arg(fixture("llama"))
            .arg(dst)
            .args(["-q", "--force"])
            .assert()
    };
    // A previous checkpoint (a sharded one: shards and index) is replaced, by either command.
    orient()
        .arg("synth")
        .arg(fixture("qwen2"))
        .arg(&dst)
        .args(["-q", "--max-shard-size", "200KB"])
        .assert()
        .success();
    assert!(dst.join("model.safetensors.index.json").exists());
    convert(&dst).success();
    assert_eq!(
        names(&dst),
        ["config.json", "generation_config.json", "model.safetensors"]
    );
    synth(&dst, true).success();
    assert_eq!(names(&dst), ["config.json", "model.safetensors"]);

    // Anything else beside it is named, and nothing is touched.
    std::fs::write(dst.join("notes.txt"), b"mine").unwrap();
    std::fs::create_dir(dst.join("runs")).unwrap();
    std::fs::write(dst.join("runs/log"), b"log").unwrap();
    std::fs::write(dst.join("pytorch_model.bin"), b"weights").unwrap();
    let before = snapshot(&dst);
    for assert in [synth(&dst, true), convert(&dst)] {
        assert.code(2).stderr(
            predicate::str::contains("refusing to replace")
                .and(predicate::str::contains(
                    "`notes.txt`, `pytorch_model.bin`, `runs/`",
                ))
                .and(predicate::str::contains("would be deleted")),
        );
        assert_eq!(snapshot(&dst), before);
    }
    // A home-like folder: many files, a long list cut short.
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    for k in 0..20 {
        std::fs::write(home.join(format!("file{k:02}")), b"x").unwrap();
    }
    synth(&home, true)
        .code(2)
        .stderr(predicate::str::contains("`file05` and 14 more"));
    assert_eq!(names(&home).len(), 20);
    // Without --force, an existing folder is refused as before.
    synth(&dst, false)
        .code(2)
        .stderr(predicate::str::contains("already exists (use --force"));
    assert_eq!(snapshot(&dst), before);
    assert_eq!(names(tmp.path()), ["home", "out"]);
}

// ---- issue 8, item 19 (part): true messages for `.`, `..` and missing parents ----

#[test]
fn dot_dotdot_and_missing_parents_get_true_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("plain"), b"x").unwrap();
    let run = |cwd: &Path, dst: &str, force: bool| {
        let mut c = orient();
        c.current_dir(cwd)
            .arg("convert")
            .arg(fixture("llama"))
            .arg(dst)
            .arg("-q");
        if force {
            c.arg("--force");
        }
        c.assert().code(2)
    };
    for force in [false, true] {
        run(&work, ".", force).stderr(
            predicate::str::contains("refusing to replace .: it is the current folder")
                .and(predicate::str::contains("does not exist").not()),
        );
        run(&work.join("sub"), "..", force).stderr(predicate::str::contains(
            "refusing to replace ..: it contains the current folder",
        ));
    }
    run(&work, "missing/out", false).stderr(predicate::str::contains(
        "cannot write missing/out: the folder missing that should hold it does not exist",
    ));
    run(&work, "plain/out", false).stderr(predicate::str::contains(
        "cannot write plain/out: the folder plain that should hold it is not a folder",
    ));
    run(&work, "plain", true).stderr(predicate::str::contains(
        "refusing to replace plain: it is a file",
    ));
    run(&work, "missing/..", false).stderr(predicate::str::contains("cannot resolve missing/.."));
    // A relative destination beside the current folder works.
    orient()
        .current_dir(&work)
        .arg("convert")
        .arg(fixture("llama"))
        .arg("sub/../out")
        .arg("-q")
        .assert()
        .success();
    assert_eq!(names(&work), ["out", "plain", "sub"]);
    assert!(work.join("out/model.safetensors").is_file());
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
