//! `orient convert --part I/N` and `--finish`: parts run in parallel processes put
//! together exactly the bytes of one `orient convert`, and `--finish` refuses a missing,
//! duplicated, stale or corrupt part, naming it, with nothing at the destination.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use std::path::Path;
use std::process::Command as Process;

use predicates::prelude::*;

/// qwen2 → flax in shards of at most 200 KB: 4 shards.
const OPTS: [&str; 4] = ["--to", "flax", "--max-shard-size", "200KB"];

fn convert(src: &Path, dst: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    orient()
        .arg("convert")
        .arg(src)
        .arg(dst)
        .args(args)
        .arg("--quiet")
        .assert()
}

fn part(src: &Path, dst: &Path, spec: &str, args: &[&str]) {
    let mut a = args.to_vec();
    a.extend(["--part", spec]);
    convert(src, dst, &a).success();
}

fn finish(src: &Path, dst: &Path, args: &[&str]) -> assert_cmd::assert::Assert {
    let mut a = args.to_vec();
    a.push("--finish");
    convert(src, dst, &a)
}

/// Runs parts `1..=n` of `n` at once, each in its own process, and waits for all.
fn parts_in_parallel(src: &Path, dst: &Path, n: usize, args: &[&str]) {
    let children: Vec<_> = (1..=n)
        .map(|i| {
            Process::new(assert_cmd::cargo::cargo_bin("orient"))
                .arg("convert")
                .arg(src)
                .arg(dst)
                .args(args)
                .args(["--part", &format!("{i}/{n}"), "--quiet"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
}

/// Every file of `a` and `b`, by name, byte for byte.
fn assert_identical(a: &Path, b: &Path) {
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b), "{} vs {}", a.display(), b.display());
    for n in names(a) {
        assert!(
            std::fs::read(a.join(&n)).unwrap() == std::fs::read(b.join(&n)).unwrap(),
            "{n} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A refused `--finish`: exit 2, every `needles` in stderr, nothing at the destination
/// and nothing beside it but the staging area of the parts.
fn assert_refused(src: &Path, dst: &Path, args: &[&str], needles: &[&str]) {
    let out = finish(src, dst, args).code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
    assert!(
        err.contains("nothing was written to the destination"),
        "{err}"
    );
    assert!(!dst.exists(), "{} must not exist", dst.display());
    let parent = dst.parent().unwrap();
    let name = dst.file_name().unwrap().to_string_lossy().into_owned();
    let beside: Vec<String> = listing(parent)
        .into_iter()
        .filter(|n| n.starts_with(&name) || n.starts_with(&format!(".{name}")))
        .collect();
    assert_eq!(
        beside,
        [format!("{name}.orient-parts")],
        "beside the destination"
    );
}

#[test]
fn parts_in_parallel_processes_finish_byte_identical_to_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    let one = tmp.path().join("one");
    convert(&src, &one, &OPTS).success();
    assert_eq!(
        listing(&one).len(),
        9,
        "4 shards, an index and 4 companions"
    );
    // 3 parts of 4 shards; 6 parts, two of them empty; durable (fsync, direct I/O) and not.
    for (n, fsync) in [(3, true), (6, false)] {
        let dst = tmp.path().join(format!("out-{n}"));
        let mut args = OPTS.to_vec();
        if !fsync {
            args.push("--no-fsync");
        }
        parts_in_parallel(&src, &dst, n, &args);
        assert!(!dst.exists(), "the parts alone make no destination");
        finish(&src, &dst, &args).success();
        assert_identical(&one, &dst);
        assert!(!tmp.path().join(format!("out-{n}.orient-parts")).exists());
    }
    // A single-file output: part 1 writes it, part 2 nothing.
    let single = tmp.path().join("single");
    convert(&src, &single, &["--to", "flax"]).success();
    let dst = tmp.path().join("single-parts");
    parts_in_parallel(&src, &dst, 2, &["--to", "flax"]);
    orient()
        .arg("convert")
        .arg(&src)
        .arg(&dst)
        .args(["--to", "flax", "--finish"])
        .assert()
        .success()
        .stdout(predicate::str::contains("finish:  2 parts checked"));
    assert_identical(&single, &dst);
}

#[test]
fn a_part_run_again_is_kept_and_a_bad_spec_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    let dst = tmp.path().join("out");
    part(&src, &dst, "2/3", &OPTS);
    let mut args = OPTS.to_vec();
    args.extend(["--part", "2/3"]);
    orient()
        .arg("convert")
        .arg(&src)
        .arg(&dst)
        .args(&args)
        .assert()
        .success()
        .stdout(predicate::str::contains("already complete"));
    // The same part for other options is refused unless --force.
    orient()
        .arg("convert")
        .arg(&src)
        .arg(&dst)
        .args(["--to", "flax", "--part", "2/3"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("part 2/3 is already there"));
    for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
        orient()
            .arg("convert")
            .arg(&src)
            .arg(&dst)
            .args(["--part", bad])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("expected I/N"));
    }
    // --finish with no parts at all.
    finish(&src, &tmp.path().join("none"), &OPTS)
        .code(2)
        .stderr(predicate::str::contains("no parts to finish"));
}

#[test]
fn finish_refuses_a_missing_part() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    let dst = tmp.path().join("out");
    part(&src, &dst, "1/3", &OPTS);
    part(&src, &dst, "3/3", &OPTS);
    assert_refused(&src, &dst, &OPTS, &["1 missing", "part 2/3", "missing"]);
    // Once it is there, the same parts finish.
    part(&src, &dst, "2/3", &OPTS);
    finish(&src, &dst, &OPTS).success();
}

#[test]
fn finish_refuses_a_duplicated_part() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    let dst = tmp.path().join("out");
    parts_in_parallel(&src, &dst, 3, &OPTS);
    let area = tmp.path().join("out.orient-parts");
    copy_dir(
        &area.join("part-00002-of-00003"),
        &area.join("part-00002-of-00003 (copy)"),
    );
    assert_refused(
        &src,
        &dst,
        &OPTS,
        &[
            "1 duplicated",
            "part 2/3 (part-00002-of-00003, part-00002-of-00003 (copy))",
        ],
    );
}

#[test]
fn finish_refuses_a_part_of_other_options_or_another_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    let dst = tmp.path().join("out");
    part(&src, &dst, "1/3", &OPTS);
    part(&src, &dst, "3/3", &OPTS);
    // Part 2 with another dtype, and a part of a partition into 2.
    let mut bf16 = OPTS.to_vec();
    bf16.extend(["--dtype", "bf16"]);
    part(&src, &dst, "2/3", &bf16);
    part(&src, &dst, "1/2", &OPTS);
    assert_refused(
        &src,
        &dst,
        &OPTS,
        &[
            "2 stale",
            "part 2/3 (part-00002-of-00003): stale: --dtype was bf16 then, keep now",
            "part 1/2 (part-00001-of-00002): stale: it belongs to a partition into 2 parts, not 3",
        ],
    );
}

#[test]
fn finish_refuses_parts_of_a_source_that_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_dir(&fixture("qwen2"), &src);
    let dst = tmp.path().join("out");
    parts_in_parallel(&src, &dst, 2, &OPTS);
    // Another source under the same path: one tensor byte changed (same length, same
    // header), and a later modification time.
    let file = src.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&file, &bytes).unwrap();
    assert_refused(
        &src,
        &dst,
        &OPTS,
        &[
            "2 stale",
            "part 1/2",
            "part 2/2",
            "the source changed since: model.safetensors: modified at",
        ],
    );
}

#[test]
fn finish_refuses_a_corrupt_part_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("qwen2");
    let dst = tmp.path().join("out");
    parts_in_parallel(&src, &dst, 4, &OPTS);
    let area = tmp.path().join("out.orient-parts");
    // Part 1: a flipped bit in the tensor data (length and header unchanged).
    let f1 = area
        .join("part-00001-of-00004")
        .join("model-00001-of-00004.safetensors");
    let mut bytes = std::fs::read(&f1).unwrap();
    let k = bytes.len() - 10;
    bytes[k] ^= 1;
    std::fs::write(&f1, &bytes).unwrap();
    // Part 2: a truncated shard.
    let f2 = area
        .join("part-00002-of-00004")
        .join("model-00002-of-00004.safetensors");
    let len = std::fs::metadata(&f2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f2)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    // Part 3: a damaged manifest.
    let m3 = area.join("part-00003-of-00004").join("orient-part.json");
    let text = std::fs::read_to_string(&m3).unwrap();
    std::fs::write(&m3, text.replacen("\"part\": 3", "\"part\": 4", 1)).unwrap();
    // Part 4: its shard gone.
    std::fs::remove_file(
        area.join("part-00004-of-00004")
            .join("model-00004-of-00004.safetensors"),
    )
    .unwrap();
    assert_refused(
        &src,
        &dst,
        &OPTS,
        &[
            "4 corrupt",
            "part 1/4 (part-00001-of-00004): corrupt: model-00001-of-00004.safetensors: its bytes changed",
            "part 2/4 (part-00002-of-00004): corrupt: model-00002-of-00004.safetensors is",
            "(part-00003-of-00004): corrupt: its orient-part.json is damaged",
            "part 4/4 (part-00004-of-00004): corrupt: model-00004-of-00004.safetensors is missing",
        ],
    );
    // Parts written again with --force replace the damaged ones; then it finishes.
    for i in 1..=4 {
        let mut args = OPTS.to_vec();
        args.push("--force");
        part(&src, &dst, &format!("{i}/4"), &args);
    }
    finish(&src, &dst, &OPTS).success();
    let one = tmp.path().join("one");
    convert(&src, &one, &OPTS).success();
    assert_identical(&one, &dst);
}
