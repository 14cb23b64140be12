//! Large byte buffers on transparent huge pages, where the kernel offers them.
//!
//! Why: every byte a conversion computes is written into a buffer and then copied by the
//! kernel into the page cache (`pwrite`). Walking a 32 MiB buffer of 4 KiB pages misses the
//! TLB once per page, on our side (the transpose filling it) and on the kernel's (the copy),
//! and under a hypervisor's nested paging each miss costs a two-level walk. Measured on the
//! 2-core KVM guest this project runs on, writing 2 GB into the page cache from a 32 MiB
//! buffer took 1.9–2.2 s from 4 KiB pages and 0.6 s from 2 MiB pages (the same `pwrite`s;
//! `scripts/bench-convert.sh` has the end-to-end effect). So the write buffers and the
//! scratch of the streaming paths are anonymous maps aligned to 2 MiB with
//! `MADV_HUGEPAGE`, which the kernel honours in its default `madvise` THP mode. Elsewhere
//! (another OS, THP off, a failed map) they are ordinary heap memory: only slower.

use std::ops::{Deref, DerefMut};

/// Huge page size the buffers are aligned to (x86-64 and aarch64 with 4 KiB base pages).
const HUGE: usize = 2 << 20;
/// Buffers smaller than this are plain vectors: a huge page would mostly be waste.
const SMALL: usize = 1 << 20;

/// A zero-initialised byte buffer of a fixed length, on huge pages when it is large.
#[derive(Debug)]
pub struct Buffer {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Heap(Vec<u8>),
    #[cfg(target_os = "linux")]
    Map(Map),
}

impl Buffer {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Buffer {
        #[cfg(target_os = "linux")]
        if len >= SMALL {
            if let Some(map) = Map::new(len) {
                return Buffer {
                    inner: Inner::Map(map),
                };
            }
        }
        Buffer {
            inner: Inner::Heap(vec![0u8; len]),
        }
    }

    /// True when the buffer is a huge-page map (for tests).
    pub fn is_mapped(&self) -> bool {
        match &self.inner {
            Inner::Heap(_) => false,
            #[cfg(target_os = "linux")]
            Inner::Map(_) => true,
        }
    }
}

impl Default for Buffer {
    /// An empty buffer (no allocation).
    fn default() -> Buffer {
        Buffer {
            inner: Inner::Heap(Vec::new()),
        }
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            Inner::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Inner::Map(m) => m.bytes(),
        }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            Inner::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Inner::Map(m) => m.bytes_mut(),
        }
    }
}

/// An anonymous private map of `len` bytes starting on a [`HUGE`] boundary.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Map {
    /// Start of the aligned region (owned: unmapped on drop).
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// Length of the region mapped at `ptr` (`len` rounded up to [`HUGE`]).
    mapped: usize,
}

// SAFETY: a `Map` owns its region exclusively (nothing else holds its address), so moving
// it to another thread, or sharing `&Map` (which only reads), is as safe as for a `Vec<u8>`.
#[cfg(target_os = "linux")]
unsafe impl Send for Map {}
// SAFETY: see `Send`: `&Map` only gives out `&[u8]`.
#[cfg(target_os = "linux")]
unsafe impl Sync for Map {}

#[cfg(target_os = "linux")]
impl Map {
    fn new(len: usize) -> Option<Map> {
        let mapped = len.checked_next_multiple_of(HUGE)?;
        // Room to slide the start to a huge-page boundary.
        let total = mapped.checked_add(HUGE)?;
        // SAFETY: a fresh anonymous private map at an address of the kernel's choosing;
        // no memory of ours is touched. The result is checked before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let base = raw as usize;
        let start = base.next_multiple_of(HUGE);
        let head = start - base;
        let tail = total - head - mapped;
        // SAFETY: `head` and `tail` bytes at the two ends lie inside the map just made,
        // which nothing else uses; unmapping them leaves exactly [start, start + mapped).
        // MADV_HUGEPAGE is advice on that range of ours. Failures leave a valid (only
        // larger, or not huge) mapping, so they are ignored.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + mapped) as *mut libc::c_void, tail);
            }
            libc::madvise(start as *mut libc::c_void, mapped, libc::MADV_HUGEPAGE);
        }
        Some(Map {
            ptr: std::ptr::NonNull::new(start as *mut u8)?,
            len,
            mapped,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` starts a live, readable and writable map of `mapped ≥ len` bytes
        // owned by `self` (zero-filled by the kernel, so initialised); the borrow of
        // `self` keeps it alive and unaliased by writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the exclusive borrow of `self` makes this the only
        // reference into the map.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the region [ptr, ptr + mapped) was mapped by `Map::new` and is owned by
        // this value, which no slice outlives (they borrow it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.mapped);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_writable_and_exactly_as_long_as_asked() {
        for len in [0, 1, 4095, SMALL - 1, SMALL, 3 * HUGE + 17] {
            let mut b = Buffer::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                b[len - 1] = 7;
                b[0] = 9;
                assert_eq!((b[0], b[len - 1]), (9, if len == 1 { 9 } else { 7 }));
            }
            #[cfg(target_os = "linux")]
            if len >= SMALL {
                assert!(b.is_mapped());
                assert_eq!(b.as_ptr() as usize % HUGE, 0, "aligned to a huge page");
            }
            // Moved to another thread and dropped there.
            std::thread::spawn(move || drop(b)).join().unwrap();
        }
    }
}
