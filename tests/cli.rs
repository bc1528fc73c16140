//! The `walsh` binary end to end: the commands README.md and docs/ show, on the software
//! adapters (lavapipe Vulkan and llvmpipe GL; with CI set, a missing adapter fails).

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

/// `walsh init-model --out <dir>/<name> --hidden-size <hidden> --layers <layers> --heads
/// <heads>` and then `extra`; returns the model's path.
fn init_model(
    dir: &Path,
    name: &str,
    hidden: &str,
    layers: &str,
    heads: &str,
    extra: &[&str],
) -> String {
    let out = dir.join(name);
    let out = out.to_str().unwrap().to_string();
    let args = [
        "init-model",
        "--out",
        &out,
        "--hidden-size",
        hidden,
        "--layers",
        layers,
        "--heads",
        heads,
    ];
    walsh(&[&args[..], extra].concat());
    out
}

/// The arguments of a greedy `walsh generate` of `max_tokens` tokens, then `extra`.
fn greedy<'a>(model: &'a str, max_tokens: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let args = [
        "generate",
        "--model",
        model,
        "--max-tokens",
        max_tokens,
        "--temperature",
        "0",
    ];
    [&args[..], extra].concat()
}

/// The arguments of `walsh eval` scoring `text` with `model`, then `extra`.
fn eval_args<'a>(model: &'a str, text: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [&["eval", "--model", model, "--text", text][..], extra].concat()
}

/// Runs `args` with `--device cpu`, then with `--adapter` each of the backends: the CPU's
/// output and each backend's.
fn cpu_then_adapters(args: &[&str]) -> (Output, Vec<(String, Output)>) {
    let cpu = walsh(&[args, &["--device", "cpu"]].concat());
    let gpus = backends().into_iter().map(|b| {
        let out = walsh(&[&["--adapter", b.as_str()], args].concat());
        (b, out)
    });
    (cpu, gpus.collect())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `key` of every object in the JSON array `list`, as strings.
fn strings<'a>(list: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    let items = list.as_array().unwrap().iter();
    items.map(|a| a[key].as_str().unwrap()).collect()
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
    let found = strings(&list, "backend");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        for b in backends() {
            assert!(found.contains(&b.as_str()), "no {b} adapter in {found:?}");
        }
    }
}

#[test]
fn greedy_text_is_the_same_on_cpu_and_every_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model: &str = &init_model(dir.path(), "m", "64", "2", "4", &["--context", "64"]);
    // The same model with 4-bit layer matrices: at most 0.35x their f16 bytes.
    let q4 = dir.path().join("q4");
    let q4 = q4.to_str().unwrap();
    let out = stdout(&walsh(&[
        "quantize",
        "--model",
        model,
        "--out",
        q4,
        "--weights",
        "q4",
    ]));
    let ratio: f64 = out
        .rsplit_once('(')
        .and_then(|(_, r)| r.strip_suffix("x)\n"))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in `{out}`"));
    assert!(ratio <= 0.35, "{out}");
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = text.to_str().unwrap();
    let score = |out: Output| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        v["nats_per_byte"].as_f64().unwrap()
    };
    // Each has the same greedy text on every device, and eval agrees (JSON figures to 1e-4
    // nats/byte): for q4 the GPUs read the packed blocks, the CPU the dequantized values.
    for (m, tag) in [(model, ""), (q4, "q4 ")] {
        let (cpu, gpus) = cpu_then_adapters(&greedy(m, "24", &["--prompt", "To be"]));
        let cpu = stdout(&cpu);
        assert!(cpu.starts_with("To be"), "{cpu}");
        for (b, gpu) in gpus {
            assert_eq!(stdout(&gpu), cpu, "{tag}greedy text on {b}");
        }
        let (cpu, gpus) = cpu_then_adapters(&eval_args(m, text, &["--json"]));
        let want = score(cpu);
        for (b, gpu) in gpus {
            let got = score(gpu);
            assert!((got - want).abs() < 1e-4, "{tag}{b}: {got} vs cpu {want}");
        }
    }
}

#[test]
fn bench_seconds_stops_starting_cases_and_writes_what_it_measured() {
    // --seconds 0: the roofline only, every case left unstarted, the report still sound.
    let dir = tempfile::tempdir().unwrap();
    let backend = backends()[0].clone();
    let out = walsh(&[
        "--adapter",
        &backend,
        "bench",
        "--suite",
        "kernels,paper",
        "--quick",
        "--seconds",
        "0",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped after"));
    let json = (std::fs::read_dir(dir.path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a report");
    let text = std::fs::read_to_string(&json).unwrap();
    let report = Report::from_json(&json.display().to_string(), &text).unwrap();
    assert!(report.kernels.is_empty() && report.paper.is_empty());
    assert!(report.roofline.copy_shader_gb_per_s > 0.0);
}

#[test]
fn quick_bench_on_all_adapters_writes_sound_reports_that_merge() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let run = walsh(&["bench", "--all-adapters", "--quick", "--out", out]);
    // Without a terminal, a line per case instead of the progress bar.
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(log.contains("] 0/") && log.contains(" done\n"), "{log}");
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
            // Paired rounds of one decode chunk each (--quick's 4 new tokens: 3 steps),
            // counted by the chunks: the Hadamard layer is a dispatch shorter.
            for p in &report.paper {
                assert!(p.rounds >= 3 && p.decode_gains.len() == p.rounds, "{p:?}");
                let per_token = |r: &Option<walsh::bench::decoder::DecoderResult>| {
                    r.as_ref().unwrap().dispatches_per_token
                };
                let (dense, hadamard) = (per_token(&p.dense), per_token(&p.hadamard));
                assert!(0.0 < hadamard && hadamard < dense, "{p:?}");
            }
            // The Hadamard model in f16, q8 and q4: fewer weight bytes and fewer bytes
            // read per token, in that order.
            let formats: Vec<(&str, u64, f64)> = ["f16", "q8", "q4"]
                .into_iter()
                .map(|w| {
                    let d = report
                        .decoder
                        .iter()
                        .find(|d| d.variant == "hadamard/dense" && d.weights.name() == w)
                        .unwrap_or_else(|| panic!("no hadamard/dense {w} row"));
                    (w, d.weight_bytes, d.bytes_per_token)
                })
                .collect();
            assert!(
                formats
                    .windows(2)
                    .all(|p| p[0].1 > p[1].1 && p[0].2 > p[1].2 && p[1].2 > 0.0),
                "{formats:?}"
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

/// README's `walsh bench merge bench-results ...` reads every report committed there,
/// passing over those of other kinds (the page against native walsh, llama.cpp beside
/// walsh), whose files name their kind.
#[test]
fn merge_reads_the_committed_reports() {
    let dir = tempfile::tempdir().unwrap();
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    let out = dir.path().to_str().unwrap();
    let merged = stdout(&walsh(&[
        "bench",
        "merge",
        results.to_str().unwrap(),
        "--out",
        out,
    ]));
    let mut adapters = 0;
    for entry in std::fs::read_dir(&results).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        match Report::other_kind(&text).as_deref() {
            None => {
                let report = Report::from_json(&path.display().to_string(), &text).unwrap();
                assert!(merged.contains(&report.adapter.name), "{merged}");
                adapters += 1;
            }
            Some("page-vs-native" | "peer-llamacpp") => {}
            Some(other) => panic!("{}: unknown kind {other}", path.display()),
        }
    }
    assert!(adapters >= 3, "{adapters} adapter reports");
    assert!(merged.contains("## The page vs native walsh on the same adapter"));
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
    let model: &str = &init_model(dir.path(), "m", "32", "1", "2", &["--context", "16"]);
    let long = "To be, or not to be, that is the question";
    let tail = &long[long.len() - 16..];
    // `--adapter` goes before the subcommand, `--device` after it.
    let run = |prompt: &str, before: &[&str], after: &[&str]| -> (Vec<u32>, String) {
        let args = greedy(model, "8", &["--prompt", prompt, "--json"]);
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

/// Runs walsh expecting a clean failure: exit status 1 (not a panic's 101, not an abort's
/// signal) and a one-line message; returns the line.
fn walsh_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_walsh"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run walsh");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "walsh {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "walsh {args:?}: {stderr}");
    lines[0].to_string()
}

fn assert_names(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "`{message}` does not say `{p}`");
    }
}

// Each size a command line or a model implies is checked before anything is allocated for
// it, with an error naming the limit; one test per class. None needs a GPU: they fail
// before one is opened.

#[test]
fn wht_rows_are_checked_before_allocation() {
    // 1.6 TB of WHT input used to abort in the allocator.
    let e = walsh_fails(&["wht", "--n", "4096", "--rows", "100000000"]);
    assert_names(
        &e,
        &[
            "1.5 TiB",
            "limit of 1.0 GiB per WHT buffer",
            "at most 65536 rows",
        ],
    );
    assert_names(&walsh_fails(&["wht", "--rows", "0"]), &["--rows"]);
}

/// `walsh wht` at real models' widths (SmolLM2's 576 and 960, Gemma 3's 2304 and 5376)
/// runs and checks itself against the CPU on every adapter (it exits 1 past 1e-4); 92 is
/// refused naming the Hadamard order it lacks; `--list` shows every core order's
/// construction.
#[test]
fn wht_runs_at_paley_widths_and_names_what_it_cannot_build() {
    for b in backends() {
        for n in ["576", "960", "2304", "5376"] {
            let out = stdout(&walsh(&["--adapter", &b, "wht", "--n", n, "--rows", "3"]));
            assert!(out.contains(&format!("WHT n={n} rows=3")), "{b}: {out}");
        }
    }
    let e = walsh_fails(&["wht", "--n", "92"]);
    assert_names(
        &e,
        &[
            "size 92",
            "order 92 = 23 x 4",
            "nearest supported: 88 and 96",
        ],
    );
    let list = stdout(&walsh(&["wht", "--list"]));
    for line in [
        "36    Paley II over GF(17)     36 72 144 288 576 ",
        "44    Paley I over GF(43)",
        "164   Paley II over GF(3^4)",
        "180   Paley II over GF(89)     180 360 720 1440 2880 5760 11520 23040\n",
        "not built: orders 92, 116, 156, 172",
    ] {
        assert!(list.contains(line), "`{line}` not in\n{list}");
    }
}

#[test]
fn init_model_sizes_are_checked_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    let e = walsh_fails(&[
        "init-model",
        "--out",
        big.to_str().unwrap(),
        "--hidden-size",
        "32768",
        "--layers",
        "1024",
    ]);
    // The limit follows the memory free (2^29 parameters at least); 3.5e13 exceeds any.
    assert_names(&e, &["parameters for a random model (the memory free here"]);
    assert!(!big.exists());
}

#[test]
fn bench_sizes_are_checked_before_any_gpu_work() {
    let e = walsh_fails(&["bench", "--max-kernel-n", "65536"]);
    assert_names(&e, &["--max-kernel-n 65536", "walsh supports (32768)"]);
    let e = walsh_fails(&["bench", "--suite", "paper", "--max-d-model", "100"]);
    assert_names(&e, &["paper grid empty", "d_model 256"]);
    let e = walsh_fails(&[
        "bench",
        "--suite",
        "paper",
        "--min-d-model",
        "1025",
        "--max-d-model",
        "2047",
    ]);
    assert_names(&e, &["--min-d-model 1025", "paper grid empty"]);
    let e = walsh_fails(&["bench", "--suite", "paper", "--min-batch", "17"]);
    assert_names(&e, &["--min-batch 17", "paper grid empty", "batch 1..16"]);
    let e = walsh_fails(&[
        "bench",
        "--suite",
        "paper",
        "--min-context",
        "1024",
        "--max-context",
        "2000",
    ]);
    assert_names(
        &e,
        &[
            "--min-context 1024",
            "--max-context 2000",
            "context 128..2048",
        ],
    );
}

/// A small model with the longest context walsh allows: 512 MiB of KV cache per sequence.
fn long_context_model(dir: &Path) -> String {
    init_model(dir, "long", "64", "1", "4", &["--context", "1048576"])
}

#[test]
fn generate_batch_times_context_is_checked_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let model = long_context_model(dir.path());
    // 17 prompts in one batch: 8.5 GiB of f32 cache; 33 of f16 (the default) are 8.25 GiB.
    for (count, cache, fit) in [(17, "f32", "16 fit"), (33, "f16", "32 fit")] {
        let mut generate = vec!["generate", "--model", &model, "--kv-cache", cache];
        for _ in 0..count {
            generate.extend(["--prompt", "a"]);
        }
        let e = walsh_fails(&generate);
        let what = format!("{count} sequence(s) of 1048576 positions");
        assert_names(&e, &[&what, "8.0 GiB per run", fit]);
    }
}

#[test]
fn eval_text_and_window_sizes_are_checked_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let model = long_context_model(dir.path());
    // A text larger than eval reads (sparse: it takes no disk).
    let text = dir.path().join("big.txt");
    std::fs::File::create(&text)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let e = walsh_fails(&eval_args(
        &model,
        text.to_str().unwrap(),
        &["--device", "cpu"],
    ));
    assert_names(&e, &["300.0 MiB", "limit of 256.0 MiB for a text to score"]);

    // The logits of one evaluation window: 2^20 positions x 4096 tokens.
    let wide = dir.path().join("wide");
    let config = walsh::model::Config {
        hidden_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        intermediate_size: 128,
        vocab_size: 4096,
        max_position_embeddings: 1 << 20,
        tie_word_embeddings: true,
        attn_output: walsh::model::AttnOutput::Hadamard,
        ..Default::default()
    };
    walsh::model::init::write_random_model(&wide, &config, walsh::ops::WeightFormat::F16, 0)
        .unwrap();
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let e = walsh_fails(&eval_args(
        wide.to_str().unwrap(),
        readme.to_str().unwrap(),
        &["--device", "cpu"],
    ));
    assert_names(&e, &["logits of one window", "16.0 GiB", "8.0 GiB per run"]);
}

/// The broken model directories a new user meets, through the binary: each ends with exit
/// status 1 and one line naming the broken file, never a panic or an abort.
#[test]
fn broken_model_directories_fail_cleanly_naming_the_file() {
    use walsh::model::init::{random_tensors, write_model};
    let config = walsh::model::Config {
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        intermediate_size: 64,
        vocab_size: 256,
        max_position_embeddings: 16,
        attn_output: walsh::model::AttnOutput::Hadamard,
        ..Default::default()
    };
    let f16 = walsh::ops::WeightFormat::F16;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let tensors = random_tensors(&config, 3);
    write_model(&good, &config, &tensors, f16).unwrap();
    let run = |model: &Path| {
        [
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "--max-tokens",
            "1",
        ]
        .map(String::from)
    };
    // The intact model runs: every failure below is the breakage's.
    let args = run(&good);
    walsh(&args.each_ref().map(String::as_str));

    let config_text = std::fs::read_to_string(good.join("config.json")).unwrap();
    let weights = std::fs::read(good.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + n]).unwrap();
    let data = &weights[8 + n..];
    let with_header = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut h = header.clone();
        edit(&mut h);
        let h = serde_json::to_vec(&h).unwrap();
        let mut file = (h.len() as u64).to_le_bytes().to_vec();
        file.extend(h);
        file.extend(data);
        file
    };
    let with_config = |key: &str, value: serde_json::Value| {
        let mut c: serde_json::Value = serde_json::from_str(&config_text).unwrap();
        c[key] = value;
        c.to_string()
    };
    let norm = "model.norm.weight";
    let norm_start = header[norm]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut nan = weights.clone();
    nan[8 + n + norm_start..8 + n + norm_start + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    let mut noise = weights.clone();
    noise
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b ^= (i * 7919) as u8);
    let mut huge_header = weights.clone();
    huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let past_end = with_header(&|h| {
        h[norm]["data_offsets"][1] = (data.len() as u64 + 64).into();
    });
    let transposed = with_header(&|h| {
        h["model.layers.0.mlp.gate_proj.weight"]["shape"] = serde_json::json!([32, 64]);
    });
    let bf16 = with_header(&|h| h[norm]["dtype"] = "BF16".into());
    // (what, config.json or none, what the error names), beside the intact weights
    let configs: [(&str, Option<String>, &str); 4] = [
        ("missing config", None, "config.json"),
        (
            "broken config",
            Some("{\"hidden_size\": 32,".into()),
            "config.json",
        ),
        (
            "zero size",
            Some(with_config("hidden_size", 0.into())),
            "hidden_size must be positive",
        ),
        (
            "huge size",
            Some(with_config("num_hidden_layers", (1u64 << 40).into())),
            "larger than walsh supports",
        ),
    ];
    // (what, model.safetensors or none, what the error names), beside the intact config
    let safetensors = "model.safetensors";
    let weights_files: [(&str, Option<Vec<u8>>, &str); 9] = [
        ("missing weights", None, safetensors),
        ("empty weights", Some(Vec::new()), safetensors),
        (
            "truncated weights",
            Some(weights[..weights.len() / 2].to_vec()),
            safetensors,
        ),
        ("corrupt weights", Some(noise), safetensors),
        ("huge header length", Some(huge_header), safetensors),
        ("offset past the end", Some(past_end), safetensors),
        ("transposed matrix", Some(transposed), "[32, 64]"),
        ("wrong dtype", Some(bf16), "BF16"),
        ("NaN weight", Some(nan), "non-finite"),
    ];
    let cases = (configs.into_iter())
        .map(|(what, c, names)| (what, c, Some(weights.clone()), names))
        .chain(
            (weights_files.into_iter())
                .map(|(what, w, names)| (what, Some(config_text.clone()), w, names)),
        );
    for (what, config, weights, names) in cases {
        let model = dir.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(&model).unwrap();
        if let Some(c) = config {
            std::fs::write(model.join("config.json"), c).unwrap();
        }
        if let Some(w) = weights {
            std::fs::write(model.join("model.safetensors"), w).unwrap();
        }
        let args = run(&model);
        let e = walsh_fails(&args.each_ref().map(String::as_str));
        assert_names(&e, &[&model.display().to_string(), names]);
    }
    // A tensor the file lacks.
    let missing = dir.path().join("missing-tensor");
    let mut fewer = tensors.clone();
    fewer.retain(|t| t.0 != norm);
    write_model(&missing, &config, &fewer, f16).unwrap();
    let args = run(&missing);
    let e = walsh_fails(&args.each_ref().map(String::as_str));
    assert_names(&e, &["model.safetensors", norm, "is missing"]);
}

#[test]
fn init_model_kv_heads_makes_a_grouped_model_that_decodes_alike_everywhere() {
    // d 128, 8 heads of 16 on 2 KV heads, dense and Hadamard W_O: greedy text identical on
    // the CPU and every adapter; config.json says num_key_value_heads, k_proj is [32, 128].
    let dir = tempfile::tempdir().unwrap();
    for attn_output in ["dense", "hadamard"] {
        let extra = [
            "--kv-heads",
            "2",
            "--attn-output",
            attn_output,
            "--context",
            "64",
        ];
        let model = init_model(dir.path(), attn_output, "128", "2", "8", &extra);
        let m = walsh::model::weights::Model::load(Path::new(&model)).unwrap();
        assert_eq!(m.config.num_key_value_heads, Some(2));
        assert_eq!(m.weights.layers[0].k_proj.shape, [32, 128]);
        let (cpu, gpus) = cpu_then_adapters(&greedy(&model, "24", &["--prompt", "To be"]));
        let cpu = stdout(&cpu);
        assert!(cpu.starts_with("To be"), "{cpu}");
        for (b, gpu) in gpus {
            assert_eq!(stdout(&gpu), cpu, "{attn_output} greedy text on {b}");
        }
    }
    // Without --kv-heads (or with it equal to --heads) the config has no such key.
    let plain = init_model(dir.path(), "plain", "64", "1", "4", &["--kv-heads", "4"]);
    let config = std::fs::read_to_string(Path::new(&plain).join("config.json")).unwrap();
    assert!(!config.contains("num_key_value_heads"), "{config}");
    let bad = dir.path().join("bad");
    let e = walsh_fails(&[
        "init-model",
        "--out",
        bad.to_str().unwrap(),
        "--hidden-size",
        "64",
        "--heads",
        "4",
        "--kv-heads",
        "3",
    ]);
    assert_names(
        &e,
        &["num_key_value_heads = 3 does not divide num_attention_heads = 4"],
    );
}

#[test]
fn init_model_q8_is_the_f16_model_of_the_same_seed_quantized() {
    use walsh::blocks::{QuantFormat, QuantMatrix};
    use walsh::model::quant::quantized_by_default;
    let dir = tempfile::tempdir().unwrap();
    let init = |dtype: &str| {
        let out = init_model(dir.path(), dtype, "64", "1", "4", &["--dtype", dtype]);
        walsh::model::weights::Model::load(Path::new(&out)).unwrap()
    };
    let (f16, q8) = (init("f16"), init("q8"));
    assert_eq!(
        q8.config.quantization.map(|q| q.weights),
        Some(QuantFormat::Q8)
    );
    for (a, b) in f16.weights.tensors().iter().zip(q8.weights.tensors()) {
        let want = if quantized_by_default(&a.name, &a.shape) {
            QuantMatrix::quantize(QuantFormat::Q8, a.shape[0], a.shape[1], &a.to_f32())
                .unwrap()
                .dequantize()
        } else {
            a.to_f32()
        };
        assert_eq!(b.to_f32(), want, "{}", a.name);
    }
}

#[test]
fn quantized_kv_caches_run_on_every_device_and_bad_ones_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let init = |name: &str, hidden: &str, attn_output: &str| -> String {
        let extra = ["--context", "32", "--attn-output", attn_output];
        init_model(dir.path(), name, hidden, "1", "4", &extra)
    };
    // head_dim 16: every format applies.
    let model = init("m", "64", "hadamard");
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "To be, or not to be, that is the question.").unwrap();
    let text = text.to_str().unwrap();
    for kv in ["q8", "q4", "q8r", "q4r"] {
        let generate = greedy(
            &model,
            "4",
            &["--prompt", "To be", "--kv-cache", kv, "--json"],
        );
        let stats = |out: Output| -> serde_json::Value {
            let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
            v["stats"].clone()
        };
        let (cpu, gpus) = cpu_then_adapters(&generate);
        let s = stats(cpu);
        assert_eq!(s["kv_cache"], kv, "{s}");
        for (b, gpu) in gpus {
            let s = stats(gpu);
            assert_eq!(s["kv_cache"], kv, "{b}: {s}");
        }
        let eval = eval_args(&model, text, &["--kv-cache", kv, "--json"]);
        let score = |out: Output| -> f64 {
            let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
            assert_eq!(v["kv_cache"], kv, "{v}");
            v["nats_per_byte"].as_f64().unwrap()
        };
        let (cpu, gpus) = cpu_then_adapters(&eval);
        let want = score(cpu);
        for (b, gpu) in gpus {
            let got = score(gpu);
            // Quantizing is discontinuous: a key differing in its last bit may store a
            // level one step away, so not the 1e-4 of the f16 cache.
            assert!(
                (got - want).abs() < 1e-3,
                "{kv} on {b}: {got} vs cpu {want}"
            );
        }
    }
    // f32 and f16 have no rotated form: clap rejects the value, naming the formats.
    let out = Command::new(env!("CARGO_BIN_EXE_walsh"))
        .args(eval_args(&model, text, &["--kv-cache", "f16r"]))
        .output()
        .expect("run walsh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_names(&stderr, &["`f16r`", "q8r", "no rotated form"]);
    // head_dim 46 = 23 x 2: no Hadamard matrix of that order, said before any work (a
    // dense W_O: 184 is no transform size either).
    let odd = init("odd", "184", "dense");
    for device in ["cpu", "gpu"] {
        let e = walsh_fails(&eval_args(
            &odd,
            text,
            &["--kv-cache", "q4r", "--device", device],
        ));
        assert_names(&e, &["q4r", "head_dim 46 has none", "multiple of 4"]);
    }
    walsh(&eval_args(
        &odd,
        text,
        &["--kv-cache", "q4", "--device", "cpu"],
    ));
}

#[test]
fn decode_layers_are_fused_and_profile_times_them_on_every_adapter() {
    // The fused decode layer: 5 dispatches with a dense W_O, 4 with the Hadamard one,
    // plus embedding, LM head, sampling and the chunk's feedback per token.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for (name, per_layer) in [("shakespeare-dense", 5.0), ("shakespeare-hadamard", 4.0)] {
        let model = root.join(name);
        let model = model.to_str().unwrap();
        for b in backends() {
            let generate = [&["--adapter", &b][..], &greedy(model, "40", &["--json"])].concat();
            let v: serde_json::Value =
                serde_json::from_str(stdout(&walsh(&generate)).lines().next().unwrap()).unwrap();
            let per_token = v["stats"]["dispatches_per_token"].as_f64().unwrap();
            // 4 layers; a chunk's first step also replays one more feedback.
            let want = 4.0 * per_layer + 4.0;
            assert!(
                per_token >= want && per_token < want + 0.5,
                "{name} on {b}: {per_token}"
            );
            let prof = [
                "--adapter",
                &b,
                "profile",
                "--model",
                model,
                "--repeats",
                "2",
                "--json",
            ];
            let p: serde_json::Value = serde_json::from_str(&stdout(&walsh(&prof))).unwrap();
            assert_eq!(
                p["decode_dispatches_per_layer"].as_f64(),
                Some(per_layer),
                "{name} on {b}"
            );
            let rows = p["decode"]["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 4 * per_layer as usize + 3, "{name} on {b}");
            assert!(
                rows.iter()
                    .all(|r| r["us"].as_f64().unwrap() >= 0.0 && r["bytes"].as_u64().unwrap() > 0)
            );
            assert!(p["prefill"]["dispatches"].as_u64().unwrap() > rows.len() as u64);
            assert!(p["copy_gb_per_s"].as_f64().unwrap() > 0.0);
            let table = stdout(&walsh(
                &[&prof[..prof.len() - 1], &["--rows", "1,3"]].concat(),
            ));
            assert!(table.contains("decode dispatches per layer: "), "{table}");
            assert!(table.contains("decode step (3 sequences"), "{table}");
            assert!(table.contains("decode step by rows"), "{table}");
        }
    }
}

#[test]
fn export_writes_every_variant_as_gguf_and_generate_runs_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dense.gguf");
    let out = out.to_str().unwrap();
    // `walsh export --gguf <gguf> --model <model>`, then `extra`.
    let export = |gguf, model, extra: &[&'static str]| {
        [&["export", "--gguf", gguf, "--model", model][..], extra].concat()
    };
    let dense = "models/shakespeare-dense";
    let text = stdout(&walsh(&export(out, dense, &["--weights", "q4_0"])));
    assert!(text.contains("Q4_0"), "{text}");
    let bytes = std::fs::read(out).unwrap();
    assert_eq!(&bytes[..8], b"GGUF\x03\0\0\0");
    let e = walsh_fails(&export("/nonexistent-dir/m.gguf", dense, &[]));
    assert_names(&e, &["cannot write /nonexistent-dir/m.gguf"]);
    // Hadamard W_O and the residual-MLP query go out with walsh's keys, and
    // `generate --model FILE.gguf` reads them back: the directory's greedy text.
    let generate = |model: &str| {
        let args = [
            "generate", "--model", model, "--device", "cpu", "--prompt", "ROMEO.",
        ];
        stdout(&walsh(
            &[&args[..], &["--max-tokens", "24", "--temperature", "0"]].concat(),
        ))
    };
    let file = dir.path().join("variant.gguf");
    let file = file.to_str().unwrap();
    for model in [
        "models/shakespeare-hadamard",
        "models/shakespeare-hadamard-qmlp",
    ] {
        walsh(&export(file, model, &[]));
        assert_eq!(generate(file), generate(model), "{model}");
    }
}

#[test]
fn tune_times_every_gemv_and_caches_the_fastest_for_generate() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tuning.json");
    let model = "models/shakespeare-hadamard-q4";
    let run = |args: &[&str], tune: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_walsh"));
        c.args(args).env("WALSH_TUNE_CACHE", &cache);
        match tune {
            Some(v) => c.env("WALSH_TUNE", v),
            None => c.env_remove("WALSH_TUNE"),
        };
        let out = c.output().expect("run walsh");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "walsh {args:?}: {err}");
        (stdout(&out), err)
    };
    let cached = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap()
    };
    for b in backends() {
        let _ = std::fs::remove_file(&cache);
        let (json, err) = run(
            &[
                "--adapter",
                &b,
                "tune",
                "--model",
                model,
                "--json",
                "--rounds",
                "1",
            ],
            None,
        );
        assert!(err.contains(&cache.display().to_string()), "{b}: {err}");
        let tunes: serde_json::Value = serde_json::from_str(&json).unwrap();
        // The q4 layer matrices and the f16 head, each with its candidates' step times.
        let formats = strings(&tunes, "format");
        assert_eq!(formats, ["f16", "q4"], "{b}");
        for t in tunes.as_array().unwrap() {
            let candidates = t["candidates"].as_array().unwrap();
            let best = candidates
                .iter()
                .min_by(|x, y| x[1].as_f64().unwrap().total_cmp(&y[1].as_f64().unwrap()))
                .unwrap();
            assert_eq!(t["chosen"], best[0], "{b}: {t}");
            // The int8-activation GEMV is timed for q4 (not for f16) but never chosen.
            let int8 = t.get("int8").and_then(|v| v.as_array()).map(|a| a.len());
            if t["format"] == "q4" {
                assert_eq!(int8, Some(1), "{b}: {t}");
                assert_eq!(t["int8"][0][0], "gemv_dot4", "{b}: {t}");
            } else {
                assert_eq!(int8, None, "{b}: {t}");
            }
            assert_ne!(t["chosen"], "gemv_dot4", "{b}: {t}");
        }
        let entries = |v: &serde_json::Value| -> usize {
            v["adapters"]
                .as_object()
                .unwrap()
                .values()
                .map(|e| e.as_object().unwrap().len())
                .sum()
        };
        assert_eq!(entries(&cached()), 2, "{b}");
        // A cache that is not JSON is measured again and rewritten by generate; with
        // WALSH_TUNE=off generate neither reads nor writes it.
        std::fs::write(&cache, "{torn").unwrap();
        let generate = [&["--adapter", b.as_str()][..], &greedy(model, "4", &[])].concat();
        run(&generate, Some("off"));
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), "{torn", "{b}");
        run(&generate, None);
        assert_eq!(entries(&cached()), 2, "{b}");
        // WALSH_TUNE=<GEMV> runs that GEMV without measuring or caching: the same tokens.
        let tuned = run(&generate, None).0;
        std::fs::write(&cache, "{torn").unwrap();
        assert_eq!(run(&generate, Some("gemv_outputs")).0, tuned, "{b}");
        assert_eq!(std::fs::read_to_string(&cache).unwrap(), "{torn", "{b}");
        let out = Command::new(env!("CARGO_BIN_EXE_walsh"))
            .args(&generate)
            .env("WALSH_TUNE", "gemv_fast")
            .output()
            .expect("run walsh");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{b}");
        assert!(
            err.contains("WALSH_TUNE=gemv_fast is neither `off` nor a decode GEMV"),
            "{err}"
        );
        // WALSH_FUSE=off: each dispatch on its own, the same tokens; other values refused.
        for (fuse, ok) in [("off", true), ("maybe", false)] {
            let out = Command::new(env!("CARGO_BIN_EXE_walsh"))
                .args(&generate)
                .env("WALSH_TUNE_CACHE", &cache)
                .env("WALSH_FUSE", fuse)
                .output()
                .expect("run walsh");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.success(), ok, "{b} WALSH_FUSE={fuse}: {err}");
            if ok {
                assert_eq!(stdout(&out), tuned, "{b}");
            } else {
                assert!(
                    err.contains("WALSH_FUSE=maybe: expected on or off"),
                    "{err}"
                );
            }
        }
    }
}

#[test]
fn generate_json_ends_each_sequence_at_its_end_of_generation_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = "tests/data/chat/tokenizer.json";
    let model: &str = &init_model(
        dir.path(),
        "chat",
        "32",
        "1",
        "2",
        &["--context", "64", "--tokenizer", tokenizer, "--seed", "3"],
    );
    let run = || -> serde_json::Value {
        let args = greedy(model, "12", &["--prompt", "Hi", "--prompt", "Verse"]);
        let out = walsh(&[&args[..], &["--device", "cpu", "--json"]].concat());
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let tokens = |json: &serde_json::Value| -> Vec<Vec<u32>> {
        serde_json::from_value(json["tokens"].clone()).unwrap()
    };
    // Without an end-of-generation token among them, every token comes back.
    let before = run();
    let all = tokens(&before);
    // <|end_of_text|> and <|eot_id|>: the tokenizer's end-of-generation tokens.
    assert!(all.iter().flatten().all(|&t| t > 2), "{all:?}");
    assert_eq!(before["finish"], serde_json::json!(["length", "length"]));
    assert!(all.iter().all(|t| t.len() == 12));
    // Make the first sequence's fourth token the model's EOS (tokenizer_config.json's
    // eos_token, by its text in tokenizer.json's vocabulary).
    let eos = all[0][3];
    let vocab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer).unwrap()).unwrap();
    let text = vocab["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, id)| id.as_u64() == Some(eos as u64))
        .map(|(text, _)| text.clone())
        .expect("the token is in the vocabulary");
    let config = Path::new(model).join("tokenizer_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["eos_token"] = text.into();
    std::fs::write(&config, json.to_string()).unwrap();
    // Each sequence stops before its first EOS (the same greedy tokens up to there).
    let after = run();
    let cut = tokens(&after);
    for (seq, (cut, all)) in cut.iter().zip(&all).enumerate() {
        let end = all.iter().position(|&t| t == eos);
        assert_eq!(cut[..], all[..end.unwrap_or(all.len())], "sequence {seq}");
        let finish = if end.is_some() { "stop" } else { "length" };
        assert_eq!(after["finish"][seq], finish, "sequence {seq}");
    }
    assert_eq!(after["finish"][0], "stop");
}
