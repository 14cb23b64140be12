//! bf16 weights multiplied on the CPU's AMX tiles (Intel Sapphire Rapids and later), when the
//! CPU and the operating system offer them; everything else keeps gemm's f32 path.
//!
//! **Same accuracy as f32.** A tile product (`tdpbf16ps`) multiplies bf16 by bf16 and sums in
//! f32. The weights are bf16 already; each f32 activation is split into three bf16 parts,
//! `x = hi + mid + lo` (each part the leading 8 significant bits of what is left), which
//! represent an f32 exactly (3 × 8 = 24 significant bits) down to magnitudes of 2⁻¹⁰³; below
//! that, parts under 2⁻¹²⁶ (which the tiles would treat as zero anyway) are dropped, an
//! absolute error under 2⁻¹²⁶. The product of two bf16 values is exact in f32, so every
//! output is a sum of the exact products `w·x`, accumulated in f32 with one rounding per
//! addition, as gemm's f32 kernels do; only the order of the additions differs.
//!
//! **Why it is faster.** One tile product does 16·16·32 multiply–adds; three of them per
//! weight tile still beat the f32 FMA kernels, and the weights are read in place as bf16
//! instead of being widened to f32 first. Measured on a Qwen2-7B-shaped bf16 model: see the
//! README ("Performance").
//!
//! **Layout independence.** An HF weight (`[out, in]` rows) is read in place as the tiles' A
//! operand (`Cᵀ = W · xᵀ`); a Flax or GPT-2 kernel (`[in, out]`) is interleaved into panels
//! (pairs of inputs per output, a streaming copy) and taken as the B operand (`C = x · W`);
//! any other view is gathered into rows. A tile product sums, for each output, the same
//! products in the same order whichever operand the weight is, and each output's order
//! depends only on `in`: an HF and a Flax checkpoint of the same model, a prefill and a
//! decode step, and any row of a product computed alone or among others give the same bits
//! (tested).
//!
//! Tile shapes (weights in rows): A (weights) 16 rows × 32 bf16 of `in`; B (activations) 16
//! pairs of `in` × 16 tokens × 2, the "VNNI" order (`Packed`); C 16 outputs × 16 tokens of
//! f32 (in panels, the other way round). The kernel keeps four C tiles (2 output blocks × 2
//! token blocks), two weight and two activation tiles in the eight tile registers.

// Off x86-64 Linux only the portable kernels exist: the tile code is compiled but never run.
#![cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    allow(dead_code)
)]

use std::sync::OnceLock;

use rayon::prelude::*;

use super::ModelError;

/// Which kernels bf16 products use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernels {
    /// AMX tiles when the CPU and OS offer them, else gemm's f32 kernels.
    Auto,
    /// gemm's f32 kernels only (bf16 weights widened first).
    Portable,
}

impl Kernels {
    /// The choice named by `ORIENT_KERNELS` (`auto`, the default, or `portable`).
    pub fn from_env() -> Result<Kernels, String> {
        match std::env::var("ORIENT_KERNELS") {
            Err(std::env::VarError::NotPresent) => Ok(Kernels::Auto),
            Ok(v) if v.is_empty() || v == "auto" => Ok(Kernels::Auto),
            Ok(v) if v == "portable" => Ok(Kernels::Portable),
            Ok(v) => Err(format!(
                "ORIENT_KERNELS={v:?} is not a kernel choice: use `auto` or `portable`"
            )),
            Err(std::env::VarError::NotUnicode(v)) => Err(format!(
                "ORIENT_KERNELS={v:?} is not a kernel choice: use `auto` or `portable`"
            )),
        }
    }

    /// Whether bf16 products run on AMX tiles under this choice, on this machine.
    pub fn amx(self) -> bool {
        self == Kernels::Auto && available()
    }
}

/// Token rows packed and multiplied at a time (bounds the packed copy of the activations).
const M_CHUNK: usize = 256;
/// `in` elements per pass over a block of tiles (keeps a chunk of the packed activations in
/// the core's L2 cache).
const K_CHUNK: usize = 1024;
/// Output pairs (32 outputs each) per parallel task.
const PAIRS_PER_TASK: usize = 4;

/// Bytes of one panel of a weight in panels (32 outputs × `cols` inputs of bf16).
pub(crate) fn panel_bytes(cols: usize) -> usize {
    cols / 2 * 128
}

/// Whether the CPU has AMX-BF16 tiles and the OS lets this process use them (asked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(imp::request)
}

/// A bf16 `[rows, cols]` weight (`[out, in]`, `cols` a multiple of 32) in one of two orders:
///
/// - rows (an HF `[out, in]` tensor read in place): row `r` is the `cols` little-endian bf16
///   values at element `r · row_stride` of `bytes`; the tiles take it as their A operand
///   (`Cᵀ = W · xᵀ`);
/// - panels (made from an `[in, out]` kernel, [`Weight::paired`]): for each block of 32
///   outputs (`rows` rounded up to 32, the rest zero), `cols / 2` pairs of inputs, each the 32
///   outputs' values of inputs `2j` and `2j + 1` (128 bytes); the tiles take it as their B
///   operand (`C = x · W`), one contiguous 2 KiB per step. Each output is then the same sum
///   in the same order as from rows, so both give the same bits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Weight<'a> {
    bytes: &'a [u8],
    rows: usize,
    cols: usize,
    row_stride: usize,
    paired: bool,
}

impl<'a> Weight<'a> {
    /// Checks that the rows fit in `bytes` and that `cols` is a multiple of 32.
    pub fn new(
        bytes: &'a [u8],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Weight<'a>, ModelError> {
        let bad = |why: &str| {
            ModelError::Internal(format!(
                "bf16 weight [{rows}, {cols}] with row stride {row_stride}: {why}"
            ))
        };
        if !cols.is_multiple_of(32) || cols == 0 {
            return Err(bad("inputs are not a multiple of 32"));
        }
        if rows > 1 && row_stride < cols {
            return Err(bad("rows overlap"));
        }
        let elems = rows
            .checked_sub(1)
            .map(|r| r.checked_mul(row_stride).and_then(|e| e.checked_add(cols)))
            .unwrap_or(Some(0))
            .ok_or_else(|| bad("too large"))?;
        if elems.checked_mul(2).is_none_or(|b| b > bytes.len()) {
            return Err(bad("does not fit in its data"));
        }
        if row_stride
            .checked_mul(2)
            .is_none_or(|s| isize::try_from(s).is_err())
        {
            return Err(bad("row stride too large"));
        }
        Ok(Weight {
            bytes,
            rows,
            cols,
            row_stride,
            paired: false,
        })
    }

    /// A weight in panels (see [`Weight`]): `rows` outputs rounded up to 32, `cols` inputs.
    pub fn paired(bytes: &'a [u8], rows: usize, cols: usize) -> Result<Weight<'a>, ModelError> {
        if !cols.is_multiple_of(32) || cols == 0 {
            return Err(ModelError::Internal(format!(
                "bf16 weight [{rows}, {cols}] in panels: inputs are not a multiple of 32"
            )));
        }
        let need = rows
            .div_ceil(32)
            .checked_mul(panel_bytes(cols))
            .filter(|&b| b <= bytes.len());
        if need.is_none() {
            return Err(ModelError::Internal(format!(
                "bf16 weight [{rows}, {cols}] in panels does not fit in {} bytes",
                bytes.len()
            )));
        }
        Ok(Weight {
            bytes,
            rows,
            cols,
            row_stride: 0,
            paired: true,
        })
    }
}

/// The activations `x [M, K]` as three bf16 parts, part `p` and token block `b` (16 tokens)
/// at element `(p · blocks + b) · 16 · kp`, in the order the weight's order needs:
///
/// - for a weight in rows (x is the B operand), pair `j` of inputs, token `t`: the two bf16
///   of inputs `2j`, `2j + 1` at `(j · 16 + t) · 2` within the block;
/// - for a weight in pairs (x is the A operand), token `t`, input `i` at `t · kp + i`.
///
/// Inputs past `K` and tokens past `M` are zero; `blocks` is even (the kernel takes token
/// blocks in pairs).
struct Packed {
    data: Vec<u16>,
    blocks: usize,
    kp: usize,
}

/// The three bf16 parts of `x`, each the leading bits of what the previous ones left: their
/// sum is `x` exactly when `|x| ≥ 2⁻¹⁰³` (see the module docs). Infinities and NaN go whole
/// into the first part.
#[inline]
fn split(x: f32) -> [u16; 3] {
    if !x.is_finite() {
        return [
            (x.to_bits() >> 16) as u16 | if x.is_nan() { 0x40 } else { 0 },
            0,
            0,
        ];
    }
    let mut parts = [0u16; 3];
    let mut rest = x;
    for p in &mut parts {
        let bits = rest.to_bits() & 0xffff_0000;
        *p = (bits >> 16) as u16;
        rest -= f32::from_bits(bits);
    }
    parts
}

/// [`split`], for the property test beside the forward's.
#[cfg(test)]
pub(crate) fn split_for_tests(x: f32) -> [u16; 3] {
    split(x)
}

impl Packed {
    /// Packs rows `rows` of `x` (`[M, k]`, row-major) with `kp ≥ k` inputs (a multiple of 32),
    /// for a weight in pairs order when `paired`, on up to `threads` threads (one token block
    /// per task).
    fn new(
        x: &[f32],
        k: usize,
        kp: usize,
        rows: std::ops::Range<usize>,
        paired: bool,
        threads: usize,
    ) -> Packed {
        let m = rows.len();
        let blocks = m.div_ceil(32) * 2;
        let part = blocks * 16 * kp; // u16 per part
        let mut data = vec![0u16; 3 * part];
        // one task per token block: its slices of the three parts
        let (p0, rest) = data.split_at_mut(part);
        let (p1, p2) = rest.split_at_mut(part);
        let block = 16 * kp;
        let pack = |(b, ((d0, d1), d2)): (usize, BlockParts<'_>)| {
            for t in 0..16 {
                let row = rows.start + b * 16 + t;
                if row >= rows.end {
                    break;
                }
                let xr = &x[row * k..(row + 1) * k];
                for (i, &v) in xr.iter().enumerate() {
                    let at = if paired {
                        t * kp + i
                    } else {
                        (i / 2) * 32 + t * 2 + i % 2
                    };
                    let [h, md, l] = split(v);
                    d0[at] = h;
                    d1[at] = md;
                    d2[at] = l;
                }
            }
        };
        if threads <= 1 {
            p0.chunks_mut(block)
                .zip(p1.chunks_mut(block))
                .zip(p2.chunks_mut(block))
                .enumerate()
                .for_each(pack);
        } else {
            p0.par_chunks_mut(block)
                .zip(p1.par_chunks_mut(block))
                .zip(p2.par_chunks_mut(block))
                .enumerate()
                .for_each(pack);
        }
        Packed { data, blocks, kp }
    }
}

/// One token block's slices of the three parts of a [`Packed`].
type BlockParts<'a> = ((&'a mut [u16], &'a mut [u16]), &'a mut [u16]);

/// The destination of a product, written by several tasks at disjoint columns.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    row_stride: usize,
}
// SAFETY: tasks write disjoint columns of `Dst` (each its own outputs), checked in bounds by
// `matmul` before any task starts; the buffer outlives the parallel section.
unsafe impl Send for Dst {}
// SAFETY: as for `Send`.
unsafe impl Sync for Dst {}

/// `dst [M, N] = x [M, K] · wᵀ` (or `+=` when `accumulate`, e.g. onto a bias) for the bf16
/// weight `w [N, Kp]` (`Kp` ≥ `K`, a multiple of 32, its columns past `K` zero), on AMX tiles,
/// using up to `threads` rayon threads. `dst` rows are `dst_stride` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    x: &[f32],
    m: usize,
    k: usize,
    w: Weight<'_>,
    accumulate: bool,
    threads: usize,
) -> Result<(), ModelError> {
    let n = w.rows;
    if k > w.cols || m.checked_mul(k).is_none_or(|len| x.len() < len) {
        return Err(ModelError::Internal(format!(
            "AMX product: [{m}, {k}] · [{}, {n}]ᵀ with {} input values",
            w.cols,
            x.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let last = (m - 1)
        .checked_mul(dst_stride)
        .and_then(|e| e.checked_add(n))
        .filter(|&e| e <= dst.len() && (m == 1 || dst_stride >= n));
    if last.is_none() {
        return Err(ModelError::Internal(format!(
            "AMX product: destination [{m}, {n}] with row stride {dst_stride} does not fit in {}",
            dst.len()
        )));
    }
    if !available() {
        return Err(ModelError::Internal(
            "AMX product asked for on a machine without AMX".into(),
        ));
    }
    let out = Dst {
        ptr: dst.as_mut_ptr(),
        row_stride: dst_stride,
    };
    let pairs = n.div_ceil(32);
    let tasks = pairs.div_ceil(PAIRS_PER_TASK);
    let mut start = 0;
    while start < m {
        let rows = start..(start + M_CHUNK).min(m);
        let packed = Packed::new(x, k, w.cols, rows.clone(), w.paired, threads);
        let run = |task: usize| {
            let first = task * PAIRS_PER_TASK;
            let pairs = first..(first + PAIRS_PER_TASK).min(pairs);
            // SAFETY: the tile registers are configured on this thread before use
            // (`imp::Tiles::new`) and released when `tiles` drops; `w` holds `n` rows of
            // `w.cols` bf16 (checked by `Weight::new`), `packed` holds its `blocks` token
            // blocks of `kp = w.cols` inputs, and `out` has `rows` rows of `n` columns
            // (checked above); this task writes only the columns of its own pairs.
            unsafe { imp::pairs(&w, &packed, pairs, rows.clone(), out, accumulate) };
        };
        if threads <= 1 || tasks == 1 {
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
        start = rows.end;
    }
    Ok(())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use std::arch::asm;
    use std::ops::Range;

    use super::{Dst, Packed, Weight, K_CHUNK};

    /// Asks Linux for the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`), after checking that the CPU has AMX-TILE and AMX-BF16.
    pub(super) fn request() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only when the CPU has it.
        #[allow(unused_unsafe)]
        let (max_leaf, edx7) = unsafe {
            let max = __cpuid(0).eax;
            (max, if max >= 7 { __cpuid_count(7, 0).edx } else { 0 })
        };
        // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE
        if max_leaf < 7 || edx7 & (1 << 22) == 0 || edx7 & (1 << 24) == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with this request only changes which extended state the kernel
        // lets this process use; it touches no memory of ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }

    /// The tile configuration (palette 1): tiles 0–7 all 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// The tile registers of this thread, configured; released on drop.
    struct Tiles;

    impl Tiles {
        /// Safety: AMX must be available to this process ([`request`] returned true).
        unsafe fn new() -> Tiles {
            let mut c = Config {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                colsb: [0; 16],
                rows: [0; 16],
            };
            for t in 0..8 {
                c.colsb[t] = 64;
                c.rows[t] = 16;
            }
            // SAFETY: `c` is a valid 64-byte palette-1 configuration (caller: AMX usable).
            unsafe { asm!("ldtilecfg [{}]", in(reg) &c as *const Config, options(nostack)) };
            Tiles
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releasing the tile state is always valid once configured.
            unsafe { asm!("tilerelease", options(nostack)) };
        }
    }

    /// Outputs of the pairs `pairs` (32 outputs each; the last may be partial) for the token
    /// rows `rows` of `out`, from `w` and the packing of those rows.
    ///
    /// Safety: AMX usable; `w`, `p` and `out` as checked by `super::matmul`; no other thread
    /// writes these outputs' columns of `out`.
    pub(super) unsafe fn pairs(
        w: &Weight<'_>,
        p: &Packed,
        pairs: Range<usize>,
        rows: Range<usize>,
        out: Dst,
        accumulate: bool,
    ) {
        // SAFETY: AMX usable (caller).
        let _tiles = unsafe { Tiles::new() };
        let kp = p.kp; // = w.cols (`super::matmul` packs to the weight's width)
        let m = rows.len();
        let token_pairs = p.blocks / 2;
        let mut c = vec![0f32; token_pairs * 1024]; // [token pair][4 tiles][16 × 16]
        let mut padded: Vec<u8> = Vec::new(); // [32, kp] bf16: a last, partial pair
        for pair in pairs {
            let n0 = pair * 32;
            let n_here = (w.rows - n0).min(32);
            let (base, stride) = if w.paired {
                // SAFETY: panel `pair` lies within `w` (`Weight::paired`, n0 < w.rows).
                (
                    unsafe { w.bytes.as_ptr().add(pair * super::panel_bytes(kp)) },
                    128,
                )
            } else if n_here == 32 {
                // SAFETY: row n0 lies within `w` (n0 < w.rows).
                (
                    unsafe { w.bytes.as_ptr().add(n0 * w.row_stride * 2) },
                    w.row_stride * 2,
                )
            } else {
                padded.clear();
                padded.resize(32 * kp * 2, 0);
                for r in 0..n_here {
                    let at = (n0 + r) * w.row_stride * 2;
                    padded[r * kp * 2..(r + 1) * kp * 2].copy_from_slice(&w.bytes[at..at + kp * 2]);
                }
                (padded.as_ptr(), kp * 2)
            };
            let mut k0 = 0;
            while k0 < kp {
                let k1 = (k0 + K_CHUNK).min(kp);
                for tp in 0..token_pairs {
                    let block = if w.paired {
                        block::<true>
                    } else {
                        block::<false>
                    };
                    // SAFETY: `base` is 32 weight rows of `kp` bf16 `stride` bytes apart, or a
                    // panel of `kp / 2` pairs (`w.paired`, as `p` was packed for); the packed
                    // parts hold token blocks 2tp, 2tp+1 for inputs k0..k1; `c` holds 4 tiles
                    // for this token pair.
                    unsafe {
                        block(
                            base,
                            stride,
                            p,
                            kp,
                            tp,
                            k0,
                            k1,
                            c.as_mut_ptr().add(tp * 1024),
                            k0 == 0,
                            tp == 0, // the first token pair reads the weights from memory
                        )
                    };
                }
                k0 = k1;
            }
            // C tile (i, j): outputs n0 + 16i.., tokens 32tp + 16j..
            for tp in 0..token_pairs {
                for tile in 0..4 {
                    let (i, j) = (tile / 2, tile % 2);
                    let ct = &c[tp * 1024 + tile * 256..][..256];
                    for tok in 0..16 {
                        let row = tp * 32 + j * 16 + tok;
                        if row >= m {
                            break;
                        }
                        for o in 0..16 {
                            let col = n0 + i * 16 + o;
                            if col >= n0 + n_here {
                                break;
                            }
                            // C is [out, token] from rows, [token, out] from pairs
                            let v = if w.paired {
                                ct[tok * 16 + o]
                            } else {
                                ct[o * 16 + tok]
                            };
                            // SAFETY: (rows.start + row, col) is inside `out` (checked by the
                            // caller) and only this task writes column `col`.
                            unsafe {
                                let d = out.ptr.add((rows.start + row) * out.row_stride + col);
                                *d = if accumulate { *d + v } else { v };
                            }
                        }
                    }
                }
            }
        }
    }

    /// C tiles (2 output blocks × 2 token blocks) `+=` W · x over inputs `k0..k1` for the
    /// three activation parts, loading C from `c` (or zero when `first`) and storing it back;
    /// with `prefetch`, each step asks for the next step's weight rows (5% faster on the
    /// 7B-shaped model: the first token pair reads them from memory, the others from cache).
    ///
    /// `PAIRED = false`: `a` is 32 weight rows (`stride` bytes apart) read as A tiles, the
    /// parts are B tiles, C tile `(i, j)` is `[out, token]`. `PAIRED = true`: `a` is a panel of
    /// 32 outputs (input pairs `stride` = 128 bytes apart, the second 16 outputs 64 bytes on)
    /// read as B tiles, the parts are A tiles, C is `[token, out]`. Each C element sums the same products
    /// in the same order either way.
    ///
    /// Safety: tiles configured; `a` as above for inputs up to `kp`; `p` holds token blocks
    /// `2tp`, `2tp + 1` of `kp` inputs in the order `PAIRED` needs; `c` points at 1024 f32.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const PAIRED: bool>(
        a: *const u8,
        stride: usize,
        p: &Packed,
        kp: usize,
        tp: usize,
        k0: usize,
        k1: usize,
        c: *mut f32,
        first: bool,
        prefetch: bool,
    ) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let s64 = 64usize;
        // part tiles: 64-byte rows of pairs (rows order) or of 32 inputs (pairs order)
        let sx = if PAIRED { kp * 2 } else { 64 };
        // SAFETY: (for the whole body) every pointer below stays within the buffers the
        // caller vouches for: C is 4 × 256 f32; weight tiles for inputs k..k+32 with k < kp;
        // part q, block b, inputs k..k+32 at (q·blocks + b)·16·kp + (k·16 or k).
        unsafe {
            if first {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack)
                );
            } else {
                asm!(
                    "tileloadd tmm0, [{c0} + {s}*1]",
                    "tileloadd tmm1, [{c1} + {s}*1]",
                    "tileloadd tmm2, [{c2} + {s}*1]",
                    "tileloadd tmm3, [{c3} + {s}*1]",
                    c0 = in(reg) c, c1 = in(reg) c.add(256), c2 = in(reg) c.add(512),
                    c3 = in(reg) c.add(768), s = in(reg) s64, options(nostack)
                );
            }
            let part = p.blocks * 16 * kp;
            let x_base = p.data.as_ptr().add(2 * tp * 16 * kp);
            let mut k = k0;
            while k < k1 {
                let (a0, a1) = if PAIRED {
                    let a0 = a.add((k / 2) * stride);
                    (a0, a0.add(64))
                } else {
                    (a.add(k * 2), a.add(16 * stride + k * 2))
                };
                if prefetch && !PAIRED && k + 32 < k1 {
                    // the next step's weight rows, from memory, while this one multiplies
                    for r in 0..16 {
                        let next = a.add((k + 32) * 2 + r * stride);
                        _mm_prefetch::<_MM_HINT_T0>(next as *const i8);
                        _mm_prefetch::<_MM_HINT_T0>(next.add(16 * stride) as *const i8);
                    }
                }
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    a0 = in(reg) a0, a1 = in(reg) a1, sa = in(reg) stride,
                    options(nostack)
                );
                for q in 0..3 {
                    let b0 = x_base.add(q * part + if PAIRED { k } else { k * 16 });
                    let b1 = b0.add(16 * kp);
                    asm!(
                        "tileloadd tmm6, [{b0} + {s}*1]",
                        "tileloadd tmm7, [{b1} + {s}*1]",
                        b0 = in(reg) b0, b1 = in(reg) b1, s = in(reg) sx, options(nostack)
                    );
                    if PAIRED {
                        // C[token, out] += x · W
                        asm!(
                            "tdpbf16ps tmm0, tmm6, tmm4",
                            "tdpbf16ps tmm1, tmm7, tmm4",
                            "tdpbf16ps tmm2, tmm6, tmm5",
                            "tdpbf16ps tmm3, tmm7, tmm5",
                            options(nostack)
                        );
                    } else {
                        // C[out, token] += W · xᵀ
                        asm!(
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            options(nostack)
                        );
                    }
                }
                k += 32;
            }
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) c, c1 = in(reg) c.add(256), c2 = in(reg) c.add(512),
                c3 = in(reg) c.add(768), s = in(reg) s64, options(nostack)
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use std::ops::Range;

    use super::{Dst, Packed, Weight};

    /// No AMX off x86-64 Linux.
    pub(super) fn request() -> bool {
        false
    }

    /// Never called: [`super::available`] is false.
    pub(super) unsafe fn pairs(
        _: &Weight<'_>,
        _: &Packed,
        _: Range<usize>,
        _: Range<usize>,
        _: Dst,
        _: bool,
    ) {
    }
}
