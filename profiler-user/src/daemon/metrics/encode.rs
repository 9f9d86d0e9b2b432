//! The snapshot as OpenMetrics: live loops and pools summed per label set,
//! plus what retired ones had counted (see the module comment in mod.rs).
use std::{collections::BTreeMap, fmt};

use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use super::{agent, buckets, Labels, LoopTotals, PoolTotals, Snapshot};

/// One loop label set: all counts, and the live loops' gauges.
#[derive(Default)]
struct LoopView {
    totals: LoopTotals,
    live_busy_ns: u64,
    live_idle_ns: u64,
    live: bool,
    open_busy_ns: u64,
}

#[derive(Default)]
struct PoolView {
    totals: PoolTotals,
    live: bool,
    size: usize,
    /// Σ utilization × size of the live pools.
    busy_workers: f64,
    queue_wait_tracked: bool,
}

fn loop_views(s: &Snapshot) -> BTreeMap<Labels, LoopView> {
    let mut views: BTreeMap<Labels, LoopView> = BTreeMap::new();
    for (k, (t, _)) in &s.retired_loops {
        views.entry(k.clone()).or_default().totals = t.clone();
    }
    for p in s.processes.values() {
        for l in &p.loops {
            let v = views
                .entry(s.loop_labels(&p.labels, l.role, l.tid))
                .or_default();
            v.totals.add(&l.stats);
            v.live_busy_ns += l.stats.busy_ns;
            v.live_idle_ns += l.stats.idle_ns;
            v.live = true;
            v.open_busy_ns = v.open_busy_ns.max(l.open_busy_ns);
        }
    }
    views
}

fn pool_views(s: &Snapshot) -> BTreeMap<Labels, PoolView> {
    let mut views: BTreeMap<Labels, PoolView> = BTreeMap::new();
    for (k, (t, _)) in &s.retired_pools {
        let v = views.entry(k.clone()).or_default();
        v.totals = t.clone();
        v.queue_wait_tracked = t.waited_items > 0;
    }
    for p in s.processes.values() {
        let Some(pool) = &p.pool else { continue };
        let v = views.entry(s.pool_labels(&p.labels)).or_default();
        v.totals.add(pool);
        v.live = true;
        v.size += pool.size;
        v.busy_workers += pool.last_utilization * pool.size as f64;
        v.queue_wait_tracked |= pool.queue_wait_tracked;
    }
    views
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    m.encode_gauge(&v)
}

type Get<V, T> = fn(&V) -> T;

/// One counter family over `views`.
fn counters<V>(
    enc: &mut DescriptorEncoder,
    views: &BTreeMap<Labels, V>,
    family: (&str, &str, Get<V, f64>),
) -> fmt::Result {
    let (name, help, get) = family;
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in views {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(&get(v), None)?;
    }
    Ok(())
}

/// One gauge family over the views `live` selects.
fn gauges<V>(
    enc: &mut DescriptorEncoder,
    views: &BTreeMap<Labels, V>,
    live: Get<V, bool>,
    family: (&str, &str, Get<V, f64>),
) -> fmt::Result {
    let (name, help, get) = family;
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in views.iter().filter(|(_, v)| live(v)) {
        m.encode_family(labels)?.encode_gauge(&get(v))?;
    }
    Ok(())
}

pub(super) fn encode(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    {
        let help = "Watched process (always 1): its pid and identity, to join pid-less series with";
        let mut m = enc.encode_descriptor("loopbpf_process_info", help, None, MetricType::Gauge)?;
        for p in s.processes.values() {
            let p = &p.labels;
            let mut labels = super::identity_labels(p);
            labels.push(("pid", p.pid.to_string()));
            labels.push(("container_id", p.container_id.clone()));
            m.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
    }
    let loops = loop_views(s);
    {
        let help = "Busy time of event-loop iterations (poll return to next poll); le mapped conservatively to in-kernel bucket edges";
        let mut m = enc.encode_descriptor(
            "loopbpf_loop_busy_seconds",
            help,
            None,
            MetricType::Histogram,
        )?;
        for (labels, v) in &loops {
            let buckets = buckets::prometheus_buckets(&v.totals.buckets);
            let count = v.totals.buckets.iter().sum();
            m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                secs(v.totals.busy_ns),
                count,
                &buckets,
                None,
            )?;
        }
    }
    type L = LoopView;
    let loop_counters: [(&str, &str, Get<L, f64>); 3] = [
        (
            "loopbpf_loop_idle_seconds",
            "Time the loop spent waiting in epoll (idle)",
            |v| secs(v.totals.idle_ns),
        ),
        (
            "loopbpf_loop_asleep_seconds",
            "Of the busy time: asleep off the CPU (a blocking syscall, a lock, I/O)",
            |v| secs(v.totals.blocked_ns),
        ),
        (
            "loopbpf_loop_runqueue_seconds",
            "Of the busy time: runnable but waiting for a CPU (contention, cgroup throttling)",
            |v| secs(v.totals.runq_ns),
        ),
    ];
    for family in loop_counters {
        counters(enc, &loops, family)?;
    }
    gauges(
        enc,
        &loops,
        |v| v.live,
        (
            "loopbpf_loop_utilization",
            "Busy share of the time the live loops were watched (event-loop utilization)",
            |v| {
                let seen = v.live_busy_ns + v.live_idle_ns;
                if seen == 0 {
                    0.0
                } else {
                    v.live_busy_ns as f64 / seen as f64
                }
            },
        ),
    )?;
    gauges(
        enc,
        &loops,
        |v| v.live,
        (
            "loopbpf_loop_stalled_seconds",
            "How long the iteration running now has been busy, once past the threshold (0 otherwise); the longest of the label set",
            |v| secs(v.open_busy_ns),
        ),
    )?;
    {
        let help = "Iterations busy at or above the threshold (episodes), by what the time went to";
        let mut m =
            enc.encode_descriptor("loopbpf_loop_episodes", help, None, MetricType::Counter)?;
        for ((labels, verdict), (n, _)) in &s.episodes {
            let mut labels = labels.clone();
            labels.push(("verdict", verdict.to_string()));
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(n, None)?;
        }
    }
    encode_pools(s, enc)?;
    encode_agent(s, enc)
}

fn encode_pools(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let pools = pool_views(s);
    type P = PoolView;
    let pool_gauges: [(&str, &str, Get<P, f64>); 2] = [
        (
            "loopbpf_threadpool_size",
            "Workers in the libuv threadpool (UV_THREADPOOL_SIZE, or seen running)",
            |v| v.size as f64,
        ),
        (
            "loopbpf_threadpool_utilization",
            "Busy share of the threadpool over the last second (busy workers / pool size)",
            |v| {
                if v.size == 0 {
                    0.0
                } else {
                    v.busy_workers / v.size as f64
                }
            },
        ),
    ];
    for family in pool_gauges {
        gauges(enc, &pools, |v| v.live, family)?;
    }
    let pool_counters: [(&str, &str, Get<P, f64>); 4] = [
        (
            "loopbpf_threadpool_busy_seconds",
            "Time threadpool workers spent running work items, summed over workers",
            |v| secs(v.totals.busy_ns),
        ),
        (
            "loopbpf_threadpool_items",
            "Threadpool work items started (fs, crypto, zlib, dns, addons)",
            |v| v.totals.items as f64,
        ),
        (
            "loopbpf_threadpool_saturations",
            "Intervals of at least the threshold with every threadpool worker busy",
            |v| v.totals.saturations as f64,
        ),
        (
            "loopbpf_threadpool_saturated_seconds",
            "Time in those intervals",
            |v| secs(v.totals.saturated_ns),
        ),
    ];
    for family in pool_counters {
        counters(enc, &pools, family)?;
    }
    let help = "Time work items waited in the threadpool queue (submit to start); le mapped conservatively to in-kernel bucket edges";
    let mut m = enc.encode_descriptor(
        "loopbpf_threadpool_queue_wait_seconds",
        help,
        None,
        MetricType::Histogram,
    )?;
    for (labels, v) in pools.iter().filter(|(_, v)| v.queue_wait_tracked) {
        let t = &v.totals;
        let buckets = buckets::prometheus_buckets(&t.wait_buckets);
        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            t.wait_ns / 1e9,
            t.waited_items,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// The agent itself: build, own cost, what it dropped.
fn encode_agent(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    {
        let help = "loopbpf's version (always 1)";
        let mut m = enc.encode_descriptor("loopbpf_build_info", help, None, MetricType::Gauge)?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        m.encode_family(&labels)?.encode_gauge(&1i64)?;
    }
    let k = &s.kernel;
    let plain: [(&str, &str, u64); 7] = [
        (
            "loopbpf_samples",
            "Stack samples the kernel handed over",
            k.samples_sent,
        ),
        (
            "loopbpf_samples_lost",
            "Stack samples dropped: ring buffer full",
            k.samples_lost,
        ),
        (
            "loopbpf_episodes_lost",
            "Episodes dropped: ring buffer full",
            k.episodes_lost,
        ),
        (
            "loopbpf_episodes_stored",
            "Episodes written to the state directory",
            s.episodes_stored,
        ),
        (
            "loopbpf_processes_watched",
            "Processes watched since start (exited ones included)",
            s.processes_watched,
        ),
        (
            "loopbpf_metrics_connections_refused",
            "Connections to this endpoint closed unanswered: too many were open",
            s.connections_refused,
        ),
        (
            "loopbpf_config_reload_failures",
            "Reloads (SIGHUP) whose configuration was refused; the running one was kept",
            s.reload_failures,
        ),
    ];
    for (name, help, v) in plain {
        counter(enc, name, help, v)?;
    }
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
    {
        let help = "What went wrong in the symbolizer, by kind: workers restarted after a stuck request, requests timed out, processes retried after a backoff or given up on, requests skipped meanwhile, requests that panicked, perf maps refused";
        let mut m =
            enc.encode_descriptor("loopbpf_symbolizer_events", help, None, MetricType::Counter)?;
        for (what, n, _) in s.symbolizer.events() {
            m.encode_family(&[("what", what)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    gauge(
        enc,
        "loopbpf_watched_processes",
        "Processes watched now",
        s.processes.len() as f64,
    )?;
    gauge(
        enc,
        "loopbpf_kernel_loop_threads",
        "Loop threads of watched processes with statistics in the kernel's LOOP_STATS map, at the last refresh",
        s.processes.values().map(|p| p.loops.len()).sum::<usize>() as f64,
    )?;
    encode_v8_names(s, enc)?;
    let own = agent::Usage::read(s.started);
    counter_f(
        enc,
        "process_cpu_seconds",
        "CPU time of the loopbpf agent, user and system",
        own.cpu_seconds,
    )?;
    gauge(
        enc,
        "process_resident_memory_bytes",
        "Resident memory of the loopbpf agent",
        own.rss_bytes as f64,
    )?;
    gauge(
        enc,
        "process_start_time_seconds",
        "When the loopbpf agent started, Unix time",
        own.start_unix_seconds,
    )
}

/// Naming JavaScript frames from V8's memory: how it went, and the name
/// cache's fill against its bound, so that evictions are seen.
fn encode_v8_names(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let v = &s.v8_names;
    {
        let help = "JavaScript frames looked up in V8's memory, by result";
        let mut m = enc.encode_descriptor("loopbpf_v8_frames", help, None, MetricType::Counter)?;
        for (result, n) in [
            ("named", v.stats.named),
            ("frame_type", v.stats.markers),
            ("unknown", v.stats.unknown),
        ] {
            m.encode_family(&[("result", result)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    counter(
        enc,
        "loopbpf_v8_name_cache_evictions",
        "Functions dropped from the V8 name caches (bound reached)",
        v.stats.evicted,
    )?;
    gauge(
        enc,
        "loopbpf_v8_name_cache_functions",
        "Functions in the V8 name caches of watched processes",
        v.cached as f64,
    )?;
    gauge(
        enc,
        "loopbpf_v8_name_cache_capacity",
        "Functions one process's V8 name cache holds before it evicts",
        v.capacity as f64,
    )
}

fn counter_f(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}
