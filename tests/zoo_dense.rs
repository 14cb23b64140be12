//! `orient verify` and `orient run` on the dense architectures of the zoo (issue 10): Gemma,
//! Gemma 2, Gemma 3 (text), Phi-3 and GPT-NeoX (parallel and sequential residual), each against
//! transformers 5.24's own logits and hidden states on a 208-token prompt
//! (`tests/fixtures/generate_zoo.py`: references computed in f32, eager attention, on the model
//! reloaded from disk), for weights stored in f32 and, where the fixture has a twin, in bf16.
//!
//! Acceptance, per fixture: max |Δlogit| ≤ 1e-4 and the same top-1 token at every position;
//! with a full reference, every hidden state within 1e-4 as well.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;
use common::{fixture, orient};

use predicates::prelude::*;
use serde_json::Value;

/// Prompt length of every zoo reference.
const T: u64 = 208;

/// `orient verify MODEL --reference REF --json --atol 1e-4 --rtol 0` must pass (exit 0); returns
/// the report.
fn verify(model: &str, reference: &str) -> Value {
    let out = orient()
        .args(["verify", "--json", "--atol", "1e-4", "--rtol", "0"])
        .arg(fixture(model))
        .arg("--reference")
        .arg(fixture(reference).join("reference.safetensors"))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

/// Checks the verify report of `model` against `reference`'s transformers outputs: logits within
/// 1e-4 with the same top-1 at all 208 positions, and `stages` compared stages (embedding, the
/// hidden states, final norm, logits), each within 1e-4. Returns max |Δlogit|.
fn matches_transformers(model: &str, reference: &str, stages: usize) -> f64 {
    let v = verify(model, reference);
    assert_eq!(v["passed"], true, "{model}: {v}");
    let rows = v["comparison"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), stages, "{model}: compared stages {rows:?}");
    for row in rows {
        let d = row["diff"]["max_abs"].as_f64().unwrap();
        assert!(d <= 1e-4, "{model}: {row}");
    }
    let logits = rows
        .iter()
        .find(|r| !r["agreement"].is_null())
        .unwrap_or_else(|| panic!("{model}: no logits row in {v}"));
    assert_eq!(logits["agreement"]["positions"], T, "{model}");
    assert_eq!(logits["agreement"]["top1_agree"], T, "{model}: top-1");
    let max = logits["diff"]["max_abs"].as_f64().unwrap();
    eprintln!("{model} vs {reference}: max |Δlogit| = {max:.3e}");
    max
}

/// A full reference of an L-layer model: embedding, layers 0..L-2, final norm, logits.
fn full(layers: usize) -> usize {
    layers + 2
}

/// A bf16 twin's reference holds the logits only.
const LOGITS_ONLY: usize = 1;

#[test]
fn gemma_matches_transformers() {
    matches_transformers("gemma", "gemma", full(2));
}

#[test]
fn gemma_bf16_matches_transformers_on_upcast_weights() {
    matches_transformers("gemma-bf16", "gemma-bf16", LOGITS_ONLY);
}

/// transformers 4.x's own Flax conversion of the gemma fixture computes transformers' logits,
/// and, the weights being the same numbers in another layout, bit-identical ones to the HF file.
#[test]
fn gemma_flax_twin_matches_transformers_and_its_hf_file_exactly() {
    matches_transformers("gemma-flax", "gemma", full(2));
    let out = orient()
        .args(["verify", "--json", "--atol", "0", "--rtol", "0"])
        .arg(fixture("gemma-flax"))
        .arg("--against")
        .arg(fixture("gemma"))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: Value = serde_json::from_slice(&out).unwrap();
    for row in v["comparison"]["rows"].as_array().unwrap() {
        assert_eq!(row["diff"]["max_abs"], 0.0, "{row}");
    }
}

#[test]
fn gemma2_softcaps_sandwich_norms_and_sliding_layers_match_transformers() {
    matches_transformers("gemma2", "gemma2", full(3));
}

#[test]
fn gemma2_bf16_matches_transformers_on_upcast_weights() {
    matches_transformers("gemma2-bf16", "gemma2-bf16", LOGITS_ONLY);
}

#[test]
fn gemma3_qk_norms_and_local_rope_match_transformers() {
    matches_transformers("gemma3", "gemma3", full(3));
}

#[test]
fn gemma3_bf16_matches_transformers_on_upcast_weights() {
    matches_transformers("gemma3-bf16", "gemma3-bf16", LOGITS_ONLY);
}

#[test]
fn phi3_fused_qkv_and_gate_up_match_transformers() {
    matches_transformers("phi3", "phi3", full(2));
}

#[test]
fn phi3_bf16_matches_transformers_on_upcast_weights() {
    matches_transformers("phi3-bf16", "phi3-bf16", LOGITS_ONLY);
}

#[test]
fn gpt_neox_parallel_residual_matches_transformers() {
    matches_transformers("gpt-neox", "gpt-neox", full(2));
}

#[test]
fn gpt_neox_bf16_matches_transformers_on_upcast_weights() {
    matches_transformers("gpt-neox-bf16", "gpt-neox-bf16", LOGITS_ONLY);
}

#[test]
fn gpt_neox_sequential_residual_matches_transformers() {
    matches_transformers("gpt-neox-seq", "gpt-neox-seq", full(2));
}

/// `orient run` on every dense zoo fixture: the next-token table for a short prompt.
#[test]
fn run_prints_the_next_tokens_of_every_dense_zoo_model() {
    for name in [
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "gpt-neox",
        "gpt-neox-seq",
    ] {
        orient()
            .args(["run", "--tokens", "5,17,200,2,99", "--top-k", "3"])
            .arg(fixture(name))
            .assert()
            .code(0)
            .stdout(predicate::str::contains("position"));
    }
}

/// The same weights under a config whose RoPE scaling the forward does not compute (Phi-3's
/// `longrope`) are refused by name, never run with the scaling ignored.
#[test]
fn phi3_longrope_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(fixture("phi3").join("config.json")).unwrap())
            .unwrap();
    let ones = vec![1.0; 8];
    config["rope_parameters"] = serde_json::json!({
        "rope_type": "longrope", "rope_theta": 10000.0,
        "short_factor": ones, "long_factor": ones,
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture("phi3").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    orient()
        .args(["run", "--tokens", "1,2,3"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "rope scaling `longrope` is not supported",
        ));
}
