//! A whole conversion: plan → staged write → commit.
//!
//! "Never write into the source", "--force replaces only a previous checkpoint" and
//! "leave nothing behind" are properties of the library's contract, so every caller (the
//! CLI, the demo, tests) gets them: see [`crate::destination`].

use std::path::{Path, PathBuf};

use orient_inspect::Checkpoint;

use crate::destination::{check_overwrite, Destination};
use crate::engine::{self, Tiling, Written};
use crate::error::Result;
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
    /// With `sync`, write the shards by direct I/O where the filesystem allows it
    /// (see [`crate::writer::StreamMode`]); else through the page cache.
    pub direct: bool,
    /// Memory budgets of the streaming paths.
    pub tiling: Tiling,
}

impl Default for WriteOptions {
    fn default() -> WriteOptions {
        WriteOptions {
            max_shard_size: None,
            force: false,
            sync: true,
            direct: true,
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

/// Executes `plan` on `ckpt` into `dst`: everything is staged next to `dst` and renamed
/// into place only when complete; on any error nothing is left behind. An existing
/// `dst` needs `opts.force` and may hold only a previous checkpoint; callers also check
/// that `dst` does not overlap the source
/// ([`crate::destination::check_destination`]).
pub fn write(
    ckpt: &Checkpoint,
    plan: &Plan,
    dst: &Path,
    opts: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    check_overwrite(&Destination::resolve(dst)?, opts.force)?;
    let staging = Staging::create(dst, opts.sync)?;
    let staging = if opts.direct {
        staging
    } else {
        staging.buffered()
    };
    let written = engine::write_tensors(
        ckpt,
        &plan.ops,
        &plan.metadata,
        opts.max_shard_size.unwrap_or(DEFAULT_MAX_SHARD_SIZE),
        &opts.tiling,
        &staging,
        progress,
    )?;
    // A config that is not the folder's config.json (`--config FILE`, or one reconstructed
    // from a GGUF file's metadata or Meta's params.json) is the one the output is written for.
    let own_config = ckpt
        .config_path()
        .is_some_and(|p| p != ckpt.root().join("config.json"));
    let mut copied = copy_companions_but(ckpt.root(), &staging, own_config)?;
    if let (true, Some(text)) = (own_config, ckpt.config_text()) {
        staging.write_file("config.json", text.as_bytes())?;
        copied.push("config.json".to_string());
    }
    let dst = staging.commit(opts.force)?;
    Ok(Outcome {
        dst,
        written,
        copied,
    })
}

/// Copies the [`COMPANION_FILES`] present in `root` into the staging folder.
pub fn copy_companions(root: &Path, staging: &Staging) -> Result<Vec<String>> {
    copy_companions_but(root, staging, false)
}

/// [`copy_companions`], all but `config.json` when `skip_config`.
fn copy_companions_but(root: &Path, staging: &Staging, skip_config: bool) -> Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in COMPANION_FILES {
        if skip_config && *name == "config.json" {
            continue;
        }
        let p = root.join(name);
        if p.is_file() {
            staging.copy_file(&p, name)?;
            copied.push((*name).to_string());
        }
    }
    Ok(copied)
}
