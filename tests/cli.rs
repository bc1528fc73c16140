//! The `walsh` binary end to end: the commands the README shows, on the software adapters
//! (lavapipe Vulkan and llvmpipe GL; with CI set, a missing adapter fails).

use std::path::Path;
use std::process::{Command, Output};

use walsh::bench::Report;

fn walsh(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_walsh"))
        .args(args)
        .output()
        .expect("run walsh");
    assert!(
        out.status.success(),
        "walsh {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn backends() -> Vec<String> {
    std::env::var("WALSH_TEST_BACKENDS")
        .unwrap_or_else(|_| "vulkan,gl".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn adapters_lists_the_software_adapters() {
    let json = stdout(&walsh(&["adapters", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let found: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["backend"].as_str().unwrap())
        .collect();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        for b in backends() {
            assert!(found.contains(&b.as_str()), "no {b} adapter in {found:?}");
        }
    }
}

#[test]
fn greedy_text_is_the_same_on_cpu_and_every_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let model = model.to_str().unwrap();
    walsh(&[
        "init-model",
        "--out",
        model,
        "--hidden-size",
        "64",
        "--layers",
        "2",
        "--heads",
        "4",
        "--context",
        "64",
    ]);
    let args = [
        "generate",
        "--model",
        model,
        "--prompt",
        "To be",
        "--max-tokens",
        "24",
        "--temperature",
        "0",
    ];
    let cpu = stdout(&walsh(&[&args[..], &["--device", "cpu"]].concat()));
    assert!(cpu.starts_with("To be"), "{cpu}");
    for b in backends() {
        let gpu = stdout(&walsh(&[&["--adapter", b.as_str()], &args[..]].concat()));
        assert_eq!(gpu, cpu, "greedy text on {b}");
    }
    // eval agrees across devices (JSON figures to 1e-4 nats/byte).
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let eval = [
        "eval",
        "--model",
        model,
        "--text",
        text.to_str().unwrap(),
        "--json",
    ];
    let score = |out: Output| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        v["nats_per_byte"].as_f64().unwrap()
    };
    let want = score(walsh(&[&eval[..], &["--device", "cpu"]].concat()));
    for b in backends() {
        let got = score(walsh(&[&["--adapter", b.as_str()], &eval[..]].concat()));
        assert!((got - want).abs() < 1e-4, "{b}: {got} vs cpu {want}");
    }
}

#[test]
fn quick_bench_on_all_adapters_writes_sound_reports_that_merge() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    walsh(&["bench", "--all-adapters", "--quick", "--out", out]);
    let mut reports = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            // from_json checks the schema version and that every figure is sound.
            let report = Report::from_json(&path.display().to_string(), &text).unwrap();
            assert!(
                !report.kernels.is_empty()
                    && !report.decoder.is_empty()
                    && !report.paper.is_empty()
            );
            assert!(
                report
                    .paper
                    .iter()
                    .all(|p| p.skipped.is_none() && p.memory_gain > 0.0)
            );
            let slug = report.slug();
            for suffix in [".md", "-gains.svg", "-kernels.svg"] {
                assert!(
                    dir.path().join(format!("{slug}{suffix}")).exists(),
                    "{slug}{suffix}"
                );
            }
            reports.push(report);
        }
    }
    let backends_seen: Vec<&str> = reports.iter().map(|r| r.adapter.backend.as_str()).collect();
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        for b in backends() {
            assert!(backends_seen.contains(&b.as_str()), "no report for {b}");
        }
    }
    // The page-vs-native report sits next to the adapter reports; merge appends its table.
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results/page-vs-native.json");
    std::fs::copy(&page, dir.path().join("page-vs-native.json")).unwrap();
    let merged = stdout(&walsh(&["bench", "merge", out, "--out", out]));
    for r in &reports {
        assert!(merged.contains(&r.adapter.name), "{merged}");
    }
    assert!(
        merged.contains("## The page vs native walsh on the same adapter"),
        "{merged}"
    );
    assert!(dir.path().join("merged.svg").exists());
    let table = stdout(&walsh(&["bench", "page-table", page.to_str().unwrap()]));
    assert_eq!(
        table,
        std::fs::read_to_string(page.with_extension("md")).unwrap()
    );
}

#[test]
fn contribute_takes_no_size_bounds() {
    for extra in [
        &["--quick"][..],
        &["--max-d-model", "256"],
        &["--all-adapters"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_walsh"))
            .args([&["bench", "--contribute"][..], extra].concat())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--contribute {extra:?} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_prompt_longer_than_the_context_keeps_its_last_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let model = model.to_str().unwrap();
    walsh(&[
        "init-model",
        "--out",
        model,
        "--hidden-size",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--context",
        "16",
    ]);
    let long = "To be, or not to be, that is the question";
    let tail = &long[long.len() - 16..];
    // `--adapter` goes before the subcommand, `--device` after it.
    let run = |prompt: &str, before: &[&str], after: &[&str]| -> (Vec<u32>, String) {
        let args = [
            "generate",
            "--model",
            model,
            "--prompt",
            prompt,
            "--max-tokens",
            "8",
            "--temperature",
            "0",
            "--json",
        ];
        let out = walsh(&[before, &args[..], after].concat());
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let tokens = serde_json::from_value(json["tokens"][0].clone()).unwrap();
        (tokens, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (want, quiet) = run(tail, &[], &["--device", "cpu"]);
    assert!(!quiet.contains("the prompt is"), "{quiet}");
    let notice = format!(
        "the prompt is {} bytes, more than the model's context of 16: generating from its last 16 bytes",
        long.len()
    );
    let (got, stderr) = run(long, &[], &["--device", "cpu"]);
    assert_eq!(got, want);
    assert!(stderr.contains(&notice), "{stderr}");
    for b in backends() {
        let (got, stderr) = run(long, &["--adapter", b.as_str()], &[]);
        assert_eq!(got, want, "{b}");
        assert!(stderr.contains(&notice), "{b}: {stderr}");
    }
}
