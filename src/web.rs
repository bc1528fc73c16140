//! The browser build: the same kernels, decoder and benchmark suites as the native engine,
//! behind a small wasm-bindgen API that the page in `web/` drives.
//!
//! Nothing here forks the engine: the browser opens its adapter through
//! [`Gpu::browser`], kernels pick their subgroup-free paths from the device's features
//! (wgpu does not expose the browser's `subgroups`), and every readback is awaited through
//! the same `async` functions native code blocks on. Results cross to JavaScript as JSON
//! strings, so the page sees the same field names as `walsh bench --out` and
//! `walsh generate --json`.
//!
//! Without WebGPU (or when its adapter fails) the page opens the engine on the CPU
//! instead ([`Engine::open_cpu`]): the CPU reference decoder, compiled to WASM, runs the
//! same model through the same generation loop and gives the same tokens.
//!
//! One [`Engine`] per device (the decoder keeps its own handle on the device, so a page
//! that replaces its engine after a lost device drops the old one whole), and one
//! generation or benchmark runs at a time. The page downloads (and caches) the model files; the engine checks and uploads
//! them.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::path::Path;

use js_sys::{Function, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::bench::{self, BenchError, BenchOptions, Report, Suite, report::Environment};
use crate::gpu::{Gpu, GpuError};
use crate::model::fit::{fit_prompt, prompt_notice};
use crate::model::generate::{
    Chunk, CpuBatch, DEFAULT_MAX_CHUNK, Decoder, GenerateOptions, StepFuture, generate_async,
};
use crate::model::gguf::gguf_name;
use crate::model::gguf_load::from_gguf_bytes;
use crate::model::gpu::GpuDecoder;
use crate::model::sizes::{BufferLimits, check_decoder_fits};
use crate::model::tokens::{TOKENIZER_FILE, fits};
use crate::model::weights::{CONFIG_FILE, Model};
use crate::model::{Config, ModelError};
use crate::ops::WeightFormat;
use crate::ops::attention::KvFormat;
use crate::ops::hadamard::WhtError;
use crate::ops::matmul::Kernel;
use crate::ops::sample::SamplingParams;
use crate::tokenizer::{Tokenizer, TokenizerKind};

/// Decode steps per chunk on the CPU: each chunk runs without yielding to the browser, so
/// a small one keeps the page responsive (and Stop quick) while tokens stream.
const CPU_MAX_CHUNK: usize = 8;

/// Where the engine runs.
enum Backend {
    /// The browser's WebGPU adapter.
    Gpu(Gpu),
    /// The CPU reference decoder, compiled to WASM.
    Cpu,
}

/// A loaded model, ready to generate.
enum Runner {
    /// Boxed: the decoder is large and moves in and out of the engine on every run.
    Gpu(Box<GpuDecoder>),
    /// The CPU decoder is built per generation (its KV cache is a few hundred KiB).
    Cpu(Box<Model>),
}

struct Loaded {
    info: ModelInfo,
    runner: Runner,
    /// Encodes prompts (BOS as the model asks, as `walsh generate` does) and decodes the
    /// generated tokens; byte-level for the shipped models.
    tokenizer: Tokenizer,
}

/// What the page shows about a loaded model.
#[derive(Clone, Debug, Serialize)]
struct ModelInfo {
    url: String,
    variant: String,
    params: usize,
    attention_params: usize,
    hidden_size: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab_size: usize,
    context: usize,
    /// `byte-level`, `BPE` or `SentencePiece`.
    tokenizer: &'static str,
    /// Tokens the tokenizer knows (256 for byte-level).
    tokenizer_tokens: usize,
    /// Where the model came from: `safetensors` (config.json + model.safetensors) or `gguf`.
    format: &'static str,
    /// Bytes of the files the model was read from.
    bytes: usize,
    /// `webgpu` or `cpu`.
    device: &'static str,
    /// The decode GEMV by weight format, measured on this adapter (empty on the CPU).
    gemv: std::collections::BTreeMap<String, String>,
    /// The tuning cache with this load's measurements added, when it measured: the page
    /// keeps it in localStorage and passes it to the next load.
    tuning_cache: Option<String>,
}

/// Alternating rounds of the decode GEMVs' measurement on a model's first load.
const TUNE_ROUNDS: usize = 3;

/// Generation settings as the page sends them (JSON).
#[derive(Clone, Debug, Deserialize)]
struct WebGenerateOptions {
    max_tokens: usize,
    #[serde(flatten)]
    sampling: SamplingParams,
    /// Most decode steps per chunk (default: the native default on the GPU, a small one on
    /// the CPU).
    #[serde(default)]
    max_chunk: Option<usize>,
}

/// What `generate` resolves to (JSON): the prompt's and the generated tokens, the text and
/// the stats, and the notice when the prompt was longer than the context.
#[derive(Serialize)]
struct WebGeneration<'a> {
    /// The prompt as the model saw it (the tokenizer's ids, BOS included).
    prompt_tokens: &'a [u32],
    tokens: &'a [u32],
    text: String,
    stats: &'a crate::model::generate::GenerationStats,
    notice: Option<String>,
}

/// The engine the page drives.
#[wasm_bindgen]
pub struct Engine {
    backend: Backend,
    loaded: RefCell<Option<Loaded>>,
    busy: Cell<bool>,
    stop: Cell<bool>,
    /// Why the GPU cannot be used any more (lost, out of memory), once a run found out.
    failure: RefCell<Option<String>>,
    /// Set by [`Engine::lose_device`]: the device was destroyed on purpose.
    destroyed: Cell<bool>,
    /// The decode GEMV [`Engine::force_gemv`] asked for, instead of the measured choice.
    forced_gemv: Cell<Option<Kernel>>,
    /// Whether decode steps are fused ([`Engine::set_fusion`]); None: by adapter type.
    fusion: Cell<Option<bool>>,
    /// The kernel suite's largest width ([`Engine::set_max_kernel_n`]); None: 4096.
    max_kernel_n: Cell<Option<usize>>,
}

/// Marks the engine busy while alive.
struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn error(message: impl std::fmt::Display) -> JsError {
    JsError::new(&message.to_string())
}

/// The message of a JavaScript exception, whatever was thrown.
fn js_message(value: &JsValue) -> String {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

fn to_json(value: &impl Serialize) -> Result<String, JsError> {
    serde_json::to_string(value).map_err(error)
}

/// Lets the browser run its event loop (paint, input, Stop) before continuing: a
/// zero-delay timer, which unlike a resolved promise comes after rendering.
async fn yield_to_browser() {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let scheduled = web_sys::window().is_some_and(|w| {
            w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0)
                .is_ok()
        });
        if !scheduled {
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    let _ = JsFuture::from(promise).await;
}

/// The CPU decoder, yielding to the browser after every step or chunk: its work is
/// synchronous, and a page that never yields neither paints the streamed tokens nor sees
/// Stop.
struct YieldingCpu<'m>(CpuBatch<'m>);

impl Decoder for YieldingCpu<'_> {
    fn max_seqs(&self) -> usize {
        self.0.max_seqs()
    }
    fn max_positions(&self) -> usize {
        self.0.max_positions()
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn reset_sequence(&mut self, seq: usize) {
        self.0.reset_sequence(seq)
    }
    fn step<'a>(
        &'a mut self,
        batch: &'a [(usize, &'a [u32])],
        sampling: &'a SamplingParams,
        draws: &'a [f32],
    ) -> StepFuture<'a, Vec<u32>> {
        let step = self.0.step(batch, sampling, draws);
        Box::pin(async move {
            let tokens = step.await;
            yield_to_browser().await;
            tokens
        })
    }
    fn logits<'a>(&'a mut self, batch: &'a [(usize, &'a [u32])]) -> StepFuture<'a, Vec<Vec<f32>>> {
        self.0.logits(batch)
    }
    fn start_decode(
        &mut self,
        seqs: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<Chunk, ModelError> {
        self.0.start_decode(seqs, sampling, draws)
    }
    fn finish_decode(&mut self, chunk: Chunk) -> StepFuture<'_, Vec<u32>> {
        let tokens = self.0.finish_decode(chunk);
        Box::pin(async move {
            let tokens = tokens.await;
            yield_to_browser().await;
            tokens
        })
    }
    fn device(&self) -> String {
        "cpu (WebAssembly)".into()
    }
    fn kv_format(&self) -> KvFormat {
        self.0.kv_format()
    }
}

/// The notice for a prompt of `tokens` that [`fit_prompt`] shortened to `context`.
fn long_prompt_notice(tokenizer: &Tokenizer, tokens: usize, context: usize) -> String {
    if tokenizer.kind() == TokenizerKind::Byte {
        prompt_notice(tokens, context)
    } else {
        format!(
            "the prompt is {tokens} tokens, more than the model's context of {context}: \
             generating from its last {context} tokens"
        )
    }
}

/// The GPU error inside a run's error, if it was one.
fn gpu_error(e: &ModelError) -> Option<&GpuError> {
    match e {
        ModelError::Gpu(g) | ModelError::Wht(WhtError::Gpu(g)) => Some(g),
        _ => None,
    }
}

#[wasm_bindgen]
impl Engine {
    fn new(backend: Backend) -> Self {
        Engine {
            backend,
            loaded: RefCell::new(None),
            busy: Cell::new(false),
            stop: Cell::new(false),
            failure: RefCell::new(None),
            destroyed: Cell::new(false),
            forced_gemv: Cell::new(None),
            fusion: Cell::new(None),
            max_kernel_n: Cell::new(None),
        }
    }

    /// Opens the browser's WebGPU adapter. Rejects with a message saying what is missing
    /// when the browser has none. `label` names the adapter where wgpu cannot (the page
    /// passes the vendor and architecture of `GPUAdapter.info`, or its own description
    /// where the browser leaves that empty). `max_binding` (bytes), when below the
    /// adapter's storage-binding limit, is the limit models are checked, split and
    /// stepped against instead ([`Gpu::cap_bindings`]): the page's `?max_binding=`
    /// previews a phone's 128 MiB on a desktop.
    pub async fn open(label: Option<String>, max_binding: Option<f64>) -> Result<Engine, JsError> {
        let mut gpu = Gpu::browser().await?;
        if let Some(label) = label.filter(|l| !l.trim().is_empty()) {
            gpu.set_label(label.trim());
        }
        if let Some(bytes) = max_binding {
            gpu.cap_bindings(bytes.max(0.0) as u64);
        }
        Ok(Engine::new(Backend::Gpu(gpu)))
    }

    /// Opens the engine on the CPU: the reference decoder compiled to WASM, for browsers
    /// without WebGPU. Generation gives the same tokens as on the GPU, more slowly; the
    /// benchmark suites need a GPU.
    pub fn open_cpu() -> Engine {
        Engine::new(Backend::Cpu)
    }

    /// Runs the decode GEMV `name` (one of `walsh tune`'s exact GEMVs) for every weight
    /// format it can run in the models loaded from now on, instead of the measured choice
    /// (nothing is measured or cached); None goes back to measuring. The page's
    /// `?gemv=NAME`, as `WALSH_TUNE=NAME` natively: to compare GEMVs in whole steps.
    pub fn force_gemv(&self, name: Option<String>) -> Result<(), JsError> {
        let kernel = match name.as_deref() {
            None | Some("") => None,
            Some(n) => Some(Kernel::from_name(n).ok_or_else(|| {
                let names: Vec<&str> = Kernel::GEMVS.iter().map(|k| k.name()).collect();
                error(format!("{n} is not a decode GEMV ({})", names.join(", ")))
            })?),
        };
        self.forced_gemv.set(kernel);
        Ok(())
    }

    /// Fuses the decode step or runs each dispatch on its own in the models loaded from
    /// now on (the page's `?fuse=on|off`, as `WALSH_FUSE` natively); None: fused on GPUs,
    /// unfused on CPU adapters, where the fused step measured no faster (Chromium's
    /// SwiftShader: 0.91x the unfused step's tok/s; Firefox on lavapipe: 0.98x;
    /// docs/browser.md). The same tokens either way.
    pub fn set_fusion(&self, on: Option<bool>) {
        self.fusion.set(on);
    }

    /// Bounds the kernel suite's widths in the benchmarks run from now on, below the
    /// page's own bound of 4096 (the page's `?max_kernel_n=`, as `walsh bench
    /// --max-kernel-n` natively): software WebGPU takes minutes a width. None: 4096.
    pub fn set_max_kernel_n(&self, n: Option<u32>) {
        self.max_kernel_n.set(n.map(|n| n as usize));
    }

    /// True on WebGPU, false on the CPU.
    pub fn on_gpu(&self) -> bool {
        matches!(self.backend, Backend::Gpu(_))
    }

    fn gpu(&self) -> Result<&Gpu, JsError> {
        match &self.backend {
            Backend::Gpu(gpu) => Ok(gpu),
            Backend::Cpu => Err(error(
                "this needs WebGPU: walsh runs on the CPU in this browser",
            )),
        }
    }

    /// The adapter (name, backend, features, limits), as JSON: the same summary as
    /// `walsh adapters --json`; null on the CPU.
    pub fn adapter(&self) -> Result<Option<String>, JsError> {
        match &self.backend {
            Backend::Gpu(gpu) => to_json(gpu.summary()).map(Some),
            Backend::Cpu => Ok(None),
        }
    }

    /// walsh's version and the commit this build came from, when known.
    pub fn version() -> String {
        match option_env!("WALSH_GIT_COMMIT") {
            Some(commit) => format!("{} ({commit})", env!("CARGO_PKG_VERSION")),
            None => env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn start(&self) -> Result<Busy<'_>, JsError> {
        if let Some(why) = self.failure.borrow().as_ref() {
            return Err(error(format!(
                "the GPU device cannot be used any more ({why}): reopen the engine"
            )));
        }
        if self.busy.replace(true) {
            return Err(error("walsh is busy with another generation or benchmark"));
        }
        self.stop.set(false);
        Ok(Busy(&self.busy))
    }

    /// Records why the device is unusable when `e` says it is (lost, out of memory, a
    /// failed readback), so the page reopens the engine; returns `e` as a JsError.
    fn fail(&self, e: &dyn std::fmt::Display, gpu_error: Option<&GpuError>) -> JsError {
        if let Backend::Gpu(gpu) = &self.backend {
            let why = if self.destroyed.get() {
                Some("the page destroyed the device".to_string())
            } else if let Err(lost @ GpuError::DeviceLost(_)) = gpu.check() {
                // The device's lost callback outranks whatever symptom the run saw.
                Some(lost.to_string())
            } else {
                match gpu_error {
                    Some(
                        g @ (GpuError::DeviceLost(_)
                        | GpuError::OutOfMemory(_)
                        | GpuError::Readback(_)),
                    ) => Some(g.to_string()),
                    _ => None,
                }
            };
            if let Some(why) = why {
                self.loaded.borrow_mut().take();
                *self.failure.borrow_mut() = Some(why);
            }
        }
        error(e)
    }

    /// Why the GPU cannot be used any more (lost, out of memory), after a run failed;
    /// null while it is fine. The page then opens a new engine and reloads the model.
    pub fn gpu_failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Destroys the GPU device, as a driver reset or an unplugged GPU would lose it: the
    /// running generation fails, and the page shows how it recovers (its recovery test).
    pub fn lose_device(&self) {
        if let Backend::Gpu(gpu) = &self.backend {
            self.destroyed.set(true);
            gpu.device.destroy();
        }
    }

    /// Checks `config` (config.json's text) and `weights` (model.safetensors' bytes) from
    /// `url` like the native loader, with the tokenizer of `tokenizer` (tokenizer.json's
    /// text, and `tokenizer_config`, tokenizer_config.json's, when present; byte-level
    /// without), checks that every buffer fits the adapter's limits, and uploads the weights
    /// (on the GPU). Resolves to the model's description (JSON). The previous model is
    /// released once the new one passed these checks. `tuning` is the page's tuning cache (the text of a
    /// `bench::tune::TuningCache`): the decode GEMVs are chosen from it, or measured once
    /// when it has no entry for this adapter and model shape, and then the description
    /// carries the new cache in `tuning_cache`. `url` names the files in messages: a
    /// model's folder on the server, or the name of a folder the visitor opened.
    pub async fn load_model(
        &self,
        url: String,
        config: String,
        weights: Uint8Array,
        tuning: Option<String>,
        tokenizer: Option<String>,
        tokenizer_config: Option<String>,
    ) -> Result<String, JsError> {
        let _busy = self.start()?;
        let base = url.trim_end_matches('/');
        let dir = Path::new(base);
        let parsed = Config::from_json(&dir.join(CONFIG_FILE), &config)?;
        let bytes = weights.to_vec();
        let model = Model::from_safetensors(dir, parsed, &bytes)?;
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let tok = match &tokenizer {
            Some(json) => {
                let tok = Tokenizer::from_hf_json(
                    json.as_bytes(),
                    tokenizer_config.as_ref().map(|c| c.as_bytes()),
                )
                .map_err(|source| ModelError::Tokenizer {
                    path: tokenizer_path.clone(),
                    source,
                })?;
                fits(&tokenizer_path, &tok, &model.config)?;
                tok
            }
            // As natively: without tokenizer.json the model is byte-level.
            None => Tokenizer::byte_level(),
        };
        let files = bytes.len()
            + config.len()
            + tokenizer.as_ref().map_or(0, String::len)
            + tokenizer_config.as_ref().map_or(0, String::len);
        let info = self.describe(base, &model, &tok, "safetensors", files);
        drop(bytes);
        self.install(info, model, tok, tuning).await
    }

    /// Checks the GGUF file `bytes` (named `name` in messages) like the native loader
    /// (llama architecture; F32, F16, BF16, Q8_0 or Q4_0 tensors) with the tokenizer its
    /// metadata describes, checks that every buffer fits the adapter's limits, and uploads
    /// the weights: [`Engine::load_model`] for a GGUF file (the same description and
    /// `tuning`).
    pub async fn load_gguf(
        &self,
        name: String,
        bytes: Uint8Array,
        tuning: Option<String>,
    ) -> Result<String, JsError> {
        let _busy = self.start()?;
        let file = bytes.to_vec();
        let (model, tok) = from_gguf_bytes(Path::new(&name), &file)?;
        let info = self.describe(&name, &model, &tok, "gguf", file.len());
        drop(file);
        self.install(info, model, tok, tuning).await
    }

    fn describe(
        &self,
        url: &str,
        model: &Model,
        tokenizer: &Tokenizer,
        format: &'static str,
        bytes: usize,
    ) -> ModelInfo {
        let c = &model.config;
        ModelInfo {
            url: url.to_string(),
            variant: c.variant(),
            params: model.parameter_count(),
            attention_params: model.attention_parameter_count(),
            hidden_size: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.kv_heads(),
            vocab_size: c.vocab_size,
            context: c.max_position_embeddings,
            tokenizer: match tokenizer.kind() {
                TokenizerKind::Byte => "byte-level",
                TokenizerKind::Bpe => "BPE",
                TokenizerKind::Spm => "SentencePiece",
            },
            tokenizer_tokens: tokenizer.vocab_size(),
            format,
            bytes,
            device: if self.on_gpu() { "webgpu" } else { "cpu" },
            gemv: Default::default(),
            tuning_cache: None,
        }
    }

    /// Makes `model` the loaded one: on the GPU, refused before anything is uploaded when
    /// a buffer would not fit the adapter's limits (naming the buffer and the limit; the
    /// previous model stays loaded), else the previous model released, the decode GEMVs
    /// chosen (or measured) and the weights uploaded.
    async fn install(
        &self,
        mut info: ModelInfo,
        model: Model,
        tokenizer: Tokenizer,
        tuning: Option<String>,
    ) -> Result<String, JsError> {
        let context = info.context;
        if let Backend::Gpu(gpu) = &self.backend {
            // Refuse before uploading anything, naming the tensor and the limit.
            let limits = BufferLimits::from(gpu.limits());
            check_decoder_fits(&model, 1, context, KvFormat::default(), limits).map_err(|e| {
                match gguf_name(&e.what).filter(|_| info.format == "gguf") {
                    // The tensor as the visitor's file names it, too.
                    Some(name) => error(format!("{e} (`{name}` in {})", info.url)),
                    None => error(e),
                }
            })?;
        }
        // Free the old model's buffers before allocating the new one's.
        self.loaded.borrow_mut().take();
        let runner = match &self.backend {
            Backend::Gpu(gpu) => {
                let mut cache = bench::tune::TuningCache::parse(tuning.as_deref().unwrap_or(""));
                let (mut chosen, mut complete) = cache.tuning(gpu, &model);
                if let Some(kernel) = self.forced_gemv.get() {
                    chosen = bench::tune::forced_tuning(gpu, &model, kernel);
                    complete = true;
                }
                if !complete {
                    chosen = bench::tune::tune_model(gpu, &model, TUNE_ROUNDS, &mut cache)
                        .await
                        .map_err(error)?
                        .0;
                    info.tuning_cache = Some(cache.to_json());
                }
                info.gemv = chosen.gemv.clone();
                gpu.set_tuning(chosen);
                let mut decoder = GpuDecoder::new(gpu, &model, 1, context, KvFormat::default())
                    .map_err(|e| self.fail(&e, gpu_error(&e)))?;
                decoder.set_fusion(self.fusion.get().unwrap_or(!gpu.is_cpu_adapter()));
                Runner::Gpu(Box::new(decoder))
            }
            Backend::Cpu => Runner::Cpu(Box::new(model)),
        };
        let json = to_json(&info)?;
        *self.loaded.borrow_mut() = Some(Loaded {
            info,
            runner,
            tokenizer,
        });
        Ok(json)
    }

    /// The loaded model's description (JSON), or null.
    pub fn model(&self) -> Result<Option<String>, JsError> {
        self.loaded
            .borrow()
            .as_ref()
            .map(|l| to_json(&l.info))
            .transpose()
    }

    /// The notice for `prompt` when it is longer than the loaded model's context (its last
    /// tokens that fit are kept), or null.
    pub fn prompt_notice(&self, prompt: String) -> Option<String> {
        let loaded = self.loaded.borrow();
        let loaded = loaded.as_ref()?;
        let tokens = loaded.tokenizer.encode(&prompt, true).len();
        let context = loaded.info.context;
        (tokens > context).then(|| long_prompt_notice(&loaded.tokenizer, tokens, context))
    }

    /// Generates after `prompt` (text, encoded by the model's tokenizer with its BOS as
    /// `walsh generate` does; a prompt longer than the context keeps its last tokens that
    /// fit) with `options` (JSON: `max_tokens`, `temperature`, `top_k`, `top_p`, `seed`),
    /// calling `on_token(text, index, token)` as each token arrives (`text` is empty while
    /// a multi-byte character is incomplete). An end-of-generation token (EOS, EOT) ends
    /// the text. Resolves to `{tokens, text, stats, notice}` (JSON). [`Engine::stop`] ends
    /// it early.
    pub async fn generate(
        &self,
        prompt: String,
        options: String,
        on_token: Function,
    ) -> Result<String, JsError> {
        let _busy = self.start()?;
        let options: WebGenerateOptions = serde_json::from_str(&options)
            .map_err(|e| error(format!("generation options: {e}")))?;
        let mut loaded = self
            .loaded
            .borrow_mut()
            .take()
            .ok_or_else(|| error("no model is loaded"))?;
        let context = loaded.info.context;
        let tokens = loaded.tokenizer.encode(&prompt, true);
        let (kept, dropped) = fit_prompt(&tokens, context);
        let notice =
            (dropped > 0).then(|| long_prompt_notice(&loaded.tokenizer, tokens.len(), context));
        let prompts = [kept.to_vec()];
        let default_chunk = match loaded.runner {
            Runner::Gpu(_) => DEFAULT_MAX_CHUNK,
            Runner::Cpu(_) => CPU_MAX_CHUNK,
        };
        let options = GenerateOptions {
            max_tokens: options.max_tokens,
            sampling: options.sampling,
            max_chunk: options.max_chunk.unwrap_or(default_chunk),
        };
        let mut stream = loaded.tokenizer.continuation(false);
        let mut text = String::new();
        let mut callback_error = None;
        let tokenizer = &loaded.tokenizer;
        let mut on_event = |ev: crate::model::generate::TokenEvent| {
            if tokenizer.is_eog(ev.token) {
                return ControlFlow::Break(());
            }
            let piece = stream.push(ev.token).unwrap_or_default();
            text.push_str(&piece);
            let args = (
                JsValue::from_str(&piece),
                JsValue::from(ev.index as u32),
                JsValue::from(ev.token),
            );
            if let Err(e) = on_token.call3(&JsValue::NULL, &args.0, &args.1, &args.2) {
                callback_error = Some(js_message(&e));
                return ControlFlow::Break(());
            }
            if self.stop.get() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let result = match &mut loaded.runner {
            Runner::Gpu(decoder) => {
                generate_async(decoder.as_mut(), &prompts, &options, &mut on_event).await
            }
            Runner::Cpu(model) => match CpuBatch::new(model, 1, context, KvFormat::default()) {
                Ok(cpu) => {
                    let mut decoder = YieldingCpu(cpu);
                    generate_async(&mut decoder, &prompts, &options, &mut on_event).await
                }
                Err(e) => Err(e),
            },
        };
        text.push_str(&stream.finish());
        *self.loaded.borrow_mut() = Some(loaded);
        if let Some(message) = callback_error {
            return Err(error(format!("the on_token callback threw: {message}")));
        }
        let generation = result.map_err(|e| self.fail(&e, gpu_error(&e)))?;
        to_json(&WebGeneration {
            prompt_tokens: &prompts[0],
            tokens: &generation.tokens[0],
            text,
            stats: &generation.stats,
            notice,
        })
    }

    /// Asks the running generation or benchmark to stop after the current step.
    pub fn stop(&self) {
        self.stop.set(true);
    }

    /// GPU memory held now and at peak, by category (JSON); null on the CPU.
    pub fn memory(&self) -> Result<Option<String>, JsError> {
        match &self.backend {
            Backend::Gpu(gpu) => to_json(&gpu.memory().report()).map(Some),
            Backend::Cpu => Ok(None),
        }
    }

    /// Runs benchmark suites (comma-separated: `kernels`, `decoder`, `paper`), `quick` for
    /// small sizes, with the decoders' layer matrices in `weights` (`f16`, `q8` or `q4`, as
    /// `walsh bench --weights`), calling `progress(what, done, total)` between cases.
    /// Resolves to the report (JSON, the schema of `walsh bench --out`). Needs WebGPU.
    pub async fn bench(
        &self,
        suites: String,
        quick: bool,
        weights: String,
        progress: Function,
    ) -> Result<String, JsError> {
        let gpu = self.gpu()?;
        let _busy = self.start()?;
        let suites = suites
            .split(',')
            .map(|s| match s.trim() {
                "kernels" => Ok(Suite::Kernels),
                "decoder" => Ok(Suite::Decoder),
                "paper" => Ok(Suite::Paper),
                other => Err(error(format!(
                    "unknown suite `{other}`: use kernels, decoder or paper"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let weights = match weights.trim() {
            "f16" => WeightFormat::F16,
            "q8" => WeightFormat::Q8,
            "q4" => WeightFormat::Q4,
            other => {
                return Err(error(format!(
                    "unknown weight format `{other}`: use f16, q8 or q4"
                )));
            }
        };
        let mut options = BenchOptions::new(suites, quick);
        options.weights = weights;
        // Software WebGPU (SwiftShader) and phones: keep the sizes within a few minutes
        // (a 16384-wide GEMM alone is 137 GFLOP).
        options.max_d_model = options.max_d_model.min(1024);
        options.max_context = options.max_context.min(512);
        options.max_kernel_n = options.max_kernel_n.min(4096);
        if let Some(n) = self.max_kernel_n.get() {
            options.max_kernel_n = options.max_kernel_n.min(n);
        }
        if let Some(smallest) = bench::kernels::smallest_width_bounded_out(&options) {
            return Err(error(format!(
                "max_kernel_n {} leaves the kernel suite empty: its smallest width is \
                 {smallest}",
                options.max_kernel_n
            )));
        }
        let user_agent = web_sys::window()
            .and_then(|w| w.navigator().user_agent().ok())
            .unwrap_or_default();
        let stop = &self.stop;
        let mut report_progress = |what: &str, done: usize, total: usize| {
            // Progress is advisory: a throwing callback does not stop the run.
            let _ = progress.call3(
                &JsValue::NULL,
                &JsValue::from_str(what),
                &JsValue::from(done as u32),
                &JsValue::from(total as u32),
            );
        };
        let report = bench::run_until(
            gpu,
            &options,
            Environment::browser(&user_agent),
            &mut report_progress,
            &mut |_| {},
            &|| stop.get(),
        )
        .await
        .map_err(|e| {
            let g = match &e {
                BenchError::Gpu(g) | BenchError::Wht(WhtError::Gpu(g)) => Some(g),
                BenchError::Model(m) => gpu_error(m),
                _ => None,
            };
            self.fail(&e, g)
        })?;
        to_json(&report)
    }

    /// The Markdown tables of a report (JSON), as `walsh bench` prints them.
    pub fn report_markdown(report: String) -> Result<String, JsError> {
        Ok(Report::from_json("report", &report)?.to_markdown())
    }

    /// The files `walsh bench --out` writes for a report (JSON in): its JSON, Markdown
    /// and SVG charts, as a JSON list of `[file name, contents]`.
    pub fn report_files(report: String) -> Result<String, JsError> {
        to_json(&bench::report::files(&Report::from_json(
            "report", &report,
        )?))
    }
}
