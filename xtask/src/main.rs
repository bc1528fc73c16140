//! `cargo xtask <task>`: project automation, in the style of wgpu's own xtask.
//!
//! - `test`: installs what the tests need when missing (Mesa's software Vulkan and GL
//!   drivers, rustfmt, clippy), then runs `cargo fmt --check`, `cargo clippy -D warnings`
//!   and every test (unit, integration, and the benches once each in smoke mode).
//!   Idempotent: a second run installs nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Debian packages giving the software adapters the GPU tests run on: lavapipe (Vulkan)
/// and llvmpipe (GL through headless EGL).
const APT_PACKAGES: &[&str] = &[
    "mesa-vulkan-drivers",
    "libvulkan1",
    "libegl1",
    "libegl-mesa0",
    "libgles2",
    "libgl1-mesa-dri",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
        None => {
            eprintln!("{USAGE}");
            Ok(())
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  test    install what is missing, then fmt check, clippy -D warnings and every test";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn test() -> Result<()> {
    ensure_apt_packages(APT_PACKAGES)?;
    ensure_rustup_components(&["rustfmt", "clippy"])?;

    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    let mut tests = cargo();
    tests
        .args(["test", "--workspace", "--all-targets"])
        // Benches run once each, at small sizes.
        .env("WALSH_BENCH_SMOKE", "1");
    // Vulkan loaders warn on every instance without it; give them a private one.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = root().join("target").join("xdg-runtime");
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        tests.env("XDG_RUNTIME_DIR", dir);
    }
    let (passed, failed) = run_counting(&mut tests)?;
    eprintln!("xtask: fmt, clippy and every test passed");
    println!("xtask: {passed} passed, {failed} failed");
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

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the missing Debian packages with apt-get (through sudo when not root).
fn ensure_apt_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "missing packages {missing:?} and no apt-get here: install Mesa's Vulkan (lavapipe) \
             and EGL/GL (llvmpipe) drivers by hand"
        );
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

fn ensure_rustup_components(components: &[&str]) -> Result<()> {
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
