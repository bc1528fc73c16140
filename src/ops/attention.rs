//! Causal multi-head attention over a KV cache (`shaders/attention.wgsl`).
//!
//! A batch is a list of rows, each a query of one sequence at one position; row r attends
//! to keys 0..=pos of its sequence, which must already be in the cache. The rows live twice:
//! on the GPU as a row table (`[rows, 2]` u32, (seq, pos) per row, see [`row_table`]) that
//! the kernels read, and on the host as `&[(u32, u32)]` to validate and plan the work.
//!
//! - [`Attention::encode_kv_write`]: stores the batch's key and value rows in the cache.
//! - [`Attention::encode_prefill`]: tiles of up to `TQ` rows of one sequence; each
//!   workgroup streams its sequence's keys through workgroup memory in blocks of `TK` with
//!   an online softmax, so every key is read once per tile rather than once per row.
//! - [`Attention::encode_decode`]: one workgroup per (row, head); contexts longer than the
//!   decode chunk ([`DECODE_CHUNK`] keys) are split into chunks run by separate
//!   workgroups, and a reduce dispatch combines their partial (max, sum, acc) states.
//! - [`attention_reference`], [`kv_write_reference`]: the CPU references.
//!
//! Both attention paths compute the same function; they differ only in how work is split.

use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use super::Cols;
use super::rope::RopeTable;
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, MemoryCategory, PipelineKey, Record, Shader};
// The rotation is the engine's normalized WHT: butterflies of half-width 1, 2, 4, ... in
// chunks of p, then the m x m mix summed in the order c = 0, 1, ..., then the f32 scale
// 1/sqrt(n) (rotation_norm): the arithmetic of attention.wgsl's `fwht` and `rot_norm`, so
// both produce the same bits.
use crate::ops::hadamard::cpu::{WhtSize, fwht, sign_uniform};

/// Largest head_dim the kernels support: a prefill tile holds at least 4 query rows; also
/// the size of kv_quant's private copy of a head (`MAX_HD` in attention.wgsl).
pub const MAX_HEAD_DIM: usize = 256;
/// Largest row width d = heads * head_dim.
pub const MAX_WIDTH: usize = 32768;
/// Keys per chunk of the split decode by default: a row whose context is longer is split
/// into chunks of this many keys, each run by its own workgroups. The decoder sizes its
/// chunks by the adapter instead ([`decode_chunk_for`]).
pub const DECODE_CHUNK: usize = 256;
/// Fewest keys per chunk [`decode_chunk_for`] gives: shorter chunks cost more in partial
/// states and their reduction than their parallelism gains.
pub const MIN_DECODE_CHUNK: usize = 64;

/// Keys per chunk of the split decode for `heads` heads and caches of `max_pos` positions
/// on `gpu`: a full context splits into as many chunks as fill [`Gpu::parallelism`]
/// workgroups per row, none shorter than [`MIN_DECODE_CHUNK`]. A CPU adapter's handful of
/// threads is filled by the heads alone, so it never splits (no reduce dispatch); a GPU
/// splits a long context over its compute units.
pub fn decode_chunk_for(gpu: &Gpu, heads: usize, max_pos: usize) -> usize {
    chunk_for(gpu.parallelism(), heads, max_pos)
}

fn chunk_for(parallelism: usize, heads: usize, max_pos: usize) -> usize {
    let parts = parallelism.div_ceil(heads.max(1)).max(1);
    max_pos.div_ceil(parts).max(MIN_DECODE_CHUNK)
}

/// f32s of workgroup memory an attend tile may use at most (`TILE` in attention.wgsl, an
/// override): the device's limit up to this (64 KiB); past it no tile grows, since a block
/// holds at most MAX_BLOCK_KEYS keys. See [`tile_elems`].
const MAX_TILE_ELEMS: usize = 16384;
/// The WebGPU default limit (16 KiB), which every tile test also runs at.
#[cfg(test)]
const DEFAULT_TILE_ELEMS: usize = 4096;

/// The attend tile's workgroup memory on `gpu`, in f32s: its whole limit (lavapipe's 32
/// KiB doubles a decode block from 31 to 63 keys at head_dim 64), up to MAX_TILE_ELEMS.
fn tile_elems(gpu: &Gpu) -> usize {
    (gpu.limits().max_compute_workgroup_storage_size as usize / 4).min(MAX_TILE_ELEMS)
}
/// Output pairs one attend invocation accumulates at most; must match `MAX_ACC` in
/// attention.wgsl.
const MAX_ACC: usize = 8;
/// Invocations per attend workgroup; passed as `WG`.
const ATTEND_WORKGROUP: usize = 64;
/// Query rows per prefill tile at most; passed as `TQ`.
const MAX_TILE_ROWS: usize = 32;
/// Keys per block at most; passed as `TK`.
const MAX_BLOCK_KEYS: usize = 64;
/// Invocations per workgroup of the elementwise entry points (kv_write, reduce); passed as
/// `EW_WG`.
const ELEMENTWISE_WORKGROUP: u32 = 256;
/// Invocations per workgroup of kv_quant (one per (row, head, k or v), each holding its
/// head in private memory); passed as `EW_WG`.
const QUANT_WORKGROUP: u32 = 64;

/// Uniform parameters of every attention.wgsl entry point; must match `Params` in
/// attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct AttnParams {
    tiles: u32,
    tiles_x: u32,
    rows: u32,
    heads: u32,
    chunks: u32,
    chunk_len: u32,
    max_seqs: u32,
    max_pos: u32,
    scale: f32,
    src_stride: u32,
    src_off: u32,
    src_off2: u32,
    /// [`rotation_norm`] of head_dim: the rotated formats' 1/sqrt(head_dim).
    rot_norm: f32,
    /// kv_quant: amax x level_inv is the scale ([`level_inv`]; 0 for f32 and f16).
    level_inv: f32,
    /// Fused decode: pair of k in row 0 of the q binding.
    k_off: u32,
    /// Fused decode: pairs per position of the RoPE table (head_dim / 2).
    rope_half: u32,
}

/// Every attention entry point's bindings: params, row_table, plan | k_rows, q | v_rows,
/// k_cache, v_cache, out, parts, cos_sin, rot_signs. The caches are writable for the
/// fused decode (attention.wgsl, FUSE); kv_write and kv_quant bind stand-ins at 6-8 so
/// that `rot_signs`, which the shared `fwht` reads, has one binding number everywhere.
const BINDINGS: [Binding; 10] = [
    Binding::Uniform,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadWrite,
    Binding::ReadOnly,
    Binding::Uniform,
];

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
///   `model::quant`'s weight blocks, with an f32 scale per (position, head)).
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
fn level_inv(max_level: i32) -> f32 {
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
    fn code(self) -> u32 {
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
    fn rotation_order(self, head_dim: usize) -> u32 {
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

/// The attention problem: `heads` heads of `head_dim`, and a KV cache of `max_seqs`
/// sequences by `max_pos` positions, each buffer [max_seqs, max_pos, heads] head blocks
/// of `kv` ([`KvFormat::head_words`] u32 words each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub head_dim: usize,
    pub max_seqs: usize,
    pub max_pos: usize,
    pub kv: KvFormat,
}

impl AttnShape {
    /// Row width d = heads * head_dim.
    pub fn d(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Bytes of one cache buffer (k or v).
    pub fn cache_bytes(&self) -> u64 {
        self.max_seqs as u64
            * self.max_pos as u64
            * self.kv.position_bytes(self.heads, self.head_dim)
    }

    /// Bytes of `rows` activation rows ([rows, d]).
    pub fn row_bytes(&self, rows: usize) -> u64 {
        rows as u64 * self.d() as u64 * 4
    }

    /// Checks that the kernels support this shape.
    pub fn validate(&self) -> Result<(), GpuError> {
        let bad = |m: String| Err(GpuError::Validation(format!("attention shape: {m}")));
        if self.heads == 0 {
            return bad("heads must be at least 1".into());
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > MAX_HEAD_DIM {
            return bad(format!(
                "head_dim {} must be even and between 2 and {MAX_HEAD_DIM} (kernels move pairs)",
                self.head_dim
            ));
        }
        if self.d() > MAX_WIDTH {
            return bad(format!(
                "heads * head_dim = {} exceeds the supported width {MAX_WIDTH}",
                self.d()
            ));
        }
        if let Err(e) = self.kv.check_head_dim(self.head_dim) {
            return bad(e.to_string());
        }
        if self.max_seqs == 0 || self.max_pos == 0 {
            return bad(format!(
                "the cache needs at least one sequence and one position (max_seqs {}, max_pos {})",
                self.max_seqs, self.max_pos
            ));
        }
        // The kernels index the cache with u32.
        let elems = self
            .max_seqs
            .checked_mul(self.max_pos)
            .and_then(|n| n.checked_mul(self.d()));
        if elems.is_none_or(|n| n > u32::MAX as usize) || self.cache_bytes() / 4 > u32::MAX as u64 {
            return bad(format!(
                "a cache of {} x {} x {} values exceeds 32-bit indexing",
                self.max_seqs,
                self.max_pos,
                self.d()
            ));
        }
        Ok(())
    }

    /// Checks that every row addresses the cache.
    fn check_rows(&self, rows: &[(u32, u32)]) -> Result<(), GpuError> {
        for (r, &(seq, pos)) in rows.iter().enumerate() {
            if seq as usize >= self.max_seqs {
                return Err(GpuError::Validation(format!(
                    "attention row {r}: sequence {seq} is outside the cache (max_seqs = {})",
                    self.max_seqs
                )));
            }
            if pos as usize >= self.max_pos {
                return Err(GpuError::Validation(format!(
                    "attention row {r}: position {pos} is outside the cache (max_pos = {})",
                    self.max_pos
                )));
            }
        }
        if self.row_bytes(rows.len()) / 4 > u32::MAX as u64 {
            return Err(GpuError::Validation(format!(
                "attention batch of {} rows of width {} exceeds 32-bit indexing",
                rows.len(),
                self.d()
            )));
        }
        Ok(())
    }
}

/// The row table the kernels read: (seq, pos) of each row, flattened to `[rows, 2]`.
pub fn row_table(rows: &[(u32, u32)]) -> Vec<u32> {
    rows.iter().flat_map(|&(seq, pos)| [seq, pos]).collect()
}

/// The tile of one attend pipeline: `rows` queries (TQ) against blocks of `keys` keys
/// (TK) in `elems` f32s of workgroup memory (TILE); each invocation accumulates `acc`
/// output pairs (ACC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AttnTile {
    rows: usize,
    keys: usize,
    acc: usize,
    elems: usize,
}

impl AttnTile {
    /// A tile of `rows` queries (a power of two dividing the workgroup) for `head_dim`:
    /// the largest key block that fits workgroup memory next to Q [rows, head_dim]:
    /// (rows + 2 * keys) * head_dim + rows * keys <= elems (Q, K, V, scores).
    fn new(rows: usize, head_dim: usize, elems: usize) -> Self {
        let keys = ((elems - rows * head_dim) / (2 * head_dim + rows)).min(MAX_BLOCK_KEYS);
        let lanes_per_row = ATTEND_WORKGROUP / rows;
        Self {
            rows,
            keys,
            acc: (head_dim / 2).div_ceil(lanes_per_row),
            elems,
        }
    }

    /// Prefill: as many rows as the accumulators allow (rows * head_dim / 2 pairs over the
    /// workgroup, at most MAX_ACC per invocation), which also keeps Q within a quarter of
    /// workgroup memory. head_dim 64: 16 rows x 21 keys; 256: 4 x 5.
    fn prefill(head_dim: usize, elems: usize) -> Self {
        let fit = (2 * MAX_ACC * ATTEND_WORKGROUP / head_dim).min(MAX_TILE_ROWS);
        Self::new(1 << fit.ilog2(), head_dim, elems)
    }

    /// Decode: one row per tile. In 16 KiB, head_dim 64: 31 keys per block; 256: 7.
    fn decode(head_dim: usize, elems: usize) -> Self {
        Self::new(1, head_dim, elems)
    }

    fn key(&self, shape: AttnShape, partial: bool, fused: bool) -> PipelineKey {
        PipelineKey::new(Shader::Attention, "attend")
            .with("HD", shape.head_dim as u32)
            .with("KV", shape.kv.code())
            .with_flag("KV_ROT", shape.kv.rotated())
            .with("HM", shape.kv.rotation_order(shape.head_dim))
            .with("WG", ATTEND_WORKGROUP as u32)
            .with("TQ", self.rows as u32)
            .with("TK", self.keys as u32)
            .with("ACC", self.acc as u32)
            .with("TILE", self.elems as u32)
            .with_flag("PARTIAL", partial)
            .with_flag("FUSE", fused)
    }
}

/// Groups rows into query tiles of at most `tile_rows` consecutive rows of one sequence;
/// returns the plan the kernel reads, `[tiles, 2]`: (first row, row count) per tile.
fn plan_tiles(rows: &[(u32, u32)], tile_rows: usize) -> Vec<u32> {
    let mut plan = Vec::new();
    let mut first = 0;
    while first < rows.len() {
        let seq = rows[first].0;
        let count = rows[first..]
            .iter()
            .take(tile_rows)
            .take_while(|r| r.0 == seq)
            .count();
        plan.extend([first as u32, count as u32]);
        first += count;
    }
    plan
}

/// A column window as the kernels read it, in vec2 pairs: (stride, offset), both even in
/// values.
fn pairs(cols: &Cols<'_>, what: &str, rows: usize, d: usize) -> Result<(u32, u32), GpuError> {
    let (stride, offset) = cols.layout(what, rows, d)?;
    if !stride.is_multiple_of(2) || !offset.is_multiple_of(2) {
        return Err(GpuError::Validation(format!(
            "`{what}`: the kernels read value pairs, so row stride {stride} and offset {offset} must be even"
        )));
    }
    let pair = |n: usize| {
        u32::try_from(n / 2)
            .map_err(|_| GpuError::Validation(format!("`{what}`: {n} exceeds 32-bit indexing")))
    };
    Ok((pair(stride)?, pair(offset)?))
}

/// Errors if the buffer a dispatch writes is also one it reads: wgpu would reject the
/// whole pass at submit.
fn distinct(written: (&str, &GpuBuffer), read: &[(&str, &GpuBuffer)]) -> Result<(), GpuError> {
    match read.iter().find(|(_, b)| b.buffer() == written.1.buffer()) {
        Some((name, _)) => Err(GpuError::Validation(format!(
            "attention {} must be a buffer of its own, not also the {name}",
            written.0
        ))),
        None => Ok(()),
    }
}

/// The buffers of one attention call.
struct AttendBuffers<'a> {
    q: Cols<'a>,
    k_cache: &'a GpuBuffer,
    v_cache: &'a GpuBuffer,
    row_table: &'a GpuBuffer,
    out: &'a GpuBuffer,
}

/// The work of rope and the KV write that the fused decode ([`Attention::encode_decode_fused`])
/// does inside attend: where k and v are (the same buffer as q) and the RoPE table.
#[derive(Clone, Copy)]
pub struct DecodeFusion<'a> {
    pub k: Cols<'a>,
    pub v: Cols<'a>,
    pub rope: &'a RopeTable,
}

/// How one attend dispatch splits the keys: `chunks` chunks of `chunk_len` keys.
#[derive(Clone, Copy, Debug)]
struct Split {
    chunks: usize,
    chunk_len: usize,
}

impl Split {
    /// One chunk holding every position of the cache.
    fn whole(shape: AttnShape) -> Self {
        Self {
            chunks: 1,
            chunk_len: shape.max_pos,
        }
    }
}

/// The attention kernels on one device.
pub struct Attention<'g> {
    gpu: &'g Gpu,
    /// Bound to the `out` or `parts` slot a dispatch does not use.
    dummy: GpuBuffer,
    /// kv_write's second writable stand-in (6 and 7 must not alias).
    dummy2: GpuBuffer,
    /// Partial states of the split decode, per part p = (row, head, chunk): acc
    /// [parts, head_dim], then (m, l) [parts, 2]; grown on demand.
    partials: Mutex<Option<GpuBuffer>>,
    /// Keys per chunk of the split decode.
    decode_chunk: usize,
}

impl<'g> Attention<'g> {
    pub fn new(gpu: &'g Gpu) -> Result<Self, GpuError> {
        Ok(Self {
            gpu,
            dummy: gpu.upload(MemoryCategory::Uniforms, "attention dummy", &[0f32; 4])?,
            dummy2: gpu.upload(MemoryCategory::Uniforms, "attention dummy 2", &[0f32; 4])?,
            partials: Mutex::new(None),
            decode_chunk: DECODE_CHUNK,
        })
    }

    /// The `rot_signs` uniform for a rotated head of m x 2^k values, m > 1: H_m's sign
    /// masks, uploaded with the dispatch as its params are; None where the spare uniform
    /// stands in (every entry point binds the slot).
    fn rot_signs(&self, shape: AttnShape) -> Option<GpuBuffer> {
        let m = shape.kv.rotation_order(shape.head_dim) as usize;
        (m > 1).then(|| self.gpu.uniform("attention rot_signs", &sign_uniform(m)))
    }

    /// Sets the keys per chunk of the split decode (default [`DECODE_CHUNK`]): contexts
    /// longer than this are split. Small values let tests and benchmarks take the split
    /// path with short contexts.
    pub fn with_decode_chunk(mut self, keys: usize) -> Result<Self, GpuError> {
        if keys == 0 || keys > u32::MAX as usize {
            return Err(GpuError::Validation(format!(
                "decode chunk of {keys} keys: must be between 1 and {}",
                u32::MAX
            )));
        }
        self.decode_chunk = keys;
        Ok(self)
    }

    pub fn decode_chunk(&self) -> usize {
        self.decode_chunk
    }

    /// Chunks encode_decode splits the keys of `rows` into: 1 when the longest context
    /// fits one chunk, else that context over the chunk length.
    pub fn decode_chunks(&self, rows: &[(u32, u32)]) -> usize {
        let context = rows.iter().map(|r| r.1 as usize + 1).max().unwrap_or(0);
        if context <= self.decode_chunk {
            1
        } else {
            context.div_ceil(self.decode_chunk)
        }
    }

    /// Records `k_cache[seq][pos] = k[r]` and `v_cache[seq][pos] = v[r]` for every row r
    /// = (seq, pos) of `rows`; `k`, `v` are [rows, d], the caches hold `shape.kv`
    /// ([`AttnShape::cache_bytes`]; the quantized formats rotate, scale and pack each head
    /// as [`KvFormat::encode_head`]). Two rows with the same (seq, pos) race.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_kv_write<'a>(
        &self,
        pass: &mut dyn Record,
        k: impl Into<Cols<'a>>,
        v: impl Into<Cols<'a>>,
        row_table: &GpuBuffer,
        rows: &[(u32, u32)],
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        shape.validate()?;
        shape.check_rows(rows)?;
        let (k, v) = (k.into(), v.into());
        let (k_stride, k_off) = pairs(&k, "attention k rows", rows.len(), shape.d())?;
        let (v_stride, v_off) = pairs(&v, "attention v rows", rows.len(), shape.d())?;
        if k_stride != v_stride {
            return Err(GpuError::Validation(format!(
                "attention k and v rows must be equally wide ({} and {} values)",
                2 * k_stride,
                2 * v_stride
            )));
        }
        let (k, v) = (k.buffer, v.buffer);
        row_table.require("attention row table", rows.len() as u64 * 8)?;
        k_cache.require("attention k cache", shape.cache_bytes())?;
        v_cache.require("attention v cache", shape.cache_bytes())?;
        self.gpu
            .check_binding_size("attention KV cache", shape.cache_bytes())?;
        let inputs = [("k rows", k), ("v rows", v), ("row table", row_table)];
        distinct(("k cache", k_cache), &inputs)?;
        distinct(("v cache", v_cache), &inputs)?;
        if rows.is_empty() {
            return Ok(());
        }
        // f32 and f16: one invocation per value pair; the quantized formats: one per
        // (row, head, k or v), which holds the head to rotate it and find its scale.
        let (entry, wg, invocations) = match shape.kv.max_level() {
            None => (
                "kv_write",
                ELEMENTWISE_WORKGROUP,
                rows.len() * shape.d() / 2,
            ),
            Some(_) => ("kv_quant", QUANT_WORKGROUP, rows.len() * shape.heads * 2),
        };
        let key = PipelineKey::new(Shader::Attention, entry)
            .with("HD", shape.head_dim as u32)
            .with("EW_WG", wg)
            .with("KV", shape.kv.code())
            .with_flag("KV_ROT", shape.kv.rotated())
            .with("HM", shape.kv.rotation_order(shape.head_dim));
        let pipeline = self.gpu.pipeline(&key, &BINDINGS)?;
        let grid = self.gpu.grid(
            "attention kv_write",
            invocations.div_ceil(wg as usize) as u32,
        )?;
        let params = self.gpu.uniform(
            "attention kv_write params",
            &AttnParams {
                src_stride: k_stride,
                src_off: k_off,
                src_off2: v_off,
                ..Self::params(shape, rows.len(), grid.x, 0, Split::whole(shape))
            },
        );
        let rot_signs = self.rot_signs(shape);
        let signs = rot_signs.as_ref().unwrap_or(self.gpu.spare_uniform());
        let buffers = [
            params.buffer(),
            row_table.buffer(),
            k.buffer(),
            v.buffer(),
            k_cache.buffer(),
            v_cache.buffer(),
            self.dummy.buffer(),
            self.dummy2.buffer(),
            row_table.buffer(),
            signs.buffer(),
        ];
        self.gpu.dispatch(pass, &pipeline, &buffers, grid);
        Ok(())
    }

    /// Records `out[r] = softmax(q[r] K^T / sqrt(head_dim)) V` per head for every row r =
    /// (seq, pos), over keys 0..=pos of seq (already in the cache). `q` and `out` are
    /// [rows, d] (distinct buffers). Rows of several sequences may share a call; runs of
    /// consecutive rows of one sequence share tiles, so keep a sequence's rows together.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_prefill<'a>(
        &self,
        pass: &mut dyn Record,
        q: impl Into<Cols<'a>>,
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        row_table: &GpuBuffer,
        rows: &[(u32, u32)],
        out: &GpuBuffer,
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        let buffers = AttendBuffers {
            q: q.into(),
            k_cache,
            v_cache,
            row_table,
            out,
        };
        self.check_attend(&buffers, rows, shape)?;
        if rows.is_empty() {
            return Ok(());
        }
        let tile = AttnTile::prefill(shape.head_dim, tile_elems(self.gpu));
        let plan = plan_tiles(rows, tile.rows);
        let whole = Split::whole(shape);
        self.dispatch_attend(pass, &buffers, rows, shape, tile, &plan, whole, None, None)
    }

    /// Records the same function as [`Self::encode_prefill`] for a batch of single query
    /// rows (typically one per sequence, each at its own position). One workgroup per
    /// (row, head), or per (row, head, chunk) with a reduce dispatch after when the longest
    /// context exceeds the decode chunk (see [`Self::decode_chunks`]).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_decode<'a>(
        &self,
        pass: &mut dyn Record,
        q: impl Into<Cols<'a>>,
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        row_table: &GpuBuffer,
        rows: &[(u32, u32)],
        out: &GpuBuffer,
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        let buffers = AttendBuffers {
            q: q.into(),
            k_cache,
            v_cache,
            row_table,
            out,
        };
        self.decode(pass, &buffers, rows, shape, None)
    }

    /// [`Self::encode_decode`] with RoPE of q and k and the KV write of every row done in
    /// the same dispatch (the work of [`crate::ops::rope::encode_rope`] on q and k, then
    /// [`Self::encode_kv_write`], in the same arithmetic): `q`, `fusion.k` and `fusion.v`
    /// are column windows of one buffer (the decoder's fused q | k | v rows), unrotated.
    /// Every row must be the only one of its sequence in the call.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_decode_fused<'a>(
        &self,
        pass: &mut dyn Record,
        q: Cols<'a>,
        fusion: DecodeFusion<'a>,
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        row_table: &GpuBuffer,
        rows: &[(u32, u32)],
        out: &GpuBuffer,
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        if fusion.k.buffer.buffer() != q.buffer.buffer()
            || fusion.v.buffer.buffer() != q.buffer.buffer()
        {
            return Err(GpuError::Validation(
                "fused decode attention: q, k and v must be columns of one buffer".into(),
            ));
        }
        if fusion.rope.head_dim() != shape.head_dim || fusion.rope.max_positions() < shape.max_pos {
            return Err(GpuError::Validation(format!(
                "fused decode attention: the RoPE table ({} positions of head_dim {}) does not \
                 cover the cache ({} positions of head_dim {})",
                fusion.rope.max_positions(),
                fusion.rope.head_dim(),
                shape.max_pos,
                shape.head_dim
            )));
        }
        let mut seqs: Vec<u32> = rows.iter().map(|r| r.0).collect();
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[0] == w[1]) {
            return Err(GpuError::Validation(
                "fused decode attention takes one row per sequence".into(),
            ));
        }
        let buffers = AttendBuffers {
            q,
            k_cache,
            v_cache,
            row_table,
            out,
        };
        let inputs = [("q, k and v rows", q.buffer), ("row table", row_table)];
        distinct(("k cache", k_cache), &inputs)?;
        distinct(("v cache", v_cache), &inputs)?;
        self.decode(pass, &buffers, rows, shape, Some(fusion))
    }

    fn decode(
        &self,
        pass: &mut dyn Record,
        buffers: &AttendBuffers<'_>,
        rows: &[(u32, u32)],
        shape: AttnShape,
        fusion: Option<DecodeFusion<'_>>,
    ) -> Result<(), GpuError> {
        self.check_attend(buffers, rows, shape)?;
        if rows.is_empty() {
            return Ok(());
        }
        let tile = AttnTile::decode(shape.head_dim, tile_elems(self.gpu));
        let plan = plan_tiles(rows, 1);
        let chunks = self.decode_chunks(rows);
        if chunks == 1 {
            let whole = Split::whole(shape);
            return self
                .dispatch_attend(pass, buffers, rows, shape, tile, &plan, whole, None, fusion);
        }
        let split = Split {
            chunks,
            chunk_len: self.decode_chunk,
        };
        // One (acc [head_dim / 2 pairs], (m, l)) per (row, head, chunk), in vec2 pairs.
        let pairs = (rows.len() * shape.heads) as u64 * (chunks * (shape.head_dim / 2 + 1)) as u64;
        if pairs > u32::MAX as u64 {
            return Err(GpuError::Validation(format!(
                "split decode of {} rows x {chunks} chunks exceeds 32-bit indexing",
                rows.len()
            )));
        }
        let bytes = pairs * 8;
        let mut partials = self.partials.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = match partials.take() {
            Some(s) if s.size() >= bytes => s,
            old => {
                drop(old); // free the old one before allocating
                self.gpu
                    .storage(MemoryCategory::Scratch, "attention partials", bytes)?
            }
        };
        let result = self.dispatch_attend(
            pass,
            buffers,
            rows,
            shape,
            tile,
            &plan,
            split,
            Some(&scratch),
            fusion,
        );
        *partials = Some(scratch);
        result
    }

    /// Validates an attention call.
    fn check_attend(
        &self,
        b: &AttendBuffers<'_>,
        rows: &[(u32, u32)],
        shape: AttnShape,
    ) -> Result<(), GpuError> {
        shape.validate()?;
        shape.check_rows(rows)?;
        pairs(&b.q, "attention q", rows.len(), shape.d())?;
        b.out
            .require("attention out", shape.row_bytes(rows.len()))?;
        b.row_table
            .require("attention row table", rows.len() as u64 * 8)?;
        b.k_cache
            .require("attention k cache", shape.cache_bytes())?;
        b.v_cache
            .require("attention v cache", shape.cache_bytes())?;
        self.gpu
            .check_binding_size("attention KV cache", shape.cache_bytes())?;
        let inputs = [
            ("q", b.q.buffer),
            ("k cache", b.k_cache),
            ("v cache", b.v_cache),
            ("row table", b.row_table),
        ];
        distinct(("out", b.out), &inputs)
    }

    fn params(
        shape: AttnShape,
        rows: usize,
        tiles_x: u32,
        tiles: usize,
        split: Split,
    ) -> AttnParams {
        AttnParams {
            tiles: tiles as u32,
            tiles_x,
            rows: rows as u32,
            heads: shape.heads as u32,
            chunks: split.chunks as u32,
            chunk_len: split.chunk_len as u32,
            max_seqs: shape.max_seqs as u32,
            max_pos: shape.max_pos as u32,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            src_stride: shape.d() as u32 / 2,
            src_off: 0,
            src_off2: 0,
            rot_norm: rotation_norm(shape.head_dim),
            level_inv: shape.kv.max_level().map_or(0.0, level_inv),
            k_off: 0,
            rope_half: 0,
        }
    }

    /// Records attend over `plan` and, with `partials`, the reduce that finishes it.
    #[allow(clippy::too_many_arguments)]
    fn dispatch_attend(
        &self,
        pass: &mut dyn Record,
        b: &AttendBuffers<'_>,
        rows: &[(u32, u32)],
        shape: AttnShape,
        tile: AttnTile,
        plan: &[u32],
        split: Split,
        partials: Option<&GpuBuffer>,
        fusion: Option<DecodeFusion<'_>>,
    ) -> Result<(), GpuError> {
        let tiles = plan.len() / 2;
        let plan = self
            .gpu
            .upload(MemoryCategory::Uniforms, "attention plan", plan)?;
        let rot_signs = self.rot_signs(shape);
        let signs = rot_signs.as_ref().unwrap_or(self.gpu.spare_uniform());
        let pipeline = self.gpu.pipeline(
            &tile.key(shape, partials.is_some(), fusion.is_some()),
            &BINDINGS,
        )?;
        let (q_stride, q_off) = pairs(&b.q, "attention q", rows.len(), shape.d())?;
        let (mut k_off, mut v_off, mut rope_half) = (0, 0, 0);
        // Unread without FUSE: a read-only buffer already bound stands in (the dummy is
        // bound writable when it stands for out or parts).
        let mut cos_sin = b.row_table;
        if let Some(f) = &fusion {
            let (k_stride, k) = pairs(&f.k, "attention k rows", rows.len(), shape.d())?;
            let (v_stride, v) = pairs(&f.v, "attention v rows", rows.len(), shape.d())?;
            if k_stride != q_stride || v_stride != q_stride {
                return Err(GpuError::Validation(
                    "fused decode attention: q, k and v rows must share one stride".into(),
                ));
            }
            (k_off, v_off, rope_half) = (k, v, (shape.head_dim / 2) as u32);
            cos_sin = f.rope.table();
        }
        let groups = tiles as u64 * split.chunks as u64 * shape.heads as u64;
        let groups = u32::try_from(groups)
            .map_err(|_| GpuError::Validation(format!("attention needs {groups} workgroups")))?;
        let grid = self.gpu.grid("attention", groups)?;
        let params = self.gpu.uniform(
            "attention params",
            &AttnParams {
                src_stride: q_stride,
                src_off: q_off,
                src_off2: v_off,
                k_off,
                rope_half,
                ..Self::params(shape, rows.len(), grid.x, tiles, split)
            },
        );
        let (out, parts) = match partials {
            Some(p) => (&self.dummy, p),
            None => (b.out, &self.dummy),
        };
        let bound = [
            params.buffer(),
            b.row_table.buffer(),
            plan.buffer(),
            b.q.buffer.buffer(),
            b.k_cache.buffer(),
            b.v_cache.buffer(),
            out.buffer(),
            parts.buffer(),
            cos_sin.buffer(),
            signs.buffer(),
        ];
        self.gpu.dispatch(pass, &pipeline, &bound, grid);
        if partials.is_none() {
            return Ok(());
        }

        let key = PipelineKey::new(Shader::Attention, "reduce")
            .with("HD", shape.head_dim as u32)
            .with("EW_WG", ELEMENTWISE_WORKGROUP);
        let pipeline = self.gpu.pipeline(&key, &BINDINGS)?;
        let pairs = rows.len() * shape.d() / 2;
        let grid = self.gpu.grid(
            "attention reduce",
            pairs.div_ceil(ELEMENTWISE_WORKGROUP as usize) as u32,
        )?;
        let params = self.gpu.uniform(
            "attention reduce params",
            &Self::params(shape, rows.len(), grid.x, tiles, split),
        );
        // The attend bindings with the real output: reduce reads `parts` and writes `out`.
        let bound = [
            params.buffer(),
            b.row_table.buffer(),
            plan.buffer(),
            b.q.buffer.buffer(),
            b.k_cache.buffer(),
            b.v_cache.buffer(),
            b.out.buffer(),
            parts.buffer(),
            b.row_table.buffer(),
            signs.buffer(),
        ];
        self.gpu.dispatch(pass, &pipeline, &bound, grid);
        Ok(())
    }
}

/// The f64 reference of the attention kernels: `[rows, d]`, row r = (seq, pos) attending
/// per head to keys 0..=pos of seq with scale 1/sqrt(head_dim); `q` is [rows, d], the
/// caches [max_seqs, max_pos, d].
///
/// # Panics
/// If a slice is shorter than `shape` and `rows` say, or a row lies outside the cache.
pub fn attention_reference(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    rows: &[(u32, u32)],
    shape: AttnShape,
) -> Vec<f64> {
    let (d, hd) = (shape.d(), shape.head_dim);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f64; rows.len() * d];
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        let entry = |j: usize| (seq as usize * shape.max_pos + j) * d;
        for h in 0..shape.heads {
            let qh = &q[r * d + h * hd..][..hd];
            let scores: Vec<f64> = (0..=pos as usize)
                .map(|j| {
                    let kh = &k_cache[entry(j) + h * hd..][..hd];
                    scale
                        * qh.iter()
                            .zip(kh)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            let oh = &mut out[r * d + h * hd..][..hd];
            for (j, w) in weights.iter().enumerate() {
                let vh = &v_cache[entry(j) + h * hd..][..hd];
                for (o, &v) in oh.iter_mut().zip(vh) {
                    *o += w / sum * v as f64;
                }
            }
        }
    }
    out
}

/// The reference of [`Attention::encode_kv_write`]: copies row r of `k` and `v` ([rows, d])
/// to entry (seq, pos) of the caches ([max_seqs, max_pos, d]).
///
/// # Panics
/// If a slice is shorter than `shape` and `rows` say, or a row lies outside the cache.
pub fn kv_write_reference(
    k: &[f32],
    v: &[f32],
    rows: &[(u32, u32)],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    shape: AttnShape,
) {
    let d = shape.d();
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        let at = (seq as usize * shape.max_pos + pos as usize) * d;
        k_cache[at..at + d].copy_from_slice(&k[r * d..][..d]);
        v_cache[at..at + d].copy_from_slice(&v[r * d..][..d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::{test_gpus, test_values};

    fn upload(gpu: &Gpu, label: &str, data: &[f32]) -> GpuBuffer {
        gpu.upload(MemoryCategory::Activations, label, data)
            .unwrap()
    }

    fn table(gpu: &Gpu, rows: &[(u32, u32)]) -> GpuBuffer {
        gpu.upload(MemoryCategory::Activations, "row table", &row_table(rows))
            .unwrap()
    }

    /// Rows 0..len of each (seq, start, len), one sequence after another.
    fn runs(seqs: &[(u32, u32, u32)]) -> Vec<(u32, u32)> {
        seqs.iter()
            .flat_map(|&(s, start, len)| (start..start + len).map(move |p| (s, p)))
            .collect()
    }

    /// The error bound of each (row, head) of the f32 kernels against the f64 reference,
    /// with eps the f32 epsilon, V = max |v| and n = pos + 1 keys:
    /// - a score is a dot product of head_dim terms, plus the scale applied to q: its error
    ///   is at most (head_dim + 1) eps A, A = max over keys of scale * sum |q_c k_c|; score
    ///   errors move the softmax weights by at most twice that, relatively;
    /// - the sums of p and p * v over n keys, the rescales of the online softmax and of
    ///   the chunk reduce: at most 4 n eps relative to V;
    /// - exp (WGSL allows 3 + 2|x| ulp, on weights e^x that make |x| e^x < 1) and the
    ///   final division: 32 eps V.
    fn tolerance(
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        rows: &[(u32, u32)],
        shape: AttnShape,
    ) -> Vec<f64> {
        let (d, hd) = (shape.d(), shape.head_dim);
        let eps = f32::EPSILON as f64;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut tol = Vec::new();
        for (r, &(seq, pos)) in rows.iter().enumerate() {
            for h in 0..shape.heads {
                let (mut a, mut v) = (0f64, 0f64);
                for j in 0..=pos as usize {
                    let at = (seq as usize * shape.max_pos + j) * d + h * hd;
                    let qk: f64 = (0..hd)
                        .map(|c| (q[r * d + h * hd + c] as f64 * k_cache[at + c] as f64).abs())
                        .sum();
                    a = a.max(scale * qk);
                    v = (0..hd).fold(v, |m, c| m.max(v_cache[at + c].abs() as f64));
                }
                let n = pos as f64 + 1.0;
                let mut t = eps * v * (2.0 * (hd as f64 + 1.0) * a + 4.0 * n + 32.0);
                if shape.kv.rotated() {
                    // Rotating q and the output (log2(hd) butterfly stages, each adding an
                    // error of eps times a sum that grows to sqrt(hd) times a value) and the
                    // reference's own rotation back of the stored heads.
                    let stages = hd.ilog2() as f64 + 1.0;
                    t = stages * (t + eps * v * 4.0 * hd as f64 * (a + 1.0));
                }
                tol.push(t);
            }
        }
        tol
    }

    /// Asserts `got` ([rows, d]) matches the reference within [`tolerance`].
    #[allow(clippy::too_many_arguments)]
    fn check(
        gpu: &Gpu,
        what: &str,
        got: &[f32],
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        rows: &[(u32, u32)],
        shape: AttnShape,
    ) {
        let want = attention_reference(q, k_cache, v_cache, rows, shape);
        let tol = tolerance(q, k_cache, v_cache, rows, shape);
        let (d, hd) = (shape.d(), shape.head_dim);
        for (r, row) in rows.iter().enumerate() {
            for h in 0..shape.heads {
                for c in 0..hd {
                    let i = r * d + h * hd + c;
                    let err = (got[i] as f64 - want[i]).abs();
                    let t = tol[r * shape.heads + h];
                    assert!(
                        err <= t,
                        "{what} {shape:?} on {}: row {r} {row:?} head {h} column {c}: got {}, \
                         want {} (error {err:e} > tolerance {t:e})",
                        gpu.describe(),
                        got[i],
                        want[i]
                    );
                }
            }
        }
    }

    /// Writes the k and v columns of `fused` ([rows, q | k | v], d wide each) into the
    /// caches for `rows`, then attends their q columns: prefill when `prefill`, else
    /// decode. Returns the attention output, [rows, d].
    #[allow(clippy::too_many_arguments)]
    fn fused_write_and_attend(
        gpu: &Gpu,
        attn: &Attention,
        fused: &[f32],
        rows: &[(u32, u32)],
        kcb: &GpuBuffer,
        vcb: &GpuBuffer,
        shape: AttnShape,
        prefill: bool,
    ) -> Vec<f32> {
        let d = shape.heads * shape.head_dim;
        let fb = upload(gpu, "qkv", fused);
        let tb = table(gpu, rows);
        let out = upload(gpu, "out", &vec![0f32; rows.len() * d]);
        let mut enc = gpu.encoder("fused rows test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let (qc, kc, vc) = (
                Cols::new(&fb, 3 * d, 0),
                Cols::new(&fb, 3 * d, d),
                Cols::new(&fb, 3 * d, 2 * d),
            );
            attn.encode_kv_write(&mut pass, kc, vc, &tb, rows, kcb, vcb, shape)
                .unwrap();
            if prefill {
                attn.encode_prefill(&mut pass, qc, kcb, vcb, &tb, rows, &out, shape)
            } else {
                attn.encode_decode(&mut pass, qc, kcb, vcb, &tb, rows, &out, shape)
            }
            .unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        gpu.read(&out, rows.len() * d).unwrap()
    }

    /// Writes the `k`, `v` rows into the caches and runs prefill over `rows`, in one pass;
    /// returns the output.
    #[allow(clippy::too_many_arguments)]
    fn write_and_prefill(
        gpu: &Gpu,
        attn: &Attention,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        rows: &[(u32, u32)],
        k_cache: &GpuBuffer,
        v_cache: &GpuBuffer,
        shape: AttnShape,
    ) -> Vec<f32> {
        let n = rows.len() * shape.d();
        let (qb, kb, vb) = (
            upload(gpu, "q", q),
            upload(gpu, "k", k),
            upload(gpu, "v", v),
        );
        let tb = table(gpu, rows);
        let out = upload(gpu, "out", &vec![0f32; n]);
        let mut enc = gpu.encoder("attention test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            attn.encode_kv_write(&mut pass, &kb, &vb, &tb, rows, k_cache, v_cache, shape)
                .unwrap();
            attn.encode_prefill(&mut pass, &qb, k_cache, v_cache, &tb, rows, &out, shape)
                .unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        gpu.read(&out, n).unwrap()
    }

    #[test]
    fn tiles_fit_workgroup_memory_for_every_supported_head_dim() {
        for elems in [DEFAULT_TILE_ELEMS, 8192, MAX_TILE_ELEMS] {
            for hd in (2..=MAX_HEAD_DIM).step_by(2) {
                for tile in [AttnTile::prefill(hd, elems), AttnTile::decode(hd, elems)] {
                    let floats = (tile.rows + 2 * tile.keys) * hd + tile.rows * tile.keys;
                    assert!(floats <= elems, "head_dim {hd}: {tile:?} uses {floats}");
                    assert!(
                        tile.keys >= 1 && tile.keys <= MAX_BLOCK_KEYS,
                        "{hd}: {tile:?}"
                    );
                    assert!(
                        tile.rows.is_power_of_two() && ATTEND_WORKGROUP.is_multiple_of(tile.rows)
                    );
                    // The lanes of a row cover its head_dim / 2 pairs within MAX_ACC each.
                    let lanes = ATTEND_WORKGROUP / tile.rows;
                    assert!(
                        tile.acc <= MAX_ACC && tile.acc * lanes >= hd / 2,
                        "{hd}: {tile:?}"
                    );
                }
            }
        }
        let e = DEFAULT_TILE_ELEMS;
        let t = |rows, keys, acc| AttnTile {
            rows,
            keys,
            acc,
            elems: e,
        };
        assert_eq!(AttnTile::prefill(64, e), t(16, 21, 8));
        assert_eq!(AttnTile::prefill(256, e), t(4, 5, 8));
        assert_eq!(AttnTile::prefill(24, e), t(32, 41, 6));
        assert_eq!(AttnTile::decode(64, e), t(1, 31, 1));
        assert_eq!(AttnTile::decode(256, e), t(1, 7, 2));
        // Twice the memory (lavapipe's 32 KiB): twice the keys per decode block.
        assert_eq!(AttnTile::decode(64, 8192).keys, 63);
        assert_eq!(AttnTile::decode(256, 8192).keys, 15);
    }

    #[test]
    fn decode_chunks_follow_the_adapters_size() {
        // A GPU's 256 workgroups: 32 heads split a full 2048 context in 8, 8 heads in 32.
        assert_eq!(chunk_for(256, 32, 2048), 256);
        assert_eq!(chunk_for(256, 8, 2048), 64);
        assert_eq!(chunk_for(256, 8, 4096), 128);
        // Never under MIN_DECODE_CHUNK; a CPU adapter's threads are filled by the heads.
        assert_eq!(chunk_for(256, 1, 100), MIN_DECODE_CHUNK);
        assert_eq!(chunk_for(2, 8, 2048), 2048);
        assert_eq!(chunk_for(16, 8, 2048), 1024);
        for gpu in test_gpus() {
            let chunk = decode_chunk_for(&gpu, 8, 1024);
            assert_eq!(
                chunk,
                chunk_for(gpu.parallelism(), 8, 1024),
                "{}",
                gpu.describe()
            );
        }
    }

    #[test]
    fn plan_groups_consecutive_rows_of_one_sequence() {
        let rows = [(0, 0), (0, 1), (0, 2), (1, 0), (0, 3), (0, 4), (2, 9)];
        assert_eq!(plan_tiles(&rows, 2), [0, 2, 2, 1, 3, 1, 4, 2, 6, 1]);
        assert_eq!(plan_tiles(&rows, 32), [0, 3, 3, 1, 4, 2, 6, 1]);
        assert_eq!(plan_tiles(&rows, 1).len(), 2 * rows.len());
        assert!(plan_tiles(&[], 4).is_empty());
    }

    #[test]
    fn reference_weights_keys_by_softmax() {
        let shape = AttnShape {
            heads: 1,
            head_dim: 2,
            max_seqs: 1,
            max_pos: 3,
            kv: KvFormat::F32,
        };
        let k = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
        let v = [1.0, 2.0, 3.0, 4.0, 9.0, 9.0];
        // Position 0 sees only key 0; equal scores average the values.
        let out = attention_reference(&[5.0, 5.0, 0.0, 7.0], &k, &v, &[(0, 0), (0, 1)], shape);
        assert_eq!(out, [1.0, 2.0, 2.0, 3.0]);
        // Scores 1/sqrt(2) for keys 0 and 1, 0 for key 2.
        let out = attention_reference(&[1.0, 0.0], &k, &v, &[(0, 2)], shape);
        let w = (0.5f64.sqrt()).exp();
        let want = (2.0 * w * 2.0 + 9.0) / (2.0 * w + 1.0);
        assert!((out[0] - want).abs() < 1e-12, "{} vs {want}", out[0]);
    }

    #[test]
    fn decode_splits_only_contexts_longer_than_the_chunk() {
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            assert_eq!(attn.decode_chunk(), DECODE_CHUNK);
            assert_eq!(attn.decode_chunks(&[(0, 255), (1, 3)]), 1);
            assert_eq!(attn.decode_chunks(&[(0, 256), (1, 3)]), 2);
            let attn = attn.with_decode_chunk(32).unwrap();
            assert_eq!(attn.decode_chunks(&[(0, 31)]), 1);
            assert_eq!(attn.decode_chunks(&[(0, 32)]), 2);
            assert_eq!(attn.decode_chunks(&[(0, 5), (1, 299)]), 10);
            assert!(Attention::new(&gpu).unwrap().with_decode_chunk(0).is_err());
        }
    }

    #[test]
    fn kv_write_puts_rows_in_their_slots_and_nowhere_else() {
        let shape = AttnShape {
            heads: 3,
            head_dim: 24,
            max_seqs: 3,
            max_pos: 8,
            kv: KvFormat::F32,
        };
        let rows = [(0, 0), (2, 5), (1, 7), (2, 0), (0, 3)];
        let n = rows.len() * shape.d();
        let cache_len = shape.max_seqs * shape.max_pos * shape.d();
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let (k, v) = (test_values(n, 1), test_values(n, 2));
            // Distinct values everywhere, so a misplaced or stray write shows.
            let mut kc: Vec<f32> = (0..cache_len).map(|i| -(i as f32)).collect();
            let mut vc: Vec<f32> = (0..cache_len).map(|i| i as f32 + 0.5).collect();
            let (kcb, vcb) = (upload(&gpu, "k cache", &kc), upload(&gpu, "v cache", &vc));
            let (kb, vb, tb) = (
                upload(&gpu, "k", &k),
                upload(&gpu, "v", &v),
                table(&gpu, &rows),
            );
            let mut enc = gpu.encoder("kv_write test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                attn.encode_kv_write(&mut pass, &kb, &vb, &tb, &rows, &kcb, &vcb, shape)
                    .unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            kv_write_reference(&k, &v, &rows, &mut kc, &mut vc, shape);
            let got_k: Vec<f32> = gpu.read(&kcb, cache_len).unwrap();
            let got_v: Vec<f32> = gpu.read(&vcb, cache_len).unwrap();
            assert!(got_k == kc, "k cache on {}", gpu.describe());
            assert!(got_v == vc, "v cache on {}", gpu.describe());
        }
    }

    #[test]
    fn f16_cache_rounds_to_nearest_even_like_the_cpu() {
        // One row of 16 values: ties (1 + 2^-11 rounds down to 1, 1 + 3 * 2^-11 up), a
        // value rounding into the next binade, subnormals and their tie, the largest
        // finite half, overflow to infinity, infinities, NaN, signed zero.
        let vals: [f32; 16] = [
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -(2.0 - 2f32.powi(-12)),
            3.0e-6,
            -5.96e-8,
            2f32.powi(-25),
            3.0 * 2f32.powi(-25),
            65504.0,
            65519.0,
            65520.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            0.1,
            -1234.567,
        ];
        let shape = AttnShape {
            heads: 2,
            head_dim: 8,
            max_seqs: 1,
            max_pos: 2,
            kv: KvFormat::F16,
        };
        let rows = [(0, 1)];
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let words = (shape.cache_bytes() / 4) as usize;
            let kcb = gpu
                .upload(MemoryCategory::Activations, "k cache", &vec![7u32; words])
                .unwrap();
            let vcb = gpu
                .upload(MemoryCategory::Activations, "v cache", &vec![7u32; words])
                .unwrap();
            let v: Vec<f32> = vals.iter().map(|x| -x).collect();
            let (kb, vb, tb) = (
                upload(&gpu, "k", &vals),
                upload(&gpu, "v", &v),
                table(&gpu, &rows),
            );
            let mut enc = gpu.encoder("f16 cache test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                attn.encode_kv_write(&mut pass, &kb, &vb, &tb, &rows, &kcb, &vcb, shape)
                    .unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            for (cache, src) in [(&kcb, &vals[..]), (&vcb, &v[..])] {
                let got: Vec<u32> = gpu.read(cache, words).unwrap();
                // Position 0 untouched; position 1 holds the 16 halves, two per word.
                assert!(got[..8].iter().all(|&w| w == 7));
                for (i, x) in src.iter().enumerate() {
                    let half = (got[8 + i / 2] >> (16 * (i % 2))) & 0xffff;
                    let want = half::f16::from_f32(*x).to_bits() as u32;
                    assert_eq!(
                        half,
                        want,
                        "{x:e} on {}: {half:#06x} vs {want:#06x}",
                        gpu.describe()
                    );
                }
            }
        }
    }

    #[test]
    fn f16_cache_and_fused_rows_attend_like_the_reference() {
        // q, k and v side by side in one [rows, q | k | v] buffer (as the decoder's fused
        // projection writes them), an f16 cache; prefill a prompt, then decode one row.
        let shape = AttnShape {
            heads: 3,
            head_dim: 16,
            max_seqs: 2,
            max_pos: 24,
            kv: KvFormat::F16,
        };
        let d = shape.d();
        let first = runs(&[(1, 0, 9), (0, 0, 4)]);
        let next = [(1u32, 9u32), (0, 4)];
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let words = (shape.cache_bytes() / 4) as usize;
            let kcb = gpu
                .upload(MemoryCategory::Activations, "k cache", &vec![0u32; words])
                .unwrap();
            let vcb = gpu
                .upload(MemoryCategory::Activations, "v cache", &vec![0u32; words])
                .unwrap();
            let cache_len = shape.max_seqs * shape.max_pos * d;
            let (mut kc, mut vc) = (vec![0f32; cache_len], vec![0f32; cache_len]);
            for (i, rows) in [&first[..], &next[..]].into_iter().enumerate() {
                let fused = test_values(rows.len() * 3 * d, 30 + i as u64);
                let col = |c: usize| -> Vec<f32> {
                    fused
                        .chunks(3 * d)
                        .flat_map(|r| r[c * d..(c + 1) * d].to_vec())
                        .collect()
                };
                let (q, k, v) = (col(0), col(1), col(2));
                let got =
                    fused_write_and_attend(&gpu, &attn, &fused, rows, &kcb, &vcb, shape, i == 0);
                kv_write_reference(&k, &v, rows, &mut kc, &mut vc, shape);
                KvFormat::F16.store(&mut kc, shape.head_dim);
                KvFormat::F16.store(&mut vc, shape.head_dim);
                let what = if i == 0 { "f16 prefill" } else { "f16 decode" };
                check(&gpu, what, &got, &q, &kc, &vc, rows, shape);
            }
        }
    }

    #[test]
    fn prefill_matches_reference_for_sequences_of_1_7_and_37_tokens() {
        let rows = runs(&[(2, 0, 37), (0, 0, 1), (1, 0, 7)]);
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            for heads in [1, 3] {
                for head_dim in [16, 24, 64, 128, MAX_HEAD_DIM] {
                    let shape = AttnShape {
                        heads,
                        head_dim,
                        max_seqs: 3,
                        max_pos: 40,
                        kv: KvFormat::F32,
                    };
                    let n = rows.len() * shape.d();
                    let seed = (heads * 1000 + head_dim) as u64;
                    let q: Vec<f32> = test_values(n, seed).iter().map(|v| 3.0 * v).collect();
                    let (k, v) = (test_values(n, seed + 1), test_values(n, seed + 2));
                    // Entries no row writes stay NaN: a kernel that reads one shows it.
                    let cache_len = shape.max_seqs * shape.max_pos * shape.d();
                    let (mut kc, mut vc) = (vec![f32::NAN; cache_len], vec![f32::NAN; cache_len]);
                    let kcb = upload(&gpu, "k cache", &kc);
                    let vcb = upload(&gpu, "v cache", &vc);
                    let got = write_and_prefill(&gpu, &attn, &q, &k, &v, &rows, &kcb, &vcb, shape);
                    kv_write_reference(&k, &v, &rows, &mut kc, &mut vc, shape);
                    check(&gpu, "prefill", &got, &q, &kc, &vc, &rows, shape);
                }
            }
        }
    }

    #[test]
    fn prefill_continues_cached_prefixes_with_rows_out_of_order() {
        let shape = AttnShape {
            heads: 3,
            head_dim: 64,
            max_seqs: 2,
            max_pos: 48,
            kv: KvFormat::F32,
        };
        // A first chunk of each sequence, then the next chunks with sequence 1 in two runs
        // around sequence 0, whose rows start at position 20.
        let first = runs(&[(0, 0, 20), (1, 0, 5)]);
        let second = runs(&[(1, 5, 4), (0, 20, 10), (1, 9, 6)]);
        let cache_len = shape.max_seqs * shape.max_pos * shape.d();
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let (mut kc, mut vc) = (vec![f32::NAN; cache_len], vec![f32::NAN; cache_len]);
            let kcb = upload(&gpu, "k cache", &kc);
            let vcb = upload(&gpu, "v cache", &vc);
            for (i, rows) in [&first, &second].into_iter().enumerate() {
                let n = rows.len() * shape.d();
                let seed = 77 + 3 * i as u64;
                let q: Vec<f32> = test_values(n, seed).iter().map(|v| 3.0 * v).collect();
                let (k, v) = (test_values(n, seed + 1), test_values(n, seed + 2));
                let got = write_and_prefill(&gpu, &attn, &q, &k, &v, rows, &kcb, &vcb, shape);
                kv_write_reference(&k, &v, rows, &mut kc, &mut vc, shape);
                check(&gpu, "chunked prefill", &got, &q, &kc, &vc, rows, shape);
            }
        }
    }

    #[test]
    fn decode_matches_reference_with_and_without_the_split() {
        // (heads, head_dim, decode chunk, positions of the rows, chunks expected)
        let cases: [(usize, usize, usize, &[u32], usize); 5] = [
            (3, 64, 32, &[0, 31, 32, 100, 299], 10),
            (1, MAX_HEAD_DIM, 64, &[5, 130, 200], 4),
            (1, 128, 32, &[3, 64], 3),
            (3, 24, DECODE_CHUNK, &[0, 17, 150], 1),
            (3, 16, 32, &[1, 31], 1),
        ];
        for gpu in test_gpus() {
            for &(heads, head_dim, chunk, positions, chunks) in &cases {
                let attn = Attention::new(&gpu)
                    .unwrap()
                    .with_decode_chunk(chunk)
                    .unwrap();
                let shape = AttnShape {
                    heads,
                    head_dim,
                    max_seqs: positions.len(),
                    max_pos: 300,
                    kv: KvFormat::F32,
                };
                let d = shape.d();
                // Row r is sequence len - 1 - r, so rows and sequences differ.
                let rows: Vec<(u32, u32)> = positions
                    .iter()
                    .enumerate()
                    .map(|(r, &p)| ((positions.len() - 1 - r) as u32, p))
                    .collect();
                assert_eq!(attn.decode_chunks(&rows), chunks, "{shape:?}");
                let seed = (heads * 1000 + head_dim) as u64;
                let cache_len = shape.max_seqs * shape.max_pos * d;
                let mut kc = test_values(cache_len, seed);
                let mut vc = test_values(cache_len, seed + 1);
                // Positions past each row's own are NaN: the causal mask must skip them.
                for &(seq, pos) in &rows {
                    let from = (seq as usize * shape.max_pos + pos as usize + 1) * d;
                    let to = (seq as usize + 1) * shape.max_pos * d;
                    kc[from..to].fill(f32::NAN);
                    vc[from..to].fill(f32::NAN);
                }
                let q: Vec<f32> = test_values(rows.len() * d, seed + 2)
                    .iter()
                    .map(|v| 3.0 * v)
                    .collect();
                let (qb, tb) = (upload(&gpu, "q", &q), table(&gpu, &rows));
                let (kcb, vcb) = (upload(&gpu, "k cache", &kc), upload(&gpu, "v cache", &vc));
                // One row more than the batch: it must keep its sentinel.
                let n = rows.len() * d;
                let out = upload(&gpu, "out", &vec![7.0f32; n + d]);
                let mut enc = gpu.encoder("decode test");
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    attn.encode_decode(&mut pass, &qb, &kcb, &vcb, &tb, &rows, &out, shape)
                        .unwrap();
                }
                gpu.submit_and_wait(enc).unwrap();
                let got: Vec<f32> = gpu.read(&out, n + d).unwrap();
                check(&gpu, "decode", &got[..n], &q, &kc, &vc, &rows, shape);
                assert!(
                    got[n..].iter().all(|&x| x == 7.0),
                    "decode wrote past its rows"
                );
            }
        }
    }

    #[test]
    fn fused_decode_equals_rope_kv_write_and_decode() {
        // (heads, head_dim, decode chunk, positions of the rows): one chunk, and the split
        // with the row's position in a middle and in the last chunk.
        let cases: [(usize, usize, usize, &[u32]); 3] = [
            (2, 8, DECODE_CHUNK, &[0, 5, 20]),
            (3, 16, 4, &[3, 9, 17]),
            (1, 64, 8, &[8, 30]),
        ];
        for gpu in test_gpus() {
            for &(heads, head_dim, chunk, positions) in &cases {
                for kv in KvFormat::ALL {
                    let attn = Attention::new(&gpu)
                        .unwrap()
                        .with_decode_chunk(chunk)
                        .unwrap();
                    let shape = AttnShape {
                        heads,
                        head_dim,
                        max_seqs: positions.len(),
                        max_pos: 32,
                        kv,
                    };
                    let d = shape.d();
                    let rope = RopeTable::new(&gpu, shape.max_pos, head_dim, 10000.0).unwrap();
                    // Rows in reverse sequence order; earlier positions hold random heads.
                    let rows: Vec<(u32, u32)> = positions
                        .iter()
                        .enumerate()
                        .map(|(r, &p)| ((positions.len() - 1 - r) as u32, p))
                        .collect();
                    let seed = (heads * 100 + head_dim) as u64;
                    let words = (shape.cache_bytes() / 4) as usize;
                    // Every position of every sequence holds a head written by kv_write.
                    let all: Vec<(u32, u32)> = (0..shape.max_seqs as u32)
                        .flat_map(|s| (0..shape.max_pos as u32).map(move |p| (s, p)))
                        .collect();
                    let kb = upload(&gpu, "k", &test_values(all.len() * d, seed));
                    let vb = upload(&gpu, "v", &test_values(all.len() * d, seed + 1));
                    let kcb0 = gpu
                        .storage(MemoryCategory::KvCache, "k", shape.cache_bytes())
                        .unwrap();
                    let vcb0 = gpu
                        .storage(MemoryCategory::KvCache, "v", shape.cache_bytes())
                        .unwrap();
                    let mut enc = gpu.encoder("fill caches");
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        let t = table(&gpu, &all);
                        attn.encode_kv_write(&mut pass, &kb, &vb, &t, &all, &kcb0, &vcb0, shape)
                            .unwrap();
                    }
                    gpu.submit_and_wait(enc).unwrap();
                    let kc0: Vec<u32> = gpu.read(&kcb0, words).unwrap();
                    let vc0: Vec<u32> = gpu.read(&vcb0, words).unwrap();
                    let qkv = test_values(rows.len() * 3 * d, seed + 2);
                    let tb = table(&gpu, &rows);
                    let run = |fused: bool| {
                        let fb = upload(&gpu, "qkv", &qkv);
                        let up = |label: &str, w: &[u32]| {
                            gpu.upload(MemoryCategory::KvCache, label, w).unwrap()
                        };
                        let (kcb, vcb) = (up("k cache", &kc0), up("v cache", &vc0));
                        let out = upload(&gpu, "out", &vec![0f32; rows.len() * d]);
                        let (qc, kc, vc) = (
                            Cols::new(&fb, 3 * d, 0),
                            Cols::new(&fb, 3 * d, d),
                            Cols::new(&fb, 3 * d, 2 * d),
                        );
                        let mut enc = gpu.encoder("fused decode test");
                        {
                            let mut pass = enc.begin_compute_pass(&Default::default());
                            let p = &mut pass;
                            if fused {
                                let fusion = DecodeFusion {
                                    k: kc,
                                    v: vc,
                                    rope: &rope,
                                };
                                attn.encode_decode_fused(
                                    p, qc, fusion, &kcb, &vcb, &tb, &rows, &out, shape,
                                )
                                .unwrap();
                            } else {
                                let n = rows.len();
                                crate::ops::rope::encode_rope(
                                    &gpu,
                                    p,
                                    qc,
                                    &tb,
                                    &rope,
                                    n,
                                    2 * heads,
                                )
                                .unwrap();
                                attn.encode_kv_write(p, kc, vc, &tb, &rows, &kcb, &vcb, shape)
                                    .unwrap();
                                attn.encode_decode(p, qc, &kcb, &vcb, &tb, &rows, &out, shape)
                                    .unwrap();
                            }
                        }
                        gpu.submit_and_wait(enc).unwrap();
                        let read = |b: &GpuBuffer| -> Vec<u32> { gpu.read(b, words).unwrap() };
                        (
                            read(&kcb),
                            read(&vcb),
                            gpu.read::<f32>(&out, rows.len() * d).unwrap(),
                        )
                    };
                    let (k_a, v_a, out_a) = run(false);
                    let (k_b, v_b, out_b) = run(true);
                    let what = format!("{shape:?} chunk {chunk} on {}", gpu.describe());
                    assert!(k_a == k_b, "{what}: the fused decode wrote other keys");
                    assert!(v_a == v_b, "{what}: the fused decode wrote other values");
                    for (i, (a, b)) in out_a.iter().zip(&out_b).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-6 * (1.0 + a.abs()),
                            "{what}: out[{i}] {b} vs {a} unfused"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn widest_rows_attend_correctly() {
        let shape = AttnShape {
            heads: MAX_WIDTH / MAX_HEAD_DIM,
            head_dim: MAX_HEAD_DIM,
            max_seqs: 1,
            max_pos: 3,
            kv: KvFormat::F32,
        };
        let rows = runs(&[(0, 0, 3)]);
        let n = rows.len() * shape.d();
        let q: Vec<f32> = test_values(n, 5).iter().map(|v| 3.0 * v).collect();
        let (k, v) = (test_values(n, 6), test_values(n, 7));
        let cache_len = shape.max_seqs * shape.max_pos * shape.d();
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap().with_decode_chunk(2).unwrap();
            let (mut kc, mut vc) = (vec![0f32; cache_len], vec![0f32; cache_len]);
            let kcb = upload(&gpu, "k cache", &kc);
            let vcb = upload(&gpu, "v cache", &vc);
            let got = write_and_prefill(&gpu, &attn, &q, &k, &v, &rows, &kcb, &vcb, shape);
            kv_write_reference(&k, &v, &rows, &mut kc, &mut vc, shape);
            check(&gpu, "widest prefill", &got, &q, &kc, &vc, &rows, shape);
            // The last row again as a decode batch, split into two chunks.
            let last = &rows[2..];
            let d = shape.d();
            let (qb, tb) = (upload(&gpu, "q", &q[2 * d..]), table(&gpu, last));
            let out = upload(&gpu, "out", &vec![0f32; d]);
            let mut enc = gpu.encoder("widest decode");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                attn.encode_decode(&mut pass, &qb, &kcb, &vcb, &tb, last, &out, shape)
                    .unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            let got: Vec<f32> = gpu.read(&out, d).unwrap();
            check(
                &gpu,
                "widest decode",
                &got,
                &q[2 * d..],
                &kc,
                &vc,
                last,
                shape,
            );
        }
    }

    #[test]
    fn invalid_calls_are_rejected_naming_the_problem() {
        let shape = AttnShape {
            heads: 2,
            head_dim: 8,
            max_seqs: 2,
            max_pos: 4,
            kv: KvFormat::F32,
        };
        let with = |f: fn(&mut AttnShape)| {
            let mut s = shape;
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(with(|s| s.head_dim = 15).contains("head_dim 15"));
        assert!(with(|s| s.head_dim = MAX_HEAD_DIM + 2).contains("head_dim 258"));
        assert!(with(|s| s.heads = 0).contains("heads"));
        assert!(with(|s| s.heads = 129 * 32).contains("width"));
        assert!(with(|s| s.max_pos = 0).contains("max_pos 0"));
        assert!(shape.validate().is_ok());

        let rows = [(0, 0), (1, 3)];
        let d = shape.d();
        let entries = shape.max_seqs * shape.max_pos;
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap();
            let zeros = |n: usize| upload(&gpu, "buffer", &vec![0f32; n]);
            let (x, short_x) = (zeros(rows.len() * d), zeros(d));
            let (cache, short_cache) = (zeros(entries * d), zeros((entries - 1) * d));
            let (tb, short_tb) = (table(&gpu, &rows), table(&gpu, &rows[..1]));
            // Runs each encoder on (rows, q or k, out or v, cache, table, shape).
            type Case<'a> = (
                &'a [(u32, u32)],
                &'a GpuBuffer,
                &'a GpuBuffer,
                &'a GpuBuffer,
            );
            let run = |which: usize, (rows, a, b, c): Case, t: &GpuBuffer, s: AttnShape| {
                let mut enc = gpu.encoder("validation test");
                let mut pass = enc.begin_compute_pass(&Default::default());
                let r = match which {
                    0 => attn.encode_kv_write(&mut pass, a, b, t, rows, c, &cache, s),
                    1 => attn.encode_prefill(&mut pass, a, c, &cache, t, rows, b, s),
                    _ => attn.encode_decode(&mut pass, a, c, &cache, t, rows, b, s),
                };
                r.unwrap_err().to_string()
            };
            for which in 0..3 {
                let msg = run(which, (&[(0, 4)], &x, &x, &cache), &tb, shape);
                assert!(msg.contains("position 4 is outside"), "{msg}");
                let msg = run(which, (&[(2, 0)], &x, &x, &cache), &tb, shape);
                assert!(msg.contains("sequence 2 is outside"), "{msg}");
                let mut odd = shape;
                odd.head_dim = 7;
                let msg = run(which, (&rows, &x, &x, &cache), &tb, odd);
                assert!(msg.contains("head_dim 7"), "{msg}");
                let msg = run(which, (&rows, &short_x, &x, &cache), &tb, shape);
                let first = ["k rows", "q", "q"][which];
                assert!(msg.contains(&format!("`attention {first}`")), "{msg}");
                let msg = run(which, (&rows, &x, &short_x, &cache), &tb, shape);
                let second = ["v rows", "out", "out"][which];
                assert!(msg.contains(&format!("`attention {second}`")), "{msg}");
                let msg = run(which, (&rows, &x, &x, &short_cache), &tb, shape);
                assert!(msg.contains("`attention k cache`"), "{msg}");
                let msg = run(which, (&rows, &x, &x, &cache), &short_tb, shape);
                assert!(msg.contains("`attention row table`"), "{msg}");
                // kv_write: v rows bound as the k cache; attention: out bound as the q.
                let (big, b) = (zeros(entries * d), zeros(rows.len() * d));
                let msg = match which {
                    0 => run(0, (&rows, &x, &big, &big), &tb, shape),
                    _ => run(which, (&rows, &b, &b, &cache), &tb, shape),
                };
                assert!(msg.contains("must be a buffer of its own"), "{msg}");
            }
        }
    }

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

    /// Asserts that the GPU's words of one head equal `kv.encode_head(x)`: the scale bit
    /// for bit, each level equal or, where x / scale lies within float rounding of a
    /// half-way point (the GPU's division need not round correctly), one step away.
    fn assert_head_words(gpu: &Gpu, kv: KvFormat, x: &[f32], got: &[u32], what: &str) {
        let want = kv.encode_head(x);
        assert_eq!(got[0], want[0], "{what} {kv} scale on {}", gpu.describe());
        let mut y = x.to_vec();
        if kv.rotated() {
            fwht(&mut y, WhtSize::new(x.len()).unwrap());
        }
        let scale = f32::from_bits(want[0]);
        let unpack = |w: &[u32]| -> Vec<i32> {
            let (bits, per) = (kv.bits(), 32 / kv.bits());
            (0..x.len())
                .map(|i| {
                    let f = w[1 + i / per] >> (bits * (i % per));
                    if bits == 8 {
                        f as u8 as i8 as i32
                    } else {
                        (f & 0xf) as i32 - 8
                    }
                })
                .collect()
        };
        let (g, w) = (unpack(got), unpack(&want));
        for i in 0..x.len() {
            let q = y[i] as f64 / scale as f64;
            let near_tie = (q - q.floor() - 0.5).abs() < 1e-5;
            assert!(
                g[i] == w[i] || ((g[i] - w[i]).abs() == 1 && near_tie),
                "{what} {kv} value {i} on {}: level {} vs {} ({q})",
                gpu.describe(),
                g[i],
                w[i]
            );
        }
        // Padding and the whole words past the levels match too.
        let per = 32 / kv.bits();
        if !x.len().is_multiple_of(per) {
            let last = want.len() - 1;
            let pad_mask = !0u32 << (kv.bits() * (x.len() % per));
            assert_eq!(
                got[last] & pad_mask,
                want[last] & pad_mask,
                "{what} {kv} padding"
            );
        }
    }

    #[test]
    fn quantized_caches_store_like_the_cpu_and_attend_like_the_reference() {
        // (format, heads, head_dim): odd head sizes without rotation (q8 of 10 pads its
        // last word, q4 of 24 its last nibbles), powers of two with it, and m x 2^k: 48 =
        // 12 x 4 (one sign word per row of H_12), 72 = 36 x 2 (two words per row of H_36).
        let cases = [
            (KvFormat::Q8, 3, 10),
            (KvFormat::Q4, 3, 24),
            (KvFormat::Q8Rot, 3, 16),
            (KvFormat::Q4Rot, 2, 32),
            (KvFormat::Q8Rot, 2, 48),
            (KvFormat::Q4Rot, 2, 72),
        ];
        // A prompt per sequence (prefill), then one row each (decode, split in 3 chunks).
        let first = runs(&[(1, 0, 9), (0, 0, 4)]);
        let next = [(1u32, 9u32), (0, 4)];
        for gpu in test_gpus() {
            let attn = Attention::new(&gpu).unwrap().with_decode_chunk(4).unwrap();
            for (c, &(kv, heads, head_dim)) in cases.iter().enumerate() {
                let shape = AttnShape {
                    heads,
                    head_dim,
                    max_seqs: 2,
                    max_pos: 12,
                    kv,
                };
                let (d, hw) = (shape.d(), kv.head_words(head_dim));
                let words = (shape.cache_bytes() / 4) as usize;
                assert_eq!(words, 2 * 12 * heads * hw);
                let zeros = vec![0u32; words];
                let kcb = gpu
                    .upload(MemoryCategory::Activations, "k cache", &zeros)
                    .unwrap();
                let vcb = gpu
                    .upload(MemoryCategory::Activations, "v cache", &zeros)
                    .unwrap();
                for (i, rows) in [&first[..], &next[..]].into_iter().enumerate() {
                    // q, k and v side by side, as the decoder's fused projection writes them;
                    // k scaled up so heads differ in scale, v with an outlier per row.
                    let seed = 100 * c as u64 + 10 * i as u64;
                    let mut fused = test_values(rows.len() * 3 * d, seed);
                    for (r, row) in fused.chunks_mut(3 * d).enumerate() {
                        row[d..2 * d].iter_mut().for_each(|v| *v *= 4.0);
                        row[2 * d + (r * 7) % d] = 9.0;
                    }
                    let col = |k: usize| -> Vec<f32> {
                        fused
                            .chunks(3 * d)
                            .flat_map(|r| r[k * d..(k + 1) * d].to_vec())
                            .collect()
                    };
                    let (q, k, v) = (col(0), col(1), col(2));
                    let got = fused_write_and_attend(
                        &gpu,
                        &attn,
                        &fused,
                        rows,
                        &kcb,
                        &vcb,
                        shape,
                        i == 0,
                    );
                    let got_k: Vec<u32> = gpu.read(&kcb, words).unwrap();
                    let got_v: Vec<u32> = gpu.read(&vcb, words).unwrap();
                    let what = if i == 0 { "prefill" } else { "decode" };
                    // The stored heads, against the CPU's encoding of each.
                    for (r, &(seq, pos)) in rows.iter().enumerate() {
                        for h in 0..heads {
                            let blk = ((seq as usize * 12 + pos as usize) * heads + h) * hw;
                            let x = |src: &[f32]| src[r * d + h * head_dim..][..head_dim].to_vec();
                            assert_head_words(&gpu, kv, &x(&k), &got_k[blk..blk + hw], what);
                            assert_head_words(&gpu, kv, &x(&v), &got_v[blk..blk + hw], what);
                        }
                    }
                    // Attention over what the GPU stored, read back as the CPU decoder does.
                    let decode = |w: &[u32]| -> Vec<f32> {
                        w.chunks(hw)
                            .flat_map(|b| kv.decode_head(b, head_dim))
                            .collect()
                    };
                    let (kc, vc) = (decode(&got_k), decode(&got_v));
                    check(
                        &gpu,
                        &format!("{kv} {what}"),
                        &got,
                        &q,
                        &kc,
                        &vc,
                        rows,
                        shape,
                    );
                }
            }
        }
    }
}
