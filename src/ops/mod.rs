//! Kernel families: one module per shader file, each owning its pipelines, its params
//! struct (matching the WGSL struct), its dispatch, a CPU reference and its tests.

pub mod copy;
pub mod hadamard;
pub mod matmul;
