//! Symbolic sizes: `nH·D`, `3H`, `2·I`, `n_positions`, written once in the architecture tables
//! and in layout files, evaluated against a resolved [`ModelConfig`].
//!
//! Why a tiny expression language instead of an enum of dimensions: the shape formula shown to
//! users (`[nH·D, H]`) and the shape checked are then the same text, so they cannot drift, and a
//! layout file can say `heads = "nKV"` or `parts = ["nH·D", "nKV·D", "nKV·D"]` without a new
//! variant for every product an architecture needs.
//!
//! Grammar: `sum := product ('+' product)*`, `product := quotient (('·' | '*')? quotient)*` (a
//! number written right before a name multiplies it: `3H`), `quotient := factor ('/' factor)*`
//! (exact division), `factor := NUMBER | NAME | '(' sum ')'`.

use std::fmt;

use crate::config::ModelConfig;

/// A parsed size expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A literal.
    Num(usize),
    /// A named size of the config (`H`, `nKV`, …; see [`symbol`]).
    Sym(String),
    /// Product of the factors.
    Mul(Vec<Expr>),
    /// Sum of the terms.
    Add(Vec<Expr>),
    /// Exact quotient (an error when it does not divide).
    Div(Box<Expr>, Box<Expr>),
}

/// Why an expression could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// The text is not an expression.
    #[error("`{text}` is not a size expression: {problem}")]
    Syntax {
        /// The text.
        text: String,
        /// What is wrong, where.
        problem: String,
    },
    /// A name that is not a size of the config.
    #[error("unknown size `{name}` (known: {})", SYMBOLS.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", "))]
    UnknownSymbol {
        /// The name.
        name: String,
    },
    /// The config does not define this size (e.g. `E` for a dense model).
    #[error("size `{name}` is not defined for this model")]
    Undefined {
        /// The name.
        name: String,
    },
    /// A quotient that does not divide exactly, or by zero.
    #[error("size `{text}` does not divide exactly")]
    Inexact {
        /// The expression.
        text: String,
    },
    /// The value does not fit in `usize`.
    #[error("size `{text}` overflows")]
    Overflow {
        /// The expression.
        text: String,
    },
}

/// Every size name, with what it stands for (shown in errors and documentation).
pub const SYMBOLS: &[(&str, &str)] = &[
    ("H", "hidden_size"),
    ("I", "intermediate_size"),
    ("V", "vocab_size"),
    ("L", "num_hidden_layers"),
    ("nH", "num_attention_heads"),
    ("nKV", "num_key_value_heads"),
    ("D", "head_dim"),
    (
        "R",
        "rotary dimensions per head (head_dim × partial rotary factor)",
    ),
    (
        "n_positions",
        "max_position_embeddings (rows of a learned position table)",
    ),
    ("E", "number of routed experts"),
    ("I_moe", "intermediate size of one routed expert"),
    ("I_shared", "intermediate size of the shared expert"),
    ("n_types", "type_vocab_size (BERT token types)"),
];

/// The value of size `name` for `cfg`: `Ok(None)` when the name is known but the model has no
/// such size.
pub fn symbol(cfg: &ModelConfig, name: &str) -> Result<Option<usize>, ExprError> {
    Ok(Some(match name {
        "H" => cfg.hidden_size,
        "I" => cfg.intermediate_size,
        "V" => cfg.vocab_size,
        "L" => cfg.num_hidden_layers,
        "nH" => cfg.num_attention_heads,
        "nKV" => cfg.num_key_value_heads,
        "D" => cfg.head_dim,
        "R" => cfg.rotary_dim(),
        "n_positions" => cfg.max_position_embeddings,
        "E" => return Ok(cfg.moe.as_ref().map(|m| m.num_experts)),
        "I_moe" => return Ok(cfg.moe.as_ref().map(|m| m.expert_intermediate_size)),
        "I_shared" => {
            return Ok(cfg
                .moe
                .as_ref()
                .and_then(|m| m.shared_expert_intermediate_size))
        }
        "n_types" => return Ok(cfg.type_vocab_size),
        _ => {
            return Err(ExprError::UnknownSymbol {
                name: name.to_string(),
            })
        }
    }))
}

impl Expr {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let mut p = Parser {
            text,
            chars: text.char_indices().peekable(),
        };
        let e = p.sum()?;
        p.skip_ws();
        if let Some(&(at, c)) = p.chars.peek() {
            return Err(p.error(format!("unexpected `{c}` at byte {at}")));
        }
        e.check_symbols()?;
        Ok(e)
    }

    fn check_symbols(&self) -> Result<(), ExprError> {
        match self {
            Expr::Num(_) => Ok(()),
            Expr::Sym(s) => {
                if SYMBOLS.iter().any(|(n, _)| n == s) {
                    Ok(())
                } else {
                    Err(ExprError::UnknownSymbol { name: s.clone() })
                }
            }
            Expr::Mul(xs) | Expr::Add(xs) => xs.iter().try_for_each(Expr::check_symbols),
            Expr::Div(a, b) => {
                a.check_symbols()?;
                b.check_symbols()
            }
        }
    }

    /// The value for `cfg`, with checked arithmetic.
    pub fn eval(&self, cfg: &ModelConfig) -> Result<usize, ExprError> {
        match self {
            Expr::Num(n) => Ok(*n),
            Expr::Sym(s) => symbol(cfg, s)?.ok_or_else(|| ExprError::Undefined { name: s.clone() }),
            Expr::Mul(xs) => xs.iter().try_fold(1usize, |acc, x| {
                acc.checked_mul(x.eval(cfg)?)
                    .ok_or_else(|| ExprError::Overflow {
                        text: self.to_string(),
                    })
            }),
            Expr::Add(xs) => xs.iter().try_fold(0usize, |acc, x| {
                acc.checked_add(x.eval(cfg)?)
                    .ok_or_else(|| ExprError::Overflow {
                        text: self.to_string(),
                    })
            }),
            Expr::Div(a, b) => {
                let (a, b) = (a.eval(cfg)?, b.eval(cfg)?);
                if b == 0 || a % b != 0 {
                    return Err(ExprError::Inexact {
                        text: self.to_string(),
                    });
                }
                Ok(a / b)
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(n) => write!(f, "{n}"),
            Expr::Sym(s) => f.write_str(s),
            Expr::Mul(xs) => {
                for (i, x) in xs.iter().enumerate() {
                    let juxtapose =
                        i == 1 && matches!(xs[0], Expr::Num(_)) && matches!(x, Expr::Sym(_));
                    if i > 0 && !juxtapose {
                        f.write_str("·")?;
                    }
                    match x {
                        Expr::Add(_) => write!(f, "({x})")?,
                        _ => write!(f, "{x}")?,
                    }
                }
                Ok(())
            }
            Expr::Add(xs) => {
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" + ")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
            Expr::Div(a, b) => {
                let wrap = |e: &Expr| matches!(e, Expr::Add(_) | Expr::Mul(_) | Expr::Div(..));
                if wrap(a) {
                    write!(f, "({a})")?
                } else {
                    write!(f, "{a}")?
                }
                f.write_str("/")?;
                if wrap(b) {
                    write!(f, "({b})")
                } else {
                    write!(f, "{b}")
                }
            }
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl Parser<'_> {
    fn error(&self, problem: String) -> ExprError {
        ExprError::Syntax {
            text: self.text.to_string(),
            problem,
        }
    }

    fn skip_ws(&mut self) {
        while self.chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            self.chars.next();
        }
    }

    fn sum(&mut self) -> Result<Expr, ExprError> {
        let mut terms = vec![self.product()?];
        loop {
            self.skip_ws();
            match self.chars.peek() {
                Some((_, '+')) => {
                    self.chars.next();
                    terms.push(self.product()?);
                }
                _ => break,
            }
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Add(terms)
        })
    }

    fn product(&mut self) -> Result<Expr, ExprError> {
        let mut factors = vec![self.quotient()?];
        loop {
            self.skip_ws();
            match self.chars.peek() {
                Some((_, '·' | '*' | '×')) => {
                    self.chars.next();
                    factors.push(self.quotient()?);
                }
                // `3H`: a number followed directly by a name or a parenthesis.
                Some((_, c))
                    if (c.is_alphabetic() || *c == '_' || *c == '(')
                        && matches!(factors.last(), Some(Expr::Num(_))) =>
                {
                    factors.push(self.quotient()?);
                }
                _ => break,
            }
        }
        Ok(if factors.len() == 1 {
            factors.remove(0)
        } else {
            Expr::Mul(factors)
        })
    }

    /// `factor ('/' factor)*`, left-associative, binding tighter than `·`.
    fn quotient(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.factor()?;
        loop {
            self.skip_ws();
            match self.chars.peek() {
                Some((_, '/')) => {
                    self.chars.next();
                    e = Expr::Div(Box::new(e), Box::new(self.factor()?));
                }
                _ => return Ok(e),
            }
        }
    }

    fn factor(&mut self) -> Result<Expr, ExprError> {
        self.skip_ws();
        let Some(&(start, c)) = self.chars.peek() else {
            return Err(self.error("ends where a size was expected".into()));
        };
        if c == '(' {
            self.chars.next();
            let e = self.sum()?;
            self.skip_ws();
            return match self.chars.next() {
                Some((_, ')')) => Ok(e),
                _ => Err(self.error(format!("unclosed `(` at byte {start}"))),
            };
        }
        if c.is_ascii_digit() {
            let mut end = start;
            while let Some(&(i, d)) = self.chars.peek() {
                if !d.is_ascii_digit() {
                    break;
                }
                end = i + d.len_utf8();
                self.chars.next();
            }
            return self.text[start..end].parse().map(Expr::Num).map_err(|_| {
                self.error(format!("number `{}` is too large", &self.text[start..end]))
            });
        }
        if c.is_alphabetic() || c == '_' {
            let mut end = start;
            while let Some(&(i, d)) = self.chars.peek() {
                if !(d.is_alphanumeric() || d == '_') {
                    break;
                }
                end = i + d.len_utf8();
                self.chars.next();
            }
            return Ok(Expr::Sym(self.text[start..end].to_string()));
        }
        Err(self.error(format!("unexpected `{c}` at byte {start}")))
    }
}

/// A shape formula such as `[nH·D, H]`: its text (shown as written) and its dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeFormula {
    /// The formula as written.
    pub text: String,
    /// One expression per dimension.
    pub dims: Vec<Expr>,
}

impl ShapeFormula {
    /// Parses `[e1, e2, …]` (`[]` for a scalar).
    pub fn parse(text: &str) -> Result<ShapeFormula, ExprError> {
        let inner = text
            .trim()
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(|| ExprError::Syntax {
                text: text.to_string(),
                problem: "a shape is written `[d1, d2, …]`".into(),
            })?;
        let dims = if inner.trim().is_empty() {
            Vec::new()
        } else {
            inner
                .split(',')
                .map(Expr::parse)
                .collect::<Result<_, _>>()?
        };
        Ok(ShapeFormula {
            text: text.trim().to_string(),
            dims,
        })
    }

    /// The concrete shape for `cfg`.
    pub fn eval(&self, cfg: &ModelConfig) -> Result<Vec<usize>, ExprError> {
        self.dims.iter().map(|d| d.eval(cfg)).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{parse_config, ConfigOutcome};

    fn cfg() -> ModelConfig {
        let text = r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512}"#;
        match parse_config(text).unwrap() {
            ConfigOutcome::Known(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_and_evaluates_the_table_formulas() {
        let c = cfg();
        for (text, want, shown) in [
            ("[nH·D, H]", vec![64, 64], "[nH·D, H]"),
            ("[nKV·D]", vec![32], "[nKV·D]"),
            ("[H, 3H]", vec![64, 192], "[H, 3H]"),
            (
                "[1, 1, n_positions, n_positions]",
                vec![1, 1, 32768, 32768],
                "",
            ),
            ("[]", vec![], "[]"),
            ("[(nH + 2·nKV)·D, H]", vec![128, 64], ""),
            ("[2 * I, H]", vec![352, 64], ""),
        ] {
            let f = ShapeFormula::parse(text).unwrap();
            assert_eq!(f.eval(&c).unwrap(), want, "{text}");
            if !shown.is_empty() {
                assert_eq!(f.text, shown);
            }
        }
        assert_eq!(Expr::parse("3H").unwrap().to_string(), "3H");
        assert_eq!(Expr::parse("nH * D").unwrap().to_string(), "nH·D");
        assert_eq!(
            Expr::parse("(nH+2nKV)·D").unwrap().to_string(),
            "(nH + 2nKV)·D"
        );
        assert_eq!(Expr::parse("nH/nKV·D").unwrap().eval(&c).unwrap(), 32);
        assert_eq!(Expr::parse("nH/nKV·D").unwrap().to_string(), "nH/nKV·D");
        assert!(matches!(
            Expr::parse("H/3").unwrap().eval(&c),
            Err(ExprError::Inexact { .. })
        ));
    }

    #[test]
    fn moe_and_bert_sizes() {
        let moe = |text: &str| match parse_config(text).unwrap() {
            ConfigOutcome::Known(c) => c,
            other => panic!("{other:?}"),
        };
        let c = moe(
            r#"{"model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512, "num_experts": 8, "num_experts_per_tok": 2,
            "moe_intermediate_size": 24, "shared_expert_intermediate_size": 48}"#,
        );
        let f = ShapeFormula::parse("[E, 2·I_moe, H]").unwrap();
        assert_eq!(f.eval(&c).unwrap(), [8, 48, 64]);
        assert_eq!(Expr::parse("I_shared").unwrap().eval(&c).unwrap(), 48);
        let c = moe(
            r#"{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 512, "num_local_experts": 4}"#,
        );
        assert_eq!(Expr::parse("I_moe").unwrap().eval(&c).unwrap(), 176);
        assert!(matches!(
            Expr::parse("I_shared").unwrap().eval(&c),
            Err(ExprError::Undefined { .. })
        ));
        let c = moe(
            r#"{"model_type": "bert", "hidden_size": 64, "intermediate_size": 176,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 512,
            "type_vocab_size": 3}"#,
        );
        assert_eq!(Expr::parse("n_types").unwrap().eval(&c).unwrap(), 3);
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            matches!(Expr::parse("nQ"), Err(ExprError::UnknownSymbol { name }) if name == "nQ")
        );
        assert!(matches!(Expr::parse("H +"), Err(ExprError::Syntax { .. })));
        assert!(matches!(Expr::parse("(H"), Err(ExprError::Syntax { .. })));
        assert!(matches!(
            Expr::parse("H ^ 2"),
            Err(ExprError::Syntax { .. })
        ));
        assert!(matches!(
            Expr::parse("99999999999999999999999"),
            Err(ExprError::Syntax { .. })
        ));
        assert!(matches!(
            ShapeFormula::parse("H, I"),
            Err(ExprError::Syntax { .. })
        ));
        let c = cfg();
        assert!(matches!(
            Expr::parse("E").unwrap().eval(&c),
            Err(ExprError::Undefined { .. })
        ));
        assert!(matches!(
            Expr::parse("n_types").unwrap().eval(&c),
            Err(ExprError::Undefined { .. })
        ));
        let big = Expr::parse("18446744073709551615 · 2").unwrap();
        assert!(matches!(big.eval(&c), Err(ExprError::Overflow { .. })));
    }
}
