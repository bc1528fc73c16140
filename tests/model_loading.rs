//! Loading a model directory: a valid random model round-trips in f32 and f16, and every
//! kind of broken directory gives its typed error naming the file (and the tensor).

mod common;

use std::path::{Path, PathBuf};

use safetensors::Dtype;
use walsh::model::cpu::CpuDecoder;
use walsh::model::init::{
    FileTensor, random_tensors, safetensors_bytes, write_model, write_random_model,
};
use walsh::model::weights::{Model, TensorData, expected_tensors};
use walsh::model::{AttnOutput, Config, ModelError, Query};
use walsh::ops::WeightFormat;
use walsh::ops::attention::KvFormat;

type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

fn config(attn_output: AttnOutput, query: Query, tied: bool) -> Config {
    Config {
        tie_word_embeddings: tied,
        attn_output,
        query,
        ..common::small_config(64, 2, 4, 16)
    }
}

fn dense() -> Config {
    config(AttnOutput::Dense, Query::Dense, false)
}

fn hadamard() -> Config {
    config(AttnOutput::Hadamard, Query::Dense, false)
}

fn weights_path(dir: &Path) -> PathBuf {
    dir.join("model.safetensors")
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

/// A directory holding a valid random model of `config`.
fn model_dir(config: &Config, format: WeightFormat) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_random_model(dir.path(), config, format, 17).unwrap();
    dir
}

/// A directory holding `config` and `tensors` (f32) as given.
fn dir_with(config: &Config, tensors: &Named) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), config, tensors, WeightFormat::F32).unwrap();
    dir
}

fn load_err(dir: &Path) -> ModelError {
    Model::load(dir).expect_err("loading must fail")
}

fn assert_mentions(e: &ModelError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "`{msg}` does not mention `{p}`");
    }
}

/// Asserts a `Safetensors` error naming the weights file.
fn assert_corrupt(dir: &Path, what: &str) {
    let e = load_err(dir);
    let file = weights_path(dir);
    assert!(
        matches!(&e, ModelError::Safetensors { path, .. } if *path == file),
        "{what}: {e:?}"
    );
    assert_mentions(&e, &[&file.display().to_string()]);
}

#[test]
fn loads_an_f32_model_exactly() {
    let c = dense();
    let dir = model_dir(&c, WeightFormat::F32);
    let m = Model::load(dir.path()).unwrap();
    assert_eq!(m.config, c);
    assert_eq!(m.dir, dir.path());
    let want = random_tensors(&c, 17);
    let got = m.weights.tensors();
    assert_eq!(got.len(), want.len());
    for (t, (name, shape, values)) in got.iter().zip(&want) {
        assert_eq!(&t.name, name);
        assert_eq!(&t.shape, shape);
        assert_eq!(t.format(), WeightFormat::F32);
        assert_eq!(t.data, TensorData::F32(values.clone()), "{name}");
    }
    assert_eq!(m.lm_head().name, "lm_head.weight");

    // config.json is written for people to read.
    let text = std::fs::read_to_string(config_path(dir.path())).unwrap();
    assert!(text.contains("\n  \"hidden_size\": 64,"), "{text}");

    let mut decoder = CpuDecoder::new(&m, 16, KvFormat::F32).unwrap();
    let logits = decoder.forward(b'a' as u32, 0).unwrap();
    assert_eq!(logits.len(), 256);
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn loads_an_f16_model_rounded_to_half() {
    let c = config(AttnOutput::Hadamard, Query::ResidualMlp, true);
    let dir = model_dir(&c, WeightFormat::F16);
    let m = Model::load(dir.path()).unwrap();
    let want = random_tensors(&c, 17);
    for (t, (name, _, values)) in m.weights.tensors().iter().zip(&want) {
        assert_eq!(&t.name, name);
        assert_eq!(t.format(), WeightFormat::F16);
        let bits: Vec<u16> = values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        assert_eq!(t.data, TensorData::F16(bits), "{name}");
        let rounded: Vec<f32> = values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(t.to_f32(), rounded, "{name}");
        // Rounding to half did change the values: the test above is not about f32.
        assert_ne!(t.to_f32(), *values, "{name}");
    }
    assert!(m.weights.lm_head.is_none());
    assert_eq!(m.lm_head().name, "model.embed_tokens.weight");
}

#[test]
fn every_variant_loads_with_exactly_its_tensors() {
    for attn_output in [AttnOutput::Dense, AttnOutput::Hadamard] {
        for query in [Query::Dense, Query::Identity, Query::ResidualMlp] {
            for tied in [false, true] {
                let c = config(attn_output, query, tied);
                let m = Model::load(model_dir(&c, WeightFormat::F32).path()).unwrap();
                let names: Vec<String> =
                    m.weights.tensors().iter().map(|t| t.name.clone()).collect();
                let want: Vec<String> = expected_tensors(&c).into_iter().map(|t| t.0).collect();
                assert_eq!(names, want, "{}", c.variant());
                let layer = &m.weights.layers[1];
                assert_eq!(layer.q_proj.is_some(), query == Query::Dense);
                assert_eq!(layer.q_down.is_some(), query == Query::ResidualMlp);
                assert_eq!(layer.q_up.is_some(), query == Query::ResidualMlp);
                assert_eq!(layer.o_proj.is_some(), attn_output == AttnOutput::Dense);
                assert_eq!(layer.o_scale.is_some(), attn_output == AttnOutput::Hadamard);
                assert_eq!(layer.o_bias.is_some(), attn_output == AttnOutput::Hadamard);
            }
        }
    }
}

#[test]
fn parameter_counts_match_hand_computation() {
    // d 64, 2 layers, intermediate 128, vocab 256. Per layer: 2 norms (128), MLP 3 * 64 * 128
    // (24576), attention q, k, v, o 4 * 64 * 64 (16384). Embedding and lm_head 256 * 64
    // (16384) each, final norm 64.
    let load = |c: &Config| Model::load(model_dir(c, WeightFormat::F16).path()).unwrap();
    let m = load(&dense());
    assert_eq!(m.attention_parameter_count(), 2 * 16384);
    assert_eq!(
        m.parameter_count(),
        16384 + 2 * (128 + 24576 + 16384) + 64 + 16384
    );
    assert_eq!(m.parameter_count(), 115_008);

    // Hadamard: o_proj (4096) becomes o_scale + o_bias (128), d * d - 2d fewer per layer.
    let m = load(&hadamard());
    assert_eq!(m.attention_parameter_count(), 2 * (3 * 4096 + 128));
    assert_eq!(m.parameter_count(), 115_008 - 2 * (4096 - 128));

    // Identity query drops q_proj too; a tied head drops lm_head.
    let m = load(&config(AttnOutput::Hadamard, Query::Identity, true));
    assert_eq!(m.attention_parameter_count(), 2 * (2 * 4096 + 128));
    assert_eq!(m.parameter_count(), 115_008 - 2 * (2 * 4096 - 128) - 16384);

    // Residual query MLP with hidden 32: q_down + q_up = 2 * 32 * 64, as many as q_proj.
    let m = load(&config(AttnOutput::Dense, Query::ResidualMlp, false));
    assert_eq!(m.attention_parameter_count(), 2 * 16384);
}

/// Removing the file at `file(dir)` from a valid model: loading fails with an I/O error
/// naming it.
fn assert_missing_file_is_an_io_error_naming_it(file: fn(&Path) -> PathBuf) {
    let dir = model_dir(&dense(), WeightFormat::F32);
    std::fs::remove_file(file(dir.path())).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(&e, ModelError::Io { path, .. } if *path == file(dir.path())),
        "{e:?}"
    );
    assert_mentions(&e, &[&file(dir.path()).display().to_string()]);
}

#[test]
fn missing_config_json_is_an_io_error_naming_it() {
    assert_missing_file_is_an_io_error_naming_it(config_path);
}

#[test]
fn invalid_json_is_a_config_error() {
    let dir = model_dir(&dense(), WeightFormat::F32);
    std::fs::write(config_path(dir.path()), "{\"hidden_size\": 64,").unwrap();
    let e = load_err(dir.path());
    assert!(matches!(e, ModelError::Config { .. }), "{e:?}");
    assert_mentions(&e, &[&config_path(dir.path()).display().to_string()]);
}

#[test]
fn invalid_config_is_a_config_error_with_the_reason() {
    let mut heads = dense();
    heads.num_attention_heads = 5;
    let mut width = hadamard();
    width.hidden_size = 92; // 92 = 23 * 4: no Hadamard matrix walsh builds has that order
    width.num_attention_heads = 2;
    for (bad, reason) in [(heads, "does not divide"), (width, "unsupported Walsh")] {
        let dir = model_dir(&dense(), WeightFormat::F32);
        std::fs::write(
            config_path(dir.path()),
            serde_json::to_string(&bad).unwrap(),
        )
        .unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, ModelError::Config { .. }), "{e:?}");
        assert_mentions(
            &e,
            &[&config_path(dir.path()).display().to_string(), reason],
        );
        // Building a model in memory checks the config the same way.
        let e = Model::from_tensors(dir.path(), bad, Vec::new()).unwrap_err();
        assert_mentions(&e, &[reason]);
    }
}

#[test]
fn missing_weights_file_is_an_io_error_naming_it() {
    assert_missing_file_is_an_io_error_naming_it(weights_path);
}

#[test]
fn truncated_files_are_rejected_at_every_cut() {
    let dir = model_dir(&dense(), WeightFormat::F16);
    let bytes = std::fs::read(weights_path(dir.path())).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cuts = [
        0,
        1,
        7,               // inside the 8-byte header length
        8,               // length only
        8 + header / 2,  // inside the JSON header
        8 + header - 1,  // one byte short of the header
        8 + header,      // header, no data
        8 + header + 1,  // one data byte
        bytes.len() / 2, // inside the data
        bytes.len() - 1, // one byte short
    ];
    for cut in cuts {
        std::fs::write(weights_path(dir.path()), &bytes[..cut]).unwrap();
        assert_corrupt(dir.path(), &format!("cut at {cut} of {}", bytes.len()));
    }
    // One byte too many is as wrong as one too few.
    let mut long = bytes.clone();
    long.push(0);
    std::fs::write(weights_path(dir.path()), &long).unwrap();
    assert_corrupt(dir.path(), "one extra byte");
}

#[test]
fn garbage_is_rejected() {
    let dir = model_dir(&dense(), WeightFormat::F32);
    let mut state = 0x1234_5678u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    let mut small_header = 40u64.to_le_bytes().to_vec();
    small_header.extend(b"this is not json at all, just some text.");
    for (what, bytes) in [
        ("noise", noise),
        ("text", b"definitely not a safetensors file".to_vec()),
        ("non-JSON header", small_header),
    ] {
        std::fs::write(weights_path(dir.path()), &bytes).unwrap();
        assert_corrupt(dir.path(), what);
    }
}

#[test]
fn header_length_beyond_the_file_is_rejected_without_allocating_it() {
    let dir = model_dir(&dense(), WeightFormat::F32);
    let bytes = std::fs::read(weights_path(dir.path())).unwrap();
    for claim in [bytes.len() as u64 * 10, 1 << 40, u64::MAX] {
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&claim.to_le_bytes());
        std::fs::write(weights_path(dir.path()), &b).unwrap();
        assert_corrupt(dir.path(), &format!("header length {claim}"));
    }
}

#[test]
fn a_config_with_more_layers_than_the_file_names_the_first_missing_tensor() {
    // Found by the loader fuzz test: a config claiming 768 layers over a 2-layer file made
    // the loader list 768 layers' tensor names (1.2 MB at once for a 34 KB input) before
    // finding one missing; the count is now checked first.
    let mut c = hadamard();
    let tensors = random_tensors(&c, 1);
    c.num_hidden_layers = 768;
    let dir = dir_with(&c, &tensors);
    let e = load_err(dir.path());
    let name = "model.layers.2.input_layernorm.weight";
    assert!(
        matches!(&e, ModelError::MissingTensor { name: n, .. } if n == name),
        "{e:?}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let c = dense();
    let name = "model.layers.1.mlp.up_proj.weight";
    let mut tensors = random_tensors(&c, 1);
    tensors.retain(|t| t.0 != name);
    let dir = dir_with(&c, &tensors);
    let e = load_err(dir.path());
    assert!(
        matches!(&e, ModelError::MissingTensor { name: n, .. } if n == name),
        "{e:?}"
    );
    assert_mentions(&e, &[&weights_path(dir.path()).display().to_string(), name]);

    // A tied config whose file lacks the embedding fails the same way.
    let c = config(AttnOutput::Dense, Query::Dense, true);
    let mut tensors = random_tensors(&c, 1);
    tensors.retain(|t| t.0 != "model.embed_tokens.weight");
    let e = load_err(dir_with(&c, &tensors).path());
    assert_mentions(&e, &["model.embed_tokens.weight", "is missing"]);
}

#[test]
fn unexpected_tensor_is_named_with_the_variant() {
    // A Hadamard model with a leftover o_proj: the file does not match its config.
    let c = hadamard();
    let name = "model.layers.0.self_attn.o_proj.weight";
    let mut tensors = random_tensors(&c, 1);
    tensors.push((name.to_string(), vec![64, 64], vec![0.5; 64 * 64]));
    let dir = dir_with(&c, &tensors);
    let e = load_err(dir.path());
    assert!(
        matches!(&e, ModelError::UnexpectedTensor { name: n, .. } if n == name),
        "{e:?}"
    );
    assert_mentions(
        &e,
        &[
            &weights_path(dir.path()).display().to_string(),
            name,
            "hadamard/dense",
        ],
    );

    // A tied config with an lm_head in the file.
    let c = config(AttnOutput::Dense, Query::Dense, true);
    let mut tensors = random_tensors(&c, 1);
    tensors.push(("lm_head.weight".into(), vec![256, 64], vec![0.0; 256 * 64]));
    let e = load_err(dir_with(&c, &tensors).path());
    assert!(matches!(e, ModelError::UnexpectedTensor { .. }), "{e:?}");
    assert_mentions(&e, &["lm_head.weight"]);
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let c = dense();
    let name = "model.layers.0.mlp.gate_proj.weight";
    let mut tensors = random_tensors(&c, 1);
    // Transposed: the same number of values, so only the shape check can catch it.
    tensors.iter_mut().find(|t| t.0 == name).unwrap().1 = vec![64, 128];
    let dir = dir_with(&c, &tensors);
    let e = load_err(dir.path());
    match &e {
        ModelError::Shape {
            name: n,
            expected,
            found,
            ..
        } => {
            assert_eq!(n, name);
            assert_eq!(expected, &vec![128, 64]);
            assert_eq!(found, &vec![64, 128]);
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert_mentions(
        &e,
        &[
            &weights_path(dir.path()).display().to_string(),
            name,
            "[64, 128]",
            "[128, 64]",
        ],
    );
}

#[test]
fn wrong_dtype_is_named() {
    let c = dense();
    let tensors = random_tensors(&c, 1);
    let name = "model.norm.weight";
    for (dtype, width) in [(Dtype::BF16, 2), (Dtype::I32, 4), (Dtype::F64, 8)] {
        // Every tensor F32 but one, of `dtype`, written with safetensors directly.
        let files: Vec<FileTensor> = tensors
            .iter()
            .map(|(n, shape, v)| {
                if n == name {
                    FileTensor {
                        name: n.clone(),
                        dtype,
                        shape: shape.clone(),
                        bytes: vec![0u8; v.len() * width],
                    }
                } else {
                    FileTensor::f32(n, shape, v)
                }
            })
            .collect();
        let file = safetensors_bytes(&files).unwrap();
        let dir = dir_with(&c, &tensors);
        std::fs::write(weights_path(dir.path()), file).unwrap();
        let e = load_err(dir.path());
        let found = dtype.to_string();
        assert!(
            matches!(&e, ModelError::DType { name: n, found: f, .. } if n == name && *f == found),
            "{e:?}"
        );
        assert_mentions(
            &e,
            &[
                &weights_path(dir.path()).display().to_string(),
                name,
                &found,
            ],
        );
    }
}

#[test]
fn non_finite_values_are_named() {
    let c = hadamard();
    for (name, value, format) in [
        ("model.norm.weight", f32::NAN, WeightFormat::F32),
        (
            "model.layers.1.self_attn.o_bias",
            f32::INFINITY,
            WeightFormat::F32,
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            f32::NAN,
            WeightFormat::F16,
        ),
        // Finite in f32, but beyond the largest half (65504): infinite once stored as f16.
        (
            "model.layers.1.mlp.down_proj.weight",
            1e5,
            WeightFormat::F16,
        ),
    ] {
        let mut tensors = random_tensors(&c, 1);
        tensors.iter_mut().find(|t| t.0 == name).unwrap().2[3] = value;
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), &c, &tensors, format).unwrap();
        let e = load_err(dir.path());
        assert!(
            matches!(&e, ModelError::NonFinite { name: n, .. } if n == name),
            "{name} = {value} as {format:?}: {e:?}"
        );
        assert_mentions(&e, &[&weights_path(dir.path()).display().to_string(), name]);
    }
}

#[test]
fn writing_rejects_values_that_do_not_fill_the_shape() {
    let c = dense();
    let mut tensors = random_tensors(&c, 1);
    tensors[1].2.pop();
    let dir = tempfile::tempdir().unwrap();
    let e = write_model(dir.path(), &c, &tensors, WeightFormat::F32).unwrap_err();
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e:?}");
    assert!(!weights_path(dir.path()).exists());
}

#[test]
fn zero_and_huge_sizes_are_config_errors_naming_the_key() {
    for (key, value, reason) in [
        ("hidden_size", 0u64, "hidden_size must be positive"),
        ("num_hidden_layers", 0, "num_hidden_layers must be positive"),
        ("vocab_size", 0, "vocab_size must be positive"),
        (
            "max_position_embeddings",
            0,
            "max_position_embeddings must be positive",
        ),
        (
            "hidden_size",
            1 << 16,
            "hidden_size = 65536 is larger than walsh supports (32768)",
        ),
        (
            "num_hidden_layers",
            1 << 40,
            "larger than walsh supports (1024)",
        ),
        (
            "intermediate_size",
            1 << 20,
            "larger than walsh supports (131072)",
        ),
        (
            "vocab_size",
            u64::MAX,
            "larger than walsh supports (1048576)",
        ),
        (
            "max_position_embeddings",
            (1 << 20) + 1,
            "larger than walsh supports",
        ),
    ] {
        let dir = model_dir(&dense(), WeightFormat::F32);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(config_path(dir.path())).unwrap())
                .unwrap();
        json[key] = value.into();
        std::fs::write(config_path(dir.path()), json.to_string()).unwrap();
        let e = load_err(dir.path());
        assert!(
            matches!(e, ModelError::Config { .. }),
            "{key} = {value}: {e:?}"
        );
        assert_mentions(
            &e,
            &[&config_path(dir.path()).display().to_string(), reason],
        );
    }
    // Beyond 64 bits: a number serde cannot hold is a config error too.
    let dir = model_dir(&dense(), WeightFormat::F32);
    let text = std::fs::read_to_string(config_path(dir.path())).unwrap();
    let text = text.replace(
        "\"hidden_size\": 64",
        "\"hidden_size\": 99999999999999999999999",
    );
    std::fs::write(config_path(dir.path()), text).unwrap();
    assert!(matches!(load_err(dir.path()), ModelError::Config { .. }));
}

#[test]
fn offsets_past_the_end_are_rejected() {
    let dir = model_dir(&dense(), WeightFormat::F32);
    let bytes = std::fs::read(weights_path(dir.path())).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let data_len = bytes.len() - 8 - n;
    // The last tensor's end offset is the data length: point it one past, and far past.
    let end = format!("{data_len}]");
    assert!(header.contains(&end), "{header}");
    for past in [data_len + 4, data_len + (1 << 40)] {
        let edited = header.replace(&end, &format!("{past}]"));
        let mut file = (edited.len() as u64).to_le_bytes().to_vec();
        file.extend(edited.as_bytes());
        file.extend(&bytes[8 + n..]);
        std::fs::write(weights_path(dir.path()), &file).unwrap();
        assert_corrupt(dir.path(), &format!("end offset {past}"));
    }
}

#[test]
fn files_longer_than_their_config_allows_are_refused_unread() {
    let c = dense();
    let dir = model_dir(&c, WeightFormat::F32);
    let limit = walsh::model::sizes::max_weights_file_bytes(&c);
    // Sparse: no disk used, and walsh must not read it.
    std::fs::File::options()
        .write(true)
        .open(weights_path(dir.path()))
        .unwrap()
        .set_len(limit + 1)
        .unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(&e, ModelError::Io { path, source } if *path == weights_path(dir.path())
            && source.kind() == std::io::ErrorKind::FileTooLarge),
        "{e:?}"
    );
    assert_mentions(
        &e,
        &[
            "more than walsh's limit of",
            "for the weights of this config",
        ],
    );

    // A config.json beyond 1 MiB (a real one is a few hundred bytes).
    let dir = model_dir(&c, WeightFormat::F32);
    let mut text = std::fs::read_to_string(config_path(dir.path())).unwrap();
    text.push_str(&" ".repeat(1 << 20));
    std::fs::write(config_path(dir.path()), text).unwrap();
    assert_mentions(&load_err(dir.path()), &["limit of 1.0 MiB for a config"]);

    // Files that never end are read only up to the limit.
    #[cfg(unix)]
    {
        let dir = model_dir(&c, WeightFormat::F32);
        std::fs::remove_file(config_path(dir.path())).unwrap();
        std::os::unix::fs::symlink("/dev/zero", config_path(dir.path())).unwrap();
        assert_mentions(&load_err(dir.path()), &["it goes on", "for a config"]);
    }
}

mod quantized {
    use super::*;
    use walsh::blocks::{QuantFormat, QuantMatrix};
    use walsh::model::config::Quantization;
    use walsh::model::init::write_files;
    use walsh::model::quant::{quantize_model, quantized_by_default};

    /// d 64, FFN 72 (two full blocks of 32 and a tail of 8), so every block path is hit.
    fn odd_config(query: Query) -> Config {
        Config {
            intermediate_size: 72,
            ..config(AttnOutput::Hadamard, query, false)
        }
    }

    #[test]
    fn quantized_models_load_as_their_dequantized_blocks() {
        for (config, format) in [
            (odd_config(Query::Dense), QuantFormat::Q8),
            (odd_config(Query::ResidualMlp), QuantFormat::Q4),
            (dense(), QuantFormat::Q4),
        ] {
            let src = model_dir(&config, WeightFormat::F16);
            let original = Model::load(src.path()).unwrap();
            let out = tempfile::tempdir().unwrap();
            let summary =
                walsh::model::quant::write_quantized(&original, out.path(), format).unwrap();
            let loaded = Model::load(out.path()).unwrap();
            assert_eq!(loaded.config.quantization, Some(Quantization::new(format)));
            let mut quantized = 0;
            for (a, b) in original
                .weights
                .tensors()
                .iter()
                .zip(loaded.weights.tensors())
            {
                assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
                if quantized_by_default(&a.name, &a.shape) {
                    let q =
                        QuantMatrix::quantize(format, a.shape[0], a.shape[1], &a.to_f32()).unwrap();
                    assert_eq!(b.to_f32(), q.dequantize(), "{format} {}", a.name);
                    assert_ne!(b.to_f32(), a.to_f32(), "{format} {} unchanged", a.name);
                    quantized += 1;
                } else {
                    assert_eq!(a.data, b.data, "{} must stay as stored", a.name);
                }
            }
            assert_eq!(summary.matrices, quantized);
            assert!(quantized >= 2 * 6, "{quantized} matrices");
            // And it runs: the CPU decoder reads the dequantized weights.
            let mut dec = CpuDecoder::new(&loaded, 16, KvFormat::F32).unwrap();
            assert!(dec.forward(1, 0).unwrap().iter().all(|x| x.is_finite()));
        }
    }

    /// A quantized model's tensors, for breaking them one way at a time.
    fn parts(format: QuantFormat) -> (Config, Vec<FileTensor>) {
        let src = model_dir(&odd_config(Query::Dense), WeightFormat::F16);
        let model = Model::load(src.path()).unwrap();
        let (config, tensors, _) = quantize_model(&model, format).unwrap();
        (config, tensors)
    }

    fn load_broken(config: &Config, tensors: &[FileTensor]) -> ModelError {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), config, tensors).unwrap();
        load_err(dir.path())
    }

    const DOWN: &str = "model.layers.1.mlp.down_proj.weight";

    #[test]
    fn broken_quantized_tensors_are_named() {
        let (config, good) = parts(QuantFormat::Q4);
        let edit = |f: &dyn Fn(&mut Vec<FileTensor>)| {
            let mut t = good.clone();
            f(&mut t);
            t
        };
        let scales = format!("{DOWN}.scales");
        let qweight = format!("{DOWN}.qweight");
        let cases: Vec<(&str, Vec<FileTensor>, Vec<&str>)> = vec![
            (
                "scales missing",
                edit(&|t| t.retain(|t| t.name != scales)),
                vec![DOWN, "scales` is missing"],
            ),
            (
                "scales orphaned",
                edit(&|t| t.retain(|t| t.name != qweight)),
                vec![DOWN, "has no", ".qweight"],
            ),
            (
                "scales short",
                edit(&|t| {
                    let s = t.iter_mut().find(|t| t.name == scales).unwrap();
                    // [64, 3] blocks -> [64, 2]
                    s.shape = vec![64, 2];
                    s.bytes.truncate(64 * 2 * 2);
                }),
                vec![DOWN, "[64, 2]", "expected [64, 3]"],
            ),
            (
                "levels of another dtype",
                edit(&|t| t.iter_mut().find(|t| t.name == qweight).unwrap().dtype = Dtype::F32),
                vec![DOWN, "dtype F32, expected U32"],
            ),
            (
                "a NaN scale",
                edit(&|t| {
                    let s = t.iter_mut().find(|t| t.name == scales).unwrap();
                    s.bytes[..2].copy_from_slice(&half::f16::NAN.to_bits().to_le_bytes());
                }),
                vec![DOWN, "row 0, block 0", "not a finite"],
            ),
            (
                "a quantized norm",
                edit(&|t| {
                    let n = t
                        .iter_mut()
                        .find(|t| t.name == "model.norm.weight")
                        .unwrap();
                    n.name = "model.norm.weight.qweight".into();
                }),
                vec!["model.norm.weight", "only matrices"],
            ),
        ];
        for (what, tensors, parts) in cases {
            let e = load_broken(&config, &tensors);
            assert!(matches!(e, ModelError::Quantized { .. }), "{what}: {e:?}");
            assert_mentions(&e, &parts);
        }
        // Both the plain and the quantized matrix.
        let mut both = edit(&|_| {});
        both.push(FileTensor {
            name: DOWN.into(),
            dtype: Dtype::F32,
            shape: vec![64, 72],
            bytes: vec![0; 64 * 72 * 4],
        });
        assert_mentions(&load_broken(&config, &both), &[DOWN, "twice"]);
        // Quantized tensors under a config that does not say so.
        let plain = Config {
            quantization: None,
            ..config.clone()
        };
        let e = load_broken(&plain, &good);
        assert!(matches!(e, ModelError::UnexpectedTensor { .. }), "{e:?}");
        assert_mentions(&e, &[".qweight"]);
    }

    #[test]
    fn an_unsupported_block_size_is_a_config_error() {
        let (config, tensors) = parts(QuantFormat::Q8);
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), &config, &tensors).unwrap();
        let text = std::fs::read_to_string(config_path(dir.path())).unwrap();
        std::fs::write(
            config_path(dir.path()),
            text.replace("\"block_size\": 32", "\"block_size\": 16"),
        )
        .unwrap();
        let e = load_err(dir.path());
        assert!(matches!(e, ModelError::Config { .. }), "{e:?}");
        assert_mentions(&e, &["block_size = 16", "blocks of 32"]);
        std::fs::write(config_path(dir.path()), text.replace("\"q8\"", "\"q3\"")).unwrap();
        assert_mentions(&load_err(dir.path()), &["q3"]);
    }
}
