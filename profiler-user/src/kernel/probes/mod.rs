//! Loads loopbpf's eBPF object into the kernel, attaches it, and gives typed
//! access to its maps. Everything that can go wrong here becomes a `ProbeError`
//! naming what failed and, where we know it, why.
mod counters;
mod fentry;
pub mod pool_symbols;
pub mod pool_uprobes;
mod syscalls;

use std::os::fd::{AsRawFd, RawFd};

use crate::kernel::startup::{Phase, Startup};
use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent, ProgramError,
    },
    Btf, Ebpf, EbpfError, EbpfLoader,
};
use profiler_common::{Config, LoopKey, LoopStats, OffCpuEvent, ThreadLoops, WatchedProcess};
use syscalls::{attach_btf_tracepoints, attach_syscall_probes};
pub use syscalls::{
    SyscallProbes, SyscallProbesChoice, SyscallProbesInUse, SYSCALL_PROBES_ENV,
    TRACEFS_MOUNT_POINT, TRACEFS_PATHS,
};

use crate::kernel::target::ThreadRole;

/// Kernel BTF: for the BTF tracepoints, and the struct offsets they need.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Off-CPU intervals shorter than this only count in the totals: their stacks
/// would cost a record each and say little.
pub const OFF_CPU_MIN_NS: u64 = 200_000;

/// Stacks are taken once an iteration has been busy a quarter of the
/// threshold: an episode keeps at least 3/4 of its time sampled, and the
/// short iterations of a busy server (all discarded) cost no stack walks.
pub const SAMPLE_AFTER_THRESHOLD_DIVISOR: u64 = 4;

/// The kernel side's settings for this kernel: `task_struct` offsets come from
/// its BTF.
pub fn kernel_config(
    threshold_ns: u64,
    frequency_hz: u64,
    discover: bool,
) -> Result<Config, ProbeError> {
    let task = crate::kernel::btf::task_offsets(std::path::Path::new(VMLINUX_BTF))
        .map_err(ProbeError::TaskLayout)?;
    Ok(Config {
        threshold_ns,
        sample_stacks: u32::from(frequency_hz > 0),
        discover: u32::from(discover),
        task_pid_offset: task.pid,
        task_tgid_offset: task.tgid,
        off_cpu_min_ns: OFF_CPU_MIN_NS,
        sample_after_ns: threshold_ns / SAMPLE_AFTER_THRESHOLD_DIVISOR,
        copy_stack: u32::from(std::env::var_os(STACK_COPY_ENV).is_none_or(|v| v != "off")),
        _pad: 0,
        // Set from the ring buffer's size when it is created (`Probes::attach`).
        ring_budget_bytes: 0,
        ring_window_ns: 0,
    })
}

/// `LOOPBPF_THREADS_MAX_ENTRIES=N` sizes the `THREADS` map N instead of
/// 16,384: for tests, to make its LRU evict with a few threads (the code is
/// the production code; only the size differs).
pub const THREADS_MAX_ENTRIES_ENV: &str = "LOOPBPF_THREADS_MAX_ENTRIES";

fn threads_max_entries() -> Option<u32> {
    let n = std::env::var(THREADS_MAX_ENTRIES_ENV).ok()?.parse().ok()?;
    log::warn!("THREADS map sized {n} ({THREADS_MAX_ENTRIES_ENV})");
    Some(n)
}

/// `LOOPBPF_STACK_COPY=off` takes stacks by frame pointer only, as before
/// issue 16 (for `cargo xtask bench`'s before/after, and as an escape hatch).
pub const STACK_COPY_ENV: &str = "LOOPBPF_STACK_COPY";

/// The object profiler-ebpf compiles to, built by build.rs (aya-build).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loopbpf-probes"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("reading task_struct's layout from kernel BTF failed: {0}")]
    TaskLayout(#[source] crate::kernel::btf::BtfError),
    #[error("kernel BTF not available at /sys/kernel/btf/vmlinux (loopbpf needs a kernel built with CONFIG_DEBUG_INFO_BTF): {0}")]
    Btf(#[source] aya::BtfError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] EbpfError),
    #[error("eBPF program {name} failed to load or attach: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {name} is missing or has the wrong type: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("eBPF program {name} failed to attach to tracepoint syscalls:{tracepoint}: {source}")]
    TracePoint {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("tracefs is not mounted at /sys/kernel/tracing or /sys/kernel/debug/tracing, and mounting it at /sys/kernel/tracing failed: {0}")]
    TracefsMount(#[source] std::io::Error),
    #[error(
        "LOOPBPF_SYSCALL_PROBES={0:?} is not a choice: use auto, fentry, tracepoint or tp_btf"
    )]
    SyscallProbesChoice(String),
    #[error("listing online CPUs failed: {0}")]
    Cpus(String),
    #[error("cpu-clock sampling could not be opened on cpu {cpu}: {source}")]
    PerfEvent {
        cpu: u32,
        #[source]
        source: ProgramError,
    },
}

pub use counters::KernelCounters;

pub struct Probes {
    // Dropping `Ebpf` detaches every program: keep it for the life of `Probes`.
    pub(crate) ebpf: Ebpf,
    /// Threadpool uprobes per process (attached on demand, see `threadpool`).
    pub(crate) pool_links: crate::kernel::probes::pool_uprobes::PoolLinks,
    watched: HashMap<MapData, u32, WatchedProcess>,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    syscall_probes: SyscallProbesInUse,
    /// Each process's ring-buffer budget, from the ring's size (see
    /// `ring_size::process_budget`); kept across `set_config`.
    ring_budget: (u64, u64),
    /// `THREADS` entries userspace inserted (seeded polls) and deleted, and
    /// the evictions found so far (see `threads_evicted`).
    threads_seeded: u64,
    threads_removed: u64,
    threads_evicted: std::sync::atomic::AtomicU64,
    /// Kept alive so the log ring buffer map stays valid (see toolchain notes).
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probes {
    /// Loads and attaches everything; samples stacks at `frequency_hz` on every
    /// online CPU (0 disables sampling). `syscall_probes` picks the programs
    /// on the epoll, close and exit_group syscalls (see `syscall_probes()`).
    pub fn attach(
        mut config: Config,
        frequency_hz: u64,
        syscall_probes: SyscallProbesChoice,
        startup: &mut Startup,
    ) -> Result<(Probes, RingBuf<MapData>), ProbeError> {
        raise_memlock_limit();
        let btf = startup
            .time(Phase::Btf, Btf::from_sys_fs)
            .map_err(ProbeError::Btf)?;
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| ProbeError::Cpus(format!("{what}: {e}")))?;
        let events_bytes = crate::kernel::ring_size::events_bytes(cpus.len() as u64, frequency_hz);
        log::info!(
            "ring buffer: {} KiB for {} CPUs at {frequency_hz} Hz",
            events_bytes >> 10,
            cpus.len()
        );
        let ring_budget = (
            crate::kernel::ring_size::process_budget(events_bytes),
            crate::kernel::ring_size::BUDGET_WINDOW.as_nanos() as u64,
        );
        (config.ring_budget_bytes, config.ring_window_ns) = ring_budget;
        let mut ebpf = startup
            .time(Phase::Maps, || {
                let mut loader = EbpfLoader::new();
                loader
                    .btf(Some(&btf))
                    .map_max_entries("EVENTS", events_bytes as u32);
                if let Some(n) = threads_max_entries() {
                    loader.map_max_entries("THREADS", n);
                }
                loader.load(OBJECT)
            })
            .map_err(ProbeError::Load)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("no kernel-side log channel: {e}");
                None
            }
        };

        let mut config_map: Array<MapData, Config> = take_map(&mut ebpf, "CONFIG")?;
        config_map
            .set(0, config, 0)
            .map_err(|source| ProbeError::Map {
                name: "CONFIG",
                source,
            })?;
        let watched = take_map(&mut ebpf, "WATCHED")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let events: RingBuf<MapData> = take_map(&mut ebpf, "EVENTS")?;

        let syscall_probes = attach_syscall_probes(&mut ebpf, &btf, syscall_probes, startup)?;
        attach_btf_tracepoints(
            &mut ebpf,
            &btf,
            &[
                ("process_exec", "sched_process_exec"),
                ("process_exit", "sched_process_exit"),
                ("sched_switch", "sched_switch"),
                ("sched_wakeup", "sched_wakeup"),
            ],
            startup,
        )?;

        if frequency_hz > 0 {
            let prog: &mut PerfEvent = program(&mut ebpf, "sample_stack")?;
            startup
                .time(Phase::Load("sample_stack"), || prog.load())
                .map_err(|source| ProbeError::Program {
                    name: "sample_stack",
                    source,
                })?;
            let _attach = startup.timer(Phase::Attach);
            for cpu in cpus {
                prog.attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(frequency_hz),
                    false,
                )
                .map_err(|source| ProbeError::PerfEvent { cpu, source })?;
            }
        }

        let probes = Probes {
            ebpf,
            watched,
            config: config_map,
            counters,
            syscall_probes,
            ring_budget,
            threads_seeded: 0,
            threads_removed: 0,
            threads_evicted: Default::default(),
            logger,
            pool_links: Default::default(),
        };
        Ok((probes, events))
    }

    /// The syscall probes in use, and why those.
    pub fn syscall_probes(&self) -> &SyscallProbesInUse {
        &self.syscall_probes
    }

    pub fn watch(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.watched
            .insert(pid, WatchedProcess::default(), 0)
            .map_err(|source| ProbeError::Map {
                name: "WATCHED",
                source,
            })?;
        self.update_watched_bitmap(pid)?;
        if self.syscall_probes.probes == SyscallProbes::Fentry {
            self.threads_seeded +=
                crate::kernel::probes::fentry::seed_asleep_polls(&mut self.ebpf, pid);
        }
        Ok(())
    }

    /// Rewrites the `WATCHED_BITMAP` word holding `pid`'s bit from the watched
    /// set (the word's 64 tgids).
    fn update_watched_bitmap(&mut self, pid: u32) -> Result<(), ProbeError> {
        // The kernel side's index: one bit per tgid, no wrapping.
        let word_of = |tgid: u32| tgid / 64;
        let index = word_of(pid);
        let word = self
            .watched
            .keys()
            .filter_map(Result::ok)
            .filter(|&t| word_of(t) == index)
            .fold(0u64, |w, t| w | 1 << (t % 64));
        let map = self.ebpf.map_mut("WATCHED_BITMAP").ok_or(ProbeError::Map {
            name: "WATCHED_BITMAP",
            source: MapError::InvalidName {
                name: "WATCHED_BITMAP".into(),
            },
        })?;
        let mut bitmap: Array<_, u64> = Array::try_from(map).map_err(|source| ProbeError::Map {
            name: "WATCHED_BITMAP",
            source,
        })?;
        bitmap
            .set(index, word, 0)
            .map_err(|source| ProbeError::Map {
                name: "WATCHED_BITMAP",
                source,
            })
    }

    /// Stops watching `pid` and frees its kernel state.
    pub fn unwatch(&mut self, pid: u32) {
        let _ = self.watched.remove(&pid);
        if let Err(e) = self.update_watched_bitmap(pid) {
            log::debug!("pid {pid}: {e}");
        }
        // Every thread with kernel state: polling threads (THREADS, also those
        // that never completed an iteration) and loops with statistics.
        let stats: Vec<LoopKey> = self.loop_stats(pid).into_iter().map(|(k, _)| k).collect();
        let mut tids: Vec<u32> = self
            .thread_loops(pid)
            .into_iter()
            .map(|(tid, _)| tid)
            .collect();
        tids.extend(stats.iter().map(|k| k.tid));
        tids.sort_unstable();
        tids.dedup();
        self.remove_keys::<LoopKey, LoopStats>("LOOP_STATS", &stats);
        self.remove_keys::<u32, ThreadLoops>("THREADS", &tids);
        self.remove_keys::<u32, OffCpuEvent>("OFF_CPU", &tids);
        self.detach_threadpool(pid);
    }

    pub(crate) fn remove_keys<K: aya::Pod, V: aya::Pod>(&mut self, map_name: &str, keys: &[K]) {
        let Some(map) = self.ebpf.map_mut(map_name) else {
            return;
        };
        let threads = map_name == "THREADS";
        if let Ok(mut map) = HashMap::<_, K, V>::try_from(map) {
            for key in keys {
                // A key already gone (evicted) is not counted as removed.
                if map.remove(key).is_ok() && threads {
                    self.threads_removed += 1;
                }
            }
        }
    }

    /// `THREADS` entries the LRU evicted so far, given the `inserted` count of
    /// the kernel side: every entry inserted and not deleted by userspace is
    /// present or was evicted. The map's keys are counted after `inserted`
    /// was read, so an entry inserted in between only hides an eviction until
    /// the next call; the total never goes down.
    fn threads_evicted(&self, inserted: u64) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.threads_evicted.load(Relaxed);
        let Some(map) = self.ebpf.map("THREADS") else {
            return before;
        };
        let Ok(threads) = HashMap::<_, u32, ThreadLoops>::try_from(map) else {
            return before;
        };
        let present = threads.keys().filter(Result::is_ok).count() as u64;
        let evicted = (inserted + self.threads_seeded)
            .saturating_sub(self.threads_removed)
            .saturating_sub(present)
            .max(before);
        self.threads_evicted.store(evicted, Relaxed);
        evicted
    }

    pub fn set_config(&mut self, mut config: Config) -> Result<(), ProbeError> {
        (config.ring_budget_bytes, config.ring_window_ns) = self.ring_budget;
        self.config
            .set(0, config, 0)
            .map_err(|source| ProbeError::Map {
                name: "CONFIG",
                source,
            })
    }

    /// In-kernel statistics of every loop thread of `pid`.
    pub fn loop_stats(&self, pid: u32) -> Vec<(LoopKey, LoopStats)> {
        let Some(map) = self.ebpf.map("LOOP_STATS") else {
            return Vec::new();
        };
        let Ok(stats) = HashMap::<_, LoopKey, LoopStats>::try_from(map) else {
            return Vec::new();
        };
        stats
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.pid == pid)
            .collect()
    }

    /// Loops of `pid` that completed at least one iteration, with their
    /// thread's role, the main loop first.
    pub fn active_loops(&self, pid: u32) -> Vec<(u32, ThreadRole, LoopStats)> {
        let mut loops: Vec<_> = self
            .loop_stats(pid)
            .into_iter()
            .filter(|(_, s)| s.iterations > 0)
            .map(|(k, s)| (k.tid, ThreadRole::of_loop_thread(pid, k.tid), s))
            .collect();
        loops.sort_by_key(|&(tid, role, _)| (role != ThreadRole::Main, tid));
        loops
    }

    /// Loop state of every polling thread of `pid` (open iterations included).
    /// `thread_loops` of every process in one walk of the map: a check
    /// every tick must not walk it once per watched process.
    pub fn thread_loops_by_pid(&self) -> std::collections::HashMap<u32, Vec<(u32, ThreadLoops)>> {
        let mut by_pid: std::collections::HashMap<u32, Vec<(u32, ThreadLoops)>> =
            std::collections::HashMap::new();
        let Some(map) = self.ebpf.map("THREADS") else {
            return by_pid;
        };
        let Ok(threads) = HashMap::<_, u32, ThreadLoops>::try_from(map) else {
            return by_pid;
        };
        for (tid, t) in threads.iter().filter_map(Result::ok) {
            by_pid.entry(t.pid).or_default().push((tid, t));
        }
        by_pid
    }

    pub fn thread_loops(&self, pid: u32) -> Vec<(u32, ThreadLoops)> {
        let Some(map) = self.ebpf.map("THREADS") else {
            return Vec::new();
        };
        let Ok(threads) = HashMap::<_, u32, ThreadLoops>::try_from(map) else {
            return Vec::new();
        };
        threads
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, t)| t.pid == pid)
            .collect()
    }

    pub fn counters(&self) -> KernelCounters {
        let sum = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        use profiler_common::*;
        KernelCounters {
            samples_sent: sum(COUNTER_SAMPLES_SENT),
            samples_lost: sum(COUNTER_SAMPLES_LOST),
            episodes_lost: sum(COUNTER_EPISODES_LOST),
            threads_full: sum(COUNTER_THREADS_FULL),
            stats_full: sum(COUNTER_STATS_FULL),
            slots_recycled: sum(COUNTER_SLOTS_RECYCLED),
            user_stack_errors: sum(COUNTER_USER_STACK_ERRORS),
            off_cpu_lost: sum(COUNTER_OFF_CPU_LOST),
            pool_workers_full: sum(COUNTER_POOL_WORKERS_FULL),
            pool_unmatched: sum(COUNTER_POOL_UNMATCHED),
            pool_events_lost: sum(COUNTER_POOL_EVENTS_LOST),
            stack_copy_errors: sum(COUNTER_STACK_COPY_ERRORS),
            off_cpu_budget: sum(COUNTER_OFF_CPU_BUDGET),
            episodes_budget: sum(COUNTER_EPISODES_BUDGET),
            pool_events_budget: sum(COUNTER_POOL_EVENTS_BUDGET),
            threads_evicted: self.threads_evicted(sum(COUNTER_THREADS_INSERTED)),
        }
    }

    /// The kernel-side log channel, to poll alongside the event ring buffer.
    pub fn log_fd(&self) -> Option<RawFd> {
        self.logger.as_ref().map(|l| l.as_raw_fd())
    }

    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

pub(crate) fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(ProbeError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_probes_choices_parse() {
        let parse = |v| SyscallProbesChoice::parse(v).ok();
        assert_eq!(parse(""), Some(SyscallProbesChoice::Auto));
        assert_eq!(parse("auto"), Some(SyscallProbesChoice::Auto));
        let only = SyscallProbesChoice::Only;
        assert_eq!(parse("tracepoint"), Some(only(SyscallProbes::Tracepoint)));
        assert_eq!(parse("tp_btf"), Some(only(SyscallProbes::TpBtf)));
        assert_eq!(parse("fentry"), Some(only(SyscallProbes::Fentry)));
        let e = SyscallProbesChoice::parse("kprobe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("LOOPBPF_SYSCALL_PROBES=\"kprobe\""), "{e}");
    }

    #[test]
    fn the_fallback_says_what_it_costs_and_why() {
        let used = SyscallProbesInUse {
            probes: SyscallProbes::TpBtf,
            reason: "tracefs is missing".into(),
        };
        let line = used.describe();
        assert!(line.starts_with("syscall probes: tp_btf"), "{line}");
        assert!(line.contains("every syscall of the host"), "{line}");
        assert!(line.ends_with("because tracefs is missing"), "{line}");
    }
}
