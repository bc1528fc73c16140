//! GPU memory accounting: bytes held now and at peak, per category and in total.
//!
//! Every buffer made through [`super::Gpu`] is a [`GpuBuffer`] that reports its size here
//! when created and when dropped, so the numbers are exact for what walsh allocated
//! (the driver's own overhead is not visible to wgpu).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::GpuError;

/// What a buffer is for; reports break memory down by these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryCategory {
    Weights,
    KvCache,
    Activations,
    /// Temporaries owned by kernels (e.g. the second WHT pass).
    Scratch,
    /// Small uniform and constant buffers.
    Uniforms,
    /// Host-visible buffers used to read results back.
    Readback,
}

impl MemoryCategory {
    pub const ALL: [MemoryCategory; 6] = [
        MemoryCategory::Weights,
        MemoryCategory::KvCache,
        MemoryCategory::Activations,
        MemoryCategory::Scratch,
        MemoryCategory::Uniforms,
        MemoryCategory::Readback,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// Thread-safe counters shared by every buffer of one device.
#[derive(Debug, Default)]
pub struct MemoryTracker {
    current: [AtomicU64; 6],
    peak: [AtomicU64; 6],
    total: AtomicU64,
    total_peak: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemoryReport {
    pub current_bytes: u64,
    pub peak_bytes: u64,
    /// (category, bytes now, peak bytes of that category)
    pub by_category: Vec<(MemoryCategory, u64, u64)>,
}

impl MemoryTracker {
    pub(crate) fn alloc(&self, category: MemoryCategory, bytes: u64) {
        let now = self.current[category.slot()].fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak[category.slot()].fetch_max(now, Ordering::Relaxed);
        let total = self.total.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.total_peak.fetch_max(total, Ordering::Relaxed);
    }

    pub(crate) fn free(&self, category: MemoryCategory, bytes: u64) {
        self.current[category.slot()].fetch_sub(bytes, Ordering::Relaxed);
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Forgets the peaks (sets them to what is held now), e.g. between benchmark cases.
    pub fn reset_peak(&self) {
        for c in MemoryCategory::ALL {
            let now = self.current[c.slot()].load(Ordering::Relaxed);
            self.peak[c.slot()].store(now, Ordering::Relaxed);
        }
        self.total_peak
            .store(self.total.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn report(&self) -> MemoryReport {
        MemoryReport {
            current_bytes: self.total.load(Ordering::Relaxed),
            peak_bytes: self.total_peak.load(Ordering::Relaxed),
            by_category: MemoryCategory::ALL
                .iter()
                .map(|&c| {
                    (
                        c,
                        self.current[c.slot()].load(Ordering::Relaxed),
                        self.peak[c.slot()].load(Ordering::Relaxed),
                    )
                })
                .collect(),
        }
    }
}

/// A wgpu buffer that is counted in its device's [`MemoryTracker`] while it lives.
#[derive(Debug)]
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    category: MemoryCategory,
    tracker: Arc<MemoryTracker>,
}

impl GpuBuffer {
    pub(crate) fn new(
        buffer: wgpu::Buffer,
        category: MemoryCategory,
        tracker: Arc<MemoryTracker>,
    ) -> Self {
        tracker.alloc(category, buffer.size());
        Self {
            buffer,
            category,
            tracker,
        }
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub fn size(&self) -> u64 {
        self.buffer.size()
    }

    pub fn category(&self) -> MemoryCategory {
        self.category
    }

    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        self.buffer.as_entire_binding()
    }

    /// Errors with [`GpuError::BufferTooSmall`] (naming the buffer `label`) unless it holds
    /// at least `bytes`.
    pub fn require(&self, label: &str, bytes: u64) -> Result<(), GpuError> {
        if self.size() < bytes {
            return Err(GpuError::BufferTooSmall {
                label: label.into(),
                needed: bytes,
                found: self.size(),
            });
        }
        Ok(())
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.tracker.free(self.category, self.buffer.size());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_current_and_peak() {
        let t = MemoryTracker::default();
        t.alloc(MemoryCategory::Weights, 100);
        t.alloc(MemoryCategory::Scratch, 50);
        t.free(MemoryCategory::Scratch, 50);
        t.alloc(MemoryCategory::Activations, 20);
        let r = t.report();
        assert_eq!(r.current_bytes, 120);
        assert_eq!(r.peak_bytes, 150);
        let scratch = r
            .by_category
            .iter()
            .find(|c| c.0 == MemoryCategory::Scratch);
        assert_eq!(scratch, Some(&(MemoryCategory::Scratch, 0, 50)));
        t.reset_peak();
        assert_eq!(t.report().peak_bytes, 120);
    }
}
