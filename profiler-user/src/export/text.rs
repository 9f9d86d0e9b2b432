//! One readable line per event, for a person at a terminal at 3 a.m.
use crate::{
    assembly::threadpool::PoolSummary,
    clock::WallClock,
    export::{
        pool_report::PoolReport,
        report::{EpisodeReport, ProcessSummary},
    },
    kernel::target::ThreadRole,
    printable::{self, Printable},
};

pub fn episode(r: &EpisodeReport, clock: &WallClock) -> String {
    let b = &r.breakdown;
    let mut line = format!(
        "{} {}: {} ({})",
        clock.format(r.episode.end_ns),
        super::common::episode_headline(r),
        b.verdict.describe(b.syscall.as_deref()),
        super::common::where_time_went(r)
    );
    hottest_and_file(&mut line, r.top_frame.as_ref(), &r.files, &r.folded_error);
    line
}

/// `, hottest: NAME (N%) -> FILE` (or why the stacks were not saved).
fn hottest_and_file(
    line: &mut String,
    top: Option<&crate::export::frames::HotFrame>,
    files: &[std::path::PathBuf],
    error: &Option<String>,
) {
    if let Some(h) = top {
        line.push_str(&format!(
            ", hottest: {} ({:.0}%)",
            Printable(&h.name),
            h.share * 100.0
        ));
    }
    match (files, error) {
        ([_, ..], _) => {
            let shown: Vec<String> = files
                .iter()
                .map(|p| printable::path(p).to_string())
                .collect();
            line.push_str(&format!(" -> {}", shown.join(" ")));
        }
        ([], Some(err)) => line.push_str(&format!(" (stacks not saved: {})", Printable(err))),
        _ => {}
    }
}

pub fn stall(
    pid: u32,
    tid: u32,
    role: ThreadRole,
    start_ns: u64,
    now_ns: u64,
    clock: &WallClock,
) -> String {
    format!(
        "{} pid {} tid {} {}: loop STILL BLOCKED, busy for {:.1} s since {} (the episode follows when it ends)",
        clock.format(now_ns),
        pid,
        tid,
        role.as_str(),
        now_ns.saturating_sub(start_ns) as f64 / 1e9,
        clock.format(start_ns)
    )
}

pub fn summary(s: &ProcessSummary) -> String {
    let mut out = format!(
        "pid {} ({}){}: {} episodes reported, {} samples",
        s.pid,
        Printable(&s.comm),
        if s.exited { ", exited" } else { "" },
        s.episodes_reported,
        s.samples
    );
    if s.loops.is_empty() {
        out.push_str("; no event-loop iteration seen");
    }
    for l in &s.loops {
        let f = &l.figures;
        out.push_str(&format!(
            "\n  {} loop (tid {}): {} iterations, utilization {:.1}%, busy p50 {:.3} ms p90 {:.3} ms p99 {:.3} ms max {:.1} ms, {} over threshold",
            l.role.as_str(),
            l.tid,
            f.iterations,
            f.utilization * 100.0,
            f.p50_ns as f64 / 1e6,
            f.p90_ns as f64 / 1e6,
            f.p99_ns as f64 / 1e6,
            f.max_ns as f64 / 1e6,
            f.episodes
        ));
        if f.busy_ns > 0 {
            out.push_str(&format!(
                "; of the busy time {:.0}% asleep, {:.0}% waiting for a CPU",
                f.blocked_ns as f64 * 100.0 / f.busy_ns as f64,
                f.runq_ns as f64 * 100.0 / f.busy_ns as f64
            ));
        }
    }
    if let Some(p) = &s.threadpool {
        out.push_str(&pool_summary(p));
    }
    if !s.threads.is_empty() {
        let roles: Vec<String> = crate::assembly::threads::role_counts(&s.threads)
            .into_iter()
            .map(|(role, n)| format!("{n} {role}"))
            .collect();
        out.push_str(&format!("\n  threads: {}", roles.join(", ")));
    }
    if let Some(v) = &s.v8_names {
        out.push_str(&format!(
            "\n  JavaScript frames from V8's memory: {} named, {} V8 frames by type, {} unknown; name cache: {} of {} functions cached, {} evicted",
            v.stats.named, v.stats.markers, v.stats.unknown, v.cached, v.capacity, v.stats.evicted
        ));
    }
    let dropped: Vec<String> = s
        .kernel
        .drops()
        .iter()
        .filter(|(_, n, _)| *n > 0)
        .map(|(_, n, what)| format!("{n} {what}"))
        .collect();
    if !dropped.is_empty() {
        out.push_str(&format!(
            "\n  dropped in the kernel (all targets): {}",
            dropped.join(", ")
        ));
    }
    let symbolizer: Vec<String> = s
        .symbolizer
        .events()
        .iter()
        .filter(|(_, n, _)| *n > 0)
        .map(|(_, n, what)| format!("{n} {what}"))
        .collect();
    if !symbolizer.is_empty() {
        out.push_str(&format!(
            "\n  symbolizer (all targets): {}",
            symbolizer.join(", ")
        ));
    }
    out
}

pub fn pool_saturation(r: &PoolReport, clock: &WallClock) -> String {
    let e = &r.episode;
    let mut line = format!(
        "{} pid {} threadpool: {} {:.1} ms, all {} workers busy ({} items, {} samples)",
        clock.format(e.end_ns),
        e.pid,
        if e.ongoing {
            "still saturated after"
        } else {
            "saturated"
        },
        e.end_ns.saturating_sub(e.start_ns) as f64 / 1e6,
        e.pool_size,
        e.items,
        e.samples
    );
    if let Some(w) = &r.top_work {
        line.push_str(&format!(
            ", running {} ({:.0}%)",
            Printable(&w.name),
            w.share * 100.0
        ));
    }
    hottest_and_file(&mut line, r.top_frame.as_ref(), &r.files, &r.folded_error);
    line
}

pub fn pool_saturated(
    pid: u32,
    pool_size: usize,
    since_ns: u64,
    now_ns: u64,
    clock: &WallClock,
) -> String {
    format!(
        "{} pid {} threadpool: STILL SATURATED, all {} workers busy for {:.1} s since {}; new fs/crypto/zlib/dns work waits (the episode follows when it ends)",
        clock.format(now_ns),
        pid,
        pool_size,
        now_ns.saturating_sub(since_ns) as f64 / 1e9,
        clock.format(since_ns)
    )
}

fn pool_summary(p: &PoolSummary) -> String {
    let mut out = format!(
        "\n  threadpool ({} workers, {}): {} items, utilization {:.1}% (peak {:.0}% over 1 s), saturated {} times for {:.1} ms",
        p.size,
        p.size_source,
        p.items,
        p.utilization * 100.0,
        p.peak_utilization * 100.0,
        p.saturations,
        p.saturated_ns as f64 / 1e6
    );
    if p.queue_wait_tracked && p.waited_items > 0 {
        out.push_str(&format!(
            ", queue wait p50 {:.3} ms p99 {:.3} ms max {:.1} ms",
            p.queue_wait_p50_ns as f64 / 1e6,
            p.queue_wait_p99_ns as f64 / 1e6,
            p.queue_wait_max_ns as f64 / 1e6
        ));
    } else if !p.queue_wait_tracked {
        out.push_str(", queue wait not measured");
    }
    if p.stopped_early {
        out.push_str(" (tracking stopped early: too many items a second)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process with nothing measured, named `comm`.
    fn process(comm: &str) -> ProcessSummary {
        ProcessSummary {
            pid: 7,
            comm: comm.into(),
            loops: vec![],
            samples: 0,
            episodes_reported: 0,
            exited: false,
            kernel: Default::default(),
            symbolizer: Default::default(),
            threadpool: None,
            threads: vec![],
            v8_names: None,
        }
    }

    fn summary_of(comm: &str, kernel: crate::kernel::probes::KernelCounters) -> String {
        summary(&ProcessSummary {
            kernel,
            ..process(comm)
        })
    }

    #[test]
    fn the_summary_shows_the_v8_name_cache() {
        let mut s = process("node");
        assert!(!summary(&s).contains("V8"));
        s.v8_names = Some(crate::symbolize::V8Names {
            stats: crate::v8::NamerStats {
                named: 40,
                markers: 5,
                unknown: 2,
                cache_hits: 30,
                evicted: 4096,
            },
            cached: 100,
            capacity: 8192,
        });
        let text = summary(&s);
        assert!(
            text.contains("40 named, 5 V8 frames by type, 2 unknown")
                && text.contains("100 of 8192 functions cached, 4096 evicted"),
            "{text}"
        );
    }

    #[test]
    fn the_summary_names_every_kernel_drop() {
        let k = crate::kernel::probes::KernelCounters {
            stats_full: 4,
            off_cpu_lost: 2,
            ..Default::default()
        };
        let s = summary_of("node", k);
        assert!(
            s.contains("dropped in the kernel (all targets): 2 off-CPU intervals (ring buffer half full: the rest is kept for samples and episodes), 4 loops not counted (LOOP_STATS map full)"),
            "{s}"
        );
        assert!(!summary_of("node", Default::default()).contains("dropped"));
    }

    #[test]
    fn the_summary_names_what_went_wrong_in_the_symbolizer() {
        let mut s = process("node");
        assert!(!summary(&s).contains("symbolizer"));
        s.symbolizer.perf_maps_refused = 1;
        s.symbolizer.timeouts = 2;
        assert!(
            summary(&s).contains(
                "symbolizer (all targets): 2 symbolize requests timed out, 1 perf maps refused"
            ),
            "{}",
            summary(&s)
        );
    }

    #[test]
    fn a_hostile_comm_cannot_break_or_drive_the_terminal() {
        let s = summary_of("\u{1b}[2Jx\ny", Default::default());
        assert!(s.starts_with("pid 7 (\\u{1b}[2Jx\\ny)"), "{s}");
        assert!(!s.contains('\u{1b}'));
    }
}
