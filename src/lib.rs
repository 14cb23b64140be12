//! The `orient` library: the model forward pass (`model`), the rendering of every report
//! (`output`), and the signal thread that cleans up after an interrupted write (`interrupt`).
//! Reading and describing checkpoints lives in the `orient-inspect` crate, rewriting in
//! `orient-convert`.

pub mod interrupt;
pub mod model;
pub mod output;
