
// ---- hadamard_shared.wgsl: appended to hadamard.wgsl for adapters without subgroups ----

// No subgroups: every cross-invocation stage goes through workgroup memory.
fn subgroup_stages(g: u32, count: u32) {}

@compute @workgroup_size(WG)
fn wht_fast(@builtin(local_invocation_index) t: u32,
            @builtin(workgroup_id) wid: vec3<u32>) {
    wht_tile(t, wid, 1u);
}
