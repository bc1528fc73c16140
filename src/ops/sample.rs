//! Token sampling (`shaders/sample.wgsl`) and its CPU twin.
//!
//! The rule, identical on both sides:
//! - `temperature <= 0`: greedy, the largest logit (the lowest index among ties);
//! - otherwise weights `w_i = exp((l_i - max) / temperature)`;
//! - top-k (`0 < top_k < vocab`): keep logits >= the k-th largest logit (ties kept);
//! - top-p (`top_p < 1`): of those, keep logits >= the largest threshold whose kept weight
//!   is still at least `top_p` times the top-k weight;
//! - draw: with `u` uniform in [0, 1), pick the first kept index, in vocabulary order,
//!   whose running weight exceeds `u` times the kept weight.
//!
//! `u` comes from [`SampleRng`], seeded by the user, one number per sequence and step, so
//! a seed reproduces a generation on every device.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, MemoryCategory, PipelineKey, Record, Shader};

/// Invocations per workgroup; passed to the shader as `SAMPLE_WG` (at most 256, the size
/// of its reduction arrays, and at most CAND_SLOTS / CAND = 64, its top-k candidates'
/// slots in sample.wgsl).
const SAMPLE_WORKGROUP: u32 = 64;
const _: () = assert!(SAMPLE_WORKGROUP * 16 <= 1024);

/// How to pick the next token.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 (or below) is greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens up to this probability mass; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Always the most likely token (temperature 0): the setting under which every
    /// device generates the same tokens.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }

    /// Errors on values that have no meaning (NaN, negative top-p, ...).
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err(format!(
                "temperature {} is not a finite number",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// The random numbers of sampling: splitmix64, one `next_unit` per sequence per step.
#[derive(Clone, Debug)]
pub struct SampleRng(u64);

impl SampleRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A number uniform in [0, 1) with 24 random bits (exact in f32).
    pub fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Order-preserving map from f32 to u32, as `key_of` in sample.wgsl.
fn key_of(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The kept set's threshold key and the weights, per the rule in the module docs.
fn threshold(logits: &[f32], p: &SamplingParams) -> (u32, Vec<f64>) {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / p.temperature) as f64).exp())
        .collect();
    let keys: Vec<u32> = logits.iter().map(|&l| key_of(l)).collect();
    let mut tk = 0u32;
    if p.top_k > 0 && p.top_k < logits.len() {
        let mut sorted = keys.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        tk = sorted[p.top_k - 1];
    }
    let mass = |t: u32| -> f64 {
        keys.iter()
            .zip(&weights)
            .filter(|(k, _)| **k >= t)
            .map(|(_, w)| w)
            .sum()
    };
    let mut tau = tk;
    if p.top_p < 1.0 {
        let target = p.top_p as f64 * mass(tk);
        // The largest kept key whose mass from there up still reaches the target.
        let mut candidates: Vec<u32> = keys.iter().copied().filter(|&k| k >= tk).collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        tau = candidates
            .into_iter()
            .find(|&t| mass(t) >= target)
            .unwrap_or(tk);
    }
    (tau, weights)
}

/// The kept tokens and the cumulative kept weight at the end of each, in vocabulary order,
/// plus the total (for tests that check where a draw lands).
pub fn kept_intervals(logits: &[f32], p: &SamplingParams) -> (Vec<(u32, f64)>, f64) {
    let (tau, weights) = threshold(logits, p);
    let mut run = 0.0;
    let mut out = Vec::new();
    for (i, &l) in logits.iter().enumerate() {
        if key_of(l) >= tau {
            run += weights[i];
            out.push((i as u32, run));
        }
    }
    (out, run)
}

/// The CPU sampler: picks a token from `logits` with the uniform number `u` in [0, 1).
pub fn sample_reference(logits: &[f32], p: &SamplingParams, u: f32) -> u32 {
    if p.temperature <= 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if key_of(l) > key_of(logits[best]) {
                best = i;
            }
        }
        return best as u32;
    }
    let (kept, total) = kept_intervals(logits, p);
    let target = u as f64 * total;
    kept.iter()
        .find(|(_, end)| *end > target)
        .or(kept.last())
        .map_or(0, |(i, _)| *i)
}

/// Uniform parameters; must match `Params` in sample.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct SampleParams {
    vocab: u32,
    count: u32,
    top_k: u32,
    tiles_x: u32,
    temperature: f32,
    top_p: f32,
    chunks: u32,
    _pad: u32,
}

/// Bindings of `sample` and `row_max`: params, logits, rows, draws, tokens, partial.
const BINDINGS: [Binding; 6] = [Uniform, ReadOnly, ReadOnly, ReadOnly, ReadWrite, ReadWrite];

/// Logits one `row_max` workgroup scans; must match ROW_CHUNK in sample.wgsl. A row over
/// one chunk (32k-128k vocabularies) has its largest logit found by a workgroup per chunk
/// before `sample` runs, so greedy decoding is not one workgroup walking the row.
const ROW_CHUNK: usize = 4096;

/// Records sampling of `count` sequences: sequence s picks from logits row `rows[s]`
/// (u32) of `logits` ([.., vocab] f32) with the uniform number `draws[s]` (f32), writing
/// `tokens[s]` (u32).
#[allow(clippy::too_many_arguments)]
pub fn encode_sample(
    gpu: &Gpu,
    pass: &mut dyn Record,
    logits: &GpuBuffer,
    rows: &GpuBuffer,
    draws: &GpuBuffer,
    tokens: &GpuBuffer,
    count: usize,
    vocab: usize,
    params: &SamplingParams,
) -> Result<(), GpuError> {
    let buffers = [logits, rows, draws, tokens];
    encode_sample_with(gpu, pass, buffers, count, vocab, params, Sampler::Auto)
}

/// How [`encode_sample_with`] finds a row's largest logit and thresholds; every version
/// picks the same token. Kept for testing and timing them side by side.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// [`Sampler::Slices`] on GPUs, [`Sampler::OneWalk`] on CPU adapters: there the extra
    /// dispatch costs more than the slices save (`sampler_timing`, docs/kernels.md).
    Auto,
    /// The row's maximum by `row_max` workgroups over slices of ROW_CHUNK logits, then
    /// `sample` (for rows over one slice).
    Slices,
    /// `sample` alone, one workgroup walking each row.
    OneWalk,
    /// The first version, one workgroup walking each row, which finds the thresholds by
    /// passes over the whole row (about 67 at top-k 40, top-p 0.95).
    Legacy,
}

/// [`encode_sample`] (buffers logits, rows, draws, tokens) by the given version.
#[doc(hidden)]
pub fn encode_sample_with(
    gpu: &Gpu,
    pass: &mut dyn Record,
    [logits, rows, draws, tokens]: [&GpuBuffer; 4],
    count: usize,
    vocab: usize,
    params: &SamplingParams,
    version: Sampler,
) -> Result<(), GpuError> {
    params.validate().map_err(GpuError::Validation)?;
    logits.require("logits", (vocab * 4) as u64)?;
    rows.require("rows", (count * 4) as u64)?;
    draws.require("draws", (count * 4) as u64)?;
    tokens.require("tokens", (count * 4) as u64)?;
    if count == 0 {
        return Ok(());
    }
    if vocab == 0 {
        return Err(GpuError::Validation(
            "cannot sample from an empty vocabulary".into(),
        ));
    }
    let slices = match version {
        Sampler::Auto => !gpu.is_cpu_adapter(),
        Sampler::Slices => true,
        Sampler::OneWalk | Sampler::Legacy => false,
    };
    let legacy = version == Sampler::Legacy;
    let chunks = if slices { vocab.div_ceil(ROW_CHUNK) } else { 1 };
    let partial = if chunks > 1 {
        let bytes = (count * chunks * 8) as u64;
        Some(gpu.storage(MemoryCategory::Scratch, "sample row maxima", bytes)?)
    } else {
        None
    };
    let partial = partial.as_ref().unwrap_or_else(|| gpu.spare_storage());
    let mut stage = |entry: &'static str, workgroups: usize| -> Result<(), GpuError> {
        let key = PipelineKey::new(Shader::Sample, entry)
            .with("SAMPLE_WG", SAMPLE_WORKGROUP)
            .with_flag("LEGACY", legacy);
        let pipeline = gpu.pipeline(&key, &BINDINGS)?;
        let grid = gpu.grid(entry, workgroups as u32)?;
        let uniform = gpu.uniform(
            "sample params",
            &SampleParams {
                vocab: vocab as u32,
                count: count as u32,
                top_k: params.top_k.min(u32::MAX as usize) as u32,
                tiles_x: grid.x,
                temperature: params.temperature,
                top_p: params.top_p,
                chunks: chunks as u32,
                _pad: 0,
            },
        );
        let buffers = [
            uniform.buffer(),
            logits.buffer(),
            rows.buffer(),
            draws.buffer(),
            tokens.buffer(),
            partial.buffer(),
        ];
        gpu.dispatch(pass, &pipeline, &buffers, grid);
        Ok(())
    };
    if chunks > 1 {
        stage("row_max", count * chunks)?;
    }
    stage("sample", count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::MemoryCategory;
    use crate::gpu::testing::{test_gpus, test_values};

    #[test]
    fn cpu_rule_by_hand() {
        let l = [1.0, 3.0, 3.0, 0.0, 2.0];
        assert_eq!(
            sample_reference(&l, &SamplingParams::greedy(), 0.5),
            1,
            "lowest index of ties"
        );
        let top1 = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 0,
        };
        // top-1 keeps both tied maxima: u splits between them.
        assert_eq!(sample_reference(&l, &top1, 0.1), 1);
        assert_eq!(sample_reference(&l, &top1, 0.9), 2);
        // Weights e^(l - 3) = [e^-2, 1, 1, e^-3, e^-1]; total = 2.6386...
        let all = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        let w: Vec<f64> = l.iter().map(|&v| (v as f64 - 3.0).exp()).collect();
        let total: f64 = w.iter().sum();
        assert_eq!(sample_reference(&l, &all, (w[0] * 0.5 / total) as f32), 0);
        assert_eq!(sample_reference(&l, &all, ((w[0] + 0.5) / total) as f32), 1);
        assert_eq!(sample_reference(&l, &all, 0.999), 4);
        // top-p 0.5: the two maxima hold 2/2.64 = 76% >= 50%, one alone 38% < 50%.
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 0,
        };
        let (kept, _) = kept_intervals(&l, &p);
        assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = SampleRng::new(7);
        let mut b = SampleRng::new(7);
        let xs: Vec<f32> = (0..1000).map(|_| a.next_unit()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert_eq!(xs, (0..1000).map(|_| b.next_unit()).collect::<Vec<_>>());
        let mean = xs.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn gpu_sampler_follows_the_cpu_rule() {
        for gpu in test_gpus() {
            let vocab = 300; // not a multiple of the workgroup
            let seqs = 5;
            let all: Vec<f32> = (0..seqs as u64 + 2)
                .flat_map(|s| test_values(vocab, s))
                .map(|v| v * 4.0)
                .collect();
            // Sample rows 6, 0, 3, 1, 5 of the 7.
            let rows: Vec<u32> = vec![6, 0, 3, 1, 5];
            let mut rng = SampleRng::new(11);
            let draws: Vec<f32> = (0..seqs).map(|_| rng.next_unit()).collect();
            let lb = gpu
                .upload(MemoryCategory::Activations, "logits", &all)
                .unwrap();
            let rb = gpu
                .upload(MemoryCategory::Activations, "rows", &rows)
                .unwrap();
            let db = gpu
                .upload(MemoryCategory::Activations, "draws", &draws)
                .unwrap();
            let settings = [
                SamplingParams::greedy(),
                SamplingParams {
                    temperature: 1.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed: 0,
                },
                SamplingParams {
                    temperature: 0.7,
                    top_k: 5,
                    top_p: 1.0,
                    seed: 0,
                },
                SamplingParams {
                    temperature: 1.3,
                    top_k: 0,
                    top_p: 0.6,
                    seed: 0,
                },
                SamplingParams {
                    temperature: 0.9,
                    top_k: 40,
                    top_p: 0.9,
                    seed: 0,
                },
            ];
            for p in settings {
                let tb = gpu
                    .storage(MemoryCategory::Activations, "tokens", 4 * seqs as u64)
                    .unwrap();
                let mut enc = gpu.encoder("sample test");
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    encode_sample(&gpu, &mut pass, &lb, &rb, &db, &tb, seqs, vocab, &p).unwrap();
                }
                gpu.submit_and_wait(enc).unwrap();
                let got: Vec<u32> = gpu.read(&tb, seqs).unwrap();
                for (s, &tok) in got.iter().enumerate() {
                    let row = &all[rows[s] as usize * vocab..][..vocab];
                    let want = sample_reference(row, &p, draws[s]);
                    if tok == want {
                        continue;
                    }
                    // Summation order differs: accept only a neighbour of the CPU's pick
                    // whose boundary lies within rounding of the draw.
                    let (kept, total) = kept_intervals(row, &p);
                    let target = draws[s] as f64 * total;
                    let near = kept.iter().any(|&(i, end)| {
                        (i == tok || i == want) && (end - target).abs() <= 1e-5 * total
                    });
                    assert!(
                        near,
                        "{p:?} seq {s} on {}: GPU {tok}, CPU {want}",
                        gpu.describe()
                    );
                }
            }
        }
    }

    /// Records sampling of `seqs` rows of `logits` (row s for sequence s) with `draws`.
    fn sample_on(
        gpu: &Gpu,
        logits: &[f32],
        draws: &[f32],
        vocab: usize,
        p: &SamplingParams,
        version: Sampler,
    ) -> Vec<u32> {
        let seqs = draws.len();
        let rows: Vec<u32> = (0..seqs as u32).collect();
        let up = |label: &str, bytes: &[u8]| {
            gpu.upload(MemoryCategory::Activations, label, bytes)
                .unwrap()
        };
        let lb = up("logits", bytemuck::cast_slice(logits));
        let rb = up("rows", bytemuck::cast_slice(&rows));
        let db = up("draws", bytemuck::cast_slice(draws));
        let tb = gpu
            .storage(MemoryCategory::Activations, "tokens", 4 * seqs as u64)
            .unwrap();
        let mut enc = gpu.encoder("sample test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let buffers = [&lb, &rb, &db, &tb];
            encode_sample_with(gpu, &mut pass, buffers, seqs, vocab, p, version).unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        gpu.read(&tb, seqs).unwrap()
    }

    /// The radix select and the top-p search over the gathered top-k candidates find the
    /// thresholds of the row passes exactly: the same tokens as the first version, with
    /// ties (rows of values on a grid of 1/8), a top-k whose candidates overflow an
    /// invocation's slots (2,000 of 5,000: the row passes again) and top-1.
    #[test]
    fn radix_top_k_and_candidate_top_p_pick_the_row_passes_tokens() {
        for gpu in test_gpus() {
            let vocab = 5000;
            let seqs = 12;
            let logits: Vec<f32> = (0..seqs as u64)
                .flat_map(|s| {
                    let grid = s % 3 == 0; // ties
                    test_values(vocab, 100 + s).into_iter().map(move |v| {
                        let v = v * 6.0;
                        if grid { (v * 8.0).round() / 8.0 } else { v }
                    })
                })
                .collect();
            let mut rng = SampleRng::new(3);
            let draws: Vec<f32> = (0..seqs).map(|_| rng.next_unit()).collect();
            for (top_k, top_p, temperature) in [
                (40, 0.95, 0.8),
                (40, 0.5, 1.3),
                (3, 1.0, 1.0),
                (1, 0.9, 1.0),
                (2000, 0.9, 0.7),
                (4999, 0.3, 1.0),
                (0, 0.9, 1.0),
            ] {
                let p = SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed: 0,
                };
                let fast = sample_on(&gpu, &logits, &draws, vocab, &p, Sampler::Slices);
                let legacy = sample_on(&gpu, &logits, &draws, vocab, &p, Sampler::Legacy);
                assert_eq!(fast, legacy, "{p:?} on {}", gpu.describe());
                let one = sample_on(&gpu, &logits, &draws, vocab, &p, Sampler::OneWalk);
                assert_eq!(one, legacy, "{p:?} on {}", gpu.describe());
                for (s, &tok) in fast.iter().enumerate() {
                    let row = &logits[s * vocab..][..vocab];
                    let (kept, _) = kept_intervals(row, &p);
                    assert!(
                        kept.iter().any(|&(i, _)| i == tok),
                        "{p:?} seq {s} on {}: {tok} is not kept by the CPU rule",
                        gpu.describe()
                    );
                }
            }
        }
    }

    /// Greedy over rows of three `row_max` slices (ROW_CHUNK 4096): the largest logit with
    /// the lowest index among ties, wherever the maximum falls: tied across a slice
    /// boundary, at the row's last index, tied in two slices, a constant row, a row of
    /// negative logits; the CPU rule's token and the single-workgroup walk's.
    #[test]
    fn greedy_over_row_slices_takes_the_lowest_index_of_the_largest() {
        let vocab: usize = 10_000;
        assert_eq!(vocab.div_ceil(ROW_CHUNK), 3);
        let mut rows: Vec<Vec<f32>> = (0..5).map(|s| test_values(vocab, 40 + s)).collect();
        rows[0][4095] = 5.0;
        rows[0][4096] = 5.0;
        rows[1][vocab - 1] = 5.0;
        rows[2][9000] = 5.0;
        rows[2][5000] = 5.0;
        rows[3] = vec![0.25; vocab];
        rows[4].iter_mut().for_each(|v| *v = -3.0 - v.abs());
        rows[4][7777] = -0.5;
        let want = [4095, vocab as u32 - 1, 5000, 0, 7777];
        let logits: Vec<f32> = rows.concat();
        let draws = vec![0.5; rows.len()];
        let p = SamplingParams::greedy();
        for (row, &w) in rows.iter().zip(&want) {
            assert_eq!(sample_reference(row, &p, 0.5), w);
        }
        for gpu in test_gpus() {
            for version in [Sampler::Slices, Sampler::OneWalk, Sampler::Legacy] {
                let got = sample_on(&gpu, &logits, &draws, vocab, &p, version);
                assert_eq!(got, want, "{version:?} on {}", gpu.describe());
            }
        }
    }

    /// Times the sampler's versions (one walk per row, row slices) against its first at
    /// Llama 2's and Llama 3's vocabulary sizes, alternating, and prints the ratios (run by hand: `cargo test --lib
    /// sampler_timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn sampler_timing() {
        use crate::gpu::Recording;
        use crate::gpu::profile::time_recording;
        for gpu in test_gpus() {
            for (vocab, seqs) in [(32_000, 1), (32_000, 4), (128_256, 1), (128_256, 4)] {
                let logits: Vec<f32> = test_values(vocab * seqs, 9)
                    .iter()
                    .map(|v| v * 8.0)
                    .collect();
                let rows: Vec<u32> = (0..seqs as u32).collect();
                let draws = vec![0.5f32; seqs];
                let up = |label: &str, bytes: &[u8]| {
                    gpu.upload(MemoryCategory::Activations, label, bytes)
                        .unwrap()
                };
                let lb = up("logits", bytemuck::cast_slice(&logits));
                let rb = up("rows", bytemuck::cast_slice(&rows));
                let db = up("draws", bytemuck::cast_slice(&draws));
                let tb = gpu
                    .storage(MemoryCategory::Activations, "tokens", 4 * seqs as u64)
                    .unwrap();
                for p in [SamplingParams::greedy(), SamplingParams::default()] {
                    let versions = [Sampler::Legacy, Sampler::OneWalk, Sampler::Slices];
                    let recs = versions.map(|version| {
                        let mut rec = Recording::new();
                        let buffers = [&lb, &rb, &db, &tb];
                        encode_sample_with(&gpu, &mut rec, buffers, seqs, vocab, &p, version)
                            .unwrap();
                        rec
                    });
                    let mut times = [Vec::new(), Vec::new(), Vec::new()];
                    for _ in 0..5 {
                        for (i, r) in recs.iter().enumerate() {
                            let t = pollster::block_on(time_recording(&gpu, r, 5)).unwrap();
                            times[i].push(t.wall_seconds);
                        }
                    }
                    let [legacy, one, slices] = times.map(|mut v| {
                        v.sort_by(f64::total_cmp);
                        v[v.len() / 2]
                    });
                    eprintln!(
                        "{}: vocab {vocab}, {seqs} sequences, temperature {} top-k {} top-p {}: \
                         first version {:.3} ms, one walk {:.3} ms ({:.2}x), slices {:.3} ms \
                         ({:.2}x)",
                        gpu.describe(),
                        p.temperature,
                        p.top_k,
                        p.top_p,
                        legacy * 1e3,
                        one * 1e3,
                        legacy / one,
                        slices * 1e3,
                        legacy / slices
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_meaningless_settings() {
        let bad = SamplingParams {
            temperature: f32::NAN,
            ..SamplingParams::default()
        };
        assert!(bad.validate().is_err());
        let bad = SamplingParams {
            top_p: 0.0,
            ..SamplingParams::default()
        };
        assert!(bad.validate().unwrap_err().contains("top-p"));
        SamplingParams::default().validate().unwrap();
    }
}
