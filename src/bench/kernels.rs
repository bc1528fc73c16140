//! The kernel suite: the roofline, then each kernel's time, bytes/s, FLOP/s and fraction
//! of the copy shader's bandwidth (the roof a compute kernel can reach on the adapter).

use serde::{Deserialize, Serialize};

use super::measure::{Stats, time_encoder, time_pass};
use super::{BenchError, BenchOptions, Suite};
use crate::blocks::{QuantFormat, QuantMatrix};
use crate::gpu::{Gpu, GpuBuffer, MemoryCategory};
use crate::ops::attention::{AttendBuffers, AttendTile, Attention, AttnShape, row_table};
use crate::ops::hadamard::{Hadamard, TILE_ELEMS, WhtEpilogue, WhtOptions, WhtPath};
use crate::ops::{Matrix, copy, matmul};

/// The adapter's copy bandwidth: the roof of every kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Roofline {
    pub bytes: u64,
    /// `copy_buffer_to_buffer`, wall clock.
    pub copy_buffer: Stats,
    pub copy_buffer_gb_per_s: f64,
    /// The vec4 copy shader, timed like the kernels.
    pub copy_shader: Stats,
    pub copy_shader_gb_per_s: f64,
}

/// One kernel measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelResult {
    pub kernel: String,
    /// Width (transform length, projection width, model width).
    pub n: usize,
    pub rows: usize,
    /// Bytes read and written per run.
    pub bytes: u64,
    /// Floating-point operations per run.
    pub flops: u64,
    pub time: Stats,
    pub gb_per_s: f64,
    pub gflop_per_s: f64,
    /// gb_per_s over the copy shader's.
    pub fraction_of_copy: f64,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct KernelCase {
    pub kernel: &'static str,
    pub n: usize,
    pub rows: usize,
}

impl KernelCase {
    pub fn label(&self) -> String {
        format!("{} n={} rows={}", self.kernel, self.n, self.rows)
    }
}

/// The widths of the WHT cases `options` selects: every power of two from 256 to 16384,
/// and real models' widths that are not: 576 = 36 x 16 and 960 = 60 x 16 (SmolLM2), 2304 =
/// 36 x 64 (Gemma 3), whose transforms mix 36 or 60 chunks.
pub fn widths(options: &BenchOptions) -> Vec<usize> {
    let all: Vec<usize> = if options.quick {
        vec![256, 1024]
    } else {
        let mut v: Vec<usize> = (8..=14).map(|k| 1 << k).collect();
        v.extend(PAPER_WIDTHS);
        v.sort_unstable();
        v
    };
    all.into_iter()
        .filter(|&n| n <= options.max_kernel_n)
        .collect()
}

/// The kernel suite's smallest width where `options` run the suite but bound it to no width
/// at all (`walsh bench --max-kernel-n` and the page's `?max_kernel_n=` refuse that, naming
/// it); None where the suite does not run or measures something.
pub fn smallest_width_bounded_out(options: &BenchOptions) -> Option<usize> {
    if !options.suites.contains(&Suite::Kernels) || !widths(options).is_empty() {
        return None;
    }
    let unbounded = BenchOptions {
        max_kernel_n: usize::MAX,
        ..options.clone()
    };
    widths(&unbounded).first().copied()
}

/// The widths of real models that take a Paley factor, in the kernel suite and the paper
/// grid.
pub const PAPER_WIDTHS: [usize; 3] = [576, 960, 2304];

/// Rows of the batched WHT cases: 4096, enough to fill a GPU (16 in a quick run).
fn batch_rows(options: &BenchOptions) -> usize {
    if options.quick { 16 } else { 4096 }
}

/// `rows` halved until a buffer of `rows` rows of `n` f32s fits the adapter's bindings.
fn fitting_rows(gpu: &Gpu, n: usize, rows: usize) -> usize {
    let mut rows = rows.max(1);
    while rows > 1 && gpu.check_binding_size("x", (rows * n * 4) as u64).is_err() {
        rows /= 2;
    }
    rows
}

/// The weight formats of the decode-sized GEMV cases.
const GEMV_KERNELS: [&str; 3] = ["dense_gemv_f16", "dense_gemv_q8", "dense_gemv_q4"];

/// Every kernel case this adapter can hold.
pub fn cases(gpu: &Gpu, options: &BenchOptions) -> Vec<KernelCase> {
    let mut out = Vec::new();
    for n in widths(options) {
        let rows = fitting_rows(gpu, n, batch_rows(options));
        // The transform of one decode row and of a batch, against the copy shader.
        for (kernel, one_row) in [
            ("wht_fast", true),
            ("wht_naive", false),
            ("wht_fused", true),
        ] {
            if one_row {
                out.push(KernelCase { kernel, n, rows: 1 });
            }
            out.push(KernelCase { kernel, n, rows });
        }
        // The batch through the one-invocation-per-row kernel, which `Auto` takes for
        // decode-sized batches on CPU adapters only: which is faster for a prefill-sized
        // batch differs by adapter (docs/kernels.md).
        if n <= TILE_ELEMS {
            out.push(KernelCase {
                kernel: "wht_rows",
                n,
                rows,
            });
        }
        // Decode-sized output projections: the fused WHT above against a dense GEMV in
        // each weight format, one row.
        if gpu.check_binding_size("W", n as u64 * n as u64 * 2).is_ok() {
            for kernel in GEMV_KERNELS {
                out.push(KernelCase { kernel, n, rows: 1 });
            }
            out.push(KernelCase {
                kernel: "dense_gemm_f16",
                n,
                rows: rows.min(256),
            });
        }
        if n <= 4096 {
            // Decode (4 rows) and prefill as the adapter takes them, then each tile
            // whatever the adapter (the staged blocks or the direct reads: `AttendTile`),
            // which tells whether the adapter's pick holds there.
            for kernel in ATTENTION_KERNELS {
                let rows = match (attention_decodes(kernel), options.quick) {
                    (true, _) => 4,
                    (false, true) => 32,
                    (false, false) => 256,
                };
                out.push(KernelCase { kernel, n, rows });
            }
        }
    }
    out
}

/// The attention rows: decode and prefill, each as the adapter takes it and in each tile
/// ([`attention_tile`]).
const ATTENTION_KERNELS: [&str; 6] = [
    "attention_decode",
    "attention_decode_staged",
    "attention_decode_direct",
    "attention_prefill",
    "attention_prefill_staged",
    "attention_prefill_direct",
];

fn attention_decodes(kernel: &str) -> bool {
    kernel.starts_with("attention_decode")
}

fn attention_tile(kernel: &str) -> AttendTile {
    if kernel.ends_with("_staged") {
        AttendTile::Staged
    } else if kernel.ends_with("_direct") {
        AttendTile::Direct
    } else {
        AttendTile::Auto
    }
}

fn values(count: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((i * 7919) % 1024) as f32 / 512.0 - 1.0)
        .collect()
}

fn activations(gpu: &Gpu, label: &str, count: usize) -> Result<GpuBuffer, BenchError> {
    Ok(gpu.upload(MemoryCategory::Activations, label, &values(count))?)
}

/// Copy bandwidth over 64 MiB (1 MiB quick) buffers.
pub async fn roofline(gpu: &Gpu, options: &BenchOptions) -> Result<Roofline, BenchError> {
    let count = if options.quick { 1 << 18 } else { 1 << 24 };
    let bytes = (count * 4) as u64;
    let src = activations(gpu, "roofline src", count)?;
    let dst = gpu.storage(MemoryCategory::Activations, "roofline dst", bytes)?;
    let repeats = options.repeats();
    let copy_buffer = time_encoder(gpu, repeats, |e| {
        e.copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, bytes)
    })
    .await?;
    let copy_shader = time_pass(gpu, repeats, |pass| {
        Ok(copy::encode_copy(gpu, pass, &src, &dst, bytes)?)
    })
    .await?;
    let rate = |s: &Stats| 2.0 * bytes as f64 / s.median_s / 1e9;
    Ok(Roofline {
        bytes,
        copy_buffer_gb_per_s: rate(&copy_buffer),
        copy_buffer,
        copy_shader_gb_per_s: rate(&copy_shader),
        copy_shader,
    })
}

/// Measures one case.
pub async fn measure(
    gpu: &Gpu,
    case: &KernelCase,
    options: &BenchOptions,
    roof: &Roofline,
) -> Result<KernelResult, BenchError> {
    let (n, rows) = (case.n, case.rows);
    let repeats = options.repeats();
    let (time, bytes, flops) = match case.kernel {
        "wht_fast" | "wht_naive" | "wht_fused" | "wht_rows" => {
            let h = Hadamard::new(gpu)?;
            let x = activations(gpu, "x", rows * n)?;
            let y = gpu.storage(MemoryCategory::Activations, "y", (rows * n * 4) as u64)?;
            let fused = case.kernel == "wht_fused";
            let (gamma, beta, resid) = (
                activations(gpu, "gamma", n)?,
                activations(gpu, "beta", n)?,
                activations(gpu, "resid", rows * n)?,
            );
            let epilogue = if fused {
                WhtEpilogue {
                    gamma: Some(&gamma),
                    beta: Some(&beta),
                    resid: Some(&resid),
                }
            } else {
                WhtEpilogue::default()
            };
            let path = if case.kernel == "wht_rows" {
                WhtPath::Rows
            } else {
                WhtPath::Auto
            };
            let options = WhtOptions { epilogue, path };
            let size = crate::ops::hadamard::WhtSize::new(n)
                .map_err(crate::ops::hadamard::WhtError::from)?;
            let time = if case.kernel == "wht_naive" {
                // The naive kernel is in place: time its stages on `y`.
                time_pass(gpu, repeats, |pass| {
                    Ok(h.record_naive(pass, &y, rows, size)?)
                })
                .await?
            } else {
                time_pass(gpu, repeats, |pass| {
                    Ok(h.encode(pass, &x, &y, rows, n, options)?)
                })
                .await?
            };
            let moved = if fused {
                3 * rows * n + 2 * n
            } else {
                2 * rows * n
            };
            // Adds per value: log2 p butterfly stages, m - 1 for the m x m mix (n = m p),
            // then 1 (the scale) or 3 (the fused epilogue, as counted since the first reports).
            let per_value = size.log2_p() as f64 + (size.m - 1) as f64;
            let flops = rows as f64 * n as f64 * (per_value + if fused { 3.0 } else { 1.0 });
            (time, 4 * moved as u64, flops as u64)
        }
        "dense_gemv_f16" | "dense_gemv_q8" | "dense_gemv_q4" | "dense_gemm_f16" => {
            let values: Vec<f32> = values(n * n).iter().map(|&v| v * 0.05).collect();
            let quant = match case.kernel {
                "dense_gemv_q8" => Some(QuantFormat::Q8),
                "dense_gemv_q4" => Some(QuantFormat::Q4),
                _ => None,
            };
            let w = match quant {
                Some(format) => {
                    let q = QuantMatrix::quantize(format, n, n, &values)?;
                    Matrix::from_quant(gpu, "W", &q)?
                }
                None => {
                    let bits: Vec<u16> = (values.iter())
                        .map(|&v| half::f16::from_f32(v).to_bits())
                        .collect();
                    Matrix::from_f16_bits(gpu, "W", &bits, n, n)?
                }
            };
            let x = activations(gpu, "x", rows * n)?;
            let y = gpu.storage(MemoryCategory::Activations, "y", (rows * n * 4) as u64)?;
            let time = time_pass(gpu, repeats, |pass| {
                Ok(matmul::encode_matmul(
                    gpu,
                    pass,
                    &w,
                    &x,
                    &y,
                    rows,
                    matmul::Epilogue::Store,
                )?)
            })
            .await?;
            // In u64: on wasm32 usize is 32 bits, and 2 * 256 * 4096^2 is 2^33.
            let weight_bytes = w.format.matrix_bytes(n, n) as u64;
            let (n, rows) = (n as u64, rows as u64);
            (time, weight_bytes + 8 * rows * n, 2 * rows * n * n)
        }
        kernel if kernel.starts_with("attention_") => {
            let head_dim = 64.min(n);
            let decode = attention_decodes(kernel);
            let context = if options.quick { 64 } else { 512 };
            let (seqs, max_pos) = if decode { (rows, context) } else { (1, rows) };
            let shape = AttnShape {
                heads: n / head_dim,
                kv_heads: n / head_dim,
                head_dim,
                max_seqs: seqs,
                max_pos,
                kv: options.kv_cache,
            };
            let att = Attention::new(gpu)?.with_tile(attention_tile(kernel));
            let k = activations(gpu, "k cache", seqs * max_pos * n)?;
            let v = activations(gpu, "v cache", seqs * max_pos * n)?;
            let table: Vec<(u32, u32)> = if decode {
                (0..seqs as u32).map(|s| (s, context as u32 - 1)).collect()
            } else {
                (0..rows as u32).map(|p| (0, p)).collect()
            };
            let rt = gpu.upload(MemoryCategory::Activations, "row table", &row_table(&table))?;
            let q = activations(gpu, "q", table.len() * n)?;
            let out = gpu.storage(
                MemoryCategory::Activations,
                "out",
                (table.len() * n * 4) as u64,
            )?;
            let io = AttendBuffers::new(&q, &k, &v, &rt, &out);
            let time = time_pass(gpu, repeats, |pass| {
                if decode {
                    Ok(att.encode_decode(pass, &io, &table, shape)?)
                } else {
                    Ok(att.encode_prefill(pass, &io, &table, shape)?)
                }
            })
            .await?;
            // Keys each query attends to: all `context` in decode, pos + 1 in prefill.
            let pairs: usize = table.iter().map(|&(_, p)| p as usize + 1).sum();
            let keys_read = if decode { pairs } else { rows };
            let (n, pairs) = (n as u64, pairs as u64);
            // Keys and values of every key read (values and the quantized formats' scales).
            let key_bytes = options
                .kv_cache
                .position_bytes(n as usize / head_dim, head_dim);
            let bytes = key_bytes * 2 * keys_read as u64 + 4 * 2 * table.len() as u64 * n;
            (time, bytes, 4 * pairs * n)
        }
        other => {
            return Err(BenchError::Report {
                path: "kernels".into(),
                message: format!("unknown kernel {other}"),
            });
        }
    };
    let gb_per_s = bytes as f64 / time.median_s / 1e9;
    Ok(KernelResult {
        kernel: case.kernel.to_string(),
        n,
        rows,
        bytes,
        flops,
        time,
        gb_per_s,
        gflop_per_s: flops as f64 / time.median_s / 1e9,
        fraction_of_copy: gb_per_s / roof.copy_shader_gb_per_s,
    })
}
