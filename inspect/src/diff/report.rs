//! What `diff` returns: the verdicts, the per-pair results and the report, as plain data
//! (serde-serializable; rendering lives in the binary), and the conversions a caller may expect.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::dtype::Dtype;
use crate::layout::catalogue::CatalogueError;

/// A conversion the caller says happened between A and B; verdicts it explains do not count as
/// differences.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversion {
    /// A is in the HF layout and B in the Flax layout (the same as `Between { hf, flax }`).
    HfToFlax,
    /// The mirror of [`Conversion::HfToFlax`].
    FlaxToHf,
    /// Any 2-D pair may be transposed (e.g. checking a loader that transposes on purpose).
    Transpose,
    /// q/k projections (and their biases) may be RoPE-permuted, in either direction.
    RopePermute,
    /// Dtypes may differ: pairs equal within the rounding of the narrower dtype are explained
    /// (alone or combined with an explained transform).
    Cast,
    /// A is stored in convention `from` and B in convention `to` (built-in or a user layout):
    /// a pair related exactly as the two conventions' transform chains say is explained.
    Between {
        /// A's convention.
        from: String,
        /// B's convention.
        to: String,
    },
}

/// Why a conversion's text is not one [`Conversion::parse`] knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not a conversion: expected transpose, rope-permute, cast or FROM-to-TO between two of the conventions {known}")]
pub struct ConversionError {
    /// The text as given.
    pub given: String,
    /// The convention names it was checked against, comma-separated.
    pub known: String,
}

impl Conversion {
    /// The conventions a direction names (`hf-to-flax` → `("hf", "flax")`), `None` for the
    /// others.
    pub fn between(&self) -> Option<(&str, &str)> {
        match self {
            Conversion::HfToFlax => Some(("hf", "flax")),
            Conversion::FlaxToHf => Some(("flax", "hf")),
            Conversion::Between { from, to } => Some((from, to)),
            _ => None,
        }
    }

    /// Parses `transpose`, `rope-permute`, `cast` or `FROM-to-TO`, where FROM and TO are names
    /// in `conventions` (names may contain `-`, so every `-to-` is tried).
    pub fn parse(text: &str, conventions: &[&str]) -> Result<Conversion, ConversionError> {
        match text {
            "transpose" => return Ok(Conversion::Transpose),
            "rope-permute" => return Ok(Conversion::RopePermute),
            "cast" => return Ok(Conversion::Cast),
            "hf-to-flax" => return Ok(Conversion::HfToFlax),
            "flax-to-hf" => return Ok(Conversion::FlaxToHf),
            _ => {}
        }
        let split = text.match_indices("-to-").find_map(|(at, sep)| {
            let (from, to) = (&text[..at], &text[at + sep.len()..]);
            (conventions.contains(&from) && conventions.contains(&to)).then_some((from, to))
        });
        match split {
            Some((from, to)) => Ok(Conversion::Between {
                from: from.to_string(),
                to: to.to_string(),
            }),
            None => Err(ConversionError {
                given: text.to_string(),
                known: conventions.join(", "),
            }),
        }
    }

    /// The conversion between two conventions, as the built-in variant when there is one.
    pub fn between_conventions(from: &str, to: &str) -> Conversion {
        match (from, to) {
            ("hf", "flax") => Conversion::HfToFlax,
            ("flax", "hf") => Conversion::FlaxToHf,
            _ => Conversion::Between {
                from: from.to_string(),
                to: to.to_string(),
            },
        }
    }
}

impl fmt::Display for Conversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conversion::Transpose => f.write_str("transpose"),
            Conversion::RopePermute => f.write_str("rope-permute"),
            Conversion::Cast => f.write_str("cast"),
            other => match other.between() {
                Some((from, to)) => write!(f, "{from}-to-{to}"),
                None => Ok(()),
            },
        }
    }
}

impl Serialize for Conversion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which head count a RoPE permutation of a tensor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadKind {
    /// q_proj: `num_attention_heads` (nH).
    Query,
    /// k_proj: `num_key_value_heads` (nKV).
    KeyValue,
}

impl HeadKind {
    /// Words for messages.
    pub fn describe(self) -> &'static str {
        match self {
            HeadKind::Query => "query (num_attention_heads)",
            HeadKind::KeyValue => "key/value (num_key_value_heads)",
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

/// One side of a pair: the stored tensor that holds it, and its convention.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSide {
    /// Tensor name in its file.
    pub name: String,
    /// Dtype, header spelling.
    pub dtype: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Convention the name belongs to, when the catalogue recognised it (and it is not spelled
    /// the same in several conventions).
    pub convention: Option<String>,
    /// When the stored tensor holds several canonical tensors (a fused `gate_up`, stacked
    /// experts): which one this pair compares, e.g. `part 1 of 2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

/// The relation found between a pair.
///
/// The relation the two sides' conventions imply is tried first; when the values do not follow
/// it, the hypotheses of the transform algebra (transpose, RoPE permutation, reversed dims,
/// scale, offset) are tried on the canonical tensors, and the verdict is named by the first one
/// that holds. Its flags (`transposed`, …) describe the relation between the two *stored*
/// tensors.
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
        /// The two conventions store this tensor exactly so (HF weight ↔ Flax kernel), so it is
        /// the expected relation.
        expected_by_conventions: bool,
    },
    /// Rows permuted per head between rotate-half and interleaved RoPE layouts.
    RopePermuted {
        /// Which way A → B goes.
        direction: RopeDirection,
        /// Heads used (nH for q, nKV for k).
        heads: usize,
        /// Whether that is the query or the key/value head count.
        head_kind: HeadKind,
        /// The stored tensors are also transposed (e.g. an HF weight against a Flax kernel).
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
        /// Index (in B's stored shape) of the first differing element.
        first_difference: Option<Vec<usize>>,
        /// The statistics were taken against Aᵀ (the layout the shapes or conventions imply).
        against_transpose: bool,
        /// Values were not compared (integer/unsupported dtype): only bytes differ.
        bytes_only: bool,
    },
    /// Any other transform of the algebra (fused, split, stacked, unstacked, dims-reversed,
    /// permuted): named by the transform, its chain in [`PairResult::relation`].
    #[serde(untagged)]
    Transformed(Transformed),
}

/// A verdict named by a transform kind that has no variant of its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transformed {
    /// The verdict's name (`fused`, `split`, `stacked`, `unstacked`, `dims-reversed`,
    /// `permuted`).
    pub verdict: &'static str,
    /// Which part (or expert) of how many the pair's tensor is in the other side's tensor.
    pub part: Option<(usize, usize)>,
    /// The stored tensors are also transposed.
    pub transposed: bool,
    /// Narrower dtype when equal only within its rounding.
    pub within_rounding: Option<&'static str>,
    /// The two conventions store the tensor exactly so.
    pub expected_by_conventions: bool,
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
            Verdict::Transformed(t) => t.verdict,
            Verdict::Different { .. } => "different",
        }
    }

    /// The narrower dtype when the verdict holds only within its rounding.
    pub fn within_rounding(&self) -> Option<&'static str> {
        match self {
            Verdict::Transposed {
                within_rounding, ..
            }
            | Verdict::RopePermuted {
                within_rounding, ..
            } => *within_rounding,
            Verdict::Transformed(t) => t.within_rounding,
            Verdict::Rounded { dtype, .. } => Some(dtype),
            _ => None,
        }
    }
}

/// Every verdict name, in the order the summary counts them.
pub const VERDICT_ORDER: &[&str] = &[
    "identical",
    "transposed",
    "rope-permuted",
    "fused",
    "split",
    "stacked",
    "unstacked",
    "dims-reversed",
    "permuted",
    "rounded",
    "scaled",
    "offset",
    "different",
];

/// Why a pair could not be compared. The diff goes on with the other pairs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// Shapes that are neither equal nor each other's transpose (through the conventions).
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
    /// A stored tensor's shape is neither the one its convention expects nor its transpose.
    #[error("{side}: `{tensor}` has shape {found:?}, but convention `{convention}` stores `{canonical}` as {expected:?}")]
    StoredShape {
        /// `A` or `B`.
        side: &'static str,
        /// The stored tensor.
        tensor: String,
        /// Its shape.
        found: Box<[usize]>,
        /// The shape the convention gives it.
        expected: Box<[usize]>,
        /// The convention.
        convention: String,
        /// The canonical tensor.
        canonical: String,
    },
    /// A side's stored tensors do not make the canonical tensor its convention describes.
    #[error("{side}: `{canonical}` cannot be read through convention `{convention}`")]
    Layout {
        /// `A` or `B`.
        side: &'static str,
        /// The canonical tensor.
        canonical: String,
        /// The convention.
        convention: String,
        /// What went wrong.
        #[source]
        source: Box<crate::layout::resolve::BindError>,
    },
    /// Reading a tensor through its view failed (a view that does not fit the data).
    #[error("{side}: cannot read `{tensor}`")]
    Read {
        /// `A` or `B`.
        side: &'static str,
        /// The stored tensor.
        tensor: String,
        /// What went wrong.
        #[source]
        source: crate::layout::gather::GatherError,
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
    /// The conventions A's and B's tensors were read in (whether or not their names are
    /// spelled alike in others), when the catalogue placed both.
    pub conventions: Option<[String; 2]>,
    /// The two sides' conventions store this tensor transposed relative to each other (HF
    /// weight vs Flax kernel).
    pub transposed_by_conventions: bool,
    /// The transforms from A's stored tensor to B's that the two conventions imply, e.g.
    /// `rope-permute(heads=4, to=interleaved, rotary=16) → transpose`; `identity` when none.
    pub conventions_relation: String,
    /// The transforms from A's stored tensor to B's that the values show (same notation);
    /// `None` when no relation holds or the pair could not be compared.
    pub relation: Option<String>,
    /// The values follow exactly the relation the conventions imply.
    pub matches_conventions: bool,
    /// The relation found; `None` when the pair could not be compared.
    #[serde(flatten)]
    pub verdict: Option<Verdict>,
    /// Why the pair could not be compared (with its causes).
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
    /// The canonical tensor it holds, when it is one part of a tensor that also holds paired
    /// ones (the `up` half of a fused `gate_up` whose `gate` half has a partner).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// The catalogue allows it to be absent on the other side (e.g. `lm_head` under tied
    /// embeddings): why.
    pub optional: Option<String>,
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
    /// The convention its tensors were read in (detected among the built-ins and the user
    /// layouts), when there is a catalogue.
    pub convention: Option<String>,
    /// The layout file of that convention, when it is a user layout.
    pub layout_file: Option<String>,
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
    /// Conversions the verdicts were judged against (those implied by a user layout included).
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
    /// How the comparison was judged (a conversion implied by a user layout).
    pub notes: Vec<String>,
    /// Counts.
    pub summary: Summary,
    /// Every pair identical or explained, and no unexpected one-sided name.
    pub ok: bool,
}

/// Why two checkpoints cannot be compared at all.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The user layouts do not fit a side's model.
    #[error("{side} ({root}): the layout catalogue cannot be built for its config")]
    Catalogue {
        /// `A` or `B`.
        side: &'static str,
        /// The side's model folder.
        root: String,
        /// What did not fit.
        #[source]
        source: Box<CatalogueError>,
    },
}
