//! Names from a file never drive the terminal: a tensor named with an OSC title sequence
//! or a right-to-left override is shown escaped in tables, warnings and error messages,
//! and stays intact (and valid) in JSON.
#![allow(clippy::unwrap_used)]

mod common;
use common::orient;

use std::path::Path;

use serde_json::Value;

/// Sets the window title to "pwned", then rings the bell.
const OSC: &str = "evil\x1b]0;pwned\x07name";
/// Shows as `rtlexe.weight` with the tail reversed.
const RLO: &str = "rtl\u{202e}gnp.weight";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A safetensors file of F32 tensors (name, values), with optional `__metadata__`.
fn write_st(path: &Path, tensors: &[(&str, &[f32])], metadata: Option<Value>) {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), m);
    }
    let mut data = Vec::new();
    for (name, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": "F32", "shape": [values.len()], "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

/// Copies the safetensors file `src` to `dst` with one more F32 [2] tensor named `name`.
fn with_extra_tensor(src: &Path, dst: &Path, name: &str) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    let start = data.len();
    data.extend([1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()));
    header.insert(
        name.to_string(),
        serde_json::json!({"dtype": "F32", "shape": [2], "data_offsets": [start, data.len()]}),
    );
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(dst, file).unwrap();
}

/// Nothing in `text` a terminal would act on: no C0 control but the line feed, no DEL or
/// C1 control, no bidi control.
fn assert_inert(text: &str) {
    for c in text.chars() {
        let bad = matches!(c, '\u{0}'..='\u{9}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        assert!(!bad, "raw {c:?} in:\n{text}");
    }
}

/// (exit code, stdout, stderr)
fn run(args: &[&str]) -> (i32, String, String) {
    let out = orient().args(args).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn inspect_table_escapes_names_and_metadata_and_json_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    let meta = serde_json::json!({"format": "pt", "note\u{1b}[2J": "x\u{9b}31m\u{2067}y"});
    write_st(&file, &[(OSC, &[1.0, 2.0]), (RLO, &[3.0])], Some(meta));
    let (code, out, err) = run(&["inspect", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_inert(&out);
    assert!(out.contains(r"evil\x1b]0;pwned\x07name"), "{out}");
    assert!(out.contains(r"rtl\u{202e}gnp.weight"), "{out}");
    assert!(
        out.contains(r"note\x1b[2J=x\u{9b}31m\u{2067}y"),
        "metadata is escaped too: {out}"
    );
    // Escaped before layout: every row of the table is as wide as the header.
    let widths: Vec<usize> = out
        .lines()
        .filter(|l| l.starts_with('│'))
        .map(|l| l.chars().count())
        .collect();
    assert_eq!(widths.len(), 3, "{out}");
    assert!(widths.iter().all(|w| *w == widths[0]), "{out}");

    let (code, json, _) = run(&["inspect", file.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert_inert(&json);
    let v: Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [OSC, RLO], "JSON values are the names themselves");
    assert_eq!(
        v["summary"]["metadata"]["note\u{1b}[2J"],
        "x\u{9b}31m\u{2067}y"
    );
}

#[test]
fn diff_escapes_names_in_the_table_and_in_the_lines_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let rlo_b = format!("{RLO}\u{2066}2");
    write_st(&a, &[(OSC, &[1.0, 2.0]), (RLO, &[3.0])], None);
    write_st(&b, &[(OSC, &[1.0, 5.0]), (&rlo_b, &[3.0])], None);
    let (code, out, err) = run(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_inert(&out);
    assert_inert(&err);
    assert!(out.contains(r"evil\x1b]0;pwned\x07name"), "{out}");
    assert!(
        out.contains(r"only in A: rtl\u{202e}gnp.weight F32 [1]"),
        "{out}"
    );
    assert!(
        out.contains(r"only in B: rtl\u{202e}gnp.weight\u{2066}2 F32 [1]"),
        "{out}"
    );

    let (code, json, _) = run(&["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    assert_inert(&json);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pairs"][0]["a"]["name"], OSC);
}

#[test]
fn error_messages_escape_names_and_keep_their_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    // A header error naming the tensor: unknown dtype.
    let bad = dir.path().join("bad.safetensors");
    let header = serde_json::json!({OSC: {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}});
    let mut text = header.to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&[0; 4]);
    std::fs::write(&bad, file).unwrap();
    let out_dir = dir.path().join("out");
    for args in [
        vec!["convert", bad.to_str().unwrap(), out_dir.to_str().unwrap()],
        vec!["inspect", bad.to_str().unwrap()],
        vec!["diff", bad.to_str().unwrap(), bad.to_str().unwrap()],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}");
        assert_inert(&err);
        assert!(
            err.contains(r"tensor `evil\x1b]0;pwned\x07name`: unknown dtype `Q9`"),
            "{args:?}: {err}"
        );
    }

    // convert's refusal of a mixed source lists each offending tensor on its own line:
    // the qwen2 fixture plus one tensor with a hostile name.
    let model = dir.path().join("qwen2");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(fixture("qwen2/config.json"), model.join("config.json")).unwrap();
    let hostile = format!("model.layers.0.{OSC}\u{202e}.weight");
    with_extra_tensor(
        &fixture("qwen2/model.safetensors"),
        &model.join("model.safetensors"),
        &hostile,
    );
    let (code, _, err) = run(&[
        "convert",
        model.to_str().unwrap(),
        out_dir.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_inert(&err);
    assert!(
        err.contains(r"model.layers.0.evil\x1b]0;pwned\x07name\u{202e}.weight"),
        "{err}"
    );
    assert!(
        err.lines().count() > 2,
        "the message keeps its lines: {err}"
    );
    assert!(!out_dir.exists());
}
