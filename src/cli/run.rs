//! `walsh generate`, `walsh eval`, `walsh profile` and `walsh init-model`.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use walsh::blocks::QuantFormat;
use walsh::limits;
use walsh::model::eval::evaluate;
use walsh::model::fit::{fit_prompt, prompt_notice};
use walsh::model::generate::{
    CpuBatch, DEFAULT_MAX_CHUNK, Decoder, GenerateOptions, Generation, generate,
};
use walsh::model::gguf::{GgmlType, GgufWeights, write_gguf};
use walsh::model::gpu::GpuDecoder;
use walsh::model::init::{random_model, write_random_model};
use walsh::model::sizes::{self, Placement};
use walsh::model::tokens;
use walsh::model::weights::Model;
use walsh::model::{AttnOutput, Config, Query};
use walsh::ops::WeightFormat;
use walsh::ops::attention::KvFormat;
use walsh::ops::sample::SamplingParams;
use walsh::tokenizer::{Tokenizer, TokenizerKind};

/// The model `walsh` runs when none is named.
pub const DEFAULT_MODEL: &str = "models/shakespeare-hadamard";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    Gpu,
    Cpu,
}

impl Device {
    fn placement(self, kv: KvFormat) -> Placement {
        match self {
            Device::Gpu => Placement::Gpu(kv),
            Device::Cpu => Placement::Cpu,
        }
    }
}

/// Loads `dir`, or, when no model was named and the default is not there, a small
/// random-weight Hadamard model built in memory (so `walsh` runs on a fresh checkout).
pub fn load_model(dir: Option<&Path>) -> Result<Model> {
    if let Some(dir) = dir {
        return Model::load(dir).with_context(|| format!("loading model {}", dir.display()));
    }
    let default = Path::new(DEFAULT_MODEL);
    if default.join("config.json").exists() {
        return Model::load(default).with_context(|| format!("loading model {DEFAULT_MODEL}"));
    }
    eprintln!(
        "walsh: {DEFAULT_MODEL} is not here: using a random-weight Hadamard model \
         (its text is noise; pass --model DIR for a trained one)"
    );
    Ok(random_model(&demo_config(), 0, WeightFormat::F32)?)
}

/// [`load_model`] and its tokenizer (the directory's `tokenizer.json`, or byte-level);
/// a GGUF file is read once for both (a real model's file is gigabytes).
pub fn load_model_and_tokenizer(path: Option<&Path>) -> Result<(Model, Tokenizer)> {
    if let Some(path) = path.filter(|p| walsh::model::gguf_load::is_gguf_file(p)) {
        return walsh::model::gguf_load::load_gguf(path)
            .with_context(|| format!("loading model {}", path.display()));
    }
    let model = load_model(path)?;
    let tokenizer = tokens::load_tokenizer(&model.dir, &model.config)?;
    Ok((model, tokenizer))
}

fn demo_config() -> Config {
    Config {
        hidden_size: 256,
        num_hidden_layers: 4,
        num_attention_heads: 8,
        intermediate_size: 768,
        vocab_size: 256,
        max_position_embeddings: 256,
        attn_output: AttnOutput::Hadamard,
        ..Default::default()
    }
}

/// Runs `f` with a decoder on the chosen device.
fn with_decoder<T>(
    model: &Model,
    device: Device,
    adapter: &str,
    seqs: usize,
    context: usize,
    kv: KvFormat,
    f: impl FnOnce(&mut dyn Decoder) -> Result<T>,
) -> Result<T> {
    match device {
        Device::Cpu => f(&mut CpuBatch::new(model, seqs, context, kv)?),
        Device::Gpu => {
            let gpu = super::tune::open_gpu(adapter, model)?;
            f(&mut gpu_decoder(&gpu, model, seqs, context, kv)?)
        }
    }
}

/// [`GpuDecoder::new`], its decode step unfused where `WALSH_FUSE=off` (or `0`) asks: to
/// measure what the fused layer gives on an adapter (`generate`, `eval`, `profile`).
fn gpu_decoder(
    gpu: &walsh::gpu::Gpu,
    model: &Model,
    seqs: usize,
    context: usize,
    kv: KvFormat,
) -> Result<GpuDecoder> {
    let mut decoder = GpuDecoder::new(gpu, model, seqs, context, kv)?;
    match std::env::var("WALSH_FUSE").ok().filter(|v| !v.is_empty()) {
        None => {}
        Some(v) if v.eq_ignore_ascii_case("off") || v == "0" => decoder.set_fusion(false),
        Some(v) if v.eq_ignore_ascii_case("on") || v == "1" => {}
        Some(v) => anyhow::bail!("WALSH_FUSE={v}: expected on or off"),
    }
    Ok(decoder)
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model directory (config.json + model.safetensors). Default: models/shakespeare-hadamard.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt text; repeat to generate for several prompts in one batch.
    #[arg(long, default_value = "ROMEO.")]
    pub prompt: Vec<String>,
    /// New tokens (bytes) per prompt.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this probability mass (1: all).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "gpu")]
    pub device: Device,
    /// KV cache format: f16 (half of f32's memory), f32, q8 or q4 (8- or 4-bit levels with
    /// a scale per position and head), q8r or q4r (q8 or q4 of Hadamard-rotated heads,
    /// head_dim a Walsh–Hadamard size: 2^k or m x 2^k). Layout: docs/kv-cache.md.
    #[arg(long, default_value = "f16")]
    pub kv_cache: KvFormat,
    /// Most decode steps the GPU runs per submission before the host reads their tokens
    /// (1: a readback per token). The text does not depend on it.
    #[arg(long, default_value_t = DEFAULT_MAX_CHUNK)]
    pub max_chunk: usize,
    /// Print the tokens and stats as JSON instead of streaming text: each sequence's
    /// tokens up to its first end-of-generation token (not included), and `finish`,
    /// "stop" where one ended it and "length" where max-tokens did.
    #[arg(long)]
    pub json: bool,
}

impl Default for GenerateArgs {
    fn default() -> Self {
        Self {
            model: None,
            prompt: vec!["ROMEO.".into()],
            max_tokens: 200,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
            device: Device::Gpu,
            kv_cache: KvFormat::default(),
            max_chunk: DEFAULT_MAX_CHUNK,
            json: false,
        }
    }
}

pub fn generate_cmd(args: &GenerateArgs, adapter: &str) -> Result<()> {
    let (model, tokenizer) = load_model_and_tokenizer(args.model.as_deref())?;
    // A rotated cache needs a Walsh–Hadamard head_dim: said before any work.
    args.kv_cache.check_head_dim(model.config.head_dim())?;
    let context = model.config.max_position_embeddings;
    // A prompt longer than the context keeps its last bytes that fit, as generation does
    // once the context fills.
    let prompts: Vec<Vec<u32>> = args
        .prompt
        .iter()
        .map(|p| {
            let tokens = tokenizer.encode(p, true);
            let (kept, dropped) = fit_prompt(&tokens, context);
            if dropped > 0 {
                eprintln!("walsh: {}", prompt_notice(tokens.len(), context));
            }
            kept.to_vec()
        })
        .collect();
    // The decoder holds a KV cache per sequence over the whole context.
    sizes::decoder_memory(
        &model.config,
        prompts.len(),
        context,
        args.device.placement(args.kv_cache),
    )?;
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
        max_chunk: args.max_chunk,
    };
    let single = prompts.len() == 1 && !args.json;
    let generation = with_decoder(
        &model,
        args.device,
        adapter,
        prompts.len(),
        context,
        args.kv_cache,
        |dec| {
            if single {
                // Stream the one sequence as it is generated.
                print!("{}", args.prompt[0]);
                let mut text = tokenizer.continuation(false);
                let mut out = std::io::stdout().lock();
                // An end-of-generation token (EOS, EOT) ends the text.
                let g = generate(dec, &prompts, &options, |ev| {
                    if tokenizer.is_eog(ev.token) {
                        return ControlFlow::Break(());
                    }
                    let _ = write!(out, "{}", text.push(ev.token).unwrap_or_default());
                    let _ = out.flush();
                    ControlFlow::Continue(())
                })?;
                println!("{}", text.finish());
                Ok(g)
            } else {
                // Each sequence's text ends at its first end-of-generation token; the
                // batch stops once every sequence has one.
                let mut ended = vec![false; prompts.len()];
                let g = generate(dec, &prompts, &options, |ev| {
                    ended[ev.seq] |= tokenizer.is_eog(ev.token);
                    if ended.iter().all(|&e| e) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })?;
                let texts: Vec<&[u32]> = g
                    .tokens
                    .iter()
                    .map(|t| until_eog(t, |id| tokenizer.is_eog(id)))
                    .collect();
                if args.json {
                    // Weights and KV cache a decode step reads per token (a model of the
                    // traffic, see model::sizes::decode_bytes_per_token).
                    let seqs = prompts.len().max(1);
                    let prompt_len = prompts.iter().map(Vec::len).sum::<usize>() / seqs;
                    let bytes_read_per_token = sizes::decode_bytes_per_token(
                        &model,
                        seqs,
                        prompt_len,
                        g.stats.generated_tokens / seqs,
                        args.kv_cache,
                    );
                    let finish: Vec<&str> = ended
                        .iter()
                        .map(|&e| if e { "stop" } else { "length" })
                        .collect();
                    let json = serde_json::json!({
                        "tokens": &texts,
                        "finish": finish,
                        "stats": &g.stats,
                        "bytes_read_per_token": bytes_read_per_token,
                    });
                    println!("{json}");
                    return Ok(g);
                }
                for (prompt, tokens) in args.prompt.iter().zip(&texts) {
                    let mut text = tokenizer.continuation(false);
                    let mut out = String::new();
                    for &t in tokens.iter() {
                        out += &text.push(t).unwrap_or_default();
                    }
                    out += &text.finish();
                    println!("--- {prompt:?}\n{prompt}{out}");
                }
                Ok(g)
            }
        },
    )?;
    eprintln!("{}", summary(&generation));
    Ok(())
}

/// A sequence's tokens before its first end-of-generation token (all of them without one).
fn until_eog(tokens: &[u32], is_eog: impl Fn(u32) -> bool) -> &[u32] {
    let end = tokens
        .iter()
        .position(|&t| is_eog(t))
        .unwrap_or(tokens.len());
    &tokens[..end]
}

/// The one-line summary: device, the kernels' build time, prefill and decode speed, peak
/// GPU memory.
pub fn summary(g: &Generation) -> String {
    let s = &g.stats;
    let prepared = if s.prepare_seconds > 0.0 {
        format!("kernels built in {:.2} s, ", s.prepare_seconds)
    } else {
        String::new()
    };
    let memory = s.memory.as_ref().map_or(String::new(), |m| {
        format!(
            ", peak GPU memory {:.1} MiB",
            m.peak_bytes as f64 / (1 << 20) as f64
        )
    });
    format!(
        "[{}] {} sequence(s): {prepared}prefill {} tokens at {:.1} tok/s, decode {} tokens at {:.1} tok/s{memory} ({} KV cache){}",
        s.device,
        s.sequences,
        s.prompt_tokens,
        s.prefill_tokens_per_s,
        s.generated_tokens,
        s.decode_tokens_per_s,
        s.kv_cache.name(),
        if s.stopped { " (stopped)" } else { "" }
    )
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Text file to score, read as bytes.
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, value_enum, default_value = "gpu")]
    pub device: Device,
    /// KV cache format: f16 (half of f32's memory), f32, q8 or q4 (8- or 4-bit levels with
    /// a scale per position and head), q8r or q4r (q8 or q4 of Hadamard-rotated heads,
    /// head_dim a Walsh–Hadamard size: 2^k or m x 2^k). Layout: docs/kv-cache.md.
    #[arg(long, default_value = "f16")]
    pub kv_cache: KvFormat,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// Model directory (config.json + model.safetensors). Default: models/shakespeare-hadamard.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The prompt prefilled before the profiled decode step.
    #[arg(long, default_value = "ROMEO.")]
    pub prompt: String,
    /// KV cache format (see `walsh generate --help`).
    #[arg(long, default_value = "f16")]
    pub kv_cache: KvFormat,
    /// Times each step is replayed; the report gives medians.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Sequences in the decode step, one row each: a comma-separated list profiles each
    /// and adds a table of how the step grows with its rows (what batching can gain).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub rows: Vec<usize>,
    /// Print the profile as JSON instead of a table (an array with several `--rows`).
    #[arg(long)]
    pub json: bool,
}

/// `walsh profile`: every dispatch of a decode step and a prefill, timed.
pub fn profile_cmd(args: &ProfileArgs, adapter: &str) -> Result<()> {
    let (model, tokenizer) = load_model_and_tokenizer(args.model.as_deref())?;
    let prompt = tokenizer.encode(&args.prompt, true);
    if prompt.is_empty() {
        bail!("the prompt is empty: the profile prefills it, then decodes one token");
    }
    let context = model.config.max_position_embeddings;
    if prompt.len() >= context {
        bail!(
            "a prompt of {} tokens leaves no room to decode in the model's context of {context}",
            prompt.len()
        );
    }
    let most = args.rows.iter().copied().max().unwrap_or(1);
    if args.rows.contains(&0) {
        bail!("--rows takes sequence counts of at least 1");
    }
    sizes::decoder_memory(
        &model.config,
        most,
        context,
        Device::Gpu.placement(args.kv_cache),
    )?;
    let gpu = super::tune::open_gpu(adapter, &model)?;
    let mut decoder = gpu_decoder(&gpu, &model, most, context, args.kv_cache)?;
    let mut profiles = Vec::new();
    for &rows in &args.rows {
        profiles.push(pollster::block_on(decoder.profile(
            &prompt,
            rows,
            args.repeats,
        ))?);
    }
    match (args.json, profiles.as_slice()) {
        (true, [one]) => println!("{}", serde_json::to_string_pretty(one)?),
        (true, all) => println!("{}", serde_json::to_string_pretty(all)?),
        (false, all) => {
            for p in all {
                println!("{}", p.table());
            }
            if all.len() > 1 {
                print!("{}", walsh::model::profile::scaling_table(all));
            }
        }
    }
    Ok(())
}

pub fn eval_cmd(args: &EvalArgs, adapter: &str) -> Result<()> {
    let (model, tokenizer) = load_model_and_tokenizer(args.model.as_deref())?;
    // A rotated cache needs a Walsh–Hadamard head_dim: said before any work.
    args.kv_cache.check_head_dim(model.config.head_dim())?;
    let context = model.config.max_position_embeddings;
    sizes::decoder_memory(
        &model.config,
        1,
        context,
        args.device.placement(args.kv_cache),
    )?;
    sizes::eval_window(&model.config)?;
    if tokenizer.kind() != TokenizerKind::Byte {
        bail!(
            "walsh eval scores byte-level models (nats per byte); {} carries a tokenizer",
            model.dir.display()
        );
    }
    let bytes = limits::read_at_most(&args.text, limits::MAX_TEXT_BYTES, "a text to score")
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.text.display()))?;
    let tokens: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
    if let Some(&t) = tokens
        .iter()
        .find(|&&t| t as usize >= model.config.vocab_size)
    {
        bail!(
            "byte {t} is outside the model's vocabulary of {}",
            model.config.vocab_size
        );
    }
    let report = with_decoder(
        &model,
        args.device,
        adapter,
        1,
        context,
        args.kv_cache,
        |dec| {
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} windows, eta {eta}")
                    .expect("valid template"),
            );
            bar.set_message(format!("scoring {} bytes", tokens.len()));
            let report = evaluate(dec, &tokens, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            });
            bar.finish_and_clear();
            Ok(report?)
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {:.4} nats/byte, {:.4} bits/byte, perplexity {:.3} over {} bytes (context {}, {} KV cache, {})",
            args.text.display(),
            report.nats_per_byte,
            report.bits_per_byte,
            report.perplexity,
            report.bytes_scored,
            report.context,
            report.kv_cache.name(),
            report.device
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory to write config.json and model.safetensors into.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub hidden_size: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    /// Key/value heads (grouped-query attention, `num_key_value_heads`): must divide
    /// --heads; default --heads (no grouping).
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Feed-forward width; default 3 x hidden size.
    #[arg(long)]
    pub intermediate_size: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    #[arg(long, value_enum, default_value = "hadamard")]
    pub attn_output: AttnOutputArg,
    #[arg(long, value_enum, default_value = "dense")]
    pub query: QueryArg,
    #[arg(long, value_enum, default_value = "f16")]
    pub dtype: DtypeArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows of the embedding and the LM head (token ids 0..N). Default: the --tokenizer's
    /// size, or 256 (bytes).
    #[arg(long)]
    pub vocab: Option<usize>,
    /// A Hugging Face tokenizer.json for the model, copied into --out (with the
    /// tokenizer_config.json beside it, if there is one: BOS/EOS, chat template). Without
    /// it the model is byte-level.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Model directory to read (f16 or f32 weights).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Directory to write config.json and model.safetensors into.
    #[arg(long)]
    pub out: PathBuf,
    /// Block format of the layer matrices: q8 (int8) or q4 (4-bit), blocks of 32 with an
    /// f16 scale. The embedding and lm_head stay as stored.
    #[arg(long)]
    pub weights: QuantFormat,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The GGUF file to write (replaced if it exists).
    #[arg(long, value_name = "OUT.gguf")]
    pub gguf: PathBuf,
    /// Model directory to read. Every variant is written; llama.cpp runs the dense/dense
    /// ones (a Hadamard W_O or another query is in walsh's own keys and tensors, which
    /// walsh reads back and llama.cpp does not).
    #[arg(long)]
    pub model: PathBuf,
    /// Matrix type: f16, q8_0 or q4_0 (the layer matrices as `walsh quantize` makes them,
    /// in GGML blocks), or f32. The norms are F32; with q8_0/q4_0 the embedding and
    /// lm_head stay as stored.
    #[arg(long, default_value = "f16")]
    pub weights: GgufWeights,
    /// general.name; default: the model directory's name.
    #[arg(long)]
    pub name: Option<String>,
}

pub fn export_cmd(args: &ExportArgs) -> Result<()> {
    let model = load_model(Some(&args.model))?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "walsh".into())
    });
    let s = write_gguf(&model, &name, args.weights, &args.gguf)?;
    let blocks = s
        .tensors
        .iter()
        .filter(|(_, t)| matches!(t, GgmlType::Q8_0 | GgmlType::Q4_0))
        .count();
    let blocks = match s.weights {
        GgufWeights::Q8_0 | GgufWeights::Q4_0 => {
            format!(" ({blocks} in {} blocks)", s.weights.name().to_uppercase())
        }
        GgufWeights::F32 | GgufWeights::F16 => String::new(),
    };
    println!(
        "wrote {} (llama, {}): {} tensors{blocks}, {}",
        args.gguf.display(),
        s.weights,
        s.tensors.len(),
        limits::human_bytes(s.bytes as u128)
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AttnOutputArg {
    Dense,
    Hadamard,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum QueryArg {
    Dense,
    Identity,
    ResidualMlp,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    /// f16 weights, then the layer matrices quantized as `walsh quantize --weights q8`.
    Q8,
    /// As q8, in 4-bit blocks.
    Q4,
}

pub fn quantize_cmd(args: &QuantizeArgs) -> Result<()> {
    if args.out.join(walsh::model::weights::WEIGHTS_FILE).exists() {
        anyhow::bail!(
            "{} already holds a model: choose another --out",
            args.out.display()
        );
    }
    let model = Model::load(&args.model)?;
    let s = walsh::model::quant::write_quantized(&model, &args.out, args.weights)?;
    println!(
        "wrote {} ({}): {} matrices in {}, {} -> {} ({:.2}x)",
        args.out.display(),
        model.config.variant(),
        s.matrices,
        s.format,
        limits::human_bytes(s.bytes_before as u128),
        limits::human_bytes(s.bytes_after as u128),
        s.bytes_after as f64 / s.bytes_before.max(1) as f64
    );
    Ok(())
}

pub fn init_cmd(args: &InitArgs) -> Result<()> {
    // The tokenizer first: its size is the default vocabulary.
    let tokenizer = match &args.tokenizer {
        None => None,
        Some(path) => {
            let json = limits::read_at_most(path, tokens::MAX_TOKENIZER_BYTES, "a tokenizer")
                .with_context(|| format!("reading {}", path.display()))?;
            let companion = path.with_file_name(tokens::TOKENIZER_CONFIG_FILE);
            let companion = companion.is_file().then_some(companion);
            let config_json = match &companion {
                Some(c) => {
                    Some(std::fs::read(c).with_context(|| format!("reading {}", c.display()))?)
                }
                None => None,
            };
            let t = Tokenizer::from_hf_json(&json, config_json.as_deref())
                .with_context(|| format!("reading {}", path.display()))?;
            Some((t.vocab_size(), json, config_json))
        }
    };
    let vocab_size = args
        .vocab
        .or(tokenizer.as_ref().map(|t| t.0))
        .unwrap_or(256);
    if let Some((n, ..)) = &tokenizer
        && *n > vocab_size
    {
        bail!("--vocab {vocab_size} is smaller than the tokenizer's {n} tokens");
    }
    let config = Config {
        hidden_size: args.hidden_size,
        num_hidden_layers: args.layers,
        num_attention_heads: args.heads,
        // Written to config.json only when it groups heads: without --kv-heads (or with
        // --kv-heads equal to --heads) the file is what it always was.
        num_key_value_heads: args.kv_heads.filter(|&k| k != args.heads),
        intermediate_size: args.intermediate_size.unwrap_or(3 * args.hidden_size),
        vocab_size,
        max_position_embeddings: args.context,
        attn_output: match args.attn_output {
            AttnOutputArg::Dense => AttnOutput::Dense,
            AttnOutputArg::Hadamard => AttnOutput::Hadamard,
        },
        query: match args.query {
            QueryArg::Dense => Query::Dense,
            QueryArg::Identity => Query::Identity,
            QueryArg::ResidualMlp => Query::ResidualMlp,
        },
        ..Default::default()
    };
    config
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid model shape: {m}"))?;
    let limit = walsh::limits::random_parameter_limit(walsh::limits::available_memory());
    sizes::random_model_parameters(&config, limit)?;
    let (format, quantize) = match args.dtype {
        DtypeArg::F32 => (WeightFormat::F32, None),
        DtypeArg::F16 => (WeightFormat::F16, None),
        DtypeArg::Q8 => (WeightFormat::F16, Some(QuantFormat::Q8)),
        DtypeArg::Q4 => (WeightFormat::F16, Some(QuantFormat::Q4)),
    };
    write_random_model(&args.out, &config, format, args.seed)?;
    if let Some((_, json, config_json)) = &tokenizer {
        std::fs::write(args.out.join(tokens::TOKENIZER_FILE), json)?;
        if let Some(c) = config_json {
            std::fs::write(args.out.join(tokens::TOKENIZER_CONFIG_FILE), c)?;
        }
    }
    if let Some(q) = quantize {
        // The f16 file as written (rounded), then its matrices quantized in its place.
        let model = Model::load(&args.out)?;
        walsh::model::quant::write_quantized(&model, &args.out, q)?;
    }
    let model = Model::load(&args.out)?;
    println!(
        "wrote {} ({}): {} parameters, {} in attention",
        args.out.display(),
        config.variant(),
        model.parameter_count(),
        model.attention_parameter_count()
    );
    Ok(())
}
