// Elementwise kernels of the decoder, one invocation per output element.
// Host side: src/ops/elementwise.rs.
//
//   embed:  out[r][c] = table[tokens[r]][c]    table [vocab, cols], f32 bits or packed f16
//   swiglu: out[i] = silu(gate[i]) * up[i]
//   silu:   x[i] = silu(x[i])                  in place
//   add:    x[i] += y[i]                       in place
//
// Entry points bind different variables at the same slots (WGSL allows that across entry
// points); each entry point's slots are listed next to its variables and on the host.

// Must match `ElementwiseParams` in src/ops/elementwise.rs.
struct Params {
    count: u32,    // elements to write
    tiles_x: u32,  // workgroups along x of the (possibly 2-D) grid
    cols: u32,     // embed: row width
    vocab: u32,    // embed: rows of the table
}

// Invocations per workgroup; must match ELEMENTWISE_WORKGROUP on the host.
override ELEMENTWISE_WG: u32 = 256u;
// embed: the table holds two f16 per u32 (low half first) instead of f32 bit patterns.
override EMBED_F16: bool = false;

@group(0) @binding(0) var<uniform> params: Params;
// embed: 1 table, 2 tokens, 3 out.
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
// swiglu: 1 gate, 2 up, 3 out.
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
// silu: 1 x. add: 1 x, 2 y.
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

fn element(t: u32, wid: vec3<u32>) -> u32 {
    return (wid.y * params.tiles_x + wid.x) * ELEMENTWISE_WG + t;
}

// silu(v) = v * sigmoid(v), with exp only of -|v| so nothing overflows: for v = -100,
// exp(100) would be inf, and WGSL does not promise inf arithmetic. Must stay the same
// function as `silu` in matmul.wgsl (the products' SiLU and SwiGLU epilogues).
fn silu(v: f32) -> f32 {
    let e = exp(-abs(v));
    let sigmoid = select(e, 1.0, v >= 0.0) / (1.0 + e);
    return v * sigmoid;
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn embed(@builtin(local_invocation_index) t: u32,
         @builtin(workgroup_id) wid: vec3<u32>) {
    let i = element(t, wid);
    if (i >= params.count) {
        return;
    }
    let r = i / params.cols;
    let c = i % params.cols;
    let token = tokens[r];
    if (token >= params.vocab) {
        out[i] = 0.0;  // not a row of the table
        return;
    }
    let e = token * params.cols + c;
    if (EMBED_F16) {
        out[i] = unpack2x16float(table[e >> 1u])[e & 1u];
    } else {
        out[i] = bitcast<f32>(table[e]);
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn swiglu(@builtin(local_invocation_index) t: u32,
          @builtin(workgroup_id) wid: vec3<u32>) {
    let i = element(t, wid);
    if (i < params.count) {
        out[i] = silu(gate[i]) * up[i];
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn silu_inplace(@builtin(local_invocation_index) t: u32,
                @builtin(workgroup_id) wid: vec3<u32>) {
    let i = element(t, wid);
    if (i < params.count) {
        x[i] = silu(x[i]);
    }
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn add_inplace(@builtin(local_invocation_index) t: u32,
               @builtin(workgroup_id) wid: vec3<u32>) {
    let i = element(t, wid);
    if (i < params.count) {
        x[i] += y[i];
    }
}
