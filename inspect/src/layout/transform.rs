//! The transform algebra: how a stored tensor is made from canonical ones, as data.
//!
//! A convention describes each stored tensor as a chain of transforms applied to canonical
//! tensors (canonical → stored). Every transform has an exact inverse, so the same chain read
//! backwards turns stored tensors into canonical ones. Index transforms (transpose, permute,
//! reversed dims, the RoPE row permutation, fuse/split, stack/unstack) only move elements and are
//! bit-exact both ways on any data; value transforms (add, scale) round like the arithmetic they
//! stand for, and are exact where that arithmetic is (`(1 + w) − 1 = w` for the norm weights
//! Gemma stores as `1 + w`); a cast is always the last step.
//!
//! Transforms act on a *group*: members (the experts of a stacked family, or a single member)
//! each holding parts (q, k, v of a fused projection, or a single part). Single-tensor transforms
//! map every part; `fuse` joins each member's parts, `split` divides its one part; `stack` joins
//! the members, `unstack` divides the one member.
//!
//! Specs ([`TransformSpec`]) are written with symbolic sizes (`heads = "nKV"`) and resolved
//! against a config and the input shapes into concrete [`Step`]s, which carry the shapes they
//! see so that the inverse chain knows every size.

use std::fmt;

use crate::config::ModelConfig;
use crate::dtype::Dtype;
use crate::layout::expr::{Expr, ExprError};
use crate::layout::view::{ValueOp, View, ViewError};

/// The order of the rotary dimensions inside each head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RopeOrder {
    /// HF rotate-half: the first half of the rotary dims, then the second (`x₀…x_{R/2−1},
    /// y₀…y_{R/2−1}`). What transformers' PyTorch classes load.
    Half,
    /// Interleaved pairs (`x₀, y₀, x₁, y₁, …`): Meta's original checkpoints, GGUF for the
    /// llama architectures, many JAX ports.
    Interleaved,
}

impl RopeOrder {
    /// Name as written in layout files.
    pub fn name(self) -> &'static str {
        match self {
            RopeOrder::Half => "half",
            RopeOrder::Interleaved => "interleaved",
        }
    }
}

/// How the parts of a fused tensor are arranged along its axis (a label: the index map is
/// `outer` repetitions of one chunk of each part).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arrangement {
    /// Parts one after another (Phi-3 `qkv_proj`, `gate_up_proj`): `outer = 1`.
    Concat,
    /// Per head: q, k, v of head 0, then of head 1… (GPT-NeoX `query_key_value`): `outer = nH`.
    PerHead,
    /// Per KV group: the group's query heads, then its k, then its v (Falcon): `outer = nKV`.
    Grouped,
}

impl Arrangement {
    /// Name as written in layout files.
    pub fn name(self) -> &'static str {
        match self {
            Arrangement::Concat => "concat",
            Arrangement::PerHead => "per-head",
            Arrangement::Grouped => "grouped",
        }
    }
}

/// A transform as a layout file writes it: sizes still symbolic.
#[derive(Debug, Clone, PartialEq)]
pub enum TransformSpec {
    /// Swap the last two axes (2-D transpose; per expert on a 3-D stack).
    Transpose,
    /// Reorder axes: axis `k` of the result is axis `perm[k]`.
    Permute(Vec<usize>),
    /// List the dims in reverse order (GGUF's `ne`), data in place.
    ReverseDims,
    /// Permute rows per head between rotate-half and interleaved order.
    RopePermute {
        /// Number of heads along the axis (`nH` for q, `nKV` for k).
        heads: Expr,
        /// Rotary dims per head (`R`); the rest of each head passes through. Default: the whole
        /// head.
        rotary: Option<Expr>,
        /// The axis holding heads × head_dim (0 for an HF `[out, in]` weight or a bias).
        axis: usize,
        /// The order of the result.
        to: RopeOrder,
    },
    /// Join each member's parts along `axis`.
    Fuse {
        /// Axis.
        axis: usize,
        /// The arrangement.
        arrangement: Arrangement,
        /// Repetitions (`nH` per head, `nKV` grouped; 1 for concat).
        outer: Expr,
    },
    /// Divide each member's one part along `axis` into parts of the given total sizes.
    Split {
        /// Axis.
        axis: usize,
        /// The arrangement.
        arrangement: Arrangement,
        /// Repetitions.
        outer: Expr,
        /// Total size of each part along `axis`.
        sizes: Vec<Expr>,
    },
    /// Stack the members along a new axis.
    Stack {
        /// Position of the new axis.
        axis: usize,
    },
    /// Divide the one member along `axis` (which disappears) into members.
    Unstack {
        /// Axis.
        axis: usize,
    },
    /// Add a constant to every value.
    Add(f32),
    /// Multiply every value by a constant.
    Scale(f32),
    /// Store the values in this dtype (always last).
    Cast(Dtype),
}

/// A group of tensors: members, each a list of parts.
pub type Group<T> = Vec<Vec<T>>;

/// Why a chain cannot be resolved or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// A size expression failed.
    #[error(transparent)]
    Expr(#[from] ExprError),
    /// The transform does not fit its input.
    #[error("`{transform}` cannot apply to {shapes}: {problem}")]
    Shape {
        /// The transform, as written.
        transform: String,
        /// The input shapes.
        shapes: String,
        /// What does not fit.
        problem: String,
    },
    /// The index algebra cannot express the composition.
    #[error("`{transform}`")]
    View {
        /// The transform.
        transform: String,
        /// What the view algebra said.
        #[source]
        source: ViewError,
    },
}

/// One resolved transform, with everything it needs concretely.
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Swap the last two axes.
    Transpose,
    /// Reorder axes.
    Permute(Vec<usize>),
    /// Reverse the axes.
    ReverseDims,
    /// Per-head rotary row order.
    RopePermute {
        /// Axis.
        axis: usize,
        /// Heads along the axis.
        heads: usize,
        /// Rotary dims per head (even).
        rotary: usize,
        /// Result order.
        to: RopeOrder,
    },
    /// Join parts.
    Fuse {
        /// Axis.
        axis: usize,
        /// Label.
        arrangement: Arrangement,
        /// Repetitions.
        outer: usize,
    },
    /// Divide one part.
    Split {
        /// Axis.
        axis: usize,
        /// Label.
        arrangement: Arrangement,
        /// Repetitions.
        outer: usize,
        /// Total size of each part.
        sizes: Vec<usize>,
    },
    /// Join members on a new axis.
    Stack {
        /// Axis.
        axis: usize,
    },
    /// Divide the member along an axis.
    Unstack {
        /// Axis.
        axis: usize,
    },
    /// Add a constant.
    Add(f32),
    /// Scale by a constant.
    Scale(f32),
    /// Store as this dtype.
    Cast(Dtype),
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transform::Transpose => f.write_str("transpose"),
            Transform::Permute(p) => write!(f, "permute{p:?}"),
            Transform::ReverseDims => f.write_str("reverse-dims"),
            Transform::RopePermute {
                axis,
                heads,
                rotary,
                to,
            } => {
                write!(f, "rope-permute(heads={heads}, to={}", to.name())?;
                if *axis != 0 {
                    write!(f, ", axis={axis}")?;
                }
                write!(f, ", rotary={rotary})")
            }
            Transform::Fuse {
                axis,
                arrangement,
                outer,
            } => write!(
                f,
                "fuse({}, axis={axis}, outer={outer})",
                arrangement.name()
            ),
            Transform::Split {
                axis,
                arrangement,
                outer,
                sizes,
            } => write!(
                f,
                "split({}, axis={axis}, outer={outer}, sizes={sizes:?})",
                arrangement.name()
            ),
            Transform::Stack { axis } => write!(f, "stack(axis={axis})"),
            Transform::Unstack { axis } => write!(f, "unstack(axis={axis})"),
            Transform::Add(c) => write!(f, "add({c})"),
            Transform::Scale(c) => write!(f, "scale({c})"),
            Transform::Cast(d) => write!(f, "cast({})", d.name()),
        }
    }
}

impl Transform {
    /// The short name used for provenance and diff verdicts.
    pub fn kind(&self) -> &'static str {
        match self {
            Transform::Transpose => "transpose",
            Transform::Permute(_) => "permute",
            Transform::ReverseDims => "reverse-dims",
            Transform::RopePermute { .. } => "rope-permute",
            Transform::Fuse { .. } => "fuse",
            Transform::Split { .. } => "split",
            Transform::Stack { .. } => "stack",
            Transform::Unstack { .. } => "unstack",
            Transform::Add(_) => "add",
            Transform::Scale(_) => "scale",
            Transform::Cast(_) => "cast",
        }
    }

    /// True for the transforms that only move elements.
    pub fn is_index(&self) -> bool {
        !matches!(
            self,
            Transform::Add(_) | Transform::Scale(_) | Transform::Cast(_)
        )
    }
}

/// A transform applied at one point of a chain: the transform and the group shapes it sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The transform.
    pub transform: Transform,
    /// Input shapes (members × parts).
    pub input: Group<Vec<usize>>,
    /// Output shapes.
    pub output: Group<Vec<usize>>,
}

/// A resolved chain of transforms with the shapes at every step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chain {
    /// Steps in order.
    pub steps: Vec<Step>,
}

fn shapes_text(g: &Group<Vec<usize>>) -> String {
    if g.len() == 1 && g[0].len() == 1 {
        format!("{:?}", g[0][0])
    } else {
        format!("{g:?}")
    }
}

fn shape_err(
    t: &Transform,
    input: &Group<Vec<usize>>,
    problem: impl Into<String>,
) -> TransformError {
    TransformError::Shape {
        transform: t.to_string(),
        shapes: shapes_text(input),
        problem: problem.into(),
    }
}

impl TransformSpec {
    /// Resolves the symbolic sizes for `cfg` (heads, rotary dims, part sizes).
    pub fn resolve(&self, cfg: &ModelConfig) -> Result<Transform, TransformError> {
        Ok(match self {
            TransformSpec::Transpose => Transform::Transpose,
            TransformSpec::Permute(p) => Transform::Permute(p.clone()),
            TransformSpec::ReverseDims => Transform::ReverseDims,
            TransformSpec::RopePermute {
                heads,
                rotary,
                axis,
                to,
            } => Transform::RopePermute {
                axis: *axis,
                heads: heads.eval(cfg)?,
                rotary: match rotary {
                    Some(r) => r.eval(cfg)?,
                    None => 0, // the whole head, filled in when the shape is known
                },
                to: *to,
            },
            TransformSpec::Fuse {
                axis,
                arrangement,
                outer,
            } => Transform::Fuse {
                axis: *axis,
                arrangement: *arrangement,
                outer: outer.eval(cfg)?,
            },
            TransformSpec::Split {
                axis,
                arrangement,
                outer,
                sizes,
            } => Transform::Split {
                axis: *axis,
                arrangement: *arrangement,
                outer: outer.eval(cfg)?,
                sizes: sizes
                    .iter()
                    .map(|e| e.eval(cfg))
                    .collect::<Result<_, _>>()?,
            },
            TransformSpec::Stack { axis } => Transform::Stack { axis: *axis },
            TransformSpec::Unstack { axis } => Transform::Unstack { axis: *axis },
            TransformSpec::Add(c) => Transform::Add(*c),
            TransformSpec::Scale(c) => Transform::Scale(*c),
            TransformSpec::Cast(d) => Transform::Cast(*d),
        })
    }
}

impl Transform {
    /// The output shapes for `input`, checking that the transform fits. A RoPE permutation
    /// with `rotary = 0` (the whole head) gets its width filled in.
    fn fit(&mut self, input: &Group<Vec<usize>>) -> Result<Group<Vec<usize>>, TransformError> {
        type ShapeFn<'a> = &'a dyn Fn(&Vec<usize>) -> Result<Vec<usize>, String>;
        let t = self.clone();
        let each = |f: ShapeFn<'_>| -> Result<Group<Vec<usize>>, TransformError> {
            input
                .iter()
                .map(|m| {
                    m.iter()
                        .map(|s| f(s).map_err(|p| shape_err(&t, input, p)))
                        .collect()
                })
                .collect()
        };
        match self {
            Transform::Transpose => each(&|s| {
                if s.len() < 2 {
                    return Err("needs 2 or more dims".into());
                }
                let mut o = s.clone();
                let n = o.len();
                o.swap(n - 2, n - 1);
                Ok(o)
            }),
            Transform::Permute(p) => each(&|s| {
                let mut seen = vec![false; s.len()];
                if p.len() != s.len()
                    || p.iter()
                        .any(|&a| a >= s.len() || std::mem::replace(&mut seen[a], true))
                {
                    return Err(format!("{p:?} is not a permutation of {} axes", s.len()));
                }
                Ok(p.iter().map(|&a| s[a]).collect())
            }),
            Transform::ReverseDims => each(&|s| Ok(s.iter().rev().copied().collect())),
            Transform::RopePermute {
                axis,
                heads,
                rotary,
                ..
            } => {
                let (axis, heads) = (*axis, *heads);
                let mut width = None;
                for s in input.iter().flatten() {
                    let Some(&n) = s.get(axis) else {
                        return Err(shape_err(&t, input, format!("no axis {axis}")));
                    };
                    if heads == 0 || n % heads != 0 {
                        return Err(shape_err(
                            &t,
                            input,
                            format!("{n} is not a multiple of {heads} heads"),
                        ));
                    }
                    width = Some(n / heads);
                }
                let head_dim = width.unwrap_or(0);
                if *rotary == 0 {
                    *rotary = head_dim;
                }
                if *rotary % 2 != 0 || *rotary > head_dim {
                    return Err(shape_err(
                        &t,
                        input,
                        format!(
                            "rotary width {} must be even and at most the head dim {head_dim}",
                            rotary
                        ),
                    ));
                }
                Ok(input.clone())
            }
            Transform::Fuse { axis, outer, .. } => {
                let (axis, outer) = (*axis, *outer);
                input
                    .iter()
                    .map(|parts| {
                        let Some(first) = parts.first() else {
                            return Err(shape_err(&t, input, "nothing to fuse"));
                        };
                        let mut out = first.clone();
                        if axis >= out.len() || outer == 0 {
                            return Err(shape_err(&t, input, format!("no axis {axis}")));
                        }
                        let mut total = 0usize;
                        for p in parts {
                            let mut a = p.clone();
                            let mut b = first.clone();
                            if a.len() != b.len() {
                                return Err(shape_err(&t, input, "parts differ in rank"));
                            }
                            a[axis] = 0;
                            b[axis] = 0;
                            if a != b || p[axis] % outer != 0 {
                                return Err(shape_err(&t, input, format!("parts must agree off axis {axis} and divide by {outer} along it")));
                            }
                            total += p[axis];
                        }
                        out[axis] = total;
                        Ok(vec![out])
                    })
                    .collect()
            }
            Transform::Split {
                axis, outer, sizes, ..
            } => {
                let (axis, outer) = (*axis, *outer);
                input
                    .iter()
                    .map(|parts| {
                        let [one] = parts.as_slice() else {
                            return Err(shape_err(&t, input, "a split takes one tensor"));
                        };
                        let total: usize = sizes.iter().sum();
                        if one.get(axis) != Some(&total) || outer == 0 || sizes.iter().any(|s| s % outer != 0) {
                            return Err(shape_err(&t, input, format!("axis {axis} must be the sum of {sizes:?}, each a multiple of {outer}")));
                        }
                        Ok(sizes
                            .iter()
                            .map(|&n| {
                                let mut s = one.clone();
                                s[axis] = n;
                                s
                            })
                            .collect())
                    })
                    .collect()
            }
            Transform::Stack { axis } => {
                let axis = *axis;
                let Some(first) = input.first().and_then(|m| m.first()) else {
                    return Err(shape_err(&t, input, "nothing to stack"));
                };
                if input.iter().any(|m| m.len() != 1 || m[0] != *first) || axis > first.len() {
                    return Err(shape_err(
                        &t,
                        input,
                        "members must be single tensors of one shape",
                    ));
                }
                let mut s = first.clone();
                s.insert(axis, input.len());
                Ok(vec![vec![s]])
            }
            Transform::Unstack { axis } => {
                let axis = *axis;
                let [parts] = input.as_slice() else {
                    return Err(shape_err(&t, input, "unstack takes one member"));
                };
                let [one] = parts.as_slice() else {
                    return Err(shape_err(&t, input, "unstack takes one tensor"));
                };
                let Some(&n) = one.get(axis) else {
                    return Err(shape_err(&t, input, format!("no axis {axis}")));
                };
                let mut s = one.clone();
                s.remove(axis);
                Ok(vec![vec![s]; n])
            }
            Transform::Add(_) | Transform::Scale(_) | Transform::Cast(_) => Ok(input.clone()),
        }
    }

    /// The exact inverse, given the shapes this transform saw.
    pub fn inverse(&self, input: &Group<Vec<usize>>) -> Transform {
        match self {
            Transform::Transpose => Transform::Transpose,
            Transform::Permute(p) => {
                let mut inv = vec![0; p.len()];
                for (k, &a) in p.iter().enumerate() {
                    inv[a] = k;
                }
                Transform::Permute(inv)
            }
            Transform::ReverseDims => Transform::ReverseDims,
            Transform::RopePermute {
                axis,
                heads,
                rotary,
                to,
            } => Transform::RopePermute {
                axis: *axis,
                heads: *heads,
                rotary: *rotary,
                to: match to {
                    RopeOrder::Half => RopeOrder::Interleaved,
                    RopeOrder::Interleaved => RopeOrder::Half,
                },
            },
            Transform::Fuse {
                axis,
                arrangement,
                outer,
            } => Transform::Split {
                axis: *axis,
                arrangement: *arrangement,
                outer: *outer,
                sizes: input
                    .first()
                    .map(|parts| parts.iter().map(|s| s[*axis]).collect())
                    .unwrap_or_default(),
            },
            Transform::Split {
                axis,
                arrangement,
                outer,
                ..
            } => Transform::Fuse {
                axis: *axis,
                arrangement: *arrangement,
                outer: *outer,
            },
            Transform::Stack { axis } => Transform::Unstack { axis: *axis },
            Transform::Unstack { axis } => Transform::Stack { axis: *axis },
            Transform::Add(c) => Transform::Add(-c),
            Transform::Scale(c) => Transform::Scale(1.0 / c),
            // The inverse of storing as a dtype is reading it back: the caller knows the dtype.
            Transform::Cast(d) => Transform::Cast(*d),
        }
    }

    /// Applies the transform to a group of views.
    pub fn apply(&self, input: Group<View>) -> Result<Group<View>, TransformError> {
        let wrap = |source: ViewError| TransformError::View {
            transform: self.to_string(),
            source,
        };
        let each =
            |f: &dyn Fn(View) -> Result<View, ViewError>| -> Result<Group<View>, TransformError> {
                input
                    .clone()
                    .into_iter()
                    .map(|m| m.into_iter().map(|v| f(v).map_err(wrap)).collect())
                    .collect()
            };
        match self {
            Transform::Transpose => each(&|v| v.transpose_last()),
            Transform::Permute(p) => each(&|v| v.permute(p)),
            Transform::ReverseDims => each(&|v| v.reverse_axes()),
            Transform::RopePermute {
                axis,
                heads,
                rotary,
                to,
            } => each(&|v| rope_permute(v, *axis, *heads, *rotary, *to)),
            Transform::Fuse { axis, outer, .. } => input
                .into_iter()
                .map(|parts| {
                    let parts = parts
                        .into_iter()
                        .map(|v| {
                            let n = v.shape().get(*axis).copied().unwrap_or(0);
                            (n / outer, v)
                        })
                        .collect();
                    Ok(vec![View::interleave(*axis, *outer, parts).map_err(wrap)?])
                })
                .collect(),
            Transform::Split {
                axis, outer, sizes, ..
            } => input
                .into_iter()
                .map(|parts| {
                    let Some(one) = parts.into_iter().next() else {
                        return Ok(Vec::new());
                    };
                    let total: usize = sizes.iter().sum::<usize>() / outer;
                    let split = one.split_axis(*axis, &[*outer, total]).map_err(wrap)?;
                    let mut start = 0;
                    sizes
                        .iter()
                        .map(|&n| {
                            let chunk = n / outer;
                            let part = split
                                .clone()
                                .slice(axis + 1, start, chunk)
                                .and_then(|p| p.merge_axes(*axis, 2))
                                .map_err(wrap);
                            start += chunk;
                            part
                        })
                        .collect()
                })
                .collect(),
            Transform::Stack { axis } => {
                let members = input.into_iter().flatten().collect();
                Ok(vec![vec![View::stack(*axis, members).map_err(wrap)?]])
            }
            Transform::Unstack { axis } => {
                let Some(one) = input.into_iter().flatten().next() else {
                    return Ok(Vec::new());
                };
                let n = one.shape().get(*axis).copied().unwrap_or(0);
                (0..n)
                    .map(|j| {
                        Ok(vec![one
                            .clone()
                            .slice(*axis, j, 1)
                            .and_then(|v| v.squeeze(*axis))
                            .map_err(wrap)?])
                    })
                    .collect()
            }
            Transform::Add(c) => each(&|v| Ok(v.map_values(ValueOp::Add(*c)))),
            Transform::Scale(c) => each(&|v| Ok(v.map_values(ValueOp::Scale(*c)))),
            Transform::Cast(_) => Ok(input),
        }
    }
}

/// The per-head RoPE row permutation of `v` along `axis`: rotate-half ↔ interleaved over the
/// first `rotary` dims of each head, the rest of each head unchanged.
fn rope_permute(
    v: View,
    axis: usize,
    heads: usize,
    rotary: usize,
    to: RopeOrder,
) -> Result<View, ViewError> {
    let n = v.shape().get(axis).copied().unwrap_or(0);
    if heads == 0 || n % heads != 0 || !rotary.is_multiple_of(2) {
        return Err(ViewError::Invalid(format!(
            "{n} rows in {heads} heads with rotary width {rotary}"
        )));
    }
    let head_dim = n / heads;
    let half = rotary / 2;
    // [.., heads, head_dim, ..]
    let v = v.split_axis(axis, &[heads, head_dim])?;
    let d = axis + 1;
    let rot = v.clone().slice(d, 0, rotary)?;
    // Result index (i, b) for interleaved reads source (b, i) in halves, and vice versa.
    let (from, _) = match to {
        RopeOrder::Interleaved => ([2, half], [half, 2]),
        RopeOrder::Half => ([half, 2], [2, half]),
    };
    let mut perm: Vec<usize> = (0..rot.ndim() + 1).collect();
    perm.swap(d, d + 1);
    let rot = rot.split_axis(d, &from)?.permute(&perm)?.merge_axes(d, 2)?;
    let joined = if rotary == head_dim {
        rot
    } else {
        let rest = v.slice(d, rotary, head_dim - rotary)?;
        View::concat(d, vec![rot, rest])?
    };
    joined.merge_axes(axis, 2)
}

impl Chain {
    /// Resolves `specs` for `cfg` starting from `input` shapes (canonical side).
    pub fn resolve(
        specs: &[TransformSpec],
        cfg: &ModelConfig,
        input: Group<Vec<usize>>,
    ) -> Result<Chain, TransformError> {
        let mut steps = Vec::with_capacity(specs.len());
        let mut shapes = input;
        for spec in specs {
            let mut t = spec.resolve(cfg)?;
            let output = t.fit(&shapes)?;
            steps.push(Step {
                transform: t,
                input: shapes,
                output: output.clone(),
            });
            shapes = output;
        }
        Ok(Chain { steps })
    }

    /// A chain from already-resolved transforms.
    pub fn from_transforms(
        transforms: Vec<Transform>,
        input: Group<Vec<usize>>,
    ) -> Result<Chain, TransformError> {
        let mut steps = Vec::with_capacity(transforms.len());
        let mut shapes = input;
        for mut t in transforms {
            let output = t.fit(&shapes)?;
            steps.push(Step {
                transform: t,
                input: shapes,
                output: output.clone(),
            });
            shapes = output;
        }
        Ok(Chain { steps })
    }

    /// True when the chain does nothing.
    pub fn is_identity(&self) -> bool {
        self.steps.is_empty()
    }

    /// The shapes the chain produces from its input.
    pub fn output(&self) -> Option<&Group<Vec<usize>>> {
        self.steps.last().map(|s| &s.output)
    }

    /// The dtype the chain stores as, when it ends in a cast.
    pub fn cast(&self) -> Option<Dtype> {
        self.steps.iter().rev().find_map(|s| match s.transform {
            Transform::Cast(d) => Some(d),
            _ => None,
        })
    }

    /// The exact inverse chain (stored → canonical). Casts are left out: reading a stored
    /// dtype back is the reader's business.
    pub fn inverse(&self) -> Chain {
        Chain {
            steps: self
                .steps
                .iter()
                .rev()
                .filter(|s| !matches!(s.transform, Transform::Cast(_)))
                .map(|s| Step {
                    transform: s.transform.inverse(&s.input),
                    input: s.output.clone(),
                    output: s.input.clone(),
                })
                .collect(),
        }
    }

    /// Applies every step to `views`.
    pub fn apply(&self, views: Group<View>) -> Result<Group<View>, TransformError> {
        self.steps
            .iter()
            .try_fold(views, |g, s| s.transform.apply(g))
    }

    /// The chain in words, e.g. `transpose → rope-permute(heads=4, to=interleaved, rotary=16)`;
    /// `identity` when empty.
    pub fn describe(&self) -> String {
        if self.steps.is_empty() {
            return "identity".into();
        }
        self.steps
            .iter()
            .map(|s| s.transform.to_string())
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::layout::view::collect;
    use proptest::prelude::*;

    fn one(shape: &[usize]) -> Group<Vec<usize>> {
        vec![vec![shape.to_vec()]]
    }

    fn chain(ts: Vec<Transform>, input: Group<Vec<usize>>) -> Chain {
        Chain::from_transforms(ts, input).unwrap()
    }

    /// Materialises every member/part of a group of views over `data` (one Vec per source).
    fn read(g: &Group<View>, data: &[Vec<u32>]) -> Vec<Vec<Vec<u32>>> {
        g.iter()
            .map(|m| m.iter().map(|v| collect(v, &|s, e| data[s][e])).collect())
            .collect()
    }

    fn group_of(shapes: &Group<Vec<usize>>) -> (Group<View>, Vec<Vec<u32>>) {
        let mut data = Vec::new();
        let mut next = 0u32;
        let g = shapes
            .iter()
            .map(|m| {
                m.iter()
                    .map(|s| {
                        let n: usize = s.iter().product();
                        data.push((next..next + n as u32).collect());
                        next += n as u32;
                        View::contiguous(data.len() - 1, s)
                    })
                    .collect()
            })
            .collect();
        (g, data)
    }

    #[test]
    fn rope_permute_matches_llama_cpp() {
        // llama.cpp: w.reshape(n, 2, rows/n/2, cols).swapaxes(1, 2).reshape(w.shape)
        let (rows, cols, n) = (8usize, 3usize, 2usize);
        let c = chain(
            vec![Transform::RopePermute {
                axis: 0,
                heads: n,
                rotary: 0,
                to: RopeOrder::Interleaved,
            }],
            one(&[rows, cols]),
        );
        let (g, data) = group_of(&one(&[rows, cols]));
        let got = &read(&c.apply(g).unwrap(), &data)[0][0];
        let half = rows / n / 2;
        let mut want = Vec::new();
        for h in 0..n {
            for i in 0..half {
                for b in 0..2 {
                    let r = h * (rows / n) + b * half + i;
                    want.extend((0..cols).map(|k| (r * cols + k) as u32));
                }
            }
        }
        assert_eq!(got, &want);
        assert_eq!(
            c.describe(),
            "rope-permute(heads=2, to=interleaved, rotary=4)"
        );
    }

    #[test]
    fn partial_rotary_leaves_the_rest_of_each_head() {
        // 1 head of D = 6 rows, rotary 4: rows 0..4 interleave (0,2,1,3), rows 4,5 stay.
        let c = chain(
            vec![Transform::RopePermute {
                axis: 0,
                heads: 1,
                rotary: 4,
                to: RopeOrder::Interleaved,
            }],
            one(&[6, 1]),
        );
        let (g, data) = group_of(&one(&[6, 1]));
        assert_eq!(read(&c.apply(g).unwrap(), &data)[0][0], [0, 2, 1, 3, 4, 5]);
    }

    #[test]
    fn fuse_per_head_and_split_back() {
        let shapes = vec![vec![vec![4, 1], vec![4, 1], vec![4, 1]]];
        let c = chain(
            vec![Transform::Fuse {
                axis: 0,
                arrangement: Arrangement::PerHead,
                outer: 2,
            }],
            shapes.clone(),
        );
        assert_eq!(c.output().unwrap(), &one(&[12, 1]));
        let (g, data) = group_of(&shapes);
        let fused = c.apply(g.clone()).unwrap();
        assert_eq!(
            read(&fused, &data)[0][0],
            [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
        );
        let back = c.inverse().apply(fused).unwrap();
        assert_eq!(read(&back, &data), read(&g, &data));
        assert!(
            matches!(c.inverse().steps[0].transform, Transform::Split { ref sizes, .. } if sizes == &[4, 4, 4])
        );
    }

    #[test]
    fn experts_stack_fused_gate_up_then_back() {
        // Per expert j: gate_j, up_j [I=2, H=3] → gate_up [E=2, 2I, H].
        let shapes: Group<Vec<usize>> = vec![vec![vec![2, 3], vec![2, 3]]; 2];
        let c = chain(
            vec![
                Transform::Fuse {
                    axis: 0,
                    arrangement: Arrangement::Concat,
                    outer: 1,
                },
                Transform::Stack { axis: 0 },
            ],
            shapes.clone(),
        );
        assert_eq!(c.output().unwrap(), &one(&[2, 4, 3]));
        let (g, data) = group_of(&shapes);
        let packed = c.apply(g.clone()).unwrap();
        let flat = &read(&packed, &data)[0][0];
        assert_eq!(flat[..12], (0..12).collect::<Vec<u32>>()[..]);
        assert_eq!(flat[12..], (12..24).collect::<Vec<u32>>()[..]);
        assert_eq!(
            read(&c.inverse().apply(packed).unwrap(), &data),
            read(&g, &data)
        );
    }

    #[test]
    fn shape_errors_name_the_transform() {
        let e = Chain::from_transforms(vec![Transform::Transpose], one(&[3])).unwrap_err();
        assert!(
            e.to_string().contains("`transpose` cannot apply to [3]"),
            "{e}"
        );
        let e = Chain::from_transforms(
            vec![Transform::RopePermute {
                axis: 0,
                heads: 3,
                rotary: 0,
                to: RopeOrder::Interleaved,
            }],
            one(&[8, 2]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a multiple of 3 heads"), "{e}");
        let e = Chain::from_transforms(
            vec![Transform::RopePermute {
                axis: 0,
                heads: 1,
                rotary: 6,
                to: RopeOrder::Interleaved,
            }],
            one(&[4, 2]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most the head dim"), "{e}");
        let e = Chain::from_transforms(
            vec![Transform::Split {
                axis: 0,
                arrangement: Arrangement::Concat,
                outer: 1,
                sizes: vec![2, 2],
            }],
            one(&[5, 2]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("sum of [2, 2]"), "{e}");
    }

    fn index_transform() -> impl Strategy<Value = (Vec<Transform>, Vec<usize>)> {
        // A 2-D [rows, cols] tensor with rows = heads · head_dim, and a random chain of the index
        // transforms that keep it 2-D.
        // At most one RoPE permutation per chain, as in every real layout, anywhere among
        // transposes and dim reversals (which move the head axis: chains that no longer fit
        // are skipped by the test).
        (
            1usize..4,
            1usize..4,
            1usize..5,
            0usize..4,
            0usize..5,
            0usize..4,
        )
            .prop_map(|(heads, half, cols, before, rope, after)| {
                let rows = heads * half * 2;
                let flip = |k: usize| {
                    if k.is_multiple_of(2) {
                        Transform::Transpose
                    } else {
                        Transform::ReverseDims
                    }
                };
                let mut ts: Vec<Transform> = (0..before).map(flip).collect();
                ts.extend(match rope {
                    0 => None,
                    1 => Some(Transform::RopePermute {
                        axis: 0,
                        heads,
                        rotary: 0,
                        to: RopeOrder::Interleaved,
                    }),
                    2 => Some(Transform::RopePermute {
                        axis: 0,
                        heads,
                        rotary: 0,
                        to: RopeOrder::Half,
                    }),
                    3 => Some(Transform::RopePermute {
                        axis: 0,
                        heads,
                        rotary: 2,
                        to: RopeOrder::Interleaved,
                    }),
                    _ => Some(Transform::RopePermute {
                        axis: 1,
                        heads: 1,
                        rotary: 0,
                        to: RopeOrder::Half,
                    }),
                });
                ts.extend((0..after).map(|k| flip(k + 1)));
                (ts, vec![rows, cols])
            })
    }

    proptest! {
        /// Every chain of index transforms followed by its inverse is the identity, element for
        /// element (so bit-identical on any data of any dtype).
        #[test]
        fn chain_then_inverse_is_identity((ts, shape) in index_transform()) {
            // Transposes move the head axis; keep only chains that still fit.
            if let Ok(c) = Chain::from_transforms(ts, one(&shape)) {
                let (g, data) = group_of(&one(&shape));
                if let Ok(out) = c.apply(g.clone()) {
                    let back = c.inverse().apply(out).unwrap();
                    prop_assert_eq!(read(&back, &data), read(&g, &data));
                }
            }
        }
    }
}
