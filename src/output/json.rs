//! Pretty JSON for every `--json` report, with the characters that could drive a terminal
//! written as `\uXXXX` escapes.
//!
//! Why: serde_json already escapes C0 controls, but writes DEL, C1 controls and the bidi
//! controls raw, so `orient inspect --json m | less` could still show a reordered name.
//! The escapes are ordinary JSON: the document and its values are unchanged for a parser.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter};

use crate::output::escape::is_unsafe;

/// Writes `value` as pretty JSON (two-space indent, like `serde_json::to_writer_pretty`)
/// followed by a newline.
pub fn write_pretty<T: Serialize + ?Sized>(w: &mut dyn Write, value: &T) -> io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(&mut *w, Safe(PrettyFormatter::new()));
    value.serialize(&mut ser).map_err(io::Error::from)?;
    writeln!(w)
}

/// [`PrettyFormatter`], but string fragments escape what [`is_unsafe`] names.
struct Safe<'a>(PrettyFormatter<'a>);

impl Formatter for Safe<'_> {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if is_unsafe(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                // Every unsafe character is in the Basic Multilingual Plane.
                write!(writer, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_array(writer)
    }

    fn end_array<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object(writer)
    }

    fn end_object<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(writer, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.begin_object_value(writer)
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.0.end_object_value(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_serde_pretty_and_still_valid_json_with_hostile_strings() {
        let value = serde_json::json!({
            "tensors": [{"name": "a\u{1b}]0;x\u{7}\u{7f}\u{85}\u{202e}b", "shape": [1, 2]}],
            "empty": [], "n": 1.5, "s": "Δ ✓",
        });
        let mut ours = Vec::new();
        write_pretty(&mut ours, &value).ok();
        let text = String::from_utf8(ours).unwrap_or_default();
        assert!(
            text.contains(r#""a\u001b]0;x\u0007\u007f\u0085\u202eb""#),
            "{text}"
        );
        assert!(!text.contains('\u{202e}') && !text.contains('\u{85}'));
        let back: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back, value);
        let plain = serde_json::json!({"a": [1, {"b": "c"}], "d": {}});
        let mut ours = Vec::new();
        write_pretty(&mut ours, &plain).ok();
        let theirs = serde_json::to_string_pretty(&plain).unwrap_or_default() + "\n";
        assert_eq!(String::from_utf8(ours).unwrap_or_default(), theirs);
    }
}
