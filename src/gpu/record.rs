//! Where kernels put their dispatches: straight into a compute pass, or into a
//! [`Recording`] that is replayed later, as often as needed.
//!
//! Every kernel in [`crate::ops`] builds its pipeline, uniform parameters and bind group
//! once per call and hands them to a [`Record`]. The GPU decoder records a decode step once
//! and replays it for every token: replaying sets a pipeline and a bind group and
//! dispatches, with no buffer or bind-group creation, which is most of the host's cost per
//! dispatch in a browser (each creation is a call into the browser's GPU process).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::CachedPipeline;

/// A sink for dispatches.
pub trait Record {
    /// Dispatches `grid` workgroups of `pipeline` over `bind_group` (bound at group 0),
    /// which binds `bytes` of storage buffers (what a profile reports the dispatch moves,
    /// at most).
    fn record(
        &mut self,
        pipeline: &Arc<CachedPipeline>,
        bind_group: wgpu::BindGroup,
        grid: glam::UVec3,
        bytes: u64,
    );
}

/// Dispatches straight away.
impl Record for wgpu::ComputePass<'_> {
    fn record(
        &mut self,
        pipeline: &Arc<CachedPipeline>,
        bind_group: wgpu::BindGroup,
        grid: glam::UVec3,
        _bytes: u64,
    ) {
        self.set_pipeline(pipeline.pipeline());
        self.set_bind_group(0, &bind_group, &[]);
        self.dispatch_workgroups(grid.x, grid.y, grid.z);
    }
}

/// One recorded dispatch. The bind group keeps every buffer it binds alive (the uniform
/// parameters too), so a recording stays valid as long as it lives.
#[derive(Debug)]
pub(super) struct Dispatch {
    pub(super) pipeline: Arc<CachedPipeline>,
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) grid: glam::UVec3,
    /// Storage bytes bound.
    pub(super) bytes: u64,
}

impl Dispatch {
    pub(super) fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(self.pipeline.pipeline());
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.grid.x, self.grid.y, self.grid.z);
    }
}

/// Dispatches kept for replay, in order.
#[derive(Debug, Default)]
pub struct Recording {
    pub(super) dispatches: Vec<Dispatch>,
}

impl Recording {
    pub fn new() -> Self {
        Self::default()
    }

    /// Dispatches recorded.
    pub fn len(&self) -> usize {
        self.dispatches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }

    /// Records every dispatch into `pass`, in order, and counts them in `counters`.
    pub fn replay(&self, pass: &mut wgpu::ComputePass<'_>, counters: &Counters) {
        for d in &self.dispatches {
            d.encode(pass);
        }
        counters
            .dispatches
            .fetch_add(self.dispatches.len() as u64, Ordering::Relaxed);
    }
}

impl Record for Recording {
    fn record(
        &mut self,
        pipeline: &Arc<CachedPipeline>,
        bind_group: wgpu::BindGroup,
        grid: glam::UVec3,
        bytes: u64,
    ) {
        self.dispatches.push(Dispatch {
            pipeline: pipeline.clone(),
            bind_group,
            grid,
            bytes,
        });
    }
}

/// Work a device has been given, counted since it was opened: dispatches replayed from
/// [`Recording`]s (everything the decoders run goes through one), readbacks and queue
/// submissions. Generation reports these per token.
#[derive(Debug, Default)]
pub struct Counters {
    dispatches: AtomicU64,
    readbacks: AtomicU64,
    submissions: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CountersSnapshot {
    pub dispatches: u64,
    pub readbacks: u64,
    pub submissions: u64,
}

impl std::ops::Sub for CountersSnapshot {
    type Output = Self;
    fn sub(self, earlier: Self) -> Self {
        Self {
            dispatches: self.dispatches - earlier.dispatches,
            readbacks: self.readbacks - earlier.readbacks,
            submissions: self.submissions - earlier.submissions,
        }
    }
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            readbacks: self.readbacks.load(Ordering::Relaxed),
            submissions: self.submissions.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn readback(&self) {
        self.readbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn submission(&self) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
    }
}
