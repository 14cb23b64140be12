//! Ctrl-C and SIGTERM while a checkpoint is being written.
//!
//! Why a thread and not a handler: a signal handler may only do async-signal-safe work,
//! and removing folders, taking a lock and printing are none of that. signal-hook's
//! handler only writes the signal number into a pipe; a dedicated thread waits on it and
//! does the rest: it removes this process's staging folders
//! ([`orient_convert::destination::abandon_all`], which lets a commit in progress finish
//! and then stops any other), says so on stderr, and ends the process by the same signal,
//! with the default action restored. A shell then reports 130 (SIGINT) or 143 (SIGTERM),
//! and, unlike a plain `exit(130)`, a script looping over models stops at Ctrl-C as the
//! user meant (bash continues a loop when the child *exited*, because it takes that as
//! the child having handled the signal).
//!
//! What no handler sees (SIGKILL, a power loss) is cleaned by the next run to the same
//! destination ([`orient_convert::destination::sweep_stale`]).

use std::sync::Once;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::output;

/// Starts the signal thread (once per process). A signal that was ignored when orient
/// started (a background job of a non-interactive shell ignores SIGINT) stays ignored.
pub fn install() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = start());
    result
}

fn start() -> std::io::Result<()> {
    let wanted: Vec<i32> = [SIGINT, SIGTERM]
        .into_iter()
        .filter(|&s| !ignored(s))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut signals = Signals::new(&wanted)?;
    std::thread::Builder::new()
        .name("orient-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let abandoned = orient_convert::destination::abandon_all();
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                // On a terminal the message starts below the progress bar and the `^C`.
                let fresh_line = output::stdio::stderr_is_terminal();
                let _ = output::staging::interrupted(
                    name,
                    &abandoned,
                    fresh_line,
                    &mut output::stderr(),
                );
                // Ends the process by the signal itself; it only returns if that failed.
                let _ = signal_hook::low_level::emulate_default_handler(signal);
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// True when `signal` is ignored (`SIG_IGN`) in this process.
fn ignored(signal: i32) -> bool {
    // SAFETY: a zeroed `sigaction` is a valid value of this plain C struct; with a null new
    // action, sigaction only writes the current disposition into `old`, a local.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}
