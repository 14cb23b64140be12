//! Meta's original Llama checkpoints: `params.json` and how the model-parallel shards
//! `consolidated.NN.pth` combine. Pure data, no I/O: callers read the files (the shards
//! with [`super::torch::parse`]) and pass what they hold.
//!
//! The numbers follow transformers' `convert_llama_weights_to_hf.py`:
//! `intermediate_size = compute_intermediate_size(dim, ffn_dim_multiplier, multiple_of)`,
//! `head_dim = dim / n_heads`, `num_key_value_heads = n_kv_heads or n_heads`,
//! `rope_theta` defaulting to 10000, and llama3 RoPE scaling (factor 8, or 32 for
//! Llama 3.2; low 1, high 4, original context 8192) for Llama 3.1, 3.2 and Guard-3. The
//! converter decides the scaling from the Llama version it is told, not from
//! `use_scaled_rope`; here the flag is used when no version is given and must agree
//! with the version when one is.
//!
//! Shards: column-parallel weights (`wq`, `wk`, `wv`, `w1`, `w3`, `output`) are split
//! along dim 0, row-parallel ones (`wo`, `w2`) along dim 1, and norms are replicated.
//! `tok_embeddings` is split along dim 1 in Llama 1/2 (fairscale `ParallelEmbedding`)
//! and along dim 0 in Llama 3 (`VocabParallelEmbedding`); the converter concatenates
//! on `dim=0 if llama 3 else 1`. Here the axis is read from the shard shapes: the one
//! whose size is not `dim`.

use std::collections::HashSet;

use super::{checked_numel, Encoding, RawFile};

/// What is wrong with `params.json` or a set of shards.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetaError {
    /// `params.json` is not valid JSON or lacks a required field.
    #[error("params.json is invalid: {reason}")]
    InvalidJson {
        /// serde_json's description.
        reason: String,
    },
    /// A field with an impossible value.
    #[error("params.json: {field} {reason}")]
    InvalidParam {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `use_scaled_rope` is set but nothing says which factor.
    #[error("params.json sets use_scaled_rope but not rope_scaling_factor: the factor is 8 for Llama 3.1 and 32 for Llama 3.2; say which version this is")]
    NeedVersion,
    /// `use_scaled_rope` disagrees with the Llama version given.
    #[error("params.json says use_scaled_rope = {use_scaled_rope}, but Llama {version} {} scaled RoPE", if *use_scaled_rope { "does not use" } else { "uses" })]
    ScalingDisagrees {
        /// The flag.
        use_scaled_rope: bool,
        /// The version given.
        version: LlamaVersion,
    },
    /// No shards.
    #[error("no consolidated.NN.pth shards given")]
    NoShards,
    /// A tensor present in one shard and missing in another.
    #[error("tensor `{name}` is in shard {present} but not in shard {missing}")]
    MissingInShard {
        /// The tensor.
        name: String,
        /// A shard that has it.
        present: usize,
        /// A shard that lacks it.
        missing: usize,
    },
    /// A name that is not part of Meta's Llama layout.
    #[error(
        "tensor `{name}` is not part of Meta's Llama layout; cannot tell how its shards combine"
    )]
    UnknownTensor {
        /// The tensor.
        name: String,
    },
    /// Shards whose encodings or shapes cannot combine.
    #[error("tensor `{name}`: shard {shard} is {found}, but shard 0 is {first} ({why})")]
    ShardMismatch {
        /// The tensor.
        name: String,
        /// The disagreeing shard.
        shard: usize,
        /// What it holds.
        found: String,
        /// What shard 0 holds.
        first: String,
        /// What had to agree.
        why: &'static str,
    },
    /// Embedding shards whose shape fits neither split.
    #[error("tok_embeddings shards are {shape:?} × {shards}; neither dimension matches dim = {dim} or dim / {shards}")]
    EmbeddingSplit {
        /// Shard shape.
        shape: Vec<usize>,
        /// Shard count.
        shards: usize,
        /// Model dim.
        dim: usize,
    },
    /// A derived size that disagrees with the tensors.
    #[error("tensor `{name}` has {found} rows, but params.json gives {expected} ({what})")]
    ParamsDisagree {
        /// The tensor.
        name: String,
        /// Rows found.
        found: usize,
        /// Rows expected.
        expected: usize,
        /// The derived quantity.
        what: &'static str,
    },
    /// A replicated tensor whose copies differ.
    #[error("replicated tensor `{name}` differs between shard 0 and shard {shard} (first at byte {byte})")]
    ReplicaDiffers {
        /// The tensor.
        name: String,
        /// The shard.
        shard: usize,
        /// First differing byte.
        byte: usize,
    },
}

/// A Llama release, as `convert_llama_weights_to_hf.py --llama_version` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaVersion {
    /// Llama 1.
    V1,
    /// Llama 2.
    V2,
    /// Llama 3.
    V3,
    /// Llama 3.1.
    V3_1,
    /// Llama 3.2.
    V3_2,
    /// Llama Guard 3.
    Guard3,
}

impl std::fmt::Display for LlamaVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LlamaVersion::V1 => "1",
            LlamaVersion::V2 => "2",
            LlamaVersion::V3 => "3",
            LlamaVersion::V3_1 => "3.1",
            LlamaVersion::V3_2 => "3.2",
            LlamaVersion::Guard3 => "Guard-3",
        })
    }
}

impl LlamaVersion {
    /// Whether the converter treats it as Llama 3 (`is_llama_3`).
    pub fn is_llama_3(self) -> bool {
        matches!(
            self,
            LlamaVersion::V3 | LlamaVersion::V3_1 | LlamaVersion::V3_2 | LlamaVersion::Guard3
        )
    }

    /// The converter's `CONTEXT_LENGTH_FOR_VERSION`.
    pub fn context_length(self) -> usize {
        match self {
            LlamaVersion::V1 => 2048,
            LlamaVersion::V2 => 4096,
            LlamaVersion::V3 => 8192,
            LlamaVersion::V3_1 | LlamaVersion::V3_2 | LlamaVersion::Guard3 => 131072,
        }
    }

    /// The llama3 RoPE factor the converter writes, if any.
    fn rope_factor(self) -> Option<f64> {
        match self {
            LlamaVersion::V3_1 | LlamaVersion::Guard3 => Some(8.0),
            LlamaVersion::V3_2 => Some(32.0),
            _ => None,
        }
    }
}

/// `params.json` as Meta ships it (also accepted nested under `"model"`, as the
/// converter does). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct MetaParams {
    /// Hidden size.
    pub dim: usize,
    /// Number of layers.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Key/value heads (absent before GQA: then `n_heads`).
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// Vocabulary size; `-1` in Llama 1/2 files (the tokenizer decides).
    #[serde(default)]
    pub vocab_size: Option<i64>,
    /// FFN size rounding (default 256).
    #[serde(default)]
    pub multiple_of: Option<usize>,
    /// FFN size multiplier (default 1).
    #[serde(default)]
    pub ffn_dim_multiplier: Option<f64>,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// RoPE base (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Llama 3.1+ frequency scaling.
    #[serde(default)]
    pub use_scaled_rope: bool,
    /// The scaling factor, when the file states it.
    #[serde(default)]
    pub rope_scaling_factor: Option<f64>,
}

/// llama3 RoPE scaling, as the converter writes it into `rope_scaling`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor` (1).
    pub low_freq_factor: f64,
    /// `high_freq_factor` (4).
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings` (8192).
    pub original_max_position_embeddings: usize,
}

/// The HF `LlamaConfig` numbers the converter derives from `params.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfNumbers {
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads`.
    pub num_key_value_heads: usize,
    /// `dim / n_heads`.
    pub head_dim: usize,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f64,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `vocab_size`, when `params.json` states it (not `-1`).
    pub vocab_size: Option<usize>,
    /// `rope_scaling`.
    pub rope_scaling: Option<Llama3Scaling>,
    /// `max_position_embeddings`, when the version is known.
    pub max_position_embeddings: Option<usize>,
    /// `tie_word_embeddings` (only Llama 3.2), when the version is known.
    pub tie_word_embeddings: Option<bool>,
}

/// transformers' `compute_intermediate_size(n, ffn_dim_multiplier, multiple_of)`:
/// `multiple_of * ((int(ffn_dim_multiplier * int(8 * n / 3)) + multiple_of - 1) // multiple_of)`,
/// with Python's float arithmetic and truncation. `None` on overflow or `multiple_of = 0`.
pub fn compute_intermediate_size(
    n: usize,
    ffn_dim_multiplier: f64,
    multiple_of: usize,
) -> Option<usize> {
    if multiple_of == 0 || !ffn_dim_multiplier.is_finite() || ffn_dim_multiplier < 0.0 {
        return None;
    }
    let base = (8.0 * n as f64 / 3.0).trunc();
    let scaled = (ffn_dim_multiplier * base).trunc();
    if scaled >= usize::MAX as f64 / 2.0 {
        return None;
    }
    let scaled = scaled as usize;
    scaled
        .checked_add(multiple_of - 1)
        .map(|x| x / multiple_of)
        .and_then(|k| k.checked_mul(multiple_of))
}

impl MetaParams {
    /// Parses `params.json` (a top-level `"model"` object is unwrapped first).
    pub fn parse(json: &str) -> Result<MetaParams, MetaError> {
        let invalid = |e: serde_json::Error| MetaError::InvalidJson {
            reason: e.to_string(),
        };
        let mut v: serde_json::Value = serde_json::from_str(json).map_err(invalid)?;
        if let Some(inner) = v.get_mut("model").filter(|m| m.is_object()) {
            v = inner.take();
        }
        let p: MetaParams = serde_json::from_value(v).map_err(invalid)?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<(), MetaError> {
        let bad = |field, reason: String| Err(MetaError::InvalidParam { field, reason });
        if self.dim == 0 || self.n_heads == 0 || self.n_layers == 0 {
            return bad("dim, n_heads and n_layers", "must be positive".into());
        }
        if !self.dim.is_multiple_of(self.n_heads) || !(self.dim / self.n_heads).is_multiple_of(2) {
            return bad(
                "dim",
                format!(
                    "{} is not n_heads ({}) × an even head size",
                    self.dim, self.n_heads
                ),
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return bad(
                "n_kv_heads",
                format!("{kv} does not divide n_heads ({})", self.n_heads),
            );
        }
        if self.multiple_of == Some(0) {
            return bad("multiple_of", "is 0".into());
        }
        if !self.norm_eps.is_finite() || self.norm_eps <= 0.0 {
            return bad(
                "norm_eps",
                format!("{} is not a positive number", self.norm_eps),
            );
        }
        if compute_intermediate_size(
            self.dim,
            self.ffn_dim_multiplier.unwrap_or(1.0),
            self.multiple_of.unwrap_or(256),
        )
        .is_none()
        {
            return bad(
                "ffn_dim_multiplier",
                "gives no valid intermediate size".into(),
            );
        }
        Ok(())
    }

    /// Key/value heads (`n_kv_heads`, else `n_heads`).
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// `dim / n_heads`.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// The FFN size, as the converter computes it.
    pub fn intermediate_size(&self) -> usize {
        compute_intermediate_size(
            self.dim,
            self.ffn_dim_multiplier.unwrap_or(1.0),
            self.multiple_of.unwrap_or(256),
        )
        .unwrap_or(0)
    }

    /// The llama3 RoPE scaling the converter writes, from the version when given (it
    /// must agree with `use_scaled_rope`), else from `use_scaled_rope` and
    /// `rope_scaling_factor`.
    pub fn rope_scaling(
        &self,
        version: Option<LlamaVersion>,
    ) -> Result<Option<Llama3Scaling>, MetaError> {
        let factor = match version {
            Some(v) => {
                let f = v.rope_factor();
                if self.use_scaled_rope != f.is_some() {
                    return Err(MetaError::ScalingDisagrees {
                        use_scaled_rope: self.use_scaled_rope,
                        version: v,
                    });
                }
                f
            }
            None if self.use_scaled_rope => {
                Some(self.rope_scaling_factor.ok_or(MetaError::NeedVersion)?)
            }
            None => None,
        };
        Ok(factor.map(|factor| Llama3Scaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }))
    }

    /// The HF config numbers. Those that depend on the Llama version are `None`
    /// without one.
    pub fn hf_numbers(&self, version: Option<LlamaVersion>) -> Result<HfNumbers, MetaError> {
        let rope_theta = self.rope_theta.unwrap_or(10000.0);
        Ok(HfNumbers {
            hidden_size: self.dim,
            intermediate_size: self.intermediate_size(),
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            num_key_value_heads: self.kv_heads(),
            head_dim: self.head_dim(),
            rms_norm_eps: self.norm_eps,
            rope_theta,
            vocab_size: self
                .vocab_size
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0),
            rope_scaling: self.rope_scaling(version)?,
            max_position_embeddings: version.map(|v| {
                if rope_theta > 10000.0 && !v.is_llama_3() {
                    16384
                } else {
                    v.context_length()
                }
            }),
            tie_word_embeddings: version.map(|v| v == LlamaVersion::V3_2),
        })
    }
}

/// How the shards of one tensor combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Concatenate the shards along this axis (in shard order).
    Concat {
        /// The axis.
        axis: usize,
    },
    /// Every shard holds the whole tensor; the copies must be equal
    /// ([`check_replicas`]).
    Replicated,
}

/// One tensor of a Meta checkpoint and how to assemble it from the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    /// Meta name (`layers.0.attention.wq.weight`).
    pub name: String,
    /// How the shards combine.
    pub combine: Combine,
    /// Encoding (the same in every shard).
    pub encoding: Encoding,
    /// Each shard's shape.
    pub shard_shapes: Vec<Vec<usize>>,
    /// The assembled shape.
    pub shape: Vec<usize>,
}

/// The rule for a Meta tensor name; `None` for names outside the layout. The embedding
/// is resolved separately.
fn rule(name: &str) -> Option<Rule> {
    let local = match name.strip_prefix("layers.") {
        Some(rest) => {
            let (n, tail) = rest.split_once('.')?;
            n.parse::<usize>().ok()?;
            tail
        }
        None => name,
    };
    Some(match local {
        "attention.wq.weight"
        | "attention.wk.weight"
        | "attention.wv.weight"
        | "feed_forward.w1.weight"
        | "feed_forward.w3.weight"
        | "output.weight"
        | "attention.wq.bias"
        | "attention.wk.bias"
        | "attention.wv.bias" => Rule::Axis(0),
        "attention.wo.weight" | "feed_forward.w2.weight" => Rule::Axis(1),
        "attention_norm.weight"
        | "ffn_norm.weight"
        | "norm.weight"
        | "rope.freqs"
        | "attention.wo.bias"
        | "feed_forward.w2.bias" => Rule::Replicated,
        "tok_embeddings.weight" if local.len() == name.len() => Rule::Embedding,
        _ => return None,
    })
}

enum Rule {
    Axis(usize),
    Replicated,
    Embedding,
}

/// Describes, for every tensor of a set of `consolidated.NN.pth` shards (in shard
/// order), how the shards combine and the assembled shape. Checks that every shard has
/// the same tensors with the same encodings, that shapes agree off the concatenation
/// axis, and that the FFN size matches `params.json`.
pub fn plan_shards(params: &MetaParams, shards: &[RawFile]) -> Result<Vec<ShardPlan>, MetaError> {
    let first = shards.first().ok_or(MetaError::NoShards)?;
    let names: HashSet<&str> = first.tensors.iter().map(|t| t.name.as_str()).collect();
    for (i, shard) in shards.iter().enumerate().skip(1) {
        let here: HashSet<&str> = shard.tensors.iter().map(|t| t.name.as_str()).collect();
        if let Some(n) = names.iter().find(|n| !here.contains(*n)) {
            return Err(MetaError::MissingInShard {
                name: (*n).to_owned(),
                present: 0,
                missing: i,
            });
        }
        if let Some(n) = here.iter().find(|n| !names.contains(*n)) {
            return Err(MetaError::MissingInShard {
                name: (*n).to_owned(),
                present: i,
                missing: 0,
            });
        }
    }
    let mut plans = Vec::with_capacity(first.tensors.len());
    for t in &first.tensors {
        let parts: Vec<_> = shards
            .iter()
            .map(|s| s.tensor(&t.name).ok_or(MetaError::NoShards))
            .collect::<Result<_, _>>()?;
        let combine = match rule(&t.name).ok_or_else(|| MetaError::UnknownTensor {
            name: t.name.clone(),
        })? {
            Rule::Axis(a) => Combine::Concat { axis: a },
            Rule::Replicated => Combine::Replicated,
            Rule::Embedding => Combine::Concat {
                axis: embedding_axis(params, &t.shape, shards.len())?,
            },
        };
        let mismatch = |shard: usize, found: String, first: String, why| MetaError::ShardMismatch {
            name: t.name.clone(),
            shard,
            found,
            first,
            why,
        };
        let mut shape = t.shape.clone();
        for (i, p) in parts.iter().enumerate().skip(1) {
            if p.encoding != t.encoding {
                return Err(mismatch(
                    i,
                    p.encoding.to_string(),
                    t.encoding.to_string(),
                    "encodings must match",
                ));
            }
            let agree = p.shape.len() == t.shape.len()
                && p.shape.iter().zip(&t.shape).enumerate().all(|(d, (a, b))| {
                    a == b || matches!(combine, Combine::Concat { axis } if axis == d)
                });
            if !agree {
                return Err(mismatch(
                    i,
                    format!("{:?}", p.shape),
                    format!("{:?}", t.shape),
                    "shapes must match off the concatenation axis",
                ));
            }
            if let Combine::Concat { axis } = combine {
                shape[axis] = shape[axis].checked_add(p.shape[axis]).ok_or_else(|| {
                    mismatch(
                        i,
                        format!("{:?}", p.shape),
                        format!("{:?}", t.shape),
                        "the sizes overflow",
                    )
                })?;
            }
        }
        if let Combine::Concat { axis } = combine {
            if axis >= shape.len() || checked_numel(&shape).is_none() {
                return Err(mismatch(
                    0,
                    format!("{:?}", t.shape),
                    format!("{:?}", t.shape),
                    "a concatenated tensor needs that axis",
                ));
            }
        }
        if t.name.ends_with("feed_forward.w1.weight") && shape[0] != params.intermediate_size() {
            return Err(MetaError::ParamsDisagree {
                name: t.name.clone(),
                found: shape[0],
                expected: params.intermediate_size(),
                what: "intermediate_size from dim, ffn_dim_multiplier and multiple_of",
            });
        }
        plans.push(ShardPlan {
            name: t.name.clone(),
            combine,
            encoding: t.encoding,
            shard_shapes: parts.iter().map(|p| p.shape.clone()).collect(),
            shape,
        });
    }
    Ok(plans)
}

fn embedding_axis(
    params: &MetaParams,
    shard_shape: &[usize],
    shards: usize,
) -> Result<usize, MetaError> {
    let err = || MetaError::EmbeddingSplit {
        shape: shard_shape.to_vec(),
        shards,
        dim: params.dim,
    };
    let [_, cols] = shard_shape else {
        return Err(err());
    };
    if shards == 1 || *cols == params.dim {
        Ok(0)
    } else if cols.checked_mul(shards) == Some(params.dim) {
        Ok(1)
    } else {
        Err(err())
    }
}

/// Checks that the copies of a replicated tensor (one byte slice per shard) are equal.
pub fn check_replicas(name: &str, parts: &[&[u8]]) -> Result<(), MetaError> {
    let Some((first, rest)) = parts.split_first() else {
        return Ok(());
    };
    for (i, p) in rest.iter().enumerate() {
        if p != first {
            let byte = first
                .iter()
                .zip(p.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(first.len().min(p.len()));
            return Err(MetaError::ReplicaDiffers {
                name: name.to_owned(),
                shard: i + 1,
                byte,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::formats::RawTensor;

    #[test]
    fn intermediate_sizes_of_real_models() {
        // (dim, ffn_dim_multiplier, multiple_of) → the HF intermediate_size of the release.
        for (dim, mult, multiple_of, want) in [
            (4096, 1.0, 256, 11008),   // Llama 2 7B
            (5120, 1.0, 256, 13824),   // Llama 2 13B
            (8192, 1.3, 4096, 28672),  // Llama 2 70B
            (4096, 1.3, 1024, 14336),  // Llama 3 8B
            (8192, 1.3, 4096, 28672),  // Llama 3 70B
            (16384, 1.2, 4096, 53248), // Llama 3.1 405B
            (2048, 1.5, 256, 8192),    // Llama 3.2 1B
            (3072, 1.0, 256, 8192),    // Llama 3.2 3B
            (6656, 1.0, 256, 17920),   // Llama 1 33B
        ] {
            assert_eq!(
                compute_intermediate_size(dim, mult, multiple_of),
                Some(want),
                "{dim} {mult} {multiple_of}"
            );
        }
        assert_eq!(compute_intermediate_size(64, 1.0, 0), None);
        assert_eq!(compute_intermediate_size(64, f64::NAN, 16), None);
    }

    const LLAMA2_7B: &str = r#"{"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}"#;
    const LLAMA31_8B: &str = r#"{"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32, "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": true, "vocab_size": 128256}"#;

    #[test]
    fn llama2_params() {
        let p = MetaParams::parse(LLAMA2_7B).unwrap();
        let hf = p.hf_numbers(Some(LlamaVersion::V2)).unwrap();
        assert_eq!(hf.intermediate_size, 11008);
        assert_eq!(hf.num_key_value_heads, 32);
        assert_eq!(hf.head_dim, 128);
        assert_eq!(hf.vocab_size, None, "-1 means the tokenizer decides");
        assert_eq!(hf.rope_theta, 10000.0);
        assert_eq!(hf.rope_scaling, None);
        assert_eq!(hf.max_position_embeddings, Some(4096));
        assert_eq!(hf.tie_word_embeddings, Some(false));
    }

    #[test]
    fn llama31_params_and_scaling() {
        let p = MetaParams::parse(LLAMA31_8B).unwrap();
        let want = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let hf = p.hf_numbers(Some(LlamaVersion::V3_1)).unwrap();
        assert_eq!(hf.intermediate_size, 14336);
        assert_eq!(hf.num_key_value_heads, 8);
        assert_eq!(hf.vocab_size, Some(128256));
        assert_eq!(hf.rope_scaling, Some(want));
        assert_eq!(hf.max_position_embeddings, Some(131072));
        assert_eq!(
            p.rope_scaling(Some(LlamaVersion::V3_2))
                .unwrap()
                .unwrap()
                .factor,
            32.0
        );
        assert_eq!(p.rope_scaling(None), Err(MetaError::NeedVersion));
        assert_eq!(
            p.rope_scaling(Some(LlamaVersion::V3)),
            Err(MetaError::ScalingDisagrees {
                use_scaled_rope: true,
                version: LlamaVersion::V3
            })
        );
        let mut q = p.clone();
        q.rope_scaling_factor = Some(32.0);
        assert_eq!(q.rope_scaling(None).unwrap().unwrap().factor, 32.0);
        // Nested under "model", as the converter accepts.
        let nested = format!(r#"{{"model": {LLAMA31_8B}}}"#);
        assert_eq!(MetaParams::parse(&nested).unwrap(), p);
        // A non-llama3 version with a large theta gets 16384 positions.
        let mut r = MetaParams::parse(LLAMA2_7B).unwrap();
        r.rope_theta = Some(1e6);
        assert_eq!(
            r.hf_numbers(Some(LlamaVersion::V2))
                .unwrap()
                .max_position_embeddings,
            Some(16384)
        );
        assert_eq!(r.hf_numbers(None).unwrap().max_position_embeddings, None);
    }

    #[test]
    fn invalid_params() {
        assert!(matches!(
            MetaParams::parse("{"),
            Err(MetaError::InvalidJson { .. })
        ));
        assert!(matches!(
            MetaParams::parse(r#"{"dim": 64}"#),
            Err(MetaError::InvalidJson { .. })
        ));
        for bad in [
            r#"{"dim": 64, "n_layers": 1, "n_heads": 3, "norm_eps": 1e-5}"#,
            r#"{"dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 3, "norm_eps": 1e-5}"#,
            r#"{"dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 0, "norm_eps": 1e-5}"#,
            r#"{"dim": 64, "n_layers": 0, "n_heads": 4, "norm_eps": 1e-5}"#,
            r#"{"dim": 64, "n_layers": 1, "n_heads": 4, "norm_eps": 0}"#,
            r#"{"dim": 64, "n_layers": 1, "n_heads": 4, "norm_eps": 1e-5, "multiple_of": 0}"#,
            r#"{"dim": 64, "n_layers": 1, "n_heads": 64, "norm_eps": 1e-5}"#,
        ] {
            assert!(
                matches!(MetaParams::parse(bad), Err(MetaError::InvalidParam { .. })),
                "{bad}"
            );
        }
    }

    fn shard(tensors: &[(&str, &[usize])]) -> RawFile {
        RawFile {
            tensors: tensors
                .iter()
                .map(|(n, s)| RawTensor {
                    name: (*n).into(),
                    encoding: Encoding::Plain(Dtype::BF16),
                    shape: s.to_vec(),
                    range: 0..0,
                })
                .collect(),
            metadata: Vec::new(),
        }
    }

    /// dim 64, 4 heads, 2 KV heads (head 16), FFN 176, vocab 512, split in two.
    fn params() -> MetaParams {
        MetaParams::parse(r#"{"dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 16, "norm_eps": 1e-5, "vocab_size": 512}"#).unwrap()
    }

    fn two_shards(embed: [usize; 2]) -> Vec<RawFile> {
        let one = [
            ("tok_embeddings.weight", &embed[..]),
            ("layers.0.attention.wq.weight", &[32, 64][..]),
            ("layers.0.attention.wk.weight", &[16, 64]),
            ("layers.0.attention.wv.weight", &[16, 64]),
            ("layers.0.attention.wo.weight", &[64, 32]),
            ("layers.0.feed_forward.w1.weight", &[88, 64]),
            ("layers.0.feed_forward.w2.weight", &[64, 88]),
            ("layers.0.feed_forward.w3.weight", &[88, 64]),
            ("layers.0.attention_norm.weight", &[64]),
            ("layers.0.ffn_norm.weight", &[64]),
            ("norm.weight", &[64]),
            ("output.weight", &[256, 64]),
        ];
        vec![shard(&one), shard(&one)]
    }

    #[test]
    fn shard_plans() {
        assert_eq!(params().intermediate_size(), 176);
        for (embed, axis) in [([512, 32], 1), ([256, 64], 0)] {
            let plans = plan_shards(&params(), &two_shards(embed)).unwrap();
            let get = |n: &str| plans.iter().find(|p| p.name == n).unwrap();
            assert_eq!(
                get("tok_embeddings.weight").combine,
                Combine::Concat { axis }
            );
            assert_eq!(get("tok_embeddings.weight").shape, [512, 64]);
            assert_eq!(get("layers.0.attention.wq.weight").shape, [64, 64]);
            assert_eq!(
                get("layers.0.attention.wk.weight").combine,
                Combine::Concat { axis: 0 }
            );
            assert_eq!(get("layers.0.attention.wk.weight").shape, [32, 64]);
            assert_eq!(
                get("layers.0.attention.wo.weight").combine,
                Combine::Concat { axis: 1 }
            );
            assert_eq!(get("layers.0.attention.wo.weight").shape, [64, 64]);
            assert_eq!(get("layers.0.feed_forward.w2.weight").shape, [64, 176]);
            assert_eq!(get("layers.0.feed_forward.w3.weight").shape, [176, 64]);
            assert_eq!(get("norm.weight").combine, Combine::Replicated);
            assert_eq!(get("norm.weight").shape, [64]);
            assert_eq!(get("output.weight").shape, [512, 64]);
            assert_eq!(get("output.weight").shard_shapes, [[256, 64], [256, 64]]);
        }
    }

    #[test]
    fn single_shard_is_its_own_plan() {
        let mut s = two_shards([512, 64]);
        s.truncate(1);
        for t in &mut s[0].tensors {
            if t.name.contains("w1") || t.name.contains("w3") {
                t.shape[0] = 176;
            }
        }
        let plans = plan_shards(&params(), &s).unwrap();
        assert_eq!(
            plans
                .iter()
                .find(|p| p.name == "tok_embeddings.weight")
                .unwrap()
                .shape,
            [512, 64]
        );
    }

    #[test]
    fn shard_refusals() {
        assert_eq!(plan_shards(&params(), &[]), Err(MetaError::NoShards));
        let mut s = two_shards([512, 32]);
        s[1].tensors.pop();
        assert!(matches!(
            plan_shards(&params(), &s),
            Err(MetaError::MissingInShard { missing: 1, .. })
        ));
        let mut s = two_shards([512, 32]);
        s[0].tensors[9].shape = vec![32];
        assert!(matches!(
            plan_shards(&params(), &s),
            Err(MetaError::ShardMismatch { .. })
        ));
        let mut s = two_shards([512, 32]);
        s[1].tensors[1].encoding = Encoding::Plain(Dtype::F32);
        assert!(matches!(
            plan_shards(&params(), &s),
            Err(MetaError::ShardMismatch {
                why: "encodings must match",
                ..
            })
        ));
        let mut s = two_shards([512, 32]);
        s[1].tensors[1].shape = vec![32, 63];
        assert!(matches!(
            plan_shards(&params(), &s),
            Err(MetaError::ShardMismatch { .. })
        ));
        let mut s = two_shards([512, 20]);
        s[0].tensors[0].shape = vec![512, 20];
        assert!(matches!(
            plan_shards(&params(), &s),
            Err(MetaError::EmbeddingSplit { .. })
        ));
        let mut s = two_shards([512, 32]);
        let extra = RawTensor {
            name: "layers.0.adapter.weight".into(),
            encoding: Encoding::Plain(Dtype::F32),
            shape: vec![1],
            range: 0..0,
        };
        s[0].tensors.push(extra.clone());
        s[1].tensors.push(extra);
        assert!(matches!(
            plan_shards(&params(), &s),
            Err(MetaError::UnknownTensor { .. })
        ));
        let mut p = params();
        p.multiple_of = Some(256);
        assert!(matches!(
            plan_shards(&p, &two_shards([512, 32])),
            Err(MetaError::ParamsDisagree {
                expected: 256,
                found: 176,
                ..
            })
        ));
    }

    #[test]
    fn replicas() {
        assert!(check_replicas("norm.weight", &[&[1, 2], &[1, 2], &[1, 2]]).is_ok());
        assert_eq!(
            check_replicas("norm.weight", &[&[1, 2, 3], &[1, 2, 3], &[1, 9, 3]]),
            Err(MetaError::ReplicaDiffers {
                name: "norm.weight".into(),
                shard: 2,
                byte: 1
            })
        );
        assert!(check_replicas("x", &[&[1, 2], &[1]]).is_err());
        assert!(check_replicas("x", &[]).is_ok());
    }
}
