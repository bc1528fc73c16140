//! The shipped checkpoints in `models/`: walsh's eval agrees with the trainer's own loss
//! on held-out text, on the CPU and on every software adapter, and the greedy text of the
//! default model and of the residual-MLP query model is pinned (golden) on all of them,
//! whichever decode GEMV the adapter's tuning picks.
//!
//! `shakespeare-hadamard-q4` is the default model quantized: checked byte for byte against
//! quantizing it again (its held-out loss and greedy text then follow from the quantizer's
//! own tests and the browser test, without another slow pass here).
//!
//! The trainer's figures are in `models/<name>/heldout_eval.json`, written by
//! `walsh-train eval --json` on the first [`EVAL_BYTES`] bytes of
//! `models/shakespeare-heldout.txt` (see each model's README for the command).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use walsh::blocks::QuantFormat;
use walsh::gpu::{AdapterSelector, Gpu, Tuning};
use walsh::model::eval::evaluate;
use walsh::model::generate::{CpuBatch, Decoder, GenerateOptions, generate};
use walsh::model::gpu::GpuDecoder;
use walsh::model::init::write_files;
use walsh::model::quant::quantize_model;
use walsh::model::weights::Model;
use walsh::ops::attention::KvFormat;
use walsh::ops::matmul::Kernel;
use walsh::ops::sample::SamplingParams;

const MODELS: [&str; 4] = [
    "shakespeare-hadamard",
    "shakespeare-dense",
    "shakespeare-hadamard-qid",
    "shakespeare-hadamard-qmlp",
];

/// Models with a `golden.txt`: the default one, and the one whose query path (q_down,
/// SiLU, q_up) no other golden text runs.
const GOLDEN: [&str; 2] = ["shakespeare-hadamard", "shakespeare-hadamard-qmlp"];

/// Bytes of the held-out slice the automated comparison scores (the full slice takes
/// minutes per device on software adapters; the model cards report it).
const EVAL_BYTES: usize = 2048;

/// The bound on |walsh eval - trainer eval|, in nats/byte.
const AGREEMENT: f64 = 0.002;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// One device per test backend; in CI a missing one fails.
fn gpus() -> Vec<Gpu> {
    let wanted = std::env::var("WALSH_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".into());
    let mut out = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let selector: AdapterSelector = name.parse().unwrap();
        match Gpu::new(&selector) {
            Ok(g) => out.push(g),
            Err(e) if in_ci() => panic!("CI: no {name} adapter: {e}"),
            Err(e) => eprintln!("skipping {name}: {e}"),
        }
    }
    out
}

fn load(name: &str) -> Model {
    let dir = root().join("models").join(name);
    Model::load(&dir).unwrap_or_else(|e| panic!("shipped model {name}: {e}"))
}

fn heldout() -> Vec<u32> {
    let text = std::fs::read(root().join("models/shakespeare-heldout.txt")).unwrap();
    text[..EVAL_BYTES].iter().map(|&b| b as u32).collect()
}

fn trainer_nats(name: &str) -> f64 {
    let path = root().join("models").join(name).join("heldout_eval.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Every byte but the first is scored.
    let scored = v["bytes_scored"].as_u64();
    assert_eq!(
        scored,
        Some(EVAL_BYTES as u64 - 1),
        "{}: bytes scored",
        path.display()
    );
    v["nats_per_byte"].as_f64().unwrap()
}

#[test]
fn walsh_eval_agrees_with_the_trainer_on_every_shipped_model() {
    let tokens = heldout();
    let gpus = gpus();
    for name in MODELS {
        let model = load(name);
        let want = trainer_nats(name);
        let context = model.config.max_position_embeddings;
        let mut decoders: Vec<Box<dyn Decoder + '_>> = vec![Box::new(
            CpuBatch::new(&model, 1, context, KvFormat::default()).unwrap(),
        )];
        for gpu in &gpus {
            decoders.push(Box::new(
                GpuDecoder::new(gpu, &model, 1, context, KvFormat::default()).unwrap(),
            ));
        }
        for dec in &mut decoders {
            let got = evaluate(dec.as_mut(), &tokens, |_, _| {}).unwrap();
            assert!(
                (got.nats_per_byte - want).abs() <= AGREEMENT,
                "{name} on {}: walsh {} vs trainer {want} nats/byte",
                got.device,
                got.nats_per_byte
            );
        }
    }
}

#[test]
fn greedy_text_is_golden_on_every_device() {
    let gpus = gpus();
    for name in GOLDEN {
        greedy_text_is_golden(name, &gpus);
    }
}

fn greedy_text_is_golden(name: &str, gpus: &[Gpu]) {
    let model = load(name);
    let golden_path = root().join("models").join(name).join("golden.txt");
    let golden = std::fs::read_to_string(&golden_path).unwrap();
    let (prompt, _) = golden
        .split_once('\n')
        .expect("golden.txt: prompt line, then the text");
    let prompts = vec![prompt.bytes().map(u32::from).collect::<Vec<u32>>()];
    let options = GenerateOptions::new(64, SamplingParams::greedy());
    let text = |dec: &mut dyn Decoder| -> String {
        let g = generate(dec, &prompts, &options, |_| ControlFlow::Continue(())).unwrap();
        let bytes: Vec<u8> = g.tokens[0].iter().map(|&t| t as u8).collect();
        format!("{prompt}\n{}", String::from_utf8_lossy(&bytes))
    };
    let context = model.config.max_position_embeddings;
    let cpu = text(&mut CpuBatch::new(&model, 1, context, KvFormat::default()).unwrap());
    assert_eq!(
        cpu,
        golden,
        "CPU greedy text differs from {}",
        golden_path.display()
    );
    for gpu in gpus {
        // The kernels' own choice, then each decode GEMV the tuner may pick (`walsh tune`
        // times them and keeps the fastest, which differs by adapter and run): the text
        // must not depend on which wins.
        let mut choices = vec![None];
        choices.extend(
            Kernel::GEMVS
                .into_iter()
                .filter(|k| *k != Kernel::GemvSubgroup || gpu.features().subgroup)
                .map(Some),
        );
        for choice in choices {
            let mut tuning = Tuning::default();
            if let Some(k) = choice {
                for format in ["f32", "f16", "q8", "q4"] {
                    tuning.gemv.insert(format.into(), k.name().into());
                }
            }
            gpu.set_tuning(tuning);
            let decoder = GpuDecoder::new(gpu, &model, 1, context, KvFormat::default());
            let got = text(&mut decoder.unwrap());
            let kernel = choice.map_or("untuned", Kernel::name);
            assert_eq!(
                got,
                golden,
                "{name}: greedy text on {} ({kernel})",
                gpu.describe()
            );
        }
        gpu.set_tuning(Tuning::default());
    }
}

#[test]
fn the_q4_model_is_the_default_model_quantized_byte_for_byte() {
    // What `walsh quantize --model models/shakespeare-hadamard --weights q4` writes.
    let (config, tensors, summary) =
        quantize_model(&load("shakespeare-hadamard"), QuantFormat::Q4).unwrap();
    assert_eq!(summary.matrices, 4 * 6); // q, k, v, gate, up, down of 4 layers
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &config, &tensors).unwrap();
    for file in ["config.json", "model.safetensors"] {
        let shipped = root().join("models/shakespeare-hadamard-q4").join(file);
        assert!(
            std::fs::read(dir.path().join(file)).unwrap() == std::fs::read(&shipped).unwrap(),
            "{} differs from quantizing models/shakespeare-hadamard again",
            shipped.display()
        );
    }
    // And it loads, as the packed q4 model the GPU decoder reads.
    let q4 = load("shakespeare-hadamard-q4");
    let k = &q4.weights.layers[0].k_proj;
    assert_eq!(k.format(), walsh::ops::WeightFormat::Q4);
}
