//! `walsh bench` and `walsh bench merge`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use walsh::bench::page::PageVsNative;
use walsh::bench::report::{Environment, files, merge};
use walsh::bench::{BenchOptions, Report, Suite, run_until};
use walsh::gpu::adapter::{enumerate, native_instance};
use walsh::gpu::{AdapterSelector, Gpu};
use walsh::ops::WeightFormat;
use walsh::ops::attention::KvFormat;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: Option<BenchAction>,
    /// Run on every adapter instead of the one `--adapter` picks.
    #[arg(long)]
    pub all_adapters: bool,
    /// Suites to run; a comma-separated list (`kernels,decoder`) runs several.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub suite: Vec<SuiteArg>,
    /// Small sizes and few repeats: checks that everything runs.
    #[arg(long)]
    pub quick: bool,
    /// Where reports go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Smallest d_model of the paper grid (default: its smallest, 256 or 128 with
    /// --quick): with --max-d-model, the grid's big cells alone.
    #[arg(long)]
    pub min_d_model: Option<usize>,
    /// Largest d_model of the paper grid (default 4096, 256 with --quick).
    #[arg(long)]
    pub max_d_model: Option<usize>,
    /// Smallest batch of the paper grid (of 1, 4 and 16; 1 and 4 with --quick): with
    /// --min-d-model, one big cell alone.
    #[arg(long)]
    pub min_batch: Option<usize>,
    /// Smallest context of the paper grid (of 128, 512 and 2048; 64 and 128 with
    /// --quick): the long contexts alone.
    #[arg(long)]
    pub min_context: Option<usize>,
    /// Largest context of the paper grid (default 2048, 128 with --quick).
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Largest width of the kernel suite (default 16384).
    #[arg(long)]
    pub max_kernel_n: Option<usize>,
    /// Stop starting new cases after this many seconds and write the report of those
    /// measured (a case under way finishes first). Default: no bound.
    #[arg(long)]
    pub seconds: Option<f64>,
    /// KV cache format of the attention kernels and the decoders: f16, f32, q8, q4, q8r or
    /// q4r (as `walsh generate --kv-cache`).
    #[arg(long, default_value = "f16")]
    pub kv_cache: KvFormat,
    /// Weight format of the decoder suite's variants and the paper grid's models: f16, or
    /// block-quantized q8 / q4 layer matrices. The decoder suite also runs the Hadamard
    /// model in the other two, side by side. Reports of q8 / q4 runs are named
    /// `<adapter>-q8.*` / `<adapter>-q4.*`.
    #[arg(long, value_enum, default_value = "f16")]
    pub weights: WeightsArg,
    /// Grouped-query attention besides the ungrouped models: query heads per KV head, a
    /// comma-separated list (`4,8` for 4:1 and 8:1). Adds a dense and a Hadamard row per
    /// grouping to the decoder suite and a grid per grouping to the paper suite (at the
    /// widths whose heads it divides). Default: none.
    #[arg(long, value_delimiter = ',')]
    pub kv_groups: Vec<usize>,
    /// For GPU owners: every suite at full size on the chosen adapter (default: the best
    /// one), written into bench-results/ and merged with the reports there, then what to
    /// send. Takes no size bounds.
    #[arg(
        long,
        conflicts_with_all = ["quick", "min_d_model", "max_d_model", "min_batch", "min_context", "max_context", "max_kernel_n", "all_adapters", "suite", "kv_groups"]
    )]
    pub contribute: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchAction {
    /// Combine reports (`*.json` in each directory) into one cross-vendor table and chart.
    Merge {
        dirs: Vec<PathBuf>,
        /// Where `merged.md` and `merged.svg` go.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// Print the table of a `page-vs-native.json` (written by `cargo xtask page-vs-native`).
    PageTable { file: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightsArg {
    F16,
    Q8,
    Q4,
}

impl From<WeightsArg> for WeightFormat {
    fn from(w: WeightsArg) -> Self {
        match w {
            WeightsArg::F16 => WeightFormat::F16,
            WeightsArg::Q8 => WeightFormat::Q8,
            WeightsArg::Q4 => WeightFormat::Q4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SuiteArg {
    Kernels,
    Decoder,
    Paper,
    All,
}

/// The suites `args` name, each once, in the order the run takes them.
fn suites(args: &[SuiteArg]) -> Vec<Suite> {
    [
        (Suite::Kernels, SuiteArg::Kernels),
        (Suite::Decoder, SuiteArg::Decoder),
        (Suite::Paper, SuiteArg::Paper),
    ]
    .into_iter()
    .filter(|(_, arg)| args.iter().any(|a| a == arg || *a == SuiteArg::All))
    .map(|(suite, _)| suite)
    .collect()
}

pub fn bench_cmd(args: &BenchArgs, adapter: &str) -> Result<()> {
    match &args.action {
        Some(BenchAction::Merge { dirs, out }) => return merge_cmd(dirs, out),
        Some(BenchAction::PageTable { file }) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            print!(
                "{}",
                PageVsNative::from_json(&file.display().to_string(), &text)?.to_markdown()
            );
            return Ok(());
        }
        None => {}
    }
    if args.contribute {
        return contribute(adapter, args.weights);
    }
    let mut options = BenchOptions::new(suites(&args.suite), args.quick);
    if let Some(d) = args.min_d_model {
        options.min_d_model = d;
    }
    if let Some(d) = args.max_d_model {
        options.max_d_model = d;
    }
    if let Some(b) = args.min_batch {
        options.min_batch = b;
    }
    if let Some(c) = args.min_context {
        options.min_context = c;
    }
    if let Some(c) = args.max_context {
        options.max_context = c;
    }
    if let Some(n) = args.max_kernel_n {
        options.max_kernel_n = n;
    }
    options.kv_cache = args.kv_cache;
    options.weights = args.weights.into();
    if let Some(g) = args.kv_groups.iter().find(|&&g| g < 2) {
        bail!(
            "--kv-groups {g}: give 2 or more query heads per KV head (the ungrouped models \
             run anyway)"
        );
    }
    options.kv_groups = args.kv_groups.clone();
    check_sizes(&options)?;
    let gpus: Vec<Gpu> = if args.all_adapters {
        let adapters = enumerate(&native_instance());
        if adapters.is_empty() {
            bail!(walsh::gpu::GpuError::NoAdapter);
        }
        adapters
            .into_iter()
            .enumerate()
            .map(|(i, a)| pollster::block_on(Gpu::from_adapter(a, i)))
            .collect::<Result<_, _>>()?
    } else {
        vec![Gpu::new(&adapter.parse::<AdapterSelector>()?)?]
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for gpu in &gpus {
        eprintln!("benchmarking {}", gpu.describe());
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
                .expect("valid template"),
        );
        // Cases left unmeasured when the run ended (the bound stopped it).
        let left = std::cell::Cell::new(0);
        // Without a terminal (a log file) the bar is hidden: a line per case instead.
        let lines = bar.is_hidden();
        let start = std::time::Instant::now();
        let mut progress = |what: &str, done: usize, total: usize| {
            left.set(total - done);
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_string());
            if lines {
                eprintln!(
                    "[{:>5.0} s] {done}/{total} {what}",
                    start.elapsed().as_secs_f64()
                );
            }
        };
        let over = || {
            args.seconds
                .is_some_and(|s| start.elapsed().as_secs_f64() >= s)
        };
        // The reports are rewritten after each case: a run cut short keeps its cases.
        let mut written = Ok(());
        let mut measured = |report: &Report| {
            if written.is_ok() {
                written = write_reports(report, &args.out, false);
            }
        };
        let report = pollster::block_on(run_until(
            gpu,
            &options,
            Environment::native(),
            &mut progress,
            &mut measured,
            &over,
        ))?;
        written?;
        bar.finish_and_clear();
        if left.get() > 0 {
            eprintln!(
                "stopped after {:.0} s (--seconds): the report holds the cases measured by then",
                start.elapsed().as_secs_f64()
            );
        }
        write_reports(&report, &args.out, true)?;
        print!("{}", report.to_markdown());
    }
    Ok(())
}

/// Writes a report's files into `out`, naming each written when `say` is set.
fn write_reports(report: &Report, out: &Path, say: bool) -> Result<()> {
    for (name, text) in files(report) {
        let path = out.join(&name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if say {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The `--max-*` bounds: within what walsh supports, and each selecting at least one size
/// of the suites that run. Checked before any GPU work.
fn check_sizes(options: &BenchOptions) -> Result<()> {
    use walsh::model::config::{MAX_CONTEXT, MAX_HIDDEN_SIZE};
    use walsh::ops::hadamard::cpu::MAX_N;
    for (flag, value, limit) in [
        ("--max-d-model", options.max_d_model, MAX_HIDDEN_SIZE),
        ("--max-context", options.max_context, MAX_CONTEXT),
        ("--max-kernel-n", options.max_kernel_n, MAX_N),
    ] {
        if value > limit {
            bail!("{flag} {value} is larger than walsh supports ({limit})");
        }
    }
    // The same options without the bounds: the paper grid's smallest cell, for the message.
    let unbounded = BenchOptions {
        min_d_model: 0,
        max_d_model: usize::MAX,
        min_batch: 0,
        min_context: 0,
        max_context: usize::MAX,
        ..options.clone()
    };
    let paper = walsh::bench::decoder::paper_cells;
    if options.suites.contains(&Suite::Paper) && paper(options).is_empty() {
        let cells = paper(&unbounded);
        let range = |of: fn(&walsh::bench::decoder::PaperCell) -> usize| {
            let values = cells.iter().map(of);
            format!(
                "{}..{}",
                values.clone().min().unwrap_or(0),
                values.max().unwrap_or(0)
            )
        };
        bail!(
            "--min-d-model {}, --max-d-model {}, --min-batch {}, --min-context {} and \
             --max-context {} leave the paper grid empty: its cells have d_model {}, batch {} \
             and context {}",
            options.min_d_model,
            options.max_d_model,
            options.min_batch,
            options.min_context,
            options.max_context,
            range(|c| c.d_model),
            range(|c| c.batch),
            range(|c| c.context),
        );
    }
    if let Some(smallest) = walsh::bench::kernels::smallest_width_bounded_out(options) {
        bail!(
            "--max-kernel-n {} leaves the kernel suite empty: its smallest width is {smallest}",
            options.max_kernel_n
        );
    }
    Ok(())
}

/// Reads every `*.json` report in `dirs`.
pub fn read_reports(dirs: &[PathBuf]) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    for dir in dirs {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        for p in paths {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            // Reports of other kinds sit next to the adapter reports and name their kind
            // (`page-vs-native.json`, `peer-llamacpp-*.json`); an adapter report names none.
            if Report::other_kind(&text).is_none() {
                reports.push(Report::from_json(&p.display().to_string(), &text)?);
            }
        }
    }
    Ok(reports)
}

/// Every `page-vs-native.json` in `dirs`.
fn read_page_reports(dirs: &[PathBuf]) -> Result<Vec<PageVsNative>> {
    let mut out = Vec::new();
    for dir in dirs {
        let path = dir.join(format!("{}.json", walsh::bench::page::KIND));
        if let Ok(text) = std::fs::read_to_string(&path) {
            out.push(PageVsNative::from_json(&path.display().to_string(), &text)?);
        }
    }
    Ok(out)
}

fn merge_cmd(dirs: &[PathBuf], out: &Path) -> Result<()> {
    if dirs.is_empty() {
        bail!("name at least one directory of reports");
    }
    let reports = read_reports(dirs)?;
    if reports.is_empty() {
        bail!("no *.json report found in {dirs:?}");
    }
    let (mut md, svg) = merge(&reports);
    for page in read_page_reports(dirs)? {
        md.push('\n');
        md.push_str(&page.to_markdown());
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("merged.md"), &md)?;
    std::fs::write(out.join("merged.svg"), svg)?;
    print!("{md}");
    eprintln!(
        "merged {} reports into {}",
        reports.len(),
        out.join("merged.md").display()
    );
    Ok(())
}

/// `walsh bench --contribute`: the full suites on the chosen adapter, into
/// bench-results/, merged with the reports already there; then what to send.
fn contribute(adapter: &str, weights: WeightsArg) -> Result<()> {
    let out = PathBuf::from("bench-results");
    let gpu = Gpu::new(&adapter.parse::<AdapterSelector>()?)?;
    if gpu.is_cpu_adapter() {
        eprintln!(
            "walsh: {} is a CPU adapter (a software rasterizer): its figures say little about \
             GPUs, and bench-results/ has lavapipe and llvmpipe already. Pick a GPU with \
             --adapter (see `walsh adapters`) if the machine has one.",
            gpu.describe()
        );
    }
    let args = BenchArgs {
        action: None,
        all_adapters: false,
        suite: vec![SuiteArg::All],
        quick: false,
        out: out.clone(),
        min_d_model: None,
        max_d_model: None,
        min_batch: None,
        min_context: None,
        max_context: None,
        max_kernel_n: None,
        seconds: None,
        kv_cache: KvFormat::default(),
        weights,
        kv_groups: Vec::new(),
        contribute: false,
    };
    eprintln!(
        "walsh: the full benchmark on {}: every suite, no size bounds",
        gpu.describe()
    );
    let slug = match WeightFormat::from(weights) {
        WeightFormat::F16 => walsh::bench::adapter_slug(gpu.summary()),
        w => format!("{}-{}", walsh::bench::adapter_slug(gpu.summary()), w.name()),
    };
    drop(gpu);
    bench_cmd(&args, adapter)?;
    merge_cmd(std::slice::from_ref(&out), &out)?;
    println!(
        "\nTo contribute this report: add bench-results/{slug}.* and bench-results/merged.* \
         to a branch and send a pull request (or attach the files to an issue), saying which \
         GPU, driver and OS it was:\n\n  git checkout -b bench-{slug}\n  git add \
         bench-results/{slug}.* bench-results/merged.*\n  git commit -m \"bench: {slug}\"\n"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_lists_run_each_suite_once_in_order() {
        use SuiteArg::*;
        assert_eq!(
            suites(&[Decoder, Kernels, Decoder]),
            [Suite::Kernels, Suite::Decoder]
        );
        assert_eq!(
            suites(&[Paper, All]),
            [Suite::Kernels, Suite::Decoder, Suite::Paper]
        );
        assert_eq!(suites(&[Paper]), [Suite::Paper]);
    }
}
