//! The duplicate search: tensors grouped by byte length, sampled fingerprints for those sharing
//! one, a full hash only where fingerprints collide, and a byte-for-byte confirmation. Constant
//! tensors (every element equal) are counted apart: equal by design, not copies.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

/// Sets of tensors holding the same bytes.
#[derive(Debug, Default)]
pub(super) struct DuplicateSets {
    /// Each set sorted, sets in order of their first tensor.
    pub(super) sets: Vec<Vec<usize>>,
    /// Tensors that shared a byte length with another (sampled).
    pub(super) fingerprinted: usize,
    /// Tensors whose samples collided (read in full).
    pub(super) hashed: usize,
    /// Tensors read in full that were constant (every element equal): not reported.
    pub(super) constant: usize,
}

/// Windows sampled per tensor for the fingerprint, and their length.
pub(super) const WINDOWS: usize = 16;
pub(super) const WINDOW: usize = 64;

/// Groups by length, then sampled fingerprint, then full hash plus constancy, then confirms byte
/// for byte. `elem(k)` is tensor `k`'s element size (for constancy).
pub(super) fn duplicate_sets(
    bytes: &[&[u8]],
    elem: impl Fn(usize) -> usize + Sync,
) -> DuplicateSets {
    let mut out = DuplicateSets::default();
    let mut by_len: HashMap<usize, Vec<usize>> = HashMap::new();
    for (k, b) in bytes.iter().enumerate() {
        if !b.is_empty() {
            by_len.entry(b.len()).or_default().push(k);
        }
    }
    let mut groups: Vec<Vec<usize>> = by_len.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    let mut collide: Vec<Vec<usize>> = Vec::new();
    for g in groups {
        out.fingerprinted += g.len();
        let mut by_fp: HashMap<u64, Vec<usize>> = HashMap::new();
        for k in g {
            by_fp.entry(fingerprint(bytes[k])).or_default().push(k);
        }
        collide.extend(by_fp.into_values().filter(|g| g.len() > 1));
    }
    collide.sort();
    for g in collide {
        out.hashed += g.len();
        let hashed: Vec<(u64, bool)> = g
            .par_iter()
            .map(|&k| (hash(bytes[k]), constant(bytes[k], elem(k))))
            .collect();
        let mut by_hash: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (&k, &(h, is_const)) in g.iter().zip(&hashed) {
            if is_const {
                out.constant += 1;
            } else {
                by_hash.entry(h).or_default().push(k);
            }
        }
        for members in by_hash.into_values() {
            // Confirm: equal hashes are candidates, equal bytes are the verdict.
            let mut left = members;
            while left.len() > 1 {
                let first = left[0];
                let (same, rest): (Vec<usize>, Vec<usize>) =
                    left.iter().partition(|&&k| bytes[k] == bytes[first]);
                if same.len() > 1 {
                    out.sets.push(same);
                }
                left = rest;
            }
        }
    }
    for s in &mut out.sets {
        s.sort_unstable();
    }
    out.sets.sort();
    out
}

pub(super) fn fingerprint(b: &[u8]) -> u64 {
    let mut h = Fnv::new(b.len() as u64);
    if b.len() <= WINDOWS * WINDOW {
        h.write(b);
        return h.0;
    }
    let step = (b.len() - WINDOW) / (WINDOWS - 1);
    for i in 0..WINDOWS {
        let at = i * step;
        h.write(&b[at..at + WINDOW]);
    }
    h.0
}

/// A fast full hash: FNV-style mixing over 8-byte words (a collision costs only a memcmp).
pub(super) fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(29);
    }
    for &x in chunks.remainder() {
        h = (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Every element equal to the first (a freshly initialised norm, a zero bias, a scalar).
pub(super) fn constant(b: &[u8], elem: usize) -> bool {
    let elem = elem.max(1);
    if !b.len().is_multiple_of(elem) {
        return false;
    }
    let first = &b[..elem.min(b.len())];
    b.chunks_exact(elem).all(|c| c == first)
}

pub(super) struct Fnv(u64);

impl Fnv {
    fn new(seed: u64) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325 ^ seed)
    }

    fn write(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn duplicates_are_confirmed_byte_for_byte_and_constants_ignored() {
        let a: Vec<u8> = (0..4000u32).flat_map(|x| x.to_le_bytes()).collect();
        let mut b = a.clone();
        let c = a.clone();
        // b differs from a in one byte between the sampled windows.
        b[1001] ^= 1;
        let ones: Vec<u8> = std::iter::repeat_n(1f32.to_le_bytes(), 4000)
            .flatten()
            .collect();
        let ones2 = ones.clone();
        let short = vec![7u8; 12];
        let bytes: Vec<&[u8]> = vec![&a, &b, &c, &ones, &ones2, &short];
        let d = duplicate_sets(&bytes, |_| 4);
        assert_eq!(d.sets, vec![vec![0, 2]]);
        assert_eq!(d.constant, 2);
        assert_eq!(d.fingerprinted, 5);
        assert!(constant(&[1, 2, 1, 2], 2));
        assert!(!constant(&[1, 2, 1, 3], 2));
    }
}
