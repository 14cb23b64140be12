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

/// Says on stderr which cached snapshot a repo id resolved to (ignored if stderr is closed).
pub fn resolved(s: &orient_inspect::hub::Snapshot) {
    let mut err = crate::output::escape::Escaping::new(crate::output::stderr());
    let commit = s.commit.get(..12).unwrap_or(&s.commit);
    let at = if s.revision == s.commit {
        String::new()
    } else {
        format!("{} = ", s.revision)
    };
    let _ = writeln!(
        err,
        "note: {} at {at}commit {commit}: {}",
        s.repo,
        s.path.display()
    );
}
