//! The decoder: config and weights (`config.json` + `model.safetensors`), the CPU reference
//! decoder, the GPU decoder, sampling and generation.

pub mod batch;
pub mod chat;
pub mod completion;
pub mod config;
pub mod cpu;
pub mod error;
pub mod eval;
pub mod fit;
pub mod generate;
pub mod gguf;
pub mod gguf_load;
pub mod gpu;

pub mod init;
pub mod profile;
pub mod quant;
pub mod sizes;
pub mod tokens;
pub mod weights;

pub use config::{AttnOutput, Config, Query};
pub use error::ModelError;
#[cfg(test)]
mod tests;
