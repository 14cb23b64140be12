//! Models and references a hostile (or unlucky) user hands to `run`, `verify`, `convert` and
//! `diff`: each must end in the right exit code with a message that says what is wrong, never
//! a panic, an abort or a check that passes on nothing.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use std::path::{Path, PathBuf};

use predicates::prelude::*;

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

/// Rewrites `dir/model.safetensors` after `edit(name, dtype, shape, bytes)` has changed the
/// bytes of any tensor (same dtype and shape).
fn edit_weights(
    dir: &Path,
    mut edit: impl FnMut(&str, safetensors::Dtype, &[usize], &mut Vec<u8>),
) {
    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    for (name, dtype, shape, data) in &mut owned {
        edit(name, *dtype, shape, data);
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn diff_json(a: &Path, b: &Path, expect: &str) -> (i32, serde_json::Value) {
    let out = orient()
        .arg("diff")
        .arg(a)
        .arg(b)
        .args(["--json", "--expect-conversion", expect])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    (out.status.code().unwrap(), report)
}

fn pair<'a>(report: &'a serde_json::Value, a_name: &str) -> &'a serde_json::Value {
    report["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["a"]["name"] == a_name)
        .unwrap_or_else(|| panic!("no pair {a_name}"))
}

/// Issue 8, item 10: a correct HF → Flax conversion of a model with a zero square kernel (or
/// a 1×1 one) used to exit 1, blaming a "forgotten transpose": the tensor equals its own
/// transpose, so it is identical and transposed at once, and diff says so.
#[test]
fn diff_does_not_blame_a_kernel_equal_to_its_transpose() {
    let dir = tempfile::tempdir().unwrap();
    let hf = copy_fixture("llama", dir.path(), |c| c);
    let zero_q = "model.layers.0.self_attn.q_proj.weight";
    let sym_o = "model.layers.1.self_attn.o_proj.weight";
    edit_weights(&hf, |name, _, shape, data| {
        if name == zero_q {
            data.fill(0);
        } else if name == sym_o {
            // o := o + oᵀ (f32), a symmetric square kernel
            let n = shape[0];
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            *data = (0..n * n)
                .flat_map(|k| (v[k] + v[(k % n) * n + k / n]).to_le_bytes())
                .collect();
        }
    });
    let flax = dir.path().join("llama-flax");
    orient()
        .args(["convert", "--to", "flax", "-q"])
        .arg(&hf)
        .arg(&flax)
        .assert()
        .success();
    let (code, report) = diff_json(&hf, &flax, "hf-to-flax");
    assert_eq!(code, 0, "{report:#}");
    for name in [zero_q, sym_o] {
        let p = pair(&report, name);
        assert_eq!(p["verdict"], "identical", "{p:#}");
        assert_eq!(p["symmetric"], true, "{p:#}");
        assert_eq!(p["explained"], true, "{p:#}");
    }
    // The table says why instead of blaming.
    orient()
        .args(["diff", "--expect-conversion", "hf-to-flax"])
        .arg(&hf)
        .arg(&flax)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("identical and transposed at once"))
        .stdout(predicate::str::contains("forgot to transpose").not());

    // A GPT-2 of width 1: attn.c_proj is a 1×1 Conv1D kernel.
    let cfg = dir.path().join("gpt2-w1.json");
    std::fs::write(
        &cfg,
        r#"{"model_type": "gpt2", "n_embd": 1, "n_head": 1, "n_layer": 1,
            "n_positions": 8, "vocab_size": 16}"#,
    )
    .unwrap();
    let tiny = dir.path().join("gpt2-w1");
    let tiny_flax = dir.path().join("gpt2-w1-flax");
    orient()
        .arg("synth")
        .arg(&cfg)
        .arg(&tiny)
        .arg("-q")
        .assert()
        .success();
    orient()
        .args(["convert", "--to", "flax", "-q"])
        .arg(&tiny)
        .arg(&tiny_flax)
        .assert()
        .success();
    let (code, report) = diff_json(&tiny, &tiny_flax, "hf-to-flax");
    assert_eq!(code, 0, "{report:#}");
    let p = pair(&report, "transformer.h.0.attn.c_proj.weight");
    assert_eq!(p["verdict"], "identical", "{p:#}");
    assert_eq!(p["symmetric"], true, "{p:#}");
}

/// Issue 8, item 10: `--expect-conversion cast` explained a BF16 → BF16 pair one ulp apart
/// everywhere; with the same dtype on both sides no cast happened.
#[test]
fn diff_cast_does_not_explain_rounding_without_a_cast() {
    let dir = tempfile::tempdir().unwrap();
    let b = copy_fixture("llama-bf16", dir.path(), |c| c);
    let bumped = "model.layers.0.mlp.up_proj.weight";
    edit_weights(&b, |name, dtype, _, data| {
        if name == bumped {
            assert_eq!(dtype, safetensors::Dtype::BF16);
            for c in data.chunks_exact_mut(2) {
                let x = u16::from_le_bytes([c[0], c[1]]) + 1; // one ulp away from zero
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
    });
    let (code, report) = diff_json(&fixture("llama-bf16"), &b, "cast");
    assert_eq!(code, 1, "{report:#}");
    let p = pair(&report, bumped);
    assert_eq!(p["verdict"], "rounded", "{p:#}");
    assert_eq!(p["explained"], false, "{p:#}");
    assert!(
        p["unexplained_because"]
            .as_str()
            .unwrap()
            .contains("both sides are BF16: no cast happened"),
        "{p:#}"
    );
    // The cast that did happen (F32 → BF16) is still explained.
    let (code, _) = diff_json(&fixture("llama"), &fixture("llama-bf16"), "cast");
    assert_eq!(code, 0);
}

fn set_tied(config: String) -> String {
    with_field(config, "tie_word_embeddings", "true")
}

/// Issue 8, item 5: a config that ties the embeddings over a file that stores a different
/// (stale) lm_head. PyTorch ignores the head, the Flax llama-family classes use it, so the
/// file is two different models: `convert` refuses it for either target (one shared check),
/// and `verify` of a Flax copy that kept the stale head fails at the logits.
#[test]
fn tied_config_with_a_stale_lm_head() {
    let dir = tempfile::tempdir().unwrap();
    let b6 = copy_fixture("qwen2", dir.path(), set_tied);
    for to in ["flax", "hf"] {
        let out = dir.path().join(format!("x-{to}"));
        orient()
            .args(["convert", "--to", to])
            .arg(&b6)
            .arg(&out)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "`lm_head.weight` differs from `model.embed_tokens.weight`",
            ))
            .stderr(predicate::str::contains("is tie_word_embeddings right?"));
        assert!(!out.exists(), "{to}: nothing may be written");
    }

    // The Flax copy the old convert wrote: the stale head as lm_head.kernel, config tied.
    let x = dir.path().join("x");
    orient()
        .args(["convert", "--to", "flax", "-q"])
        .arg(fixture("qwen2"))
        .arg(&x)
        .assert()
        .success();
    let config = std::fs::read_to_string(x.join("config.json")).unwrap();
    std::fs::write(x.join("config.json"), set_tied(config)).unwrap();
    orient()
        .arg("verify")
        .arg(&x)
        .arg("--against")
        .arg(&b6)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("first divergence at the lm_head"))
        .stdout(predicate::str::contains(
            "`lm_head.kernel` computes the logits, as transformers' Flax llama-family classes do",
        ))
        .stdout(predicate::str::contains(
            "the stored lm_head is ignored, as transformers does",
        ))
        .stdout(predicate::str::contains(
            "computes different logits in the two frameworks",
        ));
    // Each side on its own computes what its framework computes: the Flax copy still gives
    // the untied model's logits, the tied HF file the embedding's.
    orient()
        .args(["verify", "--atol", "0", "--rtol", "0", "--against"])
        .arg(fixture("qwen2-flax"))
        .arg(&x)
        .assert()
        .code(0);
}

/// The tied model converted properly: the Flax layout's own lm_head.kernel is built from the
/// embedding, and verifying it against the HF original is exact at every stage.
#[test]
fn tied_model_converted_to_flax_verifies_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let flax = dir.path().join("qwen3-flax");
    orient()
        .args(["convert", "--to", "flax", "-q"])
        .arg(fixture("qwen3"))
        .arg(&flax)
        .assert()
        .success();
    let out = orient()
        .args([
            "verify",
            "--json",
            "--atol",
            "0",
            "--rtol",
            "0",
            "--against",
        ])
        .arg(fixture("qwen3"))
        .arg(&flax)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["notes"][0]["kind"], "tied_but_own_lm_head", "{v:#}");
    for row in v["comparison"]["rows"].as_array().unwrap() {
        assert_eq!(row["diff"]["max_abs"], 0.0, "{row}");
    }
}

/// The qwen2 fixture's transformers reference (L = 2, H = 64, T = 80) after `edit` has
/// changed its list of (name, dtype, shape, bytes), written to `path`.
fn edited_reference(
    path: &Path,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;
    let bytes = std::fs::read(fixture("qwen2/reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut owned);
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn verify_reference(reference: &Path) -> assert_cmd::assert::Assert {
    orient()
        .arg("verify")
        .arg(fixture("qwen2"))
        .arg("--reference")
        .arg(reference)
        .assert()
}

/// Issue 8, item 7: hidden states of the wrong shape (`[0, H]`, `[1, H]`, `[T, 32]`) were
/// compared on a prefix (or on nothing) and reported ok. Every reference tensor's shape is
/// now checked against the model and the prompt first (exit 2); extra or missing hidden
/// states are said, with what was skipped.
#[test]
fn reference_tensors_of_the_wrong_shape_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("ref.safetensors");
    for (name, shape) in [
        ("hidden_states.1", vec![0usize, 64]),
        ("hidden_states.1", vec![1, 64]),
        ("hidden_states.2", vec![80, 32]),
        ("hidden_states.0", vec![81, 64]),
        ("layer_output.0", vec![1, 64]),
    ] {
        edited_reference(&r, |ts| {
            let t = ts.iter_mut().find(|t| t.0 == name).unwrap();
            let n: usize = shape.iter().product();
            t.3 = t.3[..4 * n.min(80 * 64)].to_vec();
            t.3.resize(4 * n, 0);
            t.2 = shape.clone();
        });
        verify_reference(&r)
            .code(2)
            .stderr(predicate::str::contains(format!(
                "`{name}` is F32 {shape:?}, expected F32 [80, 64]"
            )))
            .stdout(predicate::str::contains("PASS").not());
    }
    // logits over another vocabulary, or of a truncated prompt
    edited_reference(&r, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "logits").unwrap();
        t.2 = vec![80, 256];
        t.3.truncate(80 * 256 * 4);
    });
    verify_reference(&r)
        .code(2)
        .stderr(predicate::str::contains("`logits`"))
        .stderr(predicate::str::contains("expected F32 [80, 512]"));
    // a numbering gap: hidden_states.2 without hidden_states.1
    edited_reference(&r, |ts| ts.retain(|t| t.0 != "hidden_states.1"));
    verify_reference(&r)
        .code(2)
        .stderr(predicate::str::contains(
            "`hidden_states.2` is present but `hidden_states.1` is not",
        ));
}

#[test]
fn reference_with_missing_or_extra_hidden_states_says_what_was_not_compared() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("ref.safetensors");
    // Missing: only the embedding output, no layer outputs.
    edited_reference(&r, |ts| {
        ts.retain(|t| {
            !t.0.starts_with("layer_output") && t.0 != "hidden_states.1" && t.0 != "hidden_states.2"
        })
    });
    verify_reference(&r)
        .code(0)
        .stdout(predicate::str::contains(
            "NOTE: hidden_states.0 only of the 3 a 2-layer model has: layers 0-1, the final norm not compared",
        ))
        .stdout(predicate::str::contains("│ final norm").not());
    // None at all: only the logits.
    edited_reference(&r, |ts| {
        ts.retain(|t| !t.0.starts_with("layer_output") && !t.0.starts_with("hidden_states"))
    });
    verify_reference(&r).code(0).stdout(predicate::str::contains(
        "NOTE: no hidden_states of the 3 a 2-layer model has: the embedding, layers 0-1, the final norm not compared",
    ));
    // Extra: two more hidden states (as from a deeper model) and one more layer output.
    edited_reference(&r, |ts| {
        let h = ts
            .iter()
            .find(|t| t.0 == "hidden_states.2")
            .unwrap()
            .clone();
        let o = ts.iter().find(|t| t.0 == "layer_output.1").unwrap().clone();
        ts.push(("hidden_states.3".into(), h.1, h.2.clone(), h.3.clone()));
        ts.push(("hidden_states.4".into(), h.1, h.2, h.3));
        ts.push(("layer_output.2".into(), o.1, o.2, o.3));
    });
    let out = orient()
        .args(["verify", "--json"])
        .arg(fixture("qwen2"))
        .arg("--reference")
        .arg(&r)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["reference_notes"],
        serde_json::json!([
            {"kind": "extra_hidden_states", "layers": 2, "stored": 5},
            {"kind": "extra_layer_outputs", "layers": 2, "stored": 3}
        ])
    );
    verify_reference(&r)
        .stdout(predicate::str::contains(
            "hidden_states.3-4 skipped, and hidden_states.2 compared as layer 1's output",
        ))
        .stdout(predicate::str::contains("layer_output.2 skipped"));
}

/// A llama-shaped checkpoint of one layer whose data is a sparse file: the header says what
/// the forward would allocate, without gigabytes on disk or in a test.
fn sparse_llama(dir: &Path, hidden: usize, inter: usize, vocab: usize) -> PathBuf {
    let model = dir.join("sparse-llama");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        format!(
            r#"{{"model_type": "llama", "hidden_size": {hidden}, "intermediate_size": {inter},
                "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
                "vocab_size": {vocab}, "max_position_embeddings": 256}}"#
        ),
    )
    .unwrap();
    let p = "model.layers.0.";
    let tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        (format!("{p}input_layernorm.weight"), vec![hidden]),
        (format!("{p}self_attn.q_proj.weight"), vec![hidden, hidden]),
        (format!("{p}self_attn.k_proj.weight"), vec![hidden, hidden]),
        (format!("{p}self_attn.v_proj.weight"), vec![hidden, hidden]),
        (format!("{p}self_attn.o_proj.weight"), vec![hidden, hidden]),
        (format!("{p}post_attention_layernorm.weight"), vec![hidden]),
        (format!("{p}mlp.gate_proj.weight"), vec![inter, hidden]),
        (format!("{p}mlp.up_proj.weight"), vec![inter, hidden]),
        (format!("{p}mlp.down_proj.weight"), vec![hidden, inter]),
        ("model.norm.weight".into(), vec![hidden]),
        ("lm_head.weight".into(), vec![vocab, hidden]),
    ];
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in &tensors {
        let len = 4 * shape.iter().product::<usize>() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    let file = model.join("model.safetensors");
    std::fs::write(&file, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(bytes.len() as u64 + offset).unwrap(); // a hole: no data on disk
    model
}

/// `--tokens` for `n` tokens, split into arguments under the kernel's 128 KiB limit for one
/// argument (clap appends repeated `--tokens`).
fn many_tokens(n: usize) -> Vec<String> {
    let ids: Vec<&str> = vec!["1"; n];
    ids.chunks(20_000)
        .flat_map(|c| ["--tokens".to_string(), c.join(",")])
        .collect()
}

/// Issue 8, item 15: a 100,000-token prompt used to abort the process (SIGABRT on a 40 GB
/// allocation of T×T attention scores for every head). The peak is now estimated before the
/// forward starts, and a prompt that cannot fit is refused (exit 2) with the estimate and
/// what is available.
#[test]
fn a_prompt_that_cannot_fit_is_refused_with_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    // The MLP of 100,000 tokens through a 4,000,000-wide layer: 3.2 TB of activations.
    let model = sparse_llama(dir.path(), 64, 4_000_000, 512);
    orient()
        .arg("run")
        .arg(&model)
        .args(many_tokens(100_000))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "a forward over 100000 tokens (logits at 1 position) needs about",
        ))
        .stderr(predicate::str::contains("TiB at its peak"))
        .stderr(predicate::str::contains("activations"))
        .stderr(predicate::str::contains("attention scratch"))
        .stderr(predicate::str::contains("is available"))
        .stderr(predicate::str::contains("refusing to start"));
    // Logits at every position are the big buffer of --save: [T, V] over a 4M vocabulary.
    let model = sparse_llama(&dir.path().join("v"), 64, 176, 4_000_000);
    let saved = dir.path().join("out.safetensors");
    orient()
        .arg("run")
        .arg(&model)
        .args(many_tokens(100_000))
        .arg("--save")
        .arg(&saved)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "(logits at 100000 positions) needs about",
        ))
        .stderr(predicate::str::contains(
            "--save and --all-positions keep the logits of every position",
        ));
    assert!(!saved.exists());
}

/// Without --save, `run` computes only the last position's logits; they are bit-identical
/// to the last row of the logits at every position.
#[test]
fn run_last_position_logits_match_all_positions() {
    let tokens = "5,17,300,2,99,511,0,42,7,7,7,130";
    for name in ["qwen2", "gpt2", "llama-bf16", "qwen3"] {
        let top = |extra: &[&str]| -> serde_json::Value {
            let out = orient()
                .args(["run", "--json", "--top-k", "8", "--tokens", tokens])
                .args(extra)
                .arg(fixture(name))
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["positions"].as_array().unwrap().last().unwrap().clone()
        };
        assert_eq!(top(&[]), top(&["--all-positions"]), "{name}");
    }
}
