//! Attaches the threadpool uprobes to one process's node binary, by symbol
//! name (official Node binaries keep their symbol table), scoped to that
//! process so other processes running the same binary never trap.
use std::{collections::HashMap, num::NonZeroU32, path::PathBuf};

use aya::{
    maps::HashMap as BpfHashMap,
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        ProgramError, UProbe,
    },
};
use profiler_common::{PendingWork, PoolWorker};

use super::pool_symbols::SymbolCache;
use crate::kernel::probes::Probes;

/// Where a work item enters the queue: libuv's internal entry (fs, dns,
/// random), and `uv_queue_work` (crypto, zlib, addons), which inlines it.
pub const SUBMIT: &str = "uv__work_submit";
pub const QUEUE_WORK: &str = "uv_queue_work";
/// Where an idle worker sleeps; called by libuv's `worker()` only when the
/// queue is empty.
pub const IDLE: &str = "uv_cond_wait";
/// The functions `worker()` calls to run an item, one per kind of work.
pub const WORK_FUNCTIONS: [&str; 5] = [
    "uv__fs_work",
    "uv__queue_work",
    "uv__getaddrinfo_work",
    "uv__getnameinfo_work",
    "uv__random_work",
];

/// How much of the threadpool a process's binary lets us see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolAttach {
    /// Symbols looked for and not found (or not attachable).
    pub missing: Vec<&'static str>,
    /// Busy workers and saturation are tracked.
    pub busy_tracked: bool,
    /// Queue wait (submit → start) is measured.
    pub queue_wait_tracked: bool,
    /// Why nothing could be attached, when nothing was.
    pub error: Option<String>,
}

impl PoolAttach {
    /// One line for the user when something is missing, `None` when complete.
    pub fn note(&self, pid: u32) -> Option<String> {
        if let Some(err) = &self.error {
            return Some(format!(
                "pid {pid}: threadpool not tracked ({err}): no utilization, saturation or queue wait"
            ));
        }
        if self.missing.is_empty() {
            return None;
        }
        let what = if !self.busy_tracked {
            "no utilization, saturation or queue wait"
        } else if !self.queue_wait_tracked {
            "utilization and saturation only, no queue wait"
        } else {
            "work of those kinds is not seen"
        };
        Some(format!(
            "pid {pid}: libuv symbol(s) {} not found in /proc/{pid}/exe (stripped binary?): threadpool figures degraded, {what}",
            self.missing.join(", ")
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolProbeError {
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("loading uprobe program {name} failed: {source}")]
    Load {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {name} failed: {source}")]
    Attach {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl Probes {
    /// Attaches the threadpool uprobes to `pid`'s executable. Missing symbols
    /// degrade what is tracked (see `PoolAttach`), they are not errors.
    pub fn attach_threadpool(&mut self, pid: u32) -> PoolAttach {
        let mut result = PoolAttach::default();
        let Some(scope) = NonZeroU32::new(pid).map(UProbeScope::OneProcess) else {
            result.error = Some("pid 0".into());
            return result;
        };
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let names: Vec<&'static str> = [IDLE, SUBMIT, QUEUE_WORK]
            .into_iter()
            .chain(WORK_FUNCTIONS)
            .collect();
        let offsets = match self.pool_links.symbols.offsets(&exe, &names) {
            Ok(o) => o,
            // Gone already (the daemon meets many short-lived processes):
            // nothing to say about a binary nobody runs any more.
            Err(_) if !crate::kernel::target::is_alive(pid) => return result,
            Err(e) => {
                result.error = Some(e.to_string());
                return result;
            }
        };
        let mut links = Vec::new();
        let mut failure = None;
        let mut attach = |probes: &mut Probes, prog: &'static str, symbol: &'static str| {
            let Some(&offset) = offsets.get(symbol) else {
                return false;
            };
            match probes.attach_uprobe(prog, offset, &exe, scope) {
                Ok(link) => {
                    links.push((prog, link));
                    true
                }
                Err(e) => {
                    failure.get_or_insert(format!("uprobe on {symbol}: {e}"));
                    false
                }
            }
        };
        let idle = attach(self, "pool_worker_idle", IDLE);
        let mut any_work = false;
        for f in WORK_FUNCTIONS {
            if attach(self, "pool_work_start", f) {
                any_work = true;
            } else {
                result.missing.push(f);
            }
        }
        if !idle {
            result.missing.push(IDLE);
        }
        result.busy_tracked = idle && any_work;
        if result.busy_tracked {
            let submit = attach(self, "pool_submit", SUBMIT);
            let queue_work = attach(self, "pool_queue_work", QUEUE_WORK);
            result.queue_wait_tracked = submit || queue_work;
            if !submit {
                result.missing.push(SUBMIT);
            }
            if !queue_work {
                result.missing.push(QUEUE_WORK);
            }
        }
        if let Some(f) = failure {
            if !crate::kernel::target::is_alive(pid) {
                result = PoolAttach::default();
            } else {
                // Present but not attachable: say why, not "not found".
                result.missing.retain(|m| !offsets.contains_key(m));
                result.error = Some(f);
                result.busy_tracked = false;
            }
        }
        if !result.busy_tracked {
            // Half a set of probes would only mislead: take them all off.
            self.detach_links(links);
            return result;
        }
        self.pool_links.links.insert(pid, links);
        result
    }

    fn attach_uprobe(
        &mut self,
        prog: &'static str,
        offset: u64,
        exe: &std::path::Path,
        scope: UProbeScope,
    ) -> Result<UProbeLinkId, PoolProbeError> {
        let p: &mut UProbe = self
            .ebpf
            .program_mut(prog)
            .and_then(|p| p.try_into().ok())
            .ok_or(PoolProbeError::MissingProgram { name: prog })?;
        if p.fd().is_err() {
            p.load()
                .map_err(|source| PoolProbeError::Load { name: prog, source })?;
        }
        p.attach(UProbeAttachLocation::AbsoluteOffset(offset), exe, scope)
            .map_err(|source| PoolProbeError::Attach { name: prog, source })
    }

    fn detach_links(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        let mut owned = Vec::new();
        for (prog, link) in links {
            if let Some(p) = self
                .ebpf
                .program_mut(prog)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
            {
                if let Ok(link) = p.take_link(link) {
                    owned.push(link);
                }
            }
        }
        if owned.is_empty() {
            return;
        }
        // Taking a uprobe off waits for the kernel's grace periods, one probe
        // after another: ~0.7 s for a process's uprobes, so loopbpf stopping
        // with 100 watched processes took over a minute. Dropped on other
        // threads all at once, the waits overlap and nobody waits for them.
        // (Should the thread not start, the links drop here, as before.)
        let _ = std::thread::Builder::new()
            .name("uprobe-detach".into())
            .spawn(move || {
                std::thread::scope(|s| {
                    for link in owned {
                        let _ = std::thread::Builder::new().spawn_scoped(s, move || drop(link));
                    }
                });
            });
    }

    /// Takes `pid`'s threadpool uprobes off; the workers' state stays
    /// readable (frozen) until `unwatch`.
    pub fn detach_pool_uprobes(&mut self, pid: u32) {
        if let Some(links) = self.pool_links.links.remove(&pid) {
            self.detach_links(links);
        }
    }

    /// Takes `pid`'s threadpool uprobes off and frees its kernel state.
    pub(crate) fn detach_threadpool(&mut self, pid: u32) {
        self.detach_pool_uprobes(pid);
        let workers: Vec<u32> = self.pool_workers(pid).into_iter().map(|(t, _)| t).collect();
        self.remove_keys::<u32, PoolWorker>("POOL_WORKERS", &workers);
        let pending: Vec<PendingWork> = self
            .ebpf
            .map("POOL_PENDING")
            .and_then(|m| BpfHashMap::<_, PendingWork, u64>::try_from(m).ok())
            .map(|m| {
                m.keys()
                    .filter_map(Result::ok)
                    .filter(|k| k.pid == pid)
                    .collect()
            })
            .unwrap_or_default();
        self.remove_keys::<PendingWork, u64>("POOL_PENDING", &pending);
    }

    /// Threadpool workers of `pid` the kernel has seen run work.
    pub fn pool_workers(&self, pid: u32) -> Vec<(u32, PoolWorker)> {
        self.all_pool_workers().remove(&pid).unwrap_or_default()
    }

    /// Every worker in the kernel's map, by process: one pass over the map
    /// (each entry is ~4.5 KiB) for all watched processes, not one per process.
    pub fn all_pool_workers(&self) -> HashMap<u32, Vec<(u32, PoolWorker)>> {
        let mut by_pid: HashMap<u32, Vec<(u32, PoolWorker)>> = HashMap::new();
        let Some(workers) = self
            .ebpf
            .map("POOL_WORKERS")
            .and_then(|m| BpfHashMap::<_, u32, PoolWorker>::try_from(m).ok())
        else {
            return by_pid;
        };
        for (tid, w) in workers.iter().filter_map(Result::ok) {
            by_pid.entry(w.pid).or_default().push((tid, w));
        }
        by_pid
    }
}

/// Threadpool uprobes per process, and the symbol offsets per binary.
#[derive(Default)]
pub struct PoolLinks {
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    symbols: SymbolCache,
}
