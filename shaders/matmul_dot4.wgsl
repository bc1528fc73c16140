
// ---- matmul_dot4.wgsl: appended to matmul.wgsl (Shader::MatmulDot4) --------------------
// gemv_dot4: a q8 or q4 GEMV over activations quantized to 8 bits per block, with WGSL's
// dot4I8Packed (the packed_4x8_integer_dot_product language extension; naga emits
// OpSDot where the Vulkan device has VK_KHR_shader_integer_dot_product, a polyfill of
// bit-field extracts elsewhere, GLSL included). llama.cpp's q8_1 activations: each
// workgroup stages its GEMV_ROWS input rows (through the prologue when PRO != PRO_NONE,
// else straight from x), then quantizes each block of QBLOCK inputs of each row to int8
// levels round(x * 127 / amax) under one f32 scale amax / 127, four levels per u32 in
// workgroup memory. An output's dot per weight block is then integer dot4I8Packed of
// packed weight levels and packed activation levels, exact in i32, times weight scale x
// activation scale once per block.
//
// NOT exact: quantizing the activations changes the result (about 0.4% of a block's
// largest input per input), so greedy tokens may differ from the exact GEMVs'. The host
// never picks it by itself (Kernel::GemvDot4: measured by `walsh tune`, never chosen).
// Needs a q8 or q4 w, n_in % QBLOCK == 0 and GEMV_ROWS * n_in <= STAGE (the host checks).
//
// q4: a word holds levels 8c .. 8c + 7 as nibbles (level + 8, low nibble first), so
// `word & 0x0f0f0f0f` holds the nibbles of levels 8c, 8c + 2, 8c + 4, 8c + 6 as bytes
// and `(word >> 4) & 0x0f0f0f0f` those of 8c + 1, 8c + 3, ...: the activations of a q4
// block are packed in that order (even inputs of each 8, then odd ones), and the nibbles'
// offset is taken out once per block as 8 x the block's sum of activation levels.
//
// The CPU reference (`dot4_reference` in src/ops/matmul.rs) quantizes as this does.

// Lanes per output unit: 1 (an invocation per unit, CPU adapters) or a divisor of GEMV_WG
// whose partial sums are added through `stage` (GPUs: GEMV_DOT4_LANES on the host, which
// checks GEMV_WG * MAX_GEMV_ROWS <= STAGE).
override DOT4_LANES: u32 = 1u;
// Packed activation levels of the staged rows, blocks of row r at r * (n_in / QBLOCK):
// QBLOCK / 4 words per block, row r's word k at r * n_in / 4 + k; one scale and one sum
// of levels per block. Sized for GEMV_ROWS * n_in <= STAGE (DOT4_WORKGROUP_BYTES on the
// host counts these with `stage`, `sums` and `sums2`).
// (Named overrides: naga 30 panics on an expression as an array's size.)
override QX_WORDS: u32 = STAGE / 4u;
override Q_BLOCKS: u32 = STAGE / QBLOCK;
var<workgroup> qx: array<u32, QX_WORDS>;
var<workgroup> qscale: array<f32, Q_BLOCKS>;
var<workgroup> qsum: array<i32, Q_BLOCKS>;

// Input i of staged row r (0 .. nr) of the workgroup's block (x itself without a
// prologue).
fn dot4_input(r0: u32, r: u32, i: u32) -> f32 {
    if (staged()) {
        return st(r * params().n_in + i);
    }
    return x[(r0 + r) * params().n_in + i];
}

// Block index bi (row bi / blocks, block bi % blocks) quantized into qx, qscale, qsum.
fn dot4_quantize(r0: u32, bi: u32) {
    let blocks = params().n_in / QBLOCK;
    let r = bi / blocks;
    let first = (bi % blocks) * QBLOCK;
    var amax = 0.0;
    for (var e = 0u; e < QBLOCK; e++) {
        amax = max(amax, abs(dot4_input(r0, r, first + e)));
    }
    // Multiplying by 127 / amax (rounded once) is what the CPU reference does; the level
    // is clamped in case that rounding lands a hair past 127.
    let inv = select(0.0, 127.0 / amax, amax > 0.0);
    var total = 0;
    for (var k = 0u; k < QBLOCK / 4u; k++) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            // q8: inputs 4k .. 4k + 3; q4: inputs 8(k / 2) + k % 2 + 2j (see above).
            let e = select(4u * k + j, 8u * (k / 2u) + k % 2u + 2u * j, W_FMT == W_Q4);
            let q = i32(clamp(round(dot4_input(r0, r, first + e) * inv), -127.0, 127.0));
            total += q;
            word |= (bitcast<u32>(q) & 0xffu) << (8u * j);
        }
        qx[bi * (QBLOCK / 4u) + k] = word;
    }
    qscale[bi] = amax / 127.0;
    qsum[bi] = total;
}

// Adds row o of w times the packed rows 0 .. GEMV_ROWS (rows past nr repeat the last)
// into acc[a0 ..], taking blocks lane, lane + step, ...
fn dot4_rows(acc: ptr<function, array<f32, MAX_GEMV_ROWS>>, a0: u32, o: u32, nr: u32,
             lane: u32, step: u32) {
    let blocks = params().n_in / QBLOCK;
    let words = row_words();
    for (var b = lane; b < blocks; b += step) {
        let d = block_scale(o, b);
        var wv: array<u32, 8>;
        for (var k = 0u; k < WPB; k++) {
            wv[k] = w[o * words + b * WPB + k];
        }
        for (var r = 0u; r < GEMV_ROWS; r++) {
            let bi = min(r, nr - 1u) * blocks + b;
            let q0 = bi * (QBLOCK / 4u);
            var z = 0;
            if (W_FMT == W_Q8) {
                for (var k = 0u; k < 8u; k++) {
                    z += dot4I8Packed(wv[k], qx[q0 + k]);
                }
            } else {
                for (var k = 0u; k < 4u; k++) {
                    z += dot4I8Packed(wv[k] & 0x0f0f0f0fu, qx[q0 + 2u * k])
                        + dot4I8Packed((wv[k] >> 4u) & 0x0f0f0f0fu, qx[q0 + 2u * k + 1u]);
                }
                z -= 8 * qsum[bi];
            }
            (*acc)[a0 + r] += f32(z) * (d * qscale[bi]);
        }
    }
}

@compute @workgroup_size(GEMV_WG)
fn gemv_dot4(@builtin(local_invocation_index) t: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let units = params().n_out / OUTS;
    let b = gemv_block(wid, units, GEMV_WG / DOT4_LANES);
    if (!b.valid) {
        return;
    }
    let g = t / DOT4_LANES;
    let lane = t % DOT4_LANES;
    let u = b.first + g;
    let r0 = b.r0;
    let nr = b.nr;
    stage_block(t, b);
    for (var bi = t; bi < nr * (params().n_in / QBLOCK); bi += GEMV_WG) {
        dot4_quantize(r0, bi);
    }
    workgroupBarrier();
    var acc: array<f32, MAX_GEMV_ROWS>;
    if (u < units) {
        for (var k = 0u; k < OUTS; k++) {
            dot4_rows(&acc, k * GEMV_ROWS, u * OUTS + k, nr, lane, DOT4_LANES);
        }
    }
    if (DOT4_LANES == 1u) {
        if (u < units) {
            for (var r = 0u; r < nr; r++) {
                store(r0 + r, u, acc[r], acc[min(GEMV_ROWS + r, MAX_GEMV_ROWS - 1u)]);
            }
        }
        return;
    }
    // The lane groups' partial sums, as gemv_wide adds them (`stage` is no longer read:
    // the quantization above read it before the barrier).
    for (var a = 0u; a < OUTS * GEMV_ROWS; a++) {
        st_set(t * MAX_GEMV_ROWS + a, acc[a]);
    }
    workgroupBarrier();
    if (u < units && lane < nr) {
        let first = g * DOT4_LANES;
        var z = 0.0;
        var z2 = 0.0;
        for (var k = 0u; k < DOT4_LANES; k++) {
            z += st((first + k) * MAX_GEMV_ROWS + lane);
            if (OUTS == 2u) {
                z2 += st((first + k) * MAX_GEMV_ROWS + GEMV_ROWS + lane);
            }
        }
        store(r0 + lane, u, z, z2);
    }
}
