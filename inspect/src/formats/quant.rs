//! Dequantization of ggml block formats to f32, bit-for-bit as ggml's reference
//! `dequantize_row_*` functions (ggml-quants.c) and gguf-py's `quants.py` compute it.
//!
//! - Q8_0: blocks of 32 values = an f16 scale `d` then 32 `i8` quants; `y = q · d`.
//! - Q4_0: blocks of 32 values = an f16 scale `d` then 16 bytes; byte `j` holds value
//!   `j` in its low nibble and value `j + 16` in its high nibble; `y = (nibble − 8) · d`.
//!
//! Each product is one f32 multiplication of an exactly representable integer by the
//! widened scale, so the result is exact to the bit whatever the order of evaluation.
//! The kernels work on whole blocks through fixed-size arrays so the compiler
//! vectorizes the inner loop.

use super::gguf::GgmlType;

/// Values per Q8_0 block.
pub const QK8_0: usize = 32;
/// Bytes per Q8_0 block: f16 scale + 32 × i8.
pub const Q8_0_BLOCK_BYTES: usize = 2 + QK8_0;
/// Values per Q4_0 block.
pub const QK4_0: usize = 32;
/// Bytes per Q4_0 block: f16 scale + 16 bytes of nibbles.
pub const Q4_0_BLOCK_BYTES: usize = 2 + QK4_0 / 2;

/// Why a buffer cannot be dequantized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    /// A ggml type orient recognises but does not decode.
    #[error("{ty} data cannot be decoded: orient dequantizes only Q8_0 and Q4_0 of the ggml block types")]
    Unsupported {
        /// The type.
        ty: GgmlType,
    },
    /// The output is not a whole number of blocks, or the input is not exactly the
    /// bytes those blocks need.
    #[error("{ty}: {src_len} input bytes cannot fill {dst_len} values (whole blocks of {block} values need {needed} bytes)")]
    LengthMismatch {
        /// The type.
        ty: GgmlType,
        /// Input length in bytes.
        src_len: usize,
        /// Output length in values.
        dst_len: usize,
        /// Values per block.
        block: usize,
        /// Input bytes needed for `dst_len` values, when that is whole blocks.
        needed: usize,
    },
    /// A range of values outside the tensor, or blocks that are not whole.
    #[error("{ty}: values {first}..{first}+{len} are not inside the {values} values of {src_len} bytes of whole blocks")]
    OutOfRange {
        /// The type.
        ty: GgmlType,
        /// First value asked for.
        first: usize,
        /// Number of values asked for.
        len: usize,
        /// Values the blocks hold.
        values: usize,
        /// Length of the blocks in bytes.
        src_len: usize,
    },
}

fn check_len(ty: GgmlType, src: &[u8], dst: &[f32]) -> Result<(), QuantError> {
    let block = ty.block_size();
    let needed = (dst.len() / block).saturating_mul(ty.type_size());
    if !dst.len().is_multiple_of(block) || src.len() != needed {
        return Err(QuantError::LengthMismatch {
            ty,
            src_len: src.len(),
            dst_len: dst.len(),
            block,
            needed,
        });
    }
    Ok(())
}

#[inline(always)]
fn scale(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Q8_0 bytes → f32. `src` must hold exactly `dst.len() / 32` blocks.
pub fn dequantize_q8_0(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_len(GgmlType::Q8_0, src, dst)?;
    let (blocks, _) = src.as_chunks::<Q8_0_BLOCK_BYTES>();
    let (outs, _) = dst.as_chunks_mut::<QK8_0>();
    for (block, out) in blocks.iter().zip(outs) {
        let d = scale(block[0], block[1]);
        for (o, &q) in out.iter_mut().zip(&block[2..]) {
            *o = f32::from(q as i8) * d;
        }
    }
    Ok(())
}

/// Q4_0 bytes → f32. `src` must hold exactly `dst.len() / 32` blocks.
pub fn dequantize_q4_0(src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_len(GgmlType::Q4_0, src, dst)?;
    const HALF: usize = QK4_0 / 2;
    let (blocks, _) = src.as_chunks::<Q4_0_BLOCK_BYTES>();
    let (outs, _) = dst.as_chunks_mut::<QK4_0>();
    for (block, out) in blocks.iter().zip(outs) {
        let d = scale(block[0], block[1]);
        let (lo, hi) = out.split_at_mut(HALF);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[2..]) {
            *l = (i32::from(q & 0x0f) - 8) as f32 * d;
            *h = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
    Ok(())
}

/// Dequantizes `src`, stored as `ty`, into `dst`. Only Q8_0 and Q4_0 are decoded here;
/// plain types (F32, F16, BF16, …) are [`super::Encoding::Plain`] and go through
/// [`crate::view::widen_into`].
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    match ty {
        GgmlType::Q8_0 => dequantize_q8_0(src, dst),
        GgmlType::Q4_0 => dequantize_q4_0(src, dst),
        _ => Err(QuantError::Unsupported { ty }),
    }
}

/// Values per block of the largest block type decoded here.
const MAX_BLOCK: usize = 32;

/// Dequantizes values `first..first + dst.len()` of a tensor stored as `ty` in `blocks`
/// (whole blocks, one after the other, in the tensor's row-major order) into `dst`. The
/// range need not start or end on a block boundary: the blocks at its edges are decoded
/// whole and cut. Bit for bit what [`dequantize`] of all the blocks gives for those values,
/// so a streaming reader can decode a tensor in pieces of any size, on any number of
/// threads.
pub fn dequantize_range(
    ty: GgmlType,
    blocks: &[u8],
    first: usize,
    dst: &mut [f32],
) -> Result<(), QuantError> {
    let (block, bytes) = (ty.block_size(), ty.type_size());
    if !matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0) || block > MAX_BLOCK {
        return Err(QuantError::Unsupported { ty });
    }
    let values = blocks.len() / bytes * block;
    let end = first.checked_add(dst.len());
    if !blocks.len().is_multiple_of(bytes) || end.is_none_or(|e| e > values) {
        return Err(QuantError::OutOfRange {
            ty,
            first,
            len: dst.len(),
            values,
            src_len: blocks.len(),
        });
    }
    // In bounds from here: every block index below is < values / block.
    let blocks_of = |b: usize, n: usize| &blocks[b * bytes..(b + n) * bytes];
    let mut out = dst;
    let mut at = first;
    let skip = at % block;
    if skip != 0 && !out.is_empty() {
        let mut one = [0f32; MAX_BLOCK];
        dequantize(ty, blocks_of(at / block, 1), &mut one[..block])?;
        let n = (block - skip).min(out.len());
        out[..n].copy_from_slice(&one[skip..skip + n]);
        out = &mut out[n..];
        at += n;
    }
    let whole = out.len() / block;
    let (mid, tail) = out.split_at_mut(whole * block);
    dequantize(ty, blocks_of(at / block, whole), mid)?;
    at += whole * block;
    if !tail.is_empty() {
        let mut one = [0f32; MAX_BLOCK];
        dequantize(ty, blocks_of(at / block, 1), &mut one[..block])?;
        let n = tail.len();
        tail.copy_from_slice(&one[..n]);
    }
    Ok(())
}

/// The bytes of the blocks that hold values `values` of a tensor stored as `ty` (for
/// releasing the mapped pages a streaming reader is done with). `None` on overflow.
pub fn block_bytes(ty: GgmlType, values: std::ops::Range<usize>) -> Option<std::ops::Range<usize>> {
    let (block, bytes) = (ty.block_size(), ty.type_size());
    let start = (values.start / block).checked_mul(bytes)?;
    let end = values.end.div_ceil(block).checked_mul(bytes)?;
    Some(start..end)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn f16(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q8_0_by_hand() {
        let mut block = f16(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        block.extend_from_slice(&f16(-2.0));
        block.extend([127u8, 0x80].iter().chain([0u8; 30].iter()));
        let mut out = [0f32; 64];
        dequantize_q8_0(&block, &mut out).unwrap();
        for (i, &v) in out[..32].iter().enumerate() {
            assert_eq!(v, (i as f32 - 16.0) * 0.5);
        }
        assert_eq!(out[32], -254.0);
        assert_eq!(out[33], 256.0);
        assert_eq!(out[34], -0.0);
        assert!(out[34].is_sign_negative(), "0 × -2 is -0 in ggml too");
    }

    #[test]
    fn q4_0_by_hand() {
        let mut block = f16(0.25).to_vec();
        // byte j: low nibble = j, high nibble = 15 - j
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0f32; 32];
        dequantize_q4_0(&block, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.25);
            assert_eq!(out[j + 16], (7.0 - j as f32) * 0.25);
        }
    }

    #[test]
    fn special_scales_propagate() {
        for d in [f32::INFINITY, f32::NAN, 65504.0, 5.96e-8] {
            let mut block = f16(d).to_vec();
            block.extend([1u8; 32]);
            let mut out = [0f32; 32];
            dequantize_q8_0(&block, &mut out).unwrap();
            let want = half::f16::from_f32(d).to_f32();
            assert_eq!(out[0].to_bits(), want.to_bits());
        }
    }

    /// Blocks of `ty` with varied scales and quants (deterministic).
    fn blocks(ty: GgmlType, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut x = 0x2545_f491_u32;
        for b in 0..n {
            out.extend_from_slice(&f16(0.01
                * (b as f32 + 1.0)
                * if b % 3 == 0 { -1.0 } else { 1.0 }));
            for _ in 2..ty.type_size() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                out.push(x as u8);
            }
        }
        out
    }

    #[test]
    fn every_range_decodes_as_the_whole() {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
            let src = blocks(ty, 5);
            let mut whole = vec![0f32; 5 * 32];
            dequantize(ty, &src, &mut whole).unwrap();
            for first in 0..=whole.len() {
                for len in [0, 1, 2, 17, 31, 32, 33, 63, 64, 65, 100, 160] {
                    if first + len > whole.len() {
                        continue;
                    }
                    let mut part = vec![f32::NAN; len];
                    dequantize_range(ty, &src, first, &mut part).unwrap();
                    let want: Vec<u32> = whole[first..first + len]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let got: Vec<u32> = part.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{ty} {first}+{len}");
                }
            }
            let r = block_bytes(ty, 40..70).unwrap();
            assert_eq!(r, ty.type_size()..3 * ty.type_size());
        }
    }

    #[test]
    fn ranges_outside_the_blocks_are_refused() {
        let src = blocks(GgmlType::Q8_0, 2);
        let mut out = [0f32; 8];
        assert!(matches!(
            dequantize_range(GgmlType::Q8_0, &src, 60, &mut out),
            Err(QuantError::OutOfRange {
                values: 64,
                first: 60,
                len: 8,
                ..
            })
        ));
        assert!(matches!(
            dequantize_range(GgmlType::Q8_0, &src, usize::MAX, &mut out),
            Err(QuantError::OutOfRange { .. })
        ));
        assert!(matches!(
            dequantize_range(GgmlType::Q8_0, &src[..67], 0, &mut out),
            Err(QuantError::OutOfRange { .. })
        ));
        assert_eq!(
            dequantize_range(GgmlType::Q4_K, &src, 0, &mut out),
            Err(QuantError::Unsupported { ty: GgmlType::Q4_K })
        );
    }

    #[test]
    fn length_checks() {
        let mut out = [0f32; 32];
        assert!(matches!(
            dequantize_q8_0(&[0; 33], &mut out),
            Err(QuantError::LengthMismatch { needed: 34, .. })
        ));
        let mut odd = [0f32; 31];
        assert!(dequantize_q4_0(&[0; 18], &mut odd).is_err());
        assert_eq!(
            dequantize(GgmlType::Q4_K, &[], &mut []),
            Err(QuantError::Unsupported { ty: GgmlType::Q4_K })
        );
        assert!(dequantize(GgmlType::Q8_0, &[], &mut []).is_ok());
    }
}
