//! The numeric core of `diff`: element access that widens tile by tile, the candidate layouts
//! (identity, transpose, RoPE row permutations), the value relations (exact, rounded, scaled,
//! offset) and the two passes that test them: a cheap one over sampled rows and columns, and a
//! confirming one over the whole tensor in cache-sized tiles.
//!
//! Why sampled first: a wrong candidate almost always fails on the first few sampled values, so
//! rejecting it costs nothing, and the one candidate that survives is confirmed with a single
//! streaming pass. A typical pair (identical, or the transpose a convention implies) therefore
//! costs one read of each tensor.

use serde::Serialize;

use crate::cast;
use crate::dtype::Dtype;
use crate::view::TensorView;

/// Elements per tile of the confirming pass (256 KiB of f32 per buffer): small enough for L2,
/// large enough that per-tile overhead vanishes.
const TILE: usize = 64 * 1024;
/// Rows of B in one tile when the candidate transposes, so that each gathered run of A is 64
/// contiguous values (256 bytes, whole cache lines).
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
    /// Accessor for a view; `None` when its dtype cannot be widened to f32.
    pub(crate) fn new(view: &TensorView<'a>) -> Option<Src<'a>> {
        let bytes = view.bytes;
        Some(match view.info.dtype {
            Dtype::F32 => match view.as_f32() {
                Some(s) => Src::F32(s),
                None => Src::F32Bytes(bytes),
            },
            Dtype::BF16 => match view.as_u16() {
                Some(s) => Src::Bf16(s),
                None => Src::Bf16Bytes(bytes),
            },
            Dtype::F16 => match view.as_u16() {
                Some(s) => Src::F16(s),
                None => Src::F16Bytes(bytes),
            },
            Dtype::F64 => Src::F64Bytes(bytes),
            _ => return None,
        })
    }

    /// Element `i` widened to f32. `i` must be below the element count (callers derive every
    /// index from the validated shape).
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

/// A tensor seen as a matrix: 2-D as is, 1-D as a column `[n, 1]`, a scalar as `[1, 1]`, and
/// higher ranks as `[product of leading dims, last dim]` (identity comparisons only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl Geom {
    /// The matrix view of `shape`. The shape was validated by the header parser (its product
    /// fits in usize), so the products here cannot overflow.
    pub(crate) fn of(shape: &[usize]) -> Geom {
        match shape {
            [] => Geom { rows: 1, cols: 1 },
            [n] => Geom { rows: *n, cols: 1 },
            [lead @ .., last] => Geom {
                rows: lead.iter().product(),
                cols: *last,
            },
        }
    }
}

/// Direction of a RoPE row permutation between the two layouts in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeDirection {
    /// B = A permuted from rotate-half (HF) to interleaved pairs (GGUF, Meta original): the
    /// llama.cpp `w.reshape(n, 2, rows/n/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    ToInterleaved,
    /// B = A permuted from interleaved pairs back to rotate-half (what HF's
    /// `convert_llama_weights_to_hf.py` applies).
    ToRotateHalf,
}

impl RopeDirection {
    /// Words for reports.
    pub fn describe(self) -> &'static str {
        match self {
            RopeDirection::ToInterleaved => "rotate-half → interleaved",
            RopeDirection::ToRotateHalf => "interleaved → rotate-half",
        }
    }
}

/// A per-head RoPE permutation of one axis of A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RopePerm {
    /// Axis of A (in A's matrix view) the permutation acts on: the projection's output axis.
    pub axis: usize,
    /// Number of heads n; the axis holds n·D entries.
    pub heads: usize,
    /// Entries per head (D).
    pub head_dim: usize,
    /// Which way.
    pub direction: RopeDirection,
}

impl RopePerm {
    /// Source index along the axis for target index `x`: B'[x] = A[src(x)].
    pub(crate) fn src(&self, x: usize) -> usize {
        let hd = self.head_dim;
        let half = hd / 2;
        let (h, r) = (x / hd, x % hd);
        match self.direction {
            // out[h·hd + 2i + j] = in[h·hd + j·half + i]
            RopeDirection::ToInterleaved => h * hd + (r % 2) * half + r / 2,
            // out[h·hd + j·half + i] = in[h·hd + 2i + j]
            RopeDirection::ToRotateHalf => h * hd + 2 * (r % half) + r / half,
        }
    }
}

/// How B's elements are laid out relative to A's: optionally a RoPE permutation of one of A's
/// axes, then optionally a transpose. B[i, j] = A'[i, j] or A'[j, i].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// B = A'ᵀ.
    pub transpose: bool,
    /// A' = A with one axis RoPE-permuted.
    pub perm: Option<RopePerm>,
}

impl Layout {
    /// B = A.
    pub(crate) const IDENTITY: Layout = Layout {
        transpose: false,
        perm: None,
    };
    /// B = Aᵀ.
    pub(crate) const TRANSPOSE: Layout = Layout {
        transpose: true,
        perm: None,
    };

    /// Flat index in A of B's element (i, j).
    fn a_index(&self, ga: Geom, i: usize, j: usize) -> usize {
        let (mut u, mut v) = if self.transpose { (j, i) } else { (i, j) };
        if let Some(p) = self.perm {
            if p.axis == 0 {
                u = p.src(u);
            } else {
                v = p.src(v);
            }
        }
        u * ga.cols + v
    }
}

/// The value relation B = f(A) under a layout.
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

/// A sampled set of B coordinates and the values there.
#[derive(Debug)]
pub(crate) struct Sample {
    /// (row, col) in B's matrix view.
    coords: Vec<(usize, usize)>,
    /// B's values at `coords`.
    b: Vec<f32>,
}

/// `k` indices spread evenly over `0..n`, first and last included.
fn spread(n: usize, k: usize) -> impl Iterator<Item = usize> {
    let k = k.min(n);
    (0..k).map(move |t| if k <= 1 { 0 } else { t * (n - 1) / (k - 1) })
}

impl Sample {
    /// 8 rows (at 256 spread columns each) and 8 columns (at 256 spread rows), plus 64
    /// pseudo-random elements: at most 4 160 values however large the tensor.
    pub(crate) fn new(b: &Src<'_>, gb: Geom) -> Sample {
        let mut coords = Vec::new();
        if gb.rows == 0 || gb.cols == 0 {
            return Sample {
                coords,
                b: Vec::new(),
            };
        }
        for i in spread(gb.rows, 8) {
            coords.extend(spread(gb.cols, 256).map(|j| (i, j)));
        }
        for j in spread(gb.cols, 8) {
            coords.extend(spread(gb.rows, 256).map(|i| (i, j)));
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r = (state >> 33) as usize;
            coords.push((r % gb.rows, (r / gb.rows.max(1)) % gb.cols));
        }
        let bv = coords
            .iter()
            .map(|&(i, j)| b.get(i * gb.cols + j))
            .collect();
        Sample { coords, b: bv }
    }

    /// A's values at the sampled coordinates under `layout`.
    pub(crate) fn a_values(&self, a: &Src<'_>, ga: Geom, layout: &Layout) -> Vec<f32> {
        self.coords
            .iter()
            .map(|&(i, j)| a.get(layout.a_index(ga, i, j)))
            .collect()
    }

    /// B's sampled values.
    pub(crate) fn b_values(&self) -> &[f32] {
        &self.b
    }
}

/// Where a tile sits in B: its first row and column, and its width (tiles are row-major).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TilePos {
    /// First row.
    pub row: usize,
    /// First column.
    pub col: usize,
    /// Columns per tile row.
    pub width: usize,
}

/// A consumer of tiles: `(a_tile, b_tile, position) -> keep going`.
pub(crate) type TileFn<'f> = dyn FnMut(&[f32], &[f32], TilePos) -> bool + 'f;

/// Both tensors of a pair, ready to be read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair<'a> {
    /// A's elements.
    pub a: Src<'a>,
    /// A's matrix view.
    pub ga: Geom,
    /// B's elements.
    pub b: Src<'a>,
    /// B's matrix view.
    pub gb: Geom,
}

impl Pair<'_> {
    /// Streams B in tiles together with A's values under `layout`, calling `f(a_tile, b_tile,
    /// position)` for each; stops early (returning false) when `f` does.
    pub(crate) fn stream(&self, layout: &Layout, f: &mut TileFn<'_>) -> bool {
        let gb = self.gb;
        if gb.rows == 0 || gb.cols == 0 {
            return true;
        }
        let (band, width) = if layout.transpose {
            let band = gb.rows.min(TRANSPOSE_BAND);
            (band, gb.cols.min((TILE / band).max(1)))
        } else {
            let width = gb.cols.min(TILE);
            (gb.rows.min((TILE / width).max(1)), width)
        };
        // a_tile, b_tile: [band, width] row-major; scratch: [width, band] (A' rows as read).
        let mut a_tile = vec![0f32; band * width];
        let mut b_tile = vec![0f32; band * width];
        let mut scratch = vec![0f32; band * width];
        let mut i0 = 0;
        while i0 < gb.rows {
            let h = band.min(gb.rows - i0);
            let mut j0 = 0;
            while j0 < gb.cols {
                let w = width.min(gb.cols - j0);
                let bt = &mut b_tile[..h * w];
                let at = &mut a_tile[..h * w];
                for r in 0..h {
                    self.b
                        .widen((i0 + r) * gb.cols + j0, &mut bt[r * w..(r + 1) * w]);
                }
                self.fill_a(layout, i0, h, j0, w, at, &mut scratch[..h * w]);
                if !f(
                    at,
                    bt,
                    TilePos {
                        row: i0,
                        col: j0,
                        width: w,
                    },
                ) {
                    return false;
                }
                j0 += w;
            }
            i0 += h;
        }
        true
    }

    /// Fills `out` ([h, w], B's order) with A's values for B rows `i0..i0+h`, cols `j0..j0+w`.
    #[allow(clippy::too_many_arguments)]
    fn fill_a(
        &self,
        layout: &Layout,
        i0: usize,
        h: usize,
        j0: usize,
        w: usize,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let ga = self.ga;
        let perm_axis = layout.perm.map(|p| p.axis);
        if !layout.transpose {
            for r in 0..h {
                let row = &mut out[r * w..(r + 1) * w];
                if perm_axis == Some(1) {
                    for (c, o) in row.iter_mut().enumerate() {
                        *o = self.a.get(layout.a_index(ga, i0 + r, j0 + c));
                    }
                } else {
                    // A' row i0+r is A row src(i0+r) (or itself): one contiguous run.
                    let u = layout.a_index(ga, i0 + r, 0) / ga.cols.max(1);
                    self.a.widen(u * ga.cols + j0, row);
                }
            }
            return;
        }
        // B[i, j] = A'[j, i]: read A' rows j0..j0+w, runs of h values starting at column i0,
        // into scratch [w, h], then transpose into out [h, w].
        for c in 0..w {
            let run = &mut scratch[c * h..(c + 1) * h];
            if perm_axis == Some(1) {
                for (r, o) in run.iter_mut().enumerate() {
                    *o = self.a.get(layout.a_index(ga, i0 + r, j0 + c));
                }
            } else {
                let start = layout.a_index(ga, i0, j0 + c);
                self.a.widen(start, run);
            }
        }
        for r in 0..h {
            for c in 0..w {
                out[r * w + c] = scratch[c * h + r];
            }
        }
    }

    /// Does `rel` hold under `layout` over the whole tensor? Stops at the first failing tile.
    pub(crate) fn confirm(&self, layout: &Layout, rel: Relation) -> bool {
        // The common case of a conversion (an exact transpose of aligned f32) compares in place,
        // without widening copies; only a mismatch falls through to the general path, which
        // also treats NaNs with different payloads as equal.
        if let (Relation::Exact, Src::F32(a), Src::F32(b)) = (rel, self.a, self.b) {
            if *layout == Layout::TRANSPOSE && transpose_bits_equal(a, self.ga, b, self.gb) {
                return true;
            }
        }
        self.stream(layout, &mut |a, b, _| rel.holds(a, b))
    }

    /// Full-tensor statistics of B against A under `layout`.
    pub(crate) fn stats(&self, layout: &Layout) -> Stats {
        let mut s = Stats::default();
        let gb = self.gb;
        let mut first: Option<(usize, usize)> = None;
        self.stream(layout, &mut |a, b, pos| {
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
        });
        s.first_difference = first.map(|(i, j)| i * gb.cols + j);
        s
    }
}

/// B = Aᵀ bit for bit, for aligned f32 data read in place, in 64×64 blocks: the block's 64 runs
/// of A (64 contiguous values each, on up to 64 different pages) are copied once into an L1-sized
/// buffer, then compared against B's rows; reading A column-wise straight from the map would
/// touch a different page on every element.
fn transpose_bits_equal(a: &[f32], ga: Geom, b: &[f32], gb: Geom) -> bool {
    const BLOCK: usize = 64;
    if ga.rows != gb.cols || ga.cols != gb.rows {
        return false;
    }
    // block: [BLOCK (A rows j), BLOCK (A cols i)] — the transpose of B's block.
    let mut block = [0u32; BLOCK * BLOCK];
    for i0 in (0..gb.rows).step_by(BLOCK) {
        let h = BLOCK.min(gb.rows - i0);
        for j0 in (0..gb.cols).step_by(BLOCK) {
            let w = BLOCK.min(gb.cols - j0);
            for c in 0..w {
                let run = &a[(j0 + c) * ga.cols + i0..][..h];
                for (d, x) in block[c * BLOCK..][..h].iter_mut().zip(run) {
                    *d = x.to_bits();
                }
            }
            let mut equal = true;
            for r in 0..h {
                let b_run = &b[(i0 + r) * gb.cols + j0..][..w];
                for (c, y) in b_run.iter().enumerate() {
                    equal &= block[c * BLOCK + r] == y.to_bits();
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
    /// Flat index in B of the first differing element.
    pub first_difference: Option<usize>,
}

impl Stats {
    /// Cosine similarity (`None` when either side is all zeros).
    pub(crate) fn cosine(&self) -> Option<f64> {
        let den = self.norm_a.sqrt() * self.norm_b.sqrt();
        (den > 0.0).then(|| self.dot / den)
    }
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
