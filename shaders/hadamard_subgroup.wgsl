
// ---- hadamard_subgroup.wgsl: appended to hadamard.wgsl on adapters with SUBGROUP ----
//
// An invocation's slot in the tile is subgroup_id * subgroup_size + subgroup_invocation_id,
// not local_invocation_index: neither WGSL nor Vulkan says how a driver lays subgroups out
// over a workgroup, and a shuffle partner (lane ^ mask) must hold group g ^ mask. That
// numbering covers 0 .. WG exactly when every subgroup is full, which the host ensures by
// taking this path only for workgroups a multiple of the adapter's largest subgroup size
// (`dispatch_fast` in src/ops/hadamard/mod.rs).

// Butterfly stages on bits 0 .. count of ip, which in round 0 are the low bits of the
// group g, i.e. across lanes: partner values come from subgroupShuffleXor. The lower lane
// of a pair computes a + b, the upper b' - a' = (a - b), exactly as the register stages.
fn subgroup_stages(g: u32, count: u32) {
    for (var k = 0u; k < count; k++) {
        let mask = 1u << k;
        let upper = (g & mask) != 0u;
        for (var j = 0u; j < V; j++) {
            let mine = reg[j];
            let other = subgroupShuffleXor(mine, mask);
            reg[j] = select(mine + other, other - mine, upper);
        }
    }
}

@compute @workgroup_size(WG)
fn wht_fast(@builtin(subgroup_id) sg: u32,
            @builtin(subgroup_invocation_id) lane: u32,
            @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(subgroup_size) sg_size: u32) {
    wht_tile(sg * sg_size + lane, wid, sg_size);
}
