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
//! One [`Engine`] per page: its device lives as long as the page (it is leaked, so the
//! decoder can borrow it for `'static`), and one generation or benchmark runs at a time.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::path::Path;

use js_sys::{Function, Reflect, Uint8Array};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::bench::{self, BenchOptions, Report, Suite, report::Environment};
use crate::gpu::Gpu;
use crate::model::Config;
use crate::model::generate::{
    DEFAULT_MAX_CHUNK, GenerateOptions, Utf8Stream, encode_text, generate_async,
};
use crate::model::gpu::GpuDecoder;
use crate::model::weights::{CONFIG_FILE, Model, WEIGHTS_FILE};
use crate::ops::attention::KvFormat;
use crate::ops::sample::SamplingParams;

/// A model on the GPU, ready to generate.
struct Loaded {
    info: ModelInfo,
    decoder: GpuDecoder<'static>,
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
    context: usize,
    download_bytes: usize,
}

/// Generation settings as the page sends them (JSON).
#[derive(Clone, Debug, Deserialize)]
struct WebGenerateOptions {
    max_tokens: usize,
    #[serde(flatten)]
    sampling: SamplingParams,
    /// Most decode steps per GPU submission (default: the native default).
    #[serde(default)]
    max_chunk: Option<usize>,
}

/// What `generate` resolves to (JSON): the tokens, the text and the stats.
#[derive(Serialize)]
struct WebGeneration<'a> {
    tokens: &'a [u32],
    text: String,
    stats: &'a crate::model::generate::GenerationStats,
}

/// The engine the page drives.
#[wasm_bindgen]
pub struct Engine {
    gpu: &'static Gpu,
    loaded: RefCell<Option<Loaded>>,
    busy: Cell<bool>,
    stop: Cell<bool>,
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

#[wasm_bindgen]
impl Engine {
    /// Opens the browser's WebGPU adapter. Rejects with a message saying what is missing
    /// when the browser has none. `label` names the adapter where wgpu cannot (the page
    /// passes the vendor and architecture of `GPUAdapter.info`).
    pub async fn open(label: Option<String>) -> Result<Engine, JsError> {
        let mut gpu = Gpu::browser().await?;
        if let Some(label) = label.filter(|l| !l.trim().is_empty()) {
            gpu.set_label(label.trim());
        }
        Ok(Engine {
            gpu: Box::leak(Box::new(gpu)),
            loaded: RefCell::new(None),
            busy: Cell::new(false),
            stop: Cell::new(false),
        })
    }

    /// The adapter (name, backend, features, limits), as JSON: the same summary as
    /// `walsh adapters --json`.
    pub fn adapter(&self) -> Result<String, JsError> {
        to_json(self.gpu.summary())
    }

    /// walsh's version and the commit this build came from, when known.
    pub fn version() -> String {
        match option_env!("WALSH_GIT_COMMIT") {
            Some(commit) => format!("{} ({commit})", env!("CARGO_PKG_VERSION")),
            None => env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn start(&self) -> Result<Busy<'_>, JsError> {
        if self.busy.replace(true) {
            return Err(error("walsh is busy with another generation or benchmark"));
        }
        self.stop.set(false);
        Ok(Busy(&self.busy))
    }

    /// Downloads `base_url/config.json` and `base_url/model.safetensors`, checks them like
    /// the native loader, and uploads the weights. `progress(received_bytes, total_bytes
    /// or null)` is called as the weights arrive. Resolves to the model's description
    /// (JSON). The previous model is released first.
    pub async fn load_model(
        &self,
        base_url: String,
        progress: Function,
    ) -> Result<String, JsError> {
        let _busy = self.start()?;
        let base = base_url.trim_end_matches('/');
        let config_url = format!("{base}/{CONFIG_FILE}");
        let weights_url = format!("{base}/{WEIGHTS_FILE}");
        let config_bytes = fetch(&config_url, None).await?;
        let text = String::from_utf8(config_bytes)
            .map_err(|_| error(format!("{config_url} is not UTF-8 text")))?;
        let config = Config::from_json(Path::new(&config_url), &text)?;
        let bytes = fetch(&weights_url, Some(&progress)).await?;
        let model = Model::from_safetensors(Path::new(base), config, &bytes)?;
        // Free the old model's buffers before allocating the new one's.
        self.loaded.borrow_mut().take();
        let c = &model.config;
        let info = ModelInfo {
            url: base.to_string(),
            variant: c.variant(),
            params: model.parameter_count(),
            attention_params: model.attention_parameter_count(),
            hidden_size: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            context: c.max_position_embeddings,
            download_bytes: bytes.len() + text.len(),
        };
        let context = c.max_position_embeddings;
        let decoder = GpuDecoder::new(self.gpu, &model, 1, context, KvFormat::default())?;
        let json = to_json(&info)?;
        *self.loaded.borrow_mut() = Some(Loaded { info, decoder });
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

    /// Generates after `prompt` (bytes of UTF-8 text) with `options` (JSON: `max_tokens`,
    /// `temperature`, `top_k`, `top_p`, `seed`), calling `on_token(text, index, token)` as
    /// each token arrives (`text` is empty while a multi-byte character is incomplete).
    /// Resolves to `{tokens, text, stats}` (JSON). [`Engine::stop`] ends it early.
    pub async fn generate(
        &self,
        prompt: String,
        options: String,
        on_token: Function,
    ) -> Result<String, JsError> {
        let _busy = self.start()?;
        let options: WebGenerateOptions = serde_json::from_str(&options)
            .map_err(|e| error(format!("generation options: {e}")))?;
        let options = GenerateOptions {
            max_tokens: options.max_tokens,
            sampling: options.sampling,
            max_chunk: options.max_chunk.unwrap_or(DEFAULT_MAX_CHUNK),
        };
        let mut loaded = self
            .loaded
            .borrow_mut()
            .take()
            .ok_or_else(|| error("no model is loaded"))?;
        let mut stream = Utf8Stream::default();
        let mut text = String::new();
        let mut callback_error = None;
        let result = generate_async(
            &mut loaded.decoder,
            &[encode_text(&prompt)],
            &options,
            |ev| {
                let piece = stream.push(ev.token);
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
            },
        )
        .await;
        *self.loaded.borrow_mut() = Some(loaded);
        if let Some(message) = callback_error {
            return Err(error(format!("the on_token callback threw: {message}")));
        }
        let generation = result?;
        text.push_str(&stream.finish());
        to_json(&WebGeneration {
            tokens: &generation.tokens[0],
            text,
            stats: &generation.stats,
        })
    }

    /// Asks the running generation or benchmark to stop after the current step.
    pub fn stop(&self) {
        self.stop.set(true);
    }

    /// GPU memory held now and at peak, by category (JSON).
    pub fn memory(&self) -> Result<String, JsError> {
        to_json(&self.gpu.memory().report())
    }

    /// Runs benchmark suites (comma-separated: `kernels`, `decoder`, `paper`), `quick` for
    /// small sizes, calling `progress(what, done, total)` between cases. Resolves to the
    /// report (JSON, the schema of `walsh bench --out`).
    pub async fn bench(
        &self,
        suites: String,
        quick: bool,
        progress: Function,
    ) -> Result<String, JsError> {
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
        let mut options = BenchOptions::new(suites, quick);
        // Software WebGPU (SwiftShader) and phones: keep the sizes within a few minutes
        // (a 16384-wide GEMM alone is 137 GFLOP).
        options.max_d_model = options.max_d_model.min(1024);
        options.max_context = options.max_context.min(512);
        options.max_kernel_n = options.max_kernel_n.min(4096);
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
            self.gpu,
            &options,
            Environment::browser(&user_agent),
            &mut report_progress,
            &|| stop.get(),
        )
        .await?;
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

/// Downloads `url`, calling `progress(received, total or null)` per chunk.
async fn fetch(url: &str, progress: Option<&Function>) -> Result<Vec<u8>, JsError> {
    let fail = |e: JsValue| error(format!("downloading {url}: {}", js_message(&e)));
    let window = web_sys::window().ok_or_else(|| error("walsh runs in a browser window"))?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(fail)?
        .dyn_into()
        .map_err(fail)?;
    if !response.ok() {
        return Err(error(format!(
            "downloading {url}: HTTP {} {}",
            response.status(),
            response.status_text()
        )));
    }
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|s| s.parse::<f64>().ok());
    let body = response
        .body()
        .ok_or_else(|| error(format!("downloading {url}: the response has no body")))?;
    let reader: web_sys::ReadableStreamDefaultReader =
        body.get_reader().dyn_into().map_err(|e| fail(e.into()))?;
    let mut out = Vec::with_capacity(total.unwrap_or(0.0) as usize);
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(fail)?;
        let done = Reflect::get(&chunk, &"done".into())
            .map_err(fail)?
            .as_bool()
            .unwrap_or(true);
        if done {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(fail)?
            .dyn_into()
            .map_err(fail)?;
        out.extend(value.to_vec());
        if let Some(p) = progress {
            let total = total.map_or(JsValue::NULL, JsValue::from);
            let _ = p.call2(&JsValue::NULL, &JsValue::from(out.len() as f64), &total);
        }
    }
    Ok(out)
}
