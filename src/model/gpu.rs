//! The GPU decoder: weights on the device, a preallocated KV cache, and one command
//! buffer per step (prefill or decode) that ends with sampling, so a step reads back one
//! token per sequence.
//!
//! A step takes the new tokens of several sequences at once, packed row after row
//! (sequence by sequence). Every kernel works on the packed rows; a row table tells rope,
//! the KV cache and attention which (sequence, position) each row is.

use super::weights::{Model, Tensor, TensorData};
use super::{AttnOutput, Config, ModelError, Query};
use crate::gpu::{Gpu, GpuBuffer, MemoryCategory};
use crate::ops::attention::{Attention, AttnShape};
use crate::ops::hadamard::{Epilogue, Hadamard, WhtOptions, WhtPath};
use crate::ops::rope::{self, RopeTable};
use crate::ops::sample::{self, SamplingParams};
use crate::ops::{Matrix, elementwise, matmul, norm};

/// One layer's weights on the device. Norm weights and the Hadamard affine are f32;
/// matrices keep the file's format (f32 or packed f16).
struct GpuLayer {
    input_layernorm: GpuBuffer,          // [d]
    q_proj: Option<Matrix>,              // [d, d]          query = dense
    q_down: Option<Matrix>,              // [qh, d]         query = residual_mlp
    q_up: Option<Matrix>,                // [d, qh]
    k_proj: Matrix,                      // [d, d]
    v_proj: Matrix,                      // [d, d]
    o_proj: Option<Matrix>,              // [d, d]          attn_output = dense
    o_scale: Option<GpuBuffer>,          // [d]             attn_output = hadamard
    o_bias: Option<GpuBuffer>,           // [d]
    post_attention_layernorm: GpuBuffer, // [d]
    gate_proj: Matrix,                   // [inter, d]
    up_proj: Matrix,                     // [inter, d]
    down_proj: Matrix,                   // [d, inter]
}

fn matrix(gpu: &Gpu, t: &Tensor) -> Result<Matrix, ModelError> {
    let (rows, cols) = match t.shape[..] {
        [r, c] => (r, c),
        _ => {
            return Err(ModelError::Input(format!(
                "tensor `{}` should be a matrix, has shape {:?}",
                t.name, t.shape
            )));
        }
    };
    Ok(match &t.data {
        TensorData::F32(v) => Matrix::from_f32(gpu, &t.name, v, rows, cols)?,
        TensorData::F16(bits) => Matrix::from_f16_bits(gpu, &t.name, bits, rows, cols)?,
    })
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
    x: GpuBuffer,           // [rows, d] residual stream
    x_alt: GpuBuffer,       // [rows, d] the other half of the Hadamard ping-pong
    xn: GpuBuffer,          // [rows, d] normalized x (and q for identity queries)
    q: GpuBuffer,           // [rows, d]
    k: GpuBuffer,           // [rows, d]
    v: GpuBuffer,           // [rows, d]
    att: GpuBuffer,         // [rows, d] attention output, heads concatenated
    qh: GpuBuffer,          // [rows, qh] residual query MLP hidden
    gate: GpuBuffer,        // [rows, inter]
    up: GpuBuffer,          // [rows, inter]
    hb: GpuBuffer,          // [rows, inter] silu(gate) * up
    logits: GpuBuffer,      // [rows, vocab]
    tokens: GpuBuffer,      // u32 [rows]
    row_table: GpuBuffer,   // u32 [rows, 2]: (sequence, position)
    sample_rows: GpuBuffer, // u32 [max_seqs]: logits row sampled for each sequence
    draws: GpuBuffer,       // f32 [max_seqs]
    sampled: GpuBuffer,     // u32 [max_seqs]
}

impl Activations {
    fn new(
        gpu: &Gpu,
        config: &Config,
        capacity: usize,
        max_seqs: usize,
    ) -> Result<Self, ModelError> {
        let f = |label: &str, width: usize| {
            gpu.storage(
                MemoryCategory::Activations,
                label,
                (capacity * width * 4) as u64,
            )
        };
        let d = config.hidden_size;
        let inter = config.intermediate_size;
        Ok(Self {
            capacity,
            x: f("x", d)?,
            x_alt: f("x alt", d)?,
            xn: f("xn", d)?,
            q: f("q", d)?,
            k: f("k", d)?,
            v: f("v", d)?,
            att: f("att", d)?,
            qh: f("qh", config.query_mlp_hidden())?,
            gate: f("gate", inter)?,
            up: f("up", inter)?,
            hb: f("hb", inter)?,
            logits: f("logits", config.vocab_size)?,
            tokens: f("tokens", 1)?,
            row_table: f("row table", 2)?,
            sample_rows: gpu.storage(
                MemoryCategory::Activations,
                "sample rows",
                4 * max_seqs as u64,
            )?,
            draws: gpu.storage(MemoryCategory::Activations, "draws", 4 * max_seqs as u64)?,
            sampled: gpu.storage(MemoryCategory::Activations, "sampled", 4 * max_seqs as u64)?,
        })
    }
}

/// The decoder on one device: weights, KV cache for `max_seqs` sequences of up to
/// `max_positions` tokens, and the per-step activations.
pub struct GpuDecoder<'g> {
    gpu: &'g Gpu,
    config: Config,
    embed_tokens: Matrix, // [vocab, d]
    layers: Vec<GpuLayer>,
    norm: GpuBuffer,                 // [d]
    lm_head: Option<Matrix>,         // [vocab, d]; None: tied to embed_tokens
    kv: Vec<(GpuBuffer, GpuBuffer)>, // per layer: k and v caches, [max_seqs, max_positions, d]
    shape: AttnShape,
    rope: RopeTable,
    hadamard: Hadamard<'g>,
    attention: Attention<'g>,
    acts: Option<Activations>,
    lengths: Vec<usize>, // tokens in the cache, per sequence
}

/// Where each sequence's rows sit in a step's packed batch.
struct StepLayout {
    rows: usize,
    /// (sequence, first row, row count)
    spans: Vec<(usize, usize, usize)>,
}

impl<'g> GpuDecoder<'g> {
    /// Uploads `model` and allocates the KV cache. Fails with a clear error when the cache
    /// or a weight exceeds the adapter's limits.
    pub fn new(
        gpu: &'g Gpu,
        model: &Model,
        max_seqs: usize,
        max_positions: usize,
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
        let w = &model.weights;
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(GpuLayer {
                input_layernorm: vector(gpu, &l.input_layernorm)?,
                q_proj: opt(&l.q_proj, |t| matrix(gpu, t))?,
                q_down: opt(&l.q_down, |t| matrix(gpu, t))?,
                q_up: opt(&l.q_up, |t| matrix(gpu, t))?,
                k_proj: matrix(gpu, &l.k_proj)?,
                v_proj: matrix(gpu, &l.v_proj)?,
                o_proj: opt(&l.o_proj, |t| matrix(gpu, t))?,
                o_scale: opt(&l.o_scale, |t| vector(gpu, t))?,
                o_bias: opt(&l.o_bias, |t| vector(gpu, t))?,
                post_attention_layernorm: vector(gpu, &l.post_attention_layernorm)?,
                gate_proj: matrix(gpu, &l.gate_proj)?,
                up_proj: matrix(gpu, &l.up_proj)?,
                down_proj: matrix(gpu, &l.down_proj)?,
            });
        }
        let d = config.hidden_size;
        let cache_bytes = (max_seqs * max_positions * d * 4) as u64;
        let mut kv = Vec::with_capacity(layers.len());
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
            kv.push((k, v));
        }
        let shape = AttnShape {
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
            max_seqs,
            max_pos: max_positions,
        };
        Ok(Self {
            gpu,
            embed_tokens: matrix(gpu, &w.embed_tokens)?,
            layers,
            norm: vector(gpu, &w.norm)?,
            lm_head: opt(&w.lm_head, |t| matrix(gpu, t))?,
            kv,
            shape,
            rope: RopeTable::new(gpu, max_positions, config.head_dim(), config.rope_theta)?,
            hadamard: Hadamard::new(gpu)?,
            attention: Attention::new(gpu)?,
            acts: None,
            lengths: vec![0; max_seqs],
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
        self.lengths.iter_mut().for_each(|l| *l = 0);
    }

    /// Forgets sequence `seq` only.
    pub fn reset_sequence(&mut self, seq: usize) {
        if let Some(l) = self.lengths.get_mut(seq) {
            *l = 0;
        }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Checks the batch and lays its rows out, sequence after sequence.
    fn layout(&self, batch: &[(usize, &[u32])]) -> Result<StepLayout, ModelError> {
        let mut seen = vec![false; self.shape.max_seqs];
        let mut spans = Vec::with_capacity(batch.len());
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
            rows += tokens.len();
        }
        if rows == 0 {
            return Err(ModelError::Input("a step needs at least one token".into()));
        }
        Ok(StepLayout { rows, spans })
    }

    /// Records one forward pass over the packed batch into `encoder`, leaving logits for
    /// every row in `acts.logits`. Advances the sequence lengths.
    fn encode_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        batch: &[(usize, &[u32])],
        layout: &StepLayout,
    ) -> Result<(), ModelError> {
        let gpu = self.gpu;
        let rows = layout.rows;
        if self.acts.as_ref().is_none_or(|a| a.capacity < rows) {
            self.acts = None; // free the old buffers first
            self.acts = Some(Activations::new(
                gpu,
                &self.config,
                rows.max(16),
                self.shape.max_seqs,
            )?);
        }
        let acts = self.acts.as_ref().expect("allocated above");

        // Host-side tables for this step.
        let mut tokens = Vec::with_capacity(rows);
        let mut table = Vec::with_capacity(rows);
        for &(seq, toks) in batch {
            for (i, &t) in toks.iter().enumerate() {
                tokens.push(t);
                table.push((seq as u32, (self.lengths[seq] + i) as u32));
            }
        }
        let flat: Vec<u32> = table.iter().flat_map(|&(s, p)| [s, p]).collect();
        gpu.queue
            .write_buffer(acts.tokens.buffer(), 0, bytemuck::cast_slice(&tokens));
        gpu.queue
            .write_buffer(acts.row_table.buffer(), 0, bytemuck::cast_slice(&flat));
        let decode = layout.spans.iter().all(|&(_, _, n)| n == 1);

        let c = &self.config;
        let (d, inter, eps) = (c.hidden_size, c.intermediate_size, c.rms_norm_eps as f32);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(if decode { "decode step" } else { "prefill" }),
            timestamp_writes: None,
        });
        let p = &mut pass;
        let (mut x, mut x_alt) = (&acts.x, &acts.x_alt);
        elementwise::encode_embed(gpu, p, &self.embed_tokens, &acts.tokens, x, rows)?;
        for (layer, (k_cache, v_cache)) in self.layers.iter().zip(&self.kv) {
            // attention block
            norm::encode_rmsnorm(gpu, p, x, &layer.input_layernorm, &acts.xn, rows, d, eps)?;
            matmul::encode_matmul(gpu, p, &layer.k_proj, &acts.xn, &acts.k, rows, false)?;
            matmul::encode_matmul(gpu, p, &layer.v_proj, &acts.xn, &acts.v, rows, false)?;
            let q = match c.query {
                Query::Dense => {
                    let wq = layer.q_proj.as_ref().expect("validated by the loader");
                    matmul::encode_matmul(gpu, p, wq, &acts.xn, &acts.q, rows, false)?;
                    &acts.q
                }
                Query::Identity => &acts.xn, // k and v are already computed from xn
                Query::ResidualMlp => {
                    let (down, up) = (layer.q_down.as_ref(), layer.q_up.as_ref());
                    let (down, up) = down.zip(up).expect("validated by the loader");
                    matmul::encode_matmul(gpu, p, down, &acts.xn, &acts.qh, rows, false)?;
                    elementwise::encode_silu(gpu, p, &acts.qh, rows * down.rows)?;
                    matmul::encode_matmul(gpu, p, up, &acts.qh, &acts.xn, rows, true)?;
                    &acts.xn
                }
            };
            rope::encode_rope(
                gpu,
                p,
                q,
                &acts.row_table,
                &self.rope,
                rows,
                c.num_attention_heads,
            )?;
            rope::encode_rope(
                gpu,
                p,
                &acts.k,
                &acts.row_table,
                &self.rope,
                rows,
                c.num_attention_heads,
            )?;
            let att = &self.attention;
            att.encode_kv_write(
                p,
                &acts.k,
                &acts.v,
                &acts.row_table,
                &table,
                k_cache,
                v_cache,
                self.shape,
            )?;
            // Same function, work split for one query per sequence or for many.
            let attend = if decode {
                Attention::encode_decode
            } else {
                Attention::encode_prefill
            };
            let rt = &acts.row_table;
            attend(
                att, p, q, k_cache, v_cache, rt, &table, &acts.att, self.shape,
            )?;
            match c.attn_output {
                AttnOutput::Dense => {
                    let wo = layer.o_proj.as_ref().expect("validated by the loader");
                    matmul::encode_matmul(gpu, p, wo, &acts.att, x, rows, true)?;
                }
                AttnOutput::Hadamard => {
                    // x_alt = x + o_scale * H(att) / sqrt(d) + o_bias, in one dispatch.
                    let epilogue = Epilogue {
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
            // feed-forward block
            norm::encode_rmsnorm(
                gpu,
                p,
                x,
                &layer.post_attention_layernorm,
                &acts.xn,
                rows,
                d,
                eps,
            )?;
            matmul::encode_matmul(gpu, p, &layer.gate_proj, &acts.xn, &acts.gate, rows, false)?;
            matmul::encode_matmul(gpu, p, &layer.up_proj, &acts.xn, &acts.up, rows, false)?;
            elementwise::encode_swiglu(gpu, p, &acts.gate, &acts.up, &acts.hb, rows * inter)?;
            matmul::encode_matmul(gpu, p, &layer.down_proj, &acts.hb, x, rows, true)?;
        }
        norm::encode_rmsnorm(gpu, p, x, &self.norm, &acts.xn, rows, d, eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        matmul::encode_matmul(gpu, p, head, &acts.xn, &acts.logits, rows, false)?;
        drop(pass);
        for &(seq, toks) in batch {
            self.lengths[seq] += toks.len();
        }
        Ok(())
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

    /// [`GpuDecoder::forward_logits`], awaiting the readback.
    pub async fn forward_logits_async(
        &mut self,
        batch: &[(usize, &[u32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let layout = self.layout(batch)?;
        let mut encoder = self.gpu.encoder("forward");
        self.encode_forward(&mut encoder, batch, &layout)?;
        let vocab = self.config.vocab_size;
        let acts = self.acts.as_ref().expect("allocated by encode_forward");
        let bytes = self
            .gpu
            .finish_and_read(
                encoder,
                acts.logits.buffer(),
                (layout.rows * vocab * 4) as u64,
            )
            .await?;
        let all: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
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
        super::generate::check_step(sampling, batch.len(), draws.len())?;
        let layout = self.layout(batch)?;
        let mut encoder = self.gpu.encoder("step");
        self.encode_forward(&mut encoder, batch, &layout)?;
        let acts = self.acts.as_ref().expect("allocated by encode_forward");
        let last_rows: Vec<u32> = layout
            .spans
            .iter()
            .map(|&(_, first, n)| (first + n - 1) as u32)
            .collect();
        self.gpu.queue.write_buffer(
            acts.sample_rows.buffer(),
            0,
            bytemuck::cast_slice(&last_rows),
        );
        self.gpu
            .queue
            .write_buffer(acts.draws.buffer(), 0, bytemuck::cast_slice(draws));
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("sample"),
                timestamp_writes: None,
            });
            sample::encode_sample(
                self.gpu,
                &mut pass,
                &acts.logits,
                &acts.sample_rows,
                &acts.draws,
                &acts.sampled,
                batch.len(),
                self.config.vocab_size,
                sampling,
            )?;
        }
        let bytes = self
            .gpu
            .finish_and_read(encoder, acts.sampled.buffer(), 4 * batch.len() as u64)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
