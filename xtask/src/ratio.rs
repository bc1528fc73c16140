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
//!
//! `--baseline DIR` measures another build of walsh alongside, for before/after figures:
//! DIR is a checkout of an earlier commit with its page and release binary built
//! (`git worktree add DIR REV && cd DIR && cargo build --release && cargo xtask web`).
//! Its page is served from its own `web/` and its binary runs natively, each run
//! alternating with this build's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::e2e::{Server, Walsh, node, output_of, prepare};
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

/// A build of walsh to measure: its label and its native binary.
struct Build {
    label: String,
    walsh: PathBuf,
}

/// `runs + 1` greedy generations natively on `adapter` with each build (the first round a
/// warm-up, the builds alternating), each a fresh `walsh generate --json`; returns every
/// build's stats after the warm-up, in `builds` order.
fn native(
    builds: &[Build],
    adapter: &str,
    icd: Option<&Path>,
    tokens: usize,
    runs: usize,
) -> Result<Vec<Vec<Value>>> {
    let mut out = vec![Vec::new(); builds.len()];
    for i in 0..=runs {
        for (b, build) in builds.iter().enumerate() {
            let stats = native_run(&build.walsh, adapter, icd, tokens)?;
            eprintln!(
                "xtask: native {adapter}{} {} run {i}: {:.2} tok/s",
                if icd.is_some() {
                    " (SwiftShader ICD)"
                } else {
                    ""
                },
                build.label,
                stats["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN)
            );
            if i > 0 {
                out[b].push(stats);
            }
        }
    }
    Ok(out)
}

/// One greedy `walsh generate --json` run; its stats.
fn native_run(walsh: &Path, adapter: &str, icd: Option<&Path>, tokens: usize) -> Result<Value> {
    {
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
        Ok(v["stats"].clone())
    }
}

/// The label (`before (COMMIT)`) and release binary of the baseline checkout in `dir`.
fn baseline_build(dir: &Path) -> Result<(String, PathBuf)> {
    let binary = dir.join("target/release/walsh");
    let wasm = dir.join("web/pkg/walsh_bg.wasm");
    for (what, path) in [("release binary", &binary), ("built page", &wasm)] {
        if !path.is_file() {
            bail!(
                "--baseline {}: its {what} {} is missing (in that checkout: cargo build \
                 --release && cargo xtask web)",
                dir.display(),
                path.display()
            );
        }
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown commit".into());
    Ok((format!("before ({commit})"), binary))
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
    let mut baseline: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--runs" => runs = value("--runs")?.parse().context("--runs")?,
            "--tokens" => tokens = value("--tokens")?.parse().context("--tokens")?,
            "--out" => out = PathBuf::from(value("--out")?),
            "--browsers" => browsers = value("--browsers")?.clone(),
            "--baseline" => baseline = Some(PathBuf::from(value("--baseline")?)),
            other => bail!("page-vs-native: unknown argument {other}"),
        }
    }
    if runs == 0 || tokens == 0 {
        bail!("--runs and --tokens must be at least 1");
    }
    // Installs the browsers (Debian's chromium brings SwiftShader's Vulkan driver) first.
    let (walsh, _) = prepare(Walsh::Build { release: true })?;
    let icd = swiftshader_icd()?;
    let server = Server::start(&walsh, &[])?;
    // With a baseline this build is the "after" of a before/after pair.
    let this = if baseline.is_some() { "after" } else { "this" };
    let mut builds = vec![Build {
        label: this.into(),
        walsh: walsh.clone(),
    }];
    let mut targets = format!("{this}={}", server.url);
    // The baseline's page, served by this build's server from the baseline's folders.
    let mut baseline_server = None;
    if let Some(dir) = &baseline {
        let (label, binary) = baseline_build(dir)?;
        let web = dir.join("web");
        let models = dir.join("models");
        let args = [
            "--web",
            &*web.to_string_lossy(),
            "--models",
            &*models.to_string_lossy(),
        ];
        let s = Server::start(&walsh, &args)?;
        targets.push_str(&format!(",{label}={}", s.url));
        baseline_server = Some(s);
        builds.push(Build {
            label,
            walsh: binary,
        });
    }
    let mut cmd = node(&[
        "ratio",
        &targets,
        PROMPT,
        &tokens.to_string(),
        &runs.to_string(),
        &browsers,
    ]);
    // `output()` pipes both by default: node's errors (why a page failed) go to the terminal.
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    private_runtime_dir(&mut cmd)?;
    eprintln!("xtask: $ {cmd:?}");
    let page = cmd.output().context("starting node")?;
    drop(server);
    drop(baseline_server);
    let text = String::from_utf8_lossy(&page.stdout);
    print!("{text}");
    if !page.status.success() {
        bail!("the page runs failed");
    }
    let pages: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("e2e-ratio "))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // Native runs per adapter the browsers used, every build alternating.
    let mut natives: Vec<(bool, Vec<Vec<Value>>)> = Vec::new();
    for chromium in [true, false] {
        if pages
            .iter()
            .any(|p| (p["browser"] == "Chromium") == chromium)
        {
            let (adapter, icd) = if chromium {
                ("swiftshader", Some(icd.as_path()))
            } else {
                ("vulkan", None)
            };
            natives.push((chromium, native(&builds, adapter, icd, tokens, runs)?));
        }
    }
    let mut rows = Vec::new();
    for p in &pages {
        let chromium = p["browser"] == "Chromium";
        let b = builds
            .iter()
            .position(|b| p["build"] == b.label.as_str())
            .context("the page runs named a build that was not measured")?;
        let stats = &natives
            .iter()
            .find(|(c, _)| *c == chromium)
            .context("no native runs for this browser's adapter")?
            .1[b];
        let native_rate = median(rates(stats));
        let page_rate = p["page"]["decode_tokens_per_s"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let engine_rate = p["engine_only"]["decode_tokens_per_s"].as_f64();
        let first = &stats[0];
        rows.push(json!({
            "build": p["build"],
            "browser": p["browser"],
            "browser_version": p["browser_version"],
            "page_adapter": p["adapter"],
            "native_adapter": first["device"],
            "page_tokens_per_s": page_rate,
            "page_runs": p["page"]["runs"],
            "engine_only_tokens_per_s": engine_rate,
            // Older pages have no engine-only entry: no runs.
            "engine_only_runs": p["engine_only"]["runs"].as_array().cloned().unwrap_or_default(),
            "native_tokens_per_s": native_rate,
            "native_runs": rates(stats),
            "ratio": page_rate / native_rate,
            "engine_only_ratio": engine_rate.map(|e| e / native_rate),
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
    let mut md = Command::new(&walsh);
    md.args(["bench", "page-table"]).arg(&json_path);
    let md = output_of(&mut md, "walsh bench page-table")?;
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
