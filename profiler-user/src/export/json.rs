//! JSON lines: one object per line, `type` first. Times are CLOCK_MONOTONIC ns,
//! the clock of `process.hrtime.bigint()`, so they line up with the app's own.
use serde_json::{json, Value};

use crate::{
    loop_stats::LoopFigures,
    probes::SyscallProbes,
    report::{EpisodeReport, ProcessSummary},
    target::ThreadRole,
    threadpool::{report::PoolReport, PoolSummary, UtilizationPoint},
};

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 1e2
}

pub fn ready(
    pids: &[u32],
    threshold_ns: u64,
    frequency_hz: u64,
    syscall_probes: SyscallProbes,
) -> Value {
    json!({
        "type": "ready",
        "pids": pids,
        "threshold_ms": ms(threshold_ns),
        "frequency_hz": frequency_hz,
        "syscall_probes": syscall_probes.as_str(),
    })
}

pub fn warning(pid: Option<u32>, message: &str) -> Value {
    json!({"type": "warning", "pid": pid, "message": message})
}

pub fn stall(pid: u32, tid: u32, role: ThreadRole, start_ns: u64, now_ns: u64) -> Value {
    json!({
        "type": "stall",
        "pid": pid,
        "tid": tid,
        "thread": role.as_str(),
        "start_ns": start_ns,
        "busy_so_far_ms": ms(now_ns.saturating_sub(start_ns)),
    })
}

pub fn episode(r: &EpisodeReport) -> Value {
    let e = &r.episode;
    json!({
        "type": "episode",
        "pid": e.pid,
        "tid": e.tid,
        "thread": r.role.as_str(),
        "thread_name": r.thread_name,
        "start_ns": e.start_ns,
        "end_ns": e.end_ns,
        "duration_ms": ms(e.busy_ns),
        "samples": e.samples,
        "top_frame": r.top_frame.as_ref().map(|h| h.name.as_str()),
        "top_frame_kind": r.top_frame.as_ref().map(|h| h.kind),
        "top_frame_share": r.top_frame.as_ref().map(|h| (h.share * 1000.0).round() / 1000.0),
        "verdict": r.breakdown.verdict,
        "on_cpu_ms": ms(r.breakdown.on_cpu_ns),
        "off_cpu_ms": ms(r.breakdown.blocked_ns),
        "runqueue_ms": ms(r.breakdown.runq_ns),
        "gc_share": (r.breakdown.gc_share * 1000.0).round() / 1000.0,
        "syscall": r.breakdown.syscall,
        "folded": r.folded_path,
        "files": r.files,
        "folded_error": r.folded_error,
        "ongoing": e.ongoing,
    })
}

fn figures(f: &LoopFigures) -> serde_json::Map<String, Value> {
    let v = json!({
        "iterations": f.iterations,
        "utilization": (f.utilization * 10_000.0).round() / 10_000.0,
        "busy_p50_ms": ms(f.p50_ns),
        "busy_p90_ms": ms(f.p90_ns),
        "busy_p99_ms": ms(f.p99_ns),
        "busy_max_ms": ms(f.max_ns),
        "episodes": f.episodes,
        "busy_ms": ms(f.busy_ns),
        "busy_off_cpu_ms": ms(f.blocked_ns),
        "busy_runqueue_ms": ms(f.runq_ns),
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object literal"),
    }
}

/// The main loop's figures at the top level (what most readers want), every
/// loop thread under `loops`.
pub fn summary(s: &ProcessSummary) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), "summary".into());
    out.insert("pid".into(), s.pid.into());
    out.insert("comm".into(), s.comm.clone().into());
    out.insert("exited".into(), s.exited.into());
    let main = s.loops.first().map(|l| l.figures).unwrap_or_default();
    out.extend(figures(&main));
    out.insert("episodes_reported".into(), s.episodes_reported.into());
    out.insert("samples".into(), s.samples.into());
    out.insert("samples_lost".into(), s.kernel.samples_lost.into());
    out.insert("episodes_lost".into(), s.kernel.episodes_lost.into());
    let symbolizer: serde_json::Map<String, Value> = s
        .symbolizer
        .events()
        .iter()
        .map(|&(what, n, _)| (what.to_owned(), n.into()))
        .collect();
    out.insert("symbolizer".into(), symbolizer.into());
    let loops: Vec<Value> = s
        .loops
        .iter()
        .map(|l| {
            let mut m = figures(&l.figures);
            m.insert("tid".into(), l.tid.into());
            m.insert("thread".into(), l.role.as_str().into());
            Value::Object(m)
        })
        .collect();
    out.insert("loops".into(), loops.into());
    out.insert(
        "thread_roles".into(),
        serde_json::to_value(crate::threads::role_counts(&s.threads)).unwrap_or(Value::Null),
    );
    let threads: Vec<Value> = s
        .threads
        .iter()
        .map(|t| json!({"tid": t.tid, "name": t.name, "role": t.role.as_str(), "evidence": t.evidence}))
        .collect();
    out.insert("threads".into(), threads.into());
    out.insert(
        "threadpool".into(),
        s.threadpool
            .as_ref()
            .map(pool_summary)
            .unwrap_or(Value::Null),
    );
    Value::Object(out)
}

fn share(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn pool_saturation(r: &PoolReport) -> Value {
    let e = &r.episode;
    json!({
        "type": "threadpool_saturation",
        "pid": e.pid,
        "start_ns": e.start_ns,
        "end_ns": e.end_ns,
        "duration_ms": ms(e.end_ns.saturating_sub(e.start_ns)),
        "pool_size": e.pool_size,
        "workers": e.workers,
        "items": e.items,
        "samples": e.samples,
        "top_work": r.top_work.as_ref().map(|h| h.name.as_str()),
        "top_work_share": r.top_work.as_ref().map(|h| share(h.share)),
        "top_frame": r.top_frame.as_ref().map(|h| h.name.as_str()),
        "top_frame_share": r.top_frame.as_ref().map(|h| share(h.share)),
        "folded": r.folded_path,
        "files": r.files,
        "folded_error": r.folded_error,
        "ongoing": e.ongoing,
    })
}

pub fn pool_saturated(pid: u32, pool_size: usize, since_ns: u64, now_ns: u64) -> Value {
    json!({
        "type": "threadpool_saturated",
        "pid": pid,
        "pool_size": pool_size,
        "start_ns": since_ns,
        "saturated_so_far_ms": ms(now_ns.saturating_sub(since_ns)),
    })
}

pub fn pool_utilization(p: &UtilizationPoint) -> Value {
    json!({
        "type": "threadpool_utilization",
        "pid": p.pid,
        "time_ns": p.time_ns,
        "window_ms": ms(p.window_ns),
        "utilization": share(p.utilization),
        "busy_workers": p.busy_workers,
        "pool_size": p.pool_size,
        "items_per_s": (p.items_per_s * 10.0).round() / 10.0,
    })
}

fn pool_summary(p: &PoolSummary) -> Value {
    json!({
        "pool_size": p.size,
        "pool_size_source": p.size_source,
        "workers_seen": p.workers_seen,
        "items": p.items,
        "busy_ms": ms(p.busy_ns),
        "utilization": (p.utilization * 10_000.0).round() / 10_000.0,
        "peak_utilization": share(p.peak_utilization),
        "saturations": p.saturations,
        "saturated_ms": ms(p.saturated_ns),
        "queue_wait_tracked": p.queue_wait_tracked,
        "queue_wait_items": p.waited_items,
        "queue_wait_mean_ms": ms(p.queue_wait_mean_ns),
        "queue_wait_p50_ms": ms(p.queue_wait_p50_ns),
        "queue_wait_p99_ms": ms(p.queue_wait_p99_ns),
        "queue_wait_max_ms": ms(p.queue_wait_max_ns),
        "stopped_early": p.stopped_early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{episode::Episode, report::LoopSummary};

    #[test]
    fn episode_carries_the_documented_fields() {
        let e = Episode {
            pid: 1,
            tid: 2,
            seq: 3,
            start_ns: 1_000_000,
            end_ns: 213_400_000,
            busy_ns: 212_400_000,
            samples: 40,
            samples_without_stack: 0,
            stacks: vec![],
            blocked_ns: 200_000_000,
            runq_ns: 0,
            off_cpu_stacks: vec![],
            ongoing: false,
        };
        let v = episode(&EpisodeReport::new(
            e,
            ThreadRole::Main,
            Some("node".into()),
            vec![],
            vec![],
        ));
        assert_eq!(v["verdict"], "blocked");
        assert_eq!(v["off_cpu_ms"], 200.0);
        assert_eq!(v["on_cpu_ms"], 12.4);
        assert_eq!(v["type"], "episode");
        assert_eq!(v["thread"], "main");
        assert_eq!(v["start_ns"], 1_000_000);
        assert_eq!(v["duration_ms"], 212.4);
        assert_eq!(v["samples"], 40);
        assert!(v["folded"].is_null());
    }

    #[test]
    fn summary_puts_the_main_loop_first_and_top_level() {
        let main = LoopFigures {
            iterations: 10,
            p99_ns: 5_000_000,
            ..Default::default()
        };
        let s = ProcessSummary {
            pid: 9,
            comm: "node".into(),
            loops: vec![LoopSummary {
                tid: 9,
                role: ThreadRole::Main,
                figures: main,
            }],
            samples: 0,
            episodes_reported: 0,
            exited: true,
            kernel: Default::default(),
            symbolizer: Default::default(),
            threadpool: None,
            threads: vec![],
        };
        let v = summary(&s);
        assert_eq!(v["iterations"], 10);
        assert_eq!(v["busy_p99_ms"], 5.0);
        assert_eq!(v["loops"][0]["thread"], "main");
    }
}
