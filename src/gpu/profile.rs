//! Times every dispatch of a [`Recording`]: what `walsh profile` and the bench report show
//! of a decode step, to see where its time goes.
//!
//! Three methods, the best the device has: timestamps between the dispatches of one pass
//! (TIMESTAMP_QUERY_INSIDE_PASSES: the step as it runs), a pass per dispatch with
//! timestamps at its ends (TIMESTAMP_QUERY; a pass boundary may add a little), or the host
//! clock around a submission of each dispatch alone (which includes the submission). The
//! step's wall time, its whole recording in one pass submitted and waited for, comes with
//! it: the gap between the two is launch, barrier and submission cost. The host's part of
//! the wall time, encoding the pass, is timed too: where it is most of the gap, the host
//! is what bounds a GPU that runs the dispatches faster than they are encoded.

use web_time::Instant;

use super::{Gpu, GpuTimer, Recording, Result};

/// How the dispatches were timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimingMethod {
    /// Timestamps between the dispatches of one compute pass.
    InsidePass,
    /// One compute pass per dispatch, timestamps at its beginning and end.
    PassPerDispatch,
    /// The host clock around submitting each dispatch alone and waiting for it.
    WallClock,
}

impl TimingMethod {
    pub fn describe(self) -> &'static str {
        match self {
            TimingMethod::InsidePass => "timestamps between the dispatches of one pass",
            TimingMethod::PassPerDispatch => "a pass per dispatch, timestamps at its ends",
            TimingMethod::WallClock => "host clock around each dispatch submitted alone",
        }
    }
}

/// One timed dispatch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DispatchTime {
    /// The pipeline: `shader:entry{constants}`.
    pub kernel: String,
    pub grid: [u32; 3],
    /// Storage bytes the dispatch binds: an upper bound of what it moves (a KV cache is
    /// bound whole, though a step reads only the positions it attends to).
    pub bytes: u64,
    /// Median over the repeats.
    pub seconds: f64,
}

/// A recording timed dispatch by dispatch, and as a whole.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordingTime {
    pub method: TimingMethod,
    pub dispatches: Vec<DispatchTime>,
    /// Median host time of the whole recording in one pass, submitted and waited for.
    pub wall_seconds: f64,
    /// Median host time of encoding that pass (the start of each wall time): wgpu's
    /// validation and the driver's command recording, before the submission.
    #[serde(default)]
    pub encode_seconds: f64,
}

impl RecordingTime {
    /// The dispatches' times added up.
    pub fn sum_seconds(&self) -> f64 {
        self.dispatches.iter().map(|d| d.seconds).sum()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Runs `rec` once, in one pass, and waits for it.
pub async fn run_recording(gpu: &Gpu, rec: &Recording) -> Result<()> {
    gpu.finish(whole_pass(gpu, rec, "recording")).await
}

/// `rec`'s dispatches encoded in one compute pass.
fn whole_pass(gpu: &Gpu, rec: &Recording, label: &str) -> wgpu::CommandEncoder {
    let mut encoder = gpu.encoder(label);
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for d in &rec.dispatches {
            d.encode(&mut pass);
        }
    }
    encoder
}

/// Times `rec` on `gpu`, `repeats` times (at least one), after one untimed run that
/// compiles and warms what it needs. Replaying a recording repeats its writes, so it
/// must be idempotent (a decode step writes the same KV-cache slot each time).
pub async fn time_recording(gpu: &Gpu, rec: &Recording, repeats: usize) -> Result<RecordingTime> {
    let repeats = repeats.max(1);
    let n = rec.dispatches.len();
    let features = gpu.features();
    let method = if features.timestamp_inside_passes {
        TimingMethod::InsidePass
    } else if features.timestamp_query {
        TimingMethod::PassPerDispatch
    } else {
        TimingMethod::WallClock
    };
    let whole = |label: &str| whole_pass(gpu, rec, label);
    gpu.finish(whole("profile warm-up")).await?;
    let mut walls = Vec::with_capacity(repeats);
    let mut encodes = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        let encoder = whole("profile step");
        encodes.push(start.elapsed().as_secs_f64());
        gpu.finish(encoder).await?;
        walls.push(start.elapsed().as_secs_f64());
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(repeats); n];
    for _ in 0..repeats {
        match method {
            TimingMethod::InsidePass => {
                // n + 1 stamps: before each dispatch and after the last.
                let Some(timer) = GpuTimer::new(gpu, (n as u32 + 2) / 2)? else {
                    unreachable_timer()?
                };
                let mut encoder = gpu.encoder("profile");
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    for (i, d) in rec.dispatches.iter().enumerate() {
                        timer.write_inside(&mut pass, i as u32)?;
                        d.encode(&mut pass);
                    }
                    timer.write_inside(&mut pass, n as u32)?;
                }
                timer.resolve(&mut encoder);
                gpu.finish(encoder).await?;
                let stamps = timer.read_stamps(gpu).await?;
                for (i, t) in times.iter_mut().enumerate() {
                    t.push((stamps[i + 1] - stamps[i]).max(0.0));
                }
            }
            TimingMethod::PassPerDispatch => {
                let Some(timer) = GpuTimer::new(gpu, n as u32)? else {
                    unreachable_timer()?
                };
                let mut encoder = gpu.encoder("profile");
                for (i, d) in rec.dispatches.iter().enumerate() {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(&d.pipeline.label),
                        timestamp_writes: Some(timer.pass_writes(i as u32)?),
                    });
                    d.encode(&mut pass);
                }
                timer.resolve(&mut encoder);
                gpu.finish(encoder).await?;
                for (t, s) in times.iter_mut().zip(timer.read_seconds(gpu).await?) {
                    t.push(s);
                }
            }
            TimingMethod::WallClock => {
                for (t, d) in times.iter_mut().zip(&rec.dispatches) {
                    let mut encoder = gpu.encoder("profile");
                    {
                        let mut pass = encoder.begin_compute_pass(&Default::default());
                        d.encode(&mut pass);
                    }
                    let start = Instant::now();
                    gpu.finish(encoder).await?;
                    t.push(start.elapsed().as_secs_f64());
                }
            }
        }
    }
    let dispatches = rec
        .dispatches
        .iter()
        .zip(&mut times)
        .map(|(d, t)| DispatchTime {
            kernel: d.pipeline.label.clone(),
            grid: d.grid.to_array(),
            bytes: d.bytes,
            seconds: median(t),
        })
        .collect();
    Ok(RecordingTime {
        method,
        dispatches,
        wall_seconds: median(&mut walls),
        encode_seconds: median(&mut encodes),
    })
}

/// `GpuTimer::new` returns `None` only without TIMESTAMP_QUERY, which the methods that
/// use it were chosen for.
fn unreachable_timer<T>() -> Result<T> {
    Err(super::GpuError::Validation(
        "timestamp queries are not enabled on this device".into(),
    ))
}
