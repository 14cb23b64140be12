//! BERT (an encoder: no LM head) through `orient verify` and `orient run`: hidden states and
//! the pooler output against transformers 5.24's `BertModel` on the 208-token reference (192
//! real tokens of two token types, then 16 padding positions the attention mask removes), for
//! f32 and bf16 weights and for the Flax twin.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use predicates::prelude::*;
use serde_json::Value;

/// `verify --json MODEL --reference REF` must pass, every compared stage within 1e-4 of
/// transformers; returns the (stage label, max |Δ|) rows.
fn check(model: &str, reference: &str) -> Vec<(String, f64)> {
    let out = orient()
        .args(["verify", "--json"])
        .arg(fixture(model))
        .arg("--reference")
        .arg(fixture(reference).join("reference.safetensors"))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["passed"], true, "{model}: {v}");
    assert_eq!(v["tokens"], 208, "{model}");
    v["comparison"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let max = r["diff"]["max_abs"].as_f64().unwrap();
            assert!(max <= 1e-4, "{model}: {r}");
            let stage = &r["stage"];
            let label = match stage["layer"].as_u64() {
                Some(l) => format!("{} {l}", stage["kind"].as_str().unwrap()),
                None => stage["kind"].as_str().unwrap().to_string(),
            };
            (label, max)
        })
        .collect()
}

fn labels(rows: &[(String, f64)]) -> Vec<&str> {
    rows.iter().map(|(l, _)| l.as_str()).collect()
}

/// Every hidden state transformers stored (embedding output after its LayerNorm, both
/// layers, the last one being `last_hidden_state`) and the pooler output.
#[test]
fn bert_matches_transformers_with_token_types_and_padding() {
    let rows = check("bert", "bert");
    assert_eq!(
        labels(&rows),
        ["embedding", "layer 0", "layer 1", "pooler"],
        "{rows:?}"
    );
}

/// bf16 weights: the reference keeps the last hidden state and the pooler output.
#[test]
fn bert_bf16_matches_transformers_on_upcast_weights() {
    let rows = check("bert-bf16", "bert-bf16");
    assert_eq!(labels(&rows), ["layer 1", "pooler"], "{rows:?}");
}

/// transformers 4.x's own FlaxBertModel file (bare names, `kernel` `[in, out]`, LayerNorm
/// `scale`) against the PyTorch reference, and bit for bit against the HF file.
#[test]
fn bert_flax_twin_matches_transformers_and_its_hf_file_exactly() {
    let rows = check("bert-flax", "bert");
    assert_eq!(labels(&rows).len(), 4);
    let out = orient()
        .args(["verify", "--json", "--atol", "0", "--rtol", "0"])
        .arg(fixture("bert-flax"))
        .arg("--against")
        .arg(fixture("bert"))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let rows = v["comparison"]["rows"].as_array().unwrap();
    assert_eq!(rows.last().unwrap()["stage"]["kind"], "pooler");
    for row in rows {
        assert_eq!(row["diff"]["max_abs"], 0.0, "{row}");
    }
}

/// `run` on an encoder shows its outputs (no next-token candidates: BERT has no LM head), and
/// `--save` writes hidden states and the pooler output that `verify --reference` reads back.
#[test]
fn run_an_encoder_and_save_what_verify_reads_back() {
    let out = orient()
        .args(["run", "--json", "--tokens", "5,17,200,2,99"])
        .arg(fixture("bert"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["positions"].as_array().unwrap().len(), 0);
    assert_eq!(
        v["encoder"]["last_hidden_state"],
        serde_json::json!([5, 32])
    );
    let pooler = v["encoder"]["pooler_output"].as_array().unwrap();
    assert_eq!(pooler.len(), 32);
    assert!(pooler.iter().all(|x| x.as_f64().unwrap().abs() <= 1.0)); // tanh
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("bert.safetensors");
    orient()
        .args(["run", "--tokens", "5,17,200,2,99", "--save"])
        .arg(&saved)
        .arg(fixture("bert"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "encoder (no LM head): last_hidden_state [5, 32], pooler_output [32]",
        ));
    orient()
        .args(["verify", "--atol", "0", "--rtol", "0", "--reference"])
        .arg(&saved)
        .arg(fixture("bert-flax"))
        .assert()
        .code(0)
        .stdout(predicate::str::contains("pooler"));
}

/// A decoder's reference for an encoder, and an encoder's for a decoder, are refused by name.
#[test]
fn references_of_the_other_kind_are_refused() {
    orient()
        .args(["verify"])
        .arg(fixture("bert"))
        .arg("--reference")
        .arg(fixture("qwen2/reference.safetensors"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is a decoder's reference"));
    orient()
        .args(["verify"])
        .arg(fixture("qwen2"))
        .arg("--reference")
        .arg(fixture("bert/reference.safetensors"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is an encoder's reference"));
}
