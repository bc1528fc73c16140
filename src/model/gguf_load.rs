//! Loading a llama-architecture GGUF file (llama.cpp's, or what `walsh export --gguf`
//! writes) as a walsh [`Model`] and its [`Tokenizer`] (docs/model-format.md#loading-gguf).
//!
//! - Config from the `llama.*` metadata; walsh's variants from `walsh.*`
//!   ([`super::gguf`] writes both). Metadata that changes the computation in a way walsh
//!   does not implement (RoPE scaling, experts, a head size other than d / heads, ...) is
//!   refused naming the key.
//! - Tensors by the export's name table ([`super::gguf::gguf_name`]): F32, F16 and BF16
//!   (as f32, exactly) tensors, and Q8_0 / Q4_0 matrices repacked into walsh's q8 / q4
//!   blocks bit for bit (same f16 scale, same levels: GGML's Q4_0 has level -8 and
//!   negative scales, which walsh's blocks read as stored). The q and k rows are
//!   un-permuted from llama.cpp's interleaved RoPE pairs ([`super::gguf::unpermute_rope_rows`];
//!   k by the KV heads).
//! - The tokenizer from `tokenizer.ggml.*` ([`Tokenizer::from_gguf`]), except that the 256
//!   byte tokens `<0x00>`..`<0xFF>` alone (what the export writes for walsh's byte models)
//!   are walsh's byte-level tokenizer, so a space stays byte 32.
//!
//! Every fault is a typed [`ModelError`] naming the key or the GGUF tensor. The reader
//! bounds every count by the file's bytes; what is allocated here is at most the size of
//! the tensors' bytes again (f32 of BF16 at most twice).

use std::path::{Path, PathBuf};

use half::f16;

use super::config::Quantization;
use super::gguf::{
    ATTN_OUTPUT_KEY, QUERY_KEY, QUERY_MLP_HIDDEN_KEY, attn_output_name, gguf_name, query_name,
    rope_heads, unpermute_rope_rows,
};
use super::weights::{Model, Tensor, TensorData, expected_tensors};
use super::{AttnOutput, Config, ModelError, Query};
use crate::blocks::{BLOCK, QuantFormat, QuantMatrix};
use crate::gguf::{GgmlType, Gguf, TensorInfo, Value};
use crate::tokenizer::Tokenizer;

/// The largest GGUF file [`load_gguf`] reads: 32 GiB.
pub const MAX_GGUF_BYTES: u64 = 32 << 30;

/// The one architecture walsh loads.
pub const ARCHITECTURE: &str = "llama";

/// Whether `path` is a file that starts with the GGUF magic (what [`Model::load`] and
/// [`super::tokens::load_tokenizer`] take as a GGUF model rather than a directory).
pub fn is_gguf_file(path: &Path) -> bool {
    use std::io::Read;
    if !path.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == crate::gguf::MAGIC)
}

/// Reads `path` (at most [`MAX_GGUF_BYTES`]).
pub fn read_gguf(path: &Path) -> Result<Vec<u8>, ModelError> {
    crate::limits::read_at_most(path, MAX_GGUF_BYTES, "a GGUF model").map_err(|source| {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The model and tokenizer of the GGUF file at `path`; `model.dir` is `path`.
pub fn load_gguf(path: &Path) -> Result<(Model, Tokenizer), ModelError> {
    from_gguf_bytes(path, &read_gguf(path)?)
}

/// [`load_gguf`] of a file's bytes; `path` names the file in messages and becomes
/// `model.dir`.
pub fn from_gguf_bytes(path: &Path, bytes: &[u8]) -> Result<(Model, Tokenizer), ModelError> {
    let gguf = parse(path, bytes)?;
    let model = model_from_gguf(path, &gguf)?;
    let tokenizer = tokenizer_from_gguf(path, &gguf, &model.config)?;
    Ok((model, tokenizer))
}

/// The parsed file, or its reader error against `path`.
pub fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<Gguf<'a>, ModelError> {
    Gguf::parse(bytes).map_err(|source| ModelError::Gguf {
        path: path.to_path_buf(),
        source,
    })
}

/// The model a parsed GGUF file holds (module docs).
pub fn model_from_gguf(path: &Path, gguf: &Gguf) -> Result<Model, ModelError> {
    let mut config = config_from_gguf(path, gguf)?;
    let table: Vec<(String, String, Vec<usize>)> = expected_tensors(&config)
        .into_iter()
        .map(|(walsh, shape)| {
            // Every name expected_tensors lists has a GGUF name.
            let g = gguf_name(&walsh).unwrap_or_else(|| walsh.clone());
            (g, walsh, shape)
        })
        .collect();
    // Anything else would be ignored by walsh but read by llama.cpp (biases, RoPE
    // factors, a fused qkv): refused.
    let names: std::collections::HashSet<&str> = table.iter().map(|(g, _, _)| g.as_str()).collect();
    for t in gguf.tensors() {
        if !names.contains(t.name) {
            return Err(ModelError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: t.name.to_string(),
                variant: config.variant(),
            });
        }
    }
    let mut tensors = Vec::with_capacity(table.len());
    let mut format: Option<(QuantFormat, &str)> = None;
    for (g, walsh, shape) in &table {
        let info = gguf.tensor(g).ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            name: g.clone(),
        })?;
        let t = load_tensor(path, info, walsh, shape, rope_heads(&config, walsh))?;
        // The layer matrices share one block format (`config.quantization`, what
        // `walsh quantize` makes); the embedding and head may be stored otherwise, as
        // llama.cpp's quantizer often keeps them.
        if let TensorData::Quant(q) = &t.data
            && super::quant::quantized_by_default(walsh, shape)
        {
            match format {
                None => format = Some((q.format, info.name)),
                Some((f, first)) if f != q.format => {
                    return Err(ModelError::Quantized {
                        path: path.to_path_buf(),
                        name: g.clone(),
                        message: format!(
                            "is {} but `{first}` is {}: a walsh model's layer matrices share one block format",
                            info.ty,
                            ggml_type(f)
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        tensors.push(t);
    }
    config.quantization = format.map(|(f, _)| Quantization::new(f));
    Model::from_tensors(path, config, tensors)
}

/// The GGML type a walsh block format is stored as.
fn ggml_type(f: QuantFormat) -> GgmlType {
    match f {
        QuantFormat::Q8 => GgmlType::Q8_0,
        QuantFormat::Q4 => GgmlType::Q4_0,
    }
}

/// The tokenizer a parsed GGUF file describes, checked against the model's vocabulary.
pub fn tokenizer_from_gguf(
    path: &Path,
    gguf: &Gguf,
    config: &Config,
) -> Result<Tokenizer, ModelError> {
    let tokenizer = if is_byte_vocab(gguf) {
        Tokenizer::byte_level()
    } else {
        Tokenizer::from_gguf(gguf).map_err(|source| ModelError::Tokenizer {
            path: path.to_path_buf(),
            source,
        })?
    };
    super::tokens::fits(path, &tokenizer, config)?;
    Ok(tokenizer)
}

/// Whether the vocabulary is exactly the 256 SentencePiece byte tokens `<0x00>`..`<0xFF>`
/// in order: walsh's byte tokenizer as the export writes it.
fn is_byte_vocab(gguf: &Gguf) -> bool {
    if gguf.get_str("tokenizer.ggml.model").ok() != Some("llama") {
        return false;
    }
    let Some(Value::Array(tokens)) = gguf.get("tokenizer.ggml.tokens") else {
        return false;
    };
    tokens.len() == 256
        && tokens.iter().enumerate().all(|(i, v)| match v {
            Value::Str(s) => s == format!("<0x{i:02X}>"),
            _ => false,
        })
}

/// A metadata error against `path`.
fn meta(path: &Path, key: &str, message: String) -> ModelError {
    ModelError::GgufMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    }
}

/// Reads metadata of `gguf`, every error naming its key.
struct Meta<'g, 'a> {
    path: &'g Path,
    gguf: &'g Gguf<'a>,
}

impl Meta<'_, '_> {
    /// An integer of any GGUF integer type, as usize.
    fn uint(&self, key: &str) -> Result<Option<usize>, ModelError> {
        let Some(v) = self.gguf.get(key) else {
            return Ok(None);
        };
        let n: Option<i128> = match v {
            Value::U8(x) => Some(x.into()),
            Value::I8(x) => Some(x.into()),
            Value::U16(x) => Some(x.into()),
            Value::I16(x) => Some(x.into()),
            Value::U32(x) => Some(x.into()),
            Value::I32(x) => Some(x.into()),
            Value::U64(x) => Some(x.into()),
            Value::I64(x) => Some(x.into()),
            other => {
                return Err(meta(
                    self.path,
                    key,
                    format!("is {}, expected an unsigned integer", other.type_name()),
                ));
            }
        };
        n.and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| meta(self.path, key, format!("is {v:?}, not a size")))
    }

    fn required_uint(&self, key: &str) -> Result<usize, ModelError> {
        self.uint(key)?
            .ok_or_else(|| meta(self.path, key, "is missing".into()))
    }

    /// An f32 or f64, as f64.
    fn float(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.gguf.get(key) {
            None => Ok(None),
            // The shortest decimal that is this f32 (what the exporter's config said:
            // 1e-5, not 9.99999974737875e-6), so configs round-trip unchanged.
            Some(Value::F32(x)) => Ok(Some(x.to_string().parse().unwrap_or(x.into()))),
            Some(Value::F64(x)) => Ok(Some(x)),
            Some(other) => Err(meta(
                self.path,
                key,
                format!("is {}, expected f32", other.type_name()),
            )),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.gguf.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(other) => Err(meta(
                self.path,
                key,
                format!("is {}, expected a string", other.type_name()),
            )),
        }
    }
}

/// The config the metadata and `token_embd.weight` describe (module docs), validated.
pub fn config_from_gguf(path: &Path, gguf: &Gguf) -> Result<Config, ModelError> {
    let m = Meta { path, gguf };
    const ARCH: &str = "general.architecture";
    match m.string(ARCH)? {
        Some(ARCHITECTURE) => {}
        Some(other) => {
            return Err(meta(
                path,
                ARCH,
                format!("is `{other}`: walsh loads only the `{ARCHITECTURE}` architecture"),
            ));
        }
        None => return Err(meta(path, ARCH, "is missing".into())),
    }
    let key = |k: &str| format!("{ARCHITECTURE}.{k}");
    let d = m.required_uint(&key("embedding_length"))?;
    let heads = m.required_uint(&key("attention.head_count"))?;
    // Equal to the heads (what llama.cpp's writers always say) is no grouping: None, as
    // a config.json without the key.
    let kv_heads = m
        .uint(&key("attention.head_count_kv"))?
        .filter(|&kv| kv != heads);
    let embd = gguf
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor {
            path: path.to_path_buf(),
            name: "token_embd.weight".into(),
        })?;
    let mut embd_dims = dims(embd);
    embd_dims.resize(embd_dims.len().max(2), 1);
    let vocab = match embd_dims.as_slice() {
        [cols, rows] if *cols == d => *rows,
        found => {
            return Err(ModelError::Shape {
                path: path.to_path_buf(),
                name: embd.name.to_string(),
                expected: vec![d, 0],
                found: found.to_vec(),
            });
        }
    };
    let attn_output = match m.string(ATTN_OUTPUT_KEY)? {
        None => AttnOutput::Dense,
        Some(s) => [AttnOutput::Dense, AttnOutput::Hadamard]
            .into_iter()
            .find(|&a| attn_output_name(a) == s)
            .ok_or_else(|| {
                meta(
                    path,
                    ATTN_OUTPUT_KEY,
                    format!("is `{s}`: expected `dense` or `hadamard`"),
                )
            })?,
    };
    let query = match m.string(QUERY_KEY)? {
        None => Query::Dense,
        Some(s) => [Query::Dense, Query::Identity, Query::ResidualMlp]
            .into_iter()
            .find(|&q| query_name(q) == s)
            .ok_or_else(|| {
                meta(
                    path,
                    QUERY_KEY,
                    format!("is `{s}`: expected `dense`, `identity` or `residual_mlp`"),
                )
            })?,
    };
    let query_mlp_hidden = m.uint(QUERY_MLP_HIDDEN_KEY)?;
    if query_mlp_hidden.is_some() && query != Query::ResidualMlp {
        return Err(meta(
            path,
            QUERY_MLP_HIDDEN_KEY,
            format!("is set but `{QUERY_KEY}` is not `residual_mlp`"),
        ));
    }
    let config = Config {
        hidden_size: d,
        num_hidden_layers: m.required_uint(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        intermediate_size: m.required_uint(&key("feed_forward_length"))?,
        vocab_size: vocab,
        max_position_embeddings: m.required_uint(&key("context_length"))?,
        rms_norm_eps: m
            .float(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| {
                meta(
                    path,
                    &key("attention.layer_norm_rms_epsilon"),
                    "is missing".into(),
                )
            })?,
        rope_theta: m.float(&key("rope.freq_base"))?.unwrap_or(10000.0),
        tie_word_embeddings: gguf.tensor("output.weight").is_none(),
        attn_output,
        query,
        query_mlp_hidden,
        quantization: None,
    };
    config.validate().map_err(|message| ModelError::Config {
        path: path.to_path_buf(),
        message: format!("(from its GGUF metadata) {message}"),
    })?;
    check_unsupported(&m, &config)?;
    Ok(config)
}

/// Refuses metadata that changes llama.cpp's computation in a way walsh does not
/// implement, naming the key; the values that change nothing pass.
fn check_unsupported(m: &Meta, c: &Config) -> Result<(), ModelError> {
    let key = |k: &str| format!("{ARCHITECTURE}.{k}");
    let hd = c.head_dim();
    let refuse = |k: &str, what: String| Err(meta(m.path, k, what));
    // RoPE scaling: none, or linear by a factor of 1 (0 is llama.cpp's "unset").
    let scaling = key("rope.scaling.type");
    match m.string(&scaling)? {
        None | Some("none") | Some("linear") => {}
        Some(other) => {
            return refuse(
                &scaling,
                format!("is `{other}`: walsh computes only unscaled RoPE (`none`)"),
            );
        }
    }
    for k in [key("rope.scaling.factor"), key("rope.scale_linear")] {
        if let Some(f) = m.float(&k)?
            && f != 0.0
            && f != 1.0
        {
            return refuse(&k, format!("is {f}: walsh computes only unscaled RoPE (1)"));
        }
    }
    for k in [
        "rope.dimension_count",
        "attention.key_length",
        "attention.value_length",
    ] {
        let k = key(k);
        if let Some(n) = m.uint(&k)?
            && n != hd
        {
            return refuse(
                &k,
                format!("is {n}: walsh computes heads of embedding_length / head_count = {hd}"),
            );
        }
    }
    for k in ["expert_count", "expert_used_count"] {
        let k = key(k);
        if let Some(n) = m.uint(&k)?
            && n > 0
        {
            return refuse(&k, format!("is {n}: walsh has no mixture of experts"));
        }
    }
    let k = key("vocab_size");
    if let Some(n) = m.uint(&k)?
        && n != c.vocab_size
    {
        return refuse(
            &k,
            format!("is {n} but token_embd.weight has {} rows", c.vocab_size),
        );
    }
    Ok(())
}

/// A tensor's dimensions (GGML order, innermost first) without trailing 1s, as usize:
/// llama.cpp reads `[n, 1]` as `[n]`.
fn dims(t: &TensorInfo) -> Vec<usize> {
    without_trailing_ones(
        t.dims
            .iter()
            .map(|&x| usize::try_from(x).unwrap_or(usize::MAX))
            .collect(),
    )
}

fn without_trailing_ones(mut d: Vec<usize>) -> Vec<usize> {
    while d.len() > 1 && d.last() == Some(&1) {
        d.pop();
    }
    d
}

/// One tensor as walsh holds it: `shape` in HF order (`[out, in]`), GGML's `[in, out]`;
/// q/k rows un-permuted by `rope_heads`.
fn load_tensor(
    path: &Path,
    info: &TensorInfo,
    walsh: &str,
    shape: &[usize],
    rope_heads: Option<usize>,
) -> Result<Tensor, ModelError> {
    let path_buf = || PathBuf::from(path);
    let ne: Vec<usize> = shape.iter().rev().copied().collect();
    if dims(info) != without_trailing_ones(ne.clone()) {
        return Err(ModelError::Shape {
            path: path_buf(),
            name: info.name.to_string(),
            expected: ne,
            found: dims(info),
        });
    }
    let rows = if shape.len() == 2 { shape[0] } else { 1 };
    let cols = shape.last().copied().unwrap_or(0);
    let unpermuted;
    let data = match rope_heads {
        Some(heads) if rows > 0 => {
            unpermuted = unpermute_rope_rows(info.data, rows, heads);
            &unpermuted[..]
        }
        _ => info.data,
    };
    let non_finite = || ModelError::NonFinite {
        path: path_buf(),
        name: info.name.to_string(),
    };
    let data = match info.ty {
        GgmlType::F32 => {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if !v.iter().all(|x| x.is_finite()) {
                return Err(non_finite());
            }
            TensorData::F32(v)
        }
        GgmlType::F16 => {
            let v: Vec<u16> = data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            if !v.iter().all(|&b| f16::from_bits(b).is_finite()) {
                return Err(non_finite());
            }
            TensorData::F16(v)
        }
        // bf16 is the top half of an f32: exact.
        GgmlType::Bf16 => {
            let v: Vec<f32> = data
                .chunks_exact(2)
                .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
                .collect();
            if !v.iter().all(|x| x.is_finite()) {
                return Err(non_finite());
            }
            TensorData::F32(v)
        }
        GgmlType::Q8_0 | GgmlType::Q4_0 if shape.len() == 2 => {
            let format = match info.ty {
                GgmlType::Q8_0 => QuantFormat::Q8,
                _ => QuantFormat::Q4,
            };
            let (words, scales) = walsh_blocks(format, data);
            let q = QuantMatrix::from_parts(format, rows, cols, words, scales).map_err(|e| {
                ModelError::Quantized {
                    path: path_buf(),
                    name: info.name.to_string(),
                    message: e.to_string(),
                }
            })?;
            TensorData::Quant(q)
        }
        other => {
            return Err(ModelError::GgufType {
                path: path_buf(),
                name: info.name.to_string(),
                found: other,
                expected: if shape.len() == 2 {
                    "F32, F16, BF16, Q8_0 or Q4_0 matrices"
                } else {
                    "F32, F16 or BF16 vectors"
                },
            });
        }
    };
    Ok(Tensor {
        name: walsh.to_string(),
        shape: shape.to_vec(),
        data,
    })
}

/// GGML Q8_0 / Q4_0 blocks as walsh's q8 / q4 words and f16 scales, bit for bit: Q8_0 is
/// the scale then 32 int8 levels (walsh's 8 words, little end first); Q4_0 the scale then
/// 16 bytes, byte `j` holding element `j` low and `j + 16` high (walsh: element `8w + i`
/// in nibble `i` of word `w`). The reader has checked the length is whole blocks.
fn walsh_blocks(format: QuantFormat, data: &[u8]) -> (Vec<u32>, Vec<u16>) {
    let block_bytes = 2 + BLOCK * format.bits() / 8;
    let blocks = data.len() / block_bytes;
    let mut words = Vec::with_capacity(blocks * format.words_per_block());
    let mut scales = Vec::with_capacity(blocks);
    for b in data.chunks_exact(block_bytes) {
        scales.push(u16::from_le_bytes([b[0], b[1]]));
        let levels = &b[2..];
        match format {
            QuantFormat::Q8 => words.extend(
                levels
                    .chunks_exact(4)
                    .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])),
            ),
            QuantFormat::Q4 => {
                let nibble = |k: usize| {
                    let byte = levels[k % (BLOCK / 2)];
                    u32::from(if k < BLOCK / 2 { byte & 0xf } else { byte >> 4 })
                };
                words.extend(
                    (0..BLOCK / 8)
                        .map(|w| (0..8).fold(0u32, |acc, i| acc | nibble(8 * w + i) << (4 * i))),
                );
            }
        }
    }
    (words, scales)
}
