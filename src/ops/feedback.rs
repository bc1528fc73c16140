//! The step boundary of the GPU-resident decode loop (`shaders/feedback.wgsl`): between two
//! decode steps of a chunk, the tokens the first one sampled become the second one's input,
//! its positions advance by one and its random draws are put in place, all on the GPU. The
//! host records a chunk of steps, submits it once and reads the chunk's tokens back once.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Record, Shader};

/// Invocations per workgroup; passed to the shader as `FEEDBACK_WG`.
const FEEDBACK_WORKGROUP: u32 = 64;

/// Uniform parameters; must match `Params` in feedback.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct FeedbackParams {
    seqs: u32,
    step: u32,
    steps: u32,
    _pad: u32,
}

/// Bindings: params, sampled, chunk, tokens, row_table, draws, log.
const BINDINGS: [Binding; 7] = [
    Uniform, ReadOnly, ReadOnly, ReadWrite, ReadWrite, ReadWrite, ReadWrite,
];

/// The buffers the step boundary reads and writes, for `seqs` sequences and chunks of up to
/// `steps` steps.
#[derive(Clone, Copy, Debug)]
pub struct FeedbackBuffers<'a> {
    /// u32 `[seqs]`: what the last step sampled.
    pub sampled: &'a GpuBuffer,
    /// u32 [(4 + steps) * seqs]: each row's first position, sequence, source slot and
    /// token, then the draws of every step (f32 bits), see [`chunk_table`].
    pub chunk: &'a GpuBuffer,
    /// u32 `[seqs]`: the next step's input tokens.
    pub tokens: &'a GpuBuffer,
    /// u32 [seqs, 2]: the next step's (sequence, position) rows.
    pub row_table: &'a GpuBuffer,
    /// f32 `[seqs]`: the next step's draws.
    pub draws: &'a GpuBuffer,
    /// u32 [steps, seqs]: the chunk's sampled tokens.
    pub log: &'a GpuBuffer,
}

/// One row of a decode chunk: its sequence, the sequence's position at the chunk's first
/// step, and where its first input token is: the slot `src` of `sampled` (what the step
/// before the chunk drew for it), or `token` when `src` is [`FROM_HOST`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRow {
    pub seq: u32,
    pub first_pos: u32,
    pub src: u32,
    pub token: u32,
}

/// [`ChunkRow::src`] of a row whose first token the host gives; must match `FROM_HOST` in
/// feedback.wgsl.
pub const FROM_HOST: u32 = u32::MAX;

/// Columns of the `chunk` buffer before the draws (first_pos, seq, src, token).
pub const CHUNK_COLUMNS: usize = 4;

/// The `chunk` buffer's contents: for the rows, `first_pos[r]`, then `seq[r]`, `src[r]`,
/// `token[r]`; then `draws[s][r]` (as f32 bits) for each step s of the chunk.
pub fn chunk_table(rows: &[ChunkRow], draws: &[f32]) -> Vec<u32> {
    let column = |f: fn(&ChunkRow) -> u32| rows.iter().map(f);
    column(|r| r.first_pos)
        .chain(column(|r| r.seq))
        .chain(column(|r| r.src))
        .chain(column(|r| r.token))
        .chain(draws.iter().map(|d| d.to_bits()))
        .collect()
}

/// Records the boundary before step `step` of a chunk of `steps` (`step == steps`: after
/// the last one) for `seqs` sequences.
pub fn encode_feedback(
    gpu: &Gpu,
    pass: &mut dyn Record,
    b: &FeedbackBuffers<'_>,
    seqs: usize,
    step: usize,
    steps: usize,
) -> Result<(), GpuError> {
    if step > steps {
        return Err(GpuError::Validation(format!(
            "feedback before step {step} of a chunk of {steps}"
        )));
    }
    let words = |n: usize| (n * 4) as u64;
    b.sampled.require("feedback sampled", words(seqs))?;
    b.chunk
        .require("feedback chunk", words((CHUNK_COLUMNS + steps) * seqs))?;
    b.tokens.require("feedback tokens", words(seqs))?;
    b.row_table.require("feedback row table", words(2 * seqs))?;
    b.draws.require("feedback draws", words(seqs))?;
    b.log.require("feedback log", words(steps * seqs))?;
    let n = |v: usize| {
        u32::try_from(v).map_err(|_| GpuError::Validation(format!("feedback: {v} exceeds u32")))
    };
    if seqs == 0 {
        return Ok(());
    }
    let key =
        PipelineKey::new(Shader::Feedback, "feedback").with("FEEDBACK_WG", FEEDBACK_WORKGROUP);
    let pipeline = gpu.pipeline(&key, &BINDINGS)?;
    let grid = gpu.grid("feedback", n(seqs)?.div_ceil(FEEDBACK_WORKGROUP))?;
    if grid.y > 1 {
        return Err(GpuError::Validation(format!(
            "feedback over {seqs} sequences exceeds one row of workgroups"
        )));
    }
    let params = gpu.uniform(
        "feedback params",
        &FeedbackParams {
            seqs: n(seqs)?,
            step: n(step)?,
            steps: n(steps)?,
            _pad: 0,
        },
    );
    let buffers = [
        params.buffer(),
        b.sampled.buffer(),
        b.chunk.buffer(),
        b.tokens.buffer(),
        b.row_table.buffer(),
        b.draws.buffer(),
        b.log.buffer(),
    ];
    gpu.dispatch(pass, &pipeline, &buffers, grid);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::MemoryCategory;
    use crate::gpu::testing::test_gpus;

    #[test]
    fn feedback_moves_tokens_positions_and_draws_between_steps() {
        let (seqs, steps) = (3usize, 4usize);
        // Rows of sequences 4, 0 and 2, whose tokens before the chunk are in slots 2 and 0
        // of `sampled`, and from the host (6).
        let rows = [(4, 5, 2, 0), (0, 0, 0, 0), (2, 9, FROM_HOST, 6)].map(
            |(seq, first_pos, src, token)| ChunkRow {
                seq,
                first_pos,
                src,
                token,
            },
        );
        let draws: Vec<f32> = (0..steps * seqs).map(|i| i as f32 / 16.0).collect();
        for gpu in test_gpus() {
            let up = |label: &str, data: &[u32]| {
                gpu.upload(MemoryCategory::Activations, label, data)
                    .unwrap()
            };
            let sampled = up("sampled", &[7, 8, 9]);
            let chunk = up("chunk", &chunk_table(&rows, &draws));
            let (tokens, row_table) = (up("tokens", &[0; 3]), up("rows", &[0; 6]));
            let draws_now = up("draws", &[0; 3]);
            let log = up("log", &[u32::MAX; 12]);
            let b = FeedbackBuffers {
                sampled: &sampled,
                chunk: &chunk,
                tokens: &tokens,
                row_table: &row_table,
                draws: &draws_now,
                log: &log,
            };
            // Before step 0: each row gets its sequence's token from its source slot.
            let mut enc = gpu.encoder("feedback test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                encode_feedback(&gpu, &mut pass, &b, seqs, 0, steps).unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            assert_eq!(gpu.read::<u32>(&tokens, 3).unwrap(), [9, 7, 6]);
            assert_eq!(gpu.read::<u32>(&row_table, 6).unwrap(), [4, 5, 0, 0, 2, 9]);
            assert_eq!(gpu.read::<f32>(&draws_now, 3).unwrap(), draws[..3]);
            assert!(
                gpu.read::<u32>(&log, 12)
                    .unwrap()
                    .iter()
                    .all(|&t| t == u32::MAX)
            );
            // Before step 2: the step-1 tokens (in `sampled`, row by row) are logged and fed.
            let mut enc = gpu.encoder("feedback test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                encode_feedback(&gpu, &mut pass, &b, seqs, 2, steps).unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            assert_eq!(gpu.read::<u32>(&tokens, 3).unwrap(), [7, 8, 9]);
            assert_eq!(gpu.read::<u32>(&row_table, 6).unwrap(), [4, 7, 0, 2, 2, 11]);
            assert_eq!(gpu.read::<f32>(&draws_now, 3).unwrap(), draws[6..9]);
            let log_now: Vec<u32> = gpu.read(&log, 12).unwrap();
            assert_eq!(log_now[3..6], [7, 8, 9], "{}", gpu.describe());
            assert!(
                log_now[..3]
                    .iter()
                    .chain(&log_now[6..])
                    .all(|&t| t == u32::MAX)
            );
            // After the last step: only the log changes.
            let mut enc = gpu.encoder("feedback test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                encode_feedback(&gpu, &mut pass, &b, seqs, steps, steps).unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            assert_eq!(gpu.read::<u32>(&log, 12).unwrap()[9..], [7, 8, 9]);
            assert_eq!(gpu.read::<u32>(&row_table, 6).unwrap(), [4, 7, 0, 2, 2, 11]);
            let mut enc = gpu.encoder("feedback test");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let e = encode_feedback(&gpu, &mut pass, &b, seqs, steps + 1, steps);
            assert!(e.unwrap_err().to_string().contains("before step 5"));
            let e = encode_feedback(&gpu, &mut pass, &b, seqs, 0, steps + 1);
            assert!(e.unwrap_err().to_string().contains("feedback chunk"));
        }
    }
}
