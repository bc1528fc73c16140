//! Token ids to text as they are generated. A token may end in the middle of a UTF-8
//! sequence (byte-level BPE and byte fallback split characters across tokens), so the
//! bytes of an unfinished character are held back until the token that completes it
//! arrives: a character split across tokens never becomes U+FFFD. Bytes that can never
//! become a character (an invalid sequence) come out as one U+FFFD each sequence, exactly
//! as `String::from_utf8_lossy` of all the bytes would, and [`Detokenizer::finish`]
//! replaces an unfinished character at the end.

use std::borrow::Cow;

use super::{Result, Tokenizer};

/// A streaming detokenizer ([`Tokenizer::detokenizer`], [`Tokenizer::continuation`]).
#[derive(Debug)]
pub struct Detokenizer<'t> {
    tokenizer: &'t Tokenizer,
    /// Render control tokens as their text.
    special: bool,
    /// Drop one leading space of the next token that renders to something (Hugging Face's
    /// `Strip` decoder on the joined text; llama.cpp strips the first token's only, so
    /// keeps the space after a BOS).
    strip_space: bool,
    /// The start of an unfinished character.
    utf8: Utf8Buffer,
}

/// Bytes to text as they arrive: complete characters out, an unfinished one held back,
/// invalid sequences as `String::from_utf8_lossy` of all the bytes would replace them.
#[derive(Clone, Debug, Default)]
pub struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    /// Adds `bytes`; returns the complete characters now known.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Valid up to here by the error's own account.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    let Some(invalid) = e.error_len() else {
                        // An unfinished character at the end: hold it back.
                        self.pending.drain(..valid);
                        return out;
                    };
                    // As from_utf8_lossy: one U+FFFD, then decoding resumes after it (the
                    // byte that ended the sequence may begin a character).
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.pending.drain(..valid + invalid);
                }
            }
        }
    }

    /// Whatever is still held back (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

impl<'t> Detokenizer<'t> {
    pub(super) fn new(tokenizer: &'t Tokenizer, special: bool, strip_space: bool) -> Self {
        Detokenizer {
            tokenizer,
            special,
            strip_space,
            utf8: Utf8Buffer::default(),
        }
    }

    /// The bytes of `id` in this stream (after the leading-space rule).
    pub(super) fn piece(&mut self, id: u32) -> Result<Cow<'t, [u8]>> {
        let piece = self.tokenizer.piece(id, self.special)?;
        if !self.strip_space || piece.is_empty() {
            return Ok(piece);
        }
        self.strip_space = false;
        Ok(match piece {
            Cow::Borrowed(b) => Cow::Borrowed(b.strip_prefix(b" ").unwrap_or(b)),
            Cow::Owned(mut b) => {
                if b.first() == Some(&b' ') {
                    b.remove(0);
                }
                Cow::Owned(b)
            }
        })
    }

    /// Adds token `id` and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let piece = self.piece(id)?;
        Ok(self.utf8.push(&piece))
    }

    /// Whatever is still held back (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        self.utf8.finish()
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending(&self) -> &[u8] {
        self.utf8.pending()
    }
}
