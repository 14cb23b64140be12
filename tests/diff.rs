//! `orient diff` end to end: the fixtures against their buggy, Flax, bf16 and hand-modified
//! twins. Modified checkpoints are written in each test with a small safetensors writer.
#![allow(clippy::unwrap_used)]

mod common;
use common::orient;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orient_inspect::Checkpoint;
use serde_json::Value;

const FIXTURES: &str = "tests/fixtures";

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// Runs `orient diff --json` and returns (exit code, report).
fn diff_json(a: &Path, b: &Path, extra: &[&str]) -> (i32, Value) {
    let out = orient()
        .arg("diff")
        .arg(a)
        .arg(b)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

/// A's name → the pair's JSON object.
fn pairs_of(report: &Value) -> BTreeMap<String, Value> {
    report["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["a"]["name"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn verdict(p: &Value) -> &str {
    p["verdict"].as_str().unwrap_or("error")
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Writes a safetensors file: u64 header length, JSON header padded to 8, data.
fn write_safetensors(path: &Path, tensors: &[Tensor]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype,
                "shape": t.shape,
                "data_offsets": [offset, offset + t.bytes.len()],
            }),
        );
        offset += t.bytes.len();
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    for t in tensors {
        file.extend_from_slice(&t.bytes);
    }
    std::fs::write(path, file).unwrap();
}

/// Every tensor of a fixture as f32 values (the fixtures used here are F32).
fn load(name: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let ck = Checkpoint::open(fixture(name)).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.shape.clone(),
                ck.view(t).to_f32_vec().unwrap(),
            )
        })
        .collect()
}

fn f32_tensor(name: &str, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor {
        name: name.to_string(),
        dtype: "F32".to_string(),
        shape: shape.to_vec(),
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A copy of fixture `name` with `edit(name, shape, values)` applied to every tensor, written
/// into a temp folder (with the fixture's config.json when `with_config`).
fn modified(
    name: &str,
    with_config: bool,
    edit: impl Fn(&str, &[usize], Vec<f32>) -> Vec<f32>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<Tensor> = load(name)
        .into_iter()
        .map(|(n, s, v)| {
            let v = edit(&n, &s, v);
            f32_tensor(&n, &s, &v)
        })
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    if with_config {
        std::fs::copy(
            fixture(name).join("config.json"),
            dir.path().join("config.json"),
        )
        .unwrap();
    }
    dir
}

/// llama.cpp's `permute`: w.reshape(n, 2, rows/n/2, cols).swapaxes(1, 2).reshape(rows, cols).
fn gguf_permute(w: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
    let half = rows / n / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n {
        for i in 0..half {
            for j in 0..2 {
                let r = h * 2 * half + j * half + i;
                out.extend_from_slice(&w[r * cols..(r + 1) * cols]);
            }
        }
    }
    out
}

/// llama fixture: nH = 4, nKV = 2, D = 16.
fn rope_permute_llama(name: &str, shape: &[usize], v: Vec<f32>) -> Vec<f32> {
    if name.ends_with("q_proj.weight") {
        gguf_permute(&v, shape[0], shape[1], 4)
    } else if name.ends_with("k_proj.weight") {
        gguf_permute(&v, shape[0], shape[1], 2)
    } else {
        v
    }
}

#[test]
fn buggy_loader_fixture_is_transposed_projections() {
    let (code, report) = diff_json(&fixture("qwen2"), &fixture("qwen2-buggy"), &[]);
    assert_eq!(code, 1);
    let pairs = pairs_of(&report);
    assert_eq!(pairs.len(), 27);
    for (name, p) in &pairs {
        let want = if name.ends_with("_proj.weight") {
            "transposed"
        } else {
            "identical"
        };
        assert_eq!(verdict(p), want, "{name}");
        if want == "transposed" {
            assert_eq!(p["within_rounding"], Value::Null, "{name}");
            assert_eq!(p["expected_by_conventions"], false, "{name}");
        }
    }
    // Square q/o (64×64) are recognised from the values.
    assert_eq!(
        pairs["model.layers.0.self_attn.q_proj.weight"]["a"]["shape"],
        serde_json::json!([64, 64])
    );
    assert_eq!(report["summary"]["unexplained"], 14);
    // Explained when a transpose is what the user expects; the full pass agrees.
    let (code, full) = diff_json(
        &fixture("qwen2"),
        &fixture("qwen2-buggy"),
        &["--expect-conversion", "transpose", "--full"],
    );
    assert_eq!(code, 0);
    for (name, p) in pairs_of(&full) {
        assert_eq!(verdict(&p), verdict(&pairs[&name]), "{name}");
    }
}

#[test]
fn hf_fixtures_match_their_transformers_made_flax_twins() {
    for (hf, flax, n) in [
        ("llama", "llama-flax", 21),
        ("gpt2", "gpt2-flax", 28),
        ("mistral", "mistral-flax", 21),
        ("qwen2", "qwen2-flax", 27),
    ] {
        let (code, report) = diff_json(
            &fixture(hf),
            &fixture(flax),
            &["--expect-conversion", "hf-to-flax"],
        );
        assert_eq!(code, 0, "{hf}: {report:#}");
        assert_eq!(report["only_in_a"], serde_json::json!([]), "{hf}");
        assert_eq!(report["only_in_b"], serde_json::json!([]), "{hf}");
        let pairs = pairs_of(&report);
        assert_eq!(pairs.len(), n, "{hf}");
        let mut transposed = 0;
        for (name, p) in &pairs {
            // transposed exactly when the catalogue says the conventions differ by a transpose.
            let by_conv = p["transposed_by_conventions"].as_bool().unwrap();
            let want = if by_conv { "transposed" } else { "identical" };
            assert_eq!(verdict(p), want, "{hf}: {name}");
            if by_conv {
                transposed += 1;
                assert_eq!(p["expected_by_conventions"], true);
                assert_eq!(p["a"]["convention"], "hf");
                assert_eq!(p["b"]["convention"], "flax");
            }
        }
        // Every projection (and lm_head when untied) is a transposed kernel.
        let want_t = match hf {
            "gpt2" => 8,
            _ => 15,
        };
        assert_eq!(transposed, want_t, "{hf}");

        // Without the flag the conventions' transposes are reported but not accepted; the
        // mirrored flag accepts the mirrored diff, and not this one.
        let (code, _) = diff_json(&fixture(hf), &fixture(flax), &[]);
        assert_eq!(code, 1, "{hf}");
        let (code, _) = diff_json(
            &fixture(hf),
            &fixture(flax),
            &["--expect-conversion", "flax-to-hf"],
        );
        assert_eq!(code, 1, "{hf}");
        let (code, _) = diff_json(
            &fixture(flax),
            &fixture(hf),
            &["--expect-conversion", "flax-to-hf"],
        );
        assert_eq!(code, 0, "{hf}");
    }
}

#[test]
fn flax_names_pair_with_params_prefix_and_one_config() {
    // llama-flax renamed to `params.…` with no config.json: A's config serves both sides.
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<Tensor> = load("llama-flax")
        .into_iter()
        .map(|(n, s, v)| f32_tensor(&format!("params.{n}"), &s, &v))
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    let (code, report) = diff_json(
        &fixture("llama"),
        dir.path(),
        &["--expect-conversion", "hf-to-flax"],
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(pairs_of(&report).len(), 21);
    let w = report["warnings"][0].as_str().unwrap();
    assert!(w.contains("B has no usable config.json"), "{w}");

    // Hub-style GPT-2 names without `transformer.` pair with the prefixed ones.
    let bare = tempfile::tempdir().unwrap();
    let tensors: Vec<Tensor> = load("gpt2")
        .into_iter()
        .map(|(n, s, v)| f32_tensor(n.strip_prefix("transformer.").unwrap(), &s, &v))
        .collect();
    write_safetensors(&bare.path().join("model.safetensors"), &tensors);
    let (code, report) = diff_json(&fixture("gpt2"), bare.path(), &[]);
    assert_eq!(code, 0, "{report:#}");
    let pairs = pairs_of(&report);
    assert_eq!(pairs.len(), 28);
    assert_eq!(
        pairs["transformer.h.1.attn.c_attn.weight"]["b"]["name"],
        "h.1.attn.c_attn.weight"
    );
    assert!(pairs.values().all(|p| verdict(p) == "identical"));
}

#[test]
fn gguf_rope_permutation_is_named_with_head_counts() {
    let permuted = modified("llama", true, rope_permute_llama);
    let (code, report) = diff_json(&fixture("llama"), permuted.path(), &[]);
    assert_eq!(code, 1);
    for (name, p) in pairs_of(&report) {
        if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            assert_eq!(verdict(&p), "rope-permuted", "{name}");
            assert_eq!(p["direction"], "to-interleaved", "{name}");
            let (heads, kind) = if name.contains("q_proj") {
                (4, "query")
            } else {
                (2, "key-value")
            };
            assert_eq!(p["heads"], heads, "{name}");
            assert_eq!(p["head_kind"], kind, "{name}");
            assert_eq!(p["transposed"], false, "{name}");
        } else {
            assert_eq!(verdict(&p), "identical", "{name}");
        }
    }
    let (code, _) = diff_json(
        &fixture("llama"),
        permuted.path(),
        &["--expect-conversion", "rope-permute"],
    );
    assert_eq!(code, 0);

    // The inverse direction.
    let (_, report) = diff_json(permuted.path(), &fixture("llama"), &["--full"]);
    let p = &pairs_of(&report)["model.layers.1.self_attn.k_proj.weight"];
    assert_eq!(verdict(p), "rope-permuted");
    assert_eq!(p["direction"], "to-rotate-half");
    assert_eq!(p["heads"], 2);

    // Across conventions: Flax kernels against permuted HF weights.
    let (code, report) = diff_json(
        &fixture("llama-flax"),
        permuted.path(),
        &["--expect-conversion", "flax-to-hf,rope-permute"],
    );
    assert_eq!(code, 0, "{report:#}");
    let p = &pairs_of(&report)["model.layers.0.self_attn.q_proj.kernel"];
    assert_eq!(verdict(p), "rope-permuted");
    assert_eq!(p["transposed"], true);
    assert_eq!(p["heads"], 4);
}

#[test]
fn bf16_copy_is_rounded() {
    for (a, b) in [("llama", "llama-bf16"), ("llama-bf16", "llama")] {
        let (code, report) = diff_json(&fixture(a), &fixture(b), &[]);
        assert_eq!(code, 1);
        for (name, p) in pairs_of(&report) {
            assert_eq!(verdict(&p), "rounded", "{name}");
            assert_eq!(p["dtype"], "BF16");
            let d = p["max_abs_diff"].as_f64().unwrap();
            assert!(d > 0.0 && d < 0.01, "{name}: {d}");
        }
        let (code, _) = diff_json(&fixture(a), &fixture(b), &["--expect-conversion", "cast"]);
        assert_eq!(code, 0);
    }
    // bf16 against Flax f32 kernels: transposed within bf16 rounding.
    let (code, report) = diff_json(
        &fixture("llama-bf16"),
        &fixture("llama-flax"),
        &["--expect-conversion", "hf-to-flax,cast"],
    );
    assert_eq!(code, 0);
    let p = &pairs_of(&report)["model.layers.0.mlp.up_proj.weight"];
    assert_eq!(verdict(p), "transposed");
    assert_eq!(p["within_rounding"], "BF16");
}

#[test]
fn scaled_and_offset_constants() {
    // Query pre-scaled by 1/√D (D = 16), Gemma-style +1 on every RMSNorm weight.
    let edited = modified("llama", true, |name, _, v| {
        if name.ends_with("q_proj.weight") {
            v.iter().map(|x| x * 0.25).collect()
        } else if name.ends_with("norm.weight") || name.ends_with("layernorm.weight") {
            v.iter().map(|x| x + 1.0).collect()
        } else {
            v
        }
    });
    let (code, report) = diff_json(&fixture("llama"), edited.path(), &[]);
    assert_eq!(code, 1);
    let pairs = pairs_of(&report);
    let q = &pairs["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(verdict(q), "scaled");
    assert_eq!(q["factor"], 0.25);
    assert_eq!(q["hint"], "1/√head_dim (D = 16)");
    for name in [
        "model.norm.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ] {
        assert_eq!(verdict(&pairs[name]), "offset", "{name}");
        assert_eq!(pairs[name]["offset"], 1.0, "{name}");
    }
    assert_eq!(
        verdict(&pairs["model.layers.0.mlp.down_proj.weight"]),
        "identical"
    );
}

#[test]
fn hostile_pairs_get_a_message_and_the_diff_goes_on() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let v: Vec<f32> = (0..32 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    let q_perm = gguf_permute(&v, 32, 8, 2);
    let ints: Vec<u8> = (0..8i64).flat_map(|x| x.to_le_bytes()).collect();
    write_safetensors(
        &a.path().join("model.safetensors"),
        &[
            f32_tensor("ids", &[8], &[0.0; 8]),
            f32_tensor("model.layers.0.self_attn.q_proj.weight", &[32, 8], &v),
            f32_tensor("same", &[4], &[1.0, 2.0, 3.0, 4.0]),
            f32_tensor("weird", &[4, 6], &[0.5; 24]),
        ],
    );
    write_safetensors(
        &b.path().join("model.safetensors"),
        &[
            Tensor {
                name: "ids".to_string(),
                dtype: "I64".to_string(),
                shape: vec![8],
                bytes: ints,
            },
            f32_tensor("model.layers.0.self_attn.q_proj.weight", &[32, 8], &q_perm),
            f32_tensor("same", &[4], &[1.0, 2.0, 3.0, 4.0]),
            f32_tensor("weird", &[3, 8], &[0.5; 24]),
            f32_tensor("extra", &[2], &[0.0, 0.0]),
        ],
    );
    let (code, report) = diff_json(a.path(), b.path(), &[]);
    assert_eq!(code, 1);
    let pairs = pairs_of(&report);
    assert_eq!(pairs.len(), 4);
    let ids = pairs["ids"]["error"].as_str().unwrap();
    assert!(
        ids.contains("F32") && ids.contains("I64") && ids.contains("integer"),
        "{ids}"
    );
    let weird = pairs["weird"]["error"].as_str().unwrap();
    assert!(
        weird.contains("[4, 6]") && weird.contains("[3, 8]"),
        "{weird}"
    );
    let q = &pairs["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(verdict(q), "different");
    let note = q["notes"][0].as_str().unwrap();
    assert!(
        note.contains("rope-permuted not checked") && note.contains("config.json"),
        "{note}"
    );
    assert_eq!(verdict(&pairs["same"]), "identical");
    assert_eq!(report["only_in_b"][0]["name"], "extra");

    // The table names each problem in its row.
    let out = orient()
        .arg("diff")
        .arg(a.path())
        .arg(b.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("integer and float tensors cannot be compared"),
        "{text}"
    );
    assert!(text.contains("only in B: extra"), "{text}");
}

#[test]
fn only_differences_hides_identical_pairs() {
    let (_, report) = diff_json(
        &fixture("qwen2"),
        &fixture("qwen2-buggy"),
        &["--only-differences"],
    );
    let pairs = pairs_of(&report);
    assert_eq!(pairs.len(), 14);
    assert!(pairs.values().all(|p| verdict(p) == "transposed"));
}

#[test]
fn unreadable_input_is_an_error_exit_2() {
    let out = orient()
        .args([
            "diff",
            "tests/fixtures/llama",
            "tests/fixtures/does-not-exist",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot open B") && err.contains("does-not-exist"),
        "{err}"
    );
}

#[test]
fn table_snapshot_buggy_loader() {
    let out = orient()
        .args([
            "diff",
            "tests/fixtures/qwen2",
            "tests/fixtures/qwen2-buggy",
            "--only-differences",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

#[test]
fn table_snapshot_hf_to_flax() {
    let out = orient()
        .args([
            "diff",
            "tests/fixtures/gpt2",
            "tests/fixtures/gpt2-flax",
            "--expect-conversion",
            "hf-to-flax",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap());
}

#[test]
fn tied_head_on_one_side_is_compared_with_the_embedding() {
    // qwen3 is tied (no lm_head in the file); a copy that stores the head explicitly.
    let explicit = tempfile::tempdir().unwrap();
    let mut tensors: Vec<Tensor> = Vec::new();
    for (n, s, v) in load("qwen3") {
        if n == "model.embed_tokens.weight" {
            tensors.push(f32_tensor("lm_head.weight", &s, &v));
        }
        tensors.push(f32_tensor(&n, &s, &v));
    }
    write_safetensors(&explicit.path().join("model.safetensors"), &tensors);
    let (code, report) = diff_json(&fixture("qwen3"), explicit.path(), &[]);
    assert_eq!(code, 0, "{report:#}");
    let pairs = pairs_of(&report);
    let head = pairs
        .values()
        .find(|p| p["b"]["name"] == "lm_head.weight")
        .unwrap();
    assert_eq!(head["a"]["name"], "model.embed_tokens.weight");
    assert_eq!(verdict(head), "identical");
    assert!(head["notes"][0].as_str().unwrap().contains("tied"));

    // A Flax GPT-2 tree with its own head kernel [H, V] = wteᵀ, against tied HF GPT-2.
    let flax = tempfile::tempdir().unwrap();
    let mut tensors: Vec<Tensor> = Vec::new();
    for (n, s, v) in load("gpt2-flax") {
        if n == "transformer.wte.embedding" {
            let t = {
                let (rows, cols) = (s[0], s[1]);
                let mut t = vec![0f32; v.len()];
                for i in 0..rows {
                    for j in 0..cols {
                        t[j * rows + i] = v[i * cols + j];
                    }
                }
                t
            };
            tensors.push(f32_tensor("lm_head.kernel", &[s[1], s[0]], &t));
        }
        tensors.push(f32_tensor(&n, &s, &v));
    }
    write_safetensors(&flax.path().join("model.safetensors"), &tensors);
    std::fs::copy(
        fixture("gpt2-flax").join("config.json"),
        flax.path().join("config.json"),
    )
    .unwrap();
    let (code, report) = diff_json(
        &fixture("gpt2"),
        flax.path(),
        &["--expect-conversion", "hf-to-flax"],
    );
    assert_eq!(code, 0, "{report:#}");
    let head = &pairs_of(&report)
        .into_values()
        .find(|p| p["b"]["name"] == "lm_head.kernel")
        .unwrap();
    assert_eq!(head["a"]["name"], "transformer.wte.weight");
    assert_eq!(verdict(head), "transposed");
    assert_eq!(head["expected_by_conventions"], true);
}

/// The made-up JAX port of the qwen2 fixture, read through its layout file.
fn port_layout() -> String {
    fixture("qwen2-port")
        .join("layout.toml")
        .display()
        .to_string()
}

/// Issue 9: each side in its own convention; pairs are canonical tensors present on both
/// sides, fused gate/up and interleaved q/k included, and the conversion a `--layout` side
/// implies is expected.
#[test]
fn jax_port_pairs_through_its_layout_and_every_pair_is_explained() {
    let layout = port_layout();
    let (code, report) = diff_json(
        &fixture("qwen2"),
        &fixture("qwen2-port"),
        &["--layout", &layout],
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["only_in_a"], serde_json::json!([]));
    assert_eq!(report["only_in_b"], serde_json::json!([]));
    assert_eq!(report["b"]["convention"], "qwen2-jax-port");
    assert_eq!(report["a"]["convention"], "hf");
    assert_eq!(
        report["expect"],
        serde_json::json!(["hf-to-qwen2-jax-port"])
    );
    let pairs = pairs_of(&report);
    assert_eq!(pairs.len(), 27);
    for (name, p) in &pairs {
        assert_eq!(p["explained"], true, "{name}: {p:#}");
        assert_eq!(p["matches_conventions"], true, "{name}: {p:#}");
        assert_eq!(p["relation"], p["conventions_relation"], "{name}");
        let want = if name.contains("q_proj") || name.contains("k_proj") {
            "rope-permuted"
        } else if name.contains("gate_proj") || name.contains("up_proj") {
            "fused"
        } else if name.ends_with("_proj.weight") || name == "lm_head.weight" {
            "transposed"
        } else {
            "identical"
        };
        assert_eq!(verdict(p), want, "{name}");
        if want == "rope-permuted" {
            let heads = if name.contains("q_proj") { 4 } else { 2 };
            assert_eq!(p["heads"], heads, "{name}");
            assert_eq!(p["direction"], "to-interleaved", "{name}");
            assert_eq!(p["transposed"], name.ends_with(".weight"), "{name}");
        }
    }
    let gate = &pairs["model.layers.1.mlp.gate_proj.weight"];
    assert_eq!(gate["b"]["name"], "params.decoder.layer_1.mlp.w_gate_up");
    assert_eq!(gate["b"]["part"], "part 1 of 2");
    assert_eq!(gate["part"], serde_json::json!([0, 2]));
    assert_eq!(gate["transposed"], true);
    let up = &pairs["model.layers.1.mlp.up_proj.weight"];
    assert_eq!(up["b"]["name"], "params.decoder.layer_1.mlp.w_gate_up");
    assert_eq!(up["part"], serde_json::json!([1, 2]));
    assert_eq!(
        pairs["model.layers.0.self_attn.q_proj.weight"]["relation"],
        "rope-permute(heads=4, to=interleaved, rotary=16) → transpose"
    );

    // The other way round (the port as A): the inverse relations, still explained; and the
    // table says so.
    let (code, report) = diff_json(
        &fixture("qwen2-port"),
        &fixture("qwen2"),
        &["--layout", &layout, "--full"],
    );
    assert_eq!(code, 0, "{report:#}");
    let p = &pairs_of(&report)["params.decoder.layer_0.mlp.w_gate_up"];
    assert_eq!(verdict(p), "split");
    let out = orient()
        .args(["diff", "tests/fixtures/qwen2", "tests/fixtures/qwen2-port"])
        .args(["--layout", &layout])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("layout qwen2-jax-port"), "{text}");
    assert!(
        text.contains("expected by conventions (hf → qwen2-jax-port)"),
        "{text}"
    );
    assert!(
        text.contains("27 pairs: 8 identical, 7 transposed, 8 rope-permuted, 4 fused"),
        "{text}"
    );
}

/// Issue 9: a port whose wq was stored as a plain transpose (no RoPE permutation) is told
/// apart from the port it claims to be: exactly those tensors are `rope-permuted`, unexplained.
#[test]
fn jax_port_with_an_unpermuted_wq_is_rope_permuted_there_only() {
    let layout = port_layout();
    let hf: BTreeMap<String, (Vec<usize>, Vec<f32>)> = load("qwen2")
        .into_iter()
        .map(|(n, s, v)| (n, (s, v)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<Tensor> = load("qwen2-port")
        .into_iter()
        .map(|(n, s, v)| {
            let layer = n
                .strip_prefix("params.decoder.layer_")
                .and_then(|r| r.strip_suffix(".attn.wq"));
            let v = match layer {
                Some(i) => {
                    let (qs, q) = &hf[&format!("model.layers.{i}.self_attn.q_proj.weight")];
                    let mut t = vec![0f32; q.len()];
                    for r in 0..qs[0] {
                        for c in 0..qs[1] {
                            t[c * qs[0] + r] = q[r * qs[1] + c];
                        }
                    }
                    t
                }
                None => v,
            };
            f32_tensor(&n, &s, &v)
        })
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    std::fs::copy(
        fixture("qwen2-port").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (code, report) = diff_json(&fixture("qwen2"), dir.path(), &["--layout", &layout]);
    assert_eq!(code, 1, "{report:#}");
    let mut rope_permuted: Vec<String> = Vec::new();
    for (name, p) in pairs_of(&report) {
        if p["explained"] == false {
            assert_eq!(verdict(&p), "rope-permuted", "{name}: {p:#}");
            assert_eq!(p["heads"], 4, "{name}");
            assert_eq!(p["relation"], "transpose", "{name}");
            let why = p["unexplained_because"].as_str().unwrap();
            assert!(
                why.contains("not stored in the RoPE order its convention says"),
                "{why}"
            );
            rope_permuted.push(name);
        } else {
            assert_eq!(p["matches_conventions"], true, "{name}");
        }
    }
    assert_eq!(
        rope_permuted,
        [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.q_proj.weight"
        ]
    );
    assert_eq!(report["summary"]["unexplained"], 2);
}

#[test]
fn expect_conversion_names_any_two_conventions() {
    let layout = port_layout();
    // Explicitly, and for the flax side: A's port layout to B's built-in flax.
    let (code, report) = diff_json(
        &fixture("qwen2-port"),
        &fixture("qwen2-flax"),
        &[
            "--layout",
            &layout,
            "--expect-conversion",
            "qwen2-jax-port-to-flax",
        ],
    );
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["expect"],
        serde_json::json!(["qwen2-jax-port-to-flax"])
    );
    let p = &pairs_of(&report)["params.decoder.layer_0.attn.wq"];
    assert_eq!(verdict(p), "rope-permuted");
    assert_eq!(p["transposed"], false, "{p:#}");
    // A convention nobody loaded is an error naming it (exit 2).
    let out = orient()
        .args(["diff", "tests/fixtures/qwen2", "tests/fixtures/qwen2-flax"])
        .args(["--expect-conversion", "hf-to-qwen2-jax-port"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("`hf-to-qwen2-jax-port` is not a conversion") && err.contains("hf, flax"),
        "{err}"
    );
}

/// Issue 9: a port tensor whose shape its layout cannot read is an error of its pair, naming
/// the tensor, both shapes and the convention; the diff goes on with the other pairs.
#[test]
fn a_port_tensor_of_the_wrong_shape_is_a_pair_error_naming_it() {
    let layout = port_layout();
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<Tensor> = load("qwen2-port")
        .into_iter()
        .map(|(n, s, v)| {
            if n == "params.decoder.layer_0.attn.wq" {
                f32_tensor(&n, &[64, 32], &v[..64 * 32])
            } else {
                f32_tensor(&n, &s, &v)
            }
        })
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors);
    std::fs::copy(
        fixture("qwen2-port").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (code, report) = diff_json(&fixture("qwen2"), dir.path(), &["--layout", &layout]);
    assert_eq!(code, 1, "{report:#}");
    let pairs = pairs_of(&report);
    assert_eq!(pairs.len(), 27);
    let q = &pairs["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(verdict(q), "error");
    let err = q["error"].as_str().unwrap();
    assert_eq!(
        err,
        "B: `params.decoder.layer_0.attn.wq` has shape [64, 32], but convention `qwen2-jax-port` stores `model.layers.0.self_attn.q_proj.weight` as [64, 64]"
    );
    assert_eq!(report["summary"]["errors"], 1);
    assert_eq!(report["summary"]["unexplained"], 1);
}

/// Issue 9, item 7: a layout that does not fit a side's model stops the diff with an error
/// naming the side, the layout file, its line and the tensor (exit 2).
#[test]
fn a_layout_that_does_not_fit_the_model_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[convention]\nname = \"bad\"\n[[rule]]\ncanonical = \"model.layers.{i}.self_attn.k_proj.weight\"\nstored = \"k.{i}\"\ntransforms = [{ rope_permute = { heads = 3, to = \"interleaved\" } }]\n",
    )
    .unwrap();
    let out = orient()
        .args(["diff", "tests/fixtures/qwen2", "tests/fixtures/qwen2-flax"])
        .arg("--layout")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("A (tests/fixtures/qwen2): the layout catalogue cannot be built"),
        "{err}"
    );
    assert!(err.contains("bad.toml:5: `transforms`"), "{err}");
    assert!(
        err.contains("`model.layers.0.self_attn.k_proj.weight`") && err.contains("3 heads"),
        "{err}"
    );
    // Said once, not repeated by a cause printed inline.
    assert_eq!(err.matches("3 heads").count(), 1, "{err}");
}
