//! What fits where: a prompt in a model's context, and a model's device buffers in an
//! adapter's limits.
//!
//! The buffer check runs before anything is uploaded, so a browser or phone that cannot
//! hold a model says which tensor and which limit instead of failing halfway through the
//! upload (WebGPU's defaults are 128 MiB per storage binding and 256 MiB per buffer).

use std::fmt;

use super::weights::{Model, Tensor, stacked_format};
use crate::ops::attention::KvFormat;

/// What a model of `context` positions sees of `prompt`: its last `context` tokens (all of
/// it when it fits). Generation slides the same way once the context fills, so a long
/// prompt behaves as if the text before it had scrolled out. Returns the kept tokens and
/// how many were dropped from the front.
pub fn fit_prompt(prompt: &[u32], context: usize) -> (&[u32], usize) {
    let dropped = prompt.len().saturating_sub(context);
    (&prompt[dropped..], dropped)
}

/// The one-line notice for a prompt [`fit_prompt`] shortened (prompts are bytes).
pub fn prompt_notice(bytes: usize, context: usize) -> String {
    format!(
        "the prompt is {bytes} bytes, more than the model's context of {context}: \
         generating from its last {context} bytes"
    )
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

/// Bytes a weight takes on the GPU: matrices keep the file's format (packed f16, q8, q4 or
/// f32), vectors (norms, the Hadamard affine) are widened to f32.
fn device_bytes(t: &Tensor) -> u64 {
    stacked_bytes(&[t])
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

/// Every buffer the GPU decoder makes for `model` that outlives a step (as
/// `GpuDecoder::new` builds them: q, k and v stacked, gate and up interleaved, the rope
/// table, one key and one value cache per layer; the caches last), with what it holds.
pub fn decoder_buffers(
    model: &Model,
    max_seqs: usize,
    max_positions: usize,
    kv: KvFormat,
) -> Vec<(String, u64)> {
    let w = &model.weights;
    let mut out = vec![(w.embed_tokens.name.clone(), device_bytes(&w.embed_tokens))];
    for (i, l) in w.layers.iter().enumerate() {
        let mut qkv: Vec<&Tensor> = l.q_proj.iter().collect();
        qkv.extend([&l.k_proj, &l.v_proj]);
        let names: Vec<&str> = qkv
            .iter()
            .map(|t| t.name.rsplit('.').nth(1).unwrap_or(&t.name))
            .collect();
        out.push((
            format!(
                "model.layers.{i}.self_attn.qkv ({} stacked)",
                names.join(" + ")
            ),
            stacked_bytes(&qkv),
        ));
        out.push((
            format!("model.layers.{i}.mlp.gate_up (gate_proj + up_proj stacked)"),
            stacked_bytes(&[&l.gate_proj, &l.up_proj]),
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
                .map(|t| (t.name.clone(), device_bytes(t))),
        );
    }
    out.push((w.norm.name.clone(), device_bytes(&w.norm)));
    if let Some(t) = &w.lm_head {
        out.push((t.name.clone(), device_bytes(t)));
    }
    let c = &model.config;
    out.push((
        format!("{ROPE_TABLE} ({max_positions} positions)"),
        // A cos and a sin in f32 per pair of each head's dimensions (ops::rope::RopeTable).
        max_positions as u64 * (c.head_dim() / 2) as u64 * 8,
    ));
    // Per position: each head's values, and the scale word of the quantized formats.
    let cache = max_seqs as u64
        * max_positions as u64
        * kv.position_bytes(c.num_attention_heads, c.head_dim());
    out.push((
        format!(
            "each layer's key and value cache ({max_seqs} sequence(s) x {max_positions} \
             positions x {} values, {})",
            c.hidden_size,
            kv.name()
        ),
        cache,
    ));
    out
}

/// Checks every buffer of [`decoder_buffers`] against `limits` before any upload; the
/// error names the first buffer too large and the limit it exceeds.
pub fn check_decoder_fits(
    model: &Model,
    max_seqs: usize,
    max_positions: usize,
    kv: KvFormat,
    limits: BufferLimits,
) -> Result<(), TooLarge> {
    check_buffers_fit(decoder_buffers(model, max_seqs, max_positions, kv), limits)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::random_model;
    use crate::model::{AttnOutput, Config};
    use crate::ops::WeightFormat;

    #[test]
    fn a_long_prompt_keeps_its_last_tokens() {
        let prompt: Vec<u32> = (0..10).collect();
        assert_eq!(fit_prompt(&prompt, 16), (&prompt[..], 0));
        assert_eq!(fit_prompt(&prompt, 10), (&prompt[..], 0));
        assert_eq!(fit_prompt(&prompt, 4), (&prompt[6..], 6));
        assert_eq!(fit_prompt(&[], 4), (&[][..], 0));
    }

    fn model(format: WeightFormat) -> Model {
        let config = Config {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 192,
            vocab_size: 256,
            max_position_embeddings: 32,
            attn_output: AttnOutput::Hadamard,
            ..Default::default()
        };
        random_model(&config, 0, format).unwrap()
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
        let tight = BufferLimits {
            max_storage_buffer_binding_size: largest.1 - 1,
            ..roomy
        };
        let err = check_decoder_fits(&m, 1, 32, KvFormat::F16, tight).unwrap_err();
        assert!(err.what.starts_with("model.layers.0.mlp.gate_up"), "{err}");
        assert_eq!(err.limit_name, "maxStorageBufferBindingSize");
        let message = err.to_string();
        assert!(message.contains("gate_proj + up_proj") && message.contains("49152"));
        let small_buffers = BufferLimits {
            max_buffer_size: 1000,
            ..roomy
        };
        let err = check_decoder_fits(&m, 1, 32, KvFormat::F16, small_buffers).unwrap_err();
        assert_eq!(err.limit_name, "maxBufferSize");
        assert_eq!(err.what, "model.embed_tokens.weight");
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
}
