//! Kernel families: one module per shader file, each owning its pipelines, its params
//! struct (matching the WGSL struct), its dispatch, a CPU reference and its tests.

pub mod attention;
pub mod copy;
pub mod elementwise;
pub mod feedback;
pub mod hadamard;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod sample;

use crate::blocks::{QuantFormat, QuantMatrix, blocks_per_row};
use crate::gpu::{Gpu, GpuBuffer, GpuError, MemoryCategory};

/// How a weight matrix is stored on the GPU. Every format binds as `array<u32>` in WGSL:
/// `F32` holds the bit patterns (`bitcast<f32>(w[i])`), `F16` two halves per u32, element
/// `i` in half `i & 1` of word `i >> 1`, low half first (`unpack2x16float(w[i >> 1])`).
/// `Q8` and `Q4` hold a [`QuantMatrix`]'s packed levels, row after row, then its f16 block
/// scales two per word (low half first; an odd count is padded with a zero half), then
/// zero words up to a whole 16 bytes (the wide GEMV reads the buffer as `vec4<u32>`s, its
/// last scales included): the layout of `src/blocks.rs`, read by `weight_at`,
/// `dot_rows` and `dot_rows_wide` in matmul.wgsl.
/// None of them needs SHADER_F16 or 8-bit storage, so all work on every adapter and in
/// browsers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    F32,
    F16,
    Q8,
    Q4,
}

impl WeightFormat {
    /// Bytes a `[rows, cols]` matrix of this format takes on the GPU.
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> usize {
        match (self, self.quant()) {
            (_, Some(q)) => {
                let scales = rows * blocks_per_row(cols);
                quant_words(scales * q.words_per_block() + scales.div_ceil(2)) * 4
            }
            (WeightFormat::F16, None) => (rows * cols).div_ceil(2) * 4,
            (_, None) => rows * cols * 4,
        }
    }

    /// The block format of `Q8` and `Q4`.
    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            WeightFormat::Q8 => Some(QuantFormat::Q8),
            WeightFormat::Q4 => Some(QuantFormat::Q4),
            WeightFormat::F32 | WeightFormat::F16 => None,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q4 => "q4",
        }
    }

    /// The shader's `W_FMT` constant; must match the `W_*` constants in matmul.wgsl.
    pub fn shader_code(self) -> u32 {
        self as u32
    }
}

impl From<QuantFormat> for WeightFormat {
    fn from(q: QuantFormat) -> Self {
        match q {
            QuantFormat::Q8 => WeightFormat::Q8,
            QuantFormat::Q4 => WeightFormat::Q4,
        }
    }
}

/// A [rows, cols] weight matrix on the GPU (HF layout: `weight[out][in]`), row-major, or
/// with `transposed` (f16 only) stored as its transpose: for each input, the `rows`
/// outputs' halves one after another, two per word, so neighbouring outputs are
/// neighbouring words (what `gemv_cols` reads on CPU adapters: vector loads, no gathers).
#[derive(Debug)]
pub struct Matrix {
    pub buffer: GpuBuffer,
    pub rows: usize,
    pub cols: usize,
    pub format: WeightFormat,
    pub transposed: bool,
}

impl Matrix {
    fn new(
        buffer: GpuBuffer,
        rows: usize,
        cols: usize,
        format: WeightFormat,
        transposed: bool,
    ) -> Self {
        Self {
            buffer,
            rows,
            cols,
            format,
            transposed,
        }
    }

    /// Uploads f32 values (`data.len() == rows * cols`).
    pub fn from_f32(
        gpu: &Gpu,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, GpuError> {
        check_len(label, data.len(), rows, cols)?;
        let buffer = gpu.upload(MemoryCategory::Weights, label, data)?;
        Ok(Self::new(buffer, rows, cols, WeightFormat::F32, false))
    }

    /// Uploads IEEE half-precision bit patterns (`bits.len() == rows * cols`), packed two
    /// per u32 (an odd count is padded with a zero half).
    pub fn from_f16_bits(
        gpu: &Gpu,
        label: &str,
        bits: &[u16],
        rows: usize,
        cols: usize,
    ) -> Result<Self, GpuError> {
        check_len(label, bits.len(), rows, cols)?;
        let words: Vec<u32> = pack_halves(bits).collect();
        let buffer = gpu.upload(MemoryCategory::Weights, label, &words)?;
        Ok(Self::new(buffer, rows, cols, WeightFormat::F16, false))
    }

    /// [`Matrix::from_f16_bits`] stored transposed (see [`Matrix`]); `rows` must be even,
    /// so every word holds two outputs of one input and the bytes are those of the
    /// row-major matrix.
    pub fn from_f16_bits_transposed(
        gpu: &Gpu,
        label: &str,
        bits: &[u16],
        rows: usize,
        cols: usize,
    ) -> Result<Self, GpuError> {
        check_len(label, bits.len(), rows, cols)?;
        if !rows.is_multiple_of(2) {
            return Err(GpuError::Validation(format!(
                "matrix `{label}`: a transposed f16 matrix needs an even number of rows, not {rows}"
            )));
        }
        let mut t = vec![0u16; bits.len()];
        for (o, row) in bits.chunks_exact(cols.max(1)).enumerate() {
            for (i, &b) in row.iter().enumerate() {
                t[i * rows + o] = b;
            }
        }
        let words: Vec<u32> = pack_halves(&t).collect();
        let buffer = gpu.upload(MemoryCategory::Weights, label, &words)?;
        Ok(Self::new(buffer, rows, cols, WeightFormat::F16, true))
    }

    /// Uploads a block-quantized matrix as it is stored: its packed levels, then its scales
    /// two per word (see [`WeightFormat`]).
    pub fn from_quant(gpu: &Gpu, label: &str, q: &QuantMatrix) -> Result<Self, GpuError> {
        let mut words = Vec::with_capacity(quant_words(q.data.len() + q.scales.len().div_ceil(2)));
        words.extend_from_slice(&q.data);
        words.extend(pack_halves(&q.scales));
        words.resize(quant_words(words.len()), 0);
        let buffer = gpu.upload(MemoryCategory::Weights, label, &words)?;
        Ok(Self::new(buffer, q.rows, q.cols, q.format.into(), false))
    }
}

/// A `[rows, cols]` weight matrix split by rows into parts of at most one storage binding
/// each, so a matrix larger than `max_storage_buffer_binding_size` (128 MiB in browsers: a
/// 128k x 4096 f16 embedding is 1 GiB) still works: the embedding gathers each token from
/// the part holding its row (`elementwise::encode_embed_split`), a product runs once per
/// part into that part's columns of its output (`matmul::encode_split`). Every output is
/// computed as in the unsplit matrix, so the results are the same bits. One part when
/// the matrix fits.
#[derive(Debug)]
pub struct RowSplit {
    /// The parts in order, each with the row of the whole matrix its row 0 is.
    pub parts: Vec<(usize, Matrix)>,
    pub rows: usize,
    pub cols: usize,
}

impl RowSplit {
    /// Rows per part (the last may have fewer) of a `[rows, cols]` matrix of `format` in
    /// buffers of at most `max_bytes`: all of them when they fit, else as many as fit,
    /// rounded down to even (a transposed f16 part pairs its rows). Errors when not even
    /// two rows fit.
    pub fn part_rows(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        max_bytes: u64,
    ) -> Result<usize, GpuError> {
        let fits = |r: usize| format.matrix_bytes(r, cols) as u64 <= max_bytes;
        if fits(rows) {
            return Ok(rows.max(1));
        }
        // A first guess from the bytes of a row, then down to what fits.
        let per_row = (format.matrix_bytes(64, cols) / 64).max(1) as u64;
        let mut r = ((max_bytes / per_row) as usize).min(rows);
        while r > 0 && !fits(r) {
            r -= 1;
        }
        r -= r % 2;
        if r == 0 {
            return Err(GpuError::LimitExceeded {
                what: format!("two rows of a {} matrix {cols} wide", format.name()),
                requested: format.matrix_bytes(2, cols) as u64,
                limit: max_bytes,
                adapter: String::new(),
            });
        }
        Ok(r)
    }

    /// The parts of `part_rows` rows each, `make(first, n)` uploading rows `first .. first
    /// + n` as one [`Matrix`].
    pub fn upload(
        rows: usize,
        cols: usize,
        part_rows: usize,
        mut make: impl FnMut(usize, usize) -> Result<Matrix, GpuError>,
    ) -> Result<Self, GpuError> {
        let mut parts = Vec::with_capacity(rows.div_ceil(part_rows.max(1)).max(1));
        let mut first = 0;
        while first < rows || parts.is_empty() {
            let n = part_rows.max(1).min(rows - first);
            parts.push((first, make(first, n)?));
            first += n;
        }
        Ok(Self { parts, rows, cols })
    }

    /// The only part, when the matrix was not split.
    pub fn whole(&self) -> Option<&Matrix> {
        match &self.parts[..] {
            [(_, m)] => Some(m),
            _ => None,
        }
    }
}

impl QuantMatrix {
    /// Rows `first .. first + n` as a matrix of their own (levels and scales copied).
    pub fn rows_slice(&self, first: usize, n: usize) -> QuantMatrix {
        let blocks = blocks_per_row(self.cols);
        let words = blocks * self.format.words_per_block();
        QuantMatrix {
            format: self.format,
            rows: n,
            cols: self.cols,
            data: self.data[first * words..(first + n) * words].to_vec(),
            scales: self.scales[first * blocks..(first + n) * blocks].to_vec(),
        }
    }
}

/// Words of a quantized matrix on the GPU: `words` of levels and scales, padded to whole
/// vec4<u32>s for `gemv_wide`.
fn quant_words(words: usize) -> usize {
    words.next_multiple_of(4)
}

/// f16 bit patterns two per u32, low half first, an odd count padded with a zero half.
fn pack_halves(bits: &[u16]) -> impl Iterator<Item = u32> + '_ {
    bits.chunks(2)
        .map(|p| p[0] as u32 | (p.get(1).copied().unwrap_or(0) as u32) << 16)
}

fn check_len(label: &str, len: usize, rows: usize, cols: usize) -> Result<(), GpuError> {
    if len != rows * cols {
        return Err(GpuError::Validation(format!(
            "matrix `{label}` has {len} values but its shape [{rows}, {cols}] needs {}",
            rows * cols
        )));
    }
    Ok(())
}

/// Columns `offset .. offset + width` of a row-major f32 matrix whose rows lie `stride`
/// values apart, as a kernel input or output: q, k or v inside the decoder's fused
/// `[rows, q | k | v]` buffer, or (made `From` a buffer) a whole `[rows, width]` buffer.
#[derive(Clone, Copy, Debug)]
pub struct Cols<'a> {
    pub buffer: &'a GpuBuffer,
    /// Values from one row to the next; `None`: the op's own width (a dense matrix).
    pub stride: Option<usize>,
    /// Value index of column 0 in row 0.
    pub offset: usize,
}

impl<'a> Cols<'a> {
    /// Columns `offset ..` of rows `stride` values wide.
    pub fn new(buffer: &'a GpuBuffer, stride: usize, offset: usize) -> Self {
        Self {
            buffer,
            stride: Some(stride),
            offset,
        }
    }

    /// (stride, offset) for an op reading `width` columns of `rows` rows, after checking
    /// that they lie inside the buffer and the window inside a row. `what` names the
    /// operand in errors.
    pub fn layout(
        &self,
        what: &str,
        rows: usize,
        width: usize,
    ) -> Result<(usize, usize), GpuError> {
        let stride = self.stride.unwrap_or(width);
        if self.offset + width > stride {
            return Err(GpuError::Validation(format!(
                "`{what}`: columns {}..{} do not fit rows of {stride}",
                self.offset,
                self.offset + width
            )));
        }
        if rows > 0 {
            let end = (rows - 1) as u64 * stride as u64 + self.offset as u64 + width as u64;
            self.buffer.require(what, end * 4)?;
        }
        Ok((stride, self.offset))
    }
}

impl<'a> From<&'a GpuBuffer> for Cols<'a> {
    fn from(buffer: &'a GpuBuffer) -> Self {
        Self {
            buffer,
            stride: None,
            offset: 0,
        }
    }
}
