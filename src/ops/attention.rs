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
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, MemoryCategory, PipelineKey, Record, Shader};

/// Largest head_dim the kernels support: a prefill tile holds at least 4 query rows.
pub const MAX_HEAD_DIM: usize = 256;
/// Largest row width d = heads * head_dim.
pub const MAX_WIDTH: usize = 32768;
/// Keys per chunk of the split decode: a row whose context is longer is split into
/// chunks of this many keys, each run by its own workgroups.
pub const DECODE_CHUNK: usize = 256;

/// f32s of workgroup memory an attend tile may use (16 KiB, the WebGPU default); must
/// match `TILE` in attention.wgsl.
const TILE_ELEMS: usize = 4096;
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
}

/// kv_write's bindings: params, row_table, k_rows, v_rows, k_cache_out, v_cache_out.
const KV_BINDINGS: [Binding; 6] = [
    Binding::Uniform,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// attend's and reduce's bindings: params, row_table, plan, q, k_cache, v_cache, out, parts.
const ATTN_BINDINGS: [Binding; 8] = [
    Binding::Uniform,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadWrite,
    Binding::ReadWrite,
];

/// How the KV cache stores its values.
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
}

impl KvFormat {
    pub fn bytes_per_value(self) -> usize {
        match self {
            KvFormat::F32 => 4,
            KvFormat::F16 => 2,
        }
    }

    /// The value the cache holds for `v`.
    pub fn round(self, v: f32) -> f32 {
        match self {
            KvFormat::F32 => v,
            KvFormat::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
        }
    }
}

impl std::str::FromStr for KvFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(KvFormat::F32),
            "f16" => Ok(KvFormat::F16),
            other => Err(format!("KV cache format `{other}`: expected f32 or f16")),
        }
    }
}

/// The attention problem: `heads` heads of `head_dim`, and a KV cache of `max_seqs`
/// sequences by `max_pos` positions, each buffer [max_seqs, max_pos, d] values of `kv`.
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
            * self.d() as u64
            * self.kv.bytes_per_value() as u64
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
        if elems.is_none_or(|n| n > u32::MAX as usize) {
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
/// (TK); each invocation accumulates `acc` output pairs (ACC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AttnTile {
    rows: usize,
    keys: usize,
    acc: usize,
}

impl AttnTile {
    /// A tile of `rows` queries (a power of two dividing the workgroup) for `head_dim`:
    /// the largest key block that fits workgroup memory next to Q [rows, head_dim]:
    /// (rows + 2 * keys) * head_dim + rows * keys <= TILE_ELEMS (Q, K, V, scores).
    fn new(rows: usize, head_dim: usize) -> Self {
        let keys = ((TILE_ELEMS - rows * head_dim) / (2 * head_dim + rows)).min(MAX_BLOCK_KEYS);
        let lanes_per_row = ATTEND_WORKGROUP / rows;
        Self {
            rows,
            keys,
            acc: (head_dim / 2).div_ceil(lanes_per_row),
        }
    }

    /// Prefill: as many rows as the accumulators allow (rows * head_dim / 2 pairs over the
    /// workgroup, at most MAX_ACC per invocation), which also keeps Q within a quarter of
    /// workgroup memory. head_dim 64: 16 rows x 21 keys; 256: 4 x 5.
    fn prefill(head_dim: usize) -> Self {
        let fit = (2 * MAX_ACC * ATTEND_WORKGROUP / head_dim).min(MAX_TILE_ROWS);
        Self::new(1 << fit.ilog2(), head_dim)
    }

    /// Decode: one row per tile. head_dim 64: 31 keys per block; 256: 7.
    fn decode(head_dim: usize) -> Self {
        Self::new(1, head_dim)
    }

    fn key(&self, shape: AttnShape, partial: bool) -> PipelineKey {
        PipelineKey::new(Shader::Attention, "attend")
            .with("HD", shape.head_dim as u32)
            .with_flag("KV_F16", shape.kv == KvFormat::F16)
            .with("WG", ATTEND_WORKGROUP as u32)
            .with("TQ", self.rows as u32)
            .with("TK", self.keys as u32)
            .with("ACC", self.acc as u32)
            .with_flag("PARTIAL", partial)
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
            partials: Mutex::new(None),
            decode_chunk: DECODE_CHUNK,
        })
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
    /// = (seq, pos) of `rows`; `k`, `v` are [rows, d], the caches f32 [max_seqs, max_pos, d].
    /// Two rows with the same (seq, pos) race.
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
        let key = PipelineKey::new(Shader::Attention, "kv_write")
            .with("HD", shape.head_dim as u32)
            .with("EW_WG", ELEMENTWISE_WORKGROUP)
            .with_flag("KV_F16", shape.kv == KvFormat::F16);
        let pipeline = self.gpu.pipeline(&key, &KV_BINDINGS)?;
        let pairs = rows.len() * shape.d() / 2;
        let grid = self.gpu.grid(
            "attention kv_write",
            pairs.div_ceil(ELEMENTWISE_WORKGROUP as usize) as u32,
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
        let buffers = [
            params.buffer(),
            row_table.buffer(),
            k.buffer(),
            v.buffer(),
            k_cache.buffer(),
            v_cache.buffer(),
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
        let tile = AttnTile::prefill(shape.head_dim);
        let plan = plan_tiles(rows, tile.rows);
        let whole = Split::whole(shape);
        self.dispatch_attend(pass, &buffers, rows, shape, tile, &plan, whole, None)
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
        self.check_attend(&buffers, rows, shape)?;
        if rows.is_empty() {
            return Ok(());
        }
        let tile = AttnTile::decode(shape.head_dim);
        let plan = plan_tiles(rows, 1);
        let chunks = self.decode_chunks(rows);
        if chunks == 1 {
            let whole = Split::whole(shape);
            return self.dispatch_attend(pass, &buffers, rows, shape, tile, &plan, whole, None);
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
            &buffers,
            rows,
            shape,
            tile,
            &plan,
            split,
            Some(&scratch),
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
    ) -> Result<(), GpuError> {
        let tiles = plan.len() / 2;
        let plan = self
            .gpu
            .upload(MemoryCategory::Uniforms, "attention plan", plan)?;
        let pipeline = self
            .gpu
            .pipeline(&tile.key(shape, partials.is_some()), &ATTN_BINDINGS)?;
        let (q_stride, q_off) = pairs(&b.q, "attention q", rows.len(), shape.d())?;
        let groups = tiles as u64 * split.chunks as u64 * shape.heads as u64;
        let groups = u32::try_from(groups)
            .map_err(|_| GpuError::Validation(format!("attention needs {groups} workgroups")))?;
        let grid = self.gpu.grid("attention", groups)?;
        let params = self.gpu.uniform(
            "attention params",
            &AttnParams {
                src_stride: q_stride,
                src_off: q_off,
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
        ];
        self.gpu.dispatch(pass, &pipeline, &bound, grid);
        if partials.is_none() {
            return Ok(());
        }

        let key = PipelineKey::new(Shader::Attention, "reduce")
            .with("HD", shape.head_dim as u32)
            .with("EW_WG", ELEMENTWISE_WORKGROUP);
        let pipeline = self.gpu.pipeline(&key, &ATTN_BINDINGS)?;
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
                tol.push(eps * v * (2.0 * (hd as f64 + 1.0) * a + 4.0 * n + 32.0));
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
        for hd in (2..=MAX_HEAD_DIM).step_by(2) {
            for tile in [AttnTile::prefill(hd), AttnTile::decode(hd)] {
                let floats = (tile.rows + 2 * tile.keys) * hd + tile.rows * tile.keys;
                assert!(
                    floats <= TILE_ELEMS,
                    "head_dim {hd}: {tile:?} uses {floats}"
                );
                assert!(
                    tile.keys >= 1 && tile.keys <= MAX_BLOCK_KEYS,
                    "{hd}: {tile:?}"
                );
                assert!(tile.rows.is_power_of_two() && ATTEND_WORKGROUP.is_multiple_of(tile.rows));
                // The lanes of a row cover its head_dim / 2 pairs within MAX_ACC each.
                let lanes = ATTEND_WORKGROUP / tile.rows;
                assert!(
                    tile.acc <= MAX_ACC && tile.acc * lanes >= hd / 2,
                    "{hd}: {tile:?}"
                );
            }
        }
        let t = |rows, keys, acc| AttnTile { rows, keys, acc };
        assert_eq!(AttnTile::prefill(64), t(16, 21, 8));
        assert_eq!(AttnTile::prefill(256), t(4, 5, 8));
        assert_eq!(AttnTile::prefill(24), t(32, 41, 6));
        assert_eq!(AttnTile::decode(64), t(1, 31, 1));
        assert_eq!(AttnTile::decode(256), t(1, 7, 2));
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
                let fb = upload(&gpu, "qkv", &fused);
                let tb = table(&gpu, rows);
                let out = upload(&gpu, "out", &vec![0f32; rows.len() * d]);
                let mut enc = gpu.encoder("fused rows test");
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    let (qc, kc_, vc_) = (
                        Cols::new(&fb, 3 * d, 0),
                        Cols::new(&fb, 3 * d, d),
                        Cols::new(&fb, 3 * d, 2 * d),
                    );
                    attn.encode_kv_write(&mut pass, kc_, vc_, &tb, rows, &kcb, &vcb, shape)
                        .unwrap();
                    if i == 0 {
                        attn.encode_prefill(&mut pass, qc, &kcb, &vcb, &tb, rows, &out, shape)
                    } else {
                        attn.encode_decode(&mut pass, qc, &kcb, &vcb, &tb, rows, &out, shape)
                    }
                    .unwrap();
                }
                gpu.submit_and_wait(enc).unwrap();
                let got: Vec<f32> = gpu.read(&out, rows.len() * d).unwrap();
                kv_write_reference(&k, &v, rows, &mut kc, &mut vc, shape);
                for x in kc.iter_mut().chain(vc.iter_mut()) {
                    *x = KvFormat::F16.round(*x);
                }
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
}
