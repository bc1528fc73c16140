//! Elementwise kernels of the decoder (`shaders/elementwise.wgsl`): the embedding gather,
//! SwiGLU `silu(gate) * up`, SiLU in place and the residual add in place. All activations
//! are f32; one invocation per output element.

use bytemuck::{Pod, Zeroable};

use super::{Matrix, RowSplit};
use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Record, Shader};

/// Invocations per workgroup; passed to the shader as `ELEMENTWISE_WG`.
const ELEMENTWISE_WORKGROUP: u32 = 256;

/// Uniform parameters; must match `Params` in elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct ElementwiseParams {
    count: u32,
    tiles_x: u32,
    cols: u32,
    vocab: u32,
    first: u32,
    last: u32,
    _pad0: u32,
    _pad1: u32,
}

/// What `embed` reads of its table besides the row width: the part's rows, the token of
/// its row 0, and whether it is the last part (`Params` in elementwise.wgsl).
#[derive(Clone, Copy, Default)]
struct TablePart {
    cols: u32,
    rows: u32,
    first: u32,
    last: bool,
}

/// Bindings of `embed`: params, table, tokens, out.
const EMBED_BINDINGS: [Binding; 4] = [Uniform, ReadOnly, ReadOnly, ReadWrite];
/// Bindings of `swiglu`: params, gate, up, out.
const SWIGLU_BINDINGS: [Binding; 4] = [Uniform, ReadOnly, ReadOnly, ReadWrite];
/// Bindings of `silu_inplace`: params, x.
const SILU_BINDINGS: [Binding; 2] = [Uniform, ReadWrite];
/// Bindings of `add_inplace`: params, x, y.
const ADD_BINDINGS: [Binding; 3] = [Uniform, ReadWrite, ReadOnly];

/// Errors if the written buffer `out` is also bound as `input`: wgpu rejects a buffer
/// bound both read-only and read-write in one dispatch.
fn check_distinct(
    op: &str,
    out: &GpuBuffer,
    input: &GpuBuffer,
    name: &str,
) -> Result<(), GpuError> {
    if out.buffer() == input.buffer() {
        return Err(GpuError::Validation(format!(
            "{op}: the output must be a different buffer from `{name}`"
        )));
    }
    Ok(())
}

/// `count` as a u32 shader index, or an error naming `op`.
fn index_count(op: &str, count: Option<usize>) -> Result<u32, GpuError> {
    count
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| GpuError::Validation(format!("{op} does not fit 32-bit indexing")))
}

/// Records one dispatch of `key`'s entry point over `count` elements (count > 0), one
/// invocation each; `table` is only read by `embed`.
fn dispatch(
    gpu: &Gpu,
    pass: &mut dyn Record,
    key: PipelineKey,
    bindings: &[Binding],
    buffers: &[&GpuBuffer],
    count: u32,
    table: TablePart,
) -> Result<(), GpuError> {
    let key = key.with("ELEMENTWISE_WG", ELEMENTWISE_WORKGROUP);
    let pipeline = gpu.pipeline(&key, bindings)?;
    let grid = gpu.grid(key.entry, count.div_ceil(ELEMENTWISE_WORKGROUP))?;
    let params = gpu.uniform(
        key.entry,
        &ElementwiseParams {
            count,
            tiles_x: grid.x,
            cols: table.cols,
            vocab: table.rows,
            first: table.first,
            last: u32::from(table.last),
            _pad0: 0,
            _pad1: 0,
        },
    );
    let mut all = vec![params.buffer()];
    all.extend(buffers.iter().map(|b| b.buffer()));
    gpu.dispatch(pass, &pipeline, &all, grid);
    Ok(())
}

/// Records `out[r] = table[tokens[r]]` for `rows` rows: `tokens` is u32 `[rows]`, `out` f32
/// `[rows, table.cols]`; `table` is f32, packed f16 or q8 / q4 blocks (scale x level, the
/// CPU's dequantized values), row-major. A token >= `table.rows` gives a row of zeros.
pub fn encode_embed(
    gpu: &Gpu,
    pass: &mut dyn Record,
    table: &Matrix,
    tokens: &GpuBuffer,
    out: &GpuBuffer,
    rows: usize,
) -> Result<(), GpuError> {
    embed_part(gpu, pass, table, 0, true, tokens, out, rows)
}

/// [`encode_embed`] from a table split by rows: one dispatch per part, each writing the
/// rows of its own tokens (the last part also the zeros of tokens past the table).
pub fn encode_embed_split(
    gpu: &Gpu,
    pass: &mut dyn Record,
    table: &RowSplit,
    tokens: &GpuBuffer,
    out: &GpuBuffer,
    rows: usize,
) -> Result<(), GpuError> {
    let last = table.parts.len().saturating_sub(1);
    for (i, (first, part)) in table.parts.iter().enumerate() {
        embed_part(gpu, pass, part, *first, i == last, tokens, out, rows)?;
    }
    Ok(())
}

/// The embedding gather from `table`, the rows of tokens `first ..` of a larger table.
#[allow(clippy::too_many_arguments)]
fn embed_part(
    gpu: &Gpu,
    pass: &mut dyn Record,
    table: &Matrix,
    first: usize,
    last: bool,
    tokens: &GpuBuffer,
    out: &GpuBuffer,
    rows: usize,
) -> Result<(), GpuError> {
    let cols = table.cols;
    let count = index_count(
        &format!("embedding of {rows} rows x {cols}"),
        rows.checked_mul(cols),
    )? as usize;
    index_count(
        &format!("embedding table [{}, {cols}]", table.rows),
        table
            .rows
            .checked_mul(cols.next_multiple_of(crate::blocks::BLOCK)),
    )?;
    index_count(
        &format!("embedding table rows {first}.."),
        first.checked_add(table.rows),
    )?;
    if table.transposed {
        return Err(GpuError::Validation(
            "the embedding table must be stored row-major, not transposed".into(),
        ));
    }
    let table_bytes = table.format.matrix_bytes(table.rows, cols);
    table
        .buffer
        .require("embedding table", table_bytes as u64)?;
    tokens.require("embedding tokens", (rows * 4) as u64)?;
    out.require("embedding out", (count * 4) as u64)?;
    check_distinct("embedding", out, &table.buffer, "table")?;
    check_distinct("embedding", out, tokens, "tokens")?;
    if count == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Elementwise, "embed")
        .with("EMBED_FMT", table.format.shader_code());
    let part = TablePart {
        cols: cols as u32,
        rows: table.rows as u32,
        first: first as u32,
        last,
    };
    let buffers = [&table.buffer, tokens, out];
    dispatch(
        gpu,
        pass,
        key,
        &EMBED_BINDINGS,
        &buffers,
        count as u32,
        part,
    )
}

/// Records `out[r] = src[rows[r]]` for `rows` rows of `cols` f32 values: `src` is f32
/// `[src_rows, cols]`, `rows` u32 `[rows]`, `out` f32 `[rows, cols]`; an index >= `src_rows`
/// gives a row of zeros. The embedding gather's kernel (`embed` in elementwise.wgsl) over
/// an f32 table: how the decoder picks the rows its LM head reads.
#[allow(clippy::too_many_arguments)]
pub fn encode_gather_rows(
    gpu: &Gpu,
    pass: &mut dyn Record,
    src: &GpuBuffer,
    src_rows: usize,
    cols: usize,
    indices: &GpuBuffer,
    out: &GpuBuffer,
    rows: usize,
) -> Result<(), GpuError> {
    let count = index_count(
        &format!("gather of {rows} rows x {cols}"),
        rows.checked_mul(cols),
    )? as usize;
    let src_len = index_count(
        &format!("gather source [{src_rows}, {cols}]"),
        src_rows.checked_mul(cols),
    )? as usize;
    src.require("gather source", (src_len * 4) as u64)?;
    indices.require("gather rows", (rows * 4) as u64)?;
    out.require("gather out", (count * 4) as u64)?;
    check_distinct("gather", out, src, "source")?;
    check_distinct("gather", out, indices, "rows")?;
    if count == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Elementwise, "embed")
        .with("EMBED_FMT", super::WeightFormat::F32.shader_code());
    let table = TablePart {
        cols: cols as u32,
        rows: src_rows as u32,
        first: 0,
        last: true,
    };
    let buffers = [src, indices, out];
    dispatch(
        gpu,
        pass,
        key,
        &EMBED_BINDINGS,
        &buffers,
        count as u32,
        table,
    )
}

/// Records `out = silu(gate) * up` over `count` f32 elements; `out` must differ from both
/// inputs.
pub fn encode_swiglu(
    gpu: &Gpu,
    pass: &mut dyn Record,
    gate: &GpuBuffer,
    up: &GpuBuffer,
    out: &GpuBuffer,
    count: usize,
) -> Result<(), GpuError> {
    let n = index_count(&format!("swiglu of {count} elements"), Some(count))?;
    gate.require("swiglu gate", (count * 4) as u64)?;
    up.require("swiglu up", (count * 4) as u64)?;
    out.require("swiglu out", (count * 4) as u64)?;
    check_distinct("swiglu", out, gate, "gate")?;
    check_distinct("swiglu", out, up, "up")?;
    if n == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Elementwise, "swiglu");
    dispatch(
        gpu,
        pass,
        key,
        &SWIGLU_BINDINGS,
        &[gate, up, out],
        n,
        TablePart::default(),
    )
}

/// Records `x = silu(x)` in place over `count` f32 elements.
pub fn encode_silu(
    gpu: &Gpu,
    pass: &mut dyn Record,
    x: &GpuBuffer,
    count: usize,
) -> Result<(), GpuError> {
    let n = index_count(&format!("silu of {count} elements"), Some(count))?;
    x.require("silu x", (count * 4) as u64)?;
    if n == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Elementwise, "silu_inplace");
    dispatch(
        gpu,
        pass,
        key,
        &SILU_BINDINGS,
        &[x],
        n,
        TablePart::default(),
    )
}

/// Records `x += y` in place over `count` f32 elements; `y` must be a different buffer.
pub fn encode_add(
    gpu: &Gpu,
    pass: &mut dyn Record,
    x: &GpuBuffer,
    y: &GpuBuffer,
    count: usize,
) -> Result<(), GpuError> {
    let n = index_count(&format!("add of {count} elements"), Some(count))?;
    x.require("add x", (count * 4) as u64)?;
    y.require("add y", (count * 4) as u64)?;
    check_distinct("add", x, y, "y")?;
    if n == 0 {
        return Ok(());
    }
    let key = PipelineKey::new(Shader::Elementwise, "add_inplace");
    dispatch(
        gpu,
        pass,
        key,
        &ADD_BINDINGS,
        &[x, y],
        n,
        TablePart::default(),
    )
}

/// CPU reference of the gather: `table` is [vocab, cols] (f16 tables converted to f32,
/// exactly), one output row of `cols` per token, zeros for a token >= vocab.
pub fn embed_reference(table: &[f32], cols: usize, tokens: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(tokens.len() * cols);
    for &t in tokens {
        let start = (t as usize).checked_mul(cols);
        match start.and_then(|s| table.get(s..s.checked_add(cols)?)) {
            Some(row) => out.extend_from_slice(row),
            None => out.extend(std::iter::repeat_n(0.0, cols)),
        }
    }
    out
}

/// silu(v) = v / (1 + exp(-v)) in f64, where exp(-v) cannot overflow for an f32 `v`.
fn silu_f64(v: f32) -> f64 {
    let v = v as f64;
    v / (1.0 + (-v).exp())
}

/// CPU reference of [`encode_swiglu`] in f64.
pub fn swiglu_reference(gate: &[f32], up: &[f32]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| silu_f64(g) * u as f64)
        .collect()
}

/// CPU reference of [`encode_silu`] in f64.
pub fn silu_reference(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| silu_f64(v)).collect()
}

/// CPU reference of [`encode_add`] in f64.
pub fn add_reference(x: &[f32], y: &[f32]) -> Vec<f64> {
    x.iter()
        .zip(y)
        .map(|(&a, &b)| a as f64 + b as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::MemoryCategory;
    use crate::gpu::testing::{test_gpus, test_values};

    /// Inputs for silu: the extremes, signed zeros, then values in [-12, 12).
    fn silu_inputs(n: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![
            -100.0, 100.0, -1000.0, 1000.0, -20.0, 20.0, 0.0, -0.0, 1e-30,
        ];
        v.extend(
            test_values(n.saturating_sub(v.len()), seed)
                .iter()
                .map(|u| u * 12.0),
        );
        v.truncate(n);
        v
    }

    /// Relative error bound of silu(v) in f32 from the WGSL accuracy rules: exp(-|v|)
    /// within 3 + 2|v| ulp, the division 2.5 ulp, the add and the product half an ulp
    /// each. The exp error only reaches the result in proportion to the sigmoid's
    /// sensitivity, but the bound does not need to be tight.
    fn silu_ulps(v: f32) -> f64 {
        3.0 + 2.0 * v.abs() as f64 + 2.5 + 0.5 + 0.5
    }

    /// |got - want| within `ulps(k)` ulps of `want`, or below the smallest normal f32
    /// (the GPU may flush subnormals).
    fn assert_close(gpu: &Gpu, what: &str, got: &[f32], want: &[f64], ulps: impl Fn(usize) -> f64) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
            let tol = ulps(k) * f32::EPSILON as f64 * w.abs() + f32::MIN_POSITIVE as f64;
            assert!(
                g.is_finite() && (g as f64 - w).abs() <= tol,
                "{what} [{k}] on {}: {g} vs {w}",
                gpu.describe()
            );
        }
    }

    /// Runs `record` in one pass and reads `count` f32 of `out`.
    fn run(
        gpu: &Gpu,
        out: &GpuBuffer,
        count: usize,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>) -> Result<(), GpuError>,
    ) -> Vec<f32> {
        let mut enc = gpu.encoder("elementwise test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            record(&mut pass).unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        gpu.read(out, count).unwrap()
    }

    fn upload(gpu: &Gpu, label: &str, data: &[f32]) -> GpuBuffer {
        gpu.upload(MemoryCategory::Activations, label, data)
            .unwrap()
    }

    /// Element counts: 1, below, just under, and not a multiple of the workgroup size.
    const COUNTS: [usize; 4] = [1, 37, 255, 1001];
    /// More workgroups than one grid dimension holds (65535), so the grid is 2-D.
    const GRID_COUNT: usize = 65535 * ELEMENTWISE_WORKGROUP as usize + 3;

    #[test]
    fn embed_gathers_f32_and_f16_rows_and_zeros_unknown_tokens() {
        for gpu in test_gpus() {
            for (vocab, cols) in [(1, 1), (5, 3), (256, 37), (3, 300)] {
                // f16-representable values (multiples of 1/16 below 16), so both formats
                // hold the same numbers and the gather must be exact.
                let values: Vec<f32> = (0..vocab * cols)
                    .map(|i| ((i * 7919) % 511) as f32 / 16.0 - 15.9375)
                    .collect();
                let bits: Vec<u16> = values
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect();
                // 37 rows including tokens past the table (vocab, and the largest u32).
                let tokens: Vec<u32> = (0..37u32)
                    .map(|r| match r {
                        3 => vocab as u32,
                        11 => u32::MAX,
                        _ => (r * 31 + 7) % vocab as u32,
                    })
                    .collect();
                let want = embed_reference(&values, cols, &tokens);
                let tb = gpu
                    .upload(MemoryCategory::Activations, "tokens", &tokens)
                    .unwrap();
                for table in [
                    Matrix::from_f32(&gpu, "embed f32", &values, vocab, cols).unwrap(),
                    Matrix::from_f16_bits(&gpu, "embed f16", &bits, vocab, cols).unwrap(),
                ] {
                    let out = upload(&gpu, "out", &vec![f32::NAN; tokens.len() * cols]);
                    let got = run(&gpu, &out, want.len(), |pass| {
                        encode_embed(&gpu, pass, &table, &tb, &out, tokens.len())
                    });
                    assert_eq!(
                        got,
                        want,
                        "{:?} [{vocab}, {cols}] on {}",
                        table.format,
                        gpu.describe()
                    );
                }
            }
        }
    }

    #[test]
    fn embed_gathers_q8_and_q4_rows_and_split_tables_bit_for_bit() {
        use crate::blocks::{QuantFormat, QuantMatrix};
        for gpu in test_gpus() {
            // 70 columns: a partial last block; 9 rows split 4 + 4 + 1.
            let (vocab, cols) = (9, 70);
            let values: Vec<f32> = test_values(vocab * cols, 8)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let tokens: Vec<u32> = vec![8, 0, 4, 3, 9, 5, 100];
            let tb = gpu
                .upload(MemoryCategory::Activations, "tokens", &tokens)
                .unwrap();
            for format in [QuantFormat::Q8, QuantFormat::Q4] {
                let q = QuantMatrix::quantize(format, vocab, cols, &values).unwrap();
                let want = q.dequantize();
                let whole = Matrix::from_quant(&gpu, "table", &q).unwrap();
                let split = RowSplit::upload(vocab, cols, 4, |first, n| {
                    Matrix::from_quant(&gpu, "part", &q.rows_slice(first, n))
                })
                .unwrap();
                assert_eq!(split.parts.len(), 3);
                for parts in [false, true] {
                    let out = gpu
                        .storage(
                            MemoryCategory::Activations,
                            "out",
                            (tokens.len() * cols * 4) as u64,
                        )
                        .unwrap();
                    let mut enc = gpu.encoder("embed test");
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        let n = tokens.len();
                        if parts {
                            encode_embed_split(&gpu, &mut pass, &split, &tb, &out, n).unwrap();
                        } else {
                            encode_embed(&gpu, &mut pass, &whole, &tb, &out, n).unwrap();
                        }
                    }
                    gpu.submit_and_wait(enc).unwrap();
                    let got: Vec<f32> = gpu.read(&out, tokens.len() * cols).unwrap();
                    for (r, &t) in tokens.iter().enumerate() {
                        let row = &got[r * cols..][..cols];
                        let want = match want.get(t as usize * cols..(t as usize + 1) * cols) {
                            Some(w) => w.to_vec(),
                            None => vec![0.0; cols],
                        };
                        let same = row
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{format:?} split {parts}: token {t} on {}",
                            gpu.describe()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gather_rows_copies_the_listed_rows_bit_for_bit() {
        for gpu in test_gpus() {
            let (src_rows, cols) = (7, 37);
            let src: Vec<f32> = test_values(src_rows * cols, 3);
            // Any order, repeats, and an index past the source (a row of zeros).
            let idx: Vec<u32> = vec![6, 0, 3, 3, 9];
            let up = |label: &str, data: &[u32]| {
                gpu.upload(MemoryCategory::Activations, label, data)
                    .unwrap()
            };
            let s = gpu
                .upload(MemoryCategory::Activations, "src", &src)
                .unwrap();
            let ib = up("rows", &idx);
            let out = gpu
                .storage(
                    MemoryCategory::Activations,
                    "out",
                    (idx.len() * cols * 4) as u64,
                )
                .unwrap();
            let mut enc = gpu.encoder("gather test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                encode_gather_rows(&gpu, &mut pass, &s, src_rows, cols, &ib, &out, idx.len())
                    .unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            let got: Vec<f32> = gpu.read(&out, idx.len() * cols).unwrap();
            for (r, &i) in idx.iter().enumerate() {
                let row = &got[r * cols..][..cols];
                let want: Vec<f32> = match src.get(i as usize * cols..(i as usize + 1) * cols) {
                    Some(w) => w.to_vec(),
                    None => vec![0.0; cols],
                };
                let same = row
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "row {r} (source {i}) on {}", gpu.describe());
            }
        }
    }

    #[test]
    fn swiglu_and_silu_match_f64_reference_without_overflow() {
        for gpu in test_gpus() {
            for count in COUNTS {
                let gate = silu_inputs(count, count as u64);
                let up: Vec<f32> = test_values(count, count as u64 + 1)
                    .iter()
                    .map(|v| v * 3.0)
                    .collect();
                let (g, u) = (upload(&gpu, "gate", &gate), upload(&gpu, "up", &up));
                let out = upload(&gpu, "out", &vec![f32::NAN; count + 1]);
                let got = run(&gpu, &out, count + 1, |pass| {
                    encode_swiglu(&gpu, pass, &g, &u, &out, count)
                });
                assert!(got[count].is_nan(), "swiglu wrote past {count}");
                let ulps = |k: usize| silu_ulps(gate[k]) + 0.5;
                let want = swiglu_reference(&gate, &up);
                assert_close(&gpu, "swiglu", &got[..count], &want, ulps);

                let got = run(&gpu, &g, count, |pass| encode_silu(&gpu, pass, &g, count));
                let ulps = |k: usize| silu_ulps(gate[k]);
                assert_close(&gpu, "silu", &got, &silu_reference(&gate), ulps);
            }
        }
    }

    #[test]
    fn add_matches_f64_reference() {
        for gpu in test_gpus() {
            for count in COUNTS.into_iter().chain([GRID_COUNT]) {
                let x: Vec<f32> = test_values(count + 1, count as u64)
                    .iter()
                    .map(|v| v * 1e3)
                    .collect();
                let y = test_values(count, count as u64 + 9);
                let (xb, yb) = (upload(&gpu, "x", &x), upload(&gpu, "y", &y));
                let got = run(&gpu, &xb, count + 1, |pass| {
                    encode_add(&gpu, pass, &xb, &yb, count)
                });
                assert_eq!(got[count], x[count], "add wrote past {count}");
                // One f32 rounding of the exact sum: half an ulp.
                let want = add_reference(&x, &y);
                assert_close(&gpu, "add", &got[..count], &want, |_| 0.5);
            }
        }
    }

    #[test]
    fn elementwise_rejects_short_and_aliased_buffers() {
        let Some(gpu) = test_gpus().into_iter().next() else {
            return;
        };
        let a = upload(&gpu, "a", &[0.0; 8]);
        let b = upload(&gpu, "b", &[0.0; 4]);
        let tokens = gpu
            .upload(MemoryCategory::Activations, "tokens", &[0u32; 2])
            .unwrap();
        let table = Matrix::from_f16_bits(&gpu, "t", &[0; 6], 2, 3).unwrap();
        let mut enc = gpu.encoder("elementwise test");
        let mut pass = enc.begin_compute_pass(&Default::default());
        let msg = |r: Result<(), GpuError>| r.unwrap_err().to_string();
        let e = msg(encode_swiglu(&gpu, &mut pass, &a, &b, &a, 4));
        assert!(e.contains("`gate`"), "{e}");
        let e = msg(encode_swiglu(&gpu, &mut pass, &a, &b, &b, 8));
        assert!(e.contains("swiglu up"), "{e}");
        let e = msg(encode_silu(&gpu, &mut pass, &b, 5));
        assert!(e.contains("silu x"), "{e}");
        let e = msg(encode_add(&gpu, &mut pass, &a, &a, 4));
        assert!(e.contains("`y`"), "{e}");
        let e = msg(encode_add(&gpu, &mut pass, &a, &b, 8));
        assert!(e.contains("add y"), "{e}");
        let e = msg(encode_embed(&gpu, &mut pass, &table, &tokens, &b, 2));
        assert!(e.contains("embedding out"), "{e}");
        let e = msg(encode_embed(&gpu, &mut pass, &table, &tokens, &a, 3));
        assert!(e.contains("embedding tokens"), "{e}");
    }
}
