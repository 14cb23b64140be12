//! The one place that prints. Computation returns data; these functions render it as
//! a table (comfy-table) or JSON to a writer. The commands hand them [`stdio::stdout`],
//! a sink on which a closed pipe is not an error, so that what a command computes and
//! its exit code never depend on whether anyone still reads its output. Everything from
//! a file (names, metadata, paths, errors) is escaped on its way to a terminal
//! ([`escape`]).

pub mod convert;
pub mod demo;
pub mod diff;
pub mod escape;
pub mod generate;
pub mod inspect;
pub mod json;
pub mod lint;
pub mod notes;
pub mod progress;
pub mod run;
pub mod staging;
pub mod stdio;
pub mod verify;

pub use stdio::{stderr, stdout};
