//! `orient lint` driven as a user would: every fixture passes, and an edited copy for every check
//! fails it, naming the tensors (and the config field, where there is one).
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// `orient lint ARGS --json`: exit code and the report.
fn lint_json(model: &Path, extra: &[&str]) -> (i32, Value) {
    let out = orient()
        .arg("lint")
        .arg(model)
        .args(extra)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "exit {code}: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (code, v)
}

fn findings<'a>(v: &'a Value, check: &str) -> Vec<&'a Value> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .collect()
}

fn status<'a>(v: &'a Value, check: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == check)
        .and_then(|c| c["status"].as_str())
        .unwrap()
}

fn tensors(f: &Value) -> Vec<&str> {
    f["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

/// An owned tensor: dtype, shape, bytes.
type Owned = (Dtype, Vec<usize>, Vec<u8>);

/// A copy of fixture `name` in `dst`, with its tensors (and metadata) edited by `edit` and its
/// config by `config`.
fn edited(
    name: &str,
    dst: &Path,
    edit: impl FnOnce(&mut Vec<(String, Owned)>, &mut HashMap<String, String>),
    config: impl FnOnce(&mut Value),
) {
    std::fs::create_dir_all(dst).unwrap();
    let bytes = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Owned)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut owned, &mut metadata);
    write(&dst.join("model.safetensors"), &owned, metadata);
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
            .unwrap();
    config(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
}

fn write(path: &Path, tensors: &[(String, Owned)], metadata: HashMap<String, String>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, Some(metadata), path).unwrap();
}

fn get<'a>(t: &'a mut [(String, Owned)], name: &str) -> &'a mut Owned {
    &mut t.iter_mut().find(|(n, _)| n == name).unwrap().1
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn every_fixture_lints_clean() {
    for name in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gpt2",
        "llama-bf16",
        "qwen2-buggy",
        "llama-flax",
        "mistral-flax",
        "gpt2-flax",
        "qwen2-flax",
    ] {
        let (code, v) = lint_json(&fixture(name), &[]);
        assert_eq!(code, 0, "{name}: {v:#}");
        assert_eq!(v["schema_version"], 1);
        let checks: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["check"].as_str().unwrap())
            .collect();
        assert_eq!(
            checks,
            [
                "tie-word-embeddings",
                "norm-storage",
                "attention-shapes",
                "mlp-shapes",
                "dtype",
                "reconversion",
                "fp8-scales",
                "duplicates"
            ]
        );
        for c in v["checks"].as_array().unwrap() {
            assert_eq!(c["status"], "passed", "{name}: {c}");
        }
    }
}

#[test]
fn tie_word_embeddings_against_lm_head() {
    let tmp = tempfile::tempdir().unwrap();
    // Config ties, but the stored lm_head differs from the embedding.
    let a = tmp.path().join("tied-different");
    edited(
        "qwen2",
        &a,
        |_, _| {},
        |c| c["tie_word_embeddings"] = true.into(),
    );
    let (code, v) = lint_json(&a, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "tie-word-embeddings");
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(
        tensors(f[0]),
        ["lm_head.weight", "model.embed_tokens.weight"]
    );
    assert_eq!(f[0]["config"]["field"], "tie_word_embeddings");
    assert_eq!(f[0]["config"]["config"], true);
    assert!(f[0]["message"]
        .as_str()
        .unwrap()
        .contains("different values"));

    // Untied, and no lm_head at all.
    let b = tmp.path().join("untied-absent");
    edited(
        "qwen2",
        &b,
        |t, _| t.retain(|(n, _)| n != "lm_head.weight"),
        |_| {},
    );
    let (code, v) = lint_json(&b, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "tie-word-embeddings");
    assert_eq!(tensors(f[0]), ["lm_head.weight"]);
    assert!(f[0]["message"].as_str().unwrap().contains("at random"));

    // Untied, but lm_head equals the embedding: the tie check says so, the duplicate check
    // leaves the pair to it.
    let c = tmp.path().join("untied-equal");
    edited(
        "qwen2",
        &c,
        |t, _| {
            let embed = get(t, "model.embed_tokens.weight").2.clone();
            get(t, "lm_head.weight").2 = embed;
        },
        |_| {},
    );
    let (code, v) = lint_json(&c, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "tie-word-embeddings");
    assert_eq!(f.len(), 1);
    assert!(f[0]["message"]
        .as_str()
        .unwrap()
        .contains("value for value"));
    assert_eq!(f[0]["config"]["weights"], true);
    assert!(findings(&v, "duplicates").is_empty(), "{v:#}");

    // Tied and equal: consistent.
    let d = tmp.path().join("tied-equal");
    edited(
        "qwen2",
        &d,
        |t, _| {
            let embed = get(t, "model.embed_tokens.weight").2.clone();
            get(t, "lm_head.weight").2 = embed;
        },
        |c| c["tie_word_embeddings"] = true.into(),
    );
    let (code, v) = lint_json(&d, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(status(&v, "tie-word-embeddings"), "passed");
}

#[test]
fn norm_weights_stored_as_offsets_for_a_scale_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("llama-offset-norms");
    edited(
        "llama",
        &m,
        |t, _| {
            for (name, (_, _, b)) in t.iter_mut() {
                if name.ends_with("norm.weight") {
                    let v: Vec<f32> = f32s(b).iter().map(|x| x - 1.0).collect();
                    *b = bytes(&v);
                }
            }
        },
        |_| {},
    );
    let (code, v) = lint_json(&m, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "norm-storage");
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(tensors(f[0]).len(), 5);
    assert!(tensors(f[0]).contains(&"model.norm.weight"));
    assert!(f[0]["message"].as_str().unwrap().contains("add 1"));
}

#[test]
fn shapes_name_the_config_field_they_disagree_with() {
    let tmp = tempfile::tempdir().unwrap();
    // num_key_value_heads says 4; k/v projections (and their biases) hold 2 heads.
    let a = tmp.path().join("kv");
    edited(
        "qwen2",
        &a,
        |_, _| {},
        |c| c["num_key_value_heads"] = 4.into(),
    );
    let (code, v) = lint_json(&a, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "attention-shapes");
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["config"]["field"], "num_key_value_heads");
    assert_eq!(f[0]["config"]["config"], 4);
    assert_eq!(f[0]["config"]["weights"], 2);
    let names = tensors(f[0]);
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&"model.layers.1.self_attn.v_proj.bias"));
    assert_eq!(status(&v, "mlp-shapes"), "passed");

    // intermediate_size.
    let b = tmp.path().join("mlp");
    edited(
        "llama",
        &b,
        |_, _| {},
        |c| c["intermediate_size"] = 200.into(),
    );
    let (code, v) = lint_json(&b, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "mlp-shapes");
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["config"]["field"], "intermediate_size");
    assert_eq!(f[0]["config"]["weights"], 176);
    assert_eq!(tensors(f[0]).len(), 6);
    assert_eq!(status(&v, "attention-shapes"), "passed");

    // An explicit head_dim the q/k/v/o and q/k norms do not have.
    let c = tmp.path().join("head-dim");
    edited("qwen3", &c, |_, _| {}, |c| c["head_dim"] = 16.into());
    let (code, v) = lint_json(&c, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "attention-shapes");
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(f[0]["config"]["field"], "head_dim");
    assert_eq!(f[0]["config"]["weights"], 32);

    // A shape no single field explains.
    let d = tmp.path().join("odd");
    edited(
        "llama",
        &d,
        |t, _| {
            let w = get(t, "model.layers.0.self_attn.k_proj.weight");
            w.1 = vec![30, 64];
            w.2.truncate(30 * 64 * 4);
        },
        |_| {},
    );
    let (code, v) = lint_json(&d, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "attention-shapes");
    assert_eq!(tensors(f[0]), ["model.layers.0.self_attn.k_proj.weight"]);
    assert!(f[0]["config"].is_null());
    assert!(f[0]["message"]
        .as_str()
        .unwrap()
        .contains("no single config field"));
}

#[test]
fn dtype_against_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    edited("llama", &m, |_, _| {}, |c| c["dtype"] = "bfloat16".into());
    let (code, v) = lint_json(&m, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "dtype");
    assert_eq!(f.len(), 1);
    assert_eq!(tensors(f[0]).len(), 21);
    assert_eq!(f[0]["config"]["field"], "dtype");
    assert_eq!(f[0]["config"]["weights"], "F32");
    // transformers 4.x's key.
    let n = tmp.path().join("n");
    edited(
        "llama",
        &n,
        |_, _| {},
        |c| {
            c.as_object_mut().unwrap().remove("dtype");
            c["torch_dtype"] = "float16".into();
        },
    );
    let (_, v) = lint_json(&n, &[]);
    assert_eq!(findings(&v, "dtype")[0]["config"]["field"], "torch_dtype");
}

#[test]
fn a_converted_checkpoint_about_to_be_converted_again() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let st = orient()
        .args(["convert", "--quiet", "--no-fsync"])
        .arg(fixture("qwen2-flax"))
        .arg(&hf)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (code, v) = lint_json(&hf, &[]);
    assert_eq!(code, 0, "{v:#}");
    let detail = v["checks"][5]["detail"].as_str().unwrap();
    assert!(detail.contains("from flax to hf"), "{detail}");
    // The same way again.
    let (code, v) = lint_json(&hf, &["--to", "hf", "--from", "flax"]);
    assert_eq!(code, 1);
    let f = findings(&v, "reconversion");
    assert!(
        f[0]["message"].as_str().unwrap().contains("a second time"),
        "{f:?}"
    );
    assert!(tensors(f[0])[0].ends_with("model.safetensors"));
    let (code, _) = lint_json(&hf, &["--to", "hf"]);
    assert_eq!(code, 1);
    // Another way is a new conversion.
    let (code, _) = lint_json(&hf, &["--to", "flax"]);
    assert_eq!(code, 0);
    // Metadata claiming Flax over HF tensors: stale provenance.
    let stale = tmp.path().join("stale");
    edited(
        "qwen2",
        &stale,
        |_, m| {
            m.insert("format".into(), "flax".into());
            m.insert("orient.source_convention".into(), "hf".into());
            m.insert("orient.version".into(), "0.1.0".into());
        },
        |_| {},
    );
    let (code, v) = lint_json(&stale, &[]);
    assert_eq!(code, 1);
    assert!(findings(&v, "reconversion")[0]["message"]
        .as_str()
        .unwrap()
        .contains("tensors are in the hf layout"));
}

#[test]
fn fp8_weights_and_their_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("fp8.safetensors");
    let t = |name: &str, d: Dtype, shape: Vec<usize>, fill: u8| {
        let n: usize = shape.iter().product::<usize>() * d.bitsize() / 8;
        (name.to_string(), (d, shape, vec![fill; n]))
    };
    let tensors = vec![
        // Fine: fine-grained FP8 with its inverse scale, compressed-tensors with both scales.
        t("a.q_proj.weight", Dtype::F8_E4M3, vec![4, 4], 1),
        t("a.q_proj.weight_scale_inv", Dtype::F32, vec![1, 1], 2),
        t("a.k_proj.weight", Dtype::F8_E4M3, vec![4, 4], 3),
        t("a.k_proj.weight_scale", Dtype::F32, vec![4, 1], 4),
        t("a.k_proj.input_scale", Dtype::F32, vec![1], 5),
        // FP8 without a scale.
        t("a.v_proj.weight", Dtype::F8_E5M2, vec![4, 4], 6),
        // A scale without its weight.
        t("a.o_proj.weight_scale", Dtype::F32, vec![4, 1], 7),
        // A scale beside a weight already dequantized.
        t("a.up_proj.weight", Dtype::BF16, vec![4, 4], 8),
        t("a.up_proj.weight_scale_inv", Dtype::F32, vec![1, 1], 9),
    ];
    write(&path, &tensors, HashMap::new());
    let (code, v) = lint_json(&path, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "fp8-scales");
    assert_eq!(f.len(), 3, "{v:#}");
    assert_eq!(tensors_of(f[0]), ["a.v_proj.weight"]);
    assert_eq!(tensors_of(f[1]), ["a.o_proj.weight_scale"]);
    assert_eq!(
        tensors_of(f[2]),
        ["a.up_proj.weight_scale_inv", "a.up_proj.weight"]
    );
    // Without a config the catalogue checks are skipped, and say why.
    assert_eq!(status(&v, "tie-word-embeddings"), "skipped");
    assert_eq!(status(&v, "dtype"), "skipped");
    assert_eq!(status(&v, "duplicates"), "passed");
}

fn tensors_of(f: &Value) -> Vec<&str> {
    tensors(f)
}

#[test]
fn the_same_bytes_under_two_names() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    edited(
        "qwen2",
        &m,
        |t, _| {
            let q0 = get(t, "model.layers.0.self_attn.q_proj.weight").2.clone();
            get(t, "model.layers.1.self_attn.q_proj.weight").2 = q0.clone();
            get(t, "model.layers.1.self_attn.o_proj.weight").2 = q0;
            // Constant tensors (a fresh norm) are equal by design, not duplicates.
            let ones = bytes(&[1.0; 64]);
            get(t, "model.layers.0.input_layernorm.weight").2 = ones.clone();
            get(t, "model.layers.1.input_layernorm.weight").2 = ones;
        },
        |_| {},
    );
    let (code, v) = lint_json(&m, &[]);
    assert_eq!(code, 1);
    let f = findings(&v, "duplicates");
    assert_eq!(f.len(), 1, "{v:#}");
    assert_eq!(
        tensors(f[0]),
        [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.self_attn.q_proj.weight"
        ]
    );
    let detail = v["checks"][7]["detail"].as_str().unwrap();
    assert!(detail.contains("2 constant"), "{detail}");
}

#[test]
fn the_table_names_checks_and_findings_and_exit_codes_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    edited(
        "qwen2",
        &m,
        |_, _| {},
        |c| c["num_key_value_heads"] = 4.into(),
    );
    let out = orient().arg("lint").arg(&m).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("│ attention-shapes    ┆ ✗ 1"), "{text}");
    assert!(
        text.contains("✗ attention-shapes: config `num_key_value_heads` is 4"),
        "{text}"
    );
    assert!(
        text.contains("    model.layers.{0-1}.self_attn.k_proj.weight\n"),
        "{text}"
    );
    assert!(text.ends_with("result: 1 finding\n"), "{text}");
    let out = orient().arg("lint").arg(fixture("qwen2")).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .ends_with("result: no findings\n"));
    // An unreadable model is an error, not a finding.
    let out = orient()
        .arg("lint")
        .arg(tmp.path().join("nothing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot lint"));
}
