//! The one place that prints. Computation returns data; these functions render it as
//! a table (comfy-table) or JSON to a writer, so that a closed pipe surfaces as an
//! `io::Error` the binary can ignore.

pub mod convert;
pub mod demo;
pub mod diff;
pub mod inspect;
pub mod notes;
pub mod progress;
pub mod run;
pub mod verify;
