//! Where a blocked iteration's time went: running (JavaScript, native code or
//! V8's garbage collector), asleep (and in which syscall), or runnable but
//! waiting for a CPU. The verdict a reader needs without opening a flamegraph.
use crate::{
    episode::Episode,
    report::HotFrame,
    symbolize::{Frame, FrameKind},
};

/// Stacks where the thread left the CPU, with the time it then spent asleep
/// and waiting for a CPU.
#[derive(Clone, Debug)]
pub struct OffCpuStack {
    pub frames: Vec<Frame>,
    pub blocked_ns: u64,
    pub runq_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// On the CPU, in JavaScript (or V8/Node code JavaScript called).
    Javascript,
    /// On the CPU, with no JavaScript on the stack (native addon, Node itself).
    Native,
    /// On the CPU, collecting garbage.
    Gc,
    /// Asleep: a syscall, a lock, I/O.
    Blocked,
    /// Runnable but not running: CPU contention or cgroup throttling.
    CpuStarved,
}

impl Verdict {
    /// The serialized name (JSON `verdict`, the metrics' `verdict` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Javascript => "javascript",
            Verdict::Native => "native",
            Verdict::Gc => "gc",
            Verdict::Blocked => "blocked",
            Verdict::CpuStarved => "cpu-starved",
        }
    }

    pub fn describe(self, syscall: Option<&str>) -> String {
        match (self, syscall) {
            (Verdict::Javascript, _) => "busy in JavaScript".into(),
            (Verdict::Native, _) => "busy in native code".into(),
            (Verdict::Gc, _) => "busy in garbage collection".into(),
            (Verdict::Blocked, Some(s)) => format!("asleep in {s}()"),
            (Verdict::Blocked, None) => "asleep (blocked)".into(),
            (Verdict::CpuStarved, _) => "waiting for a CPU".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Breakdown {
    pub on_cpu_ns: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// Share of on-CPU samples inside V8's garbage collector.
    pub gc_share: f64,
    /// The syscall most of the blocked time was spent in.
    pub syscall: Option<String>,
    pub verdict: Verdict,
}

/// V8's collectors and the heap entry points that run them (Node 20–24).
pub fn is_gc_frame(name: &str) -> bool {
    const GC: [&str; 8] = [
        "v8::internal::Heap::CollectGarbage",
        "v8::internal::Heap::PerformGarbageCollection",
        "v8::internal::MarkCompactCollector",
        "v8::internal::ScavengerCollector",
        "v8::internal::Scavenger::",
        "v8::internal::MinorMarkSweepCollector",
        "v8::internal::MinorMarkCompactCollector",
        "v8::internal::IncrementalMarking::",
    ];
    GC.iter().any(|g| name.starts_with(g))
}

/// Off-CPU kernel stacks are taken inside the `sched_switch` tracepoint: its
/// leaf frames are the tracing machinery and loopbpf's own program. Drop them
/// so the leaf is the scheduler, as the thread saw it.
pub fn strip_tracing_frames(frames: &mut Vec<Frame>) {
    const TRACING: [&str; 4] = ["bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_"];
    while frames.last().is_some_and(|f| {
        f.kind == FrameKind::Kernel && TRACING.iter().any(|p| f.name.starts_with(p))
    }) {
        frames.pop();
    }
}

/// The syscall a kernel stack is in, from its `__x64_sys_NAME` frame.
pub fn syscall_of(frames: &[Frame]) -> Option<&str> {
    frames
        .iter()
        .filter(|f| f.kind == FrameKind::Kernel)
        .find_map(|f| {
            [
                "__x64_sys_",
                "__ia32_sys_",
                "__arm64_sys_",
                "__se_sys_",
                "__do_sys_",
            ]
            .iter()
            .find_map(|p| f.name.strip_prefix(p))
        })
}

pub fn breakdown(
    episode: &Episode,
    stacks: &[(Vec<Frame>, u64)],
    off_cpu: &[OffCpuStack],
    top: Option<&HotFrame>,
) -> Breakdown {
    let blocked_ns = episode.blocked_ns.min(episode.busy_ns);
    let runq_ns = episode.runq_ns.min(episode.busy_ns - blocked_ns);
    let on_cpu_ns = episode.busy_ns - blocked_ns - runq_ns;
    let samples: u64 = stacks.iter().map(|s| s.1).sum();
    let gc: u64 = stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|f| is_gc_frame(&f.name)))
        .map(|s| s.1)
        .sum();
    // JIT code counts even unnamed: with no perf map and no readable V8
    // frame, a `Date.now()` loop is still JavaScript calling into the vDSO.
    let js: u64 = stacks
        .iter()
        .filter(|(f, _)| f.iter().any(|f| f.kind == FrameKind::Js))
        .map(|s| s.1)
        .sum();
    let gc_share = if samples == 0 {
        0.0
    } else {
        gc as f64 / samples as f64
    };

    let mut by_syscall: Vec<(&str, u64)> = Vec::new();
    for o in off_cpu {
        if let Some(name) = syscall_of(&o.frames) {
            match by_syscall.iter_mut().find(|(n, _)| *n == name) {
                Some((_, t)) => *t += o.blocked_ns,
                None => by_syscall.push((name, o.blocked_ns)),
            }
        }
    }
    let syscall = by_syscall
        .iter()
        .max_by_key(|(_, t)| *t)
        .map(|(n, _)| n.to_string());

    let gc_ns = (on_cpu_ns as f64 * gc_share) as u64;
    let running = on_cpu_ns - gc_ns;
    let verdict = if blocked_ns >= running.max(gc_ns).max(runq_ns) {
        Verdict::Blocked
    } else if runq_ns >= running.max(gc_ns) {
        Verdict::CpuStarved
    } else if gc_ns >= running {
        Verdict::Gc
    } else if top.is_some_and(|h| h.kind == FrameKind::Js) || top.is_none() || js * 2 > samples {
        Verdict::Javascript
    } else {
        Verdict::Native
    };
    Breakdown {
        on_cpu_ns,
        blocked_ns,
        runq_ns,
        gc_share,
        syscall,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(busy: u64, blocked: u64, runq: u64) -> Episode {
        Episode {
            pid: 1,
            tid: 1,
            seq: 1,
            start_ns: 0,
            end_ns: busy,
            busy_ns: busy,
            samples: 0,
            samples_without_stack: 0,
            stacks: vec![],
            blocked_ns: blocked,
            runq_ns: runq,
            off_cpu_stacks: vec![],
            ongoing: false,
        }
    }

    #[test]
    fn mostly_asleep_names_the_syscall_with_the_most_blocked_time() {
        let wait4 = vec![
            Frame::new("execSync node:child_process:1:1", FrameKind::Js),
            Frame::new("__x64_sys_wait4", FrameKind::Kernel),
        ];
        let futex = vec![Frame::new("__x64_sys_futex", FrameKind::Kernel)];
        let off = [
            OffCpuStack {
                frames: wait4,
                blocked_ns: 290,
                runq_ns: 1,
            },
            OffCpuStack {
                frames: futex,
                blocked_ns: 5,
                runq_ns: 0,
            },
        ];
        let b = breakdown(&episode(310, 295, 1), &[], &off, None);
        assert_eq!(
            (b.verdict, b.syscall.as_deref()),
            (Verdict::Blocked, Some("wait4"))
        );
        assert_eq!((b.on_cpu_ns, b.blocked_ns, b.runq_ns), (14, 295, 1));
        assert_eq!(
            b.verdict.describe(b.syscall.as_deref()),
            "asleep in wait4()"
        );
    }

    #[test]
    fn tracing_frames_at_the_leaf_are_dropped() {
        let mut frames = vec![
            Frame::new("__x64_sys_futex", FrameKind::Kernel),
            Frame::new("schedule", FrameKind::Kernel),
            Frame::new("bpf_trace_run4", FrameKind::Kernel),
            Frame::new("bpf_prog_2ee3a00383e4af10_sched_switch", FrameKind::Kernel),
        ];
        strip_tracing_frames(&mut frames);
        assert_eq!(frames.last().unwrap().name, "schedule");
        assert_eq!(frames.len(), 2);
    }

    #[test]
    fn mostly_runnable_is_cpu_starved() {
        assert_eq!(
            breakdown(&episode(300, 10, 250), &[], &[], None).verdict,
            Verdict::CpuStarved
        );
    }

    #[test]
    fn gc_samples_make_the_gc_share() {
        let gc = vec![Frame::new(
            "v8::internal::Heap::CollectGarbage(v8::internal::AllocationSpace)",
            FrameKind::Native,
        )];
        let js = vec![Frame::new("work /a.js:1:1", FrameKind::Js)];
        let b = breakdown(&episode(100, 0, 0), &[(gc, 7), (js, 3)], &[], None);
        assert!((b.gc_share - 0.7).abs() < 1e-9);
        assert_eq!(b.verdict, Verdict::Gc);
    }

    #[test]
    fn on_cpu_js_is_javascript_and_native_leaf_is_native() {
        let js = HotFrame {
            name: "spin /a.js:1:1".into(),
            kind: FrameKind::Js,
            samples: 1,
            share: 1.0,
        };
        assert_eq!(
            breakdown(&episode(100, 1, 1), &[], &[], Some(&js)).verdict,
            Verdict::Javascript
        );
        let native = HotFrame {
            kind: FrameKind::Native,
            ..js
        };
        assert_eq!(
            breakdown(&episode(100, 1, 1), &[], &[], Some(&native)).verdict,
            Verdict::Native
        );
    }

    #[test]
    fn unnamed_jit_frames_make_a_busy_loop_javascript() {
        let native = HotFrame {
            name: "__vdso_gettimeofday".into(),
            kind: FrameKind::Native,
            samples: 9,
            share: 0.9,
        };
        let stack = |jit: bool| {
            let mut frames = vec![Frame::new("uv_run", FrameKind::Native)];
            if jit {
                frames.push(Frame::new("[unknown] [anon] 0x7f0000001000", FrameKind::Js));
            }
            frames.push(Frame::new("__vdso_gettimeofday", FrameKind::Native));
            frames
        };
        let mostly_jit = [(stack(true), 9), (stack(false), 1)];
        assert_eq!(
            breakdown(&episode(100, 1, 1), &mostly_jit, &[], Some(&native)).verdict,
            Verdict::Javascript
        );
        let mostly_native = [(stack(true), 1), (stack(false), 9)];
        assert_eq!(
            breakdown(&episode(100, 1, 1), &mostly_native, &[], Some(&native)).verdict,
            Verdict::Native
        );
    }

    #[test]
    fn kernel_totals_never_exceed_busy_time() {
        let b = breakdown(&episode(100, 90, 50), &[], &[], None);
        assert_eq!((b.on_cpu_ns, b.blocked_ns, b.runq_ns), (0, 90, 10));
    }
}
