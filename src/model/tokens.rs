//! A model's tokenizer: `tokenizer.json` (with `tokenizer_config.json` where present) in
//! the model's directory, or walsh's byte-level tokenizer when there is none (the shipped
//! models). What the formats hold and how each is read: docs/model-format.md#tokenizers.

use std::path::Path;

use super::{Config, ModelError};
use crate::limits::read_at_most;
use crate::tokenizer::Tokenizer;

/// The Hugging Face tokenizer file in a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Its companion: BOS/EOS, add-BOS flags and the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Largest tokenizer file read: Llama 3's is 9 MB, Gemma's 33 MB.
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// The tokenizer of the model in `dir` (byte-level without a `tokenizer.json`), checked
/// against its config: every token id must have a row of the embedding. When `dir` is a
/// GGUF file ([`Model::load`](super::weights::Model::load) loads those too), the
/// tokenizer its metadata describes ([`super::gguf_load::tokenizer_from_gguf`]).
pub fn load_tokenizer(dir: &Path, config: &Config) -> Result<Tokenizer, ModelError> {
    if super::gguf_load::is_gguf_file(dir) {
        let bytes = super::gguf_load::read_gguf(dir)?;
        let gguf = super::gguf_load::parse(dir, &bytes)?;
        return super::gguf_load::tokenizer_from_gguf(dir, &gguf, config);
    }
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Ok(Tokenizer::byte_level());
    }
    let read = |path: &Path| {
        read_at_most(path, MAX_TOKENIZER_BYTES, "a tokenizer").map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let json = read(&path)?;
    let config_path = dir.join(TOKENIZER_CONFIG_FILE);
    let companion = if config_path.is_file() {
        Some(read(&config_path)?)
    } else {
        None
    };
    let tokenizer = Tokenizer::from_hf_json(&json, companion.as_deref()).map_err(|source| {
        ModelError::Tokenizer {
            path: path.clone(),
            source,
        }
    })?;
    fits(&path, &tokenizer, config)?;
    Ok(tokenizer)
}

/// Refuses a tokenizer whose ids reach past the model's vocabulary (a model may have
/// more rows than tokens: vocabularies padded to a multiple of 64 or 128).
pub fn fits(path: &Path, tokenizer: &Tokenizer, config: &Config) -> Result<(), ModelError> {
    let tokens = tokenizer.vocab_size();
    if tokens > config.vocab_size {
        return Err(ModelError::TokenizerTooLarge {
            path: path.to_path_buf(),
            tokens,
            vocab: config.vocab_size,
        });
    }
    Ok(())
}
