//! The weights of a model: `model.safetensors` (f32 or f16) checked against the tensor list
//! its config implies, held in host memory by name.
//!
//! [`expected_tensors`] is the single list of names and shapes: the loader checks files
//! against it, [`super::init`] writes random models from it, and [`Weights::tensors`]
//! walks the loaded tensors in the same order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::{AttnOutput, Config, ModelError, Query};
use crate::blocks::QuantMatrix;
use crate::ops::WeightFormat;

/// File name of the config inside a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Name suffix of a block-quantized matrix's packed levels (u32 words, `[rows, words]`).
pub const QWEIGHT_SUFFIX: &str = ".qweight";
/// Name suffix of a block-quantized matrix's f16 block scales (`[rows, blocks]`).
pub const SCALES_SUFFIX: &str = ".scales";

/// Values of a tensor as stored in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    /// IEEE half-precision bit patterns, kept packed so the GPU upload can use them as is.
    F16(Vec<u16>),
    /// A block-quantized matrix (`<name>.qweight` + `<name>.scales`), kept packed for the
    /// GPU; the CPU decoder dequantizes it.
    Quant(QuantMatrix),
}

/// One named tensor, row major (HF layout: a matrix is `[out, in]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// The values widened to f32 (exact for f16).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::F16(bits) => bits
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            TensorData::Quant(q) => q.dequantize(),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::Quant(q) => q.rows * q.cols,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn format(&self) -> WeightFormat {
        match &self.data {
            TensorData::F32(_) => WeightFormat::F32,
            TensorData::F16(_) => WeightFormat::F16,
            TensorData::Quant(q) => q.format.into(),
        }
    }

    /// Bytes of the values as stored (levels and scales for a quantized matrix).
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len() * 4,
            TensorData::F16(v) => v.len() * 2,
            TensorData::Quant(q) => q.bytes(),
        }
    }

    fn is_finite(&self) -> bool {
        match &self.data {
            TensorData::F32(v) => v.iter().all(|x| x.is_finite()),
            TensorData::F16(v) => v.iter().all(|&b| half::f16::from_bits(b).is_finite()),
            // Scales are checked finite when read; levels are small integers.
            TensorData::Quant(_) => true,
        }
    }
}

/// The GPU format of `parts` stacked into one matrix: the parts' own when they all share
/// one (f16, q8 or q4 stay packed), else f32.
pub fn stacked_format(parts: &[&Tensor]) -> WeightFormat {
    match parts.first().map(|t| t.format()) {
        Some(f) if parts.iter().all(|t| t.format() == f) => f,
        _ => WeightFormat::F32,
    }
}

/// The tensors of one decoder layer. Which optional ones are present follows the config:
/// `q_proj` for query "dense", `q_down` + `q_up` for "residual_mlp", none for "identity";
/// `o_proj` for attn_output "dense", `o_scale` + `o_bias` for "hadamard".
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    pub input_layernorm: Tensor,          // [d]
    pub q_proj: Option<Tensor>,           // [d, d]
    pub q_down: Option<Tensor>,           // [query_mlp_hidden, d]
    pub q_up: Option<Tensor>,             // [d, query_mlp_hidden]
    pub k_proj: Tensor,                   // [kv_dim, d], kv_dim = kv_heads * head_dim
    pub v_proj: Tensor,                   // [kv_dim, d]
    pub o_proj: Option<Tensor>,           // [d, d]
    pub o_scale: Option<Tensor>,          // [d]
    pub o_bias: Option<Tensor>,           // [d]
    pub post_attention_layernorm: Tensor, // [d]
    pub gate_proj: Tensor,                // [intermediate, d]
    pub up_proj: Tensor,                  // [intermediate, d]
    pub down_proj: Tensor,                // [d, intermediate]
}

impl LayerWeights {
    /// The present tensors in [`expected_tensors`] order.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.input_layernorm];
        out.extend(
            [&self.q_proj, &self.q_down, &self.q_up]
                .into_iter()
                .flatten(),
        );
        out.extend([&self.k_proj, &self.v_proj]);
        out.extend(
            [&self.o_proj, &self.o_scale, &self.o_bias]
                .into_iter()
                .flatten(),
        );
        out.extend([
            &self.post_attention_layernorm,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]);
        out
    }

    /// The attention tensors: query, key, value and output (or their replacements).
    fn attention_tensors(&self) -> Vec<&Tensor> {
        let mut out: Vec<&Tensor> = [&self.q_proj, &self.q_down, &self.q_up]
            .into_iter()
            .flatten()
            .collect();
        out.extend([&self.k_proj, &self.v_proj]);
        out.extend(
            [&self.o_proj, &self.o_scale, &self.o_bias]
                .into_iter()
                .flatten(),
        );
        out
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub embed_tokens: Tensor, // [vocab, d]
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor, // [d]
    /// [vocab, d]; `None` when the config ties it to `embed_tokens`.
    pub lm_head: Option<Tensor>,
}

impl Weights {
    /// Every tensor, in [`expected_tensors`] order.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.embed_tokens];
        for layer in &self.layers {
            out.extend(layer.tensors());
        }
        out.push(&self.norm);
        out.extend(&self.lm_head);
        out
    }
}

/// A loaded model: its directory (used in messages), config and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub dir: PathBuf,
    pub config: Config,
    pub weights: Weights,
}

/// The names and shapes of layer `l`'s tensors, in [`expected_tensors`] order.
fn layer_tensors(config: &Config, l: usize) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let inter = config.intermediate_size;
    let p = format!("model.layers.{l}");
    let mut out = vec![(format!("{p}.input_layernorm.weight"), vec![d])];
    match config.query {
        Query::Dense => out.push((format!("{p}.self_attn.q_proj.weight"), vec![d, d])),
        Query::Identity => {}
        Query::ResidualMlp => {
            let h = config.query_mlp_hidden();
            out.push((format!("{p}.self_attn.q_down.weight"), vec![h, d]));
            out.push((format!("{p}.self_attn.q_up.weight"), vec![d, h]));
        }
    }
    // Grouped-query attention: kv_heads heads of head_dim, kv_dim = d without grouping.
    let kv = config.kv_dim();
    out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
    out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
    match config.attn_output {
        AttnOutput::Dense => out.push((format!("{p}.self_attn.o_proj.weight"), vec![d, d])),
        AttnOutput::Hadamard => {
            out.push((format!("{p}.self_attn.o_scale"), vec![d]));
            out.push((format!("{p}.self_attn.o_bias"), vec![d]));
        }
    }
    out.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
    out.push((format!("{p}.mlp.gate_proj.weight"), vec![inter, d]));
    out.push((format!("{p}.mlp.up_proj.weight"), vec![inter, d]));
    out.push((format!("{p}.mlp.down_proj.weight"), vec![d, inter]));
    out
}

/// How many tensors [`expected_tensors`] lists, without listing them.
fn expected_tensor_count(config: &Config) -> usize {
    let per_layer = layer_tensors(config, 0).len();
    let head = usize::from(!config.tie_word_embeddings);
    2 + head + config.num_hidden_layers.saturating_mul(per_layer)
}

/// Before a config's tensor list is built (its size follows `num_hidden_layers`, not the
/// file): a file with fewer tensors than the config needs misses one, named here by
/// walking the layers until it turns up.
fn check_tensor_count(
    path: &Path,
    config: &Config,
    found: usize,
    has: impl Fn(&str) -> bool,
) -> Result<(), ModelError> {
    if found >= expected_tensor_count(config) {
        return Ok(());
    }
    let missing = |name: String| ModelError::MissingTensor {
        path: path.to_path_buf(),
        name,
    };
    for name in ["model.embed_tokens.weight"] {
        if !has(name) {
            return Err(missing(name.into()));
        }
    }
    for l in 0..config.num_hidden_layers {
        if let Some((name, _)) = layer_tensors(config, l).into_iter().find(|(n, _)| !has(n)) {
            return Err(missing(name));
        }
    }
    let head = (!config.tie_word_embeddings).then_some("lm_head.weight");
    let tail = std::iter::once("model.norm.weight").chain(head);
    let name = tail
        .into_iter()
        .find(|n| !has(n))
        .unwrap_or("model.norm.weight");
    Err(missing(name.into()))
}

/// The names and shapes of every tensor a model with `config` has, in a stable order:
/// embedding, then per layer input norm, query, key, value, output, post-attention norm,
/// MLP; then the final norm and the untied lm_head.
pub fn expected_tensors(config: &Config) -> Vec<(String, Vec<usize>)> {
    let d = config.hidden_size;
    let vocab = config.vocab_size;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, d])];
    for l in 0..config.num_hidden_layers {
        out.extend(layer_tensors(config, l));
    }
    out.push(("model.norm.weight".to_string(), vec![d]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![vocab, d]));
    }
    out
}

impl Model {
    /// Loads `dir/config.json` and `dir/model.safetensors`; or, when `dir` is a GGUF file
    /// (a file starting with `GGUF`), the llama-architecture model in it
    /// ([`super::gguf_load`]), with `dir` the file's path.
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        if super::gguf_load::is_gguf_file(dir) {
            let bytes = super::gguf_load::read_gguf(dir)?;
            let gguf = super::gguf_load::parse(dir, &bytes)?;
            return super::gguf_load::model_from_gguf(dir, &gguf);
        }
        let config = Config::load(&dir.join(CONFIG_FILE))?;
        let path = dir.join(WEIGHTS_FILE);
        // Reading the whole file bounds every allocation by its real length: safetensors
        // checks the header's offsets against the buffer before any tensor is touched. A
        // file longer than any valid one for this config is refused unread.
        let limit = super::sizes::max_weights_file_bytes(&config);
        let bytes = crate::limits::read_at_most(&path, limit, "the weights of this config")
            .map_err(|source| ModelError::Io { path, source })?;
        Self::from_safetensors(dir, config, &bytes)
    }

    /// A model from the bytes of its two files, checked as [`Model::load`] checks them
    /// (what the loader fuzz test drives); `dir` only names the files in messages.
    pub fn from_bytes(dir: &Path, config: &[u8], weights: &[u8]) -> Result<Model, ModelError> {
        let config = Config::from_json_bytes(&dir.join(CONFIG_FILE), config)?;
        Self::from_safetensors(dir, config, weights)
    }

    /// Builds a model from the bytes of a safetensors file; `dir` only names the files in
    /// messages (the browser has no file system).
    pub fn from_safetensors(dir: &Path, config: Config, bytes: &[u8]) -> Result<Model, ModelError> {
        check_config(dir, &config)?;
        let path = dir.join(WEIGHTS_FILE);
        let file = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut names = file.names();
        // Sorted, so a file with several faults always reports the same one.
        names.sort_unstable();
        // A quantized matrix is `<name>.qweight` + `<name>.scales`, checked as `<name>`.
        let (quantized, names): (Vec<&str>, Vec<&str>) = match config.quantization {
            Some(_) => names
                .into_iter()
                .filter(|n| !n.ends_with(SCALES_SUFFIX))
                .partition(|n| n.ends_with(QWEIGHT_SUFFIX)),
            None => (Vec::new(), names),
        };
        let bases: Vec<&str> = quantized
            .iter()
            .map(|n| &n[..n.len() - QWEIGHT_SUFFIX.len()])
            .collect();
        if config.quantization.is_some() {
            check_no_orphan_scales(&path, &file, &bases)?;
        }
        let found = names.len() + bases.len();
        let has = |n: &str| names.contains(&n) || bases.contains(&n);
        check_tensor_count(&path, &config, found, has)?;
        check_no_unexpected(&path, &config, names.iter().chain(&bases).copied())?;
        if let Some(q) = config.quantization {
            let shapes: HashMap<String, Vec<usize>> =
                expected_tensors(&config).into_iter().collect();
            let mut tensors = Vec::with_capacity(names.len() + bases.len());
            for base in &bases {
                tensors.push(quantized_tensor(&path, &file, base, &shapes[*base], q)?);
            }
            return Self::from_parts(dir, config, &file, &path, names, tensors);
        }
        Self::from_parts(dir, config, &file, &path, names, Vec::new())
    }

    /// The plain (F32/F16) tensors `names` of `file` added to `tensors`, then checked as a
    /// whole by [`Model::from_tensors`].
    fn from_parts(
        dir: &Path,
        config: Config,
        file: &SafeTensors,
        path: &Path,
        names: Vec<&str>,
        mut tensors: Vec<Tensor>,
    ) -> Result<Model, ModelError> {
        let path = path.to_path_buf();
        for name in names {
            let view = file.tensor(name).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            // safetensors has checked that the byte length matches dtype and shape, so
            // the chunks below cover the data exactly.
            let data = match view.dtype() {
                Dtype::F32 => TensorData::F32(
                    view.data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
                Dtype::F16 => TensorData::F16(
                    view.data()
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                ),
                other => {
                    return Err(ModelError::DType {
                        path,
                        name: name.to_string(),
                        found: other.to_string(),
                    });
                }
            };
            tensors.push(Tensor {
                name: name.to_string(),
                shape: view.shape().to_vec(),
                data,
            });
        }
        Self::from_tensors(dir, config, tensors)
    }

    /// Builds a model from tensors in memory, with the same checks as a file: the config is
    /// valid, every expected tensor is present once with its shape and finite values, and
    /// no other tensor is given.
    pub fn from_tensors(
        dir: &Path,
        config: Config,
        tensors: Vec<Tensor>,
    ) -> Result<Model, ModelError> {
        check_config(dir, &config)?;
        let path = dir.join(WEIGHTS_FILE);
        let mut by_name = HashMap::with_capacity(tensors.len());
        for t in tensors {
            let name = t.name.clone();
            if by_name.insert(name.clone(), t).is_some() {
                return Err(ModelError::Input(format!(
                    "tensor `{name}` is given twice for {}",
                    path.display()
                )));
            }
        }
        let mut names: Vec<&str> = by_name.keys().map(String::as_str).collect();
        names.sort_unstable();
        check_no_unexpected(&path, &config, names.into_iter())?;

        let mut take = |name: String| {
            by_name.remove(&name).ok_or(ModelError::MissingTensor {
                path: path.clone(),
                name,
            })
        };
        let embed_tokens = take("model.embed_tokens.weight".to_string())?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let attn = |n: &str| format!("{p}.self_attn.{n}");
            // Taken in expected_tensors order, so a missing tensor is reported as it would
            // be by a walk over that list.
            let input_layernorm = take(format!("{p}.input_layernorm.weight"))?;
            let (q_proj, q_down, q_up) = match config.query {
                Query::Dense => (Some(take(attn("q_proj.weight"))?), None, None),
                Query::Identity => (None, None, None),
                Query::ResidualMlp => (
                    None,
                    Some(take(attn("q_down.weight"))?),
                    Some(take(attn("q_up.weight"))?),
                ),
            };
            let k_proj = take(attn("k_proj.weight"))?;
            let v_proj = take(attn("v_proj.weight"))?;
            let (o_proj, o_scale, o_bias) = match config.attn_output {
                AttnOutput::Dense => (Some(take(attn("o_proj.weight"))?), None, None),
                AttnOutput::Hadamard => (
                    None,
                    Some(take(attn("o_scale"))?),
                    Some(take(attn("o_bias"))?),
                ),
            };
            layers.push(LayerWeights {
                input_layernorm,
                q_proj,
                q_down,
                q_up,
                k_proj,
                v_proj,
                o_proj,
                o_scale,
                o_bias,
                post_attention_layernorm: take(format!("{p}.post_attention_layernorm.weight"))?,
                gate_proj: take(format!("{p}.mlp.gate_proj.weight"))?,
                up_proj: take(format!("{p}.mlp.up_proj.weight"))?,
                down_proj: take(format!("{p}.mlp.down_proj.weight"))?,
            });
        }
        let norm = take("model.norm.weight".to_string())?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight".to_string())?)
        };
        let model = Model {
            dir: dir.to_path_buf(),
            config,
            weights: Weights {
                embed_tokens,
                layers,
                norm,
                lm_head,
            },
        };
        model.validate()?;
        Ok(model)
    }

    /// Checks that the config is valid and the weights are exactly the tensors it implies:
    /// names in their slots, shapes, data lengths and finite values. The loaders guarantee
    /// it; the decoders call it because the fields are public and a model may be edited.
    pub fn validate(&self) -> Result<(), ModelError> {
        check_config(&self.dir, &self.config)?;
        let path = self.dir.join(WEIGHTS_FILE);
        let expected = expected_tensors(&self.config);
        let present = self.weights.tensors();
        for (i, (name, shape)) in expected.iter().enumerate() {
            let Some(t) = present.get(i).filter(|t| &t.name == name) else {
                // Either the expected tensor is missing, or a tensor sits in the wrong slot.
                return Err(match present.get(i) {
                    Some(t) if present.iter().any(|p| &p.name == name) => {
                        ModelError::UnexpectedTensor {
                            path,
                            name: t.name.clone(),
                            variant: self.config.variant(),
                        }
                    }
                    _ => ModelError::MissingTensor {
                        path,
                        name: name.clone(),
                    },
                });
            };
            if &t.shape != shape {
                return Err(ModelError::Shape {
                    path,
                    name: name.clone(),
                    expected: shape.clone(),
                    found: t.shape.clone(),
                });
            }
            let elements: usize = shape.iter().product();
            if t.len() != elements {
                return Err(ModelError::Input(format!(
                    "{}: tensor `{name}` holds {} values but its shape {shape:?} needs {elements}",
                    path.display(),
                    t.len()
                )));
            }
            if !t.is_finite() {
                return Err(ModelError::NonFinite {
                    path,
                    name: name.clone(),
                });
            }
        }
        if let Some(extra) = present.get(expected.len()) {
            return Err(ModelError::UnexpectedTensor {
                path,
                name: extra.name.clone(),
                variant: self.config.variant(),
            });
        }
        Ok(())
    }

    /// Number of stored parameters (a tied lm_head counts once, as the embedding).
    pub fn parameter_count(&self) -> usize {
        self.weights.tensors().iter().map(|t| t.len()).sum()
    }

    /// Parameters of the attention projections of all layers: q/k/v/o or the tensors that
    /// replace q and o in the variants. This is what the Hadamard output saves on.
    pub fn attention_parameter_count(&self) -> usize {
        self.weights
            .layers
            .iter()
            .flat_map(LayerWeights::attention_tensors)
            .map(Tensor::len)
            .sum()
    }

    /// The output projection: `lm_head.weight`, or the embedding when tied.
    pub fn lm_head(&self) -> &Tensor {
        self.weights
            .lm_head
            .as_ref()
            .unwrap_or(&self.weights.embed_tokens)
    }
}

/// The config's own rules, reported against `dir/config.json`: every size the loaders and
/// decoders derive from it depends on them.
fn check_config(dir: &Path, config: &Config) -> Result<(), ModelError> {
    config.validate().map_err(|message| ModelError::Config {
        path: dir.join(CONFIG_FILE),
        message,
    })
}

/// Fails on the first name (in the given order) that `config` has no place for.
fn check_no_unexpected<'a>(
    path: &Path,
    config: &Config,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), ModelError> {
    let expected: std::collections::HashSet<String> = expected_tensors(config)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for name in names {
        if !expected.contains(name) {
            return Err(ModelError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                variant: config.variant(),
            });
        }
    }
    Ok(())
}

/// Every `<name>.scales` belongs to a `<name>.qweight`.
fn check_no_orphan_scales(
    path: &Path,
    file: &SafeTensors,
    bases: &[&str],
) -> Result<(), ModelError> {
    for name in file.names() {
        if let Some(base) = name.strip_suffix(SCALES_SUFFIX)
            && !bases.contains(&base)
        {
            return Err(ModelError::Quantized {
                path: path.to_path_buf(),
                name: base.to_string(),
                message: format!("`{name}` has no `{base}{QWEIGHT_SUFFIX}`"),
            });
        }
    }
    Ok(())
}

/// The matrix `base` from its `.qweight` and `.scales` tensors, checked against its
/// expected `[rows, cols]`, kept packed.
fn quantized_tensor(
    path: &Path,
    file: &SafeTensors,
    base: &str,
    shape: &[usize],
    q: super::config::Quantization,
) -> Result<Tensor, ModelError> {
    use crate::blocks::{QuantMatrix, blocks_per_row};
    let fail = |message: String| ModelError::Quantized {
        path: path.to_path_buf(),
        name: base.to_string(),
        message,
    };
    let &[rows, cols] = shape else {
        return Err(fail(format!(
            "only matrices are quantized; this tensor has shape {shape:?}"
        )));
    };
    let format = q.weights;
    let blocks = blocks_per_row(cols);
    let part = |suffix: &str, dtype: Dtype, want: [usize; 2]| {
        let name = format!("{base}{suffix}");
        let view = file
            .tensor(&name)
            .map_err(|_| fail(format!("`{name}` is missing")))?;
        if view.dtype() != dtype {
            return Err(fail(format!(
                "`{name}` has dtype {}, expected {dtype}",
                view.dtype()
            )));
        }
        if view.shape() != want {
            return Err(fail(format!(
                "`{name}` has shape {:?}, expected {want:?} ({format}, blocks of {} along {cols} columns)",
                view.shape(),
                q.block_size
            )));
        }
        Ok(view)
    };
    let words = part(
        QWEIGHT_SUFFIX,
        Dtype::U32,
        [rows, blocks * format.words_per_block()],
    )?;
    let scales = part(SCALES_SUFFIX, Dtype::F16, [rows, blocks])?;
    let data = words
        .data()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let scales = scales
        .data()
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let matrix = QuantMatrix::from_parts(format, rows, cols, data, scales)
        .map_err(|e| fail(e.to_string()))?;
    Ok(Tensor {
        name: base.to_string(),
        shape: vec![rows, cols],
        data: TensorData::Quant(matrix),
    })
}
