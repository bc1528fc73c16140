//! Tokenizers: text to token ids and back.
//!
//! Three kinds, one [`Tokenizer`] type:
//!
//! - **Byte-level** ([`Tokenizer::byte_level`]): walsh's own models; token id = byte value,
//!   256 tokens, no special tokens. Encoding is `text.bytes()`, exactly what
//!   `model::generate::encode_text` does.
//! - **BPE** with GPT-2-style byte-level pre-tokenization (GPT-2, Llama 3, Qwen2; llama.cpp's
//!   `gpt2` vocabulary type): text is split into words by the model's pre-tokenizer
//!   ([`PreTokenizer`], from GGUF `tokenizer.ggml.pre`), each word's bytes become GPT-2's
//!   printable characters, and adjacent symbols merge lowest merge rank first (ties: the
//!   leftmost), as llama.cpp's `llm_tokenizer_bpe_session` does. Loaded from a Hugging Face
//!   `tokenizer.json` the same engine also runs Llama-2-style BPE without byte mapping
//!   (`byte_fallback`, spaces as `▁`).
//! - **SentencePiece** (llama.cpp's `llama` vocabulary type: Llama 2, TinyLlama): spaces
//!   become `▁`, a `▁` is put in front of the text (`add_space_prefix`), symbols merge by
//!   the highest score of the merged token (ties: the leftmost), and what is left outside
//!   the vocabulary falls back to `<0xNN>` byte tokens, as `llm_tokenizer_spm_session`.
//!
//! Special tokens (llama.cpp's control, user-defined and unknown token types; Hugging Face's
//! added tokens) are cut out of the text before any of this, longest first, as llama.cpp's
//! `tokenizer_st_partition`: user-defined ones always, control and unknown ones only when
//! [`Tokenizer::encode_with`] is asked to parse them. Token ids are `u32`.
//!
//! The pieces: [`Tokenizer::encode`] (text to ids), [`Tokenizer::decode`] (ids to bytes),
//! [`Detokenizer`] (ids to text as they come, holding back split UTF-8 sequences),
//! [`Tokenizer::from_gguf`], [`Tokenizer::from_hf_json`]. docs/model-format.md#tokenizers
//! says which keys are read from where.

mod bpe;
mod load_gguf;
mod load_hf;
mod pretokenize;
mod spm;
mod stream;
#[cfg(test)]
mod tests;
mod unicode;
mod unicode_data;

use std::borrow::Cow;
use std::collections::HashMap;

use thiserror::Error;

use crate::gguf::GgufReadError;
pub use pretokenize::PreTokenizer;
pub use stream::{Detokenizer, Utf8Buffer};

/// Why a tokenizer cannot be built, or ids cannot be decoded.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufReadError),

    #[error(
        "tokenizer model `{0}` is not supported (walsh reads `llama` (SentencePiece) and \
         `gpt2` (byte-level BPE))"
    )]
    UnsupportedModel(String),

    #[error(
        "pre-tokenizer `{0}` is not supported (walsh reads gpt-2, llama-bpe (llama3), qwen2, \
         qwen35 and their aliases)"
    )]
    UnsupportedPreTokenizer(String),

    #[error("a gpt2 (BPE) vocabulary needs `tokenizer.ggml.pre` to pick its pre-tokenizer")]
    MissingPreTokenizer,

    #[error("`{key}` has {len} entries for a vocabulary of {tokens} tokens")]
    ShortArray {
        key: String,
        len: usize,
        tokens: usize,
    },

    #[error("the vocabulary is empty")]
    EmptyVocabulary,

    #[error("the vocabulary has {0} tokens: ids are u32")]
    VocabularyTooLarge(usize),

    #[error("token `{text}` appears twice in the vocabulary (ids {first} and {second})")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },

    #[error("{what} is token {id}, outside the vocabulary of {vocab}")]
    SpecialOutOfRange { what: String, id: u64, vocab: usize },

    #[error("tokenizer.json: {0}")]
    Json(String),

    #[error("tokenizer.json: {0} is not supported")]
    UnsupportedHf(String),

    #[error("token id {id} is outside the vocabulary of {vocab}")]
    UnknownId { id: u32, vocab: usize },
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// The kind of tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Token id = byte value (walsh's shipped models).
    Byte,
    /// Merge-rank BPE (GPT-2 byte-level; or Llama-2 style from a tokenizer.json).
    Bpe,
    /// SentencePiece-style score merging with byte fallback (llama.cpp's `llama`).
    Spm,
}

/// What a token is, as GGUF's `tokenizer.ggml.token_type` (llama.cpp's `LLAMA_TOKEN_TYPE_*`)
/// says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Text (type 1).
    Normal,
    /// The unknown token (type 2): special, matched in text only when parsing specials.
    Unknown,
    /// A control token such as BOS or `<|im_start|>` (type 3): as `Unknown`, and decoded
    /// to nothing unless specials are rendered.
    Control,
    /// An added token (type 4): matched in text always, decoded as its text.
    UserDefined,
    /// Unused (type 5): never produced by encoding, decoded to nothing.
    Unused,
    /// A `<0xNN>` byte token (type 6), decoded to its byte.
    Byte,
    /// Anything else (type 0 or unknown codes): decoded to nothing.
    Undefined,
}

impl TokenType {
    /// The type of a GGUF `token_type` code.
    pub fn from_gguf(code: i32) -> Self {
        match code {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// Cut out of text before tokenizing (llama.cpp's special-token cache).
    fn is_special(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }
}

/// Where a `▁` is put in front of text before SentencePiece-style tokenizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpacePrefix {
    None,
    /// Before every run of text between special tokens (llama.cpp's SPM with
    /// `add_space_prefix`; Hugging Face's `Prepend` normalizer, `Metaspace` "always").
    Every,
    /// Before every run of text that does not already begin with a space (`Metaspace`,
    /// `prepend_scheme` "always").
    Always,
    /// As `Always`, for the text at the very start only (`prepend_scheme` "first").
    First,
}

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
struct Token {
    /// As stored: GPT-2 characters for byte-level BPE, `▁` for spaces in SentencePiece.
    text: String,
    ty: TokenType,
    score: f32,
    /// Hugging Face added tokens: whitespace before (`lstrip`) or after (`rstrip`) a match
    /// is taken with it.
    lstrip: bool,
    rstrip: bool,
}

/// The vocabulary and its reverse map.
#[derive(Clone, Debug, Default)]
struct Vocab {
    tokens: Vec<Token>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    fn new(tokens: Vec<Token>) -> Result<Self> {
        if tokens.is_empty() {
            return Err(TokenizerError::EmptyVocabulary);
        }
        if u32::try_from(tokens.len()).is_err() {
            return Err(TokenizerError::VocabularyTooLarge(tokens.len()));
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(t.text.clone(), i as u32) {
                return Err(TokenizerError::DuplicateToken {
                    text: t.text.clone(),
                    first,
                    second: i as u32,
                });
            }
        }
        Ok(Vocab { tokens, ids })
    }

    fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The `<0xNN>` token of each byte.
    fn byte_tokens(&self) -> [Option<u32>; 256] {
        std::array::from_fn(|b| self.id(&format!("<0x{b:02X}>")))
    }
}

/// Texts llama.cpp treats as end-of-generation (and as control tokens, whatever their
/// type) in every vocabulary (llama-vocab.cpp: its EOT and EOG lists).
const EOG_TEXTS: [&str; 22] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// One symbol of a word in the merge engines (`bpe`, `spm`): `len` bytes from `start`,
/// linked to its neighbours ([`NONE`]: none); `len` 0 once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

/// No neighbour.
const NONE: usize = usize::MAX;

impl Symbol {
    /// One symbol per character of `text`, each linked to its neighbours.
    fn chain(text: &str) -> Vec<Symbol> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: if i == 0 { NONE } else { i - 1 },
                next: i + 1,
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = NONE;
        }
        symbols
    }
}

/// How the merge engine runs (module docs).
#[derive(Clone, Debug)]
enum Model {
    Byte,
    Bpe(Box<bpe::Bpe>),
    Spm(Box<spm::Spm>),
}

/// A tokenizer (module docs). Cheap to share by reference; encoding and decoding take
/// `&self`.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    model: Model,
    vocab: Vocab,
    /// Special tokens, longest text first (ties by id), for cutting them out of text.
    specials: Vec<u32>,
    space_prefix: SpacePrefix,
    /// Spaces become `▁` before the model and back when decoding.
    escape_whitespace: bool,
    /// Decoding a text drops one space in front of its first token (the one the space
    /// prefix put there).
    decode_strip: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eog: Vec<u32>,
    chat_template: Option<String>,
}

/// A piece of text between special tokens, or a special token.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

impl Tokenizer {
    /// walsh's byte-level tokenizer: id = byte value.
    pub fn byte_level() -> Self {
        Tokenizer {
            model: Model::Byte,
            vocab: Vocab::default(),
            specials: Vec::new(),
            space_prefix: SpacePrefix::None,
            escape_whitespace: false,
            decode_strip: false,
            bos: None,
            eos: None,
            add_bos: false,
            add_eos: false,
            eog: Vec::new(),
            chat_template: None,
        }
    }

    /// The tokenizer of a model whose vocabulary is `tokens`, with everything else at its
    /// default, for the loaders to adjust.
    fn with_vocab(model: Model, vocab: Vocab) -> Self {
        Tokenizer {
            model,
            specials: special_list(&vocab),
            vocab,
            ..Tokenizer::byte_level()
        }
    }

    /// Marks the end-of-generation tokens: EOS, `extra` (GGUF's EOT and EOM ids) and those
    /// whose text llama.cpp recognizes (which become control tokens, as there).
    fn find_eog(&mut self, extra: &[u32]) {
        let mut eog: Vec<u32> = self.eos.into_iter().chain(extra.iter().copied()).collect();
        for text in EOG_TEXTS {
            if let Some(id) = self.vocab.id(text) {
                let t = &mut self.vocab.tokens[id as usize];
                if !t.ty.is_special() || t.ty == TokenType::UserDefined {
                    t.ty = TokenType::Control;
                }
                eog.push(id);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        self.eog = eog;
        // Types may have changed: the special list again.
        self.specials = special_list(&self.vocab);
    }

    pub fn kind(&self) -> TokenizerKind {
        match self.model {
            Model::Byte => TokenizerKind::Byte,
            Model::Bpe(_) => TokenizerKind::Bpe,
            Model::Spm(_) => TokenizerKind::Spm,
        }
    }

    /// The number of token ids (256 for the byte-level tokenizer).
    pub fn vocab_size(&self) -> usize {
        match self.model {
            Model::Byte => 256,
            _ => self.vocab.tokens.len(),
        }
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(text, true)` starts with BOS / ends with EOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// Whether `id` ends a generation (EOS, EOT, `<|im_end|>`, ...; sorted).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The chat template (a Jinja source), if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The id of a token by its text as stored (`<|im_start|>`, `▁the`, `Ġthe`).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match self.model {
            Model::Byte => None,
            _ => self.vocab.id(text),
        }
    }

    /// A token's text as stored, and its type.
    pub fn token(&self, id: u32) -> Option<(&str, TokenType)> {
        self.vocab
            .tokens
            .get(id as usize)
            .map(|t| (t.text.as_str(), t.ty))
    }

    /// `text` as token ids, with BOS / EOS when `add_special` and the model adds them.
    /// User-defined tokens in the text are matched; control tokens are not (their text is
    /// tokenized as text): llama.cpp's `tokenize(text, add_special, parse_special = false)`.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        self.encode_with(text, add_special, false)
    }

    /// [`Tokenizer::encode`], with control tokens in the text matched as well when
    /// `parse_special` (for text a chat template rendered; Hugging Face's `encode`).
    pub fn encode_with(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if let Model::Byte = self.model {
            out.extend(text.bytes().map(u32::from));
            return out;
        }
        if add_special
            && self.add_bos
            && let Some(bos) = self.bos
        {
            out.push(bos);
        }
        for (i, fragment) in self.partition(text, parse_special).into_iter().enumerate() {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(t) => {
                    // The first fragment, when text, starts the text.
                    let prefixed = self.prefixed(t, i == 0);
                    match &self.model {
                        Model::Bpe(m) => m.encode(&self.vocab, &prefixed, &mut out),
                        Model::Spm(m) => m.encode(&self.vocab, &prefixed, &mut out),
                        Model::Byte => {}
                    }
                }
            }
        }
        if add_special
            && self.add_eos
            && let Some(eos) = self.eos
        {
            out.push(eos);
        }
        out
    }

    /// A run of text as the merge engine sees it: the space prefix, spaces as `▁`.
    fn prefixed<'t>(&self, text: &'t str, at_start: bool) -> Cow<'t, str> {
        let prefix = match self.space_prefix {
            SpacePrefix::None => false,
            SpacePrefix::Every => true,
            SpacePrefix::Always => !text.starts_with(' '),
            SpacePrefix::First => at_start && !text.starts_with(' '),
        };
        if !prefix && !self.escape_whitespace {
            return Cow::Borrowed(text);
        }
        let mut s = String::with_capacity(text.len() + 3);
        if prefix {
            s.push(' ');
        }
        s.push_str(text);
        if self.escape_whitespace {
            s = s.replace(' ', "\u{2581}");
        }
        Cow::Owned(s)
    }

    /// `text` cut at special tokens, longest first, each at every non-overlapping
    /// occurrence from the left (llama.cpp's `tokenizer_st_partition`).
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(text));
        for &id in &self.specials {
            let token = &self.vocab.tokens[id as usize];
            if !parse_special && matches!(token.ty, TokenType::Control | TokenType::Unknown) {
                continue;
            }
            let needle = token.text.as_str();
            if needle.is_empty() {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    let mut left = &rest[..at];
                    if token.lstrip {
                        left = left.trim_end_matches(is_c_space);
                    }
                    if !left.is_empty() {
                        next.push(Fragment::Text(left));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + needle.len()..];
                    if token.rstrip {
                        rest = rest.trim_start_matches(is_c_space);
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The bytes of token `id`: control and unknown tokens give their text only when
    /// `special` (llama.cpp's `token_to_piece`).
    pub fn piece(&self, id: u32, special: bool) -> Result<Cow<'_, [u8]>> {
        if let Model::Byte = self.model {
            return u8::try_from(id)
                .map(|b| Cow::Owned(vec![b]))
                .map_err(|_| TokenizerError::UnknownId { id, vocab: 256 });
        }
        let token = self
            .vocab
            .tokens
            .get(id as usize)
            .ok_or(TokenizerError::UnknownId {
                id,
                vocab: self.vocab.tokens.len(),
            })?;
        let text = token.text.as_str();
        Ok(match token.ty {
            TokenType::Control | TokenType::Unknown if !special => Cow::Borrowed(&[]),
            TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                Cow::Borrowed(text.as_bytes())
            }
            TokenType::Byte => match byte_of(text) {
                Some(b) => Cow::Owned(vec![b]),
                None => Cow::Borrowed(text.as_bytes()),
            },
            TokenType::Normal => match &self.model {
                Model::Bpe(m) if m.byte_encoded() => Cow::Owned(m.unmap(text)),
                _ if self.escape_whitespace || matches!(self.model, Model::Spm(_)) => {
                    Cow::Owned(text.replace('\u{2581}', " ").into_bytes())
                }
                _ => Cow::Borrowed(text.as_bytes()),
            },
            TokenType::Unused | TokenType::Undefined => Cow::Borrowed(&[]),
        })
    }

    /// The bytes of `ids` (not necessarily UTF-8: a token may hold part of a character).
    /// Control tokens are rendered as their text when `special`, else as nothing. When the
    /// tokenizer puts a space in front of text, the first token that renders to anything
    /// loses one leading space (SentencePiece; Hugging Face's `Strip` decoder), so
    /// `decode(encode(text, true), false) == text`.
    pub fn decode(&self, ids: &[u32], special: bool) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut d = self.detokenizer(special);
        for &id in ids {
            out.extend_from_slice(&d.piece(id)?);
        }
        Ok(out)
    }

    /// [`Tokenizer::decode`] as text, invalid UTF-8 replaced by U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32], special: bool) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode(ids, special)?).into_owned())
    }

    /// A streaming detokenizer for a text that starts here (the first token that renders
    /// to anything loses the space the encoder put in front, as in [`Tokenizer::decode`]).
    pub fn detokenizer(&self, special: bool) -> Detokenizer<'_> {
        Detokenizer::new(self, special, self.decode_strip)
    }

    /// A streaming detokenizer for tokens that continue a text (generated after a prompt):
    /// nothing is stripped.
    pub fn continuation(&self, special: bool) -> Detokenizer<'_> {
        Detokenizer::new(self, special, false)
    }
}

/// The special tokens of `vocab`, longest text first (ties by id).
fn special_list(vocab: &Vocab) -> Vec<u32> {
    let mut specials: Vec<u32> = (0..vocab.tokens.len() as u32)
        .filter(|&i| vocab.tokens[i as usize].ty.is_special())
        .collect();
    specials.sort_by_key(|&i| std::cmp::Reverse(vocab.tokens[i as usize].text.len()));
    specials
}

/// C's `isspace` (llama.cpp strips these around lstrip / rstrip tokens).
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// The byte of a `<0xNN>` token.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
