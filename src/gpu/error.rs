//! Typed errors of the GPU runtime. Every message says what failed and what the user can do.

use thiserror::Error;

/// Everything that can go wrong between choosing an adapter and reading a result back.
#[derive(Debug, Error)]
pub enum GpuError {
    #[error(
        "no GPU adapter found on any backend (Vulkan, Metal, DX12, GL); install a driver \
         (on Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libegl-mesa0` gives software adapters)"
    )]
    NoAdapter,

    #[error(
        "the browser offers no WebGPU adapter: use a WebGPU browser (Chrome/Edge 113+, \
         Safari 26+, Firefox 141+ on Windows) with hardware acceleration on, or Chromium with \
         --enable-unsafe-webgpu"
    )]
    NoBrowserAdapter,

    #[error("no adapter matches `{selector}`; available adapters:\n{available}")]
    AdapterNotFound { selector: String, available: String },

    #[error(
        "invalid adapter selector `{0}`: use an index, a backend (vulkan, metal, dx12, gl) or part of an adapter name"
    )]
    InvalidSelector(String),

    #[error("could not open a device on adapter `{adapter}`: {source}")]
    RequestDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },

    #[error("feature {feature} is not enabled on adapter `{adapter}`")]
    MissingFeature {
        feature: &'static str,
        adapter: String,
    },

    #[error("{what} needs {requested} but adapter `{adapter}` allows at most {limit}")]
    LimitExceeded {
        what: String,
        requested: u64,
        limit: u64,
        adapter: String,
    },

    #[error("shader `{shader}` (entry point `{entry}`) failed to compile: {message}")]
    ShaderCompile {
        shader: String,
        entry: String,
        message: String,
    },

    #[error("buffer `{label}` has {found} bytes but {needed} are needed")]
    BufferTooSmall {
        label: String,
        needed: u64,
        found: u64,
    },

    #[error("the GPU device was lost ({0}); restart the program, or pick another adapter")]
    DeviceLost(String),

    #[error("GPU validation error: {0}")]
    Validation(String),

    #[error("GPU ran out of memory: {0}")]
    OutOfMemory(String),

    #[error("reading a buffer back from the GPU failed: {0}")]
    Readback(String),
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

impl GpuError {
    /// Converts an error captured from wgpu (error scope or uncaptured handler).
    pub(crate) fn from_wgpu(error: &wgpu::Error) -> Self {
        match error {
            wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(error.to_string()),
            _ => GpuError::Validation(error.to_string()),
        }
    }
}
