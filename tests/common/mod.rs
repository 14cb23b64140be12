//! Helpers shared by the integration tests: each test binary that says `mod common;` compiles
//! them, and uses the ones it needs.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orient_inspect::Checkpoint;

/// `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The `orient` binary of this build.
pub fn orient() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("orient").unwrap()
}

/// Every tensor as (dtype, shape, bytes), by name.
pub type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

/// The tensors of the checkpoint at `path`.
pub fn tensors(path: &Path) -> Tensors {
    let ck = Checkpoint::open(path).unwrap();
    ck.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (
                    t.dtype.name().to_string(),
                    t.shape.clone(),
                    ck.view(t).bytes.to_vec(),
                ),
            )
        })
        .collect()
}

/// Same names, and for each name the same dtype, shape and bytes.
#[track_caller]
pub fn assert_same_tensors(got: &Path, want: &Path) {
    let (g, w) = (tensors(got), tensors(want));
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "{} vs {}",
        got.display(),
        want.display()
    );
    for (name, x) in &w {
        assert_eq!(g[name].0, x.0, "{name}: dtype");
        assert_eq!(g[name].1, x.1, "{name}: shape");
        assert!(
            g[name].2 == x.2,
            "{name}: bytes differ between {} and {}",
            got.display(),
            want.display()
        );
    }
}

/// Nothing but `keep` in `dir`: no staging folders, no partial output.
#[track_caller]
pub fn assert_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "leftovers in {}", dir.display());
}
