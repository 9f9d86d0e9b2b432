//! Host-wide syscall cost: with any syscall tracepoint attached, every
//! syscall of every process, watched or not, takes the kernel's
//! syscall-tracing slow path; with the tp_btf fallback loopbpf's
//! `sys_enter`/`sys_exit` programs also run on each. `perf bench syscall
//! basic` (a getppid loop, in a process loopbpf does not watch) is timed
//! without loopbpf, with loopbpf as it starts by default (the per-syscall
//! tracepoints where tracefs can be had) and with `LOOPBPF_SYSCALL_PROBES=tp_btf`,
//! attached to a bench/busy.js process, interleaved in rotating order.

use super::procs::{log_command, Proc, SIGINT};
use super::report::{differences, Stats};
use super::{scratch, Env, Row};
use anyhow::{Context, Result};
use std::process::Command;
use std::time::Duration;

const ROUNDS: usize = 5;
const LOOPS: &str = "3000000";

/// The conditions of one round; each round starts one further along.
const CONDITIONS: [Option<&[(&str, &str)]>; 3] = [
    None,
    Some(&[]),
    Some(&[("LOOPBPF_SYSCALL_PROBES", "tp_btf")]),
];

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let dir = scratch("syscall")?;
    let mut node = Proc::spawn("syscall: node", &mut env.node(dir.path(), "busy.js", &[]))?;
    node.wait_for("ready", Duration::from_secs(20))?;
    let mut ns: [Vec<f64>; 3] = Default::default();
    let mut default_probes = String::new();
    for round in 0..ROUNDS {
        for k in 0..CONDITIONS.len() {
            let c = (round + k) % CONDITIONS.len();
            let usecs = match CONDITIONS[c] {
                None => syscall_usecs()?,
                Some(vars) => {
                    let out = dir.path().join("out");
                    let kind = if vars.is_empty() {
                        "syscall: loopbpf"
                    } else {
                        "syscall: loopbpf (tp_btf)"
                    };
                    let (mut loopbpf, probes) =
                        env.loopbpf_with_env(kind, &[node.pid()], &[], &out, vars)?;
                    if vars.is_empty() {
                        default_probes = probes;
                    } else {
                        anyhow::ensure!(probes == "tp_btf", "loopbpf used {probes}, not tp_btf");
                    }
                    let usecs = syscall_usecs()?;
                    loopbpf.stop(SIGINT, Duration::from_secs(10))?;
                    usecs
                }
            };
            ns[c].push(usecs * 1e3);
        }
    }
    node.stop(SIGINT, Duration::from_secs(5))?;
    let added = |c: usize| differences(&ns[c], &ns[0]);
    env.syscall_added_ns.set(Some(Stats::of(&added(1)).median));
    let section = "syscall cost (host-wide)";
    let default = format!("loopbpf default ({default_probes} probes)");
    let fallback = "loopbpf LOOPBPF_SYSCALL_PROBES=tp_btf (the fallback)";
    let row = |metric: String, value: String| Row::info(section, metric, value);
    Ok(vec![
        row(
            "getppid, unwatched process, no loopbpf".into(),
            format!("{} ns/syscall", Stats::of(&ns[0]).fmt(0)),
        ),
        row(
            format!("getppid, unwatched process, {default} attached elsewhere"),
            format!("{} ns/syscall", Stats::of(&ns[1]).fmt(0)),
        ),
        row(
            format!("getppid, unwatched process, {fallback} attached elsewhere"),
            format!("{} ns/syscall", Stats::of(&ns[2]).fmt(0)),
        ),
        row(
            format!("added per syscall, {default} ({ROUNDS} rounds)"),
            format!("{} ns", Stats::of(&added(1)).fmt(0)),
        ),
        row(
            format!("added per syscall, {fallback} ({ROUNDS} rounds)"),
            format!("{} ns", Stats::of(&added(2)).fmt(0)),
        ),
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
