//! One process's libuv threadpool over time: utilization per window, the
//! intervals it was saturated (every worker busy) with what the workers were
//! running, and the queue-wait figures for the summary.
use std::collections::{HashMap, VecDeque};

use profiler_common::{PoolBusyEvent, PoolWorker};

use super::{
    saturation::{saturations, BusyPeriod},
    PoolEpisode, PoolOutput, PoolSummary, UtilizationPoint,
};
use crate::{
    assembly::{episode::RawStack, loop_stats::quantile},
    kernel::{collect::Sample, probes::pool_uprobes::PoolAttach},
    limits::{MAX_DISTINCT_STACKS, MAX_POOL_ITEMS_PER_S, MAX_POOL_SAMPLES, POOL_KEEP_NS},
};

/// Utilization is reported per window of this length.
pub const UTILIZATION_WINDOW_NS: u64 = 1_000_000_000;
/// A saturation still going on this long is announced before it ends.
pub const SATURATION_NOTICE_NS: u64 = 1_000_000_000;

pub struct PoolMonitor {
    pub pid: u32,
    pub attach: PoolAttach,
    threshold_ns: u64,
    size: usize,
    size_source: &'static str,
    started_ns: u64,
    periods: Vec<BusyPeriod>,
    samples: VecDeque<Sample>,
    reported_until_ns: u64,
    announced_since: Option<u64>,
    /// Start of the open utilization window: (time, busy ns, items).
    window: Option<(u64, u64, u64)>,
    /// When tracking stopped (too many items a second); figures end there.
    stopped_ns: Option<u64>,
    peak_utilization: f64,
    last_utilization: f64,
    busy_workers_now: usize,
    workers_seen: usize,
    saturations: u64,
    saturated_ns: u64,
}

impl PoolMonitor {
    /// A reloaded threshold (daemon SIGHUP): saturations still open are judged by it.
    pub fn set_threshold(&mut self, threshold_ns: u64) {
        self.threshold_ns = threshold_ns;
    }

    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    pub fn new(pid: u32, attach: PoolAttach, threshold_ns: u64, now_ns: u64) -> Self {
        let (size, size_source) = configured_pool_size(pid);
        PoolMonitor {
            pid,
            attach,
            threshold_ns,
            size,
            size_source,
            started_ns: now_ns,
            periods: Vec::new(),
            samples: VecDeque::new(),
            reported_until_ns: 0,
            announced_since: None,
            window: None,
            stopped_ns: None,
            peak_utilization: 0.0,
            last_utilization: 0.0,
            busy_workers_now: 0,
            workers_seen: 0,
            saturations: 0,
            saturated_ns: 0,
        }
    }

    pub fn add_busy_period(&mut self, e: &PoolBusyEvent) {
        self.periods.push(BusyPeriod {
            tid: e.tid,
            start_ns: e.start_ns,
            end_ns: Some(e.end_ns),
            items: e.items,
        });
    }

    pub fn add_sample(&mut self, s: Sample) {
        if self.samples.len() >= MAX_POOL_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// `workers` must be read from the kernel before the ring buffer was
    /// drained: then a period open in it is either still open or its end is
    /// among the busy periods already added.
    pub fn tick(&mut self, workers: &[(u32, PoolWorker)], now_ns: u64) -> Vec<PoolOutput> {
        let mut out = Vec::new();
        if !self.attach.busy_tracked || self.stopped_ns.is_some() {
            return out;
        }
        if workers.len() != self.workers_seen {
            // New workers: the pool started or grew. /proc is read only then.
            self.workers_seen = workers.len();
            self.size = self.size.max(workers.len()).max(named_workers(self.pid));
        }
        self.busy_workers_now = workers.iter().filter(|(_, w)| w.busy != 0).count();
        // Quiet until the pool has run something (libuv starts it on first use).
        if let Some(p) = self
            .utilization(workers, now_ns)
            .filter(|_| !workers.is_empty())
        {
            out.push(PoolOutput::Utilization(p));
            if p.items_per_s > MAX_POOL_ITEMS_PER_S {
                self.stopped_ns = Some(now_ns);
                out.push(PoolOutput::TooBusy {
                    pid: self.pid,
                    items_per_s: p.items_per_s,
                });
                return out;
            }
        }
        for s in saturations(&self.periods_with_open(workers), self.size) {
            match s.end_ns {
                Some(end) if end > self.reported_until_ns => {
                    self.reported_until_ns = end;
                    if end - s.start_ns >= self.threshold_ns {
                        self.saturations += 1;
                        self.saturated_ns += end - s.start_ns;
                        out.push(PoolOutput::Saturation(
                            self.episode(&s.workers, s.start_ns, end, s.items, false),
                        ));
                    }
                }
                Some(_) => {}
                None => {
                    let long = now_ns.saturating_sub(s.start_ns)
                        >= self.threshold_ns.max(SATURATION_NOTICE_NS);
                    if long && self.announced_since != Some(s.start_ns) {
                        self.announced_since = Some(s.start_ns);
                        out.push(PoolOutput::Saturated {
                            pid: self.pid,
                            since_ns: s.start_ns,
                            now_ns,
                            pool_size: self.size,
                        });
                    }
                }
            }
        }
        let horizon = now_ns.saturating_sub(POOL_KEEP_NS);
        self.periods
            .retain(|p| p.end_ns.is_some_and(|e| e >= horizon));
        while self.samples.front().is_some_and(|s| s.time_ns < horizon) {
            self.samples.pop_front();
        }
        out
    }

    /// The long busy periods reported so far, plus each busy worker's open
    /// period unless its end has already been reported (the map was read
    /// before the ring buffer was drained).
    fn periods_with_open(&self, workers: &[(u32, PoolWorker)]) -> Vec<BusyPeriod> {
        let mut periods = self.periods.clone();
        for (tid, w) in workers.iter().filter(|(_, w)| w.busy != 0) {
            let closed = self
                .periods
                .iter()
                .any(|p| p.tid == *tid && p.start_ns == w.busy_since_ns);
            if !closed {
                periods.push(BusyPeriod {
                    tid: *tid,
                    start_ns: w.busy_since_ns,
                    end_ns: None,
                    items: w.period_items,
                });
            }
        }
        periods
    }

    /// A saturation still going on when watching stops (`exited`: the process
    /// is gone, and its last pool sample is the last moment known busy).
    pub fn finish(
        &mut self,
        workers: &[(u32, PoolWorker)],
        now_ns: u64,
        exited: bool,
    ) -> Option<PoolEpisode> {
        if !self.attach.busy_tracked || self.stopped_ns.is_some() {
            return None;
        }
        let open = saturations(&self.periods_with_open(workers), self.size)
            .into_iter()
            .find(|s| s.end_ns.is_none())?;
        let end = if exited {
            self.samples.back().map(|s| s.time_ns)?
        } else {
            now_ns
        };
        if end.saturating_sub(open.start_ns) < self.threshold_ns {
            return None;
        }
        self.saturations += 1;
        self.saturated_ns += end - open.start_ns;
        Some(self.episode(&open.workers, open.start_ns, end, open.items, true))
    }

    fn episode(
        &self,
        workers: &[u32],
        start_ns: u64,
        end_ns: u64,
        items: u64,
        ongoing: bool,
    ) -> PoolEpisode {
        let mut stacks: HashMap<RawStack, u64> = HashMap::new();
        let mut samples = 0;
        let mut samples_without_stack = 0;
        for s in self
            .samples
            .iter()
            .filter(|s| s.time_ns >= start_ns && s.time_ns <= end_ns && workers.contains(&s.tid))
        {
            samples += 1;
            // Threadpool workers run no JavaScript: no V8 frames to name.
            let stack = RawStack {
                user: s.user.clone().into(),
                kernel: s.kernel.clone().into(),
                v8: Box::new([]),
            };
            let kept = stacks.len();
            match stacks.get_mut(&stack) {
                Some(n) => *n += 1,
                None if kept < MAX_DISTINCT_STACKS => {
                    stacks.insert(stack, 1);
                }
                None => samples_without_stack += 1,
            }
        }
        let mut stacks: Vec<(RawStack, u64)> = stacks.into_iter().collect();
        stacks.sort_by_key(|s| std::cmp::Reverse(s.1));
        PoolEpisode {
            pid: self.pid,
            start_ns,
            end_ns,
            pool_size: self.size,
            workers: workers.to_vec(),
            items,
            samples,
            samples_without_stack,
            stacks,
            ongoing,
        }
    }

    /// Busy share of the pool over the window that just closed, if one did.
    fn utilization(
        &mut self,
        workers: &[(u32, PoolWorker)],
        now_ns: u64,
    ) -> Option<UtilizationPoint> {
        let busy: u64 = workers.iter().map(|(_, w)| busy_until(w, now_ns)).sum();
        let items: u64 = workers.iter().map(|(_, w)| w.items).sum();
        let Some((t0, busy0, items0)) = self.window else {
            self.window = Some((now_ns, busy, items));
            return None;
        };
        let elapsed = now_ns.saturating_sub(t0);
        if elapsed < UTILIZATION_WINDOW_NS {
            return None;
        }
        self.window = Some((now_ns, busy, items));
        let utilization = (busy.saturating_sub(busy0) as f64
            / (elapsed as f64 * self.size.max(1) as f64))
            .min(1.0);
        self.peak_utilization = self.peak_utilization.max(utilization);
        self.last_utilization = utilization;
        Some(UtilizationPoint {
            pid: self.pid,
            time_ns: now_ns,
            window_ns: elapsed,
            utilization,
            busy_workers: self.busy_workers_now,
            pool_size: self.size,
            items_per_s: items.saturating_sub(items0) as f64 * 1e9 / elapsed as f64,
        })
    }

    pub fn summary(&self, workers: &[(u32, PoolWorker)], now_ns: u64) -> PoolSummary {
        let now_ns = self.stopped_ns.unwrap_or(now_ns);
        let mut buckets = vec![0u64; profiler_common::histogram::BUCKETS];
        let (mut items, mut waited, mut wait_sum, mut wait_max, mut busy) = (0, 0, 0, 0, 0);
        for (_, w) in workers {
            items += w.items;
            waited += w.waited_items;
            wait_sum += w.queue_wait_ns;
            wait_max = wait_max.max(w.max_queue_wait_ns);
            busy += busy_until(w, now_ns);
            for (b, n) in buckets.iter_mut().zip(w.buckets.iter()) {
                *b += n;
            }
        }
        let observed = now_ns.saturating_sub(self.started_ns).max(1);
        let size = self.size.max(workers.len());
        PoolSummary {
            tracked: self.attach.busy_tracked,
            queue_wait_tracked: self.attach.queue_wait_tracked,
            size,
            size_source: self.size_source,
            workers_seen: workers.len(),
            items,
            busy_ns: busy,
            utilization: (busy as f64 / (observed as f64 * size.max(1) as f64)).min(1.0),
            peak_utilization: self.peak_utilization,
            last_utilization: self.last_utilization,
            saturations: self.saturations,
            saturated_ns: self.saturated_ns,
            waited_items: waited,
            queue_wait_mean_ns: wait_sum.checked_div(waited).unwrap_or(0),
            queue_wait_p50_ns: quantile(&buckets, 0.50, wait_max),
            queue_wait_p99_ns: quantile(&buckets, 0.99, wait_max),
            queue_wait_max_ns: wait_max,
            queue_wait_buckets: buckets,
            stopped_early: self.stopped_ns.is_some(),
        }
    }
}

/// A worker's busy time up to `now_ns`, its open period included.
fn busy_until(w: &PoolWorker, now_ns: u64) -> u64 {
    w.busy_ns
        + if w.busy != 0 {
            now_ns.saturating_sub(w.busy_since_ns)
        } else {
            0
        }
}

/// The pool size libuv will use: `UV_THREADPOOL_SIZE` from the process's
/// initial environment, parsed as libuv does (`atoi`, 0 → 1, capped at 1024),
/// else libuv's default of 4. A running process may have changed its
/// environment before the pool started; workers seen running raise it.
pub fn configured_pool_size(pid: u32) -> (usize, &'static str) {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let value = env
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"UV_THREADPOOL_SIZE="));
    match value {
        Some(v) => (libuv_pool_size(v), "UV_THREADPOOL_SIZE"),
        None => (4, "libuv default"),
    }
}

fn libuv_pool_size(v: &[u8]) -> usize {
    let s = std::str::from_utf8(v).unwrap_or("").trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n: i64 = digits
        .bytes()
        .take_while(u8::is_ascii_digit)
        .take(12)
        .fold(0, |n, d| n * 10 + i64::from(d - b'0'));
    match (neg, n) {
        (_, 0) => 1,
        // libuv stores atoi's result in an unsigned: negative means huge.
        (true, _) => 1024,
        (false, n) => n.min(1024) as usize,
    }
}

/// Threads Node ≥ 22 names `libuv-worker` (0 on Node 20, which names none).
fn named_workers(pid: u32) -> usize {
    crate::kernel::target::thread_comms(pid)
        .iter()
        .filter(|(_, c)| c == "libuv-worker")
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_parses_like_libuv() {
        assert_eq!(libuv_pool_size(b"8"), 8);
        assert_eq!(libuv_pool_size(b"0"), 1);
        assert_eq!(libuv_pool_size(b"abc"), 1);
        assert_eq!(libuv_pool_size(b"5000"), 1024);
        assert_eq!(libuv_pool_size(b"-3"), 1024);
        assert_eq!(libuv_pool_size(b" 16x"), 16);
    }

    fn worker(pid: u32, busy_since: Option<u64>, busy_ns: u64) -> PoolWorker {
        let mut w = PoolWorker::ZERO;
        w.pid = pid;
        w.busy_ns = busy_ns;
        if let Some(s) = busy_since {
            w.busy = 1;
            w.busy_since_ns = s;
        }
        w
    }

    fn monitor(threshold_ns: u64) -> PoolMonitor {
        let attach = PoolAttach {
            busy_tracked: true,
            queue_wait_tracked: true,
            ..Default::default()
        };
        let mut m = PoolMonitor::new(0, attach, threshold_ns, 0);
        m.size = 2;
        m
    }

    fn sample(tid: u32, t: u64) -> Sample {
        Sample {
            pid: 0,
            tid,
            seq: 1,
            busy_start_ns: 0,
            time_ns: t,
            user: vec![0x1000 + u64::from(tid)],
            kernel: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn a_closed_saturation_is_reported_once_with_its_samples() {
        let mut m = monitor(100);
        for t in [50, 150, 250, 450] {
            m.add_sample(sample(1, t));
        }
        m.add_sample(sample(3, 150)); // not a pool member in the saturation
        m.add_busy_period(&PoolBusyEvent {
            tid: 1,
            start_ns: 0,
            end_ns: 300,
            items: 3,
            ..Default::default()
        });
        // Worker 2 is still busy since 100: saturated from 100 to 300.
        let workers = [(1, worker(0, None, 300)), (2, worker(0, Some(100), 0))];
        let out = m.tick(&workers, 400);
        let eps: Vec<&PoolEpisode> = out
            .iter()
            .filter_map(|o| match o {
                PoolOutput::Saturation(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(eps.len(), 1);
        assert_eq!(
            (eps[0].start_ns, eps[0].end_ns, eps[0].samples),
            (100, 300, 2)
        );
        assert!(m
            .tick(&workers, 500)
            .iter()
            .all(|o| !matches!(o, PoolOutput::Saturation(_))));
        assert_eq!(m.summary(&workers, 500).saturations, 1);
    }

    #[test]
    fn short_saturations_are_not_episodes() {
        let mut m = monitor(1000);
        m.add_busy_period(&PoolBusyEvent {
            tid: 1,
            start_ns: 0,
            end_ns: 300,
            ..Default::default()
        });
        let workers = [(1, worker(0, None, 300)), (2, worker(0, Some(100), 0))];
        assert!(m
            .tick(&workers, 400)
            .iter()
            .all(|o| !matches!(o, PoolOutput::Saturation(_))));
    }

    /// A reload that lowers the threshold reaches monitors already running.
    #[test]
    fn a_new_threshold_applies_to_a_running_monitor() {
        let period = PoolBusyEvent {
            tid: 1,
            start_ns: 0,
            end_ns: 300,
            ..Default::default()
        };
        let workers = [(1, worker(0, None, 300)), (2, worker(0, Some(100), 0))];
        let mut m = monitor(1000);
        m.set_threshold(100);
        m.add_busy_period(&period);
        assert!(m
            .tick(&workers, 400)
            .iter()
            .any(|o| matches!(o, PoolOutput::Saturation(_))));
    }

    #[test]
    fn utilization_is_busy_time_over_window_and_pool() {
        let mut m = monitor(100);
        let idle = [(1, worker(0, None, 0)), (2, worker(0, None, 0))];
        assert!(m.tick(&idle, 0).is_empty());
        // One of two workers busy for the whole second: 50%.
        let half = [(1, worker(0, Some(0), 0)), (2, worker(0, None, 0))];
        let out = m.tick(&half, UTILIZATION_WINDOW_NS);
        let Some(PoolOutput::Utilization(p)) = out.first() else {
            panic!("no utilization point: {out:?}")
        };
        assert!((p.utilization - 0.5).abs() < 1e-9, "{}", p.utilization);
        assert_eq!(p.busy_workers, 1);
    }
}
