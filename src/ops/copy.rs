//! A copy shader (`shaders/copy.wgsl`): the bandwidth a compute kernel reaches on this
//! adapter, the roof other kernels are compared with in benchmarks.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Record, Shader};

/// Invocations per workgroup; passed to the shader as `COPY_WG`.
const COPY_WORKGROUP: u32 = 256;

/// Uniform parameters; must match `Params` in copy.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct CopyParams {
    count: u32,
    tiles_x: u32,
}

const BINDINGS: [Binding; 3] = [Uniform, ReadOnly, ReadWrite];

/// Records `dst[..bytes] = src[..bytes]`; `bytes` must be a multiple of 16.
pub fn encode_copy(
    gpu: &Gpu,
    pass: &mut dyn Record,
    src: &GpuBuffer,
    dst: &GpuBuffer,
    bytes: u64,
) -> Result<(), GpuError> {
    if !bytes.is_multiple_of(16) {
        return Err(GpuError::Validation(format!(
            "copy shader moves whole vec4s: {bytes} bytes is not a multiple of 16"
        )));
    }
    src.require("copy source", bytes)?;
    dst.require("copy destination", bytes)?;
    let count = bytes / 16;
    if count == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", COPY_WORKGROUP);
    let pipeline = gpu.pipeline(&key, &BINDINGS)?;
    let grid = gpu.grid("copy", count.div_ceil(COPY_WORKGROUP as u64) as u32)?;
    let params = gpu.uniform(
        "copy params",
        &CopyParams {
            count: count as u32,
            tiles_x: grid.x,
        },
    );
    gpu.dispatch(
        pass,
        &pipeline,
        &[params.buffer(), src.buffer(), dst.buffer()],
        grid,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::profile::{TimingMethod, time_recording};
    use crate::gpu::{GpuTimer, MemoryCategory, Recording, testing::test_gpus};

    #[test]
    fn copies_exactly_and_only_what_is_asked() {
        for gpu in test_gpus() {
            // 37 vec4s plus a tail that must stay untouched; not a multiple of the workgroup.
            let src: Vec<f32> = (0..160).map(|i| i as f32 * 1.5 - 7.0).collect();
            let s = gpu
                .upload(MemoryCategory::Activations, "src", &src)
                .unwrap();
            let d = gpu
                .upload(MemoryCategory::Activations, "dst", &[-1f32; 160])
                .unwrap();
            let mut enc = gpu.encoder("copy test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                encode_copy(&gpu, &mut pass, &s, &d, 37 * 16).unwrap();
                assert!(encode_copy(&gpu, &mut pass, &s, &d, 10).is_err());
            }
            gpu.submit_and_wait(enc).unwrap();
            let out: Vec<f32> = gpu.read(&d, 160).unwrap();
            assert_eq!(&out[..148], &src[..148], "{}", gpu.describe());
            assert!(out[148..].iter().all(|&v| v == -1.0), "{}", gpu.describe());
        }
    }

    /// The gpu floor's timing, tested here with the copy kernel (the gpu floor has none).
    #[test]
    fn timestamps_time_a_compute_pass() {
        for gpu in test_gpus() {
            let Some(timer) = GpuTimer::new(&gpu, 2).unwrap() else {
                assert!(!gpu.features().timestamp_query);
                continue;
            };
            let n = 1024;
            let x = gpu
                .upload(MemoryCategory::Activations, "x", &vec![1f32; 64 * n])
                .unwrap();
            let y = gpu
                .storage(MemoryCategory::Activations, "y", (64 * n * 4) as u64)
                .unwrap();
            let mut enc = gpu.encoder("timed");
            for slot in 0..2 {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("timed copy"),
                    timestamp_writes: Some(timer.pass_writes(slot).unwrap()),
                });
                encode_copy(&gpu, &mut pass, &x, &y, (64 * n * 4) as u64).unwrap();
            }
            timer.resolve(&mut enc);
            gpu.submit_and_wait(enc).unwrap();
            let secs = pollster::block_on(timer.read_seconds(&gpu)).unwrap();
            assert_eq!(secs.len(), 2);
            for s in secs {
                assert!(s > 0.0 && s < 60.0, "{} pass took {s} s?", gpu.describe());
            }
            assert!(timer.pass_writes(2).is_err());
        }
    }

    #[test]
    fn every_dispatch_of_a_recording_is_timed_with_its_kernel_and_bytes() {
        for gpu in test_gpus() {
            let a = gpu.storage(MemoryCategory::Scratch, "a", 1 << 16).unwrap();
            let b = gpu.storage(MemoryCategory::Scratch, "b", 1 << 16).unwrap();
            let mut rec = Recording::new();
            encode_copy(&gpu, &mut rec, &a, &b, 1 << 16).unwrap();
            encode_copy(&gpu, &mut rec, &b, &a, 1 << 12).unwrap();
            let t = pollster::block_on(time_recording(&gpu, &rec, 3)).unwrap();
            assert_eq!(t.dispatches.len(), 2, "{}", gpu.describe());
            for d in &t.dispatches {
                assert!(d.kernel.starts_with("copy:copy_vec4"), "{}", d.kernel);
                // Both buffers are bound whole, the uniform not counted.
                assert_eq!(d.bytes, 2 << 16);
                assert!(d.seconds.is_finite() && d.seconds >= 0.0, "{d:?}");
            }
            assert_eq!(t.dispatches[0].grid, [16, 1, 1]);
            assert!(t.wall_seconds > 0.0);
            let expected = if gpu.features().timestamp_inside_passes {
                TimingMethod::InsidePass
            } else if gpu.features().timestamp_query {
                TimingMethod::PassPerDispatch
            } else {
                TimingMethod::WallClock
            };
            assert_eq!(t.method, expected, "{}", gpu.describe());
        }
    }
}
