//! Generation, the same on every device: prefill all prompts in one step, then decode in
//! chunks of steps that the device runs without the host (the GPU feeds each sampled
//! token back itself), reading each chunk's tokens back once and streaming them to a
//! callback that may stop the run. Two chunks are in flight at a time, so the device
//! works on the next one while the host collects the last.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::time::Duration;

use web_time::Instant;

use serde::Serialize;

use super::ModelError;
use super::cpu::CpuDecoder;
use super::gpu::{GpuDecoder, MAX_CHUNK_STEPS, PendingChunk};
use super::weights::Model;
use crate::gpu::{CountersSnapshot, MemoryReport};
use crate::ops::attention::KvFormat;
use crate::ops::sample::{SampleRng, SamplingParams, sample_reference};
use crate::tokenizer::Utf8Buffer;

/// The result of a decoder step, once the device has it. The GPU decoder's step waits
/// for its readback (blocking natively, yielding to the event loop in the browser); the
/// CPU decoder's is ready at once.
pub type StepFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ModelError>> + 'a>>;

/// A decoder generation can drive: the GPU one, or a CPU reference decoder per sequence.
pub trait Decoder {
    /// Sequences that can run at once.
    fn max_seqs(&self) -> usize;
    /// Positions each sequence may hold.
    fn max_positions(&self) -> usize;
    /// Forgets every sequence.
    fn reset(&mut self);
    /// Forgets one sequence (its cache positions are reused).
    fn reset_sequence(&mut self, seq: usize);
    /// Appends tokens to sequences (entries `(sequence, tokens)`) and samples each
    /// sequence's next token with its draw in [0, 1).
    fn step<'a>(
        &'a mut self,
        batch: &'a [(usize, &'a [u32])],
        sampling: &'a SamplingParams,
        draws: &'a [f32],
    ) -> StepFuture<'a, Vec<u32>>;
    /// Appends tokens and returns the logits of every appended row, per entry.
    fn logits<'a>(&'a mut self, batch: &'a [(usize, &'a [u32])]) -> StepFuture<'a, Vec<Vec<f32>>>;
    /// Starts `draws.len() / seqs.len()` decode steps of the distinct sequences `seqs`, each
    /// of which the last sampling step (or chunk) drew a token for: step s feeds row r,
    /// sequence `seqs[r]`, the token sampled for it the step before and samples with draw
    /// `draws[s * seqs.len() + r]`. Returns without waiting where the device can run ahead;
    /// [`Decoder::finish_decode`] collects the tokens.
    fn start_decode(
        &mut self,
        seqs: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<Chunk, ModelError>;
    /// The tokens of a started chunk, step by step (`[steps, seqs]` flattened), or of a
    /// started step ([`Decoder::start_step`]), one per entry of its batch.
    fn finish_decode(&mut self, chunk: Chunk) -> StepFuture<'_, Vec<u32>>;
    /// [`Decoder::step`] without waiting for its tokens, where the device can run ahead:
    /// decode chunks started after it continue from the tokens it samples, and
    /// [`Decoder::finish_decode`] collects them. None where the decoder cannot: the
    /// caller awaits `step` instead.
    ///
    /// Where [`Decoder::takes_chunk_tokens`], entry i's last `from_chunk[i]` tokens may
    /// be placeholders for the last tokens the latest decode chunk made for its sequence,
    /// which the device takes itself: the step follows a chunk the host has not read yet.
    /// An empty `from_chunk` takes none.
    fn start_step(
        &mut self,
        _batch: &[(usize, &[u32])],
        _from_chunk: &[usize],
        _sampling: &SamplingParams,
        _draws: &[f32],
    ) -> Option<Result<Chunk, ModelError>> {
        None
    }
    /// Whether [`Decoder::start_step`] takes tokens from the latest decode chunk.
    fn takes_chunk_tokens(&self) -> bool {
        false
    }
    /// Builds what a generation from prompts of these lengths (sequences 0, 1, ...) will
    /// run, changing no sequence: the GPU decoder compiles its prefill and decode
    /// pipelines here, so that the timed steps do not. Nothing to do on the CPU.
    fn prepare(
        &mut self,
        _prompts: &[usize],
        _sampling: &SamplingParams,
    ) -> Result<(), ModelError> {
        Ok(())
    }
    /// Says whether the kernels this decoder builds will serve many generations (a
    /// server), so that a kernel's compile pays back whatever it saves: the GPU decoder
    /// then picks them by run time alone ([`GpuDecoder::set_many_runs`]). Call before
    /// [`Decoder::prepare`]. Nothing to do on the CPU.
    fn set_many_runs(&mut self, _on: bool) {}
    /// GPU memory accounting, where there is a GPU.
    fn memory(&self) -> Option<MemoryReport> {
        None
    }
    /// Dispatches, readbacks and submissions so far, where there is a GPU.
    fn counters(&self) -> Option<CountersSnapshot> {
        None
    }
    /// Where it runs, for summaries: an adapter name, or "cpu".
    fn device(&self) -> String;
    /// The KV cache's element format.
    fn kv_format(&self) -> KvFormat;
}

/// A decode chunk in flight, from [`Decoder::start_decode`].
pub enum Chunk {
    /// Computed already (the CPU decoders).
    Ready(Vec<u32>),
    /// Submitted to the GPU.
    Gpu(PendingChunk),
}

impl Decoder for GpuDecoder {
    fn max_seqs(&self) -> usize {
        GpuDecoder::max_seqs(self)
    }
    fn max_positions(&self) -> usize {
        GpuDecoder::max_positions(self)
    }
    fn reset(&mut self) {
        GpuDecoder::reset(self)
    }
    fn reset_sequence(&mut self, seq: usize) {
        GpuDecoder::reset_sequence(self, seq)
    }
    fn step<'a>(
        &'a mut self,
        batch: &'a [(usize, &'a [u32])],
        sampling: &'a SamplingParams,
        draws: &'a [f32],
    ) -> StepFuture<'a, Vec<u32>> {
        Box::pin(self.forward_sample_async(batch, sampling, draws))
    }
    fn logits<'a>(&'a mut self, batch: &'a [(usize, &'a [u32])]) -> StepFuture<'a, Vec<Vec<f32>>> {
        Box::pin(self.forward_logits_async(batch))
    }
    fn start_decode(
        &mut self,
        seqs: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<Chunk, ModelError> {
        GpuDecoder::start_decode(self, seqs, sampling, draws).map(Chunk::Gpu)
    }
    fn finish_decode(&mut self, chunk: Chunk) -> StepFuture<'_, Vec<u32>> {
        match chunk {
            Chunk::Gpu(c) => Box::pin(GpuDecoder::finish_decode(self, c)),
            Chunk::Ready(tokens) => Box::pin(std::future::ready(Ok(tokens))),
        }
    }
    fn start_step(
        &mut self,
        batch: &[(usize, &[u32])],
        from_chunk: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Option<Result<Chunk, ModelError>> {
        let started = self.start_sample_after_chunk(batch, from_chunk, sampling, draws);
        Some(started.map(Chunk::Gpu))
    }
    fn takes_chunk_tokens(&self) -> bool {
        true
    }
    fn prepare(&mut self, prompts: &[usize], sampling: &SamplingParams) -> Result<(), ModelError> {
        GpuDecoder::prepare(self, prompts, sampling)
    }
    fn set_many_runs(&mut self, on: bool) {
        GpuDecoder::set_many_runs(self, on)
    }
    fn memory(&self) -> Option<MemoryReport> {
        Some(self.gpu().memory().report())
    }
    fn counters(&self) -> Option<CountersSnapshot> {
        Some(self.gpu().counters().snapshot())
    }
    fn device(&self) -> String {
        self.gpu().describe()
    }
    fn kv_format(&self) -> KvFormat {
        GpuDecoder::kv_format(self)
    }
}

/// Checks what every [`Decoder::step`] needs: meaningful sampling settings and one
/// random draw per sequence.
pub(crate) fn check_step(
    sampling: &SamplingParams,
    sequences: usize,
    draws: usize,
) -> Result<(), ModelError> {
    sampling.validate().map_err(ModelError::Input)?;
    if draws != sequences {
        return Err(ModelError::Input(format!(
            "{draws} random draws for {sequences} sequences"
        )));
    }
    Ok(())
}

/// The CPU reference decoder ([`CpuDecoder`], f32, one token at a time), one per
/// sequence: what the GPU decoder is held to (its greedy tokens are identical).
pub struct CpuBatch<'m> {
    decoders: Vec<CpuDecoder<'m>>,
    vocab: usize,
    max_positions: usize,
    kv: KvFormat,
    /// The token each sequence sampled last, which a decode chunk continues from.
    last: Vec<Option<u32>>,
}

impl<'m> CpuBatch<'m> {
    /// Decoders for `max_seqs` sequences of up to `max_positions` tokens each, with a KV
    /// cache in `kv` format (rounded as the GPU's is).
    pub fn new(
        model: &'m Model,
        max_seqs: usize,
        max_positions: usize,
        kv: KvFormat,
    ) -> Result<Self, ModelError> {
        if max_seqs == 0 {
            return Err(ModelError::Input("at least one sequence is needed".into()));
        }
        let decoders = (0..max_seqs)
            .map(|_| CpuDecoder::new(model, max_positions, kv))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            decoders,
            vocab: model.config.vocab_size,
            max_positions,
            kv,
            last: vec![None; max_seqs],
        })
    }

    fn run(&mut self, seq: usize, tokens: &[u32], all: bool) -> Result<Vec<f32>, ModelError> {
        let count = self.decoders.len();
        let dec = self
            .decoders
            .get_mut(seq)
            .ok_or_else(|| ModelError::Input(format!("sequence {seq} out of {count} allocated")))?;
        if tokens.is_empty() {
            return Err(ModelError::Input(format!(
                "sequence {seq} has no tokens in this step"
            )));
        }
        let mut out = Vec::with_capacity(if all {
            tokens.len() * self.vocab
        } else {
            self.vocab
        });
        for (i, &t) in tokens.iter().enumerate() {
            let pos = dec.len();
            let logits = dec.forward(t, pos)?;
            if all || i + 1 == tokens.len() {
                out.extend_from_slice(logits);
            }
        }
        Ok(out)
    }
}

impl Decoder for CpuBatch<'_> {
    fn max_seqs(&self) -> usize {
        self.decoders.len()
    }
    fn max_positions(&self) -> usize {
        self.max_positions
    }
    fn reset(&mut self) {
        self.decoders.iter_mut().for_each(CpuDecoder::reset);
        self.last.fill(None);
    }
    fn reset_sequence(&mut self, seq: usize) {
        if let Some(d) = self.decoders.get_mut(seq) {
            d.reset();
            self.last[seq] = None;
        }
    }
    fn step<'a>(
        &'a mut self,
        batch: &'a [(usize, &'a [u32])],
        sampling: &'a SamplingParams,
        draws: &'a [f32],
    ) -> StepFuture<'a, Vec<u32>> {
        let mut step = || {
            check_step(sampling, batch.len(), draws.len())?;
            batch
                .iter()
                .zip(draws)
                .map(|(&(seq, tokens), &u)| {
                    let logits = self.run(seq, tokens, false)?;
                    let token = sample_reference(&logits, sampling, u);
                    self.last[seq] = Some(token);
                    Ok(token)
                })
                .collect()
        };
        Box::pin(std::future::ready(step()))
    }
    fn start_decode(
        &mut self,
        seqs: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<Chunk, ModelError> {
        sampling.validate().map_err(ModelError::Input)?;
        let n = seqs.len();
        let distinct = seqs.iter().enumerate().all(|(r, s)| !seqs[..r].contains(s));
        if n == 0
            || !distinct
            || seqs.iter().any(|&s| s >= self.decoders.len())
            || !draws.len().is_multiple_of(n)
        {
            return Err(ModelError::Input(format!(
                "a decode chunk of {} draws for sequences {seqs:?} (the decoder holds {}; \
                 sequences distinct)",
                draws.len(),
                self.decoders.len()
            )));
        }
        let mut out = Vec::with_capacity(draws.len());
        for step in draws.chunks(n) {
            for (&seq, &u) in seqs.iter().zip(step) {
                let token = self.last[seq].ok_or_else(|| {
                    ModelError::Input(format!(
                        "sequence {seq} has no token to continue from: prefill it first"
                    ))
                })?;
                let logits = self.run(seq, &[token], false)?;
                let next = sample_reference(&logits, sampling, u);
                self.last[seq] = Some(next);
                out.push(next);
            }
        }
        Ok(Chunk::Ready(out))
    }
    fn finish_decode(&mut self, chunk: Chunk) -> StepFuture<'_, Vec<u32>> {
        Box::pin(std::future::ready(match chunk {
            Chunk::Ready(tokens) => Ok(tokens),
            Chunk::Gpu(_) => Err(ModelError::Input(
                "a GPU decode chunk cannot finish on the CPU decoder".into(),
            )),
        }))
    }
    fn logits<'a>(&'a mut self, batch: &'a [(usize, &'a [u32])]) -> StepFuture<'a, Vec<Vec<f32>>> {
        let all = batch
            .iter()
            .map(|&(seq, tokens)| {
                // The sequence moves on without a sample: its last draw is not its next token.
                self.last[seq] = None;
                self.run(seq, tokens, true)
            })
            .collect();
        Box::pin(std::future::ready(all))
    }
    fn device(&self) -> String {
        "cpu".into()
    }
    fn kv_format(&self) -> KvFormat {
        self.kv
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// New tokens per prompt.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Most decode steps per chunk (one submission and one readback); 1 reads every token
    /// back as it is made. The tokens do not depend on it.
    pub max_chunk: usize,
}

/// Default [`GenerateOptions::max_chunk`].
pub const DEFAULT_MAX_CHUNK: usize = 32;
/// Decode steps of the first chunk: the first tokens stream soon, then chunks double up to
/// the maximum while one lasts less than [`CHUNK_TARGET`].
const FIRST_CHUNK: usize = 4;
/// Chunks stop growing once one takes this long, so tokens keep streaming steadily on
/// slow devices.
const CHUNK_TARGET: Duration = Duration::from_millis(250);
/// Chunks in flight at once (besides a started host-fed step): the device runs one while
/// the host reads the other.
const CHUNKS_IN_FLIGHT: usize = 2;

/// What a submission in flight in [`generate_async`] is.
enum Flight {
    /// A decode chunk of this many steps.
    Chunk(usize),
    /// A host-fed step ([`Decoder::start_step`]): the prefill or not, and when it started.
    Step { prefill: bool, since: Instant },
}

impl GenerateOptions {
    /// `max_tokens` new tokens per prompt, drawn with `sampling`, in chunks of up to
    /// [`DEFAULT_MAX_CHUNK`] decode steps.
    pub fn new(max_tokens: usize, sampling: SamplingParams) -> Self {
        Self {
            max_tokens,
            sampling,
            max_chunk: DEFAULT_MAX_CHUNK,
        }
    }
}

/// One generated token, as streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    /// Index of the prompt it continues.
    pub seq: usize,
    pub token: u32,
    /// 0 for the token sampled after the prompt.
    pub index: usize,
}

/// Speed and memory of one generation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenerationStats {
    pub device: String,
    pub sequences: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Building the pipelines and recordings before the prefill ([`Decoder::prepare`]:
    /// compiling shaders, on a GPU), outside the prefill and decode times.
    pub prepare_seconds: f64,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Prompt tokens (all sequences) per second of the prefill step.
    pub prefill_tokens_per_s: f64,
    /// Tokens fed back (all sequences) per second of decode steps.
    pub decode_tokens_per_s: f64,
    pub memory: Option<MemoryReport>,
    /// True when the callback stopped the run early.
    pub stopped: bool,
    /// The KV cache's format.
    pub kv_cache: KvFormat,
    /// Decode chunks run (submissions of decode steps).
    pub decode_chunks: usize,
    /// GPU work per token fed back in decode steps (all sequences): compute dispatches and
    /// readbacks (0 on the CPU).
    pub dispatches_per_token: f64,
    pub readbacks_per_token: f64,
}

/// The generated tokens of every prompt, and the stats.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<Vec<u32>>,
    pub stats: GenerationStats,
}

fn rate(count: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

/// Generates `options.max_tokens` tokens after each prompt, all prompts batched, calling
/// `on_token` for each token as it arrives; `ControlFlow::Break` stops the run (tokens so
/// far are returned). The random draws come from `options.sampling.seed`, one per
/// sequence per step in prompt order, so every device draws the same numbers.
///
/// Any [`Decoder`] will do: a [`GpuDecoder`] (see `examples/generate.rs`), or the CPU
/// reference, as here with a small random-weight model:
///
/// ```
/// use std::ops::ControlFlow;
/// use walsh::model::generate::{CpuBatch, GenerateOptions, encode_text, generate};
/// use walsh::model::{AttnOutput, Config, init::random_model};
/// use walsh::ops::{WeightFormat, attention::KvFormat, sample::SamplingParams};
///
/// let config = Config {
///     hidden_size: 64,
///     num_hidden_layers: 2,
///     num_attention_heads: 4,
///     intermediate_size: 128,
///     max_position_embeddings: 32,
///     attn_output: AttnOutput::Hadamard,
///     ..Default::default()
/// };
/// let model = random_model(&config, 0, WeightFormat::F32)?;
/// let mut decoder = CpuBatch::new(&model, 1, 32, KvFormat::F16)?;
/// let options = GenerateOptions::new(8, SamplingParams::greedy());
/// let mut streamed = Vec::new();
/// let g = generate(&mut decoder, &[encode_text("ROMEO.")], &options, |event| {
///     streamed.push(event.token);
///     ControlFlow::Continue(())
/// })?;
/// assert_eq!(g.tokens, [streamed]);
/// # Ok::<(), walsh::model::ModelError>(())
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn generate(
    decoder: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
) -> Result<Generation, ModelError> {
    pollster::block_on(generate_async(decoder, prompts, options, on_token))
}

/// [`generate`] for callers that must not block (the browser); the same loop.
pub async fn generate_async(
    decoder: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    mut on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
) -> Result<Generation, ModelError> {
    options.sampling.validate().map_err(ModelError::Input)?;
    if prompts.is_empty() {
        return Err(ModelError::Input("no prompt given".into()));
    }
    if prompts.len() > decoder.max_seqs() {
        return Err(ModelError::Input(format!(
            "{} prompts but the decoder holds {} sequences",
            prompts.len(),
            decoder.max_seqs()
        )));
    }
    for p in prompts {
        if p.is_empty() {
            return Err(ModelError::Input(
                "a prompt is empty: give at least one byte".into(),
            ));
        }
        if p.len() > decoder.max_positions() {
            return Err(ModelError::ContextOverflow {
                tokens: p.len(),
                new: 0,
                context: decoder.max_positions(),
            });
        }
    }
    if options.max_chunk == 0 {
        return Err(ModelError::Input(
            "decode chunks need at least one step".into(),
        ));
    }
    decoder.reset();
    let seqs = prompts.len();
    let context = decoder.max_positions();
    let mut rng = SampleRng::new(options.sampling.seed);
    let mut run = Run {
        out: vec![Vec::new(); seqs],
        history: prompts.to_vec(),
        stopped: false,
    };
    let mut stats = GenerationStats {
        device: decoder.device(),
        sequences: seqs,
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        kv_cache: decoder.kv_format(),
        ..Default::default()
    };
    // Tokens each sequence has in the cache. A sequence that fills the context continues
    // from its last `keep` tokens: the cache is dropped and they are prefilled again (the
    // model never sees more than its context).
    let keep = (context / 2).max(1);
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let prepared = Instant::now();
    if lengths.iter().any(|&l| l + options.max_tokens > context) {
        // A sequence will fill its context: its last `keep` tokens are prefilled again
        // then (below), a step of another size, and perhaps other kernels.
        decoder.prepare(&vec![keep; seqs], &options.sampling)?;
    }
    decoder.prepare(&lengths, &options.sampling)?;
    stats.prepare_seconds = prepared.elapsed().as_secs_f64();
    // Tokens each sequence holds in the cache once the work submitted so far has run.
    let mut cached: Vec<usize> = vec![0; seqs];
    // Decode time is the wall clock from the end of the prefill (its token read back) to
    // the last token: with chunks in flight, device and host work overlap.
    let mut decode_begin = None;
    // Device work of the decode steps: counters after the prefill, and tokens submitted
    // since (chunks dropped by a stop included: their work was done too).
    let mut decode_start = None;
    let mut decode_submitted = 0;
    // Steps (tokens per sequence) submitted so far; the prefill makes the first.
    let mut submitted = 0;
    // Every chunk decodes all the sequences, row r being sequence r.
    let rows: Vec<usize> = (0..seqs).collect();
    let mut in_flight: VecDeque<(Chunk, Flight)> = VecDeque::new();
    let mut chunk_steps = FIRST_CHUNK.min(options.max_chunk);
    while submitted < options.max_tokens || !in_flight.is_empty() {
        // Keep the device busy: start chunks while no sequence's context is full.
        loop {
            let room = context - cached.iter().copied().max().unwrap_or(0);
            let chunks = in_flight
                .iter()
                .filter(|(_, f)| matches!(f, Flight::Chunk(_)))
                .count();
            if submitted == 0
                || submitted >= options.max_tokens
                || chunks >= CHUNKS_IN_FLIGHT
                || room == 0
            {
                break;
            }
            let steps = chunk_steps
                .min(options.max_tokens - submitted)
                .min(room)
                .min(MAX_CHUNK_STEPS);
            // The draws of every step, in the order the step-by-step loop takes them.
            let draws: Vec<f32> = (0..steps * seqs).map(|_| rng.next_unit()).collect();
            in_flight.push_back((
                decoder.start_decode(&rows, &options.sampling, &draws)?,
                Flight::Chunk(steps),
            ));
            cached.iter_mut().for_each(|c| *c += steps);
            submitted += steps;
            decode_submitted += steps * seqs;
        }
        // A sequence's context is full and the chunk that filled it is all that is left to
        // read: where the decoder takes that chunk's tokens itself, the step that slides
        // the context follows it at once, before the host has its tokens (`unread` of
        // them, per sequence, at the end of its history).
        let unread = match in_flight.front() {
            Some((_, Flight::Chunk(steps)))
                if in_flight.len() == 1
                    && submitted < options.max_tokens
                    && cached.iter().any(|&c| c >= context)
                    && decoder.takes_chunk_tokens() =>
            {
                *steps
            }
            _ => 0,
        };
        let started = Instant::now();
        // A host-fed step's tokens, whether it was awaited or started: (tokens, whether it
        // was the prefill, when it started).
        let mut step_tokens: Option<(Vec<u32>, bool, Instant)> = None;
        let next = if unread == 0 {
            in_flight.pop_front()
        } else {
            None
        };
        if let Some((chunk, flight)) = next {
            let tokens = decoder.finish_decode(chunk).await?;
            match flight {
                Flight::Step { prefill, since } => step_tokens = Some((tokens, prefill, since)),
                Flight::Chunk(_) => {
                    let took = started.elapsed();
                    stats.decode_chunks += 1;
                    for step in tokens.chunks(seqs) {
                        run.emit(step, &mut on_token);
                        if run.stopped {
                            break;
                        }
                    }
                    if took < CHUNK_TARGET {
                        chunk_steps = (chunk_steps * 2).min(options.max_chunk);
                    }
                }
            }
        } else {
            // The prefill, or a sequence's context is full: a step the host feeds. Where
            // the decoder can, it is started and the next chunks follow it at once (they
            // take its tokens on the device), so that a slow readback (a browser that maps
            // buffers on a timer) does not leave the device idle; else it is awaited.
            // Tokens of the unread chunk are placeholders the decoder fills on the device.
            let mut feeds: Vec<Vec<u32>> = Vec::with_capacity(seqs);
            let mut from_chunk: Vec<usize> = Vec::with_capacity(seqs);
            for (s, h) in run.history.iter().enumerate() {
                let n = if submitted == 0 {
                    h.len()
                } else if cached[s] < context {
                    1
                } else {
                    decoder.reset_sequence(s);
                    cached[s] = 0;
                    keep
                };
                cached[s] += n;
                // Its last n tokens: those the host has, then the unread chunk's.
                let known = n.saturating_sub(unread);
                let mut feed = h[h.len() - known..].to_vec();
                feed.resize(n, 0);
                feeds.push(feed);
                from_chunk.push(n - known);
            }
            if unread == 0 {
                from_chunk.clear();
            }
            let batch: Vec<(usize, &[u32])> = feeds.iter().map(Vec::as_slice).enumerate().collect();
            let draws: Vec<f32> = batch.iter().map(|_| rng.next_unit()).collect();
            let prefill = submitted == 0;
            match decoder.start_step(&batch, &from_chunk, &options.sampling, &draws) {
                Some(chunk) => {
                    let flight = Flight::Step {
                        prefill,
                        since: started,
                    };
                    in_flight.push_back((chunk?, flight));
                }
                None if unread > 0 => {
                    return Err(ModelError::Input(
                        "the decoder takes a chunk's tokens but started no step".into(),
                    ));
                }
                None => {
                    let next = decoder.step(&batch, &options.sampling, &draws).await?;
                    step_tokens = Some((next, prefill, started));
                }
            }
            if prefill {
                decode_start = decoder.counters();
            } else {
                decode_submitted += seqs;
            }
            submitted += 1;
        }
        if let Some((next, prefill, since)) = step_tokens {
            if prefill {
                stats.prefill_seconds = since.elapsed().as_secs_f64();
                decode_begin = Some(Instant::now());
            }
            run.emit(&next, &mut on_token);
        }
        if run.stopped {
            // Chunks still in flight are dropped; the next generation resets the decoder.
            stats.stopped = true;
            break;
        }
    }
    stats.generated_tokens = run.out.iter().map(Vec::len).sum();
    let decode_time = decode_begin.map_or(Duration::ZERO, |t| t.elapsed());
    stats.decode_seconds = decode_time.as_secs_f64();
    stats.prefill_tokens_per_s = rate(
        stats.prompt_tokens,
        Duration::from_secs_f64(stats.prefill_seconds),
    );
    // Every token after each sequence's first came out of a decode step.
    let decoded = stats.generated_tokens.saturating_sub(seqs);
    stats.decode_tokens_per_s = rate(decoded, decode_time);
    if let (Some(start), Some(end)) = (decode_start, decoder.counters())
        && decode_submitted > 0
    {
        let work = end - start;
        stats.dispatches_per_token = work.dispatches as f64 / decode_submitted as f64;
        stats.readbacks_per_token = work.readbacks as f64 / decode_submitted as f64;
    }
    stats.memory = decoder.memory();
    Ok(Generation {
        tokens: run.out,
        stats,
    })
}

/// The tokens of a generation so far.
struct Run {
    out: Vec<Vec<u32>>,
    /// Prompt and generated tokens of each sequence.
    history: Vec<Vec<u32>>,
    stopped: bool,
}

impl Run {
    /// Streams one step's tokens (one per sequence); the callback may stop the run.
    fn emit(&mut self, step: &[u32], on_token: &mut impl FnMut(TokenEvent) -> ControlFlow<()>) {
        for (seq, &token) in step.iter().enumerate() {
            let index = self.out[seq].len();
            self.out[seq].push(token);
            self.history[seq].push(token);
            self.stopped |= on_token(TokenEvent { seq, token, index }).is_break();
        }
    }
}

/// Bytes of text as byte-level tokens.
pub fn encode_text(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Turns a stream of byte tokens into text pieces that are always valid UTF-8: a
/// multi-byte character is held back until its last byte arrives; bytes that can never
/// form a character come out as U+FFFD (the byte-level tokenizer's streaming, without a
/// tokenizer to borrow).
#[derive(Default, Debug)]
pub struct Utf8Stream(Utf8Buffer);

impl Utf8Stream {
    /// Adds one token (a byte; values above 255 are replaced) and returns the text it
    /// completes, possibly empty.
    pub fn push(&mut self, token: u32) -> String {
        self.0.push(&[u8::try_from(token).unwrap_or(b'?')])
    }

    /// Whatever is still held back, lossily.
    pub fn finish(&mut self) -> String {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_holds_back_partial_characters() {
        let mut s = Utf8Stream::default();
        let text = "añ€😀b";
        let mut out = String::new();
        for b in text.bytes() {
            out.push_str(&s.push(b as u32));
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(0xE2), "");
        assert_eq!(s.push(b'x' as u32), "\u{FFFD}x");
    }
}
