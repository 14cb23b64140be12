//! Comparing two forwards (or a forward and a stored transformers reference) stage by stage,
//! and naming the first stage that parts ways.
//!
//! Differences compound through the layers, so the first stage out of tolerance is where to
//! look: its component (embedding, a layer's attention or MLP, final norm, lm_head) says which
//! weights to suspect.

use serde::Serialize;

use super::save::Reference;
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
}

impl Diff {
    /// No element outside the tolerance.
    pub fn within(&self) -> bool {
        self.exceeding == 0
    }
}

/// Element-wise comparison of `got` against `want` (same length, checked by the caller).
pub fn diff(got: &[f32], want: &[f32], tol: Tolerance) -> Diff {
    let mut max_abs = 0.0f32;
    let mut scale = 0.0f32;
    let mut exceeding = 0;
    for (&g, &w) in got.iter().zip(want) {
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
    Diff {
        max_abs,
        max_rel: if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        },
        exceeding,
        count: got.len().min(want.len()),
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
    for t in 0..positions {
        let g = &got[t * vocab..(t + 1) * vocab];
        let w = &want[t * vocab..(t + 1) * vocab];
        if argmax(g) == argmax(w) {
            top1_agree += 1;
        }
        let (lg, lw) = (log_softmax(g), log_softmax(w));
        let kl: f64 = lw.iter().zip(&lg).map(|(&a, &b)| a.exp() * (a - b)).sum();
        let kl = kl.max(0.0);
        kl_sum += kl;
        kl_max = kl_max.max(kl);
    }
    Agreement {
        top1_agree,
        positions,
        kl_mean: if positions > 0 {
            kl_sum / positions as f64
        } else {
            0.0
        },
        kl_max,
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
    rows.push(Row {
        stage: Stage::FinalNorm,
        diff: diff(&got.final_norm, &want.final_norm, tol),
        agreement: None,
    });
    rows.push(logit_row(got, &want.logits, tol));
    Comparison::from_rows(rows, tol)
}

/// Compares a recorded forward with a transformers reference: `hidden_states.0` (embedding),
/// each layer's output (`layer_output.{i}` when stored, else `hidden_states.{i+1}` for all but
/// the last layer), `hidden_states.{L}` (final norm), logits.
pub fn compare_reference(got: &ForwardOutput, want: &Reference, tol: Tolerance) -> Comparison {
    let mut rows = Vec::new();
    let hs = &want.hidden_states;
    if let Some(h0) = hs.first() {
        rows.push(Row {
            stage: Stage::Embedding,
            diff: diff(&got.embedding, h0, tol),
            agreement: None,
        });
    }
    let n_layers = got.layers.len();
    for (layer, g) in got.layers.iter().enumerate() {
        let w = want.layer_outputs.get(layer).or_else(|| {
            if layer + 1 < n_layers {
                hs.get(layer + 1)
            } else {
                None
            }
        });
        if let Some(w) = w {
            rows.push(Row {
                stage: Stage::Layer { layer },
                diff: diff(&g.output, w, tol),
                agreement: None,
            });
        }
    }
    if hs.len() == n_layers + 1 {
        if let Some(last) = hs.last() {
            rows.push(Row {
                stage: Stage::FinalNorm,
                diff: diff(&got.final_norm, last, tol),
                agreement: None,
            });
        }
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
