//! Opening files for reading: regular files only.
//!
//! Why: opening a FIFO for reading blocks until a writer appears, and reading a
//! character device may never end, so a FIFO named `model.safetensors` (or listed in an
//! index, or passed on the command line) would hang every command. Symbolic links are
//! followed — the Hugging Face cache is made of them — and what they lead to must be a
//! regular file. The kind is checked before opening, and again on the open descriptor
//! (opened non-blocking, so that a FIFO swapped in between cannot block either).

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// Why a path cannot be read as a file: it is something else. Carried inside an
/// [`io::Error`] of kind `InvalidInput` by [`open_regular`], so that callers with
/// `io::Error`s report it as is and the checkpoint reader can name the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRegularFile {
    /// What the path is, in words: "a FIFO (named pipe)", "a folder", …
    pub kind: &'static str,
}

impl fmt::Display for NotRegularFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "is {}, not a regular file; refusing to read it",
            self.kind
        )
    }
}

impl std::error::Error for NotRegularFile {}

/// What `path` is, after following symbolic links: `Ok(None)` for a regular file,
/// `Ok(Some(kind))` for anything else (including a link that leads nowhere), and the
/// error of `stat` otherwise (e.g. `NotFound` when nothing has that name).
pub fn non_regular_kind(path: &Path) -> io::Result<Option<&'static str>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(kind_of(&meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A name that exists as a link to nothing: say so rather than "not found".
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    Ok(Some("a symbolic link to a file that does not exist"))
                }
                _ => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// `None` for a regular file, else what it is.
fn kind_of(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if t.is_socket() {
            return Some("a socket");
        }
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
    }
    Some("not a regular file")
}

fn refuse(kind: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, NotRegularFile { kind })
}

/// Opens a regular file for reading, following symbolic links; anything else (FIFO,
/// socket, device, folder) is refused with a [`NotRegularFile`] inside the error,
/// without blocking.
pub fn open_regular(path: &Path) -> io::Result<File> {
    if let Some(kind) = non_regular_kind(path)? {
        return Err(refuse(kind));
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // Non-blocking, in case the path was swapped for a FIFO since the check above.
        // The flag has no effect on reads of a regular file.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if let Some(kind) = kind_of(&file.metadata()?) {
        return Err(refuse(kind));
    }
    Ok(file)
}

/// Reads a whole regular file (see [`open_regular`]) of at most `limit` bytes; a larger
/// file is refused with an `InvalidData` error saying so, before anything is read.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("is {len} bytes long, over the {limit}-byte limit for this kind of file"),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // `take` bounds the read even if the file grows meanwhile.
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The [`NotRegularFile`] inside an error made by [`open_regular`], if that is what it is.
pub fn not_regular(e: &io::Error) -> Option<NotRegularFile> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NotRegularFile>())
        .copied()
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn fifos_folders_and_dangling_links_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p");
        mkfifo(&fifo);
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(not_regular(&e).unwrap().kind, "a FIFO (named pipe)");
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = read_regular(dir.path(), 10).unwrap_err();
        assert_eq!(not_regular(&e).unwrap().kind, "a folder");
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &link).unwrap();
        let e = open_regular(&link).unwrap_err();
        assert!(not_regular(&e).unwrap().kind.contains("does not exist"));
        let e = open_regular(&dir.path().join("absent")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(not_regular(&e).is_none());
    }

    #[test]
    fn links_to_regular_files_are_followed_and_limits_hold() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"hello").unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        assert_eq!(read_regular(&dir.path().join("l"), 5).unwrap(), b"hello");
        let e = read_regular(&dir.path().join("l"), 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
