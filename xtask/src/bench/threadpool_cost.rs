//! What the threadpool uprobes cost per work item: bench/pool_rate.js runs
//! fs.stat at 1500 items/s (under loopbpf's detach threshold of 2000) and reports
//! its own CPU time per item, without loopbpf, with `--no-threadpool` and
//! with loopbpf as it starts by default, interleaved in rotating order.

use super::procs::{json_field, Proc, SIGINT};
use super::report::{differences, Stats};
use super::{scratch, Env, Row};
use anyhow::{Context, Result};
use std::time::Duration;

const ROUNDS: usize = 3;
const RATE: &str = "1500";

/// loopbpf's extra arguments per condition; `None`: no loopbpf.
const CONDITIONS: [Option<&[&str]>; 3] = [None, Some(&["--no-threadpool"]), Some(&[])];

pub fn run(env: &Env) -> Result<Vec<Row>> {
    let dir = scratch("threadpool")?;
    let mut cpu_us: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..CONDITIONS.len() {
            let c = (round + k) % CONDITIONS.len();
            let mut cmd = env.node(dir.path(), "pool_rate.js", &[]);
            cmd.env("RATE", RATE).env("SECONDS", "4");
            let mut node = Proc::spawn("threadpool: node", &mut cmd)?;
            node.wait_for("ready", Duration::from_secs(20))?;
            let loopbpf = match CONDITIONS[c] {
                None => None,
                Some(args) => {
                    let out = dir.path().join("out");
                    Some(env.loopbpf("threadpool: loopbpf", &[node.pid()], args, &out)?)
                }
            };
            node.send("go")?;
            let line = node.wait_for("cpu_us_per_item", Duration::from_secs(20))?;
            let v: f64 = json_field(&line.text, "cpu_us_per_item")
                .and_then(|v| v.parse().ok())
                .context("no cpu_us_per_item")?;
            cpu_us[c].push(v);
            node.wait(Duration::from_secs(5))?;
            if let Some(mut l) = loopbpf {
                l.stop(SIGINT, Duration::from_secs(10))?;
            }
        }
    }
    let section = "threadpool uprobes";
    let row = |metric: &str, value: String| Row::info(section, metric, value);
    Ok(vec![
        row(
            "fs.stat at 1500/s: node CPU per item, no loopbpf",
            format!("{} µs", Stats::of(&cpu_us[0]).fmt(2)),
        ),
        row(
            "… loopbpf --no-threadpool",
            format!("{} µs", Stats::of(&cpu_us[1]).fmt(2)),
        ),
        row(
            "… loopbpf default (threadpool uprobes)",
            format!("{} µs", Stats::of(&cpu_us[2]).fmt(2)),
        ),
        row(
            &format!("added per item by the uprobes (default − --no-threadpool, {ROUNDS} rounds)"),
            format!(
                "{} µs",
                Stats::of(&differences(&cpu_us[2], &cpu_us[1])).fmt(2)
            ),
        ),
        row(
            "added per item by loopbpf default vs none",
            format!(
                "{} µs",
                Stats::of(&differences(&cpu_us[2], &cpu_us[0])).fmt(2)
            ),
        ),
    ])
}
