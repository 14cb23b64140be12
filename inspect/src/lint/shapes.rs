//! The shape checks' solver: which single config field change explains the attention and MLP
//! shapes that fit neither the config nor its transpose, without breaking one that fits now.

use crate::config::ModelConfig;

/// A tensor under the shape check.
pub(super) struct ShapeRow<'a> {
    pub(super) tensor: usize,
    pub(super) formula: &'a crate::layout::expr::ShapeFormula,
    /// Stored as the transpose of canonical.
    pub(super) transposed: bool,
    pub(super) mlp: bool,
}

impl ShapeRow<'_> {
    pub(super) fn expected(&self, cfg: &ModelConfig) -> Option<Vec<usize>> {
        let mut s = self.formula.eval(cfg).ok()?;
        if self.transposed {
            s.reverse();
        }
        Some(s)
    }
}

pub(super) fn fits(found: &[usize], expected: &[usize]) -> bool {
    found == expected
        || (found.len() == 2
            && expected.len() == 2
            && found[0] == expected[1]
            && found[1] == expected[0])
}

/// A config field change that explains a set of shapes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FieldFix {
    pub(super) field: &'static str,
    pub(super) config: usize,
    pub(super) weights: usize,
    /// Other single-field changes that explain the same tensors, as `field = value`.
    pub(super) alternatives: Vec<String>,
}

#[derive(Debug)]
pub(super) struct ShapeFinding {
    pub(super) rows: Vec<usize>,
    pub(super) field: Option<FieldFix>,
}

#[derive(Debug)]
pub(super) struct Explained {
    pub(super) findings: Vec<ShapeFinding>,
    pub(super) transposed: usize,
}

/// The config fields a shape formula of the attention and MLP tensors can name, with a setter
/// that keeps a derived head_dim derived.
pub(super) const FIELDS: [&str; 5] = [
    "num_key_value_heads",
    "num_attention_heads",
    "head_dim",
    "intermediate_size",
    "hidden_size",
];

pub(super) fn field_value(cfg: &ModelConfig, field: &str) -> usize {
    match field {
        "num_key_value_heads" => cfg.num_key_value_heads,
        "num_attention_heads" => cfg.num_attention_heads,
        "head_dim" => cfg.head_dim,
        "intermediate_size" => cfg.intermediate_size,
        _ => cfg.hidden_size,
    }
}

pub(super) fn with_field(cfg: &ModelConfig, field: &str, v: usize) -> ModelConfig {
    let mut c = cfg.clone();
    let derived = !cfg.head_dim_explicit
        && cfg.hidden_size.checked_div(cfg.num_attention_heads) == Some(cfg.head_dim);
    match field {
        "num_key_value_heads" => c.num_key_value_heads = v,
        "num_attention_heads" => c.num_attention_heads = v,
        "head_dim" => c.head_dim = v,
        "intermediate_size" => c.intermediate_size = v,
        _ => c.hidden_size = v,
    }
    if derived && matches!(field, "num_attention_heads" | "hidden_size") {
        if let Some(d) = c.hidden_size.checked_div(c.num_attention_heads) {
            c.head_dim = d;
        }
    }
    c.q_dim = c.num_attention_heads.saturating_mul(c.head_dim);
    c.kv_dim = c.num_key_value_heads.saturating_mul(c.head_dim);
    c
}

/// Finds the shapes that fit neither the config nor its transpose, and the single config field
/// changes that explain them without breaking a shape that fits now (greedy, largest first).
pub(super) fn explain_shapes(
    cfg: &ModelConfig,
    rows: &[ShapeRow<'_>],
    found: &[&[usize]],
) -> Explained {
    let expected: Vec<Option<Vec<usize>>> = rows.iter().map(|r| r.expected(cfg)).collect();
    let mut transposed = 0;
    let mut bad: Vec<usize> = Vec::new();
    for (i, e) in expected.iter().enumerate() {
        match e {
            Some(e) if found[i] == e.as_slice() => {}
            Some(e) if fits(found[i], e) => transposed += 1,
            Some(_) => bad.push(i),
            None => {}
        }
    }
    if bad.is_empty() {
        return Explained {
            findings: Vec::new(),
            transposed,
        };
    }
    // Candidate values: each field scaled by a ratio of a found dimension to an expected one.
    let mut candidates: Vec<(&'static str, usize)> = Vec::new();
    for &i in &bad {
        let Some(e) = &expected[i] else { continue };
        for field in FIELDS {
            let v = field_value(cfg, field);
            for (&d, &x) in found[i].iter().zip(e) {
                if d == x || x == 0 || d == 0 {
                    continue;
                }
                for (num, den) in [(d, x), (x, d)] {
                    if let Some(p) = v.checked_mul(num) {
                        if p % den == 0 && p / den != v && p / den > 0 {
                            candidates.push((field, p / den));
                        }
                    }
                }
            }
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    let good: Vec<usize> = (0..rows.len())
        .filter(|i| !bad.contains(i) && expected[*i].is_some())
        .collect();
    // (field, value, rows it fixes), keeping only changes that break nothing that fits now.
    let mut fixes: Vec<(&'static str, usize, Vec<usize>)> = Vec::new();
    for (field, v) in candidates {
        let c = with_field(cfg, field, v);
        let exp = |i: usize| rows[i].expected(&c);
        let breaks = good
            .iter()
            .any(|&i| !exp(i).is_some_and(|e| fits(found[i], &e)));
        if breaks {
            continue;
        }
        let fixed: Vec<usize> = bad
            .iter()
            .copied()
            .filter(|&i| exp(i).is_some_and(|e| fits(found[i], &e)))
            .collect();
        if !fixed.is_empty() {
            fixes.push((field, v, fixed));
        }
    }
    let mut findings = Vec::new();
    let mut left = bad.clone();
    loop {
        let best = fixes
            .iter()
            .map(|(f, v, rows)| (rows.iter().filter(|r| left.contains(r)).count(), *f, *v))
            .filter(|(n, _, _)| *n > 0)
            .max_by_key(|(n, f, _)| (*n, std::cmp::Reverse(FIELDS.iter().position(|x| x == f))));
        let Some((_, field, v)) = best else { break };
        let fixed: Vec<usize> = fixes
            .iter()
            .find(|(f, x, _)| *f == field && *x == v)
            .map(|(_, _, r)| r.iter().copied().filter(|r| left.contains(r)).collect())
            .unwrap_or_default();
        let alternatives: Vec<String> = fixes
            .iter()
            .filter(|(f, x, r)| (*f, *x) != (field, v) && fixed.iter().all(|i| r.contains(i)))
            .map(|(f, x, _)| {
                let c = with_field(cfg, f, *x);
                if *f != "head_dim" && c.head_dim != cfg.head_dim {
                    format!("{f} = {x}, which makes head_dim {}", c.head_dim)
                } else {
                    format!("{f} = {x}")
                }
            })
            .collect();
        left.retain(|r| !fixed.contains(r));
        findings.push(ShapeFinding {
            rows: fixed,
            field: Some(FieldFix {
                field,
                config: field_value(cfg, field),
                weights: v,
                alternatives,
            }),
        });
    }
    // What no single field explains: grouped by formula and shapes.
    let mut groups: Vec<(String, Vec<usize>, Vec<usize>)> = Vec::new();
    for i in left {
        let key = (rows[i].formula.text.clone(), found[i].to_vec());
        match groups
            .iter_mut()
            .find(|(f, s, _)| (f, s) == (&key.0, &key.1))
        {
            Some((_, _, members)) => members.push(i),
            None => groups.push((key.0, key.1, vec![i])),
        }
    }
    findings.extend(
        groups
            .into_iter()
            .map(|(_, _, rows)| ShapeFinding { rows, field: None }),
    );
    Explained {
        findings,
        transposed,
    }
}
