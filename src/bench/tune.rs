//! Measured kernel choices: every decode GEMV that can run a model's products is timed on
//! them, once per adapter, and the fastest is kept per weight format ([`Tuning`]). Names
//! are not enough to choose: on lavapipe one invocation per output wins, on SwiftShader's
//! WebGPU something else, on a big GPU a subgroup per output; the driver, not the vendor,
//! decides. The choice is cached by the adapter's [`Gpu::fingerprint`] (the CLI in a
//! file, the page in localStorage) in a [`TuningCache`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BenchError;
use super::measure::time_pass;
use crate::gpu::{Gpu, MemoryCategory, Tuning};
use crate::model::weights::{Model, stacked_format};
use crate::ops::matmul::{self, Epilogue, Kernel, Prologue};
use crate::ops::{Matrix, WeightFormat};

/// One product of a decode step: W is [n_out, n_in], run `count` times per step, its
/// input made by an RMSNorm prologue or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub n_out: usize,
    pub n_in: usize,
    pub count: usize,
    pub normed: bool,
}

impl Product {
    /// Rows of the matrix the tuner times: at most [`MAX_TUNE_ROWS`].
    pub fn tuned_rows(&self) -> usize {
        self.n_out.min(MAX_TUNE_ROWS)
    }

    /// What a time on [`Product::tuned_rows`] is multiplied by to stand for the whole
    /// product: its rows over the rows timed.
    pub fn rows_scale(&self) -> f64 {
        self.n_out as f64 / self.tuned_rows() as f64
    }
}

/// The timings of one weight format's products, each candidate GEMV's total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemvTune {
    pub format: WeightFormat,
    pub products: Vec<Product>,
    /// Per candidate (kernel name): µs of one decode step's products of this format,
    /// the median over rounds that alternate the candidates (one round for a candidate
    /// [`PRUNE_FACTOR`] behind the fastest in the first).
    pub candidates: Vec<(String, f64)>,
    /// The GEMVs over int8-quantized activations ([`Kernel::GemvDot4`]), timed in the
    /// same alternating rounds as `candidates` where asked for ([`tune_gemv_with`]) but
    /// never chosen: they change the numerics, and greedy tokens must not depend on the
    /// adapter. Empty where not timed (or for f32/f16 weights).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub int8: Vec<(String, f64)>,
    /// The fastest of `candidates` (exact GEMVs only).
    pub chosen: String,
}

impl GemvTune {
    /// The cache key of these products: format and shapes.
    pub fn key(&self) -> String {
        products_key(self.format, &self.products)
    }
}

fn products_key(format: WeightFormat, products: &[Product]) -> String {
    let shapes: Vec<String> = products
        .iter()
        .map(|p| {
            let norm = if p.normed { "n" } else { "" };
            format!("{}x{}x{}{norm}", p.n_out, p.n_in, p.count)
        })
        .collect();
    format!("{} {}", format.name(), shapes.join(" "))
}

/// The decode step's products of `model` by weight format (the head counts once, each
/// layer product once per layer; the query MLP's small products are left out).
pub fn decode_products(model: &Model) -> BTreeMap<WeightFormat, Vec<Product>> {
    let mut out: BTreeMap<WeightFormat, Vec<Product>> = BTreeMap::new();
    let layers = model.weights.layers.len();
    let mut add = |format: WeightFormat, n_out: usize, n_in: usize, count: usize, normed| {
        out.entry(format).or_default().push(Product {
            n_out,
            n_in,
            count,
            normed,
        });
    };
    let d = model.config.hidden_size;
    if let Some(l) = model.weights.layers.first() {
        let mut qkv: Vec<_> = l.q_proj.iter().collect();
        qkv.extend([&l.k_proj, &l.v_proj]);
        let rows: usize = qkv.iter().map(|t| t.shape[0]).sum();
        add(stacked_format(&qkv), rows, d, layers, true);
        if let Some(o) = &l.o_proj {
            add(o.format(), d, d, layers, false);
        }
        let gate_up = stacked_format(&[&l.gate_proj, &l.up_proj]);
        let inter = l.gate_proj.shape[0];
        add(gate_up, 2 * inter, d, layers, true);
        add(l.down_proj.format(), d, inter, layers, false);
    }
    let head = model
        .weights
        .lm_head
        .as_ref()
        .unwrap_or(&model.weights.embed_tokens);
    add(head.format(), head.shape[0], d, 1, true);
    out
}

fn values(count: usize, seed: usize) -> Vec<f32> {
    (0..count)
        .map(|i| (((i + seed) * 7919) % 1024) as f32 / 512.0 - 1.0)
        .collect()
}

/// A [n_out, n_in] matrix of `format`, transposed (f16) or not.
fn matrix(
    gpu: &Gpu,
    format: WeightFormat,
    n_out: usize,
    n_in: usize,
    transposed: bool,
) -> Result<Matrix, BenchError> {
    let w = values(n_out * n_in, n_out);
    Ok(match format {
        WeightFormat::F32 => Matrix::from_f32(gpu, "tune w", &w, n_out, n_in)?,
        WeightFormat::F16 => {
            let bits: Vec<u16> = w
                .iter()
                .map(|&v| half::f16::from_f32(v * 0.05).to_bits())
                .collect();
            if transposed {
                Matrix::from_f16_bits_transposed(gpu, "tune w", &bits, n_out, n_in)?
            } else {
                Matrix::from_f16_bits(gpu, "tune w", &bits, n_out, n_in)?
            }
        }
        WeightFormat::Q8 | WeightFormat::Q4 => {
            let quant = format.quant().expect("q8 and q4 are quantized");
            let q = crate::blocks::QuantMatrix::quantize(quant, n_out, n_in, &w)?;
            Matrix::from_quant(gpu, "tune w", &q)?
        }
    })
}

/// Most output rows of a product that [`tune_gemv`] runs: a taller product (a head of a
/// large vocabulary, 128256 rows for Llama 3) is timed on its first rows and its time
/// scaled by its rows. Every GEMV's time grows with the rows once they fill the GPU, and
/// the whole head made a one-workgroup-per-row GEMV take 9 s per run on SwiftShader
/// (and tuning a model take minutes in the page), or, for a large model's head, as much
/// memory as the head again.
pub const MAX_TUNE_ROWS: usize = 4096;

/// A candidate slower than this many times the fastest in the first round is not run in
/// the later ones: its one time stands (on SwiftShader the one-workgroup-per-row GEMVs run
/// 45x behind on a large head, and their rounds were most of the tuning's time).
pub const PRUNE_FACTOR: f64 = 4.0;

/// Times every GEMV that can run all of `products` in `format` on `gpu`, `rounds` times
/// alternating, and picks the fastest (products taller than [`MAX_TUNE_ROWS`] timed on
/// that many rows, scaled; candidates behind by [`PRUNE_FACTOR`] after the first round
/// dropped).
pub async fn tune_gemv(
    gpu: &Gpu,
    format: WeightFormat,
    products: &[Product],
    rounds: usize,
) -> Result<GemvTune, BenchError> {
    tune_gemv_with(gpu, format, products, rounds, false).await
}

/// [`tune_gemv`], also timing the int8-activation GEMV ([`Kernel::GemvDot4`]) for q8 and
/// q4 weights with `int8`: in the same rounds, recorded in [`GemvTune::int8`], never
/// chosen (nor counted when pruning).
pub async fn tune_gemv_with(
    gpu: &Gpu,
    format: WeightFormat,
    products: &[Product],
    rounds: usize,
    int8: bool,
) -> Result<GemvTune, BenchError> {
    // A candidate runs the products it can, and the others fall to the kernel the decoder
    // would then take (`Auto` does the same with the choice). Only f16 has gemv_cols,
    // which needs paired rows: it stores the matrices transposed.
    let transposable =
        format == WeightFormat::F16 && products.iter().all(|p| p.n_out.is_multiple_of(2));
    let dot4 = int8
        .then_some(Kernel::GemvDot4)
        .filter(|_| format.quant().is_some());
    let candidates: Vec<Kernel> = Kernel::GEMVS
        .into_iter()
        .chain(dot4)
        .filter(|k| {
            let transposed = *k == Kernel::GemvCols;
            (!transposed || transposable)
                && products
                    .iter()
                    .any(|p| k.runs(gpu, format, p.n_in, transposed))
        })
        .collect();
    struct Bound {
        w: Matrix,
        wt: Option<Matrix>,
        x: crate::gpu::GpuBuffer,
        y: crate::gpu::GpuBuffer,
        norm: crate::gpu::GpuBuffer,
    }
    let mut bound = Vec::with_capacity(products.len());
    for p in products {
        // Even where n_out is (gemv_cols pairs rows): MAX_TUNE_ROWS is.
        let rows = p.tuned_rows();
        bound.push(Bound {
            w: matrix(gpu, format, rows, p.n_in, false)?,
            wt: if transposable && candidates.contains(&Kernel::GemvCols) {
                Some(matrix(gpu, format, rows, p.n_in, true)?)
            } else {
                None
            },
            x: gpu.upload(MemoryCategory::Activations, "tune x", &values(p.n_in, 1))?,
            y: gpu.storage(MemoryCategory::Activations, "tune y", (rows * 4) as u64)?,
            norm: gpu.upload(MemoryCategory::Activations, "tune norm", &values(p.n_in, 2))?,
        });
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
    for round in 0..rounds.max(1) {
        // After the first round, a candidate far behind the fastest is not run again.
        let first: Vec<f64> = samples
            .iter()
            .map(|s| s.first().copied().unwrap_or(f64::INFINITY))
            .collect();
        let fastest = first
            .iter()
            .zip(&candidates)
            .filter(|(_, k)| k.exact())
            .map(|(t, _)| *t)
            .fold(f64::INFINITY, f64::min);
        for (c, &kernel) in candidates.iter().enumerate() {
            if round > 0 && first[c] > PRUNE_FACTOR * fastest {
                continue;
            }
            let mut total = 0.0;
            for (p, b) in products.iter().zip(&bound) {
                let (w, transposed) = match (&b.wt, kernel) {
                    (Some(wt), Kernel::GemvCols) => (wt, true),
                    _ => (&b.w, false),
                };
                let kernel = if kernel.runs(gpu, format, p.n_in, transposed) {
                    kernel
                } else {
                    Kernel::untuned_gemv(gpu, format, p.n_in, transposed)
                };
                let prologue = if p.normed && matmul::prologue_fits(gpu, 1, p.n_in, false) {
                    Prologue::Norm {
                        weight: &b.norm,
                        eps: 1e-5,
                        out: None,
                    }
                } else {
                    Prologue::None
                };
                let stats = time_pass(gpu, 1, |pass| {
                    Ok(matmul::encode_with_prologue(
                        gpu,
                        pass,
                        w,
                        &b.x,
                        &b.y,
                        1,
                        Epilogue::Store,
                        kernel,
                        prologue,
                    )?)
                })
                .await?;
                total += stats.median_s * p.count as f64 * p.rows_scale();
            }
            samples[c].push(total * 1e6);
        }
    }
    let (exact, approximate): (Vec<_>, Vec<_>) = candidates
        .iter()
        .zip(samples)
        .map(|(k, s)| {
            (
                k.exact(),
                k.name().to_string(),
                super::measure::Stats::from_samples(s).median_s,
            )
        })
        .partition(|c| c.0);
    let timed: Vec<(String, f64)> = exact.into_iter().map(|c| (c.1, c.2)).collect();
    let chosen = timed
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(name, _)| name.clone())
        .unwrap_or_else(|| Kernel::Gemv.name().to_string());
    Ok(GemvTune {
        format,
        products: products.to_vec(),
        candidates: timed,
        int8: approximate.into_iter().map(|c| (c.1, c.2)).collect(),
        chosen,
    })
}

/// The [`Tuning`] that runs `kernel` (an exact GEMV) for every weight format of `model`
/// whose products it can all run on `gpu`, measuring nothing: `WALSH_TUNE=<name>`, to
/// compare GEMVs inside whole steps. Formats it cannot run keep the choice by adapter
/// type; `gemv_cols` stores the f16 matrices transposed, as a measured choice of it does.
pub fn forced_tuning(gpu: &Gpu, model: &Model, kernel: Kernel) -> Tuning {
    let mut tuning = Tuning::default();
    for (format, products) in decode_products(model) {
        let transposed = kernel == Kernel::GemvCols;
        let layout = !transposed
            || (format == WeightFormat::F16 && products.iter().all(|p| p.n_out.is_multiple_of(2)));
        if kernel.exact()
            && layout
            && products
                .iter()
                .all(|p| kernel.runs(gpu, format, p.n_in, transposed))
        {
            tuning
                .gemv
                .insert(format.name().to_string(), kernel.name().to_string());
        }
    }
    tuning
}

/// Measured choices by adapter fingerprint, then by [`GemvTune::key`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TuningCache {
    pub version: u32,
    pub adapters: BTreeMap<String, BTreeMap<String, GemvTune>>,
}

/// Bumped when the cache's meaning changes; older caches are ignored.
pub const CACHE_VERSION: u32 = 1;

impl TuningCache {
    /// Parses a cache; one of another version, or unreadable, counts as empty (it is
    /// only ever a record of measurements, made again when missing).
    pub fn parse(text: &str) -> Self {
        match serde_json::from_str::<TuningCache>(text) {
            Ok(c) if c.version == CACHE_VERSION => c,
            _ => Self::default(),
        }
    }

    pub fn to_json(&self) -> String {
        let mut c = self.clone();
        c.version = CACHE_VERSION;
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }

    /// The [`Tuning`] for `model` on `gpu` from the cache: complete (`true`) when every
    /// weight format of the model's products has an entry.
    pub fn tuning(&self, gpu: &Gpu, model: &Model) -> (Tuning, bool) {
        let entries = self.adapters.get(&gpu.fingerprint());
        let mut tuning = Tuning::default();
        let mut complete = true;
        for (format, products) in decode_products(model) {
            match entries.and_then(|e| e.get(&products_key(format, &products))) {
                Some(t) => {
                    tuning
                        .gemv
                        .insert(format.name().to_string(), t.chosen.clone());
                }
                None => complete = false,
            }
        }
        (tuning, complete)
    }

    pub fn insert(&mut self, gpu: &Gpu, tune: GemvTune) {
        self.adapters
            .entry(gpu.fingerprint())
            .or_default()
            .insert(tune.key(), tune);
    }
}

/// Alternating rounds of the benchmarks' measurement of their models' GEMVs.
const BENCH_ROUNDS: usize = 3;

/// The [`Tuning`] for `model` on `gpu` as the benchmarks use it: measured once per model
/// shape and adapter in this process (the random models of a run share few shapes).
pub async fn tuning_for(gpu: &Gpu, model: &Model) -> Result<Tuning, BenchError> {
    static MEMO: std::sync::Mutex<Option<TuningCache>> = std::sync::Mutex::new(None);
    let lock = || MEMO.lock().unwrap_or_else(|p| p.into_inner());
    let mut cache = lock().clone().unwrap_or_default();
    let (tuning, complete) = cache.tuning(gpu, model);
    if complete {
        return Ok(tuning);
    }
    let (tuning, _) = tune_model(gpu, model, BENCH_ROUNDS, &mut cache).await?;
    *lock() = Some(cache);
    Ok(tuning)
}

/// Measures the GEMVs of every weight format of `model` on `gpu` (`rounds` alternating
/// rounds), records them in `cache`, and returns the [`Tuning`] they give.
pub async fn tune_model(
    gpu: &Gpu,
    model: &Model,
    rounds: usize,
    cache: &mut TuningCache,
) -> Result<(Tuning, Vec<GemvTune>), BenchError> {
    tune_model_with(gpu, model, rounds, false, cache).await
}

/// [`tune_model`], also timing the int8-activation GEMV with `int8` ([`tune_gemv_with`];
/// `walsh tune` does, the automatic tuning of other commands does not). The choices are
/// the same: exact GEMVs only.
pub async fn tune_model_with(
    gpu: &Gpu,
    model: &Model,
    rounds: usize,
    int8: bool,
    cache: &mut TuningCache,
) -> Result<(Tuning, Vec<GemvTune>), BenchError> {
    let mut tuning = Tuning::default();
    let mut tunes = Vec::new();
    for (format, products) in decode_products(model) {
        let t = tune_gemv_with(gpu, format, &products, rounds, int8).await?;
        tuning
            .gemv
            .insert(format.name().to_string(), t.chosen.clone());
        cache.insert(gpu, t.clone());
        tunes.push(t);
    }
    Ok((tuning, tunes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::test_gpus;
    use crate::model::init::random_model;
    use crate::model::{AttnOutput, Config};

    fn config(d: usize) -> Config {
        Config {
            hidden_size: d,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 96,
            vocab_size: 40,
            max_position_embeddings: 16,
            attn_output: AttnOutput::Dense,
            ..Default::default()
        }
    }

    #[test]
    fn products_follow_the_model() {
        let model = random_model(&config(64), 1, WeightFormat::Q4).unwrap();
        let by_format = decode_products(&model);
        // Layer matrices quantized; the head (tied to the f32 embedding) is not.
        let q4 = &by_format[&WeightFormat::Q4];
        let shape = |p: &Product| (p.n_out, p.n_in, p.count, p.normed);
        let shapes: Vec<_> = q4.iter().map(shape).collect();
        assert_eq!(
            shapes,
            [
                (192, 64, 2, true),
                (64, 64, 2, false),
                (192, 64, 2, true),
                (64, 96, 2, false)
            ]
        );
        let head: Vec<_> = by_format
            .values()
            .flatten()
            .filter(|p| p.count == 1)
            .collect();
        assert_eq!(head.len(), 1);
        assert_eq!(shape(head[0]), (40, 64, 1, true));
    }

    #[test]
    fn every_runnable_gemv_is_timed_and_the_fastest_chosen() {
        for gpu in test_gpus().into_iter().take(1) {
            let products = [
                Product {
                    n_out: 64,
                    n_in: 64,
                    count: 2,
                    normed: true,
                },
                Product {
                    n_out: 34,
                    n_in: 40,
                    count: 1,
                    normed: false,
                },
            ];
            for format in [WeightFormat::F16, WeightFormat::Q4] {
                let t = pollster::block_on(tune_gemv(&gpu, format, &products, 2)).unwrap();
                let names: Vec<&str> = t.candidates.iter().map(|c| c.0.as_str()).collect();
                // Each GEMV that runs one of the products (n_in 40 is not whole blocks, so
                // the wide ones fall back there); gemv_cols for f16 only.
                let mut want = vec!["gemv", "gemv_wide", "gemv_outputs", "gemv_outputs_wide"];
                if format == WeightFormat::F16 {
                    want.push("gemv_cols");
                }
                if gpu.features().subgroup {
                    want.push("gemv_subgroup");
                }
                assert_eq!(names, want, "{format:?} on {}", gpu.describe());
                assert!(t.candidates.iter().all(|c| c.1.is_finite() && c.1 > 0.0));
                let best = t
                    .candidates
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap();
                assert_eq!(t.chosen, best.0);
                assert_eq!(t.key(), format!("{} 64x64x2n 34x40x1", format.name()));
                assert!(t.int8.is_empty());
            }
        }
    }

    #[test]
    fn a_forced_gemv_covers_the_formats_it_can_run() {
        for gpu in test_gpus().into_iter().take(1) {
            // q4 layer matrices (n_in 64 and 96: whole blocks) and an f16 head.
            let model = random_model(&config(64), 1, WeightFormat::Q4).unwrap();
            let named = |k: Kernel| -> Vec<(String, String)> {
                let t = forced_tuning(&gpu, &model, k);
                t.gemv.into_iter().collect()
            };
            let pair = |f: &str, k: &str| (f.to_string(), k.to_string());
            let wide = "gemv_outputs_wide";
            assert_eq!(
                named(Kernel::GemvOutputsWide),
                [pair("f16", wide), pair("q4", wide)]
            );
            // gemv_cols reads transposed f16 only (the head's 40 rows pair up); the int8
            // GEMV is never a choice.
            assert_eq!(named(Kernel::GemvCols), [pair("f16", "gemv_cols")]);
            assert!(named(Kernel::GemvDot4).is_empty());
        }
    }

    #[test]
    fn the_int8_gemv_is_timed_but_never_chosen() {
        for gpu in test_gpus().into_iter().take(1) {
            let products = [Product {
                n_out: 64,
                n_in: 64,
                count: 2,
                normed: true,
            }];
            for format in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
                let t = pollster::block_on(tune_gemv_with(&gpu, format, &products, 2, true));
                let t = t.unwrap();
                let names: Vec<&str> = t.int8.iter().map(|c| c.0.as_str()).collect();
                if !Kernel::GemvDot4.runs(&gpu, format, 64, false) {
                    assert!(names.is_empty(), "{names:?}");
                    continue;
                }
                assert_eq!(names, ["gemv_dot4"]);
                assert!(t.int8[0].1.is_finite() && t.int8[0].1 > 0.0);
                assert!(t.candidates.iter().all(|c| c.0 != "gemv_dot4"));
                assert_ne!(t.chosen, "gemv_dot4");
                // Cached and read back with it; the choice is an exact GEMV.
                let json = serde_json::to_string(&t).unwrap();
                let back: GemvTune = serde_json::from_str(&json).unwrap();
                assert_eq!(back, t);
                assert!(Kernel::from_name(&back.chosen).is_some_and(Kernel::exact));
            }
        }
    }

    #[test]
    fn a_tall_head_is_timed_on_its_first_rows() {
        for gpu in test_gpus().into_iter().take(1) {
            // A head 8x the cap: the matrix tuned is the cap's rows, and every candidate's
            // time stands for the whole head (about 8x the cap's).
            let tall = Product {
                n_out: 8 * MAX_TUNE_ROWS,
                n_in: 32,
                count: 1,
                normed: true,
            };
            gpu.memory().reset_peak();
            let before = gpu.memory().report().current_bytes;
            let t = pollster::block_on(tune_gemv(&gpu, WeightFormat::F16, &[tall], 3)).unwrap();
            let peak = gpu.memory().report().peak_bytes - before;
            let full = (tall.n_out * tall.n_in * 2) as u64;
            assert!(peak < full / 2, "{peak} bytes for a {full}-byte head");
            let capped = Product {
                n_out: MAX_TUNE_ROWS,
                ..tall
            };
            let c = pollster::block_on(tune_gemv(&gpu, WeightFormat::F16, &[capped], 3)).unwrap();
            let time = |t: &GemvTune, k: &str| t.candidates.iter().find(|c| c.0 == k).unwrap().1;
            // Each time stands for the whole head: the cap's rows' time scaled by 8. (Not
            // asserted from two tunings' timings: on CI's shared machine the tall head's
            // gemv_outputs read 0.62x the capped one's, where 8x was meant.)
            assert_eq!((tall.tuned_rows(), tall.rows_scale()), (MAX_TUNE_ROWS, 8.0));
            assert_eq!(
                (capped.tuned_rows(), capped.rows_scale()),
                (MAX_TUNE_ROWS, 1.0)
            );
            assert!(t.candidates.iter().chain(&c.candidates).all(|c| c.1 > 0.0));
            assert!(time(&t, "gemv_outputs").is_finite());
            let best = t
                .candidates
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            assert_eq!(t.chosen, best.0);
            assert_eq!(t.products, [tall]);
        }
    }

    #[test]
    fn the_cache_answers_for_its_adapter_and_model_shape_only() {
        for gpu in test_gpus().into_iter().take(1) {
            let model = random_model(&config(32), 2, WeightFormat::F16).unwrap();
            let mut cache = TuningCache::default();
            let (tuning, complete) = cache.tuning(&gpu, &model);
            assert!(!complete && tuning.gemv.is_empty());
            let (measured, tunes) =
                pollster::block_on(tune_model(&gpu, &model, 1, &mut cache)).unwrap();
            // One format: every matrix f16 (the head is the f16 embedding).
            assert_eq!(tunes.len(), 1);
            assert_eq!(measured.gemv["f16"], tunes[0].chosen);
            let again = TuningCache::parse(&cache.to_json());
            assert_eq!(
                again,
                TuningCache {
                    version: CACHE_VERSION,
                    ..cache.clone()
                }
            );
            assert_eq!(again.tuning(&gpu, &model), (measured, true));
            // Another width is another entry; so is another adapter or build of the kernels.
            let other = random_model(&config(64), 2, WeightFormat::F16).unwrap();
            assert!(!again.tuning(&gpu, &other).1);
            let mut moved = again.clone();
            let entries = moved.adapters.pop_first().unwrap().1;
            moved.adapters.insert("another adapter".into(), entries);
            assert!(!moved.tuning(&gpu, &model).1);
            // Another version of the file, or no JSON at all, is an empty cache.
            let old = cache.to_json().replace("\"version\": 1", "\"version\": 0");
            assert_eq!(TuningCache::parse(&old), TuningCache::default());
            assert_eq!(TuningCache::parse("{not json"), TuningCache::default());
        }
    }
}
