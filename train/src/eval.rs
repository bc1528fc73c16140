//! The trainer's own score of a text, by the rule of `walsh::model::eval::evaluate` but
//! written independently (whole windows through the batched forward pass), so the two
//! can check each other: windows of the context length, each starting half a window
//! after the previous one, every byte after the first scored once, with as much context
//! as the window gives it.

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::TrainError;
use crate::model::TrainModel;

#[derive(Clone, Debug, Serialize)]
pub struct TextLoss {
    pub bytes_scored: usize,
    pub nats_per_byte: f64,
    pub bits_per_byte: f64,
    pub context: usize,
}

/// The windows of `len` tokens as (start, end, first target scored): each window is
/// [start, end) and predicts the tokens first..end (first > start).
pub fn windows(len: usize, context: usize) -> Vec<(usize, usize, usize)> {
    let stride = (context / 2).max(1);
    let mut out = Vec::new();
    let (mut start, mut scored_to) = (0, 0); // tokens[..=scored_to] are predicted
    loop {
        let end = (start + context).min(len);
        out.push((start, end, scored_to + 1));
        scored_to = end - 1;
        if end == len {
            return out;
        }
        start += stride;
    }
}

/// Mean loss in nats per byte of `tokens` under `model`, with the model's context, running
/// up to `batch` windows per forward pass.
pub fn text_loss(model: &TrainModel, tokens: &[u32], batch: usize) -> Result<TextLoss, TrainError> {
    let context = model.config().max_position_embeddings;
    let vocab = model.config().vocab_size;
    if tokens.len() < 2 {
        return Err(TrainError::Input(
            "the text needs at least two bytes to score".into(),
        ));
    }
    if context < 2 {
        return Err(TrainError::Input(format!(
            "a context of {context} leaves no byte to score in a window"
        )));
    }
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(TrainError::Input(format!(
            "token {t} is outside the vocabulary of {vocab}"
        )));
    }
    let all = windows(tokens.len(), context);
    let (mut total, mut count) = (0.0f64, 0usize);
    // Windows of one length share a forward pass; only the last can be shorter.
    for group in all.chunk_by(|a, b| a.1 - a.0 == b.1 - b.0) {
        for chunk in group.chunks(batch.max(1)) {
            let t = chunk[0].1 - chunk[0].0;
            let ids: Vec<u32> = chunk
                .iter()
                .flat_map(|&(s, e, _)| tokens[s..e].iter().copied())
                .collect();
            let input = Tensor::from_vec(ids, (chunk.len(), t), &Device::Cpu)?;
            let logits = model
                .forward(&input)?
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            for (w, &(start, end, first)) in chunk.iter().enumerate() {
                for (target, &token) in tokens.iter().enumerate().take(end).skip(first) {
                    // logits at position target - 1 of this window predict tokens[target]
                    let row = (w * t + target - 1 - start) * vocab;
                    total += nll(&logits[row..row + vocab], token as usize);
                    count += 1;
                }
            }
        }
    }
    let nats = total / count as f64;
    Ok(TextLoss {
        bytes_scored: count,
        nats_per_byte: nats,
        bits_per_byte: nats / std::f64::consts::LN_2,
        context,
    })
}

/// -log softmax(row)[target], accumulated in f64 like walsh's evaluate.
fn nll(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - row[target] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_after_the_first_is_scored_once() {
        for len in [2, 3, 7, 8, 9, 16, 17, 100] {
            for context in [2, 3, 8] {
                let mut scored = vec![0; len];
                for (s, e, first) in windows(len, context) {
                    assert!(s < first && first <= e && e - s <= context);
                    (first..e).for_each(|i| scored[i] += 1);
                }
                assert_eq!(scored[0], 0);
                assert!(scored[1..].iter().all(|&c| c == 1), "{len} {context}");
            }
        }
        // context 8: windows every 4 bytes; the second window scores only its new half
        assert_eq!(windows(12, 8), vec![(0, 8, 1), (4, 12, 8)]);
    }
}
