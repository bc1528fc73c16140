//! Block-quantized matrices: `q8` (int8) and `q4` (4-bit) levels in blocks of [`BLOCK`]
//! values along a row (the input dimension), one f16 scale per block, round to nearest
//! (ties to even) against the scale as stored, so dequantizing gives back exactly what the
//! kernels will compute.
//!
//! Layout (`docs/model-format.md#quantized-blocks`; shader and host read the same words):
//! - a `[rows, cols]` matrix has `ceil(cols / 32)` blocks per row; the last block of a row
//!   whose width is not a multiple of 32 (the shipped FFN width 688 = 21 x 32 + 16) takes
//!   its scale from its own values only and is padded with level 0 to 32 values, so every
//!   block has the same number of words and every row starts on a block boundary;
//! - `q8`: 8 u32 words per block, value `4j + i` of the block in byte `i` (little end
//!   first) of word `j`, a two's-complement level in -127..=127;
//! - `q4`: 4 u32 words per block, value `8j + i` in nibble `i` (low nibble first) of word
//!   `j`, stored as level + 8 for a level in -7..=7 (so 8 is zero);
//! - scales: `[rows, blocks]` f16 bits; value = scale x level. walsh's quantizer writes
//!   non-negative scales and levels within -max..=max, but any finite scale and every
//!   stored bit pattern is read as written: GGML's Q4_0 (`d = max / -8`) has negative
//!   scales and level -8 (nibble 0), its Q8_0 may hold -128, and GGUF files load into
//!   these blocks bit for bit.

use std::fmt;
use std::str::FromStr;

use half::f16;

/// Values per block along a row.
pub const BLOCK: usize = 32;

/// A block-quantized weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantFormat {
    /// int8 levels, 4 per u32.
    Q8,
    /// 4-bit levels, 8 per u32.
    Q4,
}

impl QuantFormat {
    /// Bits per value.
    pub fn bits(self) -> usize {
        match self {
            QuantFormat::Q8 => 8,
            QuantFormat::Q4 => 4,
        }
    }

    /// The largest level magnitude (levels are symmetric around zero).
    pub fn max_level(self) -> i32 {
        match self {
            QuantFormat::Q8 => 127,
            QuantFormat::Q4 => 7,
        }
    }

    /// u32 words of one block of [`BLOCK`] values.
    pub fn words_per_block(self) -> usize {
        BLOCK * self.bits() / 32
    }

    fn values_per_word(self) -> usize {
        32 / self.bits()
    }

    /// The level's bits as stored (before shifting into place).
    fn encode(self, level: i32) -> u32 {
        match self {
            QuantFormat::Q8 => u32::from(level as i8 as u8),
            QuantFormat::Q4 => (level + 8) as u32,
        }
    }

    fn decode(self, bits: u32) -> i32 {
        match self {
            QuantFormat::Q8 => i32::from(bits as u8 as i8),
            QuantFormat::Q4 => (bits & 0xf) as i32 - 8,
        }
    }

    /// The name used on the command line and in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "q8",
            QuantFormat::Q4 => "q4",
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantFormat {
    type Err = QuantError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "q8" => Ok(QuantFormat::Q8),
            "q4" => Ok(QuantFormat::Q4),
            other => Err(QuantError::UnknownFormat(other.to_string())),
        }
    }
}

/// What is wrong with a matrix to quantize, or with stored quantized parts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("unknown quantization format `{0}` (expected q8 or q4)")]
    UnknownFormat(String),
    #[error("a [{rows}, {cols}] matrix needs {expected} values, got {found}")]
    Shape {
        rows: usize,
        cols: usize,
        expected: usize,
        found: usize,
    },
    #[error("a [{rows}, {cols}] matrix is too large to quantize")]
    TooLarge { rows: usize, cols: usize },
    #[error("value {index} is not finite (NaN or infinity)")]
    NonFinite { index: usize },
    #[error("row {row}, block {block}: largest magnitude {amax} needs a scale beyond f16's range")]
    ScaleRange { row: usize, block: usize, amax: f32 },
    #[error("{format} data of a [{rows}, {cols}] matrix is {expected} u32 words, got {found}")]
    DataLength {
        format: QuantFormat,
        rows: usize,
        cols: usize,
        expected: usize,
        found: usize,
    },
    #[error("a [{rows}, {cols}] matrix has {expected} block scales, got {found}")]
    ScalesLength {
        rows: usize,
        cols: usize,
        expected: usize,
        found: usize,
    },
    #[error("row {row}, block {block}: the scale is not a finite f16")]
    BadScale { row: usize, block: usize },
}

/// A `[rows, cols]` matrix in a block-quantized format (layout in the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMatrix {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    /// `rows x blocks x words_per_block` packed levels.
    pub data: Vec<u32>,
    /// `rows x blocks` f16 bits.
    pub scales: Vec<u16>,
}

/// Blocks per row of a `cols`-wide matrix (the last one may be partly padding).
pub fn blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(BLOCK)
}

/// (data words, scales) of a `[rows, cols]` matrix, or `None` if that overflows.
fn sizes(format: QuantFormat, rows: usize, cols: usize) -> Option<(usize, usize)> {
    let scales = rows.checked_mul(blocks_per_row(cols))?;
    Some((scales.checked_mul(format.words_per_block())?, scales))
}

impl QuantMatrix {
    /// Quantizes row-major `values` (`rows x cols`), block by block.
    pub fn quantize(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Result<Self, QuantError> {
        let (words, n_scales) =
            sizes(format, rows, cols).ok_or(QuantError::TooLarge { rows, cols })?;
        let expected = rows
            .checked_mul(cols)
            .ok_or(QuantError::TooLarge { rows, cols })?;
        if values.len() != expected {
            return Err(QuantError::Shape {
                rows,
                cols,
                expected,
                found: values.len(),
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { index });
        }
        let blocks = blocks_per_row(cols);
        let mut data = vec![0u32; words];
        let mut scales = vec![0u16; n_scales];
        let qmax = format.max_level();
        for row in 0..rows {
            for block in 0..blocks {
                let start = block * BLOCK;
                let end = (start + BLOCK).min(cols);
                let vals = &values[row * cols + start..row * cols + end];
                let amax = vals.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = f16::from_f32(amax / qmax as f32);
                if !scale.is_finite() {
                    return Err(QuantError::ScaleRange { row, block, amax });
                }
                let b = row * blocks + block;
                scales[b] = scale.to_bits();
                let d = scale.to_f32();
                let base = b * format.words_per_block();
                for i in 0..BLOCK {
                    // Padding (and an all-zero block) is level 0.
                    let level = match vals.get(i) {
                        Some(&x) if d > 0.0 => {
                            ((x / d).round_ties_even() as i32).clamp(-qmax, qmax)
                        }
                        _ => 0,
                    };
                    let (word, slot) = (i / format.values_per_word(), i % format.values_per_word());
                    data[base + word] |= format.encode(level) << (slot * format.bits());
                }
            }
        }
        // Checked as a file's parts are (lengths, finite scales).
        Self::from_parts(format, rows, cols, data, scales)
    }

    /// Quantized parts as read from a file, checked: lengths match the shape and every
    /// scale is a finite f16 (of either sign: GGML's Q4_0 scales are often negative).
    /// Every bit pattern of the data is a level (q4's nibble 0 is -8, q8's 0x80 -128).
    pub fn from_parts(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        data: Vec<u32>,
        scales: Vec<u16>,
    ) -> Result<Self, QuantError> {
        let (words, n_scales) =
            sizes(format, rows, cols).ok_or(QuantError::TooLarge { rows, cols })?;
        if data.len() != words {
            return Err(QuantError::DataLength {
                format,
                rows,
                cols,
                expected: words,
                found: data.len(),
            });
        }
        if scales.len() != n_scales {
            return Err(QuantError::ScalesLength {
                rows,
                cols,
                expected: n_scales,
                found: scales.len(),
            });
        }
        let blocks = blocks_per_row(cols);
        if let Some(b) = scales.iter().position(|&s| !f16::from_bits(s).is_finite()) {
            return Err(QuantError::BadScale {
                row: b / blocks,
                block: b % blocks,
            });
        }
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            data,
            scales,
        })
    }

    /// The stored level of one element.
    pub fn level(&self, row: usize, col: usize) -> i32 {
        let b = row * blocks_per_row(self.cols) + col / BLOCK;
        let i = col % BLOCK;
        let per = self.format.values_per_word();
        let word = self.data[b * self.format.words_per_block() + i / per];
        self.format.decode(word >> ((i % per) * self.format.bits()))
    }

    /// The scale of the block holding one element.
    pub fn scale(&self, row: usize, col: usize) -> f32 {
        f16::from_bits(self.scales[row * blocks_per_row(self.cols) + col / BLOCK]).to_f32()
    }

    /// Row-major f32 values: scale x level.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for row in 0..self.rows {
            for col in 0..self.cols {
                out.push(self.scale(row, col) * self.level(row, col) as f32);
            }
        }
        out
    }

    /// Bytes stored: packed levels and scales.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4 + self.scales.len() * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (a 64-bit LCG), scaled per row so blocks differ.
    fn values(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                u * (1.0 + (i / cols) as f32)
            })
            .collect()
    }

    #[test]
    fn q8_bytes_are_twos_complement_levels_little_end_first() {
        // Scale 0.5 exactly (the block's largest magnitude is 127 x 0.5), so value = level / 2.
        let levels: Vec<i32> = (0..32)
            .map(|i| if i == 5 { -127 } else { i * 3 - 40 })
            .collect();
        let vals: Vec<f32> = levels.iter().map(|&l| l as f32 * 0.5).collect();
        let q = QuantMatrix::quantize(QuantFormat::Q8, 1, 32, &vals).unwrap();
        assert_eq!(q.scales, vec![f16::from_f32(0.5).to_bits()]);
        let want: Vec<u32> = levels
            .chunks(4)
            .map(|c| {
                u32::from_le_bytes([
                    c[0] as i8 as u8,
                    c[1] as i8 as u8,
                    c[2] as i8 as u8,
                    c[3] as i8 as u8,
                ])
            })
            .collect();
        assert_eq!(q.data, want);
        assert_eq!(q.dequantize(), vals);
    }

    #[test]
    fn q4_nibbles_are_levels_plus_eight_low_nibble_first() {
        // First eight levels 1, -1, 2, -2, 3, -3, 7, -7 -> nibbles 9 7 A 6 B 5 F 1, written
        // high nibble first as 0x1F5B6A79; the rest zero (nibble 8). Scale 0.25 exactly.
        let mut levels = vec![1, -1, 2, -2, 3, -3, 7, -7];
        levels.resize(32, 0);
        let vals: Vec<f32> = levels.iter().map(|&l| l as f32 * 0.25).collect();
        let q = QuantMatrix::quantize(QuantFormat::Q4, 1, 32, &vals).unwrap();
        assert_eq!(q.scales, vec![f16::from_f32(0.25).to_bits()]);
        assert_eq!(
            q.data,
            vec![0x1F5B_6A79, 0x8888_8888, 0x8888_8888, 0x8888_8888]
        );
        assert_eq!(q.dequantize(), vals);
    }

    #[test]
    fn every_value_is_within_half_a_step_of_its_block_scale() {
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            for (rows, cols) in [(3, 688), (2, 5), (4, 64), (1, 33)] {
                let v = values(rows, cols, 7 + cols as u64);
                let q = QuantMatrix::quantize(format, rows, cols, &v).unwrap();
                let back = q.dequantize();
                for r in 0..rows {
                    for c in 0..cols {
                        let i = r * cols + c;
                        // The scale rounds to f16, so allow its relative error on the top level.
                        let step = q.scale(r, c);
                        let tol = step * 0.5 + v[i].abs() * 2e-3 + 1e-7;
                        assert!(
                            (back[i] - v[i]).abs() <= tol,
                            "{format} [{rows},{cols}] ({r},{c}): {} vs {}",
                            back[i],
                            v[i]
                        );
                    }
                    // The block's largest magnitude maps to (about) the top level.
                    let top = (0..cols).map(|c| q.level(r, c).abs()).max().unwrap();
                    assert!(top >= format.max_level() - 1, "{format}: top level {top}");
                }
            }
        }
    }

    #[test]
    fn a_short_tail_block_has_its_own_scale_and_zero_padding() {
        // 688 = 21 full blocks + 16: large values everywhere but the tail, which must keep
        // its small values to its own precision.
        let cols = 688;
        let v: Vec<f32> = (0..cols)
            .map(|c| {
                if c < 672 {
                    1000.0
                } else {
                    0.01 * (c - 671) as f32
                }
            })
            .collect();
        for format in [QuantFormat::Q8, QuantFormat::Q4] {
            let q = QuantMatrix::quantize(format, 1, cols, &v).unwrap();
            assert_eq!(q.scales.len(), 22);
            assert_eq!(q.data.len(), 22 * format.words_per_block());
            let tail_scale = f16::from_bits(q.scales[21]).to_f32();
            let want = 0.16 / format.max_level() as f32;
            assert!(
                (tail_scale - want).abs() <= want * 1e-3,
                "{format}: {tail_scale}"
            );
            // The padding (values 16..32 of the last block) is level 0.
            let last = &q.data[21 * format.words_per_block()..];
            let pad_words = &last[format.words_per_block() / 2..];
            let zero = format.encode(0);
            let per = format.values_per_word();
            let zero_word = (0..per).fold(0u32, |w, i| w | zero << (i * format.bits()));
            assert!(
                pad_words.iter().all(|&w| w == zero_word),
                "{format}: {last:x?}"
            );
            let back = q.dequantize();
            assert!((back[cols - 1] - 0.16).abs() <= tail_scale * 0.5 + 1e-6);
        }
    }

    #[test]
    fn an_all_zero_block_has_scale_zero() {
        let q = QuantMatrix::quantize(QuantFormat::Q4, 2, 40, &[0.0; 80]).unwrap();
        assert!(q.scales.iter().all(|&s| s == 0));
        assert_eq!(q.dequantize(), vec![0.0; 80]);
    }

    #[test]
    fn four_bit_matrices_take_under_a_third_of_their_f16_bytes() {
        // The shipped FFN's down projection: 256 rows of width 688.
        let (rows, cols) = (256, 688);
        let v = values(rows, cols, 1);
        let f16_bytes = rows * cols * 2;
        let q4 = QuantMatrix::quantize(QuantFormat::Q4, rows, cols, &v).unwrap();
        let q8 = QuantMatrix::quantize(QuantFormat::Q8, rows, cols, &v).unwrap();
        // 22 blocks x (16 + 2) bytes vs 1376 bytes per row; q8 22 x (32 + 2).
        assert_eq!(q4.bytes(), rows * 22 * 18);
        assert_eq!(q8.bytes(), rows * 22 * 34);
        assert!((q4.bytes() as f64) <= 0.35 * f16_bytes as f64);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let q8 = QuantFormat::Q8;
        assert_eq!(
            QuantMatrix::quantize(q8, 2, 3, &[0.0; 5]),
            Err(QuantError::Shape {
                rows: 2,
                cols: 3,
                expected: 6,
                found: 5
            })
        );
        assert_eq!(
            QuantMatrix::quantize(q8, 1, 3, &[0.0, f32::NAN, 1.0]),
            Err(QuantError::NonFinite { index: 1 })
        );
        assert!(matches!(
            QuantMatrix::quantize(q8, 1, 2, &[1e30, 0.0]),
            Err(QuantError::ScaleRange {
                row: 0,
                block: 0,
                ..
            })
        ));
        assert_eq!(
            QuantMatrix::quantize(q8, usize::MAX, 64, &[]),
            Err(QuantError::TooLarge {
                rows: usize::MAX,
                cols: 64
            })
        );
        assert!(matches!(
            QuantMatrix::from_parts(QuantFormat::Q4, 2, 40, vec![0; 15], vec![0; 4]),
            Err(QuantError::DataLength {
                expected: 16,
                found: 15,
                ..
            })
        ));
        assert!(matches!(
            QuantMatrix::from_parts(QuantFormat::Q4, 2, 40, vec![0; 16], vec![0; 3]),
            Err(QuantError::ScalesLength {
                expected: 4,
                found: 3,
                ..
            })
        ));
        let nan = f16::NAN.to_bits();
        assert_eq!(
            QuantMatrix::from_parts(QuantFormat::Q4, 2, 40, vec![0; 16], vec![0, 0, 0, nan]),
            Err(QuantError::BadScale { row: 1, block: 1 })
        );
        assert_eq!(
            "q5".parse::<QuantFormat>(),
            Err(QuantError::UnknownFormat("q5".into()))
        );
        assert_eq!("q4".parse::<QuantFormat>(), Ok(QuantFormat::Q4));
    }

    #[test]
    fn ggml_levels_and_negative_scales_read_as_stored() {
        // q4 nibble 0 is level -8 and q8 byte 0x80 is -128 (GGML writes both); a negative
        // scale (GGML's Q4_0 d = max / -8) multiplies as it is.
        let neg = f16::from_f32(-0.5).to_bits();
        let q4 = QuantMatrix::from_parts(
            QuantFormat::Q4,
            1,
            32,
            vec![0x0000_00F0, 0x8888_8888, 0x8888_8888, 0x8888_8888],
            vec![neg],
        )
        .unwrap();
        assert_eq!(
            (q4.level(0, 0), q4.level(0, 1), q4.level(0, 2)),
            (-8, 7, -8)
        );
        let v = q4.dequantize();
        assert_eq!((v[0], v[1], v[8]), (4.0, -3.5, -0.0));
        let q8 = QuantMatrix::from_parts(QuantFormat::Q8, 1, 32, vec![0x0000_7F80; 8], vec![neg])
            .unwrap();
        assert_eq!((q8.level(0, 0), q8.level(0, 1)), (-128, 127));
        assert_eq!(&q8.dequantize()[..3], &[64.0, -63.5, -0.0]);
        // -0 is a finite scale too; infinity is not.
        let minus_zero = f16::NEG_ZERO.to_bits();
        QuantMatrix::from_parts(QuantFormat::Q8, 1, 32, vec![0; 8], vec![minus_zero]).unwrap();
        assert_eq!(
            QuantMatrix::from_parts(
                QuantFormat::Q8,
                1,
                32,
                vec![0; 8],
                vec![f16::NEG_INFINITY.to_bits()]
            ),
            Err(QuantError::BadScale { row: 0, block: 0 })
        );
    }

    #[test]
    fn parts_round_trip_through_from_parts() {
        let v = values(3, 100, 3);
        let q = QuantMatrix::quantize(QuantFormat::Q8, 3, 100, &v).unwrap();
        let again =
            QuantMatrix::from_parts(QuantFormat::Q8, 3, 100, q.data.clone(), q.scales.clone())
                .unwrap();
        assert_eq!(again, q);
    }
}
