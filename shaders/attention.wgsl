// Causal multi-head attention over a KV cache. Host side: src/ops/attention/ (mod.rs, attend.rs, write.rs, ...).
//
// With d = heads * HD (HD = head_dim, even) and kv_d = kv_heads * HD (grouped-query
// attention: query head h reads KV head h / (heads / kv_heads); kv_d = d without
// grouping), every f32 tensor is bound as vec2 pairs:
//     out                      [rows, d]                 row r of the batch
//     q                        row r at pair r * src_stride + src_off, d / 2 pairs
//     k_rows, v_rows           row r at pair r * src_stride + src_off (k_rows) or
//                              src_off2 (v_rows), kv_d / 2 pairs: column windows of the
//                              decoder's fused [rows, q | k | v] buffer, or whole rows
//     k_cache, v_cache         [max_seqs, max_pos, kv_heads] head blocks of head_words() u32
//                              words: the key / value of (seq, pos) in format KV (f32 bit
//                              patterns, two halves per word, or a q8 / q4 block: an f32
//                              scale word then the packed levels), docs/kv-cache.md
//     row_table                [rows, 2] u32             (seq, pos) of row r
//     plan                     [tiles, 2] u32            (first row, row count) of a tile
// Row r attends to keys 0..=pos of its sequence; head h is columns h*HD..(h+1)*HD of q
// and out, and reads KV head h / (heads / kv_heads) of the cache.
//
// Entry points:
//   kv_write  k_cache[seq][pos] = k_rows[r] and v_cache[seq][pos] = v_rows[r] (f32, f16).
//   kv_quant  the same for the quantized formats: one invocation per (row, head, k or v)
//             rotates the head (KV_ROT), finds its scale and packs its levels.
//   attend    one workgroup per (query tile, key chunk, head): the TQ rows of a tile (all
//             of one sequence) against the keys of one chunk, in blocks of TK keys staged
//             in workgroup memory (with DIRECT, read from the cache where used), with an
//             online softmax (in decode, one per key group: KG). It writes
//             out = softmax(q k^T * scale) v, or with PARTIAL its chunk's unnormalized
//             state (m, l, acc) to `parts` for `reduce`.
//   reduce    combines the partial states of a row's chunks into out.
// With FUSE (decode: one row per tile) attend also does the work of rope and kv_write /
// kv_quant for its row and head: q and k are rotated by RoPE (cos_sin, as rope.wgsl) as
// they are read from the decoder's fused [rows, q | k | v] buffer (bound as q, k at pair
// k_off, v at src_off2), and the one workgroup whose key chunk holds the row's position
// writes the head's key and value to the cache, in the cache's format and bit for bit as
// the separate kernels would, before it reads the chunk's keys. The host fuses only
// ungrouped shapes (kv_heads = heads): with grouping, every query head of a group would
// write the same cache block from its own workgroup while the others read it.
// With KV_ROT the cache holds heads rotated by R = H / sqrt(HD) (H the Walsh-Hadamard
// matrix of order HD = HM * HP: H_HM (x) H_HP, src/ops/hadamard/cpu.rs): attend rotates
// each query head by R in workgroup memory, so scores are unchanged (R orthogonal), and
// rotates its output (or its chunk's partial acc: reduce is linear) back by R (R
// symmetric, its own inverse) before writing it.

// Must match `AttnParams` in src/ops/attention/mod.rs.
struct Params {
    tiles: u32,      // attend: query tiles in `plan`
    tiles_x: u32,    // workgroups along x of the (possibly 2-D) grid
    rows: u32,       // rows of the batch
    heads: u32,
    chunks: u32,     // attend, reduce: key chunks per (tile, head); 1 without the split
    chunk_len: u32,  // attend, reduce: keys per chunk
    max_seqs: u32,   // cache shape [max_seqs, max_pos, d]
    max_pos: u32,
    scale: f32,      // attend: softmax scale 1/sqrt(HD)
    src_stride: u32, // kv_write, attend: pairs from one row of k_rows / v_rows / q to the next
    src_off: u32,    // kv_write: pair of k in row 0 of k_rows; attend: of q in row 0 of q
    src_off2: u32,   // kv_write: pair of v in row 0 of v_rows
    rot_norm: f32,   // KV_ROT: 1/sqrt(HD) rounded to f32 on the host
    level_inv: f32,  // kv_quant, FUSE: 1/127 (q8) or 1/7 (q4) rounded to f32 on the host
    k_off: u32,      // FUSE: pair of k in row 0 of q
    rope_half: u32,  // FUSE: pairs per position in cos_sin (head_dim / 2)
    kv_heads: u32,   // KV heads of the cache; divides heads
}

// Workgroup memory in f32s, set by the host (AttnTile in src/ops/attention/attend.rs): the
// blocks at k_block and after, (TQ + 2 * TK) * HD + TK + TQ * TK staged, which the host
// sizes within the device's limit (at least the WebGPU default, 16 KiB) up to 64 KiB
// (tile_elems in src/ops/attention/mod.rs); with DIRECT, HD + max(TK, 2 * HD, KG * (HD + 2)).
override TILE: u32 = 4096u;
// Output pairs one attend (attend_rows) invocation holds at most; must match MAX_ACC
// (MAX_ROW_ACC) in src/ops/attention/attend.rs.
const MAX_ACC: u32 = 8u;
const MAX_ROW_ACC: u32 = 16u;
// The running max before the first key: finite, so exp(NEG_BIG - s) is 0 rather than NaN.
const NEG_BIG: f32 = -3.0e38;

// Pipeline constants, all set by the host (src/ops/attention/attend.rs, `AttnTile` and the keys).
override HD: u32 = 64u;          // head_dim
override WG: u32 = 64u;          // attend: invocations per workgroup
override TQ: u32 = 16u;          // attend: query rows per tile; divides WG
override TK: u32 = 16u;          // attend: keys per block
override ACC: u32 = 8u;          // attend: output pairs per invocation, ceil(HD/2 / (WG/TQ))
override PARTIAL: bool = false;  // attend: write chunk states to `parts`, not `out`
override EW_WG: u32 = 256u;      // kv_write, reduce: invocations per workgroup
override KV: u32 = 0u;           // cache format: 0 f32, 1 f16, 2 q8, 3 q4 (KvFormat::code)
override KV_ROT: bool = false;   // q8 / q4 of heads rotated by H / sqrt(HD)
override HM: u32 = 1u;           // KV_ROT: HD = HM * 2^k, HM 1 or a core Hadamard order
override FUSE: bool = false;     // attend: RoPE and the KV write of its row (decode)
override KG: u32 = 1u;           // attend: key groups of a decode row, see the fold
override DIRECT: bool = false;   // attend, decode (TQ = 1): no K and V blocks, see the fold

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> row_table: array<u32>;

// The caches, in every entry point (attend writes them only with FUSE).
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;

// kv_write's bindings. Entry points may reuse binding numbers: wgpu compiles each pipeline
// from its entry point alone.
@group(0) @binding(2) var<storage, read> k_rows: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> v_rows: array<vec2<f32>>;

// attend's and reduce's bindings.
@group(0) @binding(2) var<storage, read> plan: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> out: array<vec2<f32>>;
// Split decode: acc of part p at [p * HD/2, (p + 1) * HD/2), then (m, l) of part p at
// rows * heads * chunks * HD/2 + p, with p = (row * heads + head) * chunks + chunk.
@group(0) @binding(7) var<storage, read_write> parts: array<vec2<f32>>;
// FUSE: (cos, sin) of pair i at position p at index p * rope_half + i (rope.wgsl's table).
@group(0) @binding(8) var<storage, read> cos_sin: array<vec2<f32>>;

// KV_ROT with HM > 1: the signs of H_HM as the WHT kernels take them (cpu::sign_masks:
// bit c % 32 of word r * ceil(HM / 32) + c / 32 set means H_HM[r][c] = -1), four words per
// vec4 (a uniform array's stride); every entry point binds it (cpu::SIGN_UNIFORM_WORDS on
// the host sizes the buffer: HM <= 180 takes at most 180 * 6 words).
@group(0) @binding(9) var<uniform> rot_signs: array<vec4<u32>, 270>;

// kv_quant's private copy of a head: MAX_HEAD_DIM on the host.
const MAX_HD: u32 = 256u;
// Largest core Hadamard order (construct::MAX_CORE on the host).
const MAX_HM: u32 = 180u;

// attend's tile, in f32s: Q [TQ, HD] (pre-scaled), K [TK, HD + 1], V [TK, HD], scores
// [TQ, TK] (offsets: k_block, v_block, s_block); with DIRECT, Q and the scores only.
var<workgroup> tile: array<f32, TILE>;

// ---- the cache's element format ----------------------------------------------------------

// The IEEE binary16 bits nearest to v, ties to even, as the CPU decoder rounds (the `half`
// crate). Written out rather than pack2x16float, whose rounding WGSL leaves to the
// implementation: every device must store the same cache.
fn f16_bits(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) {
        return sign | 0x7c00u | select(0u, 0x200u, a > 0x7f800000u);  // inf, NaN
    }
    if (a >= 0x477ff000u) {
        return sign | 0x7c00u;  // 65520 and up round to inf
    }
    if (a < 0x38800000u) {
        // Below 2^-14: a subnormal, units of 2^-24. WGSL's round() is ties-to-even, and
        // the scaling by 2^24 is exact.
        return sign | u32(round(abs(v) * 16777216.0));
    }
    // Rebias the exponent (127 - 15 = 112) and round the 13 dropped mantissa bits.
    return sign | ((a - 0x38000000u + 0xfffu + ((a >> 13u) & 1u)) >> 13u);
}

// Bits of one stored value and u32 words of one head block (KvFormat::bits and
// KvFormat::head_words on the host): the values padded to whole words, plus the scale word
// of the quantized formats.
fn kv_bits() -> u32 {
    return 32u >> KV;  // 32, 16, 8, 4
}

fn head_words() -> u32 {
    return (HD * kv_bits() + 31u) / 32u + select(0u, 1u, KV >= 2u);
}

// Pair c (values 2c, 2c + 1) of a head block from the block's scale word `s` and the word
// `w` holding the pair (the pair of f32 words for f32): f32 and f16 as stored, q8 and q4
// as level x scale.
fn unpack_pair(s: u32, w: u32, c: u32) -> vec2<f32> {
    switch KV {
        case 0u: {
            return vec2<f32>(bitcast<f32>(s), bitcast<f32>(w));
        }
        case 1u: {
            return unpack2x16float(w);
        }
        default: {
            // The pair's two fields in the word, sign-extended (q8: two's-complement bytes)
            // or offset by 8 (q4 nibbles).
            let b = kv_bits();
            let at = ((2u * c) % (32u / b)) * b;
            var l: vec2<i32>;
            if (KV == 2u) {
                let x = bitcast<i32>(w << (24u - at));
                l = vec2<i32>(x >> 24u, (bitcast<i32>(w << (16u - at))) >> 24u);
            } else {
                l = vec2<i32>(i32((w >> at) & 0xfu), i32((w >> (at + 4u)) & 0xfu)) - 8;
            }
            return vec2<f32>(l) * bitcast<f32>(s);
        }
    }
}

// Words of pair c of head block `blk` (the cache's (seq, pos, head) index): the first of
// the two f32 words, the f16 word, or (scale word, level word).
fn pair_words(blk: u32, c: u32) -> vec2<u32> {
    let base = blk * head_words();
    switch KV {
        case 0u: {
            return vec2<u32>(base + 2u * c, base + 2u * c + 1u);
        }
        case 1u: {
            return vec2<u32>(base + c, base + c);
        }
        default: {
            return vec2<u32>(base, base + 1u + 2u * c / (32u / kv_bits()));
        }
    }
}

// The head block (the cache's (seq, pos, head) index) of KV head `head` at position `pos` of
// sequence `seq`.
fn head_block(seq: u32, pos: u32, head: u32) -> u32 {
    return (seq * params.max_pos + pos) * params.kv_heads + head;
}

fn load_k(blk: u32, c: u32) -> vec2<f32> {
    let w = pair_words(blk, c);
    return unpack_pair(k_cache[w.x], k_cache[w.y], c);
}

fn load_v(blk: u32, c: u32) -> vec2<f32> {
    let w = pair_words(blk, c);
    return unpack_pair(v_cache[w.x], v_cache[w.y], c);
}

// The words of a pair: (packed halves, unused) with f16, else the two f32 bit patterns.
fn pack_pair(v: vec2<f32>) -> vec2<u32> {
    if (KV == 1u) {
        return vec2<u32>(f16_bits(v.x) | (f16_bits(v.y) << 16u), 0u);
    }
    return bitcast<vec2<u32>>(v);
}

// Pair p of the [max_seqs, max_pos, d/2] pairs of an f32 or f16 cache.
fn store_k(p: u32, v: vec2<f32>) {
    let w = pack_pair(v);
    if (KV == 1u) {
        k_cache[p] = w.x;
    } else {
        k_cache[2u * p] = w.x;
        k_cache[2u * p + 1u] = w.y;
    }
}

fn store_v(p: u32, v: vec2<f32>) {
    let w = pack_pair(v);
    if (KV == 1u) {
        v_cache[p] = w.x;
    } else {
        v_cache[2u * p] = w.x;
        v_cache[2u * p + 1u] = w.y;
    }
}

@compute @workgroup_size(EW_WG)
fn kv_write(@builtin(local_invocation_index) t: u32,
            @builtin(workgroup_id) wid: vec3<u32>) {
    let d2 = params.kv_heads * (HD / 2u);                   // pairs per k or v row
    let e = (wid.y * params.tiles_x + wid.x) * EW_WG + t;   // pair of the [rows, d/2] batch
    if (e >= params.rows * d2) {
        return;
    }
    let r = e / d2;
    let seq = row_table[2u * r];
    let pos = row_table[2u * r + 1u];
    // The host checks its copy of the rows; a table that disagrees must still not write
    // outside the cache (an out-of-range write could land anywhere in the buffer).
    if (seq >= params.max_seqs || pos >= params.max_pos) {
        return;
    }
    let dst = (seq * params.max_pos + pos) * d2 + e % d2;
    let src = r * params.src_stride + e % d2;
    store_k(dst, k_rows[src + params.src_off]);
    store_v(dst, v_rows[src + params.src_off2]);
}

// ---- kv_quant ----------------------------------------------------------------------------

// Row r of the HM x HM mix of a column u: sum_c H_HM[r][c] u[c] in the order c = 0, 1, ...
fn rot_mix(u: ptr<function, array<f32, MAX_HM>>, r: u32) -> f32 {
    var acc = 0.0;
    for (var c = 0u; c < HM; c++) {
        let w = r * ((HM + 31u) / 32u) + c / 32u;
        let negative = ((rot_signs[w / 4u][w % 4u] >> (c % 32u)) & 1u) == 1u;
        acc += select((*u)[c], -(*u)[c], negative);
    }
    return acc;
}

// In-place unnormalized Walsh-Hadamard transform of x[0..HD], HD = HM * HP: stages of
// half-width h = 1, 2, 4, ... < HP, butterfly b of a stage on i = (b / h) 2h + b % h and
// i + h (pairs stay inside chunks of HP), then with HM > 1 the HM x HM mix of each
// position across chunks, summed in the order c = 0, 1, ... The arithmetic of
// hadamard::cpu::fwht (which the host's KvFormat::encode_head uses), so both produce the
// same bits.
fn fwht(x: ptr<function, array<f32, MAX_HD>>) {
    for (var h = 1u; h < HD / HM; h *= 2u) {
        for (var b = 0u; b < HD / 2u; b++) {
            let i = (b / h) * 2u * h + b % h;
            let a = (*x)[i];
            let c = (*x)[i + h];
            (*x)[i] = a + c;
            (*x)[i + h] = a - c;
        }
    }
    if (HM > 1u) {
        let hp = HD / HM;
        var u: array<f32, MAX_HM>;
        for (var ip = 0u; ip < hp; ip++) {
            for (var c = 0u; c < HM; c++) {
                u[c] = (*x)[c * hp + ip];
            }
            for (var r = 0u; r < HM; r++) {
                (*x)[r * hp + ip] = rot_mix(&u, r);
            }
        }
    }
}

// The level of v against scale: round to nearest, ties to even (WGSL's round), 0 when the
// scale is 0 (an all-zero head); as `level` in src/ops/attention/cache.rs.
fn quantize(v: f32, scale: f32, max_level: i32) -> i32 {
    if (scale > 0.0) {
        return clamp(i32(round(v / scale)), -max_level, max_level);
    }
    return 0;
}

// Quantizes head x (rotated first with KV_ROT) and writes its block at word `base` of the
// k or v cache: the scale word, then the packed levels.
fn pack_head(x: ptr<function, array<f32, MAX_HD>>, is_v: bool, base: u32) {
    if (KV_ROT) {
        fwht(x);
        for (var i = 0u; i < HD; i++) {
            (*x)[i] *= params.rot_norm;
        }
    }
    var amax = 0.0;
    for (var i = 0u; i < HD; i++) {
        amax = max(amax, abs((*x)[i]));
    }
    let scale = amax * params.level_inv;
    let max_level = select(7, 127, KV == 2u);
    let b = kv_bits();
    let per_word = 32u / b;
    let n = head_words() - 1u;
    for (var j = 0u; j <= n; j++) {
        var w = bitcast<u32>(scale);
        if (j > 0u) {
            w = 0u;
            for (var i = 0u; i < per_word; i++) {
                let at = (j - 1u) * per_word + i;
                var l = 0;
                if (at < HD) {
                    l = quantize((*x)[at], scale, max_level);
                }
                // q8: the two's-complement byte; q4: level + 8.
                let bits = select(u32(l + 8), bitcast<u32>(l) & 0xffu, KV == 2u);
                w |= bits << (i * b);
            }
        }
        if (is_v) {
            v_cache[base + j] = w;
        } else {
            k_cache[base + j] = w;
        }
    }
}


@compute @workgroup_size(EW_WG)
fn kv_quant(@builtin(local_invocation_index) t: u32,
            @builtin(workgroup_id) wid: vec3<u32>) {
    let e = (wid.y * params.tiles_x + wid.x) * EW_WG + t;   // (row, KV head, k or v)
    if (e >= params.rows * params.kv_heads * 2u) {
        return;
    }
    let is_v = e % 2u == 1u;
    let head = (e / 2u) % params.kv_heads;
    let r = e / (2u * params.kv_heads);
    let seq = row_table[2u * r];
    let pos = row_table[2u * r + 1u];
    if (seq >= params.max_seqs || pos >= params.max_pos) {
        return;  // as in kv_write
    }
    let h2 = HD / 2u;
    let src = r * params.src_stride + head * h2;
    var x: array<f32, MAX_HD>;
    for (var c = 0u; c < h2; c++) {
        var p: vec2<f32>;
        if (is_v) {
            p = v_rows[src + params.src_off2 + c];
        } else {
            p = k_rows[src + params.src_off + c];
        }
        x[2u * c] = p.x;
        x[2u * c + 1u] = p.y;
    }
    pack_head(&x, is_v, head_block(seq, pos, head) * head_words());
}

// ---- attend ------------------------------------------------------------------------------

// f32 offsets in `tile` of the key block, the value block and the scores (Q's rows are at
// 0). A key row is padded by one f32: the invocations scoring a block, one key each, then
// read their rows on distinct banks, where a stride of HD f32s (a multiple of 32 at the
// usual head dims) put every invocation on one bank. With DIRECT the K and V blocks are
// empty. Must match AttnTile::floats.
fn k_block() -> u32 {
    return TQ * HD;
}

// Keys staged per block: none with DIRECT.
fn staged_keys() -> u32 {
    return select(TK, 0u, DIRECT);
}

// f32 offset of key `j`'s row in the key block.
fn k_row(j: u32) -> u32 {
    return k_block() + j * (HD + 1u);
}

fn v_block() -> u32 {
    return k_row(staged_keys());
}

fn s_block() -> u32 {
    return v_block() + staged_keys() * HD;
}

// The two f32s at f32 offset `at` of the tile, and the pair of Q's rows at `pair`.
fn tile_at(at: u32) -> vec2<f32> {
    return vec2<f32>(tile[at], tile[at + 1u]);
}

fn set_tile_at(at: u32, v: vec2<f32>) {
    tile[at] = v.x;
    tile[at + 1u] = v.y;
}

fn tile2(pair: u32) -> vec2<f32> {
    return tile_at(2u * pair);
}

fn set_tile2(pair: u32, v: vec2<f32>) {
    set_tile_at(2u * pair, v);
}

// Rotates the TQ rows of HD values at the start of `tile` by H (unnormalized; the caller
// applies rot_norm), every invocation taking a share of each stage's butterflies, then
// with HM > 1 whole columns (row, position) of the mix, in the order of `fwht`. Called
// from uniform control flow; it starts with a barrier, so writes to the rows before it
// are visible, and ends with one.
fn rotate_tile_rows(t: u32) {
    let h2 = HD / 2u;
    let hp = HD / HM;
    for (var h = 1u; h < hp; h *= 2u) {
        workgroupBarrier();
        for (var x = t; x < TQ * h2; x += WG) {
            let b = x % h2;
            let i = (x / h2) * HD + (b / h) * 2u * h + b % h;
            let a = tile[i];
            let c = tile[i + h];
            tile[i] = a + c;
            tile[i + h] = a - c;
        }
    }
    workgroupBarrier();
    if (HM > 1u) {
        // Each column is read and written by one invocation: in place.
        for (var x = t; x < TQ * hp; x += WG) {
            let base = (x / hp) * HD + x % hp;
            var u: array<f32, MAX_HM>;
            for (var c = 0u; c < HM; c++) {
                u[c] = tile[base + c * hp];
            }
            for (var r = 0u; r < HM; r++) {
                tile[base + r * hp] = rot_mix(&u, r);
            }
        }
        workgroupBarrier();
    }
}

// Decode (one row per tile) splits a row's invocations into KG groups of group_lanes()
// lanes, group g folding keys g, g + KG, ... of each block into a softmax state of its own;
// the states are combined once after the last block (as `reduce` combines chunks). Staged
// (a GPU), lanes of one pair each (ACC = 1): 2 groups of 32 at HD 64 where one group of 64
// left half idle. The host (AttnTile::key_groups) keeps KG x group_lanes() <= WG and
// KG <= TK. Without key groups (prefill, decode at HD >= 128 staged, and DIRECT) the
// row's lanes are one group. DIRECT (decode on a CPU adapter, AttnTile::direct_decode): a
// workgroup of one SIMD width (8 lanes of several pairs each; 16 at HD 256), whose K and
// V values are each read from the cache by the one invocation that uses it, the key's
// score or the pair's fold, instead of staged in the tile: nothing shares them in decode,
// and a CPU adapter pays for the copy and its barrier (a GPU keeps the staged, coalesced
// loads), and for every further SIMD slice of a workgroup, run one after another on its
// thread.
fn group_lanes() -> u32 {
    return select(WG / TQ, (HD / 2u + ACC - 1u) / ACC, KG > 1u);
}

// Positions past the cache are clamped: a bad table yields wrong rows, never a runaway loop.
fn row_pos(row: u32) -> u32 {
    return min(row_table[2u * row + 1u], params.max_pos - 1u);
}

// FUSE: value j of the head at pair `off` of row `row` of q (the fused q | k | v rows).
fn head_value(row: u32, off: u32, j: u32) -> f32 {
    let p = q[row * params.src_stride + off + j / 2u];
    return select(p.x, p.y, (j & 1u) == 1u);
}

// FUSE: the rotation pair (i, i + HD/2) of that head after RoPE at the row's position, in
// rope.wgsl's arithmetic.
fn roped(row: u32, off: u32, i: u32) -> vec2<f32> {
    let a = head_value(row, off, i);
    let b = head_value(row, off, i + HD / 2u);
    let cs = cos_sin[row_pos(row) * params.rope_half + i];
    return vec2<f32>(a * cs.x - b * cs.y, b * cs.x + a * cs.y);
}

// FUSE: writes the key (after RoPE) and value of KV head `head` of each row of the tile whose
// position lies in the chunk starting at k_begin, staged in the 2 * HD f32s after Q (free
// until the key loop; every tile has them, AttnTile::floats). Called from uniform control
// flow; ends with a storage barrier, so the key loop reads what was written.
fn fused_kv_write(t: u32, first: u32, count: u32, head: u32, k_begin: u32) {
    let h2 = HD / 2u;
    let kb = k_block();
    let vb = kb + HD;
    for (var qi = 0u; qi < count; qi++) {
        let row = first + qi;
        let seq = row_table[2u * row];
        let pos = row_table[2u * row + 1u];
        // As kv_write: a table that disagrees with the cache writes nothing.
        if (seq >= params.max_seqs || pos >= params.max_pos || pos < k_begin
            || pos - k_begin >= params.chunk_len) {
            continue;
        }
        workgroupBarrier();  // an earlier row's block has been written out
        for (var c = t; c < h2; c += WG) {
            let k = roped(row, params.k_off + head * h2, c);
            tile[kb + c] = k.x;
            tile[kb + c + h2] = k.y;
            let v = q[row * params.src_stride + params.src_off2 + head * h2 + c];
            tile[vb + 2u * c] = v.x;
            tile[vb + 2u * c + 1u] = v.y;
        }
        workgroupBarrier();
        let blk = head_block(seq, pos, head);
        if (KV >= 2u) {
            // One invocation per head, as kv_quant.
            if (t < 2u) {
                var x: array<f32, MAX_HD>;
                let src = select(kb, vb, t == 1u);
                for (var j = 0u; j < HD; j++) {
                    x[j] = tile[src + j];
                }
                pack_head(&x, t == 1u, blk * head_words());
            }
        } else {
            for (var c = t; c < h2; c += WG) {
                store_k(blk * h2 + c, vec2<f32>(tile[kb + 2u * c], tile[kb + 2u * c + 1u]));
                store_v(blk * h2 + c, vec2<f32>(tile[vb + 2u * c], tile[vb + 2u * c + 1u]));
            }
        }
    }
    storageBarrier();
}

// The work of an attend (attend_rows) workgroup: its head, the KV head that head reads, its
// key chunk, and its query tile: rows first .. first + count of sequence seq, which need
// keys 0 .. n_keys (up to the row at the largest position); not valid past the last tile.
// Derived from the workgroup id, the uniform params and read-only storage, so uniform.
struct AttendGroup {
    valid: bool,
    head: u32,
    kv_head: u32,
    chunk: u32,
    first: u32,
    count: u32,
    seq: u32,
    n_keys: u32,
}

fn attend_group(wid: vec3<u32>) -> AttendGroup {
    var g: AttendGroup;
    let wg = wid.y * params.tiles_x + wid.x;
    g.head = wg % params.heads;
    g.kv_head = g.head / (params.heads / params.kv_heads);  // its group's KV head
    g.chunk = (wg / params.heads) % params.chunks;
    let tile_id = wg / (params.heads * params.chunks);
    g.valid = tile_id < params.tiles;
    if (!g.valid) {
        return g;
    }
    g.first = plan[2u * tile_id];
    g.count = min(plan[2u * tile_id + 1u], TQ);
    g.seq = row_table[2u * g.first];
    for (var i = 0u; i < g.count; i++) {
        g.n_keys = max(g.n_keys, row_pos(g.first + i) + 1u);
    }
    return g;
}

@compute @workgroup_size(WG)
fn attend(@builtin(local_invocation_index) t: u32,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let h2 = HD / 2u;                 // pairs per head
    let d2 = params.heads * h2;       // pairs per row
    let v_at = v_block();  // f32 offsets in `tile` (keys: k_row)
    let s_at = s_block();

    // Everything up to the key loop derives from the workgroup id, the uniform params and
    // read-only storage, so it is uniform: the early returns keep barriers uniform.
    let group = attend_group(wid);
    if (!group.valid) {
        return;
    }
    let head = group.head;
    let kv_head = group.kv_head;
    let chunk = group.chunk;
    let first = group.first;
    let count = group.count;
    let seq = group.seq;
    let n_keys = group.n_keys;
    let k_begin = chunk * params.chunk_len;
    let k_end = min(k_begin + params.chunk_len, n_keys);
    if (k_begin >= k_end) {
        return;
    }

    // This invocation's query row, key group and the output pairs of that row it
    // accumulates: lanes_per_row invocations share a row, in KG groups of lg lanes (one
    // group of lanes_per_row without key groups), lane pl of group g taking pairs pl,
    // pl + lg, ... (ACC of them).
    let lanes_per_row = WG / TQ;
    let i = t / lanes_per_row;
    let lane = t % lanes_per_row;
    let groups = KG;
    let lg = group_lanes();
    let g = lane / lg;
    let pl = lane - g * lg;
    let row_ok = i < count;
    let in_group = row_ok && g < groups;
    let row = first + i;
    var pos = 0u;
    if (row_ok) {
        pos = row_pos(row);
    }

    // With KV_ROT the rotation's normalization goes with the softmax scale.
    let q_scale = select(params.scale, params.scale * params.rot_norm, KV_ROT);
    if (FUSE) {
        // Invocation x takes the rotation pair (i, i + HD/2) of query row qi.
        for (var x = t; x < TQ * h2; x += WG) {
            let qi = x / h2;
            let c = x % h2;
            var v = vec2<f32>(0.0);
            if (qi < count) {
                v = roped(first + qi, params.src_off + head * h2, c) * q_scale;
            }
            tile[qi * HD + c] = v.x;
            tile[qi * HD + c + h2] = v.y;
        }
        fused_kv_write(t, first, count, kv_head, k_begin);
    } else {
        for (var x = t; x < TQ * h2; x += WG) {
            let qi = x / h2;
            var v = vec2<f32>(0.0);
            if (qi < count) {
                v = q[(first + qi) * params.src_stride + params.src_off + head * h2 + x % h2]
                    * q_scale;
            }
            set_tile2(x, v);
        }
    }
    if (KV_ROT) {
        rotate_tile_rows(t);  // the key loop's first barrier follows
    }

    // Online softmax state of this invocation's row: running max m, sum l of exp(s - m),
    // and acc = sum of exp(s - m) * v over this invocation's pairs.
    var m = NEG_BIG;
    var l = 0.0;
    var acc: array<vec2<f32>, MAX_ACC>;
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        let nb = min(TK, k_end - k0);
        // The previous block has been consumed (on the first pass: Q is stored).
        workgroupBarrier();
        if (!DIRECT) {
            for (var x = t; x < nb * h2; x += WG) {
                let blk = head_block(seq, k0 + x / h2, kv_head);
                set_tile_at(k_row(x / h2) + 2u * (x % h2), load_k(blk, x % h2));
                set_tile_at(v_at + 2u * x, load_v(blk, x % h2));
            }
            workgroupBarrier();
        }
        // Scores of every (query, key) pair of the block: s = (q * scale) . k.
        for (var x = t; x < TQ * TK; x += WG) {
            let qi = x / TK;
            let j = x % TK;
            if (j < nb) {
                var s = 0.0;
                if (DIRECT) {
                    let blk = head_block(seq, k0 + j, kv_head);
                    for (var c = 0u; c < h2; c++) {
                        s += dot(tile2(c), load_k(blk, c));
                    }
                } else {
                    let key = k_row(j);
                    for (var c = 0u; c < h2; c++) {
                        s += dot(tile2(qi * h2 + c), tile_at(key + 2u * c));
                    }
                }
                tile[s_at + x] = s;
            }
        }
        workgroupBarrier();
        // Fold the group's keys of k0..=pos of this block into its state (causal mask).
        if (in_group && pos >= k0) {
            let jn = min(nb, pos - k0 + 1u);
            let srow = s_at + i * TK;
            var mb = m;
            for (var j = g; j < jn; j += groups) {
                mb = max(mb, tile[srow + j]);
            }
            let alpha = exp(m - mb);
            l *= alpha;
            for (var a = 0u; a < ACC; a++) {
                acc[a] *= alpha;
            }
            for (var j = g; j < jn; j += groups) {
                let p = exp(tile[srow + j] - mb);
                l += p;
                let blk = head_block(seq, k0 + j, kv_head);  // DIRECT
                for (var a = 0u; a < ACC; a++) {
                    let c = pl + a * lg;
                    if (c < h2) {
                        if (DIRECT) {
                            acc[a] += p * load_v(blk, c);
                        } else {
                            acc[a] += p * tile_at(v_at + 2u * (j * h2 + c));
                        }
                    }
                }
            }
            m = mb;
        }
    }

    // With key groups, group 0 takes the others' states: each group's (acc, (m, l)) at
    // k_block + g * (HD + 2) (the blocks are spent; KG <= TK keeps them within the K, V
    // and score blocks, and the host sizes DIRECT's tile for them), weighted by
    // exp(m_g - max). Group 0 folded key 0 of the chunk, so its max is finite and an empty
    // group weighs 0.
    if (groups > 1u) {
        let gb = k_block();
        workgroupBarrier();  // every invocation is done with the last block
        if (in_group) {
            let at = gb + g * (HD + 2u);
            for (var a = 0u; a < ACC; a++) {
                let c = pl + a * lg;
                if (c < h2) {
                    set_tile_at(at + 2u * c, acc[a]);
                }
            }
            if (pl == 0u) {
                set_tile_at(at + HD, vec2<f32>(m, l));
            }
        }
        workgroupBarrier();
        if (in_group && g == 0u) {
            var mx = NEG_BIG;
            for (var k = 0u; k < groups; k++) {
                mx = max(mx, tile[gb + k * (HD + 2u) + HD]);
            }
            var lk = 0.0;
            for (var a = 0u; a < ACC; a++) {
                acc[a] = vec2<f32>(0.0);
            }
            for (var k = 0u; k < groups; k++) {
                let at = gb + k * (HD + 2u);
                let ml = tile_at(at + HD);
                let w = exp(ml.x - mx);
                lk += w * ml.y;
                for (var a = 0u; a < ACC; a++) {
                    let c = pl + a * lg;
                    if (c < h2) {
                        acc[a] += w * tile_at(at + 2u * c);
                    }
                }
            }
            m = mx;
            l = lk;
        }
    }
    // The invocations that write the row's result: group 0's.
    let writer = row_ok && g == 0u;

    // The result: acc / l, or the chunk's acc with PARTIAL; with KV_ROT rotated back in
    // the Q rows of the tile (free now) before it is written.
    var div = l;  // what the written acc is divided by without PARTIAL
    if (KV_ROT) {
        workgroupBarrier();  // every invocation is done with the last block
        if (writer) {
            for (var a = 0u; a < ACC; a++) {
                let c = pl + a * lg;
                if (c < h2) {
                    set_tile2(i * h2 + c, select(acc[a] / l, acc[a], PARTIAL));
                }
            }
        }
        rotate_tile_rows(t);
        for (var a = 0u; a < ACC; a++) {
            let c = pl + a * lg;
            if (writer && c < h2) {
                acc[a] = tile2(i * h2 + c) * params.rot_norm;
            }
        }
        div = 1.0;  // acc holds the result (PARTIAL: the rotated acc, and l is written)
    }
    if (!writer) {
        return;
    }
    if (PARTIAL) {
        let part = (row * params.heads + head) * params.chunks + chunk;
        for (var a = 0u; a < ACC; a++) {
            let c = pl + a * lg;
            if (c < h2) {
                parts[part * h2 + c] = acc[a];
            }
        }
        if (pl == 0u) {
            parts[params.rows * params.heads * params.chunks * h2 + part] = vec2<f32>(m, l);
        }
    } else {
        for (var a = 0u; a < ACC; a++) {
            let c = pl + a * lg;
            if (c < h2) {
                out[row * d2 + head * h2 + c] = acc[a] / div;
            }
        }
    }
}

// ---- attend_rows: prefill on lavapipe and llvmpipe (Gpu::favours_registers) ---------------

// One workgroup per (query tile, head), as attend without key chunks. Invocation t takes
// LANE_ROWS consecutive rows of the tile, from LANE_ROWS * (t % (TQ / LANE_ROWS)), and
// slice sl = t / (TQ / LANE_ROWS) of its head, the pairs from sl * ACC, ACC of them
// (AttnTile::direct_prefill on the host: WG * LANE_ROWS / TQ slices cover HD / 2). Q's
// slices of its rows and the output's stay in registers (ACC pairs a row, at most
// MAX_ROW_ACC, the pair loops written out: slice_scores, fold_slice), and each key and
// value word it reads from the cache serves its LANE_ROWS rows: a CPU adapter loads a SIMD
// lane's words one lane at a time, so the loads per (row, key) fall by LANE_ROWS (attend's
// score loop read Q and K from workgroup memory for every pair, which on a CPU adapter
// costs as much as any other memory). For each block of TK keys every invocation scores
// its slice against every key of the block; the slices' partial scores are summed
// (invocation (i, sl) sums keys sl, sl + slices, ... of its rows); then each invocation
// folds the block into its rows' softmax states and slices of acc, reading V from the
// cache. The tile holds the partial scores [slices, TK, TQ] (the sums in slice 0's place),
// and with KV_ROT Q's rows and the output's for the rotation, as attend:
// AttnTile::direct_prefill.

// Rows of the tile one attend_rows invocation takes; must match LANE_ROWS in
// src/ops/attention/attend.rs. They are two quads of four rows (Quad, Rows4: vec4s of the
// four rows' states), written out: an array of rows indexed in a loop would stay in memory.
const LANE_ROWS: u32 = 8u;

// A row's slice of Q or of the output.
alias RowSlice = array<vec2<f32>, MAX_ROW_ACC>;

// A quad's four slices of Q or of the output.
struct Rows4 {
    r0: RowSlice,
    r1: RowSlice,
    r2: RowSlice,
    r3: RowSlice,
}

// Four consecutive rows of the tile from row i: which the tile has, their positions (idle
// rows repeat the last row's), and their online softmax states: running max m, sum l of
// exp(s - m) (acc, the sum of exp(s - m) * v over the invocation's pairs, is a Rows4).
struct Quad {
    i: u32,
    ok: vec4<bool>,
    pos: vec4<u32>,
    m: vec4<f32>,
    l: vec4<f32>,
}

// Both quads' scores, or weights p, of one key.
struct Pair4s {
    a: vec4<f32>,
    b: vec4<f32>,
}

// f32 offset in the tile of slice sl's partial score of key j for tile row i.
fn rows_at(sl: u32, j: u32, i: u32) -> u32 {
    return (sl * TK + j) * TQ + i;
}

// The partial scores of key j for tile rows i .. i + 3.
fn rows_scores(sl: u32, j: u32, i: u32) -> vec4<f32> {
    let at = rows_at(sl, j, i);
    return vec4<f32>(tile[at], tile[at + 1u], tile[at + 2u], tile[at + 3u]);
}

fn set_rows_scores(sl: u32, j: u32, i: u32, s: vec4<f32>) {
    let at = rows_at(sl, j, i);
    tile[at] = s.x;
    tile[at + 1u] = s.y;
    tile[at + 2u] = s.z;
    tile[at + 3u] = s.w;
}

// The sum over the slices of key j's partial scores for tile rows i .. i + 3.
fn summed_scores(j: u32, i: u32, slices: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    for (var k = 0u; k < slices; k++) {
        s += rows_scores(k, j, i);
    }
    return s;
}

// The row of the tile's row i that attend_rows reads: idle rows repeat the last (unwritten).
fn tile_row(group: AttendGroup, i: u32) -> u32 {
    return group.first + min(i, group.count - 1u);
}

fn quad_at(group: AttendGroup, i: u32) -> Quad {
    let pos = vec4<u32>(row_pos(tile_row(group, i)), row_pos(tile_row(group, i + 1u)),
        row_pos(tile_row(group, i + 2u)), row_pos(tile_row(group, i + 3u)));
    let ok = vec4<u32>(i, i + 1u, i + 2u, i + 3u) < vec4<u32>(group.count);
    return Quad(i, ok, pos, vec4<f32>(NEG_BIG), vec4<f32>(0.0));
}

// Whether key k of the block from k0 counts for each row of the quad (causal mask; idle
// rows take none).
fn quad_takes(quad: Quad, k: u32) -> vec4<bool> {
    return quad.ok & (vec4<u32>(k) <= quad.pos);
}

// How many keys of the block from k0 (nb of them) the quad's rows take at most.
fn quad_keys(quad: Quad, k0: u32, nb: u32) -> u32 {
    // 0 where a row takes none (a select of integer vectors needs an extension in GLSL).
    let live = vec4<u32>(quad.ok & (quad.pos >= vec4<u32>(k0)));
    let last = live * (quad.pos - vec4<u32>(k0) + 1u);
    return min(nb, max(max(last.x, last.y), max(last.z, last.w)));
}

// The quad's running max over the block's first jn keys from k0, its sums and acc rescaled
// to it (as attend's fold: acc *= exp(m - mb)).
fn rescale(quad: ptr<function, Quad>, acc: ptr<function, Rows4>, k0: u32, jn: u32) {
    var mb = (*quad).m;
    for (var j = 0u; j < jn; j++) {
        mb = select(mb, max(mb, rows_scores(0u, j, (*quad).i)), quad_takes(*quad, k0 + j));
    }
    let alpha = exp((*quad).m - mb);
    (*quad).l *= alpha;
    for (var a = 0u; a < ACC; a++) {
        (*acc).r0[a] *= alpha.x;
        (*acc).r1[a] *= alpha.y;
        (*acc).r2[a] *= alpha.z;
        (*acc).r3[a] *= alpha.w;
    }
    (*quad).m = mb;
}

// exp(s - m) of key j of the block from k0 for the quad's rows (0 for keys a row does not
// take), added to their sums.
fn key_weights(quad: ptr<function, Quad>, k0: u32, j: u32) -> vec4<f32> {
    let s = rows_scores(0u, j, (*quad).i);
    let p = select(vec4<f32>(0.0), exp(s - (*quad).m), quad_takes(*quad, k0 + j));
    (*quad).l += p;
    return p;
}

// Slice sl of Q's tile row i, scaled (with KV_ROT: rotated, from the tile's first TQ rows).
fn q_slice(group: AttendGroup, i: u32, sl: u32, q_scale: f32) -> RowSlice {
    let h2 = HD / 2u;
    let row = tile_row(group, i);
    var qs: RowSlice;
    for (var a = 0u; a < ACC; a++) {
        let c = sl * ACC + a;
        if (c < h2) {
            if (KV_ROT) {
                qs[a] = tile2(i * h2 + c);
            } else {
                qs[a] = q[row * params.src_stride + params.src_off + group.head * h2 + c]
                    * q_scale;
            }
        }
    }
    return qs;
}

fn q_slices(group: AttendGroup, i: u32, sl: u32, q_scale: f32) -> Rows4 {
    return Rows4(q_slice(group, i, sl, q_scale), q_slice(group, i + 1u, sl, q_scale),
        q_slice(group, i + 2u, sl, q_scale), q_slice(group, i + 3u, sl, q_scale));
}

// The four rows' dot products with key pair k at pair a of their slices.
fn pair_dots(qs: ptr<function, Rows4>, a: u32, k: vec2<f32>) -> vec4<f32> {
    return vec4<f32>(dot((*qs).r0[a], k), dot((*qs).r1[a], k), dot((*qs).r2[a], k),
        dot((*qs).r3[a], k));
}

// Both quads' scores s plus their dot products with pair a of the slice from pair c0 of key
// block `blk`; s past the slice. A constant a (below) keeps the rows' arrays in registers.
fn pair_scores(s: Pair4s, qa: ptr<function, Rows4>, qb: ptr<function, Rows4>, a: u32,
               c0: u32, blk: u32) -> Pair4s {
    if (a >= ACC || c0 + a >= HD / 2u) {
        return s;
    }
    let k = load_k(blk, c0 + a);
    return Pair4s(s.a + pair_dots(qa, a, k), s.b + pair_dots(qb, a, k));
}

// Both quads' dot products with the slice of key block `blk` from pair c0, pair by pair in
// order. The MAX_ROW_ACC pairs are written out: as a loop (four rows' work a pair) Mesa
// kept it a loop and the rows' arrays in memory, and attention took 5x one row's time;
// slices of at most 8 pairs, whose loops it unrolls, took 1.1-1.4x this.
fn slice_scores(qa: ptr<function, Rows4>, qb: ptr<function, Rows4>, c0: u32,
                blk: u32) -> Pair4s {
    var s = Pair4s(vec4<f32>(0.0), vec4<f32>(0.0));
    s = pair_scores(s, qa, qb, 0u, c0, blk);
    s = pair_scores(s, qa, qb, 1u, c0, blk);
    s = pair_scores(s, qa, qb, 2u, c0, blk);
    s = pair_scores(s, qa, qb, 3u, c0, blk);
    s = pair_scores(s, qa, qb, 4u, c0, blk);
    s = pair_scores(s, qa, qb, 5u, c0, blk);
    s = pair_scores(s, qa, qb, 6u, c0, blk);
    s = pair_scores(s, qa, qb, 7u, c0, blk);
    s = pair_scores(s, qa, qb, 8u, c0, blk);
    s = pair_scores(s, qa, qb, 9u, c0, blk);
    s = pair_scores(s, qa, qb, 10u, c0, blk);
    s = pair_scores(s, qa, qb, 11u, c0, blk);
    s = pair_scores(s, qa, qb, 12u, c0, blk);
    s = pair_scores(s, qa, qb, 13u, c0, blk);
    s = pair_scores(s, qa, qb, 14u, c0, blk);
    s = pair_scores(s, qa, qb, 15u, c0, blk);
    return s;
}

// acc += p * v, row by row, for value pair v at pair a of the slices.
fn fold_rows(acc: ptr<function, Rows4>, a: u32, p: vec4<f32>, v: vec2<f32>) {
    (*acc).r0[a] += p.x * v;
    (*acc).r1[a] += p.y * v;
    (*acc).r2[a] += p.z * v;
    (*acc).r3[a] += p.w * v;
}

// Both quads' acc += p * v for pair a of the slice from pair c0 of value block `blk`.
fn fold_pair(acc_a: ptr<function, Rows4>, acc_b: ptr<function, Rows4>, a: u32, c0: u32,
             blk: u32, p: Pair4s) {
    if (a >= ACC || c0 + a >= HD / 2u) {
        return;
    }
    let v = load_v(blk, c0 + a);
    fold_rows(acc_a, a, p.a, v);
    fold_rows(acc_b, a, p.b, v);
}

// The same for the whole slice, written out as slice_scores.
fn fold_slice(acc_a: ptr<function, Rows4>, acc_b: ptr<function, Rows4>, c0: u32, blk: u32,
              p: Pair4s) {
    fold_pair(acc_a, acc_b, 0u, c0, blk, p);
    fold_pair(acc_a, acc_b, 1u, c0, blk, p);
    fold_pair(acc_a, acc_b, 2u, c0, blk, p);
    fold_pair(acc_a, acc_b, 3u, c0, blk, p);
    fold_pair(acc_a, acc_b, 4u, c0, blk, p);
    fold_pair(acc_a, acc_b, 5u, c0, blk, p);
    fold_pair(acc_a, acc_b, 6u, c0, blk, p);
    fold_pair(acc_a, acc_b, 7u, c0, blk, p);
    fold_pair(acc_a, acc_b, 8u, c0, blk, p);
    fold_pair(acc_a, acc_b, 9u, c0, blk, p);
    fold_pair(acc_a, acc_b, 10u, c0, blk, p);
    fold_pair(acc_a, acc_b, 11u, c0, blk, p);
    fold_pair(acc_a, acc_b, 12u, c0, blk, p);
    fold_pair(acc_a, acc_b, 13u, c0, blk, p);
    fold_pair(acc_a, acc_b, 14u, c0, blk, p);
    fold_pair(acc_a, acc_b, 15u, c0, blk, p);
}

// acc /= l, row by row.
fn divide_rows(quad: Quad, acc: ptr<function, Rows4>) {
    for (var a = 0u; a < ACC; a++) {
        (*acc).r0[a] /= quad.l.x;
        (*acc).r1[a] /= quad.l.y;
        (*acc).r2[a] /= quad.l.z;
        (*acc).r3[a] /= quad.l.w;
    }
}

// KV_ROT: slice sl of tile row i into the tile's first TQ rows, and back after the rotation.
fn put_slice(i: u32, sl: u32, acc: RowSlice) {
    let h2 = HD / 2u;
    for (var a = 0u; a < ACC; a++) {
        let c = sl * ACC + a;
        if (c < h2) {
            set_tile2(i * h2 + c, acc[a]);
        }
    }
}

fn put_slices(i: u32, sl: u32, acc: Rows4) {
    put_slice(i, sl, acc.r0);
    put_slice(i + 1u, sl, acc.r1);
    put_slice(i + 2u, sl, acc.r2);
    put_slice(i + 3u, sl, acc.r3);
}

fn rotated_slice(i: u32, sl: u32) -> RowSlice {
    let h2 = HD / 2u;
    var acc: RowSlice;
    for (var a = 0u; a < ACC; a++) {
        let c = sl * ACC + a;
        if (c < h2) {
            acc[a] = tile2(i * h2 + c) * params.rot_norm;
        }
    }
    return acc;
}

fn rotated_slices(i: u32, sl: u32) -> Rows4 {
    return Rows4(rotated_slice(i, sl), rotated_slice(i + 1u, sl), rotated_slice(i + 2u, sl),
        rotated_slice(i + 3u, sl));
}

// Slice sl of output row i of the tile, if the tile has it.
fn write_slice(group: AttendGroup, i: u32, sl: u32, acc: RowSlice) {
    if (i >= group.count) {
        return;
    }
    let h2 = HD / 2u;
    let row = group.first + i;
    for (var a = 0u; a < ACC; a++) {
        let c = sl * ACC + a;
        if (c < h2) {
            out[row * params.heads * h2 + group.head * h2 + c] = acc[a];
        }
    }
}

fn write_slices(group: AttendGroup, i: u32, sl: u32, acc: Rows4) {
    write_slice(group, i, sl, acc.r0);
    write_slice(group, i + 1u, sl, acc.r1);
    write_slice(group, i + 2u, sl, acc.r2);
    write_slice(group, i + 3u, sl, acc.r3);
}

@compute @workgroup_size(WG)
fn attend_rows(@builtin(local_invocation_index) t: u32,
               @builtin(workgroup_id) wid: vec3<u32>) {
    let h2 = HD / 2u;
    let lane_rows = TQ / LANE_ROWS;
    let slices = WG / lane_rows;
    // Uniform up to the key loop, as in attend (one key chunk: the host's Split::whole).
    let group = attend_group(wid);
    if (!group.valid) {
        return;
    }

    // The invocation's rows: quads a and b.
    let i0 = LANE_ROWS * (t % lane_rows);
    let sl = t / lane_rows;
    let c0 = sl * ACC;
    var qa = quad_at(group, i0);
    var qb = quad_at(group, i0 + 4u);

    // Q's slices, scaled (and rotated with KV_ROT, in the tile's first TQ rows of HD).
    let q_scale = select(params.scale, params.scale * params.rot_norm, KV_ROT);
    if (KV_ROT) {
        for (var x = t; x < TQ * h2; x += WG) {
            let r = tile_row(group, x / h2);
            set_tile2(x, q[r * params.src_stride + params.src_off + group.head * h2 + x % h2]
                * q_scale);
        }
        rotate_tile_rows(t);
    }
    var q_a = q_slices(group, qa.i, sl, q_scale);
    var q_b = q_slices(group, qb.i, sl, q_scale);

    var acc_a: Rows4;
    var acc_b: Rows4;
    for (var k0 = 0u; k0 < group.n_keys; k0 += TK) {
        let nb = min(TK, group.n_keys - k0);
        // The previous block's sums have been folded (on the first pass: Q is read).
        workgroupBarrier();
        for (var j = 0u; j < nb; j++) {
            let s = slice_scores(&q_a, &q_b, c0, head_block(group.seq, k0 + j, group.kv_head));
            set_rows_scores(sl, j, qa.i, s.a);
            set_rows_scores(sl, j, qb.i, s.b);
        }
        workgroupBarrier();
        if (slices > 1u) {
            for (var j = sl; j < nb; j += slices) {
                set_rows_scores(0u, j, qa.i, summed_scores(j, qa.i, slices));
                set_rows_scores(0u, j, qb.i, summed_scores(j, qb.i, slices));
            }
            workgroupBarrier();
        }
        // Fold the keys each row takes into its state.
        let jn = max(quad_keys(qa, k0, nb), quad_keys(qb, k0, nb));
        if (jn > 0u) {
            rescale(&qa, &acc_a, k0, jn);
            rescale(&qb, &acc_b, k0, jn);
            for (var j = 0u; j < jn; j++) {
                let p = Pair4s(key_weights(&qa, k0, j), key_weights(&qb, k0, j));
                fold_slice(&acc_a, &acc_b, c0, head_block(group.seq, k0 + j, group.kv_head), p);
            }
        }
    }

    // out = acc / l, with KV_ROT rotated back in the tile's first TQ rows first.
    divide_rows(qa, &acc_a);
    divide_rows(qb, &acc_b);
    if (KV_ROT) {
        workgroupBarrier();  // every invocation is done with the last block
        put_slices(qa.i, sl, acc_a);
        put_slices(qb.i, sl, acc_b);
        rotate_tile_rows(t);
        acc_a = rotated_slices(qa.i, sl);
        acc_b = rotated_slices(qb.i, sl);
    }
    write_slices(group, qa.i, sl, acc_a);
    write_slices(group, qb.i, sl, acc_b);
}

@compute @workgroup_size(EW_WG)
fn reduce(@builtin(local_invocation_index) t: u32,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let h2 = HD / 2u;
    let d2 = params.heads * h2;
    let e = (wid.y * params.tiles_x + wid.x) * EW_WG + t;   // pair of out [rows, d/2]
    if (e >= params.rows * d2) {
        return;
    }
    let row = e / d2;
    let head = (e % d2) / h2;
    let c = e % h2;
    // Chunks past the row's position were skipped by attend and hold nothing.
    let n = min(row_pos(row) / params.chunk_len + 1u, params.chunks);
    let base = (row * params.heads + head) * params.chunks;
    let ml_at = params.rows * params.heads * params.chunks * h2;
    var mx = NEG_BIG;
    for (var ch = 0u; ch < n; ch++) {
        mx = max(mx, parts[ml_at + base + ch].x);
    }
    var l = 0.0;
    var acc = vec2<f32>(0.0);
    for (var ch = 0u; ch < n; ch++) {
        let ml = parts[ml_at + base + ch];
        let w = exp(ml.x - mx);
        l += w * ml.y;
        acc += w * parts[(base + ch) * h2 + c];
    }
    out[e] = acc / l;
}
