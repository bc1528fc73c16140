//! What the integration tests share; a test file that needs it says `mod common;`.

use walsh::model::Config;

/// The sizes of a small model: `layers` layers of width `d` with `heads` heads, an MLP of
/// 2d, the byte vocabulary and `context` positions; the rest default.
pub fn small_config(d: usize, layers: usize, heads: usize, context: usize) -> Config {
    Config {
        hidden_size: d,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: 2 * d,
        vocab_size: 256,
        max_position_embeddings: context,
        ..Default::default()
    }
}
