//! The GPU runtime: adapter and device selection, the pipeline cache, buffers with memory
//! accounting, readback and timestamp timing. Every kernel in [`crate::ops`] runs through a
//! [`Gpu`].

pub mod adapter;
pub mod error;
pub mod memory;
pub mod pipeline;
pub mod profile;
pub mod record;
mod signal;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod timer;

use std::sync::{Arc, Mutex};

use bytemuck::Pod;
use wgpu::util::DeviceExt;

#[cfg(not(target_arch = "wasm32"))]
pub use adapter::list_adapters;
pub use adapter::{AdapterSelector, AdapterSummary};
pub use error::{GpuError, Result};
pub use memory::{GpuBuffer, MemoryCategory, MemoryReport, MemoryTracker};
pub use pipeline::{Binding, CachedPipeline, PipelineKey, Shader};
pub use record::{Counters, CountersSnapshot, Record, Recording};
pub use timer::GpuTimer;

use pipeline::PipelineCache;

/// Bytes of [`Gpu::spare_uniform`]: the largest uniform array a shader declares, the
/// Hadamard sign masks (`array<vec4<u32>, 270>` in attention.wgsl and matmul.wgsl;
/// `hadamard::cpu::SIGN_UNIFORM_WORDS` words, a test checks).
pub const SPARE_UNIFORM_BYTES: usize = 4320;

/// Which optional features this device has enabled; kernels choose their path from these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuFeatures {
    pub subgroup: bool,
    pub shader_f16: bool,
    pub timestamp_query: bool,
    /// Timestamps between the dispatches of one pass (what `walsh profile` uses first).
    #[serde(default)]
    pub timestamp_inside_passes: bool,
}

impl GpuFeatures {
    fn from_wgpu(f: wgpu::Features) -> Self {
        Self {
            subgroup: f.contains(wgpu::Features::SUBGROUP),
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamp_inside_passes: f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
        }
    }
}

/// Kernel choices measured on one adapter (`walsh tune`, the CLI's first run on an
/// adapter, the page's first load): for each weight format (`f16`, `q8`, ...) the name of
/// the decode GEMV that ran the model's products fastest (`ops::matmul::Kernel::name`).
/// Empty, the kernels choose by adapter type. Set on a [`Gpu`] before the model's matrices
/// are uploaded: the choice also decides their layout.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    pub gemv: std::collections::BTreeMap<String, String>,
}

/// A readback submitted by [`Gpu::submit_read`], collected by [`Gpu::wait_read`].
pub struct PendingRead {
    staging: GpuBuffer,
    bytes: u64,
    submission: wgpu::SubmissionIndex,
    mapped: signal::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// A device and queue on one adapter, plus walsh's per-device state.
///
/// A shared handle, as `wgpu::Device` is: cloning it is cheap, and every clone is the same
/// device with the same pipeline cache, memory account, counters and tuning. The decoders
/// and kernels keep a clone, so they own their device and live as long as a server's task
/// or a page wants, without borrowing it.
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    state: Arc<DeviceState>,
}

/// What every clone of one [`Gpu`] shares.
struct DeviceState {
    info: wgpu::AdapterInfo,
    summary: AdapterSummary,
    features: GpuFeatures,
    limits: wgpu::Limits,
    cache: PipelineCache,
    memory: Arc<MemoryTracker>,
    counters: Counters,
    /// First error wgpu reported outside an error scope, or the device-lost reason.
    failure: Arc<Mutex<Option<GpuError>>>,
    /// 16 bytes of storage for a writable slot a dispatch leaves unused: WebGPU refuses
    /// one buffer in two writable slots of a dispatch, so a real buffer cannot stand in.
    /// Made on first use, so a device that runs nothing holds nothing.
    spare: std::sync::OnceLock<GpuBuffer>,
    spare_uniform: std::sync::OnceLock<GpuBuffer>,
    tuning: Mutex<Tuning>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.state.info.name)
            .field("backend", &self.state.info.backend)
            .field("features", &self.state.features)
            .finish()
    }
}

impl Gpu {
    /// Opens a device on the adapter chosen by `selector` among every native adapter
    /// ([`adapter::enumerate`], [`adapter::select`]), as [`Gpu::from_adapter`] does.
    /// Errors with [`GpuError::NoAdapter`] where there is none, and
    /// [`GpuError::AdapterNotFound`] where none matches.
    ///
    /// ```no_run
    /// use walsh::gpu::{AdapterSelector, Gpu};
    ///
    /// let gpu = Gpu::new(&"vulkan".parse::<AdapterSelector>()?)?;
    /// println!("running on {}", gpu.describe());
    /// # Ok::<(), walsh::gpu::GpuError>(())
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(selector: &AdapterSelector) -> Result<Self> {
        let instance = adapter::native_instance();
        let adapter = adapter::select(adapter::enumerate(&instance), selector)?;
        pollster::block_on(Self::from_adapter(adapter, 0))
    }

    /// Opens a device on the browser's WebGPU adapter (high-performance preference).
    #[cfg(target_arch = "wasm32")]
    pub async fn browser() -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::BROWSER_WEBGPU;
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|_| GpuError::NoBrowserAdapter)?;
        Self::from_adapter(adapter, 0).await
    }

    /// Opens a device on `adapter`, enabling the optional features it offers and its full
    /// limits. `index` is only used to describe the adapter. Errors that escape wgpu's
    /// error scopes are recorded and returned by the next readback ([`Gpu::check`]).
    /// To use a device you opened yourself, see [`Gpu::from_device`].
    pub async fn from_adapter(adapter: wgpu::Adapter, index: usize) -> Result<Self> {
        let info = adapter.get_info();
        let summary = AdapterSummary::new(index, &adapter);
        let required_features = adapter.features() & adapter::wanted_features();
        let desc = wgpu::DeviceDescriptor {
            label: Some("walsh"),
            required_features,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            adapter
                .request_device(&desc)
                .await
                .map_err(|source| GpuError::RequestDevice {
                    adapter: info.name.clone(),
                    source,
                })?;
        let gpu = Self::wrap(info, summary, device, queue);

        // wgpu's default handler panics on any error that escapes an error scope; record it
        // instead so the next readback or submit returns it as a typed error.
        let sink = gpu.state.failure.clone();
        gpu.device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert(GpuError::from_wgpu(&e));
            }));
        let sink = gpu.state.failure.clone();
        gpu.device.set_device_lost_callback(move |reason, message| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if reason != wgpu::DeviceLostReason::Destroyed {
                slot.get_or_insert(GpuError::DeviceLost(format!("{reason:?}: {message}")));
            }
        });
        Ok(gpu)
    }

    /// Wraps a device and queue the caller opened on `adapter` themselves, so walsh's
    /// kernels can record into the caller's own command encoders, next to their own work,
    /// on their own buffers ([`Gpu::track`] wraps a `wgpu::Buffer` for the kernels).
    /// `device` and `queue` are handles: pass clones and keep using yours.
    ///
    /// walsh uses what the device has: kernels pick their path from its enabled features
    /// (`SUBGROUP`, `SHADER_F16`; see [`adapter::wanted_features`]) and size their work to
    /// its limits. A kernel that needs more than the device allows fails with a typed
    /// error when its pipeline is built ([`GpuError::ShaderCompile`]); the WHT runs within
    /// wgpu's default limits. [`Gpu::from_adapter`] opens a device with everything the
    /// adapter offers instead.
    ///
    /// Unlike [`Gpu::from_adapter`], this leaves the device's uncaptured-error and
    /// device-lost callbacks to the caller: errors outside walsh's own error scopes go to
    /// the caller's handler (wgpu's default one panics), not to [`Gpu::check`].
    /// [`Gpu::summary`] gives the adapter index 0.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    /// let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    /// let (device, queue) = pollster::block_on(adapter.request_device(&Default::default()))?;
    /// let gpu = walsh::gpu::Gpu::from_device(&adapter, device.clone(), queue.clone());
    /// let wht = walsh::ops::hadamard::Hadamard::new(&gpu)?;
    /// // ... wht.encode(&mut your_pass, ...) between your own dispatches.
    /// # Ok(()) }
    /// ```
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::wrap(
            adapter.get_info(),
            AdapterSummary::new(0, adapter),
            device,
            queue,
        )
    }

    fn wrap(
        info: wgpu::AdapterInfo,
        summary: AdapterSummary,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Self {
        let state = DeviceState {
            features: GpuFeatures::from_wgpu(device.features()),
            limits: device.limits(),
            info,
            summary,
            cache: PipelineCache::default(),
            memory: Arc::default(),
            counters: Counters::default(),
            failure: Arc::default(),
            spare: std::sync::OnceLock::new(),
            spare_uniform: std::sync::OnceLock::new(),
            tuning: Mutex::default(),
        };
        // In the browser wgpu's handles are neither Send nor Sync, so neither is the state;
        // the page runs on one thread, and one `Arc` keeps one type on every target.
        #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
        let state = Arc::new(state);
        Self {
            device,
            queue,
            state,
        }
    }

    /// A 16-byte storage buffer to bind at a writable slot a dispatch does not write.
    pub fn spare_storage(&self) -> &GpuBuffer {
        self.state.spare.get_or_init(|| {
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("spare writable slot"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            self.track(buffer, MemoryCategory::Scratch)
        })
    }

    /// A zeroed uniform of [`SPARE_UNIFORM_BYTES`] to bind at a uniform slot a dispatch
    /// does not read (a shader's uniform array must be bound whole).
    pub fn spare_uniform(&self) -> &GpuBuffer {
        self.state
            .spare_uniform
            .get_or_init(|| self.uniform("spare uniform slot", &[0u32; SPARE_UNIFORM_BYTES / 4]))
    }

    /// Replaces the measured kernel choices (see [`Tuning`]).
    pub fn set_tuning(&self, tuning: Tuning) {
        *self.state.tuning.lock().unwrap_or_else(|p| p.into_inner()) = tuning;
    }

    pub fn tuning(&self) -> Tuning {
        self.state
            .tuning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The measured decode GEMV for weights of `format`, if any.
    pub fn tuned_gemv(&self, format: &str) -> Option<String> {
        let tuning = self.state.tuning.lock().unwrap_or_else(|p| p.into_inner());
        tuning.gemv.get(format).cloned()
    }

    /// What identifies this adapter's kernel timings: name, backend, driver and driver
    /// version, and walsh's kernels (a hash of every shader's source: timings of other
    /// kernels say nothing of these).
    pub fn fingerprint(&self) -> String {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for shader in Shader::ALL {
            for b in shader.source().bytes() {
                hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!(
            "{} | {:?} | {} {} | walsh {} kernels {hash:016x}",
            self.state.info.name,
            self.state.info.backend,
            self.state.info.driver,
            self.state.info.driver_info,
            env!("CARGO_PKG_VERSION")
        )
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.state.info
    }

    pub fn summary(&self) -> &AdapterSummary {
        &self.state.summary
    }

    /// Lowers the storage-binding and buffer-size limits that walsh plans with
    /// ([`Gpu::limits`], and the binding limit of [`Gpu::summary`]) to `bytes` where
    /// smaller, leaving the device's own: a model is then checked, split across bindings
    /// and stepped as on a device with that limit. The page's `?max_binding=` previews a
    /// phone's 128 MiB this way, since a browser raises any requested limit to WebGPU's
    /// default (128 MiB). Before the handle is cloned (a clone keeps the limits it was
    /// made with): returns whether it took effect.
    pub fn cap_bindings(&mut self, bytes: u64) -> bool {
        let Some(state) = Arc::get_mut(&mut self.state) else {
            return false;
        };
        let l = &mut state.limits;
        l.max_storage_buffer_binding_size = l.max_storage_buffer_binding_size.min(bytes);
        l.max_buffer_size = l.max_buffer_size.min(bytes);
        state.summary.max_storage_buffer_binding_bytes = l.max_storage_buffer_binding_size;
        true
    }

    /// Names the adapter where wgpu could not (the browser hides adapter names from
    /// wgpu; the page reads them from `GPUAdapter.info`). Before the handle is cloned:
    /// a clone keeps the name it was made with.
    pub fn set_label(&mut self, name: &str) {
        if self.state.info.name.is_empty()
            && let Some(state) = Arc::get_mut(&mut self.state)
        {
            state.info.name = name.to_string();
            state.summary.name = name.to_string();
        }
    }

    /// A short human description: `llvmpipe (LLVM 15.0.6, 256 bits) (vulkan)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.state.info.name,
            adapter::backend_name(self.state.info.backend)
        )
    }

    pub fn features(&self) -> GpuFeatures {
        self.state.features
    }

    /// A CPU adapter (lavapipe, llvmpipe, SwiftShader): there a workgroup barrier is a
    /// switch between threads, so kernels prefer one invocation per output for
    /// decode-sized batches (matmul's `gemv_outputs`, the WHT's `wht_rows`).
    pub fn is_cpu_adapter(&self) -> bool {
        self.state.info.device_type == wgpu::DeviceType::Cpu
    }

    /// SwiftShader (Chromium's WebGPU adapter, and its Vulkan driver natively), by name:
    /// the CPU adapter where a barrier costs most (measured against lavapipe by the
    /// kernels that take it: attention's decode blocks, the WHT's per-row kernel).
    pub fn is_swiftshader(&self) -> bool {
        self.state
            .info
            .name
            .to_ascii_lowercase()
            .contains("swiftshader")
    }

    /// A CPU adapter other than SwiftShader (lavapipe, llvmpipe GL: Mesa's llvmpipe
    /// compiler), where kernels that hold more in registers and read workgroup memory less
    /// measured faster: there workgroup memory is read lane by lane, as any memory
    /// (attention's direct prefill tile, matmul's `gemm_direct`). On SwiftShader both measured
    /// slower than the GPUs' kernels, so it keeps those.
    pub fn favours_registers(&self) -> bool {
        self.is_cpu_adapter() && !self.is_swiftshader()
    }

    /// Workgroups that keep this adapter busy, the stand-in for its size (wgpu reports no
    /// compute-unit count): a CPU adapter runs a workgroup per thread (lavapipe and
    /// llvmpipe one per core; the page's SwiftShader is taken to have 4), a GPU is taken
    /// to want 256 (two per unit of a 128-unit part such as the H100's 132 SMs). Kernels
    /// split work that would leave it idle (the decode attention's key chunks).
    pub fn parallelism(&self) -> usize {
        if !self.is_cpu_adapter() {
            return 256;
        }
        #[cfg(not(target_arch = "wasm32"))]
        return std::thread::available_parallelism().map_or(4, |n| n.get());
        #[cfg(target_arch = "wasm32")]
        4
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.state.limits
    }

    pub fn memory(&self) -> &MemoryTracker {
        &self.state.memory
    }

    /// Dispatches replayed, readbacks and submissions so far on this device.
    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    /// Returns (and clears) the first error wgpu reported asynchronously.
    pub fn check(&self) -> Result<()> {
        let mut slot = self.state.failure.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(GpuError::DeviceLost(m)) => {
                // A lost device stays lost: keep reporting it.
                *slot = Some(GpuError::DeviceLost(m.clone()));
                Err(GpuError::DeviceLost(m))
            }
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Errors if a binding of `bytes` exceeds the adapter's storage binding limit.
    pub fn check_binding_size(&self, what: &str, bytes: u64) -> Result<()> {
        let limit = self
            .state
            .limits
            .max_storage_buffer_binding_size
            .min(self.state.limits.max_buffer_size);
        if bytes > limit {
            return Err(GpuError::LimitExceeded {
                what: what.to_string(),
                requested: bytes,
                limit,
                adapter: self.state.info.name.clone(),
            });
        }
        Ok(())
    }

    /// Splits `workgroups` into a 2D grid within `max_compute_workgroups_per_dimension`.
    /// Kernels rebuild the linear index as `wid.y * grid.x + wid.x` and skip indices past
    /// the count they are given.
    pub fn grid(&self, what: &str, workgroups: u32) -> Result<glam::UVec3> {
        let max = self
            .state
            .limits
            .max_compute_workgroups_per_dimension
            .max(1);
        let x = workgroups.clamp(1, max);
        let y = workgroups.div_ceil(x);
        if y > max {
            return Err(GpuError::LimitExceeded {
                what: format!("{what} (workgroups)"),
                requested: workgroups as u64,
                limit: max as u64 * max as u64,
                adapter: self.state.info.name.clone(),
            });
        }
        Ok(glam::UVec3::new(x, y, 1))
    }

    /// The pipeline for `key`, compiled on first use with a bind group layout of `bindings`
    /// (inside [`Gpu::build_together`], natively, on a thread of its own).
    pub fn pipeline(&self, key: &PipelineKey, bindings: &[Binding]) -> Result<Arc<CachedPipeline>> {
        if let Some(p) = self.lock_pipelines().get(key) {
            return Ok(p.clone());
        }
        let needed = key.shader.required_features();
        if !self.device.features().contains(needed) {
            return Err(GpuError::MissingFeature {
                feature: "SUBGROUP",
                adapter: self.state.info.name.clone(),
            });
        }
        let label = key.label();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.module(key.shader);
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &pipeline::layout_entries(bindings),
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        #[cfg(not(target_arch = "wasm32"))]
        if building::active() {
            // The module and the layouts here (their errors too), the pipeline on a thread.
            if let Some(e) = self.pop_scope(scope) {
                self.forget_module(key.shader);
                return Err(self.compile_error(key, &e.to_string()));
            }
            let cached = Arc::new(CachedPipeline::new(None, layout, label.clone()));
            let (device, key_c) = (self.device.clone(), key.clone());
            let handle = std::thread::spawn(move || {
                let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
                let p = create_pipeline(&device, &key_c, &label, &pipeline_layout, &module);
                match pollster::block_on(scope.pop()) {
                    Some(e) => Err(e.to_string()),
                    None => Ok(p),
                }
            });
            building::push(building::Job {
                gpu: self.clone(),
                key: key.clone(),
                cached: cached.clone(),
                handle,
            });
            self.lock_pipelines().insert(key.clone(), cached.clone());
            return Ok(cached);
        }
        let pipeline = create_pipeline(&self.device, key, &label, &pipeline_layout, &module);
        if let Some(e) = self.pop_scope(scope) {
            // Forget the module too: its error may be the cause.
            self.forget_module(key.shader);
            return Err(self.compile_error(key, &e.to_string()));
        }
        let cached = Arc::new(CachedPipeline::new(Some(pipeline), layout, label));
        self.lock_pipelines().insert(key.clone(), cached.clone());
        Ok(cached)
    }

    /// Runs `f`, which records (into [`Recording`]s only) with pipelines compiled natively
    /// on threads of their own while it goes on (on a CPU adapter a pipeline takes tens to
    /// hundreds of milliseconds to compile, and a machine has cores to spare), and returns
    /// once all of them are compiled: `f`'s result, or the first compile error (the failed
    /// pipelines are forgotten, so drop what `f` recorded). In the browser, `f` as it is.
    pub fn build_together<T, E: From<GpuError>>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        #[cfg(target_arch = "wasm32")]
        {
            f()
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let outer = building::begin();
            let result = f();
            let mut first = None;
            for job in building::end(outer) {
                let compiled = job
                    .handle
                    .join()
                    .unwrap_or_else(|_| Err("the compiling thread panicked".to_string()));
                match compiled {
                    Ok(p) => {
                        let _ = job.cached.compiled.set(p);
                    }
                    Err(message) => {
                        job.gpu.lock_pipelines().remove(&job.key);
                        job.gpu.forget_module(job.key.shader);
                        first.get_or_insert(job.gpu.compile_error(&job.key, &message));
                    }
                }
            }
            match first {
                Some(e) => Err(e.into()),
                None => result,
            }
        }
    }

    fn compile_error(&self, key: &PipelineKey, message: &str) -> GpuError {
        GpuError::ShaderCompile {
            shader: key.shader.name().to_string(),
            entry: key.entry.to_string(),
            message: message.to_string(),
        }
    }

    fn forget_module(&self, shader: Shader) {
        self.state
            .cache
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shader);
    }

    /// The validation error of a pipeline's creation, if any. Natively, waits for it. The
    /// browser cannot wait here: the error is recorded when it arrives and returned by
    /// the next readback ([`Gpu::check`]).
    fn pop_scope(&self, scope: wgpu::ErrorScopeGuard) -> Option<wgpu::Error> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            pollster::block_on(scope.pop())
        }
        #[cfg(target_arch = "wasm32")]
        {
            let sink = self.state.failure.clone();
            let popped = scope.pop();
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(e) = popped.await {
                    let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(GpuError::from_wgpu(&e));
                }
            });
            None
        }
    }

    /// The key of every pipeline built on this device so far: what the host actually
    /// compiled (the shader translation tests translate exactly these).
    pub fn pipeline_keys(&self) -> Vec<PipelineKey> {
        self.lock_pipelines().keys().cloned().collect()
    }

    fn lock_pipelines(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<PipelineKey, Arc<CachedPipeline>>>
    {
        self.state
            .cache
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn module(&self, shader: Shader) -> wgpu::ShaderModule {
        let mut modules = self
            .state
            .cache
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        modules
            .entry(shader)
            .or_insert_with(|| {
                self.device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name()),
                        source: wgpu::ShaderSource::Wgsl(shader.source().into()),
                    })
            })
            .clone()
    }

    /// A bind group for `pipeline` over `buffers`, bound at 0, 1, 2, ... in order.
    pub fn bind_group(
        &self,
        pipeline: &CachedPipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&pipeline.label),
            layout: &pipeline.layout,
            entries: &entries,
        })
    }

    /// Records one dispatch of `pipeline` over `grid` workgroups into `pass`.
    pub fn dispatch(
        &self,
        pass: &mut dyn Record,
        pipeline: &Arc<CachedPipeline>,
        buffers: &[&wgpu::Buffer],
        grid: glam::UVec3,
    ) {
        let bind_group = self.bind_group(pipeline, buffers);
        // Storage bytes bound, each buffer once (stand-ins are bound at several slots).
        let mut storage: Vec<&wgpu::Buffer> = Vec::new();
        for b in buffers {
            if !b.usage().contains(wgpu::BufferUsages::UNIFORM) && !storage.contains(b) {
                storage.push(b);
            }
        }
        let bytes = storage.iter().map(|b| b.size()).sum();
        pass.record(pipeline, bind_group, grid, bytes);
    }

    /// Submits command buffers, counting the submission.
    pub fn submit(
        &self,
        buffers: impl IntoIterator<Item = wgpu::CommandBuffer>,
    ) -> wgpu::SubmissionIndex {
        self.state.counters.submission();
        self.queue.submit(buffers)
    }

    /// Counts a buffer made directly with wgpu under `category` while it lives, and wraps
    /// it for the kernels, which take [`GpuBuffer`]s: how a caller's own buffers (a clone
    /// of the handle: the caller keeps theirs) are handed to walsh. The buffer must
    /// belong to this device and have the usages a kernel binds it with (`STORAGE`).
    pub fn track(&self, buffer: wgpu::Buffer, category: MemoryCategory) -> GpuBuffer {
        GpuBuffer::new(buffer, category, self.state.memory.clone())
    }

    /// A storage buffer holding `data`, counted under `category`.
    pub fn upload<T: Pod>(
        &self,
        category: MemoryCategory,
        label: &str,
        data: &[T],
    ) -> Result<GpuBuffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.check_binding_size(label, bytes.len() as u64)?;
        // Zero-length bindings are invalid; keep at least one element's worth.
        let contents: Vec<u8>;
        let contents = if bytes.len() < 4 {
            contents = vec![0u8; 4];
            &contents[..]
        } else {
            bytes
        };
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        Ok(self.track(buffer, category))
    }

    /// An uninitialized (zeroed) storage buffer of `bytes`, counted under `category`.
    pub fn storage(&self, category: MemoryCategory, label: &str, bytes: u64) -> Result<GpuBuffer> {
        self.check_binding_size(label, bytes)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(self.track(buffer, category))
    }

    /// A uniform buffer holding `value` (a `#[repr(C)]` struct matching a WGSL struct).
    pub fn uniform<T: Pod>(&self, label: &str, value: &T) -> GpuBuffer {
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        self.track(buffer, MemoryCategory::Uniforms)
    }

    /// Submits `encoder` and resolves once the GPU has finished it. Natively this blocks
    /// inside (the future is ready when first polled); in the browser it yields to the
    /// event loop until the queue reports the work done.
    pub async fn finish(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        self.submit(Some(encoder.finish()));
        let (tx, rx) = signal::channel();
        self.queue.on_submitted_work_done(move || tx.send(()));
        self.poll()?;
        rx.await
            .ok_or_else(|| GpuError::DeviceLost("the queue dropped a submission".into()))?;
        self.check()
    }

    /// Natively, waits for every submission and runs the callbacks they completed. In the
    /// browser the event loop runs them, so there is nothing to do.
    fn poll(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        Ok(())
    }

    /// A command encoder on this device, named `label` in wgpu's messages.
    pub fn encoder(&self, label: &str) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    /// Appends a copy of the first `bytes` of `buffer` to `encoder`, submits it as one
    /// command buffer and returns those bytes once the GPU is done: a step and its
    /// readback in a single submission.
    pub async fn finish_and_read(
        &self,
        encoder: wgpu::CommandEncoder,
        buffer: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        let pending = self.submit_read(encoder, buffer, bytes)?;
        self.wait_read(pending).await
    }

    /// The first half of [`Gpu::finish_and_read`]: appends the copy, submits, and asks for
    /// the mapping, without waiting. Later submissions may follow before
    /// [`Gpu::wait_read`] collects the bytes, so the GPU works on them meanwhile.
    pub fn submit_read(
        &self,
        mut encoder: wgpu::CommandEncoder,
        buffer: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<PendingRead> {
        if bytes > buffer.size() {
            return Err(GpuError::BufferTooSmall {
                label: "readback source".into(),
                needed: bytes,
                found: buffer.size(),
            });
        }
        let size = bytes.max(4).next_multiple_of(4);
        let staging = self.track(
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("walsh readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            MemoryCategory::Readback,
        );
        encoder.copy_buffer_to_buffer(buffer, 0, staging.buffer(), 0, size.min(buffer.size()));
        let submission = self.submit(Some(encoder.finish()));
        self.state.counters.readback();
        let (tx, mapped) = signal::channel();
        staging
            .buffer()
            .map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
        Ok(PendingRead {
            staging,
            bytes,
            submission,
            mapped,
        })
    }

    /// The second half of [`Gpu::finish_and_read`]: waits for `pending`'s submission (not
    /// for any made after it) and returns its bytes.
    pub async fn wait_read(&self, pending: PendingRead) -> Result<Vec<u8>> {
        let PendingRead {
            staging,
            bytes,
            submission,
            mapped,
        } = pending;
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| GpuError::DeviceLost(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = submission; // the event loop delivers the mapping
        mapped
            .await
            .ok_or_else(|| GpuError::Readback("the mapping callback was dropped".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let view = staging
            .buffer()
            .get_mapped_range(..)
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = view[..bytes as usize].to_vec();
        drop(view);
        staging.buffer().unmap();
        self.check()?;
        Ok(out)
    }

    /// Reads `count` elements of `T` from the start of `buffer`.
    pub async fn read_async<T: Pod>(&self, buffer: &GpuBuffer, count: usize) -> Result<Vec<T>> {
        let bytes = self
            .finish_and_read(
                self.encoder("walsh readback"),
                buffer.buffer(),
                (count * size_of::<T>()) as u64,
            )
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// Blocking forms of the readback calls, for native code (tests, the CLI). The browser
/// cannot block its thread: it awaits the `async` forms.
#[cfg(not(target_arch = "wasm32"))]
impl Gpu {
    /// Submits `encoder` and waits for the GPU to finish it.
    pub fn submit_and_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        pollster::block_on(self.finish(encoder))
    }

    /// Blocking [`Gpu::read_async`].
    pub fn read<T: Pod>(&self, buffer: &GpuBuffer, count: usize) -> Result<Vec<T>> {
        pollster::block_on(self.read_async(buffer, count))
    }
}

/// Compiles `key`'s entry point of `module` with `layout` (errors go to the calling
/// thread's error scope).
fn create_pipeline(
    device: &wgpu::Device,
    key: &PipelineKey,
    label: &str,
    layout: &wgpu::PipelineLayout,
    module: &wgpu::ShaderModule,
) -> wgpu::ComputePipeline {
    let constants: Vec<(&str, f64)> = key.constants.iter().map(|(k, v)| (*k, *v as f64)).collect();
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: Some(layout),
        module,
        entry_point: Some(key.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            // Kernels write workgroup memory before reading it.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

/// The pipelines a thread inside [`Gpu::build_together`] has started compiling.
#[cfg(not(target_arch = "wasm32"))]
mod building {
    use std::cell::RefCell;
    use std::sync::Arc;

    use super::{CachedPipeline, Gpu, PipelineKey};

    pub(super) struct Job {
        pub(super) gpu: Gpu,
        pub(super) key: PipelineKey,
        pub(super) cached: Arc<CachedPipeline>,
        pub(super) handle: std::thread::JoinHandle<Result<wgpu::ComputePipeline, String>>,
    }

    thread_local! {
        static JOBS: RefCell<Option<Vec<Job>>> = const { RefCell::new(None) };
    }

    pub(super) fn active() -> bool {
        JOBS.with(|j| j.borrow().is_some())
    }

    pub(super) fn push(job: Job) {
        JOBS.with(|j| j.borrow_mut().get_or_insert_with(Vec::new).push(job));
    }

    /// Starts collecting; returns what an enclosing call collected, for [`end`].
    pub(super) fn begin() -> Option<Vec<Job>> {
        JOBS.with(|j| j.replace(Some(Vec::new())))
    }

    /// Stops collecting (restoring the enclosing call's jobs); returns this call's.
    pub(super) fn end(outer: Option<Vec<Job>>) -> Vec<Job> {
        JOBS.with(|j| j.replace(outer)).unwrap_or_default()
    }
}
