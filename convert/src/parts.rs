//! A conversion cut into parts that run anywhere (`--part I/N`), and the step that puts
//! them together (`--finish`).
//!
//! Why this shape: a 400B-class checkpoint is 0.8 TB; one machine converts it in tens of
//! minutes, a cluster in a few, but orient is not a scheduler. So a conversion is made
//! *partitionable*: every part is an ordinary process that an existing engine starts
//! (a Slurm job array, a Kubernetes Indexed Job, GNU parallel), and the parts share
//! nothing but a filesystem.
//! - **Deterministic.** The plan, the output files (tensor order, shards, headers) and the
//!   assignment of shards to parts are pure functions of the source and the options
//!   ([`assign`]): every part computes the same ones, and so does a single `orient convert`,
//!   whose output is therefore byte for byte the finished one. A part writes whole shards
//!   (no file is written by two processes), contiguous runs of them balanced by bytes.
//! - **A staging area beside the destination**, `DST.orient-parts/`, with one folder per
//!   finished part, `part-0000I-of-0000N/`: its shards and a manifest, [`MANIFEST_FILE`],
//!   naming the job (the producer, the source files' sizes, modification times and header
//!   hashes, the options, a hash of the plan), the part, and every file's length and
//!   XXH3-128 (computed as the file was written, see [`crate::writer::StreamMode`]). A part
//!   is staged like any output (`.part-….orient-tmp-*`, owner record, removed by a signal or
//!   by the next run of that part, see [`crate::destination`]) and appears by one rename.
//! - **`--finish`** recomputes the plan from the same source and options, reads every
//!   manifest and refuses, naming each part: a missing one, a duplicated one (two folders
//!   claiming it), a stale one (another source, other options, another partition or
//!   another orient), one still being written, and a corrupt one (damaged manifest, a
//!   file missing, truncated, with another header, or whose contents no longer hash to
//!   what the part wrote: every byte is read again). Only then does it link the shards
//!   into a staging folder beside the destination, add the index and the config and
//!   tokenizer files, and rename that folder onto the destination: it appears at once,
//!   whole, or not at all; the parts are removed afterwards.
//!
//! XXH3-128 (not a cryptographic hash) is there to catch accidents (a truncated copy, a
//! flipped bit, a part of another run), not an adversary who can write the staging area.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use orient_inspect::Checkpoint;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

use crate::buffer::Buffer;
use crate::convert::{copy_companions, Outcome, WriteOptions};
use crate::destination::{self, check_overwrite, Destination, StaleStaging, StaleState};
use crate::engine::{self, TensorOp, Written};
use crate::error::{io, Error, Result};
use crate::plan::Plan;
use crate::writer::{Layout, Staging, DEFAULT_MAX_SHARD_SIZE, INDEX_FILE};

/// Suffix of the staging area beside the destination (`DST.orient-parts`).
pub const AREA_SUFFIX: &str = ".orient-parts";
/// The manifest in every finished part's folder.
pub const MANIFEST_FILE: &str = "orient-part.json";
/// Version of the manifest format.
const FORMAT: u32 = 1;
/// Most parts a conversion may be cut into (the folder names have five digits).
pub const MAX_PARTS: usize = 99_999;
/// Bytes read at a time when `--finish` hashes a file.
const READ_CHUNK: usize = 8 << 20;

/// Part `index` of `count` (1-based), as `--part I/N` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartSpec {
    /// Which part, from 1.
    pub index: usize,
    /// How many parts in all.
    pub count: usize,
}

impl PartSpec {
    /// Parses `I/N` with `1 ≤ I ≤ N ≤` [`MAX_PARTS`].
    pub fn parse(text: &str) -> std::result::Result<PartSpec, PartError> {
        let bad = || PartError::Spec(text.to_string());
        let (i, n) = text.trim().split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count || count > MAX_PARTS {
            return Err(bad());
        }
        Ok(PartSpec { index, count })
    }

    /// The part's folder in the staging area, `part-00003-of-00016`.
    pub fn folder(&self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }

    /// Reads a folder name back (only the exact form [`PartSpec::folder`] writes).
    fn from_folder(name: &str) -> Option<PartSpec> {
        let rest = name.strip_prefix("part-")?;
        let (i, n) = rest.split_once("-of-")?;
        let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(i) || !digits(n) {
            return None;
        }
        let spec = PartSpec {
            index: i.parse().ok()?,
            count: n.parse().ok()?,
        };
        (spec.index >= 1 && spec.index <= spec.count).then_some(spec)
    }
}

impl fmt::Display for PartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shards (indices into `layout.shards`) each of `count` parts writes: contiguous
/// runs in file order, balanced by bytes. Shard `k` goes to the part whose share of the
/// total bytes holds the shard's midpoint, so every part gets about `total / count`
/// (give or take half a shard), and parts past the number of shards get none.
pub fn assign(layout: &Layout, count: usize) -> Vec<Vec<usize>> {
    let count = count.max(1);
    let sizes: Vec<u128> = layout.shards.iter().map(|s| s.file_len() as u128).collect();
    let total: u128 = sizes.iter().sum();
    let mut parts = vec![Vec::new(); count];
    let mut before = 0u128;
    for (k, &size) in sizes.iter().enumerate() {
        let p = if total == 0 {
            0
        } else {
            (((2 * before + size) * count as u128) / (2 * total)) as usize
        };
        parts[p.min(count - 1)].push(k);
        before += size;
    }
    parts
}

/// One source file as the job records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Its name in the source folder.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its modification time, `SECONDS.NANOSECONDS` since the Unix epoch.
    pub modified: String,
    /// XXH3-128 of its header (length prefix and JSON), in hex.
    pub header_xxh3: String,
}

/// What every part and `--finish` must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The program that writes the parts (`orient 0.1.0 (abc1234)`): another build may
    /// write other bytes.
    pub producer: String,
    /// The source files.
    pub source: Vec<SourceFile>,
    /// The options, by flag, as the user gave them (for messages; the plan hash is what
    /// catches every difference in effect).
    pub options: BTreeMap<String, String>,
    /// XXH3-128 of the plan (every output tensor's name, dtype, shape, view and chain) and
    /// of the output files (names, headers, index), in hex.
    pub plan_xxh3: String,
    /// Parts in all.
    pub parts: usize,
}

impl Job {
    /// The job of converting `ckpt` by `plan` into `layout`, cut into `parts`. `options`
    /// holds the flags as given (`--to`, `--dtype`, …) and `producer` names the program.
    pub fn new(
        ckpt: &Checkpoint,
        plan: &Plan,
        layout: &Layout,
        options: BTreeMap<String, String>,
        producer: &str,
        parts: usize,
    ) -> Result<Job> {
        let mut source = Vec::with_capacity(ckpt.shards().len());
        for shard in ckpt.shards() {
            let meta = shard.file().metadata().map_err(io("stat", &shard.path))?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
                .unwrap_or_else(|| "unknown".into());
            let n = shard
                .header_len
                .checked_add(8)
                .ok_or_else(|| Error::SizeOverflow(shard.path.display().to_string()))?;
            let mut header = vec![0u8; n]; // [8 + header_len] bytes of the file's start
            shard
                .file()
                .read_exact_at(&mut header, 0)
                .map_err(io("read", &shard.path))?;
            source.push(SourceFile {
                name: shard
                    .path
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                len: meta.len(),
                modified,
                header_xxh3: hex(xxh3_128(&header)),
            });
        }
        Ok(Job {
            producer: producer.to_string(),
            source,
            options,
            plan_xxh3: hex(plan_hash(&plan.ops, layout)),
            parts,
        })
    }

    /// What makes `other` (a part's record) a different job than this one, in words.
    pub fn difference(&self, other: &Job) -> Option<String> {
        if self.parts != other.parts {
            return Some(format!(
                "it belongs to a partition into {} parts, not {}",
                other.parts, self.parts
            ));
        }
        if self.producer != other.producer {
            return Some(format!(
                "it was written by {}, this is {}",
                other.producer, self.producer
            ));
        }
        if self.source != other.source {
            let theirs: BTreeMap<&str, &SourceFile> =
                other.source.iter().map(|s| (s.name.as_str(), s)).collect();
            for s in &self.source {
                let Some(t) = theirs.get(s.name.as_str()) else {
                    return Some(format!("the source had no {} then", s.name));
                };
                let what = if t.len != s.len {
                    format!("{} bytes then, {} now", t.len, s.len)
                } else if t.header_xxh3 != s.header_xxh3 {
                    "another header then".to_string()
                } else if t.modified != s.modified {
                    format!("modified at {} then, {} now", t.modified, s.modified)
                } else {
                    continue;
                };
                return Some(format!("the source changed since: {}: {what}", s.name));
            }
            return Some("the source had other files then".into());
        }
        if self.options != other.options {
            let keys: BTreeSet<&String> = self.options.keys().chain(other.options.keys()).collect();
            for k in keys {
                let (a, b) = (other.options.get(k), self.options.get(k));
                if a != b {
                    let show =
                        |v: Option<&String>| v.map_or("(not given)".to_string(), |v| v.clone());
                    return Some(format!("{k} was {} then, {} now", show(a), show(b)));
                }
            }
        }
        if self.plan_xxh3 != other.plan_xxh3 {
            return Some(
                "its plan differs (another layout file, or other options in effect)".into(),
            );
        }
        None
    }
}

/// XXH3-128 of everything that decides the output's bytes: the ops in plan order and the
/// output files.
fn plan_hash(ops: &[TensorOp], layout: &Layout) -> u128 {
    let mut h = Xxh3::new();
    for op in ops {
        let line = format!(
            "{}\t{}\t{:?}\t{:?}\t{}\t{}\t{:?}\n",
            op.target,
            op.target_dtype.name(),
            op.target_shape,
            op.view,
            op.chain_text(),
            op.tied,
            op.sources
                .iter()
                .map(|s| (&s.name, &s.shape, s.dtype.name()))
                .collect::<Vec<_>>()
        );
        h.update(line.as_bytes());
    }
    for s in &layout.shards {
        h.update(s.file_name.as_bytes());
        h.update(&s.header);
    }
    if let Some(index) = layout.index_json() {
        h.update(index.as_bytes());
    }
    h.digest128()
}

fn hex(x: u128) -> String {
    format!("{x:032x}")
}

/// One file of a part, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name (a shard of the output).
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// XXH3-128 of its bytes as the part wrote them, in hex.
    pub xxh3: String,
}

/// The record of a finished part ([`MANIFEST_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Which part (1-based).
    pub part: usize,
    /// The job it belongs to.
    pub job: Job,
    /// The files it wrote.
    pub files: Vec<ManifestFile>,
    /// XXH3-128 of this manifest with this field empty, in hex: a damaged manifest is
    /// refused rather than believed.
    pub checksum: String,
}

impl Manifest {
    fn sealed(mut self) -> Result<Manifest> {
        self.checksum = String::new();
        self.checksum = hex(xxh3_128(&self.body()?));
        Ok(self)
    }

    fn body(&self) -> Result<Vec<u8>> {
        let mut copy = self.clone();
        copy.checksum = String::new();
        serde_json::to_vec(&copy).map_err(|e| Error::Validation {
            path: PathBuf::from(MANIFEST_FILE),
            problem: e.to_string(),
        })
    }

    fn intact(&self) -> bool {
        self.body()
            .is_ok_and(|b| hex(xxh3_128(&b)) == self.checksum)
    }

    /// Reads the manifest in `folder`, or says what is wrong with it.
    fn read(folder: &Path) -> std::result::Result<Manifest, String> {
        let path = folder.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(format!("it has no {MANIFEST_FILE}"))
            }
            Err(e) => return Err(format!("cannot read its {MANIFEST_FILE}: {e}")),
        };
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| format!("its {MANIFEST_FILE} is damaged ({e})"))?;
        if m.format != FORMAT {
            return Err(format!(
                "its {MANIFEST_FILE} has format {}, this orient reads {FORMAT}",
                m.format
            ));
        }
        if !m.intact() {
            return Err(format!("its {MANIFEST_FILE} is damaged (checksum)"));
        }
        Ok(m)
    }
}

/// The staging area of `dst`: `NAME.orient-parts` beside it.
pub fn area_of(dst: &Destination) -> PathBuf {
    let mut name = dst.name.clone();
    name.push(AREA_SUFFIX);
    dst.parent.join(name)
}

/// Why `--part` or `--finish` refuses.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    /// `--part` is not `I/N`.
    #[error("--part {0:?}: expected I/N with 1 ≤ I ≤ N ≤ 99999, e.g. 3/8")]
    Spec(String),
    /// `--finish` found no staging area.
    #[error("{}: no parts to finish; run `orient convert SRC DST --part I/N` for every I first", area.display())]
    NoParts {
        /// The staging area that does not exist.
        area: PathBuf,
    },
    /// The staging area is not a plain folder.
    #[error("{}: the staging area of the parts is not a folder (a file or a symbolic link); move it away", area.display())]
    NotAFolder {
        /// The staging area.
        area: PathBuf,
    },
    /// A part's folder exists for another job.
    #[error("{}: part {part} is already there, written for another conversion: {why}; pass --force to write it again", folder.display())]
    Exists {
        /// The part.
        part: PartSpec,
        /// Its folder.
        folder: PathBuf,
        /// What differs.
        why: String,
    },
    /// `--finish` refuses the parts it found.
    #[error("{}: cannot finish: {}\n{}\nnothing was written to the destination; fix these parts (run a part again with --force to replace it), then --finish again", area.display(), summary(problems), lines(problems))]
    Refused {
        /// The staging area.
        area: PathBuf,
        /// Every problem found, by part.
        problems: Vec<Problem>,
    },
}

/// One reason `--finish` refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The part (`2/4`), when one is concerned.
    pub part: Option<PartSpec>,
    /// The folder or entry of the staging area concerned.
    pub entry: String,
    /// In words.
    pub detail: String,
}

/// The kinds of [`Problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// No folder holds the part.
    Missing,
    /// Two folders claim the part.
    Duplicated,
    /// Written for another job (source, options, partition, program).
    Stale,
    /// Still being written by a live process.
    Running,
    /// Its manifest or files are damaged.
    Corrupt,
    /// Something in the staging area that is no part.
    Unexpected,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Missing => "missing",
            ProblemKind::Duplicated => "duplicated",
            ProblemKind::Stale => "stale",
            ProblemKind::Running => "still running",
            ProblemKind::Corrupt => "corrupt",
            ProblemKind::Unexpected => "unexpected",
        })
    }
}

fn summary(problems: &[Problem]) -> String {
    let mut counts: BTreeMap<ProblemKind, usize> = BTreeMap::new();
    for p in problems {
        *counts.entry(p.kind).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            let part = p.part.map(|s| format!("part {s} ")).unwrap_or_default();
            format!("  {part}({}): {}: {}", p.entry, p.kind, p.detail)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a part run did.
#[derive(Debug, Clone)]
pub struct PartOutcome {
    /// The part.
    pub spec: PartSpec,
    /// Its folder in the staging area.
    pub folder: PathBuf,
    /// The shard files it holds.
    pub files: Vec<String>,
    /// What was written; `None` when an identical part was already there.
    pub written: Option<Written>,
}

/// Which shards and tensors a part writes (for `--dry-run --part`).
#[derive(Debug, Clone)]
pub struct PartPlan {
    /// The part.
    pub spec: PartSpec,
    /// Its shards: file name, bytes, tensor names.
    pub shards: Vec<(String, u64, Vec<String>)>,
    /// Shards of the whole output.
    pub total_shards: usize,
    /// Bytes of the whole output.
    pub total_bytes: u64,
}

/// The output files of `plan` with `opts`.
pub fn layout(plan: &Plan, opts: &WriteOptions) -> Result<Layout> {
    engine::layout_of(
        &plan.ops,
        &plan.metadata,
        opts.max_shard_size.unwrap_or(DEFAULT_MAX_SHARD_SIZE),
    )
}

/// The shards and tensors part `spec` writes.
pub fn part_plan(layout: &Layout, spec: PartSpec) -> PartPlan {
    let mine = assign(layout, spec.count)
        .into_iter()
        .nth(spec.index - 1)
        .unwrap_or_default();
    PartPlan {
        spec,
        shards: mine
            .iter()
            .map(|&k| {
                let s = &layout.shards[k];
                (
                    s.file_name.clone(),
                    s.file_len(),
                    s.tensors
                        .iter()
                        .map(|&i| layout.tensors[i].name.clone())
                        .collect(),
                )
            })
            .collect(),
        total_shards: layout.shards.len(),
        total_bytes: layout.shards.iter().map(|s| s.file_len()).sum(),
    }
}

/// Staging folders that dead runs of part `spec` left in the staging area of `dst`
/// (removed) or that live ones hold, as [`destination::sweep_stale`] reports them.
pub fn sweep_part(dst: &Path, spec: PartSpec) -> Result<Vec<StaleStaging>> {
    let dst = Destination::resolve(dst)?;
    let area = area_of(&dst);
    if !area.is_dir() {
        return Ok(Vec::new());
    }
    destination::sweep_stale(&Destination::resolve(&area.join(spec.folder()))?)
}

/// Writes part `spec` of converting `ckpt` by `plan` into the staging area of `dst`:
/// its shards, hashed as written, and its manifest, in a staging folder renamed into
/// place when complete. A folder of the same part and job already there is kept
/// (`written: None`) unless `opts.force`; one of another job is refused unless
/// `opts.force`. An existing destination is refused unless `opts.force` (`--finish`
/// replaces it).
pub fn write_part(
    ckpt: &Checkpoint,
    plan: &Plan,
    dst: &Path,
    opts: &WriteOptions,
    job: &Job,
    spec: PartSpec,
    progress: &mut dyn FnMut(u64),
) -> Result<PartOutcome> {
    let target = Destination::resolve(dst)?;
    check_overwrite(&target, opts.force)?;
    let layout = layout(plan, opts)?;
    let area = area_of(&target);
    make_area(&area)?;
    let folder = area.join(spec.folder());
    let mine = assign(&layout, spec.count)
        .into_iter()
        .nth(spec.index - 1)
        .unwrap_or_default();
    let files: Vec<String> = mine
        .iter()
        .map(|&k| layout.shards[k].file_name.clone())
        .collect();
    if folder.symlink_metadata().is_ok() && !opts.force {
        match Manifest::read(&folder) {
            Ok(m) if m.part == spec.index && job.difference(&m.job).is_none() => {
                return Ok(PartOutcome {
                    spec,
                    folder,
                    files,
                    written: None,
                })
            }
            Ok(m) => {
                return Err(PartError::Exists {
                    part: spec,
                    folder,
                    why: job
                        .difference(&m.job)
                        .unwrap_or_else(|| format!("its manifest says part {}", m.part)),
                }
                .into())
            }
            Err(why) => {
                return Err(PartError::Exists {
                    part: spec,
                    folder,
                    why,
                }
                .into())
            }
        }
    }
    let staging = Staging::create(&folder, opts.sync)?.hashing();
    let staging = if opts.direct {
        staging
    } else {
        staging.buffered()
    };
    let written = engine::write_shards(
        ckpt,
        &plan.ops,
        &layout,
        &mine,
        &opts.tiling,
        &staging,
        progress,
    )?;
    let digests = staging.written();
    let mut listed = Vec::with_capacity(files.len());
    for name in &files {
        let d = digests
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.clone()))?;
        let hash = d.hash.ok_or_else(|| Error::Validation {
            path: staging.dir().join(name),
            problem: "the shard was not hashed".into(),
        })?;
        listed.push(ManifestFile {
            name: name.clone(),
            len: d.len,
            xxh3: hex(hash),
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        part: spec.index,
        job: job.clone(),
        files: listed,
        checksum: String::new(),
    }
    .sealed()?;
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Validation {
        path: staging.dir().join(MANIFEST_FILE),
        problem: e.to_string(),
    })?;
    staging.write_file(MANIFEST_FILE, (text + "\n").as_bytes())?;
    staging.commit(opts.force)?;
    Ok(PartOutcome {
        spec,
        folder,
        files,
        written: Some(written),
    })
}

/// Creates the staging area (another part may be doing the same) and checks that it is
/// a plain folder.
fn make_area(area: &Path) -> Result<()> {
    match std::fs::create_dir(area) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("create the staging area", area)(e)),
    }
    let meta = area.symlink_metadata().map_err(io("inspect", area))?;
    if !meta.is_dir() {
        return Err(PartError::NotAFolder {
            area: area.to_path_buf(),
        }
        .into());
    }
    Ok(())
}

/// What `--finish` did.
#[derive(Debug, Clone)]
pub struct FinishOutcome {
    /// The finished conversion, as a single run reports it.
    pub outcome: Outcome,
    /// Parts put together.
    pub parts: usize,
    /// Bytes read again to check the parts.
    pub verified_bytes: u64,
    /// The staging area, when it could not be removed afterwards.
    pub left: Option<PathBuf>,
}

/// A part folder found in the staging area, with its manifest.
struct Found {
    entry: String,
    path: PathBuf,
    manifest: Manifest,
}

/// Checks every part in the staging area of `dst` against the job of converting `ckpt`
/// by `plan` with `opts` (`job`'s part count is ignored: the parts say it), then puts the
/// output together and renames it onto `dst` (see the module docs). `progress` hears
/// about every byte read again.
pub fn finish(
    ckpt: &Checkpoint,
    plan: &Plan,
    dst: &Path,
    opts: &WriteOptions,
    job: &Job,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FinishOutcome> {
    let target = Destination::resolve(dst)?;
    check_overwrite(&target, opts.force)?;
    let area = area_of(&target);
    match area.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(PartError::NotAFolder { area }.into()),
        Err(_) => return Err(PartError::NoParts { area }.into()),
    }
    let layout = layout(plan, opts)?;
    let (found, mut problems) = survey(&area)?;
    // The partition: the part count most manifests name (the others are stale).
    let mut votes: BTreeMap<usize, usize> = BTreeMap::new();
    for f in &found {
        *votes.entry(f.manifest.job.parts).or_default() += 1;
    }
    let count = votes
        .iter()
        .max_by_key(|(n, v)| (**v, std::cmp::Reverse(**n)))
        .map(|(n, _)| *n)
        .unwrap_or(1);
    let mut want = job.clone();
    want.parts = count;
    let assignment = assign(&layout, count);
    let mut by_part: BTreeMap<usize, Vec<&Found>> = BTreeMap::new();
    for f in &found {
        let spec = PartSpec {
            index: f.manifest.part,
            count: f.manifest.job.parts,
        };
        if let Some(why) = want.difference(&f.manifest.job) {
            problems.push(Problem {
                kind: ProblemKind::Stale,
                part: Some(spec),
                entry: f.entry.clone(),
                detail: why,
            });
            continue;
        }
        if f.manifest.part == 0 || f.manifest.part > count {
            problems.push(Problem {
                kind: ProblemKind::Corrupt,
                part: Some(spec),
                entry: f.entry.clone(),
                detail: format!("its manifest says part {spec}, which does not exist"),
            });
            continue;
        }
        by_part.entry(f.manifest.part).or_default().push(f);
    }
    // Two folders whose manifests claim one part (a copy, a part renamed by hand) are
    // a duplicate whatever their names; a single one must carry its part's name.
    let mut duplicated = BTreeSet::new();
    for (index, fs) in &by_part {
        let spec = PartSpec {
            index: *index,
            count,
        };
        if fs.len() > 1 {
            duplicated.insert(*index);
            problems.push(Problem {
                kind: ProblemKind::Duplicated,
                part: Some(spec),
                entry: fs
                    .iter()
                    .map(|f| f.entry.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                detail: "several folders claim it; remove all but one".into(),
            });
        } else if let [f] = fs.as_slice() {
            if f.entry != spec.folder() {
                duplicated.insert(*index);
                problems.push(Problem {
                    kind: ProblemKind::Corrupt,
                    part: Some(spec),
                    entry: f.entry.clone(),
                    detail: format!(
                        "its manifest says part {spec}, whose folder is {}",
                        spec.folder()
                    ),
                });
            }
        }
    }
    by_part.retain(|index, _| !duplicated.contains(index));
    let missing: Vec<usize> = (1..=count)
        .filter(|i| !by_part.contains_key(i))
        .filter(|i| {
            // A part reported otherwise (running, stale, duplicated, corrupt) is not
            // also missing.
            !problems.iter().any(|p| {
                p.part.is_some_and(|s| s.index == *i && s.count == count)
                    && p.kind != ProblemKind::Missing
            })
        })
        .collect();
    for index in missing {
        let spec = PartSpec { index, count };
        problems.push(Problem {
            kind: ProblemKind::Missing,
            part: Some(spec),
            entry: spec.folder(),
            detail: "no folder holds it".into(),
        });
    }
    // Structure of the single folder of each part, then every byte of every file.
    let mut to_hash: Vec<(PartSpec, String, PathBuf, &ManifestFile)> = Vec::new();
    for (index, fs) in &by_part {
        let [f] = fs.as_slice() else { continue };
        let spec = PartSpec {
            index: *index,
            count,
        };
        let expected: Vec<&str> = assignment[index - 1]
            .iter()
            .map(|&k| layout.shards[k].file_name.as_str())
            .collect();
        match check_files(&f.path, &f.manifest, &expected, &layout) {
            Ok(()) => {
                for m in &f.manifest.files {
                    to_hash.push((spec, f.entry.clone(), f.path.join(&m.name), m));
                }
            }
            Err(detail) => problems.push(Problem {
                kind: ProblemKind::Corrupt,
                part: Some(spec),
                entry: f.entry.clone(),
                detail,
            }),
        }
    }
    let verified = std::sync::atomic::AtomicU64::new(0);
    let mut hashed: Vec<Problem> = to_hash
        .par_iter()
        .filter_map(|(spec, entry, path, m)| {
            let r = hash_file(path, progress);
            verified.fetch_add(m.len, std::sync::atomic::Ordering::Relaxed);
            let detail = match r {
                Ok(h) if hex(h) == m.xxh3 => return None,
                Ok(_) => format!(
                    "{}: its bytes changed since the part wrote them (XXH3-128 differs)",
                    m.name
                ),
                Err(e) => format!("{}: {e}", m.name),
            };
            Some(Problem {
                kind: ProblemKind::Corrupt,
                part: Some(*spec),
                entry: entry.clone(),
                detail,
            })
        })
        .collect();
    problems.append(&mut hashed);
    if !problems.is_empty() {
        problems.sort_by(|a, b| {
            (a.part.map(|s| s.index), a.kind, &a.entry).cmp(&(
                b.part.map(|s| s.index),
                b.kind,
                &b.entry,
            ))
        });
        return Err(PartError::Refused { area, problems }.into());
    }
    // Assemble: the shards linked (not moved: the parts stay whole until the end) into a
    // staging folder, the index and companions added, one rename.
    let staging = Staging::create(dst, opts.sync)?;
    for f in by_part.values().flatten() {
        for m in &f.manifest.files {
            staging.link_file(&f.path.join(&m.name), &m.name)?;
        }
    }
    if let Some(index) = layout.index_json() {
        staging.write_file(INDEX_FILE, index.as_bytes())?;
    }
    let copied = copy_companions(ckpt.root(), &staging)?;
    let dst_done = staging.commit(opts.force)?;
    let left = std::fs::remove_dir_all(&area).err().map(|_| area.clone());
    let written = Written {
        tensors: layout.tensors.len(),
        bytes: layout.total_size,
        files: layout.shards.iter().map(|s| s.file_name.clone()).collect(),
        ..Written::default()
    };
    Ok(FinishOutcome {
        outcome: Outcome {
            dst: dst_done,
            written,
            copied,
        },
        parts: count,
        verified_bytes: verified.into_inner(),
        left,
    })
}

/// Lists the staging area: part folders with readable manifests, and problems with
/// everything else (staging folders of live parts, damaged or foreign entries). Staging
/// folders of dead parts are removed on the way.
fn survey(area: &Path) -> Result<(Vec<Found>, Vec<Problem>)> {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let mut entries: Vec<(String, PathBuf, bool)> = Vec::new();
    for e in std::fs::read_dir(area).map_err(io("list", area))? {
        let e = e.map_err(io("list", area))?;
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        entries.push((
            e.file_name().to_string_lossy().into_owned(),
            e.path(),
            is_dir,
        ));
    }
    entries.sort();
    for (name, path, is_dir) in entries {
        if let Some(rest) = name.strip_prefix('.') {
            // `.part-….orient-tmp-*`: a part being written, or left by a dead run.
            let Some(part) = rest
                .split(".orient-tmp-")
                .next()
                .and_then(PartSpec::from_folder)
            else {
                continue;
            };
            let d = Destination::resolve(&area.join(part.folder()))?;
            for s in destination::sweep_stale(&d)? {
                if s.path != path {
                    continue;
                }
                if let StaleState::InUse = s.state {
                    problems.push(Problem {
                        kind: ProblemKind::Running,
                        part: Some(part),
                        entry: name.clone(),
                        detail: format!(
                            "being written now (pid {})",
                            s.pid.map_or("?".to_string(), |p| p.to_string())
                        ),
                    });
                }
            }
            continue;
        }
        let part = PartSpec::from_folder(&name);
        if !is_dir {
            problems.push(Problem {
                kind: ProblemKind::Unexpected,
                part,
                entry: name,
                detail: "not a part's folder; move it away".into(),
            });
            continue;
        }
        match Manifest::read(&path) {
            Ok(manifest) => found.push(Found {
                entry: name,
                path,
                manifest,
            }),
            Err(detail) => problems.push(Problem {
                kind: if part.is_some() {
                    ProblemKind::Corrupt
                } else {
                    ProblemKind::Unexpected
                },
                part,
                entry: name,
                detail,
            }),
        }
    }
    Ok((found, problems))
}

/// Checks a part folder's files against its manifest and the plan: exactly the expected
/// shards (and the manifest), each with the planned length and header.
fn check_files(
    folder: &Path,
    manifest: &Manifest,
    expected: &[&str],
    layout: &Layout,
) -> std::result::Result<(), String> {
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    if listed != expected {
        return Err(format!(
            "its manifest lists {}, the plan gives this part {}",
            list(&listed),
            list(expected)
        ));
    }
    let mut present: BTreeSet<String> = BTreeSet::new();
    for e in std::fs::read_dir(folder).map_err(|e| format!("cannot list it: {e}"))? {
        let e = e.map_err(|e| format!("cannot list it: {e}"))?;
        present.insert(e.file_name().to_string_lossy().into_owned());
    }
    present.remove(MANIFEST_FILE);
    for m in &manifest.files {
        if !present.remove(&m.name) {
            return Err(format!("{} is missing", m.name));
        }
        let Some(plan) = layout.shards.iter().find(|s| s.file_name == m.name) else {
            return Err(format!("{} is not a file of this output", m.name));
        };
        let path = folder.join(&m.name);
        let len = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", m.name))?
            .len();
        if len != plan.file_len() || m.len != plan.file_len() {
            return Err(format!(
                "{} is {len} bytes, the plan says {} (truncated or extended?)",
                m.name,
                plan.file_len()
            ));
        }
        let file = File::open(&path).map_err(|e| format!("{}: {e}", m.name))?;
        let mut header = vec![0u8; plan.header.len()]; // the file's first bytes
        file.read_exact_at(&mut header, 0)
            .map_err(|e| format!("{}: {e}", m.name))?;
        if header != plan.header {
            return Err(format!("{}: its header is not the planned one", m.name));
        }
    }
    if let Some(extra) = present.iter().next() {
        return Err(format!("it also holds {extra}, which no part writes"));
    }
    Ok(())
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "no file".into()
    } else {
        names.join(", ")
    }
}

/// XXH3-128 of a whole file, read in order.
fn hash_file(path: &Path, progress: &(dyn Fn(u64) + Sync)) -> std::io::Result<u128> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = Buffer::zeroed(READ_CHUNK.min(len as usize).max(1));
    let mut h = Xxh3::new();
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        progress(n as u64);
        at += n as u64;
    }
    Ok(h.digest128())
}
