//! Reports: the versioned JSON schema, Markdown tables, SVG charts, and the merge of
//! reports from many machines into one cross-vendor table and chart.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::decoder::{DecoderResult, PaperResult};
use super::kernels::{KernelResult, Roofline};
use super::{BenchError, BenchOptions, adapter_slug};
use crate::gpu::AdapterSummary;
use crate::ops::WeightFormat;

/// Bumped whenever a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a report was made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub walsh_version: String,
    /// The commit the build came from (`git rev-parse --short=12 HEAD` at compile time,
    /// by build.rs), where known.
    pub git_commit: Option<String>,
    pub os: String,
    pub arch: String,
    /// Free text, e.g. "native" or a browser's user agent.
    pub runtime: String,
}

impl Environment {
    /// This build on this machine.
    pub fn native() -> Self {
        Self {
            walsh_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: option_env!("WALSH_GIT_COMMIT").map(str::to_string),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            runtime: "native".into(),
        }
    }

    /// This build in a browser described by its user agent.
    pub fn browser(user_agent: &str) -> Self {
        Self {
            walsh_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: option_env!("WALSH_GIT_COMMIT").map(str::to_string),
            os: "browser".into(),
            arch: "wasm32".into(),
            runtime: format!("webgpu: {user_agent}"),
        }
    }
}

/// Everything one run measured on one adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub environment: Environment,
    pub adapter: AdapterSummary,
    /// "gpu-timestamps" or "wall-clock": how kernel times were taken.
    pub timing: String,
    pub options: BenchOptions,
    pub roofline: Roofline,
    pub kernels: Vec<KernelResult>,
    pub decoder: Vec<DecoderResult>,
    pub paper: Vec<PaperResult>,
}

impl Report {
    /// The adapter's slug, with the weight format when it is not f16: a q4 run's files
    /// sit beside the f16 run's of the same adapter.
    pub fn slug(&self) -> String {
        match self.options.weights {
            WeightFormat::F16 => adapter_slug(&self.adapter),
            w => format!("{}-{}", adapter_slug(&self.adapter), w.name()),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize")
    }

    /// The `kind` a JSON file in a reports folder names where it is not an adapter report
    /// (which names none): [`super::page::KIND`], or `peer-llamacpp` from
    /// `benches/peer-llamacpp.sh`. `walsh bench merge` reads the files without one.
    pub fn other_kind(text: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        v.get("kind")?.as_str().map(str::to_string)
    }

    /// Parses a report, refusing other schema versions with a clear message.
    pub fn from_json(path: &str, text: &str) -> Result<Self, BenchError> {
        let err = |message: String| BenchError::Report {
            path: path.into(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let version = value.get("schema_version").and_then(|v| v.as_u64());
        if version != Some(SCHEMA_VERSION as u64) {
            return Err(err(format!(
                "schema version {version:?}, this walsh reads version {SCHEMA_VERSION}"
            )));
        }
        let report: Report = serde_json::from_value(value).map_err(|e| err(e.to_string()))?;
        report.check().map_err(err)?;
        Ok(report)
    }

    /// Checks that every measured figure is finite and positive (times ordered min <=
    /// median <= max) and every gain finite: what a report from a working run holds.
    pub fn check(&self) -> Result<(), String> {
        let positive = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{what} = {v}"))
            }
        };
        positive("copy buffer GB/s", self.roofline.copy_buffer_gb_per_s)?;
        positive("copy shader GB/s", self.roofline.copy_shader_gb_per_s)?;
        for k in &self.kernels {
            let what = format!("{} n={} rows={}", k.kernel, k.n, k.rows);
            let t = &k.time;
            if !(t.min_s <= t.median_s && t.median_s <= t.max_s) {
                return Err(format!("{what}: times out of order {t:?}"));
            }
            for v in [t.median_s, k.gb_per_s, k.gflop_per_s, k.fraction_of_copy] {
                positive(&what, v)?;
            }
        }
        let decoders = self.decoder.iter().chain(
            self.paper
                .iter()
                .flat_map(|p| p.dense.iter().chain(p.hadamard.iter())),
        );
        for d in decoders {
            let what = format!("{} d={} batch={}", d.variant, d.d_model, d.batch);
            positive(&what, d.prefill_tokens_per_s)?;
            positive(&what, d.decode_tokens_per_s)?;
            positive(&what, d.peak_bytes as f64)?;
        }
        for p in self.paper.iter().filter(|p| p.skipped.is_none()) {
            for g in [p.params_gain, p.memory_gain, p.prefill_gain, p.decode_gain] {
                if !g.is_finite() {
                    return Err(format!("paper d={} batch={}: gain {g}", p.d_model, p.batch));
                }
            }
        }
        Ok(())
    }

    /// The report as Markdown tables.
    pub fn to_markdown(&self) -> String {
        let a = &self.adapter;
        let mut s = String::new();
        let _ = writeln!(s, "# walsh bench: {} ({})\n", a.name, a.backend);
        let e = &self.environment;
        let _ = writeln!(
            s,
            "walsh {} ({}), {} {}, {}; driver {} {}; timing: {}; {} weights; {} KV cache{}\n",
            e.walsh_version,
            e.git_commit.as_deref().unwrap_or("commit unknown"),
            e.os,
            e.arch,
            e.runtime,
            a.driver,
            a.driver_info,
            self.timing,
            self.options.weights.name(),
            self.options.kv_cache.name(),
            if self.options.quick {
                "; quick run"
            } else {
                ""
            }
        );
        let r = &self.roofline;
        let _ = writeln!(
            s,
            "Roofline over {} MiB: buffer copy {:.2} GB/s, copy shader {:.2} GB/s (read + write).\n",
            r.bytes >> 20,
            r.copy_buffer_gb_per_s,
            r.copy_shader_gb_per_s
        );
        if !self.kernels.is_empty() {
            s.push_str("## Kernels\n\n| kernel | n | rows | median ms | min ms | max ms | GB/s | GFLOP/s | of copy |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for k in &self.kernels {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1}% |",
                    k.kernel,
                    k.n,
                    k.rows,
                    k.time.median_s * 1e3,
                    k.time.min_s * 1e3,
                    k.time.max_s * 1e3,
                    k.gb_per_s,
                    k.gflop_per_s,
                    100.0 * k.fraction_of_copy
                );
            }
            s.push('\n');
        }
        if !self.decoder.is_empty() {
            s.push_str("## Decoder\n\nDispatches and readbacks per decoded token of the decode steps (GPU-resident chunks: one readback per chunk). Weight MiB: every weight buffer on the GPU; read / token: the weight and KV-cache bytes a decode step reads per decoded token, from the buffer sizes (`decode_bytes_per_token` in src/model/sizes.rs).\n\n| variant | weights | d_model | layers | batch | prompt | params | attention params | prefill tok/s | decode tok/s | peak MiB | weight MiB | read / token KiB | KV cache | dispatches / token | readbacks / token |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n");
            for d in &self.decoder {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.1} | {} | {:.1} | {:.3} |",
                    d.variant,
                    d.weights.name(),
                    d.d_model,
                    d.layers,
                    d.batch,
                    d.prompt_tokens,
                    d.params,
                    d.attention_params,
                    d.prefill_tokens_per_s,
                    d.decode_tokens_per_s,
                    mib(d.peak_bytes),
                    mib(d.weight_bytes),
                    d.bytes_per_token / 1024.0,
                    d.kv_cache.name(),
                    d.dispatches_per_token,
                    d.readbacks_per_token
                );
            }
            s.push('\n');
            s.push_str(&profile_table(&self.decoder));
            s.push_str(&weight_formats_table(&self.decoder));
        }
        if !self.paper.is_empty() {
            let new_tokens = (self.paper.iter())
                .find_map(|p| p.dense.as_ref().map(|d| d.new_tokens))
                .unwrap_or(0);
            let (chunks, steps) = super::decoder::paper_chunks(new_tokens);
            let _ = write!(
                s,
                "## The paper's claims: Hadamard vs dense output projection\n\nGains of the Hadamard model over the dense one (two layers, {} weights, the report's KV cache format): fewer parameters, less peak memory, more prefill and decode throughput. Each round prefills both models' contexts less the new tokens (which goes first alternating), then decodes {} chunks of {} steps, the two models' chunks alternating (and which goes first); a decode gain is the median of the paired chunks' ratios, a prefill gain that of the rounds'. Rounds: at least {}, then more until each model has decoded for {} s, at most {}. `middle half`: the range of the middle half of the paired chunks' decode gains (how much the machine moved them); `pairs`: how many.\n\n| d_model | batch | context | params | peak memory | prefill | decode | middle half | rounds | pairs |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                self.options.weights.name(),
                chunks,
                steps,
                super::decoder::PAPER_MIN_ROUNDS,
                super::decoder::PAPER_DECODE_SECONDS,
                super::decoder::PAPER_MAX_ROUNDS,
            );
            for p in &self.paper {
                match &p.skipped {
                    Some(why) => {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | skipped: {} | | | | | | |",
                            p.d_model,
                            p.batch,
                            p.context,
                            why.lines().next().unwrap_or("")
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            "| {} | {} | {} | {:.1}% | {:.1}% | {:+.1}% | {:+.1}% | {} | {} | {} |",
                            p.d_model,
                            p.batch,
                            p.context,
                            100.0 * p.params_gain,
                            100.0 * p.memory_gain,
                            100.0 * p.prefill_gain,
                            100.0 * p.decode_gain,
                            middle_half(&p.decode_gains),
                            p.rounds,
                            p.decode_gains.len(),
                        );
                    }
                }
            }
            s.push('\n');
        }
        s
    }
}

/// The range of the middle half of a cell's paired gains (`+1.2..+4.5%`), between the
/// first and third quartiles (the ranks outward of them: all three of three pairs); `-`
/// for a report without them.
pub(super) fn middle_half(gains: &[f64]) -> String {
    if gains.is_empty() {
        return "-".into();
    }
    let mut g = gains.to_vec();
    g.sort_by(f64::total_cmp);
    let last = g.len() - 1;
    format!(
        "{:+.1}..{:+.1}%",
        100.0 * g[last / 4],
        100.0 * g[(3 * last).div_ceil(4)]
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The profiled decode steps of the batch-1 decoder rows: dispatches, where the time
/// goes (the three costliest kernel families) and the gap between the step's wall time
/// and its dispatches' sum.
fn profile_table(decoders: &[DecoderResult]) -> String {
    let mut s = String::new();
    for d in decoders {
        let Some(p) = &d.profile else { continue };
        if s.is_empty() {
            let _ = write!(
                s,
                "## Decode step profile\n\nOne sequence's decode step after its prompt, every dispatch timed ({}; `walsh profile` prints one in full). Wall: the step in one pass, submitted and waited for; host: the start of it, encoding the pass.\n\n| variant | weights | d_model | layers | dispatches | per layer | sum us | wall us | wall us / dispatch | host us / dispatch | top kernels (share of the sum) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
                p.method.describe()
            );
        }
        let top: Vec<String> = p
            .decode
            .kernels
            .iter()
            .take(3)
            .map(|k| format!("{} x{} {:.0}%", k.kernel, k.dispatches, 100.0 * k.share))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} | {} |",
            d.variant,
            d.weights.name(),
            d.d_model,
            d.layers,
            p.decode.dispatches,
            p.decode_dispatches_per_layer,
            p.decode.sum_us,
            p.decode.wall_us,
            p.decode.wall_us_per_dispatch,
            p.decode.host_encode_us_per_dispatch(),
            top.join(", ")
        );
    }
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// The decoder rows of one model in several weight formats, each against its f16 row:
/// decode rate, weight bytes and bytes read per decoded token. Empty when no model ran in
/// more than one format.
pub fn weight_formats_table(rows: &[DecoderResult]) -> String {
    let same = |a: &DecoderResult, b: &DecoderResult| {
        (
            a.variant.as_str(),
            a.d_model,
            a.layers,
            a.batch,
            a.prompt_tokens,
            a.new_tokens,
        ) == (
            b.variant.as_str(),
            b.d_model,
            b.layers,
            b.batch,
            b.prompt_tokens,
            b.new_tokens,
        )
    };
    let mut s = String::new();
    for base in rows.iter().filter(|r| r.weights == WeightFormat::F16) {
        let mut group: Vec<&DecoderResult> = rows.iter().filter(|r| same(r, base)).collect();
        group.sort_by_key(|r| match r.weights {
            WeightFormat::F32 => 0,
            WeightFormat::F16 => 1,
            WeightFormat::Q8 => 2,
            WeightFormat::Q4 => 3,
        });
        if group.len() < 2 {
            continue;
        }
        if s.is_empty() {
            s.push_str("## Weight formats\n\nOne random model with its layer matrices in f16 and block-quantized q8 / q4 (the embedding and lm_head stay f16), each against f16.\n\n| variant | d_model | layers | batch | weights | decode tok/s | vs f16 | weight MiB | vs f16 | read / token KiB | vs f16 |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n");
        }
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        for r in group {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.2} | {:.2}x | {:.2} | {:.2}x | {:.1} | {:.2}x |",
                r.variant,
                r.d_model,
                r.layers,
                r.batch,
                r.weights.name(),
                r.decode_tokens_per_s,
                ratio(r.decode_tokens_per_s, base.decode_tokens_per_s),
                mib(r.weight_bytes),
                ratio(r.weight_bytes as f64, base.weight_bytes as f64),
                r.bytes_per_token / 1024.0,
                ratio(r.bytes_per_token, base.bytes_per_token),
            );
        }
    }
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// A line or bar chart as a standalone SVG: series of (x label, value) points.
pub struct Chart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    /// Category labels along x.
    pub x: Vec<String>,
    /// (series name, one value per x; NaN where missing).
    pub series: Vec<(String, Vec<f64>)>,
    /// Values are fractions shown as percent.
    pub percent: bool,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart<'_> {
    /// Grouped bars, one group per x label, with a zero line and a legend.
    pub fn to_svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 190.0, 40.0, 70.0);
        let values = self
            .series
            .iter()
            .flat_map(|s| s.1.iter())
            .filter(|v| v.is_finite());
        let (mut lo, mut hi) = values.fold((0f64, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
        if hi - lo < 1e-12 {
            hi = lo + 1.0;
        }
        let pad = 0.08 * (hi - lo);
        hi += pad;
        if lo < 0.0 {
            lo -= pad;
        }
        let plot_w = w - left - right;
        let plot_h = h - top - bottom;
        let y = |v: f64| top + plot_h * (hi - v) / (hi - lo);
        let fmt = |v: f64| {
            if self.percent {
                format!("{:.1}%", 100.0 * v)
            } else {
                format!("{v:.3}")
            }
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            left + plot_w / 2.0,
            escape(self.title)
        );
        for k in 0..=4 {
            let v = lo + (hi - lo) * k as f64 / 4.0;
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                left - 6.0,
                yy + 4.0,
                fmt(v)
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#333"/>"##,
            left + plot_w,
            y(0.0),
            y(0.0)
        );
        let groups = self.x.len().max(1) as f64;
        let group_w = plot_w / groups;
        let bar_w = 0.8 * group_w / self.series.len().max(1) as f64;
        for (gi, label) in self.x.iter().enumerate() {
            let gx = left + group_w * gi as f64;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" transform="rotate(-30 {:.1} {:.1})">{}</text>"#,
                gx + group_w / 2.0,
                top + plot_h + 16.0,
                gx + group_w / 2.0,
                top + plot_h + 16.0,
                escape(label)
            );
            for (si, (_, vals)) in self.series.iter().enumerate() {
                let Some(&v) = vals.get(gi) else { continue };
                if !v.is_finite() {
                    continue;
                }
                let x0 = gx + 0.1 * group_w + bar_w * si as f64;
                let (y0, y1) = (y(v.max(0.0)), y(v.min(0.0)));
                let _ = writeln!(
                    s,
                    r#"<rect x="{x0:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                    bar_w.max(1.0),
                    (y1 - y0).max(0.5),
                    COLORS[si % COLORS.len()],
                    fmt(v)
                );
            }
        }
        for (si, (name, _)) in self.series.iter().enumerate() {
            let ly = top + 16.0 * si as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{ly:.1}" width="12" height="12" fill="{}"/><text x="{}" y="{:.1}">{}</text>"#,
                w - right + 14.0,
                COLORS[si % COLORS.len()],
                w - right + 32.0,
                ly + 10.0,
                escape(name)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"#,
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            escape(self.y_label)
        );
        s.push_str("</svg>\n");
        s
    }
}

/// Gain vs d_model: one bar group per width (the smallest batch and context measured).
pub fn gains_chart(report: &Report) -> Option<String> {
    let cells: Vec<&PaperResult> = report
        .paper
        .iter()
        .filter(|p| p.skipped.is_none())
        .collect();
    let batch = cells.iter().map(|p| p.batch).min()?;
    let context = cells
        .iter()
        .filter(|p| p.batch == batch)
        .map(|p| p.context)
        .min()?;
    let row: Vec<&&PaperResult> = cells
        .iter()
        .filter(|p| p.batch == batch && p.context == context)
        .collect();
    let pick = |f: fn(&PaperResult) -> f64| row.iter().map(|p| f(p)).collect::<Vec<f64>>();
    let title = format!(
        "Hadamard vs dense, batch {batch}, context {context}: {}",
        report.adapter.name
    );
    Some(
        Chart {
            title: &title,
            y_label: "gain",
            x: row.iter().map(|p| format!("d={}", p.d_model)).collect(),
            series: vec![
                ("parameters".into(), pick(|p| p.params_gain)),
                ("peak memory".into(), pick(|p| p.memory_gain)),
                ("prefill tok/s".into(), pick(|p| p.prefill_gain)),
                ("decode tok/s".into(), pick(|p| p.decode_gain)),
            ],
            percent: true,
        }
        .to_svg(),
    )
}

/// Fraction of the copy shader's bandwidth per kernel, one bar group per kernel case.
pub fn kernels_chart(report: &Report) -> Option<String> {
    if report.kernels.is_empty() {
        return None;
    }
    let title = format!(
        "Fraction of copy bandwidth: {} ({})",
        report.adapter.name, report.adapter.backend
    );
    Some(
        Chart {
            title: &title,
            y_label: "of copy-shader bandwidth",
            x: report
                .kernels
                .iter()
                .map(|k| format!("{} n={} r={}", k.kernel, k.n, k.rows))
                .collect(),
            series: vec![(
                "fraction".into(),
                report.kernels.iter().map(|k| k.fraction_of_copy).collect(),
            )],
            percent: true,
        }
        .to_svg(),
    )
}

/// Files a run writes: `<slug>.json`, `<slug>.md`, and the charts it has data for.
pub fn files(report: &Report) -> Vec<(String, String)> {
    let slug = report.slug();
    let mut out = vec![
        (format!("{slug}.json"), report.to_json()),
        (format!("{slug}.md"), report.to_markdown()),
    ];
    if let Some(svg) = gains_chart(report) {
        out.push((format!("{slug}-gains.svg"), svg));
    }
    if let Some(svg) = kernels_chart(report) {
        out.push((format!("{slug}-kernels.svg"), svg));
    }
    out
}

/// One table and one chart across many reports (machines, adapters, vendors): roofline,
/// the fast WHT's fraction of copy bandwidth at each width, decode gains.
pub fn merge(reports: &[Report]) -> (String, String) {
    let mut md = String::from(
        "# walsh bench: every adapter\n\n| adapter | backend | weights | runtime | timing | copy shader GB/s |",
    );
    let mut widths: Vec<usize> = reports
        .iter()
        .flat_map(|r| {
            r.kernels
                .iter()
                .filter(|k| k.kernel == "wht_fast")
                .map(|k| k.n)
        })
        .collect();
    widths.sort_unstable();
    widths.dedup();
    for n in &widths {
        let _ = write!(md, " WHT n={n} of copy |");
    }
    md.push_str(" decode gain (largest d) | memory gain (largest d) |\n|---|---|---|---|---|---:|");
    for _ in &widths {
        md.push_str("---:|");
    }
    md.push_str("---:|---:|\n");
    let mut series = Vec::new();
    for r in reports {
        let _ = write!(
            md,
            "| {} | {} | {} | {} | {} | {:.2} |",
            r.adapter.name,
            r.adapter.backend,
            r.options.weights.name(),
            r.environment.runtime,
            r.timing,
            r.roofline.copy_shader_gb_per_s
        );
        let mut fractions = Vec::new();
        for n in &widths {
            // The batched transform (the one-row case is latency, not bandwidth).
            let k = (r.kernels.iter())
                .filter(|k| k.kernel == "wht_fast" && k.n == *n)
                .max_by_key(|k| k.rows);
            fractions.push(k.map_or(f64::NAN, |k| k.fraction_of_copy));
            match k {
                Some(k) => {
                    let _ = write!(md, " {:.1}% |", 100.0 * k.fraction_of_copy);
                }
                None => md.push_str(" - |"),
            }
        }
        let best = r
            .paper
            .iter()
            .filter(|p| p.skipped.is_none())
            .max_by_key(|p| (p.d_model, p.batch, p.context));
        match best {
            Some(p) => {
                let _ = writeln!(
                    md,
                    " {:+.1}% (d={}, batch {}, context {}) | {:.1}% |",
                    100.0 * p.decode_gain,
                    p.d_model,
                    p.batch,
                    p.context,
                    100.0 * p.memory_gain
                );
            }
            None => md.push_str(" - | - |\n"),
        }
        if fractions.iter().all(|f| !f.is_finite()) {
            // A report without the kernel suite (decoder only): no bars, so no legend entry.
            continue;
        }
        let weights = match r.options.weights {
            WeightFormat::F16 => String::new(),
            w => format!(", {} weights", w.name()),
        };
        series.push((
            format!("{} ({}{weights})", r.adapter.name, r.adapter.backend),
            fractions,
        ));
    }
    let svg = Chart {
        title: "Fast WHT: fraction of copy-shader bandwidth, every adapter",
        y_label: "of copy-shader bandwidth",
        x: widths.iter().map(|n| format!("n={n}")).collect(),
        series,
        percent: true,
    }
    .to_svg();
    (md, svg)
}
