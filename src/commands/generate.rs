//! `orient generate`: a greedy continuation of a prompt with a KV cache, printed as it comes;
//! with `--against`, two models' continuations side by side and where they part.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use orient::generate::{self, Continuation, GenerateOptions};
use orient::model::Model;
use orient::output::generate::{self as render, CompareReport, GenerateJson, Side};
use orient::text::{TextError, Tokenizer};
use orient_inspect::Checkpoint;

/// Arguments of `orient generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder, `.safetensors` file or `model.safetensors.index.json`.
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub model: super::ModelPath,
    #[command(flatten)]
    pub prompt: super::PromptArgs,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Do not stop at an EOS token (the config's and generation config's `eos_token_id`, the
    /// tokenizer's `eos_token`).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Another model to continue the same prompt: both continuations side by side, the first
    /// differing token named with both models' top 5 there; exit 1 when they differ.
    #[arg(long, value_name = "OTHER_MODEL")]
    pub against: Option<super::ModelPath>,
    /// Print JSON (`{"prompt_ids", "generated_ids", "text"}`) at the end instead of streaming.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub layout: super::LayoutArgs,
    #[command(flatten)]
    pub hub: super::HubArgs,
}

/// Runs `orient generate`: exit 0, or with `--against` 1 when the continuations differ.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model_path = args.model.resolve(&args.hub)?;
    let ckpt = Checkpoint::open(&model_path)
        .with_context(|| format!("opening {}", model_path.display()))?;
    orient::output::notes::warn(ckpt.notes());
    let layouts = args.layout.load()?;
    let mut model = Model::with_layouts(&ckpt, &layouts)
        .with_context(|| format!("loading {}", model_path.display()))?;
    // Every decode step reads every weight: keep them mapped between steps.
    model.keep_pages(true);
    render::load_notes(
        &mut orient::output::stderr(),
        &model_path.display().to_string(),
        model.notes(),
    )?;
    let vocab = model.config().vocab_size;
    let (prompt, tokenizer) = args.prompt.ids(&ckpt, vocab)?;
    let tokenizer = match tokenizer {
        Some(t) => Some(t),
        None => optional_tokenizer(&ckpt)?,
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        eos: if args.ignore_eos {
            Vec::new()
        } else {
            eos_ids(&ckpt, tokenizer.as_ref())?
        },
        top_k: 5,
    };
    generate::check_room(&model, prompt.len(), opts.max_new_tokens)
        .with_context(|| format!("generating with {}", model_path.display()))?;
    if let Some(other) = &args.against {
        let other_path = other.resolve(&args.hub)?;
        return against(
            &args,
            &model_path,
            &mut model,
            &other_path,
            &prompt,
            tokenizer,
            &opts,
        );
    }
    if args.json {
        let c = continue_prompt(&mut model, &model_path, &prompt, &opts, |_| Ok(()))?;
        let report = GenerateJson {
            text: text_of(tokenizer.as_ref(), &c.generated_ids)?,
            prompt_ids: c.prompt_ids,
            generated_ids: c.generated_ids,
        };
        let mut lock = orient::output::stdout();
        orient::output::json::write_pretty(&mut lock, &report)?;
        lock.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = orient::output::stdout();
    let start = Instant::now();
    // when the first token came: the prompt's forward (prefill) is done
    let mut first: Option<Instant> = None;
    let c = match &tokenizer {
        Some(tok) => {
            render::piece(&mut out, &tok.decode(&prompt, true)?)?;
            let mut stream = tok.stream(true);
            continue_prompt(&mut model, &model_path, &prompt, &opts, |id| {
                first.get_or_insert_with(Instant::now);
                if let Some(text) = stream.step(id).map_err(|e| e.to_string())? {
                    render::piece(&mut out, &text).map_err(|e| e.to_string())?;
                }
                Ok(())
            })?
        }
        None => {
            let ids: Vec<String> = prompt.iter().map(u32::to_string).collect();
            render::piece(&mut out, &format!("{} |", ids.join(" ")))?;
            continue_prompt(&mut model, &model_path, &prompt, &opts, |id| {
                first.get_or_insert_with(Instant::now);
                render::piece(&mut out, &format!(" {id}")).map_err(|e| e.to_string())
            })?
        }
    };
    render::summary(
        &mut out,
        &mut orient::output::stderr(),
        c.generated_ids.len(),
        c.stop,
        start.elapsed().as_secs_f64(),
        first.map(|f| (f - start).as_secs_f64()),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The greedy continuation, with the model named in errors.
fn continue_prompt(
    model: &mut Model<'_>,
    path: &Path,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> Result<(), String>,
) -> anyhow::Result<Continuation> {
    generate::greedy(model, prompt, opts, on_token)
        .with_context(|| format!("generating with {}", path.display()))
}

/// The tokenizer beside the model, if it has one (for `--tokens`: the text is shown when it can
/// be); a broken one is an error.
fn optional_tokenizer(ckpt: &Checkpoint) -> anyhow::Result<Option<Tokenizer>> {
    match Tokenizer::for_model(ckpt.root()) {
        Ok(t) => Ok(Some(t)),
        Err(TextError::Missing { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The EOS ids of the config files and of the tokenizer.
fn eos_ids(ckpt: &Checkpoint, tokenizer: Option<&Tokenizer>) -> anyhow::Result<Vec<u32>> {
    let mut ids = generate::config_eos_ids(ckpt.root())?;
    for &id in tokenizer.map_or(&[][..], |t| t.eos_ids()) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The text of generated ids (special tokens skipped), when there is a tokenizer.
fn text_of(tokenizer: Option<&Tokenizer>, ids: &[u32]) -> anyhow::Result<Option<String>> {
    Ok(match tokenizer {
        Some(t) => Some(t.decode(ids, true)?),
        None => None,
    })
}

/// `--against`: both continuations, compared.
fn against(
    args: &Args,
    model_path: &Path,
    model: &mut Model<'_>,
    other_path: &Path,
    prompt: &[u32],
    tokenizer: Option<Tokenizer>,
    opts: &GenerateOptions,
) -> anyhow::Result<ExitCode> {
    let other_ckpt = Checkpoint::open(other_path)
        .with_context(|| format!("opening {}", other_path.display()))?;
    orient::output::notes::warn(other_ckpt.notes());
    let mut other = Model::with_layouts(&other_ckpt, &args.layout.load()?)
        .with_context(|| format!("loading {}", other_path.display()))?;
    other.keep_pages(true);
    render::load_notes(
        &mut orient::output::stderr(),
        &other_path.display().to_string(),
        other.notes(),
    )?;
    let (va, vb) = (model.config().vocab_size, other.config().vocab_size);
    if va != vb {
        anyhow::bail!(
            "vocabularies differ: {} has {va} tokens, {} has {vb}",
            model_path.display(),
            other_path.display()
        );
    }
    let a = continue_prompt(model, model_path, prompt, opts, |_| Ok(()))?;
    let b = continue_prompt(&mut other, other_path, prompt, opts, |_| Ok(()))?;
    let first_difference = generate::first_divergence(&a, &b);
    let tok = tokenizer.as_ref();
    let pieces = |ids: &[u32]| -> Vec<String> {
        tok.map_or_else(Vec::new, |t| {
            ids.iter()
                .map(|&id| t.decode(&[id], false).unwrap_or_default())
                .collect()
        })
    };
    let candidate_texts = match (&first_difference, tok) {
        (Some(d), Some(_)) => {
            let ids = |top: &[orient::model::TopToken]| -> Vec<u32> {
                top.iter().map(|t| t.token).collect()
            };
            Some((pieces(&ids(&d.a_top)), pieces(&ids(&d.b_top))))
        }
        _ => None,
    };
    let side = |path: &Path, c: &Continuation| -> anyhow::Result<Side> {
        Ok(Side {
            model: path.display().to_string(),
            text: text_of(tok, &c.generated_ids)?,
            pieces: pieces(&c.generated_ids),
            generated_ids: c.generated_ids.clone(),
            stop: c.stop,
        })
    };
    let report = CompareReport {
        prompt_ids: prompt.to_vec(),
        a: side(model_path, &a)?,
        b: side(other_path, &b)?,
        first_difference,
        candidate_texts,
    };
    let mut lock = orient::output::stdout();
    render::render_compare(&report, args.json, &mut lock)?;
    lock.flush()?;
    Ok(if report.first_difference.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
