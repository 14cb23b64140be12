//! The `orient` library: the model forward pass (`model`), the rendering of every report
//! (`output`), the signal thread that cleans up after an interrupted write (`interrupt`), and
//! the model's tokenizer for text prompts (`text`).
//! Reading and describing checkpoints lives in the `orient-inspect` crate, rewriting in
//! `orient-convert`.

pub mod generate;
pub mod interrupt;
pub mod model;
pub mod output;
pub mod text;
