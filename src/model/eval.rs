//! Scoring a text: mean loss in nats per byte over sliding windows of the context length.

use super::ModelError;
use super::generate::Decoder;
use crate::ops::attention::KvFormat;

/// Mean loss of a model over a text.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    pub bytes_scored: usize,
    pub nats_per_byte: f64,
    pub bits_per_byte: f64,
    pub perplexity: f64,
    pub context: usize,
    pub kv_cache: KvFormat,
    pub device: String,
}

/// Scores every byte after the first with as much context as the model allows: windows
/// of the context length, each starting half a window after the previous one, scoring
/// only bytes no earlier window scored.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate(
    dec: &mut dyn Decoder,
    tokens: &[u32],
    progress: impl FnMut(usize, usize),
) -> Result<EvalReport, ModelError> {
    pollster::block_on(evaluate_async(dec, tokens, progress))
}

/// [`evaluate`] for callers that must not block (the browser); the same loop.
pub async fn evaluate_async(
    dec: &mut dyn Decoder,
    tokens: &[u32],
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport, ModelError> {
    let context = dec.max_positions();
    if tokens.len() < 2 {
        return Err(ModelError::Input(
            "the text needs at least two bytes to score".into(),
        ));
    }
    let stride = (context / 2).max(1);
    let mut scored_to = 0; // tokens[..=scored_to] have been predicted (token 0 never is)
    let mut total = 0.0f64;
    let mut count = 0usize;
    let mut start = 0;
    // The first window scores context - 1 bytes, each later one `stride` more.
    let windows = 1 + tokens.len().saturating_sub(context).div_ceil(stride);
    let mut done = 0;
    while scored_to < tokens.len() - 1 {
        let end = (start + context).min(tokens.len());
        dec.reset();
        let window = &tokens[start..end];
        let logits = dec.logits(&[(0, window)]).await?.remove(0);
        let vocab = logits.len() / window.len();
        for i in 0..window.len() - 1 {
            let target = start + i + 1;
            if target <= scored_to {
                continue;
            }
            let row = &logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&l| (l as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            total += lse - row[tokens[target] as usize] as f64;
            count += 1;
            scored_to = target;
        }
        done += 1;
        progress(done, windows);
        start += stride;
    }
    let nats = total / count as f64;
    Ok(EvalReport {
        bytes_scored: count,
        nats_per_byte: nats,
        bits_per_byte: nats / std::f64::consts::LN_2,
        perplexity: nats.exp(),
        context,
        kv_cache: dec.kv_format(),
        device: dec.device(),
    })
}
