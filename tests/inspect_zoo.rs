//! `orient inspect` on the zoo fixtures (issue 10): every tensor `ok` in the convention its
//! names say (hf, hf-packed, flax), snapshots of the tables, packed experts whose per-expert
//! blocks are square flagged like square projections, packed experts stored transposed caught.
//! (`synth` of every zoo config: tests/zoo_round_trips.rs.)
#![allow(clippy::unwrap_used)]

mod common;
use common::orient;

use serde_json::Value;

const FIXTURES: &str = "tests/fixtures";

/// Every zoo fixture with the convention its tensors are in.
const ZOO: &[(&str, &str)] = &[
    ("gemma", "hf"),
    ("gemma-bf16", "hf"),
    ("gemma-flax", "flax"),
    ("gemma2", "hf"),
    ("gemma2-bf16", "hf"),
    ("gemma3", "hf"),
    ("gemma3-bf16", "hf"),
    ("phi3", "hf"),
    ("phi3-bf16", "hf"),
    ("gpt-neox", "hf"),
    ("gpt-neox-bf16", "hf"),
    ("gpt-neox-seq", "hf"),
    ("mixtral", "hf"),
    ("mixtral-packed", "hf-packed"),
    ("qwen2-moe", "hf"),
    ("qwen2-moe-bf16", "hf"),
    ("qwen2-moe-packed", "hf-packed"),
    ("qwen3-moe", "hf"),
    ("qwen3-moe-packed", "hf-packed"),
    ("bert", "hf"),
    ("bert-bf16", "hf"),
    ("bert-flax", "flax"),
    ("qwen2-sw", "hf"),
    ("qwen3-sw", "hf"),
];

fn inspect(args: &[&str]) -> (i32, String, String) {
    let out = orient().arg("inspect").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn inspect_json(path: &str) -> Value {
    let (code, stdout, stderr) = inspect(&[path, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn rows(v: &Value) -> &Vec<Value> {
    v["tensors"].as_array().unwrap()
}

#[test]
fn every_zoo_fixture_is_all_ok_in_its_convention() {
    for (name, convention) in ZOO {
        let path = format!("{FIXTURES}/{name}");
        let v = inspect_json(&path);
        assert!(!rows(&v).is_empty(), "{name}");
        for r in rows(&v) {
            assert_eq!(r["status"], "ok", "{name}: {}", r["name"]);
            assert!(!r["role"].is_null(), "{name}: {}", r["name"]);
        }
        assert_eq!(v["summary"]["convention"]["kind"], *convention, "{name}");
        assert_eq!(
            v["summary"]["architecture"],
            Value::String(
                match name.split('-').next().unwrap() {
                    "gpt" => "gpt_neox",
                    "gemma3" => "gemma3_text",
                    "qwen2" if name.contains("moe") => "qwen2_moe",
                    "qwen3" if name.contains("moe") => "qwen3_moe",
                    other => other,
                }
                .to_string()
            ),
            "{name}"
        );
        orient()
            .args(["inspect", "--check", &path])
            .assert()
            .success();
    }
}

#[test]
fn table_snapshots_of_every_zoo_fixture() {
    for (name, _) in ZOO {
        let (code, stdout, stderr) = inspect(&[&format!("{FIXTURES}/{name}"), "--group-layers"]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(stderr.is_empty(), "{name}: {stderr}");
        insta::assert_snapshot!(format!("inspect_{name}"), stdout);
    }
}

fn row<'a>(v: &'a Value, name: &str) -> &'a Value {
    rows(v)
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name}"))
}

/// A packed tensor whose experts' blocks are square cannot prove its orientation, exactly like
/// a square projection; a non-square one can.
#[test]
fn packed_experts_with_square_blocks_are_flagged() {
    // mixtral: I = H = 32, so down_proj [4, 32, 32] is square per expert, gate_up [4, 64, 32]
    // is not; qwen3-moe: 2·I = H, so gate_up [4, 32, 32] is, down [4, 32, 16] is not;
    // qwen2-moe: neither ([4, 48, 32], [4, 32, 24]).
    for (dir, name, square) in [
        (
            "mixtral-packed",
            "model.layers.1.mlp.experts.down_proj",
            true,
        ),
        (
            "mixtral-packed",
            "model.layers.1.mlp.experts.gate_up_proj",
            false,
        ),
        (
            "qwen3-moe-packed",
            "model.layers.0.mlp.experts.gate_up_proj",
            true,
        ),
        (
            "qwen3-moe-packed",
            "model.layers.0.mlp.experts.down_proj",
            false,
        ),
        (
            "qwen2-moe-packed",
            "model.layers.0.mlp.experts.gate_up_proj",
            false,
        ),
        (
            "qwen2-moe-packed",
            "model.layers.0.mlp.experts.down_proj",
            false,
        ),
    ] {
        let v = inspect_json(&format!("{FIXTURES}/{dir}"));
        let r = row(&v, name);
        assert_eq!(r["status"], "ok", "{dir}: {name}");
        assert_eq!(r["square_ambiguous"], square, "{dir}: {name}");
        assert_eq!(r["convention"], "hf-packed", "{dir}: {name}");
    }
    // The per-expert blocks themselves: w2 [32, 32] of mixtral is a square projection too.
    let v = inspect_json(&format!("{FIXTURES}/mixtral"));
    let r = row(&v, "model.layers.0.block_sparse_moe.experts.3.w2.weight");
    assert_eq!(r["square_ambiguous"], true);
    let r = row(&v, "model.layers.0.block_sparse_moe.experts.3.w1.weight");
    assert_eq!(r["square_ambiguous"], true);
}

/// Copies a single-file safetensors checkpoint, transposing the last two dims of the tensors
/// `flip` names (each expert's block of a packed tensor).
fn copy_with_transposed(src: &str, dst: &std::path::Path, flip: &[&str]) {
    let bytes = std::fs::read(format!("{src}/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    let mut names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort();
    for name in &names {
        let t = header.get_mut(name).unwrap();
        let off = t["data_offsets"].as_array().unwrap();
        let (a, b) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        let mut chunk = data[a..b].to_vec();
        if flip.contains(&name.as_str()) {
            let shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let [e, r, c] = shape[..] else { panic!() };
            let mut flipped = vec![0u8; chunk.len()];
            for x in 0..e {
                for i in 0..r {
                    for j in 0..c {
                        let from = ((x * r + i) * c + j) * 4;
                        let to = ((x * c + j) * r + i) * 4;
                        flipped[to..to + 4].copy_from_slice(&chunk[from..from + 4]);
                    }
                }
            }
            chunk = flipped;
            t["shape"] = serde_json::json!([e, c, r]);
        }
        let start = out.len();
        out.extend_from_slice(&chunk);
        t["data_offsets"] = serde_json::json!([start, out.len()]);
    }
    let mut head = serde_json::to_vec(&header).unwrap();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut file = (head.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&head);
    file.extend_from_slice(&out);
    std::fs::write(dst.join("model.safetensors"), file).unwrap();
    std::fs::copy(format!("{src}/config.json"), dst.join("config.json")).unwrap();
}

/// A loader that transposed each expert's block (`[E, H, 2I]` instead of `[E, 2I, H]`) is
/// caught where the blocks are not square, and `--check` fails.
#[test]
fn packed_experts_stored_transposed_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    copy_with_transposed(
        &format!("{FIXTURES}/qwen2-moe-packed"),
        dir.path(),
        &[
            "model.layers.0.mlp.experts.gate_up_proj",
            "model.layers.1.mlp.experts.down_proj",
        ],
    );
    let p = dir.path().to_str().unwrap();
    let v = inspect_json(p);
    let r = row(&v, "model.layers.0.mlp.experts.gate_up_proj");
    assert_eq!(r["status"], "transposed");
    assert_eq!(r["shape"], serde_json::json!([4, 32, 48]));
    assert_eq!(r["expected_shape"], serde_json::json!([4, 48, 32]));
    assert_eq!(
        row(&v, "model.layers.1.mlp.experts.down_proj")["status"],
        "transposed"
    );
    assert_eq!(
        row(&v, "model.layers.1.mlp.experts.gate_up_proj")["status"],
        "ok"
    );
    orient().args(["inspect", "--check", p]).assert().code(1);
}
