//! Episode assembly: samples of a loop thread are held while its iteration is
//! open and handed over with the episode when the kernel reports that the
//! iteration crossed the threshold.
//!
//! The kernel tags each sample with its iteration's sequence number and emits
//! the episode record before any sample of the next iteration (same thread,
//! ring-buffer order), so when a sample with a newer sequence arrives the older
//! iteration was short and its samples can go.
use std::collections::HashMap;

use profiler_common::EpisodeEvent;

use crate::kernel::collect::{OffCpu, Sample};

/// A distinct stack, leaf first, as the kernel captured it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawStack {
    pub user: Box<[u64]>,
    pub kernel: Box<[u64]>,
    /// V8 slots per user frame (function, context or marker), leaf first;
    /// for off-CPU stacks those the stack copy held.
    pub v8: Box<[[u64; 2]]>,
}

/// Even words below this at a frame's context slot are frame-type markers
/// (V8 has about thirty frame types, each stored shifted by one).
const MAX_MARKER: u64 = 512;
/// Stands for "neither context nor marker": even and no frame type.
const NOT_V8: u64 = !1;

/// Keeps of a frame's slots only what names it: a context is told from a
/// frame-type marker by its tag alone, and which context it is does not
/// matter (else one function with many closures' contexts splits into many
/// stacks); a marker frame is named by its marker alone; any other pair
/// (native frames hold whatever their locals were) names nothing, and must
/// not split one stack into many either.
fn v8_key(slots: Vec<[u64; 2]>) -> Box<[[u64; 2]]> {
    slots
        .into_iter()
        .map(|[function, context]| match context {
            c if c & 1 == 1 => [function, 1],
            c if c < MAX_MARKER => [0, c],
            _ => [0, NOT_V8],
        })
        .collect()
}

/// A blocked iteration with the samples taken inside it.
#[derive(Clone, Debug)]
pub struct Episode {
    pub pid: u32,
    pub tid: u32,
    pub seq: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub busy_ns: u64,
    /// Samples of the thread inside the episode.
    pub samples: u64,
    /// Samples counted but whose stack was not kept (distinct-stack cap).
    pub samples_without_stack: u64,
    pub stacks: Vec<(RawStack, u64)>,
    /// Of `busy_ns`: asleep, and runnable but waiting for a CPU (from the
    /// kernel's scheduler accounting; 0 for an ongoing iteration).
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// Where the thread was when it left the CPU, with `(blocked_ns, runq_ns)`
    /// summed per distinct stack; longest first.
    pub off_cpu_stacks: Vec<(RawStack, (u64, u64))>,
    /// The iteration had not ended when loopbpf stopped.
    pub ongoing: bool,
}

#[derive(Clone)]
struct OpenWindow {
    pid: u32,
    seq: u64,
    busy_start_ns: u64,
    last_sample_ns: u64,
    samples: u64,
    samples_without_stack: u64,
    stacks: HashMap<RawStack, u64>,
    off_cpu: HashMap<RawStack, (u64, u64)>,
}

impl OpenWindow {
    fn new(pid: u32, seq: u64, busy_start_ns: u64, time_ns: u64) -> Self {
        OpenWindow {
            pid,
            seq,
            busy_start_ns,
            last_sample_ns: time_ns,
            samples: 0,
            samples_without_stack: 0,
            stacks: HashMap::new(),
            off_cpu: HashMap::new(),
        }
    }
}

/// An iteration that has samples but no end yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenIteration {
    pub pid: u32,
    pub tid: u32,
    pub seq: u64,
    pub busy_start_ns: u64,
    pub last_sample_ns: u64,
}

pub struct EpisodeBuilder {
    open: HashMap<u32, OpenWindow>,
    /// Distinct stacks kept per open iteration: bounds memory when a loop spins
    /// for minutes through varied code.
    max_distinct_stacks: usize,
}

impl EpisodeBuilder {
    pub fn new(max_distinct_stacks: usize) -> Self {
        EpisodeBuilder {
            open: HashMap::new(),
            max_distinct_stacks,
        }
    }

    /// The open window of `tid` for iteration `seq`, a new one if the thread
    /// has moved on to another iteration (the old one was short).
    fn window(
        &mut self,
        pid: u32,
        tid: u32,
        seq: u64,
        busy_start_ns: u64,
        time_ns: u64,
    ) -> &mut OpenWindow {
        let w = self
            .open
            .entry(tid)
            .or_insert_with(|| OpenWindow::new(pid, seq, busy_start_ns, time_ns));
        if w.pid != pid || w.seq != seq {
            *w = OpenWindow::new(pid, seq, busy_start_ns, time_ns);
        } else if w.busy_start_ns == 0 {
            w.busy_start_ns = busy_start_ns;
        }
        w
    }

    pub fn add_sample(&mut self, s: Sample) {
        let max = self.max_distinct_stacks;
        let w = self.window(s.pid, s.tid, s.seq, s.busy_start_ns, s.time_ns);
        w.samples += 1;
        w.last_sample_ns = w.last_sample_ns.max(s.time_ns);
        let stack = RawStack {
            user: s.user.into(),
            kernel: s.kernel.into(),
            v8: v8_key(s.v8),
        };
        let kept = w.stacks.len();
        match w.stacks.get_mut(&stack) {
            Some(n) => *n += 1,
            None if kept < max => {
                w.stacks.insert(stack, 1);
            }
            None => w.samples_without_stack += 1,
        }
    }

    /// Off-CPU time of a busy iteration. Its busy start is unknown here; a
    /// window it opens takes the start from the first sample or episode.
    pub fn add_off_cpu(&mut self, o: OffCpu) {
        let max = self.max_distinct_stacks;
        let w = self.window(o.pid, o.tid, o.seq, 0, o.time_ns);
        let stack = RawStack {
            user: o.user.into(),
            kernel: o.kernel.into(),
            v8: v8_key(o.v8),
        };
        let kept = w.off_cpu.len();
        if let Some(t) = w.off_cpu.get_mut(&stack) {
            t.0 += o.blocked_ns;
            t.1 += o.runq_ns;
        } else if kept < max {
            w.off_cpu.insert(stack, (o.blocked_ns, o.runq_ns));
        }
    }

    /// The kernel closed iteration `e.seq` of `e.tid` above the threshold.
    pub fn close(&mut self, e: &EpisodeEvent) -> Episode {
        let start_ns = e.end_ns.saturating_sub(e.busy_ns);
        let mut episode = self.take(e.pid, e.tid, e.seq, start_ns, e.end_ns, e.busy_ns, false);
        episode.blocked_ns = e.blocked_ns;
        episode.runq_ns = e.runq_ns;
        episode
    }

    /// An iteration still open when loopbpf stops (read from the kernel's
    /// thread state), reported with what was measured so far.
    pub fn close_ongoing(
        &mut self,
        pid: u32,
        tid: u32,
        seq: u64,
        busy_start_ns: u64,
        now_ns: u64,
    ) -> Episode {
        let busy = now_ns.saturating_sub(busy_start_ns);
        self.take(pid, tid, seq, busy_start_ns, now_ns, busy, true)
    }

    /// Open iterations of `pid` that have samples.
    pub fn open_iterations(&self, pid: u32) -> Vec<OpenIteration> {
        self.open
            .iter()
            // Only samples carry the busy start; off-CPU time alone does not.
            .filter(|(_, w)| w.pid == pid && w.busy_start_ns != 0)
            .map(|(&tid, w)| OpenIteration {
                pid,
                tid,
                seq: w.seq,
                busy_start_ns: w.busy_start_ns,
                last_sample_ns: w.last_sample_ns,
            })
            .collect()
    }

    pub fn forget_pid(&mut self, pid: u32) {
        self.open.retain(|_, w| w.pid != pid);
    }

    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        pid: u32,
        tid: u32,
        seq: u64,
        start_ns: u64,
        end_ns: u64,
        busy_ns: u64,
        ongoing: bool,
    ) -> Episode {
        let window = match self.open.get(&tid) {
            Some(w) if w.pid == pid && w.seq == seq => self.open.remove(&tid),
            _ => None,
        };
        Self::episode_of(window, pid, tid, seq, start_ns, end_ns, busy_ns, ongoing)
    }

    /// What iteration `seq` of `tid`, still open, has gathered so far; it
    /// stays open (the daemon stores this while a loop is wedged).
    pub fn snapshot(
        &self,
        pid: u32,
        tid: u32,
        seq: u64,
        busy_start_ns: u64,
        now_ns: u64,
    ) -> Episode {
        let window = self
            .open
            .get(&tid)
            .filter(|w| w.pid == pid && w.seq == seq)
            .cloned();
        let busy = now_ns.saturating_sub(busy_start_ns);
        Self::episode_of(window, pid, tid, seq, busy_start_ns, now_ns, busy, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn episode_of(
        window: Option<OpenWindow>,
        pid: u32,
        tid: u32,
        seq: u64,
        start_ns: u64,
        end_ns: u64,
        busy_ns: u64,
        ongoing: bool,
    ) -> Episode {
        let (samples, samples_without_stack, mut stacks, mut off_cpu_stacks) = match window {
            Some(w) => (
                w.samples,
                w.samples_without_stack,
                w.stacks.into_iter().collect::<Vec<_>>(),
                w.off_cpu.into_iter().collect::<Vec<_>>(),
            ),
            None => (0, 0, Vec::new(), Vec::new()),
        };
        stacks.sort_by_key(|s| std::cmp::Reverse(s.1));
        off_cpu_stacks.sort_by_key(|s| std::cmp::Reverse(s.1 .0 + s.1 .1));
        // An ongoing iteration has no kernel totals yet: what was sent so far.
        let blocked_ns = off_cpu_stacks.iter().map(|s| s.1 .0).sum();
        let runq_ns = off_cpu_stacks.iter().map(|s| s.1 .1).sum();
        Episode {
            pid,
            tid,
            seq,
            start_ns,
            end_ns,
            busy_ns,
            samples,
            samples_without_stack,
            stacks,
            blocked_ns,
            runq_ns,
            off_cpu_stacks,
            ongoing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tid: u32, seq: u64, leaf: u64) -> Sample {
        Sample {
            pid: 1,
            tid,
            seq,
            busy_start_ns: 1_000,
            time_ns: 2_000,
            user: vec![leaf, 99],
            kernel: vec![],
            ..Default::default()
        }
    }

    fn episode(tid: u32, seq: u64) -> EpisodeEvent {
        EpisodeEvent {
            kind: 1,
            pid: 1,
            tid,
            epfd: 3,
            seq,
            end_ns: 10_000,
            busy_ns: 4_000,
            blocked_ns: 0,
            runq_ns: 0,
        }
    }

    #[test]
    fn episode_gets_the_samples_of_its_iteration_only() {
        let mut b = EpisodeBuilder::new(100);
        b.add_sample(sample(1, 4, 10));
        b.add_sample(sample(1, 5, 11));
        b.add_sample(sample(1, 5, 11));
        b.add_sample(sample(1, 5, 12));
        b.add_sample(sample(2, 5, 13));
        let e = b.close(&episode(1, 5));
        assert_eq!(e.samples, 3);
        assert_eq!(e.stacks.len(), 2);
        assert_eq!(e.stacks[0].1, 2, "most frequent stack first");
        assert_eq!(&*e.stacks[0].0.user, &[11, 99]);
        assert_eq!((e.start_ns, e.end_ns, e.busy_ns), (6_000, 10_000, 4_000));
    }

    #[test]
    fn episode_without_samples_is_still_reported() {
        let mut b = EpisodeBuilder::new(100);
        b.add_sample(sample(1, 4, 10));
        let e = b.close(&episode(1, 5));
        assert_eq!(e.samples, 0);
        assert!(e.stacks.is_empty());
    }

    #[test]
    fn other_threads_keep_their_open_windows() {
        let mut b = EpisodeBuilder::new(100);
        b.add_sample(sample(2, 7, 13));
        b.close(&episode(1, 5));
        assert_eq!(b.close(&episode(2, 7)).samples, 1);
    }

    #[test]
    fn distinct_stacks_are_capped_but_counted() {
        let mut b = EpisodeBuilder::new(2);
        for leaf in 0..5 {
            b.add_sample(sample(1, 5, leaf));
        }
        b.add_sample(sample(1, 5, 0));
        let e = b.close(&episode(1, 5));
        assert_eq!(e.samples, 6);
        assert_eq!(e.stacks.len(), 2);
        assert_eq!(e.samples_without_stack, 3);
    }

    fn off_cpu(tid: u32, seq: u64, leaf: u64, blocked_ns: u64, runq_ns: u64) -> OffCpu {
        OffCpu {
            pid: 1,
            tid,
            seq,
            blocked_ns,
            runq_ns,
            time_ns: 3_000,
            user: vec![leaf],
            kernel: vec![7],
            ..Default::default()
        }
    }

    #[test]
    fn off_cpu_time_is_summed_per_stack_and_kept_with_the_iteration() {
        let mut b = EpisodeBuilder::new(100);
        b.add_off_cpu(off_cpu(1, 4, 10, 999, 1));
        b.add_off_cpu(off_cpu(1, 5, 10, 100, 10));
        b.add_sample(sample(1, 5, 11));
        b.add_off_cpu(off_cpu(1, 5, 10, 200, 20));
        b.add_off_cpu(off_cpu(1, 5, 12, 1, 1));
        let mut ev = episode(1, 5);
        ev.blocked_ns = 301;
        ev.runq_ns = 31;
        let e = b.close(&ev);
        assert_eq!((e.blocked_ns, e.runq_ns), (301, 31), "kernel totals win");
        assert_eq!(e.off_cpu_stacks.len(), 2);
        assert_eq!(e.off_cpu_stacks[0].1, (300, 30));
        assert_eq!(e.samples, 1);
    }

    #[test]
    fn off_cpu_alone_does_not_make_an_open_iteration() {
        let mut b = EpisodeBuilder::new(100);
        b.add_off_cpu(off_cpu(1, 5, 10, 100, 10));
        assert!(b.open_iterations(1).is_empty());
        b.add_sample(sample(1, 5, 11));
        assert_eq!(b.open_iterations(1)[0].busy_start_ns, 1_000);
    }

    #[test]
    fn ongoing_iteration_is_closed_with_its_samples() {
        let mut b = EpisodeBuilder::new(100);
        b.add_sample(sample(1, 9, 10));
        let open = b.open_iterations(1);
        assert_eq!(open.len(), 1);
        assert_eq!(
            (open[0].seq, open[0].busy_start_ns, open[0].last_sample_ns),
            (9, 1_000, 2_000)
        );
        let e = b.close_ongoing(1, 1, 9, 1_000, 301_000);
        assert!(e.ongoing);
        assert_eq!((e.samples, e.busy_ns), (1, 300_000));
        assert!(b.open_iterations(1).is_empty());
    }

    #[test]
    fn v8_slots_keep_only_what_names_a_frame() {
        let mut b = EpisodeBuilder::new(10);
        // The same stack three times: two closures' contexts, then native
        // frames' locals that differ each time, then a marker frame.
        for (i, context) in [0x1001u64, 0x2001].into_iter().enumerate() {
            let mut o = off_cpu(1, 5, 10, 100, 0);
            o.v8 = vec![
                [0xf1, context],
                [0x7fff_0000 + 8 * i as u64, 0x7fff_1000 + 8 * i as u64],
            ];
            b.add_off_cpu(o);
        }
        let e = b.close(&episode(1, 5));
        assert_eq!(e.off_cpu_stacks.len(), 1, "{:?}", e.off_cpu_stacks);
        assert_eq!(&*e.off_cpu_stacks[0].0.v8, &[[0xf1, 1], [0, NOT_V8]]);
        assert_eq!(e.off_cpu_stacks[0].1, (200, 0));
        assert_eq!(&*v8_key(vec![[0xabc, 2 * 14]]), &[[0, 28]]);
    }
}
