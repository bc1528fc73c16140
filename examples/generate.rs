//! Greedy generation with a trained Hadamard-projection model, streamed token by token
//! from the GPU decoder, then checked against the CPU reference decoder: greedy tokens are
//! identical on every device (walsh's invariant).
//!
//! ```text
//! cargo run --example generate                          # models/shakespeare-hadamard
//! cargo run --example generate -- models/shakespeare-hadamard-qmlp --adapter gl
//! ```
//!
//! Exits 0 when the GPU's tokens equal the CPU's, 1 when they differ or the model does
//! not load, 77 (the "skipped" code of automake and meson) when there is no adapter.

use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use walsh::gpu::{AdapterSelector, Gpu};
use walsh::model::generate::{
    CpuBatch, GenerateOptions, Generation, Utf8Stream, encode_text, generate,
};
use walsh::model::gpu::GpuDecoder;
use walsh::model::weights::Model;
use walsh::ops::attention::KvFormat;
use walsh::ops::sample::SamplingParams;

const PROMPT: &str = "ROMEO.";
/// New tokens (bytes: the models are byte-level).
const TOKENS: usize = 32;

fn main() -> ExitCode {
    let (model_dir, adapter) = args();
    let selector: AdapterSelector = match adapter.parse() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // config.json + model.safetensors.
    let model = match Model::load(&model_dir) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let gpu = match Gpu::new(&selector) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("generate: no adapter to run on: {e}");
            return ExitCode::from(77);
        }
    };

    // One sequence over the model's whole context, with an f16 KV cache (the default).
    let context = model.config.max_position_embeddings;
    let kv = KvFormat::F16;
    let prompts = vec![encode_text(PROMPT)];
    let options = GenerateOptions::new(TOKENS, SamplingParams::greedy());

    // The GPU decoder: prefill, then decode steps the GPU chains without the host,
    // streaming each token to the callback (which could stop the run with Break).
    let mut decoder = match GpuDecoder::new(&gpu, &model, 1, context, kv) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    print!("[{}] {PROMPT}", gpu.describe());
    let mut text = Utf8Stream::default();
    let on_gpu = generate(&mut decoder, &prompts, &options, |event| {
        print!("{}", text.push(event.token));
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    });
    println!("{}", text.finish());
    let on_gpu: Generation = match on_gpu {
        Ok(g) => g,
        Err(e) => return fail(e),
    };

    // The same generation on the CPU reference decoder.
    let mut reference = match CpuBatch::new(&model, 1, context, kv) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let on_cpu = match generate(&mut reference, &prompts, &options, |_| {
        ControlFlow::Continue(())
    }) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };

    let s = &on_gpu.stats;
    println!(
        "{} tokens, decode {:.1} tok/s, {:.1} dispatches per token",
        s.generated_tokens, s.decode_tokens_per_s, s.dispatches_per_token
    );
    if on_gpu.tokens == on_cpu.tokens {
        println!("greedy tokens identical on the GPU and the CPU reference");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "generate: the GPU's tokens differ from the CPU's\n  gpu {:?}\n  cpu {:?}",
            on_gpu.tokens[0], on_cpu.tokens[0]
        );
        ExitCode::FAILURE
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("generate: {e}");
    ExitCode::FAILURE
}

/// The model directory (the first argument, default the shipped Shakespeare model) and
/// the adapter (`--adapter X`, else `WALSH_ADAPTER`, else the default).
fn args() -> (PathBuf, String) {
    let mut model = None;
    let mut adapter = std::env::var("WALSH_ADAPTER").unwrap_or_default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--adapter" {
            adapter = args.next().unwrap_or_default();
        } else if let Some(v) = a.strip_prefix("--adapter=") {
            adapter = v.to_string();
        } else {
            model = Some(PathBuf::from(a));
        }
    }
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shakespeare-hadamard");
    (model.unwrap_or_else(|| default.into()), adapter)
}
