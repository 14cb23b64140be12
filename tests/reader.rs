//! Files as they are on a user's disk, through every command: Hugging Face cache
//! snapshots (folders of links into `../../blobs/`), FIFOs where a file should be, a
//! folder holding both `model.safetensors` and an index, an index with a repeated key,
//! and a checkpoint truncated by another process while orient reads it.
#![allow(clippy::unwrap_used)]

mod common;
use common::fixture;

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use orient_convert::convert::{self, WriteOptions};
use orient_convert::plan;
use orient_inspect::report;
use orient_inspect::{Checkpoint, Dtype, Error};

fn orient_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("orient")
}

/// Runs orient with `args`, killing it (and failing the test) if it has not finished
/// after `limit`: a hang must fail, not block the suite.
fn orient_within(args: &[&str], limit: Duration) -> Output {
    let child = StdCommand::new(orient_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_within(child, limit, &format!("orient {}", args.join(" ")))
}

fn wait_within(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running after {limit:?} (killed): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn orient(args: &[&str]) -> Output {
    orient_within(args, Duration::from_secs(120))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(o));
}

/// Exit code 2, not a signal, and a message naming `names` and containing `words`.
#[track_caller]
fn assert_error(o: &Output, names: &str, words: &str) {
    assert_eq!(o.status.code(), Some(2), "{:?}: {}", o.status, stderr(o));
    let e = stderr(o);
    assert!(e.starts_with("error: "), "{e}");
    assert!(e.contains(names) && e.contains(words), "{e}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The llama fixture converted into 4 shards with an index (same tensors).
fn sharded_llama(dir: &Path) -> PathBuf {
    let out = dir.join("llama-sharded");
    let o = orient(&[
        "convert",
        s(&fixture("llama")),
        s(&out),
        "--to",
        "hf",
        "--max-shard-size",
        "200KB",
        "--quiet",
        "--no-fsync",
    ]);
    assert_ok(&o);
    assert!(out.join("model.safetensors.index.json").is_file());
    out
}

/// A Hugging Face hub cache holding the files of `model` as
/// `models--org--name/snapshots/REV/FILE` → `../../blobs/HASH` links. Returns the
/// snapshot folder.
#[cfg(unix)]
fn hub_snapshot(cache: &Path, model: &Path) -> PathBuf {
    let repo = cache.join("models--org--name");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots/0b1d5e3c9a7f");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(model)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let hash = format!("{:040x}", 0xb10b + i);
        std::fs::copy(model.join(name), blobs.join(&hash)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{hash}"), snap.join(name)).unwrap();
    }
    snap
}

#[cfg(unix)]
#[test]
fn hub_cache_snapshots_work_in_every_command_single_and_sharded() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = sharded_llama(tmp.path());
    let reference = fixture("llama/reference.safetensors");
    for (label, model) in [("single", fixture("llama")), ("sharded", sharded)] {
        let snap = hub_snapshot(&tmp.path().join(format!("cache-{label}")), &model);
        assert!(snap
            .join("config.json")
            .symlink_metadata()
            .unwrap()
            .is_symlink());

        let o = orient(&["inspect", s(&snap), "--json"]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["summary"]["tensors"], 21, "{label}");
        assert_eq!(
            v["summary"]["architecture"], "llama",
            "{label}: config.json read"
        );
        assert_ok(&orient(&["inspect", s(&snap), "--stats", "--check"]));

        let o = orient(&["run", s(&snap), "--tokens", "1,2,3"]);
        assert_ok(&o);
        let o = orient(&["verify", s(&snap), "--reference", s(&reference)]);
        assert_ok(&o);
        assert!(stdout(&o).contains("PASS"), "{label}: {}", stdout(&o));
        let o = orient(&["diff", s(&snap), s(&fixture("llama")), "--full"]);
        assert_ok(&o);
        let out = tmp.path().join(format!("flax-{label}"));
        let o = orient(&[
            "convert",
            s(&snap),
            s(&out),
            "--to",
            "flax",
            "-q",
            "--no-fsync",
        ]);
        assert_ok(&o);
        // The output holds files, not links into the cache.
        for e in std::fs::read_dir(&out).unwrap() {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "{:?}", e.path());
        }
        assert_ok(&orient(&["diff", s(&out), s(&fixture("llama-flax"))]));
    }
}

#[test]
fn an_index_listing_a_tensor_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = sharded_llama(tmp.path());
    let index = sharded.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    // Repeat the first entry of weight_map, pointing outside first: serde_json would keep
    // the last (valid) one and never look at the first.
    let at = text.find("\"weight_map\": {").map(|i| i + 15).unwrap();
    let doctored = format!(
        "{}\n    \"model.norm.weight\": \"../../etc/passwd\",{}",
        &text[..at],
        &text[at..]
    );
    std::fs::write(&index, doctored).unwrap();
    for cmd in ["inspect", "run"] {
        let mut args = vec![cmd, s(&sharded)];
        if cmd == "run" {
            args.extend(["--tokens", "1"]);
        }
        let o = orient(&args);
        assert_error(&o, "model.safetensors.index.json", "more than once");
        assert!(stderr(&o).contains("../../etc/passwd"), "{}", stderr(&o));
    }
}

#[test]
fn model_safetensors_beside_an_index_is_read_and_the_index_named() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = sharded_llama(tmp.path());
    // model.safetensors (the fixture) plus the sharded set's index and shards.
    for e in std::fs::read_dir(fixture("llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), sharded.join(e.file_name())).unwrap();
    }
    let dir = s(&sharded);
    let said = |text: &str| {
        text.contains("both model.safetensors and model.safetensors.index.json are present")
            && text.contains("reading model.safetensors, as transformers does")
    };

    let o = orient(&["inspect", dir]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("(single-file, 1 shard)") && said(&out),
        "{out}"
    );
    let o = orient(&["inspect", dir, "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["summary"]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| said(n.as_str().unwrap())));

    let reference = fixture("llama/reference.safetensors");
    let out_dir = tmp.path().join("converted");
    for args in [
        vec!["run", dir, "--tokens", "1,2"],
        vec!["run", dir, "--tokens", "1,2", "--json"],
        vec!["verify", dir, "--reference", s(&reference)],
        vec!["verify", s(&fixture("llama")), "--against", dir],
        vec!["diff", dir, s(&fixture("llama"))],
        vec!["diff", s(&fixture("llama")), dir, "--json"],
        vec!["convert", dir, s(&out_dir), "--no-fsync"],
    ] {
        let o = orient(&args);
        assert_ok(&o);
        let e = stderr(&o);
        assert!(e.starts_with("warning: ") && said(&e), "{args:?}: {e}");
    }
    // Naming the index reads the index, and there is nothing to warn about.
    let o = orient(&["inspect", s(&sharded.join("model.safetensors.index.json"))]);
    assert_ok(&o);
    assert!(stdout(&o).contains("(sharded, 4 shards)") && !said(&stdout(&o)));
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[cfg(unix)]
#[test]
fn fifos_are_refused_by_every_command_never_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(60);
    // A folder whose model.safetensors is a FIFO (no index).
    let lone = tmp.path().join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(fixture("llama/config.json"), lone.join("config.json")).unwrap();
    mkfifo(&lone.join("model.safetensors"));
    // A sharded set whose second shard is a FIFO.
    let sharded = sharded_llama(tmp.path());
    let shard = sharded.join("model-00002-of-00004.safetensors");
    std::fs::remove_file(&shard).unwrap();
    mkfifo(&shard);
    let llama = fixture("llama");
    let out = tmp.path().join("out");
    for (model, name) in [
        (lone.clone(), "model.safetensors"),
        (lone.join("model.safetensors"), "model.safetensors"),
        (sharded.clone(), "model-00002-of-00004.safetensors"),
    ] {
        let m = s(&model);
        for args in [
            vec!["inspect", m],
            vec!["run", m, "--tokens", "1"],
            vec!["verify", m, "--against", s(&llama)],
            vec!["verify", s(&llama), "--against", m],
            vec!["diff", m, s(&llama)],
            vec!["convert", m, s(&out)],
        ] {
            let o = orient_within(&args, limit);
            assert_error(&o, name, "is a FIFO (named pipe), not a regular file");
        }
        assert!(!out.exists());
    }
    // A FIFO as the reference, and as synth's config.
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let o = orient_within(&["verify", s(&llama), "--reference", s(&fifo)], limit);
    assert_error(&o, "fifo", "FIFO");
    let o = orient_within(&["synth", s(&fifo), s(&out), "-q"], limit);
    assert_error(&o, "fifo", "FIFO");
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------
// A checkpoint truncated underneath: in process first (deterministic), then through the
// binary while it runs.

/// A copy of a fixture folder in a fresh temporary folder.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Truncates a file to a bit more than its header, so that all data pages vanish.
fn truncate_data(path: &Path) {
    let mut prefix = [0u8; 8];
    use std::io::Read;
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut prefix)
        .unwrap();
    truncate(path, 8 + u64::from_le_bytes(prefix) + 100);
}

#[track_caller]
fn assert_changed(err: &dyn std::fmt::Display, file: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(s(file)) && msg.contains("changed while orient was reading it"),
        "{msg}"
    );
}

#[test]
fn convert_of_a_source_truncated_after_open_fails_and_leaves_nothing() {
    // The three ways a tensor is produced: copied in the kernel, cast, transposed.
    for (to, dtype) in [
        ("hf", None),
        ("hf", Some(Dtype::BF16)),
        ("flax", None),
        ("flax", Some(Dtype::F16)),
    ] {
        let (tmp, src) = copy_fixture("llama");
        let file = src.join("model.safetensors");
        let ck = Checkpoint::open(&src).unwrap();
        let opts = plan::Options {
            to: to.into(),
            from: plan::From::Auto,
            dtype,
            layouts: Vec::new(),
        };
        let p = plan::plan(&ck, &opts).unwrap();
        truncate_data(&file);
        let dst = tmp.path().join("out");
        let write = WriteOptions {
            sync: false,
            ..WriteOptions::default()
        };
        let err = convert::write(&ck, &p, &dst, &write, &mut |_| {}).unwrap_err();
        assert_changed(&err, &file);
        // Nothing but the source folder is left: no output, no staging folder.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["llama"], "{to:?} {dtype:?}");
    }
}

#[test]
fn forward_diff_and_stats_on_a_file_truncated_after_open_fail_the_check() {
    use orient::model::{Model, ModelError};
    // The forward: an error naming the file, not a signal and not logits.
    for name in ["llama", "llama-bf16", "llama-flax"] {
        let (_tmp, dir) = copy_fixture(name);
        let file = dir.join("model.safetensors");
        let ck = Checkpoint::open(&dir).unwrap();
        let mut model = Model::new(&ck).unwrap();
        model.forward(&[1, 2, 3], false).unwrap();
        truncate_data(&file);
        let err = model.forward(&[1, 2, 3], true).unwrap_err();
        assert!(matches!(err, ModelError::Changed(_)), "{name}: {err}");
        assert_changed(&err, &file);
    }
    // diff --full and inspect --stats read zeros instead of dying, and the check after
    // them names the file.
    let (_tmp, dir) = copy_fixture("llama");
    let file = dir.join("model.safetensors");
    let a = Checkpoint::open(fixture("llama")).unwrap();
    let b = Checkpoint::open(&dir).unwrap();
    truncate(&file, 4096 * 8);
    let opts = orient_inspect::diff::DiffOptions {
        full: true,
        ..Default::default()
    };
    let report = orient_inspect::diff::diff(&a, &b, &opts, &|_, _| {}).unwrap();
    assert!(!report.ok);
    a.check_intact().unwrap();
    let err = b.check_intact().unwrap_err();
    assert!(matches!(err, Error::Changed { .. }));
    assert_changed(&err, &file);
    let opts = report::Options {
        stats: true,
        ..report::Options::default()
    };
    let _ = report::inspect(&b, &opts, &|_| {});
    assert_changed(&b.check_intact().unwrap_err(), &file);
}

/// A llama of ~85 MB (f32) made by `orient synth`, large enough that a conversion and
/// a forward take a while.
fn big_model(dir: &Path) -> PathBuf {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("llama/config.json")).unwrap())
            .unwrap();
    for (k, v) in [
        ("hidden_size", 512),
        ("intermediate_size", 1408),
        ("num_hidden_layers", 4),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 4),
        ("head_dim", 64),
        ("vocab_size", 8192),
    ] {
        cfg[k] = v.into();
    }
    let cfg_path = dir.join("big-config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let model = dir.join("big");
    assert_ok(&orient(&[
        "synth",
        s(&cfg_path),
        s(&model),
        "-q",
        "--no-fsync",
    ]));
    model
}

/// Sends `sig` to a child process.
#[cfg(unix)]
fn signal(child: &std::process::Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[cfg(target_os = "linux")]
#[test]
fn a_model_truncated_while_orient_runs_or_converts_ends_in_an_error_not_a_signal() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let model = big_model(tmp.path());
    let weights = model.join("model.safetensors");
    let pristine = std::fs::read(&weights).unwrap();
    let restore = || std::fs::write(&weights, &pristine).unwrap();

    // `run` repeats the forward until stopped: truncate the weights while it runs.
    let mut caught = false;
    for attempt in 1..=5u32 {
        restore();
        let child = StdCommand::new(orient_bin())
            .args([
                "run",
                s(&model),
                "--tokens",
                "1,2,3,4",
                "--repeat",
                "100000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
        truncate_data(&weights);
        let o = wait_within(child, Duration::from_secs(120), "orient run");
        assert_eq!(
            o.status.signal(),
            None,
            "killed by a signal: {}",
            stderr(&o)
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        if stderr(&o).contains("changed while orient was reading it") {
            assert!(stderr(&o).contains(s(&weights)), "{}", stderr(&o));
            caught = true;
            break;
        }
        // Truncated before it was opened (a header error): wait longer next time.
        assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    }
    assert!(caught, "never truncated while the forward ran");

    // `convert`: stop it once its staging folder exists (the source is open and being
    // read), truncate the source, let it go on.
    let dst = tmp.path().join("flax");
    let staging = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".flax.orient-tmp-")
            })
    };
    let mut caught = false;
    for _ in 0..5 {
        restore();
        let _ = std::fs::remove_dir_all(&dst);
        let child = StdCommand::new(orient_bin())
            .args(["convert", s(&model), s(&dst), "--to", "flax", "-q"])
            .arg("--no-fsync")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = child;
        let start = Instant::now();
        let mut exited = false;
        while !staging(tmp.path()) {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "convert never started"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        if exited {
            // Finished before the staging folder was seen: try again.
            let o = wait_within(child, Duration::from_secs(1), "orient convert");
            assert_ok(&o);
            continue;
        }
        signal(&child, libc::SIGSTOP);
        truncate_data(&weights);
        signal(&child, libc::SIGCONT);
        let o = wait_within(child, Duration::from_secs(120), "orient convert");
        assert_eq!(
            o.status.signal(),
            None,
            "killed by a signal: {}",
            stderr(&o)
        );
        if o.status.success() {
            continue; // it had read everything before the truncation: try again
        }
        assert_error(&o, s(&weights), "changed while orient was reading it");
        caught = true;
        break;
    }
    assert!(caught, "never truncated while convert ran");
    assert!(!dst.exists());
    assert!(!staging(tmp.path()), "staging folder left behind");
}
