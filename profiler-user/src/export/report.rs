//! A symbolized episode, ready for the exporters: frames named, the hottest
//! JavaScript frame found, the thread's role known.
use std::path::PathBuf;

use crate::{
    assembly::{episode::Episode, loop_stats::LoopFigures},
    export::{
        breakdown::{breakdown, strip_tracing_frames, Breakdown, OffCpuStack},
        frames::{hottest_frame, unnamed, HotFrame},
    },
    kernel::{
        probes::KernelCounters,
        target::{thread_name, ThreadRole},
    },
    symbolize::{Frame, PerfMapStatus, StackRequest, SymbolizeError, Symbolizer},
};

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
    pub threadpool: Option<crate::assembly::threadpool::PoolSummary>,
    /// Every thread with its role (as of the end, or of the start for a
    /// process that exited).
    pub threads: Vec<crate::assembly::threads::ThreadInfo>,
    /// JavaScript frames named from V8's memory (filled in by the reporter;
    /// `None` when no stack of the process carried V8 slots).
    pub v8_names: Option<crate::symbolize::V8Names>,
}
