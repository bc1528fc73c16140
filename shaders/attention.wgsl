// Causal multi-head attention over a KV cache. Host side: src/ops/attention.rs.
//
// With d = heads * HD (HD = head_dim, even), every f32 tensor is bound as vec2 pairs:
//     out                      [rows, d]                 row r of the batch
//     k_rows, v_rows, q        row r at pair r * src_stride + src_off (k_rows) or
//                              src_off2 (v_rows), d / 2 pairs: column windows of the
//                              decoder's fused [rows, q | k | v] buffer, or whole [rows, d]
//     k_cache, v_cache         [max_seqs, max_pos, d]    the key / value of (seq, pos), as
//                              u32 words: f32 bit patterns, or (KV_F16) two halves per word
//     row_table                [rows, 2] u32             (seq, pos) of row r
//     plan                     [tiles, 2] u32            (first row, row count) of a tile
// Row r attends to keys 0..=pos of its sequence; head h is columns h*HD..(h+1)*HD.
//
// Entry points:
//   kv_write  k_cache[seq][pos] = k_rows[r] and v_cache[seq][pos] = v_rows[r].
//   attend    one workgroup per (query tile, key chunk, head): the TQ rows of a tile (all
//             of one sequence) against the keys of one chunk, in blocks of TK keys staged
//             in workgroup memory, with an online softmax. It writes
//             out = softmax(q k^T * scale) v, or with PARTIAL its chunk's unnormalized
//             state (m, l, acc) to `parts` for `reduce`.
//   reduce    combines the partial states of a row's chunks into out.

// Must match `AttnParams` in src/ops/attention.rs.
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
}

// Workgroup memory in f32s: 16 KiB, the WebGPU default limit. Must match TILE_ELEMS on the
// host, which sizes tiles so that (TQ + 2 * TK) * HD + TQ * TK <= TILE.
const TILE: u32 = 4096u;
// Output pairs one attend invocation holds at most; must match MAX_ACC on the host.
const MAX_ACC: u32 = 8u;
// The running max before the first key: finite, so exp(NEG_BIG - s) is 0 rather than NaN.
const NEG_BIG: f32 = -3.0e38;

// Pipeline constants, all set by the host (src/ops/attention.rs, `AttnTile` and the keys).
override HD: u32 = 64u;          // head_dim
override WG: u32 = 64u;          // attend: invocations per workgroup
override TQ: u32 = 16u;          // attend: query rows per tile; divides WG
override TK: u32 = 16u;          // attend: keys per block
override ACC: u32 = 8u;          // attend: output pairs per invocation, ceil(HD/2 / (WG/TQ))
override PARTIAL: bool = false;  // attend: write chunk states to `parts`, not `out`
override EW_WG: u32 = 256u;      // kv_write, reduce: invocations per workgroup
override KV_F16: bool = false;   // the caches hold f16 pairs, one per u32 word

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> row_table: array<u32>;

// kv_write's bindings. Entry points may reuse binding numbers: wgpu compiles each pipeline
// from its entry point alone.
@group(0) @binding(2) var<storage, read> k_rows: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> v_rows: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> k_cache_out: array<u32>;
@group(0) @binding(5) var<storage, read_write> v_cache_out: array<u32>;

// attend's and reduce's bindings.
@group(0) @binding(2) var<storage, read> plan: array<u32>;
@group(0) @binding(3) var<storage, read> q: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> k_cache: array<u32>;
@group(0) @binding(5) var<storage, read> v_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec2<f32>>;
// Split decode: acc of part p at [p * HD/2, (p + 1) * HD/2), then (m, l) of part p at
// rows * heads * chunks * HD/2 + p, with p = (row * heads + head) * chunks + chunk.
@group(0) @binding(7) var<storage, read_write> parts: array<vec2<f32>>;

// attend's tile, in f32s: Q [TQ, HD] (pre-scaled), K [TK, HD], V [TK, HD], scores [TQ, TK].
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

// Pair p of a cache from its words (storage pointers cannot be function parameters in
// WGSL without an extension, hence the pairs of functions below).
fn unpack_pair(w0: u32, w1: u32) -> vec2<f32> {
    if (KV_F16) {
        return unpack2x16float(w0);
    }
    return vec2<f32>(bitcast<f32>(w0), bitcast<f32>(w1));
}

// Words of pair p: (p, unused) with KV_F16, else (2p, 2p + 1).
fn word(p: u32, i: u32) -> u32 {
    return select(2u * p + i, p, KV_F16);
}

fn load_k(p: u32) -> vec2<f32> {
    return unpack_pair(k_cache[word(p, 0u)], k_cache[word(p, 1u)]);
}

fn load_v(p: u32) -> vec2<f32> {
    return unpack_pair(v_cache[word(p, 0u)], v_cache[word(p, 1u)]);
}

fn store_k(p: u32, v: vec2<f32>) {
    if (KV_F16) {
        k_cache_out[p] = f16_bits(v.x) | (f16_bits(v.y) << 16u);
    } else {
        k_cache_out[2u * p] = bitcast<u32>(v.x);
        k_cache_out[2u * p + 1u] = bitcast<u32>(v.y);
    }
}

fn store_v(p: u32, v: vec2<f32>) {
    if (KV_F16) {
        v_cache_out[p] = f16_bits(v.x) | (f16_bits(v.y) << 16u);
    } else {
        v_cache_out[2u * p] = bitcast<u32>(v.x);
        v_cache_out[2u * p + 1u] = bitcast<u32>(v.y);
    }
}

@compute @workgroup_size(EW_WG)
fn kv_write(@builtin(local_invocation_index) t: u32,
            @builtin(workgroup_id) wid: vec3<u32>) {
    let d2 = params.heads * (HD / 2u);                      // pairs per row
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

fn tile2(pair: u32) -> vec2<f32> {
    return vec2<f32>(tile[2u * pair], tile[2u * pair + 1u]);
}

fn set_tile2(pair: u32, v: vec2<f32>) {
    tile[2u * pair] = v.x;
    tile[2u * pair + 1u] = v.y;
}

// Positions past the cache are clamped: a bad table yields wrong rows, never a runaway loop.
fn row_pos(row: u32) -> u32 {
    return min(row_table[2u * row + 1u], params.max_pos - 1u);
}

@compute @workgroup_size(WG)
fn attend(@builtin(local_invocation_index) t: u32,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let h2 = HD / 2u;                 // pairs per head
    let d2 = params.heads * h2;       // pairs per row
    let k_at = TQ * h2;               // pair offsets of K and V in `tile`
    let v_at = k_at + TK * h2;
    let s_at = 2u * (v_at + TK * h2); // f32 offset of the scores

    // Everything up to the key loop derives from the workgroup id, the uniform params and
    // read-only storage, so it is uniform: the early returns keep barriers uniform.
    let wg = wid.y * params.tiles_x + wid.x;
    let head = wg % params.heads;
    let chunk = (wg / params.heads) % params.chunks;
    let tile_id = wg / (params.heads * params.chunks);
    if (tile_id >= params.tiles) {
        return;
    }
    let first = plan[2u * tile_id];
    let count = min(plan[2u * tile_id + 1u], TQ);
    let seq = row_table[2u * first];
    // The tile needs keys 0..n_keys: up to its row at the largest position.
    var n_keys = 0u;
    for (var i = 0u; i < count; i++) {
        n_keys = max(n_keys, row_pos(first + i) + 1u);
    }
    let k_begin = chunk * params.chunk_len;
    let k_end = min(k_begin + params.chunk_len, n_keys);
    if (k_begin >= k_end) {
        return;
    }

    // This invocation's query row, and the output pairs of that row it accumulates:
    // lanes_per_row invocations share a row, lane takes pairs lane, lane + lanes_per_row, ...
    let lanes_per_row = WG / TQ;
    let i = t / lanes_per_row;
    let lane = t % lanes_per_row;
    let row_ok = i < count;
    let row = first + i;
    var pos = 0u;
    if (row_ok) {
        pos = row_pos(row);
    }

    for (var x = t; x < TQ * h2; x += WG) {
        let qi = x / h2;
        var v = vec2<f32>(0.0);
        if (qi < count) {
            v = q[(first + qi) * params.src_stride + params.src_off + head * h2 + x % h2]
                * params.scale;
        }
        set_tile2(x, v);
    }

    // Online softmax state of this invocation's row: running max m, sum l of exp(s - m),
    // and acc = sum of exp(s - m) * v over this invocation's pairs.
    var m = NEG_BIG;
    var l = 0.0;
    var acc: array<vec2<f32>, MAX_ACC>;
    let cache_row0 = seq * params.max_pos; // cache row of key 0 of this sequence
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        let nb = min(TK, k_end - k0);
        // The previous block has been consumed (on the first pass: Q is stored).
        workgroupBarrier();
        for (var x = t; x < nb * h2; x += WG) {
            let g = (cache_row0 + k0 + x / h2) * d2 + head * h2 + x % h2;
            set_tile2(k_at + x, load_k(g));
            set_tile2(v_at + x, load_v(g));
        }
        workgroupBarrier();
        // Scores of every (query, key) pair of the block: s = (q * scale) . k.
        for (var x = t; x < TQ * TK; x += WG) {
            let qi = x / TK;
            let j = x % TK;
            if (j < nb) {
                var s = 0.0;
                for (var c = 0u; c < h2; c++) {
                    s += dot(tile2(qi * h2 + c), tile2(k_at + j * h2 + c));
                }
                tile[s_at + x] = s;
            }
        }
        workgroupBarrier();
        // Fold the keys k0..=pos of this block into the row's state (causal mask).
        if (row_ok && pos >= k0) {
            let jn = min(nb, pos - k0 + 1u);
            let srow = s_at + i * TK;
            var mb = m;
            for (var j = 0u; j < jn; j++) {
                mb = max(mb, tile[srow + j]);
            }
            let alpha = exp(m - mb);
            l *= alpha;
            for (var a = 0u; a < ACC; a++) {
                acc[a] *= alpha;
            }
            for (var j = 0u; j < jn; j++) {
                let p = exp(tile[srow + j] - mb);
                l += p;
                for (var a = 0u; a < ACC; a++) {
                    let c = lane + a * lanes_per_row;
                    if (c < h2) {
                        acc[a] += p * tile2(v_at + j * h2 + c);
                    }
                }
            }
            m = mb;
        }
    }

    if (!row_ok) {
        return;
    }
    if (PARTIAL) {
        let part = (row * params.heads + head) * params.chunks + chunk;
        for (var a = 0u; a < ACC; a++) {
            let c = lane + a * lanes_per_row;
            if (c < h2) {
                parts[part * h2 + c] = acc[a];
            }
        }
        if (lane == 0u) {
            parts[params.rows * params.heads * params.chunks * h2 + part] = vec2<f32>(m, l);
        }
    } else {
        for (var a = 0u; a < ACC; a++) {
            let c = lane + a * lanes_per_row;
            if (c < h2) {
                out[row * d2 + head * h2 + c] = acc[a] / l;
            }
        }
    }
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
