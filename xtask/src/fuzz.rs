//! `cargo xtask fuzz --minutes N [--seed S] [--targets T,..]`: the long run of the fuzz test
//! (`tests/fuzz_loader.rs`, which `cargo test` runs for a fixed, short budget). It prints
//! a progress line every 30 seconds and ends with `N executions in M minutes, F failures`.

use anyhow::{Result, bail};

use crate::{cargo, run};

pub fn fuzz(args: &[String]) -> Result<()> {
    let mut minutes = "10".to_string();
    let mut seed = None;
    let mut targets = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| match it.next() {
            Some(v) => Ok(v.clone()),
            None => bail!("{flag} needs a value"),
        };
        match arg.as_str() {
            "--minutes" => minutes = value("--minutes")?,
            "--seed" => seed = Some(value("--seed")?),
            "--targets" => targets = Some(value("--targets")?),
            other => bail!(
                "unknown fuzz option `{other}` (--minutes N, --seed S, \
                 --targets model,report,text,request)"
            ),
        }
    }
    match minutes.parse::<f64>() {
        Ok(m) if m > 0.0 && m.is_finite() => {}
        _ => bail!("--minutes {minutes}: give a positive number of minutes"),
    }
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "walsh",
        "--test",
        "fuzz_loader",
        "--",
        "--exact",
        "loader_and_text_inputs_survive_mutation",
        "--nocapture",
    ])
    .env("WALSH_FUZZ_MINUTES", &minutes);
    if let Some(seed) = seed {
        cmd.env("WALSH_FUZZ_SEED", seed);
    }
    if let Some(targets) = targets {
        cmd.env("WALSH_FUZZ_TARGETS", targets);
    }
    run(&mut cmd)
}
