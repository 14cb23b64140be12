//! Conventions as data: how a convention names and transforms each canonical tensor.
//!
//! A convention is a list of rules, tried in order for every canonical tensor; the first that
//! matches says how that tensor (or a group of them, for fused and stacked layouts) is stored:
//! under which name(s), after which chain of transforms. A tensor no rule matches is stored under
//! its canonical name, unchanged. The built-in conventions (`layouts/hf.toml`, `flax.toml`) are
//! written in exactly the format a user's `--layout FILE` uses, so every test exercises it.
//!
//! ```toml
//! [convention]
//! name = "my-jax-port"
//! base = "flax"                        # rules of `flax` apply after these
//!
//! [[rule]]
//! canonical = "model.layers.{i}.self_attn.q_proj.weight"
//! stored = "params.decoder.layer_{i}.attn.wq"
//! transforms = [{ rope_permute = { heads = "nH", to = "interleaved" } }, "transpose"]
//! ```
//!
//! Names are patterns: `{i}` and `{j}` match a number (layer, expert), any other `{name}` matches
//! one or more characters, and the stored pattern reuses the captures. A rule may list several
//! canonical patterns (parts to `fuse`) or several stored ones (parts of a `split`); `{j}` in the
//! canonical pattern but not in the stored one means the experts are `stack`ed (and the other
//! way round, `unstack`ed).

use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::config::Arch;
use crate::layout::arch::Role;
use crate::layout::file::{self, LayoutError, Source};
use crate::layout::transform::TransformSpec;

/// One segment of a name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(String),
}

/// A name pattern such as `model.layers.{i}.self_attn.{proj}.weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written.
    pub text: String,
    segs: Vec<Seg>,
}

/// Captured variables of a match, in order of appearance.
pub type Captures = Vec<(String, String)>;

impl Pattern {
    /// Parses `text`; `{` … `}` delimit a variable name (letters, digits, `_`).
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let mut segs = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                segs.push(Seg::Lit(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("unclosed `{{` in `{text}`"));
            };
            let var = &rest[open + 1..open + close];
            if var.is_empty() || !var.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!("`{{{var}}}` in `{text}` is not a variable name"));
            }
            if matches!(segs.last(), Some(Seg::Var(_))) {
                return Err(format!(
                    "two variables side by side in `{text}` cannot be told apart"
                ));
            }
            segs.push(Seg::Var(var.to_string()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched `}}` in `{text}`"));
        }
        if !rest.is_empty() {
            segs.push(Seg::Lit(rest.to_string()));
        }
        if segs.is_empty() {
            return Err("an empty name pattern".into());
        }
        Ok(Pattern {
            text: text.to_string(),
            segs,
        })
    }

    /// The variables, in order.
    pub fn vars(&self) -> Vec<&str> {
        self.segs
            .iter()
            .filter_map(|s| match s {
                Seg::Var(v) => Some(v.as_str()),
                Seg::Lit(_) => None,
            })
            .collect()
    }

    /// Matches `name` whole, returning the captures. `{i}`/`{j}` capture digits only.
    pub fn matches(&self, name: &str) -> Option<Captures> {
        let mut caps = Vec::new();
        match_from(&self.segs, name, &mut caps).then_some(caps)
    }

    /// The name with `caps` substituted; `None` if a variable is not captured.
    pub fn fill(&self, caps: &[(String, String)]) -> Option<String> {
        let mut out = String::new();
        for s in &self.segs {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::Var(v) => out.push_str(&caps.iter().find(|(k, _)| k == v)?.1),
            }
        }
        Some(out)
    }
}

fn is_index_var(v: &str) -> bool {
    v == "i" || v == "j"
}

fn match_from(segs: &[Seg], name: &str, caps: &mut Captures) -> bool {
    match segs.split_first() {
        None => name.is_empty(),
        Some((Seg::Lit(l), rest)) => name
            .strip_prefix(l.as_str())
            .is_some_and(|n| match_from(rest, n, caps)),
        Some((Seg::Var(v), rest)) => {
            // A variable seen before must match the same text again.
            if let Some((_, val)) = caps.iter().find(|(k, _)| k == v) {
                let val = val.clone();
                return name
                    .strip_prefix(val.as_str())
                    .is_some_and(|n| match_from(rest, n, caps));
            }
            let ends: Vec<usize> = name.char_indices().map(|(i, c)| i + c.len_utf8()).collect();
            for end in ends {
                let cand = &name[..end];
                if is_index_var(v) && !cand.bytes().all(|b| b.is_ascii_digit()) {
                    break;
                }
                caps.push((v.clone(), cand.to_string()));
                if match_from(rest, &name[end..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

/// Where a stored tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredAs {
    /// Under these names (one per stored part).
    Names(Vec<Pattern>),
    /// Not stored in this convention at all (a buffer Flax has no place for).
    Omitted,
}

/// One rule of a convention.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Canonical name patterns (one per part); empty matches any name the filters accept.
    pub canonical: Vec<Pattern>,
    /// Stored names, or none.
    pub stored: StoredAs,
    /// Only tensors of these roles.
    pub roles: Option<Vec<Role>>,
    /// Only these architectures.
    pub archs: Option<Vec<Arch>>,
    /// Canonical → stored.
    pub transforms: Vec<TransformSpec>,
    /// The stored layout in words (default: the canonical layout, or the chain).
    pub layout: Option<String>,
    /// A tied lm_head is stored anyway (FlaxLlama owns its `lm_head`).
    pub tied_stored: bool,
    /// File and line the rule comes from.
    pub origin: (String, usize),
}

/// A named convention.
#[derive(Debug, Clone)]
pub struct Convention {
    /// Short name (`hf`, `flax`, a user's).
    pub name: String,
    /// Name in prose (`HF`, `Flax`).
    pub display: String,
    /// One line on what it is.
    pub description: String,
    /// `__metadata__["format"]` when converting into it.
    pub format: String,
    /// Prefixes a stored name may carry (`params.`).
    pub read_prefixes: Vec<String>,
    /// A stored name may omit the architecture's base prefix (`model.`, `transformer.`).
    pub strip_base_prefix: bool,
    /// Rules, own first, then the base convention's.
    pub rules: Vec<Rule>,
    /// The file it was read from (`built-in hf.toml` for built-ins).
    pub origin: String,
    /// Shipped with orient.
    pub builtin: bool,
    /// The architectures it applies to (`None`: all). A catalogue for another architecture
    /// leaves it out, so that a convention that differs from another only for some
    /// architectures (hf-packed from hf) never competes with it elsewhere.
    pub archs: Option<Vec<Arch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    convention: RawHeader,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Spanned<String>,
    #[serde(default)]
    display: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    base: Option<Spanned<String>>,
    #[serde(default)]
    read_prefixes: Option<Vec<String>>,
    #[serde(default)]
    strip_base_prefix: Option<bool>,
    #[serde(default)]
    archs: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawStored {
    Omit(bool),
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    canonical: Option<Spanned<OneOrMany>>,
    stored: Spanned<RawStored>,
    #[serde(default)]
    roles: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    archs: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    transforms: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    layout: Option<String>,
    #[serde(default)]
    tied: Option<Spanned<String>>,
}

/// The built-in conventions, in the order detection lists them.
pub const BUILTIN: &[(&str, &str)] = &[
    ("hf", include_str!("../../layouts/hf.toml")),
    ("flax", include_str!("../../layouts/flax.toml")),
    ("hf-packed", include_str!("../../layouts/hf-packed.toml")),
];

/// The built-in conventions, parsed once.
pub fn builtins() -> &'static [Arc<Convention>] {
    static BUILT: std::sync::OnceLock<Vec<Arc<Convention>>> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let mut out: Vec<Arc<Convention>> = Vec::new();
        for (name, text) in BUILTIN {
            let file = format!("built-in {name}.toml");
            let src = Source { file: &file, text };
            // Built-in files are exercised by every test; a failure is a build defect.
            let c = parse(&src, &out).unwrap_or_else(|e| panic!("{e}"));
            out.push(Arc::new(Convention { builtin: true, ..c }));
        }
        out
    })
}

/// The built-in convention named `name`.
pub fn builtin(name: &str) -> Option<Arc<Convention>> {
    builtins().iter().find(|c| c.name == name).cloned()
}

/// Reads a user's layout file (its `base` may name a built-in).
pub fn load(path: &std::path::Path) -> Result<Convention, LayoutError> {
    load_with(path, builtins())
}

/// Reads a user's layout file whose `base` may name any of `known`.
pub fn load_with(
    path: &std::path::Path,
    known: &[Arc<Convention>],
) -> Result<Convention, LayoutError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| LayoutError {
        file: file.clone(),
        line: None,
        field: None,
        message: e.to_string(),
    })?;
    parse(
        &Source {
            file: &file,
            text: &text,
        },
        known,
    )
}

/// Parses a convention file; `base` names resolve against `known`.
pub fn parse(src: &Source<'_>, known: &[Arc<Convention>]) -> Result<Convention, LayoutError> {
    let raw: RawFile = src.parse()?;
    let h = raw.convention;
    let name = h.name.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.".contains(c))
    {
        return Err(src.error(
            h.name.span(),
            "convention.name",
            "a name is letters, digits, `-`, `_` or `.`",
        ));
    }
    if known.iter().any(|c| c.builtin && c.name == name) {
        return Err(src.error(
            h.name.span(),
            "convention.name",
            format!("`{name}` is a built-in convention; choose another name"),
        ));
    }
    let base = match &h.base {
        Some(b) => Some(
            known
                .iter()
                .find(|c| c.name == *b.get_ref())
                .cloned()
                .ok_or_else(|| {
                    src.error(
                        b.span(),
                        "convention.base",
                        format!(
                            "unknown convention `{}` (known: {})",
                            b.get_ref(),
                            known
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?,
        ),
        None => None,
    };
    let archs = h
        .archs
        .as_ref()
        .map(|a| arch_list(src, a, "convention.archs"))
        .transpose()?;
    let mut rules = raw
        .rule
        .iter()
        .enumerate()
        .map(|(k, r)| rule(src, r, k))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(b) = &base {
        rules.extend(b.rules.iter().cloned());
    }
    Ok(Convention {
        display: h.display.unwrap_or_else(|| name.clone()),
        description: h
            .description
            .or_else(|| base.as_ref().map(|b| format!("based on {}", b.name)))
            .unwrap_or_default(),
        format: h
            .format
            .or_else(|| base.as_ref().map(|b| b.format.clone()))
            .unwrap_or_else(|| name.clone()),
        read_prefixes: h
            .read_prefixes
            .or_else(|| base.as_ref().map(|b| b.read_prefixes.clone()))
            .unwrap_or_default(),
        strip_base_prefix: h
            .strip_base_prefix
            .or_else(|| base.as_ref().map(|b| b.strip_base_prefix))
            .unwrap_or(false),
        name,
        rules,
        origin: src.file.to_string(),
        builtin: false,
        archs,
    })
}

/// A list of `model_type`s, each known.
fn arch_list(
    src: &Source<'_>,
    a: &Spanned<Vec<String>>,
    field: &str,
) -> Result<Vec<Arch>, LayoutError> {
    a.get_ref()
        .iter()
        .map(|n| {
            Arch::from_model_type(n).ok_or_else(|| {
                src.error(
                    a.span(),
                    field,
                    format!(
                        "unknown architecture `{n}` (known: {})",
                        Arch::names().join(", ")
                    ),
                )
            })
        })
        .collect()
}

fn rule(src: &Source<'_>, r: &RawRule, k: usize) -> Result<Rule, LayoutError> {
    let field = |f: &str| format!("rule[{k}].{f}");
    let line = src.line(r.stored.span().start);
    let patterns = |list: Vec<String>,
                    span: std::ops::Range<usize>,
                    f: &str|
     -> Result<Vec<Pattern>, LayoutError> {
        if list.is_empty() {
            return Err(src.error(span.clone(), field(f), "an empty list of names"));
        }
        list.iter()
            .map(|t| Pattern::parse(t).map_err(|e| src.error(span.clone(), field(f), e)))
            .collect()
    };
    let canonical = match &r.canonical {
        None => Vec::new(),
        Some(c) => match c.get_ref() {
            OneOrMany::One(s) => patterns(vec![s.clone()], c.span(), "canonical")?,
            OneOrMany::Many(v) => patterns(v.clone(), c.span(), "canonical")?,
        },
    };
    let stored = match r.stored.get_ref() {
        RawStored::Omit(false) => StoredAs::Omitted,
        RawStored::Omit(true) => {
            return Err(src.error(
                r.stored.span(),
                field("stored"),
                "write a name pattern, or `false` for a tensor this convention does not store",
            ))
        }
        RawStored::One(s) => StoredAs::Names(patterns(vec![s.clone()], r.stored.span(), "stored")?),
        RawStored::Many(v) => StoredAs::Names(patterns(v.clone(), r.stored.span(), "stored")?),
    };
    if canonical.is_empty() && !matches!(stored, StoredAs::Omitted) && r.roles.is_none() {
        return Err(src.error(
            r.stored.span(),
            field("canonical"),
            "a rule that stores tensors needs `canonical` name patterns",
        ));
    }
    // Every stored variable must come from the canonical names, except `{j}` when unstacking.
    if let StoredAs::Names(names) = &stored {
        let have: Vec<&str> = canonical.iter().flat_map(|p| p.vars()).collect();
        for p in names {
            for v in p.vars() {
                if !have.contains(&v) && v != "j" {
                    return Err(src.error(
                        r.stored.span(),
                        field("stored"),
                        format!("`{{{v}}}` is not captured by the canonical pattern"),
                    ));
                }
            }
        }
        if canonical.is_empty() {
            return Err(src.error(
                r.stored.span(),
                field("canonical"),
                "a rule that stores tensors needs `canonical` name patterns",
            ));
        }
    }
    let roles = r
        .roles
        .as_ref()
        .map(|rs| {
            rs.get_ref()
                .iter()
                .map(|n| {
                    Role::from_name(n).ok_or_else(|| {
                        src.error(
                            rs.span(),
                            field("roles"),
                            format!(
                                "unknown role `{n}` (known: {})",
                                Role::ALL
                                    .iter()
                                    .map(|r| r.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let archs = r
        .archs
        .as_ref()
        .map(|a| arch_list(src, a, &field("archs")))
        .transpose()?;
    let tied_stored = match &r.tied {
        None => false,
        Some(t) if t.get_ref() == "stored" => true,
        Some(t) if t.get_ref() == "omitted" => false,
        Some(t) => {
            return Err(src.error(
                t.span(),
                field("tied"),
                format!(
                    "expected \"stored\" or \"omitted\", found \"{}\"",
                    t.get_ref()
                ),
            ))
        }
    };
    Ok(Rule {
        canonical,
        stored,
        roles,
        archs,
        transforms: file::transforms(src, &r.transforms, &field("transforms"))?,
        layout: r.layout.clone(),
        tied_stored,
        origin: (src.file.to_string(), line),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_and_fill() {
        let p = Pattern::parse("model.layers.{i}.self_attn.{proj}.weight").unwrap();
        let c = p
            .matches("model.layers.12.self_attn.q_proj.weight")
            .unwrap();
        assert_eq!(
            c,
            [("i".into(), "12".into()), ("proj".into(), "q_proj".into())]
        );
        assert_eq!(
            Pattern::parse("blk.{i}.{proj}").unwrap().fill(&c).unwrap(),
            "blk.12.q_proj"
        );
        assert!(p
            .matches("model.layers.x.self_attn.q_proj.weight")
            .is_none());
        assert!(p.matches("model.layers.1.self_attn.q_proj.bias").is_none());
        let any = Pattern::parse("{path}.weight").unwrap();
        assert_eq!(any.matches("a.b.weight").unwrap()[0].1, "a.b");
        assert!(Pattern::parse("{a}{b}").is_err());
        assert!(Pattern::parse("x.{").is_err());
        assert!(Pattern::parse("x.{a b}").is_err());
    }

    #[test]
    fn builtins_parse() {
        let b = builtins();
        assert_eq!(
            b.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["hf", "flax", "hf-packed"]
        );
        assert!(b[0].rules.is_empty());
        assert_eq!(b[1].read_prefixes, ["params."]);
        assert_eq!((&b[0].archs, &b[1].archs), (&None, &None));
        assert_eq!(
            b[2].archs.as_deref(),
            Some([Arch::Mixtral, Arch::Qwen2Moe, Arch::Qwen3Moe, Arch::GptNeox].as_slice())
        );
    }

    #[test]
    fn user_files_inherit_and_errors_name_the_line() {
        let text = "[convention]\nname = \"port\"\nbase = \"flax\"\n\n[[rule]]\ncanonical = \"model.layers.{i}.self_attn.q_proj.weight\"\nstored = \"dec.{i}.wq\"\ntransforms = [\"transpose\"]\n";
        let c = parse(
            &Source {
                file: "p.toml",
                text,
            },
            builtins(),
        )
        .unwrap();
        assert_eq!(c.rules.len(), 1 + builtin("flax").unwrap().rules.len());
        assert_eq!(c.format, "flax");
        assert_eq!(c.rules[0].origin, ("p.toml".to_string(), 7));
        for (text, want) in [
            ("[convention]\nname = \"hf\"\n", "p.toml:2: `convention.name`: `hf` is a built-in convention; choose another name"),
            ("[convention]\nname = \"x\"\nbase = \"gguf2\"\n", "p.toml:3: `convention.base`: unknown convention `gguf2` (known: hf, flax, hf-packed)"),
            ("[convention]\nname = \"x\"\n[[rule]]\ncanonical = \"a.{i}\"\nstored = \"b.{k}\"\n", "p.toml:5: `rule[0].stored`: `{k}` is not captured by the canonical pattern"),
            ("[convention]\nname = \"x\"\n[[rule]]\ncanonical = \"a\"\nstored = \"b\"\ntransforms = [{ rope_permute = { heads = \"nH\" } }]\n", "p.toml:6: `rule[0].transforms[0].rope_permute.to`: required argument is missing"),
            ("[convention]\nname = \"x\"\n[[rule]]\ncanonical = \"a\"\nstored = \"b\"\nroles = [\"lin\"]\n", "p.toml:6: `rule[0].roles`: unknown role `lin` (known: embedding, position-embedding, linear, conv1d, fused-qkv, norm, bias, lm-head, buffer)"),
            ("[convention]\nname = \"x\"\n[[rule]]\ncanonical = \"a\"\nstored = \"b\"\ntransforms = [{ cast = \"BF16\" }, \"transpose\"]\n", "p.toml:6: `rule[0].transforms[0]`: a cast must be the last transform"),
        ] {
            let e = parse(&Source { file: "p.toml", text }, builtins()).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        let e = parse(&Source { file: "p.toml", text: "[convention]\nname = \"x\"\n[[rule]]\ncanonical = \"a\"\nstored = \"b\"\nfoo = 1\n" }, builtins()).unwrap_err();
        assert!(
            e.to_string().starts_with("p.toml:6: unknown field `foo`"),
            "{e}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod load_with_tests {
    use super::*;

    /// A layout file may name an earlier user layout as its `base` (what `--layout A --layout
    /// B` loads): `load_with` resolves it against the conventions it is given.
    #[test]
    fn a_base_may_be_an_earlier_user_layout() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("port.toml");
        std::fs::write(
            &first,
            "[convention]\nname = \"port\"\nbase = \"flax\"\n[[rule]]\ncanonical = \"model.norm.weight\"\nstored = \"final_norm\"\n",
        )
        .unwrap();
        let second = dir.path().join("port2.toml");
        std::fs::write(&second, "[convention]\nname = \"port2\"\nbase = \"port\"\n").unwrap();
        let mut known = builtins().to_vec();
        known.push(Arc::new(load_with(&first, &known).unwrap()));
        let c = load_with(&second, &known).unwrap();
        assert_eq!(c.rules[0].origin.0, first.display().to_string());
        assert!(load(&second).is_err());
    }
}
