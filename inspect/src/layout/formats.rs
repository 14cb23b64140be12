//! The conventions that come with a file format rather than with a model: a GGUF file is named
//! and permuted the way llama.cpp's converter writes it (`layouts/gguf.toml`), a Meta original
//! the way Meta's code keeps it (`layouts/meta.toml`). They are not built-ins that every
//! checkpoint is matched against: a command adds the convention of the format it opened
//! ([`crate::Checkpoint::format`]) to its candidates, beside the user's `--layout` files.

use std::sync::Arc;

use crate::layout::convention::{self, Convention};
use crate::layout::file::Source;

/// The format conventions: (name, TOML text), written in the `--layout FILE` format.
pub const FORMAT_CONVENTIONS: &[(&str, &str)] = &[
    ("gguf", include_str!("../../layouts/gguf.toml")),
    ("meta", include_str!("../../layouts/meta.toml")),
];

/// The format convention named `name` (`"gguf"`, `"meta"`), parsed once.
pub fn format_convention(name: &str) -> Option<Arc<Convention>> {
    static PARSED: std::sync::OnceLock<Vec<Arc<Convention>>> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            FORMAT_CONVENTIONS
                .iter()
                .map(|(name, text)| {
                    let file = format!("built-in {name}.toml");
                    let src = Source { file: &file, text };
                    // Exercised by the tests of every format; a failure is a build defect.
                    let c = convention::parse(&src, convention::builtins())
                        .unwrap_or_else(|e| panic!("{e}"));
                    Arc::new(Convention { builtin: true, ..c })
                })
                .collect()
        })
        .iter()
        .find(|c| c.name == name)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_conventions_parse() {
        for (name, _) in FORMAT_CONVENTIONS {
            let c = format_convention(name);
            assert_eq!(c.map(|c| c.name.clone()).as_deref(), Some(*name));
        }
        assert!(format_convention("hf").is_none());
    }
}
