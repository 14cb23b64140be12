//! How much memory a forward will need, and how much the machine has, decided before the
//! first allocation.
//!
//! Why: a long prompt used to abort the whole process (SIGABRT on a 40 GB allocation) or wake
//! the OOM killer, after minutes of work. The forward's buffers are all known from the config,
//! the prompt length and the logits asked for, so the peak can be estimated up front and a
//! prompt that cannot fit refused with the numbers (weights working set, activations, logits,
//! attention scratch) instead. The estimate is deliberately a little pessimistic: it adds
//! every buffer alive in the heavier of the two phases (the layer loop, and the final norm
//! with the lm_head), and counts mapped weight pages, which the kernel reports in RSS.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The estimated peak of one forward, in bytes, by what holds it. The phases are: gathering
/// the prompt's embedding rows (the table's pages mapped, the activations not yet written),
/// the layer loop, and the logits (the activation buffers freed, but possibly kept by the
/// allocator, so still counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Mapped weight pages resident at once, in the heaviest phase (the embedding table, a
    /// layer, or an lm_head block) plus the f32 buffer bf16/f16 weights are widened into.
    pub weights: u64,
    /// Activation buffers of the layer loop (`[T, width]` each) and the RoPE tables.
    pub activations: u64,
    /// The logits (`[positions, V]` f32) and the final norm output they are computed from.
    pub logits: u64,
    /// Attention scores, one `[query block, T]` tile per worker thread.
    pub attention: u64,
    /// Recorded hidden states (`verify`, `run --save`): `[T, H]` per stage.
    pub recorded: u64,
    /// The peak: recorded states plus the heaviest phase.
    pub total: u64,
}

/// Memory the process may still use, and where that bound comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Available {
    /// Bytes.
    pub bytes: u64,
    /// Where the number comes from, e.g. `MemAvailable in /proc/meminfo`.
    pub source: String,
}

/// `n` bytes for people: `1.5 GiB`, `12.0 MiB`, `512 B`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "about {} at its peak: weights {}, activations {}, logits {}, attention scratch {}",
            Bytes(self.total),
            Bytes(self.weights),
            Bytes(self.activations),
            Bytes(self.logits),
            Bytes(self.attention)
        )?;
        if self.recorded > 0 {
            write!(f, ", recorded hidden states {}", Bytes(self.recorded))?;
        }
        Ok(())
    }
}

/// The sizes the estimate is made of, in f32 elements unless named bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Footprint {
    /// Activation elements of the layer loop (every `[T, width]` buffer, RoPE tables).
    pub activations: u128,
    /// Attention score elements over all worker tiles.
    pub attention: u128,
    /// Elements of the final phase: final norm output, gathered rows, logits.
    pub logits: u128,
    /// Elements of the recorded hidden states.
    pub recorded: u128,
    /// Elements of the embedding output (the one buffer written while the rows are gathered).
    pub embedding_output: u128,
    /// Weight bytes resident while the embedding rows are gathered.
    pub weights_gather: u128,
    /// Weight bytes resident during the layer loop.
    pub weights_layers: u128,
    /// Weight bytes resident while the logits are computed.
    pub weights_final: u128,
}

/// What every forward holds besides its buffers: the binary and its libraries, thread stacks,
/// gemm's packing buffers, small vectors (norm weights, biases).
const BASE: u128 = 64 << 20;

impl Footprint {
    /// The estimate, saturating at `u64::MAX` (a size that large never fits anyway).
    pub(crate) fn estimate(&self) -> MemoryEstimate {
        let f = 4u128;
        let bytes = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
        let gather = self.weights_gather + f * self.embedding_output;
        let layers = self.weights_layers + f * (self.activations + self.attention);
        let last = self.weights_final + f * (self.activations + self.logits);
        let total = BASE + f * self.recorded + gather.max(layers).max(last);
        MemoryEstimate {
            weights: bytes(
                self.weights_gather
                    .max(self.weights_layers)
                    .max(self.weights_final),
            ),
            activations: bytes(f * self.activations),
            logits: bytes(f * self.logits),
            attention: bytes(f * self.attention),
            recorded: bytes(f * self.recorded),
            total: bytes(total),
        }
    }
}

/// The memory this process may still allocate: the smaller of `MemAvailable` and the room left
/// under the cgroup's limit (v2 `memory.max`, or v1 `memory.limit_in_bytes`), counting the
/// cgroup's inactive page cache as reclaimable. `None` when neither can be read (not Linux).
pub fn available() -> Option<Available> {
    let mut best: Option<Available> = None;
    let mut offer = |bytes: u64, source: String| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Available { bytes, source });
        }
    };
    if let Some(kib) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| meminfo_available_kib(&text))
    {
        offer(
            kib.saturating_mul(1024),
            "MemAvailable in /proc/meminfo".to_string(),
        );
    }
    for dir in cgroup_dirs() {
        if let Some((bytes, file)) = cgroup_room(&dir) {
            offer(
                bytes,
                format!("room under the cgroup limit in {}", file.display()),
            );
        }
    }
    best
}

/// `MemAvailable:` of `/proc/meminfo`, in KiB.
fn meminfo_available_kib(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The cgroup folders whose limits apply: this process's own (from `/proc/self/cgroup`) and
/// the mount root (what a container sees as its own).
fn cgroup_dirs() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") {
        for line in text.lines() {
            // v2: `0::/path`; v1: `N:memory:/path`
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
            let Some(path) = path else { continue };
            let rel = path.trim_start_matches('/');
            match controllers {
                Some("") => dirs.push(root.join(rel)),
                Some(c) if c.split(',').any(|c| c == "memory") => {
                    dirs.push(root.join("memory").join(rel));
                }
                _ => {}
            }
        }
    }
    dirs.push(root.to_path_buf());
    dirs.push(root.join("memory"));
    dirs.dedup();
    dirs
}

/// Bytes left under the limit of the cgroup folder `dir`, and the limit file, when it has one.
fn cgroup_room(dir: &Path) -> Option<(u64, PathBuf)> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let number = |text: Option<String>| text.and_then(|t| t.trim().parse::<u64>().ok());
    let stat_field = |text: &Option<String>, key: &str| -> u64 {
        text.as_deref()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok())?
                })
            })
            .unwrap_or(0)
    };
    // cgroup v2
    if let Some(limit) = read("memory.max") {
        let limit = limit.trim().parse::<u64>().ok()?; // "max": no limit here
        let usage = number(read("memory.current")).unwrap_or(0);
        let stat = read("memory.stat");
        let reclaimable = stat_field(&stat, "inactive_file");
        let room = limit.saturating_sub(usage.saturating_sub(reclaimable));
        return Some((room, dir.join("memory.max")));
    }
    // cgroup v1: an unlimited group reports a huge number (about 2^63)
    let limit = number(read("memory.limit_in_bytes"))?;
    if limit >= 1 << 62 {
        return None;
    }
    let usage = number(read("memory.usage_in_bytes")).unwrap_or(0);
    let stat = read("memory.stat");
    let reclaimable = stat_field(&stat, "total_inactive_file");
    let room = limit.saturating_sub(usage.saturating_sub(reclaimable));
    Some((room, dir.join("memory.limit_in_bytes")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(3 << 30).to_string(), "3.0 GiB");
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo_available_kib(text), Some(22_000_000));
        assert_eq!(meminfo_available_kib("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cgroup_v2_room_counts_inactive_cache_as_free() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "1000000\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "700000\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 500000\nfile 200000\ninactive_file 150000\n",
        )
        .unwrap();
        let (room, file) = cgroup_room(dir.path()).unwrap();
        assert_eq!(room, 1_000_000 - (700_000 - 150_000));
        assert!(file.ends_with("memory.max"));
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_room(dir.path()), None);
    }

    #[test]
    fn cgroup_v1_unlimited_is_no_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(cgroup_room(dir.path()), None);
        std::fs::write(dir.path().join("memory.limit_in_bytes"), "4096\n").unwrap();
        std::fs::write(dir.path().join("memory.usage_in_bytes"), "1024\n").unwrap();
        assert_eq!(cgroup_room(dir.path()).unwrap().0, 3072);
    }

    #[test]
    fn the_machine_reports_something() {
        // Linux CI: /proc/meminfo exists, so a bound is always found.
        if Path::new("/proc/meminfo").exists() {
            assert!(available().unwrap().bytes > 0);
        }
    }

    #[test]
    fn peak_is_the_heaviest_phase_plus_recorded_states() {
        let fp = Footprint {
            activations: 100,
            attention: 10,
            logits: 50,
            recorded: 7,
            embedding_output: 20,
            weights_gather: 500,
            weights_layers: 1000,
            weights_final: 3000,
        };
        let e = fp.estimate();
        assert_eq!(e.total, (BASE + 4 * 7 + 3000 + 4 * 150) as u64);
        assert_eq!(e.weights, 3000);
        assert_eq!(e.activations, 400);
        let gather_heavy = Footprint {
            weights_gather: 10_000,
            ..fp
        };
        assert_eq!(
            gather_heavy.estimate().total,
            (BASE + 4 * 7 + 10_000 + 4 * 20) as u64
        );
    }
}
