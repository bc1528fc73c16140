//! Runtime tests on the software adapters: pipeline cache, typed errors, memory
//! accounting, readback and timestamps.

use super::testing::test_gpus;
use super::*;

/// copy.wgsl's bindings.
const COPY_BINDINGS: [Binding; 3] = [Binding::Uniform, Binding::ReadOnly, Binding::ReadWrite];

#[test]
fn pipeline_cache_returns_the_same_pipeline_per_key() {
    for gpu in test_gpus() {
        let key = PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", 64);
        let bindings = COPY_BINDINGS;
        let a = gpu.pipeline(&key, &bindings).unwrap();
        let b = gpu.pipeline(&key, &bindings).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = gpu
            .pipeline(&key.clone().with("COPY_WG", 128), &bindings)
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.label, "copy:copy_vec4{COPY_WG=64}");
    }
}

#[test]
fn bad_pipeline_is_a_typed_error_not_a_panic() {
    for gpu in test_gpus() {
        // A workgroup size of 0 is invalid: pipeline creation must fail cleanly.
        let key = PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", 0);
        let bindings = COPY_BINDINGS;
        let err = gpu.pipeline(&key, &bindings).unwrap_err();
        assert!(matches!(err, GpuError::ShaderCompile { .. }), "{err}");
        assert!(err.to_string().contains("copy_vec4"), "{err}");
        // The device is still usable afterwards.
        let ok = PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", 64);
        gpu.pipeline(&ok, &bindings).unwrap();
        gpu.check().unwrap();
    }
}

#[test]
fn pipelines_built_together_are_compiled_when_it_returns_and_errors_name_them() {
    for gpu in test_gpus() {
        let bindings = COPY_BINDINGS;
        let keys: Vec<PipelineKey> = [32, 96, 160]
            .map(|wg| PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", wg))
            .into();
        let built = gpu
            .build_together(|| -> Result<Vec<Arc<CachedPipeline>>> {
                keys.iter().map(|k| gpu.pipeline(k, &bindings)).collect()
            })
            .unwrap();
        for (key, p) in keys.iter().zip(&built) {
            assert!(
                p.compiled.get().is_some(),
                "{} on {}",
                p.label,
                gpu.describe()
            );
            assert!(Arc::ptr_eq(p, &gpu.pipeline(key, &bindings).unwrap()));
        }
        // A pipeline that fails on its thread fails the call, naming it, and is not kept;
        // the others asked for beside it are compiled.
        let bad = PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", 0);
        let good = PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", 224);
        let err = gpu
            .build_together(|| -> Result<()> {
                gpu.pipeline(&bad, &bindings)?;
                gpu.pipeline(&good, &bindings)?;
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, GpuError::ShaderCompile { .. }), "{err}");
        assert!(err.to_string().contains("copy_vec4"), "{err}");
        assert!(gpu.pipeline_keys().iter().all(|k| k != &bad));
        assert!(
            gpu.pipeline(&good, &bindings)
                .unwrap()
                .compiled
                .get()
                .is_some()
        );
        assert!(gpu.pipeline(&bad, &bindings).is_err());
        gpu.check().unwrap();
    }
}

#[test]
fn limits_are_checked_before_the_gpu_sees_them() {
    let Some(gpu) = test_gpus().into_iter().next() else {
        return;
    };
    let too_big = gpu.limits().max_storage_buffer_binding_size + 4;
    let err = gpu
        .storage(MemoryCategory::Activations, "huge", too_big)
        .unwrap_err();
    assert!(matches!(err, GpuError::LimitExceeded { .. }), "{err}");
    assert!(err.to_string().contains("huge"), "{err}");
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    assert_eq!(gpu.grid("t", 5).unwrap(), glam::UVec3::new(5, 1, 1));
    let g = gpu.grid("t", max + 1).unwrap();
    assert!(g.x * g.y > max && g.x <= max);
    assert!(gpu.grid("t", u32::MAX).is_err());
}

#[test]
fn buffers_are_counted_while_alive_and_read_back_exactly() {
    for gpu in test_gpus() {
        let before = gpu.memory().report().current_bytes;
        let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 3.0).collect();
        {
            let buf = gpu.upload(MemoryCategory::Weights, "w", &data).unwrap();
            let report = gpu.memory().report();
            assert_eq!(report.current_bytes, before + 4000);
            let weights = report
                .by_category
                .iter()
                .find(|c| c.0 == MemoryCategory::Weights)
                .unwrap();
            assert_eq!(weights.1, 4000);
            assert_eq!(gpu.read::<f32>(&buf, 1000).unwrap(), data);
            assert!(
                gpu.read::<f32>(&buf, 1001).is_err(),
                "reading past the end must fail"
            );
        }
        assert_eq!(gpu.memory().report().current_bytes, before);
        assert!(gpu.memory().report().peak_bytes >= before + 4000);
    }
}
