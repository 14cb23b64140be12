//! What the writing commands may destroy, and what they leave behind: `synth` and
//! `convert` never replace their own input nor anything but a previous checkpoint,
//! `run --save` never overwrites the model it reads, destinations such as `.` get true
//! messages, and a signal or a killed run leaves no staging folder for long.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use predicates::prelude::*;

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

// ---- issue 8, item 13: signals and killed runs ----

/// A Qwen2-shaped config of about 110 MB in f32: large enough that writing it takes a
/// while, small enough for a test.
const MEDIUM: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
  "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4,
  "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 16000,
  "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
  "tie_word_embeddings": false}"#;

fn medium_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("medium.json");
    std::fs::write(&cfg, MEDIUM).unwrap();
    cfg
}

/// Starts orient with SIGINT and SIGTERM at their defaults (a test harness started in
/// the background could have them ignored, which orient respects).
fn spawn(args: &[&std::ffi::OsStr]) -> Child {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("orient"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: between fork and exec only `signal`, which is async-signal-safe, is called.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

fn staging_dirs(parent: &Path, dst_name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{dst_name}.orient-tmp-");
    let mut v: Vec<PathBuf> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Waits until `child` is writing tensor data into a staging folder for `dst`, then
/// stops it (SIGSTOP) so that whatever is sent next lands during the write. Returns the
/// staging folder.
fn stop_while_writing(child: &mut Child, dst: &Path) -> PathBuf {
    let parent = dst.parent().unwrap();
    let name = dst.file_name().unwrap().to_string_lossy().into_owned();
    // Only against a hang: no timing is asserted.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        for dir in staging_dirs(parent, &name) {
            let writing = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    e.file_name().to_string_lossy().ends_with(".safetensors")
                        && e.metadata().is_ok_and(|m| m.len() > 0)
                });
            if writing {
                // SAFETY: kill on the pid of a child this test spawned and has not reaped.
                assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) }, 0);
                assert!(
                    !dst.exists(),
                    "the run finished before it could be interrupted; the model is too small"
                );
                return dir;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("orient ended ({status}) before it was seen writing");
        }
        assert!(Instant::now() < deadline, "orient was never seen writing");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `signal` to the stopped `child`, resumes it, and returns its status and stderr.
fn deliver(mut child: Child, signal: i32) -> (std::process::ExitStatus, String) {
    let pid = child.id() as i32;
    // SAFETY: kill on the pid of a child this test spawned and has not reaped.
    unsafe {
        assert_eq!(libc::kill(pid, signal), 0);
        assert_eq!(libc::kill(pid, libc::SIGCONT), 0);
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Ctrl-C and SIGTERM during `synth` and during `convert` remove the staging folder and
/// end the process by that signal (a shell reports 130 and 143).
#[test]
fn sigint_and_sigterm_during_a_write_leave_no_staging_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = medium_config(tmp.path());
    let src = tmp.path().join("src");
    orient()
        .arg("synth")
        .arg(&cfg)
        .arg(&src)
        .args(["-q", "--no-fsync"])
        .assert()
        .success();
    let dst = tmp.path().join("dst");
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let runs: [Vec<&std::ffi::OsStr>; 2] = [
            vec!["synth".as_ref(), cfg.as_os_str(), dst.as_os_str()],
            vec![
                "convert".as_ref(),
                src.as_os_str(),
                dst.as_os_str(),
                "--to".as_ref(),
                "flax".as_ref(),
            ],
        ];
        for args in runs {
            let mut child = spawn(&args);
            let staging = stop_while_writing(&mut child, &dst);
            let (status, err) = deliver(child, signal);
            assert_eq!(status.signal(), Some(signal), "{args:?}: {status}, {err}");
            assert!(
                err.contains(&format!(
                    "interrupted by {name}: removed the unfinished output {}; nothing was written",
                    staging.display()
                )),
                "{args:?}: {err}"
            );
            assert!(!staging.exists());
            assert_eq!(names(tmp.path()), ["medium.json", "src"], "{args:?}");
        }
    }
}

/// What no handler sees (SIGKILL) is cleaned by the next run to the same destination,
/// which says so; a folder whose owner still runs, and one without an owner record, are
/// left alone and named.
#[test]
fn the_next_run_removes_a_dead_runs_staging_folder_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = medium_config(tmp.path());
    let dst = tmp.path().join("dst");
    let mut child = spawn(&["synth".as_ref(), cfg.as_os_str(), dst.as_os_str()]);
    let killed_pid = child.id();
    let killed = stop_while_writing(&mut child, &dst);
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(
        killed.exists(),
        "SIGKILL cannot be handled: the staging folder stays"
    );

    // A live owner: this test process, holding the lock of an owner record.
    let live = tmp.path().join(".dst.orient-tmp-live01");
    std::fs::create_dir(&live).unwrap();
    let record = live.join(".orient-owner");
    std::fs::write(
        &record,
        format!("orient staging folder\npid {}\n", std::process::id()),
    )
    .unwrap();
    let lock = std::fs::File::open(&record).unwrap();
    lock.lock().unwrap();
    // A folder an older orient left: no owner record.
    let legacy = tmp.path().join(".dst.orient-tmp-legacy");
    std::fs::create_dir(&legacy).unwrap();
    // Another destination's staging is none of this run's business.
    let other = tmp.path().join(".dst2.orient-tmp-x");
    std::fs::create_dir(&other).unwrap();

    orient()
        .arg("synth")
        .arg(fixture("qwen2"))
        .arg(&dst)
        .arg("-q")
        .assert()
        .success()
        .stderr(
            predicate::str::contains(format!(
                "note: removed {}, the staging folder of an interrupted run (process {killed_pid}, no longer running)",
                killed.display()
            ))
            .and(predicate::str::contains(format!(
                "note: left {} alone: process {} is still writing it",
                live.display(),
                std::process::id()
            )))
            .and(predicate::str::contains(format!(
                "note: left {} alone: it has no owner record",
                legacy.display()
            )))
            .and(predicate::str::contains("dst2").not()),
        );
    assert!(!killed.exists());
    assert!(live.exists() && legacy.exists() && other.exists());
    assert_eq!(names(&dst), ["config.json", "model.safetensors"]);

    // Once its owner is gone, the next run removes the live one too.
    drop(lock);
    std::fs::remove_dir_all(&dst).unwrap();
    orient()
        .arg("synth")
        .arg(fixture("qwen2"))
        .arg(&dst)
        .arg("-q")
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "note: removed {}",
            live.display()
        )));
    assert!(!live.exists());
}
