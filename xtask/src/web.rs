//! `cargo xtask web`: the browser build. Compiles the walsh library for wasm32, runs
//! `wasm-bindgen --target web` into `web/pkg/` (git-ignored) and shrinks the module with
//! `wasm-opt` from npm's binaryen.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::install;
use crate::{cargo, root, run};

pub const TARGET: &str = "wasm32-unknown-unknown";

/// The npm tools (binaryen, playwright-core, puppeteer-core) live here, with their lock
/// file.
pub fn node_dir() -> PathBuf {
    root().join("xtask").join("node")
}

/// Sizes of the built module, for the summary line.
pub struct WasmSize {
    pub path: PathBuf,
    pub raw: u64,
    pub gzipped: Option<u64>,
}

/// Builds `web/pkg/` and returns the size of its .wasm.
pub fn build() -> Result<WasmSize> {
    let root = root();
    install::ensure_rust_target(TARGET)?;
    install::ensure_wasm_bindgen(&install::lock_version(&root, "wasm-bindgen")?)?;
    install::ensure_npm_packages(&node_dir())?;

    let mut build = cargo();
    build.args([
        "build",
        "--lib",
        "--release",
        "-p",
        "walsh",
        "--target",
        TARGET,
    ]);
    // walsh's build.rs puts the commit into the module (bench reports, version line).
    run(&mut build)?;

    let pkg = root.join("web").join("pkg");
    let module = target_dir(&root)
        .join(TARGET)
        .join("release")
        .join("walsh.wasm");
    run(Command::new(install::wasm_bindgen())
        .args(["--target", "web", "--no-typescript", "--out-dir"])
        .arg(&pkg)
        .arg(&module))?;

    let wasm = pkg.join("walsh_bg.wasm");
    let wasm_opt = node_dir()
        .join("node_modules")
        .join(".bin")
        .join("wasm-opt");
    run(Command::new(wasm_opt)
        .arg(&wasm)
        .arg("-o")
        .arg(&wasm)
        // Size first: the module is downloaded on every visit.
        .args(["-Oz", "--strip-debug", "--strip-producers"])
        // What rustc's wasm32 target emits by default.
        .args([
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-reference-types",
            "--enable-multivalue",
        ]))?;
    let size = WasmSize {
        raw: std::fs::metadata(&wasm)
            .with_context(|| format!("reading {}", wasm.display()))?
            .len(),
        gzipped: gzipped_size(&wasm),
        path: wasm,
    };
    eprintln!(
        "xtask: web/pkg built: {} is {} bytes ({} gzipped); serve it with `cargo run --release -- serve`",
        size.path.display(),
        size.raw,
        size.gzipped
            .map_or("unknown".to_string(), |g| format!("{g} bytes"))
    );
    Ok(size)
}

pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `gzip -9` size, as a static server would send it compressed.
fn gzipped_size(path: &Path) -> Option<u64> {
    let out = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(path)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout.len() as u64)
}
