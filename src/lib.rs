//! walsh: a GPU engine for Hadamard-projection transformers.
//!
//! The attention output projection W_O is replaced by a fixed normalized Walsh–Hadamard
//! transform and a learnable per-channel affine rescale, `y = gamma * H(x) / sqrt(d) + beta`
//! (arXiv 2603.08343). walsh runs it in WGSL compute shaders through wgpu, natively
//! (Vulkan, Metal, DX12, GL) and in the browser (WebGPU).
//!
//! - [`gpu`]: adapters, devices, the pipeline cache, buffers with memory accounting.
//! - [`ops`]: the kernels, each with its CPU reference.
//! - [`gguf`]: a bounded reader of GGUF files (metadata, tensor infos, tensor bytes).
//! - [`tokenizer`]: byte-level, GPT-2-style BPE and SentencePiece tokenizers, loaded from
//!   GGUF metadata or a Hugging Face `tokenizer.json`.
//! - [`model`]: loading, the CPU and GPU decoders, generation and evaluation.
//! - [`bench`](mod@bench): the cross-vendor benchmark suites and their reports.
//! - [`limits`]: the sizes checked before memory is allocated for them.
//! - `web` (wasm32 only): the API the browser page in `web/` drives.

pub mod bench;
pub mod blocks;
pub mod gguf;
pub mod gpu;
pub mod limits;
pub mod model;
pub mod ops;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web;
