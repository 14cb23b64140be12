//! Whether a verdict is explained: by the expected conversions (`--expect-conversion`), and by
//! the conventions the two sides are read in.

use crate::checkpoint::TensorInfo;
use crate::diff::relation::{self, Move};
use crate::diff::report::{Conversion, Verdict};
use crate::layout::transform::Transform;

/// What judging a pair needs to know besides its verdict.
#[derive(Debug, Clone)]
pub(crate) struct Facts<'a> {
    /// A's stored tensor.
    pub a: &'a TensorInfo,
    /// B's stored tensor.
    pub b: &'a TensorInfo,
    /// The convention A's tensor was read in (even when its name is spelled alike in others).
    pub conv_a: Option<&'a str>,
    /// B's.
    pub conv_b: Option<&'a str>,
    /// The relation the two conventions imply between the stored tensors.
    pub conventions: &'a [Move],
    /// The values follow exactly that relation.
    pub matches_conventions: bool,
}

impl Facts<'_> {
    fn transposed_by_conventions(&self) -> bool {
        relation::transposes(self.conventions)
    }

    /// An expected conversion names exactly these two conventions.
    fn by_conventions(&self, expect: &[Conversion]) -> bool {
        let (Some(a), Some(b)) = (self.conv_a, self.conv_b) else {
            return false;
        };
        !self.conventions.is_empty() && expect.iter().any(|c| c.between() == Some((a, b)))
    }

    /// The conventions' relation in words, for messages.
    fn conventions_words(&self) -> String {
        if self.conventions.len() == 1 && self.conventions[0].transform == Transform::Transpose {
            "stores transposed".to_string()
        } else {
            format!("relates by `{}`", relation::describe(self.conventions))
        }
    }

    fn hint(&self) -> String {
        let (ca, cb) = (self.conv_a.unwrap_or("?"), self.conv_b.unwrap_or("?"));
        format!(
            "the names are {ca} → {cb}, which the catalogue {}; pass --expect-conversion {ca}-to-{cb}",
            self.conventions_words()
        )
    }
}

/// `None` when `v` is explained; otherwise the reason it is not.
pub(crate) fn judge(v: &Verdict, p: &Facts<'_>, expect: &[Conversion]) -> Option<String> {
    let has = |c: Conversion| expect.contains(&c);
    let by_conventions = p.by_conventions(expect);
    let transposed_by_conventions = p.transposed_by_conventions();
    // A transpose is explained by --expect-conversion transpose, or by a direction that
    // matches the names' conventions when those conventions differ by it.
    let transpose_ok = has(Conversion::Transpose) || by_conventions;
    // A cast explains rounding only where one happened: the same dtype on both sides means
    // the values were changed by something else.
    let cast_happened = p.a.dtype != p.b.dtype;
    let rounding_ok =
        |r: Option<&'static str>| r.is_none() || (has(Conversion::Cast) && cast_happened);
    let rounding_msg = |d: &str| {
        if cast_happened {
            format!("equal only within {d} rounding; pass --expect-conversion cast if a dtype cast is expected")
        } else {
            format!("equal only within {d} rounding, but both sides are {}: no cast happened, so a cast cannot explain it", p.a.dtype)
        }
    };
    let rounding =
        |r: Option<&'static str>| (!rounding_ok(r)).then(|| rounding_msg(r.unwrap_or("?")));
    // The relation the conventions call for, whatever it is named: explained by the direction.
    let as_conventions = || {
        if by_conventions {
            rounding(v.within_rounding())
        } else {
            Some(p.hint())
        }
    };
    match v {
        // Equal to its own transpose: identical and transposed at once, so the transpose the
        // conventions call for may well have happened. Judged as that transpose.
        Verdict::Identical {
            symmetric: true, ..
        } if transposed_by_conventions => (!transpose_ok).then(|| p.hint()),
        Verdict::Identical { .. } if transposed_by_conventions => Some(format!(
            "identical, but {} {} and {} {} should be each other's transpose: the conversion forgot to transpose",
            p.conv_a.unwrap_or("?"),
            p.a.name,
            p.conv_b.unwrap_or("?"),
            p.b.name
        )),
        Verdict::Identical { .. } if !p.conventions.is_empty() => Some(format!(
            "identical, but {} {} and {} {} should differ by `{}`: the conversion left it out",
            p.conv_a.unwrap_or("?"),
            p.a.name,
            p.conv_b.unwrap_or("?"),
            p.b.name,
            relation::describe(p.conventions)
        )),
        Verdict::Identical { .. } => None,
        Verdict::Transposed {
            within_rounding,
            expected_by_conventions,
        } => {
            let ok = has(Conversion::Transpose) || (*expected_by_conventions && by_conventions);
            if !ok {
                Some(if *expected_by_conventions {
                    p.hint()
                } else {
                    "transposed, and no expected conversion or naming convention explains it"
                        .to_string()
                })
            } else {
                rounding(*within_rounding)
            }
        }
        Verdict::RopePermuted { .. } if p.matches_conventions => as_conventions(),
        // The conventions permute this tensor themselves: a side is not in the RoPE order its
        // convention says (a port that forgot, or applied twice, its permutation).
        Verdict::RopePermuted { .. }
            if relation::first_of(p.conventions, "rope-permute").is_some()
                && !has(Conversion::RopePermute) =>
        {
            Some(format!(
                "RoPE-permuted against what the conventions imply (`{}`): a side is not stored in the RoPE order its convention says",
                relation::describe(p.conventions)
            ))
        }
        Verdict::RopePermuted {
            transposed,
            within_rounding,
            ..
        } => {
            if !has(Conversion::RopePermute) {
                Some("RoPE-permuted; pass --expect-conversion rope-permute if that is intended".to_string())
            } else if *transposed != transposed_by_conventions && !has(Conversion::Transpose) {
                Some("RoPE-permuted, but its orientation does not match the names' conventions".to_string())
            } else if *transposed && !transpose_ok {
                Some(p.hint())
            } else {
                rounding(*within_rounding)
            }
        }
        Verdict::Rounded {
            dtype, symmetric, ..
        } => {
            if transposed_by_conventions && !symmetric {
                Some(format!("equal within {dtype} rounding but not transposed, while the names' conventions store it transposed"))
            } else if !p.conventions.is_empty() && !transposed_by_conventions {
                Some(format!(
                    "equal within {dtype} rounding, while the names' conventions relate them by `{}`",
                    relation::describe(p.conventions)
                ))
            } else if transposed_by_conventions && !transpose_ok {
                Some(p.hint())
            } else {
                rounding(Some(dtype))
            }
        }
        Verdict::Scaled { .. } | Verdict::Offset { .. } if p.matches_conventions => as_conventions(),
        Verdict::Scaled { .. } => Some("scaled: no conversion explains a constant factor".to_string()),
        Verdict::Offset { .. } => Some("offset: no conversion explains a constant shift".to_string()),
        Verdict::Transformed(_) if p.matches_conventions => as_conventions(),
        Verdict::Transformed(t) => Some(format!(
            "{}, and no expected conversion or naming convention explains it",
            t.verdict
        )),
        Verdict::Different { .. } => Some("values differ".to_string()),
    }
}
