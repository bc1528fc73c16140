//! Walsh–Hadamard kernels against a copy of the same bytes and a dense matrix–vector
//! product, on one adapter (`WALSH_ADAPTER`, default: the high-performance one).
//!
//! - `copy`: `copy_buffer_to_buffer` of rows x n f32: the bandwidth roof.
//! - `copy_shader`: the same bytes through a trivial compute shader: the roof for kernels.
//! - `wht_fast`: the fast kernel (subgroup path where the adapter has it).
//! - `wht_naive`: one dispatch per butterfly stage.
//! - `wht_fused`: the fast kernel with gamma, beta and residual fused on store.
//! - `dense_gemv`: y = W x with a dense n x n W, one row (skipped where W exceeds the
//!   adapter's storage binding limit).
//!
//! Throughput is in bytes moved per iteration (read + write of the rows; for GEMV the
//! matrix too). Each sample records `iters` repetitions in one submission and waits for
//! the GPU inside the timed region.
//!
//! `WALSH_BENCH_SMOKE=1` shrinks the sizes so CI only checks that everything runs;
//! `cargo test --benches` runs each case once.

use std::time::{Duration, Instant};

use criterion::{Bencher, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use walsh::gpu::{AdapterSelector, Gpu, GpuBuffer, MemoryCategory};
use walsh::ops::hadamard::{Hadamard, WhtEpilogue, WhtOptions, WhtPath};
use walsh::ops::{Matrix, copy, matmul};

fn smoke() -> bool {
    std::env::var("WALSH_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn sizes() -> Vec<usize> {
    if smoke() {
        vec![256, 768]
    } else {
        vec![256, 1024, 4096, 16384]
    }
}

/// Rows for length n: 16 MiB per buffer, enough to fill a GPU (256 KiB in smoke mode).
fn rows_for(n: usize) -> usize {
    let elems = if smoke() { 1 << 16 } else { 1 << 22 };
    (elems / n).max(1)
}

fn gpu() -> Gpu {
    let selector: AdapterSelector = std::env::var("WALSH_ADAPTER")
        .unwrap_or_default()
        .parse()
        .expect("WALSH_ADAPTER");
    let gpu = Gpu::new(&selector).expect("no GPU adapter for the benchmark");
    eprintln!("benchmarking on {}", gpu.describe());
    gpu
}

fn data(gpu: &Gpu, label: &str, elems: usize) -> GpuBuffer {
    let v: Vec<f32> = (0..elems)
        .map(|i| ((i * 7919) % 1024) as f32 / 512.0 - 1.0)
        .collect();
    gpu.upload(MemoryCategory::Activations, label, &v)
        .expect("upload")
}

/// Times `iters` repetitions of `record`, recorded into one encoder and submitted once.
fn time(gpu: &Gpu, iters: u64, mut record: impl FnMut(&mut wgpu::CommandEncoder)) -> Duration {
    let start = Instant::now();
    let mut encoder = gpu.encoder("bench");
    for _ in 0..iters {
        record(&mut encoder);
    }
    gpu.submit_and_wait(encoder).expect("GPU work failed");
    start.elapsed()
}

/// Benchmarks `record`: each sample times `iters` repetitions of it in one submission.
fn bench_gpu(gpu: &Gpu, b: &mut Bencher, mut record: impl FnMut(&mut wgpu::CommandEncoder)) {
    b.iter_custom(|iters| time(gpu, iters, &mut record));
}

fn compute_pass(encoder: &mut wgpu::CommandEncoder) -> wgpu::ComputePass<'_> {
    encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("bench"),
        timestamp_writes: None,
    })
}

fn bench_hadamard(c: &mut Criterion) {
    let gpu = gpu();
    let h = Hadamard::new(&gpu).expect("WHT kernels");
    let mut group = c.benchmark_group("hadamard");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));

    for n in sizes() {
        let rows = rows_for(n);
        let elems = rows * n;
        let x = data(&gpu, "x", elems);
        let y = gpu
            .storage(MemoryCategory::Activations, "y", (elems * 4) as u64)
            .expect("output");
        let id = |name: &str| BenchmarkId::new(name, format!("n={n}/rows={rows}"));
        group.throughput(Throughput::Bytes((2 * elems * 4) as u64));

        group.bench_function(id("copy"), |b| {
            bench_gpu(&gpu, b, |e| {
                e.copy_buffer_to_buffer(x.buffer(), 0, y.buffer(), 0, (elems * 4) as u64)
            })
        });
        group.bench_function(id("copy_shader"), |b| {
            bench_gpu(&gpu, b, |e| {
                let mut pass = compute_pass(e);
                copy::encode_copy(&gpu, &mut pass, &x, &y, (elems * 4) as u64)
                    .expect("copy shader");
            })
        });
        // The fast kernel, with `epilogue` fused on store.
        let wht = |e: &mut wgpu::CommandEncoder, epilogue: WhtEpilogue<'_>, what: &str| {
            let mut pass = compute_pass(e);
            let options = WhtOptions {
                epilogue,
                path: WhtPath::Auto,
            };
            h.encode(&mut pass, &x, &y, rows, n, options).expect(what);
        };
        group.bench_function(id("wht_fast"), |b| {
            bench_gpu(&gpu, b, |e| wht(e, WhtEpilogue::default(), "fast WHT"))
        });
        group.bench_function(id("wht_naive"), |b| {
            bench_gpu(&gpu, b, |e| {
                h.encode_naive(e, &x, &y, rows, n).expect("naive WHT")
            })
        });

        let gamma = data(&gpu, "gamma", n);
        let beta = data(&gpu, "beta", n);
        let resid = data(&gpu, "resid", elems);
        let epi = WhtEpilogue {
            gamma: Some(&gamma),
            beta: Some(&beta),
            resid: Some(&resid),
        };
        group.throughput(Throughput::Bytes((3 * elems * 4 + 2 * n * 4) as u64));
        group.bench_function(id("wht_fused"), |b| {
            bench_gpu(&gpu, b, |e| wht(e, epi, "fused WHT"))
        });

        let w_bytes = (n * n * 4) as u64;
        if gpu.check_binding_size("dense W", w_bytes).is_err() {
            eprintln!(
                "dense_gemv n={n}: W ({} MiB) exceeds the adapter's binding limit, skipped",
                w_bytes >> 20
            );
            continue;
        }
        let w_values: Vec<f32> = (0..n * n)
            .map(|i| ((i * 31) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let w = Matrix::from_f32(&gpu, "W", &w_values, n, n).expect("dense W");
        group.throughput(Throughput::Bytes(w_bytes + 2 * n as u64 * 4));
        group.bench_function(
            BenchmarkId::new("dense_gemv", format!("n={n}/rows=1")),
            |b| {
                bench_gpu(&gpu, b, |e| {
                    let mut pass = compute_pass(e);
                    matmul::encode_matmul(&gpu, &mut pass, &w, &x, &y, 1, matmul::Epilogue::Store)
                        .expect("GEMV");
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_hadamard);
criterion_main!(benches);
