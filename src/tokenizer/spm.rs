//! SentencePiece-style BPE with byte fallback, as llama.cpp's `llm_tokenizer_spm_session`
//! (Llama 2, TinyLlama): the text (spaces already `▁`) starts as one symbol per
//! character; the adjacent pair whose concatenation is a token with the highest score
//! merges first, ties to the leftmost, until no pair is a token; a symbol left outside the
//! vocabulary becomes its bytes' `<0xNN>` tokens.
//!
//! llama.cpp's `resegment` also looks a left-over symbol up among the merges it made, but
//! only a symbol made by merging two others can be found there, and every such symbol is
//! a token: a left-over symbol is always a single character, so the lookup is left out.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::{NONE, Symbol, Vocab};

#[derive(Clone, Debug)]
pub(super) struct Spm {
    /// The token of each byte: `<0xNN>`, else the byte's own one-character token, else
    /// the unknown token (llama.cpp's `byte_to_token`, which throws instead).
    byte_tokens: [Option<u32>; 256],
}

/// A candidate merge, ordered as llama.cpp's queue pops them: highest score, then
/// leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // total_cmp: a NaN score from a corrupt file still orders.
        self.score
            .total_cmp(&other.score)
            .then_with(|| Reverse(self.left).cmp(&Reverse(other.left)))
    }
}

impl Spm {
    pub(super) fn new(vocab: &Vocab, unk: Option<u32>) -> Self {
        let hex = vocab.byte_tokens();
        let byte_tokens = std::array::from_fn(|b| {
            hex[b]
                .or_else(|| {
                    char::from(b as u8)
                        .is_ascii()
                        .then(|| vocab.id(char::from(b as u8).encode_utf8(&mut [0; 4])))
                        .flatten()
                })
                .or(unk)
        });
        Spm { byte_tokens }
    }

    pub(super) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut symbols = Symbol::chain(text);
        if symbols.is_empty() {
            return;
        }
        let mut queue = BinaryHeap::new();
        let push =
            |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: usize, right: usize| {
                if left == NONE || right == NONE {
                    return;
                }
                let (l, r) = (&symbols[left], &symbols[right]);
                let size = l.len + r.len;
                let Some(id) = vocab.id(&text[l.start..l.start + size]) else {
                    return;
                };
                queue.push(Bigram {
                    score: vocab.tokens[id as usize].score,
                    left,
                    right,
                    size,
                });
            };
        for i in 1..symbols.len() {
            push(&mut queue, &symbols, i - 1, i);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // llama.cpp's staleness test: either side merged away, or grown.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.left].next = r.next;
            symbols[b.right].len = 0;
            if r.next != NONE {
                symbols[r.next].prev = b.left;
            }
            push(&mut queue, &symbols, l.prev, b.left);
            push(&mut queue, &symbols, b.left, r.next);
        }
        let mut i = 0;
        while i != NONE {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_tokens[b as usize])),
            }
            i = s.next;
        }
    }
}
