//! The GPU decoder: weights on the device, a preallocated KV cache, and recorded steps.
//!
//! A step takes the new tokens of several sequences at once, packed row after row
//! (sequence by sequence). Every kernel works on the packed rows; a row table tells rope,
//! the KV cache and attention which (sequence, position) each row is.
//!
//! Prefill and other host-fed steps ([`GpuDecoder::forward_sample`]) record their
//! dispatches, replay them once and read back one token per sequence. Decoding runs in
//! chunks ([`GpuDecoder::start_decode`]): the decode step is recorded once, and a chunk of
//! N steps is one submission, N replays of that recording separated by the feedback
//! kernel (`ops::feedback`) that turns each step's sampled tokens into the next step's
//! input on the GPU, then one readback of the N tokens of each sequence. Replaying creates
//! no buffers or bind groups, so the host's work per token is a few dozen calls.

use std::collections::HashMap;

use super::sizes::{BufferLimits, check_decoder_fits};
use super::weights::{Model, Tensor, TensorData, stacked_format};
use super::{AttnOutput, Config, ModelError, Query};
use crate::blocks::{QuantMatrix, blocks_per_row};
use crate::gpu::{Gpu, GpuBuffer, MemoryCategory, PendingRead, Recording};
use crate::ops::attention::{self, AttendBuffers, Attention, AttnShape, DecodeFusion, KvFormat};
use crate::ops::feedback::{self, FeedbackBuffers};
use crate::ops::hadamard::cpu::sign_uniform;
use crate::ops::hadamard::{Hadamard, WhtEpilogue, WhtOptions, WhtPath, WhtSize};
use crate::ops::matmul::{self, Epilogue, Prologue};
use crate::ops::rope::{self, RopeTable};
use crate::ops::sample::{self, SamplingParams};
use crate::ops::{Cols, Matrix, RowSplit, WeightFormat, elementwise, norm};

/// Steps one decode chunk may hold at most (the size of its token log and draws).
pub const MAX_CHUNK_STEPS: usize = 64;

/// Bytes the logits buffer may take beyond one row per sequence. Sampling computes the
/// LM head for the sampled rows only (one per sequence); [`GpuDecoder::forward_logits`]
/// reads a longer step's logits back in chunks of as many rows as fit this.
const LOGITS_CHUNK_BYTES: usize = 8 << 20;

/// Rows of the logits buffer: one per sequence (what sampling needs), or as many as fit
/// [`LOGITS_CHUNK_BYTES`] and a binding of `binding` bytes, at most `capacity` (the
/// activations' rows). At a vocabulary of 128,256 that is 16 rows (8.2 MB) where `[rows,
/// vocab]` for a 2,048-row prefill took 1.05 GB.
fn logit_rows(vocab: usize, capacity: usize, max_seqs: usize, binding: u64) -> usize {
    let budget = LOGITS_CHUNK_BYTES.min(usize::try_from(binding).unwrap_or(usize::MAX));
    (budget / (vocab.max(1) * 4))
        .max(max_seqs)
        .min(capacity)
        .max(1)
}

/// One layer's weights on the device. Norm weights and the Hadamard affine are f32;
/// matrices keep the file's format (f32, packed f16, q8 or q4). Projections that read the
/// same input are stacked into one matrix at load time (the file keeps the HF tensors).
/// A matrix larger than one storage binding is split by rows ([`RowSplit`]: at d_model
/// 4096 the f16 gate + up matrix is 192 MiB, WebGPU's default binding 128 MiB), its
/// product then one dispatch per part; one part otherwise.
struct GpuLayer {
    input_layernorm: GpuBuffer, // [d]
    /// `[q | k | v]` rows stacked: [d + 2 kv_dim, d] with a dense query, else k and v,
    /// [2 kv_dim, d] (kv_dim = kv_heads * head_dim: d without grouping).
    qkv: RowSplit,
    q_down: Option<RowSplit>,   // [qh, d]         query = residual_mlp
    q_up: Option<RowSplit>,     // [d, qh]
    o_proj: Option<RowSplit>,   // [d, d]          attn_output = dense
    o_scale: Option<GpuBuffer>, // [d]             attn_output = hadamard
    o_bias: Option<GpuBuffer>,  // [d]
    post_attention_layernorm: GpuBuffer, // [d]
    /// gate and up rows interleaved, [2 inter, d]: one product with the SwiGLU epilogue.
    gate_up: RowSplit,
    down_proj: RowSplit, // [d, inter]
}

impl GpuLayer {
    /// The matrices, each with its parts.
    fn matrices(&self) -> impl Iterator<Item = &RowSplit> {
        [&self.qkv, &self.gate_up, &self.down_proj]
            .into_iter()
            .chain(
                [&self.q_down, &self.q_up, &self.o_proj]
                    .into_iter()
                    .flatten(),
            )
    }
}

/// The dimensions of a weight matrix, or an error naming the tensor.
fn dims(t: &Tensor) -> Result<(usize, usize), ModelError> {
    match t.shape[..] {
        [r, c] => Ok((r, c)),
        _ => Err(ModelError::Input(format!(
            "tensor `{}` should be a matrix, has shape {:?}",
            t.name, t.shape
        ))),
    }
}

fn matrix(gpu: &Gpu, t: &Tensor) -> Result<RowSplit, ModelError> {
    split(gpu, t, true)
}

/// The largest buffer one storage binding of `gpu` takes.
fn binding_bytes(gpu: &Gpu) -> u64 {
    let l = gpu.limits();
    l.max_storage_buffer_binding_size.min(l.max_buffer_size)
}

/// A part's label: the tensor's name, with its rows when it is one of several.
fn part_label(name: &str, rows: usize, first: usize, n: usize) -> String {
    if n == rows {
        name.to_string()
    } else {
        format!("{name} rows {first}..{}", first + n)
    }
}

/// Matrix `t` split by rows across bindings ([`RowSplit`]; one part when it fits), each
/// part as stored: f32, packed f16 or q8 / q4 blocks. With `transposable`, f16 parts are
/// transposed where the whole would be (`matmul::wants_transposed`: where the decode GEMV
/// reads neighbouring outputs' weights as one vector, [`Matrix`], and the rows pair up),
/// so every part takes the whole's kernel.
fn split(gpu: &Gpu, t: &Tensor, transposable: bool) -> Result<RowSplit, ModelError> {
    let (rows, cols) = dims(t)?;
    let format = t.format();
    let per = RowSplit::part_rows(format, rows, cols, binding_bytes(gpu))?;
    let transposed = transposable && matmul::wants_transposed(gpu, format, rows);
    Ok(RowSplit::upload(rows, cols, per, |first, n| {
        let label = part_label(&t.name, rows, first, n);
        let range = first * cols..(first + n) * cols;
        match &t.data {
            TensorData::F32(v) => Matrix::from_f32(gpu, &label, &v[range], n, cols),
            TensorData::F16(bits) if transposed => {
                Matrix::from_f16_bits_transposed(gpu, &label, &bits[range], n, cols)
            }
            TensorData::F16(bits) => Matrix::from_f16_bits(gpu, &label, &bits[range], n, cols),
            TensorData::Quant(q) if n == rows => Matrix::from_quant(gpu, &label, q),
            TensorData::Quant(q) => Matrix::from_quant(gpu, &label, &q.rows_slice(first, n)),
        }
    })?)
}

/// One matrix from `parts` (matrices of equal width), their rows one after another, or
/// with `interleave` (two parts) alternating, as [`Epilogue::SwiGlu`] reads them; split
/// by rows where it exceeds a binding ([`split`]: parts of even rows, so a gate row and
/// its up row stay together). Packed f16, q8 or q4 when every part shares that format,
/// else f32.
fn stacked(
    gpu: &Gpu,
    label: &str,
    parts: &[&Tensor],
    interleave: bool,
) -> Result<RowSplit, ModelError> {
    let mut rows = 0;
    let mut cols = None;
    for t in parts {
        let (r, c) = dims(t)?;
        if cols.is_some_and(|w| w != c) {
            return Err(ModelError::Input(format!(
                "`{label}`: tensor `{}` has {c} columns, the others {}",
                t.name,
                cols.unwrap_or(0)
            )));
        }
        cols = Some(c);
        rows += r;
    }
    let cols = cols.unwrap_or(0);
    if let [t] = parts {
        // One matrix: uploaded as stored, no host copy.
        return split(gpu, t, true);
    }
    let data = match stacked_format(parts) {
        WeightFormat::F16 => {
            let bits: Vec<&[u16]> = parts
                .iter()
                .filter_map(|t| match &t.data {
                    TensorData::F16(bits) => Some(&bits[..]),
                    _ => None,
                })
                .collect();
            TensorData::F16(join(&bits, interleave, cols))
        }
        WeightFormat::Q8 | WeightFormat::Q4 => {
            let qs: Vec<&QuantMatrix> = parts
                .iter()
                .filter_map(|t| match &t.data {
                    TensorData::Quant(q) => Some(q),
                    _ => None,
                })
                .collect();
            // Rows of levels and rows of scales join like rows of values.
            let words = qs[0].data.len() / qs[0].rows.max(1);
            let data: Vec<&[u32]> = qs.iter().map(|q| &q.data[..]).collect();
            let scales: Vec<&[u16]> = qs.iter().map(|q| &q.scales[..]).collect();
            TensorData::Quant(QuantMatrix {
                format: qs[0].format,
                rows,
                cols,
                data: join(&data, interleave, words),
                scales: join(&scales, interleave, blocks_per_row(cols)),
            })
        }
        WeightFormat::F32 => {
            let values: Vec<Vec<f32>> = parts.iter().map(|t| t.to_f32()).collect();
            let values: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
            TensorData::F32(join(&values, interleave, cols))
        }
    };
    let joined = Tensor {
        name: label.to_string(),
        shape: vec![rows, cols],
        data,
    };
    split(gpu, &joined, true)
}

/// `parts` one after another, or with `interleave` (two parts) row by row alternating.
fn join<T: Copy>(parts: &[&[T]], interleave: bool, cols: usize) -> Vec<T> {
    match (interleave, parts) {
        (true, [a, b]) => matmul::interleave_rows(a, b, cols),
        _ => parts.concat(),
    }
}

fn vector(gpu: &Gpu, t: &Tensor) -> Result<GpuBuffer, ModelError> {
    Ok(gpu.upload(MemoryCategory::Weights, &t.name, &t.to_f32())?)
}

fn opt<T>(
    t: &Option<Tensor>,
    f: impl Fn(&Tensor) -> Result<T, ModelError>,
) -> Result<Option<T>, ModelError> {
    t.as_ref().map(f).transpose()
}

/// Activations for up to `capacity` rows, reused across steps (grown when a step needs
/// more rows). Shapes in rows x width.
struct Activations {
    capacity: usize,
    x: GpuBuffer,     // [rows, d] residual stream
    x_alt: GpuBuffer, // [rows, d] the other half of the Hadamard ping-pong
    xn: GpuBuffer,    // [rows, d] normalized x (and q for identity queries)
    qkv: GpuBuffer,   // [rows, q | k | v] (dense query) or [rows, k | v]; q d wide, k and v kv_dim
    att: GpuBuffer,   // [rows, d] attention output, heads concatenated
    qh: GpuBuffer,    // [rows, qh] residual query MLP hidden
    hb: GpuBuffer,    // [rows, inter] silu(gate) * up
    /// Rows of `logits`, `head_x` and `head_rows`: [`logit_rows`].
    logit_rows: usize,
    logits: GpuBuffer,      // [logit_rows, vocab]
    head_x: GpuBuffer,      // [logit_rows, d] the residual rows the LM head reads, gathered
    head_rows: GpuBuffer,   // u32 [logit_rows]: the row of x gathered into each row of head_x
    tokens: GpuBuffer,      // u32 [rows]
    row_table: GpuBuffer,   // u32 [rows, 2]: (sequence, position)
    sample_rows: GpuBuffer, // u32 [max_seqs]: logits row sampled for each sequence (0, 1, ..)
    draws: GpuBuffer,       // f32 [max_seqs]
    sampled: GpuBuffer,     // u32 [max_seqs]
    chunk: GpuBuffer,       // u32 [(CHUNK_COLUMNS + MAX_CHUNK_STEPS) * max_seqs]: ops::feedback
    log: GpuBuffer,         // u32 [MAX_CHUNK_STEPS, max_seqs]: a chunk's tokens
}

impl Activations {
    fn new(
        gpu: &Gpu,
        config: &Config,
        capacity: usize,
        max_seqs: usize,
    ) -> Result<Self, ModelError> {
        // One f32 row per step row, of the widths below: `max_step_rows` bounds a step
        // by the widest of them, so a new wider buffer goes into its list too.
        let f = |label: &str, width: usize| {
            gpu.storage(
                MemoryCategory::Activations,
                label,
                (capacity * width * 4) as u64,
            )
        };
        let seqs = |label: &str, n: usize| {
            gpu.storage(
                MemoryCategory::Activations,
                label,
                (4 * n * max_seqs) as u64,
            )
        };
        let d = config.hidden_size;
        let vocab = config.vocab_size;
        let logit_rows = logit_rows(vocab, capacity, max_seqs, binding_bytes(gpu));
        let head = |label: &str, width: usize| {
            gpu.storage(
                MemoryCategory::Activations,
                label,
                (logit_rows * width * 4) as u64,
            )
        };
        Ok(Self {
            capacity,
            x: f("x", d)?,
            x_alt: f("x alt", d)?,
            xn: f("xn", d)?,
            qkv: f("qkv", qkv_width(config))?,
            att: f("att", d)?,
            qh: f("qh", config.query_mlp_hidden())?,
            hb: f("hb", config.intermediate_size)?,
            logit_rows,
            logits: head("logits", vocab)?,
            head_x: head("head x", d)?,
            head_rows: head("head rows", 1)?,
            tokens: f("tokens", 1)?,
            row_table: f("row table", 2)?,
            sample_rows: seqs("sample rows", 1)?,
            draws: seqs("draws", 1)?,
            sampled: seqs("sampled", 1)?,
            chunk: seqs("decode chunk", feedback::CHUNK_COLUMNS + MAX_CHUNK_STEPS)?,
            log: seqs("decode log", MAX_CHUNK_STEPS)?,
        })
    }

    fn feedback(&self) -> FeedbackBuffers<'_> {
        FeedbackBuffers {
            sampled: &self.sampled,
            chunk: &self.chunk,
            tokens: &self.tokens,
            row_table: &self.row_table,
            draws: &self.draws,
            log: &self.log,
        }
    }
}

/// Width of the stacked q/k/v projection's output: q (d wide, dense query only), k and v
/// (kv_dim wide each).
fn qkv_width(config: &Config) -> usize {
    let kv = 2 * config.kv_dim();
    if config.query == Query::Dense {
        config.hidden_size + kv
    } else {
        kv
    }
}

/// The most rows a step's activations ([`Activations::new`], whose row widths this lists)
/// hold within one binding of `binding` bytes: the widest is a row of f32 values
/// `intermediate_size` wide (gate/up's output, `hb`) or q|k|v's. A host-fed step with
/// more rows (a long prompt of a big model) runs as several
/// ([`GpuDecoder::forward_sample_async`]): at d_model 4096 with 12288 intermediate values
/// a 128 MiB binding holds 2730 rows.
fn max_step_rows(config: &Config, binding: u64) -> usize {
    let widest = [
        config.hidden_size,
        qkv_width(config),
        config.query_mlp_hidden(),
        config.intermediate_size,
    ]
    .into_iter()
    .max()
    .unwrap_or(1)
    .max(1);
    usize::try_from(binding / (4 * widest as u64))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// `batch` in steps of at most `max_rows` rows: each sequence's tokens in order, a
/// sequence's run cut where a step fills (so it may go on in the next step).
fn split_steps<'a>(batch: &[(usize, &'a [u32])], max_rows: usize) -> Vec<Vec<(usize, &'a [u32])>> {
    let max_rows = max_rows.max(1);
    let mut steps = Vec::new();
    let mut step = Vec::new();
    let mut room = max_rows;
    for &(seq, tokens) in batch {
        let mut rest = tokens;
        while !rest.is_empty() {
            let n = rest.len().min(room);
            step.push((seq, &rest[..n]));
            rest = &rest[n..];
            room -= n;
            if room == 0 {
                steps.push(std::mem::take(&mut step));
                room = max_rows;
            }
        }
    }
    if !step.is_empty() {
        steps.push(step);
    }
    steps
}

/// The recorded decode step of `seqs` sequences (rows), valid while the activations it
/// binds live: embedding through sampling, and the feedback before each step of a chunk.
struct DecodePlan {
    seqs: usize,
    /// Key chunks the attention was recorded for (see [`Attention::decode_chunks`]).
    attn_chunks: usize,
    sampling: SamplingParams,
    step: Recording,
    /// `feedback[s]`: the boundary before step s (s = steps: after the last).
    feedback: Vec<Recording>,
    /// Chunk length the feedback recordings are for.
    steps: usize,
}

/// A decode chunk submitted by [`GpuDecoder::start_decode`], or a sampling step by
/// [`GpuDecoder::start_sample`].
pub struct PendingChunk {
    read: PendingRead,
    /// Each row's sequence and that sequence's version after the chunk.
    rows: Vec<(usize, u64)>,
}

/// The decoder on one device: weights, KV cache for `max_seqs` sequences of up to
/// `max_positions` tokens, and the per-step activations.
pub struct GpuDecoder {
    gpu: Gpu,
    config: Config,
    embed_tokens: RowSplit, // [vocab, d]
    layers: Vec<GpuLayer>,
    norm: GpuBuffer,                 // [d]
    lm_head: Option<RowSplit>,       // [vocab, d]; None: tied to embed_tokens
    kv: Vec<(GpuBuffer, GpuBuffer)>, // per layer: k and v caches, [max_seqs, max_positions, kv_heads] blocks of shape.kv
    shape: AttnShape,
    rope: RopeTable,
    hadamard: Hadamard,
    /// H_m's signs for the fused Hadamard prologue when d = m x 2^k, m > 1.
    wht_signs: Option<GpuBuffer>,
    attention: Attention,
    acts: Option<Activations>,
    plan: Option<DecodePlan>,
    /// Whether decode steps fold norms, RoPE, the KV write and the Hadamard W_O into the
    /// dispatches that read them (the default); off runs each step on its own, as prefill
    /// does ([`GpuDecoder::set_fusion`]).
    fusion: bool,
    lengths: Vec<usize>, // tokens in the cache, per sequence
    /// The sequence whose next token each slot of `acts.sampled` holds, as the last
    /// sampling step left it (None: stale, the sequence moved on or was reset).
    sampled_seqs: Vec<Option<usize>>,
    /// Per sequence, a count of its changes (tokens appended, resets): what a token read
    /// back is checked against before it is taken for the sequence's next.
    versions: Vec<u64>,
    /// Per sequence, its next token as read back by the host, with the version it belongs
    /// to: a decode chunk can continue a sequence whose slot in `sampled` was reused.
    read_back: Vec<Option<(u64, u32)>>,
    /// The sequences of the latest decode chunk's rows and its steps: what `acts.log`
    /// holds, which a host-fed step may take tokens from ([`GpuDecoder::start_sample`]).
    last_chunk: Option<(Vec<usize>, usize)>,
}

/// A token of a host-fed step that the latest decode chunk made: the row at (sequence,
/// position) takes the chunk's log word `log` (step s, row r: s x rows + r), copied on the
/// GPU before the step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LogToken {
    seq: u32,
    pos: u32,
    log: u32,
}

/// What a host-fed step records after its layers.
#[derive(Clone, Copy)]
enum StepEnd<'a> {
    /// Each sequence's last row's logits, sampled with these parameters and draws.
    Sample(&'a SamplingParams, &'a [f32]),
    /// Every row's logits (when they fit the logits buffer; else the caller reads them
    /// in chunks).
    Logits,
    /// Nothing: the step only fills the KV cache (a part of a prefill whose last token
    /// comes in a later step).
    Feed,
}

/// Where each sequence's rows sit in a step's packed batch.
struct StepLayout {
    rows: usize,
    /// (sequence, first row, row count)
    spans: Vec<(usize, usize, usize)>,
    /// (sequence, position) of every row.
    table: Vec<(u32, u32)>,
}

impl GpuDecoder {
    /// Uploads `model` and allocates the KV cache in `kv` format. Fails with a clear error
    /// when the cache or a weight exceeds the adapter's limits.
    pub fn new(
        gpu: &Gpu,
        model: &Model,
        max_seqs: usize,
        max_positions: usize,
        kv: KvFormat,
    ) -> Result<Self, ModelError> {
        let config = model.config.clone();
        if max_seqs == 0 {
            return Err(ModelError::Input("at least one sequence is needed".into()));
        }
        if max_positions == 0 || max_positions > config.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "context of {max_positions} positions: the model supports 1 to {}",
                config.max_position_embeddings
            )));
        }
        kv.check_head_dim(config.head_dim())?;
        // Every buffer against the adapter's limits before any upload (the first too
        // large is named).
        let limits = BufferLimits::from(gpu.limits());
        check_decoder_fits(model, max_seqs, max_positions, kv, limits).map_err(|e| e.on(gpu))?;
        let w = &model.weights;
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, l) in w.layers.iter().enumerate() {
            let mut qkv = vec![];
            if let Some(q) = &l.q_proj {
                qkv.push(q);
            }
            qkv.extend([&l.k_proj, &l.v_proj]);
            layers.push(GpuLayer {
                input_layernorm: vector(gpu, &l.input_layernorm)?,
                qkv: stacked(gpu, &format!("model.layers.{i}.self_attn.qkv"), &qkv, false)?,
                q_down: opt(&l.q_down, |t| matrix(gpu, t))?,
                q_up: opt(&l.q_up, |t| matrix(gpu, t))?,
                o_proj: opt(&l.o_proj, |t| matrix(gpu, t))?,
                o_scale: opt(&l.o_scale, |t| vector(gpu, t))?,
                o_bias: opt(&l.o_bias, |t| vector(gpu, t))?,
                post_attention_layernorm: vector(gpu, &l.post_attention_layernorm)?,
                gate_up: stacked(
                    gpu,
                    &format!("model.layers.{i}.mlp.gate_up"),
                    &[&l.gate_proj, &l.up_proj],
                    true,
                )?,
                down_proj: matrix(gpu, &l.down_proj)?,
            });
        }
        let shape = AttnShape {
            heads: config.num_attention_heads,
            kv_heads: config.kv_heads(),
            head_dim: config.head_dim(),
            max_seqs,
            max_pos: max_positions,
            kv,
        };
        let cache_bytes = shape.cache_bytes();
        let mut caches = Vec::with_capacity(layers.len());
        for i in 0..layers.len() {
            let k = gpu.storage(
                MemoryCategory::KvCache,
                &format!("layer {i} key cache"),
                cache_bytes,
            )?;
            let v = gpu.storage(
                MemoryCategory::KvCache,
                &format!("layer {i} value cache"),
                cache_bytes,
            )?;
            caches.push((k, v));
        }
        Ok(Self {
            gpu: gpu.clone(),
            // Row-major whatever the adapter (the gather reads its rows), as stored: the
            // gather reads f32, f16 and q8 / q4 tables (GGUF files often quantize
            // `token_embd`), and a tied head multiplies by the packed table too (a q4 head
            // of 128256 x 2048 binds 144 MB where its f32 values would take 1 GiB).
            embed_tokens: split(gpu, &w.embed_tokens, false)?,
            layers,
            norm: vector(gpu, &w.norm)?,
            lm_head: opt(&w.lm_head, |t| split(gpu, t, true))?,
            kv: caches,
            shape,
            rope: RopeTable::new(gpu, max_positions, config.head_dim(), config.rope_theta)?,
            hadamard: Hadamard::new(gpu)?,
            wht_signs: match WhtSize::new(config.hidden_size) {
                Ok(s) if s.m > 1 && config.attn_output == AttnOutput::Hadamard => {
                    Some(gpu.uniform("wht signs", &sign_uniform(s.m)))
                }
                _ => None,
            },
            attention: Attention::new(gpu)?.with_decode_chunk(attention::decode_chunk_for(
                gpu,
                shape.heads,
                max_positions,
            ))?,
            acts: None,
            plan: None,
            fusion: true,
            lengths: vec![0; max_seqs],
            sampled_seqs: Vec::new(),
            versions: vec![0; max_seqs],
            read_back: vec![None; max_seqs],
            last_chunk: None,
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn max_seqs(&self) -> usize {
        self.shape.max_seqs
    }

    pub fn max_positions(&self) -> usize {
        self.shape.max_pos
    }

    /// Tokens already in sequence `seq`'s cache.
    pub fn len(&self, seq: usize) -> usize {
        self.lengths.get(seq).copied().unwrap_or(0)
    }

    /// Forgets every sequence (the cache is overwritten as positions are reused).
    pub fn reset(&mut self) {
        for seq in 0..self.lengths.len() {
            self.reset_sequence(seq);
        }
        self.sampled_seqs.clear();
    }

    /// Forgets sequence `seq` only.
    pub fn reset_sequence(&mut self, seq: usize) {
        if let Some(l) = self.lengths.get_mut(seq) {
            *l = 0;
            self.versions[seq] += 1;
        }
        self.forget_sampled(seq);
    }

    /// Takes `token`, read back for `seq` at version `version`, as its next token if the
    /// sequence has not changed since.
    fn note_read_back(&mut self, seq: usize, version: u64, token: u32) {
        if self.versions.get(seq) == Some(&version) {
            self.read_back[seq] = Some((version, token));
        }
    }

    /// Marks `seq`'s sampled token (if a slot holds one) as no longer its next token.
    fn forget_sampled(&mut self, seq: usize) {
        for s in &mut self.sampled_seqs {
            if *s == Some(seq) {
                *s = None;
            }
        }
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The bindings the embedding and the LM head (None: tied) are split across
    /// ([`RowSplit`]; 1: not split).
    pub fn vocab_parts(&self) -> (usize, Option<usize>) {
        let head = self.lm_head.as_ref().map(|h| h.parts.len());
        (self.embed_tokens.parts.len(), head)
    }

    /// The most bindings any layer's matrix is split across ([`RowSplit`]; 1: none is).
    pub fn layer_parts(&self) -> usize {
        let parts = self.layers.iter().flat_map(GpuLayer::matrices);
        parts.map(|m| m.parts.len()).max().unwrap_or(1)
    }

    /// The KV cache's element format.
    pub fn kv_format(&self) -> KvFormat {
        self.shape.kv
    }

    /// Checks the batch and lays its rows out, sequence after sequence.
    fn layout(&self, batch: &[(usize, &[u32])]) -> Result<StepLayout, ModelError> {
        let mut seen = vec![false; self.shape.max_seqs];
        let mut spans = Vec::with_capacity(batch.len());
        let mut table = Vec::new();
        let mut rows = 0;
        for &(seq, tokens) in batch {
            if seq >= self.shape.max_seqs {
                return Err(ModelError::Input(format!(
                    "sequence {seq} out of {} allocated",
                    self.shape.max_seqs
                )));
            }
            if std::mem::replace(&mut seen[seq], true) {
                return Err(ModelError::Input(format!(
                    "sequence {seq} appears twice in one step"
                )));
            }
            if tokens.is_empty() {
                return Err(ModelError::Input(format!(
                    "sequence {seq} has no tokens in this step"
                )));
            }
            if let Some(&t) = tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::Input(format!(
                    "token {t} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            if self.lengths[seq] + tokens.len() > self.shape.max_pos {
                return Err(ModelError::ContextOverflow {
                    tokens: self.lengths[seq],
                    new: tokens.len(),
                    context: self.shape.max_pos,
                });
            }
            spans.push((seq, rows, tokens.len()));
            table.extend((0..tokens.len()).map(|i| (seq as u32, (self.lengths[seq] + i) as u32)));
            rows += tokens.len();
        }
        if rows == 0 {
            return Err(ModelError::Input("a step needs at least one token".into()));
        }
        Ok(StepLayout { rows, spans, table })
    }

    /// Makes sure the activations hold `rows` rows; reallocating drops the recorded plan
    /// that bound the old ones.
    fn reserve(&mut self, rows: usize) -> Result<(), ModelError> {
        if self.acts.as_ref().is_none_or(|a| a.capacity < rows) {
            self.plan = None;
            // `sampled` goes with the old buffers: what the host read back remains. The
            // latest chunk's log is copied over: a host-fed step may take tokens from it.
            self.sampled_seqs.clear();
            let log = self.acts.take().map(|a| a.log.buffer().clone()); // frees the rest
            // Room for a decode step's 16 rows, where a binding takes them.
            let capacity = rows.max(16.min(self.max_step_rows()));
            let acts = Activations::new(&self.gpu, &self.config, capacity, self.shape.max_seqs);
            let acts = self
                .acts
                .insert(acts.inspect_err(|_| self.last_chunk = None)?);
            if let Some(old) = log.filter(|_| self.last_chunk.is_some()) {
                let mut encoder = self.gpu.encoder("keep decode log");
                encoder.copy_buffer_to_buffer(&old, 0, acts.log.buffer(), 0, old.size());
                self.gpu.submit([encoder.finish()]);
            }
        }
        Ok(())
    }

    /// Records one forward pass over `table.len()` packed rows (row r is (sequence,
    /// position) `table[r]`, its token in `acts.tokens`, its row in `acts.row_table`)
    /// through the last layer, leaving the residual stream in
    /// [`GpuDecoder::final_residual`]; [`GpuDecoder::record_head`] makes logits from it.
    /// `decode`: every row is the only one of its sequence (one query per sequence in
    /// attention).
    fn record_forward(
        &self,
        rec: &mut Recording,
        table: &[(u32, u32)],
        decode: bool,
    ) -> Result<(), ModelError> {
        let gpu = &self.gpu;
        let acts = self.acts.as_ref().expect("reserved by the caller");
        let rows = table.len();
        let c = &self.config;
        let (d, h, eps) = (c.hidden_size, c.num_attention_heads, c.rms_norm_eps as f32);
        let (kv_d, kv_h) = (c.kv_dim(), c.kv_heads());
        let width = qkv_width(c);
        // q, k and v inside the stacked projection's output (q in xn for the other queries).
        let q = match c.query {
            Query::Dense => Cols::new(&acts.qkv, width, 0),
            Query::Identity | Query::ResidualMlp => Cols::from(&acts.xn),
        };
        let k = Cols::new(&acts.qkv, width, width - 2 * kv_d);
        let v = Cols::new(&acts.qkv, width, width - kv_d);
        let p = rec;
        let (mut x, mut x_alt) = (&acts.x, &acts.x_alt);
        let hadamard = c.attn_output == AttnOutput::Hadamard;
        // Decode steps fold each norm into the product that reads it, RoPE and the KV
        // write into attention, and the Hadamard W_O with its residual add into the
        // feed-forward product (docs/architecture.md, "One decode step"); prefill, and
        // batches or widths the prologues cannot take, run each step on its own.
        let fuse_norm = decode && self.fusion && matmul::prologue_fits(gpu, rows, d, false);
        // d = m x 2^k (m > 1) adds an m x m mix every workgroup of the product would redo:
        // on CPU adapters that cost more than the dispatch it saves (lavapipe, d 576 = 36 x
        // 16, `walsh profile` alternating 5 runs each: the fused gate/up product took a
        // median 4117 us against 3721 for the separate WHT and the product), so there the
        // transform stays a dispatch of its own; GPUs, where the dispatch is the cost and
        // the mix spreads over the lanes, fuse it.
        let wht_m = WhtSize::new(d).map_or(1, |s| s.m);
        let fuse_wht = fuse_norm
            && hadamard
            && matmul::prologue_fits(gpu, rows, d, true)
            && (wht_m == 1 || !gpu.is_cpu_adapter());
        // Grouped heads take the separate RoPE and KV write: fused, the query heads of a
        // group would write one cache block from several workgroups (attention.wgsl).
        let fuse_attn = decode && self.fusion && c.query == Query::Dense && kv_h == h;
        let none = Prologue::None;
        elementwise::encode_embed_split(gpu, p, &self.embed_tokens, &acts.tokens, x, rows)?;
        for (layer, (k_cache, v_cache)) in self.layers.iter().zip(&self.kv) {
            // attention block: one product gives q (dense query), k and v
            let store = Epilogue::Store;
            if fuse_norm {
                // The identity and MLP queries read the normalized rows: written to xn.
                let prologue = Prologue::Norm {
                    weight: &layer.input_layernorm,
                    eps,
                    out: (c.query != Query::Dense).then_some(&acts.xn),
                };
                let qkv = &acts.qkv;
                matmul::encode_split(gpu, p, &layer.qkv, x, qkv, rows, store, prologue)?;
            } else {
                norm::encode_rmsnorm(gpu, p, x, &layer.input_layernorm, &acts.xn, rows, d, eps)?;
                matmul::encode_split(gpu, p, &layer.qkv, &acts.xn, &acts.qkv, rows, store, none)?;
            }
            if let (Some(down), Some(up)) = (&layer.q_down, &layer.q_up) {
                // q = xn + q_up(silu(q_down(xn)))
                let silu = Epilogue::Silu;
                matmul::encode_split(gpu, p, down, &acts.xn, &acts.qh, rows, silu, none)?;
                let acc = Epilogue::Accumulate;
                matmul::encode_split(gpu, p, up, &acts.qh, &acts.xn, rows, acc, none)?;
            }
            let att = &self.attention;
            let rt = &acts.row_table;
            let io = AttendBuffers::new(q, k_cache, v_cache, rt, &acts.att);
            if fuse_attn {
                // RoPE of q and k and the KV write happen inside attention.
                let fusion = DecodeFusion {
                    k,
                    v,
                    rope: &self.rope,
                };
                att.encode_decode_fused(p, &io, fusion, table, self.shape)?;
            } else {
                match c.query {
                    // q and k are neighbours in each row: one rotation covers q's h heads
                    // and k's kv_h
                    Query::Dense => rope::encode_rope(gpu, p, q, rt, &self.rope, rows, h + kv_h)?,
                    Query::Identity | Query::ResidualMlp => {
                        rope::encode_rope(gpu, p, q, rt, &self.rope, rows, h)?;
                        rope::encode_rope(gpu, p, k, rt, &self.rope, rows, kv_h)?;
                    }
                }
                att.encode_kv_write(p, k, v, rt, table, k_cache, v_cache, self.shape)?;
                // Same function, work split for one query per sequence or for many.
                if decode {
                    att.encode_decode(p, &io, table, self.shape)?;
                } else {
                    att.encode_prefill(p, &io, table, self.shape)?;
                }
            }
            let post = &layer.post_attention_layernorm;
            let swiglu = Epilogue::SwiGlu;
            let gate_up = &layer.gate_up;
            if fuse_wht {
                // x_alt = x + o_scale * H(att) / sqrt(d) + o_bias and its post-attention
                // norm, made by every workgroup of the gate/up product: a fusion a dense
                // W_O cannot have, its product spanning many workgroups.
                let prologue = Prologue::HadamardNorm {
                    resid: x,
                    gamma: layer.o_scale.as_ref().expect("validated by the loader"),
                    beta: layer.o_bias.as_ref().expect("validated by the loader"),
                    out: x_alt,
                    weight: post,
                    eps,
                    signs: self.wht_signs.as_ref(),
                };
                let (att, hb) = (&acts.att, &acts.hb);
                matmul::encode_split(gpu, p, gate_up, att, hb, rows, swiglu, prologue)?;
                std::mem::swap(&mut x, &mut x_alt);
            } else {
                match c.attn_output {
                    AttnOutput::Dense => {
                        let wo = layer.o_proj.as_ref().expect("validated by the loader");
                        let acc = Epilogue::Accumulate;
                        matmul::encode_split(gpu, p, wo, &acts.att, x, rows, acc, none)?;
                    }
                    AttnOutput::Hadamard => {
                        // x_alt = x + o_scale * H(att) / sqrt(d) + o_bias, in one dispatch.
                        let epilogue = WhtEpilogue {
                            gamma: layer.o_scale.as_ref(),
                            beta: layer.o_bias.as_ref(),
                            resid: Some(x),
                        };
                        let options = WhtOptions {
                            epilogue,
                            path: WhtPath::Auto,
                        };
                        self.hadamard
                            .encode(p, &acts.att, x_alt, rows, d, options)?;
                        std::mem::swap(&mut x, &mut x_alt);
                    }
                }
                // feed-forward block: gate and up in one product, SwiGLU in its epilogue
                if fuse_norm {
                    let prologue = Prologue::Norm {
                        weight: post,
                        eps,
                        out: None,
                    };
                    let hb = &acts.hb;
                    matmul::encode_split(gpu, p, gate_up, x, hb, rows, swiglu, prologue)?;
                } else {
                    norm::encode_rmsnorm(gpu, p, x, post, &acts.xn, rows, d, eps)?;
                    matmul::encode_split(gpu, p, gate_up, &acts.xn, &acts.hb, rows, swiglu, none)?;
                }
            }
            let acc = Epilogue::Accumulate;
            matmul::encode_split(gpu, p, &layer.down_proj, &acts.hb, x, rows, acc, none)?;
        }
        debug_assert!(std::ptr::eq(x, self.final_residual(acts)));
        Ok(())
    }

    /// The buffer holding the residual stream after [`GpuDecoder::record_forward`]: each
    /// layer with the Hadamard W_O writes `x + W_O(att)` to the other buffer and swaps
    /// the two (the fused and the separate path alike).
    fn final_residual<'a>(&self, acts: &'a Activations) -> &'a GpuBuffer {
        let hadamard = self.config.attn_output == AttnOutput::Hadamard;
        if hadamard && self.layers.len() % 2 == 1 {
            &acts.x_alt
        } else {
            &acts.x
        }
    }

    /// Records the final norm and the LM head of `rows` rows into `acts.logits` (at most
    /// `acts.logit_rows`): the residual's first `rows` rows, or with `gather = Some(n)`
    /// the rows `acts.head_rows` lists out of the residual's `n`, gathered into
    /// `acts.head_x` first. The norm is the product's prologue where it fits a decode
    /// step (`decode`) or gathered rows (each the last of its sequence, as in decode);
    /// otherwise a dispatch of its own, as prefill ran it.
    fn record_head(
        &self,
        rec: &mut Recording,
        rows: usize,
        gather: Option<usize>,
        decode: bool,
    ) -> Result<(), ModelError> {
        let gpu = &self.gpu;
        let acts = self.acts.as_ref().expect("reserved by the caller");
        if rows > acts.logit_rows {
            return Err(ModelError::Input(format!(
                "the LM head of {rows} rows: the logits buffer holds {}",
                acts.logit_rows
            )));
        }
        let c = &self.config;
        let (d, eps) = (c.hidden_size, c.rms_norm_eps as f32);
        let mut x = self.final_residual(acts);
        if let Some(src_rows) = gather {
            let (idx, out) = (&acts.head_rows, &acts.head_x);
            elementwise::encode_gather_rows(gpu, rec, x, src_rows, d, idx, out, rows)?;
            x = &acts.head_x;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let store = Epilogue::Store;
        let logits = &acts.logits;
        if (decode || gather.is_some()) && matmul::prologue_fits(gpu, rows, d, false) {
            let prologue = Prologue::Norm {
                weight: &self.norm,
                eps,
                out: None,
            };
            matmul::encode_split(gpu, rec, head, x, logits, rows, store, prologue)?;
        } else {
            norm::encode_rmsnorm(gpu, rec, x, &self.norm, &acts.xn, rows, d, eps)?;
            let none = Prologue::None;
            matmul::encode_split(gpu, rec, head, &acts.xn, logits, rows, store, none)?;
        }
        Ok(())
    }

    /// Records sampling of `count` sequences from `acts.logits` rows `acts.sample_rows`
    /// with `acts.draws`, into `acts.sampled`.
    fn record_sample(
        &self,
        rec: &mut Recording,
        count: usize,
        sampling: &SamplingParams,
    ) -> Result<(), ModelError> {
        let acts = self.acts.as_ref().expect("reserved by the caller");
        sample::encode_sample(
            &self.gpu,
            rec,
            &acts.logits,
            &acts.sample_rows,
            &acts.draws,
            &acts.sampled,
            count,
            self.config.vocab_size,
            sampling,
        )?;
        Ok(())
    }

    /// Records and replays the forward pass of a host-fed step, with sampling when asked:
    /// uploads the step's tokens and rows, and returns the encoder holding the pass. The
    /// rows `from_log` names take their tokens from the latest chunk's log instead.
    fn host_step(
        &mut self,
        batch: &[(usize, &[u32])],
        layout: &StepLayout,
        end: StepEnd,
        from_log: &[LogToken],
    ) -> Result<wgpu::CommandEncoder, ModelError> {
        let rec = self.prepare_step(batch, layout, end)?;
        let decode = layout.spans.iter().all(|&(_, _, n)| n == 1);
        let mut encoder = self.gpu.encoder("step");
        let acts = self.acts.as_ref().expect("reserved by prepare_step");
        // (first row, first log word, words): runs of rows whose log words follow on.
        let mut runs: Vec<(u32, u32, u32)> = Vec::new();
        if !from_log.is_empty() {
            let words: HashMap<(u32, u32), u32> =
                from_log.iter().map(|t| ((t.seq, t.pos), t.log)).collect();
            for (row, at) in (0u32..).zip(&layout.table) {
                let Some(&log) = words.get(at) else {
                    continue;
                };
                match runs.last_mut() {
                    Some((r, l, n)) if *r + *n == row && *l + *n == log => *n += 1,
                    _ => runs.push((row, log, 1)),
                }
            }
        }
        let (src, dst) = (acts.log.buffer(), acts.tokens.buffer());
        let bytes = |w: u32| 4 * u64::from(w);
        for (row, log, words) in runs {
            encoder.copy_buffer_to_buffer(src, bytes(log), dst, bytes(row), bytes(words));
        }
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(if decode { "decode step" } else { "prefill" }),
                timestamp_writes: None,
            });
            rec.replay(&mut pass, self.gpu.counters());
        }
        for &(seq, toks) in batch {
            self.lengths[seq] += toks.len();
            self.versions[seq] += 1;
        }
        if let StepEnd::Sample(..) = end {
            // Slot i of `sampled` holds the next token of the batch's i-th sequence.
            self.sampled_seqs = layout.spans.iter().map(|s| Some(s.0)).collect();
        } else {
            for &(seq, _) in batch {
                self.forget_sampled(seq);
            }
        }
        Ok(encoder)
    }

    /// The dispatches of a step of `count` sequences laid out as `layout`, ending as
    /// `end` says (its draws are written by prepare_step, not recorded), with the
    /// activations reserved for its rows.
    fn record_step(
        &mut self,
        count: usize,
        layout: &StepLayout,
        end: &StepEnd,
    ) -> Result<Recording, ModelError> {
        self.reserve(layout.rows)?;
        let mut rec = Recording::new();
        let decode = layout.spans.iter().all(|&(_, _, n)| n == 1);
        self.record_forward(&mut rec, &layout.table, decode)?;
        let acts = self.acts.as_ref().expect("reserved above");
        match *end {
            // Logits of the sampled rows only, each sequence's last: in a decode step
            // every row, else gathered out of the step's rows (acts.head_rows, written by
            // prepare_step).
            StepEnd::Sample(sampling, _) => {
                let gather = (!decode).then_some(layout.rows);
                self.record_head(&mut rec, count, gather, decode)?;
                self.record_sample(&mut rec, count, sampling)?;
            }
            StepEnd::Logits if layout.rows <= acts.logit_rows => {
                self.record_head(&mut rec, layout.rows, None, decode)?;
            }
            // More rows than the logits buffer: forward_logits reads them in chunks.
            StepEnd::Logits | StepEnd::Feed => {}
        }
        Ok(rec)
    }

    /// Records the forward pass of a host-fed step (with sampling when asked) and uploads
    /// its tokens and rows; the sequences' lengths are left as they are.
    fn prepare_step(
        &mut self,
        batch: &[(usize, &[u32])],
        layout: &StepLayout,
        end: StepEnd,
    ) -> Result<Recording, ModelError> {
        let rec = self.record_step(batch.len(), layout, &end)?;
        let acts = self.acts.as_ref().expect("reserved by record_step");
        let count = batch.len();
        let queue = &self.gpu.queue;
        let tokens: Vec<u32> = batch.iter().flat_map(|(_, t)| t.iter().copied()).collect();
        let flat: Vec<u32> = layout.table.iter().flat_map(|&(s, p)| [s, p]).collect();
        queue.write_buffer(acts.tokens.buffer(), 0, bytemuck::cast_slice(&tokens));
        queue.write_buffer(acts.row_table.buffer(), 0, bytemuck::cast_slice(&flat));
        if let StepEnd::Sample(_, draws) = end {
            let last_rows: Vec<u32> = layout
                .spans
                .iter()
                .map(|&(_, first, n)| (first + n - 1) as u32)
                .collect();
            // Logits row i is batch entry i's last row.
            let identity: Vec<u32> = (0..count as u32).collect();
            queue.write_buffer(acts.head_rows.buffer(), 0, bytemuck::cast_slice(&last_rows));
            queue.write_buffer(
                acts.sample_rows.buffer(),
                0,
                bytemuck::cast_slice(&identity),
            );
            queue.write_buffer(acts.draws.buffer(), 0, bytemuck::cast_slice(draws));
        }
        Ok(rec)
    }

    /// Fuses the decode step's dispatches (`true`, the default) or runs each of them on
    /// its own, as before the fused layer (`WALSH_FUSE=off`, the page's `?fuse=off`): to
    /// measure what the fusions give on an adapter. Greedy tokens are the same either way
    /// (tests: `chunked_decoding_equals_one_step_per_readback_and_counts_its_work`).
    pub fn set_fusion(&mut self, on: bool) {
        if self.fusion != on {
            self.fusion = on;
            self.plan = None;
        }
    }

    /// Says whether the kernels built from now on will run for many generations (a
    /// server): then kernels are picked by run time alone, their compile paid once. On
    /// lavapipe and llvmpipe every prefill step takes attention's `attend_rows`, which by
    /// default only steps of 128 rows or more do, since it compiles in about ten times
    /// the time of the decode tile that shorter steps take
    /// ([`Attention::set_many_runs`]; the shipped Hadamard model's 120-token prefill:
    /// 36-37 against 65-67 ms). Default false. Only prefill changes: the recorded decode
    /// plan is kept.
    pub fn set_many_runs(&mut self, on: bool) {
        self.attention.set_many_runs(on);
    }

    /// Sets the keys per chunk of the split decode (by default sized to the adapter,
    /// [`attention::decode_chunk_for`]): lets tests take the split path with short
    /// contexts on adapters that would not split them.
    pub fn set_decode_chunk(&mut self, keys: usize) -> Result<(), ModelError> {
        let many_runs = self.attention.many_runs();
        self.attention = Attention::new(&self.gpu)?.with_decode_chunk(keys)?;
        self.attention.set_many_runs(many_runs);
        self.plan = None;
        Ok(())
    }

    /// Times every dispatch of a prefill of `prompt` (as sequence 0, from an empty cache)
    /// and of the decode step after it, each replayed `repeats` times (see
    /// [`crate::gpu::profile::time_recording`]), and the copy shader over the model's
    /// weight bytes for reference. With `rows` > 1 the decode step decodes that many
    /// sequences at once (the others prefilled with the same prompt, untimed), as a
    /// server's batch does. Greedy sampling; forgets every sequence first and leaves
    /// sequences `0..rows` holding the prompt and one decoded token.
    pub async fn profile(
        &mut self,
        prompt: &[u32],
        rows: usize,
        repeats: usize,
    ) -> Result<super::profile::DecoderProfile, ModelError> {
        use crate::gpu::profile::{run_recording, time_recording};
        if rows == 0 || rows > self.shape.max_seqs {
            return Err(ModelError::Input(format!(
                "a decode step of {rows} rows: this decoder holds 1 to {} sequences",
                self.shape.max_seqs
            )));
        }
        self.reset();
        let greedy = SamplingParams::greedy();
        let batch = [(0, prompt)];
        let layout = self.layout(&batch)?;
        let rec = self.prepare_step(&batch, &layout, StepEnd::Sample(&greedy, &[0.0]))?;
        let prefill = time_recording(&self.gpu, &rec, repeats).await?;
        for seq in 1..rows {
            let batch = [(seq, prompt)];
            let layout = self.layout(&batch)?;
            let rec = self.prepare_step(&batch, &layout, StepEnd::Sample(&greedy, &[0.0]))?;
            run_recording(&self.gpu, &rec).await?;
        }
        for len in &mut self.lengths[..rows] {
            *len = prompt.len();
        }
        let next = [*prompt.last().unwrap_or(&0)];
        let batch: Vec<(usize, &[u32])> = (0..rows).map(|s| (s, &next[..])).collect();
        let layout = self.layout(&batch)?;
        let draws = vec![0.0; rows];
        let rec = self.prepare_step(&batch, &layout, StepEnd::Sample(&greedy, &draws))?;
        let decode = time_recording(&self.gpu, &rec, repeats).await?;
        for len in &mut self.lengths[..rows] {
            *len += 1;
        }
        let weight_bytes = self
            .gpu
            .memory()
            .report()
            .by_category
            .iter()
            .find(|c| c.0 == MemoryCategory::Weights)
            .map_or(0, |c| c.1);
        let copy = super::profile::copy_bandwidth(&self.gpu, weight_bytes, repeats).await?;
        Ok(super::profile::DecoderProfile::new(
            &self.gpu,
            &self.config,
            prompt.len(),
            rows,
            prefill,
            decode,
            copy,
        ))
    }

    /// Appends each sequence's tokens and returns the logits of every appended row, per
    /// sequence in batch order (`[tokens, vocab]` flattened).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_logits(
        &mut self,
        batch: &[(usize, &[u32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        pollster::block_on(self.forward_logits_async(batch))
    }

    /// Appends each sequence's tokens and samples the next token of each from its last
    /// row, on the GPU, with `draws[i]` (uniform in [0, 1)) for batch entry i. One command
    /// buffer; reads back one u32 per sequence.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_sample(
        &mut self,
        batch: &[(usize, &[u32])],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<Vec<u32>, ModelError> {
        pollster::block_on(self.forward_sample_async(batch, sampling, draws))
    }

    /// The most rows one step's activations take in one storage binding of this adapter
    /// (the widest row: gate/up's output, or q|k|v's); longer host-fed steps run as
    /// several.
    pub fn max_step_rows(&self) -> usize {
        max_step_rows(&self.config, binding_bytes(&self.gpu))
    }

    /// Feeds `batch` (checked) in steps of at most [`GpuDecoder::max_step_rows`] rows,
    /// each submitted before the next is recorded (they share the activations); no
    /// logits are computed, nothing is sampled or read back. The rows `from_log` names
    /// take their tokens from the latest chunk's log.
    pub(super) fn feed(
        &mut self,
        batch: &[(usize, &[u32])],
        from_log: &[LogToken],
    ) -> Result<(), ModelError> {
        for step in split_steps(batch, self.max_step_rows()) {
            let layout = self.layout(&step)?;
            let encoder = self.host_step(&step, &layout, StepEnd::Feed, from_log)?;
            self.gpu.submit([encoder.finish()]);
        }
        Ok(())
    }

    /// [`GpuDecoder::forward_logits`], awaiting the readback. A step of more rows than
    /// the activations take runs as several, their logits joined.
    pub async fn forward_logits_async(
        &mut self,
        batch: &[(usize, &[u32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let layout = self.layout(batch)?;
        let max_rows = self.max_step_rows();
        if layout.rows > max_rows {
            let mut out = vec![Vec::new(); batch.len()];
            for step in split_steps(batch, max_rows) {
                let logits = Box::pin(self.forward_logits_async(&step)).await?;
                for ((seq, _), l) in step.iter().zip(logits) {
                    let i = batch
                        .iter()
                        .position(|(s, _)| s == seq)
                        .expect("from batch");
                    out[i].extend(l);
                }
            }
            return Ok(out);
        }
        let encoder = self.host_step(batch, &layout, StepEnd::Logits, &[])?;
        let vocab = self.config.vocab_size;
        let acts = self.acts.as_ref().expect("reserved by host_step");
        let rows = layout.rows;
        let all: Vec<f32> = if rows <= acts.logit_rows {
            // host_step recorded the head of every row.
            let bytes = (rows * vocab * 4) as u64;
            let read = self
                .gpu
                .finish_and_read(encoder, acts.logits.buffer(), bytes);
            bytemuck::pod_collect_to_vec(&read.await?)
        } else {
            // The head in chunks of logit_rows rows, each gathered from the residual and
            // read back before the next overwrites the logits; the first rides with the
            // step's own submission.
            let mut all = Vec::with_capacity(rows * vocab);
            let mut encoder = Some(encoder);
            let mut first = 0;
            while first < rows {
                let n = acts.logit_rows.min(rows - first);
                let idx: Vec<u32> = (first as u32..(first + n) as u32).collect();
                let queue = &self.gpu.queue;
                queue.write_buffer(acts.head_rows.buffer(), 0, bytemuck::cast_slice(&idx));
                let mut rec = Recording::new();
                self.record_head(&mut rec, n, Some(rows), false)?;
                let mut enc = encoder
                    .take()
                    .unwrap_or_else(|| self.gpu.encoder("logits chunk"));
                {
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("logits chunk"),
                        timestamp_writes: None,
                    });
                    rec.replay(&mut pass, self.gpu.counters());
                }
                let bytes = (n * vocab * 4) as u64;
                let read = self.gpu.finish_and_read(enc, acts.logits.buffer(), bytes);
                all.extend(bytemuck::pod_collect_to_vec::<u8, f32>(&read.await?));
                first += n;
            }
            all
        };
        Ok(layout
            .spans
            .iter()
            .map(|&(_, first, n)| all[first * vocab..(first + n) * vocab].to_vec())
            .collect())
    }

    /// [`GpuDecoder::forward_sample`], awaiting the readback.
    pub async fn forward_sample_async(
        &mut self,
        batch: &[(usize, &[u32])],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<Vec<u32>, ModelError> {
        let pending = self.start_sample(batch, sampling, draws)?;
        self.finish_decode(pending).await
    }

    /// Submits [`GpuDecoder::forward_sample`]'s step and returns without waiting, as
    /// [`GpuDecoder::start_decode`] does a chunk: its tokens (one per entry of `batch`)
    /// come from [`GpuDecoder::finish_decode`], and decode chunks started meanwhile
    /// continue from them on the GPU. Where a readback takes long (a browser that maps
    /// buffers on a timer), the device works on those chunks instead of waiting.
    pub fn start_sample(
        &mut self,
        batch: &[(usize, &[u32])],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<PendingChunk, ModelError> {
        self.start_sample_after_chunk(batch, &[], sampling, draws)
    }

    /// [`GpuDecoder::start_sample`] of a batch whose entries end with tokens that the
    /// latest decode chunk ([`GpuDecoder::start_decode`]) made, which the host need not
    /// have read yet: entry i's last `from_chunk[i]` tokens (placeholders in `batch`, any
    /// token of the vocabulary) are the chunk's last `from_chunk[i]` tokens of its
    /// sequence, copied on the GPU before the step runs. An empty `from_chunk` takes none.
    /// A context slide prefills a sequence's last tokens again this way while the chunk
    /// that made them is still being read back.
    pub fn start_sample_after_chunk(
        &mut self,
        batch: &[(usize, &[u32])],
        from_chunk: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<PendingChunk, ModelError> {
        super::generate::check_step(sampling, batch.len(), draws.len())?;
        let mut layout = self.layout(batch)?;
        let from_log = self.log_tokens(batch, from_chunk)?;
        let last: Vec<(usize, &[u32])>;
        let mut batch = batch;
        if layout.rows > self.max_step_rows() {
            // A prefill longer than the activations take: all but each sequence's last
            // token fed in steps that fit, then the last tokens sampled as one step.
            let cut = |t: &[u32]| t.len().saturating_sub(1);
            let head: Vec<(usize, &[u32])> =
                batch.iter().map(|&(s, t)| (s, &t[..cut(t)])).collect();
            self.feed(&head, &from_log)?;
            last = batch.iter().map(|&(s, t)| (s, &t[cut(t)..])).collect();
            batch = &last;
            layout = self.layout(batch)?;
        }
        let end = StepEnd::Sample(sampling, draws);
        let encoder = self.host_step(batch, &layout, end, &from_log)?;
        let acts = self.acts.as_ref().expect("reserved by host_step");
        let read = self
            .gpu
            .submit_read(encoder, acts.sampled.buffer(), 4 * batch.len() as u64)?;
        // host_step moved each sequence to its version after the step.
        let rows = batch
            .iter()
            .map(|&(seq, _)| (seq, self.versions[seq]))
            .collect();
        Ok(PendingChunk { read, rows })
    }

    /// Where the last `from_chunk[i]` tokens of each entry of a checked `batch` come from
    /// in the latest chunk's log.
    fn log_tokens(
        &self,
        batch: &[(usize, &[u32])],
        from_chunk: &[usize],
    ) -> Result<Vec<LogToken>, ModelError> {
        if from_chunk.is_empty() {
            return Ok(Vec::new());
        }
        if from_chunk.len() != batch.len() {
            return Err(ModelError::Input(format!(
                "{} counts of tokens from the latest chunk for a step of {} sequences",
                from_chunk.len(),
                batch.len()
            )));
        }
        let mut out = Vec::new();
        for (&(seq, tokens), &n) in batch.iter().zip(from_chunk).filter(|(_, n)| **n > 0) {
            let taken = || format!("sequence {seq} takes {n} of its tokens from the latest chunk");
            let Some((rows, steps)) = &self.last_chunk else {
                return Err(ModelError::Input(format!("{}, but none ran", taken())));
            };
            let Some(r) = rows.iter().position(|&s| s == seq) else {
                return Err(ModelError::Input(format!(
                    "{}, which it was not in",
                    taken()
                )));
            };
            if n > *steps || n > tokens.len() {
                return Err(ModelError::Input(format!(
                    "{}: that chunk made {steps} and the step feeds {}",
                    taken(),
                    tokens.len()
                )));
            }
            let first = self.lengths[seq] + tokens.len() - n;
            out.extend((0..n).map(|k| LogToken {
                seq: seq as u32,
                pos: (first + k) as u32,
                log: ((steps - n + k) * rows.len() + r) as u32,
            }));
        }
        Ok(out)
    }

    /// Builds what a generation of `prompts` (tokens per sequence, sequences 0, 1, ...)
    /// sampling with `sampling` will run, without running it: the prefill step's and the
    /// decode step's pipelines (compiled here, once, where a first step would compile them
    /// inside its timed work) and the decode chunks' recording, which the first chunk then
    /// reuses. Changes no sequence.
    pub fn prepare(
        &mut self,
        prompts: &[usize],
        sampling: &SamplingParams,
    ) -> Result<(), ModelError> {
        sampling.validate().map_err(ModelError::Input)?;
        let n = prompts.len();
        if n == 0 || n > self.shape.max_seqs {
            return Err(ModelError::Input(format!(
                "{n} prompts to prepare for: this decoder holds 1 to {} sequences",
                self.shape.max_seqs
            )));
        }
        let longest = prompts.iter().copied().max().unwrap_or(1);
        if prompts.contains(&0) || longest > self.shape.max_pos {
            return Err(ModelError::Input(format!(
                "prompts of {prompts:?} tokens: each must hold 1 to {} tokens",
                self.shape.max_pos
            )));
        }
        // The pipelines compile side by side (Gpu::build_together); on an error nothing
        // recorded here is kept.
        let gpu = self.gpu.clone();
        let built = gpu.build_together(|| self.record_prepared(prompts, longest, sampling));
        if built.is_err() {
            self.plan = None;
        }
        built
    }

    /// [`GpuDecoder::prepare`]'s recording of checked `prompts`, the longest `longest`.
    fn record_prepared(
        &mut self,
        prompts: &[usize],
        longest: usize,
        sampling: &SamplingParams,
    ) -> Result<(), ModelError> {
        let n = prompts.len();
        let zeros = vec![0u32; longest];
        let batch: Vec<(usize, &[u32])> = prompts
            .iter()
            .enumerate()
            .map(|(s, &len)| (s, &zeros[..len]))
            .collect();
        // The prefill's first step (a long prefill runs in steps of max_step_rows rows,
        // all with its kernels), with the logits and sampling of its sequences.
        let first = split_steps(&batch, self.max_step_rows()).swap_remove(0);
        let layout = self.layout(&first)?;
        self.reserve(layout.rows.max(n))?;
        self.record_step(first.len(), &layout, &StepEnd::Sample(sampling, &[]))?;
        if longest == self.shape.max_pos {
            return Ok(()); // no room to decode after them
        }
        // The decode step after the prompts, as start_decode records it, and a chunk
        // boundary's feedback.
        let last: Vec<(u32, u32)> = prompts
            .iter()
            .enumerate()
            .map(|(s, &len)| (s as u32, len as u32))
            .collect();
        self.plan = Some(self.decode_plan(&last, sampling)?);
        let acts = self.acts.as_ref().expect("reserved above");
        let mut feedback = Recording::new();
        feedback::encode_feedback(&self.gpu, &mut feedback, &acts.feedback(), n, 0, 1)?;
        Ok(())
    }

    /// The recorded decode step of a chunk whose rows' last positions are `last` (row r:
    /// (sequence, position)), before any feedback is recorded for it.
    fn decode_plan(
        &mut self,
        last: &[(u32, u32)],
        sampling: &SamplingParams,
    ) -> Result<DecodePlan, ModelError> {
        let seqs = last.len();
        let mut step = Recording::new();
        self.record_forward(&mut step, last, true)?;
        self.record_head(&mut step, seqs, None, true)?;
        self.record_sample(&mut step, seqs, sampling)?;
        Ok(DecodePlan {
            seqs,
            attn_chunks: self.attention.decode_chunks(last),
            sampling: *sampling,
            step,
            feedback: Vec::new(),
            steps: 0,
        })
    }

    /// Submits `draws.len() / seqs.len()` decode steps of the sequences `seqs` (any
    /// distinct sequences, in any order) as one chunk and returns without waiting. Row r
    /// of every step is sequence `seqs[r]`: step s feeds it the token sampled for it the
    /// step before (step 0: the token the last sampling step or chunk drew for it, which
    /// must be its next token) and samples with `draws[s * seqs.len() + r]`. Collect the
    /// tokens with [`GpuDecoder::finish_decode`]; later chunks may be started first, so the
    /// GPU never waits for the host.
    pub fn start_decode(
        &mut self,
        seqs: &[usize],
        sampling: &SamplingParams,
        draws: &[f32],
    ) -> Result<PendingChunk, ModelError> {
        sampling.validate().map_err(ModelError::Input)?;
        let n = seqs.len();
        if n == 0 || n > self.shape.max_seqs {
            return Err(ModelError::Input(format!(
                "a decode chunk of {n} sequences: the decoder holds 1 to {}",
                self.shape.max_seqs
            )));
        }
        let steps = draws.len() / n;
        if steps == 0 || steps > MAX_CHUNK_STEPS || steps * n != draws.len() {
            return Err(ModelError::Input(format!(
                "a decode chunk needs 1 to {MAX_CHUNK_STEPS} draws per sequence, got {} for {n}",
                draws.len()
            )));
        }
        // Before the rows' sources are looked up: growing the activations drops `sampled`.
        self.reserve(n)?;
        let mut rows = Vec::with_capacity(n);
        for (r, &s) in seqs.iter().enumerate() {
            if s >= self.shape.max_seqs || seqs[..r].contains(&s) {
                return Err(ModelError::Input(format!(
                    "a decode chunk's sequences must be distinct and below {}: {seqs:?}",
                    self.shape.max_seqs
                )));
            }
            if self.lengths[s] + steps > self.shape.max_pos {
                return Err(ModelError::ContextOverflow {
                    tokens: self.lengths[s],
                    new: steps,
                    context: self.shape.max_pos,
                });
            }
            // Its next token: in a slot of `sampled` (on the GPU, possibly still to be
            // computed by a chunk in flight), else as read back by the host.
            let slot = self.sampled_seqs.iter().position(|&x| x == Some(s));
            let known = self.read_back[s].filter(|&(v, _)| v == self.versions[s]);
            let (src, token) = match (slot, known) {
                (Some(slot), _) => (slot as u32, 0),
                (None, Some((_, token))) => (feedback::FROM_HOST, token),
                (None, None) => {
                    return Err(ModelError::Input(format!(
                        "sequence {s} has no sampled token to continue from: prefill it, or \
                         end its last step with sampling, first"
                    )));
                }
            };
            rows.push(feedback::ChunkRow {
                seq: s as u32,
                first_pos: self.lengths[s] as u32,
                src,
                token,
            });
        }
        let seqs = n;
        // The last step's rows decide how many key chunks attention needs.
        let last: Vec<(u32, u32)> = rows
            .iter()
            .map(|r| (r.seq, r.first_pos + steps as u32 - 1))
            .collect();
        let attn_chunks = self.attention.decode_chunks(&last);
        let reuse = self.plan.as_ref().is_some_and(|p| {
            p.seqs == seqs && p.attn_chunks == attn_chunks && p.sampling == *sampling
        });
        if !reuse {
            self.plan = None;
            self.plan = Some(self.decode_plan(&last, sampling)?);
        }
        let plan = self.plan.as_mut().expect("set above");
        let acts = self.acts.as_ref().expect("reserved above");
        if plan.steps != steps {
            plan.feedback = (0..=steps)
                .map(|s| {
                    let mut rec = Recording::new();
                    feedback::encode_feedback(&self.gpu, &mut rec, &acts.feedback(), seqs, s, steps)
                        .map(|()| rec)
                })
                .collect::<Result<_, _>>()?;
            plan.steps = steps;
        }
        let identity: Vec<u32> = (0..seqs as u32).collect();
        let queue = &self.gpu.queue;
        queue.write_buffer(
            acts.chunk.buffer(),
            0,
            bytemuck::cast_slice(&feedback::chunk_table(&rows, draws)),
        );
        queue.write_buffer(
            acts.sample_rows.buffer(),
            0,
            bytemuck::cast_slice(&identity),
        );
        let mut encoder = self.gpu.encoder("decode chunk");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("decode chunk"),
                timestamp_writes: None,
            });
            let counters = self.gpu.counters();
            for s in 0..steps {
                plan.feedback[s].replay(&mut pass, counters);
                plan.step.replay(&mut pass, counters);
            }
            plan.feedback[steps].replay(&mut pass, counters);
        }
        let read = self
            .gpu
            .submit_read(encoder, acts.log.buffer(), (steps * seqs * 4) as u64)?;
        let rows: Vec<(usize, u64)> = rows
            .iter()
            .map(|r| {
                let s = r.seq as usize;
                self.lengths[s] += steps;
                self.versions[s] += 1;
                (s, self.versions[s])
            })
            .collect();
        // After the chunk, slot r of `sampled` holds row r's sequence's next token, and
        // its log the chunk's tokens.
        self.sampled_seqs = rows.iter().map(|&(s, _)| Some(s)).collect();
        self.last_chunk = Some((rows.iter().map(|&(s, _)| s).collect(), steps));
        Ok(PendingChunk { read, rows })
    }

    /// Waits for a chunk from [`GpuDecoder::start_decode`] and returns its tokens, step by
    /// step (`[steps, seqs]` flattened), or for a step from [`GpuDecoder::start_sample`]
    /// and returns its tokens, one per entry of its batch.
    pub async fn finish_decode(&mut self, chunk: PendingChunk) -> Result<Vec<u32>, ModelError> {
        let seqs = chunk.rows.len();
        let bytes = self.gpu.wait_read(chunk.read).await?;
        let tokens: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        debug_assert!(tokens.len().is_multiple_of(seqs));
        // The last step's tokens are the rows' next ones, unless they moved on since.
        let last = &tokens[tokens.len() - seqs..];
        for (&(seq, version), &t) in chunk.rows.iter().zip(last) {
            self.note_read_back(seq, version, t);
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::logit_rows;

    #[test]
    fn the_logits_buffer_holds_the_sampled_rows_not_the_step() {
        // A 2,048-row prefill at Llama 3's vocabulary, one sequence: [rows, vocab] f32 was
        // 1,050,673,152 bytes; now 16 rows, 8,208,384 bytes.
        let (vocab, rows) = (128_256, 2048);
        assert_eq!(rows * vocab * 4, 1_050_673_152);
        let binding = 128 << 20; // a browser's
        assert_eq!(logit_rows(vocab, rows, 1, binding) * vocab * 4, 8_208_384);
        // Never fewer rows than sequences (each samples one), never more than the step.
        assert_eq!(logit_rows(vocab, rows, 32, binding), 32);
        assert_eq!(logit_rows(256, 100, 1, binding), 100);
        assert_eq!(logit_rows(256, 1 << 20, 1, binding), 8192);
        assert_eq!(logit_rows(256, 1 << 20, 1, 1 << 16), 64);
        assert_eq!(logit_rows(usize::MAX / 8, 16, 1, binding), 1);
    }
}
