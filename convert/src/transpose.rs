//! Cache-blocked 2-D transposes on raw bytes, generic over the element size.
//!
//! Why: HF `nn.Linear` weights are `[out, in]` and Flax kernels `[in, out]`, so converting
//! between the two is a transpose of most of the model's bytes. A naive row-by-column
//! loop misses the cache on every element once a row exceeds a few pages; walking the
//! matrix in small square blocks keeps both the source rows and the destination rows of
//! one block in L1. Work is split over destination row groups with rayon, which gives
//! each thread disjoint output memory without any synchronisation.
//!
//! The transpose is a pure relayout: elements are moved as opaque 1/2/4/8-byte words, so
//! NaN payloads and every other bit pattern survive unchanged. The strided form lets the
//! converter transpose a large tensor band by band (a few source rows into a slice of the
//! output) so that its working set stays bounded.

use rayon::prelude::*;

/// Side of the square blocks, in elements. 32×32×4 bytes = 4 KiB per side of a block.
const BLOCK: usize = 32;
/// Destination rows handed to one rayon task.
const GROUP: usize = 64;

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

/// Splits the destination into groups of `GROUP` rows (= source columns) and transposes
/// each group on the rayon pool. Bounds were checked by the caller.
fn run<const N: usize>(
    src: &[u8],
    src_ld: usize,
    dst: &mut [u8],
    dst_ld: usize,
    rows: usize,
    cols: usize,
) {
    let dst = &mut dst[..((cols - 1) * dst_ld + rows) * N];
    dst.par_chunks_mut(GROUP * dst_ld * N)
        .enumerate()
        .for_each(|(g, chunk)| {
            let j0 = g * GROUP;
            let n_cols = GROUP.min(cols - j0);
            kernel::<N>(&src[j0 * N..], src_ld, chunk, dst_ld, rows, n_cols);
        });
}

/// Blocked transpose of `rows × cols` elements of `N` bytes. The caller guarantees
/// `src` holds `((rows-1)·src_ld + cols)·N` bytes and `dst` `((cols-1)·dst_ld + rows)·N`.
#[inline(always)]
fn kernel<const N: usize>(
    src: &[u8],
    src_ld: usize,
    dst: &mut [u8],
    dst_ld: usize,
    rows: usize,
    cols: usize,
) {
    assert!(src.len() >= ((rows - 1) * src_ld + cols) * N);
    assert!(dst.len() >= ((cols - 1) * dst_ld + rows) * N);
    let s = src.as_ptr();
    let d = dst.as_mut_ptr();
    for ib in (0..rows).step_by(BLOCK) {
        let ie = (ib + BLOCK).min(rows);
        for jb in (0..cols).step_by(BLOCK) {
            let je = (jb + BLOCK).min(cols);
            for j in jb..je {
                for i in ib..ie {
                    // SAFETY: i < rows and j < cols, so (i·src_ld + j + 1)·N ≤ src.len() and
                    // (j·dst_ld + i + 1)·N ≤ dst.len() by the asserts above; both pointers
                    // come from live slices, the regions are N bytes, and unaligned
                    // reads/writes are used because the bytes may sit anywhere.
                    unsafe {
                        let v =
                            std::ptr::read_unaligned(s.add((i * src_ld + j) * N) as *const [u8; N]);
                        std::ptr::write_unaligned(d.add((j * dst_ld + i) * N) as *mut [u8; N], v);
                    }
                }
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
