//! Models named by repo id: a Hugging Face cache laid out in a temporary folder (blobs, snapshots
//! of relative links, refs), and the binary driven with `HF_HUB_CACHE` / `HF_HOME` pointing at it.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

mod common;
use common::fixture;

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

const MAIN: &str = "1111111111aaaaaaaaaabbbbbbbbbbcccccccccc";
const V1: &str = "2222222222ddddddddddeeeeeeeeeeffffffffff";

/// A cache at `cache` holding `models--Org--Tiny-Model` with two snapshots: `main` → llama
/// fixture, tag `v1` → qwen2 fixture. Each file is a blob, linked from the snapshot by a relative
/// link, as huggingface_hub writes them.
fn make_cache(cache: &Path) {
    let repo = cache.join("models--Org--Tiny-Model");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    for (commit, model) in [(MAIN, "llama"), (V1, "qwen2")] {
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        for file in ["config.json", "model.safetensors"] {
            let blob = format!("{commit}-{file}").replace('.', "_");
            std::fs::copy(fixture(model).join(file), repo.join("blobs").join(&blob)).unwrap();
            std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(file)).unwrap();
        }
    }
    std::fs::write(repo.join("refs/main"), MAIN).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{V1}\n")).unwrap();
    // Other cached repos, for the "nearby" lists; and a dataset, which is not a model.
    for other in [
        "models--Org--Tiny-Model-Instruct",
        "models--someone--unrelated",
        "datasets--Org--Tiny-Model",
    ] {
        std::fs::create_dir_all(cache.join(other).join("snapshots")).unwrap();
    }
}

/// `orient` with no hub variable from the caller's environment.
fn orient(cache_vars: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::cargo_bin("orient").unwrap();
    for v in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HOME",
        "XDG_CACHE_HOME",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in cache_vars {
        cmd.env(k, v);
    }
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn inspect_json(vars: &[(&str, &Path)], args: &[&str]) -> (Value, String) {
    let (code, stdout, stderr) = run(orient(vars).arg("inspect").args(args).arg("--json"));
    assert_eq!(code, 0, "{stderr}");
    (serde_json::from_str(&stdout).unwrap(), stderr)
}

fn arch(v: &Value) -> &str {
    v["summary"]["architecture"].as_str().unwrap_or_default()
}

#[test]
fn a_repo_id_resolves_through_refs_main_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    make_cache(tmp.path());
    let vars = [("HF_HUB_CACHE", tmp.path())];
    let (v, stderr) = inspect_json(&vars, &["Org/Tiny-Model"]);
    assert_eq!(arch(&v), "llama", "{v}");
    let snap = tmp
        .path()
        .join("models--Org--Tiny-Model/snapshots")
        .join(MAIN);
    assert!(
        v["summary"]["path"].as_str().unwrap().ends_with(MAIN),
        "{v}"
    );
    assert!(
        stderr.contains("Org/Tiny-Model at main = commit 1111111111aa")
            && stderr.contains(&snap.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn a_tag_a_commit_a_prefix_and_an_inline_revision() {
    let tmp = tempfile::tempdir().unwrap();
    make_cache(tmp.path());
    let vars = [("HF_HUB_CACHE", tmp.path())];
    for args in [
        vec!["Org/Tiny-Model", "--revision", "v1"],
        vec!["Org/Tiny-Model", "--revision", V1],
        vec!["Org/Tiny-Model", "--revision", &V1[..7]],
        vec!["Org/Tiny-Model@v1"],
        // The inline revision wins over --revision.
        vec!["Org/Tiny-Model@v1", "--revision", "main"],
    ] {
        let (v, _) = inspect_json(&vars, &args);
        assert_eq!(arch(&v), "qwen2", "{args:?}: {v}");
    }
    let (v, stderr) = inspect_json(&vars, &["Org/Tiny-Model", "--revision", MAIN]);
    assert_eq!(arch(&v), "llama");
    assert!(stderr.contains("at commit 1111111111aa"), "{stderr}");
}

#[test]
fn a_missing_repo_lists_the_cached_repos_with_similar_names() {
    let tmp = tempfile::tempdir().unwrap();
    make_cache(tmp.path());
    let vars = [("HF_HUB_CACHE", tmp.path())];
    let (code, stdout, stderr) = run(orient(&vars).args(["inspect", "org/tiny-modle"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("org/tiny-modle is not a file or folder here")
            && stderr.contains("orient never downloads")
            && stderr.contains("Org/Tiny-Model, Org/Tiny-Model-Instruct")
            && stderr.contains("3 model repos in all")
            && !stderr.contains("unrelated"),
        "{stderr}"
    );
    // Nothing similar: the error says so and shows what is there.
    let (code, _, stderr) = run(orient(&vars).args(["inspect", "zzz/qqqqqqqqqq"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("None of its 3 model repos has a similar name"),
        "{stderr}"
    );
}

#[test]
fn a_missing_revision_lists_the_refs_and_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    make_cache(tmp.path());
    let vars = [("HF_HUB_CACHE", tmp.path())];
    let (code, _, stderr) =
        run(orient(&vars).args(["inspect", "Org/Tiny-Model", "--revision", "v2"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("revision `v2` is not in the cache")
            && stderr.contains("refs: main → 1111111111aa, v1 → 2222222222dd")
            && stderr.contains("snapshots: 1111111111aa, 2222222222dd"),
        "{stderr}"
    );
    // A ref whose snapshot is gone (an interrupted download).
    let repo = tmp.path().join("models--Org--Tiny-Model");
    std::fs::write(
        repo.join("refs/broken"),
        "3333333333333333333333333333333333333333",
    )
    .unwrap();
    let (code, _, stderr) =
        run(orient(&vars).args(["inspect", "Org/Tiny-Model", "--revision", "broken"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("points to commit 3333"), "{stderr}");
    // A revision that would leave refs/ is refused before any file is read.
    let (code, _, stderr) =
        run(orient(&vars).args(["inspect", "Org/Tiny-Model", "--revision", "../../x"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("not a valid ref name"), "{stderr}");
}

#[test]
fn hf_home_is_the_fallback_and_no_cache_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    make_cache(&tmp.path().join("hub"));
    let (v, _) = inspect_json(&[("HF_HOME", tmp.path())], &["Org/Tiny-Model@v1"]);
    assert_eq!(arch(&v), "qwen2");
    // HF_HUB_CACHE wins over HF_HOME.
    let other = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(
        orient(&[("HF_HOME", tmp.path()), ("HF_HUB_CACHE", other.path())])
            .args(["inspect", "Org/Tiny-Model"]),
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("The cache holds no model repos"),
        "{stderr}"
    );
    let gone = tmp.path().join("nowhere");
    let (code, _, stderr) =
        run(orient(&[("HF_HUB_CACHE", &gone)]).args(["inspect", "Org/Tiny-Model"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("does not exist; orient never downloads"),
        "{stderr}"
    );
}

#[test]
fn an_existing_local_path_wins_over_a_repo_id() {
    let tmp = tempfile::tempdir().unwrap();
    make_cache(&tmp.path().join("cache"));
    // A local folder spelled like the repo id, holding the gpt2 fixture.
    let local = tmp.path().join("Org/Tiny-Model");
    std::fs::create_dir_all(&local).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("gpt2").join(file), local.join(file)).unwrap();
    }
    let cache = tmp.path().join("cache");
    let (code, stdout, stderr) = run(orient(&[("HF_HUB_CACHE", &cache)])
        .current_dir(tmp.path())
        .args(["inspect", "Org/Tiny-Model", "--json"]));
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(arch(&v), "gpt2");
    assert!(!stderr.contains("note:"), "{stderr}");
}

#[test]
fn every_model_command_takes_a_repo_id() {
    let tmp = tempfile::tempdir().unwrap();
    make_cache(tmp.path());
    let vars = [("HF_HUB_CACHE", tmp.path())];
    // diff: two revisions of one repo (llama vs qwen2: nothing pairs up cleanly → exit 1).
    let (code, stdout, stderr) =
        run(orient(&vars).args(["diff", "Org/Tiny-Model@main", "Org/Tiny-Model@v1", "--json"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(serde_json::from_str::<Value>(&stdout).is_ok());
    // diff of a revision with itself: identical.
    let (code, _, stderr) =
        run(orient(&vars).args(["diff", "Org/Tiny-Model", "Org/Tiny-Model@main"]));
    assert_eq!(code, 0, "{stderr}");
    // run and verify (the qwen2 snapshot against the fixture's own reference).
    let (code, stdout, stderr) = run(orient(&vars).args([
        "run",
        "Org/Tiny-Model",
        "--revision",
        "v1",
        "--tokens",
        "1,2,3",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("qwen2"), "{stdout}");
    let reference = fixture("qwen2").join("reference.safetensors");
    let (code, _, stderr) = run(orient(&vars)
        .args(["verify", "Org/Tiny-Model@v1", "--reference"])
        .arg(&reference));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(orient(&vars).args([
        "verify",
        "Org/Tiny-Model@v1",
        "--against",
        fixture("qwen2").to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{stderr}");
    // convert reads the snapshot (a dry run writes nothing).
    let out = tmp.path().join("out");
    let (code, stdout, stderr) = run(orient(&vars)
        .args(["convert", "Org/Tiny-Model", "--to", "flax", "--dry-run"])
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("kernel"), "{stdout}");
    assert!(!out.exists());
    // lint.
    let (code, _, stderr) = run(orient(&vars).args(["lint", "Org/Tiny-Model@v1"]));
    assert_eq!(code, 0, "{stderr}");
}
