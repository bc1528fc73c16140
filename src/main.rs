//! The `walsh` command line.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cli::Kernel;
use cli::run::{EvalArgs, ExportArgs, GenerateArgs, InitArgs, QuantizeArgs};

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
        /// Transform length: m x 2^k up to 32768, m = 1 or a Hadamard order 12, 20, 28, 36,
        /// 44, 52, 60, 68, 76, 84, 100, 108, 124, 132, 140, 148, 164 or 180 (576, 768,
        /// 960, 2304, ...); `--list` prints them all.
        #[arg(long, default_value_t = 1024)]
        n: usize,
        /// Print every supported length with the construction of its Hadamard factor, and
        /// run nothing.
        #[arg(long)]
        list: bool,
        /// Number of rows.
        #[arg(long, default_value_t = 4096)]
        rows: usize,
        /// Kernel: fast (rows on CPU adapters, else subgroups where available), shared (no
        /// subgroups), subgroup, rows (an invocation per row), naive.
        #[arg(long, default_value = "fast")]
        kernel: Kernel,
    },
    /// Generate text from a model, streaming it as it comes.
    Generate(GenerateArgs),
    /// Score a text file: mean loss in nats/byte, bits/byte and perplexity.
    Eval(EvalArgs),
    /// Time every dispatch of one decode step and one prefill (timestamp queries where
    /// the adapter has them) against the copy shader.
    Profile(cli::run::ProfileArgs),
    /// Time every decode GEMV on a model's products and cache the fastest per weight
    /// format for this adapter (GPU commands do this once on their own). q8/q4 weights:
    /// also times the int8-activation gemv_dot4, shown for comparison, never chosen.
    Tune(cli::tune::TuneArgs),
    /// Write a model with random weights (for tests and benchmarks).
    InitModel(InitArgs),
    /// Write a copy of a model with its layer matrices block-quantized (q8 or q4).
    Quantize(QuantizeArgs),
    /// Write a model as a llama-architecture GGUF file (llama.cpp runs the dense ones;
    /// walsh loads every variant back: `--model FILE.gguf`).
    Export(ExportArgs),
    /// Benchmark kernels and decoders on one or every adapter; `bench merge` combines
    /// reports.
    Bench(cli::bench::BenchArgs),
    /// Serve the browser page (web/, built by `cargo xtask web`), models/ and the OpenAI
    /// completions API (`--model`) on 127.0.0.1 (`--host` to listen elsewhere).
    Serve(cli::serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, what went wrong first, each cause after a colon;
/// a cause whose text an outer message already quotes (`cannot read X: {source}`) is
/// not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Adapters { json }) => cli::adapters(json),
        Some(Command::Wht { list: true, .. }) => {
            cli::wht_list();
            Ok(())
        }
        Some(Command::Wht {
            n, rows, kernel, ..
        }) => cli::wht(&cli.adapter, n, rows, kernel),
        Some(Command::Generate(args)) => cli::run::generate_cmd(&args, &cli.adapter),
        Some(Command::Eval(args)) => cli::run::eval_cmd(&args, &cli.adapter),
        Some(Command::Profile(args)) => cli::run::profile_cmd(&args, &cli.adapter),
        Some(Command::Tune(args)) => cli::tune::tune_cmd(&args, &cli.adapter),
        Some(Command::InitModel(args)) => cli::run::init_cmd(&args),
        Some(Command::Quantize(args)) => cli::run::quantize_cmd(&args),
        Some(Command::Export(args)) => cli::run::export_cmd(&args),
        Some(Command::Bench(args)) => cli::bench::bench_cmd(&args, &cli.adapter),
        Some(Command::Serve(args)) => cli::serve::serve_cmd(&args, &cli.adapter),
        None => cli::run::generate_cmd(&GenerateArgs::default(), &cli.adapter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn errors_print_on_one_line_without_repeating_a_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(walsh::model::ModelError::Io {
            path: "m/config.json".into(),
            source: io,
        })
        .context("loading model m");
        assert_eq!(
            one_line(&e),
            "loading model m: cannot read m/config.json: no such file"
        );
    }

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
        let cli = Cli::try_parse_from([
            "walsh",
            "generate",
            "--prompt",
            "a",
            "--prompt",
            "b",
            "--temperature",
            "0",
            "--device",
            "cpu",
        ])
        .unwrap();
        let Some(Command::Generate(g)) = cli.command else {
            panic!("not generate")
        };
        assert_eq!(g.prompt, vec!["a", "b"]);
        assert_eq!(g.temperature, 0.0);
        assert_eq!(g.device, cli::run::Device::Cpu);
    }
}
