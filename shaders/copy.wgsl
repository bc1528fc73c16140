// A plain copy, dst = src, in vec4s: the bandwidth a compute shader reaches on an adapter,
// the roof the other kernels are measured against. Host side: src/ops/copy.rs.

// Must match `CopyParams` in src/ops/copy.rs.
struct Params {
    count: u32,    // vec4s to copy
    tiles_x: u32,  // workgroups along x of the (possibly 2-D) grid
}

// Invocations per workgroup; must match COPY_WORKGROUP on the host.
override COPY_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(COPY_WG)
fn copy_vec4(@builtin(local_invocation_index) t: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.y * params.tiles_x + wid.x) * COPY_WG + t;
    if (i < params.count) {
        dst[i] = src[i];
    }
}
