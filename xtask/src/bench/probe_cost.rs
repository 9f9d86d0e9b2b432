//! What each of loopbpf's BPF programs costs per event, measured by the
//! kernel itself (`BPF_ENABLE_STATS`: run count and run time per program)
//! while bench/server.js (plain http, pinned to CPU 1) serves wrk (CPU 0)
//! with loopbpf watching it. The syscall and scheduler probes run for every
//! process on the host, so wrk's own epoll calls and context switches count
//! too: this is the cost a busy neighbour pays. The syscall-tracing slow path
//! itself is outside the programs (see the syscall section).

use super::overhead::{start_server, wrk};
use super::procs::{SIGINT, SIGTERM};
use super::{scratch, Env, Row};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Names (as the kernel keeps them: 15 bytes) of loopbpf's programs.
const PROGRAMS: [&str; 14] = [
    "poll_enter",
    "poll_exit",
    "close_enter",
    "exit_group_ente",
    "btf_sys_enter",
    "btf_sys_exit",
    "sample_stack",
    "sched_switch",
    "sched_wakeup",
    "process_exec",
    "process_exit",
    "pool_submit",
    "pool_work_start",
    "pool_worker_idl",
];

/// Run count and run time (ns) per program name, summed over instances.
fn snapshot() -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if !PROGRAMS.contains(&name) {
            continue;
        }
        let e = out.entry(name.to_string()).or_insert((0, 0));
        e.0 += info.run_count();
        e.1 += info.run_time().as_nanos() as u64;
    }
    Ok(out)
}

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let dir = scratch("probes")?;
    let (mut srv, url) = start_server(env, dir.path(), "http", &[])?;
    wrk(&url, 1, "probes: wrk warm-up")?;
    let mut loopbpf = env.loopbpf(
        "probes: loopbpf",
        &[srv.pid()],
        &[],
        &dir.path().join("out"),
    )?;
    // Stats are on while this fd is open.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = snapshot()?;
    let t0 = Instant::now();
    let (rps, _, _) = wrk(&url, env.opts.wrk_secs, "probes: wrk")?;
    let secs = t0.elapsed().as_secs_f64();
    let after = snapshot()?;
    loopbpf.stop(SIGINT, Duration::from_secs(10))?;
    srv.stop(SIGTERM, Duration::from_secs(10))?;
    let section = "probe cost (per event)";
    let mut rows = Vec::new();
    let mut total_ns = 0u64;
    for (name, &(cnt, ns)) in &after {
        let (cnt0, ns0) = before.get(name).copied().unwrap_or((0, 0));
        let (calls, time) = (cnt - cnt0, ns - ns0);
        if calls == 0 {
            continue;
        }
        total_ns += time;
        rows.push(Row {
            section,
            metric: format!("{name}: http server at {rps:.0} req/s under wrk"),
            value: format!(
                "{:.0} calls/s, {:.0} ns/call, {:.2}% of a core",
                calls as f64 / secs,
                time as f64 / calls as f64,
                time as f64 / 1e9 / secs * 100.0
            ),
            target: None,
        });
    }
    rows.push(Row {
        section,
        metric: "all loopbpf programs together".into(),
        value: format!("{:.2}% of a core", total_ns as f64 / 1e9 / secs * 100.0),
        target: None,
    });
    Ok(rows)
}
