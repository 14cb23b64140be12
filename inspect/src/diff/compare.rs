//! Comparing one pair, as a sequence of named steps:
//!
//! 1. [`same_bytes`]: one stored tensor each, same dtype, shape and bytes: identical.
//! 2. [`readable`], [`related_shapes`]: what can be compared at all.
//! 3. [`candidates`]: the relation the conventions imply (A's canonical tensor against B's),
//!    the stored tensors as they are (when the conventions expect a change), then the
//!    hypotheses of the algebra applied to A's canonical tensor.
//! 4. [`first_holding`]: each candidate screened on samples, then confirmed over the whole
//!    tensor, exactly and then within one ulp of the narrower dtype.
//! 5. [`affine`]: a constant factor or offset on top of a candidate.
//! 6. [`different`]: statistics against the relation the conventions imply.
//!
//! The verdict is named by [`name`] from the transforms of the candidate that held.

use std::cell::OnceCell;

use crate::checkpoint::TensorInfo;
use crate::diff::numeric::{self, Geom, Pair, Reader, Relation, Sample};
use crate::diff::relation::{self, Move, RopeCheck};
use crate::diff::report::{HeadKind, PairError, RopeDirection, Transformed, Verdict};
use crate::dtype::Dtype;
use crate::layout::gather::{GatherError, Source};
use crate::layout::transform::{Chain, RopeOrder, Transform};
use crate::layout::view::View;
use crate::view::TensorView;

/// One side of a pair, as the comparison reads it.
#[derive(Debug, Clone)]
pub(crate) struct Operand<'a> {
    /// The stored tensor shown for this side (the one holding the canonical tensor).
    pub info: &'a TensorInfo,
    /// Its index among `sources`.
    pub tensor: usize,
    /// Every tensor of the side, by index.
    pub tensors: &'a [TensorInfo],
    /// Their bytes, by index.
    pub sources: &'a [Source<'a>],
    /// The canonical tensor as a view of `sources`.
    pub canonical: View,
    /// Canonical → stored, by the side's convention (casts left out).
    pub chain: Vec<Move>,
    /// Stored → canonical, by the side's convention.
    pub chain_inv: Vec<Move>,
    /// The stored tensor has the transpose of the shape its convention expects and is read
    /// transposed (what a shape-trusting loader does): one more transpose on top of `chain`.
    pub read_transposed: bool,
    /// The canonical tensor is exactly the one stored tensor (not a part of a fused one).
    pub single: bool,
}

impl Operand<'_> {
    fn read_move(&self) -> Option<Move> {
        self.read_transposed
            .then(|| Move::new(Transform::Transpose, self.info.shape.len()))
    }

    /// Stored → canonical, the reading transposition included.
    fn stored_to_canonical(&self) -> Vec<Move> {
        self.read_move()
            .into_iter()
            .chain(self.chain_inv.clone())
            .collect()
    }

    /// Canonical → stored, the reading transposition included.
    fn canonical_to_stored(&self) -> Vec<Move> {
        self.chain.iter().cloned().chain(self.read_move()).collect()
    }
}

/// A pair to compare.
#[derive(Debug, Clone)]
pub(crate) struct PairInput<'a> {
    /// A's side.
    pub a: Operand<'a>,
    /// B's side.
    pub b: Operand<'a>,
    /// Whether and how to try a RoPE permutation.
    pub rope: RopeCheck,
    /// Skip the sampled screening.
    pub full: bool,
}

impl PairInput<'_> {
    /// The relation the two conventions imply between the stored tensors.
    pub(crate) fn conventions(&self) -> Vec<Move> {
        relation::simplify(
            self.a
                .chain_inv
                .iter()
                .chain(&self.b.chain)
                .cloned()
                .collect(),
        )
    }

    /// The relation between the stored tensors if B's canonical tensor is `h` of A's.
    fn relation_through(&self, h: &[Move]) -> Vec<Move> {
        let mut m = self.a.stored_to_canonical();
        m.extend_from_slice(h);
        m.extend(self.b.canonical_to_stored());
        relation::simplify(m)
    }

    fn narrow(&self) -> Dtype {
        narrower(self.a.info.dtype, self.b.info.dtype)
    }

    fn head_dim(&self) -> Option<usize> {
        match self.rope {
            RopeCheck::Heads { head_dim, .. } => Some(head_dim),
            _ => None,
        }
    }

    fn head_kind(&self) -> HeadKind {
        match self.rope {
            RopeCheck::Heads { kind, .. } | RopeCheck::MissingConfig { kind } => kind,
            RopeCheck::NotApplicable => HeadKind::Query,
        }
    }
}

/// What a comparison found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Found {
    /// The verdict.
    pub verdict: Verdict,
    /// The transforms from A's stored tensor to B's the values show (`None`: none holds).
    pub relation: Option<Vec<Move>>,
    /// The relation is the conventions' own (no hypothesis was needed).
    pub matches_conventions: bool,
}

/// The value relation a candidate held with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Exact,
    Rounded(f64),
    Scaled(f32),
    Offset(f32),
}

/// One candidate relation: a view of A's tensors that should equal a view of B's.
#[derive(Debug, Clone)]
struct Candidate {
    x: View,
    /// B's view when it is not B's canonical tensor (the stored tensor as it is).
    y: Option<View>,
    /// Stored A → stored B if it holds.
    relation: Vec<Move>,
    /// The hypothesis on the canonical tensor (empty: the conventions' relation, or the stored
    /// tensors as they are).
    deviation: Vec<Move>,
}

/// Compares one pair and names the relation. Notes (e.g. a RoPE check that could not run) are
/// appended to `notes`.
pub(crate) fn compare(p: &PairInput<'_>, notes: &mut Vec<String>) -> Result<Found, PairError> {
    let conventions = p.conventions();
    if let Some(v) = same_bytes(p) {
        let relation = Vec::new();
        return Ok(Found {
            verdict: v,
            matches_conventions: relation == conventions,
            relation: Some(relation),
        });
    }
    let numbers = readable(p)?;
    related_shapes(p)?;
    let cands = candidates(p, notes);
    let found = if numbers {
        let screen = Screen::new(p, &cands)?;
        match first_holding(p, &cands, &screen)? {
            Some(f) => f,
            None => match affine(p, &cands, &screen, notes)? {
                Some(f) => f,
                None => different(p, &cands[0], &screen)?,
            },
        }
    } else {
        bytes_only(p, &cands[0])?
    };
    let matches = found.relation.as_ref() == Some(&conventions)
        && !matches!(found.verdict, Verdict::Different { .. });
    Ok(Found {
        matches_conventions: matches && found.matches_conventions,
        ..found
    })
}

/// Step 1: one stored tensor on each side with the same dtype, shape and bytes.
fn same_bytes(p: &PairInput<'_>) -> Option<Verdict> {
    let (a, b) = (&p.a, &p.b);
    let equal = a.single
        && b.single
        && a.info.dtype == b.info.dtype
        && a.info.shape == b.info.shape
        && a.sources[a.tensor].bytes == b.sources[b.tensor].bytes;
    equal.then(|| Verdict::Identical {
        lossless_cast: None,
        symmetric: a_symmetric(p),
    })
}

/// A's stored tensor is a square matrix equal to its own transpose (and B's has its shape).
fn a_symmetric(p: &PairInput<'_>) -> bool {
    let (a, b) = (&p.a, &p.b);
    let square = matches!(a.info.shape[..], [r, c] if r == c);
    square
        && a.single
        && a.info.shape == b.info.shape
        && numeric::symmetric(&TensorView {
            info: a.info,
            bytes: a.sources[a.tensor].bytes,
        })
}

/// Step 2a: `true` when the values can be read as numbers, `false` when only bytes can be
/// compared (the same dtype that is not a float), an error otherwise.
fn readable(p: &PairInput<'_>) -> Result<bool, PairError> {
    let (ta, tb) = (p.a.info, p.b.info);
    let numbers = numeric::widenable(&p.a.canonical, p.a.sources)
        && numeric::widenable(&p.b.canonical, p.b.sources);
    if numbers {
        return Ok(true);
    }
    let int_vs_float = |x: Dtype, y: Dtype| !x.is_float() && y.is_float();
    if int_vs_float(ta.dtype, tb.dtype) || int_vs_float(tb.dtype, ta.dtype) {
        return Err(PairError::IntVsFloat {
            a: ta.name.clone(),
            a_dtype: ta.dtype,
            b: tb.name.clone(),
            b_dtype: tb.dtype,
        });
    }
    if ta.dtype == tb.dtype && ta.dtype.bits() % 8 == 0 {
        return Ok(false);
    }
    Err(PairError::Unreadable {
        a: ta.name.clone(),
        a_dtype: ta.dtype,
        b: tb.name.clone(),
        b_dtype: tb.dtype,
    })
}

/// Step 2b: both canonical tensors have one shape.
fn related_shapes(p: &PairInput<'_>) -> Result<(), PairError> {
    if p.a.canonical.shape() == p.b.canonical.shape() {
        return Ok(());
    }
    Err(PairError::UnrelatedShapes {
        a: p.a.info.name.clone(),
        a_shape: p.a.info.shape.clone(),
        b: p.b.info.name.clone(),
        b_shape: p.b.info.shape.clone(),
    })
}

/// Step 3: the candidates in the order they are tried.
fn candidates(p: &PairInput<'_>, notes: &mut Vec<String>) -> Vec<Candidate> {
    let expected = p.relation_through(&[]);
    let mut out = vec![Candidate {
        x: p.a.canonical.clone(),
        y: None,
        relation: expected.clone(),
        deviation: Vec::new(),
    }];
    // The conventions expect a change: the stored tensors may be equal as they are (a
    // conversion that forgot its transpose).
    if !expected.is_empty() && p.a.single && p.b.single && p.a.info.shape == p.b.info.shape {
        out.push(Candidate {
            x: View::contiguous(p.a.tensor, &p.a.info.shape),
            y: Some(View::contiguous(p.b.tensor, &p.b.info.shape)),
            relation: Vec::new(),
            deviation: Vec::new(),
        });
    }
    let shape = p.a.canonical.shape();
    let (hyps, note) = relation::hypotheses(&shape, &p.rope);
    notes.extend(note);
    for h in hyps {
        let chain = Chain::from_transforms(h.clone(), vec![vec![shape.clone()]]);
        let x = match chain.and_then(|c| c.apply(vec![vec![p.a.canonical.clone()]])) {
            Ok(g) => g.into_iter().flatten().next(),
            Err(e) => {
                // A composition the index algebra cannot express: say so, try the others.
                let words: Vec<String> = h.iter().map(ToString::to_string).collect();
                notes.push(format!(
                    "`{}` not tried: {}",
                    words.join(" → "),
                    crate::error::chain(&e)
                ));
                None
            }
        };
        let Some(x) = x else { continue };
        let deviation: Vec<Move> = h.into_iter().map(|t| Move::new(t, shape.len())).collect();
        out.push(Candidate {
            x,
            y: None,
            relation: p.relation_through(&deviation),
            deviation,
        });
    }
    out
}

/// One operand read for screening: its matrix shape, the sampled coordinates, a reader and
/// the sampled values.
struct Sampled<'a> {
    g: Geom,
    sample: Sample,
    reader: Reader<'a>,
    values: Vec<f32>,
}

impl<'a> Sampled<'a> {
    fn new(view: &'a View, o: &'a Operand<'a>, side: &'static str) -> Result<Self, PairError> {
        let e = read_err(side, o);
        let g = Geom::of(view);
        let sample = Sample::new(g);
        let reader = Reader::new(view, o.sources).map_err(&e)?;
        let values = sample.values(&reader).map_err(&e)?;
        Ok(Sampled {
            g,
            sample,
            reader,
            values,
        })
    }
}

/// B's operands of every candidate, read and sampled once, when first needed.
struct Screen<'a> {
    full: bool,
    canonical: Sampled<'a>,
    /// Per candidate with a B view of its own.
    own: Vec<OnceCell<Sampled<'a>>>,
}

fn read_err(side: &'static str, o: &Operand<'_>) -> impl Fn(GatherError) -> PairError {
    let tensor = o.info.name.clone();
    move |source| PairError::Read {
        side,
        tensor: tensor.clone(),
        source,
    }
}

impl<'a> Screen<'a> {
    fn new(p: &'a PairInput<'a>, cands: &'a [Candidate]) -> Result<Screen<'a>, PairError> {
        Ok(Screen {
            full: p.full,
            canonical: Sampled::new(&p.b.canonical, &p.b, "B")?,
            own: cands.iter().map(|_| OnceCell::new()).collect(),
        })
    }

    /// Candidate `k`'s readers, and B's sampled operand to screen it with.
    fn pair(
        &self,
        p: &'a PairInput<'a>,
        k: usize,
        c: &'a Candidate,
    ) -> Result<(Pair<'a>, &Sampled<'a>), PairError> {
        let y = match &c.y {
            None => &self.canonical,
            Some(v) => match self.own[k].get() {
                Some(y) => y,
                None => {
                    let y = Sampled::new(v, &p.b, "B")?;
                    self.own[k].get_or_init(|| y)
                }
            },
        };
        let x = Reader::new(&c.x, p.a.sources).map_err(read_err("A", &p.a))?;
        Ok((
            Pair {
                x,
                y: y.reader.clone(),
                g: y.g,
            },
            y,
        ))
    }
}

/// Screens `rel` on the sample (unless `--full`), then confirms it on the whole tensor.
fn holds(
    pair: &Pair<'_>,
    y: &Sampled<'_>,
    rel: Relation,
    full: bool,
) -> Result<Option<f64>, GatherError> {
    if !full && !rel.holds(&y.sample.values(&pair.x)?, &y.values) {
        return Ok(None);
    }
    match rel {
        Relation::Rounded(_) => pair.confirm_measuring(rel),
        _ => Ok(pair.confirm(rel)?.then_some(0.0)),
    }
}

/// Step 4: the first candidate that holds, exactly or within rounding.
fn first_holding<'a>(
    p: &'a PairInput<'a>,
    cands: &'a [Candidate],
    screen: &Screen<'a>,
) -> Result<Option<Found>, PairError> {
    let narrow = p.narrow();
    let same_dtype = p.a.info.dtype == p.b.info.dtype;
    for (k, c) in cands.iter().enumerate() {
        for rel in [Relation::Exact, Relation::Rounded(narrow)] {
            // Same dtype, stored as is: the byte test already said "not identical".
            let decided = k == 0 && same_dtype && c.relation.is_empty() && p.a.single && p.b.single;
            if rel == Relation::Exact && decided {
                continue;
            }
            let (pair, y) = screen.pair(p, k, c)?;
            let held = holds(&pair, y, rel, screen.full).map_err(pair_read_err(p))?;
            if let Some(max) = held {
                let v = match rel {
                    Relation::Exact => Value::Exact,
                    _ => Value::Rounded(max),
                };
                return Ok(Some(name(p, c, v)));
            }
        }
    }
    Ok(None)
}

fn pair_read_err(p: &PairInput<'_>) -> impl Fn(GatherError) -> PairError {
    let tensor = format!("{}` or `{}", p.a.info.name, p.b.info.name);
    move |source| PairError::Read {
        side: "A or B",
        tensor: tensor.clone(),
        source,
    }
}

/// Step 5: B = c·A or B = A + c on top of a candidate, c estimated from the sample and
/// confirmed on the whole tensor.
fn affine<'a>(
    p: &'a PairInput<'a>,
    cands: &'a [Candidate],
    screen: &Screen<'a>,
    notes: &mut Vec<String>,
) -> Result<Option<Found>, PairError> {
    let narrow = p.narrow();
    let full = screen.full;
    for (k, c) in cands.iter().enumerate() {
        let (pair, ys) = screen.pair(p, k, c)?;
        let (x, y) = (
            ys.sample.values(&pair.x).map_err(pair_read_err(p))?,
            &ys.values,
        );
        let ratios: Vec<f32> = x
            .iter()
            .zip(y)
            .filter(|(a, _)| a.abs() > f32::MIN_POSITIVE)
            .map(|(a, b)| b / a)
            .collect();
        if let Some(f) = numeric::median(ratios) {
            let rel = Relation::Scaled(f, narrow);
            if f != 1.0
                && f != 0.0
                && (full || rel.holds(&x, y))
                && pair.confirm(rel).map_err(pair_read_err(p))?
            {
                if relation::first_of(&c.deviation, "rope-permute").is_some() {
                    notes.push("scaled after a RoPE permutation".to_string());
                }
                return Ok(Some(name(p, c, Value::Scaled(f))));
            }
        }
    }
    for (k, c) in cands.iter().enumerate() {
        if relation::first_of(&c.deviation, "rope-permute").is_some() {
            continue;
        }
        let (pair, ys) = screen.pair(p, k, c)?;
        let (x, y) = (
            ys.sample.values(&pair.x).map_err(pair_read_err(p))?,
            &ys.values,
        );
        let deltas: Vec<f32> = x.iter().zip(y).map(|(a, b)| b - a).collect();
        if let Some(d) = numeric::median(deltas) {
            let rel = Relation::Offset(d, narrow);
            if d != 0.0
                && (full || rel.holds(&x, y))
                && pair.confirm(rel).map_err(pair_read_err(p))?
            {
                return Ok(Some(name(p, c, Value::Offset(d))));
            }
        }
    }
    Ok(None)
}

/// Step 6: statistics against the relation the conventions (and the shapes) imply.
fn different<'a>(
    p: &'a PairInput<'a>,
    c: &'a Candidate,
    screen: &Screen<'a>,
) -> Result<Found, PairError> {
    let (pair, _) = screen.pair(p, 0, c)?;
    let g = pair.g;
    let s = pair.stats().map_err(pair_read_err(p))?;
    Ok(Found {
        verdict: Verdict::Different {
            max_abs_diff: s.max_abs_diff,
            max_rel_diff: s.max_rel_diff,
            cosine: s.cosine(),
            differing: s.differing,
            numel: g.rows * g.cols,
            first_difference: s
                .first_difference
                .and_then(|(i, j)| stored_index(&p.b, i, j)),
            against_transpose: relation::transposes(&c.relation),
            bytes_only: false,
        },
        relation: None,
        matches_conventions: false,
    })
}

/// Values that are not numbers (the same integer dtype on both sides), compared byte for byte
/// through the conventions' relation.
fn bytes_only(p: &PairInput<'_>, c: &Candidate) -> Result<Found, PairError> {
    let e = p.a.info.dtype.bits() / 8;
    let (differing, first) =
        numeric::byte_differences((&c.x, p.a.sources), (&p.b.canonical, p.b.sources), e)
            .map_err(pair_read_err(p))?;
    if differing == 0 {
        return Ok(name(p, c, Value::Exact));
    }
    Ok(Found {
        verdict: Verdict::Different {
            max_abs_diff: f64::NAN,
            max_rel_diff: f64::NAN,
            cosine: None,
            differing,
            numel: p.b.canonical.numel(),
            first_difference: first.and_then(|(i, j)| stored_index(&p.b, i, j)),
            against_transpose: relation::transposes(&c.relation),
            bytes_only: true,
        },
        relation: None,
        matches_conventions: false,
    })
}

/// The index in B's stored tensor of element `(i, j)` of its canonical view.
fn stored_index(b: &Operand<'_>, i: usize, j: usize) -> Option<Vec<usize>> {
    let (source, offset) = numeric::locate(&b.canonical, i, j)?;
    Some(unravel(offset, &b.tensors.get(source)?.shape))
}

/// Names the verdict of candidate `c` holding with `v`: by the hypothesis when there is one,
/// otherwise by the relation between the stored tensors (one word per transform kind, from
/// [`relation::WORDS`]).
fn name(p: &PairInput<'_>, c: &Candidate, v: Value) -> Found {
    let source = if c.deviation.is_empty() {
        &c.relation
    } else {
        &c.deviation
    };
    let word = match v {
        Value::Scaled(_) => Some("scaled"),
        Value::Offset(_) => Some("offset"),
        _ => relation::word(source),
    };
    let named = Named {
        p,
        source,
        v,
        within: matches!(v, Value::Rounded(_)).then(|| p.narrow().name()),
        transposed: relation::transposes(&c.relation),
        expected: c.deviation.is_empty() && c.relation == p.conventions(),
    };
    let verdict = match word {
        None => named.same(a_symmetric(p)),
        // A square A equal to its own transpose makes "identical" and "transposed" the same
        // relation: said so, as identical.
        Some("transposed") if a_symmetric(p) => named.same(true),
        Some("transposed") => Verdict::Transposed {
            within_rounding: named.within,
            expected_by_conventions: named.expected,
        },
        Some("rope-permuted") => named.rope(),
        Some("scaled") => Verdict::Scaled {
            factor: f64::from(named.constant("scale")),
            hint: scale_hint(f64::from(named.constant("scale")), p.head_dim()),
            transposed: named.transposed,
        },
        Some("offset") => Verdict::Offset {
            offset: f64::from(named.constant("add")),
            transposed: named.transposed,
        },
        Some(w) => Verdict::Transformed(Transformed {
            verdict: w,
            part: source.iter().find_map(|m| m.index),
            transposed: named.transposed,
            within_rounding: named.within,
            expected_by_conventions: named.expected,
        }),
    };
    let mut relation = c.relation.clone();
    let ndim = p.b.info.shape.len();
    match v {
        Value::Scaled(f) => relation.push(Move::new(Transform::Scale(f), ndim)),
        Value::Offset(d) => relation.push(Move::new(Transform::Add(d), ndim)),
        _ => {}
    }
    Found {
        verdict,
        relation: Some(relation),
        matches_conventions: c.deviation.is_empty(),
    }
}

/// What naming a verdict looks at.
struct Named<'n> {
    p: &'n PairInput<'n>,
    /// The transforms that name it (the hypothesis, or the stored relation).
    source: &'n [Move],
    v: Value,
    within: Option<&'static str>,
    /// The stored tensors are transposed relative to each other.
    transposed: bool,
    /// The relation is the conventions' own.
    expected: bool,
}

impl Named<'_> {
    /// The stored tensors hold the same values (exactly, or within rounding).
    fn same(&self, symmetric: bool) -> Verdict {
        let (a, b) = (self.p.a.info.dtype, self.p.b.info.dtype);
        match self.v {
            Value::Rounded(max) => Verdict::Rounded {
                dtype: self.p.narrow().name(),
                max_abs_diff: max,
                symmetric,
            },
            _ => Verdict::Identical {
                lossless_cast: (a != b).then(|| format!("{a} → {b}")),
                symmetric,
            },
        }
    }

    fn rope(&self) -> Verdict {
        let (heads, to) =
            match relation::first_of(self.source, "rope-permute").map(|m| &m.transform) {
                Some(Transform::RopePermute { heads, to, .. }) => (*heads, *to),
                _ => (0, RopeOrder::Interleaved),
            };
        Verdict::RopePermuted {
            direction: match to {
                RopeOrder::Interleaved => RopeDirection::ToInterleaved,
                RopeOrder::Half => RopeDirection::ToRotateHalf,
            },
            heads,
            head_kind: self.p.head_kind(),
            transposed: self.transposed,
            within_rounding: self.within,
        }
    }

    /// The constant of a scale or an add: estimated from the values, or the conventions'.
    fn constant(&self, kind: &str) -> f32 {
        match (
            self.v,
            relation::first_of(self.source, kind).map(|m| &m.transform),
        ) {
            (Value::Scaled(c) | Value::Offset(c), _) => c,
            (_, Some(Transform::Scale(c) | Transform::Add(c))) => *c,
            _ if kind == "scale" => 1.0,
            _ => 0.0,
        }
    }
}

/// The narrower dtype of a float pair (F64 counts as F32: values are compared in f32).
fn narrower(a: Dtype, b: Dtype) -> Dtype {
    let clamp = |d: Dtype| if d == Dtype::F64 { Dtype::F32 } else { d };
    let (a, b) = (clamp(a), clamp(b));
    if a.bits() <= b.bits() {
        a
    } else {
        b
    }
}

/// A recognisable form of a scale factor.
fn scale_hint(c: f64, head_dim: Option<usize>) -> Option<String> {
    let close = |x: f64| (c - x).abs() <= 1e-6 * c.abs();
    if let Some(d) = head_dim {
        if close(1.0 / (d as f64).sqrt()) {
            return Some(format!("1/√head_dim (D = {d})"));
        }
        if close((d as f64).sqrt()) {
            return Some(format!("√head_dim (D = {d})"));
        }
    }
    let inv = (1.0 / (c * c)).round();
    if (2.0..=1e7).contains(&inv) && close(1.0 / inv.sqrt()) {
        return Some(format!("1/√{inv}"));
    }
    let sq = (c * c).round();
    if (2.0..=1e7).contains(&sq) && close(sq.sqrt()) {
        return Some(format!("√{sq}"));
    }
    None
}

/// Unravels a flat index into `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = flat % d;
            flat /= d;
        }
    }
    idx
}
