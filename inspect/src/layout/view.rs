//! Index views: where every element of a logical tensor lives, without touching the data.
//!
//! Why views: a layout transform (transpose, the RoPE row permutation, fusing q/k/v, stacking
//! experts, GGUF's reversed dims) never changes a value, only where it sits. Composing them as
//! index maps lets every command read a tensor *through* a chain of transforms lazily (the forward
//! multiplies by a transposed kernel through strides; diff samples a few rows), and lets convert
//! materialise an output tile by tile from whatever sources it needs, in bounded memory.
//!
//! A [`View`] is either
//! - [`Strided`]: one source tensor, an element offset, and per logical axis a list of
//!   `(extent, stride)` sub-axes (outermost first). Splitting and merging axes of a strided view
//!   only regroups sub-axes, so a transpose followed by a per-head row permutation is still one
//!   strided view; or
//! - [`Pieces`]: along one axis, the index runs over `outer` steps, each made of consecutive
//!   chunks taken from several views (concatenation when `outer = 1`; GPT-NeoX's per-head
//!   q,k,v interleave when `outer = nH`; grouped layouts; a new stacking axis).
//!
//! Value operations ([`ValueOp`]: add a constant, scale) ride on the strided leaves and are
//! applied when elements are read. Every operation checks its arithmetic and returns
//! [`ViewError::Unsupported`] for a composition it cannot express, instead of guessing.

use std::ops::Range;

/// An operation on values, applied in f32 as elements are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueOp {
    /// `x + c`.
    Add(f32),
    /// `x · c`.
    Scale(f32),
}

impl ValueOp {
    /// Applies the operation.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            ValueOp::Add(c) => x + c,
            ValueOp::Scale(c) => x * c,
        }
    }
}

/// Why a view operation cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// Bad arguments (an axis out of range, extents that do not multiply out).
    #[error("{0}")]
    Invalid(String),
    /// A composition the index algebra cannot express (say so rather than guess).
    #[error("cannot express {0} as an index view")]
    Unsupported(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, ViewError> {
    Err(ViewError::Invalid(msg.into()))
}

/// One logical axis of a strided view: `(extent, stride)` sub-axes, outermost first. The
/// logical index decomposes in mixed radix over the extents. No sub-axis has extent 1; an
/// axis of extent 1 has no sub-axes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Axis(pub Vec<(usize, usize)>);

impl Axis {
    fn new(extent: usize, stride: usize) -> Axis {
        if extent == 1 {
            Axis(Vec::new())
        } else {
            Axis(vec![(extent, stride)])
        }
    }

    /// Drops extent-1 sub-axes and coalesces neighbours that are contiguous with each other
    /// (`(a, b·s), (b, s)` → `(a·b, s)`), so equal maps compare equal.
    fn normalized(mut self) -> Axis {
        self.0.retain(|&(n, _)| n != 1);
        let mut out: Vec<(usize, usize)> = Vec::with_capacity(self.0.len());
        for (n, s) in self.0 {
            match out.last_mut() {
                Some((m, t)) if *t == n * s => {
                    *m *= n;
                    *t = s;
                }
                _ => out.push((n, s)),
            }
        }
        Axis(out)
    }

    /// The axis' extent.
    pub fn extent(&self) -> usize {
        self.0.iter().map(|&(n, _)| n).product()
    }

    /// Element offset of logical index `i`.
    #[inline]
    pub fn offset(&self, mut i: usize) -> usize {
        let mut off = 0;
        for &(n, s) in self.0.iter().rev() {
            off += (i % n) * s;
            i /= n;
        }
        off
    }

    /// Splits into consecutive axes of the given extents (their product must be the extent).
    fn split(&self, extents: &[usize]) -> Result<Vec<Axis>, ViewError> {
        let mut parts: std::collections::VecDeque<(usize, usize)> =
            self.0.iter().copied().collect();
        let mut out = Vec::with_capacity(extents.len());
        for &e in extents {
            let mut axis = Vec::new();
            let mut have = 1usize;
            while have < e {
                let Some((n, s)) = parts.pop_front() else {
                    return invalid("split extents exceed the axis");
                };
                let need = e / have;
                if e % have != 0 {
                    return Err(ViewError::Unsupported(format!(
                        "a split into {extents:?} across sub-axes {:?}",
                        self.0
                    )));
                }
                if n <= need {
                    if !need.is_multiple_of(n) && n != need {
                        return Err(ViewError::Unsupported(format!(
                            "a split into {extents:?} across sub-axes {:?}",
                            self.0
                        )));
                    }
                    axis.push((n, s));
                    have *= n;
                } else {
                    // Take `need` from the outside of (n, s): (need, s·n/need) and leave (n/need, s).
                    if n % need != 0 {
                        return Err(ViewError::Unsupported(format!(
                            "a split into {extents:?} across sub-axes {:?}",
                            self.0
                        )));
                    }
                    axis.push((need, s * (n / need)));
                    parts.push_front((n / need, s));
                    have *= need;
                }
            }
            if have != e {
                return invalid(format!("split extents {extents:?} do not divide the axis"));
            }
            out.push(Axis(axis).normalized());
        }
        if !parts.is_empty() {
            return invalid(format!("split extents {extents:?} do not cover the axis"));
        }
        Ok(out)
    }

    /// The sub-range `[start, start + len)` as an axis plus the element offset of its start.
    fn slice(&self, start: usize, len: usize) -> Result<(Axis, usize), ViewError> {
        let extent = self.extent();
        if start.checked_add(len).is_none_or(|end| end > extent) || len == 0 {
            return invalid(format!(
                "slice {start}..{} of an axis of {extent}",
                start + len
            ));
        }
        if len == extent {
            return Ok((self.clone(), 0));
        }
        let Some((&(n, s), rest)) = self.0.split_first() else {
            return Ok((Axis(Vec::new()), 0));
        };
        let inner: usize = rest.iter().map(|&(m, _)| m).product();
        if start.is_multiple_of(inner) && len.is_multiple_of(inner) {
            let mut parts = vec![(len / inner, s)];
            parts.extend_from_slice(rest);
            return Ok((Axis(parts).normalized(), (start / inner) * s));
        }
        if start / inner == (start + len - 1) / inner {
            let (a, off) = Axis(rest.to_vec()).slice(start % inner, len)?;
            return Ok((a, (start / inner) * s + off));
        }
        debug_assert!(n > 1);
        Err(ViewError::Unsupported(format!(
            "the slice {start}..{} of an axis made of sub-axes {:?}",
            start + len,
            self.0
        )))
    }
}

/// A view onto one source tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Strided {
    /// Index of the source among the caller's sources.
    pub source: usize,
    /// Element offset of logical index 0.
    pub offset: usize,
    /// One entry per logical dimension.
    pub axes: Vec<Axis>,
    /// Applied in order to every element read.
    pub values: Vec<ValueOp>,
}

/// Several views laid along one axis, in `outer` repetitions of consecutive chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct Pieces {
    /// The axis along which the pieces alternate.
    pub axis: usize,
    /// Number of repetitions of the chunk pattern along `axis`.
    pub outer: usize,
    /// `(chunk, view)`: each repetition takes `chunk` consecutive indices from `view`, whose
    /// extent along `axis` is `outer · chunk` (its other extents equal the whole view's).
    pub chunks: Vec<(usize, View)>,
    shape: Vec<usize>,
}

/// Where the elements of a logical tensor live.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// One source, strided.
    Strided(Strided),
    /// Several views along an axis.
    Pieces(Pieces),
}

impl View {
    /// The row-major, contiguous view of source `source` with shape `shape`.
    pub fn contiguous(source: usize, shape: &[usize]) -> View {
        View::with_strides(source, 0, shape, &row_major_strides(shape))
    }

    /// A view of `source` from element `offset`, with one stride per dimension.
    pub fn with_strides(source: usize, offset: usize, shape: &[usize], strides: &[usize]) -> View {
        View::Strided(Strided {
            source,
            offset,
            axes: shape
                .iter()
                .zip(strides)
                .map(|(&n, &s)| Axis::new(n, s))
                .collect(),
            values: Vec::new(),
        })
    }

    /// The logical shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            View::Strided(s) => s.axes.iter().map(Axis::extent).collect(),
            View::Pieces(p) => p.shape.clone(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        match self {
            View::Strided(s) => s.axes.len(),
            View::Pieces(p) => p.shape.len(),
        }
    }

    /// The sources this view reads, in order of first use, without repeats.
    pub fn sources(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.collect_sources(&mut out);
        out
    }

    fn collect_sources(&self, out: &mut Vec<usize>) {
        match self {
            View::Strided(s) => {
                if !out.contains(&s.source) {
                    out.push(s.source)
                }
            }
            View::Pieces(p) => p.chunks.iter().for_each(|(_, v)| v.collect_sources(out)),
        }
    }

    /// `Some` when this is one strided source whose dims each have a single stride: the
    /// `(source, offset, strides)` of a plain strided tensor (a transpose is one).
    pub fn simple_strides(&self) -> Option<(usize, usize, Vec<usize>)> {
        let View::Strided(s) = self else { return None };
        if !s.values.is_empty() {
            return None;
        }
        let strides = s
            .axes
            .iter()
            .map(|a| match a.0.as_slice() {
                [] => Some(0),
                [(_, st)] => Some(*st),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some((s.source, s.offset, strides))
    }

    /// True when the view reads its single source in row-major order from its start, with no
    /// value operation: the data can be copied as is.
    pub fn is_identity_of(&self, source_numel: usize) -> bool {
        match self.simple_strides() {
            Some((_, 0, strides)) => {
                let shape = self.shape();
                self.numel() == source_numel
                    && shape
                        .iter()
                        .zip(&strides)
                        .zip(row_major_strides(&shape))
                        .all(|((&n, &s), r)| n == 1 || s == r)
            }
            _ => false,
        }
    }

    /// True when some leaf carries a value operation.
    pub fn has_values(&self) -> bool {
        match self {
            View::Strided(s) => !s.values.is_empty(),
            View::Pieces(p) => p.chunks.iter().any(|(_, v)| v.has_values()),
        }
    }

    /// Appends a value operation to every leaf.
    pub fn map_values(self, op: ValueOp) -> View {
        match self {
            View::Strided(mut s) => {
                s.values.push(op);
                View::Strided(s)
            }
            View::Pieces(mut p) => {
                p.chunks = p
                    .chunks
                    .into_iter()
                    .map(|(c, v)| (c, v.map_values(op)))
                    .collect();
                View::Pieces(p)
            }
        }
    }

    fn check_axis(&self, axis: usize) -> Result<(), ViewError> {
        if axis >= self.ndim() {
            return invalid(format!("axis {axis} of a {}-d tensor", self.ndim()));
        }
        Ok(())
    }

    /// Reorders the axes: axis `k` of the result is axis `perm[k]` of `self`.
    pub fn permute(self, perm: &[usize]) -> Result<View, ViewError> {
        let n = self.ndim();
        let mut seen = vec![false; n];
        if perm.len() != n
            || perm
                .iter()
                .any(|&a| a >= n || std::mem::replace(&mut seen[a], true))
        {
            return invalid(format!("{perm:?} is not a permutation of {n} axes"));
        }
        Ok(match self {
            View::Strided(mut s) => {
                s.axes = perm.iter().map(|&a| s.axes[a].clone()).collect();
                View::Strided(s)
            }
            View::Pieces(p) => {
                let axis = perm.iter().position(|&a| a == p.axis).unwrap_or(0);
                let shape = perm.iter().map(|&a| p.shape[a]).collect();
                let chunks = p
                    .chunks
                    .into_iter()
                    .map(|(c, v)| Ok((c, v.permute(perm)?)))
                    .collect::<Result<_, ViewError>>()?;
                View::Pieces(Pieces {
                    axis,
                    outer: p.outer,
                    chunks,
                    shape,
                })
            }
        })
    }

    /// Swaps the last two axes.
    pub fn transpose_last(self) -> Result<View, ViewError> {
        let n = self.ndim();
        if n < 2 {
            return invalid(format!("a transpose needs 2 or more dims, not {n}"));
        }
        let mut perm: Vec<usize> = (0..n).collect();
        perm.swap(n - 2, n - 1);
        self.permute(&perm)
    }

    /// Reverses the order of the axes.
    pub fn reverse_axes(self) -> Result<View, ViewError> {
        let perm: Vec<usize> = (0..self.ndim()).rev().collect();
        self.permute(&perm)
    }

    /// Replaces `axis` by consecutive axes of the given extents (a row-major reshape).
    pub fn split_axis(self, axis: usize, extents: &[usize]) -> Result<View, ViewError> {
        self.check_axis(axis)?;
        let shape = self.shape();
        if extents.iter().try_fold(1usize, |a, &e| a.checked_mul(e)) != Some(shape[axis]) {
            return invalid(format!(
                "cannot split an axis of {} into {extents:?}",
                shape[axis]
            ));
        }
        Ok(match self {
            View::Strided(mut s) => {
                let new = s.axes[axis].split(extents)?;
                s.axes.splice(axis..=axis, new);
                View::Strided(s)
            }
            View::Pieces(p) => {
                let mut new_shape = p.shape.clone();
                new_shape.splice(axis..=axis, extents.iter().copied());
                if axis != p.axis {
                    let pw = if p.axis > axis {
                        p.axis + extents.len() - 1
                    } else {
                        p.axis
                    };
                    let chunks = p
                        .chunks
                        .into_iter()
                        .map(|(c, v)| Ok((c, v.split_axis(axis, extents)?)))
                        .collect::<Result<_, ViewError>>()?;
                    return Ok(View::Pieces(Pieces {
                        axis: pw,
                        outer: p.outer,
                        chunks,
                        shape: new_shape,
                    }));
                }
                let total: usize = p.chunks.iter().map(|(c, _)| c).sum();
                // Leading extents that multiply to `outer` become plain axes of every piece;
                // the last extent must then be one repetition of the chunk pattern.
                let lead = &extents[..extents.len() - 1];
                let last = extents[extents.len() - 1];
                if lead.iter().product::<usize>() != p.outer || last != total {
                    // Otherwise an inner extent that divides every chunk splits off every piece
                    // (`r = (o·S + m)` with `last | m`'s chunk bounds), and the rest recurses.
                    if extents.len() >= 2 && p.chunks.iter().all(|(c, _)| c % last == 0) {
                        let head: usize = lead.iter().product();
                        let chunks = p
                            .chunks
                            .into_iter()
                            .map(|(c, v)| {
                                Ok((c / last, v.split_axis(axis, &[p.outer * c / last, last])?))
                            })
                            .collect::<Result<_, ViewError>>()?;
                        let mut shape2 = p.shape.clone();
                        shape2.splice(axis..=axis, [head, last]);
                        let two = View::Pieces(Pieces {
                            axis,
                            outer: p.outer,
                            chunks,
                            shape: shape2,
                        });
                        return if lead.len() == 1 {
                            Ok(two)
                        } else {
                            two.split_axis(axis, lead)
                        };
                    }
                    return Err(ViewError::Unsupported(format!(
                        "a split into {extents:?} of an axis interleaving pieces ({} × chunks {:?})",
                        p.outer,
                        p.chunks.iter().map(|(c, _)| *c).collect::<Vec<_>>()
                    )));
                }
                let chunks = p
                    .chunks
                    .into_iter()
                    .map(|(c, v)| {
                        let mut e = lead.to_vec();
                        e.push(c);
                        Ok((c, v.split_axis(axis, &e)?))
                    })
                    .collect::<Result<_, ViewError>>()?;
                View::Pieces(Pieces {
                    axis: axis + lead.len(),
                    outer: 1,
                    chunks,
                    shape: new_shape,
                })
            }
        })
    }

    /// Merges axes `axis .. axis + count` into one (a row-major reshape).
    pub fn merge_axes(self, axis: usize, count: usize) -> Result<View, ViewError> {
        if count == 0 || axis + count > self.ndim() {
            return invalid(format!(
                "cannot merge axes {axis}..{} of a {}-d tensor",
                axis + count,
                self.ndim()
            ));
        }
        if count == 1 {
            return Ok(self);
        }
        Ok(match self {
            View::Strided(mut s) => {
                let merged: Vec<(usize, usize)> = s.axes[axis..axis + count]
                    .iter()
                    .flat_map(|a| a.0.iter().copied())
                    .collect();
                s.axes
                    .splice(axis..axis + count, [Axis(merged).normalized()]);
                View::Strided(s)
            }
            View::Pieces(p) => {
                let range = axis..axis + count;
                let mut shape = p.shape.clone();
                let merged: usize = shape[range.clone()].iter().product();
                shape.splice(range.clone(), [merged]);
                let chunks_in = p.chunks;
                if !range.contains(&p.axis) {
                    let pw = if p.axis >= range.end {
                        p.axis - (count - 1)
                    } else {
                        p.axis
                    };
                    let chunks = chunks_in
                        .into_iter()
                        .map(|(c, v)| Ok((c, v.merge_axes(axis, count)?)))
                        .collect::<Result<_, ViewError>>()?;
                    return Ok(View::Pieces(Pieces {
                        axis: pw,
                        outer: p.outer,
                        chunks,
                        shape,
                    }));
                }
                let before: usize = p.shape[axis..p.axis].iter().product();
                let after: usize = p.shape[p.axis + 1..range.end].iter().product();
                let chunks = chunks_in
                    .into_iter()
                    .map(|(c, v)| Ok((c * after, v.merge_axes(axis, count)?)))
                    .collect::<Result<_, ViewError>>()?;
                View::Pieces(Pieces {
                    axis,
                    outer: p.outer * before,
                    chunks,
                    shape,
                })
            }
        })
    }

    /// The sub-range `[start, start + len)` along `axis`.
    pub fn slice(self, axis: usize, start: usize, len: usize) -> Result<View, ViewError> {
        self.check_axis(axis)?;
        let extent = self.shape()[axis];
        if start.checked_add(len).is_none_or(|e| e > extent) || len == 0 {
            return invalid(format!(
                "slice {start}..{} of an axis of {extent}",
                start.saturating_add(len)
            ));
        }
        if start == 0 && len == extent {
            return Ok(self);
        }
        Ok(match self {
            View::Strided(mut s) => {
                let (a, off) = s.axes[axis].slice(start, len)?;
                s.axes[axis] = a;
                s.offset += off;
                View::Strided(s)
            }
            View::Pieces(p) => {
                if axis != p.axis {
                    let mut shape = p.shape.clone();
                    shape[axis] = len;
                    let chunks = p
                        .chunks
                        .into_iter()
                        .map(|(c, v)| Ok((c, v.slice(axis, start, len)?)))
                        .collect::<Result<_, ViewError>>()?;
                    return Ok(View::Pieces(Pieces {
                        axis: p.axis,
                        outer: p.outer,
                        chunks,
                        shape,
                    }));
                }
                if p.outer != 1 {
                    return Err(ViewError::Unsupported(format!(
                        "the slice {start}..{} of an axis interleaving pieces {} times",
                        start + len,
                        p.outer
                    )));
                }
                let mut kept = Vec::new();
                let mut at = 0;
                for (c, v) in p.chunks {
                    let (lo, hi) = (at.max(start), (at + c).min(start + len));
                    if lo < hi {
                        kept.push((hi - lo, v.slice(axis, lo - at, hi - lo)?));
                    }
                    at += c;
                }
                if kept.len() == 1 {
                    kept.pop()
                        .map(|(_, v)| v)
                        .ok_or_else(|| ViewError::Invalid("empty slice".into()))?
                } else {
                    let mut shape = p.shape.clone();
                    shape[axis] = len;
                    View::Pieces(Pieces {
                        axis,
                        outer: 1,
                        chunks: kept,
                        shape,
                    })
                }
            }
        })
    }

    /// Inserts an axis of extent 1 before `axis`.
    pub fn unsqueeze(self, axis: usize) -> Result<View, ViewError> {
        if axis > self.ndim() {
            return invalid(format!("axis {axis} of a {}-d tensor", self.ndim()));
        }
        Ok(match self {
            View::Strided(mut s) => {
                s.axes.insert(axis, Axis(Vec::new()));
                View::Strided(s)
            }
            View::Pieces(mut p) => {
                p.shape.insert(axis, 1);
                if p.axis >= axis {
                    p.axis += 1;
                }
                p.chunks = p
                    .chunks
                    .into_iter()
                    .map(|(c, v)| Ok((c, v.unsqueeze(axis)?)))
                    .collect::<Result<_, ViewError>>()?;
                View::Pieces(p)
            }
        })
    }

    /// Removes `axis`, which must have extent 1.
    pub fn squeeze(self, axis: usize) -> Result<View, ViewError> {
        self.check_axis(axis)?;
        if self.shape()[axis] != 1 {
            return invalid(format!(
                "axis {axis} has extent {}, not 1",
                self.shape()[axis]
            ));
        }
        Ok(match self {
            View::Strided(mut s) => {
                s.axes.remove(axis);
                View::Strided(s)
            }
            View::Pieces(mut p) => {
                if p.axis == axis {
                    // One index along the axis: a single chunk of a single repetition.
                    let (_, v) = p.chunks.remove(0);
                    return v.squeeze(axis);
                }
                p.shape.remove(axis);
                if p.axis > axis {
                    p.axis -= 1;
                }
                p.chunks = p
                    .chunks
                    .into_iter()
                    .map(|(c, v)| Ok((c, v.squeeze(axis)?)))
                    .collect::<Result<_, ViewError>>()?;
                View::Pieces(p)
            }
        })
    }

    /// Lays `parts` along `axis`: `outer` repetitions, each taking `chunks[k]` consecutive
    /// indices of part `k`. Every part's extent along `axis` must be `outer · chunks[k]`, and its
    /// other extents must agree.
    pub fn interleave(
        axis: usize,
        outer: usize,
        parts: Vec<(usize, View)>,
    ) -> Result<View, ViewError> {
        let Some((_, first)) = parts.first() else {
            return invalid("nothing to join");
        };
        let mut shape = first.shape();
        if axis >= shape.len() || outer == 0 {
            return invalid(format!("cannot join along axis {axis} of {shape:?}"));
        }
        let mut total = 0usize;
        for (c, v) in &parts {
            let s = v.shape();
            let mut want = shape.clone();
            want[axis] = outer
                .checked_mul(*c)
                .ok_or_else(|| ViewError::Invalid("overflow".into()))?;
            if s != want {
                return invalid(format!(
                    "parts to join along axis {axis} have shapes {:?}",
                    parts.iter().map(|(_, v)| v.shape()).collect::<Vec<_>>()
                ));
            }
            total += c;
        }
        if parts.len() == 1 {
            if let Some((_, v)) = parts.into_iter().next() {
                return Ok(v);
            }
            return invalid("nothing to join");
        }
        shape[axis] = outer * total;
        Ok(View::Pieces(Pieces {
            axis,
            outer,
            chunks: parts,
            shape,
        }))
    }

    /// Concatenates `parts` along `axis`.
    pub fn concat(axis: usize, parts: Vec<View>) -> Result<View, ViewError> {
        let parts = parts
            .into_iter()
            .map(|v| {
                let n = v.shape().get(axis).copied().unwrap_or(0);
                (n, v)
            })
            .collect();
        View::interleave(axis, 1, parts)
    }

    /// Stacks `parts` (of equal shapes) along a new axis `axis`.
    pub fn stack(axis: usize, parts: Vec<View>) -> Result<View, ViewError> {
        let parts = parts
            .into_iter()
            .map(|v| v.unsqueeze(axis))
            .collect::<Result<Vec<_>, _>>()?;
        View::concat(axis, parts)
    }

    /// Calls `emit(dst_col, leaf, src_offset, len, src_stride)` for runs covering columns
    /// `cols` of row `row` of the view seen as `[numel / last, last]`, in column order. A 0-d
    /// or 1-d view has one row.
    pub fn runs(
        &self,
        row: usize,
        cols: Range<usize>,
        emit: &mut dyn FnMut(usize, &Strided, usize, usize, usize),
    ) {
        let shape = self.shape();
        self.runs_at(&shape, row, cols.start, cols, emit);
    }

    fn runs_at(
        &self,
        shape: &[usize],
        row: usize,
        dst_col: usize,
        cols: Range<usize>,
        emit: &mut dyn FnMut(usize, &Strided, usize, usize, usize),
    ) {
        let n = shape.len();
        match self {
            View::Strided(s) => {
                // Offset of the row: decompose `row` over axes 0..n-1.
                let mut off = s.offset;
                let mut r = row;
                for a in (0..n.saturating_sub(1)).rev() {
                    off += s.axes[a].offset(r % shape[a]);
                    r /= shape[a];
                }
                let last = match s.axes.last() {
                    Some(a) => a.0.as_slice(),
                    None => &[],
                };
                emit_axis_runs(s, last, off, dst_col, cols, emit);
            }
            View::Pieces(p) => {
                if n == 0 {
                    return;
                }
                if p.axis == n - 1 {
                    let total: usize = p.chunks.iter().map(|(c, _)| c).sum();
                    let mut col = cols.start;
                    while col < cols.end {
                        let (o, mut m) = (col / total, col % total);
                        for (c, v) in &p.chunks {
                            if m < *c {
                                let take = (c - m).min(cols.end - col);
                                let local = o * c + m;
                                let mut vshape = shape.to_vec();
                                vshape[n - 1] = p.outer * c;
                                v.runs_at(
                                    &vshape,
                                    row,
                                    dst_col + (col - cols.start),
                                    local..local + take,
                                    emit,
                                );
                                col += take;
                                break;
                            }
                            m -= c;
                        }
                    }
                } else {
                    // Index along the pieces' axis for this row, and the row inside the piece.
                    let mut idx = vec![0usize; n - 1];
                    let mut r = row;
                    for a in (0..n - 1).rev() {
                        idx[a] = r % shape[a];
                        r /= shape[a];
                    }
                    let total: usize = p.chunks.iter().map(|(c, _)| c).sum();
                    let i = idx[p.axis];
                    let (o, mut m) = (i / total, i % total);
                    for (c, v) in &p.chunks {
                        if m < *c {
                            idx[p.axis] = o * c + m;
                            let mut vshape = shape.to_vec();
                            vshape[p.axis] = p.outer * c;
                            let vrow = idx
                                .iter()
                                .zip(&vshape[..n - 1])
                                .fold(0usize, |acc, (&i, &e)| acc * e + i);
                            v.runs_at(&vshape, vrow, dst_col, cols, emit);
                            return;
                        }
                        m -= c;
                    }
                }
            }
        }
    }
}

/// Emits runs for columns `cols` of the last axis made of sub-axes `last`, starting at element
/// `base` of the source.
fn emit_axis_runs(
    s: &Strided,
    last: &[(usize, usize)],
    base: usize,
    dst_col: usize,
    cols: Range<usize>,
    emit: &mut dyn FnMut(usize, &Strided, usize, usize, usize),
) {
    match last {
        [] => {
            if !cols.is_empty() {
                emit(dst_col, s, base, 1, 1);
            }
        }
        [(_, stride)] => emit(dst_col, s, base + cols.start * stride, cols.len(), *stride),
        [.., (inner, stride)] => {
            let prefix = Axis(last[..last.len() - 1].to_vec());
            let mut col = cols.start;
            while col < cols.end {
                let (o, i) = (col / inner, col % inner);
                let take = (inner - i).min(cols.end - col);
                emit(
                    dst_col + (col - cols.start),
                    s,
                    base + prefix.offset(o) + i * stride,
                    take,
                    *stride,
                );
                col += take;
            }
        }
    }
}

/// Row-major strides of `shape`, in elements.
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Reads every element of `view` into a row-major `Vec`, for tests and small tensors:
/// `read(source, element)` supplies source values.
pub fn collect<T: Copy>(view: &View, read: &dyn Fn(usize, usize) -> T) -> Vec<T> {
    let shape = view.shape();
    let cols = shape.last().copied().unwrap_or(1);
    let rows = view.numel().checked_div(cols).unwrap_or(0);
    let mut out = Vec::with_capacity(view.numel());
    for r in 0..rows {
        view.runs(r, 0..cols, &mut |_, leaf, off, len, stride| {
            for k in 0..len {
                out.push(read(leaf.source, off + k * stride));
            }
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn data(view: &View) -> Vec<(usize, usize)> {
        collect(view, &|s, e| (s, e))
    }

    fn elems(view: &View) -> Vec<usize> {
        data(view).into_iter().map(|(_, e)| e).collect()
    }

    #[test]
    fn contiguous_and_transpose() {
        let v = View::contiguous(0, &[2, 3]);
        assert_eq!(elems(&v), [0, 1, 2, 3, 4, 5]);
        assert!(v.is_identity_of(6));
        let t = v.clone().transpose_last().unwrap();
        assert_eq!(t.shape(), [3, 2]);
        assert_eq!(elems(&t), [0, 3, 1, 4, 2, 5]);
        assert!(!t.is_identity_of(6));
        assert_eq!(t.simple_strides(), Some((0, 0, vec![1, 3])));
        assert_eq!(elems(&t.transpose_last().unwrap()), elems(&v));
    }

    #[test]
    fn rope_style_permutation_after_a_transpose_stays_strided() {
        // Canonical [4, 3] (2 heads × D=2), stored transposed [3, 4]; view back to canonical and
        // permute rows per head [h, 2, D/2] -> [h, D/2, 2].
        let stored_t = View::contiguous(0, &[3, 4]).transpose_last().unwrap(); // [4, 3]
        let v = stored_t
            .split_axis(0, &[2, 2, 1])
            .unwrap()
            .permute(&[0, 2, 1, 3])
            .unwrap()
            .merge_axes(0, 3)
            .unwrap();
        assert!(matches!(v, View::Strided(_)));
        assert_eq!(v.shape(), [4, 3]);
        // D/2 = 1: the permutation is the identity on each head.
        assert_eq!(
            elems(&v),
            elems(&View::contiguous(0, &[3, 4]).transpose_last().unwrap())
        );
        // A real one: 1 head of D = 4 rows, cols 1.
        let v = View::contiguous(0, &[4, 1])
            .split_axis(0, &[1, 2, 2])
            .unwrap()
            .permute(&[0, 2, 1, 3])
            .unwrap()
            .merge_axes(0, 3)
            .unwrap();
        assert_eq!(elems(&v), [0, 2, 1, 3]);
    }

    #[test]
    fn concat_and_slice_back() {
        let q = View::contiguous(0, &[4, 2]);
        let k = View::contiguous(1, &[2, 2]);
        let v = View::contiguous(2, &[2, 2]);
        let fused = View::concat(0, vec![q.clone(), k.clone(), v.clone()]).unwrap();
        assert_eq!(fused.shape(), [8, 2]);
        assert_eq!(
            data(&fused),
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (0, 4),
                (0, 5),
                (0, 6),
                (0, 7),
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3),
                (2, 0),
                (2, 1),
                (2, 2),
                (2, 3)
            ]
        );
        assert_eq!(fused.clone().slice(0, 4, 2).unwrap(), k);
        assert_eq!(fused.clone().slice(0, 0, 4).unwrap(), q);
        // Concatenated along columns, read by rows.
        let side = View::concat(
            1,
            vec![View::contiguous(0, &[2, 1]), View::contiguous(1, &[2, 2])],
        )
        .unwrap();
        assert_eq!(
            data(&side),
            [(0, 0), (1, 0), (1, 1), (0, 1), (1, 2), (1, 3)]
        );
        // Transposing a concatenation.
        let t = fused.transpose_last().unwrap();
        assert_eq!(t.shape(), [2, 8]);
        assert_eq!(
            data(&t)[..8],
            [
                (0, 0),
                (0, 2),
                (0, 4),
                (0, 6),
                (1, 0),
                (1, 2),
                (2, 0),
                (2, 2)
            ]
        );
    }

    #[test]
    fn per_head_interleave_reads_like_neox() {
        // q, k, v each [nH·D, C] with nH = 2, D = 2, C = 1: fused rows go q0 q0 k0 k0 v0 v0 q1 q1 ...
        let part = |s| View::contiguous(s, &[4, 1]);
        let fused = View::interleave(0, 2, vec![(2, part(0)), (2, part(1)), (2, part(2))]).unwrap();
        assert_eq!(
            data(&fused),
            [
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (2, 0),
                (2, 1),
                (0, 2),
                (0, 3),
                (1, 2),
                (1, 3),
                (2, 2),
                (2, 3)
            ]
        );
        // Built instead by stacking on a new axis and merging: the same map.
        let stacked = View::stack(
            1,
            vec![
                part(0).split_axis(0, &[2, 2]).unwrap(),
                part(1).split_axis(0, &[2, 2]).unwrap(),
                part(2).split_axis(0, &[2, 2]).unwrap(),
            ],
        )
        .unwrap()
        .merge_axes(0, 3)
        .unwrap();
        assert_eq!(data(&stacked), data(&fused));
        // Splitting back into the pieces returns the parts.
        let back = fused.split_axis(0, &[2, 6]).unwrap();
        assert_eq!(back.shape(), [2, 6, 1]);
        let k = back.slice(1, 2, 2).unwrap().merge_axes(0, 2).unwrap();
        assert_eq!(k, part(1));
    }

    #[test]
    fn per_head_split_of_a_stored_fused_tensor_is_strided() {
        // Stored fused [nH·3·D, C] = [12, 1]; q = rows of head h at h·6 + 0..2.
        let stored = View::contiguous(0, &[12, 1]);
        let q = stored
            .split_axis(0, &[2, 6])
            .unwrap()
            .slice(1, 0, 2)
            .unwrap()
            .merge_axes(0, 2)
            .unwrap();
        assert!(matches!(q, View::Strided(_)));
        assert_eq!(elems(&q), [0, 1, 6, 7]);
    }

    #[test]
    fn stack_experts_and_transpose_each() {
        let e: Vec<View> = (0..3).map(|s| View::contiguous(s, &[2, 3])).collect();
        let packed = View::stack(0, e.clone()).unwrap();
        assert_eq!(packed.shape(), [3, 2, 3]);
        assert_eq!(data(&packed)[6..9], [(1, 0), (1, 1), (1, 2)]);
        let t = packed.clone().transpose_last().unwrap();
        assert_eq!(t.shape(), [3, 3, 2]);
        assert_eq!(
            data(&t)[..6],
            [(0, 0), (0, 3), (0, 1), (0, 4), (0, 2), (0, 5)]
        );
        for (j, part) in e.iter().enumerate() {
            let got = packed.clone().slice(0, j, 1).unwrap().squeeze(0).unwrap();
            assert_eq!(&got, part);
        }
    }

    #[test]
    fn errors_instead_of_guesses() {
        let v = View::contiguous(0, &[6, 1]);
        assert!(matches!(
            v.clone().split_axis(0, &[4, 2]),
            Err(ViewError::Invalid(_))
        ));
        assert!(matches!(
            v.clone().permute(&[0, 0]),
            Err(ViewError::Invalid(_))
        ));
        assert!(matches!(
            v.clone().slice(0, 5, 2),
            Err(ViewError::Invalid(_))
        ));
        assert!(matches!(
            v.clone().merge_axes(1, 2),
            Err(ViewError::Invalid(_))
        ));
        let p = View::interleave(
            0,
            3,
            vec![
                (1, View::contiguous(0, &[3, 1])),
                (1, View::contiguous(1, &[3, 1])),
            ],
        )
        .unwrap();
        assert!(matches!(
            p.clone().slice(0, 1, 2),
            Err(ViewError::Unsupported(_))
        ));
        assert!(matches!(
            p.split_axis(0, &[2, 3]),
            Err(ViewError::Unsupported(_))
        ));
        assert!(matches!(
            View::concat(
                0,
                vec![View::contiguous(0, &[2, 2]), View::contiguous(1, &[2, 3])]
            ),
            Err(ViewError::Invalid(_))
        ));
    }
}
