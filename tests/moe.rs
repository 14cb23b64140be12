//! The mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE) through `orient verify` and `orient
//! run`: logits against transformers 5.24 on the 208-token prompt, the per-expert files
//! `save_pretrained` writes and the packed ones `save_file(model.state_dict())` writes, f32 and
//! bf16 weights; and the two layouts bit-identical.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use orient::model::Model;
use orient_inspect::Checkpoint;
use serde_json::Value;

/// `orient verify --json MODEL --reference REF` (exit 0 expected), as JSON.
fn verify_reference(model: &str, reference: &str) -> Value {
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
    serde_json::from_slice(&out).unwrap()
}

/// The logits row of a verify report: max |Δlogit| ≤ 1e-4 and the same top-1 at all 208
/// positions; returns max |Δlogit|.
fn check_logits(model: &str, reference: &str) -> f64 {
    let v = verify_reference(model, reference);
    assert_eq!(v["passed"], true, "{model}: {v}");
    assert_eq!(v["tokens"], 208, "{model}");
    let rows = v["comparison"]["rows"].as_array().unwrap();
    let logits = rows
        .iter()
        .find(|r| r["stage"]["kind"] == "lm_head")
        .unwrap();
    let max = logits["diff"]["max_abs"].as_f64().unwrap();
    assert!(max <= 1e-4, "{model}: max |Δlogit| = {max}");
    assert_eq!(logits["agreement"]["top1_agree"], 208, "{model}");
    assert_eq!(logits["agreement"]["positions"], 208, "{model}");
    max
}

#[test]
fn mixtral_per_expert_matches_transformers() {
    check_logits("mixtral", "mixtral");
}

#[test]
fn mixtral_packed_matches_transformers() {
    check_logits("mixtral-packed", "mixtral");
}

#[test]
fn qwen2_moe_per_expert_with_shared_expert_matches_transformers() {
    check_logits("qwen2-moe", "qwen2-moe");
}

#[test]
fn qwen2_moe_packed_matches_transformers() {
    check_logits("qwen2-moe-packed", "qwen2-moe");
}

#[test]
fn qwen2_moe_bf16_matches_transformers_on_upcast_weights() {
    check_logits("qwen2-moe-bf16", "qwen2-moe-bf16");
}

#[test]
fn qwen3_moe_per_expert_with_a_dense_layer_matches_transformers() {
    check_logits("qwen3-moe", "qwen3-moe");
}

#[test]
fn qwen3_moe_packed_matches_transformers() {
    check_logits("qwen3-moe-packed", "qwen3-moe");
}

/// The packed file is a relayout of the per-expert one: every stage (embedding, each layer's
/// attention and MLP, final norm, logits) is bit-identical, on 208 tokens and on 1 to 3 (where
/// an expert gets a one-row product), and `run` names the convention each was read in.
#[test]
fn packed_and_per_expert_experts_give_bit_identical_outputs() {
    let cases = ["mixtral", "qwen2-moe", "qwen3-moe"]
        .into_iter()
        .flat_map(|name| [208, 1, 2, 3].map(|len| (name, len)));
    for (name, len) in cases {
        let packed = format!("{name}-packed");
        let tokens: Vec<String> = (0..len)
            .map(|i| ((i * 37 + 11) % 256).to_string())
            .collect();
        let out = orient()
            .args(["verify", "--json", "--atol", "0", "--rtol", "0", "--tokens"])
            .arg(tokens.join(","))
            .arg(fixture(&packed))
            .arg("--against")
            .arg(fixture(name))
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let rows = v["comparison"]["rows"].as_array().unwrap();
        assert!(rows.len() >= 6, "{name}: {rows:?}");
        for row in rows {
            assert_eq!(row["diff"]["max_abs"], 0.0, "{name}, {len} tokens: {row}");
        }
        for (dir, convention) in [(name, "hf"), (packed.as_str(), "hf-packed")] {
            let out = orient()
                .args(["run", "--json", "--tokens", "1,2,3"])
                .arg(fixture(dir))
                .assert()
                .success()
                .get_output()
                .stdout
                .clone();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["convention"], convention, "{dir}");
        }
    }
}

/// FLOP counts follow the active parameters: a token runs 2 of mixtral's 4 experts, so half of
/// the routed experts' 2 layers × 4 experts × 3 matrices of 32 × 32 are idle.
#[test]
fn active_parameters_count_k_of_e_experts() {
    for name in ["mixtral", "mixtral-packed"] {
        let ckpt = Checkpoint::open(fixture(name)).unwrap();
        let model = Model::new(&ckpt).unwrap();
        let idle = (2 * 4 * 3 * 32 * 32 / 2) as f64;
        assert_eq!(
            model.parameters() as f64 - model.active_parameters(),
            idle,
            "{name}"
        );
    }
    let ckpt = Checkpoint::open(fixture("qwen2")).unwrap();
    let dense = Model::new(&ckpt).unwrap();
    assert_eq!(dense.active_parameters(), dense.parameters() as f64);
}

/// Only the experts a token is routed to are read: with one token and top-2 of 4 experts, an
/// expert whose weights are all NaN poisons the logits exactly when the token picks it. Over
/// the four experts of layer 0, two runs give the clean logits bit for bit (those experts were
/// never multiplied, not even by a zero weight) and two give NaN.
#[test]
fn only_the_routed_experts_are_computed() {
    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;
    let src = fixture("mixtral");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let clean = {
        let ckpt = Checkpoint::open(&src).unwrap();
        Model::new(&ckpt)
            .unwrap()
            .forward(&[7], false)
            .unwrap()
            .logits
    };
    let (mut untouched, mut poisoned) = (0, 0);
    for expert in 0..4 {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let prefix = format!("model.layers.0.block_sparse_moe.experts.{expert}.");
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                let data = if n.starts_with(&prefix) {
                    f32::NAN.to_le_bytes().repeat(t.data().len() / 4)
                } else {
                    t.data().to_vec()
                };
                (n, t.shape().to_vec(), data)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let views: Vec<(String, TensorView<'_>)> = owned
            .iter()
            .map(|(n, s, d)| {
                let v = TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap();
                (n.clone(), v)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        let logits = Model::new(&ckpt)
            .unwrap()
            .forward(&[7], false)
            .unwrap()
            .logits;
        if logits
            .iter()
            .zip(&clean)
            .all(|(a, b)| a.to_bits() == b.to_bits())
        {
            untouched += 1;
        } else {
            assert!(logits.iter().all(|v| v.is_nan()), "expert {expert}");
            poisoned += 1;
        }
    }
    assert_eq!((untouched, poisoned), (2, 2));
}
