//! `cargo xtask <task>`: project automation, in the style of wgpu's own xtask.
//!
//! - `test`: installs what the tests need when missing (Mesa's software Vulkan and GL
//!   drivers, rustfmt, clippy, and for the browser test the wasm32 target,
//!   wasm-bindgen-cli, Chromium, Firefox ESR and the npm tools; the SPIR-V and GLSL
//!   validators for the shader translation test), then runs `cargo fmt --check`,
//!   `cargo clippy -D warnings`, every test (unit, integration, documentation, and the
//!   benches once each in smoke mode), every example in `examples/` on lavapipe (see
//!   [`examples`]), OpenAI's Python client against `walsh serve` (see [`clients`]) and
//!   the end-to-end test of the web page in headless Chromium and Firefox.
//!   Idempotent: a second run installs nothing.
//!   The test run includes a bounded, seeded run of the loader fuzz test
//!   (`tests/fuzz_loader.rs`).
//! - `examples`: only the examples, on lavapipe (see [`examples`]).
//! - `web`: builds the browser module into `web/pkg/` (see [`web`]).
//! - `fuzz --minutes N [--seed S] [--targets ..]`: the fuzz test for N minutes (see
//!   [`fuzz`]).
//! - `e2e`, `web-bench`, `page-vs-native`: the browser test alone, the benchmark suites in
//!   the browser, and the page's decode rate against native walsh on the same adapters
//!   (see [`e2e`] and [`ratio`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod clients;
mod e2e;
mod fuzz;
mod gguf_join;
mod install;
mod ratio;
mod web;

/// Debian packages the tests need: the software adapters the GPU tests run on, lavapipe
/// (Vulkan) and llvmpipe (GL through headless EGL); and the validators of the shader
/// translation test, `spirv-val` and `glslangValidator`. The browser checks need the
/// adapters too (Firefox's WebGPU runs on the system's Vulkan driver, lavapipe here).
pub(crate) const APT_PACKAGES: &[&str] = &[
    "mesa-vulkan-drivers",
    "libvulkan1",
    "libegl1",
    "libegl-mesa0",
    "libgles2",
    "libgl1-mesa-dri",
    "spirv-tools",
    "glslang-tools",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("examples") => examples(),
        Some("openai") => {
            run(cargo().args(["build", "--bin", "walsh"]))?;
            clients::openai(&web::target_dir(&root()).join("debug").join("walsh"))
        }
        Some("web") => web::build().map(drop),
        Some("web-bench") => e2e::bench(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("page-vs-native") => ratio::page_vs_native(&args[1..]),
        Some("e2e") => {
            let outcome = e2e::test(e2e::Walsh::Build { release: false })?;
            println!(
                "xtask: {} passed, {} failed",
                outcome.passed, outcome.failed
            );
            if outcome.failed > 0 {
                bail!("{} browser check(s) failed", outcome.failed);
            }
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
        None => {
            eprintln!("{USAGE}");
            Ok(())
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test    install what is missing, then fmt check, clippy -D warnings, every test, the
          examples, OpenAI's Python client against walsh serve and the browser end-to-end
          test
  openai  only OpenAI's Python client (pinned, in target/xtask/openai-venv) against
          walsh serve --model models/shakespeare-hadamard
  examples
          run every example (examples/) on lavapipe; under CI=true one that finds no
          adapter fails
  web     build the browser module into web/pkg/ (then: cargo run --release -- serve)
  e2e     only the browser end-to-end test (builds the page, serves it, drives Chromium
          and Firefox)
  web-bench [--quick] [--suites kernels,decoder,paper] [--max-kernel-n N] [--out DIR]
          run the benchmark suites in headless Chromium's WebGPU and write the reports
          (default: bench-results/); --max-kernel-n bounds the kernel suite's widths
  fuzz --minutes N [--seed S] [--targets model,report,text,request]
          mutation-fuzz the model loader, reports, text inputs and the completions API's
          request bodies for N minutes (default 10); failing inputs are saved under
          target/tmp/fuzz-failures/

  page-vs-native [--runs N] [--tokens N] [--browsers chromium,firefox] [--out DIR]
                 [--baseline DIR]
          the page's greedy decode rate in headless Chromium (SwiftShader) and Firefox
          (lavapipe) against native walsh on the same adapters; writes
          page-vs-native.json and .md (default: bench-results/); --baseline DIR measures
          another checkout (its release binary and page built) alongside: before/after";

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Vulkan loaders (walsh's, Firefox's) warn on every instance without `XDG_RUNTIME_DIR`;
/// gives `cmd` a private one when the environment has none.
pub(crate) fn private_runtime_dir(cmd: &mut Command) -> Result<()> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = root().join("target").join("xdg-runtime");
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        cmd.env("XDG_RUNTIME_DIR", dir);
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    // A CI run builds once from a clean checkout: incremental caches would only take
    // disk (about 1.4 GB of target/debug/incremental).
    if in_ci() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// Whether `CI` is set (and not to 0 or false): missing adapters and browsers then fail
/// instead of being skipped.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The examples in `examples/`, each a check that exits non-zero when it fails.
const EXAMPLES: &[&str] = &["hello_wht", "generate", "wht_in_your_pipeline"];

/// What an example exits with when it finds no adapter (automake's and meson's "skipped").
const EXAMPLE_SKIPPED: i32 = 77;

/// `WALSH_ADAPTER=llvmpipe cargo run --example NAME` for every example: lavapipe, since
/// walsh lists Vulkan adapters before GL ones and the name also matches llvmpipe GL. An
/// example that finds no adapter is skipped, as the GPU tests skip a missing backend,
/// unless `CI` is set: then it fails.
fn examples() -> Result<()> {
    for name in EXAMPLES {
        let mut cmd = cargo();
        cmd.args(["run", "--example", name])
            .env("WALSH_ADAPTER", "llvmpipe");
        private_runtime_dir(&mut cmd)?;
        eprintln!("xtask: $ {cmd:?}");
        let status = cmd
            .status()
            .with_context(|| format!("could not start {cmd:?}"))?;
        match status.code() {
            Some(0) => {}
            Some(EXAMPLE_SKIPPED) if !in_ci() => {
                eprintln!("xtask: example {name} skipped: no lavapipe adapter");
            }
            Some(EXAMPLE_SKIPPED) => bail!("CI: example {name} found no lavapipe adapter"),
            _ => bail!("example {name} failed with {status}"),
        }
    }
    Ok(())
}

fn test() -> Result<()> {
    install::ensure_apt_packages(APT_PACKAGES)?;
    install::ensure_rustup_components(&["rustfmt", "clippy"])?;

    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The browser build compiles code native builds never see (src/web.rs).
    install::ensure_rust_target(web::TARGET)?;
    run(cargo().args([
        "clippy",
        "-p",
        "walsh",
        "--lib",
        "--target",
        web::TARGET,
        "--",
        "-D",
        "warnings",
    ]))?;

    // The library's documentation builds without warnings (broken links, stray brackets).
    run(cargo()
        .args(["doc", "--no-deps", "-p", "walsh"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;

    let mut tests = cargo();
    tests
        .args(["test", "--workspace", "--all-targets"])
        // Benches run once each, at small sizes.
        .env("WALSH_BENCH_SMOKE", "1");
    private_runtime_dir(&mut tests)?;
    let (passed, failed) = run_counting(&mut tests)?;
    // `--all-targets` leaves out the documentation's examples: run them too (on the CPU,
    // or compiled only where they need a GPU).
    let mut docs = cargo();
    docs.args(["test", "-p", "walsh", "--doc"]);
    let (doc_passed, doc_failed) = run_counting(&mut docs)?;
    let (passed, failed) = (passed + doc_passed, failed + doc_failed);

    // The examples, each checking its result; under CI=true one without an adapter fails.
    examples()?;

    // OpenAI's own client against the completions API, with the binary the tests built.
    let walsh = web::target_dir(&root()).join("debug").join("walsh");
    clients::openai(&walsh)?;

    // The page in Chromium and Firefox; under CI=true a browser that cannot start fails.
    // It serves the page with the walsh binary the test run above built.
    let browser = e2e::test(e2e::Walsh::FromTests)?;
    let (passed, failed) = (passed + browser.passed, failed + browser.failed);
    println!("xtask: {passed} passed, {failed} failed");
    if browser.failed > 0 {
        bail!("{} browser check(s) failed", browser.failed);
    }
    eprintln!(
        "xtask: fmt, clippy, every test, the examples, the API client and the browser checks passed"
    );
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up the `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<(usize, usize)> {
    use std::io::{BufRead, BufReader, Write};
    eprintln!("xtask: $ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().expect("piped above");
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        writeln!(out, "{line}")?;
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("xtask: {passed} passed, {} failed", failed.max(1));
        bail!("{cmd:?} failed with {status}");
    }
    Ok((passed, failed))
}

/// `test result: ok. 21 passed; 0 failed; ...` -> (21, 0).
fn parse_test_result(line: &str) -> Option<(usize, usize)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<usize> {
        let end = rest.find(&format!(" {word}"))?;
        rest[..end]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((count("passed")?, count("failed")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_test_summaries() {
        let ok = "test result: ok. 21 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.95s";
        assert_eq!(parse_test_result(ok), Some((21, 0)));
        let bad = "test result: FAILED. 6 passed; 5 failed; 0 ignored; 0 measured; 5 filtered out";
        assert_eq!(parse_test_result(bad), Some((6, 5)));
        assert_eq!(parse_test_result("Testing hadamard/copy Success"), None);
    }
}
