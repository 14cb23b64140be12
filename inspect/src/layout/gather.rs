//! Materialising views: reading the elements a [`View`] points at into a row-major buffer.
//!
//! Two kernels: [`gather_bytes`] copies elements byte for byte (a pure relayout, bit-identical,
//! any dtype), [`gather_f32`] widens F32/BF16/F16/F64 to f32 and applies the views' value
//! operations. Both take a range of *rows* of the view seen as `[numel / last_dim, last_dim]`,
//! so that a caller can produce an output band by band in bounded memory. Every run is checked
//! against its source's length: a view that does not fit its sources is an error, never an
//! out-of-bounds read.

use std::ops::Range;

use crate::dtype::Dtype;
use crate::layout::view::{Strided, View};
use crate::view::widen_into;

/// The bytes of one source tensor and how to read them.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Raw little-endian element bytes.
    pub bytes: &'a [u8],
    /// Element type.
    pub dtype: Dtype,
}

/// Why a view cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    /// A run reads past the end of its source (a view that does not fit the data).
    #[error("source {source_index} holds {len} elements but the view reads element {last}")]
    OutOfBounds {
        /// The source.
        source_index: usize,
        /// Its element count.
        len: usize,
        /// The element asked for.
        last: usize,
    },
    /// A dtype the kernel cannot read.
    #[error("cannot read {dtype} {how}")]
    Dtype {
        /// The dtype.
        dtype: Dtype,
        /// What was asked.
        how: &'static str,
    },
    /// The sources of a byte copy have different element sizes, or a value operation asks
    /// for arithmetic a byte copy cannot do.
    #[error("{0}")]
    Mixed(String),
    /// The output buffer has the wrong length.
    #[error("output holds {got} elements, the rows asked for need {want}")]
    Length {
        /// Buffer length.
        got: usize,
        /// Needed.
        want: usize,
    },
    /// A source index the caller did not supply.
    #[error("the view reads source {0}, which was not supplied")]
    NoSource(usize),
}

/// `(rows, columns)` of `view` seen as a matrix over its last dimension.
pub fn rows_cols(view: &View) -> (usize, usize) {
    let shape = view.shape();
    let cols = shape.last().copied().unwrap_or(1);
    let rows = view.numel().checked_div(cols).unwrap_or(0);
    (rows, cols)
}

fn element_bytes(d: Dtype) -> Result<usize, GatherError> {
    match d.bits() {
        b if b % 8 == 0 => Ok(b / 8),
        _ => Err(GatherError::Dtype {
            dtype: d,
            how: "element by element (sub-byte type)",
        }),
    }
}

fn check_run(
    sources: &[Source<'_>],
    leaf: &Strided,
    off: usize,
    len: usize,
    stride: usize,
) -> Result<usize, GatherError> {
    let src = sources
        .get(leaf.source)
        .ok_or(GatherError::NoSource(leaf.source))?;
    let es = element_bytes(src.dtype)?;
    let n = src.bytes.len() / es;
    let last = off + len.saturating_sub(1) * stride;
    if len > 0 && last >= n {
        return Err(GatherError::OutOfBounds {
            source_index: leaf.source,
            len: n,
            last,
        });
    }
    Ok(es)
}

/// Copies rows `rows` of `view` into `out` (row-major, `rows.len() × cols` elements of the
/// sources' common element size), byte for byte.
pub fn gather_bytes(
    view: &View,
    sources: &[Source<'_>],
    rows: Range<usize>,
    out: &mut [u8],
) -> Result<(), GatherError> {
    if view.has_values() {
        return Err(GatherError::Mixed(
            "a view with value operations cannot be copied byte for byte".into(),
        ));
    }
    let ids = view.sources();
    let es = match ids.first() {
        Some(&s) => element_bytes(sources.get(s).ok_or(GatherError::NoSource(s))?.dtype)?,
        None => return Ok(()),
    };
    for &s in &ids {
        let d = sources.get(s).ok_or(GatherError::NoSource(s))?.dtype;
        if element_bytes(d)? != es {
            return Err(GatherError::Mixed(format!(
                "sources of different element sizes cannot be copied into one tensor ({d})"
            )));
        }
    }
    let (_, cols) = rows_cols(view);
    let want = rows.len() * cols * es;
    if out.len() != want {
        return Err(GatherError::Length {
            got: out.len() / es.max(1),
            want: want / es.max(1),
        });
    }
    let mut err = None;
    for (k, r) in rows.enumerate() {
        let row = &mut out[k * cols * es..(k + 1) * cols * es];
        view.runs(r, 0..cols, &mut |col, leaf, off, len, stride| {
            if err.is_some() {
                return;
            }
            if let Err(e) = check_run(sources, leaf, off, len, stride) {
                err = Some(e);
                return;
            }
            let src = sources[leaf.source].bytes;
            let dst = &mut row[col * es..(col + len) * es];
            if stride == 1 {
                dst.copy_from_slice(&src[off * es..(off + len) * es]);
            } else {
                for (i, d) in dst.chunks_exact_mut(es).enumerate() {
                    let at = (off + i * stride) * es;
                    d.copy_from_slice(&src[at..at + es]);
                }
            }
        });
        if let Some(e) = err.take() {
            return Err(e);
        }
    }
    Ok(())
}

/// Widens rows `rows` of `view` into `out` (row-major f32, `rows.len() × cols`), applying
/// every value operation. Sources may mix F32, BF16, F16 and F64.
pub fn gather_f32(
    view: &View,
    sources: &[Source<'_>],
    rows: Range<usize>,
    out: &mut [f32],
) -> Result<(), GatherError> {
    for s in view.sources() {
        let d = sources.get(s).ok_or(GatherError::NoSource(s))?.dtype;
        if !d.is_computable() {
            return Err(GatherError::Dtype {
                dtype: d,
                how: "as f32 (F32, BF16, F16 and F64 only)",
            });
        }
    }
    let (_, cols) = rows_cols(view);
    if out.len() != rows.len() * cols {
        return Err(GatherError::Length {
            got: out.len(),
            want: rows.len() * cols,
        });
    }
    let mut err = None;
    for (k, r) in rows.enumerate() {
        let row = &mut out[k * cols..(k + 1) * cols];
        view.runs(r, 0..cols, &mut |col, leaf, off, len, stride| {
            if err.is_some() {
                return;
            }
            let es = match check_run(sources, leaf, off, len, stride) {
                Ok(es) => es,
                Err(e) => {
                    err = Some(e);
                    return;
                }
            };
            let src = &sources[leaf.source];
            let dst = &mut row[col..col + len];
            if stride == 1 {
                widen_into(src.dtype, &src.bytes[off * es..(off + len) * es], dst);
            } else {
                for (i, d) in dst.iter_mut().enumerate() {
                    let at = (off + i * stride) * es;
                    widen_into(src.dtype, &src.bytes[at..at + es], std::slice::from_mut(d));
                }
            }
            for op in &leaf.values {
                for x in dst.iter_mut() {
                    *x = op.apply(*x);
                }
            }
        });
        if let Some(e) = err.take() {
            return Err(e);
        }
    }
    Ok(())
}

/// All of `view` as f32.
pub fn to_f32(view: &View, sources: &[Source<'_>]) -> Result<Vec<f32>, GatherError> {
    let (rows, cols) = rows_cols(view);
    let mut out = vec![0.0f32; rows * cols];
    gather_f32(view, sources, 0..rows, &mut out)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::layout::transform::{Chain, RopeOrder, Transform};
    use crate::layout::view::ValueOp;
    use proptest::prelude::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn transpose_widen_and_values() {
        let data: Vec<f32> = (0..6).map(|x| x as f32).collect();
        let bytes = f32_bytes(&data);
        let src = [Source {
            bytes: &bytes,
            dtype: Dtype::F32,
        }];
        let t = View::contiguous(0, &[2, 3]).transpose_last().unwrap();
        assert_eq!(to_f32(&t, &src).unwrap(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let plus = t.clone().map_values(ValueOp::Add(1.0));
        assert_eq!(to_f32(&plus, &src).unwrap(), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let mut raw = vec![0u8; 24];
        gather_bytes(&t, &src, 0..3, &mut raw).unwrap();
        assert_eq!(raw, f32_bytes(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
        assert!(matches!(
            gather_bytes(&plus, &src, 0..3, &mut raw),
            Err(GatherError::Mixed(_))
        ));
        // Rows in bands.
        let mut band = vec![0.0f32; 2];
        gather_f32(&t, &src, 1..2, &mut band).unwrap();
        assert_eq!(band, [1.0, 4.0]);
    }

    #[test]
    fn views_past_their_sources_are_errors() {
        let bytes = f32_bytes(&[1.0, 2.0]);
        let src = [Source {
            bytes: &bytes,
            dtype: Dtype::F32,
        }];
        let v = View::contiguous(0, &[3]);
        assert!(matches!(
            to_f32(&v, &src),
            Err(GatherError::OutOfBounds { .. })
        ));
        assert!(matches!(
            to_f32(&View::contiguous(1, &[1]), &src),
            Err(GatherError::NoSource(1))
        ));
        let ints = [Source {
            bytes: &bytes,
            dtype: Dtype::I32,
        }];
        assert!(matches!(
            to_f32(&View::contiguous(0, &[2]), &ints),
            Err(GatherError::Dtype { .. })
        ));
    }

    fn dtype() -> impl Strategy<Value = Dtype> {
        prop_oneof![
            Just(Dtype::F32),
            Just(Dtype::BF16),
            Just(Dtype::F16),
            Just(Dtype::F64),
            Just(Dtype::I8),
            Just(Dtype::U8),
            Just(Dtype::I64)
        ]
    }

    proptest! {
        /// Random data of every dtype through a random index chain and its inverse, copied out
        /// byte for byte at each step: bit-identical to the input, banded or whole.
        #[test]
        fn relayout_and_back_is_bit_identical(
            d in dtype(),
            heads in 1usize..4, half in 1usize..4, cols in 1usize..5,
            transpose_first in any::<bool>(), rope in any::<bool>(), band in 1usize..5,
            seed in any::<u64>(),
        ) {
            let rows = heads * half * 2;
            let es = d.bits() / 8;
            let mut x = seed | 1;
            let bytes: Vec<u8> = (0..rows * cols * es).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
            let mut ts = Vec::new();
            if rope {
                ts.push(Transform::RopePermute { axis: 0, heads, rotary: 0, to: RopeOrder::Interleaved });
            }
            if transpose_first {
                ts.push(Transform::Transpose);
            }
            let chain = Chain::from_transforms(ts, vec![vec![vec![rows, cols]]]).unwrap();
            let stored_view = chain.apply(vec![vec![View::contiguous(0, &[rows, cols])]]).unwrap().remove(0).remove(0);
            let src = [Source { bytes: &bytes, dtype: d }];
            let (srows, scols) = rows_cols(&stored_view);
            // Materialise the stored tensor band by band.
            let mut stored = vec![0u8; bytes.len()];
            let mut r = 0;
            while r < srows {
                let end = (r + band).min(srows);
                gather_bytes(&stored_view, &src, r..end, &mut stored[r * scols * es..end * scols * es]).unwrap();
                r = end;
            }
            // Read it back through the inverse chain.
            let out_shape = chain.output().map_or(vec![rows, cols], |g| g[0][0].clone());
            let back_view = chain.inverse().apply(vec![vec![View::contiguous(0, &out_shape)]]).unwrap().remove(0).remove(0);
            let mut back = vec![0u8; bytes.len()];
            gather_bytes(&back_view, &[Source { bytes: &stored, dtype: d }], 0..rows, &mut back).unwrap();
            prop_assert_eq!(back, bytes);
        }
    }
}
