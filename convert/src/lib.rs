//! Rewriting safetensors checkpoints into a chosen layout, streaming.
//!
//! Each tensor is renamed, transposed, cast or skipped according to the layout
//! catalogue of `orient-inspect`, and written one tile at a time so that memory stays
//! bounded by a tile, not by the model.

pub mod cast;
pub mod error;
pub mod transpose;
pub mod writer;

pub use error::{Error, Result};
pub mod convert;
pub mod destination;
pub mod engine;
pub mod plan;
pub mod synth;
