// The step boundary of the GPU-resident decode loop: the tokens one step sampled become
// the next step's input without visiting the host. Host side: src/ops/feedback.rs.
//
// Between the steps of a chunk (and before the first and after the last), for each row
// r < seqs of the step, with s = params.step:
//   s > 0:      log[s - 1][r] = sampled[r]          (the chunk's tokens, read back at its end)
//   s < steps:  tokens[r] = sampled[r]; at s = 0 sampled[src[r]] (the slot where the step
//               before the chunk sampled row r's sequence), or token[r] where src[r] is
//               FROM_HOST (a token the host read back)
//               row_table[r] = (seq[r], first_pos[r] + s)
//               draws[r] = the draw of step s for r
// Row r of every decode step of the chunk is sequence seq[r], so every kernel of the
// recorded step reads its row, position and draw from these buffers.

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
// [max_seqs]: what the last step sampled, row by row.
@group(0) @binding(1) var<storage, read> sampled: array<u32>;
// [seqs] first positions, [seqs] sequences, [seqs] source slots, [seqs] tokens of the
// rows, then [steps, seqs] draws as f32 bit patterns (`chunk_table` on the host).
@group(0) @binding(2) var<storage, read> chunk: array<u32>;

// Source slot of a row whose first token is chunk's token column; must match FROM_HOST in
// src/ops/feedback.rs.
const FROM_HOST: u32 = 0xffffffffu;

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
    let n = params.seqs;
    let s = params.step;
    if (s > 0u) {
        log[(s - 1u) * n + r] = sampled[r];
    }
    if (s < params.steps) {
        var token = sampled[r];
        if (s == 0u) {
            let src = chunk[2u * n + r];
            if (src == FROM_HOST) {
                token = chunk[3u * n + r];
            } else {
                token = sampled[src];
            }
        }
        tokens[r] = token;
        row_table[2u * r] = chunk[n + r];
        row_table[2u * r + 1u] = chunk[r] + s;
        draws[r] = bitcast<f32>(chunk[4u * n + s * n + r]);
    }
}
