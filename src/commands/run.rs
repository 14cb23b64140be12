//! `orient run`: the CPU forward on a prompt, printing the top next-token logits.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use orient::model::{self, ForwardOptions, ForwardOutput, LogitPositions, Model};
use orient::output::run::{self as render, EncoderSummary, PositionTop, RunReport, Timings};

/// Arguments of `orient run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder, `.safetensors` file or `model.safetensors.index.json`.
    /// Or a repo id `ORG/NAME[@REV]` in the local Hugging Face cache (an existing local path wins).
    pub model: super::ModelPath,
    #[command(flatten)]
    pub prompt: super::PromptArgs,
    /// How many candidates to print per position.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print candidates at every position, not only the last.
    #[arg(long)]
    pub all_positions: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write input_ids, logits and hidden states to this safetensors file, in the
    /// format of the fixtures' `reference.safetensors` (readable by `verify --reference`).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Let --save replace an existing file (never one of the model's own files).
    #[arg(long, requires = "save")]
    pub force: bool,
    /// Run the forward N times and print timings to stderr (for benchmarks).
    #[arg(long, hide = true, default_value_t = 1)]
    pub repeat: usize,
    /// Keep weight pages mapped between forwards instead of releasing them after each layer
    /// (for benchmarks of a model that fits in RAM).
    #[arg(long, hide = true)]
    pub keep_pages: bool,
    #[command(flatten)]
    pub layout: super::LayoutArgs,
    #[command(flatten)]
    pub hub: super::HubArgs,
}

/// Runs `orient run`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
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
    model.keep_pages(args.keep_pages);
    let (tokens, tokenizer) = args.prompt.ids(&ckpt, model.config().vocab_size)?;
    if let Some(path) = &args.save {
        // Before the forward, which may take minutes.
        model::save::check_target(&ckpt, path, args.force)?;
    }
    let load = start.elapsed();
    // Only the last position's logits are printed unless --all-positions; --save stores all.
    let every_position = args.save.is_some() || args.all_positions;
    let opts = ForwardOptions {
        record: args.save.is_some(),
        logits: if every_position {
            LogitPositions::All
        } else {
            LogitPositions::Last
        },
    };
    let (out, forwards) = run_forwards(&mut model, &model_path, &tokens, &args, &opts)?;
    if args.repeat > 1 {
        render::render_timings(
            &timings(&model, &out, load, forwards),
            &mut orient::output::stderr(),
        )?;
    }
    let saved = match &args.save {
        Some(path) => {
            model::save::write(&out, path, save_metadata(&model_path), args.force)
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let positions: Vec<usize> = if model.is_encoder() {
        Vec::new() // no logits: see `encoder`
    } else if args.all_positions {
        (0..out.len()).collect()
    } else {
        vec![out.len() - 1]
    };
    let encoder = model.is_encoder().then(|| EncoderSummary {
        last_hidden_state: [out.len(), out.hidden_size],
        pooler_output: out.pooler_output.clone(),
    });
    let report = RunReport {
        schema_version: render::RUN_SCHEMA_VERSION,
        model: model_path.display().to_string(),
        model_type: model.config().model_type.clone(),
        convention: model.convention().to_string(),
        tokens: out.len(),
        input_ids: tokens.clone(),
        prompt: args.prompt.prompt.clone(),
        notes: model.notes().to_vec(),
        positions: positions
            .into_iter()
            .map(|position| {
                let top = out.top_k(position, args.top_k);
                let text = tokenizer.as_ref().map(|tok| {
                    top.iter()
                        .map(|t| tok.decode(&[t.token], false).unwrap_or_default())
                        .collect()
                });
                PositionTop {
                    position,
                    top,
                    text,
                }
            })
            .collect(),
        saved,
        encoder,
    };
    let mut lock = orient::output::stdout();
    render::render(&report, args.json, &mut lock)?;
    lock.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The forward, `--repeat` times: the last output and each run's time.
fn run_forwards(
    model: &mut Model<'_>,
    model_path: &Path,
    tokens: &[u32],
    args: &Args,
    opts: &ForwardOptions,
) -> anyhow::Result<(ForwardOutput, Vec<Duration>)> {
    let mut forwards = Vec::new();
    let mut output = None;
    for _ in 0..args.repeat.max(1) {
        let t0 = Instant::now();
        let out = model.forward_with(tokens, opts).with_context(|| {
            format!(
                "running the forward of {} on {} tokens{}",
                model_path.display(),
                tokens.len(),
                if opts.logits == LogitPositions::All {
                    " (--save and --all-positions keep the logits of every position)"
                } else {
                    ""
                }
            )
        })?;
        forwards.push(t0.elapsed());
        output = Some(out);
    }
    Ok((output.context("no forward ran")?, forwards))
}

/// The `--repeat` timings, with the FLOPs of one forward.
fn timings(
    model: &Model<'_>,
    out: &ForwardOutput,
    load: Duration,
    forwards: Vec<Duration>,
) -> Timings {
    let cfg = model.config();
    Timings {
        load,
        forwards,
        tokens: out.len(),
        // 2·active parameters per token (a mixture of experts runs k of its E experts), less
        // the lm_head rows not computed (V·H per position)
        flops: 2.0 * model.active_parameters() * out.len() as f64
            - if model.is_encoder() {
                0.0 // no lm_head; the embedding tables are read, not multiplied (≈)
            } else {
                2.0 * (cfg.vocab_size * cfg.hidden_size) as f64
                    * (out.len() - out.logit_positions.len()) as f64
            },
    }
}

/// `__metadata__` of a `--save` file: what each tensor is, and where it came from.
fn save_metadata(model_path: &Path) -> HashMap<String, String> {
    let mut meta = HashMap::new();
    meta.insert(
        "hidden_states".to_string(),
        "hf output_hidden_states: index 0 = embedding output; index i (1..L-1) = output of decoder layer i-1 (== layer_output.{i-1}); index L = AFTER the final norm, i.e. the lm_head input".to_string(),
    );
    meta.insert(
        "layer_output".to_string(),
        "raw output of decoder layer i, pre final norm".to_string(),
    );
    meta.insert(
        "logits".to_string(),
        "f32 [T, V], orient CPU forward (f32)".to_string(),
    );
    meta.insert("model".to_string(), model_path.display().to_string());
    meta.insert("orient".to_string(), env!("CARGO_PKG_VERSION").to_string());
    meta
}
