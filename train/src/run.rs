//! A training run: its settings, the trainer state (model, optimizer, step, data RNG) and
//! the loop that logs, checkpoints and exports.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::DType;
use serde::{Deserialize, Serialize};
use walsh::model::Config;
use walsh::ops::WeightFormat;

use crate::checkpoint::{self, CHECKPOINT_DIR, FORMAT_VERSION, State};
use crate::data::{Batch, Corpus};
use crate::error::TrainError;
use crate::model::{NamedTensors, TrainModel, init_tensors};
use crate::optim::{AdamW, AdamWSettings, Schedule};
use crate::rng::{SplitMix64, fnv1a};

/// The training log inside a run's output directory.
pub const LOG_FILE: &str = "train_log.csv";
const LOG_HEADER: &str = "step,train_loss,val_loss,lr,elapsed_s";

/// Everything that determines a run's result. A checkpoint stores it, and `--resume`
/// refuses settings that differ, since the continued run would not be the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The model; its max_position_embeddings is the training context.
    pub model: Config,
    /// Windows per step.
    pub batch: usize,
    pub schedule: Schedule,
    pub adamw: AdamWSettings,
    /// Seeds the initial weights and the data sampler.
    pub seed: u64,
    /// Steps between validation losses (also taken at the last step).
    pub eval_every: u64,
    /// Windows of held-out text in the fixed validation sample.
    pub val_windows: usize,
}

impl Settings {
    pub fn context(&self) -> usize {
        self.model.max_position_embeddings
    }

    /// Checks every setting; the message names the one that is wrong.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Input(m));
        self.model.validate().map_err(TrainError::Input)?;
        if self.model.vocab_size != 256 {
            return bad(format!(
                "vocab_size = {}: the trainer is byte-level (256)",
                self.model.vocab_size
            ));
        }
        if self.context() < 2 {
            return bad("the context must be at least 2 bytes".into());
        }
        if self.batch == 0 || self.val_windows == 0 || self.eval_every == 0 {
            return bad("batch, val windows and eval interval must be positive".into());
        }
        // NaN fails every comparison below, so each check also rejects it.
        let positive = |x: f64| x > 0.0 && x.is_finite();
        let s = &self.schedule;
        if s.steps == 0 || s.warmup > s.steps {
            return bad(format!(
                "steps = {} must be positive and at least warmup = {}",
                s.steps, s.warmup
            ));
        }
        if !positive(s.peak) {
            return bad(format!("learning rate {} must be positive", s.peak));
        }
        if !(0.0..=1.0).contains(&s.final_ratio) {
            return bad(format!(
                "final lr ratio {} must be in [0, 1]",
                s.final_ratio
            ));
        }
        let a = &self.adamw;
        let beta_ok = |b: f64| (0.0..1.0).contains(&b);
        if !beta_ok(a.beta1) || !beta_ok(a.beta2) || !positive(a.eps) {
            return bad("AdamW needs betas in [0, 1) and a positive eps".into());
        }
        if !(positive(a.weight_decay) || a.weight_decay == 0.0) {
            return bad(format!(
                "weight decay {} must be non-negative",
                a.weight_decay
            ));
        }
        if !positive(a.clip) {
            return bad(format!("the clip norm {} must be positive", a.clip));
        }
        Ok(())
    }
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Mean loss of the step's batch, before the update.
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The whole state of a run.
pub struct Trainer<'c> {
    settings: Settings,
    corpus: &'c Corpus,
    model: TrainModel,
    opt: AdamW,
    step: u64,
    rng: SplitMix64,
    val: Vec<Batch>,
}

impl<'c> Trainer<'c> {
    /// A fresh run: initial weights and data order from `settings.seed`.
    pub fn new(settings: Settings, corpus: &'c Corpus) -> Result<Self, TrainError> {
        settings.validate()?;
        let tensors = init_tensors(&settings.model, settings.seed);
        // A stream of its own: no tensor name hashes to this one.
        let rng = SplitMix64(settings.seed ^ fnv1a("walsh-train batches"));
        Self::assemble(settings, corpus, tensors, 0, rng, |_| Ok(()))
    }

    /// Continues the run checkpointed in `dir`, which must have been made with `settings`.
    /// Returns the trainer and the seconds already spent.
    pub fn resume(
        dir: &Path,
        settings: Settings,
        corpus: &'c Corpus,
    ) -> Result<(Self, f64), TrainError> {
        settings.validate()?;
        let fresh = init_tensors(&settings.model, settings.seed);
        let names: Vec<String> = fresh.iter().map(|t| t.0.clone()).collect();
        let shapes: Vec<Vec<usize>> = fresh.iter().map(|t| t.1.clone()).collect();
        let loaded = checkpoint::load(dir, &names, &shapes)?;
        if loaded.state.settings != settings {
            return Err(TrainError::Checkpoint {
                path: checkpoint::state_path(dir),
                message: format!(
                    "it was made with other settings ({}); resume with the same ones",
                    differences(&loaded.state.settings, &settings)
                ),
            });
        }
        let tensors = names
            .into_iter()
            .zip(shapes.iter().cloned())
            .zip(loaded.params)
            .map(|((n, s), v)| (n, s, v))
            .collect();
        let rng = SplitMix64(loaded.state.rng);
        let step = loaded.state.step;
        let trainer = Self::assemble(settings, corpus, tensors, step, rng, |opt| {
            opt.t = loaded.state.adam_t;
            opt.m = checkpoint::tensors(loaded.m, &shapes, DType::F32)?;
            opt.v = checkpoint::tensors(loaded.v, &shapes, DType::F32)?;
            Ok(())
        })?;
        Ok((trainer, loaded.state.elapsed_s))
    }

    /// The trainer at `step` with weights `tensors`; `restore` sets the fresh optimizer's
    /// state.
    fn assemble(
        settings: Settings,
        corpus: &'c Corpus,
        tensors: NamedTensors,
        step: u64,
        rng: SplitMix64,
        restore: impl FnOnce(&mut AdamW) -> Result<(), TrainError>,
    ) -> Result<Self, TrainError> {
        let model = TrainModel::from_tensors(&settings.model, tensors, DType::F32)?;
        let mut opt = AdamW::new(settings.adamw.clone(), model.params())?;
        restore(&mut opt)?;
        corpus.check(settings.context())?;
        let val = corpus.validation(settings.val_windows, settings.batch, settings.context())?;
        Ok(Self {
            settings,
            corpus,
            model,
            opt,
            step,
            rng,
            val,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn model(&self) -> &TrainModel {
        &self.model
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// One optimizer step on a fresh random batch.
    pub fn train_step(&mut self) -> Result<StepStats, TrainError> {
        let batch =
            self.corpus
                .sample(&mut self.rng, self.settings.batch, self.settings.context())?;
        let loss = self.model.loss(&batch.inputs, &batch.targets)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step + 1,
                loss: value,
            });
        }
        let grads = loss.backward()?;
        let lr = self.settings.schedule.lr(self.step + 1);
        let grad_norm = self.opt.step(self.model.params(), &grads, lr)?;
        self.step += 1;
        Ok(StepStats {
            loss: value,
            lr,
            grad_norm,
        })
    }

    /// Mean loss (nats per byte) on the fixed validation sample.
    pub fn val_loss(&self) -> Result<f64, TrainError> {
        let (mut total, mut windows) = (0.0, 0);
        for b in &self.val {
            let n = b.inputs.dim(0)?;
            let loss = self.model.loss(&b.inputs, &b.targets)?.to_scalar::<f32>()?;
            total += loss as f64 * n as f64;
            windows += n;
        }
        Ok(total / windows as f64)
    }

    /// Writes the checkpoint into `dir`.
    pub fn save_checkpoint(&self, dir: &Path, elapsed_s: f64) -> Result<(), TrainError> {
        let state = State {
            format_version: FORMAT_VERSION,
            settings: self.settings.clone(),
            step: self.step,
            adam_t: self.opt.t,
            rng: self.rng.0,
            elapsed_s,
        };
        let names: Vec<String> = self.model.params().iter().map(|p| p.name.clone()).collect();
        let values: Vec<_> = self
            .model
            .params()
            .iter()
            .map(|p| p.var.as_tensor().clone())
            .collect();
        checkpoint::save(dir, &state, &names, &values, &self.opt)
    }
}

/// The top-level fields in which two settings differ, for the resume error.
fn differences(a: &Settings, b: &Settings) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "unknown fields".into();
    };
    let differing: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: checkpoint {v}, now {}", b.get(k).unwrap_or_default()))
        .collect();
    differing.join("; ")
}

/// How and where a run is driven.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Output directory: config.json, model.safetensors, train_log.csv, checkpoint/.
    pub out: PathBuf,
    /// Continue from `out/checkpoint` instead of starting afresh.
    pub resume: bool,
    /// Wall-clock budget of this session: when spent, checkpoint, export and stop.
    pub budget: Option<Duration>,
    /// Wall-clock time between checkpoints.
    pub checkpoint_every: Duration,
}

/// One logged step, for progress reports.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub step: u64,
    pub steps: u64,
    pub stats: StepStats,
    pub val_loss: Option<f64>,
    /// Seconds of training over all sessions.
    pub elapsed_s: f64,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// All steps done.
    Finished,
    /// The wall-clock budget ran out.
    Budget,
    /// The observer asked to stop.
    Observer,
}

#[derive(Clone, Debug)]
pub struct Summary {
    pub step: u64,
    pub stop: Stop,
    /// The last validation loss computed in this session.
    pub val_loss: Option<f64>,
    pub elapsed_s: f64,
}

/// Trains until `settings.schedule.steps`, the budget, or the observer says stop; logs
/// every step to `out/train_log.csv`, checkpoints every `checkpoint_every` and at the end,
/// and exports the model (F16) with every checkpoint.
pub fn run(
    settings: &Settings,
    corpus: &Corpus,
    opts: &RunOptions,
    mut observer: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<Summary, TrainError> {
    let ckpt = opts.out.join(CHECKPOINT_DIR);
    let (mut trainer, elapsed_before) = if opts.resume {
        Trainer::resume(&ckpt, settings.clone(), corpus)?
    } else {
        if checkpoint::state_path(&ckpt).exists() {
            return Err(TrainError::Input(format!(
                "{} exists: pass --resume to continue that run, or remove it to start over",
                checkpoint::state_path(&ckpt).display()
            )));
        }
        (Trainer::new(settings.clone(), corpus)?, 0.0)
    };
    std::fs::create_dir_all(&opts.out).map_err(TrainError::io(&opts.out))?;
    let mut log = Log::open(&opts.out.join(LOG_FILE), trainer.step())?;

    let session = Instant::now();
    let elapsed = || elapsed_before + session.elapsed().as_secs_f64();
    let mut last_checkpoint = Instant::now();
    let steps = settings.schedule.steps;
    let mut stop = Stop::Finished;
    let mut val_loss = None;
    while trainer.step() < steps {
        if opts.budget.is_some_and(|b| session.elapsed() >= b) {
            stop = Stop::Budget;
            break;
        }
        let stats = trainer.train_step()?;
        let step = trainer.step();
        let val = if step % settings.eval_every == 0 || step == steps {
            Some(trainer.val_loss()?)
        } else {
            None
        };
        val_loss = val.or(val_loss);
        let progress = Progress {
            step,
            steps,
            stats,
            val_loss: val,
            elapsed_s: elapsed(),
        };
        log.row(&progress)?;
        if observer(&progress).is_break() {
            stop = Stop::Observer;
            break;
        }
        if last_checkpoint.elapsed() >= opts.checkpoint_every && step < steps {
            save(&trainer, &opts.out, &mut log, elapsed())?;
            last_checkpoint = Instant::now();
        }
    }
    let elapsed_s = elapsed();
    save(&trainer, &opts.out, &mut log, elapsed_s)?;
    Ok(Summary {
        step: trainer.step(),
        stop,
        val_loss,
        elapsed_s,
    })
}

/// Flushes the log, then writes the checkpoint and the F16 export: after it, the log
/// holds every row up to the checkpointed step (a resumed run drops any later ones).
fn save(trainer: &Trainer, out: &Path, log: &mut Log, elapsed_s: f64) -> Result<(), TrainError> {
    log.flush()?;
    trainer.save_checkpoint(&out.join(CHECKPOINT_DIR), elapsed_s)?;
    trainer.model().export(out, WeightFormat::F16)
}

/// train_log.csv, one row per step: `step,train_loss,val_loss,lr,elapsed_s` (val_loss
/// empty where it was not computed).
struct Log {
    path: PathBuf,
    file: BufWriter<File>,
}

impl Log {
    /// Starts the log afresh at step 0; when resuming at `step`, keeps the rows up to it
    /// (rows written after the checkpoint by a killed run are redone by the resumed one).
    fn open(path: &Path, step: u64) -> Result<Self, TrainError> {
        let mut kept = vec![LOG_HEADER.to_string()];
        if step > 0 {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(TrainError::io(path)(e)),
            };
            kept.extend(
                text.lines()
                    .skip(1)
                    .filter(|line| {
                        line.split(',')
                            .next()
                            .and_then(|s| s.parse::<u64>().ok())
                            .is_some_and(|s| s <= step)
                    })
                    .map(str::to_string),
            );
        }
        let file = File::create(path).map_err(TrainError::io(path))?;
        let mut log = Self {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
        };
        for line in kept {
            writeln!(log.file, "{line}").map_err(TrainError::io(path))?;
        }
        log.flush()?;
        Ok(log)
    }

    fn row(&mut self, p: &Progress) -> Result<(), TrainError> {
        let val = p.val_loss.map(|v| format!("{v:.6}")).unwrap_or_default();
        writeln!(
            self.file,
            "{},{:.6},{val},{:.6e},{:.1}",
            p.step, p.stats.loss, p.stats.lr, p.elapsed_s
        )
        .map_err(TrainError::io(&self.path))?;
        // One short row per step of about a second: flushing each keeps `tail -f` useful.
        self.flush()
    }

    fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(TrainError::io(&self.path))
    }
}
