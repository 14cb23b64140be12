//! The one place that calls the `gemm` crate.
//!
//! `gemm::gemm` is `unsafe`, takes raw pointers with element strides, and names its scalars the
//! reverse of BLAS (`dst = alpha·dst + beta·lhs·rhs`). Wrapping it once, behind views whose
//! bounds are checked on construction, keeps every other call site safe and readable.
//!
//! A weight stored `[out, in]` (HF `nn.Linear`) and one stored `[in, out]` (Flax `kernel`,
//! GPT-2 `Conv1D`) are both the same logical `[in, out]` right-hand side here; only the strides
//! differ, so a transposed layout costs no copy.
//!
//! **Bit-identical results across layouts.** gemm's arithmetic (the order in which the k
//! products are summed) is the same for every stride pattern on its general, packed
//! micro-kernel path: packing only copies. But gemm takes two stride-dependent shortcuts: a
//! matrix–vector path when the product has a single row (`m = 1`), which sums row-major and
//! column-major operands in different orders, and a "horizontal" dot-product kernel for tiny
//! outputs (`m·n ≤ 256`) used only when the weight's rows are contiguous. Either would make an
//! HF and a Flax checkpoint of the same model differ in the last bits. [`matmul`] therefore pads
//! such products with zero rows (at most a few rows: negligible work) so that every product runs
//! on the general path, whatever the strides.

use gemm::Parallelism;

use super::ModelError;

/// A read-only strided matrix: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A strided view; fails when an element would fall outside `data`.
    pub fn new(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self, ModelError> {
        check_bounds(data.len(), rows, cols, row_stride, col_stride)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// A dense row-major `[rows, cols]` view.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, ModelError> {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element `(r, c)`, or `None` out of range.
    pub fn get(&self, r: usize, c: usize) -> Option<f32> {
        if r >= self.rows || c >= self.cols {
            return None;
        }
        self.data
            .get(r * self.row_stride + c * self.col_stride)
            .copied()
    }
}

/// A writable matrix whose rows are contiguous (`col_stride = 1`) and do not overlap
/// (`row_stride ≥ cols`), so that gemm's threads never write the same element.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// Rows of `cols` elements, `row_stride` apart (e.g. a column block of a wider matrix).
    pub fn new(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Self, ModelError> {
        if rows > 1 && row_stride < cols {
            return Err(ModelError::Internal(format!(
                "overlapping destination rows: row stride {row_stride} < {cols} columns"
            )));
        }
        check_bounds(data.len(), rows, cols, row_stride, 1)?;
        Ok(MatMut {
            data,
            rows,
            cols,
            row_stride,
        })
    }

    /// A dense row-major `[rows, cols]` destination.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self, ModelError> {
        Self::new(data, rows, cols, cols)
    }
}

/// `(rows-1)·rs + (cols-1)·cs < len`, with checked arithmetic.
fn check_bounds(
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<(), ModelError> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
    match last {
        Some(last) if last < len => {}
        _ => {
            return Err(ModelError::Internal(format!(
            "matrix view [{rows}, {cols}] with strides ({rs}, {cs}) does not fit in {len} elements"
        )))
        }
    }
    // gemm takes isize strides.
    if isize::try_from(rs).is_err() || isize::try_from(cs).is_err() {
        return Err(ModelError::Internal(format!(
            "stride ({rs}, {cs}) too large"
        )));
    }
    Ok(())
}

/// How many rows a product needs so that gemm takes its general, layout-independent path:
/// at least 2 (no matrix–vector path) and more than 256 output elements (no horizontal kernel).
fn min_rows_for_general_path(n: usize) -> usize {
    let for_horizontal = 256 / n.max(1) + 1;
    for_horizontal.max(2)
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate` (e.g. onto a bias), in f32,
/// using `threads` rayon threads (1 = this thread only).
///
/// Shapes: `lhs` `[m, k]`, `rhs` `[k, n]`, `dst` `[m, n]`. The result does not depend on the
/// strides of `lhs` and `rhs` (see the module docs).
pub fn matmul(
    dst: MatMut<'_>,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    accumulate: bool,
    threads: usize,
) -> Result<(), ModelError> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k || dst.rows != m || dst.cols != n {
        return Err(ModelError::Internal(format!(
            "matmul shapes: [{m}, {k}] · [{}, {n}] → [{}, {}]",
            rhs.rows, dst.rows, dst.cols
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if m == 1 {
        gemv(dst, lhs, rhs, accumulate);
        return Ok(());
    }
    matmul_rows(dst, lhs, rhs, accumulate, threads)
}

/// [`matmul`] without its single-row kernel: a product of one (or a few) rows is padded onto
/// gemm's general path, so every row of the result has the same bits as it would have within
/// a product of many rows. For callers that split one product into row blocks (attention
/// tiles, the logits of chosen positions) and must not change the numbers by doing so.
pub fn matmul_rows(
    dst: MatMut<'_>,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    accumulate: bool,
    threads: usize,
) -> Result<(), ModelError> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k || dst.rows != m || dst.cols != n {
        return Err(ModelError::Internal(format!(
            "matmul shapes: [{m}, {k}] · [{}, {n}] → [{}, {}]",
            rhs.rows, dst.rows, dst.cols
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let need = min_rows_for_general_path(n);
    if m >= need || k == 0 {
        raw_gemm(dst, lhs, rhs, accumulate, threads);
        return Ok(());
    }
    // Pad to `need` rows: the extra rows of lhs are zero and their results are dropped.
    let mut lhs_pad = vec![0.0f32; need * k]; // [need, k]
    for r in 0..m {
        for c in 0..k {
            lhs_pad[r * k + c] = lhs.data[r * lhs.row_stride + c * lhs.col_stride];
        }
    }
    let mut dst_pad = vec![0.0f32; need * n]; // [need, n]
    if accumulate {
        for r in 0..m {
            dst_pad[r * n..(r + 1) * n]
                .copy_from_slice(&dst.data[r * dst.row_stride..r * dst.row_stride + n]);
        }
    }
    raw_gemm(
        MatMut::row_major(&mut dst_pad, need, n)?,
        MatRef::row_major(&lhs_pad, need, k)?,
        rhs,
        accumulate,
        threads,
    );
    for r in 0..m {
        dst.data[r * dst.row_stride..r * dst.row_stride + n]
            .copy_from_slice(&dst_pad[r * n..(r + 1) * n]);
    }
    Ok(())
}

/// Lanes of the matrix–vector kernel: the k products of each output are summed in 8 running
/// sums (`k mod 8`), then added in a fixed tree.
const LANES: usize = 8;

/// The fixed final reduction of the 8 running sums.
#[inline(always)]
fn reduce(a: &[f32; LANES]) -> f32 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// `dst [1, n] (+)= x [1, k] · rhs [k, n]`, memory-bound, in parallel over outputs.
///
/// Every output `o` is computed in the same order whatever `rhs`'s strides:
/// `s_j = Σ_{i ≡ j mod 8, ascending} x[i]·w[i, o]` (multiply then add, never fused; Rust does not
/// contract), then `((s0+s1)+(s2+s3)) + ((s4+s5)+(s6+s7))`. With rows of `w` contiguous along k
/// (HF `[out, in]`) the 8 sums are the lanes of a dot product; with rows contiguous along the
/// outputs (Flax `[in, out]`) they are 8 accumulator rows of an axpy over a block of outputs.
/// Lanes never mix, so the vector width the CPU offers does not change the result either.
fn gemv(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, accumulate: bool) {
    use rayon::prelude::*;
    let (k, n) = (rhs.rows, rhs.cols);
    let x: Vec<f32> = (0..k).map(|i| lhs.data[i * lhs.col_stride]).collect(); // [k]
    let y = &mut dst.data[..n];
    if rhs.row_stride == 1 {
        // output o is the contiguous run w[o·cs .. o·cs + k]
        y.par_chunks_mut(DOT_BLOCK).enumerate().for_each(|(b, ys)| {
            let first = b * DOT_BLOCK;
            dispatch_avx2!(dot_block(
                &x,
                rhs.data,
                rhs.col_stride,
                first,
                ys,
                accumulate
            ));
        });
    } else if rhs.col_stride == 1 {
        // input i is the contiguous run w[i·rs + o0 .. i·rs + o0 + width]
        y.par_chunks_mut(AXPY_BLOCK)
            .enumerate()
            .for_each(|(b, ys)| {
                let first = b * AXPY_BLOCK;
                dispatch_avx2!(axpy_block(
                    &x,
                    rhs.data,
                    rhs.row_stride,
                    first,
                    ys,
                    accumulate
                ));
            });
    } else {
        for (o, yo) in y.iter_mut().enumerate() {
            let mut acc = [0.0f32; LANES];
            for (i, &xv) in x.iter().enumerate() {
                acc[i % LANES] += xv * rhs.data[i * rhs.row_stride + o * rhs.col_stride];
            }
            finish(yo, reduce(&acc), accumulate);
        }
    }
}

/// Outputs per rayon task in the dot-product kernel.
const DOT_BLOCK: usize = 16;
/// Outputs per rayon task (and accumulator width) in the axpy kernel.
const AXPY_BLOCK: usize = 256;

#[inline(always)]
fn finish(y: &mut f32, s: f32, accumulate: bool) {
    *y = if accumulate { *y + s } else { s };
}

/// Calls `$f(args)` compiled for AVX2 when the CPU has it (wider vectors, same lanes, same
/// result), else the baseline build of the same code.
macro_rules! dispatch_avx2 {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
                // calling a `#[target_feature(enable = "avx2")]` function.
                unsafe { avx2::$f($($arg),*) };
            } else {
                $f($($arg),*);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f($($arg),*);
        }
    }};
}
use dispatch_avx2;

/// AVX2 builds of the kernels: the same Rust code, compiled with wider vectors.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// [`super::dot_block`] for AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_block(
        x: &[f32],
        w: &[f32],
        cs: usize,
        first: usize,
        ys: &mut [f32],
        acc: bool,
    ) {
        super::dot_block(x, w, cs, first, ys, acc);
    }

    /// [`super::axpy_block`] for AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn axpy_block(
        x: &[f32],
        w: &[f32],
        rs: usize,
        first: usize,
        ys: &mut [f32],
        acc: bool,
    ) {
        super::axpy_block(x, w, rs, first, ys, acc);
    }
}

/// Outputs `first..first + ys.len()` of a weight whose output `o` is `w[o·cs .. o·cs + k]`:
/// four rows at a time, so that four independent accumulators hide the add latency.
#[inline(always)]
fn dot_block(x: &[f32], w: &[f32], cs: usize, first: usize, ys: &mut [f32], accumulate: bool) {
    let k = x.len();
    let row = |o: usize| &w[o * cs..o * cs + k];
    let mut chunks = ys.chunks_mut(4);
    let mut o = first;
    for yc in &mut chunks {
        let rows: [&[f32]; 4] = std::array::from_fn(|r| row(o + r.min(yc.len() - 1)));
        let mut acc = [[0.0f32; LANES]; 4];
        let full = k / LANES * LANES;
        let mut i = 0;
        while i < full {
            let xc = &x[i..i + LANES];
            for r in 0..4 {
                let wc = &rows[r][i..i + LANES];
                for l in 0..LANES {
                    acc[r][l] += xc[l] * wc[l];
                }
            }
            i += LANES;
        }
        for r in 0..4 {
            for (l, i) in (full..k).enumerate() {
                acc[r][l] += x[i] * rows[r][i];
            }
        }
        for (r, yo) in yc.iter_mut().enumerate() {
            finish(yo, reduce(&acc[r]), accumulate);
        }
        o += yc.len();
    }
}

/// Outputs `first..first + ys.len()` (at most [`AXPY_BLOCK`]) of a weight whose input `i` is
/// the row `w[i·rs ..]`: 8 accumulator rows, one per `i mod 8`.
#[inline(always)]
fn axpy_block(x: &[f32], w: &[f32], rs: usize, first: usize, ys: &mut [f32], accumulate: bool) {
    let width = ys.len();
    let mut acc = [[0.0f32; AXPY_BLOCK]; LANES];
    for (i, &xv) in x.iter().enumerate() {
        let row = &w[i * rs + first..i * rs + first + width];
        for (a, &wv) in acc[i % LANES][..width].iter_mut().zip(row) {
            *a += xv * wv;
        }
    }
    for (t, yo) in ys.iter_mut().enumerate() {
        let lanes: [f32; LANES] = std::array::from_fn(|l| acc[l][t]);
        finish(yo, reduce(&lanes), accumulate);
    }
}

/// The single `gemm::gemm` call. Shapes were checked by the caller.
fn raw_gemm(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, accumulate: bool, threads: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // Strides fit in isize: checked when each view was built.
    let s = |x: usize| x as isize;
    // SAFETY: `lhs`, `rhs` and `dst` were bounds-checked on construction: every element
    // (r, c) of each view, at `r·row_stride + c·col_stride`, lies inside its slice, and the
    // shapes agree (lhs [m, k], rhs [k, n], dst [m, n]). `dst` is borrowed mutably, so it
    // aliases neither input, and its rows are contiguous and non-overlapping (checked in
    // `MatMut::new`), so gemm's threads write disjoint elements. With `read_dst = false`
    // gemm never reads `dst`, so its prior contents do not matter.
    unsafe {
        gemm::gemm(
            m,                     // m: rows of dst and lhs
            n,                     // n: columns of dst and rhs
            k,                     // k: columns of lhs = rows of rhs
            dst.data.as_mut_ptr(), // dst
            1,                     // dst_cs: rows are contiguous
            s(dst.row_stride),     // dst_rs
            accumulate,            // read_dst: keep dst (e.g. a bias) and add the product
            lhs.data.as_ptr(),     // lhs
            s(lhs.col_stride),     // lhs_cs
            s(lhs.row_stride),     // lhs_rs
            rhs.data.as_ptr(),     // rhs
            s(rhs.col_stride),     // rhs_cs
            s(rhs.row_stride),     // rhs_rs
            1.0,                   // alpha: factor on the old dst (ignored unless read_dst)
            1.0,                   // beta: factor on lhs·rhs (gemm's naming, not BLAS's)
            false,                 // conj_dst
            false,                 // conj_lhs
            false,                 // conj_rhs
            parallelism,           // rayon threads, or none
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Plain triple loop in f64, for checking values.
    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    fn pseudo(len: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_naive_product_and_accumulates() {
        let (m, k, n) = (5, 7, 3);
        let a = pseudo(m * k, 1);
        let b = pseudo(k * n, 2);
        let mut out = vec![0.0; m * n];
        matmul(
            MatMut::row_major(&mut out, m, n).unwrap(),
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
            false,
            1,
        )
        .unwrap();
        let want = naive(&a, &b, m, k, n);
        for (x, y) in out.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        // accumulate onto a bias of 1
        let mut acc = vec![1.0; m * n];
        matmul(
            MatMut::row_major(&mut acc, m, n).unwrap(),
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
            true,
            1,
        )
        .unwrap();
        for (x, y) in acc.iter().zip(&want) {
            assert!((x - (y + 1.0)).abs() < 1e-5, "{x} vs {y}+1");
        }
    }

    /// The same weight stored [out, in] and [in, out] gives bit-identical products, for one
    /// row (gemm's matrix–vector path), tiny outputs (its horizontal kernel) and large ones.
    #[test]
    fn transposed_storage_is_bit_identical() {
        for &(m, k, n) in &[
            (1, 64, 512),
            (1, 896, 300),
            (2, 64, 32),
            (3, 64, 64),
            (80, 64, 176),
            (1, 33, 7),
            (130, 300, 200),
        ] {
            let x = pseudo(m * k, 3);
            let w_in_out = pseudo(k * n, 4); // [k, n]
            let mut w_out_in = vec![0.0; k * n]; // [n, k]
            for i in 0..k {
                for j in 0..n {
                    w_out_in[j * k + i] = w_in_out[i * n + j];
                }
            }
            let mut y1 = vec![0.0; m * n];
            let mut y2 = vec![0.0; m * n];
            for threads in [1, 2] {
                matmul(
                    MatMut::row_major(&mut y1, m, n).unwrap(),
                    MatRef::row_major(&x, m, k).unwrap(),
                    MatRef::row_major(&w_in_out, k, n).unwrap(),
                    false,
                    threads,
                )
                .unwrap();
                matmul(
                    MatMut::row_major(&mut y2, m, n).unwrap(),
                    MatRef::row_major(&x, m, k).unwrap(),
                    MatRef::row_major(&w_out_in, n, k).unwrap().t(),
                    false,
                    threads,
                )
                .unwrap();
                let b1: Vec<u32> = y1.iter().map(|v| v.to_bits()).collect();
                let b2: Vec<u32> = y2.iter().map(|v| v.to_bits()).collect();
                assert_eq!(b1, b2, "m={m} k={k} n={n} threads={threads}");
            }
        }
    }

    /// One-row products use the fixed-order kernel: the same bits for [out, in], [in, out]
    /// and an arbitrary strided view, with and without accumulation.
    #[test]
    fn single_row_kernel_is_layout_independent_and_accurate() {
        let (k, n) = (37, 300);
        let x = pseudo(k, 5);
        let w = pseudo(k * n, 6); // [k, n]
        let mut w_t = vec![0.0; k * n]; // [n, k]
        let mut w_wide = vec![0.0; k * n * 2]; // [k, n] with row stride 2n
        for i in 0..k {
            for j in 0..n {
                w_t[j * k + i] = w[i * n + j];
                w_wide[i * 2 * n + j] = w[i * n + j];
            }
        }
        let views = [
            MatRef::row_major(&w, k, n).unwrap(),
            MatRef::row_major(&w_t, n, k).unwrap().t(),
            MatRef::new(&w_wide, k, n, 2 * n, 1).unwrap(),
            MatRef::new(&w_t, k, n, 1, k).unwrap(),
        ];
        let want = naive(&x, &w, 1, k, n);
        let mut first: Option<Vec<u32>> = None;
        for v in views {
            let mut y = vec![0.5; n];
            matmul(
                MatMut::row_major(&mut y, 1, n).unwrap(),
                MatRef::row_major(&x, 1, k).unwrap(),
                v,
                true,
                2,
            )
            .unwrap();
            for (a, b) in y.iter().zip(&want) {
                assert!((a - (b + 0.5)).abs() < 1e-5);
            }
            let b: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(b),
                Some(f) => assert_eq!(f, &b),
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes_and_out_of_bounds_views() {
        let a = vec![0.0; 6];
        assert!(MatRef::row_major(&a, 2, 4).is_err());
        assert!(MatRef::new(&a, 2, 3, 3, 1).is_ok());
        let mut out = vec![0.0; 4];
        let r = matmul(
            MatMut::row_major(&mut out, 2, 2).unwrap(),
            MatRef::row_major(&a, 2, 3).unwrap(),
            MatRef::row_major(&a, 2, 3).unwrap(),
            false,
            1,
        );
        assert!(r.is_err());
    }
}
