//! The `orient` library: rendering of reports and (later) the model forward pass.
//! Reading and describing checkpoints lives in the `orient-inspect` crate, rewriting in
//! `orient-convert`.

pub mod model;
pub mod output;
