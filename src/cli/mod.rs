//! The subcommands of the `walsh` binary.

pub mod api;
pub mod bench;
pub mod metrics;
#[cfg(test)]
mod readme_tests;
pub mod run;
pub mod serve;
pub mod tune;

use std::time::Instant;

use anyhow::{Result, bail};

use walsh::gpu::{AdapterSelector, AdapterSummary, Gpu, MemoryCategory, list_adapters};
use walsh::ops::hadamard::{Hadamard, WhtOptions, WhtPath, WhtSize, cpu};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kernel {
    Fast,
    Shared,
    Subgroup,
    /// One invocation per row, no barrier (what CPU adapters get by default).
    Rows,
    Naive,
}

pub fn adapters(json: bool) -> Result<()> {
    let list = list_adapters();
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        bail!(walsh::gpu::GpuError::NoAdapter);
    }
    print_table(&list);
    Ok(())
}

fn print_table(list: &[AdapterSummary]) {
    let yes = |b: bool| if b { "yes" } else { "-" };
    let header = [
        "#",
        "name",
        "backend",
        "type",
        "driver",
        "subgroup",
        "f16",
        "timestamps",
        "wg storage",
        "max binding",
    ];
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let subgroup = if a.subgroup {
                format!("yes ({}-{})", a.subgroup_min_size, a.subgroup_max_size)
            } else {
                "-".into()
            };
            vec![
                a.index.to_string(),
                a.name.clone(),
                a.backend.clone(),
                a.device_type.clone(),
                format!("{} {}", a.driver, a.driver_info).trim().to_string(),
                subgroup,
                yes(a.shader_f16).into(),
                yes(a.timestamp_query).into(),
                format!("{} KiB", a.max_workgroup_storage_bytes / 1024),
                format!("{} MiB", a.max_storage_buffer_binding_bytes >> 20),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `walsh wht --list`: every supported length, grouped by its Hadamard factor m.
pub fn wht_list() {
    use walsh::ops::hadamard::construct::{CORE_ORDERS, MISSING_ORDERS, construction};
    println!(
        "n = m x 2^k <= {}; H_n = H_m (x) H_(2^k), symmetric",
        cpu::MAX_N
    );
    println!("{:<5} {:<24} lengths", "m", "H_m");
    for m in std::iter::once(1).chain(CORE_ORDERS) {
        let how = match construction(m) {
            Some(c) => c.to_string(),
            None => "Sylvester (butterflies)".to_string(),
        };
        let sizes: Vec<String> = (0..)
            .map(|k| m << k)
            .take_while(|&n| n <= cpu::MAX_N)
            .filter(|&n| n >= 2 && WhtSize::new(n).is_ok_and(|s| s.m == m))
            .map(|n| n.to_string())
            .collect();
        println!("{m:<5} {how:<24} {}", sizes.join(" "));
    }
    let missing: Vec<String> = MISSING_ORDERS.iter().map(|m| m.to_string()).collect();
    println!(
        "not built: orders {} (they need other constructions), and odd parts above 45",
        missing.join(", ")
    );
}

pub fn wht(adapter: &str, n: usize, rows: usize, kernel: Kernel) -> Result<()> {
    let size = WhtSize::new(n)?;
    if rows == 0 {
        bail!("--rows must be at least 1");
    }
    // Checked before the batch is allocated: three host copies and two GPU buffers.
    let bytes = walsh::limits::wht_batch(rows, n)?;
    let selector: AdapterSelector = adapter.parse()?;
    let gpu = Gpu::new(&selector)?;
    eprintln!("adapter: {}", gpu.describe());
    gpu.check_binding_size("one buffer of the batch", bytes)?;
    let h = Hadamard::new(&gpu)?;
    let x: Vec<f32> = (0..rows * n)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0)
        .collect();

    let input = gpu.upload(MemoryCategory::Activations, "x", &x)?;
    let output = gpu.storage(MemoryCategory::Activations, "y", (x.len() * 4) as u64)?;
    let mut times = Vec::new();
    for _ in 0..4 {
        let start = Instant::now();
        let mut encoder = gpu.encoder("wht");
        let path = match kernel {
            Kernel::Fast => WhtPath::Auto,
            Kernel::Shared => WhtPath::Shared,
            Kernel::Subgroup => WhtPath::Subgroup,
            Kernel::Rows => WhtPath::Rows,
            Kernel::Naive => {
                h.encode_naive(&mut encoder, &input, &output, rows, n)?;
                WhtPath::Auto
            }
        };
        if !matches!(kernel, Kernel::Naive) {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            h.encode(&mut pass, &input, &output, rows, n, WhtOptions::on(path))?;
        }
        gpu.submit_and_wait(encoder)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let y: Vec<f32> = gpu.read(&output, x.len())?;
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);

    let mut want = x.clone();
    let start = Instant::now();
    for row in want.chunks_exact_mut(n) {
        cpu::fwht(row, size);
    }
    let cpu_time = start.elapsed().as_secs_f64();
    let err = y
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let gb = (2 * x.len() * 4) as f64 / best / 1e9;
    println!(
        "WHT n={n} rows={rows}: GPU {:.3} ms ({gb:.2} GB/s), CPU scalar {:.3} ms, max |GPU - CPU| = {err:.2e}",
        best * 1e3,
        cpu_time * 1e3
    );
    let peak = gpu.memory().report().peak_bytes;
    println!(
        "peak GPU memory allocated by walsh: {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    if err > 1e-4 {
        bail!("GPU and CPU transforms disagree (max error {err:e})");
    }
    Ok(())
}
