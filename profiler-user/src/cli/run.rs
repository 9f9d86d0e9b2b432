//! One `loopbpf --pid …` session: attach, collect until told to stop or every
//! target has exited, then report what is still open and summarise.
use std::{
    collections::HashMap,
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
    assembly::{
        loop_stats::LoopFigures,
        threadpool::monitor::PoolMonitor,
        threads::{self, ThreadInfo},
    },
    cli::reporter::{Output, Reporter},
    clock::monotonic_ns,
    export::report::{LoopSummary, ProcessSummary},
    kernel::startup::{Phase, Startup},
    kernel::{
        collect,
        privileges::{self, PrivilegeError},
        probes::{
            self, pool_uprobes::PoolAttach, ProbeError, Probes, SyscallProbes, SyscallProbesChoice,
        },
        target::{self, Target, TargetError, ThreadRole},
    },
    lifecycle::{Left, Lifecycle},
    limits::{DRAIN_EVERY, NO_POLL_WARNING_AFTER, PERF_MAP_REFRESH_EVERY, STALL_CHECK_EVERY},
    symbolize::{SymbolizeError, Symbolizer},
    unwind::Unwinder,
};

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

/// What the session keeps beside the lifecycle for its summary.
struct Watched {
    target: Target,
    since: Instant,
    no_poll_warned: bool,
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
    // Symbols and unwind tables are read on other threads while the
    // verifier runs, so the first episode is named as fast as the tenth.
    let pids: Vec<u32> = targets.iter().map(|t| t.pid).collect();
    let prepared = prepare_symbols(&symbolizer, &pids);
    let unwinder = prepare_unwinder(pids);
    let mut startup = Startup::default();
    let config = probes::kernel_config(threshold_ns, settings.frequency_hz, false)?;
    let (mut probes, ring) =
        Probes::attach(config, settings.frequency_hz, syscall_probes, &mut startup)?;
    let syscall_probes = probes.syscall_probes().clone();
    log::info!("{}", syscall_probes.describe());
    let mut life = Lifecycle::new(threshold_ns);
    let mut watched = HashMap::new();
    let mut pool_notes = Vec::new();
    for t in targets {
        probes.watch(t.pid)?;
        let attach = if settings.threadpool {
            startup.time(Phase::Threadpool, || probes.attach_threadpool(t.pid))
        } else {
            PoolAttach::default()
        };
        if let Some(note) = attach.note(t.pid) {
            pool_notes.push((t.pid, note));
        }
        life.watch(t.pid);
        life.set_pool(
            t.pid,
            PoolMonitor::new(t.pid, attach, threshold_ns, monotonic_ns()),
        );
        let w = Watched {
            target: t,
            since: Instant::now(),
            no_poll_warned: false,
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
    // Perf maps are read now: if the process dies before its first episode
    // is symbolized, /proc/PID/root is gone but the map we read stays cached.
    let waited = std::time::Instant::now();
    for (pid, sym) in prepared.await {
        reporter.perf_map_status(pid, &sym.perf_map);
    }
    startup.add(Phase::Symbols, waited.elapsed());
    let waited = std::time::Instant::now();
    life.set_unwinder(unwinder.await.unwrap_or_default());
    startup.add(Phase::UnwindTables, waited.elapsed());
    log::info!("start-up: {}", startup.describe());
    for (&pid, w) in watched.iter_mut() {
        w.threads = thread_census(&probes, &symbolizer, pid).await;
    }
    let (mut tx, rx) = unbounded_channel();
    let reporter = tokio::spawn(reporter.run(rx));
    let mut pids: Vec<u32> = watched.keys().copied().collect();
    pids.sort_unstable();
    let _ = tx.send(Output::Ready {
        pids,
        syscall_probes: syscall_probes.probes,
        startup,
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
    // BTF, the BPF object and the ELF parses of start-up are freed by now.
    crate::memory::release_freed();

    // SAFETY: the AsyncFd owns the RingBuf, which owns the fd: the fd stays open
    // for as long as it is registered.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
    let mut last_liveness = Instant::now();
    let mut last_refresh = Instant::now();
    // Watched processes whose main thread exited, to finish.
    let mut exited = Vec::new();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(&mut life, guard.get_inner_mut(), &mut tx, &mut exited);
                guard.clear_ready();
                // The kernel saw the main thread exit: no need to wait for the
                // liveness check (and its up-to-250 ms delay).
                for pid in std::mem::take(&mut exited) {
                    if let Some(w) = watched.remove(&pid) {
                        finish(&mut probes, &mut life, &mut tx, &symbolizer, w, true).await;
                    }
                }
                if watched.is_empty() {
                    break;
                }
            }
            _ = drain_tick.tick() => {
                // Worker state is read before draining (see PoolMonitor::tick).
                let pools = probes.all_pool_workers();
                drain(&mut life, ring.get_mut(), &mut tx, &mut exited);
                life.tick_pools(pools, monotonic_ns(), &mut probes, &mut tx);
                probes.flush_logs();
                if last_liveness.elapsed() >= STALL_CHECK_EVERY {
                    last_liveness = Instant::now();
                    let gone: Vec<u32> = watched.keys().copied().filter(|&p| !target::is_alive(p)).collect();
                    for pid in gone {
                        drain(&mut life, ring.get_mut(), &mut tx, &mut exited);
                        let w = watched.remove(&pid).expect("pid listed above");
                        finish(&mut probes, &mut life, &mut tx, &symbolizer, w, true).await;
                    }
                    if watched.is_empty() {
                        break;
                    }
                    warn_if_no_polling(&probes, &mut watched, &tx);
                    life.check_stalls(&probes, monotonic_ns(), &mut tx);
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

    drain(&mut life, ring.get_mut(), &mut tx, &mut exited);
    for (_, w) in watched.drain() {
        finish(&mut probes, &mut life, &mut tx, &symbolizer, w, false).await;
    }
    let k = probes.counters();
    if k.threads_full + k.stats_full > 0 {
        let message = format!(
            "kernel maps were full: {} threads and {} loops could not be tracked (too many watched threads)",
            k.threads_full, k.stats_full
        );
        let _ = tx.send(Output::Warning { pid: None, message });
    }
    if life.decode_errors > 0 {
        let _ = tx.send(Output::Warning {
            pid: None,
            message: format!(
                "{} malformed ring-buffer records skipped",
                life.decode_errors
            ),
        });
    }
    log::debug!("kernel counters: {k:?}");
    drop(tx);
    let _ = reporter.await;
    Ok(())
}

/// Prepares every target's symbols on the symbolizer thread; resolves to
/// their perf maps' status. A target it fails for is named on demand.
fn prepare_symbols(
    symbolizer: &Symbolizer,
    pids: &[u32],
) -> impl std::future::Future<Output = Vec<(u32, crate::symbolize::Symbolized)>> {
    let symbolizer = symbolizer.clone();
    let pids = pids.to_vec();
    let task = tokio::spawn(async move {
        let mut prepared = Vec::new();
        for pid in pids {
            if let Ok(sym) = symbolizer.prepare(pid).await {
                prepared.push((pid, sym));
            }
        }
        prepared
    });
    async move { task.await.unwrap_or_default() }
}

/// Reads the targets' unwind tables on a blocking thread.
fn prepare_unwinder(pids: Vec<u32>) -> tokio::task::JoinHandle<Unwinder> {
    tokio::task::spawn_blocking(move || {
        let mut unwinder = Unwinder::new();
        for pid in pids {
            unwinder.prepare(pid);
        }
        unwinder
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Everything in the ring buffer through the lifecycle; exits are kept for
/// the session to finish (an exec changes nothing: the pid is still watched).
fn drain(
    life: &mut Lifecycle,
    ring: &mut RingBuf<MapData>,
    tx: &mut UnboundedSender<Output>,
    exited: &mut Vec<u32>,
) {
    while let Some(item) = ring.next() {
        let record = collect::decode(&item);
        drop(item);
        if let Some(Left::Exited(pid)) = life.record(record, tx) {
            exited.push(pid);
        }
    }
}

/// Reports what is still open for `w`, then its summary, and frees its state.
async fn finish(
    probes: &mut Probes,
    life: &mut Lifecycle,
    tx: &mut UnboundedSender<Output>,
    symbolizer: &Symbolizer,
    mut w: Watched,
    exited: bool,
) {
    let pid = w.target.pid;
    let now = monotonic_ns();
    let kept = life.close(probes, pid, exited, now, tx);
    let workers = probes.pool_workers(pid);
    let threads = if exited || !target::is_alive(pid) {
        let (loops, pool) = kernel_roles(probes, pid);
        threads::update_from_kernel(pid, &mut w.threads, &loops, &pool);
        std::mem::take(&mut w.threads)
    } else {
        let (loops, pool) = kernel_roles(probes, pid);
        let mut threads = threads::census_again(pid, &w.threads, &loops, &pool);
        threads::classify_by_stack(pid, &mut threads, symbolizer).await;
        threads
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
        let _ = tx.send(Output::Warning {
            pid: Some(pid),
            message,
        });
    }
    let pool = kept.as_ref().and_then(|k| k.pool.as_ref());
    let summary = ProcessSummary {
        pid,
        comm: w.target.comm.clone(),
        loops,
        samples: kept.as_ref().map_or(0, |k| k.samples),
        episodes_reported: 0,
        exited,
        kernel: probes.counters(),
        symbolizer: Default::default(),
        threadpool: pool
            .filter(|p| p.attach.busy_tracked)
            .map(|p| p.summary(&workers, now)),
        threads,
        v8_names: None,
    };
    let _ = tx.send(Output::Summary(Box::new(summary)));
    life.release(probes, pid, tx);
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
