//! `orient convert` between any two conventions through canonical tensors: the made-up JAX
//! port of `tests/fixtures/qwen2-port` (its own names, [in, out] kernels, interleaved RoPE on
//! q/k and their biases, fused gate/up) to and from HF and Flax, the chains `--dry-run` and the
//! provenance name, and the refusals (bad layout files, unknown conventions, missing,
//! unexpected and duplicate tensors).
#![allow(clippy::unwrap_used)]

mod common;
use common::{assert_only, assert_same_tensors, fixture, orient, tensors, Tensors};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orient_inspect::Checkpoint;
use predicates::prelude::*;

const PORT: &str = "qwen2-jax-port";

fn layout() -> PathBuf {
    fixture("qwen2-port/layout.toml")
}

fn metadata(path: &Path) -> BTreeMap<String, String> {
    Checkpoint::open(path).unwrap().metadata().clone()
}

/// `orient convert SRC DST ARGS… --layout <the port's layout> --quiet`, which must succeed.
fn convert(src: &Path, dst: &Path, args: &[&str]) {
    orient()
        .arg("convert")
        .arg(src)
        .arg(dst)
        .args(args)
        .arg("--layout")
        .arg(layout())
        .arg("--quiet")
        .assert()
        .success();
}

#[test]
fn the_port_converts_to_exactly_transformers_hf_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    orient()
        .arg("convert")
        .arg(fixture("qwen2-port"))
        .arg(&out)
        .arg("--layout")
        .arg(layout())
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "(qwen2, {PORT} layout, detected from names and non-square shapes)"
        )))
        .stdout(predicate::str::contains(
            "wrote:   27 tensors (7 transposed, 12 through other chains, 0 cast, 0 skipped)",
        ));
    assert_same_tensors(&out, &fixture("qwen2/model.safetensors"));
    let m = metadata(&out);
    assert_eq!(m["format"], "pt");
    assert_eq!(m["orient.source_convention"], PORT);
    assert_eq!(m["orient.target_convention"], "hf");
}

#[test]
fn hf_converts_to_exactly_the_port_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("port");
    convert(&fixture("qwen2"), &out, &["--to", PORT]);
    assert_same_tensors(&out, &fixture("qwen2-port/model.safetensors"));
    assert_eq!(metadata(&out)["format"], "jax-port");
    // Any convention to any convention: Flax to the port directly, and back.
    let from_flax = tmp.path().join("port-from-flax");
    convert(&fixture("qwen2-flax"), &from_flax, &["--to", PORT]);
    assert_same_tensors(&from_flax, &fixture("qwen2-port/model.safetensors"));
    let flax = tmp.path().join("flax-from-port");
    convert(&fixture("qwen2-port"), &flax, &["--to", "flax"]);
    assert_same_tensors(&flax, &fixture("qwen2-flax/model.safetensors"));
}

#[test]
fn round_trips_through_flax_and_the_port_are_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, dtype) in [("qwen2", "keep"), ("qwen2", "bf16")] {
        // A bf16 start makes every leg a pure relayout of bf16 data.
        let start = if dtype == "keep" {
            fixture(name)
        } else {
            let s = tmp.path().join(format!("{name}-{dtype}"));
            convert(&fixture(name), &s, &["--dtype", dtype]);
            s
        };
        for via in ["flax", PORT] {
            let there = tmp.path().join(format!("{name}-{dtype}-{via}"));
            let back = tmp.path().join(format!("{name}-{dtype}-{via}-back"));
            convert(&start, &there, &["--to", via]);
            convert(&there, &back, &["--to", "hf"]);
            assert_same_tensors(&back, &start);
        }
    }
    // And the other way round, from the port.
    let hf = tmp.path().join("port-hf");
    let back = tmp.path().join("port-back");
    convert(&fixture("qwen2-port"), &hf, &[]);
    convert(&hf, &back, &["--to", PORT]);
    assert_same_tensors(&back, &fixture("qwen2-port/model.safetensors"));
}

#[test]
fn dry_run_and_provenance_name_the_chains() {
    let tmp = tempfile::tempdir().unwrap();
    orient()
        .arg("convert")
        .arg(fixture("qwen2-port"))
        .arg(tmp.path().join("out"))
        .arg("--layout")
        .arg(layout())
        .arg("--dry-run")
        .assert()
        .success()
        .stdout(
            predicate::str::contains(
                "rename, transpose → rope-permute(heads=4, to=half, rotary=16)",
            )
            .and(predicate::str::contains(
                "rename, transpose → rope-permute(heads=2, to=half, rotary=16)",
            ))
            .and(predicate::str::contains(
                "rename, rope-permute(heads=4, to=half, rotary=16)",
            ))
            .and(predicate::str::contains(
                "rename, transpose → split(concat, axis=0, outer=1, sizes=[176, 176])",
            ))
            .and(predicate::str::contains("[64, 352] → [176, 64]"))
            .and(predicate::str::contains(
                "plan:    27 tensors written (7 transposed, 12 through other chains, 0 cast), 0 skipped",
            )),
        );
    orient()
        .arg("convert")
        .arg(fixture("qwen2"))
        .arg(tmp.path().join("out"))
        .args(["--to", PORT, "--dry-run", "--layout"])
        .arg(layout())
        .assert()
        .success()
        .stdout(
            predicate::str::contains(
                "rename, rope-permute(heads=4, to=interleaved, rotary=16) → transpose",
            )
            .and(predicate::str::contains(
                "rename, fuse(concat, axis=0, outer=1) → transpose",
            ))
            // The fused kernel is made from both parts.
            .and(predicate::str::contains(
                "model.layers.1.mlp.gate_proj.weight, model.layers.1.mlp.up_proj.weight ┆ params.decoder.layer_1.mlp.w_gate_up",
            ))
            .and(predicate::str::contains("[176, 64] + [176, 64] → [64, 352]")),
        );
    assert_only(tmp.path(), &[]);

    // The same chains in the output's provenance, per layer range.
    let hf = tmp.path().join("hf");
    convert(&fixture("qwen2-port"), &hf, &[]);
    let ops = &metadata(&hf)["orient.ops"];
    for want in [
        "model.layers.{0-1}.self_attn.q_proj.weight:transpose → rope-permute(heads=4, to=half, rotary=16)",
        "model.layers.{0-1}.self_attn.q_proj.bias:rope-permute(heads=4, to=half, rotary=16)",
        "model.layers.{0-1}.self_attn.o_proj.weight:T",
        "lm_head.weight:T",
    ] {
        assert!(ops.contains(want), "{want} not in {ops}");
    }
    let port = tmp.path().join("port");
    convert(
        &fixture("qwen2-flax"),
        &port,
        &["--to", PORT, "--dtype", "bf16"],
    );
    let ops = &metadata(&port)["orient.ops"];
    for want in [
        // The Flax kernel's transpose and the port's cancel around the RoPE permutation.
        "params.decoder.layer_{0-1}.attn.wk:transpose → rope-permute(heads=2, to=interleaved, rotary=16) → transpose,bf16",
        "params.decoder.layer_{0-1}.attn.wv:bf16",
        "params.decoder.layer_{0-1}.mlp.w_gate_up:transpose → fuse(concat, axis=0, outer=1) → transpose,bf16",
    ] {
        assert!(ops.contains(want), "{want} not in {ops}");
    }
}

#[test]
fn an_explicit_from_names_any_convention() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf");
    orient()
        .arg("convert")
        .arg(fixture("qwen2-port"))
        .arg(&out)
        .args(["--from", PORT, "--layout"])
        .arg(layout())
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "--from {PORT} given explicitly (detection agrees)"
        )));
    assert_same_tensors(&out, &fixture("qwen2/model.safetensors"));
}

#[test]
fn a_bad_layout_file_is_refused_naming_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    // A typo in a role: the parser names the line and the field.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[convention]\nname = \"x\"\n\n[[rule]]\ncanonical = \"lm_head.weight\"\nstored = \"head\"\nroles = [\"lm_haed\"]\n",
    )
    .unwrap();
    orient()
        .arg("convert")
        .arg(fixture("qwen2"))
        .arg(tmp.path().join("out"))
        .arg("--layout")
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}:7: `rule[0].roles`: unknown role `lm_haed`",
            bad.display()
        )));
    // A file that parses but does not fit the model (3 heads do not divide 32 rows): named
    // with the rule's line and field, before anything is written.
    let misfit = tmp.path().join("misfit.toml");
    std::fs::write(
        &misfit,
        "[convention]\nname = \"x\"\n\n[[rule]]\ncanonical = \"model.layers.{i}.self_attn.k_proj.weight\"\nstored = \"k.{i}\"\ntransforms = [{ rope_permute = { heads = 3, to = \"interleaved\" } }]\n",
    )
    .unwrap();
    orient()
        .arg("convert")
        .arg(fixture("qwen2"))
        .arg(tmp.path().join("out"))
        .args(["--to", "x", "--layout"])
        .arg(&misfit)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}:6: `transforms`: for `model.layers.0.self_attn.k_proj.weight`",
            misfit.display()
        )))
        .stderr(predicate::str::contains("not a multiple of 3 heads"));
    assert_only(tmp.path(), &["bad.toml", "misfit.toml"]);
}

#[test]
fn unknown_conventions_are_refused_listing_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    for flag in ["--to", "--from"] {
        orient()
            .arg("convert")
            .arg(fixture("qwen2"))
            .arg(tmp.path().join("out"))
            .args([flag, "jax"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(
                "unknown layout convention `jax` (known: hf, flax)",
            ));
        orient()
            .arg("convert")
            .arg(fixture("qwen2"))
            .arg(tmp.path().join("out"))
            .args([flag, "jax", "--layout"])
            .arg(layout())
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "(known: hf, flax, {PORT})"
            )));
    }
    assert_only(tmp.path(), &[]);
}

/// Writes `tensors` (name → dtype, shape, bytes) as `dir/model.safetensors`, next to a copy
/// of `config`.
fn write_model(dir: &Path, config: &Path, tensors: &Tensors) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(config, dir.join("config.json")).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            let dtype = match dtype.as_str() {
                "F32" => safetensors::Dtype::F32,
                "BF16" => safetensors::Dtype::BF16,
                other => panic!("{other}"),
            };
            (
                name.clone(),
                safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();
}

#[test]
fn missing_unexpected_and_duplicate_tensors_each_say_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let config = fixture("llama/config.json");
    let full = tensors(&fixture("llama/model.safetensors"));

    // Layer 1's k_proj is absent: it is missing, and no --from can help.
    let mut t = full.clone();
    t.remove("model.layers.1.self_attn.k_proj.weight");
    let src = tmp.path().join("missing");
    write_model(&src, &config, &t);
    orient()
        .arg("convert")
        .arg(&src)
        .arg(tmp.path().join("out"))
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("read as hf layout, lacks 1 required tensor(s)")
                .and(predicate::str::contains(
                    "model.layers.1.self_attn.k_proj.weight: missing (expected [32, 64])",
                ))
                .and(predicate::str::contains("--from").not())
                .and(predicate::str::contains("single layout convention").not()),
        );

    // A tensor no convention knows.
    let mut t = full.clone();
    t.insert(
        "model.layers.0.mlp.extra.weight".into(),
        ("F32".into(), vec![2], vec![0; 8]),
    );
    let src = tmp.path().join("unexpected");
    write_model(&src, &config, &t);
    orient()
        .arg("convert")
        .arg(&src)
        .arg(tmp.path().join("out"))
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains(
                "1 tensor(s) are not part of a llama model with this config in any known layout convention",
            )
            .and(predicate::str::contains("  model.layers.0.mlp.extra.weight"))
            .and(predicate::str::contains("--from").not()),
        );

    // The same tensor in two spellings (Flax trees may keep their `params.` prefix).
    let mut t = full.clone();
    let norm = t["model.norm.weight"].clone();
    t.insert("params.model.norm.weight".into(), norm);
    let src = tmp.path().join("duplicate");
    write_model(&src, &config, &t);
    orient()
        .arg("convert")
        .arg(&src)
        .arg(tmp.path().join("out"))
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("the source holds the same tensor twice")
                .and(predicate::str::contains(
                    "model.norm.weight and params.model.norm.weight are the same tensor (model.norm.weight) in two spellings",
                ))
                .and(predicate::str::contains("--from").not()),
        );
    assert_only(tmp.path(), &["duplicate", "missing", "unexpected"]);
}

#[test]
fn a_missing_config_is_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(
        fixture("llama/model.safetensors"),
        src.join("model.safetensors"),
    )
    .unwrap();
    // No config at all.
    let out = orient()
        .arg("convert")
        .arg(&src)
        .arg(tmp.path().join("out"))
        .assert()
        .code(2)
        .get_output()
        .stderr
        .clone();
    let err = String::from_utf8(out).unwrap();
    assert!(
        err.contains("no config.json next to the checkpoint; orient needs it to know the layout"),
        "{err}"
    );
    assert_eq!(err.matches("no config.json").count(), 1, "{err}");
}
