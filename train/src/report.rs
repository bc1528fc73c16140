//! `walsh-train report`: the seed sweep (`train/sweep.sh`) summarized from the files its
//! runs leave behind, so anyone with the repository can redo it without training:
//!
//! - each run directory's `config.json`, `train_log.csv` and `heldout_full.json` (walsh's
//!   and the trainer's loss on the whole held-out slice, written by `train/heldout.sh`);
//! - out: `seeds.md` and `seeds.json` (parameters, training FLOPs, held-out nats/byte per
//!   seed with mean and spread per variant, paired differences between variants) and two
//!   SVG charts, validation loss against training FLOPs and against wall time.
//!
//! Layout (the sweep's): seed 1 of variant `v` is the shipped `models/shakespeare-v`,
//! seed N > 1 is `train/runs/v-seedN`.
//!
//! Training FLOPs ([`train_flops_per_token`]) count the matrix products and the attention
//! scores, as is usual, with the Hadamard output at the cost of a fast transform.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use walsh::model::weights::expected_tensors;
use walsh::model::{AttnOutput, Config, Query};
use walsh::ops::hadamard::WhtSize;

use crate::chart::{Line, LineChart};
use crate::error::TrainError;
use crate::run::LOG_FILE;

/// Walsh's and the trainer's loss on the whole held-out slice, in each run directory.
pub const HELDOUT_FILE: &str = "heldout_full.json";

/// The sweep's variants: directory name, output projection, query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub attn_output: AttnOutput,
    pub query: Query,
}

pub const VARIANTS: [Variant; 4] = [
    Variant {
        name: "dense",
        attn_output: AttnOutput::Dense,
        query: Query::Dense,
    },
    Variant {
        name: "hadamard",
        attn_output: AttnOutput::Hadamard,
        query: Query::Dense,
    },
    Variant {
        name: "hadamard-qid",
        attn_output: AttnOutput::Hadamard,
        query: Query::Identity,
    },
    Variant {
        name: "hadamard-qmlp",
        attn_output: AttnOutput::Hadamard,
        query: Query::ResidualMlp,
    },
];

/// The paired comparisons the report makes: (a, b, what a - b measures).
pub const COMPARISONS: [(&str, &str, &str); 4] = [
    (
        "hadamard",
        "dense",
        "Hadamard vs dense output projection (dense query)",
    ),
    (
        "hadamard-qid",
        "hadamard",
        "identity vs dense query (Hadamard output)",
    ),
    (
        "hadamard-qmlp",
        "hadamard",
        "residual-MLP vs dense query (Hadamard output)",
    ),
    (
        "hadamard-qmlp",
        "hadamard-qid",
        "residual-MLP vs identity query (Hadamard output)",
    ),
];

/// Where the sweep puts seed `seed` of variant `name`, relative to the repository root.
pub fn run_dir(name: &str, seed: u64) -> PathBuf {
    if seed == 1 {
        PathBuf::from(format!("models/shakespeare-{name}"))
    } else {
        PathBuf::from(format!("train/runs/{name}-seed{seed}"))
    }
}

/// One row of `train_log.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    pub step: u64,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub lr: f64,
    pub elapsed_s: f64,
}

/// Parses `train_log.csv` (`step,train_loss,val_loss,lr,elapsed_s`, `val_loss` empty
/// where not computed); steps must increase. `path` names the file in errors.
pub fn parse_log(path: &Path, text: &str) -> Result<Vec<LogRow>, TrainError> {
    let bad = |line: usize, why: String| {
        TrainError::Input(format!("{} line {line}: {why}", path.display()))
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == "step,train_loss,val_loss,lr,elapsed_s" => {}
        other => {
            return Err(bad(
                1,
                format!(
                    "expected the header step,train_loss,val_loss,lr,elapsed_s, found {:?}",
                    other.map_or("", |(_, h)| h)
                ),
            ));
        }
    }
    let mut rows: Vec<LogRow> = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 5 {
            return Err(bad(n, format!("{} fields, expected 5", fields.len())));
        }
        let num = |k: usize, name: &str| {
            fields[k]
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(n, format!("{name} {:?} is not a number", fields[k])))
        };
        let step = fields[0]
            .trim()
            .parse::<u64>()
            .map_err(|_| bad(n, format!("step {:?} is not a whole number", fields[0])))?;
        if rows.last().is_some_and(|r| r.step >= step) {
            return Err(bad(
                n,
                format!("step {step} does not follow the previous row's"),
            ));
        }
        rows.push(LogRow {
            step,
            train_loss: num(1, "train_loss")?,
            val_loss: if fields[2].trim().is_empty() {
                None
            } else {
                Some(num(2, "val_loss")?)
            },
            lr: num(3, "lr")?,
            elapsed_s: num(4, "elapsed_s")?,
        });
    }
    Ok(rows)
}

/// Parameter counts of a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    pub total: u64,
    /// `embed_tokens` and, when untied, `lm_head`.
    pub embedding: u64,
    /// Everything else: the layers and the final norm.
    pub non_embedding: u64,
    /// The attention block's own parameters: q/k/v/o or their replacements (q_down,
    /// q_up, o_scale, o_bias).
    pub attention: u64,
}

pub fn param_counts(config: &Config) -> ParamCounts {
    let (mut total, mut embedding, mut attention) = (0u64, 0u64, 0u64);
    for (name, shape) in expected_tensors(config) {
        let n = shape.iter().product::<usize>() as u64;
        total += n;
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            embedding += n;
        }
        if name.contains(".self_attn.") {
            attention += n;
        }
    }
    ParamCounts {
        total,
        embedding,
        non_embedding: total - embedding,
        attention,
    }
}

/// Training FLOPs per token (forward and backward), by part.
///
/// - `matmul`: 6 x the weights of every matrix a token is multiplied by (q/k/v/o or
///   q_down/q_up, the three MLP matrices, `lm_head`; the embedding is a lookup and counts
///   0): 2 per weight forward, 4 backward (input and weight gradients).
/// - `attention`: the scores Q K^T and their use A V over the training window, which the
///   trainer computes whole (masked): 2 x 2 x context x d per layer forward, times 3.
/// - `hadamard`: the output transform at the cost of a fast WHT, d log2 d additions for a
///   power of two (d (log2 p + m - 1) for d = m p, m a Paley order) plus 2d for the
///   per-channel affine per layer forward, times 3. (walsh-train multiplies by
///   the dense d x d matrix H instead, so its wall time does not show this saving; walsh's
///   GPU kernels do the fast transform.)
///
/// Not counted: norms, RoPE, softmax, SwiGLU and the query MLP's SiLU, residual adds, the
/// loss, the optimizer (all O(d) per token).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Flops {
    pub matmul_weights: u64,
    pub matmul: f64,
    pub attention: f64,
    pub hadamard: f64,
    pub per_token: f64,
}

pub fn train_flops_per_token(config: &Config) -> Flops {
    let matmul_weights: u64 = expected_tensors(config)
        .into_iter()
        .filter(|(name, shape)| shape.len() == 2 && name != "model.embed_tokens.weight")
        .map(|(_, shape)| shape.iter().product::<usize>() as u64)
        .sum();
    let d = config.hidden_size as f64;
    let layers = config.num_hidden_layers as f64;
    let context = config.max_position_embeddings as f64;
    let matmul = 6.0 * matmul_weights as f64;
    let attention = 3.0 * layers * 4.0 * context * d;
    let hadamard = match config.attn_output {
        AttnOutput::Dense => 0.0,
        AttnOutput::Hadamard => {
            // d = m p: log2 p butterfly stages, then an m-term sum per output for the m x m
            // mix across chunks (m = 1 for a power of two: d log2 d).
            let (m, p) =
                WhtSize::new(config.hidden_size).map_or((1.0, d), |s| (s.m as f64, s.p as f64));
            3.0 * layers * (d * (p.log2() + m - 1.0) + 2.0 * d)
        }
    };
    Flops {
        matmul_weights,
        matmul,
        attention,
        hadamard,
        per_token: matmul + attention + hadamard,
    }
}

/// One evaluation in [`HELDOUT_FILE`] (the fields of `walsh eval --json` and
/// `walsh-train eval --json` the report uses; others are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldoutEval {
    pub bytes_scored: usize,
    pub nats_per_byte: f64,
    pub context: usize,
}

/// [`HELDOUT_FILE`]: the held-out slice scored by walsh and by the trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heldout {
    /// The text scored, relative to the repository root.
    pub text: String,
    /// The KV cache precision of walsh's evaluation (`f32`: exact).
    pub kv_cache: String,
    /// `walsh eval --device cpu --json`.
    pub walsh: HeldoutEval,
    /// `walsh-train eval --json`.
    pub trainer: HeldoutEval,
}

/// (step, validation loss, elapsed_s) of the rows with a validation loss.
pub type ValPoints = Vec<(u64, f64, f64)>;

/// One run of the sweep as found on disk.
#[derive(Clone, Debug)]
pub struct Run {
    pub variant: Variant,
    pub seed: u64,
    /// Relative to the repository root.
    pub dir: PathBuf,
    pub config: Config,
    pub log: Vec<LogRow>,
    pub heldout: Option<Heldout>,
}

impl Run {
    pub fn last_step(&self) -> u64 {
        self.log.last().map_or(0, |r| r.step)
    }

    /// The validation loss logged at the last step, if it was computed there.
    pub fn final_val(&self) -> Option<f64> {
        self.log.last().and_then(|r| r.val_loss)
    }

    /// Rows with a validation loss: (step, val_loss, elapsed_s).
    pub fn val_points(&self) -> ValPoints {
        self.log
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step, v, r.elapsed_s)))
            .collect()
    }
}

fn read(path: &Path) -> Result<String, TrainError> {
    std::fs::read_to_string(path).map_err(TrainError::io(path))
}

/// Loads the run in `root/dir`; `None` when it has no training log yet.
pub fn load_run(root: &Path, variant: Variant, seed: u64) -> Result<Option<Run>, TrainError> {
    let dir = run_dir(variant.name, seed);
    let log_path = root.join(&dir).join(LOG_FILE);
    if !log_path.exists() {
        return Ok(None);
    }
    let config = Config::load(&root.join(&dir).join("config.json"))?;
    if (config.attn_output, config.query) != (variant.attn_output, variant.query) {
        return Err(TrainError::Input(format!(
            "{}: config.json is variant {}, but the directory is variant `{}`",
            dir.display(),
            config.variant(),
            variant.name
        )));
    }
    let log = parse_log(&log_path, &read(&log_path)?)?;
    let heldout_path = root.join(&dir).join(HELDOUT_FILE);
    let heldout = if heldout_path.exists() {
        let text = read(&heldout_path)?;
        let h: Heldout = serde_json::from_str(&text)
            .map_err(|e| TrainError::Input(format!("{}: {e}", heldout_path.display())))?;
        if h.walsh.bytes_scored != h.trainer.bytes_scored {
            return Err(TrainError::Input(format!(
                "{}: walsh scored {} bytes, the trainer {}",
                heldout_path.display(),
                h.walsh.bytes_scored,
                h.trainer.bytes_scored
            )));
        }
        Some(h)
    } else {
        None
    };
    Ok(Some(Run {
        variant,
        seed,
        dir,
        config,
        log,
        heldout,
    }))
}

/// Every run of the sweep under `root`, by variant then seed.
pub fn discover(root: &Path) -> Result<Vec<Run>, TrainError> {
    let runs_dir = root.join("train/runs");
    let mut extra: Vec<(String, u64)> = Vec::new();
    if runs_dir.is_dir() {
        for entry in std::fs::read_dir(&runs_dir).map_err(TrainError::io(&runs_dir))? {
            let entry = entry.map_err(TrainError::io(&runs_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((variant, seed)) = name.rsplit_once("-seed")
                && let Ok(seed) = seed.parse::<u64>()
                && seed > 1
            {
                extra.push((variant.to_string(), seed));
            }
        }
    }
    let mut runs = Vec::new();
    for variant in VARIANTS {
        let mut seeds = vec![1];
        seeds.extend(
            extra
                .iter()
                .filter(|(v, _)| v == variant.name)
                .map(|&(_, s)| s),
        );
        seeds.sort_unstable();
        for seed in seeds {
            runs.extend(load_run(root, variant, seed)?);
        }
    }
    Ok(runs)
}

/// Mean and spread of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for one value.
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: &[f64]) -> Option<Spread> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Some(Spread {
        n,
        mean,
        std: var.sqrt(),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// Two-sided 5% critical values of Student's t for 1..=10 degrees of freedom.
const T_975: [f64; 10] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
];

/// Settings of the report: what a complete run is and the batch behind each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReportOptions {
    /// A run is complete when its log reaches this step.
    pub steps: u64,
    /// Windows per step (the log does not record it); tokens per step = batch x context.
    pub batch: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub variant: String,
    pub seed: u64,
    pub dir: String,
    pub last_step: u64,
    pub complete: bool,
    pub final_val_loss: Option<f64>,
    /// Walsh's loss on the whole held-out slice (nats/byte).
    pub heldout: Option<f64>,
    /// The trainer's on the same text.
    pub heldout_trainer: Option<f64>,
    pub kv_cache: Option<String>,
    /// Wall time of training over the steps logged (the machine was shared: see the
    /// report's notes).
    pub seconds_per_step: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VariantSummary {
    pub name: String,
    /// attn_output/query as in config.json.
    pub variant: String,
    pub params: ParamCounts,
    pub flops: Flops,
    pub tokens_per_step: u64,
    pub flops_per_step: f64,
    pub flops_total: f64,
    /// Complete runs' seeds.
    pub seeds: Vec<u64>,
    /// Held-out nats/byte over the complete runs with a held-out figure.
    pub heldout: Option<Spread>,
    pub final_val_loss: Option<Spread>,
}

/// a - b per seed both have (complete, with held-out figures): the seeds share the initial
/// values of their common tensors and the order of the training windows.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub what: String,
    pub seeds: Vec<u64>,
    pub differences: Vec<f64>,
    pub difference: Option<Spread>,
    /// Paired t statistic, with n - 1 degrees of freedom (n >= 2).
    pub t: Option<f64>,
    /// |t| above the two-sided 5% critical value.
    pub significant: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub options: ReportOptions,
    pub variants: Vec<VariantSummary>,
    pub runs: Vec<RunSummary>,
    pub comparisons: Vec<Comparison>,
    #[serde(skip)]
    curves: Vec<(Variant, ValPoints)>,
}

impl Report {
    pub fn build(runs: &[Run], options: ReportOptions) -> Result<Self, TrainError> {
        let complete = |r: &&Run| r.last_step() >= options.steps;
        // Means over seeds only make sense on one text.
        let mut scored = runs.iter().filter_map(|r| {
            r.heldout
                .as_ref()
                .map(|h| (r, &h.text, h.walsh.bytes_scored))
        });
        if let Some((first, text, bytes)) = scored.next()
            && let Some((other, ..)) = scored.find(|s| (s.1, s.2) != (text, bytes))
        {
            return Err(TrainError::Input(format!(
                "{} and {} were scored on different texts: rerun train/heldout.sh",
                first.dir.display(),
                other.dir.display()
            )));
        }
        let mut variants = Vec::new();
        for v in VARIANTS {
            let of_v: Vec<&Run> = runs.iter().filter(|r| r.variant == v).collect();
            let Some(first) = of_v.first() else { continue };
            for r in &of_v {
                if r.config != first.config {
                    return Err(TrainError::Input(format!(
                        "{} and {} have different configurations: not one variant's seeds",
                        first.dir.display(),
                        r.dir.display()
                    )));
                }
            }
            let done: Vec<&Run> = of_v.iter().copied().filter(complete).collect();
            let flops = train_flops_per_token(&first.config);
            let tokens_per_step = (options.batch * first.config.max_position_embeddings) as u64;
            let flops_per_step = flops.per_token * tokens_per_step as f64;
            let heldout: Vec<f64> = done
                .iter()
                .filter_map(|r| r.heldout.as_ref().map(|h| h.walsh.nats_per_byte))
                .collect();
            let val: Vec<f64> = done.iter().filter_map(|r| r.final_val()).collect();
            variants.push(VariantSummary {
                name: v.name.to_string(),
                variant: first.config.variant(),
                params: param_counts(&first.config),
                flops,
                tokens_per_step,
                flops_per_step,
                flops_total: flops_per_step * options.steps as f64,
                seeds: done.iter().map(|r| r.seed).collect(),
                heldout: spread(&heldout),
                final_val_loss: spread(&val),
            });
        }
        let summaries = runs
            .iter()
            .map(|r| RunSummary {
                variant: r.variant.name.to_string(),
                seed: r.seed,
                dir: r.dir.display().to_string(),
                last_step: r.last_step(),
                complete: r.last_step() >= options.steps,
                final_val_loss: r.final_val(),
                heldout: r.heldout.as_ref().map(|h| h.walsh.nats_per_byte),
                heldout_trainer: r.heldout.as_ref().map(|h| h.trainer.nats_per_byte),
                kv_cache: r.heldout.as_ref().map(|h| h.kv_cache.clone()),
                seconds_per_step: r
                    .log
                    .last()
                    .filter(|l| l.step > 0)
                    .map(|l| l.elapsed_s / l.step as f64),
            })
            .collect();
        let heldout_of = |name: &str, seed: u64| {
            runs.iter()
                .filter(complete)
                .find(|r| r.variant.name == name && r.seed == seed)
                .and_then(|r| r.heldout.as_ref())
                .map(|h| h.walsh.nats_per_byte)
        };
        let comparisons = COMPARISONS
            .iter()
            .map(|&(a, b, what)| {
                let mut seeds = Vec::new();
                let mut differences = Vec::new();
                for r in runs.iter().filter(|r| r.variant.name == a) {
                    if let (Some(x), Some(y)) = (heldout_of(a, r.seed), heldout_of(b, r.seed)) {
                        seeds.push(r.seed);
                        differences.push(x - y);
                    }
                }
                let difference = spread(&differences);
                let t = difference
                    .filter(|d| d.n >= 2 && d.std > 0.0)
                    .map(|d| d.mean / (d.std / (d.n as f64).sqrt()));
                let significant = t
                    .zip(difference)
                    .and_then(|(t, d)| T_975.get(d.n - 2).map(|&critical| t.abs() > critical));
                Comparison {
                    a: a.to_string(),
                    b: b.to_string(),
                    what: what.to_string(),
                    seeds,
                    differences,
                    difference,
                    t,
                    significant,
                }
            })
            .collect();
        let curves = runs
            .iter()
            .filter(complete)
            .map(|r| (r.variant, r.val_points()))
            .collect();
        Ok(Self {
            options,
            variants,
            runs: summaries,
            comparisons,
            curves,
        })
    }

    fn variant(&self, name: &str) -> Option<&VariantSummary> {
        self.variants.iter().find(|v| v.name == name)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes") + "\n"
    }

    /// Validation loss against x for every complete run (thin) and the mean over each
    /// variant's seeds at each logged step (bold). `x` maps (variant, step, elapsed_s).
    fn chart(
        &self,
        title: &str,
        subtitle: &str,
        x_label: &str,
        x: impl Fn(&VariantSummary, u64, f64) -> f64,
    ) -> LineChart {
        let mut lines = Vec::new();
        let mut top = f64::NEG_INFINITY;
        for (color, v) in VARIANTS.iter().enumerate() {
            let Some(summary) = self.variant(v.name) else {
                continue;
            };
            let curves: Vec<&ValPoints> = self
                .curves
                .iter()
                .filter(|c| c.0 == *v)
                .map(|c| &c.1)
                .collect();
            if curves.is_empty() {
                continue;
            }
            for c in &curves {
                lines.push(Line {
                    name: None,
                    color,
                    bold: false,
                    points: c.iter().map(|&(s, l, e)| (x(summary, s, e), l)).collect(),
                });
            }
            // the mean at every step all seeds logged
            let mut mean = Vec::new();
            for &(step, _, _) in curves[0] {
                let at: Vec<(f64, f64)> = curves
                    .iter()
                    .filter_map(|c| c.iter().find(|p| p.0 == step).map(|p| (p.1, p.2)))
                    .collect();
                if at.len() == curves.len() {
                    let n = at.len() as f64;
                    let loss = at.iter().map(|p| p.0).sum::<f64>() / n;
                    let elapsed = at.iter().map(|p| p.1).sum::<f64>() / n;
                    if step * 10 >= self.options.steps {
                        top = top.max(loss);
                    }
                    mean.push((x(summary, step, elapsed), loss));
                }
            }
            lines.push(Line {
                name: Some(format!(
                    "{} ({} seed{})",
                    v.name,
                    curves.len(),
                    if curves.len() == 1 { "" } else { "s" }
                )),
                color,
                bold: true,
                points: mean,
            });
        }
        let bottom = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(f64::INFINITY, f64::min);
        let y_range = (bottom.is_finite() && top.is_finite() && top > bottom).then(|| {
            let pad = 0.03 * (top - bottom);
            (bottom - pad, top + pad)
        });
        LineChart {
            title: title.to_string(),
            subtitle: subtitle.to_string(),
            x_label: x_label.to_string(),
            y_label: "validation loss (nats/byte)".to_string(),
            log_x: true,
            y_range,
            lines,
        }
    }

    /// Validation loss against training FLOPs (log x).
    pub fn flops_chart(&self) -> LineChart {
        self.chart(
            "Validation loss vs training compute",
            "thin: one seed; bold: mean over seeds; FLOPs as in train/results/seeds.md",
            "training FLOPs",
            |v, step, _| v.flops_per_step * step as f64,
        )
    }

    /// Validation loss against the trainer's wall time (log x).
    pub fn time_chart(&self) -> LineChart {
        self.chart(
            "Validation loss vs training wall time",
            "walsh-train on a shared 2-core CPU: load differed between runs (see seeds.md)",
            "seconds of training",
            |_, _, elapsed| elapsed,
        )
    }

    /// The Markdown summary.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let o = self.options;
        let _ = writeln!(s, "# Seeds and compute\n");
        let _ = writeln!(
            s,
            "Written by `walsh-train report` from the runs' files (`train/sweep.sh` trains \
             them, `train/heldout.sh` scores them); do not edit. A run counts when its log \
             reaches step {}; {} windows per step.\n",
            o.steps, o.batch
        );
        let _ = writeln!(s, "## Variants\n");
        let _ = writeln!(
            s,
            "Held-out: walsh's loss on the whole `models/shakespeare-heldout.txt` (nats/byte), \
             mean ± sample standard deviation over seeds, and the range.\n"
        );
        let _ = writeln!(
            s,
            "| variant | W_O / query | params | non-embedding | attention | training FLOPs | seeds | held-out nats/byte | range | final val loss |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---:|---:|---:|");
        let pm = |sp: &Option<Spread>| match sp {
            None => "-".to_string(),
            Some(sp) if sp.n == 1 => format!("{:.4}", sp.mean),
            Some(sp) => format!("{:.4} ± {:.4}", sp.mean, sp.std),
        };
        for v in &self.variants {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.3e} | {} | {} | {} | {} |",
                v.name,
                v.variant,
                thousands(v.params.total),
                thousands(v.params.non_embedding),
                thousands(v.params.attention),
                v.flops_total,
                v.seeds
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                pm(&v.heldout),
                v.heldout
                    .filter(|sp| sp.n > 1)
                    .map_or("-".into(), |sp| format!("{:.4} – {:.4}", sp.min, sp.max)),
                pm(&v.final_val_loss),
            );
        }
        let _ = writeln!(s, "\n## Differences (paired by seed)\n");
        let _ = writeln!(
            s,
            "a − b in held-out nats/byte (negative: a is better) for each seed both variants \
             have; runs with one seed start their common tensors from the same values and \
             see the same training windows, so the pairs share everything but the variant. \
             t: paired t statistic; \"yes\" when |t| exceeds the two-sided 5% critical value \
             for n − 1 degrees of freedom (4.303 for three seeds).\n"
        );
        let _ = writeln!(
            s,
            "| comparison | a − b | mean ± std | per seed | t | beyond seed noise (5%) |"
        );
        let _ = writeln!(s, "|---|---|---:|---|---:|---|");
        for c in &self.comparisons {
            let _ = writeln!(
                s,
                "| {} | {} − {} | {} | {} | {} | {} |",
                c.what,
                c.a,
                c.b,
                match c.difference {
                    None => "-".to_string(),
                    Some(d) if d.n == 1 => format!("{:+.4}", d.mean),
                    Some(d) => format!("{:+.4} ± {:.4}", d.mean, d.std),
                },
                c.seeds
                    .iter()
                    .zip(&c.differences)
                    .map(|(s, d)| format!("{s}: {d:+.4}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.t.map_or("-".into(), |t| format!("{t:.2}")),
                c.significant.map_or("-", |b| if b { "yes" } else { "no" }),
            );
        }
        let _ = writeln!(s, "\n## Runs\n");
        let _ = writeln!(
            s,
            "walsh: `walsh eval --device cpu` (KV cache as listed); trainer: `walsh-train \
             eval`, both on the whole held-out slice. s/step: the trainer's wall time per \
             step on this project's shared 2-core machine; it says more about the machine's \
             load at the time than about the variant.\n"
        );
        let _ = writeln!(
            s,
            "| variant | seed | directory | steps | final val loss | held-out (walsh) | trainer | walsh − trainer | KV cache | s/step |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---|---:|");
        let f4 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        for r in &self.runs {
            let _ = writeln!(
                s,
                "| {} | {} | `{}` | {}{} | {} | {} | {} | {} | {} | {} |",
                r.variant,
                r.seed,
                r.dir,
                r.last_step,
                if r.complete { "" } else { " (incomplete)" },
                f4(r.final_val_loss),
                r.heldout.map_or("-".into(), |v| format!("{v:.6}")),
                r.heldout_trainer.map_or("-".into(), |v| format!("{v:.6}")),
                r.heldout
                    .zip(r.heldout_trainer)
                    .map_or("-".into(), |(a, b)| format!("{:.1e}", a - b)),
                r.kv_cache.as_deref().unwrap_or("-"),
                r.seconds_per_step.map_or("-".into(), |v| format!("{v:.2}")),
            );
        }
        let _ = writeln!(s, "\n## Training FLOPs\n");
        let _ = writeln!(
            s,
            "Per token, forward and backward: 6 × the weights of every matrix product \
             (q/k/v/o or q_down/q_up, the MLP, lm_head; the embedding is a lookup) + \
             12 × layers × context × d for the attention scores QKᵀ and their use AV over the \
             whole training window (computed whole, then masked) + for the Hadamard output \
             3 × layers × (d·log2 d + 2d), a fast transform and the affine. Norms, RoPE, \
             softmax, SwiGLU/SiLU, residual adds, the loss and the optimizer are not counted. \
             Per step: × {} windows × context tokens. walsh-train itself multiplies by the \
             dense H matrix, so its wall time does not show the Hadamard saving.\n",
            o.batch
        );
        let _ = writeln!(
            s,
            "| variant | matrix weights | matmul | attention scores | Hadamard | per token | per step |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for v in &self.variants {
            let f = v.flops;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.4e} |",
                v.name,
                thousands(f.matmul_weights),
                thousands(f.matmul as u64),
                thousands(f.attention as u64),
                thousands(f.hadamard as u64),
                thousands(f.per_token as u64),
                v.flops_per_step
            );
        }
        let _ = writeln!(
            s,
            "\nCharts: [loss-vs-flops.svg](loss-vs-flops.svg), [loss-vs-time.svg](loss-vs-time.svg)."
        );
        s
    }

    /// The files the report writes: (name, contents).
    pub fn files(&self) -> Vec<(&'static str, String)> {
        vec![
            ("seeds.md", self.to_markdown()),
            ("seeds.json", self.to_json()),
            ("loss-vs-flops.svg", self.flops_chart().to_svg()),
            ("loss-vs-time.svg", self.time_chart().to_svg()),
        ]
    }
}

/// 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
