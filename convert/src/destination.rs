//! Where an output may be written, and the hidden folders that stage it.
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
//!   again right before the old folder is deleted);
//! - staging folders do not outlive their run. Each `.DST.orient-tmp-*` folder holds an
//!   owner record, `.orient-owner`: the owner's pid, for messages, and an exclusive
//!   `flock` held by the owner for as long as it runs. The kernel drops that lock when the
//!   process ends, however it ends, so a lock that can be taken means a dead owner, even
//!   if its pid has been reused since. A catchable signal removes the live folders
//!   ([`abandon_all`], driven by the binary's signal thread); what no handler sees
//!   (SIGKILL, a power loss) is found by the next run to the same destination
//!   ([`sweep_stale`]).

use std::ffi::{OsStr, OsString};
use std::fs::{File, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::convert::COMPANION_FILES;
use crate::error::{io, Error, Result};
use crate::writer::{INDEX_FILE, SINGLE_FILE};

/// The owner record inside every staging folder.
pub const OWNER_FILE: &str = ".orient-owner";
/// Between the destination's name and tempfile's random suffix in a staging folder's name.
const STAGING_TAG: &str = ".orient-tmp-";
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
/// generation and tokenizer files), a left-over owner record, and the manifest of a part
/// of a partitioned conversion.
pub fn is_checkpoint_file(name: &str) -> bool {
    name == SINGLE_FILE
        || name == INDEX_FILE
        || name == OWNER_FILE
        || name == crate::parts::MANIFEST_FILE
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

/// The staging folders of this process that are not committed yet.
#[derive(Debug)]
struct Registry {
    dirs: Vec<PathBuf>,
    /// Set by [`abandon_all`]: no staging folder may be created or committed any more.
    abandoned: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    dirs: Vec::new(),
    abandoned: false,
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A hidden folder beside a destination, owned by this process: it holds an owner record,
/// [`abandon_all`] knows it, and it is removed when dropped unless it was committed.
#[derive(Debug)]
pub struct OwnedDir {
    path: PathBuf,
    /// The owner record, open and locked while this process runs.
    _owner: File,
    /// Still ours to remove (not committed, not removed).
    live: bool,
}

impl OwnedDir {
    /// Creates `.NAME.orient-tmp-XXXXXX` in `parent`, with its owner record.
    pub fn create(parent: &Path, name: &OsStr) -> Result<OwnedDir> {
        OwnedDir::create_in(parent, name, &mut registry())
    }

    fn create_in(parent: &Path, name: &OsStr, reg: &mut Registry) -> Result<OwnedDir> {
        if reg.abandoned {
            return Err(Error::Interrupted);
        }
        let prefix = format!(".{}{STAGING_TAG}", name.to_string_lossy());
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(parent)
            .map_err(io("create a staging folder in", parent))?;
        // Until registered, `dir` removes itself on an error; the registry lock keeps the
        // signal thread out until then.
        let owner = write_owner(dir.path())?;
        let path = dir.keep();
        reg.dirs.push(path.clone());
        Ok(OwnedDir {
            path,
            _owner: owner,
            live: true,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// No longer ours: it was renamed into place, or is kept on purpose.
    fn forget(&mut self, reg: &mut Registry) {
        reg.dirs.retain(|d| d != &self.path);
        self.live = false;
    }

    /// Removes the folder and everything in it.
    fn discard(&mut self, reg: &mut Registry) {
        if self.live {
            remove_tree(&self.path);
            self.forget(reg);
        }
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        if self.live {
            self.discard(&mut registry());
        }
    }
}

/// Writes the owner record into `dir`, locked before it appears under its name (a
/// sweeper never sees it unlocked while its owner lives).
fn write_owner(dir: &Path) -> Result<File> {
    let tmp = dir.join(".orient-owner.new");
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    // A fresh file cannot be locked by anyone else. A filesystem without locks makes the
    // lock fail; then a sweeper cannot take it either, and leaves the folder alone.
    let _ = f.try_lock();
    writeln!(f, "orient staging folder\npid {}", std::process::id()).map_err(io("write", &tmp))?;
    let path = dir.join(OWNER_FILE);
    std::fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
    Ok(f)
}

/// Removes a folder tree, retrying a few times when a concurrent writer adds a file
/// between listing and removal. True when nothing is left.
fn remove_tree(path: &Path) -> bool {
    for _ in 0..50 {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
    false
}

/// Renames the staging folder `staged` onto `dst`. An existing destination needs
/// `replace`, and must still pass [`check_overwrite`]: it is moved aside into a folder of
/// its own, and removed only once the new output is in place. The whole step holds the
/// registry, so a signal arriving meanwhile waits for it to finish. On error `staged` is
/// removed and the destination is as it was.
pub fn commit(mut staged: OwnedDir, dst: &Destination, replace: bool, sync: bool) -> Result<()> {
    let mut reg = registry();
    let result = commit_locked(&mut staged, dst, replace, sync, &mut reg);
    if result.is_err() {
        staged.discard(&mut reg);
    }
    result
}

fn commit_locked(
    staged: &mut OwnedDir,
    dst: &Destination,
    replace: bool,
    sync: bool,
    reg: &mut Registry,
) -> Result<()> {
    if reg.abandoned {
        return Err(Error::Interrupted);
    }
    let path = dst.path();
    let mut old = None;
    if path.symlink_metadata().is_ok() {
        if !replace {
            return Err(Error::DestinationExists(dst.given.clone()));
        }
        check_overwrite(dst, true)?;
        let mut holder = OwnedDir::create_in(&dst.parent, &dst.name, reg)?;
        let aside = holder.path.join("old");
        if let Err(e) = std::fs::rename(&path, &aside) {
            holder.discard(reg);
            return Err(io("move aside", &path)(e));
        }
        old = Some(holder);
    }
    if let Err(e) = std::fs::rename(&staged.path, &path) {
        if let Some(mut holder) = old {
            if std::fs::rename(holder.path.join("old"), &path).is_ok() {
                holder.discard(reg);
            } else {
                // Keep the previous output where it is; without an owner record no
                // sweep will remove it, and the next run names the folder.
                let _ = std::fs::remove_file(holder.path.join(OWNER_FILE));
                holder.forget(reg);
            }
        }
        return Err(io("rename the finished output to", &path)(e));
    }
    staged.forget(reg);
    let _ = std::fs::remove_file(path.join(OWNER_FILE));
    if sync {
        if let Ok(d) = File::open(&dst.parent) {
            let _ = d.sync_all();
        }
    }
    if let Some(mut holder) = old {
        holder.discard(reg);
    }
    Ok(())
}

/// What [`abandon_all`] removed. It keeps every staging folder operation of this process
/// waiting for as long as it lives: exit the process while holding it.
#[derive(Debug)]
pub struct Abandoned {
    /// The staging folders removed.
    pub removed: Vec<PathBuf>,
    /// Staging folders that could not be removed.
    pub kept: Vec<PathBuf>,
    _hold: MutexGuard<'static, Registry>,
}

/// For a signal handler's thread: removes every staging folder of this process that is
/// not committed, and stops new ones from being created or committed. A commit in
/// progress is waited for (the output is then complete, and stays).
pub fn abandon_all() -> Abandoned {
    let mut reg = registry();
    reg.abandoned = true;
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    for dir in std::mem::take(&mut reg.dirs) {
        if remove_tree(&dir) {
            removed.push(dir);
        } else {
            kept.push(dir);
        }
    }
    Abandoned {
        removed,
        kept,
        _hold: reg,
    }
}

/// A staging folder of an earlier run found beside the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleStaging {
    /// The folder.
    pub path: PathBuf,
    /// The pid its owner record names, when it has one.
    pub pid: Option<u32>,
    /// What was done about it.
    pub state: StaleState,
}

/// What [`sweep_stale`] did about one staging folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleState {
    /// Its owner is gone: removed, freeing `bytes`.
    Removed {
        /// Bytes of the files removed.
        bytes: u64,
    },
    /// Its owner still runs: left alone.
    InUse,
    /// No owner record (an older orient made it, or a run died in the instant between
    /// creating it and recording its owner): left alone.
    NoOwnerRecord,
    /// Its owner could not be determined, or the removal failed: left (or partly left).
    Failed(String),
}

/// Looks for `.NAME.orient-tmp-*` folders beside `dst` and removes those whose owner
/// is gone (its lock can be taken). Folders whose owner runs, or that have no owner
/// record, are left and reported.
pub fn sweep_stale(dst: &Destination) -> Result<Vec<StaleStaging>> {
    let prefix = format!(".{}{STAGING_TAG}", dst.name.to_string_lossy());
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dst.parent).map_err(io("list", &dst.parent))? {
        let entry = entry.map_err(io("list", &dst.parent))?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix)
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        found.push(examine(&entry.path()));
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Decides about one staging folder, and removes it when its owner is gone.
fn examine(path: &Path) -> StaleStaging {
    let stale = |pid, state| StaleStaging {
        path: path.to_path_buf(),
        pid,
        state,
    };
    let mut owner = match File::open(path.join(OWNER_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return stale(None, StaleState::NoOwnerRecord),
        Err(e) => {
            return stale(
                None,
                StaleState::Failed(format!("cannot read its owner record: {e}")),
            )
        }
    };
    let mut text = String::new();
    let _ = Read::by_ref(&mut owner)
        .take(4096)
        .read_to_string(&mut text);
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("pid ").and_then(|p| p.trim().parse().ok()));
    match owner.try_lock() {
        Ok(()) => {
            let bytes = tree_bytes(path, 4);
            if remove_tree(path) {
                stale(pid, StaleState::Removed { bytes })
            } else {
                stale(pid, StaleState::Failed("it could not be removed".into()))
            }
        }
        Err(TryLockError::WouldBlock) => stale(pid, StaleState::InUse),
        Err(TryLockError::Error(e)) => stale(
            pid,
            StaleState::Failed(format!("cannot tell whether its owner still runs: {e}")),
        ),
    }
}

/// Disk bytes of the files under `path`, `depth` folders deep at most (staging holds files,
/// and a moved-aside destination one folder more).
fn tree_bytes(path: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => tree_bytes(&e.path(), depth - 1),
            // Blocks, not lengths: what removing them frees (outputs may be sparse).
            Ok(t) if t.is_file() => e.metadata().map(|m| m.blocks() * 512).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn shard_and_companion_names_are_checkpoint_files() {
        for ok in [
            "model.safetensors",
            "model-00001-of-00003.safetensors",
            "model-100000-of-100000.safetensors",
            "model.safetensors.index.json",
            "config.json",
            "tokenizer.json",
            OWNER_FILE,
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
    fn a_committed_folder_replaces_the_old_one_and_leaves_no_owner_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("out");
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(dst.join("model.safetensors"), b"old").unwrap();
        let d = Destination::resolve(&dst).unwrap();
        let staged = OwnedDir::create(&d.parent, &d.name).unwrap();
        assert_eq!(names(staged.path()), [OWNER_FILE]);
        std::fs::write(staged.path().join("model.safetensors"), b"new").unwrap();
        let err = commit(
            OwnedDir::create(&d.parent, &d.name).unwrap(),
            &d,
            false,
            false,
        )
        .unwrap_err();
        assert!(matches!(err, Error::DestinationExists(_)), "{err}");
        commit(staged, &d, true, false).unwrap();
        assert_eq!(names(&dst), ["model.safetensors"]);
        assert_eq!(
            std::fs::read(dst.join("model.safetensors")).unwrap(),
            b"new"
        );
        assert_eq!(names(tmp.path()), ["out"]);
    }

    #[test]
    fn the_sweep_removes_dead_owners_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Destination::resolve(&tmp.path().join("out")).unwrap();
        // A live one: ours, locked.
        let live = OwnedDir::create(&d.parent, &d.name).unwrap();
        // A dead one: an owner record nobody locks.
        let dead = tmp.path().join(".out.orient-tmp-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(
            dead.join(OWNER_FILE),
            "orient staging folder\npid 4000000\n",
        )
        .unwrap();
        std::fs::write(dead.join("model.safetensors"), vec![0u8; 1000]).unwrap();
        // One without a record, and one for another destination.
        std::fs::create_dir(tmp.path().join(".out.orient-tmp-old")).unwrap();
        std::fs::create_dir(tmp.path().join(".outer.orient-tmp-x")).unwrap();
        let on_disk: u64 = [OWNER_FILE, "model.safetensors"]
            .iter()
            .map(|f| std::fs::metadata(dead.join(f)).unwrap().blocks() * 512)
            .sum();
        let found = sweep_stale(&d).unwrap();
        let by = |p: &Path| found.iter().find(|s| s.path == p).unwrap().clone();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            by(&dead),
            StaleStaging {
                path: dead.clone(),
                pid: Some(4_000_000),
                state: StaleState::Removed { bytes: on_disk }
            }
        );
        assert_eq!(by(live.path()).state, StaleState::InUse);
        assert_eq!(by(live.path()).pid, Some(std::process::id()));
        assert_eq!(
            by(&tmp.path().join(".out.orient-tmp-old")).state,
            StaleState::NoOwnerRecord
        );
        assert!(!dead.exists());
        assert!(live.path().exists());
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists());
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
