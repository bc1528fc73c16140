//! Adapter discovery and selection: `--adapter` / `WALSH_ADAPTER`.

use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{GpuError, Result};

/// The native backends walsh looks at. The browser backend is only used on wasm32.
pub fn native_backends() -> wgpu::Backends {
    wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL
}

/// Optional features walsh uses when an adapter offers them; kernels pick their path from
/// what was enabled (see [`super::Gpu::features`]).
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
}

/// How the user names an adapter: parsed from the text of `--adapter` / `WALSH_ADAPTER`
/// (an index in the `walsh adapters` list, a backend, or part of a name; empty or
/// `default` for [`AdapterSelector::Default`]), then resolved by [`select`].
///
/// ```
/// use walsh::gpu::AdapterSelector;
///
/// assert_eq!("gl".parse::<AdapterSelector>()?, AdapterSelector::Backend(wgpu::Backend::Gl));
/// assert_eq!("1".parse::<AdapterSelector>()?, AdapterSelector::Index(1));
/// assert_eq!("".parse::<AdapterSelector>()?, AdapterSelector::Default);
/// assert_eq!(
///     "llvmpipe".parse::<AdapterSelector>()?,
///     AdapterSelector::Name("llvmpipe".into())
/// );
/// # Ok::<(), walsh::gpu::GpuError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdapterSelector {
    /// The high-performance adapter: discrete GPU first, then integrated, virtual, CPU;
    /// within a kind, Vulkan/Metal/DX12 before GL.
    #[default]
    Default,
    /// Position in the `walsh adapters` list.
    Index(usize),
    /// First adapter on this backend.
    Backend(wgpu::Backend),
    /// First adapter whose name contains this text (case-insensitive).
    Name(String),
}

impl FromStr for AdapterSelector {
    type Err = GpuError;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("default") || t.eq_ignore_ascii_case("auto") {
            return Ok(AdapterSelector::Default);
        }
        if let Ok(i) = t.parse::<usize>() {
            return Ok(AdapterSelector::Index(i));
        }
        let backend = match t.to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => Some(wgpu::Backend::Vulkan),
            "metal" => Some(wgpu::Backend::Metal),
            "dx12" | "d3d12" => Some(wgpu::Backend::Dx12),
            "gl" | "gles" | "opengl" => Some(wgpu::Backend::Gl),
            _ => None,
        };
        Ok(match backend {
            Some(b) => AdapterSelector::Backend(b),
            None if t.chars().all(|c| c.is_ascii_digit() || c == '-') => {
                return Err(GpuError::InvalidSelector(t.to_string()));
            }
            None => AdapterSelector::Name(t.to_string()),
        })
    }
}

impl std::fmt::Display for AdapterSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterSelector::Default => write!(f, "default"),
            AdapterSelector::Index(i) => write!(f, "{i}"),
            AdapterSelector::Backend(b) => write!(f, "{}", backend_name(*b)),
            AdapterSelector::Name(n) => write!(f, "{n}"),
        }
    }
}

/// Lower-case backend name as used on the command line.
pub fn backend_name(b: wgpu::Backend) -> &'static str {
    match b {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        wgpu::Backend::Noop => "noop",
    }
}

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// One line of `walsh adapters`: what an adapter is and what it offers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdapterSummary {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub subgroup: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub shader_f16: bool,
    pub timestamp_query: bool,
    pub max_workgroup_storage_bytes: u32,
    pub max_storage_buffer_binding_bytes: u64,
}

impl AdapterSummary {
    pub fn new(index: usize, adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let features = adapter.features();
        let limits = adapter.limits();
        Self {
            index,
            name: info.name.clone(),
            backend: backend_name(info.backend).to_string(),
            device_type: device_type_name(info.device_type).to_string(),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_workgroup_storage_bytes: limits.max_compute_workgroup_storage_size,
            max_storage_buffer_binding_bytes: limits.max_storage_buffer_binding_size,
        }
    }
}

/// A wgpu instance over every native backend. `WGPU_BACKEND` and friends still apply.
#[cfg(not(target_arch = "wasm32"))]
pub fn native_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = native_backends();
    wgpu::Instance::new(desc.with_env())
}

/// Every adapter on every native backend, in a stable order (the `walsh adapters` indices).
#[cfg(not(target_arch = "wasm32"))]
pub fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(native_backends()));
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        (backend_rank(info.backend), info.name.clone())
    });
    adapters
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan => 0,
        wgpu::Backend::Metal => 1,
        wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 3,
        _ => 4,
    }
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Summaries of every native adapter.
#[cfg(not(target_arch = "wasm32"))]
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = native_instance();
    enumerate(&instance)
        .iter()
        .enumerate()
        .map(|(i, a)| AdapterSummary::new(i, a))
        .collect()
}

/// Picks one adapter out of `adapters` (as returned by [`enumerate`], whose order the
/// indices and "first on a backend / with a name" refer to). Errors with
/// [`GpuError::NoAdapter`] when the list is empty, [`GpuError::AdapterNotFound`] (listing
/// them) when none matches.
pub fn select(adapters: Vec<wgpu::Adapter>, selector: &AdapterSelector) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter);
    }
    let position = match selector {
        AdapterSelector::Default => (0..adapters.len()).min_by_key(|&i| {
            let info = adapters[i].get_info();
            (type_rank(info.device_type), backend_rank(info.backend), i)
        }),
        AdapterSelector::Index(i) => (*i < adapters.len()).then_some(*i),
        AdapterSelector::Backend(b) => adapters.iter().position(|a| a.get_info().backend == *b),
        AdapterSelector::Name(n) => {
            let n = n.to_lowercase();
            adapters
                .iter()
                .position(|a| a.get_info().name.to_lowercase().contains(&n))
        }
    };
    match position {
        Some(i) => Ok(adapters.into_iter().nth(i).expect("index checked above")),
        None => Err(GpuError::AdapterNotFound {
            selector: selector.to_string(),
            available: describe(&adapters),
        }),
    }
}

fn describe(adapters: &[wgpu::Adapter]) -> String {
    let mut s = String::new();
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let _ = writeln!(s, "  {i}: {} ({})", info.name, backend_name(info.backend));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_parsing() {
        assert_eq!(
            "".parse::<AdapterSelector>().unwrap(),
            AdapterSelector::Default
        );
        assert_eq!(
            "2".parse::<AdapterSelector>().unwrap(),
            AdapterSelector::Index(2)
        );
        assert_eq!(
            "Vulkan".parse::<AdapterSelector>().unwrap(),
            AdapterSelector::Backend(wgpu::Backend::Vulkan)
        );
        assert_eq!(
            "gl".parse::<AdapterSelector>().unwrap(),
            AdapterSelector::Backend(wgpu::Backend::Gl)
        );
        assert_eq!(
            "llvmpipe".parse::<AdapterSelector>().unwrap(),
            AdapterSelector::Name("llvmpipe".into())
        );
        assert!("-1".parse::<AdapterSelector>().is_err());
    }

    #[test]
    fn empty_adapter_list_is_a_clear_error() {
        let err = select(Vec::new(), &AdapterSelector::Default).unwrap_err();
        assert!(matches!(err, GpuError::NoAdapter));
        assert!(err.to_string().contains("mesa-vulkan-drivers"));
    }
}
