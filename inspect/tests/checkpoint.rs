//! Opening hostile and valid checkpoints from disk: files, folders and sharded sets.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use orient_inspect::{Checkpoint, Dtype, Error, HeaderError};

/// Writes a valid safetensors file of U8 tensors named as given (each 4 bytes, value = index).
fn write_st(path: &Path, names: &[&str]) {
    let mut header = String::from("{");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{n}\":{{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[{},{}]}}",
            i * 4,
            i * 4 + 4
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for i in 0..names.len() {
        bytes.extend_from_slice(&[i as u8; 4]);
    }
    std::fs::write(path, bytes).unwrap();
}

fn write_index(dir: &Path, map: &[(&str, &str)]) {
    let entries: Vec<String> = map
        .iter()
        .map(|(t, s)| format!("\"{t}\":\"{s}\""))
        .collect();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        format!(
            "{{\"metadata\":{{\"total_size\":16}},\"weight_map\":{{{}}}}}",
            entries.join(",")
        ),
    )
    .unwrap();
}

#[test]
fn single_file_folder_and_views() {
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("model.safetensors"), &["b", "a"]);
    for p in [dir.path().to_owned(), dir.path().join("model.safetensors")] {
        let ck = Checkpoint::open(&p).unwrap();
        let names: Vec<_> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let b = ck.tensor("b").unwrap();
        assert_eq!(b.dtype, Dtype::U8);
        assert_eq!(ck.view(b).bytes, &[0, 0, 0, 0]);
        assert_eq!(ck.view(ck.tensor("a").unwrap()).bytes, &[1, 1, 1, 1]);
        ck.release(b);
    }
}

#[test]
fn sharded_set() {
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("s1.safetensors"), &["a", "b"]);
    write_st(&dir.path().join("s2.safetensors"), &["c"]);
    write_index(
        dir.path(),
        &[
            ("a", "s1.safetensors"),
            ("b", "s1.safetensors"),
            ("c", "s2.safetensors"),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.shards().len(), 2);
    assert_eq!(ck.tensors().len(), 3);
    assert_eq!(ck.tensor("c").unwrap().shard, 1);
    let ck2 = Checkpoint::open(dir.path().join("model.safetensors.index.json")).unwrap();
    assert_eq!(ck2.tensors(), ck.tensors());
}

#[test]
fn folder_without_safetensors_or_with_several() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::NoSafetensors { .. })
    ));
    write_st(&dir.path().join("x.safetensors"), &["a"]);
    write_st(&dir.path().join("y.safetensors"), &["b"]);
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(&err, Error::AmbiguousFolder { files, .. } if files.len() == 2));
    assert!(err.to_string().contains("x.safetensors, y.safetensors"));
}

#[test]
fn missing_path() {
    let err = Checkpoint::open("/definitely/not/here.safetensors").unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("/definitely/not/here.safetensors"));
}

#[test]
fn header_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    write_st(&p, &["w"]);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.truncate(bytes.len() - 2);
    std::fs::write(&p, &bytes).unwrap();
    let err = Checkpoint::open(&p).unwrap_err();
    assert!(matches!(
        &err,
        Error::Header {
            source: HeaderError::Truncated { .. },
            ..
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("`w`") && msg.contains("truncated"),
        "{msg}"
    );
    std::fs::write(&p, [1u8, 2]).unwrap();
    assert!(matches!(
        Checkpoint::open(&p),
        Err(Error::Header {
            source: HeaderError::TooShort { len: 2 },
            ..
        })
    ));
}

#[test]
fn escaping_shard_names_are_refused_without_opening() {
    for bad in [
        "../outside.safetensors",
        "/etc/passwd",
        "a/../../b.safetensors",
        "..\\\\x.safetensors",
        "",
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_index(dir.path(), &[("a", bad)]);
        let err = Checkpoint::open(dir.path()).unwrap_err();
        assert!(matches!(&err, Error::ShardEscapes { .. }), "{bad}: {err}");
    }
}

#[cfg(unix)]
#[test]
fn symlinked_shard_leading_outside_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    write_st(&outside.path().join("real.safetensors"), &["a"]);
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("real.safetensors"),
        dir.path().join("s.safetensors"),
    )
    .unwrap();
    write_index(dir.path(), &[("a", "s.safetensors")]);
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::ShardEscapes { .. })
    ));
}

#[test]
fn index_errors() {
    // Missing shard file.
    let dir = tempfile::tempdir().unwrap();
    write_index(dir.path(), &[("a", "gone.safetensors")]);
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingShard { shard, tensor, .. } if shard == "gone.safetensors" && tensor == "a")
    );

    // Listed but not in the shard.
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("s.safetensors"), &["a"]);
    write_index(
        dir.path(),
        &[("a", "s.safetensors"), ("ghost", "s.safetensors")],
    );
    assert!(
        matches!(Checkpoint::open(dir.path()), Err(Error::NotInShard { tensor, .. }) if tensor == "ghost")
    );

    // In the shard but not in the index.
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("s.safetensors"), &["a", "stowaway"]);
    write_index(dir.path(), &[("a", "s.safetensors")]);
    assert!(
        matches!(Checkpoint::open(dir.path()), Err(Error::NotInIndex { tensor, .. }) if tensor == "stowaway")
    );

    // The same tensor in two shards.
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("s1.safetensors"), &["a"]);
    write_st(&dir.path().join("s2.safetensors"), &["a", "b"]);
    write_index(
        dir.path(),
        &[("a", "s1.safetensors"), ("b", "s2.safetensors")],
    );
    assert!(
        matches!(Checkpoint::open(dir.path()), Err(Error::DuplicateAcrossShards { tensor, .. }) if tensor == "a")
    );

    // Listed in one shard, found in another.
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("s1.safetensors"), &["a"]);
    write_st(&dir.path().join("s2.safetensors"), &["b"]);
    write_index(
        dir.path(),
        &[("a", "s2.safetensors"), ("b", "s1.safetensors")],
    );
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::WrongShard { .. })
    ));

    // Not JSON, and no weight_map.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.safetensors.index.json"), "{not json").unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::InvalidIndex { .. })
    ));
    std::fs::write(dir.path().join("model.safetensors.index.json"), "{}").unwrap();
    assert!(matches!(
        Checkpoint::open(dir.path()),
        Err(Error::InvalidIndex { .. })
    ));
}

#[test]
fn misaligned_data_is_copied_not_reinterpreted() {
    // A header of odd length (as MLX writes) leaves f32 data unaligned.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let header = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#;
    assert_ne!(header.len() % 4, 0);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for v in [1.0f32, -2.5, 3.25] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&p, bytes).unwrap();
    let ck = Checkpoint::open(&p).unwrap();
    let view = ck.view(ck.tensor("w").unwrap());
    assert!(view.as_f32().is_none());
    assert_eq!(view.to_f32_vec().unwrap(), vec![1.0, -2.5, 3.25]);
}

#[test]
fn released_pages_stay_readable_and_foreign_memory_is_never_advised() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    // One tensor of 64 KiB so that whole pages lie inside it.
    let header = r#"{"w":{"dtype":"U8","shape":[65536],"data_offsets":[0,65536]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..65536u32).map(|i| (i % 251) as u8));
    std::fs::write(&p, &bytes).unwrap();
    let ck = Checkpoint::open(&p).unwrap();
    let t = ck.tensor("w").unwrap();
    let before = ck.view(t).bytes.to_vec();
    ck.release_part(t, &ck.view(t).bytes[5000..40000]);
    ck.release(t);
    assert_eq!(ck.view(t).bytes, before.as_slice());
    // A heap buffer is not part of the mapping: MADV_DONTNEED would zero it, so it must
    // be ignored.
    let heap = vec![7u8; 1 << 16];
    ck.release_part(t, &heap);
    assert!(heap.iter().all(|&b| b == 7));
}

#[test]
fn typed_views_check_dtype_and_alignment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let ck = Checkpoint::open(root.join("llama-bf16")).unwrap();
    let t = ck.tensor("model.norm.weight").unwrap();
    let v = ck.view(t);
    let bf = v.as_bf16().unwrap();
    assert_eq!(bf.len(), 64);
    assert!(v.as_f16().is_none() && v.as_f32().is_none());
    let widened = v.to_f32_vec().unwrap();
    assert!(bf.iter().zip(&widened).all(|(b, w)| b.to_f32() == *w));
    let ck = Checkpoint::open(root.join("llama")).unwrap();
    let t = ck.tensor("model.norm.weight").unwrap();
    assert_eq!(
        ck.view(t).as_f32().unwrap(),
        ck.view(t).to_f32_vec().unwrap().as_slice()
    );
}

#[test]
fn fixtures_open() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for name in [
        "llama",
        "qwen2",
        "qwen3",
        "gpt2",
        "llama-bf16",
        "llama-flax",
        "gpt2-flax",
        "qwen2-flax",
    ] {
        let ck = Checkpoint::open(root.join(name)).unwrap();
        assert!(!ck.tensors().is_empty(), "{name}");
        assert!(ck.config_text().is_some(), "{name}");
        for t in ck.tensors() {
            let v = ck.view(t).to_f32_vec().unwrap();
            assert_eq!(v.len(), t.numel());
            assert!(v.iter().all(|x| x.is_finite()), "{name}: {}", t.name);
        }
    }
}
