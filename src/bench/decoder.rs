//! Whole decoders: dense vs Hadamard random-weight models (and the query variants), and
//! the paper's grid of gains over d_model x batch x context.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::measure::Stats;
use super::{BenchError, BenchOptions};
use crate::gpu::{Gpu, GpuError, Tuning};
use crate::model::generate::{Decoder, GenerateOptions, generate_async};
use crate::model::gpu::GpuDecoder;
use crate::model::init::random_model;
use crate::model::profile::DecoderProfile;
use crate::model::sizes::{
    BufferLimits, TooLarge, check_planned_fits, decode_bytes_per_token, weight_bytes,
};
use crate::model::{AttnOutput, Config, ModelError, Query};
use crate::ops::WeightFormat;
use crate::ops::attention::KvFormat;
use crate::ops::hadamard::WhtError;
use crate::ops::sample::SamplingParams;

/// One decoder configuration to run.
#[derive(Clone, Debug)]
pub struct DecoderCase {
    pub attn_output: AttnOutput,
    pub query: Query,
    pub d_model: usize,
    pub layers: usize,
    pub batch: usize,
    pub prompt: usize,
    pub new_tokens: usize,
    pub kv_cache: KvFormat,
    /// The layer matrices' format (f16, or q8 / q4 blocks); the embedding and lm_head stay
    /// f16, as `walsh quantize` leaves them.
    pub weights: WeightFormat,
    /// Query heads per KV head (grouped-query attention); 1: none.
    pub kv_group: usize,
}

impl DecoderCase {
    pub fn label(&self) -> String {
        format!(
            "{} {} d={} L={} batch={} prompt={}",
            self.variant(),
            self.weights.name(),
            self.d_model,
            self.layers,
            self.batch,
            self.prompt
        )
    }

    /// Checks every buffer the case's decoder would hold ([`planned_buffers`](crate::model::sizes::planned_buffers): weights
    /// in the case's format, the KV cache of its batch and context) against `limits`,
    /// without building the model. Weight matrices split by rows across bindings, so two
    /// of their rows must fit (at d_model 4096 the f16 gate + up matrix, 192 MiB, takes
    /// two 128 MiB bindings); the KV cache must fit whole.
    pub fn check_fits(&self, limits: BufferLimits) -> Result<(), TooLarge> {
        let context = self.prompt + self.new_tokens;
        let config = self.config();
        let (weights, kv) = (self.weights, self.kv_cache);
        check_planned_fits(&config, weights, self.batch, context, kv, limits)
    }

    fn heads(&self) -> usize {
        (self.d_model / 64).max(self.kv_group).max(1)
    }

    /// Whether `kv_group` divides the heads (not d_model 576's 9 heads by 4, say:
    /// [`paper_cells`] leaves such cells out).
    pub fn groups_evenly(&self) -> bool {
        self.heads().is_multiple_of(self.kv_group.max(1))
    }

    /// The config's variant, with the grouping of a grouped case (`hadamard/dense gqa
    /// 8:2`): what reports name the row.
    pub fn variant(&self) -> String {
        let c = self.config();
        match c.num_key_value_heads {
            Some(kv) => format!("{} gqa {}:{kv}", c.variant(), c.num_attention_heads),
            None => c.variant(),
        }
    }

    /// The model: heads of 64 (fewer when d is small), FFN 3 d, byte vocabulary; its
    /// matrices in [`DecoderCase::weights`]. Grouped, at least `kv_group` heads, and
    /// `heads / kv_group` KV heads, for a case that [`Self::groups_evenly`].
    pub fn config(&self) -> Config {
        let d = self.d_model;
        let heads = self.heads();
        Config {
            hidden_size: d,
            num_hidden_layers: self.layers,
            num_attention_heads: heads,
            num_key_value_heads: (self.kv_group > 1).then(|| heads / self.kv_group),
            intermediate_size: 3 * d,
            vocab_size: 256,
            max_position_embeddings: self.prompt + self.new_tokens,
            attn_output: self.attn_output,
            query: self.query,
            ..Default::default()
        }
    }
}

/// What one decoder run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderResult {
    pub variant: String,
    pub d_model: usize,
    pub layers: usize,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub params: usize,
    pub attention_params: usize,
    /// Prompt tokens of all sequences per second of the prefill step.
    pub prefill_tokens_per_s: f64,
    /// Tokens of all sequences per second of decode steps.
    pub decode_tokens_per_s: f64,
    /// Peak bytes walsh held on the GPU during the run (weights, KV cache, activations).
    pub peak_bytes: u64,
    /// The KV cache's format (reports before this field ran f32).
    #[serde(default = "super::f32_cache")]
    pub kv_cache: KvFormat,
    /// Compute dispatches and readbacks per decoded token (all sequences), in the decode
    /// steps of the last timed run (0 in reports before these fields).
    #[serde(default)]
    pub dispatches_per_token: f64,
    #[serde(default)]
    pub readbacks_per_token: f64,
    /// The layer matrices' format (reports before this field ran f16).
    #[serde(default = "super::f16_weights")]
    pub weights: WeightFormat,
    /// Bytes of every weight buffer the decoder holds on the GPU (0 in reports before
    /// this field).
    #[serde(default)]
    pub weight_bytes: u64,
    /// Bytes a decode step reads per decoded token, from the buffer sizes (see
    /// [`decode_bytes_per_token`]; 0 in reports before this field).
    #[serde(default)]
    pub bytes_per_token: f64,
    /// One sequence's decode step and prefill, dispatch by dispatch (`walsh profile`);
    /// batch-1 cases only (absent in reports before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<DecoderProfile>,
    /// The decode GEMV by weight format, measured on the adapter for this model
    /// (`bench::tune`; absent in reports before this field).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub gemv: std::collections::BTreeMap<String, String>,
}

/// The decoder suite: the two output projections and the query variants.
pub fn decoder_cases(options: &BenchOptions) -> Vec<DecoderCase> {
    let (d_model, layers, prompt, new_tokens) = if options.quick {
        (128, 2, 16, 4)
    } else {
        (512, 4, 64, 16)
    };
    let case = |attn_output, query, weights| DecoderCase {
        attn_output,
        query,
        d_model,
        layers,
        batch: 1,
        prompt,
        new_tokens,
        kv_cache: options.kv_cache,
        weights,
        kv_group: 1,
    };
    let mut cases: Vec<DecoderCase> = [
        (AttnOutput::Dense, Query::Dense),
        (AttnOutput::Hadamard, Query::Dense),
        (AttnOutput::Hadamard, Query::Identity),
        (AttnOutput::Hadamard, Query::ResidualMlp),
        (AttnOutput::Dense, Query::Identity),
    ]
    .into_iter()
    .map(|(attn_output, query)| case(attn_output, query, options.weights))
    .collect();
    // The weight formats side by side: the Hadamard model (the same random model, seed 1)
    // in each format the run has not measured yet.
    cases.extend(
        WEIGHT_FORMATS
            .into_iter()
            .filter(|&w| w != options.weights)
            .map(|w| case(AttnOutput::Hadamard, Query::Dense, w)),
    );
    // Grouped-query attention when asked (`--kv-groups`): the dense and Hadamard models
    // again with each grouping.
    for &kv_group in &options.kv_groups {
        cases.extend(
            [AttnOutput::Dense, AttnOutput::Hadamard].map(|attn_output| DecoderCase {
                kv_group,
                ..case(attn_output, Query::Dense, options.weights)
            }),
        );
    }
    cases
}

/// The formats the decoder suite compares: f16 and the block-quantized q8 and q4.
pub const WEIGHT_FORMATS: [WeightFormat; 3] =
    [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4];

/// A decoder of one case, built and warmed up, ready to be timed.
struct Runner<'g> {
    gpu: &'g Gpu,
    /// The decode GEMVs measured for this model; set on the device before each run, as
    /// a paper cell alternates two models of other shapes.
    tuning: Tuning,
    case: DecoderCase,
    result: DecoderResult,
    dec: GpuDecoder,
    prompts: Vec<Vec<u32>>,
    prefill: Vec<f64>,
    decode: Vec<f64>,
    /// Seconds of decode steps over the timed runs.
    decode_seconds: f64,
}

impl<'g> Runner<'g> {
    /// Builds the case's random model and decoder and runs it once, which compiles every
    /// pipeline and sets the peak: the bytes this decoder holds at most (weights, KV cache,
    /// activations), whatever else is alive on the device.
    async fn new(gpu: &'g Gpu, case: &DecoderCase) -> Result<Self, BenchError> {
        let config = case.config();
        let context = case.prompt + case.new_tokens;
        // A model too big for the adapter is refused before it is built.
        case.check_fits(BufferLimits::from(gpu.limits()))
            .map_err(|e| e.on(gpu))?;
        let model = random_model(&config, 1, case.weights)?;
        let tuning = super::tune::tuning_for(gpu, &model).await?;
        gpu.set_tuning(tuning.clone());
        let baseline = gpu.memory().report().current_bytes;
        gpu.memory().reset_peak();
        let dec = GpuDecoder::new(gpu, &model, case.batch, context, case.kv_cache)?;
        let prompts = (0..case.batch)
            .map(|s| {
                (0..case.prompt)
                    .map(|i| ((i * 31 + s * 7) % 256) as u32)
                    .collect()
            })
            .collect();
        let mut runner = Self {
            case: case.clone(),
            result: DecoderResult {
                variant: case.variant(),
                d_model: case.d_model,
                layers: case.layers,
                batch: case.batch,
                prompt_tokens: case.prompt,
                new_tokens: case.new_tokens,
                params: model.parameter_count(),
                attention_params: model.attention_parameter_count(),
                prefill_tokens_per_s: 0.0,
                decode_tokens_per_s: 0.0,
                peak_bytes: 0,
                kv_cache: case.kv_cache,
                dispatches_per_token: 0.0,
                readbacks_per_token: 0.0,
                weights: case.weights,
                weight_bytes: weight_bytes(&model),
                bytes_per_token: decode_bytes_per_token(
                    &model,
                    case.batch,
                    case.prompt,
                    case.new_tokens,
                    case.kv_cache,
                ),
                profile: None,
                gemv: tuning.gemv.clone(),
            },
            gpu,
            tuning,
            dec,
            prompts,
            prefill: Vec::new(),
            decode: Vec::new(),
            decode_seconds: 0.0,
        };
        runner.generate(2).await?;
        runner.result.peak_bytes = gpu.memory().report().peak_bytes - baseline;
        Ok(runner)
    }

    async fn generate(
        &mut self,
        tokens: usize,
    ) -> Result<crate::model::generate::Generation, BenchError> {
        self.gpu.set_tuning(self.tuning.clone());
        let options = GenerateOptions::new(tokens, SamplingParams::greedy());
        Ok(generate_async(&mut self.dec, &self.prompts, &options, |_| {
            ControlFlow::Continue(())
        })
        .await?)
    }

    /// One timed generation.
    async fn time(&mut self) -> Result<(), BenchError> {
        let g = self.generate(self.case.new_tokens).await?;
        self.prefill.push(g.stats.prefill_tokens_per_s);
        self.decode.push(g.stats.decode_tokens_per_s);
        self.decode_seconds += g.stats.decode_seconds;
        self.result.dispatches_per_token = g.stats.dispatches_per_token;
        self.result.readbacks_per_token = g.stats.readbacks_per_token;
        Ok(())
    }

    /// Times a prefill or a decode chunk (a paper cell's paired measurements), recording
    /// its rate: prefill tokens or decoded tokens per second.
    async fn timed(&mut self, what: Timed) -> Result<f64, BenchError> {
        self.gpu.set_tuning(self.tuning.clone());
        let greedy = SamplingParams::greedy();
        let seqs: Vec<usize> = (0..self.case.batch).collect();
        let before = self.dec.counters();
        let start = Instant::now();
        let tokens = match what {
            Timed::Prefill => {
                self.dec.reset();
                let batch: Vec<(usize, &[u32])> =
                    self.prompts.iter().map(Vec::as_slice).enumerate().collect();
                let draws = vec![0.0; seqs.len()];
                self.dec.step(&batch, &greedy, &draws).await?;
                self.case.prompt * seqs.len()
            }
            Timed::Chunk(steps) => {
                let draws = vec![0.0; steps * seqs.len()];
                let chunk = self.dec.start_decode(&seqs, &greedy, &draws)?;
                self.dec.finish_decode(chunk).await?;
                steps * seqs.len()
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        let rate = tokens as f64 / seconds;
        match what {
            Timed::Prefill => self.prefill.push(rate),
            Timed::Chunk(_) => {
                self.decode.push(rate);
                self.decode_seconds += seconds;
                if let (Some(start), Some(end)) = (before, self.dec.counters()) {
                    let work = end - start;
                    self.result.dispatches_per_token = work.dispatches as f64 / tokens as f64;
                    self.result.readbacks_per_token = work.readbacks as f64 / tokens as f64;
                }
            }
        }
        Ok(seconds)
    }

    /// The medians of the timed runs.
    fn finish(self) -> DecoderResult {
        let median = |v: Vec<f64>| Stats::from_samples(v).median_s;
        DecoderResult {
            prefill_tokens_per_s: median(self.prefill),
            decode_tokens_per_s: median(self.decode),
            ..self.result
        }
    }
}

/// Timed generations of a decoder-suite case: the median of three. Software adapters
/// share the CPU with everything else on the machine.
pub const ROUNDS: usize = 3;
/// Paired rounds of a paper cell (each prefills both models and decodes their contexts'
/// remaining steps in alternating chunks): at least PAPER_MIN_ROUNDS, then more until
/// each model has decoded for PAPER_DECODE_SECONDS, at most PAPER_MAX_ROUNDS. At three
/// rounds of 31 steps the small cells' decode gains on lavapipe moved by 10-25 points
/// between two runs of the same build (d_model 256: batch 4 -11.2% then -13.7%, batch 1
/// +2.2% then -3.4%; the Dec 3 grid had -21.1% at batch 1), more than the few percent the
/// projection's bytes can give; timing whole generations in paired rounds still left
/// single rounds 10-40 points apart (the Dec 4 grid), hence the alternating chunks.
pub const PAPER_MIN_ROUNDS: usize = 3;
pub const PAPER_MAX_ROUNDS: usize = 15;
pub const PAPER_DECODE_SECONDS: f64 = 2.0;
/// Decode steps of each of a paper cell's timed chunks: the chunks of the two models
/// alternate, each a readback of its own.
pub const PAPER_CHUNK_STEPS: usize = 4;
/// Replays of each profiled step (the profile gives medians).
const PROFILE_REPEATS: usize = 5;

/// Builds the case's random model, warms it up, and times [`ROUNDS`] generations.
pub async fn measure(gpu: &Gpu, case: &DecoderCase) -> Result<DecoderResult, BenchError> {
    let mut runner = Runner::new(gpu, case).await?;
    for _ in 0..ROUNDS {
        runner.time().await?;
    }
    if case.batch == 1 {
        let prompt = runner.prompts[0].clone();
        gpu.set_tuning(runner.tuning.clone());
        runner.result.profile = Some(runner.dec.profile(&prompt, 1, PROFILE_REPEATS).await?);
    }
    Ok(runner.finish())
}

/// One cell of the paper grid.
#[derive(Clone, Debug)]
pub struct PaperCell {
    pub d_model: usize,
    pub batch: usize,
    pub context: usize,
    pub layers: usize,
    pub new_tokens: usize,
    pub kv_cache: KvFormat,
    pub weights: WeightFormat,
    /// Query heads per KV head of both models; 1: no grouping.
    pub kv_group: usize,
    /// Paired rounds go on (past PAPER_MIN_ROUNDS, up to PAPER_MAX_ROUNDS) until each
    /// model has decoded this long: PAPER_DECODE_SECONDS, 0 with `--quick`.
    pub decode_seconds: f64,
}

impl PaperCell {
    pub fn label(&self) -> String {
        let gqa = match self.kv_group {
            1 => String::new(),
            g => format!(" gqa {g}:1"),
        };
        format!(
            "paper d={} batch={} context={}{gqa}",
            self.d_model, self.batch, self.context
        )
    }

    /// The cell's model with `attn_output` (dense query).
    pub fn case(&self, attn_output: AttnOutput) -> DecoderCase {
        DecoderCase {
            attn_output,
            query: Query::Dense,
            d_model: self.d_model,
            layers: self.layers,
            batch: self.batch,
            prompt: self.context - self.new_tokens,
            new_tokens: self.new_tokens,
            kv_cache: self.kv_cache,
            weights: self.weights,
            kv_group: self.kv_group,
        }
    }
}

/// The Hadamard model's gains over the dense one in one cell, or why it was skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaperResult {
    pub d_model: usize,
    pub batch: usize,
    pub context: usize,
    pub layers: usize,
    /// Fraction of parameters removed: 1 - hadamard / dense.
    pub params_gain: f64,
    /// Fraction of peak GPU memory saved: 1 - hadamard / dense.
    pub memory_gain: f64,
    /// Throughput gain: hadamard / dense - 1.
    pub prefill_gain: f64,
    pub decode_gain: f64,
    /// Each paired measurement's decode gain (hadamard / dense - 1), in the order run:
    /// one per pair of alternating decode chunks (reports before Dec 5: one per round of
    /// two whole generations; before Dec 4 empty, their gains ratios of medians). Their
    /// median is `decode_gain`; `prefill_gain` is the median of the rounds' prefill ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_gains: Vec<f64>,
    /// Paired rounds run (0 in reports before Dec 5, whose rounds were their gains).
    #[serde(default)]
    pub rounds: usize,
    pub dense: Option<DecoderResult>,
    pub hadamard: Option<DecoderResult>,
    /// Set when the cell could not run (e.g. a buffer beyond the adapter's limits).
    pub skipped: Option<String>,
}

/// d_model x batch x context, within the options' bounds (batches from `min_batch`,
/// contexts from `min_context`), and again for each of the options' `kv_groups` at the
/// widths whose heads it divides. Two layers: the gains are per layer, and two keep big
/// widths affordable.
pub fn paper_cells(options: &BenchOptions) -> Vec<PaperCell> {
    let (widths, batches, contexts, new_tokens): (&[usize], &[usize], &[usize], usize) =
        if options.quick {
            (&[128, 256], &[1, 4], &[64, 128], 4)
        } else {
            (
                // With the Paley widths 576, 960 and 2304 (kernels::PAPER_WIDTHS).
                &[256, 512, 576, 960, 1024, 2048, 2304, 4096],
                &[1, 4, 16],
                &[128, 512, 2048],
                // Decode is timed over new_tokens - 1 steps: at 8 (7 steps, a few ms at
                // the small widths) lavapipe's gains at batch 1 swung by +-40% between
                // cells; prefill still dominates the big cells' time.
                32,
            )
        };
    let mut out = Vec::new();
    for kv_group in std::iter::once(1).chain(options.kv_groups.iter().copied()) {
        for &d_model in widths
            .iter()
            .filter(|&&d| (options.min_d_model..=options.max_d_model).contains(&d))
        {
            for &batch in batches.iter().filter(|&&b| b >= options.min_batch) {
                for &context in contexts
                    .iter()
                    .filter(|&&c| (options.min_context..=options.max_context).contains(&c))
                {
                    let cell = PaperCell {
                        d_model,
                        batch,
                        context,
                        layers: 2,
                        new_tokens,
                        kv_cache: options.kv_cache,
                        weights: options.weights,
                        kv_group,
                        decode_seconds: if options.quick {
                            0.0
                        } else {
                            PAPER_DECODE_SECONDS
                        },
                    };
                    if cell.case(AttnOutput::Dense).groups_evenly() {
                        out.push(cell);
                    }
                }
            }
        }
    }
    out
}

pub async fn measure_cell(gpu: &Gpu, cell: &PaperCell) -> Result<PaperResult, BenchError> {
    let mut result = PaperResult {
        d_model: cell.d_model,
        batch: cell.batch,
        context: cell.context,
        layers: cell.layers,
        params_gain: 0.0,
        memory_gain: 0.0,
        prefill_gain: 0.0,
        decode_gain: 0.0,
        decode_gains: Vec::new(),
        rounds: 0,
        dense: None,
        hadamard: None,
        skipped: None,
    };
    // A cell too big for this adapter is a result, not a failure of the run.
    let mut dense = match attempt(gpu, &cell.case(AttnOutput::Dense)).await? {
        Ok(r) => r,
        Err(why) => {
            return Ok(PaperResult {
                skipped: Some(why),
                ..result
            });
        }
    };
    let mut hadamard = match attempt(gpu, &cell.case(AttnOutput::Hadamard)).await? {
        Ok(r) => r,
        Err(why) => {
            return Ok(PaperResult {
                skipped: Some(why),
                ..result
            });
        }
    };
    // Paired rounds: both models prefill (the first of the pair alternating), then decode
    // in chunks of PAPER_CHUNK_STEPS steps, the two models' chunks alternating (which goes
    // first too). A gain is the median of the paired measurements' ratios, so a slow
    // spell of the machine, which software adapters share with everything else, hits
    // both sides of a ratio alike; chunks a few milliseconds apart see the same machine
    // where whole generations, half a second apart, moved by 10-40 points.
    let (chunks, steps) = paper_chunks(cell.new_tokens);
    let (mut prefill_gains, mut decode_gains) = (Vec::new(), Vec::new());
    let mut round = 0;
    while round < PAPER_MIN_ROUNDS
        || (round < PAPER_MAX_ROUNDS
            && dense.decode_seconds.min(hadamard.decode_seconds) < cell.decode_seconds)
    {
        let (d, h) = paired(round, &mut dense, &mut hadamard, Timed::Prefill).await?;
        prefill_gains.push(d / h - 1.0);
        for c in 0..chunks {
            let chunk = Timed::Chunk(steps);
            let (d, h) = paired(round + c, &mut dense, &mut hadamard, chunk).await?;
            decode_gains.push(d / h - 1.0);
        }
        round += 1;
    }
    let median = |v: &[f64]| Stats::from_samples(v.to_vec()).median_s;
    result.prefill_gain = median(&prefill_gains);
    result.decode_gain = median(&decode_gains);
    result.decode_gains = decode_gains;
    result.rounds = round;
    let (dense, hadamard) = (dense.finish(), hadamard.finish());
    result.params_gain = 1.0 - hadamard.params as f64 / dense.params as f64;
    result.memory_gain = 1.0 - hadamard.peak_bytes as f64 / dense.peak_bytes as f64;
    result.dense = Some(dense);
    result.hadamard = Some(hadamard);
    Ok(result)
}

/// The decode chunks of a paper round: (chunks, steps each), within the new tokens after
/// the prefill's (28 of 31 steps; with `--quick`'s 4 new tokens one chunk of 3).
pub fn paper_chunks(new_tokens: usize) -> (usize, usize) {
    let after = new_tokens.saturating_sub(1);
    let steps = PAPER_CHUNK_STEPS.min(after).max(1);
    ((after / steps).max(1), steps)
}

/// What a paired measurement times on each model ([`Runner::timed`]).
#[derive(Clone, Copy)]
enum Timed {
    /// Forget every sequence and prefill the prompts.
    Prefill,
    /// A decode chunk of this many steps of every sequence.
    Chunk(usize),
}

/// Times `what` on both models, the dense one first when `turn` is even: their seconds.
async fn paired(
    turn: usize,
    dense: &mut Runner<'_>,
    hadamard: &mut Runner<'_>,
    what: Timed,
) -> Result<(f64, f64), BenchError> {
    Ok(if turn.is_multiple_of(2) {
        let d = dense.timed(what).await?;
        (d, hadamard.timed(what).await?)
    } else {
        let h = hadamard.timed(what).await?;
        (dense.timed(what).await?, h)
    })
}

/// Builds a case's runner; `Ok(Err(why))` when it needs more than the adapter allows.
async fn attempt<'g>(
    gpu: &'g Gpu,
    case: &DecoderCase,
) -> Result<Result<Runner<'g>, String>, BenchError> {
    match Runner::new(gpu, case).await {
        Ok(r) => Ok(Ok(r)),
        Err(e) if too_big(&e) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

fn too_big(e: &BenchError) -> bool {
    let gpu = |g: &GpuError| matches!(g, GpuError::LimitExceeded { .. } | GpuError::OutOfMemory(_));
    match e {
        BenchError::Gpu(g) | BenchError::Model(ModelError::Gpu(g)) => gpu(g),
        BenchError::Model(ModelError::Wht(WhtError::Gpu(g)))
        | BenchError::Wht(WhtError::Gpu(g)) => gpu(g),
        _ => false,
    }
}
