//! Dense matrix products (`shaders/matmul.wgsl`): `z = x W^T` with W a [`Matrix`]
//! shaped [n_out, n_in], f32 or packed f16, written to y through an [`Epilogue`]: stored,
//! added, through SiLU, or (W interleaving two matrices) as SwiGLU `silu(gate) * up`, so
//! the decoder's gate and up projections are one product.
//!
//! Batches of up to [`GEMV_MAX_ROWS`] rows (decode) take the GEMV kernel, larger ones
//! (prefill) the tiled GEMM.

use bytemuck::{Pod, Zeroable};

use super::Matrix;
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Record, Shader};

/// Invocations per GEMV workgroup; passed to the shader as `GEMV_WG` (at most 256, the
/// length of its `partial` rows).
const GEMV_WORKGROUP: u32 = 64;
/// Invocations per workgroup of the wide GEMV (`GEMV_WG` there, at most 256, the length
/// of its `wide_partial`): GEMV_WIDE_WORKGROUP / GEMV_WIDE_LANES output units per
/// workgroup.
const GEMV_WIDE_WORKGROUP: u32 = 256;
/// Lanes per output unit in the wide GEMV; must match `WIDE_LANES` in matmul.wgsl.
const GEMV_WIDE_LANES: u32 = 32;
/// The wide GEMV reads rows in whole quantized blocks and 16-byte vectors.
const GEMV_WIDE_ALIGN: usize = 32;
/// Accumulators per GEMV invocation (rows per workgroup x outputs per unit) at most;
/// must match `MAX_GEMV_ROWS` in matmul.wgsl.
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

/// What a product does with z = x W^T; must match the `EPI_*` constants in matmul.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// y = z.
    Store = 0,
    /// y += z (the residual adds of the decoder).
    Accumulate = 1,
    /// y = silu(z).
    Silu = 2,
    /// W interleaves two matrices by rows (row 2j of the first, then row j of the second,
    /// see [`interleave_rows`]); y = silu(z[2j]) * z[2j + 1], [rows, n_out / 2].
    SwiGlu = 3,
}

impl Epilogue {
    /// Outputs of W per column of y.
    fn outputs_per_unit(self) -> usize {
        if self == Epilogue::SwiGlu { 2 } else { 1 }
    }
}

/// Interleaves the rows of `a` and `b` (each [rows, cols]): row 2j of the result is row j of
/// `a`, row 2j + 1 row j of `b`. The layout [`Epilogue::SwiGlu`] reads.
pub fn interleave_rows<T: Copy>(a: &[T], b: &[T], cols: usize) -> Vec<T> {
    debug_assert_eq!(a.len(), b.len());
    a.chunks(cols.max(1))
        .zip(b.chunks(cols.max(1)))
        .flat_map(|(ra, rb)| ra.iter().chain(rb).copied())
        .collect()
}

/// Which kernel to run; [`Kernel::Auto`] picks by batch size and adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Auto,
    /// A workgroup per output, reduced through workgroup memory.
    Gemv,
    /// A group of 32 lanes per output reading 16 bytes each per step, eight outputs per
    /// workgroup (GPUs; needs `n_in % 32 == 0`).
    GemvWide,
    /// An invocation per output, no barrier (CPU adapters).
    GemvOutputs,
    Gemm,
}

/// Records `z = x W^T` for `rows` rows, written to `y` by `epilogue`: `x` is
/// [rows, w.cols], `y` is [rows, w.rows] ([rows, w.rows / 2] for [`Epilogue::SwiGlu`]),
/// f32. `x` and `y` must be distinct.
pub fn encode_matmul(
    gpu: &Gpu,
    pass: &mut dyn Record,
    w: &Matrix,
    x: &GpuBuffer,
    y: &GpuBuffer,
    rows: usize,
    epilogue: Epilogue,
) -> Result<(), GpuError> {
    encode_with(gpu, pass, w, x, y, rows, epilogue, Kernel::Auto)
}

/// [`encode_matmul`] with an explicit kernel choice (tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn encode_with(
    gpu: &Gpu,
    pass: &mut dyn Record,
    w: &Matrix,
    x: &GpuBuffer,
    y: &GpuBuffer,
    rows: usize,
    epilogue: Epilogue,
    kernel: Kernel,
) -> Result<(), GpuError> {
    let (n_out, n_in) = (w.rows, w.cols);
    let outs = epilogue.outputs_per_unit();
    if !n_out.is_multiple_of(outs) {
        return Err(GpuError::Validation(format!(
            "a SwiGLU product needs interleaved gate and up rows: {n_out} rows is odd"
        )));
    }
    if x.buffer() == y.buffer() {
        return Err(GpuError::Validation(
            "matmul: `y` must be a different buffer from `x`".into(),
        ));
    }
    let w_bytes = w.format.matrix_bytes(n_out, n_in) as u64;
    w.buffer.require("weight", w_bytes)?;
    x.require("x", (rows * n_in * 4) as u64)?;
    y.require("y", (rows * n_out / outs * 4) as u64)?;
    if rows == 0 || n_out == 0 {
        return Ok(());
    }
    let kernel = match kernel {
        // On a CPU adapter a barrier is a thread switch: one invocation per output wins.
        Kernel::Auto if rows <= GEMV_MAX_ROWS && gpu.is_cpu_adapter() => Kernel::GemvOutputs,
        Kernel::Auto if rows <= GEMV_MAX_ROWS && n_in.is_multiple_of(GEMV_WIDE_ALIGN) => {
            Kernel::GemvWide
        }
        Kernel::Auto if rows <= GEMV_MAX_ROWS => Kernel::Gemv,
        Kernel::Auto => Kernel::Gemm,
        k => k,
    };
    if kernel == Kernel::GemvWide && !n_in.is_multiple_of(GEMV_WIDE_ALIGN) {
        return Err(GpuError::Validation(format!(
            "the wide GEMV needs n_in to be a multiple of {GEMV_WIDE_ALIGN}, not {n_in}"
        )));
    }
    let gemv = kernel != Kernel::Gemm;
    // A workgroup takes up to MAX_GEMV_ROWS / outs rows; sized to the batch so no
    // invocation loops over rows that are not there.
    let gemv_rows = rows.min(MAX_GEMV_ROWS / outs);
    let blocks = rows.div_ceil(gemv_rows);
    let units = n_out / outs;
    let (entry, groups) = match kernel {
        Kernel::Gemv => ("gemv", units * blocks),
        Kernel::GemvOutputs => (
            "gemv_outputs",
            units.div_ceil(GEMV_WORKGROUP as usize) * blocks,
        ),
        Kernel::GemvWide => (
            "gemv_wide",
            units.div_ceil((GEMV_WIDE_WORKGROUP / GEMV_WIDE_LANES) as usize) * blocks,
        ),
        _ => ("gemm", n_out.div_ceil(GEMM_TILE) * rows.div_ceil(GEMM_TILE)),
    };
    let mut key = PipelineKey::new(Shader::Matmul, entry)
        .with("W_FMT", w.format.shader_code())
        .with("EPI", epilogue as u32);
    if gemv {
        let workgroup = if kernel == Kernel::GemvWide {
            GEMV_WIDE_WORKGROUP
        } else {
            GEMV_WORKGROUP
        };
        key = key
            .with("GEMV_WG", workgroup)
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
    use crate::model::quant::QuantMatrix;
    use crate::ops::WeightFormat;

    const FORMATS: [WeightFormat; 4] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Q8,
        WeightFormat::Q4,
    ];

    fn silu(v: f64) -> f64 {
        v / (1.0 + (-v).exp())
    }

    /// Runs one product on the GPU and checks it against the f64 reference.
    #[allow(clippy::too_many_arguments)]
    fn check(
        gpu: &Gpu,
        kernel: Kernel,
        format: WeightFormat,
        rows: usize,
        n_in: usize,
        n_out: usize,
        epilogue: Epilogue,
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
            WeightFormat::Q8 | WeightFormat::Q4 => {
                let q = QuantMatrix::quantize(format.quant().unwrap(), n_out, n_in, &w).unwrap();
                // The reference sees scale x level, the values the shader computes.
                w = q.dequantize();
                Matrix::from_quant(gpu, "w", &q).unwrap()
            }
        };
        let width = n_out / epilogue.outputs_per_unit();
        let x = test_values(rows * n_in, 2);
        let y0 = test_values(rows * width, 3);
        let xb = gpu.upload(MemoryCategory::Activations, "x", &x).unwrap();
        let yb = gpu.upload(MemoryCategory::Activations, "y", &y0).unwrap();
        let mut enc = gpu.encoder("matmul test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            encode_with(gpu, &mut pass, &matrix, &xb, &yb, rows, epilogue, kernel).unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        let got: Vec<f32> = gpu.read(&yb, rows * width).unwrap();
        let z = matmul_reference(&w, &x, rows, n_in, n_out);
        // The classic bound for a sum of n_in products in f32: n_in ulps of sum |w_i x_i|
        // (plus the accumulated y, which is at most 1).
        let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let scale = matmul_reference(&abs_w, &abs_x, rows, n_in, n_out);
        let tol_z = |k: usize| (n_in as f64 + 2.0) * f32::EPSILON as f64 * (scale[k] + 1.0);
        for r in 0..rows {
            for u in 0..width {
                let k = r * n_out + u * epilogue.outputs_per_unit();
                // |silu'| <= 1.1, so SiLU passes an error on at most 1.1 times.
                let (want, tol) = match epilogue {
                    Epilogue::Store => (z[k], tol_z(k)),
                    Epilogue::Accumulate => (z[k] + y0[r * width + u] as f64, tol_z(k)),
                    Epilogue::Silu => (silu(z[k]), 1.1 * tol_z(k)),
                    Epilogue::SwiGlu => (
                        silu(z[k]) * z[k + 1],
                        1.1 * z[k + 1].abs() * tol_z(k) + silu(z[k]).abs() * tol_z(k + 1),
                    ),
                };
                let g = got[r * width + u] as f64;
                assert!(
                    (g - want).abs() <= tol + 1e-7 * want.abs(),
                    "{kernel:?} {format:?} {rows}x{n_in}->{n_out} {epilogue:?} [{r}][{u}] on {}: {g} vs {want}",
                    gpu.describe()
                );
            }
        }
    }

    #[test]
    fn gemv_and_gemm_match_cpu_on_awkward_sizes() {
        for gpu in test_gpus() {
            for format in FORMATS {
                // Inputs below, at and past a quantized block of 32, with short tail blocks.
                for (rows, n_in, n_out) in [(1, 1, 1), (3, 37, 5), (9, 130, 67), (16, 64, 3)] {
                    check(
                        &gpu,
                        Kernel::Gemv,
                        format,
                        rows,
                        n_in,
                        n_out,
                        Epilogue::Store,
                    );
                    let k = Kernel::GemvOutputs;
                    check(&gpu, k, format, rows, n_in, n_out, Epilogue::Store);
                }
                for (rows, n_in, n_out) in [(1, 1, 1), (37, 19, 70), (65, 33, 129), (17, 64, 64)] {
                    check(
                        &gpu,
                        Kernel::Gemm,
                        format,
                        rows,
                        n_in,
                        n_out,
                        Epilogue::Store,
                    );
                }
            }
            let f16 = WeightFormat::F16;
            check(&gpu, Kernel::Gemv, f16, 5, 41, 9, Epilogue::Accumulate);
            check(
                &gpu,
                Kernel::GemvOutputs,
                f16,
                11,
                70,
                130,
                Epilogue::Accumulate,
            );
            check(
                &gpu,
                Kernel::Gemm,
                WeightFormat::F32,
                37,
                41,
                9,
                Epilogue::Accumulate,
            );
            let q4 = WeightFormat::Q4;
            check(&gpu, Kernel::Gemv, q4, 5, 41, 9, Epilogue::Accumulate);
            check(
                &gpu,
                Kernel::GemvOutputs,
                q4,
                3,
                688,
                7,
                Epilogue::Accumulate,
            );
            check(
                &gpu,
                Kernel::Gemm,
                WeightFormat::Q8,
                37,
                41,
                9,
                Epilogue::Accumulate,
            );
        }
    }

    #[test]
    fn silu_and_swiglu_epilogues_match_cpu() {
        for gpu in test_gpus() {
            for kernel in [Kernel::Gemv, Kernel::GemvOutputs, Kernel::Gemm] {
                // Row counts past one GEMV block (4 rows with two outputs per unit), odd
                // inputs, and units not filling a workgroup or a GEMM tile.
                for (rows, n_in, n_out) in [(1, 7, 2), (6, 33, 38), (13, 64, 130), (66, 20, 70)] {
                    for format in FORMATS {
                        check(&gpu, kernel, format, rows, n_in, n_out, Epilogue::SwiGlu);
                    }
                    check(
                        &gpu,
                        kernel,
                        WeightFormat::F16,
                        rows,
                        n_in,
                        n_out - 1,
                        Epilogue::Silu,
                    );
                }
            }
        }
    }

    #[test]
    fn wide_gemv_matches_cpu_on_whole_blocks() {
        for gpu in test_gpus() {
            let k = Kernel::GemvWide;
            for format in FORMATS {
                // One block; rows past one GEMV block; units not filling a workgroup (8).
                for (rows, n_in, n_out) in [(1, 32, 1), (3, 64, 9), (9, 96, 17), (16, 256, 33)] {
                    check(&gpu, k, format, rows, n_in, n_out, Epilogue::Store);
                }
                check(&gpu, k, format, 5, 160, 18, Epilogue::SwiGlu);
                check(&gpu, k, format, 2, 64, 11, Epilogue::Accumulate);
            }
            check(&gpu, k, WeightFormat::Q4, 6, 128, 38, Epilogue::SwiGlu);
            check(&gpu, k, WeightFormat::F16, 4, 96, 7, Epilogue::Silu);
            // Rows of partial blocks are refused, not misread.
            let w = Matrix::from_f32(&gpu, "w", &[0f32; 33 * 2], 2, 33).unwrap();
            let x = gpu
                .upload(MemoryCategory::Activations, "x", &[0f32; 33])
                .unwrap();
            let y = gpu.storage(MemoryCategory::Activations, "y", 8).unwrap();
            let mut enc = gpu.encoder("matmul test");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let err = encode_with(&gpu, &mut pass, &w, &x, &y, 1, Epilogue::Store, k).unwrap_err();
            assert!(err.to_string().contains("multiple of 32, not 33"), "{err}");
        }
    }

    #[test]
    fn quantized_matrices_fill_whole_vec4s() {
        // gemv_wide reads a quantized buffer, its last scales included, as vec4<u32>s: an
        // odd number of scale words must still end on a whole vector.
        for gpu in test_gpus().into_iter().take(1) {
            for format in [WeightFormat::Q8, WeightFormat::Q4] {
                for (rows, cols) in [(1, 32), (3, 64), (5, 96), (7, 33)] {
                    let w = test_values(rows * cols, 4);
                    let q = QuantMatrix::quantize(format.quant().unwrap(), rows, cols, &w).unwrap();
                    let m = Matrix::from_quant(&gpu, "w", &q).unwrap();
                    let bytes = format.matrix_bytes(rows, cols);
                    assert_eq!(m.buffer.size(), bytes as u64, "{format:?} [{rows}, {cols}]");
                    assert_eq!(bytes % 16, 0, "{format:?} [{rows}, {cols}]: {bytes} bytes");
                    let exact = (q.data.len() + q.scales.len().div_ceil(2)) * 4;
                    assert!(
                        bytes - exact < 16,
                        "{format:?} [{rows}, {cols}]: {bytes} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn interleaved_rows_alternate() {
        let a = [1, 2, 3, 4];
        let b = [5, 6, 7, 8];
        assert_eq!(interleave_rows(&a, &b, 2), [1, 2, 5, 6, 3, 4, 7, 8]);
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
        let err = encode_matmul(&gpu, &mut pass, &w, &x, &y, 1, Epilogue::Store).unwrap_err();
        assert!(err.to_string().contains("`y`"), "{err}");
        assert!(Matrix::from_f32(&gpu, "bad", &[0f32; 5], 2, 3).is_err());
    }
}
