// Token sampling on the GPU, so a decode step reads back one u32 per sequence instead of
// its logits. Host side and the exact rule (shared with the CPU): src/ops/sample.rs.
//
// One workgroup per sequence (`sample`); over ROW_CHUNK logits, the row's largest first
// comes from `row_max`, a workgroup per ROW_CHUNK-wide slice. Logits are compared
// through order-preserving u32 keys, so the thresholds are found exactly, with no
// sorting, at any vocabulary size: top-k's by a radix select (8 passes over the row, 4
// bits of the key each: 16 counts per invocation, summed through workgroup memory; no
// atomics, which naga cannot bounds-check in SPIR-V), top-p's by a 32-step bitwise search
// on the kept mass, each step a workgroup reduction over the top-k candidates, which every invocation gathered from its
// own elements (in index order, so every sum adds the same weights in the same order as
// a pass over the row would). Without top-k, or when an invocation has more than CAND
// candidates, the search passes over the row instead. LEGACY (measurement only) takes the
// row passes throughout, top-k by a 32-step count search: the same thresholds.

// Must match `SampleParams` in src/ops/sample.rs.
struct Params {
    vocab: u32,
    count: u32,        // sequences to sample
    top_k: u32,        // 0 or >= vocab: off
    tiles_x: u32,      // workgroups along x of the (possibly 2-D) grid
    temperature: f32,  // <= 0: greedy
    top_p: f32,        // >= 1: off
    chunks: u32,       // > 1: `row_max` has written each row's ROW_CHUNK-wide maxima
    _pad: u32,
}

// Invocations per workgroup; must match SAMPLE_WORKGROUP on the host (<= 256, and
// SAMPLE_WG x CAND <= CAND_SLOTS).
override SAMPLE_WG: u32 = 64u;
// The row passes of the first version (for side-by-side timing; the same tokens).
override LEGACY: bool = false;
// Top-k candidates each invocation keeps in workgroup memory.
const CAND: u32 = 16u;
const CAND_SLOTS: u32 = 1024u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;   // [rows, vocab]
@group(0) @binding(2) var<storage, read> rows: array<u32>;     // [count]: logits row of each sequence
@group(0) @binding(3) var<storage, read> draws: array<f32>;    // [count]: uniform numbers in [0, 1)
@group(0) @binding(4) var<storage, read_write> tokens: array<u32>;  // [count]
// [count, chunks]: (largest key, its lowest index) of each ROW_CHUNK-wide slice of a row,
// written by `row_max` when params.chunks > 1 (a spare buffer otherwise).
@group(0) @binding(5) var<storage, read_write> partial: array<vec2<u32>>;

// Logits one `row_max` workgroup scans; must match ROW_CHUNK in src/ops/sample.rs.
const ROW_CHUNK: u32 = 4096u;

var<workgroup> red_u: array<u32, 256>;
var<workgroup> red_v: array<u32, 256>;
var<workgroup> red_f: array<f32, 256>;
// A radix pass's counts, bin-major: digits[b * SAMPLE_WG + l] for invocation l's keys in
// bin b (16 x SAMPLE_WG <= CAND_SLOTS).
var<workgroup> digits: array<u32, CAND_SLOTS>;
var<workgroup> radix: vec2<u32>;              // (digit, rank left) of a radix pass
var<workgroup> cand_key: array<u32, CAND_SLOTS>;  // invocation l's at l * CAND ..
var<workgroup> cand_w: array<f32, CAND_SLOTS>;
var<workgroup> cand_n: array<u32, 64>;            // CAND_SLOTS / CAND: SAMPLE_WG at most
var<workgroup> cand_ok: u32;

// Order-preserving map from f32 to u32: a < b  <=>  key(a) < key(b) (for non-NaN values).
fn key_of(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Shared state of the sequence being sampled.
var<private> base: u32;   // offset of its logits row
var<private> maxv: f32;   // largest logit
var<private> inv_t: f32;  // 1 / temperature

fn weight(i: u32) -> f32 {
    return exp((logits[base + i] - maxv) * inv_t);
}

// Number of logits with key >= t (all invocations get the result).
fn count_ge(t: u32, lid: u32) -> u32 {
    var c = 0u;
    for (var i = lid; i < params.vocab; i += SAMPLE_WG) {
        c += select(0u, 1u, key_of(logits[base + i]) >= t);
    }
    red_u[lid] = c;
    workgroupBarrier();
    var total = 0u;
    for (var k = 0u; k < SAMPLE_WG; k++) {
        total += red_u[k];
    }
    workgroupBarrier();
    return total;
}

// The k-th largest key (1 <= k <= vocab; all invocations get it): a radix select, the
// key's 4 bits from the top a pass, each pass counting the keys that share the bits found
// so far by their next 4.
fn kth_largest(k: u32, lid: u32) -> u32 {
    var prefix = 0u;
    var want = k;  // the rank still to find among keys sharing the prefix
    for (var round = 0u; round < 8u; round++) {
        let shift = 28u - 4u * round;
        let hi = shift + 4u;  // bits at and above hi are the prefix found (none in round 0)
        var count: array<u32, 16>;
        for (var i = lid; i < params.vocab; i += SAMPLE_WG) {
            let key = key_of(logits[base + i]);
            if (hi >= 32u || ((key ^ prefix) >> hi) == 0u) {
                let b = (key >> shift) & 15u;
                count[b] += 1u;
            }
        }
        for (var b = 0u; b < 16u; b++) {
            digits[b * SAMPLE_WG + lid] = count[b];
        }
        workgroupBarrier();
        if (lid < 16u) {
            var c = 0u;
            for (var l = 0u; l < SAMPLE_WG; l++) {
                c += digits[lid * SAMPLE_WG + l];
            }
            red_u[lid] = c;
        }
        workgroupBarrier();
        if (lid == 0u) {
            var above = 0u;
            var digit = 0u;
            for (var b = 15i; b >= 0i; b--) {
                let c = red_u[u32(b)];
                if (above + c >= want) {
                    digit = u32(b);
                    break;
                }
                above += c;
            }
            radix = vec2<u32>(digit, want - above);
        }
        let r = workgroupUniformLoad(&radix);
        prefix |= r.x << shift;
        want = r.y;
    }
    return prefix;
}

// Gathers the keys >= tk and their weights, each invocation its own elements (i = lid
// mod SAMPLE_WG) in index order; true (uniformly) when every invocation's fit in CAND.
fn gather_candidates(tk: u32, lid: u32) -> bool {
    var n = 0u;
    for (var i = lid; i < params.vocab; i += SAMPLE_WG) {
        let key = key_of(logits[base + i]);
        if (key >= tk) {
            if (n < CAND) {
                cand_key[lid * CAND + n] = key;
                cand_w[lid * CAND + n] = weight(i);
            }
            n++;
        }
    }
    cand_n[lid] = n;
    workgroupBarrier();
    if (lid == 0u) {
        var ok = 1u;
        for (var l = 0u; l < SAMPLE_WG; l++) {
            if (cand_n[l] > CAND) {
                ok = 0u;
            }
        }
        cand_ok = ok;
    }
    return workgroupUniformLoad(&cand_ok) != 0u;
}

// mass_ge from the gathered candidates (t >= tk): the same weights added in the same
// order, without a pass over the row.
fn mass_ge_candidates(t: u32, lid: u32) -> f32 {
    var m = 0.0;
    for (var j = 0u; j < cand_n[lid]; j++) {
        if (cand_key[lid * CAND + j] >= t) {
            m += cand_w[lid * CAND + j];
        }
    }
    red_f[lid] = m;
    workgroupBarrier();
    var total = 0.0;
    for (var k = 0u; k < SAMPLE_WG; k++) {
        total += red_f[k];
    }
    workgroupBarrier();
    return total;
}

// Sum of weights of logits with key >= t (all invocations get the result).
fn mass_ge(t: u32, lid: u32) -> f32 {
    var m = 0.0;
    for (var i = lid; i < params.vocab; i += SAMPLE_WG) {
        if (key_of(logits[base + i]) >= t) {
            m += weight(i);
        }
    }
    red_f[lid] = m;
    workgroupBarrier();
    var total = 0.0;
    for (var k = 0u; k < SAMPLE_WG; k++) {
        total += red_f[k];
    }
    workgroupBarrier();
    return total;
}

// Whether (key, index) `c` comes before `best`: a larger key, or the lower index of equal
// keys (greedy's rule).
fn before(c: vec2<u32>, best: vec2<u32>) -> bool {
    return c.x > best.x || (c.x == best.x && c.y < best.y);
}

// Nothing yet: any pair comes before it.
const NO_MAX = vec2<u32>(0u, 0xffffffffu);

// The first of the workgroup's (key, index) pairs by `before`; every invocation gets it.
fn reduce_max(mine: vec2<u32>, lid: u32) -> vec2<u32> {
    red_u[lid] = mine.x;
    red_v[lid] = mine.y;
    workgroupBarrier();
    var best = NO_MAX;
    for (var k = 0u; k < SAMPLE_WG; k++) {
        let c = vec2<u32>(red_u[k], red_v[k]);
        if (before(c, best)) {
            best = c;
        }
    }
    workgroupBarrier();
    return best;
}

// The largest key of logits [lo, hi) of the row at `row`, and its lowest index.
fn slice_max(row: u32, lo: u32, hi: u32, lid: u32) -> vec2<u32> {
    var best = NO_MAX;
    for (var i = lo + lid; i < hi; i += SAMPLE_WG) {
        let c = vec2<u32>(key_of(logits[row + i]), i);
        if (before(c, best)) {
            best = c;
        }
    }
    return reduce_max(best, lid);
}

// The largest key and its lowest index in one ROW_CHUNK-wide slice of a row: one
// workgroup per (sequence, slice), so a long row's maximum (greedy decoding's whole
// work) spreads over the GPU instead of one workgroup walking the row.
@compute @workgroup_size(SAMPLE_WG)
fn row_max(@builtin(local_invocation_index) lid: u32,
           @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.y * params.tiles_x + wid.x;
    let s = id / params.chunks;
    if (s >= params.count) {
        return;  // whole workgroup: uniform
    }
    let lo = (id % params.chunks) * ROW_CHUNK;
    let m = slice_max(rows[s] * params.vocab, lo, min(lo + ROW_CHUNK, params.vocab), lid);
    if (lid == 0u) {
        partial[id] = m;
    }
}

@compute @workgroup_size(SAMPLE_WG)
fn sample(@builtin(local_invocation_index) lid: u32,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let s = wid.y * params.tiles_x + wid.x;
    if (s >= params.count) {
        return;  // whole workgroup: uniform
    }
    base = rows[s] * params.vocab;

    // Largest key and its lowest index: from the slices' maxima, or over the row.
    var top: vec2<u32>;
    if (params.chunks > 1u) {
        var best = NO_MAX;
        for (var c = lid; c < params.chunks; c += SAMPLE_WG) {
            let p = partial[s * params.chunks + c];
            if (before(p, best)) {
                best = p;
            }
        }
        top = reduce_max(best, lid);
    } else {
        top = slice_max(base, 0u, params.vocab, lid);
    }
    let arg = top.y;
    if (params.temperature <= 0.0) {
        if (lid == 0u) {
            tokens[s] = arg;
        }
        return;  // uniform: depends on params only
    }
    maxv = logits[base + arg];
    inv_t = 1.0 / params.temperature;

    // Top-k: the k-th largest key, i.e. the largest t with count(key >= t) >= k.
    var tk = 0u;
    let top_k = params.top_k > 0u && params.top_k < params.vocab;
    if (top_k && !LEGACY) {
        tk = kth_largest(params.top_k, lid);
    } else if (top_k) {
        for (var bit = 31i; bit >= 0i; bit--) {
            let cand = tk | (1u << u32(bit));
            if (count_ge(cand, lid) >= params.top_k) {
                tk = cand;
            }
        }
    }
    // Top-p: the largest t >= tk whose kept mass still reaches top_p of the top-k mass.
    var tau = tk;
    if (params.top_p < 1.0) {
        var tp = 0u;
        if (top_k && !LEGACY && gather_candidates(tk, lid)) {
            let goal = params.top_p * mass_ge_candidates(tk, lid);
            for (var bit = 31i; bit >= 0i; bit--) {
                let cand = tp | (1u << u32(bit));
                if (mass_ge_candidates(max(cand, tk), lid) >= goal) {
                    tp = cand;
                }
            }
        } else {
            let goal = params.top_p * mass_ge(tk, lid);
            for (var bit = 31i; bit >= 0i; bit--) {
                let cand = tp | (1u << u32(bit));
                if (mass_ge(max(cand, tk), lid) >= goal) {
                    tp = cand;
                }
            }
        }
        tau = max(tp, tk);
    }

    // Draw: the first kept index, in vocabulary order, whose running mass passes
    // u * (kept mass). Invocation `lid` owns the contiguous chunk [lo, hi).
    let chunk = (params.vocab + SAMPLE_WG - 1u) / SAMPLE_WG;
    let lo = min(lid * chunk, params.vocab);
    let hi = min(lo + chunk, params.vocab);
    var local = 0.0;
    for (var i = lo; i < hi; i++) {
        if (key_of(logits[base + i]) >= tau) {
            local += weight(i);
        }
    }
    red_f[lid] = local;
    workgroupBarrier();
    var before = 0.0;
    var after = 0.0;
    for (var k = 0u; k < SAMPLE_WG; k++) {
        if (k < lid) {
            before += red_f[k];
        } else if (k > lid) {
            after += red_f[k];
        }
    }
    let total = before + local + after;
    let goal = draws[s] * total;
    // The last chunk with mass also takes targets lost to rounding at the top end.
    let last_with_mass = local > 0.0 && after == 0.0;
    if (local > 0.0 && before <= goal && (goal < before + local || last_with_mass)) {
        var run = before;
        var pick = 0xffffffffu;
        for (var i = lo; i < hi; i++) {
            if (key_of(logits[base + i]) >= tau) {
                run += weight(i);
                pick = i;
                if (run > goal) {
                    break;
                }
            }
        }
        tokens[s] = pick;
    }
}
