//! One file per subcommand. Each parses its arguments, calls the library, and hands
//! the resulting data to [`orient::output`] for rendering.

pub mod convert;
pub mod demo;
pub mod diff;
pub mod inspect;
pub mod run;
pub mod synth;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use orient_inspect::layout::convention::{self, Convention};

/// `--layout FILE`, shared by every command that reads a model.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LayoutArgs {
    /// A layout file (TOML) describing how this checkpoint names and transforms its tensors,
    /// e.g. a hand-written JAX port's; read like a built-in convention (format in README.md).
    /// Repeat to load several; the last is the one the checkpoint is read in.
    #[arg(long = "layout", value_name = "FILE")]
    pub layouts: Vec<PathBuf>,
}

impl LayoutArgs {
    /// The user conventions, in order; a later file may name an earlier one as its `base`.
    pub fn load(&self) -> anyhow::Result<Vec<Arc<Convention>>> {
        let mut known = convention::builtins().to_vec();
        let mut out = Vec::new();
        for path in &self.layouts {
            let c = Arc::new(convention::load_with(path, &known)?);
            known.push(c.clone());
            out.push(c);
        }
        Ok(out)
    }
}
