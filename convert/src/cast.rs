//! Floating-point casts between F32, F16 and BF16, on raw little-endian bytes.
//!
//! Why our own kernels: the `half` crate converts slices one element at a time through a
//! branchy scalar routine, which is far slower than the disk for a multi-gigabyte model.
//! These are plain integer loops over fixed-size chunks with no early exits, so the
//! compiler turns them into SIMD. They work on bytes, not `&[f32]`, because a tensor in a
//! memory-mapped file need not be aligned (MLX writes unpadded headers) and a cast never
//! needs to reinterpret anything in place.
//!
//! Rounding is IEEE round-to-nearest-even. NaNs stay NaN: the result is quiet and keeps
//! the sign and the top of the payload, so a NaN never turns into an Inf. Narrowing
//! reports what it lost ([`CastStats`]): finite values that became ±Inf, non-zero values
//! that became ±0, and values that landed in the reduced-precision subnormal range.

use std::fmt;

/// The floating-point formats that `convert` can cast between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatFormat {
    /// IEEE binary32.
    F32,
    /// IEEE binary16: 5 exponent bits, 10 mantissa bits, max finite 65504.
    F16,
    /// bfloat16: the top 16 bits of an f32 (8 exponent bits, 7 mantissa bits).
    BF16,
}

impl FloatFormat {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatFormat::F32 => 4,
            FloatFormat::F16 | FloatFormat::BF16 => 2,
        }
    }

    /// The safetensors dtype name ("F32", "F16", "BF16").
    pub fn name(self) -> &'static str {
        match self {
            FloatFormat::F32 => "F32",
            FloatFormat::F16 => "F16",
            FloatFormat::BF16 => "BF16",
        }
    }

    /// The format whose safetensors dtype name is `name`, if it is one of the three.
    pub fn from_name(name: &str) -> Option<FloatFormat> {
        match name {
            "F32" => Some(FloatFormat::F32),
            "F16" => Some(FloatFormat::F16),
            "BF16" => Some(FloatFormat::BF16),
            _ => None,
        }
    }
}

impl fmt::Display for FloatFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a narrowing cast lost, counted per element.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CastStats {
    /// Finite inputs whose result is ±Inf (|x| beyond the target's largest finite value
    /// after rounding: 65520 and up for f16).
    pub overflowed: u64,
    /// Non-zero inputs whose result is ±0.
    pub flushed_to_zero: u64,
    /// Non-zero results that are subnormal in the target format, i.e. kept with fewer
    /// significant bits than a normal number.
    pub subnormal: u64,
    /// NaN inputs (kept as quiet NaNs).
    pub nan: u64,
}

impl CastStats {
    /// Adds the counts of `other` into `self`.
    pub fn merge(&mut self, other: &CastStats) {
        self.overflowed += other.overflowed;
        self.flushed_to_zero += other.flushed_to_zero;
        self.subnormal += other.subnormal;
        self.nan += other.nan;
    }

    /// True when nothing was lost beyond ordinary rounding.
    pub fn is_clean(&self) -> bool {
        self.overflowed == 0 && self.flushed_to_zero == 0 && self.subnormal == 0
    }
}

/// A cast request that cannot be carried out on the given buffers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CastError {
    /// The source is not a whole number of elements of its format.
    #[error("source buffer of {len} bytes is not a whole number of {from} elements")]
    RaggedSource {
        /// Source length in bytes.
        len: usize,
        /// Source format.
        from: FloatFormat,
    },
    /// The destination does not hold exactly as many elements as the source.
    #[error("destination of {dst_len} bytes does not match {elements} {to} elements")]
    LengthMismatch {
        /// Number of source elements.
        elements: usize,
        /// Destination length in bytes.
        dst_len: usize,
        /// Target format.
        to: FloatFormat,
    },
}

/// Rounds one f32 (given as bits) to bf16 bits: nearest, ties to even; NaN stays a
/// quiet NaN with its sign and top payload bits; ±Inf stays ±Inf.
#[inline(always)]
pub fn f32_to_bf16_bits(x: u32) -> u16 {
    let is_nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    // Adding 0x7fff plus the lowest kept bit rounds to nearest with ties to even; a
    // carry out of the mantissa correctly bumps the exponent (up to Inf).
    let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((x >> 16) as u16) | 0x0040;
    if is_nan {
        quiet_nan
    } else {
        rounded
    }
}

/// Rounds one f32 (given as bits) to f16 bits: nearest, ties to even, overflow to ±Inf,
/// gradual underflow to subnormals; NaN stays a quiet NaN with its sign and top payload
/// bits. Bit-identical to `half::f16::from_f32`.
#[inline(always)]
pub fn f32_to_f16_bits(x: u32) -> u16 {
    let sign = ((x >> 16) & 0x8000) as u16;
    let abs = x & 0x7fff_ffff;
    let out = if abs > 0x7f80_0000 {
        // NaN: quiet bit set, top 9 payload bits kept.
        0x7e00 | ((abs >> 13) & 0x03ff) as u16
    } else if abs >= 0x477f_f000 {
        // |x| >= 65520 rounds past 65504 (ties to even goes up here): Inf, or Inf itself.
        0x7c00
    } else if abs >= 0x3880_0000 {
        // |x| >= 2^-14: a normal f16. Rebias the exponent (127 -> 15) and round the
        // 23-bit mantissa to 10 bits; a carry bumps the exponent.
        let v = abs - 0x3800_0000;
        ((v + 0x0fff + ((v >> 13) & 1)) >> 13) as u16
    } else if abs > 0x3300_0000 {
        // 2^-25 < |x| < 2^-14: an f16 subnormal, counted in units of 2^-24.
        let e = abs >> 23; // 102..=112
        let m = (abs & 0x007f_ffff) | 0x0080_0000;
        let shift = 126 - e; // 14..=24
        let q = m >> shift;
        let rem = m & ((1u32 << shift) - 1);
        let half = 1u32 << (shift - 1);
        let up = u32::from(rem > half || (rem == half && (q & 1) == 1));
        (q + up) as u16
    } else {
        // |x| <= 2^-25 (2^-25 itself is a tie with 0, which is even): ±0.
        0
    };
    sign | out
}

/// Elements per inner block: big enough to vectorize, small enough for the counters.
const BLOCK: usize = 4096;

/// Counts of one block: overflowed, flushed, subnormal, NaN.
type BlockCounts = [u32; 4];

/// One block of f32 → bf16 (`s` is 4·n bytes, `d` 2·n bytes). Written so that it
/// vectorizes; compiled twice (baseline and AVX2) and chosen at run time.
#[inline(always)]
fn bf16_block(s: &[u8], d: &mut [u8]) -> BlockCounts {
    let (mut overflowed, mut flushed, mut subnormal, mut nan) = (0u32, 0u32, 0u32, 0u32);
    for (s, d) in s.chunks_exact(4).zip(d.chunks_exact_mut(2)) {
        let x = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let h = f32_to_bf16_bits(x);
        let (xa, ha) = (x & 0x7fff_ffff, h & 0x7fff);
        overflowed += u32::from(xa < 0x7f80_0000 && ha == 0x7f80);
        flushed += u32::from(xa != 0 && ha == 0);
        subnormal += u32::from(ha != 0 && ha < 0x0080);
        nan += u32::from(xa > 0x7f80_0000);
        d.copy_from_slice(&h.to_le_bytes());
    }
    [overflowed, flushed, subnormal, nan]
}

/// One block of f32 → f16, as [`bf16_block`].
#[inline(always)]
fn f16_block(s: &[u8], d: &mut [u8]) -> BlockCounts {
    let (mut overflowed, mut flushed, mut subnormal, mut nan) = (0u32, 0u32, 0u32, 0u32);
    for (s, d) in s.chunks_exact(4).zip(d.chunks_exact_mut(2)) {
        let x = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let h = f32_to_f16_bits(x);
        let (xa, ha) = (x & 0x7fff_ffff, h & 0x7fff);
        overflowed += u32::from(xa < 0x7f80_0000 && ha == 0x7c00);
        flushed += u32::from(xa != 0 && ha == 0);
        subnormal += u32::from(ha != 0 && ha < 0x0400);
        nan += u32::from(xa > 0x7f80_0000);
        d.copy_from_slice(&h.to_le_bytes());
    }
    [overflowed, flushed, subnormal, nan]
}

/// [`bf16_block`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_block_avx2(s: &[u8], d: &mut [u8]) -> BlockCounts {
    bf16_block(s, d)
}

/// [`f16_block`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn f16_block_avx2(s: &[u8], d: &mut [u8]) -> BlockCounts {
    f16_block(s, d)
}

/// Runs `block` (or its AVX2 build `wide`, when the CPU has AVX2) over `src` in blocks.
fn narrow(
    src: &[u8],
    dst: &mut [u8],
    block: fn(&[u8], &mut [u8]) -> BlockCounts,
    #[cfg(target_arch = "x86_64")] wide: unsafe fn(&[u8], &mut [u8]) -> BlockCounts,
) -> CastStats {
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::is_x86_feature_detected!("avx2");
    let mut stats = CastStats::default();
    for (s, d) in src.chunks(BLOCK * 4).zip(dst.chunks_mut(BLOCK * 2)) {
        #[cfg(target_arch = "x86_64")]
        let c = if avx2 {
            // SAFETY: `wide` is `block` compiled with AVX2 enabled, and the CPU was just
            // checked to support AVX2; it has no other precondition.
            unsafe { wide(s, d) }
        } else {
            block(s, d)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let c = block(s, d);
        stats.overflowed += u64::from(c[0]);
        stats.flushed_to_zero += u64::from(c[1]);
        stats.subnormal += u64::from(c[2]);
        stats.nan += u64::from(c[3]);
    }
    stats
}

/// f32 bytes → bf16 bytes. `dst` must be exactly half as long as `src`.
pub fn f32_to_bf16(src: &[u8], dst: &mut [u8]) -> Result<CastStats, CastError> {
    check(src, FloatFormat::F32, dst, FloatFormat::BF16)?;
    Ok(narrow(
        src,
        dst,
        bf16_block,
        #[cfg(target_arch = "x86_64")]
        bf16_block_avx2,
    ))
}

/// f32 bytes → f16 bytes, counting overflows, flushes and subnormal results.
pub fn f32_to_f16(src: &[u8], dst: &mut [u8]) -> Result<CastStats, CastError> {
    check(src, FloatFormat::F32, dst, FloatFormat::F16)?;
    Ok(narrow(
        src,
        dst,
        f16_block,
        #[cfg(target_arch = "x86_64")]
        f16_block_avx2,
    ))
}

/// bf16 bytes → f32 bytes (exact), with the shared widening kernel of `orient-inspect`.
pub fn bf16_to_f32(src: &[u8], dst: &mut [u8]) -> Result<(), CastError> {
    check(src, FloatFormat::BF16, dst, FloatFormat::F32)?;
    widen(src, dst, orient_inspect::cast::bf16_bytes_to_f32);
    Ok(())
}

/// f16 bytes → f32 bytes (exact), with the shared widening kernel of `orient-inspect`.
pub fn f16_to_f32(src: &[u8], dst: &mut [u8]) -> Result<(), CastError> {
    check(src, FloatFormat::F16, dst, FloatFormat::F32)?;
    widen(src, dst, orient_inspect::cast::f16_bytes_to_f32);
    Ok(())
}

// The f32 results are written through `bytemuck` in native byte order, which is the
// format's little-endian order only on little-endian targets.
#[cfg(not(target_endian = "little"))]
compile_error!("orient-convert writes safetensors data in native byte order");

/// Runs a 16-bit → f32 widening `kernel` into byte buffer `dst` (lengths checked by the
/// caller): directly when `dst` is 4-byte aligned, else through an aligned scratch block.
fn widen(src: &[u8], dst: &mut [u8], kernel: fn(&[u8], &mut [f32])) {
    match bytemuck::try_cast_slice_mut::<u8, f32>(dst) {
        Ok(out) => kernel(src, out),
        Err(_) => {
            let mut scratch = [0f32; 1024]; // [1024] f32
            for (s, d) in src.chunks(2 * 1024).zip(dst.chunks_mut(4 * 1024)) {
                let n = s.len() / 2;
                kernel(s, &mut scratch[..n]);
                d.copy_from_slice(bytemuck::cast_slice(&scratch[..n]));
            }
        }
    }
}

/// Casts `src` (in format `from`) into `dst` (in format `to`). Same-format is a copy;
/// f16 ↔ bf16 goes through f32, which is exact on the way up, so it rounds only once.
pub fn cast(
    src: &[u8],
    from: FloatFormat,
    dst: &mut [u8],
    to: FloatFormat,
) -> Result<CastStats, CastError> {
    use FloatFormat::{BF16, F16, F32};
    let n = check(src, from, dst, to)?;
    match (from, to) {
        (a, b) if a == b => {
            dst.copy_from_slice(src);
            Ok(CastStats::default())
        }
        (F32, BF16) => f32_to_bf16(src, dst),
        (F32, F16) => f32_to_f16(src, dst),
        (BF16, F32) => bf16_to_f32(src, dst).map(|()| CastStats::default()),
        (F16, F32) => f16_to_f32(src, dst).map(|()| CastStats::default()),
        _ => {
            // f16 <-> bf16, block by block through an f32 scratch buffer.
            let mut scratch = vec![0u8; BLOCK.min(n) * 4]; // [min(BLOCK, n)] f32
            let mut stats = CastStats::default();
            let (fs, ts) = (from.size(), to.size());
            for (s, d) in src.chunks(BLOCK * fs).zip(dst.chunks_mut(BLOCK * ts)) {
                let wide = &mut scratch[..s.len() / fs * 4];
                cast(s, from, wide, F32)?;
                stats.merge(&cast(wide, F32, d, to)?);
            }
            Ok(stats)
        }
    }
}

/// Validates lengths; returns the element count.
fn check(src: &[u8], from: FloatFormat, dst: &[u8], to: FloatFormat) -> Result<usize, CastError> {
    if !src.len().is_multiple_of(from.size()) {
        return Err(CastError::RaggedSource {
            len: src.len(),
            from,
        });
    }
    let n = src.len() / from.size();
    if n.checked_mul(to.size()) != Some(dst.len()) {
        return Err(CastError::LengthMismatch {
            elements: n,
            dst_len: dst.len(),
            to,
        });
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn u16s(b: &[u8]) -> Vec<u16> {
        b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
    fn to_bf16(v: &[f32]) -> (Vec<u16>, CastStats) {
        let src = f32s(v);
        let mut dst = vec![0u8; v.len() * 2];
        let s = f32_to_bf16(&src, &mut dst).unwrap();
        (u16s(&dst), s)
    }
    fn to_f16(v: &[f32]) -> (Vec<u16>, CastStats) {
        let src = f32s(v);
        let mut dst = vec![0u8; v.len() * 2];
        let s = f32_to_f16(&src, &mut dst).unwrap();
        (u16s(&dst), s)
    }

    #[test]
    fn every_bf16_pattern_round_trips_through_f32() {
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let mut wide = vec![0u8; all.len() * 2];
        bf16_to_f32(&all, &mut wide).unwrap();
        let mut back = vec![0u8; all.len()];
        let stats = f32_to_bf16(&wide, &mut back).unwrap();
        for h in 0..=u16::MAX {
            let i = usize::from(h);
            let w = u32::from_le_bytes(wide[i * 4..i * 4 + 4].try_into().unwrap());
            assert_eq!(w, u32::from(h) << 16, "widening {h:#06x}");
            let b = u16::from_le_bytes([back[i * 2], back[i * 2 + 1]]);
            let is_nan = (h & 0x7fff) > 0x7f80;
            if is_nan {
                // A signalling NaN comes back quiet, never as Inf, sign and payload kept.
                assert_eq!(b, h | 0x0040, "NaN {h:#06x}");
            } else {
                assert_eq!(b, h, "pattern {h:#06x}");
            }
        }
        assert_eq!(stats.overflowed, 0);
        assert_eq!(stats.flushed_to_zero, 0);
        assert_eq!(stats.nan, 2 * 127); // 2 signs × (2^7 − 1) non-zero payloads
    }

    #[test]
    fn every_f16_pattern_round_trips_through_f32() {
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let mut wide = vec![0u8; all.len() * 2];
        f16_to_f32(&all, &mut wide).unwrap();
        let mut back = vec![0u8; all.len()];
        f32_to_f16(&wide, &mut back).unwrap();
        for h in 0..=u16::MAX {
            let i = usize::from(h);
            let w = f32::from_le_bytes(wide[i * 4..i * 4 + 4].try_into().unwrap());
            let reference = half::f16::from_bits(h).to_f32();
            let b = u16::from_le_bytes([back[i * 2], back[i * 2 + 1]]);
            if reference.is_nan() {
                assert!(w.is_nan(), "{h:#06x}");
                assert_eq!(b, h | 0x0200, "NaN {h:#06x} comes back quiet");
            } else {
                assert_eq!(w.to_bits(), reference.to_bits(), "widening {h:#06x}");
                assert_eq!(b, h, "pattern {h:#06x}");
            }
        }
    }

    #[test]
    fn widening_into_an_unaligned_buffer_is_exact() {
        let src: Vec<u8> = (0..3000u16)
            .flat_map(|h| (h.wrapping_mul(37)).to_le_bytes())
            .collect();
        let mut buf = vec![0u8; 3000 * 4 + 1];
        bf16_to_f32(&src, &mut buf[1..]).unwrap();
        for (k, c) in src.chunks_exact(2).enumerate() {
            let got = u32::from_le_bytes(buf[1 + 4 * k..5 + 4 * k].try_into().unwrap());
            assert_eq!(got, u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
        }
        f16_to_f32(&src, &mut buf[1..]).unwrap();
        for (k, c) in src.chunks_exact(2).enumerate() {
            let got = f32::from_le_bytes(buf[1 + 4 * k..5 + 4 * k].try_into().unwrap());
            let want = half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
        }
    }

    #[test]
    fn bf16_rounds_ties_to_even() {
        // 1.0 = 0x3f80_0000. Half an ulp above: tie, 0x3f80 is even -> stays.
        // 0x3f81_8000 is a tie between 0x3f81 (odd) and 0x3f82 (even) -> up.
        let cases: [(u32, u16); 6] = [
            (0x3f80_8000, 0x3f80),
            (0x3f81_8000, 0x3f82),
            (0x3f80_8001, 0x3f81), // above the tie: up
            (0x3f80_7fff, 0x3f80), // below the tie: down
            (0xbf81_8000, 0xbf82), // sign is symmetric
            (0x7f7f_ffff, 0x7f80), // max finite f32 rounds to +Inf
        ];
        let input: Vec<f32> = cases.iter().map(|c| f32::from_bits(c.0)).collect();
        let (out, stats) = to_bf16(&input);
        for ((x, want), got) in cases.iter().zip(&out) {
            assert_eq!(*got, *want, "{x:#010x}");
        }
        assert_eq!(stats.overflowed, 1);
    }

    #[test]
    fn bf16_keeps_nan_quiet_inf_and_sign() {
        let input = [
            f32::from_bits(0x7f80_0001), // signalling NaN, payload only in low bits
            f32::from_bits(0xffc1_2345), // negative quiet NaN with payload
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
        ];
        let (out, stats) = to_bf16(&input);
        assert_eq!(out, vec![0x7fc0, 0xffc1, 0x7f80, 0xff80, 0x8000, 0x0000]);
        assert_eq!(stats.nan, 2);
        assert_eq!(stats.overflowed, 0, "Inf is not an overflow");
    }

    #[test]
    fn bf16_subnormals_round_and_flush() {
        // f32 subnormals: 0x0000_8000 is a tie with 0 (even) -> +0, counted as flushed;
        // 0x0000_8001 rounds up to the smallest bf16 subnormal 0x0001.
        let input = [
            f32::from_bits(0x0000_8000),
            f32::from_bits(0x0000_8001),
            f32::from_bits(0x0001_0000),
        ];
        let (out, stats) = to_bf16(&input);
        assert_eq!(out, vec![0x0000, 0x0001, 0x0001]);
        assert_eq!(stats.flushed_to_zero, 1);
        assert_eq!(stats.subnormal, 2);
    }

    #[test]
    fn f16_counts_overflow_flush_and_subnormals() {
        let input = [
            65504.0,                     // max finite
            65519.99,                    // rounds down to 65504
            65520.0,                     // tie, rounds to even = Inf: overflow
            1.0e6,                       // overflow
            -1.0e6,                      // overflow, negative
            f32::INFINITY,               // Inf, not an overflow
            f32::from_bits(0x3380_0000), // 2^-24 smallest subnormal
            f32::from_bits(0x3300_0000), // 2^-25: tie with 0 -> flushed
            f32::from_bits(0x3300_0001), // just above 2^-25 -> 2^-24
            1.0e-10,                     // flushed
            6.103_515_6e-5,              // 2^-14 smallest normal
            f32::from_bits(0x7f80_0001), // signalling NaN
        ];
        let (out, stats) = to_f16(&input);
        assert_eq!(
            out,
            vec![
                0x7bff, 0x7bff, 0x7c00, 0x7c00, 0xfc00, 0x7c00, 0x0001, 0x0000, 0x0001, 0x0000,
                0x0400, 0x7e00
            ]
        );
        assert_eq!(stats.overflowed, 3);
        assert_eq!(stats.flushed_to_zero, 2);
        assert_eq!(stats.subnormal, 2);
        assert_eq!(stats.nan, 1);
    }

    #[test]
    fn f16_subnormal_ties_to_even() {
        // 1.5 · 2^-24 is a tie between 1 and 2 units -> 2; 2.5 · 2^-24 -> 2.
        let unit = f32::from_bits(0x3380_0000);
        let (out, _) = to_f16(&[1.5 * unit, 2.5 * unit, 3.5 * unit]);
        assert_eq!(out, vec![0x0002, 0x0002, 0x0004]);
    }

    #[test]
    fn f16_bf16_cross_cast_goes_through_f32() {
        let vals = [1.0f32, -2.5, 65504.0, 1.0e-7, f32::INFINITY];
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let mut bf = vec![0u8; f16.len()];
        cast(&f16, FloatFormat::F16, &mut bf, FloatFormat::BF16).unwrap();
        let want: Vec<u16> = vals
            .iter()
            .map(|v| half::bf16::from_f32(half::f16::from_f32(*v).to_f32()).to_bits())
            .collect();
        assert_eq!(u16s(&bf), want);
    }

    #[test]
    fn length_errors_are_reported() {
        let mut dst = vec![0u8; 2];
        assert_eq!(
            cast(&[0u8; 6], FloatFormat::F32, &mut dst, FloatFormat::BF16),
            Err(CastError::RaggedSource {
                len: 6,
                from: FloatFormat::F32
            })
        );
        assert_eq!(
            cast(&[0u8; 8], FloatFormat::F32, &mut dst, FloatFormat::BF16),
            Err(CastError::LengthMismatch {
                elements: 2,
                dst_len: 2,
                to: FloatFormat::BF16
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn f32_to_f16_matches_half(bits in proptest::collection::vec(any::<u32>(), 1..2000)) {
            let vals: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
            let (out, _) = to_f16(&vals);
            for (v, got) in vals.iter().zip(&out) {
                let want = half::f16::from_f32(*v);
                if want.is_nan() {
                    prop_assert!(half::f16::from_bits(*got).is_nan());
                    prop_assert_eq!(*got & 0x8000, want.to_bits() & 0x8000);
                } else {
                    prop_assert_eq!(*got, want.to_bits(), "{:#010x}", v.to_bits());
                }
            }
        }

        #[test]
        fn f32_to_f16_matches_half_in_range(vals in proptest::collection::vec(-70000.0f32..70000.0, 1..2000),
                                            tiny in proptest::collection::vec(-1.0e-4f32..1.0e-4, 1..2000)) {
            for v in vals.iter().chain(&tiny) {
                prop_assert_eq!(f32_to_f16_bits(v.to_bits()), half::f16::from_f32(*v).to_bits(), "{}", v);
            }
        }

        #[test]
        fn f32_to_bf16_matches_half(bits in proptest::collection::vec(any::<u32>(), 1..2000)) {
            let vals: Vec<f32> = bits.iter().map(|b| f32::from_bits(*b)).collect();
            let (out, _) = to_bf16(&vals);
            for (v, got) in vals.iter().zip(&out) {
                prop_assert_eq!(*got, half::bf16::from_f32(*v).to_bits(), "{:#010x}", v.to_bits());
            }
        }
    }
}
