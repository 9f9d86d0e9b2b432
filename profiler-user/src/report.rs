//! A symbolized episode, ready for the exporters: frames named, the hottest
//! JavaScript frame found, the thread's role known.
use std::{collections::HashMap, path::PathBuf};

use crate::{
    breakdown::{breakdown, strip_tracing_frames, Breakdown, OffCpuStack},
    episode::Episode,
    loop_stats::LoopFigures,
    probes::KernelCounters,
    symbolize::{Frame, FrameKind, PerfMapStatus, StackRequest, SymbolizeError, Symbolizer},
    target::{thread_name, ThreadRole},
};

#[derive(Clone, Debug)]
pub struct HotFrame {
    pub name: String,
    pub kind: FrameKind,
    /// Samples (or, with off-CPU time, nanoseconds) whose stack has this frame
    /// as its leaf-most JS frame.
    pub samples: u64,
    pub share: f64,
}

#[derive(Clone, Debug)]
pub struct EpisodeReport {
    pub episode: Episode,
    pub role: ThreadRole,
    pub thread_name: Option<String>,
    /// Root first, with the number of samples that had this stack.
    pub stacks: Vec<(Vec<Frame>, u64)>,
    pub top_frame: Option<HotFrame>,
    /// Root first, where the thread left the CPU and for how long.
    pub off_cpu: Vec<OffCpuStack>,
    pub breakdown: Breakdown,
    pub folded_path: Option<PathBuf>,
    /// Every file written for it (folded, SVG, pprof, as chosen).
    pub files: Vec<PathBuf>,
    pub folded_error: Option<String>,
}

impl EpisodeReport {
    pub fn new(
        episode: Episode,
        role: ThreadRole,
        thread_name: Option<String>,
        stacks: Vec<(Vec<Frame>, u64)>,
        off_cpu: Vec<OffCpuStack>,
    ) -> Self {
        let on_cpu_top = hottest_frame(&stacks);
        let breakdown = breakdown(&episode, &stacks, &off_cpu, on_cpu_top.as_ref());
        // The hottest frame by time: each on-CPU sample stands for its share of
        // the kernel's on-CPU time, each off-CPU stack for its time asleep or
        // waiting.
        let top_frame = if off_cpu.is_empty() {
            on_cpu_top
        } else {
            let samples: u64 = stacks.iter().map(|s| s.1).sum();
            let per_sample = breakdown.on_cpu_ns.checked_div(samples).unwrap_or(0);
            let timed: Vec<(Vec<Frame>, u64)> = stacks
                .iter()
                .map(|(f, n)| (f.clone(), n * per_sample))
                .chain(
                    off_cpu
                        .iter()
                        .map(|o| (o.frames.clone(), o.blocked_ns + o.runq_ns)),
                )
                .collect();
            hottest_frame(&timed)
        };
        EpisodeReport {
            episode,
            role,
            thread_name,
            stacks,
            top_frame,
            off_cpu,
            breakdown,
            folded_path: None,
            files: Vec::new(),
            folded_error: None,
        }
    }
}

impl EpisodeReport {
    /// Names the episode's on-CPU and off-CPU stacks (one request: one
    /// perf-map refresh, one blazesym call) and builds its report. When
    /// symbolization fails outright, frames stay as addresses, never dropped.
    pub async fn symbolize(
        e: Episode,
        symbolizer: &Symbolizer,
    ) -> (Self, Result<PerfMapStatus, SymbolizeError>) {
        let raw = e
            .stacks
            .iter()
            .map(|(s, _)| s)
            .chain(e.off_cpu_stacks.iter().map(|(s, _)| s));
        let requests: Vec<StackRequest> = raw
            .clone()
            .map(|s| StackRequest {
                user: s.user.to_vec(),
                kernel: s.kernel.to_vec(),
                v8: s.v8.to_vec(),
            })
            .collect();
        let (named, status) = match symbolizer.symbolize(e.pid, requests).await {
            Ok(sym) => (sym.stacks, Ok(sym.perf_map)),
            Err(err) => (raw.map(|s| unnamed(&s.user, &s.kernel)).collect(), Err(err)),
        };
        let mut named = named.into_iter();
        let stacks: Vec<(Vec<Frame>, u64)> = e
            .stacks
            .iter()
            .map(|(_, n)| (named.next().unwrap_or_default(), *n))
            .collect();
        let off_cpu: Vec<OffCpuStack> = e
            .off_cpu_stacks
            .iter()
            .map(|(_, (blocked_ns, runq_ns))| {
                let mut frames = named.next().unwrap_or_default();
                strip_tracing_frames(&mut frames);
                OffCpuStack {
                    frames,
                    blocked_ns: *blocked_ns,
                    runq_ns: *runq_ns,
                }
            })
            .collect();
        let role = ThreadRole::of_loop_thread(e.pid, e.tid);
        let name = thread_name(e.pid, e.tid);
        (EpisodeReport::new(e, role, name, stacks, off_cpu), status)
    }
}

/// Frames for when symbolization failed outright: addresses, root first.
pub(crate) fn unnamed(user: &[u64], kernel: &[u64]) -> Vec<Frame> {
    let user = user.iter().rev().map(|&a| Frame {
        name: if a == crate::unwind::TRUNCATED {
            "[truncated]".to_owned()
        } else {
            format!("[unknown] {a:#x}")
        },
        kind: FrameKind::Unknown,
    });
    let kernel = kernel.iter().rev().map(|a| Frame {
        name: format!("[unknown] [kernel] {a:#x}"),
        kind: FrameKind::Kernel,
    });
    user.chain(kernel).collect()
}

/// The frame most samples were "in": per stack the leaf-most frame of the
/// application's own JavaScript, falling back to Node's internal JavaScript
/// (`node:…`), then to the leaf when no JS function is on the stack (native
/// code, GC, syscalls). V8 builtins and stubs (`[builtin] …`) are skipped: the
/// JS function that called them is what a developer can change.
pub fn hottest_frame(stacks: &[(Vec<Frame>, u64)]) -> Option<HotFrame> {
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let mut by_frame: HashMap<&Frame, u64> = HashMap::new();
    let mut any_js = false;
    let js_function = |f: &&Frame| f.kind == FrameKind::Js && !f.name.starts_with('[');
    for (frames, n) in stacks {
        let app = frames
            .iter()
            .rev()
            .filter(js_function)
            .find(|f| !f.name.contains(" node:"));
        if let Some(js) = app.or_else(|| frames.iter().rev().find(js_function)) {
            any_js = true;
            *by_frame.entry(js).or_default() += n;
        }
    }
    if !any_js {
        for (frames, n) in stacks {
            if let Some(leaf) = frames.last() {
                *by_frame.entry(leaf).or_default() += n;
            }
        }
    }
    let (frame, samples) = by_frame
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.name.cmp(&a.0.name)))?;
    Some(HotFrame {
        name: frame.name.clone(),
        kind: frame.kind,
        samples,
        share: if total == 0 {
            0.0
        } else {
            samples as f64 / total as f64
        },
    })
}

/// Figures of one loop thread at the end of a run.
#[derive(Clone, Debug)]
pub struct LoopSummary {
    pub tid: u32,
    pub role: ThreadRole,
    pub figures: LoopFigures,
}

/// Everything loopbpf measured of one process, at exit.
#[derive(Clone, Debug)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    /// Main loop first.
    pub loops: Vec<LoopSummary>,
    pub samples: u64,
    pub episodes_reported: u64,
    pub exited: bool,
    pub kernel: KernelCounters,
    /// What went wrong in the symbolizer (all targets), filled in by the reporter.
    pub symbolizer: crate::symbolize::SymbolizerHealth,
    /// `None` when the threadpool could not be tracked (see the warning).
    pub threadpool: Option<crate::threadpool::PoolSummary>,
    /// Every thread with its role (as of the end, or of the start for a
    /// process that exited).
    pub threads: Vec<crate::threads::ThreadInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hottest_frame_is_the_leaf_most_js_frame() {
        let main = Frame::new("main /a.js:1:1", FrameKind::Js);
        let spin = Frame::new("spin /a.js:5:3", FrameKind::Js);
        let stacks = vec![
            (
                vec![
                    Frame::new("uv_run", FrameKind::Native),
                    main.clone(),
                    spin.clone(),
                    Frame::new("memcpy", FrameKind::Native),
                ],
                8,
            ),
            (
                vec![Frame::new("uv_run", FrameKind::Native), main.clone()],
                2,
            ),
        ];
        let hot = hottest_frame(&stacks).unwrap();
        assert_eq!(hot.name, "spin /a.js:5:3");
        assert_eq!(hot.samples, 8);
        assert!((hot.share - 0.8).abs() < 1e-9);
    }

    #[test]
    fn application_code_wins_over_node_internals_and_builtins() {
        let spin = Frame::new("spin /a.js:5:3", FrameKind::Js);
        let stacks = vec![(
            vec![
                spin.clone(),
                Frame::new("get node:internal/bootstrap/node:437:8", FrameKind::Js),
                Frame::new("[builtin] LoadIC", FrameKind::Js),
            ],
            4,
        )];
        assert_eq!(hottest_frame(&stacks).unwrap().name, "spin /a.js:5:3");
        let internal_only = vec![(
            vec![Frame::new(
                "processTimers node:internal/timers:504:25",
                FrameKind::Js,
            )],
            1,
        )];
        assert_eq!(
            hottest_frame(&internal_only).unwrap().name,
            "processTimers node:internal/timers:504:25"
        );
    }

    #[test]
    fn without_js_frames_the_leaf_is_hottest() {
        let stacks = vec![(
            vec![
                Frame::new("uv_run", FrameKind::Native),
                Frame::new("do_sys_poll", FrameKind::Kernel),
            ],
            3,
        )];
        let hot = hottest_frame(&stacks).unwrap();
        assert_eq!(
            (hot.name.as_str(), hot.kind),
            ("do_sys_poll", FrameKind::Kernel)
        );
    }

    #[test]
    fn no_samples_no_hottest_frame() {
        assert!(hottest_frame(&[]).is_none());
    }
}
