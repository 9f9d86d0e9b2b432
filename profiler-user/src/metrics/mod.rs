//! Prometheus metrics of every watched loop. The daemon's main loop copies the
//! kernel's per-loop statistics into a shared [`Snapshot`] once a second; a
//! scrape encodes that snapshot (prometheus-client's text encoder), so a scrape
//! never touches the BPF maps nor waits on the main loop.
pub mod buckets;
pub mod http;

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
};

use profiler_common::LoopStats;
use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{probes::KernelCounters, target::ThreadRole, threadpool::PoolSummary};

/// Who a watched process is, as its labels say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessLabels {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// Container id, else the cgroup path ("" when unknown).
    pub container: String,
}

#[derive(Clone, Debug)]
pub struct LoopSeries {
    pub tid: u32,
    pub role: ThreadRole,
    pub stats: LoopStats,
}

#[derive(Default, Debug)]
struct Snapshot {
    processes: BTreeMap<u32, (ProcessLabels, Vec<LoopSeries>)>,
    /// Threadpool figures of processes with its uprobes attached.
    pools: BTreeMap<u32, PoolSummary>,
    kernel: KernelCounters,
    episodes_stored: u64,
    processes_watched: u64,
    /// Metrics connections closed at once: the endpoint's connection cap was reached.
    connections_refused: u64,
    /// SIGHUPs whose configuration was refused (the running one kept).
    reload_failures: u64,
}

/// Cloneable handle: the daemon writes, the HTTP server encodes.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        // A panic while holding the lock cannot leave a snapshot half-valid in
        // a way that matters for metrics: keep serving it.
        let mut s = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    pub fn add_process(&self, labels: ProcessLabels) {
        self.with(|s| {
            s.processes_watched += 1;
            s.processes.insert(labels.pid, (labels, Vec::new()))
        });
    }

    pub fn set_loops(&self, pid: u32, loops: Vec<LoopSeries>) {
        self.with(|s| {
            if let Some(p) = s.processes.get_mut(&pid) {
                p.1 = loops;
            }
        });
    }

    pub fn set_pool(&self, pid: u32, pool: PoolSummary) {
        self.with(|s| {
            if s.processes.contains_key(&pid) {
                s.pools.insert(pid, pool);
            }
        });
    }

    /// Drops every series of `pid` (it exited or is no longer watched).
    pub fn remove_process(&self, pid: u32) {
        self.with(|s| {
            s.pools.remove(&pid);
            s.processes.remove(&pid)
        });
    }

    pub fn set_kernel(&self, k: KernelCounters) {
        self.with(|s| s.kernel = k);
    }

    pub fn episode_stored(&self) {
        self.with(|s| s.episodes_stored += 1);
    }

    pub fn connection_refused(&self) {
        self.with(|s| s.connections_refused += 1);
    }

    pub fn reload_failed(&self) {
        self.with(|s| s.reload_failures += 1);
    }

    pub fn series_count(&self) -> usize {
        self.with(|s| s.processes.values().map(|p| 1 + p.1.len()).sum::<usize>() + s.pools.len())
    }

    /// The OpenMetrics text of the current snapshot.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

fn loop_labels(p: &ProcessLabels, l: &LoopSeries) -> [(&'static str, String); 5] {
    [
        ("pid", p.pid.to_string()),
        ("tid", l.tid.to_string()),
        ("comm", p.comm.clone()),
        ("container", p.container.clone()),
        ("thread", l.role.as_str().to_string()),
    ]
}

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.with(|s| encode(s, &mut enc))
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn encode(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let loops = || {
        s.processes
            .values()
            .flat_map(|(p, loops)| loops.iter().map(move |l| (p, l)))
    };
    {
        let help = "Watched process (always 1): who it is";
        let mut m =
            enc.encode_descriptor("loopbpf_watched_process", help, None, MetricType::Gauge)?;
        for (p, _) in s.processes.values() {
            let labels = [
                ("pid", p.pid.to_string()),
                ("comm", p.comm.clone()),
                ("exe", p.exe.clone()),
                ("container", p.container.clone()),
            ];
            m.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
    }
    {
        let help = "Busy time of event-loop iterations (poll return to next poll); le mapped conservatively to in-kernel bucket edges";
        let mut m = enc.encode_descriptor(
            "loopbpf_loop_busy_seconds",
            help,
            None,
            MetricType::Histogram,
        )?;
        for (p, l) in loops() {
            let buckets = buckets::prometheus_buckets(&l.stats.buckets);
            let count = l.stats.buckets.iter().sum();
            let sum = l.stats.busy_ns as f64 / 1e9;
            m.encode_family(&loop_labels(p, l))?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
    }
    {
        let help = "Time the loop spent waiting in epoll (idle)";
        let mut m =
            enc.encode_descriptor("loopbpf_loop_idle_seconds", help, None, MetricType::Counter)?;
        for (p, l) in loops() {
            let v = l.stats.idle_ns as f64 / 1e9;
            m.encode_family(&loop_labels(p, l))?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    {
        let help =
            "Busy share of the time the loop was watched (event-loop utilization since watched)";
        let mut m =
            enc.encode_descriptor("loopbpf_loop_utilization", help, None, MetricType::Gauge)?;
        for (p, l) in loops() {
            let observed = l.stats.busy_ns + l.stats.idle_ns;
            let u = if observed == 0 {
                0.0
            } else {
                l.stats.busy_ns as f64 / observed as f64
            };
            m.encode_family(&loop_labels(p, l))?.encode_gauge(&u)?;
        }
    }
    {
        let help = "Iterations busy at or above the threshold (episodes)";
        let mut m =
            enc.encode_descriptor("loopbpf_loop_episodes", help, None, MetricType::Counter)?;
        for (p, l) in loops() {
            m.encode_family(&loop_labels(p, l))?
                .encode_counter::<NoLabelSet, _, u64>(&l.stats.episodes, None)?;
        }
    }
    encode_pools(s, enc)?;
    let k = &s.kernel;
    counter(
        enc,
        "loopbpf_samples",
        "Stack samples the kernel handed over",
        k.samples_sent,
    )?;
    counter(
        enc,
        "loopbpf_samples_lost",
        "Stack samples dropped: ring buffer full",
        k.samples_lost,
    )?;
    counter(
        enc,
        "loopbpf_episodes_lost",
        "Episodes dropped: ring buffer full",
        k.episodes_lost,
    )?;
    {
        // Every drop by cause, zeros included, so an alert needs no `or vector(0)`.
        let help = "What the kernel side dropped, by cause (ring buffer or a map full)";
        let mut m =
            enc.encode_descriptor("loopbpf_kernel_dropped", help, None, MetricType::Counter)?;
        for (what, n, _) in k.drops() {
            m.encode_family(&[("what", what)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    counter(
        enc,
        "loopbpf_episodes_stored",
        "Episodes written to the state directory",
        s.episodes_stored,
    )?;
    counter(
        enc,
        "loopbpf_processes_watched",
        "Processes watched since start (exited ones included)",
        s.processes_watched,
    )?;
    counter(
        enc,
        "loopbpf_metrics_connections_refused",
        "Connections to this endpoint closed unanswered: too many were open",
        s.connections_refused,
    )?;
    counter(
        enc,
        "loopbpf_config_reload_failures",
        "Reloads (SIGHUP) whose configuration was refused; the running one was kept",
        s.reload_failures,
    )?;
    let mut m = enc.encode_descriptor(
        "loopbpf_watched_processes",
        "Processes watched now",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&(s.processes.len() as i64))
}

fn pool_labels(p: &ProcessLabels) -> [(&'static str, String); 3] {
    [
        ("pid", p.pid.to_string()),
        ("comm", p.comm.clone()),
        ("container", p.container.clone()),
    ]
}

fn encode_pools(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let pools = || {
        s.pools
            .iter()
            .filter_map(|(pid, pool)| Some((&s.processes.get(pid)?.0, pool)))
    };
    type Gauge = fn(&PoolSummary) -> f64;
    let gauges: [(&str, &str, Gauge); 2] = [
        (
            "loopbpf_threadpool_size",
            "Workers in the libuv threadpool (UV_THREADPOOL_SIZE, or seen running)",
            |p| p.size as f64,
        ),
        (
            "loopbpf_threadpool_utilization",
            "Busy share of the threadpool over the last second (busy workers / pool size)",
            |p| p.last_utilization,
        ),
    ];
    for (name, help, value) in gauges {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, pool) in pools() {
            m.encode_family(&pool_labels(labels))?
                .encode_gauge(&value(pool))?;
        }
    }
    type Count = fn(&PoolSummary) -> f64;
    let counters: [(&str, &str, Count); 4] = [
        (
            "loopbpf_threadpool_busy_seconds",
            "Time threadpool workers spent running work items, summed over workers",
            |p| p.busy_ns as f64 / 1e9,
        ),
        (
            "loopbpf_threadpool_items",
            "Threadpool work items started (fs, crypto, zlib, dns, addons)",
            |p| p.items as f64,
        ),
        (
            "loopbpf_threadpool_saturations",
            "Intervals of at least the threshold with every threadpool worker busy",
            |p| p.saturations as f64,
        ),
        (
            "loopbpf_threadpool_saturated_seconds",
            "Time in those intervals",
            |p| p.saturated_ns as f64 / 1e9,
        ),
    ];
    for (name, help, value) in counters {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, pool) in pools() {
            m.encode_family(&pool_labels(labels))?
                .encode_counter::<NoLabelSet, _, u64>(&value(pool), None)?;
        }
    }
    let help = "Time work items waited in the threadpool queue (submit to start); le mapped conservatively to in-kernel bucket edges";
    let mut m = enc.encode_descriptor(
        "loopbpf_threadpool_queue_wait_seconds",
        help,
        None,
        MetricType::Histogram,
    )?;
    for (labels, pool) in pools().filter(|(_, p)| p.queue_wait_tracked) {
        let buckets = buckets::prometheus_buckets(&pool.queue_wait_buckets);
        let sum = (pool.queue_wait_mean_ns as f64 * pool.waited_items as f64) / 1e9;
        m.encode_family(&pool_labels(labels))?
            .encode_histogram::<NoLabelSet>(sum, pool.waited_items, &buckets, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_drop_is_a_labelled_counter() {
        let m = Metrics::default();
        m.set_kernel(KernelCounters {
            stats_full: 3,
            threads_full: 2,
            ..Default::default()
        });
        let text = m.render();
        assert!(
            text.contains("loopbpf_kernel_dropped_total{what=\"loop_stats\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("loopbpf_kernel_dropped_total{what=\"threads\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("loopbpf_kernel_dropped_total{what=\"off_cpu\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn series_appear_and_disappear_with_their_process() {
        let m = Metrics::default();
        let labels = ProcessLabels {
            pid: 42,
            comm: "node".into(),
            exe: "/usr/bin/node".into(),
            container: "abc123".into(),
        };
        m.add_process(labels);
        let mut stats = LoopStats::ZERO;
        stats.buckets[profiler_common::histogram::bucket(300_000_000)] = 2;
        stats.busy_ns = 600_000_000;
        stats.idle_ns = 600_000_000;
        stats.episodes = 2;
        m.set_loops(
            42,
            vec![LoopSeries {
                tid: 42,
                role: ThreadRole::Main,
                stats,
            }],
        );
        let text = m.render();
        let labels = r#"pid="42",tid="42",comm="node",container="abc123",thread="main""#;
        for line in [
            format!("loopbpf_loop_busy_seconds_bucket{{le=\"0.25\",{labels}}} 0"),
            format!("loopbpf_loop_busy_seconds_bucket{{le=\"0.5\",{labels}}} 2"),
            format!("loopbpf_loop_busy_seconds_bucket{{le=\"+Inf\",{labels}}} 2"),
            format!("loopbpf_loop_busy_seconds_count{{{labels}}} 2"),
            format!("loopbpf_loop_episodes_total{{{labels}}} 2"),
            format!("loopbpf_loop_utilization{{{labels}}} 0.5"),
            "loopbpf_watched_processes 1".to_string(),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        m.remove_process(42);
        let text = m.render();
        assert!(!text.contains("pid=\"42\""), "{text}");
        assert_eq!(m.series_count(), 0);
    }
}
