// Dense matrix products. Host side: src/ops/matmul.rs.
//
// y[r][o] = sum_i w[o][i] * x[r][i]: w is [n_out, n_in] row major (the HF `weight`
// layout), x is [rows, n_in], y is [rows, n_out].

// Must match `MatmulParams` in src/ops/matmul.rs.
struct Params {
    rows: u32,
    n_in: u32,
    n_out: u32,
    tiles_x: u32,  // workgroups along x of the (possibly 2-D) grid
}

// Invocations per workgroup; must match GEMV_WORKGROUP on the host.
override GEMV_WG: u32 = 64u;
// Rows handled by one workgroup; must match GEMV_ROWS on the host.
const ROWS: u32 = 4u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<array<f32, 256>, ROWS>;

// GEMV for small batches: one workgroup per (output o, block of ROWS rows). Invocations
// stride over the input dimension so reads of a weight row are coalesced, then reduce.
@compute @workgroup_size(GEMV_WG)
fn gemv(@builtin(local_invocation_index) t: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let id = wid.y * params.tiles_x + wid.x;
    let row_blocks = (params.rows + ROWS - 1u) / ROWS;
    if (id >= params.n_out * row_blocks) {
        return;  // whole workgroup: uniform
    }
    let o = id / row_blocks;
    let r0 = (id % row_blocks) * ROWS;
    var acc: array<f32, ROWS>;
    for (var i = t; i < params.n_in; i += GEMV_WG) {
        let wv = w[o * params.n_in + i];
        for (var r = 0u; r < ROWS; r++) {
            if (r0 + r < params.rows) {
                acc[r] += wv * x[(r0 + r) * params.n_in + i];
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        partial[r][t] = acc[r];
    }
    workgroupBarrier();
    for (var stride = GEMV_WG / 2u; stride > 0u; stride /= 2u) {
        if (t < stride) {
            for (var r = 0u; r < ROWS; r++) {
                partial[r][t] += partial[r][t + stride];
            }
        }
        workgroupBarrier();
    }
    if (t < ROWS && r0 + t < params.rows) {
        y[(r0 + t) * params.n_out + o] = partial[t][0];
    }
}
