//! The trainer's model is walsh's model: same logits as the engine's CPU reference decoder
//! on the exported weights, for every variant; and its gradients are complete and right.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{VARIANTS, tiny};
use walsh::model::cpu::CpuDecoder;
use walsh::model::init::random_tensors;
use walsh::model::weights::Model;
use walsh::model::{AttnOutput, Config, Query};
use walsh::ops::WeightFormat;
use walsh::ops::attention::KvFormat;
use walsh_train::model::{TrainModel, init_tensors};

const TOKENS: [u32; 11] = [72, 101, 108, 108, 111, 44, 32, 119, 0, 255, 10];

/// Largest |difference| between the trainer's logits for TOKENS and the CPU decoder's on
/// the F32 export of the same weights.
fn max_logit_difference(config: &Config, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) -> f32 {
    let model = TrainModel::from_tensors(config, tensors, DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.export(dir.path(), WeightFormat::F32).unwrap();
    let exported = Model::load(dir.path()).unwrap();

    let input = Tensor::new(&TOKENS[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ours = model
        .forward(&input)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mut dec =
        CpuDecoder::new(&exported, config.max_position_embeddings, KvFormat::F32).unwrap();
    let mut worst = 0.0f32;
    for (pos, &t) in TOKENS.iter().enumerate() {
        let theirs = dec.forward(t, pos).unwrap();
        for (a, b) in ours[pos].iter().zip(theirs) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

/// Tolerance on logits. walsh's random weights give logits with a spread of about 4 and
/// the two sides sum in different orders (candle's gemm vs eight-lane dot products) in
/// f32: differences of a few 1e-6 are expected; 1e-4 leaves room and still catches any
/// real mismatch (a wrong rope pairing or a missing gain moves logits by far more than 0.1).
const LOGIT_TOLERANCE: f32 = 1e-4;

#[test]
fn every_variant_matches_the_cpu_decoder() {
    for (attn_output, query) in VARIANTS {
        let config = tiny(32, 2, 16, attn_output, query);
        // walsh's random weights: gains not 1, biases not 0, so every tensor matters.
        let diff = max_logit_difference(&config, random_tensors(&config, 7));
        assert!(diff < LOGIT_TOLERANCE, "{}: {diff}", config.variant());
        // and the trainer's own initialization exports just as well
        let diff = max_logit_difference(&config, init_tensors(&config, 7));
        assert!(
            diff < LOGIT_TOLERANCE,
            "{} (trainer init): {diff}",
            config.variant()
        );
    }
}

#[test]
fn hadamard_of_a_non_power_of_two_width_and_tied_embeddings_match() {
    // d = 48 = 12 * 4: the transform includes walsh's 12 x 12 Paley matrix.
    let config = tiny(48, 2, 16, AttnOutput::Hadamard, Query::ResidualMlp);
    let diff = max_logit_difference(&config, random_tensors(&config, 3));
    assert!(diff < LOGIT_TOLERANCE, "d 48: {diff}");
    // d = 144 = 36 x 4: Paley II over GF(17), a core order with two sign words per row.
    let config = tiny(144, 1, 16, AttnOutput::Hadamard, Query::Dense);
    let diff = max_logit_difference(&config, random_tensors(&config, 4));
    assert!(diff < LOGIT_TOLERANCE, "d 144: {diff}");

    let mut tied = tiny(32, 1, 16, AttnOutput::Hadamard, Query::Dense);
    tied.tie_word_embeddings = true;
    let diff = max_logit_difference(&tied, random_tensors(&tied, 3));
    assert!(diff < LOGIT_TOLERANCE, "tied: {diff}");
}

#[test]
fn grouped_query_attention_matches_the_cpu_decoder() {
    // 8 heads of 4 (d 32) on 2 KV heads (4:1) and on 1 (8:1), dense and Hadamard W_O.
    for kv_heads in [2, 1] {
        for (attn_output, query) in [
            (AttnOutput::Dense, Query::Dense),
            (AttnOutput::Hadamard, Query::Dense),
            (AttnOutput::Hadamard, Query::Identity),
        ] {
            let config = Config {
                num_attention_heads: 8,
                num_key_value_heads: Some(kv_heads),
                ..tiny(32, 2, 16, attn_output, query)
            };
            let diff = max_logit_difference(&config, random_tensors(&config, 9));
            assert!(
                diff < LOGIT_TOLERANCE,
                "{} 8:{kv_heads}: {diff}",
                config.variant()
            );
        }
    }
}

#[test]
fn export_round_trips_exactly_in_f32() {
    let config = tiny(32, 1, 8, AttnOutput::Hadamard, Query::Identity);
    let model = TrainModel::from_tensors(&config, init_tensors(&config, 1), DType::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.export(dir.path(), WeightFormat::F32).unwrap();
    let loaded = TrainModel::load(dir.path()).unwrap();
    assert_eq!(loaded.config(), &config);
    let a = model.export_tensors().unwrap();
    assert_eq!(a, loaded.export_tensors().unwrap());
    assert_eq!(a, init_tensors(&config, 1));
}

#[test]
fn rejects_tensors_that_do_not_fit_the_variant() {
    let config = tiny(32, 1, 8, AttnOutput::Hadamard, Query::Dense);
    let mut t = init_tensors(&config, 1);
    t.retain(|x| !x.0.ends_with("o_bias"));
    let e = TrainModel::from_tensors(&config, t, DType::F32)
        .err()
        .unwrap();
    assert!(e.to_string().contains("o_bias"), "{e}");

    let mut t = init_tensors(&config, 1);
    t.push((
        "model.layers.0.self_attn.o_proj.weight".into(),
        vec![32, 32],
        vec![0.0; 1024],
    ));
    let e = TrainModel::from_tensors(&config, t, DType::F32)
        .err()
        .unwrap();
    assert!(e.to_string().contains("o_proj"), "{e}");

    let mut t = init_tensors(&config, 1);
    t[1].1 = vec![31];
    assert!(TrainModel::from_tensors(&config, t, DType::F32).is_err());

    let model = TrainModel::from_tensors(&config, init_tensors(&config, 1), DType::F32).unwrap();
    let too_long = Tensor::zeros((1, 9), DType::U32, &Device::Cpu).unwrap();
    assert!(model.forward(&too_long).is_err());
}

/// Every parameter gets a gradient, and it matches central finite differences, in f64.
/// This is the check that candle's silently missing backward passes (docs/measured.md,
/// Training) are not on the trainer's path.
#[test]
fn gradients_are_complete_and_match_finite_differences() {
    let tokens: [[u32; 6]; 2] = [[3, 200, 65, 65, 10, 7], [65, 66, 67, 3, 255, 0]];
    let targets: [[u32; 6]; 2] = [[200, 65, 65, 10, 7, 1], [66, 67, 3, 255, 0, 65]];
    let dev = Device::Cpu;
    let inputs = Tensor::new(&tokens, &dev).unwrap();
    let targets = Tensor::new(&targets, &dev).unwrap();
    // Every variant with 2 heads, and grouped: 4 heads of 2 on 2 KV heads.
    let grouped = (AttnOutput::Hadamard, Query::Dense, Some(2));
    let cases = VARIANTS
        .map(|(a, q)| (a, q, None))
        .into_iter()
        .chain([grouped]);
    for (attn_output, query, kv_heads) in cases {
        let mut config = tiny(8, 2, 6, attn_output, query);
        config.num_attention_heads = if kv_heads.is_some() { 4 } else { 2 };
        config.num_key_value_heads = kv_heads;
        let model =
            TrainModel::from_tensors(&config, random_tensors(&config, 5), DType::F64).unwrap();
        let loss = |m: &TrainModel| {
            m.loss(&inputs, &targets)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = model.loss(&inputs, &targets).unwrap().backward().unwrap();
        for p in model.params() {
            let g = grads
                .get(p.var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {}", config.variant(), p.name));
            let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let shape = p.var.dims().to_vec();
            let values = p.var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let n = values.len();
            // Coordinates spread over the tensor; for the embedding, ones in the row of a
            // token that occurs (the other rows' gradient is zero).
            let picks: Vec<usize> = if p.name == "model.embed_tokens.weight" {
                (0..4).map(|j| 65 * 8 + 2 * j).collect()
            } else {
                (0..4)
                    .map(|j| j * n / 4 + (j * 3) % (n / 4).max(1))
                    .collect()
            };
            for i in picks {
                let h = 1e-5;
                let at = |delta: f64| {
                    let mut v = values.clone();
                    v[i] += delta;
                    p.var
                        .set(&Tensor::from_vec(v, shape.as_slice(), &dev).unwrap())
                        .unwrap();
                    loss(&model)
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                let analytic = g[i];
                assert!(
                    (numeric - analytic).abs() <= 1e-6 + 1e-4 * analytic.abs(),
                    "{} {}[{i}]: backprop {analytic}, finite difference {numeric}",
                    config.variant(),
                    p.name
                );
            }
        }
    }
}
