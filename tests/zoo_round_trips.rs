//! The zoo through `orient convert` and `orient synth` (issue 10): every zoo fixture converted
//! to each other layout it has and back is bit-identical to the file transformers wrote, and
//! the one-way results equal transformers' own twins (Flax from transformers 4.x's `from_pt`,
//! packed experts from `save_file(model.state_dict())`, bf16 from torch's cast); and `synth`
//! of every zoo config is a checkpoint `inspect --check` accepts and `run` computes.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::SafeTensors;
use serde_json::Value;

/// Every tensor of a checkpoint folder (all its `.safetensors` files), read with the
/// `safetensors` crate, not with orient: name → (dtype, shape, bytes).
type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

fn tensors(dir: &Path) -> Tensors {
    let mut all = Tensors::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("safetensors")
            || path.file_name().unwrap() == "reference.safetensors"
        {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let old = all.insert(
                name.clone(),
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
            assert!(old.is_none(), "{}: {name} twice", dir.display());
        }
    }
    assert!(files > 0, "{}: no safetensors file", dir.display());
    all
}

/// The fixture was saved from a bare base model (transformers' `BertModel` and `FlaxBertModel`
/// write `embeddings.…`, not `bert.embeddings.…`): orient reads those names through the
/// catalogue's base-prefix spelling and writes the canonical names, which carry the prefix
/// (both spellings load in either class). Such rows compare names without the prefix.
fn bare_base_model(fixture: &str) -> Option<&'static str> {
    fixture.starts_with("bert").then_some("bert.")
}

/// `tensors(dir)` with `prefix` removed from every name that has it.
fn tensors_without(dir: &Path, prefix: Option<&str>) -> Tensors {
    let all = tensors(dir);
    let Some(prefix) = prefix else { return all };
    all.into_iter()
        .map(|(name, t)| (name.strip_prefix(prefix).unwrap_or(&name).to_string(), t))
        .collect()
}

/// Asserts two checkpoints hold the same tensor names (up to `prefix`), dtypes, shapes and
/// bytes.
fn assert_bit_identical(what: &str, got: &Path, want: &Path, prefix: Option<&str>) {
    let (got, want) = (tensors_without(got, prefix), tensors_without(want, prefix));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: tensor names"
    );
    for (name, (dtype, shape, bytes)) in &want {
        let (g_dtype, g_shape, g_bytes) = &got[name];
        assert_eq!((g_dtype, g_shape), (dtype, shape), "{what}: {name}");
        assert!(g_bytes == bytes, "{what}: {name}: bytes differ");
    }
}

/// `orient convert SRC DST ARGS…`, expected to succeed.
fn convert(src: &Path, dst: &Path, args: &[&str]) {
    orient()
        .args(["convert", "-q", "--no-fsync"])
        .arg(src)
        .arg(dst)
        .args(args)
        .assert()
        .success();
}

/// One round trip: `fixture` converted with `there`, the result converted back with `back`,
/// must give the fixture's tensors bit for bit; and the way there must give `twin`'s tensors
/// (transformers' own file of the same weights in that layout), when there is one.
struct RoundTrip {
    fixture: &'static str,
    there: &'static [&'static str],
    twin: Option<&'static str>,
    back: &'static [&'static str],
}

const fn trip(
    fixture: &'static str,
    there: &'static [&'static str],
    twin: Option<&'static str>,
    back: &'static [&'static str],
) -> RoundTrip {
    RoundTrip {
        fixture,
        there,
        twin,
        back,
    }
}

const TO_FLAX: &[&str] = &["--to", "flax"];
const TO_HF: &[&str] = &["--to", "hf"];
const TO_PACKED: &[&str] = &["--to", "hf-packed"];
const TO_BF16: &[&str] = &["--dtype", "bf16"];
const TO_F32: &[&str] = &["--dtype", "f32"];

const ROUND_TRIPS: &[RoundTrip] = &[
    // hf → flax → hf, where transformers 4.x has a Flax class.
    trip("gemma", TO_FLAX, Some("gemma-flax"), TO_HF),
    trip("bert", TO_FLAX, Some("bert-flax"), TO_HF),
    // hf → flax → hf for the others: the catalogue's Flax convention (the Llama rule:
    // kernels [in, out], `embedding`) covers every architecture, with or without a Flax class.
    trip("gemma2", TO_FLAX, None, TO_HF),
    trip("gemma3", TO_FLAX, None, TO_HF),
    trip("phi3", TO_FLAX, None, TO_HF),
    trip("gpt-neox", TO_FLAX, None, TO_HF),
    trip("gpt-neox-seq", TO_FLAX, None, TO_HF),
    trip("mixtral", TO_FLAX, None, TO_HF),
    trip("qwen2-moe", TO_FLAX, None, TO_HF),
    trip("qwen3-moe", TO_FLAX, None, TO_HF),
    trip("qwen2-sw", TO_FLAX, None, TO_HF),
    trip("qwen3-sw", TO_FLAX, None, TO_HF),
    trip("mixtral-packed", TO_FLAX, None, TO_PACKED),
    // flax → hf → flax, from transformers' own Flax files.
    trip("gemma-flax", TO_HF, Some("gemma"), TO_FLAX),
    trip("bert-flax", TO_HF, Some("bert"), TO_FLAX),
    // per-expert ↔ packed, both ways.
    trip("mixtral", TO_PACKED, Some("mixtral-packed"), TO_HF),
    trip("qwen2-moe", TO_PACKED, Some("qwen2-moe-packed"), TO_HF),
    trip("qwen3-moe", TO_PACKED, Some("qwen3-moe-packed"), TO_HF),
    // GPT-NeoX's packed form is its in-memory naming (`embed_out` held as `lm_head`).
    trip("gpt-neox", TO_PACKED, None, TO_HF),
    trip("mixtral-packed", TO_HF, Some("mixtral"), TO_PACKED),
    trip("qwen2-moe-packed", TO_HF, Some("qwen2-moe"), TO_PACKED),
    trip("qwen3-moe-packed", TO_HF, Some("qwen3-moe"), TO_PACKED),
    // bf16 → f32 → bf16 is exact; f32 → bf16 rounds to nearest even exactly as torch's cast
    // that made the bf16 twins (`model.to(torch.bfloat16).save_pretrained`).
    trip("gemma-bf16", TO_F32, None, TO_BF16),
    trip("gemma2-bf16", TO_F32, None, TO_BF16),
    trip("gemma3-bf16", TO_F32, None, TO_BF16),
    trip("phi3-bf16", TO_F32, None, TO_BF16),
    trip("gpt-neox-bf16", TO_F32, None, TO_BF16),
    trip("qwen2-moe-bf16", TO_F32, None, TO_BF16),
    trip("bert-bf16", TO_F32, None, TO_BF16),
    trip("gemma", TO_BF16, Some("gemma-bf16"), NO_WAY_BACK),
    trip("gemma2", TO_BF16, Some("gemma2-bf16"), NO_WAY_BACK),
    trip("gemma3", TO_BF16, Some("gemma3-bf16"), NO_WAY_BACK),
    trip("phi3", TO_BF16, Some("phi3-bf16"), NO_WAY_BACK),
    trip("gpt-neox", TO_BF16, Some("gpt-neox-bf16"), NO_WAY_BACK),
    trip("qwen2-moe", TO_BF16, Some("qwen2-moe-bf16"), NO_WAY_BACK),
    trip("bert", TO_BF16, Some("bert-bf16"), NO_WAY_BACK),
];

/// No way back: f32 → bf16 loses bits, so those rows check the way there only.
const NO_WAY_BACK: &[&str] = &[];

#[test]
fn every_zoo_fixture_converts_to_its_other_layouts_and_back_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, t) in ROUND_TRIPS.iter().enumerate() {
        let what = format!("{} {}", t.fixture, t.there.join(" "));
        let src = fixture(t.fixture);
        let prefix = bare_base_model(t.fixture);
        let there = tmp.path().join(format!("{i}-there"));
        convert(&src, &there, t.there);
        if let Some(twin) = t.twin {
            assert_bit_identical(&format!("{what} vs {twin}"), &there, &fixture(twin), prefix);
        }
        if !t.back.is_empty() {
            let back = tmp.path().join(format!("{i}-back"));
            convert(&there, &back, t.back);
            assert_bit_identical(&format!("{what} and back"), &back, &src, prefix);
        }
    }
}

/// Every zoo config: `synth` (f32 and bf16) makes a checkpoint that `inspect --check` finds
/// complete and all `ok`, and that `run` computes on a few tokens: finite candidates at every
/// position for a decoder, the `[T, H]` hidden state and a finite pooler output for BERT.
/// What `bare_base_model` allows for, pinned: a bare `BertModel` file converted to hf or
/// flax comes out with the canonical `bert.` prefix on every name.
#[test]
fn a_bare_bert_converts_to_canonical_prefixed_names() {
    let tmp = tempfile::tempdir().unwrap();
    for (src, to) in [("bert", "hf"), ("bert", "flax"), ("bert-flax", "hf")] {
        let out = tmp.path().join(format!("{src}-{to}"));
        convert(&fixture(src), &out, &["--to", to]);
        let names = tensors(&out);
        assert!(!names.is_empty());
        for name in names.keys() {
            assert!(name.starts_with("bert."), "{src} --to {to}: {name}");
        }
    }
}

#[test]
fn synth_of_every_zoo_config_inspects_clean_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in [
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "gpt-neox",
        "gpt-neox-seq",
        "mixtral",
        "qwen2-moe",
        "qwen3-moe",
        "bert",
        "qwen2-sw",
        "qwen3-sw",
    ] {
        let config: Value =
            serde_json::from_slice(&std::fs::read(fixture(arch).join("config.json")).unwrap())
                .unwrap();
        for dtype in ["f32", "bf16"] {
            let what = format!("{arch} {dtype}");
            let out = tmp.path().join(format!("{arch}-{dtype}"));
            orient()
                .args(["synth", "-q", "--no-fsync", "--dtype", dtype])
                .arg(fixture(arch).join("config.json"))
                .arg(&out)
                .assert()
                .success();
            orient()
                .args(["inspect", "--check"])
                .arg(&out)
                .assert()
                .success();
            let report = orient()
                .args(["run", "--json", "--all-positions", "--tokens", "1,2,3,4,5"])
                .arg(&out)
                .assert()
                .success()
                .get_output()
                .stdout
                .clone();
            let v: Value = serde_json::from_slice(&report).unwrap();
            assert_eq!(v["tokens"], 5, "{what}");
            assert_eq!(v["model_type"], config["model_type"], "{what}");
            if arch == "bert" {
                let hidden = config["hidden_size"].as_u64().unwrap();
                assert_eq!(
                    v["encoder"]["last_hidden_state"],
                    serde_json::json!([5, hidden]),
                    "{what}"
                );
                let pooler = v["encoder"]["pooler_output"].as_array().unwrap();
                assert_eq!(pooler.len() as u64, hidden, "{what}");
                assert!(pooler.iter().all(|x| x.as_f64().unwrap().is_finite()));
            } else {
                let positions = v["positions"].as_array().unwrap();
                assert_eq!(positions.len(), 5, "{what}: {v}");
                for p in positions {
                    let top = p["top"].as_array().unwrap();
                    assert!(!top.is_empty(), "{what}: {p}");
                    for c in top {
                        // serde_json writes a NaN or an infinity as null.
                        assert!(
                            c["logit"].as_f64().is_some_and(f64::is_finite),
                            "{what}: {p}"
                        );
                        let prob = c["prob"].as_f64().unwrap();
                        assert!((0.0..=1.0).contains(&prob), "{what}: {p}");
                    }
                }
            }
        }
    }
}
