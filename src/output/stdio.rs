//! Standard output and standard error as sinks that a closed pipe cannot turn into a
//! failure, and the only place that opens them.
//!
//! Why: `orient verify … | head -1` or `orient convert A B | true` closes stdout while
//! orient is still at work. The verdict (exit 0, 1 or 2) must not depend on whether anyone
//! is still reading, and the work itself (a conversion) must not be cut short because its
//! report cannot be shown. So a write that meets a closed pipe (EPIPE) marks that stream
//! closed and reports success, and every later write to it is dropped; the computation
//! finishes and its own exit code stands. Only that error of that stream is absorbed:
//! any other write error (a full disk behind `>`) is returned, naming the stream, and a
//! `BrokenPipe` that a command's own work meets elsewhere is an ordinary error.
//!
//! Rust ignores SIGPIPE before `main` runs, so a write to a closed pipe returns EPIPE
//! instead of killing the process; orient keeps that default (no `unix_sigpipe`, no
//! `signal(SIGPIPE, SIG_DFL)`), which is what lets this module see the error at all.

#![allow(clippy::disallowed_methods)] // the one place that may open stdout and stderr

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Standard output or standard error, quiet once its reader has gone (see the module
/// docs). Cheap to make; every sink of a stream shares one "closed" flag.
#[derive(Debug)]
pub struct Sink {
    stream: Stream,
}

/// Standard output. Callers that write many small pieces wrap it in a `BufWriter`.
pub fn stdout() -> Sink {
    Sink {
        stream: Stream::Stdout,
    }
}

/// Standard error.
pub fn stderr() -> Sink {
    Sink {
        stream: Stream::Stderr,
    }
}

/// True when standard error is a terminal (progress bars are drawn only then).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

impl Sink {
    fn flag(&self) -> &'static AtomicBool {
        match self.stream {
            Stream::Stdout => &STDOUT_CLOSED,
            Stream::Stderr => &STDERR_CLOSED,
        }
    }

    fn name(&self) -> &'static str {
        match self.stream {
            Stream::Stdout => "standard output",
            Stream::Stderr => "standard error",
        }
    }

    /// True once a write met a closed pipe: everything written since was dropped.
    pub fn is_closed(&self) -> bool {
        self.flag().load(Ordering::Relaxed)
    }

    /// Absorbs EPIPE (marking the stream closed, answering `closed`); names the stream
    /// in any other error.
    fn settle<T>(&self, result: io::Result<T>, closed: T) -> io::Result<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.flag().store(true, Ordering::Relaxed);
                Ok(closed)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot write to {}: {e}", self.name()),
            )),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.is_closed() {
            return Ok(buf.len());
        }
        let result = match self.stream {
            Stream::Stdout => io::stdout().write(buf),
            Stream::Stderr => io::stderr().write(buf),
        };
        self.settle(result, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.is_closed() {
            return Ok(());
        }
        let result = match self.stream {
            Stream::Stdout => io::stdout().flush(),
            Stream::Stderr => io::stderr().flush(),
        };
        self.settle(result, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_pipe_is_absorbed_and_other_errors_name_the_stream() {
        let sink = stdout();
        let other = sink.settle::<usize>(Err(io::Error::from(io::ErrorKind::StorageFull)), 0);
        let err = other.expect_err("a full disk is an error");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("standard output"), "{err}");
        // The closed flag is process-wide: test it on stderr's only after the above, and
        // leave stdout's alone so that the test harness keeps printing.
        let mut sink = stderr();
        assert!(!sink.is_closed());
        let absorbed = sink.settle(Err(io::Error::from(io::ErrorKind::BrokenPipe)), 7);
        assert_eq!(absorbed.ok(), Some(7));
        assert!(sink.is_closed());
        assert_eq!(sink.write(b"dropped").ok(), Some(7));
        assert!(sink.flush().is_ok());
    }
}
