//! A copy shader (`shaders/copy.wgsl`): the bandwidth a compute kernel reaches on this
//! adapter, the roof other kernels are compared with in benchmarks.

use bytemuck::{Pod, Zeroable};

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

const BINDINGS: [Binding; 3] = [Binding::Uniform, Binding::ReadOnly, Binding::ReadWrite];

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
    use crate::gpu::{MemoryCategory, testing::test_gpus};

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
}
