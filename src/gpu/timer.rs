//! GPU-side timing of compute passes with timestamp queries, where the adapter has them.

use super::{Gpu, GpuBuffer, GpuError, MemoryCategory, Result};

/// Times up to `capacity` compute passes. Each pass gets a begin and an end timestamp.
pub struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: GpuBuffer,
    capacity: u32,
    period_ns: f64,
}

impl GpuTimer {
    /// `None` when the device has no TIMESTAMP_QUERY: callers fall back to wall clock.
    pub fn new(gpu: &Gpu, capacity: u32) -> Result<Option<Self>> {
        if !gpu.features().timestamp_query {
            return Ok(None);
        }
        let count = capacity.max(1) * 2;
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("walsh timer"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * wgpu::QUERY_SIZE as u64;
        let resolve = gpu.track(
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("walsh timer resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            MemoryCategory::Readback,
        );
        Ok(Some(Self {
            queries,
            resolve,
            capacity: capacity.max(1),
            period_ns: gpu.queue.get_timestamp_period() as f64,
        }))
    }

    /// Timestamp writes for pass `slot` (0-based, below the capacity).
    pub fn pass_writes(&self, slot: u32) -> Result<wgpu::ComputePassTimestampWrites<'_>> {
        if slot >= self.capacity {
            return Err(GpuError::Validation(format!(
                "timer slot {slot} out of {} slots",
                self.capacity
            )));
        }
        Ok(wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * slot),
            end_of_pass_write_index: Some(2 * slot + 1),
        })
    }

    /// Writes timestamp `index` (0 .. 2 x capacity) at this point of `pass` (needs
    /// TIMESTAMP_QUERY_INSIDE_PASSES; read with [`GpuTimer::read_stamps`]).
    pub fn write_inside(&self, pass: &mut wgpu::ComputePass<'_>, index: u32) -> Result<()> {
        if index >= 2 * self.capacity {
            return Err(GpuError::Validation(format!(
                "timestamp {index} out of {}",
                2 * self.capacity
            )));
        }
        pass.write_timestamp(&self.queries, index);
        Ok(())
    }

    /// Every timestamp in seconds (from an arbitrary origin), after the encoder with
    /// `resolve` was submitted.
    pub async fn read_stamps(&self, gpu: &Gpu) -> Result<Vec<f64>> {
        let raw: Vec<u64> = gpu
            .read_async(&self.resolve, self.capacity as usize * 2)
            .await?;
        Ok(raw
            .iter()
            .map(|&t| t as f64 * self.period_ns * 1e-9)
            .collect())
    }

    /// Records the resolve of every slot; call after the timed passes, before `finish`.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(
            &self.queries,
            0..self.capacity * 2,
            self.resolve.buffer(),
            0,
        );
    }

    /// Durations of each slot in seconds, after the encoder with `resolve` was submitted.
    pub async fn read_seconds(&self, gpu: &Gpu) -> Result<Vec<f64>> {
        let raw: Vec<u64> = gpu
            .read_async(&self.resolve, self.capacity as usize * 2)
            .await?;
        Ok(raw
            .chunks_exact(2)
            .map(|p| p[1].saturating_sub(p[0]) as f64 * self.period_ns * 1e-9)
            .collect())
    }
}
