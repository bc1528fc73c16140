
// ---- hadamard_subgroup.wgsl: appended to hadamard.wgsl on adapters with SUBGROUP ----
//
// Assumes lane = local_invocation_index % subgroup_size (true of 1-D workgroups on the
// drivers walsh runs on; the tests compare this path with the shared-memory one).

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
fn wht_fast(@builtin(local_invocation_index) t: u32,
            @builtin(workgroup_id) wid: vec3<u32>,
            @builtin(subgroup_size) sg_size: u32) {
    wht_tile(t, wid, sg_size);
}
