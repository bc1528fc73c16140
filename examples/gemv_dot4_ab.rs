//! gemv_dot4 (int8 activations, `dot4I8Packed`) against the exact decode GEMVs, side by
//! side: for q8 and q4 weights, batches of 1 and 4 rows and a few decode-sized products,
//! every candidate that runs is timed in alternating rounds (median of `REPEATS` GPU-timed
//! runs each), and the table gives each one's median over rounds and its ratio to the
//! fastest exact GEMV. docs/kernels.md ("int8 activations") has the figures.
//!
//! XDG_RUNTIME_DIR=/tmp cargo run --release --example gemv_dot4_ab -- [adapter] [rounds]

use walsh::bench::measure::time_pass;
use walsh::blocks::QuantMatrix;
use walsh::gpu::{AdapterSelector, Gpu, MemoryCategory};
use walsh::ops::matmul::{self, Epilogue, Kernel, Prologue};
use walsh::ops::{Matrix, WeightFormat};

/// GPU-timed runs per candidate per round (their median is the round's figure).
const REPEATS: usize = 5;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919) % 1024) as f32 / 512.0 - 1.0)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let adapter: AdapterSelector = args.next().as_deref().unwrap_or("vulkan").parse()?;
    let rounds: usize = args.next().map_or(Ok(3), |r| r.parse())?;
    let gpu = Gpu::new(&adapter)?;
    println!(
        "{} ({rounds} alternating rounds, median of {REPEATS} runs each)",
        gpu.describe()
    );
    // (n_out, n_in, RMSNorm prologue): a d_model 1024 q/k/v and down, a d_model 4096
    // gate/up-sized product.
    let products = [(3072, 1024, true), (1024, 3072, false), (8192, 4096, true)];
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        for &(n_out, n_in, normed) in &products {
            let q = QuantMatrix::quantize(
                format.quant().expect("quantized"),
                n_out,
                n_in,
                &values(n_out * n_in, 3),
            )?;
            let w = Matrix::from_quant(&gpu, "w", &q)?;
            let norm = gpu.upload(MemoryCategory::Activations, "norm", &values(n_in, 2))?;
            for rows in [1, 4] {
                let x = gpu.upload(MemoryCategory::Activations, "x", &values(rows * n_in, 1))?;
                let y = gpu.storage(MemoryCategory::Activations, "y", (rows * n_out * 4) as u64)?;
                let prologue = if normed {
                    Prologue::Norm {
                        weight: &norm,
                        eps: 1e-5,
                        out: None,
                    }
                } else {
                    Prologue::None
                };
                let candidates: Vec<Kernel> = Kernel::GEMVS
                    .into_iter()
                    .chain([Kernel::GemvDot4])
                    .filter(|k| *k != Kernel::GemvCols && k.runs(&gpu, format, n_in, false))
                    .collect();
                let mut samples = vec![Vec::new(); candidates.len()];
                for _ in 0..rounds {
                    for (c, &kernel) in candidates.iter().enumerate() {
                        let stats = pollster::block_on(time_pass(&gpu, REPEATS, |pass| {
                            Ok(matmul::encode_with_prologue(
                                &gpu,
                                pass,
                                &w,
                                &x,
                                &y,
                                rows,
                                Epilogue::Store,
                                kernel,
                                prologue,
                            )?)
                        }))?;
                        samples[c].push(stats.median_s * 1e6);
                    }
                }
                let medians: Vec<f64> = samples.iter().map(|s| median(s.clone())).collect();
                let best = candidates
                    .iter()
                    .zip(&medians)
                    .filter(|(k, _)| k.exact())
                    .map(|(_, &m)| m)
                    .fold(f64::INFINITY, f64::min);
                let norm = if normed { " + norm prologue" } else { "" };
                println!(
                    "\n{} [{n_out} x {n_in}]{norm}, {rows} row(s): µs (rounds), ratio to the fastest exact",
                    format.name()
                );
                for ((kernel, m), s) in candidates.iter().zip(&medians).zip(&samples) {
                    let rounds: Vec<String> = s.iter().map(|v| format!("{v:.0}")).collect();
                    let mark = if kernel.exact() {
                        ""
                    } else {
                        "  (int8 activations)"
                    };
                    println!(
                        "  {:<18} {m:>9.1}  {:>5.2}x  [{}]{mark}",
                        kernel.name(),
                        m / best,
                        rounds.join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}
