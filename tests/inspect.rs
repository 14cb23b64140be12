//! `orient inspect` driven as a user would: snapshots of the table on every fixture,
//! the JSON schema, exit codes, hostile files and a closed pipe.
#![allow(clippy::unwrap_used)]

mod common;
use common::orient;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};

use serde_json::Value;

const FIXTURES: &str = "tests/fixtures";

fn inspect(args: &[&str]) -> (i32, String, String) {
    let out = orient().arg("inspect").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn inspect_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, stdout, stderr) = inspect(&all);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn rows(v: &Value) -> &Vec<Value> {
    v["tensors"].as_array().unwrap()
}

fn row<'a>(v: &'a Value, name: &str) -> &'a Value {
    rows(v)
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}"))
}

#[test]
fn table_snapshots_of_every_fixture() {
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
        let (code, stdout, stderr) = inspect(&[&format!("{FIXTURES}/{name}")]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(stderr.is_empty(), "{name}: {stderr}");
        insta::assert_snapshot!(format!("inspect_{name}"), stdout);
    }
}

#[test]
fn clean_fixtures_are_all_ok_and_pass_check() {
    for name in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gpt2",
        "llama-bf16",
        "llama-flax",
        "mistral-flax",
        "gpt2-flax",
        "qwen2-flax",
    ] {
        let path = format!("{FIXTURES}/{name}");
        let v = inspect_json(&[&path]);
        for r in rows(&v) {
            assert_eq!(r["status"], "ok", "{name}: {}", r["name"]);
        }
        let expect = if name.ends_with("-flax") {
            "flax"
        } else {
            "hf"
        };
        assert_eq!(v["summary"]["convention"]["kind"], expect, "{name}");
        orient()
            .args(["inspect", "--check", &path])
            .assert()
            .success();
    }
}

#[test]
fn buggy_jax_loader_is_exposed() {
    let path = format!("{FIXTURES}/qwen2-buggy");
    let v = inspect_json(&[&path]);
    for layer in 0..2 {
        for p in ["k_proj", "v_proj"] {
            let r = row(&v, &format!("model.layers.{layer}.self_attn.{p}.weight"));
            assert_eq!(r["status"], "transposed");
            assert_eq!(r["square_ambiguous"], false);
        }
        for p in ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"] {
            assert_eq!(
                row(&v, &format!("model.layers.{layer}.{p}.weight"))["status"],
                "transposed"
            );
        }
        // The square projections keep their shape: only the flag can warn.
        for p in ["q_proj", "o_proj"] {
            let r = row(&v, &format!("model.layers.{layer}.self_attn.{p}.weight"));
            assert_eq!(r["status"], "ok");
            assert_eq!(r["square_ambiguous"], true);
        }
    }
    let conv = &v["summary"]["convention"];
    assert_eq!(conv["kind"], "mixed");
    assert_eq!(conv["offending"].as_array().unwrap().len(), 10);
    assert_eq!(v["summary"]["square_ambiguous"], 4);
    orient()
        .args(["inspect", "--check", &path])
        .assert()
        .code(1);
}

#[test]
fn json_schema_is_stable() {
    let v = inspect_json(&[&format!("{FIXTURES}/qwen3")]);
    assert_eq!(v["schema_version"], 1);
    let keys: Vec<&str> = row(&v, "model.layers.0.self_attn.q_proj.weight")
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "name",
            "dtype",
            "shape",
            "params",
            "role",
            "convention",
            "layout",
            "expected_shape",
            "shape_formula",
            "status",
            "square_ambiguous",
            "layer",
            "shard",
            "note",
            "stats"
        ]
    );
    let q = row(&v, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q["dtype"], "F32");
    assert_eq!(q["shape"], serde_json::json!([128, 64]));
    assert_eq!(q["role"], "linear");
    assert_eq!(q["convention"], "hf");
    assert_eq!(q["layout"], "hf Linear [out,in]");
    assert_eq!(q["expected_shape"], serde_json::json!([128, 64]));
    assert_eq!(q["shape_formula"], "[nH·D, H]");
    let s = &v["summary"];
    let mut summary_keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    summary_keys.sort_unstable();
    assert_eq!(
        summary_keys,
        [
            "architecture",
            "bytes_by_dtype",
            "config",
            "convention",
            "format",
            "layout",
            "metadata",
            "notes",
            "path",
            "shards",
            "square_ambiguous",
            "status_counts",
            "tensors",
            "total_params"
        ]
    );
    assert_eq!(
        s["format"],
        serde_json::json!({"kind": "safetensors", "undecodable": [], "dequantized": 0, "config_reconstructed": null})
    );
    assert_eq!(s["architecture"], "qwen3");
    assert_eq!(s["tensors"], 24);
    assert_eq!(s["total_params"], 149_952);
    assert_eq!(s["bytes_by_dtype"]["F32"], 149_952 * 4);
    assert_eq!(s["shards"], 1);
    assert_eq!(s["metadata"]["format"], "pt");
    let notes = s["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("`lm_head.weight` is absent: tied")),
        "{notes:?}"
    );
}

#[test]
fn filter_group_layers_and_stats() {
    let (code, stdout, _) = inspect(&[&format!("{FIXTURES}/llama"), "--group-layers"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("inspect_llama_grouped", stdout);

    let v = inspect_json(&[&format!("{FIXTURES}/llama"), "--filter", "*layers.1.*proj*"]);
    let names: Vec<&str> = rows(&v)
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("model.layers.1.")));
    assert_eq!(v["summary"]["tensors"], 21, "totals stay whole");

    let v = inspect_json(&[
        &format!("{FIXTURES}/llama-bf16"),
        "--stats",
        "--filter",
        "model.norm.weight",
    ]);
    let stats = &row(&v, "model.norm.weight")["stats"];
    assert_eq!(stats["nan"], 0);
    assert_eq!(stats["inf"], 0);
    let (min, max, mean) = (
        stats["min"].as_f64().unwrap(),
        stats["max"].as_f64().unwrap(),
        stats["mean"].as_f64().unwrap(),
    );
    assert!(
        min <= mean && mean <= max && (0.5..1.5).contains(&mean),
        "{stats}"
    );

    let (code, _, stderr) = inspect(&[&format!("{FIXTURES}/llama"), "--filter", "a[b"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid --filter glob"), "{stderr}");
}

fn write_st(path: &Path, tensors: &[(&str, &str, &[usize], Vec<u8>)]) {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{},{}]}}",
            data.len(),
            data.len() + bytes.len()
        ));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn no_config_and_unknown_arch_still_list_everything() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{FIXTURES}/qwen2/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let p = dir.path().to_str().unwrap();
    let v = inspect_json(&[p]);
    assert_eq!(rows(&v).len(), 27);
    assert!(rows(&v)
        .iter()
        .all(|r| r["status"] == "unchecked" && r["role"].is_null()));
    assert!(v["summary"]["notes"][0]
        .as_str()
        .unwrap()
        .contains("no config.json"));
    orient().args(["inspect", p]).assert().success();

    std::fs::write(
        dir.path().join("config.json"),
        r#"{"model_type":"falcon","hidden_size":8}"#,
    )
    .unwrap();
    let v = inspect_json(&[p]);
    assert_eq!(rows(&v).len(), 27);
    assert!(v["summary"]["notes"][0]
        .as_str()
        .unwrap()
        .contains("`falcon` is not in the layout catalogue"));
    assert_eq!(v["summary"]["config"], "unknown-architecture (falcon)");
}

#[test]
fn every_dtype_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let all = [
        ("BOOL", 1),
        ("F4", 1),
        ("F6_E2M3", 3),
        ("F6_E3M2", 3),
        ("U8", 1),
        ("I8", 1),
        ("F8_E5M2", 1),
        ("F8_E4M3", 1),
        ("F8_E8M0", 1),
        ("F8_E4M3FNUZ", 1),
        ("F8_E5M2FNUZ", 1),
        ("I16", 2),
        ("U16", 2),
        ("F16", 2),
        ("BF16", 2),
        ("I32", 4),
        ("U32", 4),
        ("F32", 4),
        ("C64", 8),
        ("F64", 8),
        ("I64", 8),
        ("U64", 8),
    ];
    let tensors: Vec<(String, &str, Vec<usize>, Vec<u8>)> = all
        .iter()
        .map(|&(d, bytes_per_4)| {
            // 4 elements (8 for sub-byte F4/F6 to keep whole bytes).
            let n = if d == "F4" || d.starts_with("F6_") {
                8
            } else {
                4
            };
            let len = if d == "F4" {
                4
            } else if d.starts_with("F6_") {
                6
            } else {
                4 * bytes_per_4
            };
            (format!("t_{d}"), d, vec![n], vec![0u8; len])
        })
        .collect();
    let refs: Vec<(&str, &str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.clone()))
        .collect();
    write_st(&dir.path().join("model.safetensors"), &refs);
    let v = inspect_json(&[dir.path().to_str().unwrap(), "--stats"]);
    assert_eq!(rows(&v).len(), 22);
    for (d, _) in all {
        let r = row(&v, &format!("t_{d}"));
        assert_eq!(r["dtype"], d);
        // Integer and IEEE types get statistics; F8/F6/F4/C64 are listed without.
        let has_stats = !(d.starts_with("F8") || d.starts_with("F6_") || d == "F4" || d == "C64");
        assert_eq!(!r["stats"].is_null(), has_stats, "{d}");
    }
}

#[test]
fn sharded_set_is_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let f = |v: f32| v.to_le_bytes().repeat(4);
    write_st(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &[("a.weight", "F32", &[2, 2], f(1.0))],
    );
    write_st(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[("b.weight", "BF16", &[4], vec![0; 8])],
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata":{"total_size":24},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","b.weight":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let v = inspect_json(&[dir.path().to_str().unwrap()]);
    assert_eq!(v["summary"]["shards"], 2);
    assert_eq!(v["summary"]["layout"], "sharded");
    assert_eq!(v["summary"]["bytes_by_dtype"]["BF16"], 8);
    assert_eq!(row(&v, "b.weight")["shard"], 1);
}

#[test]
fn bad_input_exits_2_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    write_st(&p, &[("w", "F32", &[4], vec![0; 16])]);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&p, bytes).unwrap();
    let (code, stdout, stderr) = inspect(&[p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(stderr.starts_with("error: cannot inspect"), "{stderr}");
    assert!(
        stderr.contains("model.safetensors")
            && stderr.contains("`w`")
            && stderr.contains("truncated"),
        "{stderr}"
    );

    // (model.safetensors would win over the index, as in transformers.)
    std::fs::remove_file(&p).unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, r#"{"weight_map":{"w":"../../etc/passwd"}}"#).unwrap();
    let (code, _, stderr) = inspect(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("`../../etc/passwd`") && stderr.contains("not a plain file name"),
        "{stderr}"
    );

    let (code, _, stderr) = inspect(&["/nonexistent/model"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");

    let cfg_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{FIXTURES}/llama/model.safetensors"),
        cfg_dir.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(cfg_dir.path().join("config.json"), "{ not json").unwrap();
    let (code, _, stderr) = inspect(&[cfg_dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("config.json"), "{stderr}");
}

#[test]
fn broken_pipe_exits_quietly() {
    // Enough tensors that the table overflows the pipe buffer.
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3000)
        .map(|i| format!("a.long.tensor.name.number.{i}.weight"))
        .collect();
    let tensors: Vec<(&str, &str, &[usize], Vec<u8>)> = names
        .iter()
        .map(|n| (n.as_str(), "U8", &[1usize][..], vec![0u8]))
        .collect();
    write_st(&dir.path().join("model.safetensors"), &tensors);
    let bin: PathBuf = assert_cmd::cargo::cargo_bin("orient");
    let mut child = StdCommand::new(bin)
        .args(["inspect", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
