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
//!   an online softmax, so every key is read once per tile rather than once per row (on a
//!   CPU adapter, `attend_rows` reads them from the cache instead: [`AttendTile`]).
//! - [`Attention::encode_decode`]: one workgroup per (row, head); contexts longer than the
//!   decode chunk ([`DECODE_CHUNK`] keys) are split into chunks run by separate
//!   workgroups, and a reduce dispatch combines their partial (max, sum, acc) states.
//! - [`attention_reference`], [`kv_write_reference`]: the CPU references.
//!
//! Both attention paths compute the same function; they differ only in how work is split.
//!
//! Files: `cache.rs` the cache formats ([`KvFormat`]) and their CPU encoding, `write.rs`
//! the KV write, `attend.rs` the tiles and the attend/reduce dispatch both paths share,
//! `prefill.rs` and `decode.rs` the two paths, each with its tests.

mod attend;
mod cache;
mod decode;
mod prefill;
#[cfg(test)]
mod testing;
mod write;

pub use attend::{AttendBuffers, AttendTile};
pub use cache::{KvError, KvFormat, rotation_norm};
pub use decode::DecodeFusion;
pub use write::kv_write_reference;

use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use super::Cols;
use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, MemoryCategory};
use crate::ops::hadamard::cpu::sign_uniform;

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
/// holds at most MAX_BLOCK_KEYS (attend.rs) keys. See [`tile_elems`].
const MAX_TILE_ELEMS: usize = 16384;
/// The WebGPU default limit (16 KiB), which every tile test also runs at.
#[cfg(test)]
const DEFAULT_TILE_ELEMS: usize = 4096;

/// The attend tile's workgroup memory on `gpu`, in f32s: its whole limit (lavapipe's 32
/// KiB doubles a decode block from 31 to 62 keys at head_dim 64), up to MAX_TILE_ELEMS.
fn tile_elems(gpu: &Gpu) -> usize {
    (gpu.limits().max_compute_workgroup_storage_size as usize / 4).min(MAX_TILE_ELEMS)
}
/// Invocations per workgroup of the elementwise entry points (kv_write, reduce); passed as
/// `EW_WG`.
const ELEMENTWISE_WORKGROUP: u32 = 256;

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
    /// KV heads: the cache's heads per position; query head h reads KV head
    /// h / (heads / kv_heads).
    kv_heads: u32,
}

/// Every attention entry point's bindings: params, row_table, plan | k_rows, q | v_rows,
/// k_cache, v_cache, out, parts, cos_sin, rot_signs. The caches are writable for the
/// fused decode (attention.wgsl, FUSE); kv_write and kv_quant bind stand-ins at 6-8 so
/// that `rot_signs`, which the shared `fwht` reads, has one binding number everywhere.
const BINDINGS: [Binding; 10] = [
    Uniform, ReadOnly, ReadOnly, ReadOnly, ReadWrite, ReadWrite, ReadWrite, ReadWrite, ReadOnly,
    Uniform,
];

/// The attention problem: `heads` query heads of `head_dim`, `kv_heads` key/value heads
/// (grouped-query attention: query head h reads KV head h / (heads / kv_heads); equal
/// to `heads` without grouping), and a KV cache of `max_seqs` sequences by `max_pos`
/// positions, each buffer [max_seqs, max_pos, kv_heads] head blocks of `kv`
/// ([`KvFormat::head_words`] u32 words each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
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

    /// Key (or value) row width kv_heads * head_dim: d without grouping.
    pub fn kv_d(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Bytes of one cache buffer (k or v).
    pub fn cache_bytes(&self) -> u64 {
        self.max_seqs as u64
            * self.max_pos as u64
            * self.kv.position_bytes(self.kv_heads, self.head_dim)
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
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "kv_heads {} must be at least 1 and divide heads {}",
                self.kv_heads, self.heads
            ));
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
            .and_then(|n| n.checked_mul(self.kv_d()));
        if elems.is_none_or(|n| n > u32::MAX as usize) || self.cache_bytes() / 4 > u32::MAX as u64 {
            return bad(format!(
                "a cache of {} x {} x {} values exceeds 32-bit indexing",
                self.max_seqs,
                self.max_pos,
                self.kv_d()
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

/// The attention kernels on one device.
pub struct Attention {
    gpu: Gpu,
    /// Bound to the `out` or `parts` slot a dispatch does not use.
    dummy: GpuBuffer,
    /// kv_write's second writable stand-in (6 and 7 must not alias).
    dummy2: GpuBuffer,
    /// Partial states of the split decode, per part p = (row, head, chunk): acc
    /// [parts, head_dim], then (m, l) [parts, 2]; grown on demand.
    partials: Mutex<Option<GpuBuffer>>,
    /// Keys per chunk of the split decode.
    decode_chunk: usize,
    /// How attend reads the keys and values.
    tile: AttendTile,
    /// Kernels built now run many times: see [`Attention::set_many_runs`].
    many_runs: bool,
}

impl Attention {
    pub fn new(gpu: &Gpu) -> Result<Self, GpuError> {
        Ok(Self {
            gpu: gpu.clone(),
            dummy: gpu.upload(MemoryCategory::Uniforms, "attention dummy", &[0f32; 4])?,
            dummy2: gpu.upload(MemoryCategory::Uniforms, "attention dummy 2", &[0f32; 4])?,
            partials: Mutex::new(None),
            decode_chunk: DECODE_CHUNK,
            tile: AttendTile::Auto,
            many_runs: false,
        })
    }

    /// The `rot_signs` uniform for a rotated head of m x 2^k values, m > 1: H_m's sign
    /// masks, uploaded with the dispatch as its params are; None where the spare uniform
    /// stands in (every entry point binds the slot).
    fn rot_signs(&self, shape: AttnShape) -> Option<GpuBuffer> {
        let m = shape.kv.rotation_order(shape.head_dim) as usize;
        (m > 1).then(|| self.gpu.uniform("attention rot_signs", &sign_uniform(m)))
    }
}

/// The f64 reference of the attention kernels: `[rows, d]`, row r = (seq, pos) attending
/// per query head h to keys 0..=pos of seq in KV head h / (heads / kv_heads), with scale
/// 1/sqrt(head_dim); `q` is [rows, d], the caches [max_seqs, max_pos, kv_d].
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
    let (d, kv_d, hd) = (shape.d(), shape.kv_d(), shape.head_dim);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f64; rows.len() * d];
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        let entry = |j: usize| (seq as usize * shape.max_pos + j) * kv_d;
        for h in 0..shape.heads {
            let qh = &q[r * d + h * hd..][..hd];
            let kvh = h / shape.group();
            let scores: Vec<f64> = (0..=pos as usize)
                .map(|j| {
                    let kh = &k_cache[entry(j) + kvh * hd..][..hd];
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
                let vh = &v_cache[entry(j) + kvh * hd..][..hd];
                for (o, &v) in oh.iter_mut().zip(vh) {
                    *o += w / sum * v as f64;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::gpu::testing::{test_gpus, test_values};

    #[test]
    fn reference_weights_keys_by_softmax() {
        let shape = AttnShape {
            heads: 1,
            kv_heads: 1,
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
    fn widest_rows_attend_correctly() {
        let shape = AttnShape {
            heads: MAX_WIDTH / MAX_HEAD_DIM,
            kv_heads: MAX_WIDTH / MAX_HEAD_DIM,
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
        for (gpu, tile) in gpus_and_tiles() {
            let attn = with_chunk(&gpu, 2).with_tile(tile);
            let (mut kc, mut vc) = (vec![0f32; cache_len], vec![0f32; cache_len]);
            let kcb = upload(&gpu, "k cache", &kc);
            let vcb = upload(&gpu, "v cache", &vc);
            let got = write_and_prefill(&gpu, &attn, &q, &k, &v, &rows, &kcb, &vcb, shape);
            kv_write_reference(&k, &v, &rows, &mut kc, &mut vc, shape);
            let what = format!("widest prefill, {tile:?}");
            check(&gpu, &what, &got, &q, &kc, &vc, &rows, shape);
            // The last row again as a decode batch, split into two chunks.
            let last = &rows[2..];
            let d = shape.d();
            let (qb, tb) = (upload(&gpu, "q", &q[2 * d..]), table(&gpu, last));
            let out = upload(&gpu, "out", &vec![0f32; d]);
            let mut enc = gpu.encoder("widest decode");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                attn.encode_decode(
                    &mut pass,
                    &AttendBuffers::new(&qb, &kcb, &vcb, &tb, &out),
                    last,
                    shape,
                )
                .unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            let got: Vec<f32> = gpu.read(&out, d).unwrap();
            let what = format!("widest decode, {tile:?}");
            check(&gpu, &what, &got, &q[2 * d..], &kc, &vc, last, shape);
        }
    }

    #[test]
    fn invalid_calls_are_rejected_naming_the_problem() {
        let shape = AttnShape {
            heads: 2,
            kv_heads: 2,
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
                    1 => attn.encode_prefill(
                        &mut pass,
                        &AttendBuffers::new(a, c, &cache, t, b),
                        rows,
                        s,
                    ),
                    _ => attn.encode_decode(
                        &mut pass,
                        &AttendBuffers::new(a, c, &cache, t, b),
                        rows,
                        s,
                    ),
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
}
