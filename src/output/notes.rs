//! What opening a checkpoint noticed (which of two candidate files was read, and why),
//! rendered as `warning:` lines. Commands whose stdout is a report (tables, JSON) write
//! these to stderr, so that the report stays parseable; `inspect` shows them in its
//! summary instead.

use std::io::{self, Write};

use orient_inspect::OpenNote;

/// Writes one `warning: …` line per note.
pub fn warnings(notes: &[OpenNote], w: &mut dyn Write) -> io::Result<()> {
    for note in notes {
        writeln!(w, "warning: {note}")?;
    }
    Ok(())
}

/// [`warnings`] to stderr. A failure to write a warning is not a reason to fail the
/// command, so it is ignored.
pub fn warn(notes: &[OpenNote]) {
    if !notes.is_empty() {
        let mut err = crate::output::escape::Escaping::new(crate::output::stderr());
        let _ = warnings(notes, &mut err);
    }
}
