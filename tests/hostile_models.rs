//! Models and references a hostile (or unlucky) user hands to `run`, `verify`, `convert` and
//! `diff`: each must end in the right exit code with a message that says what is wrong, never
//! a panic, an abort or a check that passes on nothing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn orient() -> Command {
    Command::cargo_bin("orient").unwrap()
}

/// A copy of fixture `name` (weights and config only) inside `dir`, its `config.json` passed
/// through `edit`.
fn copy_fixture(name: &str, dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for file in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture(name).join(file), dst.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(dst.join("config.json")).unwrap();
    std::fs::write(dst.join("config.json"), edit(config)).unwrap();
    dst
}

/// Adds (or overrides) a top-level field of a config.json text.
fn with_field(config: String, field: &str, value: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v[field] = serde_json::from_str(value).unwrap();
    serde_json::to_string_pretty(&v).unwrap()
}

/// Issue 8, item 6: an odd head_dim used to panic in rope.rs (or, with nKV = nH, run a wrong
/// RoPE silently). transformers' rotate_half cannot run it either: refused when the config is
/// resolved, by every command, with exit 2.
#[test]
fn odd_head_dim_is_refused_at_config_resolution() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen2", "llama"] {
        let model = copy_fixture(name, dir.path(), |c| with_field(c, "head_dim", "5"));
        for args in [
            vec!["run", "--tokens", "1,2,3"],
            vec!["verify", "--against"],
            vec!["inspect"],
        ] {
            let mut cmd = orient();
            cmd.args(&args);
            if args[0] == "verify" {
                cmd.arg(fixture(name));
            }
            cmd.arg(&model)
                .assert()
                .code(2)
                .stderr(predicate::str::contains("config.json"))
                .stderr(predicate::str::contains("`head_dim` is 5"))
                .stderr(predicate::str::contains("must be even"))
                .stderr(predicate::str::contains("panicked").not());
        }
    }
    // Derived rather than given: hidden 66 over 6 heads is D = 11.
    let model = copy_fixture("mistral", dir.path(), |c| {
        let c = with_field(c, "hidden_size", "66");
        let c = with_field(c, "num_attention_heads", "6");
        with_field(c, "head_dim", "null")
    });
    orient()
        .args(["run", "--tokens", "1"])
        .arg(&model)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "`head_dim` is 11 (hidden_size / num_attention_heads = 66 / 6)",
        ));
}
