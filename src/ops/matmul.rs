//! Dense matrix products (`shaders/matmul.wgsl`): `y = x W^T` with W shaped [n_out, n_in].
//! For now the GEMV used for small batches; it is also the dense baseline the Hadamard
//! benchmarks compare against.

use bytemuck::{Pod, Zeroable};

use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Shader};

/// Invocations per workgroup; passed to the shader as `GEMV_WG` (at most 256, the size of
/// its `partial` rows).
const GEMV_WORKGROUP: u32 = 64;
/// Rows per workgroup; must match `ROWS` in matmul.wgsl.
const GEMV_ROWS: usize = 4;

/// Uniform parameters; must match `Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct MatmulParams {
    rows: u32,
    n_in: u32,
    n_out: u32,
    tiles_x: u32,
}

/// Bindings of `gemv`: params, w, x, y.
const BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadWrite,
];

/// Records `y = x W^T` for `rows` rows: `w` is [n_out, n_in], `x` [rows, n_in],
/// `y` [rows, n_out], all f32.
#[allow(clippy::too_many_arguments)]
pub fn encode_gemv(
    gpu: &Gpu,
    pass: &mut wgpu::ComputePass<'_>,
    w: &GpuBuffer,
    x: &GpuBuffer,
    y: &GpuBuffer,
    rows: usize,
    n_in: usize,
    n_out: usize,
) -> Result<(), GpuError> {
    for (label, buf, elems) in [
        ("weight", w, n_out * n_in),
        ("x", x, rows * n_in),
        ("y", y, rows * n_out),
    ] {
        let needed = (elems * 4) as u64;
        if buf.size() < needed {
            return Err(GpuError::BufferTooSmall {
                label: label.into(),
                needed,
                found: buf.size(),
            });
        }
    }
    if rows == 0 || n_out == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Matmul, "gemv").with("GEMV_WG", GEMV_WORKGROUP);
    let pipeline = gpu.pipeline(&key, &BINDINGS)?;
    let groups = n_out * rows.div_ceil(GEMV_ROWS);
    let grid = gpu.grid("GEMV", groups as u32)?;
    let params = gpu.uniform(
        "gemv params",
        &MatmulParams {
            rows: rows as u32,
            n_in: n_in as u32,
            n_out: n_out as u32,
            tiles_x: grid.x,
        },
    );
    gpu.dispatch(
        pass,
        &pipeline,
        &[params.buffer(), w.buffer(), x.buffer(), y.buffer()],
        grid,
    );
    Ok(())
}

/// CPU reference in f64: `y[r][o] = sum_i w[o][i] x[r][i]`.
pub fn gemv_reference(w: &[f32], x: &[f32], rows: usize, n_in: usize, n_out: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            y[r * n_out + o] = (0..n_in)
                .map(|i| w[o * n_in + i] as f64 * x[r * n_in + i] as f64)
                .sum();
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{MemoryCategory, testing::test_gpus};

    #[test]
    fn gemv_matches_cpu_on_odd_sizes() {
        for gpu in test_gpus() {
            for (rows, n_in, n_out) in [(1, 1, 1), (3, 37, 5), (5, 130, 67)] {
                let w: Vec<f32> = (0..n_out * n_in)
                    .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
                    .collect();
                let x: Vec<f32> = (0..rows * n_in)
                    .map(|i| ((i * 104729) % 19) as f32 / 9.0 - 1.0)
                    .collect();
                let wb = gpu.upload(MemoryCategory::Weights, "w", &w).unwrap();
                let xb = gpu.upload(MemoryCategory::Activations, "x", &x).unwrap();
                let yb = gpu
                    .storage(MemoryCategory::Activations, "y", (rows * n_out * 4) as u64)
                    .unwrap();
                let mut enc = gpu.encoder("gemv test");
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    encode_gemv(&gpu, &mut pass, &wb, &xb, &yb, rows, n_in, n_out).unwrap();
                }
                gpu.submit_and_wait(enc).unwrap();
                let y: Vec<f32> = gpu.read(&yb, rows * n_out).unwrap();
                let want = gemv_reference(&w, &x, rows, n_in, n_out);
                for (k, (&g, &r)) in y.iter().zip(&want).enumerate() {
                    // Sum of n_in products of magnitude <= 1: f32 rounding is below n_in * eps.
                    let tol = n_in as f64 * f32::EPSILON as f64 * 2.0;
                    assert!(
                        (g as f64 - r).abs() <= tol,
                        "{} {rows}x{n_in}->{n_out} [{k}]: {g} vs {r}",
                        gpu.describe()
                    );
                }
            }
        }
    }

    #[test]
    fn gemv_rejects_short_buffers() {
        let Some(gpu) = test_gpus().into_iter().next() else {
            return;
        };
        let w = gpu
            .upload(MemoryCategory::Weights, "w", &[0f32; 6])
            .unwrap();
        let x = gpu
            .upload(MemoryCategory::Activations, "x", &[0f32; 3])
            .unwrap();
        let y = gpu.storage(MemoryCategory::Activations, "y", 8).unwrap();
        let mut enc = gpu.encoder("gemv test");
        let mut pass = enc.begin_compute_pass(&Default::default());
        let err = encode_gemv(&gpu, &mut pass, &w, &x, &y, 1, 3, 4).unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
    }
}
