//! `orient verify`: compare a model's logits and hidden states with a transformers reference
//! file or with another model, and name the first stage that parts ways.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use orient::generate::{self, GenerateOptions};
use orient::model::compare::{self, Tolerance};
use orient::model::save::Reference;
use orient::model::{self, Model};
use orient::output::verify::{self as render, GenerationCheck, VerifyReport};
use orient_inspect::layout::convention::Convention;
use orient_inspect::Checkpoint;

/// Arguments of `orient verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model under test: folder, `.safetensors` file or index.
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub model: super::ModelPath,
    /// A reference file (`input_ids`, `logits`, `hidden_states.{i}`), e.g. made by
    /// transformers (see the README) or by `orient run --save`.
    #[arg(
        long,
        value_name = "REF.safetensors",
        conflicts_with = "against",
        required_unless_present = "against"
    )]
    pub reference: Option<PathBuf>,
    /// Another model to run on the same tokens (the trusted side); a path or a repo id.
    #[arg(long, value_name = "OTHER_MODEL")]
    pub against: Option<super::ModelPath>,
    /// Prompt token ids, comma-separated. Default: the reference's `input_ids`, or with
    /// `--against` a fixed 80-token prompt.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub tokens: Option<Vec<u32>>,
    /// Prompt text instead of `--tokens`, tokenized with the model under test's
    /// `tokenizer.json` (special tokens as its post-processor adds them).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Absolute tolerance.
    #[arg(long, default_value_t = 1e-4)]
    pub atol: f32,
    /// Relative tolerance (of the reference value).
    #[arg(long, default_value_t = 1e-4)]
    pub rtol: f32,
    /// Also continue the prompt greedily for N tokens with both models (`--against` only) and
    /// apply vLLM's rule: the continuations may part only where each model's token is among
    /// the other's top 5 there.
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Layout files, for the model under test and for `--against` (each is read in the
    /// convention its names and shapes show; a layout file is used when they do not decide).
    #[command(flatten)]
    pub layout: super::LayoutArgs,
    #[command(flatten)]
    pub hub: super::HubArgs,
}

/// Runs `orient verify`: exit 0 within tolerance, 1 not.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = verify(&args)?;
    let mut lock = orient::output::stdout();
    render::render(&report, args.json, &mut lock)?;
    lock.flush()?;
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Computes the report of `orient verify` (also used by `orient demo`).
pub fn verify(args: &Args) -> anyhow::Result<VerifyReport> {
    let tol = Tolerance {
        atol: args.atol,
        rtol: args.rtol,
    };
    let model_path = args.model.resolve(&args.hub)?;
    let ckpt = args
        .layout
        .open(&model_path)
        .with_context(|| format!("opening {}", model_path.display()))?;
    orient::output::notes::warn(ckpt.notes());
    ckpt.check_decodable()
        .with_context(|| format!("cannot run {}", model_path.display()))?;
    let layouts = args.layout.load_for(&[&ckpt])?;
    let mut model = Model::with_layouts(&ckpt, &layouts)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let tokens = match (&args.tokens, &args.prompt) {
        (Some(t), _) => Some((t.clone(), "--tokens".to_string())),
        (None, Some(text)) => {
            let (ids, _) = super::PromptArgs {
                tokens: None,
                prompt: Some(text.clone()),
            }
            .ids(&ckpt, model.config().vocab_size)?;
            Some((ids, "--prompt".to_string()))
        }
        (None, None) => None,
    };
    let under_test = Named {
        path: &model_path,
        model: &mut model,
        tokens,
    };
    if args.generate.is_some() && args.against.is_none() {
        bail!("--generate N compares two models' continuations: it needs --against OTHER_MODEL");
    }
    match (&args.reference, &args.against) {
        (Some(reference), _) => against_reference(under_test, reference, tol),
        (None, Some(other)) => {
            let other_path = other.resolve(&args.hub)?;
            against_model(under_test, &other_path, &layouts, tol, args.generate)
        }
        (None, None) => bail!("pass --reference FILE or --against MODEL"),
    }
}

/// The model under test, the path it was opened from, and the prompt given (`--tokens` or
/// `--prompt`'s tokenization, with the flag's name).
struct Named<'a, 'c> {
    path: &'a Path,
    model: &'a mut Model<'c>,
    tokens: Option<(Vec<u32>, String)>,
}

/// `--reference`: the model on the reference's own `input_ids`, stage by stage against it.
fn against_reference(
    Named {
        path,
        model,
        tokens,
    }: Named<'_, '_>,
    ref_path: &Path,
    tol: Tolerance,
) -> anyhow::Result<VerifyReport> {
    let reference = Reference::read(ref_path)?;
    if let Some((tokens, flag)) = &tokens {
        if *tokens != reference.input_ids {
            bail!(
                "{} was computed on its own input_ids ({} tokens), not on the {} ids of {flag}; omit {flag} or give the same prompt",
                ref_path.display(),
                reference.input_ids.len(),
                tokens.len()
            );
        }
    }
    let cfg = model.config();
    let shape = compare::ReferenceShape {
        hidden_size: cfg.hidden_size,
        layers: cfg.num_hidden_layers,
        vocab_size: cfg.vocab_size,
    };
    if model.is_encoder() {
        return against_encoder_reference(
            Named {
                path,
                model,
                tokens: None,
            },
            &reference,
            ref_path,
            shape,
            tol,
        );
    }
    let reference_notes =
        compare::check_reference(&reference, &ref_path.display().to_string(), shape).with_context(
            || {
                format!(
                    "{} does not fit {} ({} layers, hidden size {}, vocabulary {})",
                    ref_path.display(),
                    path.display(),
                    shape.layers,
                    shape.hidden_size,
                    shape.vocab_size
                )
            },
        )?;
    let out = model
        .forward(&reference.input_ids, true)
        .with_context(|| format!("running {}", path.display()))?;
    let comparison = compare::compare_reference(&out, &reference, tol);
    Ok(VerifyReport {
        schema_version: render::VERIFY_SCHEMA_VERSION,
        model: path.display().to_string(),
        against: ref_path.display().to_string(),
        against_kind: "reference",
        tokens: out.len(),
        prompt: "the reference's input_ids".to_string(),
        notes: model.notes().to_vec(),
        against_notes: Vec::new(),
        reference_notes,
        passed: comparison.passed(),
        generation: None,
        first_failure: comparison.first_failing_stage().map(|s| s.blame()),
        comparison,
    })
}

/// `--reference` for an encoder (BERT): the model on the reference's `input_ids`,
/// `token_type_ids` and `attention_mask`, against its hidden states and pooler output.
fn against_encoder_reference(
    Named { path, model, .. }: Named<'_, '_>,
    reference: &Reference,
    ref_path: &Path,
    shape: compare::ReferenceShape,
    tol: Tolerance,
) -> anyhow::Result<VerifyReport> {
    compare::check_encoder_reference(reference, &ref_path.display().to_string(), shape)
        .with_context(|| {
            format!(
                "{} does not fit the encoder {} ({} layers, hidden size {})",
                ref_path.display(),
                path.display(),
                shape.layers,
                shape.hidden_size
            )
        })?;
    let enc = reference.encoder.clone().unwrap_or_default();
    let inputs = model::EncoderInputs {
        token_types: enc.token_type_ids,
        attention_mask: enc.attention_mask,
    };
    let out = model
        .encode(&reference.input_ids, &inputs, true)
        .with_context(|| format!("running {}", path.display()))?;
    let comparison = compare::compare_encoder_reference(&out, reference, tol);
    Ok(VerifyReport {
        schema_version: render::VERIFY_SCHEMA_VERSION,
        generation: None,
        model: path.display().to_string(),
        against: ref_path.display().to_string(),
        against_kind: "reference",
        tokens: out.len(),
        prompt: "the reference's input_ids, token_type_ids and attention_mask".to_string(),
        notes: model.notes().to_vec(),
        against_notes: Vec::new(),
        reference_notes: Vec::new(),
        passed: comparison.passed(),
        first_failure: comparison.first_failing_stage().map(|s| s.blame()),
        comparison,
    })
}

/// `--against`: both models on the same prompt (`--tokens`, or the fixed default one), stage
/// by stage.
fn against_model(
    Named {
        path,
        model,
        tokens,
    }: Named<'_, '_>,
    other_path: &Path,
    layouts: &[Arc<Convention>],
    tol: Tolerance,
    generate: Option<usize>,
) -> anyhow::Result<VerifyReport> {
    let other_ckpt = Checkpoint::open(other_path)
        .with_context(|| format!("opening {}", other_path.display()))?;
    orient::output::notes::warn(other_ckpt.notes());
    other_ckpt
        .check_decodable()
        .with_context(|| format!("cannot run {}", other_path.display()))?;
    let layouts = super::with_format(&other_ckpt, layouts);
    let mut other = Model::with_layouts(&other_ckpt, &layouts)
        .with_context(|| format!("loading {}", other_path.display()))?;
    let (va, vb) = (model.config().vocab_size, other.config().vocab_size);
    if va != vb {
        bail!(
            "vocabularies differ: {} has {va} tokens, {} has {vb}",
            path.display(),
            other_path.display()
        );
    }
    let (tokens, prompt) = match tokens {
        Some(given) => given,
        None => (
            model::default_prompt(va, model::DEFAULT_PROMPT_LEN),
            format!("fixed {}-token default prompt", model::DEFAULT_PROMPT_LEN),
        ),
    };
    let out = model
        .forward(&tokens, true)
        .with_context(|| format!("running {}", path.display()))?;
    let want = other
        .forward(&tokens, true)
        .with_context(|| format!("running {}", other_path.display()))?;
    if out.layers.len() != want.layers.len() || out.hidden_size != want.hidden_size {
        bail!(
            "the models differ in shape: {} layers × {} vs {} layers × {}",
            out.layers.len(),
            out.hidden_size,
            want.layers.len(),
            want.hidden_size
        );
    }
    let comparison = compare::compare_runs(&out, &want, tol);
    let generation = match generate {
        Some(n) => {
            let opts = GenerateOptions {
                max_new_tokens: n,
                eos: Vec::new(),
                top_k: 5,
            };
            model.keep_pages(true);
            other.keep_pages(true);
            let a = generate::greedy(model, &tokens, &opts, |_| Ok::<(), String>(()))
                .with_context(|| format!("generating with {}", path.display()))?;
            let b = generate::greedy(&mut other, &tokens, &opts, |_| Ok::<(), String>(()))
                .with_context(|| format!("generating with {}", other_path.display()))?;
            let first_difference = generate::first_divergence(&a, &b);
            Some(GenerationCheck {
                new_tokens: n,
                passed: first_difference.as_ref().is_none_or(|d| d.within_top5),
                generated_ids: a.generated_ids,
                against_generated_ids: b.generated_ids,
                first_difference,
            })
        }
        None => None,
    };
    let generation_passed = generation.as_ref().is_none_or(|g| g.passed);
    Ok(VerifyReport {
        schema_version: render::VERIFY_SCHEMA_VERSION,
        model: path.display().to_string(),
        against: other_path.display().to_string(),
        against_kind: "model",
        tokens: out.len(),
        prompt,
        notes: model.notes().to_vec(),
        against_notes: other.notes().to_vec(),
        reference_notes: Vec::new(),
        passed: comparison.passed() && generation_passed,
        generation,
        first_failure: comparison.first_failing_stage().map(|s| s.blame()),
        comparison,
    })
}
