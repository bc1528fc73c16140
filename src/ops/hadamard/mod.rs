//! Normalized Walsh–Hadamard transform along the last dimension of a batch of rows.
//! Shaders: `shaders/hadamard.wgsl` (+ `hadamard_shared.wgsl` / `hadamard_subgroup.wgsl`).
//!
//! - [`Hadamard::encode`]: the fast kernel, one dispatch for rows that fit in workgroup
//!   memory (n <= 4096), two for longer rows; optional fused epilogue
//!   `out = resid + gamma * H(x) / sqrt(n) + beta`.
//! - [`Hadamard::encode_naive`]: one dispatch per butterfly stage; the baseline for
//!   benchmarks and an independent check of the fast kernel.
//! - [`cpu`]: the scalar reference, the dense matrix and the size rules.

pub mod construct;
pub mod cpu;
#[cfg(test)]
mod tests;

use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

pub use cpu::{UnsupportedSize, WhtSize};

use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, MemoryCategory, PipelineKey, Record, Shader};

/// f32s of workgroup memory a tile may use; hadamard.wgsl's `TILE` is the tile a
/// pipeline's constants make (LB x M x P x LS), which the plans keep within this.
pub const TILE_ELEMS: usize = 4096;
/// Register values per invocation at most; must match `MAX_V` in hadamard.wgsl.
pub const MAX_VALUES_PER_INVOCATION: usize = 16;
/// Invocations per workgroup at most (the WebGPU default limit).
const MAX_WORKGROUP: usize = 256;
/// Workgroup size of the naive kernels; passed as `NAIVE_WG`.
const NAIVE_WORKGROUP: u32 = 64;

/// The binding slots of every hadamard.wgsl entry point, in order:
/// params, src, dst, resid, gamma, beta, hm_signs.
const BINDINGS: [Binding; 7] = [
    Uniform, ReadOnly, ReadWrite, ReadOnly, ReadOnly, ReadOnly, ReadOnly,
];

/// Uniform parameters; must match `Params` in hadamard.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct WhtParams {
    lines: u32,
    tiles_x: u32,
    scale: f32,
    bit: u32,
}

/// Errors of the WHT kernels.
#[derive(Debug, thiserror::Error)]
pub enum WhtError {
    #[error(transparent)]
    Size(#[from] UnsupportedSize),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(
        "the by-rows WHT kernel takes rows of at most {max} values, not {n} (longer rows \
         gave wrong results on llvmpipe, which bounds shader loops): use the tiled kernel"
    )]
    RowTooLong { n: usize, max: usize },
    #[error("{what} has length {found} but the transform needs {expected}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// The output is also bound as one of the buffers the transform reads: wgpu refuses a
    /// buffer bound both read-only and read-write in one dispatch (and the naive kernel's
    /// copy from itself), so the whole submission would fail validation.
    #[error("the WHT output must be a buffer of its own, not also the {what}")]
    Aliased { what: &'static str },
}

/// Batches up to this many rows take [`WhtPath::Rows`] under `Auto` on CPU adapters
/// (the GEMV's bound too, [`crate::ops::matmul::GEMV_MAX_ROWS`]).
const ROWS_PATH_MAX_ROWS: usize = crate::ops::matmul::GEMV_MAX_ROWS;

/// On SwiftShader batches of at least this many rows take [`WhtPath::Rows`] under `Auto`
/// too: enough rows, one an invocation, to keep its threads busy. The kernel suite's
/// `wht_rows` against `wht_fast`, n = 256, 4096 rows: Chromium's WebGPU 50 against 557
/// ms, SwiftShader natively 59 against 143 (2.4-2.7x up to n = 4096 there); lavapipe 25
/// against 13.5, so there only decode-sized batches take it. Natively on SwiftShader 32
/// and 64 rows still ran faster tiled (0.72-0.78 against 0.97-1.05 ms; 1.29-1.36
/// against 1.43-1.82), 128 not (3.4-3.9 against 2.0-2.1).
const ROWS_PATH_SWIFTSHADER_MIN_ROWS: usize = 128;

/// Whether `Auto` runs `rows` rows of `size` on the per-row kernel, on an adapter that is
/// (a CPU adapter, SwiftShader).
fn auto_takes_rows((cpu, swiftshader): (bool, bool), rows: usize, size: WhtSize) -> bool {
    cpu && size.m == 1
        && size.n <= TILE_ELEMS
        && (rows <= ROWS_PATH_MAX_ROWS || (swiftshader && rows >= ROWS_PATH_SWIFTSHADER_MIN_ROWS))
}

/// Which implementation of the cross-invocation stages the fast kernel uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhtPath {
    /// Subgroup shuffles where the device has SUBGROUP, workgroup memory otherwise.
    #[default]
    Auto,
    /// Workgroup memory only (what the browser and GL get).
    Shared,
    /// Subgroup shuffles (on passes whose workgroup is whole subgroups and one column
    /// wide; workgroup memory on the others); an error on a device without SUBGROUP.
    Subgroup,
    /// One invocation per row, no workgroup memory or barrier (`wht_rows`): what `Auto`
    /// picks on CPU adapters for decode-sized batches of powers of two. Rows of at most
    /// 4096 values.
    Rows,
}

/// The optional epilogue the fast kernel fuses into its store:
/// `out = resid + gamma * H(x) / sqrt(n) + beta`, each part optional (the default is the
/// plain transform). The buffers are f32, and each must differ from the output
/// ([`WhtError::Aliased`]); its CPU counterpart is [`cpu::WhtEpilogueRef`].
///
/// With `gamma` and `beta` this is the learnable affine rescale that replaces W_O in a
/// Hadamard-projection layer; the decoder also fuses the residual add.
#[derive(Clone, Copy, Debug, Default)]
pub struct WhtEpilogue<'a> {
    /// Per-channel scale, length n.
    pub gamma: Option<&'a GpuBuffer>,
    /// Per-channel bias, length n.
    pub beta: Option<&'a GpuBuffer>,
    /// Residual, same shape as the output.
    pub resid: Option<&'a GpuBuffer>,
}

/// How the fast kernel runs: the fused epilogue and the path of its exchanges. The
/// default is the plain transform on [`WhtPath::Auto`].
#[derive(Clone, Copy, Debug, Default)]
pub struct WhtOptions<'a> {
    pub epilogue: WhtEpilogue<'a>,
    pub path: WhtPath,
}

impl WhtOptions<'_> {
    /// The plain transform on `path`.
    pub fn on(path: WhtPath) -> Self {
        Self {
            path,
            ..Default::default()
        }
    }
}

/// One dispatch of the fast kernel: the layout of the 3-D view X[b][i][s] (see the
/// shader header) and how it is tiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FastPass {
    m: usize,
    p: usize,
    v: usize,
    s: usize,
    ls: usize,
    lb: usize,
    lines: usize,
    /// Whether this pass stores the final result (scale and epilogue).
    last: bool,
}

impl FastPass {
    fn transform_len(&self) -> usize {
        self.m * self.p
    }

    fn workgroup(&self) -> usize {
        self.lb * self.ls * self.transform_len() / self.v
    }

    /// Barrier-separated exchange rounds the fast kernel does after `shuffled` subgroup
    /// stages (mirrors the loop in `wht_tile`).
    fn exchange_rounds(&self, shuffled: u32) -> u32 {
        let log_v = self.v.trailing_zeros();
        let top = self.p.trailing_zeros() - log_v;
        if log_v == 0 {
            return 0;
        }
        (top - shuffled.min(top)).div_ceil(log_v)
    }

    fn tiles(&self) -> usize {
        self.lines.div_ceil(self.lb) * (self.s / self.ls)
    }
}

/// Splits a transform of `rows` rows of length `size.n` into one or two fast passes.
fn plan(size: WhtSize, rows: usize) -> Vec<FastPass> {
    let (n, m, p) = (size.n, size.m, size.p);
    let values = |p: usize| p.min(MAX_VALUES_PER_INVOCATION);
    if n <= TILE_ELEMS {
        let mut v = values(p);
        let mut lb = (MAX_WORKGROUP / (n / v)).min(TILE_ELEMS / n).max(1);
        // Fewer rows than a tile holds (decode): one tile of them, with fewer values per
        // invocation so that its lanes all work (n = 1024, one row: 256 invocations of 4
        // values rather than 64 of 16 in a workgroup sized for 4 rows). At least 2 values:
        // the exchange rounds advance LOG_V stages each.
        if rows < lb {
            lb = rows;
            while v > 2 && lb * n / (v / 2) <= MAX_WORKGROUP {
                v /= 2;
            }
        }
        return vec![FastPass {
            m,
            p,
            v,
            s: 1,
            ls: 1,
            lb,
            lines: rows,
            last: true,
        }];
    }
    // Pass A: H_{P_A} on contiguous segments; pass B: H_M (x) H_{P / P_A} across them.
    let pa = p.min(TILE_ELEMS);
    let va = values(pa);
    let a = FastPass {
        m: 1,
        p: pa,
        v: va,
        s: 1,
        ls: 1,
        lb: (MAX_WORKGROUP / (pa / va)).min(TILE_ELEMS / pa).max(1),
        lines: rows * (n / pa),
        last: false,
    };
    let pb = p / pa;
    let vb = values(pb);
    let tb = m * pb;
    let mut ls = 1;
    while ls * 2 <= pa && 2 * ls * tb <= TILE_ELEMS && 2 * ls * tb / vb <= MAX_WORKGROUP {
        ls *= 2;
    }
    let b = FastPass {
        m,
        p: pb,
        v: vb,
        s: pa,
        ls,
        lb: 1,
        lines: rows,
        last: true,
    };
    vec![a, b]
}

/// The WHT kernels on one device: their sign tables and scratch, made once and reused by
/// every call.
///
/// [`Hadamard::run`] transforms host data; [`Hadamard::encode`] records the transform of
/// buffers already on the GPU into a compute pass (the caller's own, or a
/// [`crate::gpu::Recording`]), with the optional [`WhtEpilogue`]. Lengths are any
/// [`WhtSize`]: `n = m * 2^k` up to [`cpu::MAX_N`].
///
/// ```no_run
/// use walsh::gpu::{AdapterSelector, Gpu};
/// use walsh::ops::hadamard::{Hadamard, WhtPath, WhtSize, cpu};
///
/// let gpu = Gpu::new(&AdapterSelector::Default)?;
/// let wht = Hadamard::new(&gpu)?;
/// let n = 576; // 36 x 16
/// let x: Vec<f32> = (0..2 * n).map(|i| (i % 7) as f32 - 3.0).collect();
/// let y = wht.run(&x, n, WhtPath::Auto)?;
///
/// let mut want = x.clone();
/// for row in want.chunks_exact_mut(n) {
///     cpu::fwht(row, WhtSize::new(n)?);
/// }
/// let err = y.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
/// assert!(err < 1e-4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Hadamard {
    gpu: Gpu,
    /// Bound to the epilogue slots a dispatch does not use.
    dummy: GpuBuffer,
    /// Sign masks of H_m for m = 1 and every core order.
    signs: Vec<(usize, GpuBuffer)>,
    /// Intermediate of the two-pass transform, grown on demand.
    scratch: Mutex<Option<GpuBuffer>>,
}

impl Hadamard {
    /// Uploads the sign tables of every core order (a few KiB) to `gpu`. Pipelines are
    /// compiled on first use, per shape.
    pub fn new(gpu: &Gpu) -> Result<Self, WhtError> {
        let dummy = gpu.upload(MemoryCategory::Uniforms, "wht dummy", &[0f32; 4])?;
        let mut signs = Vec::new();
        for m in std::iter::once(1).chain(construct::CORE_ORDERS) {
            let masks = cpu::sign_masks(m);
            signs.push((
                m,
                gpu.upload(MemoryCategory::Uniforms, "wht signs", &masks)?,
            ));
        }
        Ok(Self {
            gpu: gpu.clone(),
            dummy,
            signs,
            scratch: Mutex::new(None),
        })
    }

    fn signs(&self, m: usize) -> &wgpu::Buffer {
        let found = self.signs.iter().find(|(k, _)| *k == m);
        found.map_or(self.dummy.buffer(), |(_, b)| b.buffer())
    }

    /// Validates `path` against the device and returns it (Auto stays Auto).
    fn check_path(&self, path: WhtPath) -> Result<WhtPath, WhtError> {
        let has = self.gpu.features().subgroup;
        match path {
            WhtPath::Rows => Ok(WhtPath::Rows),
            WhtPath::Auto if has => Ok(WhtPath::Auto),
            WhtPath::Auto | WhtPath::Shared => Ok(WhtPath::Shared),
            WhtPath::Subgroup if has => Ok(WhtPath::Subgroup),
            WhtPath::Subgroup => Err(GpuError::MissingFeature {
                feature: "SUBGROUP",
                adapter: self.gpu.info().name.clone(),
            }
            .into()),
        }
    }

    fn check_len(what: &'static str, buf: &GpuBuffer, elems: usize) -> Result<(), WhtError> {
        buf.require(what, (elems * 4) as u64)
            .map_err(|_| WhtError::Shape {
                what,
                expected: elems,
                found: buf.size() as usize / 4,
            })
    }

    /// Errors with [`WhtError::Aliased`] if `output` is also one of `read`.
    fn check_distinct(
        output: &GpuBuffer,
        read: &[(&'static str, Option<&GpuBuffer>)],
    ) -> Result<(), WhtError> {
        for &(what, buf) in read {
            if buf.is_some_and(|b| b.buffer() == output.buffer()) {
                return Err(WhtError::Aliased { what });
            }
        }
        Ok(())
    }

    /// Validates sizes and buffers shared by both kernels.
    fn check(
        &self,
        input: &GpuBuffer,
        output: &GpuBuffer,
        rows: usize,
        n: usize,
    ) -> Result<WhtSize, WhtError> {
        let size = WhtSize::new(n)?;
        Self::check_distinct(output, &[("input", Some(input))])?;
        Self::check_len("input", input, rows * n)?;
        Self::check_len("output", output, rows * n)?;
        self.gpu
            .check_binding_size("WHT rows", (rows * n * 4) as u64)?;
        Ok(size)
    }

    /// Records the fast transform of `rows` rows of length `n` (row major f32) from `input`
    /// into `output`, with `options`' epilogue, into `pass`: one dispatch, or two for
    /// rows longer than [`TILE_ELEMS`]. Nothing runs until the caller submits the pass's
    /// encoder, so the transform can sit between the caller's own passes and copies.
    ///
    /// `output` must be a buffer of its own, not also the input or one of the epilogue's
    /// buffers ([`WhtError::Aliased`]); sizes and lengths are checked before anything is
    /// recorded ([`WhtError::Size`], [`WhtError::Shape`]).
    pub fn encode(
        &self,
        pass: &mut dyn Record,
        input: &GpuBuffer,
        output: &GpuBuffer,
        rows: usize,
        n: usize,
        options: WhtOptions<'_>,
    ) -> Result<(), WhtError> {
        let WhtOptions { epilogue, path } = options;
        let size = self.check(input, output, rows, n)?;
        Self::check_distinct(
            output,
            &[
                ("resid", epilogue.resid),
                ("gamma", epilogue.gamma),
                ("beta", epilogue.beta),
            ],
        )?;
        for (what, buf) in [("gamma", epilogue.gamma), ("beta", epilogue.beta)] {
            if let Some(b) = buf {
                Self::check_len(what, b, n)?;
            }
        }
        if let Some(r) = epilogue.resid {
            Self::check_len("resid", r, rows * n)?;
        }
        if rows == 0 {
            return Ok(());
        }
        // A decode-sized batch on a CPU adapter (on SwiftShader a big one too,
        // ROWS_PATH_SWIFTSHADER_MIN_ROWS): a barrier costs more there than a whole
        // row's butterflies (SwiftShader's WebGPU: 3.1 ms against 0.14 ms for one 256-value
        // row). Not with an m x m mix (n = m 2^k, m > 1): one invocation then does n m adds,
        // and the tiled kernel spreads them (lavapipe, one row: 0.13 against 0.62 ms at
        // 576 = 36 x 16, 0.23 against 0.43 ms at 768 = 12 x 64; 16 rows: 0.35 against 1.36
        // ms at 576).
        let adapter = (self.gpu.is_cpu_adapter(), self.gpu.is_swiftshader());
        let path = match path {
            WhtPath::Auto if auto_takes_rows(adapter, rows, size) => WhtPath::Rows,
            p => self.check_path(p)?,
        };
        if path == WhtPath::Rows {
            if n > TILE_ELEMS {
                return Err(WhtError::RowTooLong { n, max: TILE_ELEMS });
            }
            return self.dispatch_rows(pass, input, output, rows, size, epilogue);
        }
        let passes = plan(size, rows);
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if passes.len() > 1 {
            let bytes = (rows * n * 4) as u64;
            if scratch.as_ref().is_none_or(|s| s.size() < bytes) {
                *scratch = None; // free the old one before allocating
                *scratch = Some(
                    self.gpu
                        .storage(MemoryCategory::Scratch, "wht scratch", bytes)?,
                );
            }
        }
        let scale = 1.0 / (n as f32).sqrt();
        for (k, fp) in passes.iter().enumerate() {
            let src = if k == 0 {
                input
            } else {
                scratch.as_ref().expect("allocated above")
            };
            let dst = if fp.last {
                output
            } else {
                scratch.as_ref().expect("allocated above")
            };
            let epi = if fp.last {
                epilogue
            } else {
                WhtEpilogue::default()
            };
            self.dispatch_fast(
                pass,
                fp,
                src,
                dst,
                epi,
                path,
                if fp.last { scale } else { 1.0 },
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_fast<'a>(
        &'a self,
        pass: &mut dyn Record,
        fp: &FastPass,
        src: &GpuBuffer,
        dst: &GpuBuffer,
        epi: WhtEpilogue<'a>,
        path: WhtPath,
        scale: f32,
    ) -> Result<(), WhtError> {
        // Subgroup stages only run on passes with one column per tile (see the shader).
        // Where barriers dominate (software rasterizers, and a barrier is never free),
        // shuffles pay off only when they save a round of workgroup-memory exchange; the
        // subgroup size is taken at its minimum, which the shader never exceeds in count.
        // The subgroup kernel numbers its invocations by subgroup and lane, which covers the
        // workgroup only if every subgroup is full: a workgroup a multiple of the largest
        // subgroup size (hadamard_subgroup.wgsl).
        let info = self.gpu.info();
        let shuffle_bits = info.subgroup_min_size.max(1).trailing_zeros();
        let whole_subgroups = fp
            .workgroup()
            .is_multiple_of(info.subgroup_max_size.max(1) as usize);
        let subgroups = fp.ls == 1
            && whole_subgroups
            && match path {
                WhtPath::Subgroup => true,
                WhtPath::Shared | WhtPath::Rows => false,
                WhtPath::Auto => fp.exchange_rounds(shuffle_bits) < fp.exchange_rounds(0),
            };
        let shader = if subgroups {
            Shader::HadamardSubgroup
        } else {
            Shader::Hadamard
        };
        let key = PipelineKey::new(shader, "wht_fast")
            .with("M", fp.m as u32)
            .with("P", fp.p as u32)
            .with("LOG_P", fp.p.trailing_zeros())
            .with("V", fp.v as u32)
            .with("LOG_V", fp.v.trailing_zeros())
            .with("S", fp.s as u32)
            .with("LS", fp.ls as u32)
            .with("LB", fp.lb as u32)
            .with("WG", fp.workgroup() as u32);
        let grid = self.gpu.grid("WHT", fp.tiles() as u32)?;
        let params = WhtParams {
            lines: fp.lines as u32,
            tiles_x: grid.x,
            scale,
            bit: 0,
        };
        self.dispatch_epilogue(pass, key, grid, params, src, dst, epi, fp.m)
    }

    /// Binds `src`, `dst`, the epilogue's buffers and the H_m signs, with the epilogue's
    /// flags on `key`, and records one dispatch (the fast and by-rows kernels).
    #[allow(clippy::too_many_arguments)]
    fn dispatch_epilogue<'a>(
        &'a self,
        pass: &mut dyn Record,
        key: PipelineKey,
        grid: glam::UVec3,
        params: WhtParams,
        src: &'a GpuBuffer,
        dst: &'a GpuBuffer,
        epi: WhtEpilogue<'a>,
        m: usize,
    ) -> Result<(), WhtError> {
        let key = key
            .with_flag("EPI_RESID", epi.resid.is_some())
            .with_flag("EPI_GAMMA", epi.gamma.is_some())
            .with_flag("EPI_BETA", epi.beta.is_some());
        let pipeline = self.gpu.pipeline(&key, &BINDINGS)?;
        let params = self.gpu.uniform("wht params", &params);
        let dummy = self.dummy.buffer();
        let opt =
            |b: Option<&'a GpuBuffer>| -> &'a wgpu::Buffer { b.map_or(dummy, |b| b.buffer()) };
        let buffers = [
            params.buffer(),
            src.buffer(),
            dst.buffer(),
            opt(epi.resid),
            opt(epi.gamma),
            opt(epi.beta),
            self.signs(m),
        ];
        self.gpu.dispatch(pass, &pipeline, &buffers, grid);
        Ok(())
    }

    /// One dispatch of `wht_rows`: an invocation per row.
    fn dispatch_rows<'a>(
        &'a self,
        pass: &mut dyn Record,
        input: &'a GpuBuffer,
        output: &'a GpuBuffer,
        rows: usize,
        size: WhtSize,
        epi: WhtEpilogue<'a>,
    ) -> Result<(), WhtError> {
        let key = PipelineKey::new(Shader::Hadamard, "wht_rows")
            .with("M", size.m as u32)
            .with("P", size.p as u32)
            .with("NAIVE_WG", NAIVE_WORKGROUP);
        let groups = rows.div_ceil(NAIVE_WORKGROUP as usize) as u32;
        let grid = self.gpu.grid("WHT rows", groups)?;
        let params = WhtParams {
            lines: rows as u32,
            tiles_x: grid.x,
            scale: 1.0 / (size.n as f32).sqrt(),
            bit: 0,
        };
        self.dispatch_epilogue(pass, key, grid, params, input, output, epi, size.m)
    }

    /// Records the naive transform: copies `input` to `output`, then one in-place dispatch
    /// per butterfly stage (and one for the M x M mix). No epilogue.
    pub fn encode_naive(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        input: &GpuBuffer,
        output: &GpuBuffer,
        rows: usize,
        n: usize,
    ) -> Result<(), WhtError> {
        let size = self.check(input, output, rows, n)?;
        if rows == 0 {
            return Ok(());
        }
        encoder.copy_buffer_to_buffer(input.buffer(), 0, output.buffer(), 0, (rows * n * 4) as u64);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("wht naive"),
            timestamp_writes: None,
        });
        self.record_naive(&mut pass, output, rows, size)
    }

    /// The in-place stages of the naive transform on `data`, recorded into `pass`.
    pub fn record_naive(
        &self,
        pass: &mut dyn Record,
        data: &GpuBuffer,
        rows: usize,
        size: WhtSize,
    ) -> Result<(), WhtError> {
        let scale = 1.0 / (size.n as f32).sqrt();
        let stages = size.log2_p();
        let key = |entry| {
            PipelineKey::new(Shader::Hadamard, entry)
                .with("M", size.m as u32)
                .with("P", size.p as u32)
                .with("NAIVE_WG", NAIVE_WORKGROUP)
        };
        let mut steps: Vec<(&'static str, u32, usize)> = (0..stages)
            .map(|bit| ("wht_naive_stage", bit, rows * size.n / 2))
            .collect();
        if size.m > 1 {
            steps.push(("wht_naive_mix", 0, rows * size.p));
        }
        let count = steps.len();
        for (k, (entry, bit, invocations)) in steps.into_iter().enumerate() {
            let pipeline = self.gpu.pipeline(&key(entry), &BINDINGS)?;
            let groups = invocations.div_ceil(NAIVE_WORKGROUP as usize) as u32;
            let grid = self.gpu.grid("naive WHT", groups)?;
            let params = self.gpu.uniform(
                "wht naive params",
                &WhtParams {
                    lines: rows as u32,
                    tiles_x: grid.x,
                    scale: if k + 1 == count { scale } else { 1.0 },
                    bit,
                },
            );
            let d = self.dummy.buffer();
            let buffers = [
                params.buffer(),
                d,
                data.buffer(),
                d,
                d,
                d,
                self.signs(size.m),
            ];
            self.gpu.dispatch(pass, &pipeline, &buffers, grid);
        }
        Ok(())
    }

    /// Convenience for callers with host data: transforms `x` (rows x n, row major) on the
    /// GPU with the fast kernel and returns the result.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&self, x: &[f32], n: usize, path: WhtPath) -> Result<Vec<f32>, WhtError> {
        pollster::block_on(self.run_async(x, n, path))
    }

    /// [`Hadamard::run`], awaiting the readback.
    pub async fn run_async(
        &self,
        x: &[f32],
        n: usize,
        path: WhtPath,
    ) -> Result<Vec<f32>, WhtError> {
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(WhtError::Shape {
                what: "input",
                expected: n,
                found: x.len(),
            });
        }
        let rows = x.len() / n;
        let input = self
            .gpu
            .upload(MemoryCategory::Activations, "wht input", x)?;
        let output = self.gpu.storage(
            MemoryCategory::Activations,
            "wht output",
            (x.len() * 4) as u64,
        )?;
        let mut encoder = self.gpu.encoder("wht");
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wht fast"),
                timestamp_writes: None,
            });
            self.encode(&mut pass, &input, &output, rows, n, WhtOptions::on(path))?;
        }
        let bytes = self
            .gpu
            .finish_and_read(encoder, output.buffer(), (x.len() * 4) as u64)
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
