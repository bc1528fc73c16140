//! Devices for GPU tests: one per software adapter (lavapipe Vulkan, llvmpipe GL).
//!
//! `WALSH_TEST_BACKENDS` lists the backends to test (default `vulkan,gl`). When `CI` is
//! set, a listed backend without an adapter fails the test instead of being skipped.
//!
//! [`test_values`] gives the deterministic inputs the kernel tests share.

use super::{AdapterSelector, Gpu, adapter};

pub(crate) fn test_gpus() -> Vec<Gpu> {
    let wanted = std::env::var("WALSH_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".into());
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let mut gpus = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let selector: AdapterSelector = name.parse().expect("WALSH_TEST_BACKENDS entry");
        let instance = adapter::native_instance();
        match adapter::select(adapter::enumerate(&instance), &selector) {
            Ok(a) => match pollster::block_on(Gpu::from_adapter(a, 0)) {
                Ok(g) => gpus.push(g),
                Err(e) if in_ci => panic!("CI: no device on backend {name}: {e}"),
                Err(e) => eprintln!("skipping backend {name}: {e}"),
            },
            Err(e) if in_ci => panic!("CI: no adapter on backend {name}: {e}"),
            Err(e) => eprintln!("skipping backend {name}: {e}"),
        }
    }
    gpus
}

/// [`test_gpus`] with `max_storage_buffer_binding_size` lowered to `bytes` (the adapter's
/// features otherwise, so kernels choose as on [`test_gpus`]'s devices): what a browser's
/// 128 MiB binding limit does to a large model, at the scale of a test model.
pub(crate) fn test_gpus_with_binding_limit(bytes: u64) -> Vec<Gpu> {
    let wanted = std::env::var("WALSH_TEST_BACKENDS").unwrap_or_else(|_| "vulkan,gl".into());
    let mut gpus = Vec::new();
    for name in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let selector: AdapterSelector = name.parse().expect("WALSH_TEST_BACKENDS entry");
        let instance = adapter::native_instance();
        let Ok(a) = adapter::select(adapter::enumerate(&instance), &selector) else {
            continue; // test_gpus reports (or fails on) a missing adapter
        };
        let mut limits = a.limits();
        limits.max_storage_buffer_binding_size = bytes.min(limits.max_storage_buffer_binding_size);
        let desc = wgpu::DeviceDescriptor {
            label: Some("walsh, small bindings"),
            required_features: a.features() & adapter::wanted_features(),
            required_limits: limits,
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(a.request_device(&desc)).expect("a device");
        gpus.push(Gpu::from_device(&a, device, queue));
    }
    gpus
}

/// `n` deterministic pseudo-random values, uniform in [-1, 1) (24 random bits each), the
/// same for the same `seed` on every platform; callers scale them to the range they want.
pub(crate) fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            2.0 * u - 1.0
        })
        .collect()
}
