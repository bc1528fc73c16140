//! `walsh export --gguf`: a walsh model as a llama-architecture GGUF v3 file, so llama.cpp
//! runs the same weights (docs/model-format.md#gguf-export); [`super::gguf_load`] reads
//! these files (and llama.cpp's) back.
//!
//! - Variants: a dense/dense model is a plain llama file. walsh's Hadamard W_O and
//!   identity / residual-MLP query are written too, with walsh's keys (`walsh.attn_output`,
//!   `walsh.query`, `walsh.query_mlp_hidden`) and tensors (`blk.N.attn_output_scale`,
//!   `attn_output_bias`, `attn_q_down.weight`, `attn_q_up.weight`): walsh loads them,
//!   llama.cpp cannot run them (its llama architecture needs the missing
//!   `attn_output.weight` / `attn_q.weight`).
//! - Names: HF llama tensors become GGML's (`model.layers.N.self_attn.q_proj.weight` ->
//!   `blk.N.attn_q.weight`, ...); a tied head has no `output.weight` (llama.cpp then reads
//!   `token_embd.weight`).
//! - Shapes: GGML lists dimensions innermost first, so an HF `[out, in]` matrix is
//!   `ne = [in, out]`; the bytes are the same row-major rows.
//! - RoPE: walsh pairs `(i, i + head_dim/2)` (HF "rotate_half"), llama.cpp's llama
//!   architecture pairs `(2i, 2i + 1)`. The rows of q_proj and k_proj are permuted per head
//!   as llama.cpp's `convert_hf_to_gguf.py` does, `w.reshape(H, 2, hd/2, d).swapaxes(1, 2)`:
//!   GGUF row `h*hd + 2i + t` is walsh row `h*hd + t*hd/2 + i`. The dot products of q and
//!   k are unchanged, so the attention is the same.
//! - Types: norms F32; matrices F32, F16, Q8_0 or Q4_0 ([`GgufWeights`]). Q8_0 and Q4_0
//!   are walsh's own q8 and q4 blocks rewritten bit for bit (same f16 scale, same levels):
//!   Q8_0 is the scale then 32 int8 levels; Q4_0 the scale then 16 bytes, byte `j` holding
//!   element `j` in its low nibble and `j + 16` in its high nibble, stored level + 8.
//!   GGML quantizes only rows that are whole blocks of 32, so a matrix of another width
//!   (the shipped FFN's down projection, 688 wide) is written as F32 of walsh's
//!   dequantized levels: the same values, exactly. The embedding and an untied head keep
//!   their stored type, as `walsh quantize` leaves them.
//! - Tokenizer: llama.cpp's SentencePiece ("llama") vocabulary of the 256 byte tokens
//!   `<0x00>`..`<0xFF>` (type BYTE), so token id = byte value as in walsh; no BOS or EOS
//!   is added and no space prefixed.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use half::f16;
use thiserror::Error;

use super::quant;
use super::weights::{Model, Tensor, TensorData};
use super::{AttnOutput, Config, ModelError, Query};
use crate::blocks::{BLOCK, QuantError, QuantFormat, QuantMatrix, blocks_per_row};
/// The tensor types written here (F32, F16, Q4_0, Q8_0) are the reader's.
pub use crate::gguf::GgmlType;
use crate::gguf::ValueType;

/// The GGUF version written.
pub const GGUF_VERSION: u32 = 3;
/// Alignment of the tensor data section and of each tensor's offset in it.
pub const ALIGNMENT: usize = 32;
/// The vocabulary a byte tokenizer lists: one token per byte value.
pub const BYTE_VOCAB: usize = 256;
/// GGUF token type of a byte token (`<0xNN>`), as llama.cpp's `LLAMA_TOKEN_TYPE_BYTE`.
pub const TOKEN_TYPE_BYTE: i32 = 6;
/// The BOS and EOS ids written (llama.cpp's SentencePiece defaults): the control bytes
/// STX and ETX. walsh has neither token and llama.cpp is told not to add them; llama.cpp
/// stops a generation at EOS, which text never contains.
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;

/// The weight type of the exported matrices (`--weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufWeights {
    /// Every matrix F32: exact for any source.
    F32,
    /// Every matrix F16 (an f32 source is rounded to nearest).
    F16,
    /// Layer matrices as walsh q8 (`walsh quantize --weights q8`) in GGML Q8_0 blocks.
    Q8_0,
    /// Layer matrices as walsh q4 in GGML Q4_0 blocks.
    Q4_0,
}

impl GgufWeights {
    pub fn name(self) -> &'static str {
        match self {
            GgufWeights::F32 => "f32",
            GgufWeights::F16 => "f16",
            GgufWeights::Q8_0 => "q8_0",
            GgufWeights::Q4_0 => "q4_0",
        }
    }

    /// The walsh block format the layer matrices are quantized to.
    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            GgufWeights::Q8_0 => Some(QuantFormat::Q8),
            GgufWeights::Q4_0 => Some(QuantFormat::Q4),
            GgufWeights::F32 | GgufWeights::F16 => None,
        }
    }

    /// `general.file_type`: llama.cpp's `LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_Q8_0`,
    /// `MOSTLY_Q4_0`.
    pub fn file_type(self) -> u32 {
        match self {
            GgufWeights::F32 => 0,
            GgufWeights::F16 => 1,
            GgufWeights::Q8_0 => 7,
            GgufWeights::Q4_0 => 2,
        }
    }
}

impl fmt::Display for GgufWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgufWeights {
    type Err = GgufError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(GgufWeights::F32),
            "f16" => Ok(GgufWeights::F16),
            "q8_0" => Ok(GgufWeights::Q8_0),
            "q4_0" => Ok(GgufWeights::Q4_0),
            other => Err(GgufError::UnknownWeights(other.to_string())),
        }
    }
}

/// Why a model cannot be exported, or the file not written.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("unknown GGUF weight type `{0}` (expected f32, f16, q8_0 or q4_0)")]
    UnknownWeights(String),

    #[error(
        "{dir} has a vocabulary of {vocab}: the GGUF byte tokenizer lists exactly {BYTE_VOCAB} byte tokens"
    )]
    Vocab { dir: PathBuf, vocab: usize },

    #[error(
        "{dir} holds {stored} weights: export them as --weights {same} (bit for bit) or f32, \
         or export {requested} from the f16/f32 model"
    )]
    Requantize {
        dir: PathBuf,
        stored: QuantFormat,
        same: GgufWeights,
        requested: GgufWeights,
    },

    #[error("tensor `{name}`: {source}")]
    Quant {
        name: String,
        #[source]
        source: QuantError,
    },

    #[error(transparent)]
    Model(#[from] ModelError),

    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`write_gguf`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufSummary {
    pub weights: GgufWeights,
    /// Every tensor written with its GGML name and type, in file order.
    pub tensors: Vec<(String, GgmlType)>,
    /// The file's length.
    pub bytes: usize,
}

/// A metadata value (the GGUF types this writer needs).
enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A GGUF string: u64 length, then UTF-8 bytes (no terminator).
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U32(v) => {
            put_u32(out, ValueType::U32.code());
            put_u32(out, *v);
        }
        Value::F32(v) => {
            put_u32(out, ValueType::F32.code());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Bool(v) => {
            put_u32(out, ValueType::Bool.code());
            out.push(u8::from(*v));
        }
        Value::Str(s) => {
            put_u32(out, ValueType::String.code());
            put_str(out, s);
        }
        Value::Strs(v) => {
            put_u32(out, ValueType::Array.code());
            put_u32(out, ValueType::String.code());
            put_u64(out, v.len() as u64);
            v.iter().for_each(|s| put_str(out, s));
        }
        Value::F32s(v) => {
            put_u32(out, ValueType::Array.code());
            put_u32(out, ValueType::F32.code());
            put_u64(out, v.len() as u64);
            v.iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        Value::I32s(v) => {
            put_u32(out, ValueType::Array.code());
            put_u32(out, ValueType::I32.code());
            put_u64(out, v.len() as u64);
            v.iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
    }
}

/// One tensor as it goes into the file.
struct GgufTensor {
    name: String,
    /// GGML order: innermost (the row length) first.
    ne: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// The model the export writes, with walsh's own quantizer applied for `weights` q8_0 and
/// q4_0, after checking that llama.cpp's llama architecture can express it.
fn prepared(model: &Model, weights: GgufWeights) -> Result<Cow<'_, Model>, GgufError> {
    // The fields are public: check the shapes the rows are cut by.
    model.validate()?;
    let c = &model.config;
    if c.vocab_size != BYTE_VOCAB {
        return Err(GgufError::Vocab {
            dir: model.dir.clone(),
            vocab: c.vocab_size,
        });
    }
    let requantize = |stored: QuantFormat| GgufError::Requantize {
        dir: model.dir.clone(),
        stored,
        same: match stored {
            QuantFormat::Q8 => GgufWeights::Q8_0,
            QuantFormat::Q4 => GgufWeights::Q4_0,
        },
        requested: weights,
    };
    let stored = c.quantization.map(|q| q.weights);
    match (stored, weights.quant()) {
        (None, None) => Ok(Cow::Borrowed(model)),
        // f32 of scale x level is exact; f16 of it is not.
        (Some(_), None) if weights == GgufWeights::F32 => Ok(Cow::Borrowed(model)),
        (Some(s), None) => Err(requantize(s)),
        (Some(s), Some(want)) if s == want => Ok(Cow::Borrowed(model)),
        (Some(s), Some(_)) => Err(requantize(s)),
        (None, Some(want)) => Ok(Cow::Owned(quant::quantized(model, want)?.0)),
    }
}

/// The GGUF bytes of `model` (llama architecture, `general.name` = `name`) with matrices
/// as `weights`.
pub fn gguf_bytes(model: &Model, name: &str, weights: GgufWeights) -> Result<Vec<u8>, GgufError> {
    Ok(build(model, name, weights)?.0)
}

/// [`gguf_bytes`] written to `path` (replacing a file there).
pub fn write_gguf(
    model: &Model,
    name: &str,
    weights: GgufWeights,
    path: &Path,
) -> Result<GgufSummary, GgufError> {
    let (bytes, tensors) = build(model, name, weights)?;
    std::fs::write(path, &bytes).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(GgufSummary {
        weights,
        tensors,
        bytes: bytes.len(),
    })
}

type Built = (Vec<u8>, Vec<(String, GgmlType)>);

fn build(model: &Model, name: &str, weights: GgufWeights) -> Result<Built, GgufError> {
    let model = prepared(model, weights)?;
    let c = &model.config;
    let w = &model.weights;

    let mut tensors = Vec::new();
    for t in w.tensors() {
        // validate() put every tensor in its slot, so every name has a GGUF name.
        let name = gguf_name(&t.name).ok_or_else(|| ModelError::UnexpectedTensor {
            path: model.dir.join(super::weights::WEIGHTS_FILE),
            name: t.name.clone(),
            variant: c.variant(),
        })?;
        tensors.push(match t.shape.len() {
            1 => vector(&name, t),
            _ => matrix(&name, t, weights, rope_heads(c, &t.name))?,
        });
    }

    let tokens: Vec<String> = (0..BYTE_VOCAB).map(|b| format!("<0x{b:02X}>")).collect();
    let u32_of = |v: usize| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::Str("llama".into())),
        ("general.name", Value::Str(name.to_string())),
        ("general.file_type", Value::U32(weights.file_type())),
        ("general.alignment", u32_of(ALIGNMENT)),
        ("llama.context_length", u32_of(c.max_position_embeddings)),
        ("llama.embedding_length", u32_of(c.hidden_size)),
        ("llama.block_count", u32_of(c.num_hidden_layers)),
        ("llama.feed_forward_length", u32_of(c.intermediate_size)),
        ("llama.attention.head_count", u32_of(c.num_attention_heads)),
        ("llama.attention.head_count_kv", u32_of(c.kv_heads())),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base", Value::F32(c.rope_theta as f32)),
        ("llama.rope.dimension_count", u32_of(c.head_dim())),
        ("llama.vocab_size", u32_of(c.vocab_size)),
        ("tokenizer.ggml.model", Value::Str("llama".into())),
        ("tokenizer.ggml.tokens", Value::Strs(tokens)),
        ("tokenizer.ggml.scores", Value::F32s(vec![0.0; BYTE_VOCAB])),
        (
            "tokenizer.ggml.token_type",
            Value::I32s(vec![TOKEN_TYPE_BYTE; BYTE_VOCAB]),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(BOS_ID)),
        ("tokenizer.ggml.eos_token_id", Value::U32(EOS_ID)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(false)),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
    ];

    // walsh's variants (absent for dense/dense, so those files are llama.cpp's as before).
    if c.attn_output != AttnOutput::Dense {
        metadata.push((
            ATTN_OUTPUT_KEY,
            Value::Str(attn_output_name(c.attn_output).into()),
        ));
    }
    if c.query != Query::Dense {
        metadata.push((QUERY_KEY, Value::Str(query_name(c.query).into())));
    }
    // As config.json: absent means d / 2.
    if let (Query::ResidualMlp, Some(h)) = (c.query, c.query_mlp_hidden) {
        metadata.push((QUERY_MLP_HIDDEN_KEY, u32_of(h)));
    }

    let mut out = Vec::new();
    out.extend_from_slice(&crate::gguf::MAGIC);
    put_u32(&mut out, GGUF_VERSION);
    put_u64(&mut out, tensors.len() as u64);
    put_u64(&mut out, metadata.len() as u64);
    for (key, value) in &metadata {
        put_str(&mut out, key);
        put_value(&mut out, value);
    }
    // Tensor infos: offsets relative to the data section, each aligned.
    let mut offset = 0usize;
    for t in &tensors {
        put_str(&mut out, &t.name);
        put_u32(&mut out, t.ne.len() as u32);
        t.ne.iter().for_each(|&d| put_u64(&mut out, d));
        put_u32(&mut out, t.ty.id());
        put_u64(&mut out, offset as u64);
        offset = (offset + t.data.len()).next_multiple_of(ALIGNMENT);
    }
    let data_start = out.len().next_multiple_of(ALIGNMENT);
    out.reserve(data_start - out.len() + offset);
    out.resize(data_start, 0);
    for t in &tensors {
        out.extend_from_slice(&t.data);
        let end = (out.len() - data_start).next_multiple_of(ALIGNMENT) + data_start;
        out.resize(end, 0);
    }
    let names = tensors.into_iter().map(|t| (t.name, t.ty)).collect();
    Ok((out, names))
}

/// A norm weight: F32 (exact for f16 and f32 sources).
fn vector(name: &str, t: &Tensor) -> GgufTensor {
    GgufTensor {
        name: name.to_string(),
        ne: vec![t.len() as u64],
        ty: GgmlType::F32,
        data: t.to_f32().iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A `[rows, cols]` matrix in the type `weights` gives it (module docs), its rows
/// permuted from rotate_half to interleaved RoPE pairs when `rope_heads` is given.
fn matrix(
    name: &str,
    t: &Tensor,
    weights: GgufWeights,
    rope_heads: Option<usize>,
) -> Result<GgufTensor, GgufError> {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (ty, data) = match (&t.data, weights) {
        (TensorData::Quant(q), _) if weights != GgufWeights::F32 && cols % BLOCK == 0 => {
            let blocks = ggml_blocks(q).map_err(|source| GgufError::Quant {
                name: t.name.clone(),
                source,
            })?;
            let ty = match q.format {
                QuantFormat::Q8 => GgmlType::Q8_0,
                QuantFormat::Q4 => GgmlType::Q4_0,
            };
            (ty, blocks)
        }
        // GGML's blocks need whole rows of 32: the exact values instead.
        (TensorData::Quant(q), _) => (GgmlType::F32, f32_bytes(&q.dequantize())),
        (_, GgufWeights::F32) => (GgmlType::F32, f32_bytes(&t.to_f32())),
        (TensorData::F16(bits), _) => (
            GgmlType::F16,
            bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        ),
        (TensorData::F32(v), GgufWeights::F16) => (
            GgmlType::F16,
            v.iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
        ),
        // What a q8_0/q4_0 export leaves unquantized (embedding, head) stays as stored.
        (TensorData::F32(v), _) => (GgmlType::F32, f32_bytes(v)),
    };
    let data = match rope_heads {
        Some(heads) => permute_rope_rows(&data, rows, heads),
        None => data,
    };
    Ok(GgufTensor {
        name: name.to_string(),
        ne: vec![cols as u64, rows as u64],
        ty,
        data,
    })
}

/// `walsh.attn_output`: `"hadamard"` for a Hadamard W_O (absent: dense).
pub const ATTN_OUTPUT_KEY: &str = "walsh.attn_output";
/// `walsh.query`: `"identity"` or `"residual_mlp"` (absent: dense).
pub const QUERY_KEY: &str = "walsh.query";
/// `walsh.query_mlp_hidden`: the residual query MLP's width (u32; absent: d / 2).
pub const QUERY_MLP_HIDDEN_KEY: &str = "walsh.query_mlp_hidden";

/// The value of [`ATTN_OUTPUT_KEY`] (and of `attn_output` in config.json).
pub fn attn_output_name(a: AttnOutput) -> &'static str {
    match a {
        AttnOutput::Dense => "dense",
        AttnOutput::Hadamard => "hadamard",
    }
}

/// The value of [`QUERY_KEY`] (and of `query` in config.json).
pub fn query_name(q: Query) -> &'static str {
    match q {
        Query::Dense => "dense",
        Query::Identity => "identity",
        Query::ResidualMlp => "residual_mlp",
    }
}

/// The GGUF name of a walsh (Hugging Face) tensor name, `None` for a name no walsh model
/// has: llama.cpp's names (`blk.N.attn_q.weight`, ...) and, for walsh's variants,
/// `blk.N.attn_q_down.weight` / `attn_q_up.weight` (residual-MLP query) and
/// `blk.N.attn_output_scale` / `attn_output_bias` (Hadamard W_O). The one table the
/// export writes by and the loader ([`super::gguf_load`]) reads by.
pub fn gguf_name(walsh: &str) -> Option<String> {
    match walsh {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = walsh.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    // Digits only, no sign or leading zero: one spelling per layer.
    if layer.is_empty()
        || !layer.bytes().all(|b| b.is_ascii_digit())
        || (layer.len() > 1 && layer.starts_with('0'))
    {
        return None;
    }
    let gguf = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.q_down.weight" => "attn_q_down.weight",
        "self_attn.q_up.weight" => "attn_q_up.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.o_scale" => "attn_output_scale",
        "self_attn.o_bias" => "attn_output_bias",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}"))
}

/// The heads whose rows a tensor's GGUF form permutes for llama.cpp's interleaved RoPE:
/// the query heads for `q_proj`, the KV heads for `k_proj` (grouped-query attention);
/// `None` for every other tensor. A residual-MLP query's `q_up` is stored as walsh holds
/// it (its rows add to the unpermuted input), as no llama.cpp runs it anyway.
pub fn rope_heads(config: &Config, walsh: &str) -> Option<usize> {
    if walsh.ends_with(".self_attn.q_proj.weight") {
        Some(config.num_attention_heads)
    } else if walsh.ends_with(".self_attn.k_proj.weight") {
        Some(config.kv_heads())
    } else {
        None
    }
}

/// The inverse of [`permute_rope_rows`]: rows in GGML's interleaved order back to HF
/// rotate_half order (row `h*hd + t*hd/2 + i` of the result is row `h*hd + 2i + t` of
/// `data`). `rows` must be `heads` x an even head size (the config's rules).
pub fn unpermute_rope_rows(data: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows.max(1);
    let hd = rows / heads.max(1);
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for t in 0..2 {
            for i in 0..hd / 2 {
                let src = h * hd + 2 * i + t;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Rows of `data` (`rows` of equal length) reordered per head from HF rotate_half pairs
/// `(i, i + hd/2)` to GGML's interleaved `(2i, 2i + 1)`: row `h*hd + 2i + t` of the result
/// is row `h*hd + t*hd/2 + i` of `data`.
pub fn permute_rope_rows(data: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows;
    let hd = rows / heads;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for i in 0..hd / 2 {
            for t in 0..2 {
                let src = h * hd + t * (hd / 2) + i;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// GGML Q8_0 / Q4_0 blocks of a walsh q8 / q4 matrix whose width is whole blocks: the same
/// f16 scale and levels, re-packed (module docs).
fn ggml_blocks(q: &QuantMatrix) -> Result<Vec<u8>, QuantError> {
    let blocks = q.rows * blocks_per_row(q.cols);
    let words = q.format.words_per_block();
    if q.data.len() != blocks * words || q.scales.len() != blocks {
        return Err(QuantError::DataLength {
            format: q.format,
            rows: q.rows,
            cols: q.cols,
            expected: blocks * words,
            found: q.data.len(),
        });
    }
    let block_bytes = 2 + BLOCK * q.format.bits() / 8;
    let mut out = Vec::with_capacity(blocks * block_bytes);
    for (scale, levels) in q.scales.iter().zip(q.data.chunks_exact(words)) {
        out.extend_from_slice(&scale.to_le_bytes());
        match q.format {
            // Value 4j + i is byte i of word j, little end first: the int8s in order.
            QuantFormat::Q8 => levels
                .iter()
                .for_each(|w| out.extend_from_slice(&w.to_le_bytes())),
            // Value 8j + i is nibble i of word j (level + 8, as GGML stores it).
            QuantFormat::Q4 => {
                let nibble = |k: usize| ((levels[k / 8] >> (4 * (k % 8))) & 0xf) as u8;
                out.extend((0..BLOCK / 2).map(|j| nibble(j) | nibble(j + BLOCK / 2) << 4));
            }
        }
    }
    Ok(out)
}
