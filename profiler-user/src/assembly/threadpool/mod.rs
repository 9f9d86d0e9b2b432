//! The libuv threadpool of a watched process: `fs`, `crypto`, `zlib`, `dns`
//! work runs on its workers (4 by default), and when they are all busy new
//! work queues, however idle the event loop looks.
//!
//! uprobes (`kernel::probes::pool_uprobes`) → per-worker kernel state and long
//! busy periods → `monitor` (utilization, saturation from `saturation`) →
//! `export::pool_report` (named stacks) → the exporters.
pub mod monitor;
pub mod saturation;

use crate::assembly::episode::RawStack;

/// libuv's worker loop, at the bottom of every pool worker's stack.
pub const WORKER_LOOP: &str = "worker";

/// An interval in which every worker of the pool was busy.
#[derive(Clone, Debug)]
pub struct PoolEpisode {
    pub pid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub pool_size: usize,
    /// The workers (tids) busy throughout.
    pub workers: Vec<u32>,
    /// Items the workers ran in the busy periods that made it up.
    pub items: u64,
    /// Samples of those workers inside it.
    pub samples: u64,
    pub samples_without_stack: u64,
    pub stacks: Vec<(RawStack, u64)>,
    /// Still saturated when loopbpf stopped.
    pub ongoing: bool,
}

/// Busy share of the pool over one window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UtilizationPoint {
    pub pid: u32,
    /// End of the window (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub window_ns: u64,
    pub utilization: f64,
    /// Workers busy at the end of the window.
    pub busy_workers: usize,
    pub pool_size: usize,
    /// Work items started per second over the window.
    pub items_per_s: f64,
}

#[derive(Clone, Debug)]
pub enum PoolOutput {
    Saturation(PoolEpisode),
    /// Still saturated after `SATURATION_NOTICE_NS`.
    Saturated {
        pid: u32,
        since_ns: u64,
        now_ns: u64,
        pool_size: usize,
    },
    Utilization(UtilizationPoint),
    /// So many items a second that the uprobes must come off
    /// (`limits::MAX_POOL_ITEMS_PER_S`); tracking has stopped.
    TooBusy {
        pid: u32,
        items_per_s: f64,
    },
}

/// The threadpool's figures at the end of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolSummary {
    /// Busy workers are tracked (the libuv symbols were found).
    pub tracked: bool,
    pub queue_wait_tracked: bool,
    pub size: usize,
    /// Where `size` came from.
    pub size_source: &'static str,
    pub workers_seen: usize,
    pub items: u64,
    pub busy_ns: u64,
    /// Busy time over (time watched × pool size).
    pub utilization: f64,
    /// Highest utilization of one window (`monitor::UTILIZATION_WINDOW_NS`).
    pub peak_utilization: f64,
    /// Utilization of the last window.
    pub last_utilization: f64,
    pub saturations: u64,
    pub saturated_ns: u64,
    /// Items whose queue wait was measured.
    pub waited_items: u64,
    pub queue_wait_mean_ns: u64,
    pub queue_wait_p50_ns: u64,
    pub queue_wait_p99_ns: u64,
    pub queue_wait_max_ns: u64,
    /// Queue-wait histogram (`histogram::bucket`), for Prometheus.
    pub queue_wait_buckets: Vec<u64>,
    /// Tracking stopped before the end (`PoolOutput::TooBusy`).
    pub stopped_early: bool,
}
