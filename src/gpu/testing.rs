//! Devices for GPU tests: one per software adapter (lavapipe Vulkan, llvmpipe GL).
//!
//! `WALSH_TEST_BACKENDS` lists the backends to test (default `vulkan,gl`). When `CI` is
//! set, a listed backend without an adapter fails the test instead of being skipped.

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
