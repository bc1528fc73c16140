// The step boundary of the GPU-resident decode loop: the tokens one step sampled become
// the next step's input without visiting the host. Host side: src/ops/feedback.rs.
//
// Between the steps of a chunk (and before the first and after the last), for each
// sequence r < seqs, with s = params.step:
//   s > 0:      log[s - 1][r] = sampled[r]          (the chunk's tokens, read back at its end)
//   s < steps:  tokens[r] = sampled[r]               (the next step's input row)
//               row_table[r] = (r, first_pos[r] + s)
//               draws[r] = the draw of step s for r
// Row r of a decode step is sequence r, so every kernel of the recorded step reads its
// row, position and draw from these buffers.

// Must match `FeedbackParams` in src/ops/feedback.rs.
struct Params {
    seqs: u32,
    step: u32,
    steps: u32,
    _pad: u32,
}

// Invocations per workgroup; must match FEEDBACK_WORKGROUP on the host.
override FEEDBACK_WG: u32 = 64u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> sampled: array<u32>;          // [seqs]
// [seqs] first positions of the chunk, then [steps, seqs] draws as f32 bit patterns.
@group(0) @binding(2) var<storage, read> chunk: array<u32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;     // [seqs]
@group(0) @binding(4) var<storage, read_write> row_table: array<u32>;  // [seqs, 2]
@group(0) @binding(5) var<storage, read_write> draws: array<f32>;      // [seqs]
@group(0) @binding(6) var<storage, read_write> log: array<u32>;        // [steps, seqs]

@compute @workgroup_size(FEEDBACK_WG)
fn feedback(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= params.seqs) {
        return;
    }
    let token = sampled[r];
    let s = params.step;
    if (s > 0u) {
        log[(s - 1u) * params.seqs + r] = token;
    }
    if (s < params.steps) {
        tokens[r] = token;
        row_table[2u * r] = r;
        row_table[2u * r + 1u] = chunk[r] + s;
        draws[r] = bitcast<f32>(chunk[params.seqs + s * params.seqs + r]);
    }
}
