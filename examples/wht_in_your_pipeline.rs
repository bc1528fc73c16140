//! walsh's WHT inside your own wgpu program: you open the device, own the buffers and the
//! command encoder; walsh records its kernel (with the fused affine epilogue
//! `out = gamma * H x / sqrt(n) + beta`, the layer that replaces W_O in a
//! Hadamard-projection transformer) into your compute pass, right after a dispatch of
//! your own shader, and you submit and read back as usual. Checked against the CPU.
//!
//! ```text
//! [WALSH_ADAPTER=vulkan|gl|INDEX|NAME] cargo run --example wht_in_your_pipeline
//! ```
//!
//! Exits 0 when every output matches, 1 when one does not, 77 (the "skipped" code of
//! automake and meson) when there is no adapter.

use std::process::ExitCode;

use wgpu::util::DeviceExt as _;

use walsh::gpu::{AdapterSelector, Gpu, MemoryCategory, adapter};
use walsh::ops::hadamard::{Hadamard, WhtEpilogue, WhtOptions, WhtPath, WhtSize, cpu};

/// 4 rows of 576 = 36 x 16 (the width of SmolLM2-135M).
const ROWS: usize = 4;
const N: usize = 576;
const TOLERANCE: f32 = 1e-5;

/// Your own kernel: x = 2 raw - 1.
const PREPARE: &str = "
@group(0) @binding(0) var<storage, read> raw: array<f32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn prepare(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x < arrayLength(&x) {
        x[id.x] = 2.0 * raw[id.x] - 1.0;
    }
}
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::NoAdapter(e)) => {
            eprintln!("wht_in_your_pipeline: no adapter to run on: {e}");
            ExitCode::from(77)
        }
        Err(Failure::Check(e)) => {
            eprintln!("wht_in_your_pipeline: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    NoAdapter(String),
    Check(String),
}

fn no_adapter(e: impl std::fmt::Display) -> Failure {
    Failure::NoAdapter(e.to_string())
}

fn check(e: impl std::fmt::Display) -> Failure {
    Failure::Check(e.to_string())
}

fn run() -> Result<(), Failure> {
    // --- Your setup: instance, adapter, device, queue, with wgpu's default limits. ------
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle().with_env());
    // Any adapter will do; walsh's listing and choice honour `WALSH_ADAPTER` as its CLI does.
    let wanted = std::env::var("WALSH_ADAPTER").unwrap_or_default();
    let selector: AdapterSelector = wanted.parse().map_err(check)?;
    let adapter = adapter::select(adapter::enumerate(&instance), &selector).map_err(no_adapter)?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("your device"),
        ..Default::default()
    }))
    .map_err(no_adapter)?;

    // --- walsh on your device: device and queue are handles, walsh keeps clones. --------
    let gpu = Gpu::from_device(&adapter, device.clone(), queue.clone());
    println!("adapter: {}", gpu.describe());
    let wht = Hadamard::new(&gpu).map_err(check)?;

    // --- Your buffers. --------------------------------------------------------------------
    let raw: Vec<f32> = (0..ROWS * N)
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    let gamma: Vec<f32> = (0..N).map(|i| 0.5 + (i % 5) as f32 * 0.25).collect();
    let beta: Vec<f32> = (0..N).map(|i| (i % 3) as f32 * 0.1 - 0.1).collect();
    let init = |label, data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let empty = |label, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (ROWS * N * 4) as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    let raw_buf = init("raw", &raw);
    let gamma_buf = init("gamma", &gamma);
    let beta_buf = init("beta", &beta);
    let x_buf = empty("x", wgpu::BufferUsages::STORAGE);
    let out_buf = empty(
        "out",
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    );
    let staging = empty(
        "staging",
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    // walsh's kernels take GpuBuffers: your buffers (clones of the handles), counted in
    // walsh's memory report while they live.
    let track = |b: &wgpu::Buffer, c| gpu.track(b.clone(), c);
    let (x, out) = (
        track(&x_buf, MemoryCategory::Activations),
        track(&out_buf, MemoryCategory::Activations),
    );
    let (g, b) = (
        track(&gamma_buf, MemoryCategory::Weights),
        track(&beta_buf, MemoryCategory::Weights),
    );

    // --- Your pipeline. -------------------------------------------------------------------
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("prepare"),
        source: wgpu::ShaderSource::Wgsl(PREPARE.into()),
    });
    let prepare = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("prepare"),
        layout: None,
        module: &module,
        entry_point: Some("prepare"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("prepare"),
        layout: &prepare.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: raw_buf.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: x_buf.as_entire_binding(),
            },
        ],
    });

    // --- One encoder: your dispatch, walsh's, your copy; one submission. ----------------
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&prepare);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups((ROWS * N).div_ceil(64) as u32, 1, 1);
        // out = gamma * H x / sqrt(n) + beta, recorded into the same pass.
        let options = WhtOptions {
            epilogue: WhtEpilogue {
                gamma: Some(&g),
                beta: Some(&b),
                resid: None,
            },
            path: WhtPath::Auto,
        };
        wht.encode(&mut pass, &x, &out, ROWS, N, options)
            .map_err(check)?;
    }
    encoder.copy_buffer_to_buffer(&out_buf, 0, &staging, 0, (ROWS * N * 4) as u64);
    queue.submit([encoder.finish()]);
    let (mapped, on_mapped) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = mapped.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(check)?;
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(check(e));
    }
    on_mapped.recv().map_err(check)?.map_err(check)?;
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).map_err(check)?);

    // --- The CPU computation: gamma * H x / sqrt(n) + beta, x = 2 raw - 1, in f64. -------
    let size = WhtSize::new(N).expect("576 = 36 x 16 is a Walsh–Hadamard size");
    let mut max_err = 0f32;
    for (raw_row, got_row) in raw.chunks_exact(N).zip(got.chunks_exact(N)) {
        let mut y: Vec<f64> = raw_row.iter().map(|&r| (2.0 * r - 1.0) as f64).collect();
        cpu::fwht(&mut y, size);
        for i in 0..N {
            let want = gamma[i] as f64 * y[i] + beta[i] as f64;
            max_err = max_err.max((got_row[i] as f64 - want).abs() as f32);
        }
    }
    println!("{ROWS} rows of n = {N} with gamma and beta: max |gpu - cpu| = {max_err:.3e}");
    if max_err > TOLERANCE {
        return Err(check(format!("error above {TOLERANCE:e}")));
    }
    Ok(())
}
