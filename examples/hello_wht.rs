//! Hello, WHT: the normalized Walsh–Hadamard transform `y = H x / sqrt(n)` of a small batch
//! of rows on the GPU, checked against walsh's CPU reference.
//!
//! ```text
//! cargo run --example hello_wht                     # the high-performance adapter
//! WALSH_ADAPTER=gl cargo run --example hello_wht  # or vulkan, an index, part of a name
//! WALSH_ADAPTER=vulkan cargo run --example hello_wht
//! ```
//!
//! Exits 0 when every row matches, 1 when one does not, 77 (the "skipped" code of
//! automake and meson) when there is no adapter to run on.

use std::process::ExitCode;

use walsh::gpu::{AdapterSelector, Gpu};
use walsh::ops::hadamard::{Hadamard, WhtPath, WhtSize, cpu};

/// Rows per batch.
const ROWS: usize = 8;
/// Largest |GPU - CPU| accepted. The outputs are about 1 in size; f32 butterflies in
/// another order differ from the f64 reference by a few ulps of that.
const TOLERANCE: f32 = 1e-5;

fn main() -> ExitCode {
    // `WALSH_ADAPTER` (as the walsh CLI reads it), else the default.
    let wanted = std::env::var("WALSH_ADAPTER").unwrap_or_default();
    let selector: AdapterSelector = match wanted.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hello_wht: {e}");
            return ExitCode::from(2);
        }
    };
    // Opens a device with every optional feature and limit the adapter has.
    let gpu = match Gpu::new(&selector) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("hello_wht: no adapter to run on: {e}");
            return ExitCode::from(77);
        }
    };
    println!("adapter: {}", gpu.describe());

    // The kernels of one device: sign tables uploaded once, pipelines built per shape.
    let wht = match Hadamard::new(&gpu) {
        Ok(wht) => wht,
        Err(e) => {
            eprintln!("hello_wht: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut ok = true;
    // A power of two, and 576 = 36 x 16: H_36 (x) H_16, a Paley matrix times Sylvester's.
    for n in [1024, 576] {
        let x: Vec<f32> = (0..ROWS * n)
            .map(|i| ((i * 7919 + 13) % 2001) as f32 / 1000.0 - 1.0)
            .collect();

        // Upload, transform every row, read back: one call.
        let y = match wht.run(&x, n, WhtPath::Auto) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("hello_wht: n = {n}: {e}");
                return ExitCode::FAILURE;
            }
        };

        // The CPU reference, row by row, in f64.
        let size = WhtSize::new(n).expect("1024 and 576 are Walsh–Hadamard sizes");
        let mut max_err = 0f32;
        for (row, got) in x.chunks_exact(n).zip(y.chunks_exact(n)) {
            let mut want: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            cpu::fwht(&mut want, size);
            for (g, w) in got.iter().zip(&want) {
                max_err = max_err.max((*g as f64 - w).abs() as f32);
            }
        }
        let pass = max_err <= TOLERANCE;
        println!(
            "n = {n:4} (m = {:2}, p = {:4}), {ROWS} rows: max |gpu - cpu| = {max_err:.3e} {}",
            size.m,
            size.p,
            if pass { "ok" } else { "FAILED" }
        );
        ok &= pass;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("hello_wht: error above {TOLERANCE:e}");
        ExitCode::FAILURE
    }
}
