//! `walsh-train`: trains a walsh model on the CPU, or scores exported weights on a text.
//!
//! Run with `RAYON_NUM_THREADS=1` (docs/measured.md, Training): candle's thread pool
//! spin-waits under load, and two single-threaded runs side by side use two cores better.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use walsh::model::{AttnOutput, Config, Query};
use walsh_train::data::Corpus;
use walsh_train::eval::text_loss;
use walsh_train::model::TrainModel;
use walsh_train::optim::{AdamWSettings, Schedule};
use walsh_train::report::{Report, ReportOptions, discover};
use walsh_train::run::{RunOptions, Settings, Stop, run};

#[derive(Parser, Debug)]
#[command(
    name = "walsh-train",
    version,
    about = "Train a walsh model on the CPU (candle), or score exported weights on a text",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mean loss (nats/byte) of a model directory on a text, by the trainer's own forward
    /// pass, with the sliding-window rule of `walsh eval`.
    Eval(EvalArgs),
    /// The seed sweep's summary from the runs' files (train/sweep.sh layout): held-out
    /// mean and spread per variant, paired differences, parameters, training FLOPs, and
    /// validation loss against FLOPs and wall time as SVG.
    Report(ReportArgs),
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum AttnOutputArg {
    Hadamard,
    Dense,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum QueryArg {
    Dense,
    Identity,
    ResidualMlp,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Output directory: config.json and model.safetensors (F16, rewritten at every
    /// checkpoint), train_log.csv, checkpoint/.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "hadamard")]
    attn_output: AttnOutputArg,
    #[arg(long, value_enum, default_value = "dense")]
    query: QueryArg,
    #[arg(long, default_value_t = 256)]
    hidden_size: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Key/value heads (grouped-query attention): must divide --heads; default --heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// MLP width; default 8/3 of hidden_size rounded up to a multiple of 16 (688 at 256),
    /// the usual llama ratio.
    #[arg(long)]
    intermediate_size: Option<usize>,
    /// Training context in bytes; also the exported max_position_embeddings.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Total steps; the learning-rate schedule spans them.
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Linear warmup steps; default steps / 20.
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seeds the initial weights and the order of the training windows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory with train.txt and valid.txt (see train/fetch_data.sh).
    #[arg(long, default_value = "train/data")]
    data: PathBuf,
    /// Continue the run checkpointed in OUT/checkpoint (same settings).
    #[arg(long)]
    resume: bool,
    /// Wall-clock budget for this session in minutes: when spent, checkpoint, export and
    /// exit successfully (continue later with --resume).
    #[arg(long)]
    minutes: Option<f64>,
    /// Minutes between checkpoints.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
    /// Steps between validation losses.
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Held-out windows in the fixed validation sample.
    #[arg(long, default_value_t = 64)]
    val_windows: usize,
}

#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// Model directory (config.json + model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Text file to score, read as bytes.
    #[arg(long)]
    text: PathBuf,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// Repository root: runs in models/shakespeare-<variant> (seed 1) and
    /// train/runs/<variant>-seed<N>.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where to write seeds.md, seeds.json, loss-vs-flops.svg and loss-vs-time.svg.
    #[arg(long, default_value = "train/results")]
    out: PathBuf,
    /// A run counts once its log reaches this step.
    #[arg(long, default_value_t = 1500)]
    steps: u64,
    /// Windows per step the runs were trained with.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Write nothing; fail if the files in --out differ from what the runs give.
    #[arg(long)]
    check: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Eval(args)) => eval_cmd(&args),
        Some(Command::Report(args)) => report_cmd(&args),
        None => train_cmd(&cli.train),
    }
}

fn minutes(m: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(m * 60.0)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{flag} {m} is not a positive number of minutes"))
}

fn settings(args: &TrainArgs) -> Settings {
    let d = args.hidden_size;
    Settings {
        model: Config {
            hidden_size: d,
            num_hidden_layers: args.layers,
            num_attention_heads: args.heads,
            num_key_value_heads: args.kv_heads.filter(|&k| k != args.heads),
            intermediate_size: args
                .intermediate_size
                .unwrap_or_else(|| (8 * d).div_ceil(3).div_ceil(16) * 16),
            vocab_size: 256,
            max_position_embeddings: args.context,
            attn_output: match args.attn_output {
                AttnOutputArg::Hadamard => AttnOutput::Hadamard,
                AttnOutputArg::Dense => AttnOutput::Dense,
            },
            query: match args.query {
                QueryArg::Dense => Query::Dense,
                QueryArg::Identity => Query::Identity,
                QueryArg::ResidualMlp => Query::ResidualMlp,
            },
            ..Default::default()
        },
        batch: args.batch,
        schedule: Schedule {
            peak: args.lr,
            warmup: args.warmup.unwrap_or(args.steps / 20),
            steps: args.steps,
            final_ratio: 0.1,
        },
        adamw: AdamWSettings {
            weight_decay: args.weight_decay,
            clip: args.clip,
            ..AdamWSettings::default()
        },
        seed: args.seed,
        eval_every: args.eval_every,
        val_windows: args.val_windows,
    }
}

fn train_cmd(args: &TrainArgs) -> Result<()> {
    let Some(out) = args.out.clone() else {
        bail!("--out is required");
    };
    let settings = settings(args);
    settings.validate()?;
    let corpus = Corpus::load(&args.data)?;
    let opts = RunOptions {
        out: out.clone(),
        resume: args.resume,
        budget: args.minutes.map(|m| minutes(m, "minutes")).transpose()?,
        checkpoint_every: minutes(args.checkpoint_minutes, "checkpoint-minutes")?,
    };

    let bar = ProgressBar::new(settings.schedule.steps).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    bar.set_message(format!("{} {}", settings.model.variant(), out.display()));
    let start = Instant::now();
    let mut first_step = None;
    let mut last_val = None;
    let summary = run(&settings, &corpus, &opts, |p| {
        first_step.get_or_insert(p.step);
        last_val = p.val_loss.or(last_val);
        let val = last_val.map(|v| format!(" val {v:.3}")).unwrap_or_default();
        bar.set_position(p.step);
        bar.set_message(format!(
            "loss {:.3}{val} lr {:.2e} |g| {:.2}",
            p.stats.loss, p.stats.lr, p.stats.grad_norm
        ));
        ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();

    let seconds = start.elapsed().as_secs_f64();
    let done = first_step.map_or(0, |first| summary.step + 1 - first);
    let why = match summary.stop {
        Stop::Finished => "finished",
        Stop::Budget => "time budget spent",
        Stop::Observer => "stopped",
    };
    println!(
        "{} {}: step {}/{} ({why}), {done} steps in {seconds:.0} s ({:.3} s/step), val loss {}",
        settings.model.variant(),
        out.display(),
        summary.step,
        settings.schedule.steps,
        seconds / done.max(1) as f64,
        summary
            .val_loss
            .map_or("-".to_string(), |v| format!("{v:.4} nats/byte")),
    );
    Ok(())
}

fn eval_cmd(args: &EvalArgs) -> Result<()> {
    let model = TrainModel::load(&args.model)?;
    let bytes =
        std::fs::read(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let tokens: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
    let report = text_loss(&model, &tokens, args.batch)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} bytes scored (context {}): {:.6} nats/byte, {:.4} bits/byte",
            report.bytes_scored, report.context, report.nats_per_byte, report.bits_per_byte
        );
    }
    Ok(())
}

fn report_cmd(args: &ReportArgs) -> Result<()> {
    let runs = discover(&args.root)?;
    let options = ReportOptions {
        steps: args.steps,
        batch: args.batch,
    };
    let report = Report::build(&runs, options)?;
    let mut stale = Vec::new();
    if !args.check {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
    }
    for (name, text) in report.files() {
        let path = args.out.join(name);
        if args.check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    for r in &report.runs {
        if !r.complete {
            println!(
                "incomplete: {} (step {}/{})",
                r.dir, r.last_step, args.steps
            );
        } else if r.heldout.is_none() {
            println!(
                "no held-out figure yet: {} (train/heldout.sh {})",
                r.dir, r.dir
            );
        }
    }
    if !stale.is_empty() {
        bail!(
            "out of date (rerun walsh-train report): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
