//! Checkpoints: everything a run needs to continue bit for bit, in one safetensors file,
//! `checkpoint/state.safetensors`: the parameters, AdamW's moments (all f32, exact) and,
//! in the file's metadata, the settings, step, optimizer step count, data RNG state and
//! elapsed time as JSON. One file, written to a temporary name and renamed over the old
//! one, so a run killed mid-write leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::AdamW;
use crate::run::Settings;

/// Directory of the checkpoint inside a run's output directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The checkpoint file inside [`CHECKPOINT_DIR`].
pub const STATE_FILE: &str = "state.safetensors";
/// Metadata key holding [`State`] as JSON.
const STATE_KEY: &str = "walsh_train_state";
/// Bumped when the layout changes, so an old checkpoint is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// The scalar part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    pub settings: Settings,
    /// Optimizer updates done.
    pub step: u64,
    /// AdamW's bias-correction count (equal to `step` in a normal run).
    pub adam_t: u64,
    /// The data sampler's SplitMix64 state.
    pub rng: u64,
    /// Wall-clock seconds spent training over all sessions so far.
    pub elapsed_s: f64,
}

/// A loaded checkpoint: the state and the tensors by name, as f32 values.
pub struct Loaded {
    pub state: State,
    pub params: Vec<Vec<f32>>,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>, TrainError> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Writes the checkpoint of `names` (parameter names in order) with their `values`
/// (parameter tensors) and `opt`'s moments into `dir`, creating it.
pub fn save(
    dir: &Path,
    state: &State,
    names: &[String],
    values: &[Tensor],
    opt: &AdamW,
) -> Result<(), TrainError> {
    let path = state_path(dir);
    let fail = |message: String| TrainError::Checkpoint {
        path: path.clone(),
        message,
    };
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (kind, tensors) in [("param", values), ("adam_m", &opt.m), ("adam_v", &opt.v)] {
        for (name, t) in names.iter().zip(tensors) {
            let data = to_f32(t)?.iter().flat_map(|x| x.to_le_bytes()).collect();
            bytes.push((format!("{kind}/{name}"), t.dims().to_vec(), data));
        }
    }
    let mut views = Vec::with_capacity(bytes.len());
    for (name, shape, data) in &bytes {
        let view =
            TensorView::new(Dtype::F32, shape.clone(), data).map_err(|e| fail(e.to_string()))?;
        views.push((name.as_str(), view));
    }
    let json = serde_json::to_string(state).map_err(|e| fail(e.to_string()))?;
    let metadata = HashMap::from([(STATE_KEY.to_string(), json)]);
    let file = safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))?;

    std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, file).map_err(TrainError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(TrainError::io(&path))?;
    Ok(())
}

/// Reads the checkpoint in `dir`, with the tensors of `names` (parameter names, in order)
/// and their `shapes`.
pub fn load(dir: &Path, names: &[String], shapes: &[Vec<usize>]) -> Result<Loaded, TrainError> {
    let path = state_path(dir);
    let fail = |message: String| TrainError::Checkpoint {
        path: path.clone(),
        message,
    };
    let bytes = std::fs::read(&path).map_err(TrainError::io(&path))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| fail(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| {
            fail(format!(
                "no `{STATE_KEY}` metadata: not a walsh-train checkpoint"
            ))
        })?;
    let state: State = serde_json::from_str(json).map_err(|e| fail(e.to_string()))?;
    if state.format_version != FORMAT_VERSION {
        return Err(fail(format!(
            "format version {} is not the {FORMAT_VERSION} this trainer reads",
            state.format_version
        )));
    }
    let read = |kind: &str| -> Result<Vec<Vec<f32>>, TrainError> {
        names
            .iter()
            .zip(shapes)
            .map(|(name, shape)| {
                let key = format!("{kind}/{name}");
                let view = file.tensor(&key).map_err(|e| fail(e.to_string()))?;
                if view.dtype() != Dtype::F32 || view.shape() != shape.as_slice() {
                    return Err(fail(format!(
                        "`{key}` is {:?} {:?}, expected F32 {shape:?}",
                        view.dtype(),
                        view.shape()
                    )));
                }
                // safetensors checked that the byte length matches dtype and shape.
                Ok(view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            })
            .collect()
    };
    Ok(Loaded {
        params: read("param")?,
        m: read("adam_m")?,
        v: read("adam_v")?,
        state,
    })
}

/// Values back to tensors of the given shapes, as `dtype`.
pub fn tensors(
    values: Vec<Vec<f32>>,
    shapes: &[Vec<usize>],
    dtype: DType,
) -> Result<Vec<Tensor>, TrainError> {
    values
        .into_iter()
        .zip(shapes)
        .map(|(v, s)| Ok(Tensor::from_vec(v, s.as_slice(), &Device::Cpu)?.to_dtype(dtype)?))
        .collect()
}
