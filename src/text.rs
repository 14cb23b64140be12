//! Text in, token ids out, and back: a model's own `tokenizer.json`, read through the
//! `tokenizers` crate, for `--prompt` and `generate`.
//!
//! Why here (the root package) and not in `orient-inspect`: `tokenizers` is a large dependency
//! that only the commands running a model need; `inspect` and `convert` read bytes and layouts
//! and stay lean. It is built with its default features off and the pure-Rust `fancy-regex`
//! backend instead of Oniguruma, so a build needs no C compiler or C++ suffix-array code.
//!
//! What "as transformers does" means here: ids come from `tokenizer.json` alone, special tokens
//! added as its post-processor says (`[CLS] … [SEP]`, a BOS, or nothing), exactly what
//! `AutoTokenizer(text)["input_ids"]` returns for hub files. (transformers 5's model-specific
//! classes, e.g. `Qwen2Tokenizer`, rebuild the normalizer and pre-tokenizer in code and keep only
//! the vocabulary, merges and post-processor of the file; hub files agree with that code, so the
//! ids agree.) Decoding follows `tokenizer.decode`, including `clean_up_tokenization_spaces` from
//! `tokenizer_config.json`, which transformers applies to every model but BPE ones.

use std::path::{Path, PathBuf};

use tokenizers::models::ModelWrapper;
use tokenizers::{DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper};

/// The tokenizer file beside a model's weights.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// transformers' settings for it (special tokens, decoding clean-up); optional.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Largest tokenizer file read (bytes): real ones are a few MB (Gemma's 34 MB).
pub const MAX_TOKENIZER_FILE: u64 = 256 << 20;

/// Why text cannot be turned into ids (or back).
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The model folder has no `tokenizer.json`.
    #[error("{}: no {TOKENIZER_FILE} beside the model, so a text prompt cannot be tokenized; pass token ids with --tokens instead (e.g. --tokens 1,2,3)", dir.display())]
    Missing {
        /// The model folder.
        dir: PathBuf,
    },
    /// The file cannot be read.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a tokenizer the `tokenizers` crate can load.
    #[error("{}: not a valid tokenizer: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// `tokenizer_config.json` is not valid JSON.
    #[error("{}: invalid JSON: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Encoding failed.
    #[error("{}: cannot encode the text: {message}", path.display())]
    Encode {
        /// The tokenizer file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Decoding failed.
    #[error("{}: cannot decode ids: {message}", path.display())]
    Decode {
        /// The tokenizer file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The tokenizer produces an id the model has no embedding row for.
    #[error("{}: token id {id} is outside the model's vocabulary of {vocab_size} (the tokenizer has {tokenizer_size} tokens): is this the model's own tokenizer?", path.display())]
    OutOfVocabulary {
        /// The tokenizer file.
        path: PathBuf,
        /// The offending id.
        id: u32,
        /// Rows of the model's embedding.
        vocab_size: usize,
        /// Tokens the tokenizer knows (added tokens included).
        tokenizer_size: usize,
    },
}

/// A model's tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    clean_up_spaces: bool,
    bos: Option<u32>,
    eos: Vec<u32>,
}

/// Incremental decoding for printing text as ids come (see [`Tokenizer::stream`]).
pub struct TextStream<'a> {
    inner: tokenizers::DecodeStream<
        'a,
        ModelWrapper,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >,
    path: &'a Path,
}

impl std::fmt::Debug for TextStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream")
            .field("path", &self.path)
            .finish()
    }
}

impl TextStream<'_> {
    /// Feeds one id; returns the text it completes, if any (a multi-byte character split over
    /// several byte-level tokens appears once its last byte arrives).
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TextError> {
        self.inner.step(id).map_err(|e| TextError::Decode {
            path: self.path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

impl Tokenizer {
    /// The tokenizer of the model in `dir` (a checkpoint's root folder): `tokenizer.json`, and
    /// `tokenizer_config.json` when present. A missing `tokenizer.json` is
    /// [`TextError::Missing`], whose message suggests `--tokens`.
    pub fn for_model(dir: &Path) -> Result<Tokenizer, TextError> {
        let path = dir.join(TOKENIZER_FILE);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TextError::Missing {
                    dir: dir.to_path_buf(),
                })
            }
            _ => {}
        }
        Tokenizer::from_file(&path)
    }

    /// A tokenizer from a `tokenizer.json` file (with the `tokenizer_config.json` beside it,
    /// when present).
    pub fn from_file(path: &Path) -> Result<Tokenizer, TextError> {
        let io = |source| TextError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = orient_inspect::file::read_regular(path, MAX_TOKENIZER_FILE).map_err(io)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TextError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let config_path = orient_inspect::checkpoint::parent_dir(path).join(TOKENIZER_CONFIG_FILE);
        let config = match std::fs::metadata(&config_path) {
            Ok(_) => {
                let raw = orient_inspect::file::read_regular(&config_path, MAX_TOKENIZER_FILE)
                    .map_err(|source| TextError::Io {
                        path: config_path.clone(),
                        source,
                    })?;
                serde_json::from_slice::<serde_json::Value>(&raw).map_err(|e| {
                    TextError::Config {
                        path: config_path.clone(),
                        message: e.to_string(),
                    }
                })?
            }
            Err(_) => serde_json::Value::Null,
        };
        let flag = |k: &str| config.get(k).and_then(serde_json::Value::as_bool);
        // transformers skips the clean-up for BPE models (it would eat real spaces).
        let bpe = matches!(inner.get_model(), ModelWrapper::BPE(_));
        let clean_up_spaces = flag("clean_up_tokenization_spaces").unwrap_or(false)
            && (!bpe
                || flag("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")
                    .unwrap_or(false));
        let special = |k: &str| -> Option<u32> {
            let v = config.get(k)?;
            let text = v
                .as_str()
                .or_else(|| v.get("content").and_then(serde_json::Value::as_str))?;
            inner.token_to_id(text)
        };
        let bos = special("bos_token");
        let eos = special("eos_token").into_iter().collect();
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
            clean_up_spaces,
            bos,
            eos,
        })
    }

    /// The `tokenizer.json` this was read from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens known, added tokens included (the smallest embedding that fits every id).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of `text` with the special tokens the post-processor adds (what
    /// `AutoTokenizer(text)["input_ids"]` returns).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        self.encode_with(text, true)
    }

    /// Ids of `text` without special tokens (`add_special_tokens=False`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TextError> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>, TextError> {
        // `encode_fast` skips the character offsets, which nothing here needs.
        self.inner
            .encode_fast(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TextError::Encode {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// The text of `ids` (`tokenizer.decode(ids, skip_special_tokens=…)`, with
    /// transformers' clean-up of spaces when `tokenizer_config.json` asks for it).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TextError> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TextError::Decode {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Decodes ids one at a time, for printing a continuation as it is generated. The stream
    /// does not apply the space clean-up (see [`Tokenizer::decode`]).
    pub fn stream(&self, skip_special_tokens: bool) -> TextStream<'_> {
        TextStream {
            inner: self.inner.decode_stream(skip_special_tokens),
            path: &self.path,
        }
    }

    /// The id of a token's text, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of one token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// `bos_token` of `tokenizer_config.json`, as an id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// `eos_token` of `tokenizer_config.json`, as ids (empty when it names none). A generator
    /// should stop at these and at the model config's `eos_token_id`s.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Checks that every id fits a model's vocabulary of `vocab_size` rows.
    pub fn check_ids(&self, ids: &[u32], vocab_size: usize) -> Result<(), TextError> {
        match ids.iter().find(|&&id| id as usize >= vocab_size) {
            Some(&id) => Err(TextError::OutOfVocabulary {
                path: self.path.clone(),
                id,
                vocab_size,
                tokenizer_size: self.vocab_size(),
            }),
            None => Ok(()),
        }
    }
}

/// transformers' `clean_up_tokenization`: the spaces a WordPiece decode leaves before
/// punctuation and contractions, removed in the same order.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn clean_up_matches_transformers_order() {
        assert_eq!(
            clean_up_tokenization("it ' s a test , isn ' t it ? yes ! we 're done ."),
            "it's a test, isn't it? yes! we're done."
        );
    }

    #[test]
    fn errors_name_the_file_and_suggest_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::for_model(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no tokenizer.json") && text.contains("--tokens"),
            "{text}"
        );
        std::fs::write(dir.path().join(TOKENIZER_FILE), b"{\"model\": 1}").unwrap();
        let err = Tokenizer::for_model(dir.path()).unwrap_err();
        assert!(matches!(err, TextError::Invalid { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("tokenizer.json: not a valid tokenizer"),
            "{err}"
        );
    }
}
