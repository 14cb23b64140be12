//! `run --json` and `verify --json` carry every key README.md documents for `schema_version` 1,
//! with the documented types (the numbers themselves are checked elsewhere).
#![allow(clippy::unwrap_used)]

mod common;
use common::fixture;

use serde_json::Value;

fn json(args: &[&str], code: i32) -> Value {
    let out = assert_cmd::Command::cargo_bin("orient")
        .unwrap()
        .args(args)
        .assert()
        .code(code)
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

/// The object's keys, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[test]
fn run_json_schema() {
    let qwen2 = fixture("qwen2");
    let v = json(
        &[
            "run",
            qwen2.to_str().unwrap(),
            "--prompt",
            "The quick brown fox",
            "--top-k",
            "3",
            "--json",
        ],
        0,
    );
    assert_eq!(
        keys(&v),
        [
            "convention",
            "encoder",
            "input_ids",
            "model",
            "model_type",
            "notes",
            "positions",
            "prompt",
            "saved",
            "schema_version",
            "tokens"
        ]
    );
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["convention"], "hf");
    assert_eq!(v["model_type"], "qwen2");
    assert_eq!(v["tokens"], 9);
    assert_eq!(v["input_ids"].as_array().unwrap().len(), 9);
    assert_eq!(v["prompt"], "The quick brown fox");
    assert!(v["saved"].is_null());
    assert!(v["encoder"].is_null());
    let p = &v["positions"][0];
    assert_eq!(keys(p), ["position", "text", "top"]);
    assert_eq!(p["position"], 8);
    assert_eq!(keys(&p["top"][0]), ["logit", "prob", "token"]);
    assert_eq!(p["text"].as_array().unwrap().len(), 3);
    // with --tokens: no text, a null prompt; notes name what loading noticed
    let buggy = fixture("qwen2-buggy");
    let v = json(
        &["run", buggy.to_str().unwrap(), "--tokens", "1,2", "--json"],
        0,
    );
    assert!(v["prompt"].is_null());
    assert!(v["positions"][0].get("text").is_none());
    let note = &v["notes"][0];
    assert_eq!(keys(note), ["expected", "found", "kind", "name"]);
    assert_eq!(note["kind"], "read_transposed");
}

#[test]
fn verify_json_schema() {
    let (buggy, qwen2) = (fixture("qwen2-buggy"), fixture("qwen2"));
    let v = json(
        &[
            "verify",
            buggy.to_str().unwrap(),
            "--against",
            qwen2.to_str().unwrap(),
            "--generate",
            "3",
            "--json",
        ],
        1,
    );
    assert_eq!(
        keys(&v),
        [
            "against",
            "against_kind",
            "against_notes",
            "comparison",
            "first_failure",
            "generation",
            "model",
            "notes",
            "passed",
            "prompt",
            "reference_notes",
            "schema_version",
            "tokens"
        ]
    );
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["against_kind"], "model");
    assert_eq!(v["tokens"], 80);
    assert_eq!(v["prompt"], "fixed 80-token default prompt");
    assert_eq!(v["passed"], false);
    assert_eq!(v["first_failure"], "layer 0's attention");
    let c = &v["comparison"];
    assert_eq!(keys(c), ["first_failure", "rows", "tolerance"]);
    assert_eq!(c["first_failure"], 1);
    assert_eq!(keys(&c["tolerance"]), ["atol", "rtol"]);
    let rows = c["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    let row = &rows[1];
    assert_eq!(keys(row), ["agreement", "diff", "stage"]);
    assert_eq!(row["stage"]["kind"], "attention");
    assert_eq!(row["stage"]["layer"], 0);
    assert_eq!(
        keys(&row["diff"]),
        [
            "count",
            "exceeding",
            "max_abs",
            "max_rel",
            "mean_abs",
            "nmse",
            "nmse_db"
        ]
    );
    assert!(row["agreement"].is_null());
    let logits = rows.last().unwrap();
    assert_eq!(logits["stage"]["kind"], "lm_head");
    assert_eq!(
        keys(&logits["agreement"]),
        [
            "kl_max",
            "kl_mean",
            "positions",
            "top10_overlap",
            "top1_agree",
            "top5_overlap"
        ]
    );
    let g = &v["generation"];
    assert_eq!(
        keys(g),
        [
            "against_generated_ids",
            "first_difference",
            "generated_ids",
            "new_tokens",
            "passed"
        ]
    );
    let d = &g["first_difference"];
    assert_eq!(
        keys(d),
        [
            "a",
            "a_top",
            "b",
            "b_top",
            "index",
            "position",
            "within_top5"
        ]
    );
    assert_eq!(d["position"], 80);
    // against a reference file: no generation, reference notes
    let v = json(
        &[
            "verify",
            qwen2.to_str().unwrap(),
            "--reference",
            fixture("qwen2/reference.safetensors").to_str().unwrap(),
            "--json",
        ],
        0,
    );
    assert_eq!(v["against_kind"], "reference");
    assert!(v["generation"].is_null());
    assert_eq!(v["reference_notes"], Value::Array(Vec::new()));
    assert_eq!(v["passed"], true);
}

/// The verify table with the new columns, on a relayout (every number exact, so the snapshot
/// holds on any CPU), with `--generate`'s line and the verdict.
#[test]
fn verify_table_snapshot_of_an_exact_relayout() {
    let out = assert_cmd::Command::cargo_bin("orient")
        .unwrap()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "verify",
            "tests/fixtures/qwen2-flax",
            "--against",
            "tests/fixtures/qwen2",
            "--generate",
            "8",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    insta::assert_snapshot!(String::from_utf8(out).unwrap());
}

/// An encoder has no candidates: `positions` is empty and `encoder` holds its outputs.
#[test]
fn run_json_schema_of_an_encoder() {
    let bert = fixture("bert");
    let v = json(
        &["run", bert.to_str().unwrap(), "--tokens", "2,7,9", "--json"],
        0,
    );
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["positions"].as_array().unwrap().len(), 0);
    assert_eq!(keys(&v["encoder"]), ["last_hidden_state", "pooler_output"]);
    let h = v["encoder"]["last_hidden_state"].as_array().unwrap();
    assert_eq!(h[0], 3);
    assert_eq!(
        v["encoder"]["pooler_output"].as_array().unwrap().len(),
        h[1].as_u64().unwrap() as usize
    );
}
