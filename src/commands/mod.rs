//! One file per subcommand. Each parses its arguments, calls the library, and hands
//! the resulting data to [`orient::output`] for rendering.

pub mod convert;
pub mod demo;
pub mod diff;
pub mod inspect;
pub mod run;
pub mod synth;
pub mod verify;
