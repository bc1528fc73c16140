//! Typed errors of model loading and running. Each names the file, the tensor, and what
//! was expected against what was found.

use std::path::PathBuf;

use thiserror::Error;

use crate::gpu::GpuError;
use crate::ops::attention::KvError;
use crate::ops::hadamard::WhtError;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid model config: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: crate::tokenizer::TokenizerError,
    },

    #[error("{path}: the tokenizer has {tokens} tokens, more than the model's vocab_size {vocab}")]
    TokenizerTooLarge {
        path: PathBuf,
        tokens: usize,
        vocab: usize,
    },

    #[error("{path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: crate::gguf::GgufReadError,
    },

    #[error("{path}: GGUF key `{key}` {message}")]
    GgufMetadata {
        path: PathBuf,
        key: String,
        message: String,
    },

    #[error("{path}: tensor `{name}` is {found}: walsh reads {expected}")]
    GgufType {
        path: PathBuf,
        name: String,
        found: crate::gguf::GgmlType,
        expected: &'static str,
    },

    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: unexpected tensor `{name}` (not part of this {variant} model)")]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        variant: String,
    },

    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: tensor `{name}` has dtype {found}, expected F32 or F16")]
    DType {
        path: PathBuf,
        name: String,
        found: String,
    },

    #[error("{path}: quantized tensor `{name}`: {message}")]
    Quantized {
        path: PathBuf,
        name: String,
        message: String,
    },

    #[error("{path}: tensor `{name}` contains a non-finite value (NaN or infinity)")]
    NonFinite { path: PathBuf, name: String },

    #[error(
        "prompt of {tokens} tokens plus {new} new tokens exceeds the model's context of {context} positions"
    )]
    ContextOverflow {
        tokens: usize,
        new: usize,
        context: usize,
    },

    #[error("invalid input: {0}")]
    Input(String),

    #[error(transparent)]
    Gpu(#[from] GpuError),

    #[error(transparent)]
    Wht(#[from] WhtError),

    #[error(transparent)]
    Kv(#[from] KvError),
}
