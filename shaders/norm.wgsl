// RMSNorm over rows: out[r][i] = x[r][i] / sqrt(mean_j(x[r][j]^2) + eps) * weight[i].
// x and out are [rows, d] row major, weight is [d]. Host side: src/ops/norm.rs.
//
// One workgroup per row. Each invocation sums the squares of a strided slice of the row
// (coalesced loads), then the partial sums are reduced in two rounds of at most FAN terms
// each, so a row costs two barriers whatever the workgroup size (software adapters pay
// per barrier). Every invocation then reads the row again to scale it.

// Must match `NormParams` in src/ops/norm.rs.
struct Params {
    rows: u32,
    d: u32,        // row width
    tiles_x: u32,  // workgroups along x of the (possibly 2-D) grid
    eps: f32,
}

// Largest workgroup (sizes `partial`); must match MAX_NORM_WORKGROUP on the host.
const MAX_WG: u32 = 256u;
// Partial sums each invocation of the first reduction round adds up.
const FAN: u32 = 16u;

// Invocations per workgroup (<= MAX_WG): NORM_WORKGROUP or, on CPU adapters,
// CPU_NORM_WORKGROUP on the host (norm_workgroup).
override NORM_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, MAX_WG>;
var<workgroup> partial2: array<f32, MAX_WG / FAN>;

@compute @workgroup_size(NORM_WG)
fn rmsnorm(@builtin(local_invocation_index) t: u32,
           @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * params.tiles_x + wid.x;
    if (row >= params.rows) {
        return;  // whole workgroup: uniform
    }
    let base = row * params.d;

    var acc = 0.0;
    for (var i = t; i < params.d; i += NORM_WG) {
        let v = x[base + i];
        acc += v * v;
    }
    partial[t] = acc;
    workgroupBarrier();

    // Round 1: invocation g < groups adds partials [g * FAN, (g + 1) * FAN).
    let groups = (NORM_WG + FAN - 1u) / FAN;
    if (t < groups) {
        var s = 0.0;
        for (var j = t * FAN; j < min((t + 1u) * FAN, NORM_WG); j++) {
            s += partial[j];
        }
        partial2[t] = s;
    }
    workgroupBarrier();

    // Round 2: every invocation adds the same <= FAN values in the same order, so all
    // agree on the total without a third barrier.
    var total = 0.0;
    for (var g = 0u; g < groups; g++) {
        total += partial2[g];
    }
    let inv_rms = inverseSqrt(total / f32(params.d) + params.eps);
    for (var i = t; i < params.d; i += NORM_WG) {
        out[base + i] = x[base + i] * inv_rms * weight[i];
    }
}
