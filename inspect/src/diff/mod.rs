//! Comparing two checkpoints tensor by tensor, and naming the transform between each pair.
//!
//! Why this exists: when a port goes wrong, the question is rarely "are these different" but
//! "how": a forgotten transpose, a RoPE permutation applied twice, a bf16 round trip, a query
//! pre-scaled by 1/√D, Gemma's +1 on norms. [`diff`] reads each side in its own convention
//! (detected among the built-ins and the user layouts) and pairs canonical tensors through the
//! layout [`Catalogue`](crate::layout::catalogue::Catalogue): an HF `q_proj.weight` meets its
//! Flax `q_proj.kernel`, or the `wq` of a JAX port with interleaved RoPE, or its half of a fused
//! `gate_up`. Each pair is compared through canonical views; the relation the two conventions
//! imply (A's inverse chain composed with B's chain, in the transform algebra) is tried first,
//! then the hypotheses the algebra generates, and the verdict is named by the transforms that
//! hold, with their constants. It returns data ([`DiffReport`]); rendering lives in the binary.
//!
//! - `pairing`: each side's convention, its canonical items, the pairs and one-sided tensors.
//! - `relation`: relations between stored tensors as transforms, their names, the hypotheses.
//! - `compare`: one pair, step by step; `numeric`: the sampled and tiled reading of views.
//! - `judge`: which verdicts the expected conversions and conventions explain.
//!
//! Sampled values decide first and the surviving candidate is confirmed over the whole tensor,
//! tile by tile; pairs run in parallel (rayon) and each tensor's pages are released when done.

mod compare;
mod judge;
mod numeric;
mod pairing;
mod relation;
mod report;

use std::sync::Arc;

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::layout::convention::Convention;
use compare::PairInput;
use judge::Facts;
use pairing::{Plan, PlannedPair};

pub use report::{
    Conversion, ConversionError, DiffError, DiffReport, HeadKind, OneSided, PairError, PairResult,
    RopeDirection, SideSummary, Summary, TensorSide, Transformed, Verdict, VERDICT_ORDER,
};

/// What to compare and how hard.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Skip the sampled screening: decide every candidate on the whole tensor.
    pub full: bool,
    /// Conversions that explain a verdict (see [`Conversion`]).
    pub expect: Vec<Conversion>,
    /// User layouts (`--layout FILE`): candidates, beside the built-ins, for the convention
    /// each side is read in. A side read in a user layout makes the conversion between the two
    /// sides' conventions expected.
    pub layouts: Vec<Arc<Convention>>,
}

/// Compares `a` with `b`. `progress(result, total_pairs)` is called once per finished pair,
/// from worker threads.
pub fn diff(
    a: &Checkpoint,
    b: &Checkpoint,
    opts: &DiffOptions,
    progress: &(dyn Fn(&PairResult, usize) + Sync),
) -> Result<DiffReport, DiffError> {
    let plan = pairing::plan(a, b, &opts.layouts)?;
    let (expect, notes) = expectations(&plan, &opts.expect);

    // Largest first so that the parallel tail is short; reordered for the report below.
    let size = |p: &PlannedPair| {
        let [sa, sb] = &plan.sides;
        let n = |s: &pairing::Side<'_>, k: usize| s.ck.tensors()[s.items[k].tensor].nbytes();
        n(sa, p.a).max(n(sb, p.b))
    };
    let mut order: Vec<usize> = (0..plan.pairs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(size(&plan.pairs[i])));
    let mut done: Vec<(usize, PairResult)> = order
        .par_iter()
        .map(|&i| {
            let r = compare_planned(&plan, &plan.pairs[i], opts.full, &expect);
            release(&plan, &plan.pairs[i]);
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
    for &name in VERDICT_ORDER {
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

    let Plan {
        sides: [sa, sb],
        only_a,
        only_b,
        warnings,
        ..
    } = plan;
    Ok(DiffReport {
        a: sa.summary,
        b: sb.summary,
        expect,
        full: opts.full,
        pairs,
        only_in_a: only_a,
        only_in_b: only_b,
        warnings,
        notes,
        summary,
        ok,
    })
}

/// The conversions verdicts are judged against: the caller's, and the conversion between the
/// two sides' conventions when one of them is a user layout (reading a checkpoint through a
/// layout file says that is how it is stored).
fn expectations(plan: &Plan<'_>, given: &[Conversion]) -> (Vec<Conversion>, Vec<String>) {
    let mut expect: Vec<Conversion> = Vec::new();
    for c in given {
        if !expect.contains(c) {
            expect.push(c.clone());
        }
    }
    let mut notes = Vec::new();
    let [sa, sb] = &plan.sides;
    if let (Some(ca), Some(cb)) = (sa.conv_name(sa.conv), sb.conv_name(sb.conv)) {
        for s in [sa, sb] {
            let Some(layout) = s.user_layout() else {
                continue;
            };
            let implied = Conversion::between_conventions(ca, cb);
            notes.push(format!(
                "{} is read in the layout `{}` ({}): pairs related as the {ca} and {cb} conventions say are expected ({implied})",
                s.label, layout.name, layout.origin
            ));
            if !expect.contains(&implied) {
                expect.push(implied);
            }
            break;
        }
    }
    (expect, notes)
}

/// Tells each side's checkpoint that the pair's tensors are done with.
fn release(plan: &Plan<'_>, p: &PlannedPair) {
    for (s, k) in plan.sides.iter().zip([p.a, p.b]) {
        let it = &s.items[k];
        let tensors = match &it.view {
            Ok((v, _)) => v.sources(),
            Err(_) => vec![it.tensor],
        };
        for t in tensors {
            if let Some(info) = s.ck.tensors().get(t) {
                s.ck.release(info);
            }
        }
    }
}

/// Compares one planned pair and judges the verdict against the expectations.
fn compare_planned(
    plan: &Plan<'_>,
    p: &PlannedPair,
    full: bool,
    expect: &[Conversion],
) -> PairResult {
    let [sa, sb] = &plan.sides;
    let (ia, ib) = (&sa.items[p.a], &sb.items[p.b]);
    let (ta, tb) = (&sa.ck.tensors()[ia.tensor], &sb.ck.tensors()[ib.tensor]);
    let conventions = relation::simplify(ia.chain_inv.iter().chain(&ib.chain).cloned().collect());
    let mut notes: Vec<String> = p.note.iter().cloned().collect();
    let outcome = pairing::operands(plan, p).and_then(|(a, b)| {
        let input = PairInput {
            a,
            b,
            rope: pairing::rope_check(plan, p),
            full,
        };
        compare::compare(&input, &mut notes)
    });
    let (found, error) = match outcome {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(crate::error::chain(&e))),
    };
    let matches = found.as_ref().is_some_and(|f| f.matches_conventions);
    let facts = Facts {
        a: ta,
        b: tb,
        conv_a: sa.conv_name(ia.conv),
        conv_b: sb.conv_name(ib.conv),
        conventions: &conventions,
        matches_conventions: matches,
    };
    let unexplained_because = match &found {
        Some(f) => judge::judge(&f.verdict, &facts, expect),
        None => Some("could not be compared".to_string()),
    };
    let side = |s: &pairing::Side<'_>, it: &pairing::Item| TensorSide {
        name: s.ck.tensors()[it.tensor].name.clone(),
        dtype: s.ck.tensors()[it.tensor].dtype.name(),
        shape: s.ck.tensors()[it.tensor].shape.clone(),
        convention: if it.shared {
            None
        } else {
            s.conv_name(it.conv).map(str::to_string)
        },
        part: it.part.map(|(k, n)| format!("part {} of {n}", k + 1)),
    };
    PairResult {
        canonical: ia.entry.or(ib.entry).map(|_| {
            if ia.entry.is_some() {
                ia.key.clone()
            } else {
                ib.key.clone()
            }
        }),
        a: side(sa, ia),
        b: side(sb, ib),
        conventions: facts
            .conv_a
            .zip(facts.conv_b)
            .map(|(x, y)| [x.to_string(), y.to_string()]),
        transposed_by_conventions: relation::transposes(&conventions),
        conventions_relation: relation::describe(&conventions),
        relation: found
            .as_ref()
            .and_then(|f| f.relation.as_deref())
            .map(relation::describe),
        matches_conventions: matches,
        verdict: found.map(|f| f.verdict),
        error,
        notes,
        explained: unexplained_because.is_none(),
        unexplained_because,
    }
}

#[cfg(test)]
mod tests;
