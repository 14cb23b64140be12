//! The sparse mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE), as transformers 5.24
//! computes it.
//!
//! Why its own module: the dense MLP multiplies every token by every weight, while a sparse
//! block must cost what its *active* parameters cost. The router picks `k` of `E` experts per
//! token; the tokens are then grouped by expert and each expert runs one product over its own
//! tokens only, so an expert no token picked is never read.
//!
//! The order of operations follows the reference (`MixtralTopKRouter`, `Qwen2MoeTopKRouter`,
//! `MixtralExperts.forward`, `Qwen2MoeSparseMoeBlock.forward`):
//! - router logits `x · routerᵀ`, softmax in f32 over all experts, the top-k probabilities
//!   (largest first, the lower expert index first on a tie), divided by their sum when the
//!   model renormalises (Mixtral always; Qwen `norm_topk_prob`);
//! - each expert, in ascending expert order: `y = down(act(gate(x)) · up(x))`, scaled by the
//!   token's routing weight and added (`index_add_`) onto a zero output;
//! - Qwen2-MoE: the dense shared expert over every token, scaled per token by
//!   `sigmoid(x · shared_expert_gateᵀ)`, added after the routed experts.
//!
//! Weights come as views from the layout catalogue, whichever way the experts are stored (one
//! tensor per expert, or packed `[E, 2I, H]` / `[E, H, I]`): an expert's matrix is a strided
//! view either way, so both layouts give the same bits.

use super::forward::{act, linear, weight_product, Product};
use super::ops;
use super::read::Reader;
use super::traits::Activation;
use super::weights::{Linear, Matrix};
use super::ModelError;

/// One expert's gated MLP: `down(act(gate(x)) · up(x))`.
#[derive(Clone, Debug)]
pub(crate) struct Expert {
    /// `[I_moe, H]`.
    pub gate: Matrix,
    /// `[I_moe, H]`.
    pub up: Matrix,
    /// `[H, I_moe]`.
    pub down: Matrix,
}

/// Qwen2-MoE's shared expert and its sigmoid gate.
#[derive(Clone, Debug)]
pub(crate) struct SharedExpert {
    /// The dense MLP of `I_shared`, run on every token.
    pub mlp: Expert,
    /// `[1, H]`: the output is scaled by `sigmoid(x · gateᵀ)`.
    pub gate: Matrix,
}

/// How tokens pick experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Routing {
    /// k: experts per token.
    pub top_k: usize,
    /// Divide the top-k probabilities by their sum.
    pub renormalise: bool,
}

/// Everything a sparse MLP block reads.
#[derive(Clone, Debug)]
pub(crate) struct MoeWeights {
    /// `[E, H]`.
    pub router: Matrix,
    /// The E routed experts, in expert order.
    pub experts: Vec<Expert>,
    /// Qwen2-MoE's shared expert.
    pub shared: Option<SharedExpert>,
    /// Top-k and renormalisation.
    pub routing: Routing,
}

impl MoeWeights {
    /// Every matrix of the block.
    pub fn matrices(&self) -> impl Iterator<Item = &Matrix> {
        std::iter::once(&self.router)
            .chain(
                self.experts
                    .iter()
                    .chain(self.shared.iter().map(|s| &s.mlp))
                    .flat_map(|e| [&e.gate, &e.up, &e.down]),
            )
            .chain(self.shared.iter().map(|s| &s.gate))
    }

    /// f32 cells a block over `t` tokens allocates besides the layer's buffers: the router
    /// probabilities, one expert's inputs, inner activations and outputs (at most every token
    /// in one expert), and the shared expert's `[T, I_shared]` pair and `[T, H]` output.
    pub fn scratch_cells(&self, t: usize) -> u128 {
        let t = t as u128;
        let experts = self.experts.len() as u128;
        let widest = |e: &Expert| (e.gate.out as u128, e.down.out as u128);
        let (inter, h) = self.experts.first().map(widest).unwrap_or((0, 0));
        let shared = self.shared.as_ref().map_or(0, |s| {
            let (i, h) = widest(&s.mlp);
            t * (2 * i + h + 1)
        });
        t * experts + t * (2 * h + 2 * inter) + shared
    }
}

/// The experts token `t` is routed to and their weights: the top-k of the f32 softmax of its
/// router logits (largest first; on a tie the lower index, as `torch.topk`), renormalised when
/// `routing.renormalise`.
fn route(logits: &mut [f32], routing: Routing) -> Vec<(usize, f32)> {
    ops::softmax_in_place(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut picked: Vec<(usize, f32)> = order
        .into_iter()
        .take(routing.top_k)
        .map(|e| (e, logits[e]))
        .collect();
    if routing.renormalise {
        // router_top_value.sum(dim=-1): a left-to-right sum over the k values
        let sum = picked.iter().fold(0.0f32, |s, &(_, p)| s + p);
        for (_, p) in &mut picked {
            *p /= sum;
        }
    }
    picked
}

/// `out [T, H]` = the sparse MLP block on `x [T, H]` (`x` already normed).
pub(super) fn sparse_mlp(
    r: &mut Reader<'_>,
    w: &MoeWeights,
    activation: Activation,
    x: &[f32],
    t: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<(), ModelError> {
    let (n_experts, h) = (w.experts.len(), w.router.inp);
    // router logits, then per token its experts and weights
    let mut logits = vec![0.0f32; t * n_experts]; // [T, E]
    linear(r, &plain(&w.router), x, t, &mut logits, threads)?;
    let mut tokens: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_experts]; // per expert: (token, weight)
    for (token, row) in logits.chunks_mut(n_experts.max(1)).enumerate() {
        for (e, p) in route(row, w.routing) {
            tokens[e].push((token, p));
        }
    }
    drop(logits);
    let out = out
        .get_mut(..t * h)
        .ok_or_else(|| ModelError::Internal("MoE output buffer too small".into()))?;
    out.fill(0.0);
    for (expert, picked) in w.experts.iter().zip(&tokens) {
        if picked.is_empty() {
            continue; // never read: the cost follows the active parameters
        }
        let n = picked.len();
        let mut xs = Vec::with_capacity(n * h); // [n, H]: this expert's tokens
        for &(token, _) in picked {
            xs.extend_from_slice(&x[token * h..(token + 1) * h]);
        }
        let mut y = vec![0.0f32; n * h]; // [n, H]
        gated_mlp(r, expert, activation, &xs, n, &mut y, threads)?;
        for (&(token, weight), row) in picked.iter().zip(y.chunks(h)) {
            // current_hidden_states * top_k_weights, then index_add_
            for (o, &v) in out[token * h..(token + 1) * h].iter_mut().zip(row) {
                *o += v * weight;
            }
        }
    }
    if let Some(shared) = &w.shared {
        let mut y = vec![0.0f32; t * h]; // [T, H]
        gated_mlp(r, &shared.mlp, activation, x, t, &mut y, threads)?;
        let mut g = vec![0.0f32; t]; // [T, 1]
        linear(r, &plain(&shared.gate), x, t, &mut g, threads)?;
        for ((o, row), &g) in out.chunks_mut(h).zip(y.chunks(h)).zip(&g) {
            let s = 1.0 / (1.0 + (-g).exp()); // torch.sigmoid
            for (o, &v) in o.iter_mut().zip(row) {
                *o += s * v;
            }
        }
    }
    Ok(())
}

/// A bias-free projection.
fn plain(m: &Matrix) -> Linear {
    Linear {
        weight: m.clone(),
        bias: None,
    }
}

/// `y [n, H] = down(act(gate(x)) · up(x))` for `x [n, H]`.
fn gated_mlp(
    r: &mut Reader<'_>,
    e: &Expert,
    activation: Activation,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    threads: usize,
) -> Result<(), ModelError> {
    let inter = e.gate.out;
    let mut gate = vec![0.0f32; n * inter]; // [n, I]
    let mut up = vec![0.0f32; n * inter]; // [n, I]
    product(r, &e.gate, x, n, &mut gate, threads)?;
    product(r, &e.up, x, n, &mut up, threads)?;
    ops::gated_in_place(&mut gate, &up, act(activation));
    product(r, &e.down, &gate, n, y, threads)
}

/// `out [n, N] = x [n, K] · Wᵀ` for the `[N, K]` matrix `m`, without a bias.
fn product(
    r: &mut Reader<'_>,
    m: &Matrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    threads: usize,
) -> Result<(), ModelError> {
    let x = x.get(..n * m.inp).ok_or_else(|| {
        ModelError::Internal(format!("`{}`: input shorter than {n} rows", m.name))
    })?;
    weight_product(Product::Fast, r, m, 0..m.out, x, out, m.out, false, threads)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routing_takes_the_top_k_of_the_softmax_and_renormalises_on_request() {
        // softmax of ln(1), ln(2), ln(3), ln(4): 0.1, 0.2, 0.3, 0.4
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
        let plain = route(
            &mut logits.clone(),
            Routing {
                top_k: 2,
                renormalise: false,
            },
        );
        assert_eq!(plain.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 2]);
        assert!((plain[0].1 - 0.4).abs() < 1e-6 && (plain[1].1 - 0.3).abs() < 1e-6);
        let norm = route(
            &mut logits.clone(),
            Routing {
                top_k: 2,
                renormalise: true,
            },
        );
        assert!((norm[0].1 - 4.0 / 7.0).abs() < 1e-6 && (norm[1].1 - 3.0 / 7.0).abs() < 1e-6);
        // ties: the lower expert first
        let tie = route(
            &mut [0.5, 0.5, 0.5],
            Routing {
                top_k: 2,
                renormalise: false,
            },
        );
        assert_eq!(tie.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1]);
    }
}
