//! The numeric core of `diff`: reading two views element by element (samples) or tile by tile
//! (the confirming pass), the value relations (exact, rounded, scaled, offset), and the
//! statistics of a pair that matched none.
//!
//! Both operands are [`View`]s onto a side's tensors, so the same code compares canonical
//! tensors, hypotheses (a transposed or RoPE-permuted A) and stored tensors. A view that is one
//! plain strided matrix (the usual case: a tensor, its transpose, a part of a fused tensor) is
//! read straight from the memory map, row runs or column runs widened in place; any other view
//! (a RoPE permutation, parts of several tensors) is read through [`gather_f32`], row band by row
//! band.
//!
//! Why sampled first: a wrong candidate almost always fails on the first few sampled values, so
//! rejecting it costs nothing, and the one candidate that survives is confirmed with a single
//! streaming pass. A typical pair (identical, or the transpose a convention implies) therefore
//! costs one read of each tensor; an exact f32 transpose is compared in place, block by block.

use crate::cast;
use crate::dtype::Dtype;
use crate::layout::gather::{gather_bytes, gather_f32, rows_cols, GatherError, Source};
use crate::layout::view::{Strided as Leaf, View};
use crate::view::TensorView;

/// Elements per tile of the confirming pass (256 KiB of f32 per buffer): small enough for L2,
/// large enough that per-tile overhead vanishes.
const TILE: usize = 64 * 1024;
/// Rows of a tile when an operand is read column-wise (a transpose), so that each run read
/// from it is 64 contiguous values (256 bytes, whole cache lines).
const TRANSPOSE_BAND: usize = 64;

/// Widened-on-demand access to one tensor's elements, whatever its dtype and alignment.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Src<'a> {
    /// Aligned F32, read in place.
    F32(&'a [f32]),
    /// F32 at an odd address.
    F32Bytes(&'a [u8]),
    /// Aligned BF16 bits.
    Bf16(&'a [u16]),
    /// BF16 at an odd address.
    Bf16Bytes(&'a [u8]),
    /// Aligned F16 bits.
    F16(&'a [u16]),
    /// F16 at an odd address.
    F16Bytes(&'a [u8]),
    /// F64 (rounded to f32 when read).
    F64Bytes(&'a [u8]),
}

impl<'a> Src<'a> {
    /// Accessor for a source; `None` when its dtype cannot be widened to f32.
    pub(crate) fn new(s: &Source<'a>) -> Option<Src<'a>> {
        let bytes = s.bytes;
        Some(match s.dtype {
            Dtype::F32 => match bytemuck::try_cast_slice(bytes) {
                Ok(v) => Src::F32(v),
                Err(_) => Src::F32Bytes(bytes),
            },
            Dtype::BF16 => match bytemuck::try_cast_slice(bytes) {
                Ok(v) => Src::Bf16(v),
                Err(_) => Src::Bf16Bytes(bytes),
            },
            Dtype::F16 => match bytemuck::try_cast_slice(bytes) {
                Ok(v) => Src::F16(v),
                Err(_) => Src::F16Bytes(bytes),
            },
            Dtype::F64 => Src::F64Bytes(bytes),
            _ => return None,
        })
    }

    /// Number of elements.
    fn len(&self) -> usize {
        match *self {
            Src::F32(s) => s.len(),
            Src::F32Bytes(b) => b.len() / 4,
            Src::Bf16(s) | Src::F16(s) => s.len(),
            Src::Bf16Bytes(b) | Src::F16Bytes(b) => b.len() / 2,
            Src::F64Bytes(b) => b.len() / 8,
        }
    }

    /// Element `i` widened to f32. `i` is below [`Src::len`]: readers check their extent once.
    fn get(&self, i: usize) -> f32 {
        match *self {
            Src::F32(s) => s[i],
            Src::F32Bytes(b) => {
                let o = 4 * i;
                f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
            }
            Src::Bf16(s) => f32::from_bits(u32::from(s[i]) << 16),
            Src::Bf16Bytes(b) => {
                f32::from_bits(u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])) << 16)
            }
            Src::F16(s) => half::f16::from_bits(s[i]).to_f32(),
            Src::F16Bytes(b) => {
                half::f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
            }
            Src::F64Bytes(b) => {
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[8 * i..8 * i + 8]);
                f64::from_le_bytes(x) as f32
            }
        }
    }

    /// Widens the `out.len()` elements starting at `start` into `out` with the shared cast
    /// kernels.
    fn widen(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        match *self {
            Src::F32(s) => out.copy_from_slice(&s[start..start + n]),
            Src::F32Bytes(b) => cast::f32_bytes_to_f32(&b[4 * start..4 * (start + n)], out),
            Src::Bf16(s) => cast::bf16_to_f32(&s[start..start + n], out),
            Src::Bf16Bytes(b) => cast::bf16_bytes_to_f32(&b[2 * start..2 * (start + n)], out),
            Src::F16(s) => cast::f16_to_f32(&s[start..start + n], out),
            Src::F16Bytes(b) => cast::f16_bytes_to_f32(&b[2 * start..2 * (start + n)], out),
            Src::F64Bytes(b) => cast::f64_bytes_to_f32(&b[8 * start..8 * (start + n)], out),
        }
    }
}

/// A view seen as a matrix `[rows, cols]` over its last dimension (a 1-D view is one row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl Geom {
    /// The matrix a view is read as.
    pub(crate) fn of(view: &View) -> Geom {
        let (rows, cols) = rows_cols(view);
        Geom { rows, cols }
    }
}

/// A plain strided matrix over one source: element `(i, j)` is at `row_offset(i) + j·cs`.
#[derive(Debug, Clone)]
pub(crate) struct StridedMatrix<'a> {
    src: Src<'a>,
    /// Element offset of `(0, 0)`.
    base: usize,
    /// The row index decomposed over these `(extent, stride)` axes, outermost first.
    lead: Vec<(usize, usize)>,
    /// Column stride.
    cs: usize,
}

impl StridedMatrix<'_> {
    fn row_offset(&self, mut r: usize) -> usize {
        let mut off = self.base;
        for &(n, s) in self.lead.iter().rev() {
            off += (r % n) * s;
            r /= n;
        }
        off
    }

    /// Rows are one stride-1 axis: column `j` of a band of rows is one contiguous run.
    fn column_major(&self) -> bool {
        self.cs != 1 && matches!(self.lead.as_slice(), [(_, 1)])
    }
}

/// One operand of a comparison: a view and the sources it reads.
#[derive(Debug, Clone)]
pub(crate) enum Reader<'a> {
    /// Read straight from the map.
    Strided(StridedMatrix<'a>),
    /// Read through the view's runs (permutations, several tensors, value operations).
    General {
        /// The view.
        view: &'a View,
        /// Its sources.
        sources: &'a [Source<'a>],
    },
}

/// True when every source `view` reads can be widened to f32.
pub(crate) fn widenable(view: &View, sources: &[Source<'_>]) -> bool {
    view.sources()
        .iter()
        .all(|&s| sources.get(s).is_some_and(|x| x.dtype.is_computable()))
}

impl<'a> Reader<'a> {
    /// A reader of `view`; the caller checked [`widenable`]. A strided view that reads past its
    /// source is an error here, once, so that no later read can go out of bounds.
    pub(crate) fn new(
        view: &'a View,
        sources: &'a [Source<'a>],
    ) -> Result<Reader<'a>, GatherError> {
        let Some((source, offset, strides)) = view.simple_strides() else {
            return Ok(Reader::General { view, sources });
        };
        let s = sources.get(source).ok_or(GatherError::NoSource(source))?;
        let Some(src) = Src::new(s) else {
            return Ok(Reader::General { view, sources });
        };
        let shape = view.shape();
        let (lead, cs) = match shape.len() {
            0 => (Vec::new(), 0),
            n => (
                shape[..n - 1]
                    .iter()
                    .copied()
                    .zip(strides[..n - 1].iter().copied())
                    .collect(),
                strides[n - 1],
            ),
        };
        if view.numel() > 0 {
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(offset, |acc, (&n, &st)| {
                    (n - 1).checked_mul(st).and_then(|x| x.checked_add(acc))
                });
            match last {
                Some(last) if last < src.len() => {}
                _ => {
                    return Err(GatherError::OutOfBounds {
                        source_index: source,
                        len: src.len(),
                        last: last.unwrap_or(usize::MAX),
                    })
                }
            }
        }
        Ok(Reader::Strided(StridedMatrix {
            src,
            base: offset,
            lead,
            cs,
        }))
    }

    /// Element `(i, j)`.
    pub(crate) fn get(&self, i: usize, j: usize) -> Result<f32, GatherError> {
        match self {
            Reader::Strided(m) => Ok(m.src.get(m.row_offset(i) + j * m.cs)),
            Reader::General { view, sources } => {
                let mut out = Ok(0.0);
                view.runs(i, j..j + 1, &mut |_, leaf, off, _, _| {
                    out = read_one(sources, leaf, off);
                });
                out
            }
        }
    }

    fn is_general(&self) -> bool {
        matches!(self, Reader::General { .. })
    }

    fn column_major(&self) -> bool {
        matches!(self, Reader::Strided(m) if m.column_major())
    }

    /// Fills `out` (`[h, w]` row-major) with rows `i0..i0+h`, columns `j0..j0+w`. A general
    /// reader is only asked for whole rows.
    fn fill(
        &self,
        g: Geom,
        (i0, h, j0, w): (usize, usize, usize, usize),
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), GatherError> {
        match self {
            Reader::General { view, sources } => {
                debug_assert!(j0 == 0 && w == g.cols);
                gather_f32(view, sources, i0..i0 + h, out)
            }
            Reader::Strided(m) if m.cs == 1 => {
                for r in 0..h {
                    m.src
                        .widen(m.row_offset(i0 + r) + j0, &mut out[r * w..(r + 1) * w]);
                }
                Ok(())
            }
            Reader::Strided(m) if m.column_major() => {
                // Column j of the band is h contiguous values: read them into scratch [w, h],
                // then transpose into out [h, w].
                for c in 0..w {
                    m.src.widen(
                        m.base + i0 + (j0 + c) * m.cs,
                        &mut scratch[c * h..(c + 1) * h],
                    );
                }
                for r in 0..h {
                    for c in 0..w {
                        out[r * w + c] = scratch[c * h + r];
                    }
                }
                Ok(())
            }
            Reader::Strided(m) => {
                for r in 0..h {
                    let row = m.row_offset(i0 + r);
                    for c in 0..w {
                        out[r * w + c] = m.src.get(row + (j0 + c) * m.cs);
                    }
                }
                Ok(())
            }
        }
    }
}

/// One element of a leaf, widened and with its value operations applied.
fn read_one(sources: &[Source<'_>], leaf: &Leaf, off: usize) -> Result<f32, GatherError> {
    let s = sources
        .get(leaf.source)
        .ok_or(GatherError::NoSource(leaf.source))?;
    let src = Src::new(s).ok_or(GatherError::Dtype {
        dtype: s.dtype,
        how: "as f32 (F32, BF16, F16 and F64 only)",
    })?;
    if off >= src.len() {
        return Err(GatherError::OutOfBounds {
            source_index: leaf.source,
            len: src.len(),
            last: off,
        });
    }
    Ok(leaf.values.iter().fold(src.get(off), |x, op| op.apply(x)))
}

/// Where element `(i, j)` of `view` is stored: its source and the element offset there.
pub(crate) fn locate(view: &View, i: usize, j: usize) -> Option<(usize, usize)> {
    let mut at = None;
    view.runs(i, j..j + 1, &mut |_, leaf, off, _, _| {
        at = Some((leaf.source, off))
    });
    at
}

/// The value relation B = f(A) under a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Relation {
    /// Bit-identical after widening to f32.
    Exact,
    /// Within one ulp of `narrow` (the narrower dtype of the pair).
    Rounded(Dtype),
    /// B = c·A within the rounding of `narrow`.
    Scaled(f32, Dtype),
    /// B = A + c within the rounding of `narrow`.
    Offset(f32, Dtype),
}

/// One unit in the last place of `x` in dtype `d` (bf16: 8-bit significand, f16: 11 bits and
/// exponent floor −14, otherwise f32), computed from f32 bits.
pub(crate) fn ulp(d: Dtype, x: f32) -> f32 {
    let x = x.abs();
    if !x.is_finite() {
        return 0.0;
    }
    // Unbiased exponent of x (subnormals and 0 count as the minimum normal exponent).
    let e = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
    let (frac_bits, min_exp) = match d {
        Dtype::BF16 => (7, -126),
        Dtype::F16 => (10, -14),
        _ => (23, -126),
    };
    let e = e.max(min_exp) - frac_bits;
    // 2^e; e ≥ −149 here, so powi stays in the f32 range (subnormal at worst).
    2f32.powi(e)
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

impl Relation {
    /// True when every pair holds. Written over slices so that the loop vectorizes.
    pub(crate) fn holds(&self, a: &[f32], b: &[f32]) -> bool {
        match *self {
            Relation::Exact => a.iter().zip(b).all(|(&x, &y)| same_bits(x, y)),
            Relation::Rounded(d) => a
                .iter()
                .zip(b)
                .all(|(&x, &y)| same_bits(x, y) || (x - y).abs() <= ulp(d, x.abs().max(y.abs()))),
            Relation::Scaled(c, d) => a.iter().zip(b).all(|(&x, &y)| {
                let p = c * x;
                same_bits(p, y)
                    || (y - p).abs()
                        <= 2.0 * ulp(d, y.abs().max(p.abs())) + 4.0 * f32::EPSILON * y.abs()
            }),
            Relation::Offset(c, d) => a.iter().zip(b).all(|(&x, &y)| {
                let p = x + c;
                same_bits(p, y) || (y - p).abs() <= 2.0 * ulp(d, x.abs().max(y.abs()).max(c.abs()))
            }),
        }
    }
}

/// Sampled coordinates of a `[rows, cols]` matrix.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    coords: Vec<(usize, usize)>,
}

/// `k` indices spread evenly over `0..n`, first and last included.
fn spread(n: usize, k: usize) -> impl Iterator<Item = usize> {
    let k = k.min(n);
    (0..k).map(move |t| if k <= 1 { 0 } else { t * (n - 1) / (k - 1) })
}

impl Sample {
    /// 8 rows (at 256 spread columns each) and 8 columns (at 256 spread rows), plus 64
    /// pseudo-random elements: at most 4 160 values however large the tensor.
    pub(crate) fn new(g: Geom) -> Sample {
        let mut coords = Vec::new();
        if g.rows == 0 || g.cols == 0 {
            return Sample { coords };
        }
        for i in spread(g.rows, 8) {
            coords.extend(spread(g.cols, 256).map(|j| (i, j)));
        }
        for j in spread(g.cols, 8) {
            coords.extend(spread(g.rows, 256).map(|i| (i, j)));
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r = (state >> 33) as usize;
            coords.push((r % g.rows, (r / g.rows.max(1)) % g.cols));
        }
        Sample { coords }
    }

    /// The operand's values at the sampled coordinates.
    pub(crate) fn values(&self, r: &Reader<'_>) -> Result<Vec<f32>, GatherError> {
        self.coords.iter().map(|&(i, j)| r.get(i, j)).collect()
    }
}

/// Where a tile sits: its first row and column, and its width (tiles are row-major).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TilePos {
    /// First row.
    pub row: usize,
    /// First column.
    pub col: usize,
    /// Columns per tile row.
    pub width: usize,
}

/// A consumer of tiles: `(x_tile, y_tile, position) -> keep going`.
pub(crate) type TileFn<'f> = dyn FnMut(&[f32], &[f32], TilePos) -> bool + 'f;

/// Two operands of one shape, ready to be compared.
#[derive(Debug, Clone)]
pub(crate) struct Pair<'a> {
    /// The candidate (a view of A's tensors).
    pub x: Reader<'a>,
    /// What it is compared with (a view of B's tensors).
    pub y: Reader<'a>,
    /// Their matrix shape.
    pub g: Geom,
}

impl Pair<'_> {
    /// Streams both operands in tiles, calling `f(x_tile, y_tile, position)` for each; stops
    /// early (returning false) when `f` does.
    pub(crate) fn stream(&self, f: &mut TileFn<'_>) -> Result<bool, GatherError> {
        let g = self.g;
        if g.rows == 0 || g.cols == 0 {
            return Ok(true);
        }
        let (band, width) = if self.x.is_general() || self.y.is_general() {
            (g.rows.min((TILE / g.cols).max(1)), g.cols)
        } else if self.x.column_major() || self.y.column_major() {
            let band = g.rows.min(TRANSPOSE_BAND);
            (band, g.cols.min((TILE / band).max(1)))
        } else {
            let width = g.cols.min(TILE);
            (g.rows.min((TILE / width).max(1)), width)
        };
        // x_tile, y_tile: [band, width] row-major; scratch: [width, band] (column runs as read).
        let mut x_tile = vec![0f32; band * width];
        let mut y_tile = vec![0f32; band * width];
        let mut scratch = vec![0f32; band * width];
        let mut i0 = 0;
        while i0 < g.rows {
            let h = band.min(g.rows - i0);
            let mut j0 = 0;
            while j0 < g.cols {
                let w = width.min(g.cols - j0);
                let at = (i0, h, j0, w);
                let (xt, yt) = (&mut x_tile[..h * w], &mut y_tile[..h * w]);
                self.x.fill(g, at, xt, &mut scratch[..h * w])?;
                self.y.fill(g, at, yt, &mut scratch[..h * w])?;
                let pos = TilePos {
                    row: i0,
                    col: j0,
                    width: w,
                };
                if !f(xt, yt, pos) {
                    return Ok(false);
                }
                j0 += w;
            }
            i0 += h;
        }
        Ok(true)
    }

    /// Does `rel` hold over the whole tensor? Stops at the first failing tile.
    pub(crate) fn confirm(&self, rel: Relation) -> Result<bool, GatherError> {
        // The common case of a conversion (an exact transpose or copy of aligned f32) compares
        // in place, without widening copies; only a mismatch falls through to the general
        // path, which also treats NaNs with different payloads as equal.
        if rel == Relation::Exact && self.in_place_equal() {
            return Ok(true);
        }
        self.stream(&mut |x, y, _| rel.holds(x, y))
    }

    /// Like [`Pair::confirm`], also measuring max |x − y| where it holds.
    pub(crate) fn confirm_measuring(&self, rel: Relation) -> Result<Option<f64>, GatherError> {
        let mut max = 0f32;
        let held = self.stream(&mut |x, y, _| {
            if !rel.holds(x, y) {
                return false;
            }
            for (a, b) in x.iter().zip(y) {
                max = max.max((a - b).abs());
            }
            true
        })?;
        Ok(held.then_some(f64::from(max)))
    }

    /// Bitwise equality of two aligned-f32 strided matrices read in place: row runs compared
    /// as bits when both are row-major, 64×64 blocks when one is the other's transpose. False
    /// when it does not apply or finds a difference (the general path then decides).
    fn in_place_equal(&self) -> bool {
        let (Reader::Strided(x), Reader::Strided(y)) = (&self.x, &self.y) else {
            return false;
        };
        let (Src::F32(xs), Src::F32(ys)) = (x.src, y.src) else {
            return false;
        };
        let g = self.g;
        if x.cs == 1 && y.cs == 1 {
            return (0..g.rows).all(|r| {
                let a = &xs[x.row_offset(r)..][..g.cols];
                let b = &ys[y.row_offset(r)..][..g.cols];
                bytemuck::cast_slice::<f32, u32>(a) == bytemuck::cast_slice::<f32, u32>(b)
            });
        }
        if x.cs == 1 && y.column_major() {
            return transposed_bits_equal(xs, x, ys, y, g);
        }
        if y.cs == 1 && x.column_major() {
            return transposed_bits_equal(ys, y, xs, x, g);
        }
        false
    }

    /// Full-tensor statistics of y against x.
    pub(crate) fn stats(&self) -> Result<Stats, GatherError> {
        let mut s = Stats::default();
        let mut first: Option<(usize, usize)> = None;
        self.stream(&mut |a, b, pos| {
            for (k, (&x, &y)) in a.iter().zip(b).enumerate() {
                let (x64, y64) = (f64::from(x), f64::from(y));
                s.dot += x64 * y64;
                s.norm_a += x64 * x64;
                s.norm_b += y64 * y64;
                if same_bits(x, y) {
                    continue;
                }
                s.differing += 1;
                let d = (x64 - y64).abs();
                if d > s.max_abs_diff || d.is_nan() {
                    s.max_abs_diff = if d.is_nan() { f64::NAN } else { d };
                }
                let m = x64.abs().max(y64.abs());
                if m > 0.0 {
                    s.max_rel_diff = s.max_rel_diff.max(d / m);
                }
                if first.is_none() {
                    first = Some((pos.row + k / pos.width, pos.col + k % pos.width));
                }
            }
            true
        })?;
        s.first_difference = first;
        Ok(s)
    }
}

/// x (row-major) equals y (column-major) bit for bit, in 64×64 blocks: the block's 64 column
/// runs of y (64 contiguous values each, on up to 64 different pages) are copied once into an
/// L1-sized buffer, then compared against x's rows; reading y element by element straight from
/// the map would touch a different page on every element.
fn transposed_bits_equal(
    xs: &[f32],
    x: &StridedMatrix<'_>,
    ys: &[f32],
    y: &StridedMatrix<'_>,
    g: Geom,
) -> bool {
    const BLOCK: usize = 64;
    // block: [BLOCK (columns c), BLOCK (rows r)], y's block as read.
    let mut block = [0u32; BLOCK * BLOCK];
    for i0 in (0..g.rows).step_by(BLOCK) {
        let h = BLOCK.min(g.rows - i0);
        for j0 in (0..g.cols).step_by(BLOCK) {
            let w = BLOCK.min(g.cols - j0);
            for c in 0..w {
                let run = &ys[y.base + i0 + (j0 + c) * y.cs..][..h];
                for (d, v) in block[c * BLOCK..][..h].iter_mut().zip(run) {
                    *d = v.to_bits();
                }
            }
            let mut equal = true;
            for r in 0..h {
                let x_run = &xs[x.row_offset(i0 + r) + j0..][..w];
                for (c, v) in x_run.iter().enumerate() {
                    equal &= block[c * BLOCK + r] == v.to_bits();
                }
            }
            if !equal {
                return false;
            }
        }
    }
    true
}

/// True when the 2-D square tensor of `view` equals its own transpose bit for bit (all zeros,
/// symmetric, any 1×1), for any dtype. Compared in 64×64 blocks against their mirror block, so
/// that neither side is read column by column across pages; a typical (non-symmetric) weight is
/// rejected on its first off-diagonal pair.
pub(crate) fn symmetric(view: &TensorView<'_>) -> bool {
    const BLOCK: usize = 64;
    let n = match view.info.shape[..] {
        [r, c] if r == c => r,
        _ => return false,
    };
    if n <= 1 {
        return true;
    }
    let bits = view.info.dtype.bits();
    if !bits.is_multiple_of(8) {
        // Sub-byte elements (F4, F6) are not addressable one by one; say "not symmetric",
        // the conservative answer (the pair is then judged as stored).
        return false;
    }
    let e = bits / 8;
    let bytes = view.bytes;
    let Some(total) = n.checked_mul(n).and_then(|x| x.checked_mul(e)) else {
        return false;
    };
    if bytes.len() != total {
        return false;
    }
    let at = |i: usize, j: usize| &bytes[(i * n + j) * e..(i * n + j + 1) * e];
    for i0 in (0..n).step_by(BLOCK) {
        for j0 in (i0..n).step_by(BLOCK) {
            for i in i0..(i0 + BLOCK).min(n) {
                for j in j0.max(i + 1)..(j0 + BLOCK).min(n) {
                    if at(i, j) != at(j, i) {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Element-wise comparison statistics of a pair that matched no relation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Stats {
    /// Σ a·b (f64).
    pub dot: f64,
    /// Σ a² (f64).
    pub norm_a: f64,
    /// Σ b² (f64).
    pub norm_b: f64,
    /// max |a − b|.
    pub max_abs_diff: f64,
    /// max |a − b| / max(|a|, |b|) over elements where that is non-zero (≤ 2).
    pub max_rel_diff: f64,
    /// Elements whose bits differ.
    pub differing: u64,
    /// `(row, col)` of the first differing element.
    pub first_difference: Option<(usize, usize)>,
}

impl Stats {
    /// Cosine similarity (`None` when either side is all zeros).
    pub(crate) fn cosine(&self) -> Option<f64> {
        let den = self.norm_a.sqrt() * self.norm_b.sqrt();
        (den > 0.0).then(|| self.dot / den)
    }
}

/// Element-by-element byte comparison of two views of one dtype that cannot be read as
/// numbers: `(differing elements, first differing (row, col))`.
pub(crate) fn byte_differences(
    x: (&View, &[Source<'_>]),
    y: (&View, &[Source<'_>]),
    element_bytes: usize,
) -> Result<(u64, Option<(usize, usize)>), GatherError> {
    let g = Geom::of(x.0);
    let e = element_bytes.max(1);
    let band = g.rows.min((TILE / g.cols.max(1)).max(1)).max(1);
    let mut xb = vec![0u8; band * g.cols * e];
    let mut yb = vec![0u8; band * g.cols * e];
    let (mut differing, mut first) = (0u64, None);
    let mut i0 = 0;
    while i0 < g.rows {
        let h = band.min(g.rows - i0);
        let n = h * g.cols * e;
        gather_bytes(x.0, x.1, i0..i0 + h, &mut xb[..n])?;
        gather_bytes(y.0, y.1, i0..i0 + h, &mut yb[..n])?;
        for (k, (p, q)) in xb[..n].chunks(e).zip(yb[..n].chunks(e)).enumerate() {
            if p != q {
                differing += 1;
                first.get_or_insert((i0 + k / g.cols, k % g.cols));
            }
        }
        i0 += h;
    }
    Ok((differing, first))
}

/// Median of the finite values of `v`; `None` when there are none.
pub(crate) fn median(mut v: Vec<f32>) -> Option<f32> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f32::total_cmp);
    Some(v[v.len() / 2])
}
