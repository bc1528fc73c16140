//! The GPU decoder against the CPU reference decoder, for every variant, on both software
//! adapters; batched generation against one sequence at a time; eval on both devices.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::batch::{Batcher, Event, Finish, Request, RequestId};
use super::eval::evaluate;
use super::generate::{
    Chunk, CpuBatch, DEFAULT_MAX_CHUNK, Decoder, GenerateOptions, StepFuture, generate,
};
use super::gpu::GpuDecoder;
use super::init::random_model;
use super::weights::Model;
use super::{AttnOutput, Config, ModelError, Query};
use crate::gpu::testing::test_gpus;
use crate::ops::WeightFormat;
use crate::ops::attention::{KvError, KvFormat};
use crate::ops::sample::SamplingParams;

/// The KV cache of the generation tests: the default, f16. Tests that compare logits
/// within f32 rounding use f32 caches.
const KV: KvFormat = KvFormat::F16;

const VARIANTS: [(AttnOutput, Query); 6] = [
    (AttnOutput::Dense, Query::Dense),
    (AttnOutput::Dense, Query::Identity),
    (AttnOutput::Dense, Query::ResidualMlp),
    (AttnOutput::Hadamard, Query::Dense),
    (AttnOutput::Hadamard, Query::Identity),
    (AttnOutput::Hadamard, Query::ResidualMlp),
];

fn config(d: usize, attn_output: AttnOutput, query: Query) -> Config {
    Config {
        hidden_size: d,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 3 * d,
        vocab_size: 256,
        max_position_embeddings: 48,
        attn_output,
        query,
        ..Default::default()
    }
}

/// A random model; `f16` stores every matrix as half precision.
fn model(config: Config, seed: u64, f16: bool) -> Model {
    let format = if f16 {
        WeightFormat::F16
    } else {
        WeightFormat::F32
    };
    random_model(&config, seed, format).unwrap()
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 37 + seed * 11 + 3) % 256)
        .collect()
}

/// Max |a - b| over max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let peak = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let err = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x - y).abs() as f64));
    err / peak
}

/// The GPU computes in f32 like the CPU reference but sums in other orders, through two
/// layers and a final norm: 1e-4 of the largest logit is two orders above what we see
/// (about 1e-6) and far below the gaps between the top logits of these models.
const LOGIT_TOLERANCE: f64 = 1e-4;

/// Feeds `steps` to both decoders (a prefill, then decode steps) and checks each step's
/// logits within [`LOGIT_TOLERANCE`]; `what` names the case in failures.
fn assert_logits_match(cpu: &mut CpuBatch, dec: &mut GpuDecoder, steps: &[Vec<u32>], what: &str) {
    for (k, tokens) in steps.iter().enumerate() {
        let want = pollster::block_on(cpu.logits(&[(0, tokens)]))
            .unwrap()
            .remove(0);
        let got = dec.forward_logits(&[(0, tokens)]).unwrap().remove(0);
        let err = relative_error(&got, &want);
        assert!(
            err <= LOGIT_TOLERANCE,
            "{what} step {k} on {}: relative error {err:e}",
            dec.gpu().describe()
        );
    }
}

#[test]
fn gpu_logits_match_cpu_reference_for_every_variant() {
    for gpu in test_gpus() {
        for (i, (attn, query)) in VARIANTS.into_iter().enumerate() {
            // d = 64 (power of two) and 48 (12 x 4: the Paley path of the WHT).
            let d = if i % 2 == 0 { 64 } else { 48 };
            let m = model(config(d, attn, query), i as u64, i == 3);
            let mut cpu = CpuBatch::new(&m, 1, 32, KvFormat::F32).unwrap();
            let mut dec = GpuDecoder::new(&gpu, &m, 1, 32, KvFormat::F32).unwrap();
            // Prefill 11 tokens, then 3 decode steps.
            let p = prompt(11, i as u32);
            let mut steps: Vec<Vec<u32>> = vec![p];
            steps.extend((0..3).map(|k| vec![(k * 50 + 7) as u32]));
            assert_logits_match(
                &mut cpu,
                &mut dec,
                &steps,
                &format!("{attn:?}/{query:?} d={d}"),
            );
        }
    }
}

fn run(
    dec: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    tokens: usize,
    sampling: SamplingParams,
) -> Vec<Vec<u32>> {
    let options = GenerateOptions::new(tokens, sampling);
    generate(dec, prompts, &options, |_| ControlFlow::Continue(()))
        .unwrap()
        .tokens
}

/// `generate` prepares the decoder first (`Decoder::prepare`): every pipeline the prefill
/// and the decode chunks run is built then, none while they are timed.
#[test]
fn prepare_builds_every_pipeline_a_generation_runs() {
    for gpu in test_gpus() {
        for attn in [AttnOutput::Dense, AttnOutput::Hadamard] {
            let m = model(config(64, attn, Query::Dense), 5, true);
            let mut dec = GpuDecoder::new(&gpu, &m, 2, 32, KvFormat::F16).unwrap();
            let greedy = SamplingParams::greedy();
            dec.prepare(&[11, 5], &greedy).unwrap();
            let built = gpu.pipeline_keys().len();
            assert!(built > 10, "{attn:?}: {built} pipelines");
            // The generation's own steps, without generate's call to prepare.
            let prompts = [prompt(11, 1), prompt(5, 2)];
            let batch = [(0, &prompts[0][..]), (1, &prompts[1][..])];
            pollster::block_on(Decoder::step(&mut dec, &batch, &greedy, &[0.0, 0.0])).unwrap();
            for steps in [1, 2, 4] {
                let chunk =
                    Decoder::start_decode(&mut dec, &[0, 1], &greedy, &vec![0.0; 2 * steps])
                        .unwrap();
                pollster::block_on(Decoder::finish_decode(&mut dec, chunk)).unwrap();
            }
            let after: Vec<_> = gpu.pipeline_keys();
            assert_eq!(
                after.len(),
                built,
                "{attn:?}: built after prepare: {after:?}"
            );
            // Prompts past the context are refused.
            let err = dec.prepare(&[33], &greedy).unwrap_err();
            assert!(err.to_string().contains("1 to 32 tokens"), "{err}");
        }
    }
}

/// A server's warm-up (`Batcher::prepare`: a prompt of WARM_UP_PROMPT = 64 tokens) builds
/// every pipeline a lone request with a longer prompt runs, sampling at a temperature in
/// chunks of 8 steps.
#[test]
fn a_batcher_prepares_the_kernels_of_a_lone_request() {
    for gpu in test_gpus() {
        for attn in [AttnOutput::Dense, AttnOutput::Hadamard] {
            let mut c = config(64, attn, Query::Dense);
            c.max_position_embeddings = 80;
            let m = model(c, 7, true);
            let mut dec = GpuDecoder::new(&gpu, &m, 2, 80, KvFormat::F16).unwrap();
            let mut batcher = Batcher::new(2, 80, 8).unwrap();
            let before = gpu.pipeline_keys().len();
            batcher.prepare(&mut dec).unwrap();
            let built = gpu.pipeline_keys();
            assert!(built.len() > before, "{attn:?}: the warm-up built nothing");
            // Its kernels run many times: prefill attention on lavapipe and llvmpipe takes
            // attend_rows for the warm-up's 64 rows (a one-off generation, under 128 rows,
            // the decode tile).
            let rows_kernel = built.iter().any(|k| k.entry == "attend_rows");
            assert_eq!(rows_kernel, gpu.favours_registers(), "{}", gpu.describe());
            let request = Request {
                prompt: prompt(70, 3),
                max_tokens: 7,
                sampling: SamplingParams {
                    temperature: 0.8,
                    seed: 5,
                    ..SamplingParams::greedy()
                },
                stop: Vec::new(),
            };
            batcher.submit(request).unwrap();
            let mut tokens = 0;
            while !batcher.is_idle() {
                let events = pollster::block_on(batcher.round(&mut dec)).unwrap();
                tokens += events
                    .iter()
                    .filter(|e| matches!(e, Event::Token { .. }))
                    .count();
            }
            assert_eq!(tokens, 7, "{attn:?}");
            let new: Vec<_> = gpu
                .pipeline_keys()
                .into_iter()
                .filter(|k| !built.contains(k))
                .collect();
            assert!(new.is_empty(), "{attn:?}: built after the warm-up: {new:?}");
        }
    }
}

#[test]
fn greedy_generation_is_identical_on_gpu_and_cpu_for_every_variant() {
    let gpus = test_gpus();
    for (i, (attn, query)) in VARIANTS.into_iter().enumerate() {
        let m = model(config(64, attn, query), 5 + i as u64, i % 2 == 1);
        let prompts = vec![prompt(9, i as u32)];
        let mut cpu = CpuBatch::new(&m, 1, 48, KV).unwrap();
        let want = run(&mut cpu, &prompts, 24, SamplingParams::greedy());
        for gpu in &gpus {
            let mut dec = GpuDecoder::new(gpu, &m, 1, 48, KV).unwrap();
            let got = run(&mut dec, &prompts, 24, SamplingParams::greedy());
            assert_eq!(
                got,
                want,
                "{attn:?}/{query:?} greedy tokens on {}",
                gpu.describe()
            );
            // Attention split in key chunks of 8 (up to 5 per step), as a GPU splits
            // long contexts.
            dec.set_decode_chunk(8).unwrap();
            let got = run(&mut dec, &prompts, 24, SamplingParams::greedy());
            assert_eq!(
                got,
                want,
                "{attn:?}/{query:?} split decode on {}",
                gpu.describe()
            );
            // A server's choice: prefill by run time alone (on lavapipe and llvmpipe,
            // attend_rows for these 9 rows, where a one-off generation takes the decode tile).
            dec.set_many_runs(true);
            let got = run(&mut dec, &prompts, 24, SamplingParams::greedy());
            assert_eq!(
                got,
                want,
                "{attn:?}/{query:?} many runs on {}",
                gpu.describe()
            );
        }
    }
}

/// A started host-fed step (`Decoder::start_step`, as `generate` takes the prefill and a
/// context slide) is followed by decode chunks before its tokens are read: they continue
/// from its tokens on the GPU and give the tokens the awaited steps give on the CPU.
#[test]
fn chunks_started_before_a_started_step_is_read_continue_from_its_tokens() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 13, true);
    let prompts = vec![prompt(9, 4), prompt(3, 5)];
    let greedy = SamplingParams::greedy();
    let mut cpu = CpuBatch::new(&m, 2, 32, KV).unwrap();
    let want = run(&mut cpu, &prompts, 7, greedy);
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 32, KV).unwrap();
        let batch = [(0, &prompts[0][..]), (1, &prompts[1][..])];
        let step = Decoder::start_step(&mut dec, &batch, &[], &greedy, &[0.0; 2])
            .expect("the GPU decoder starts steps")
            .unwrap();
        let chunks = [2, 4].map(|steps| {
            Decoder::start_decode(&mut dec, &[0, 1], &greedy, &vec![0.0; 2 * steps]).unwrap()
        });
        let mut got = vec![Vec::new(); 2];
        for chunk in std::iter::once(step).chain(chunks) {
            let tokens = pollster::block_on(Decoder::finish_decode(&mut dec, chunk)).unwrap();
            for step in tokens.chunks(2) {
                got[0].push(step[0]);
                got[1].push(step[1]);
            }
        }
        assert_eq!(got, want, "{}", gpu.describe());
    }
}

/// A step started after a decode chunk the host has not read (`Decoder::start_step` with
/// `from_chunk`, as `generate` slides a full context) takes that chunk's last tokens on the
/// GPU: its tokens, and the next chunk's, are the CPU's for the same tokens given by the
/// host, also where the step needs more rows than the activations held (they are
/// reallocated, the chunk's tokens kept). Counts the chunk cannot give are refused.
#[test]
fn a_step_after_an_unread_chunk_takes_its_tokens_on_the_gpu() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 17, true);
    let prompts = [prompt(14, 4), prompt(3, 9)];
    let greedy = SamplingParams::greedy();
    let batch = [(0, &prompts[0][..]), (1, &prompts[1][..])];
    // Sequence 0 restarts from its last `keep` tokens, the chunk's 5 among them; sequence
    // 1 feeds the chunk's last token. 8 rows fit the prefill's activations (17 rows), 20
    // do not.
    for keep in [7, 19] {
        let mut cpu = CpuBatch::new(&m, 2, 32, KV).unwrap();
        let first = pollster::block_on(cpu.step(&batch, &greedy, &[0.0; 2])).unwrap();
        let Chunk::Ready(chunk) = cpu.start_decode(&[0, 1], &greedy, &[0.0; 10]).unwrap() else {
            unreachable!("the CPU computes chunks at once")
        };
        let mut history = prompts[0].clone();
        history.push(first[0]);
        history.extend(chunk.iter().step_by(2));
        let tail = &history[history.len() - keep..];
        cpu.reset_sequence(0);
        let restart = [(0, tail), (1, &chunk[9..])];
        let stepped = pollster::block_on(cpu.step(&restart, &greedy, &[0.0; 2])).unwrap();
        let Chunk::Ready(after) = cpu.start_decode(&[0, 1], &greedy, &[0.0; 6]).unwrap() else {
            unreachable!("the CPU computes chunks at once")
        };
        let want = [first, chunk.clone(), stepped, after];
        for gpu in test_gpus() {
            let mut dec = GpuDecoder::new(&gpu, &m, 2, 32, KV).unwrap();
            let from_chunk = [5, 1];
            let refused = Decoder::start_step(&mut dec, &restart, &from_chunk, &greedy, &[0.0; 2]);
            let error = refused.unwrap().err().unwrap().to_string();
            assert!(error.contains("none ran"), "{error}");
            let mut started = vec![
                Decoder::start_step(&mut dec, &batch, &[], &greedy, &[0.0; 2])
                    .unwrap()
                    .unwrap(),
            ];
            started.push(Decoder::start_decode(&mut dec, &[0, 1], &greedy, &[0.0; 10]).unwrap());
            dec.reset_sequence(0);
            // The host has only the tokens before the chunk; the rest are placeholders.
            let mut feed = tail[..keep - 5].to_vec();
            feed.resize(keep, 0);
            let placeholders = [(0, &feed[..]), (1, &[0][..])];
            for (bad, what) in [(&[6, 1][..], "made 5"), (&[5][..], "1 counts")] {
                let refused = Decoder::start_step(&mut dec, &placeholders, bad, &greedy, &[0.0; 2]);
                let error = refused.unwrap().err().unwrap().to_string();
                assert!(error.contains(what), "{bad:?}: {error}");
            }
            let step =
                Decoder::start_step(&mut dec, &placeholders, &from_chunk, &greedy, &[0.0; 2]);
            started.push(step.unwrap().unwrap());
            started.push(Decoder::start_decode(&mut dec, &[0, 1], &greedy, &[0.0; 6]).unwrap());
            let got: Vec<Vec<u32>> = started
                .into_iter()
                .map(|c| pollster::block_on(Decoder::finish_decode(&mut dec, c)).unwrap())
                .collect();
            assert_eq!(
                got,
                want,
                "restart from {keep} tokens on {}",
                gpu.describe()
            );
        }
    }
}

#[test]
fn a_decoder_owns_its_device_and_runs_on_another_thread() {
    // A server's engine task keeps its decoder for as long as it runs: the decoder holds
    // its own handle on the device, so it outlives the `Gpu` it was made from and moves
    // to another thread (`thread::spawn` asks for `Send + 'static`).
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 11, false);
    let prompts = vec![prompt(7, 3)];
    let mut cpu = CpuBatch::new(&m, 1, 32, KV).unwrap();
    let want = run(&mut cpu, &prompts, 12, SamplingParams::greedy());
    for gpu in test_gpus() {
        let name = gpu.describe();
        let mut dec = GpuDecoder::new(&gpu, &m, 1, 32, KV).unwrap();
        drop(gpu);
        let prompts = prompts.clone();
        let got = std::thread::spawn(move || run(&mut dec, &prompts, 12, SamplingParams::greedy()))
            .join()
            .unwrap();
        assert_eq!(got, want, "greedy tokens on {name} from another thread");
    }
}

/// Greedy tokens of one sequence from `prompt` on the CPU, then on each of `gpus`: equal.
fn assert_greedy_everywhere(
    gpus: &[crate::gpu::Gpu],
    m: &Model,
    prompt: &[u32],
    tokens: usize,
    kv: KvFormat,
    what: &str,
) {
    let prompts = vec![prompt.to_vec()];
    let mut cpu = CpuBatch::new(m, 1, 48, kv).unwrap();
    let want = run(&mut cpu, &prompts, tokens, SamplingParams::greedy());
    for gpu in gpus {
        let mut dec = GpuDecoder::new(gpu, m, 1, 48, kv).unwrap();
        let got = run(&mut dec, &prompts, tokens, SamplingParams::greedy());
        assert_eq!(got, want, "{what}: greedy tokens on {}", gpu.describe());
    }
}

/// Hadamard W_O at real models' widths that are not powers of two (576 = 36 x 16 as
/// SmolLM2-135M, 960 = 60 x 16 as SmolLM2-360M; head size 64): greedy tokens identical on
/// the CPU and every adapter (the CPU adapters take the tiled WHT with its fused epilogue
/// there; GPUs would fold it into the GEMV prologue, tested in ops::matmul).
#[test]
fn hadamard_at_paley_widths_decodes_greedy_identical_on_every_device() {
    let gpus = test_gpus();
    for (d, seed) in [(576, 21), (960, 22)] {
        let config = Config {
            num_attention_heads: d / 64,
            intermediate_size: 256,
            ..config(d, AttnOutput::Hadamard, Query::Dense)
        };
        let m = model(config, seed, true);
        assert_greedy_everywhere(
            &gpus,
            &m,
            &prompt(7, seed as u32),
            16,
            KV,
            &format!("d={d}"),
        );
    }
}

/// Grouped-query attention (8 heads of 16 on 2 KV heads, 4:1, and on 1, 8:1), dense and
/// Hadamard W_O, dense and MLP queries: the GPU's logits match the CPU reference's (f32
/// cache), and greedy tokens are identical on the CPU and every adapter (f16 and q8r
/// caches), with attention split in key chunks of 8 too.
#[test]
fn grouped_query_attention_decodes_like_the_cpu_on_every_device() {
    let gpus = test_gpus();
    let cases = [
        (AttnOutput::Dense, Query::Dense, 2),
        (AttnOutput::Hadamard, Query::Dense, 2),
        (AttnOutput::Hadamard, Query::ResidualMlp, 1),
    ];
    for (i, (attn, query, kv_heads)) in cases.into_iter().enumerate() {
        let c = Config {
            num_attention_heads: 8,
            num_key_value_heads: Some(kv_heads),
            ..config(128, attn, query)
        };
        let m = model(c, 40 + i as u64, i != 1);
        let what = format!("{attn:?}/{query:?} 8:{kv_heads}");
        let p = prompt(11, i as u32);
        let mut steps: Vec<Vec<u32>> = vec![p.clone()];
        steps.extend((0..3).map(|k| vec![(k * 50 + 7) as u32]));
        for gpu in &gpus {
            let mut cpu = CpuBatch::new(&m, 1, 32, KvFormat::F32).unwrap();
            let mut dec = GpuDecoder::new(gpu, &m, 1, 32, KvFormat::F32).unwrap();
            assert_logits_match(&mut cpu, &mut dec, &steps, &what);
        }
        for kv in [KV, KvFormat::Q8Rot] {
            let prompts = vec![p.clone()];
            let mut cpu = CpuBatch::new(&m, 1, 48, kv).unwrap();
            let want = run(&mut cpu, &prompts, 24, SamplingParams::greedy());
            for gpu in &gpus {
                let mut dec = GpuDecoder::new(gpu, &m, 1, 48, kv).unwrap();
                let got = run(&mut dec, &prompts, 24, SamplingParams::greedy());
                assert_eq!(
                    got,
                    want,
                    "{what} {kv}: greedy tokens on {}",
                    gpu.describe()
                );
                dec.set_decode_chunk(8).unwrap();
                let got = run(&mut dec, &prompts, 24, SamplingParams::greedy());
                assert_eq!(got, want, "{what} {kv}: split decode on {}", gpu.describe());
            }
        }
    }
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    let m = model(
        config(64, AttnOutput::Hadamard, Query::ResidualMlp),
        9,
        false,
    );
    let prompts = vec![prompt(3, 1), prompt(13, 2), prompt(1, 3)];
    for gpu in test_gpus() {
        let mut batched = GpuDecoder::new(&gpu, &m, 3, 48, KV).unwrap();
        let together = run(&mut batched, &prompts, 12, SamplingParams::greedy());
        let mut single = GpuDecoder::new(&gpu, &m, 1, 48, KV).unwrap();
        for (p, want) in prompts.iter().zip(&together) {
            let alone = run(
                &mut single,
                std::slice::from_ref(p),
                12,
                SamplingParams::greedy(),
            );
            assert_eq!(&alone[0], want, "batched vs alone on {}", gpu.describe());
        }
    }
}

#[test]
fn seeded_sampling_reproduces_and_matches_cpu() {
    let m = model(config(64, AttnOutput::Dense, Query::Dense), 2, false);
    let prompts = vec![prompt(5, 4), prompt(8, 5)];
    let sampling = SamplingParams {
        temperature: 1.0,
        top_k: 20,
        top_p: 0.9,
        seed: 42,
    };
    let mut cpu = CpuBatch::new(&m, 2, 48, KV).unwrap();
    let want = run(&mut cpu, &prompts, 16, sampling);
    let other_seed = run(
        &mut cpu,
        &prompts,
        16,
        SamplingParams {
            seed: 43,
            ..sampling
        },
    );
    assert_ne!(want, other_seed, "the seed must matter");
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 48, KV).unwrap();
        let first = run(&mut dec, &prompts, 16, sampling);
        assert_eq!(
            first,
            run(&mut dec, &prompts, 16, sampling),
            "same seed, same tokens"
        );
        // Same draws and logits within 1e-6: the same tokens unless a draw lands within
        // rounding of a boundary, which these seeds do not.
        assert_eq!(first, want, "sampled tokens on {} vs CPU", gpu.describe());
    }
}

#[test]
fn streaming_callback_can_stop_and_stats_are_filled() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Identity), 1, false);
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 1, 48, KV).unwrap();
        let mut seen = Vec::new();
        let options = GenerateOptions::new(20, SamplingParams::greedy());
        let g = generate(&mut dec, &[prompt(4, 0)], &options, |ev| {
            seen.push(ev.token);
            if ev.index == 4 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(g.tokens[0], seen);
        assert_eq!(seen.len(), 5);
        assert!(g.stats.stopped);
        assert_eq!(g.stats.prompt_tokens, 4);
        assert!(g.stats.prefill_tokens_per_s > 0.0 && g.stats.decode_tokens_per_s > 0.0);
        let mem = g.stats.memory.unwrap();
        assert!(mem.peak_bytes >= mem.current_bytes && mem.current_bytes > 0);
    }
}

#[test]
fn bad_requests_are_errors() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 1, false);
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 16, KV).unwrap();
        let options = GenerateOptions::new(10, SamplingParams::greedy());
        let err = generate(&mut dec, &[prompt(17, 0)], &options, |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(matches!(err, ModelError::ContextOverflow { .. }), "{err}");
        let err =
            generate(&mut dec, &[vec![]], &options, |_| ControlFlow::Continue(())).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let three = vec![prompt(2, 0); 3];
        assert!(generate(&mut dec, &three, &options, |_| ControlFlow::Continue(())).is_err());
        assert!(
            dec.forward_logits(&[(0, &[300])])
                .unwrap_err()
                .to_string()
                .contains("vocabulary")
        );
        assert!(dec.forward_logits(&[(5, &[1])]).is_err());
        assert!(dec.forward_logits(&[(0, &[1]), (0, &[2])]).is_err());
        assert!(
            GpuDecoder::new(&gpu, &m, 1, 49, KV).is_err(),
            "context beyond the model"
        );
        // The decoder still works after the errors.
        dec.reset();
        dec.forward_logits(&[(0, &[1, 2, 3])]).unwrap();
    }
}

#[test]
fn eval_agrees_on_every_device_and_with_a_direct_computation() {
    let m = model(config(48, AttnOutput::Hadamard, Query::Dense), 4, false);
    let text: Vec<u32> = prompt(70, 9);
    // Context 16: the text takes several overlapping windows.
    let mut cpu = CpuBatch::new(&m, 1, 16, KV).unwrap();
    let mut calls = 0;
    let want = evaluate(&mut cpu, &text, |done, total| {
        calls += 1;
        assert!(done <= total, "progress {done}/{total}");
    })
    .unwrap();
    assert_eq!(want.bytes_scored, 69);
    assert_eq!(calls, 1 + (70 - 16usize).div_ceil(8));
    // A text within one window: the mean of -log softmax at each target, by hand.
    let short = &text[..16];
    cpu.reset();
    let logits = pollster::block_on(cpu.logits(&[(0, short)]))
        .unwrap()
        .remove(0);
    let mut nats = 0.0;
    for i in 0..15 {
        let row: Vec<f64> = logits[i * 256..(i + 1) * 256]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        nats += lse - row[short[i + 1] as usize];
    }
    let one = evaluate(&mut cpu, short, |_, _| {}).unwrap();
    assert!(
        (one.nats_per_byte - nats / 15.0).abs() < 1e-9,
        "{} vs {}",
        one.nats_per_byte,
        nats / 15.0
    );
    assert!((one.bits_per_byte - one.nats_per_byte / std::f64::consts::LN_2).abs() < 1e-12);
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 1, 16, KV).unwrap();
        let got = evaluate(&mut dec, &text, |_, _| {}).unwrap();
        assert_eq!(got.bytes_scored, want.bytes_scored);
        assert!(
            (got.nats_per_byte - want.nats_per_byte).abs() < 1e-4,
            "{}: GPU {} vs CPU {} nats/byte",
            gpu.describe(),
            got.nats_per_byte,
            want.nats_per_byte
        );
    }
    assert!(evaluate(&mut cpu, &text[..1], |_, _| {}).is_err());
}

/// A 40,000-token vocabulary: the logits buffer holds 52 rows (8 MiB), so a 70-row step's
/// logits come back in chunks of the gathered residual, and a prefill samples from the
/// LM head of its sequences' last rows only; both against the CPU reference.
#[test]
fn lm_head_runs_for_the_sampled_rows_and_long_steps_read_logits_in_chunks() {
    let vocab = 40_000;
    let cfg = Config {
        vocab_size: vocab,
        max_position_embeddings: 96,
        ..config(64, AttnOutput::Hadamard, Query::Dense)
    };
    let m = model(cfg, 12, true);
    let long = prompt(70, 3);
    let peak_gap = |row: &[f32], token: u32| {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let peak = row.iter().fold(0f32, |p, v| p.max(v.abs()));
        (max - row[token as usize]) as f64 / peak as f64
    };
    let mut cpu = CpuBatch::new(&m, 2, 96, KvFormat::F32).unwrap();
    let want = pollster::block_on(cpu.logits(&[(0, &long[..])]))
        .unwrap()
        .remove(0);
    let (a, b) = (&long[..30], &long[..41]);
    cpu.reset();
    let want_a = pollster::block_on(cpu.logits(&[(0, a)])).unwrap().remove(0);
    let want_b = pollster::block_on(cpu.logits(&[(1, b)])).unwrap().remove(0);
    let last = |l: &[f32]| l[l.len() - vocab..].to_vec();
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 96, KvFormat::F32).unwrap();
        let got = dec.forward_logits(&[(0, &long[..])]).unwrap().remove(0);
        assert_eq!(got.len(), 70 * vocab);
        for r in 0..70 {
            let row = |l: &[f32]| l[r * vocab..(r + 1) * vocab].to_vec();
            let err = relative_error(&row(&got), &row(&want));
            assert!(
                err <= LOGIT_TOLERANCE,
                "row {r} on {}: relative error {err:e}",
                gpu.describe()
            );
        }
        // Two prompts, 71 rows: the head runs for rows 29 and 70 only.
        dec.reset();
        let greedy = SamplingParams::greedy();
        let tokens = dec
            .forward_sample(&[(0, a), (1, b)], &greedy, &[0.0, 0.0])
            .unwrap();
        for (t, want) in tokens.iter().zip([last(&want_a), last(&want_b)]) {
            // The CPU's argmax, or a token within rounding of it.
            assert!(
                peak_gap(&want, *t) <= LOGIT_TOLERANCE,
                "token {t} on {}",
                gpu.describe()
            );
        }
        // A decode step after the gathered prefill continues both sequences.
        let next = dec
            .forward_logits(&[(0, &[tokens[0]]), (1, &[tokens[1]])])
            .unwrap();
        cpu.reset();
        pollster::block_on(cpu.logits(&[(0, a), (1, b)])).unwrap();
        let want_next =
            pollster::block_on(cpu.logits(&[(0, &[tokens[0]]), (1, &[tokens[1]])])).unwrap();
        for (g, w) in next.iter().zip(&want_next) {
            let err = relative_error(g, w);
            assert!(
                err <= LOGIT_TOLERANCE,
                "decode step on {}: {err:e}",
                gpu.describe()
            );
        }
    }
}

/// The CPU reference's logits of each step of `steps` (a prefill, then decode steps) in
/// one sequence of `positions`.
fn cpu_step_logits(m: &Model, steps: &[Vec<u32>], positions: usize) -> Vec<Vec<f32>> {
    let mut cpu = CpuBatch::new(m, 1, positions, KvFormat::F32).unwrap();
    let step = |s: &Vec<u32>| pollster::block_on(cpu.logits(&[(0, s)])).unwrap().remove(0);
    steps.iter().map(step).collect()
}

/// A decoder whose matrices are split across bindings against the same model unsplit:
/// every step's logits the same bits (and within the CPU's tolerance of `cpu_logits`),
/// greedy decoding of `prompts` for `tokens` the same tokens. `on` names the case.
#[allow(clippy::too_many_arguments)]
fn assert_split_is_unsplit(
    split: &mut GpuDecoder,
    whole: &mut GpuDecoder,
    steps: &[Vec<u32>],
    cpu_logits: &[Vec<f32>],
    prompts: &[Vec<u32>],
    tokens: usize,
    on: &str,
) {
    for (k, s) in steps.iter().enumerate() {
        let a = split.forward_logits(&[(0, s)]).unwrap().remove(0);
        let b = whole.forward_logits(&[(0, s)]).unwrap().remove(0);
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same && a.len() == b.len(), "{on}: step {k} differs");
        let err = relative_error(&a, &cpu_logits[k]);
        assert!(err <= LOGIT_TOLERANCE, "{on}: step {k} vs CPU {err:e}");
    }
    let greedy = SamplingParams::greedy();
    let a = run(split, prompts, tokens, greedy);
    assert_eq!(a, run(whole, prompts, tokens, greedy), "{on}");
}

/// With `max_storage_buffer_binding_size` at 64 KiB, a 2,000 x 64 embedding and head
/// (250 KiB in f16, 70 KiB in q4) split by rows across bindings; every logit is the bits
/// of the same model on the same adapter with its usual limits, and greedy decoding the
/// same tokens, for f16 and for q8 / q4 embedding and head.
#[test]
fn embedding_and_head_split_across_bindings_give_the_unsplit_bits() {
    use crate::blocks::{QuantFormat, QuantMatrix};
    use crate::gpu::testing::test_gpus_with_binding_limit;
    use crate::model::weights::TensorData;
    let limit = 64 << 10;
    let cfg = Config {
        vocab_size: 2000,
        ..config(64, AttnOutput::Hadamard, Query::Dense)
    };
    let f16 = model(cfg, 21, true);
    // The same model with its embedding and head block-quantized (q8 and q4).
    let quantized = |m: &Model, e: QuantFormat, h: QuantFormat| {
        let mut m = m.clone();
        let w = &mut m.weights;
        for (t, f) in [(&mut w.embed_tokens, e)]
            .into_iter()
            .chain(w.lm_head.as_mut().map(|t| (t, h)))
        {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            t.data = TensorData::Quant(QuantMatrix::quantize(f, rows, cols, &t.to_f32()).unwrap());
        }
        m
    };
    let models = [
        ("f16", f16.clone()),
        ("q8", quantized(&f16, QuantFormat::Q8, QuantFormat::Q8)),
        (
            "q4 embedding, q8 head",
            quantized(&f16, QuantFormat::Q4, QuantFormat::Q8),
        ),
    ];
    // At most 8 rows a step: the logits buffer's rows under the limit (64 KiB of 2,000
    // f32), so both decoders take the same path.
    let steps: Vec<Vec<u32>> = vec![prompt(8, 5), vec![1999], vec![3]];
    let prompts = vec![prompt(6, 1), prompt(9, 2)];
    let small = test_gpus_with_binding_limit(limit);
    let usual = test_gpus();
    assert_eq!(small.len(), usual.len());
    for (name, m) in &models {
        let cpu_logits = cpu_step_logits(m, &steps, 48);
        for (split_gpu, gpu) in small.iter().zip(&usual) {
            let on = format!("{name} on {}", gpu.describe());
            let mut split = GpuDecoder::new(split_gpu, m, 2, 48, KvFormat::F32).unwrap();
            // 250 KiB (f16), 133 KiB (q8) or 70 KiB (q4) each: in parts, one at the usual
            // limits.
            let (embed, head) = split.vocab_parts();
            assert!(
                embed > 1 && head > Some(1),
                "{on}: {embed} and {head:?} parts"
            );
            let mut whole = GpuDecoder::new(gpu, m, 2, 48, KvFormat::F32).unwrap();
            assert_eq!(whole.vocab_parts(), (1, Some(1)), "{on}");
            assert_split_is_unsplit(
                &mut split,
                &mut whole,
                &steps,
                &cpu_logits,
                &prompts,
                10,
                &on,
            );
        }
    }
}

/// With `max_storage_buffer_binding_size` at 16 KiB, every layer's stacked gate + up
/// (48 KiB in f16, 25.5 KiB in q8), q + k + v and down projection split by rows across
/// bindings, one product per part (the SwiGLU's gate and up rows kept together, the
/// fused norm and Hadamard prologues run by every part): every logit is the bits of the
/// same model on the same adapter with its usual limits, within the CPU reference's
/// tolerance, and greedy decoding gives the same tokens, for a dense and a Hadamard W_O
/// and the residual-MLP query.
#[test]
fn layer_matrices_split_across_bindings_give_the_unsplit_bits() {
    use crate::gpu::testing::test_gpus_with_binding_limit;
    let limit = 16 << 10;
    let small = test_gpus_with_binding_limit(limit);
    let usual = test_gpus();
    assert_eq!(small.len(), usual.len());
    let cases = [
        (AttnOutput::Hadamard, Query::Dense, WeightFormat::F16),
        (AttnOutput::Dense, Query::ResidualMlp, WeightFormat::F16),
        (AttnOutput::Hadamard, Query::Dense, WeightFormat::Q8),
    ];
    // A prefill, then decode steps (the fused layer); at most 8 rows a step, within the
    // logits buffer's rows under the limit, so both decoders take the same path.
    let steps: Vec<Vec<u32>> = vec![prompt(8, 5), vec![200], vec![3]];
    let prompts = vec![prompt(6, 1), prompt(9, 2)];
    for (attn_output, query, format) in cases {
        let m = random_model(&config(64, attn_output, query), 31, format).unwrap();
        let name = format!("{} {}", m.config.variant(), format.name());
        let cpu_logits = cpu_step_logits(&m, &steps, 24);
        for (split_gpu, gpu) in small.iter().zip(&usual) {
            let on = format!("{name} on {}", gpu.describe());
            let mut split = GpuDecoder::new(split_gpu, &m, 2, 24, KvFormat::F32).unwrap();
            assert!(split.layer_parts() >= 2, "{on}: {}", split.layer_parts());
            let mut whole = GpuDecoder::new(gpu, &m, 2, 24, KvFormat::F32).unwrap();
            assert_eq!(whole.layer_parts(), 1, "{on}");
            assert_split_is_unsplit(
                &mut split,
                &mut whole,
                &steps,
                &cpu_logits,
                &prompts,
                8,
                &on,
            );
        }
    }
}

/// With `max_storage_buffer_binding_size` at 16 KiB a step's activations hold 21 rows
/// (`hb`, 192 f32 values a row, is the widest): a 25-token prompt, and two prompts of 15
/// and 12, are fed in steps that fit (a sequence's tokens cut across steps), their
/// logits within the CPU reference's tolerance and greedy tokens those of the same model
/// under the adapter's usual limits (one step).
#[test]
fn prefills_longer_than_the_activations_take_run_in_steps_that_fit() {
    use crate::gpu::testing::test_gpus_with_binding_limit;
    // 32 positions of 2 sequences' f32 keys: 16 KiB, the cache just fits.
    let small = test_gpus_with_binding_limit(16 << 10);
    let usual = test_gpus();
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 41, true);
    let long = prompt(25, 7);
    let cpu_logits = cpu_step_logits(&m, std::slice::from_ref(&long), 32);
    for (small_gpu, gpu) in small.iter().zip(&usual) {
        let on = gpu.describe();
        let mut split = GpuDecoder::new(small_gpu, &m, 2, 32, KvFormat::F32).unwrap();
        assert_eq!(split.max_step_rows(), 21, "{on}");
        let mut whole = GpuDecoder::new(gpu, &m, 2, 32, KvFormat::F32).unwrap();
        assert!(whole.max_step_rows() >= 64, "{on}");
        let logits = split.forward_logits(&[(0, &long)]).unwrap().remove(0);
        assert_eq!(logits.len(), 25 * 256, "{on}");
        let err = relative_error(&logits, &cpu_logits[0]);
        assert!(err <= LOGIT_TOLERANCE, "{on}: {err:e}");
        let greedy = SamplingParams::greedy();
        for prompts in [vec![long.clone()], vec![prompt(15, 3), prompt(12, 4)]] {
            split.reset();
            let a = run(&mut split, &prompts, 6, greedy);
            assert_eq!(a, run(&mut whole, &prompts, 6, greedy), "{on}");
        }
        // A feeding step records no LM head: fewer dispatches than the same rows' logits.
        let rows = prompt(8, 5);
        let dispatches = |dec: &mut GpuDecoder, logits: bool| {
            dec.reset();
            let before = small_gpu.counters().snapshot().dispatches;
            if logits {
                dec.forward_logits(&[(0, &rows)]).unwrap();
            } else {
                dec.feed(&[(0, &rows)], &[]).unwrap();
            }
            small_gpu.counters().snapshot().dispatches - before
        };
        let fed = dispatches(&mut split, false);
        assert!(fed > 0 && fed < dispatches(&mut split, true), "{on}: {fed}");
    }
    // A device whose limits walsh caps (the page's ?max_binding=, where the browser
    // grants 128 MiB whatever is asked) steps as the device that has the small limit.
    for (small_gpu, mut capped) in small.iter().zip(test_gpus()) {
        let on = capped.describe();
        assert!(capped.cap_bindings(16 << 10), "{on}");
        assert!(
            !capped.clone().cap_bindings(1 << 10),
            "{on}: a clone is shared"
        );
        assert_eq!(capped.limits().max_storage_buffer_binding_size, 16 << 10);
        assert_eq!(capped.summary().max_storage_buffer_binding_bytes, 16 << 10);
        let mut a = GpuDecoder::new(&capped, &m, 2, 32, KvFormat::F32).unwrap();
        let mut b = GpuDecoder::new(small_gpu, &m, 2, 32, KvFormat::F32).unwrap();
        assert_eq!(a.max_step_rows(), 21, "{on}");
        let prompts = [long.clone()];
        let greedy = SamplingParams::greedy();
        assert_eq!(
            run(&mut a, &prompts, 4, greedy),
            run(&mut b, &prompts, 4, greedy),
            "{on}"
        );
    }
}

#[test]
fn generation_past_the_context_slides_the_same_way_on_every_device() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 3, false);
    // Context 16, prompts of 5 and 11, 40 new tokens: each sequence restarts from its last
    // 8 tokens several times, at different steps.
    let prompts = vec![prompt(5, 1), prompt(11, 2)];
    let mut cpu = CpuBatch::new(&m, 2, 16, KV).unwrap();
    let want = run(&mut cpu, &prompts, 40, SamplingParams::greedy());
    assert!(want.iter().all(|t| t.len() == 40));
    // The CPU reference of the rule: after a restart the logits are those of the last 8
    // tokens alone.
    let mut alone = CpuBatch::new(&m, 1, 16, KV).unwrap();
    let mut h = prompts[0].clone();
    // Steps 1-11 fill positions 5..16; step 12 restarts from the last 8 of the 17 tokens.
    h.extend(&want[0][..12]);
    let logits = pollster::block_on(alone.logits(&[(0, &h[h.len() - 8..])]))
        .unwrap()
        .remove(0);
    let last = &logits[7 * 256..];
    let argmax = (0..256)
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap() as u32;
    assert_eq!(want[0][12], argmax);
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 16, KV).unwrap();
        let mut recorded = ChunkRows::new(&mut dec);
        let got = run(&mut recorded, &prompts, 40, SamplingParams::greedy());
        assert_eq!(got, want, "sliding context on {}", gpu.describe());
        // The steps that slide follow the chunk that filled the context at once: they
        // take its tokens on the GPU (a sequence restarting from its last 8 tokens takes
        // up to 8, the other its last token), the host's readback not awaited.
        let (prefill, slides) = recorded.from_chunk.split_first().unwrap();
        assert!(
            prefill.is_empty() && slides.len() >= 4,
            "{:?}",
            recorded.from_chunk
        );
        for taken in slides {
            assert!(
                taken.len() == 2 && taken.iter().all(|t| (1..=8).contains(t)),
                "{:?}",
                recorded.from_chunk
            );
        }
    }
}

/// Generates with at most `max_chunk` decode steps per chunk.
fn run_chunked(
    dec: &mut dyn Decoder,
    prompts: &[Vec<u32>],
    tokens: usize,
    sampling: SamplingParams,
    max_chunk: usize,
) -> super::generate::Generation {
    let options = GenerateOptions {
        max_chunk,
        ..GenerateOptions::new(tokens, sampling)
    };
    generate(dec, prompts, &options, |_| ControlFlow::Continue(())).unwrap()
}

#[test]
fn chunked_decoding_equals_one_step_per_readback_and_counts_its_work() {
    let sampled = SamplingParams {
        temperature: 0.9,
        top_k: 30,
        top_p: 0.95,
        seed: 11,
    };
    let gpus = test_gpus();
    for (i, (attn, query)) in [
        (AttnOutput::Dense, Query::Dense),
        (AttnOutput::Hadamard, Query::Dense),
        (AttnOutput::Hadamard, Query::Identity),
    ]
    .into_iter()
    .enumerate()
    {
        let m = model(config(64, attn, query), 20 + i as u64, true);
        let prompts = vec![prompt(3, 7), prompt(10, 8)];
        let mut cpu = CpuBatch::new(&m, 2, 48, KV).unwrap();
        for sampling in [SamplingParams::greedy(), sampled] {
            let want = run_chunked(&mut cpu, &prompts, 30, sampling, 1).tokens;
            for gpu in &gpus {
                let mut dec = GpuDecoder::new(gpu, &m, 2, 48, KV).unwrap();
                for max_chunk in [1, 3, DEFAULT_MAX_CHUNK] {
                    let g = run_chunked(&mut dec, &prompts, 30, sampling, max_chunk);
                    assert_eq!(
                        g.tokens,
                        want,
                        "{attn:?}/{query:?} chunks of {max_chunk} on {}",
                        gpu.describe()
                    );
                    // 29 decode steps: one readback per chunk.
                    let chunks = match max_chunk {
                        1 => 29,
                        3 => 10,
                        _ => 4, // 4 + 8 + 16 + 1
                    };
                    assert_eq!(g.stats.decode_chunks, chunks);
                    let per_token = chunks as f64 / (29.0 * 2.0);
                    assert!((g.stats.readbacks_per_token - per_token).abs() < 1e-9);
                }
            }
        }
        // One sequence: the dispatches of one step per token, and one more per chunk (the
        // feedback that logs its last tokens). Per layer of the fused decode step: the
        // stacked q/k/v product (its norm inside), attention (RoPE and the KV write
        // inside with a dense query; an identity query rotates xn and k and writes the
        // cache apart: 3 more), the dense W_O product (the Hadamard W_O is inside the
        // next product), the gate/up product (norm and SwiGLU inside), down; per step:
        // embedding, lm_head (the final norm inside), sampling, feedback.
        let mut per_layer = if attn == AttnOutput::Dense { 5 } else { 4 };
        if query != Query::Dense {
            per_layer += 3;
        }
        for gpu in &gpus {
            let mut dec = GpuDecoder::new(gpu, &m, 1, 48, KV).unwrap();
            let g = run_chunked(&mut dec, &prompts[..1], 20, SamplingParams::greedy(), 32);
            let want = (4 + 2 * per_layer) as f64 + g.stats.decode_chunks as f64 / 19.0;
            assert!(
                (g.stats.dispatches_per_token - want).abs() < 1e-9,
                "{attn:?}/{query:?}: {} dispatches per token, want {want}",
                g.stats.dispatches_per_token
            );
            assert!(g.stats.readbacks_per_token <= 0.25, "{:?}", g.stats);
            // Unfused (WALSH_FUSE=off, the page on CPU adapters): the same tokens from
            // more dispatches.
            let mut apart = GpuDecoder::new(gpu, &m, 1, 48, KV).unwrap();
            apart.set_fusion(false);
            let u = run_chunked(&mut apart, &prompts[..1], 20, SamplingParams::greedy(), 32);
            assert_eq!(
                u.tokens,
                g.tokens,
                "{attn:?}/{query:?} unfused on {}",
                gpu.describe()
            );
            assert!(
                u.stats.dispatches_per_token > want + 1.0,
                "{attn:?}/{query:?}: unfused {} dispatches per token",
                u.stats.dispatches_per_token
            );
        }
    }
}

#[test]
fn f16_cache_stays_close_to_f32_and_halves_its_memory() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 6, true);
    let text = prompt(40, 3);
    let mut f32_cpu = CpuBatch::new(&m, 1, 48, KvFormat::F32).unwrap();
    let mut f16_cpu = CpuBatch::new(&m, 1, 48, KvFormat::F16).unwrap();
    let exact = evaluate(&mut f32_cpu, &text, |_, _| {}).unwrap();
    let half = evaluate(&mut f16_cpu, &text, |_, _| {}).unwrap();
    let diff = (exact.nats_per_byte - half.nats_per_byte).abs();
    // Rounding keys and values to 11 significant bits moves the loss a little, not zero.
    assert!(diff > 0.0 && diff < 1e-3, "f16 vs f32 cache: {diff}");
    for gpu in test_gpus() {
        let before = gpu.memory().report().current_bytes;
        let dec32 = GpuDecoder::new(&gpu, &m, 2, 48, KvFormat::F32).unwrap();
        let with32 = gpu.memory().report().current_bytes - before;
        drop(dec32);
        let mut dec16 = GpuDecoder::new(&gpu, &m, 2, 48, KvFormat::F16).unwrap();
        let with16 = gpu.memory().report().current_bytes - before;
        // 2 layers x (k, v) x 2 sequences x 48 positions x 64 values.
        let cache32 = 2 * 2 * 2 * 48 * 64 * 4;
        assert_eq!(with32 - with16, cache32 / 2, "on {}", gpu.describe());
        let got = evaluate(&mut dec16, &text, |_, _| {}).unwrap();
        assert!(
            (got.nats_per_byte - half.nats_per_byte).abs() < 1e-4,
            "{}: GPU {} vs CPU {} with f16 caches",
            gpu.describe(),
            got.nats_per_byte,
            half.nats_per_byte
        );
    }
}

#[test]
fn quantized_caches_match_the_cpu_reference_and_take_their_bytes() {
    // head_dim 16: a power of two, so the rotated formats apply.
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 8, true);
    let text = prompt(40, 5);
    let mut f32_cpu = CpuBatch::new(&m, 1, 48, KvFormat::F32).unwrap();
    let exact = evaluate(&mut f32_cpu, &text, |_, _| {}).unwrap();
    let gpus = test_gpus();
    for kv in [KvFormat::Q8, KvFormat::Q4, KvFormat::Q8Rot, KvFormat::Q4Rot] {
        let mut cpu = CpuBatch::new(&m, 1, 48, kv).unwrap();
        let want = evaluate(&mut cpu, &text, |_, _| {}).unwrap();
        assert_eq!(want.kv_cache, kv);
        let diff = (want.nats_per_byte - exact.nats_per_byte).abs();
        // Quantizing moves the loss, more with 4 bits, not far on this random model.
        // (Measured: q8 1.3e-3, q4 5.8e-2, q8r 1.9e-3, q4r 3.3e-3 nats/byte.)
        assert!(diff > 0.0 && diff < 0.1, "{kv} vs f32 cache: {diff}");
        for gpu in &gpus {
            let before = gpu.memory().report().current_bytes;
            let dec32 = GpuDecoder::new(gpu, &m, 2, 48, KvFormat::F32).unwrap();
            let with32 = gpu.memory().report().current_bytes - before;
            drop(dec32);
            let mut dec = GpuDecoder::new(gpu, &m, 2, 48, kv).unwrap();
            let with_q = gpu.memory().report().current_bytes - before;
            // 2 layers x (k, v) x 2 sequences x 48 positions x 4 heads of 16 values: f32
            // 16 words per head, q8 1 + 4, q4 1 + 2.
            let heads = 2 * 2 * 2 * 48 * 4;
            let words = kv.head_words(16) as u64;
            assert_eq!(
                with32 - with_q,
                heads * (16 - words) * 4,
                "{kv} on {}",
                gpu.describe()
            );
            // Logits of a prefill and of decode steps, against the CPU decoder's.
            let mut cpu = CpuBatch::new(&m, 1, 48, kv).unwrap();
            let mut steps: Vec<Vec<u32>> = vec![prompt(11, 2)];
            steps.extend((0..3).map(|k| vec![(k * 50 + 7) as u32]));
            assert_logits_match(&mut cpu, &mut dec, &steps, &format!("{kv}"));
            // A whole evaluation: the CPU's loss. Quantizing is discontinuous: keys that
            // differ in their last bit (the GPU's products sum in other orders) can land
            // on either side of a rounding boundary, so now and then a level differs by
            // one. This random model's loss (12 nats/byte) is sharp: within 1e-3.
            let mut dec = GpuDecoder::new(gpu, &m, 1, 48, kv).unwrap();
            let got = evaluate(&mut dec, &text, |_, _| {}).unwrap();
            assert!(
                (got.nats_per_byte - want.nats_per_byte).abs() < 1e-3,
                "{}: GPU {} vs CPU {} with {kv} caches",
                gpu.describe(),
                got.nats_per_byte,
                want.nats_per_byte
            );
        }
    }
}

#[test]
fn rotated_caches_need_a_walsh_hadamard_head_dim() {
    // d 184 over 4 heads: head_dim 46 = 23 x 2, no Hadamard matrix.
    let m = model(config(184, AttnOutput::Dense, Query::Dense), 9, false);
    for kv in [KvFormat::Q8Rot, KvFormat::Q4Rot] {
        let e = CpuBatch::new(&m, 1, 16, kv).err().unwrap();
        assert!(
            matches!(
                e,
                ModelError::Kv(KvError::RotationHeadDim { head_dim: 46, .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("head_dim 46 has none"), "{e}");
        for gpu in test_gpus() {
            let e = GpuDecoder::new(&gpu, &m, 1, 16, kv).err().unwrap();
            assert!(matches!(e, ModelError::Kv(_)), "{e}");
        }
    }
    // Unrotated, any head_dim works.
    assert!(CpuBatch::new(&m, 1, 16, KvFormat::Q4).is_ok());
    // head_dim 48 = 12 x 4 and 72 = 36 x 2 rotate by H_12 (x) H_4 and H_36 (x) H_2:
    // greedy tokens agree on the CPU and every adapter.
    let gpus = test_gpus();
    for (d, kv) in [(192, KvFormat::Q8Rot), (288, KvFormat::Q4Rot)] {
        let m = model(config(d, AttnOutput::Hadamard, Query::Dense), 10, true);
        assert_greedy_everywhere(&gpus, &m, &prompt(6, 3), 12, kv, &format!("{kv} at d {d}"));
    }
}

/// q8 and q4 models: the GPU reads the packed blocks, the CPU the dequantized values, and
/// their logits agree as closely as with f32 weights (both see scale x level exactly).
#[test]
fn quantized_models_give_the_cpu_logits_on_gpu() {
    use super::quant::quantized;
    use crate::blocks::QuantFormat;
    for gpu in test_gpus() {
        for (i, format) in [QuantFormat::Q8, QuantFormat::Q4].into_iter().enumerate() {
            // d = 48: rows of one full block and one tail of 16, like the shipped 688.
            let (attn, query) = VARIANTS[3 + i];
            let f32_model = model(config(48, attn, query), 21 + i as u64, false);
            let m = quantized(&f32_model, format).unwrap().0;
            let mut cpu = CpuBatch::new(&m, 1, 32, KvFormat::F32).unwrap();
            let mut dec = GpuDecoder::new(&gpu, &m, 1, 32, KvFormat::F32).unwrap();
            assert_logits_match(
                &mut cpu,
                &mut dec,
                &[prompt(13, 2), vec![7], vec![200]],
                &format!("{format}"),
            );
        }
    }
}

/// Quantized matrices stay packed on the GPU: the memory report's weights are the bytes
/// `sizes::decoder_buffers` counts (levels and scales), and q4 layer matrices take at most
/// 0.35x their f16 bytes (hand count for this shape: 18 bytes per 32 values against 64,
/// 0.28x).
#[test]
fn quantized_weights_stay_packed_in_gpu_memory() {
    use super::quant::quantized;
    use super::sizes::decoder_buffers;
    use crate::blocks::QuantFormat;
    use crate::gpu::MemoryCategory;
    let f16 = model(config(64, AttnOutput::Hadamard, Query::Dense), 4, true);
    let q4 = quantized(&f16, QuantFormat::Q4).unwrap().0;
    let matrices = |m: &Model| -> u64 {
        decoder_buffers(m, 1, 32, KV)
            .iter()
            .filter(|(n, _)| n.starts_with("model.layers.") && n.contains("proj"))
            .map(|(_, b)| b)
            .sum()
    };
    let ratio = matrices(&q4) as f64 / matrices(&f16) as f64;
    assert!(
        (0.28..=0.2813).contains(&ratio),
        "q4 / f16 matrix bytes {ratio}"
    );
    for gpu in test_gpus() {
        for m in [&f16, &q4] {
            let weights = |gpu: &crate::gpu::Gpu| {
                let report = gpu.memory().report();
                let row = report.by_category.iter();
                row.filter(|c| c.0 == MemoryCategory::Weights)
                    .map(|c| c.1)
                    .sum::<u64>()
            };
            let before = weights(&gpu);
            let dec = GpuDecoder::new(&gpu, m, 1, 32, KV).unwrap();
            let buffers = decoder_buffers(m, 1, 32, KV);
            // Every buffer but the last (the caches) is a weight.
            let want: u64 = buffers[..buffers.len() - 1].iter().map(|(_, b)| b).sum();
            assert_eq!(weights(&gpu) - before, want, "{}", gpu.describe());
            drop(dec);
        }
    }
}

/// One decoder through a schedule a server makes: sequences sampled alone, decoded in
/// chunks of a subset, in another order than their last step sampled them, two chunks in
/// flight at once, and a sequence fed without sampling. Returns every step's tokens or
/// refusal, in order.
fn subset_schedule(dec: &mut dyn Decoder) -> Vec<Result<Vec<u32>, String>> {
    let greedy = SamplingParams::greedy();
    let step = |dec: &mut dyn Decoder, batch: &[(usize, &[u32])]| {
        let draws = vec![0.5; batch.len()];
        pollster::block_on(dec.step(batch, &greedy, &draws)).map_err(|e| e.to_string())
    };
    let start = |dec: &mut dyn Decoder, seqs: &[usize], steps: usize| {
        dec.start_decode(seqs, &greedy, &vec![0.5; seqs.len() * steps])
    };
    let finish = |dec: &mut dyn Decoder, c| pollster::block_on(dec.finish_decode(c)).unwrap();
    let chunk = |dec: &mut dyn Decoder, seqs: &[usize], steps: usize| {
        start(dec, seqs, steps)
            .map(|c| finish(dec, c))
            .map_err(|e| e.to_string())
    };
    let last = |r: &Result<Vec<u32>, String>| *r.as_ref().unwrap().last().unwrap();
    let (p0, p1) = (prompt(5, 1), prompt(7, 2));
    let mut out = vec![step(dec, &[(0, &p0), (1, &p1)])];
    let a = out[0].clone().unwrap();
    // Sequence 1 alone: the slot that held sequence 0's next token now holds 1's.
    out.push(step(dec, &[(1, &a[1..])]));
    // Sequence 0 continues from its token as read back, then 1 from its own.
    out.push(chunk(dec, &[0], 2));
    out.push(chunk(dec, &[1], 3));
    // Sampled as (1, 0), decoded as (0, 1).
    let (c0, d1) = (last(&out[2]), last(&out[3]));
    out.push(step(dec, &[(1, &[d1]), (0, &[c0])]));
    out.push(chunk(dec, &[0, 1], 2));
    // Two chunks in flight: the second continues sequence 1 from the first's last step.
    let first = start(dec, &[0, 1], 2).unwrap();
    let second = start(dec, &[1], 2).unwrap();
    out.push(Ok(finish(dec, first)));
    out.push(Ok(finish(dec, second)));
    // Sequence 0 fed without sampling: it has no next token to decode from.
    pollster::block_on(dec.logits(&[(0, &[7])])).unwrap();
    out.push(chunk(dec, &[0], 1));
    out.push(chunk(dec, &[1], 1));
    out
}

#[test]
fn decode_chunks_of_any_sequences_continue_what_was_sampled_for_them() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 41, true);
    let mut cpu = CpuBatch::new(&m, 2, 48, KV).unwrap();
    let want = subset_schedule(&mut cpu);
    let refused = want[8].as_ref().unwrap_err();
    assert!(refused.contains("sequence 0"), "{refused}");
    assert_eq!(want.iter().filter(|r| r.is_ok()).count(), want.len() - 1);
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 48, KV).unwrap();
        let got = subset_schedule(&mut dec);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            match (g, w) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "step {i} on {}", gpu.describe()),
                (Err(g), Err(_)) => assert!(g.contains("sequence 0"), "{g}"),
                _ => panic!("step {i} on {}: {g:?}, the CPU {w:?}", gpu.describe()),
            }
        }
    }
}

/// Runs `batcher` until it is idle, submitting `late` after the first round and
/// cancelling `cancel` once it has produced a few tokens; returns each request's tokens
/// and how it ended.
fn drain(
    batcher: &mut Batcher,
    dec: &mut dyn Decoder,
    late: &[Request],
    cancel: RequestId,
) -> BTreeMap<RequestId, (Vec<u32>, Option<Finish>)> {
    let mut out: BTreeMap<RequestId, (Vec<u32>, Option<Finish>)> = BTreeMap::new();
    let (mut round, mut cancelled) = (0, false);
    while !batcher.is_idle() {
        for event in pollster::block_on(batcher.round(dec)).unwrap() {
            match event {
                Event::Token { id, token } => out.entry(id).or_default().0.push(token),
                Event::Finished { id, finish } => out.entry(id).or_default().1 = Some(finish),
                Event::Failed { id, error } => panic!("request {id}: {error}"),
            }
        }
        round += 1;
        if round == 1 {
            for r in late {
                batcher.submit(r.clone()).unwrap();
            }
        }
        if !cancelled && out.get(&cancel).is_some_and(|o| o.0.len() >= 3) {
            assert!(batcher.cancel(cancel), "request {cancel} is not running");
            cancelled = true;
        }
        assert!(round < 200, "the batcher does not finish");
    }
    assert!(cancelled, "request {cancel} never ran");
    out
}

#[test]
fn continuous_batching_gives_each_request_its_solo_tokens() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 43, true);
    let request = |i: usize| Request {
        prompt: prompt(2 + i % 4, 30 + i as u32),
        max_tokens: 3 + 4 * i,
        stop: Vec::new(),
        sampling: if i.is_multiple_of(2) {
            SamplingParams::greedy()
        } else {
            SamplingParams {
                temperature: 0.9,
                top_k: 30,
                top_p: 0.95,
                seed: i as u64,
            }
        },
    };
    // Four start; after the first round two join, and two that would run past the
    // context (prompt 5 + 100 tokens > 48): the first fills it, the second is cancelled.
    let first: Vec<Request> = (0..4).map(request).collect();
    let mut late: Vec<Request> = (4..6).map(request).collect();
    let long = Request {
        max_tokens: 100,
        ..request(3)
    };
    late.extend([long.clone(), long]);
    let cancelled = 7;
    let all: Vec<&Request> = first.iter().chain(&late).collect();
    let mut cpu = CpuBatch::new(&m, 1, 48, KV).unwrap();
    let solo: Vec<Vec<u32>> = all
        .iter()
        .map(|r| {
            let n = r.max_tokens.min(48 - r.prompt.len() + 1);
            run(&mut cpu, std::slice::from_ref(&r.prompt), n, r.sampling)[0].clone()
        })
        .collect();
    let check = |got: BTreeMap<RequestId, (Vec<u32>, Option<Finish>)>, on: &str| {
        assert_eq!(got.len(), all.len(), "{on}: every request produced tokens");
        for (id, (tokens, finish)) in got {
            let want = &solo[id as usize];
            if id == cancelled {
                assert!(
                    finish.is_none() && want.starts_with(&tokens),
                    "{on}: {tokens:?}"
                );
                continue;
            }
            assert_eq!(&tokens, want, "request {id} on {on}");
            let end = if id == 6 {
                Finish::Context
            } else {
                Finish::Length
            };
            assert_eq!(finish, Some(end), "request {id} on {on}");
        }
    };
    let batched = |dec: &mut dyn Decoder| {
        let mut batcher = Batcher::new(4, 48, 8).unwrap();
        for r in &first {
            batcher.submit(r.clone()).unwrap();
        }
        drain(&mut batcher, dec, &late, cancelled)
    };
    check(batched(&mut CpuBatch::new(&m, 4, 48, KV).unwrap()), "cpu");
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 4, 48, KV).unwrap();
        check(batched(&mut dec), &gpu.describe());
    }
}

/// A stop token sampled in the middle of a decode chunk ends its request right there
/// (the stop token is its last token, then `Finish::Stop`; nothing the chunk computed
/// after it is reported), while the other row of its chunks (the same settings, so the
/// same chunks) goes on to its solo tokens.
#[test]
fn stop_tokens_end_a_request_inside_a_decode_chunk() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 43, true);
    let greedy = SamplingParams::greedy();
    let (pa, pb) = (prompt(3, 1), prompt(4, 2));
    let mut cpu = CpuBatch::new(&m, 1, 48, KV).unwrap();
    let solo_a = run(&mut cpu, std::slice::from_ref(&pa), 20, greedy)[0].clone();
    let solo_b = run(&mut cpu, std::slice::from_ref(&pb), 20, greedy)[0].clone();
    // Chunks of 8 steps: the prefill makes token 0, the first chunk tokens 1 to 8. Stop A
    // at the first token of 3..8 not seen before it: inside that chunk.
    let k = (3..8)
        .find(|&k| !solo_a[..k].contains(&solo_a[k]))
        .expect("a fresh token inside the first chunk");
    let stop_a = vec![solo_a[k], 1000]; // 1000: past the vocabulary, never sampled
    // B's stop tokens never come up: it runs to its length.
    let stop_b: Vec<u32> = (0..256).filter(|t| !solo_b.contains(t)).take(3).collect();
    let requests = [
        Request {
            prompt: pa.clone(),
            max_tokens: 20,
            sampling: greedy,
            stop: stop_a,
        },
        Request {
            prompt: pb.clone(),
            max_tokens: 20,
            sampling: greedy,
            stop: stop_b,
        },
    ];
    let events = |dec: &mut dyn Decoder| {
        let mut batcher = Batcher::new(2, 48, 8).unwrap();
        for r in &requests {
            batcher.submit(r.clone()).unwrap();
        }
        let mut all = Vec::new();
        while !batcher.is_idle() {
            all.extend(pollster::block_on(batcher.round(dec)).unwrap());
            assert!(all.len() < 1000, "the batcher does not finish");
        }
        all
    };
    let check = |all: Vec<Event>, on: &str| {
        let mut tokens: [Vec<u32>; 2] = Default::default();
        let mut finish: [Option<Finish>; 2] = [None, None];
        for e in all {
            match e {
                Event::Token { id, token } => {
                    assert!(
                        finish[id as usize].is_none(),
                        "{on}: request {id} after its end"
                    );
                    tokens[id as usize].push(token);
                }
                Event::Finished { id, finish: f } => finish[id as usize] = Some(f),
                Event::Failed { id, error } => panic!("{on}: request {id}: {error}"),
            }
        }
        assert_eq!(
            tokens[0],
            solo_a[..=k],
            "{on}: A ends at its stop token {k}"
        );
        assert_eq!(finish[0], Some(Finish::Stop), "{on}");
        assert_eq!(tokens[1], solo_b, "{on}: B is untouched");
        assert_eq!(finish[1], Some(Finish::Length), "{on}");
    };
    check(events(&mut CpuBatch::new(&m, 2, 48, KV).unwrap()), "cpu");
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 48, KV).unwrap();
        check(events(&mut dec), &gpu.describe());
    }
}

/// A callback that stops `generate` in the middle of a decode chunk ends the run at that
/// step: every sequence's tokens up to it, none after, the same as the unstopped run's.
#[test]
fn a_stop_inside_a_decode_chunk_ends_generation_at_that_step() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 44, true);
    let prompts = vec![prompt(3, 7), prompt(5, 8)];
    let mut cpu = CpuBatch::new(&m, 2, 48, KV).unwrap();
    let full = run(&mut cpu, &prompts, 16, SamplingParams::greedy());
    // Chunks of 4 then 8 steps: token 6 is inside the second chunk.
    let stop_at = 6;
    let stopped = |dec: &mut dyn Decoder| {
        let options = GenerateOptions::new(16, SamplingParams::greedy());
        let mut streamed = vec![Vec::new(); 2];
        let g = generate(dec, &prompts, &options, |ev| {
            streamed[ev.seq].push(ev.token);
            if ev.seq == 0 && ev.index == stop_at {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert!(g.stats.stopped);
        assert_eq!(g.tokens, streamed);
        g.tokens
    };
    let want: Vec<Vec<u32>> = full.iter().map(|t| t[..=stop_at].to_vec()).collect();
    assert_eq!(stopped(&mut cpu), want, "cpu");
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 2, 48, KV).unwrap();
        assert_eq!(stopped(&mut dec), want, "{}", gpu.describe());
    }
}

/// A sequence's logits are the same bits whatever else shares its step, up to
/// GEMV_MAX_ROWS rows (what `walsh serve` promises with its default --max-batch): a
/// prefill of three prompts (9 rows) and a decode step of 16 sequences against each
/// sequence alone. (Past 16 rows the products take the tiled GEMM, which sums in another
/// order: six of these prompts prefilled together, 18 rows, differ from alone.)
#[test]
fn logits_do_not_depend_on_the_batch_up_to_sixteen_rows() {
    use crate::ops::matmul::GEMV_MAX_ROWS;
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 9, true);
    let prompts: Vec<Vec<u32>> = (0..GEMV_MAX_ROWS)
        .map(|i| prompt(2 + i % 3, i as u32))
        .collect();
    for gpu in test_gpus() {
        let mut alone = GpuDecoder::new(&gpu, &m, 1, 48, KV).unwrap();
        let mut solo = |p: &[u32], next: u32| {
            alone.reset();
            let prefill = alone.forward_logits(&[(0, p)]).unwrap().remove(0);
            let step = alone.forward_logits(&[(0, &[next])]).unwrap().remove(0);
            (prefill, step)
        };
        let mut batched = GpuDecoder::new(&gpu, &m, GEMV_MAX_ROWS, 48, KV).unwrap();
        let three: Vec<(usize, &[u32])> = (0..3).map(|i| (i, &prompts[i][..])).collect();
        let prefill = batched.forward_logits(&three).unwrap();
        batched.reset();
        // Prefilled one by one (as walsh serve does), then one step of all sixteen.
        for (i, p) in prompts.iter().enumerate() {
            batched.forward_logits(&[(i, &p[..])]).unwrap();
        }
        let step: Vec<(usize, &[u32])> = (0..GEMV_MAX_ROWS).map(|i| (i, &[7u32][..])).collect();
        let decoded = batched.forward_logits(&step).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let (want_prefill, want_step) = solo(p, 7);
            if i < 3 {
                assert!(
                    prefill[i] == want_prefill,
                    "prefill of {i} on {}",
                    gpu.describe()
                );
            }
            assert!(
                decoded[i] == want_step,
                "decode step of {i} on {}",
                gpu.describe()
            );
        }
    }
}

/// A decoder that records how many sequences each decode chunk it is given has, the
/// prompt lengths it is prepared for, and the tokens each started step takes from the
/// latest chunk.
struct ChunkRows<'d> {
    inner: &'d mut dyn Decoder,
    rows: Vec<usize>,
    prepared: Vec<Vec<usize>>,
    from_chunk: Vec<Vec<usize>>,
}

impl<'d> ChunkRows<'d> {
    fn new(inner: &'d mut dyn Decoder) -> Self {
        Self {
            inner,
            rows: Vec::new(),
            prepared: Vec::new(),
            from_chunk: Vec::new(),
        }
    }
}

impl Decoder for ChunkRows<'_> {
    fn max_seqs(&self) -> usize {
        self.inner.max_seqs()
    }
    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn reset_sequence(&mut self, seq: usize) {
        self.inner.reset_sequence(seq)
    }
    fn step<'a>(
        &'a mut self,
        batch: &'a [(usize, &'a [u32])],
        sampling: &'a SamplingParams,
        draws: &'a [f32],
    ) -> StepFuture<'a, Vec<u32>> {
        self.inner.step(batch, sampling, draws)
    }
    fn logits<'a>(&'a mut self, batch: &'a [(usize, &'a [u32])]) -> StepFuture<'a, Vec<Vec<f32>>> {
        self.inner.logits(batch)
    }
    fn start_decode(
        &mut self,
        seqs: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<Chunk, ModelError> {
        self.rows.push(seqs.len());
        self.inner.start_decode(seqs, sampling, draws)
    }
    fn finish_decode(&mut self, chunk: Chunk) -> StepFuture<'_, Vec<u32>> {
        self.inner.finish_decode(chunk)
    }
    fn start_step(
        &mut self,
        batch: &[(usize, &[u32])],
        from_chunk: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Option<Result<Chunk, ModelError>> {
        self.from_chunk.push(from_chunk.to_vec());
        self.inner.start_step(batch, from_chunk, sampling, draws)
    }
    fn takes_chunk_tokens(&self) -> bool {
        self.inner.takes_chunk_tokens()
    }
    fn prepare(&mut self, prompts: &[usize], sampling: &SamplingParams) -> Result<(), ModelError> {
        self.prepared.push(prompts.to_vec());
        self.inner.prepare(prompts, sampling)
    }
    fn device(&self) -> String {
        self.inner.device()
    }
    fn kv_format(&self) -> KvFormat {
        self.inner.kv_format()
    }
}

/// generate prepares the decoder for its prompts, and first for the re-prefill of the
/// context's last half where a sequence will fill its context.
#[test]
fn generate_prepares_for_the_prompts_and_a_context_slide() {
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 3, false);
    let prompts = [prompt(5, 1), prompt(9, 2)];
    for (tokens, want) in [(10, vec![vec![5, 9]]), (30, vec![vec![16, 16], vec![5, 9]])] {
        let mut cpu = CpuBatch::new(&m, 2, 32, KvFormat::F32).unwrap();
        let mut recorded = ChunkRows::new(&mut cpu);
        run(&mut recorded, &prompts, tokens, SamplingParams::greedy());
        assert_eq!(recorded.prepared, want, "{tokens} tokens");
    }
}

/// 32 requests at once (what `walsh serve --max-batch 32` runs): each gets the tokens it
/// gets alone on the same device, greedy and seeded, and no decode chunk has more than
/// CHUNK_ROWS rows, the batch up to which the logits test above pins every row's bits.
#[test]
fn thirty_two_requests_at_once_each_get_their_solo_tokens() {
    use crate::model::batch::CHUNK_ROWS;
    let m = model(config(64, AttnOutput::Hadamard, Query::Dense), 11, true);
    let requests: Vec<Request> = (0..32)
        .map(|i| Request {
            prompt: prompt(2 + i % 5, 100 + i as u32),
            max_tokens: 4 + i % 3,
            stop: Vec::new(),
            sampling: if i % 4 == 3 {
                SamplingParams {
                    temperature: 0.9,
                    top_k: 0,
                    top_p: 1.0,
                    seed: i as u64,
                }
            } else {
                SamplingParams::greedy()
            },
        })
        .collect();
    let check = |dec: &mut dyn Decoder, on: &str| {
        let solo: Vec<Vec<u32>> = requests
            .iter()
            .map(|r| {
                let mut batcher = Batcher::new(1, 48, 8).unwrap();
                batcher.submit(r.clone()).unwrap();
                let mut tokens = Vec::new();
                while !batcher.is_idle() {
                    for event in pollster::block_on(batcher.round(dec)).unwrap() {
                        if let Event::Token { token, .. } = event {
                            tokens.push(token);
                        }
                    }
                }
                tokens
            })
            .collect();
        let mut recorded = ChunkRows::new(dec);
        let mut batcher = Batcher::new(32, 48, 8).unwrap();
        for r in &requests {
            batcher.submit(r.clone()).unwrap();
        }
        let mut together: BTreeMap<RequestId, Vec<u32>> = BTreeMap::new();
        while !batcher.is_idle() {
            for event in pollster::block_on(batcher.round(&mut recorded)).unwrap() {
                match event {
                    Event::Token { id, token } => together.entry(id).or_default().push(token),
                    Event::Finished { .. } => {}
                    Event::Failed { id, error } => panic!("request {id} on {on}: {error}"),
                }
            }
        }
        for (id, tokens) in &together {
            assert_eq!(tokens, &solo[*id as usize], "request {id} on {on}");
        }
        assert_eq!(together.len(), 32, "{on}");
        // 24 greedy and 8 seeded: chunks of 16, 8 and 8 rows.
        assert_eq!(recorded.rows.iter().max(), Some(&CHUNK_ROWS), "{on}");
    };
    check(&mut CpuBatch::new(&m, 32, 48, KV).unwrap(), "cpu");
    for gpu in test_gpus() {
        let mut dec = GpuDecoder::new(&gpu, &m, 32, 48, KV).unwrap();
        check(&mut dec, &gpu.describe());
    }
}
