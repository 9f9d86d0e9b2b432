//! Prometheus metrics of every watched loop. The daemon's main loop copies the
//! kernel's per-loop statistics into a shared [`Snapshot`] once a second; a
//! scrape encodes that snapshot (prometheus-client's text encoder, see
//! `encode.rs`), so a scrape never touches the BPF maps nor waits on the main loop.
//!
//! A loop series is named by who runs the loop (comm, exe, container, pod,
//! namespace, thread role), not by pid and tid: a restarted process, or a
//! recycled worker thread, continues its series instead of starting a new one
//! (pid and tid are opt-in through `series_labels`). Loops sharing a label set
//! are summed; when one goes away its last counts are kept ("retired") so the
//! series' counters never go backwards while it lives on.
mod agent;
pub mod buckets;
mod encode;
pub mod http;
pub mod identity;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use profiler_common::LoopStats;

use crate::{
    assembly::threadpool::PoolSummary,
    export::breakdown::Verdict,
    kernel::{probes::KernelCounters, target::ThreadRole},
};

/// A retired label set with no live loop is forgotten after this long: its
/// process is not coming back soon, and the series should go stale.
const RETIRED_TTL: Duration = Duration::from_secs(15 * 60);
/// Retired label sets kept at most (container churn must not grow memory).
const MAX_RETIRED: usize = 4096;

/// Who a watched process is, as its labels say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessLabels {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    /// Kubernetes container name, else the short container id, else the cgroup path.
    pub container: String,
    /// The full 64-hex container id ("" outside containers).
    pub container_id: String,
    /// Kubernetes pod and namespace ("" when not visible).
    pub pod: String,
    pub namespace: String,
}

/// Labels that split series beyond a loop's identity: off by default, since
/// each restart or recycled thread would start new series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeriesLabels {
    pub pid: bool,
    pub tid: bool,
}

impl SeriesLabels {
    /// From the config's `series_labels = ["pid", "tid"]`.
    pub fn parse(names: &[String]) -> Result<SeriesLabels, String> {
        let mut s = SeriesLabels::default();
        for n in names {
            match n.as_str() {
                "pid" => s.pid = true,
                "tid" => s.tid = true,
                other => return Err(format!("unknown label '{other}' (pid or tid)")),
            }
        }
        Ok(s)
    }
}

#[derive(Clone, Debug)]
pub struct LoopSeries {
    pub tid: u32,
    pub role: ThreadRole,
    pub stats: LoopStats,
    /// Busy time so far of the iteration running now (0: the loop is in its poll).
    pub open_busy_ns: u64,
}

type Labels = Vec<(&'static str, String)>;

/// Counters of loops that went away, per label set.
#[derive(Clone, Debug, Default)]
struct LoopTotals {
    busy_ns: u64,
    idle_ns: u64,
    blocked_ns: u64,
    runq_ns: u64,
    buckets: Vec<u64>,
}

impl LoopTotals {
    fn add(&mut self, s: &LoopStats) {
        self.busy_ns += s.busy_ns;
        self.idle_ns += s.idle_ns;
        self.blocked_ns += s.blocked_ns;
        self.runq_ns += s.runq_ns;
        add_buckets(&mut self.buckets, &s.buckets);
    }
}

/// Counters of threadpools that went away, per label set.
#[derive(Clone, Debug, Default)]
struct PoolTotals {
    busy_ns: u64,
    items: u64,
    saturations: u64,
    saturated_ns: u64,
    waited_items: u64,
    wait_ns: f64,
    wait_buckets: Vec<u64>,
}

impl PoolTotals {
    fn add(&mut self, p: &PoolSummary) {
        self.busy_ns += p.busy_ns;
        self.items += p.items;
        self.saturations += p.saturations;
        self.saturated_ns += p.saturated_ns;
        if p.queue_wait_tracked {
            self.waited_items += p.waited_items;
            self.wait_ns += p.queue_wait_mean_ns as f64 * p.waited_items as f64;
            add_buckets(&mut self.wait_buckets, &p.queue_wait_buckets);
        }
    }
}

fn add_buckets(to: &mut Vec<u64>, from: &[u64]) {
    if to.len() < from.len() {
        to.resize(from.len(), 0);
    }
    for (t, f) in to.iter_mut().zip(from) {
        *t += f;
    }
}

#[derive(Debug)]
struct Proc {
    labels: ProcessLabels,
    loops: Vec<LoopSeries>,
    pool: Option<PoolSummary>,
}

#[derive(Debug)]
struct Snapshot {
    series: SeriesLabels,
    processes: BTreeMap<u32, Proc>,
    retired_loops: BTreeMap<Labels, (LoopTotals, Instant)>,
    retired_pools: BTreeMap<Labels, (PoolTotals, Instant)>,
    /// Episodes by loop label set and verdict, with when the last one came.
    episodes: BTreeMap<(Labels, &'static str), (u64, Instant)>,
    kernel: KernelCounters,
    /// JavaScript frames named from V8's memory, all processes.
    v8_names: crate::symbolize::V8Names,
    symbolizer: crate::symbolize::SymbolizerHealth,
    episodes_stored: u64,
    processes_watched: u64,
    /// Metrics connections closed at once: the endpoint's connection cap was reached.
    connections_refused: u64,
    /// SIGHUPs whose configuration was refused (the running one kept).
    reload_failures: u64,
    started: Instant,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            series: SeriesLabels::default(),
            processes: BTreeMap::new(),
            retired_loops: BTreeMap::new(),
            retired_pools: BTreeMap::new(),
            episodes: BTreeMap::new(),
            kernel: KernelCounters::default(),
            v8_names: Default::default(),
            symbolizer: Default::default(),
            episodes_stored: 0,
            processes_watched: 0,
            connections_refused: 0,
            reload_failures: 0,
            started: Instant::now(),
        }
    }
}

impl Snapshot {
    fn loop_labels(&self, p: &ProcessLabels, role: ThreadRole, tid: u32) -> Labels {
        let mut l = identity_labels(p);
        l.push(("thread", role.as_str().to_string()));
        if self.series.pid {
            l.push(("pid", p.pid.to_string()));
        }
        if self.series.tid {
            l.push(("tid", tid.to_string()));
        }
        l
    }

    fn pool_labels(&self, p: &ProcessLabels) -> Labels {
        let mut l = identity_labels(p);
        if self.series.pid {
            l.push(("pid", p.pid.to_string()));
        }
        l
    }

    fn retire_loop(&mut self, p: &ProcessLabels, l: &LoopSeries, now: Instant) {
        let key = self.loop_labels(p, l.role, l.tid);
        let (totals, at) = self.retired_loops.entry(key).or_default_at(now);
        totals.add(&l.stats);
        *at = now;
    }

    fn retire_pool(&mut self, p: &ProcessLabels, pool: &PoolSummary, now: Instant) {
        let key = self.pool_labels(p);
        let (totals, at) = self.retired_pools.entry(key).or_default_at(now);
        totals.add(pool);
        *at = now;
    }

    /// Forgets retired label sets no live loop uses that are past their TTL
    /// (or the oldest, past `MAX_RETIRED`), and their episode counts.
    fn expire(&mut self, now: Instant) {
        let mut live_loops = std::collections::BTreeSet::new();
        let mut live_pools = std::collections::BTreeSet::new();
        for p in self.processes.values() {
            for l in &p.loops {
                live_loops.insert(self.loop_labels(&p.labels, l.role, l.tid));
            }
            if p.pool.is_some() {
                live_pools.insert(self.pool_labels(&p.labels));
            }
        }
        let fresh = |at: &Instant| now.duration_since(*at) < RETIRED_TTL;
        self.retired_loops
            .retain(|k, (_, at)| live_loops.contains(k) || fresh(at));
        self.retired_pools
            .retain(|k, (_, at)| live_pools.contains(k) || fresh(at));
        trim_oldest(&mut self.retired_loops, |v| v.1);
        trim_oldest(&mut self.retired_pools, |v| v.1);
        let retired = &self.retired_loops;
        self.episodes.retain(|(k, _), (_, at)| {
            live_loops.contains(k) || retired.contains_key(k) || fresh(at)
        });
        trim_oldest(&mut self.episodes, |v| v.1);
    }
}

fn identity_labels(p: &ProcessLabels) -> Labels {
    vec![
        ("comm", p.comm.clone()),
        ("exe", p.exe.clone()),
        ("container", p.container.clone()),
        ("pod", p.pod.clone()),
        ("namespace", p.namespace.clone()),
    ]
}

fn trim_oldest<K: Ord + Clone, V>(map: &mut BTreeMap<K, V>, at: impl Fn(&V) -> Instant) {
    while map.len() > MAX_RETIRED {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| at(v))
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        map.remove(&oldest);
    }
}

trait OrDefaultAt<'a, V> {
    fn or_default_at(self, now: Instant) -> &'a mut (V, Instant);
}

impl<'a, K: Ord, V: Default> OrDefaultAt<'a, V>
    for std::collections::btree_map::Entry<'a, K, (V, Instant)>
{
    fn or_default_at(self, now: Instant) -> &'a mut (V, Instant) {
        self.or_insert_with(|| (V::default(), now))
    }
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

    /// Which optional labels series carry (config `series_labels`). Series
    /// retired under the previous choice keep their labels until they expire.
    pub fn set_series_labels(&self, series: SeriesLabels) {
        self.with(|s| s.series = series);
    }

    pub fn add_process(&self, labels: ProcessLabels) {
        self.with(|s| {
            s.processes_watched += 1;
            let pid = labels.pid;
            let proc = Proc {
                labels,
                loops: Vec::new(),
                pool: None,
            };
            if let Some(old) = s.processes.insert(pid, proc) {
                // A pid watched again without a removal in between: keep its counts.
                retire_process(s, &old);
            }
        });
    }

    /// The loops of `pid` now; a loop gone since the last call is retired.
    pub fn set_loops(&self, pid: u32, loops: Vec<LoopSeries>) {
        self.with(|s| {
            let Some(mut p) = s.processes.remove(&pid) else {
                return;
            };
            let now = Instant::now();
            for old in &p.loops {
                if !loops.iter().any(|l| l.tid == old.tid) {
                    s.retire_loop(&p.labels, old, now);
                }
            }
            p.loops = loops;
            s.processes.insert(pid, p);
        });
    }

    /// Loops of `pid` busy past the threshold now, `(tid, busy_ns)`; its
    /// other loops read 0 (`loopbpf_loop_stalled_seconds`). Called more often
    /// than `set_loops`, so a wedge shows within a stall check.
    pub fn set_stalled(&self, pid: u32, busy: &[(u32, u64)]) {
        self.with(|s| {
            if let Some(p) = s.processes.get_mut(&pid) {
                for l in p.loops.iter_mut() {
                    l.open_busy_ns = busy.iter().find(|b| b.0 == l.tid).map_or(0, |b| b.1);
                }
            }
        });
    }

    pub fn set_pool(&self, pid: u32, pool: PoolSummary) {
        self.with(|s| {
            if let Some(p) = s.processes.get_mut(&pid) {
                p.pool = Some(pool);
            }
        });
    }

    /// Drops the live series of `pid` (it exited or is no longer watched);
    /// their counts stay in the totals of their label set.
    pub fn remove_process(&self, pid: u32) {
        self.with(|s| {
            if let Some(p) = s.processes.remove(&pid) {
                retire_process(s, &p);
            }
            s.expire(Instant::now());
        });
    }

    pub fn set_kernel(&self, k: KernelCounters) {
        self.with(|s| s.kernel = k);
    }

    pub fn set_v8_names(&self, v: crate::symbolize::V8Names) {
        self.with(|s| s.v8_names = v);
    }

    pub fn set_symbolizer(&self, h: crate::symbolize::SymbolizerHealth) {
        self.with(|s| s.symbolizer = h);
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

    /// An episode of a loop of the process `p`, with its verdict.
    pub fn episode(&self, p: &ProcessLabels, role: ThreadRole, tid: u32, verdict: Verdict) {
        self.with(|s| {
            // Per-pid series go with their process; one already gone (its
            // last episodes arrive after it) would leave a series nothing ends.
            if s.series.pid && !s.processes.contains_key(&p.pid) {
                return;
            }
            let key = (s.loop_labels(p, role, tid), verdict.as_str());
            let e = s.episodes.entry(key).or_insert((0, Instant::now()));
            e.0 += 1;
            e.1 = Instant::now();
        });
    }

    /// Series of loops and pools of live processes (one per process and loop).
    pub fn series_count(&self) -> usize {
        self.with(|s| {
            s.processes
                .values()
                .map(|p| 1 + p.loops.len() + usize::from(p.pool.is_some()))
                .sum::<usize>()
        })
    }

    /// The OpenMetrics text of the current snapshot.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

fn retire_process(s: &mut Snapshot, p: &Proc) {
    // With pid in the labels the series never comes back: drop it now.
    if s.series.pid {
        let pid = ("pid", p.labels.pid.to_string());
        s.episodes.retain(|(labels, _), _| !labels.contains(&pid));
        return;
    }
    let now = Instant::now();
    for l in &p.loops {
        s.retire_loop(&p.labels, l, now);
    }
    if let Some(pool) = &p.pool {
        s.retire_pool(&p.labels, pool, now);
    }
}

impl prometheus_client::collector::Collector for Metrics {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.with(|s| encode::encode(s, &mut enc))
    }
}

#[cfg(test)]
mod tests;
