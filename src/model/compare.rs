//! Comparing two forwards (or a forward and a stored transformers reference) stage by stage,
//! and naming the first stage that parts ways.
//!
//! Differences compound through the layers, so the first stage out of tolerance is where to
//! look: its component (embedding, a layer's attention or MLP, final norm, lm_head) says which
//! weights to suspect.

use serde::Serialize;

use super::save::{Reference, ReferenceError};
use super::ForwardOutput;

/// Element-wise tolerance, as `numpy.allclose`: `|got − want| ≤ atol + rtol·|want|`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub atol: f32,
    /// Relative tolerance.
    pub rtol: f32,
}

/// How two tensors differ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Diff {
    /// max |got − want|.
    pub max_abs: f32,
    /// max |got − want| / max |want|: the largest difference relative to the tensor's scale.
    pub max_rel: f32,
    /// Elements outside the tolerance.
    pub exceeding: usize,
    /// Elements compared.
    pub count: usize,
    /// Normalised mean squared error `Σ(got − want)² / Σ want²` (in f64): the error's energy
    /// relative to the signal's, comparable across stages of different scales. Infinite when
    /// the reference is all zeros but `got` is not, or when a value is NaN.
    pub nmse: f64,
    /// The same in decibels, `10·log10(nmse)` (−60 dB: a millionth of the signal's energy);
    /// `None` when the two are identical (−∞ dB).
    pub nmse_db: Option<f64>,
    /// Mean |got − want| over the elements (in f64).
    pub mean_abs: f64,
}

impl Diff {
    /// No element outside the tolerance.
    pub fn within(&self) -> bool {
        self.exceeding == 0
    }
}

/// Element-wise comparison of `got` against `want`. They should have the same length
/// (callers check shapes first); if not, every element without a counterpart counts as
/// outside the tolerance, so a short side can never pass on a prefix.
pub fn diff(got: &[f32], want: &[f32], tol: Tolerance) -> Diff {
    let unmatched = got.len().abs_diff(want.len());
    let mut max_abs = 0.0f32;
    let mut scale = 0.0f32;
    let mut exceeding = 0;
    let (mut err2, mut sig2, mut abs_sum) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let e = f64::from(g) - f64::from(w);
        err2 += e * e;
        sig2 += f64::from(w) * f64::from(w);
        abs_sum += e.abs();
        let d = (g - w).abs();
        // NaN anywhere counts as exceeding and as an infinite difference
        let d = if d.is_nan() { f32::INFINITY } else { d };
        max_abs = max_abs.max(d);
        scale = scale.max(w.abs());
        // false when the reference itself is NaN
        let within = d <= tol.atol + tol.rtol * w.abs();
        if !within {
            exceeding += 1;
        }
    }
    if unmatched > 0 {
        max_abs = f32::INFINITY;
    }
    let count = got.len().max(want.len());
    let nmse = if unmatched > 0 || err2.is_nan() {
        f64::INFINITY
    } else if err2 == 0.0 {
        0.0
    } else if sig2 > 0.0 {
        err2 / sig2
    } else {
        f64::INFINITY
    };
    Diff {
        max_abs,
        max_rel: if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        },
        exceeding: exceeding + unmatched,
        count,
        nmse,
        nmse_db: (nmse > 0.0).then(|| 10.0 * nmse.log10()),
        mean_abs: if unmatched > 0 || abs_sum.is_nan() {
            f64::INFINITY
        } else if count > 0 {
            abs_sum / count as f64
        } else {
            0.0
        },
    }
}

/// Agreement of two `[T, V]` logit matrices as distributions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Agreement {
    /// Positions whose arg-max token is the same.
    pub top1_agree: usize,
    /// Positions compared (T).
    pub positions: usize,
    /// Mean over positions of KL(want ‖ got) of the softmax distributions, in nats.
    pub kl_mean: f64,
    /// Max over positions of the same.
    pub kl_max: f64,
    /// Mean over positions of |top-5(got) ∩ top-5(want)| / 5.
    pub top5_overlap: f64,
    /// Mean over positions of |top-10(got) ∩ top-10(want)| / 10.
    pub top10_overlap: f64,
}

/// Ids of the `k` largest values (ties: lower id first).
fn top_ids(x: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    let k = k.min(x.len());
    let by = |a: &usize, b: &usize| x[*b].total_cmp(&x[*a]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k, by);
        order.truncate(k);
    }
    order
}

/// |top-k(a) ∩ top-k(b)| / k (1 when k is 0 or the rows are empty).
fn top_overlap(a: &[f32], b: &[f32], k: usize) -> f64 {
    let k = k.min(a.len()).min(b.len());
    if k == 0 {
        return 1.0;
    }
    let (ta, tb) = (top_ids(a, k), top_ids(b, k));
    ta.iter().filter(|i| tb.contains(i)).count() as f64 / k as f64
}

/// Index of the largest value (first one on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// `log_softmax` in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Top-1 agreement and KL divergence per position of `[T, V]` logits.
pub fn agreement(got: &[f32], want: &[f32], vocab: usize) -> Agreement {
    let positions = got.len() / vocab.max(1);
    let mut top1_agree = 0;
    let (mut kl_sum, mut kl_max) = (0.0f64, 0.0f64);
    let (mut top5, mut top10) = (0.0f64, 0.0f64);
    for t in 0..positions {
        let g = &got[t * vocab..(t + 1) * vocab];
        let w = &want[t * vocab..(t + 1) * vocab];
        top5 += top_overlap(g, w, 5);
        top10 += top_overlap(g, w, 10);
        if argmax(g) == argmax(w) {
            top1_agree += 1;
        }
        let (lg, lw) = (log_softmax(g), log_softmax(w));
        let kl: f64 = lw.iter().zip(&lg).map(|(&a, &b)| a.exp() * (a - b)).sum();
        let kl = kl.max(0.0);
        kl_sum += kl;
        kl_max = kl_max.max(kl);
    }
    let mean = |sum: f64| {
        if positions > 0 {
            sum / positions as f64
        } else {
            0.0
        }
    };
    Agreement {
        top1_agree,
        positions,
        kl_mean: mean(kl_sum),
        kl_max,
        top5_overlap: if positions > 0 {
            top5 / positions as f64
        } else {
            1.0
        },
        top10_overlap: if positions > 0 {
            top10 / positions as f64
        } else {
            1.0
        },
    }
}

/// Where in the model a compared tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stage {
    /// The embedding output.
    Embedding,
    /// Residual stream after layer `layer`'s attention block.
    Attention {
        /// Layer index.
        layer: usize,
    },
    /// Residual stream after layer `layer`'s MLP block (its output).
    Mlp {
        /// Layer index.
        layer: usize,
    },
    /// Output of layer `layer`, when the attention/MLP split is not available.
    Layer {
        /// Layer index.
        layer: usize,
    },
    /// The final norm output (lm_head input).
    FinalNorm,
    /// The logits.
    LmHead,
    /// An encoder's pooler output (`tanh(dense(h[0]))`).
    Pooler,
}

impl Stage {
    /// Short row label for tables.
    pub fn label(&self) -> String {
        match self {
            Stage::Embedding => "embedding".to_string(),
            Stage::Attention { layer } => format!("layer {layer} attention"),
            Stage::Mlp { layer } => format!("layer {layer} mlp"),
            Stage::Layer { layer } => format!("layer {layer}"),
            Stage::FinalNorm => "final norm".to_string(),
            Stage::LmHead => "logits".to_string(),
            Stage::Pooler => "pooler".to_string(),
        }
    }

    /// Which component to blame when this is the first stage out of tolerance.
    pub fn blame(&self) -> String {
        match self {
            Stage::Embedding => "the embedding".to_string(),
            Stage::Attention { layer } => format!("layer {layer}'s attention"),
            Stage::Mlp { layer } => format!("layer {layer}'s MLP"),
            Stage::Layer { layer } => format!("layer {layer} (attention or MLP)"),
            Stage::FinalNorm => "the final norm".to_string(),
            Stage::LmHead => "the lm_head".to_string(),
            Stage::Pooler => "the pooler".to_string(),
        }
    }
}

/// One row of a verification: a stage and how the two sides differ there.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// Which tensor.
    pub stage: Stage,
    /// Element-wise difference.
    pub diff: Diff,
    /// For the logits: top-1 agreement and KL.
    pub agreement: Option<Agreement>,
}

/// The stage-by-stage comparison of a model against a reference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// In model order: embedding, layers, final norm, logits.
    pub rows: Vec<Row>,
    /// Index into `rows` of the first stage out of tolerance.
    pub first_failure: Option<usize>,
    /// Tolerance used.
    pub tolerance: Tolerance,
}

impl Comparison {
    fn from_rows(rows: Vec<Row>, tolerance: Tolerance) -> Comparison {
        let first_failure = rows.iter().position(|r| !r.diff.within());
        Comparison {
            rows,
            first_failure,
            tolerance,
        }
    }

    /// Everything within tolerance.
    pub fn passed(&self) -> bool {
        self.first_failure.is_none()
    }

    /// The first stage out of tolerance.
    pub fn first_failing_stage(&self) -> Option<Stage> {
        self.first_failure.map(|i| self.rows[i].stage)
    }

    /// The logits row.
    pub fn logits(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.stage == Stage::LmHead)
    }
}

fn logit_row(got: &ForwardOutput, want: &[f32], tol: Tolerance) -> Row {
    Row {
        stage: Stage::LmHead,
        diff: diff(&got.logits, want, tol),
        agreement: Some(agreement(&got.logits, want, got.vocab_size)),
    }
}

/// Compares two recorded forwards of the same prompt (`want` is the trusted side): embedding,
/// then each layer's attention and MLP residual streams, final norm, logits.
pub fn compare_runs(got: &ForwardOutput, want: &ForwardOutput, tol: Tolerance) -> Comparison {
    let mut rows = vec![Row {
        stage: Stage::Embedding,
        diff: diff(&got.embedding, &want.embedding, tol),
        agreement: None,
    }];
    for (layer, (g, w)) in got.layers.iter().zip(&want.layers).enumerate() {
        rows.push(Row {
            stage: Stage::Attention { layer },
            diff: diff(&g.after_attention, &w.after_attention, tol),
            agreement: None,
        });
        rows.push(Row {
            stage: Stage::Mlp { layer },
            diff: diff(&g.output, &w.output, tol),
            agreement: None,
        });
    }
    if got.logits.is_empty() && want.logits.is_empty() {
        // two encoders: the last hidden state is the last layer's output, then the pooler
        if !(got.pooler_output.is_empty() && want.pooler_output.is_empty()) {
            rows.push(pooler_row(got, &want.pooler_output, tol));
        }
        return Comparison::from_rows(rows, tol);
    }
    rows.push(Row {
        stage: Stage::FinalNorm,
        diff: diff(&got.final_norm, &want.final_norm, tol),
        agreement: None,
    });
    rows.push(logit_row(got, &want.logits, tol));
    Comparison::from_rows(rows, tol)
}

fn pooler_row(got: &ForwardOutput, want: &[f32], tol: Tolerance) -> Row {
    Row {
        stage: Stage::Pooler,
        diff: diff(&got.pooler_output, want, tol),
        agreement: None,
    }
}

/// Checks an encoder reference (read from `path`) against the model: every stored
/// `hidden_states.{i}` `[T, H]` with i ≤ L, `pooler_output` `[H]`, and something to compare.
pub fn check_encoder_reference(
    want: &Reference,
    path: &str,
    model: ReferenceShape,
) -> Result<(), ReferenceError> {
    let t = want.input_ids.len();
    let malformed = |name: String, shape: Vec<usize>, expected: String| {
        Err(ReferenceError::Malformed {
            path: path.to_string(),
            name,
            dtype: "F32".to_string(),
            shape,
            expected,
        })
    };
    let Some(enc) = &want.encoder else {
        return Err(ReferenceError::WrongKind {
            path: path.to_string(),
            is: "a decoder's reference (with logits)",
            model: "an encoder (BERT: hidden states and pooler_output, no logits)",
        });
    };
    for (i, (_, shape)) in &enc.hidden {
        if *i > model.layers {
            return malformed(
                format!("hidden_states.{i}"),
                shape.to_vec(),
                format!(
                    "at most hidden_states.{} for {} layers",
                    model.layers, model.layers
                ),
            );
        }
        if *shape != [t, model.hidden_size] {
            return malformed(
                format!("hidden_states.{i}"),
                shape.to_vec(),
                format!("F32 [{t}, {}]", model.hidden_size),
            );
        }
    }
    if let Some(p) = &enc.pooler_output {
        if p.len() != model.hidden_size {
            return malformed(
                "pooler_output".to_string(),
                vec![p.len()],
                format!("F32 [{}]", model.hidden_size),
            );
        }
    }
    Ok(())
}

/// Compares a recorded encoder forward with an encoder reference (checked first with
/// [`check_encoder_reference`]): `hidden_states.0` against the embedding output,
/// `hidden_states.{i}` against layer i-1's output (the last one is `last_hidden_state`: an
/// encoder has no final norm), then `pooler_output`.
pub fn compare_encoder_reference(
    got: &ForwardOutput,
    want: &Reference,
    tol: Tolerance,
) -> Comparison {
    let mut rows = Vec::new();
    if let Some(enc) = &want.encoder {
        for (i, (hs, _)) in &enc.hidden {
            let (stage, mine) = match i.checked_sub(1) {
                None => (Stage::Embedding, &got.embedding),
                Some(layer) if layer + 1 == got.layers.len() => {
                    (Stage::Layer { layer }, &got.final_norm)
                }
                Some(layer) => match got.layers.get(layer) {
                    Some(l) => (Stage::Layer { layer }, &l.output),
                    None => continue,
                },
            };
            rows.push(Row {
                stage,
                diff: diff(mine, hs, tol),
                agreement: None,
            });
        }
        if let Some(p) = &enc.pooler_output {
            rows.push(pooler_row(got, p, tol));
        }
    }
    Comparison::from_rows(rows, tol)
}

/// Where a layer's output is found in a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayerSource {
    /// `layer_output.{i}`.
    LayerOutput(usize),
    /// `hidden_states.{i}`.
    Hidden(usize),
}

/// Which reference tensor each stage of an L-layer model is compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ReferencePlan {
    /// `hidden_states.0` against the embedding output.
    embedding: bool,
    /// Per layer: its output's counterpart, if any.
    layers: Vec<Option<LayerSource>>,
    /// `hidden_states.{L}` against the final norm output.
    final_norm: bool,
}

/// The pairing rules, shared by [`check_reference`] (which reports what they leave out) and
/// [`compare_reference`]. transformers' `output_hidden_states` of an L-layer model holds
/// L + 1 tensors: the embedding output, the outputs of layers 0..L-2 and, last, the final
/// norm output (not layer L-1's raw output). So `hidden_states.{L}` is the final norm only
/// when it is the last one; in a longer list (a deeper model's reference) it is layer L-1's
/// output and those after it are skipped.
fn reference_plan(n_hidden: usize, n_layer_outputs: usize, layers: usize) -> ReferencePlan {
    let deeper = n_hidden > layers + 1;
    ReferencePlan {
        embedding: n_hidden > 0,
        layers: (0..layers)
            .map(|i| {
                if i < n_layer_outputs {
                    Some(LayerSource::LayerOutput(i))
                } else if i + 1 < n_hidden && (i + 1 < layers || deeper) {
                    Some(LayerSource::Hidden(i + 1))
                } else {
                    None
                }
            })
            .collect(),
        final_norm: n_hidden == layers + 1,
    }
}

/// Something about a reference file that leaves stages uncompared: returned by
/// [`check_reference`], shown by `verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReferenceNote {
    /// More `hidden_states` than an L-layer model has (L + 1): those after
    /// `hidden_states.{L}` are skipped, and `hidden_states.{L}` is compared as layer L-1's
    /// output rather than as the final norm.
    ExtraHiddenStates {
        /// L.
        layers: usize,
        /// How many the reference stores.
        stored: usize,
    },
    /// Fewer `hidden_states` than L + 1: the embedding (if none at all), the listed layers
    /// and the final norm are not compared.
    MissingHiddenStates {
        /// L.
        layers: usize,
        /// How many the reference stores.
        stored: usize,
        /// Layers whose output has no counterpart (no `layer_output.{i}` either).
        uncompared_layers: Vec<usize>,
    },
    /// More `layer_output` tensors than layers: the extra ones are skipped.
    ExtraLayerOutputs {
        /// L.
        layers: usize,
        /// How many the reference stores.
        stored: usize,
    },
}

/// What a reference must match: the model under test and its prompt.
#[derive(Clone, Copy, Debug)]
pub struct ReferenceShape {
    /// H.
    pub hidden_size: usize,
    /// L.
    pub layers: usize,
    /// V.
    pub vocab_size: usize,
}

/// Checks every tensor of `want` (read from `path`) against the model before anything is
/// compared: `input_ids` `[T]` with T ≥ 1, `logits` `[T, V]`, every `hidden_states.{i}` and
/// `layer_output.{i}` `[T, H]`. A wrong shape is an error (a prefix or an empty tensor would
/// otherwise "pass"); stages the reference leaves uncompared, or tensors it has in excess,
/// come back as notes.
pub fn check_reference(
    want: &Reference,
    path: &str,
    model: ReferenceShape,
) -> Result<Vec<ReferenceNote>, ReferenceError> {
    let t = want.input_ids.len();
    let malformed = |name: String, shape: Vec<usize>, expected: String| {
        Err(ReferenceError::Malformed {
            path: path.to_string(),
            name,
            dtype: "F32".to_string(),
            shape,
            expected,
        })
    };
    if want.encoder.is_some() {
        return Err(ReferenceError::WrongKind {
            path: path.to_string(),
            is: "an encoder's reference (hidden states and pooler_output, no logits)",
            model: "a decoder",
        });
    }
    if t == 0 {
        return Err(ReferenceError::Malformed {
            path: path.to_string(),
            name: "input_ids".to_string(),
            dtype: "I64".to_string(),
            shape: vec![0],
            expected: "I64 [T] with at least one token".to_string(),
        });
    }
    if want.vocab_size != model.vocab_size {
        return malformed(
            "logits".to_string(),
            vec![t, want.vocab_size],
            format!(
                "F32 [{t}, {}] (V = the model's vocab_size)",
                model.vocab_size
            ),
        );
    }
    let hidden = [t, model.hidden_size];
    for (prefix, shapes) in [
        ("hidden_states", &want.hidden_state_shapes),
        ("layer_output", &want.layer_output_shapes),
    ] {
        for (i, shape) in shapes.iter().enumerate() {
            if *shape != hidden {
                return malformed(
                    format!("{prefix}.{i}"),
                    shape.to_vec(),
                    format!(
                        "F32 [{t}, {}] (T = the {t} input_ids, H = the model's hidden_size)",
                        model.hidden_size
                    ),
                );
            }
        }
    }
    let (l, n_hidden, n_out) = (
        model.layers,
        want.hidden_states.len(),
        want.layer_outputs.len(),
    );
    let plan = reference_plan(n_hidden, n_out, l);
    let mut notes = Vec::new();
    if n_hidden > l + 1 {
        notes.push(ReferenceNote::ExtraHiddenStates {
            layers: l,
            stored: n_hidden,
        });
    } else if n_hidden < l + 1 {
        notes.push(ReferenceNote::MissingHiddenStates {
            layers: l,
            stored: n_hidden,
            uncompared_layers: (0..l).filter(|&i| plan.layers[i].is_none()).collect(),
        });
    }
    if n_out > l {
        notes.push(ReferenceNote::ExtraLayerOutputs {
            layers: l,
            stored: n_out,
        });
    }
    Ok(notes)
}

/// Compares a recorded forward with a transformers reference (checked first with
/// [`check_reference`]): `hidden_states.0` (embedding), each layer's output
/// (`layer_output.{i}` when stored, else `hidden_states.{i+1}` for all but the last layer),
/// `hidden_states.{L}` (final norm), logits.
pub fn compare_reference(got: &ForwardOutput, want: &Reference, tol: Tolerance) -> Comparison {
    let mut rows = Vec::new();
    let hs = &want.hidden_states;
    let plan = reference_plan(hs.len(), want.layer_outputs.len(), got.layers.len());
    if plan.embedding {
        rows.push(Row {
            stage: Stage::Embedding,
            diff: diff(&got.embedding, &hs[0], tol),
            agreement: None,
        });
    }
    for (layer, (g, source)) in got.layers.iter().zip(&plan.layers).enumerate() {
        let w = match source {
            Some(LayerSource::LayerOutput(i)) => &want.layer_outputs[*i],
            Some(LayerSource::Hidden(i)) => &hs[*i],
            None => continue,
        };
        rows.push(Row {
            stage: Stage::Layer { layer },
            diff: diff(&g.output, w, tol),
            agreement: None,
        });
    }
    if plan.final_norm {
        rows.push(Row {
            stage: Stage::FinalNorm,
            diff: diff(&got.final_norm, &hs[got.layers.len()], tol),
            agreement: None,
        });
    }
    rows.push(logit_row(got, &want.logits, tol));
    Comparison::from_rows(rows, tol)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 0.0,
    };

    #[test]
    fn diff_counts_elements_outside_tolerance() {
        let d = diff(&[1.0, 2.0, 3.5], &[1.0, 2.00005, 3.0], TOL);
        assert_eq!(d.exceeding, 1);
        assert_eq!(d.max_abs, 0.5);
        assert_eq!(d.max_rel, 0.5 / 3.0);
        let nan = diff(&[f32::NAN], &[1.0], TOL);
        assert_eq!(nan.exceeding, 1);
        assert_eq!(nan.max_abs, f32::INFINITY);
    }

    #[test]
    fn nmse_in_db_and_mean_abs() {
        // error energy 0.5² + 0.5² = 0.5 over signal 1 + 1 + 4 + 4 = 10: 0.05, −13.01 dB
        let d = diff(&[1.5, 1.0, 2.0, -1.5], &[1.0, 1.0, 2.0, -2.0], TOL);
        assert!((d.nmse - 0.05).abs() < 1e-12, "{}", d.nmse);
        assert!((d.nmse_db.unwrap() - 10.0 * 0.05f64.log10()).abs() < 1e-9);
        assert!((d.mean_abs - 0.25).abs() < 1e-12);
        let same = diff(&[1.0, 2.0], &[1.0, 2.0], TOL);
        assert_eq!((same.nmse, same.nmse_db, same.mean_abs), (0.0, None, 0.0));
        assert_eq!(diff(&[1.0], &[0.0], TOL).nmse, f64::INFINITY);
        assert_eq!(diff(&[f32::NAN], &[1.0], TOL).nmse, f64::INFINITY);
        assert_eq!(diff(&[1.0], &[1.0, 2.0], TOL).mean_abs, f64::INFINITY);
    }

    #[test]
    fn top_k_overlap_counts_shared_candidates() {
        // 12 entries; got and want share 4 of their top 5 and 9 of their top 10
        let want: Vec<f32> = (0..12).map(|i| 12.0 - i as f32).collect(); // 0 > 1 > … > 11
        let mut got = want.clone();
        got.swap(4, 11); // 4 leaves both top lists, 11 enters them
        let a = agreement(&got, &want, 12);
        assert_eq!(a.top1_agree, 1);
        assert!((a.top5_overlap - 0.8).abs() < 1e-12, "{}", a.top5_overlap);
        assert!((a.top10_overlap - 0.9).abs() < 1e-12, "{}", a.top10_overlap);
        let b = agreement(&want, &want, 12);
        assert_eq!((b.top5_overlap, b.top10_overlap), (1.0, 1.0));
    }

    #[test]
    fn diff_of_unequal_lengths_never_passes() {
        let d = diff(&[], &[1.0, 2.0], TOL);
        assert_eq!((d.exceeding, d.count), (2, 2));
        assert!(!d.within());
        let d = diff(&[1.0, 2.0, 3.0], &[1.0], TOL);
        assert_eq!((d.exceeding, d.count), (2, 3));
        assert_eq!(d.max_abs, f32::INFINITY);
    }

    #[test]
    fn reference_plan_pairs_stages_like_transformers() {
        use LayerSource::{Hidden, LayerOutput};
        // transformers' own output for L = 3, no layer_output: layer 2's raw output is absent
        let p = reference_plan(4, 0, 3);
        assert!(p.embedding && p.final_norm);
        assert_eq!(p.layers, vec![Some(Hidden(1)), Some(Hidden(2)), None]);
        // with layer_output.{i} (orient run --save): every layer
        let p = reference_plan(4, 3, 3);
        assert_eq!(
            p.layers,
            vec![
                Some(LayerOutput(0)),
                Some(LayerOutput(1)),
                Some(LayerOutput(2))
            ]
        );
        // a deeper model's reference: hidden_states.3 is layer 2's output, no final norm
        let p = reference_plan(6, 0, 3);
        assert!(!p.final_norm);
        assert_eq!(p.layers[2], Some(Hidden(3)));
        // too few: only what is there
        let p = reference_plan(2, 0, 3);
        assert!(p.embedding && !p.final_norm);
        assert_eq!(p.layers, vec![Some(Hidden(1)), None, None]);
        let p = reference_plan(0, 0, 3);
        assert!(!p.embedding && !p.final_norm);
    }

    /// A reference of `t` tokens over `v` tokens with hidden states of these shapes.
    fn reference(t: usize, v: usize, hidden: &[[usize; 2]]) -> Reference {
        Reference {
            input_ids: vec![0; t],
            logits: vec![0.0; t * v],
            vocab_size: v,
            hidden_states: hidden.iter().map(|s| vec![0.0; s[0] * s[1]]).collect(),
            hidden_state_shapes: hidden.to_vec(),
            ..Reference::default()
        }
    }

    #[test]
    fn check_reference_refuses_wrong_shapes_and_notes_gaps() {
        let model = ReferenceShape {
            hidden_size: 8,
            layers: 2,
            vocab_size: 16,
        };
        let ok = reference(5, 16, &[[5, 8]; 3]);
        assert_eq!(check_reference(&ok, "r", model).unwrap(), vec![]);
        for bad in [[0, 8], [1, 8], [5, 4], [6, 8]] {
            let r = reference(5, 16, &[[5, 8], bad, [5, 8]]);
            let e = check_reference(&r, "r", model).unwrap_err().to_string();
            assert!(e.contains("`hidden_states.1`"), "{e}");
            assert!(e.contains("expected F32 [5, 8]"), "{e}");
        }
        let r = reference(5, 17, &[]);
        assert!(check_reference(&r, "r", model)
            .unwrap_err()
            .to_string()
            .contains("`logits`"));
        let r = reference(0, 16, &[]);
        assert!(check_reference(&r, "r", model)
            .unwrap_err()
            .to_string()
            .contains("`input_ids`"));
        // extra and missing
        let r = reference(5, 16, &[[5, 8]; 5]);
        assert_eq!(
            check_reference(&r, "r", model).unwrap(),
            vec![ReferenceNote::ExtraHiddenStates {
                layers: 2,
                stored: 5
            }]
        );
        let r = reference(5, 16, &[[5, 8]]);
        assert_eq!(
            check_reference(&r, "r", model).unwrap(),
            vec![ReferenceNote::MissingHiddenStates {
                layers: 2,
                stored: 1,
                uncompared_layers: vec![0, 1]
            }]
        );
    }

    #[test]
    fn kl_is_zero_for_identical_and_positive_otherwise() {
        let a = [0.0f32, 1.0, 2.0, 2.0, 1.0, 0.0];
        let same = agreement(&a, &a, 3);
        assert_eq!(same.top1_agree, 2);
        assert!(same.kl_max.abs() < 1e-12);
        let b = [0.0f32, 1.0, 2.0, 0.0, 1.0, 2.0];
        let other = agreement(&b, &a, 3);
        assert_eq!(other.top1_agree, 1);
        // KL(p‖q) for p = softmax(2,1,0), q = its reverse: Σ p (log p − log q)
        let p = [2.0f64.exp(), 1.0f64.exp(), 1.0];
        let z: f64 = p.iter().sum();
        let p: Vec<f64> = p.iter().map(|v| v / z).collect();
        let want = p[0] * (p[0] / p[2]).ln() + p[2] * (p[2] / p[0]).ln();
        assert!((other.kl_max - want).abs() < 1e-9);
        assert!((other.kl_mean - want / 2.0).abs() < 1e-9);
    }
}
