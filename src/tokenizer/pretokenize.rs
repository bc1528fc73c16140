//! The pre-tokenizers of byte-level BPE: text split into words before merging, by the
//! regular expression each model was trained with. These are hand-written scanners, ports
//! of llama.cpp's `unicode_regex_split_custom_gpt2` / `_llama3` / `_qwen2` / `_qwen35`
//! (src/unicode.cpp), which llama.cpp itself uses instead of the expressions; walsh
//! reproduces llama.cpp's token ids, so it follows the same code, down to what it does
//! where an expression engine would differ (an unassigned code point counts as "not a
//! letter, number or space"). A regex crate with look-ahead (fancy-regex) would also do,
//! but would add a dependency and its own Unicode tables; these scanners are a page each,
//! allocate one `Vec<char>` per text, and build for wasm32 as they are.
//!
//! The expressions, as the models' tokenizer.json files give them:
//!
//! - `gpt-2`: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! - `llama-bpe` (Llama 3): `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//!   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! - `qwen2`: the same with `\p{N}` for `\p{N}{1,3}`
//! - `qwen35`: qwen2's with `[\p{L}\p{M}]` for `\p{L}`

use super::unicode::Flags;

/// A pre-tokenizer, named as GGUF's `tokenizer.ggml.pre` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's expression.
    Gpt2,
    /// Llama 3's (`llama-bpe`): case-insensitive contractions, letters with one leading
    /// non-letter, digits in threes, punctuation with its newlines.
    Llama3,
    /// Qwen2's: Llama 3's with single digits.
    Qwen2,
    /// Qwen3.5's: Qwen2's with combining marks counted as letters.
    Qwen35,
}

impl PreTokenizer {
    /// The `tokenizer.ggml.pre` values llama.cpp maps to each (only those whose other
    /// settings walsh also reproduces).
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "gpt-2" | "phi-2" => Some(PreTokenizer::Gpt2),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
                Some(PreTokenizer::Llama3)
            }
            "qwen2" | "deepseek-r1-qwen" => Some(PreTokenizer::Qwen2),
            "qwen35" => Some(PreTokenizer::Qwen35),
            _ => None,
        }
    }

    /// The name walsh writes for it (the first of [`PreTokenizer::from_gguf_name`]'s).
    pub fn name(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => "gpt-2",
            PreTokenizer::Llama3 => "llama-bpe",
            PreTokenizer::Qwen2 => "qwen2",
            PreTokenizer::Qwen35 => "qwen35",
        }
    }

    /// The pre-tokenizer of a Hugging Face `Split` pre-tokenizer's regex (the expressions
    /// of the module docs, as tokenizer.json spells them).
    pub fn from_regex(regex: &str) -> Option<Self> {
        const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const GPT2: &str =
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
        match regex {
            LLAMA3 => Some(PreTokenizer::Llama3),
            QWEN2 => Some(PreTokenizer::Qwen2),
            QWEN35 => Some(PreTokenizer::Qwen35),
            GPT2 => Some(PreTokenizer::Gpt2),
            _ => None,
        }
    }

    /// `text` cut into words (none empty; together they are `text`).
    pub fn split(self, text: &str) -> Vec<&str> {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let ends = match self {
            PreTokenizer::Gpt2 => gpt2(&Scan::new(&chars)),
            PreTokenizer::Llama3 => llama3(&Scan::new(&chars), 3, Flags::letter),
            PreTokenizer::Qwen2 => llama3(&Scan::new(&chars), 1, Flags::letter),
            PreTokenizer::Qwen35 => llama3(&Scan::new(&chars), 1, |f| f.letter() || f.mark()),
        };
        let byte = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let word = &text[byte(start)..byte(end)];
                start = end;
                word
            })
            .collect()
    }
}

/// The code points of one text, read as llama.cpp's scanners read them: past the end
/// there is no character and no flag.
struct Scan<'c> {
    chars: &'c [(usize, char)],
}

impl<'c> Scan<'c> {
    fn new(chars: &'c [(usize, char)]) -> Self {
        Scan { chars }
    }
    fn len(&self) -> usize {
        self.chars.len()
    }
    fn cpt(&self, pos: usize) -> Option<char> {
        self.chars.get(pos).map(|c| c.1)
    }
    fn flags(&self, pos: usize) -> Flags {
        self.cpt(pos).map(Flags::of).unwrap_or_default()
    }
    /// `'s|'t|'re|'ve|'m|'ll|'d` at `pos` (case-insensitive when `fold`): its length.
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.len() {
            return None;
        }
        // Only ASCII letters fold to these in llama.cpp's table.
        let at = |i: usize| {
            self.cpt(i)
                .map(|c| if fold { c.to_ascii_lowercase() } else { c })
        };
        let next = at(pos + 1)?;
        if matches!(next, 's' | 't' | 'm' | 'd') {
            return Some(2);
        }
        if pos + 2 < self.len() {
            let next2 = at(pos + 2)?;
            if matches!((next, next2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                return Some(3);
            }
        }
        None
    }
}

/// Word ends, pushed as llama.cpp's `_add_token` does (empty words dropped).
struct Ends {
    ends: Vec<usize>,
    prev: usize,
}

impl Ends {
    fn add(&mut self, end: usize) {
        if end > self.prev {
            self.ends.push(end);
        }
        self.prev = end;
    }
}

fn gpt2(s: &Scan) -> Vec<usize> {
    let mut out = Ends {
        ends: Vec::new(),
        prev: 0,
    };
    let mut pos = 0;
    while pos < s.len() {
        let cpt = s.cpt(pos);
        let flags = s.flags(pos);
        if let Some(n) = s.contraction(pos, false) {
            pos += n;
            out.add(pos);
            continue;
        }
        let space = cpt == Some(' ');
        let mut flags2 = if space { s.flags(pos + 1) } else { flags };
        // <space>?\p{L}+, <space>?\p{N}+, <space>?[^\s\p{L}\p{N}]+
        let runs: [fn(Flags) -> bool; 3] = [Flags::letter, Flags::number, |f| {
            !(f.whitespace() || f.letter() || f.number()) && f.any()
        }];
        if let Some(run) = runs.into_iter().find(|run| run(flags2)) {
            pos += usize::from(space);
            while run(flags2) {
                pos += 1;
                flags2 = s.flags(pos);
            }
            out.add(pos);
            continue;
        }
        let spaces = (pos..).take_while(|&p| s.flags(p).whitespace()).count();
        // \s+(?!\S): all but the last space when a non-space follows.
        if spaces > 1 && s.cpt(pos + spaces).is_some() {
            pos += spaces - 1;
            out.add(pos);
            continue;
        }
        pos += spaces.max(1); // \s+, or one unmatched character
        out.add(pos);
    }
    out.ends
}

/// Llama 3's scanner; `digits` is 3 for `\p{N}{1,3}` and 1 for `\p{N}`, `word` tells the
/// characters of `\p{L}+` (letters, and for qwen35 marks).
fn llama3(s: &Scan, digits: usize, word: fn(Flags) -> bool) -> Vec<usize> {
    let mut out = Ends {
        ends: Vec::new(),
        prev: 0,
    };
    let newline = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    let mut pos = 0;
    while pos < s.len() {
        let cpt = s.cpt(pos);
        let flags = s.flags(pos);
        if let Some(n) = s.contraction(pos, true) {
            pos += n;
            out.add(pos);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(newline(cpt) || flags.number()) && (word(flags) || word(s.flags(pos + 1))) {
            pos += 1;
            while word(s.flags(pos)) {
                pos += 1;
            }
            out.add(pos);
            continue;
        }
        // \p{N}{1,digits}
        if flags.number() {
            let mut start = pos;
            while s.flags(pos).number() {
                pos += 1;
                if pos - start >= digits {
                    out.add(pos);
                    start = pos;
                }
            }
            out.add(pos);
            continue;
        }
        // <space>?[^\s\p{L}\p{N}]+[\r\n]*
        let other = |f: Flags| !(f.whitespace() || word(f) || f.number());
        let space = cpt == Some(' ');
        let mut flags2 = if space { s.flags(pos + 1) } else { flags };
        if other(flags2) && flags.any() {
            pos += usize::from(space);
            while other(flags2) && flags2.any() {
                pos += 1;
                flags2 = s.flags(pos);
            }
            while newline(s.cpt(pos)) {
                pos += 1;
            }
            out.add(pos);
            continue;
        }
        let spaces = (pos..).take_while(|&p| s.flags(p).whitespace()).count();
        // \s*[\r\n]+: up to the last newline of the run.
        if let Some(last) = (pos..pos + spaces).rev().find(|&p| newline(s.cpt(p))) {
            pos = last + 1;
            out.add(pos);
            continue;
        }
        if spaces > 1 && s.cpt(pos + spaces).is_some() {
            pos += spaces - 1;
            out.add(pos);
            continue;
        }
        pos += spaces.max(1);
        out.add(pos);
    }
    out.ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_as_the_expressions_do() {
        let t = "Hello world's  3141592 don'T\n\n  x!!\n ";
        assert_eq!(
            PreTokenizer::Gpt2.split(t),
            [
                "Hello", " world", "'s", " ", " 3141592", " don", "'", "T", "\n\n ", " x", "!!",
                "\n "
            ]
        );
        assert_eq!(
            PreTokenizer::Llama3.split(t),
            [
                "Hello", " world", "'s", " ", " ", "314", "159", "2", " don", "'T", "\n\n", " ",
                " x", "!!\n", " "
            ]
        );
        let q = PreTokenizer::Qwen2.split("ab 12");
        assert_eq!(q, ["ab", " ", "1", "2"]);
        assert_eq!(PreTokenizer::Qwen35.split("e\u{301}x"), ["e\u{301}x"]);
        assert_eq!(PreTokenizer::Qwen2.split("e\u{301}x"), ["e", "\u{301}x"]);
        assert!(PreTokenizer::Gpt2.split("").is_empty());
    }

    #[test]
    fn names() {
        for p in [
            PreTokenizer::Gpt2,
            PreTokenizer::Llama3,
            PreTokenizer::Qwen2,
            PreTokenizer::Qwen35,
        ] {
            assert_eq!(PreTokenizer::from_gguf_name(p.name()), Some(p));
        }
        assert_eq!(PreTokenizer::from_gguf_name("default"), None);
    }
}
