//! The browser end-to-end test and the browser benchmarks: build the page, start
//! `walsh serve`, and drive Debian's headless Chromium and Firefox ESR with
//! `xtask/node/e2e.mjs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, bail};

use crate::web::{self, node_dir};
use crate::{cargo, install, private_runtime_dir, root, run};

/// The prompt of the browser test; its greedy continuation is compared token by token.
const PROMPT: &str = "ROMEO.\n";
/// Greedy tokens generated in the browser test.
const TOKENS: usize = 32;
/// A prompt longer than the default model's context (128 bytes): the page keeps its last
/// 128 bytes, as `walsh generate` does.
const LONG_PROMPT: &str = "ROMEO.\nBut soft, what light through yonder window breaks?\n\
    It is the east, and Juliet is the sun.\nArise, fair sun, and kill the envious moon,\n\
    Who is already sick and pale with grief,\n";
/// Greedy tokens after [`LONG_PROMPT`].
const LONG_TOKENS: usize = 8;
/// The quantized model the page also runs (selected in its model list): its greedy tokens
/// after [`PROMPT`] are compared with the native CPU decoder's on the same model.
const Q4_MODEL: &str = "shakespeare-hadamard-q4";
/// The browsers of the test, in order.
const BROWSERS: &str = "chromium,firefox";
/// The GGUF file the page opens from disk: the llama-bpe fixture (d_model 32, 8 heads, 2
/// KV heads, Llama 3's vocabulary) in Q8_0, joined from its committed pieces, with the
/// llama.cpp case whose prompt and greedy tokens the page must reproduce.
const LOCAL_GGUF_TAG: &str = "q8_0";
const LOCAL_GGUF_PROMPT: &str = "The quick brown fox";
/// The folder the page opens from disk: a random-weight GQA model (d_model 32, 8 heads, 2
/// KV heads) that `walsh init-model` makes with the chat fixture's tokenizer.json and
/// tokenizer_config.json (a 704-token Llama 3-style BPE, BOS added).
const LOCAL_FOLDER_PROMPT: &str = "ROMEO.\nWhat light";
const LOCAL_FOLDER_TOKENS: usize = 16;

/// Counts of the browser checks, and what the page measured.
pub struct Outcome {
    pub passed: usize,
    pub failed: usize,
    pub summary: Option<serde_json::Value>,
}

/// A running `walsh serve` on a free port, stopped on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Server {
    /// `walsh serve --port 0` with `args` (e.g. other `--web` / `--models` folders).
    pub(crate) fn start(walsh: &PathBuf, args: &[&str]) -> Result<Self> {
        let mut child = Command::new(walsh)
            .args(["serve", "--port", "0"])
            .args(args)
            .current_dir(root())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} serve", walsh.display()))?;
        let stdout = child.stdout.take().expect("piped above");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        // "serving http://127.0.0.1:PORT/ (...)"
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            let _ = child.kill();
            bail!("walsh serve did not print its URL (printed {line:?})");
        };
        Ok(Self {
            url: url.to_string(),
            child,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's browsers the page is tested in.
pub const BROWSER_PACKAGES: &[&str] = &["chromium", "firefox-esr"];

/// Which `walsh` binary serves the page and computes the reference tokens.
pub(crate) enum Walsh {
    /// `cargo build --bin walsh`, with `--release` for measurements.
    Build { release: bool },
    /// The debug binary `cargo test --workspace --all-targets` just left in target/debug
    /// (the integration tests run it). `cargo build` would resolve features without the
    /// dev-dependencies and compile wgpu and its dependencies a second time: minutes, and
    /// gigabytes of disk a CI machine may not have.
    FromTests,
}

/// Installs the browsers and the npm tools when missing, builds the page and returns the
/// binary `walsh` names, building it if asked to.
pub(crate) fn prepare(walsh: Walsh) -> Result<(PathBuf, web::WasmSize)> {
    // Firefox's WebGPU needs a Vulkan driver (without one the page falls back to its CPU
    // decoder), and the native side of `page-vs-native` runs on lavapipe.
    install::ensure_apt_packages(crate::APT_PACKAGES)?;
    install::ensure_apt_packages(BROWSER_PACKAGES)?;
    let size = web::build()?;
    let release = match walsh {
        Walsh::Build { release } => {
            let mut build = cargo();
            build.args(["build", "--bin", "walsh"]);
            if release {
                build.arg("--release");
            }
            run(&mut build)?;
            release
        }
        Walsh::FromTests => false,
    };
    let profile = if release { "release" } else { "debug" };
    let walsh = web::target_dir(&root()).join(profile).join("walsh");
    if !walsh.is_file() {
        bail!(
            "{} is missing: `cargo test --workspace --all-targets` builds it",
            walsh.display()
        );
    }
    Ok((walsh, size))
}

pub(crate) fn node(args: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.arg(node_dir().join("e2e.mjs")).args(args);
    c.current_dir(root());
    c
}

/// Runs the browser checks in Chromium and Firefox. xtask installs both; a browser that
/// still cannot start fails the test under `CI=true` and is skipped (with a line saying
/// so) elsewhere.
pub fn test(walsh: Walsh) -> Result<Outcome> {
    let (walsh, size) = prepare(walsh)?;
    let expected = reference_tokens(&walsh, None, PROMPT, TOKENS)?;
    let long_expected = reference_tokens(&walsh, None, LONG_PROMPT, LONG_TOKENS)?;
    let q4_model = format!("models/{Q4_MODEL}");
    let q4_expected = reference_tokens(&walsh, Some(&q4_model), PROMPT, TOKENS)?;
    let artifacts = web::target_dir(&root()).join("e2e");
    let local = local_models(&walsh, &artifacts.join("local-models"))?;
    let server = Server::start(&walsh, &[])?;
    let mut cmd = node(&["test", &server.url, &artifacts.to_string_lossy(), BROWSERS]);
    cmd.env("WALSH_PROMPT", PROMPT)
        .env("WALSH_EXPECTED_TOKENS", serde_json::to_string(&expected)?)
        .env("WALSH_LONG_PROMPT", LONG_PROMPT)
        .env(
            "WALSH_LONG_EXPECTED",
            serde_json::to_string(&long_expected)?,
        )
        .env("WALSH_Q4_MODEL", &q4_model)
        .env("WALSH_Q4_EXPECTED", serde_json::to_string(&q4_expected)?)
        .env("WALSH_LOCAL", local.to_string())
        .stdout(Stdio::piped());
    private_runtime_dir(&mut cmd)?;
    eprintln!("xtask: $ {cmd:?}");
    let mut child = cmd
        .spawn()
        .context("starting node (apt-get install nodejs)")?;
    let mut outcome = Outcome {
        passed: 0,
        failed: 0,
        summary: None,
    };
    for line in BufReader::new(child.stdout.take().expect("piped above")).lines() {
        let line = line?;
        println!("{line}");
        if line.starts_with("e2e: ok ") {
            outcome.passed += 1;
        } else if line.starts_with("e2e: FAILED ") {
            outcome.failed += 1;
        } else if let Some(json) = line.strip_prefix("e2e-summary ") {
            outcome.summary = serde_json::from_str(json).ok();
        }
    }
    let status = child.wait()?;
    drop(server);
    if !status.success() && outcome.failed == 0 {
        // The script itself broke (e.g. Chromium would not start).
        outcome.failed = 1;
    }
    if let Some(s) = &mut outcome.summary {
        s["wasm_bytes"] = size.raw.into();
        s["wasm_gzipped_bytes"] = size.gzipped.into();
        eprintln!("xtask: browser summary {s}");
    }
    Ok(outcome)
}

/// Runs `cmd` to its end and returns its output; an error naming `what` when it cannot
/// start or fails, with its stderr.
pub(crate) fn output_of(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// Writes the models the page opens from disk into `dir` and returns what the browser test
/// expects of them (JSON, `WALSH_LOCAL` for e2e.mjs): the joined llama-bpe GGUF file with
/// llama.cpp's prompt ids and greedy tokens (which the native CPU decoder must give too)
/// and the native detokenized text; a folder with `config.json`, `model.safetensors`,
/// `tokenizer.json` and `tokenizer_config.json` with the native CPU decoder's tokens and
/// text; and a truncated GGUF file the page must refuse with a message.
fn local_models(walsh: &PathBuf, dir: &Path) -> Result<serde_json::Value> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;

    // The GGUF file, and llama.cpp's run of it.
    let gguf = dir.join(format!("llama-bpe-{LOCAL_GGUF_TAG}.gguf"));
    let bytes = crate::gguf_join::llama_bpe_file(&root(), LOCAL_GGUF_TAG)?;
    std::fs::write(&gguf, &bytes)?;
    let json = std::fs::read_to_string(root().join("tests/data/gguf/llama-bpe/llama_cpp.json"))?;
    let reference: serde_json::Value = serde_json::from_str(&json)?;
    let case = reference[LOCAL_GGUF_TAG]
        .as_array()
        .and_then(|cases| cases.iter().find(|c| c["prompt"] == LOCAL_GGUF_PROMPT))
        .context("llama_cpp.json has no case for the page's GGUF prompt")?;
    let prompt_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone())?;
    let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone())?;
    let gguf_path = gguf.to_string_lossy().to_string();
    let native = reference_tokens(walsh, Some(&gguf_path), LOCAL_GGUF_PROMPT, tokens.len())?;
    if native != tokens {
        bail!("the native CPU decoder gives {native:?} on {gguf_path}, llama.cpp {tokens:?}");
    }
    let gguf_text = native_text(walsh, &gguf_path, LOCAL_GGUF_PROMPT, tokens.len())?;

    // The folder: config.json + model.safetensors + tokenizer.json (+ tokenizer_config.json).
    let folder = dir.join("chat-gqa");
    let mut init = Command::new(walsh);
    init.current_dir(root())
        .args(["init-model", "--out"])
        .arg(&folder)
        .args(["--hidden-size", "32", "--layers", "2", "--heads", "8"])
        .args(["--kv-heads", "2", "--context", "64", "--seed", "5"])
        .args(["--tokenizer", "tests/data/chat/tokenizer.json"]);
    output_of(&mut init, "walsh init-model")?;
    let folder_path = folder.to_string_lossy().to_string();
    let folder_tokens = reference_tokens(
        walsh,
        Some(&folder_path),
        LOCAL_FOLDER_PROMPT,
        LOCAL_FOLDER_TOKENS,
    )?;
    let folder_text = native_text(
        walsh,
        &folder_path,
        LOCAL_FOLDER_PROMPT,
        LOCAL_FOLDER_TOKENS,
    )?;
    let mut files: Vec<String> = std::fs::read_dir(&folder)?
        .map(|e| Ok(e?.path().to_string_lossy().to_string()))
        .collect::<Result<_>>()?;
    files.sort();

    // A GGUF file cut short: its tensor data is missing.
    let broken = dir.join("truncated.gguf");
    std::fs::write(&broken, &bytes[..bytes.len().min(4096)])?;

    Ok(serde_json::json!({
        "gguf": {
            "path": gguf_path,
            "name": gguf.file_name().map(|n| n.to_string_lossy()),
            "prompt": LOCAL_GGUF_PROMPT,
            "prompt_ids": prompt_ids,
            "tokens": tokens,
            "text": gguf_text,
        },
        "folder": {
            "path": folder_path,
            "files": files,
            "prompt": LOCAL_FOLDER_PROMPT,
            "tokens": folder_tokens,
            "text": folder_text,
        },
        "broken": broken.to_string_lossy(),
    }))
}

/// `walsh generate` of `tokens` greedy tokens after `prompt` on the CPU decoder, from
/// `model` (the default model when `None`), run in the repository.
fn cpu_greedy(walsh: &PathBuf, model: Option<&str>, prompt: &str, tokens: usize) -> Command {
    let mut cmd = Command::new(walsh);
    cmd.current_dir(root()).arg("generate");
    if let Some(m) = model {
        cmd.args(["--model", m]);
    }
    cmd.args(["--device", "cpu", "--prompt", prompt])
        .args(["--max-tokens", &tokens.to_string()])
        .args([
            "--temperature",
            "0",
            "--top-k",
            "0",
            "--top-p",
            "1",
            "--seed",
            "0",
        ]);
    cmd
}

/// The text `walsh generate` prints after `prompt` (greedy, on the CPU) from `model`, an
/// end-of-generation token ending it, as the page's.
fn native_text(walsh: &PathBuf, model: &str, prompt: &str, tokens: usize) -> Result<String> {
    let mut cmd = cpu_greedy(walsh, Some(model), prompt, tokens);
    let out = output_of(&mut cmd, "walsh generate --device cpu")?;
    let stdout = String::from_utf8(out.stdout).context("walsh generate printed non-UTF-8")?;
    // It prints the prompt, the text and a newline.
    let text = stdout
        .strip_prefix(prompt)
        .and_then(|t| t.strip_suffix('\n'))
        .with_context(|| format!("walsh generate printed {stdout:?}"))?;
    Ok(text.to_string())
}

/// The native CPU reference's greedy tokens for `prompt` from `model` (a model folder
/// relative to the repository; the default model when `None`).
fn reference_tokens(
    walsh: &PathBuf,
    model: Option<&str>,
    prompt: &str,
    tokens: usize,
) -> Result<Vec<u32>> {
    let mut cmd = cpu_greedy(walsh, model, prompt, tokens);
    cmd.arg("--json");
    let out = output_of(&mut cmd, "walsh generate --device cpu")?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading walsh generate --json output")?;
    let got: Vec<u32> = serde_json::from_value(json["tokens"][0].clone())?;
    if got.len() != tokens {
        bail!("the CPU reference gave {} tokens, not {tokens}", got.len());
    }
    Ok(got)
}

/// `cargo xtask web-bench [--quick] [--suites LIST] [--max-kernel-n N] [--out DIR]`: runs
/// `walsh bench`'s suites in headless Chromium's WebGPU page and writes the report files.
pub fn bench(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut suites = "kernels,decoder".to_string();
    let mut out = root().join("bench-results");
    let mut max_kernel_n: Option<u32> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--suites" => suites = it.next().context("--suites needs a value")?.clone(),
            "--out" => out = PathBuf::from(it.next().context("--out needs a value")?),
            "--max-kernel-n" => {
                let n = it.next().context("--max-kernel-n needs a value")?;
                max_kernel_n = Some(n.parse().context("--max-kernel-n")?);
            }
            other => bail!("web-bench: unknown argument {other}"),
        }
    }
    let (walsh, _) = prepare(Walsh::Build { release: false })?;
    let server = Server::start(&walsh, &[])?;
    // The page reads the bound from its URL (`?max_kernel_n=`, web/main.js).
    let url = match max_kernel_n {
        Some(n) => format!("{}?max_kernel_n={n}", server.url),
        None => server.url.clone(),
    };
    let mut args = vec!["bench", &url];
    let out = out.to_string_lossy().to_string();
    args.extend([out.as_str(), suites.as_str()]);
    if quick {
        args.push("quick");
    }
    run(&mut node(&args))
}
