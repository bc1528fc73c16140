//! Shader sources and the pipeline cache.
//!
//! Every WGSL file is embedded once through [`Shader`], so native and WASM builds carry the
//! same code. A pipeline is identified by a [`PipelineKey`] (shader, entry point, override
//! constants) and built once per device with an explicit bind group layout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every shader module walsh compiles.
///
/// Some modules are a shared body plus a small file that differs by device feature
/// (WGSL has no preprocessor, and a module that merely mentions a subgroup builtin fails
/// to compile on a device without SUBGROUP): the body is written once and joined at
/// compile time with `concat!`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// Fast WHT with workgroup-memory exchanges only (every adapter, the browser, GL).
    Hadamard,
    /// Fast WHT whose first cross-invocation stages use subgroup shuffles.
    HadamardSubgroup,
    /// Dense matrix products.
    Matmul,
    /// Dense matrix products plus the GEMV reduced by subgroupAdd.
    MatmulSubgroup,
    /// Dense matrix products plus the GEMV over int8-quantized activations
    /// (`dot4I8Packed`; `Kernel::GemvDot4`, never chosen by itself).
    MatmulDot4,
    /// A plain copy: the bandwidth roof of compute kernels.
    Copy,
    /// RMSNorm.
    Norm,
    /// Rotary position embedding.
    Rope,
    /// Embedding gather, SwiGLU, residual add.
    Elementwise,
    /// Causal attention over the KV cache.
    Attention,
    /// Greedy and temperature / top-k / top-p sampling.
    Sample,
    /// The decode loop's step boundary: sampled tokens fed back on the GPU.
    Feedback,
}

impl Shader {
    pub const ALL: [Shader; 12] = [
        Shader::Hadamard,
        Shader::HadamardSubgroup,
        Shader::Matmul,
        Shader::MatmulSubgroup,
        Shader::MatmulDot4,
        Shader::Copy,
        Shader::Norm,
        Shader::Rope,
        Shader::Elementwise,
        Shader::Attention,
        Shader::Sample,
        Shader::Feedback,
    ];

    pub fn source(self) -> &'static str {
        match self {
            Shader::Hadamard => concat!(
                include_str!("../../shaders/hadamard.wgsl"),
                include_str!("../../shaders/hadamard_shared.wgsl")
            ),
            Shader::HadamardSubgroup => concat!(
                include_str!("../../shaders/hadamard.wgsl"),
                include_str!("../../shaders/hadamard_subgroup.wgsl")
            ),
            Shader::Matmul => include_str!("../../shaders/matmul.wgsl"),
            Shader::MatmulSubgroup => concat!(
                include_str!("../../shaders/matmul.wgsl"),
                include_str!("../../shaders/matmul_subgroup.wgsl")
            ),
            Shader::MatmulDot4 => concat!(
                include_str!("../../shaders/matmul.wgsl"),
                include_str!("../../shaders/matmul_dot4.wgsl")
            ),
            Shader::Copy => include_str!("../../shaders/copy.wgsl"),
            Shader::Norm => include_str!("../../shaders/norm.wgsl"),
            Shader::Rope => include_str!("../../shaders/rope.wgsl"),
            Shader::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
            Shader::Attention => include_str!("../../shaders/attention.wgsl"),
            Shader::Sample => include_str!("../../shaders/sample.wgsl"),
            Shader::Feedback => include_str!("../../shaders/feedback.wgsl"),
        }
    }

    /// Device features the module needs to compile.
    pub fn required_features(self) -> wgpu::Features {
        match self {
            Shader::HadamardSubgroup | Shader::MatmulSubgroup => wgpu::Features::SUBGROUP,
            _ => wgpu::Features::empty(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shader::Hadamard => "hadamard",
            Shader::HadamardSubgroup => "hadamard+subgroup",
            Shader::Matmul => "matmul",
            Shader::MatmulSubgroup => "matmul+subgroup",
            Shader::MatmulDot4 => "matmul+dot4",
            Shader::Copy => "copy",
            Shader::Norm => "norm",
            Shader::Rope => "rope",
            Shader::Elementwise => "elementwise",
            Shader::Attention => "attention",
            Shader::Sample => "sample",
            Shader::Feedback => "feedback",
        }
    }
}

/// What a binding slot holds; the bind group layout is built from a list of these, in
/// binding order starting at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    Uniform,
    ReadOnly,
    ReadWrite,
}

/// Identifies one compute pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub shader: Shader,
    pub entry: &'static str,
    /// WGSL `override` values, by name. All walsh overrides are integers or booleans.
    pub constants: Vec<(&'static str, u32)>,
}

impl PipelineKey {
    pub fn new(shader: Shader, entry: &'static str) -> Self {
        Self {
            shader,
            entry,
            constants: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: u32) -> Self {
        self.constants.push((name, value));
        self
    }

    pub fn with_flag(self, name: &'static str, value: bool) -> Self {
        self.with(name, value as u32)
    }

    /// Label used for the pipeline and its passes, e.g. `hadamard:wht_fast{P=64,V=16}`.
    pub fn label(&self) -> String {
        let consts: Vec<String> = self
            .constants
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{}:{}{{{}}}",
            self.shader.name(),
            self.entry,
            consts.join(",")
        )
    }
}

/// A compiled pipeline with the layout its bind groups must use.
#[derive(Debug)]
pub struct CachedPipeline {
    /// Set when compiled: at once, or by [`crate::gpu::Gpu::build_together`] before it
    /// returns for the pipelines it compiled on other threads.
    pub(crate) compiled: std::sync::OnceLock<wgpu::ComputePipeline>,
    pub layout: wgpu::BindGroupLayout,
    pub label: String,
}

impl CachedPipeline {
    pub(crate) fn new(
        pipeline: Option<wgpu::ComputePipeline>,
        layout: wgpu::BindGroupLayout,
        label: String,
    ) -> Self {
        let compiled = std::sync::OnceLock::new();
        if let Some(p) = pipeline {
            let _ = compiled.set(p);
        }
        Self {
            compiled,
            layout,
            label,
        }
    }

    /// The compiled pipeline. Every pipeline [`crate::gpu::Gpu::pipeline`] returns is
    /// compiled, but for those asked for inside [`crate::gpu::Gpu::build_together`],
    /// which are compiled when it returns: what is recorded inside may be replayed only
    /// after it returned Ok.
    pub fn pipeline(&self) -> &wgpu::ComputePipeline {
        self.compiled
            .get()
            .expect("a pipeline built together is used only after build_together returned Ok")
    }
}

#[derive(Debug, Default)]
pub(crate) struct PipelineCache {
    pub(crate) modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    pub(crate) pipelines: Mutex<HashMap<PipelineKey, Arc<CachedPipeline>>>,
}

/// Builds the bind group layout entries for `bindings`, numbered from 0.
pub(crate) fn layout_entries(bindings: &[Binding]) -> Vec<wgpu::BindGroupLayoutEntry> {
    bindings
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match b {
                    Binding::Uniform => wgpu::BufferBindingType::Uniform,
                    Binding::ReadOnly => wgpu::BufferBindingType::Storage { read_only: true },
                    Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect()
}
