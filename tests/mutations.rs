//! Mutated inputs through the binary, as a hostile user tries them: every byte-level
//! mutation of a checkpoint header, of a sharded index and of a config.json must end in a
//! clean exit (0, 1 or 2), never a signal or a panic, and an error must name the file.
//!
//! The mutations are deterministic (a fixed xorshift sequence), so a failure reproduces; the
//! mutated bytes of the failing case are printed. Kept small enough for CI (a few hundred runs
//! of the debug binary); the broader fuzzing the issue reports lives in the parsers' proptests.
#![allow(clippy::unwrap_used)]

mod common;
use common::fixture;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn orient(args: &[&Path]) -> Output {
    Command::new(assert_cmd::cargo::cargo_bin("orient"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `bytes` within `[0, limit)`: flip a byte, set one to a JSON-significant
/// character, delete a span, duplicate a span, or truncate.
fn mutate(bytes: &[u8], limit: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let limit = limit.min(out.len()).max(1);
    let at = rng.below(limit);
    match rng.below(5) {
        0 => out[at] ^= 1 << rng.below(8),
        1 => {
            const SIGNIFICANT: &[u8] = b"{}[]\",:09-e.\\ \x00\xff";
            out[at] = SIGNIFICANT[rng.below(SIGNIFICANT.len())];
        }
        2 => {
            let len = 1 + rng.below(16);
            out.drain(at..(at + len).min(out.len()));
        }
        3 => {
            let len = 1 + rng.below(16);
            let span: Vec<u8> = out[at..(at + len).min(out.len())].to_vec();
            out.splice(at..at, span);
        }
        _ => out.truncate(at),
    }
    out
}

/// Runs `args` (with the model path last) and checks the process ended cleanly.
fn assert_clean(out: &Output, what: &str, mutated: &[u8]) {
    if let Some(sig) = out.status.signal() {
        panic!(
            "{what}: killed by signal {sig}; input starts {:?}",
            String::from_utf8_lossy(&mutated[..mutated.len().min(200)])
        );
    }
    let code = out.status.code().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(code, 0..=2),
        "{what}: exit {code} (a panic?): {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    if code == 2 {
        assert!(stderr.starts_with("error: "), "{what}: {stderr}");
    }
}

/// Length of the safetensors header (8-byte prefix + JSON).
fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn mutated_headers_never_crash_inspect_or_run() {
    let original = std::fs::read(fixture("qwen2/model.safetensors")).unwrap();
    let config = std::fs::read(fixture("qwen2/config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    let model = dir.path().join("model.safetensors");
    let mut rng = Rng(0x5EED_0001);
    let mut errors = 0;
    for k in 0..120 {
        let bytes = mutate(&original, header_end(&original), &mut rng);
        std::fs::write(&model, &bytes).unwrap();
        let inspect = orient(&[Path::new("inspect"), Path::new("--check"), &model]);
        assert_clean(&inspect, &format!("inspect, mutation {k}"), &bytes);
        if inspect.status.code() == Some(2) {
            errors += 1;
            let stderr = String::from_utf8_lossy(&inspect.stderr);
            assert!(
                stderr.contains("model.safetensors"),
                "mutation {k}: {stderr}"
            );
            continue;
        }
        // A header that still parses: the forward must also end cleanly.
        let run = orient(&[
            Path::new("run"),
            dir.path(),
            Path::new("--tokens"),
            Path::new("1,2,3"),
        ]);
        assert_clean(&run, &format!("run, mutation {k}"), &bytes);
    }
    // The mutations are meant to break most headers; a sequence that breaks none tests nothing.
    assert!(errors > 40, "only {errors} of 120 mutations were refused");
}

#[test]
fn mutated_configs_never_crash() {
    let original = std::fs::read(fixture("llama/config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        fixture("llama/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let config = dir.path().join("config.json");
    let mut rng = Rng(0x5EED_0002);
    for k in 0..120 {
        let bytes = mutate(&original, original.len(), &mut rng);
        std::fs::write(&config, &bytes).unwrap();
        for cmd in ["inspect", "run"] {
            let out = if cmd == "run" {
                orient(&[
                    Path::new("run"),
                    dir.path(),
                    Path::new("--tokens"),
                    Path::new("1,2"),
                ])
            } else {
                orient(&[Path::new(cmd), dir.path()])
            };
            assert_clean(&out, &format!("{cmd}, config mutation {k}"), &bytes);
            if out.status.code() == Some(2) {
                let stderr = String::from_utf8_lossy(&out.stderr);
                // The config itself, or the model it describes (a shape the changed config
                // no longer fits, named with its tensor).
                assert!(
                    stderr.contains("config.json")
                        || stderr.contains(&*dir.path().to_string_lossy()),
                    "{cmd}, config mutation {k}: {stderr}"
                );
            }
        }
    }
}

#[test]
fn mutated_indexes_never_crash() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("qwen2/config.json"), dir.path().join("config.json")).unwrap();
    std::fs::copy(
        fixture("qwen2/model.safetensors"),
        dir.path().join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let names: Vec<String> = {
        let bytes = std::fs::read(fixture("qwen2/model.safetensors")).unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[8..header_end(&bytes)]).unwrap();
        header
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect()
    };
    let map: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| (n.clone(), "model-00001-of-00001.safetensors".into()))
        .collect();
    let original = serde_json::to_vec_pretty(&serde_json::json!({
        "metadata": {"total_size": 633088},
        "weight_map": map,
    }))
    .unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    let mut rng = Rng(0x5EED_0003);
    for k in 0..120 {
        let bytes = mutate(&original, original.len(), &mut rng);
        std::fs::write(&index, &bytes).unwrap();
        let out = orient(&[Path::new("inspect"), dir.path()]);
        assert_clean(&out, &format!("inspect, index mutation {k}"), &bytes);
        if out.status.code() == Some(2) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("model.safetensors.index.json")
                    || stderr.contains("model-00001-of-00001.safetensors"),
                "index mutation {k}: {stderr}"
            );
        }
    }
}
