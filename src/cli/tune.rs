//! `walsh tune`, and the measured kernel choices every GPU command starts from: the
//! decode GEMVs are timed on the model's products the first time a model shape meets an
//! adapter, and the choice is cached in a file (walsh::bench::tune).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use walsh::bench::tune::{GemvTune, TuningCache, forced_tuning, tune_model, tune_model_with};
use walsh::gpu::{AdapterSelector, Gpu};
use walsh::model::weights::Model;
use walsh::ops::matmul::Kernel;

use super::run::load_model;

/// Alternating rounds per measurement: the median of 5 rides out a stray slow run.
const ROUNDS: usize = 5;

#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// Model directory (config.json + model.safetensors). Default: models/shakespeare-hadamard.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Alternating rounds of every candidate; the choice is the lowest median.
    #[arg(long, default_value_t = ROUNDS)]
    pub rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the choices are kept: `WALSH_TUNE_CACHE`, else `$XDG_CACHE_HOME/walsh/tuning.json`,
/// else `~/.cache/walsh/tuning.json`; none without a home.
pub fn cache_path() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("WALSH_TUNE_CACHE") {
        return Some(PathBuf::from(p));
    }
    let base = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("walsh").join("tuning.json"))
}

fn read_cache(path: Option<&Path>) -> TuningCache {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| TuningCache::parse(&t))
        .unwrap_or_default()
}

/// Writes the cache through a temporary file and a rename, so two walsh processes never
/// leave half a file.
fn write_cache(path: &Path, cache: &TuningCache) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(&tmp, cache.to_json())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// What `WALSH_TUNE` asks for instead of the measured choices.
enum Override {
    /// Unset: the cache, measuring where it has nothing.
    Measured,
    /// `off` (or `0`): the kernels' own choices by adapter type.
    Off,
    /// A GEMV's name: that GEMV for every weight format whose products it can run (the
    /// others keep the choice by adapter type); nothing measured or cached.
    Force(Kernel),
}

fn tune_override() -> Result<Override> {
    let Ok(v) = std::env::var("WALSH_TUNE") else {
        return Ok(Override::Measured);
    };
    if v.is_empty() {
        return Ok(Override::Measured);
    }
    if v.eq_ignore_ascii_case("off") || v == "0" {
        return Ok(Override::Off);
    }
    match Kernel::from_name(&v) {
        Some(k) => Ok(Override::Force(k)),
        None => {
            let names: Vec<&str> = Kernel::GEMVS.iter().map(|k| k.name()).collect();
            anyhow::bail!(
                "WALSH_TUNE={v} is neither `off` nor a decode GEMV ({})",
                names.join(", ")
            )
        }
    }
}

/// Sets `gpu`'s kernel choices for `model` from the cache, measuring (and caching) them
/// first where the cache has none. A cache that cannot be written costs only a
/// measurement next time, so that is not an error. `WALSH_TUNE` overrides (see
/// [`Override`]).
pub fn apply(gpu: &Gpu, model: &Model) -> Result<()> {
    match tune_override()? {
        Override::Measured => {}
        Override::Off => return Ok(()),
        Override::Force(kernel) => {
            gpu.set_tuning(forced_tuning(gpu, model, kernel));
            return Ok(());
        }
    }
    let path = cache_path();
    let mut cache = read_cache(path.as_deref());
    let (tuning, complete) = cache.tuning(gpu, model);
    if complete {
        gpu.set_tuning(tuning);
        return Ok(());
    }
    let (tuning, _) = pollster::block_on(tune_model(gpu, model, ROUNDS, &mut cache))
        .context("measuring the decode GEMVs")?;
    gpu.set_tuning(tuning);
    if let Some(p) = &path {
        let _ = write_cache(p, &cache);
    }
    Ok(())
}

/// Opens the adapter `adapter` names with its kernel choices for `model` set.
pub fn open_gpu(adapter: &str, model: &Model) -> Result<Gpu> {
    let selector: AdapterSelector = adapter.parse()?;
    let gpu = Gpu::new(&selector)?;
    apply(&gpu, model)?;
    Ok(gpu)
}

/// `walsh tune`: measures again, prints the timings, and caches the choices. For q8/q4
/// weights it also times the int8-activation GEMV (`gemv_dot4`), printed marked and never
/// chosen (docs/kernels.md, "int8 activations").
pub fn tune_cmd(args: &TuneArgs, adapter: &str) -> Result<()> {
    if args.rounds == 0 {
        anyhow::bail!("--rounds must be at least 1");
    }
    let model = load_model(args.model.as_deref())?;
    let selector: AdapterSelector = adapter.parse()?;
    let gpu = Gpu::new(&selector)?;
    let path = cache_path();
    let mut cache = read_cache(path.as_deref());
    // The int8-activation GEMV (q8/q4 weights) is timed too, for comparison only.
    let (_, tunes) =
        pollster::block_on(tune_model_with(&gpu, &model, args.rounds, true, &mut cache))?;
    let written = match &path {
        Some(p) => write_cache(p, &cache).map(|()| p.display().to_string()),
        None => Ok("nowhere (no HOME, XDG_CACHE_HOME or WALSH_TUNE_CACHE)".into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tunes)?);
    } else {
        print!("{}", table(&gpu, &tunes));
    }
    eprintln!("cached in {}", written?);
    Ok(())
}

fn table(gpu: &Gpu, tunes: &[GemvTune]) -> String {
    let mut out = format!(
        "Decode GEMVs on {}: µs of one step's products per weight format\n",
        gpu.describe()
    );
    for t in tunes {
        let shapes: Vec<String> = t
            .products
            .iter()
            .map(|p| format!("{}x[{}x{}]", p.count, p.n_out, p.n_in))
            .collect();
        out.push_str(&format!(
            "\n{} ({}):\n",
            t.format.name(),
            shapes.join(" + ")
        ));
        let best = t
            .candidates
            .iter()
            .map(|c| c.1)
            .fold(f64::INFINITY, f64::min);
        for (name, us) in &t.candidates {
            let mark = if *name == t.chosen { "  <- chosen" } else { "" };
            out.push_str(&format!(
                "  {name:<18} {us:>10.1} µs  {:>5.2}x{mark}\n",
                us / best
            ));
        }
        for (name, us) in &t.int8 {
            out.push_str(&format!(
                "  {name:<18} {us:>10.1} µs  {:>5.2}x  (int8 activations: not exact, never chosen)\n",
                us / best
            ));
        }
    }
    out
}
