//! Reading and describing safetensors checkpoints.
//!
//! - [`header`]: parse and validate one header, as a straight line of checked steps.
//! - [`checkpoint`]: open a file, a sharded set or a model folder; own the memory maps.
//! - [`mmap`]: the memory maps themselves, and the SIGBUS guard that turns a file
//!   truncated underneath into an error instead of a crash.
//! - [`file`](mod@file): opening regular files only (a FIFO would block forever).
//! - [`view`]: borrowed tensor bytes and an alignment-safe path to f32.
//! - [`cast`]: widening kernels (bf16/f16 → f32) shared by every reader of data.
//! - [`config`]: `config.json` resolved once into a plain struct.
//! - [`diff`]: compare two checkpoints and name the transform between each pair.
//! - [`layout`]: the layout model: the canonical catalogue, conventions as data (built-in
//!   and user TOML files), the transform algebra and index views, the one detector.
//! - [`report`]: the `inspect` report.
//! - [`hub`]: models named by repo id, found in the local Hugging Face cache.
//! - [`lint`]: consistency checks between weights and config (`orient lint`).
//! - [`write`](mod@write): the safetensors header serializer (the parser's inverse) and small files.

pub mod cast;
pub mod checkpoint;
pub mod config;
pub mod diff;
pub mod dtype;
pub mod error;
pub mod file;
pub mod formats;
pub mod header;
pub mod hub;
pub mod layout;
pub mod lint;
pub mod mmap;
pub mod report;
pub mod view;
pub mod write;

pub use checkpoint::{
    Checkpoint, ConfigStatus, Format, OpenNote, Quantized, Shard, Source, TensorInfo, Undecodable,
};
pub use config::{parse_config, Arch, ConfigError, ConfigOutcome, ModelConfig, RopeScaling};
pub use dtype::Dtype;
pub use error::{Error, FileChange};
pub use header::HeaderError;
pub use layout::arch::{Component, Entry, Role, Slot};
pub use layout::catalogue::{Catalogue, ConvId, Form, NameMatch, Variant, FLAX, HF};
pub use layout::convention::Convention;
pub use view::{TensorView, ViewError};
