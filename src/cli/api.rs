//! `walsh serve --model DIR`: OpenAI's completions API on the page's server.
//!
//! `GET /v1/models`, `POST /v1/completions` (prompt a string or a list of strings, each a
//! choice; `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `stream` as
//! server-sent events ending with `data: [DONE]`, `echo`), `GET /health`, and `GET /metrics`
//! in Prometheus's format ([`super::metrics`]). Errors have OpenAI's shape,
//! `{"error": {"message", "type", "param", "code"}}`. Each request is logged on stderr in
//! one line when its response is complete.
//!
//! One engine thread owns the decoder (the GPU's, or the CPU's with `--device cpu`) and a
//! [`Batcher`]: requests join and leave it between decode chunks, so concurrent requests
//! share each chunk. Handlers talk to the thread through channels; a client that goes
//! away cancels its request at the next round.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc as tokio_mpsc, oneshot};
use walsh::gpu::Gpu;
use walsh::model::batch::{Batcher, Event, RequestId};
use walsh::model::completion::{CompletionRequest, Endpoint, Output, RequestError, Update};
use walsh::model::generate::{CpuBatch, Decoder};
use walsh::model::gpu::GpuDecoder;
use walsh::model::sizes::{BufferLimits, check_decoder_fits};
use walsh::model::weights::Model;
use walsh::ops::attention::KvFormat;
use walsh::tokenizer::Tokenizer;

use super::metrics::{Metrics, RequestLog};
use super::run::Device;
use super::serve::{Body, full_body};

/// Largest request body: 1 MiB (a prompt of the shipped models' context is 128 bytes).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Decode steps per chunk at most: a joining request waits about this many steps.
const MAX_CHUNK: usize = 16;

/// How the API is served.
pub struct ApiOptions {
    pub device: Device,
    pub adapter: String,
    pub kv: KvFormat,
    /// None: [`default_max_batch`].
    pub max_batch: Option<usize>,
    pub max_queue: usize,
    pub api_key: Option<String>,
}

enum Command {
    Submit {
        request: walsh::model::batch::Request,
        updates: tokio_mpsc::UnboundedSender<Update>,
        reply: oneshot::Sender<Result<RequestId, ApiError>>,
    },
    Cancel(RequestId),
}

/// The handlers' side of the engine thread.
pub struct Api {
    commands: mpsc::Sender<Command>,
    model: String,
    context: usize,
    api_key: Option<String>,
    metrics: Arc<Metrics>,
    tokenizer: Arc<Tokenizer>,
}

/// Who logs a response: the handler when it returns, or the task that streams it.
enum Logged {
    /// Complete now, with (prompt, completion) tokens where it made any.
    Now(Option<(usize, usize)>),
    /// A stream, which logs itself when it ends.
    ByStream,
}

/// An error response: status, OpenAI error type and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    /// The decoder failed: the server's fault, not the request's.
    fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: message.into(),
        }
    }

    fn response(&self) -> Response<Body> {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": Value::Null,
            "code": Value::Null,
        }});
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::invalid(e.0)
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full_body(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl Api {
    /// Loads nothing itself: starts the engine thread on `model` and waits until its
    /// decoder is ready (or failed, which is returned).
    pub fn start(
        model: Model,
        tokenizer: Tokenizer,
        name: String,
        options: ApiOptions,
    ) -> Result<Self> {
        let context = model.config.max_position_embeddings;
        let (commands, inbox) = mpsc::channel();
        let (ready, started) = mpsc::channel();
        let max_queue = options.max_queue;
        std::thread::Builder::new()
            .name("walsh engine".into())
            .spawn(move || {
                // The decoder owns its device handle and lives on this thread.
                let gpu = match options.device {
                    Device::Gpu => match super::tune::open_gpu(&options.adapter, &model) {
                        Ok(gpu) => Some(gpu),
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    },
                    Device::Cpu => None,
                };
                let max_batch = options
                    .max_batch
                    .unwrap_or_else(|| default_max_batch(gpu.as_ref(), &model, options.kv));
                let decoder: Result<Box<dyn Decoder>> = match &gpu {
                    None => CpuBatch::new(&model, max_batch, context, options.kv)
                        .map(|d| Box::new(d) as Box<dyn Decoder>)
                        .map_err(Into::into),
                    Some(gpu) => GpuDecoder::new(gpu, &model, max_batch, context, options.kv)
                        .map(|d| Box::new(d) as Box<dyn Decoder>)
                        .map_err(Into::into),
                };
                let metrics = Arc::new(Metrics::new(max_batch));
                let batcher = Batcher::new(max_batch, context, MAX_CHUNK).expect("checked sizes");
                // The first request's kernels, built before the server takes requests.
                let warm = Instant::now();
                let mut decoder = match decoder.and_then(|mut d| {
                    batcher
                        .prepare(d.as_mut())
                        .context("building the decoder's kernels")?;
                    Ok(d)
                }) {
                    Ok(d) => {
                        let built = warm.elapsed().as_secs_f64();
                        let _ =
                            ready.send(Ok((d.device(), max_batch, built, Arc::clone(&metrics))));
                        d
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                engine(
                    decoder.as_mut(),
                    batcher,
                    inbox,
                    max_batch,
                    max_queue,
                    &metrics,
                );
            })
            .context("starting the engine thread")?;
        let (device, max_batch, built, metrics) = started
            .recv()
            .context("the engine thread stopped while starting")??;
        eprintln!(
            "walsh: serving the completions API for {name} on {device}, {max_batch} \
             requests at once (kernels built in {built:.2} s)"
        );
        Ok(Self {
            commands,
            model: name,
            context,
            api_key: options.api_key,
            metrics,
            tokenizer: Arc::new(tokenizer),
        })
    }

    fn send(&self, command: Command) -> Result<(), ApiError> {
        self.commands.send(command).map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the engine has stopped".into(),
        })
    }

    /// Answers a request under /v1/ (or /health, /metrics), and logs it.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let mut log = RequestLog::new(req.method().as_str(), req.uri().path());
        let (response, logged) = match self.route(req, &mut log).await {
            Ok(answer) => answer,
            Err(e) => (e.response(), Logged::Now(None)),
        };
        if let Logged::Now(tokens) = logged {
            log.finish(&self.metrics, response.status().as_u16(), tokens, "");
        }
        response
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<(Response<Body>, Logged), ApiError> {
        let path = req.uri().path().to_string();
        let now = |response| Ok((response, Logged::Now(None)));
        // Unauthenticated, as load balancers and scrapers expect.
        match (req.method(), path.as_str()) {
            (&Method::GET, "/health") => {
                return now(json_response(StatusCode::OK, &json!({"status": "ok"})));
            }
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(full_body(self.metrics.render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return now(response);
            }
            _ => {}
        }
        self.authorize(&req)?;
        match (req.method(), path.as_str()) {
            (&Method::GET, "/v1/models") => now(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": [{
                    "id": self.model, "object": "model", "created": 0, "owned_by": "walsh",
                }]}),
            )),
            (&Method::POST, "/v1/completions") => {
                let body = read_json(req).await?;
                self.completions(&body, Endpoint::Completions, log).await
            }
            (&Method::POST, "/v1/chat/completions") => {
                let body = read_json(req).await?;
                self.completions(&body, Endpoint::Chat, log).await
            }
            (
                _,
                "/v1/models" | "/v1/completions" | "/v1/chat/completions" | "/health" | "/metrics",
            ) => Err(ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                kind: "invalid_request_error",
                message: format!("{} does not take {}", path, req.method()),
            }),
            _ => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                message: format!(
                    "no endpoint {path}: walsh serves /v1/models, /v1/completions, \
                     /v1/chat/completions, /health and /metrics"
                ),
            }),
        }
    }

    /// With `--api-key`, requires `Authorization: Bearer KEY` (compared in constant time).
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let same = given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                kind: "invalid_request_error",
                message: "a valid API key is needed: Authorization: Bearer KEY".into(),
            })
        }
    }

    async fn completions(
        &self,
        body: &Value,
        endpoint: Endpoint,
        log: &mut RequestLog,
    ) -> Result<(Response<Body>, Logged), ApiError> {
        let c = CompletionRequest::parse(body, endpoint, self.context, &self.tokenizer)?;
        if let Some(model) = body.get("model").and_then(Value::as_str)
            && model != self.model
        {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                message: format!("model {model:?} is not served here: {:?} is", self.model),
            });
        }
        let id = match endpoint {
            Endpoint::Completions => format!("cmpl-{}", unix_time_nanos()),
            Endpoint::Chat => format!("chatcmpl-{}", unix_time_nanos()),
        };
        let mut runs = Vec::new();
        for prompt in &c.prompts {
            runs.push(self.submit(&c, prompt).await?);
        }
        let prompt_tokens: usize = c.prompts.iter().map(Vec::len).sum();
        if c.stream {
            // The stream logs the request when it ends.
            return Ok((self.stream(c, id, runs, log.clone()), Logged::ByStream));
        }
        let mut choices = Vec::new();
        let mut completion_tokens = 0;
        for (index, (rid, mut updates)) in runs.into_iter().enumerate() {
            let mut out = Output::new(&c, index, &self.tokenizer);
            while let Some(u) = updates.recv().await {
                if matches!(u, Update::Token(_)) {
                    log.token(&self.metrics);
                }
                out.push(u);
                if out.finish.is_some() {
                    break;
                }
            }
            if out.finish.as_deref() == Some("stop") {
                let _ = self.send(Command::Cancel(rid));
            }
            if let Some(e) = out.error {
                return Err(ApiError::server(e));
            }
            completion_tokens += out.tokens;
            let finish = out.finish.unwrap_or_else(|| "length".into());
            let text = out.prefix + &out.text;
            choices.push(match endpoint {
                Endpoint::Completions => json!({
                    "text": text, "index": index, "logprobs": Value::Null, "finish_reason": finish,
                }),
                Endpoint::Chat => json!({
                    "index": index, "message": {"role": "assistant", "content": text},
                    "logprobs": Value::Null, "finish_reason": finish,
                }),
            });
        }
        let object = match endpoint {
            Endpoint::Completions => "text_completion",
            Endpoint::Chat => "chat.completion",
        };
        let response = json_response(
            StatusCode::OK,
            &json!({
                "id": id, "object": object, "created": unix_time(),
                "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }),
        );
        Ok((
            response,
            Logged::Now(Some((prompt_tokens, completion_tokens))),
        ))
    }

    async fn submit(
        &self,
        c: &CompletionRequest,
        prompt: &[u32],
    ) -> Result<(RequestId, tokio_mpsc::UnboundedReceiver<Update>), ApiError> {
        let (updates, receiver) = tokio_mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.send(Command::Submit {
            request: walsh::model::batch::Request {
                prompt: prompt.to_vec(),
                max_tokens: c.max_tokens,
                sampling: c.sampling,
                // End of generation ends the request in the engine, mid-chunk included.
                stop: self.tokenizer.eog_ids().to_vec(),
            },
            updates,
            reply,
        })?;
        let id = answer.await.map_err(|_| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the engine has stopped".into(),
        })??;
        Ok((id, receiver))
    }

    /// Server-sent events: one `text_completion` (`chat.completion.chunk`) chunk per piece
    /// of text, then a last one per choice with its finish reason, then `data: [DONE]`.
    fn stream(
        &self,
        c: CompletionRequest,
        id: String,
        runs: Vec<(RequestId, tokio_mpsc::UnboundedReceiver<Update>)>,
        mut log: RequestLog,
    ) -> Response<Body> {
        let (events, body) = tokio_mpsc::unbounded_channel::<Bytes>();
        let commands = self.commands.clone();
        let model = self.model.clone();
        let metrics = Arc::clone(&self.metrics);
        let tokenizer = Arc::clone(&self.tokenizer);
        let prompt_tokens: usize = c.prompts.iter().map(Vec::len).sum();
        tokio::spawn(async move {
            let mut completion_tokens = 0;
            let finish = |log: &RequestLog, tokens: usize, note: &str| {
                log.finish(&metrics, 200, Some((prompt_tokens, tokens)), note);
            };
            let created = unix_time();
            let endpoint = c.endpoint;
            let event = |index: usize, text: &str, finish: Option<&str>, first: bool| {
                let (object, choice) = match endpoint {
                    Endpoint::Completions => (
                        "text_completion",
                        json!({"text": text, "index": index, "logprobs": Value::Null,
                               "finish_reason": finish}),
                    ),
                    Endpoint::Chat => {
                        let mut delta = serde_json::Map::new();
                        if first {
                            delta.insert("role".into(), "assistant".into());
                        }
                        if first || !text.is_empty() {
                            delta.insert("content".into(), text.into());
                        }
                        (
                            "chat.completion.chunk",
                            json!({"index": index, "delta": delta, "logprobs": Value::Null,
                                   "finish_reason": finish}),
                        )
                    }
                };
                let chunk = json!({
                    "id": id, "object": object, "created": created, "model": model,
                    "choices": [choice],
                });
                Bytes::from(format!("data: {chunk}\n\n"))
            };
            for (index, (rid, mut updates)) in runs.into_iter().enumerate() {
                let mut out = Output::new(&c, index, &tokenizer);
                // A chat stream opens with the assistant's role; echo opens with the prompt.
                let opening = (endpoint == Endpoint::Chat || c.echo)
                    .then(|| event(index, &out.prefix, None, true));
                if let Some(e) = opening
                    && events.send(e).is_err()
                {
                    let _ = commands.send(Command::Cancel(rid));
                    return finish(&log, completion_tokens, "client gone");
                }
                while let Some(u) = updates.recv().await {
                    if matches!(u, Update::Token(_)) {
                        log.token(&metrics);
                    }
                    let text = out.push(u).unwrap_or_default();
                    let done = out.finish.as_deref();
                    let sent = if done.is_some() || !text.is_empty() {
                        events.send(event(index, &text, done, false))
                    } else {
                        Ok(())
                    };
                    // A client gone, or a stop string met: the engine frees the slot now.
                    if sent.is_err() || done == Some("stop") {
                        let _ = commands.send(Command::Cancel(rid));
                    }
                    if sent.is_err() {
                        return finish(&log, completion_tokens + out.tokens, "client gone");
                    }
                    if done.is_some() {
                        break;
                    }
                }
                completion_tokens += out.tokens;
                if let Some(e) = &out.error {
                    let _ = events.send(Bytes::from(format!(
                        "data: {}\n\n",
                        json!({"error": {"message": e, "type": "server_error",
                                         "param": Value::Null, "code": Value::Null}})
                    )));
                    return finish(&log, completion_tokens, "decoder failed");
                }
            }
            let _ = events.send(Bytes::from_static(b"data: [DONE]\n\n"));
            finish(&log, completion_tokens, "");
        });
        let mut response = Response::new(EventBody(body).boxed_unsync());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// A streaming body fed by a channel; the client going away drops it, which the sender
/// sees.
struct EventBody(tokio_mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`].
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    kind: "invalid_request_error",
                    message: format!(
                        "the request body is over walsh's limit of {MAX_BODY_BYTES} bytes"
                    ),
                }
            } else {
                ApiError::invalid(format!("reading the request body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))
}

/// Most requests decoded at once without `--max-batch`.
const DEFAULT_MAX_BATCH: usize = 64;
/// Without `--max-batch` on the CPU decoder.
const DEFAULT_CPU_MAX_BATCH: usize = 16;

/// `--max-batch` by default: on a GPU the most sequences, up to [`DEFAULT_MAX_BATCH`],
/// whose decoder buffers (KV caches at the model's full context above all) fit the
/// adapter's buffer limits; [`DEFAULT_CPU_MAX_BATCH`] on the CPU. (wgpu does not say how
/// much memory an adapter has; its buffer limits are what a decoder must fit.)
fn default_max_batch(gpu: Option<&Gpu>, model: &Model, kv: KvFormat) -> usize {
    let Some(gpu) = gpu else {
        return DEFAULT_CPU_MAX_BATCH;
    };
    let context = model.config.max_position_embeddings;
    let limits = BufferLimits::from(gpu.limits());
    (1..=DEFAULT_MAX_BATCH)
        .rev()
        .find(|&n| check_decoder_fits(model, n, context, kv, limits).is_ok())
        .unwrap_or(1)
}

/// The engine thread: takes commands, runs rounds while there is work, routes events.
fn engine(
    decoder: &mut dyn Decoder,
    mut batcher: Batcher,
    inbox: mpsc::Receiver<Command>,
    max_batch: usize,
    max_queue: usize,
    metrics: &Metrics,
) {
    let mut sinks: HashMap<RequestId, tokio_mpsc::UnboundedSender<Update>> = HashMap::new();
    loop {
        let first = if batcher.is_idle() {
            match inbox.recv() {
                Ok(c) => Some(c),
                Err(_) => return, // the server is gone
            }
        } else {
            None
        };
        for command in first.into_iter().chain(inbox.try_iter()) {
            match command {
                Command::Submit {
                    request,
                    updates,
                    reply,
                } => {
                    let prompt_len = request.prompt.len();
                    let result = if batcher.waiting() + batcher.running() >= max_batch + max_queue {
                        Err(ApiError {
                            status: StatusCode::TOO_MANY_REQUESTS,
                            kind: "rate_limit_error",
                            message: format!(
                                "{max_batch} requests are running and {max_queue} waiting \
                                 (--max-batch, --max-queue): try again shortly"
                            ),
                        })
                    } else {
                        batcher
                            .submit(request)
                            .map_err(|e| ApiError::invalid(e.to_string()))
                    };
                    if let Ok(id) = result {
                        sinks.insert(id, updates);
                        metrics.admitted(prompt_len);
                    }
                    let _ = reply.send(result);
                }
                Command::Cancel(id) => {
                    batcher.cancel(id);
                    sinks.remove(&id);
                }
            }
        }
        metrics.occupancy(batcher.waiting(), batcher.running());
        if batcher.is_idle() {
            continue;
        }
        // Each event goes to its handler as soon as the batcher has it.
        let mut gone = Vec::new();
        let mut route = |event: Event| {
            let (id, update, last) = match event {
                Event::Token { id, token } => {
                    metrics.generated(1);
                    (id, Update::Token(token), false)
                }
                Event::Finished { id, finish } => (id, Update::Finished(finish), true),
                Event::Failed { id, error } => (id, Update::Failed(error), true),
            };
            let lost = sinks.get(&id).is_none_or(|s| s.send(update).is_err());
            if lost || last {
                sinks.remove(&id);
                if lost {
                    gone.push(id);
                }
            }
        };
        let result = pollster::block_on(batcher.round_into(decoder, &mut route));
        for id in gone {
            batcher.cancel(id);
        }
        if let Err(e) = result {
            // The decoder failed: every request fails with it.
            for (id, sink) in sinks.drain() {
                let _ = sink.send(Update::Failed(e.to_string()));
                batcher.cancel(id);
            }
        }
        metrics.occupancy(batcher.waiting(), batcher.running());
    }
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_time_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Whether a path belongs to the API rather than the static files.
pub fn is_api_path(path: &str) -> bool {
    matches!(path, "/health" | "/metrics" | "/v1") || path.starts_with("/v1/")
}

/// The response when no model is served.
pub fn no_model() -> Response<Body> {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        message: "no model is served: start walsh serve with --model DIR for the API".into(),
    }
    .response()
}
