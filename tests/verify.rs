//! `orient run` and `orient verify` from the command line: exit codes and what they print.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use predicates::prelude::*;

#[test]
fn verify_buggy_qwen2_fails_at_layer_0_attention() {
    orient()
        .args(["verify"])
        .arg(fixture("qwen2-buggy"))
        .arg("--against")
        .arg(fixture("qwen2"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains("first divergence at layer 0's attention"))
        .stdout(predicate::str::contains(
            "`model.layers.0.self_attn.k_proj.weight` is stored [64, 32] but should be [32, 64]: read as its transpose",
        ));
}

#[test]
fn verify_buggy_qwen2_json_names_the_stage() {
    let out = orient()
        .args(["verify", "--json"])
        .arg(fixture("qwen2-buggy"))
        .arg("--against")
        .arg(fixture("qwen2"))
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["passed"], false);
    let first = v["comparison"]["first_failure"].as_u64().unwrap() as usize;
    assert_eq!(v["comparison"]["rows"][first]["stage"]["kind"], "attention");
    assert_eq!(v["comparison"]["rows"][first]["stage"]["layer"], 0);
}

#[test]
fn verify_flax_against_transformers_reference_passes() {
    orient()
        .args(["verify"])
        .arg(fixture("qwen2-flax"))
        .arg("--reference")
        .arg(fixture("qwen2/reference.safetensors"))
        .assert()
        .code(0)
        .stdout(predicate::str::contains("80/80"))
        .stdout(predicate::str::contains("PASS"));
}

/// `verify A --against B` passes with no difference at all, at every stage.
fn assert_same_bits(a: &std::path::Path, b: &std::path::Path) {
    let out = orient()
        .args(["verify", "--json", "--atol", "0", "--rtol", "0"])
        .arg(a)
        .arg("--against")
        .arg(b)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for row in v["comparison"]["rows"].as_array().unwrap() {
        assert_eq!(row["diff"]["max_abs"], 0.0, "{row}");
    }
}

#[test]
fn verify_hf_against_its_flax_twin_is_exact() {
    assert_same_bits(&fixture("gpt2"), &fixture("gpt2-flax"));
}

#[test]
fn run_saves_a_file_verify_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("out.safetensors");
    let tokens = "5,17,300,2,99,511,0,42";
    orient()
        .args(["run", "--top-k", "2", "--tokens", tokens, "--save"])
        .arg(&saved)
        .arg(fixture("qwen3"))
        .assert()
        .success()
        .stdout(predicate::str::contains("position"));
    // the same model against its own saved output: exact
    orient()
        .args(["verify", "--atol", "0", "--rtol", "0", "--reference"])
        .arg(&saved)
        .arg(fixture("qwen3"))
        .assert()
        .code(0);
    // another model with the same vocabulary: fails at once, at the embedding
    orient()
        .args(["verify", "--reference"])
        .arg(&saved)
        .arg(fixture("qwen2"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "first divergence at the embedding",
        ));
}

#[test]
fn run_rejects_out_of_vocabulary_tokens_with_exit_2() {
    orient()
        .args(["run", "--tokens", "1,512"])
        .arg(fixture("llama"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "token 512 at position 1 is outside the vocabulary of 512",
        ));
}

#[test]
fn run_json_lists_top_k_at_every_position() {
    let out = orient()
        .args([
            "run",
            "--json",
            "--all-positions",
            "--top-k",
            "3",
            "--tokens",
            "1,2,3,4",
        ])
        .arg(fixture("mistral-flax"))
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["convention"], "flax");
    let positions = v["positions"].as_array().unwrap();
    assert_eq!(positions.len(), 4);
    for p in positions {
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert!(top[0]["logit"].as_f64().unwrap() >= top[1]["logit"].as_f64().unwrap());
    }
}

#[test]
fn demo_inspects_converts_and_verifies_the_bundled_flax_qwen2() {
    orient()
        .arg("demo")
        .arg("--fixtures")
        .arg(fixture(""))
        .assert()
        .code(0)
        .stdout(predicate::str::contains("== step 1/3: inspect"))
        .stdout(predicate::str::contains("square: orientation unproven"))
        .stdout(predicate::str::contains(
            "== step 2/3: convert to HF layout",
        ))
        .stdout(predicate::str::contains(
            "27 tensors (15 transposed, 0 cast, 0 skipped)",
        ))
        .stdout(predicate::str::contains("== step 3/3: verify"))
        .stdout(predicate::str::contains("qwen2-hf against reference"))
        .stdout(predicate::str::contains("80/80"))
        .stdout(predicate::str::contains("PASS"));
}

/// `orient verify --layout` on the made-up JAX port of qwen2: passes against transformers'
/// reference, with exactly the numbers of verifying qwen2 itself.
#[test]
fn verify_a_port_through_its_layout_file() {
    let verify = |model: &str, layout: bool| -> serde_json::Value {
        let mut c = orient();
        c.args(["verify", "--json"]).arg(fixture(model));
        if layout {
            c.arg("--layout").arg(fixture("qwen2-port/layout.toml"));
        }
        let out = c
            .arg("--reference")
            .arg(fixture("qwen2/reference.safetensors"))
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice(&out).unwrap()
    };
    let port = verify("qwen2-port", true);
    let qwen2 = verify("qwen2", false);
    assert_eq!(port["passed"], true);
    assert!(
        port["comparison"]["rows"][4]["diff"]["max_abs"]
            .as_f64()
            .unwrap()
            <= 1e-4
    );
    assert_eq!(port["comparison"], qwen2["comparison"]);
}

/// `orient run --layout`: the port's next-token candidates are qwen2's, bit for bit, and the
/// header names the layout it was read in.
#[test]
fn run_a_port_through_its_layout_file() {
    let run = |model: &str, layout: bool| -> serde_json::Value {
        let mut c = orient();
        c.args([
            "run",
            "--json",
            "--all-positions",
            "--tokens",
            "5,17,300,2,99,511,0,42",
        ])
        .arg(fixture(model));
        if layout {
            c.arg("--layout").arg(fixture("qwen2-port/layout.toml"));
        }
        let out = c.assert().success().get_output().stdout.clone();
        serde_json::from_slice(&out).unwrap()
    };
    let port = run("qwen2-port", true);
    assert_eq!(port["convention"], "qwen2-jax-port");
    assert_eq!(port["notes"], serde_json::json!([]));
    assert_eq!(port["positions"], run("qwen2", false)["positions"]);
}

/// Without its layout file the port cannot be read: exit 2, naming a missing tensor and the
/// tensors no convention recognised, and saying what to do.
#[test]
fn a_port_without_its_layout_file_is_refused_with_a_hint() {
    orient()
        .arg("verify")
        .arg(fixture("qwen2-port"))
        .arg("--against")
        .arg(fixture("qwen2"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing tensor `model.embed_tokens.embedding`"))
        .stderr(predicate::str::contains(
            "24 of its 25 tensors (e.g. `params.decoder.layer_0.attn.bk`) have names no known layout gives a qwen2 model",
        ))
        .stderr(predicate::str::contains("pass --layout FILE"));
    // With it, against qwen2 itself: exact at every stage.
    let out = orient()
        .args(["verify", "--json", "--atol", "0", "--rtol", "0"])
        .arg(fixture("qwen2-port"))
        .arg("--layout")
        .arg(fixture("qwen2-port/layout.toml"))
        .arg("--against")
        .arg(fixture("qwen2"))
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    for row in v["comparison"]["rows"].as_array().unwrap() {
        assert_eq!(row["diff"]["max_abs"], 0.0, "{row}");
    }
}

/// bf16 weights go to the AMX tiles where the CPU has them (`ORIENT_KERNELS=auto`, the
/// default) and to gemm's f32 kernels with `ORIENT_KERNELS=portable`: either way every bf16
/// fixture matches transformers, decoders and encoder, dense and MoE, fused and gathered views.
#[test]
fn bf16_fixtures_verify_against_transformers_with_either_kernel_choice() {
    for name in [
        "llama-bf16",
        "gemma-bf16",
        "gemma2-bf16",
        "gemma3-bf16",
        "gpt-neox-bf16",
        "phi3-bf16",
        "qwen2-moe-bf16",
        "bert-bf16",
    ] {
        for kernels in ["auto", "portable"] {
            orient()
                .env("ORIENT_KERNELS", kernels)
                .args(["verify", "--atol", "1e-4", "--rtol", "0"])
                .arg(fixture(name))
                .arg("--reference")
                .arg(fixture(name).join("reference.safetensors"))
                .assert()
                .code(0);
        }
    }
}

/// A bf16 model and its Flax conversion (kernels `[in, out]`, gathered for the tiles) give the
/// same bits, as f32 checkpoints do.
#[test]
fn a_bf16_model_and_its_flax_conversion_give_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let flax = dir.path().join("flax");
    orient()
        .args(["convert", "--to", "flax", "--quiet"])
        .arg(fixture("llama-bf16"))
        .arg(&flax)
        .assert()
        .code(0);
    assert_same_bits(&fixture("llama-bf16"), &flax);
}

#[test]
fn an_unknown_kernel_choice_is_an_error() {
    orient()
        .env("ORIENT_KERNELS", "fastest")
        .args(["run", "--tokens", "1,2"])
        .arg(fixture("llama-bf16"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "ORIENT_KERNELS=\"fastest\" is not a kernel choice: use `auto` or `portable`",
        ));
}
