//! Widening conversions to f32, written as plain loops over fixed-size chunks so the
//! compiler vectorizes them (the `half` crate's bf16 slice conversion is a scalar
//! loop). Narrowing casts (f32 → bf16/f16) live in the convert crate.

/// bf16 bits → f32: a 16-bit shift, exact for every value including NaN payloads.
///
/// # Panics
/// If the slices differ in length (a caller bug, not an input error).
pub fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s) << 16);
    }
}

/// Little-endian bf16 bytes (any alignment) → f32.
///
/// # Panics
/// If `src.len() != 2 * dst.len()`.
pub fn bf16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        2 * dst.len(),
        "bf16_bytes_to_f32: length mismatch"
    );
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
    }
}

/// f16 bits → f32, exact (through `half`, which uses F16C where the CPU has it).
///
/// # Panics
/// If the slices differ in length.
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    assert_eq!(src.len(), dst.len(), "f16_to_f32: length mismatch");
    let src: &[half::f16] = bytemuck::cast_slice(src);
    src.convert_to_f32_slice(dst);
}

/// Little-endian f16 bytes (any alignment) → f32.
///
/// # Panics
/// If `src.len() != 2 * dst.len()`.
pub fn f16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        2 * dst.len(),
        "f16_bytes_to_f32: length mismatch"
    );
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = half::f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
    }
}

/// Little-endian f32 bytes (any alignment) → f32.
///
/// # Panics
/// If `src.len() != 4 * dst.len()`.
pub fn f32_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        4 * dst.len(),
        "f32_bytes_to_f32: length mismatch"
    );
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

/// Little-endian f64 bytes (any alignment) → f32, rounding to nearest.
///
/// # Panics
/// If `src.len() != 8 * dst.len()`.
pub fn f64_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        8 * dst.len(),
        "f64_bytes_to_f32: length mismatch"
    );
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        *d = f64::from_le_bytes(b) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_every_bit_pattern_is_exact() {
        let src: Vec<u16> = (0..=u16::MAX).collect();
        let mut dst = vec![0f32; src.len()];
        bf16_to_f32(&src, &mut dst);
        let bytes: Vec<u8> = src.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut dst2 = vec![0f32; src.len()];
        bf16_bytes_to_f32(&bytes, &mut dst2);
        for ((&s, d), d2) in src.iter().zip(&dst).zip(&dst2) {
            assert_eq!(d.to_bits(), u32::from(s) << 16);
            assert_eq!(d.to_bits(), d2.to_bits());
            let h = half::bf16::from_bits(s).to_f32();
            if !h.is_nan() {
                assert_eq!(d.to_bits(), h.to_bits());
            }
        }
    }

    #[test]
    fn f16_every_bit_pattern_matches_half() {
        let src: Vec<u16> = (0..=u16::MAX).collect();
        let mut dst = vec![0f32; src.len()];
        f16_to_f32(&src, &mut dst);
        let bytes: Vec<u8> = src.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut dst2 = vec![0f32; src.len()];
        f16_bytes_to_f32(&bytes, &mut dst2);
        for ((&s, d), d2) in src.iter().zip(&dst).zip(&dst2) {
            let want = half::f16::from_bits(s).to_f32();
            if want.is_nan() {
                assert!(d.is_nan() && d2.is_nan());
            } else {
                assert_eq!(d.to_bits(), want.to_bits());
                assert_eq!(d2.to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn unaligned_f32_and_f64() {
        let vals = [1.5f32, -0.0, f32::INFINITY, 3.25e-39];
        let mut bytes = vec![0u8];
        bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        let mut out = [0f32; 4];
        f32_bytes_to_f32(&bytes[1..], &mut out);
        assert_eq!(out.map(f32::to_bits), vals.map(f32::to_bits));
        let d: Vec<u8> = [0.1f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = [0f32; 2];
        f64_bytes_to_f32(&d, &mut out);
        assert_eq!(out, [0.1f32, -2.0]);
    }
}
