//! One file per subcommand. Each parses its arguments, calls the library, and hands
//! the resulting data to [`orient::output`] for rendering.

pub mod completions;
pub mod convert;
pub mod demo;
pub mod diff;
pub mod generate;
pub mod inspect;
pub mod lint;
pub mod run;
pub mod synth;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use orient::text::Tokenizer;
use orient_inspect::layout::convention::{self, Convention};
use orient_inspect::layout::formats::format_convention;
use orient_inspect::Checkpoint;

/// The ids of `--prompt TEXT`, tokenized with the `tokenizer.json` beside the model's weights
/// (special tokens added as its post-processor says), and the tokenizer. A model without one is
/// an error that suggests `--tokens`; an id outside the model's `vocab_size` rows is one too.
pub fn tokenize_prompt(
    ckpt: &Checkpoint,
    text: &str,
    vocab_size: usize,
) -> anyhow::Result<(Vec<u32>, Tokenizer)> {
    let tokenizer = Tokenizer::for_model(ckpt.root())?;
    let ids = tokenizer.encode(text)?;
    tokenizer.check_ids(&ids, vocab_size)?;
    if ids.is_empty() {
        anyhow::bail!(
            "--prompt: {} turns the text into no tokens at all; give a longer prompt or --tokens",
            tokenizer.path().display()
        );
    }
    Ok((ids, tokenizer))
}

/// `--tokens` or `--prompt`, shared by `run` and `generate`: exactly one is required.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(required = true, multiple = false)]
pub struct PromptArgs {
    /// Prompt token ids, comma-separated (e.g. `1,2,3`).
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// Prompt text, tokenized with the model's `tokenizer.json` (special tokens as its
    /// post-processor adds them, as transformers' tokenizer does).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
}

impl PromptArgs {
    /// The prompt's ids, and the model's tokenizer when `--prompt` was given.
    pub fn ids(
        &self,
        ckpt: &Checkpoint,
        vocab_size: usize,
    ) -> anyhow::Result<(Vec<u32>, Option<Tokenizer>)> {
        match (&self.tokens, &self.prompt) {
            (Some(t), _) => Ok((t.clone(), None)),
            (None, Some(text)) => {
                let (ids, tok) = tokenize_prompt(ckpt, text, vocab_size).context("--prompt")?;
                Ok((ids, Some(tok)))
            }
            (None, None) => anyhow::bail!("pass --tokens IDS or --prompt TEXT"),
        }
    }
}

/// `--layout FILE`, shared by every command that reads a model.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LayoutArgs {
    /// A layout file (TOML) describing how this checkpoint names and transforms its tensors,
    /// e.g. a hand-written JAX port's; read like a built-in convention (format in README.md).
    /// Repeat to load several; the last is the one the checkpoint is read in.
    #[arg(long = "layout", value_name = "FILE")]
    pub layouts: Vec<PathBuf>,
    /// A `config.json` to read the model with, instead of the one beside its weights, or of
    /// the one reconstructed from a GGUF file's metadata or Meta's `params.json` (which cannot
    /// state everything: a note says what is missing).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl LayoutArgs {
    /// The user conventions, in order; a later file may name an earlier one as its `base`.
    pub fn load(&self) -> anyhow::Result<Vec<Arc<Convention>>> {
        let mut known = convention::builtins().to_vec();
        let mut out = Vec::new();
        for path in &self.layouts {
            let c = Arc::new(convention::load_with(path, &known)?);
            known.push(c.clone());
            out.push(c);
        }
        Ok(out)
    }

    /// Opens a checkpoint in any format, with `--config` when given.
    pub fn open(&self, path: &Path) -> Result<Checkpoint, orient_inspect::Error> {
        Checkpoint::open_with(path, self.config.as_deref())
    }

    /// [`LayoutArgs::load`], after the conventions the checkpoints' formats bring (GGUF's and
    /// Meta's names and row permutations), so that those are candidates like the built-ins
    /// and a user's file still comes last.
    pub fn load_for(&self, ckpts: &[&Checkpoint]) -> anyhow::Result<Vec<Arc<Convention>>> {
        let mut out: Vec<Arc<Convention>> = Vec::new();
        for ck in ckpts {
            if let Some(c) = ck.format().convention().and_then(format_convention) {
                if !out.iter().any(|o| o.name == c.name) {
                    out.push(c);
                }
            }
        }
        out.extend(self.load()?);
        Ok(out)
    }
}

/// `layouts` with the convention `ck`'s format brings (if any, and not there yet) in front.
pub fn with_format(ck: &Checkpoint, layouts: &[Arc<Convention>]) -> Vec<Arc<Convention>> {
    let mut out = Vec::with_capacity(layouts.len() + 1);
    if let Some(c) = ck.format().convention().and_then(format_convention) {
        if !layouts.iter().any(|o| o.name == c.name) {
            out.push(c);
        }
    }
    out.extend(layouts.iter().cloned());
    out
}

/// A model named on the command line: a local path (a `.safetensors` file, an index, a model
/// folder), or a repo id `ORG/NAME` (optionally `ORG/NAME@REV`) found in the local Hugging Face
/// cache. An existing local path always wins over a repo id of the same spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPath(pub PathBuf);

impl From<std::ffi::OsString> for ModelPath {
    fn from(s: std::ffi::OsString) -> ModelPath {
        ModelPath(PathBuf::from(s))
    }
}

impl From<PathBuf> for ModelPath {
    fn from(p: PathBuf) -> ModelPath {
        ModelPath(p)
    }
}

/// `--revision REV`, shared by every command that reads a model: the revision for models named
/// by repo id.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HubArgs {
    /// For a model named by repo id (`ORG/NAME`): a branch, tag or commit in the local Hugging Face
    /// cache (default `main`; `ORG/NAME@REV` sets it for one model). Nothing is downloaded; the
    /// cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
}

impl ModelPath {
    /// The folder or file to open: the path itself when it exists (or is no repo id), else the
    /// cached snapshot of the repo id (a note on stderr says which commit).
    pub fn resolve(&self, hub: &HubArgs) -> anyhow::Result<PathBuf> {
        let given = &self.0;
        // An existing path wins; so does anything that cannot be a repo id.
        if std::fs::symlink_metadata(given).is_ok() {
            return Ok(given.clone());
        }
        let Some((repo, inline)) = given
            .to_str()
            .and_then(orient_inspect::hub::parse_model_ref)
        else {
            return Ok(given.clone());
        };
        let revision = inline.as_deref().or(hub.revision.as_deref());
        let snapshot = orient_inspect::hub::HubCache::from_env()
            .and_then(|cache| cache.resolve(&repo, revision))
            .map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "{} is not a file or folder here, nor a model in the local Hugging Face cache",
                    given.display()
                ))
            })?;
        orient::output::notes::resolved(&snapshot);
        Ok(snapshot.path)
    }
}
