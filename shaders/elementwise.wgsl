// Elementwise kernels of the decoder, one invocation per output element.
// Host side: src/ops/elementwise.rs.
//
//   embed:  out[r][c] = table[tokens[r]][c]    table [vocab, cols], f32 bits, packed f16 or
//                                              q8 / q4 blocks (EMBED_FMT), or one part of
//                                              a table split by rows (first, last)
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
    vocab: u32,    // embed: rows of the table (of this part of a split table)
    first: u32,    // embed: the token of the table's row 0 (the part's first row)
    last: u32,     // embed: 1 on the last part, which writes zeros for tokens past it
    _pad0: u32,
    _pad1: u32,
}

// Invocations per workgroup; must match ELEMENTWISE_WORKGROUP on the host.
override ELEMENTWISE_WG: u32 = 256u;
// embed: the table's format; must match `WeightFormat::shader_code` in src/ops/mod.rs
// (the products' W_FMT). f32 bit patterns; two f16 per u32, low half first; or q8 / q4
// blocks as matmul.wgsl reads them: QBLOCK values per block, a row's blocks one after
// another (q8: a two's-complement byte per value; q4: level + 8 per nibble; low bits
// first), then the f16 scales [rows, blocks] two per word. A value is scale x level,
// exact in f32: the CPU's dequantized value.
override EMBED_FMT: u32 = 0u;
const E_F16: u32 = 1u;
const E_Q8: u32 = 2u;
const E_Q4: u32 = 3u;
// Values per quantized block; must match BLOCK in src/blocks.rs.
const QBLOCK: u32 = 32u;

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
    if (token < params.first) {
        return;  // an earlier part's row
    }
    let row = token - params.first;
    if (row >= params.vocab) {
        if (params.last != 0u) {
            out[i] = 0.0;  // not a row of the table
        }
        return;  // else a later part's row
    }
    if (EMBED_FMT == E_Q8 || EMBED_FMT == E_Q4) {
        out[i] = quant_value(row, c);
        return;
    }
    let e = row * params.cols + c;
    if (EMBED_FMT == E_F16) {
        out[i] = unpack2x16float(table[e >> 1u])[e & 1u];
    } else {
        out[i] = bitcast<f32>(table[e]);
    }
}

// Value (row, c) of a q8 / q4 table: scale x level.
fn quant_value(row: u32, c: u32) -> f32 {
    let bits = select(4u, 8u, EMBED_FMT == E_Q8);
    let per = 32u / bits;                    // values per word
    let blocks = (params.cols + QBLOCK - 1u) / QBLOCK;
    let row_words = blocks * QBLOCK / per;   // a row's blocks of levels
    let word = table[row * row_words + c / per];
    let shift = (c % per) * bits;
    var level: i32;
    if (EMBED_FMT == E_Q8) {
        level = extractBits(bitcast<i32>(word), shift, 8u);  // sign-extended
    } else {
        level = i32(extractBits(word, shift, 4u)) - 8;
    }
    let s = row * blocks + c / QBLOCK;       // its block's scale, after every row's levels
    let scale = unpack2x16float(table[params.vocab * row_words + (s >> 1u)])[s & 1u];
    return scale * f32(level);
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
