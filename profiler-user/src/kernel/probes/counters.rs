//! What the kernel side dropped or could not do, as userspace reports it.

/// Counters the kernel side keeps of what it dropped (see `COUNTER_*`).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelCounters {
    pub samples_sent: u64,
    pub samples_lost: u64,
    pub episodes_lost: u64,
    pub threads_full: u64,
    pub stats_full: u64,
    pub slots_recycled: u64,
    pub user_stack_errors: u64,
    pub off_cpu_lost: u64,
    pub pool_workers_full: u64,
    pub pool_unmatched: u64,
    pub pool_events_lost: u64,
    pub stack_copy_errors: u64,
    pub off_cpu_budget: u64,
    pub episodes_budget: u64,
    pub pool_events_budget: u64,
    /// `THREADS` entries the LRU evicted (found by userspace, see
    /// `Probes::threads_evicted`).
    pub threads_evicted: u64,
}

impl KernelCounters {
    /// Everything the kernel side dropped, by cause: (label, count, what it means).
    pub fn drops(&self) -> [(&'static str, u64, &'static str); 13] {
        [
            (
                "samples",
                self.samples_lost,
                "stack samples (ring buffer full)",
            ),
            (
                "episodes",
                self.episodes_lost,
                "episodes (ring buffer full)",
            ),
            (
                "off_cpu",
                self.off_cpu_lost,
                "off-CPU intervals (ring buffer half full: the rest is kept for samples and episodes)",
            ),
            (
                "pool_events",
                self.pool_events_lost,
                "threadpool events (ring buffer full)",
            ),
            (
                "off_cpu_budget",
                self.off_cpu_budget,
                "off-CPU intervals (their process over its ring-buffer budget)",
            ),
            (
                "episodes_budget",
                self.episodes_budget,
                "episodes (their process over its ring-buffer budget)",
            ),
            (
                "pool_events_budget",
                self.pool_events_budget,
                "threadpool events (their process over its ring-buffer budget)",
            ),
            (
                "threads",
                self.threads_full,
                "threads not tracked (THREADS map full)",
            ),
            (
                "threads_evicted",
                self.threads_evicted,
                "thread states evicted (THREADS map full; a live loop among them loses an iteration)",
            ),
            (
                "loop_stats",
                self.stats_full,
                "loops not counted (LOOP_STATS map full)",
            ),
            (
                "pool_workers",
                self.pool_workers_full,
                "threadpool workers not tracked (POOL_WORKERS map full)",
            ),
            (
                "user_stacks",
                self.user_stack_errors,
                "user stacks that could not be walked",
            ),
            (
                "stack_copies",
                self.stack_copy_errors,
                "user stacks not copied (unwound by frame pointers only)",
            ),
        ]
    }
}
