//! `cargo xtask page-vs-native`: the page's decode rate in both headless browsers against
//! native walsh on the same software adapter, measured in one run.
//!
//! Chromium's WebGPU runs on SwiftShader; Debian's chromium package ships SwiftShader's
//! Vulkan driver too, so native walsh runs on the same adapter through
//! `VK_ICD_FILENAMES=<chromium's lib dir>/vk_swiftshader_icd.json`. Firefox's WebGPU is wgpu
//! over the machine's Vulkan driver (lavapipe here): its native counterpart is
//! `walsh --adapter vulkan` with the default driver list. Both sides: the default model,
//! greedy, one warm-up run, then the median of the rest; decode tokens/s from the
//! generation stats, with dispatches and readbacks per token.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::e2e::{Server, node, prepare};
use crate::{private_runtime_dir, root};

const PROMPT: &str = "ROMEO.";

/// Where Debian's chromium keeps its SwiftShader Vulkan driver.
fn swiftshader_icd() -> Result<PathBuf> {
    let dir = std::env::var_os("CHROMIUM_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/chromium"));
    let icd = dir.join("vk_swiftshader_icd.json");
    if !icd.is_file() {
        bail!(
            "{} is missing: the native SwiftShader runs need Debian's chromium (or set \
             CHROMIUM_LIB_DIR to the folder holding vk_swiftshader_icd.json)",
            icd.display()
        );
    }
    Ok(icd)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `runs + 1` greedy generations natively on `adapter` (the first one a warm-up), each a
/// fresh `walsh generate --json`; returns every run's stats after the warm-up.
fn native(
    walsh: &Path,
    adapter: &str,
    icd: Option<&Path>,
    tokens: usize,
    runs: usize,
) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for i in 0..=runs {
        let mut cmd = Command::new(walsh);
        cmd.current_dir(root())
            .args([
                "--adapter",
                adapter,
                "generate",
                "--json",
                "--prompt",
                PROMPT,
            ])
            .args(["--temperature", "0", "--top-k", "0", "--top-p", "1"])
            .args(["--max-tokens", &tokens.to_string()]);
        if let Some(icd) = icd {
            cmd.env("VK_ICD_FILENAMES", icd);
        }
        private_runtime_dir(&mut cmd)?;
        let run = cmd
            .output()
            .with_context(|| format!("running {}", walsh.display()))?;
        if !run.status.success() {
            bail!(
                "walsh --adapter {adapter} generate failed: {}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&run.stdout).context("reading walsh --json")?;
        eprintln!(
            "xtask: native {adapter}{} run {i}: {:.2} tok/s",
            if icd.is_some() {
                " (SwiftShader ICD)"
            } else {
                ""
            },
            v["stats"]["decode_tokens_per_s"]
                .as_f64()
                .unwrap_or(f64::NAN)
        );
        if i > 0 {
            out.push(v["stats"].clone());
        }
    }
    Ok(out)
}

fn rates(stats: &[Value]) -> Vec<f64> {
    stats
        .iter()
        .filter_map(|s| s["decode_tokens_per_s"].as_f64())
        .collect()
}

pub fn page_vs_native(args: &[String]) -> Result<()> {
    let mut runs = 3;
    let mut tokens = 128;
    let mut out = root().join("bench-results");
    let mut browsers = "chromium,firefox".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--runs" => runs = value("--runs")?.parse().context("--runs")?,
            "--tokens" => tokens = value("--tokens")?.parse().context("--tokens")?,
            "--out" => out = PathBuf::from(value("--out")?),
            "--browsers" => browsers = value("--browsers")?.clone(),
            other => bail!("page-vs-native: unknown argument {other}"),
        }
    }
    if runs == 0 || tokens == 0 {
        bail!("--runs and --tokens must be at least 1");
    }
    let icd = swiftshader_icd()?;
    let (walsh, _) = prepare(true)?;
    let server = Server::start(&walsh)?;
    let mut cmd = node(&[
        "ratio",
        &server.url,
        PROMPT,
        &tokens.to_string(),
        &runs.to_string(),
        &browsers,
    ]);
    cmd.stdout(Stdio::piped());
    private_runtime_dir(&mut cmd)?;
    eprintln!("xtask: $ {cmd:?}");
    let page = cmd.output().context("starting node")?;
    drop(server);
    let text = String::from_utf8_lossy(&page.stdout);
    print!("{text}");
    if !page.status.success() {
        bail!("the page runs failed");
    }
    let mut rows = Vec::new();
    for line in text.lines() {
        let Some(json) = line.strip_prefix("e2e-ratio ") else {
            continue;
        };
        let p: Value = serde_json::from_str(json)?;
        let chromium = p["browser"] == "Chromium";
        let (adapter, icd) = if chromium {
            ("swiftshader", Some(icd.as_path()))
        } else {
            ("vulkan", None)
        };
        let stats = native(&walsh, adapter, icd, tokens, runs)?;
        let native_rate = median(rates(&stats));
        let page_rate = p["page"]["decode_tokens_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let engine_rate = p["engine_only"]["decode_tokens_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let first = &stats[0];
        rows.push(json!({
            "browser": p["browser"],
            "browser_version": p["browser_version"],
            "page_adapter": p["adapter"],
            "native_adapter": first["device"],
            "page_tokens_per_s": page_rate,
            "page_runs": p["page"]["runs"],
            "engine_only_tokens_per_s": engine_rate,
            "engine_only_runs": p["engine_only"]["runs"],
            "native_tokens_per_s": native_rate,
            "native_runs": rates(&stats),
            "ratio": page_rate / native_rate,
            "engine_only_ratio": engine_rate / native_rate,
            "page_dispatches_per_token": p["page"]["dispatches_per_token"],
            "page_readbacks_per_token": p["page"]["readbacks_per_token"],
            "page_decode_chunks": p["page"]["decode_chunks"],
            "native_dispatches_per_token": first["dispatches_per_token"],
            "native_readbacks_per_token": first["readbacks_per_token"],
            "native_decode_chunks": first["decode_chunks"],
        }));
    }
    if rows.is_empty() {
        bail!("the page runs printed no results");
    }
    let report = json!({
        "kind": "page-vs-native",
        "schema_version": 1,
        "walsh_commit": crate::web::git_commit(),
        "prompt": PROMPT,
        "tokens": tokens,
        "runs": runs,
        "rows": rows,
    });
    std::fs::create_dir_all(&out)?;
    let json_path = out.join("page-vs-native.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    // The Markdown is walsh's, so `walsh bench merge` and this file agree.
    let md = Command::new(&walsh)
        .args(["bench", "page-table"])
        .arg(&json_path)
        .output()
        .context("running walsh bench page-table")?;
    if !md.status.success() {
        bail!(
            "walsh bench page-table failed: {}",
            String::from_utf8_lossy(&md.stderr)
        );
    }
    let md_path = out.join("page-vs-native.md");
    std::fs::write(&md_path, &md.stdout)?;
    print!("{}", String::from_utf8_lossy(&md.stdout));
    eprintln!(
        "xtask: wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}
