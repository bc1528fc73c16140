//! `walsh-train report`: parameter and FLOP counts of the shipped configuration, the log
//! parser, the statistics over seeds on a synthetic sweep, and that the committed
//! `train/results/` is what the committed runs give.

use std::path::{Path, PathBuf};

use walsh::model::{AttnOutput, Config, Query};
use walsh_train::report::{
    Heldout, HeldoutEval, Report, ReportOptions, VARIANTS, discover, param_counts, parse_log,
    run_dir, spread, train_flops_per_token,
};

/// The shipped recipe's model (train/sweep.sh): `Config::default()`'s sizes, d 256,
/// 4 layers, 8 heads, FFN 688, context 128.
fn shipped(attn_output: AttnOutput, query: Query) -> Config {
    Config {
        attn_output,
        query,
        ..Default::default()
    }
}

#[test]
fn parameter_counts_of_the_shipped_variants() {
    // (total, attention) as in docs/models.md's table; non-embedding = total - 2 * 256 * 256
    let want = [
        (AttnOutput::Dense, Query::Dense, 3_295_488, 1_048_576),
        (AttnOutput::Hadamard, Query::Dense, 3_035_392, 788_480),
        (AttnOutput::Hadamard, Query::Identity, 2_773_248, 526_336),
        // q_down 128 x 256 + q_up 256 x 128: as many as q_proj
        (AttnOutput::Hadamard, Query::ResidualMlp, 3_035_392, 788_480),
    ];
    for (o, q, total, attention) in want {
        let p = param_counts(&shipped(o, q));
        assert_eq!((p.total, p.attention), (total, attention), "{o:?} {q:?}");
        assert_eq!(p.embedding, 2 * 256 * 256);
        assert_eq!(p.non_embedding, total - 131_072);
    }
}

#[test]
fn training_flops_per_token_by_hand() {
    // dense: 4 layers x (4 d^2 + 3 d 688) + lm_head 256 d = 3,227,648 matrix weights
    let dense = train_flops_per_token(&shipped(AttnOutput::Dense, Query::Dense));
    assert_eq!(dense.matmul_weights, 3_227_648);
    let attention = 12.0 * 4.0 * 128.0 * 256.0; // 1,572,864
    assert_eq!(dense.per_token, 6.0 * 3_227_648.0 + attention);
    assert_eq!(dense.hadamard, 0.0);
    // Hadamard: no o_proj; a fast WHT (256 x 8) and the affine (2 x 256), x 3, x 4 layers
    let had = train_flops_per_token(&shipped(AttnOutput::Hadamard, Query::Dense));
    assert_eq!(had.matmul_weights, 3_227_648 - 4 * 65_536);
    assert_eq!(had.hadamard, 3.0 * 4.0 * (2048.0 + 512.0));
    assert_eq!(had.per_token, 19_396_608.0);
    // the residual-MLP query costs what q_proj costs; identity saves it
    let mlp = train_flops_per_token(&shipped(AttnOutput::Hadamard, Query::ResidualMlp));
    assert_eq!(mlp.per_token, had.per_token);
    let id = train_flops_per_token(&shipped(AttnOutput::Hadamard, Query::Identity));
    assert_eq!(had.per_token - id.per_token, 6.0 * 4.0 * 65_536.0);
    // d 576 = 36 x 16: 4 butterfly stages and a 36-term sum per output, and the affine
    let wide = Config {
        hidden_size: 576,
        num_attention_heads: 9,
        ..shipped(AttnOutput::Hadamard, Query::Dense)
    };
    let wide = train_flops_per_token(&wide);
    assert_eq!(
        wide.hadamard,
        3.0 * 4.0 * (576.0 * (4.0 + 35.0) + 2.0 * 576.0)
    );
}

#[test]
fn the_log_parser_reads_rows_and_names_bad_ones() {
    let p = Path::new("x/train_log.csv");
    let rows = parse_log(
        p,
        "step,train_loss,val_loss,lr,elapsed_s\n1,5.9,,2.6e-5,6.9\n2,5.8,5.7,5.3e-5,10.3\n",
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].val_loss, None);
    assert_eq!(
        (rows[1].step, rows[1].val_loss, rows[1].elapsed_s),
        (2, Some(5.7), 10.3)
    );

    let err = |text: &str| parse_log(p, text).unwrap_err().to_string();
    assert!(err("step,loss\n").contains("line 1: expected the header"));
    let h = "step,train_loss,val_loss,lr,elapsed_s\n";
    assert!(err(&format!("{h}1,5.9,,2e-5\n")).contains("line 2: 4 fields"));
    assert!(
        err(&format!("{h}1,5.9,,2e-5,1\n1,5.8,,2e-5,2\n"))
            .contains("line 3: step 1 does not follow")
    );
    assert!(err(&format!("{h}1,nan,,2e-5,1\n")).contains("train_loss \"nan\""));
    assert!(err(&format!("{h}x,5.9,,2e-5,1\n")).contains("step \"x\""));
}

#[test]
fn spread_is_the_sample_standard_deviation() {
    let s = spread(&[1.0, 2.0, 4.0]).unwrap();
    assert!((s.mean - 7.0 / 3.0).abs() < 1e-12);
    // deviations -4/3, -1/3, 5/3: squares sum 42/9, over n - 1 = 2
    assert!((s.std - (42.0f64 / 18.0).sqrt()).abs() < 1e-12);
    assert_eq!((s.min, s.max, s.n), (1.0, 4.0, 3));
    assert_eq!(spread(&[3.0]).unwrap().std, 0.0);
    assert!(spread(&[]).is_none());
}

/// A run directory as the sweep leaves it: config, a log with val losses every 50 steps
/// falling to `last`, and (optionally) held-out figures.
fn fake_run(root: &Path, name: &str, seed: u64, steps: u64, last: f64, heldout: Option<f64>) {
    let v = VARIANTS.iter().find(|v| v.name == name).unwrap();
    let dir = root.join(run_dir(name, seed));
    std::fs::create_dir_all(&dir).unwrap();
    let config = shipped(v.attn_output, v.query);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let mut log = String::from("step,train_loss,val_loss,lr,elapsed_s\n");
    for step in 1..=steps {
        let val = if step % 50 == 0 {
            format!("{:.6}", last + 1.0 / step as f64 - 1.0 / 1500.0)
        } else {
            String::new()
        };
        log.push_str(&format!("{step},2.0,{val},1e-3,{}\n", step as f64 * 1.5));
    }
    std::fs::write(dir.join("train_log.csv"), log).unwrap();
    if let Some(nats) = heldout {
        let eval = |n| HeldoutEval {
            bytes_scored: 65_501,
            nats_per_byte: n,
            context: 128,
        };
        let h = Heldout {
            text: "models/shakespeare-heldout.txt".into(),
            kv_cache: "f32".into(),
            walsh: eval(nats),
            trainer: eval(nats + 1e-8),
        };
        std::fs::write(
            dir.join("heldout_full.json"),
            serde_json::to_string(&h).unwrap(),
        )
        .unwrap();
    }
}

fn options() -> ReportOptions {
    ReportOptions {
        steps: 1500,
        batch: 16,
    }
}

#[test]
fn a_synthetic_sweep_gives_means_spreads_and_paired_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // dense 1.50 / 1.52 / 1.51; hadamard 0.01 better on every seed
    for (seed, base) in [(1, 1.50), (2, 1.52), (3, 1.51)] {
        fake_run(root, "dense", seed, 1500, 1.5, Some(base));
        fake_run(
            root,
            "hadamard",
            seed,
            1500,
            1.5,
            Some(base - 0.01 + 0.001 * seed as f64),
        );
    }
    // the qid's seed 2 has not finished: it counts nowhere but the run list
    fake_run(root, "hadamard-qid", 1, 1500, 1.5, Some(1.49));
    fake_run(root, "hadamard-qid", 2, 700, 1.6, None);
    // a finished run without held-out figures: curves and val loss, no held-out
    fake_run(root, "hadamard-qmlp", 1, 1500, 1.5, None);
    // not a sweep directory
    std::fs::create_dir_all(root.join("train/runs/notes")).unwrap();

    let runs = discover(root).unwrap();
    let found: Vec<(String, u64)> = runs
        .iter()
        .map(|r| (r.variant.name.to_string(), r.seed))
        .collect();
    assert_eq!(found.len(), 9, "{found:?}");
    assert_eq!(runs[0].dir, PathBuf::from("models/shakespeare-dense"));
    assert_eq!(runs[1].dir, PathBuf::from("train/runs/dense-seed2"));

    let report = Report::build(&runs, options()).unwrap();
    let dense = &report.variants[0];
    let h = dense.heldout.unwrap();
    assert_eq!((h.n, dense.seeds.clone()), (3, vec![1, 2, 3]));
    assert!(
        (h.mean - 1.51).abs() < 1e-12 && (h.std - 0.01).abs() < 1e-12,
        "{h:?}"
    );
    assert_eq!(dense.flops_per_step, dense.flops.per_token * 2048.0);
    let qid = &report.variants[2];
    assert_eq!((qid.seeds.clone(), qid.heldout.unwrap().n), (vec![1], 1));
    let qmlp = &report.variants[3];
    assert!(qmlp.heldout.is_none() && qmlp.final_val_loss.is_some());

    // hadamard - dense per seed: -0.009, -0.008, -0.007
    let c = &report.comparisons[0];
    assert_eq!(
        (c.a.as_str(), c.b.as_str(), c.seeds.clone()),
        ("hadamard", "dense", vec![1, 2, 3])
    );
    let d = c.difference.unwrap();
    assert!(
        (d.mean + 0.008).abs() < 1e-12 && (d.std - 0.001).abs() < 1e-9,
        "{d:?}"
    );
    // t = -0.008 / (0.001 / sqrt 3) = -13.9 > 4.303
    assert!((c.t.unwrap() + 13.856).abs() < 1e-2 && c.significant == Some(true));
    // qid - hadamard: seed 1 only, no t
    let c = &report.comparisons[1];
    assert_eq!(c.seeds, vec![1]);
    assert!(c.t.is_none() && c.significant.is_none());

    let md = report.to_markdown();
    assert!(
        md.contains("| dense | dense/dense | 3,295,488 | 3,164,416 | 1,048,576 |"),
        "{md}"
    );
    assert!(md.contains("| 1.5100 ± 0.0100 | 1.5000 – 1.5200 |"), "{md}");
    assert!(md.contains("| 700 (incomplete) |"), "{md}");
    // one thin path per complete run (8), one bold mean per variant with one (4)
    let svg = report.flops_chart().to_svg();
    assert_eq!(svg.matches("<path ").count(), 12, "{svg}");
    assert_eq!(
        svg.matches("stroke-width=\"2.5\" stroke-opacity").count(),
        4
    );
    assert!(
        svg.contains(">dense (3 seeds)</text>") && svg.contains(">hadamard-qid (1 seed)</text>")
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 9);
}

/// Asserts that discovering the runs under `root` fails with an error saying `what`.
fn assert_discover_fails(root: &Path, what: &str) {
    let err = discover(root).unwrap_err().to_string();
    assert!(err.contains(what), "{err}");
}

#[test]
fn a_directory_holding_another_variant_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    fake_run(tmp.path(), "dense", 2, 50, 1.5, None);
    // overwrite seed 2 of `dense` with a Hadamard config
    let dir = tmp.path().join("train/runs/dense-seed2");
    let config = shipped(AttnOutput::Hadamard, Query::Dense);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    assert_discover_fails(
        tmp.path(),
        "train/runs/dense-seed2: config.json is variant hadamard/dense",
    );
}

#[test]
fn held_out_figures_on_different_texts_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    fake_run(tmp.path(), "dense", 1, 1500, 1.5, Some(1.5));
    fake_run(tmp.path(), "hadamard", 1, 1500, 1.5, Some(1.5));
    let path = tmp
        .path()
        .join("models/shakespeare-hadamard/heldout_full.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("65501", "2047")).unwrap();
    let runs = discover(tmp.path()).unwrap();
    let err = Report::build(&runs, options()).unwrap_err().to_string();
    assert!(err.contains("were scored on different texts"), "{err}");
    // walsh and the trainer on different lengths: caught when the run is read
    std::fs::write(&path, text.replacen("65501", "2047", 1)).unwrap();
    assert_discover_fails(tmp.path(), "walsh scored 2047 bytes, the trainer 65501");
}

/// `walsh-train report --check`, as a test: train/results/ must be regenerated whenever a
/// run's files change.
#[test]
fn the_committed_results_are_what_the_committed_runs_give() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let report = Report::build(&discover(&root).unwrap(), options()).unwrap();
    for (name, text) in report.files() {
        let path = root.join("train/results").join(name);
        let committed =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == text,
            "{} is out of date: run `cargo run --release -p walsh-train -- report`",
            path.display()
        );
    }
}
