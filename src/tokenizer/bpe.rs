//! Merge-rank BPE over the words of a pre-tokenizer, as llama.cpp's
//! `llm_tokenizer_bpe_session::tokenize` (and, for the same vocabularies, Hugging Face's
//! `BPE::merge_word`): each word starts as one symbol per character; the adjacent pair
//! whose merge (`"left right"`) has the lowest rank merges first, ties to the leftmost,
//! until no pair has a merge; then each symbol is looked up in the vocabulary.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::unicode::byte_to_char_table;
use super::{NONE, PreTokenizer, Symbol, Vocab};

/// What a symbol left outside the vocabulary becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fallback {
    /// Each byte of it as a one-byte token, skipped when there is none (llama.cpp's
    /// byte-level BPE; in a byte-level vocabulary every character is a token, so this is
    /// only reached by broken vocabularies).
    RawBytes,
    /// Each byte as its `<0xNN>` token (Hugging Face's `byte_fallback`), else `unk`.
    HexBytes,
    /// The unknown token, if any.
    Unknown,
}

#[derive(Clone, Debug)]
pub(super) struct Bpe {
    /// Every string that is a side of a merge, numbered.
    parts: HashMap<Box<str>, u32>,
    /// (left part, right part) -> rank (the merge's index in the list; the first of
    /// duplicates wins, as llama.cpp's `emplace`).
    ranks: HashMap<(u32, u32), u32>,
    /// `None`: the whole text is one word.
    pre: Option<PreTokenizer>,
    /// GPT-2's byte-to-character mapping of each word (byte-level BPE), and its inverse.
    byte_chars: Option<([char; 256], HashMap<char, u8>)>,
    /// A word that is a token is that token, merges or not (Llama 3's `ignore_merges`).
    ignore_merges: bool,
    fallback: Fallback,
    /// `<0xNN>` tokens, for [`Fallback::HexBytes`].
    hex_bytes: [Option<u32>; 256],
    unk: Option<u32>,
}

impl Bpe {
    /// `merges` as GGUF and tokenizer.json (old style) store them: `"left right"`, split
    /// at the first space after the first byte, as llama.cpp does; an entry without one is
    /// skipped (it still takes its rank).
    pub(super) fn new<'m>(
        vocab: &Vocab,
        merges: impl IntoIterator<Item = (&'m str, &'m str)>,
        pre: Option<PreTokenizer>,
        byte_level: bool,
        ignore_merges: bool,
        fallback: Fallback,
        unk: Option<u32>,
    ) -> Self {
        let mut parts: HashMap<Box<str>, u32> = HashMap::new();
        let mut ranks = HashMap::new();
        let mut part = |s: &str| -> u32 {
            let n = parts.len() as u32;
            *parts.entry(s.into()).or_insert(n)
        };
        for (rank, (left, right)) in merges.into_iter().enumerate() {
            let key = (part(left), part(right));
            ranks.entry(key).or_insert(rank as u32);
        }
        let byte_chars = byte_level.then(|| {
            let table = byte_to_char_table();
            let inverse = (0..=255u8).map(|b| (table[b as usize], b)).collect();
            (table, inverse)
        });
        Bpe {
            parts,
            ranks,
            pre,
            byte_chars,
            ignore_merges,
            fallback,
            hex_bytes: vocab.byte_tokens(),
            unk,
        }
    }

    pub(super) fn byte_encoded(&self) -> bool {
        self.byte_chars.is_some()
    }

    /// A token's text back to bytes: each GPT-2 character to its byte (a character
    /// outside the mapping stays as its UTF-8, as Hugging Face's ByteLevel decoder).
    pub(super) fn unmap(&self, text: &str) -> Vec<u8> {
        let Some((_, inverse)) = &self.byte_chars else {
            return text.as_bytes().to_vec();
        };
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match inverse.get(&c) {
                Some(&b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out
    }

    fn rank(&self, left: &str, right: &str) -> Option<u32> {
        let l = *self.parts.get(left)?;
        let r = *self.parts.get(right)?;
        self.ranks.get(&(l, r)).copied()
    }

    pub(super) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let words = match self.pre {
            Some(pre) => pre.split(text),
            None => vec![text],
        };
        let mut mapped = String::new();
        for word in words {
            let word = match &self.byte_chars {
                Some((table, _)) => {
                    mapped.clear();
                    mapped.extend(word.bytes().map(|b| table[b as usize]));
                    mapped.as_str()
                }
                None => word,
            };
            self.encode_word(vocab, word, out);
        }
    }

    fn encode_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges
            && let Some(id) = vocab.id(word)
        {
            out.push(id);
            return;
        }
        let mut symbols = Symbol::chain(word);
        let text = |s: &Symbol| &word[s.start..s.start + s.len];
        // Min-heap on (rank, left index); each entry remembers the two lengths it was made
        // for, so an entry made stale by an earlier merge is skipped (llama.cpp compares
        // the pair's text, which is the same test).
        let mut queue = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<_>, symbols: &[Symbol], left: usize, right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let (l, r) = (&symbols[left], &symbols[right]);
            if let Some(rank) = self.rank(text(l), text(r)) {
                queue.push(Reverse((rank, left, right, l.len, r.len)));
            }
        };
        for i in 1..symbols.len() {
            push(&mut queue, &symbols, i - 1, i);
        }
        while let Some(Reverse((_, left, right, left_len, right_len))) = queue.pop() {
            let (l, r) = (symbols[left], symbols[right]);
            if l.len == 0 || r.len == 0 || l.len != left_len || r.len != right_len {
                continue;
            }
            symbols[left].len += r.len;
            symbols[left].next = r.next;
            symbols[right].len = 0;
            if r.next != NONE {
                symbols[r.next].prev = left;
            }
            push(&mut queue, &symbols, l.prev, left);
            push(&mut queue, &symbols, left, r.next);
        }
        for s in symbols.iter().filter(|s| s.len > 0) {
            let piece = text(s);
            if let Some(id) = vocab.id(piece) {
                out.push(id);
                continue;
            }
            match self.fallback {
                Fallback::RawBytes => {
                    // llama.cpp looks each byte up as a one-byte string.
                    for b in piece.bytes().filter(u8::is_ascii) {
                        out.extend(vocab.id(char::from(b).encode_utf8(&mut [0; 4])));
                    }
                }
                Fallback::HexBytes => {
                    let bytes: Option<Vec<u32>> =
                        piece.bytes().map(|b| self.hex_bytes[b as usize]).collect();
                    match bytes {
                        Some(ids) => out.extend(ids),
                        None => out.extend(self.unk),
                    }
                }
                Fallback::Unknown => out.extend(self.unk),
            }
        }
    }
}
