//! Rendering of `orient demo`: a heading per step, so that the three reports (inspect,
//! convert, verify) read as one story.

use std::io::{self, Write};

use crate::output::escape::escape;

/// `== step n/total: title`, preceded by a blank line after the first step.
pub fn step(out: &mut dyn Write, n: usize, total: usize, title: &str) -> io::Result<()> {
    if n > 1 {
        writeln!(out)?;
    }
    writeln!(out, "== step {n}/{total}: {}", escape(title))
}

/// A line of commentary under a step.
pub fn say(out: &mut dyn Write, text: &str) -> io::Result<()> {
    writeln!(out, "{}", escape(text))
}
