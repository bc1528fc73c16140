//! A tokenizer from GGUF metadata, read as llama.cpp's `llama_vocab::impl::load` reads it
//! (docs/model-format.md#tokenizers lists the keys).

use super::bpe::{Bpe, Fallback};
use super::spm::Spm;
use super::{
    Model, PreTokenizer, Result, SpacePrefix, Token, TokenType, Tokenizer, TokenizerError, Vocab,
};
use crate::gguf::{Gguf, Value};

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const SCORES: &str = "tokenizer.ggml.scores";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const BOS: &str = "tokenizer.ggml.bos_token_id";
const EOS: &str = "tokenizer.ggml.eos_token_id";
const UNK: &str = "tokenizer.ggml.unknown_token_id";
const EOT: &str = "tokenizer.ggml.eot_token_id";
const EOM: &str = "tokenizer.ggml.eom_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// A merge as GGUF stores it, `"left right"`, split at the first space after the first
/// byte (so a left side may itself be a space); `("", "")` when there is none, as in
/// llama.cpp (a pair no symbol matches).
pub(super) fn split_merge(merge: &str) -> (&str, &str) {
    // A space is one byte, so both sides end on character boundaries.
    match merge.bytes().skip(1).position(|b| b == b' ') {
        Some(i) => (&merge[..i + 1], &merge[i + 2..]),
        None => ("", ""),
    }
}

impl Tokenizer {
    /// The tokenizer a GGUF file describes: `tokenizer.ggml.model` `llama` (SentencePiece)
    /// or `gpt2` (byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre` names).
    /// Errors name the key that is missing, of the wrong type or unsupported.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let model = gguf.get_str(MODEL)?;
        let texts = gguf.get_str_array(TOKENS)?;
        let n = texts.len();
        let check_len = |key: &str, len: usize| {
            if len < n {
                Err(TokenizerError::ShortArray {
                    key: key.to_string(),
                    len,
                    tokens: n,
                })
            } else {
                Ok(())
            }
        };
        // Scores: f32, or i32 as llama.cpp also accepts.
        let scores: Option<Vec<f32>> = match gguf.get(SCORES) {
            None => None,
            Some(Value::Array(a)) if a.elem() == crate::gguf::ValueType::I32 => Some(
                gguf.get_i32_array(SCORES)?
                    .into_iter()
                    .map(|s| s as f32)
                    .collect(),
            ),
            Some(_) => Some(gguf.get_f32_array(SCORES)?),
        };
        if let Some(s) = &scores {
            check_len(SCORES, s.len())?;
        }
        let types = gguf.get_opt::<Vec<i32>>(TOKEN_TYPE)?;
        if let Some(t) = &types {
            check_len(TOKEN_TYPE, t.len())?;
        }
        let tokens = texts
            .iter()
            .enumerate()
            .map(|(i, &text)| Token {
                // llama.cpp renames an empty token so that it never matches.
                text: if text.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    text.to_string()
                },
                ty: types
                    .as_ref()
                    .map_or(TokenType::Normal, |t| TokenType::from_gguf(t[i])),
                score: scores.as_ref().map_or(0.0, |s| s[i]),
                lstrip: false,
                rstrip: false,
            })
            .collect();
        let vocab = Vocab::new(tokens)?;
        let id = |key: &str| -> Result<Option<u32>> {
            match gguf.get_opt::<u32>(key)? {
                Some(id) if id as usize >= n => Err(TokenizerError::SpecialOutOfRange {
                    what: format!("`{key}`"),
                    id: u64::from(id),
                    vocab: n,
                }),
                id => Ok(id),
            }
        };
        let unk = id(UNK)?;

        let (mut tok, add_bos_default) = match model {
            "llama" => {
                let unk = unk.or((n > 0).then_some(0));
                let spm = Spm::new(&vocab, unk);
                let mut tok = Tokenizer::with_vocab(Model::Spm(Box::new(spm)), vocab);
                // llama.cpp's SentencePiece defaults.
                tok.bos = (n > 1).then_some(1);
                tok.eos = (n > 2).then_some(2);
                tok.space_prefix = if gguf.get_opt::<bool>(ADD_SPACE_PREFIX)?.unwrap_or(true) {
                    SpacePrefix::Every
                } else {
                    SpacePrefix::None
                };
                tok.escape_whitespace = true;
                tok.decode_strip = tok.space_prefix != SpacePrefix::None;
                (tok, true)
            }
            "gpt2" => {
                let pre_name = gguf
                    .get_opt::<&str>(PRE)?
                    .ok_or(TokenizerError::MissingPreTokenizer)?;
                let pre = PreTokenizer::from_gguf_name(pre_name)
                    .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre_name.into()))?;
                let merges = gguf.get_str_array(MERGES)?;
                let bpe = Bpe::new(
                    &vocab,
                    merges.iter().map(|m| split_merge(m)),
                    Some(pre),
                    true,
                    // llama.cpp sets ignore_merges (and add_bos) for llama3 only, of these.
                    pre == PreTokenizer::Llama3,
                    Fallback::RawBytes,
                    unk,
                );
                let tok = Tokenizer::with_vocab(Model::Bpe(Box::new(bpe)), vocab);
                (tok, pre == PreTokenizer::Llama3)
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        if let Some(bos) = id(BOS)? {
            tok.bos = Some(bos);
        }
        if let Some(eos) = id(EOS)? {
            tok.eos = Some(eos);
        }
        tok.add_bos = gguf.get_opt::<bool>(ADD_BOS)?.unwrap_or(add_bos_default);
        tok.add_eos = gguf.get_opt::<bool>(ADD_EOS)?.unwrap_or(false);
        let extra: Vec<u32> = [id(EOT)?, id(EOM)?].into_iter().flatten().collect();
        tok.find_eog(&extra);
        tok.chat_template = gguf.get_opt::<&str>(CHAT_TEMPLATE)?.map(str::to_string);
        Ok(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::split_merge;

    #[test]
    fn merges_split_at_the_first_space_after_the_first_byte() {
        assert_eq!(split_merge("Ġ t"), ("Ġ", "t"));
        assert_eq!(split_merge("a b c"), ("a", "b c"));
        assert_eq!(split_merge("  x"), (" ", "x"));
        assert_eq!(split_merge("ab"), ("", ""));
        assert_eq!(split_merge(""), ("", ""));
        assert_eq!(split_merge("é x"), ("é", "x"));
    }
}
