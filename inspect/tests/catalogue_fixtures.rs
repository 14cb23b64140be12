//! The catalogue against real files: the tiny checkpoints in `tests/fixtures/`, made by
//! transformers 5.24 (PyTorch) and 4.57 (Flax), must match it name for name and shape for shape.
//! The header is read here with a few lines of test-only code so this test depends on nothing
//! but the catalogue and config modules.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use orient_inspect::layout::catalogue::{Catalogue, ConvId, FLAX, HF};
use orient_inspect::{parse_config, ConfigOutcome, ModelConfig};

fn fixture(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(dir)
}

/// name → shape of every tensor in a single-file safetensors checkpoint.
fn header(dir: &str) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(fixture(dir).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
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
            (k.clone(), shape)
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

/// Checks that every tensor resolves under `convention` with the catalogue's shape, and that
/// every required entry is present. Returns the names whose shape differs.
fn check(dir: &str, convention: ConvId) -> Vec<String> {
    let cfg = config(dir);
    let cat = Catalogue::new(&cfg);
    let tensors = header(dir);
    let mut mismatched = Vec::new();
    let mut seen = vec![false; cat.entries().len()];
    for (name, shape) in &tensors {
        let m = cat
            .resolve(name)
            .unwrap_or_else(|| panic!("{dir}: {name} not in catalogue"));
        if !m.shared {
            assert_eq!(m.convention, convention, "{dir}: {name}");
        }
        seen[m.entry] = true;
        if cat.stored(m.entry, convention).unwrap().shape != *shape {
            mismatched.push(name.clone());
        }
    }
    for (i, seen) in seen.into_iter().enumerate() {
        assert!(
            seen || cat.optional(i, convention).is_some(),
            "{dir}: required {} missing",
            cat.stored(i, convention).map_or("?", |s| s.name.as_str())
        );
    }
    mismatched
}

#[test]
fn hf_fixtures_match_the_catalogue() {
    for dir in ["llama", "llama-bf16", "mistral", "qwen2", "qwen3", "gpt2"] {
        assert_eq!(check(dir, HF), Vec::<String>::new(), "{dir}");
    }
}

#[test]
fn flax_fixtures_match_the_catalogue() {
    for dir in ["llama-flax", "mistral-flax", "qwen2-flax", "gpt2-flax"] {
        assert_eq!(check(dir, FLAX), Vec::<String>::new(), "{dir}");
    }
}

#[test]
fn tied_fixtures_omit_lm_head() {
    // qwen3 and gpt2 fixtures are tied and stored without lm_head; the catalogue marks it optional.
    for (dir, lm) in [("qwen3", "lm_head.weight"), ("gpt2", "lm_head.weight")] {
        assert!(config(dir).tie_word_embeddings, "{dir}");
        assert!(!header(dir).contains_key(lm), "{dir}");
        let cat = Catalogue::new(&config(dir));
        let m = cat.resolve(lm).unwrap();
        assert!(cat.entries()[m.entry].optional.is_some(), "{dir}");
    }
}

#[test]
fn buggy_qwen2_shows_every_non_square_projection_transposed() {
    // qwen2-buggy has every `*proj.weight` transposed under its HF name (generate.py). Shapes
    // expose exactly the non-square ones; q_proj/o_proj are 64×64, and the catalogue flags them
    // as square-ambiguous, i.e. not provable from shapes.
    let cat = Catalogue::new(&config("qwen2-buggy"));
    let mut expected = Vec::new();
    let mut ambiguous = Vec::new();
    for name in header("qwen2-buggy").keys() {
        if !name.ends_with("proj.weight") {
            continue;
        }
        let e = &cat.entries()[cat.resolve(name).unwrap().entry];
        if e.is_square_ambiguous() {
            ambiguous.push(name.clone());
        } else {
            expected.push(name.clone());
        }
    }
    assert_eq!(expected.len(), 2 * 5);
    assert_eq!(
        ambiguous,
        [
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
        ]
    );
    assert_eq!(check("qwen2-buggy", HF), expected);
}
