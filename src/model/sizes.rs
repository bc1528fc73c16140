//! Every size of a model, computed in one place: its parameters, the bytes of its weights
//! file, the buffers the GPU decoder makes (weights as stored, stacked matrices, the rope
//! table, the KV cache), the bytes a decode step reads per token, and the checks made
//! before any of it is allocated (against walsh's own limits in [`crate::limits`] and
//! against an adapter's buffer limits). The loader, the decoders' callers (CLI, page),
//! `generate --json` and the bench all read their figures from here.

use std::fmt;

use super::Config;
use super::quant::quantized_by_default;
use super::weights::{Model, Tensor, expected_tensors, stacked_format};
use crate::gpu::{Gpu, GpuError};
use crate::limits::{
    LimitError, MAX_RUN_BYTES, MAX_SAFETENSORS_HEADER_BYTES, Unit, human_bytes, product,
};
use crate::ops::WeightFormat;
use crate::ops::attention::KvFormat;

/// Number of parameters a model of `config` has (every tensor of
/// [`expected_tensors`]), without overflow.
pub fn parameters(config: &Config) -> u128 {
    expected_tensors(config)
        .iter()
        .fold(0u128, |sum, (_, shape)| sum.saturating_add(product(shape)))
}

/// The parameters of a random model of `config`, at most `limit`
/// ([`crate::limits::random_parameter_limit`]).
pub fn random_model_parameters(config: &Config, limit: u64) -> Result<u64, LimitError> {
    let needed = parameters(config);
    if needed > limit as u128 {
        return Err(LimitError {
            what: format!(
                "a random model of d_model {}, {} layers, FFN {} and context {}",
                config.hidden_size,
                config.num_hidden_layers,
                config.intermediate_size,
                config.max_position_embeddings
            ),
            needs: "has",
            needed,
            limit,
            limit_name: "for a random model",
            unit: Unit::Parameters,
            hint: format!(
                " (the memory free here at {} bytes a parameter): choose fewer layers or a \
                 smaller width",
                crate::limits::RANDOM_MODEL_BYTES_PER_PARAMETER
            ),
        });
    }
    Ok(needed as u64)
}

/// Bytes of one position of one layer's key (or value) cache on the GPU: every KV head's
/// values as `kv` stores them, with the quantized formats' scale word per head. With
/// grouped-query attention the cache holds `num_key_value_heads` heads, not one per query
/// head.
pub fn kv_position_bytes(config: &Config, kv: KvFormat) -> u64 {
    let heads = config.num_attention_heads.max(1);
    kv.position_bytes(config.kv_heads(), config.hidden_size / heads)
}

/// Bytes of one layer's key (or value) cache buffer: `seqs x positions` positions.
pub fn kv_cache_bytes(config: &Config, seqs: usize, positions: usize, kv: KvFormat) -> u128 {
    product(&[seqs, positions]).saturating_mul(kv_position_bytes(config, kv) as u128)
}

/// Bytes of the rope table row of one position: a cos and a sin in f32 per pair of each
/// head's dimensions (`ops::rope::RopeTable`).
pub fn rope_row_bytes(config: &Config) -> u64 {
    (config.head_dim() / 2 * 8) as u64
}

/// Where a decoder runs, for [`decoder_memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The CPU reference: an f32 copy of the weights per sequence, plus an f32 cache (its
    /// values rounded to the cache format).
    Cpu,
    /// The GPU: the cache in its format (the adapter's own limits are checked when it is
    /// allocated).
    Gpu(KvFormat),
}

/// Bytes a decoder of `seqs` sequences of `context` positions sets aside: the KV cache
/// (`2 x layers x seqs x context x kv_dim` values, kv_dim = KV heads x head_dim (d_model
/// without grouping), 4 bytes each on the CPU; on the GPU
/// as the format stores them, [`KvFormat::position_bytes`] per position) and, on the CPU,
/// each sequence's f32 weights; at most [`MAX_RUN_BYTES`].
pub fn decoder_memory(
    config: &Config,
    seqs: usize,
    context: usize,
    placement: Placement,
) -> Result<u64, LimitError> {
    let one_cache = match placement {
        Placement::Cpu => product(&[seqs, context, config.kv_dim(), 4]),
        Placement::Gpu(kv) => kv_cache_bytes(config, seqs, context, kv),
    };
    let cache = product(&[2, config.num_hidden_layers]).saturating_mul(one_cache);
    let weights = match placement {
        Placement::Cpu => parameters(config).saturating_mul(4 * seqs as u128),
        Placement::Gpu(_) => 0,
    };
    let needed = cache.saturating_add(weights);
    if needed > MAX_RUN_BYTES as u128 {
        let per_seq = needed / seqs.max(1) as u128;
        return Err(LimitError {
            what: format!(
                "{seqs} sequence(s) of {context} positions ({} KV cache{})",
                human_bytes(cache),
                if placement == Placement::Cpu {
                    format!(", {} of f32 weights", human_bytes(weights))
                } else {
                    String::new()
                }
            ),
            needs: "take",
            needed,
            limit: MAX_RUN_BYTES,
            limit_name: "per run",
            unit: Unit::Bytes,
            hint: format!(
                ": {} fit (each takes {})",
                MAX_RUN_BYTES as u128 / per_seq.max(1),
                human_bytes(per_seq)
            ),
        });
    }
    Ok(needed as u64)
}

/// Bytes of the logits of one evaluation window (`context x vocab` f32), at most
/// [`MAX_RUN_BYTES`].
pub fn eval_window(config: &Config) -> Result<u64, LimitError> {
    let needed = product(&[config.max_position_embeddings, config.vocab_size, 4]);
    if needed > MAX_RUN_BYTES as u128 {
        return Err(LimitError {
            what: format!(
                "the logits of one window ({} positions x {} tokens)",
                config.max_position_embeddings, config.vocab_size
            ),
            needs: "take",
            needed,
            limit: MAX_RUN_BYTES,
            limit_name: "per run",
            unit: Unit::Bytes,
            hint: String::new(),
        });
    }
    Ok(needed as u64)
}

/// The most bytes a `model.safetensors` for `config` can have: the 8-byte header length,
/// the largest header, and every parameter as f32. A longer file cannot be valid, so it
/// is refused before it is read.
pub fn max_weights_file_bytes(config: &Config) -> u64 {
    let bound = parameters(config)
        .saturating_mul(4)
        .saturating_add(8 + MAX_SAFETENSORS_HEADER_BYTES as u128);
    bound.min(u64::MAX as u128) as u64
}

/// A buffer the GPU decoder would create that the adapter cannot hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// The tensor (or stacked tensors, or cache) the buffer holds.
    pub what: String,
    pub bytes: u64,
    /// The WebGPU name of the limit: `maxStorageBufferBindingSize` or `maxBufferSize`.
    pub limit_name: &'static str,
    pub limit: u64,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "{} needs {} bytes ({:.1} MiB) but this adapter's {} is {} bytes ({:.1} MiB): \
             the model does not fit this device; choose a smaller model or another device",
            self.what,
            self.bytes,
            mib(self.bytes),
            self.limit_name,
            self.limit,
            mib(self.limit)
        )
    }
}

impl std::error::Error for TooLarge {}

impl TooLarge {
    /// The GPU floor's error for the same refusal, naming `gpu`'s adapter.
    pub fn on(self, gpu: &Gpu) -> GpuError {
        GpuError::LimitExceeded {
            what: self.what,
            requested: self.bytes,
            limit: self.limit,
            adapter: gpu.info().name.clone(),
        }
    }
}

/// The adapter limits that bound one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferLimits {
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
}

impl From<&wgpu::Limits> for BufferLimits {
    fn from(l: &wgpu::Limits) -> Self {
        Self {
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
        }
    }
}

/// Bytes of tensors stacked into one matrix, in the format [`stacked_format`] picks.
fn stacked_bytes(parts: &[&Tensor]) -> u64 {
    let cols = parts
        .first()
        .map_or(0, |t| t.shape.last().copied().unwrap_or(1));
    let elements: usize = parts.iter().map(|t| t.len()).sum();
    match (stacked_format(parts), parts.first().map(|t| t.shape.len())) {
        (format, Some(2)) => format.matrix_bytes(elements / cols.max(1), cols) as u64,
        _ => elements as u64 * 4,
    }
}

/// The name [`decoder_buffers`] gives the rope table (a cos and a sin in f32 per pair of
/// each head's dimensions, per position), before its size.
pub const ROPE_TABLE: &str = "the rope cos/sin table";

/// A buffer the GPU decoder makes: what it holds and its bytes; for a weight matrix,
/// which the decoder splits by rows across bindings where it exceeds one
/// (`ops::RowSplit`), the bytes of two rows: all one binding must take.
struct Planned {
    what: String,
    bytes: u64,
    two_rows: Option<u64>,
}

impl Planned {
    fn whole(what: String, bytes: u64) -> Self {
        Self {
            what,
            bytes,
            two_rows: None,
        }
    }

    fn matrix(what: String, format: WeightFormat, rows: usize, cols: usize) -> Self {
        Self {
            what,
            bytes: format.matrix_bytes(rows, cols) as u64,
            two_rows: Some(format.matrix_bytes(2, cols) as u64),
        }
    }

    /// Tensors stacked into one buffer (one tensor alone included): a matrix in the
    /// format [`stacked_format`] picks (a single one keeps the file's: packed f16, q8, q4
    /// or f32), or a vector (norms, the Hadamard affine) widened to f32.
    fn stacked(what: String, parts: &[&Tensor]) -> Self {
        match parts.first().map(|t| &t.shape[..]) {
            Some(&[_, cols]) => {
                let rows = parts.iter().map(|t| t.shape[0]).sum();
                Self::matrix(what, stacked_format(parts), rows, cols)
            }
            _ => Self::whole(what, stacked_bytes(parts)),
        }
    }

    /// What one binding must hold: the buffer, or two rows of a matrix.
    fn binding(self) -> (String, u64) {
        match self.two_rows {
            Some(bytes) => (
                format!("two rows of {} (split by rows across bindings)", self.what),
                bytes,
            ),
            None => (self.what, self.bytes),
        }
    }
}

/// Every buffer the GPU decoder makes for `model` that outlives a step (as
/// `GpuDecoder::new` builds them: q, k and v stacked, gate and up interleaved, the rope
/// table, one key and one value cache per layer; the caches last), with what it holds.
pub fn decoder_buffers(
    model: &Model,
    max_seqs: usize,
    max_positions: usize,
    kv: KvFormat,
) -> Vec<(String, u64)> {
    let plan = decoder_plan(model, max_seqs, max_positions, kv);
    plan.into_iter().map(|p| (p.what, p.bytes)).collect()
}

/// [`decoder_buffers`], each with its two rows where the decoder may split it.
fn decoder_plan(
    model: &Model,
    max_seqs: usize,
    max_positions: usize,
    kv: KvFormat,
) -> Vec<Planned> {
    let w = &model.weights;
    let table = &w.embed_tokens;
    let mut out = vec![Planned::stacked(table.name.clone(), &[table])];
    for (i, l) in w.layers.iter().enumerate() {
        let mut qkv: Vec<&Tensor> = l.q_proj.iter().collect();
        qkv.extend([&l.k_proj, &l.v_proj]);
        let names: Vec<&str> = qkv
            .iter()
            .map(|t| t.name.rsplit('.').nth(1).unwrap_or(&t.name))
            .collect();
        out.push(Planned::stacked(
            format!(
                "model.layers.{i}.self_attn.qkv ({} stacked)",
                names.join(" + ")
            ),
            &qkv,
        ));
        out.push(Planned::stacked(
            format!("model.layers.{i}.mlp.gate_up (gate_proj + up_proj stacked)"),
            &[&l.gate_proj, &l.up_proj],
        ));
        let singles = [
            Some(&l.input_layernorm),
            l.q_down.as_ref(),
            l.q_up.as_ref(),
            l.o_proj.as_ref(),
            l.o_scale.as_ref(),
            l.o_bias.as_ref(),
            Some(&l.post_attention_layernorm),
            Some(&l.down_proj),
        ];
        out.extend(
            singles
                .into_iter()
                .flatten()
                .map(|t| Planned::stacked(t.name.clone(), &[t])),
        );
    }
    out.push(Planned::stacked(w.norm.name.clone(), &[&w.norm]));
    if let Some(t) = &w.lm_head {
        out.push(Planned::stacked(t.name.clone(), &[t]));
    }
    let c = &model.config;
    out.push(Planned::whole(
        format!("{ROPE_TABLE} ({max_positions} positions)"),
        max_positions as u64 * rope_row_bytes(c),
    ));
    let cache = kv_cache_bytes(c, max_seqs, max_positions, kv) as u64;
    out.push(Planned::whole(
        format!(
            "each layer's key and value cache ({max_seqs} sequence(s) x {max_positions} \
             positions x {} values, {})",
            c.kv_dim(),
            kv.name()
        ),
        cache,
    ));
    out
}

/// Checks every buffer of [`decoder_buffers`] against `limits` before any upload; the
/// error names the first buffer too large and the limit it exceeds. Weight matrices (the
/// embedding, the LM head and every layer's) are split by rows across bindings where
/// they exceed one (`ops::RowSplit`), so of them two rows must fit.
pub fn check_decoder_fits(
    model: &Model,
    max_seqs: usize,
    max_positions: usize,
    kv: KvFormat,
    limits: BufferLimits,
) -> Result<(), TooLarge> {
    let plan = decoder_plan(model, max_seqs, max_positions, kv);
    check_buffers_fit(plan.into_iter().map(Planned::binding), limits)
}

/// Checks `(what, bytes)` buffers against `limits`; the error names the first buffer too
/// large and the limit it exceeds.
pub fn check_buffers_fit(
    buffers: impl IntoIterator<Item = (String, u64)>,
    limits: BufferLimits,
) -> Result<(), TooLarge> {
    for (what, bytes) in buffers {
        for (limit_name, limit) in [
            (
                "maxStorageBufferBindingSize",
                limits.max_storage_buffer_binding_size,
            ),
            ("maxBufferSize", limits.max_buffer_size),
        ] {
            if bytes > limit {
                return Err(TooLarge {
                    what,
                    bytes,
                    limit_name,
                    limit,
                });
            }
        }
    }
    Ok(())
}

/// Bytes one decode step reads per decoded token, averaged over the decode steps of a
/// generation of `new_tokens` tokens after a `prompt`-token prompt in each of `batch`
/// sequences, counted from the buffers the GPU decoder holds ([`decoder_buffers`]):
///
/// - every weight buffer once per step, shared by the batch (each matrix is read whole
///   by the step's matrix products; norms and the Hadamard affine are small vectors),
///   except the embedding table, of which a step reads one row per sequence (a tied
///   lm_head reads it whole, as the head);
/// - per sequence, the keys and values of every position up to the fed token, in each
///   layer: `2 x layers x (p + 1) x kv_dim x` the cache's bytes per value at position
///   `p` (kv_dim = KV heads x head_dim: d without grouping).
///   The decode steps feed positions `prompt .. prompt + new_tokens - 1` (the prefill
///   samples the first token), so `p + 1` averages `prompt + new_tokens / 2`.
///
/// Activations (a few vectors of d per token) and writes are left out: at decode the
/// weights and the cache are what the step streams from memory.
pub fn decode_bytes_per_token(
    model: &Model,
    batch: usize,
    prompt: usize,
    new_tokens: usize,
    kv: KvFormat,
) -> f64 {
    let c = &model.config;
    let w = &model.weights;
    let weights = weight_bytes(model);
    let embed = decoder_buffers(model, 1, 1, kv)[0].1;
    // One row as the gather reads it (the table's bytes over its rows).
    let embed_row = embed / c.vocab_size.max(1) as u64;
    // A step reads the rope table at each sequence's position only.
    let rope_row = rope_row_bytes(c);
    let tied = w.lm_head.is_none();
    let per_step =
        weights - embed + batch as u64 * (embed_row + rope_row) + if tied { embed } else { 0 };
    let positions = prompt as f64 + new_tokens as f64 / 2.0;
    let kv_per_token =
        2.0 * c.num_hidden_layers as f64 * positions * kv_position_bytes(c, kv) as f64;
    per_step as f64 / batch as f64 + kv_per_token
}

/// The matrices the GPU decoder stacks into one buffer: (name suffix, the stack's).
const STACKS: [(&str, &str); 5] = [
    (".self_attn.q_proj.weight", ".self_attn.qkv"),
    (".self_attn.k_proj.weight", ".self_attn.qkv"),
    (".self_attn.v_proj.weight", ".self_attn.qkv"),
    (".mlp.gate_proj.weight", ".mlp.gate_up"),
    (".mlp.up_proj.weight", ".mlp.gate_up"),
];

/// Bytes of the model's weight buffers in [`decoder_buffers`] (all but the rope table and
/// the KV cache).
pub fn weight_bytes(model: &Model) -> u64 {
    let buffers = decoder_buffers(model, 1, 1, KvFormat::F16);
    buffers[..buffers.len() - 1]
        .iter()
        .filter(|b| !b.0.starts_with(ROPE_TABLE))
        .map(|b| b.1)
        .sum()
}

/// The buffers [`decoder_buffers`] lists for a [`random_model`](super::init::random_model) of `config` in `format`
/// with a cache of `seqs` x `positions`, from the config alone: a grid cell beyond the
/// adapter's limits is skipped before its random model (up to gigabytes at d_model 4096)
/// is built. Matrices take `format` where `walsh quantize` would quantize them, f16 (f32
/// for an f32 model) elsewhere; vectors are f32; q, k, v and gate, up are stacked.
pub fn planned_buffers(
    config: &Config,
    format: WeightFormat,
    seqs: usize,
    positions: usize,
    kv: KvFormat,
) -> Vec<(String, u64)> {
    let plan = config_plan(config, format, seqs, positions, kv);
    plan.into_iter().map(|p| (p.what, p.bytes)).collect()
}

/// [`check_decoder_fits`] for the model [`planned_buffers`] plans, before it exists.
pub fn check_planned_fits(
    config: &Config,
    format: WeightFormat,
    seqs: usize,
    positions: usize,
    kv: KvFormat,
    limits: BufferLimits,
) -> Result<(), TooLarge> {
    let plan = config_plan(config, format, seqs, positions, kv);
    check_buffers_fit(plan.into_iter().map(Planned::binding), limits)
}

/// [`planned_buffers`], each with its two rows where the decoder may split it.
fn config_plan(
    config: &Config,
    format: WeightFormat,
    seqs: usize,
    positions: usize,
    kv: KvFormat,
) -> Vec<Planned> {
    let matrix_format = |name: &str, shape: &[usize]| match format {
        WeightFormat::Q8 | WeightFormat::Q4 if !quantized_by_default(name, shape) => {
            WeightFormat::F16
        }
        f => f,
    };
    let mut out = Vec::new();
    let mut stacks: Vec<(String, WeightFormat, usize, usize)> = Vec::new();
    for (name, shape) in expected_tensors(config) {
        if shape.len() != 2 {
            out.push(Planned::whole(
                name,
                shape.iter().product::<usize>() as u64 * 4,
            ));
            continue;
        }
        let f = matrix_format(&name, &shape);
        let (rows, cols) = (shape[0], shape[1]);
        let stack = STACKS.iter().find_map(|(suffix, stack)| {
            name.strip_suffix(suffix)
                .map(|layer| format!("{layer}{stack}"))
        });
        match stack {
            Some(key) => match stacks.iter_mut().find(|s| s.0 == key) {
                Some(s) => s.2 += rows,
                None => stacks.push((key, f, rows, cols)),
            },
            None => out.push(Planned::matrix(name, f, rows, cols)),
        }
    }
    out.extend(
        stacks
            .into_iter()
            .map(|(name, f, rows, cols)| Planned::matrix(name, f, rows, cols)),
    );
    out.push(Planned::whole(
        ROPE_TABLE.into(),
        positions as u64 * rope_row_bytes(config),
    ));
    out.push(Planned::whole(
        "each layer's key and value cache".into(),
        kv_cache_bytes(config, seqs, positions, kv) as u64,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::random_model;
    use crate::model::{AttnOutput, Query};

    fn config(d: usize, layers: usize, context: usize, vocab: usize) -> Config {
        Config {
            hidden_size: d,
            num_hidden_layers: layers,
            num_attention_heads: 4,
            intermediate_size: 3 * d,
            vocab_size: vocab,
            max_position_embeddings: context,
            attn_output: AttnOutput::Hadamard,
            ..Default::default()
        }
    }

    fn model(format: WeightFormat) -> Model {
        let config = small(AttnOutput::Hadamard, Query::Dense);
        random_model(&config, 0, format).unwrap()
    }

    fn small(attn_output: AttnOutput, query: Query) -> Config {
        Config {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 192,
            vocab_size: 256,
            max_position_embeddings: 32,
            attn_output,
            query,
            ..Default::default()
        }
    }

    #[test]
    fn parameters_match_the_tensor_list() {
        // d 64, 1 layer, FFN 192, vocab 256, Hadamard, dense query: embedding and head
        // 2 x 256 x 64, norms 3 x 64, q k v 3 x 64 x 64, o_scale + o_bias 2 x 64,
        // MLP 3 x 64 x 192.
        let c = config(64, 1, 16, 256);
        assert_eq!(
            parameters(&c),
            2 * 256 * 64 + 3 * 64 + 3 * 64 * 64 + 2 * 64 + 3 * 64 * 192
        );
        assert_eq!(
            random_model_parameters(&c, 1 << 29),
            Ok(parameters(&c) as u64)
        );
        let big = config(32768, 1024, 16, 1 << 20);
        let e = random_model_parameters(&big, 1 << 29).unwrap_err();
        assert!(e.needed > 1 << 40, "{e}");
        assert!(
            e.to_string()
                .contains("536870912 parameters for a random model (the memory free here"),
            "{e}"
        );
    }

    #[test]
    fn grouped_query_attention_sizes_the_cache_by_kv_heads() {
        // d 64, 8 heads of 8 on 2 KV heads: k and v are [16, 64]; a position of one
        // layer's key cache holds 2 heads of 8 values.
        let c = Config {
            num_attention_heads: 8,
            num_key_value_heads: Some(2),
            ..config(64, 1, 16, 256)
        };
        assert_eq!(
            parameters(&c),
            2 * 256 * 64 + 3 * 64 + 64 * 64 + 2 * 16 * 64 + 2 * 64 + 3 * 64 * 192
        );
        // Per position and KV head: f32 8 words, f16 4; q8 2 level words + a scale, q4 1 + 1.
        for (kv, bytes) in [
            (KvFormat::F32, 2 * 8 * 4),
            (KvFormat::F16, 2 * 4 * 4),
            (KvFormat::Q8, 2 * 3 * 4),
            (KvFormat::Q4, 2 * 2 * 4),
            (KvFormat::Q8Rot, 2 * 3 * 4),
            (KvFormat::Q4Rot, 2 * 2 * 4),
        ] {
            assert_eq!(kv_position_bytes(&c, kv), bytes, "{kv}");
            assert_eq!(kv_cache_bytes(&c, 3, 10, kv), 30 * bytes as u128, "{kv}");
            // K and V of 1 layer, 3 sequences of 10 positions.
            let gpu = decoder_memory(&c, 3, 10, Placement::Gpu(kv));
            assert_eq!(gpu, Ok(2 * 30 * bytes), "{kv}");
        }
        // A quarter of the ungrouped cache.
        let full = Config {
            num_key_value_heads: None,
            ..c.clone()
        };
        assert_eq!(kv_position_bytes(&full, KvFormat::F16), 4 * 2 * 4 * 4);
        let cpu_cache = 2 * 3 * 10 * 16 * 4;
        assert_eq!(
            decoder_memory(&c, 3, 10, Placement::Cpu),
            Ok(cpu_cache + 3 * 4 * parameters(&c) as u64)
        );
        // The decoder's buffers: q, k and v stacked [64 + 2 x 16, 64], and the caches.
        let m = random_model(&c, 2, WeightFormat::F16).unwrap();
        let buffers = decoder_buffers(&m, 3, 10, KvFormat::Q8);
        let qkv = buffers.iter().find(|b| b.0.contains("qkv")).unwrap();
        assert_eq!(qkv.1, 96 * 64 * 2);
        let cache = buffers.last().unwrap();
        assert_eq!(cache.1, 30 * 24);
        assert!(cache.0.contains("x 16 values"), "{}", cache.0);
        assert_eq!(
            planned_buffers(&c, WeightFormat::F16, 3, 10, KvFormat::Q8)
                .last()
                .unwrap()
                .1,
            30 * 24
        );
        // Bytes per decoded token: 1 sequence, prompt 10, 4 new tokens (12 positions on
        // average), K and V of 1 layer in f16: 2 x 12 x 32 bytes of cache.
        let kv = decode_bytes_per_token(&m, 1, 10, 4, KvFormat::F16)
            - decode_bytes_per_token(&m, 1, 0, 0, KvFormat::F16);
        assert_eq!(kv, 2.0 * 12.0 * 32.0);
    }

    #[test]
    fn decoder_memory_counts_cache_and_cpu_weights() {
        let c = config(64, 2, 1024, 256);
        let cache = 2 * 2 * 3 * 1024 * 64 * 4;
        let f32_gpu = Placement::Gpu(KvFormat::F32);
        assert_eq!(decoder_memory(&c, 3, 1024, f32_gpu), Ok(cache));
        let f16_gpu = Placement::Gpu(KvFormat::F16);
        assert_eq!(decoder_memory(&c, 3, 1024, f16_gpu), Ok(cache / 2));
        // 4 heads of 16: q8 a scale word and 4 level words per head, q4 a scale and 2.
        let q8 = Placement::Gpu(KvFormat::Q8);
        assert_eq!(decoder_memory(&c, 3, 1024, q8), Ok(cache / 256 * 4 * 5 * 4));
        let q4r = Placement::Gpu(KvFormat::Q4Rot);
        assert_eq!(
            decoder_memory(&c, 3, 1024, q4r),
            Ok(cache / 256 * 4 * 3 * 4)
        );
        assert_eq!(
            decoder_memory(&c, 3, 1024, Placement::Cpu),
            Ok(cache + 3 * 4 * parameters(&c) as u64)
        );
        // 1M positions of d 64, 1 layer: 512 MiB of f32 cache per sequence; 17 of them are
        // too many (33 with an f16 cache).
        let long = config(64, 1, 1 << 20, 256);
        assert!(decoder_memory(&long, 16, 1 << 20, f32_gpu).is_ok());
        assert!(decoder_memory(&long, 32, 1 << 20, f16_gpu).is_ok());
        assert!(decoder_memory(&long, 33, 1 << 20, f16_gpu).is_err());
        let e = decoder_memory(&long, 17, 1 << 20, f32_gpu).unwrap_err();
        assert_eq!(e.needed, 17 << 29);
        assert!(
            e.to_string().starts_with(
                "17 sequence(s) of 1048576 positions (8.5 GiB KV cache) take 8.5 GiB, more \
                 than walsh's limit of 8.0 GiB per run: 16 fit"
            ),
            "{e}"
        );
    }

    #[test]
    fn eval_windows_and_weight_files() {
        assert_eq!(eval_window(&config(64, 1, 128, 256)), Ok(128 * 256 * 4));
        let e = eval_window(&config(64, 1, 1 << 20, 1 << 20)).unwrap_err();
        assert!(e.to_string().contains("4.0 TiB"), "{e}");
        let c = config(64, 1, 16, 256);
        assert_eq!(
            max_weights_file_bytes(&c),
            8 + 100_000_000 + 4 * parameters(&c) as u64
        );
    }

    #[test]
    fn the_largest_buffer_is_named_with_the_limit_it_exceeds() {
        let m = model(WeightFormat::F16);
        let buffers = decoder_buffers(&m, 1, 32, KvFormat::F16);
        // gate + up, [2 x 192, 64] packed f16, is the largest buffer.
        let most = buffers.iter().map(|(_, b)| *b).max().unwrap();
        let largest = buffers.iter().find(|(_, b)| *b == most).unwrap();
        assert_eq!(largest.1, 2 * 192 * 64 * 2);
        assert!(largest.0.starts_with("model.layers.0.mlp.gate_up"));
        let roomy = BufferLimits {
            max_storage_buffer_binding_size: largest.1,
            max_buffer_size: largest.1,
        };
        check_decoder_fits(&m, 1, 32, KvFormat::F16, roomy).unwrap();
        // Weight matrices split by rows across bindings: a binding smaller than the
        // largest still takes the model.
        let tight = BufferLimits {
            max_storage_buffer_binding_size: largest.1 - 1,
            ..roomy
        };
        check_decoder_fits(&m, 1, 32, KvFormat::F16, tight).unwrap();
        // The first buffer that cannot split: the rope table, 32 positions x 8 pairs of
        // an f32 cos and sin (2048 bytes).
        let small_buffers = BufferLimits {
            max_buffer_size: 2047,
            ..roomy
        };
        let err = check_decoder_fits(&m, 1, 32, KvFormat::F16, small_buffers).unwrap_err();
        assert_eq!(err.limit_name, "maxBufferSize");
        assert!(err.what.starts_with(ROPE_TABLE), "{err}");
        assert_eq!(err.bytes, 2048);
        let small_bindings = BufferLimits {
            max_storage_buffer_binding_size: 2047,
            ..roomy
        };
        let err = check_decoder_fits(&m, 1, 32, KvFormat::F16, small_bindings).unwrap_err();
        assert_eq!(err.limit_name, "maxStorageBufferBindingSize");
        assert!(err.to_string().contains("2048"), "{err}");
        // Two rows of a matrix (256 bytes of the embedding, the first) must fit.
        let no_row = BufferLimits {
            max_buffer_size: 255,
            ..roomy
        };
        let err = check_decoder_fits(&m, 1, 32, KvFormat::F16, no_row).unwrap_err();
        assert_eq!(
            err.what,
            "two rows of model.embed_tokens.weight (split by rows across bindings)"
        );
        // Two rows of the down projection, 192 wide: 768 bytes.
        let no_pair = BufferLimits {
            max_buffer_size: 767,
            ..roomy
        };
        let err = check_decoder_fits(&m, 1, 32, KvFormat::F16, no_pair).unwrap_err();
        assert_eq!(
            err.what,
            "two rows of model.layers.0.mlp.down_proj.weight (split by rows across bindings)"
        );
        assert_eq!(err.bytes, 768);
    }

    #[test]
    fn f32_weights_and_caches_count_four_bytes() {
        let m = model(WeightFormat::F32);
        let buffers = decoder_buffers(&m, 2, 32, KvFormat::F32);
        let qkv = buffers
            .iter()
            .find(|(w, _)| w.starts_with("model.layers.1.self_attn.qkv"))
            .unwrap();
        assert_eq!(qkv.1, 3 * 64 * 64 * 4);
        assert!(qkv.0.contains("q_proj + k_proj + v_proj"), "{}", qkv.0);
        let cache = buffers.last().unwrap();
        assert_eq!(cache.1, 2 * 32 * 64 * 4);
    }

    #[test]
    fn quantized_caches_count_levels_and_a_scale_per_head() {
        let m = model(WeightFormat::F16);
        // 4 heads of 16 per position: q8 4 level words + 1 scale word per head, q4 2 + 1.
        for (kv, words) in [(KvFormat::Q8, 5), (KvFormat::Q4Rot, 3)] {
            let cache = decoder_buffers(&m, 2, 32, kv).pop().unwrap();
            assert_eq!(cache.1, 2 * 32 * 4 * words * 4, "{kv}");
            assert!(cache.0.ends_with(&format!("{kv})")), "{}", cache.0);
        }
    }
    #[test]
    fn bytes_per_decoded_token_match_a_hand_count() {
        // d 64, 2 layers, FFN 192, vocabulary 256, Hadamard output, dense query, untied.
        let config = small(AttnOutput::Hadamard, Query::Dense);
        // Per layer: q, k, v [64, 64] and gate, up [192, 64], down [64, 192]:
        // 3 x 4096 + 3 x 12288 = 49152 weights; four f32 vectors of 64 (two norms, the
        // Hadamard scale and bias) = 1024 bytes. Final norm 256 bytes; lm_head and the
        // embedding [256, 64] f16 = 32768 bytes each, of which a step reads one 128-byte
        // row per sequence.
        let layer_weights = 3 * 64 * 64 + 3 * 192 * 64;
        let vectors = 2 * 4 * 64 * 4 + 64 * 4;
        let head = 256 * 64 * 2;
        // f16: 2 bytes a weight. q4: a 32-value block is 16 bytes of levels + a 2-byte
        // scale, 18 / 32 bytes a weight.
        for (format, matrices) in [
            (WeightFormat::F16, 2 * layer_weights * 2),
            (WeightFormat::Q4, 2 * layer_weights * 18 / 32),
        ] {
            let model = random_model(&config, 1, format).unwrap();
            let all_weights = (matrices + vectors + 2 * head) as u64;
            assert_eq!(weight_bytes(&model), all_weights, "{format:?}");
            // Batch 2, prompt 10, 4 new tokens: decode steps feed positions 10..=12, so
            // each reads the keys and values of 11, 12, 13 positions: 12 on average.
            // ... and one rope row (8 pairs of f32 cos and sin) per sequence.
            let step = (matrices + vectors + head + 2 * 128 + 2 * 64) as f64;
            let kv = 2.0 * 2.0 * 12.0 * 64.0 * 2.0; // K and V, 2 layers, 12 positions, f16
            let got = decode_bytes_per_token(&model, 2, 10, 4, KvFormat::F16);
            assert_eq!(got, step / 2.0 + kv, "{format:?}");
            // An f32 cache reads twice the cache bytes.
            let got32 = decode_bytes_per_token(&model, 2, 10, 4, KvFormat::F32);
            assert_eq!(got32, step / 2.0 + 2.0 * kv, "{format:?}");
        }
        // Written out: (2 x 49152 x 18/32 + 2 x 1024 + 256 + 32768 + 2 x 128 + 2 x 64) / 2
        // + 6144 = 51,520 bytes per token for q4, against 122,176 for f16, at batch 2.
        let q4 = random_model(&config, 1, WeightFormat::Q4).unwrap();
        assert_eq!(
            decode_bytes_per_token(&q4, 2, 10, 4, KvFormat::F16),
            51_520.0
        );
        let f16 = random_model(&config, 1, WeightFormat::F16).unwrap();
        assert_eq!(
            decode_bytes_per_token(&f16, 2, 10, 4, KvFormat::F16),
            122_176.0
        );
    }

    #[test]
    fn planned_buffers_are_the_decoders_buffers_before_the_model_exists() {
        for (attn_output, query) in [
            (AttnOutput::Dense, Query::Dense),
            (AttnOutput::Hadamard, Query::Identity),
            (AttnOutput::Hadamard, Query::ResidualMlp),
        ] {
            for format in [
                WeightFormat::F32,
                WeightFormat::F16,
                WeightFormat::Q8,
                WeightFormat::Q4,
            ] {
                let mut config = small(attn_output, query);
                config.tie_word_embeddings = format == WeightFormat::Q8;
                let model = random_model(&config, 1, format).unwrap();
                let sizes = |mut b: Vec<(String, u64)>| {
                    let mut v: Vec<u64> = b.drain(..).map(|(_, n)| n).collect();
                    v.sort_unstable();
                    v
                };
                assert_eq!(
                    sizes(planned_buffers(&config, format, 3, 32, KvFormat::F16)),
                    sizes(decoder_buffers(&model, 3, 32, KvFormat::F16)),
                    "{attn_output:?} {query:?} {format:?}"
                );
            }
        }
    }
}
