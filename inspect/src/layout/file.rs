//! Reading layout files (TOML): the canonical catalogue and conventions, built-in or a user's.
//!
//! Every error names the file, the line and the field, because a layout file is hand-written
//! and a silent misreading of one is exactly the kind of bug this tool exists to catch.

use std::fmt;

use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::dtype::Dtype;
use crate::layout::expr::Expr;
use crate::layout::transform::{Arrangement, RopeOrder, TransformSpec};

/// A problem in a layout file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LayoutError {
    /// The file (a path, or `built-in NAME.toml`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field at fault (dotted, with indices), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The text of one layout file and where it came from, for error positions.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The file name shown in errors.
    pub file: &'a str,
    /// Its text.
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based line of byte offset `at`.
    pub fn line(&self, at: usize) -> usize {
        self.text
            .get(..at.min(self.text.len()))
            .map_or(1, |s| s.bytes().filter(|&b| b == b'\n').count() + 1)
    }

    /// An error at `span` (a byte range of the text) about `field`.
    pub fn error(
        &self,
        span: std::ops::Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> LayoutError {
        LayoutError {
            file: self.file.to_string(),
            line: Some(self.line(span.start)),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// Deserializes the whole file; TOML and schema errors (unknown fields, wrong types) keep
    /// the parser's line.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, LayoutError> {
        toml::from_str(self.text).map_err(|e| LayoutError {
            file: self.file.to_string(),
            line: e.span().map(|s| self.line(s.start)),
            field: None,
            message: e.message().trim().to_string(),
        })
    }
}

/// A short rendering of a value for error messages.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("\"{s}\""),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => format!(
            "a{} {}",
            if other.type_str().starts_with(['a', 'e', 'i', 'o', 'u']) {
                "n"
            } else {
                ""
            },
            other.type_str()
        ),
    }
}

/// Parses a size written as a string expression (`"nH·D"`) or an integer.
pub fn size(src: &Source<'_>, v: &Spanned<toml::Value>, field: &str) -> Result<Expr, LayoutError> {
    match v.get_ref() {
        toml::Value::String(s) => {
            Expr::parse(s).map_err(|e| src.error(v.span(), field, e.to_string()))
        }
        toml::Value::Integer(n) if *n >= 0 => Ok(Expr::Num(*n as usize)),
        other => Err(src.error(
            v.span(),
            field,
            format!(
                "expected a size (a number or a string such as \"nH·D\"), found {}",
                other.type_str()
            ),
        )),
    }
}

fn axis(src: &Source<'_>, v: &Spanned<toml::Value>, field: &str) -> Result<usize, LayoutError> {
    match v.get_ref() {
        toml::Value::Integer(n) if (0..=16).contains(n) => Ok(*n as usize),
        other => Err(src.error(
            v.span(),
            field,
            format!("expected an axis index 0..16, found {}", show(other)),
        )),
    }
}

/// The known transforms, as layout files spell them.
pub const TRANSFORMS: &[&str] = &[
    "transpose",
    "permute",
    "reverse_dims",
    "rope_permute",
    "fuse",
    "split",
    "stack",
    "unstack",
    "add",
    "scale",
    "cast",
];

/// Parses one transform: a bare name (`"transpose"`) or a one-key table
/// (`{ rope_permute = { heads = "nH", to = "interleaved" } }`).
pub fn transform(
    src: &Source<'_>,
    v: &Spanned<toml::Value>,
    field: &str,
) -> Result<TransformSpec, LayoutError> {
    let unknown = |name: &str| {
        src.error(
            v.span(),
            field,
            format!(
                "unknown transform `{name}` (known: {})",
                TRANSFORMS.join(", ")
            ),
        )
    };
    let (name, args) = match v.get_ref() {
        toml::Value::String(s) => (s.as_str(), None),
        toml::Value::Table(t) if t.len() == 1 => match t.iter().next() {
            Some((k, a)) => (k.as_str(), Some(a)),
            None => return Err(unknown("")),
        },
        other => {
            return Err(src.error(
                v.span(),
                field,
                format!(
                    "a transform is a name (\"transpose\") or a table with one key ({{ rope_permute = {{ … }} }}), found {}",
                    other.type_str()
                ),
            ))
        }
    };
    let name_norm = name.replace('-', "_");
    let at = |k: &str| format!("{field}.{name}.{k}");
    // Arguments as a table; spans inside a value table are not kept by `toml::Value`, so
    // errors inside it point at the transform's line.
    let table = |required: bool| -> Result<toml::Table, LayoutError> {
        match args {
            Some(toml::Value::Table(t)) => Ok(t.clone()),
            None if !required => Ok(toml::Table::new()),
            Some(other) => Err(src.error(
                v.span(),
                format!("{field}.{name}"),
                format!("expected a table of arguments, found {}", other.type_str()),
            )),
            None => Err(src.error(
                v.span(),
                field,
                format!("`{name}` needs arguments: {{ {name} = {{ … }} }}"),
            )),
        }
    };
    let spanned = |x: &toml::Value| Spanned::new(v.span(), x.clone());
    let check_keys = |t: &toml::Table, allowed: &[&str]| -> Result<(), LayoutError> {
        for k in t.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(src.error(
                    v.span(),
                    at(k),
                    format!("unknown argument (expected one of: {})", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    };
    let req = |t: &toml::Table, k: &str| -> Result<Spanned<toml::Value>, LayoutError> {
        t.get(k)
            .map(spanned)
            .ok_or_else(|| src.error(v.span(), at(k), "required argument is missing"))
    };
    Ok(match name_norm.as_str() {
        "transpose" if args.is_none() => TransformSpec::Transpose,
        "reverse_dims" if args.is_none() => TransformSpec::ReverseDims,
        "transpose" | "reverse_dims" => {
            return Err(src.error(
                v.span(),
                field,
                format!("`{name}` takes no arguments: write \"{name}\""),
            ))
        }
        "permute" => match args {
            Some(toml::Value::Array(a)) => TransformSpec::Permute(
                a.iter()
                    .enumerate()
                    .map(|(k, x)| axis(src, &spanned(x), &format!("{field}.permute[{k}]")))
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err(src.error(v.span(), field, "write { permute = [1, 0] }")),
        },
        "rope_permute" => {
            let t = table(true)?;
            check_keys(&t, &["heads", "to", "axis", "rotary"])?;
            let to = match req(&t, "to")?.get_ref() {
                toml::Value::String(s) if s == "interleaved" => RopeOrder::Interleaved,
                toml::Value::String(s) if s == "half" => RopeOrder::Half,
                other => {
                    return Err(src.error(
                        v.span(),
                        at("to"),
                        format!(
                            "expected \"interleaved\" or \"half\", found {}",
                            show(other)
                        ),
                    ))
                }
            };
            TransformSpec::RopePermute {
                heads: size(src, &req(&t, "heads")?, &at("heads"))?,
                rotary: t
                    .get("rotary")
                    .map(|r| size(src, &spanned(r), &at("rotary")))
                    .transpose()?,
                axis: t
                    .get("axis")
                    .map(|a| axis(src, &spanned(a), &at("axis")))
                    .transpose()?
                    .unwrap_or(0),
                to,
            }
        }
        "fuse" | "split" => {
            let t = table(true)?;
            let fuse = name_norm == "fuse";
            check_keys(
                &t,
                if fuse {
                    &["axis", "arrangement", "heads", "groups"]
                } else {
                    &["axis", "arrangement", "heads", "groups", "sizes"]
                },
            )?;
            let arrangement = match t.get("arrangement") {
                None => Arrangement::Concat,
                Some(toml::Value::String(s)) if s == "concat" => Arrangement::Concat,
                Some(toml::Value::String(s)) if s == "per-head" || s == "per_head" => {
                    Arrangement::PerHead
                }
                Some(toml::Value::String(s)) if s == "grouped" => Arrangement::Grouped,
                Some(other) => {
                    return Err(src.error(
                        v.span(),
                        at("arrangement"),
                        format!(
                            "expected \"concat\", \"per-head\" or \"grouped\", found {}",
                            show(other)
                        ),
                    ))
                }
            };
            let outer = match arrangement {
                Arrangement::Concat => {
                    if let Some(k) = ["heads", "groups"].iter().find(|k| t.contains_key(**k)) {
                        return Err(src.error(
                            v.span(),
                            at(k),
                            "only for arrangement \"per-head\" (heads) or \"grouped\" (groups)",
                        ));
                    }
                    Expr::Num(1)
                }
                Arrangement::PerHead => match t.get("heads") {
                    Some(h) => size(src, &spanned(h), &at("heads"))?,
                    None => Expr::Sym("nH".into()),
                },
                Arrangement::Grouped => match t.get("groups") {
                    Some(g) => size(src, &spanned(g), &at("groups"))?,
                    None => Expr::Sym("nKV".into()),
                },
            };
            let axis_v = t
                .get("axis")
                .map(|a| axis(src, &spanned(a), &at("axis")))
                .transpose()?
                .unwrap_or(0);
            if fuse {
                TransformSpec::Fuse {
                    axis: axis_v,
                    arrangement,
                    outer,
                }
            } else {
                let sizes = match req(&t, "sizes")?.get_ref() {
                    toml::Value::Array(a) if !a.is_empty() => a
                        .iter()
                        .enumerate()
                        .map(|(k, x)| size(src, &spanned(x), &format!("{}[{k}]", at("sizes"))))
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(src.error(
                            v.span(),
                            at("sizes"),
                            format!("expected a non-empty array of sizes, found {}", show(other)),
                        ))
                    }
                };
                TransformSpec::Split {
                    axis: axis_v,
                    arrangement,
                    outer,
                    sizes,
                }
            }
        }
        "stack" | "unstack" => {
            let t = table(false)?;
            check_keys(&t, &["axis"])?;
            let axis_v = t
                .get("axis")
                .map(|a| axis(src, &spanned(a), &at("axis")))
                .transpose()?
                .unwrap_or(0);
            if name_norm == "stack" {
                TransformSpec::Stack { axis: axis_v }
            } else {
                TransformSpec::Unstack { axis: axis_v }
            }
        }
        "add" | "scale" => {
            let c = match args {
                Some(toml::Value::Float(f)) => *f,
                Some(toml::Value::Integer(i)) => *i as f64,
                _ => return Err(src.error(v.span(), field, format!("write {{ {name} = 1.0 }}"))),
            };
            if !c.is_finite() || (name_norm == "scale" && c == 0.0) {
                return Err(src.error(v.span(), field, format!("{c} is not a usable constant")));
            }
            if name_norm == "add" {
                TransformSpec::Add(c as f32)
            } else {
                TransformSpec::Scale(c as f32)
            }
        }
        "cast" => match args {
            Some(toml::Value::String(s)) => match Dtype::parse(&s.to_ascii_uppercase()) {
                Some(d @ (Dtype::F32 | Dtype::F16 | Dtype::BF16)) => TransformSpec::Cast(d),
                _ => {
                    return Err(src.error(
                        v.span(),
                        field,
                        format!("cannot cast to `{s}` (F32, F16, BF16)"),
                    ))
                }
            },
            _ => return Err(src.error(v.span(), field, "write { cast = \"BF16\" }")),
        },
        _ => return Err(unknown(name)),
    })
}

/// Parses a list of transforms.
pub fn transforms(
    src: &Source<'_>,
    list: &[Spanned<toml::Value>],
    field: &str,
) -> Result<Vec<TransformSpec>, LayoutError> {
    let specs: Vec<TransformSpec> = list
        .iter()
        .enumerate()
        .map(|(k, v)| transform(src, v, &format!("{field}[{k}]")))
        .collect::<Result<_, _>>()?;
    if let Some(k) = specs
        .iter()
        .position(|t| matches!(t, TransformSpec::Cast(_)))
    {
        if k + 1 != specs.len() {
            return Err(src.error(
                list[k].span(),
                format!("{field}[{k}]"),
                "a cast must be the last transform",
            ));
        }
    }
    Ok(specs)
}
