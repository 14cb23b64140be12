//! A whole conversion: path safety checks, then plan → staged write → commit.
//!
//! Why the checks live here and not in the binary: "never write into the source" and
//! "leave nothing behind" are properties of the library's contract, so every caller
//! (the CLI, the demo, tests) gets them.

use std::path::{Path, PathBuf};

use orient_inspect::Checkpoint;

use crate::engine::{self, Tiling, Written};
use crate::error::{io, Error, Result};
use crate::plan::Plan;
use crate::writer::{Staging, DEFAULT_MAX_SHARD_SIZE};

/// Files copied from the source folder next to the weights, when present: config,
/// generation settings and tokenizer files (what `from_pretrained` reads).
pub const COMPANION_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

/// How to write the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// Largest shard (tensor data bytes); `None` is transformers' default of 5 GB.
    pub max_shard_size: Option<u64>,
    /// Replace an existing destination.
    pub force: bool,
    /// fsync every file and folder before the final rename.
    pub sync: bool,
    /// Memory budgets of the streaming paths.
    pub tiling: Tiling,
}

impl Default for WriteOptions {
    fn default() -> WriteOptions {
        WriteOptions {
            max_shard_size: None,
            force: false,
            sync: true,
            tiling: Tiling::default(),
        }
    }
}

/// What a finished conversion wrote.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The destination folder.
    pub dst: PathBuf,
    /// Tensors, bytes, files and cast counts.
    pub written: Written,
    /// Companion files copied from the source folder.
    pub copied: Vec<String>,
}

/// Refuses a destination that is the source, lies inside the source folder, contains
/// the source (`--force` would delete it), or exists without `force`.
pub fn check_destination(src: &Path, dst: &Path, force: bool) -> Result<()> {
    let src_c = src.canonicalize().map_err(io("resolve", src))?;
    // A folder or an index stands for its whole folder; a single file for itself.
    let src_area = if src_c.is_dir() {
        src_c.clone()
    } else if src_c
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"))
    {
        src_c
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(src_c.clone())
    } else {
        src_c.clone()
    };
    let name = dst
        .file_name()
        .ok_or_else(|| Error::DestinationParent(dst.to_path_buf()))?;
    let parent = orient_inspect::checkpoint::parent_dir(dst).to_path_buf();
    let parent_c = parent
        .canonicalize()
        .map_err(|_| Error::DestinationParent(parent.clone()))?;
    if !parent_c.is_dir() {
        return Err(Error::DestinationParent(parent));
    }
    let dst_c = match dst.canonicalize() {
        Ok(p) => p,
        Err(_) => parent_c.join(name),
    };
    let refuse = || Error::DestinationInsideSource {
        src: src.to_path_buf(),
        dst: dst.to_path_buf(),
    };
    if dst_c == src_c || dst_c == src_area || dst_c.starts_with(&src_area) {
        return Err(refuse());
    }
    if src_c.starts_with(&dst_c) {
        return Err(refuse());
    }
    if dst.symlink_metadata().is_ok() && !force {
        return Err(Error::DestinationExists(dst.to_path_buf()));
    }
    Ok(())
}

/// Executes `plan` on `ckpt` into `dst`: everything is staged next to `dst` and renamed
/// into place only when complete; on any error nothing is left behind.
pub fn write(
    ckpt: &Checkpoint,
    plan: &Plan,
    dst: &Path,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let staging = Staging::create(dst, opts.sync)?;
    let written = engine::write_tensors(
        ckpt,
        &plan.ops,
        &plan.metadata,
        opts.max_shard_size.unwrap_or(DEFAULT_MAX_SHARD_SIZE),
        &opts.tiling,
        &staging,
        progress,
    )?;
    let copied = copy_companions(ckpt.root(), &staging)?;
    let dst = staging.commit(opts.force)?;
    Ok(Outcome {
        dst,
        written,
        copied,
    })
}

/// Copies the [`COMPANION_FILES`] present in `root` into the staging folder.
pub fn copy_companions(root: &Path, staging: &Staging) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in COMPANION_FILES {
        let p = root.join(name);
        if p.is_file() {
            staging.copy_file(&p, name)?;
            copied.push((*name).to_string());
        }
    }
    Ok(copied)
}
