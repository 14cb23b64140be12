//! Borrowed views of tensor data, with an alignment-safe path to typed slices.
//!
//! Writers pad headers to a multiple of 8 so data is normally aligned, but some (MLX)
//! do not: a view hands out `&[f32]` only when the bytes really are aligned, and
//! otherwise the `to_f32_*` functions copy.

use crate::cast;
use crate::checkpoint::TensorInfo;
use crate::dtype::Dtype;

/// A tensor's bytes, borrowed from the checkpoint's memory map.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// The tensor's header entry.
    pub info: &'a TensorInfo,
    /// Its raw little-endian bytes (`info.nbytes()` long).
    pub bytes: &'a [u8],
}

/// Why a view cannot be read as requested.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    /// The dtype cannot be widened to f32.
    #[error("tensor `{name}`: cannot read {dtype} as f32 (supported: F32, F16, BF16, F64)")]
    Unsupported {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// The output buffer has the wrong length.
    #[error("tensor `{name}`: output buffer holds {got} values but the tensor has {want}")]
    WrongLength {
        /// Tensor name.
        name: String,
        /// Buffer length.
        got: usize,
        /// Element count.
        want: usize,
    },
}

// Reinterpreting bytes as f32/u16 assumes the file's little-endian order is native.
#[cfg(not(target_endian = "little"))]
compile_error!("orient reads safetensors data in place and supports little-endian targets only");

impl<'a> TensorView<'a> {
    /// The data as `&[f32]` without copying: `Some` only for F32 data that is 4-byte
    /// aligned in memory.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.info.dtype != Dtype::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// F16 or BF16 data as raw `u16` bits without copying, when 2-byte aligned.
    pub fn as_u16(&self) -> Option<&'a [u16]> {
        if !matches!(self.info.dtype, Dtype::F16 | Dtype::BF16) {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// BF16 data as `&[half::bf16]` without copying, when 2-byte aligned.
    pub fn as_bf16(&self) -> Option<&'a [half::bf16]> {
        if self.info.dtype != Dtype::BF16 {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// F16 data as `&[half::f16]` without copying, when 2-byte aligned.
    pub fn as_f16(&self) -> Option<&'a [half::f16]> {
        if self.info.dtype != Dtype::F16 {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes).ok()
    }

    /// Widens the data into `out` (F32 copies, F16/BF16 widen exactly, F64 rounds).
    /// Works at any alignment.
    pub fn to_f32_into(&self, out: &mut [f32]) -> Result<(), ViewError> {
        let want = self.info.numel();
        if out.len() != want {
            return Err(ViewError::WrongLength {
                name: self.info.name.clone(),
                got: out.len(),
                want,
            });
        }
        if widen_into(self.info.dtype, self.bytes, out) {
            Ok(())
        } else {
            Err(ViewError::Unsupported {
                name: self.info.name.clone(),
                dtype: self.info.dtype,
            })
        }
    }

    /// Widens the data into a new vector.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, ViewError> {
        let mut out = vec![0f32; self.info.numel()];
        self.to_f32_into(&mut out)?;
        Ok(out)
    }

    /// The data as f32: borrowed when it is aligned F32, widened into a copy otherwise.
    pub fn to_f32_cow(&self) -> Result<std::borrow::Cow<'a, [f32]>, ViewError> {
        match self.as_f32() {
            Some(s) => Ok(std::borrow::Cow::Borrowed(s)),
            None => self.to_f32_vec().map(std::borrow::Cow::Owned),
        }
    }
}

/// Widens `bytes` of `dtype` (F32, F16, BF16 or F64) into `out`, using the zero-copy
/// slice kernels when the bytes are aligned and the byte-wise ones otherwise. Returns
/// false, writing nothing, for any other dtype.
///
/// # Panics
/// If `out` does not hold exactly the number of elements in `bytes`.
pub fn widen_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> bool {
    match dtype {
        Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(src) => out.copy_from_slice(src),
            Err(_) => cast::f32_bytes_to_f32(bytes, out),
        },
        Dtype::BF16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
            Ok(src) => cast::bf16_to_f32(src, out),
            Err(_) => cast::bf16_bytes_to_f32(bytes, out),
        },
        Dtype::F16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
            Ok(src) => cast::f16_to_f32(src, out),
            Err(_) => cast::f16_bytes_to_f32(bytes, out),
        },
        Dtype::F64 => cast::f64_bytes_to_f32(bytes, out),
        _ => return false,
    }
    true
}
