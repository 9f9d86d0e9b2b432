//! The lifecycle's rules on recorded events, no kernel needed: the kernel's
//! thread state is a table, the output a list of what it was told.
use std::collections::HashMap;

use profiler_common::{EpisodeEvent, PoolWorker, ThreadLoops};

use super::*;
use crate::{
    assembly::threadpool::monitor::PoolMonitor,
    kernel::{collect::Sample, probes::pool_uprobes::PoolAttach},
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

#[derive(Default)]
struct Kernel {
    loops: HashMap<u32, Vec<(u32, ThreadLoops)>>,
    unwatched: Vec<u32>,
    pool_detached: Vec<u32>,
}

impl Kernel {
    /// `tid` of `pid` busy since `start_ns` (out of its poll), or in its poll.
    fn thread(
        &mut self,
        pid: u32,
        tid: u32,
        busy_since: Option<u64>,
        seq: u64,
    ) -> &mut ThreadLoops {
        let mut t = ThreadLoops {
            pid,
            ..Default::default()
        };
        t.slots[0].iterations = seq;
        match busy_since {
            Some(start) => {
                t.slots[0].last_exit_ns = start + 5 * MS;
                t.slots[0].accum_busy_ns = 5 * MS;
            }
            None => {
                t.slots[0].in_poll = 1;
                t.slots[0].last_exit_ns = 1;
            }
        }
        let v = self.loops.entry(pid).or_default();
        v.retain(|(t, _)| *t != tid);
        v.push((tid, t));
        &mut v.last_mut().expect("pushed above").1
    }
}

impl KernelState for Kernel {
    fn thread_loops_by_pid(&self) -> HashMap<u32, Vec<(u32, ThreadLoops)>> {
        self.loops.clone()
    }
    fn thread_loops(&self, pid: u32) -> Vec<(u32, ThreadLoops)> {
        self.loops.get(&pid).cloned().unwrap_or_default()
    }
    fn pool_workers(&self, _pid: u32) -> Vec<(u32, PoolWorker)> {
        Vec::new()
    }
    fn unwatch(&mut self, pid: u32) {
        self.unwatched.push(pid);
    }
    fn detach_pool_uprobes(&mut self, pid: u32) {
        self.pool_detached.push(pid);
    }
}

#[derive(Debug)]
enum Said {
    Episode(Episode),
    Stall(Stall),
    Stalled(u32, Vec<(u32, u64)>),
    Warning,
    Forget(u32),
}

#[derive(Default)]
struct Out {
    said: Vec<Said>,
    wants_stacks: bool,
}

impl Output for Out {
    fn episode(&mut self, e: Episode) {
        self.said.push(Said::Episode(e));
    }
    fn stall(&mut self, s: Stall) {
        self.said.push(Said::Stall(s));
    }
    fn wants_stacks_so_far(&self) -> bool {
        self.wants_stacks
    }
    fn stalled(&mut self, pid: u32, busy: &[(u32, u64)]) {
        self.said.push(Said::Stalled(pid, busy.to_vec()));
    }
    fn pool(&mut self, _out: PoolOutput) {}
    fn warning(&mut self, _pid: Option<u32>, message: String) {
        let _ = message;
        self.said.push(Said::Warning);
    }
    fn forget(&mut self, pid: u32) {
        self.said.push(Said::Forget(pid));
    }
}

impl Out {
    fn episodes(&self) -> Vec<&Episode> {
        self.said
            .iter()
            .filter_map(|s| match s {
                Said::Episode(e) => Some(e),
                _ => None,
            })
            .collect()
    }
    fn stalls(&self) -> Vec<&Stall> {
        self.said
            .iter()
            .filter_map(|s| match s {
                Said::Stall(s) => Some(s),
                _ => None,
            })
            .collect()
    }
    fn stalled(&self) -> Vec<(u32, Vec<(u32, u64)>)> {
        self.said
            .iter()
            .filter_map(|s| match s {
                Said::Stalled(p, b) => Some((*p, b.clone())),
                _ => None,
            })
            .collect()
    }
}

fn sample(pid: u32, tid: u32, seq: u64, busy_start_ns: u64, time_ns: u64) -> Record {
    Record::Sample(Sample {
        pid,
        tid,
        seq,
        busy_start_ns,
        time_ns,
        user: vec![0x1000, 0x2000],
        ..Default::default()
    })
}

#[test]
fn a_stall_is_announced_after_a_second_then_every_ten_seconds() {
    let mut life = Lifecycle::new(50 * MS);
    life.watch(10);
    let mut kernel = Kernel::default();
    let start = 100 * S;
    kernel.thread(10, 11, Some(start), 7);
    let mut out = Out::default();
    let checks = [
        0.04, 0.5, 0.99, 1.0, 1.25, 5.0, 10.99, 11.0, 11.25, 21.1, 21.2,
    ];
    let mut said_at = Vec::new();
    for at in checks {
        let now = start + (at * S as f64) as u64;
        let before = out.stalls().len();
        life.check_stalls(&kernel, now, &mut out);
        if out.stalls().len() > before {
            said_at.push((at, out.stalls().last().unwrap().first));
        }
    }
    assert_eq!(said_at, [(1.0, true), (11.0, false), (21.1, false)]);
    let s = out.stalls()[0];
    assert_eq!((s.pid, s.tid, s.seq, s.start_ns), (10, 11, 7, start));
    // The gauge: 0 (no loop listed) below the threshold, the busy time past it.
    let gauge = out.stalled();
    assert_eq!(gauge[0], (10, vec![]));
    assert_eq!(gauge[1], (10, vec![(11, S / 2)]));
}

#[test]
fn a_threshold_over_a_second_is_when_a_stall_is_announced() {
    let mut life = Lifecycle::new(3 * S);
    life.watch(10);
    let mut kernel = Kernel::default();
    kernel.thread(10, 11, Some(0), 1);
    let mut out = Out::default();
    life.check_stalls(&kernel, 2 * S, &mut out);
    assert!(out.stalls().is_empty());
    assert_eq!(out.stalled(), [(10, vec![])]);
    life.check_stalls(&kernel, 3 * S, &mut out);
    assert_eq!(out.stalls().len(), 1);
}

#[test]
fn a_new_iteration_is_a_new_stall_and_a_loop_in_its_poll_none() {
    let mut life = Lifecycle::new(50 * MS);
    life.watch(10);
    let mut kernel = Kernel::default();
    kernel.thread(10, 11, Some(0), 1);
    let mut out = Out::default();
    life.check_stalls(&kernel, 2 * S, &mut out);
    kernel.thread(10, 11, None, 2);
    life.check_stalls(&kernel, 3 * S, &mut out);
    assert_eq!(out.stalled().last().unwrap(), &(10, vec![]));
    kernel.thread(10, 11, Some(4 * S), 3);
    life.check_stalls(&kernel, 5 * S + 1, &mut out);
    let firsts: Vec<(u64, bool)> = out.stalls().iter().map(|s| (s.seq, s.first)).collect();
    assert_eq!(firsts, [(1, true), (3, true)]);
}

#[test]
fn the_stacks_so_far_leave_the_iteration_open() {
    let mut life = Lifecycle::new(50 * MS);
    life.watch(10);
    let mut kernel = Kernel::default();
    kernel.thread(10, 11, Some(0), 4);
    let mut out = Out {
        wants_stacks: true,
        ..Default::default()
    };
    for i in 1..=3 {
        life.record(Ok(sample(10, 11, 4, 5 * MS, i * 300 * MS)), &mut out);
    }
    life.check_stalls(&kernel, S, &mut out);
    let so_far = out.stalls()[0].so_far.clone().expect("asked for");
    assert_eq!((so_far.samples, so_far.ongoing), (3, true));
    // The iteration ends: the final episode still has every sample.
    let end = EpisodeEvent {
        pid: 10,
        tid: 11,
        seq: 4,
        end_ns: 2 * S,
        busy_ns: 2 * S - 5 * MS,
        ..Default::default()
    };
    life.record(Ok(Record::Episode(end)), &mut out);
    let e = out.episodes()[0];
    assert_eq!((e.samples, e.ongoing, e.end_ns), (3, false, 2 * S));
}

#[test]
fn records_of_processes_not_watched_are_dropped() {
    let mut life = Lifecycle::new(50 * MS);
    life.watch(10);
    let mut out = Out::default();
    life.record(Ok(sample(99, 99, 1, MS, 100 * MS)), &mut out);
    life.record(Ok(sample(10, 10, 1, MS, 100 * MS)), &mut out);
    assert_eq!(life.watched(10).unwrap().samples, 1);
    assert!(life.watched(99).is_none());
    let end = |pid| EpisodeEvent {
        pid,
        tid: pid,
        seq: 1,
        end_ns: 200 * MS,
        busy_ns: 199 * MS,
        ..Default::default()
    };
    life.record(Ok(Record::Episode(end(99))), &mut out);
    assert!(out.episodes().is_empty());
    life.record(Ok(Record::Episode(end(10))), &mut out);
    assert_eq!(out.episodes()[0].samples, 1);
    // An exit: only of a watched process; a malformed record is counted.
    assert_eq!(
        life.record(
            Ok(Record::Exit {
                pid: 99,
                time_ns: 0
            }),
            &mut out
        ),
        None
    );
    assert_eq!(
        life.record(
            Ok(Record::Exit {
                pid: 10,
                time_ns: 0
            }),
            &mut out
        ),
        Some(Left::Exited(10))
    );
    life.record(Err(DecodeError::Short(3)), &mut out);
    assert_eq!(life.decode_errors, 1);
}

/// A process whose main thread exited while iteration 1 of its loop had
/// been busy 300 ms (samples up to then), `exit()` called or not.
fn exited_mid_iteration(exit_called: bool, announced: bool) -> Out {
    let mut life = Lifecycle::new(100 * MS);
    life.watch(10);
    let mut kernel = Kernel::default();
    kernel.thread(10, 10, Some(0), 1).exit_called_ns = u64::from(exit_called);
    let mut out = Out::default();
    for i in 1..=3 {
        life.record(Ok(sample(10, 10, 1, 5 * MS, i * 100 * MS)), &mut out);
    }
    if announced {
        life.check_stalls(&kernel, 1500 * MS, &mut out);
    }
    life.finish(&mut kernel, 10, true, 2 * S, &mut out);
    assert_eq!(kernel.unwatched, [10]);
    assert!(matches!(out.said.last(), Some(Said::Forget(10))));
    out
}

#[test]
fn a_process_killed_mid_iteration_is_an_episode_up_to_its_last_sample() {
    let out = exited_mid_iteration(false, false);
    let e = out.episodes()[0];
    assert_eq!(
        (e.start_ns, e.end_ns, e.samples, e.ongoing),
        (5 * MS, 300 * MS, 3, true)
    );
}

#[test]
fn a_process_that_called_exit_left_nothing_blocked_unless_its_stall_was_announced() {
    assert!(exited_mid_iteration(true, false).episodes().is_empty());
    assert_eq!(exited_mid_iteration(true, true).episodes().len(), 1);
}

#[test]
fn stopping_flushes_the_open_iterations_past_the_threshold() {
    let mut life = Lifecycle::new(100 * MS);
    life.watch(10);
    let mut kernel = Kernel::default();
    let now = 10 * S;
    kernel.thread(10, 10, Some(now - 500 * MS), 3);
    kernel.thread(10, 12, Some(now - 50 * MS), 9);
    let mut out = Out::default();
    let kept = life.close(&kernel, 10, false, now, &mut out);
    assert!(kept.is_some());
    let e = out.episodes();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].tid, e[0].seq, e[0].end_ns, e[0].ongoing),
        (10, 3, now, true)
    );
    assert!(
        kernel.unwatched.is_empty(),
        "close leaves the kernel watching"
    );
    life.release(&mut kernel, 10, &mut out);
    assert_eq!(kernel.unwatched, [10]);
    assert!(!life.is_watched(10));
}

#[test]
fn a_threshold_change_reaches_every_threadpool_monitor() {
    let mut life = Lifecycle::new(100 * MS);
    for pid in [10, 11] {
        life.watch(pid);
        life.set_pool(
            pid,
            PoolMonitor::new(pid, PoolAttach::default(), 100 * MS, 0),
        );
    }
    life.set_threshold(250 * MS);
    assert_eq!(life.threshold_ns(), 250 * MS);
    let pools: Vec<u64> = life.pools().map(|(_, p)| p.threshold_ns()).collect();
    assert_eq!(pools, [250 * MS, 250 * MS]);
    // And the stall rule uses it: 200 ms busy is no longer past it.
    let mut kernel = Kernel::default();
    kernel.thread(10, 10, Some(0), 1);
    let mut out = Out::default();
    life.check_stalls(&kernel, 200 * MS, &mut out);
    assert!(out.stalled().iter().all(|(_, b)| b.is_empty()));
}
