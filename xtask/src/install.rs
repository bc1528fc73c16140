//! Installing what the tasks need when it is missing: Debian packages, rustup components
//! and targets, `wasm-bindgen-cli` at the version in Cargo.lock, and the npm tools in
//! `xtask/node`. Each check is cheap, so every task is idempotent.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the missing Debian packages with apt-get (through sudo when not root).
pub fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!("missing Debian packages {missing:?} and no apt-get here: install them by hand");
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut c = if is_root {
            Command::new("apt-get")
        } else {
            let mut s = Command::new("sudo");
            s.arg("apt-get");
            s
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    eprintln!("xtask: installing {missing:?}");
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install)
}

pub fn ensure_rustup_components(components: &[&str]) -> Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
    else {
        return Ok(()); // no rustup: rely on the toolchain at hand
    };
    let have = String::from_utf8_lossy(&out.stdout);
    for c in components {
        if !have.lines().any(|l| l.starts_with(c)) {
            run(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    Ok(())
}

/// Adds a rustup target (e.g. `wasm32-unknown-unknown`) when missing.
pub fn ensure_rust_target(target: &str) -> Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(()); // no rustup: the build will say whether the target is there
    };
    if !String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == target)
    {
        run(Command::new("rustup").args(["target", "add", target]))?;
    }
    Ok(())
}

/// The version of `package` in Cargo.lock (the first entry of that name).
pub fn lock_version(root: &Path, package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"")
            && let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
        {
            return Ok(v.trim_matches('"').to_string());
        }
    }
    bail!("{package} is not in Cargo.lock")
}

/// Installs `wasm-bindgen-cli` at exactly `version` (the CLI must match the library)
/// unless that version is already on the PATH.
pub fn ensure_wasm_bindgen(version: &str) -> Result<()> {
    let have = Command::new(wasm_bindgen())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if have == format!("wasm-bindgen {version}") {
        return Ok(());
    }
    eprintln!(
        "xtask: installing wasm-bindgen-cli {version} (found {:?}); this takes several minutes",
        if have.is_empty() { "none" } else { &have }
    );
    // `--locked` fails for this crate: its lock file does not build on current Rust.
    run(Command::new("cargo").args([
        "install",
        "wasm-bindgen-cli",
        "--version",
        &format!("={version}"),
        "--force",
    ]))
}

/// The `wasm-bindgen` that `cargo install` puts in `$CARGO_HOME/bin`, which need not be
/// on the PATH; else whatever the PATH has.
pub fn wasm_bindgen() -> std::path::PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    cargo_home
        .map(|h| h.join("bin").join("wasm-bindgen"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "wasm-bindgen".into())
}

/// Runs `npm ci` in `dir` (package.json + package-lock.json) when its node_modules is
/// missing or older than the lock file.
pub fn ensure_npm_packages(dir: &Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let marker = dir.join("node_modules").join(".package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(installed), Some(wanted)) = (modified(&marker), modified(&lock))
        && installed >= wanted
    {
        return Ok(());
    }
    if Command::new("npm").arg("--version").output().is_err() {
        ensure_apt_packages(&["nodejs", "npm"])?;
    }
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir))
}
