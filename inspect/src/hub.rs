//! Models named by repo id (`ORG/NAME`), found in the local Hugging Face hub cache. Never
//! downloads.
//!
//! Why: people who convert checkpoints keep them where `huggingface_hub` put them, and name them
//! by repo id. The cache layout is `models--ORG--NAME/` holding `blobs/` (the files, named by
//! hash), `refs/REV` (a branch or tag: a file holding a commit hash) and `snapshots/COMMIT/`
//! (the repo's files at that commit, as relative links into `../../blobs/`). A snapshot folder
//! is read like any model folder (see [`crate::checkpoint`]).
//!
//! The cache folder is found as `huggingface_hub` finds it: `$HF_HUB_CACHE`, else the legacy
//! `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub` (an empty variable counts as unset; a leading `~/` is expanded, as
//! Python's `expanduser` does). A revision is looked up as `huggingface_hub`'s
//! `try_to_load_from_cache` does: a ref of that name gives the commit, else the revision is a
//! commit itself (here also a unique prefix of at least 7 hex digits).
//!
//! When the repo or the revision is not cached, the error says what *is* there: repos with a
//! similar name, or the refs and snapshots of the repo. Every name read from the cache (a ref's
//! content, a folder name) is checked to be a plain path component before it is joined to a path.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Shortest commit prefix accepted as a revision.
pub const MIN_COMMIT_PREFIX: usize = 7;
/// Most nearby repos an error lists.
pub const MAX_NEARBY: usize = 5;
/// Most refs or snapshots an error lists.
const MAX_LISTED: usize = 12;
/// Refs read from one repo at most (a hostile cache cannot make a listing unbounded).
const MAX_REFS: usize = 1000;

/// A hub repo id, `ORG/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoId {
    /// The user or organization.
    pub org: String,
    /// The repo name.
    pub name: String,
}

impl RepoId {
    /// Parses `ORG/NAME` with the hub's rules for each part: 1–96 characters among ASCII letters,
    /// digits, `-`, `_` and `.`; not starting or ending with `-` or `.`; no `--` and no `..`.
    /// Anything else (a path with more or fewer parts, an absolute path, `./x`) is `None`.
    pub fn parse(s: &str) -> Option<RepoId> {
        let (org, name) = s.split_once('/')?;
        (valid_part(org) && valid_part(name)).then(|| RepoId {
            org: org.to_string(),
            name: name.to_string(),
        })
    }

    /// The repo's folder in the cache: `models--ORG--NAME`.
    pub fn folder_name(&self) -> String {
        format!("models--{}--{}", self.org, self.name)
    }

    /// The repo id of a cache folder name `models--ORG--NAME`.
    pub fn from_folder_name(folder: &str) -> Option<RepoId> {
        let rest = folder.strip_prefix("models--")?;
        let (org, name) = rest.split_once("--")?;
        RepoId::parse(&format!("{org}/{name}"))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

fn valid_part(p: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !p.is_empty()
        && p.len() <= 96
        && p.chars().all(ok_char)
        && !p.starts_with(['-', '.'])
        && !p.ends_with(['-', '.'])
        && !p.contains("--")
        && !p.contains("..")
}

/// A model named on a command line as `ORG/NAME` or `ORG/NAME@REV`: the repo id and the revision
/// written after `@`, if any. `None` when `s` is not of that form.
pub fn parse_model_ref(s: &str) -> Option<(RepoId, Option<String>)> {
    match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => RepoId::parse(id).map(|r| (r, Some(rev.to_string()))),
        Some(_) => None,
        None => RepoId::parse(s).map(|r| (r, None)),
    }
}

/// Which setting chose the cache folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFrom {
    /// `$HF_HUB_CACHE`.
    HfHubCache,
    /// `$HUGGINGFACE_HUB_CACHE` (the legacy name).
    HuggingfaceHubCache,
    /// `$HF_HOME/hub`.
    HfHome,
    /// `$XDG_CACHE_HOME/huggingface/hub`.
    XdgCacheHome,
    /// `~/.cache/huggingface/hub`.
    Home,
    /// Given explicitly by the caller.
    Explicit,
}

impl fmt::Display for CacheFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheFrom::HfHubCache => "$HF_HUB_CACHE",
            CacheFrom::HuggingfaceHubCache => "$HUGGINGFACE_HUB_CACHE",
            CacheFrom::HfHome => "$HF_HOME/hub",
            CacheFrom::XdgCacheHome => "$XDG_CACHE_HOME/huggingface/hub",
            CacheFrom::Home => "~/.cache/huggingface/hub",
            CacheFrom::Explicit => "given",
        })
    }
}

/// A ref of a cached repo and the commit it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRef {
    /// The ref's name (`main`, `v1.0`, `refs/pr/1`).
    pub name: String,
    /// The commit it points to.
    pub commit: String,
}

/// Why a model cannot be found in the cache.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No variable names a cache folder and there is no home folder to default to.
    #[error("cannot locate the Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME or HOME is set")]
    NoCacheLocation,
    /// The cache folder does not exist.
    #[error("the Hugging Face cache {} ({from}) does not exist; orient never downloads: fetch the model first (e.g. `hf download {repo}`), or give a local path", root.display())]
    NoCache {
        /// The cache folder.
        root: PathBuf,
        /// Which setting chose it.
        from: CacheFrom,
        /// The repo asked for.
        repo: Box<RepoId>,
    },
    /// The repo is not in the cache.
    #[error("{repo} is not in the Hugging Face cache {} ({from}); orient never downloads. {}", root.display(), describe_nearby(nearby, *cached, *similar))]
    RepoNotCached {
        /// The repo asked for.
        repo: Box<RepoId>,
        /// The cache folder.
        root: PathBuf,
        /// Which setting chose it.
        from: CacheFrom,
        /// Cached repos with a similar name, nearest first (or a few others when none is similar).
        nearby: Vec<RepoId>,
        /// How many model repos the cache holds.
        cached: usize,
        /// True when `nearby` holds similar names, false when it holds arbitrary examples.
        similar: bool,
    },
    /// The repo is cached, but not at this revision.
    #[error("{repo}: revision `{revision}` is not in the cache ({}); {}", repo_dir.display(), describe_revisions(refs, snapshots))]
    RevisionNotCached {
        /// The repo.
        repo: Box<RepoId>,
        /// The revision asked for.
        revision: String,
        /// The repo's folder.
        repo_dir: PathBuf,
        /// Its refs.
        refs: Vec<CachedRef>,
        /// Its snapshot folders (commits).
        snapshots: Vec<String>,
    },
    /// A ref names a commit whose snapshot folder is missing (an interrupted download).
    #[error("{repo}: ref `{revision}` points to commit {commit}, but {} does not exist (an interrupted download?); {}", snapshot.display(), describe_revisions(&[], snapshots))]
    SnapshotMissing {
        /// The repo.
        repo: Box<RepoId>,
        /// The ref.
        revision: String,
        /// The commit it names.
        commit: String,
        /// The missing folder.
        snapshot: PathBuf,
        /// The snapshot folders that exist.
        snapshots: Vec<String>,
    },
    /// A commit prefix matches several snapshots.
    #[error("{repo}: revision `{revision}` matches several cached commits ({}); give more digits", candidates.join(", "))]
    AmbiguousCommit {
        /// The repo.
        repo: Box<RepoId>,
        /// The prefix given.
        revision: String,
        /// The commits it matches.
        candidates: Vec<String>,
    },
    /// A revision that is not a relative ref name (`..`, an absolute path, an empty part).
    #[error("revision `{revision}` is not a valid ref name or commit")]
    InvalidRevision {
        /// The revision as given.
        revision: String,
    },
    /// A ref file whose content is not a plain commit name.
    #[error("{}: the ref does not hold a commit name (found {content:?}); refusing to follow it", path.display())]
    BadRef {
        /// The ref file.
        path: PathBuf,
        /// What it holds (truncated).
        content: String,
    },
    /// The operating system refused to read the cache.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn describe_nearby(nearby: &[RepoId], cached: usize, similar: bool) -> String {
    let list = nearby
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let more = if cached > nearby.len() { ", …" } else { "" };
    match (cached, similar) {
        (0, _) => "The cache holds no model repos.".to_string(),
        (n, true) => format!("Cached repos with a similar name ({n} model repos in all): {list}"),
        (n, false) => format!("None of its {n} model repos has a similar name: {list}{more}"),
    }
}

fn describe_revisions(refs: &[CachedRef], snapshots: &[String]) -> String {
    let mut parts = Vec::new();
    if !refs.is_empty() {
        let shown: Vec<String> = refs
            .iter()
            .take(MAX_LISTED)
            .map(|r| format!("{} → {}", r.name, short(&r.commit)))
            .collect();
        let more = refs.len().saturating_sub(MAX_LISTED);
        parts.push(format!(
            "refs: {}{}",
            shown.join(", "),
            if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            }
        ));
    }
    if snapshots.is_empty() {
        parts.push("no snapshots".to_string());
    } else {
        let shown: Vec<&str> = snapshots
            .iter()
            .take(MAX_LISTED)
            .map(|s| short(s))
            .collect();
        let more = snapshots.len().saturating_sub(MAX_LISTED);
        parts.push(format!(
            "snapshots: {}{}",
            shown.join(", "),
            if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            }
        ));
    }
    format!("cached: {}", parts.join("; "))
}

/// The first 12 characters of a commit (what the hub shows).
fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// A cached snapshot: where a repo's files are at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The repo.
    pub repo: RepoId,
    /// The revision asked for (`main` by default).
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// The snapshot folder, `.../models--ORG--NAME/snapshots/COMMIT`.
    pub path: PathBuf,
}

/// The local hub cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    /// The cache folder (holding `models--ORG--NAME/` folders).
    pub root: PathBuf,
    /// Which setting chose it.
    pub from: CacheFrom,
}

/// The revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

impl HubCache {
    /// The cache this process's environment names (see the module docs for the order).
    pub fn from_env() -> Result<HubCache, HubError> {
        HubCache::from_vars(|k| std::env::var_os(k))
    }

    /// The cache that the variables `var` returns name, in `huggingface_hub`'s order; `HOME` is
    /// read through `var` too, so tests need not touch the process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<HubCache, HubError> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let home = get("HOME").map(PathBuf::from);
        let expand = |v: OsString| -> PathBuf {
            match (v.to_str().and_then(|s| s.strip_prefix("~/")), &home) {
                (Some(rest), Some(h)) => h.join(rest),
                _ => PathBuf::from(v),
            }
        };
        let at = |root: PathBuf, from| Ok(HubCache { root, from });
        if let Some(v) = get("HF_HUB_CACHE") {
            return at(expand(v), CacheFrom::HfHubCache);
        }
        if let Some(v) = get("HUGGINGFACE_HUB_CACHE") {
            return at(expand(v), CacheFrom::HuggingfaceHubCache);
        }
        if let Some(v) = get("HF_HOME") {
            return at(expand(v).join("hub"), CacheFrom::HfHome);
        }
        if let Some(v) = get("XDG_CACHE_HOME") {
            return at(expand(v).join("huggingface/hub"), CacheFrom::XdgCacheHome);
        }
        match home {
            Some(h) => at(h.join(".cache/huggingface/hub"), CacheFrom::Home),
            None => Err(HubError::NoCacheLocation),
        }
    }

    /// A cache at a given folder.
    pub fn at(root: impl Into<PathBuf>) -> HubCache {
        HubCache {
            root: root.into(),
            from: CacheFrom::Explicit,
        }
    }

    /// The snapshot folder of `repo` at `revision` (`main` when `None`). Reads refs and lists
    /// folders; never touches the network.
    pub fn resolve(&self, repo: &RepoId, revision: Option<&str>) -> Result<Snapshot, HubError> {
        let revision = revision.unwrap_or(DEFAULT_REVISION);
        if !valid_revision(revision) {
            return Err(HubError::InvalidRevision {
                revision: revision.to_string(),
            });
        }
        if !self.root.is_dir() {
            return Err(HubError::NoCache {
                root: self.root.clone(),
                from: self.from,
                repo: Box::new(repo.clone()),
            });
        }
        let repo_dir = self.root.join(repo.folder_name());
        if !repo_dir.is_dir() {
            let cached = self.repos()?;
            let (nearby, similar) = nearby(repo, &cached);
            return Err(HubError::RepoNotCached {
                repo: Box::new(repo.clone()),
                root: self.root.clone(),
                from: self.from,
                nearby,
                cached: cached.len(),
                similar,
            });
        }
        let snapshots_dir = repo_dir.join("snapshots");
        let snapshots = list_snapshots(&snapshots_dir)?;
        let found = |commit: String| Snapshot {
            repo: repo.clone(),
            revision: revision.to_string(),
            path: snapshots_dir.join(&commit),
            commit,
        };
        let ref_file = repo_dir.join("refs").join(revision);
        if ref_file.is_file() {
            let commit = read_ref(&ref_file)?;
            if snapshots.contains(&commit) {
                return Ok(found(commit));
            }
            return Err(HubError::SnapshotMissing {
                repo: Box::new(repo.clone()),
                revision: revision.to_string(),
                snapshot: snapshots_dir.join(&commit),
                commit,
                snapshots,
            });
        }
        if snapshots.iter().any(|s| s == revision) {
            return Ok(found(revision.to_string()));
        }
        let hex =
            revision.len() >= MIN_COMMIT_PREFIX && revision.bytes().all(|b| b.is_ascii_hexdigit());
        if hex {
            let lower = revision.to_ascii_lowercase();
            let matches: Vec<&String> =
                snapshots.iter().filter(|s| s.starts_with(&lower)).collect();
            match matches.as_slice() {
                [one] => return Ok(found((*one).clone())),
                [] => {}
                many => {
                    return Err(HubError::AmbiguousCommit {
                        repo: Box::new(repo.clone()),
                        revision: revision.to_string(),
                        candidates: many.iter().map(|s| s.to_string()).collect(),
                    })
                }
            }
        }
        Err(HubError::RevisionNotCached {
            repo: Box::new(repo.clone()),
            revision: revision.to_string(),
            refs: list_refs(&repo_dir.join("refs"))?,
            snapshots,
            repo_dir,
        })
    }

    /// Every model repo in the cache (folders `models--ORG--NAME`), sorted.
    pub fn repos(&self) -> Result<Vec<RepoId>, HubError> {
        let entries = read_dir(&self.root)?;
        let mut out: Vec<RepoId> = entries
            .into_iter()
            .filter(|(_, is_dir)| *is_dir)
            .filter_map(|(name, _)| RepoId::from_folder_name(&name))
            .collect();
        out.sort();
        Ok(out)
    }
}

/// A revision is joined below `refs/`: it must be a relative path of plain components.
fn valid_revision(rev: &str) -> bool {
    !rev.is_empty()
        && !rev.contains('\\')
        && !rev.contains('\0')
        && rev
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// A ref file's commit: one line, a plain path component.
fn read_ref(path: &Path) -> Result<String, HubError> {
    let bytes = fs::read(path).map_err(|source| HubError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let commit = text.trim();
    let plain = !commit.is_empty()
        && commit.len() <= 128
        && commit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Ok(commit.to_string())
    } else {
        Err(HubError::BadRef {
            path: path.to_path_buf(),
            content: text.chars().take(80).collect(),
        })
    }
}

/// `(name, is a folder)` of a folder's entries, following links; a missing folder is empty.
fn read_dir(dir: &Path) -> Result<Vec<(String, bool)>, HubError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(HubError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| HubError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path().is_dir()));
        }
    }
    Ok(out)
}

fn list_snapshots(dir: &Path) -> Result<Vec<String>, HubError> {
    let mut out: Vec<String> = read_dir(dir)?
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect();
    out.sort();
    Ok(out)
}

/// Every ref below `refs/` (nested, as `refs/pr/1`), with its commit; unreadable refs skipped.
fn list_refs(dir: &Path) -> Result<Vec<CachedRef>, HubError> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for (name, is_dir) in read_dir(&d)? {
            if out.len() >= MAX_REFS {
                break;
            }
            let full = format!("{prefix}{name}");
            let path = d.join(&name);
            if is_dir {
                // Depth is bounded by the path length the OS accepts; a link loop is not
                // followed twice because `refs` folders hold files written by huggingface_hub.
                if prefix.matches('/').count() < 8 {
                    stack.push((path, format!("{full}/")));
                }
            } else if let Ok(commit) = read_ref(&path) {
                out.push(CachedRef { name: full, commit });
            }
        }
    }
    out.sort_by(|a, b| {
        (a.name != DEFAULT_REVISION, &a.name).cmp(&(b.name != DEFAULT_REVISION, &b.name))
    });
    Ok(out)
}

/// Cached repos whose names are near `want`, nearest first, and whether they are similar at all
/// (when none is, up to [`MAX_NEARBY`] cached repos are returned as examples).
pub fn nearby(want: &RepoId, cached: &[RepoId]) -> (Vec<RepoId>, bool) {
    let w_full = want.to_string().to_ascii_lowercase();
    let w_name = want.name.to_ascii_lowercase();
    let mut scored: Vec<(usize, &RepoId)> = cached
        .iter()
        .filter_map(|r| {
            let full = r.to_string().to_ascii_lowercase();
            let name = r.name.to_ascii_lowercase();
            let d_full = levenshtein(&w_full, &full);
            let d_name = levenshtein(&w_name, &name);
            let contains = w_name.len() >= 3
                && name.len() >= 3
                && (name.contains(&w_name) || w_name.contains(&name));
            // Same family: `Qwen2-0.5B` and `Qwen2-0.5B-Instruct`, `Tiny-Modle` and `Tiny-Model-X`.
            let prefix = w_name
                .bytes()
                .zip(name.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            let family = prefix >= (w_name.len() * 3 / 5).max(4);
            let similar = d_full <= (w_full.len() / 4).max(2)
                || d_name <= (w_name.len() / 4).max(2)
                || contains
                || family;
            similar.then_some((d_full.min(d_name), r))
        })
        .collect();
    scored.sort();
    let similar: Vec<RepoId> = scored
        .into_iter()
        .take(MAX_NEARBY)
        .map(|(_, r)| r.clone())
        .collect();
    if similar.is_empty() {
        (cached.iter().take(MAX_NEARBY).cloned().collect(), false)
    } else {
        (similar, true)
    }
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by character.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(s: &str) -> RepoId {
        RepoId::parse(s).unwrap()
    }

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        assert_eq!(
            id("Qwen/Qwen2-0.5B").folder_name(),
            "models--Qwen--Qwen2-0.5B"
        );
        assert_eq!(
            RepoId::from_folder_name("models--meta-llama--Llama-3.1-8B"),
            Some(id("meta-llama/Llama-3.1-8B"))
        );
        for bad in [
            "gpt2",
            "a/b/c",
            "/abs/x",
            "./x",
            "../x",
            "a/",
            "/a",
            "a/-b",
            "a/b.",
            "a/b--c",
            "a/b..c",
            "a b/c",
            "tests/fixtures/",
            "",
        ] {
            assert_eq!(RepoId::parse(bad), None, "{bad}");
        }
        assert_eq!(RepoId::from_folder_name("datasets--a--b"), None);
        assert_eq!(
            parse_model_ref("Qwen/Qwen2@v1.0"),
            Some((id("Qwen/Qwen2"), Some("v1.0".into())))
        );
        assert_eq!(parse_model_ref("Qwen/Qwen2@"), None);
        assert_eq!(
            parse_model_ref("Qwen/Qwen2"),
            Some((id("Qwen/Qwen2"), None))
        );
    }

    #[test]
    fn cache_location_follows_huggingface_hub() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let c = HubCache::from_vars(vars(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")])).unwrap();
        assert_eq!(
            (c.root, c.from),
            (PathBuf::from("/c"), CacheFrom::HfHubCache)
        );
        let c = HubCache::from_vars(vars(&[("HF_HUB_CACHE", ""), ("HF_HOME", "/h")])).unwrap();
        assert_eq!(
            (c.root, c.from),
            (PathBuf::from("/h/hub"), CacheFrom::HfHome)
        );
        let c = HubCache::from_vars(vars(&[("HUGGINGFACE_HUB_CACHE", "/l"), ("HF_HOME", "/h")]))
            .unwrap();
        assert_eq!(c.root, PathBuf::from("/l"));
        let c =
            HubCache::from_vars(vars(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/home/u")])).unwrap();
        assert_eq!(c.root, PathBuf::from("/x/huggingface/hub"));
        let c = HubCache::from_vars(vars(&[("HF_HOME", "~/hf"), ("HOME", "/home/u")])).unwrap();
        assert_eq!(c.root, PathBuf::from("/home/u/hf/hub"));
        let c = HubCache::from_vars(vars(&[("HOME", "/home/u")])).unwrap();
        assert_eq!(
            (c.root, c.from),
            (
                PathBuf::from("/home/u/.cache/huggingface/hub"),
                CacheFrom::Home
            )
        );
        assert!(matches!(
            HubCache::from_vars(vars(&[])),
            Err(HubError::NoCacheLocation)
        ));
    }

    #[test]
    fn revisions_cannot_leave_refs() {
        for bad in [
            "",
            "..",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a//b",
            "a\\b",
            "./a",
        ] {
            assert!(!valid_revision(bad), "{bad}");
        }
        for good in ["main", "v1.0", "refs/pr/1", "0123456789abcdef"] {
            assert!(valid_revision(good), "{good}");
        }
    }

    #[test]
    fn nearby_names_rank_by_distance() {
        let cached: Vec<RepoId> = [
            "Qwen/Qwen2-0.5B",
            "Qwen/Qwen2-1.5B",
            "meta-llama/Llama-3.1-8B",
            "openai-community/gpt2",
        ]
        .iter()
        .map(|s| id(s))
        .collect();
        let (near, similar) = nearby(&id("Qwen/Qwen2-0.5b"), &cached);
        assert!(similar);
        assert_eq!(near[0], id("Qwen/Qwen2-0.5B"));
        assert!(near.contains(&id("Qwen/Qwen2-1.5B")));
        assert!(!near.contains(&id("meta-llama/Llama-3.1-8B")));
        let (near, _) = nearby(&id("someone/gpt2"), &cached);
        assert_eq!(near, vec![id("openai-community/gpt2")]);
        let (near, similar) = nearby(&id("x/zzzzzzzzzzzz"), &cached);
        assert!(!similar);
        assert_eq!(near.len(), 4);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }

    #[test]
    fn hostile_refs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--a--b");
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::create_dir_all(repo.join("snapshots")).unwrap();
        fs::write(repo.join("refs/main"), "../../../../etc").unwrap();
        let err = HubCache::at(dir.path())
            .resolve(&id("a/b"), None)
            .unwrap_err();
        assert!(matches!(err, HubError::BadRef { .. }), "{err}");
        let err = HubCache::at(dir.path())
            .resolve(&id("a/b"), Some("../../x"))
            .unwrap_err();
        assert!(matches!(err, HubError::InvalidRevision { .. }), "{err}");
    }
}
