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

/// One browser against native walsh on the same adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageRow {
    pub browser: String,
    pub browser_version: String,
    /// The adapter as the page names it.
    pub page_adapter: String,
    /// The adapter native walsh ran on (`walsh generate`'s stats).
    pub native_adapter: String,
    /// Median decode tokens/s through the page's Generate button (streaming into the page).
    pub page_tokens_per_s: f64,
    pub page_runs: Vec<f64>,
    /// Median decode tokens/s straight through the engine, with a no-op token callback.
    pub engine_only_tokens_per_s: f64,
    pub engine_only_runs: Vec<f64>,
    pub native_tokens_per_s: f64,
    pub native_runs: Vec<f64>,
    /// page / native.
    pub ratio: f64,
    pub engine_only_ratio: f64,
    pub page_dispatches_per_token: f64,
    pub page_readbacks_per_token: f64,
    pub page_decode_chunks: usize,
    pub native_dispatches_per_token: f64,
    pub native_readbacks_per_token: f64,
    pub native_decode_chunks: usize,
}

impl PageVsNative {
    /// Whether `text` (a JSON file in a reports folder) is one of these rather than an
    /// adapter report.
    pub fn is_one(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some(KIND))
    }

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
                ("page tokens/s", r.page_tokens_per_s),
                ("engine-only tokens/s", r.engine_only_tokens_per_s),
                ("native tokens/s", r.native_tokens_per_s),
                ("ratio", r.ratio),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(err(format!("{}: {what} is {v}", r.browser)));
                }
            }
        }
        Ok(p)
    }

    /// The Markdown table: one row per browser.
    pub fn to_markdown(&self) -> String {
        let mut md = format!(
            "## The page vs native walsh on the same adapter\n\n\
             Default model, prompt `{}`, {} greedy tokens, median of {} warm runs (after one \
             warm-up); decode tokens/s from the generation stats. \"engine only\" is the page's \
             engine with a no-op token callback (no page work per token).\n\n\
             | browser | adapter (page / native) | page tok/s | engine only tok/s | native tok/s | page / native | dispatches / token (page, native) | readbacks / token (page, native) |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
            self.prompt.escape_debug(),
            self.tokens,
            self.runs
        );
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| {} {} | {} / {} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.1}, {:.1} | {:.3}, {:.3} |",
                r.browser,
                r.browser_version,
                r.page_adapter,
                r.native_adapter,
                r.page_tokens_per_s,
                r.engine_only_tokens_per_s,
                r.native_tokens_per_s,
                100.0 * r.ratio,
                r.page_dispatches_per_token,
                r.native_dispatches_per_token,
                r.page_readbacks_per_token,
                r.native_readbacks_per_token,
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PageVsNative {
        PageVsNative {
            kind: KIND.into(),
            schema_version: 1,
            walsh_commit: None,
            prompt: "ROMEO.".into(),
            tokens: 128,
            runs: 3,
            rows: vec![PageRow {
                browser: "Firefox".into(),
                browser_version: "153.8.0".into(),
                page_adapter: "Firefox 153's WebGPU adapter".into(),
                native_adapter: "llvmpipe (vulkan)".into(),
                page_tokens_per_s: 9.0,
                page_runs: vec![9.0, 8.9, 9.1],
                engine_only_tokens_per_s: 9.5,
                engine_only_runs: vec![9.5, 9.4, 9.6],
                native_tokens_per_s: 20.0,
                native_runs: vec![20.0, 19.0, 21.0],
                ratio: 0.45,
                engine_only_ratio: 0.475,
                page_dispatches_per_token: 40.0,
                page_readbacks_per_token: 0.05,
                page_decode_chunks: 6,
                native_dispatches_per_token: 40.0,
                native_readbacks_per_token: 0.05,
                native_decode_chunks: 6,
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_unsound_figures() {
        let p = sample();
        let text = serde_json::to_string(&p).unwrap();
        assert!(PageVsNative::is_one(&text));
        assert_eq!(PageVsNative::from_json("x", &text).unwrap(), p);
        let md = p.to_markdown();
        assert!(
            md.contains("| Firefox 153.8.0 |") && md.contains("| 45% |"),
            "{md}"
        );
        let mut bad = p.clone();
        bad.rows[0].native_tokens_per_s = f64::NAN;
        let text = serde_json::to_string(&bad).unwrap();
        assert!(PageVsNative::from_json("x", &text).is_err());
        assert!(!PageVsNative::is_one(r#"{"schema_version": 1}"#));
    }
}
