//! What the pre-tokenizers need of Unicode: llama.cpp's category flags of a code point
//! (from its own table, `unicode_data.rs`) and GPT-2's byte-to-unicode mapping.

use super::unicode_data::CATEGORY_RUNS;

/// llama.cpp's `unicode_cpt_flags` categories (the low byte).
pub(super) const UNDEFINED: u8 = 0x01;
pub(super) const NUMBER: u8 = 0x02;
pub(super) const LETTER: u8 = 0x04;
pub(super) const ACCENT_MARK: u8 = 0x10;

/// A code point's category flags as llama.cpp's pre-tokenizers see them: `category` is
/// one of the bits above (or separator, punctuation, symbol, control), `whitespace`
/// Unicode's White_Space. `Flags::default()` is what llama.cpp returns past the end of a
/// word (no bit set), which some of its rules test for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Flags {
    category: u8,
    whitespace: bool,
}

impl Flags {
    pub(super) fn of(c: char) -> Flags {
        let cp = c as u32;
        let i = CATEGORY_RUNS.partition_point(|&(start, _)| start <= cp);
        let category = match i.checked_sub(1).map(|i| CATEGORY_RUNS[i].1) {
            Some(0) | None => UNDEFINED,
            Some(f) => f,
        };
        Flags {
            category,
            whitespace: c.is_whitespace(),
        }
    }
    pub(super) fn letter(self) -> bool {
        self.category & LETTER != 0
    }
    pub(super) fn number(self) -> bool {
        self.category & NUMBER != 0
    }
    pub(super) fn mark(self) -> bool {
        self.category & ACCENT_MARK != 0
    }
    pub(super) fn whitespace(self) -> bool {
        self.whitespace
    }
    /// Any flag set: false only past the end of the word (llama.cpp's `as_uint()`).
    pub(super) fn any(self) -> bool {
        self.category != 0 || self.whitespace
    }
}

/// GPT-2's `bytes_to_unicode`: each byte becomes a printable character, the printable
/// Latin-1 bytes themselves and the rest 256 onwards, in order.
pub(super) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        // All below 0x144: valid scalar values.
        *slot = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_llama_cpps() {
        assert!(Flags::of('a').letter() && Flags::of('ß').letter() && Flags::of('中').letter());
        assert!(Flags::of('7').number() && Flags::of('٣').number() && Flags::of('½').number());
        assert!(Flags::of('\u{301}').mark());
        assert!(Flags::of(' ').whitespace() && Flags::of('\u{3000}').whitespace());
        let bang = Flags::of('!');
        assert!(!bang.letter() && !bang.number() && !bang.whitespace() && bang.any());
        // An unassigned code point is "undefined", still a flag.
        assert!(Flags::of('\u{0378}').any());
        assert!(!Flags::default().any());
        assert_eq!(Flags::of('\u{10FFFF}').category, UNDEFINED);
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_char_table();
        assert_eq!(
            (t[b'!' as usize], t[b' ' as usize], t[0], t[b'\n' as usize]),
            ('!', 'Ġ', 'Ā', 'Ċ')
        );
        assert_eq!(t[0xAD], 'Ń');
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }
}
