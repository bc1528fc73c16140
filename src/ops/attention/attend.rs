//! What both attention paths share: the query tiles, the plan, and the attend (and
//! split-reduce) dispatch.

use super::cache::{level_inv, rotation_norm};
use super::decode::DecodeFusion;
use super::{
    Attention, AttnParams, AttnShape, BINDINGS, Cols, ELEMENTWISE_WORKGROUP, distinct, pairs,
    tile_elems,
};
use crate::gpu::{Gpu, GpuBuffer, GpuError, MemoryCategory, PipelineKey, Record, Shader};

/// Output pairs one attend invocation accumulates at most; must match `MAX_ACC` in
/// attention.wgsl.
const MAX_ACC: usize = 8;
/// The same for attend_rows (`MAX_ROW_ACC` in attention.wgsl), whose invocations hold a
/// slice of Q as well: head_dim 256's slices (others take PREFILL_SLICE_PAIRS). With one
/// row an invocation, prefill attention of 4 sequences x 1,015 tokens on lavapipe took
/// 0.82-0.85x the time with 16 pairs as with 8 at head_dims 32 to 256; 32 took 1.4x.
const MAX_ROW_ACC: usize = 16;
/// Rows of the tile one attend_rows invocation takes (`LANE_ROWS` in attention.wgsl, which
/// writes them out as two quads): each key and value word it loads serves them all.
/// Prefill attention on lavapipe (4 sequences x 1,015 tokens, head_dims 32-256): four rows
/// took 0.36-0.41x the time of one, eight 0.59-0.68x that of four, sixteen (four quads)
/// 1.35-1.4x that of eight.
const LANE_ROWS: usize = 8;
/// Pairs of a head one attend_rows invocation takes where the tile's rows allow (at least
/// LANE_ROWS of them: head_dim 256 takes 16). The kernel's code grows with its pairs x
/// rows: lavapipe compiled it in 1.35 s with 16 pairs and in 0.28-0.41 s with 8 (one row
/// of 16 pairs an invocation: 80 ms), and 8 pairs ran 1.35-1.5x as long as 16 (4 x 1,015
/// tokens, head_dims 32-128), still 0.33-0.36x the one-row kernel's time.
const PREFILL_SLICE_PAIRS: usize = 8;
const _: () = assert!(PREFILL_SLICE_PAIRS <= MAX_ROW_ACC);
/// Prefill steps of fewer rows take the direct decode tile on CPU adapters
/// ([`AttnTile::prefill_on`]): its pipeline compiled in 42 ms on lavapipe, attend_rows's
/// in 0.28-0.41 s, and a one-off generation pays both. The shipped Hadamard model's
/// 120-token prefill: attention 47-49 ms (decode tile) against 9.3-9.4 ms (attend_rows),
/// so below about 300 rows the decode tile's compile and run together take less; 128
/// keeps bigger models (attention grows with layers and heads, the compile does not)
/// on the right side, and the shipped models (context 128) from compiling attend_rows.
/// Where the compile is paid once for many runs ([`Attention::set_many_runs`]: a
/// server), every prefill step takes attend_rows: it ran faster at every size measured
/// (the shipped Hadamard model, 8 to 120 rows: 0.31 against 0.77 ms at 8, 7.3 against
/// 36 ms at 120).
const SHORT_PREFILL_ROWS: usize = 128;
/// Invocations per attend workgroup; passed as `WG`.
const ATTEND_WORKGROUP: usize = 64;
/// Query rows per prefill tile at most; passed as `TQ`.
const MAX_TILE_ROWS: usize = 32;
/// Keys per block at most; passed as `TK`.
const MAX_BLOCK_KEYS: usize = 64;

/// Keys per block of the direct decode tile ([`AttnTile::direct_decode`]), whose blocks
/// take a score per key only. 256 measured the same as 64 on lavapipe.
const DIRECT_BLOCK_KEYS: usize = 64;
/// Keys per block of the direct prefill tile ([`AttnTile::direct_prefill`]), whose partial
/// scores take WG x keys f32s (8 KiB). Prefill attention of 4 sequences x 1,015 tokens,
/// head_dim 64, on lavapipe: 16 keys 1.02x the time of 32, 64 keys 0.99x.
const PREFILL_BLOCK_KEYS: usize = 32;
/// Invocations of the direct decode tile's workgroup: lavapipe's SIMD width (8 f32s in 256
/// bits), one key group folding every key, where a workgroup of 64 made 8 groups of 8
/// lanes, each folding every eighth key, combined at the end. A CPU adapter runs a
/// workgroup on one thread, its SIMD-wide slices one after another, so the groups shared
/// nothing out and cost their barriers, repeated reads and combine: the shipped Hadamard
/// model's decode attention (head_dim 32) took 0.46-0.53x the time with 8 invocations
/// after a 6-token prompt and 0.61-0.62x after 96 tokens, 16 invocations (2 groups)
/// 0.73-0.77x and 0.69-0.71x; d_model 512 x 8 heads (head_dim 64) 0.39x and 0.86x, 4 heads
/// (128) 0.45x and 0.90x (`walsh profile`, lavapipe). More lanes only where a lane would
/// hold more than MAX_ACC pairs (head_dim 256: 16).
const DIRECT_DECODE_LANES: usize = 8;

/// The tile of one attend pipeline: `rows` queries (TQ) against blocks of `keys` keys
/// (TK) in `elems` f32s of workgroup memory (TILE: what Q, K, V and the scores take, no
/// more, since WebGPU zero-fills a workgroup's memory before it runs); each invocation
/// accumulates `acc` output pairs (ACC) of one of `groups` key groups (KG, decode: see
/// the fold in attention.wgsl); `direct` (DIRECT) reads K and V from the cache where they
/// are used instead of staging them; `lanes` invocations a workgroup (WG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AttnTile {
    pub(super) lanes: usize,
    pub(super) rows: usize,
    pub(super) keys: usize,
    pub(super) acc: usize,
    pub(super) elems: usize,
    pub(super) groups: usize,
    pub(super) direct: bool,
}

impl AttnTile {
    /// A tile of `rows` queries (a power of two dividing the workgroup) for `head_dim`:
    /// the largest key block that fits `limit` f32s of workgroup memory next to Q [rows,
    /// head_dim]: [`Self::floats`] <= limit.
    pub(super) fn new(rows: usize, head_dim: usize, limit: usize) -> Self {
        // What Q takes, then what each key adds (its K and V rows and a score per row).
        let base = Self::floats(rows, 0, head_dim);
        let per_key = Self::floats(rows, 1, head_dim) - base;
        let keys = ((limit - base) / per_key).min(MAX_BLOCK_KEYS);
        let acc = (head_dim / 2).div_ceil(ATTEND_WORKGROUP / rows);
        Self {
            lanes: ATTEND_WORKGROUP,
            rows,
            keys,
            acc,
            elems: Self::floats(rows, keys, head_dim),
            groups: Self::key_groups(rows, keys, head_dim, acc),
            direct: false,
        }
    }

    /// Key groups (KG): a decode row's invocations in groups of ceil(head_dim / 2 / acc)
    /// lanes (`group_lanes` in attention.wgsl), each group folding its share of a block's
    /// keys; as many as the workgroup holds, at most one per key (the combine's scratch,
    /// `groups` x (head_dim + 2) f32s, then fits the staged blocks); 1 for prefill tiles.
    fn key_groups(rows: usize, keys: usize, head_dim: usize, acc: usize) -> usize {
        if rows == 1 {
            (ATTEND_WORKGROUP / (head_dim / 2).div_ceil(acc)).clamp(1, keys)
        } else {
            1
        }
    }

    /// Decode on a CPU adapter: one row against blocks of DIRECT_BLOCK_KEYS keys read from
    /// the cache by the invocations that use them, in a workgroup of DIRECT_DECODE_LANES
    /// (more where a lane would hold more than MAX_ACC pairs) folding every key: one key
    /// group. The tile holds Q and the scores, and after Q room for the fused KV write's
    /// key and value (2 x head_dim): within the WebGPU default for every head_dim (at most
    /// 768 f32s).
    pub(super) fn direct_decode(head_dim: usize) -> Self {
        let keys = DIRECT_BLOCK_KEYS;
        let lanes = DIRECT_DECODE_LANES.max((head_dim / 2).div_ceil(MAX_ACC));
        Self {
            lanes,
            rows: 1,
            keys,
            acc: (head_dim / 2).div_ceil(lanes),
            elems: head_dim + keys.max(2 * head_dim),
            groups: 1,
            direct: true,
        }
    }

    /// f32s of `rows` queries against blocks of `keys` keys: Q [rows, head_dim], K [keys,
    /// head_dim + 1] (each row padded by one f32 against bank conflicts), V [keys,
    /// head_dim], scores [rows, keys]; `k_block` and after in attention.wgsl.
    pub(super) fn floats(rows: usize, keys: usize, head_dim: usize) -> usize {
        (rows + 2 * keys) * head_dim + keys + rows * keys
    }

    /// Prefill: as many rows as the accumulators allow (rows * head_dim / 2 pairs over the
    /// workgroup, at most MAX_ACC per invocation), which also keeps Q within a quarter of
    /// workgroup memory. head_dim 64: 16 rows x 21 keys; 256: 4 x 5.
    pub(super) fn prefill(head_dim: usize, limit: usize) -> Self {
        let fit = (2 * MAX_ACC * ATTEND_WORKGROUP / head_dim).min(MAX_TILE_ROWS);
        Self::new(1 << fit.ilog2(), head_dim, limit)
    }

    /// Prefill where workgroup memory is read lane by lane (`attend_rows` in
    /// attention.wgsl; [`Self::prefill_on`]): `rows` rows x slices of the head of `acc`
    /// pairs (the fewest slices, a power of two, of at most PREFILL_SLICE_PAIRS pairs each
    /// while rows >= LANE_ROWS, so at most MAX_ROW_ACC; rows x slices = ATTEND_WORKGROUP),
    /// each invocation LANE_ROWS rows of one slice, and keys and values are read from the
    /// cache. The tile holds the partial scores [slices, keys, rows] = ATTEND_WORKGROUP x
    /// keys f32s, and Q's rows for the rotated caches' rotation: within the WebGPU default
    /// for every head_dim. head_dim 64: 16 rows x 4 slices of 8 pairs in 8 invocations; 32:
    /// 32 rows x 2; 16: 64 rows, one slice; 256: 8 x 8 of 16.
    pub(super) fn direct_prefill(head_dim: usize) -> Self {
        let slices = (head_dim / 2)
            .div_ceil(PREFILL_SLICE_PAIRS)
            .next_power_of_two()
            .min(ATTEND_WORKGROUP / LANE_ROWS);
        let rows = ATTEND_WORKGROUP / slices;
        let keys = PREFILL_BLOCK_KEYS;
        Self {
            lanes: ATTEND_WORKGROUP / LANE_ROWS,
            rows,
            keys,
            acc: (head_dim / 2).div_ceil(slices),
            elems: (ATTEND_WORKGROUP * keys).max(rows * head_dim),
            groups: 1,
            direct: true,
        }
    }

    /// The prefill tile on `gpu` for a step of `rows` rows: [`Self::direct_prefill`] where
    /// the adapter reads workgroup memory lane by lane ([`Gpu::favours_registers`]), as the
    /// staged tile's score loop does Q and K for every pair (4 sequences x 1,015 tokens on
    /// lavapipe: 0.42x the attention time at head_dim 64, 0.32x at 256), and below
    /// SHORT_PREFILL_ROWS rows there the direct decode tile, row by row, whose pipeline
    /// compiles in a tenth of the time; else [`Self::prefill`] within the device's limit
    /// (SwiftShader: the direct tile took 1.32x the staged one's time).
    /// With `many_runs` (the compile paid once for many prefills) no step is short.
    pub(super) fn prefill_on(gpu: &Gpu, head_dim: usize, rows: usize, many_runs: bool) -> Self {
        if !gpu.favours_registers() {
            Self::prefill(head_dim, tile_elems(gpu))
        } else if rows < SHORT_PREFILL_ROWS && !many_runs {
            Self::direct_decode(head_dim)
        } else {
            Self::direct_prefill(head_dim)
        }
    }

    /// Decode: one row per tile. In 16 KiB, head_dim 64: 31 keys per block; 256: 7.
    pub(super) fn decode(head_dim: usize, limit: usize) -> Self {
        Self::new(1, head_dim, limit)
    }

    /// The decode tile on `gpu`: [`Self::direct_decode`] on a CPU adapter, where staging K
    /// and V costs a copy and a barrier per block and buys nothing (no bank or coalescing to
    /// win), else [`Self::decode`] within the device's limit. The browser's SwiftShader
    /// (Chromium), which zero-fills workgroup memory, took a staged tile of 8 keys a block
    /// while the direct tile was 64 invocations in 8 key groups (0.85x its decode rate);
    /// with one group of 8 lanes the page there decodes at 1.20x the rate of that tile.
    pub(super) fn decode_on(gpu: &Gpu, head_dim: usize) -> Self {
        if gpu.is_cpu_adapter() {
            Self::direct_decode(head_dim)
        } else {
            Self::decode(head_dim, tile_elems(gpu))
        }
    }

    pub(super) fn key(&self, shape: AttnShape, partial: bool, fused: bool) -> PipelineKey {
        // Direct prefill has an entry point of its own; direct decode is attend's DIRECT.
        let entry = if self.direct && self.rows > 1 {
            "attend_rows"
        } else {
            "attend"
        };
        PipelineKey::new(Shader::Attention, entry)
            .with("HD", shape.head_dim as u32)
            .with("KV", shape.kv.code())
            .with_flag("KV_ROT", shape.kv.rotated())
            .with("HM", shape.kv.rotation_order(shape.head_dim))
            .with("WG", self.lanes as u32)
            .with("TQ", self.rows as u32)
            .with("TK", self.keys as u32)
            .with("ACC", self.acc as u32)
            .with("TILE", self.elems as u32)
            .with("KG", self.groups as u32)
            .with_flag("DIRECT", self.direct)
            .with_flag("PARTIAL", partial)
            .with_flag("FUSE", fused)
    }
}

/// How attend reads a block's keys and values (attention.wgsl: DIRECT in decode,
/// `attend_rows` in prefill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttendTile {
    /// Direct on a CPU adapter, staged on a GPU; on SwiftShader, staged in prefill, and in
    /// decode in the browser, capped there (`AttnTile::decode_on`, `AttnTile::prefill_on`).
    Auto,
    /// Staged in workgroup memory by coalesced loads, then read from there.
    Staged,
    /// Read from the cache by the invocations that use each.
    Direct,
}

impl Attention {
    /// Sets how attend reads keys and values (default [`AttendTile::Auto`]); tests and the
    /// kernel benchmarks take each on any adapter.
    pub fn with_tile(mut self, tile: AttendTile) -> Self {
        self.tile = tile;
        self
    }

    /// Whether the kernels this builds will run many times (a server), so that a kernel's
    /// compile pays back whatever the step: then prefill on lavapipe and llvmpipe takes
    /// `attend_rows` at every size, where by default steps under SHORT_PREFILL_ROWS rows
    /// take the decode tile, which compiles in a tenth of the time. Default false.
    pub fn set_many_runs(&mut self, on: bool) {
        self.many_runs = on;
    }

    /// What [`Attention::set_many_runs`] set.
    pub fn many_runs(&self) -> bool {
        self.many_runs
    }
}

/// Groups rows into query tiles of at most `tile_rows` consecutive rows of one sequence;
/// returns the plan the kernel reads, `[tiles, 2]`: (first row, row count) per tile.
pub(super) fn plan_tiles(rows: &[(u32, u32)], tile_rows: usize) -> Vec<u32> {
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

/// The buffers of one attention call: the query rows (`[rows, d]`, a column window of a
/// wider buffer allowed), the two caches they attend to, the row table, and the output
/// (`[rows, d]`, a buffer of its own).
#[derive(Clone, Copy)]
pub struct AttendBuffers<'a> {
    pub q: Cols<'a>,
    pub k_cache: &'a GpuBuffer,
    pub v_cache: &'a GpuBuffer,
    pub row_table: &'a GpuBuffer,
    pub out: &'a GpuBuffer,
}

impl<'a> AttendBuffers<'a> {
    pub fn new(
        q: impl Into<Cols<'a>>,
        k_cache: &'a GpuBuffer,
        v_cache: &'a GpuBuffer,
        row_table: &'a GpuBuffer,
        out: &'a GpuBuffer,
    ) -> Self {
        Self {
            q: q.into(),
            k_cache,
            v_cache,
            row_table,
            out,
        }
    }
}

/// How one attend dispatch splits the keys: `chunks` chunks of `chunk_len` keys.
#[derive(Clone, Copy, Debug)]
pub(super) struct Split {
    pub(super) chunks: usize,
    pub(super) chunk_len: usize,
}

impl Split {
    /// One chunk holding every position of the cache.
    pub(super) fn whole(shape: AttnShape) -> Self {
        Self {
            chunks: 1,
            chunk_len: shape.max_pos,
        }
    }
}

impl Attention {
    /// Validates an attention call.
    pub(super) fn check_attend(
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

    pub(super) fn params(
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
            kv_heads: shape.kv_heads as u32,
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
    pub(super) fn dispatch_attend(
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
            let (k_stride, k) = pairs(&f.k, "attention k rows", rows.len(), shape.kv_d())?;
            let (v_stride, v) = pairs(&f.v, "attention v rows", rows.len(), shape.kv_d())?;
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
        // BINDINGS' slots; the reduce changes params, out and cos_sin only.
        let mut slots = [
            &params,
            b.row_table,
            &plan,
            b.q.buffer,
            b.k_cache,
            b.v_cache,
            out,
            parts,
            cos_sin,
            signs,
        ];
        self.gpu
            .dispatch(pass, &pipeline, &slots.map(GpuBuffer::buffer), grid);
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
        (slots[0], slots[6], slots[8]) = (&params, b.out, b.row_table);
        self.gpu
            .dispatch(pass, &pipeline, &slots.map(GpuBuffer::buffer), grid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[test]
    fn tiles_fit_workgroup_memory_for_every_supported_head_dim() {
        for elems in [DEFAULT_TILE_ELEMS, 8192, MAX_TILE_ELEMS] {
            for hd in (2..=MAX_HEAD_DIM).step_by(2) {
                for tile in [AttnTile::prefill(hd, elems), AttnTile::decode(hd, elems)] {
                    let floats =
                        (tile.rows + 2 * tile.keys) * hd + tile.keys + tile.rows * tile.keys;
                    assert!(floats <= elems, "head_dim {hd}: {tile:?} uses {floats}");
                    assert_eq!(
                        tile.elems, floats,
                        "head_dim {hd}: the tile declares what it uses"
                    );
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
        let t = |rows, keys, acc, elems, groups| AttnTile {
            lanes: ATTEND_WORKGROUP,
            rows,
            keys,
            acc,
            elems,
            groups,
            direct: false,
        };
        assert_eq!(AttnTile::prefill(64, e), t(16, 21, 8, 4069, 1));
        assert_eq!(AttnTile::prefill(256, e), t(4, 5, 8, 3609, 1));
        assert_eq!(AttnTile::prefill(24, e), t(32, 41, 6, 4089, 1));
        // Decode: 64 invocations in groups of head_dim / 2, at most one per key.
        assert_eq!(AttnTile::decode(64, e), t(1, 31, 1, 4094, 2));
        assert_eq!(AttnTile::decode(256, e), t(1, 7, 2, 3854, 1));
        assert_eq!(AttnTile::decode(2, e).groups, AttnTile::decode(2, e).keys);
        // Twice the memory (lavapipe's 32 KiB): twice the keys per decode block.
        assert_eq!(AttnTile::decode(64, 8192).keys, 62);
        assert_eq!(AttnTile::decode(256, 8192).keys, 15);
        assert_eq!(AttnTile::decode(32, 8192).keys, 64);
    }

    #[test]
    fn direct_decode_tiles_are_one_key_group_holding_q_the_scores_and_the_kv_write() {
        for hd in (2..=MAX_HEAD_DIM).step_by(2) {
            let tile = AttnTile::direct_decode(hd);
            // Q, then the scores or the fused write's key and value, whichever is more:
            // within the WebGPU default whatever the head_dim.
            assert_eq!(tile.elems, hd + tile.keys.max(2 * hd), "{hd}: {tile:?}");
            assert!(tile.elems <= DEFAULT_TILE_ELEMS, "{hd}: {tile:?}");
            assert!(
                tile.direct && tile.rows == 1 && tile.groups == 1,
                "{hd}: {tile:?}"
            );
            // The workgroup's lanes (group_lanes in attention.wgsl) cover the head's pairs
            // within MAX_ACC each; the fused quantized write takes two of them.
            assert!(
                tile.acc <= MAX_ACC && tile.acc * tile.lanes >= hd / 2,
                "{hd}: {tile:?}"
            );
            assert!(tile.lanes >= 2, "{hd}: {tile:?}");
        }
        let t = |hd| {
            let d = AttnTile::direct_decode(hd);
            (d.lanes, d.acc, d.elems)
        };
        // head_dim 32 (the shipped models): 8 lanes of 2 pairs; 64: 8 of 4; 128: 8 of
        // MAX_ACC; 256: 16 of MAX_ACC.
        assert_eq!(t(32), (8, 2, 32 + 64));
        assert_eq!(t(64), (8, 4, 64 + 128));
        assert_eq!(t(128), (8, 8, 128 + 256));
        assert_eq!(t(256), (16, 8, 256 + 512));
        assert_eq!(t(2), (8, 1, 2 + 64));
    }

    #[test]
    fn direct_prefill_tiles_split_the_workgroup_into_rows_and_slices_of_the_head() {
        for hd in (2..=MAX_HEAD_DIM).step_by(2) {
            let tile = AttnTile::direct_prefill(hd);
            // attend_rows: invocation t takes LANE_ROWS rows from LANE_ROWS * (t % lane_rows)
            // of slice t / lane_rows, acc pairs, with lane_rows = rows / LANE_ROWS.
            let slices = ATTEND_WORKGROUP / tile.rows;
            assert_eq!(tile.rows * slices, ATTEND_WORKGROUP, "{hd}: {tile:?}");
            assert!(tile.rows.is_power_of_two(), "{hd}: {tile:?}");
            assert!(tile.rows >= LANE_ROWS, "{hd}: {tile:?}");
            assert_eq!(tile.lanes, tile.rows / LANE_ROWS * slices, "{hd}: {tile:?}");
            assert!(
                tile.acc <= MAX_ROW_ACC && tile.acc * slices >= hd / 2,
                "{hd}: {tile:?}"
            );
            // The partial scores [slices, keys, rows], or Q's rows where more.
            let floats = (ATTEND_WORKGROUP * tile.keys).max(tile.rows * hd);
            assert_eq!(tile.elems, floats, "{hd}: {tile:?}");
            assert!(tile.elems <= DEFAULT_TILE_ELEMS, "{hd}: {tile:?}");
            assert!(tile.direct && tile.groups == 1, "{hd}: {tile:?}");
        }
        let t = |hd| {
            let d = AttnTile::direct_prefill(hd);
            (d.rows, d.acc, d.elems)
        };
        // head_dim 64: 16 rows x 4 slices of 8 pairs; 24: 32 x 2 of 6; 16: 64 x 1 of 8;
        // 256: 8 x 8 of 16 (the rows' floor).
        assert_eq!(t(64), (16, 8, 64 * 32));
        assert_eq!(t(24), (32, 6, 64 * 32));
        assert_eq!(t(16), (64, 8, 64 * 32));
        assert_eq!(t(256), (8, 16, 64 * 32));
        assert_eq!(t(2), (64, 1, 64 * 32));
    }

    #[test]
    fn plan_groups_consecutive_rows_of_one_sequence() {
        let rows = [(0, 0), (0, 1), (0, 2), (1, 0), (0, 3), (0, 4), (2, 9)];
        assert_eq!(plan_tiles(&rows, 2), [0, 2, 2, 1, 3, 1, 4, 2, 6, 1]);
        assert_eq!(plan_tiles(&rows, 32), [0, 3, 3, 1, 4, 2, 6, 1]);
        assert_eq!(plan_tiles(&rows, 1).len(), 2 * rows.len());
        assert!(plan_tiles(&[], 4).is_empty());
    }
}
