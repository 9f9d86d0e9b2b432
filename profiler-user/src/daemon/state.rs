//! What the daemon holds while running: the probes, the watched processes and
//! the episode assembly. Attach and detach live here so that every way a
//! process leaves (exit event, lost event caught by the sweep, reload, stop)
//! frees the same things: kernel map entries, samples held, metric series and
//! the symbolizer's caches.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use profiler_common::ThreadLoops;
use tokio::sync::mpsc::UnboundedSender;

use super::{
    config::Config,
    discovery::{self, Identity},
    sink::SinkMsg,
};
use crate::{
    collect::{self, Record},
    episode::EpisodeBuilder,
    export::text::monotonic_ns,
    metrics::{LoopSeries, Metrics},
    probes::Probes,
    run::too_busy_message,
    symbolize::Symbolizer,
    target,
    threadpool::{monitor::PoolMonitor, PoolOutput},
    unwind::Unwinder,
};

/// Distinct stacks kept per open iteration (as in a --pid session).
pub const MAX_DISTINCT_STACKS: usize = 4096;
/// A watched process gets its threadpool uprobes once it has lived this long.
pub const POOL_ATTACH_AFTER: Duration = Duration::from_secs(1);
/// Exec events waiting for a second look, at most: an exec storm must not grow memory.
const MAX_PENDING: usize = 4096;

pub struct State {
    pub probes: Probes,
    pub config: Config,
    pub watched: HashMap<u32, Identity>,
    pub builder: EpisodeBuilder,
    pub metrics: Metrics,
    pub symbolizer: Symbolizer,
    pub sink: UnboundedSender<SinkMsg>,
    /// Execs that did not look like Node yet: an embedder maps libnode only
    /// after exec, so they get one more look on the next tick.
    pub pending: Vec<u32>,
    pub decode_errors: u64,
    /// Threadpool of each watched process with uprobes attached.
    pub pools: HashMap<u32, PoolMonitor>,
    /// Watched processes waiting for their threadpool uprobes, since when.
    pub pool_candidates: HashMap<u32, Instant>,
    /// Unwinds user stacks from the copies taken with them.
    pub unwinder: Unwinder,
}

impl State {
    pub fn threshold_ns(&self) -> u64 {
        self.config.threshold.as_nanos() as u64
    }

    /// Looks at `pid` and watches it if the configuration selects it.
    pub fn consider(&mut self, pid: u32) -> bool {
        if self.watched.contains_key(&pid) {
            return true;
        }
        let Some(id) = discovery::consider(&self.config, pid) else {
            return false;
        };
        if let Err(e) = self.probes.watch(pid) {
            log::warn!("pid {pid}: cannot watch: {e}");
            return false;
        }
        log::info!(
            "watching pid={pid} comm={} exe={} container={}",
            id.comm,
            id.exe,
            id.container_label()
        );
        self.metrics.add_process(id.labels());
        if self.config.threadpool {
            self.pool_candidates.insert(pid, Instant::now());
        }
        // Read the perf map now: names survive the process's /proc going away.
        let s = self.symbolizer.clone();
        tokio::spawn(async move {
            let _ = s.symbolize(pid, Vec::new()).await;
        });
        self.watched.insert(pid, id);
        true
    }

    /// Stops watching `pid`. `exited`: its main thread is gone, so an open
    /// iteration is reported only if the process was cut short (not exit()).
    pub fn detach(&mut self, pid: u32, exited: bool, why: &str) {
        let Some(id) = self.watched.remove(&pid) else {
            return;
        };
        let threshold = self.threshold_ns();
        let loops = self.probes.thread_loops(pid);
        let exit_called = loops.iter().any(|(_, t)| t.exit_called_ns != 0);
        if exited && !exit_called {
            for open in self.builder.open_iterations(pid) {
                if open.last_sample_ns.saturating_sub(open.busy_start_ns) >= threshold {
                    let e = self.builder.close_ongoing(
                        pid,
                        open.tid,
                        open.seq,
                        open.busy_start_ns,
                        open.last_sample_ns,
                    );
                    let _ = self.sink.send(SinkMsg::Episode(e, id.clone()));
                }
            }
        } else if !exited {
            self.flush_open(pid, &id);
        }
        self.pool_candidates.remove(&pid);
        if let Some(mut pool) = self.pools.remove(&pid) {
            let workers = self.probes.pool_workers(pid);
            if let Some(e) = pool.finish(&workers, monotonic_ns(), exited) {
                let _ = self.sink.send(SinkMsg::PoolSaturation(e, id.clone()));
            }
        }
        self.probes.unwatch(pid);
        self.builder.forget_pid(pid);
        self.unwinder.forget(pid);
        self.metrics.remove_process(pid);
        let _ = self.sink.send(SinkMsg::Forget(pid));
        log::info!("unwatched pid={pid} comm={} ({why})", id.comm);
    }

    /// Reports the open busy windows of a running process that are already
    /// over the threshold (at stop: they would otherwise be lost).
    fn flush_open(&mut self, pid: u32, id: &Identity) {
        let now = monotonic_ns();
        for (tid, t) in self.probes.thread_loops(pid) {
            let Some(s) = t.slots.get(t.primary as usize) else {
                continue;
            };
            if s.in_poll != 0 || s.last_exit_ns == 0 {
                continue;
            }
            let start = s.last_exit_ns.saturating_sub(s.accum_busy_ns);
            if now.saturating_sub(start) >= self.threshold_ns() {
                let e = self
                    .builder
                    .close_ongoing(pid, tid, s.iterations, start, now);
                let _ = self.sink.send(SinkMsg::Episode(e, id.clone()));
            }
        }
    }

    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            let record = collect::decode(&item);
            drop(item);
            match record {
                Ok(Record::Sample(mut s)) if self.watched.contains_key(&s.pid) => {
                    self.unwinder.unwind_sample(&mut s);
                    self.builder.add_sample(s)
                }
                Ok(Record::Sample(_)) => {}
                Ok(Record::OffCpu(mut o)) if self.watched.contains_key(&o.pid) => {
                    self.unwinder.unwind_off_cpu(&mut o);
                    self.builder.add_off_cpu(o)
                }
                Ok(Record::OffCpu(_)) => {}
                Ok(Record::PoolSample(mut s)) => {
                    if let Some(m) = self.pools.get_mut(&s.pid) {
                        self.unwinder.unwind_sample(&mut s);
                        m.add_sample(s);
                    }
                }
                Ok(Record::PoolBusy(e)) => {
                    if let Some(m) = self.pools.get_mut(&e.pid) {
                        m.add_busy_period(&e);
                    }
                }
                Ok(Record::Episode(e)) => {
                    if let Some(id) = self.watched.get(&e.pid) {
                        let episode = self.builder.close(&e);
                        let _ = self.sink.send(SinkMsg::Episode(episode, id.clone()));
                    }
                }
                Ok(Record::Exec { pid, .. }) => {
                    // A watched process that runs another program is a new process to us.
                    if self.watched.contains_key(&pid) {
                        self.detach(pid, true, "exec");
                    }
                    if !self.consider(pid) && self.pending.len() < MAX_PENDING {
                        self.pending.push(pid);
                    }
                }
                Ok(Record::Exit { pid, .. }) => self.detach(pid, true, "exited"),
                Err(err) => {
                    self.decode_errors += 1;
                    log::debug!("{err}");
                }
            }
        }
    }

    /// Drains the ring buffer with each pool's worker state read just before
    /// (see `PoolMonitor::tick`), then acts on what the pools report.
    pub fn drain_and_tick_pools(&mut self, ring: &mut RingBuf<MapData>) {
        self.attach_pools();
        let mut snapshot = self.probes.all_pool_workers();
        self.drain(ring);
        let now = monotonic_ns();
        let mut outputs = Vec::new();
        for (&pid, m) in self.pools.iter_mut() {
            let workers = snapshot.remove(&pid).unwrap_or_default();
            outputs.extend(m.tick(&workers, now));
        }
        for out in outputs {
            match out {
                PoolOutput::Saturation(e) => {
                    if let Some(id) = self.watched.get(&e.pid) {
                        let _ = self.sink.send(SinkMsg::PoolSaturation(e, id.clone()));
                    }
                }
                PoolOutput::Saturated {
                    pid,
                    since_ns,
                    now_ns,
                    pool_size,
                } => {
                    let comm = self.watched.get(&pid).map_or("", |id| id.comm.as_str());
                    log::warn!(
                        "threadpool saturated pid={pid} comm={comm}: all {pool_size} workers busy for {:.1} s and counting",
                        now_ns.saturating_sub(since_ns) as f64 / 1e9
                    );
                }
                PoolOutput::Utilization(_) => {}
                PoolOutput::TooBusy { pid, items_per_s } => {
                    self.probes.detach_pool_uprobes(pid);
                    log::warn!("{}", too_busy_message(pid, items_per_s));
                }
            }
        }
    }

    /// Threadpool uprobes for processes watched long enough. Not at once:
    /// attaching them takes ~10 ms a process, and a host that starts many
    /// short-lived Node processes (scripts, CLIs) must not make discovery
    /// fall behind for pools that would never matter.
    fn attach_pools(&mut self) {
        let due: Vec<u32> = self
            .pool_candidates
            .iter()
            .filter(|(_, since)| since.elapsed() >= POOL_ATTACH_AFTER)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            self.pool_candidates.remove(&pid);
            if !self.watched.contains_key(&pid) {
                continue;
            }
            let attach = self.probes.attach_threadpool(pid);
            if let Some(note) = attach.note(pid) {
                log::warn!("{note}");
            }
            let monitor = PoolMonitor::new(pid, attach, self.threshold_ns(), monotonic_ns());
            self.pools.insert(pid, monitor);
        }
    }

    /// Second look at execs that were not Node-like at exec time.
    pub fn retry_pending(&mut self) {
        for pid in std::mem::take(&mut self.pending) {
            self.consider(pid);
        }
    }

    /// Safety net for exit events lost to a full ring buffer: checks only the
    /// watched pids, never scans /proc.
    pub fn sweep(&mut self) {
        let gone: Vec<u32> = self
            .watched
            .keys()
            .copied()
            .filter(|&p| !target::is_alive(p))
            .collect();
        for pid in gone {
            self.detach(pid, true, "gone (exit event missed)");
        }
    }

    pub fn scan(&mut self) {
        for pid in discovery::all_pids() {
            self.consider(pid);
        }
    }

    /// Frees the kernel state (LOOP_STATS, THREADS, OFF_CPU) of threads that
    /// exited inside a live process: a process that keeps starting and ending
    /// worker threads would otherwise fill the shared maps, and its metrics
    /// would grow a series per dead thread. Returns how many were freed.
    pub fn free_dead_threads(&mut self) -> usize {
        let mut freed = 0;
        let pids: Vec<u32> = self.watched.keys().copied().collect();
        for pid in pids {
            let mut tids: Vec<u32> = self
                .probes
                .loop_stats(pid)
                .into_iter()
                .map(|(k, _)| k.tid)
                .chain(self.probes.thread_loops(pid).into_iter().map(|(t, _)| t))
                .filter(|&tid| tid != pid)
                .collect();
            tids.sort_unstable();
            tids.dedup();
            // A thread is gone when its /proc entry is (a recycled tid is alive: kept).
            tids.retain(|tid| !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists());
            if tids.is_empty() {
                continue;
            }
            let keys: Vec<profiler_common::LoopKey> = tids
                .iter()
                .map(|&tid| profiler_common::LoopKey { pid, tid })
                .collect();
            self.probes
                .remove_keys::<profiler_common::LoopKey, profiler_common::LoopStats>(
                    "LOOP_STATS",
                    &keys,
                );
            self.probes
                .remove_keys::<u32, profiler_common::ThreadLoops>("THREADS", &tids);
            self.probes
                .remove_keys::<u32, profiler_common::OffCpuEvent>("OFF_CPU", &tids);
            freed += tids.len();
        }
        if freed > 0 {
            log::debug!("freed the kernel state of {freed} exited threads");
        }
        freed
    }

    /// Copies the kernel's per-loop statistics into the metrics snapshot.
    pub fn refresh_metrics(&self) {
        let now = monotonic_ns();
        let mut threads = thread_loops_by_pid(&self.probes);
        for &pid in self.watched.keys() {
            // The open iteration of each thread's outermost loop: how long the
            // loop has been busy right now (a stall still going on).
            let open: HashMap<u32, u64> = threads
                .remove(&pid)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(tid, t)| {
                    let s = t.slots.get(t.primary as usize)?;
                    (s.in_poll == 0 && s.last_exit_ns != 0).then(|| {
                        let start = s.last_exit_ns.saturating_sub(s.accum_busy_ns);
                        (tid, now.saturating_sub(start))
                    })
                })
                .collect();
            let loops = self
                .probes
                .active_loops(pid)
                .into_iter()
                .map(|(tid, role, stats)| LoopSeries {
                    tid,
                    role,
                    stats,
                    open_busy_ns: open.get(&tid).copied().unwrap_or(0),
                })
                .collect();
            self.metrics.set_loops(pid, loops);
        }
        let mut workers = self.probes.all_pool_workers();
        for (&pid, m) in &self.pools {
            let workers = workers.remove(&pid).unwrap_or_default();
            self.metrics.set_pool(pid, m.summary(&workers, now));
        }
        self.metrics.set_kernel(self.probes.counters());
        self.metrics.set_symbolizer(self.symbolizer.health());
    }
}

/// `Probes::thread_loops` of every process in one walk of the map: the
/// once-a-second refresh must not walk it once per watched process.
fn thread_loops_by_pid(probes: &Probes) -> HashMap<u32, Vec<(u32, ThreadLoops)>> {
    let mut by_pid: HashMap<u32, Vec<(u32, ThreadLoops)>> = HashMap::new();
    let Some(map) = probes.ebpf.map("THREADS") else {
        return by_pid;
    };
    let Ok(threads) = aya::maps::HashMap::<_, u32, ThreadLoops>::try_from(map) else {
        return by_pid;
    };
    for (tid, t) in threads.iter().filter_map(Result::ok) {
        by_pid.entry(t.pid).or_default().push((tid, t));
    }
    by_pid
}
