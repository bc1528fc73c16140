//! The page against native walsh on the same adapter: `cargo xtask page-vs-native` writes
//! `page-vs-native.json` (this schema) after running the default model greedily in both
//! headless browsers and natively on the adapters their WebGPU runs on (Chromium:
//! SwiftShader; Firefox: the machine's Vulkan driver). `walsh bench page-table` renders it
//! and `walsh bench merge` appends it to the cross-adapter table.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::BenchError;

/// The `kind` field that tells this file from an adapter report.
pub const KIND: &str = "page-vs-native";

/// One measurement run of `cargo xtask page-vs-native`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageVsNative {
    pub kind: String,
    pub schema_version: u32,
    pub walsh_commit: Option<String>,
    pub prompt: String,
    /// Greedy tokens per run.
    pub tokens: usize,
    /// Runs measured after one warm-up, on each side.
    pub runs: usize,
    pub rows: Vec<PageRow>,
}

/// One browser against native walsh on the same adapter, for one build of walsh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageRow {
    /// Which build the row measured: `this` (the checkout running the tool) or the
    /// baseline's label (`cargo xtask page-vs-native --baseline DIR`), with its commit.
    #[serde(default = "this_build")]
    pub build: String,
    pub browser: String,
    pub browser_version: String,
    /// The adapter as the page names it.
    pub page_adapter: String,
    /// The adapter native walsh ran on (`walsh generate`'s stats).
    pub native_adapter: String,
    /// Median decode tokens/s through the page's Generate button (streaming into the page).
    pub page_tokens_per_s: f64,
    pub page_runs: Vec<f64>,
    /// Median decode tokens/s straight through the engine, with a no-op token callback
    /// (absent for builds whose page has no such entry).
    pub engine_only_tokens_per_s: Option<f64>,
    #[serde(default)]
    pub engine_only_runs: Vec<f64>,
    pub native_tokens_per_s: f64,
    pub native_runs: Vec<f64>,
    /// page / native.
    pub ratio: f64,
    pub engine_only_ratio: Option<f64>,
    /// Work per decoded token from the stats (absent for builds that did not count it).
    pub page_dispatches_per_token: Option<f64>,
    pub page_readbacks_per_token: Option<f64>,
    pub page_decode_chunks: Option<usize>,
    pub native_dispatches_per_token: Option<f64>,
    pub native_readbacks_per_token: Option<f64>,
    pub native_decode_chunks: Option<usize>,
}

fn this_build() -> String {
    "this".into()
}

/// `v` with `digits` decimals, or a dash when absent.
fn or_dash(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

impl PageVsNative {
    /// Parses and checks one: version 1, every rate finite and positive.
    pub fn from_json(path: &str, text: &str) -> Result<Self, BenchError> {
        let err = |message: String| BenchError::Report {
            path: path.into(),
            message,
        };
        let p: PageVsNative = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        if p.kind != KIND || p.schema_version != 1 {
            return Err(err(format!(
                "kind {:?} version {}, this walsh reads {KIND} version 1",
                p.kind, p.schema_version
            )));
        }
        for r in &p.rows {
            for (what, v) in [
                ("page tokens/s", Some(r.page_tokens_per_s)),
                ("engine-only tokens/s", r.engine_only_tokens_per_s),
                ("native tokens/s", Some(r.native_tokens_per_s)),
                ("ratio", Some(r.ratio)),
            ] {
                let Some(v) = v else { continue };
                if !(v.is_finite() && v > 0.0) {
                    return Err(err(format!("{}: {what} is {v}", r.browser)));
                }
            }
        }
        Ok(p)
    }

    /// The Markdown table: one row per browser and build.
    pub fn to_markdown(&self) -> String {
        let mut md = format!(
            "## The page vs native walsh on the same adapter\n\n\
             Default model, prompt `{}`, {} greedy tokens, median of {} warm runs (after one \
             warm-up; the builds' runs alternate); decode tokens/s from the generation stats. \
             \"engine only\" is the page's engine with a no-op token callback (no page work \
             per token).\n\n\
             | build | browser | adapter (page / native) | page tok/s | engine only tok/s | native tok/s | page / native | dispatches / token (page, native) | readbacks / token (page, native) |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|\n",
            self.prompt.escape_debug(),
            self.tokens,
            self.runs
        );
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} | {} {} | {} / {} | {:.2} | {} | {:.2} | {:.0}% | {}, {} | {}, {} |",
                r.build,
                r.browser,
                r.browser_version,
                r.page_adapter,
                r.native_adapter,
                r.page_tokens_per_s,
                or_dash(r.engine_only_tokens_per_s, 2),
                r.native_tokens_per_s,
                100.0 * r.ratio,
                or_dash(r.page_dispatches_per_token, 1),
                or_dash(r.native_dispatches_per_token, 1),
                or_dash(r.page_readbacks_per_token, 3),
                or_dash(r.native_readbacks_per_token, 3),
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Report;

    fn sample() -> PageVsNative {
        PageVsNative {
            kind: KIND.into(),
            schema_version: 1,
            walsh_commit: None,
            prompt: "ROMEO.".into(),
            tokens: 128,
            runs: 3,
            rows: vec![PageRow {
                build: "this".into(),
                browser: "Firefox".into(),
                browser_version: "153.8.0".into(),
                page_adapter: "Firefox 153's WebGPU adapter".into(),
                native_adapter: "llvmpipe (vulkan)".into(),
                page_tokens_per_s: 9.0,
                page_runs: vec![9.0, 8.9, 9.1],
                engine_only_tokens_per_s: Some(9.5),
                engine_only_runs: vec![9.5, 9.4, 9.6],
                native_tokens_per_s: 20.0,
                native_runs: vec![20.0, 19.0, 21.0],
                ratio: 0.45,
                engine_only_ratio: Some(0.475),
                page_dispatches_per_token: Some(40.0),
                page_readbacks_per_token: Some(0.05),
                page_decode_chunks: Some(6),
                native_dispatches_per_token: Some(40.0),
                native_readbacks_per_token: Some(0.05),
                native_decode_chunks: Some(6),
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_unsound_figures() {
        let p = sample();
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(Report::other_kind(&text).as_deref(), Some(KIND));
        assert_eq!(PageVsNative::from_json("x", &text).unwrap(), p);
        let md = p.to_markdown();
        assert!(
            md.contains("| this | Firefox 153.8.0 |") && md.contains("| 45% |"),
            "{md}"
        );
        // A baseline build without engine-only runs or work counts renders dashes.
        let mut old = p.clone();
        old.rows[0].build = "before (4483ffe)".into();
        old.rows[0].engine_only_tokens_per_s = None;
        old.rows[0].page_dispatches_per_token = None;
        let md = old.to_markdown();
        assert!(
            md.contains("| before (4483ffe) |") && md.contains("| 9.00 | – |"),
            "{md}"
        );
        let mut bad = p.clone();
        bad.rows[0].native_tokens_per_s = f64::NAN;
        let text = serde_json::to_string(&bad).unwrap();
        assert!(PageVsNative::from_json("x", &text).is_err());
        assert_eq!(Report::other_kind(r#"{"schema_version": 1}"#), None);
    }
}
