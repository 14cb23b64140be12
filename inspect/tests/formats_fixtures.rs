//! The format readers against files written by the real tools: gguf-py's GGUFWriter,
//! `torch.save`, and `flax.serialization.to_bytes`, made by
//! `tests/fixtures/formats/generate_formats.py`, which also records every expected name,
//! dtype, shape and value in `manifest-pt.json` / `manifest-flax.json`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use orient_inspect::formats::meta::{self, Combine, MetaParams};
use orient_inspect::formats::{
    self, gguf, msgpack, quant, torch, Encoding, Format, GgmlType, MetaArray, MetaValue, RawFile,
    RawTensor, TorchError,
};
use orient_inspect::Dtype;
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/formats")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn manifest(name: &str) -> Value {
    serde_json::from_slice(&read(name)).unwrap()
}

fn f8_e4m3fn(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((b >> 3) & 0x0f);
    let mant = f64::from(b & 0x07);
    if exp == 0 {
        sign * mant / 8.0 * 2f64.powi(-6)
    } else {
        sign * (1.0 + mant / 8.0) * 2f64.powi(exp - 7)
    }
}

/// The values of a plain tensor, widened to f64 (exact for every dtype used here).
fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f64> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f64::from(half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| f64::from(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        Dtype::F8_E4M3 => bytes.iter().map(|&b| f8_e4m3fn(b)).collect(),
        other => panic!("no decoder for {other}"),
    }
}

/// Expected values, as f32: every value here came from an f32 or narrower, and serde_json's
/// default float parser may be one f64 ulp off, which rounding to f32 removes.
fn expected_values(entry: &Value) -> Vec<f32> {
    entry["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn narrow(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

fn shape_of(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect()
}

/// Checks a tensor's dtype, shape and values against a manifest entry.
fn check_tensor(file: &[u8], raw: &RawFile, entry: &Value) {
    let name = entry["name"].as_str().unwrap();
    let t = raw.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let dtype = Dtype::parse(entry["dtype"].as_str().unwrap()).unwrap();
    assert_eq!(t.encoding, Encoding::Plain(dtype), "{name}");
    assert_eq!(t.shape, shape_of(&entry["shape"]), "{name}");
    assert_eq!(
        narrow(decode(&file[t.range.clone()], dtype)),
        expected_values(entry),
        "{name}"
    );
}

fn meta_json(v: &MetaValue) -> Value {
    match v {
        MetaValue::U8(x) => (*x).into(),
        MetaValue::I8(x) => (*x).into(),
        MetaValue::U16(x) => (*x).into(),
        MetaValue::I16(x) => (*x).into(),
        MetaValue::U32(x) => (*x).into(),
        MetaValue::I32(x) => (*x).into(),
        MetaValue::U64(x) => (*x).into(),
        MetaValue::I64(x) => (*x).into(),
        MetaValue::F32(x) => f64::from(*x).into(),
        MetaValue::F64(x) => (*x).into(),
        MetaValue::Bool(x) => (*x).into(),
        MetaValue::Str(s) => s.as_str().into(),
        MetaValue::None => Value::Null,
        MetaValue::Array(a) => array_json(a),
    }
}

fn array_json(a: &MetaArray) -> Value {
    match a {
        MetaArray::Arrays(items) => items.iter().map(array_json).collect(),
        _ => (0..a.len())
            .map(|i| meta_json(&a.get(i).unwrap()))
            .collect(),
    }
}

#[test]
fn gguf_written_by_gguf_py() {
    let m = manifest("manifest-pt.json");
    let m = &m["gguf"];
    let file = read(m["file"].as_str().unwrap());
    assert_eq!(formats::sniff(&file), Some(Format::Gguf));
    let g = gguf::parse_detailed(&file).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    let raw = &g.file;

    let names: Vec<_> = raw.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["f32", "f16", "bf16", "q8_0", "q4_0"]);
    for entry in m["tensors"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let t = raw.tensor(name).unwrap();
        let ty = GgmlType::ALL
            .iter()
            .find(|t| t.name() == entry["type"].as_str().unwrap())
            .unwrap();
        assert_eq!(t.encoding, ty.encoding(), "{name}");
        assert_eq!(
            t.shape,
            shape_of(&entry["ne"]),
            "{name}: ne order, not reversed"
        );
        assert_eq!(t.range.start % 32, 0, "{name}: aligned");
        let bytes = &file[t.range.clone()];
        match t.encoding {
            Encoding::Plain(d) => {
                assert_eq!(narrow(decode(bytes, d)), expected_values(entry), "{name}")
            }
            Encoding::Gguf(q) => {
                let want: Vec<u32> = read(entry["expected"].as_str().unwrap())
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let mut got = vec![0f32; t.numel()];
                quant::dequantize(q, bytes, &mut got).unwrap();
                let got: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                assert_eq!(
                    got, want,
                    "{name}: bit-for-bit equal to gguf.quants.dequantize"
                );
            }
        }
    }

    let expected = m["metadata"].as_object().unwrap();
    assert_eq!(
        raw.metadata.len(),
        expected.len(),
        "no key lost or invented"
    );
    for (key, want) in expected {
        let v = raw.meta(key).unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(v.type_name(), want[0].as_str().unwrap(), "{key}");
        assert_eq!(meta_json(v), want[1], "{key}");
    }
    let Some(MetaValue::Array(MetaArray::Arrays(nested))) = raw.meta("test.arr_nested") else {
        panic!("nested array")
    };
    assert_eq!(nested[2].elem_type_name(), "i32");
}

fn tensor_names(raw: &RawFile) -> Vec<&str> {
    raw.tensors.iter().map(|t| t.name.as_str()).collect()
}

#[test]
fn torch_state_dict() {
    let m = manifest("manifest-pt.json");
    let m = &m["torch_state_dict"];
    let file = read(m["file"].as_str().unwrap());
    assert_eq!(formats::sniff(&file), Some(Format::TorchZip));
    let raw = torch::parse(&file).unwrap();
    let entries = m["tensors"].as_array().unwrap();
    let want: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(tensor_names(&raw), want, "state-dict order");
    for e in entries {
        check_tensor(&file, &raw, e);
    }
    assert_eq!(
        raw.meta("torch.archive").unwrap().as_str(),
        m["archive"].as_str()
    );
    assert_eq!(
        raw.meta("torch.byteorder").unwrap().as_str(),
        Some("little")
    );
    // The view shares the base's storage, at an offset of 2 elements.
    let (base, view) = (raw.tensor("base").unwrap(), raw.tensor("view").unwrap());
    assert_eq!(view.range.start, base.range.start + 8);
    assert_eq!(view.range.end, base.range.start + 24);
    // Storages are stored 64-byte aligned by torch.
    assert_eq!(raw.tensor("weight").unwrap().range.start % 64, 0);
}

#[test]
fn torch_wrapped_protocol_4() {
    let m = manifest("manifest-pt.json");
    let m = &m["torch_wrapped"];
    let file = read(m["file"].as_str().unwrap());
    let raw = torch::parse(&file).unwrap();
    assert_eq!(tensor_names(&raw), ["model.w", "model.b"]);
    for e in m["tensors"].as_array().unwrap() {
        check_tensor(&file, &raw, e);
    }
    for (k, v) in m["scalars"].as_object().unwrap() {
        assert_eq!(meta_json(raw.meta(k).unwrap()), *v, "{k}");
    }
}

#[test]
fn torch_non_contiguous_is_refused() {
    let m = manifest("manifest-pt.json");
    let m = &m["torch_noncontiguous"];
    let file = read(m["file"].as_str().unwrap());
    let e = torch::parse(&file).unwrap_err();
    let TorchError::NonContiguous {
        name,
        shape,
        stride,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(name, m["name"].as_str().unwrap());
    assert_eq!(*shape, shape_of(&m["shape"]));
    assert_eq!(*stride, shape_of(&m["stride"]));
    assert!(e.to_string().contains("not contiguous"), "{e}");
}

#[test]
fn torch_legacy_is_refused() {
    let file = read("torch/legacy.bin");
    assert_eq!(formats::sniff(&file), Some(Format::TorchLegacy));
    let e = torch::parse(&file).unwrap_err();
    assert_eq!(e, TorchError::Legacy);
    assert!(e.to_string().contains("legacy PyTorch format"), "{e}");
}

/// Concatenates shard tensors along `axis` (0 or 1 of a 2-D tensor), as bytes.
fn concat(files: &[Vec<u8>], parts: &[&RawTensor], axis: usize, elem: usize) -> Vec<u8> {
    if axis == 0 {
        return parts
            .iter()
            .zip(files)
            .flat_map(|(t, f)| f[t.range.clone()].to_vec())
            .collect();
    }
    let rows = parts[0].shape[0];
    let mut out = Vec::new();
    for r in 0..rows {
        for (t, f) in parts.iter().zip(files) {
            let row = t.shape[1] * elem;
            out.extend(&f[t.range.start + r * row..t.range.start + (r + 1) * row]);
        }
    }
    out
}

#[test]
fn meta_shards_combine() {
    let m = manifest("manifest-pt.json");
    let m = &m["meta"];
    let params =
        MetaParams::parse(std::str::from_utf8(&read(m["params"].as_str().unwrap())).unwrap())
            .unwrap();
    let hf = params.hf_numbers(Some(meta::LlamaVersion::V2)).unwrap();
    assert_eq!(
        hf.intermediate_size as u64,
        m["intermediate_size"].as_u64().unwrap()
    );
    assert_eq!(hf.head_dim, 8);
    let files: Vec<Vec<u8>> = m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| read(s.as_str().unwrap()))
        .collect();
    let shards: Vec<RawFile> = files.iter().map(|f| torch::parse(f).unwrap()).collect();
    let plans = meta::plan_shards(&params, &shards).unwrap();
    for entry in m["tensors"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let plan = plans.iter().find(|p| p.name == name).unwrap();
        assert_eq!(plan.shape, shape_of(&entry["shape"]), "{name}");
        assert_eq!(plan.encoding, Encoding::Plain(Dtype::BF16));
        let parts: Vec<&RawTensor> = shards.iter().map(|s| s.tensor(name).unwrap()).collect();
        let bytes = match (plan.combine, entry["axis"].as_u64()) {
            (Combine::Concat { axis }, Some(want)) => {
                assert_eq!(axis as u64, want, "{name}");
                concat(&files, &parts, axis, 2)
            }
            (Combine::Replicated, None) => {
                let copies: Vec<&[u8]> = parts
                    .iter()
                    .zip(&files)
                    .map(|(t, f)| &f[t.range.clone()])
                    .collect();
                meta::check_replicas(name, &copies).unwrap();
                copies[0].to_vec()
            }
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(
            narrow(decode(&bytes, Dtype::BF16)),
            expected_values(entry),
            "{name}: reassembled"
        );
    }
}

#[test]
fn flax_msgpack_written_by_flax() {
    let m = manifest("manifest-flax.json");
    let m = &m["msgpack"];
    let file = read(m["file"].as_str().unwrap());
    let raw = msgpack::parse(&file).unwrap();
    let entries = m["tensors"].as_array().unwrap();
    assert_eq!(raw.tensors.len(), entries.len());
    for e in entries {
        check_tensor(&file, &raw, e);
    }
    for (k, v) in m["scalars"].as_object().unwrap() {
        assert_eq!(meta_json(raw.meta(k).unwrap()), *v, "{k}");
    }
    assert_eq!(raw.metadata.len(), 1);
}
