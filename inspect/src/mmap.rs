//! The memory maps behind a [`Checkpoint`](crate::Checkpoint), and what happens when a
//! mapped file changes underneath the process.
//!
//! Why memory maps: a 15 GB checkpoint is read without copying it into the heap, the
//! kernel's page cache is shared with every other reader, and `inspect` touches headers
//! only. The price is a contract that no type can enforce: **the file must not shrink
//! while it is mapped**. Touching a mapped page that now lies past the end of the file
//! raises SIGBUS, which by default kills the process without a word — a download that
//! restarts, a job that rewrites the checkpoint, `truncate` by hand. A verifier must end
//! in an error naming the file instead, and `convert` must get the chance to remove its
//! staging folder.
//!
//! How that is kept (Linux; elsewhere only the checks below run):
//! - every map made here is recorded in a fixed table of atomics (start, length, a
//!   "faulted" flag), written when a map is made and when it is dropped;
//! - a process-wide SIGBUS handler, installed once with `sigaction(SA_SIGINFO)`, looks
//!   the faulting address up in that table. If it lies in one of our maps, the handler
//!   maps anonymous zero pages over the rest of that map (`mmap(MAP_FIXED)`, a plain
//!   system call, safe in a signal handler), sets the map's flag and returns: the
//!   interrupted read resumes and sees zeros. Any other SIGBUS goes to the handler that
//!   was there before (Rust's own, which reports stack overflows) or, without one, to
//!   the default action, so foreign faults still kill the process as they should;
//! - readers call [`GuardedMap::faulted`] (through `Checkpoint::check_intact`) at
//!   well-defined points — after each tensor of a conversion, after the forward, after
//!   `--stats` and `diff` — together with an `fstat` of the file's length and
//!   modification time, and turn a change into an error naming the file. Zeros read in
//!   the meantime never reach a result, because the check runs before any result is
//!   reported or committed.
//!
//! What this does not catch: a file rewritten in place with the same length within the
//! same mtime tick. Nothing short of copying the data can; the contract below says so.

use std::fs::File;
use std::io;
use std::ops::Deref;

use memmap2::Mmap;

/// A read-only map of a whole file, registered with the SIGBUS guard for its lifetime.
#[derive(Debug)]
pub struct GuardedMap {
    map: Mmap,
    /// Slot in the registry, or `None` when the guard is unavailable (not Linux, or an
    /// empty map).
    slot: Option<usize>,
}

impl GuardedMap {
    /// Maps `file` read-only and registers the map with the SIGBUS guard.
    ///
    /// # Safety
    /// The caller must hold `file` open read-only and accept the contract of the module:
    /// the bytes behind the returned slice belong to the file, not to this process. If
    /// another process **truncates** the file while it is mapped, reads past the new end
    /// return zeros instead of raising SIGBUS (on Linux; elsewhere the process is killed),
    /// and [`GuardedMap::faulted`] becomes true: the caller must check it (or compare the
    /// file's length) before trusting anything computed from the bytes. If another
    /// process **rewrites** the file in place, the slice changes under a shared borrow,
    /// which Rust's aliasing rules do not allow for; the values read are then garbage,
    /// and the caller must compare the file's length and modification time after reading
    /// to detect it. orient itself never writes to a file it has mapped.
    pub unsafe fn new(file: &File) -> io::Result<GuardedMap> {
        // SAFETY: forwarded to the caller (see `# Safety`): the file is open read-only
        // and its changes are detected rather than prevented.
        let map = unsafe { Mmap::map(file) }?;
        let slot = if map.is_empty() {
            None
        } else {
            guard::register(map.as_ptr() as usize, map.len())
        };
        Ok(GuardedMap { map, slot })
    }

    /// True once a read touched a page of this map that its file no longer backs (the
    /// file shrank): from then on those pages read as zeros.
    pub fn faulted(&self) -> bool {
        self.slot.is_some_and(guard::faulted)
    }

    /// True when truncation is caught as [`GuardedMap::faulted`] rather than killing the
    /// process (Linux, a non-empty map, and a free slot in the registry).
    pub fn is_guarded(&self) -> bool {
        self.slot.is_some()
    }

    /// The underlying map (for `madvise`).
    pub(crate) fn mmap(&self) -> &Mmap {
        &self.map
    }
}

impl Deref for GuardedMap {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        // Unregister before `map` is unmapped (fields drop after this body), so that the
        // handler never claims an address range that is no longer ours.
        if let Some(slot) = self.slot {
            guard::unregister(slot);
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod guard {
    //! The registry of mapped ranges and the SIGBUS handler that consults it.

    use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Once, OnceLock};

    /// How many maps can be guarded at once: far more shards than any checkpoint has
    /// (a 405B model ships ~200), times the two checkpoints `diff` and `verify` open.
    pub(super) const SLOTS: usize = 4096;

    /// One registered range. `seq` is a sequence lock: odd while the range is being
    /// written, so that the handler never reads a start of one map with the length of
    /// another.
    struct Slot {
        claimed: AtomicBool,
        seq: AtomicUsize,
        start: AtomicUsize,
        len: AtomicUsize,
        faulted: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)] // only used to initialise the table
    const EMPTY: Slot = Slot {
        claimed: AtomicBool::new(false),
        seq: AtomicUsize::new(0),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    };

    static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
    static PAGE: AtomicUsize = AtomicUsize::new(4096);
    static INSTALL: Once = Once::new();
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    static PREVIOUS: OnceLock<Previous> = OnceLock::new();

    /// The SIGBUS disposition found before ours, to hand foreign faults to.
    struct Previous(libc::sigaction);
    // SAFETY: a plain C struct of integers and a function address, written once before
    // the handler is installed and only read afterwards.
    unsafe impl Sync for Previous {}
    // SAFETY: as above; it holds no pointer to data.
    unsafe impl Send for Previous {}

    /// Records `start..start + len` (a live map) and returns its slot, installing the
    /// handler on first use. `None` when the handler could not be installed or the table
    /// is full (the map then works unguarded, as any mmap reader does).
    pub(super) fn register(start: usize, len: usize) -> Option<usize> {
        install();
        if !INSTALLED.load(Ordering::Acquire) {
            return None;
        }
        for (i, slot) in TABLE.iter().enumerate() {
            if slot
                .claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                write(slot, start, len);
                return Some(i);
            }
        }
        None
    }

    /// Forgets a slot's range (its map is about to be unmapped) and frees the slot.
    pub(super) fn unregister(i: usize) {
        if let Some(slot) = TABLE.get(i) {
            write(slot, 0, 0);
            slot.claimed.store(false, Ordering::Release);
        }
    }

    /// Whether the handler caught a fault in this slot's map.
    pub(super) fn faulted(i: usize) -> bool {
        TABLE
            .get(i)
            .is_some_and(|s| s.faulted.load(Ordering::Acquire))
    }

    /// Seqlock write of a slot's range; also clears its flag.
    fn write(slot: &Slot, start: usize, len: usize) {
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        slot.start.store(start, Ordering::Relaxed);
        slot.len.store(len, Ordering::Relaxed);
        slot.faulted.store(false, Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    fn install() {
        INSTALL.call_once(|| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if let Ok(page) = usize::try_from(page) {
                if page.is_power_of_two() {
                    PAGE.store(page, Ordering::Relaxed);
                }
            }
            // SAFETY: zeroed `sigaction` structs are valid (no handler, empty mask, no
            // flags); the calls only read and write them. The previous disposition is
            // stored before ours is installed, so the handler always finds it.
            unsafe {
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                    return;
                }
                let _ = PREVIOUS.set(Previous(previous));
                let mut ours: libc::sigaction = std::mem::zeroed();
                ours.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
                ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut ours.sa_mask);
                if libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut()) == 0 {
                    INSTALLED.store(true, Ordering::Release);
                }
            }
        });
    }

    /// The slot whose live range holds `addr`, with that range, read under each slot's
    /// sequence lock (a slot being rewritten is skipped: it cannot be the map a reader
    /// is using, since that one stays registered while it is borrowed).
    fn find(addr: usize) -> Option<(&'static Slot, usize, usize)> {
        TABLE.iter().find_map(|slot| {
            let s1 = slot.seq.load(Ordering::Acquire);
            if s1 % 2 == 1 {
                return None;
            }
            let start = slot.start.load(Ordering::Relaxed);
            let len = slot.len.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            let s2 = slot.seq.load(Ordering::Relaxed);
            (s1 == s2 && len > 0 && addr.wrapping_sub(start) < len).then_some((slot, start, len))
        })
    }

    /// The SIGBUS handler. Only async-signal-safe work: atomics, `mmap`, `sigaction`,
    /// `raise`.
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for a
        // SIGBUS it raised itself (si_code > 0, not kill/sigqueue) `si_addr` is the
        // faulting address.
        let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
        if let Some((slot, start, len)) = find(addr).filter(|_| code > 0) {
            let page = PAGE.load(Ordering::Relaxed);
            let from = addr & !(page - 1);
            // The map ends on a page boundary (the kernel rounds its length up).
            let end = (start + len).div_ceil(page) * page;
            // SAFETY: `from..end` lies inside a live read-only map of ours (the
            // registry is written before a map is lent out and cleared before it is
            // unmapped). Replacing those pages with private anonymous zero pages keeps
            // every borrowed slice valid memory; only the bytes change, from "gone" to
            // zero, and the flag set below makes every reader treat them as an error.
            let mapped = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped != libc::MAP_FAILED {
                slot.faulted.store(true, Ordering::Release);
                return;
            }
        }
        forward(sig, info, ctx);
    }

    /// Hands a SIGBUS that is not ours to the previous handler, or to the default action.
    fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        if let Some(Previous(prev)) = PREVIOUS.get() {
            let handler = prev.sa_sigaction;
            if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: the previous disposition was installed with SA_SIGINFO,
                    // so its address is a handler of this signature; we pass on the
                    // kernel's own arguments.
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        unsafe { std::mem::transmute(handler) };
                    f(sig, info, ctx);
                } else {
                    // SAFETY: without SA_SIGINFO the handler takes only the signal.
                    let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
                    f(sig);
                }
                return;
            }
        }
        // SAFETY: restoring the default disposition and re-raising are async-signal-safe.
        // The raised signal is blocked until this handler returns, then kills the
        // process as an unhandled SIGBUS would (a hardware fault would also recur).
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut default.sa_mask);
            libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            libc::raise(libc::SIGBUS);
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod guard {
    //! No guard on this platform: truncation is detected by the length checks only (and
    //! a read past the end still raises SIGBUS).

    pub(super) fn register(_start: usize, _len: usize) -> Option<usize> {
        None
    }

    pub(super) fn unregister(_i: usize) {}

    pub(super) fn faulted(_i: usize) -> bool {
        false
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_truncated_map_reads_zeros_and_says_so() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 5 * 4096]).unwrap();
        f.flush().unwrap();
        let file = File::open(f.path()).unwrap();
        // SAFETY: the test truncates on purpose; that is what it checks.
        let map = unsafe { GuardedMap::new(&file) }.unwrap();
        assert!(map.is_guarded());
        assert!(!map.faulted());
        assert_eq!(map[3 * 4096], 7);
        f.as_file().set_len(4096).unwrap();
        // Past the new end: SIGBUS without the guard; zeros and the flag with it.
        assert_eq!(map[3 * 4096 + 5], 0);
        assert!(map.faulted());
        assert_eq!(map[4 * 4096], 0);
        // The page still backed by the file keeps its bytes.
        assert_eq!(map[10], 7);
    }

    #[test]
    fn slots_are_freed_and_reused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[1u8; 64]).unwrap();
        let file = File::open(f.path()).unwrap();
        // More maps than slots, one after the other: each drop frees its slot.
        for _ in 0..guard::SLOTS + 10 {
            // SAFETY: nothing changes the file.
            let map = unsafe { GuardedMap::new(&file) }.unwrap();
            assert!(map.is_guarded());
            assert!(!map.faulted());
        }
    }
}
