//! walsh-train: the CPU trainer (candle) for walsh's model family (docs/model-format.md).
//!
//! - [`model`]: the architecture as batched candle ops, every variant, same tensor names;
//! - [`optim`]: AdamW with clipping and selective decay, warmup + cosine schedule;
//! - [`data`]: byte windows from `train/data/{train,valid}.txt`;
//! - [`run`]: settings, trainer state, the loop with log, checkpoints and F16 export;
//! - [`checkpoint`]: the exact state for `--resume`;
//! - [`eval`]: the trainer's own sliding-window loss of a text, to check walsh's eval;
//! - [`report`] (with [`chart`]): the seed sweep's tables and loss curves from its files.

pub mod chart;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod model;
pub mod optim;
pub mod report;
pub mod rng;
pub mod run;

pub use error::TrainError;
