//! RMSNorm (`shaders/norm.wgsl`): `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight` over
//! rows of width d, one workgroup per row.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Record, Shader};

/// Invocations per workgroup on a GPU; passed to the shader as `NORM_WG`.
const NORM_WORKGROUP: u32 = 256;
/// The same on lavapipe and llvmpipe ([`Gpu::favours_registers`]): one SIMD width (8 f32s
/// in 256 bits). A CPU adapter runs a workgroup's SIMD slices one after another on one
/// thread and pays for each barrier in every slice, so 256 invocations were 32 slices and
/// two barriers for a row of 256 values: prefill's RMSNorm took 0.24-0.36x the time with
/// 8 (the shipped Hadamard model's 120-token prompt, 4 x 1,015 tokens at d_model 256; 32
/// invocations 0.33x, 64 0.38x; `walsh profile`, builds alternating).
const CPU_NORM_WORKGROUP: u32 = 8;
/// Size of the shader's `partial` array; must match `MAX_WG` in norm.wgsl.
const MAX_NORM_WORKGROUP: u32 = 256;
const _: () = assert!(NORM_WORKGROUP <= MAX_NORM_WORKGROUP);
const _: () = assert!(CPU_NORM_WORKGROUP <= MAX_NORM_WORKGROUP);

/// The invocations of a workgroup (a row) on `gpu`: each sums the squares of every
/// workgroup-th value of the row, then the partial sums are added in two rounds.
fn norm_workgroup(gpu: &Gpu) -> u32 {
    if gpu.favours_registers() {
        CPU_NORM_WORKGROUP
    } else {
        NORM_WORKGROUP
    }
}

/// Widest row supported: the error bound of the f32 sum of squares is tested up to here.
pub const MAX_NORM_WIDTH: usize = 32768;

/// Uniform parameters; must match `Params` in norm.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    d: u32,
    tiles_x: u32,
    eps: f32,
}

/// Bindings of `rmsnorm`: params, x, weight, out.
const BINDINGS: [Binding; 4] = [Uniform, ReadOnly, ReadOnly, ReadWrite];

/// Records `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight` for `rows` rows of width `d`
/// (1 <= d <= [`MAX_NORM_WIDTH`]): `x` and `out` are f32 [rows, d] and must be distinct
/// buffers, `weight` is f32 `[d]`. With `eps` = 0 an all-zero row gives NaN.
#[allow(clippy::too_many_arguments)]
pub fn encode_rmsnorm(
    gpu: &Gpu,
    pass: &mut dyn Record,
    x: &GpuBuffer,
    weight: &GpuBuffer,
    out: &GpuBuffer,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<(), GpuError> {
    if d == 0 || d > MAX_NORM_WIDTH {
        return Err(GpuError::Validation(format!(
            "rmsnorm width {d} is outside the supported 1..={MAX_NORM_WIDTH}"
        )));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(GpuError::Validation(format!(
            "rmsnorm eps must be finite and non-negative, got {eps}"
        )));
    }
    if out.buffer() == x.buffer() || out.buffer() == weight.buffer() {
        return Err(GpuError::Validation(
            "rmsnorm output must be a different buffer from its input `x` and `weight`".into(),
        ));
    }
    let elems = rows
        .checked_mul(d)
        .filter(|&n| u32::try_from(n).is_ok())
        .ok_or_else(|| {
            GpuError::Validation(format!(
                "rmsnorm of {rows} rows x {d} does not fit 32-bit indexing"
            ))
        })?;
    x.require("rmsnorm x", (elems * 4) as u64)?;
    weight.require("rmsnorm weight", (d * 4) as u64)?;
    out.require("rmsnorm out", (elems * 4) as u64)?;
    if rows == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Norm, "rmsnorm").with("NORM_WG", norm_workgroup(gpu));
    let pipeline = gpu.pipeline(&key, &BINDINGS)?;
    let grid = gpu.grid("rmsnorm", rows as u32)?;
    let params = gpu.uniform(
        "rmsnorm params",
        &NormParams {
            rows: rows as u32,
            d: d as u32,
            tiles_x: grid.x,
            eps,
        },
    );
    gpu.dispatch(
        pass,
        &pipeline,
        &[params.buffer(), x.buffer(), weight.buffer(), out.buffer()],
        grid,
    );
    Ok(())
}

/// CPU reference in f64: `x` is [rows, d], `weight` `[d]`; returns [rows, d] (fewer rows if
/// `x` holds fewer).
pub fn rmsnorm_reference(x: &[f32], weight: &[f32], rows: usize, d: usize, eps: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * d);
    for row in x.chunks_exact(d.max(1)).take(rows) {
        let mean_sq = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        let inv_rms = 1.0 / (mean_sq + eps).sqrt();
        out.extend(
            row.iter()
                .zip(weight)
                .map(|(&v, &w)| v as f64 * inv_rms * w as f64),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::MemoryCategory;
    use crate::gpu::testing::{test_gpus, test_values};

    /// Partial sums one invocation adds per reduction round; must match `FAN` in norm.wgsl.
    const NORM_FAN: usize = 16;

    fn run(gpu: &Gpu, x: &[f32], w: &[f32], rows: usize, d: usize, eps: f32) -> Vec<f32> {
        let xb = gpu.upload(MemoryCategory::Activations, "x", x).unwrap();
        let wb = gpu.upload(MemoryCategory::Weights, "w", w).unwrap();
        // One spare row of sentinels: nothing past rows * d may be written.
        let ob = gpu
            .upload(
                MemoryCategory::Activations,
                "out",
                &vec![f32::MAX; (rows + 1) * d],
            )
            .unwrap();
        let mut enc = gpu.encoder("rmsnorm test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            encode_rmsnorm(gpu, &mut pass, &xb, &wb, &ob, rows, d, eps).unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        let out: Vec<f32> = gpu.read(&ob, (rows + 1) * d).unwrap();
        assert!(
            out[rows * d..].iter().all(|&v| v == f32::MAX),
            "rmsnorm wrote past its rows on {}",
            gpu.describe()
        );
        out[..rows * d].to_vec()
    }

    /// Relative error bound of one output. The sum of squares adds non-negative terms in
    /// f32 along a path of ceil(d / NORM_WG) strided terms plus two rounds of at most FAN
    /// partials, each add contributing at most one unit roundoff of the total; the mean
    /// divides (2.5 ulp in WGSL), eps is added, inverseSqrt (2 ulp) halves the relative
    /// error of its argument, and two products round once each.
    fn relative_tolerance(d: usize, workgroup: u32) -> f64 {
        let adds = d.div_ceil(workgroup as usize) + 2 * NORM_FAN;
        let sum_ulps = adds as f64 / 2.0;
        let ulps = (sum_ulps + 2.5 + 1.0) / 2.0 + 2.0 + 2.0;
        2.0 * ulps * f32::EPSILON as f64
    }

    fn check(gpu: &Gpu, rows: usize, d: usize, eps: f32, scale: f32) {
        // Deterministic values in [-scale, scale), different in every row.
        let x: Vec<f32> = test_values(rows * d, (rows * 7 + d) as u64)
            .iter()
            .map(|v| v * scale)
            .collect();
        let w: Vec<f32> = test_values(d, d as u64 + 1)
            .iter()
            .map(|v| v * 2.0)
            .collect();
        let got = run(gpu, &x, &w, rows, d, eps);
        let want = rmsnorm_reference(&x, &w, rows, d, eps as f64);
        let rel = relative_tolerance(d, norm_workgroup(gpu));
        for (k, (&g, &r)) in got.iter().zip(&want).enumerate() {
            let err = (g as f64 - r).abs();
            assert!(
                err <= rel * r.abs() + f32::MIN_POSITIVE as f64,
                "rmsnorm rows={rows} d={d} eps={eps} [{k}] on {}: {g} vs {r} (error {err:e})",
                gpu.describe()
            );
        }
    }

    #[test]
    fn rmsnorm_matches_f64_reference_on_awkward_sizes() {
        for gpu in test_gpus() {
            // 1; odd widths; widths below, at, and not a multiple of the workgroup; the
            // widest supported with few rows; row counts that divide nothing; more rows
            // than one grid dimension holds (65535 workgroups), so the grid is 2-D.
            for (rows, d) in [
                (1, 1),
                (37, 1),
                (3, 7),
                (37, 33),
                (5, 255),
                (2, 256),
                (4, 257),
                (3, 1000),
                (2, 4099),
                (1, MAX_NORM_WIDTH),
                (2, MAX_NORM_WIDTH),
                (65537, 3),
            ] {
                check(&gpu, rows, d, 1e-5, 1.0);
            }
        }
    }

    #[test]
    fn rmsnorm_adds_eps_inside_the_root() {
        for gpu in test_gpus() {
            // mean(x^2) ~ 1e-6 / 3 is below eps: leaving eps out, or adding it outside the
            // root, changes the output by far more than the tolerance.
            check(&gpu, 5, 64, 1e-5, 1e-3);
            // eps keeps an all-zero row finite (without it, 0 * inverseSqrt(0) is NaN).
            let got = run(&gpu, &[0.0; 8], &[1.0; 8], 1, 8, 1e-6);
            assert!(got.iter().all(|&v| v == 0.0), "{got:?}");
        }
    }

    #[test]
    fn rmsnorm_rejects_bad_shapes_and_buffers() {
        let Some(gpu) = test_gpus().into_iter().next() else {
            return;
        };
        let x = gpu
            .upload(MemoryCategory::Activations, "x", &[1f32; 12])
            .unwrap();
        let w = gpu
            .upload(MemoryCategory::Weights, "w", &[1f32; 4])
            .unwrap();
        let out = gpu.storage(MemoryCategory::Activations, "out", 48).unwrap();
        let mut enc = gpu.encoder("rmsnorm test");
        let mut pass = enc.begin_compute_pass(&Default::default());
        // (output, rows, width, eps) and what the error names.
        let cases = [
            (&out, 4, 4, 1e-5, "rmsnorm x"),
            (&out, 2, 6, 1e-5, "rmsnorm weight"),
            (&x, 3, 4, 1e-5, "different buffer"),
            (&out, 1, 0, 1e-5, "width 0"),
            (&out, 1, MAX_NORM_WIDTH + 1, 1e-5, "outside"),
            (&out, 3, 4, f32::NAN, "eps"),
        ];
        for (y, rows, n, eps, names) in cases {
            let e = encode_rmsnorm(&gpu, &mut pass, &x, &w, y, rows, n, eps).unwrap_err();
            assert!(e.to_string().contains(names), "{e}");
        }
    }
}
