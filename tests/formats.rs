//! The formats that are not safetensors, end to end through the binary: GGUF (F32, Q8_0, Q4_0,
//! an undecodable Q4_K), `pytorch_model.bin` (single, sharded, legacy, a forbidden pickle global),
//! `flax_model.msgpack` and Meta's `consolidated.NN.pth`. Every fixture under
//! `tests/fixtures/formats/models/` was made from an HF fixture by `generate_models.py` with the
//! real tools (gguf-py, torch.save, flax.serialization), so what it reads back must be exactly
//! that fixture.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use orient_inspect::{Checkpoint, Format};
use predicates::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn model(name: &str) -> PathBuf {
    fixture("formats/models").join(name)
}

fn orient() -> Command {
    Command::cargo_bin("orient").unwrap()
}

/// Every tensor as (dtype, shape, bytes).
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn load(path: &Path) -> Tensors {
    let ck = Checkpoint::open(path).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (
                    t.dtype.name().to_string(),
                    t.shape.clone(),
                    ck.view(t).bytes.to_vec(),
                ),
            )
        })
        .collect()
}

/// Converts `src` into a fresh folder and checks that the result holds exactly the tensors of
/// the fixture `want` (names, dtypes, shapes, bytes).
fn converts_to(src: &Path, args: &[&str], want: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    orient()
        .arg("convert")
        .arg(src)
        .arg(&dst)
        .args(args)
        .arg("--quiet")
        .assert()
        .success();
    let got = load(&dst.join("model.safetensors"));
    let want_t = load(&fixture(want).join("model.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want_t.keys().collect::<Vec<_>>(),
        "{} → {want}",
        src.display()
    );
    for (name, t) in &want_t {
        assert!(
            got[name] == *t,
            "{name} differs: {} vs {want}",
            src.display()
        );
    }
    assert!(dst.join("config.json").is_file());
}

#[test]
fn each_format_is_recognised_and_read_in_place_or_assembled() {
    let cases = [
        (model("mistral-f32.gguf"), Format::Gguf, 21),
        (model("mistral-q8_0.gguf"), Format::Gguf, 21),
        (model("llama-bin"), Format::PytorchBin, 21),
        (
            model("llama-bin-sharded/pytorch_model.bin.index.json"),
            Format::PytorchBin,
            21,
        ),
        (model("llama-bin-sharded"), Format::PytorchBin, 21),
        (model("llama-msgpack"), Format::FlaxMsgpack, 21),
        (model("llama-meta"), Format::Meta, 21),
        (fixture("llama"), Format::Safetensors, 21),
    ];
    for (path, format, n) in cases {
        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.format(), format, "{}", path.display());
        assert_eq!(ck.tensors().len(), n, "{}", path.display());
        assert!(ck.config().is_some(), "{}: a config", path.display());
        ck.check_intact().unwrap();
    }
}

#[test]
fn gguf_f32_converts_back_to_exactly_the_hf_checkpoint_it_was_made_from() {
    converts_to(&model("mistral-f32.gguf"), &[], "mistral");
    converts_to(
        &model("mistral-f32.gguf"),
        &["--to", "flax"],
        "mistral-flax",
    );
}

#[test]
fn gguf_q8_0_and_q4_0_convert_to_exactly_what_gguf_py_dequantizes() {
    // The `-dequantized` fixtures are gguf.quants.dequantize of each file's tensors, read back
    // with GGUFReader, in HF layout (generate_models.py quant). The llama-arch Q8_0 file's q/k
    // go through the gather path (un-permuted), everything else streams.
    converts_to(
        &model("mistral-q8_0.gguf"),
        &[],
        "formats/models/mistral-q8_0-dequantized",
    );
    converts_to(
        &model("qwen2-q4_0.gguf"),
        &[],
        "formats/models/qwen2-q4_0-dequantized",
    );
    // Through Flax and back: every quantized kernel transposed on the way out.
    let tmp = tempfile::tempdir().unwrap();
    let flax = tmp.path().join("flax");
    orient()
        .arg("convert")
        .arg(model("qwen2-q4_0.gguf"))
        .arg(&flax)
        .args(["--to", "flax", "--quiet"])
        .assert()
        .success();
    converts_to(
        &flax,
        &["--to", "hf"],
        "formats/models/qwen2-q4_0-dequantized",
    );
}

#[test]
fn gguf_qwen2_is_not_rope_permuted_and_keeps_its_biases() {
    // convert_hf_to_gguf permutes q/k for the llama architecture only: a qwen2 file read with
    // the llama permutation would differ here.
    converts_to(&model("qwen2-f32.gguf"), &[], "qwen2");
    orient()
        .arg("verify")
        .arg(model("qwen2-f32.gguf"))
        .arg("--reference")
        .arg(fixture("qwen2/reference.safetensors"))
        .assert()
        .success();
}

#[test]
fn gguf_config_is_reconstructed_from_metadata_and_says_what_it_cannot_know() {
    let ck = Checkpoint::open(model("mistral-f32.gguf")).unwrap();
    let cfg = ck.config().unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.vocab_size
        ),
        (64, 2, 4, 1, 512)
    );
    let notes: Vec<String> = ck.notes().iter().map(|n| n.to_string()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("reconstructed") && n.contains("sliding_window")),
        "{notes:?}"
    );
}

#[test]
fn gguf_inspect_lists_metadata_keys_and_reads_the_gguf_convention() {
    orient()
        .arg("inspect")
        .arg(model("mistral-f32.gguf"))
        .assert()
        .success()
        .stdout(predicate::str::contains("llama.attention.head_count_kv=1"))
        .stdout(predicate::str::contains("convention:    gguf"))
        .stdout(predicate::str::contains(
            "q rows interleaved (LlamaModel.permute, nH)",
        ))
        .stdout(predicate::str::contains(
            "k rows interleaved (LlamaModel.permute, nKV)",
        ));
}

#[test]
fn gguf_f32_verifies_against_the_transformers_reference() {
    orient()
        .arg("verify")
        .arg(model("mistral-f32.gguf"))
        .arg("--reference")
        .arg(fixture("mistral/reference.safetensors"))
        .assert()
        .success();
}

#[test]
fn gguf_q8_0_runs_and_its_logit_error_against_f32_is_reported_and_bounded() {
    let out = orient()
        .arg("verify")
        .arg(model("mistral-q8_0.gguf"))
        .arg("--reference")
        .arg(fixture("mistral/reference.safetensors"))
        .arg("--json")
        .assert()
        .code(1) // over the f32 tolerance, as quantization must be
        .stderr(predicate::str::contains(
            "14 block-quantized tensors (Q8_0/Q4_0) are read dequantized to F32",
        ))
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let rows = v["comparison"]["rows"].as_array().unwrap();
    let logits = rows
        .iter()
        .find(|r| r["stage"]["kind"] == "lm_head")
        .unwrap();
    let max_abs = logits["diff"]["max_abs"].as_f64().unwrap();
    // Measured 0.148 (top-1 agreement 77/80) on this random-weight fixture: Q8_0 moves the
    // logits, but not by more than a quarter.
    assert!(
        max_abs > 1e-3 && max_abs < 0.25,
        "logits max |Δ| = {max_abs}"
    );
    orient()
        .arg("run")
        .arg(model("mistral-q8_0.gguf"))
        .args(["--tokens", "1,2,3"])
        .assert()
        .success();
}

#[test]
fn gguf_types_orient_cannot_decode_are_listed_and_refused_by_name() {
    orient()
        .arg("inspect")
        .arg(model("q4_k.gguf"))
        .assert()
        .success()
        .stdout(predicate::str::contains("blk.0.attn_q.weight (Q4_K)"));
    let tmp = tempfile::tempdir().unwrap();
    orient()
        .arg("convert")
        .arg(model("q4_k.gguf"))
        .arg(tmp.path().join("out"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "tensor `blk.0.attn_q.weight` is stored as Q4_K, a ggml type orient cannot decode",
        ));
    assert!(!tmp.path().join("out").exists());
    orient()
        .arg("run")
        .arg(model("q4_k.gguf"))
        .args(["--tokens", "1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("stored as Q4_K"));
}

#[test]
fn gguf_diff_against_hf_names_the_rope_permutation() {
    orient()
        .arg("diff")
        .arg(model("mistral-f32.gguf"))
        .arg(fixture("mistral"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains("rope-permute(heads=4, to=half"))
        .stdout(predicate::str::contains("rope-permute(heads=1, to=half"));
    orient()
        .arg("diff")
        .arg(model("mistral-f32.gguf"))
        .arg(fixture("mistral"))
        .args(["--expect-conversion", "gguf-to-hf"])
        .assert()
        .success();
}

#[test]
fn pytorch_bin_single_and_sharded_inspect_and_convert_bit_identically() {
    for src in ["llama-bin", "llama-bin-sharded"] {
        orient()
            .arg("inspect")
            .arg(model(src))
            .assert()
            .success()
            .stdout(predicate::str::contains("convention:    hf"));
        converts_to(&model(src), &[], "llama");
    }
    converts_to(&model("llama-bin"), &["--to", "flax"], "llama-flax");
    orient()
        .arg("verify")
        .arg(model("llama-bin-sharded"))
        .arg("--reference")
        .arg(fixture("llama/reference.safetensors"))
        .assert()
        .success();
}

#[test]
fn legacy_torch_files_are_refused_saying_so() {
    orient()
        .arg("inspect")
        .arg(fixture("formats/torch/legacy.bin"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "this is the legacy PyTorch format (torch < 1.6",
        ));
}

#[test]
fn a_pickle_with_a_forbidden_global_is_refused_naming_it() {
    for cmd in ["inspect", "run"] {
        let mut c = orient();
        c.arg(cmd).arg(model("forbidden.bin"));
        if cmd == "run" {
            c.args(["--tokens", "1"]);
        }
        c.assert()
            .code(2)
            .stderr(predicate::str::contains("the global `posix.system`"))
            .stderr(predicate::str::contains("nothing is executed"));
    }
}

#[test]
fn flax_msgpack_converts_to_exactly_the_hf_and_flax_fixtures() {
    converts_to(&model("llama-msgpack"), &[], "llama");
    converts_to(&model("llama-msgpack"), &["--to", "flax"], "llama-flax");
    orient()
        .arg("inspect")
        .arg(model("llama-msgpack"))
        .assert()
        .success()
        .stdout(predicate::str::contains("convention:    flax"));
}

#[test]
fn meta_shards_are_concatenated_unpermuted_and_convert_to_exactly_the_hf_fixture() {
    converts_to(&model("llama-meta"), &[], "llama");
    orient()
        .arg("inspect")
        .arg(model("llama-meta"))
        .assert()
        .success()
        .stdout(predicate::str::contains("convention:    meta"))
        .stdout(predicate::str::contains("wq rows interleaved (nH)"))
        .stdout(predicate::str::contains("(sharded, 2 shards)"));
}

#[test]
fn config_flag_supplies_what_params_json_cannot() {
    // The llama fixture has llama3 RoPE scaling, which params.json (no Llama version) cannot state.
    let ck = Checkpoint::open(model("llama-meta")).unwrap();
    assert!(ck.config().unwrap().rope_scaling.is_none());
    orient()
        .arg("verify")
        .arg(model("llama-meta"))
        .arg("--config")
        .arg(fixture("llama/config.json"))
        .arg("--reference")
        .arg(fixture("llama/reference.safetensors"))
        .assert()
        .success();
    orient()
        .arg("inspect")
        .arg(model("llama-meta"))
        .arg("--config")
        .arg(fixture("no-such/config.json"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no-such/config.json"));
}

/// A copy of the sharded `.bin` fixture whose index is `index` (JSON text).
fn sharded_bin_with_index(index: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(model("llama-bin-sharded")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    std::fs::write(tmp.path().join("pytorch_model.bin.index.json"), index).unwrap();
    tmp
}

#[test]
fn a_bin_index_is_held_to_the_safetensors_index_rules() {
    let text =
        std::fs::read_to_string(model("llama-bin-sharded/pytorch_model.bin.index.json")).unwrap();
    let cases = [
        (
            text.replacen(
                "\"pytorch_model-00001-of-00002.bin\"",
                "\"../pytorch_model-00001-of-00002.bin\"",
                1,
            ),
            "is not a plain file name in the model folder",
        ),
        (
            text.replacen(
                "\"pytorch_model-00002-of-00002.bin\"",
                "\"pytorch_model-00003-of-00003.bin\"",
                1,
            ),
            "which does not exist",
        ),
        (
            text.replacen("\"lm_head.weight\"", "\"lm_head.renamed\"", 1),
            "not listed in",
        ),
    ];
    for (index, message) in cases {
        let dir = sharded_bin_with_index(&index);
        orient()
            .arg("inspect")
            .arg(dir.path())
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    }
}
