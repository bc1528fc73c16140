//! Rotary position embedding (`shaders/rope.wgsl`), Hugging Face llama "rotate_half"
//! pairing: element i of a head pairs with element i + head_dim / 2.

use bytemuck::{Pod, Zeroable};

use super::Cols;
use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, MemoryCategory, PipelineKey, Record, Shader};

/// cos and sin of the rotation of pair `i` (0 <= i < head_dim / 2) at position `pos`:
/// angle = pos * theta^(-2i / head_dim), computed in f64 and rounded once to f32. The GPU
/// reads a table built from this function and the CPU decoder calls it, so both rotate
/// by exactly the same values.
pub fn rope_cos_sin(pos: usize, i: usize, head_dim: usize, theta: f64) -> (f32, f32) {
    let inv_freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
    let angle = pos as f64 * inv_freq;
    (angle.cos() as f32, angle.sin() as f32)
}

/// Invocations per workgroup; passed to the shader as `ROPE_WG`.
const ROPE_WORKGROUP: u32 = 256;

/// Uniform parameters; must match `Params` in rope.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct RopeParams {
    rows: u32,
    heads: u32,
    half: u32,
    max_positions: u32,
    tiles_x: u32,
    stride: u32,
    offset: u32,
}

/// Bindings of `rope`: params, x, row_table, cos_sin.
const BINDINGS: [Binding; 4] = [Uniform, ReadWrite, ReadOnly, ReadOnly];

/// The (cos, sin) table of every position below `max_positions` for one head size, on
/// the GPU: [max_positions, head_dim / 2] pairs of f32, values from [`rope_cos_sin`].
#[derive(Debug)]
pub struct RopeTable {
    cos_sin: GpuBuffer,
    max_positions: usize,
    head_dim: usize,
}

impl RopeTable {
    /// Builds the table on the host and uploads it (`max_positions * head_dim * 4` bytes,
    /// counted with the weights: it is as fixed as they are). `head_dim` must be even.
    pub fn new(
        gpu: &Gpu,
        max_positions: usize,
        head_dim: usize,
        theta: f64,
    ) -> Result<Self, GpuError> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(GpuError::Validation(format!(
                "rope head_dim must be even and positive, got {head_dim}"
            )));
        }
        if max_positions == 0 {
            return Err(GpuError::Validation(
                "rope table needs at least one position".into(),
            ));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(GpuError::Validation(format!(
                "rope theta must be finite and positive, got {theta}"
            )));
        }
        let half = head_dim / 2;
        if max_positions
            .checked_mul(half)
            .is_none_or(|n| u32::try_from(n).is_err())
        {
            return Err(GpuError::Validation(format!(
                "rope table of {max_positions} positions x {half} pairs does not fit 32-bit indexing"
            )));
        }
        let mut cos_sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for i in 0..half {
                let (c, s) = rope_cos_sin(pos, i, head_dim, theta);
                cos_sin.push([c, s]);
            }
        }
        let cos_sin = gpu.upload(MemoryCategory::Weights, "rope cos/sin table", &cos_sin)?;
        Ok(Self {
            cos_sin,
            max_positions,
            head_dim,
        })
    }

    /// Positions 0..max_positions are in the table.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The (cos, sin) pairs, `[max_positions, head_dim / 2]` vec2 (rope.wgsl's `cos_sin`).
    pub fn table(&self) -> &GpuBuffer {
        &self.cos_sin
    }

    /// Errors if `pos` is past the table. The shader leaves such rows unrotated (it cannot
    /// report an error), so callers that write the row table check positions here first.
    pub fn check_position(&self, pos: usize) -> Result<(), GpuError> {
        if pos >= self.max_positions {
            return Err(GpuError::Validation(format!(
                "rope position {pos} is past the table of {} positions",
                self.max_positions
            )));
        }
        Ok(())
    }
}

/// Records the rotation in place of `x`, `heads` heads of `table.head_dim()` per row (f32
/// [rows, heads * head_dim], or such a column window of a wider matrix), each row at the
/// position in `row_table` (u32 [rows, 2]: sequence, position). Rows at a position past
/// the table are left unchanged; see [`RopeTable::check_position`].
pub fn encode_rope<'a>(
    gpu: &Gpu,
    pass: &mut dyn Record,
    x: impl Into<Cols<'a>>,
    row_table: &GpuBuffer,
    table: &RopeTable,
    rows: usize,
    heads: usize,
) -> Result<(), GpuError> {
    let half = table.head_dim / 2;
    let elems = rows
        .checked_mul(heads)
        .and_then(|n| n.checked_mul(table.head_dim))
        .filter(|&n| u32::try_from(n).is_ok())
        .ok_or_else(|| {
            GpuError::Validation(format!(
                "rope over {rows} rows x {heads} heads x {} does not fit 32-bit indexing",
                table.head_dim
            ))
        })?;
    let pairs = elems / 2;
    let x: Cols = x.into();
    let (stride, offset) = x.layout("rope x", rows, heads * table.head_dim)?;
    let (stride, offset) = (index("rope stride", stride)?, index("rope offset", offset)?);
    let x = x.buffer;
    row_table.require("rope row table", (rows * 2 * 4) as u64)?;
    if x.buffer() == row_table.buffer() {
        return Err(GpuError::Validation(
            "rope: `x` (rotated in place) must be a different buffer from the row table".into(),
        ));
    }
    if pairs == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Rope, "rope").with("ROPE_WG", ROPE_WORKGROUP);
    let pipeline = gpu.pipeline(&key, &BINDINGS)?;
    let grid = gpu.grid("rope", pairs.div_ceil(ROPE_WORKGROUP as usize) as u32)?;
    let params = gpu.uniform(
        "rope params",
        &RopeParams {
            rows: rows as u32,
            heads: heads as u32,
            half: half as u32,
            max_positions: table.max_positions as u32,
            tiles_x: grid.x,
            stride,
            offset,
        },
    );
    gpu.dispatch(
        pass,
        &pipeline,
        &[
            params.buffer(),
            x.buffer(),
            row_table.buffer(),
            table.cos_sin.buffer(),
        ],
        grid,
    );
    Ok(())
}

/// `n` as a u32 shader index, or an error naming it.
fn index(what: &str, n: usize) -> Result<u32, GpuError> {
    u32::try_from(n)
        .map_err(|_| GpuError::Validation(format!("{what} {n} exceeds 32-bit indexing")))
}

/// CPU reference in f64 with the same f32 cos/sin as the GPU ([`rope_cos_sin`]): `x` is
/// [positions.len(), heads * head_dim], row r at position `positions[r]`. Returns as many
/// rows as both `x` and `positions` hold.
pub fn rope_reference(
    x: &[f32],
    positions: &[usize],
    heads: usize,
    head_dim: usize,
    theta: f64,
) -> Vec<f64> {
    if heads == 0 || head_dim == 0 {
        return Vec::new();
    }
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(positions.len() * heads * head_dim);
    for (row, &pos) in x.chunks_exact(heads * head_dim).zip(positions) {
        let cos_sin: Vec<(f64, f64)> = (0..half)
            .map(|i| {
                let (c, s) = rope_cos_sin(pos, i, head_dim, theta);
                (c as f64, s as f64)
            })
            .collect();
        for head in row.chunks_exact(head_dim) {
            let (lo, hi) = head.split_at(half);
            let pairs = || lo.iter().zip(hi).zip(&cos_sin);
            // x'[i] = x[i] c - x[i + half] s;  x'[i + half] = x[i + half] c + x[i] s
            out.extend(pairs().map(|((&a, &b), &(c, s))| a as f64 * c - b as f64 * s));
            out.extend(pairs().map(|((&a, &b), &(c, s))| b as f64 * c + a as f64 * s));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::{test_gpus, test_values};

    /// Rotates `x` on the GPU with row r at `positions[r]` (sequence r % 3).
    fn run(gpu: &Gpu, table: &RopeTable, x: &[f32], positions: &[usize], heads: usize) -> Vec<f32> {
        let rows = positions.len();
        let row_table: Vec<u32> = positions
            .iter()
            .enumerate()
            .flat_map(|(r, &p)| [(r % 3) as u32, p as u32])
            .collect();
        let xb = gpu.upload(MemoryCategory::Activations, "x", x).unwrap();
        let tb = gpu
            .upload(MemoryCategory::Activations, "row table", &row_table)
            .unwrap();
        let mut enc = gpu.encoder("rope test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            encode_rope(gpu, &mut pass, &xb, &tb, table, rows, heads).unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        gpu.read(&xb, x.len()).unwrap()
    }

    /// Each output is a*c -/+ b*s in f32 from exactly the reference's c and s: two
    /// products and a sum (or one fused multiply-add), each rounding by at most half an
    /// ulp of its result, so the error is within eps * (|a c| + |b s|).
    fn check(gpu: &Gpu, got: &[f32], x: &[f32], positions: &[usize], heads: usize, hd: usize) {
        let want = rope_reference(x, positions, heads, hd, THETA);
        let half = hd / 2;
        for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let (r, j) = (k / (heads * hd), k % hd);
            let base = k - j;
            let (a, b) = if j < half {
                (x[base + j], x[base + j + half])
            } else {
                (x[base + j], x[base + j - half])
            };
            let (c, s) = rope_cos_sin(positions[r], j % half, hd, THETA);
            let scale = (a as f64 * c as f64).abs() + (b as f64 * s as f64).abs();
            let tol = f32::EPSILON as f64 * scale;
            assert!(
                (g as f64 - w).abs() <= tol,
                "rope head_dim={hd} heads={heads} pos={} [{k}] on {}: {g} vs {w}",
                positions[r],
                gpu.describe()
            );
        }
    }

    const THETA: f64 = 10000.0;

    #[test]
    fn rope_matches_f64_reference_at_many_positions() {
        for gpu in test_gpus() {
            let max_positions = 4096;
            for (heads, hd) in [(1, 2), (3, 6), (4, 64), (2, 128)] {
                let table = RopeTable::new(&gpu, max_positions, hd, THETA).unwrap();
                // 37 rows: first and last table positions, small and large ones, repeats.
                let positions: Vec<usize> = (0..37)
                    .map(|r| match r {
                        0 => 0,
                        1 => max_positions - 1,
                        _ => (r * r * 113 + r) % max_positions,
                    })
                    .collect();
                let x = test_values(positions.len() * heads * hd, (heads * hd) as u64);
                let got = run(&gpu, &table, &x, &positions, heads);
                check(&gpu, &got, &x, &positions, heads, hd);
            }
        }
    }

    #[test]
    fn rope_leaves_rows_past_the_table_unchanged() {
        for gpu in test_gpus() {
            let (heads, hd) = (2, 8);
            let table = RopeTable::new(&gpu, 16, hd, THETA).unwrap();
            let positions = [3, 16, 15, 1 << 31, 0, u32::MAX as usize, 7];
            let x = test_values(positions.len() * heads * hd, 5);
            let got = run(&gpu, &table, &x, &positions, heads);
            let row = heads * hd;
            for (r, &p) in positions.iter().enumerate() {
                let (g, xr) = (&got[r * row..][..row], &x[r * row..][..row]);
                if table.check_position(p).is_err() {
                    assert_eq!(g, xr, "row {r} at {p} on {}", gpu.describe());
                } else {
                    check(&gpu, g, xr, &[p], heads, hd);
                }
            }
        }
    }

    #[test]
    fn rope_rotates_a_column_window_and_nothing_else() {
        // Rows of 5 heads of 8; heads 1 and 2 rotated (q and k of a fused [q | k | v]
        // row look the same), the rest untouched.
        let (hd, stride, offset, heads) = (8, 40, 8, 2);
        let positions = [0, 5, 9, 2, 11];
        for gpu in test_gpus() {
            let table = RopeTable::new(&gpu, 16, hd, THETA).unwrap();
            let x = test_values(positions.len() * stride, 9);
            let row_table: Vec<u32> = positions.iter().flat_map(|&p| [0, p as u32]).collect();
            let xb = gpu.upload(MemoryCategory::Activations, "x", &x).unwrap();
            let tb = gpu
                .upload(MemoryCategory::Activations, "row table", &row_table)
                .unwrap();
            let mut enc = gpu.encoder("rope window test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                let window = Cols::new(&xb, stride, offset);
                encode_rope(&gpu, &mut pass, window, &tb, &table, positions.len(), heads).unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            let got: Vec<f32> = gpu.read(&xb, x.len()).unwrap();
            let w = heads * hd;
            for (r, &p) in positions.iter().enumerate() {
                let (g, xr) = (&got[r * stride..][..stride], &x[r * stride..][..stride]);
                assert_eq!(g[..offset], xr[..offset], "row {r} before the window");
                assert_eq!(
                    g[offset + w..],
                    xr[offset + w..],
                    "row {r} after the window"
                );
                check(
                    &gpu,
                    &g[offset..offset + w],
                    &xr[offset..offset + w],
                    &[p],
                    heads,
                    hd,
                );
            }
            // A window wider than the row is refused.
            let mut enc = gpu.encoder("rope window test");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let e = encode_rope(
                &gpu,
                &mut pass,
                Cols::new(&xb, stride, 30),
                &tb,
                &table,
                5,
                2,
            );
            assert!(e.unwrap_err().to_string().contains("do not fit rows"));
        }
    }

    #[test]
    fn rope_rejects_bad_tables_and_buffers() {
        let Some(gpu) = test_gpus().into_iter().next() else {
            return;
        };
        for (positions, hd, theta) in [(8, 7, THETA), (8, 0, THETA), (0, 8, THETA), (8, 8, -1.0)] {
            assert!(RopeTable::new(&gpu, positions, hd, theta).is_err());
        }
        let table = RopeTable::new(&gpu, 8, 4, THETA).unwrap();
        assert!(table.check_position(7).is_ok());
        assert!(table.check_position(8).is_err());
        let x = gpu
            .upload(MemoryCategory::Activations, "x", &[0f32; 16])
            .unwrap();
        let rt = gpu
            .upload(MemoryCategory::Activations, "rt", &[0u32; 4])
            .unwrap();
        let mut enc = gpu.encoder("rope test");
        let mut pass = enc.begin_compute_pass(&Default::default());
        let e = encode_rope(&gpu, &mut pass, &x, &rt, &table, 2, 3).unwrap_err();
        assert!(e.to_string().contains("rope x"), "{e}");
        let e = encode_rope(&gpu, &mut pass, &x, &rt, &table, 4, 1).unwrap_err();
        assert!(e.to_string().contains("rope row table"), "{e}");
        let e = encode_rope(&gpu, &mut pass, &x, &x, &table, 1, 1).unwrap_err();
        assert!(e.to_string().contains("different buffer"), "{e}");
    }
}
