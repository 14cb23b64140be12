//! The `orient` library: the model forward pass (`model`) and the rendering of every report (`output`).
//! Reading and describing checkpoints lives in the `orient-inspect` crate, rewriting in
//! `orient-convert`.

pub mod model;
pub mod output;
