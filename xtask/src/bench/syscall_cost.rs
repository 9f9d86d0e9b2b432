//! Host-wide syscall cost: loopbpf's sys_enter/sys_exit tracepoints run for
//! every syscall of every process, watched or not. `perf bench syscall basic`
//! (a getppid loop, in a process loopbpf does not watch) is timed without and
//! with loopbpf attached to a bench/busy.js process, ABAB.

use super::procs::{log_command, Proc, SIGINT};
use super::report::Stats;
use super::{scratch, Env, Row};
use anyhow::{Context, Result};
use std::process::Command;
use std::time::Duration;

const ROUNDS: usize = 5;
const LOOPS: &str = "3000000";

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let dir = scratch("syscall")?;
    let mut node = Proc::spawn("syscall: node", &mut env.node(dir.path(), "busy.js", &[]))?;
    node.wait_for("ready", Duration::from_secs(20))?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for attached in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let usecs = if attached {
                let out = dir.path().join("out");
                let mut loopbpf = env.loopbpf("syscall: loopbpf", &[node.pid()], &[], &out)?;
                let usecs = syscall_usecs()?;
                loopbpf.stop(SIGINT, Duration::from_secs(10))?;
                usecs
            } else {
                syscall_usecs()?
            };
            if attached { &mut with } else { &mut without }.push(usecs * 1e3);
        }
    }
    node.stop(SIGINT, Duration::from_secs(5))?;
    let extra: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w - o).collect();
    let section = "syscall cost (host-wide)";
    Ok(vec![
        Row {
            section,
            metric: "getppid, unwatched process, no loopbpf".into(),
            value: format!("{} ns/syscall", Stats::of(&without).fmt(0)),
            target: None,
        },
        Row {
            section,
            metric: "getppid, unwatched process, loopbpf attached elsewhere".into(),
            value: format!("{} ns/syscall", Stats::of(&with).fmt(0)),
            target: None,
        },
        Row {
            section,
            metric: format!("added per syscall ({ROUNDS} pairs)"),
            value: format!("{} ns", Stats::of(&extra).fmt(0)),
            target: None,
        },
    ])
}

/// `perf bench syscall basic`'s usecs/op.
fn syscall_usecs() -> Result<f64> {
    let mut c = Command::new("perf");
    c.args(["bench", "syscall", "basic", "--loop", LOOPS]);
    log_command("syscall: perf bench", &c);
    let out = c.output().context("cannot run perf bench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "perf bench failed ({}): {text}",
        out.status
    );
    text.lines()
        .find_map(|l| l.trim().strip_suffix("usecs/op"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no usecs/op in perf bench output: {text}"))
}
