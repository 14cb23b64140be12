//! Errors of opening a checkpoint. Each names the file, and the tensor where there is one.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::header::HeaderError;

/// An error and its sources, joined with `: ` — how an error reads when it is shown as one
/// line (a report cell, a JSON string). No error in orient prints its source inline, so this
/// repeats nothing.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Why a checkpoint cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused to open, read or map a file.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors header is invalid.
    #[error("{}", path.display())]
    Header {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong with its header.
        #[source]
        source: HeaderError,
    },
    /// A folder with no `.safetensors` file and no index.
    #[error("{}: no .safetensors file and no model.safetensors.index.json in this folder", dir.display())]
    NoSafetensors {
        /// The folder.
        dir: PathBuf,
    },
    /// A folder with several `.safetensors` files and no index to say how they fit.
    #[error(
        "{}: {} .safetensors files ({}) but no model.safetensors.index.json; name one file or add the index",
        dir.display(), files.len(), files.join(", ")
    )]
    AmbiguousFolder {
        /// The folder.
        dir: PathBuf,
        /// The file names found.
        files: Vec<String>,
    },
    /// The index is not valid JSON or lacks `weight_map`.
    #[error("{}: invalid index: {reason}", index.display())]
    InvalidIndex {
        /// The index file.
        index: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A shard name that is not a plain file name of the model folder (absolute, `..`,
    /// a separator, empty). Refused before any file is opened.
    #[error(
        "{}: shard name `{shard}`{} is not a plain file name in the model folder (an absolute path, `..`, a `/` or `\\`, or empty); refusing to open it",
        index.display(),
        if tensor.is_empty() { String::new() } else { format!(" (for tensor `{tensor}`)") }
    )]
    ShardEscapes {
        /// The index file.
        index: PathBuf,
        /// The shard name as written.
        shard: String,
        /// A tensor mapped to it.
        tensor: String,
    },
    /// The index lists the same tensor twice (serde_json would silently keep the last).
    #[error(
        "{}: weight_map lists tensor `{tensor}` more than once (shard `{first}`, then shard `{second}`); refusing an ambiguous index",
        index.display()
    )]
    DuplicateInIndex {
        /// The index file.
        index: PathBuf,
        /// The repeated tensor name.
        tensor: String,
        /// The shard named first.
        first: String,
        /// The shard named again.
        second: String,
    },
    /// A path that should be a regular file is a FIFO, a socket, a device, a folder or a
    /// link to nothing. Refused before it is opened (opening a FIFO blocks forever).
    #[error("{} is {kind}, not a regular file; refusing to read it", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is, in words.
        kind: &'static str,
    },
    /// A mapped file changed while it was being read: whatever was computed from it is
    /// garbage.
    #[error(
        "{}: the file changed while orient was reading it ({change}); nothing read from it can be trusted, so no result is given",
        path.display()
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// What changed.
        change: FileChange,
    },
    /// The index names a shard file that does not exist.
    #[error("{}: tensor `{tensor}` is mapped to shard `{shard}`, which does not exist", index.display())]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard name.
        shard: String,
        /// A tensor mapped to it.
        tensor: String,
    },
    /// The index lists a tensor that its shard lacks.
    #[error("{}: tensor `{tensor}` is listed in the index but missing from its shard {}", index.display(), shard.display())]
    NotInShard {
        /// The index file.
        index: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The shard the index names.
        shard: PathBuf,
    },
    /// A shard holds a tensor that the index does not list.
    #[error("{}: tensor `{tensor}` is in this shard but not listed in {}", shard.display(), index.display())]
    NotInIndex {
        /// The shard.
        shard: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The index file.
        index: PathBuf,
    },
    /// A tensor found in a different shard from the one the index names.
    #[error("{}: tensor `{tensor}` is listed in shard `{listed}` but found in {}", index.display(), found.display())]
    WrongShard {
        /// The index file.
        index: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The shard the index names.
        listed: String,
        /// The shard it was found in.
        found: PathBuf,
    },
    /// The same tensor name in two shards.
    #[error("tensor `{tensor}` appears in two shards: {} and {}", first.display(), second.display())]
    DuplicateAcrossShards {
        /// The tensor name.
        tensor: String,
        /// One shard.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// `config.json` exists but cannot be resolved.
    #[error("{}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
    /// A GGUF, PyTorch or msgpack file is invalid (or a pickle asks for something a state
    /// dict does not need).
    #[error("{}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What its reader found.
        #[source]
        source: Box<crate::formats::FormatError>,
    },
    /// Meta's `params.json` or its shards do not fit together.
    #[error("{}", path.display())]
    Meta {
        /// `params.json`.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Box<crate::formats::MetaError>,
    },
    /// A tensor stored in a ggml type orient cannot decode, asked for by a command that reads values.
    #[error(
        "{}: tensor `{tensor}` is stored as {ggml_type}, a ggml type orient cannot decode (it decodes F32, F16, BF16, Q8_0 and Q4_0); `orient inspect` lists it",
        path.display()
    )]
    Undecodable {
        /// The GGUF file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its ggml type.
        ggml_type: &'static str,
    },
    /// A tensor assembled from a file (dequantized, or concatenated from model-parallel shards)
    /// could not be.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    Assemble {
        /// Where it comes from.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What went wrong.
        reason: String,
    },
}

/// How a mapped file changed underneath the process (see [`Error::Changed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    /// Its length is no longer the one mapped (truncated, or grown).
    Resized {
        /// Length when it was opened.
        was: u64,
        /// Length now.
        now: u64,
    },
    /// A read touched pages the file no longer backed (it was truncated, and maybe
    /// grown back since): those bytes were read as zeros.
    PagesVanished {
        /// Length when it was opened (and now).
        len: u64,
    },
    /// Same length, but its modification time changed: rewritten in place.
    Modified,
}

impl std::fmt::Display for FileChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileChange::Resized { was, now } if now < was => {
                write!(f, "it was truncated from {was} to {now} bytes")
            }
            FileChange::Resized { was, now } => {
                write!(f, "its length changed from {was} to {now} bytes")
            }
            FileChange::PagesVanished { len } => write!(
                f,
                "it was truncated while mapped: bytes past its end read as zeros (it is {len} bytes again now)"
            ),
            FileChange::Modified => write!(f, "it was rewritten: its modification time changed"),
        }
    }
}
