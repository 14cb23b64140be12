//! The staging folder: every output file is written into a hidden folder next to the
//! destination (same parent, hence same filesystem), each shard is re-read and checked after
//! writing, and only then is the folder renamed onto the destination in one step. Any error,
//! including a full disk, drops the staging folder and leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::layout::{Layout, ShardPlan};
use super::sink::{self, produce_all, StreamMode, TensorSink, DEFAULT_BUFFER_BYTES};
use crate::destination::{self, Destination, OwnedDir};
use crate::error::{io, Error, Result};

/// A hidden folder next to the destination that receives every output file and becomes
/// the destination with one rename in [`Staging::commit`]. Dropped without a commit,
/// it deletes itself and everything in it; a signal or the next run to the same
/// destination removes it when its process cannot (see [`crate::destination`]).
#[derive(Debug)]
pub struct Staging {
    dst: Destination,
    dir: OwnedDir,
    sync: bool,
    /// Durable shards are written with direct I/O where possible (see [`StreamMode`]).
    direct: bool,
    /// Shards are hashed as they are written.
    hash: bool,
    /// What was written: file name → (length, XXH3-128 when hashed).
    written: Mutex<BTreeMap<String, FileDigest>>,
}

/// One file written into the staging folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    /// Its length in bytes.
    pub len: u64,
    /// Its XXH3-128, when the staging hashes ([`Staging::hashing`]).
    pub hash: Option<u128>,
    /// True when its bytes went to the disk by direct I/O.
    pub direct: bool,
}

impl Staging {
    /// Creates the staging folder in `dst`'s parent. With `sync`, every file and the
    /// folder are fsynced before the final rename, and shards are written by direct I/O
    /// where the filesystem allows it.
    pub fn create(dst: &Path, sync: bool) -> Result<Staging> {
        let dst = Destination::resolve(dst)?;
        let dir = OwnedDir::create(&dst.parent, &dst.name)?;
        Ok(Staging::new(dst, dir, sync))
    }

    /// A staging folder in `dir` (already created and owned) for `dst`.
    pub(crate) fn new(dst: Destination, dir: OwnedDir, sync: bool) -> Staging {
        Staging {
            dst,
            dir,
            sync,
            direct: sync,
            hash: false,
            written: Mutex::new(BTreeMap::new()),
        }
    }

    /// Writes through the page cache even when syncing (no direct I/O).
    pub fn buffered(mut self) -> Staging {
        self.direct = false;
        self
    }

    /// Hashes every shard as it is written ([`Staging::written`]).
    pub fn hashing(mut self) -> Staging {
        self.hash = true;
        self
    }

    /// The shards written so far, by file name.
    pub fn written(&self) -> BTreeMap<String, FileDigest> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The staging folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes one shard of `layout`: the header, then every tensor's bytes as produced by
    /// `produce(index, sink)`, then (with sync) an fsync, then a re-read check of the
    /// header and length. `progress` is told about every chunk of bytes written.
    /// Buffers are [`DEFAULT_BUFFER_BYTES`] long; see [`Staging::write_shard_with`].
    pub fn write_shard(
        &self,
        layout: &Layout,
        shard: usize,
        produce: &mut dyn FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        self.write_shard_with(layout, shard, DEFAULT_BUFFER_BYTES, produce, progress)
    }

    /// [`Staging::write_shard`] with write buffers of `buffer_bytes` each.
    ///
    /// The bytes are written by a separate thread: the producer fills one of
    /// [`WRITE_BUFFERS`](super::WRITE_BUFFERS) buffers (transposing or casting straight
    /// into it, see [`TensorSink::fill_with`]) while the writer thread copies the previous
    /// ones into the file, so computation and the kernel's copy into the page cache overlap.
    /// Memory stays bounded by `WRITE_BUFFERS × buffer_bytes`.
    pub fn write_shard_with(
        &self,
        layout: &Layout,
        shard: usize,
        buffer_bytes: usize,
        produce: &mut dyn FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        let plan = layout.shards.get(shard).ok_or_else(|| Error::Validation {
            path: self.dir().to_path_buf(),
            problem: format!("no shard number {shard}"),
        })?;
        let path = self.dir().join(&plan.file_name);
        let file = File::create(&path).map_err(io("create", &path))?;
        let mode = StreamMode {
            sequential: self.direct || self.hash,
            direct: self.direct,
            hash: self.hash,
            writeback: self.sync,
        };
        let done = sink::stream(file, &path, &plan.header, buffer_bytes, mode, |pipe| {
            produce_all(layout, plan, pipe, produce, progress)
        })?;
        if self.sync {
            done.file.sync_all().map_err(io("fsync", &path))?;
        }
        drop(done.file);
        validate(&path, plan)?;
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                plan.file_name.clone(),
                FileDigest {
                    len: plan.file_len(),
                    hash: done.hash,
                    direct: done.direct,
                },
            );
        Ok(())
    }

    /// Writes a small file (index, config) into the staging folder.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir().join(name);
        let mut f = File::create(&path).map_err(io("create", &path))?;
        f.write_all(bytes).map_err(io("write", &path))?;
        if self.sync {
            f.sync_all().map_err(io("fsync", &path))?;
        }
        Ok(())
    }

    /// Puts the finished file `src` into the staging folder under `name`: a hard link
    /// (no byte is copied, and `src` stays whole), or a copy where the filesystem has no
    /// hard links.
    pub fn link_file(&self, src: &Path, name: &str) -> Result<()> {
        let path = self.dir().join(name);
        if std::fs::hard_link(src, &path).is_ok() {
            return Ok(());
        }
        std::fs::copy(src, &path).map_err(io("copy", src))?;
        if self.sync {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io("fsync", &path))?;
        }
        Ok(())
    }

    /// Copies `src` into the staging folder under `name`.
    pub fn copy_file(&self, src: &Path, name: &str) -> Result<()> {
        let bytes = std::fs::read(src).map_err(io("read", src))?;
        self.write_file(name, &bytes)
    }

    /// Renames the staging folder onto the destination. With `replace`, an existing
    /// destination that holds only a previous checkpoint is first moved aside and removed
    /// only after the rename succeeded; without it, an existing destination is an error.
    /// Returns the destination as it was given.
    pub fn commit(self, replace: bool) -> Result<PathBuf> {
        if self.sync {
            let d = File::open(self.dir()).map_err(io("open", self.dir()))?;
            d.sync_all().map_err(io("fsync", self.dir()))?;
        }
        destination::commit(self.dir, &self.dst, replace, self.sync)?;
        Ok(self.dst.given)
    }
}

/// Re-reads the header of a written shard and checks that it is exactly the planned one,
/// parses as JSON with contiguous offsets, and that the file has the planned length.
fn validate(path: &Path, plan: &ShardPlan) -> Result<()> {
    let fail = |problem: String| Error::Validation {
        path: path.to_path_buf(),
        problem,
    };
    let mut f = File::open(path).map_err(io("re-open", path))?;
    let len = f.metadata().map_err(io("stat", path))?.len();
    if len != plan.file_len() {
        return Err(fail(format!(
            "file is {len} bytes, expected {}",
            plan.file_len()
        )));
    }
    let mut prefix = [0u8; 8];
    f.read_exact(&mut prefix).map_err(io("re-read", path))?;
    let n = u64::from_le_bytes(prefix);
    if n.checked_add(8) != Some(plan.header.len() as u64) {
        return Err(fail(format!(
            "header length {n} differs from the planned one"
        )));
    }
    let mut header = vec![0u8; plan.header.len() - 8];
    f.read_exact(&mut header).map_err(io("re-read", path))?;
    if header != plan.header[8..] {
        return Err(fail("header bytes differ from the planned header".into()));
    }
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| fail(format!("header is not JSON: {e}")))?;
    let mut ranges: Vec<(u64, u64)> = parsed
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| {
            let o = v.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?))
        })
        .collect();
    ranges.sort_unstable();
    let mut at = 0u64;
    for (a, b) in ranges {
        if a != at || b < a {
            return Err(fail(format!(
                "data offsets are not contiguous at byte {at}"
            )));
        }
        at = b;
    }
    if at != plan.data_len {
        return Err(fail(format!(
            "data offsets end at {at}, expected {}",
            plan.data_len
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::writer::{OutTensor, DEFAULT_MAX_SHARD_SIZE, INDEX_FILE, SINGLE_FILE};

    fn t(name: &str, dtype: &str, shape: &[usize], esize: u64) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
            nbytes: shape.iter().product::<usize>() as u64 * esize,
        }
    }

    fn fill(layout: &Layout) -> impl FnMut(usize, &mut TensorSink<'_>) -> Result<()> + '_ {
        move |i, sink| {
            let n = layout.tensors[i].nbytes as usize;
            let bytes: Vec<u8> = (0..n).map(|k| (k as u8).wrapping_add(i as u8)).collect();
            // Write in two pieces to exercise chunked production.
            sink.write(&bytes[..n / 2])?;
            sink.write(&bytes[n / 2..])
        }
    }

    #[test]
    fn single_file_round_trips_through_the_safetensors_crate() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let tensors = vec![
            t("b.weight", "F32", &[3, 5], 4),
            t("a.bias", "BF16", &[7], 2),
            t("c", "I64", &[2], 8),
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let layout = Layout::new(tensors, &meta, DEFAULT_MAX_SHARD_SIZE).unwrap();
        assert_eq!(layout.shards.len(), 1);
        assert_eq!(layout.index_json(), None);
        assert_eq!(layout.shards[0].header.len() % 8, 0);
        let staging = Staging::create(&dst, true).unwrap();
        let mut written = 0u64;
        staging
            .write_shard(&layout, 0, &mut fill(&layout), &mut |n| written += n)
            .unwrap();
        assert_eq!(written, 3 * 5 * 4 + 7 * 2 + 16);
        staging.commit(false).unwrap();

        let bytes = std::fs::read(dst.join(SINGLE_FILE)).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        assert_eq!(names, ["a.bias", "b.weight", "c"]);
        let b = st.tensor("b.weight").unwrap();
        assert_eq!(b.shape(), &[3, 5]);
        assert_eq!(b.dtype(), safetensors::Dtype::F32);
        // Tensor index 1 (sorted) is b.weight: bytes k + 1.
        let want: Vec<u8> = (0..60u8).map(|k| k.wrapping_add(1)).collect();
        assert_eq!(b.data(), &want[..]);
        // No staging folder left behind.
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn sharding_writes_an_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let tensors = (0..5)
            .map(|k| t(&format!("t{k}"), "F32", &[10], 4))
            .collect();
        let layout = Layout::new(tensors, &BTreeMap::new(), 100).unwrap();
        // 40 bytes each, 100 max: [t0 t1] [t2 t3] [t4]
        assert_eq!(layout.shards.len(), 3);
        assert_eq!(
            layout.shards[2].file_name,
            "model-00003-of-00003.safetensors"
        );
        let staging = Staging::create(&dst, false).unwrap();
        for s in 0..3 {
            staging
                .write_shard(&layout, s, &mut fill(&layout), &mut |_| {})
                .unwrap();
        }
        staging
            .write_file(INDEX_FILE, layout.index_json().unwrap().as_bytes())
            .unwrap();
        staging.commit(false).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dst.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index["metadata"]["total_size"], 200);
        assert_eq!(
            index["weight_map"]["t3"],
            "model-00002-of-00003.safetensors"
        );
        for s in &layout.shards {
            let bytes = std::fs::read(dst.join(&s.file_name)).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(st.len(), s.tensors.len());
        }
    }

    #[test]
    fn a_failing_producer_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        let layout = Layout::new(vec![t("x", "F32", &[4], 4)], &BTreeMap::new(), u64::MAX).unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        // Too few bytes.
        let err = staging
            .write_shard(&layout, 0, &mut |_, s| s.write(&[0u8; 8]), &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(err, Error::ProducerShort { written: 8, .. }),
            "{err}"
        );
        // Too many bytes.
        let err = staging
            .write_shard(&layout, 0, &mut |_, s| s.write(&[0u8; 20]), &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, Error::ProducerOverrun { .. }), "{err}");
        drop(staging);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn commit_refuses_or_replaces_an_existing_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(dst.join(SINGLE_FILE), b"old").unwrap();
        std::fs::write(dst.join("config.json"), b"{}").unwrap();
        let layout = Layout::new(vec![], &BTreeMap::new(), u64::MAX).unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        staging
            .write_shard(&layout, 0, &mut |_, _| Ok(()), &mut |_| {})
            .unwrap();
        let err = staging.commit(false).unwrap_err();
        assert!(matches!(err, Error::DestinationExists(_)));
        // The staging folder was dropped with the error: only `out` remains.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

        let staging = Staging::create(&dst, false).unwrap();
        staging
            .write_shard(&layout, 0, &mut |_, _| Ok(()), &mut |_| {})
            .unwrap();
        staging.commit(true).unwrap();
        assert_ne!(std::fs::read(dst.join(SINGLE_FILE)).unwrap(), b"old");
        assert!(!dst.join("config.json").exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

        // Not a previous checkpoint: refused even with replace, and nothing is lost.
        std::fs::write(dst.join("old.txt"), b"mine").unwrap();
        let staging = Staging::create(&dst, false).unwrap();
        staging
            .write_shard(&layout, 0, &mut |_, _| Ok(()), &mut |_| {})
            .unwrap();
        let err = staging.commit(true).unwrap_err();
        assert!(
            matches!(err, Error::DestinationNotReplaceable { .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(dst.join("old.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn parent_must_be_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = Staging::create(&file.join("out"), false).unwrap_err();
        assert!(matches!(err, Error::DestinationUnusable { .. }), "{err}");
        assert!(err.to_string().contains("is not a folder"), "{err}");
    }
}
