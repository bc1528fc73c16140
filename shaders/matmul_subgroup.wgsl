
// ---- matmul_subgroup.wgsl: appended to matmul.wgsl on adapters with SUBGROUP ----------
// gemv_subgroup: llama.cpp's `mul_mat_vec` shape. Each subgroup takes output units of
// the workgroup's SG_UNITS (= GEMV_WG / the host's subgroup size) one after another; its
// lanes stride the unit's weight row by one vec4<u32> each (a whole q4 block, half a q8
// block, 8 f16 weights per 16-byte load, the block scale applied once after the block's
// dot: dot_rows_wide), then subgroupAdd reduces the lanes and lane r stores row r. No
// barrier after the dots and no workgroup memory for the sums; a prologue stages its rows
// first as gemv_wide's does. Which subgroup and lane an invocation is come from the
// subgroup builtins, not from local_invocation_index: a driver may lay subgroups out in
// any order, or size them otherwise than the host assumed (the loop over units below then
// still covers SG_UNITS). Needs rows as gemv_wide's; the host checks (Kernel::runs).

// Output units per workgroup; the host's grid assumes it (src/ops/matmul.rs).
override SG_UNITS: u32 = 4u;

@compute @workgroup_size(GEMV_WG)
fn gemv_subgroup(@builtin(local_invocation_index) t: u32,
                 @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(subgroup_id) sg: u32,
                 @builtin(num_subgroups) sgs: u32,
                 @builtin(subgroup_invocation_id) lane: u32,
                 @builtin(subgroup_size) sg_size: u32) {
    let units = params().n_out / OUTS;
    let b = gemv_block(wid, units, SG_UNITS);
    if (!b.valid) {
        return;
    }
    let r0 = b.r0;
    let nr = b.nr;
    stage_block4(t, b);
    // The bounds are the same for every lane of a subgroup: subgroupAdd runs in
    // subgroup-uniform control flow.
    // Declared once and zeroed per unit: a var declared inside a loop was not zeroed again
    // on each pass in the browsers' compilers (see dot_vec_wide's sums).
    var acc: array<f32, MAX_GEMV_ROWS>;
    for (var j = sg; j < SG_UNITS; j += sgs) {
        let u = b.first + j;
        if (u >= units) {
            break;
        }
        for (var a = 0u; a < MAX_GEMV_ROWS; a++) {
            acc[a] = 0.0;
        }
        dot_rows_wide(&acc, u * OUTS, r0, nr, lane, sg_size);
        // Every lane holds each reduced sum; lanes store rows lane, lane + sg_size, ...
        for (var a = 0u; a < OUTS * GEMV_ROWS; a++) {
            acc[a] = subgroupAdd(acc[a]);
        }
        for (var r = lane; r < nr; r += sg_size) {
            store(r0 + r, u, acc[r], acc[select(r, GEMV_ROWS + r, OUTS == 2u)]);
        }
    }
}
