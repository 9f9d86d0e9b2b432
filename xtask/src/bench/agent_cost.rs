//! Agent cost: loopbpf's own CPU time (utime+stime from /proc/PID/stat,
//! from `ready` to the end of the window) and peak RSS (VmHWM) while it
//! watches 1 and 20 bench/busy.js processes.

use super::procs::{cpu_ticks, json_field, status_kib, Proc, SIGINT};
use super::{scratch, Env, Row};
use crate::cmd;
use anyhow::{Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(15);
const TARGET_CPU_PCT: f64 = 1.0;
const TARGET_RSS_MIB: f64 = 64.0;

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let ticks_per_s: f64 = cmd::output(Command::new("getconf").arg("CLK_TCK"))?
        .parse()
        .context("getconf CLK_TCK")?;
    let mut rows = Vec::new();
    for targets in [1usize, 20] {
        rows.extend(measure(env, targets, ticks_per_s)?);
    }
    Ok(rows)
}

fn measure(env: &Env, targets: usize, ticks_per_s: f64) -> Result<Vec<Row>> {
    let dir = scratch("agent")?;
    let mut nodes = Vec::new();
    for _ in 0..targets {
        let mut node = Proc::spawn("agent: node", &mut env.node(dir.path(), "busy.js", &[]))?;
        node.wait_for("ready", Duration::from_secs(20))?;
        nodes.push(node);
    }
    let pids: Vec<u32> = nodes.iter().map(Proc::pid).collect();
    let started = Instant::now();
    let mut loopbpf = env.loopbpf("agent: loopbpf", &pids, &[], &dir.path().join("out"))?;
    let attach = started.elapsed();
    let ticks_at_ready = cpu_ticks(loopbpf.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let ticks = cpu_ticks(loopbpf.pid())? - ticks_at_ready;
    let elapsed = t0.elapsed().as_secs_f64();
    let hwm_mib = status_kib(loopbpf.pid(), "VmHWM")? as f64 / 1024.0;
    let episodes = loopbpf
        .drain()
        .iter()
        .filter(|l| json_field(&l.text, "type") == Some("episode"))
        .count();
    loopbpf.stop(SIGINT, Duration::from_secs(10))?;
    drop(nodes);

    let cpu_pct = ticks as f64 / ticks_per_s / elapsed * 100.0;
    let startup_ms = ticks_at_ready as f64 / ticks_per_s * 1e3;
    let section = "agent cost";
    let which = if targets == 1 {
        "1 process"
    } else {
        "20 processes"
    };
    let (cpu_target, rss_target) = if targets == 1 {
        (
            Some((
                format!("<= {TARGET_CPU_PCT}% of a core"),
                cpu_pct <= TARGET_CPU_PCT,
            )),
            Some((
                format!("<= {TARGET_RSS_MIB} MiB"),
                hwm_mib <= TARGET_RSS_MIB,
            )),
        )
    } else {
        (None, None)
    };
    Ok(vec![
        Row {
            section,
            metric: format!(
                "{which}: CPU over {:.0} s after ready",
                WINDOW.as_secs_f64()
            ),
            value: format!("{cpu_pct:.2}% of one core ({episodes} episodes)"),
            target: cpu_target,
        },
        Row {
            section,
            metric: format!("{which}: start-up (spawn to ready)"),
            value: format!(
                "{:.0} ms wall, {startup_ms:.0} ms CPU",
                attach.as_secs_f64() * 1e3
            ),
            target: None,
        },
        Row {
            section,
            metric: format!("{which}: peak RSS (VmHWM)"),
            value: format!("{hwm_mib:.1} MiB"),
            target: rss_target,
        },
    ])
}
