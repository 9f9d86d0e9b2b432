//! What one event-loop iteration costs in the kernel: the `poll_loop` example
//! polls an empty epoll set with timeout 0 (every call is an iteration, the
//! worst case for loopbpf) and times its calls with loopbpf absent, watching
//! another process (the poll only meets the syscall tracepoints and is turned
//! away by the watched bitmap) and watching the loop itself (`--force`: it is
//! not Node; enter and exit run in full and every iteration lands in the
//! in-kernel statistics), interleaved in rotating order.

use super::procs::{kv_field, Proc, SIGINT};
use super::report::{differences, Stats};
use super::{scratch, Env, Row};
use anyhow::{Context, Result};
use std::time::Duration;

const ROUNDS: usize = 5;

#[derive(Clone, Copy, PartialEq)]
enum Condition {
    NoLoopbpf,
    WatchingAnother,
    WatchingIt,
}

const CONDITIONS: [Condition; 3] = [
    Condition::NoLoopbpf,
    Condition::WatchingAnother,
    Condition::WatchingIt,
];

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let dir = scratch("poll")?;
    let mut other = Proc::spawn("poll: node", &mut env.node(dir.path(), "busy.js", &[]))?;
    other.wait_for("ready", Duration::from_secs(20))?;
    let mut ns: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..CONDITIONS.len() {
            let c = (round + k) % CONDITIONS.len();
            let mut looper = Proc::spawn(
                "poll: poll_loop",
                &mut std::process::Command::new(&env.poll_loop),
            )?;
            looper.wait_for("ready", Duration::from_secs(10))?;
            let out = dir.path().join("out");
            let loopbpf = match CONDITIONS[c] {
                Condition::NoLoopbpf => None,
                Condition::WatchingAnother => {
                    Some(env.loopbpf("poll: loopbpf (another)", &[other.pid()], &[], &out)?)
                }
                Condition::WatchingIt => Some(env.loopbpf(
                    "poll: loopbpf --force (it)",
                    &[looper.pid()],
                    &["--force", "--no-threadpool"],
                    &out,
                )?),
            };
            looper.send("go")?;
            let mut batches = Vec::new();
            for _ in 0..3 {
                let line = looper.wait_for("ns_per_poll", Duration::from_secs(60))?;
                let v: f64 = kv_field(&line.text, "ns_per_poll")
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no ns_per_poll in {:?}", line.text))?;
                batches.push(v);
            }
            ns[c].push(Stats::of(&batches).median);
            looper.wait(Duration::from_secs(10))?;
            if let Some(mut l) = loopbpf {
                l.stop(SIGINT, Duration::from_secs(10))?;
            }
        }
    }
    other.stop(SIGINT, Duration::from_secs(5))?;
    let section = "poll cost";
    let row = |metric: &str, value: String| Row::info(section, metric, value);
    Ok(vec![
        row(
            "epoll_wait(timeout 0), no loopbpf",
            format!("{} ns/call", Stats::of(&ns[0]).fmt(0)),
        ),
        row(
            "… loopbpf watching another process",
            format!("{} ns/call", Stats::of(&ns[1]).fmt(0)),
        ),
        row(
            "… loopbpf watching this loop (one iteration per call)",
            format!("{} ns/call", Stats::of(&ns[2]).fmt(0)),
        ),
        row(
            &format!("added per poll of an unwatched process ({ROUNDS} rounds)"),
            format!("{} ns", Stats::of(&differences(&ns[1], &ns[0])).fmt(0)),
        ),
        row(
            &format!("added per iteration of a watched loop ({ROUNDS} rounds)"),
            format!("{} ns", Stats::of(&differences(&ns[2], &ns[0])).fmt(0)),
        ),
    ])
}
