//! One `loopbpf --pid …` session: attach, collect until told to stop or every
//! target has exited, then report what is still open and summarise.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc::{unbounded_channel, UnboundedSender},
};

use crate::{
    collect::{self, Record},
    episode::EpisodeBuilder,
    export::text::monotonic_ns,
    loop_stats::LoopFigures,
    privileges::{self, PrivilegeError},
    probes::{self, ProbeError, Probes, SyscallProbes, SyscallProbesChoice},
    report::{LoopSummary, ProcessSummary},
    reporter::{Output, Reporter},
    symbolize::{SymbolizeError, Symbolizer},
    target::{self, Target, TargetError, ThreadRole},
    threadpool::{monitor::PoolMonitor, uprobes::PoolAttach, PoolOutput},
    threads::{self, ThreadInfo},
    unwind::Unwinder,
};

/// Distinct stacks kept per open iteration (see `EpisodeBuilder`).
const MAX_DISTINCT_STACKS: usize = 4096;
/// Samples are sent without waking us; drain at least this often so the ring
/// buffer never fills during a long block.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
const LIVENESS_EVERY: Duration = Duration::from_millis(250);
const PERF_MAP_REFRESH_EVERY: Duration = Duration::from_secs(2);
/// A loop still blocked this long (and past the threshold) is announced before
/// its iteration ends: a wedged process may never end it.
const STALL_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// An idle Node process may sleep in one epoll call for as long as it likes,
/// but then its thread has a slot from the poll's return; a process with no
/// poll at all after this long is probably not running an event loop.
const NO_POLL_WARNING_AFTER: Duration = Duration::from_secs(5);

pub struct Settings {
    pub pids: Vec<u32>,
    pub threshold: Duration,
    pub frequency_hz: u64,
    pub duration: Option<Duration>,
    pub output: PathBuf,
    /// Stack files written per episode.
    pub formats: Vec<crate::export::FileFormat>,
    pub json: bool,
    pub force: bool,
    /// Attach the threadpool uprobes.
    pub threadpool: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Probes(#[from] ProbeError),
    #[error(transparent)]
    Symbolizer(#[from] SymbolizeError),
    #[error("watching the ring buffer failed: {0}")]
    Io(#[from] std::io::Error),
}

struct Watched {
    target: Target,
    since: Instant,
    samples: u64,
    no_poll_warned: bool,
    /// (tid, iteration) of stalls already announced.
    stalls_announced: HashSet<(u32, u64)>,
    pool: PoolMonitor,
    /// Roles of its threads at the last census (at start, then every
    /// refresh): all that is left to say about them once it has exited.
    threads: Vec<ThreadInfo>,
}

pub async fn run(settings: Settings) -> Result<(), RunError> {
    let syscall_probes = SyscallProbesChoice::from_env()?;
    privileges::check()?;
    let mut targets = Vec::new();
    for &pid in &settings.pids {
        targets.push(Target::inspect(pid, settings.force)?);
    }
    let threshold_ns = settings.threshold.as_nanos() as u64;
    let symbolizer = Symbolizer::start()?;
    let config = probes::kernel_config(threshold_ns, settings.frequency_hz, false)?;
    let (mut probes, ring) = Probes::attach(config, settings.frequency_hz, syscall_probes)?;
    let syscall_probes = probes.syscall_probes().clone();
    log::info!("{}", syscall_probes.describe());
    let mut watched = HashMap::new();
    let mut pool_notes = Vec::new();
    for t in targets {
        probes.watch(t.pid)?;
        let attach = if settings.threadpool {
            probes.attach_threadpool(t.pid)
        } else {
            PoolAttach::default()
        };
        if let Some(note) = attach.note(t.pid) {
            pool_notes.push((t.pid, note));
        }
        let w = Watched {
            pool: PoolMonitor::new(t.pid, attach, threshold_ns, monotonic_ns()),
            target: t,
            since: Instant::now(),
            samples: 0,
            no_poll_warned: false,
            stalls_announced: HashSet::new(),
            threads: Vec::new(),
        };
        watched.insert(w.target.pid, w);
    }

    let mut reporter = Reporter::new(
        settings.json,
        settings.output.clone(),
        symbolizer.clone(),
        threshold_ns,
        settings.frequency_hz,
        settings.formats.clone(),
    );
    // Load perf maps now: if the process dies before its first episode is
    // symbolized, /proc/PID/root is gone but the map we read stays cached.
    for &pid in watched.keys() {
        if let Ok(sym) = symbolizer.symbolize(pid, Vec::new()).await {
            reporter.perf_map_status(pid, &sym.perf_map);
        }
    }
    for (&pid, w) in watched.iter_mut() {
        w.threads = thread_census(&probes, &symbolizer, pid).await;
    }
    let (tx, rx) = unbounded_channel();
    let reporter = tokio::spawn(reporter.run(rx));
    let mut pids: Vec<u32> = watched.keys().copied().collect();
    pids.sort_unstable();
    let _ = tx.send(Output::Ready {
        pids,
        syscall_probes: syscall_probes.probes,
    });
    if syscall_probes.probes == SyscallProbes::TpBtf {
        // Users must know they pay the higher cost, and why.
        let message = syscall_probes.describe();
        let _ = tx.send(Output::Warning { pid: None, message });
    }
    for (pid, message) in pool_notes {
        let _ = tx.send(Output::Warning {
            pid: Some(pid),
            message,
        });
    }

    // SAFETY: the AsyncFd owns the RingBuf, which owns the fd: the fd stays open
    // for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut collector = Collector {
        builder: EpisodeBuilder::new(MAX_DISTINCT_STACKS),
        tx: tx.clone(),
        decode_errors: 0,
        exited: Vec::new(),
        unwinder: Unwinder::new(),
    };
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let mut last_liveness = Instant::now();
    let mut last_refresh = Instant::now();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                collector.drain(guard.get_inner_mut(), &mut watched);
                guard.clear_ready();
                // The kernel saw the main thread exit: no need to wait for the
                // liveness check (and its up-to-250 ms delay).
                for pid in std::mem::take(&mut collector.exited) {
                    if let Some(w) = watched.remove(&pid) {
                        finish(&mut probes, &mut collector, &symbolizer, w, threshold_ns, true).await;
                    }
                }
                if watched.is_empty() {
                    break;
                }
            }
            _ = drain_tick.tick() => {
                // Worker state is read before draining (see PoolMonitor::tick).
                let mut pools = probes.all_pool_workers();
                collector.drain(ring.get_mut(), &mut watched);
                let now = monotonic_ns();
                for (&pid, w) in watched.iter_mut() {
                    let workers = pools.remove(&pid).unwrap_or_default();
                    for out in w.pool.tick(&workers, now) {
                        if let PoolOutput::TooBusy { items_per_s, .. } = out {
                            probes.detach_pool_uprobes(pid);
                            let message = too_busy_message(pid, items_per_s);
                            let _ = tx.send(Output::Warning { pid: Some(pid), message });
                        } else {
                            let _ = tx.send(Output::Pool(out));
                        }
                    }
                }
                probes.flush_logs();
                if last_liveness.elapsed() >= LIVENESS_EVERY {
                    last_liveness = Instant::now();
                    let gone: Vec<u32> = watched.keys().copied().filter(|&p| !target::is_alive(p)).collect();
                    for pid in gone {
                        collector.drain(ring.get_mut(), &mut watched);
                        let w = watched.remove(&pid).expect("pid listed above");
                        finish(&mut probes, &mut collector, &symbolizer, w, threshold_ns, true).await;
                    }
                    if watched.is_empty() {
                        break;
                    }
                    warn_if_no_polling(&probes, &mut watched, &tx);
                    announce_stalls(&probes, &mut watched, &tx, threshold_ns);
                }
                if last_refresh.elapsed() >= PERF_MAP_REFRESH_EVERY {
                    last_refresh = Instant::now();
                    for (&pid, w) in watched.iter_mut() {
                        let (loops, pool) = kernel_roles(&probes, pid);
                        w.threads = threads::refresh(pid, &w.threads, &loops, &pool);
                    }
                    for &pid in watched.keys() {
                        let s = symbolizer.clone();
                        // Reading what the perf map grew by keeps the work small per
                        // episode and keeps names after the process is gone.
                        tokio::spawn(async move { let _ = s.symbolize(pid, Vec::new()).await; });
                    }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sleep_until(deadline) => break,
        }
    }

    collector.drain(ring.get_mut(), &mut watched);
    for (_, w) in watched.drain() {
        finish(
            &mut probes,
            &mut collector,
            &symbolizer,
            w,
            threshold_ns,
            false,
        )
        .await;
    }
    let k = probes.counters();
    if k.threads_full + k.stats_full > 0 {
        let message = format!(
            "kernel maps were full: {} threads and {} loops could not be tracked (too many watched threads)",
            k.threads_full, k.stats_full
        );
        let _ = tx.send(Output::Warning { pid: None, message });
    }
    if collector.decode_errors > 0 {
        let _ = tx.send(Output::Warning {
            pid: None,
            message: format!(
                "{} malformed ring-buffer records skipped",
                collector.decode_errors
            ),
        });
    }
    log::debug!("kernel counters: {k:?}");
    drop(collector);
    drop(tx);
    let _ = reporter.await;
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Turns ring-buffer records into episodes for the reporter.
struct Collector {
    builder: EpisodeBuilder,
    tx: UnboundedSender<Output>,
    decode_errors: u64,
    /// Watched processes whose main thread exited, to finish.
    exited: Vec<u32>,
    unwinder: Unwinder,
}

impl Collector {
    fn drain(&mut self, ring: &mut RingBuf<MapData>, watched: &mut HashMap<u32, Watched>) {
        while let Some(item) = ring.next() {
            match collect::decode(&item) {
                Ok(Record::Sample(mut s)) => {
                    if let Some(w) = watched.get_mut(&s.pid) {
                        w.samples += 1;
                    }
                    self.unwinder.unwind_sample(&mut s);
                    self.builder.add_sample(s);
                }
                Ok(Record::Episode(e)) => {
                    let _ = self.tx.send(Output::Episode(self.builder.close(&e)));
                }
                Ok(Record::OffCpu(mut o)) => {
                    self.unwinder.unwind_off_cpu(&mut o);
                    self.builder.add_off_cpu(o);
                }
                Ok(Record::PoolSample(mut s)) => {
                    if let Some(w) = watched.get_mut(&s.pid) {
                        w.samples += 1;
                        self.unwinder.unwind_sample(&mut s);
                        w.pool.add_sample(s);
                    }
                }
                Ok(Record::PoolBusy(e)) => {
                    if let Some(w) = watched.get_mut(&e.pid) {
                        w.pool.add_busy_period(&e);
                    }
                }
                Ok(Record::Exit { pid, .. }) => self.exited.push(pid),
                Ok(Record::Exec { .. }) => {}
                Err(err) => {
                    self.decode_errors += 1;
                    log::debug!("{err}");
                }
            }
        }
    }
}

/// Reports what is still open for `w`, then its summary, and frees its state.
async fn finish(
    probes: &mut Probes,
    collector: &mut Collector,
    symbolizer: &Symbolizer,
    mut w: Watched,
    threshold_ns: u64,
    exited: bool,
) {
    let pid = w.target.pid;
    let now = monotonic_ns();
    if exited {
        // A program that ended itself (exit_group: teardown after its last
        // callback, process.exit()) left an open iteration that blocked nobody,
        // unless it was already announced as a stall. One cut by SIGKILL or a
        // crash was a real block: its last sample is the last moment we know
        // it was still busy.
        let exit_called = probes
            .thread_loops(pid)
            .iter()
            .any(|(_, t)| t.exit_called_ns != 0);
        for open in collector.builder.open_iterations(pid) {
            let cut_short = !exit_called || w.stalls_announced.contains(&(open.tid, open.seq));
            if cut_short && open.last_sample_ns.saturating_sub(open.busy_start_ns) >= threshold_ns {
                let e = collector.builder.close_ongoing(
                    pid,
                    open.tid,
                    open.seq,
                    open.busy_start_ns,
                    open.last_sample_ns,
                );
                let _ = collector.tx.send(Output::Episode(e));
            }
        }
    } else {
        // Still running: the kernel knows when each open busy window began,
        // even one with no samples (asleep in a syscall).
        for (tid, seq, start) in open_windows(probes, pid) {
            if now.saturating_sub(start) >= threshold_ns {
                let e = collector.builder.close_ongoing(pid, tid, seq, start, now);
                let _ = collector.tx.send(Output::Episode(e));
            }
        }
    }
    let workers = probes.pool_workers(pid);
    if let Some(e) = w.pool.finish(&workers, now, exited) {
        let _ = collector.tx.send(Output::Pool(PoolOutput::Saturation(e)));
    }
    let threads = if exited || !target::is_alive(pid) {
        let (loops, pool) = kernel_roles(probes, pid);
        threads::update_from_kernel(pid, &mut w.threads, &loops, &pool);
        std::mem::take(&mut w.threads)
    } else {
        thread_census(probes, symbolizer, pid).await
    };
    // The census knows a loop thread that is not a Worker (V8's delayed-task
    // scheduler, on Node 20 only from its stack).
    let role_of = |tid: u32, polled_as: ThreadRole| {
        threads
            .iter()
            .find(|t| t.tid == tid && t.evidence != threads::Evidence::None)
            .map_or(polled_as, |t| t.role)
    };
    let loops: Vec<LoopSummary> = probes
        .active_loops(pid)
        .into_iter()
        .map(|(tid, role, s)| LoopSummary {
            tid,
            role: role_of(tid, role),
            figures: LoopFigures::from_stats(&s),
        })
        .collect();
    if loops.is_empty() && !w.no_poll_warned {
        let message = format!(
            "pid {pid} ({}): no event-loop polling seen while watched",
            w.target.comm
        );
        let _ = collector.tx.send(Output::Warning {
            pid: Some(pid),
            message,
        });
    }
    let summary = ProcessSummary {
        pid,
        comm: w.target.comm.clone(),
        loops,
        samples: w.samples,
        episodes_reported: 0,
        exited,
        kernel: probes.counters(),
        symbolizer: Default::default(),
        threadpool: w
            .pool
            .attach
            .busy_tracked
            .then(|| w.pool.summary(&workers, now)),
        threads,
    };
    let _ = collector.tx.send(Output::Summary(Box::new(summary)));
    let _ = collector.tx.send(Output::Forget(pid));
    probes.unwatch(pid);
    collector.builder.forget_pid(pid);
    collector.unwinder.forget(pid);
}

pub fn too_busy_message(pid: u32, items_per_s: f64) -> String {
    format!(
        "pid {pid}: threadpool runs {items_per_s:.0} work items/s, over the {:.0}/s at which its uprobes cost more than a profiler should: they are detached, and threadpool figures stop here (--no-threadpool skips them from the start)",
        crate::threadpool::monitor::MAX_ITEMS_PER_S
    )
}

/// Loop threads other than main, and threadpool workers, as the kernel saw them.
fn kernel_roles(probes: &Probes, pid: u32) -> (Vec<u32>, Vec<u32>) {
    let loops = probes
        .thread_loops(pid)
        .into_iter()
        .map(|(t, _)| t)
        .filter(|&t| t != pid)
        .collect();
    let pool = probes
        .pool_workers(pid)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    (loops, pool)
}

async fn thread_census(probes: &Probes, symbolizer: &Symbolizer, pid: u32) -> Vec<ThreadInfo> {
    let (loops, pool) = kernel_roles(probes, pid);
    let mut threads = threads::census(pid, &loops, &pool);
    threads::classify_by_stack(pid, &mut threads, symbolizer).await;
    threads
}

/// Open busy windows of each watched loop thread: `(tid, iteration, busy_start_ns)`.
fn open_windows(probes: &Probes, pid: u32) -> Vec<(u32, u64, u64)> {
    probes
        .thread_loops(pid)
        .into_iter()
        .filter_map(|(tid, t)| {
            let s = t.slots.get(t.primary as usize)?;
            (s.in_poll == 0 && s.last_exit_ns != 0).then(|| {
                (
                    tid,
                    s.iterations,
                    s.last_exit_ns.saturating_sub(s.accum_busy_ns),
                )
            })
        })
        .collect()
}

fn announce_stalls(
    probes: &Probes,
    watched: &mut HashMap<u32, Watched>,
    tx: &UnboundedSender<Output>,
    threshold_ns: u64,
) {
    let now = monotonic_ns();
    let after = threshold_ns.max(STALL_NOTICE_AFTER.as_nanos() as u64);
    for (&pid, w) in watched.iter_mut() {
        let open = open_windows(probes, pid);
        w.stalls_announced
            .retain(|(tid, seq)| open.iter().any(|&(t, s, _)| (t, s) == (*tid, *seq)));
        for (tid, seq, start) in open {
            if now.saturating_sub(start) >= after && w.stalls_announced.insert((tid, seq)) {
                let _ = tx.send(Output::Stall {
                    pid,
                    tid,
                    start_ns: start,
                    now_ns: now,
                });
            }
        }
    }
}

fn warn_if_no_polling(
    probes: &Probes,
    watched: &mut HashMap<u32, Watched>,
    tx: &UnboundedSender<Output>,
) {
    for (&pid, w) in watched.iter_mut() {
        if w.no_poll_warned || w.since.elapsed() < NO_POLL_WARNING_AFTER {
            continue;
        }
        w.no_poll_warned = true;
        if probes.thread_loops(pid).is_empty() {
            let message = format!(
                "pid {pid} ({}): no epoll polling seen in {} s: loopbpf times event loops through epoll_wait/epoll_pwait, so there is nothing to measure unless this is an idle Node process",
                w.target.comm,
                NO_POLL_WARNING_AFTER.as_secs()
            );
            let _ = tx.send(Output::Warning {
                pid: Some(pid),
                message,
            });
        }
    }
}
