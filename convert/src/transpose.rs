//! Cache-blocked 2-D transposes on raw bytes, generic over the element size.
//!
//! Why: HF `nn.Linear` weights are `[out, in]` and Flax kernels `[in, out]`, so converting
//! between the two is a transpose of most of the model's bytes. A naive row-by-column
//! loop misses the cache on every element once a row exceeds a few pages; walking the
//! matrix in small square blocks keeps both the source rows and the destination rows of
//! one block in L1. Work is split over bands of source rows with rayon (see `run`); the
//! tasks write disjoint elements of the output.
//!
//! The transpose is a pure relayout: elements are moved as opaque 1/2/4/8-byte words, so
//! NaN payloads and every other bit pattern survive unchanged. The strided form lets the
//! converter transpose a large tensor band by band (a few source rows into a slice of the
//! output) so that its working set stays bounded.

use rayon::prelude::*;

/// Side of the square blocks, in elements. 32×32×4 bytes = 4 KiB per side of a block.
const BLOCK: usize = 32;
/// Source rows handed to one rayon task.
const BAND: usize = 32;
/// Tasks a transpose is split into at least, when it has the columns for it.
const MIN_TASKS: usize = 8;

/// A transpose whose arguments do not describe valid buffers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransposeError {
    /// Only 1-, 2-, 4- and 8-byte elements are supported.
    #[error("cannot transpose {0}-byte elements (supported: 1, 2, 4, 8)")]
    ElementSize(usize),
    /// A leading dimension is smaller than the row it must hold.
    #[error("leading dimension {ld} is smaller than the row length {len}")]
    LeadingDimension {
        /// The leading dimension given.
        ld: usize,
        /// The row length it must hold.
        len: usize,
    },
    /// A buffer is too short (or its size overflows) for the requested shape.
    #[error("{which} buffer holds {have} bytes but the shape needs {need}")]
    BufferTooShort {
        /// "source" or "destination".
        which: &'static str,
        /// Bytes available.
        have: usize,
        /// Bytes needed (`usize::MAX` when the computation overflowed).
        need: usize,
    },
}

/// Transposes a row-major `[rows, cols]` matrix in `src` into the row-major
/// `[cols, rows]` matrix `dst`. Both buffers must be exactly `rows·cols·elem` bytes.
pub fn transpose(
    src: &[u8],
    rows: usize,
    cols: usize,
    elem: usize,
    dst: &mut [u8],
) -> Result<(), TransposeError> {
    let need = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(elem))
        .unwrap_or(usize::MAX);
    if src.len() != need {
        return Err(TransposeError::BufferTooShort {
            which: "source",
            have: src.len(),
            need,
        });
    }
    if dst.len() != need {
        return Err(TransposeError::BufferTooShort {
            which: "destination",
            have: dst.len(),
            need,
        });
    }
    transpose_strided(src, cols, dst, rows, rows, cols, elem)
}

/// Transposes a `rows × cols` block whose first element is at the start of `src` (rows
/// `src_ld` elements apart) into `dst` (rows `dst_ld` elements apart): element `(i, j)`
/// of the block goes to `dst[j·dst_ld + i]`. Used to transpose a band of source rows
/// into columns of a wider output buffer.
pub fn transpose_strided(
    src: &[u8],
    src_ld: usize,
    dst: &mut [u8],
    dst_ld: usize,
    rows: usize,
    cols: usize,
    elem: usize,
) -> Result<(), TransposeError> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if src_ld < cols {
        return Err(TransposeError::LeadingDimension {
            ld: src_ld,
            len: cols,
        });
    }
    if dst_ld < rows {
        return Err(TransposeError::LeadingDimension {
            ld: dst_ld,
            len: rows,
        });
    }
    let extent = |ld: usize, n_rows: usize, n_cols: usize| {
        (n_rows - 1)
            .checked_mul(ld)
            .and_then(|x| x.checked_add(n_cols))
            .and_then(|x| x.checked_mul(elem))
            .unwrap_or(usize::MAX)
    };
    let src_need = extent(src_ld, rows, cols);
    if src.len() < src_need {
        return Err(TransposeError::BufferTooShort {
            which: "source",
            have: src.len(),
            need: src_need,
        });
    }
    let dst_need = extent(dst_ld, cols, rows);
    if dst.len() < dst_need {
        return Err(TransposeError::BufferTooShort {
            which: "destination",
            have: dst.len(),
            need: dst_need,
        });
    }
    match elem {
        1 => run::<1>(src, src_ld, dst, dst_ld, rows, cols),
        2 => run::<2>(src, src_ld, dst, dst_ld, rows, cols),
        4 => run::<4>(src, src_ld, dst, dst_ld, rows, cols),
        8 => run::<8>(src, src_ld, dst, dst_ld, rows, cols),
        other => return Err(TransposeError::ElementSize(other)),
    }
    Ok(())
}

/// Splits the transpose into tasks of `BAND` source rows (and, when there are few of
/// those, groups of source columns) and runs them on the rayon pool. Bounds were checked
/// by the caller.
///
/// Why bands of source rows: a task then reads a few pages of the source (a memory map of
/// 4 KiB pages) and writes short runs into every destination row (a huge-page write
/// buffer, see [`crate::buffer`]), so it misses the TLB a few times per band instead of
/// once per source row per task. Splitting by destination rows instead walked every
/// source row in every task: 1.9–2.4 GB/s against 3.5–4.6 GB/s on a `[151936, 896]` f32
/// embedding on the 2-core VM.
fn run<const N: usize>(
    src: &[u8],
    src_ld: usize,
    dst: &mut [u8],
    dst_ld: usize,
    rows: usize,
    cols: usize,
) {
    // The caller checked these extents; slicing them again makes the tasks' pointer
    // arithmetic stay inside.
    let src = &src[..((rows - 1) * src_ld + cols) * N];
    let dst = &mut dst[..((cols - 1) * dst_ld + rows) * N];
    let bands = rows.div_ceil(BAND);
    // At least MIN_TASKS tasks when the columns allow it.
    let groups = MIN_TASKS.div_ceil(bands).min(cols.div_ceil(BLOCK)).max(1);
    let group = cols.div_ceil(groups);
    let s = SendPtr(src.as_ptr());
    let d = SendPtr(dst.as_mut_ptr());
    (0..bands * groups).into_par_iter().for_each(|t| {
        let (b, g) = (t / groups, t % groups);
        let (i0, j0) = (b * BAND, g * group);
        if j0 >= cols {
            return;
        }
        let (n, m) = (BAND.min(rows - i0), group.min(cols - j0));
        // SAFETY: rows i0..i0+n and columns j0..j0+m lie inside the `rows × cols` block
        // whose extents were sliced above, so the kernel's reads stay in `src` and its
        // writes in `dst`. Tasks write disjoint elements (element (i, j) goes to
        // `dst[j·dst_ld + i]`, and every (i, j) belongs to one task), no `&mut` slice of
        // `dst` exists while they run (only the raw pointer), and `for_each` returns only
        // when all of them are done, before `dst`'s borrow ends.
        unsafe {
            kernel::<N>(
                s.get().add((i0 * src_ld + j0) * N),
                src_ld,
                d.get().add((j0 * dst_ld + i0) * N),
                dst_ld,
                n,
                m,
            );
        }
    });
}

/// A pointer the rayon tasks of [`run`] share (see the safety argument there).
#[derive(Clone, Copy)]
struct SendPtr<T>(*const T);
// SAFETY: only used by `run`, whose tasks read `src` and write disjoint elements of `dst`
// while both borrows are alive.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as for `Send`.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0 as *mut T
    }
}

/// Blocked transpose of `rows × cols` elements of `N` bytes from `s` (rows `src_ld`
/// elements apart) to `d` (rows `dst_ld` elements apart).
///
/// Inside each block, square tiles of 16 bytes a row (4×4 four-byte elements, 8×8 two-byte,
/// 2×2 eight-byte) are transposed in SSE2 registers: 16-byte loads and stores and integer
/// unpacks, which move bits and never interpret them. Rows and columns left over at the
/// block's edges, one-byte elements and other architectures go element by element.
///
/// # Safety
/// `s` must be readable for `((rows-1)·src_ld + cols)·N` bytes and `d` writable for
/// `((cols-1)·dst_ld + rows)·N` bytes, nothing else writing the elements this writes.
#[inline(always)]
unsafe fn kernel<const N: usize>(
    s: *const u8,
    src_ld: usize,
    d: *mut u8,
    dst_ld: usize,
    rows: usize,
    cols: usize,
) {
    // Side of a register tile, in elements (0: none for this element size).
    let tile = if cfg!(target_arch = "x86_64") && N > 1 {
        16 / N
    } else {
        0
    };
    for ib in (0..rows).step_by(BLOCK) {
        let ie = (ib + BLOCK).min(rows);
        for jb in (0..cols).step_by(BLOCK) {
            let je = (jb + BLOCK).min(cols);
            // The part of the block covered by whole tiles.
            let (ti, tj) = match ((ie - ib).checked_div(tile), (je - jb).checked_div(tile)) {
                (Some(i), Some(j)) => (ib + i * tile, jb + j * tile),
                _ => (ib, jb),
            };
            #[cfg(target_arch = "x86_64")]
            if tile > 0 {
                for i in (ib..ti).step_by(tile) {
                    for j in (jb..tj).step_by(tile) {
                        // SAFETY: the tile covers rows i..i+tile ≤ rows and columns
                        // j..j+tile ≤ cols, so every 16-byte row it loads,
                        // (i+k)·src_ld + j .. + tile elements, and every row it stores,
                        // (j+k)·dst_ld + i .. + tile, lies in the regions the caller
                        // vouches for. Loads and stores are unaligned.
                        unsafe {
                            simd::tile::<N>(
                                s.add((i * src_ld + j) * N),
                                src_ld * N,
                                d.add((j * dst_ld + i) * N),
                                dst_ld * N,
                            );
                        }
                    }
                }
            }
            // Element by element: the rows below the tiles (all columns), and the
            // columns right of them (tiled rows only).
            let edges = [(ti, ie, jb, je), (ib, ti, tj, je)];
            for (i0, i1, j0, j1) in edges {
                for j in j0..j1 {
                    for i in i0..i1 {
                        // SAFETY: i < rows and j < cols, so (i·src_ld + j + 1)·N and
                        // (j·dst_ld + i + 1)·N bytes lie in the regions the caller vouches
                        // for; the bytes may sit anywhere, hence unaligned reads/writes.
                        unsafe {
                            let v = std::ptr::read_unaligned(
                                s.add((i * src_ld + j) * N) as *const [u8; N]
                            );
                            std::ptr::write_unaligned(
                                d.add((j * dst_ld + i) * N) as *mut [u8; N],
                                v,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// 16-byte register tiles (SSE2, part of every x86-64 CPU).
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_unpackhi_epi16, _mm_unpackhi_epi32,
        _mm_unpackhi_epi64, _mm_unpacklo_epi16, _mm_unpacklo_epi32, _mm_unpacklo_epi64,
    };

    /// Transposes the tile of `16 / N` rows of 16 bytes at `s` (rows `s_ld` bytes apart)
    /// into `d` (rows `d_ld` bytes apart).
    ///
    /// # Safety
    /// `s + k·s_ld .. + 16` must be readable and `d + k·d_ld .. + 16` writable for every
    /// `k < 16 / N`, and `N` one of 2, 4, 8.
    #[inline(always)]
    pub(super) unsafe fn tile<const N: usize>(s: *const u8, s_ld: usize, d: *mut u8, d_ld: usize) {
        // SAFETY: the caller's contract covers every row loaded and stored below.
        unsafe {
            let ld = |k: usize| _mm_loadu_si128(s.add(k * s_ld) as *const __m128i);
            let st = |k: usize, v: __m128i| _mm_storeu_si128(d.add(k * d_ld) as *mut __m128i, v);
            match N {
                8 => {
                    let (r0, r1) = (ld(0), ld(1));
                    st(0, _mm_unpacklo_epi64(r0, r1));
                    st(1, _mm_unpackhi_epi64(r0, r1));
                }
                4 => {
                    let (r0, r1, r2, r3) = (ld(0), ld(1), ld(2), ld(3));
                    let t0 = _mm_unpacklo_epi32(r0, r1); // a0 b0 a1 b1
                    let t1 = _mm_unpacklo_epi32(r2, r3); // c0 d0 c1 d1
                    let t2 = _mm_unpackhi_epi32(r0, r1); // a2 b2 a3 b3
                    let t3 = _mm_unpackhi_epi32(r2, r3); // c2 d2 c3 d3
                    st(0, _mm_unpacklo_epi64(t0, t1));
                    st(1, _mm_unpackhi_epi64(t0, t1));
                    st(2, _mm_unpacklo_epi64(t2, t3));
                    st(3, _mm_unpackhi_epi64(t2, t3));
                }
                2 => {
                    let r: [__m128i; 8] = std::array::from_fn(ld);
                    // Pairs of rows interleaved: elements 0-3, then 4-7.
                    let a0 = _mm_unpacklo_epi16(r[0], r[1]);
                    let a1 = _mm_unpackhi_epi16(r[0], r[1]);
                    let a2 = _mm_unpacklo_epi16(r[2], r[3]);
                    let a3 = _mm_unpackhi_epi16(r[2], r[3]);
                    let a4 = _mm_unpacklo_epi16(r[4], r[5]);
                    let a5 = _mm_unpackhi_epi16(r[4], r[5]);
                    let a6 = _mm_unpacklo_epi16(r[6], r[7]);
                    let a7 = _mm_unpackhi_epi16(r[6], r[7]);
                    // Rows 0-3 (b0-b3) and 4-7 (b4-b7), two columns each.
                    let b0 = _mm_unpacklo_epi32(a0, a2);
                    let b1 = _mm_unpackhi_epi32(a0, a2);
                    let b2 = _mm_unpacklo_epi32(a1, a3);
                    let b3 = _mm_unpackhi_epi32(a1, a3);
                    let b4 = _mm_unpacklo_epi32(a4, a6);
                    let b5 = _mm_unpackhi_epi32(a4, a6);
                    let b6 = _mm_unpacklo_epi32(a5, a7);
                    let b7 = _mm_unpackhi_epi32(a5, a7);
                    st(0, _mm_unpacklo_epi64(b0, b4));
                    st(1, _mm_unpackhi_epi64(b0, b4));
                    st(2, _mm_unpacklo_epi64(b1, b5));
                    st(3, _mm_unpackhi_epi64(b1, b5));
                    st(4, _mm_unpacklo_epi64(b2, b6));
                    st(5, _mm_unpackhi_epi64(b2, b6));
                    st(6, _mm_unpacklo_epi64(b3, b7));
                    st(7, _mm_unpackhi_epi64(b3, b7));
                }
                _ => unreachable!("no register tile for {N}-byte elements"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(src: &[u8], rows: usize, cols: usize, elem: usize) -> Vec<u8> {
        let mut out = vec![0u8; src.len()];
        for i in 0..rows {
            for j in 0..cols {
                let s = (i * cols + j) * elem;
                let d = (j * rows + i) * elem;
                out[d..d + elem].copy_from_slice(&src[s..s + elem]);
            }
        }
        out
    }

    fn shape() -> impl Strategy<Value = (usize, usize, usize, Vec<u8>)> {
        (
            0usize..150,
            0usize..150,
            prop::sample::select(vec![1usize, 2, 4, 8]),
        )
            .prop_flat_map(|(r, c, e)| {
                proptest::collection::vec(any::<u8>(), r * c * e)
                    .prop_map(move |bytes| (r, c, e, bytes))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn matches_naive_and_is_an_involution((rows, cols, elem, src) in shape()) {
            let mut t = vec![0u8; src.len()];
            transpose(&src, rows, cols, elem, &mut t).unwrap();
            prop_assert_eq!(&t, &naive(&src, rows, cols, elem));
            let mut back = vec![0u8; src.len()];
            transpose(&t, cols, rows, elem, &mut back).unwrap();
            prop_assert_eq!(back, src);
        }

        #[test]
        fn bands_assemble_the_full_transpose((rows, cols, elem, src) in shape(), band in 1usize..40) {
            // Transpose band by band of source rows into the columns of the output, as the
            // converter does, and compare with the one-shot transpose.
            let mut whole = vec![0u8; src.len()];
            transpose(&src, rows, cols, elem, &mut whole).unwrap();
            let mut banded = vec![0u8; src.len()];
            let mut r0 = 0;
            while r0 < rows && cols > 0 {
                let n = band.min(rows - r0);
                transpose_strided(&src[r0 * cols * elem..], cols, &mut banded[r0 * elem..], rows, n, cols, elem).unwrap();
                r0 += n;
            }
            prop_assert_eq!(banded, whole);
        }
    }

    #[test]
    fn large_non_square_matches_naive() {
        let (rows, cols) = (1000, 77);
        let src: Vec<u8> = (0..rows * cols * 2).map(|i| (i * 7 % 251) as u8).collect();
        let mut t = vec![0u8; src.len()];
        transpose(&src, rows, cols, 2, &mut t).unwrap();
        assert_eq!(t, naive(&src, rows, cols, 2));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut dst = vec![0u8; 12];
        assert_eq!(
            transpose(&[0u8; 12], 2, 2, 3, &mut dst),
            Err(TransposeError::ElementSize(3))
        );
        assert_eq!(
            transpose(&[0u8; 8], 2, 3, 2, &mut dst),
            Err(TransposeError::BufferTooShort {
                which: "source",
                have: 8,
                need: 12
            })
        );
        assert_eq!(
            transpose_strided(&[0u8; 64], 2, &mut dst, 4, 2, 3, 4),
            Err(TransposeError::LeadingDimension { ld: 2, len: 3 })
        );
        assert!(transpose(&[0u8; 8], usize::MAX, 3, 8, &mut dst).is_err());
    }
}
