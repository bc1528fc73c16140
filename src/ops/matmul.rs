//! Dense matrix products (`shaders/matmul.wgsl`): `y (+)= x W^T` with W a [`Matrix`]
//! shaped [n_out, n_in], f32 or packed f16.
//!
//! Batches of up to [`GEMV_MAX_ROWS`] rows (decode) take the GEMV kernel, larger ones
//! (prefill) the tiled GEMM.

use bytemuck::{Pod, Zeroable};

use super::{Matrix, WeightFormat};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Shader};

/// Invocations per GEMV workgroup; passed to the shader as `GEMV_WG` (at most 256, the
/// length of its `partial` rows).
const GEMV_WORKGROUP: u32 = 64;
/// Rows per GEMV workgroup at most; must match `MAX_GEMV_ROWS` in matmul.wgsl.
const MAX_GEMV_ROWS: usize = 8;
/// Output block of one GEMM workgroup (rows x outputs); must match `TILE_R` / `TILE_O`
/// in matmul.wgsl.
const GEMM_TILE: usize = 64;
/// Batches up to this many rows use the GEMV kernel: it reads each weight once per
/// block of GEMV_ROWS rows, which beats the GEMM's tiling until the batch fills a tile.
pub const GEMV_MAX_ROWS: usize = 16;

/// Uniform parameters; must match `Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct MatmulParams {
    rows: u32,
    n_in: u32,
    n_out: u32,
    tiles_x: u32,
}

/// Bindings of both entry points: params, w, x, y.
const BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::ReadOnly,
    Binding::ReadOnly,
    Binding::ReadWrite,
];

/// Which kernel to run; [`Kernel::Auto`] picks by batch size and adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Auto,
    /// A workgroup per output, reduced through workgroup memory (GPUs).
    Gemv,
    /// An invocation per output, no barrier (CPU adapters).
    GemvOutputs,
    Gemm,
}

/// Records `y = x W^T` (or `y += x W^T` when `accumulate`) for `rows` rows:
/// `x` is [rows, w.cols], `y` is [rows, w.rows], f32. `x` and `y` must be distinct.
pub fn encode_matmul(
    gpu: &Gpu,
    pass: &mut wgpu::ComputePass<'_>,
    w: &Matrix,
    x: &GpuBuffer,
    y: &GpuBuffer,
    rows: usize,
    accumulate: bool,
) -> Result<(), GpuError> {
    encode_with(gpu, pass, w, x, y, rows, accumulate, Kernel::Auto)
}

/// [`encode_matmul`] with an explicit kernel choice (tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn encode_with(
    gpu: &Gpu,
    pass: &mut wgpu::ComputePass<'_>,
    w: &Matrix,
    x: &GpuBuffer,
    y: &GpuBuffer,
    rows: usize,
    accumulate: bool,
    kernel: Kernel,
) -> Result<(), GpuError> {
    let (n_out, n_in) = (w.rows, w.cols);
    let w_bytes = (n_out * n_in * w.format.element_bytes()) as u64;
    w.buffer.require("weight", w_bytes)?;
    x.require("x", (rows * n_in * 4) as u64)?;
    y.require("y", (rows * n_out * 4) as u64)?;
    if rows == 0 || n_out == 0 {
        return Ok(());
    }
    let kernel = match kernel {
        // On a CPU adapter a barrier is a thread switch: one invocation per output wins.
        Kernel::Auto if rows <= GEMV_MAX_ROWS && gpu.is_cpu_adapter() => Kernel::GemvOutputs,
        Kernel::Auto if rows <= GEMV_MAX_ROWS => Kernel::Gemv,
        Kernel::Auto => Kernel::Gemm,
        k => k,
    };
    let gemv = kernel != Kernel::Gemm;
    // A workgroup takes up to MAX_GEMV_ROWS rows; sized to the batch so no invocation
    // loops over rows that are not there.
    let gemv_rows = rows.min(MAX_GEMV_ROWS);
    let blocks = rows.div_ceil(gemv_rows);
    let (entry, groups) = match kernel {
        Kernel::Gemv => ("gemv", n_out * blocks),
        Kernel::GemvOutputs => (
            "gemv_outputs",
            n_out.div_ceil(GEMV_WORKGROUP as usize) * blocks,
        ),
        _ => ("gemm", n_out.div_ceil(GEMM_TILE) * rows.div_ceil(GEMM_TILE)),
    };
    let mut key = PipelineKey::new(Shader::Matmul, entry)
        .with_flag("W_F16", w.format == WeightFormat::F16)
        .with_flag("ACCUM", accumulate);
    if gemv {
        key = key
            .with("GEMV_WG", GEMV_WORKGROUP)
            .with("GEMV_ROWS", gemv_rows as u32)
            .with_flag("PAIRED", n_in.is_multiple_of(2));
    }
    let pipeline = gpu.pipeline(&key, &BINDINGS)?;
    let grid = gpu.grid(entry, groups as u32)?;
    let params = gpu.uniform(
        "matmul params",
        &MatmulParams {
            rows: rows as u32,
            n_in: n_in as u32,
            n_out: n_out as u32,
            tiles_x: grid.x,
        },
    );
    let buffers = [params.buffer(), w.buffer.buffer(), x.buffer(), y.buffer()];
    gpu.dispatch(pass, &pipeline, &buffers, grid);
    Ok(())
}

/// CPU reference in f64: `y[r][o] = sum_i w[o][i] x[r][i]`.
pub fn matmul_reference(w: &[f32], x: &[f32], rows: usize, n_in: usize, n_out: usize) -> Vec<f64> {
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
    use crate::gpu::MemoryCategory;
    use crate::gpu::testing::{test_gpus, test_values};

    /// Runs one product on the GPU and checks it against the f64 reference.
    #[allow(clippy::too_many_arguments)]
    fn check(
        gpu: &Gpu,
        kernel: Kernel,
        format: WeightFormat,
        rows: usize,
        n_in: usize,
        n_out: usize,
        accumulate: bool,
    ) {
        let mut w = test_values(n_out * n_in, 1);
        let matrix = match format {
            WeightFormat::F32 => Matrix::from_f32(gpu, "w", &w, n_out, n_in).unwrap(),
            WeightFormat::F16 => {
                let bits: Vec<u16> = w
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect();
                // The reference sees the rounded weights the GPU sees.
                w = bits
                    .iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect();
                Matrix::from_f16_bits(gpu, "w", &bits, n_out, n_in).unwrap()
            }
        };
        let x = test_values(rows * n_in, 2);
        let y0 = test_values(rows * n_out, 3);
        let xb = gpu.upload(MemoryCategory::Activations, "x", &x).unwrap();
        let yb = gpu.upload(MemoryCategory::Activations, "y", &y0).unwrap();
        let mut enc = gpu.encoder("matmul test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            encode_with(gpu, &mut pass, &matrix, &xb, &yb, rows, accumulate, kernel).unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        let got: Vec<f32> = gpu.read(&yb, rows * n_out).unwrap();
        let mut want = matmul_reference(&w, &x, rows, n_in, n_out);
        if accumulate {
            for (a, b) in want.iter_mut().zip(&y0) {
                *a += *b as f64;
            }
        }
        // The classic bound for a sum of n_in products in f32: n_in ulps of sum |w_i x_i|
        // (plus the accumulated y, which is at most 1).
        let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let scale = matmul_reference(&abs_w, &abs_x, rows, n_in, n_out);
        for (k, (&g, &r)) in got.iter().zip(&want).enumerate() {
            let tol = (n_in as f64 + 2.0) * f32::EPSILON as f64 * (scale[k] + 1.0);
            assert!(
                (g as f64 - r).abs() <= tol,
                "{kernel:?} {format:?} {rows}x{n_in}->{n_out} accum={accumulate} [{k}] on {}: {g} vs {r}",
                gpu.describe()
            );
        }
    }

    #[test]
    fn gemv_and_gemm_match_cpu_on_awkward_sizes() {
        for gpu in test_gpus() {
            for format in [WeightFormat::F32, WeightFormat::F16] {
                for (rows, n_in, n_out) in [(1, 1, 1), (3, 37, 5), (9, 130, 67), (16, 64, 3)] {
                    check(&gpu, Kernel::Gemv, format, rows, n_in, n_out, false);
                    check(&gpu, Kernel::GemvOutputs, format, rows, n_in, n_out, false);
                }
                for (rows, n_in, n_out) in [(1, 1, 1), (37, 19, 70), (65, 33, 129), (17, 64, 64)] {
                    check(&gpu, Kernel::Gemm, format, rows, n_in, n_out, false);
                }
            }
            check(&gpu, Kernel::Gemv, WeightFormat::F16, 5, 41, 9, true);
            check(
                &gpu,
                Kernel::GemvOutputs,
                WeightFormat::F16,
                11,
                70,
                130,
                true,
            );
            check(&gpu, Kernel::Gemm, WeightFormat::F32, 37, 41, 9, true);
        }
    }

    #[test]
    fn rejects_short_buffers() {
        let Some(gpu) = test_gpus().into_iter().next() else {
            return;
        };
        let w = Matrix::from_f32(&gpu, "w", &[0f32; 12], 4, 3).unwrap();
        let x = gpu
            .upload(MemoryCategory::Activations, "x", &[0f32; 3])
            .unwrap();
        let y = gpu.storage(MemoryCategory::Activations, "y", 8).unwrap();
        let mut enc = gpu.encoder("matmul test");
        let mut pass = enc.begin_compute_pass(&Default::default());
        let err = encode_matmul(&gpu, &mut pass, &w, &x, &y, 1, false).unwrap_err();
        assert!(err.to_string().contains("`y`"), "{err}");
        assert!(Matrix::from_f32(&gpu, "bad", &[0f32; 5], 2, 3).is_err());
    }
}
