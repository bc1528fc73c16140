//! Quantizing a model: which tensors `walsh quantize` turns into q8/q4 blocks
//! ([`crate::blocks`] holds the block format itself), in memory or written as files.

use safetensors::Dtype;

use super::ModelError;
use super::config::Quantization;
use super::init::{FileTensor, write_files};
use super::weights::{Model, QWEIGHT_SUFFIX, SCALES_SUFFIX, Tensor, TensorData, WEIGHTS_FILE};
use crate::blocks::{QuantFormat, QuantMatrix, blocks_per_row};

/// Whether `walsh quantize` quantizes this tensor: every matrix of the layers (attention
/// and MLP). The embedding and the untied lm_head stay as stored: they are read one row
/// (the embedding) or once per token anyway, and the shipped models' byte vocabulary makes
/// them small.
pub fn quantized_by_default(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.starts_with("model.layers.")
}

/// What [`write_quantized`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeSummary {
    pub format: QuantFormat,
    /// Matrices quantized.
    pub matrices: usize,
    /// Their bytes as stored before (f32 or f16) and after (levels + scales).
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// `model` with its layer matrices ([`quantized_by_default`]) block-quantized to
/// `format`, in memory, with the config that says so: what loading the files
/// [`quantize_model`] writes gives back.
pub fn quantized(
    model: &Model,
    format: QuantFormat,
) -> Result<(Model, QuantizeSummary), ModelError> {
    if let Some(q) = model.config.quantization {
        return Err(ModelError::Input(format!(
            "{} is already quantized ({}): quantize the f16 or f32 model",
            model.dir.display(),
            q.weights
        )));
    }
    let path = model.dir.join(WEIGHTS_FILE);
    let mut summary = QuantizeSummary {
        format,
        matrices: 0,
        bytes_before: 0,
        bytes_after: 0,
    };
    let mut tensors = Vec::new();
    for t in model.weights.tensors() {
        if !quantized_by_default(&t.name, &t.shape) {
            tensors.push(t.clone());
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let q = QuantMatrix::quantize(format, rows, cols, &t.to_f32()).map_err(|e| {
            ModelError::Quantized {
                path: path.clone(),
                name: t.name.clone(),
                message: e.to_string(),
            }
        })?;
        summary.matrices += 1;
        summary.bytes_before += t.stored_bytes();
        summary.bytes_after += q.bytes();
        tensors.push(Tensor {
            data: TensorData::Quant(q),
            ..t.clone()
        });
    }
    let config = super::Config {
        quantization: Some(Quantization::new(format)),
        ..model.config.clone()
    };
    Ok((Model::from_tensors(&model.dir, config, tensors)?, summary))
}

/// `model` with its layer matrices block-quantized to `format`, as the tensors of a
/// safetensors file (`<name>.qweight` as U32, `<name>.scales` as F16, the rest as
/// stored), with the config that says so.
pub fn quantize_model(
    model: &Model,
    format: QuantFormat,
) -> Result<(super::Config, Vec<FileTensor>, QuantizeSummary), ModelError> {
    let (model, summary) = quantized(model, format)?;
    Ok((model.config.clone(), file_tensors(&model), summary))
}

/// The tensors of `model` as a safetensors file holds them: f32 and f16 as they are, a
/// quantized matrix as `<name>.qweight` (U32 `[rows, blocks x words]`) and `<name>.scales`
/// (F16 `[rows, blocks]`).
pub fn file_tensors(model: &Model) -> Vec<FileTensor> {
    let mut out = Vec::new();
    for t in model.weights.tensors() {
        let (dtype, bytes): (Dtype, Vec<u8>) = match &t.data {
            TensorData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::Quant(q) => {
                let blocks = blocks_per_row(q.cols);
                out.push(FileTensor {
                    name: format!("{}{QWEIGHT_SUFFIX}", t.name),
                    dtype: Dtype::U32,
                    shape: vec![q.rows, blocks * q.format.words_per_block()],
                    bytes: q.data.iter().flat_map(|w| w.to_le_bytes()).collect(),
                });
                out.push(FileTensor {
                    name: format!("{}{SCALES_SUFFIX}", t.name),
                    dtype: Dtype::F16,
                    shape: vec![q.rows, blocks],
                    bytes: q.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                });
                continue;
            }
        };
        out.push(FileTensor {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            bytes,
        });
    }
    out
}

/// [`quantize_model`] written to `dir` (config.json + model.safetensors).
pub fn write_quantized(
    model: &Model,
    dir: &std::path::Path,
    format: QuantFormat,
) -> Result<QuantizeSummary, ModelError> {
    let (config, tensors, summary) = quantize_model(model, format)?;
    write_files(dir, &config, &tensors)?;
    Ok(summary)
}
