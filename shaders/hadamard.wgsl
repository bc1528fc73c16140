// Walsh–Hadamard transform kernels. Host side: src/ops/hadamard/mod.rs.
//
// This file is the shared body; the module compiled on a device is this file followed by
// either hadamard_shared.wgsl (every adapter) or hadamard_subgroup.wgsl (adapters with
// SUBGROUP), which supply the fast kernel's entry point and `subgroup_stages`.
//
// A transform of length T = M * P runs along axis i of a 3-D view of the data,
//     X[b][i][s]   at offset  b * T * S + i * S + s,
// with b < params.lines, i < T, s < S. A whole row of length n <= TILE_ELEMS (host) is one line
// (S = 1). Longer rows take two dispatches: pass A transforms contiguous segments of
// length P_A (S = 1), pass B the remaining factor across them (S = P_A); see the host.
//
// H_T = H_M (x) H_P: i = c * P + ip (chunk c, position ip). The P-point Sylvester
// transform runs as butterflies: each invocation holds V values of one chunk in registers
// and does LOG_V stages there; the remaining stages go through workgroup memory (or
// subgroup shuffles) in rounds of LOG_V stages, one barrier per round. The M x M mix
// across chunks (M = 1 or a core order 12, 20, ..., 180: src/ops/hadamard/construct.rs)
// reads the signs of H_M from `hm_signs`. The scale and the epilogue
// `out = resid + gamma * y * scale + beta` are applied on store.

// Must match `WhtParams` in src/ops/hadamard/mod.rs.
struct Params {
    lines: u32,    // lines in the whole dispatch
    tiles_x: u32,  // workgroups along x of the (possibly 2-D) grid
    scale: f32,    // 1/sqrt(n) on the pass that stores the result, 1 otherwise
    bit: u32,      // naive kernel: the butterfly stage this dispatch does
}

// Register values per invocation at most; must match MAX_VALUES_PER_INVOCATION on the host.
const MAX_V: u32 = 16u;
// Largest core Hadamard order; must match construct::MAX_CORE on the host.
const MAX_M: u32 = 180u;

// Pipeline constants, all set by the host (src/ops/hadamard/mod.rs, `fast_key`/`naive_key`).
override M: u32 = 1u;        // core Hadamard factor: 1 or one of 12, 20, ..., 180
override P: u32 = 2u;        // power-of-two factor
override LOG_P: u32 = 1u;
override V: u32 = 2u;        // values per invocation (power of two, <= P, <= MAX_V)
override LOG_V: u32 = 1u;
override S: u32 = 1u;        // stride of the transform axis (columns)
override LS: u32 = 1u;       // columns per workgroup tile
override LB: u32 = 1u;       // lines per workgroup tile
override WG: u32 = 64u;      // invocations per workgroup = LB * LS * M * P / V
override EPI_RESID: bool = false;
override EPI_GAMMA: bool = false;
override EPI_BETA: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> resid: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
// H_M as bit masks, SIGN_WORDS words per row (cpu::sign_masks on the host): bit c' % 32
// of word c' / 32 of row c set means H_M[c][c'] = -1 (H_M is symmetric).
@group(0) @binding(6) var<storage, read> hm_signs: array<u32>;
override SIGN_WORDS: u32 = (M + 31u) / 32u;

// Workgroup memory in f32s: the tile of LB lines x T x LS columns, which the host keeps
// within TILE_ELEMS (16 KiB, the WebGPU default limit). Sized to the tile, not to the
// limit: WebGPU zero-fills a workgroup's memory before it runs.
override TILE: u32 = LB * M * P * LS;
var<workgroup> tile: array<f32, TILE>;
var<private> reg: array<f32, MAX_V>;

// Where this invocation sits in its workgroup's tile.
struct Lane {
    b: u32,       // line
    s: u32,       // column
    bl: u32,      // line within the tile
    sl: u32,      // column within the tile
    c: u32,       // chunk of H_M
    g: u32,       // group within the chunk: which V values of the P positions
    valid: bool,  // b < params.lines (the last tile may be partial)
}

fn tile_count() -> u32 {
    return ((params.lines + LB - 1u) / LB) * (S / LS);
}

fn lane_of(t: u32, tile_id: u32) -> Lane {
    // t = ((bl * (M * P / V)) + q) * LS + sl: neighbouring invocations take neighbouring
    // columns, so strided loads (S > 1) are coalesced.
    let per_line = M * P / V;
    let q = (t / LS) % per_line;
    var l: Lane;
    l.sl = t % LS;
    l.bl = t / (LS * per_line);
    l.c = q / (P / V);
    l.g = q % (P / V);
    l.b = (tile_id / (S / LS)) * LB + l.bl;
    l.s = (tile_id % (S / LS)) * LS + l.sl;
    l.valid = l.b < params.lines;
    return l;
}

// Position ip of register j when the registers span bits [lo, lo + LOG_V) of ip.
fn position(g: u32, lo: u32, j: u32) -> u32 {
    let low = g & ((1u << lo) - 1u);
    let high = (g >> lo) << (lo + LOG_V);
    return high | low | (j << lo);
}

fn global_index(l: Lane, i: u32) -> u32 {
    return l.b * (M * P * S) + i * S + l.s;
}

fn tile_index(l: Lane, i: u32) -> u32 {
    return (l.bl * (M * P) + i) * LS + l.sl;
}

// Butterfly stages on register bits [0, count). The loop bounds are pipeline constants
// and `count` only gates whole stages, so compilers unroll both loops and every `reg`
// index becomes a constant: the registers stay in registers. (A dynamic index sends the
// array to memory; on lavapipe that made this kernel no faster than the naive one.)
fn register_stages(count: u32) {
    for (var h = 0u; h < LOG_V; h++) {
        if (h < count) {
            let half = 1u << h;
            for (var k = 0u; k < V / 2u; k++) {
                let j = ((k >> h) << (h + 1u)) | (k & (half - 1u));
                let a = reg[j];
                let b = reg[j | half];
                reg[j] = a + b;
                reg[j | half] = a - b;
            }
        }
    }
}

fn store(l: Lane, i: u32, y: f32) {
    // i * S + l.s: the position within the row, for gamma and beta.
    store_at(global_index(l, i), i * S + l.s, y);
}

// Scale and epilogue of one value: `at` in dst (and resid), `col` in gamma and beta.
fn store_at(at: u32, col: u32, y: f32) {
    var v = y * params.scale;
    if (EPI_GAMMA) { v = v * gamma[col]; }
    if (EPI_BETA) { v = v + beta[col]; }
    if (EPI_RESID) { v = v + resid[at]; }
    dst[at] = v;
}

// Stages of H_P that subgroup shuffles can do after round 0: a shuffle pairs lanes whose
// index differs in one bit, i.e. groups g differing in that bit (bit k of g is bit k of
// ip in round 0), which holds only when one line and one column span consecutive lanes
// (LS == 1). Uniform: it depends on pipeline constants and the subgroup size only.
fn subgroup_stage_count(sg_size: u32) -> u32 {
    if (LS != 1u || sg_size <= 1u) {
        return 0u;
    }
    return min(firstTrailingBit(sg_size), LOG_P - LOG_V);
}

// Rows r0 .. r0 + 3 of the M x M mix of one column (M is a multiple of 4):
// sum_c H_M[r][c] u[c], u[c] = tile[base + c * stride], each in the order c = 0, 1, ...
// (as every mix here and `fwht` on the CPU). One read of u[c] serves four outputs; the
// sign words are the same for every lane that mixes these rows (one broadcast load per 32
// columns and row).
fn mix_tile4(r0: u32, base: u32, stride: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var w = 0u; w < SIGN_WORDS; w++) {
        let signs = vec4<u32>(
            hm_signs[r0 * SIGN_WORDS + w],
            hm_signs[(r0 + 1u) * SIGN_WORDS + w],
            hm_signs[(r0 + 2u) * SIGN_WORDS + w],
            hm_signs[(r0 + 3u) * SIGN_WORDS + w],
        );
        for (var b = 0u; b < 32u; b++) {  // constant trip count: see mix_private
            let c = 32u * w + b;
            if (c < M) {
                let u = vec4<f32>(tile[base + c * stride]);
                acc += select(u, -u, ((signs >> vec4<u32>(b)) & vec4<u32>(1u)) == vec4<u32>(1u));
            }
        }
    }
    return acc;
}

// The same over a column held in a private array (the naive and by-rows kernels). The
// inner loop has a constant trip count, so it unrolls: llvmpipe bounds the iterations a
// loop may run in one invocation, and a by-rows mix of 36 x 64 ran past that (wrong
// results) when this loop's bounds depended on w.
fn mix_private(r: u32, u: ptr<function, array<f32, MAX_M>>) -> f32 {
    var acc = 0.0;
    for (var w = 0u; w < SIGN_WORDS; w++) {
        let signs = hm_signs[r * SIGN_WORDS + w];
        for (var b = 0u; b < 32u; b++) {
            let c = 32u * w + b;
            if (c < M) {
                acc += select((*u)[c], -(*u)[c], ((signs >> b) & 1u) == 1u);
            }
        }
    }
    return acc;
}

// The line and column of mix item `rest` (< LB * P * LS: column fastest, then position,
// then line) in tile `tile_id`.
fn mix_lane(l: Lane, tile_id: u32, rest: u32) -> Lane {
    var k: Lane = l;
    k.sl = rest % LS;
    k.bl = rest / (LS * P);
    k.b = (tile_id / (S / LS)) * LB + k.bl;
    k.s = (tile_id % (S / LS)) * LS + k.sl;
    k.valid = k.b < params.lines;
    return k;
}

// The fast kernel for one workgroup. `t` is local_invocation_index, `wid` the workgroup
// id, `sg_size` the subgroup size (1 when subgroups are not used).
fn wht_tile(t: u32, wid: vec3<u32>, sg_size: u32) {
    let tile_id = wid.y * params.tiles_x + wid.x;
    if (tile_id >= tile_count()) {
        return;  // whole workgroup: uniform
    }
    let l = lane_of(t, tile_id);

    // The stages of H_P may run in any order. Round 0 takes the top LOG_V bits of ip in
    // registers, so neighbouring invocations load neighbouring addresses (coalesced).
    let top = LOG_P - LOG_V;  // bits [top, LOG_P) are done in round 0
    var lo = top;             // registers hold bits [lo, lo + LOG_V) of ip
    if (l.valid) {
        for (var j = 0u; j < V; j++) {
            reg[j] = src[global_index(l, l.c * P + position(l.g, lo, j))];
        }
    } else {
        for (var j = 0u; j < V; j++) {
            reg[j] = 0.0;
        }
    }
    register_stages(LOG_V);
    // The low bits of ip are now the low bits of g: neighbouring lanes. Subgroup shuffles
    // do the first of them, workgroup memory the rest, LOG_V bits per round.
    var done = subgroup_stage_count(sg_size);  // bits [0, done) are done
    subgroup_stages(l.g, done);
    while (done < top) {
        for (var j = 0u; j < V; j++) {
            tile[tile_index(l, l.c * P + position(l.g, lo, j))] = reg[j];
        }
        workgroupBarrier();
        lo = done;
        for (var j = 0u; j < V; j++) {
            reg[j] = tile[tile_index(l, l.c * P + position(l.g, lo, j))];
        }
        let count = min(LOG_V, top - lo);
        register_stages(count);
        done = lo + count;
    }

    if (M == 1u) {
        for (var j = 0u; j < V; j++) {
            if (l.valid) {
                store(l, l.c * P + position(l.g, lo, j), reg[j]);
            }
        }
        return;
    }

    // Mix the M chunks: y[r] = sum_c H_M[r][c] u[c] for every (line, position, column).
    for (var j = 0u; j < V; j++) {
        tile[tile_index(l, l.c * P + position(l.g, lo, j))] = reg[j];
    }
    workgroupBarrier();
    let per_r = LB * P * LS;
    if (M <= 32u) {
        // One sign word per row: an item takes a whole column into registers and makes
        // its M outputs, as before M went past 28 (four rows per item, below, measured
        // 1.14x slower at 12 x 64 on lavapipe in one noisy run; this path matches the old).
        for (var item = t; item < per_r; item += WG) {
            let k = mix_lane(l, tile_id, item);
            if (!k.valid) {
                continue;
            }
            let ip = (item / LS) % P;
            var u: array<f32, 32>;
            for (var c = 0u; c < M; c++) {
                u[c] = tile[tile_index(k, c * P + ip)];
            }
            for (var r = 0u; r < M; r++) {
                let signs = hm_signs[r];
                var acc = 0.0;
                for (var c = 0u; c < M; c++) {
                    acc += select(u[c], -u[c], ((signs >> c) & 1u) == 1u);
                }
                store(k, r * P + ip, acc);
            }
        }
        return;
    }
    // Longer rows of H_M: four outputs per item, their M inputs read from workgroup
    // memory (up to 180 values would not stay in registers). Items run r-major:
    // neighbouring lanes share the rows (the sign words) and store neighbouring addresses.
    // (One output per item, each reading all M inputs, was 3.6-4x slower on lavapipe at
    // 36 x 16 and 60 x 16.)
    for (var item = t; item < (M / 4u) * per_r; item += WG) {
        let r = 4u * (item / per_r);
        let rest = item % per_r;
        let k = mix_lane(l, tile_id, rest);
        if (!k.valid) {
            continue;
        }
        let ip = (rest / LS) % P;
        let y = mix_tile4(r, tile_index(k, ip), P * LS);
        for (var j = 0u; j < 4u; j++) {
            store(k, (r + j) * P + ip, y[j]);
        }
    }
}

// ---- Naive baseline: one dispatch per butterfly stage, in place on `dst` -------------
// Workgroup size: must match NAIVE_WORKGROUP on the host.
override NAIVE_WG: u32 = 64u;

// One butterfly of stage `params.bit` per invocation, over rows of n = M * P.
@compute @workgroup_size(NAIVE_WG)
fn wht_naive_stage(@builtin(global_invocation_id) gid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.y * (nwg.x * NAIVE_WG) + gid.x;
    let pairs = M * P / 2u;
    if (id >= params.lines * pairs) {
        return;
    }
    let row = id / pairs;
    let k = id % pairs;
    let c = k / (P / 2u);
    let kk = k % (P / 2u);
    let half = 1u << params.bit;
    let ip = ((kk >> params.bit) << (params.bit + 1u)) | (kk & (half - 1u));
    let i0 = row * M * P + c * P + ip;
    let a = dst[i0];
    let b = dst[i0 + half];
    dst[i0] = (a + b) * params.scale;
    dst[i0 + half] = (a - b) * params.scale;
}

// The M x M mix for one (row, position) per invocation, in place on `dst`.
@compute @workgroup_size(NAIVE_WG)
fn wht_naive_mix(@builtin(global_invocation_id) gid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.y * (nwg.x * NAIVE_WG) + gid.x;
    if (id >= params.lines * P) {
        return;
    }
    let base = (id / P) * M * P + id % P;
    var u: array<f32, MAX_M>;
    for (var c = 0u; c < M; c++) {
        u[c] = dst[base + c * P];
    }
    for (var r = 0u; r < M; r++) {
        dst[base + r * P] = mix_private(r, &u) * params.scale;
    }
}

// ---- By rows: one invocation per row, in place on `dst`, no barrier -------------------
// For CPU adapters (lavapipe, llvmpipe, SwiftShader), where a barrier is a switch between
// threads and WebGPU zero-fills workgroup memory for every workgroup: each invocation
// copies its row, does every butterfly stage and the M x M mix on it (the row stays in
// the CPU's cache), and stores it through the epilogue. One dispatch; rows of at most
// 4096 values (the host checks: longer rows gave wrong results on both llvmpipe adapters,
// which bound shader loops). Workgroup size: NAIVE_WG
// (NAIVE_WORKGROUP on the host).
@compute @workgroup_size(NAIVE_WG)
fn wht_rows(@builtin(global_invocation_id) gid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.y * (nwg.x * NAIVE_WG) + gid.x;
    if (row >= params.lines) {
        return;
    }
    let n = M * P;
    let base = row * n;
    for (var i = 0u; i < n; i++) {
        dst[base + i] = src[base + i];
    }
    for (var h = 1u; h < P; h <<= 1u) {
        for (var c = 0u; c < M; c++) {
            let cb = base + c * P;
            for (var i = 0u; i < P; i += 2u * h) {
                for (var j = cb + i; j < cb + i + h; j++) {
                    let a = dst[j];
                    let b = dst[j + h];
                    dst[j] = a + b;
                    dst[j + h] = a - b;
                }
            }
        }
    }
    if (M > 1u) {
        for (var ip = 0u; ip < P; ip++) {
            var u: array<f32, MAX_M>;
            for (var c = 0u; c < M; c++) {
                u[c] = dst[base + c * P + ip];
            }
            for (var r = 0u; r < M; r++) {
                dst[base + r * P + ip] = mix_private(r, &u);
            }
        }
    }
    for (var i = 0u; i < n; i++) {
        store_at(base + i, i, dst[base + i]);
    }
}
