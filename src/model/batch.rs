//! Continuous batching: requests join and leave one decoder between decode chunks, the
//! engine behind `walsh serve`'s completions (issue #22).
//!
//! A [`Batcher`] holds a queue of waiting requests and up to `max_seqs` running ones, each
//! in a sequence slot of the decoder. Each [`Batcher::round`]:
//! 1. admits waiting requests into free slots, prefilling each alone (one host step that
//!    samples its first token), so a joining request delays the running ones by about one
//!    prefill;
//! 2. runs one decode chunk per group of running requests that share sampling settings
//!    (the kernels sample a chunk with one temperature, top-k and top-p) and per
//!    [`CHUNK_ROWS`] of them, of as many steps as the group's nearest end allows, up to
//!    `max_chunk`.
//!
//! A request that samples one of its stop tokens ends there, even in the middle of a
//! chunk: that token is its last [`Event::Token`], followed by [`Finish::Stop`]; what the
//! chunk computed for it after that is dropped, and the other rows of the chunk go on.
//!
//! Each request draws its random numbers from its own [`SampleRng`] seeded with its
//! `seed`, one for its prefill and one per step, as [`super::generate::generate`] draws
//! them for a prompt run alone: a request's tokens do not depend on which others share its
//! chunks, since the kernels compute each row alike in every batch of up to
//! [`CHUNK_ROWS`] rows a step (see `docs/serving.md`).

use std::collections::VecDeque;

use super::ModelError;
use super::generate::Decoder;
use crate::ops::matmul::GEMV_MAX_ROWS;
use crate::ops::sample::{SampleRng, SamplingParams};

/// Rows of one decode chunk at most: the GPU's products take the GEMV kernel, and its
/// fused norm prologues, only up to [`GEMV_MAX_ROWS`] rows; a larger batch switches to
/// kernels that sum in another order (the tiled GEMM, a separate norm), and a row's
/// logits would then differ in their low bits from the same row run alone. More running
/// requests than this decode in several chunks a round.
pub const CHUNK_ROWS: usize = GEMV_MAX_ROWS;

/// Tokens of the prompt [`Batcher::prepare`] builds a prefill's kernels for: past the GEMV
/// batch ([`GEMV_MAX_ROWS`]) and the Walsh–Hadamard transform's most rows a workgroup
/// (64 at d_model 64, fewer at wider ones).
pub const WARM_UP_PROMPT: usize = 64;

/// A completion to run: `max_tokens` tokens after `prompt`.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Tokens that end the request when sampled (EOS, EOT, ...); the stop token itself is
    /// reported.
    pub stop: Vec<u32>,
}

/// Names a submitted request.
pub type RequestId = u64;

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// It produced its `max_tokens`.
    Length,
    /// Its sequence filled the model's context first.
    Context,
    /// It sampled one of its stop tokens (its last token).
    Stop,
}

/// What a round did for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token {
        id: RequestId,
        token: u32,
    },
    Finished {
        id: RequestId,
        finish: Finish,
    },
    /// The decoder refused the request (a token outside the vocabulary, ...); it is gone.
    Failed {
        id: RequestId,
        error: String,
    },
}

/// A request in a sequence slot.
struct Running {
    id: RequestId,
    seq: usize,
    sampling: SamplingParams,
    rng: SampleRng,
    /// Tokens in the sequence's cache (its last sampled token not yet among them).
    cached: usize,
    /// Tokens still to produce.
    left: usize,
    stop: Vec<u32>,
    /// It sampled a stop token: nothing more is reported for it.
    stopped: bool,
}

impl Running {
    /// Whether it has not stopped, has tokens left to produce and room in a
    /// `context`-position cache.
    fn goes_on(&self, context: usize) -> bool {
        !self.stopped && self.left > 0 && self.cached < context
    }

    /// Reports `token` as its next; a stop token ends it ([`Finish::Stop`]).
    fn take(&mut self, token: u32, events: &mut dyn FnMut(Event)) {
        events(Event::Token { id: self.id, token });
        self.left -= 1;
        if self.stop.contains(&token) {
            self.stopped = true;
            events(Event::Finished {
                id: self.id,
                finish: Finish::Stop,
            });
        }
    }
}

/// The queue and the running requests of one decoder (module docs).
pub struct Batcher {
    max_seqs: usize,
    context: usize,
    max_chunk: usize,
    next_id: RequestId,
    waiting: VecDeque<(RequestId, Request)>,
    running: Vec<Running>,
}

/// Whether two requests may share a decode chunk: the same sampling but for the seed.
fn same_sampling(a: &SamplingParams, b: &SamplingParams) -> bool {
    (a.temperature, a.top_k, a.top_p) == (b.temperature, b.top_k, b.top_p)
}

impl Batcher {
    /// A batcher for a decoder of `max_seqs` sequences of `context` positions; decode
    /// chunks take at most `max_chunk` steps.
    pub fn new(max_seqs: usize, context: usize, max_chunk: usize) -> Result<Self, ModelError> {
        if max_seqs == 0 || context == 0 || max_chunk == 0 {
            return Err(ModelError::Input(format!(
                "a batcher needs sequences, room to generate and chunk steps: {max_seqs} \
                 sequences, context {context}, chunks of {max_chunk}"
            )));
        }
        Ok(Self {
            max_seqs,
            context,
            max_chunk,
            next_id: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
        })
    }

    /// Tells `dec` that its kernels will serve many requests ([`Decoder::set_many_runs`]:
    /// kernels picked by run time alone, their compile paid here once) and builds the
    /// kernels a lone request runs ([`Decoder::prepare`]): the prefill of a prompt of
    /// [`WARM_UP_PROMPT`] tokens (or the context less one) and one-row decode chunks, so
    /// a server's first request does not wait for their compilation. Prompts at least
    /// that long (in one prefill step) take the same kernels; shorter ones may take
    /// variants sized to their rows (the GEMV up to [`GEMV_MAX_ROWS`] rows, the
    /// Walsh–Hadamard transform's lines per workgroup), built the first time they come,
    /// as are the decode chunks of several requests.
    pub fn prepare(&self, dec: &mut dyn Decoder) -> Result<(), ModelError> {
        dec.set_many_runs(true);
        let prompt = WARM_UP_PROMPT.min(self.context.saturating_sub(1)).max(1);
        dec.prepare(&[prompt], &SamplingParams::greedy())
    }

    /// Checks `request` against the decoder's context; what [`Batcher::submit`] refuses.
    pub fn check(&self, request: &Request) -> Result<(), ModelError> {
        request.sampling.validate().map_err(ModelError::Input)?;
        if request.prompt.is_empty() {
            return Err(ModelError::Input(
                "the prompt is empty: give at least one token".into(),
            ));
        }
        if request.max_tokens == 0 {
            return Err(ModelError::Input("max_tokens must be at least 1".into()));
        }
        if request.prompt.len() > self.context {
            return Err(ModelError::ContextOverflow {
                tokens: request.prompt.len(),
                new: 0,
                context: self.context,
            });
        }
        Ok(())
    }

    /// Queues `request`; it starts in a later round.
    pub fn submit(&mut self, request: Request) -> Result<RequestId, ModelError> {
        self.check(&request)?;
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back((id, request));
        Ok(id)
    }

    /// Drops a request, waiting or running (its slot is free for the next round). False
    /// if there is no such request (it finished already).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let before = self.waiting.len() + self.running.len();
        self.waiting.retain(|(w, _)| *w != id);
        self.running.retain(|r| r.id != id);
        before != self.waiting.len() + self.running.len()
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests in a slot.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Admits what fits, then runs one decode chunk per sampling group (module docs).
    /// An error is the decoder's failure, not a request's: the caller should fail every
    /// request.
    pub async fn round(&mut self, dec: &mut dyn Decoder) -> Result<Vec<Event>, ModelError> {
        let mut events = Vec::new();
        self.round_into(dec, &mut |e| events.push(e)).await?;
        Ok(events)
    }

    /// [`Batcher::round`], handing each event to `events` as soon as it is known: a
    /// request's first token right after its prefill, a chunk's tokens when the chunk is
    /// read back, so a server streams them without waiting for the whole round.
    pub async fn round_into(
        &mut self,
        dec: &mut dyn Decoder,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), ModelError> {
        self.admit(dec, events).await;
        let mut grouped: Vec<usize> = Vec::new();
        while let Some(lead) = (0..self.running.len()).find(|i| !grouped.contains(i)) {
            let group: Vec<usize> = (lead..self.running.len())
                .filter(|&i| {
                    !grouped.contains(&i)
                        && same_sampling(&self.running[i].sampling, &self.running[lead].sampling)
                })
                .collect();
            grouped.extend(&group);
            for rows in group.chunks(CHUNK_ROWS) {
                self.chunk(dec, rows, events).await?;
            }
        }
        self.running.retain(|r| r.goes_on(self.context));
        Ok(())
    }

    /// Prefills waiting requests into free slots, one host step each.
    async fn admit(&mut self, dec: &mut dyn Decoder, events: &mut dyn FnMut(Event)) {
        while self.running.len() < self.max_seqs.min(dec.max_seqs()) {
            let Some((id, request)) = self.waiting.pop_front() else {
                break;
            };
            let seq = (0..self.max_seqs)
                .find(|s| self.running.iter().all(|r| r.seq != *s))
                .expect("a slot is free");
            dec.reset_sequence(seq);
            let mut rng = SampleRng::new(request.sampling.seed);
            let draw = [rng.next_unit()];
            let batch = [(seq, &request.prompt[..])];
            match dec.step(&batch, &request.sampling, &draw).await {
                Ok(tokens) => {
                    let mut r = Running {
                        id,
                        seq,
                        sampling: request.sampling,
                        rng,
                        cached: request.prompt.len(),
                        left: request.max_tokens,
                        stop: request.stop,
                        stopped: false,
                    };
                    r.take(tokens[0], events);
                    Self::end_if_done(&r, self.context, events);
                    self.running.push(r);
                }
                Err(e) => events(Event::Failed {
                    id,
                    error: e.to_string(),
                }),
            }
        }
    }

    /// One decode chunk of the running requests `group` (indices into `running`).
    async fn chunk(
        &mut self,
        dec: &mut dyn Decoder,
        group: &[usize],
        events: &mut dyn FnMut(Event),
    ) -> Result<(), ModelError> {
        let live: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| self.running[i].goes_on(self.context))
            .collect();
        let Some(steps) = live
            .iter()
            .map(|&i| {
                let r = &self.running[i];
                r.left.min(self.context - r.cached)
            })
            .min()
            .map(|s| s.min(self.max_chunk))
        else {
            return Ok(());
        };
        let seqs: Vec<usize> = live.iter().map(|&i| self.running[i].seq).collect();
        // Step by step, row by row: each request draws from its own stream.
        let mut draws = vec![0.0; steps * live.len()];
        for (r, &i) in live.iter().enumerate() {
            for s in 0..steps {
                draws[s * live.len() + r] = self.running[i].rng.next_unit();
            }
        }
        let sampling = self.running[live[0]].sampling;
        let chunk = dec.start_decode(&seqs, &sampling, &draws)?;
        let tokens = dec.finish_decode(chunk).await?;
        for step in tokens.chunks(live.len()) {
            for (&i, &token) in live.iter().zip(step) {
                let r = &mut self.running[i];
                if !r.stopped {
                    r.cached += 1;
                    r.take(token, events);
                }
            }
        }
        for &i in &live {
            Self::end_if_done(&self.running[i], self.context, events);
        }
        Ok(())
    }

    /// Reports the end of a request that produced its tokens or filled the context (one
    /// that stopped was reported when it did).
    fn end_if_done(r: &Running, context: usize, events: &mut dyn FnMut(Event)) {
        let finish = if r.stopped {
            return;
        } else if r.left == 0 {
            Finish::Length
        } else if r.cached >= context {
            Finish::Context
        } else {
            return;
        };
        events(Event::Finished { id: r.id, finish });
    }
}
