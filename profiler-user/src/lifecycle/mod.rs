//! The life of a watched process, written once for both front ends
//! (`cli::run` and `daemon::state`): records in, episodes out; threadpool
//! monitors ticked; a loop still blocked announced while it lasts; what is
//! open closed when the process exits or loopbpf stops; threshold changes.
//!
//! It reads the kernel's state through [`KernelState`] (the probes; a
//! recorded table in the unit tests) and says what happened through
//! [`Output`] (the terminal/JSON reporter; the daemon's store, metrics and log).
use std::collections::HashMap;

use profiler_common::{PoolWorker, ThreadLoops};

use crate::{
    assembly::{
        episode::{Episode, EpisodeBuilder},
        threadpool::{monitor::PoolMonitor, PoolOutput},
    },
    kernel::{
        collect::{DecodeError, Record},
        probes::Probes,
    },
    limits::{MAX_DISTINCT_STACKS, MAX_POOL_ITEMS_PER_S, STALL_NOTICE_AFTER, STALL_REPEAT_EVERY},
    unwind::{ProcessUnwinder, Unwinder},
};

#[cfg(test)]
mod tests;

/// What the lifecycle reads from the kernel and asks of it.
pub trait KernelState {
    /// Loop threads of every watched process, by pid, in one walk of the map.
    fn thread_loops_by_pid(&self) -> HashMap<u32, Vec<(u32, ThreadLoops)>>;
    fn thread_loops(&self, pid: u32) -> Vec<(u32, ThreadLoops)>;
    fn pool_workers(&self, pid: u32) -> Vec<(u32, PoolWorker)>;
    fn unwatch(&mut self, pid: u32);
    fn detach_pool_uprobes(&mut self, pid: u32);
}

impl KernelState for Probes {
    fn thread_loops_by_pid(&self) -> HashMap<u32, Vec<(u32, ThreadLoops)>> {
        Probes::thread_loops_by_pid(self)
    }
    fn thread_loops(&self, pid: u32) -> Vec<(u32, ThreadLoops)> {
        Probes::thread_loops(self, pid)
    }
    fn pool_workers(&self, pid: u32) -> Vec<(u32, PoolWorker)> {
        Probes::pool_workers(self, pid)
    }
    fn unwatch(&mut self, pid: u32) {
        Probes::unwatch(self, pid)
    }
    fn detach_pool_uprobes(&mut self, pid: u32) {
        Probes::detach_pool_uprobes(self, pid)
    }
}

/// A loop busy past the threshold and still busy: said after
/// `max(threshold, STALL_NOTICE_AFTER)`, then every `STALL_REPEAT_EVERY`.
#[derive(Clone, Debug)]
pub struct Stall {
    pub pid: u32,
    pub tid: u32,
    pub seq: u64,
    pub start_ns: u64,
    pub now_ns: u64,
    /// The first notice of this iteration (later ones repeat it).
    pub first: bool,
    /// The samples so far, when the output asked for them.
    pub so_far: Option<Episode>,
}

/// Where the lifecycle's results go: the CLI reporter and the daemon's sink.
pub trait Output {
    /// A blocked iteration, ended, cut short by the process's death, or
    /// still open when loopbpf stops.
    fn episode(&mut self, e: Episode);
    fn stall(&mut self, s: Stall);
    /// Whether `stall` wants the stacks gathered so far (a copy of them).
    fn wants_stacks_so_far(&self) -> bool {
        false
    }
    /// Loops of `pid` busy past the threshold right now, with how long they
    /// have been busy: `(tid, busy_ns)`, empty when none is.
    fn stalled(&mut self, _pid: u32, _busy: &[(u32, u64)]) {}
    /// Threadpool saturations, notices and utilization.
    fn pool(&mut self, out: PoolOutput);
    fn warning(&mut self, pid: Option<u32>, message: String);
    /// The process is gone and everything about it is out.
    fn forget(&mut self, pid: u32);
}

/// What a watched process left behind the record stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    /// Its main thread exited.
    Exited(u32),
    /// It ran another program (seen when discovering).
    Exec(u32),
}

/// What the lifecycle keeps per watched process.
pub struct Watched {
    /// Samples taken of it (loop threads and threadpool workers).
    pub samples: u64,
    pub pool: Option<PoolMonitor>,
    /// (tid, iteration) of stalls announced, with when to say it again.
    stalls: HashMap<(u32, u64), u64>,
}

/// An open busy window of a loop thread: `(tid, iteration, busy_start_ns)`.
pub type OpenWindow = (u32, u64, u64);

pub struct Lifecycle {
    threshold_ns: u64,
    builder: EpisodeBuilder,
    unwinder: Unwinder,
    watched: HashMap<u32, Watched>,
    /// Malformed ring-buffer records skipped.
    pub decode_errors: u64,
}

impl Lifecycle {
    pub fn new(threshold_ns: u64) -> Self {
        Lifecycle {
            threshold_ns,
            builder: EpisodeBuilder::new(MAX_DISTINCT_STACKS),
            unwinder: Unwinder::new(),
            watched: HashMap::new(),
            decode_errors: 0,
        }
    }

    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    /// An unwinder whose tables were read beforehand (the CLI reads them on
    /// another thread while the verifier runs).
    pub fn set_unwinder(&mut self, unwinder: Unwinder) {
        self.unwinder = unwinder;
    }

    /// Reads `pid`'s unwind tables now, not on its first sample.
    pub fn prepare_unwind(&mut self, pid: u32) {
        self.unwinder.prepare(pid);
    }

    /// [`Self::prepare_unwind`] as a job for a blocking thread; its result
    /// goes to [`Self::add_prepared_unwind`]. Until then a sample of `pid`
    /// reads the tables itself.
    pub fn unwind_job(&self, pid: u32) -> impl FnOnce() -> ProcessUnwinder + Send {
        self.unwinder.prepare_off_thread(pid)
    }

    /// The result of [`Self::unwind_job`], kept if `pid` is still watched.
    pub fn add_prepared_unwind(&mut self, pid: u32, p: ProcessUnwinder) {
        if self.watched.contains_key(&pid) {
            self.unwinder.add_prepared(pid, p);
        }
    }

    /// The unwinder (for tests and the bench).
    pub fn unwinder(&self) -> &Unwinder {
        &self.unwinder
    }

    /// A new threshold (daemon SIGHUP): for episodes closed from now on and
    /// for every threadpool monitor, which judges saturations by its own.
    pub fn set_threshold(&mut self, threshold_ns: u64) {
        self.threshold_ns = threshold_ns;
        for pool in self.watched.values_mut().filter_map(|w| w.pool.as_mut()) {
            pool.set_threshold(threshold_ns);
        }
    }

    pub fn watch(&mut self, pid: u32) {
        self.watched.entry(pid).or_insert(Watched {
            samples: 0,
            pool: None,
            stalls: HashMap::new(),
        });
    }

    pub fn is_watched(&self, pid: u32) -> bool {
        self.watched.contains_key(&pid)
    }

    pub fn watched(&self, pid: u32) -> Option<&Watched> {
        self.watched.get(&pid)
    }

    /// Threadpool monitors, by pid.
    pub fn pools(&self) -> impl Iterator<Item = (u32, &PoolMonitor)> {
        self.watched
            .iter()
            .filter_map(|(&pid, w)| w.pool.as_ref().map(|p| (pid, p)))
    }

    /// Gives `pid` its threadpool monitor (its uprobes are attached).
    pub fn set_pool(&mut self, pid: u32, pool: PoolMonitor) {
        if let Some(w) = self.watched.get_mut(&pid) {
            w.pool = Some(pool);
        }
    }

    /// One ring-buffer record. Samples and off-CPU time of processes not
    /// watched (any more) are dropped; an exit or exec of a watched process
    /// is returned for the front end to finish it.
    pub fn record(
        &mut self,
        record: Result<Record, DecodeError>,
        out: &mut impl Output,
    ) -> Option<Left> {
        match record {
            Ok(Record::Sample(mut s)) => {
                let w = self.watched.get_mut(&s.pid)?;
                w.samples += 1;
                self.unwinder.unwind_sample(&mut s);
                self.builder.add_sample(s);
            }
            Ok(Record::OffCpu(mut o)) => {
                self.watched.get(&o.pid)?;
                self.unwinder.unwind_off_cpu(&mut o);
                self.builder.add_off_cpu(o);
            }
            Ok(Record::PoolSample(mut s)) => {
                let w = self.watched.get_mut(&s.pid)?;
                w.samples += 1;
                let pool = w.pool.as_mut()?;
                self.unwinder.unwind_sample(&mut s);
                pool.add_sample(s);
            }
            Ok(Record::PoolBusy(e)) => {
                let w = self.watched.get_mut(&e.pid)?;
                w.pool.as_mut()?.add_busy_period(&e);
            }
            Ok(Record::Episode(e)) => {
                self.watched.get(&e.pid)?;
                out.episode(self.builder.close(&e));
            }
            Ok(Record::Exit { pid, .. }) => {
                return self.is_watched(pid).then_some(Left::Exited(pid))
            }
            Ok(Record::Exec { pid, .. }) => return Some(Left::Exec(pid)),
            Err(err) => {
                self.decode_errors += 1;
                log::debug!("{err}");
            }
        }
        None
    }

    /// Ticks the threadpool monitors with the worker state read before the
    /// ring buffer was drained (see `PoolMonitor::tick`). A pool too busy
    /// for its uprobes loses them, and the user is told.
    pub fn tick_pools(
        &mut self,
        mut workers: HashMap<u32, Vec<(u32, PoolWorker)>>,
        now_ns: u64,
        kernel: &mut impl KernelState,
        out: &mut impl Output,
    ) {
        for (&pid, w) in self.watched.iter_mut() {
            let Some(pool) = w.pool.as_mut() else {
                continue;
            };
            let workers = workers.remove(&pid).unwrap_or_default();
            for o in pool.tick(&workers, now_ns) {
                if let PoolOutput::TooBusy { items_per_s, .. } = o {
                    kernel.detach_pool_uprobes(pid);
                    out.warning(Some(pid), too_busy_message(pid, items_per_s));
                } else {
                    out.pool(o);
                }
            }
        }
    }

    /// Looks at the open iteration of every watched loop: one busy past the
    /// threshold is reported as stalled, and announced once it has been
    /// busy `max(threshold, STALL_NOTICE_AFTER)`, then every
    /// `STALL_REPEAT_EVERY` while it lasts.
    pub fn check_stalls(&mut self, kernel: &impl KernelState, now_ns: u64, out: &mut impl Output) {
        let mut loops = kernel.thread_loops_by_pid();
        let after = self.threshold_ns.max(STALL_NOTICE_AFTER.as_nanos() as u64);
        let repeat = STALL_REPEAT_EVERY.as_nanos() as u64;
        let so_far = out.wants_stacks_so_far();
        for (&pid, w) in self.watched.iter_mut() {
            let open = open_windows(&loops.remove(&pid).unwrap_or_default());
            w.stalls
                .retain(|&(tid, seq), _| open.iter().any(|&(t, s, _)| (t, s) == (tid, seq)));
            let mut busy = Vec::new();
            for (tid, seq, start) in open {
                let busy_ns = now_ns.saturating_sub(start);
                if busy_ns < self.threshold_ns {
                    continue;
                }
                busy.push((tid, busy_ns));
                if busy_ns < after {
                    continue;
                }
                let first = !w.stalls.contains_key(&(tid, seq));
                let due = w.stalls.get(&(tid, seq)).is_none_or(|&at| now_ns >= at);
                if !due {
                    continue;
                }
                // The next notice on the grid of the first one: a late check
                // does not shift the ones after it.
                let next = w
                    .stalls
                    .get(&(tid, seq))
                    .map_or(now_ns, |&at| at)
                    .saturating_add(repeat);
                w.stalls.insert((tid, seq), next.max(now_ns + 1));
                out.stall(Stall {
                    pid,
                    tid,
                    seq,
                    start_ns: start,
                    now_ns,
                    first,
                    so_far: so_far.then(|| self.builder.snapshot(pid, tid, seq, start, now_ns)),
                });
            }
            out.stalled(pid, &busy);
        }
    }

    /// Closes what `pid` left open and returns what was kept about it (for a
    /// summary); the kernel still watches it until [`Lifecycle::release`].
    ///
    /// `exited`: its main thread is gone. A program that ended itself
    /// (exit_group: teardown after its last callback, process.exit()) left an
    /// open iteration that blocked nobody, unless it was already announced as
    /// a stall. One cut by SIGKILL or a crash was a real block: its last
    /// sample is the last moment we know it was still busy. Otherwise
    /// (loopbpf stops, or stops watching it) the kernel knows when each open
    /// busy window began, even one with no samples (asleep in a syscall).
    pub fn close(
        &mut self,
        kernel: &impl KernelState,
        pid: u32,
        exited: bool,
        now_ns: u64,
        out: &mut impl Output,
    ) -> Option<Watched> {
        let mut w = self.watched.remove(&pid)?;
        let loops = kernel.thread_loops(pid);
        if exited {
            let exit_called = loops.iter().any(|(_, t)| t.exit_called_ns != 0);
            for open in self.builder.open_iterations(pid) {
                let cut_short = !exit_called || w.stalls.contains_key(&(open.tid, open.seq));
                let busy = open.last_sample_ns.saturating_sub(open.busy_start_ns);
                if cut_short && busy >= self.threshold_ns {
                    out.episode(self.builder.close_ongoing(
                        pid,
                        open.tid,
                        open.seq,
                        open.busy_start_ns,
                        open.last_sample_ns,
                    ));
                }
            }
        } else {
            for (tid, seq, start) in open_windows(&loops) {
                if now_ns.saturating_sub(start) >= self.threshold_ns {
                    out.episode(self.builder.close_ongoing(pid, tid, seq, start, now_ns));
                }
            }
        }
        if let Some(pool) = w.pool.as_mut() {
            if let Some(e) = pool.finish(&kernel.pool_workers(pid), now_ns, exited) {
                out.pool(PoolOutput::Saturation(e));
            }
        }
        Some(w)
    }

    /// Frees what is left of `pid`: its kernel state, samples held, unwind
    /// caches, and tells the output it is gone.
    pub fn release(&mut self, kernel: &mut impl KernelState, pid: u32, out: &mut impl Output) {
        self.watched.remove(&pid);
        kernel.unwatch(pid);
        self.builder.forget_pid(pid);
        self.unwinder.forget(pid);
        out.forget(pid);
    }

    /// `close` then `release`.
    pub fn finish(
        &mut self,
        kernel: &mut impl KernelState,
        pid: u32,
        exited: bool,
        now_ns: u64,
        out: &mut impl Output,
    ) -> Option<Watched> {
        let w = self.close(kernel, pid, exited, now_ns, out);
        self.release(kernel, pid, out);
        w
    }
}

/// Open busy windows of loop threads: the outermost loop of each, not in its
/// poll, with the start of its busy time.
pub fn open_windows(loops: &[(u32, ThreadLoops)]) -> Vec<OpenWindow> {
    loops
        .iter()
        .filter_map(|(tid, t)| {
            let s = t.slots.get(t.primary as usize)?;
            (s.in_poll == 0 && s.last_exit_ns != 0).then(|| {
                (
                    *tid,
                    s.iterations,
                    s.last_exit_ns.saturating_sub(s.accum_busy_ns),
                )
            })
        })
        .collect()
}

pub fn too_busy_message(pid: u32, items_per_s: f64) -> String {
    format!(
        "pid {pid}: threadpool runs {items_per_s:.0} work items/s, over the {MAX_POOL_ITEMS_PER_S:.0}/s at which its uprobes cost more than a profiler should: they are detached, and threadpool figures stop here (--no-threadpool skips them from the start)"
    )
}
