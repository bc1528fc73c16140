//! The trainer's error type: every failure a caller can act on, with the path or setting
//! it concerns.

use std::path::PathBuf;

use thiserror::Error;
use walsh::model::ModelError;

#[derive(Debug, Error)]
pub enum TrainError {
    /// A tensor operation failed (a shape bug, or out of memory).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] Box<candle_core::Error>),
    /// Loading or writing a model through walsh.
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A setting or input the trainer cannot work with; the message says which and why.
    #[error("{0}")]
    Input(String),
    /// A checkpoint that is damaged or belongs to another run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A parameter the loss does not reach: the symptom of an op without a backward pass
    /// (docs/measured.md, Training), which would otherwise leave the parameter silently
    /// untrained.
    #[error("no gradient reached parameter `{0}`")]
    MissingGradient(String),
    /// The loss became NaN or infinite.
    #[error("the loss is {loss} at step {step}: training diverged (try a lower --lr)")]
    Diverged { step: u64, loss: f32 },
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        // Boxed: candle's error is large and would make every Result in the crate large.
        TrainError::Candle(Box::new(e))
    }
}

impl TrainError {
    /// An I/O error on `path`, for `map_err`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }
}
