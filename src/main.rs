//! The `walsh` command line.

use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use walsh::gpu::{AdapterSelector, AdapterSummary, Gpu, MemoryCategory, list_adapters};
use walsh::ops::hadamard::{Epilogue, Hadamard, WhtOptions, WhtPath, WhtSize, cpu};

#[derive(Parser)]
#[command(
    name = "walsh",
    version,
    about = "GPU engine for Hadamard-projection transformers"
)]
struct Cli {
    /// Adapter to run on: an index from `walsh adapters`, a backend (vulkan, metal, dx12,
    /// gl) or part of an adapter name. Default: the high-performance adapter.
    #[arg(long, global = true, env = "WALSH_ADAPTER", default_value = "default")]
    adapter: String,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kernel {
    Fast,
    Shared,
    Subgroup,
    Naive,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter with its backend, features and limits.
    Adapters {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the Walsh–Hadamard kernels on a batch of rows and check them against the CPU.
    Wht {
        /// Transform length: a power of two up to 32768, or 12/20/28 times one.
        #[arg(long, default_value_t = 1024)]
        n: usize,
        /// Number of rows.
        #[arg(long, default_value_t = 4096)]
        rows: usize,
        /// Kernel: fast (subgroups where available), shared (no subgroups), subgroup, naive.
        #[arg(long, default_value = "fast")]
        kernel: Kernel,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Adapters { json }) => adapters(json),
        Some(Command::Wht { n, rows, kernel }) => wht(&cli.adapter, n, rows, kernel),
        None => {
            eprintln!(
                "walsh: no model runtime yet; running the WHT self-check (see `walsh --help`)."
            );
            wht(&cli.adapter, 1024, 4096, Kernel::Fast)
        }
    }
}

fn adapters(json: bool) -> Result<()> {
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

fn wht(adapter: &str, n: usize, rows: usize, kernel: Kernel) -> Result<()> {
    let size = WhtSize::new(n)?;
    let selector: AdapterSelector = adapter.parse()?;
    let gpu = Gpu::new(&selector)?;
    eprintln!("adapter: {}", gpu.describe());
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
            Kernel::Naive => {
                h.encode_naive(&mut encoder, &input, &output, rows, n)?;
                WhtPath::Auto
            }
        };
        if !matches!(kernel, Kernel::Naive) {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            h.encode(
                &mut pass,
                &input,
                &output,
                rows,
                n,
                WhtOptions {
                    epilogue: Epilogue::default(),
                    path,
                },
            )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_adapter_and_subcommands() {
        let cli = Cli::try_parse_from(["walsh", "--adapter", "gl", "wht", "--n", "768"]).unwrap();
        assert_eq!(cli.adapter, "gl");
        assert!(matches!(
            cli.command,
            Some(Command::Wht {
                n: 768,
                rows: 4096,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["walsh", "adapters", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Adapters { json: true })
        ));
        assert!(Cli::try_parse_from(["walsh", "wht", "--kernel", "bogus"]).is_err());
    }
}
