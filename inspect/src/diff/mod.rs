//! Comparing two checkpoints tensor by tensor, and naming the transform between each pair.
//!
//! Why this exists: when a port goes wrong, the question is rarely "are these different" but
//! "how": a forgotten transpose, a RoPE permutation applied twice, a bf16 round trip, a query
//! pre-scaled by 1/√D, Gemma's +1 on norms. [`diff`] pairs the tensors of two checkpoints through
//! the layout [`Catalogue`](crate::catalogue::Catalogue) (so an HF `q_proj.weight` meets its Flax `q_proj.kernel`), then tests
//! each pair against those transforms in a fixed order and reports the first that holds, with
//! its constants. It returns data ([`DiffReport`]); rendering lives in the binary.
//!
//! The numeric work (`numeric`) decides on a few thousand sampled values first and confirms
//! the surviving candidate over the whole tensor, tile by tile, widening bf16/f16 with the shared
//! cast kernels; pairs run in parallel (rayon) and each tensor's pages are released when done.

mod numeric;
mod pairing;

use rayon::prelude::*;
use serde::Serialize;

use crate::catalogue::Convention;
use crate::checkpoint::{Checkpoint, TensorInfo};
use crate::dtype::Dtype;
use numeric::{Geom, Layout, Pair, Relation, RopePerm, Sample, Src};

pub use numeric::RopeDirection;
pub use pairing::HeadKind;
use pairing::{PlannedPair, RopeCheck};

/// A conversion the caller says happened between A and B; verdicts it explains do not count as
/// differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conversion {
    /// A is in the HF layout and B in the Flax layout: every tensor the catalogue marks as
    /// transposed between the conventions must be exactly transposed, the others identical.
    HfToFlax,
    /// The mirror of [`Conversion::HfToFlax`].
    FlaxToHf,
    /// Any 2-D pair may be transposed (e.g. checking a loader that transposes on purpose).
    Transpose,
    /// q/k projections (and their biases) may be RoPE-permuted, in either direction.
    RopePermute,
    /// Dtypes may differ: pairs equal within the rounding of the narrower dtype are explained
    /// (alone or combined with an explained transpose or permutation).
    Cast,
}

/// What to compare and how hard.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Skip the sampled screening: decide every candidate on the whole tensor.
    pub full: bool,
    /// Conversions that explain a verdict (see [`Conversion`]).
    pub expect: Vec<Conversion>,
}

/// One side of a pair: where it came from and how it is stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSide {
    /// Tensor name in its file.
    pub name: String,
    /// Dtype, header spelling.
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Convention the name belongs to, when the catalogue recognised it (and it is not spelled
    /// the same in both conventions).
    pub convention: Option<Convention>,
}

/// The relation found between a pair, first match in this order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Same bytes, or same values after a lossless cast.
    Identical {
        /// `"BF16 → F32"` when the dtypes differ (the values survived the cast exactly).
        lossless_cast: Option<String>,
        /// A is a square matrix equal to its own transpose (symmetric, all zeros, 1×1), so the
        /// pair is identical and transposed at once: values cannot tell which happened.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        symmetric: bool,
    },
    /// B = Aᵀ.
    Transposed {
        /// The narrower dtype when equal only within its rounding (one ulp); `None` if exact.
        within_rounding: Option<&'static str>,
        /// The two names are in conventions that differ by exactly this transpose (HF weight ↔
        /// Flax kernel), so it is the expected relation.
        expected_by_conventions: bool,
    },
    /// B = A with rows permuted per head between rotate-half and interleaved RoPE layouts.
    RopePermuted {
        /// Which way A → B goes.
        direction: RopeDirection,
        /// Heads used (nH for q, nKV for k).
        heads: usize,
        /// Whether that is the query or the key/value head count.
        head_kind: HeadKind,
        /// Also transposed (e.g. an HF weight against a permuted Flax kernel).
        transposed: bool,
        /// Narrower dtype when equal only within its rounding.
        within_rounding: Option<&'static str>,
    },
    /// Equal within one ulp of the narrower dtype.
    Rounded {
        /// The narrower dtype.
        dtype: &'static str,
        /// max |a − b|.
        max_abs_diff: f64,
        /// A equals its own transpose, so B is as much a rounded transpose as a rounded copy.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        symmetric: bool,
    },
    /// B = c·A.
    Scaled {
        /// c.
        factor: f64,
        /// A recognisable form of c, e.g. `1/√head_dim (D = 16)`.
        hint: Option<String>,
        /// Scaled after a transpose.
        transposed: bool,
    },
    /// B = A + c.
    Offset {
        /// c.
        offset: f64,
        /// Offset after a transpose.
        transposed: bool,
    },
    /// None of the above.
    Different {
        /// max |a − b|.
        max_abs_diff: f64,
        /// max over elements of |a − b| / max(|a|, |b|) (at most 2).
        max_rel_diff: f64,
        /// Cosine similarity of the flattened tensors (`None` if either is all zeros).
        cosine: Option<f64>,
        /// Elements that differ.
        differing: u64,
        /// Elements compared.
        numel: usize,
        /// Index (in B's shape) of the first differing element.
        first_difference: Option<Vec<usize>>,
        /// The statistics were taken against Aᵀ (the layout the shapes or conventions imply).
        against_transpose: bool,
        /// Values were not compared (integer/unsupported dtype): only bytes differ.
        bytes_only: bool,
    },
}

impl Verdict {
    /// The verdict's name as the CLI prints it (`identical`, `rope-permuted`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Identical { .. } => "identical",
            Verdict::Transposed { .. } => "transposed",
            Verdict::RopePermuted { .. } => "rope-permuted",
            Verdict::Rounded { .. } => "rounded",
            Verdict::Scaled { .. } => "scaled",
            Verdict::Offset { .. } => "offset",
            Verdict::Different { .. } => "different",
        }
    }
}

/// Why a pair could not be compared. The diff goes on with the other pairs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// An integer (or bool) tensor against a float one.
    #[error(
        "`{a}` is {a_dtype} and `{b}` is {b_dtype}: integer and float tensors cannot be compared"
    )]
    IntVsFloat {
        /// A's name.
        a: String,
        /// A's dtype.
        a_dtype: Dtype,
        /// B's name.
        b: String,
        /// B's dtype.
        b_dtype: Dtype,
    },
    /// Two different dtypes, at least one of which orient cannot read as numbers.
    #[error("`{a}` is {a_dtype} and `{b}` is {b_dtype}: values can be compared only for F32, F16, BF16 and F64 (or the same dtype, byte for byte)")]
    Unreadable {
        /// A's name.
        a: String,
        /// A's dtype.
        a_dtype: Dtype,
        /// B's name.
        b: String,
        /// B's dtype.
        b_dtype: Dtype,
    },
    /// Shapes that are neither equal nor each other's transpose.
    #[error("shapes {a_shape:?} (`{a}`) and {b_shape:?} (`{b}`) cannot be related: neither equal nor transposed")]
    UnrelatedShapes {
        /// A's name.
        a: String,
        /// A's shape.
        a_shape: Vec<usize>,
        /// B's name.
        b: String,
        /// B's shape.
        b_shape: Vec<usize>,
    },
}

/// The comparison of one matched pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairResult {
    /// Canonical (HF) name of the catalogue entry both names stand for, when recognised.
    pub canonical: Option<String>,
    /// A's side.
    pub a: TensorSide,
    /// B's side.
    pub b: TensorSide,
    /// The catalogue says these two conventions store this tensor transposed (HF weight vs
    /// Flax kernel).
    pub transposed_by_conventions: bool,
    /// The relation found; `None` when the pair could not be compared.
    #[serde(flatten)]
    pub verdict: Option<Verdict>,
    /// Why the pair could not be compared.
    pub error: Option<String>,
    /// Remarks (e.g. a RoPE check that could not run).
    pub notes: Vec<String>,
    /// True when the verdict is `identical` or explained by the expected conversions (and the
    /// conventions of the names).
    pub explained: bool,
    /// When not explained: why.
    pub unexplained_because: Option<String>,
}

/// A tensor present on one side only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OneSided {
    /// Its name.
    pub name: String,
    /// Dtype.
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// The catalogue allows it to be absent (e.g. `lm_head` under tied embeddings): why.
    pub optional: Option<&'static str>,
}

/// How one checkpoint was read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideSummary {
    /// The path as opened (its model folder).
    pub root: String,
    /// Number of tensors.
    pub tensors: usize,
    /// What its config.json said, e.g. `llama` or `no config.json`.
    pub config: String,
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Pairs compared.
    pub pairs: usize,
    /// Per verdict name, in verdict order (only non-zero counts).
    pub verdicts: Vec<(&'static str, usize)>,
    /// Pairs that could not be compared.
    pub errors: usize,
    /// Pairs not explained (including errors).
    pub unexplained: usize,
    /// Names only in A (not counting optional ones).
    pub only_in_a: usize,
    /// Names only in B (not counting optional ones).
    pub only_in_b: usize,
}

/// Everything `diff` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffReport {
    /// Side A.
    pub a: SideSummary,
    /// Side B.
    pub b: SideSummary,
    /// Conversions the verdicts were judged against.
    pub expect: Vec<Conversion>,
    /// Whether the whole tensors were compared from the start (`--full`).
    pub full: bool,
    /// Matched pairs, in model order (catalogue order, then name).
    pub pairs: Vec<PairResult>,
    /// Tensors only in A.
    pub only_in_a: Vec<OneSided>,
    /// Tensors only in B.
    pub only_in_b: Vec<OneSided>,
    /// Remarks about the whole comparison (configs, name matching).
    pub warnings: Vec<String>,
    /// Counts.
    pub summary: Summary,
    /// Every pair identical or explained, and no unexpected one-sided name.
    pub ok: bool,
}

/// Compares `a` with `b`. `progress(result, total_pairs)` is called once per finished pair,
/// from worker threads.
pub fn diff(
    a: &Checkpoint,
    b: &Checkpoint,
    opts: &DiffOptions,
    progress: &(dyn Fn(&PairResult, usize) + Sync),
) -> DiffReport {
    let plan = pairing::plan(a, b);

    // Largest first so that the parallel tail is short; reordered for the report below.
    let mut order: Vec<usize> = (0..plan.pairs.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse(plan.pairs[i].a.nbytes().max(plan.pairs[i].b.nbytes()))
    });
    let mut done: Vec<(usize, PairResult)> = order
        .par_iter()
        .map(|&i| {
            let p = &plan.pairs[i];
            let r = compare_planned(a, b, p, opts);
            a.release(p.a);
            b.release(p.b);
            progress(&r, plan.pairs.len());
            (i, r)
        })
        .collect();
    done.sort_by_key(|(i, _)| *i);
    let pairs: Vec<PairResult> = done.into_iter().map(|(_, r)| r).collect();

    let mut summary = Summary {
        pairs: pairs.len(),
        ..Summary::default()
    };
    for name in [
        "identical",
        "transposed",
        "rope-permuted",
        "rounded",
        "scaled",
        "offset",
        "different",
    ] {
        let n = pairs
            .iter()
            .filter(|p| p.verdict.as_ref().is_some_and(|v| v.name() == name))
            .count();
        if n > 0 {
            summary.verdicts.push((name, n));
        }
    }
    summary.errors = pairs.iter().filter(|p| p.error.is_some()).count();
    summary.unexplained = pairs.iter().filter(|p| !p.explained).count();
    summary.only_in_a = plan.only_a.iter().filter(|o| o.optional.is_none()).count();
    summary.only_in_b = plan.only_b.iter().filter(|o| o.optional.is_none()).count();
    let ok = summary.unexplained == 0 && summary.only_in_a == 0 && summary.only_in_b == 0;

    DiffReport {
        a: plan.side_a,
        b: plan.side_b,
        expect: opts.expect.clone(),
        full: opts.full,
        pairs,
        only_in_a: plan.only_a,
        only_in_b: plan.only_b,
        warnings: plan.warnings,
        summary,
        ok,
    }
}

fn side(t: &TensorInfo, convention: Option<Convention>) -> TensorSide {
    TensorSide {
        name: t.name.clone(),
        dtype: t.dtype.name(),
        shape: t.shape.clone(),
        convention,
    }
}

/// Compares one planned pair and judges the verdict against the expectations.
fn compare_planned(
    a: &Checkpoint,
    b: &Checkpoint,
    p: &PlannedPair<'_>,
    opts: &DiffOptions,
) -> PairResult {
    let mut notes: Vec<String> = p.note.iter().cloned().collect();
    let outcome = compare_views(
        &a.view(p.a),
        &b.view(p.b),
        &p.rope,
        p.transposed_by_conventions,
        opts.full,
        &mut notes,
    );
    let (verdict, error) = match outcome {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let unexplained_because = match &verdict {
        Some(v) => judge(v, p, &opts.expect),
        None => Some("could not be compared".to_string()),
    };
    PairResult {
        canonical: p.canonical.clone(),
        a: side(p.a, p.conv_a),
        b: side(p.b, p.conv_b),
        transposed_by_conventions: p.transposed_by_conventions,
        verdict,
        error,
        notes,
        explained: unexplained_because.is_none(),
        unexplained_because,
    }
}

/// `None` when `v` is explained; otherwise the reason it is not.
fn judge(v: &Verdict, p: &PlannedPair<'_>, expect: &[Conversion]) -> Option<String> {
    let has = |c| expect.contains(&c);
    // A transpose is explained by --expect-conversion transpose, or by a direction flag that
    // matches the names' conventions when the catalogue says those conventions differ by it.
    let direction_matches =
        |from, to| p.transposed_by_conventions && p.conv_a == Some(from) && p.conv_b == Some(to);
    let by_conventions = (has(Conversion::HfToFlax)
        && direction_matches(Convention::Hf, Convention::Flax))
        || (has(Conversion::FlaxToHf) && direction_matches(Convention::Flax, Convention::Hf));
    let transpose_ok = has(Conversion::Transpose) || by_conventions;
    let conventions_hint = || {
        let (ca, cb) = (
            p.conv_a.map_or("?", Convention::name),
            p.conv_b.map_or("?", Convention::name),
        );
        format!("the names are {ca} → {cb}, which the catalogue stores transposed; pass --expect-conversion {ca}-to-{cb}")
    };
    // A cast explains rounding only where one happened: the same dtype on both sides means
    // the values were changed by something else.
    let cast_happened = p.a.dtype != p.b.dtype;
    let rounding_ok =
        |r: &Option<&'static str>| r.is_none() || (has(Conversion::Cast) && cast_happened);
    let rounding_msg = |d: &str| {
        if cast_happened {
            format!("equal only within {d} rounding; pass --expect-conversion cast if a dtype cast is expected")
        } else {
            format!("equal only within {d} rounding, but both sides are {}: no cast happened, so a cast cannot explain it", p.a.dtype)
        }
    };
    match v {
        // Equal to its own transpose: identical and transposed at once, so the transpose the
        // conventions call for may well have happened. Judged as that transpose.
        Verdict::Identical {
            symmetric: true, ..
        } if p.transposed_by_conventions => (!transpose_ok).then(conventions_hint),
        Verdict::Identical { .. } if p.transposed_by_conventions => Some(format!(
            "identical, but {} {} and {} {} should be each other's transpose: the conversion forgot to transpose",
            p.conv_a.map_or("?", Convention::name),
            p.a.name,
            p.conv_b.map_or("?", Convention::name),
            p.b.name
        )),
        Verdict::Identical { .. } => None,
        Verdict::Transposed {
            within_rounding, ..
        } => {
            if !transpose_ok {
                Some(if p.transposed_by_conventions {
                    conventions_hint()
                } else {
                    "transposed, and no expected conversion or naming convention explains it".to_string()
                })
            } else if !rounding_ok(within_rounding) {
                Some(rounding_msg(within_rounding.unwrap_or("?")))
            } else {
                None
            }
        }
        Verdict::RopePermuted {
            transposed,
            within_rounding,
            ..
        } => {
            if !has(Conversion::RopePermute) {
                Some("RoPE-permuted; pass --expect-conversion rope-permute if that is intended".to_string())
            } else if *transposed != p.transposed_by_conventions && !has(Conversion::Transpose) {
                Some("RoPE-permuted, but its orientation does not match the names' conventions".to_string())
            } else if *transposed && !transpose_ok {
                Some(conventions_hint())
            } else if !rounding_ok(within_rounding) {
                Some(rounding_msg(within_rounding.unwrap_or("?")))
            } else {
                None
            }
        }
        Verdict::Rounded {
            dtype, symmetric, ..
        } => {
            if p.transposed_by_conventions && !symmetric {
                Some(format!("equal within {dtype} rounding but not transposed, while the names' conventions store it transposed"))
            } else if p.transposed_by_conventions && !transpose_ok {
                Some(conventions_hint())
            } else if rounding_ok(&Some(dtype)) {
                None
            } else {
                Some(rounding_msg(dtype))
            }
        }
        Verdict::Scaled { .. } => Some("scaled: no conversion explains a constant factor".to_string()),
        Verdict::Offset { .. } => Some("offset: no conversion explains a constant shift".to_string()),
        Verdict::Different { .. } => Some("values differ".to_string()),
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

/// What a candidate yields when it holds.
#[derive(Debug, Clone, Copy)]
enum Yields {
    Identical,
    Transposed,
    Rope(RopePerm, HeadKind),
    Rounded,
}

/// Compares two tensors and names the first relation that holds, in the documented order.
/// Notes (e.g. a RoPE check that could not run) are appended to `notes`.
pub(crate) fn compare_views(
    va: &crate::view::TensorView<'_>,
    vb: &crate::view::TensorView<'_>,
    rope: &RopeCheck,
    transposed_by_conventions: bool,
    full: bool,
    notes: &mut Vec<String>,
) -> Result<Verdict, PairError> {
    let (ta, tb) = (va.info, vb.info);
    let (sa, sb) = (&ta.shape, &tb.shape);
    let id_ok = sa == sb;
    let t_ok = sa.len() == 2 && sb.len() == 2 && sa[0] == sb[1] && sa[1] == sb[0];

    // A square A equal to its own transpose makes "identical" and "transposed" the same
    // relation; the transpose candidates below are then left out, and the verdict says so.
    let symmetric = id_ok && t_ok && numeric::symmetric(va);

    // Same dtype and shape: bytes decide `identical` for any dtype.
    if ta.dtype == tb.dtype && id_ok && va.bytes == vb.bytes {
        return Ok(Verdict::Identical {
            lossless_cast: None,
            symmetric,
        });
    }
    let (sa_src, sb_src) = (Src::new(va), Src::new(vb));
    let (Some(a_src), Some(b_src)) = (sa_src, sb_src) else {
        let int_vs_float = |x: Dtype, y: Dtype| !x.is_float() && y.is_float();
        if int_vs_float(ta.dtype, tb.dtype) || int_vs_float(tb.dtype, ta.dtype) {
            return Err(PairError::IntVsFloat {
                a: ta.name.clone(),
                a_dtype: ta.dtype,
                b: tb.name.clone(),
                b_dtype: tb.dtype,
            });
        }
        if ta.dtype == tb.dtype && id_ok {
            // Readable only as bytes: count differing elements.
            let size = va.bytes.len().checked_div(ta.numel()).unwrap_or(1).max(1);
            let mut differing = 0u64;
            let mut first = None;
            for (k, (x, y)) in va.bytes.chunks(size).zip(vb.bytes.chunks(size)).enumerate() {
                if x != y {
                    differing += 1;
                    first.get_or_insert(k);
                }
            }
            return Ok(Verdict::Different {
                max_abs_diff: f64::NAN,
                max_rel_diff: f64::NAN,
                cosine: None,
                differing,
                numel: ta.numel(),
                first_difference: first.map(|f| unravel(f, sb)),
                against_transpose: false,
                bytes_only: true,
            });
        }
        return Err(PairError::Unreadable {
            a: ta.name.clone(),
            a_dtype: ta.dtype,
            b: tb.name.clone(),
            b_dtype: tb.dtype,
        });
    };
    if !id_ok && !t_ok {
        return Err(PairError::UnrelatedShapes {
            a: ta.name.clone(),
            a_shape: sa.clone(),
            b: tb.name.clone(),
            b_shape: sb.clone(),
        });
    }
    let pair = Pair {
        a: a_src,
        ga: Geom::of(sa),
        b: b_src,
        gb: Geom::of(sb),
    };
    let narrow = narrower(ta.dtype, tb.dtype);

    // Candidate layouts, in verdict order.
    let mut bases = Vec::new();
    if id_ok {
        bases.push(Layout::IDENTITY);
    }
    if t_ok {
        bases.push(Layout::TRANSPOSE);
    }
    let mut ropes: Vec<(Layout, HeadKind)> = Vec::new();
    let mut head_dim = None;
    match rope {
        RopeCheck::NotApplicable => {}
        RopeCheck::MissingConfig { kind } => notes.push(format!(
            "rope-permuted not checked: it needs the {} head count, and neither side has a usable config.json",
            kind.describe()
        )),
        RopeCheck::Heads {
            heads,
            head_dim: d,
            kind,
            axis,
        } => {
            head_dim = Some(*d);
            let len = if *axis == 0 { pair.ga.rows } else { pair.ga.cols };
            let fits = heads.checked_mul(*d) == Some(len) && *d % 2 == 0 && *d >= 4;
            if fits {
                for base in &bases {
                    for direction in [RopeDirection::ToInterleaved, RopeDirection::ToRotateHalf] {
                        let perm = RopePerm {
                            axis: *axis,
                            heads: *heads,
                            head_dim: *d,
                            direction,
                        };
                        ropes.push((
                            Layout {
                                transpose: base.transpose,
                                perm: Some(perm),
                            },
                            *kind,
                        ));
                    }
                }
            } else {
                notes.push(format!(
                    "rope-permuted not checked: the output axis has {len} entries, not {heads} heads × head_dim {d} (even, ≥ 4)"
                ));
            }
        }
    }

    let mut cands: Vec<(Layout, Relation, Yields)> = Vec::new();
    let exact_rounded = |l: Layout, y: Yields, c: &mut Vec<(Layout, Relation, Yields)>| {
        c.push((l, Relation::Exact, y));
        c.push((l, Relation::Rounded(narrow), y));
    };
    // Same dtype, different bytes: not identical (the byte test above decided).
    if id_ok && ta.dtype != tb.dtype {
        cands.push((Layout::IDENTITY, Relation::Exact, Yields::Identical));
    }
    if t_ok && !symmetric {
        exact_rounded(Layout::TRANSPOSE, Yields::Transposed, &mut cands);
    }
    for &(l, kind) in &ropes {
        if let Some(perm) = l.perm {
            exact_rounded(l, Yields::Rope(perm, kind), &mut cands);
        }
    }
    if id_ok {
        cands.push((Layout::IDENTITY, Relation::Rounded(narrow), Yields::Rounded));
    }

    let sample = Sample::new(&b_src, pair.gb);
    // A's sampled values per layout, gathered once (exact and rounded share them).
    let mut gathered: Vec<(Layout, Vec<f32>)> = Vec::new();
    let mut a_sampled = |l: &Layout| -> Vec<f32> {
        if let Some((_, v)) = gathered.iter().find(|(k, _)| k == l) {
            return v.clone();
        }
        let v = sample.a_values(&a_src, pair.ga, l);
        gathered.push((*l, v.clone()));
        v
    };
    let b_s = sample.b_values();

    for (l, rel, y) in &cands {
        if !full && !rel.holds(&a_sampled(l), b_s) {
            continue;
        }
        let within = match rel {
            Relation::Rounded(d) => Some(d.name()),
            _ => None,
        };
        let verdict = match *y {
            Yields::Rounded => confirm_measuring(&pair, l, *rel).map(|max| Verdict::Rounded {
                dtype: narrow.name(),
                max_abs_diff: max,
                symmetric,
            }),
            Yields::Identical => pair.confirm(l, *rel).then(|| Verdict::Identical {
                lossless_cast: Some(format!("{} → {}", ta.dtype, tb.dtype)),
                symmetric,
            }),
            Yields::Transposed => pair.confirm(l, *rel).then_some(Verdict::Transposed {
                within_rounding: within,
                expected_by_conventions: transposed_by_conventions,
            }),
            Yields::Rope(perm, kind) => pair.confirm(l, *rel).then_some(Verdict::RopePermuted {
                direction: perm.direction,
                heads: perm.heads,
                head_kind: kind,
                transposed: l.transpose,
                within_rounding: within,
            }),
        };
        if let Some(v) = verdict {
            return Ok(v);
        }
    }

    // Scaled, then offset: constants estimated from the sample, confirmed on the whole tensor.
    let mut affine: Vec<Layout> = bases.clone();
    affine.extend(ropes.iter().map(|(l, _)| *l));
    for l in &affine {
        let a_s = a_sampled(l);
        let ratios: Vec<f32> = a_s
            .iter()
            .zip(b_s)
            .filter(|(x, _)| x.abs() > f32::MIN_POSITIVE)
            .map(|(x, y)| y / x)
            .collect();
        if let Some(c) = numeric::median(ratios) {
            let rel = Relation::Scaled(c, narrow);
            if c != 1.0 && c != 0.0 && (full || rel.holds(&a_s, b_s)) && pair.confirm(l, rel) {
                if l.perm.is_some() {
                    notes.push("scaled after a RoPE permutation".to_string());
                }
                return Ok(Verdict::Scaled {
                    factor: f64::from(c),
                    hint: scale_hint(f64::from(c), head_dim),
                    transposed: l.transpose,
                });
            }
        }
    }
    for l in &bases {
        let a_s = a_sampled(l);
        let deltas: Vec<f32> = a_s.iter().zip(b_s).map(|(x, y)| y - x).collect();
        if let Some(c) = numeric::median(deltas) {
            let rel = Relation::Offset(c, narrow);
            if c != 0.0 && (full || rel.holds(&a_s, b_s)) && pair.confirm(l, rel) {
                return Ok(Verdict::Offset {
                    offset: f64::from(c),
                    transposed: l.transpose,
                });
            }
        }
    }

    // Different: statistics against the layout the shapes and conventions imply.
    let against_transpose = t_ok && (!id_ok || transposed_by_conventions);
    let l = if against_transpose {
        Layout::TRANSPOSE
    } else {
        Layout::IDENTITY
    };
    let s = pair.stats(&l);
    Ok(Verdict::Different {
        max_abs_diff: s.max_abs_diff,
        max_rel_diff: s.max_rel_diff,
        cosine: s.cosine(),
        differing: s.differing,
        numel: tb.numel(),
        first_difference: s.first_difference.map(|f| unravel(f, sb)),
        against_transpose,
        bytes_only: false,
    })
}

/// Confirms `rel` over the whole tensor and returns max |a − b| when it holds.
fn confirm_measuring(pair: &Pair<'_>, l: &Layout, rel: Relation) -> Option<f64> {
    let mut max = 0f32;
    let held = pair.stream(l, &mut |a, b, _| {
        if !rel.holds(a, b) {
            return false;
        }
        for (x, y) in a.iter().zip(b) {
            max = max.max((x - y).abs());
        }
        true
    });
    held.then_some(f64::from(max))
}

#[cfg(test)]
mod tests;
