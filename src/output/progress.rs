//! Progress bars on stderr, drawn only when stderr is a terminal, so that pipes, logs and
//! tests see nothing of them.

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-counting bar with throughput and ETA, or nothing when not wanted or when
/// stderr is not a terminal.
#[derive(Debug)]
pub struct BytesProgress(Option<ProgressBar>);

impl BytesProgress {
    /// A bar of `total` bytes labelled `what`, shown when `wanted` and stderr is a terminal.
    pub fn new(wanted: bool, total: u64, what: &str) -> BytesProgress {
        BytesProgress(
            (wanted && super::stdio::stderr_is_terminal()).then(|| bytes_bar(total, what)),
        )
    }

    /// Counts `n` more bytes done.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}

/// A bar counting bytes, with throughput and ETA.
fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}
