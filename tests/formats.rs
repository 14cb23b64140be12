//! The formats that are not safetensors, end to end through the binary: GGUF (F32, Q8_0, Q4_0,
//! an undecodable Q4_K), `pytorch_model.bin` (single, sharded, legacy, a forbidden pickle global),
//! `flax_model.msgpack` and Meta's `consolidated.NN.pth`. Every fixture under
//! `tests/fixtures/formats/models/` was made from an HF fixture by `generate_models.py` with the
//! real tools (gguf-py, torch.save, flax.serialization), so what it reads back must be exactly
//! that fixture.
#![allow(clippy::unwrap_used)]

mod common;
use common::{assert_same_tensors, fixture, orient, tensors};

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use orient_inspect::{Checkpoint, Format};
use predicates::prelude::*;

fn model(name: &str) -> PathBuf {
    fixture("formats/models").join(name)
}

/// `orient verify MODEL --reference REFERENCE`, to which a test adds its own flags.
fn verify(model: impl AsRef<OsStr>, reference: impl AsRef<OsStr>) -> assert_cmd::Command {
    let mut cmd = orient();
    cmd.arg("verify")
        .arg(model)
        .arg("--reference")
        .arg(reference);
    cmd
}

/// Converts `src` (with `args`) into `dst`, which must not exist yet.
fn convert(src: &Path, args: &[&str], dst: &Path) {
    orient()
        .arg("convert")
        .arg(src)
        .arg(dst)
        .args(args)
        .arg("--quiet")
        .assert()
        .success();
    assert!(dst.join("config.json").is_file());
}

/// Converts `src` into a fresh folder and checks that the result holds exactly the tensors of
/// the fixture `want` (names, dtypes, shapes, bytes).
fn converts_to(src: &Path, args: &[&str], want: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    convert(src, args, &dst);
    assert_same_tensors(
        &dst.join("model.safetensors"),
        &fixture(want).join("model.safetensors"),
    );
}

/// The `logits` row of a `verify --json` report: (max |Δ|, top-1 agreements, positions).
fn logits_row(report: &[u8]) -> (f64, u64, u64) {
    let v: serde_json::Value = serde_json::from_slice(report).unwrap();
    let rows = v["comparison"]["rows"].as_array().unwrap();
    let r = rows
        .iter()
        .find(|r| r["stage"]["kind"] == "lm_head")
        .unwrap();
    (
        r["diff"]["max_abs"].as_f64().unwrap(),
        r["agreement"]["top1_agree"].as_u64().unwrap(),
        r["agreement"]["positions"].as_u64().unwrap(),
    )
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
    verify(
        model("qwen2-f32.gguf"),
        fixture("qwen2/reference.safetensors"),
    )
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
    verify(
        model("mistral-f32.gguf"),
        fixture("mistral/reference.safetensors"),
    )
    .assert()
    .success();
}

#[test]
fn gguf_q8_0_runs_and_its_logit_error_against_f32_is_reported_and_bounded() {
    let out = verify(
        model("mistral-q8_0.gguf"),
        fixture("mistral/reference.safetensors"),
    )
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

fn inspect_json(path: &Path) -> serde_json::Value {
    let out = orient()
        .arg("inspect")
        .arg(path)
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn inspect_json_carries_the_format_notes_as_data() {
    use serde_json::json;
    let v = inspect_json(&model("q4_k.gguf"));
    let f = &v["summary"]["format"];
    let mut keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["config_reconstructed", "dequantized", "kind", "undecodable"]
    );
    assert_eq!(f["kind"], "gguf");
    assert_eq!(
        f["undecodable"],
        json!([{"name": "blk.0.attn_q.weight", "type": "Q4_K"}])
    );
    assert_eq!(f["dequantized"], 0);
    let rec = &f["config_reconstructed"];
    assert!(
        rec["from"].as_str().unwrap().ends_with("q4_k.gguf"),
        "{rec}"
    );
    let unknown: Vec<&str> = rec["unknown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        unknown.contains(&"hidden_size (no `llama.embedding_length` key)"),
        "{unknown:?}"
    );
    // The table says the same in words, with the count's own grammar.
    orient()
        .arg("inspect")
        .arg(model("q4_k.gguf"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            ": 1 tensor is stored in a ggml type orient cannot decode",
        ))
        .stdout(predicate::str::contains("1 tensors").not());

    let f = &inspect_json(&model("mistral-q8_0.gguf"))["summary"]["format"];
    assert_eq!(
        (f["dequantized"].clone(), f["undecodable"].clone()),
        (json!(14), json!([]))
    );

    let f = &inspect_json(&model("llama-meta"))["summary"]["format"];
    assert_eq!(f["kind"], "meta");
    assert!(f["config_reconstructed"]["from"]
        .as_str()
        .unwrap()
        .ends_with("params.json"));
    assert!(f["config_reconstructed"]["unknown"][0]
        .as_str()
        .unwrap()
        .starts_with("max_position_embeddings"));

    let f = &inspect_json(&fixture("qwen2"))["summary"]["format"];
    assert_eq!(
        *f,
        json!({"kind": "safetensors", "undecodable": [], "dequantized": 0, "config_reconstructed": null})
    );
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

// ---- transformers as the oracle: what it makes of the same files (generate_models.py oracle)

#[test]
fn gguf_files_convert_to_exactly_what_transformers_reads_from_them() {
    // transformers' GGUF loader is an independent reading (gguf-py's reader, its own tensor
    // processors: LlamaTensorProcessor un-permutes q/k, Gemma2TensorProcessor subtracts 1 from
    // the norms); gguf-transformers.json holds the CRC-32 of every tensor it produced.
    let text = std::fs::read_to_string(model("gguf-transformers.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = manifest["files"].as_object().unwrap();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["gemma-f32.gguf", "mistral-f32.gguf", "qwen2-f32.gguf"]
    );
    for (file, entry) in files {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        convert(&model(file), &[], &dst);
        let got = tensors(&dst.join("model.safetensors"));
        let want = entry["tensors"].as_object().unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{file}"
        );
        for (name, (dtype, shape, bytes)) in &got {
            let w = &want[name];
            assert_eq!(dtype, w["dtype"].as_str().unwrap(), "{file}: {name}");
            let wshape: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
            assert_eq!(shape, &wshape, "{file}: {name}");
            assert_eq!(
                u64::from(orient_inspect::formats::zip::crc32(bytes)),
                w["crc32"].as_u64().unwrap(),
                "{file}: {name} differs from transformers' reading"
            );
        }
    }
}

#[test]
fn gemma_gguf_converts_bit_for_bit_to_transformers_reading_not_to_the_original() {
    // The converter stored w + 1 in f32; transformers reads (w + 1) - 1, also in f32, which
    // is not w for most small w. orient must give what transformers gives.
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    convert(&model("gemma-f32.gguf"), &[], &dst);
    assert_same_tensors(
        &dst.join("model.safetensors"),
        &model("gemma-gguf-transformers/model.safetensors"),
    );
    let got = tensors(&dst.join("model.safetensors"));
    let original = tensors(&fixture("gemma/model.safetensors"));
    let norm = "model.layers.0.input_layernorm.weight";
    assert_ne!(got[norm].2, original[norm].2, "(w + 1) - 1 rounds in f32");
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for (a, b) in f32s(&got[norm].2).iter().zip(f32s(&original[norm].2)) {
        assert!(
            (a - b).abs() <= 6e-8,
            "{a} vs {b}: more than the rounding of 1 + w"
        );
    }
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(got[q], original[q], "gemma q rows are not permuted");
    assert!(
        !got.contains_key("lm_head.weight"),
        "tied: no output.weight"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dst.join("config.json")).unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model("gemma-gguf-transformers/config.json")).unwrap(),
    )
    .unwrap();
    for field in [
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
    ] {
        assert_eq!(cfg[field], want[field], "config.json {field}");
    }
    // transformers widens the f32 metadata value (9.99999997e-7); orient prints the f32 as
    // written (1e-6): the same f32.
    assert_eq!(
        cfg["rms_norm_eps"].as_f64().unwrap() as f32,
        want["rms_norm_eps"].as_f64().unwrap() as f32
    );
}

#[test]
fn gemma_gguf_verifies_tightly_against_transformers_logits_on_its_reading() {
    let out = verify(
        model("gemma-f32.gguf"),
        model("gemma-gguf-transformers/reference.safetensors"),
    )
    .arg("--json")
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    let (max_abs, top1, positions) = logits_row(&out);
    // Measured 1.67e-6 over 208 tokens.
    assert!(max_abs < 1e-5, "logits max |Δ| = {max_abs}");
    assert_eq!((top1, positions), (208, 208));
}

#[test]
fn gemma_gguf_inspect_shows_the_gguf_convention_and_its_norm_rule() {
    orient()
        .arg("inspect")
        .arg(model("gemma-f32.gguf"))
        .assert()
        .success()
        .stdout(predicate::str::contains("convention:    gguf"))
        .stdout(predicate::str::contains("architecture:  gemma"))
        .stdout(predicate::str::contains("gemma norm stored 1+w").count(5))
        .stdout(predicate::str::contains(
            "`output.weight` is absent: tied to model.embed_tokens.weight",
        ))
        .stdout(predicate::str::contains("no `gemma.rope.freq_base` key"));
}

/// Meta originals and what transformers' `convert_llama_weights_to_hf.write_model` made of them
/// (bf16 in, bf16 out): (Meta folder, converter output folder).
fn meta_oracles() -> [(PathBuf, PathBuf); 2] {
    [
        (fixture("formats/meta"), model("meta-transformers")),
        (model("meta-llama3"), model("meta-llama3-transformers")),
    ]
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn meta_converts_bit_for_bit_to_what_transformers_converter_writes() {
    for (src, oracle) in meta_oracles() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        convert(&src, &[], &dst);
        assert_same_tensors(
            &dst.join("model.safetensors"),
            &oracle.join("model.safetensors"),
        );
        let got = read_json(&dst.join("config.json"));
        let want = read_json(&oracle.join("config.json"));
        for field in [
            "model_type",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "rms_norm_eps",
            "vocab_size",
            "tie_word_embeddings",
        ] {
            assert_eq!(got[field], want[field], "{}: {field}", src.display());
        }
        // transformers 5 writes RoPE as rope_parameters {rope_theta, rope_type, scaling…};
        // orient as rope_theta + rope_scaling (absent for the default type).
        let mut rope = want["rope_parameters"].as_object().unwrap().clone();
        assert_eq!(
            got["rope_theta"],
            rope.remove("rope_theta").unwrap(),
            "{}",
            src.display()
        );
        if rope["rope_type"] == "default" {
            assert!(got.get("rope_scaling").is_none(), "{}", src.display());
        } else {
            assert_eq!(
                got["rope_scaling"],
                serde_json::Value::Object(rope),
                "{}",
                src.display()
            );
        }
        // The converter takes the context length from the Llama version it is told; params.json
        // does not name one, so orient leaves it out and says so.
        assert!(got.get("max_position_embeddings").is_none());
    }
    // The two roundings the fixtures pin: int(8·32/3) = 85 up to multiple_of 16 (96), and
    // int(1.3 · 85) = 110 up to multiple_of 32 (128; 96 without the multiplier).
    let sizes: Vec<_> = meta_oracles()
        .iter()
        .map(|(_, o)| read_json(&o.join("config.json"))["intermediate_size"].clone())
        .collect();
    assert_eq!(sizes, [96, 128]);
}

#[test]
fn meta_conversions_verify_against_the_logits_of_transformers_conversion() {
    // Measured max |Δlogit|: 1.10e-4 on meta/ (std-1 weights: logits up to 20), 9.5e-7 on the
    // Llama 3.1 one (top-1 160/160 both).
    for ((src, oracle), bound) in meta_oracles().into_iter().zip([2e-4, 1e-5]) {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        convert(&src, &[], &dst);
        let out = verify(&dst, oracle.join("reference.safetensors"))
            .arg("--json")
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let (max_abs, top1, positions) = logits_row(&out);
        assert!(max_abs < bound, "{}: max |Δ| = {max_abs}", src.display());
        assert_eq!((top1, positions), (160, 160), "{}", src.display());
        if src.ends_with("meta-llama3") {
            // The llama3 RoPE scaling read from use_scaled_rope matters on these 160 tokens:
            // without it the logits move by 0.08.
            let mut cfg = read_json(&dst.join("config.json"));
            cfg.as_object_mut().unwrap().remove("rope_scaling");
            let unscaled = tmp.path().join("unscaled.json");
            std::fs::write(&unscaled, cfg.to_string()).unwrap();
            verify(&dst, oracle.join("reference.safetensors"))
                .arg("--config")
                .arg(&unscaled)
                .assert()
                .code(1);
        }
    }
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
    verify(
        model("llama-bin-sharded"),
        fixture("llama/reference.safetensors"),
    )
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
    verify(model("llama-meta"), fixture("llama/reference.safetensors"))
        .arg("--config")
        .arg(fixture("llama/config.json"))
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
