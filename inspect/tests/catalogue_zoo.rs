//! The catalogue against the zoo fixtures (issue 10): Gemma 1/2/3, Phi-3, GPT-NeoX, Mixtral,
//! Qwen2-MoE, Qwen3-MoE, BERT and the Qwen sliding-window models, made by transformers 5.24
//! (`generate_zoo.py`) and 4.57's Flax conversion (`generate_zoo_flax.py`).
//!
//! Names and shapes: every tensor resolves in the expected convention with the catalogue's
//! shape, every required tensor is there, and the detector names the convention. Values: the
//! transforms are checked on the real bytes, against what transformers wrote: the packed
//! experts (`save_file(model.state_dict())`) read back through hf-packed's chain are the
//! per-expert tensors `save_pretrained` wrote, bit for bit; the Flax twins read back are the HF
//! tensors; and the fused tensors' derive chains (Phi-3 `qkv_proj`/`gate_up_proj`, GPT-NeoX
//! `query_key_value` per head) cut out exactly the rows transformers' forward slices.
//! The header is read with a few lines of test-only code, as in catalogue_fixtures.rs.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use orient_inspect::layout::arch::Slot;
use orient_inspect::layout::catalogue::{Catalogue, ConvId, FLAX, HF};
use orient_inspect::layout::gather::{self, Source};
use orient_inspect::layout::resolve::Verdict;
use orient_inspect::layout::view::View;
use orient_inspect::{parse_config, ConfigOutcome, Dtype, ModelConfig};

fn fixture(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(dir)
}

/// One tensor of a single-file safetensors checkpoint.
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// name → tensor, in name order.
fn read(dir: &str) -> BTreeMap<String, Stored> {
    let bytes = std::fs::read(fixture(dir).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    json.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let off = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            let stored = Stored {
                dtype: Dtype::parse(v["dtype"].as_str().unwrap()).unwrap(),
                shape,
                bytes: data[a..b].to_vec(),
            };
            (k.clone(), stored)
        })
        .collect()
}

fn config(dir: &str) -> ModelConfig {
    let text = std::fs::read_to_string(fixture(dir).join("config.json")).unwrap();
    match parse_config(&text).unwrap() {
        ConfigOutcome::Known(c) => c,
        other => panic!("{dir}: {other:?}"),
    }
}

/// A fixture bound to its catalogue in one convention.
struct Bound {
    cat: Catalogue,
    names: Vec<String>,
    tensors: Vec<Stored>,
    binding: orient_inspect::layout::resolve::Binding,
}

impl Bound {
    /// Binds `dir` in convention `conv`, checking names, shapes, coverage and detection.
    fn new(dir: &str, conv: &str) -> Bound {
        let cfg = config(dir);
        let cat = Catalogue::new(&cfg);
        let c: ConvId = cat
            .convention_id(conv)
            .unwrap_or_else(|| panic!("{dir}: no convention {conv}"));
        let all = read(dir);
        let names: Vec<String> = all.keys().cloned().collect();
        let tensors: Vec<Stored> = all.into_values().collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let shaped: Vec<(&str, &[usize])> = refs
            .iter()
            .zip(&tensors)
            .map(|(n, t)| (*n, t.shape.as_slice()))
            .collect();
        let candidates: Vec<ConvId> = (0..cat.conventions().len()).collect();
        let d = cat.detect(&shaped, &candidates);
        assert_eq!(
            d.verdict,
            Verdict::One(c),
            "{dir}: detected {:?}",
            d.verdict
        );
        let binding = cat.bind(&refs, c);
        assert!(
            binding.duplicates.is_empty(),
            "{dir}: {:?}",
            binding.duplicates
        );
        for (k, hit) in binding.hits.iter().enumerate() {
            let h = hit.unwrap_or_else(|| panic!("{dir}: {} not in the catalogue", names[k]));
            let form = &cat.forms()[h.form];
            let shared = form.convention != c;
            assert!(
                !shared || cat.form_of(form.entries[0][0], c) == Some(form),
                "{dir}: {} resolves in {} only",
                names[k],
                cat.conventions()[form.convention].name
            );
            assert_eq!(
                form.stored[h.member][h.part].shape, tensors[k].shape,
                "{dir}: {}",
                names[k]
            );
        }
        for (e, bound) in binding.entry_form.iter().enumerate() {
            assert!(
                bound.is_some() || cat.optional(e, c).is_some(),
                "{dir}: required {} missing",
                cat.entries()[e].name
            );
        }
        Bound {
            cat,
            names,
            tensors,
            binding,
        }
    }

    fn sources(&self) -> Vec<Source<'_>> {
        self.tensors
            .iter()
            .map(|t| Source {
                bytes: &t.bytes,
                dtype: t.dtype,
            })
            .collect()
    }

    fn entry(&self, name: &str) -> usize {
        self.cat
            .entries()
            .iter()
            .position(|e| e.name == name)
            .unwrap_or_else(|| panic!("no entry {name}"))
    }

    /// The canonical view of entry `name` over this file's tensors.
    fn view(&self, name: &str) -> View {
        let shapes: Vec<&[usize]> = self.tensors.iter().map(|t| t.shape.as_slice()).collect();
        let (v, transposed) = self
            .binding
            .entry_view(&self.cat, self.entry(name), &shapes)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} not bound"));
        assert!(transposed.is_empty());
        v
    }

    /// The bytes of `view` (row-major), copied exactly.
    fn bytes(&self, view: &View) -> Vec<u8> {
        let (rows, cols) = gather::rows_cols(view);
        let es = self.tensors[0].dtype.bits() / 8;
        let mut out = vec![0u8; rows * cols * es];
        gather::gather_bytes(view, &self.sources(), 0..rows, &mut out).unwrap();
        out
    }

    /// The bytes of the canonical entry `name`.
    fn canonical(&self, name: &str) -> Vec<u8> {
        self.bytes(&self.view(name))
    }

    /// The stored bytes of tensor `name`.
    fn raw(&self, name: &str) -> &[u8] {
        let k = self.names.iter().position(|n| n == name).unwrap();
        &self.tensors[k].bytes
    }
}

#[test]
fn hf_fixtures_resolve_name_for_name_and_shape_for_shape() {
    for dir in [
        "gemma",
        "gemma-bf16",
        "gemma2",
        "gemma3",
        "gemma3-bf16",
        "phi3",
        "gpt-neox",
        "gpt-neox-bf16",
        "gpt-neox-seq",
        "mixtral",
        "qwen2-moe",
        "qwen2-moe-bf16",
        "qwen3-moe",
        "bert",
        "bert-bf16",
        "qwen2-sw",
        "qwen3-sw",
    ] {
        let b = Bound::new(dir, "hf");
        // What save_pretrained wrote is the canonical form itself: one tensor per entry.
        for (k, name) in b.names.iter().enumerate() {
            let h = b.binding.hits[k].unwrap();
            assert!(b.cat.forms()[h.form].is_one_to_one(), "{dir}: {name}");
        }
    }
}

#[test]
fn packed_fixtures_resolve_in_hf_packed() {
    for (dir, packed) in [
        ("mixtral-packed", 2 * 2),
        ("qwen2-moe-packed", 2 * 2),
        ("qwen3-moe-packed", 2),
    ] {
        let b = Bound::new(dir, "hf-packed");
        let n = b
            .names
            .iter()
            .filter(|n| n.ends_with("experts.gate_up_proj") || n.ends_with("experts.down_proj"))
            .count();
        assert_eq!(n, packed, "{dir}");
    }
    // Mixtral's router is renamed in memory; its per-expert name is HF only.
    let cat = Catalogue::new(&config("mixtral"));
    let m = cat.resolve("model.layers.0.mlp.gate.weight").unwrap();
    assert_eq!(cat.conventions()[m.convention].name, "hf-packed");
    assert_eq!(
        cat.entries()[m.entry].name,
        "model.layers.0.block_sparse_moe.gate.weight"
    );
    // hf-packed exists only for the architectures it changes.
    assert!(Catalogue::new(&config("gemma"))
        .convention_id("hf-packed")
        .is_none());
    assert_eq!(Catalogue::new(&config("gemma")).conventions().len(), 2);
}

#[test]
fn flax_fixtures_resolve_and_read_back_to_the_hf_tensors() {
    for (flax, hf) in [("gemma-flax", "gemma"), ("bert-flax", "bert")] {
        let f = Bound::new(flax, "flax");
        let h = Bound::new(hf, "hf");
        assert_eq!(f.cat.convention_id("flax"), Some(FLAX));
        let mut checked = 0;
        for (e, entry) in h.cat.entries().iter().enumerate() {
            if h.binding.entry_form[e].is_none() {
                continue;
            }
            assert_eq!(
                f.canonical(&entry.name),
                h.canonical(&entry.name),
                "{flax}: {}",
                entry.name
            );
            checked += 1;
        }
        assert_eq!(checked, h.names.len(), "{flax}");
    }
    // FlaxGemma ties its head to the embedding (no lm_head.kernel), like FlaxGPT2.
    let g = Bound::new("gemma-flax", "flax");
    let lm = g.entry("lm_head.weight");
    assert!(g.binding.entry_form[lm].is_none());
    assert!(g.cat.optional(lm, FLAX).is_some());
}

/// The experts read from the packed file through hf-packed's chain (unstack, then split gate
/// from up) are the tensors save_pretrained wrote, bit for bit: the chain is what
/// transformers' conversion_mapping does, in reverse.
#[test]
fn packed_experts_read_back_to_the_per_expert_tensors() {
    for (packed, per_expert, layers) in [
        ("mixtral-packed", "mixtral", 2),
        ("qwen2-moe-packed", "qwen2-moe", 2),
        ("qwen3-moe-packed", "qwen3-moe", 1),
    ] {
        let p = Bound::new(packed, "hf-packed");
        let h = Bound::new(per_expert, "hf");
        let mut checked = 0;
        for entry in h.cat.entries() {
            if entry.expert.is_none() && entry.slots != [Slot::Router] {
                continue;
            }
            if h.names.iter().all(|n| *n != entry.name) {
                continue;
            }
            assert_eq!(
                p.canonical(&entry.name),
                h.raw(&entry.name),
                "{packed}: {}",
                entry.name
            );
            checked += 1;
        }
        // E = 4 experts × 3 projections + the router, per MoE layer.
        assert_eq!(checked, layers * (4 * 3 + 1), "{packed}");
    }
}

/// f32 values of `bytes`.
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The slots of `entry` from its canonical view, as f32 matrices.
fn slots(b: &Bound, entry: &str) -> Vec<(Slot, Vec<f32>)> {
    let e = b.entry(entry);
    b.cat
        .slot_views(e, b.view(entry))
        .unwrap()
        .into_iter()
        .map(|(s, v)| (s, f32s(&b.bytes(&v))))
        .collect()
}

/// Rows `rows` of a row-major matrix with `cols` columns.
fn rows(m: &[f32], cols: usize, rows: impl Iterator<Item = usize>) -> Vec<f32> {
    rows.flat_map(|r| m[r * cols..(r + 1) * cols].to_vec())
        .collect()
}

#[test]
fn phi3_fused_tensors_derive_q_k_v_and_gate_up_as_transformers_slices_them() {
    // Phi3Attention: q = qkv[..., :nH·D], k = the next nKV·D, v = the rest (nH = 2, nKV = 1,
    // D = 16, H = 32); Phi3MLP: gate, up = gate_up.chunk(2) (I = 64).
    let b = Bound::new("phi3", "hf");
    let qkv = f32s(b.raw("model.layers.1.self_attn.qkv_proj.weight"));
    let got = slots(&b, "model.layers.1.self_attn.qkv_proj.weight");
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [Slot::Q, Slot::K, Slot::V]
    );
    assert_eq!(got[0].1, rows(&qkv, 32, 0..32));
    assert_eq!(got[1].1, rows(&qkv, 32, 32..48));
    assert_eq!(got[2].1, rows(&qkv, 32, 48..64));
    let gu = f32s(b.raw("model.layers.0.mlp.gate_up_proj.weight"));
    let got = slots(&b, "model.layers.0.mlp.gate_up_proj.weight");
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [Slot::Gate, Slot::Up]
    );
    assert_eq!(got[0].1, rows(&gu, 32, 0..64));
    assert_eq!(got[1].1, rows(&gu, 32, 64..128));
}

#[test]
fn gpt_neox_query_key_value_derives_per_head() {
    // GPTNeoXAttention: qkv.view(T, nH, 3·D).chunk(3): rows [nH, 3, D]; nH = 2, D = 16.
    for dir in ["gpt-neox", "gpt-neox-seq"] {
        let b = Bound::new(dir, "hf");
        let name = "gpt_neox.layers.0.attention.query_key_value.weight";
        let w = f32s(b.raw(name));
        let got = slots(&b, name);
        for (part, (slot, m)) in got.iter().enumerate() {
            assert_eq!(*slot, [Slot::Q, Slot::K, Slot::V][part]);
            let want = rows(
                &w,
                32,
                (0..2).flat_map(|h| (h * 48 + part * 16)..(h * 48 + part * 16 + 16)),
            );
            assert_eq!(*m, want, "{dir}: part {part}");
        }
        let name = "gpt_neox.layers.1.attention.query_key_value.bias";
        let bias = f32s(b.raw(name));
        let got = slots(&b, name);
        assert_eq!(got[1].0, Slot::KBias);
        assert_eq!(got[1].1, [&bias[16..32], &bias[64..80]].concat());
    }
}

#[test]
fn slots_of_the_new_architectures() {
    let cat = Catalogue::new(&config("gemma2"));
    let post = cat
        .resolve("model.layers.0.post_attention_layernorm.weight")
        .unwrap();
    // Gemma 2's post_attention_layernorm normalises the attention output; its pre-MLP norm is
    // pre_feedforward_layernorm (llama's post_attention_layernorm is the pre-MLP norm).
    assert_eq!(cat.entries()[post.entry].slots, [Slot::PostAttnNorm]);
    assert_eq!(
        cat.slot_entries(Some(0), Slot::MlpNorm)
            .map(|(e, _)| cat.entries()[e].name.clone()),
        Some("model.layers.0.pre_feedforward_layernorm.weight".to_string())
    );
    let cat = Catalogue::new(&config("qwen2"));
    let post = cat
        .resolve("model.layers.0.post_attention_layernorm.weight")
        .unwrap();
    assert_eq!(cat.entries()[post.entry].slots, [Slot::MlpNorm]);
    // Qwen3-MoE's layer 1 is dense (mlp_only_layers = [1]): a dense MLP there, experts on 0.
    let cat = Catalogue::new(&config("qwen3-moe"));
    assert!(cat.slot_entries(Some(0), Slot::Gate).is_none());
    assert!(cat.slot_entries(Some(0), Slot::Router).is_some());
    assert!(cat.slot_entries(Some(1), Slot::Gate).is_some());
    assert!(cat.slot_entries(Some(1), Slot::Router).is_none());
    let experts: Vec<(usize, &str)> = cat
        .entries()
        .iter()
        .filter(|e| e.slots == [Slot::ExpertDown])
        .map(|e| (e.expert.unwrap(), e.name.as_str()))
        .collect();
    assert_eq!(experts.len(), 4);
    assert_eq!(
        experts[3],
        (3, "model.layers.0.mlp.experts.3.down_proj.weight")
    );
    let cat = Catalogue::new(&config("bert"));
    for slot in [
        Slot::TokenTypeEmbed,
        Slot::EmbedNorm,
        Slot::EmbedNormBias,
        Slot::Pooler,
        Slot::PoolerBias,
    ] {
        assert!(cat.slot_entries(None, slot).is_some(), "{slot:?}");
    }
    // A BertForMaskedLM file (`bert.` prefix, cls.* head, no pooler) resolves too.
    for name in [
        "bert.encoder.layer.1.attention.self.query.weight",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.bias",
        "bert.embeddings.position_ids",
    ] {
        let m = cat.resolve(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(cat.entries()[m.entry].name, name);
    }
    let pooler = cat.resolve("pooler.dense.weight").unwrap();
    assert!(cat.optional(pooler.entry, HF).is_some());
}
