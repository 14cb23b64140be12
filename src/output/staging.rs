//! What happened to staging folders: stale ones found beside a destination, and the
//! live ones removed when a signal interrupts a write. Both go to stderr: they are
//! notes about the filesystem, not the command's result.

use std::io::{self, Write};
use std::path::Path;

use orient_convert::destination::{Abandoned, StaleStaging, StaleState};

use crate::output::inspect::human_bytes;

/// One `note:` line per stale staging folder found beside `dst`.
pub fn stale(found: &[StaleStaging], dst: &Path, w: &mut dyn Write) -> io::Result<()> {
    for s in found {
        let owner = match s.pid {
            Some(pid) => format!("process {pid}"),
            None => "an unknown process".to_string(),
        };
        match &s.state {
            StaleState::Removed { bytes } => writeln!(
                w,
                "note: removed {}, the staging folder of an interrupted run ({owner}, no longer running): {} freed",
                s.path.display(),
                human_bytes(*bytes)
            )?,
            StaleState::InUse => writeln!(
                w,
                "note: left {} alone: {owner} is still writing it",
                s.path.display()
            )?,
            StaleState::NoOwnerRecord => writeln!(
                w,
                "note: left {} alone: it has no owner record (an older orient made it?); delete it if no orient run is writing {}",
                s.path.display(),
                dst.display()
            )?,
            StaleState::Failed(why) => writeln!(
                w,
                "note: left {} (a staging folder of {owner}): {why}",
                s.path.display()
            )?,
        }
    }
    Ok(())
}

/// The last words of a run stopped by `signal` (e.g. "SIGINT"), on a line of their own
/// with `fresh_line`.
pub fn interrupted(
    signal: &str,
    abandoned: &Abandoned,
    fresh_line: bool,
    w: &mut dyn Write,
) -> io::Result<()> {
    if fresh_line {
        writeln!(w)?;
    }
    let removed = abandoned
        .removed
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>();
    if removed.is_empty() {
        writeln!(w, "interrupted by {signal}")?;
    } else {
        writeln!(
            w,
            "interrupted by {signal}: removed the unfinished output {}; nothing was written",
            removed.join(", ")
        )?;
    }
    for p in &abandoned.kept {
        writeln!(
            w,
            "could not remove the unfinished output {}: delete it by hand",
            p.display()
        )?;
    }
    Ok(())
}
