//! Timing: warm-up, repeats, median with min and max. GPU timestamps of the compute pass
//! where the adapter has them, wall clock around submit-and-wait otherwise.

use web_time::Instant;

use serde::{Deserialize, Serialize};

use super::BenchError;
use crate::gpu::{Gpu, GpuTimer};

/// Seconds of one measured operation over its repeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub repeats: usize,
}

impl Stats {
    pub fn from_samples(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        if n == 0 {
            return Self::default();
        }
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            0.5 * (samples[n / 2 - 1] + samples[n / 2])
        };
        Self {
            median_s: median,
            min_s: samples[0],
            max_s: samples[n - 1],
            repeats: n,
        }
    }
}

/// Times `record` (the dispatches of one compute pass): one warm-up (which also
/// compiles pipelines), then `repeats` submissions, each timed on its own.
pub async fn time_pass(
    gpu: &Gpu,
    repeats: usize,
    mut record: impl FnMut(&mut wgpu::ComputePass<'_>) -> Result<(), BenchError>,
) -> Result<Stats, BenchError> {
    let timer = GpuTimer::new(gpu, 1)?;
    let mut samples = Vec::with_capacity(repeats);
    for i in 0..=repeats {
        let mut encoder = gpu.encoder("bench");
        let start = Instant::now();
        {
            let timestamp_writes = timer.as_ref().map(|t| t.pass_writes(0)).transpose()?;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench"),
                timestamp_writes,
            });
            record(&mut pass)?;
        }
        if let Some(t) = &timer {
            t.resolve(&mut encoder);
        }
        gpu.finish(encoder).await?;
        let wall = start.elapsed().as_secs_f64();
        let seconds = match &timer {
            Some(t) => plausible(t.read_seconds(gpu).await?[0], wall),
            None => wall,
        };
        if i > 0 {
            samples.push(seconds);
        }
    }
    Ok(Stats::from_samples(samples))
}

/// A GPU timestamp duration, or the wall clock where the timestamps cannot be right:
/// zero, or longer than the wall time around the submission (a counter that wrapped:
/// SwiftShader's does within seconds).
fn plausible(gpu_seconds: f64, wall_seconds: f64) -> f64 {
    if gpu_seconds > 0.0 && gpu_seconds <= wall_seconds {
        gpu_seconds
    } else {
        wall_seconds
    }
}

/// Times `record` on a whole command encoder (for copies, which are not compute passes)
/// by wall clock around submit-and-wait.
pub async fn time_encoder(
    gpu: &Gpu,
    repeats: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder),
) -> Result<Stats, BenchError> {
    let mut samples = Vec::with_capacity(repeats);
    for i in 0..=repeats {
        let mut encoder = gpu.encoder("bench");
        let start = Instant::now();
        record(&mut encoder);
        gpu.finish(encoder).await?;
        if i > 0 {
            samples.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(Stats::from_samples(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_timestamps_give_way_to_the_wall_clock() {
        assert_eq!(plausible(0.5, 0.6), 0.5);
        assert_eq!(plausible(0.0, 0.6), 0.6);
        assert_eq!(plausible(7.0, 0.6), 0.6);
        assert_eq!(plausible(f64::NAN, 0.6), 0.6);
    }

    #[test]
    fn median_min_max() {
        let s = Stats::from_samples(vec![3.0, 1.0, 2.0]);
        assert_eq!(
            (s.median_s, s.min_s, s.max_s, s.repeats),
            (2.0, 1.0, 3.0, 3)
        );
        let s = Stats::from_samples(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.median_s, 2.5);
        assert_eq!(Stats::from_samples(vec![]).repeats, 0);
    }
}
