//! How the KV cache stores its values, and the CPU encoding of each format (what
//! kv_quant in attention.wgsl computes, bit for bit).

// The rotation is the engine's normalized WHT: butterflies of half-width 1, 2, 4, ... in
// chunks of p, then the m x m mix summed in the order c = 0, 1, ..., then the f32 scale
// 1/sqrt(n) (rotation_norm): the arithmetic of attention.wgsl's `fwht` and `rot_norm`, so
// both produce the same bits.
use crate::ops::hadamard::cpu::{WhtSize, fwht};

/// How the KV cache stores its values. Layout: `docs/kv-cache.md`.
///
/// Every format stores each (sequence, position) entry as `heads` consecutive head blocks
/// of [`KvFormat::head_words`] u32 words (u32 words and bit operations only, so no device
/// feature is needed):
/// - `f32`: the f32 bit patterns; `f16`: two IEEE halves per word, low half first;
/// - `q8`, `q4` (and their rotated forms `q8r`, `q4r`): word 0 holds the head's scale as
///   f32 bits, then the levels: `q8` 4 per word, value `4j + i` in byte `i` of level word
///   `j` (two's complement, -127..=127); `q4` 8 per word, value `8j + i` in nibble `i` (low
///   nibble first) as level + 8 (-7..=7); a head_dim not a multiple of 4 (8) pads the last
///   word with level 0. scale = amax x (1/127 or 1/7 as f32), levels round to nearest (ties
///   to even) of x / scale, the value is level x scale (the conventions of
///   `blocks`' weight blocks, with an f32 scale per (position, head)).
/// - `q8r`, `q4r` first rotate the head's vector by the normalized Walsh–Hadamard matrix
///   H / sqrt(head_dim) (head_dim 2^k or m x 2^k), spreading outliers over the head before
///   quantizing; attention rotates q the same way (scores are unchanged, H being
///   orthogonal) and rotates its output back (H / sqrt(head_dim) is its own inverse).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum KvFormat {
    F32,
    /// IEEE half precision, two per u32 word (no SHADER_F16 needed), rounded to nearest
    /// even by the kernel itself so every device stores the same bits; half the bytes of
    /// f32, the default.
    #[default]
    F16,
    /// int8 levels with an f32 scale per (position, head).
    Q8,
    /// 4-bit levels with an f32 scale per (position, head).
    Q4,
    /// `q8` of the Hadamard-rotated head.
    #[serde(rename = "q8r")]
    Q8Rot,
    /// `q4` of the Hadamard-rotated head.
    #[serde(rename = "q4r")]
    Q4Rot,
}

/// What is wrong with a KV cache format or its use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error(
        "KV cache format `{0}`: expected f32, f16, q8, q4, q8r or q4r (q8r and q4r are q8 and q4 of Hadamard-rotated heads; f32 and f16 have no rotated form)"
    )]
    UnknownFormat(String),
    #[error(
        "KV cache format {format} rotates each head by a Walsh-Hadamard matrix of order head_dim, and this model's head_dim {head_dim} has none: {reason} (use q8 or q4)"
    )]
    RotationHeadDim {
        format: KvFormat,
        head_dim: usize,
        /// Why the transform has no such size ([`UnsupportedSize`](crate::ops::hadamard::UnsupportedSize)).
        reason: String,
    },
}

/// The f32 multiplier of the largest magnitude that gives a scale, 1/127 or 1/7 rounded to
/// f32; passed to the shader as `level_inv` (so both sides use the same bits).
pub(super) fn level_inv(max_level: i32) -> f32 {
    (1.0 / max_level as f64) as f32
}

/// The normalization of the rotation, 1/sqrt(head_dim) rounded to f32; passed to the
/// shader as `rot_norm`.
pub fn rotation_norm(head_dim: usize) -> f32 {
    (1.0 / (head_dim as f64).sqrt()) as f32
}

/// The transform size of a rotated head: head_dim as a [`WhtSize`], or why it is none.
fn rotation_size(format: KvFormat, head_dim: usize) -> Result<WhtSize, KvError> {
    WhtSize::new(head_dim).map_err(|e| KvError::RotationHeadDim {
        format,
        head_dim,
        reason: e.to_string(),
    })
}

/// The level of `x` against `scale` (0 when the scale is 0), as `quantize` in the shader.
fn level(x: f32, scale: f32, max_level: i32) -> i32 {
    if scale > 0.0 {
        ((x / scale).round_ties_even() as i32).clamp(-max_level, max_level)
    } else {
        0
    }
}

impl KvFormat {
    /// Every format, in the order of the command line's help.
    pub const ALL: [KvFormat; 6] = [
        KvFormat::F32,
        KvFormat::F16,
        KvFormat::Q8,
        KvFormat::Q4,
        KvFormat::Q8Rot,
        KvFormat::Q4Rot,
    ];

    /// Bits of one stored value (without the per-head scale of the quantized formats).
    pub fn bits(self) -> usize {
        match self {
            KvFormat::F32 => 32,
            KvFormat::F16 => 16,
            KvFormat::Q8 | KvFormat::Q8Rot => 8,
            KvFormat::Q4 | KvFormat::Q4Rot => 4,
        }
    }

    /// The largest level of a quantized format; None for f32 and f16.
    pub fn max_level(self) -> Option<i32> {
        match self {
            KvFormat::F32 | KvFormat::F16 => None,
            KvFormat::Q8 | KvFormat::Q8Rot => Some(127),
            KvFormat::Q4 | KvFormat::Q4Rot => Some(7),
        }
    }

    /// Whether heads are Hadamard-rotated before quantizing.
    pub fn rotated(self) -> bool {
        matches!(self, KvFormat::Q8Rot | KvFormat::Q4Rot)
    }

    /// u32 words of one head at one position: the values, padded to a whole word, plus
    /// one scale word for the quantized formats.
    pub fn head_words(self, head_dim: usize) -> usize {
        let values = (head_dim * self.bits()).div_ceil(32);
        values + usize::from(self.max_level().is_some())
    }

    /// Bytes of the keys (or the values) of one position of one layer.
    pub fn position_bytes(self, heads: usize, head_dim: usize) -> u64 {
        heads as u64 * self.head_words(head_dim) as u64 * 4
    }

    /// The shader's `KV` override: 0 f32, 1 f16, 2 q8, 3 q4 (rotated or not).
    pub(super) fn code(self) -> u32 {
        match self {
            KvFormat::F32 => 0,
            KvFormat::F16 => 1,
            KvFormat::Q8 | KvFormat::Q8Rot => 2,
            KvFormat::Q4 | KvFormat::Q4Rot => 3,
        }
    }

    /// Checks that heads of `head_dim` can be stored: the rotated formats need a
    /// Walsh–Hadamard size (m x 2^k, `WhtSize`).
    pub fn check_head_dim(self, head_dim: usize) -> Result<(), KvError> {
        if self.rotated() {
            rotation_size(self, head_dim)?;
        }
        Ok(())
    }

    /// The shader's `HM` override: the core Hadamard order of a rotated head (1 for a
    /// power of two, and for the formats that do not rotate).
    pub(super) fn rotation_order(self, head_dim: usize) -> u32 {
        match self.rotated() {
            true => rotation_size(self, head_dim).map_or(1, |s| s.m as u32),
            false => 1,
        }
    }

    /// The words the cache holds for one head `x` (`head_words(x.len())` of them), as
    /// kv_write stores them.
    ///
    /// # Panics
    /// If the format is rotated and `x.len()` is not a Walsh–Hadamard size
    /// ([`Self::check_head_dim`] says so as an error).
    pub fn encode_head(self, x: &[f32]) -> Vec<u32> {
        let hd = x.len();
        let mut words = vec![0u32; self.head_words(hd)];
        let Some(max_level) = self.max_level() else {
            for (i, &v) in x.iter().enumerate() {
                match self {
                    KvFormat::F32 => words[i] = v.to_bits(),
                    _ => {
                        words[i / 2] |=
                            u32::from(half::f16::from_f32(v).to_bits()) << (16 * (i % 2))
                    }
                }
            }
            return words;
        };
        let mut y = x.to_vec();
        if self.rotated() {
            let size = rotation_size(self, hd).unwrap_or_else(|e| panic!("{e}"));
            fwht(&mut y, size);
        }
        let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax * level_inv(max_level);
        words[0] = scale.to_bits();
        let (bits, per_word) = (self.bits(), 32 / self.bits());
        for (i, &v) in y.iter().enumerate() {
            let l = level(v, scale, max_level);
            let stored = if bits == 8 {
                l as i8 as u8 as u32
            } else {
                (l + 8) as u32
            };
            words[1 + i / per_word] |= stored << (bits * (i % per_word));
        }
        if bits == 4 {
            // Padding nibbles hold level 0, stored as 8.
            for i in hd..(words.len() - 1) * per_word {
                words[1 + i / per_word] |= 8 << (bits * (i % per_word));
            }
        }
        words
    }

    /// The head the words of [`Self::encode_head`] stand for: the stored values, rotated
    /// back for the rotated formats (attention with rotated q and a rotated-back output
    /// computes exactly the attention over these).
    pub fn decode_head(self, words: &[u32], head_dim: usize) -> Vec<f32> {
        let Some(_) = self.max_level() else {
            return (0..head_dim)
                .map(|i| match self {
                    KvFormat::F32 => f32::from_bits(words[i]),
                    _ => half::f16::from_bits((words[i / 2] >> (16 * (i % 2))) as u16).to_f32(),
                })
                .collect();
        };
        let scale = f32::from_bits(words[0]);
        let (bits, per_word) = (self.bits(), 32 / self.bits());
        let mut y: Vec<f32> = (0..head_dim)
            .map(|i| {
                let w = words[1 + i / per_word] >> (bits * (i % per_word));
                let l = if bits == 8 {
                    w as u8 as i8 as i32
                } else {
                    (w & 0xf) as i32 - 8
                };
                l as f32 * scale
            })
            .collect();
        if self.rotated() {
            let size = rotation_size(self, head_dim).unwrap_or_else(|e| panic!("{e}"));
            fwht(&mut y, size);
        }
        y
    }

    /// Replaces each head of `row` (heads of `head_dim` values) by what the cache holds for
    /// it, as [`Self::decode_head`] reads it back: what the CPU decoder attends over.
    pub fn store(self, row: &mut [f32], head_dim: usize) {
        match self {
            KvFormat::F32 => {}
            KvFormat::F16 => row
                .iter_mut()
                .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
            _ => {
                for head in row.chunks_exact_mut(head_dim) {
                    let back = self.decode_head(&self.encode_head(head), head_dim);
                    head.copy_from_slice(&back);
                }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
            KvFormat::Q8 => "q8",
            KvFormat::Q4 => "q4",
            KvFormat::Q8Rot => "q8r",
            KvFormat::Q4Rot => "q4r",
        }
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvFormat {
    type Err = KvError;
    fn from_str(s: &str) -> Result<Self, KvError> {
        KvFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| KvError::UnknownFormat(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    /// Packs levels as the quantized formats store them: q8 bytes, q4 nibbles of level + 8.
    fn pack(kv: KvFormat, levels: &[i32]) -> Vec<u32> {
        let (bits, per_word) = (kv.bits(), 32 / kv.bits());
        let mut words = vec![0u32; levels.len().div_ceil(per_word)];
        for i in 0..words.len() * per_word {
            let l = levels.get(i).copied().unwrap_or(0);
            let stored = if bits == 8 {
                l as u8 as u32
            } else {
                (l + 8) as u32
            };
            words[i / per_word] |= stored << (bits * (i % per_word));
        }
        words
    }

    #[test]
    fn quantized_heads_pack_levels_and_an_f32_scale() {
        // amax 127 (q8) or 7 (q4): the levels are the values themselves.
        let q8 = [127.0, -64.0, 3.0, 0.0, -127.0, 1.0];
        let words = KvFormat::Q8.encode_head(&q8);
        assert_eq!(KvFormat::Q8.head_words(6), 3);
        assert_eq!(words[0], (127.0 * level_inv(127)).to_bits());
        assert_eq!(words[1..], [0x0003_c07f, 0x0000_0181]);
        assert_eq!(words[1..], pack(KvFormat::Q8, &[127, -64, 3, 0, -127, 1]));
        let q4 = [7.0, -7.0, 3.0, 0.0, 1.0, -2.0, 5.0, -4.0, 2.0];
        let words = KvFormat::Q4.encode_head(&q4);
        assert_eq!(words[0], (7.0 * level_inv(7)).to_bits());
        // Nibbles low first, level + 8; the second word padded with level 0 (8).
        assert_eq!(words[1..], [0x4d69_8b1f, 0x8888_888a]);
        for (kv, x) in [(KvFormat::Q8, &q8[..]), (KvFormat::Q4, &q4[..])] {
            let back = kv.decode_head(&kv.encode_head(x), x.len());
            let scale = f32::from_bits(kv.encode_head(x)[0]);
            for (b, v) in back.iter().zip(x) {
                assert_eq!(*b, v.round() * scale, "{kv}");
            }
        }
        // An all-zero head: scale 0, every level 0.
        let words = KvFormat::Q4.encode_head(&[0.0; 8]);
        assert_eq!(words, [0, 0x8888_8888]);
        assert_eq!(KvFormat::Q4.decode_head(&words, 8), [0.0; 8]);
        // Rotated: e0 becomes (1/2)(1, 1, 1, 1), every level 127, and rotates back to e0
        // within a level step.
        let words = KvFormat::Q8Rot.encode_head(&[1.0, 0.0, 0.0, 0.0]);
        assert_eq!(words[0], (0.5 * level_inv(127)).to_bits());
        assert_eq!(words[1], 0x7f7f_7f7f);
        let back = KvFormat::Q8Rot.decode_head(&words, 4);
        for (b, want) in back.iter().zip([1.0, 0.0, 0.0, 0.0]) {
            assert!((b - want).abs() < 1e-6, "{back:?}");
        }
        // f32 and f16 blocks hold the values themselves.
        assert_eq!(KvFormat::F16.encode_head(&[1.0, -2.0]), [0xc000_3c00]);
        assert_eq!(KvFormat::F32.decode_head(&[0x3f80_0000], 1), [1.0]);
    }

    #[test]
    fn kv_formats_parse_by_name_and_check_rotation_sizes() {
        for kv in KvFormat::ALL {
            assert_eq!(kv.name().parse::<KvFormat>(), Ok(kv));
            let json = serde_json::to_string(&kv).unwrap();
            assert_eq!(json, format!("\"{kv}\""));
        }
        let e = "f16r".parse::<KvFormat>().unwrap_err().to_string();
        assert!(e.contains("`f16r`") && e.contains("no rotated form"), "{e}");
        // 46 = 23 x 2 and 92 = 23 x 4 have no Hadamard matrix walsh builds; 12, 72 = 36 x 2
        // and 64 do.
        for (hd, why) in [(46, "multiple of 4"), (92, "order 92")] {
            match KvFormat::Q4Rot.check_head_dim(hd) {
                Err(KvError::RotationHeadDim {
                    format: KvFormat::Q4Rot,
                    head_dim,
                    reason,
                }) => assert!(head_dim == hd && reason.contains(why), "{reason}"),
                other => panic!("head_dim {hd}: {other:?}"),
            }
        }
        for hd in [12, 72, 64] {
            assert!(KvFormat::Q8Rot.check_head_dim(hd).is_ok(), "{hd}");
        }
        assert!(KvFormat::Q4.check_head_dim(46).is_ok());
        let shape = AttnShape {
            heads: 2,
            kv_heads: 2,
            head_dim: 46,
            max_seqs: 1,
            max_pos: 4,
            kv: KvFormat::Q8Rot,
        };
        let e = shape.validate().unwrap_err().to_string();
        assert!(e.contains("head_dim 46 has none"), "{e}");
        // Bytes per position and head: f32 4 hd, f16 2 hd, q8 hd + 4, q4 hd / 2 + 4.
        let bytes: Vec<u64> = KvFormat::ALL
            .iter()
            .map(|k| k.position_bytes(1, 32))
            .collect();
        assert_eq!(bytes, [128, 64, 36, 20, 36, 20]);
    }
}
