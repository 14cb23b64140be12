//! Terminal safety: tensor names, metadata, paths and error messages come from files
//! anyone can write, and must not drive the terminal that shows them.
//!
//! Why: a tensor named `"\x1b]0;pwned\x07"` retitles the window, other escape sequences
//! move the cursor or rewrite earlier lines (a forged `PASS`), and the bidi controls
//! U+202A–U+202E / U+2066–U+2069 reorder what follows (Trojan Source). Every piece of
//! human output passes through this module: C0 controls, DEL, C1 controls and the bidi
//! controls (with the marks U+200E, U+200F and U+061C) become visible escapes such as
//! `\x1b` or `\u{202e}`. Fields (a cell, a name) escape everything, `\n` included, so a
//! name cannot forge a line; whole messages keep their own line breaks.
//!
//! The rendering functions escape each field with [`escape`] (tables must measure the
//! text they will print) and also write through [`Escaping`], which escapes whatever a
//! field-level call missed. JSON is for machines and stays valid JSON: see
//! [`crate::output::json`].

use std::borrow::Cow;
use std::io::{self, Write};
use std::path::Path;

use comfy_table::Cell;

/// True for the characters that never reach the terminal raw.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'            // C0, including ESC, BEL, CR, LF, TAB
        | '\u{7f}'..='\u{9f}'         // DEL and C1 (U+009B is a one-character CSI)
        | '\u{61c}'                   // ARABIC LETTER MARK
        | '\u{200e}' | '\u{200f}'     // LRM, RLM
        | '\u{202a}'..='\u{202e}'     // LRE, RLE, PDF, LRO, RLO
        | '\u{2066}'..='\u{2069}'     // LRI, RLI, FSI, PDI
    )
}

/// `s` with every unsafe character escaped, line breaks included: for one field.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_where(s, is_unsafe)
}

/// `s` with every unsafe character escaped except `\n`: for a message of several lines.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape_where(s, |c| c != '\n' && is_unsafe(c))
}

/// A path shown as one escaped field.
pub fn path(p: &Path) -> String {
    escape(&p.display().to_string()).into_owned()
}

/// A table cell showing `s` escaped.
pub fn cell(s: impl AsRef<str>) -> Cell {
    Cell::new(escape(s.as_ref()))
}

fn escape_where(s: &str, unsafe_char: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `\n`, `\r`, `\t`, `\x1b` (ASCII) or `\u{202e}` (the rest), as Rust writes them.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
    }
}

/// A writer that escapes every unsafe character but `\n` on its way to `inner`. Bytes
/// that are not UTF-8 are shown as `\xNN`; a character split across two writes is
/// joined first.
#[derive(Debug)]
pub struct Escaping<W: Write> {
    inner: W,
    /// The start of a UTF-8 sequence whose end has not been written yet (≤ 3 bytes).
    pending: Vec<u8>,
}

impl<W: Write> Escaping<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Escaping<W> {
        Escaping {
            inner,
            pending: Vec::new(),
        }
    }

    fn put(&mut self, text: &str) -> io::Result<()> {
        self.inner.write_all(escape_text(text).as_bytes())
    }
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let joined;
        let mut rest = if self.pending.is_empty() {
            buf
        } else {
            let mut v = std::mem::take(&mut self.pending);
            v.extend_from_slice(buf);
            joined = v;
            &joined[..]
        };
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    self.put(text)?;
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    if let Ok(text) = std::str::from_utf8(good) {
                        self.put(text)?;
                    }
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for the next write.
                        None => {
                            self.pending = bad.to_vec();
                            break;
                        }
                        Some(n) => {
                            for b in &bad[..n] {
                                write!(self.inner, "\\x{b:02x}")?;
                            }
                            rest = &bad[n..];
                        }
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for Escaping<W> {
    /// A sequence still incomplete at the end was never UTF-8: show its bytes.
    fn drop(&mut self) {
        for b in std::mem::take(&mut self.pending) {
            let _ = write!(self.inner, "\\x{b:02x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escape("model.norm.weight"), "model.norm.weight");
        assert!(matches!(escape("plain ✓ Δ → ⚠"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(escape("x\u{202e}y\u{2066}z"), "x\\u{202e}y\\u{2066}z");
        assert_eq!(escape("\u{7f}\u{85}\u{9b}"), "\\x7f\\u{85}\\u{9b}");
        assert_eq!(
            escape("\u{200e}\u{200f}\u{61c}"),
            "\\u{200e}\\u{200f}\\u{61c}"
        );
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(
            escape_text("line 1\nline\x1b[2K 2"),
            "line 1\nline\\x1b[2K 2"
        );
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{2067}', '\u{2068}', '\u{2069}',
        ] {
            assert!(is_unsafe(c), "{c:?}");
        }
        for c in ['\u{a0}', '\u{200b}', '\u{2070}', '\u{2029}', 'é', '中'] {
            assert!(!is_unsafe(c), "{c:?}");
        }
    }

    #[test]
    fn the_writer_escapes_across_write_boundaries() {
        let mut out = Vec::new();
        {
            let mut w = Escaping::new(&mut out);
            let text = "ok\n\x1b[31mred\u{202e}txt\n".as_bytes();
            // Split inside the three bytes of U+202E.
            let cut = text.len() - 6;
            w.write_all(&text[..cut]).ok();
            w.write_all(&text[cut..]).ok();
            w.write_all(b"bad \xff byte, cut \xe2\x80").ok();
        }
        assert_eq!(
            String::from_utf8(out).ok().as_deref(),
            Some("ok\n\\x1b[31mred\\u{202e}txt\nbad \\xff byte, cut \\xe2\\x80")
        );
    }
}
