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
    // The error names the file; its source says what is wrong (as the binary prints them).
    let msg = orient_inspect::error::chain(&err);
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

#[test]
fn names_with_separators_are_refused_before_any_link_is_followed() {
    // A subfolder name is refused even when the file exists: the rule is about names.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write_st(&dir.path().join("sub/s.safetensors"), &["a"]);
    for bad in ["sub/s.safetensors", "./s.safetensors", ".", ".."] {
        write_index(dir.path(), &[("a", bad)]);
        let err = Checkpoint::open(dir.path()).unwrap_err();
        assert!(matches!(&err, Error::ShardEscapes { .. }), "{bad}: {err}");
    }
}

/// A file name in a snapshot, and how to write its blob.
#[cfg(unix)]
type FileMaker<'a> = (&'a str, &'a dyn Fn(&Path));

/// Builds `models--org--name/{blobs,snapshots/rev}` as the Hugging Face hub does: every
/// file of the snapshot a relative link to `../../blobs/<hash>`.
#[cfg(unix)]
fn hub_snapshot(files: &[FileMaker<'_>]) -> (tempfile::TempDir, std::path::PathBuf) {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--org--name");
    let blobs = repo.join("blobs");
    let snap = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for (i, (name, make)) in files.iter().enumerate() {
        let hash = format!("{i:040x}");
        make(&blobs.join(&hash));
        std::os::unix::fs::symlink(format!("../../blobs/{hash}"), snap.join(name)).unwrap();
    }
    (cache, snap)
}

#[cfg(unix)]
#[test]
fn hub_cache_snapshots_are_followed_single_and_sharded() {
    // Links anywhere are followed: the names are what is judged.
    let index = |p: &Path| {
        std::fs::write(
            p,
            r#"{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap()
    };
    let config = |p: &Path| std::fs::write(p, r#"{"model_type":"mystery"}"#).unwrap();
    let (_cache, snap) = hub_snapshot(&[
        ("model-00001-of-00002.safetensors", &|p: &Path| {
            write_st(p, &["a", "b"])
        }),
        ("model-00002-of-00002.safetensors", &|p: &Path| {
            write_st(p, &["c"])
        }),
        ("model.safetensors.index.json", &index),
        ("config.json", &config),
    ]);
    let ck = Checkpoint::open(&snap).unwrap();
    assert_eq!(ck.shards().len(), 2);
    assert_eq!(ck.tensors().len(), 3);
    assert_eq!(ck.view(ck.tensor("c").unwrap()).bytes, &[0, 0, 0, 0]);
    assert!(ck.config_text().is_some());
    assert!(ck.notes().is_empty());

    let (_cache, snap) = hub_snapshot(&[
        ("model.safetensors", &|p: &Path| write_st(p, &["w"])),
        ("config.json", &config),
    ]);
    for p in [snap.clone(), snap.join("model.safetensors")] {
        let ck = Checkpoint::open(&p).unwrap();
        assert_eq!(ck.tensors().len(), 1);
        assert!(ck.config_text().is_some(), "config.json beside the link");
    }
}

#[cfg(unix)]
#[test]
fn a_link_to_nothing_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("../../blobs/gone", dir.path().join("s.safetensors")).unwrap();
    write_index(dir.path(), &[("a", "s.safetensors")]);
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::NotRegularFile { kind, .. } if kind.contains("does not exist")),
        "{err}"
    );
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[cfg(unix)]
#[test]
fn fifos_are_refused_by_name_and_never_opened() {
    let is_fifo = |err: &Error, name: &str| matches!(err, Error::NotRegularFile { path, kind } if path.ends_with(name) && kind.contains("FIFO"));
    // A shard listed in an index.
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("s.safetensors"));
    write_index(dir.path(), &[("a", "s.safetensors")]);
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(is_fifo(&err, "s.safetensors"), "{err}");
    assert!(err.to_string().contains("FIFO"), "{err}");

    // model.safetensors alone, the folder's only file, a file passed directly, the
    // index, config.json.
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("model.safetensors"));
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(is_fifo(&err, "model.safetensors"), "{err}");
    let err = Checkpoint::open(dir.path().join("model.safetensors")).unwrap_err();
    assert!(is_fifo(&err, "model.safetensors"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("weights.safetensors"));
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(is_fifo(&err, "weights.safetensors"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("model.safetensors.index.json"));
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(is_fifo(&err, "model.safetensors.index.json"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("model.safetensors"), &["a"]);
    mkfifo(&dir.path().join("config.json"));
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(is_fifo(&err, "config.json"), "{err}");

    // A FIFO model.safetensors beside a valid index: transformers skips it (not a
    // file) and loads the index; so does orient, and says so.
    let dir = tempfile::tempdir().unwrap();
    mkfifo(&dir.path().join("model.safetensors"));
    write_st(&dir.path().join("s.safetensors"), &["a"]);
    write_index(dir.path(), &[("a", "s.safetensors")]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert!(matches!(
        ck.source(),
        orient_inspect::Source::Sharded { .. }
    ));
    assert!(matches!(
        ck.notes(),
        [orient_inspect::OpenNote::ModelFileIgnored { .. }]
    ));
}

#[test]
fn model_safetensors_wins_over_the_index_as_in_transformers() {
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("model.safetensors"), &["single"]);
    write_st(&dir.path().join("s.safetensors"), &["sharded"]);
    write_index(dir.path(), &[("sharded", "s.safetensors")]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert!(ck.tensor("single").is_some() && ck.tensor("sharded").is_none());
    assert_eq!(ck.source(), &orient_inspect::Source::SingleFile);
    let [note] = ck.notes() else {
        panic!("one note expected: {:?}", ck.notes())
    };
    let text = note.to_string();
    assert!(
        text.contains("model.safetensors.index.json") && text.contains("transformers"),
        "{text}"
    );
    // Naming the index reads the index, without a note.
    let ck = Checkpoint::open(dir.path().join("model.safetensors.index.json")).unwrap();
    assert!(ck.tensor("sharded").is_some());
    assert!(ck.notes().is_empty());
}

#[test]
fn duplicate_keys_in_the_index_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("s.safetensors"), &["a"]);
    let index = dir.path().join("model.safetensors.index.json");
    // The dropped entry would never be validated: it must not be dropped.
    for (text, first, second) in [
        (
            r#"{"weight_map":{"a":"../../etc/passwd","a":"s.safetensors"}}"#,
            "../../etc/passwd",
            "s.safetensors",
        ),
        (
            r#"{"weight_map":{"a":"s.safetensors","a":"s.safetensors"}}"#,
            "s.safetensors",
            "s.safetensors",
        ),
    ] {
        std::fs::write(&index, text).unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, Error::DuplicateInIndex { tensor, first: f, second: s, .. }
                if tensor == "a" && f == first && s == second),
            "{err}"
        );
        assert!(err.to_string().contains("more than once"), "{err}");
    }
    for text in [
        r#"{"weight_map":{"a":"s.safetensors"},"weight_map":{"a":"s.safetensors"}}"#,
        r#"{"metadata":{"k":"1","k":"2"},"weight_map":{"a":"s.safetensors"}}"#,
    ] {
        std::fs::write(&index, text).unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err();
        assert!(matches!(&err, Error::InvalidIndex { .. }), "{text}: {err}");
    }
    std::fs::write(&index, r#"{"weight_map":{"a":"s.safetensors"}}"#).unwrap();
    assert!(Checkpoint::open(dir.path()).is_ok());
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

/// A file of one F32 tensor of `n` values `0, 1, 2, …`, with a header padded so that
/// the data starts on a page boundary.
fn write_f32_file(path: &Path, n: usize) {
    let mut header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        n * 4
    );
    while (header.len() + 8) % 4096 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for i in 0..n {
        bytes.extend_from_slice(&(i as f32).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_file_truncated_while_mapped_is_an_error_not_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    write_f32_file(&p, 16 * 1024); // 64 KiB of data, 16 pages
    let ck = Checkpoint::open(&p).unwrap();
    ck.check_intact().unwrap();
    let t = ck.tensor("w").unwrap();
    ck.check_tensor(t).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(4096 + 4096)
        .unwrap();
    // Reading past the new end would raise SIGBUS; here it reads zeros...
    let v = ck.view(t).to_f32_vec().unwrap();
    assert_eq!(v[1], 1.0);
    assert!(v[2048..].iter().all(|&x| x == 0.0));
    // ...and the checkpoint says which file changed.
    for err in [
        ck.check_intact().unwrap_err(),
        ck.check_tensor(t).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Changed { path, change: orient_inspect::FileChange::Resized { now: 8192, .. } } if path == &p),
            "{err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    // Grown back to the same length: the fault is still remembered.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(ck.shards()[0].file_len() as u64)
        .unwrap();
    assert!(matches!(
        ck.check_intact(),
        Err(Error::Changed {
            change: orient_inspect::FileChange::PagesVanished { .. },
            ..
        })
    ));
}

#[test]
fn a_file_rewritten_in_place_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    write_f32_file(&p, 1024);
    let ck = Checkpoint::open(&p).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let err = ck.check_intact().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Changed {
                change: orient_inspect::FileChange::Modified,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn too_many_tensors_are_refused_while_parsing() {
    use orient_inspect::header::MAX_TENSORS;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("many.safetensors");
    let entry = |i: usize| format!(r#""t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#);
    let write = |n: usize, meta: bool| {
        let mut header = String::from("{");
        if meta {
            header.push_str(r#""__metadata__":{"format":"pt"},"#);
        }
        header.push_str(&(0..n).map(entry).collect::<Vec<_>>().join(","));
        header.push('}');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        std::fs::write(&p, bytes).unwrap();
    };
    write(MAX_TENSORS + 1, false);
    let err = Checkpoint::open(&p).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Header {
                source: HeaderError::TooManyTensors { max: MAX_TENSORS },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("many.safetensors"), "{err}");
    write(MAX_TENSORS, true);
    assert_eq!(Checkpoint::open(&p).unwrap().tensors().len(), MAX_TENSORS);
}
