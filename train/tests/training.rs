//! Training behaviour: the loss falls, a resumed run is bit-identical to an uninterrupted
//! one, and the trainer's score of exported weights agrees with walsh's eval.

mod common;

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use common::{synthetic_text, tiny};
use walsh::model::eval::evaluate;
use walsh::model::generate::CpuBatch;
use walsh::model::init::random_tensors;
use walsh::model::weights::Model;
use walsh::model::{AttnOutput, Query};
use walsh::ops::WeightFormat;
use walsh::ops::attention::KvFormat;
use walsh_train::checkpoint::{self, CHECKPOINT_DIR};
use walsh_train::data::Corpus;
use walsh_train::error::TrainError;
use walsh_train::eval::text_loss;
use walsh_train::model::TrainModel;
use walsh_train::optim::{AdamWSettings, Schedule};
use walsh_train::run::{LOG_FILE, RunOptions, Settings, Stop, Summary, Trainer, run};

fn corpus() -> Corpus {
    let text = synthetic_text(24_000);
    let (train, valid) = text.split_at(20_000);
    Corpus {
        train: train.to_vec(),
        valid: valid.to_vec(),
    }
}

fn settings(attn_output: AttnOutput, query: Query, steps: u64) -> Settings {
    Settings {
        model: tiny(32, 1, 16, attn_output, query),
        batch: 8,
        schedule: Schedule {
            peak: 1e-2,
            warmup: 2,
            steps,
            final_ratio: 0.1,
        },
        adamw: AdamWSettings::default(),
        seed: 42,
        eval_every: 3,
        val_windows: 8,
    }
}

fn options(out: &Path, resume: bool) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        budget: None,
        checkpoint_every: Duration::from_secs(3600),
    }
}

/// A run that nothing stops early.
fn run_through(s: &Settings, corpus: &Corpus, opts: &RunOptions) -> Result<Summary, TrainError> {
    run(s, corpus, opts, |_| ControlFlow::Continue(()))
}

#[test]
fn a_few_steps_reduce_the_loss() {
    let corpus = corpus();
    for (attn_output, query) in [
        (AttnOutput::Hadamard, Query::Dense),
        (AttnOutput::Dense, Query::Dense),
        (AttnOutput::Hadamard, Query::Identity),
    ] {
        let mut trainer = Trainer::new(settings(attn_output, query, 40), &corpus).unwrap();
        let before = trainer.val_loss().unwrap();
        let mut first = None;
        for _ in 0..40 {
            let s = trainer.train_step().unwrap();
            first.get_or_insert(s.loss);
            assert!(s.grad_norm.is_finite() && s.lr > 0.0);
        }
        let after = trainer.val_loss().unwrap();
        // About ln 256 = 5.5 at the start; the word-level text is learned fast.
        assert!(
            before > 4.5,
            "{attn_output:?}/{query:?}: starts at {before}"
        );
        assert!(
            after < 0.6 * before,
            "{attn_output:?}/{query:?}: {before} -> {after}"
        );
        assert!(first.unwrap() > 4.5);
    }
}

/// Loss column of train_log.csv by step, leaving out the wall-clock column.
fn log_losses(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap();
    text.lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

#[test]
fn resuming_gives_exactly_the_uninterrupted_run() {
    let corpus = corpus();
    let s = settings(AttnOutput::Hadamard, Query::ResidualMlp, 9);

    let whole = tempfile::tempdir().unwrap();
    let summary = run_through(&s, &corpus, &options(whole.path(), false)).unwrap();
    assert_eq!((summary.step, summary.stop), (9, Stop::Finished));

    // Stop after step 4, as the time budget would; then resume in a fresh trainer.
    let split = tempfile::tempdir().unwrap();
    let summary = run(&s, &corpus, &options(split.path(), false), |p| {
        if p.step == 4 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!((summary.step, summary.stop), (4, Stop::Observer));
    // A stray row past the checkpoint, as a run killed after it would leave: dropped.
    let log = split.path().join(LOG_FILE);
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("5,9.9,,1e-3,1.0\n");
    std::fs::write(&log, text).unwrap();
    let summary = run_through(&s, &corpus, &options(split.path(), true)).unwrap();
    assert_eq!((summary.step, summary.stop), (9, Stop::Finished));

    let names: Vec<String> = random_tensors(&s.model, 0)
        .into_iter()
        .map(|t| t.0)
        .collect();
    let shapes: Vec<Vec<usize>> = random_tensors(&s.model, 0)
        .into_iter()
        .map(|t| t.1)
        .collect();
    let a = checkpoint::load(&whole.path().join(CHECKPOINT_DIR), &names, &shapes).unwrap();
    let b = checkpoint::load(&split.path().join(CHECKPOINT_DIR), &names, &shapes).unwrap();
    let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
        v.iter()
            .map(|t| t.iter().map(|x| x.to_bits()).collect())
            .collect()
    };
    assert_eq!(bits(&a.params), bits(&b.params));
    assert_eq!(bits(&a.m), bits(&b.m));
    assert_eq!(bits(&a.v), bits(&b.v));
    assert_eq!(
        (a.state.step, a.state.adam_t, a.state.rng),
        (b.state.step, b.state.adam_t, b.state.rng)
    );
    assert_eq!(log_losses(whole.path()), log_losses(split.path()));
    assert_eq!(log_losses(whole.path()).len(), 10); // header + 9 steps
    // The exports are the same bytes too.
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(read(whole.path()), read(split.path()));
}

#[test]
fn resume_refuses_other_settings_and_a_fresh_run_refuses_a_checkpoint() {
    let corpus = corpus();
    let s = settings(AttnOutput::Dense, Query::Identity, 2);
    let dir = tempfile::tempdir().unwrap();
    run_through(&s, &corpus, &options(dir.path(), false)).unwrap();

    let e = run_through(&s, &corpus, &options(dir.path(), false)).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");

    let mut other = s.clone();
    other.schedule.peak = 5e-3;
    let e = run_through(&other, &corpus, &options(dir.path(), true)).unwrap_err();
    assert!(e.to_string().contains("schedule"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    assert!(run_through(&s, &corpus, &options(empty.path(), true)).is_err());
}

#[test]
fn a_spent_budget_checkpoints_and_exports_what_it_has() {
    let corpus = corpus();
    let s = settings(AttnOutput::Hadamard, Query::Identity, 3);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), false);
    opts.budget = Some(Duration::ZERO);
    let summary = run_through(&s, &corpus, &opts).unwrap();
    assert_eq!((summary.step, summary.stop), (0, Stop::Budget));
    // The initial weights are exported and checkpointed, and the run goes on from there.
    assert_eq!(Model::load(dir.path()).unwrap().config, s.model);
    opts.budget = None;
    opts.resume = true;
    let summary = run_through(&s, &corpus, &opts).unwrap();
    assert_eq!((summary.step, summary.stop), (3, Stop::Finished));
    assert!(summary.val_loss.is_some());
}

#[test]
fn trainer_eval_agrees_with_walsh_eval() {
    let text = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/shakespeare-heldout.txt"),
    )
    .unwrap();
    let tokens: Vec<u32> = text[..1500].iter().map(|&b| b as u32).collect();
    for (attn_output, query) in [
        (AttnOutput::Hadamard, Query::Dense),
        (AttnOutput::Dense, Query::ResidualMlp),
    ] {
        let config = tiny(32, 2, 24, attn_output, query);
        let dir = tempfile::tempdir().unwrap();
        // walsh's random weights (logits spread about 4) in F16, as checkpoints export.
        walsh::model::init::write_model(
            dir.path(),
            &config,
            &random_tensors(&config, 9),
            WeightFormat::F16,
        )
        .unwrap();

        let ours = text_loss(&TrainModel::load(dir.path()).unwrap(), &tokens, 16).unwrap();
        let model = Model::load(dir.path()).unwrap();
        let mut dec =
            CpuBatch::new(&model, 1, config.max_position_embeddings, KvFormat::F32).unwrap();
        let theirs = evaluate(&mut dec, &tokens, |_, _| {}).unwrap();
        assert_eq!(ours.bytes_scored, theirs.bytes_scored);
        assert_eq!(ours.bytes_scored, tokens.len() - 1);
        let diff = (ours.nats_per_byte - theirs.nats_per_byte).abs();
        assert!(
            diff < 1e-4,
            "{}: trainer {} vs walsh {} nats/byte",
            config.variant(),
            ours.nats_per_byte,
            theirs.nats_per_byte
        );
    }
}

#[test]
fn cli_trains_resumes_and_scores() {
    let data = tempfile::tempdir().unwrap();
    let c = corpus();
    std::fs::write(data.path().join("train.txt"), &c.train).unwrap();
    std::fs::write(data.path().join("valid.txt"), &c.valid).unwrap();
    let out = tempfile::tempdir().unwrap();
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "--out",
            out.path().to_str().unwrap(),
            "--data",
            data.path().to_str().unwrap(),
            "--hidden-size",
            "32",
            "--layers",
            "1",
            "--heads",
            "4",
            "--context",
            "16",
            "--batch",
            "4",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--val-windows",
            "4",
            "--query",
            "residual-mlp",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_walsh-train"))
            .args(&args)
            .output()
            .unwrap()
    };
    let first = cli(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("hadamard/residual_mlp") && stdout.contains("step 4/4"),
        "{stdout}"
    );
    // Without --resume an existing run is not overwritten.
    assert!(!cli(&[]).status.success());
    // Resuming a finished run does nothing and succeeds.
    assert!(cli(&["--resume"]).status.success());

    let model = Model::load(out.path()).unwrap();
    assert_eq!(model.config.variant(), "hadamard/residual_mlp");
    assert_eq!(model.weights.embed_tokens.format(), WeightFormat::F16);

    let eval = std::process::Command::new(env!("CARGO_BIN_EXE_walsh-train"))
        .args([
            "eval",
            "--model",
            out.path().to_str().unwrap(),
            "--json",
            "--text",
        ])
        .arg(data.path().join("valid.txt"))
        .output()
        .unwrap();
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(report["bytes_scored"], c.valid.len() - 1);
    // Four steps at the default rate barely move the model from its start near ln 256.
    let nats = report["nats_per_byte"].as_f64().unwrap();
    assert!((3.0..7.0).contains(&nats), "{nats}");
}
