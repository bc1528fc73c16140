//! Real clients against `walsh serve`: OpenAI's own Python package (`openai` from PyPI,
//! pinned), in a virtual environment xtask makes under `target/xtask/openai-venv`, runs
//! `tests/clients/openai_client.py` with the walsh binary the test run built.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::{install, private_runtime_dir, root, run};

/// The `openai` package version the check installs.
pub const OPENAI_VERSION: &str = "3.60.0";

/// Installs Python's venv module and the pinned `openai` package when missing, then runs
/// the client check against `walsh`.
pub fn openai(walsh: &Path) -> Result<()> {
    install::ensure_apt_packages(&["python3", "python3-venv"])?;
    let venv = root().join("target").join("xtask").join("openai-venv");
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        // Debian's interpreter, whose venv module the package above provides.
        let system = if Path::new("/usr/bin/python3").is_file() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        run(Command::new(system).args(["-m", "venv"]).arg(&venv))?;
    }
    let version = Command::new(&python)
        .args(["-c", "import openai; print(openai.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if version != OPENAI_VERSION {
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("openai=={OPENAI_VERSION}"),
        ]))?;
    }
    let mut check = Command::new(&python);
    check
        .arg(
            root()
                .join("tests")
                .join("clients")
                .join("openai_client.py"),
        )
        .arg(walsh)
        .current_dir(root());
    private_runtime_dir(&mut check)?;
    run(&mut check)
}
