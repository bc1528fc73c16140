//! Helpers shared by the integration tests: tiny configs and synthetic text.

#![allow(dead_code)] // each test binary uses its own subset

use walsh::model::{AttnOutput, Config, Query};

/// Every variant of docs/model-format.md.
pub const VARIANTS: [(AttnOutput, Query); 6] = [
    (AttnOutput::Dense, Query::Dense),
    (AttnOutput::Dense, Query::Identity),
    (AttnOutput::Dense, Query::ResidualMlp),
    (AttnOutput::Hadamard, Query::Dense),
    (AttnOutput::Hadamard, Query::Identity),
    (AttnOutput::Hadamard, Query::ResidualMlp),
];

/// A tiny byte-level model.
pub fn tiny(
    d: usize,
    layers: usize,
    context: usize,
    attn_output: AttnOutput,
    query: Query,
) -> Config {
    Config {
        hidden_size: d,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        intermediate_size: 2 * d + 8,
        vocab_size: 256,
        max_position_embeddings: context,
        attn_output,
        query,
        ..Default::default()
    }
}

/// Text with structure a tiny model learns in a few dozen steps.
pub fn synthetic_text(len: usize) -> Vec<u8> {
    let words = [
        "the ", "quick ", "brown ", "fox ", "jumps ", "over ", "a ", "lazy ", "dog.\n",
    ];
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0usize;
    while out.len() < len {
        // a fixed but not periodic word order
        out.extend_from_slice(words[(i * 7 + i / 9) % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}
