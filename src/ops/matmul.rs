//! Dense matrix products (`shaders/matmul.wgsl`): `z = x W^T` with W a [`Matrix`]
//! shaped [n_out, n_in], f32 or packed f16, written to y through an [`Epilogue`]: stored,
//! added, through SiLU, or (W interleaving two matrices) as SwiGLU `silu(gate) * up`, so
//! the decoder's gate and up projections are one product.
//!
//! Batches of up to [`GEMV_MAX_ROWS`] rows (decode) take the GEMV kernel, larger ones
//! (prefill) the tiled GEMM.

use bytemuck::{Pod, Zeroable};

use super::{Cols, Matrix, WeightFormat};
use crate::gpu::Binding::{ReadOnly, ReadWrite, Uniform};
use crate::gpu::{Binding, Gpu, GpuBuffer, GpuError, PipelineKey, Record, Shader};
use crate::ops::hadamard::cpu::{SIGN_UNIFORM_WORDS, WhtSize};

/// Invocations per GEMV workgroup; passed to the shader as `GEMV_WG` (its partial sums
/// must fit the stage: [`stage_len`]).
const GEMV_WORKGROUP: u32 = 64;
/// `GEMV_WG` of the CPU adapters' GEMVs with the Hadamard prologue (at most 256, WebGPU's
/// default invocation limit): fewer workgroups than 64 lanes make, so fewer repeats of
/// the row's transform, yet enough to share among the adapter's threads. With a barrier per butterfly stage
/// 256 won (d_model 1024 x 8 gate/up at 1.65-1.73x the q/k/v products' time against
/// 1.86-1.91x for 128, lavapipe); with the vec4 butterflies (two stages a barrier) 128
/// and 256 take the same time there, and at d_model 256, whose gate/up makes 768 units
/// (3 workgroups of 256 on a 2-thread lavapipe), the paper grid's Hadamard decode gain
/// at batch 1 / 4 / 16 was +2.6 / +3.2 / +4.4% and +3.5 / +2.8 / +3.6% with 128 against
/// -0.2 / +2.6 / -1.8% with 256 and +1.2 / +0.8 / -2.1% with 64 (`walsh bench --suite
/// paper --max-d-model 256 --max-context 128`, one run each, in a row). With 4 units an
/// invocation (`gemv_outputs_wide`, [`gemv_units`]) 128 makes 512 units a workgroup, too
/// few workgroups at small widths: [`hadamard_cpu_workgroup`] halves it down to
/// PROLOGUE_CPU_MIN_WORKGROUP until there are PROLOGUE_CPU_GROUPS.
const PROLOGUE_CPU_WORKGROUP: u32 = 128;
const PROLOGUE_CPU_MIN_WORKGROUP: u32 = 32;
/// Workgroups the CPU adapters' Hadamard-prologue GEMV aims for: gate/up's time per
/// q/k/v product's on lavapipe (2 threads), 4 units an invocation, workgroups of 128 / 64
/// / 32: d_model 256 (688 units: 2 / 3 / 6 workgroups) 1.8 / 1.7 / 1.5-1.6x; 512 (1376:
/// 3 / 6 / 11) 2.0-2.1 / 1.6-1.7 / 1.7-1.9x; 1024 (2752: 6 / 11 / 22) 1.7 / - / 1.9x.
const PROLOGUE_CPU_GROUPS: usize = 6;
/// Output units per invocation of `gemv_outputs_wide` at most (`GEMV_UNITS` there): each
/// load of an input (lane by lane on a CPU adapter) serves them all.
const GEMV_OUTPUTS_UNITS: usize = 4;
/// Output units per workgroup of `gemv_outputs_wide` with more than one unit an invocation.
const GEMV_OUTPUTS_UNITS_PER_GROUP: u32 = 128;
/// Invocations per workgroup of the wide GEMV (`GEMV_WG` there; its partial sums, 8 an
/// invocation, fit the stage): GEMV_WIDE_WORKGROUP / GEMV_WIDE_LANES output units per
/// workgroup.
const GEMV_WIDE_WORKGROUP: u32 = 256;
/// Invocations per workgroup of the subgroup GEMV (`GEMV_WG` there): GEMV_WG / the
/// adapter's largest subgroup size output units (`SG_UNITS`), a subgroup each.
const GEMV_SUBGROUP_WORKGROUP: u32 = 128;
/// The Hadamard prologue's mix items per invocation at most (`MIX_ITEMS` in matmul.wgsl):
/// a stage of [`PROLOGUE_STAGE`] values in items of four, over the smallest GEMV workgroup.
const MIX_ITEMS: usize = 16;
const _: () = {
    let smallest = [GEMV_WORKGROUP, GEMV_WIDE_WORKGROUP, GEMV_SUBGROUP_WORKGROUP];
    let mut i = 0;
    while i < smallest.len() {
        assert!(PROLOGUE_STAGE / 4 / smallest[i] as usize <= MIX_ITEMS);
        i += 1;
    }
};
/// Lanes per output unit in the wide GEMV; must match `WIDE_LANES` in matmul.wgsl.
const GEMV_WIDE_LANES: u32 = 32;
/// Lanes per output unit of `gemv_dot4` on GPUs (`DOT4_LANES` in matmul_dot4.wgsl; 1 on
/// CPU adapters, an invocation per unit as gemv_outputs_wide). Divides its workgroup
/// (GEMV_WIDE_WORKGROUP), whose partial sums (8 each) fit the stage.
const GEMV_DOT4_LANES: u32 = 32;
const _: () = assert!(
    GEMV_WIDE_WORKGROUP.is_multiple_of(GEMV_DOT4_LANES)
        && GEMV_WIDE_WORKGROUP as usize * MAX_GEMV_ROWS <= PROLOGUE_STAGE
);
/// Workgroup memory of `gemv_dot4`, in bytes: matmul.wgsl's `stage`, `sums`, `sums2` and
/// matmul_dot4.wgsl's `qx` (STAGE / 4 words), `qscale` and `qsum` (STAGE / QBLOCK each).
const DOT4_WORKGROUP_BYTES: u32 =
    PROLOGUE_WORKGROUP_BYTES + (PROLOGUE_STAGE as u32 / 4 + 2 * PROLOGUE_STAGE as u32 / 32) * 4;
/// The wide GEMVs read a row of w in 16-byte vectors (`w4`; a quantized row is whole
/// blocks, so whole vectors, whatever its width) and the inputs under them through x's
/// vec4 view: the multiple of inputs a row of `format` must be for them. The shipped FFN
/// width (688 = 86 x 8 = 21 x 32 + 16) is one in every format.
fn wide_align(format: WeightFormat) -> usize {
    match format {
        WeightFormat::F16 => 8,
        WeightFormat::F32 | WeightFormat::Q8 | WeightFormat::Q4 => 4,
    }
}

/// Output units per invocation (`GEMV_UNITS` in matmul.wgsl): up to GEMV_OUTPUTS_UNITS
/// for `gemv_outputs_wide`, as many as leave its `gemv_rows` rows of `outs` outputs each
/// within the MAX_GEMV_ROWS sums an invocation keeps (a batch of one row: 4 units of one
/// output, or 4 of SwiGLU's two; 4 rows: 2 and 1); 1 for the other GEMVs.
fn gemv_units(kernel: Kernel, gemv_rows: usize, outs: usize) -> usize {
    if kernel != Kernel::GemvOutputsWide {
        return 1;
    }
    (MAX_GEMV_ROWS / (outs * gemv_rows)).clamp(1, GEMV_OUTPUTS_UNITS)
}

/// `GEMV_WG` of a CPU adapter's GEMV with the Hadamard prologue, for `units` output units
/// of `per_invocation` an invocation and `staged` inputs (rows x n_in): each workgroup
/// redoes the rows' transform, so the largest of PROLOGUE_CPU_WORKGROUP, its half, ...,
/// PROLOGUE_CPU_MIN_WORKGROUP that still makes PROLOGUE_CPU_GROUPS workgroups, and not so
/// small that an invocation gets more than MIX_ITEMS of the mix's items of four (a
/// non-power-of-two width).
fn hadamard_cpu_workgroup(units: usize, per_invocation: usize, staged: usize) -> u32 {
    let mut wg = PROLOGUE_CPU_WORKGROUP;
    while wg > PROLOGUE_CPU_MIN_WORKGROUP
        && units.div_ceil(wg as usize * per_invocation) < PROLOGUE_CPU_GROUPS
        && (staged / 4).div_ceil(wg as usize / 2) <= MIX_ITEMS
    {
        wg /= 2;
    }
    wg
}

/// Accumulators per GEMV invocation (rows per workgroup x outputs per unit x units per
/// invocation) at most; must match `MAX_GEMV_ROWS` in matmul.wgsl.
const MAX_GEMV_ROWS: usize = 8;
/// The GEMM's entry point on `gpu`: `gemm_direct` (32 invocations of 8 rows x 16 outputs
/// each, reading x and w from storage, no workgroup memory) where the adapter loads memory
/// lane by lane and keeps registers cheap ([`Gpu::favours_registers`]); else `gemm` (16 x
/// 16 invocations of 4 x 4 through workgroup memory). Both take a 64 x 64 tile
/// ([`GEMM_TILE`]) per workgroup. On lavapipe a 98-token prefill of the shipped Hadamard
/// model took 0.38x the time with `gemm_direct` of what it took with the 8 x 8 `gemm8` it
/// replaced (itself 0.87x `gemm`'s); on SwiftShader `gemm_direct` took 1.35-1.4x `gemm`'s.
/// SwiftShader keeps `gemm` though its vec4 forms ([`gemm_direct4`]) run faster there: the
/// 12-20 GEMMs of a 65-token prefill of the shipped models took 0.29-0.59x `gemm`'s time
/// natively, but a generation's kernels then took 2.4-3.4 s to build against 1.1-1.4 s
/// (the prefill GEMMs are built for a context slide), more than its slides save (about
/// 0.25 s each, one per 64 tokens) unless it runs for thousands of tokens (Dec 6).
fn gemm_entry(gpu: &Gpu) -> &'static str {
    #[cfg(test)]
    if let Some(entry) = tests::GEMM_ENTRY.get() {
        return entry;
    }
    if gpu.favours_registers() {
        "gemm_direct"
    } else {
        "gemm"
    }
}

/// `gemm_direct`'s vec4 form for `w`, where it has one: weights as whole vec4s of w4 and
/// inputs as whole vec4s of x4. `gemm_direct4` row-major f16 (n_in a multiple of 8),
/// `gemm_direct4_t` transposed f16 (the CPU adapters' untuned layout; n_out a multiple of
/// 16, n_in of 4), `gemm_direct4_q` row-major q8 / q4 (n_in a multiple of 4: a vec4 is a
/// q4 block or half a q8 block). The shipped models' matrices all qualify. A CPU adapter
/// loads lane by lane, so the loads were most of gemm_direct's time: on lavapipe the 12
/// GEMMs of a 120-token prefill of the shipped Hadamard model took 34-39 ms row-major and
/// 33-34 ms transposed against gemm_direct's 74-77 (`walsh profile --prompt`, Dec 5);
/// with their four words (inputs) indexed in a loop rather than written out, 92-94 and
/// 47-48 ms. The shipped q4 model's: 41-46 against 74-92 ms (`gemm_direct4_q`).
fn gemm_direct4(w: &Matrix) -> Option<&'static str> {
    match (w.format, w.transposed) {
        (WeightFormat::F16, false) if w.cols.is_multiple_of(8) => Some("gemm_direct4"),
        (WeightFormat::F16, true) if w.rows.is_multiple_of(16) && w.cols.is_multiple_of(4) => {
            Some("gemm_direct4_t")
        }
        (WeightFormat::Q8 | WeightFormat::Q4, false) if w.cols.is_multiple_of(4) => {
            Some("gemm_direct4_q")
        }
        _ => None,
    }
}

/// Output block of one GEMM workgroup (rows x outputs); must match `TILE_R` / `TILE_O`
/// in matmul.wgsl.
const GEMM_TILE: usize = 64;
/// Batches up to this many rows use the GEMV kernel: it reads each weight once per
/// block of GEMV_ROWS rows, which beats the GEMM's tiling until the batch fills a tile.
pub const GEMV_MAX_ROWS: usize = 16;

/// Uniform parameters; must match `Params` in matmul.wgsl, which binds two of them (the
/// product's, then zeros: see `params()` there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct MatmulParams {
    rows: u32,
    n_in: u32,
    n_out: u32,
    tiles_x: u32,
    eps: f32,
    wht_scale: f32,
    /// Values from one row of y to the next, and y's column 0 (a product writing some
    /// columns of a wider y: a part of a split LM head).
    y_stride: u32,
    y_offset: u32,
}

/// f32s of workgroup memory a GEMV prologue stages its rows in at most; the default of
/// `STAGE` in matmul.wgsl, which each pipeline sets to what it uses (`stage_len`). A
/// workgroup stages GEMV_ROWS rows of n_in inputs.
pub const PROLOGUE_STAGE: usize = 4096;
/// Workgroup memory of a GEMV with a prologue, in bytes: `stage`, `sums` and `sums2` in
/// matmul.wgsl.
const PROLOGUE_WORKGROUP_BYTES: u32 = (PROLOGUE_STAGE as u32 + 256 + 16) * 4;

/// f32s of `stage` a GEMV pipeline uses (`STAGE` in matmul.wgsl), at least one vec4: a
/// prologue's GEMV_ROWS x n_in inputs (`staged`), and the partial sums `gemv` (one per
/// accumulator and invocation) and `gemv_wide` (MAX_GEMV_ROWS per invocation) add after
/// their dots; `gemv_dot4` keeps the whole stage (its `qx`, `qscale` and `qsum` are sized
/// by it). WebGPU zero-fills a workgroup's memory before it runs, so what is declared and
/// unused is paid for by every workgroup.
fn stage_len(
    kernel: Kernel,
    staged: bool,
    gemv_rows: usize,
    n_in: usize,
    workgroup: u32,
    outs: usize,
) -> usize {
    let inputs = if staged { gemv_rows * n_in } else { 0 };
    let partials = match kernel {
        Kernel::Gemv => outs * gemv_rows * workgroup as usize,
        Kernel::GemvWide => workgroup as usize * MAX_GEMV_ROWS,
        Kernel::GemvDot4 => return PROLOGUE_STAGE,
        _ => 0,
    };
    let len = inputs.max(partials).max(4).next_multiple_of(4);
    debug_assert!(len <= PROLOGUE_STAGE);
    len
}

/// What a decode GEMV computes from `x` before its product, in the same dispatch (see
/// the prologues in matmul.wgsl). Each saves the decoder the dispatch that would
/// otherwise make the product's input.
#[derive(Clone, Copy, Debug)]
pub enum Prologue<'a> {
    /// The inputs are `x` itself.
    None,
    /// The inputs are `rmsnorm(x) * weight`; with `out`, they are also written there.
    Norm {
        weight: &'a GpuBuffer,
        eps: f32,
        out: Option<&'a GpuBuffer>,
    },
    /// `x` is the attention output: `out = resid + gamma * H(x) / sqrt(n) + beta` (the
    /// Hadamard W_O with its residual add; n = n_in a power of two), and the inputs are
    /// `rmsnorm(out) * weight`.
    HadamardNorm {
        resid: &'a GpuBuffer,
        gamma: &'a GpuBuffer,
        beta: &'a GpuBuffer,
        out: &'a GpuBuffer,
        weight: &'a GpuBuffer,
        eps: f32,
        /// H_m's signs for n_in = m x 2^k, m > 1 (`hadamard::cpu::sign_uniform(m)` in a
        /// uniform); unread for a power of two (None: the spare uniform stands in).
        signs: Option<&'a GpuBuffer>,
    },
}

impl Prologue<'_> {
    /// The shader's `PRO` code.
    fn code(&self) -> u32 {
        match self {
            Prologue::None => 0,
            Prologue::Norm { .. } => 1,
            Prologue::HadamardNorm { .. } => 2,
        }
    }
}

/// Whether [`encode_with_prologue`] can fold a prologue of kind `hadamard` (else the
/// norm) into a product of `rows` rows of `n_in` inputs on `gpu`: a GEMV-sized batch
/// whose rows fit the stage a row at a time, a Walsh–Hadamard width for the transform
/// (2^k or m x 2^k), and workgroup memory for the stage.
pub fn prologue_fits(gpu: &Gpu, rows: usize, n_in: usize, hadamard: bool) -> bool {
    (1..=GEMV_MAX_ROWS).contains(&rows)
        && (1..=PROLOGUE_STAGE).contains(&n_in)
        && (!hadamard || WhtSize::new(n_in).is_ok())
        && gpu.limits().max_compute_workgroup_storage_size >= PROLOGUE_WORKGROUP_BYTES
}

/// Bindings of every entry point: params, w, x, y; with a prologue also norm_w, resid,
/// gamma, beta, xout, pro_signs (matmul.wgsl).
const BINDINGS: [Binding; 10] = [
    Uniform, ReadOnly, ReadOnly, ReadWrite, ReadOnly, ReadOnly, ReadOnly, ReadOnly, ReadWrite,
    Uniform,
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
    /// see [`interleave_rows`]); `y = silu(z[2j]) * z[2j + 1]`, [rows, n_out / 2].
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
    /// workgroup (GPUs; needs rows of whole 16-byte vectors and quantized blocks:
    /// `n_in` a multiple of 4 in f32, 8 in f16, 32 quantized).
    GemvWide,
    /// An invocation per output, no barrier (CPU adapters).
    GemvOutputs,
    /// The same, reading 16 bytes of the row per step (CPU adapters; `n_in` as
    /// [`Kernel::GemvWide`]'s).
    GemvOutputsWide,
    /// An invocation per two neighbouring outputs of a transposed f16 matrix (what
    /// `Auto` takes for one; the other GEMVs read row-major matrices only).
    GemvCols,
    /// A subgroup per output reading 16 bytes per lane per step, reduced by subgroupAdd
    /// with no barrier (llama.cpp's `mul_mat_vec`; needs SUBGROUP, and `n_in` as
    /// [`Kernel::GemvWide`]'s).
    GemvSubgroup,
    /// q8 and q4 weights against activations quantized to int8 per block of 32
    /// (llama.cpp's q8_1), dotted by `dot4I8Packed` (shaders/matmul_dot4.wgsl; needs
    /// `n_in % 32 == 0`, `n_in <= 4096`). **Not exact**: quantizing the activations
    /// changes the product (about 0.4% of a block's largest input per input), so greedy
    /// tokens may change. Never taken by `Auto`, never in [`Kernel::GEMVS`], never chosen
    /// by the tuner: only timed beside the exact GEMVs (`walsh tune`) and run when asked
    /// for by name.
    GemvDot4,
    Gemm,
}

impl Kernel {
    /// Every decode GEMV, in the order [`Kernel::name`] lists them.
    pub const GEMVS: [Kernel; 6] = [
        Kernel::Gemv,
        Kernel::GemvWide,
        Kernel::GemvOutputs,
        Kernel::GemvOutputsWide,
        Kernel::GemvCols,
        Kernel::GemvSubgroup,
    ];

    /// The entry point's name (also the name in a [`crate::gpu::Tuning`]).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Auto => "auto",
            Kernel::Gemv => "gemv",
            Kernel::GemvWide => "gemv_wide",
            Kernel::GemvOutputs => "gemv_outputs",
            Kernel::GemvOutputsWide => "gemv_outputs_wide",
            Kernel::GemvCols => "gemv_cols",
            Kernel::GemvSubgroup => "gemv_subgroup",
            Kernel::GemvDot4 => "gemv_dot4",
            Kernel::Gemm => "gemm",
        }
    }

    /// The exact GEMV of that name: never [`Kernel::GemvDot4`], so a tuning that names it
    /// (an edited cache) is no choice and `Auto` falls back to the untuned GEMV.
    pub fn from_name(name: &str) -> Option<Kernel> {
        Self::GEMVS.into_iter().find(|k| k.name() == name)
    }

    /// Whether this GEMV can run a product of `n_in` inputs of a `format` matrix stored
    /// `transposed` on `gpu` (the GEMM and `Auto` always can).
    pub fn runs(self, gpu: &Gpu, format: WeightFormat, n_in: usize, transposed: bool) -> bool {
        let wide = n_in.is_multiple_of(wide_align(format));
        match self {
            Kernel::Auto | Kernel::Gemm => true,
            Kernel::GemvCols => transposed,
            _ if transposed => false,
            Kernel::GemvWide | Kernel::GemvOutputsWide => wide,
            Kernel::GemvSubgroup => gpu.features().subgroup && wide,
            Kernel::GemvDot4 => {
                packed_dot4(gpu)
                    && format.quant().is_some()
                    && n_in.is_multiple_of(crate::blocks::BLOCK)
                    && n_in <= PROLOGUE_STAGE
                    && gpu.limits().max_compute_workgroup_storage_size >= DOT4_WORKGROUP_BYTES
            }
            Kernel::Gemv | Kernel::GemvOutputs => true,
        }
    }

    /// Whether the kernel computes the exact product (every one but [`Kernel::GemvDot4`],
    /// which quantizes the activations).
    pub fn exact(self) -> bool {
        self != Kernel::GemvDot4
    }

    /// The GEMV `Auto` takes for a decode-sized product on `gpu`: the measured choice
    /// where one was made for the format and it can run the product, else
    /// [`Kernel::untuned_gemv`].
    fn auto_gemv(gpu: &Gpu, w: &Matrix) -> Kernel {
        gpu.tuned_gemv(w.format.name())
            .and_then(|name| Kernel::from_name(&name))
            .filter(|k| k.runs(gpu, w.format, w.cols, w.transposed))
            .unwrap_or_else(|| Kernel::untuned_gemv(gpu, w.format, w.cols, w.transposed))
    }

    /// The decode GEMV by adapter type, for a product of `n_in` inputs of a `format` matrix
    /// stored `transposed`.
    pub fn untuned_gemv(gpu: &Gpu, format: WeightFormat, n_in: usize, transposed: bool) -> Kernel {
        let wide = n_in.is_multiple_of(wide_align(format));
        match (transposed, gpu.is_cpu_adapter(), wide) {
            (true, _, _) => Kernel::GemvCols,
            // On a CPU adapter a barrier is a thread switch: one invocation per output wins.
            (false, true, true) => Kernel::GemvOutputsWide,
            (false, true, false) => Kernel::GemvOutputs,
            (false, false, true) => Kernel::GemvWide,
            (false, false, false) => Kernel::Gemv,
        }
    }
}

/// Whether `gpu` compiles WGSL's `dot4I8Packed` (the `packed_4x8_integer_dot_product`
/// language extension). Natively naga implements it on every back end (SPIR-V `OpSDot`
/// where the Vulkan device has `VK_KHR_shader_integer_dot_product`, else a polyfill of
/// bit-field extracts; GLSL, HLSL below SM 6.4 and MSL polyfills too), so every native
/// adapter does. In the browser it is the instance's `wgsl_language_features`, which the
/// page does not keep: there `gemv_dot4` does not run.
fn packed_dot4(_gpu: &Gpu) -> bool {
    cfg!(not(target_arch = "wasm32"))
}

/// Whether a product matrix of `format` with `rows` rows should be stored transposed on
/// `gpu`: where `gemv_cols` is its decode GEMV (measured, or by default on CPU adapters
/// for f16), since no other GEMV reads that layout.
pub fn wants_transposed(gpu: &Gpu, format: crate::ops::WeightFormat, rows: usize) -> bool {
    if format != crate::ops::WeightFormat::F16 || !rows.is_multiple_of(2) {
        return false;
    }
    match gpu.tuned_gemv(format.name()) {
        Some(name) => name == Kernel::GemvCols.name(),
        None => gpu.is_cpu_adapter(),
    }
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
    encode_with_prologue(gpu, pass, w, x, y, rows, epilogue, kernel, Prologue::None)
}

/// Checks a prologue's buffers and returns (norm weight, resid, gamma, beta, out, eps,
/// transform scale), unused read-only slots bound to `x`, an unused `out` to the device's
/// spare buffer (no buffer may fill two writable slots).
#[allow(clippy::type_complexity)]
fn prologue_bindings<'a>(
    gpu: &'a Gpu,
    prologue: &Prologue<'a>,
    x: &'a GpuBuffer,
    y: &'a GpuBuffer,
    w: &'a GpuBuffer,
    rows: usize,
    n_in: usize,
) -> Result<([&'a GpuBuffer; 5], f32, f32), GpuError> {
    let fits = |hadamard: bool| {
        if prologue_fits(gpu, rows, n_in, hadamard) {
            return Ok(());
        }
        Err(GpuError::Validation(format!(
            "a product of {rows} rows x {n_in} inputs cannot make its inputs in a prologue \
             (at most {GEMV_MAX_ROWS} rows of at most {PROLOGUE_STAGE} inputs{}, and \
             {PROLOGUE_WORKGROUP_BYTES} bytes of workgroup memory)",
            if hadamard {
                ", a Walsh-Hadamard size"
            } else {
                ""
            }
        )))
    };
    let row = (rows * n_in * 4) as u64;
    let vec = (n_in * 4) as u64;
    let written = |name: &str, b: &GpuBuffer, read: &[&GpuBuffer]| {
        if read.iter().any(|r| r.buffer() == b.buffer()) || b.buffer() == y.buffer() {
            return Err(GpuError::Validation(format!(
                "matmul prologue: `{name}` must be a buffer of its own"
            )));
        }
        b.require(name, row)
    };
    Ok(match *prologue {
        Prologue::None => ([x, x, x, x, gpu.spare_storage()], 0.0, 0.0),
        Prologue::Norm { weight, eps, out } => {
            fits(false)?;
            weight.require("norm weight", vec)?;
            if let Some(o) = out {
                written("norm out", o, &[x, weight, w])?;
            }
            // xout is bound read-write: without `out`, the spare buffer stands in.
            let out = out.unwrap_or(gpu.spare_storage());
            ([weight, x, x, x, out], eps, 0.0)
        }
        Prologue::HadamardNorm {
            resid,
            gamma,
            beta,
            out,
            weight,
            eps,
            signs,
        } => {
            fits(true)?;
            let m = WhtSize::new(n_in).map_or(1, |s| s.m);
            if m > 1 {
                let words = (SIGN_UNIFORM_WORDS * 4) as u64;
                signs
                    .ok_or_else(|| {
                        GpuError::Validation(format!(
                            "matmul prologue: a transform of {n_in} = {m} x {} needs H_{m}'s \
                             signs",
                            n_in / m
                        ))
                    })?
                    .require("signs", words)?;
            }
            weight.require("norm weight", vec)?;
            gamma.require("gamma", vec)?;
            beta.require("beta", vec)?;
            resid.require("resid", row)?;
            written("out", out, &[x, resid, gamma, beta, weight, w])?;
            let scale = (1.0 / (n_in as f64).sqrt()) as f32;
            ([weight, resid, gamma, beta, out], eps, scale)
        }
    })
}

/// [`encode_matmul`] with a [`Prologue`] made in the same dispatch: a GEMV-sized batch
/// only ([`prologue_fits`]); `y` and the prologue's `out` must differ from every input.
#[allow(clippy::too_many_arguments)]
pub fn encode_with_prologue(
    gpu: &Gpu,
    pass: &mut dyn Record,
    w: &Matrix,
    x: &GpuBuffer,
    y: &GpuBuffer,
    rows: usize,
    epilogue: Epilogue,
    kernel: Kernel,
    prologue: Prologue<'_>,
) -> Result<(), GpuError> {
    let y = Cols::from(y);
    encode_cols(gpu, pass, w, x, y, rows, epilogue, kernel, prologue)
}

/// [`encode_with_prologue`] writing columns of a wider `y`: row r's outputs go to values
/// `r * stride + offset ..` of `y.buffer` ([`Cols`]), so the parts of a matrix split by
/// rows (`ops::RowSplit`) write one `[rows, n_out]` result between them.
#[allow(clippy::too_many_arguments)]
pub fn encode_cols(
    gpu: &Gpu,
    pass: &mut dyn Record,
    w: &Matrix,
    x: &GpuBuffer,
    y: Cols<'_>,
    rows: usize,
    epilogue: Epilogue,
    kernel: Kernel,
    prologue: Prologue<'_>,
) -> Result<(), GpuError> {
    let y_cols = y;
    let y = y_cols.buffer;
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
    let (y_stride, y_offset) = y_cols.layout("y", rows, n_out / outs)?;
    let (extra, eps, wht_scale) = prologue_bindings(gpu, &prologue, x, y, &w.buffer, rows, n_in)?;
    if rows == 0 || n_out == 0 {
        return Ok(());
    }
    let kernel = match kernel {
        Kernel::Auto if rows <= GEMV_MAX_ROWS => Kernel::auto_gemv(gpu, w),
        Kernel::Auto => Kernel::Gemm,
        k => k,
    };
    // The GEMM reads either layout; each GEMV one.
    if kernel != Kernel::Gemm && w.transposed != (kernel == Kernel::GemvCols) {
        return Err(GpuError::Validation(format!(
            "{kernel:?} reads {} matrices only",
            if w.transposed {
                "row-major"
            } else {
                "transposed"
            }
        )));
    }
    if kernel == Kernel::GemvSubgroup && !gpu.features().subgroup {
        return Err(GpuError::Validation(
            "the subgroup GEMV needs an adapter with SUBGROUP".into(),
        ));
    }
    if kernel == Kernel::GemvDot4 {
        if w.format.quant().is_none() {
            return Err(GpuError::Validation(format!(
                "gemv_dot4 reads q8 and q4 matrices only, not {}",
                w.format.name()
            )));
        }
        if !kernel.runs(gpu, w.format, n_in, false) {
            return Err(GpuError::Validation(format!(
                "gemv_dot4 cannot run {n_in} inputs on {} (whole blocks of \
                 {}, at most {PROLOGUE_STAGE}, {DOT4_WORKGROUP_BYTES} bytes of \
                 workgroup memory, dot4I8Packed)",
                gpu.info().name,
                crate::blocks::BLOCK
            )));
        }
    }
    let wide = matches!(
        kernel,
        Kernel::GemvWide | Kernel::GemvOutputsWide | Kernel::GemvSubgroup
    );
    let align = wide_align(w.format);
    if wide && !n_in.is_multiple_of(align) {
        return Err(GpuError::Validation(format!(
            "the wide GEMVs need n_in to be a multiple of {align} for {} weights, not {n_in}",
            w.format.name()
        )));
    }
    let gemv = kernel != Kernel::Gemm;
    if !gemv && prologue.code() != 0 {
        return Err(GpuError::Validation(
            "matmul prologues run in the GEMV kernels only".into(),
        ));
    }
    // A workgroup takes up to MAX_GEMV_ROWS / outs rows; sized to the batch so no
    // invocation loops over rows that are not there; with a prologue, as many as its
    // stage holds.
    let mut gemv_rows = rows.min(MAX_GEMV_ROWS / outs);
    let gemv_units = gemv_units(kernel, gemv_rows, outs);
    // gemv_dot4 packs its rows' levels in a stage's worth of workgroup memory.
    if prologue.code() != 0 || kernel == Kernel::GemvDot4 {
        gemv_rows = gemv_rows.min(PROLOGUE_STAGE / n_in);
    }
    let blocks = rows.div_ceil(gemv_rows);
    let units = n_out / outs;
    // gemv_dot4's lanes per output unit: an invocation per unit on CPU adapters (as
    // gemv_outputs_wide), a lane group per unit on GPUs (as gemv_wide).
    #[allow(unused_mut)]
    let mut dot4_lanes = if gpu.is_cpu_adapter() {
        1
    } else {
        GEMV_DOT4_LANES
    };
    #[cfg(test)]
    if let Some(lanes) = tests::DOT4_LANES.get() {
        dot4_lanes = lanes;
    }
    // Invocations per workgroup. Each workgroup of a product with a prologue redoes it,
    // so the CPU adapters' GEMVs (an output or two per invocation) take the largest
    // workgroup there: fewer repeats of the same row work.
    let hadamard = matches!(prologue, Prologue::HadamardNorm { .. });
    let workgroup = match kernel {
        Kernel::GemvWide => GEMV_WIDE_WORKGROUP,
        Kernel::GemvDot4 if dot4_lanes > 1 => GEMV_WIDE_WORKGROUP,
        Kernel::GemvSubgroup => GEMV_SUBGROUP_WORKGROUP,
        _ if hadamard && gpu.is_cpu_adapter() => {
            hadamard_cpu_workgroup(units, gemv_units, gemv_rows * n_in)
        }
        // As many units a workgroup as 64 invocations of one unit take, twice that with
        // GEMV_UNITS units each (the shipped models on lavapipe: 128 units of 4 an
        // invocation against 64 of 1, 0.74x the decode step's GEMV time; 256 of 4 lost to
        // 128, and 8 units an invocation gained nothing on 4). Not below GEMV_WORKGROUP
        // with the Hadamard prologue, whose MIX_ITEMS assume it.
        _ if gemv_units > 1 && !hadamard => GEMV_OUTPUTS_UNITS_PER_GROUP / gemv_units as u32,
        _ => GEMV_WORKGROUP,
    };
    let per_group = workgroup as usize;
    // The subgroup GEMV's units per workgroup: a subgroup each at the largest size.
    let sg_units = (GEMV_SUBGROUP_WORKGROUP / gpu.info().subgroup_max_size.clamp(1, 128)).max(1);
    let (entry, groups) = match kernel {
        Kernel::Gemv => ("gemv", units * blocks),
        Kernel::GemvOutputs => ("gemv_outputs", units.div_ceil(per_group) * blocks),
        Kernel::GemvOutputsWide => (
            "gemv_outputs_wide",
            units.div_ceil(per_group * gemv_units) * blocks,
        ),
        Kernel::GemvCols => ("gemv_cols", (n_out / 2).div_ceil(per_group) * blocks),
        Kernel::GemvSubgroup => ("gemv_subgroup", units.div_ceil(sg_units as usize) * blocks),
        Kernel::GemvDot4 => (
            "gemv_dot4",
            units.div_ceil((workgroup / dot4_lanes) as usize) * blocks,
        ),
        Kernel::GemvWide => (
            "gemv_wide",
            units.div_ceil((GEMV_WIDE_WORKGROUP / GEMV_WIDE_LANES) as usize) * blocks,
        ),
        _ => (
            match gemm_entry(gpu) {
                "gemm_direct" => gemm_direct4(w).unwrap_or("gemm_direct"),
                entry => entry,
            },
            n_out.div_ceil(GEMM_TILE) * rows.div_ceil(GEMM_TILE),
        ),
    };
    let shader = match kernel {
        Kernel::GemvSubgroup => Shader::MatmulSubgroup,
        Kernel::GemvDot4 => Shader::MatmulDot4,
        _ => Shader::Matmul,
    };
    let mut key = PipelineKey::new(shader, entry)
        .with("W_FMT", w.format.shader_code())
        .with("EPI", epilogue as u32);
    if w.transposed {
        key = key.with_flag("W_T", true);
    }
    if gemv {
        let stage = stage_len(
            kernel,
            prologue.code() != 0,
            gemv_rows,
            n_in,
            workgroup,
            outs,
        );
        key = key
            .with("GEMV_WG", workgroup)
            .with("GEMV_ROWS", gemv_rows as u32)
            .with("GEMV_UNITS", gemv_units as u32)
            .with("STAGE", stage as u32)
            .with_flag("PAIRED", n_in.is_multiple_of(2));
        if kernel == Kernel::GemvSubgroup {
            key = key.with("SG_UNITS", sg_units);
        }
        if kernel == Kernel::GemvDot4 {
            key = key.with("DOT4_LANES", dot4_lanes);
        }
        if prologue.code() != 0 {
            let write_x = matches!(prologue, Prologue::Norm { out: Some(_), .. });
            key = key
                .with("PRO", prologue.code())
                .with_flag("WRITE_X", write_x);
            if let Prologue::HadamardNorm { .. } = prologue {
                let m = WhtSize::new(n_in).map_or(1, |s| s.m);
                if m > 1 {
                    key = key.with("PRO_M", m as u32);
                }
            }
        }
    }
    // The GEMVs reach the prologue's slots in their code (unused without one: x and y
    // stand in); the GEMM binds the first four only.
    let slots = if gemv { BINDINGS.len() } else { 4 };
    let pipeline = gpu.pipeline(&key, &BINDINGS[..slots])?;
    let grid = gpu.grid(entry, groups as u32)?;
    // The product's parameters, then a zeroed copy whose `rows` is the index the shader
    // reads them at (`params()` in matmul.wgsl: hidden from lavapipe's inlining).
    let params = gpu.uniform(
        "matmul params",
        &[
            MatmulParams {
                rows: rows as u32,
                n_in: n_in as u32,
                n_out: n_out as u32,
                tiles_x: grid.x,
                eps,
                wht_scale,
                y_stride: y_stride as u32,
                y_offset: y_offset as u32,
            },
            MatmulParams::zeroed(),
        ],
    );
    let [norm_w, resid, gamma, beta, xout] = extra;
    let signs = match prologue {
        Prologue::HadamardNorm { signs: Some(s), .. } => s,
        _ => gpu.spare_uniform(),
    };
    let buffers = [
        params.buffer(),
        w.buffer.buffer(),
        x.buffer(),
        y.buffer(),
        norm_w.buffer(),
        resid.buffer(),
        gamma.buffer(),
        beta.buffer(),
        xout.buffer(),
        signs.buffer(),
    ];
    gpu.dispatch(pass, &pipeline, &buffers[..slots], grid);
    Ok(())
}

/// [`encode_with_prologue`] (the kernel chosen per part, as for the whole) of a matrix
/// split by rows: one product per part, each writing its columns of `y` (`[rows,
/// w.rows]`, or `w.rows / 2` with [`Epilogue::SwiGlu`], whose interleaved gate and up
/// rows must not straddle a part's boundary: [`super::RowSplit::part_rows`] is even);
/// every output is the unsplit product's. Each part runs the prologue again: it writes
/// the same values to its `out` (never an input) each time.
#[allow(clippy::too_many_arguments)]
pub fn encode_split(
    gpu: &Gpu,
    pass: &mut dyn Record,
    w: &super::RowSplit,
    x: &GpuBuffer,
    y: &GpuBuffer,
    rows: usize,
    epilogue: Epilogue,
    prologue: Prologue<'_>,
) -> Result<(), GpuError> {
    let outs = epilogue.outputs_per_unit();
    for (first, part) in &w.parts {
        if !first.is_multiple_of(outs) {
            return Err(GpuError::Validation(format!(
                "a SwiGLU product's part starts at row {first}: gate and up rows split apart"
            )));
        }
        let y = Cols::new(y, w.rows / outs, first / outs);
        encode_cols(
            gpu,
            pass,
            part,
            x,
            y,
            rows,
            epilogue,
            Kernel::Auto,
            prologue,
        )?;
    }
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
    use crate::blocks::QuantMatrix;
    use crate::gpu::MemoryCategory;
    use crate::gpu::testing::{test_gpus, test_values};

    std::thread_local! {
        /// gemv_dot4's lanes per unit forced for this test thread (the GPUs' layout on
        /// the CPU adapters the tests have).
        pub(super) static DOT4_LANES: std::cell::Cell<Option<u32>> =
            const { std::cell::Cell::new(None) };
        /// The GEMM entry point forced for this test thread (`gemm_entry`).
        pub(super) static GEMM_ENTRY: std::cell::Cell<Option<&'static str>> =
            const { std::cell::Cell::new(None) };
    }

    const FORMATS: [WeightFormat; 4] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Q8,
        WeightFormat::Q4,
    ];

    fn silu(v: f64) -> f64 {
        v / (1.0 + (-v).exp())
    }

    #[test]
    fn each_gemv_declares_the_stage_it_uses() {
        // The GEMVs that read x straight and keep their sums in registers: one vec4.
        for k in [
            Kernel::GemvOutputs,
            Kernel::GemvOutputsWide,
            Kernel::GemvCols,
        ] {
            assert_eq!(stage_len(k, false, 8, 4096, 64, 1), 4, "{k:?}");
        }
        assert_eq!(stage_len(Kernel::GemvSubgroup, false, 4, 1024, 128, 2), 4);
        // A prologue's rows: 2 x 1000 inputs; 3 x 7 rounded up to whole vec4s.
        assert_eq!(
            stage_len(Kernel::GemvOutputsWide, true, 2, 1000, 128, 1),
            2000
        );
        assert_eq!(stage_len(Kernel::GemvOutputs, true, 3, 7, 64, 1), 24);
        // gemv: a partial sum per accumulator (outs x rows) and invocation.
        assert_eq!(stage_len(Kernel::Gemv, false, 4, 256, 64, 2), 512);
        assert_eq!(stage_len(Kernel::Gemv, true, 1, 1024, 64, 1), 1024);
        // gemv_wide: MAX_GEMV_ROWS partial sums per invocation, or its staged rows.
        assert_eq!(stage_len(Kernel::GemvWide, false, 1, 256, 256, 1), 2048);
        assert_eq!(stage_len(Kernel::GemvWide, true, 1, 4096, 256, 1), 4096);
        assert_eq!(
            stage_len(Kernel::GemvDot4, false, 1, 64, 64, 1),
            PROLOGUE_STAGE
        );
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
        let transposed = kernel == Kernel::GemvCols;
        check_layout(gpu, kernel, format, rows, n_in, n_out, epilogue, transposed);
    }

    /// Asserts `got` ([rows, n_out / outputs per unit]) is `epilogue` of the reference
    /// products `z` over `y0`, within `slack` rounding errors of `scale` (the products of
    /// the magnitudes) per output.
    #[allow(clippy::too_many_arguments)]
    fn assert_product(
        got: &[f32],
        z: &[f64],
        scale: &[f64],
        y0: &[f32],
        rows: usize,
        n_out: usize,
        epilogue: Epilogue,
        slack: f64,
        what: &str,
    ) {
        let width = n_out / epilogue.outputs_per_unit();
        let tol_z = |k: usize| slack * f32::EPSILON as f64 * (scale[k] + 1.0);
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
                    "{what} [{r}][{u}]: {g} vs {want}"
                );
            }
        }
    }

    /// [`check`] with the matrix transposed or not (f16 only).
    #[allow(clippy::too_many_arguments)]
    fn check_layout(
        gpu: &Gpu,
        kernel: Kernel,
        format: WeightFormat,
        rows: usize,
        n_in: usize,
        n_out: usize,
        epilogue: Epilogue,
        transposed: bool,
    ) {
        let (matrix, w) = test_matrix(
            gpu,
            format,
            n_out,
            n_in,
            test_values(n_out * n_in, 1),
            transposed,
        );
        let what = format!("{kernel:?} {format:?}");
        check_matrix(gpu, kernel, &matrix, &w, rows, epilogue, &what);
    }

    /// `w` ([n_out, n_in], row-major) as a `format` matrix on `gpu` (transposed: f16 only),
    /// and the values the GPU holds: f16-rounded, or scale x level.
    fn test_matrix(
        gpu: &Gpu,
        format: WeightFormat,
        n_out: usize,
        n_in: usize,
        mut w: Vec<f32>,
        transposed: bool,
    ) -> (Matrix, Vec<f32>) {
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
                if transposed {
                    Matrix::from_f16_bits_transposed(gpu, "w", &bits, n_out, n_in).unwrap()
                } else {
                    Matrix::from_f16_bits(gpu, "w", &bits, n_out, n_in).unwrap()
                }
            }
            WeightFormat::Q8 | WeightFormat::Q4 => {
                let q = QuantMatrix::quantize(format.quant().unwrap(), n_out, n_in, &w).unwrap();
                // The reference sees scale x level, the values the shader computes.
                w = q.dequantize();
                Matrix::from_quant(gpu, "w", &q).unwrap()
            }
        };
        (matrix, w)
    }

    /// Runs `matrix` (holding the values `w`, row-major) through `kernel` and checks the
    /// product against the f64 reference; the GEMM through both its entry points, whatever
    /// the adapter would take.
    fn check_matrix(
        gpu: &Gpu,
        kernel: Kernel,
        matrix: &Matrix,
        w: &[f32],
        rows: usize,
        epilogue: Epilogue,
        what: &str,
    ) {
        // The GEMM through both its entry points, whatever the adapter would take.
        let entries: &[Option<&'static str>] = if kernel == Kernel::Gemm {
            &[Some("gemm"), Some("gemm_direct")]
        } else {
            &[None]
        };
        for &entry in entries {
            GEMM_ENTRY.set(entry);
            let what = match entry {
                Some(e) => format!("{what} ({e})"),
                None => what.to_string(),
            };
            let (n_out, n_in) = (matrix.rows, matrix.cols);
            let width = n_out / epilogue.outputs_per_unit();
            let x = test_values(rows * n_in, 2);
            let y0 = test_values(rows * width, 3);
            let xb = gpu.upload(MemoryCategory::Activations, "x", &x).unwrap();
            let yb = gpu.upload(MemoryCategory::Activations, "y", &y0).unwrap();
            let mut enc = gpu.encoder("matmul test");
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                encode_with(gpu, &mut pass, matrix, &xb, &yb, rows, epilogue, kernel).unwrap();
            }
            gpu.submit_and_wait(enc).unwrap();
            let got: Vec<f32> = gpu.read(&yb, rows * width).unwrap();
            let z = matmul_reference(w, &x, rows, n_in, n_out);
            // The classic bound for a sum of n_in products in f32: n_in ulps of sum |w_i x_i|
            // (plus the accumulated y, which is at most 1).
            let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
            let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
            let scale = matmul_reference(&abs_w, &abs_x, rows, n_in, n_out);
            let what = format!(
                "{what} {rows}x{n_in}->{n_out} {epilogue:?} on {}",
                gpu.describe()
            );
            let slack = n_in as f64 + 2.0;
            assert_product(&got, &z, &scale, &y0, rows, n_out, epilogue, slack, &what);
        }
        GEMM_ENTRY.set(None);
    }

    #[test]
    fn gemv_and_gemm_match_cpu_on_awkward_sizes() {
        use WeightFormat::{F16, F32, Q4, Q8};
        // Then accumulating into y: (kernel, format, rows, n_in, n_out).
        let accumulate = [
            (Kernel::Gemv, F16, 5, 41, 9),
            (Kernel::GemvOutputs, F16, 11, 70, 130),
            (Kernel::Gemm, F32, 37, 41, 9),
            (Kernel::Gemv, Q4, 5, 41, 9),
            (Kernel::GemvOutputs, Q4, 3, 688, 7),
            (Kernel::Gemm, Q8, 37, 41, 9),
        ];
        for gpu in test_gpus() {
            for format in FORMATS {
                // Inputs below, at and past a quantized block of 32, with short tail blocks.
                for (rows, n_in, n_out) in [(1, 1, 1), (3, 37, 5), (9, 130, 67), (16, 64, 3)] {
                    for k in [Kernel::Gemv, Kernel::GemvOutputs] {
                        check(&gpu, k, format, rows, n_in, n_out, Epilogue::Store);
                    }
                }
                // (17, 64, 64), (70, 40, 130): f16 through gemm_direct4 on CPU adapters.
                let gemms = [
                    (1, 1, 1),
                    (37, 19, 70),
                    (65, 33, 129),
                    (17, 64, 64),
                    (70, 40, 130),
                ];
                for (rows, n_in, n_out) in gemms {
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
            for (k, format, rows, n_in, n_out) in accumulate {
                check(&gpu, k, format, rows, n_in, n_out, Epilogue::Accumulate);
            }
        }
    }

    /// GGUF's blocks as stored (docs/model-format.md#loading-gguf): q4 levels -8..=7 (nibble
    /// 0, GGML's -8, included) and q8 -128..=127 under f16 scales of both signs (GGML's
    /// Q4_0 scale is `max / -8`), through every GEMV and the GEMM, against the f64
    /// reference of scale x level as the CPU decoder dequantizes them.
    #[test]
    fn ggml_levels_and_negative_scales_match_cpu_on_every_kernel() {
        use crate::blocks::{QuantFormat, blocks_per_row};
        let ggml_like = |format: QuantFormat, n_out: usize, n_in: usize, seed: u64| {
            let blocks = n_out * blocks_per_row(n_in);
            let mut s = seed;
            let mut next = || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 32) as u32
            };
            let mut data: Vec<u32> = (0..blocks * format.words_per_block())
                .map(|_| next())
                .collect();
            // Every row's first words: all -8 (q4) / 0 (q8), then q8's -128 in each byte.
            let row_words = blocks_per_row(n_in) * format.words_per_block();
            for r in 0..n_out {
                data[r * row_words] = 0;
                data[r * row_words + 1] = 0x8080_8080;
            }
            let scales = (0..blocks)
                .map(|_| {
                    let u = next();
                    let mag = 0.01 + (u % 1000) as f32 * 1e-4;
                    half::f16::from_f32(if u & 1 << 31 != 0 { -mag } else { mag }).to_bits()
                })
                .collect();
            QuantMatrix::from_parts(format, n_out, n_in, data, scales).unwrap()
        };
        for gpu in test_gpus() {
            let mut gemvs = vec![
                Kernel::Gemv,
                Kernel::GemvWide,
                Kernel::GemvOutputs,
                Kernel::GemvOutputsWide,
            ];
            if gpu.features().subgroup {
                gemvs.push(Kernel::GemvSubgroup);
            }
            for format in [QuantFormat::Q4, QuantFormat::Q8] {
                for (i, (n_in, n_out)) in [(64, 9), (96, 16), (256, 33)].into_iter().enumerate() {
                    let q = ggml_like(format, n_out, n_in, 40 + i as u64);
                    let w = q.dequantize();
                    assert!((0..n_in).any(|c| q.level(0, c) == -format.max_level() - 1));
                    let matrix = Matrix::from_quant(&gpu, "w", &q).unwrap();
                    let what = format!("GGML-like {format}");
                    for &kernel in &gemvs {
                        for rows in [1, 5, 16] {
                            let epi = Epilogue::Store;
                            check_matrix(&gpu, kernel, &matrix, &w, rows, epi, &what);
                        }
                    }
                    for rows in [1, 37, 70] {
                        let epi = Epilogue::Store;
                        check_matrix(&gpu, Kernel::Gemm, &matrix, &w, rows, epi, &what);
                    }
                }
            }
        }
    }

    /// The prologue kinds a test runs: the norm alone, the norm writing its rows out, and
    /// the Hadamard W_O with the norm.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Pro {
        Norm,
        NormOut,
        Hadamard,
    }

    /// Runs one product with a prologue and checks the product and what the prologue
    /// writes against the f64 references (rmsnorm_reference, the fused WHT reference).
    #[allow(clippy::too_many_arguments)]
    fn check_prologue(
        gpu: &Gpu,
        kernel: Kernel,
        format: WeightFormat,
        rows: usize,
        n_in: usize,
        n_out: usize,
        epilogue: Epilogue,
        pro: Pro,
    ) {
        use crate::ops::hadamard::{WhtSize, cpu};
        use crate::ops::norm::rmsnorm_reference;
        let w = test_values(n_out * n_in, 11);
        let q;
        let (matrix, w) = match format {
            WeightFormat::Q8 | WeightFormat::Q4 => {
                q = QuantMatrix::quantize(format.quant().unwrap(), n_out, n_in, &w).unwrap();
                (Matrix::from_quant(gpu, "w", &q).unwrap(), q.dequantize())
            }
            WeightFormat::F16 if kernel == Kernel::GemvCols => {
                let bits: Vec<u16> = w
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect();
                let w = bits
                    .iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect();
                let m = Matrix::from_f16_bits_transposed(gpu, "w", &bits, n_out, n_in).unwrap();
                (m, w)
            }
            _ => (Matrix::from_f32(gpu, "w", &w, n_out, n_in).unwrap(), w),
        };
        let x = test_values(rows * n_in, 12);
        let resid = test_values(rows * n_in, 13);
        let gamma: Vec<f32> = test_values(n_in, 14).iter().map(|v| 1.0 + v).collect();
        let beta = test_values(n_in, 15);
        let norm_w: Vec<f32> = test_values(n_in, 16).iter().map(|v| 1.0 + v).collect();
        let eps = 1e-5f32;
        // What the prologue writes out (f64), and the product's inputs.
        let (written, inputs) = if pro == Pro::Hadamard {
            let size = WhtSize::new(n_in).unwrap();
            let epi = cpu::WhtEpilogueRef {
                gamma: Some(&gamma),
                beta: Some(&beta),
                resid: Some(&resid),
            };
            let v = cpu::fused_reference(&x, size, epi);
            let v32: Vec<f32> = v.iter().map(|&a| a as f32).collect();
            (v, rmsnorm_reference(&v32, &norm_w, rows, n_in, eps as f64))
        } else {
            let xn = rmsnorm_reference(&x, &norm_w, rows, n_in, eps as f64);
            (xn.clone(), xn)
        };
        let width = n_out / epilogue.outputs_per_unit();
        let y0 = test_values(rows * width, 17);
        let up =
            |label: &str, v: &[f32]| gpu.upload(MemoryCategory::Activations, label, v).unwrap();
        let (xb, yb, rb) = (up("x", &x), up("y", &y0), up("resid", &resid));
        let (gb, bb, nb) = (up("gamma", &gamma), up("beta", &beta), up("norm", &norm_w));
        let ob = gpu
            .storage(MemoryCategory::Activations, "out", (rows * n_in * 4) as u64)
            .unwrap();
        let m = WhtSize::new(n_in).map_or(1, |s| s.m);
        let signs = gpu.uniform("signs", &cpu::sign_uniform(m));
        let prologue = match pro {
            Pro::Norm => Prologue::Norm {
                weight: &nb,
                eps,
                out: None,
            },
            Pro::NormOut => Prologue::Norm {
                weight: &nb,
                eps,
                out: Some(&ob),
            },
            Pro::Hadamard => Prologue::HadamardNorm {
                resid: &rb,
                gamma: &gb,
                beta: &bb,
                out: &ob,
                weight: &nb,
                eps,
                signs: Some(&signs),
            },
        };
        let mut enc = gpu.encoder("matmul prologue test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            encode_with_prologue(
                gpu, &mut pass, &matrix, &xb, &yb, rows, epilogue, kernel, prologue,
            )
            .unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        let what = format!(
            "{kernel:?} {format:?} {rows}x{n_in}->{n_out} {epilogue:?} {pro:?} on {}",
            gpu.describe()
        );
        // The prologue's values carry a few rounding errors each (log2 n butterfly stages,
        // the affine, the norm's sum and scale).
        let stages = n_in.ilog2() as f64 + 8.0;
        if pro != Pro::Norm {
            let got: Vec<f32> = gpu.read(&ob, rows * n_in).unwrap();
            for (i, (&g, &want)) in got.iter().zip(&written).enumerate() {
                let tol = (stages + n_in as f64) * f32::EPSILON as f64 * (want.abs() + 1.0);
                assert!(
                    (g as f64 - want).abs() <= tol,
                    "{what}: out[{i}] {g} vs {want}"
                );
            }
        }
        let inputs32: Vec<f32> = inputs.iter().map(|&v| v as f32).collect();
        let z = matmul_reference(&w, &inputs32, rows, n_in, n_out);
        let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let abs_x: Vec<f32> = inputs32.iter().map(|v| v.abs()).collect();
        let scale = matmul_reference(&abs_w, &abs_x, rows, n_in, n_out);
        let got: Vec<f32> = gpu.read(&yb, rows * width).unwrap();
        let slack = 2.0 * n_in as f64 + stages;
        assert_product(&got, &z, &scale, &y0, rows, n_out, epilogue, slack, &what);
    }

    #[test]
    fn prologues_match_cpu_on_every_gemv() {
        for gpu in test_gpus() {
            let mut kernels = vec![
                Kernel::Gemv,
                Kernel::GemvOutputs,
                Kernel::GemvWide,
                Kernel::GemvOutputsWide,
            ];
            if gpu.features().subgroup {
                kernels.push(Kernel::GemvSubgroup);
            }
            for kernel in kernels {
                // Widths of whole 32-blocks for the wide GEMV; rows past a block of rows
                // (8, or 4 with two outputs per unit), units not filling a workgroup.
                for (rows, n_in, n_out) in [(1, 32, 3), (3, 64, 70), (9, 256, 17), (16, 128, 9)] {
                    check_prologue(
                        &gpu,
                        kernel,
                        WeightFormat::F16,
                        rows,
                        n_in,
                        n_out,
                        Epilogue::Store,
                        Pro::NormOut,
                    );
                    check_prologue(
                        &gpu,
                        kernel,
                        WeightFormat::Q4,
                        rows,
                        n_in,
                        2 * n_out,
                        Epilogue::SwiGlu,
                        Pro::Hadamard,
                    );
                }
                check_prologue(
                    &gpu,
                    kernel,
                    WeightFormat::Q8,
                    2,
                    512,
                    5,
                    Epilogue::Accumulate,
                    Pro::Norm,
                );
                check_prologue(
                    &gpu,
                    kernel,
                    WeightFormat::F32,
                    1,
                    4096,
                    6,
                    Epilogue::SwiGlu,
                    Pro::Hadamard,
                );
                // m x 2^k: 96 = 12 x 8 (one sign word per row), 576 = 36 x 16 (two).
                for (rows, n_in, n_out) in [(3, 96, 10), (1, 576, 6)] {
                    let f16 = WeightFormat::F16;
                    let swiglu = Epilogue::SwiGlu;
                    check_prologue(&gpu, kernel, f16, rows, n_in, n_out, swiglu, Pro::Hadamard);
                }
            }
            // The largest core order, 2880 = 180 x 16 (six sign words per row).
            let (k, f16) = (Kernel::GemvOutputs, WeightFormat::F16);
            check_prologue(&gpu, k, f16, 1, 2880, 4, Epilogue::Store, Pro::Hadamard);
            // Odd widths, and the largest a stage holds with 3 rows.
            for kernel in [Kernel::Gemv, Kernel::GemvOutputs] {
                check_prologue(
                    &gpu,
                    kernel,
                    WeightFormat::F16,
                    5,
                    37,
                    9,
                    Epilogue::Store,
                    Pro::NormOut,
                );
                check_prologue(
                    &gpu,
                    kernel,
                    WeightFormat::Q4,
                    3,
                    1365,
                    4,
                    Epilogue::Silu,
                    Pro::Norm,
                );
            }
        }
    }

    /// One row's activations quantized as `dot4_quantize` in matmul_dot4.wgsl does: per
    /// block of 32, levels round-half-even(x * (127 / amax)) clamped to +-127, scale
    /// amax / 127 (both f32, rounded once each as there).
    fn dot4_quantize_row(x: &[f32]) -> (Vec<i32>, Vec<f32>) {
        let mut levels = Vec::with_capacity(x.len());
        let mut scales = Vec::new();
        for block in x.chunks(32) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            levels.extend(
                block
                    .iter()
                    .map(|v| (v * inv).round_ties_even().clamp(-127.0, 127.0) as i32),
            );
            scales.push(amax / 127.0);
        }
        (levels, scales)
    }

    /// gemv_dot4's product in f64 from the activations it quantizes (`x`, [rows, n_in]):
    /// per block, the integer dot of weight and activation levels times both scales.
    /// Returns the products and the same of their magnitudes (the rounding bound's scale).
    fn dot4_reference(q: &QuantMatrix, x: &[f32], rows: usize) -> (Vec<f64>, Vec<f64>) {
        let (n_out, n_in) = (q.rows, q.cols);
        let mut z = vec![0.0; rows * n_out];
        let mut mag = vec![0.0; rows * n_out];
        for r in 0..rows {
            let (levels, scales) = dot4_quantize_row(&x[r * n_in..(r + 1) * n_in]);
            for o in 0..n_out {
                for (b, &xs) in scales.iter().enumerate() {
                    let dot: i64 = (b * 32..(b + 1) * 32)
                        .map(|i| (q.level(o, i) * levels[i]) as i64)
                        .sum();
                    let term = dot as f64 * q.scale(o, b * 32) as f64 * xs as f64;
                    z[r * n_out + o] += term;
                    mag[r * n_out + o] += term.abs();
                }
            }
        }
        (z, mag)
    }

    /// Runs `gemv_dot4` on a quantized `format` matrix ([n_out, n_in]) with `pro` (or
    /// none) and checks it against [`dot4_reference`] of the inputs the exact path
    /// computes (the prologue's f64 reference rounded to f32), within f32 rounding.
    #[allow(clippy::too_many_arguments)]
    fn check_dot4(
        gpu: &Gpu,
        format: WeightFormat,
        rows: usize,
        n_in: usize,
        n_out: usize,
        epilogue: Epilogue,
        pro: Option<Pro>,
    ) {
        use crate::ops::hadamard::{WhtSize, cpu};
        use crate::ops::norm::rmsnorm_reference;
        let wv = test_values(n_out * n_in, 21);
        let q = QuantMatrix::quantize(format.quant().unwrap(), n_out, n_in, &wv).unwrap();
        let matrix = Matrix::from_quant(gpu, "w", &q).unwrap();
        let x = test_values(rows * n_in, 22);
        let resid = test_values(rows * n_in, 23);
        let gamma: Vec<f32> = test_values(n_in, 24).iter().map(|v| 1.0 + v).collect();
        let beta = test_values(n_in, 25);
        let norm_w: Vec<f32> = test_values(n_in, 26).iter().map(|v| 1.0 + v).collect();
        let eps = 1e-5f32;
        let inputs: Vec<f32> = match pro {
            None => x.clone(),
            Some(Pro::Hadamard) => {
                let size = WhtSize::new(n_in).unwrap();
                let epi = cpu::WhtEpilogueRef {
                    gamma: Some(&gamma),
                    beta: Some(&beta),
                    resid: Some(&resid),
                };
                let v: Vec<f32> = cpu::fused_reference(&x, size, epi)
                    .iter()
                    .map(|&a| a as f32)
                    .collect();
                rmsnorm_reference(&v, &norm_w, rows, n_in, eps as f64)
                    .iter()
                    .map(|&a| a as f32)
                    .collect()
            }
            Some(_) => rmsnorm_reference(&x, &norm_w, rows, n_in, eps as f64)
                .iter()
                .map(|&a| a as f32)
                .collect(),
        };
        let width = n_out / epilogue.outputs_per_unit();
        let y0 = test_values(rows * width, 27);
        let up =
            |label: &str, v: &[f32]| gpu.upload(MemoryCategory::Activations, label, v).unwrap();
        let (xb, yb, rb) = (up("x", &x), up("y", &y0), up("resid", &resid));
        let (gb, bb, nb) = (up("gamma", &gamma), up("beta", &beta), up("norm", &norm_w));
        let ob = gpu
            .storage(MemoryCategory::Activations, "out", (rows * n_in * 4) as u64)
            .unwrap();
        let m = WhtSize::new(n_in).map_or(1, |s| s.m);
        let signs = gpu.uniform("signs", &cpu::sign_uniform(m));
        let prologue = match pro {
            None => Prologue::None,
            Some(Pro::Norm) => Prologue::Norm {
                weight: &nb,
                eps,
                out: None,
            },
            Some(Pro::NormOut) => Prologue::Norm {
                weight: &nb,
                eps,
                out: Some(&ob),
            },
            Some(Pro::Hadamard) => Prologue::HadamardNorm {
                resid: &rb,
                gamma: &gb,
                beta: &bb,
                out: &ob,
                weight: &nb,
                eps,
                signs: Some(&signs),
            },
        };
        let mut enc = gpu.encoder("gemv_dot4 test");
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let k = Kernel::GemvDot4;
            encode_with_prologue(
                gpu, &mut pass, &matrix, &xb, &yb, rows, epilogue, k, prologue,
            )
            .unwrap();
        }
        gpu.submit_and_wait(enc).unwrap();
        let got: Vec<f32> = gpu.read(&yb, rows * width).unwrap();
        let (z, mag) = dot4_reference(&q, &inputs, rows);
        let what = format!(
            "gemv_dot4 {format:?} {rows}x{n_in}->{n_out} {epilogue:?} {pro:?} on {}",
            gpu.describe()
        );
        // One rounding per block term (the scales' product, the term) and per add; the
        // prologue's f32 inputs may differ from the reference's by an ulp or two, which
        // can move a level at a rounding tie only (not met by these inputs).
        let slack = (n_in / 32) as f64 + 4.0;
        assert_product(&got, &z, &mag, &y0, rows, n_out, epilogue, slack, &what);
    }

    #[test]
    fn dot4_gemv_matches_its_int8_reference() {
        use WeightFormat::{Q4, Q8};
        for gpu in test_gpus() {
            if !Kernel::GemvDot4.runs(&gpu, Q8, 128, false) {
                eprintln!("gemv_dot4 does not run on {}", gpu.describe());
                continue;
            }
            // The adapter's layout (an invocation per unit here), then the GPUs' (32 lanes
            // per unit, reduced through the stage).
            for (format, lanes) in [
                (Q8, None),
                (Q4, None),
                (Q8, Some(GEMV_DOT4_LANES)),
                (Q4, Some(GEMV_DOT4_LANES)),
            ] {
                DOT4_LANES.set(lanes);
                for (rows, n_in, n_out) in [(1, 64, 9), (4, 96, 70), (4, 128, 33)] {
                    check_dot4(&gpu, format, rows, n_in, n_out, Epilogue::Store, None);
                }
                check_dot4(&gpu, format, 1, 128, 10, Epilogue::SwiGlu, None);
                check_dot4(&gpu, format, 4, 64, 12, Epilogue::Accumulate, None);
                check_dot4(&gpu, format, 4, 96, 7, Epilogue::Silu, None);
                // The decoder's prologues: q/k/v (norm), gate/up after a Hadamard W_O.
                let norm = Some(Pro::NormOut);
                check_dot4(&gpu, format, 4, 128, 20, Epilogue::Store, norm);
                check_dot4(&gpu, format, 1, 64, 20, Epilogue::Store, Some(Pro::Norm));
                let had = Some(Pro::Hadamard);
                check_dot4(&gpu, format, 1, 128, 20, Epilogue::SwiGlu, had);
                check_dot4(&gpu, format, 4, 96, 14, Epilogue::SwiGlu, had);
            }
            DOT4_LANES.set(None);
            // Refused where it cannot run: not quantized, or partial blocks.
            let x = gpu
                .upload(MemoryCategory::Activations, "x", &[0f32; 33])
                .unwrap();
            let y = gpu.storage(MemoryCategory::Activations, "y", 8).unwrap();
            let f32w = Matrix::from_f32(&gpu, "w", &[0f32; 64], 2, 32).unwrap();
            let q = QuantMatrix::quantize(crate::blocks::QuantFormat::Q8, 2, 33, &[0.5; 66]);
            let q8w = Matrix::from_quant(&gpu, "w", &q.unwrap()).unwrap();
            let mut enc = gpu.encoder("matmul test");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let (store, k) = (Epilogue::Store, Kernel::GemvDot4);
            let err = encode_with(&gpu, &mut pass, &f32w, &x, &y, 1, store, k).unwrap_err();
            assert!(err.to_string().contains("q8 and q4 matrices only"), "{err}");
            let err = encode_with(&gpu, &mut pass, &q8w, &x, &y, 1, store, k).unwrap_err();
            assert!(err.to_string().contains("cannot run 33 inputs"), "{err}");
        }
    }

    /// The int8 activations are an approximation: the reference's product stays within
    /// the quantization's bound of the exact f32 one (each input off by at most half a
    /// level, amax / 254), and is not the exact product.
    #[test]
    fn dot4_reference_is_close_to_the_exact_product() {
        let (rows, n_in, n_out) = (4, 128, 16);
        for format in [WeightFormat::Q8, WeightFormat::Q4] {
            let wv = test_values(n_out * n_in, 31);
            let q = QuantMatrix::quantize(format.quant().unwrap(), n_out, n_in, &wv).unwrap();
            let w = q.dequantize();
            let x = test_values(rows * n_in, 32);
            let exact = matmul_reference(&w, &x, rows, n_in, n_out);
            let (approx, _) = dot4_reference(&q, &x, rows);
            let mut differs = false;
            for r in 0..rows {
                for o in 0..n_out {
                    let bound: f64 = (0..n_in / 32)
                        .map(|b| {
                            let block = &x[r * n_in + b * 32..r * n_in + (b + 1) * 32];
                            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                            let sum_w: f64 = (b * 32..(b + 1) * 32)
                                .map(|i| w[o * n_in + i].abs() as f64)
                                .sum();
                            sum_w * amax as f64 / 254.0 * (1.0 + 1e-5)
                        })
                        .sum();
                    let (e, a) = (exact[r * n_out + o], approx[r * n_out + o]);
                    assert!((e - a).abs() <= bound, "{format:?} [{r}][{o}]: {a} vs {e}");
                    differs |= (e - a).abs() > 1e-6 * e.abs().max(1.0);
                    let rel = (e - a).abs() / bound;
                    assert!(rel <= 1.0, "{rel}");
                }
            }
            assert!(differs, "{format:?}: int8 activations changed nothing");
            // Levels round half to even, as WGSL's round, and stay within +-127.
            let (levels, scales) = dot4_quantize_row(&[0.5, -1.0, 1.5 / 127.0, 2.5 / 127.0]);
            assert_eq!(levels, [64, -127, 2, 2]);
            assert_eq!(scales, [1.0 / 127.0]);
        }
    }

    #[test]
    fn auto_never_takes_the_int8_gemv() {
        assert!(!Kernel::GEMVS.contains(&Kernel::GemvDot4));
        assert!(Kernel::from_name("gemv_dot4").is_none());
        assert!(!Kernel::GemvDot4.exact() && Kernel::GEMVS.iter().all(|k| k.exact()));
        for gpu in test_gpus() {
            for n_in in [64, 1024, 4096] {
                for format in FORMATS {
                    assert_ne!(
                        Kernel::untuned_gemv(&gpu, format, n_in, false),
                        Kernel::GemvDot4
                    );
                }
            }
            // Even a tuning naming it (an edited cache) leaves Auto on an exact GEMV.
            let mut tuning = crate::gpu::Tuning::default();
            for format in ["q8", "q4"] {
                tuning.gemv.insert(format.into(), "gemv_dot4".into());
            }
            gpu.set_tuning(tuning);
            let q = QuantMatrix::quantize(crate::blocks::QuantFormat::Q4, 4, 64, &[0.5; 256]);
            let m = Matrix::from_quant(&gpu, "w", &q.unwrap()).unwrap();
            let auto = Kernel::auto_gemv(&gpu, &m);
            gpu.set_tuning(crate::gpu::Tuning::default());
            assert!(auto.exact(), "{auto:?}");
        }
    }

    /// What naga writes for gemv_dot4: SPIR-V `OpSDot` where the device grants the
    /// integer dot product capabilities (Vulkan 1.3 or VK_KHR_shader_integer_dot_product,
    /// as lavapipe does), a polyfill of `OpBitFieldSExtract`s without; GLSL a polyfill of
    /// `bitfieldExtract`s. Every back end writes it, so `Kernel::runs` does not ask.
    #[test]
    fn dot4_gemv_translates_to_sdot_or_a_polyfill() {
        use naga::back::spv;
        let source = Shader::MatmulDot4.source();
        let module = naga::front::wgsl::parse_str(source).unwrap();
        let caps = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let flags = naga::valid::ValidationFlags::all();
        let info = naga::valid::Validator::new(flags, caps)
            .validate(&module)
            .unwrap();
        let constants = [("W_FMT", 3.0), ("DOT4_LANES", 1.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let stage = naga::ShaderStage::Compute;
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some((stage, "gemv_dot4")),
            &constants,
        )
        .unwrap();
        let spirv = |dot: bool| {
            let mut options = spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            // As wgpu-hal passes them: the integer dot product's only where the device
            // has it (None would allow every capability).
            let mut caps = vec![spv::Capability::Shader];
            if dot {
                caps.extend([
                    spv::Capability::DotProduct,
                    spv::Capability::DotProductInput4x8BitPacked,
                ]);
            }
            options.capabilities = Some(caps.into_iter().collect());
            let pipeline = spv::PipelineOptions {
                shader_stage: stage,
                entry_point: "gemv_dot4".into(),
            };
            let words = spv::write_vec(&module, &info, &options, Some(&pipeline)).unwrap();
            // Opcodes are the low half of each instruction's first word.
            let mut ops = Vec::new();
            let mut i = 5;
            while i < words.len() {
                ops.push(words[i] & 0xffff);
                i += (words[i] >> 16).max(1) as usize;
            }
            ops
        };
        const OP_SDOT: u32 = 4450;
        const OP_BIT_FIELD_S_EXTRACT: u32 = 202;
        assert!(spirv(true).contains(&OP_SDOT));
        let polyfill = spirv(false);
        assert!(!polyfill.contains(&OP_SDOT));
        assert!(polyfill.contains(&OP_BIT_FIELD_S_EXTRACT));
        let mut glsl = String::new();
        let options = naga::back::glsl::Options {
            version: naga::back::glsl::Version::Desktop(430),
            ..Default::default()
        };
        let pipeline = naga::back::glsl::PipelineOptions {
            shader_stage: stage,
            entry_point: "gemv_dot4".into(),
            multiview: None,
        };
        naga::back::glsl::Writer::new(
            &mut glsl,
            &module,
            &info,
            &options,
            &pipeline,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .unwrap()
        .write()
        .unwrap();
        assert!(glsl.contains("bitfieldExtract(int("), "{glsl}");
    }

    #[test]
    fn cpu_adapter_gemvs_match_cpu() {
        for gpu in test_gpus() {
            let f16 = WeightFormat::F16;
            // gemv_cols: transposed f16, an even n_out; rows past a row block; every
            // epilogue; and the prologues (the decoder's CPU-adapter path).
            for (rows, n_in, n_out) in [(1, 1, 2), (3, 37, 6), (9, 130, 68), (16, 64, 130)] {
                for epi in [Epilogue::Store, Epilogue::Accumulate, Epilogue::SwiGlu] {
                    check(&gpu, Kernel::GemvCols, f16, rows, n_in, n_out, epi);
                }
            }
            check(&gpu, Kernel::GemvCols, f16, 2, 33, 10, Epilogue::Silu);
            let k = Kernel::GemvCols;
            check_prologue(&gpu, k, f16, 3, 64, 70, Epilogue::Store, Pro::NormOut);
            check_prologue(&gpu, k, f16, 9, 256, 34, Epilogue::SwiGlu, Pro::Hadamard);
            check_prologue(&gpu, k, f16, 1, 4096, 6, Epilogue::SwiGlu, Pro::Hadamard);
            check_prologue(&gpu, k, f16, 2, 37, 4, Epilogue::Accumulate, Pro::Norm);
            // gemv_outputs_wide's Hadamard workgroups: halved to 32 for three units of
            // 768 = 12 x 64 inputs, kept at 64 for four rows (the mix's items per
            // invocation within MIX_ITEMS).
            let k = Kernel::GemvOutputsWide;
            for rows in [1, 4] {
                check_prologue(&gpu, k, f16, rows, 768, 6, Epilogue::SwiGlu, Pro::Hadamard);
            }
            assert_eq!(hadamard_cpu_workgroup(3, 4, 768), 32);
            assert_eq!(hadamard_cpu_workgroup(3, 2, 4 * 768), 64);
            assert_eq!(hadamard_cpu_workgroup(2752, 4, 1024), 128);
            assert_eq!(hadamard_cpu_workgroup(688, 4, 256), 32);
            // The GEMM reads the transposed layout too (prefill on CPU adapters); whole
            // 16-output blocks and vec4s of inputs through gemm_direct4_t, with a partial
            // last tile of outputs (80, 144) and of rows.
            let entry = |n_out: usize, n_in: usize, t: bool| {
                gemm_direct4(&test_matrix(&gpu, f16, n_out, n_in, vec![0.0; n_out * n_in], t).0)
            };
            assert_eq!(entry(70, 20, true), None);
            assert_eq!(entry(80, 20, true), Some("gemm_direct4_t"));
            assert_eq!(entry(70, 20, false), None);
            assert_eq!(entry(70, 40, false), Some("gemm_direct4"));
            for (rows, n_in, n_out) in [(37, 19, 70), (65, 33, 130), (37, 20, 80), (70, 64, 144)] {
                check_layout(
                    &gpu,
                    Kernel::Gemm,
                    f16,
                    rows,
                    n_in,
                    n_out,
                    Epilogue::Store,
                    true,
                );
                check_layout(
                    &gpu,
                    Kernel::Gemm,
                    f16,
                    rows,
                    n_in,
                    n_out,
                    Epilogue::SwiGlu,
                    true,
                );
            }
            // gemv_outputs_wide: whole 32-blocks in every format, and narrower rows; units
            // per invocation (GEMV_UNITS) 4 at one or two rows (SwiGLU: 4 and 2), 2 at
            // three, 1 at nine, the last invocation short of them; several workgroups.
            let k = Kernel::GemvOutputsWide;
            for format in FORMATS {
                for (rows, n_in, n_out) in [(1, 32, 1), (2, 32, 131), (3, 64, 9), (9, 96, 67)] {
                    check(&gpu, k, format, rows, n_in, n_out, Epilogue::Store);
                    check(&gpu, k, format, rows, n_in, 2 * n_out, Epilogue::SwiGlu);
                }
            }
            check_narrow_rows(&gpu, k);
            // Each GEMV reads one layout, and says so.
            let w = Matrix::from_f16_bits_transposed(&gpu, "w", &[0; 64], 2, 32).unwrap();
            let x = gpu
                .upload(MemoryCategory::Activations, "x", &[0f32; 32])
                .unwrap();
            let y = gpu.storage(MemoryCategory::Activations, "y", 8).unwrap();
            let mut enc = gpu.encoder("matmul test");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let k = Kernel::GemvOutputs;
            let err = encode_with(&gpu, &mut pass, &w, &x, &y, 1, Epilogue::Store, k).unwrap_err();
            assert!(err.to_string().contains("row-major matrices only"), "{err}");
            let odd = Matrix::from_f16_bits_transposed(&gpu, "w", &[0; 96], 3, 32).unwrap_err();
            assert!(odd.to_string().contains("even number of rows"), "{odd}");
        }
    }

    #[test]
    fn prologues_refuse_what_they_cannot_stage() {
        for gpu in test_gpus().into_iter().take(1) {
            assert!(prologue_fits(&gpu, 16, 256, true));
            assert!(!prologue_fits(&gpu, 17, 256, false), "a GEMM-sized batch");
            assert!(!prologue_fits(&gpu, 1, 4097, false), "a row past the stage");
            assert!(
                !prologue_fits(&gpu, 1, 92, true),
                "no Hadamard matrix of order 92"
            );
            assert!(prologue_fits(&gpu, 1, 96, true), "96 = 12 x 8");
            let w = Matrix::from_f32(&gpu, "w", &[0f32; 92 * 2], 2, 92).unwrap();
            let b = |n: usize| {
                gpu.storage(MemoryCategory::Activations, "b", (n * 4) as u64)
                    .unwrap()
            };
            let (x, y, v, out) = (b(92), b(2), b(92), b(92));
            let prologue = Prologue::HadamardNorm {
                resid: &v,
                gamma: &v,
                beta: &v,
                out: &out,
                weight: &v,
                eps: 1e-5,
                signs: None,
            };
            let mut enc = gpu.encoder("matmul test");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let mut refused = |prologue: Prologue<'_>| {
                let (store, auto) = (Epilogue::Store, Kernel::Auto);
                encode_with_prologue(&gpu, &mut pass, &w, &x, &y, 1, store, auto, prologue)
                    .unwrap_err()
                    .to_string()
            };
            let err = refused(prologue);
            assert!(err.contains("a Walsh-Hadamard size"), "{err}");
            let err = refused(Prologue::Norm {
                weight: &v,
                eps: 1e-5,
                out: Some(&x),
            });
            assert!(err.contains("a buffer of its own"), "{err}");
            // 96 = 12 x 8 fits, but not without H_12's signs.
            let (w96, v96, out96) = (
                Matrix::from_f32(&gpu, "w", &[0f32; 192], 2, 96).unwrap(),
                b(96),
                b(96),
            );
            let no_signs = Prologue::HadamardNorm {
                resid: &v96,
                gamma: &v96,
                beta: &v96,
                out: &out96,
                weight: &v96,
                eps: 1e-5,
                signs: None,
            };
            let (store, auto) = (Epilogue::Store, Kernel::Auto);
            let err =
                encode_with_prologue(&gpu, &mut pass, &w96, &v96, &y, 1, store, auto, no_signs)
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("96 = 12 x 8 needs H_12's signs"), "{err}");
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
    fn wide_gemvs_match_cpu_on_whole_and_padded_blocks() {
        for gpu in test_gpus() {
            let mut kernels = vec![Kernel::GemvWide];
            if gpu.features().subgroup {
                kernels.push(Kernel::GemvSubgroup);
            }
            for k in kernels {
                for format in FORMATS {
                    // One block; rows past one GEMV block; units not filling a workgroup (8).
                    for (rows, n_in, n_out) in [(1, 32, 1), (3, 64, 9), (9, 96, 17), (16, 256, 33)]
                    {
                        check(&gpu, k, format, rows, n_in, n_out, Epilogue::Store);
                    }
                    check(&gpu, k, format, 5, 160, 18, Epilogue::SwiGlu);
                    check(&gpu, k, format, 2, 64, 11, Epilogue::Accumulate);
                }
                check(&gpu, k, WeightFormat::Q4, 6, 128, 38, Epilogue::SwiGlu);
                check(&gpu, k, WeightFormat::F16, 4, 96, 7, Epilogue::Silu);
                check_narrow_rows(&gpu, k);
            }
        }
    }

    /// A wide GEMV `k` on rows that are not whole 32-value blocks (the shipped FFN width
    /// 688 = 21 x 32 + 16: a quantized row's last block padded), against the reference;
    /// rows it cannot read in whole vectors (f32 33, f16 36, q8 42) refused with the
    /// format's multiple, not misread.
    fn check_narrow_rows(gpu: &Gpu, k: Kernel) {
        use WeightFormat::{F16, F32, Q4, Q8};
        for (format, n_in) in [
            (F32, 36),
            (F16, 40),
            (F16, 688),
            (Q8, 40),
            (Q4, 44),
            (Q4, 688),
        ] {
            assert!(k.runs(gpu, format, n_in, false), "{k:?} {format:?} {n_in}");
            check(gpu, k, format, 3, n_in, 9, Epilogue::Store);
            check(gpu, k, format, 2, n_in, 10, Epilogue::SwiGlu);
            check(gpu, k, format, 1, n_in, 5, Epilogue::Accumulate);
        }
        for (format, n_in, want) in [
            (F32, 33, "multiple of 4 for f32 weights, not 33"),
            (F16, 36, "multiple of 8 for f16 weights, not 36"),
            (Q8, 42, "multiple of 4 for q8 weights, not 42"),
        ] {
            assert!(!k.runs(gpu, format, n_in, false), "{k:?} {format:?} {n_in}");
            let (w, _) = test_matrix(gpu, format, 2, n_in, vec![0.5; 2 * n_in], false);
            let x = gpu
                .upload(MemoryCategory::Activations, "x", &vec![0f32; n_in])
                .unwrap();
            let y = gpu.storage(MemoryCategory::Activations, "y", 8).unwrap();
            let mut enc = gpu.encoder("matmul test");
            let mut pass = enc.begin_compute_pass(&Default::default());
            let err = encode_with(gpu, &mut pass, &w, &x, &y, 1, Epilogue::Store, k).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
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
