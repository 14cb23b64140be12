//! The forward against transformers' own outputs (the fixtures' `reference.safetensors`), and
//! HF vs Flax storage of the same weights.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;
use common::fixture;

use orient::model::compare::{self, Stage, Tolerance};
use orient::model::save::Reference;
use orient::model::{ForwardOutput, LoadNote, Model};
use orient_inspect::Checkpoint;

fn run(name: &str, tokens: &[u32]) -> ForwardOutput {
    let ckpt = Checkpoint::open(fixture(name)).unwrap();
    let mut model = Model::new(&ckpt).unwrap();
    model.forward(tokens, true).unwrap()
}

fn reference(name: &str) -> Reference {
    Reference::read(&fixture(name).join("reference.safetensors")).unwrap()
}

/// Logits within 1e-4 of transformers with the same top-1 at every one of the 80 positions;
/// every hidden state close. Returns (max |Δlogit|, max |Δhidden|) for the record.
fn check_against_reference(name: &str) -> (f32, f32) {
    let r = reference(name);
    assert_eq!(r.input_ids.len(), 80);
    let out = run(name, &r.input_ids);
    let tol = Tolerance {
        atol: 1e-4,
        rtol: 0.0,
    };
    let c = compare::compare_reference(&out, &r, tol);
    let logits = c.logits().unwrap();
    let agree = logits.agreement.unwrap();
    assert!(
        logits.diff.max_abs <= 1e-4,
        "{name}: max |Δlogit| = {}",
        logits.diff.max_abs
    );
    assert_eq!(agree.top1_agree, 80, "{name}: top-1 agreement");
    // every stored hidden state was compared: embedding, L layers, final norm, logits
    assert_eq!(c.rows.len(), 1 + out.layers.len() + 2, "{name}");
    let max_hidden = c
        .rows
        .iter()
        .filter(|row| row.stage != Stage::LmHead)
        .map(|row| row.diff.max_abs)
        .fold(0.0f32, f32::max);
    assert!(
        c.passed(),
        "{name}: first failure {:?}",
        c.first_failing_stage()
    );
    assert!(max_hidden <= 1e-4, "{name}: max |Δhidden| = {max_hidden}");
    // our hidden_states() has transformers' semantics, bit for bit in index 0
    let hs = out.hidden_states();
    assert_eq!(hs.len(), r.hidden_states.len());
    assert_eq!(
        hs[0],
        r.hidden_states[0].as_slice(),
        "{name}: embedding output"
    );
    eprintln!(
        "{name}: max |Δlogit| {:.3e}, max |Δhidden| {max_hidden:.3e}, KL max {:.3e}",
        logits.diff.max_abs, agree.kl_max
    );
    (logits.diff.max_abs, max_hidden)
}

#[test]
fn llama_with_llama3_rope_matches_transformers() {
    check_against_reference("llama");
}

#[test]
fn mistral_mqa_matches_transformers() {
    check_against_reference("mistral");
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    check_against_reference("qwen2");
}

#[test]
fn qwen3_with_qk_norm_and_tied_embeddings_matches_transformers() {
    check_against_reference("qwen3");
}

#[test]
fn gpt2_matches_transformers() {
    check_against_reference("gpt2");
}

/// bf16 weights, widened per layer, against transformers in f32 on the same upcast weights.
#[test]
fn llama_bf16_matches_transformers_on_upcast_weights() {
    check_against_reference("llama-bf16");
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The same weights stored in HF and in Flax layout give bit-identical logits and hidden
/// states, on the 80-token prompt and on short prompts (1, 2 and 3 tokens take gemm's
/// matrix–vector and small-output shortcuts unless `matmul` avoids them).
#[test]
fn hf_and_flax_layouts_are_bit_identical() {
    let ids = reference("llama").input_ids;
    for (hf, flax) in [
        ("llama", "llama-flax"),
        ("mistral", "mistral-flax"),
        ("gpt2", "gpt2-flax"),
        ("qwen2", "qwen2-flax"),
    ] {
        for len in [80, 1, 2, 3] {
            let a = run(hf, &ids[..len]);
            let b = run(flax, &ids[..len]);
            assert_eq!(
                bits(&a.logits),
                bits(&b.logits),
                "{hf} vs {flax}, {len} tokens: logits"
            );
            for (i, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
                assert_eq!(
                    bits(&x.output),
                    bits(&y.output),
                    "{hf} vs {flax}, {len} tokens: layer {i}"
                );
            }
        }
    }
}

/// Flax checkpoints are read directly: notes say nothing was read transposed.
#[test]
fn flax_checkpoint_needs_no_transposed_reads() {
    let ckpt = Checkpoint::open(fixture("qwen2-flax")).unwrap();
    let model = Model::new(&ckpt).unwrap();
    assert_eq!(model.convention(), "flax");
    assert!(!model
        .notes()
        .iter()
        .any(|n| matches!(n, LoadNote::ReadTransposed { .. })));
}

/// The case behind the project: every `*proj.weight` transposed with names unchanged. The
/// non-square ones are read as their transpose (and reported); the square q/o cannot be told
/// apart by shape, so layer 0's attention diverges, and verify says so.
#[test]
fn buggy_qwen2_is_located_at_layer_0_attention() {
    let ids = reference("qwen2").input_ids;
    let ckpt = Checkpoint::open(fixture("qwen2-buggy")).unwrap();
    let mut model = Model::new(&ckpt).unwrap();
    let transposed: Vec<&str> = model
        .notes()
        .iter()
        .filter_map(|n| match n {
            LoadNote::ReadTransposed { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    // k, v, gate, up, down of both layers; q and o are square
    assert_eq!(transposed.len(), 10, "{transposed:?}");
    assert!(transposed.contains(&"model.layers.0.self_attn.k_proj.weight"));
    assert!(!transposed
        .iter()
        .any(|n| n.contains("q_proj") || n.contains("o_proj")));
    let buggy = model.forward(&ids, true).unwrap();
    let good = run("qwen2", &ids);
    let tol = Tolerance {
        atol: 1e-4,
        rtol: 0.0,
    };
    let c = compare::compare_runs(&buggy, &good, tol);
    assert!(!c.passed());
    assert_eq!(c.first_failing_stage(), Some(Stage::Attention { layer: 0 }));
    // the embedding itself is untouched
    assert_eq!(c.rows[0].diff.max_abs, 0.0);
    assert!(c.logits().unwrap().diff.max_abs > 0.1);
}

/// Writes a copy of fixture `name` into a temporary folder after `edit` has changed its list
/// of (name, shape, f32 bytes).
fn edited_copy(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>),
) -> tempfile::TempDir {
    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;
    let src = fixture(name);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut owned);
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

/// A table stored as the exact transpose of its expected shape (an embedding [H, V]) is read
/// transposed, reported, and gives the same logits bit for bit.
#[test]
fn transposed_embedding_is_read_transposed_and_reported() {
    let dir = edited_copy("llama", |tensors| {
        let (_, shape, data) = tensors
            .iter_mut()
            .find(|(n, _, _)| n == "model.embed_tokens.weight")
            .unwrap();
        let (v, h) = (shape[0], shape[1]);
        let mut out = vec![0u8; data.len()];
        for r in 0..v {
            for c in 0..h {
                let (from, to) = ((r * h + c) * 4, (c * v + r) * 4);
                out[to..to + 4].copy_from_slice(&data[from..from + 4]);
            }
        }
        *shape = vec![h, v];
        *data = out;
    });
    let ids = reference("llama").input_ids;
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let mut model = Model::new(&ckpt).unwrap();
    assert!(model.notes().contains(&LoadNote::ReadTransposed {
        name: "model.embed_tokens.weight".into(),
        found: vec![64, 512],
        expected: vec![512, 64],
    }));
    let out = model.forward(&ids, false).unwrap();
    assert_eq!(bits(&out.logits), bits(&run("llama", &ids).logits));
}

/// A shape that is neither the expected one nor its transpose is an error naming the tensor.
#[test]
fn wrong_shape_is_refused_with_the_tensor_name() {
    let dir = edited_copy("qwen2", |tensors| {
        let (_, shape, _) = tensors
            .iter_mut()
            .find(|(n, _, _)| n == "model.layers.1.mlp.up_proj.weight")
            .unwrap();
        *shape = vec![88, 128]; // same element count, wrong shape
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let err = Model::new(&ckpt).unwrap_err().to_string();
    assert!(
        err.contains("`model.layers.1.mlp.up_proj.weight` has shape [88, 128], expected [176, 64]"),
        "{err}"
    );
}

/// The same weight under its HF and its Flax name is refused, naming both.
#[test]
fn weight_stored_twice_is_refused() {
    let dir = edited_copy("qwen2", |tensors| {
        let (_, shape, data) = tensors
            .iter()
            .find(|(n, _, _)| n == "model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .clone();
        tensors.push(("model.layers.0.self_attn.q_proj.kernel".into(), shape, data));
    });
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let err = Model::new(&ckpt).unwrap_err().to_string();
    assert!(
        err.contains("`model.layers.0.self_attn.q_proj.weight` is stored twice"),
        "{err}"
    );
    assert!(err.contains("q_proj.kernel"), "{err}");
}

/// Logits at chosen positions (the last one for `run`) are the same bits as those rows of the
/// logits at every position, on every fixture and layout, for short and long prompts.
#[test]
fn logits_at_chosen_positions_are_rows_of_the_full_logits() {
    use orient::model::{ForwardOptions, LogitPositions};
    let ids = reference("llama").input_ids;
    for name in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gpt2",
        "llama-bf16",
        "llama-flax",
        "gpt2-flax",
        "qwen2-flax",
    ] {
        let ckpt = Checkpoint::open(fixture(name)).unwrap();
        let mut model = Model::new(&ckpt).unwrap();
        for len in [1, 2, 3, 80] {
            let all = model.forward(&ids[..len], false).unwrap();
            let v = all.vocab_size;
            for (logits, want) in [
                (LogitPositions::Last, vec![len - 1]),
                // sorted and deduplicated (one position when len = 1)
                (LogitPositions::These(vec![len - 1, 0, len - 1]), {
                    let mut w = vec![0, len - 1];
                    w.dedup();
                    w
                }),
            ] {
                let opts = ForwardOptions {
                    record: false,
                    logits,
                };
                let some = model.forward_with(&ids[..len], &opts).unwrap();
                assert_eq!(some.logit_positions, want, "{name}");
                assert_eq!(some.logits.len(), want.len() * v);
                for &p in &want {
                    assert_eq!(
                        bits(some.logits_at(p)),
                        bits(all.logits_at(p)),
                        "{name}, {len} tokens, position {p}"
                    );
                }
            }
        }
    }
}

/// The made-up JAX port of the qwen2 fixture (its own names, `[in, out]` kernels, q/k and their
/// biases in interleaved RoPE order, gate/up fused), read through its layout file: a pure
/// relayout, so the same bits as qwen2 at every stage, for short and long prompts.
#[test]
fn qwen2_port_through_its_layout_is_bit_identical_to_qwen2() {
    use orient_inspect::layout::convention;
    use std::sync::Arc;
    let layout =
        convention::load_with(&fixture("qwen2-port/layout.toml"), convention::builtins()).unwrap();
    let ckpt = Checkpoint::open(fixture("qwen2-port")).unwrap();
    let mut port = Model::with_layouts(&ckpt, &[Arc::new(layout)]).unwrap();
    assert_eq!(port.convention(), "qwen2-jax-port");
    assert!(port.notes().is_empty(), "{:?}", port.notes());
    let ids = reference("qwen2").input_ids;
    for len in [80, 1, 2, 3] {
        let a = port.forward(&ids[..len], true).unwrap();
        let b = run("qwen2", &ids[..len]);
        assert_eq!(bits(&a.logits), bits(&b.logits), "{len} tokens: logits");
        assert_eq!(bits(&a.embedding), bits(&b.embedding), "{len} tokens");
        for (i, (x, y)) in a.layers.iter().zip(&b.layers).enumerate() {
            assert_eq!(
                bits(&x.after_attention),
                bits(&y.after_attention),
                "layer {i}"
            );
            assert_eq!(bits(&x.output), bits(&y.output), "{len} tokens: layer {i}");
        }
        assert_eq!(bits(&a.final_norm), bits(&b.final_norm), "{len} tokens");
    }
}

/// Qwen2 and Qwen3 with `use_sliding_window` slide a 64-token window over the layers from
/// `max_window_layers` on (qwen2-sw: full, sliding, sliding; qwen3-sw: full, full, sliding),
/// on a 208-token prompt: logits within 1e-4 of transformers with the same top-1 everywhere,
/// every stored hidden state close.
#[test]
fn sliding_windows_on_some_layers_match_transformers() {
    for name in ["qwen2-sw", "qwen3-sw"] {
        let r = reference(name);
        assert_eq!(r.input_ids.len(), 208);
        let out = run(name, &r.input_ids);
        let tol = Tolerance {
            atol: 1e-4,
            rtol: 0.0,
        };
        let c = compare::compare_reference(&out, &r, tol);
        assert!(
            c.passed(),
            "{name}: first failure {:?}",
            c.first_failing_stage()
        );
        let logits = c.logits().unwrap();
        assert!(
            logits.diff.max_abs <= 1e-4,
            "{name}: {}",
            logits.diff.max_abs
        );
        assert_eq!(logits.agreement.unwrap().top1_agree, 208, "{name}");
        // embedding, layers 0..L-2 (hidden_states), final norm, logits
        assert_eq!(c.rows.len(), out.layers.len() + 2, "{name}");
    }
}
