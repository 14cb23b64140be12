//! Greedy decoding with a KV cache, and the comparison of two models' continuations.
//!
//! Why greedy only: orient generates to check a model, not to chat. A greedy continuation is a
//! deterministic function of the weights, so two checkpoints that compute the same function
//! continue a prompt the same way, and the first token where they part is a precise place to
//! look (the rule vLLM's tests apply: there, each side's token should still be among the other's
//! top 5). The prompt is run once through a [`KvCache`]; each new token then costs one token's
//! forward, whose logits agree with a full forward over the sequence to float rounding (bit for
//! bit with [`Model::exact_decode`]; see [`Model::forward_cached`]).

use std::path::Path;

use crate::model::{ForwardOptions, KvCache, LogitPositions, Model, ModelError, TopToken};

/// Largest `config.json` / `generation_config.json` read for the EOS ids (bytes).
const MAX_CONFIG_FILE: u64 = 16 << 20;

/// Why a continuation could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The forward failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A config file beside the weights cannot be read.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A config file is not valid JSON, or its `eos_token_id` is not an id or a list of ids.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The caller's callback failed (e.g. printing the token).
    #[error("{0}")]
    Callback(String),
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// Stop after generating one of these (it is kept in the continuation, as transformers
    /// does). Empty: never stop early.
    pub eos: Vec<u32>,
    /// Candidates kept at each step (for reports; the choice is always the top one).
    pub top_k: usize,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// An EOS token was generated.
    Eos,
}

/// A greedy continuation.
#[derive(Clone, Debug)]
pub struct Continuation {
    /// The prompt.
    pub prompt_ids: Vec<u32>,
    /// The tokens chosen, in order (an EOS that stopped generation included).
    pub generated_ids: Vec<u32>,
    /// At each step, the `top_k` candidates, best first (the first is the token chosen).
    pub top: Vec<Vec<TopToken>>,
    /// Why it stopped.
    pub stop: Stop,
}

/// The EOS ids named by the model's `config.json` and `generation_config.json` in `dir`
/// (`eos_token_id`: an id, a list of ids, or null), deduplicated in order. Missing files name
/// none.
pub fn config_eos_ids(dir: &Path) -> Result<Vec<u32>, GenerateError> {
    let mut out = Vec::new();
    for name in ["generation_config.json", "config.json"] {
        let path = dir.join(name);
        if std::fs::metadata(&path).is_err() {
            continue;
        }
        let bytes =
            orient_inspect::file::read_regular(&path, MAX_CONFIG_FILE).map_err(|source| {
                GenerateError::Io {
                    path: path.clone(),
                    source,
                }
            })?;
        let bad = |message: String| GenerateError::Config {
            path: path.clone(),
            message,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let id = |v: &serde_json::Value| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(format!("`eos_token_id` holds {v}, not a token id")))
        };
        let ids = match json.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => {
                items.iter().map(id).collect::<Result<Vec<_>, _>>()?
            }
            Some(v) => vec![id(v)?],
        };
        for i in ids {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    Ok(out)
}

/// Fails when a `prompt`-token prompt and `new` tokens cannot fit the model's learned
/// positions (GPT-2), so that a generation is refused before it starts, not cut off midway.
pub fn check_room(model: &Model<'_>, prompt: usize, new: usize) -> Result<(), ModelError> {
    match model.max_positions() {
        Some(max) if prompt.saturating_add(new) > max => {
            Err(ModelError::GenerationTooLong { prompt, new, max })
        }
        _ => Ok(()),
    }
}

/// Generates greedily after `prompt`: the prompt's forward through a fresh [`KvCache`], then
/// one forward per new token. `on_token` sees each token as soon as it is chosen (to print it);
/// an error from it stops generation.
pub fn greedy<E: std::fmt::Display>(
    model: &mut Model<'_>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<(), E>,
) -> Result<Continuation, GenerateError> {
    let capacity =
        prompt
            .len()
            .checked_add(opts.max_new_tokens)
            .ok_or(ModelError::PromptTooLong {
                tokens: prompt.len(),
            })?;
    check_room(model, prompt.len(), opts.max_new_tokens)?;
    let mut cache: KvCache = model.new_cache(capacity)?;
    let last = ForwardOptions {
        record: false,
        logits: LogitPositions::Last,
    };
    let mut generated = Vec::new();
    let mut top = Vec::new();
    let mut stop = Stop::MaxNewTokens;
    let mut input = prompt.to_vec();
    while generated.len() < opts.max_new_tokens {
        let out = model.forward_cached(&input, &mut cache, &last)?;
        let candidates = out.top_k(out.len() - 1, opts.top_k.max(1));
        let token = candidates[0].token;
        generated.push(token);
        top.push(candidates);
        on_token(token).map_err(|e| GenerateError::Callback(e.to_string()))?;
        if opts.eos.contains(&token) {
            stop = Stop::Eos;
            break;
        }
        input = vec![token];
    }
    Ok(Continuation {
        prompt_ids: prompt.to_vec(),
        generated_ids: generated,
        top,
        stop,
    })
}

/// Where two continuations of the same prompt part.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Divergence {
    /// Index in the continuations (0 = the first generated token).
    pub index: usize,
    /// Position in the sequence (prompt length + index).
    pub position: usize,
    /// Model A's token there.
    pub a: u32,
    /// Model B's token there.
    pub b: u32,
    /// Model A's candidates there, best first.
    pub a_top: Vec<TopToken>,
    /// Model B's candidates there, best first.
    pub b_top: Vec<TopToken>,
    /// A's token is among B's first 5 candidates and B's among A's (vLLM's rule for a
    /// tolerable difference: a near-tie that reordered).
    pub within_top5: bool,
}

/// The first index where `a` and `b` choose different tokens (a continuation that stopped
/// earlier differs where the other goes on), with both sides' candidates there.
pub fn first_divergence(a: &Continuation, b: &Continuation) -> Option<Divergence> {
    let n = a.generated_ids.len().max(b.generated_ids.len());
    (0..n).find_map(|i| {
        let (ta, tb) = (a.generated_ids.get(i), b.generated_ids.get(i));
        if ta == tb {
            return None;
        }
        let a_top = a.top.get(i).cloned().unwrap_or_default();
        let b_top = b.top.get(i).cloned().unwrap_or_default();
        let in_top5 = |t: Option<&u32>, top: &[TopToken]| {
            t.is_some_and(|t| top.iter().take(5).any(|c| c.token == *t))
        };
        let within_top5 = in_top5(ta, &b_top) && in_top5(tb, &a_top);
        Some(Divergence {
            index: i,
            position: a.prompt_ids.len() + i,
            a: ta.copied().unwrap_or(u32::MAX),
            b: tb.copied().unwrap_or(u32::MAX),
            a_top,
            b_top,
            within_top5,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cont(ids: &[u32], tops: &[&[u32]]) -> Continuation {
        Continuation {
            prompt_ids: vec![7, 8],
            generated_ids: ids.to_vec(),
            top: tops
                .iter()
                .map(|t| {
                    t.iter()
                        .map(|&token| TopToken {
                            token,
                            logit: 0.0,
                            prob: 0.0,
                        })
                        .collect()
                })
                .collect(),
            stop: Stop::MaxNewTokens,
        }
    }

    #[test]
    fn the_first_differing_token_is_named_with_both_top_lists() {
        let a = cont(&[1, 2, 3], &[&[1, 9], &[2, 4], &[3, 4]]);
        let same = cont(&[1, 2, 3], &[&[1], &[2], &[3]]);
        assert_eq!(first_divergence(&a, &same), None);
        let b = cont(&[1, 4, 5], &[&[1, 9], &[4, 2], &[5]]);
        let d = first_divergence(&a, &b).unwrap();
        assert_eq!((d.index, d.position, d.a, d.b), (1, 3, 2, 4));
        assert!(d.within_top5);
        let far = cont(&[1, 6], &[&[1], &[6, 7, 8, 9, 10, 2]]); // 2 is 6th: outside the top 5
        assert!(!first_divergence(&a, &far).unwrap().within_top5);
        // one side stopped early: the difference is where the other goes on
        let short = cont(&[1, 2], &[&[1], &[2]]);
        let d = first_divergence(&a, &short).unwrap();
        assert_eq!((d.index, d.b, d.within_top5), (2, u32::MAX, false));
    }

    #[test]
    fn eos_ids_come_from_both_config_files() {
        let dir = std::env::temp_dir().join(format!("orient-eos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(config_eos_ids(&dir).unwrap(), Vec::<u32>::new());
        std::fs::write(dir.join("config.json"), r#"{"eos_token_id": [5, 3]}"#).unwrap();
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 3}"#).unwrap();
        assert_eq!(config_eos_ids(&dir).unwrap(), vec![3, 5]);
        std::fs::write(dir.join("config.json"), r#"{"eos_token_id": "x"}"#).unwrap();
        let e = config_eos_ids(&dir).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("not a token id"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
