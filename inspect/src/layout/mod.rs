//! The layout model: canonical tensors, conventions as data, and the transform algebra between
//! them.
//!
//! ```text
//! stored tensors ──convention (rules: names + transform chains)──▶ canonical tensors ──▶ every command
//! ```
//! - [`expr`]: symbolic sizes (`nH·D`) evaluated against a config.
//! - [`view`]: index views: where each element of a logical tensor lives.
//! - [`transform`]: the transforms, their exact inverses, and chains over groups of tensors.

pub mod arch;
pub mod catalogue;
pub mod convention;
pub mod expr;
pub mod file;
pub mod formats;
pub mod gather;
pub mod resolve;
pub mod transform;
pub mod view;
