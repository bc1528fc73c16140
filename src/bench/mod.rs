//! `walsh bench`: how fast the Hadamard projection is against the dense one, and how close
//! each kernel comes to the adapter's copy bandwidth, written as reports that compare
//! across machines and vendors.
//!
//! - [`kernels`]: the roofline (buffer copy, copy shader) and every kernel's bytes/s,
//!   FLOP/s and fraction of the copy shader's bandwidth.
//! - [`decoder`]: dense vs Hadamard random-weight models (and the query variants), and
//!   the paper's grid of gains over d_model x batch x context.
//! - [`report`]: the versioned JSON schema, Markdown tables, SVG charts and the merge of
//!   many reports.
//! - [`page`]: the browser page against native walsh on the same adapter.

pub mod decoder;
pub mod kernels;
pub mod measure;
pub mod page;
pub mod report;
pub mod tune;

use serde::{Deserialize, Serialize};

use crate::gpu::{AdapterSummary, Gpu};
use crate::model::ModelError;
use crate::ops::WeightFormat;
use crate::ops::attention::KvFormat;

pub use report::{Report, SCHEMA_VERSION};

/// Which suites to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Suite {
    Kernels,
    Decoder,
    Paper,
}

/// How much to measure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchOptions {
    pub suites: Vec<Suite>,
    /// Small sizes and few repeats: checks that everything runs.
    pub quick: bool,
    /// Smallest d_model of the paper grid (0 in reports before this field: no bound).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_d_model: usize,
    /// Largest d_model of the paper grid.
    pub max_d_model: usize,
    /// Smallest batch of the paper grid (0 in reports before this field: no bound).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_batch: usize,
    /// Smallest context of the paper grid (0 in reports before this field: no bound).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_context: usize,
    /// Largest context of the paper grid.
    pub max_context: usize,
    /// Largest width of the kernel suite (reports before this field ran every width).
    #[serde(default = "all_kernel_widths")]
    pub max_kernel_n: usize,
    /// KV cache format of the attention kernels and decoders (reports before this field
    /// ran f32 caches).
    #[serde(default = "f32_cache")]
    pub kv_cache: KvFormat,
    /// Weight format of the decoder suite's variants and of the paper grid (reports before
    /// this field ran f16). The decoder suite compares f16, q8 and q4 whatever this is.
    #[serde(default = "f16_weights")]
    pub weights: WeightFormat,
    /// Groupings (query heads per KV head) of grouped-query attention to run besides the
    /// ungrouped models: extra dense and Hadamard rows in the decoder suite and extra
    /// cells in the paper grid. Empty by default (and in reports before this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv_groups: Vec<usize>,
}

pub(crate) fn f32_cache() -> KvFormat {
    KvFormat::F32
}

pub(crate) fn f16_weights() -> WeightFormat {
    WeightFormat::F16
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn all_kernel_widths() -> usize {
    16384
}

impl BenchOptions {
    pub fn new(suites: Vec<Suite>, quick: bool) -> Self {
        Self {
            suites,
            quick,
            min_d_model: 0,
            min_batch: 0,
            min_context: 0,
            max_d_model: if quick { 256 } else { 4096 },
            max_context: if quick { 128 } else { 2048 },
            max_kernel_n: all_kernel_widths(),
            kv_cache: KvFormat::default(),
            weights: WeightFormat::F16,
            kv_groups: Vec::new(),
        }
    }

    pub(crate) fn repeats(&self) -> usize {
        if self.quick { 3 } else { 10 }
    }
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Gpu(#[from] crate::gpu::GpuError),
    #[error(transparent)]
    Wht(#[from] crate::ops::hadamard::WhtError),
    #[error(transparent)]
    Quant(#[from] crate::blocks::QuantError),
    #[error("report {path}: {message}")]
    Report { path: String, message: String },
}

/// Progress of a run: (what is running, cases done, cases in all).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Runs the chosen suites on `gpu`. `environment` describes the machine (walsh version,
/// commit, OS) and is copied into the report.
pub async fn run(
    gpu: &Gpu,
    options: &BenchOptions,
    environment: report::Environment,
    progress: Progress<'_>,
) -> Result<Report, BenchError> {
    run_until(gpu, options, environment, progress, &mut |_| {}, &|| false).await
}

/// Puts a device's kernel choices back when dropped.
struct RestoreTuning<'g>(&'g Gpu, crate::gpu::Tuning);

impl Drop for RestoreTuning<'_> {
    fn drop(&mut self) {
        self.0.set_tuning(std::mem::take(&mut self.1));
    }
}

/// [`run`], checking `stop` between cases: when it returns true the report holds the
/// cases measured so far. `measured` sees the report after each case (`walsh bench`
/// writes it, so a run cut short keeps what it measured).
pub async fn run_until(
    gpu: &Gpu,
    options: &BenchOptions,
    environment: report::Environment,
    progress: Progress<'_>,
    measured: &mut dyn FnMut(&Report),
    stop: &dyn Fn() -> bool,
) -> Result<Report, BenchError> {
    // The decoders set the device's kernel choices for their models; the caller's come
    // back afterwards, however the run ends (the page's loaded model records its steps
    // with them).
    let _restore = RestoreTuning(gpu, gpu.tuning());
    let timing = if gpu.features().timestamp_query {
        "gpu-timestamps"
    } else {
        "wall-clock"
    };
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        environment,
        adapter: gpu.summary().clone(),
        timing: timing.into(),
        options: options.clone(),
        roofline: kernels::roofline(gpu, options).await?,
        kernels: Vec::new(),
        decoder: Vec::new(),
        paper: Vec::new(),
    };
    let mut plan = Vec::new();
    if options.suites.contains(&Suite::Kernels) {
        plan.extend(kernels::cases(gpu, options).into_iter().map(Job::Kernel));
    }
    if options.suites.contains(&Suite::Decoder) {
        plan.extend(
            decoder::decoder_cases(options)
                .into_iter()
                .map(Job::Decoder),
        );
    }
    if options.suites.contains(&Suite::Paper) {
        plan.extend(decoder::paper_cells(options).into_iter().map(Job::Paper));
    }
    let total = plan.len();
    for (done, job) in plan.into_iter().enumerate() {
        if stop() {
            progress("stopped", done, total);
            return Ok(report);
        }
        match job {
            Job::Kernel(case) => {
                progress(&case.label(), done, total);
                report
                    .kernels
                    .push(kernels::measure(gpu, &case, options, &report.roofline).await?);
            }
            Job::Decoder(case) => {
                progress(&case.label(), done, total);
                report.decoder.push(decoder::measure(gpu, &case).await?);
            }
            Job::Paper(cell) => {
                progress(&cell.label(), done, total);
                report.paper.push(decoder::measure_cell(gpu, &cell).await?);
            }
        }
        measured(&report);
    }
    progress("done", total, total);
    Ok(report)
}

enum Job {
    Kernel(kernels::KernelCase),
    Decoder(decoder::DecoderCase),
    Paper(decoder::PaperCell),
}

/// The summary of an adapter a report describes, as listed by `walsh adapters`.
pub fn adapter_slug(adapter: &AdapterSummary) -> String {
    let raw = format!("{}-{}", adapter.name, adapter.backend);
    let mut slug = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests;
