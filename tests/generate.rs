//! Generation: the KV cache against full forwards, greedy continuations against transformers'
//! `generate` (recorded by tests/fixtures/generate.py), and `orient generate` on the command line.
#![allow(clippy::unwrap_used)]

mod common;
use common::{fixture, orient};

use orient::model::{compare, default_prompt, ForwardOptions, LogitPositions, Model};
use orient_inspect::Checkpoint;

fn last() -> ForwardOptions {
    ForwardOptions {
        record: false,
        logits: LogitPositions::Last,
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Prefills `prompt` tokens through a KV cache, then decodes the rest of a `len`-token sequence
/// one token at a time; each step's logits must be those of a full forward over the same prefix,
/// bit for bit with `exact` (else within 1e-5, with the same top-1). Returns the number of decode
/// steps checked.
fn decode_equals_prefill(name: &str, prompt: usize, len: usize) -> usize {
    decode_against_prefill(name, prompt, len, true)
}

fn decode_against_prefill(name: &str, prompt: usize, len: usize, exact_decode: bool) -> usize {
    let ckpt = Checkpoint::open(fixture(name)).unwrap();
    let mut model = Model::new(&ckpt).unwrap();
    model.exact_decode(exact_decode);
    let seq = default_prompt(model.config().vocab_size, len);
    let mut cache = model.new_cache(len).unwrap();
    let pre = model
        .forward_cached(&seq[..prompt], &mut cache, &last())
        .unwrap();
    let full = model.forward_with(&seq[..prompt], &last()).unwrap();
    // Below 3 positions the cached forward computes what a longer sequence needs (the general
    // product path, tiles widened to 3 keys), and a plain short forward differs in the last bits.
    let exact = |end: usize| exact_decode && end >= 3;
    let max = pre
        .logits
        .iter()
        .zip(&full.logits)
        .map(|(a, b)| (a - b).abs());
    assert!(max.fold(0.0f32, f32::max) <= 1e-5, "{name}: prefill");
    if exact(prompt) {
        assert!(bits(&pre.logits) == bits(&full.logits), "{name}: prefill");
    }
    assert_eq!(cache.len(), prompt);
    for end in prompt + 1..=len {
        let step = model
            .forward_cached(&seq[end - 1..end], &mut cache, &last())
            .unwrap();
        let full = model.forward_with(&seq[..end], &last()).unwrap();
        let max = step
            .logits
            .iter()
            .zip(&full.logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max <= 1e-5, "{name}: step to {end} tokens: max |Δ| {max}");
        assert_eq!(
            compare::argmax(&step.logits),
            compare::argmax(&full.logits),
            "{name}: step to {end} tokens"
        );
        assert!(
            !exact(end) || bits(&step.logits) == bits(&full.logits),
            "{name}: decode step to {end} tokens is not bit-identical (max |Δ| {max})"
        );
    }
    assert_eq!(cache.len(), len);
    len - prompt
}

#[test]
fn kv_cache_decode_steps_equal_full_forwards_bit_for_bit() {
    // RoPE + GQA + biases, llama3 RoPE, MQA, q/k norms, learned positions (GPT-2)
    for name in ["qwen2", "llama", "mistral", "qwen3", "gpt2", "llama-flax"] {
        assert_eq!(decode_equals_prefill(name, 7, 30), 23, "{name}");
    }
    // prompts of one and two tokens, shorter than an attention tile's 3 keys
    assert_eq!(decode_equals_prefill("qwen2", 1, 6), 5);
    assert_eq!(decode_equals_prefill("gpt2", 2, 6), 4);
}

/// The default decode step (matrix-vector kernel) agrees with a full forward to 1e-5.
#[test]
fn fast_decode_steps_are_within_1e_5_of_full_forwards() {
    for name in ["qwen2", "llama", "mistral", "qwen3", "gpt2", "qwen2-sw"] {
        assert_eq!(decode_against_prefill(name, 7, 70, false), 63, "{name}");
    }
    assert_eq!(decode_against_prefill("qwen2", 1, 6, false), 5);
}

#[test]
fn kv_cache_decode_crosses_sliding_windows() {
    // window 64 on some layers: decode from inside the window to past it
    for name in ["qwen2-sw", "qwen3-sw"] {
        assert_eq!(decode_equals_prefill(name, 60, 72), 12, "{name}");
    }
}

#[test]
fn a_full_cache_is_refused_and_keeps_its_positions() {
    let ckpt = Checkpoint::open(fixture("qwen2")).unwrap();
    let mut model = Model::new(&ckpt).unwrap();
    model.exact_decode(true);
    let mut cache = model.new_cache(4).unwrap();
    model
        .forward_cached(&[1, 2, 3], &mut cache, &last())
        .unwrap();
    let e = model
        .forward_cached(&[4, 5], &mut cache, &last())
        .unwrap_err();
    assert!(e.to_string().contains("room for 4 positions"), "{e}");
    assert_eq!(cache.len(), 3);
    // an out-of-vocabulary token fails before anything is appended
    assert!(model.forward_cached(&[9999], &mut cache, &last()).is_err());
    assert_eq!(cache.len(), 3);
    let step = model.forward_cached(&[4], &mut cache, &last()).unwrap();
    let full = model.forward_with(&[1, 2, 3, 4], &last()).unwrap();
    assert_eq!(bits(&step.logits), bits(&full.logits));
}

fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// transformers' greedy `generate` of the qwen2 fixture reloaded from disk (f32, eager, KV
/// cache; tests/fixtures/generate_tokenizers.py): orient's prompt ids, continuation and text are
/// the same, token for token.
#[test]
fn greedy_continuations_equal_transformers_generate() {
    let dir = fixture("qwen2");
    let reference = json_of(&std::fs::read(dir.join("generation_reference.json")).unwrap());
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let max_new = case["max_new_tokens"].as_u64().unwrap().to_string();
        let mut cmd = orient();
        cmd.arg("generate").arg(&dir).args([
            "--prompt",
            prompt,
            "--max-new-tokens",
            &max_new,
            "--json",
        ]);
        if case["eos_token_id"].as_array().unwrap().is_empty() {
            cmd.arg("--ignore-eos");
        }
        let out = cmd.assert().success().get_output().stdout.clone();
        let got = json_of(&out);
        assert_eq!(
            ids(&got["prompt_ids"]),
            ids(&case["prompt_ids"]),
            "{prompt}"
        );
        assert_eq!(
            ids(&got["generated_ids"]),
            ids(&case["generated_ids"]),
            "{prompt}"
        );
        assert_eq!(got["text"], case["text"], "{prompt}");
    }
}

/// A copy of the qwen2 fixture (weights, config, tokenizer) in a temporary folder, with
/// `edit` applied to its tensors (name, shape, f32 bytes) and `generation_config.json` replaced
/// when given.
fn qwen2_copy(
    edit: impl FnOnce(&mut [(String, Vec<usize>, Vec<u8>)]),
    generation_config: Option<&str>,
) -> tempfile::TempDir {
    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;
    let src = fixture("qwen2");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    if let Some(g) = generation_config {
        std::fs::write(dir.path().join("generation_config.json"), g).unwrap();
    }
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut owned);
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, d)| {
            let view = TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

/// The buggy loader of the README's story: square q_proj and o_proj stored transposed (same
/// shape, wrong values).
fn transpose_square_projections(tensors: &mut [(String, Vec<usize>, Vec<u8>)]) {
    for (name, shape, data) in tensors.iter_mut() {
        if (name.ends_with("q_proj.weight") || name.ends_with("o_proj.weight"))
            && shape[0] == shape[1]
        {
            let n = shape[0];
            let old = data.clone();
            for r in 0..n {
                for c in 0..n {
                    let (from, to) = (4 * (r * n + c), 4 * (c * n + r));
                    data[to..to + 4].copy_from_slice(&old[from..from + 4]);
                }
            }
        }
    }
}

#[test]
fn generation_stops_at_the_eos_the_config_names_unless_told_not_to() {
    let prompt = ["--prompt", "The quick brown fox", "--max-new-tokens", "24"];
    let plain = json_of(
        &orient()
            .arg("generate")
            .arg(fixture("qwen2"))
            .args(prompt)
            .arg("--json")
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    let all = ids(&plain["generated_ids"]);
    assert_eq!(all.len(), 24);
    // the 4th generated token, first seen there, named EOS by generation_config.json
    let eos = all[3];
    assert!(!all[..3].contains(&eos));
    let dir = qwen2_copy(|_| {}, Some(&format!(r#"{{"eos_token_id": [{eos}]}}"#)));
    let stopped = json_of(
        &orient()
            .arg("generate")
            .arg(dir.path())
            .args(prompt)
            .arg("--json")
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    assert_eq!(ids(&stopped["generated_ids"]), all[..4]);
    let ignored = json_of(
        &orient()
            .arg("generate")
            .arg(dir.path())
            .args(prompt)
            .args(["--json", "--ignore-eos"])
            .assert()
            .success()
            .get_output()
            .stdout,
    );
    assert_eq!(ids(&ignored["generated_ids"]), all);
    // streamed text: the prompt, then the continuation; the count and the reason on stderr
    orient()
        .arg("generate")
        .arg(dir.path())
        .args(prompt)
        .assert()
        .success()
        .stdout(predicates::str::starts_with("The quick brown fox"))
        .stderr(predicates::str::contains(
            "4 tokens generated (stopped by an EOS token)",
        ));
}

#[test]
fn generate_with_token_ids_and_no_tokenizer_prints_ids() {
    orient()
        .arg("generate")
        .arg(fixture("llama"))
        .args(["--tokens", "1,2,3", "--max-new-tokens", "5"])
        .assert()
        .success()
        .stdout(predicates::str::is_match(r"^1 2 3 \|( \d+){5}\n$").unwrap());
    let out = orient()
        .arg("generate")
        .arg(fixture("llama"))
        .args(["--tokens", "1,2,3", "--max-new-tokens", "5", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v = json_of(&out);
    assert_eq!(ids(&v["prompt_ids"]), [1, 2, 3]);
    assert_eq!(ids(&v["generated_ids"]).len(), 5);
    assert!(v["text"].is_null());
}

#[test]
fn a_text_prompt_without_a_tokenizer_suggests_token_ids() {
    for cmd in ["run", "generate"] {
        orient()
            .arg(cmd)
            .arg(fixture("llama"))
            .args(["--prompt", "hello"])
            .assert()
            .code(2)
            .stderr(predicates::str::contains(
                "no tokenizer.json beside the model",
            ))
            .stderr(predicates::str::contains("--tokens"));
    }
    // --tokens and --prompt exclude each other; one is required
    orient()
        .args(["run"])
        .arg(fixture("qwen2"))
        .args(["--prompt", "a", "--tokens", "1"])
        .assert()
        .code(2);
    orient().arg("run").arg(fixture("qwen2")).assert().code(2);
}

#[test]
fn run_with_a_prompt_saves_its_input_ids_and_verify_takes_the_same_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("ref.safetensors");
    let text = "Hello, world! 🦀";
    let out = orient()
        .arg("run")
        .arg(fixture("qwen2"))
        .args(["--prompt", text, "--json", "--save"])
        .arg(&saved)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report = json_of(&out);
    let want = orient::text::Tokenizer::for_model(&fixture("qwen2"))
        .unwrap()
        .encode(text)
        .unwrap();
    assert_eq!(want[0], 1, "the post-processor's <|begin_of_text|>");
    assert_eq!(ids(&report["input_ids"]), want);
    assert_eq!(report["prompt"], text);
    let top = &report["positions"][0];
    assert_eq!(top["text"].as_array().unwrap().len(), 5);
    let reference = orient::model::save::Reference::read(&saved).unwrap();
    assert_eq!(reference.input_ids, want);
    // verify on the same prompt passes; a different one is refused (exit 2)
    orient()
        .arg("verify")
        .arg(fixture("qwen2"))
        .arg("--reference")
        .arg(&saved)
        .args(["--prompt", text])
        .assert()
        .success();
    orient()
        .arg("verify")
        .arg(fixture("qwen2"))
        .arg("--reference")
        .arg(&saved)
        .args(["--prompt", "something else"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "omit --prompt or give the same prompt",
        ));
    orient()
        .arg("verify")
        .arg(fixture("qwen2"))
        .args(["--against"])
        .arg(fixture("qwen2-flax"))
        .args(["--prompt", text])
        .assert()
        .success()
        .stdout(predicates::str::contains("(--prompt)"));
}

#[test]
fn generate_against_a_perturbed_copy_names_the_first_differing_token() {
    let buggy = qwen2_copy(transpose_square_projections, None);
    let same = qwen2_copy(|_| {}, None);
    let args = ["--prompt", "The quick brown fox", "--max-new-tokens", "12"];
    orient()
        .arg("generate")
        .arg(fixture("qwen2"))
        .arg("--against")
        .arg(same.path())
        .args(args)
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "SAME: both models continue the prompt with the same 12 tokens.",
        ));
    let out = orient()
        .arg("generate")
        .arg(fixture("qwen2"))
        .arg("--against")
        .arg(buggy.path())
        .args(args)
        .arg("--json")
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v = json_of(&out);
    let (a, b) = (ids(&v["a"]["generated_ids"]), ids(&v["b"]["generated_ids"]));
    let d = &v["first_difference"];
    let index = usize::try_from(d["index"].as_u64().unwrap()).unwrap();
    assert_eq!(a[..index], b[..index]);
    assert_ne!(a[index], b[index]);
    assert_eq!(d["position"].as_u64().unwrap(), 9 + index as u64);
    for (side, token) in [("a_top", a[index]), ("b_top", b[index])] {
        let top = d[side].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert_eq!(top[0]["token"].as_u64().unwrap(), u64::from(token));
    }
    // the table: both continuations, the difference marked, both top-5 lists
    orient()
        .arg("generate")
        .arg(fixture("qwen2"))
        .arg("--against")
        .arg(buggy.path())
        .args(args)
        .assert()
        .code(1)
        .stdout(predicates::str::contains("← first difference"))
        .stdout(predicates::str::contains(format!(
            "DIFFERENT: the continuations part at generated token {index} (position {})",
            9 + index
        )))
        .stdout(predicates::str::contains("A top"))
        .stdout(predicates::str::contains("B top"));
}

#[test]
fn verify_generate_applies_vllms_rule_and_reports_the_new_metrics() {
    let out = orient()
        .arg("verify")
        .arg(fixture("qwen2-flax"))
        .arg("--against")
        .arg(fixture("qwen2"))
        .args(["--generate", "8", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v = json_of(&out);
    let g = &v["generation"];
    assert_eq!(g["new_tokens"], 8);
    assert_eq!(ids(&g["generated_ids"]).len(), 8);
    assert_eq!(g["generated_ids"], g["against_generated_ids"]);
    assert!(g["first_difference"].is_null());
    assert_eq!(g["passed"], true);
    // an exact relayout: every stage identical, NMSE 0 (−∞ dB: null)
    let logits = v["comparison"]["rows"].as_array().unwrap().last().unwrap();
    assert_eq!(logits["diff"]["nmse"], 0.0);
    assert!(logits["diff"]["nmse_db"].is_null());
    assert_eq!(logits["diff"]["mean_abs"], 0.0);
    assert_eq!(logits["agreement"]["top5_overlap"], 1.0);
    assert_eq!(logits["agreement"]["top10_overlap"], 1.0);

    let buggy = qwen2_copy(transpose_square_projections, None);
    let out = orient()
        .arg("verify")
        .arg(buggy.path())
        .arg("--against")
        .arg(fixture("qwen2"))
        .args([
            "--prompt",
            "The quick brown fox",
            "--generate",
            "8",
            "--json",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v = json_of(&out);
    let g = &v["generation"];
    assert_eq!(g["passed"], false);
    let d = &g["first_difference"];
    assert_eq!(d["within_top5"], false);
    assert_eq!(d["a_top"].as_array().unwrap().len(), 5);
    let logits = v["comparison"]["rows"].as_array().unwrap().last().unwrap();
    let db = logits["diff"]["nmse_db"].as_f64().unwrap();
    assert!(
        db > -10.0,
        "a wrong model's NMSE is of the signal's order: {db} dB"
    );
    assert!(logits["agreement"]["top5_overlap"].as_f64().unwrap() < 0.5);
    orient()
        .arg("verify")
        .arg(buggy.path())
        .arg("--against")
        .arg(fixture("qwen2"))
        .args(["--prompt", "The quick brown fox", "--generate", "8"])
        .assert()
        .code(1)
        .stdout(predicates::str::contains("(vLLM's rule fails)"))
        .stdout(predicates::str::contains("NMSE"));
    // a reference file has no second model to generate with
    orient()
        .arg("verify")
        .arg(fixture("qwen2"))
        .arg("--reference")
        .arg(fixture("qwen2/reference.safetensors"))
        .args(["--generate", "4"])
        .assert()
        .code(2);
}

/// GPT-2's learned positions bound prompt + new tokens: a generation that would run off the
/// table is refused before anything is printed, and one that fills it exactly runs.
#[test]
fn a_generation_longer_than_the_learned_positions_is_refused_up_front() {
    let ids: Vec<String> = (0..250).map(|i| (i % 400 + 1).to_string()).collect();
    let ids = ids.join(",");
    orient()
        .args(["generate", "--ignore-eos", "--max-new-tokens", "7", "--tokens", &ids])
        .arg(fixture("gpt2"))
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicates::str::contains(
            "a 250-token prompt and 7 new tokens exceed the model's 256 learned positions: at most 6 new tokens fit",
        ));
    orient()
        .args([
            "generate",
            "--ignore-eos",
            "--max-new-tokens",
            "6",
            "--tokens",
            &ids,
        ])
        .arg(fixture("gpt2"))
        .assert()
        .code(0)
        .stderr(predicates::str::contains("6 tokens generated"));
}
