// Rotary position embedding in place, Hugging Face llama "rotate_half" pairing.
// Host side: src/ops/rope.rs.
//
// The rotated values of row r are x[r * stride + offset ..][.. heads * head_dim] (a column
// window of a wider matrix: the decoder rotates q and k of its fused [rows, q | k | v]
// buffer in one dispatch); row r is at position row_table[2r + 1] (entry 2r, its sequence,
// does not matter here). For each head and i < half = head_dim / 2, with
// (c, s) the table entry at (pos, i):
//     x'[i]        = x[i] * c - x[i + half] * s
//     x'[i + half] = x[i + half] * c + x[i] * s
// One invocation per pair owns both elements, so the update in place has no races. The
// cos/sin table is built on the host: WGSL does not guarantee the accuracy of sin/cos.

// Must match `RopeParams` in src/ops/rope.rs.
struct Params {
    rows: u32,
    heads: u32,
    half: u32,           // head_dim / 2
    max_positions: u32,  // rows of the table
    tiles_x: u32,        // workgroups along x of the (possibly 2-D) grid
    stride: u32,         // values from one row of x to the next
    offset: u32,         // value index of the first rotated column of row 0
}

// Invocations per workgroup; must match ROPE_WORKGROUP on the host.
override ROPE_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> row_table: array<u32>;
// (cos, sin) of pair i at position p at index p * half + i.
@group(0) @binding(3) var<storage, read> cos_sin: array<vec2<f32>>;

@compute @workgroup_size(ROPE_WG)
fn rope(@builtin(local_invocation_index) t: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let idx = (wid.y * params.tiles_x + wid.x) * ROPE_WG + t;
    let pairs_per_row = params.heads * params.half;
    if (idx >= params.rows * pairs_per_row) {
        return;
    }
    let r = idx / pairs_per_row;
    let pair = idx % pairs_per_row;  // head * half + i
    let i = pair % params.half;
    let pos = row_table[2u * r + 1u];
    if (pos >= params.max_positions) {
        return;  // past the table: left unrotated rather than read out of bounds
    }
    let cs = cos_sin[pos * params.half + i];
    let lo = r * params.stride + params.offset + (pair - i) * 2u + i;
    let hi = lo + params.half;
    let a = x[lo];
    let b = x[hi];
    x[lo] = a * cs.x - b * cs.y;
    x[hi] = b * cs.x + a * cs.y;
}
