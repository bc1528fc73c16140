//! Puts the commit this build came from into `WALSH_GIT_COMMIT` (read with `option_env!`
//! by bench reports and the page's version line), so a binary copied elsewhere still
//! names its own commit, not the one of whatever checkout it runs in.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WALSH_GIT_COMMIT");
    if std::env::var_os("WALSH_GIT_COMMIT").is_some() {
        // Set by whoever builds (rustc reads it from the environment as it is).
        return;
    }
    // Outside a git checkout (a source tarball) the commit stays unknown.
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=WALSH_GIT_COMMIT={commit}");
    // A new commit moves HEAD or the branch it names (loose or packed); `--git-path`
    // finds both in worktrees too. Only files that exist: cargo reruns the script (and
    // rebuilds walsh) on every build while a watched path is missing.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for path in watched {
        let file = git(&["rev-parse", "--git-path", &path]);
        if let Some(file) = file.filter(|f| std::path::Path::new(f).exists()) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}
