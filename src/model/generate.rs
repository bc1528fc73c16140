//! Generation, the same on every device: prefill all prompts in one step, then decode one
//! token per sequence per step, streaming each token to a callback that may stop the run.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::time::Duration;

use web_time::Instant;

use serde::Serialize;

use super::ModelError;
use super::cpu::CpuDecoder;
use super::gpu::GpuDecoder;
use super::weights::Model;
use crate::gpu::MemoryReport;
use crate::ops::sample::{SampleRng, SamplingParams, sample_reference};

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
    /// GPU memory accounting, where there is a GPU.
    fn memory(&self) -> Option<MemoryReport>;
    /// Where it runs, for summaries: an adapter name, or "cpu".
    fn device(&self) -> String;
}

impl Decoder for GpuDecoder<'_> {
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
    fn memory(&self) -> Option<MemoryReport> {
        Some(self.gpu().memory().report())
    }
    fn device(&self) -> String {
        self.gpu().describe()
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

/// The CPU reference decoder, one per sequence.
pub struct CpuBatch<'m> {
    decoders: Vec<CpuDecoder<'m>>,
    vocab: usize,
    max_positions: usize,
}

impl<'m> CpuBatch<'m> {
    pub fn new(
        model: &'m Model,
        max_seqs: usize,
        max_positions: usize,
    ) -> Result<Self, ModelError> {
        if max_seqs == 0 {
            return Err(ModelError::Input("at least one sequence is needed".into()));
        }
        let decoders = (0..max_seqs)
            .map(|_| CpuDecoder::new(model, max_positions))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            decoders,
            vocab: model.config.vocab_size,
            max_positions,
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
    }
    fn reset_sequence(&mut self, seq: usize) {
        if let Some(d) = self.decoders.get_mut(seq) {
            d.reset();
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
                    Ok(sample_reference(&logits, sampling, u))
                })
                .collect()
        };
        Box::pin(std::future::ready(step()))
    }
    fn logits<'a>(&'a mut self, batch: &'a [(usize, &'a [u32])]) -> StepFuture<'a, Vec<Vec<f32>>> {
        let all = batch
            .iter()
            .map(|&(seq, tokens)| self.run(seq, tokens, true))
            .collect();
        Box::pin(std::future::ready(all))
    }
    fn memory(&self) -> Option<MemoryReport> {
        None
    }
    fn device(&self) -> String {
        "cpu".into()
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// New tokens per prompt.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
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
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Prompt tokens (all sequences) per second of the prefill step.
    pub prefill_tokens_per_s: f64,
    /// Tokens fed back (all sequences) per second of decode steps.
    pub decode_tokens_per_s: f64,
    pub memory: Option<MemoryReport>,
    /// True when the callback stopped the run early.
    pub stopped: bool,
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
    decoder.reset();
    let mut rng = SampleRng::new(options.sampling.seed);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut stats = GenerationStats {
        device: decoder.device(),
        sequences: prompts.len(),
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..Default::default()
    };
    let mut decode_time = Duration::ZERO;
    let mut fed_back = 0;
    // Prompt and generated tokens of each sequence, and how many are in the cache.
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut cached: Vec<usize> = vec![0; prompts.len()];
    // A sequence that fills the context continues from its last `keep` tokens: the cache
    // is dropped and they are prefilled again (the model never sees more than its context).
    let keep = (decoder.max_positions() / 2).max(1);
    for index in 0..options.max_tokens {
        let mut batch: Vec<(usize, &[u32])> = Vec::with_capacity(prompts.len());
        for (s, h) in history.iter().enumerate() {
            let feed = if index == 0 {
                &h[..]
            } else if cached[s] < decoder.max_positions() {
                &h[h.len() - 1..]
            } else {
                decoder.reset_sequence(s);
                cached[s] = 0;
                &h[h.len() - keep..]
            };
            cached[s] += feed.len();
            batch.push((s, feed));
        }
        let draws: Vec<f32> = batch.iter().map(|_| rng.next_unit()).collect();
        let start = Instant::now();
        let next = decoder.step(&batch, &options.sampling, &draws).await?;
        let took = start.elapsed();
        if index == 0 {
            stats.prefill_seconds = took.as_secs_f64();
        } else {
            decode_time += took;
            fed_back += batch.len();
        }
        let mut stop = false;
        for (seq, &token) in next.iter().enumerate() {
            out[seq].push(token);
            history[seq].push(token);
            stop |= on_token(TokenEvent { seq, token, index }).is_break();
        }
        if stop {
            stats.stopped = true;
            break;
        }
    }
    stats.generated_tokens = out.iter().map(Vec::len).sum();
    stats.decode_seconds = decode_time.as_secs_f64();
    stats.prefill_tokens_per_s = rate(
        stats.prompt_tokens,
        Duration::from_secs_f64(stats.prefill_seconds),
    );
    stats.decode_tokens_per_s = rate(fed_back, decode_time);
    stats.memory = decoder.memory();
    Ok(Generation { tokens: out, stats })
}

/// Bytes of text as byte-level tokens.
pub fn encode_text(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Turns a stream of byte tokens into text pieces that are always valid UTF-8: a
/// multi-byte character is held back until its last byte arrives; bytes that can never
/// form a character come out as U+FFFD.
#[derive(Default, Debug)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds one token (a byte; values above 255 are replaced) and returns the text it
    /// completes, possibly empty.
    pub fn push(&mut self, token: u32) -> String {
        self.pending.push(u8::try_from(token).unwrap_or(b'?'));
        let mut out = String::new();
        // The same replacements as String::from_utf8_lossy of the whole stream: an invalid
        // sequence becomes one U+FFFD, and decoding resumes right after it (the byte that
        // ended it may begin a character).
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    let Some(invalid) = e.error_len() else {
                        // An incomplete character at the end: hold it back.
                        self.pending.drain(..valid);
                        return out;
                    };
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.pending.drain(..valid + invalid);
                }
            }
        }
    }

    /// Whatever is still held back, lossily.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
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
