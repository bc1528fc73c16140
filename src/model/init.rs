//! Random models for tests and benchmarks, and writing a model directory
//! (`config.json` + `model.safetensors`).
//!
//! The initialization is chosen for testing the engine, not for training. Greedy decoding
//! of a random model must not flip between CPU and GPU on rounding differences, so the
//! logits are made well separated:
//! - `embed_tokens` ~ N(0, 1): after the first rmsnorm every position sees a unit-RMS input;
//! - every other `[out, in]` matrix ~ N(0, 1/in): each projection keeps the RMS of its input,
//!   so the residual stream neither vanishes nor explodes over the layers;
//! - norm weights and `o_scale` ~ 1 + 0.1 N(0, 1), `o_bias` ~ 0.1 N(0, 1): close to their
//!   trained-from-scratch values, yet not 1 and 0, so a kernel that ignores them fails tests;
//! - `lm_head` ~ N(0, (4 / sqrt(d))^2): its input `rmsnorm(x) * norm` has RMS about 1, so a
//!   logit is a sum of d terms with standard deviation about 4 across the vocabulary. The
//!   gap between the two largest of 256 such logits is then typically far above f32 noise.
//!   A tied head is the N(0, 1) embedding, giving a spread of about sqrt(d): wider still.
//!
//! Each tensor draws from its own stream, seeded from the model seed and the tensor's name,
//! so two variants built with the same seed share every tensor they have in common.

use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::weights::{CONFIG_FILE, WEIGHTS_FILE, expected_tensors};
use super::{Config, ModelError};
use crate::ops::WeightFormat;

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-mixed generator, plenty for weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal by Box-Muller (one value per pair of uniforms: simple, and speed
    /// does not matter here).
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// FNV-1a, to turn a tensor name into part of its seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Every tensor `config` implies, in [`expected_tensors`] order, with deterministic random
/// values (see the module docs for the distributions).
pub fn random_tensors(config: &Config, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let d = config.hidden_size as f64;
    expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let mut rng = SplitMix64(seed ^ fnv1a(&name));
            let n: usize = shape.iter().product();
            // value = mean + std * N(0, 1)
            let (mean, std) = if name == "lm_head.weight" {
                (0.0, 4.0 / d.sqrt())
            } else if name == "model.embed_tokens.weight" {
                (0.0, 1.0)
            } else if name.ends_with("norm.weight") || name.ends_with(".o_scale") {
                (1.0, 0.1)
            } else if name.ends_with(".o_bias") {
                (0.0, 0.1)
            } else {
                // An [out, in] projection.
                (0.0, 1.0 / (shape[1] as f64).sqrt())
            };
            let values = (0..n).map(|_| (mean + std * rng.normal()) as f32).collect();
            (name, shape, values)
        })
        .collect()
}

/// Writes `dir/config.json` (pretty JSON) and `dir/model.safetensors` with `tensors` stored
/// as `format` (f16 rounds to nearest), creating `dir`. The tensors are written as given,
/// not checked against the config, so tests can write faulty files with it; the config
/// must be valid.
pub fn write_model(
    dir: &Path,
    config: &Config,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    format: WeightFormat,
) -> Result<(), ModelError> {
    let encode = match format {
        WeightFormat::F32 => FileTensor::f32,
        WeightFormat::F16 => FileTensor::f16,
        WeightFormat::Q8 | WeightFormat::Q4 => {
            return Err(ModelError::Input(format!(
                "write_model writes f32 or f16 values, not {}: quantize the model \
                 (quant::write_quantized)",
                format.name()
            )));
        }
    };
    let files: Vec<FileTensor> = tensors
        .iter()
        .map(|(name, shape, values)| encode(name, shape, values))
        .collect();
    write_files(dir, config, &files)
}

/// One tensor as it goes into a safetensors file: little-endian bytes of `dtype`.
#[derive(Clone, Debug)]
pub struct FileTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl FileTensor {
    /// `values` as little-endian f32.
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> Self {
        Self {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// `values` rounded to nearest f16, little-endian.
    pub fn f16(name: &str, shape: &[usize], values: &[f32]) -> Self {
        Self {
            name: name.to_string(),
            dtype: Dtype::F16,
            shape: shape.to_vec(),
            bytes: values
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
        }
    }
}

/// The bytes of a safetensors file holding `tensors` in order. Fails when a tensor's byte
/// count does not match its dtype and shape.
pub fn safetensors_bytes(tensors: &[FileTensor]) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let views = tensors
        .iter()
        .map(|t| {
            Ok((
                t.name.as_str(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize(views, None)
}

/// Writes `dir/config.json` and `dir/model.safetensors` with `tensors` as given (not
/// checked against the config, which must be valid), creating `dir`.
pub fn write_files(dir: &Path, config: &Config, tensors: &[FileTensor]) -> Result<(), ModelError> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    config.validate().map_err(|message| ModelError::Config {
        path: config_path.clone(),
        message,
    })?;
    let safetensors_error = |e: safetensors::SafeTensorError| ModelError::Safetensors {
        path: weights_path.clone(),
        message: e.to_string(),
    };
    let file = safetensors_bytes(tensors).map_err(safetensors_error)?;
    let json = serde_json::to_string_pretty(config).map_err(|e| ModelError::Config {
        path: config_path.clone(),
        message: e.to_string(),
    })?;

    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    std::fs::write(&config_path, json + "\n").map_err(io_error(&config_path))?;
    std::fs::write(&weights_path, file).map_err(io_error(&weights_path))?;
    Ok(())
}

/// [`write_model`] of [`random_tensors`].
pub fn write_random_model(
    dir: &Path,
    config: &Config,
    format: WeightFormat,
    seed: u64,
) -> Result<(), ModelError> {
    write_model(dir, config, &random_tensors(config, seed), format)
}

/// A random model in memory (no files): [`random_tensors`] with every matrix stored as
/// `format` (vectors stay f32, as in files walsh writes).
pub fn random_model(
    config: &Config,
    seed: u64,
    format: WeightFormat,
) -> Result<super::weights::Model, ModelError> {
    use super::weights::{Model, Tensor, TensorData};
    if let Some(q) = format.quant() {
        // The f16 model of the seed, its layer matrices then quantized.
        let f16 = random_model(config, seed, WeightFormat::F16)?;
        return Ok(super::quant::quantized(&f16, q)?.0);
    }
    let tensors = random_tensors(config, seed)
        .into_iter()
        .map(|(name, shape, values)| {
            let data = match format {
                WeightFormat::F16 if shape.len() == 2 => TensorData::F16(
                    values
                        .iter()
                        .map(|&v| half::f16::from_f32(v).to_bits())
                        .collect(),
                ),
                _ => TensorData::F32(values),
            };
            Tensor { name, shape, data }
        })
        .collect();
    Model::from_tensors(Path::new("<random>"), config.clone(), tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_draws_have_unit_moments() {
        let mut rng = SplitMix64(7);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn tensors_are_deterministic_and_shared_across_variants() {
        let mut config: Config = serde_json::from_str(
            r#"{"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                "intermediate_size": 64, "vocab_size": 256, "max_position_embeddings": 8}"#,
        )
        .unwrap();
        let a = random_tensors(&config, 1);
        assert_eq!(a, random_tensors(&config, 1));
        assert_ne!(a[0].2, random_tensors(&config, 2)[0].2);
        config.attn_output = super::super::AttnOutput::Hadamard;
        let b = random_tensors(&config, 1);
        let k = |ts: &[(String, Vec<usize>, Vec<f32>)]| {
            ts.iter()
                .find(|t| t.0 == "model.layers.0.self_attn.k_proj.weight")
                .unwrap()
                .2
                .clone()
        };
        assert_eq!(k(&a), k(&b));
        let names: Vec<_> = b.iter().map(|t| t.0.clone()).collect();
        let expected: Vec<_> = expected_tensors(&config).into_iter().map(|t| t.0).collect();
        assert_eq!(names, expected);
        let scale = b.iter().find(|t| t.0.ends_with("o_scale")).unwrap();
        let mean = scale.2.iter().sum::<f32>() / 32.0;
        assert!((mean - 1.0).abs() < 0.1 && scale.2.iter().any(|&v| v != 1.0));
    }
}
