// Dense matrix products. Host side: src/ops/matmul.rs.
//
// z[r][o] = sum_i w[o][i] * x[r][i], then the epilogue EPI writes y:
//   EPI_STORE    y[r][o] = z[r][o]
//   EPI_ACCUM    y[r][o] += z[r][o]
//   EPI_SILU     y[r][o] = silu(z[r][o])
//   EPI_SWIGLU   y[r][j] = silu(z[r][2j]) * z[r][2j + 1]: w interleaves the rows of two
//                matrices (gate row j at 2j, up row j at 2j + 1), y is [rows, n_out / 2]
// w is [n_out, n_in] row major (the HF `weight` layout), x is [rows, n_in], y [rows, n_out]
// (EPI_SWIGLU: [rows, n_out / 2]), or those columns of a wider y (y_stride, y_offset).
// w binds as u32 words in the format W_FMT (src/ops/mod.rs, WeightFormat; layouts in
// docs/model-format.md#quantized-blocks): f32 bit patterns; two halves per word, low half
// first, read with unpack2x16float so no SHADER_F16 feature is needed; or (W_Q8, W_Q4)
// block-quantized rows: QBLOCK values along the input per block, WPB words of levels per
// block (q8: a two's-complement byte per value, little end first; q4: level + 8 per nibble,
// low nibble first), every row's blocks one after another, then the f16 block scales
// ([n_out, blocks], two per word) after the last row, then zero words up to a whole vec4
// (gemv_wide reads the scales through w4; Matrix::from_quant pads). A weight is scale x
// level (exact in f32, the CPU's dequantized value); the GEMV sums levels x inputs over a
// word and then scales, so it rounds in another order than the CPU, like any other GEMV.

// Must match `MatmulParams` in src/ops/matmul.rs.
struct Params {
    rows: u32,
    n_in: u32,
    n_out: u32,
    tiles_x: u32,    // workgroups along x of the (possibly 2-D) grid
    eps: f32,        // PRO_NORM, PRO_WHT: the RMSNorm epsilon
    wht_scale: f32,  // PRO_WHT: 1 / sqrt(n_in)
    y_stride: u32,   // values from one row of y to the next (n_out / OUTS for a whole y)
    y_offset: u32,   // y's column 0: a product writing some columns of a wider y
}

// Must match `Epilogue` in src/ops/matmul.rs.
const EPI_STORE: u32 = 0u;
const EPI_ACCUM: u32 = 1u;
const EPI_SILU: u32 = 2u;
const EPI_SWIGLU: u32 = 3u;

// Must match `WeightFormat::shader_code` in src/ops/mod.rs.
const W_F32: u32 = 0u;
const W_F16: u32 = 1u;
const W_Q8: u32 = 2u;
const W_Q4: u32 = 3u;
// Values per quantized block; must match BLOCK in src/blocks.rs.
const QBLOCK: u32 = 32u;

override W_FMT: u32 = W_F32;
// w is stored transposed (f16 only: Matrix::from_f16_bits_transposed): element (o, i) at
// half i * n_out + o, so a word holds outputs o, o + 1 (o even) of input i.
override W_T: bool = false;
override EPI: u32 = EPI_STORE;
// Outputs of w one unit of work (a GEMV invocation or workgroup) computes: a gate row and
// its up row together with EPI_SWIGLU, else one row.
override OUTS: u32 = select(1u, 2u, EPI == EPI_SWIGLU);

// The host binds two Params at binding 0 (`MatmulParams` in src/ops/matmul.rs): the
// product's, then one of zeros. `params()` reads the first at the index the second's
// `rows` holds (0): a runtime index, so lavapipe (Mesa 22.3) cannot inline the values
// into the shader. It inlines the uniforms that loops and branches test and, while that
// shrinks the shader, compiles it again at every dispatch (2-8-row decode GEMVs at 3-6x
// their time; docs/serving.md). The value stays uniform in WGSL's uniformity analysis (a
// copy in a private variable would not be, and Chromium refuses the barriers after it).
@group(0) @binding(0) var<uniform> params_in: array<Params, 2>;

fn params() -> Params {
    return params_in[params_in[1].rows];
}

@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
// The same w and x, 16 bytes at a time: read only by `gemv_wide` (no entry point uses
// both views of one binding).
@group(0) @binding(1) var<storage, read> w4: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x4: array<vec4<f32>>;
// The prologues' bindings (PRO != PRO_NONE; `Prologue` on the host binds all five).
@group(0) @binding(4) var<storage, read> norm_w: array<f32>;
@group(0) @binding(5) var<storage, read> resid: array<f32>;
@group(0) @binding(6) var<storage, read> gamma: array<f32>;
@group(0) @binding(7) var<storage, read> beta: array<f32>;
@group(0) @binding(8) var<storage, read_write> xout: array<f32>;
// PRO_WHT with PRO_M > 1: H_PRO_M's sign masks (hadamard::cpu::sign_uniform: bit c % 32 of
// word r * ceil(PRO_M / 32) + c / 32 set means H[r][c] = -1), four words per vec4; every
// GEMV binds it (zeros where unread; the size is SIGN_UNIFORM_WORDS on the host).
@group(0) @binding(9) var<uniform> pro_signs: array<vec4<u32>, 270>;

// Quantized formats: bits per level, levels per word, words per block.
override QBITS: u32 = select(4u, 8u, W_FMT == W_Q8);
override VPW: u32 = 32u / QBITS;
override WPB: u32 = QBLOCK / VPW;

fn quantized() -> bool {
    return W_FMT == W_Q8 || W_FMT == W_Q4;
}

// Element i of an f32 or f16 w (flat index).
fn weight(i: u32) -> f32 {
    if (W_FMT == W_F16) {
        let pair = unpack2x16float(w[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(w[i]);
}

// Words of levels in one row of a quantized w.
fn row_words() -> u32 {
    return (params().n_in + QBLOCK - 1u) / QBLOCK * WPB;
}

// The scale of block b of row o of a quantized w.
fn block_scale(o: u32, b: u32) -> f32 {
    let s = o * ((params().n_in + QBLOCK - 1u) / QBLOCK) + b;
    let pair = unpack2x16float(w[params().n_out * row_words() + (s >> 1u)]);
    return select(pair.x, pair.y, (s & 1u) == 1u);
}

// Levels 0..3 of a quantized word (q8: its four bytes; q4: its four low nibbles).
fn levels_lo(word: u32) -> vec4<f32> {
    if (W_FMT == W_Q8) {
        let v = vec4<i32>(bitcast<i32>(word));
        return vec4<f32>((v << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
    }
    let n = (vec4<u32>(word) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
    return vec4<f32>(vec4<i32>(n) - vec4<i32>(8));
}

// Levels 4..7 of a q4 word.
fn levels_hi(word: u32) -> vec4<f32> {
    let n = (vec4<u32>(word) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u);
    return vec4<f32>(vec4<i32>(n) - vec4<i32>(8));
}

// Element (o, i) of w in any format.
fn weight_at(o: u32, i: u32) -> f32 {
    if (W_T) {
        return weight(i * params().n_out + o);
    }
    if (!quantized()) {
        return weight(o * params().n_in + i);
    }
    return block_scale(o, i / QBLOCK) * level_at(o, i);
}

// The level of element (o, i) of a quantized, row-major w (its value over the scale).
fn level_at(o: u32, i: u32) -> f32 {
    return level_in(w[level_word(o, i)], i % VPW);
}

// Index in w of the word holding the level of element (o, i) (a block is WPB words, and
// QBLOCK a multiple of VPW: level i is in slot i % VPW of its word).
fn level_word(o: u32, i: u32) -> u32 {
    return o * row_words() + (i / QBLOCK) * WPB + (i % QBLOCK) / VPW;
}

// The level in slot `slot` of a quantized word: q8 a two's-complement byte, q4 a nibble
// stored as level + 8.
fn level_in(word: u32, slot: u32) -> f32 {
    if (W_FMT == W_Q8) {
        return f32(bitcast<i32>(word << (24u - 8u * slot)) >> 24u);
    }
    return f32(i32((word >> (4u * slot)) & 15u) - 8);
}

// silu(v) = v * sigmoid(v), with exp only of -|v| so nothing overflows (exp(-v) is inf
// for v below about -88, and WGSL does not promise inf arithmetic). Must stay the same
// function as `silu` in elementwise.wgsl.
fn silu(v: f32) -> f32 {
    let e = exp(-abs(v));
    let sigmoid = select(e, 1.0, v >= 0.0) / (1.0 + e);
    return v * sigmoid;
}

// Writes output unit u of row r: z = the unit's first output of w, z2 its second
// (EPI_SWIGLU only).
fn store(r: u32, u: u32, z: f32, z2: f32) {
    let at = r * params().y_stride + params().y_offset + u;
    switch EPI {
        case EPI_ACCUM: { y[at] = y[at] + z; }
        case EPI_SILU: { y[at] = silu(z); }
        case EPI_SWIGLU: { y[at] = silu(z) * z2; }
        default: { y[at] = z; }
    }
}

// ---- prologues: a decode GEMV's inputs made in workgroup memory -----------------------
// The decoder folds the step before a product into the product's dispatch: each workgroup
// stages its GEMV_ROWS input rows in `stage` and computes them there, then the dot loops
// read `stage` instead of x. The work is repeated per workgroup (a row is n_in values,
// against a weight row of n_in per output), which is what saves a dependent dispatch.
//   PRO_NORM  inputs = rmsnorm(x[r]) * norm_w; with WRITE_X, the first unit group of
//             workgroups also writes them to xout (the identity query reads them).
//   PRO_WHT   v = resid[r] + gamma * H(x[r]) * wht_scale + beta (the Hadamard attention
//             output, H = H_PRO_M (x) H_P for n_in = PRO_M * P, H_P in Sylvester order),
//             written to xout by the first unit group (the new residual stream), then
//             inputs = rmsnorm(v) * norm_w: the post-attention norm of the layer.
// The host (`Prologue` in src/ops/matmul.rs) checks GEMV_ROWS * n_in <= STAGE.
const PRO_NONE: u32 = 0u;
const PRO_NORM: u32 = 1u;
const PRO_WHT: u32 = 2u;
override PRO: u32 = PRO_NONE;
override WRITE_X: bool = false;
override PRO_M: u32 = 1u;  // PRO_WHT: the core Hadamard order of n_in (1: a power of two)
// PRO_WHT mix items per invocation at most: STAGE / 4 outputs per item / the smallest
// GEMV workgroup (64); MIX_ITEMS on the host checks the workgroups.
const MIX_ITEMS: u32 = 16u;

// f32s of `stage`: the host sets what the pipeline uses (`stage_len` in
// src/ops/matmul.rs: a prologue's GEMV_ROWS x n_in inputs, the partial sums gemv and
// gemv_wide add after their dot loops, at least 4), at most PROLOGUE_STAGE there (4096,
// this default). WebGPU zero-fills a workgroup's memory before it runs, so every unused
// value is a store on every workgroup: with 4096 for every GEMV the page in Chromium
// (SwiftShader) decoded at 0.43x the rate it had with that fill switched off.
override STAGE: u32 = 4096u;
// An array's size is a named override: naga 30 panics on an expression there.
override STAGE_VEC4S: u32 = STAGE / 4u;
// Invocations per GEMV workgroup (declared before the overrides sized by it).
override GEMV_WG: u32 = 64u;
// The prologue's RMSNorm partial sums (one per invocation, then one per FAN); one value
// where there is no prologue (the fill again).
override SUMS: u32 = select(1u, GEMV_WG, PRO != PRO_NONE);
override SUMS2: u32 = select(1u, (GEMV_WG + FAN - 1u) / FAN, PRO != PRO_NONE);
// Partial sums each invocation of the norm's first reduction round adds up (norm.wgsl).
const FAN: u32 = 16u;
// Held as vec4s: x_at, the wide GEMVs' read of four staged inputs, is then one load
// (four scalar loads made the staged products move their bytes at about 0.6x the rate
// of the unstaged ones on lavapipe); st / st_set reach single values.
var<workgroup> stage: array<vec4<f32>, STAGE_VEC4S>;
var<workgroup> sums: array<f32, SUMS>;
var<workgroup> sums2: array<f32, SUMS2>;
// The first row staged by this workgroup.
var<private> stage_r0: u32;

// Value i of `stage`.
fn st(i: u32) -> f32 {
    return stage[i >> 2u][i & 3u];
}

fn st_set(i: u32, v: f32) {
    stage[i >> 2u][i & 3u] = v;
}

fn staged() -> bool {
    return PRO != PRO_NONE;
}

// Input i of row r of the product (r a row of the whole batch).
fn xin(r: u32, i: u32) -> f32 {
    if (staged()) {
        return st((r - stage_r0) * params().n_in + i);
    }
    return x[r * params().n_in + i];
}

// Copies rows r0 .. r0 + nr of x into `stage` (gemv, gemv_outputs).
fn stage_load(t: u32, wg: u32, r0: u32, nr: u32) {
    let n = params().n_in;
    for (var e = t; e < nr * n; e += wg) {
        st_set(e, x[r0 * n + e]);
    }
}

// The same through the vec4 view of x (gemv_wide, which may not use both views; n_in is a
// multiple of 4 there).
fn stage_load4(t: u32, wg: u32, r0: u32, nr: u32) {
    let n4 = params().n_in / 4u;
    for (var e = t; e < nr * n4; e += wg) {
        stage[e] = x4[r0 * n4 + e];
    }
}

// The butterflies of half-width h = 1, 2, 4, ... < p inside each chunk of p values of
// the nr staged rows (n values each; p % 4 == 0), as vec4s: h = 1 and 2 inside each vec4,
// then vec4 against vec4, two half-widths a pass. The same adds in the same order as a
// pass of single values per half-width (the CPU reference's), with a quarter of the
// workgroup-memory accesses and half the barriers: on lavapipe the single-value passes
// made the Hadamard gate/up product ~1.1x the dense one's time (d_model 1024, `walsh
// profile`), as much as the W_O product it replaces.
// The first of butterfly group b's values: `radix` values h apart in a row of `len`,
// `per_row` groups a row (rows one after another).
fn group_start(b: u32, per_row: u32, len: u32, h: u32, radix: u32) -> u32 {
    let k = b % per_row;
    return (b / per_row) * len + (k / h) * radix * h + k % h;
}

fn butterflies4(t: u32, wg: u32, nr: u32, n: u32, p: u32) {
    let n4 = n / 4u;
    let p4 = p / 4u;
    workgroupBarrier();
    for (var e = t; e < nr * n4; e += wg) {
        let v = stage[e];
        let a = vec4<f32>(v.x + v.y, v.x - v.y, v.z + v.w, v.z - v.w);
        stage[e] = vec4<f32>(a.x + a.z, a.y + a.w, a.x - a.z, a.y - a.w);
    }
    var h = 1u;
    // Half-widths h and 2h (in vec4s) at once: the four vec4s i + {0, 1, 2, 3} h.
    for (; 2u * h < p4; h *= 4u) {
        workgroupBarrier();
        let quarter = n4 / 4u;
        for (var b = t; b < nr * quarter; b += wg) {
            let i = group_start(b, quarter, n4, h, 4u);
            let v0 = stage[i];
            let v1 = stage[i + h];
            let v2 = stage[i + 2u * h];
            let v3 = stage[i + 3u * h];
            let a0 = v0 + v1;
            let a1 = v0 - v1;
            let a2 = v2 + v3;
            let a3 = v2 - v3;
            stage[i] = a0 + a2;
            stage[i + h] = a1 + a3;
            stage[i + 2u * h] = a0 - a2;
            stage[i + 3u * h] = a1 - a3;
        }
    }
    if (h < p4) {
        workgroupBarrier();
        let half = n4 / 2u;
        for (var b = t; b < nr * half; b += wg) {
            let i = group_start(b, half, n4, h, 2u);
            let a = stage[i];
            let c = stage[i + h];
            stage[i] = a + c;
            stage[i + h] = a - c;
        }
    }
}

// Makes the inputs of rows r0 .. r0 + nr from the rows a stage_load put in `stage`; `wg`
// invocations, index t; `writer`: this workgroup writes xout. Called by every invocation
// in uniform control flow; ends with a barrier.
fn stage_inputs(t: u32, wg: u32, r0: u32, nr: u32, writer: bool) {
    stage_r0 = r0;
    let n = params().n_in;
    if (PRO == PRO_WHT) {
        // Butterflies of half-width h = 1, 2, 4, ... < P (inside the chunks of P), then
        // the PRO_M x PRO_M mix of each position across chunks summed in the order c = 0,
        // 1, ...: the order of the CPU reference.
        let p = n / PRO_M;
        if (p % 4u == 0u) {
            butterflies4(t, wg, nr, n, p);
        } else {
            let half = n / 2u;
            for (var h = 1u; h < p; h *= 2u) {
                workgroupBarrier();
                for (var b = t; b < nr * half; b += wg) {
                    let i = group_start(b, half, n, h, 2u);
                    let a = st(i);
                    let c = st(i + h);
                    st_set(i, a + c);
                    st_set(i + h, a - c);
                }
            }
        }
        if (PRO_M > 1u) {
            workgroupBarrier();
            // Items of four outputs (rows r .. r + 3 of H_PRO_M) of one column (row,
            // position), each summing its column's PRO_M values: the workgroup's lanes
            // share the n x PRO_M adds (a column per item kept 16 of 256 lanes busy at
            // 576 = 36 x 16). The outputs wait in registers until every item has read
            // its inputs, then go back in place.
            var mixed: array<vec4<f32>, MIX_ITEMS>;
            let cols = nr * p;
            let words = (PRO_M + 31u) / 32u;
            var j = 0u;
            for (var it = t; it < cols * (PRO_M / 4u); it += wg) {
                let r = 4u * (it / cols);
                let base = ((it % cols) / p) * n + (it % cols) % p;
                var acc = vec4<f32>(0.0);
                for (var c = 0u; c < PRO_M; c++) {
                    let u = vec4<f32>(st(base + c * p));
                    var neg: vec4<bool>;
                    for (var k = 0u; k < 4u; k++) {
                        let w = (r + k) * words + c / 32u;
                        neg[k] = ((pro_signs[w / 4u][w % 4u] >> (c % 32u)) & 1u) == 1u;
                    }
                    acc += select(u, -u, neg);
                }
                mixed[j] = acc;
                j++;
            }
            workgroupBarrier();
            j = 0u;
            for (var it = t; it < cols * (PRO_M / 4u); it += wg) {
                let r = 4u * (it / cols);
                let base = ((it % cols) / p) * n + (it % cols) % p;
                for (var k = 0u; k < 4u; k++) {
                    st_set(base + (r + k) * p, mixed[j][k]);
                }
                j++;
            }
        }
        workgroupBarrier();
        for (var e = t; e < nr * n; e += wg) {
            let i = e % n;
            let v = resid[r0 * n + e] + gamma[i] * st(e) * params().wht_scale + beta[i];
            st_set(e, v);
            if (writer) {
                xout[r0 * n + e] = v;
            }
        }
    }
    // RMSNorm of each row, reduced in two rounds as norm.wgsl does. Each invocation
    // rescales the values it summed, so only `sums` is shared between rounds.
    let groups = (wg + FAN - 1u) / FAN;
    for (var r = 0u; r < nr; r++) {
        workgroupBarrier();
        var acc = 0.0;
        for (var i = t; i < n; i += wg) {
            let v = st(r * n + i);
            acc += v * v;
        }
        sums[t] = acc;
        workgroupBarrier();
        if (t < groups) {
            var s = 0.0;
            for (var j = t * FAN; j < min((t + 1u) * FAN, wg); j++) {
                s += sums[j];
            }
            sums2[t] = s;
        }
        workgroupBarrier();
        var total = 0.0;
        for (var g = 0u; g < groups; g++) {
            total += sums2[g];
        }
        let inv_rms = inverseSqrt(total / f32(n) + params().eps);
        for (var i = t; i < n; i += wg) {
            let v = st(r * n + i) * inv_rms * norm_w[i];
            st_set(r * n + i, v);
            if (WRITE_X && writer) {
                xout[(r0 + r) * n + i] = v;
            }
        }
    }
    workgroupBarrier();
}

// ---- GEMV: decode-sized batches ------------------------------------------------------
// One workgroup per (output unit u, block of GEMV_ROWS rows). Invocations stride over n_in
// so a weight row is read once per block, coalesced; each keeps OUTS x GEMV_ROWS partial
// sums. With PAIRED (n_in even) an invocation takes two neighbouring inputs per step: one
// u32 of f16 weights, unpacked once. One barrier, then invocation r < GEMV_ROWS adds the
// GEMV_WG partials of its row: a single barrier instead of a log2(GEMV_WG)-step tree,
// which matters where barriers are costly.

// Invocations per workgroup: GEMV_WORKGROUP on the host, GEMV_WIDE_WORKGROUP for
// gemv_wide (their partial sums must fit `stage`: the host's stage_len checks).
// Which rows and outputs a GEMV workgroup takes. The grid is (groups of `per` items, of
// `items` in all) x (blocks of GEMV_ROWS rows), blocks fastest: `first` is the group's
// first item, its rows r0 .. r0 + nr. `valid` is false for the grid's spare workgroups
// (the same for the whole workgroup, so returning on it keeps barriers uniform); `writer`
// is true for the first group of each block (the one that writes a prologue's outputs).
struct GemvBlock {
    valid: bool,
    first: u32,
    r0: u32,
    nr: u32,
    writer: bool,
}

fn gemv_block(wid: vec3<u32>, items: u32, per: u32) -> GemvBlock {
    let id = wid.y * params().tiles_x + wid.x;
    let blocks = (params().rows + GEMV_ROWS - 1u) / GEMV_ROWS;
    let groups = (items + per - 1u) / per;
    let r0 = (id % blocks) * GEMV_ROWS;
    return GemvBlock(id < groups * blocks, (id / blocks) * per, r0,
                     min(GEMV_ROWS, params().rows - r0), id < blocks);
}

// A prologue's inputs for block b, loaded from x and made in `stage`; stage_block4 loads
// through x's vec4 view (an entry point may use one view only: they alias one binding).
// Every invocation calls them, in uniform control flow.
fn stage_block(t: u32, b: GemvBlock) {
    if (staged()) {
        stage_load(t, GEMV_WG, b.r0, b.nr);
        stage_inputs(t, GEMV_WG, b.r0, b.nr, b.writer);
    }
}

fn stage_block4(t: u32, b: GemvBlock) {
    if (staged()) {
        stage_load4(t, GEMV_WG, b.r0, b.nr);
        stage_inputs(t, GEMV_WG, b.r0, b.nr, b.writer);
    }
}

// Rows per workgroup, 1 to MAX_GEMV_ROWS / (OUTS x GEMV_UNITS); the host sizes it to the
// batch.
override GEMV_ROWS: u32 = 8u;
// Output units per invocation of gemv_outputs_wide (the host's gemv_units; 1 in the other
// GEMVs).
override GEMV_UNITS: u32 = 1u;
// Inputs are taken two at a time (requires an even n_in).
override PAIRED: bool = false;
// Must match MAX_GEMV_ROWS on the host; OUTS x GEMV_UNITS x GEMV_ROWS accumulators at most.
const MAX_GEMV_ROWS: u32 = 8u;

// Weights n and n + 1 (n even), as two f32.
fn weight_pair(n: u32) -> vec2<f32> {
    if (W_FMT == W_F16) {
        return unpack2x16float(w[n >> 1u]);
    }
    return vec2<f32>(bitcast<f32>(w[n]), bitcast<f32>(w[n + 1u]));
}

// Adds inputs [i0, i1) stepping by `step` of output row o of w, times rows r0 .. r0 +
// GEMV_ROWS of x (rows past nr repeat the last one), into acc[a0 ..].
// With a quantized w, i0 and step count words of levels (VPW inputs each) instead.
fn dot_rows(acc: ptr<function, array<f32, MAX_GEMV_ROWS>>, a0: u32, o: u32, r0: u32,
            nr: u32, i0: u32, step: u32) {
    if (quantized()) {
        // Levels times inputs, summed per word, then times the block's scale. The padded
        // tail of a row's last block has level 0; its inputs are read clamped to the
        // row's last one, so nothing past the row is touched.
        let last = params().n_in - 1u;
        let words = row_words();
        for (var j = i0; j < words; j += step) {
            let b = j / WPB;
            let word = w[o * words + j];
            let d = block_scale(o, b);
            let c = b * QBLOCK + (j % WPB) * VPW;
            let lo = levels_lo(word);
            let hi = levels_hi(word);
            let full = c + VPW <= params().n_in;
            for (var r = 0u; r < GEMV_ROWS; r++) {
                let row = r0 + min(r, nr - 1u);
                var x0: vec4<f32>;
                var x1: vec4<f32>;
                if (full) {
                    x0 = vec4<f32>(xin(row, c), xin(row, c + 1u), xin(row, c + 2u),
                                   xin(row, c + 3u));
                    if (VPW == 8u) {
                        x1 = vec4<f32>(xin(row, c + 4u), xin(row, c + 5u), xin(row, c + 6u),
                                       xin(row, c + 7u));
                    }
                } else {
                    x0 = vec4<f32>(xin(row, min(c, last)), xin(row, min(c + 1u, last)),
                                   xin(row, min(c + 2u, last)), xin(row, min(c + 3u, last)));
                    if (VPW == 8u) {
                        x1 = vec4<f32>(xin(row, min(c + 4u, last)), xin(row, min(c + 5u, last)),
                                       xin(row, min(c + 6u, last)), xin(row, min(c + 7u, last)));
                    }
                }
                var z = dot(lo, x0);
                if (VPW == 8u) {
                    z += dot(hi, x1);
                }
                (*acc)[a0 + r] += d * z;
            }
        }
    } else if (PAIRED) {
        for (var j = i0; j < params().n_in / 2u; j += step) {
            let wv = weight_pair(o * params().n_in + 2u * j);
            for (var r = 0u; r < GEMV_ROWS; r++) {
                let row = r0 + min(r, nr - 1u);
                (*acc)[a0 + r] += wv.x * xin(row, 2u * j) + wv.y * xin(row, 2u * j + 1u);
            }
        }
    } else {
        for (var i = i0; i < params().n_in; i += step) {
            let wv = weight(o * params().n_in + i);
            for (var r = 0u; r < GEMV_ROWS; r++) {
                (*acc)[a0 + r] += wv * xin(r0 + min(r, nr - 1u), i);
            }
        }
    }
}

@compute @workgroup_size(GEMV_WG)
fn gemv(@builtin(local_invocation_index) t: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let b = gemv_block(wid, params().n_out / OUTS, 1u);
    if (!b.valid) {
        return;
    }
    let u = b.first;
    let r0 = b.r0;
    let nr = b.nr;
    stage_block(t, b);
    var acc: array<f32, MAX_GEMV_ROWS>;
    for (var k = 0u; k < OUTS; k++) {
        dot_rows(&acc, k * GEMV_ROWS, u * OUTS + k, r0, nr, t, GEMV_WG);
    }
    if (staged()) {
        workgroupBarrier();  // the partial sums below overwrite the staged inputs
    }
    // Accumulator a of invocation t at stage[a * GEMV_WG + t].
    for (var a = 0u; a < OUTS * GEMV_ROWS; a++) {
        st_set(a * GEMV_WG + t, acc[a]);
    }
    workgroupBarrier();
    if (t < nr) {
        var z = 0.0;
        var z2 = 0.0;
        for (var k = 0u; k < GEMV_WG; k++) {
            z += st(t * GEMV_WG + k);
        }
        if (OUTS == 2u) {
            for (var k = 0u; k < GEMV_WG; k++) {
                z2 += st((GEMV_ROWS + t) * GEMV_WG + k);
            }
        }
        store(r0 + t, u, z, z2);
    }
}

// ---- GEMV by outputs: no workgroup memory, no barrier ----------------------------------
// One invocation per output unit u and block of GEMV_ROWS rows, walking all of n_in
// itself. For CPU adapters (lavapipe, llvmpipe, SwiftShader), where a barrier and
// workgroup memory cost more than the coalescing they buy (and WebGPU zero-fills
// workgroup memory on every workgroup). Workgroup = GEMV_WG consecutive units.
@compute @workgroup_size(GEMV_WG)
fn gemv_outputs(@builtin(local_invocation_index) t: u32,
                @builtin(workgroup_id) wid: vec3<u32>) {
    let units = params().n_out / OUTS;
    let b = gemv_block(wid, units, GEMV_WG);
    if (!b.valid) {
        return;
    }
    let u = b.first + t;
    let r0 = b.r0;
    let nr = b.nr;
    stage_block(t, b);
    if (u >= units) {
        return;  // no barrier below: invocations may leave on their own
    }
    var acc: array<f32, MAX_GEMV_ROWS>;
    for (var k = 0u; k < OUTS; k++) {
        dot_rows(&acc, k * GEMV_ROWS, u * OUTS + k, r0, nr, 0u, 1u);
    }
    for (var r = 0u; r < nr; r++) {
        store(r0 + r, u, acc[r], acc[min(GEMV_ROWS + r, MAX_GEMV_ROWS - 1u)]);
    }
}

// ---- GEMV by outputs, wide: gemv_outputs reading 16 bytes per step ----------------------
// The same work split as gemv_outputs (an invocation per output unit, no barrier), each
// invocation walking its row a vec4<u32> at a time (8 f16 weights, 16 q8 or 32 q4 levels)
// with the inputs under them as vec4s, as gemv_wide's lanes do: a quarter of the loop
// iterations of gemv_outputs per weight, which is what a CPU adapter pays for. Needs
// rows as gemv_wide's (the host checks). An invocation takes GEMV_UNITS consecutive units,
// sharing each load of the inputs among them.
@compute @workgroup_size(GEMV_WG)
fn gemv_outputs_wide(@builtin(local_invocation_index) t: u32,
                     @builtin(workgroup_id) wid: vec3<u32>) {
    let units = params().n_out / OUTS;
    let b = gemv_block(wid, units, GEMV_WG * GEMV_UNITS);
    if (!b.valid) {
        return;
    }
    let u0 = b.first + t * GEMV_UNITS;
    let r0 = b.r0;
    let nr = b.nr;
    stage_block4(t, b);
    if (u0 >= units) {
        return;  // no barrier below: invocations may leave on their own
    }
    var acc: array<f32, MAX_GEMV_ROWS>;
    dot_rows_wide(&acc, u0 * OUTS, r0, nr, 0u, 1u);
    for (var q = 0u; q < GEMV_UNITS; q++) {
        if (u0 + q < units) {
            let a = q * OUTS * GEMV_ROWS;
            for (var r = 0u; r < nr; r++) {
                store(r0 + r, u0 + q, acc[a + r],
                      acc[min(a + GEMV_ROWS + r, MAX_GEMV_ROWS - 1u)]);
            }
        }
    }
}

// ---- GEMV by columns: a transposed f16 w (W_T) on CPU adapters -------------------------
// One invocation per word column: outputs 2c and 2c + 1 (with EPI_SWIGLU, gate and up of
// unit c: interleaved rows are neighbours), walking the inputs; neighbouring invocations
// read neighbouring words of each input's run (one vector load where the adapter runs
// invocations as SIMD lanes, instead of a gather across rows) and share the input value.
// No workgroup memory or barrier but a prologue's. Workgroup = GEMV_WG word columns.
@compute @workgroup_size(GEMV_WG)
fn gemv_cols(@builtin(local_invocation_index) t: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let pairs = params().n_out / 2u;
    let b = gemv_block(wid, pairs, GEMV_WG);
    if (!b.valid) {
        return;
    }
    let c = b.first + t;
    let r0 = b.r0;
    let nr = b.nr;
    stage_block(t, b);
    if (c >= pairs) {
        return;  // no barrier below
    }
    // acc[r] and acc2[r]: outputs 2c and 2c + 1 of row r0 + r.
    var acc: array<f32, MAX_GEMV_ROWS>;
    var acc2: array<f32, MAX_GEMV_ROWS>;
    for (var i = 0u; i < params().n_in; i++) {
        let wv = unpack2x16float(w[i * pairs + c]);
        for (var r = 0u; r < GEMV_ROWS; r++) {
            let v = xin(r0 + min(r, nr - 1u), i);
            acc[r] += wv.x * v;
            acc2[r] += wv.y * v;
        }
    }
    for (var r = 0u; r < nr; r++) {
        if (OUTS == 2u) {
            store(r0 + r, c, acc[r], acc2[r]);
        } else {
            store(r0 + r, 2u * c, acc[r], 0.0);
            store(r0 + r, 2u * c + 1u, acc2[r], 0.0);
        }
    }
}

// ---- GEMV, wide: 16-byte loads, a lane group per output unit -------------------------
// For GPUs. A workgroup of GEMV_WG invocations is WIDE_UNITS lane groups of WIDE_LANES;
// lane group g takes output unit u = WIDE_UNITS * (workgroup's unit block) + g for one
// block of GEMV_ROWS rows. Each lane reads a vec4<u32> of w per step (8 f16 weights, 16 q8
// or 32 q4 levels, 4 f32) and the inputs under it as vec4<f32>, striding by the group's
// WIDE_LANES x 16 bytes, so a group streams its row in 512-byte runs. Then one barrier
// and WIDE_UNITS x GEMV_ROWS lanes each add WIDE_LANES partials. Needs rows of whole
// vec4s of w and of x: n_in a multiple of 8 in f16, else of 4 (a quantized row is whole
// blocks); the host checks (wide_align in src/ops/matmul.rs).
// Must match GEMV_WIDE_LANES on the host; WIDE_UNITS = GEMV_WG / WIDE_LANES.
const WIDE_LANES: u32 = 32u;
override WIDE_UNITS: u32 = GEMV_WG / WIDE_LANES;

// Input vec4 k (inputs 4k .. 4k + 3) of row r of x.
fn x_at(r: u32, k: u32) -> vec4<f32> {
    if (staged()) {
        return stage[(r - stage_r0) * (params().n_in / 4u) + k];
    }
    return x4[r * (params().n_in / 4u) + k];
}

// Scale s (row o's block b is s = o * blocks + b) of a quantized w, read through w4.
fn wide_scale(s: u32) -> f32 {
    let word = params().n_out * row_words() + (s >> 1u);
    let pair = unpack2x16float(w4[word >> 2u][word & 3u]);
    return select(pair.x, pair.y, (s & 1u) == 1u);
}

// vec4<u32>s of w per row, and the inputs each covers: 4 f32, 8 f16, a quantized row's
// whole blocks (its last padded with level 0 where n_in % QBLOCK != 0, as the shipped FFN's
// 688) of 4 x VPW levels a vec4.
fn row_vecs() -> u32 {
    if (W_FMT == W_F16) {
        return params().n_in / 8u;
    }
    if (quantized()) {
        return row_words() / 4u;
    }
    return params().n_in / 4u;
}

fn inputs_per_vec() -> u32 {
    if (W_FMT == W_F16) {
        return 8u;
    }
    if (quantized()) {
        return 4u * VPW;
    }
    return 4u;
}

// Output rows per call of dot_rows_wide: OUTS per unit, GEMV_UNITS units (consecutive, so
// rows o0 .. o0 + wide_outputs() - 1). Their GEMV_ROWS x wide_outputs() sums fit acc: the
// host keeps GEMV_ROWS <= MAX_GEMV_ROWS / (OUTS x GEMV_UNITS) (src/ops/matmul.rs).
fn wide_outputs() -> u32 {
    return OUTS * GEMV_UNITS;
}

// Adds rows o0 .. o0 + wide_outputs() - 1 of w (a row past n_out reads the last one; its
// sums are not stored) times rows r0 .. r0 + GEMV_ROWS of x into acc[m * GEMV_ROWS + r]
// (output m, row r), taking the rows' vec4s lane, lane + step, ... (gemv_wide: a lane of
// its group, step WIDE_LANES; gemv_outputs_wide: the whole row, 0 and 1), two a loop
// iteration: a CPU adapter pays per iteration (on lavapipe the decode step took 0.9x the
// time of one a loop). Each output's sums are the same, in the same order, whatever the
// number of outputs: the inputs under a vec4 are read once for all of them (a CPU adapter
// pays per load, lane by lane).
fn dot_rows_wide(acc: ptr<function, array<f32, MAX_GEMV_ROWS>>, o0: u32, r0: u32, nr: u32,
                 lane: u32, step: u32) {
    let vecs = row_vecs();
    var j = lane;
    for (; j + step < vecs; j += 2u * step) {
        dot_vec_wide(acc, o0, r0, nr, j);
        dot_vec_wide(acc, o0, r0, nr, j + step);
    }
    if (j < vecs) {
        dot_vec_wide(acc, o0, r0, nr, j);
    }
}

// dot_rows_wide's work for vec4 j of the rows. A quantized vec4 is taken a word (4 or 8
// inputs) at a time: the inputs under one word are in registers at once, not the 32 under
// a q4 vec4 (on lavapipe 32 floats of 8 lanes spill).
fn dot_vec_wide(acc: ptr<function, array<f32, MAX_GEMV_ROWS>>, o0: u32, r0: u32, nr: u32,
                j: u32) {
    var wv: array<vec4<u32>, MAX_GEMV_ROWS>;
    var scale: array<f32, MAX_GEMV_ROWS>;
    // A quantized row's sums before the scale, zeroed for each row below. Declared here,
    // not in the row loop: declared there, both browsers (Chromium 156, Firefox 153)
    // decoded quantized models wrongly from the first prefill of several rows, as if it
    // kept the previous row's sums (native Vulkan and GL were right; the e2e checks).
    var z: array<f32, MAX_GEMV_ROWS>;
    for (var m = 0u; m < wide_outputs(); m++) {
        let o = min(o0 + m, params().n_out - 1u);
        wv[m] = w4[o * row_vecs() + j];
        if (quantized()) {
            let blocks = (params().n_in + QBLOCK - 1u) / QBLOCK;
            scale[m] = wide_scale(o * blocks + j * inputs_per_vec() / QBLOCK);
        }
    }
    let k = j * (inputs_per_vec() / 4u);  // first input vec4 under the vec4s of w
    for (var r = 0u; r < GEMV_ROWS; r++) {
        let row = r0 + min(r, nr - 1u);
        if (W_FMT == W_F32) {
            let x = x_at(row, k);
            for (var m = 0u; m < wide_outputs(); m++) {
                (*acc)[m * GEMV_ROWS + r] += dot(bitcast<vec4<f32>>(wv[m]), x);
            }
        } else if (W_FMT == W_F16) {
            let x0 = x_at(row, k);
            let x1 = x_at(row, k + 1u);
            for (var m = 0u; m < wide_outputs(); m++) {
                let a = vec4<f32>(unpack2x16float(wv[m].x), unpack2x16float(wv[m].y));
                let b = vec4<f32>(unpack2x16float(wv[m].z), unpack2x16float(wv[m].w));
                (*acc)[m * GEMV_ROWS + r] += dot(a, x0) + dot(b, x1);
            }
        } else {
            // Word c's levels times its inputs, summed over the words, then times the
            // block's scale.
            let last = params().n_in / 4u - 1u;
            for (var m = 0u; m < wide_outputs(); m++) {
                z[m] = 0.0;
            }
            for (var c = 0u; c < 4u; c++) {
                let xs = word_inputs(row, k, c, last);
                for (var m = 0u; m < wide_outputs(); m++) {
                    z[m] += word_dot(word_of(wv[m], c), xs);
                }
            }
            for (var m = 0u; m < wide_outputs(); m++) {
                (*acc)[m * GEMV_ROWS + r] += scale[m] * z[m];
            }
        }
    }
}

// The inputs under word c of a quantized vec4 of w whose first input vec4 is k: lo (and
// with 8 levels a word, hi). Those under a row's padding are read clamped to the row's
// last vec4, as dot_rows clamps: nothing past the row is touched, and each adds 0 (level 0).
struct WordInputs {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn word_inputs(row: u32, k: u32, c: u32, last: u32) -> WordInputs {
    var xs: WordInputs;
    if (VPW == 8u) {
        xs.lo = x_at(row, min(k + 2u * c, last));
        xs.hi = x_at(row, min(k + 2u * c + 1u, last));
    } else {
        xs.lo = x_at(row, min(k + c, last));
    }
    return xs;
}

// Word c of v, by constant components (no runtime index into a vector).
fn word_of(v: vec4<u32>, c: u32) -> u32 {
    return select(select(v.x, v.y, c == 1u), select(v.z, v.w, c == 3u), c >= 2u);
}

// A word's levels times the inputs under it.
fn word_dot(word: u32, xs: WordInputs) -> f32 {
    var d = dot(levels_lo(word), xs.lo);
    if (VPW == 8u) {
        d += dot(levels_hi(word), xs.hi);
    }
    return d;
}

@compute @workgroup_size(GEMV_WG)
fn gemv_wide(@builtin(local_invocation_index) t: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let units = params().n_out / OUTS;
    let b = gemv_block(wid, units, WIDE_UNITS);
    if (!b.valid) {
        return;
    }
    let g = t / WIDE_LANES;
    let lane = t % WIDE_LANES;
    let u = b.first + g;
    let r0 = b.r0;
    let nr = b.nr;
    stage_block4(t, b);
    var acc: array<f32, MAX_GEMV_ROWS>;
    if (u < units) {
        dot_rows_wide(&acc, u * OUTS, r0, nr, lane, WIDE_LANES);
    }
    if (staged()) {
        workgroupBarrier();  // the partial sums below overwrite the staged inputs
    }
    // Accumulator a of invocation t at stage[t * MAX_GEMV_ROWS + a].
    for (var a = 0u; a < OUTS * GEMV_ROWS; a++) {
        st_set(t * MAX_GEMV_ROWS + a, acc[a]);
    }
    workgroupBarrier();
    // Lane r < nr of each group adds its unit's row r.
    if (u < units && lane < nr) {
        let first = g * WIDE_LANES;
        var z = 0.0;
        var z2 = 0.0;
        for (var k = 0u; k < WIDE_LANES; k++) {
            z += st((first + k) * MAX_GEMV_ROWS + lane);
            if (OUTS == 2u) {
                z2 += st((first + k) * MAX_GEMV_ROWS + GEMV_ROWS + lane);
            }
        }
        store(r0 + lane, u, z, z2);
    }
}

// ---- GEMM: prefill-sized batches -----------------------------------------------------
// A workgroup computes a TILE_R x TILE_O block of y with 16 x 16 invocations, each owning
// a 4 x 4 sub-block; K is walked in steps of TILE_K through workgroup memory:
// xs[TILE_R][TILE_K] and ws[TILE_K][TILE_O] (8 KiB together). ws is k-major so the
// inner loop reads each invocation's 4 outputs as one run of 4 floats: neighbouring
// invocations (lid.x) read neighbouring runs, where an output-major ws put all 16 of a
// row of invocations on one bank (a 16-way conflict). A quantized w's block scale is read
// once per invocation and slab: TILE_K divides QBLOCK, so an invocation's 4 values of a
// row (one run of 4 along k) share a block.
// Must match GEMM_TILE on the host (rows and outputs per tile).
const TILE_R: u32 = 64u;
const TILE_O: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> xs: array<array<f32, TILE_K>, TILE_R>;
var<workgroup> ws: array<array<f32, TILE_O>, TILE_K>;

// The first row and output of workgroup `wid`'s tile, and 0 past the last tile (else 1).
fn gemm_origin(wid: vec3<u32>) -> vec3<u32> {
    let id = wid.y * params().tiles_x + wid.x;
    let tiles_o = (params().n_out + TILE_O - 1u) / TILE_O;
    let tiles_r = (params().rows + TILE_R - 1u) / TILE_R;
    return vec3<u32>((id / tiles_o) * TILE_R, (id % tiles_o) * TILE_O,
                     select(0u, 1u, id < tiles_o * tiles_r));
}

// Stages the slab of k0 .. k0 + TILE_K: x's rows row0 .. row0 + TILE_R into xs and w's
// outputs out0 .. out0 + TILE_O into ws; each of gemm's 256 invocations loads
// TILE_R * TILE_K / 256 values of each operand, zero past the edges.
fn stage_slab(t: u32, row0: u32, out0: u32, k0: u32) {
    let inv = 256u;
    let per = TILE_R * TILE_K / inv;
    var scale = 0.0;
    for (var e = 0u; e < per; e++) {
        let flat = t * per + e;
        let rr = flat / TILE_K;
        let kk = flat % TILE_K;
        let k = k0 + kk;
        var xv = 0.0;
        if (row0 + rr < params().rows && k < params().n_in) {
            xv = x[(row0 + rr) * params().n_in + k];
        }
        xs[rr][kk] = xv;
        // A transposed w is read with neighbouring invocations on neighbouring
        // outputs, which are neighbouring halves there (no gather on CPU adapters).
        var ro = rr;
        var ko = kk;
        if (W_T) {
            let f = e * inv + t;
            ro = f % TILE_O;
            ko = f / TILE_O;
        }
        var wv = 0.0;
        if (out0 + ro < params().n_out && k0 + ko < params().n_in) {
            if (quantized()) {
                if (e == 0u) {  // ro and the block are the same for e = 0 .. per - 1
                    scale = block_scale(out0 + ro, (k0 + ko) / QBLOCK);
                }
                wv = scale * level_at(out0 + ro, k0 + ko);
            } else {
                wv = weight_at(out0 + ro, k0 + ko);
            }
        }
        ws[ko][ro] = wv;
    }
}

@compute @workgroup_size(16, 16)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) t: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let origin = gemm_origin(wid);
    if (origin.z == 0u) {
        return;  // whole workgroup: uniform
    }
    let row0 = origin.x;
    let out0 = origin.y;
    // The 4 x 4 block in four vec4 registers (row i of the block in acc_i): no arrays to
    // index, so the accumulators stay in registers on every compiler.
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    let ry = lid.y * 4u;
    let ox = lid.x * 4u;
    for (var k0 = 0u; k0 < params().n_in; k0 += TILE_K) {
        stage_slab(t, row0, out0, k0);
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = vec4<f32>(xs[ry][kk], xs[ry + 1u][kk], xs[ry + 2u][kk], xs[ry + 3u][kk]);
            let b = vec4<f32>(ws[kk][ox], ws[kk][ox + 1u], ws[kk][ox + 2u], ws[kk][ox + 3u]);
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    store4(row0 + ry, out0 + ox, acc0);
    store4(row0 + ry + 1u, out0 + ox, acc1);
    store4(row0 + ry + 2u, out0 + ox, acc2);
    store4(row0 + ry + 3u, out0 + ox, acc3);
}

// CPU adapters (Gpu::favours_registers): the same 64 x 64 tile with no workgroup memory.
// Their compilers load workgroup and storage memory alike, lane by lane (a loop over the
// SIMD lanes per value), and keep registers cheap, so each of 32 invocations owns 8 rows x
// 16 outputs and reads its inputs and weights from x and w itself, two k a step: per step
// 16 inputs and 16 weight pairs for 256 multiply-adds, where gemm8 (8 x 8 of 8 x 8 through
// workgroup memory) read 32 values for 128 and staged the slabs besides. Row i of the
// block is in a_i, a mat4x4 (output 4c + j of the block at a_i[c][j]) named, not indexed:
// an indexed array stayed in memory on lavapipe. Rows and outputs past the edges are read
// clamped and not stored; a k past n_in has weight 0. The sums are gemm's, k after k.
// f16 weights take the vec4 forms below (gemm_direct4, gemm_direct4_t): fewer, wider loads.
@compute @workgroup_size(32)
fn gemm_direct(@builtin(local_invocation_index) t: u32,
               @builtin(workgroup_id) wid: vec3<u32>) {
    let origin = gemm_origin(wid);
    if (origin.z == 0u) {
        return;
    }
    let r0 = origin.x + (t / 4u) * 8u;   // GEMM_DIRECT_BLOCK on the host: 8 x 16, 32 of them
    let o0 = origin.y + (t % 4u) * 16u;
    let n = params().n_in;
    let x0 = min(r0 + 0u, params().rows - 1u) * n;
    let x1 = min(r0 + 1u, params().rows - 1u) * n;
    let x2 = min(r0 + 2u, params().rows - 1u) * n;
    let x3 = min(r0 + 3u, params().rows - 1u) * n;
    let x4 = min(r0 + 4u, params().rows - 1u) * n;
    let x5 = min(r0 + 5u, params().rows - 1u) * n;
    let x6 = min(r0 + 6u, params().rows - 1u) * n;
    let x7 = min(r0 + 7u, params().rows - 1u) * n;
    var a0 = mat4x4<f32>();
    var a1 = mat4x4<f32>();
    var a2 = mat4x4<f32>();
    var a3 = mat4x4<f32>();
    var a4 = mat4x4<f32>();
    var a5 = mat4x4<f32>();
    var a6 = mat4x4<f32>();
    var a7 = mat4x4<f32>();
    for (var k = 0u; k < n; k += 2u) {
        // Weights (o0 + 4c + j, k) in e[c][j] and (.., k + 1) in f[c][j].
        let q0 = weight_quad(o0, k);
        let q1 = weight_quad(o0 + 4u, k);
        let q2 = weight_quad(o0 + 8u, k);
        let q3 = weight_quad(o0 + 12u, k);
        let e = mat4x4<f32>(q0[0], q1[0], q2[0], q3[0]);
        let f = mat4x4<f32>(q0[1], q1[1], q2[1], q3[1]);
        fold_pair(&a0, x0, k, e, f);
        fold_pair(&a1, x1, k, e, f);
        fold_pair(&a2, x2, k, e, f);
        fold_pair(&a3, x3, k, e, f);
        fold_pair(&a4, x4, k, e, f);
        fold_pair(&a5, x5, k, e, f);
        fold_pair(&a6, x6, k, e, f);
        fold_pair(&a7, x7, k, e, f);
    }
    store16(r0 + 0u, o0, a0);
    store16(r0 + 1u, o0, a1);
    store16(r0 + 2u, o0, a2);
    store16(r0 + 3u, o0, a3);
    store16(r0 + 4u, o0, a4);
    store16(r0 + 5u, o0, a5);
    store16(r0 + 6u, o0, a6);
    store16(r0 + 7u, o0, a7);
}

// gemm_direct over a transposed f16 w (W_T; the CPU adapters' untuned f16 layout) whose
// n_out is a multiple of 16 and n_in of 4 (the host's gemm_direct4): the 16 weights of a
// block's outputs at input k are two vec4s of w4, where gemm_direct loads 16 words, and
// four inputs of a row one vec4 of x4, where it loads four values. The same products
// added to the same sums in the same order, k after k. A block past n_out reads the last
// 16 outputs' weights (not stored). The four inputs of a vec4 are written out (fold_vec by
// constant columns): indexed by a loop, they stayed in memory (1.4x the time).
@compute @workgroup_size(32)
fn gemm_direct4_t(@builtin(local_invocation_index) t: u32,
                  @builtin(workgroup_id) wid: vec3<u32>) {
    let origin = gemm_origin(wid);
    if (origin.z == 0u) {
        return;
    }
    let b = gemm_block(t, origin);
    let n_out = params().n_out;
    // The vec4 of w4 holding outputs 8 oc .. 8 oc + 7 at input 0 (the block's first 8; the
    // next vec4 the other 8); an input's row of w is n_out / 8 vec4s.
    let oc = min(b.o0, n_out - 16u) / 8u;
    let stride = n_out / 8u;
    var acc = Block8();
    for (var k4 = 0u; k4 < params().n_in / 4u; k4++) {
        let x = block_inputs(b, k4);
        // Input 4 k4 + j's weights: the vec4 pair j rows of w below.
        let w0 = 4u * k4 * stride + oc;
        let w1 = w0 + stride;
        let w2 = w1 + stride;
        let w3 = w2 + stride;
        fold_vec(&acc, x,
                 PairBlock(f16_block(w4[w0], w4[w0 + 1u]), f16_block(w4[w1], w4[w1 + 1u])),
                 PairBlock(f16_block(w4[w2], w4[w2 + 1u]), f16_block(w4[w3], w4[w3 + 1u])));
    }
    store_block(b, acc);
}

// gemm_direct over a row-major f16 w whose n_in is a multiple of 8 (the host's
// gemm_direct4): eight weights of an output are one vec4 of w4, where gemm_direct loads
// four words, and four inputs of a row one vec4 of x4. The same products added to the
// same sums in the same order, k after k. Outputs past n_out read row n_out - 1 (not
// stored). The four words of a vec4 are written out: indexed by a loop, they stayed in
// memory (2.4x the time).
@compute @workgroup_size(32)
fn gemm_direct4(@builtin(local_invocation_index) t: u32,
                @builtin(workgroup_id) wid: vec3<u32>) {
    let origin = gemm_origin(wid);
    if (origin.z == 0u) {
        return;
    }
    let b = gemm_block(t, origin);
    var acc = Block8();
    for (var k8 = 0u; k8 < params().n_in / 8u; k8++) {
        // Output o0 + i's weights at inputs 8 k8 .. 8 k8 + 7 (four words of two) in q_i.
        let q = weight_vecs(b.o0, k8);
        // Word j holds inputs 8 k8 + 2j and 2j + 1: of x's first vec4 for j < 2.
        fold_vec(&acc, block_inputs(b, 2u * k8), word_block(q, 0u), word_block(q, 1u));
        fold_vec(&acc, block_inputs(b, 2u * k8 + 1u), word_block(q, 2u), word_block(q, 3u));
    }
    store_block(b, acc);
}

// gemm_direct over a row-major q8 or q4 w whose n_in is a multiple of 4 (the host's
// gemm_direct4): a vec4 of an output's levels (a q4 block, half a q8 block) is one load,
// where gemm_direct loads a word and the block's scale for each pair of inputs, and four
// inputs of a row one vec4 of x4. Each weight is scale x level, and the products are added
// to the same sums in the same order, k after k, as gemm_direct; the last block's padding
// (level 0) adds zeros. Words and level pairs written out, as gemm_direct4's.
@compute @workgroup_size(32)
fn gemm_direct4_q(@builtin(local_invocation_index) t: u32,
                  @builtin(workgroup_id) wid: vec3<u32>) {
    let origin = gemm_origin(wid);
    if (origin.z == 0u) {
        return;
    }
    let b = gemm_block(t, origin);
    var acc = Block8();
    for (var j = 0u; j < row_vecs(); j++) {
        let q = weight_vecs(b.o0, j);
        let sc = block_scales(b.o0, j * inputs_per_vec() / QBLOCK);
        let k4 = j * inputs_per_vec() / 4u;  // the first input vec4 under vec4 j
        // Word c's levels in slots 0, 1, ...: a q4 word under input vec4s 2c and 2c + 1, a
        // q8 word under vec4 c.
        if (VPW == 8u) {
            q4_word(&acc, b, q, sc, k4, 0u);
            q4_word(&acc, b, q, sc, k4, 1u);
            q4_word(&acc, b, q, sc, k4, 2u);
            q4_word(&acc, b, q, sc, k4, 3u);
        } else {
            q8_word(&acc, b, q, sc, k4, 0u);
            q8_word(&acc, b, q, sc, k4, 1u);
            q8_word(&acc, b, q, sc, k4, 2u);
            q8_word(&acc, b, q, sc, k4, 3u);
        }
    }
    store_block(b, acc);
}

// Word c of a q4 block: its eight levels under input vec4s k4 + 2c and k4 + 2c + 1.
fn q4_word(acc: ptr<function, Block8>, b: GemmBlock, q: WeightVecs, sc: mat4x4<f32>,
           k4: u32, c: u32) {
    fold_vec(acc, block_inputs(b, k4 + 2u * c), level_pair(q, sc, c, 0u),
             level_pair(q, sc, c, 2u));
    fold_vec(acc, block_inputs(b, k4 + 2u * c + 1u), level_pair(q, sc, c, 4u),
             level_pair(q, sc, c, 6u));
}

// Word c of half a q8 block: its four levels under input vec4 k4 + c.
fn q8_word(acc: ptr<function, Block8>, b: GemmBlock, q: WeightVecs, sc: mat4x4<f32>,
           k4: u32, c: u32) {
    fold_vec(acc, block_inputs(b, k4 + c), level_pair(q, sc, c, 0u), level_pair(q, sc, c, 2u));
}

// The scales of block `blk` of outputs o0 .. o0 + 15 (past n_out: the last's), output
// 4c + j at [c][j].
fn block_scales(o0: u32, blk: u32) -> mat4x4<f32> {
    let blocks = (params().n_in + QBLOCK - 1u) / QBLOCK;
    let n = params().n_out - 1u;
    var m: mat4x4<f32>;
    for (var c = 0u; c < 4u; c++) {
        let o = o0 + 4u * c;
        m[c] = vec4<f32>(wide_scale(min(o, n) * blocks + blk),
                         wide_scale(min(o + 1u, n) * blocks + blk),
                         wide_scale(min(o + 2u, n) * blocks + blk),
                         wide_scale(min(o + 3u, n) * blocks + blk));
    }
    return m;
}

// The weights (scale x level) of slots `slot` and slot + 1 of word c of the 16 outputs'
// vec4s: gemm_direct's weight pair, as the block's columns e and f.
fn level_pair(q: WeightVecs, sc: mat4x4<f32>, c: u32, slot: u32) -> PairBlock {
    let w0 = vec4<u32>(word_of(q.q0, c), word_of(q.q1, c), word_of(q.q2, c), word_of(q.q3, c));
    let w1 = vec4<u32>(word_of(q.q4, c), word_of(q.q5, c), word_of(q.q6, c), word_of(q.q7, c));
    let w2 = vec4<u32>(word_of(q.q8, c), word_of(q.q9, c), word_of(q.q10, c),
                       word_of(q.q11, c));
    let w3 = vec4<u32>(word_of(q.q12, c), word_of(q.q13, c), word_of(q.q14, c),
                       word_of(q.q15, c));
    return PairBlock(mat4x4<f32>(sc[0] * levels4(w0, slot), sc[1] * levels4(w1, slot),
                                 sc[2] * levels4(w2, slot), sc[3] * levels4(w3, slot)),
                     mat4x4<f32>(sc[0] * levels4(w0, slot + 1u),
                                 sc[1] * levels4(w1, slot + 1u),
                                 sc[2] * levels4(w2, slot + 1u),
                                 sc[3] * levels4(w3, slot + 1u)));
}

// level_in of four words' slot `slot`.
fn levels4(w: vec4<u32>, slot: u32) -> vec4<f32> {
    if (W_FMT == W_Q8) {
        return vec4<f32>(bitcast<vec4<i32>>(w << vec4<u32>(24u - 8u * slot)) >> vec4<u32>(24u));
    }
    return vec4<f32>(vec4<i32>((w >> vec4<u32>(4u * slot)) & vec4<u32>(15u)) - vec4<i32>(8));
}

// A gemm_direct4 invocation's block: rows r0 .. r0 + 7, outputs o0 .. o0 + 15 (as
// gemm_direct: 32 blocks of 8 x 16 a tile), and the x4 index of each row's first vec4
// (rows past the batch clamped to its last).
struct GemmBlock {
    r0: u32,
    o0: u32,
    rows_lo: vec4<u32>,
    rows_hi: vec4<u32>,
}

fn gemm_block(t: u32, origin: vec3<u32>) -> GemmBlock {
    let r0 = origin.x + (t / 4u) * 8u;
    let last = vec4<u32>(params().rows - 1u);
    let n4 = params().n_in / 4u;
    return GemmBlock(r0, origin.y + (t % 4u) * 16u,
                     min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), last) * n4,
                     min(vec4<u32>(r0) + vec4<u32>(4u, 5u, 6u, 7u), last) * n4);
}

// Vec4 v of the block's eight rows, transposed: lo[j] holds input 4 v + j of rows 0..3,
// hi[j] of rows 4..7 (fold8's operands, by constant column). Past the row (the padding of
// a quantized row's last block, whose levels are 0) its last vec4 is read.
struct BlockInputs {
    lo: mat4x4<f32>,
    hi: mat4x4<f32>,
}

fn block_inputs(b: GemmBlock, v: u32) -> BlockInputs {
    // Clamped under a quantized row's padding (level 0): f16 rows are whole vec4s.
    let k4 = select(v, min(v, params().n_in / 4u - 1u), quantized());
    let lo = mat4x4<f32>(x4[b.rows_lo.x + k4], x4[b.rows_lo.y + k4], x4[b.rows_lo.z + k4],
                         x4[b.rows_lo.w + k4]);
    let hi = mat4x4<f32>(x4[b.rows_hi.x + k4], x4[b.rows_hi.y + k4], x4[b.rows_hi.z + k4],
                         x4[b.rows_hi.w + k4]);
    return BlockInputs(transpose(lo), transpose(hi));
}

// The sums of a gemm_direct4 block: row i in a_i (output 4c + j at [c][j]), named members
// (registers), not an indexed array (memory).
struct Block8 {
    a0: mat4x4<f32>,
    a1: mat4x4<f32>,
    a2: mat4x4<f32>,
    a3: mat4x4<f32>,
    a4: mat4x4<f32>,
    a5: mat4x4<f32>,
    a6: mat4x4<f32>,
    a7: mat4x4<f32>,
}

// Rows 0..7 of a block += their input (lo: rows 0..3, hi: 4..7) times the weights e of
// that input (output 4c + j at [c][j]).
fn fold8(acc: ptr<function, Block8>, lo: vec4<f32>, hi: vec4<f32>, e: mat4x4<f32>) {
    (*acc).a0 += lo.x * e;
    (*acc).a1 += lo.y * e;
    (*acc).a2 += lo.z * e;
    (*acc).a3 += lo.w * e;
    (*acc).a4 += hi.x * e;
    (*acc).a5 += hi.y * e;
    (*acc).a6 += hi.z * e;
    (*acc).a7 += hi.w * e;
}

// The four inputs of vec4 x into the block's sums, in order: inputs 0 and 1 times p's
// weights e and f, 2 and 3 times r's.
fn fold_vec(acc: ptr<function, Block8>, x: BlockInputs, p: PairBlock, r: PairBlock) {
    fold8(acc, x.lo[0], x.hi[0], p.e);
    fold8(acc, x.lo[1], x.hi[1], p.f);
    fold8(acc, x.lo[2], x.hi[2], r.e);
    fold8(acc, x.lo[3], x.hi[3], r.f);
}

fn store_block(b: GemmBlock, acc: Block8) {
    store16(b.r0, b.o0, acc.a0);
    store16(b.r0 + 1u, b.o0, acc.a1);
    store16(b.r0 + 2u, b.o0, acc.a2);
    store16(b.r0 + 3u, b.o0, acc.a3);
    store16(b.r0 + 4u, b.o0, acc.a4);
    store16(b.r0 + 5u, b.o0, acc.a5);
    store16(b.r0 + 6u, b.o0, acc.a6);
    store16(b.r0 + 7u, b.o0, acc.a7);
}

// Vec4 j of the rows of outputs o0 .. o0 + 15 of w4 (row_vecs() a row; a row past n_out
// reads the last).
fn weight_vecs(o0: u32, j: u32) -> WeightVecs {
    let n = params().n_out - 1u;
    let s = row_vecs();
    return WeightVecs(w4[min(o0, n) * s + j], w4[min(o0 + 1u, n) * s + j],
                      w4[min(o0 + 2u, n) * s + j], w4[min(o0 + 3u, n) * s + j],
                      w4[min(o0 + 4u, n) * s + j], w4[min(o0 + 5u, n) * s + j],
                      w4[min(o0 + 6u, n) * s + j], w4[min(o0 + 7u, n) * s + j],
                      w4[min(o0 + 8u, n) * s + j], w4[min(o0 + 9u, n) * s + j],
                      w4[min(o0 + 10u, n) * s + j], w4[min(o0 + 11u, n) * s + j],
                      w4[min(o0 + 12u, n) * s + j], w4[min(o0 + 13u, n) * s + j],
                      w4[min(o0 + 14u, n) * s + j], w4[min(o0 + 15u, n) * s + j]);
}

// A gemm_direct4 block's 16 outputs' vec4s of weights (eight f16 or 4 x VPW levels each).
struct WeightVecs {
    q0: vec4<u32>, q1: vec4<u32>, q2: vec4<u32>, q3: vec4<u32>,
    q4: vec4<u32>, q5: vec4<u32>, q6: vec4<u32>, q7: vec4<u32>,
    q8: vec4<u32>, q9: vec4<u32>, q10: vec4<u32>, q11: vec4<u32>,
    q12: vec4<u32>, q13: vec4<u32>, q14: vec4<u32>, q15: vec4<u32>,
}

// The weights of word j (inputs 2j, 2j + 1 of the vec4s) as the block's columns e and f.
struct PairBlock {
    e: mat4x4<f32>,
    f: mat4x4<f32>,
}

fn word_block(q: WeightVecs, j: u32) -> PairBlock {
    let h0 = word_cols(word_of(q.q0, j), word_of(q.q1, j), word_of(q.q2, j), word_of(q.q3, j));
    let h1 = word_cols(word_of(q.q4, j), word_of(q.q5, j), word_of(q.q6, j), word_of(q.q7, j));
    let h2 = word_cols(word_of(q.q8, j), word_of(q.q9, j), word_of(q.q10, j), word_of(q.q11, j));
    let h3 = word_cols(word_of(q.q12, j), word_of(q.q13, j), word_of(q.q14, j),
                       word_of(q.q15, j));
    return PairBlock(mat4x4<f32>(h0[0], h1[0], h2[0], h3[0]),
                     mat4x4<f32>(h0[1], h1[1], h2[1], h3[1]));
}

// Four outputs' f16 weight pairs (a word each) as columns: the first halves, the second.
fn word_cols(a: u32, b: u32, c: u32, d: u32) -> mat2x4<f32> {
    let pa = unpack2x16float(a);
    let pb = unpack2x16float(b);
    let pc = unpack2x16float(c);
    let pd = unpack2x16float(d);
    return mat2x4<f32>(vec4<f32>(pa.x, pb.x, pc.x, pd.x), vec4<f32>(pa.y, pb.y, pc.y, pd.y));
}

// 16 f16 weights (8 words) as gemm_direct's block column: output 4c + j at [c][j].
fn f16_block(q0: vec4<u32>, q1: vec4<u32>) -> mat4x4<f32> {
    return mat4x4<f32>(vec4<f32>(unpack2x16float(q0.x), unpack2x16float(q0.y)),
                       vec4<f32>(unpack2x16float(q0.z), unpack2x16float(q0.w)),
                       vec4<f32>(unpack2x16float(q1.x), unpack2x16float(q1.y)),
                       vec4<f32>(unpack2x16float(q1.z), unpack2x16float(q1.w)));
}

// Weights (o, k) and (o, k + 1) of w (k even), 0 past n_in; past n_out, row n_out - 1's
// (gemm_direct does not store those outputs). One word for a pair of f16 halves or of
// quantized levels (both in one word and block; a quantized row is padded with level 0 to
// whole blocks) and the block's scale.
fn weight_pair_at(out: u32, k: u32) -> vec2<f32> {
    let n = params().n_in;
    let o = min(out, params().n_out - 1u);
    if (quantized()) {
        let word = w[level_word(o, k)];
        let slot = k % VPW;
        let levels = vec2<f32>(level_in(word, slot), level_in(word, slot + 1u));
        return block_scale(o, k / QBLOCK) * levels;
    }
    if (!W_T && n % 2u == 0u) {
        return weight_pair(o * n + k);  // both in one f16 word, or two f32 words
    }
    var p = vec2<f32>(weight_at(o, k), 0.0);
    if (k + 1u < n) {
        p.y = weight_at(o, k + 1u);
    }
    return p;
}

// Row `a` of a gemm_direct block += input k of the row at x[xr ..] times e, then input k + 1
// (clamped to the row's last; its weights are 0 past n_in) times f: k after k, as gemm.
fn fold_pair(a: ptr<function, mat4x4<f32>>, xr: u32, k: u32, e: mat4x4<f32>, f: mat4x4<f32>) {
    *a += x[xr + k] * e;
    *a += x[xr + min(k + 1u, params().n_in - 1u)] * f;
}

// Weights (o + j, k) in column 0, row j and (o + j, k + 1) in column 1, row j.
fn weight_quad(o: u32, k: u32) -> mat2x4<f32> {
    let p0 = weight_pair_at(o, k);
    let p1 = weight_pair_at(o + 1u, k);
    let p2 = weight_pair_at(o + 2u, k);
    let p3 = weight_pair_at(o + 3u, k);
    return mat2x4<f32>(vec4<f32>(p0.x, p1.x, p2.x, p3.x), vec4<f32>(p0.y, p1.y, p2.y, p3.y));
}

// Outputs o .. o + 15 of row r (o a multiple of 4), row i of a gemm_direct block.
fn store16(r: u32, o: u32, m: mat4x4<f32>) {
    store4(r, o, m[0]);
    store4(r, o + 4u, m[1]);
    store4(r, o + 8u, m[2]);
    store4(r, o + 12u, m[3]);
}

// Outputs o .. o + 3 of row r (o a multiple of 4), within bounds. With EPI_SWIGLU they
// are the units o / 2 and o / 2 + 1 (n_out is even, so a unit is never cut).
fn store4(r: u32, o: u32, v: vec4<f32>) {
    if (r >= params().rows) {
        return;
    }
    if (OUTS == 2u) {
        for (var j = 0u; j < 4u; j += 2u) {
            if (o + j < params().n_out) {
                store(r, (o + j) / 2u, v[j], v[j + 1u]);
            }
        }
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (o + j < params().n_out) {
            store(r, o + j, v[j], 0.0);
        }
    }
}
