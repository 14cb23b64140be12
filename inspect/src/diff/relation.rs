//! Relations between two stored tensors, in the transform algebra: A's inverse chain (stored →
//! canonical), then a hypothesis on the canonical tensor, then B's chain (canonical → stored),
//! simplified so that what the two conventions share cancels out (a Flax kernel against a Flax
//! kernel is `identity`, an HF weight against a Flax kernel `transpose`).
//!
//! Verdicts are named from these transforms through one table ([`WORDS`]), and the hypotheses
//! tried when the values do not follow the conventions are generated from the algebra
//! ([`hypotheses`]): a new transform kind becomes a verdict by a row in the table and, if it can
//! be guessed, an entry in the hypothesis list, without new comparison code.

use crate::layout::transform::{Chain, RopeOrder, Transform};

/// One transform of a relation, with the rank of the tensor it acts on and, for fuse/split and
/// stack/unstack, which part (or member) of how many the pair's tensor is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Move {
    /// The transform.
    pub transform: Transform,
    /// Rank of its input.
    pub ndim: usize,
    /// `(index, count)` of the pair's tensor among the parts fused or members stacked.
    pub index: Option<(usize, usize)>,
}

impl Move {
    /// A move on a tensor of rank `ndim`.
    pub(crate) fn new(transform: Transform, ndim: usize) -> Move {
        // On a matrix, reversing the dims or permuting them [1, 0] is the transpose.
        let transform = match transform {
            Transform::ReverseDims if ndim == 2 => Transform::Transpose,
            Transform::Permute(p) if p == [1, 0] => Transform::Transpose,
            t => t,
        };
        Move {
            transform,
            ndim,
            index: None,
        }
    }
}

/// The moves of a chain (casts left out: dtypes are the value relation's business). `part` and
/// `member` locate the pair's canonical tensor in the chain's group (parts fused, members
/// stacked).
pub(crate) fn moves_of(
    chain: &Chain,
    part: Option<(usize, usize)>,
    member: Option<(usize, usize)>,
) -> Vec<Move> {
    chain
        .steps
        .iter()
        .filter(|s| !matches!(s.transform, Transform::Cast(_)))
        .map(|s| {
            let ndim = s.input.first().and_then(|m| m.first()).map_or(0, Vec::len);
            let mut m = Move::new(s.transform.clone(), ndim);
            m.index = match s.transform {
                Transform::Fuse { .. } | Transform::Split { .. } => part,
                Transform::Stack { .. } | Transform::Unstack { .. } => member,
                _ => None,
            };
            m
        })
        .collect()
}

/// The axis a transform acts on after a transpose of the last two axes moves to before it.
fn through_transpose(axis: usize, ndim: usize) -> usize {
    match ndim {
        n if n >= 2 && axis == n - 2 => n - 1,
        n if n >= 2 && axis == n - 1 => n - 2,
        _ => axis,
    }
}

/// `y` undoes `x` (or merges with it into `Some(merged)`): `None` when they do not combine.
fn combine(x: &Move, y: &Move) -> Option<Option<Move>> {
    use Transform as T;
    let same_index = x.index == y.index;
    match (&x.transform, &y.transform) {
        (T::Transpose, T::Transpose) | (T::ReverseDims, T::ReverseDims) => Some(None),
        (
            T::RopePermute {
                axis: a1,
                heads: h1,
                rotary: r1,
                to: t1,
            },
            T::RopePermute {
                axis: a2,
                heads: h2,
                rotary: r2,
                to: t2,
            },
        ) if a1 == a2 && h1 == h2 && r1 == r2 && t1 != t2 => Some(None),
        (
            T::Fuse {
                axis: a1,
                arrangement: g1,
                outer: o1,
            },
            T::Split {
                axis: a2,
                arrangement: g2,
                outer: o2,
                ..
            },
        )
        | (
            T::Split {
                axis: a1,
                arrangement: g1,
                outer: o1,
                ..
            },
            T::Fuse {
                axis: a2,
                arrangement: g2,
                outer: o2,
            },
        ) if a1 == a2 && g1 == g2 && o1 == o2 && same_index => Some(None),
        (T::Stack { axis: a1 }, T::Unstack { axis: a2 })
        | (T::Unstack { axis: a1 }, T::Stack { axis: a2 })
            if a1 == a2 && same_index =>
        {
            Some(None)
        }
        (T::Add(c), T::Add(d)) => {
            let s = c + d;
            Some((s != 0.0).then(|| Move::new(T::Add(s), x.ndim)))
        }
        (T::Scale(c), T::Scale(d)) => {
            let p = c * d;
            Some(((p - 1.0).abs() > 2.0 * f32::EPSILON).then(|| Move::new(T::Scale(p), x.ndim)))
        }
        (T::Permute(p), T::Permute(q)) if p.len() == q.len() => {
            // y after x: axis k of the result is axis q[k] of x's result = axis p[q[k]].
            let r: Vec<usize> = q.iter().map(|&k| p[k]).collect();
            let identity = r.iter().enumerate().all(|(k, &a)| k == a);
            Some((!identity).then(|| Move::new(T::Permute(r), x.ndim)))
        }
        _ => None,
    }
}

/// A transpose followed by `y`, rewritten as `y'` followed by the transpose, when they commute
/// (an axis-wise transform has its axis mapped; value transforms commute as they are).
fn commute_transpose(y: &Move) -> Option<Move> {
    let n = y.ndim;
    let mut y2 = y.clone();
    match &mut y2.transform {
        Transform::RopePermute { axis, .. }
        | Transform::Fuse { axis, .. }
        | Transform::Split { axis, .. } => {
            *axis = through_transpose(*axis, n);
            Some(y2)
        }
        Transform::Add(_) | Transform::Scale(_) => Some(y2),
        _ => None,
    }
}

/// The normal form of a sequence of moves: transposes moved to the right past what they
/// commute with, and adjacent inverse pairs cancelled, until nothing changes.
pub(crate) fn simplify(mut moves: Vec<Move>) -> Vec<Move> {
    loop {
        let mut changed = false;
        let mut i = 0;
        while i + 1 < moves.len() {
            if let Some(merged) = combine(&moves[i], &moves[i + 1]) {
                moves.splice(i..i + 2, merged);
                changed = true;
                i = i.saturating_sub(1);
                continue;
            }
            if moves[i].transform == Transform::Transpose && moves[i].ndim >= 2 {
                if let Some(y) = commute_transpose(&moves[i + 1]) {
                    let t = moves[i].clone();
                    moves[i] = y;
                    moves[i + 1] = t;
                    changed = true;
                }
            }
            i += 1;
        }
        if !changed {
            return moves;
        }
    }
}

/// True when the relation transposes (a stored matrix read the other way round).
pub(crate) fn transposes(moves: &[Move]) -> bool {
    moves.iter().any(|m| m.transform == Transform::Transpose)
}

/// The relation in words: `identity`, or the transforms joined with ` → `, parts noted.
pub(crate) fn describe(moves: &[Move]) -> String {
    if moves.is_empty() {
        return "identity".into();
    }
    moves
        .iter()
        .map(|m| match (m.index, &m.transform) {
            (Some((k, n)), Transform::Split { .. } | Transform::Unstack { .. }) => {
                format!("{} [take {} of {n}]", brief(&m.transform), k + 1)
            }
            (Some((k, n)), _) => format!("{} [as {} of {n}]", brief(&m.transform), k + 1),
            (None, t) => brief(t),
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// A transform in words, without the sizes a split recomputes.
fn brief(t: &Transform) -> String {
    match t {
        Transform::Split {
            axis,
            arrangement,
            outer,
            ..
        } => format!("split({}, axis={axis}, outer={outer})", arrangement.name()),
        other => other.to_string(),
    }
}

/// Verdict names by transform kind, in priority order: a relation is named by the first kind
/// it contains (a RoPE permutation and a transpose make `rope-permuted`, with `transposed`
/// set).
pub(crate) const WORDS: &[(&str, &str)] = &[
    ("scale", "scaled"),
    ("add", "offset"),
    ("rope-permute", "rope-permuted"),
    ("fuse", "fused"),
    ("split", "split"),
    ("stack", "stacked"),
    ("unstack", "unstacked"),
    ("reverse-dims", "dims-reversed"),
    ("permute", "permuted"),
    ("transpose", "transposed"),
];

/// The verdict word of a relation; `None` for the identity.
pub(crate) fn word(moves: &[Move]) -> Option<&'static str> {
    WORDS
        .iter()
        .find(|(kind, _)| moves.iter().any(|m| m.transform.kind() == *kind))
        .map(|(_, w)| *w)
}

/// The first move of a kind.
pub(crate) fn first_of<'m>(moves: &'m [Move], kind: &str) -> Option<&'m Move> {
    moves.iter().find(|m| m.transform.kind() == kind)
}

/// What a pair's RoPE hypothesis needs: the head count of the entry's slot and the rotary
/// width, or why it cannot be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RopeCheck {
    /// Not a q/k projection, or an architecture without RoPE.
    NotApplicable,
    /// A q/k projection, but no config gives its head count.
    MissingConfig {
        /// Which head count is missing.
        kind: crate::diff::HeadKind,
    },
    /// Try a RoPE permutation of the canonical tensor's rows (axis 0).
    Heads {
        /// Heads along axis 0 (nH for q, nKV for k).
        heads: usize,
        /// Entries per head (D).
        head_dim: usize,
        /// Rotary dims per head (R ≤ D).
        rotary: usize,
        /// Which count `heads` is.
        kind: crate::diff::HeadKind,
    },
}

/// The structural hypotheses for a canonical tensor of `shape`, in the order they are tried,
/// each a list of transforms applied to A's canonical tensor: the transpose of a square matrix,
/// the RoPE permutation both ways (then also transposed, on a square matrix), and reversed dims
/// (rank ≥ 3). Only those that keep the shape are kept (the shapes already told the rest). A
/// note says why a RoPE permutation was not tried.
pub(crate) fn hypotheses(
    shape: &[usize],
    rope: &RopeCheck,
) -> (Vec<Vec<Transform>>, Option<String>) {
    let square = matches!(shape, [a, b] if a == b);
    let mut out: Vec<Vec<Transform>> = Vec::new();
    if square {
        out.push(vec![Transform::Transpose]);
    }
    let mut note = None;
    match rope {
        RopeCheck::NotApplicable => {}
        RopeCheck::MissingConfig { kind } => {
            note = Some(format!(
                "rope-permuted not checked: it needs the {} head count, and neither side has a usable config.json",
                kind.describe()
            ));
        }
        &RopeCheck::Heads {
            heads,
            head_dim,
            rotary,
            ..
        } => {
            let len = shape.first().copied().unwrap_or(0);
            let fits = heads.checked_mul(head_dim) == Some(len)
                && head_dim % 2 == 0
                && head_dim >= 4
                && rotary >= 2
                && rotary % 2 == 0
                && rotary <= head_dim;
            if fits {
                let rope = |to| Transform::RopePermute {
                    axis: 0,
                    heads,
                    rotary,
                    to,
                };
                for to in [RopeOrder::Interleaved, RopeOrder::Half] {
                    out.push(vec![rope(to)]);
                }
                if square {
                    for to in [RopeOrder::Interleaved, RopeOrder::Half] {
                        out.push(vec![rope(to), Transform::Transpose]);
                    }
                }
            } else {
                note = Some(format!(
                    "rope-permuted not checked: the output axis has {len} entries, not {heads} heads × head_dim {head_dim} (even, ≥ 4)"
                ));
            }
        }
    }
    if shape.len() >= 3 {
        out.push(vec![Transform::ReverseDims]);
    }
    let one = vec![vec![shape.to_vec()]];
    out.retain(|h| {
        Chain::from_transforms(h.clone(), one.clone())
            .is_ok_and(|c| c.output().is_none_or(|o| o == &one))
    });
    (out, note)
}
