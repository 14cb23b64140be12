//! Where an output may be written.
//!
//! Why one module: `convert` and `synth` write whole folders and, with `--force`, delete
//! what was there before. The rules that keep this from destroying a user's data live
//! here once, so that every writer obeys the same ones:
//! - the output never is, lies inside, or contains its own input (the source checkpoint,
//!   or the config a synthesis reads): replacing it would delete the input
//!   ([`check_destination`]);
//! - `--force` replaces a previous *checkpoint* and nothing else: a folder that holds
//!   anything orient would not write itself (notes, code, another format's weights, a
//!   subfolder) is refused with those names listed, and so are a plain file, a symbolic
//!   link, and the current folder or one of its ancestors ([`check_overwrite`], checked
//!   again right before the old folder is deleted).

use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use crate::convert::COMPANION_FILES;
use crate::error::{io, Error, Result};
use crate::writer::{INDEX_FILE, SINGLE_FILE};

/// How many unrelated names an error lists before "and N more".
const LISTED: usize = 6;

/// A destination folder, resolved: `.`, `..` and relative paths become a canonical parent
/// folder and a name in it, which is where staging happens and what gets renamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// As the user spelled it, for messages.
    pub given: PathBuf,
    /// The canonical folder that holds (or will hold) the destination.
    pub parent: PathBuf,
    /// The destination's name in `parent`.
    pub name: OsString,
}

impl Destination {
    /// Resolves `dst`. Its parent folder must exist; `dst` itself need not, unless it
    /// ends in `.` or `..` (which only an existing folder can).
    pub fn resolve(dst: &Path) -> Result<Destination> {
        let unusable = |problem: String| Error::DestinationUnusable {
            dst: dst.to_path_buf(),
            problem,
        };
        if dst.as_os_str().is_empty() {
            return Err(unusable("the path is empty".into()));
        }
        if let Some(Component::Normal(name)) = dst.components().next_back() {
            let parent = orient_inspect::checkpoint::parent_dir(dst);
            let problem =
                |what: &str| format!("the folder {} that should hold it {what}", parent.display());
            let parent_c = parent.canonicalize().map_err(|e| {
                unusable(match e.kind() {
                    ErrorKind::NotFound => problem("does not exist"),
                    ErrorKind::NotADirectory => problem("is not a folder"),
                    _ => problem(&format!("cannot be resolved ({e})")),
                })
            })?;
            if !parent_c.is_dir() {
                return Err(unusable(problem("is not a folder")));
            }
            return Ok(Destination {
                given: dst.to_path_buf(),
                parent: parent_c,
                name: name.to_os_string(),
            });
        }
        // `.`, `..`, `a/..`, `/`: only the resolved path says which folder is meant.
        let full = dst.canonicalize().map_err(io("resolve", dst))?;
        match (full.parent(), full.file_name()) {
            (Some(parent), Some(name)) => Ok(Destination {
                given: dst.to_path_buf(),
                parent: parent.to_path_buf(),
                name: name.to_os_string(),
            }),
            _ => Err(unusable(
                "it has no parent folder to stage the output in".into(),
            )),
        }
    }

    /// The destination as a path: the canonical parent joined with the name.
    pub fn path(&self) -> PathBuf {
        self.parent.join(&self.name)
    }
}

/// Refuses a destination that is, lies inside or contains `input` (a folder or an index
/// stands for its whole folder, any other file for itself), or holds a file that a link
/// in that folder leads to, then applies [`check_overwrite`]. Returns the resolved
/// destination.
pub fn check_destination(input: &Path, dst: &Path, force: bool) -> Result<Destination> {
    let input_c = input.canonicalize().map_err(io("resolve", input))?;
    let area = if input_c.is_dir() {
        input_c.clone()
    } else if input_c
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"))
    {
        input_c
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(input_c.clone())
    } else {
        input_c.clone()
    };
    let target = Destination::resolve(dst)?;
    // An existing destination (or a link) is compared where it really is.
    let dst_c = target
        .path()
        .canonicalize()
        .unwrap_or_else(|_| target.path());
    let relation = if dst_c == input_c || dst_c == area {
        Some("is")
    } else if dst_c.starts_with(&area) {
        Some("lies inside")
    } else if input_c.starts_with(&dst_c) {
        Some("contains")
    } else if linked_files(&area).iter().any(|f| f.starts_with(&dst_c)) {
        // A model folder of links (the Hugging Face cache): the files it reads.
        Some("holds files linked from")
    } else {
        None
    };
    if let Some(relation) = relation {
        return Err(Error::DestinationOverlapsSource {
            src: input.to_path_buf(),
            dst: dst.to_path_buf(),
            relation,
        });
    }
    check_overwrite(&target, force)?;
    Ok(target)
}

/// Where the links directly inside `folder` lead (nothing for a file).
fn linked_files(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .filter_map(|e| e.path().canonicalize().ok())
        .collect()
}

/// Refuses an existing destination without `force`, and with it anything but a folder
/// holding only what a checkpoint writer puts there (see [`is_checkpoint_file`]). The
/// current folder and its ancestors are refused either way.
pub fn check_overwrite(dst: &Destination, force: bool) -> Result<()> {
    let path = dst.path();
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspect", &path)(e)),
    };
    let refuse = |reason: String| Error::DestinationNotReplaceable {
        dst: dst.given.clone(),
        reason,
    };
    if let (Ok(cwd), Ok(full)) = (
        std::env::current_dir().and_then(|c| c.canonicalize()),
        path.canonicalize(),
    ) {
        if cwd == full {
            return Err(refuse("it is the current folder".into()));
        }
        if cwd.starts_with(&full) {
            return Err(refuse("it contains the current folder".into()));
        }
    }
    if !force {
        return Err(Error::DestinationExists(dst.given.clone()));
    }
    if meta.file_type().is_symlink() {
        return Err(refuse(
            "it is a symbolic link, and replacing it would replace the link, not the folder \
             it points to; give that folder instead"
                .into(),
        ));
    }
    if !meta.is_dir() {
        return Err(refuse("it is a file, not a checkpoint folder".into()));
    }
    let mut unrelated = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(io("list", &path))? {
        let entry = entry.map_err(io("list", &path))?;
        let name = entry.file_name();
        let is_dir = entry
            .file_type()
            .map_err(io("inspect", entry.path()))?
            .is_dir();
        let name_str = name.to_str();
        if is_dir || !name_str.is_some_and(is_checkpoint_file) {
            let mut shown = printable(&name);
            if is_dir {
                shown.push('/');
            }
            unrelated.push(shown);
        }
    }
    if unrelated.is_empty() {
        return Ok(());
    }
    unrelated.sort();
    let n = unrelated.len();
    let mut list = unrelated
        .iter()
        .take(LISTED)
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if n > LISTED {
        list.push_str(&format!(" and {} more", n - LISTED));
    }
    Err(refuse(format!(
        "it also holds {list}, which {} not part of a checkpoint and would be deleted; \
         --force only replaces a previous checkpoint (model*.safetensors, its index, config \
         and tokenizer files): move {} away or choose another destination",
        if n == 1 { "is" } else { "are" },
        if n == 1 { "it" } else { "them" },
    )))
}

/// True for the names a checkpoint writer puts into its output folder: the single file,
/// the shards and their index, the companion files copied beside them (config,
/// generation and tokenizer files).
pub fn is_checkpoint_file(name: &str) -> bool {
    name == SINGLE_FILE
        || name == INDEX_FILE
        || COMPANION_FILES.contains(&name)
        || is_shard_name(name)
}

/// `model-00001-of-00004.safetensors`.
fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    rest.split_once("-of-")
        .is_some_and(|(k, n)| digits(k) && digits(n))
}

/// A file name for a message: control characters escaped, invalid UTF-8 replaced.
fn printable(name: &OsStr) -> String {
    name.to_string_lossy()
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shard_and_companion_names_are_checkpoint_files() {
        for ok in [
            "model.safetensors",
            "model-00001-of-00003.safetensors",
            "model-100000-of-100000.safetensors",
            "model.safetensors.index.json",
            "config.json",
            "tokenizer.json",
        ] {
            assert!(is_checkpoint_file(ok), "{ok}");
        }
        for bad in [
            "notes.txt",
            "reference.safetensors",
            "model-1-of-.safetensors",
            "model-a-of-2.safetensors",
            "pytorch_model.bin",
            "flax_model.msgpack",
            ".bashrc",
        ] {
            assert!(!is_checkpoint_file(bad), "{bad}");
        }
    }

    #[test]
    fn force_replaces_only_a_previous_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        std::fs::create_dir(&dst).unwrap();
        let d = Destination::resolve(&dst).unwrap();
        // Empty, or only checkpoint files: replaceable with force, never without.
        assert!(matches!(
            check_overwrite(&d, false),
            Err(Error::DestinationExists(_))
        ));
        check_overwrite(&d, true).unwrap();
        for f in [
            "model.safetensors",
            "config.json",
            "model.safetensors.index.json",
        ] {
            std::fs::write(dst.join(f), b"x").unwrap();
        }
        check_overwrite(&d, true).unwrap();
        // Anything else is named.
        std::fs::write(dst.join("notes.txt"), b"mine").unwrap();
        std::fs::create_dir(dst.join("config.json.d")).unwrap();
        let err = check_overwrite(&d, true).unwrap_err().to_string();
        assert!(err.contains("`config.json.d/`, `notes.txt`"), "{err}");
        assert!(err.contains("would be deleted"), "{err}");
        // A file, a link.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = check_overwrite(&Destination::resolve(&file).unwrap(), true).unwrap_err();
        assert!(err.to_string().contains("is a file"), "{err}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dst, &link).unwrap();
        let err = check_overwrite(&Destination::resolve(&link).unwrap(), true).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn dot_and_dotdot_resolve_to_real_names() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("a");
        std::fs::create_dir(&sub).unwrap();
        let d = Destination::resolve(&sub.join("..")).unwrap();
        assert_eq!(d.path(), tmp.path().canonicalize().unwrap());
        let d = Destination::resolve(&sub.join(".")).unwrap();
        assert_eq!(d.name, "a");
        let err = Destination::resolve(&tmp.path().join("missing/out")).unwrap_err();
        assert!(
            err.to_string()
                .contains("missing that should hold it does not exist"),
            "{err}"
        );
        let err = Destination::resolve(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("no parent folder"), "{err}");
    }
}
