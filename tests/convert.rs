//! `orient convert` end to end: round trips, agreement with transformers' own files,
//! casts, sharding, and every refusal (with nothing left behind).
#![allow(clippy::unwrap_used)]

mod common;
use common::{assert_only, assert_same_tensors, fixture, orient, tensors, Tensors};

use std::collections::BTreeMap;
use std::path::Path;

use orient_inspect::Checkpoint;
use predicates::prelude::*;

const HF: [&str; 6] = ["llama", "mistral", "qwen2", "qwen3", "gpt2", "llama-bf16"];
const FLAX: [&str; 4] = ["llama-flax", "mistral-flax", "gpt2-flax", "qwen2-flax"];

/// Every tensor as (dtype, shape, bytes), and the metadata without provenance.
fn load(path: &Path) -> (Tensors, BTreeMap<String, String>) {
    let meta = Checkpoint::open(path)
        .unwrap()
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("orient."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (tensors(path), meta)
}

fn convert(src: &Path, dst: &Path, args: &[&str]) {
    orient()
        .arg("convert")
        .arg(src)
        .arg(dst)
        .args(args)
        .arg("--quiet")
        .assert()
        .success();
}

/// The same tensors (names, dtypes, shapes, bytes) and the same metadata, provenance aside.
#[track_caller]
fn assert_same(a: &Path, b: &Path) {
    assert_same_tensors(a, b);
    assert_eq!(
        load(a).1,
        load(b).1,
        "metadata of {} vs {}",
        a.display(),
        b.display()
    );
}

#[test]
fn hf_to_flax_to_hf_is_bit_identical_for_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    for name in HF {
        let flax = tmp.path().join(format!("{name}-flax"));
        let back = tmp.path().join(format!("{name}-back"));
        convert(&fixture(name), &flax, &["--to", "flax"]);
        convert(&flax, &back, &["--to", "hf"]);
        assert_same(&fixture(name).join("model.safetensors"), &back);
        // config and generation files come along.
        assert_eq!(
            std::fs::read(fixture(name).join("config.json")).unwrap(),
            std::fs::read(back.join("config.json")).unwrap()
        );
        let (_, meta) = load(&flax);
        assert_eq!(meta.get("format").map(String::as_str), Some("flax"));
    }
}

#[test]
fn flax_to_hf_to_flax_is_bit_identical_for_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FLAX {
        let hf = tmp.path().join(format!("{name}-hf"));
        let back = tmp.path().join(format!("{name}-back"));
        convert(&fixture(name), &hf, &[]);
        convert(&hf, &back, &["--to", "flax"]);
        assert_same(&fixture(name).join("model.safetensors"), &back);
    }
}

#[test]
fn transformers_flax_files_convert_to_exactly_transformers_hf_files_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    for (flax, hf) in [
        ("llama-flax", "llama"),
        ("mistral-flax", "mistral"),
        ("gpt2-flax", "gpt2"),
    ] {
        let out = tmp.path().join(format!("{flax}-as-hf"));
        convert(&fixture(flax), &out, &["--to", "hf"]);
        let (got, meta) = load(&out);
        let (want, _) = load(&fixture(hf).join("model.safetensors"));
        assert_eq!(got, want, "{flax} → hf differs from {hf}");
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));

        let out = tmp.path().join(format!("{hf}-as-flax"));
        convert(&fixture(hf), &out, &["--to", "flax"]);
        let (got, _) = load(&out);
        let (want, _) = load(&fixture(flax).join("model.safetensors"));
        assert_eq!(got, want, "{hf} → flax differs from {flax}");
    }
}

#[test]
fn provenance_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    convert(
        &fixture("qwen3"),
        &out,
        &["--to", "flax", "--dtype", "bf16"],
    );
    let ck = Checkpoint::open(&out).unwrap();
    let m = ck.metadata();
    assert_eq!(m["format"], "flax");
    assert_eq!(m["orient.source_convention"], "hf");
    assert_eq!(m["orient.version"], env!("CARGO_PKG_VERSION"));
    let ops = &m["orient.ops"];
    assert!(
        ops.contains("model.layers.{0-1}.mlp.down_proj.kernel:T,bf16"),
        "{ops}"
    );
    assert!(ops.contains("model.norm.weight:bf16"), "{ops}");
    // qwen3 ties its embeddings; the Flax layout owns an lm_head built from them.
    assert!(
        ops.contains("lm_head.kernel:T,bf16,=model.embed_tokens.weight"),
        "{ops}"
    );
}

#[test]
fn a_mixed_source_is_refused_listing_the_offending_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    orient()
        .arg("convert")
        .arg(fixture("qwen2-buggy"))
        .arg(&out)
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("does not follow a single layout convention")
                .and(predicate::str::contains(
                    "model.layers.0.self_attn.k_proj.weight: hf name, but its non-square shape [64, 32] is the flax orientation",
                ))
                .and(predicate::str::contains("model.layers.1.mlp.down_proj.weight"))
                // Square projections carry no evidence and are not listed as guesses,
                // but the message warns about them.
                .and(predicate::str::contains("self_attn.q_proj.weight").not())
                .and(predicate::str::contains("self_attn.o_proj.weight").not())
                .and(predicate::str::contains("cannot be checked by shape")),
        );
    assert_only(tmp.path(), &[]);
}

#[test]
fn an_explicit_from_overrides_detection_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    // A llama whose tensors carry Flax names but keep HF orientation (a port that
    // renamed without transposing): detection refuses it, `--from hf` reads it as HF.
    let src = tmp.path().join("renamed");
    copy_dir(&fixture("llama"), &src);
    rewrite(
        &fixture("llama"),
        &src,
        |name| {
            if name.ends_with("_proj.weight") || name == "lm_head.weight" {
                name.replace(".weight", ".kernel")
            } else {
                name.replace("embed_tokens.weight", "embed_tokens.embedding")
            }
        },
        |_, bytes| bytes.to_vec(),
    );
    orient()
        .arg("convert")
        .arg(&src)
        .arg(tmp.path().join("refused"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "model.layers.0.mlp.down_proj.kernel: flax name, but its non-square shape [64, 176] is the hf orientation",
        ));
    let out = tmp.path().join("fixed");
    orient()
        .arg("convert")
        .arg(&src)
        .arg(&out)
        .args(["--from", "hf"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "--from hf given explicitly: it OVERRIDES detection, which says: mixed or contradictory",
        ));
    let (fixed, _) = load(&out);
    let (want, _) = load(&fixture("llama").join("model.safetensors"));
    assert_eq!(fixed, want);

    // The buggy qwen2 transposed its projections but not lm_head: even read as Flax it
    // does not fit one convention, and the tensor that does not fit is named.
    orient()
        .arg("convert")
        .arg(fixture("qwen2-buggy"))
        .arg(tmp.path().join("buggy"))
        .args(["--from", "flax"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "tensor `lm_head.weight` has shape [512, 64], but the catalogue expects [64, 512] in flax layout",
        ));
    orient()
        .arg("convert")
        .arg(fixture("qwen2"))
        .arg(tmp.path().join("agrees"))
        .args(["--from", "hf", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "--from hf given explicitly (detection agrees)",
        ));
}

#[test]
fn source_equal_to_or_around_destination_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    copy_dir(&fixture("llama"), &src);
    // SRC == DST, even with --force, even spelled differently.
    for dst in [
        src.clone(),
        src.join("."),
        tmp.path().join("model/../model"),
    ] {
        orient()
            .arg("convert")
            .arg(&src)
            .arg(&dst)
            .arg("--force")
            .assert()
            .code(2)
            .stderr(predicate::str::contains("refusing to write"));
    }
    // DST inside SRC.
    orient()
        .arg("convert")
        .arg(&src)
        .arg(src.join("out"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("refusing to write"));
    // SRC inside DST: --force would delete the source.
    orient()
        .arg("convert")
        .arg(src.join("model.safetensors"))
        .arg(tmp.path())
        .arg("--force")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("refusing to write"));
    let (t, _) = load(&src);
    let (orig, _) = load(&fixture("llama"));
    assert_eq!(t, orig);
    assert_only(
        &src,
        &[
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "reference.safetensors",
        ],
    );
}

#[test]
fn an_existing_destination_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    convert(&fixture("llama"), &dst, &["--to", "flax"]);
    let before = std::fs::read(dst.join("model.safetensors")).unwrap();
    orient()
        .arg("convert")
        .arg(fixture("llama"))
        .arg(&dst)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "already exists (use --force to replace it)",
        ));
    assert_eq!(
        std::fs::read(dst.join("model.safetensors")).unwrap(),
        before
    );
    // --force replaces a previous checkpoint (tests/writes.rs: and nothing else).
    convert(&fixture("llama"), &dst, &["--force"]);
    assert_same(&fixture("llama").join("model.safetensors"), &dst);
    assert_only(tmp.path(), &["out"]);
}

#[test]
fn an_unknown_architecture_says_what_the_catalogue_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("falcon");
    copy_dir(&fixture("llama"), &src);
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"model_type\": \"llama\"", "\"model_type\": \"falcon\"")
        .replace("LlamaForCausalLM", "FalconForCausalLM");
    std::fs::write(src.join("config.json"), cfg).unwrap();
    orient()
        .arg("convert")
        .arg(&src)
        .arg(tmp.path().join("out"))
        .args(["--to", "flax"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("no entry for model_type `falcon`")
                .and(predicate::str::contains("flax")),
        );
    assert_only(tmp.path(), &["falcon"]);
}

#[test]
fn a_destination_under_a_file_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    orient()
        .arg("convert")
        .arg(fixture("llama"))
        .arg(file.join("out"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "plain-file that should hold it is not a folder",
        ));
    assert_only(tmp.path(), &["plain-file"]);
}

/// A write that fails half-way (the file-size limit stands in for a full disk: the
/// kernel returns EFBIG exactly where ENOSPC would come) leaves nothing behind.
#[test]
fn a_write_failing_midway_leaves_no_partial_output() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("out");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("orient"));
    cmd.arg("convert")
        .arg(fixture("llama"))
        .arg(&dst)
        .args(["--to", "flax"]);
    // SAFETY: between fork and exec only async-signal-safe calls are made (setrlimit,
    // signal), touching no memory but locals.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 100_000,
                rlim_max: 100_000,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Without this, exceeding the limit kills the process with SIGXFSZ; ignored,
            // the write returns EFBIG like a full disk returns ENOSPC.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing was written"), "{err}");
    assert!(err.contains("File too large"), "{err}");
    assert_only(tmp.path(), &[]);
}

#[test]
fn casts_round_to_nearest_even_and_widen_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // f32 → bf16 matches half's round-to-nearest-even for every value.
    let bf = tmp.path().join("bf16");
    convert(&fixture("llama"), &bf, &["--dtype", "bf16"]);
    let (src, _) = load(&fixture("llama").join("model.safetensors"));
    let (got, _) = load(&bf);
    for (name, (dtype, shape, bytes)) in &got {
        assert_eq!(dtype, "BF16");
        assert_eq!(shape, &src[name].1);
        let want: Vec<u8> = src[name]
            .2
            .chunks_exact(4)
            .flat_map(|c| {
                half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
            })
            .collect();
        assert_eq!(bytes, &want, "{name}");
    }
    // bf16 → f32 → bf16 is exact.
    let wide = tmp.path().join("f32");
    let back = tmp.path().join("back");
    convert(&fixture("llama-bf16"), &wide, &["--dtype", "f32"]);
    convert(&wide, &back, &["--dtype", "bf16"]);
    let (w, _) = load(&wide);
    assert!(w.values().all(|(d, _, _)| d == "F32"));
    assert_same(&fixture("llama-bf16").join("model.safetensors"), &back);
}

#[test]
fn f16_overflow_and_flush_are_counted_in_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    // llama with the final norm replaced by values that overflow or underflow f16.
    let src = tmp.path().join("hot");
    copy_dir(&fixture("llama"), &src);
    let mut special: Vec<f32> = vec![1.0; 64];
    special[..6].copy_from_slice(&[7.0e4, -1.0e6, 65520.0, 1.0e-9, f32::NAN, f32::INFINITY]);
    let special: Vec<u8> = special.iter().flat_map(|v| v.to_le_bytes()).collect();
    rewrite(&fixture("llama"), &src, str::to_string, |name, bytes| {
        if name == "model.norm.weight" {
            special.clone()
        } else {
            bytes.to_vec()
        }
    });

    orient()
        .arg("convert")
        .arg(&src)
        .arg(tmp.path().join("f16"))
        .args(["--dtype", "f16"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("casts:   3 overflowed to Inf, 1 flushed to zero")
                .and(predicate::str::contains("1 NaN kept"))
                .and(predicate::str::contains(
                    "model.norm.weight: 3 overflowed, 1 flushed",
                )),
        );
}

#[test]
fn sharded_output_has_an_index_and_converts_back() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = tmp.path().join("sharded");
    convert(
        &fixture("qwen2"),
        &sharded,
        &["--to", "flax", "--max-shard-size", "200KB"],
    );
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let files: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    assert!(
        files.contains("model-00001-of-00004.safetensors"),
        "{files:?}"
    );
    let (t, _) = load(&sharded);
    let total: usize = t.values().map(|(_, _, b)| b.len()).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    let back = tmp.path().join("back");
    convert(&sharded, &back, &[]);
    assert_same(&fixture("qwen2").join("model.safetensors"), &back);
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = orient()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["convert", "tests/fixtures/gpt2"])
        .arg(tmp.path().join("out"))
        .args(["--to", "flax", "--dry-run"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out)
        .unwrap()
        .replace(&tmp.path().display().to_string(), "<tmp>");
    insta::assert_snapshot!(text);
    assert_only(tmp.path(), &[]);
}

/// Rewrites the model of `from` into `to/model.safetensors`, renaming tensors and
/// replacing their bytes (same size) with the given functions.
fn rewrite(
    from: &Path,
    to: &Path,
    rename: impl Fn(&str) -> String,
    data: impl Fn(&str, &[u8]) -> Vec<u8>,
) {
    use orient_convert::writer::{Layout, OutTensor, Staging, TensorSink};
    let ck = Checkpoint::open(from).unwrap();
    let tensors: Vec<OutTensor> = ck
        .tensors()
        .iter()
        .map(|t| OutTensor {
            name: rename(&t.name),
            dtype: t.dtype.name().into(),
            shape: t.shape.clone(),
            nbytes: t.nbytes() as u64,
        })
        .collect();
    let by_new: BTreeMap<String, String> = ck
        .tensors()
        .iter()
        .map(|t| (rename(&t.name), t.name.clone()))
        .collect();
    let layout = Layout::new(tensors, &BTreeMap::new(), u64::MAX).unwrap();
    let staged = to.with_extension("staged");
    let staging = Staging::create(&staged, false).unwrap();
    let mut produce = |i: usize, sink: &mut TensorSink<'_>| {
        let old = &by_new[&layout.tensors[i].name];
        sink.write(&data(old, ck.view(ck.tensor(old).unwrap()).bytes))
    };
    staging
        .write_shard(&layout, 0, &mut produce, &mut |_| {})
        .unwrap();
    staging.commit(false).unwrap();
    std::fs::rename(
        staged.join("model.safetensors"),
        to.join("model.safetensors"),
    )
    .unwrap();
    std::fs::remove_dir(staged).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn synth_is_deterministic_and_its_output_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for dst in [&a, &b] {
        orient()
            .arg("synth")
            .arg(fixture("qwen2"))
            .arg(dst)
            .args([
                "--seed",
                "42",
                "--dtype",
                "bf16",
                "--max-shard-size",
                "300KB",
            ])
            .assert()
            .success()
            .stdout(predicate::str::contains("synthesized:"));
    }
    assert_same(&a, &b);
    assert!(a.join("model.safetensors.index.json").exists());
    let (t, _) = load(&a);
    let (fix, _) = load(&fixture("qwen2").join("model.safetensors"));
    // Same tensors and shapes as transformers' own qwen2 of this config.
    assert_eq!(
        t.iter()
            .map(|(k, v)| (k.clone(), v.1.clone()))
            .collect::<Vec<_>>(),
        fix.iter()
            .map(|(k, v)| (k.clone(), v.1.clone()))
            .collect::<Vec<_>>()
    );
    let flax = tmp.path().join("flax");
    let back = tmp.path().join("back");
    convert(&a, &flax, &["--to", "flax"]);
    convert(&flax, &back, &[]);
    assert_same(&a, &back);
}
