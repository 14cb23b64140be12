//! Rewriting safetensors checkpoints into a chosen layout, streaming.
//!
//! Each output tensor is made from the source's through the layout model of
//! `orient-inspect` (the source convention's inverse chain, then the target's: renames,
//! transposes, RoPE permutations, fused and split parts, casts), and written one band at a
//! time so that memory stays bounded by a tile, not by the model.

pub mod buffer;
pub mod cast;
pub mod error;
pub mod transpose;
pub mod writer;

pub use error::{Error, Result};
pub mod convert;
pub mod destination;
pub mod engine;
pub mod parts;
pub mod plan;
pub mod synth;
