//! Every pipeline the host builds, through naga's four native back ends: MSL (Metal),
//! HLSL (DX12), SPIR-V (Vulkan) and GLSL (GL), the translations wgpu makes on those
//! platforms. The SPIR-V is checked by `spirv-val` and the GLSL by `glslangValidator`
//! (Debian `spirv-tools` and `glslang-tools`; `cargo xtask test` installs them). Without
//! them the external checks are skipped with a message, except under `CI=true`, where a
//! missing validator fails. No validator exists here for MSL or HLSL (no Metal compiler, no
//! DXC): those must translate without error.
//!
//! Which pipelines: a WGSL module is compiled with `override` constants that depend on
//! the adapter (subgroups, CPU or GPU, workgroup memory) and on the workload (widths, head
//! sizes, batch rows). The test runs the host's workloads on wgpu's no-op backend, which
//! compiles pipelines and runs nothing, posing as each kind of adapter walsh meets, and
//! translates every pipeline key those runs built ([`Gpu::pipeline_keys`]): the three
//! shipped models and random models of every variant (dense/Hadamard output, dense/
//! identity/residual-MLP query, f16/f32/q8/q4 weights, f16/f32 KV cache, batches of 1 to 16, head
//! sizes 16 to 256, contexts past the split-decode threshold), the `walsh bench` suites,
//! and `walsh wht` at every supported width with every kernel, plain and with the
//! decoder's fused epilogue.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;

use naga::back::PipelineConstants;
use naga::back::pipeline_constants::process_overrides;
use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};
use walsh::bench::{self, BenchOptions, Suite, report::Environment};
use walsh::gpu::{Gpu, MemoryCategory, PipelineKey, Shader, Tuning};
use walsh::model::generate::{GenerateOptions, encode_text, generate};
use walsh::model::gpu::GpuDecoder;
use walsh::model::init::random_model;
use walsh::model::weights::Model;
use walsh::model::{AttnOutput, Config, Query};
use walsh::ops::WeightFormat;
use walsh::ops::attention::KvFormat;
use walsh::ops::hadamard::construct::CORE_ORDERS;
use walsh::ops::hadamard::{Hadamard, WhtEpilogue, WhtOptions, WhtPath, cpu::WhtSize};
use walsh::ops::matmul::Kernel;
use walsh::ops::sample::SamplingParams;

/// A kind of adapter, as the no-op backend poses it.
struct Profile {
    name: &'static str,
    device_type: wgpu::DeviceType,
    subgroup: Option<u32>,
    /// Workgroup memory: 16 KiB is the WebGPU default, software adapters have 32 KiB.
    workgroup_storage: u32,
}

/// The adapters walsh meets: GPUs with subgroups of 8 (Intel), 32 (NVIDIA, Apple) and 64
/// (AMD), GPUs without them and with WebGPU's default 16 KiB of workgroup memory (the
/// browser, GL), and CPU adapters: lavapipe (subgroups of 8), SwiftShader's Vulkan driver
/// (4), SwiftShader's WebGPU and llvmpipe's GL (none). The subgroup size decides where the
/// WHT shuffles; CPU adapters take other GEMV and WHT kernels.
const PROFILES: [Profile; 7] = [
    Profile {
        name: "GPU, subgroups of 8",
        device_type: wgpu::DeviceType::IntegratedGpu,
        subgroup: Some(8),
        workgroup_storage: 32768,
    },
    Profile {
        name: "GPU, subgroups of 32",
        device_type: wgpu::DeviceType::DiscreteGpu,
        subgroup: Some(32),
        workgroup_storage: 32768,
    },
    Profile {
        name: "GPU, subgroups of 64",
        device_type: wgpu::DeviceType::DiscreteGpu,
        subgroup: Some(64),
        workgroup_storage: 65536,
    },
    Profile {
        name: "GPU without subgroups (WebGPU, GL)",
        device_type: wgpu::DeviceType::IntegratedGpu,
        subgroup: None,
        workgroup_storage: 16384,
    },
    Profile {
        name: "CPU adapter, subgroups of 8 (lavapipe)",
        device_type: wgpu::DeviceType::Cpu,
        subgroup: Some(8),
        workgroup_storage: 32768,
    },
    Profile {
        name: "CPU adapter, subgroups of 4 (SwiftShader Vulkan)",
        device_type: wgpu::DeviceType::Cpu,
        subgroup: Some(4),
        workgroup_storage: 32768,
    },
    Profile {
        name: "CPU adapter without subgroups (SwiftShader WebGPU, llvmpipe GL)",
        device_type: wgpu::DeviceType::Cpu,
        subgroup: None,
        workgroup_storage: 32768,
    },
];

fn noop_gpu(p: &Profile) -> Gpu {
    let mut features = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
    if p.subgroup.is_some() {
        features |= wgpu::Features::SUBGROUP;
    }
    let limits = wgpu::Limits {
        max_compute_workgroup_storage_size: p.workgroup_storage,
        ..wgpu::Limits::default()
    };
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::NOOP;
    desc.backend_options.noop = wgpu::NoopBackendOptions {
        enable: true,
        limits: Some(limits),
        features: Some(features),
        device_type: Some(p.device_type),
        subgroup_min_size: p.subgroup,
        subgroup_max_size: p.subgroup,
    };
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .expect("the no-op backend offers an adapter");
    pollster::block_on(Gpu::from_adapter(adapter, 0)).expect("a no-op device")
}

fn config(d: usize, heads: usize, layers: usize, context: usize) -> Config {
    Config {
        attn_output: AttnOutput::Hadamard,
        ..common::small_config(d, layers, heads, context)
    }
}

/// Prefill and decode `prompts`, then score a window (the logits path of `walsh eval`).
fn run_decoder(gpu: &Gpu, model: &Model, prompts: &[Vec<u32>], new: usize, kv: KvFormat) {
    let context = model.config.max_position_embeddings;
    let mut dec = GpuDecoder::new(gpu, model, prompts.len(), context, kv).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
    let sampled = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: 1,
    };
    for sampling in [greedy, sampled] {
        let options = GenerateOptions::new(new, sampling);
        generate(&mut dec, prompts, &options, |_| ControlFlow::Continue(())).unwrap();
    }
    let text: Vec<u32> = (0..context.min(64) as u32).map(|i| i % 200 + 32).collect();
    walsh::model::eval::evaluate(&mut dec, &text, |_, _| {}).unwrap();
}

/// Runs the host's workloads on `gpu` (see the file's header).
fn workloads(gpu: &Gpu) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let long_prompt = encode_text(&"ROMEO. ".repeat(12));
    for name in [
        "shakespeare-hadamard",
        "shakespeare-dense",
        "shakespeare-hadamard-qid",
    ] {
        let model = Model::load(&root.join("models").join(name)).unwrap();
        run_decoder(gpu, &model, &[encode_text("ROMEO.")], 40, KvFormat::F16);
        run_decoder(
            gpu,
            &model,
            std::slice::from_ref(&long_prompt),
            8,
            KvFormat::F32,
        );
    }
    // Every variant, f16 and f32 weights, a context past one split-decode chunk.
    for (attn_output, query) in [
        (AttnOutput::Dense, Query::Dense),
        (AttnOutput::Hadamard, Query::Dense),
        (AttnOutput::Hadamard, Query::Identity),
        (AttnOutput::Hadamard, Query::ResidualMlp),
        (AttnOutput::Dense, Query::Identity),
    ] {
        for format in [
            WeightFormat::F16,
            WeightFormat::F32,
            WeightFormat::Q8,
            WeightFormat::Q4,
        ] {
            let c = Config {
                attn_output,
                query,
                ..config(128, 2, 1, 320)
            };
            let model = random_model(&c, 1, format).unwrap();
            let prompt: Vec<u32> = (0..300).map(|i| i % 251).collect();
            // The cache formats change no matmul pipeline: both with the plain formats.
            let caches: &[KvFormat] = match format {
                WeightFormat::F16 | WeightFormat::F32 => &[KvFormat::F16, KvFormat::F32],
                _ => &[KvFormat::F16],
            };
            for &kv in caches {
                run_decoder(gpu, &model, &[prompt.clone(), vec![7, 8]], 16, kv);
            }
        }
    }
    // Each decode GEMV a measured tuning may pick (walsh::bench::tune), with the
    // decoder's prologues and epilogues: dense and Hadamard W_O, f16 (gemv_cols then
    // stores it transposed) and q4, one sequence and a batch.
    for kernel in Kernel::GEMVS {
        if kernel == Kernel::GemvSubgroup && !gpu.features().subgroup {
            continue;
        }
        let mut tuning = Tuning::default();
        for format in ["f32", "f16", "q8", "q4"] {
            tuning.gemv.insert(format.into(), kernel.name().into());
        }
        gpu.set_tuning(tuning);
        for attn_output in [AttnOutput::Dense, AttnOutput::Hadamard] {
            for format in [WeightFormat::F16, WeightFormat::Q4] {
                let c = Config {
                    attn_output,
                    ..config(128, 2, 1, 32)
                };
                let model = random_model(&c, 1, format).unwrap();
                run_decoder(gpu, &model, &[vec![1, 2, 3], vec![4]], 3, KvFormat::F16);
            }
        }
        gpu.set_tuning(Tuning::default());
    }
    // The int8-activation GEMV (`walsh tune` times it; nothing picks it): q8 and q4, one
    // row and a block of rows, the decoder's prologues and epilogues.
    dot4_sweep(gpu);
    // Hadamard W_O at widths m x 2^k (the GEMVs' Hadamard prologue with an m x m mix on
    // GPUs, the tiled WHT on CPU adapters) and rotated caches of head sizes m x 2^k.
    for (d, heads, kv) in [
        (96, 2, KvFormat::Q8Rot),
        (576, 8, KvFormat::Q4Rot),
        (576, 12, KvFormat::Q8Rot),
    ] {
        let c = Config {
            attn_output: AttnOutput::Hadamard,
            ..config(d, heads, 1, 32)
        };
        let model = random_model(&c, 4, WeightFormat::F16).unwrap();
        run_decoder(gpu, &model, &[vec![1, 2, 3], vec![4]], 3, kv);
    }
    // Head sizes, and batches of 1 to 16 sequences (the GEMV's row counts).
    for heads in [1, 2, 4, 8, 16] {
        let model = random_model(&config(256, heads, 1, 64), 2, WeightFormat::F16).unwrap();
        run_decoder(gpu, &model, &[encode_text("To be")], 4, KvFormat::F16);
    }
    for format in [WeightFormat::F16, WeightFormat::Q8, WeightFormat::Q4] {
        let small = random_model(&config(64, 4, 1, 32), 3, format).unwrap();
        for batch in 1..=16 {
            let prompts: Vec<Vec<u32>> = (0..batch).map(|i| vec![i as u32 + 1]).collect();
            run_decoder(gpu, &small, &prompts, 3, KvFormat::F16);
        }
    }
    // `walsh bench`, every suite at its quick sizes: the full sizes build no other pipeline
    // (their widths are in the sweep below, their batches and contexts in the decoders
    // above), and on this backend they cost a minute of host work per adapter.
    let options = BenchOptions::new(vec![Suite::Kernels, Suite::Decoder, Suite::Paper], true);
    pollster::block_on(bench::run(
        gpu,
        &options,
        Environment::native(),
        &mut |_, _, _| {},
    ))
    .unwrap();
    // `walsh wht`: every supported width with every kernel, plain and with the decoder's
    // fused epilogue.
    wht_sweep(gpu);
}

fn dot4_sweep(gpu: &Gpu) {
    use walsh::blocks::QuantMatrix;
    use walsh::ops::Matrix;
    use walsh::ops::matmul::{Epilogue, Prologue, encode_with_prologue};
    let n_in = 128;
    if !Kernel::GemvDot4.runs(gpu, walsh::ops::WeightFormat::Q8, n_in, false) {
        return;
    }
    let buf = |label, n: usize| {
        gpu.storage(MemoryCategory::Activations, label, (n * 4) as u64)
            .unwrap()
    };
    let rows = 4;
    let (x, y, out, v) = (
        buf("x", rows * n_in),
        buf("y", rows * 64),
        buf("out", rows * n_in),
        buf("v", rows * n_in),
    );
    let signs = gpu.spare_uniform();
    for format in [WeightFormat::Q8, WeightFormat::Q4] {
        let values = vec![0.25f32; 64 * n_in];
        let q = QuantMatrix::quantize(format.quant().unwrap(), 64, n_in, &values).unwrap();
        let w = Matrix::from_quant(gpu, "w", &q).unwrap();
        let mut encoder = gpu.encoder("dot4 sweep");
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for r in [1, rows] {
                let prologues = [
                    (Prologue::None, Epilogue::Accumulate),
                    (
                        Prologue::Norm {
                            weight: &v,
                            eps: 1e-5,
                            out: Some(&out),
                        },
                        Epilogue::Store,
                    ),
                    (
                        Prologue::HadamardNorm {
                            resid: &v,
                            gamma: &v,
                            beta: &v,
                            out: &out,
                            weight: &v,
                            eps: 1e-5,
                            signs: Some(signs),
                        },
                        Epilogue::SwiGlu,
                    ),
                ];
                for (pro, epi) in prologues {
                    let k = Kernel::GemvDot4;
                    encode_with_prologue(gpu, &mut pass, &w, &x, &y, r, epi, k, pro).unwrap();
                }
            }
        }
        gpu.submit_and_wait(encoder).unwrap();
    }
}

fn wht_sweep(gpu: &Gpu) {
    let h = Hadamard::new(gpu).unwrap();
    let mut widths: Vec<usize> = (1..=15).map(|k| 1 << k).collect();
    for m in [12, 20, 28] {
        widths.extend((0..12).map(|k| m << k));
    }
    // Every other core order at the sizes that change a kernel's shape: m x 1, m x 2,
    // the largest single pass (n <= 4096) and the largest.
    for m in CORE_ORDERS
        .into_iter()
        .filter(|m| ![12, 20, 28].contains(m))
    {
        let top = |limit: usize| m << (limit / m).ilog2();
        widths.extend([m, 2 * m, top(4096), top(32768)]);
    }
    widths.sort_unstable();
    widths.dedup();
    widths.retain(|&n| WhtSize::new(n).is_ok());
    let rows = 2;
    let mut paths = vec![WhtPath::Auto, WhtPath::Shared];
    if gpu.features().subgroup {
        paths.push(WhtPath::Subgroup);
    }
    for n in widths {
        let buf = |label| {
            gpu.storage(MemoryCategory::Activations, label, (rows * n * 4) as u64)
                .unwrap()
        };
        let (x, y, resid, gamma, beta) = (buf("x"), buf("y"), buf("r"), buf("g"), buf("b"));
        let mut encoder = gpu.encoder("wht sweep");
        h.encode_naive(&mut encoder, &x, &y, rows, n).unwrap();
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let mut all = paths.clone();
            if n <= 4096 {
                all.push(WhtPath::Rows);
            }
            for &path in &all {
                for epilogue in [
                    WhtEpilogue::default(),
                    WhtEpilogue {
                        gamma: Some(&gamma),
                        beta: Some(&beta),
                        resid: Some(&resid),
                    },
                ] {
                    h.encode(&mut pass, &x, &y, rows, n, WhtOptions { epilogue, path })
                        .unwrap();
                }
            }
        }
        gpu.submit_and_wait(encoder).unwrap();
    }
}

/// Every pipeline key the workloads build on every profile.
fn collect_keys() -> Vec<PipelineKey> {
    let mut keys: HashMap<PipelineKey, ()> = HashMap::new();
    // The profiles are independent: run them side by side.
    let built: Vec<Vec<PipelineKey>> = std::thread::scope(|s| {
        let runs: Vec<_> = PROFILES
            .iter()
            .map(|p| {
                s.spawn(move || {
                    let gpu = noop_gpu(p);
                    workloads(&gpu);
                    gpu.pipeline_keys()
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("workloads"))
            .collect()
    });
    for (p, built) in PROFILES.iter().zip(built) {
        eprintln!("{}: {} pipelines", p.name, built.len());
        keys.extend(built.into_iter().map(|k| (k, ())));
    }
    let mut keys: Vec<PipelineKey> = keys.into_keys().collect();
    keys.sort_by_key(PipelineKey::label);
    keys
}

/// A module parsed and validated once, under the capabilities it is compiled with.
struct Parsed {
    module: naga::Module,
    info: naga::valid::ModuleInfo,
    subgroup: bool,
}

fn capabilities(subgroup: bool) -> Capabilities {
    let caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if subgroup {
        caps | Capabilities::SUBGROUP
    } else {
        caps
    }
}

fn validator(subgroup: bool) -> Validator {
    let mut v = Validator::new(ValidationFlags::all(), capabilities(subgroup));
    if subgroup {
        v.subgroup_stages(ShaderStages::COMPUTE);
        v.subgroup_operations(SubgroupOperationSet::all());
    }
    v
}

fn parse(shader: Shader) -> Parsed {
    let source = shader.source();
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{}: {}", shader.name(), e.emit_to_string(source)));
    let subgroup = shader
        .required_features()
        .contains(wgpu::Features::SUBGROUP);
    let info = validator(subgroup)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", shader.name(), e.emit_to_string(source)));
    Parsed {
        module,
        info,
        subgroup,
    }
}

/// One pipeline's four translations.
struct Translated {
    label: String,
    spirv: Vec<u32>,
    glsl: String,
}

/// Resolves `key`'s overrides and writes MSL, HLSL, SPIR-V and GLSL for its entry point;
/// an error names the back end.
fn translate(parsed: &Parsed, key: &PipelineKey) -> Result<Translated, String> {
    let label = key.label();
    let constants: PipelineConstants = key
        .constants
        .iter()
        .map(|(k, v)| (k.to_string(), f64::from(*v)))
        .collect();
    let stage = naga::ShaderStage::Compute;
    let (module, info) = process_overrides(
        &parsed.module,
        &parsed.info,
        Some((stage, key.entry)),
        &constants,
    )
    .map_err(|e| format!("overrides: {e}"))?;
    let (module, info) = (module.as_ref(), info.as_ref());
    // What wgpu does for shaders it does not trust: bounds-checked buffer and array access.
    let checks = naga::proc::BoundsCheckPolicies {
        index: naga::proc::BoundsCheckPolicy::ReadZeroSkipWrite,
        buffer: naga::proc::BoundsCheckPolicy::ReadZeroSkipWrite,
        image_load: naga::proc::BoundsCheckPolicy::ReadZeroSkipWrite,
        binding_array: naga::proc::BoundsCheckPolicy::ReadZeroSkipWrite,
    };
    let entry = key.entry.to_string();

    let msl_options = naga::back::msl::Options {
        lang_version: (2, 4),
        bounds_check_policies: checks,
        fake_missing_bindings: true,
        ..Default::default()
    };
    let msl_pipeline = naga::back::msl::PipelineOptions {
        entry_point: Some((stage, entry.clone())),
        ..Default::default()
    };
    naga::back::msl::write_string(module, info, &msl_options, &msl_pipeline)
        .map_err(|e| format!("MSL: {e}"))?;

    let hlsl_options = naga::back::hlsl::Options {
        // Wave intrinsics (subgroups) need shader model 6.0.
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        fake_missing_bindings: true,
        ..Default::default()
    };
    let hlsl_pipeline = naga::back::hlsl::PipelineOptions {
        entry_point: Some((stage, entry.clone())),
    };
    let mut hlsl = String::new();
    naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_options, &hlsl_pipeline)
        .write(module, info, None)
        .map_err(|e| format!("HLSL: {e}"))?;

    let spv_options = naga::back::spv::Options {
        // Subgroup operations are SPIR-V 1.3 (Vulkan 1.1).
        lang_version: if parsed.subgroup { (1, 3) } else { (1, 0) },
        bounds_check_policies: checks,
        ..Default::default()
    };
    let spv_pipeline = naga::back::spv::PipelineOptions {
        shader_stage: stage,
        entry_point: entry.clone(),
    };
    let spirv = naga::back::spv::write_vec(module, info, &spv_options, Some(&spv_pipeline))
        .map_err(|e| format!("SPIR-V: {e}"))?;

    let glsl_options = naga::back::glsl::Options {
        // Compute shaders need desktop GLSL 4.30 (or ES 3.10).
        version: naga::back::glsl::Version::Desktop(430),
        ..Default::default()
    };
    let glsl_pipeline = naga::back::glsl::PipelineOptions {
        shader_stage: stage,
        entry_point: entry,
        multiview: None,
    };
    let mut glsl = String::new();
    naga::back::glsl::Writer::new(
        &mut glsl,
        module,
        info,
        &glsl_options,
        &glsl_pipeline,
        checks,
    )
    .and_then(|mut w| w.write())
    .map_err(|e| format!("GLSL: {e}"))?;

    Ok(Translated { label, spirv, glsl })
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `tool` runs; under CI a missing tool fails the test.
fn have(tool: &str, package: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        assert!(
            !ci(),
            "{tool} is missing (apt-get install {package}; cargo xtask test installs it)"
        );
        eprintln!("skipping the {tool} checks: {tool} is missing (apt-get install {package})");
    }
    found
}

/// Runs `check` on each file, two at a time, and returns the failures.
fn run_validator(
    files: &[(String, PathBuf)],
    check: impl Fn(&Path) -> Command + Sync,
) -> Vec<String> {
    let chunk = files.len().div_ceil(2).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                let check = &check;
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for (label, path) in part {
                        let out = check(path).output().expect("the validator runs");
                        if !out.status.success() {
                            failed.push(format!(
                                "{label} ({}): {}{}",
                                path.display(),
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            ));
                        }
                    }
                    failed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("validator thread"))
            .collect()
    })
}

#[test]
fn every_pipeline_translates_to_msl_hlsl_spirv_and_glsl() {
    let keys = collect_keys();
    let mut parsed: HashMap<Shader, Parsed> = HashMap::new();
    let mut per_module: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut out = Vec::new();
    for key in &keys {
        let p = parsed
            .entry(key.shader)
            .or_insert_with(|| parse(key.shader));
        *per_module.entry(key.shader.name()).or_default() += 1;
        match translate(p, key) {
            Ok(t) => out.push((t, p.subgroup)),
            Err(e) => failures.push(format!("{}: {e}", key.label())),
        }
    }
    // Every module the host has is among them (a module no workload builds would go
    // untranslated).
    for shader in Shader::ALL {
        assert!(
            per_module.contains_key(shader.name()),
            "no workload built a pipeline of {}",
            shader.name()
        );
    }
    eprintln!("{} pipelines x 4 back ends ({per_module:?})", keys.len());
    assert!(
        failures.is_empty(),
        "translation failed:\n{}",
        failures.join("\n")
    );

    let dir = tempfile::tempdir().unwrap();
    let mut spv_files = Vec::new();
    let mut glsl_files = Vec::new();
    for (i, (t, subgroup)) in out.iter().enumerate() {
        let spv = dir.path().join(format!("{i}.spv"));
        std::fs::write(&spv, bytemuck::cast_slice::<u32, u8>(&t.spirv)).unwrap();
        spv_files.push((format!("{} (subgroup: {subgroup})", t.label), spv));
        let comp = dir.path().join(format!("{i}.comp"));
        std::fs::write(&comp, &t.glsl).unwrap();
        glsl_files.push((t.label.clone(), comp));
    }
    let mut failed = Vec::new();
    if have("spirv-val", "spirv-tools") {
        failed.extend(run_validator(&spv_files, |path| {
            let mut c = Command::new("spirv-val");
            // SPIR-V 1.3 (the subgroup modules) is Vulkan 1.1's; 1.0 validates there too.
            c.args(["--target-env", "vulkan1.1"]).arg(path);
            c
        }));
        eprintln!("spirv-val checked {} modules", spv_files.len());
    }
    if have("glslangValidator", "glslang-tools") {
        failed.extend(run_validator(&glsl_files, |path| {
            let mut c = Command::new("glslangValidator");
            c.arg(path);
            c
        }));
        eprintln!("glslangValidator checked {} shaders", glsl_files.len());
    }
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn a_broken_translation_is_caught() {
    // The checks above must be able to fail: a constant the module does not declare is an
    // error, and so is SPIR-V that is not valid.
    let parsed = parse(Shader::Copy);
    let bad = PipelineKey::new(Shader::Copy, "copy_vec4").with("NO_SUCH_CONSTANT", 1);
    assert!(translate(&parsed, &bad).is_err());
    if have("spirv-val", "spirv-tools") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.spv");
        let good = PipelineKey::new(Shader::Copy, "copy_vec4").with("COPY_WG", 64);
        let mut words = translate(&parsed, &good).unwrap().spirv;
        // Drop the last instruction (OpFunctionEnd): the module no longer closes.
        words.truncate(words.len() - 1);
        std::fs::write(&path, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
        let failed = run_validator(&[("truncated".into(), path)], |p| {
            let mut c = Command::new("spirv-val");
            c.arg(p);
            c
        });
        assert_eq!(failed.len(), 1, "spirv-val accepted a truncated module");
    }
    if have("glslangValidator", "glslang-tools") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.comp");
        std::fs::write(&path, "#version 430\nvoid main() { undefined_name = 1; }\n").unwrap();
        let failed = run_validator(&[("bad".into(), path)], |p| {
            let mut c = Command::new("glslangValidator");
            c.arg(p);
            c
        });
        assert_eq!(failed.len(), 1, "glslangValidator accepted a broken shader");
    }
}
