//! What the daemon holds while running: the probes, the watched processes and
//! the lifecycle (episode assembly, threadpool monitors, stalls). Attach and
//! detach live here so that every way a process leaves (exit event, lost
//! event caught by the sweep, reload, stop) frees the same things: kernel map
//! entries, samples held, metric series and the symbolizer's caches.
use std::{collections::HashMap, time::Instant};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{
    config::Config,
    discovery::{self, Identity},
    sink::SinkMsg,
};
use crate::{
    assembly::{
        episode::Episode,
        threadpool::{monitor::PoolMonitor, PoolOutput},
    },
    clock::monotonic_ns,
    daemon::metrics::{LoopSeries, Metrics},
    kernel::{collect, probes::Probes, target},
    lifecycle::{self, Left, Lifecycle, Stall},
    limits::{MAX_PENDING_EXECS, POOL_ATTACH_AFTER},
    symbolize::Symbolizer,
    unwind::ProcessUnwinder,
};

pub struct State {
    pub probes: Probes,
    pub config: Config,
    pub watched: HashMap<u32, Identity>,
    /// Records in, episodes and stalls out (shared with `loopbpf --pid`).
    pub life: Lifecycle,
    pub metrics: Metrics,
    pub symbolizer: Symbolizer,
    pub sink: UnboundedSender<SinkMsg>,
    /// Execs that did not look like Node yet: an embedder maps libnode only
    /// after exec, so they get one more look on the next tick.
    pub pending: Vec<u32>,
    /// Watched processes waiting for their threadpool uprobes, since when.
    pub pool_candidates: HashMap<u32, Instant>,
    /// Unwind tables read on blocking threads (discovery does not wait for
    /// them), back to the lifecycle on the next drain.
    pub unwind_ready: PreparedUnwind,
}

/// Process unwinders built off the daemon's loop: where the jobs send them.
pub struct PreparedUnwind {
    tx: UnboundedSender<(u32, ProcessUnwinder)>,
    rx: UnboundedReceiver<(u32, ProcessUnwinder)>,
}

impl Default for PreparedUnwind {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        PreparedUnwind { tx, rx }
    }
}

/// The daemon's side of the lifecycle: episodes and stalls to the sink (with
/// the process's identity), the stall gauge to the metrics, notices to the log.
pub struct DaemonOutput<'a> {
    pub sink: &'a UnboundedSender<SinkMsg>,
    pub watched: &'a HashMap<u32, Identity>,
    pub metrics: &'a Metrics,
}

impl lifecycle::Output for DaemonOutput<'_> {
    fn episode(&mut self, e: Episode) {
        if let Some(id) = self.watched.get(&e.pid) {
            let _ = self.sink.send(SinkMsg::Episode(e, id.clone()));
        }
    }

    fn stall(&mut self, s: Stall) {
        if let Some(id) = self.watched.get(&s.pid) {
            let _ = self.sink.send(SinkMsg::Stall(s, id.clone()));
        }
    }

    /// The stacks so far become the provisional record.
    fn wants_stacks_so_far(&self) -> bool {
        true
    }

    fn stalled(&mut self, pid: u32, busy: &[(u32, u64)]) {
        self.metrics.set_stalled(pid, busy);
    }

    fn pool(&mut self, out: PoolOutput) {
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
            PoolOutput::Utilization(_) | PoolOutput::TooBusy { .. } => {}
        }
    }

    fn warning(&mut self, _pid: Option<u32>, message: String) {
        log::warn!("{message}");
    }

    fn forget(&mut self, pid: u32) {
        let _ = self.sink.send(SinkMsg::Forget(pid));
    }
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
        // Symbols (and the perf map, whose names survive the process's /proc
        // going away) and unwind tables are read now, not on its first episode.
        let s = self.symbolizer.clone();
        tokio::spawn(async move {
            let _ = s.prepare(pid).await;
        });
        self.life.watch(pid);
        // A node binary's tables take tens of ms to read: on a blocking
        // thread, so a scan of many processes does not wait for them.
        let job = self.life.unwind_job(pid);
        let tx = self.unwind_ready.tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send((pid, job()));
        });
        self.watched.insert(pid, id);
        true
    }

    /// Stops watching `pid`. `exited`: its main thread is gone, so an open
    /// iteration is reported only if the process was cut short (not exit())
    /// or its stall was announced (see `Lifecycle::close`).
    pub fn detach(&mut self, pid: u32, exited: bool, why: &str) {
        if !self.watched.contains_key(&pid) {
            return;
        }
        let mut out = DaemonOutput {
            sink: &self.sink,
            watched: &self.watched,
            metrics: &self.metrics,
        };
        self.life
            .finish(&mut self.probes, pid, exited, monotonic_ns(), &mut out);
        self.pool_candidates.remove(&pid);
        self.metrics.remove_process(pid);
        if let Some(id) = self.watched.remove(&pid) {
            log::info!("unwatched pid={pid} comm={} ({why})", id.comm);
        }
    }

    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Ok((pid, p)) = self.unwind_ready.rx.try_recv() {
            self.life.add_prepared_unwind(pid, p);
        }
        while let Some(item) = ring.next() {
            let record = collect::decode(&item);
            drop(item);
            let mut out = DaemonOutput {
                sink: &self.sink,
                watched: &self.watched,
                metrics: &self.metrics,
            };
            match self.life.record(record, &mut out) {
                None => {}
                Some(Left::Exited(pid)) => self.detach(pid, true, "exited"),
                Some(Left::Exec(pid)) => {
                    // A watched process that runs another program is a new process to us.
                    self.detach(pid, true, "exec");
                    if !self.consider(pid) && self.pending.len() < MAX_PENDING_EXECS {
                        self.pending.push(pid);
                    }
                }
            }
        }
    }

    /// Drains the ring buffer with each pool's worker state read just before
    /// (see `PoolMonitor::tick`), then ticks the pools.
    pub fn drain_and_tick_pools(&mut self, ring: &mut RingBuf<MapData>) {
        self.attach_pools();
        let snapshot = self.probes.all_pool_workers();
        self.drain(ring);
        let mut out = DaemonOutput {
            sink: &self.sink,
            watched: &self.watched,
            metrics: &self.metrics,
        };
        self.life
            .tick_pools(snapshot, monotonic_ns(), &mut self.probes, &mut out);
    }

    /// Announces loops still blocked, stores what they did so far, and
    /// keeps `loopbpf_loop_stalled_seconds` current.
    pub fn check_stalls(&mut self) {
        let mut out = DaemonOutput {
            sink: &self.sink,
            watched: &self.watched,
            metrics: &self.metrics,
        };
        self.life
            .check_stalls(&self.probes, monotonic_ns(), &mut out);
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
            self.life.set_pool(pid, monitor);
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
        let threshold = self.threshold_ns();
        let mut threads = self.probes.thread_loops_by_pid();
        for &pid in self.watched.keys() {
            // The open iteration of each thread's outermost loop, once past
            // the threshold: how long the loop has been stalled right now.
            let open: HashMap<u32, u64> =
                lifecycle::open_windows(&threads.remove(&pid).unwrap_or_default())
                    .into_iter()
                    .map(|(tid, _, start)| (tid, now.saturating_sub(start)))
                    .filter(|&(_, busy)| busy >= threshold)
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
        for (pid, m) in self.life.pools() {
            let workers = workers.remove(&pid).unwrap_or_default();
            self.metrics.set_pool(pid, m.summary(&workers, now));
        }
        self.metrics.set_kernel(self.probes.counters());
        if let Some(v) = self.symbolizer.v8_names(None) {
            self.metrics.set_v8_names(v);
        }
        self.metrics.set_symbolizer(self.symbolizer.health());
    }
}
